//! The restart policy, hooks and reload of SPEC §8: a crash loop backs off
//! and gives up, a reset brings it back, hooks see the crash and never hold
//! a restart, `recover=` replaces the restart, SIGHUP and `Reload` apply a
//! new file or reject a broken one whole, `--check-config` reports.

use std::{fs, path::Path, process::Command, time::Duration};

use armourd_tests::{
    backend_tests,
    bus::{run, Bus, ARMOURD, OBJECT_PATH},
    process, wait_until, Backend, Daemon, Report, Sandbox, Start, Value, EVENT_TIMEOUT,
    QUIET_WINDOW,
};

backend_tests!(
    crash_loop_backs_off_gives_up_until_reset,
    on_crash_hook_sees_the_crash_and_its_output_is_logged,
    hanging_hook_is_killed_at_its_timeout_and_does_not_hold_the_restart,
    recover_command_replaces_the_restart,
    sighup_applies_added_removed_and_changed_entries,
    broken_file_is_rejected_whole_on_sighup_and_reload,
);

#[test]
fn check_config_prints_entries_options_and_matches() {
    armourd_tests::run(
        Backend::ProcConnector,
        env!("CARGO_BIN_EXE_testee"),
        check_config,
    );
}

/// Starts a testee `svc` in `TESTEE_MODE=exit` that runs while the file
/// `run` exists, waits until armourd watches it; returns its pid.
fn start_looping_svc(sb: &Sandbox, daemon: &Daemon, svc: &Path, report: &Report) -> i32 {
    let run_if = sb.path("run");
    fs::write(&run_if, "").unwrap();
    let pid = sb.spawn(
        sb.command(svc, report)
            .env("TESTEE_MODE", "exit")
            .env("TESTEE_RUN_IF", &run_if),
    );
    report.wait_starts(1);
    daemon.wait_watching(pid);
    pid
}

/// The time between consecutive starts.
fn gaps(starts: &[Start]) -> Vec<Duration> {
    starts
        .windows(2)
        .map(|w| Duration::from_nanos(w[1].mono_ns.saturating_sub(w[0].mono_ns)))
        .collect()
}

/// The `state` and `crash_streak` `GetProcesses` gives the instance of `pid`.
fn state_of(bus: &Bus, pid: i32) -> Option<(String, u32)> {
    let entry = bus.process(pid)?;
    let state = match entry.get("state") {
        Some(Value::Str(state)) => state.clone(),
        other => panic!("state is {other:?}"),
    };
    let streak = match entry.get("crash_streak") {
        Some(Value::Uint32(n)) => *n,
        other => panic!("crash_streak is {other:?}"),
    };
    Some((state, streak))
}

fn crash_loop_backs_off_gives_up_until_reset(backend: Backend) {
    let sb = Sandbox::new();
    let bus = Bus::start(&sb);
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    sb.write_config(&format!("{} give-up=5/1m stable-after=2s\n", svc.display()));
    let (mut daemon, _) = bus.daemon(&sb, backend);
    let pid = start_looping_svc(&sb, &daemon, &svc, &report);
    let monitor = bus.monitor();

    // From now on every start exits 3 at once.
    fs::remove_file(sb.path("run")).unwrap();
    assert!(process::kill(pid, libc::SIGUSR1));
    // The original and four restarts; the fifth crash gives up.
    let starts = report.wait_starts(5);
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log.contains("giving up")),
        "armourd never gave up:\n{}",
        daemon.log()
    );
    report.assert_starts_stay(5, QUIET_WINDOW, "a failed instance stays down");
    // Restart 1 follows the first crash at once; then 100, 200, 400 ms.
    // Timers never fire early, so the backoff is a floor of each gap.
    let gaps = gaps(&starts);
    for (gap, floor) in gaps[1..].iter().zip([100, 200, 400]) {
        assert!(
            *gap >= Duration::from_millis(floor),
            "restarts closer than the backoff: {gaps:?}"
        );
    }
    let last = starts.last().unwrap().pid;
    assert_eq!(state_of(&bus, last).map(|s| s.0).as_deref(), Some("failed"));
    let failed = monitor.wait_signal("ProcessFailed", |args| {
        args.first() == Some(&Value::Int32(last))
    });
    assert_eq!(failed[2], Value::Uint32(5), "crashes: {failed:?}");
    let status = run(&mut bus.armourctl(&["status"]));
    assert!(status.stdout.contains("failed after"), "{}", status.stdout);
    let json = run(&mut bus.armourctl(&["status", "--json"]));
    let fields = [
        format!("\"pid\":{last},"),
        "\"state\":\"failed\"".to_owned(),
    ];
    assert!(
        fields.iter().all(|f| json.stdout.contains(f.as_str())),
        "{}",
        json.stdout
    );

    // A reset with the program fixed brings it back.
    fs::write(sb.path("run"), "").unwrap();
    let reset = run(&mut bus.armourctl(&["reset", &svc.display().to_string()]));
    assert_eq!(reset.code, Some(0), "{reset:?}");
    let back = report.wait_starts(6).remove(5);
    assert!(wait_until(EVENT_TIMEOUT, || {
        state_of(&bus, back.pid).is_some_and(|(s, n)| s == "running" && n == 0)
    }));

    // Healthy for stable-after: its next crash is a first one again.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(process::kill(back.pid, libc::SIGUSR1));
    let again = report.wait_starts(7).remove(6);
    assert!(wait_until(EVENT_TIMEOUT, || {
        state_of(&bus, again.pid).is_some_and(|(s, n)| s == "running" && n == 1)
    }));
    let log = daemon.log();
    assert!(
        !log.lines()
            .any(|l| l.contains(&format!("pid {} (", back.pid)) && l.contains("in a row")),
        "the crash after a healthy run waited:\n{log}"
    );
    daemon.assert_running();
}

