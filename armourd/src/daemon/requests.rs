//! The daemon's side of D-Bus: answering requests from the event loop, and
//! handing crash and restart notices to the task that emits the signals.

use std::{
    os::unix::ffi::OsStrExt,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc;

use super::{capture, Daemon};
use crate::{
    backend::Kind,
    dbus::{self, ProcessInfo, Request, Service, WatchResult},
    procfs,
    supervisor::{Exec, InstanceView, ProcId, State},
};

/// A signal to emit on the bus.
#[derive(Debug)]
pub enum BusSignal {
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

/// The D-Bus connection as the event loop sees it: requests come in,
/// signals go out to a task of their own so that no bus write delays a restart.
pub struct Bus {
    pub requests: mpsc::Receiver<Request>,
    pub signals: mpsc::UnboundedSender<BusSignal>,
}

/// Serves armourd on `bus`; without a reachable bus, one warning and `None`.
pub async fn start(bus: dbus::Bus, backend: Kind) -> Option<Bus> {
    let (requests_tx, requests) = mpsc::channel(16);
    let service = match Service::start(bus, backend.name(), requests_tx).await {
        Ok(service) => service,
        Err(err) => {
            // zbus repeats its cause in its own text: one level is enough.
            let cause = std::error::Error::source(&err).map(|c| format!(": {c}"));
            log::warn!(
                "D-Bus unavailable ({err}{}); running without it",
                cause.unwrap_or_default()
            );
            return None;
        }
    };
    let (signals, mut outgoing) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(signal) = outgoing.recv().await {
            match signal {
                BusSignal::Exited {
                    pid,
                    exe,
                    code,
                    signal,
                    core_dumped,
                    will_restart,
                } => {
                    service
                        .process_exited(pid, &exe, code, signal, core_dumped, will_restart)
                        .await
                }
                BusSignal::Restarted {
                    old_pid,
                    new_pid,
                    exe,
                    restarts,
                } => {
                    service
                        .process_restarted(old_pid, new_pid, &exe, restarts)
                        .await
                }
                BusSignal::Failed { pid, exe, crashes } => {
                    service.process_failed(pid, &exe, crashes).await
                }
            }
        }
    });
    Some(Bus { requests, signals })
}

/// Waits for the next request; forever without a bus.
pub async fn next(bus: &mut Option<Bus>) -> Option<Request> {
    match bus {
        Some(bus) => bus.requests.recv().await,
        None => std::future::pending().await,
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
                reply,
            } => drop(reply.send(self.watch_request(pid, caller_uid))),
            Request::Unwatch {
                pid,
                caller_uid,
                reply,
            } => drop(reply.send(self.unwatch_request(pid, caller_uid))),
            Request::Processes { reply } => drop(reply.send(self.processes())),
            Request::Reset { target, reply } => drop(reply.send(self.reset(&target))),
            Request::Reload { reply } => {
                log::info!("reloading the configuration on request (D-Bus)");
                drop(reply.send(self.reload().err().unwrap_or_default()))
            }
        }
    }

    fn watch_request(&mut self, pid: i32, caller_uid: u32) -> WatchResult {
        let Some((pid, stat)) = existing(pid) else {
            return WatchResult::NoSuchProcess;
        };
        if self.supervisor.is_watched(pid) {
            return WatchResult::AlreadyWatched;
        }
        let Ok(status) = procfs::status(pid) else {
            return WatchResult::NoSuchProcess;
        };
        if !dbus::authorize(caller_uid, status.uid) {
            return WatchResult::PermissionDenied;
        }
        // Kernel threads have no executable to restart.
        let Ok(exe) = procfs::exe_path(pid) else {
            return WatchResult::Failed;
        };
        let argv = procfs::cmdline(pid).unwrap_or_default();
        let known = procfs::Known {
            argv: Some(argv.clone()),
            ..procfs::Known::default()
        };
        let (spec, leads_group) = capture(pid, exe, known, argv);
        let exec = Exec {
            proc: ProcId {
                pid,
                start: Some(stat.start_ticks),
            },
            entry: None,
            spec,
            leads_group,
            adopted: true,
        };
        let actions = self.supervisor.exec(exec, Instant::now());
        self.apply(actions);
        log::info!("pid {pid} watched on request of uid {caller_uid}");
        WatchResult::Ok
    }

    fn unwatch_request(&mut self, pid: i32, caller_uid: u32) -> WatchResult {
        let Ok(pid) = u32::try_from(pid) else {
            return WatchResult::NoSuchProcess;
        };
        let Some(view) = self.supervisor.instances().find(|i| i.pid == pid) else {
            return match existing(pid as i32) {
                Some(_) => WatchResult::Failed,
                None => WatchResult::NoSuchProcess,
            };
        };
        if !dbus::authorize(caller_uid, view.spec.uid) {
            return WatchResult::PermissionDenied;
        }
        match self.supervisor.unwatch(pid) {
            Some(actions) => {
                self.apply(actions);
                WatchResult::Ok
            }
            None => WatchResult::Failed,
        }
    }

    fn processes(&self) -> Vec<ProcessInfo> {
        let now = (Instant::now(), SystemTime::now());
        self.supervisor
            .instances()
            .map(|view| process_info(&view, now))
            .collect()
    }

    /// Hands a notice to the bus, if there is one.
    pub(super) fn emit(&self, signal: BusSignal) {
        if let Some(bus) = &self.bus {
            let _ = bus.signals.send(signal);
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
