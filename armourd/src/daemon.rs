//! The event loop: kernel events, signals, directory changes and deadlines
//! go into the [`Supervisor`]; the [`Action`]s it returns are carried out
//! here, and only here.

use std::{collections::VecDeque, io, path::PathBuf, time::Instant};

use nix::{
    sys::{
        signal::Signal,
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::Pid,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal as Caught, SignalKind},
};

mod bus_link;
mod hooks;
mod latency;
mod notices;
mod persist;
mod reload;
mod requests;
mod spawner;
mod unheld;
mod upkeep;
mod watching;

pub use requests::Answering;
pub use upkeep::Service;

use latency::{monotonic_ns, Latencies};
use requests::{DbusSignal, Requests};
use spawner::{Done, Job, Spawner};
use unheld::Unheld;
use upkeep::Upkeep;

use crate::{
    backend::{Backend, Engine, Event, FilterError},
    config::Config,
    logging::error_chain,
    pidfd,
    race::Endings,
    status::ExitStatus,
    supervisor::{Action, Notice, ProcId, Supervisor, Target},
    watchdog::critical::View,
    watchlist::{DirWatch, WatchList},
};

/// Why the daemon stopped.
#[derive(thiserror::Error, Debug)]
pub enum DaemonError {
    #[error(transparent)]
    Backend(#[from] crate::backend::EngineError),
    #[error("cannot set up {what}")]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the event source failed")]
    Events(#[source] io::Error),
}

/// The running daemon's state.
pub struct Daemon {
    engine: Engine,
    supervisor: Supervisor,
    config: Config,
    watchlist: WatchList,
    /// Where the time of each restart goes.
    latencies: Latencies,
    /// Restarts under way, off the event loop.
    spawner: Spawner,
    /// Watches the kernel had no room for, and when to look for them again.
    unheld: Unheld,
    /// `on-crash` and `recover` commands that run.
    hooks: hooks::Hooks,
    /// The file given with `-c`, read again at each reload.
    config_path: Option<PathBuf>,
    /// The entries changed: the directories watched for new files follow.
    entries_changed: bool,
    /// D-Bus requests in, signals out; `None` without a bus.
    requests: Option<Requests>,
    /// The hardware watchdog and the service manager.
    upkeep: Upkeep,
    /// The state file that armourd's own restart reads back.
    keeper: persist::Keeper,
    /// Processes whose watch began as they were ending (`race`).
    endings: Endings,
}

/// Runs armourd until SIGTERM or SIGINT, answering requests as
/// `answering` says; `config` was read from `config_path` (`None`: the
/// default file), which a reload reads again. As a system service it feeds
/// `service`'s watchdog and tells its service manager and the process that
/// waits for `-d`. Must run inside a tokio runtime.
pub async fn run_service(
    config: Config,
    config_path: Option<PathBuf>,
    choice: Backend,
    answering: Answering,
    mut service: Service,
) -> Result<(), DaemonError> {
    // First: a signal sent while armourd starts, or just after its ready
    // line (a reload right after the start), must not take its default
    // action, which ends armourd.
    let mut signals = Signals::install()?;
    let keeper = persist::Keeper::new(service.state_dir.take());
    let engine = Engine::start(choice)?;
    let requests = requests::start(answering, engine.kind()).await;
    let mut daemon = Daemon {
        engine,
        supervisor: Supervisor::new(reload::policies(&config)),
        watchlist: WatchList::new(&config),
        config,
        latencies: Latencies::default(),
        spawner: Spawner::new(),
        unheld: Unheld::default(),
        hooks: hooks::Hooks::default(),
        config_path,
        entries_changed: false,
        requests,
        upkeep: Upkeep::new(service, Instant::now()),
        keeper,
        endings: Endings::default(),
    };
    daemon.install_marks();
    daemon.adopt(None);
    daemon.restore_state();
    let mut dirs = DirWatch::new()
        .map_err(|e| setup("an inotify instance", e.into()))
        .and_then(|d| {
            // SAFETY: the AsyncFd owns the DirWatch, which owns the descriptor.
            unsafe { AsyncFd::register(d) }.map_err(|e| setup("inotify polling", e.into()))
        })?;
    dirs.get_mut().update(&daemon.config);
    // Parsing the kernel's BTF at start-up takes megabytes that are free
    // now; hand them back so the resident set stays small.
    // SAFETY: malloc_trim only releases free heap memory.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
    log::info!(
        "ready: backend={}, {} watched, {} entries, {} executables",
        daemon.engine.kind().name(),
        daemon.supervisor.watched().len(),
        daemon.config.entries.len(),
        daemon.watchlist.len()
    );
    if daemon.config.entries.iter().any(|e| e.critical.is_some()) && !daemon.upkeep.has_watchdog() {
        log::warn!("entries marked critical have no effect without --watchdog");
    }
    let status = daemon.status_line();
    daemon.upkeep.ready(&status);
    let result = daemon.event_loop(&mut dirs, &mut signals).await;
    daemon.upkeep.stop(result.is_ok());
    result
}

fn setup(what: &'static str, source: io::Error) -> DaemonError {
    DaemonError::Setup { what, source }
}

/// The signals armourd answers, caught from the start of [`run_service`].
struct Signals {
    term: Caught,
    int: Caught,
    hup: Caught,
    chld: Caught,
    usr1: Caught,
    usr2: Caught,
}

impl Signals {
    fn install() -> Result<Self, DaemonError> {
        let catch = |kind, name| signal(kind).map_err(|e| setup(name, e));
        Ok(Self {
            term: catch(SignalKind::terminate(), "SIGTERM")?,
            int: catch(SignalKind::interrupt(), "SIGINT")?,
            hup: catch(SignalKind::hangup(), "SIGHUP")?,
            chld: catch(SignalKind::child(), "SIGCHLD")?,
            usr1: catch(SignalKind::user_defined1(), "SIGUSR1")?,
            usr2: catch(SignalKind::user_defined2(), "SIGUSR2")?,
        })
    }
}

impl Daemon {
    async fn event_loop(
        &mut self,
        dirs: &mut AsyncFd<DirWatch>,
        signals: &mut Signals,
    ) -> Result<(), DaemonError> {
        let Signals {
            term,
            int,
            hup,
            chld,
            usr1,
            usr2,
        } = signals;
        let mut events = Vec::new();
        loop {
            let deadline = [
                self.supervisor.next_deadline(),
                self.spawner.next_deadline(),
                self.unheld.due(),
                self.upkeep.next_deadline(),
                self.hooks.next_deadline(),
                self.keeper.due(),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let rescan_due = dirs.get_ref().rescan_due();
            let rescan = async {
                match rescan_due {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let looking = self.endings.looking();
            tokio::select! {
                biased;
                read = self.engine.read(&mut events, &looking) => {
                    read.map_err(DaemonError::Events)?;
                    self.handle_read(&mut events);
                }
                done = self.spawner.done() => self.spawn_done(done),
                _ = chld.recv() => self.reap(),
                Some(request) = requests::next(&mut self.requests) => self.request(request),
                // Before the notifications: a stream of them must not hold
                // the rescan off for ever.
                () = rescan => {
                    let began = Instant::now();
                    self.rescan_files();
                    dirs.get_mut().update(&self.config);
                    dirs.get_mut().rescanned(began);
                }
                ready = dirs.readable() => {
                    if let Ok(mut guard) = ready {
                        guard.clear_ready();
                    }
                    dirs.get_mut().drain();
                }
                () = sleep => {
                    let now = Instant::now();
                    self.spawner.expire(now);
                    self.hooks.expire(now);
                    let actions = self.supervisor.tick(now);
                    self.apply(actions);
                    if self.unheld.take_due(now) {
                        log::info!("looking again for processes the kernel had no room to watch");
                        self.adopt(None);
                    }
                }
                _ = usr1.recv() => self.log_status(),
                _ = usr2.recv() => log::info!("SIGUSR2 ignored (SIGUSR1 logs a status summary)"),
                _ = hup.recv() => {
                    log::info!("SIGHUP: reloading the configuration");
                    // Errors are logged where they are found.
                    let _ = self.reload();
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
            if std::mem::take(&mut self.entries_changed) {
                dirs.get_mut().update(&self.config);
            }
            // Here and not in the sleep arm, which a flood of events would starve.
            self.upkeep_tick();
            self.keep_state(false);
        }
        self.keep_state(true);
        self.upkeep.status("stopping");
        log::info!(
            "stopping; {} watched processes keep running",
            self.supervisor.watched().len()
        );
        Ok(())
    }

    pub(super) fn handle(&mut self, event: Event) {
        let now = Instant::now();
        // Logged once a restart is under way.
        let ended = match event {
            Event::Exit { pid, status, .. } => Some((pid, status)),
            _ => None,
        };
        let actions = match event {
            Event::Exec(exec) => self.exec(exec, now),
            Event::Fork {
                parent,
                child,
                start,
            } => self.supervisor.fork(parent, ProcId { pid: child, start }),
            Event::Exit {
                pid,
                start,
                status,
                ktime_ns,
            } => {
                if let Some(ended) = ktime_ns {
                    self.latencies.ended(pid, ended, monotonic_ns());
                }
                self.ended(pid, start, status, now)
            }
            Event::Lost { count } => {
                log::warn!(
                    "{count} kernel events were lost (a full buffer or a failed read); reconciling with /proc"
                );
                self.adopt(None);
                Vec::new()
            }
            // Settled with the rest of its read (`handle_read`).
            Event::Ending(_) => Vec::new(),
            Event::Unheld { .. } => {
                // The kernel logged it; holding them from here is tried
                // (and refused, logged) as their records come.
                self.unheld.kernel_refused(now);
                Vec::new()
            }
        };
        // An instance's end has its own line (a notice); a worker's has this.
        let notice = actions.iter().find_map(|action| match action {
            Action::Notify(Notice::Exited {
                pid, will_restart, ..
            }) if ended.is_some_and(|(ended, _)| ended == *pid) => Some(*will_restart),
            _ => None,
        });
        if let Some((pid, _)) = ended {
            // A restart that waits for its backoff is no measure of latency.
            let waits = actions.iter().any(|action| {
                matches!(action, Action::Notify(Notice::BackingOff { pid: p, .. }) if *p == pid)
            });
            if waits || matches!(notice, None | Some(false)) {
                self.latencies.forget(pid);
            }
        }
        self.apply(actions);
        if let (Some((pid, status)), None) = (ended, notice) {
            log::debug!("pid {pid} ended: {status}");
        }
    }

    /// Carries out `actions` and whatever they lead to. Notices are logged
    /// last, in order, so that no log write delays a restart.
    fn apply(&mut self, actions: Vec<Action>) {
        if !actions.is_empty() {
            self.keeper.changed();
        }
        let mut queue = VecDeque::from(actions);
        let mut notices = Vec::new();
        let mut hooks = Vec::new();
        let mut sent = Vec::new();
        let mut refused = Vec::new();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Spawn {
                    instance,
                    spec,
                    configured,
                } => {
                    self.spawner.submit(Job {
                        instance,
                        spec,
                        configured,
                    });
                }
                Action::Signal { target, signal } => sent.extend(send(target, signal)),
                Action::Watch(pid) => match self.engine.watch(pid) {
                    Ok(seen) => {
                        if let Some(seen) = seen {
                            self.endings.watched(seen, Instant::now());
                        }
                    }
                    // The proc connector holds it; its filter follows later.
                    Err(err @ FilterError::ProcConnector(_)) => log::warn!(
                        "cannot watch pid {pid} in the kernel filter: {}",
                        error_chain(&err)
                    ),
                    // Not watched, so never reported as watched.
                    Err(err) => {
                        self.refused(pid, &err);
                        refused.push(pid);
                        queue.extend(self.supervisor.unheld(pid));
                    }
                },
                Action::Unwatch(pid) => {
                    self.engine.unwatch(pid);
                    self.endings.unwatched(pid);
                }
                Action::Notify(notice) => notices.push(notice),
                Action::Hook(run) => hooks.push(run),
            }
        }
        // After every restart of the batch was handed to the spawner.
        let now = Instant::now();
        for run in hooks {
            if let Some(instance) = self.hooks.run(run, now) {
                let actions = self.supervisor.recover_ended(instance, now);
                self.apply(actions);
            }
        }
        for (signal, target) in sent {
            log::debug!("sent {signal} to {target}");
        }
        for notice in notices {
            match notice {
                Notice::Watching { pid, .. } if refused.contains(&pid) => {}
                notice => self.notify(notice),
            }
        }
    }

    /// A restart's spawn is over.
    fn spawn_done(&mut self, done: Done) {
        let pid = done.result.as_ref().ok().copied();
        if !done.claimed {
            if let Some(pid) = pid {
                self.latencies.spawned(pid, done.began_ns);
            }
            let actions = self
                .supervisor
                .spawned(done.instance, done.result, Instant::now());
            self.apply(actions);
        }
        // Where the exec's datagram may not pass, the restart's exec is
        // timed by its spawning thread (unless the datagram came first).
        if let (Some(pid), Some(executed)) = (pid, done.executed_ns) {
            if self.engine.may_miss_exec_times() {
                if let Some(text) = self.latencies.executed(pid, executed) {
                    log::debug!("pid {pid} restart latency {text}");
                }
            }
        }
    }

    /// Feeds the watchdogs when due; the instances of critical entries
    /// decide whether the hardware one still is.
    fn upkeep_tick(&mut self) {
        let now = Instant::now();
        if self.upkeep.next_deadline().is_none_or(|due| due > now) {
            return;
        }
        let critical = self
            .supervisor
            .instances()
            .filter_map(|view| {
                let entry = self.config.entries.get(view.entry?)?;
                Some(View {
                    id: view.id,
                    exe: view.spec.exe.clone(),
                    running: matches!(view.state, crate::supervisor::State::Running),
                    gave_up: matches!(view.state, crate::supervisor::State::Failed),
                    grace: entry.critical?,
                })
            })
            .collect();
        self.upkeep.tick(now, critical);
    }

    /// The service manager's status line (`systemctl status`).
    fn status_line(&self) -> String {
        format!(
            "backend={}, {} watched",
            self.engine.kind().name(),
            self.supervisor.watched().len()
        )
    }

    /// Logs what armourd watches and what it is doing (on SIGUSR1).
    fn log_status(&self) {
        let mut states = std::collections::BTreeMap::<&str, usize>::new();
        for view in self.supervisor.instances() {
            *states.entry(requests::state_name(view.state)).or_default() += 1;
        }
        let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        log::info!(
            "status: backend={}, {} instances ({}), {} processes watched, {} executables, restarts {}",
            self.engine.kind().name(),
            self.supervisor.instances().count(),
            if states.is_empty() { "none".to_owned() } else { states.join(", ") },
            self.supervisor.watched().len(),
            self.watchlist.len(),
            if self.spawner.is_busy() { "under way" } else { "idle" },
        );
    }
}

/// Sends `signal` to exactly the process (or group) meant; what was
/// sent, for the log.
fn send(target: Target, signal: i32) -> Option<(Signal, String)> {
    let sig = Signal::try_from(signal).ok()?;
    let (result, what) = match target {
        Target::Process(proc) => (
            pidfd::signal_process(proc, signal),
            format!("pid {}", proc.pid),
        ),
        Target::Group(leader) => (
            pidfd::signal_group(leader, signal),
            format!("process group {}", leader.pid),
        ),
    };
    match result {
        Ok(pidfd::Sent::Yes) => return Some((sig, what)),
        Ok(pidfd::Sent::Gone) => {}
        Err(err) => log::warn!("cannot send {sig} to {what}: {err}"),
    }
    None
}

impl Daemon {
    /// Reaps every ended child: restarted processes and hooks are
    /// armourd's children. A hook's end goes to the hooks.
    fn reap(&mut self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code as u8)),
                Ok(WaitStatus::Signaled(pid, signal, core_dumped)) => (
                    pid,
                    ExitStatus::Signaled {
                        signal: signal as i32,
                        core_dumped,
                    },
                ),
                Ok(status) => {
                    log::trace!("reaped {status:?}");
                    continue;
                }
            };
            log::trace!("reaped pid {pid}: {status}");
            let now = Instant::now();
            if let Some(instance) = self.hooks.reaped(pid.as_raw() as u32, status, now) {
                let actions = self.supervisor.recover_ended(instance, now);
                self.apply(actions);
            }
        }
    }
}
