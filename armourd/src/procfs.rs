//! Reading processes from `/proc`: the list of processes, their parent,
//! session and start time, their executable, and the launch context a
//! restart needs (SPEC §3, §5). Parsers are pure functions over the text of
//! a `/proc` file; thin wrappers do the I/O.
//!
//! File formats: <https://www.kernel.org/doc/html/latest/filesystems/proc.html>
//! and `man 5 proc_pid_stat`.

use std::{
    ffi::OsString,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use armourd_common::FileKey;

use crate::launch::{split_nul, LaunchSpec, StdioTarget};

mod ending;

#[cfg(any(test, fuzzing))]
pub use ending::parse_task_state;
pub use ending::{ending, live_threads, Ending};

/// Why something about a process could not be read.
#[derive(thiserror::Error, Debug)]
pub enum ProcfsError {
    /// The process ended (or is a zombie) while it was being read.
    #[error("process {pid} is gone")]
    Gone { pid: u32 },
    /// A file of `/proc/PID` could not be read.
    #[error("cannot read {what} of process {pid}")]
    Read {
        pid: u32,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// A file of `/proc/PID` did not have the expected format.
    #[error("unexpected format of {what} of process {pid}")]
    Parse { pid: u32, what: &'static str },
}

/// Maps an I/O error on `/proc/PID/…` to `Gone` when the process ended.
fn read_error(pid: u32, what: &'static str, source: io::Error) -> ProcfsError {
    match source.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH) => ProcfsError::Gone { pid },
        _ => ProcfsError::Read { pid, what, source },
    }
}

fn proc_path(pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

fn read_bytes(pid: u32, name: &'static str) -> Result<Vec<u8>, ProcfsError> {
    fs::read(proc_path(pid, name)).map_err(|e| read_error(pid, name, e))
}

fn read_text(pid: u32, name: &'static str) -> Result<String, ProcfsError> {
    fs::read_to_string(proc_path(pid, name)).map_err(|e| read_error(pid, name, e))
}

fn read_link(pid: u32, name: &'static str) -> Result<PathBuf, ProcfsError> {
    fs::read_link(proc_path(pid, name)).map_err(|e| read_error(pid, name, e))
}

/// The numeric entries of `/proc`: the ids of all thread groups (processes).
pub fn pids() -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        if let Some(pid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// The fields of `/proc/PID/stat` the daemon uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// Process group id.
    pub pgrp: u32,
    /// Session id.
    pub session: u32,
    /// Start time in clock ticks after boot (see [`clock_ticks_per_second`]).
    pub start_ticks: u64,
    /// It ended and waits to be reaped (state `Z` or `X`).
    pub zombie: bool,
}

/// The fields after `comm`, which ends at the LAST `)`: `comm` may contain
/// blanks and parentheses. The first field is the state.
fn stat_fields(text: &str) -> Option<Vec<&str>> {
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_ascii_whitespace().collect())
}

/// Parses the text of `/proc/PID/stat`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let fields = stat_fields(text)?;
    let field = |i: usize| fields.get(i)?.parse().ok();
    Some(Stat {
        ppid: field(1)?,
        pgrp: field(2)?,
        session: field(3)?,
        start_ticks: fields.get(19)?.parse().ok()?,
        zombie: matches!(fields.first().copied(), Some("Z" | "X")),
    })
}

/// The process's name (`comm`), readable also while it is a zombie.
pub fn comm(pid: u32) -> Result<Vec<u8>, ProcfsError> {
    let text = read_text(pid, "stat")?;
    let (_, rest) = text
        .split_once('(')
        .ok_or(ProcfsError::Parse { pid, what: "stat" })?;
    let (name, _) = rest
        .rsplit_once(')')
        .ok_or(ProcfsError::Parse { pid, what: "stat" })?;
    Ok(name.as_bytes().to_vec())
}

/// Reads `/proc/PID/stat`.
pub fn stat(pid: u32) -> Result<Stat, ProcfsError> {
    let text = read_text(pid, "stat")?;
    parse_stat(&text).ok_or(ProcfsError::Parse { pid, what: "stat" })
}

/// The unit of [`Stat::start_ticks`] (`sysconf(_SC_CLK_TCK)`, almost always 100).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// What the kernel appends to the link of a file that was deleted.
const DELETED: &[u8] = b" (deleted)";

