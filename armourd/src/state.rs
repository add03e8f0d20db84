//! What armourd keeps across its own restarts (a crash, SIGKILL, an
//! upgrade): the processes it watches with their restart counters and
//! crash history, and which of them were watched on request over D-Bus
//! (and by whom). The format is a small line format, parsed strictly:
//!
//! ```text
//! armourd-state 1
//! boot 6c1f2a0e-8d7b-4c55-9a51-0f1d6f7c3b2a
//! instance pid=812 start=1934 dev=8:1 ino=393231 by=- restarts=2 streak=1 crashes=51873000000 exe=/usr/sbin/food
//! ```
//!
//! `by` is the uid that asked for the watch over D-Bus (`-`: a configured
//! entry's process); `crashes` the times of the crashes the give-up window
//! still counts, in ns of `CLOCK_MONOTONIC` (`-`: none), which is why the
//! boot id is there: those times, and the pids, mean nothing after a
//! reboot. The executable is its device (`major:minor`), inode and path,
//! the path with `%XX` for bytes outside printable ASCII and for `%`, `=`
//! and blanks. Nothing in it is trusted beyond what armourd can check
//! again: a record is used only for a process that runs now with that pid,
//! start time and executable (see `daemon`). This module only reads and
//! writes the text; the file's own checks and I/O are in [`file`].

use std::{
    ffi::OsStr,
    fmt::Write as _,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

pub mod file;

/// The format this armourd writes and reads.
pub const VERSION: u32 = 1;
/// The first word of the file.
const MAGIC: &str = "armourd-state";

/// The state armourd keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// `/proc/sys/kernel/random/boot_id` when it was written.
    pub boot: String,
    pub instances: Vec<Record>,
}

/// One watched instance, named by its running process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/PID/stat`).
    pub start: u64,
    /// The executable's device (major, minor) and inode.
    pub dev: (u32, u32),
    pub ino: u64,
    pub exe: PathBuf,
    /// The uid that asked for the watch over D-Bus; `None`: a configured entry's.
    pub by: Option<u32>,
    pub restarts: u32,
    /// Crashes in a row (see the restart policy).
    pub streak: u32,
    /// `CLOCK_MONOTONIC` ns of the crashes the give-up window counts.
    pub crashes: Vec<u64>,
}

/// What is wrong with a state file's text.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum StateError {
    #[error("it does not start with `{MAGIC} N`: not armourd's state file")]
    NotState,
    #[error("it is format {found}, written by a newer armourd (this one reads {VERSION})")]
    Newer { found: u32 },
    #[error("line {line}: {what}")]
    Damaged { line: usize, what: &'static str },
}

/// The text of `state`.
pub fn render(state: &State) -> String {
    let mut text = format!("{MAGIC} {VERSION}\nboot {}\n", state.boot);
    for r in &state.instances {
        let by = r.by.map_or("-".to_owned(), |uid| uid.to_string());
        let crashes = if r.crashes.is_empty() {
            "-".to_owned()
        } else {
            let times: Vec<String> = r.crashes.iter().map(u64::to_string).collect();
            times.join(",")
        };
        let _ = writeln!(
            text,
            "instance pid={} start={} dev={}:{} ino={} by={by} restarts={} streak={} crashes={crashes} exe={}",
            r.pid,
            r.start,
            r.dev.0,
            r.dev.1,
            r.ino,
            r.restarts,
            r.streak,
            escape(r.exe.as_os_str().as_bytes()),
        );
    }
    text
}

/// The keys of an `instance` line, in the order they are written.
const KEYS: [&str; 9] = [
    "pid", "start", "dev", "ino", "by", "restarts", "streak", "crashes", "exe",
];

/// Most crash times one record holds (a give-up count beyond it is no
/// window anyone configures).
const MAX_CRASHES: usize = 1024;

