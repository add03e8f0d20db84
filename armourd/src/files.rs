//! Which files on disk the configured entries name (SPEC §2): the
//! executables to watch with their keys as the kernel sees them, the
//! interpreters of watched scripts, and the directories whose changes can
//! change that list. Globs are walked within bounds and never through a
//! symlinked directory (see `walk`), so that whoever owns a folder a glob
//! covers cannot make armourd hang or grow. Also the bounded, non-blocking
//! read of a whole file that the configuration is loaded with.

use std::{
    collections::{BTreeSet, HashSet},
    ffi::{OsStr, OsString},
    fs::{self, Metadata, OpenOptions},
    io::{self, Read},
    os::unix::{
        ffi::OsStrExt,
        fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use armourd_common::{FileKey, MAX_WATCHED_FILES};

use crate::config::{Config, Entry, Pattern};

mod walk;

use walk::{Bound, Limits, Walk};

/// How much of a file the kernel reads to find `#!` (`BINPRM_BUF_SIZE`).
const HEAD_LEN: u64 = 256;

/// An executable an entry names, as found on disk now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedFile {
    /// Index of the entry in `Config::entries`.
    pub entry: usize,
    /// Canonical path.
    pub path: PathBuf,
    /// Inode and device, as the eBPF programs see the executed file.
    pub key: FileKey,
    /// Canonical interpreter when the file is a `#!` script: the kernel
    /// executes the interpreter, so that is what a process shows as its exe.
    pub interpreter: Option<PathBuf>,
}

/// Every existing regular file with an execute bit that an entry names,
/// as many as the kernel filter holds with their interpreters
/// ([`MAX_WATCHED_FILES`]). A file named by several entries belongs to the
/// first one, and earlier entries are served first.
pub fn expand(config: &Config) -> Vec<WatchedFile> {
    let mut seen = HashSet::new();
    let mut interpreters = HashSet::new();
    let mut files = Vec::new();
    for (index, entry) in config.entries.iter().enumerate() {
        for path in candidates(entry) {
            if seen.len() + interpreters.len() >= MAX_WATCHED_FILES as usize {
                warn_full(entry, &path);
                return files;
            }
            match inspect(index, &path) {
                Ok(Some(file)) if seen.insert(file.key) => {
                    interpreters.extend(file.interpreter.clone());
                    files.push(file);
                }
                Ok(_) => {}
                Err(e) => log::debug!("skipping {}: {e}", path.display()),
            }
        }
    }
    files
}

/// Canonical paths `entry` names, not yet checked to be executables.
fn candidates(entry: &Entry) -> Vec<PathBuf> {
    match &entry.pattern {
        // Canonicalised again: a path installed after the configuration was
        // loaded may be a symlink.
        Pattern::Path(path) => match fs::canonicalize(path) {
            Ok(canonical) => vec![canonical],
            Err(e) => {
                log::debug!("line {}: {}: {e}", entry.line, path.display());
                Vec::new()
            }
        },
        Pattern::Glob(glob) => walk_glob(entry, glob)
            .files
            .into_iter()
            // A symlink in a globbed directory is never a match (its target
            // is, where the glob reaches it); a prefix that became a symlink
            // since loading leads elsewhere: the glob must match the path
            // processes will show.
            .filter(|path| entry.matches(path))
            .collect(),
    }
}

/// Walks a glob entry from its literal prefix, canonical now, within
/// [`Limits::DEFAULT`], and warns (once per entry and limit) when a limit
/// cut the walk short.
fn walk_glob(entry: &Entry, glob: &glob::Pattern) -> Walk {
    let (prefix, rest) = split_glob(glob.as_str());
    let Ok(start) = fs::canonicalize(prefix) else {
        return Walk::default();
    };
    let walk = walk::walk(&start, rest, Limits::DEFAULT);
    for bound in &walk.bounds {
        warn_bound(entry, glob, &start, *bound);
    }
    walk
}

/// A warning that every rescan would repeat.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Warning {
    /// A glob's walk reached a bound.
    Bound { glob: String, bound: Bound },
    /// More executables match than the kernel filter holds.
    Full,
}

