//! Tests of the pure parts, and of the service on a private `dbus-daemon`
//! as `dbus-send`, python3-dbus and zbus clients see it.

use std::{
    io::{BufRead, BufReader},
    pin::Pin,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use zbus::export::futures_core::Stream;

use super::{process_info::Pids, service::serve};

/// The name of armourd's interface.
const INTERFACE: &str = "com.github.Armourd";

use super::*;

fn process(pid: i32, exe: &str, state: &'static str) -> ProcessInfo {
    ProcessInfo {
        pid,
        exe: exe.into(),
        argv: vec![exe.into(), "--flag".into()],
        state,
        restarts: 2,
        last_exit_code: -1,
        last_signal: libc::SIGSEGV,
        last_core_dumped: true,
        since_us: 1_700_000_000_000_000,
        crash_streak: 0,
        next_restart_us: 0,
    }
}

fn processes() -> Vec<ProcessInfo> {
    vec![
        process(10, "/usr/bin/a", "running"),
        process(12, "/usr/bin/b", "running"),
        process(11, "/usr/bin/b", "running"),
        process(13, "/usr/bin/c", "backoff"),
    ]
}

#[test]
fn list_groups_running_pids_by_executable() {
    let grouped = group_by_exe(&processes());
    assert_eq!(grouped.len(), 2, "c has no live pid: {grouped:?}");
    assert_eq!(grouped["/usr/bin/a"], Pids::One(10));
    assert_eq!(grouped["/usr/bin/b"], Pids::Many(vec![11, 12]));
}

#[test]
fn one_pid_is_int32_and_several_are_an_array() {
    assert_eq!(Variant::from(Pids::One(10)).value_signature(), "i");
    assert_eq!(
        Variant::from(Pids::Many(vec![11, 12])).value_signature(),
        "ai"
    );
}

#[test]
fn root_or_the_owner_may_watch() {
    assert!(authorize(0, 1000));
    assert!(authorize(1000, 1000));
    assert!(!authorize(1000, 0));
    assert!(!authorize(1000, 1001));
}

#[test]
fn watch_process_answers_only_the_c_daemons_three_codes() {
    let pid = 7;
    let refusals = [
        Refusal::NoSuchProcess { pid },
        Refusal::AccessDenied { pid, owner: 0 },
        Refusal::NotWatched { pid },
        Refusal::QuotaExceeded {
            uid: 1000,
            limit: 64,
        },
        Refusal::Failed {
            pid,
            reason: "a kernel thread".into(),
        },
    ];
    assert_eq!(WatchResult::of_watch(&Ok(())).code(), 0);
    let already = Err(Refusal::AlreadyWatched { pid });
    assert_eq!(WatchResult::of_watch(&already).code(), 1);
    for refusal in refusals {
        assert_eq!(WatchResult::of_watch(&Err(refusal)).code(), 2);
    }
}

#[test]
fn unwatch_process_answers_0_or_2() {
    assert_eq!(WatchResult::of_unwatch(&Ok(())).code(), 0);
    for refusal in [
        Refusal::NoSuchProcess { pid: 7 },
        Refusal::NotWatched { pid: 7 },
        Refusal::AccessDenied { pid: 7, owner: 0 },
    ] {
        assert_eq!(WatchResult::of_unwatch(&Err(refusal)).code(), 2);
    }
}

#[test]
fn refusals_become_named_errors_that_say_what_to_do() {
    use zbus::DBusError as _;
    let cases = [
        (
            Refusal::NoSuchProcess { pid: 7 },
            "NoSuchProcess",
            "check the pid",
        ),
        (
            Refusal::AccessDenied { pid: 7, owner: 0 },
            "AccessDenied",
            "only root may",
        ),
        (
            Refusal::AlreadyWatched { pid: 7 },
            "AlreadyWatched",
            "nothing to do",
        ),
        (
            Refusal::NotWatched { pid: 7 },
            "NotWatched",
            "nothing to unwatch",
        ),
        (
            Refusal::QuotaExceeded { uid: 5, limit: 64 },
            "QuotaExceeded",
            "--max-user-watches",
        ),
        (
            Refusal::Failed {
                pid: 7,
                reason: "it is armourd itself".into(),
            },
            "Failed",
            "armourd itself",
        ),
    ];
    for (refusal, name, advice) in cases {
        assert_eq!(refusal.name(), name);
        let error = CallError::from(refusal);
        assert_eq!(
            error.name().as_str(),
            format!("com.github.Armourd.Error.{name}")
        );
        let text = error.description().unwrap_or_default().to_owned();
        assert!(text.contains(advice), "{name}: {text}");
    }
    let limits = CallError::from(Refused::AllUsers);
    assert_eq!(
        limits.name().as_str(),
        "com.github.Armourd.Error.LimitsExceeded"
    );
}

#[test]
fn process_dict_has_the_specs_keys_and_types() {
    let dict = process(10, "/usr/bin/a", "running").to_dict();
    let mut types: Vec<String> = dict
        .iter()
        .map(|(k, v)| format!("{k}:{}", v.value_signature()))
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "argv:as",
            "crash_streak:u",
            "exe:s",
            "last_core_dumped:b",
            "last_exit_code:i",
            "last_signal:i",
            "next_restart:t",
            "pid:i",
            "restarts:u",
            "since:t",
            "state:s",
        ]
    );
}

