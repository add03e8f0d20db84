//! The D-Bus side of armourd (SPEC §7): the `com.github.Armourd` service at
//! `/com/github/armourd`, and the client proxy that `armourctl` uses.
//!
//! The service holds no watchdog state. Each method call that needs some
//! becomes a [`Request`] sent to the daemon's event loop, which answers it
//! through the request's `oneshot` channel; the daemon emits the signals
//! through [`Service::process_exited`] and [`Service::process_restarted`].
//! Introspectable, Properties and Peer come from zbus, which also answers
//! unknown methods and mistyped arguments with a D-Bus error at once.
//!
//! What callers can make armourd hold is bounded at each step: zbus queues
//! at most 64 incoming method calls, then stops reading the socket and the
//! bus holds the rest (within its own limits); the interface's calls are
//! served one at a time, each to the end of writing its reply, so no task,
//! request or reply piles up however fast calls come; a call beyond its
//! uid's share (see [`gate`]) is answered `LimitsExceeded` at once, so a
//! flood costs little and root's calls behind it come soon; root's
//! requests and everyone else's reach the event loop in two bounded queues,
//! root's taken first; calls that expect no reply and only read are not
//! served. The caller's uid is asked on a second connection, whose replies
//! do not wait behind the calls queued on the first. The bus delivers a
//! connection's messages in order, so root's calls to [`BUS_NAME`] wait
//! behind everything queued before them; a third connection serves the
//! same object to root alone as [`ROOT_BUS_NAME`], in a queue of its own.

use std::{
    collections::HashMap,
    fmt,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use tokio::sync::{mpsc, oneshot};
use zbus::{
    connection, interface, message::Header, names::UniqueName, object_server::SignalEmitter, proxy,
    Connection, OwnedVariant, Variant,
};

pub mod control;
mod gate;
mod interface;
mod process_info;
mod service;

pub use control::ControlSocket;
pub use gate::{Gate, Refused};
use interface::{Callers, Interface};
pub use process_info::{group_by_exe, ProcessInfo};
pub use service::Service;

/// The well-known name armourd owns.
pub const BUS_NAME: &str = "com.github.Armourd";
/// The name armourd owns on a second connection of its own, for root
/// only: calls to it wait in their own queue in the bus, not behind
/// everything other users sent to [`BUS_NAME`] (SPEC §7).
pub const ROOT_BUS_NAME: &str = "com.github.Armourd.Root";
/// The path of armourd's one object.
pub const OBJECT_PATH: &str = "/com/github/armourd";

/// Which message bus to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bus {
    /// The system bus, where armourd normally runs.
    System,
    /// The session bus named by `DBUS_SESSION_BUS_ADDRESS`.
    Session,
}

impl fmt::Display for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::System => "system",
            Self::Session => "session",
        })
    }
}

/// A request from a D-Bus caller, answered by the daemon's event loop.
#[derive(Debug)]
pub enum Request {
    /// `Watch` and `WatchProcess`: start watching a running process.
    Watch {
        pid: i32,
        caller_uid: u32,
        /// The caller gets only a number (`WatchProcess`): the reason goes to the log.
        code_only: bool,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    /// `Unwatch` and `UnwatchProcess`: stop watching a process.
    Unwatch {
        pid: i32,
        caller_uid: u32,
        code_only: bool,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    /// `ListProcesses` and `GetProcesses`: every watched process.
    Processes {
        reply: oneshot::Sender<Vec<ProcessInfo>>,
    },
    /// `Reset` (root only, checked here): forget the crashes of the
    /// instances of an executable path or pid; answers how many.
    Reset {
        target: String,
        reply: oneshot::Sender<u32>,
    },
    /// `Reload` (root only, checked here): read the configuration file
    /// again; answers its errors, none when it was applied.
    Reload { reply: oneshot::Sender<Vec<String>> },
}

/// Why a watch or unwatch was refused.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    #[error("no process {pid}: it has ended or never existed; check the pid")]
    NoSuchProcess { pid: i32 },
    #[error(
        "process {pid} belongs to uid {owner}: only root may watch or unwatch \
         another user's process"
    )]
    AccessDenied { pid: i32, owner: u32 },
    #[error("process {pid} is already watched; nothing to do")]
    AlreadyWatched { pid: i32 },
    #[error("process {pid} is not watched; nothing to unwatch")]
    NotWatched { pid: i32 },
    #[error(
        "uid {uid} already holds {limit} watches, the most a user may \
         (armourd --max-user-watches); unwatch one first"
    )]
    QuotaExceeded { uid: u32, limit: usize },
    #[error("cannot watch process {pid}: {reason}")]
    Failed { pid: i32, reason: String },
}

