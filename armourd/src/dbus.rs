//! The D-Bus side of armourd (SPEC §7): the `com.github.Armourd` service at
//! `/com/github/armourd`, and the client proxy that `armourctl` uses.
//!
//! The service holds no watchdog state. Each method call that needs some
//! becomes a [`Request`] sent to the daemon's event loop, which answers it
//! through the request's `oneshot` channel; the daemon emits the signals
//! through [`Service::process_exited`] and [`Service::process_restarted`].
//! Introspectable, Properties and Peer come from zbus, which also answers
//! unknown methods and mistyped arguments with a D-Bus error at once.

use std::{
    collections::HashMap,
    fmt,
    sync::atomic::{AtomicBool, Ordering},
};

use tokio::sync::{mpsc, oneshot};
use zbus::{
    connection, fdo::DBusProxy, interface, message::Header, names::BusName,
    object_server::SignalEmitter, proxy, Connection, OwnedVariant, Variant,
};

mod process_info;

pub use process_info::{group_by_exe, Pids, ProcessInfo, STATES};

/// The well-known name armourd owns.
pub const BUS_NAME: &str = "com.github.Armourd";
/// The path of armourd's one object.
pub const OBJECT_PATH: &str = "/com/github/armourd";
/// The name of armourd's interface.
pub const INTERFACE: &str = "com.github.Armourd";

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
    /// `WatchProcess`: start watching a running process.
    Watch {
        pid: i32,
        caller_uid: u32,
        reply: oneshot::Sender<WatchResult>,
    },
    /// `UnwatchProcess`: stop watching a process.
    Unwatch {
        pid: i32,
        caller_uid: u32,
        reply: oneshot::Sender<WatchResult>,
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

/// The answer to `WatchProcess` and `UnwatchProcess`, with the C daemon's numbers.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchResult {
    Ok = 0,
    AlreadyWatched = 1,
    /// Kept for compatibility with the C daemon's clients.
    Failed = 2,
    NoSuchProcess = 3,
    PermissionDenied = 4,
}

impl WatchResult {
    const ALL: [Self; 5] = [
        Self::Ok,
        Self::AlreadyWatched,
        Self::Failed,
        Self::NoSuchProcess,
        Self::PermissionDenied,
    ];

    /// The number on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The result a number on the wire stands for.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// What the result means, for people.
    pub fn description(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::AlreadyWatched => "already watched",
            Self::Failed => "failed",
            Self::NoSuchProcess => "no such process",
            Self::PermissionDenied => {
                "permission denied (a process of another user needs a root caller)"
            }
        }
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
    #[error("{BUS_NAME} is already owned on the {bus} bus: is another armourd running?")]
    NameTaken { bus: Bus },
    #[error(
        "the {bus} bus refused {BUS_NAME} to this user (only root may own it on the system bus; \
         is dbus/com.github.Armourd.conf installed in /usr/share/dbus-1/system.d?)"
    )]
    NameDenied {
        bus: Bus,
        #[source]
        source: zbus::Error,
    },
    #[error("cannot request {BUS_NAME} on the {bus} bus")]
    RequestName {
        bus: Bus,
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

/// Errors a D-Bus caller can get beyond zbus's own (unknown method, bad arguments).
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "com.github.Armourd.Error")]
pub enum CallError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The daemon is shutting down and no longer answers.
    Unavailable(String),
    /// The bus would not tell the caller's uid.
    UnknownCaller(String),
    /// The method is for root only.
    AccessDenied(String),
}

/// Refuses a caller that is not root.
async fn root_only(conn: &Connection, header: &Header<'_>, method: &str) -> Result<(), CallError> {
    match caller_uid(conn, header).await? {
        0 => Ok(()),
        uid => Err(CallError::AccessDenied(format!(
            "{method} is for root only (the caller is uid {uid})"
        ))),
    }
}

/// The object served at [`OBJECT_PATH`].
struct Interface {
    backend: &'static str,
    requests: mpsc::Sender<Request>,
}

impl Interface {
    /// Sends a request to the daemon and waits for its answer.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, CallError> {
        let unavailable = || CallError::Unavailable("armourd is shutting down".into());
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(request(reply))
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())
    }
}

