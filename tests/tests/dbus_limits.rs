//! What a user may make armourd do over D-Bus (SPEC §7): a user (uid
//! 65534) watches at most `--max-user-watches` processes, only whole
//! processes of its own, never armourd; a flood of calls from the user
//! neither makes armourd hold more memory nor keeps root's calls from being
//! answered; the C daemon's own client keeps working, whatever the answer.

use std::{
    fs,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use armourd_tests::{
    backend_tests,
    bus::{control_socket, run, Background, Output, Scene, OBJECT_PATH},
    process, wait_until, Backend, Bus, LaunchExt, Value, EVENT_TIMEOUT,
};

backend_tests!(
    a_user_gets_quota_exceeded_beyond_64_watches,
    a_thread_id_is_refused,
    armourd_itself_is_refused_even_for_root,
    flood_keeps_memory_bounded_and_root_answered,
    flood_spares_root_on_the_control_socket,
    only_root_may_call_the_root_name,
    the_c_daemons_client_maps_every_answer,
);

/// The unprivileged user of these tests (`nobody`).
const NOBODY: u32 = 65534;
/// The resident memory armourd must stay under during a flood.
const MAX_RSS_KIB: u64 = 16 * 1024;

/// Calls `METHOD(int32 PID)` for each pid of argv[3:] and prints `PID
/// RESULT` for each: `ok` for an empty reply, the number of a numeric one,
/// or the last part of the D-Bus error's name and its message.
const CALLER: &str = r#"
import sys
import dbus

bus = dbus.bus.BusConnection(sys.argv[1])
obj = bus.get_object("com.github.Armourd", "/com/github/armourd", introspect=False)
armourd = dbus.Interface(obj, "com.github.Armourd")
method = getattr(armourd, sys.argv[2])
for pid in sys.argv[3:]:
    try:
        result = method(dbus.Int32(int(pid)))
        print(pid, "ok" if result is None else int(result))
    except dbus.exceptions.DBusException as e:
        print(pid, e.get_dbus_name().rsplit(".", 1)[-1], e.get_dbus_message())
"#;

/// Runs [`CALLER`] as `caller` (root if `None`): `METHOD(pid)` for each pid;
/// returns each pid's result.
fn call_each(bus: &Bus, caller: Option<u32>, method: &str, pids: &[i32]) -> Vec<String> {
    let mut cmd = bus.command("/usr/bin/python3");
    cmd.args(["-c", CALLER, bus.address(), method])
        .args(pids.iter().map(i32::to_string));
    if let Some(uid) = caller {
        cmd.as_user(uid, uid, &[]);
    }
    let out = run(&mut cmd);
    assert_eq!(out.code, Some(0), "the client failed: {out:?}");
    let lines: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), pids.len(), "one line per pid: {out:?}");
    for (line, pid) in lines.iter().zip(pids) {
        assert!(line.starts_with(&format!("{pid} ")), "{line}");
    }
    lines
        .into_iter()
        .map(|l| {
            l.split_once(' ')
                .map(|(_, r)| r.to_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// The pids `GetProcesses` lists.
fn listed(bus: &Bus) -> Vec<i32> {
    let Value::Array(entries) = bus.call("com.github.Armourd.GetProcesses", &[]).value() else {
        panic!("GetProcesses returned no array");
    };
    entries
        .iter()
        .filter_map(|e| match e.get("pid") {
            Some(Value::Int32(pid)) => Some(*pid),
            _ => None,
        })
        .collect()
}

/// 64 watches of uid 65534 are made; the 65th and 66th are refused with
/// `QuotaExceeded` (and 2 from `WatchProcess`), logged once; an unwatch
/// makes room again; root is not limited.
fn a_user_gets_quota_exceeded_beyond_64_watches(backend: Backend) {
    let Scene {
        sb,
        bus,
        svc,
        report,
        mut daemon,
        ..
    } = Scene::start(backend, false);
    let pids: Vec<i32> = (0..66)
        .map(|_| sb.spawn(sb.command(&svc, &report).as_user(NOBODY, NOBODY, &[])))
        .collect();
    report.wait_starts(pids.len());

    let results = call_each(&bus, Some(NOBODY), "Watch", &pids);
    assert!(
        results[..64].iter().all(|r| r == "ok"),
        "64 watches: {results:?}"
    );
    for result in &results[64..] {
        assert!(
            result.starts_with("QuotaExceeded uid 65534 already holds 64 watches"),
            "{result}"
        );
    }
    let code = call_each(&bus, Some(NOBODY), "WatchProcess", &pids[65..]);
    assert_eq!(code, ["2"], "WatchProcess over the quota");
    let log = daemon.log();
    let lines = log
        .lines()
        .filter(|l| !l.starts_with("armourd: debug") && l.contains("64 watches"))
        .count();
    assert_eq!(lines, 1, "the quota is logged once for the uid:\n{log}");
    let watched = listed(&bus);
    assert!(pids[..64].iter().all(|p| watched.contains(p)));
    assert!(!watched.contains(&pids[64]) && !watched.contains(&pids[65]));

    assert_eq!(call_each(&bus, Some(NOBODY), "Unwatch", &pids[..1]), ["ok"]);
    assert_eq!(
        call_each(&bus, Some(NOBODY), "Watch", &pids[64..65]),
        ["ok"],
        "an unwatch makes room"
    );
    assert_eq!(
        call_each(&bus, None, "Watch", &pids[65..]),
        ["ok"],
        "root is not limited"
    );
    daemon.assert_running();
}

/// Starts a thread, prints `PID TID`, then sleeps until killed.
const THREADED: &str = r#"
import os, sys, threading, time
thread = threading.Thread(target=time.sleep, args=(600,), daemon=True)
thread.start()
print(os.getpid(), thread.native_id, flush=True)
time.sleep(600)
"#;

/// A thread id of the user's own process is refused (`Failed`, or 2),
/// not listed; the process itself may be watched.
fn a_thread_id_is_refused(backend: Backend) {
    let Scene {
        sb: _sb,
        bus,
        mut daemon,
        ..
    } = Scene::start(backend, false);
    let mut cmd = bus.command("/usr/bin/python3");
    cmd.args(["-c", THREADED]).as_user(NOBODY, NOBODY, &[]);
    let threaded = Background::spawn(&mut cmd);
    threaded.wait_stdout("pid and thread id", |t| t.ends_with('\n'));
    let ids: Vec<i32> = threaded
        .stdout()
        .split_whitespace()
        .map(|w| w.parse().expect("a number"))
        .collect();
    let (pid, tid) = (ids[0], ids[1]);
    assert_ne!(pid, tid);

    let refused = call_each(&bus, Some(NOBODY), "Watch", &[tid]).remove(0);
    assert!(
        refused.starts_with(&format!(
            "Failed cannot watch process {tid}: it is a thread of process {pid}"
        )),
        "{refused}"
    );
    assert_eq!(call_each(&bus, Some(NOBODY), "WatchProcess", &[tid]), ["2"]);
    assert_eq!(
        call_each(&bus, None, "Watch", &[tid])[0].split(' ').next(),
        Some("Failed"),
        "root too"
    );
    assert!(!listed(&bus).contains(&tid));
    assert_eq!(call_each(&bus, Some(NOBODY), "Watch", &[pid]), ["ok"]);
    assert_eq!(call_each(&bus, Some(NOBODY), "Unwatch", &[pid]), ["ok"]);
    daemon.assert_running();
}

/// Root's `Watch` of armourd's pid (or of any of its threads) is refused,
/// `WatchProcess` answers 2; a later restart is listed once, counted on.
fn armourd_itself_is_refused_even_for_root(backend: Backend) {
    let Scene {
        sb,
        bus,
        svc,
        report,
        mut daemon,
        ..
    } = Scene::start(backend, true);
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);

    let own = daemon.pid();
    let tids: Vec<i32> = fs::read_dir(format!("/proc/{own}/task"))
        .expect("armourd's threads")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    assert!(tids.contains(&own));
    for result in call_each(&bus, None, "Watch", &tids) {
        assert!(
            result.starts_with("Failed cannot watch process"),
            "{result}"
        );
    }
    let mine = call_each(&bus, None, "Watch", &[own]).remove(0);
    assert!(mine.contains("armourd itself"), "{mine}");
    assert_eq!(call_each(&bus, None, "WatchProcess", &[own]), ["2"]);
    assert!(!listed(&bus).contains(&own));

    assert!(process::kill(pid, libc::SIGSEGV));
    let restart = report.wait_starts(2).remove(1);
    assert!(
        wait_until(EVENT_TIMEOUT, || listed(&bus) == [restart.pid]),
        "the restart is listed once and alone: {:?}",
        listed(&bus)
    );
    let Value::Array(entries) = bus.call("com.github.Armourd.GetProcesses", &[]).value() else {
        panic!("no array");
    };
    assert_eq!(entries[0].get("restarts"), Some(&Value::Uint32(1)));
    daemon.assert_running();
}

/// Opens argv[2] connections, prints `connected`, then sends each
/// argv[3] `GetProcesses` calls, half the connections asking for no reply,
/// and never reads a reply; prints `sent` and keeps the connections open.
const FLOODER: &str = r#"
import sys, time
import dbus, dbus.lowlevel

address, conns, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buses = [dbus.bus.BusConnection(address) for _ in range(conns)]
print("connected", flush=True)
for _ in range(calls):
    for n, bus in enumerate(buses):
        msg = dbus.lowlevel.MethodCallMessage(
            "com.github.Armourd", "/com/github/armourd", "com.github.Armourd", "GetProcesses")
        msg.set_no_reply(n % 2 == 1)
        bus.send_message(msg)
print("sent", flush=True)
time.sleep(600)
"#;

/// armourd's resident memory in KiB (`VmRSS`).
fn rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples a process's VmRSS every few milliseconds until dropped;
/// remembers the highest.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: i32) -> RssSampler {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (done, high) = (Arc::clone(&stop), Arc::clone(&peak));
        let thread = std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    high.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the highest VmRSS seen, in KiB.
    fn peak(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// How root calls during a flood.
#[derive(Clone, Copy, Debug)]
enum RootVia {
    /// `ListProcesses` through the bus the flood goes through.
    Bus,
    /// `armourctl list` on armourd's control socket, past the bus.
    ControlSocket,
}

/// 40 connections of uid 65534 send 1,500 `GetProcesses` each (60,000
/// calls, half of them asking for no reply) and read no reply, while 20
/// watched processes with long command lines make each reply large; root's
/// `ListProcesses` is answered all along, and armourd's VmRSS stays under
/// 16 MiB.
fn flood_keeps_memory_bounded_and_root_answered(backend: Backend) {
    flood(backend, RootVia::Bus);
}

/// The same flood; root's `armourctl list` on the control socket is
/// answered all along and lists every watched process.
fn flood_spares_root_on_the_control_socket(backend: Backend) {
    flood(backend, RootVia::ControlSocket);
}

/// The pids of `armourctl list`'s table (its first column).
fn pids_of_list(table: &str) -> Vec<i32> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

fn flood(backend: Backend, via: RootVia) {
    let Scene {
        sb,
        bus,
        svc,
        report,
        mut daemon,
        ..
    } = Scene::start(backend, true);
    let long = "x".repeat(2000);
    let pids: Vec<i32> = (0..20)
        .map(|_| sb.spawn(sb.command(&svc, &report).arg(&long)))
        .collect();
    report.wait_starts(pids.len());
    assert!(
        wait_until(EVENT_TIMEOUT, || listed(&bus).len() == pids.len()),
        "armourd watches the 20 processes"
    );

    let sampler = RssSampler::start(daemon.pid());
    let mut cmd = bus.command("/usr/bin/python3");
    cmd.args(["-c", FLOODER, bus.address(), "40", "1500"])
        .args(std::env::var("FLOOD_MODE").ok())
        .as_user(NOBODY, NOBODY, &[]);
    let flooder = Background::spawn(&mut cmd);
    flooder.wait_stdout("the flooder's connections", |t| t.contains("connected"));
    let exe = svc.display().to_string();
    let mut latencies = Vec::new();
    let mut after_sent = 0;
    while after_sent < 3 {
        if flooder.stdout().contains("sent") {
            after_sent += 1;
        }
        let began = Instant::now();
        match via {
            RootVia::Bus => {
                let list = bus.call("com.github.Armourd.ListProcesses", &[]).value();
                latencies.push(began.elapsed());
                assert!(
                    matches!(list.get(&exe), Some(Value::Array(p)) if p.len() == pids.len()),
                    "root's ListProcesses lacks the {} pids of {exe}: {list:?}",
                    pids.len()
                );
            }
            RootVia::ControlSocket => {
                let out = run(&mut bus.armourctl_at(&control_socket(&sb), &["list"]));
                latencies.push(began.elapsed());
                assert_eq!(out.code, Some(0), "root's armourctl list: {out:?}");
                let mut listed = pids_of_list(&out.stdout);
                listed.sort_unstable();
                let mut expected = pids.clone();
                expected.sort_unstable();
                assert_eq!(listed, expected, "root's armourctl list: {}", out.stdout);
            }
        }
    }
    let peak = sampler.peak();
    // Not asserted (timings belong in `cargo xtask bench`); shown with --nocapture.
    eprintln!(
        "{} root calls ({via:?}) during the flood took {:?}; armourd's peak VmRSS {peak} KiB",
        latencies.len(),
        latencies
    );
    assert!(
        peak < MAX_RSS_KIB,
        "armourd's VmRSS reached {peak} KiB under the flood (bound {MAX_RSS_KIB} KiB)"
    );
    drop(flooder);
    daemon.assert_running();
}

/// The object is served under `com.github.Armourd.Root` too: root's calls
/// there are answered; uid 65534's are refused by the shipped policy, and
/// on a bus that allows everything by armourd itself (`AccessDenied`).
fn only_root_may_call_the_root_name(backend: Backend) {
    const ROOT_NAME: &str = "com.github.Armourd.Root";
    const GET: &str = "com.github.Armourd.GetProcesses";
    for system_policy in [true, false] {
        let Scene {
            sb,
            bus,
            svc,
            report,
            mut daemon,
            ..
        } = if system_policy {
            Scene::start_with_system_policy(backend, true)
        } else {
            Scene::start(backend, true)
        };
        assert!(
            daemon.wait_log(EVENT_TIMEOUT, |log| log
                .contains(&format!("serving {ROOT_NAME}"))),
            "armourd serves {ROOT_NAME}"
        );
        let pid = sb.spawn(&mut sb.command(&svc, &report));
        report.wait_starts(1);
        daemon.wait_watching(pid);
        let root = bus.send(None, ROOT_NAME, OBJECT_PATH, GET, &[]).value();
        let Value::Array(entries) = root else {
            panic!("GetProcesses returned {root:?}");
        };
        assert!(
            entries
                .iter()
                .any(|e| e.get("pid") == Some(&Value::Int32(pid))),
            "root's GetProcesses at {ROOT_NAME} lists {pid}: {entries:?}"
        );
        let refused = bus
            .send(Some(NOBODY), ROOT_NAME, OBJECT_PATH, GET, &[])
            .error();
        let expected = if system_policy {
            "org.freedesktop.DBus.Error.AccessDenied"
        } else {
            "com.github.Armourd.Error.AccessDenied"
        };
        assert_eq!(refused, expected, "uid {NOBODY} at {ROOT_NAME}");
        daemon.assert_running();
    }
}

/// The C daemon's `client-example.py` in Python 3, as is: it knows
/// `WatchProcess` results 0, 1 and 2 only.
const C_CLIENT: &str = r#"
import sys
import dbus

WATCH_RESULTS = {0: "Success", 1: "Already watching", 2: "No Memory"}

bus = dbus.bus.BusConnection(sys.argv[1])
armourd = bus.get_object("com.github.Armourd", "/com/github/armourd")
iface = dbus.Interface(armourd, "com.github.Armourd")
for exe, pid in iface.ListProcesses().items():
    print("Process", exe, "pid", pid)
for pid in sys.argv[2:]:
    result = iface.WatchProcess(int(pid))
    print("WatchProcess(%s): %s" % (pid, WATCH_RESULTS[result]))
"#;

fn c_client(bus: &Bus, caller: Option<u32>, pids: &[i32]) -> Output {
    let mut cmd = bus.command("/usr/bin/python3");
    cmd.args(["-c", C_CLIENT, bus.address()])
        .args(pids.iter().map(i32::to_string));
    if let Some(uid) = caller {
        cmd.as_user(uid, uid, &[]);
    }
    run(&mut cmd)
}

/// As uid 65534: its own process (Success, then Already watching), a pid
/// that does not exist, root's process (No Memory, without a KeyError); as
/// root: armourd's own pid (No Memory).
fn the_c_daemons_client_maps_every_answer(backend: Backend) {
    let Scene {
        sb,
        bus,
        svc,
        report,
        mut daemon,
        ..
    } = Scene::start(backend, false);
    let mine = sb.spawn(sb.command(&svc, &report).as_user(NOBODY, NOBODY, &[]));
    let roots = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(2);

    let out = c_client(&bus, Some(NOBODY), &[mine, mine, i32::MAX, roots]);
    assert_eq!(out.code, Some(0), "the client died: {out:?}");
    let expected = [
        format!("WatchProcess({mine}): Success"),
        format!("WatchProcess({mine}): Already watching"),
        format!("WatchProcess({}): No Memory", i32::MAX),
        format!("WatchProcess({roots}): No Memory"),
    ];
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("WatchProcess"))
        .collect();
    assert_eq!(lines, expected, "{out:?}");
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log.contains(&format!(
            "watch refused to uid {NOBODY}: process {roots} belongs to uid 0"
        ))),
        "the reason is in the log"
    );

    let out = c_client(&bus, None, &[daemon.pid()]);
    assert_eq!(out.code, Some(0), "the client died: {out:?}");
    assert!(
        out.stdout
            .contains(&format!("Process {} pid {mine}", svc.display())),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains(&format!("WatchProcess({}): No Memory", daemon.pid())),
        "{out:?}"
    );
    daemon.assert_running();
}
