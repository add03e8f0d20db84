//! The clients of armourd's D-Bus interface (SPEC §7) on a private bus per
//! test: a dbus-python client like the C daemon's, `armourctl`, and
//! armourd itself when there is no bus to reach.

use std::{os::unix::process::ExitStatusExt, path::Path};

use armourd_tests::{
    backend_tests, bus::run, bus::Scene, process, wait_for, Backend, Bus, Daemon, LaunchExt,
    Sandbox, EVENT_TIMEOUT,
};

backend_tests!(
    python_client_lists_watches_and_introspects,
    armourctl_lists_watches_and_unwatches,
    armourctl_monitor_prints_crashes_and_restarts,
    without_a_bus_armourd_warns_once_and_runs_on,
);

/// Lists, watches each pid of argv[2:] and lists again, then introspects;
/// prints `list EXE TYPE PIDS…`, `end`, `watch PID CODE` and
/// `introspect FOUND`. Integer arguments are marshalled the way dbus-python
/// does after introspecting, as a C daemon client would send them.
const PYTHON_CLIENT: &str = r#"
import sys
import dbus

bus = dbus.bus.BusConnection(sys.argv[1])
armourd = bus.get_object("com.github.Armourd", "/com/github/armourd")
iface = dbus.Interface(armourd, "com.github.Armourd")

def show(processes):
    for exe, pids in sorted(processes.items()):
        if isinstance(pids, dbus.Array):
            print("list", exe, "a" + pids.signature, *sorted(int(p) for p in pids))
        else:
            print("list", exe, type(pids).__name__, int(pids))
    print("end")

show(iface.ListProcesses())
for pid in sys.argv[2:]:
    print("watch", pid, int(iface.WatchProcess(int(pid))))
show(iface.ListProcesses())
xml = armourd.Introspect(dbus_interface="org.freedesktop.DBus.Introspectable")
print("introspect", '<interface name="com.github.Armourd">' in xml
      and '<method name="WatchProcess">' in xml)
"#;

fn python_client_lists_watches_and_introspects(backend: Backend) {
    let sb = Sandbox::new();
    let bus = Bus::start(&sb);
    let (svc, one, free) = (sb.testee("svc"), sb.testee("one"), sb.testee("free"));
    let report = sb.report("all");
    sb.write_config(&format!("{}\n{}\n", svc.display(), one.display()));
    let mut svc_pids = [0; 2].map(|_| sb.spawn(&mut sb.command(&svc, &report)));
    svc_pids.sort_unstable();
    let one_pid = sb.spawn(&mut sb.command(&one, &report));
    let free_pid = sb.spawn(&mut sb.command(&free, &report));
    report.wait_starts(4);
    let (mut daemon, watched) = bus.daemon(&sb, backend);
    assert_eq!(watched, 3);

    let free_arg = free_pid.to_string();
    let out = bus.python(PYTHON_CLIENT, &[&free_arg, &free_arg]);
    assert_eq!(out.code, Some(0), "python client failed: {out:?}");
    let svc_line = format!("list {} ai {} {}", svc.display(), svc_pids[0], svc_pids[1]);
    let one_line = format!("list {} Int32 {one_pid}", one.display());
    let free_line = format!("list {} Int32 {free_pid}", free.display());
    let mut before = [one_line.clone(), svc_line.clone()];
    let mut after = [free_line, one_line, svc_line];
    before.sort();
    after.sort();
    let expected = [
        before.join("\n"),
        "end".into(),
        format!("watch {free_pid} 0"),
        format!("watch {free_pid} 1"),
        after.join("\n"),
        "end".into(),
        "introspect True".into(),
    ]
    .join("\n");
    assert_eq!(out.stdout.trim_end(), expected, "stderr: {}", out.stderr);
    daemon.assert_running();
}

/// `armourctl list` rows as words: PID, EXECUTABLE, STATE, RESTARTS, LAST EXIT.
fn list_rows(bus: &Bus) -> Vec<Vec<String>> {
    let out = run(&mut bus.armourctl(&["list"]));
    assert_eq!(out.code, Some(0), "armourctl list: {out:?}");
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["PID", "EXECUTABLE", "STATE", "RESTARTS", "LAST", "EXIT"]
    );
    lines
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            assert!(words.len() >= 5, "short row {l:?}");
            let mut row: Vec<String> = words[..4].iter().map(|w| w.to_string()).collect();
            row.push(words[4..].join(" "));
            row
        })
        .collect()
}

/// Runs `armourctl ARGS…` (as `caller` if given); returns exit code,
/// stdout and stderr.
fn armourctl(bus: &Bus, caller: Option<u32>, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = bus.armourctl(args);
    if let Some(uid) = caller {
        cmd.as_user(uid, uid, &[]);
    }
    let out = run(&mut cmd);
    (out.code, out.stdout, out.stderr)
}