/// Whether `warning` is logged for the first time. Rescans run after every
/// change in a watched directory, which whoever owns it can cause at will:
/// each warning is logged once, not once per rescan.
fn first_time(warning: Warning) -> bool {
    static WARNED: Mutex<BTreeSet<Warning>> = Mutex::new(BTreeSet::new());
    let mut warned = WARNED.lock().unwrap_or_else(PoisonError::into_inner);
    warned.insert(warning)
}

/// Warns, once, that `bound` cut the walk of `entry`'s glob short.
fn warn_bound(entry: &Entry, glob: &glob::Pattern, start: &Path, bound: Bound) {
    let glob_text = glob.as_str().to_string();
    if !first_time(Warning::Bound {
        glob: glob_text,
        bound,
    }) {
        return;
    }
    let start = start.display();
    let reached = match bound {
        Bound::Depth => format!(
            "folders deeper than {} levels below {start} are not looked at",
            Limits::DEFAULT.depth
        ),
        Bound::Visits => format!(
            "the walk stopped after {} files and folders below {start}",
            Limits::DEFAULT.visits
        ),
    };
    log::warn!(
        "line {} ({glob}): {reached}; the executables found are watched, others there are not \
         (narrow the glob; symlinked folders are never followed)",
        entry.line,
    );
}

/// Warns, once, that `path` of `entry` and what follows it find no room.
fn warn_full(entry: &Entry, path: &Path) {
    if first_time(Warning::Full) {
        log::warn!(
            "line {} ({}): more than {MAX_WATCHED_FILES} executables and interpreters match the \
             configuration, the most the kernel filter holds; {} and the ones after it are not \
             watched (narrow the globs)",
            entry.line,
            entry.pattern,
            path.display()
        );
    }
}

/// The watched file at canonical `path`, or `None` when it is not a
/// regular file with an execute bit.
fn inspect(entry: usize, path: &Path) -> io::Result<Option<WatchedFile>> {
    // Checked before opening: opening a FIFO or a device has effects.
    if !is_executable(&fs::metadata(path)?) {
        return Ok(None);
    }
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    // The key comes from the opened file, so it belongs to the bytes read
    // even if the path was replaced in between.
    let metadata = file.metadata()?;
    if !is_executable(&metadata) {
        return Ok(None);
    }
    let mut head = Vec::new();
    (&mut file).take(HEAD_LEN).read_to_end(&mut head)?;
    let interpreter =
        parse_shebang(&head).and_then(|interpreter| canonical_interpreter(path, &interpreter));
    Ok(Some(WatchedFile {
        entry,
        path: path.to_path_buf(),
        key: key_of(&metadata),
        interpreter,
    }))
}

fn is_executable(metadata: &Metadata) -> bool {
    metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
}

fn canonical_interpreter(script: &Path, interpreter: &Path) -> Option<PathBuf> {
    // A relative interpreter is resolved by the kernel against the cwd of
    // whoever runs the script, which is unknown here.
    if !interpreter.is_absolute() {
        log::debug!(
            "{}: relative interpreter {} is not watched",
            script.display(),
            interpreter.display()
        );
        return None;
    }
    fs::canonicalize(interpreter)
        .map_err(|e| {
            log::debug!(
                "{}: interpreter {}: {e}",
                script.display(),
                interpreter.display()
            )
        })
        .ok()
}

