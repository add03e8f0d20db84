//! armourctl's command line. Only clap in here: `cargo xtask` includes
//! this file to write the man page and shell completions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Talks to armourd, the process watchdog, over D-Bus.
#[derive(Parser, Debug)]
#[command(name = "armourctl", version)]
pub struct Args {
    /// Use the system bus (the default)
    #[arg(long, conflicts_with = "session")]
    pub system: bool,
    /// Use the session bus (DBUS_SESSION_BUS_ADDRESS)
    #[arg(long)]
    pub session: bool,
    /// Talk to armourd on its control socket, not through a bus (root only;
    /// root's default is /run/armourd/control when it is there, else the system bus)
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the watched processes
    List,
    /// Watch a running process
    Watch { pid: i32 },
    /// Stop watching a process
    Unwatch { pid: i32 },
    /// Print armourd's signals as they arrive, until interrupted
    Monitor,
    /// Show each watched process's state, restarts, last end and uptime
    Status {
        /// One JSON array for scripts
        #[arg(long)]
        json: bool,
    },
    /// Forget the crashes of an executable's or a pid's instances; those
    /// that gave up start again (root only)
    Reset {
        /// An executable's path or a pid
        target: String,
    },
    /// Have armourd read its configuration file again (root only)
    Reload,
}
