//! The event loop: kernel events, signals, directory changes and deadlines
//! go into the [`Supervisor`]; the [`Action`]s it returns are carried out
//! here, and only here.

use std::{collections::VecDeque, ffi::OsString, io, path::PathBuf, time::Instant};

use nix::{
    sys::{
        signal::Signal,
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::Pid,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

mod hooks;
mod latency;
mod reload;
mod requests;
mod spawner;
mod unheld;
mod upkeep;

pub use requests::{Answering, DEFAULT_MAX_USER_WATCHES};
pub use upkeep::Service;

use armourd_common::PidClass;
use latency::{monotonic_ns, Latencies};
use spawner::{Done, Job, Spawner};
use unheld::Unheld;
use upkeep::Upkeep;

use crate::{
    backend::{Event, ExecEvent, FilterError},
    config::Config,
    engine::Engine,
    launch::LaunchSpec,
    pidfd, procfs,
    status::ExitStatus,
    supervisor::{Action, Exec, Notice, ProcId, Supervisor, Target},
    watchdog::critical::View,
    watchlist::{DirWatch, Match, WatchList},
};

/// Which backend to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Ebpf,
    ProcConnector,
}

/// Why the daemon stopped.
#[derive(thiserror::Error, Debug)]
pub enum DaemonError {
    #[error(transparent)]
    Backend(#[from] crate::engine::EngineError),
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
    bus: Option<requests::Bus>,
    /// The hardware watchdog and the service manager.
    upkeep: Upkeep,
}

/// Runs armourd until SIGTERM or SIGINT, answering requests as
/// `answering` says; `config` was read from `config_path` (`None`: the
/// default file), which a reload reads again. Must run inside a tokio
/// runtime.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    choice: BackendChoice,
    answering: Answering,
) -> Result<(), DaemonError> {
    run_service(config, config_path, choice, answering, Service::default()).await
}

/// [`run`] as a system service: feeding `service`'s watchdog, telling its
/// service manager and the process that waits for `-d`.
pub async fn run_service(
    config: Config,
    config_path: Option<PathBuf>,
    choice: BackendChoice,
    answering: Answering,
    service: Service,
) -> Result<(), DaemonError> {
    let engine = Engine::start(choice)?;
    let bus = requests::start(answering, engine.kind()).await;
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
        bus,
        upkeep: Upkeep::new(service, Instant::now()),
    };
    daemon.install_marks();
    daemon.adopt(None);
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
    let result = daemon.event_loop(&mut dirs).await;
    daemon.upkeep.stop(result.is_ok());
    result
}

fn setup(what: &'static str, source: io::Error) -> DaemonError {
    DaemonError::Setup { what, source }
}

