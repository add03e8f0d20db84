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
mod process_info;

pub use control::ControlSocket;
pub use gate::{Gate, Refused};
pub use process_info::{group_by_exe, Pids, ProcessInfo, STATES};

/// The well-known name armourd owns.
pub const BUS_NAME: &str = "com.github.Armourd";
/// The name armourd owns on a second connection of its own, for root
/// only: calls to it wait in their own queue in the bus, not behind
/// everything other users sent to [`BUS_NAME`] (SPEC §7).
pub const ROOT_BUS_NAME: &str = "com.github.Armourd.Root";
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
    const ALL: [Self; 3] = [Self::Ok, Self::AlreadyWatched, Self::Failed];

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

    /// The result a number on the wire stands for.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
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

/// How the interface learns who calls.
enum Callers {
    /// Asked of the bus, on this connection, once per sender.
    Bus(Connection),
    /// The one peer of a connection without a bus (the control socket),
    /// known from the socket's credentials.
    Peer(u32),
}

/// The object served at [`OBJECT_PATH`].
struct Interface {
    backend: &'static str,
    queues: Queues,
    gate: Gate,
    /// How the caller's uid is learnt.
    callers: Callers,
    /// Served under [`ROOT_BUS_NAME`]: only root's calls are served.
    root_only: bool,
}

impl Interface {
    /// Sends a request of `caller_uid` to the daemon and waits for its answer.
    async fn ask<T>(
        &self,
        caller_uid: u32,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, CallError> {
        let unavailable = || CallError::Unavailable("armourd is shutting down".into());
        let (reply, answer) = oneshot::channel();
        let queue = if caller_uid == 0 {
            &self.queues.root
        } else {
            &self.queues.users
        };
        queue
            .send(request(reply))
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())
    }

    /// The caller's uid (asked of the bus once per connection), if its
    /// share of calls has room for this one.
    async fn admit(&self, header: &Header<'_>) -> Result<u32, CallError> {
        let lookup = match &self.callers {
            Callers::Peer(uid) => return self.admit_uid(*uid),
            Callers::Bus(lookup) => lookup,
        };
        let sender = header
            .sender()
            .ok_or_else(|| CallError::UnknownCaller("the call has no sender".into()))?;
        let uid = match self.gate.uid_of(sender.as_str()) {
            Some(uid) => uid,
            None => {
                let uid = caller_uid(lookup, sender).await?;
                self.gate.remember(sender.as_str(), uid);
                uid
            }
        };
        self.admit_uid(uid)
    }

    /// `uid`, if it may call here and its share of calls has room for this one.
    fn admit_uid(&self, uid: u32) -> Result<u32, CallError> {
        if self.root_only && uid != 0 {
            return Err(CallError::AccessDenied(format!(
                "only root may call armourd at {ROOT_BUS_NAME}; call {BUS_NAME}"
            )));
        }
        self.gate.admit(uid, Instant::now())?;
        Ok(uid)
    }

    async fn watch(
        &self,
        pid: i32,
        code_only: bool,
        header: &Header<'_>,
    ) -> Result<Result<(), Refusal>, CallError> {
        let caller_uid = self.admit(header).await?;
        self.ask(caller_uid, |reply| Request::Watch {
            pid,
            caller_uid,
            code_only,
            reply,
        })
        .await
    }

    async fn unwatch(
        &self,
        pid: i32,
        code_only: bool,
        header: &Header<'_>,
    ) -> Result<Result<(), Refusal>, CallError> {
        let caller_uid = self.admit(header).await?;
        self.ask(caller_uid, |reply| Request::Unwatch {
            pid,
            caller_uid,
            code_only,
            reply,
        })
        .await
    }

    /// Every watched process; nothing for a call that expects no reply.
    async fn processes(&self, header: &Header<'_>) -> Result<Vec<ProcessInfo>, CallError> {
        no_arguments(header)?;
        if !wants_reply(header) {
            return Ok(Vec::new());
        }
        let uid = self.admit(header).await?;
        self.ask(uid, |reply| Request::Processes { reply }).await
    }
}

