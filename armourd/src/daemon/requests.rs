//! The daemon's side of D-Bus: answering requests from the event loop, and
//! handing crash and restart notices to the task that emits the signals.
//!
//! What a user may watch: a whole process (not a thread) of its own that
//! runs an executable, never armourd or a process armourd is starting, and
//! at most `--max-user-watches` of them; root may watch any such process
//! and is never counted. A watch the kernel filter cannot hold, or of a
//! process that ended meanwhile, is not kept.

use std::{
    collections::HashSet,
    os::unix::ffi::OsStrExt,
    path::PathBuf,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc;

use super::{
    bus_link,
    watching::{alive, capture, capture_place},
    Daemon,
};
use crate::{
    backend::Backend,
    dbus::{self, ControlSocket, Incoming, ProcessInfo, Refusal, Request},
    logging::error_chain,
    procfs,
    supervisor::{Action, Exec, InstanceView, ProcId, State},
};

/// Signals waiting for the bus; beyond this, new ones are dropped (and
/// counted in the log) rather than held while the bus is slow.
const SIGNAL_QUEUE: usize = 256;

/// A signal to emit on the bus.
#[derive(Debug)]
pub enum DbusSignal {
    Exited {
        pid: i32,
        exe: String,
        code: i32,
        signal: i32,
        core_dumped: bool,
        will_restart: bool,
    },
    Restarted {
        old_pid: i32,
        new_pid: i32,
        exe: String,
        restarts: u32,
    },
    Failed {
        pid: i32,
        exe: String,
        crashes: u32,
    },
}

/// How armourd answers requests (SPEC §7).
#[derive(Clone, Debug)]
pub struct Answering {
    /// The message bus to serve on, if any.
    pub bus: Option<dbus::Bus>,
    /// Root's control socket (see [`ControlSocket`]), if any.
    pub control_socket: Option<PathBuf>,
    /// Watches a uid other than root may hold.
    pub max_user_watches: usize,
}

/// The D-Bus connection as the event loop sees it: requests come in,
/// signals go out to a task of their own so that no bus write delays a restart.
pub struct Requests {
    pub incoming: Incoming,
    /// Root's control socket, served while this is kept.
    _control: Option<ControlSocket>,
    pub signals: mpsc::Sender<DbusSignal>,
    /// Signals dropped because the queue was full.
    dropped: u64,
    quota: Quota,
    /// Refusals already logged at info level, by caller and kind.
    logged: HashSet<(u32, &'static str)>,
}

/// Serves armourd on the bus and the control socket `answering` names;
/// one warning for each that cannot be served, and `None` when neither is
/// asked for. A bus that cannot be reached, or goes away later, is
/// connected to again in the background (see `bus_link`).
pub async fn start(answering: Answering, backend: Backend) -> Option<Requests> {
    let (queues, incoming) = dbus::queues();
    let control = match &answering.control_socket {
        Some(path) => match ControlSocket::serve(path, backend.name(), queues.clone()).await {
            Ok(control) => Some(control),
            Err(err) => {
                log::warn!("{}; root's calls go through the bus", error_chain(&err));
                None
            }
        },
        None => None,
    };
    if answering.bus.is_none() && control.is_none() {
        return None;
    }
    let (signals, mut outgoing) = mpsc::channel(SIGNAL_QUEUE);
    match answering.bus {
        Some(bus) => {
            let service = match bus_link::connect(bus, backend.name(), queues.clone()).await {
                Ok(service) => Some(service),
                Err(reason) => {
                    log::warn!(
                        "D-Bus unavailable ({reason}); running without it, and connecting in \
                         the background"
                    );
                    None
                }
            };
            tokio::spawn(bus_link::run(
                bus,
                backend.name(),
                queues,
                service,
                outgoing,
            ));
        }
        // Without a bus, signals have nowhere to go.
        None => drop(tokio::spawn(async move {
            while outgoing.recv().await.is_some() {}
        })),
    }
    Some(Requests {
        incoming,
        _control: control,
        signals,
        dropped: 0,
        quota: Quota::new(answering.max_user_watches),
        logged: HashSet::new(),
    })
}

/// Waits for the next request, root's first; forever without a bus.
pub async fn next(requests: &mut Option<Requests>) -> Option<Request> {
    match requests {
        Some(requests) => requests.incoming.next().await,
        None => std::future::pending().await,
    }
}

/// The per-uid bound on watches made over D-Bus.
#[derive(Debug)]
pub struct Quota {
    limit: usize,
    /// The uids whose refusal was logged: once each.
    logged: HashSet<u32>,
}

impl Quota {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            logged: HashSet::new(),
        }
    }

    /// Whether `uid`, holding `held` watches, may make one more; root may.
    pub fn check(&self, uid: u32, held: usize) -> Result<(), Refusal> {
        if uid == 0 || held < self.limit {
            return Ok(());
        }
        Err(Refusal::QuotaExceeded {
            uid,
            limit: self.limit,
        })
    }

    /// True the first time `uid` is refused: then it is logged.
    pub fn first_refusal(&mut self, uid: u32) -> bool {
        self.logged.insert(uid)
    }
}