impl Daemon {
    async fn event_loop(&mut self, dirs: &mut AsyncFd<DirWatch>) -> Result<(), DaemonError> {
        let mut term = signal(SignalKind::terminate()).map_err(|e| setup("SIGTERM", e))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| setup("SIGINT", e))?;
        let mut hup = signal(SignalKind::hangup()).map_err(|e| setup("SIGHUP", e))?;
        let mut chld = signal(SignalKind::child()).map_err(|e| setup("SIGCHLD", e))?;
        let mut usr1 = signal(SignalKind::user_defined1()).map_err(|e| setup("SIGUSR1", e))?;
        let mut usr2 = signal(SignalKind::user_defined2()).map_err(|e| setup("SIGUSR2", e))?;
        let mut events = Vec::new();
        loop {
            let deadline = [
                self.supervisor.next_deadline(),
                self.spawner.next_deadline(),
                self.unheld.due(),
                self.upkeep.next_deadline(),
                self.hooks.next_deadline(),
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
            tokio::select! {
                biased;
                read = self.engine.read(&mut events) => {
                    read.map_err(DaemonError::Events)?;
                    for event in events.drain(..) {
                        self.handle(event);
                    }
                }
                done = self.spawner.done() => self.spawn_done(done),
                _ = chld.recv() => self.reap(),
                Some(request) = requests::next(&mut self.bus) => self.request(request),
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
        }
        self.upkeep.status("stopping");
        log::info!(
            "stopping; {} watched processes keep running",
            self.supervisor.watched().len()
        );
        Ok(())
    }

    fn handle(&mut self, event: Event) {
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
                self.supervisor.exit(pid, start, status, now)
            }
            Event::Lost { count } => {
                log::warn!(
                    "{count} kernel events were lost (a full buffer or a failed read); reconciling with /proc"
                );
                self.adopt(None);
                Vec::new()
            }
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

    fn exec(&mut self, exec: ExecEvent, now: Instant) -> Vec<Action> {
        let pid = exec.pid;
        if !self.supervisor.is_watched(pid) {
            // A restart reaching its program before its worker said so.
            if let Some((instance, began)) = self.spawner.claim(pid) {
                self.latencies.spawned(pid, began);
                let actions = self.supervisor.spawned(instance, Ok(pid), now);
                self.apply(actions);
            }
        }
        if let Some(text) = exec.ktime_ns.and_then(|k| self.latencies.executed(pid, k)) {
            log::debug!("pid {pid} restart latency {text}");
        }
        if self.supervisor.awaits_exec(pid) {
            return self.supervisor.exec_confirmed(pid, exec.start);
        }
        let Some(key) = exec.file else {
            self.adopt_orphans_of(pid);
            return self.supervisor.exec_other(pid);
        };
        if self.watchlist.file(&key).is_none() && !self.watchlist.is_interpreter(&key) {
            // The common case with the proc connector: someone else's exec.
            return self.supervisor.exec_other(pid);
        }
        let argv = match &exec.argv {
            Some(argv) => argv.clone(),
            None => procfs::cmdline(pid).unwrap_or_default(),
        };
        let Some(found) = self
            .watchlist
            .classify(pid, &key, exec.filename.as_deref(), &argv)
        else {
            return self.supervisor.exec_other(pid);
        };
        let (entry, exe, script_argv) =
            (found.file.entry, found.file.path.clone(), found.script_argv);
        let argv = strip_interpreter(argv, script_argv);
        let known = procfs::Known {
            argv: Some(argv.clone()),
            env: exec.env,
            uid: exec.uid,
            gid: exec.gid,
        };
        let (spec, leads_group) = capture(pid, exe, known, argv);
        let exec = Exec {
            proc: ProcId {
                pid,
                start: exec.start,
            },
            entry: Some(entry),
            spec,
            leads_group,
            adopted: false,
        };
        self.supervisor.exec(exec, now)
    }

    /// Adopts running processes of watched files (of `only`, if given).
    /// Once the kernel refuses a watch for want of room, no more processes
    /// of that class are tried.
    fn adopt(&mut self, only: Option<&[armourd_common::FileKey]>) {
        let now = Instant::now();
        // Each is watched before the next is looked at (a refusal stops
        // the rest of its class), so the scan must not borrow the list.
        let found: Vec<_> = (self.watchlist.scan(only).into_iter())
            .map(|(pid, stat, Match { file, script_argv }, argv)| {
                (pid, stat, file.entry, file.path.clone(), script_argv, argv)
            })
            .collect();
        let mut adopted: Vec<(u32, procfs::Stat, usize)> = Vec::new();
        self.unheld.begin();
        for (pid, stat, entry, path, script_argv, argv) in found {
            if self.supervisor.is_watched(pid) || self.unheld_class(pid) {
                continue;
            }
            let start = Some(stat.start_ticks);
            // A process forked (same program, same group) by an adopted one is
            // part of that instance.
            let parent = adopted
                .iter()
                .find(|(p, s, e)| *p == stat.ppid && *e == entry && s.pgrp == stat.pgrp);
            if let Some((parent, _, _)) = parent {
                let actions = self.supervisor.fork(*parent, ProcId { pid, start });
                self.apply(actions);
                continue;
            }
            let argv = strip_interpreter(argv, script_argv);
            let known = procfs::Known {
                argv: Some(argv.clone()),
                ..procfs::Known::default()
            };
            let (spec, leads_group) = capture(pid, path, known, argv);
            let exec = Exec {
                proc: ProcId { pid, start },
                entry: Some(entry),
                spec,
                leads_group,
                adopted: true,
            };
            let actions = self.supervisor.exec(exec, now);
            self.apply(actions);
            if self.supervisor.is_watched(pid) {
                adopted.push((pid, stat, entry));
            }
        }
        self.unheld.end(Instant::now());
        // A process that ended between the scan and its watch, or while
        // events were lost, was not seen ending: its status is unknown.
        for proc in self.supervisor.watched() {
            if !alive(proc) {
                let actions = self
                    .supervisor
                    .exit(proc.pid, proc.start, ExitStatus::Unknown, now);
                self.apply(actions);
            }
        }
    }

    /// A process ended before its exec could be looked at (a backend that
    /// does not say which file was executed). If its name, still readable
    /// while it is a zombie, is a watched file's, the processes it forked
    /// (a daemon that detached at once) are found and adopted.
    fn adopt_orphans_of(&mut self, pid: u32) {
        let Ok(comm) = procfs::comm(pid) else {
            return;
        };
        let keys = self.watchlist.named(&comm);
        if !keys.is_empty() {
            log::debug!("pid {pid} ended before it could be inspected; looking for what it forked");
            self.adopt(Some(&keys));
        }
    }

    /// Re-reads which files the entries name, after a directory changed.
    fn rescan_files(&mut self) {
        let newer = WatchList::new(&self.config);
        let added = newer.added_since(&self.watchlist);
        // Marks that stay are never removed, not even for a moment: an exec
        // in that moment would go unseen.
        let kept: Vec<_> = newer.marks().collect();
        for (key, mark) in self.watchlist.marks() {
            if !kept.contains(&(key, mark)) {
                self.engine.remove_file(key);
            }
        }
        self.watchlist = newer;
        self.install_marks();
        if !added.is_empty() {
            log::info!("{} new executables match the configuration", added.len());
            self.adopt(Some(&added));
        }
    }

    fn install_marks(&mut self) {
        for (key, mark, path) in self.watchlist.marked() {
            if let Err(err) = self.engine.set_file(key, mark, path) {
                log::warn!(
                    "cannot watch executable {key:?} in the kernel filter: {}",
                    error_chain(&err)
                );
            }
        }
    }

    /// Whether `pid`'s class was refused in this adoption (no use trying).
    fn unheld_class(&self, pid: u32) -> bool {
        let full = |class| self.unheld.is_full(class);
        if !full(PidClass::Root) && !full(PidClass::User) {
            return false;
        }
        procfs::status(pid).is_ok_and(|status| full(PidClass::of_uid(status.uid)))
    }

    /// Logs, at a rate no user can turn into a flood, that the kernel
    /// refused to hold `pid`, and has it looked for again later.
    fn refused(&mut self, pid: u32, err: &FilterError) {
        let class = match err {
            FilterError::Full { class, .. } => Some(*class),
            _ => None,
        };
        if let Some(total) = self.unheld.refused(class, Instant::now()) {
            log::warn!(
                "pid {pid} is NOT watched: {}; {total} watches refused so far (logged at powers of two); \
                 armourd looks for the configured processes it could not watch again later",
                error_chain(err)
            );
        }
    }

    /// Carries out `actions` and whatever they lead to. Notices are logged
    /// last, in order, so that no log write delays a restart.
    fn apply(&mut self, actions: Vec<Action>) {
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
                } => self.spawner.submit(Job {
                    instance,
                    spec,
                    configured,
                }),
                Action::Signal { target, signal } => sent.extend(send(target, signal)),
                Action::Watch(pid) => match self.engine.watch(pid) {
                    Ok(()) => {}
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
                Action::Unwatch(pid) => self.engine.unwatch(pid),
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
        let result = match done.result {
            Ok(pid) => {
                self.latencies.spawned(pid, done.began_ns);
                Ok(pid)
            }
            Err(err) => Err(error_chain(&err)),
        };
        let actions = self
            .supervisor
            .spawned(done.instance, result, Instant::now());
        self.apply(actions);
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

    fn notify(&mut self, notice: Notice) {
        match notice {
            Notice::Watching { pid, exe, adopted } => log::info!(
                "{} pid {pid} ({})",
                if adopted { "adopted" } else { "watching" },
                exe.display()
            ),
            Notice::Exited {
                pid,
                exe,
                status,
                will_restart,
            } => {
                let what = if will_restart { "crashed" } else { "ended" };
                let then = if will_restart { "; restarting" } else { "" };
                log::info!("pid {pid} ({}) {what}: {status}{then}", exe.display());
                self.emit(requests::BusSignal::Exited {
                    pid: pid as i32,
                    exe: exe.display().to_string(),
                    code: status.code(),
                    signal: status.signal(),
                    core_dumped: status.core_dumped(),
                    will_restart,
                });
            }
            Notice::HandedOff { from, to, exe } => log::info!(
                "pid {from} ({}) ended cleanly; watching its child pid {to}",
                exe.display()
            ),
            Notice::Restarted {
                old_pid,
                new_pid,
                exe,
                restarts,
            } => {
                self.latencies.restarted(old_pid, new_pid);
                log::info!(
                    "restarted {}: pid {old_pid} -> pid {new_pid} (restart {restarts})",
                    exe.display()
                );
                self.emit(requests::BusSignal::Restarted {
                    old_pid: old_pid as i32,
                    new_pid: new_pid as i32,
                    exe: exe.display().to_string(),
                    restarts,
                });
            }
            Notice::RestartFailed {
                exe,
                reason,
                retry_in: Some(retry_in),
            } => log::error!(
                "restarting {} failed: {reason}; trying again in {} s",
                exe.display(),
                retry_in.as_secs_f32()
            ),
            Notice::RestartFailed {
                exe,
                reason,
                retry_in: None,
            } => log::error!("restarting {} failed: {reason}", exe.display()),
            Notice::BackingOff {
                pid,
                exe,
                delay,
                streak,
            } => log::info!(
                "pid {pid} ({}) crashed {streak} times in a row; restarting in {} s",
                exe.display(),
                delay.as_secs_f32()
            ),
            Notice::Failed { pid, exe, crashes } => {
                log::error!(
                    "pid {pid} ({}): {crashes} crashes within the give-up window; giving up \
                     (`armourctl reset {pid}` or a reload starts it again)",
                    exe.display()
                );
                self.emit(requests::BusSignal::Failed {
                    pid: pid as i32,
                    exe: exe.display().to_string(),
                    crashes,
                });
            }
            Notice::Unwatched { pid, exe, reason } => {
                log::info!("stopped watching pid {pid} ({}): {reason}", exe.display())
            }
        }
    }
}

/// For a script run by its interpreter: argv from the script path on.
fn strip_interpreter(argv: Vec<OsString>, script_argv: Option<usize>) -> Vec<OsString> {
    match script_argv {
        Some(index) if index < argv.len() => argv[index..].to_vec(),
        _ => argv,
    }
}

/// Captures a process's launch context; for a process that is already gone,
/// what the kernel reported and safe defaults.
fn capture(
    pid: u32,
    exe: std::path::PathBuf,
    known: procfs::Known,
    argv: Vec<OsString>,
) -> (LaunchSpec, bool) {
    let leads_group = procfs::stat(pid).is_ok_and(|s| s.pgrp == pid);
    let (env, uid, gid) = (known.env.clone(), known.uid, known.gid);
    match procfs::capture(pid, exe.clone(), known) {
        Ok(spec) => (spec, leads_group),
        Err(err) => {
            log::warn!("pid {pid}: cannot read its launch context ({}); a restart uses what the kernel reported and /dev/null for stdio", error_chain(&err));
            let mut spec = LaunchSpec::minimal(exe, argv);
            spec.env = env.unwrap_or_default();
            // A zombie still shows its ids, groups and umask; else what the
            // kernel reported at exec.
            if let Ok(status) = procfs::status(pid) {
                spec.uid = status.uid;
                spec.gid = status.gid;
                spec.groups = status.groups;
                spec.umask = status.umask;
            } else if let (Some(uid), Some(gid)) = (uid, gid) {
                spec.uid = uid;
                spec.gid = gid;
                spec.groups = vec![gid];
            }
            (spec, leads_group)
        }
    }
}

/// Whether the process still runs (a zombie counts as ended).
fn alive(proc: ProcId) -> bool {
    procfs::stat(proc.pid)
        .is_ok_and(|s| proc.start.is_none_or(|start| start == s.start_ticks) && !s.zombie)
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

/// An error with its causes, for one log line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
