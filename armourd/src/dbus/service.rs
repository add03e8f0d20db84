//! armourd on the bus: connecting, serving the object under its names,
//! and emitting the signals.

use super::*;

/// armourd on the bus: serves the object and emits the signals.
pub struct Service {
    bus: Bus,
    emitter: SignalEmitter<'static>,
    /// Whether a failed emission was already logged as a warning.
    warned: AtomicBool,
    /// The connection that serves [`ROOT_BUS_NAME`], if it could.
    _root: Option<Connection>,
    /// The connection that serves [`BUS_NAME`].
    conn: Connection,
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

    /// Returns once the bus connection is gone (the bus daemon ended or
    /// restarted): the names are lost with it.
    pub async fn closed(&self) {
        self.conn.closed().await
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
pub(super) async fn serve(
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
        conn,
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
