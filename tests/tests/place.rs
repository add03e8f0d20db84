//! A restart runs where the crashed process ran (SPEC §5): in its
//! namespaces (a container), in its cgroup (a service manager's unit), and
//! as the program that ran (a watched program that executed another one).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use armourd_tests::{
    backend_tests, process, wait_for, Backend, Daemon, Record, Sandbox, EVENT_TIMEOUT,
};

backend_tests!(
    restarts_in_the_namespaces_it_ran_in,
    restarts_in_the_cgroup_it_ran_in_or_armourds_once_that_is_gone,
    a_watched_program_executing_another_is_an_instance_of_the_second,
);

/// The live processes running `exe` (host pids).
fn running(sb: &Sandbox, exe: &Path) -> Vec<i32> {
    process::living_under(sb.dir())
        .into_iter()
        .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe))
        .collect()
}

/// The one process running `exe` other than those in `not`, once there is one.
fn new_process(sb: &Sandbox, exe: &Path, not: &[i32]) -> i32 {
    wait_for(EVENT_TIMEOUT, || {
        running(sb, exe).into_iter().find(|p| !not.contains(p))
    })
    .unwrap_or_else(|| panic!("no new process of {}", exe.display()))
}

fn ns(pid: i32, kind: &str) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("namespace link")
}

/// A service in a container of sorts (its own pid, mount and uts
/// namespaces, its own /proc) is restarted in that container, not on
/// the host.
fn restarts_in_the_namespaces_it_ran_in(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    sb.write_config(&format!("{}\n", svc.display()));
    let (mut daemon, _) = Daemon::ready(&sb, backend);

    // The container's init is `sleep`, so that the namespace outlives the
    // service; unshare's --kill-child ends it with the test.
    let mut cmd = sb.command(Path::new("unshare"), &report);
    cmd.args(["--pid", "--uts", "--fork", "--kill-child", "--mount-proc"])
        .args(["sh", "-c", "\"$0\" in-container & exec sleep 600"])
        .arg(&svc);
    let unshare = sb.spawn(&mut cmd);
    let original = report.wait_starts(1).remove(0);
    assert!(
        original.pid < 10,
        "the service runs in its own pid namespace"
    );
    let pid = new_process(&sb, &svc, &[]);
    let (pid_ns, mnt_ns, uts_ns) = (ns(pid, "pid"), ns(pid, "mnt"), ns(pid, "uts"));
    assert_ne!(pid_ns, ns(unshare, "pid"), "unshare made a namespace");
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGKILL));

    let restart = report.wait_starts(2).remove(1);
    let restarted = new_process(&sb, &svc, &[pid]);
    assert_eq!(restart.argv, original.argv);
    assert!(
        restart.pid < 10,
        "pid {} is a pid of the container's namespace",
        restart.pid
    );
    assert_eq!(
        ns(restarted, "pid"),
        pid_ns,
        "the container's pid namespace"
    );
    assert_eq!(ns(restarted, "mnt"), mnt_ns, "the container's mounts");
    assert_eq!(ns(restarted, "uts"), uts_ns, "the container's host name");
    daemon.assert_running();
}

/// The cgroup2 file system's mount point.
fn cgroup2() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let point = mounts
        .lines()
        .find_map(|line| {
            let (mounted, after) = line.split_once(" - ")?;
            after
                .starts_with("cgroup2 ")
                .then(|| mounted.split(' ').nth(4))?
        })
        .expect("a cgroup2 file system (the unified hierarchy) is mounted");
    PathBuf::from(point)
}

/// A cgroup made for the test, removed when dropped.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// The cgroup2 path of `pid` (`0::/a/b` → `/a/b`).
fn cgroup_of(pid: i32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix("0::"));
    line.expect("a cgroup2 line").to_owned()
}

/// A service started in a cgroup of its own (as a service manager starts
/// a unit) is restarted in that cgroup; once the cgroup is gone, in
/// armourd's, with a log line that says so.
fn restarts_in_the_cgroup_it_ran_in_or_armourds_once_that_is_gone(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    let root = cgroup2();
    let name = sb.dir().file_name().unwrap().to_string_lossy().into_owned();
    let unit = Cgroup(root.join(format!("{name}.service")));
    fs::create_dir(&unit.0).expect("create a cgroup");
    sb.write_config(&format!("{}\n", svc.display()));
    let (mut daemon, _) = Daemon::ready(&sb, backend);

    // Joins the cgroup, then executes the service, as a service manager does.
    let mut cmd = sb.command(Path::new("/bin/sh"), &report);
    cmd.args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$1\" unit"])
        .arg(&unit.0)
        .arg(&svc);
    let pid = sb.spawn(&mut cmd);
    report.wait_starts(1);
    let wanted = format!("/{name}.service");
    assert_eq!(cgroup_of(pid), wanted);
    daemon.wait_watching(pid);
    assert!(process::kill(pid, libc::SIGKILL));
    report.wait_starts(2);
    let restarted = new_process(&sb, &svc, &[pid]);
    assert_eq!(
        cgroup_of(restarted),
        wanted,
        "restarted in its unit's cgroup"
    );

    // The unit's cgroup goes (moved out, removed), then the service crashes.
    fs::write(root.join("cgroup.procs"), restarted.to_string()).unwrap();
    fs::remove_dir(&unit.0).expect("remove the empty cgroup");
    assert!(process::kill(restarted, libc::SIGKILL));
    report.wait_starts(3);
    let third = new_process(&sb, &svc, &[pid, restarted]);
    assert_eq!(
        cgroup_of(third),
        cgroup_of(daemon.pid()),
        "armourd's cgroup once the unit's is gone"
    );
    assert!(
        daemon.log().contains("the cgroup it ran in is gone"),
        "{}",
        daemon.log()
    );
    daemon.assert_running();
}

/// A watched script that executes another watched program: the process is
/// an instance of the second program from then on, and its restart runs
/// that program with its own arguments, not the script.
fn a_watched_program_executing_another_is_an_instance_of_the_second(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let report = sb.report("svc");
    let go = sb.path("go");
    let script = sb.path("launcher.sh");
    fs::write(
        &script,
        "#!/bin/sh\necho \"script $$ $*\" >> \"$TESTEE_REPORT\"\n\
         while [ ! -e \"$GO\" ]; do sleep 0.05; done\nexec \"$SVC\" second-program\n",
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    sb.write_config(&format!("{}\n{}\n", script.display(), svc.display()));
    let (mut daemon, _) = Daemon::ready(&sb, backend);

    let pid = sb.spawn(
        sb.command(&script, &report)
            .arg("first")
            .env("GO", &go)
            .env("SVC", &svc),
    );
    daemon.wait_watching(pid);
    fs::write(&go, "").unwrap();
    let original = report.wait_starts(1).remove(0);
    assert_eq!(
        original.pid, pid,
        "the script's process executed the program"
    );
    // Its exec is seen: armourd watches it as the second program.
    let second = format!("watching pid {pid} ({})", svc.display());
    assert!(
        daemon.wait_log(EVENT_TIMEOUT, |log| log.contains(&second)),
        "{}",
        daemon.log()
    );
    assert!(process::kill(pid, libc::SIGKILL));

    let restart = report.wait_starts(2).remove(1);
    assert_eq!(restart.argv, original.argv, "the second program's command");
    assert_eq!(restart.exe, svc);
    let scripts = report
        .records()
        .iter()
        .filter(|r| matches!(r, Record::Script { .. }))
        .count();
    assert_eq!(
        scripts,
        1,
        "the script was not run again:\n{}",
        report.text()
    );
    daemon.assert_running();
}
