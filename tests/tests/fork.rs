//! Forks without exec belong to their instance; a forking server's
//! leftovers are terminated before its restart; daemonizing moves the watch
//! to the child (SPEC §3, §5).

use std::os::unix::process::CommandExt;

use armourd_tests::{
    backend_tests, process, Backend, Daemon, Record, Report, Sandbox, EVENT_TIMEOUT, QUIET_WINDOW,
};

backend_tests!(
    forking_server_leftovers_are_terminated_before_restart,
    worker_crash_does_not_restart_the_server,
    single_fork_daemon_is_followed,
    double_fork_daemon_is_followed,
    daemon_is_followed_when_its_middle_process_ends_unseen,
);

fn workers_of(report: &Report, master: i32) -> Vec<i32> {
    report.wait_record("workers", |r| match r {
        Record::Workers { master: m, workers } if *m == master => Some(workers.clone()),
        _ => None,
    })
}

/// Starts armourd, then a forking server with two workers as the leader of
/// its own process group; returns the master's pid and its workers.
fn forking_server(backend: Backend, sb: &Sandbox, report: &Report) -> (Daemon, i32, Vec<i32>) {
    let svc = sb.testee("server");
    sb.write_config(&format!("{} stop-timeout=2s\n", svc.display()));
    let (daemon, _) = Daemon::ready(sb, backend);
    let master = sb.spawn(
        sb.command(&svc, report)
            .env("TESTEE_MODE", "fork-workers=2")
            .process_group(0),
    );
    let workers = workers_of(report, master);
    assert_eq!(workers.len(), 2);
    daemon.wait_watching(master);
    (daemon, master, workers)
}

/// The master dies by SIGKILL; its orphaned workers get SIGTERM and are
/// gone before the new master starts.
fn forking_server_leftovers_are_terminated_before_restart(backend: Backend) {
    let sb = Sandbox::new();
    let report = sb.report("server");
    let (mut daemon, master, workers) = forking_server(backend, &sb, &report);

    assert!(process::kill(master, libc::SIGKILL));
    let restart = report.wait_starts(2).remove(1);
    let records = report.records();
    let restart_at = records
        .iter()
        .position(|r| matches!(r, Record::Start(s) if s.pid == restart.pid))
        .unwrap();
    for worker in &workers {
        let term_at = records
            .iter()
            .position(|r| *r == Record::WorkerTerm(*worker));
        assert!(
            term_at.is_some_and(|at| at < restart_at),
            "worker {worker} got no SIGTERM before the restart:\n{}",
            report.text()
        );
        assert!(!process::is_alive(*worker), "worker {worker} still runs");
    }
    let new_workers = workers_of(&report, restart.pid);
    assert!(new_workers.iter().all(|w| !workers.contains(w)));
    assert_eq!(
        restart.pgid, restart.pid,
        "the new master leads its own group"
    );
    daemon.assert_running();
}

/// A worker is part of the server's instance: its death alone restarts nothing.
fn worker_crash_does_not_restart_the_server(backend: Backend) {
    let sb = Sandbox::new();
    let report = sb.report("server");
    let (mut daemon, master, workers) = forking_server(backend, &sb, &report);

    assert!(process::kill(workers[0], libc::SIGKILL));
    report.assert_starts_stay(
        1,
        QUIET_WINDOW,
        "a worker's death does not restart the server",
    );
    assert!(process::is_alive(master), "the master still runs");
    assert!(process::is_alive(workers[1]), "the other worker still runs");
    daemon.assert_running();
}

/// Starts `TESTEE_MODE=MODE` after armourd; the original exits 0 leaving a
/// daemon child. Killing that child with SIGKILL restarts the original
/// command, which leaves a new daemon child.
fn assert_daemon_followed(backend: Backend, mode: &str) {
    let sb = Sandbox::new();
    let svc = sb.testee("forker");
    let report = sb.report("forker");
    sb.write_config(&format!("{}\n", svc.display()));
    let (mut daemon, _) = Daemon::ready(&sb, backend);

    let original_pid = sb.spawn(
        sb.command(&svc, &report)
            .env("TESTEE_MODE", mode)
            .args(["--daemon", ""]),
    );
    let original = report.wait_starts(1).remove(0);
    let status = sb.wait_child(original_pid, EVENT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "the original exits 0 after forking");
    let daemon_pid = |r: &Record| match r {
        Record::Daemon(pid) => Some(*pid),
        _ => None,
    };
    let child = report.wait_record("daemon", daemon_pid);
    assert!(process::is_alive(child));
    daemon.wait_watching(child);

    assert!(process::kill(child, libc::SIGKILL));
    let restart = report.wait_starts(2).remove(1);
    assert_eq!(
        restart.argv, original.argv,
        "the restart command is the original one"
    );
    assert_eq!(restart.env, original.env);
    let new_child = report.wait_record("new daemon", |r| daemon_pid(r).filter(|&p| p != child));
    assert!(process::is_alive(new_child));
    daemon.wait_watching(new_child);

    // The restart daemonized too: the watch followed it again.
    assert!(process::kill(new_child, libc::SIGKILL));
    report.wait_starts(3);
    report.wait_record("third daemon", |r| {
        daemon_pid(r).filter(|&p| p != child && p != new_child)
    });
    daemon.assert_running();
}

fn single_fork_daemon_is_followed(backend: Backend) {
    assert_daemon_followed(backend, "daemon1");
}

fn double_fork_daemon_is_followed(backend: Backend) {
    assert_daemon_followed(backend, "daemon2");
}

/// A double fork while armourd cannot look (stopped, as a slow machine
/// would be): the middle process ends and is reaped before armourd can
/// read how, so its status is unknown to the proc connector. The daemon it
/// left running still is its instance: followed, not restarted.
fn daemon_is_followed_when_its_middle_process_ends_unseen(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("forker");
    let report = sb.report("forker");
    let go = sb.path("daemonize");
    sb.write_config(&format!("{}\n", svc.display()));
    let (mut daemon, _) = Daemon::ready(&sb, backend);

    let reaper = sb.spawn(
        sb.command_reaped(&svc, &report)
            .env("TESTEE_MODE", "daemon2")
            .env("TESTEE_DAEMONIZE_WHEN", &go),
    );
    let original = report.wait_starts(1).remove(0);
    daemon.wait_watching(original.pid);
    daemon.signal(libc::SIGSTOP);
    std::fs::write(&go, "").expect("create the file that lets the testee daemonize");
    let child = report.wait_record("daemon", |r| match r {
        Record::Daemon(pid) => Some(*pid),
        _ => None,
    });
    // The original and the middle process have ended and were reaped: the
    // daemon's parent is the reaper, which has no zombie left.
    let reaped = armourd_tests::wait_until(EVENT_TIMEOUT, || {
        process::stat(child).is_some_and(|(_, ppid)| ppid == reaper)
            && process::zombie_children(reaper).is_empty()
            && !process::is_alive(original.pid)
    });
    assert!(reaped, "the daemon's parents did not end");
    daemon.signal(libc::SIGCONT);

    daemon.wait_watching(child);
    report.assert_starts_stay(1, QUIET_WINDOW, "the daemon runs: nothing restarts");
    assert!(process::is_alive(child), "the daemon still runs");
    // The watch is the daemon's: its crash restarts the original command.
    assert!(process::kill(child, libc::SIGKILL));
    let restart = report.wait_starts(2).remove(1);
    assert_eq!(restart.argv, original.argv);
    daemon.assert_running();
}