impl Refusal {
    /// The error's last name, as in `com.github.Armourd.Error.NAME`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::NoSuchProcess { .. } => "NoSuchProcess",
            Self::AccessDenied { .. } => "AccessDenied",
            Self::AlreadyWatched { .. } => "AlreadyWatched",
            Self::NotWatched { .. } => "NotWatched",
            Self::QuotaExceeded { .. } => "QuotaExceeded",
            Self::Failed { .. } => "Failed",
        }
    }
}

/// The answer to `WatchProcess` and `UnwatchProcess`: the C daemon's
/// numbers, the only ones its clients know.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchResult {
    Ok = 0,
    /// Only `WatchProcess` answers this.
    AlreadyWatched = 1,
    /// Every other reason; it is in armourd's log.
    Failed = 2,
}

impl WatchResult {
    /// What `WatchProcess` answers for `result`.
    pub fn of_watch(result: &Result<(), Refusal>) -> Self {
        match result {
            Ok(()) => Self::Ok,
            Err(Refusal::AlreadyWatched { .. }) => Self::AlreadyWatched,
            Err(_) => Self::Failed,
        }
    }

    /// What `UnwatchProcess` answers for `result`.
    pub fn of_unwatch(result: &Result<(), Refusal>) -> Self {
        match result {
            Ok(()) => Self::Ok,
            Err(_) => Self::Failed,
        }
    }

    /// The number on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// Whether a caller may watch or unwatch a process: its own, or any as root.
pub fn authorize(caller_uid: u32, process_uid: u32) -> bool {
    caller_uid == 0 || caller_uid == process_uid
}

/// Why the D-Bus side could not start, or a reply could not be read.
#[derive(thiserror::Error, Debug)]
pub enum DbusError {
    #[error("cannot connect to the {bus} bus (is dbus running?)")]
    Connect {
        bus: Bus,
        #[source]
        source: zbus::Error,
    },
    #[error("cannot serve {OBJECT_PATH} on the {bus} bus")]
    Serve {
        bus: Bus,
        #[source]
        source: zbus::Error,
    },
    #[error("{name} is already owned on the {bus} bus: is another armourd running?")]
    NameTaken { bus: Bus, name: &'static str },
    #[error(
        "the {bus} bus refused {name} to this user (only root may own it on the system bus; \
         is dbus/com.github.Armourd.conf installed in /usr/share/dbus-1/system.d?)"
    )]
    NameDenied {
        bus: Bus,
        name: &'static str,
        #[source]
        source: zbus::Error,
    },
    #[error("cannot request {name} on the {bus} bus")]
    RequestName {
        bus: Bus,
        name: &'static str,
        #[source]
        source: zbus::Error,
    },
    #[error("a GetProcesses entry lacks `{key}` or has it with the wrong type")]
    BadEntry { key: &'static str },
}

/// Connects to `bus` as a client (the service connects in [`Service::start`]).
pub async fn connect(bus: Bus) -> Result<Connection, DbusError> {
    builder(bus)
        .build()
        .await
        .map_err(|source| DbusError::Connect { bus, source })
}

fn builder(bus: Bus) -> connection::Builder<'static> {
    match bus {
        Bus::System => connection::Builder::system(),
        Bus::Session => connection::Builder::session(),
    }
}

/// Errors a D-Bus caller can get beyond zbus's own (unknown method, bad
/// arguments); each carries a message that says what and what to do.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "com.github.Armourd.Error")]
pub enum CallError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The daemon is shutting down and no longer answers.
    Unavailable(String),
    /// The bus would not tell the caller's uid.
    UnknownCaller(String),
    /// The caller has its share of calls in flight (see [`gate`]).
    LimitsExceeded(String),
    NoSuchProcess(String),
    AccessDenied(String),
    AlreadyWatched(String),
    NotWatched(String),
    QuotaExceeded(String),
    Failed(String),
}

