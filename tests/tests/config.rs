//! The configuration file (SPEC §2): errors name file, line and column and
//! stop start-up with exit status 2; comments, quotes and options work;
//! nothing in the file, or in a folder a glob names, can make armourd hang
//! or grow.

use std::{ffi::CString, fs, os::unix::fs::symlink, path::Path, process::Command, time::Duration};

use armourd_tests::{backend_tests, process, Backend, Daemon, LaunchExt, Sandbox};

backend_tests!(
    unknown_option_is_reported_with_line_and_column,
    relative_path_is_reported_with_line_and_column,
    bad_option_values_are_reported,
    unreadable_config_file_is_an_error,
    missing_program_is_only_a_warning,
    comments_quotes_and_options_are_accepted,
    glob_over_a_users_folder_stays_bounded,
);

/// The file is read, and rejected, before any backend is set up: these run
/// on one backend.
mod file {
    use armourd_tests::Backend;

    fn run(test: fn(Backend)) {
        armourd_tests::run(Backend::ProcConnector, env!("CARGO_BIN_EXE_testee"), test);
    }

    #[test]
    fn fifo_as_config_file_is_an_error_not_a_hang() {
        run(super::fifo_as_config_file_is_an_error_not_a_hang);
    }

    #[test]
    fn device_as_config_file_is_an_error() {
        run(super::device_as_config_file_is_an_error);
    }

    #[test]
    fn oversized_file_and_huge_token_get_short_errors() {
        run(super::oversized_file_and_huge_token_get_short_errors);
    }

    #[test]
    fn nul_byte_is_an_error_with_line_and_column() {
        run(super::nul_byte_is_an_error_with_line_and_column);
    }
}

/// The user armourd must stand up to.
const NOBODY: u32 = 65534;

/// Runs armourd on the sandbox's config and asserts it exits with status
/// 2 and logs every one of `expected`; returns the log.
fn assert_config_error(sb: &Sandbox, backend: Backend, expected: &[&str]) -> String {
    let mut daemon = Daemon::start(sb, backend);
    let status = daemon.wait_exit(armourd_tests::EVENT_TIMEOUT);
    let log = daemon.log();
    assert_eq!(
        status.code(),
        Some(2),
        "exit status of armourd on a bad config, log:\n{log}"
    );
    for text in expected {
        assert!(
            log.contains(text),
            "the log does not contain {text:?}:\n{log}"
        );
    }
    log
}

fn unknown_option_is_reported_with_line_and_column(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let path = svc.display().to_string();
    sb.write_config(&format!("# watched\n{path}\n{path}  sucess=0\n"));
    let column = path.len() + 3;
    assert_config_error(
        &sb,
        backend,
        &[&format!("armourd.conf:3:{column}:"), "sucess"],
    );
}

fn relative_path_is_reported_with_line_and_column(backend: Backend) {
    let sb = Sandbox::new();
    sb.write_config("\nbin/svc\n");
    assert_config_error(&sb, backend, &["armourd.conf:2:1:"]);
}

fn bad_option_values_are_reported(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc").display().to_string();
    sb.write_config(&format!("{svc} success=0,BOGUS\n"));
    assert_config_error(&sb, backend, &["armourd.conf:1:", "BOGUS"]);
    let alt = sb.testee("alt").display().to_string();
    sb.write_config(&format!("{alt}\n{svc} stop-timeout=soon\n"));
    assert_config_error(&sb, backend, &["armourd.conf:2:", "soon"]);
}

/// A file named with `-c` that cannot be read.
fn unreadable_config_file_is_an_error(backend: Backend) {
    let sb = Sandbox::new();
    let config = sb.config_path();
    assert!(!config.exists());
    assert_config_error(&sb, backend, &[&config.display().to_string()]);
}

/// A path that does not exist yet (it may be installed later) is a warning.
fn missing_program_is_only_a_warning(backend: Backend) {
    let sb = Sandbox::new();
    sb.write_config(&format!("{}\n", sb.path("not-installed-yet").display()));
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 0);
    assert!(
        daemon.log().contains("not-installed-yet"),
        "no warning about the missing program:\n{}",
        daemon.log()
    );
    daemon.assert_running();
}

fn comments_quotes_and_options_are_accepted(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("my svc");
    let report = sb.report("svc");
    sb.write_config(&format!(
        "# a comment\n\n   # an indented comment\n\"{}\"  success=0,3\tstop-timeout=2s   # trailing comment\n\n",
        svc.display()
    ));
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 1, "the quoted path with a blank is watched");
    assert!(process::kill(pid, libc::SIGKILL));
    report.wait_starts(2);
    daemon.assert_running();
}

