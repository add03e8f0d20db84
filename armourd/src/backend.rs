//! Event sources. Every backend turns what the kernel reports into the same
//! [`Event`]s and keeps the kernel-side filter (watched pids, watched files)
//! current. What a process that ended, or executed, before armourd watched
//! it comes to is decided by the rules of `race`, which a backend applies
//! to what it saw (the kernel's records, `/proc`); what follows from an
//! event is the supervisor's.

use std::ffi::OsString;

use armourd_common::{FileKey, PidClass};

use crate::status::ExitStatus;

pub mod ebpf;
mod engine;
mod kind;
pub mod proc_connector;

pub use engine::{Engine, EngineError};
pub use kind::Backend;

/// Something the kernel reported about a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A process executed a program.
    Exec(ExecEvent),
    /// A watched process forked `child` (a new process, not a thread).
    Fork {
        parent: u32,
        child: u32,
        start: Option<u64>,
    },
    /// The last thread of a watched process ended.
    Exit {
        pid: u32,
        /// Start time in clock ticks since boot, when the backend knows it.
        start: Option<u64>,
        status: ExitStatus,
        /// CLOCK_MONOTONIC nanoseconds of the end, when the backend knows it.
        ktime_ns: Option<u64>,
    },
    /// Events were lost (a full buffer, a failed read in the kernel):
    /// reconcile with /proc.
    Lost { count: u64 },
    /// The kernel could not hold `count` processes that were to be watched
    /// (the map of their class was full); their records came anyway, and
    /// holding them from user space fails too while the map stays full.
    /// Reconcile once there may be room again.
    Unheld { count: u64 },
}

/// Why the kernel filter did not take a watch or a mark.
#[derive(thiserror::Error, Debug)]
pub enum FilterError {
    /// No room for another watched process of this class. A watch asked
    /// for (D-Bus) is refused; any other is reconciled once there is room.
    #[error(
        "no room in the kernel: its map of {} watched processes is full ({capacity} entries)",
        class.name()
    )]
    Full {
        pid: u32,
        class: PidClass,
        capacity: u32,
    },
    #[error("eBPF map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    ProcConnector(#[from] proc_connector::ProcConnectorError),
}

/// A process executed a program; what the backend could capture at that moment.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ExecEvent {
    pub pid: u32,
    pub start: Option<u64>,
    /// The executed file; `None` when the backend could not read it (the
    /// process was gone by then).
    pub file: Option<FileKey>,
    /// argv as it was at exec, before the program could change it.
    pub argv: Option<Vec<OsString>>,
    pub env: Option<Vec<OsString>>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The file name given to `execve`, for scripts run by a watched interpreter.
    pub filename: Option<OsString>,
    pub ktime_ns: Option<u64>,
}

/// How a watched file is marked in the kernel filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMark {
    /// Executions of it start instances.
    Watched,
    /// It interprets a watched script: executions are reported with their file name.
    Interpreter,
}