impl From<Refusal> for CallError {
    fn from(refusal: Refusal) -> Self {
        let text = refusal.to_string();
        match refusal {
            Refusal::NoSuchProcess { .. } => Self::NoSuchProcess(text),
            Refusal::AccessDenied { .. } => Self::AccessDenied(text),
            Refusal::AlreadyWatched { .. } => Self::AlreadyWatched(text),
            Refusal::NotWatched { .. } => Self::NotWatched(text),
            Refusal::QuotaExceeded { .. } => Self::QuotaExceeded(text),
            Refusal::Failed { .. } => Self::Failed(text),
        }
    }
}

impl From<Refused> for CallError {
    fn from(refused: Refused) -> Self {
        Self::LimitsExceeded(refused.to_string())
    }
}

/// Where the interface sends its requests: root's and everyone else's
/// apart, so that the event loop can take root's first.
#[derive(Clone, Debug)]
pub struct Queues {
    root: mpsc::Sender<Request>,
    users: mpsc::Sender<Request>,
}

/// The event loop's end of [`Queues`].
#[derive(Debug)]
pub struct Incoming {
    root: mpsc::Receiver<Request>,
    users: mpsc::Receiver<Request>,
}

/// Requests waiting for the event loop in each queue; a full queue makes
/// the next one wait.
const QUEUE: usize = 16;

/// Two bounded queues: root's and unprivileged callers'.
pub fn queues() -> (Queues, Incoming) {
    let (root, root_rx) = mpsc::channel(QUEUE);
    let (users, users_rx) = mpsc::channel(QUEUE);
    (
        Queues { root, users },
        Incoming {
            root: root_rx,
            users: users_rx,
        },
    )
}

impl Incoming {
    /// The next request, root's first; `None` once no caller can send any.
    pub async fn next(&mut self) -> Option<Request> {
        tokio::select! {
            biased;
            Some(request) = self.root.recv() => Some(request),
            Some(request) = self.users.recv() => Some(request),
            else => None,
        }
    }
}

/// The client side of the interface, for `armourctl` and tests.
#[proxy(
    interface = "com.github.Armourd",
    default_service = "com.github.Armourd",
    default_path = "/com/github/armourd"
)]
pub trait Armourd {
    /// Executable path → pid or pids.
    fn list_processes(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
    /// Returns a [`WatchResult`] code.
    fn watch_process(&self, pid: i32) -> zbus::Result<u32>;
    /// Returns a [`WatchResult`] code.
    fn unwatch_process(&self, pid: i32) -> zbus::Result<u32>;
    /// A refusal comes back as the [`CallError`] it was sent as.
    fn watch(&self, pid: i32) -> Result<(), CallError>;
    /// A refusal comes back as the [`CallError`] it was sent as.
    fn unwatch(&self, pid: i32) -> Result<(), CallError>;
    /// Entries for [`ProcessInfo::from_dict`].
    fn get_processes(&self) -> zbus::Result<Vec<HashMap<String, OwnedVariant>>>;
    #[zbus(signal)]
    fn process_exited(
        &self,
        pid: i32,
        exe: String,
        exit_code: i32,
        signal: i32,
        core_dumped: bool,
        will_restart: bool,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn process_restarted(
        &self,
        old_pid: i32,
        new_pid: i32,
        exe: String,
        restarts: u32,
    ) -> zbus::Result<()>;
    /// Returns how many instances were reset.
    fn reset(&self, exe_or_pid: &str) -> zbus::Result<u32>;
    /// Returns the configuration's errors; empty when it was applied.
    fn reload(&self) -> zbus::Result<Vec<String>>;
    #[zbus(signal)]
    fn process_failed(&self, pid: i32, exe: String, crashes: u32) -> zbus::Result<()>;
    #[zbus(property)]
    fn backend(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}

#[cfg(test)]
mod tests;
