//! No user can blind armourd to root's services by filling the kernel's
//! room for watched processes: an unprivileged user's watched program that
//! forks more children than that room holds leaves root's crashed service
//! restarted; with eBPF, the children the kernel had no room for are
//! logged, never reported as watched, and looked for again once room comes
//! back (README, Limits).
//!
//! Both backends: the proc connector has no such map, but it must not be
//! blinded by that many watched processes either.

use std::{sync::Mutex, time::Duration};

use armourd_common::MAX_WATCHED_PIDS;
use armourd_tests::{
    backend_tests, process, wait_for, wait_until, Backend, Daemon, LaunchExt, Record, Sandbox,
    EVENT_TIMEOUT,
};

backend_tests!(a_user_who_fills_the_unprivileged_room_does_not_blind_root);

/// Children beyond the unprivileged room (which also holds their parent).
const BEYOND: usize = 256;
/// Held children killed to make room again.
const FREED: usize = 512;
/// Pids the rest of the machine may take while the test runs.
const HEADROOM: usize = 4096;
/// How long the fork burst may take on a loaded machine.
const BURST_TIMEOUT: Duration = Duration::from_secs(120);
/// Longer than armourd's longest wait before it looks again for what it
/// could not watch (64 s).
const LOOK_AGAIN_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the processes of an earlier run may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(60);
const NOBODY: u32 = 65534;

/// Both backends' instances fork this many processes: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn a_user_who_fills_the_unprivileged_room_does_not_blind_root(backend: Backend) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let children = MAX_WATCHED_PIDS as usize + BEYOND;
    assert_room_for(children);
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let forker = sb.testee("forker");
    let svc_report = sb.report("svc");
    let forker_report = sb.report("forker");
    sb.write_config(&format!("{}\n{}\n", svc.display(), forker.display()));
    let (daemon, _) = Daemon::ready(&sb, backend);

    // The user's watched program forks its children, which just pause.
    let master = sb.spawn(
        sb.command(&forker, &forker_report)
            .env("TESTEE_MODE", format!("fork-workers={children}"))
            .as_user(NOBODY, NOBODY, &[NOBODY]),
    );
    let workers = wait_for(BURST_TIMEOUT, || {
        forker_report.records().into_iter().find_map(|r| match r {
            Record::Workers { master: m, workers } if m == master => Some(workers),
            _ => None,
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "the forker did not fork {children} children:\n{}",
            daemon.log()
        )
    });
    assert_eq!(workers.len(), children);

    if backend == Backend::Ebpf {
        // Refused in the kernel (aya-log) and in armourd, not pretended.
        assert!(
            daemon.wait_log(EVENT_TIMEOUT, |log| log
                .contains("the map of unprivileged watched processes is full")),
            "the kernel did not log its full map"
        );
        assert!(
            daemon.wait_log(EVENT_TIMEOUT, |log| log.contains("is NOT watched")),
            "armourd did not log the watches it could not place"
        );
    }

    // Root's service, started after the room was filled, is watched and
    // restarted after its crash.
    let pid = sb.spawn(&mut sb.command(&svc, &svc_report));
    assert_eq!(
        svc_report.wait_starts(1)[0].uid,
        [0; 3],
        "root's service runs as root"
    );
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGSEGV));
    let restart = svc_report.wait_starts(2).remove(1);
    assert_ne!(restart.pid, pid);
    assert!(process::is_alive(restart.pid), "the restart runs");

    if backend == Backend::Ebpf {
        // Room comes back as held children end; those the kernel had no
        // room for (forked last) are then found and watched.
        for &worker in &workers[..FREED] {
            process::kill(worker, libc::SIGKILL);
        }
        let unheld = &workers[MAX_WATCHED_PIDS as usize..];
        let adopted = daemon.wait_log(LOOK_AGAIN_TIMEOUT, |log| {
            unheld
                .iter()
                .any(|w| log.contains(&format!("adopted pid {w} (")))
        });
        assert!(
            adopted,
            "no child the kernel had no room for was watched once there was room"
        );
    }
}

/// Panics unless `children` more processes fit below `kernel.pid_max` and
/// `kernel.threads-max` with room to spare, once the processes of an
/// earlier run of this test are reaped (by init, in the background).
fn assert_room_for(children: usize) {
    let read = |path: &str| -> usize {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{path}: {text:?}: {e}"))
    };
    let limit = read("/proc/sys/kernel/pid_max").min(read("/proc/sys/kernel/threads-max"));
    // The fourth field of loadavg: running/total scheduling entities.
    let used = || -> usize {
        let loadavg = std::fs::read_to_string("/proc/loadavg").expect("read /proc/loadavg");
        loadavg
            .split_whitespace()
            .nth(3)
            .and_then(|field| field.split('/').nth(1)?.parse().ok())
            .expect("total in /proc/loadavg")
    };
    wait_until(REAP_TIMEOUT, || used() + children + HEADROOM <= limit);
    let used = used();
    assert!(
        used + children + HEADROOM <= limit,
        "this test forks {children} processes, but only {} pids are free below \
         kernel.pid_max / kernel.threads-max ({limit}); raise them \
         (sysctl kernel.pid_max=65536)",
        limit.saturating_sub(used)
    );
}
