//! armourd: a fast Linux process watchdog. The daemon binary is a thin
//! shell around these modules; see `daemon` for the event loop and
//! `supervisor` for the decisions. Modules are public only where a binary,
//! the integration tests or the fuzz targets (through `fuzz`) need them, so
//! that the compiler finds what nothing uses.

pub mod backend;
pub(crate) mod btf;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod ctl_cli;
pub mod daemon;
pub mod dbus;
pub(crate) mod files;
#[cfg(fuzzing)]
pub mod fuzz;
pub(crate) mod launch;
pub mod logging;
pub(crate) mod pidfd;
pub(crate) mod place;
pub(crate) mod procfs;
pub(crate) mod race;
pub mod service;
pub(crate) mod spawn;
pub(crate) mod state;
pub mod status;
pub(crate) mod supervisor;
pub mod watchdog;
pub(crate) mod watchlist;