impl Daemon {
    /// Answers one D-Bus request.
    pub(super) fn request(&mut self, request: Request) {
        // A caller that went away does not care for the answer.
        match request {
            Request::Watch {
                pid,
                caller_uid,
                code_only,
                reply,
            } => {
                let result = self.watch_request(pid, caller_uid);
                if result.is_ok() {
                    let watched = self.supervisor.instances().find(|v| v.pid as i32 == pid);
                    if let Some(view) = watched {
                        self.keeper.watched_by(view.id, caller_uid);
                    }
                }
                self.note("watch", caller_uid, code_only, &result);
                drop(reply.send(result));
            }
            Request::Unwatch {
                pid,
                caller_uid,
                code_only,
                reply,
            } => {
                let result = self.unwatch_request(pid, caller_uid);
                self.note("unwatch", caller_uid, code_only, &result);
                drop(reply.send(result));
            }
            Request::Processes { reply } => drop(reply.send(self.processes())),
            Request::Reset { target, reply } => {
                self.keeper.changed();
                let _ = reply.send(self.reset(&target));
            }
            Request::Reload { reply } => {
                log::info!("reloading the configuration on request (D-Bus)");
                // The D-Bus answer: the errors' text, none when it was applied.
                let errors = self.reload().err().map(|err| vec![error_chain(&err)]);
                drop(reply.send(errors.unwrap_or_default()))
            }
        }
    }

    /// Logs a refusal. A quota refusal is a warning once per uid. A caller
    /// that gets only a code (`WatchProcess`) finds the reason in the log:
    /// root's always, another uid's once per kind at info level, then at
    /// debug level so that no caller can flood the log. A caller of
    /// `Watch` gets the reason itself: debug level.
    fn note(&mut self, verb: &str, caller_uid: u32, code_only: bool, result: &Result<(), Refusal>) {
        let (Err(refusal), Some(requests)) = (result, self.requests.as_mut()) else {
            return;
        };
        if let Refusal::QuotaExceeded { .. } = refusal {
            if requests.quota.first_refusal(caller_uid) {
                log::warn!(
                    "{refusal}: further watches of uid {caller_uid} are refused (logged once per uid)"
                );
            } else {
                log::debug!("{verb} refused to uid {caller_uid}: {refusal}");
            }
            return;
        }
        let first = caller_uid == 0 || requests.logged.insert((caller_uid, refusal.name()));
        if code_only && first {
            log::info!("{verb} refused to uid {caller_uid}: {refusal}");
        } else {
            log::debug!("{verb} refused to uid {caller_uid}: {refusal}");
        }
    }

    pub(super) fn watch_request(&mut self, pid: i32, caller_uid: u32) -> Result<(), Refusal> {
        let no_such = Refusal::NoSuchProcess { pid };
        let failed = |reason: &str| Refusal::Failed {
            pid,
            reason: reason.to_owned(),
        };
        let (id, stat) = existing(pid).ok_or(no_such.clone())?;
        let status = procfs::status(id).map_err(|_| no_such.clone())?;
        let own = std::process::id();
        if status.tgid == Some(own) {
            return Err(failed("it is armourd itself; armourd never watches itself"));
        }
        if let Some(tgid) = status.tgid.filter(|&t| t != id) {
            return Err(failed(&format!(
                "it is a thread of process {tgid}; watch the process ({tgid}) instead"
            )));
        }
        if !dbus::authorize(caller_uid, status.uid) {
            return Err(Refusal::AccessDenied {
                pid,
                owner: status.uid,
            });
        }
        if self.supervisor.is_watched(id) {
            return Err(Refusal::AlreadyWatched { pid });
        }
        if stat.ppid == own && procfs::exe_key(id).ok() == procfs::exe_key(own).ok() {
            return Err(failed(
                "armourd is starting it (it has not executed its program yet); try again",
            ));
        }
        if let Some(requests) = &self.requests {
            let held = self
                .supervisor
                .instances()
                .filter(|i| i.entry.is_none() && i.spec.uid == caller_uid)
                .count();
            requests.quota.check(caller_uid, held)?;
        }
        // Kernel threads have no executable to restart.
        let exe = procfs::exe_path(id)
            .map_err(|_| failed("it has no executable to restart (a kernel thread?)"))?;
        let proc = ProcId {
            pid: id,
            start: Some(stat.start_ticks),
        };
        // Where it runs, before anything is held: a process armourd could
        // not restart there is refused.
        capture_place(id, false).map_err(|err| failed(&error_chain(&err)))?;
        // The kernel filter first: a watch it cannot hold (no room left,
        // `FilterError::Full`) is refused, never reported as held.
        if let Err(err) = self.engine.watch(id) {
            self.refused(id, &err);
            return Err(failed(&format!(
                "the kernel filter cannot hold it ({}); try again later",
                error_chain(&err)
            )));
        }
        let argv = procfs::cmdline(id).unwrap_or_default();
        let known = procfs::Known {
            argv: Some(argv.clone()),
            ..procfs::Known::default()
        };
        let (spec, leads_group) = match capture(id, exe, known, argv, false) {
            Ok(captured) => captured,
            Err(err) => {
                self.engine.unwatch(id);
                return Err(failed(&error_chain(&err)));
            }
        };
        let exec = Exec {
            proc,
            entry: None,
            spec,
            leads_group,
            adopted: true,
        };
        let mut actions = self.supervisor.exec(exec, Instant::now());
        actions.retain(|a| !matches!(a, Action::Watch(p) if *p == id));
        self.apply(actions);
        // Ended before the filter held it: its end was not seen, so the
        // watch would linger.
        if !alive(proc) {
            if let Some(actions) = self.supervisor.unwatch(id) {
                self.apply(actions);
            }
            return Err(no_such);
        }
        log::info!("pid {pid} watched on request of uid {caller_uid}");
        Ok(())
    }

