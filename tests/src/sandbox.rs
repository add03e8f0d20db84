//! One test's temporary directory, its copies of the testee, its config and
//! reports, and the guard that leaves no process behind.

use std::{
    cell::RefCell,
    fs::{self, OpenOptions},
    io,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use crate::{process, testee_bin, wait_until, Report};

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A test's temporary directory and everything the test started.
///
/// Dropping it SIGKILLs, by pid, the daemons started for it, every process
/// it spawned, every process named in its reports and every other process
/// running a program from the directory (restarts, workers, daemonized
/// children), reaps its children, asserts that none is left and removes the
/// directory. Set `ARMOURD_TEST_KEEP=1` to keep the directory.
pub struct Sandbox {
    dir: PathBuf,
    children: RefCell<Vec<Child>>,
    reports: RefCell<Vec<Report>>,
    daemons: RefCell<Vec<i32>>,
}

impl Sandbox {
    /// A fresh directory named after the running test (mode 0755, so that
    /// an unprivileged testee can run programs from it).
    pub fn new() -> Self {
        let thread = std::thread::current();
        let test: String = thread
            .name()
            .unwrap_or("test")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("armourd-{test}-{}-{id}", std::process::id()));
        // A leftover of an earlier run with the same pid: its processes are gone.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let dir = dir.canonicalize().expect("canonical sandbox path");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod sandbox");
        Self {
            dir,
            children: RefCell::default(),
            reports: RefCell::default(),
            daemons: RefCell::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `rel` inside the sandbox.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Creates the directory `rel` (mode 0755) and returns its path.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let dir = self.path(rel);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    /// Copies the testee program to `rel` (mode 0755). The copy is written
    /// beside and renamed into place, so that a watcher of the directory
    /// never sees a half-written program; an existing file is replaced the
    /// way a package upgrade replaces it.
    pub fn testee(&self, rel: &str) -> PathBuf {
        let dest = self.path(rel);
        let tmp = self.path(&format!(".{}.tmp", rel.replace('/', "_")));
        fs::copy(testee_bin(), &tmp).unwrap_or_else(|e| {
            panic!("copy {} to {}: {e}", testee_bin().display(), tmp.display())
        });
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).expect("chmod testee");
        fs::rename(&tmp, &dest).unwrap_or_else(|e| panic!("rename to {}: {e}", dest.display()));
        dest
    }

    /// An empty report file `NAME.report` that any user may append to.
    pub fn report(&self, name: &str) -> Report {
        let path = self.path(&format!("{name}.report"));
        fs::write(&path, "").unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod report");
        let report = Report::new(path);
        self.reports.borrow_mut().push(report.clone());
        report
    }

    /// A command running `exe` with only `TESTEE_REPORT` and `PATH` in its
    /// environment, the sandbox as working directory, stdin and stdout on
    /// `/dev/null` and stderr appended to `testee.stderr` in the sandbox.
    pub fn command(&self, exe: &Path, report: &Report) -> Command {
        let stderr = self.path("testee.stderr");
        let stderr = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o666)
            .open(&stderr)
            .unwrap_or_else(|e| panic!("open {}: {e}", stderr.display()));
        let _ = fs::set_permissions(
            self.path("testee.stderr"),
            fs::Permissions::from_mode(0o666),
        );
        let mut cmd = Command::new(exe);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("TESTEE_REPORT", report.path())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        cmd
    }

    /// Like [`Sandbox::command`], but `exe` runs as the child of a process
    /// that reaps every process ending below it at once (a child subreaper:
    /// the testee with `TESTEE_REAP`), as a busy init does: what a daemon
    /// leaves behind as it detaches is gone from `/proc` the moment it ends.
    pub fn command_reaped(&self, exe: &Path, report: &Report) -> Command {
        let mut cmd = self.command(testee_bin(), report);
        cmd.env("TESTEE_REAP", "1").arg(exe);
        cmd
    }

    /// Spawns `cmd`, keeps its handle for reaping and returns its pid.
    /// Retries while the program is "text file busy": a concurrent test's
    /// fork may briefly hold a copy open for writing until its exec.
    pub fn spawn(&self, cmd: &mut Command) -> i32 {
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Ok(child) => break child,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("spawn {:?}: {e}", cmd.get_program()),
            }
        };
        let pid = child.id() as i32;
        self.children.borrow_mut().push(child);
        pid
    }

    /// Waits for the child `pid` the test spawned to end; panics if it does
    /// not end within `timeout`. Returns its wait status.
    pub fn wait_child(&self, pid: i32, timeout: Duration) -> std::process::ExitStatus {
        let mut children = self.children.borrow_mut();
        let child = children
            .iter_mut()
            .find(|c| c.id() as i32 == pid)
            .expect("not a child of this test");
        crate::wait_for(timeout, || child.try_wait().expect("try_wait"))
            .unwrap_or_else(|| panic!("child {pid} did not end within {timeout:?}"))
    }

    /// The config file path used by [`crate::Daemon::start`].
    pub fn config_path(&self) -> PathBuf {
        self.path("armourd.conf")
    }

    /// Writes the config file.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.config_path();
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    pub(crate) fn register_daemon(&self, pid: i32) {
        self.daemons.borrow_mut().push(pid);
    }

    /// Processes of this test still running: spawned ones, ones named in a
    /// report (if they still run a program of the sandbox, so that a
    /// recycled pid is never touched) and any other running a program of it.
    fn leftovers(&self) -> Vec<i32> {
        let ours = process::living_under(&self.dir);
        // Children not reaped yet (try_wait reaps the ended ones, whose pids
        // may then be recycled and must not be touched).
        let mut pids: Vec<i32> = self
            .children
            .borrow_mut()
            .iter_mut()
            .filter_map(|c| matches!(c.try_wait(), Ok(None)).then_some(c.id() as i32))
            .collect();
        for report in self.reports.borrow().iter() {
            pids.extend(
                report
                    .records()
                    .iter()
                    .flat_map(|r| r.pids())
                    .filter(|p| ours.contains(p)),
            );
        }
        pids.extend(&ours);
        pids.sort_unstable();
        pids.dedup();
        pids.retain(|&p| process::is_alive(p));
        pids
    }

    fn print_for_failure(&self) {
        for report in self.reports.borrow().iter() {
            eprintln!("----- {} -----\n{}", report.path().display(), report.text());
        }
        if let Ok(text) = fs::read_to_string(self.path("testee.stderr")) {
            eprintln!("----- testee.stderr -----\n{text}");
        }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            self.print_for_failure();
        }
        // The daemons first, or they would restart what is killed next.
        for &pid in self.daemons.borrow().iter() {
            if process::is_alive(pid) {
                process::kill(pid, libc::SIGKILL);
            }
        }
        wait_until(Duration::from_secs(10), || {
            let left = self.leftovers();
            for &pid in &left {
                process::kill(pid, libc::SIGKILL);
            }
            left.is_empty()
        });
        for child in self.children.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let left = self.leftovers();
        if std::env::var_os("ARMOURD_TEST_KEEP").is_none() {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    eprintln!("cannot remove {}: {e}", self.dir.display());
                }
            }
        }
        let message = format!("processes left behind after SIGKILL: {left:?}");
        if !left.is_empty() {
            if panicking {
                eprintln!("{message}");
            } else {
                panic!("{message}");
            }
        }
    }
}