/// A FIFO with no writer: opening it for reading would block for ever.
fn fifo_as_config_file_is_an_error_not_a_hang(backend: Backend) {
    let sb = Sandbox::new();
    let config = sb.config_path();
    let path = CString::new(config.to_str().unwrap()).unwrap();
    // SAFETY: `path` is a NUL-terminated string alive during the call.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
    assert_config_error(
        &sb,
        backend,
        &[&format!(
            "configuration file {} is a FIFO (named pipe), not a regular file",
            config.display()
        )],
    );
}

/// `-c` naming `/dev/zero` (here through a symlink): endless input.
fn device_as_config_file_is_an_error(backend: Backend) {
    let sb = Sandbox::new();
    symlink("/dev/zero", sb.config_path()).unwrap();
    assert_config_error(&sb, backend, &["armourd.conf is a character device"]);
}

fn oversized_file_and_huge_token_get_short_errors(backend: Backend) {
    let sb = Sandbox::new();
    sb.write_config(&"x".repeat(2 << 20));
    let log = assert_config_error(&sb, backend, &["armourd.conf is larger than 1024 KiB"]);
    assert!(log.len() < 2048, "a long log for one error:\n{log}");
    // Under the size bound, a token of 900 KB is quoted shortly.
    sb.write_config(&format!("# comment\n{}\n", "x".repeat(900_000)));
    let log = assert_config_error(&sb, backend, &["armourd.conf:2:1:", "xxx…'"]);
    assert!(log.len() < 2048, "a long log for one error:\n{log}");
}

fn nul_byte_is_an_error_with_line_and_column(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc").display().to_string();
    sb.write_config(&format!("{svc}\n/usr/bin/fo\0od\n"));
    assert_config_error(&sb, backend, &["armourd.conf:2:12: NUL byte"]);
}

/// The daemon's resident memory in KiB (`VmRSS` of `/proc/PID/status`).
fn resident_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs `script` with `sh` as the user, in `dir`; panics if it fails.
fn as_nobody(sb: &Sandbox, dir: &Path, script: &str) {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-ec", script])
        .current_dir(dir)
        .as_user(NOBODY, NOBODY, &[]);
    let pid = sb.spawn(&mut cmd);
    // Creating many thousand files takes a while on a busy disk.
    let status = sb.wait_child(pid, Duration::from_secs(120));
    assert!(status.success(), "{script}: {status}");
}

/// The config names `HOME/**/bin/*`, and HOME belongs to the user, who
/// fills it with symlink loops, a tree deeper than armourd walks and more
/// entries than it looks at: armourd gets ready, says what it left out,
/// stays small through the rescans the user causes, and still restarts
/// the user's crashed service.
fn glob_over_a_users_folder_stays_bounded(backend: Backend) {
    let sb = Sandbox::new();
    let home = sb.mkdir("home");
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    let testee = sb.testee("testee");
    let deep = vec!["d"; 100].join("/");
    as_nobody(
        &sb,
        &home,
        &format!(
            "mkdir -p app/bin {deep}/bin many
             cp {testee} app/bin/svc
             cp {testee} {deep}/bin/svc
             ln -s . loop
             ln -s .. app/up
             ln -s / app/root
             cd many && seq 20000 | xargs touch",
            testee = testee.display()
        ),
    );
    sb.write_config(&format!("{}/**/bin/*\n", home.display()));
    let report = sb.report("svc");
    let svc = home.join("app/bin/svc");
    let pid = sb.spawn(sb.command(&svc, &report).as_user(NOBODY, NOBODY, &[]));
    report.wait_starts(1);
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(
        watched,
        1,
        "the user's service is watched:\n{}",
        daemon.log()
    );
    let log = daemon.log();
    for expected in [
        "folders deeper than 32 levels",
        "the walk stopped after 16384",
    ] {
        assert!(log.contains(expected), "no warning {expected:?}:\n{log}");
    }
    // More of the same after start-up: each change causes a rescan.
    as_nobody(
        &sb,
        &home,
        &format!(
            "ln -s .. {deep}/up
             ln -s ../.. app/bin/loop
             cd many && seq 20001 22000 | xargs touch
             cd .. && cp {} app/bin/new",
            testee.display()
        ),
    );
    assert!(
        daemon.wait_log(armourd_tests::EVENT_TIMEOUT, |log| log
            .contains("1 new executables match")),
        "the new executable was not found:\n{}",
        daemon.log()
    );
    let rss = resident_kib(daemon.pid());
    assert!(
        rss < 16 * 1024,
        "armourd holds {rss} KiB:\n{}",
        daemon.log()
    );
    assert!(process::kill(pid, libc::SIGKILL));
    report.wait_starts(2);
    daemon.assert_running();
}
