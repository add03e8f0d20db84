//! armourd's control socket (SPEC §7): the D-Bus interface for root alone,
//! past the bus. Only root reaches it (a folder of mode 0700, a socket of
//! mode 0600, and the peer's uid checked at once); it serves without a
//! bus; a socket an armourd left behind is replaced, one another armourd
//! serves and anything that is no socket are left alone; it is gone when
//! armourd stops.

use std::{
    fs,
    os::unix::{
        fs::{FileTypeExt, PermissionsExt},
        net::UnixListener,
    },
    path::Path,
    process::Command,
};

use armourd_tests::{
    armourctl_bin, backend_tests,
    bus::{control_socket, run, Output, Scene},
    Backend, Daemon, LaunchExt, Sandbox, EVENT_TIMEOUT,
};

backend_tests!(
    only_root_reaches_the_control_socket,
    the_control_socket_serves_without_a_bus,
    a_left_socket_is_replaced_and_others_are_left_alone,
);

/// The unprivileged user of these tests (`nobody`).
const NOBODY: u32 = 65534;

/// `armourctl --control-socket SOCKET ARGS…` as root, run to its end.
fn armourctl(socket: &Path, args: &[&str]) -> Output {
    run(Command::new(armourctl_bin())
        .arg("--control-socket")
        .arg(socket)
        .args(args)
        .env_clear()
        .current_dir("/"))
}

/// The pids in `armourctl list`'s table (its first column).
fn listed(out: &Output) -> Vec<i32> {
    assert_eq!(out.code, Some(0), "armourctl list: {out:?}");
    out.stdout
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The socket is 0600 in a folder armourd made 0700: uid 65534 cannot
/// connect; with both opened to everyone it connects, is closed at once
/// and the log says so; root's `list` and `status` are answered all along.
fn only_root_reaches_the_control_socket(backend: Backend) {
    let Scene {
        sb,
        svc,
        report,
        mut daemon,
        ..
    } = Scene::start(backend, true);
    let socket = control_socket(&sb);
    let folder = socket.parent().expect("the socket has a folder");
    let mode = |path: &Path| fs::metadata(path).map(|m| m.permissions().mode() & 0o7777);
    assert_eq!(mode(folder).ok(), Some(0o700), "{}", folder.display());
    assert_eq!(mode(&socket).ok(), Some(0o600), "{}", socket.display());
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);

    let as_nobody = |args: &[&str]| {
        run(Command::new(armourctl_bin())
            .arg("--control-socket")
            .arg(&socket)
            .args(args)
            .env_clear()
            .current_dir("/")
            .as_user(NOBODY, NOBODY, &[]))
    };
    let refused = as_nobody(&["list"]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("Permission denied"),
        "uid {NOBODY} is refused by the socket's mode: {refused:?}"
    );

    fs::set_permissions(folder, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    for _ in 0..3 {
        let closed = as_nobody(&["list"]);
        assert_eq!(closed.code, Some(1), "{closed:?}");
        assert!(
            !closed.stdout.contains(&pid.to_string()),
            "uid {NOBODY} got an answer: {closed:?}"
        );
    }
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log
            .contains(&format!("control socket: uid {NOBODY} connected"))),
        "armourd says a uid other than root connected"
    );
    assert_eq!(
        daemon.log().matches("control socket: uid").count(),
        1,
        "said once, however often it connects"
    );

    assert_eq!(listed(&armourctl(&socket, &["list"])), vec![pid]);
    let status = armourctl(&socket, &["status"]);
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(status.stdout.contains("running"), "{status:?}");
    daemon.assert_running();
}

/// With `--dbus none`, root still lists, reloads and watches through the
/// control socket.
fn the_control_socket_serves_without_a_bus(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    sb.write_config(&format!("{}\n", svc.display()));
    let socket = sb.path("ctl/control");
    let (mut daemon, _) = Daemon::ready_with(
        &sb,
        backend,
        &[
            "--dbus",
            "none",
            "--control-socket",
            socket.to_str().unwrap(),
        ],
        &[],
    );
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);
    assert_eq!(listed(&armourctl(&socket, &["list"])), vec![pid]);

    let reload = armourctl(&socket, &["reload"]);
    assert_eq!((reload.code, reload.stdout.trim()), (Some(0), "reload: ok"));

    // A process of a program not configured, watched by root on request.
    let other = sb.testee("other");
    let other_report = sb.report("other");
    let other_pid = sb.spawn(&mut sb.command(&other, &other_report));
    other_report.wait_starts(1);
    let watch = armourctl(&socket, &["watch", &other_pid.to_string()]);
    assert_eq!(watch.code, Some(0), "{watch:?}");
    let mut pids = listed(&armourctl(&socket, &["list"]));
    pids.sort_unstable();
    let mut expected = vec![pid, other_pid];
    expected.sort_unstable();
    assert_eq!(pids, expected);
    daemon.assert_running();
}

/// A socket file nobody serves (an armourd that was SIGKILLed) is
/// replaced; a second armourd on a served socket says so and runs on
/// without it, the first one still answering; a regular file in the way
/// is named and left as it is; the socket is removed when armourd stops.
fn a_left_socket_is_replaced_and_others_are_left_alone(backend: Backend) {
    let sb = Sandbox::new();
    sb.write_config("# nothing configured\n");
    let socket = sb.path("control");
    drop(UnixListener::bind(&socket).unwrap());
    assert!(fs::symlink_metadata(&socket)
        .unwrap()
        .file_type()
        .is_socket());
    let args = |path: &Path| {
        vec![
            "--dbus".to_owned(),
            "none".to_owned(),
            "--control-socket".to_owned(),
            path.to_str().unwrap().to_owned(),
        ]
    };
    let first_args = args(&socket);
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let (mut first, _) = Daemon::ready_with(&sb, backend, &first_args, &[]);
    assert!(
        first
            .log()
            .contains("serving root's calls on the control socket"),
        "{}",
        first.log()
    );
    assert_eq!(armourctl(&socket, &["status"]).code, Some(0));

    let (mut second, _) = Daemon::ready_with(&sb, backend, &first_args, &[]);
    assert!(
        second
            .log()
            .contains("is served by another process: is another armourd running?"),
        "{}",
        second.log()
    );
    second.stop();
    let reload = armourctl(&socket, &["reload"]);
    assert_eq!(
        (reload.code, reload.stdout.trim()),
        (Some(0), "reload: ok"),
        "the first armourd still answers: {reload:?}"
    );

    let file = sb.path("not-a-socket");
    fs::write(&file, "keep me\n").unwrap();
    let third_args = args(&file);
    let third_args: Vec<&str> = third_args.iter().map(String::as_str).collect();
    let (mut third, _) = Daemon::ready_with(&sb, backend, &third_args, &[]);
    assert!(
        third.log().contains("exists and is not a socket"),
        "{}",
        third.log()
    );
    third.stop();
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me\n");

    first.stop();
    assert!(!socket.exists(), "the socket is removed when armourd stops");
}
