//! armourd as a system service (SPEC §12): `-d` detaches and returns once
//! watching, the pid file names the daemon and is locked, a second one is
//! refused, SIGTERM removes the file, logs reach syslog, `sd_notify` says
//! READY=1, pings WATCHDOG=1 and says STOPPING=1; bad input exits 1 and
//! leaves nothing behind.

use std::{
    fs,
    os::{fd::AsRawFd, unix::net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use armourd_tests::{
    armourd_bin, backend_tests, process, wait_for, wait_until, Backend, Daemon, Launch, Sandbox,
    EVENT_TIMEOUT,
};

backend_tests!(
    detached_daemon_returns_once_watching_and_holds_its_pid_file,
    notify_socket_gets_ready_watchdog_pings_and_stopping,
);

/// A daemon started with `-d`: killed when the test ends, whatever happened.
struct Detached {
    pid: i32,
}

impl Drop for Detached {
    fn drop(&mut self) {
        if process::is_alive(self.pid) {
            process::kill(self.pid, libc::SIGKILL);
        }
    }
}

fn armourd(sb: &Sandbox, backend: Backend, args: &[&str], env: &[(&str, &Path)]) -> Output {
    Command::new(armourd_bin())
        .arg("-c")
        .arg(sb.config_path())
        .args(["--backend", backend.flag(), "--dbus", "none"])
        .envs(backend.env().iter().copied())
        // Not the machine's /run/armourd: nothing is left behind.
        .arg("--state-dir")
        .arg(sb.path("state"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run armourd")
}

/// Every datagram that arrives on `socket` within `window`, as text.
fn receive(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    let end = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    got
}

fn detached_daemon_returns_once_watching_and_holds_its_pid_file(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    sb.write_config(&format!("{}\n", svc.display()));
    let pid_of_svc = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    let syslog = sb.path("log.sock");
    let listener = UnixDatagram::bind(&syslog).expect("bind the syslog socket");
    let pidfile = sb.path("armourd.pid");
    let pidfile_arg = pidfile.to_str().unwrap();

    let out = armourd(
        &sb,
        backend,
        &["-d", "--pidfile", pidfile_arg],
        &[("ARMOURD_SYSLOG_SOCKET", &syslog)],
    );
    assert!(out.status.success(), "armourd -d failed: {out:?}");
    // The parent returned once the daemon was watching: its pid is there.
    let text = fs::read_to_string(&pidfile).expect("the pid file exists once -d returns");
    let pid: i32 = text.trim().parse().expect("the pid file holds a pid");
    let daemon = Detached { pid };
    assert!(
        process::is_alive(pid),
        "the daemon named in the pid file runs"
    );
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, armourd_bin().canonicalize().unwrap());
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let sid = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let sid: Vec<&str> = sid.rsplit(')').next().unwrap().split_whitespace().collect();
    assert_ne!(
        sid[3],
        pid.to_string(),
        "not a session leader (double fork)"
    );
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        Path::new("/dev/null")
    );
    assert_eq!(field("PPid:"), "1", "reparented to init");
    // Locked: no one else can take the lock while the daemon runs.
    let file = fs::File::open(&pidfile).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(taken, -1, "the pid file is locked while armourd runs");
    drop(file);

    // Logs go to syslog, daemon facility (3 × 8 + info 6 = 30).
    let lines = receive(&listener, Duration::from_millis(500));
    assert!(
        lines.iter().any(|l| l.starts_with("<30>")
            && l.contains(&format!("armourd[{pid}]"))
            && l.contains("ready")),
        "no ready line at the syslog socket: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("pid {pid_of_svc}"))),
        "the adopted process is logged: {lines:?}"
    );

    // A second armourd on the same pid file is refused.
    let second = armourd(&sb, backend, &["-d", "--pidfile", pidfile_arg], &[]);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!("already running as pid {pid}")),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(&pidfile).unwrap(),
        text,
        "left as it was"
    );

    // SIGTERM: a clean stop removes the pid file; the watched process runs on.
    assert!(process::kill(pid, libc::SIGTERM));
    assert!(
        wait_until(EVENT_TIMEOUT, || !process::is_alive(pid)),
        "armourd did not stop on SIGTERM"
    );
    assert!(!pidfile.exists(), "the pid file is removed on exit");
    assert!(process::is_alive(pid_of_svc));
    drop(daemon);
}

