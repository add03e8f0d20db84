//! What a process was started with, captured when its watch begins, so that
//! a restart starts it again the same way (SPEC §5).

use std::{ffi::OsString, os::unix::ffi::OsStringExt, path::PathBuf};

use crate::place::Place;

/// Where one of the standard descriptors of a restarted process comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StdioTarget {
    /// `/dev/null` (also for pipes, sockets, ttys and deleted files).
    Null,
    /// A file reopened by path: stdin for reading, stdout/stderr for appending.
    File(PathBuf),
}

/// Everything a restart needs to start a process again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The canonical path executed; the restart executes the file now at this path.
    pub exe: PathBuf,
    /// argv exactly, argv[0] included.
    pub argv: Vec<OsString>,
    /// `KEY=VALUE` entries exactly as the process got them.
    pub env: Vec<OsString>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Real user and group ids, and the supplementary groups.
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub umask: u32,
    /// stdin, stdout, stderr.
    pub stdio: [StdioTarget; 3],
    /// It led its own session: the restart calls `setsid`, else `setpgid(0, 0)`.
    pub session_leader: bool,
    /// Its namespaces and cgroup, where they are not armourd's. Paths
    /// above (`exe`, `cwd`, stdio) are the process's own when it had
    /// another mount namespace.
    pub place: Place,
}

impl LaunchSpec {
    /// A spec with nothing but the executable and argv known: root-free
    /// defaults (`nobody`), `/` as cwd, umask 022, stdio on `/dev/null`.
    pub fn minimal(exe: PathBuf, argv: Vec<OsString>) -> Self {
        Self {
            exe,
            argv,
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            uid: 65534,
            gid: 65534,
            groups: Vec::new(),
            umask: 0o022,
            stdio: [StdioTarget::Null, StdioTarget::Null, StdioTarget::Null],
            session_leader: false,
            place: Place::default(),
        }
    }
}

/// Splits a NUL-separated area (`/proc/PID/cmdline`, `environ`, or the
/// copy taken at exec) into its strings. A trailing NUL ends the last one;
/// empty strings in between are kept, so `a\0\0b\0` is `["a", "", "b"]`.
pub fn split_nul(area: &[u8]) -> Vec<OsString> {
    if area.is_empty() {
        return Vec::new();
    }
    let area = area.strip_suffix(&[0]).unwrap_or(area);
    area.split(|b| *b == 0)
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_nul_keeps_empty_arguments() {
        assert_eq!(split_nul(b"a\0\0b c\0"), ["a", "", "b c"]);
        assert_eq!(split_nul(b"\0"), [""]);
        assert!(split_nul(b"").is_empty());
    }

    #[test]
    fn split_nul_keeps_non_utf8_bytes() {
        let args = split_nul(b"x\0\xff\xfe\0");
        assert_eq!(args[1].as_encoded_bytes(), b"\xff\xfe");
    }
}