/// The interpreter of a script whose first bytes are `head`, read the way
/// the kernel does: after `#!` and blanks, up to a blank, newline or NUL
/// (<https://github.com/torvalds/linux/blob/master/fs/binfmt_script.c>).
/// `#!/bin/sh -e` is `/bin/sh`; `#!  /usr/bin/env python3` is `/usr/bin/env`.
pub fn parse_shebang(head: &[u8]) -> Option<PathBuf> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest
        .split(|b| *b == b'\n' || *b == 0)
        .next()
        .unwrap_or(rest);
    let is_blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = line.iter().position(|b| !is_blank(b))?;
    let name = line[start..].split(is_blank).next()?;
    Some(PathBuf::from(OsStr::from_bytes(name)))
}

/// The key of the file at `path`, following symlinks.
pub fn file_key(path: &Path) -> io::Result<FileKey> {
    fs::metadata(path).map(|metadata| key_of(&metadata))
}

fn key_of(metadata: &Metadata) -> FileKey {
    let dev = metadata.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    // Linux majors have 12 bits and minors 20: both fit in u32.
    FileKey::new(metadata.ino(), major as u32, minor as u32)
}

/// Resolves `path` like `fs::canonicalize`, also when its end does not exist
/// yet: the longest existing ancestor is canonicalised and the rest appended.
/// The error is why `path` itself could not be resolved.
fn resolve(path: &Path) -> (PathBuf, Option<io::Error>) {
    let error = match fs::canonicalize(path) {
        Ok(canonical) => return (canonical, None),
        Err(error) => error,
    };
    for ancestor in path.ancestors().skip(1) {
        if let Ok(canonical) = fs::canonicalize(ancestor) {
            let rest = path.strip_prefix(ancestor).unwrap_or(path);
            return (canonical.join(rest), Some(error));
        }
    }
    (path.to_path_buf(), Some(error))
}

/// Why a file could not be read whole.
#[derive(thiserror::Error, Debug)]
pub enum ReadError {
    /// It is a FIFO, a device, a directory, a socket: reading it could block,
    /// never end, or fail.
    #[error("it is a {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error("it is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The bytes of the regular file at `path`, if it holds at most `limit`.
/// Opened non-blocking, so that a FIFO without a writer cannot hang, and
/// read only after its type and size were checked on the opened file.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let not_regular = |metadata: &Metadata| ReadError::NotRegular {
        kind: kind_of(metadata),
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| match fs::metadata(path) {
            // Opening a socket fails (ENXIO); its type says more.
            Ok(metadata) if !metadata.is_file() => not_regular(&metadata),
            _ => ReadError::Io(source),
        })?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(not_regular(&metadata));
    }
    if metadata.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    // Bounded again: the file may grow after fstat, and some files (in
    // /proc, say) report no size at all.
    read_bounded(file, limit)?.ok_or(ReadError::TooLarge { limit })
}