/// Rejects arguments to a method that takes none (zbus does not check).
fn no_arguments(header: &Header<'_>) -> Result<(), CallError> {
    let signature = header.signature().to_string();
    if signature.is_empty() {
        return Ok(());
    }
    Err(CallError::ZBus(zbus::Error::FDO(Box::new(
        zbus::fdo::Error::InvalidArgs(format!("this method takes no arguments, got `{signature}`")),
    ))))
}

/// The uid of the connection that sent `header`'s message.
async fn caller_uid(conn: &Connection, header: &Header<'_>) -> Result<u32, CallError> {
    let sender = header
        .sender()
        .ok_or_else(|| CallError::UnknownCaller("the call has no sender".into()))?;
    let dbus = DBusProxy::new(conn).await?;
    dbus.get_connection_unix_user(BusName::from(sender.clone()))
        .await
        .map_err(|e| CallError::UnknownCaller(format!("cannot learn the uid of {sender}: {e}")))
}

#[interface(name = "com.github.Armourd")]
impl Interface {
    /// Executable path → pid (`i`), or pids (`ai`) when several instances run.
    async fn list_processes(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<HashMap<String, Variant<'static>>, CallError> {
        no_arguments(&header)?;
        let processes = self.ask(|reply| Request::Processes { reply }).await?;
        Ok(group_by_exe(&processes)
            .into_iter()
            .map(|(exe, pids)| (exe, pids.into()))
            .collect())
    }

