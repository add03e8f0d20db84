//! armourd's own restart loses nothing: the state file in `--state-dir`
//! (see the `state` module) is read at start, after the configured
//! processes were adopted, and written when what it keeps changed.
//!
//! Writes are coalesced: the first change after a quiet second is written
//! at the end of the event loop's turn that made it (after the restart was
//! handed to a worker, so no restart waits for it), and changes within
//! the second after a write are written together at its end. A crash loop
//! thus costs at most one write a second, and a watch or a counter is
//! never more than a second from the file.
//!
//! A record is used only for a process that runs now with the pid, start
//! time and executable (device, inode and path) it names: a pid recycled
//! to another program, or a process that ended while armourd was down, is
//! forgotten. A configured process gets its counters back; one watched on
//! request is watched again as if its watcher asked again (owner and
//! `--max-user-watches` checked), then gets its counters back.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use armourd_common::FileKey;

use super::{latency::monotonic_ns, Daemon};
use crate::{
    logging::error_chain,
    procfs,
    state::{self, file, Record, State},
    supervisor::{InstanceId, ProcId},
};

/// The shortest time between two writes.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// Where the state goes, and what is needed to write it.
#[derive(Debug, Default)]
pub(super) struct Keeper {
    /// `None`: no state file (not asked for, or its folder is unusable).
    dir: Option<PathBuf>,
    boot: String,
    /// Something changed since the last write.
    dirty: bool,
    last_write: Option<Instant>,
    /// The text last written: an unchanged state is not written again.
    written: String,
    /// Who asked for each watch made over D-Bus.
    watchers: HashMap<InstanceId, u32>,
    /// The executable of each instance's process, looked up once.
    exes: HashMap<InstanceId, (ProcId, u64, FileKey, PathBuf)>,
    /// A failed write was logged as a warning.
    warned: bool,
}

impl Keeper {
    /// Keeps the state in `dir`, if given and usable (logged otherwise).
    pub(super) fn new(dir: Option<PathBuf>) -> Self {
        let dir = dir.filter(|dir| match file::prepare_dir(dir) {
            Ok(()) => true,
            Err(err) => {
                log::warn!(
                    "not keeping state across restarts: {}; give --state-dir a folder of root's \
                     that only root may write to",
                    error_chain(&err)
                );
                false
            }
        });
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|id| id.trim().to_owned())
            .unwrap_or_default();
        Self {
            dir,
            boot,
            ..Self::default()
        }
    }

    /// What armourd watches changed.
    pub(super) fn changed(&mut self) {
        self.dirty |= self.dir.is_some();
    }

    /// `id` was watched on request of `uid`.
    pub(super) fn watched_by(&mut self, id: InstanceId, uid: u32) {
        self.watchers.insert(id, uid);
        self.changed();
    }

    /// When the state is to be written next, if it changed.
    pub(super) fn due(&self) -> Option<Instant> {
        if !self.dirty {
            return None;
        }
        Some(
            self.last_write
                .map_or_else(Instant::now, |at| at + WRITE_EVERY),
        )
    }
}

impl Daemon {
    /// Writes the state if it changed and a write is due (or `now`, at a stop).
    pub(super) fn keep_state(&mut self, force: bool) {
        let now = Instant::now();
        let waits = self
            .keeper
            .last_write
            .is_some_and(|at| at + WRITE_EVERY > now);
        if !force && (!self.keeper.dirty || waits) {
            return;
        }
        let Some(dir) = self.keeper.dir.clone() else {
            return;
        };
        self.keeper.dirty = false;
        self.keeper.last_write = Some(now);
        let state = self.state_now(now);
        let text = state::render(&state);
        if text == self.keeper.written {
            return;
        }
        match file::write(&dir, &state) {
            Ok(()) => {
                self.keeper.written = text;
                self.keeper.warned = false;
            }
            Err(err) => {
                let level = if std::mem::replace(&mut self.keeper.warned, true) {
                    log::Level::Debug
                } else {
                    log::Level::Warn
                };
                log::log!(
                    level,
                    "cannot write the state ({}); a restart of armourd now would forget watches \
                     and counters",
                    error_chain(&err)
                );
                // Tried again at the next change.
            }
        }
    }

