//! Execs, for the proc-connector backend: a datagram says only which
//! process executed, so the executed file and what a restart needs are read
//! from `/proc` at once, and a process already gone is represented by the
//! fork it left running (a daemon that detached at once). Which fork that
//! is, `race::heir` decides from the facts gathered here; it is asked here
//! and not by the daemon because the filter must hold that fork before the
//! next datagram is handled (see `race`).

use std::{collections::HashSet, ffi::OsString, os::fd::AsFd};

use armourd_common::FileKey;

use super::{filter::Message, socket::receive_batch, start_ticks, ProcConnectorBackend, BATCH};
use crate::{
    backend::ExecEvent,
    procfs,
    race::{self, Probe, Step},
};

impl ProcConnectorBackend {
    /// What an exec of process `pid` is reported as, and whether that
    /// watched a process. An exec of a watched executable is watched at
    /// once; one whose process is gone before it could be looked at is
    /// reported as the exec of what it forked that still runs that program.
    pub(super) fn on_exec(&mut self, pid: u32, ktime_ns: Option<u64>) -> (ExecEvent, bool) {
        if let Some(watched) = self.watched.get_mut(&pid) {
            // Only the thread that executed is left, now under `pid`.
            watched.threads = HashSet::from([pid]);
            let (start, file) = (watched.start, procfs::exe_key(pid).ok());
            watched.exe = file;
            let exec = ExecEvent {
                pid,
                start,
                file,
                ktime_ns,
                ..ExecEvent::default()
            };
            return (exec, false);
        }
        let own = procfs::exe_key(pid).ok();
        let mut exec = ExecEvent {
            pid,
            file: own,
            ktime_ns,
            ..ExecEvent::default()
        };
        let own_watched = own.is_some_and(|key| self.files.contains(&key));
        let stat = own_watched.then(|| procfs::stat(pid).ok()).flatten();
        // A child of armourd's (a restart, whose exec the daemon awaits, or
        // a hook, rarely) needs no launch context: armourd started it. Its
        // exec is its own, not a fork's of a process gone.
        let armourds = stat.as_ref().is_some_and(|s| s.ppid == std::process::id());
        // Read at once, before it can end: the daemon falls back on it.
        let mut context = (own_watched && !armourds)
            .then(|| launch_context(pid))
            .flatten();
        let unknown = own.is_none() && !self.files.is_empty();
        if context.is_none() && !armourds && (unknown || own_watched) {
            if let Some(heir) = self.heir_of_exec(pid) {
                (exec.pid, exec.file, context) = (heir.pid, Some(heir.file), Some(heir.context));
            }
        }
        if let Some(context) = context {
            (exec.argv, exec.env) = (Some(context.argv), Some(context.env));
            (exec.uid, exec.gid) = (Some(context.uid), Some(context.gid));
        }
        let watch = exec.file.is_some_and(|key| self.files.contains(&key));
        if watch {
            exec.start = match stat {
                Some(stat) if exec.pid == pid => Some(stat.start_ticks),
                _ => start_ticks(exec.pid),
            };
            self.insert(exec.pid, exec.start, HashSet::from([exec.pid]), exec.file);
            self.sync_filter();
        }
        (exec, watch)
    }

    /// An exec of `pid` whose datagram an older filter may have dropped,
    /// as `/proc` shows it now (when it executed is not known): for a
    /// watched process, its new executable (its threads, read from `/proc`
    /// as the filter took it, stay); for another, as [`Self::on_exec`]
    /// reports it.
    pub(super) fn exec_seen(&mut self, pid: u32) -> ExecEvent {
        let Some(watched) = self.watched.get_mut(&pid) else {
            return self.on_exec(pid, None).0;
        };
        watched.exe = procfs::exe_key(pid).ok();
        ExecEvent {
            pid,
            start: watched.start,
            file: watched.exe,
            ..ExecEvent::default()
        }
    }

    /// The first process that `pid`, gone since its exec, forked (or that
    /// those forked, as a daemonizing double fork does) and that still runs
    /// a watched executable, from the forks queued after that exec: it runs
    /// the image `pid` executed, with its command line and environment.
    /// Those forks came before `pid` ended, so they are queued.
    fn heir_of_exec(&mut self, pid: u32) -> Option<Heir> {
        let found = self.find_heir(pid);
        if found.is_some() {
            return found;
        }
        let (buf, pending) = (&mut self.buf, &mut self.pending);
        let fd = self.socket.get_ref().as_fd();
        match receive_batch(fd, buf, 4 * BATCH, pending) {
            Ok(received) => self.lost |= received.lost,
            Err(e) => log::debug!("proc connector: cannot read ahead: {e}"),
        }
        self.find_heir(pid)
    }

    fn find_heir(&self, pid: u32) -> Option<Heir> {
        let steps = self.pending.iter().filter_map(|message| match *message {
            Message::Exec { pid, .. } => Some(Step::Exec { pid }),
            // A fork of a process, not of a thread.
            Message::Fork {
                parent,
                child_pid,
                child_tgid,
            } if child_pid == child_tgid => Some(Step::Fork {
                parent,
                child: child_tgid,
            }),
            _ => None,
        });
        let probe = |child| {
            let Ok(file) = procfs::exe_key(child) else {
                return Probe::Gone;
            };
            if !self.files.contains(&file) || self.watched.contains_key(&child) {
                return Probe::Other; // executed something else since, or watched already
            }
            launch_context(child).map_or(Probe::Gone, |context| Probe::Heir((file, context)))
        };
        let (pid, (file, context)) = race::heir(pid, steps, probe)?;
        Some(Heir { pid, file, context })
    }
}

/// What a restart needs most, read as early as possible.
struct Context {
    argv: Vec<OsString>,
    env: Vec<OsString>,
    uid: u32,
    gid: u32,
}

/// A process that forked a watched executable's image and still runs it.
struct Heir {
    pid: u32,
    file: FileKey,
    context: Context,
}

/// What the daemon would read from `/proc` a moment later, `None` once the
/// process is ending (its areas read empty or cut short then).
fn launch_context(pid: u32) -> Option<Context> {
    let argv = procfs::cmdline(pid).ok()?;
    let env = procfs::environ(pid).ok()?;
    let status = procfs::status(pid).ok()?;
    Some(Context {
        argv,
        env,
        uid: status.uid,
        gid: status.gid,
    })
}
