//! armourd's own life (SPEC §9): the ready line counts what it watches;
//! SIGTERM and SIGINT end it cleanly and leave the watched processes running.

use armourd_tests::{backend_tests, process, Backend, Daemon, Sandbox};

backend_tests!(
    ready_line_counts_every_adopted_instance,
    sigterm_ends_armourd_and_processes_keep_running,
    sigint_ends_armourd_and_processes_keep_running,
);

/// Two instances of one program and one of another are watched; a third
/// program that is not configured is not counted.
fn ready_line_counts_every_adopted_instance(backend: Backend) {
    let sb = Sandbox::new();
    let (svc, alt, other) = (sb.testee("svc"), sb.testee("alt"), sb.testee("other"));
    let report = sb.report("all");
    sb.write_config(&format!("{}\n{}\n", svc.display(), alt.display()));
    for exe in [&svc, &svc, &alt, &other] {
        sb.spawn(&mut sb.command(exe, &report));
    }
    report.wait_starts(4);
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 3);
    daemon.assert_running();
}

/// An adopted original and a restart armourd started both outlive armourd.
fn assert_signal_ends_armourd(backend: Backend, signal: i32) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let (kept, restarted) = (sb.report("kept"), sb.report("restarted"));
    sb.write_config(&format!("{}\n", svc.display()));
    let kept_pid = sb.spawn(&mut sb.command(&svc, &kept));
    let crashing = sb.spawn(&mut sb.command(&svc, &restarted));
    kept.wait_starts(1);
    restarted.wait_starts(1);
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 2);
    assert!(process::kill(crashing, libc::SIGKILL));
    let restart = restarted.wait_starts(2).remove(1);

    daemon.signal(signal);
    let status = daemon.wait_exit(armourd_tests::EVENT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "armourd's exit status, log:\n{}",
        daemon.log()
    );
    assert!(
        process::is_alive(kept_pid),
        "the adopted process keeps running"
    );
    assert!(
        process::is_alive(restart.pid),
        "the process armourd started keeps running"
    );
}

fn sigterm_ends_armourd_and_processes_keep_running(backend: Backend) {
    assert_signal_ends_armourd(backend, libc::SIGTERM);
}

fn sigint_ends_armourd_and_processes_keep_running(backend: Backend) {
    assert_signal_ends_armourd(backend, libc::SIGINT);
}