    fn state_now(&mut self, now: Instant) -> State {
        let mono = monotonic_ns();
        let kept = self.supervisor.kept();
        let keeper = &mut self.keeper;
        keeper
            .watchers
            .retain(|id, _| kept.iter().any(|k| k.id == *id));
        keeper.exes.retain(|id, _| kept.iter().any(|k| k.id == *id));
        let mut instances = Vec::with_capacity(kept.len());
        for k in kept {
            let known = keeper.exes.get(&k.id).filter(|(p, ..)| *p == k.leader);
            let (start, key, exe) = match known {
                Some((_, start, key, exe)) => (*start, *key, exe.clone()),
                None => {
                    // A restart's start time is read here when its exec
                    // was not reported; it has executed its program by
                    // the time it leads its instance (vfork).
                    let pid = k.leader.pid;
                    let start = match k.leader.start {
                        Some(start) => Ok(start),
                        None => procfs::stat(pid).map(|s| s.start_ticks),
                    };
                    let (Ok(start), Ok(key), Ok(exe)) =
                        (start, procfs::exe_key(pid), procfs::exe_path(pid))
                    else {
                        // Ended meanwhile: its end is on its way.
                        continue;
                    };
                    keeper
                        .exes
                        .insert(k.id, (k.leader, start, key, exe.clone()));
                    (start, key, exe)
                }
            };
            let by = k
                .entry
                .is_none()
                .then(|| keeper.watchers.get(&k.id).copied().unwrap_or(0));
            instances.push(Record {
                pid: k.leader.pid,
                start,
                dev: (key.dev >> 20, key.dev & 0xf_ffff),
                ino: key.ino,
                exe,
                by,
                restarts: k.restarts,
                streak: k.streak,
                crashes: k
                    .crashes
                    .iter()
                    .map(|&t| {
                        mono.saturating_sub(now.saturating_duration_since(t).as_nanos() as u64)
                    })
                    .collect(),
            });
        }
        State {
            boot: keeper.boot.clone(),
            instances,
        }
    }

    /// Reads the state file and takes back what it can verify.
    pub(super) fn restore_state(&mut self) {
        let Some(dir) = self.keeper.dir.clone() else {
            return;
        };
        let path = state::path_in(&dir);
        // Whatever is found, the file is written anew from what runs now.
        self.keeper.changed();
        let state = match file::read(&dir) {
            Ok(Some(state)) => state,
            Ok(None) => return,
            Err(err) if err.is_untrusted() => {
                log::warn!(
                    "state file ignored: {}; armourd replaces it with what it watches now \
                     (processes watched over D-Bus before must be watched again; remove the file \
                     if this repeats)",
                    error_chain(&err)
                );
                return;
            }
            Err(err) => {
                log::warn!(
                    "cannot read the state ({}); starting without it",
                    error_chain(&err)
                );
                return;
            }
        };
        if state.boot != self.keeper.boot {
            log::info!(
                "{}: written before the machine last booted; its processes are gone",
                path.display()
            );
            return;
        }
        let (mut taken, mut gone) = (0, 0);
        for record in state.instances {
            match self.take_back(&record) {
                true => taken += 1,
                false => gone += 1,
            }
        }
        log::info!(
            "state of the last run: {taken} instances taken back{}",
            if gone > 0 {
                format!(
                    ", {gone} forgotten (ended while armourd was down, or their pid now runs \
                     another program)"
                )
            } else {
                String::new()
            }
        );
    }

    /// Takes `record` back if its process still runs as recorded.
    fn take_back(&mut self, record: &Record) -> bool {
        let leader = ProcId {
            pid: record.pid,
            start: Some(record.start),
        };
        if !runs_as_recorded(record) {
            log::debug!(
                "pid {} ({}) does not run as recorded; forgotten",
                record.pid,
                record.exe.display()
            );
            return false;
        }
        if let Some(uid) = record.by {
            if !self.supervisor.is_watched(record.pid) {
                if let Err(refusal) = self.watch_request(record.pid as i32, uid) {
                    log::info!(
                        "pid {} ({}) was watched on request of uid {uid}; not any more: {refusal}",
                        record.pid,
                        record.exe.display()
                    );
                    return false;
                }
                if let Some(view) = self.supervisor.instances().find(|v| v.pid == record.pid) {
                    self.keeper.watched_by(view.id, uid);
                }
            }
        }
        let mono = monotonic_ns();
        let now = Instant::now();
        let crashes = record
            .crashes
            .iter()
            .filter(|&&ns| ns <= mono)
            .filter_map(|&ns| now.checked_sub(Duration::from_nanos(mono - ns)))
            .collect();
        self.supervisor
            .restore(leader, record.restarts, record.streak, crashes)
    }
}

/// Whether the process `record` names runs now: pid, start time and
/// executable (device, inode, path) all as recorded.
fn runs_as_recorded(record: &Record) -> bool {
    let key = FileKey::new(record.ino, record.dev.0, record.dev.1);
    procfs::stat(record.pid).is_ok_and(|s| s.start_ticks == record.start && !s.zombie)
        && procfs::exe_key(record.pid).is_ok_and(|k| k == key)
        && procfs::exe_path(record.pid).is_ok_and(|p| p == record.exe)
}
