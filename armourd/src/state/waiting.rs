//! The `waiting` line of the state file: an instance that has no process
//! (waiting for its backoff, or given up after `give-up`), with what its
//! restart needs, since no process is there to read it from again.
//!
//! Its fields, in this order: `state` (`backoff` or `failed`), `next` (the
//! `CLOCK_MONOTONIC` ns the restart is due at; `-` when failed), `entry`
//! (the configuration entry's pattern as the file names it; `-` for a
//! process watched on request), `by` (as on an `instance` line), `dev` and
//! `ino` (the executable's file when it last ran), `last-pid`, `last-exit`
//! (its raw wait status; `-`: not seen), `since` (`CLOCK_MONOTONIC` ns it
//! entered its state), `restarts`, `streak`, `crashes` (as on an
//! `instance` line), then the launch: `uid`, `gid`, `groups` (`-` or
//! numbers joined by `,`), `umask`, `session` (`1`: it led its session),
//! `cwd`, `stdin`, `stdout`, `stderr` (a path, `-` for `/dev/null`),
//! `cgroup` (`-`: armourd's), `argv` and `env` (`N:` and the N items
//! joined by `,`, each escaped like a path and `,` too; items may be
//! empty), and `exe` last.

use std::{
    ffi::{OsStr, OsString},
    fmt::Write as _,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
};

use super::{escape, escape_as, number, unescape, unescape_as, MAX_CRASHES};

/// Whether a waiting instance gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitingState {
    /// Its restart is due at this `CLOCK_MONOTONIC` time (ns).
    Backoff { next: u64 },
    /// `give-up` was reached: not restarted until reset.
    Failed,
}

/// An instance without a process, and what its restart needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub state: WaitingState,
    /// The configuration entry's pattern; `None`: watched on request.
    pub entry: Option<PathBuf>,
    /// The uid that asked for the watch over D-Bus.
    pub by: Option<u32>,
    /// The executable's device (major, minor) and inode when it last ran.
    pub dev: (u32, u32),
    pub ino: u64,
    pub last_pid: u32,
    /// The raw wait status of its last end, if seen.
    pub last_exit: Option<u32>,
    /// `CLOCK_MONOTONIC` ns it entered its state.
    pub since: u64,
    pub restarts: u32,
    pub streak: u32,
    pub crashes: Vec<u64>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub umask: u32,
    pub session_leader: bool,
    pub cwd: PathBuf,
    /// stdin, stdout, stderr: `None` is `/dev/null`.
    pub stdio: [Option<PathBuf>; 3],
    pub cgroup: Option<PathBuf>,
    pub argv: Vec<OsString>,
    pub env: Vec<OsString>,
    pub exe: PathBuf,
}

const KEYS: [&str; 25] = [
    "state",
    "next",
    "entry",
    "by",
    "dev",
    "ino",
    "last-pid",
    "last-exit",
    "since",
    "restarts",
    "streak",
    "crashes",
    "uid",
    "gid",
    "groups",
    "umask",
    "session",
    "cwd",
    "stdin",
    "stdout",
    "stderr",
    "cgroup",
    "argv",
    "env",
    "exe",
];

/// Most items of `argv` or `env`, and most supplementary groups (the
/// kernel's own limits are below: `ARG_MAX`, `NGROUPS_MAX`).
const MAX_ITEMS: usize = 1 << 17;

/// Appends the line of `w` to `text`.
pub(super) fn render(w: &Waiting, text: &mut String) {
    let (state, next) = match w.state {
        WaitingState::Backoff { next } => ("backoff", next.to_string()),
        WaitingState::Failed => ("failed", "-".to_owned()),
    };
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or("-".to_owned(), |p| escape(p.as_os_str().as_bytes()))
    };
    let some = |n: Option<u32>| n.map_or("-".to_owned(), |n| n.to_string());
    let _ = writeln!(
        text,
        "waiting state={state} next={next} entry={} by={} dev={}:{} ino={} last-pid={} \
         last-exit={} since={} restarts={} streak={} crashes={} uid={} gid={} groups={} \
         umask={} session={} cwd={} stdin={} stdout={} stderr={} cgroup={} argv={} env={} \
         exe={}",
        path(&w.entry),
        some(w.by),
        w.dev.0,
        w.dev.1,
        w.ino,
        w.last_pid,
        some(w.last_exit),
        w.since,
        w.restarts,
        w.streak,
        numbers(&w.crashes),
        w.uid,
        w.gid,
        numbers(&w.groups),
        w.umask,
        u8::from(w.session_leader),
        escape(w.cwd.as_os_str().as_bytes()),
        path(&w.stdio[0]),
        path(&w.stdio[1]),
        path(&w.stdio[2]),
        path(&w.cgroup),
        items(&w.argv),
        items(&w.env),
        escape(w.exe.as_os_str().as_bytes()),
    );
}

/// `-`, or the numbers joined by `,`.
fn numbers<T: ToString>(list: &[T]) -> String {
    if list.is_empty() {
        return "-".to_owned();
    }
    let list: Vec<String> = list.iter().map(T::to_string).collect();
    list.join(",")
}

