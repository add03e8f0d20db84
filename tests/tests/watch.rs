//! Which processes are watched (SPEC §2, §3): adopted ones, ones started
//! later, binaries appearing in a globbed directory, replaced binaries,
//! scripts; each instance separately; nothing outside the config.

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use armourd_tests::{backend_tests, process, Backend, Daemon, Record, Sandbox, QUIET_WINDOW};

backend_tests!(
    adopts_processes_started_before_it,
    watches_processes_started_after_it,
    watches_binary_appearing_in_globbed_directory,
    watches_globbed_folder_removed_and_created_again,
    never_restarts_a_program_not_in_the_config,
    restarts_binary_replaced_on_disk,
    watches_script_entry,
    watches_script_run_by_its_interpreter,
    watches_program_started_through_a_symlink,
    watches_binary_installed_in_globbed_directory_then_started,
    watches_program_started_during_an_exec_storm,
);

/// Two instances with their own argv and report, adopted at start-up;
/// the crashed one is restarted with its own argv, the other is untouched.
fn adopts_processes_started_before_it(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let (one, two) = (sb.report("one"), sb.report("two"));
    sb.write_config(&format!("{}\n", svc.display()));
    let pid_one = sb.spawn(sb.command(&svc, &one).arg("one"));
    let pid_two = sb.spawn(sb.command(&svc, &two).arg("two"));
    one.wait_starts(1);
    let original = two.wait_starts(1).remove(0);

    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 2, "both instances are adopted");
    assert!(process::kill(pid_two, libc::SIGKILL));
    let restart = two.wait_starts(2).remove(1);
    assert_eq!(restart.argv, original.argv);
    assert_eq!(
        one.starts().len(),
        1,
        "the other instance is not restarted:\n{}",
        one.text()
    );
    assert!(
        process::is_alive(pid_one),
        "the other instance is untouched"
    );
    daemon.assert_running();
}

fn watches_processes_started_after_it(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    sb.write_config(&format!("{}\n", svc.display()));
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 0);

    let pid = sb.spawn(sb.command(&svc, &report).arg("late"));
    report.wait_starts(1);
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGSEGV));
    let restart = report.wait_starts(2).remove(1);
    assert_eq!(restart.argv.last().map(|a| a.to_str()), Some(Some("late")));
    daemon.assert_running();
}

/// `DIR/bin/*` watches a binary installed into DIR/bin after start-up.
fn watches_binary_appearing_in_globbed_directory(backend: Backend) {
    let sb = Sandbox::new();
    let bin = sb.mkdir("bin");
    let report = sb.report("late");
    sb.write_config(&format!("{}/*\n", bin.display()));
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 0);

    let late = sb.testee("bin/late");
    let pid = sb.spawn(&mut sb.command(&late, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGKILL));
    let restart = report.wait_starts(2).remove(1);
    assert_eq!(restart.exe, late);
    daemon.assert_running();
}

