//! The crash-loop row of `cargo xtask bench` (SPEC §11): a program that
//! exits 3 at once, watched for [`WINDOW`] with default options. Counted:
//! the restarts armourd made and the CPU it used meanwhile.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{log_lines, pids_of, signal, usage, wait_for};

/// How long the loop is watched.
pub const WINDOW: Duration = Duration::from_secs(10);

/// What the crash loop cost.
pub struct CrashLoop {
    pub restarts: usize,
    pub cpu_percent: f64,
}

/// A directory with a copy of `/bin/sh` as the crashing program.
struct Scene {
    dir: PathBuf,
    program: PathBuf,
    daemon: Option<Child>,
    first: Option<Child>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            signal(daemon.id(), libc::SIGTERM);
            let _ = daemon.wait();
        }
        if let Some(mut first) = self.first.take() {
            let _ = first.kill();
            let _ = first.wait();
        }
        for pid in pids_of(&self.program) {
            signal(pid, libc::SIGKILL);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs the crash loop under armourd (`daemon`, `--backend backend`).
pub fn measure(daemon: &Path, backend: &str) -> Result<CrashLoop> {
    let dir = std::env::temp_dir().canonicalize()?.join(format!(
        "armourd-bench-loop-{}-{backend}",
        std::process::id()
    ));
    fs::create_dir_all(&dir)?;
    let mut scene = Scene {
        program: dir.join("crasher"),
        dir,
        daemon: None,
        first: None,
    };
    fs::copy(fs::canonicalize("/bin/sh")?, &scene.program)?;
    let config = scene.dir.join("armourd.conf");
    fs::write(&config, format!("{}\n", scene.program.display()))?;
    // The first instance waits (on a FIFO nobody opens) while `hold`
    // exists, so that armourd sees it start; every restart finds `hold`
    // gone and exits 3 at once.
    let hold = scene.dir.join("hold");
    let fifo = scene.dir.join("fifo");
    fs::write(&hold, "")?;
    mkfifo(&fifo)?;
    let script = format!(
        "[ -e {} ] && read line < {}; exit 3",
        hold.display(),
        fifo.display()
    );
    let mut child = super::armourd(daemon, &config, backend)
        .args(["--dbus", "none"])
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start armourd")?;
    let lines = log_lines(&mut child);
    let pid = child.id();
    scene.daemon = Some(child);
    wait_for(&lines, Duration::from_secs(20), |l| l.contains("ready"))
        .context("armourd did not get ready")?;
    let first = Command::new(&scene.program)
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start the crashing program")?;
    let first_pid = first.id();
    scene.first = Some(first);
    wait_for(&lines, Duration::from_secs(10), |l| {
        l.contains(&format!("pid {first_pid} ("))
    })
    .context("armourd did not watch the crashing program")?;
    fs::remove_file(&hold)?;
    signal(first_pid, libc::SIGKILL);
    let used = usage(pid, WINDOW)?;
    let restarts = lines
        .try_iter()
        .filter(|l| l.contains("restarted "))
        .count();
    Ok(CrashLoop {
        restarts,
        cpu_percent: used.cpu_percent,
    })
}

fn mkfifo(path: &Path) -> Result<()> {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .context("cannot run mkfifo")?;
    anyhow::ensure!(status.success(), "mkfifo {} failed", path.display());
    Ok(())
}
