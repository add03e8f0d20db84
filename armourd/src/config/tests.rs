use super::*;
use crate::status::ExitStatus;

fn one(text: &str) -> Entry {
    let mut config = parse(text, Path::new("armourd.conf")).unwrap();
    assert_eq!(config.entries.len(), 1);
    config.entries.remove(0)
}

/// Asserts that `text` is rejected with `expected` after `armourd.conf:`.
fn rejects(text: &str, expected: &str) {
    let error = parse(text, Path::new("armourd.conf")).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("armourd.conf:{expected}"),
        "{text}"
    );
}

fn clean(entry: &Entry, wait_status: i32) -> bool {
    let status = ExitStatus::from_wait_status(wait_status as u32);
    entry.success.is_clean(status)
}

#[test]
fn unknown_option_names_line_and_column() {
    let text = "# watched\n\n/usr/local/bin/food-server sucess=1\n";
    let error = parse(text, Path::new("armourd.conf")).unwrap_err();
    let expected = "armourd.conf:3:28: unknown option 'sucess' (known: success, stop-timeout, restart-delay, backoff, stable-after, give-up, on-crash, recover, hook-timeout, critical, critical-grace)";
    assert_eq!(error.to_string(), expected);
}

#[test]
fn plain_path_gets_defaults_and_its_line() {
    let text = "# comment\n\n   \n/usr/sbin/food\n\t/usr/bin/bar\t\n";
    let config = parse(text, Path::new("armourd.conf")).unwrap();
    let lines: Vec<_> = config.entries.iter().map(|e| e.line).collect();
    assert_eq!(lines, [4, 5]);
    let entry = &config.entries[0];
    assert_eq!(entry.pattern, Pattern::Path("/usr/sbin/food".into()));
    assert_eq!(entry.success, SuccessSet::default());
    assert_eq!(entry.stop_timeout, Duration::from_secs(5));
}