/// `DIR/apps/*/bin/*`: a folder of the glob removed while a program from
/// it still runs (which keeps the removed folder alive in the kernel) and
/// created again holds binaries that are watched; first a folder the `*`
/// matches, then the glob's literal part itself.
fn watches_globbed_folder_removed_and_created_again(backend: Backend) {
    let sb = Sandbox::new();
    let apps = sb.mkdir("apps");
    sb.mkdir("apps/a/bin");
    let old = sb.testee("apps/a/bin/old");
    let old_report = sb.report("old");
    sb.write_config(&format!("{}/*/bin/*\n", apps.display()));
    sb.spawn(&mut sb.command(&old, &old_report));
    old_report.wait_starts(1);
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 1);

    for (round, removed) in [(1, apps.join("a")), (2, apps.clone())] {
        std::fs::remove_dir_all(&removed).expect("remove the folder");
        // One step at a time, each given the moment a rescan takes, so
        // that every level of the glob is seen coming back on its own.
        for rel in ["apps", "apps/a", "apps/a/bin"] {
            if !sb.path(rel).exists() {
                sb.mkdir(rel);
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        let new = sb.testee(&format!("apps/a/bin/new{round}"));
        let report = sb.report(&format!("new{round}"));
        let pid = sb.spawn(&mut sb.command(&new, &report));
        report.wait_starts(1);
        daemon.wait_watching(pid);
        assert!(process::kill(pid, libc::SIGKILL));
        let restart = report.wait_starts(2).remove(1);
        assert_eq!(restart.exe, new, "round {round}");
        // The next round's removal deletes the binary of this one's restart,
        // which then keeps its folder alive too.
    }
    daemon.assert_running();
}

/// Another copy of the same program under another name is not watched,
/// whether it runs before armourd starts or after; the configured one is.
fn never_restarts_a_program_not_in_the_config(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let other = sb.testee("other");
    let (svc_report, other_report) = (sb.report("svc"), sb.report("other"));
    sb.write_config(&format!("{}\n", svc.display()));
    let svc_pid = sb.spawn(&mut sb.command(&svc, &svc_report));
    let before = sb.spawn(&mut sb.command(&other, &other_report));
    svc_report.wait_starts(1);
    other_report.wait_starts(1);

    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 1, "only the configured program is watched");
    let after = sb.spawn(&mut sb.command(&other, &other_report));
    other_report.wait_starts(2);
    assert!(process::kill(before, libc::SIGKILL));
    assert!(process::kill(after, libc::SIGSEGV));
    other_report.assert_starts_stay(
        2,
        QUIET_WINDOW,
        "a program not in the config is not restarted",
    );

    assert!(process::kill(svc_pid, libc::SIGKILL));
    svc_report.wait_starts(2);
    daemon.assert_running();
}

/// A package upgrade renames a new file over the program: the old process
/// still matches, and the restart executes the new file at the path.
fn restarts_binary_replaced_on_disk(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    sb.write_config(&format!("{}\n", svc.display()));
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 1);

    sb.testee("svc");
    assert!(process::kill(pid, libc::SIGKILL));
    let restart = report.wait_starts(2).remove(1);
    assert_eq!(
        restart.exe, svc,
        "the restart runs the file now at the path"
    );
    assert!(process::is_alive(restart.pid));
    daemon.assert_running();
}

/// A `#!` script in the config: the process running it (an interpreter)
/// is watched and restarted with the script's arguments.
fn watches_script_entry(backend: Backend) {
    let sb = Sandbox::new();
    let fifo = sb.path("block.fifo");
    let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c_fifo` is a NUL-terminated string alive during the call.
    // SAFETY: `c_fifo` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o666) }, 0, "mkfifo");
    let script = sb.path("svc.sh");
    // Blocks in a builtin `read` on a FIFO nobody writes to: no child processes.
    write_script(
        &script,
        "#!/bin/sh\necho \"script $$ $*\" >> \"$TESTEE_REPORT\"\nexec 3<> \"$BLOCK_FIFO\"\nread line <&3\n",
    );
    let report = sb.report("script");
    sb.write_config(&format!("{}\n", script.display()));
    let (mut daemon, _) = Daemon::ready(&sb, backend);

    let pid = sb.spawn(
        sb.command(&script, &report)
            .args(["a", "b c"])
            .env("BLOCK_FIFO", &fifo),
    );
    let script_pid = |r: &Record| match r {
        Record::Script { pid, args } => Some((*pid, args.clone())),
        _ => None,
    };
    assert_eq!(
        report.wait_record("script", script_pid),
        (pid, "a b c".to_owned())
    );
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGKILL));
    let restarted = report.wait_record("second script", |r| {
        script_pid(r).filter(|(p, _)| *p != pid)
    });
    assert_eq!(
        restarted.1, "a b c",
        "the restart gets the script's arguments"
    );
    daemon.assert_running();
}

/// `sh SCRIPT ARGS`: the interpreter executed by name, the script on its
/// command line; watched and restarted with the script's arguments.
fn watches_script_run_by_its_interpreter(backend: Backend) {
    let sb = Sandbox::new();
    let fifo = sb.path("block.fifo");
    let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c_fifo` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o666) }, 0, "mkfifo");
    let script = sb.path("svc.sh");
    write_script(
        &script,
        "#!/bin/sh\necho \"script $$ $*\" >> \"$TESTEE_REPORT\"\nexec 3<> \"$BLOCK_FIFO\"\nread line <&3\n",
    );
    let report = sb.report("script");
    sb.write_config(&format!("{}\n", script.display()));
    let (mut daemon, _) = Daemon::ready(&sb, backend);

    let mut cmd = sb.command(Path::new("/bin/sh"), &report);
    let pid = sb.spawn(cmd.arg(&script).arg("x").env("BLOCK_FIFO", &fifo));
    let script_pid = |r: &Record| match r {
        Record::Script { pid, args } => Some((*pid, args.clone())),
        _ => None,
    };
    assert_eq!(
        report.wait_record("script", script_pid),
        (pid, "x".to_owned())
    );
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGKILL));
    let restarted = report.wait_record("second script", |r| {
        script_pid(r).filter(|(p, _)| *p != pid)
    });
    assert_eq!(restarted.1, "x", "the restart gets the script's arguments");
    daemon.assert_running();
}