/// Parses a state file's text: exactly what [`render`] writes.
pub fn parse(text: &str) -> Result<State, StateError> {
    let mut lines = text.split_terminator('\n').enumerate();
    let version = lines
        .next()
        .and_then(|(_, first)| first.strip_prefix(MAGIC)?.strip_prefix(' '))
        .and_then(number::<u32>)
        .ok_or(StateError::NotState)?;
    if version > VERSION {
        return Err(StateError::Newer { found: version });
    }
    if version != VERSION {
        return Err(StateError::NotState);
    }
    let damaged = |line: usize, what| StateError::Damaged {
        line: line + 1,
        what,
    };
    let boot = match lines.next() {
        Some((_, line)) => line
            .strip_prefix("boot ")
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
            .ok_or(damaged(1, "expected `boot ID`"))?,
        None => return Err(damaged(1, "expected `boot ID`")),
    };
    let mut instances = Vec::new();
    for (index, line) in lines {
        let record = parse_instance(line).map_err(|what| damaged(index, what))?;
        instances.push(record);
    }
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(StateError::Damaged {
            line: text.lines().count(),
            what: "the last line is cut short",
        });
    }
    Ok(State {
        boot: boot.to_owned(),
        instances,
    })
}

fn parse_instance(line: &str) -> Result<Record, &'static str> {
    let rest = line
        .strip_prefix("instance ")
        .ok_or("expected `instance …`")?;
    let mut values = [""; KEYS.len()];
    let mut tokens = rest.split(' ');
    for (key, value) in KEYS.iter().zip(values.iter_mut()) {
        let token = tokens.next().ok_or("an instance lacks a field")?;
        *value = token
            .strip_prefix(key)
            .and_then(|t| t.strip_prefix('='))
            .ok_or("fields missing or out of order")?;
    }
    if tokens.next().is_some() {
        return Err("more fields than an instance has");
    }
    let [pid, start, dev, ino, by, restarts, streak, crashes, exe] = values;
    let bad = |what| move || what;
    let (major, minor) = dev.split_once(':').ok_or("dev is not MAJOR:MINOR")?;
    let crashes = match crashes {
        "-" => Vec::new(),
        list => list
            .split(',')
            .map(number::<u64>)
            .collect::<Option<Vec<_>>>()
            .ok_or("crashes is not `-` or a list of numbers")?,
    };
    if crashes.len() > MAX_CRASHES {
        return Err("more crash times than armourd keeps");
    }
    let exe = unescape(exe).ok_or("exe is not an escaped path")?;
    let exe = PathBuf::from(OsStr::from_bytes(&exe));
    if !exe.is_absolute() {
        return Err("exe is not an absolute path");
    }
    Ok(Record {
        pid: number(pid).filter(|&p| p > 0).ok_or_else(bad("bad pid"))?,
        start: number(start).ok_or_else(bad("bad start"))?,
        dev: (
            number(major).ok_or_else(bad("bad dev"))?,
            number(minor).ok_or_else(bad("bad dev"))?,
        ),
        ino: number(ino).ok_or_else(bad("bad ino"))?,
        by: match by {
            "-" => None,
            uid => Some(number(uid).ok_or_else(bad("by is not `-` or a uid"))?),
        },
        restarts: number(restarts).ok_or_else(bad("bad restarts"))?,
        streak: number(streak).ok_or_else(bad("bad streak"))?,
        crashes,
        exe,
    })
}

/// A decimal number exactly as written: digits only, no sign, no blanks,
/// no leading zero (so that each value has one spelling).
fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// Whether `byte` is written as itself.
fn plain(byte: u8) -> bool {
    byte.is_ascii_graphic() && !matches!(byte, b'%' | b'=')
}

fn escape(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for &byte in bytes {
        if plain(byte) {
            text.push(byte as char);
        } else {
            let _ = write!(text, "%{byte:02X}");
        }
    }
    text
}

/// The bytes [`escape`] wrote; `None` for anything it would not write.
fn unescape(text: &str) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = tail.get(..2)?;
            // Two upper-case hex digits, as `escape` writes them (a sign,
            // which `from_str_radix` would take, is not one).
            if !hex
                .iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
            {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            let value = u8::from_str_radix(hex, 16).ok()?;
            if plain(value) {
                return None;
            }
            bytes.push(value);
            rest = &tail[2..];
        } else if plain(byte) {
            bytes.push(byte);
            rest = tail;
        } else {
            return None;
        }
    }
    (!bytes.is_empty()).then_some(bytes)
}

/// The path of the state file in `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join("state")
}

#[cfg(test)]
mod tests;