fn notify_socket_gets_ready_watchdog_pings_and_stopping(backend: Backend) {
    let sb = Sandbox::new();
    sb.write_config("");
    let socket_path = sb.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let socket_env = socket_path.to_str().unwrap();
    // Pings at half of 400 ms: about 5 a second.
    let mut daemon = Daemon::start_with(
        &sb,
        backend,
        &["--dbus", "none"],
        &[("NOTIFY_SOCKET", socket_env), ("WATCHDOG_USEC", "400000")],
    );
    let ready = wait_for(Duration::from_secs(20), || {
        receive(&socket, Duration::from_millis(200))
            .into_iter()
            .find(|m| m.contains("READY=1"))
    })
    .unwrap_or_else(|| panic!("no READY=1:\n{}", daemon.log()));
    assert!(
        ready.contains(&format!("STATUS=backend={}, 0 watched", backend.name())),
        "{ready}"
    );
    // READY=1 is sent after the ready line is written.
    assert!(
        daemon.wait_log(Duration::from_secs(2), |log| log
            .contains("ready: backend=")),
        "{}",
        daemon.log()
    );
    let window = Duration::from_secs(3);
    let pings = receive(&socket, window)
        .iter()
        .filter(|m| m.contains("WATCHDOG=1"))
        .count();
    // About 15 expected; generous bounds for a loaded machine.
    assert!(
        (5..=40).contains(&pings),
        "{pings} WATCHDOG=1 pings in {window:?}, expected about 15"
    );
    daemon.signal(libc::SIGTERM);
    let stopping = wait_for(EVENT_TIMEOUT, || {
        receive(&socket, Duration::from_millis(200))
            .into_iter()
            .find(|m| m.contains("STOPPING=1"))
    });
    assert!(stopping.is_some(), "no STOPPING=1:\n{}", daemon.log());
    assert!(daemon.wait_exit(EVENT_TIMEOUT).success());
}

/// Runs armourd with `args` and expects exit 1 with `message` on stderr.
fn refused(sb: &Sandbox, args: &[&str], message: &str) {
    let out = armourd(sb, Backend::ProcConnector, args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(stderr.contains(message), "{args:?}: {stderr}");
}

#[test]
fn a_pid_file_in_a_missing_folder_is_refused_and_nothing_is_left() {
    let sb = Sandbox::new();
    sb.write_config("");
    let pidfile = sb.path("missing/armourd.pid");
    refused(
        &sb,
        &["-d", "--pidfile", pidfile.to_str().unwrap()],
        "does not exist",
    );
    assert!(!sb.path("missing").exists());
}

#[test]
fn an_unwritable_pid_file_is_refused() {
    let sb = Sandbox::new();
    sb.write_config("");
    // sysfs takes no new files, not even from root.
    refused(
        &sb,
        &["--pidfile", "/sys/armourd.pid"],
        "cannot create pid file /sys/armourd.pid",
    );
    assert!(!Path::new("/sys/armourd.pid").exists());
}

#[test]
fn a_watchdog_that_is_no_watchdog_is_refused_and_nothing_is_left() {
    let sb = Sandbox::new();
    sb.write_config("");
    let plain = sb.path("watchdog");
    fs::write(&plain, "").unwrap();
    let pidfile: PathBuf = sb.path("armourd.pid");
    for device in [plain.to_str().unwrap(), "/dev/null"] {
        refused(
            &sb,
            &[
                &format!("--watchdog={device}"),
                "-d",
                "--pidfile",
                pidfile.to_str().unwrap(),
            ],
            "is not a watchdog device",
        );
        assert!(!pidfile.exists(), "no pid file left behind");
    }
    assert_eq!(
        fs::read(&plain).unwrap(),
        b"",
        "nothing written to a plain file"
    );
}