/// The config names the file; it is started through a symlink to it.
fn watches_program_started_through_a_symlink(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let link = sb.path("link-to-svc");
    std::os::unix::fs::symlink(&svc, &link).unwrap();
    let report = sb.report("svc");
    sb.write_config(&format!("{}\n", svc.display()));
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 0);

    let pid = sb.spawn(&mut sb.command(&link, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGSEGV));
    let restart = report.wait_starts(2).remove(1);
    assert_eq!(restart.exe, svc);
    daemon.assert_running();
}

/// `DIR/bin/*`: a binary installed into DIR/bin after start-up, and
/// started only once armourd has noticed it, is watched from its exec.
fn watches_binary_installed_in_globbed_directory_then_started(backend: Backend) {
    let sb = Sandbox::new();
    let bin = sb.mkdir("bin");
    let report = sb.report("late");
    sb.write_config(&format!("{}/*\n", bin.display()));
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 0);

    let late = sb.testee("bin/late");
    assert!(
        daemon.wait_log(armourd_tests::EVENT_TIMEOUT, |log| log
            .contains("1 new executables match the configuration")),
        "the new binary was never noticed"
    );
    let pid = sb.spawn(&mut sb.command(&late, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGKILL));
    let restart = report.wait_starts(2).remove(1);
    assert_eq!(restart.exe, late);
    daemon.assert_running();
}

/// Unrelated execs keep coming (two shell loops running `/bin/true`) while
/// the watched program is started: its exec is still seen.
fn watches_program_started_during_an_exec_storm(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    let storm_report = sb.report("storm");
    sb.write_config(&format!("{}\n", svc.display()));
    let (mut daemon, watched) = Daemon::ready(&sb, backend);
    assert_eq!(watched, 0);

    let storm = "while :; do /bin/true; done";
    let storms: Vec<i32> = (0..2)
        .map(|_| {
            sb.spawn(
                sb.command(Path::new("/bin/sh"), &storm_report)
                    .args(["-c", storm]),
            )
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = sb.spawn(sb.command(&svc, &report).arg("stormy"));
    report.wait_starts(1);
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGSEGV));
    let restart = report.wait_starts(2).remove(1);
    assert_eq!(
        restart.argv.last().map(|a| a.to_str()),
        Some(Some("stormy"))
    );
    for storm in storms {
        assert!(process::kill(storm, libc::SIGKILL));
    }
    daemon.assert_running();
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
