//! The executables armourd watches right now, by kernel file key, and the
//! look-ups that tie a process to one of them: its executable, or for a
//! script, the interpreter plus the script's path on its command line.

use std::{
    collections::{HashMap, HashSet},
    ffi::{OsStr, OsString},
    os::fd::{AsFd, AsRawFd, RawFd},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::Instant,
};

use armourd_common::FileKey;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::{
    backend::FileMark,
    config::Config,
    files::{self, WatchedFile},
    procfs,
};

/// The watched files of a configuration, as found on disk.
#[derive(Debug, Default)]
pub struct WatchList {
    files: HashMap<FileKey, WatchedFile>,
    interpreters: HashMap<FileKey, PathBuf>,
}

/// A running process that runs a watched file.
#[derive(Debug)]
pub struct Match<'a> {
    pub file: &'a WatchedFile,
    /// For a script: the index in the interpreter's argv where the
    /// script's own command line starts (the script path).
    pub script_argv: Option<usize>,
}

impl WatchList {
    /// Finds on disk what `config` names.
    pub fn new(config: &Config) -> Self {
        let mut list = Self::default();
        for file in files::expand(config) {
            if let Some(interpreter) = &file.interpreter {
                match files::file_key(interpreter) {
                    Ok(key) => {
                        list.interpreters.insert(key, interpreter.clone());
                    }
                    Err(err) => log::warn!(
                        "script {}: its interpreter {} cannot be used: {err}",
                        file.path.display(),
                        interpreter.display()
                    ),
                }
            }
            list.files.insert(file.key, file);
        }
        list
    }

    /// How many files are watched.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// The marks the kernel filter needs.
    pub fn marks(&self) -> impl Iterator<Item = (FileKey, FileMark)> + '_ {
        self.marked().map(|(key, mark, _)| (key, mark))
    }

    /// The marks the kernel filter needs, with where each file was found.
    pub fn marked(&self) -> impl Iterator<Item = (FileKey, FileMark, &Path)> + '_ {
        let files = (self.files.iter()).map(|(k, f)| (*k, FileMark::Watched, f.path.as_path()));
        files.chain(
            (self.interpreters.iter()).map(|(k, path)| (*k, FileMark::Interpreter, path.as_path())),
        )
    }

    /// The watched file with `key`, if it is not a script.
    pub fn file(&self, key: &FileKey) -> Option<&WatchedFile> {
        self.files.get(key).filter(|f| f.interpreter.is_none())
    }

    /// Whether `key` is the interpreter of a watched script.
    pub fn is_interpreter(&self, key: &FileKey) -> bool {
        self.interpreters.contains_key(key)
    }

    /// What process `pid`, running the file `key`, runs: the file itself,
    /// or the watched script that `filename` (given to execve) or its argv names.
    pub fn classify(
        &self,
        pid: u32,
        key: &FileKey,
        filename: Option<&OsStr>,
        argv: &[OsString],
    ) -> Option<Match<'_>> {
        if let Some(file) = self.file(key) {
            return Some(Match {
                file,
                script_argv: None,
            });
        }
        if !self.is_interpreter(key) {
            return None;
        }
        let named = |name: &OsStr| -> Option<&WatchedFile> {
            let path = Path::new(name);
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                Path::new(&format!("/proc/{pid}/cwd")).join(path)
            };
            let key = files::file_key(&path).ok()?;
            self.files.get(&key).filter(|f| f.interpreter.is_some())
        };
        // The kernel puts the script's path after the interpreter and its
        // one optional argument; an interpreter executed by name (`sh
        // SCRIPT`) has it at the same place.
        let file = filename
            .and_then(named)
            .or_else(|| argv.iter().skip(1).take(2).find_map(|a| named(a)))?;
        let index = argv
            .iter()
            .skip(1)
            .position(|a| named(a).is_some_and(|f| f.key == file.key))
            .map(|i| i + 1)?;
        Some(Match {
            file,
            script_argv: Some(index),
        })
    }

    /// Running processes of watched files (all of them, or only those in `only`).
    pub fn scan(
        &self,
        only: Option<&[FileKey]>,
    ) -> Vec<(u32, procfs::Stat, Match<'_>, Vec<OsString>)> {
        let mut found = Vec::new();
        let own = std::process::id();
        let layout = std::time::Instant::now() + procfs::EXEC_LAYOUT;
        for pid in procfs::pids().unwrap_or_default() {
            if pid == own {
                continue;
            }
            let Ok(key) = procfs::exe_key(pid) else {
                continue;
            };
            let wanted = |k: &FileKey| only.is_none_or(|keys| keys.contains(k));
            if !(self.files.contains_key(&key) || self.is_interpreter(&key)) {
                continue;
            }
            let Ok(argv) = procfs::cmdline_by(pid, layout) else {
                continue;
            };
            let Some(found_match) = self.classify(pid, &key, None, &argv) else {
                continue;
            };
            if !wanted(&found_match.file.key) {
                continue;
            }
            if let Ok(stat) = procfs::stat(pid) {
                found.push((pid, stat, found_match, argv));
            }
        }
        found.sort_by_key(|(pid, stat, _, _)| (stat.start_ticks, *pid));
        found
    }

    /// Watched files whose name the kernel would show as `comm` (the first
    /// 15 bytes of the executed file's name).
    pub fn named(&self, comm: &[u8]) -> Vec<FileKey> {
        self.files
            .values()
            .filter(|f| {
                let name = f.path.file_name().map_or(&[][..], |n| n.as_bytes());
                !comm.is_empty() && &name[..name.len().min(15)] == comm
            })
            .map(|f| f.key)
            .collect()
    }

    /// Keys in `self` that are not in `older`.
    pub fn added_since(&self, older: &WatchList) -> Vec<FileKey> {
        self.files
            .keys()
            .filter(|k| !older.files.contains_key(k))
            .copied()
            .collect()
    }
}

