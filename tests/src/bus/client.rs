//! Running the D-Bus clients: to their end with a timeout ([`run`]), or
//! in the background ([`Background`]), their output collected, killed by
//! pid when dropped.

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use crate::{daemon::collect, wait_for, wait_until, EVENT_TIMEOUT};

/// How long a client may take before the test gives up on it: longer than
/// dbus-send's own reply timeout, so that a missing reply shows as such.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);

/// What a client printed and how it ended.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to its end, its output collected; kills it by pid and panics
/// if it takes longer than [`CLIENT_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Output {
    let mut child = Background::spawn(cmd);
    let status = wait_for(CLIENT_TIMEOUT, || child.child.try_wait().expect("try_wait"));
    let Some(status) = status else {
        panic!(
            "{:?} still running after {CLIENT_TIMEOUT:?}:\n{}{}",
            cmd,
            child.stdout(),
            child.stderr()
        );
    };
    child.join_readers();
    Output {
        code: status.code(),
        stdout: child.stdout(),
        stderr: child.stderr(),
    }
}

/// A long-running client, its stdout and stderr collected; dropping it
/// kills it by pid (and prints its output when the test fails).
pub struct Background {
    program: String,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Background {
    pub fn spawn(cmd: &mut Command) -> Background {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let readers = vec![
            collect(
                child.stdout.take().expect("stdout"),
                "",
                Arc::clone(&stdout),
            ),
            collect(
                child.stderr.take().expect("stderr"),
                "",
                Arc::clone(&stderr),
            ),
        ];
        Background {
            program: cmd.get_program().to_string_lossy().into_owned(),
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `condition` holds for what it printed on stdout; panics
    /// after [`EVENT_TIMEOUT`].
    pub fn wait_stdout(&self, what: &str, condition: impl Fn(&str) -> bool) {
        self.wait(what, || condition(&self.stdout()));
    }

    /// Waits until `condition` holds for what it printed on stderr.
    pub fn wait_stderr(&self, what: &str, condition: impl Fn(&str) -> bool) {
        self.wait(what, || condition(&self.stderr()));
    }

    fn wait(&self, what: &str, mut condition: impl FnMut() -> bool) {
        assert!(
            wait_until(EVENT_TIMEOUT, &mut condition),
            "no {what} within {EVENT_TIMEOUT:?}; stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
    }

    /// Bounded: a grandchild could keep the pipes open.
    fn join_readers(&mut self) {
        wait_until(Duration::from_secs(2), || {
            self.readers.iter().all(JoinHandle::is_finished)
        });
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_readers();
        if std::thread::panicking() {
            eprintln!(
                "----- {} (pid {}) -----\nstdout:\n{}\nstderr:\n{}",
                self.program,
                self.child.id(),
                self.stdout(),
                self.stderr()
            );
        }
    }
}
