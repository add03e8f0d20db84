//! Running as a system service (SPEC §12): detaching (`-d`), the locked
//! pid file, and the service manager's notifications (`sd_notify`).

pub mod detach;
pub mod notify;
pub mod pidfile;

pub use detach::{detach, Detached};
pub use notify::Notifier;
pub use pidfile::{PidFile, DEFAULT_PIDFILE};

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use crate::cli::Args;

    #[test]
    fn command_lines_are_consistent() {
        Args::command().debug_assert();
        crate::ctl_cli::Args::command().debug_assert();
    }

    #[test]
    fn watchdog_alone_means_dev_watchdog_and_a_timeout_needs_it() {
        let args = Args::try_parse_from(["armourd", "--watchdog"]).unwrap();
        assert_eq!(args.watchdog.as_deref(), Some("/dev/watchdog".as_ref()));
        let args = Args::try_parse_from(["armourd", "--watchdog=/dev/watchdog1"]).unwrap();
        assert_eq!(args.watchdog.as_deref(), Some("/dev/watchdog1".as_ref()));
        assert!(Args::try_parse_from(["armourd", "--watchdog-timeout=10"]).is_err());
        assert!(Args::try_parse_from(["armourd", "--watchdog", "--watchdog-timeout=0"]).is_err());
    }
}