fn armourctl_lists_watches_and_unwatches(backend: Backend) {
    let sb = Sandbox::new();
    let bus = Bus::start(&sb);
    let (code, _, stderr) = armourctl(&bus, None, &["list"]);
    assert_eq!(code, Some(1), "no armourd on the bus yet");
    assert!(stderr.contains("armourd is not running"), "{stderr}");

    let (svc, free, other) = (sb.testee("svc"), sb.testee("free"), sb.testee("other"));
    let report = sb.report("all");
    sb.write_config(&format!("{}\n", svc.display()));
    let svc_pid = sb.spawn(&mut sb.command(&svc, &report));
    let free_pid = sb.spawn(&mut sb.command(&free, &report));
    let other_pid = sb.spawn(&mut sb.command(&other, &report));
    report.wait_starts(3);
    let (mut daemon, _) = bus.daemon(&sb, backend);
    let (free_arg, other_arg) = (free_pid.to_string(), other_pid.to_string());

    let ok = (Some(0), format!("watch {free_pid}: ok\n"), String::new());
    assert_eq!(armourctl(&bus, None, &["watch", &free_arg]), ok);
    let (code, _, stderr) = armourctl(&bus, None, &["watch", &free_arg]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        format!(
            "armourctl: watch {free_pid}: process {free_pid} is already watched; nothing to do\n"
        )
    );
    let (code, _, stderr) = armourctl(&bus, None, &["watch", "2147483647"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no process 2147483647"), "{stderr}");
    let (code, _, stderr) = armourctl(&bus, Some(65534), &["watch", &other_arg]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("belongs to uid 0: only root may watch"),
        "{stderr}"
    );

    assert!(process::kill(svc_pid, libc::SIGSEGV));
    let last_exit = if sb.wait_child(svc_pid, EVENT_TIMEOUT).core_dumped() {
        "SIGSEGV (core)"
    } else {
        "SIGSEGV"
    };
    let restart = report.wait_starts(4).remove(3);
    let rows = wait_for(EVENT_TIMEOUT, || {
        let rows = list_rows(&bus);
        rows.iter()
            .any(|r| r[0] == restart.pid.to_string() && r[2] == "running")
            .then_some(rows)
    })
    .unwrap_or_else(|| panic!("armourctl list never shows the restart {}", restart.pid));
    let row = |pid: i32, exe: &Path, state, restarts, last: &str| {
        [
            pid.to_string(),
            exe.display().to_string(),
            state,
            restarts,
            last.to_owned(),
        ]
        .map(String::from)
        .to_vec()
    };
    let mut expected = vec![
        row(restart.pid, &svc, "running".into(), "1".into(), last_exit),
        row(free_pid, &free, "running".into(), "0".into(), "-"),
    ];
    expected.sort();
    let mut rows = rows;
    rows.sort();
    assert_eq!(rows, expected, "armourctl list");

    let ok = (Some(0), format!("unwatch {free_pid}: ok\n"), String::new());
    assert_eq!(armourctl(&bus, None, &["unwatch", &free_arg]), ok);
    let (code, _, stderr) = armourctl(&bus, None, &["unwatch", &free_arg]);
    assert_eq!(code, Some(1), "not watched any more: {stderr}");
    assert_eq!(
        stderr,
        format!("armourctl: unwatch {free_pid}: process {free_pid} is not watched; nothing to unwatch\n")
    );
    let (code, _, stderr) = armourctl(&bus, None, &["unwatch", "2147483647"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no process 2147483647"), "{stderr}");
    assert!(
        list_rows(&bus).iter().all(|r| r[0] != free_arg),
        "unwatched: no longer listed"
    );
    daemon.assert_running();
}

fn armourctl_monitor_prints_crashes_and_restarts(backend: Backend) {
    let Scene {
        sb,
        bus,
        svc,
        report,
        mut daemon,
        ..
    } = Scene::start(backend, true);
    let monitor = armourd_tests::bus::Background::spawn(&mut bus.armourctl(&["monitor"]));
    monitor.wait_stderr("monitoring line", |t| t.contains("monitoring armourd"));
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);

    assert!(process::kill(pid, libc::SIGSEGV));
    let core = if sb.wait_child(pid, EVENT_TIMEOUT).core_dumped() {
        " (core)"
    } else {
        ""
    };
    let restart = report.wait_starts(2).remove(1);
    let exe = svc.display();
    let exited = format!("exited    pid {pid} {exe}: SIGSEGV{core}, restarting\n");
    let restarted = format!("restarted pid {pid} -> {} {exe} (restart 1)\n", restart.pid);
    monitor.wait_stdout("restart line", |t| t.contains(&restarted));
    let text = monitor.stdout();
    let at = |line: &str| {
        text.find(line)
            .unwrap_or_else(|| panic!("no {line:?} in:\n{text}"))
    };
    assert!(
        at(&exited) < at(&restarted),
        "the exit comes first:\n{text}"
    );

    assert!(process::kill(restart.pid, libc::SIGTERM));
    let clean = format!(
        "exited    pid {} {exe}: SIGTERM, not restarting\n",
        restart.pid
    );
    monitor.wait_stdout("clean exit line", |t| t.contains(&clean));
    daemon.assert_running();
}

/// `--dbus session` with a bus address where no bus listens: one warning,
/// then armourd watches and restarts as usual.
fn without_a_bus_armourd_warns_once_and_runs_on(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    sb.write_config(&format!("{}\n", svc.display()));
    let address = format!("unix:path={}", sb.path("no-bus.sock").display());
    let (mut daemon, _) = Daemon::ready_with(
        &sb,
        backend,
        &["--dbus", "session"],
        &[("DBUS_SESSION_BUS_ADDRESS", &address)],
    );
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGSEGV));
    let restart = report.wait_starts(2).remove(1);
    assert!(process::kill(restart.pid, libc::SIGKILL));
    report.wait_starts(3);
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log.contains("(restart 2)")),
        "the second restart is not logged:\n{}",
        daemon.log()
    );

    let log = daemon.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("armourd: warn"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning, about the bus:\n{log}");
    assert!(warnings[0].contains("D-Bus"), "{}", warnings[0]);
    daemon.assert_running();
}
