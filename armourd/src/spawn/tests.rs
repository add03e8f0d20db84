use std::{
    ffi::OsString,
    fs,
    os::unix::{ffi::OsStringExt, fs::PermissionsExt},
    path::Path,
    time::{Duration, Instant},
};

use super::*;
use crate::procfs;

/// A fresh directory writable by everyone (children run as nobody).
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("armourd-spawn-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    dir.canonicalize().unwrap()
}

fn wait(pid: u32) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child; `status` outlives the call.
    let waited = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    assert_eq!(waited, pid as i32);
    status
}

/// Runs `spec` with stdout and stderr appended to `dir/out`, waits for
/// it and returns what it wrote.
fn run(dir: &Path, mut spec: LaunchSpec) -> Vec<u8> {
    let out = dir.join("out");
    spec.stdio[1] = StdioTarget::File(out.clone());
    spec.stdio[2] = StdioTarget::File(out.clone());
    let pid = spawn(&spec, &ChildSlot::default()).unwrap();
    assert_eq!(wait(pid), 0, "{:?} failed", spec.argv);
    fs::read(out).unwrap()
}

/// `exe` run as root with `argv`.
fn as_root(exe: &str, argv: &[&str]) -> LaunchSpec {
    let argv = argv.iter().map(OsString::from).collect();
    LaunchSpec {
        uid: 0,
        gid: 0,
        ..LaunchSpec::minimal(exe.into(), argv)
    }
}

fn sh(script: &str) -> LaunchSpec {
    as_root("/bin/sh", &["sh", "-c", script])
}

