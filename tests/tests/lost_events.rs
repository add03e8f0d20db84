//! Events lost to a full buffer (the eBPF ring buffer, the proc connector's
//! socket buffer) are reconciled with /proc without losing a restart
//! (SPEC §6).

use armourd_tests::{backend_tests, process, Backend, Daemon, Sandbox, EVENT_TIMEOUT};

backend_tests!(lost_events_are_reconciled_without_losing_a_restart);

/// Watched processes started while armourd is stopped: their exec records
/// (8 KiB each with eBPF) overflow a 256 KiB ring buffer.
const WATCHED_BURST: usize = 48;
/// Unrelated forks while armourd is stopped, at most: the proc connector
/// reports every new process; the test forks until the kernel drops
/// datagrams for armourd's socket (about 10,000 forks on 6.18 with its 4 MiB
/// buffer).
const UNRELATED_BURST: usize = 100_000;
/// Forks between two looks at the sockets' drop counters.
const FORKS_PER_LOOK: usize = 250;

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
        fork_until_dropped(daemon.pid());
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

/// Forks (and reaps) unrelated children until the kernel reports dropped
/// datagrams for one of `daemon`'s netlink sockets: how many overflow its
/// buffer depends on the kernel's events and the socket filter, and a slow
/// machine (a qemu guest) should not fork more than it takes.
fn fork_until_dropped(daemon: i32) {
    let sockets = socket_inodes(daemon);
    assert!(!sockets.is_empty(), "armourd {daemon} holds no socket");
    let mut forks = 0;
    while netlink_drops(&sockets) == 0 {
        assert!(
            forks < UNRELATED_BURST,
            "{forks} forks overflowed none of armourd's netlink sockets \
             (no drops in /proc/net/netlink)"
        );
        for _ in 0..FORKS_PER_LOOK {
            fork_and_reap();
        }
        forks += FORKS_PER_LOOK;
    }
}

/// The inodes of the sockets `pid` holds (`socket:[INODE]` descriptors).
fn socket_inodes(pid: i32) -> Vec<u64> {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.ok()?.path()).ok()?;
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The datagrams the kernel dropped for the netlink sockets `inodes`,
/// summed: the `Drops` column of `/proc/net/netlink`, `Inode` the last.
fn netlink_drops(inodes: &[u64]) -> u64 {
    let table = std::fs::read_to_string("/proc/net/netlink")
        .unwrap_or_else(|e| panic!("cannot read /proc/net/netlink: {e}"));
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = fields.last()?.parse().ok()?;
            let drops: u64 = fields.get(fields.len().checked_sub(2)?)?.parse().ok()?;
            inodes.contains(&inode).then_some(drops)
        })
        .sum()
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
