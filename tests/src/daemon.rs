//! The armourd process under test: started with a sandbox's config, its
//! log collected in the background, killed and its log printed on failure.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use crate::{process, wait_for, Backend, Launch, Sandbox, EVENT_TIMEOUT};

/// How long armourd may take to load its programs and adopt processes.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to wait for armourd to end after SIGTERM or a config error.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon binary: `$ARMOURD_BIN`, else where `cargo xtask build` leaves
/// it (`target/<arch>-unknown-linux-musl/release/armourd` of the
/// workspace). Panics if it does not exist: the suite never skips silently.
pub fn armourd_bin() -> PathBuf {
    let bin = match std::env::var_os("ARMOURD_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(format!("{}-unknown-linux-musl", std::env::consts::ARCH))
            .join("release/armourd"),
    };
    assert!(
        bin.is_file(),
        "armourd binary {} not found: run `cargo xtask build` first (or set ARMOURD_BIN); \
         `cargo xtask test` does both",
        bin.display()
    );
    bin
}

/// The client `armourctl`, built next to the daemon. Panics if it is missing.
pub fn armourctl_bin() -> PathBuf {
    let bin = armourd_bin().with_file_name("armourctl");
    assert!(
        bin.is_file(),
        "armourctl binary {} not found: `cargo xtask build` builds it next to armourd",
        bin.display()
    );
    bin
}

/// A running armourd. Dropping it kills it (SIGKILL) if it still runs and,
/// when the test is failing, prints its log.
pub struct Daemon {
    child: Child,
    backend: Backend,
    log: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `armourd -c CONFIG --backend B --dbus none -v` as a child,
    /// without waiting for it to be ready.
    pub fn start(sandbox: &Sandbox, backend: Backend) -> Daemon {
        Self::start_with(sandbox, backend, &["--dbus", "none"], &[])
    }