#[test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root: the child takes root's ids and groups (run as root, or `cargo xtask test`)"
)]
fn argv_and_env_are_passed_exactly() {
    let dir = temp_dir("argv");
    let mut spec = sh("cat /proc/$$/cmdline; printf '|'; cat /proc/$$/environ");
    spec.argv[0] = OsString::from_vec(b"my\xffsh".to_vec());
    spec.argv
        .extend(["", "\u{e9}", "", "last arg"].map(OsString::from));
    spec.argv.push(OsString::from_vec(b"\xfe\xfd".to_vec()));
    spec.env = ["B=2", "A=1", "EMPTY=", "X=y=z", "NO_EQUALS_SIGN", "A=again"]
        .map(OsString::from)
        .to_vec();
    spec.env.push(OsString::from_vec(b"BYTES=\xff".to_vec()));
    spec.cwd = dir.clone();
    let out = run(&dir, spec.clone());
    let mut expected = Vec::new();
    for arg in &spec.argv {
        expected.extend(arg.as_encoded_bytes());
        expected.push(0);
    }
    expected.push(b'|');
    for entry in &spec.env {
        expected.extend(entry.as_encoded_bytes());
        expected.push(0);
    }
    assert_eq!(out, expected);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root: the child takes root's ids and groups (run as root, or `cargo xtask test`)"
)]
fn ids_groups_umask_cwd_and_process_group_are_set() {
    let dir = temp_dir("ids");
    let mut spec = sh("id -u; id -g; id -ru; id -rg; id -G; umask; pwd; \
                       read -r line < /proc/$$/stat; set -- $line; echo $1 $5 $6");
    (spec.uid, spec.gid, spec.groups) = (65534, 65534, vec![4242, 4343]);
    spec.umask = 0o027;
    spec.cwd = dir.clone();
    let out = String::from_utf8(run(&dir, spec)).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..7],
        [
            "65534",
            "65534",
            "65534",
            "65534",
            "65534 4242 4343",
            "0027",
            dir.to_str().unwrap()
        ]
    );
    let ids: Vec<u32> = lines[7].split(' ').map(|s| s.parse().unwrap()).collect();
    let (pid, pgrp, session) = (ids[0], ids[1], ids[2]);
    assert_eq!(pgrp, pid, "own process group");
    assert_ne!(session, pid, "not a session leader");
    let mode = fs::metadata(dir.join("out")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640, "created as 0644 minus umask");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root: the child takes root's ids and groups (run as root, or `cargo xtask test`)"
)]
fn stdout_and_stderr_are_appended_and_stdin_is_reopened() {
    let dir = temp_dir("append");
    fs::write(dir.join("out"), "old\n").unwrap();
    fs::write(dir.join("in"), "from stdin\n").unwrap();
    let mut spec = sh("cat; echo out; echo err >&2");
    spec.stdio[0] = StdioTarget::File(dir.join("in"));
    assert_eq!(run(&dir, spec), b"old\nfrom stdin\nout\nerr\n");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root: the child takes root's ids and groups (run as root, or `cargo xtask test`)"
)]
fn a_stdio_file_that_cannot_be_opened_becomes_dev_null() {
    let dir = temp_dir("gone-log");
    let mut spec = sh("fd=$(readlink /proc/$$/fd/1); echo \"$fd\" > \"$0\"");
    spec.argv.push(dir.join("fd1").into());
    spec.stdio[1] = StdioTarget::File(dir.join("removed-folder/log"));
    let pid = spawn(&spec, &ChildSlot::default()).expect("the service still starts");
    assert_eq!(wait(pid), 0);
    assert_eq!(fs::read_to_string(dir.join("fd1")).unwrap(), "/dev/null\n");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root: the child takes root's ids and groups (run as root, or `cargo xtask test`)"
)]
fn signal_mask_and_ignored_signals_are_reset() {
    let dir = temp_dir("signals");
    // SAFETY: blocks SIGUSR2 in this test's thread only. The test
    // harness (like the daemon) ignores SIGPIPE.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, ptr::null_mut());
    }
    let argv = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"];
    let out = run(&dir, as_root("/bin/grep", &argv));
    assert_eq!(
        out,
        b"SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root: the child takes root's ids and groups (run as root, or `cargo xtask test`)"
)]
fn no_descriptor_of_the_parent_leaks() {
    let dir = temp_dir("fds");
    // SAFETY: plain descriptor calls; std opens everything close-on-exec,
    // so these two are opened without O_CLOEXEC on purpose.
    let leaky = unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        let high = libc::fcntl(fd, libc::F_DUPFD, 300);
        libc::close(fd);
        high
    };
    assert!(leaky >= 300);
    let spec = as_root("/bin/ls", &["ls", "/proc/self/fd"]);
    let out = String::from_utf8(run(&dir, spec)).unwrap();
    // SAFETY: our own descriptor.
    unsafe { libc::close(leaky) };
    // 3 is the directory ls reads.
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_executable_is_an_execve_error() {
    let spec = LaunchSpec::minimal("/nonexistent/armourd-test".into(), vec!["x".into()]);
    match spawn(&spec, &ChildSlot::default()) {
        Err(SpawnError::Exec { step, source, .. }) => {
            assert_eq!(step, "execve");
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root: the child takes root's ids and groups (run as root, or `cargo xtask test`)"
)]
fn a_missing_working_directory_is_a_chdir_error() {
    let spec = LaunchSpec {
        cwd: "/nonexistent/armourd-test".into(),
        ..sh("true")
    };
    let err = spawn(&spec, &ChildSlot::default()).unwrap_err();
    assert!(
        matches!(err, SpawnError::Exec { step: "chdir", .. }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "cannot start /bin/sh: chdir failed");
}

#[test]
fn a_nul_byte_in_argv_is_refused_before_forking() {
    let spec = LaunchSpec::minimal("/bin/true".into(), vec!["a\0b".into()]);
    let err = spawn(&spec, &ChildSlot::default()).unwrap_err();
    assert!(matches!(
        err,
        SpawnError::Prepare {
            what: "argv contains a NUL byte"
        }
    ));
}

#[test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root: the child takes root's ids and groups (run as root, or `cargo xtask test`)"
)]
fn spawns_from_many_threads_at_once_all_succeed() {
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..25 {
                    let spec = as_root("/bin/true", &["true"]);
                    assert_eq!(wait(spawn(&spec, &ChildSlot::default()).unwrap()), 0);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// A child is visible in /proc with its argv only once exec has set it up.
fn wait_for_cmdline(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::read(format!("/proc/{pid}/cmdline")).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no cmdline for {pid}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root: the child takes root's ids and groups (run as root, or `cargo xtask test`)"
)]
fn a_captured_spec_is_reproduced_by_spawn() {
    let dir = temp_dir("roundtrip");
    let exe = Path::new("/bin/sleep").canonicalize().unwrap();
    let spec = LaunchSpec {
        exe: exe.clone(),
        argv: vec![OsString::from_vec(b"sl\xffeep".to_vec()), "30".into()],
        env: vec!["Z=1".into(), "A=".into()],
        cwd: dir.clone(),
        uid: 65534,
        gid: 65534,
        groups: vec![4242],
        umask: 0o077,
        stdio: [
            StdioTarget::Null,
            StdioTarget::File(dir.join("log")),
            StdioTarget::Null,
        ],
        session_leader: true,
        place: Default::default(),
    };
    let pid = spawn(&spec, &ChildSlot::default()).unwrap();
    wait_for_cmdline(pid);
    let captured = procfs::capture(
        pid,
        procfs::exe_path(pid).unwrap(),
        procfs::Known::default(),
    );
    // SAFETY: our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait(pid);
    fs::remove_dir_all(&dir).unwrap();
    let null = StdioTarget::File("/dev/null".into());
    let expected = LaunchSpec {
        stdio: [null.clone(), spec.stdio[1].clone(), null],
        ..spec
    };
    assert_eq!(captured.unwrap(), expected);
}

/// `Cpus_allowed_list` of a `/proc/.../status` text.
fn cpus_allowed(status: &str) -> String {
    let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:"));
    line.expect("Cpus_allowed_list")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

#[test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root: the child takes root's ids and groups (run as root, or `cargo xtask test`)"
)]
fn the_program_and_the_caller_keep_the_callers_cpus() {
    let dir = temp_dir("cpus");
    let own = || cpus_allowed(&fs::read_to_string("/proc/thread-self/status").unwrap());
    let before = own();
    let out = run(
        &dir,
        as_root(
            "/bin/grep",
            &["grep", "Cpus_allowed_list", "/proc/self/status"],
        ),
    );
    assert_eq!(cpus_allowed(&String::from_utf8(out).unwrap()), before);
    assert_eq!(own(), before);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root: the child takes root's ids and groups (run as root, or `cargo xtask test`)"
)]
fn once_spawned_the_child_is_no_killers_to_take() {
    let slot = ChildSlot::default();
    let pid = spawn(&as_root("/bin/true", &["true"]), &slot).unwrap();
    assert_eq!(slot.pid(), Some(pid), "the pid stays visible");
    assert_eq!(slot.take(), None, "too late to kill it as hung");
    assert_eq!(wait(pid), 0);
}

