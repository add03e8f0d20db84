//! armourd's own restart loses nothing: killed with SIGKILL and started
//! again, it watches again what it watched over D-Bus, and the restart
//! counters go on; a damaged or foreign state file is logged and ignored;
//! a recorded pid that now runs another program is never adopted.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use armourd_tests::{
    backend_tests, bus::run, bus::Scene, process, wait_until, Backend, Daemon, LaunchExt, Sandbox,
    EVENT_TIMEOUT, QUIET_WINDOW,
};

backend_tests!(
    watches_and_counters_survive_sigkill_of_armourd,
    damaged_or_foreign_state_file_is_logged_and_ignored,
    recorded_pid_running_another_program_is_not_adopted,
);

/// The unprivileged user of these tests (`nobody`).
const NOBODY: u32 = 65534;

fn state_file(sb: &Sandbox) -> std::path::PathBuf {
    sb.path("state/state")
}

/// Waits until armourd's state file names `pid`, so that a kill of armourd
/// after this loses nothing it is meant to keep.
fn wait_kept(sb: &Sandbox, pid: i32, restarts: u32) {
    let wanted = (format!("pid={pid} "), format!("restarts={restarts} "));
    assert!(
        wait_until(EVENT_TIMEOUT, || {
            fs::read_to_string(state_file(sb)).is_ok_and(|text| {
                text.lines()
                    .any(|l| l.contains(&wanted.0) && l.contains(&wanted.1))
            })
        }),
        "the state file never named pid {pid} with {restarts} restarts:\n{}",
        fs::read_to_string(state_file(sb)).unwrap_or_default()
    );
}

/// A configured service and a program a user watched with `armourctl
/// watch`, each restarted once; armourd is killed (SIGKILL) and started
/// again: both are restarted when they crash later, as their second restart.
fn watches_and_counters_survive_sigkill_of_armourd(backend: Backend) {
    let Scene {
        sb,
        bus,
        svc,
        report,
        mut daemon,
        ..
    } = Scene::start(backend, true);
    let other = sb.testee("other");
    let other_report = sb.report("other");
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);
    let other_pid = sb.spawn(
        sb.command(&other, &other_report)
            .as_user(NOBODY, NOBODY, &[]),
    );
    other_report.wait_starts(1);
    let watch = run(bus
        .armourctl(&["watch", &other_pid.to_string()])
        .as_user(NOBODY, NOBODY, &[]));
    assert_eq!(watch.code, Some(0), "armourctl watch: {}", watch.stderr);

    assert!(process::kill(pid, libc::SIGSEGV));
    assert!(process::kill(other_pid, libc::SIGSEGV));
    let svc_first = report.wait_starts(2).remove(1);
    let other_first = other_report.wait_starts(2).remove(1);
    wait_kept(&sb, svc_first.pid, 1);
    wait_kept(&sb, other_first.pid, 1);

    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(EVENT_TIMEOUT);
    let (mut daemon, watched) = bus.daemon(&sb, backend);
    assert_eq!(
        watched, 2,
        "the configured one adopted, the requested one taken back"
    );

    assert!(process::kill(svc_first.pid, libc::SIGSEGV));
    assert!(process::kill(other_first.pid, libc::SIGSEGV));
    let svc_second = report.wait_starts(3).remove(2);
    let other_second = other_report.wait_starts(3).remove(2);
    assert_eq!(other_second.uid[0], NOBODY, "restarted as its own uid");
    for (old, new) in [
        (svc_first.pid, svc_second.pid),
        (other_first.pid, other_second.pid),
    ] {
        let line = format!("pid {old} -> pid {new} (restart 2)");
        assert!(
            daemon.wait_log(EVENT_TIMEOUT, |log| log.contains(&line)),
            "the counter did not go on ({line}):\n{}",
            daemon.log()
        );
    }
    daemon.assert_running();
}

/// Garbage in the state file, then a state file others may write: each
/// is named in a warning and ignored, armourd runs and restarts as usual,
/// and writes a state file of its own in its place.
fn damaged_or_foreign_state_file_is_logged_and_ignored(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    sb.write_config(&format!("{}\n", svc.display()));
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    fs::create_dir_all(sb.path("state")).expect("mkdir state");
    fs::set_permissions(sb.path("state"), fs::Permissions::from_mode(0o700)).expect("chmod");
    let cases = [
        ("armourd-state 1\nboot x\ninstance pid=1\n", 0o600, "line 2"),
        ("armourd-state 7\n", 0o600, "newer armourd"),
        ("armourd-state 1\n", 0o666, "lets other users write it"),
    ];
    let mut restarts = 0;
    let mut pid = pid;
    for (text, mode, said) in cases {
        write_state(&sb, text, mode);
        let (mut daemon, watched) = Daemon::ready(&sb, backend);
        assert_eq!(watched, 1);
        assert!(
            daemon
                .log()
                .lines()
                .any(|l| l.contains("warn: state file ignored") && l.contains(said)),
            "no warning naming the state file ({said}):\n{}",
            daemon.log()
        );
        assert!(process::kill(pid, libc::SIGSEGV));
        restarts += 1;
        pid = report.wait_starts(restarts + 1).remove(restarts).pid;
        wait_kept(&sb, pid, 1);
        let written = fs::metadata(state_file(&sb)).expect("state file");
        assert_eq!(written.mode() & 0o777, 0o600, "armourd's own file");
        daemon.signal(libc::SIGKILL);
        daemon.wait_exit(EVENT_TIMEOUT);
    }
}

/// A state file that names a running process with another program's
/// executable, and one with the right executable but another start time
/// (the pid was recycled): neither is watched, a crash of it is not
/// restarted.
fn recorded_pid_running_another_program_is_not_adopted(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let other = sb.testee("other");
    let report = sb.report("other");
    sb.write_config("# nothing configured\n");
    let pid = sb.spawn(&mut sb.command(&other, &report));
    report.wait_starts(1);
    let start = start_ticks(pid);
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    let text = format!(
        "armourd-state 1\nboot {}\n{}\n{}\n",
        boot.trim(),
        record(pid, start, &svc),
        record(pid, start + 1, &other),
    );
    fs::create_dir_all(sb.path("state")).expect("mkdir state");
    fs::set_permissions(sb.path("state"), fs::Permissions::from_mode(0o700)).expect("chmod");
    write_state(&sb, &text, 0o600);

    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 0, "nothing taken back:\n{}", daemon.log());
    assert!(
        daemon.log().contains("0 instances taken back, 2 forgotten"),
        "{}",
        daemon.log()
    );
    assert!(process::kill(pid, libc::SIGSEGV));
    report.assert_starts_stay(1, QUIET_WINDOW, "a process not taken back is not restarted");
    daemon.assert_running();
}

/// A state record of `pid` started at `start` running `exe`, watched on request of root.
fn record(pid: i32, start: u64, exe: &Path) -> String {
    let metadata = fs::metadata(exe).expect("stat exe");
    let dev = metadata.dev();
    format!(
        "instance pid={pid} start={start} dev={}:{} ino={} by=0 restarts=0 streak=0 crashes=- exe={}",
        libc::major(dev),
        libc::minor(dev),
        metadata.ino(),
        exe.display()
    )
}

fn write_state(sb: &Sandbox, text: &str, mode: u32) {
    let path = state_file(sb);
    fs::write(&path, text).expect("write state");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod state");
}

/// The start time of `pid` in clock ticks (field 22 of `/proc/PID/stat`).
fn start_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after
        .split(' ')
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("ticks")
}
