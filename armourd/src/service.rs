//! Running as a system service (SPEC §12): detaching (`-d`), the locked
//! pid file, and the service manager's notifications (`sd_notify`).

pub mod detach;
pub mod notify;
pub mod pidfile;

pub use detach::{detach, DetachError, Detached};
pub use notify::Notifier;
pub use pidfile::{PidFile, PidFileError, DEFAULT_PIDFILE};