    /// Starts `armourd -c CONFIG --backend B ARGS… -v` with `env` added to
    /// its environment, without waiting for it to be ready. Its state is
    /// kept in the sandbox's `state` folder unless ARGS say where: each
    /// test's armourd sees only its own.
    pub fn start_with(
        sandbox: &Sandbox,
        backend: Backend,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut cmd = Command::new(armourd_bin());
        if !args.iter().any(|a| a.starts_with("--state-dir")) {
            cmd.arg("--state-dir").arg(sandbox.path("state"));
        }
        cmd.arg("-c")
            .arg(sandbox.config_path())
            .args(["--backend", backend.flag()])
            .args(args)
            .arg("-v")
            .current_dir("/")
            .env("RUST_BACKTRACE", "1")
            .envs(backend.env().iter().copied())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        sandbox.register_daemon(child.id() as i32);
        let log = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(
                child.stdout.take().expect("piped stdout"),
                "stdout: ",
                log.clone(),
            ),
            collect(child.stderr.take().expect("piped stderr"), "", log.clone()),
        ];
        Daemon {
            child,
            backend,
            log,
            readers,
            status: None,
        }
    }

    /// Starts armourd and waits until it is ready; returns it and the
    /// number of processes its ready line says it watches.
    pub fn ready(sandbox: &Sandbox, backend: Backend) -> (Daemon, usize) {
        Self::ready_with(sandbox, backend, &["--dbus", "none"], &[])
    }

    /// [`Daemon::start_with`], then waits until it is ready.
    pub fn ready_with(
        sandbox: &Sandbox,
        backend: Backend,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Daemon, usize) {
        let mut daemon = Self::start_with(sandbox, backend, args, env);
        let watched = daemon.wait_ready();
        (daemon, watched)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything armourd wrote so far (stderr, and stdout lines prefixed).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the line with `ready`, `backend=NAME` and `N watched`;
    /// returns N. Panics if armourd ends first or takes over [`READY_TIMEOUT`].
    pub fn wait_ready(&mut self) -> usize {
        let wanted = format!("backend={},", self.backend.name());
        let found = wait_for(READY_TIMEOUT, || {
            let log = self.log();
            let line = log
                .lines()
                .find(|l| l.contains("ready") && l.contains(&wanted))?;
            Some(watched_count(line))
        });
        match found {
            Some(Some(n)) => n,
            Some(None) => panic!(
                "ready line without a number of watched processes:\n{}",
                self.log()
            ),
            None => match self.try_status() {
                Some(status) => panic!(
                    "armourd ended before it was ready ({status}):\n{}",
                    self.log()
                ),
                None => panic!(
                    "armourd not ready with {wanted} within {READY_TIMEOUT:?}:\n{}",
                    self.log()
                ),
            },
        }
    }

    /// Polls the log until `condition` holds for it; false after `timeout`.
    pub fn wait_log(&self, timeout: Duration, condition: impl Fn(&str) -> bool) -> bool {
        crate::wait_until(timeout, || condition(&self.log()))
    }

    /// Waits until armourd has logged that it watches `pid` (an exec seen,
    /// an adoption, or a daemon's child taking the watch over); panics with
    /// the log after [`EVENT_TIMEOUT`]. A test that ends a process it
    /// started after armourd must wait for this first: a process that ends
    /// before armourd looked at it cannot be restarted the way it was
    /// started (the proc connector learns what was executed, and with what,
    /// only from `/proc`), and how soon armourd looks is a matter of speed.
    pub fn wait_watching(&self, pid: i32) {
        let watching = [
            format!("watching pid {pid} ("),
            format!("adopted pid {pid} ("),
        ];
        let child = format!("watching its child pid {pid}");
        let found = self.wait_log(EVENT_TIMEOUT, |log| {
            log.lines().any(|line| {
                watching.iter().any(|w| line.contains(w.as_str())) || line.ends_with(&child)
            })
        });
        assert!(
            found,
            "armourd never said it watches pid {pid}:\n{}",
            self.log()
        );
    }

    /// Its exit status if it has ended (reaping it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait armourd");
        }
        self.status
    }

    /// Waits for armourd to end by itself; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match wait_for(timeout, || self.try_status()) {
            Some(status) => {
                self.join_readers();
                status
            }
            None => panic!("armourd still running after {timeout:?}:\n{}", self.log()),
        }
    }

    /// Sends `signal` to armourd.
    pub fn signal(&self, signal: i32) {
        assert!(
            process::kill(self.pid(), signal),
            "armourd (pid {}) is gone",
            self.pid()
        );
    }

    /// SIGTERM, then waits for it to end; returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// Panics (with the log) if armourd has ended.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_status() {
            panic!("armourd ended unexpectedly ({status}):\n{}", self.log());
        }
    }

    /// Lets the log readers catch up after armourd ended. Bounded: if a
    /// process armourd started kept its pipes open, they never finish.
    fn join_readers(&mut self) {
        crate::wait_until(Duration::from_secs(2), || {
            self.readers.iter().all(JoinHandle::is_finished)
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.join_readers();
        if std::thread::panicking() {
            eprintln!(
                "----- armourd log (pid {}) -----\n{}",
                self.pid(),
                self.log()
            );
        }
    }
}

/// The N of "N watched" in the ready line.
fn watched_count(line: &str) -> Option<usize> {
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',' || c == ':')
        .collect();
    let at = words.iter().position(|w| *w == "watched")?;
    words[..at]
        .iter()
        .rev()
        .find(|w| !w.is_empty())?
        .parse()
        .ok()
}

/// Copies lines of `from` into `log` in the background, so the pipe never fills.
pub(crate) fn collect(
    from: impl Read + Send + 'static,
    prefix: &'static str,
    log: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            let mut log = log.lock().unwrap();
            log.push_str(prefix);
            log.push_str(&text);
            if !text.ends_with('\n') {
                log.push('\n');
            }
            line.clear();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::watched_count;

    #[test]
    fn watched_count_is_read_from_ready_lines() {
        assert_eq!(
            watched_count("[INFO] ready: backend=ebpf, 3 watched"),
            Some(3)
        );
        assert_eq!(
            watched_count("ready backend=ebpf 0 watched (1 entry)"),
            Some(0)
        );
        assert_eq!(watched_count("ready backend=ebpf"), None);
    }
}
