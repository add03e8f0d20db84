//! Instances without a process across armourd's own restart: one waiting
//! for its backoff is restarted when its delay is over, one that gave up
//! stays `failed` (shown by `armourctl status`) until a reset.
//!
//! Such an instance is written down with what its restart needs (the
//! launch the supervisor keeps), and taken back only while that still
//! holds: its configuration entry is still there (the same pattern, still
//! naming the executable), its executable is still the same file, and, for
//! a watch made on request, its watcher may still hold it. One whose
//! program was started again while armourd was down (a process adopted at
//! start with the same executable and command line, not taken back from a
//! record) is forgotten: that process is the service now. An instance whose
//! restart runs in other namespaces is not kept: their handles cannot be
//! held across armourd's restart.

use std::{
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use armourd_common::FileKey;

use super::{from_mono, from_mono_past, to_mono, Daemon};
use crate::{
    config::{Entry, Pattern},
    daemon::latency::monotonic_ns,
    dbus, files,
    launch::{LaunchSpec, StdioTarget},
    place::Place,
    state::{Waiting, WaitingState},
    status::ExitStatus,
    supervisor::{Kept, Pending},
};

/// The line `pending` of the instance `kept` is written as; `None` when it
/// cannot be taken back (its restart needs namespace handles, or its
/// executable is gone).
pub(super) fn record(
    kept: &Kept,
    pending: Pending,
    entry: Option<&Entry>,
    by: Option<u32>,
    clocks: (Instant, u64),
) -> Option<Waiting> {
    let spec = &pending.spec;
    if !spec.place.namespaces.is_empty() {
        return None;
    }
    let key = files::file_key(&spec.exe).ok()?;
    let stdio = |target: &StdioTarget| match target {
        StdioTarget::Null => None,
        StdioTarget::File(path) => Some(path.clone()),
    };
    Some(Waiting {
        state: match pending.next {
            Some(at) => WaitingState::Backoff {
                next: to_mono(at, clocks),
            },
            None => WaitingState::Failed,
        },
        entry: entry.map(|e| pattern_path(&e.pattern)),
        by,
        dev: (key.dev >> 20, key.dev & 0xf_ffff),
        ino: key.ino,
        last_pid: pending.last_pid,
        last_exit: pending.last_exit.and_then(wait_status),
        since: to_mono(pending.since, clocks),
        restarts: kept.restarts,
        streak: kept.streak,
        crashes: kept.crashes.iter().map(|&t| to_mono(t, clocks)).collect(),
        uid: spec.uid,
        gid: spec.gid,
        groups: spec.groups.clone(),
        umask: spec.umask,
        session_leader: spec.session_leader,
        cwd: spec.cwd.clone(),
        stdio: [
            stdio(&spec.stdio[0]),
            stdio(&spec.stdio[1]),
            stdio(&spec.stdio[2]),
        ],
        cgroup: spec.place.cgroup.clone(),
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        exe: spec.exe.clone(),
    })
}

/// An entry's pattern as the file names it.
fn pattern_path(pattern: &Pattern) -> PathBuf {
    match pattern {
        Pattern::Path(path) => path.clone(),
        Pattern::Glob(glob) => PathBuf::from(glob.as_str()),
    }
}

/// The raw wait status of `status`; `None` when the end was not seen.
fn wait_status(status: ExitStatus) -> Option<u32> {
    match status {
        ExitStatus::Exited(code) => Some(u32::from(code) << 8),
        ExitStatus::Signaled {
            signal,
            core_dumped,
        } => Some(signal as u32 & 0x7f | if core_dumped { 0x80 } else { 0 }),
        ExitStatus::Unknown => None,
    }
}

impl Daemon {
    /// Takes back the instances that had no process, after the running
    /// ones (`found_again`: their pids) were: how many were resumed, how
    /// many of those failed, how many were forgotten (each logged).
    pub(super) fn resume(
        &mut self,
        waits: Vec<Waiting>,
        found_again: &[u32],
    ) -> (usize, usize, usize) {
        // Processes adopted at this start that no record named: each may
        // be a waiting instance's program, started again meanwhile.
        let mut started_meanwhile: Vec<(u32, Arc<LaunchSpec>)> = (self.supervisor.instances())
            .filter(|view| view.started.is_some() && !found_again.contains(&view.pid))
            .map(|view| (view.pid, view.spec))
            .collect();
        let (mut resumed, mut failed, mut forgotten) = (0, 0, 0);
        for waiting in waits {
            let what = format!(
                "{} (last pid {}, {})",
                waiting.exe.display(),
                waiting.last_pid,
                match waiting.state {
                    WaitingState::Backoff { .. } => "waiting for its restart",
                    WaitingState::Failed => "failed",
                }
            );
            let again = (started_meanwhile.iter())
                .position(|(_, spec)| spec.exe == waiting.exe && spec.argv == waiting.argv);
            if let Some(index) = again {
                let (pid, _) = started_meanwhile.swap_remove(index);
                log::info!(
                    "{what}: its program was started again while armourd was down (pid {pid}); \
                     that process is the service now"
                );
                forgotten += 1;
                continue;
            }
            match self.resume_one(waiting) {
                Ok(gave_up) => {
                    resumed += 1;
                    failed += usize::from(gave_up);
                    log::info!(
                        "{what}: {}",
                        if gave_up {
                            "stays failed until `armourctl reset`"
                        } else {
                            "restarted when its backoff is over"
                        }
                    );
                }
                Err(why) => {
                    forgotten += 1;
                    log::info!("{what}: forgotten, {why}");
                }
            }
        }
        (resumed, failed, forgotten)
    }

    /// Takes `waiting` back if it still holds; whether it gave up, or why not.
    fn resume_one(&mut self, waiting: Waiting) -> Result<bool, String> {
        let entry = match (&waiting.entry, waiting.by) {
            (Some(pattern), _) => Some(self.entry_of(pattern, &waiting.exe).ok_or_else(|| {
                format!(
                    "no entry `{}` names it in the configuration now",
                    pattern.display()
                )
            })?),
            (None, Some(uid)) => {
                if !dbus::authorize(uid, waiting.uid) {
                    return Err(format!("uid {uid} may not watch uid {}'s", waiting.uid));
                }
                self.quota_check(uid)
                    .map_err(|refusal| refusal.to_string())?;
                None
            }
            (None, None) => return Err("it names no entry and no watcher".to_owned()),
        };
        let recorded = FileKey::new(waiting.ino, waiting.dev.0, waiting.dev.1);
        if files::file_key(&waiting.exe).ok() != Some(recorded) {
            return Err("its executable was replaced or removed since".to_owned());
        }
        let clocks = (Instant::now(), monotonic_ns());
        let gave_up = waiting.state == WaitingState::Failed;
        let pending = Pending {
            next: match waiting.state {
                // A time `Instant` cannot show is long past: due now.
                WaitingState::Backoff { next } => Some(from_mono(next, clocks).unwrap_or(clocks.0)),
                WaitingState::Failed => None,
            },
            last_pid: waiting.last_pid,
            last_exit: waiting.last_exit.map(ExitStatus::from_wait_status),
            since: from_mono(waiting.since, clocks).unwrap_or(clocks.0),
            spec: Arc::new(spec_of(&waiting)),
        };
        let crashes = from_mono_past(&waiting.crashes, clocks);
        let id = (self.supervisor).restore_waiting(
            entry,
            pending,
            waiting.restarts,
            waiting.streak,
            crashes,
        );
        if let (None, Some(uid)) = (entry, waiting.by) {
            self.keeper.watched_by(id, uid);
        }
        Ok(gave_up)
    }

    /// The index of the entry with this pattern, if it still names `exe`.
    fn entry_of(&self, pattern: &Path, exe: &Path) -> Option<usize> {
        (self.config.entries.iter()).position(|entry| {
            pattern_path(&entry.pattern).as_os_str().as_bytes() == pattern.as_os_str().as_bytes()
                && entry.matches(exe)
        })
    }
}

/// The launch `waiting` was written with.
fn spec_of(waiting: &Waiting) -> LaunchSpec {
    let stdio = |path: &Option<PathBuf>| match path {
        Some(path) => StdioTarget::File(path.clone()),
        None => StdioTarget::Null,
    };
    LaunchSpec {
        exe: waiting.exe.clone(),
        argv: waiting.argv.clone(),
        env: waiting.env.clone(),
        cwd: waiting.cwd.clone(),
        uid: waiting.uid,
        gid: waiting.gid,
        groups: waiting.groups.clone(),
        umask: waiting.umask,
        stdio: [
            stdio(&waiting.stdio[0]),
            stdio(&waiting.stdio[1]),
            stdio(&waiting.stdio[2]),
        ],
        session_leader: waiting.session_leader,
        place: Place {
            namespaces: Vec::new(),
            cgroup: waiting.cgroup.clone(),
            exe: None,
        },
    }
}