    /// Watches a running process; returns a [`WatchResult`] code.
    async fn watch_process(
        &self,
        pid: i32,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<u32, CallError> {
        let caller_uid = caller_uid(conn, &header).await?;
        let result = self.ask(|reply| Request::Watch {
            pid,
            caller_uid,
            reply,
        });
        Ok(result.await?.code())
    }

    /// Stops watching a process; returns a [`WatchResult`] code.
    async fn unwatch_process(
        &self,
        pid: i32,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<u32, CallError> {
        let caller_uid = caller_uid(conn, &header).await?;
        let result = self.ask(|reply| Request::Unwatch {
            pid,
            caller_uid,
            reply,
        });
        Ok(result.await?.code())
    }

    /// One `a{sv}` per watched process (see [`ProcessInfo::to_dict`]).
    async fn get_processes(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<HashMap<&'static str, Variant<'static>>>, CallError> {
        no_arguments(&header)?;
        let processes = self.ask(|reply| Request::Processes { reply }).await?;
        Ok(processes.iter().map(ProcessInfo::to_dict).collect())
    }

    /// Forgets the crashes of the instances of an executable path or a pid
    /// (root only); those that gave up or wait for a backoff start again.
    /// Returns how many instances were reset.
    async fn reset(
        &self,
        exe_or_pid: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<u32, CallError> {
        root_only(conn, &header, "Reset").await?;
        self.ask(|reply| Request::Reset {
            target: exe_or_pid,
            reply,
        })
        .await
    }

    /// Reads the configuration file again (root only). Returns its errors;
    /// empty when the new configuration is in force.
    async fn reload(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<String>, CallError> {
        no_arguments(&header)?;
        root_only(conn, &header, "Reload").await?;
        self.ask(|reply| Request::Reload { reply }).await
    }

    /// The event source: `ebpf` or `proc-connector`.
    #[zbus(property(emits_changed_signal = "const"))]
    fn backend(&self) -> String {
        self.backend.to_owned()
    }

    /// armourd's version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    /// A watched process ended.
    #[zbus(signal)]
    async fn process_exited(
        emitter: &SignalEmitter<'_>,
        pid: i32,
        exe: &str,
        exit_code: i32,
        signal: i32,
        core_dumped: bool,
        will_restart: bool,
    ) -> zbus::Result<()>;

    /// A watched process was started again.
    #[zbus(signal)]
    async fn process_restarted(
        emitter: &SignalEmitter<'_>,
        old_pid: i32,
        new_pid: i32,
        exe: &str,
        restarts: u32,
    ) -> zbus::Result<()>;

    /// A watched process crashed too often (`give-up`) and is not restarted.
    #[zbus(signal)]
    async fn process_failed(
        emitter: &SignalEmitter<'_>,
        pid: i32,
        exe: &str,
        crashes: u32,
    ) -> zbus::Result<()>;
}

/// armourd on the bus: serves the object and emits the signals.
pub struct Service {
    bus: Bus,
    emitter: SignalEmitter<'static>,
    /// Whether a failed emission was already logged as a warning.
    warned: AtomicBool,
}

impl Service {
    /// Connects to `bus`, serves the object and requests [`BUS_NAME`]
    /// (without taking it from another owner). `backend` is the `Backend`
    /// property; method calls become [`Request`]s on `requests`.
    pub async fn start(
        bus: Bus,
        backend: &'static str,
        requests: mpsc::Sender<Request>,
    ) -> Result<Service, DbusError> {
        serve(connect(bus).await?, bus, backend, requests).await
    }

    /// The bus the service is on.
    pub fn bus(&self) -> Bus {
        self.bus
    }

    /// Emits `ProcessExited`.
    pub async fn process_exited(
        &self,
        pid: i32,
        exe: &str,
        exit_code: i32,
        signal: i32,
        core_dumped: bool,
        will_restart: bool,
    ) {
        let sent = Interface::process_exited(
            &self.emitter,
            pid,
            exe,
            exit_code,
            signal,
            core_dumped,
            will_restart,
        )
        .await;
        self.note("ProcessExited", sent);
    }

    /// Emits `ProcessRestarted`.
    pub async fn process_restarted(&self, old_pid: i32, new_pid: i32, exe: &str, restarts: u32) {
        let sent =
            Interface::process_restarted(&self.emitter, old_pid, new_pid, exe, restarts).await;
        self.note("ProcessRestarted", sent);
    }

    /// Emits `ProcessFailed`.
    pub async fn process_failed(&self, pid: i32, exe: &str, crashes: u32) {
        let sent = Interface::process_failed(&self.emitter, pid, exe, crashes).await;
        self.note("ProcessFailed", sent);
    }

    /// Logs a failed emission: a warning the first time, then at debug level
    /// so that a lost bus does not flood the log.
    fn note(&self, signal: &str, sent: zbus::Result<()>) {
        match sent {
            Ok(()) => self.warned.store(false, Ordering::Relaxed),
            Err(e) if !self.warned.swap(true, Ordering::Relaxed) => {
                log::warn!("cannot emit {signal} on the {} bus: {e}", self.bus);
            }
            Err(e) => log::debug!("cannot emit {signal} on the {} bus: {e}", self.bus),
        }
    }
}

/// Serves the object on `conn` and requests [`BUS_NAME`]; `bus` names the bus in messages.
async fn serve(
    conn: Connection,
    bus: Bus,
    backend: &'static str,
    requests: mpsc::Sender<Request>,
) -> Result<Service, DbusError> {
    let failed = |source| DbusError::Serve { bus, source };
    let iface = Interface { backend, requests };
    conn.object_server()
        .at(OBJECT_PATH, iface)
        .await
        .map_err(failed)?;
    request_name(&conn, bus).await?;
    let emitter = SignalEmitter::new(&conn, OBJECT_PATH).map_err(failed)?;
    log::info!("serving {BUS_NAME} on the {bus} bus");
    Ok(Service {
        bus,
        emitter: emitter.into_owned(),
        warned: AtomicBool::new(false),
    })
}

/// Requests [`BUS_NAME`] without queueing and without replacing an owner.
async fn request_name(conn: &Connection, bus: Bus) -> Result<(), DbusError> {
    use zbus::fdo::{Error as Fdo, RequestNameFlags};
    match conn
        .request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE)
        .await
    {
        Ok(_) => Ok(()),
        Err(zbus::Error::NameTaken) => Err(DbusError::NameTaken { bus }),
        Err(zbus::Error::FDO(e)) if matches!(*e, Fdo::AccessDenied(_)) => {
            Err(DbusError::NameDenied {
                bus,
                source: zbus::Error::FDO(e),
            })
        }
        Err(source) => Err(DbusError::RequestName { bus, source }),
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
