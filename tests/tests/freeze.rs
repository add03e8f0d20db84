//! Nothing a user controls may hold armourd's event loop (issue: no user can
//! freeze the watchdog): a FIFO in place of a log file, a hung mount in the
//! way of a restart. Root's services are restarted meanwhile, and armourd
//! still stops on SIGTERM. Also: signals armourd does not use never end it.

use std::{fs, os::unix::fs::chown, path::Path, process::Stdio};

use armourd_tests::{
    backend_tests, process, Backend, Daemon, HungMount, LaunchExt, Report, Sandbox, EVENT_TIMEOUT,
};

const NOBODY: u32 = 65534;

backend_tests!(
    a_fifo_in_place_of_a_log_file_does_not_freeze_armourd,
    a_restart_hanging_on_a_mount_holds_no_other_restart,
    sigusr1_and_sigusr2_do_not_end_armourd,
);

/// A folder that belongs to nobody.
fn users_folder(sb: &Sandbox, rel: &str) -> std::path::PathBuf {
    let dir = sb.mkdir(rel);
    chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown");
    dir
}

/// Starts root's service `svc` and waits until armourd watches it.
fn start_roots_service(sb: &Sandbox, daemon: &Daemon, svc: &Path, report: &Report) -> i32 {
    let pid = sb.spawn(&mut sb.command(svc, report));
    report.wait_starts(1);
    daemon.wait_watching(pid);
    pid
}

/// Root's crashed service comes back.
fn assert_roots_service_restarts(pid: i32, report: &Report) {
    assert!(process::kill(pid, libc::SIGKILL));
    let restart = report.wait_starts(2).remove(1);
    assert_eq!(restart.uid, [0; 3]);
}

/// nobody runs a watched program logging to `out.log` in a folder of
/// theirs, replaces the log by a FIFO and crashes the program: the restart
/// gets /dev/null for stdout instead of waiting for a FIFO reader (which
/// held armourd itself), and root's service is still restarted.
fn a_fifo_in_place_of_a_log_file_does_not_freeze_armourd(backend: Backend) {
    let sb = Sandbox::new();
    let home = users_folder(&sb, "home");
    let (svc, root_svc) = (sb.testee("svc"), sb.testee("root-svc"));
    let (users, roots) = (sb.report("users"), sb.report("roots"));
    sb.write_config(&format!("{}\n{}\n", svc.display(), root_svc.display()));
    let (mut daemon, _) = Daemon::ready(&sb, backend);

    let log = home.join("out.log");
    let out = fs::File::create(&log).expect("create out.log");
    chown(&log, Some(NOBODY), Some(NOBODY)).expect("chown out.log");
    let mut cmd = sb.command(&svc, &users);
    cmd.as_user(NOBODY, NOBODY, &[NOBODY])
        .stdout(Stdio::from(out));
    let pid = sb.spawn(&mut cmd);
    assert!(users.wait_starts(1)[0].stdout_is_file);
    daemon.wait_watching(pid);
    let root_pid = start_roots_service(&sb, &daemon, &root_svc, &roots);

    fs::remove_file(&log).expect("remove out.log");
    let fifo = std::ffi::CString::new(log.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0, "mkfifo");
    chown(&log, Some(NOBODY), Some(NOBODY)).expect("chown fifo");
    assert!(process::kill(pid, libc::SIGSEGV));
    let restart = users.wait_starts(2).remove(1);
    assert!(
        !restart.stdout_is_file,
        "the FIFO is not the restart's stdout"
    );
    assert_eq!(restart.uid, [NOBODY; 3]);

    assert_roots_service_restarts(root_pid, &roots);
    assert!(daemon.stop().success(), "{}", daemon.log());
}

/// nobody's service works in a folder that is then covered by a mount
/// that never answers; it crashes. Its restart hangs in the kernel on its
/// way to the program. Root's service crashes too and is restarted all
/// the same; the hung restart is killed and tried again, and succeeds once
/// the mount is gone.
fn a_restart_hanging_on_a_mount_holds_no_other_restart(backend: Backend) {
    let sb = Sandbox::new();
    let mnt = sb.mkdir("mnt");
    let work = users_folder(&sb, "mnt/work");
    let (svc, root_svc) = (sb.testee("svc"), sb.testee("root-svc"));
    let (users, roots) = (sb.report("users"), sb.report("roots"));
    sb.write_config(&format!("{}\n{}\n", svc.display(), root_svc.display()));
    let (mut daemon, _) = Daemon::ready(&sb, backend);

    let mut cmd = sb.command(&svc, &users);
    cmd.as_user(NOBODY, NOBODY, &[NOBODY]).current_dir(&work);
    let pid = sb.spawn(&mut cmd);
    assert_eq!(users.wait_starts(1)[0].cwd, work);
    daemon.wait_watching(pid);
    let root_pid = start_roots_service(&sb, &daemon, &root_svc, &roots);

    let mount = HungMount::new(&mnt);
    assert!(process::kill(pid, libc::SIGSEGV));
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log
            .contains(&format!("pid {pid} ({}) crashed", svc.display()))),
        "{}",
        daemon.log()
    );
    assert_roots_service_restarts(root_pid, &roots);
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log
            .contains("did not reach its program")),
        "the hung restart is killed at its deadline:\n{}",
        daemon.log()
    );
    assert_eq!(users.starts().len(), 1, "no restart got through the mount");

    drop(mount);
    let restart = users.wait_starts(2).remove(1);
    assert_eq!(restart.cwd, work);
    assert!(daemon.stop().success(), "{}", daemon.log());
}

/// SIGUSR1 logs a status summary, SIGUSR2 is ignored: neither ends armourd
/// (by default both would).
fn sigusr1_and_sigusr2_do_not_end_armourd(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    sb.write_config(&format!("{}\n", svc.display()));
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 1);

    daemon.signal(libc::SIGUSR1);
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log.contains("status: backend=")
            && log.contains("1 running")),
        "SIGUSR1 logs a status summary:\n{}",
        daemon.log()
    );
    daemon.signal(libc::SIGUSR2);
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log.contains("SIGUSR2 ignored")),
        "{}",
        daemon.log()
    );
    daemon.assert_running();
    assert!(process::kill(pid, libc::SIGKILL));
    report.wait_starts(2);
    assert!(daemon.stop().success(), "{}", daemon.log());
}
