//! A restart gets what the original was started with (SPEC §5): argv,
//! environment, cwd, ids and groups, umask, stdio, session or process
//! group, and no descriptor of armourd's.
//!
//! Each test starts two originals the same way, one before armourd (its
//! context is read from /proc at adoption) and one after (seen at exec),
//! kills both with SIGKILL and compares each restart with its original.

use std::{
    ffi::OsString,
    fs::{self, OpenOptions},
    os::unix::{ffi::OsStringExt, fs::PermissionsExt},
    path::Path,
    process::Command,
};

use armourd_tests::{backend_tests, process, Backend, Daemon, LaunchExt, Report, Sandbox, Start};

backend_tests!(
    restart_keeps_argv_exactly,
    restart_keeps_environment,
    restart_keeps_cwd,
    restart_keeps_unprivileged_identity,
    restart_keeps_umask,
    restart_appends_to_stdout_file,
    restart_of_session_leader_leads_a_new_session,
    restart_of_group_member_leads_its_own_group,
    restart_inherits_no_descriptor,
);

/// An original and its restart.
struct Pair {
    which: &'static str,
    original: Start,
    restart: Start,
}

/// Runs the two originals `make(name, report)` builds (`adopted` before
/// armourd, `execed` after), kills them with SIGKILL and returns both pairs.
fn restarts(
    backend: Backend,
    sb: &Sandbox,
    exe: &Path,
    make: impl Fn(&str, &Report) -> Command,
) -> Vec<Pair> {
    sb.write_config(&format!("{}\n", exe.display()));
    let (adopted, execed) = (sb.report("adopted"), sb.report("execed"));
    let first = sb.spawn(&mut make("adopted", &adopted));
    adopted.wait_starts(1);
    let (mut daemon, watched) = Daemon::ready(sb, backend);
    assert_eq!(watched, 1, "the first original is adopted");
    let second = sb.spawn(&mut make("execed", &execed));
    execed.wait_starts(1);
    daemon.wait_watching(second);

    let mut pairs = Vec::new();
    for (which, pid, report) in [("adopted", first, &adopted), ("execed", second, &execed)] {
        assert!(process::kill(pid, libc::SIGKILL));
        let mut starts = report.wait_starts(2);
        let restart = starts.remove(1);
        let original = starts.remove(0);
        pairs.push(Pair {
            which,
            original,
            restart,
        });
    }
    daemon.assert_running();
    pairs
}

fn restart_keeps_argv_exactly(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let args: Vec<OsString> = vec![
        "two words".into(),
        "".into(),
        OsString::from_vec(b"non-utf8 \xff\xfe".to_vec()),
        "--opt=a b".into(),
        "".into(),
    ];
    let pairs = restarts(backend, &sb, &svc, |_, report| {
        let mut cmd = sb.command(&svc, report);
        std::os::unix::process::CommandExt::arg0(&mut cmd, "custom argv0");
        cmd.args(&args);
        cmd
    });
    let mut expected = vec![OsString::from("custom argv0")];
    expected.extend(args.iter().cloned());
    for p in pairs {
        assert_eq!(
            p.original.argv, expected,
            "{}: the original got the test's argv",
            p.which
        );
        assert_eq!(p.restart.argv, expected, "{}: the restart's argv", p.which);
        assert_eq!(p.restart.exe, svc, "{}", p.which);
    }
}

fn restart_keeps_environment(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let mark = OsString::from_vec(b"spaces and = signs, \xc3\xbc and \xff".to_vec());
    let pairs = restarts(backend, &sb, &svc, |_, report| {
        let mut cmd = sb.command(&svc, report);
        cmd.env("TESTEE_MARK", &mark)
            .env("EMPTY_VALUE", "")
            .env("LANG", "C.UTF-8");
        cmd
    });
    for p in pairs {
        assert_eq!(
            p.original.mark.as_ref(),
            Some(&mark),
            "{}: the original got the mark",
            p.which
        );
        assert_eq!(
            p.restart.mark.as_ref(),
            Some(&mark),
            "{}: TESTEE_MARK is kept",
            p.which
        );
        let sorted = |env: &[OsString]| {
            let mut env = env.to_vec();
            env.sort();
            env
        };
        assert_eq!(
            sorted(&p.restart.env),
            sorted(&p.original.env),
            "{}: the whole environment",
            p.which
        );
    }
}