/// Whether the caller waits for a reply: a call that only reads is not
/// worth serving otherwise.
fn wants_reply(header: &Header<'_>) -> bool {
    !header
        .primary()
        .flags()
        .contains(zbus::message::Flags::NO_REPLY_EXPECTED)
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

/// Refuses a caller that is not root; root's uid.
fn root_only(uid: u32, method: &str) -> Result<u32, CallError> {
    match uid {
        0 => Ok(0),
        uid => Err(CallError::AccessDenied(format!(
            "{method} is for root only (the caller is uid {uid})"
        ))),
    }
}

/// The uid of the connection `sender`, as the bus knows it.
async fn caller_uid(conn: &Connection, sender: &UniqueName<'_>) -> Result<u32, CallError> {
    let reply = conn
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "GetConnectionUnixUser",
            sender,
        )
        .await
        .and_then(|m| m.body().deserialize::<u32>());
    reply.map_err(|e| CallError::UnknownCaller(format!("cannot learn the uid of {sender}: {e}")))
}

/// One call at a time (`spawn = false`): see the module's documentation.
#[interface(name = "com.github.Armourd", spawn = false)]
impl Interface {
    /// Executable path → pid (`i`), or pids (`ai`) when several instances run.
    async fn list_processes(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<HashMap<String, Variant<'static>>, CallError> {
        let processes = self.processes(&header).await?;
        Ok(group_by_exe(&processes)
            .into_iter()
            .map(|(exe, pids)| (exe, pids.into()))
            .collect())
    }

