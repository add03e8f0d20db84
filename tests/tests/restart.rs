//! Abnormal ends are restarted, clean ends are not (SPEC §4, §5), and
//! `success=` decides which is which.

use armourd_tests::{
    backend_tests, process, Backend, Daemon, Report, Sandbox, EVENT_TIMEOUT, QUIET_WINDOW,
};

backend_tests!(
    restarts_after_sigsegv,
    restarts_after_sigkill,
    restarts_after_sigabrt_with_core_dump,
    restarts_after_exit_code_3,
    no_restart_after_exit_0,
    no_restart_after_sigterm,
    success_exit_code_is_clean,
    success_signal_is_clean,
    success_list_replaces_the_default,
    restarts_again_and_reaps_what_it_started,
);

/// Starts armourd watching a `svc` testee (config line `svc OPTIONS`), then
/// the testee with `env`, after armourd is ready; sends it `signal` and
/// asserts that it is restarted with the same argv.
fn assert_restarted_after(
    backend: Backend,
    options: &str,
    env: &[(&str, &str)],
    signal: i32,
) -> Sandbox {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    sb.write_config(&format!("{} {options}\n", svc.display()));
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 0, "nothing runs yet");

    let pid = sb.spawn(
        sb.command(&svc, &report)
            .args(["--serve", "now"])
            .envs(env.iter().copied()),
    );
    let original = report.wait_starts(1).remove(0);
    daemon.wait_watching(pid);
    assert!(process::kill(pid, signal));

    let restart = report.wait_starts(2).remove(1);
    assert_ne!(restart.pid, pid, "a new process");
    assert_eq!(restart.argv, original.argv);
    assert_eq!(restart.exe, svc);
    assert!(process::is_alive(restart.pid), "the restart runs");
    daemon.assert_running();
    drop(daemon);
    sb
}

fn restarts_after_sigsegv(backend: Backend) {
    assert_restarted_after(backend, "", &[], libc::SIGSEGV);
}

fn restarts_after_sigkill(backend: Backend) {
    assert_restarted_after(backend, "", &[], libc::SIGKILL);
}

fn restarts_after_sigabrt_with_core_dump(backend: Backend) {
    let sb = assert_restarted_after(backend, "", &[("TESTEE_CORE", "1")], libc::SIGABRT);
    // Proves the crash really dumped core, where core_pattern makes that a
    // file in the working directory (the sandbox).
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if pattern.trim().starts_with("core") {
        let core = std::fs::read_dir(sb.dir())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("core"));
        assert!(core, "no core file in {}", sb.dir().display());
    } else {
        eprintln!("core_pattern is {pattern:?}: core file not checked");
    }
}

fn restarts_after_exit_code_3(backend: Backend) {
    // SIGUSR1 makes the testee exit with TESTEE_EXIT_CODE.
    assert_restarted_after(backend, "", &[("TESTEE_EXIT_CODE", "3")], libc::SIGUSR1);
}

/// Starts a `svc` testee with `env`, then armourd watching it (config line
/// `svc OPTIONS`), so that the ready line proves it is watched; sends it
/// `signal`, checks how it ended and that it is not restarted.
fn assert_not_restarted_after(
    backend: Backend,
    options: &str,
    env: &[(&str, &str)],
    signal: i32,
    end: Option<i32>,
) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    sb.write_config(&format!("{} {options}\n", svc.display()));
    let pid = sb.spawn(sb.command(&svc, &report).envs(env.iter().copied()));
    report.wait_starts(1);
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 1, "the testee is adopted");

    assert!(process::kill(pid, signal));
    let status = sb.wait_child(pid, EVENT_TIMEOUT);
    assert_eq!(status.code(), end, "testee ended with {status}");
    report.assert_starts_stay(1, QUIET_WINDOW, "a clean end is not restarted");
    daemon.assert_running();
}

fn no_restart_after_exit_0(backend: Backend) {
    assert_not_restarted_after(
        backend,
        "",
        &[("TESTEE_EXIT_CODE", "0")],
        libc::SIGUSR1,
        Some(0),
    );
}

fn no_restart_after_sigterm(backend: Backend) {
    assert_not_restarted_after(backend, "", &[], libc::SIGTERM, None);
}

fn success_exit_code_is_clean(backend: Backend) {
    assert_not_restarted_after(
        backend,
        "success=0,3",
        &[("TESTEE_EXIT_CODE", "3")],
        libc::SIGUSR1,
        Some(3),
    );
}

fn success_signal_is_clean(backend: Backend) {
    assert_not_restarted_after(backend, "success=0,SEGV", &[], libc::SIGSEGV, None);
}

/// A `success=` list replaces the default one: without TERM in it, death
/// by SIGTERM is abnormal.
fn success_list_replaces_the_default(backend: Backend) {
    assert_restarted_after(backend, "success=0,3", &[], libc::SIGTERM);
}

/// A restart is watched like the original: its crash is restarted too, and
/// armourd reaps the crashed restart (no zombie children accumulate).
fn restarts_again_and_reaps_what_it_started(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report: Report = sb.report("svc");
    sb.write_config(&format!("{}\n", svc.display()));
    let (mut daemon, _) = Daemon::ready(&sb, backend);
    let pid = sb.spawn(sb.command(&svc, &report).arg("again"));
    let original = report.wait_starts(1).remove(0);
    daemon.wait_watching(pid);

    assert!(process::kill(pid, libc::SIGKILL));
    let first = report.wait_starts(2).remove(1);
    assert!(process::kill(first.pid, libc::SIGSEGV));
    let second = report.wait_starts(3).remove(2);
    assert_eq!(second.argv, original.argv);
    assert_ne!(second.pid, first.pid);

    let reaped = armourd_tests::wait_until(EVENT_TIMEOUT, || {
        process::zombie_children(daemon.pid()).is_empty()
    });
    assert!(
        reaped,
        "armourd leaves zombie children: {:?}",
        process::zombie_children(daemon.pid())
    );
    daemon.assert_running();
}
