//! Glob expansion on disk that a folder's owner cannot turn against
//! armourd: directory symlinks are never followed (a loop like
//! `/usr/bin/X11 -> .` is one entry, not an endless tree), and every walk
//! stops at fixed [`Limits`] of depth and of entries looked at.
//!
//! Not following symlinks loses nothing: a glob matches canonical paths,
//! and every directory on a canonical path below the glob's (canonical)
//! literal prefix is a real directory, so every file the glob can match is
//! reached without them.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    fs::{self, FileType},
    path::{Path, PathBuf},
};

use crate::config::GLOB_OPTIONS;

/// How far and how wide one walk may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Directory levels below the glob's literal prefix.
    pub depth: usize,
    /// Directory entries looked at (listed or looked up by name).
    pub visits: usize,
}

impl Limits {
    /// The limits of every expansion: far more than an ordinary glob needs
    /// (`/usr/bin/*` of a full desktop is ~5,000 entries at depth 1), small
    /// enough that one walk takes some tens of milliseconds and its paths
    /// well under a MiB, and that an inotify watch fits every directory it
    /// reads.
    pub const DEFAULT: Self = Self {
        depth: 32,
        visits: 16_384,
    };
}

/// Which of the [`Limits`] stopped a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bound {
    Depth,
    Visits,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    /// Regular files (never symlinks) the pattern's components lead to,
    /// sorted and without duplicates, canonical below the literal prefix.
    pub files: Vec<PathBuf>,
    /// Directories whose entries were looked at: a change in any of them
    /// can change `files`.
    pub dirs: BTreeSet<PathBuf>,
    /// The limits reached: `files` is then incomplete.
    pub bounds: Vec<Bound>,
}

/// One `/`-separated component of a glob after its literal prefix.
enum Step {
    /// No metacharacter: looked up by name, the directory is not listed.
    Literal(String),
    Wildcard(glob::Pattern),
    /// `**`: any number of directories, none included.
    AnyDirs,
    /// A component no canonical path has (empty, `.`, `..`) or that is no
    /// glob on its own (a `[...]` holding a `/`).
    Never,
}

impl Step {
    fn parse(component: &str) -> Self {
        match component {
            "" | "." | ".." => Self::Never,
            "**" => Self::AnyDirs,
            _ if !component.contains(['*', '?', '[']) => Self::Literal(component.to_string()),
            _ => glob::Pattern::new(component).map_or(Self::Never, Self::Wildcard),
        }
    }
}

/// Walks `rest`, the part of a glob after its literal prefix, from the
/// directory `start`, within `limits`.
pub fn walk(start: &Path, rest: &str, limits: Limits) -> Walk {
    let mut steps: Vec<Step> = Vec::new();
    for component in rest.split('/') {
        let step = Step::parse(component);
        // `a/**/**/b` is `a/**/b`; keeping both would list every
        // directory once per way of splitting its depth between them.
        if !(matches!(step, Step::AnyDirs) && matches!(steps.last(), Some(Step::AnyDirs))) {
            steps.push(step);
        }
    }
    // A trailing `**` matches directories only, never an executable.
    if matches!(steps.last(), Some(Step::AnyDirs)) {
        steps.clear();
    }
    let mut walker = Walker {
        limits,
        visits: 0,
        walk: Walk::default(),
    };
    walker.visit(start, &steps, 0);
    let mut walk = walker.walk;
    walk.files.sort();
    walk.files.dedup();
    walk
}

struct Walker {
    limits: Limits,
    visits: usize,
    walk: Walk,
}

impl Walker {
    /// Follows `steps` from `dir`, which is `depth` levels below the start.
    fn visit(&mut self, dir: &Path, steps: &[Step], depth: usize) {
        let Some((step, rest)) = steps.split_first() else {
            return;
        };
        if self.walk.bounds.contains(&Bound::Visits) {
            return;
        }
        self.walk.dirs.insert(dir.to_path_buf());
        match step {
            Step::Never => {}
            Step::Literal(name) => {
                if self.count() {
                    let path = dir.join(name);
                    if let Ok(metadata) = fs::symlink_metadata(&path) {
                        self.found(path, metadata.file_type(), rest, depth);
                    }
                }
            }
            Step::Wildcard(pattern) => {
                for (name, kind) in self.list(dir) {
                    let matched = name
                        .to_str()
                        .is_some_and(|name| pattern.matches_with(name, GLOB_OPTIONS));
                    if matched {
                        self.found(dir.join(name), kind, rest, depth);
                    }
                }
            }
            Step::AnyDirs => {
                self.visit(dir, rest, depth);
                for (name, kind) in self.list(dir) {
                    if kind.is_dir() {
                        self.descend(&dir.join(name), steps, depth);
                    }
                }
            }
        }
    }

    /// `path`, of type `kind`, matched a step; `rest` are the steps after it.
    fn found(&mut self, path: PathBuf, kind: FileType, rest: &[Step], depth: usize) {
        if rest.is_empty() {
            if kind.is_file() {
                self.walk.files.push(path);
            }
        } else if kind.is_dir() {
            self.descend(&path, rest, depth);
        }
    }

    fn descend(&mut self, dir: &Path, steps: &[Step], depth: usize) {
        if depth >= self.limits.depth {
            self.reached(Bound::Depth);
        } else {
            self.visit(dir, steps, depth + 1);
        }
    }

    /// The entries of `dir` by name with their types as the directory gives
    /// them (symlinks as symlinks), sorted as `glob` sorts them. The
    /// directory is closed before any of them is entered, so a deep walk
    /// holds one descriptor.
    fn list(&mut self, dir: &Path) -> Vec<(OsString, FileType)> {
        let mut entries = Vec::new();
        let Ok(read_dir) = fs::read_dir(dir) else {
            return entries;
        };
        for entry in read_dir.flatten() {
            if !self.count() {
                break;
            }
            if let Ok(kind) = entry.file_type() {
                entries.push((entry.file_name(), kind));
            }
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    /// Counts one more entry looked at; false once the limit is reached.
    fn count(&mut self) -> bool {
        if self.visits >= self.limits.visits {
            self.reached(Bound::Visits);
            return false;
        }
        self.visits += 1;
        true
    }

    /// Notes that `bound` was reached. Visits ends the walk; depth only
    /// prunes the branch that went too deep.
    fn reached(&mut self, bound: Bound) {
        if !self.walk.bounds.contains(&bound) {
            self.walk.bounds.push(bound);
        }
    }
}