/// Notices files appearing in, or renamed into, the directories that the
/// configuration's entries and globs name.
pub struct DirWatch {
    inotify: Inotify,
    /// Exactly the directories the configuration depends on now, so that
    /// directories created and removed again never pile up.
    watched: HashMap<PathBuf, WatchDescriptor>,
    /// The folders holding a glob's literal prefix, and its name there:
    /// only changes of that name count (see [`files::prefix_parents`]).
    parents: HashMap<WatchDescriptor, HashSet<OsString>>,
    /// The descriptors of `watched`: every change in them counts.
    whole: HashSet<WatchDescriptor>,
    /// Whether a directory that could not be watched was logged already.
    warned: bool,
    pace: Pace,
}

/// When rescans run: as soon as a watched directory changed, but after a
/// rescan that took `t`, not before [`Pace::PAUSE_FACTOR`] × `t` has
/// passed. Whoever owns a folder a glob covers can change it without
/// pause; a rescan is bounded (see `files`), and this bounds the share of
/// armourd's time that rescans take, while ordinary ones (well under a
/// millisecond) still run at once.
#[derive(Debug)]
pub struct Pace {
    /// A change was seen and not rescanned yet.
    pending: bool,
    not_before: Instant,
}

impl Pace {
    /// Rescans take at most 1 / (1 + PAUSE_FACTOR) of the time.
    pub const PAUSE_FACTOR: u32 = 4;

    pub fn new(now: Instant) -> Self {
        Self {
            pending: false,
            not_before: now,
        }
    }

    /// A watched directory changed.
    pub fn changed(&mut self) {
        self.pending = true;
    }

    /// When the next rescan is due, if one is.
    pub fn due(&self) -> Option<Instant> {
        self.pending.then_some(self.not_before)
    }

    /// A rescan ran from `began` to `now`.
    pub fn rescanned(&mut self, began: Instant, now: Instant) {
        self.pending = false;
        self.not_before = now + now.saturating_duration_since(began) * Self::PAUSE_FACTOR;
    }
}

/// Notifications read in one [`DirWatch::drain`]: whoever owns a watched
/// directory can make them without end, and the event loop has other work.
const DRAIN_MAX_READS: usize = 64;

impl DirWatch {
    /// An inotify instance (non-blocking, close-on-exec) without watches.
    pub fn new() -> nix::Result<Self> {
        Ok(Self {
            inotify: Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?,
            watched: HashMap::new(),
            parents: HashMap::new(),
            whole: HashSet::new(),
            warned: false,
            pace: Pace::new(Instant::now()),
        })
    }

