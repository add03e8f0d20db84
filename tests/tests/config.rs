//! The configuration file (SPEC §2): errors name file, line and column and
//! stop start-up with exit status 2; comments, quotes and options work.

use armourd_tests::{backend_tests, process, Backend, Daemon, Sandbox};

backend_tests!(
    unknown_option_is_reported_with_line_and_column,
    relative_path_is_reported_with_line_and_column,
    bad_option_values_are_reported,
    unreadable_config_file_is_an_error,
    missing_program_is_only_a_warning,
    comments_quotes_and_options_are_accepted,
);

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
