//! The object armourd serves at [`OBJECT_PATH`]: its methods and
//! properties, each call handed to the daemon as a [`Request`].

use super::*;

/// How the interface learns who calls.
pub(super) enum Callers {
    /// Asked of the bus, on this connection, once per sender.
    Bus(Connection),
    /// The one peer of a connection without a bus (the control socket),
    /// known from the socket's credentials.
    Peer(u32),
}

/// The object served at [`OBJECT_PATH`].
pub(super) struct Interface {
    pub(super) backend: &'static str,
    pub(super) queues: Queues,
    pub(super) gate: Gate,
    /// How the caller's uid is learnt.
    pub(super) callers: Callers,
    /// Served under [`ROOT_BUS_NAME`]: only root's calls are served.
    pub(super) root_only: bool,
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
    pub(super) async fn process_exited(
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
    pub(super) async fn process_restarted(
        emitter: &SignalEmitter<'_>,
        old_pid: i32,
        new_pid: i32,
        exe: &str,
        restarts: u32,
    ) -> zbus::Result<()>;

    /// A watched process crashed too often (`give-up`) and is not restarted.
    #[zbus(signal)]
    pub(super) async fn process_failed(
        emitter: &SignalEmitter<'_>,
        pid: i32,
        exe: &str,
        crashes: u32,
    ) -> zbus::Result<()>;
}