/// The path of the executable (`/proc/PID/exe`), without the ` (deleted)`
/// the kernel appends when the file was replaced or removed: a restart
/// executes the file now at that path.
pub fn exe_path(pid: u32) -> Result<PathBuf, ProcfsError> {
    let link = read_link(pid, "exe")?;
    let bytes = link.as_os_str().as_bytes();
    Ok(match bytes.strip_suffix(DELETED) {
        Some(path) => PathBuf::from(std::ffi::OsStr::from_bytes(path)),
        None => link,
    })
}

/// The identity (inode and device) of the file the process executes, also
/// when that file was deleted since.
pub fn exe_key(pid: u32) -> Result<FileKey, ProcfsError> {
    let meta = cached_stat(&proc_path(pid, "exe")).map_err(|e| read_error(pid, "exe", e))?;
    Ok(FileKey::new(meta.ino, meta.dev_major, meta.dev_minor))
}

/// What [`cached_stat`] tells of a file.
#[derive(Clone, Copy, Debug)]
struct Meta {
    ino: u64,
    dev_major: u32,
    dev_minor: u32,
    mode: u32,
    nlink: u32,
    rdev_major: u32,
}

/// `stat` of `path` from what the kernel has cached (`AT_STATX_DONT_SYNC`),
/// without asking a network or FUSE file system's server: `/proc/PID/exe`
/// and `/proc/PID/fd/N` lead into whatever file system the process uses,
/// whose server may hang, and the event loop must never wait for it. The
/// magic links lead straight to the file, with no lookup on the way.
fn cached_stat(path: &Path) -> io::Result<Meta> {
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: statx writes into a local buffer of its own type; the path
    // outlives the call.
    let stx = unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let ret = libc::syscall(
            libc::SYS_statx,
            libc::AT_FDCWD as libc::c_long,
            path.as_ptr(),
            libc::AT_STATX_DONT_SYNC as libc::c_long,
            libc::STATX_BASIC_STATS as libc::c_long,
            &mut stx as *mut libc::statx,
        );
        if ret == -1 {
            return Err(io::Error::last_os_error());
        }
        stx
    };
    Ok(Meta {
        ino: stx.stx_ino,
        dev_major: stx.stx_dev_major,
        dev_minor: stx.stx_dev_minor,
        mode: u32::from(stx.stx_mode),
        nlink: stx.stx_nlink,
        rdev_major: stx.stx_rdev_major,
    })
}

/// Fails with `Gone` when the process has ended or begun to: it is why a
/// NUL-separated area (cmdline, environ) read empty, its memory being gone
/// (or going while it was read). A process in the middle of an exec reads
/// empty too, until the new program's areas are laid out.
fn check_alive(pid: u32) -> Result<(), ProcfsError> {
    match ending(pid, None) {
        Ending::Running => Ok(()),
        Ending::Exiting | Ending::Ended(_) | Ending::Gone => Err(ProcfsError::Gone { pid }),
    }
}

/// Reads a NUL-separated area; read empty or cut short because the process
/// ended is `Gone`.
fn nul_area(pid: u32, name: &'static str) -> Result<Vec<OsString>, ProcfsError> {
    let area = read_bytes(pid, name)?;
    // Checked after the read: an area cut short by the end is not taken.
    check_alive(pid)?;
    Ok(split_nul(&area))
}

/// How long a scan waits, in all, for processes caught in the middle of
/// an exec to lay out their new command lines.
pub const EXEC_LAYOUT: Duration = Duration::from_millis(20);

/// The command line (`/proc/PID/cmdline`). A program may have rewritten it
/// (process title); the exec record has the original. Empty for a process
/// in the middle of an exec (its new executable is in place, not yet its
/// argv and environment) and, before Linux 5.18, for one executed with no
/// argv at all.
pub fn cmdline(pid: u32) -> Result<Vec<OsString>, ProcfsError> {
    nul_area(pid, "cmdline")
}

