//! Starting to watch: execs the kernel reported, adoption of running
//! processes, and the kernel filter's marks of the watched files; and how
//! a watch ends when the kernel's record of the end may not come.

use std::{ffi::OsString, time::Instant};

use armourd_common::PidClass;

use super::Daemon;
use crate::{
    backend::{Event, ExecEvent, FilterError},
    launch::LaunchSpec,
    logging::error_chain,
    place::{self, Place, PlaceError},
    procfs,
    race::{self, Adopted},
    status::ExitStatus,
    supervisor::{Action, Exec, ProcId},
    watchlist::{Match, WatchList},
};

impl Daemon {
    pub(super) fn exec(&mut self, exec: ExecEvent, now: Instant) -> Vec<Action> {
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
            self.supervisor.exec_confirmed(pid, exec.start);
            return Vec::new();
        }
        let Some(key) = exec.file else {
            self.adopt_orphans_of(pid);
            if self.watched_and_gone(pid, exec.start) {
                return Vec::new();
            }
            return self.supervisor.exec_other(pid);
        };
        match self.watchlist.file(&key) {
            // Nothing to read: the same instance (see `leads_running`).
            Some(file)
                if self
                    .supervisor
                    .leads_running(pid, exec.start, file.entry, &file.path) =>
            {
                return Vec::new();
            }
            // The common case with the proc connector: someone else's exec.
            None if !self.watchlist.is_interpreter(&key) => {
                return self.supervisor.exec_other(pid);
            }
            _ => {}
        }
        let argv = match &exec.argv {
            Some(argv) => argv.clone(),
            None => match procfs::cmdline(pid) {
                Ok(argv) if !argv.is_empty() => argv,
                _ if self.watched_and_gone(pid, exec.start) => return Vec::new(),
                other => other.unwrap_or_default(),
            },
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
        let (spec, leads_group) =
            match capture(pid, exe.clone(), known, argv, script_argv.is_some()) {
                Ok(captured) => captured,
                Err(err) => {
                    not_watched(pid, &exe, &err);
                    return self.supervisor.exec_other(pid);
                }
            };
        // A watch with no start time would pass for a restart of armourd's
        // whose exec is still to come (`awaits_exec`), and a later exec of
        // another watched program would be taken for that: the proc
        // connector does not say the start time of a process it did not
        // watch yet.
        let start = exec
            .start
            .or_else(|| procfs::stat(pid).ok().map(|stat| stat.start_ticks));
        if self.supervisor.adopted_leader(pid, start) && !alive(ProcId { pid, start }) {
            // Adopted from /proc (a file that appeared in a globbed folder,
            // a rescan) before this exec's event was read, and gone since:
            // what was just read is defaults (/dev/null, no environment),
            // while what the adoption read is how it was started.
            return Vec::new();
        }
        let exec = Exec {
            proc: ProcId { pid, start },
            entry: Some(entry),
            spec,
            leads_group,
            adopted: false,
        };
        self.supervisor.exec(exec, now)
    }

    /// Whether `pid` is watched and ended (or is a zombie) before its exec
    /// could be read from `/proc`: its end tells what became of it, not
    /// that exec, which must not take it for another program.
    fn watched_and_gone(&self, pid: u32, start: Option<u64>) -> bool {
        let gone = self.supervisor.is_watched(pid) && !alive(ProcId { pid, start });
        if gone {
            log::debug!("pid {pid} ended before its exec could be read; its end will tell");
        }
        gone
    }