    fn unwatch_request(&mut self, pid: i32, caller_uid: u32) -> Result<(), Refusal> {
        let Some(id) = u32::try_from(pid).ok().filter(|&p| p > 0) else {
            return Err(Refusal::NoSuchProcess { pid });
        };
        let Some(view) = self.supervisor.instances().find(|i| i.pid == id) else {
            return Err(match existing(pid) {
                Some(_) => Refusal::NotWatched { pid },
                None => Refusal::NoSuchProcess { pid },
            });
        };
        if !dbus::authorize(caller_uid, view.spec.uid) {
            return Err(Refusal::AccessDenied {
                pid,
                owner: view.spec.uid,
            });
        }
        let actions = self
            .supervisor
            .unwatch(id)
            .ok_or(Refusal::NotWatched { pid })?;
        self.apply(actions);
        Ok(())
    }

    fn processes(&self) -> Vec<ProcessInfo> {
        let now = (Instant::now(), SystemTime::now());
        self.supervisor
            .instances()
            .map(|view| process_info(&view, now))
            .collect()
    }

    /// Hands a notice to the bus, if there is one; drops it if the bus is
    /// that far behind.
    pub(super) fn emit(&mut self, signal: DbusSignal) {
        let Some(requests) = &mut self.requests else {
            return;
        };
        match requests.signals.try_send(signal) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                requests.dropped += 1;
                if requests.dropped.is_power_of_two() {
                    log::warn!(
                        "the bus is slow: {} signals dropped so far (queue of {SIGNAL_QUEUE} full)",
                        requests.dropped
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// The pid of a running (not zombie) process, with its stat.
fn existing(pid: i32) -> Option<(u32, procfs::Stat)> {
    let pid = u32::try_from(pid).ok().filter(|&p| p > 0)?;
    procfs::stat(pid)
        .ok()
        .filter(|s| !s.zombie)
        .map(|s| (pid, s))
}

/// The name of an instance's state on D-Bus and in the log.
pub(super) fn state_name(state: State) -> &'static str {
    match state {
        State::Running => "running",
        State::Stopping { .. } | State::Restarting | State::Recovering { .. } => "restarting",
        State::Backoff { .. } => "backoff",
        State::Failed => "failed",
    }
}

/// `now` as µs since the Unix epoch, through the wall clock's `wall` at `now`.
fn unix_us(at: Instant, (now, wall): (Instant, SystemTime)) -> u64 {
    let wall_at = if at <= now {
        wall.checked_sub(now - at)
    } else {
        wall.checked_add(at - now)
    };
    wall_at
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_micros() as u64)
}

fn process_info(view: &InstanceView, (now, wall): (Instant, SystemTime)) -> ProcessInfo {
    let state = state_name(view.state);
    let since = unix_us(view.since, (now, wall));
    let status = view.last_exit;
    ProcessInfo {
        pid: view.pid as i32,
        exe: view.spec.exe.display().to_string(),
        argv: view
            .spec
            .argv
            .iter()
            .map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned())
            .collect(),
        state,
        restarts: view.restarts,
        last_exit_code: status.map_or(-1, |s| s.code()),
        last_signal: status.map_or(0, |s| s.signal()),
        last_core_dumped: status.is_some_and(|s| s.core_dumped()),
        since_us: since,
        crash_streak: view.crash_streak,
        next_restart_us: view.next_restart.map_or(0, |at| unix_us(at, (now, wall))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_may_hold_up_to_the_quota_and_root_any_number() {
        let quota = Quota::new(64);
        assert_eq!(quota.check(1000, 0), Ok(()));
        assert_eq!(quota.check(1000, 63), Ok(()), "the 64th watch");
        assert_eq!(
            quota.check(1000, 64),
            Err(Refusal::QuotaExceeded {
                uid: 1000,
                limit: 64
            }),
            "the 65th"
        );
        assert_eq!(quota.check(0, 10_000), Ok(()), "root is not limited");
        assert!(Quota::new(0).check(1000, 0).is_err(), "0 allows users none");
    }

    #[test]
    fn a_quota_refusal_is_logged_once_per_uid() {
        let mut quota = Quota::new(1);
        assert!(quota.first_refusal(1000));
        assert!(!quota.first_refusal(1000));
        assert!(quota.first_refusal(1001), "each uid once");
    }
}