/// [`cmdline`], waiting until `deadline` while it reads empty: for scans
/// that may catch a process in the middle of an exec. The caller bounds
/// the wait for all the processes it reads (one deadline per scan), so
/// that processes executed with no argv cannot make it wait long.
pub fn cmdline_by(pid: u32, deadline: Instant) -> Result<Vec<OsString>, ProcfsError> {
    loop {
        let argv = cmdline(pid)?;
        if !argv.is_empty() || Instant::now() >= deadline {
            return Ok(argv);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The environment (`/proc/PID/environ`) as the process got it at exec.
pub fn environ(pid: u32) -> Result<Vec<OsString>, ProcfsError> {
    nul_area(pid, "environ")
}

/// The fields of `/proc/PID/status` a restart needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Real user id (first field of `Uid:`).
    pub uid: u32,
    /// Real group id (first field of `Gid:`).
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub umask: u32,
    /// The thread group (`Tgid:`): the pid of the process a thread id
    /// belongs to, the pid itself for a whole process.
    pub tgid: Option<u32>,
}

/// Parses the text of `/proc/PID/status`. Kernels before 4.7 have no
/// `Umask:` line; then the usual 022 is assumed.
pub fn parse_status(text: &str) -> Option<Status> {
    let (mut uid, mut gid, mut groups, mut umask, mut tgid) = (None, None, None, 0o022, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let first = || value.split_ascii_whitespace().next()?.parse().ok();
        match key {
            "Uid" => uid = Some(first()?),
            "Gid" => gid = Some(first()?),
            "Groups" => {
                let list: Result<Vec<u32>, _> =
                    value.split_ascii_whitespace().map(str::parse).collect();
                groups = Some(list.ok()?);
            }
            "Umask" => umask = u32::from_str_radix(value.trim(), 8).ok()?,
            "Tgid" => tgid = Some(first()?),
            _ => {}
        }
    }
    Some(Status {
        uid: uid?,
        gid: gid?,
        groups: groups.unwrap_or_default(),
        umask,
        tgid,
    })
}

/// Reads `/proc/PID/status`.
pub fn status(pid: u32) -> Result<Status, ProcfsError> {
    let text = read_text(pid, "status")?;
    parse_status(&text).ok_or(ProcfsError::Parse {
        pid,
        what: "status",
    })
}

/// What the caller already knows from the kernel's exec record; `None`
/// fields are read from `/proc`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    pub argv: Option<Vec<OsString>>,
    pub env: Option<Vec<OsString>>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Captures how process `pid`, executing `exe`, was started (SPEC §5).
pub fn capture(pid: u32, exe: PathBuf, known: Known) -> Result<LaunchSpec, ProcfsError> {
    let argv = match known.argv {
        Some(argv) => argv,
        None => cmdline(pid)?,
    };
    let env = match known.env {
        Some(env) => env,
        None => environ(pid)?,
    };
    let cwd = read_link(pid, "cwd")?;
    let status = status(pid)?;
    let stat = stat(pid)?;
    let stdio = [stdio_of(pid, 0)?, stdio_of(pid, 1)?, stdio_of(pid, 2)?];
    Ok(LaunchSpec {
        exe,
        argv,
        env,
        cwd,
        uid: known.uid.unwrap_or(status.uid),
        gid: known.gid.unwrap_or(status.gid),
        groups: status.groups,
        umask: status.umask,
        stdio,
        session_leader: stat.session == pid,
        place: crate::place::Place::default(),
    })
}

/// What an open descriptor refers to, as far as reopening it by path goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// A regular file that still has a name.
    Regular,
    /// A character device with this major number.
    CharDevice { major: u32 },
    /// Anything else: FIFO, socket, directory, block device, deleted file.
    Other,
}

/// Majors of terminals (Documentation/admin-guide/devices.txt): BSD ptys
/// (2, 3), virtual consoles and serial ports (4), `/dev/tty`, `/dev/console`,
/// `/dev/ptmx` (5), Unix98 pty slaves (136–143), and common serial drivers.
fn is_tty_major(major: u32) -> bool {
    matches!(major, 2..=5 | 136..=143 | 166 | 188 | 204)
}

fn is_tty_path(path: &[u8]) -> bool {
    path.starts_with(b"/dev/tty")
        || path.starts_with(b"/dev/pts/")
        || path == b"/dev/console"
        || path == b"/dev/ptmx"
}

/// Decides where a restarted process's standard descriptor comes from, given
/// the link text of `/proc/PID/fd/N` and what it refers to: files and
/// non-terminal character devices (`/dev/null`) are reopened by path;
/// pipes, sockets, anonymous inodes, terminals and deleted files become
/// `/dev/null`.
pub fn stdio_target(link: &Path, kind: FdKind) -> StdioTarget {
    let bytes = link.as_os_str().as_bytes();
    let reopenable = match kind {
        FdKind::Regular => true,
        FdKind::CharDevice { major } => !is_tty_major(major) && !is_tty_path(bytes),
        FdKind::Other => false,
    };
    if reopenable && link.is_absolute() && !bytes.ends_with(DELETED) {
        StdioTarget::File(link.to_path_buf())
    } else {
        StdioTarget::Null
    }
}

/// The stdio target of descriptor `fd` of process `pid`; a closed one is `Null`.
fn stdio_of(pid: u32, fd: u32) -> Result<StdioTarget, ProcfsError> {
    let path = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
    let link = match fs::read_link(&path) {
        Ok(link) => link,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(StdioTarget::Null),
        Err(e) => return Err(read_error(pid, "fd", e)),
    };
    let kind = match cached_stat(&path) {
        Ok(meta) => {
            let file_type = meta.mode & libc::S_IFMT;
            if file_type == libc::S_IFREG && meta.nlink > 0 {
                FdKind::Regular
            } else if file_type == libc::S_IFCHR {
                FdKind::CharDevice {
                    major: meta.rdev_major,
                }
            } else {
                FdKind::Other
            }
        }
        // Closed in between, or not reachable (another mount namespace).
        Err(_) => FdKind::Other,
    };
    Ok(stdio_target(&link, kind))
}

#[cfg(test)]
mod tests {
    use std::{
        fs::File,
        os::unix::{ffi::OsStringExt, process::CommandExt},
        process::{Command, Stdio},
        time::{Duration, Instant},
    };

    use super::*;

    const STAT: &str = "4242 (a) b (c) S 1 4240 4239 0 -1 4194560 1 2 3 4 5 6 7 8 \
                        20 0 1 0 987654 1000 200 18446744073709551615";

    #[test]
    fn parse_stat_splits_at_the_last_parenthesis() {
        let stat = parse_stat(STAT).unwrap();
        assert_eq!(
            stat,
            Stat {
                ppid: 1,
                pgrp: 4240,
                session: 4239,
                start_ticks: 987654,
                zombie: false
            }
        );
    }

    #[test]
    fn parse_stat_rejects_truncated_text() {
        assert_eq!(parse_stat("12 (x) S 1 2 3"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn zombie_state_is_recognised_after_a_tricky_comm() {
        let stat = |state| format!("7 (x) Z) {state} 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55");
        assert!(parse_stat(&stat("Z")).unwrap().zombie);
        assert!(!parse_stat(&stat("S")).unwrap().zombie);
    }

    #[test]
    fn stat_of_self_has_our_parent() {
        let stat = stat(std::process::id()).unwrap();
        assert_eq!(stat.ppid, std::os::unix::process::parent_id());
        assert!(stat.start_ticks > 0);
    }

    #[test]
    fn parse_status_takes_real_ids_groups_and_octal_umask() {
        let text =
            "Name:\tfoo\nUmask:\t0027\nState:\tS (sleeping)\nTgid:\t41\nUid:\t1000\t0\t0\t0\n\
                    Gid:\t100\t5\t5\t5\nFDSize:\t64\nGroups:\t4 24 27 \n";
        let status = parse_status(text).unwrap();
        assert_eq!(
            status,
            Status {
                uid: 1000,
                gid: 100,
                groups: vec![4, 24, 27],
                umask: 0o027,
                tgid: Some(41),
            }
        );
    }

    #[test]
    fn status_of_a_thread_names_its_process() {
        let pid = std::process::id();
        assert_eq!(status(pid).unwrap().tgid, Some(pid));
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let thread = std::thread::spawn(move || {
            // SAFETY: as above.
            let own = unsafe { libc::gettid() } as u32;
            (own, status(own).map(|s| s.tgid))
        });
        let (own, tgid) = thread.join().unwrap();
        assert_ne!(own, pid, "a thread has an id of its own");
        assert_eq!(tgid.unwrap(), Some(pid));
        assert_eq!(status(tid).unwrap().tgid, Some(pid));
    }

    #[test]
    fn parse_status_without_umask_assumes_022_and_empty_groups() {
        let status = parse_status("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n").unwrap();
        assert_eq!(status.umask, 0o022);
        assert!(status.groups.is_empty());
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn files_and_dev_null_are_reopened_by_path() {
        let file = stdio_target(Path::new("/var/log/app.log"), FdKind::Regular);
        assert_eq!(file, StdioTarget::File("/var/log/app.log".into()));
        let null = stdio_target(Path::new("/dev/null"), FdKind::CharDevice { major: 1 });
        assert_eq!(null, StdioTarget::File("/dev/null".into()));
    }

    #[test]
    fn pipes_sockets_ttys_and_deleted_files_become_null() {
        let cases = [
            ("pipe:[1234]", FdKind::Other),
            ("socket:[99]", FdKind::Other),
            ("anon_inode:[eventfd]", FdKind::Other),
            ("/dev/pts/3", FdKind::CharDevice { major: 136 }),
            ("/dev/tty1", FdKind::CharDevice { major: 4 }),
            ("/dev/console", FdKind::CharDevice { major: 5 }),
            ("/dev/ttyX0", FdKind::CharDevice { major: 250 }),
            ("/var/log/old.log (deleted)", FdKind::Regular),
            ("/run/app.fifo", FdKind::Other),
        ];
        for (link, kind) in cases {
            assert_eq!(
                stdio_target(Path::new(link), kind),
                StdioTarget::Null,
                "{link}"
            );
        }
    }

    #[test]
    fn pids_lists_this_process() {
        assert!(pids().unwrap().contains(&std::process::id()));
    }

    #[test]
    fn a_process_that_does_not_exist_is_gone() {
        // Above the kernel's pid limit (PID_MAX_LIMIT is 2^22).
        let pid = 1 << 23;
        assert!(matches!(stat(pid), Err(ProcfsError::Gone { .. })));
        assert!(matches!(cmdline(pid), Err(ProcfsError::Gone { .. })));
    }

    /// A child is visible in /proc with its argv only once exec has set it up.
    fn wait_for_cmdline(pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read(proc_path(pid, "cmdline")).unwrap().is_empty() {
            assert!(Instant::now() < deadline, "no cmdline for {pid}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn capture_reads_argv_env_cwd_ids_and_stdio_of_a_real_process() {
        let dir = std::env::temp_dir().join(format!("armourd-procfs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let log = dir.join("out.log");
        let mut child = Command::new("/bin/sleep")
            .arg0(OsString::from_vec(b"sl\xffeep".to_vec()))
            .arg("30")
            .env_clear()
            .env("A", "1")
            .env("EMPTY", "")
            .current_dir(&dir)
            .uid(65534)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        wait_for_cmdline(pid);
        let exe = exe_path(pid).unwrap();
        let spec = capture(pid, exe.clone(), Known::default());
        child.kill().unwrap();
        child.wait().unwrap();
        fs::remove_dir_all(&dir).unwrap();

        let spec = spec.unwrap();
        assert_eq!(exe, Path::new("/bin/sleep").canonicalize().unwrap());
        assert_eq!(
            spec.argv,
            [OsString::from_vec(b"sl\xffeep".to_vec()), "30".into()]
        );
        let mut env = spec.env.clone();
        env.sort();
        assert_eq!(env, ["A=1", "EMPTY="]);
        assert_eq!(spec.cwd, dir);
        assert_eq!(spec.uid, 65534);
        assert_eq!(spec.gid, status(std::process::id()).unwrap().gid);
        assert_eq!(spec.umask, status(std::process::id()).unwrap().umask);
        assert!(!spec.session_leader);
        assert_eq!(
            spec.stdio,
            [
                StdioTarget::Null,
                StdioTarget::File(log),
                StdioTarget::File("/dev/null".into())
            ]
        );
    }

    #[test]
    fn capture_prefers_what_is_known_from_exec() {
        let pid = std::process::id();
        let known = Known {
            argv: Some(vec!["orig".into()]),
            env: Some(vec![]),
            uid: Some(7),
            gid: Some(8),
        };
        let spec = capture(pid, "/x".into(), known).unwrap();
        assert_eq!(spec.argv, ["orig"]);
        assert!(spec.env.is_empty());
        assert_eq!((spec.uid, spec.gid), (7, 8));
        assert_eq!(spec.cwd, std::env::current_dir().unwrap());
    }
}
