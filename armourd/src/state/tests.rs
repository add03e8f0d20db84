use std::{ffi::OsString, os::unix::ffi::OsStringExt};

use super::*;

fn sample() -> State {
    State {
        boot: "6c1f2a0e-8d7b-4c55-9a51-0f1d6f7c3b2a".into(),
        instances: vec![
            Record {
                pid: 812,
                start: 1934,
                dev: (8, 1),
                ino: 393_231,
                exe: "/usr/sbin/food".into(),
                by: None,
                restarts: 2,
                streak: 1,
                crashes: vec![51_873_000_000, 51_874_000_000],
            },
            Record {
                pid: 9,
                start: 0,
                dev: (0, 42),
                ino: 7,
                exe: PathBuf::from(OsString::from_vec(b"/opt/my app/x=%\xff".to_vec())),
                by: Some(1000),
                restarts: 0,
                streak: 0,
                crashes: Vec::new(),
            },
        ],
        waiting: vec![
            Waiting {
                state: WaitingState::Backoff {
                    next: 52_873_000_000,
                },
                entry: Some("/usr/sbin/bar*".into()),
                by: None,
                dev: (8, 1),
                ino: 393_240,
                last_pid: 815,
                last_exit: Some(11),
                since: 51_873_000_000,
                restarts: 4,
                streak: 3,
                crashes: vec![51_873_000_000],
                uid: 0,
                gid: 0,
                groups: vec![4, 27],
                umask: 0o22,
                session_leader: true,
                cwd: "/".into(),
                stdio: [None, Some("/var/log/bard.log".into()), None],
                cgroup: Some("/sys/fs/cgroup/system.slice/bard.service".into()),
                argv: vec!["bard".into(), "-f".into(), "".into(), "a,b c".into()],
                env: vec!["PATH=/usr/bin".into()],
                exe: "/usr/sbin/bard".into(),
            },
            Waiting {
                state: WaitingState::Failed,
                entry: None,
                by: Some(1000),
                dev: (0, 42),
                ino: 8,
                last_pid: 9,
                last_exit: None,
                since: 0,
                restarts: 0,
                streak: 5,
                crashes: Vec::new(),
                uid: 1000,
                gid: 1000,
                groups: Vec::new(),
                umask: 0o77,
                session_leader: false,
                cwd: "/home/u".into(),
                stdio: [None, None, None],
                cgroup: None,
                argv: Vec::new(),
                env: vec!["".into()],
                exe: "/home/u/x".into(),
            },
        ],
    }
}

#[test]
fn what_is_written_reads_back_the_same() {
    let state = sample();
    let text = render(&state);
    assert_eq!(parse(&text), Ok(state));
    assert!(
        text.contains("exe=/opt/my%20app/x%3D%25%FF\n"),
        "blanks, `=`, `%` and non-ASCII bytes are escaped:\n{text}"
    );
}

#[test]
fn lists_keep_empty_items_and_commas() {
    let text = render(&sample());
    assert!(
        text.contains(" argv=4:bard,-f,,a%2Cb%20c env=1:PATH%3D/usr/bin exe=/usr/sbin/bard\n"),
        "{text}"
    );
    assert!(text.contains(" argv=0: env=1: exe=/home/u/x\n"), "{text}");
}

#[test]
fn a_format_1_file_is_still_read() {
    let mut state = sample();
    state.waiting.clear();
    let text = render(&state).replacen("armourd-state 2\n", "armourd-state 1\n", 1);
    assert_eq!(parse(&text), Ok(state));
    let waiting = render(&sample()).replacen("armourd-state 2\n", "armourd-state 1\n", 1);
    assert!(
        matches!(parse(&waiting), Err(StateError::Damaged { line: 5, .. })),
        "format 1 has no waiting lines"
    );
}

#[test]
fn waiting_instances_come_after_running_ones() {
    let text = render(&sample());
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(3, 4);
    let swapped = lines.join("\n") + "\n";
    assert!(matches!(
        parse(&swapped),
        Err(StateError::Damaged { line: 5, .. })
    ));
}

#[test]
fn a_file_of_another_format_is_not_state() {
    assert_eq!(parse(""), Err(StateError::NotState));
    assert_eq!(parse("armourd-state x\n"), Err(StateError::NotState));
    assert_eq!(parse("armourd-state 0\n"), Err(StateError::NotState));
    assert_eq!(parse("#!/bin/sh\n"), Err(StateError::NotState));
}

#[test]
fn a_newer_format_is_named() {
    assert_eq!(
        parse("armourd-state 3\nboot 1\nwhatever comes later\n"),
        Err(StateError::Newer { found: 3 })
    );
}

#[test]
fn damage_is_reported_at_its_line() {
    let text = render(&sample());
    let cut = &text[..text.len() - 3];
    assert!(
        matches!(parse(cut), Err(StateError::Damaged { line: 6, .. })),
        "{:?}",
        parse(cut)
    );
    let swapped = text.replace("pid=812 start=1934", "start=1934 pid=812");
    assert!(matches!(
        parse(&swapped),
        Err(StateError::Damaged { line: 3, .. })
    ));
    for (from, to) in [
        ("pid=812", "pid=0812"),
        ("pid=812", "pid=-812"),
        ("pid=812", "pid=0"),
        ("restarts=2", "restarts=99999999999"),
        ("by=-", "by=root"),
        ("dev=8:1", "dev=8"),
        ("crashes=-", "crashes="),
        ("exe=/usr/sbin/food", "exe=usr/sbin/food"),
        ("exe=/usr/sbin/food", "exe=/usr/sbin/f%6Fod"),
        ("exe=/usr/sbin/food", "exe=/usr/sbin/f%+Dod"),
        ("exe=/usr/sbin/food", "exe=/usr/sbin/f%0dod"),
        ("exe=/usr/sbin/food", "exe=/usr/sbin/food extra=1"),
        ("state=backoff", "state=failed"),
        ("state=failed next=-", "state=failed next=1"),
        ("umask=18", "umask=512"),
        ("session=1", "session=2"),
        ("argv=4:", "argv=3:"),
        ("env=1:", "env=0:"),
        ("stdin=-", "stdin=dev/null"),
        ("groups=4,27", "groups=4,,27"),
        ("last-exit=11", "last-exit=x"),
    ] {
        let changed = text.replacen(from, to, 1);
        assert!(
            matches!(parse(&changed), Err(StateError::Damaged { .. })),
            "{to} is refused"
        );
    }
}

#[test]
fn a_boot_id_is_required() {
    assert!(matches!(
        parse("armourd-state 1\n"),
        Err(StateError::Damaged { line: 2, .. })
    ));
    assert!(matches!(
        parse("armourd-state 1\nboot ../x\n"),
        Err(StateError::Damaged { line: 2, .. })
    ));
}
