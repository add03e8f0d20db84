//! Events lost to a full buffer (the eBPF ring buffer, the proc connector's
//! socket buffer) are reconciled with /proc without losing a restart
//! (SPEC §6).

use armourd_tests::{backend_tests, process, Backend, Daemon, Sandbox, EVENT_TIMEOUT};

backend_tests!(lost_events_are_reconciled_without_losing_a_restart);

/// Watched processes started while armourd is stopped: their exec records
/// (8 KiB each with eBPF) overflow a 256 KiB ring buffer.
const WATCHED_BURST: usize = 48;
/// Unrelated forks while armourd is stopped: the proc connector reports
/// every new process, enough datagrams to overflow its socket buffer.
const UNRELATED_BURST: usize = 30_000;

fn lost_events_are_reconciled_without_losing_a_restart(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let burst = sb.testee("burst");
    let svc_report = sb.report("svc");
    let burst_report = sb.report("burst");
    sb.write_config(&format!("{}\n{}\n", svc.display(), burst.display()));
    let (daemon, _) = Daemon::ready(&sb, backend);
    let pid = sb.spawn(&mut sb.command(&svc, &svc_report));
    svc_report.wait_starts(1);
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log
            .contains(&format!("watching pid {pid}"))),
        "svc {pid} was never watched"
    );

    // Stopped, armourd reads nothing while the buffer fills up.
    daemon.signal(libc::SIGSTOP);
    for _ in 0..WATCHED_BURST {
        sb.spawn(&mut sb.command(&burst, &burst_report));
    }
    if backend.is_proc_connector() {
        for _ in 0..UNRELATED_BURST {
            fork_and_reap();
        }
    }
    burst_report.wait_starts(WATCHED_BURST);
    // Its exit is reported (if at all) after the lost records.
    assert!(process::kill(pid, libc::SIGKILL));
    daemon.signal(libc::SIGCONT);

    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log.contains("reconciling with /proc")),
        "the burst did not overflow the buffer, so nothing was reconciled"
    );
    let restart = svc_report.wait_starts(2).remove(1);
    assert_ne!(restart.pid, pid);
    assert!(process::is_alive(restart.pid), "the restart runs");
    // Every process of the burst is watched after the reconciliation.
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| {
            burst_report.starts().iter().all(|s| {
                log.contains(&format!("watching pid {} (", s.pid))
                    || log.contains(&format!("adopted pid {} (", s.pid))
            })
        }),
        "not every process of the burst was adopted"
    );
}

/// A child that exits at once, reaped.
fn fork_and_reap() {
    // SAFETY: the child only calls _exit, which is async-signal-safe.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: ends the child without running any of the parent's code.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
}