fn on_crash_hook_sees_the_crash_and_its_output_is_logged(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    let seen = sb.path("hook.out");
    sb.write_config(&format!(
        "{} on-crash=\"echo hello from the hook; echo event=$ARMOURD_EVENT exe=$ARMOURD_EXE \
         pid=$ARMOURD_PID code=$ARMOURD_EXIT_CODE signal=$ARMOURD_SIGNAL \
         core=$ARMOURD_CORE_DUMPED restarts=$ARMOURD_RESTARTS uid=$(id -u) >> {}\"\n",
        svc.display(),
        seen.display()
    ));
    let (mut daemon, _) = Daemon::ready(&sb, backend);
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGSEGV));
    report.wait_starts(2);
    assert!(wait_until(EVENT_TIMEOUT, || fs::read_to_string(&seen)
        .is_ok_and(|t| t.ends_with('\n'))));
    let line = fs::read_to_string(&seen).unwrap();
    assert_eq!(
        line.trim_end(),
        format!(
            "event=crashed exe={} pid={pid} code= signal=SIGSEGV core=0 restarts=0 uid=0",
            svc.display()
        )
    );
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log.lines().any(|l| l
            .contains("on-crash hook")
            && l.ends_with("hello from the hook"))),
        "the hook's output is not in the log:\n{}",
        daemon.log()
    );
    daemon.assert_running();
}

fn hanging_hook_is_killed_at_its_timeout_and_does_not_hold_the_restart(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    let hook_pid = sb.path("hook.pid");
    sb.write_config(&format!(
        "{} hook-timeout=2s on-crash=\"echo $$ > {}; exec sleep 600\"\n",
        svc.display(),
        hook_pid.display()
    ));
    let (mut daemon, _) = Daemon::ready(&sb, backend);
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGSEGV));
    // Restarted while the hook hangs.
    let restart = report.wait_starts(2).remove(1);
    assert!(wait_until(EVENT_TIMEOUT, || fs::read_to_string(&hook_pid)
        .is_ok_and(|t| t.ends_with('\n'))));
    let hook: i32 = fs::read_to_string(&hook_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log
            .contains("killed after hook-timeout")),
        "the hook was not killed:\n{}",
        daemon.log()
    );
    assert!(
        wait_until(EVENT_TIMEOUT, || !process::is_alive(hook)),
        "hook pid {hook} still runs"
    );
    assert!(process::is_alive(restart.pid));
    daemon.assert_running();
}

fn recover_command_replaces_the_restart(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    let ran = sb.path("recover.ran");
    sb.write_config(&format!(
        "{svc} recover=\"echo $ARMOURD_PID >> {ran}; TESTEE_REPORT={report} TESTEE_MARK=recovered \
         {svc} >/dev/null 2>&1 &\"\n",
        svc = svc.display(),
        ran = ran.display(),
        report = report.path().display(),
    ));
    let (mut daemon, _) = Daemon::ready(&sb, backend);
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGSEGV));
    let recovered = report.wait_starts(2).remove(1);
    assert_eq!(
        recovered.mark.as_deref(),
        Some("recovered".as_ref()),
        "started by the recover command, not by armourd"
    );
    assert_eq!(fs::read_to_string(&ran).unwrap().trim(), pid.to_string());
    // It takes the crashed instance over: restart 1 of the same instance.
    let line = format!("pid {pid} -> pid {} (restart 1)", recovered.pid);
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log.contains(&line)),
        "no takeover:\n{}",
        daemon.log()
    );
    report.assert_starts_stay(2, QUIET_WINDOW, "only the recover command restarts");
    // And is watched: its crash runs the command again.
    assert!(process::kill(recovered.pid, libc::SIGSEGV));
    report.wait_starts(3);
    daemon.assert_running();
}