    /// Watches a running process; returns a [`WatchResult`] code (0, 1 or 2).
    async fn watch_process(
        &self,
        pid: i32,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<u32, CallError> {
        let result = self.watch(pid, true, &header).await?;
        Ok(WatchResult::of_watch(&result).code())
    }

    /// Stops watching a process; returns a [`WatchResult`] code (0 or 2).
    async fn unwatch_process(
        &self,
        pid: i32,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<u32, CallError> {
        let result = self.unwatch(pid, true, &header).await?;
        Ok(WatchResult::of_unwatch(&result).code())
    }

    /// Watches a running process; a refusal is a named error (see [`Refusal`]).
    #[zbus(name = "Watch")]
    async fn watch_method(
        &self,
        pid: i32,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), CallError> {
        Ok(self.watch(pid, false, &header).await??)
    }

    /// Stops watching a process; a refusal is a named error (see [`Refusal`]).
    #[zbus(name = "Unwatch")]
    async fn unwatch_method(
        &self,
        pid: i32,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), CallError> {
        Ok(self.unwatch(pid, false, &header).await??)
    }

    /// One `a{sv}` per watched process (see [`ProcessInfo::to_dict`]).
    async fn get_processes(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<HashMap<&'static str, Variant<'static>>>, CallError> {
        let processes = self.processes(&header).await?;
        Ok(processes.iter().map(ProcessInfo::to_dict).collect())
    }

    /// Forgets the crashes of the instances of an executable path or a pid
    /// (root only); those that gave up or wait for a backoff start again.
    /// Returns how many instances were reset.
    async fn reset(
        &self,
        exe_or_pid: String,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<u32, CallError> {
        let uid = root_only(self.admit(&header).await?, "Reset")?;
        self.ask(uid, |reply| Request::Reset {
            target: exe_or_pid,
            reply,
        })
        .await
    }

    /// Reads the configuration file again (root only). Returns its errors;
    /// empty when the new configuration is in force.
    async fn reload(&self, #[zbus(header)] header: Header<'_>) -> Result<Vec<String>, CallError> {
        no_arguments(&header)?;
        let uid = root_only(self.admit(&header).await?, "Reload")?;
        self.ask(uid, |reply| Request::Reload { reply }).await
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
    /// The connection that serves [`ROOT_BUS_NAME`], if it could.
    _root: Option<Connection>,
}

impl Service {
    /// Connects to `bus`, serves the object and requests [`BUS_NAME`]
    /// (without taking it from another owner). `backend` is the `Backend`
    /// property; method calls become [`Request`]s on `queues`.
    pub async fn start(
        bus: Bus,
        backend: &'static str,
        queues: Queues,
    ) -> Result<Service, DbusError> {
        let lookup = connect(bus).await?;
        let mut service = serve(
            connect(bus).await?,
            lookup.clone(),
            bus,
            backend,
            queues.clone(),
        )
        .await?;
        match serve_root(connect(bus).await?, lookup, bus, backend, queues).await {
            Ok(conn) => service._root = Some(conn),
            Err(err) => {
                // An older policy file lacks the name; everything but root's
                // own queue still works.
                let cause = std::error::Error::source(&err).map(|c| format!(": {c}"));
                log::warn!(
                    "not serving {ROOT_BUS_NAME} ({err}{}); root's calls wait behind everyone's",
                    cause.unwrap_or_default()
                );
            }
        }
        Ok(service)
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

/// Serves the object on `conn` and requests [`BUS_NAME`]; callers' uids
/// are asked on `lookup`; `bus` names the bus in messages.
async fn serve(
    conn: Connection,
    lookup: Connection,
    bus: Bus,
    backend: &'static str,
    queues: Queues,
) -> Result<Service, DbusError> {
    let failed = |source| DbusError::Serve { bus, source };
    let iface = Interface {
        backend,
        queues,
        gate: Gate::default(),
        callers: Callers::Bus(lookup),
        root_only: false,
    };
    conn.object_server()
        .at(OBJECT_PATH, iface)
        .await
        .map_err(failed)?;
    request_name(&conn, BUS_NAME, bus).await?;
    let emitter = SignalEmitter::new(&conn, OBJECT_PATH).map_err(failed)?;
    log::info!("serving {BUS_NAME} on the {bus} bus");
    Ok(Service {
        bus,
        emitter: emitter.into_owned(),
        warned: AtomicBool::new(false),
        _root: None,
    })
}

/// Serves the object for root alone on `conn`, under [`ROOT_BUS_NAME`];
/// returns the connection, which serves as long as it is kept.
async fn serve_root(
    conn: Connection,
    lookup: Connection,
    bus: Bus,
    backend: &'static str,
    queues: Queues,
) -> Result<Connection, DbusError> {
    let iface = Interface {
        backend,
        queues,
        gate: Gate::default(),
        callers: Callers::Bus(lookup),
        root_only: true,
    };
    conn.object_server()
        .at(OBJECT_PATH, iface)
        .await
        .map_err(|source| DbusError::Serve { bus, source })?;
    request_name(&conn, ROOT_BUS_NAME, bus).await?;
    log::info!("serving {ROOT_BUS_NAME} on the {bus} bus");
    Ok(conn)
}

/// Requests `name` without queueing and without replacing an owner.
async fn request_name(conn: &Connection, name: &'static str, bus: Bus) -> Result<(), DbusError> {
    use zbus::fdo::{Error as Fdo, RequestNameFlags};
    match conn
        .request_name_with_flags(name, RequestNameFlags::DO_NOT_QUEUE)
        .await
    {
        Ok(_) => Ok(()),
        Err(zbus::Error::NameTaken) => Err(DbusError::NameTaken { bus, name }),
        Err(zbus::Error::FDO(e)) if matches!(*e, Fdo::AccessDenied(_)) => {
            Err(DbusError::NameDenied {
                bus,
                name,
                source: zbus::Error::FDO(e),
            })
        }
        Err(source) => Err(DbusError::RequestName { bus, name, source }),
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