    /// Adopts running processes of watched files (of `only`, if given).
    /// Once the kernel refuses a watch for want of room, no more processes
    /// of that class are tried.
    pub(super) fn adopt(&mut self, only: Option<&[armourd_common::FileKey]>) {
        let now = Instant::now();
        // Each is watched before the next is looked at (a refusal stops
        // the rest of its class), so the scan must not borrow the list.
        let found: Vec<_> = (self.watchlist.scan(only).into_iter())
            .map(|(pid, stat, Match { file, script_argv }, argv)| {
                (pid, stat, file.entry, file.path.clone(), script_argv, argv)
            })
            .collect();
        let mut adopted: Vec<Adopted> = Vec::new();
        self.unheld.begin();
        for (pid, stat, entry, path, script_argv, argv) in found {
            if self.supervisor.is_watched(pid) || self.unheld_class(pid) {
                continue;
            }
            let start = Some(stat.start_ticks);
            if let Some(parent) = race::forked_by(&adopted, stat.ppid, stat.pgrp, entry) {
                let actions = self.supervisor.fork(parent, ProcId { pid, start });
                self.apply(actions);
                continue;
            }
            let script = script_argv.is_some();
            let argv = strip_interpreter(argv, script_argv);
            let known = procfs::Known {
                argv: Some(argv.clone()),
                ..procfs::Known::default()
            };
            let (spec, leads_group) = match capture(pid, path.clone(), known, argv, script) {
                Ok(captured) => captured,
                Err(err) => {
                    not_watched(pid, &path, &err);
                    continue;
                }
            };
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
                adopted.push(Adopted {
                    pid,
                    pgrp: stat.pgrp,
                    entry,
                });
            }
        }
        self.unheld.end(Instant::now());
        // A process that ended between the scan and its watch, or while
        // events were lost, was not seen ending: its status is unknown.
        for proc in self.supervisor.watched() {
            if !alive(proc) {
                let actions = self.ended(proc.pid, proc.start, ExitStatus::Unknown, now);
                self.apply(actions);
            }
        }
    }

    /// Handles the events of one read in order, then the ends that what
    /// `/proc` showed ([`Event::Ending`]) settles: `race` decides them
    /// before the kernel's records of the read are handled, as the
    /// records' order with what `/proc` showed requires, and they are
    /// handled last, as the backend would have reported them.
    pub(super) fn handle_read(&mut self, events: &mut Vec<Event>) {
        let mut seen = Vec::new();
        events.retain(|event| match event {
            Event::Ending(found) => {
                seen.push(*found);
                false
            }
            _ => true,
        });
        let ended = if seen.is_empty() {
            Vec::new()
        } else {
            let recorded: Vec<u32> = (events.iter())
                .filter_map(|event| match event {
                    Event::Exit { pid, .. } => Some(*pid),
                    _ => None,
                })
                .collect();
            let recorded = |pid| recorded.contains(&pid);
            self.endings.settle(seen, recorded, Instant::now())
        };
        for event in events.drain(..) {
            self.handle(event);
        }
        for race::Ended { pid, start, status } in ended {
            log::debug!("pid {pid} ended unrecorded, as /proc showed it: {status}");
            self.handle(Event::Exit {
                pid,
                start,
                status,
                ktime_ns: None,
            });
        }
    }

    /// A watched process ended with `status`. Whether an unseen end (an
    /// unknown status) handed the watch over to a process it forked is
    /// decided by `race::handed_off`, from what `/proc` shows of those.
    pub(super) fn ended(
        &mut self,
        pid: u32,
        start: Option<u64>,
        status: ExitStatus,
        now: Instant,
    ) -> Vec<Action> {
        let forked = self.supervisor.forked_by(pid);
        let forked = (forked.into_iter()).map(|proc| race::Forked {
            pid: proc.pid,
            runs: alive(proc),
        });
        match race::handed_off(status, forked) {
            Some(heir) => {
                log::debug!("pid {pid} ended unseen while pid {heir}, which it forked, runs on");
                self.supervisor.handed_off(pid, start, heir, now)
            }
            None => self.supervisor.exit(pid, start, status, now),
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
    pub(super) fn rescan_files(&mut self) {
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

    pub(super) fn install_marks(&mut self) {
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
    pub(super) fn refused(&mut self, pid: u32, err: &FilterError) {
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
}

/// For a script run by its interpreter: argv from the script path on.
fn strip_interpreter(argv: Vec<OsString>, script_argv: Option<usize>) -> Vec<OsString> {
    match script_argv {
        Some(index) if index < argv.len() => argv[index..].to_vec(),
        _ => argv,
    }
}

/// Captures a process's launch context; for a process that is already gone,
/// what the kernel reported and safe defaults. An error: the process
/// cannot be restarted where it runs, so it must not be watched.
pub(super) fn capture(
    pid: u32,
    exe: std::path::PathBuf,
    known: procfs::Known,
    argv: Vec<OsString>,
    script: bool,
) -> Result<(LaunchSpec, bool), PlaceError> {
    let place = capture_place(pid, script)?;
    if !place.namespaces.is_empty() || place.cgroup.is_some() {
        log::debug!("pid {pid} runs in {place:?}");
    }
    let (spec, leads_group) = capture_spec(pid, exe, known, argv);
    Ok((LaunchSpec { place, ..spec }, leads_group))
}

/// Where process `pid` runs (namespaces, cgroup).
pub(super) fn capture_place(pid: u32, script: bool) -> Result<Place, PlaceError> {
    match Place::of(pid) {
        Ok(mut place) => {
            if script {
                // Executed again by the path it was run with, which is
                // its own path already: the kernel's link names the
                // interpreter.
                place.exe = None;
            }
            Ok(place)
        }
        // Gone within microseconds of its exec: its namespaces are beyond
        // reach, but its status (a zombie's too) says whether it ran in
        // another pid namespace. Nothing says so: armourd's, as ever.
        Err(PlaceError::Gone { .. }) if place::pid_depth(pid).is_none_or(|depth| depth <= 1) => {
            Ok(Place::default())
        }
        Err(err) => Err(err),
    }
}

/// Logs that `pid` is not watched because of `err`.
fn not_watched(pid: u32, exe: &std::path::Path, err: &PlaceError) {
    log::warn!(
        "pid {pid} ({}) is NOT watched: {}",
        exe.display(),
        error_chain(err)
    );
}

/// The launch context of `pid` (see [`capture`]).
fn capture_spec(
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
pub(super) fn alive(proc: ProcId) -> bool {
    procfs::stat(proc.pid)
        .is_ok_and(|s| proc.start.is_none_or(|start| start == s.start_ticks) && !s.zombie)
}
