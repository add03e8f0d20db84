//! `--backend auto` falls back to the proc connector when eBPF cannot load,
//! and an explicit `--backend ebpf` fails with the reason (SPEC §6).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
};

use armourd_tests::{process, Backend, Sandbox, EVENT_TIMEOUT};

/// Runs armourd without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN.
fn without_bpf_capabilities(sb: &Sandbox, backend: &str) -> Command {
    let drop = "-bpf,-perfmon,-sys_admin";
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--inh-caps={drop}"))
        .arg(format!("--bounding-set={drop}"))
        .arg(armourd_tests::armourd_bin())
        .arg("-c")
        .arg(sb.config_path())
        .args(["--backend", backend, "--dbus", "none"])
        .arg("--state-dir")
        .arg(sb.path("state"))
        // On by default, fanotify must say why it cannot be had.
        .env_remove("ARMOURD_FANOTIFY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Kills armourd (by pid) when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        process::kill(self.0.id() as i32, libc::SIGKILL);
        let _ = self.0.wait();
    }
}

fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("armourd: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines until one contains `wanted`; the lines read on the way.
fn read_until(rx: &mpsc::Receiver<String>, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(EVENT_TIMEOUT) {
        let done = line.contains(wanted);
        seen.push(line);
        if done {
            return seen;
        }
    }
    panic!("no line with {wanted:?}; armourd said: {seen:#?}");
}

#[test]
fn auto_falls_back_without_bpf_capabilities_and_still_restarts() {
    armourd_tests::run(Backend::ProcConnector, env!("CARGO_BIN_EXE_testee"), |_| {
        let sb = Sandbox::new();
        let svc = sb.testee("svc");
        let report = sb.report("svc");
        sb.write_config(&format!("{}\n", svc.display()));
        let pid = sb.spawn(&mut sb.command(&svc, &report));
        report.wait_starts(1);

        let mut child = without_bpf_capabilities(&sb, "auto")
            .spawn()
            .expect("start armourd under setpriv");
        let rx = lines(&mut child);
        let _guard = Guard(child);
        let seen = read_until(&rx, "ready");
        let warnings: Vec<_> = seen.iter().filter(|l| l.contains("falling back")).collect();
        assert_eq!(warnings.len(), 1, "one warning: {seen:#?}");
        assert!(
            warnings[0].contains("CAP_BPF"),
            "names the reason: {}",
            warnings[0]
        );
        // Wanted, but without CAP_SYS_ADMIN no fanotify: said once.
        let fanotify: Vec<_> = seen.iter().filter(|l| l.contains("fanotify")).collect();
        assert_eq!(fanotify.len(), 1, "one line about fanotify: {seen:#?}");
        assert!(fanotify[0].contains("CAP_SYS_ADMIN"), "{}", fanotify[0]);
        assert!(seen.last().unwrap().contains("backend=proc-connector,"));

        assert!(process::kill(pid, libc::SIGSEGV));
        let restart = report.wait_starts(2).remove(1);
        assert!(process::is_alive(restart.pid));
    });
}

#[test]
fn explicit_ebpf_without_capabilities_fails_with_the_reason() {
    armourd_tests::run(Backend::Ebpf, env!("CARGO_BIN_EXE_testee"), |_| {
        let sb = Sandbox::new();
        sb.write_config("");
        let output = without_bpf_capabilities(&sb, "ebpf")
            .output()
            .expect("run armourd under setpriv");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("cannot start the eBPF backend"), "{stderr}");
        assert!(stderr.contains("CAP_BPF"), "{stderr}");
    });
}
