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
fn a_file_of_another_format_is_not_state() {
    assert_eq!(parse(""), Err(StateError::NotState));
    assert_eq!(parse("armourd-state x\n"), Err(StateError::NotState));
    assert_eq!(parse("armourd-state 0\n"), Err(StateError::NotState));
    assert_eq!(parse("#!/bin/sh\n"), Err(StateError::NotState));
}

#[test]
fn a_newer_format_is_named() {
    assert_eq!(
        parse("armourd-state 2\nboot 1\nwhatever comes later\n"),
        Err(StateError::Newer { found: 2 })
    );
}

#[test]
fn damage_is_reported_at_its_line() {
    let text = render(&sample());
    let cut = &text[..text.len() - 3];
    assert!(
        matches!(parse(cut), Err(StateError::Damaged { line: 4, .. })),
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