    /// Watches every directory `config` depends on now, and no other.
    ///
    /// Every wanted directory is added again at each update: the kernel
    /// answers with the watch it has on that inode, or a new one when the
    /// path now names another directory. A folder removed and created again
    /// is a new inode, and its old watch lingers (no `IN_IGNORED`) for as
    /// long as anything pins the removed one, e.g. a process still running
    /// a deleted binary from it; keyed by path alone, the new folder would
    /// never be watched.
    pub fn update(&mut self, config: &Config) {
        let wanted = files::watch_dirs(config);
        // Removals and renames count too: the folders of a glob that went
        // must lose their watches, and the folder above become watched.
        let flags = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_ONLYDIR;
        let mut failed = Vec::new();
        let mut watched = HashMap::with_capacity(wanted.len());
        for dir in wanted {
            match self.inotify.add_watch(&dir, flags) {
                Ok(wd) => {
                    watched.insert(dir, wd);
                }
                Err(err) => failed.push((dir, err)),
            }
        }
        self.whole = watched.values().copied().collect();
        self.parents.clear();
        for (parent, name) in files::prefix_parents(config) {
            if let Some(wd) = watched.get(&parent) {
                // Watched whole already.
                self.parents.entry(*wd).or_default().insert(name);
                continue;
            }
            // Names coming and going only: a busy parent (`/tmp`) must not
            // wake armourd at every write. Not worth a warning: the
            // prefix's own watch still sees most.
            let names = AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_ONLYDIR;
            let Ok(wd) = self.inotify.add_watch(&parent, names) else {
                continue;
            };
            self.parents.entry(wd).or_default().insert(name);
            watched.insert(parent, wd);
        }
        // A directory renamed to another wanted path keeps its watch
        // descriptor under its new path: only descriptors no wanted path
        // has any more are removed.
        let kept: HashSet<WatchDescriptor> = watched.values().copied().collect();
        for wd in self.watched.values() {
            if !kept.contains(wd) {
                // Fails for a directory already gone, whose watch went with it.
                let _ = self.inotify.rm_watch(*wd);
            }
        }
        self.watched = watched;
        // One line, once: the same failures recur at every rescan.
        if let Some((dir, err)) = failed.first() {
            let level = if self.warned {
                log::Level::Debug
            } else {
                log::Level::Warn
            };
            self.warned = true;
            log::log!(
                level,
                "cannot watch {} directories for new executables, e.g. {} ({err}); binaries installed there are found at the next rescan",
                failed.len(),
                dir.display()
            );
        }
    }

    /// When the files should be rescanned, if a watched directory changed
    /// (see [`Pace`]).
    pub fn rescan_due(&self) -> Option<Instant> {
        self.pace.due()
    }

    /// Records a rescan that ran from `began` until now.
    pub fn rescanned(&mut self, began: Instant) {
        self.pace.rescanned(began, Instant::now());
    }

    /// Reads pending notifications; when there were any, a rescan is due. A
    /// directory whose watch the kernel dropped (it was removed) is
    /// forgotten, so it is watched again should it come back.
    pub fn drain(&mut self) {
        let mut any = false;
        let mut dropped = HashSet::new();
        for _ in 0..DRAIN_MAX_READS {
            let Ok(events) = self.inotify.read_events() else {
                break;
            };
            if events.is_empty() {
                break;
            }
            for event in &events {
                if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                    dropped.insert(event.wd);
                    any = true;
                } else if self.whole.contains(&event.wd)
                    || event.name.as_ref().is_some_and(|name| {
                        self.parents
                            .get(&event.wd)
                            .is_some_and(|names| names.contains(name))
                    })
                {
                    any = true;
                }
            }
        }
        if !dropped.is_empty() {
            self.watched.retain(|_, wd| !dropped.contains(wd));
        }
        if any {
            self.pace.changed();
        }
    }
}

impl AsRawFd for DirWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.inotify.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rescan_is_due_only_after_a_change() {
        let now = Instant::now();
        let mut pace = Pace::new(now);
        assert_eq!(pace.due(), None);
        pace.changed();
        assert_eq!(pace.due(), Some(now));
        pace.rescanned(now, now);
        assert_eq!(pace.due(), None);
    }

    #[test]
    fn costly_rescan_delays_the_next_by_a_multiple_of_its_time() {
        let began = Instant::now();
        let ended = began + Duration::from_millis(40);
        let mut pace = Pace::new(began);
        pace.changed();
        pace.rescanned(began, ended);
        pace.changed();
        pace.changed();
        assert_eq!(pace.due(), Some(ended + Duration::from_millis(160)));
        // A cheap one lets the next run at once again.
        let later = ended + Duration::from_secs(1);
        pace.rescanned(later, later);
        pace.changed();
        assert_eq!(pace.due(), Some(later));
    }
}
