//! The shipped service files (SPEC §12): the sysvinit script starts,
//! reports and stops the built daemon; `systemd-analyze verify` accepts the
//! unit. The layout of `cargo xtask install` and the .deb are checked by
//! xtask's own tests and by `cargo xtask deb`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use armourd_tests::{armourd_bin, process, wait_until, Sandbox, EVENT_TIMEOUT};

fn dist(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(rel)
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A daemon the init script started: killed if the test fails half way.
struct Started(PathBuf);

impl Drop for Started {
    fn drop(&mut self) {
        let pid = fs::read_to_string(&self.0)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        if let Some(pid) = pid {
            process::kill(pid, libc::SIGKILL);
        }
    }
}

#[test]
fn sysvinit_script_starts_reports_and_stops_the_daemon() {
    let sb = Sandbox::new();
    let config = sb.write_config("");
    let pidfile = sb.path("armourd.pid");
    let daemon = armourd_bin().canonicalize().unwrap();
    let script = |action: &str| {
        Command::new("sh")
            .arg(dist("sysvinit/armourd"))
            .arg(action)
            .env("DAEMON", &daemon)
            .env("PIDFILE", &pidfile)
            .env(
                "ARMOURD_OPTS",
                format!(
                    "-c {} --dbus none --backend proc-connector --state-dir {}",
                    config.display(),
                    sb.path("state").display()
                ),
            )
            .output()
            .expect("run the init script")
    };
    let _guard = Started(pidfile.clone());
    let start = script("start");
    assert!(start.status.success(), "start: {}", text(&start));
    let pid: i32 = fs::read_to_string(&pidfile)
        .expect("a pid file once start returns")
        .trim()
        .parse()
        .unwrap();
    assert!(process::is_alive(pid));

    let status = script("status");
    assert_eq!(status.status.code(), Some(0), "status: {}", text(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("running"));

    let again = script("start");
    assert!(
        again.status.success(),
        "a second start is a no-op: {}",
        text(&again)
    );
    assert_eq!(
        fs::read_to_string(&pidfile).unwrap().trim(),
        pid.to_string(),
        "still the first daemon"
    );

    let stop = script("stop");
    assert!(stop.status.success(), "stop: {}", text(&stop));
    assert!(wait_until(EVENT_TIMEOUT, || !process::is_alive(pid)));
    assert!(!pidfile.exists(), "the pid file is gone after stop");

    let status = script("status");
    assert_eq!(
        status.status.code(),
        Some(3),
        "status when stopped: {}",
        text(&status)
    );
}

#[test]
fn systemd_analyze_accepts_the_unit() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!(
            "systemd-analyze is not installed: the unit cannot be checked \
             (`apt-get install systemd`; .ci/run installs it)"
        );
    };
    assert!(version.status.success(), "{}", text(&version));
    // The unit as installed, naming the daemon where it was built.
    let sb = Sandbox::new();
    let unit = fs::read_to_string(dist("systemd/armourd.service")).unwrap();
    let daemon = armourd_bin().canonicalize().unwrap();
    let unit = unit.replace("/usr/sbin/armourd", daemon.to_str().unwrap());
    let path = sb.path("armourd.service");
    fs::write(&path, unit).unwrap();
    // --man=no: the man pages are not installed on the test machine.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on lines it ignores; any complaint about the unit fails.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("armourd.service"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
}