/// `N:` and the items, escaped, joined by `,`.
fn items(list: &[OsString]) -> String {
    let escaped: Vec<String> = (list.iter())
        .map(|item| escape_as(item.as_bytes(), true))
        .collect();
    format!("{}:{}", list.len(), escaped.join(","))
}

/// Parses what follows `waiting ` on a line: exactly what [`render`] writes.
pub(super) fn parse(rest: &str) -> Result<Waiting, &'static str> {
    let mut values = [""; KEYS.len()];
    let mut tokens = rest.split(' ');
    for (key, value) in KEYS.iter().zip(values.iter_mut()) {
        let token = tokens.next().ok_or("a waiting instance lacks a field")?;
        *value = token
            .strip_prefix(key)
            .and_then(|t| t.strip_prefix('='))
            .ok_or("fields missing or out of order")?;
    }
    if tokens.next().is_some() {
        return Err("more fields than a waiting instance has");
    }
    let [state, next, entry, by, dev, ino, last_pid, last_exit, since, restarts, streak, crashes, uid, gid, groups, umask, session, cwd, stdin, stdout, stderr, cgroup, argv, env, exe] =
        values;
    let state = match (state, next) {
        ("backoff", next) => WaitingState::Backoff {
            next: number(next).ok_or("bad next")?,
        },
        ("failed", "-") => WaitingState::Failed,
        _ => return Err("state is not `backoff` with a time or `failed` with `-`"),
    };
    let (major, minor) = dev.split_once(':').ok_or("dev is not MAJOR:MINOR")?;
    let crashes = list_of(crashes, "crashes is not `-` or a list of numbers")?;
    if crashes.len() > MAX_CRASHES {
        return Err("more crash times than armourd keeps");
    }
    Ok(Waiting {
        state,
        entry: optional_path(entry, "entry is not `-` or an absolute path")?,
        by: optional(by, "by is not `-` or a uid")?,
        dev: (
            number(major).ok_or("bad dev")?,
            number(minor).ok_or("bad dev")?,
        ),
        ino: number(ino).ok_or("bad ino")?,
        last_pid: number(last_pid).ok_or("bad last-pid")?,
        last_exit: optional(last_exit, "last-exit is not `-` or a wait status")?,
        since: number(since).ok_or("bad since")?,
        restarts: number(restarts).ok_or("bad restarts")?,
        streak: number(streak).ok_or("bad streak")?,
        crashes,
        uid: number(uid).ok_or("bad uid")?,
        gid: number(gid).ok_or("bad gid")?,
        groups: list_of(groups, "groups is not `-` or a list of gids")?,
        umask: number(umask).filter(|&m| m <= 0o777).ok_or("bad umask")?,
        session_leader: match session {
            "0" => false,
            "1" => true,
            _ => return Err("session is not 0 or 1"),
        },
        cwd: absolute(cwd).ok_or("cwd is not an absolute path")?,
        stdio: [
            optional_path(stdin, "stdin is not `-` or an absolute path")?,
            optional_path(stdout, "stdout is not `-` or an absolute path")?,
            optional_path(stderr, "stderr is not `-` or an absolute path")?,
        ],
        cgroup: optional_path(cgroup, "cgroup is not `-` or an absolute path")?,
        argv: parse_items(argv).ok_or("argv is not `N:` and N escaped items")?,
        env: parse_items(env).ok_or("env is not `N:` and N escaped items")?,
        exe: absolute(exe).ok_or("exe is not an absolute path")?,
    })
}

fn optional<T: std::str::FromStr>(
    text: &str,
    what: &'static str,
) -> Result<Option<T>, &'static str> {
    match text {
        "-" => Ok(None),
        text => number(text).map(Some).ok_or(what),
    }
}

fn list_of<T: std::str::FromStr>(text: &str, what: &'static str) -> Result<Vec<T>, &'static str> {
    if text == "-" {
        return Ok(Vec::new());
    }
    let list = (text.split(',').map(number::<T>))
        .collect::<Option<Vec<_>>>()
        .ok_or(what)?;
    if list.len() > MAX_ITEMS {
        return Err(what);
    }
    Ok(list)
}

fn absolute(text: &str) -> Option<PathBuf> {
    let path = PathBuf::from(OsStr::from_bytes(&unescape(text)?));
    Path::is_absolute(&path).then_some(path)
}

fn optional_path(text: &str, what: &'static str) -> Result<Option<PathBuf>, &'static str> {
    match text {
        "-" => Ok(None),
        text => absolute(text).map(Some).ok_or(what),
    }
}

fn parse_items(text: &str) -> Option<Vec<OsString>> {
    let (count, rest) = text.split_once(':')?;
    let count: usize = number(count).filter(|&n| n <= MAX_ITEMS)?;
    if count == 0 {
        return rest.is_empty().then(Vec::new);
    }
    let list = (rest.split(','))
        .map(|item| unescape_as(item, true).map(OsString::from_vec))
        .collect::<Option<Vec<_>>>()?;
    (list.len() == count).then_some(list)
}