/// Reads all of `reader` if it holds at most `limit` bytes, else `None`,
/// having read no more than `limit + 1` bytes: an endless stream is never
/// read to its end.
pub fn read_bounded(reader: impl Read, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// What a file that is not a regular file is, for [`ReadError::NotRegular`].
fn kind_of(metadata: &Metadata) -> &'static str {
    let kind = metadata.file_type();
    if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO (named pipe)"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Splits a glob before its first component with a metacharacter:
/// `/usr/local/*/bin/x*` is `("/usr/local", "*/bin/x*")`.
fn split_glob(pattern: &str) -> (&str, &str) {
    let mut prefix_end = 0;
    for (index, _) in pattern.match_indices('/') {
        if pattern[prefix_end..index].contains(['*', '?', '[']) {
            break;
        }
        prefix_end = index;
    }
    let prefix = if prefix_end == 0 {
        "/"
    } else {
        &pattern[..prefix_end]
    };
    (prefix, &pattern[prefix_end + 1..])
}

/// Canonicalises an entry's path, or the literal directories before a
/// glob's first wildcard, so both compare with `/proc/PID/exe`. `file` is
/// the configuration file, for the warning about a path not there yet.
pub(crate) fn canonicalise(entry: &mut Entry, file: &Path) {
    let (canonical, path, error) = match &entry.pattern {
        Pattern::Path(path) => {
            let (canonical, error) = resolve(path);
            (Pattern::Path(canonical), path.clone(), error)
        }
        Pattern::Glob(glob) => {
            let (prefix, rest) = split_glob(glob.as_str());
            let (dir, error) = resolve(Path::new(prefix));
            // A canonical prefix that is not UTF-8 cannot be written as a
            // glob; the pattern is then kept as written.
            let rebuilt = dir
                .to_str()
                .and_then(|dir| glob::Pattern::new(&format!("{}/{rest}", escape_dir(dir))).ok())
                .unwrap_or_else(|| glob.clone());
            (Pattern::Glob(rebuilt), PathBuf::from(prefix), error)
        }
    };
    entry.pattern = canonical;
    match error {
        Some(e) if e.kind() == io::ErrorKind::NotFound => log::warn!(
            "{}:{}: {} does not exist yet; it is watched once it is installed",
            file.display(),
            entry.line,
            path.display()
        ),
        Some(e) => log::warn!(
            "{}:{}: cannot resolve {}: {e}",
            file.display(),
            entry.line,
            path.display()
        ),
        None => {}
    }
}

/// The glob text matching exactly the directory `dir`, without its trailing
/// `/` so that joining with `/` never doubles it (`/` itself becomes "").
fn escape_dir(dir: &str) -> String {
    glob::Pattern::escape(dir.trim_end_matches('/'))
}

/// Existing directories whose changes (files created, renamed over,
/// removed) may change what [`expand`] returns, canonical, sorted and
/// without duplicates. A glob's are bounded like its expansion.
pub fn watch_dirs(config: &Config) -> Vec<PathBuf> {
    let mut dirs = BTreeSet::new();
    for entry in &config.entries {
        match &entry.pattern {
            Pattern::Path(path) => dirs.extend(nearest_dir(path.parent().unwrap_or(path))),
            Pattern::Glob(glob) => glob_dirs(entry, glob, &mut dirs),
        }
    }
    dirs.into_iter().collect()
}

/// For each glob entry whose literal prefix exists: the folder that holds
/// the prefix and the prefix's name in it. The prefix removed and created
/// again shows there (its own watch may never say it went: see
/// `DirWatch::update`); only changes of that one name matter, so that a
/// busy parent such as `/tmp` does not rescan the glob at every file.
pub fn prefix_parents(config: &Config) -> Vec<(PathBuf, OsString)> {
    let mut parents = BTreeSet::new();
    for entry in &config.entries {
        let Pattern::Glob(glob) = &entry.pattern else {
            continue;
        };
        let (prefix, _) = split_glob(glob.as_str());
        let Ok(prefix) = fs::canonicalize(prefix) else {
            continue;
        };
        if let (Some(parent), Some(name)) = (prefix.parent(), prefix.file_name()) {
            parents.insert((parent.to_path_buf(), name.to_os_string()));
        }
    }
    parents.into_iter().collect()
}

/// The canonical directory `path`, or its nearest existing ancestor: the
/// missing directories appear there first.
fn nearest_dir(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .find_map(|ancestor| fs::canonicalize(ancestor).ok().filter(|dir| dir.is_dir()))
}

/// The directories of a glob entry: its literal prefix (or its nearest
/// existing ancestor), then every directory the walk looked into, since a
/// file or directory created in any of them can bring new matches
/// (`/opt/*/bin/*`: `/opt`, `/opt/*` and `/opt/*/bin`).
fn glob_dirs(entry: &Entry, glob: &glob::Pattern, dirs: &mut BTreeSet<PathBuf>) {
    let (prefix, _) = split_glob(glob.as_str());
    dirs.extend(nearest_dir(Path::new(prefix)));
    dirs.extend(walk_glob(entry, glob).dirs);
}

#[cfg(test)]
mod tests;