#[test]
fn quoted_path_may_contain_blanks() {
    let entry = one(r#""/opt/my app/bin/x" stop-timeout=1s"#);
    assert_eq!(entry.pattern, Pattern::Path("/opt/my app/bin/x".into()));
    let entry = one(r#"/opt/"say \"hi\" \\ \n"/x"#);
    assert_eq!(
        entry.pattern,
        Pattern::Path(r#"/opt/say "hi" \ \n/x"#.into())
    );
}

#[test]
fn comment_may_follow_options() {
    let entry = one("/opt/app/bin/server success=0,3 # ends with 3 on upgrade");
    assert!(clean(&entry, 0x300));
    // Inside a word, `#` is part of it.
    assert_eq!(
        one("/usr/bin/x#y #").pattern,
        Pattern::Path("/usr/bin/x#y".into())
    );
}

#[test]
fn success_list_replaces_default() {
    let entry = one("/opt/app/bin/server  success=0,3  stop-timeout=5s");
    assert!(clean(&entry, 0) && clean(&entry, 0x300));
    assert!(!clean(&entry, libc::SIGTERM));
}

#[test]
fn success_takes_signal_names_in_any_case_and_quoted_blanks() {
    let entry = one(r#"/x success="3, sigusr1 ,Term""#);
    assert!(clean(&entry, 0x300) && clean(&entry, libc::SIGUSR1) && clean(&entry, libc::SIGTERM));
    assert!(!clean(&entry, 0));
}

#[test]
fn bad_success_items_are_pointed_at() {
    let unknown = "(expected an exit code 0–255 or a signal name like TERM)";
    let empty = "empty item in the success list \
        (expected exit codes and signal names separated by commas, like 0,3,TERM)";
    let cases = [
        (
            "/x success=0,300",
            "1:14: bad exit code '300' (expected 0–255)".to_string(),
        ),
        (
            r#"/x success="0, -1""#,
            "1:16: bad exit code '-1' (expected 0–255)".into(),
        ),
        (
            "/x success=0,TERMINATE",
            format!("1:14: unknown signal name 'TERMINATE' {unknown}"),
        ),
        ("/x success=0,,3", format!("1:14: {empty}")),
        ("/x success=0,", format!("1:14: {empty}")),
    ];
    for (text, expected) in cases {
        rejects(text, &expected);
    }
}

#[test]
fn durations_take_units_and_fractions() {
    let timeout = |value: &str| one(&format!("/x stop-timeout={value}")).stop_timeout;
    assert_eq!(timeout("500ms"), Duration::from_millis(500));
    assert_eq!(timeout("1.5s"), Duration::from_millis(1500));
    assert_eq!(timeout("0.1s"), Duration::from_millis(100));
    assert_eq!(timeout("2m"), Duration::from_secs(120));
    assert_eq!(timeout("1h"), Duration::from_secs(3600));
    assert_eq!(timeout("0s"), Duration::ZERO);
}

#[test]
fn bare_number_duration_is_rejected() {
    rejects(
        "/x stop-timeout=5",
        "1:17: duration '5' has no unit (add one, like 5s or 5ms)",
    );
}

#[test]
fn malformed_durations_are_rejected() {
    let expected = "(expected a number and a unit ms, s, m or h, like 5s, 1.5s or 500ms)";
    for bad in ["s", "5sec", "1.s", ".5s", "1.2.3s", "-1s", "5 s"] {
        rejects(
            &format!(r#"/x stop-timeout="{bad}""#),
            &format!("1:17: bad duration '{bad}' {expected}"),
        );
    }
    let long = "99999999999999999999h";
    rejects(
        &format!("/x stop-timeout={long}"),
        &format!("1:17: duration '{long}' is too long"),
    );
}

#[test]
fn errors_say_where_and_what_was_expected() {
    let cases = [
        (
            "/x success=0 success=3",
            "1:14: option 'success' is given twice on this line",
        ),
        (
            r#"/x success="0,3"#,
            "1:12: unterminated quote (expected a closing \")",
        ),
        (
            r#""/x\""#,
            "1:1: unterminated quote (expected a closing \")",
        ),
        (
            "/x =3",
            "1:4: expected an option name before '=' (known: success, stop-timeout, restart-delay, backoff, stable-after, give-up, on-crash, recover, hook-timeout, critical, critical-grace)",
        ),
        (
            "/x success",
            "1:4: expected an option like success=0,3, found 'success' (options are key=value)",
        ),
        (
            "/x stop-timeout=",
            "1:17: empty value for 'stop-timeout' (expected a duration, like 5s or 500ms)",
        ),
        (
            r#"/x success="""#,
            "1:12: empty value for 'success' (expected exit codes and signal names, like 0,3,TERM)",
        ),
        (
            "/opt/[bin/x",
            "1:6: invalid glob '/opt/[bin/x': invalid range pattern",
        ),
        (
            "  food",
            "1:3: expected an absolute path or glob, like /usr/sbin/food, found 'food'",
        ),
    ];
    for (text, expected) in cases {
        rejects(text, expected);
    }
}

#[test]
fn glob_matches_canonical_path_within_one_directory() {
    let entry = one("/opt/*/bin/x?");
    assert_eq!(entry.pattern.to_string(), "/opt/*/bin/x?");
    assert!(entry.matches(Path::new("/opt/app/bin/x1")));
    assert!(!entry.matches(Path::new("/opt/app/sub/bin/x1")));
    assert!(!entry.matches(Path::new("/opt/app/bin/x12")));
    let entry = one("/usr/sbin/food");
    assert!(entry.matches(Path::new("/usr/sbin/food")));
    assert!(!entry.matches(Path::new("/usr/sbin/food2")));
}

#[test]
fn nul_byte_anywhere_is_an_error_at_its_line_and_column() {
    rejects(
        "/usr/sbin/food\n/usr/b\0in/x\n",
        "2:7: NUL byte: the file must be plain text (remove it)",
    );
    rejects(
        "# a comment\0\n",
        "1:12: NUL byte: the file must be plain text (remove it)",
    );
}

#[test]
fn bytes_that_are_not_utf8_are_an_error_at_their_line_and_column() {
    let error = decode(b"/x\n/\xc3\xa9\xff/y\n".to_vec(), Path::new("armourd.conf")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "armourd.conf:2:3: the file is not UTF-8 text (invalid byte 0xff)"
    );
    assert_eq!(decode(b"/x\n".to_vec(), Path::new("a")).unwrap(), "/x\n");
}

#[test]
fn errors_quote_a_long_token_shortly() {
    let long = "x".repeat(1_000_000);
    let error = parse(
        &format!("/usr/bin/food {long}=1"),
        Path::new("armourd.conf"),
    )
    .unwrap_err();
    let message = error.to_string();
    // The quote, and the list of known options.
    assert!(message.len() < 300, "{} bytes", message.len());
    let quoted = format!("'{}…'", "x".repeat(QUOTE_MAX));
    assert!(message.contains(&quoted), "{message}");
    let error = parse(&format!("relative{long}"), Path::new("armourd.conf")).unwrap_err();
    assert!(error.to_string().len() < 200);
    // Control characters are shown escaped, never written to the log as they are.
    rejects(
        "/x success=0,\u{1b}[31m",
        "1:14: unknown signal name '\\u{1b}[31m' (expected an exit code 0–255 or a signal name like TERM)",
    );
}

#[test]
fn path_longer_than_the_kernel_accepts_is_rejected() {
    let path = format!("/{}", "a/".repeat(3000));
    rejects(
        &format!("  {path}"),
        "1:3: path of 6001 bytes, longer than the kernel accepts (at most 4095 bytes)",
    );
    assert!(parse(&format!("/{}", "a".repeat(4094)), Path::new("a")).is_ok());
}

#[test]
fn critical_alone_makes_an_entry_critical_with_a_60s_grace() {
    let entry = one("/usr/sbin/food critical");
    assert_eq!(entry.critical, Some(Duration::from_secs(60)));
}

#[test]
fn critical_grace_sets_the_grace_and_implies_critical() {
    let entry = one("/usr/sbin/food critical-grace=5s");
    assert_eq!(entry.critical, Some(Duration::from_secs(5)));
    let entry = one("/usr/sbin/food critical=yes critical-grace=2m success=0");
    assert_eq!(entry.critical, Some(Duration::from_secs(120)));
}

#[test]
fn entries_are_not_critical_unless_asked() {
    assert_eq!(one("/usr/sbin/food").critical, None);
    assert_eq!(
        one("/usr/sbin/food critical=no critical-grace=5s").critical,
        None
    );
}

#[test]
fn a_bad_critical_value_is_located() {
    rejects(
        "/usr/sbin/food critical=maybe\n",
        "1:25: bad value 'maybe' for 'critical' (expected yes or no, or just the word critical)",
    );
}