fn sighup_applies_added_removed_and_changed_entries(backend: Backend) {
    let sb = Sandbox::new();
    let (removed, changed, added) = (sb.testee("a"), sb.testee("b"), sb.testee("c"));
    let reports = [sb.report("a"), sb.report("b"), sb.report("c")];
    sb.write_config(&format!("{}\n{}\n", removed.display(), changed.display()));
    let pids: Vec<i32> = [&removed, &changed, &added]
        .iter()
        .zip(&reports)
        .map(|(exe, report)| {
            let pid = sb.spawn(&mut sb.command(exe, report));
            report.wait_starts(1);
            pid
        })
        .collect();
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 2);

    sb.write_config(&format!(
        "{} success=3\n{}\n",
        changed.display(),
        added.display()
    ));
    daemon.signal(libc::SIGHUP);
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log.contains("configuration reloaded")),
        "{}",
        daemon.log()
    );
    daemon.wait_watching(pids[2]);
    // Removed: let go, still running, not restarted.
    assert!(process::is_alive(pids[0]));
    assert!(process::kill(pids[0], libc::SIGSEGV));
    // Changed: exit 3 is clean now.
    assert!(process::kill(pids[1], libc::SIGUSR1));
    // Added: watched and restarted.
    assert!(process::kill(pids[2], libc::SIGSEGV));
    reports[2].wait_starts(2);
    reports[0].assert_starts_stay(1, QUIET_WINDOW, "a removed entry is let go");
    reports[1].assert_starts_stay(1, Duration::ZERO, "success=3 applies after the reload");
    daemon.assert_running();
}

fn broken_file_is_rejected_whole_on_sighup_and_reload(backend: Backend) {
    let sb = Sandbox::new();
    let bus = Bus::start(&sb);
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    sb.write_config(&format!("{}\n", svc.display()));
    let (mut daemon, _) = bus.daemon(&sb, backend);
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);

    // The second line is broken; the first alone would unwatch svc.
    sb.write_config("/usr/bin/true\n/usr/bin/false backoff=fast\n");
    daemon.signal(libc::SIGHUP);
    let error = "armourd.conf:2:24: bad backoff 'fast'";
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log
            .lines()
            .any(|l| l.contains("reload rejected") && l.contains(error))),
        "{}",
        daemon.log()
    );
    let reply = bus.call(&format!("{ARMOURD}.Reload"), &[]);
    assert!(reply.text().contains(error), "{}", reply.text());
    let ctl = run(&mut bus.armourctl(&["reload"]));
    assert_eq!(ctl.code, Some(1));
    assert!(ctl.stderr.contains(error), "{}", ctl.stderr);
    // Reload and Reset are root's.
    for (method, args) in [("Reload", &[][..]), ("Reset", &["string:1"][..])] {
        let method = format!("{ARMOURD}.{method}");
        let reply = bus.send(Some(65534), ARMOURD, OBJECT_PATH, &method, args);
        assert_eq!(
            reply.error_name().as_deref(),
            Some("com.github.Armourd.Error.AccessDenied"),
            "{method}: {reply:?}"
        );
    }

    // The old configuration is in force: svc is still restarted.
    assert!(process::kill(pid, libc::SIGSEGV));
    report.wait_starts(2);
    daemon.assert_running();
}

fn check_config(_: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let config = sb.write_config(&format!(
        "defaults give-up=3/1m\n{} on-crash=\"logger crashed\"\n{}/nothing-*\n",
        svc.display(),
        sb.dir().display()
    ));
    let out = Command::new(armourd_tests::armourd_bin())
        .args(["--check-config", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let expected = format!(
        "{config}:2: {svc}\n    success=0,HUP,INT,PIPE,TERM stop-timeout=5s restart-delay=0s \
         backoff=100ms..30s stable-after=10s give-up=3/1m hook-timeout=30s \
         on-crash=\"logger crashed\"\n    matches {svc}\n{config}:3: {dir}/nothing-*\n",
        config = config.display(),
        svc = svc.display(),
        dir = sb.dir().display(),
    );
    assert!(stdout.starts_with(&expected), "{stdout}");
    assert!(
        stdout.contains("    matches no executable now\n"),
        "{stdout}"
    );

    sb.write_config(&format!("{} stable-after=10\n", svc.display()));
    let out = Command::new(armourd_tests::armourd_bin())
        .args(["--check-config", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains(&format!(
            "{}:1:{}: duration '10' has no unit",
            config.display(),
            svc.display().to_string().len() + 15
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