#[test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root: the child takes root's ids and groups (run as root, or `cargo xtask test`)"
)]
fn a_fifo_in_place_of_a_log_file_becomes_dev_null() {
    let dir = temp_dir("fifo");
    let fifo = dir.join("out.log");
    let path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o666) }, 0);
    let mut spec = sh("x=$(readlink /proc/$$/fd/1); echo \"$x\" > \"$0\"");
    let result = dir.join("result");
    spec.argv.push(result.clone().into_os_string());
    spec.stdio[1] = StdioTarget::File(fifo.clone());
    spec.stdio[0] = StdioTarget::File(fifo);
    let pid = spawn(&spec, &ChildSlot::default()).expect("no reader needed");
    assert_eq!(wait(pid), 0);
    assert_eq!(fs::read_to_string(result).unwrap().trim(), "/dev/null");
}

/// The first child of `pid` (`/proc/PID/task/PID/children`), once it has one.
fn first_child(pid: u32) -> u32 {
    for _ in 0..500 {
        let text = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        if let Some(child) = text.split_whitespace().next() {
            return child.parse().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{pid} has no child");
}

fn ns_link(pid: u32, kind: &str) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

#[test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root: makes namespaces and a cgroup and joins them (run as root, or `cargo xtask test`)"
)]
fn a_restart_runs_in_the_namespaces_and_cgroup_the_process_ran_in() {
    let dir = temp_dir("place");
    let out = dir.join("out");
    // A container of sorts: its own hostname, pid numbers and mounts.
    let mut container = std::process::Command::new("unshare")
        .args(["--uts", "--pid", "--mount", "--fork", "--kill-child"])
        .args(["sh", "-c", "hostname inside-ns && exec sleep 60"])
        .spawn()
        .expect("unshare (util-linux)");
    let init = first_child(container.id());
    wait_for_cmdline(init);
    let cgroup = crate::place::tests_cgroup("spawn-place");
    fs::write(cgroup.join("cgroup.procs"), init.to_string()).unwrap();
    let place = crate::place::Place::of(init).unwrap();
    let kinds: Vec<_> = place.namespaces.iter().map(|j| j.kind).collect();
    assert_eq!(kinds, ["uts", "pid", "mnt"]);
    assert_eq!(place.cgroup.as_deref(), Some(cgroup.as_path()));
    let script = format!(
        "cat /proc/sys/kernel/hostname > {out}; echo $$ >> {out}; exec sleep 60",
        out = out.display()
    );
    // The place of `sleep`, whose path the restart would execute.
    assert!(place.exe.as_ref().is_some_and(|exe| exe.ends_with("sleep")));
    let spec = LaunchSpec {
        place: crate::place::Place { exe: None, ..place },
        ..sh(&script)
    };
    let pid = spawn(&spec, &ChildSlot::default()).unwrap();
    // The shell writes its lines, then executes sleep.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = String::new();
    while text.lines().count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        text = fs::read_to_string(&out).unwrap_or_default();
    }
    let (pid_ns, mnt_ns) = (ns_link(pid, "pid"), ns_link(pid, "mnt"));
    let cgroup_of = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    // SAFETY: our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait(pid);
    assert_eq!(
        (pid_ns, mnt_ns),
        (ns_link(init, "pid"), ns_link(init, "mnt"))
    );
    let _ = container.kill();
    let _ = container.wait();
    let name = cgroup.file_name().unwrap().to_str().unwrap();
    assert!(cgroup_of.contains(name), "{cgroup_of}");
    let _ = fs::remove_dir(&cgroup);
    fs::remove_dir_all(&dir).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "inside-ns");
    assert!(
        lines[1].parse::<u32>().unwrap() < 10,
        "a pid of the namespace: {text}"
    );
}
