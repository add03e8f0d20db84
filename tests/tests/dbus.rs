//! armourd's D-Bus methods and signals (SPEC §7), on a private bus per
//! test: every method and result code, the authorization by the caller's
//! uid, both signals with their arguments. The clients are `dbus-send` and
//! `dbus-monitor`, so what is checked is what goes over the wire. The
//! properties, standard interfaces, errors and the shipped bus policy are
//! in `dbus_interface.rs`; armourctl, dbus-python and running without a
//! bus in `dbus_clients.rs`.

use std::{
    os::unix::process::ExitStatusExt,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use armourd_tests::{
    backend_tests, bus::Scene, process, wait_for, Backend, Bus, LaunchExt, Sandbox, Start, Value,
    EVENT_TIMEOUT, QUIET_WINDOW,
};

backend_tests!(
    list_processes_gives_a_pid_or_an_array_of_pids,
    watch_process_watches_a_process_of_any_user,
    watch_and_unwatch_result_codes,
    unwatched_process_is_not_restarted,
    caller_of_another_uid_is_denied,
    unprivileged_caller_watches_its_own_process,
    get_processes_describes_each_process,
    signals_tell_of_crashes_and_restarts,
);

/// The unprivileged user of these tests (`nobody`).
const NOBODY: u32 = 65534;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// Waits until `GetProcesses` lists `pid` in state `running`; returns its entry.
fn wait_running(bus: &Bus, pid: i32) -> Value {
    wait_for(EVENT_TIMEOUT, || {
        bus.process(pid)
            .filter(|e| e.get("state") == Some(&Value::Str("running".into())))
    })
    .unwrap_or_else(|| {
        panic!(
            "GetProcesses does not list pid {pid} as running within {EVENT_TIMEOUT:?}:\n{}",
            bus.call("com.github.Armourd.GetProcesses", &[]).text()
        )
    })
}

/// The argv of a start record as `GetProcesses` gives it.
fn argv_value(start: &Start) -> Value {
    Value::Array(
        start
            .argv
            .iter()
            .map(|a| Value::Str(a.to_string_lossy().into_owned()))
            .collect(),
    )
}

fn exe_value(exe: &Path) -> Value {
    Value::Str(exe.display().to_string())
}

/// One instance of a path is an `int32`, several an `ai` (as the C
/// daemon's clients expect); unconfigured programs are not listed.
fn list_processes_gives_a_pid_or_an_array_of_pids(backend: Backend) {
    let sb = Sandbox::new();
    let bus = Bus::start(&sb);
    let (one, two, other) = (sb.testee("one"), sb.testee("two"), sb.testee("other"));
    let report = sb.report("all");
    sb.write_config(&format!("{}\n{}\n", one.display(), two.display()));
    let one_pid = sb.spawn(&mut sb.command(&one, &report));
    let adopted = sb.spawn(&mut sb.command(&two, &report));
    report.wait_starts(2);
    let (mut daemon, watched) = bus.daemon(&sb, backend);
    assert_eq!(watched, 2);
    let execed = sb.spawn(&mut sb.command(&two, &report));
    sb.spawn(&mut sb.command(&other, &report));
    report.wait_starts(4);

    let list = |wanted: &Value| {
        wait_for(EVENT_TIMEOUT, || {
            let list = bus.call("com.github.Armourd.ListProcesses", &[]).value();
            (list.get(&two.display().to_string()) == Some(wanted)).then_some(list)
        })
        .unwrap_or_else(|| {
            panic!(
                "ListProcesses never gives {wanted:?} for {}:\n{}",
                two.display(),
                bus.call("com.github.Armourd.ListProcesses", &[]).text()
            )
        })
    };
    let mut pids = [adopted, execed];
    pids.sort_unstable();
    let both = list(&Value::Array(pids.map(Value::Int32).to_vec()));
    let entries = both.entries().expect("ListProcesses returns a dictionary");
    assert!(
        entries.iter().all(|(_, v)| matches!(v, Value::Variant(_))),
        "a{{sv}}: every value is a variant: {both:?}"
    );
    assert_eq!(
        both.keys(),
        [one.display().to_string(), two.display().to_string()],
        "only the configured programs are listed"
    );
    assert_eq!(
        both.get(&one.display().to_string()),
        Some(&Value::Int32(one_pid))
    );

    // One instance left: an int32 again.
    assert!(process::kill(adopted, libc::SIGTERM));
    list(&Value::Int32(execed));
    daemon.assert_running();
}

/// Root may watch any process, here one of uid 65534 that is not in the
/// config: 0, then 1; it is restarted after a crash as its own user, and
/// the restart is watched too.
fn watch_process_watches_a_process_of_any_user(backend: Backend) {
    let Scene {
        sb,
        bus,
        svc,
        report,
        mut daemon,
        watched,
    } = Scene::start(backend, false);
    assert_eq!(watched, 0);
    let pid = sb.spawn(sb.command(&svc, &report).args(["--port", "8080"]).as_user(
        NOBODY,
        NOBODY,
        &[],
    ));
    let original = report.wait_starts(1).remove(0);
    assert!(bus.process(pid).is_none(), "not watched before the call");

    assert_eq!(bus.watch(pid), 0, "WatchProcess of a running process");
    assert_eq!(bus.watch(pid), 1, "WatchProcess of a watched process");
    wait_running(&bus, pid);
    assert!(process::kill(pid, libc::SIGSEGV));
    let restart = report.wait_starts(2).remove(1);
    assert_eq!(restart.argv, original.argv);
    assert_eq!(restart.exe, svc);
    assert_eq!(restart.uid, [NOBODY; 3], "restarted as its own user");
    assert_eq!(restart.gid, [NOBODY; 3]);
    wait_running(&bus, restart.pid);
    assert_eq!(bus.watch(restart.pid), 1, "the restart is watched");
    daemon.assert_running();
}

/// The C daemon's codes only: 1 already watched, 2 for every failure (a
/// kernel thread has nothing to restart; no such process: ended and
/// reaped, beyond pid_max, 0, negative). `Watch` and `Unwatch` name the
/// reason.
fn watch_and_unwatch_result_codes(backend: Backend) {
    let sb = Sandbox::new();
    let bus = Bus::start(&sb);
    let (svc, gone) = (sb.testee("svc"), sb.testee("gone"));
    let report = sb.report("svc");
    sb.write_config(&format!("{}\n", svc.display()));
    let configured = sb.spawn(&mut sb.command(&svc, &report));
    let ended = sb.spawn(&mut sb.command(&gone, &report));
    report.wait_starts(2);
    let (mut daemon, watched) = bus.daemon(&sb, backend);
    assert_eq!(watched, 1);
    assert!(process::kill(ended, libc::SIGKILL));
    sb.wait_child(ended, EVENT_TIMEOUT);
    assert!(
        !Path::new(&format!("/proc/{ended}")).exists(),
        "pid {ended} is reaped"
    );

    assert_eq!(
        bus.watch(configured),
        1,
        "a process of the config is watched"
    );
    let kthread = process::kernel_thread().expect("no kernel thread in /proc to watch");
    assert_eq!(bus.watch(kthread), 2, "kernel thread {kthread}");
    assert!(bus.process(kthread).is_none());
    for pid in [ended, i32::MAX, 0, -1] {
        assert_eq!(bus.watch(pid), 2, "WatchProcess({pid})");
        assert_eq!(bus.unwatch(pid), 2, "UnwatchProcess({pid})");
        let arg = format!("int32:{pid}");
        for method in ["Watch", "Unwatch"] {
            let reply = bus.call(&format!("com.github.Armourd.{method}"), &[&arg]);
            assert_eq!(
                reply.error(),
                "com.github.Armourd.Error.NoSuchProcess",
                "{method}({pid})"
            );
        }
    }
    let watch = |pid: i32| bus.call("com.github.Armourd.Watch", &[&format!("int32:{pid}")]);
    assert_eq!(
        watch(configured).error(),
        "com.github.Armourd.Error.AlreadyWatched"
    );
    assert_eq!(watch(kthread).error(), "com.github.Armourd.Error.Failed");
    assert_eq!(bus.watch(configured), 1, "still watched");
    daemon.assert_running();
}

/// Unwatch: 0, then 2 (it exists but is not watched); the crash is not
/// restarted. It can be watched again.
fn unwatched_process_is_not_restarted(backend: Backend) {
    let sb = Sandbox::new();
    let bus = Bus::start(&sb);
    let (svc, other) = (sb.testee("svc"), sb.testee("other"));
    let (report, other_report) = (sb.report("svc"), sb.report("other"));
    sb.write_config(&format!("{}\n", svc.display()));
    let (mut daemon, _) = bus.daemon(&sb, backend);
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    let unwatched = sb.spawn(&mut sb.command(&other, &other_report));
    report.wait_starts(1);
    other_report.wait_starts(1);
    wait_running(&bus, pid);

    assert_eq!(bus.unwatch(unwatched), 2, "a process that is not watched");
    assert_eq!(bus.unwatch(pid), 0);
    assert!(bus.process(pid).is_none(), "no longer listed");
    assert_eq!(bus.unwatch(pid), 2, "unwatched already");
    assert_eq!(bus.watch(pid), 0, "watched again");
    assert_eq!(bus.unwatch(pid), 0, "and unwatched again");

    assert!(process::kill(pid, libc::SIGSEGV));
    sb.wait_child(pid, EVENT_TIMEOUT);
    report.assert_starts_stay(1, QUIET_WINDOW, "an unwatched process is not restarted");
    daemon.assert_running();
}

/// A caller of uid 65534 may neither watch nor unwatch a process of
/// root: 2, or `AccessDenied` from `Watch` and `Unwatch`; the process
/// stays as it was.
fn caller_of_another_uid_is_denied(backend: Backend) {
    let sb = Sandbox::new();
    let bus = Bus::start(&sb);
    let (svc, other) = (sb.testee("svc"), sb.testee("other"));
    let (report, other_report) = (sb.report("svc"), sb.report("other"));
    sb.write_config(&format!("{}\n", svc.display()));
    let watched_pid = sb.spawn(&mut sb.command(&svc, &report));
    let free_pid = sb.spawn(&mut sb.command(&other, &other_report));
    report.wait_starts(1);
    other_report.wait_starts(1);
    let (mut daemon, watched) = bus.daemon(&sb, backend);
    assert_eq!(watched, 1);

    let nobody = Some(NOBODY);
    assert_eq!(bus.pid_call(nobody, "WatchProcess", free_pid), 2);
    assert_eq!(bus.pid_call(nobody, "UnwatchProcess", watched_pid), 2);
    let denied = "com.github.Armourd.Error.AccessDenied";
    for (method, pid) in [("Watch", free_pid), ("Unwatch", watched_pid)] {
        let reply = bus.send(
            nobody,
            "com.github.Armourd",
            "/com/github/armourd",
            &format!("com.github.Armourd.{method}"),
            &[&format!("int32:{pid}")],
        );
        assert_eq!(reply.error(), denied, "{method}({pid}) as uid {NOBODY}");
    }
    assert!(bus.process(free_pid).is_none(), "not watched");
    wait_running(&bus, watched_pid);

    assert!(process::kill(watched_pid, libc::SIGSEGV));
    let restart = report.wait_starts(2).remove(1);
    assert_eq!(restart.uid, [0; 3]);
    assert_eq!(
        bus.pid_call(nobody, "UnwatchProcess", restart.pid),
        2,
        "nor the restart"
    );
    daemon.assert_running();
}

/// A caller of uid 65534 watches and unwatches its own process: 0, 1,
/// restarted as 65534, then 0 and 2 for unwatching.
fn unprivileged_caller_watches_its_own_process(backend: Backend) {
    let Scene {
        sb,
        bus,
        svc,
        report,
        mut daemon,
        ..
    } = Scene::start(backend, false);
    let pid = sb.spawn(
        sb.command(&svc, &report)
            .arg("mine")
            .as_user(NOBODY, NOBODY, &[]),
    );
    let original = report.wait_starts(1).remove(0);

    let nobody = Some(NOBODY);
    assert_eq!(bus.pid_call(nobody, "WatchProcess", pid), 0);
    assert_eq!(bus.pid_call(nobody, "WatchProcess", pid), 1);
    wait_running(&bus, pid);
    assert!(process::kill(pid, libc::SIGSEGV));
    let restart = report.wait_starts(2).remove(1);
    assert_eq!(restart.uid, [NOBODY; 3], "restarted as its own user");
    assert_eq!(restart.argv, original.argv);

    wait_running(&bus, restart.pid);
    assert_eq!(bus.pid_call(nobody, "UnwatchProcess", restart.pid), 0);
    assert_eq!(bus.pid_call(nobody, "UnwatchProcess", restart.pid), 2);
    assert!(process::kill(restart.pid, libc::SIGSEGV));
    report.assert_starts_stay(2, QUIET_WINDOW, "unwatched by its owner");
    daemon.assert_running();
}

/// Every key with its type, before a crash, after a SIGSEGV and after an
/// exit with code 3.
fn get_processes_describes_each_process(backend: Backend) {
    let Scene {
        sb,
        bus,
        svc,
        report,
        mut daemon,
        ..
    } = Scene::start(backend, true);
    let before = now_us();
    let pid = sb.spawn(
        sb.command(&svc, &report)
            .args(["--name", "two words", ""])
            .env("TESTEE_EXIT_CODE", "3"),
    );
    let original = report.wait_starts(1).remove(0);

    let entry = wait_running(&bus, pid);
    let keys = [
        "argv",
        "crash_streak",
        "exe",
        "last_core_dumped",
        "last_exit_code",
        "last_signal",
        "next_restart",
        "pid",
        "restarts",
        "since",
        "state",
    ];
    assert_eq!(entry.keys(), keys);
    assert_eq!(entry.get("exe"), Some(&exe_value(&svc)));
    assert_eq!(entry.get("argv"), Some(&argv_value(&original)));
    assert_eq!(entry.get("restarts"), Some(&Value::Uint32(0)));
    assert_eq!(entry.get("last_exit_code"), Some(&Value::Int32(-1)));
    assert_eq!(entry.get("last_signal"), Some(&Value::Int32(0)));
    assert_eq!(entry.get("last_core_dumped"), Some(&Value::Bool(false)));
    let Some(&Value::Uint64(since)) = entry.get("since") else {
        panic!("since is not a uint64: {entry:?}");
    };
    // A second of slack: the daemon derives wall time from its monotonic clock.
    assert!(
        since + 1_000_000 >= before && since <= now_us() + 1_000_000,
        "since {since} is not in this test's run (started {before})"
    );

    assert!(process::kill(pid, libc::SIGSEGV));
    let core_dumped = sb.wait_child(pid, EVENT_TIMEOUT).core_dumped();
    let restart = report.wait_starts(2).remove(1);
    let entry = wait_running(&bus, restart.pid);
    assert_eq!(entry.get("restarts"), Some(&Value::Uint32(1)));
    assert_eq!(entry.get("last_signal"), Some(&Value::Int32(libc::SIGSEGV)));
    assert_eq!(entry.get("last_exit_code"), Some(&Value::Int32(-1)));
    assert_eq!(
        entry.get("last_core_dumped"),
        Some(&Value::Bool(core_dumped))
    );
    assert_eq!(entry.get("argv"), Some(&argv_value(&original)));
    assert_eq!(entry.get("exe"), Some(&exe_value(&svc)));
    assert!(
        matches!(entry.get("since"), Some(&Value::Uint64(s)) if s >= since),
        "since goes forward: {entry:?}"
    );
    assert!(bus.process(pid).is_none(), "the crashed pid is gone");

    // SIGUSR1: the testee exits with TESTEE_EXIT_CODE, kept in the restart.
    assert!(process::kill(restart.pid, libc::SIGUSR1));
    let again = report.wait_starts(3).remove(2);
    let entry = wait_running(&bus, again.pid);
    assert_eq!(entry.get("restarts"), Some(&Value::Uint32(2)));
    assert_eq!(entry.get("last_exit_code"), Some(&Value::Int32(3)));
    assert_eq!(entry.get("last_signal"), Some(&Value::Int32(0)));
    assert_eq!(entry.get("last_core_dumped"), Some(&Value::Bool(false)));
    daemon.assert_running();
}

/// ProcessExited and ProcessRestarted after a SIGSEGV and an exit code 3;
/// only ProcessExited, with will_restart false, after a SIGTERM.
fn signals_tell_of_crashes_and_restarts(backend: Backend) {
    let Scene {
        sb,
        bus,
        svc,
        report,
        mut daemon,
        ..
    } = Scene::start(backend, true);
    let monitor = bus.monitor();
    let pid = sb.spawn(sb.command(&svc, &report).env("TESTEE_EXIT_CODE", "3"));
    report.wait_starts(1);
    wait_running(&bus, pid);
    let exe = exe_value(&svc);
    let first_is = |pid: i32| move |body: &[Value]| body.first() == Some(&Value::Int32(pid));

    assert!(process::kill(pid, libc::SIGSEGV));
    let core_dumped = sb.wait_child(pid, EVENT_TIMEOUT).core_dumped();
    let first = report.wait_starts(2).remove(1);
    use Value::{Bool, Int32, Uint32};
    assert_eq!(
        monitor.wait_signal("ProcessExited", first_is(pid)),
        [
            Int32(pid),
            exe.clone(),
            Int32(-1),
            Int32(libc::SIGSEGV),
            Bool(core_dumped),
            Bool(true)
        ]
    );
    assert_eq!(
        monitor.wait_signal("ProcessRestarted", first_is(pid)),
        [Int32(pid), Int32(first.pid), exe.clone(), Uint32(1)]
    );

    assert!(process::kill(first.pid, libc::SIGUSR1));
    let second = report.wait_starts(3).remove(2);
    assert_eq!(
        monitor.wait_signal("ProcessExited", first_is(first.pid)),
        [
            Int32(first.pid),
            exe.clone(),
            Int32(3),
            Int32(0),
            Bool(false),
            Bool(true)
        ]
    );
    assert_eq!(
        monitor.wait_signal("ProcessRestarted", first_is(first.pid)),
        [Int32(first.pid), Int32(second.pid), exe.clone(), Uint32(2)]
    );

    assert!(process::kill(second.pid, libc::SIGTERM));
    assert_eq!(
        monitor.wait_signal("ProcessExited", first_is(second.pid)),
        [
            Int32(second.pid),
            exe.clone(),
            Int32(-1),
            Int32(libc::SIGTERM),
            Bool(false),
            Bool(false)
        ]
    );
    report.assert_starts_stay(3, QUIET_WINDOW, "a SIGTERM is a clean end");
    assert_eq!(
        monitor.signals("ProcessRestarted").len(),
        2,
        "no third restart"
    );
    assert_eq!(monitor.signals("ProcessExited").len(), 3);
    daemon.assert_running();
}
