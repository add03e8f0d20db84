//! armourd's command line (SPEC §9). Only clap in here: `cargo xtask`
//! includes this file to write the man page and shell completions, so the
//! daemon binary carries no generator.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use super::backend::Backend;

/// `--state-dir` when not given: emptied at each boot, like the state.
pub const DEFAULT_STATE_DIR: &str = "/run/armourd";

/// Watches a user other than root may make over D-Bus, when not given.
pub const DEFAULT_MAX_USER_WATCHES: usize = 64;

/// A fast process watchdog: restarts crashed processes of the configured
/// executables at once, exactly as they were started.
#[derive(Parser, Debug)]
#[command(name = "armourd", version)]
pub struct Args {
    /// Configuration file [default: /etc/armourd.conf]
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Event source
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,
    /// Message bus to answer on
    #[arg(long, value_enum, default_value = "system")]
    pub dbus: Dbus,
    /// Root's control socket: the D-Bus interface without the bus, for
    /// root alone; `none` for none [default with --dbus system: /run/armourd/control]
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Watches a user other than root may make over D-Bus
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_USER_WATCHES)]
    pub max_user_watches: usize,
    /// Read the configuration, print each entry with its options and the
    /// executables it matches now, and exit (0: fine, 2: errors)
    #[arg(long)]
    pub check_config: bool,
    /// Detach from the terminal and run in the background; returns once watching
    #[arg(short, long)]
    pub daemon: bool,
    /// Pid file, locked while armourd runs [default with -d: /run/armourd.pid]
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Where log lines go [default: stderr; syslog with -d; the journal under systemd]
    #[arg(long, value_enum, value_name = "TARGET")]
    pub log: Option<Log>,
    /// Where armourd keeps what its own restart must not lose: processes
    /// watched over D-Bus, restart counters, crash streaks
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Feed a hardware watchdog [default device: /dev/watchdog]
    #[arg(long, value_name = "DEVICE", num_args = 0..=1, require_equals = true,
          default_missing_value = "/dev/watchdog")]
    pub watchdog: Option<PathBuf>,
    /// Hardware watchdog timeout to set (the hardware's own when not given)
    #[arg(long, value_name = "SECONDS", requires = "watchdog",
          value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub watchdog_timeout: Option<u32>,
}

/// `--dbus`: which bus to answer on, or none.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Dbus {
    System,
    Session,
    None,
}

/// `--log`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Log {
    Stderr,
    Syslog,
    Journal,
}
