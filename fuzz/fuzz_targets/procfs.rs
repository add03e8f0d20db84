//! The parsers of what armourd reads from `/proc` and from files, over any
//! bytes: `stat` (of a process and of a task), `status`, the NUL-separated
//! `cmdline` and `environ` areas, the link of a standard descriptor and a
//! script's `#!` line. Text parsers get the bytes as lossy UTF-8, as
//! `/proc` text could hold any bytes in a process's name.

#![no_main]

use std::{ffi::OsStr, os::unix::ffi::OsStrExt, path::Path};

use armourd::fuzz::{
    parse_shebang, parse_stat, parse_status, parse_task_state, split_nul, stdio_target, FdKind,
    StdioTarget,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    stat(&text);
    status(&text);
    nul_area(data);
    shebang(data);
    stdio(data);
});

fn stat(text: &str) {
    let (process, task) = (parse_stat(text), parse_task_state(text));
    if process.is_some() || task.is_some() {
        assert!(text.contains(')'), "stat without the end of its comm");
    }
    if let (Some(process), Some(task)) = (process, task) {
        assert_eq!(process.start_ticks, task.start_ticks);
        assert!(!process.zombie || task.dead());
    }
}

fn status(text: &str) {
    if let Some(status) = parse_status(text) {
        let words = text.split_ascii_whitespace().count();
        assert!(status.groups.len() <= words, "more groups than words");
    }
}

fn nul_area(area: &[u8]) {
    let strings = split_nul(area);
    // The strings joined by NULs are the area without its trailing NUL.
    let joined = strings.join(OsStr::new("\0"));
    let expected = area.strip_suffix(&[0]).unwrap_or(area);
    assert_eq!(strings.is_empty(), area.is_empty());
    assert_eq!(joined.as_bytes(), expected);
}

fn shebang(head: &[u8]) {
    let Some(interpreter) = parse_shebang(head) else {
        return;
    };
    let name = interpreter.as_os_str().as_bytes();
    let first_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    assert!(head.starts_with(b"#!"));
    assert!(!name.is_empty(), "an empty interpreter");
    assert!(
        !name.iter().any(|b| matches!(b, b' ' | b'\t' | b'\n' | 0)),
        "a blank, newline or NUL in the interpreter {interpreter:?}"
    );
    assert!(
        first_line.windows(name.len()).any(|w| w == name),
        "the interpreter is not on the first line"
    );
}

fn stdio(link: &[u8]) {
    let link = Path::new(OsStr::from_bytes(link));
    let major = link.as_os_str().len() as u32 % 256;
    for kind in [FdKind::Regular, FdKind::CharDevice { major }, FdKind::Other] {
        match stdio_target(link, kind) {
            StdioTarget::File(path) => {
                assert_eq!(path, link);
                assert!(path.is_absolute());
                assert_ne!(kind, FdKind::Other);
            }
            StdioTarget::Null => {}
        }
    }
}