#[test]
fn process_dict_reads_back() {
    let p = process(10, "/usr/bin/a", "restarting");
    let dict: HashMap<String, OwnedVariant> = p
        .to_dict()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.try_into_owned().unwrap()))
        .collect();
    assert_eq!(ProcessInfo::from_dict(&dict).unwrap(), p);
    let mut missing = dict;
    missing.remove("since");
    assert!(matches!(
        ProcessInfo::from_dict(&missing),
        Err(DbusError::BadEntry { key: "since" })
    ));
}

/// A private bus: `dbus-daemon --session`, killed on drop.
struct TestBus {
    daemon: Child,
    address: String,
}

impl TestBus {
    fn start() -> TestBus {
        let mut daemon = Command::new("dbus-daemon")
            .args(["--session", "--print-address", "--nofork", "--nopidfile"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot run dbus-daemon (Debian package dbus-daemon)");
        let mut address = String::new();
        let stdout = daemon.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut address)
            .expect("dbus-daemon prints its address");
        let address = address.trim().to_owned();
        assert!(!address.is_empty(), "dbus-daemon printed no address");
        TestBus { daemon, address }
    }

    async fn connect(&self) -> Connection {
        connection::Builder::address(self.address.as_str())
            .build()
            .await
            .expect("connect to the private bus")
    }

    /// Runs a client program in the blocking pool, so the service answers meanwhile.
    async fn run(&self, program: &str, args: Vec<String>) -> Output {
        let program = program.to_owned();
        tokio::task::spawn_blocking(move || {
            Command::new(&program)
                .args(&args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
        })
        .await
        .expect("client task")
    }

    /// `dbus-send --print-reply` of `method` (`Interface.Member`) with `args`.
    async fn send(&self, method: &str, args: &[&str]) -> Output {
        let mut argv = vec![
            format!("--bus={}", self.address),
            "--print-reply".into(),
            "--reply-timeout=5000".into(),
            format!("--dest={BUS_NAME}"),
            OBJECT_PATH.into(),
            method.into(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        self.run("dbus-send", argv).await
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// The uids of the Watch requests the fake daemon got.
type Callers = mpsc::UnboundedReceiver<u32>;

/// Answers requests as a daemon watching `processes` would; pid 1 belongs to
/// root, other pids to uid 1000 (so a non-root caller is denied pid 1).
fn fake_daemon(processes: Vec<ProcessInfo>) -> (Queues, Callers) {
    let (queues, mut incoming) = queues();
    let (callers, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(request) = incoming.next().await {
            match request {
                Request::Processes { reply } => {
                    let _ = reply.send(processes.clone());
                }
                Request::Watch {
                    pid,
                    caller_uid,
                    reply,
                    ..
                }
                | Request::Unwatch {
                    pid,
                    caller_uid,
                    reply,
                    ..
                } => {
                    callers.send(caller_uid).unwrap();
                    let owner = if pid == 1 { 0 } else { 1000 };
                    let result = if processes.iter().any(|p| p.pid == pid) {
                        Err(Refusal::AlreadyWatched { pid })
                    } else if pid > 4_194_304 {
                        Err(Refusal::NoSuchProcess { pid })
                    } else if !authorize(caller_uid, owner) {
                        Err(Refusal::AccessDenied { pid, owner })
                    } else {
                        Ok(())
                    };
                    let _ = reply.send(result);
                }
                Request::Reset { reply, .. } => {
                    let _ = reply.send(1);
                }
                Request::Reload { reply } => {
                    let _ = reply.send(Vec::new());
                }
            }
        }
    });
    (queues, seen)
}

async fn serve_on(bus: &TestBus, queues: Queues) -> Result<Service, DbusError> {
    let lookup = bus.connect().await;
    serve(
        bus.connect().await,
        lookup,
        Bus::Session,
        "proc-connector",
        queues,
    )
    .await
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `dbus-send` output with each run of blanks made one space.
fn flat(output: &str) -> String {
    output.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn error_of(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "call succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root and a private dbus-daemon (run as root, or `cargo xtask test`)"
)]
async fn dbus_send_sees_methods_properties_and_errors() {
    let bus = TestBus::start();
    let (queues, mut callers) = fake_daemon(processes());
    let _service = serve_on(&bus, queues).await.unwrap();
    let iface = |member: &str| format!("{INTERFACE}.{member}");

    let list = flat(&stdout(&bus.send(&iface("ListProcesses"), &[]).await));
    assert!(
        list.contains(r#"string "/usr/bin/a" variant int32 10"#),
        "{list}"
    );
    assert!(
        list.contains(r#"string "/usr/bin/b" variant array [ int32 11 int32 12 ]"#),
        "{list}"
    );
    assert!(!list.contains("/usr/bin/c"), "{list}");

    let watch = stdout(&bus.send(&iface("WatchProcess"), &["int32:10"]).await);
    assert!(watch.contains("uint32 1"), "{watch}");
    let uid = nix::unistd::getuid().as_raw();
    assert_eq!(
        callers.recv().await,
        Some(uid),
        "the caller's uid reaches the daemon"
    );
    let unwatch = stdout(
        &bus.send(&iface("UnwatchProcess"), &["int32:99999999"])
            .await,
    );
    assert!(unwatch.contains("uint32 2"), "{unwatch}");
    let error = error_of(&bus.send(&iface("Watch"), &["int32:99999999"]).await);
    assert!(
        error.contains("com.github.Armourd.Error.NoSuchProcess: no process 99999999"),
        "{error}"
    );
    let error = error_of(&bus.send(&iface("Unwatch"), &["int32:10"]).await);
    assert!(
        error.contains("com.github.Armourd.Error.AlreadyWatched"),
        "{error}"
    );
    let ok = bus.send(&iface("Watch"), &["int32:77"]).await;
    assert_eq!(stdout(&ok).lines().count(), 1, "no value: {ok:?}");

    let get = flat(&stdout(&bus.send(&iface("GetProcesses"), &[]).await));
    for needle in [
        r#"string "since""#,
        "variant uint64 1700000000000000",
        r#"string "--flag""#,
    ] {
        assert!(get.contains(needle), "{needle} not in {get}");
    }

    let intro = stdout(
        &bus.send("org.freedesktop.DBus.Introspectable.Introspect", &[])
            .await,
    );
    for needle in [
        r#"<interface name="com.github.Armourd">"#,
        r#"<method name="ListProcesses">"#,
        r#"<method name="Watch">"#,
        r#"<method name="Unwatch">"#,
        r#"<arg name="pid" type="i" direction="in"/>"#,
        r#"<arg type="a{sv}" direction="out"/>"#,
        r#"<arg type="aa{sv}" direction="out"/>"#,
        r#"<signal name="ProcessExited">"#,
        r#"<arg name="will_restart" type="b"/>"#,
        r#"<property name="Backend" type="s" access="read">"#,
        r#"<interface name="org.freedesktop.DBus.Peer">"#,
    ] {
        assert!(intro.contains(needle), "{needle} not in {intro}");
    }

    let props = "org.freedesktop.DBus.Properties.Get";
    let backend = flat(&stdout(
        &bus.send(props, &["string:com.github.Armourd", "string:Backend"])
            .await,
    ));
    assert!(
        backend.contains(r#"variant string "proc-connector""#),
        "{backend}"
    );
    let version = stdout(
        &bus.send(props, &["string:com.github.Armourd", "string:Version"])
            .await,
    );
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    let bad = error_of(&bus.send(&iface("WatchProcess"), &["string:12"]).await);
    assert!(
        bad.contains("org.freedesktop.DBus.Error.InvalidArgs"),
        "{bad}"
    );
    let none = error_of(&bus.send(&iface("WatchProcess"), &[]).await);
    assert!(
        none.contains("org.freedesktop.DBus.Error.InvalidArgs"),
        "{none}"
    );
    let unknown = error_of(&bus.send(&iface("Reboot"), &[]).await);
    assert!(
        unknown.contains("org.freedesktop.DBus.Error.UnknownMethod"),
        "{unknown}"
    );
}

const PYTHON_CLIENT: &str = r#"
import sys, dbus
bus = dbus.bus.BusConnection(sys.argv[1])
obj = bus.get_object("com.github.Armourd", "/com/github/armourd")
armourd = dbus.Interface(obj, "com.github.Armourd")
listed = armourd.ListProcesses()
assert isinstance(listed["/usr/bin/a"], dbus.Int32), repr(listed)
assert isinstance(listed["/usr/bin/b"], dbus.Array) and list(listed["/usr/bin/b"]) == [11, 12], repr(listed)
assert armourd.WatchProcess(dbus.Int32(77)) == 0
procs = armourd.GetProcesses()
assert len(procs) == 4 and procs[0]["exe"] == "/usr/bin/a" and procs[0]["last_core_dumped"], repr(procs)
assert isinstance(procs[0]["since"], dbus.UInt64) and isinstance(procs[0]["restarts"], dbus.UInt32)
props = obj.GetAll("com.github.Armourd", dbus_interface="org.freedesktop.DBus.Properties")
assert props["Backend"] == "proc-connector", repr(props)
obj.Ping(dbus_interface="org.freedesktop.DBus.Peer")
try:
    # signature= keeps python-dbus from checking the type against Introspect itself.
    armourd.WatchProcess("x", signature="s")
    sys.exit("WatchProcess accepted a string")
except dbus.exceptions.DBusException as e:
    assert e.get_dbus_name() == "org.freedesktop.DBus.Error.InvalidArgs", e.get_dbus_name()
print("ok")
"#;

#[tokio::test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root and a private dbus-daemon (run as root, or `cargo xtask test`)"
)]
async fn python_dbus_client_gets_typed_answers() {
    let bus = TestBus::start();
    let (queues, _callers) = fake_daemon(processes());
    let _service = serve_on(&bus, queues).await.unwrap();
    let args = vec!["-c".into(), PYTHON_CLIENT.into(), bus.address.clone()];
    let out = stdout(&bus.run("/usr/bin/python3", args).await);
    assert_eq!(out.trim(), "ok");
}

async fn next_within_5s<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    let next = std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx));
    tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .expect("a signal within 5 s")
        .expect("the stream goes on")
}

#[tokio::test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root and a private dbus-daemon (run as root, or `cargo xtask test`)"
)]
async fn proxy_receives_signals_and_reads_processes() {
    let bus = TestBus::start();
    let (queues, _callers) = fake_daemon(processes());
    let service = serve_on(&bus, queues).await.unwrap();
    let client = bus.connect().await;
    let proxy = ArmourdProxy::new(&client).await.unwrap();
    let mut exited = proxy.receive_process_exited().await.unwrap();
    let mut restarted = proxy.receive_process_restarted().await.unwrap();

    service
        .process_exited(10, "/usr/bin/a", -1, libc::SIGSEGV, true, true)
        .await;
    service.process_restarted(10, 20, "/usr/bin/a", 3).await;
    let signal = next_within_5s(&mut exited).await;
    let args = signal.args().unwrap();
    assert_eq!(
        (
            args.pid,
            args.exe.as_str(),
            args.exit_code,
            args.signal,
            args.core_dumped,
            args.will_restart
        ),
        (10, "/usr/bin/a", -1, libc::SIGSEGV, true, true)
    );
    let signal = next_within_5s(&mut restarted).await;
    let args = signal.args().unwrap();
    assert_eq!(
        (args.old_pid, args.new_pid, args.exe.as_str(), args.restarts),
        (10, 20, "/usr/bin/a", 3)
    );

    let entries = proxy.get_processes().await.unwrap();
    let read: Vec<ProcessInfo> = entries
        .iter()
        .map(|e| ProcessInfo::from_dict(e).unwrap())
        .collect();
    assert_eq!(read, processes());
    assert_eq!(proxy.backend().await.unwrap(), "proc-connector");
}

#[tokio::test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root and a private dbus-daemon (run as root, or `cargo xtask test`)"
)]
async fn a_second_service_does_not_take_the_name() {
    let bus = TestBus::start();
    let (queues, _callers) = fake_daemon(Vec::new());
    let first = serve_on(&bus, queues.clone()).await.unwrap();
    let second = serve_on(&bus, queues.clone()).await;
    assert!(
        matches!(second, Err(DbusError::NameTaken { .. })),
        "{:?}",
        second.err()
    );
    drop(first);
    // The name is free again once the first service is gone.
    let mut third = serve_on(&bus, queues.clone()).await;
    for _ in 0..50 {
        if third.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        third = serve_on(&bus, queues.clone()).await;
    }
    third.unwrap();
}

#[tokio::test]
#[cfg_attr(
    unprivileged,
    ignore = "needs root and a private dbus-daemon (run as root, or `cargo xtask test`)"
)]
async fn calls_fail_at_once_when_the_daemon_is_gone() {
    let bus = TestBus::start();
    let (queues, gone) = queues();
    drop(gone);
    let _service = serve_on(&bus, queues).await.unwrap();
    let client = bus.connect().await;
    let proxy = ArmourdProxy::new(&client).await.unwrap();
    let err = proxy.list_processes().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("com.github.Armourd.Error.Unavailable"),
        "{err}"
    );
}