fn restart_keeps_cwd(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let work = sb.mkdir("work dir");
    let pairs = restarts(backend, &sb, &svc, |_, report| {
        let mut cmd = sb.command(&svc, report);
        cmd.current_dir(&work);
        cmd
    });
    for p in pairs {
        assert_eq!(p.original.cwd, work, "{}", p.which);
        assert_eq!(
            p.restart.cwd, work,
            "{}: the restart's working directory",
            p.which
        );
    }
}

/// Started as nobody:nogroup with groups [65534, 100]: the restart has the
/// same ids and no privilege at all.
fn restart_keeps_unprivileged_identity(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let pairs = restarts(backend, &sb, &svc, |_, report| {
        let mut cmd = sb.command(&svc, report);
        cmd.as_user(65534, 65534, &[65534, 100]);
        cmd
    });
    for p in pairs {
        assert_eq!(
            p.original.uid, [65534; 3],
            "{}: the original runs as nobody",
            p.which
        );
        assert_eq!(
            p.restart.uid, [65534; 3],
            "{}: real, effective, saved uid",
            p.which
        );
        assert_eq!(
            p.restart.gid, [65534; 3],
            "{}: real, effective, saved gid",
            p.which
        );
        let mut groups = p.restart.groups.clone();
        groups.sort_unstable();
        assert_eq!(
            groups,
            vec![100, 65534],
            "{}: supplementary groups",
            p.which
        );
        assert_eq!(
            p.restart.capeff, p.original.capeff,
            "{}: capabilities",
            p.which
        );
        assert_eq!(
            u64::from_str_radix(&p.restart.capeff, 16),
            Ok(0),
            "{}: no capability",
            p.which
        );
    }
}

fn restart_keeps_umask(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let pairs = restarts(backend, &sb, &svc, |_, report| {
        let mut cmd = sb.command(&svc, report);
        cmd.umask(0o027);
        cmd
    });
    for p in pairs {
        assert_eq!(p.original.umask, "0027", "{}", p.which);
        assert_eq!(p.restart.umask, "0027", "{}: the restart's umask", p.which);
    }
}

/// stdout on a file with earlier content: the restart appends its
/// `started` line; nothing is truncated.
fn restart_appends_to_stdout_file(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let earlier = "earlier content, must survive\n";
    let out = |name: &str| sb.path(&format!("{name}.out"));
    for name in ["adopted", "execed"] {
        fs::write(out(name), earlier).unwrap();
        fs::set_permissions(out(name), fs::Permissions::from_mode(0o666)).unwrap();
    }
    let pairs = restarts(backend, &sb, &svc, |name, report| {
        let mut cmd = sb.command(&svc, report);
        cmd.stdout(OpenOptions::new().append(true).open(out(name)).unwrap());
        cmd
    });
    for p in pairs {
        assert!(
            p.restart.stdout_is_file,
            "{}: the restart's stdout is a file",
            p.which
        );
        let text = fs::read_to_string(out(p.which)).unwrap();
        let expected = format!(
            "{earlier}started {}\nstarted {}\n",
            p.original.pid, p.restart.pid
        );
        assert_eq!(text, expected, "{}: stdout file", p.which);
    }
}

fn restart_of_session_leader_leads_a_new_session(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let pairs = restarts(backend, &sb, &svc, |_, report| {
        let mut cmd = sb.command(&svc, report);
        cmd.new_session();
        cmd
    });
    for p in pairs {
        assert_eq!(
            p.original.sid, p.original.pid,
            "{}: the original leads a session",
            p.which
        );
        assert_eq!(
            p.restart.sid, p.restart.pid,
            "{}: the restart leads its own session",
            p.which
        );
        assert_eq!(
            p.restart.pgid, p.restart.pid,
            "{}: and its process group",
            p.which
        );
    }
}

fn restart_of_group_member_leads_its_own_group(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let pairs = restarts(backend, &sb, &svc, |_, report| sb.command(&svc, report));
    for p in pairs {
        assert_ne!(
            p.original.pgid, p.original.pid,
            "{}: the original leads no group",
            p.which
        );
        assert_ne!(p.original.sid, p.original.pid, "{}: nor a session", p.which);
        assert_eq!(
            p.restart.pgid, p.restart.pid,
            "{}: the restart leads its own process group",
            p.which
        );
        assert_ne!(p.restart.sid, p.restart.pid, "{}: but no session", p.which);
    }
}

fn restart_inherits_no_descriptor(backend: Backend) {
    let sb = Sandbox::new();
    let svc = sb.testee("svc");
    let pairs = restarts(backend, &sb, &svc, |_, report| sb.command(&svc, report));
    for p in pairs {
        assert_eq!(
            p.restart.fds,
            vec![0, 1, 2],
            "{}: the restart's open descriptors",
            p.which
        );
    }
}
