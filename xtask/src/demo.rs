//! `cargo xtask demo`: builds, then shows armourd restarting a crashed
//! process: a copy of `sleep` is watched, gets SIGSEGV, and comes back.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{build_cmd, cmd};

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const RESTART_WAIT: Duration = Duration::from_secs(2);

pub fn demo() -> Result<()> {
    ensure!(
        cmd::is_root(),
        "the demo runs armourd, which needs root; run it as root (e.g. `sudo -E cargo xtask demo`)"
    );
    let built = build_cmd::build(&build_cmd::BuildOptions {
        debug: false,
        target: None,
    })?;
    Demo::new()?.show(&built.daemon)
}

/// The temporary directory, the watched copy of `sleep`, and the daemon;
/// all of them are gone when it is dropped (also on errors).
struct Demo {
    dir: PathBuf,
    service: PathBuf,
    /// armourd and the thread that copies its stderr to ours.
    daemon: Option<(Child, JoinHandle<()>)>,
}

impl Demo {
    fn new() -> Result<Self> {
        let tmp = std::env::temp_dir()
            .canonicalize()
            .context("no usable temporary directory")?;
        let dir = tmp.join(format!("armourd-demo-{}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        let demo = Demo {
            service: dir.join("demo-service"),
            dir,
            daemon: None,
        };
        let sleep = ["/usr/bin/sleep", "/bin/sleep"]
            .iter()
            .find_map(|path| fs::canonicalize(path).ok())
            .context("no sleep binary in /usr/bin or /bin")?;
        fs::copy(&sleep, &demo.service).with_context(|| {
            format!(
                "could not copy {} to {}",
                sleep.display(),
                demo.service.display()
            )
        })?;
        Ok(demo)
    }

    fn show(&mut self, daemon: &Path) -> Result<()> {
        let config = self.dir.join("armourd.conf");
        fs::write(
            &config,
            format!("# cargo xtask demo\n{}\n", self.service.display()),
        )
        .with_context(|| format!("could not write {}", config.display()))?;

        let mut service = Command::new(&self.service);
        service
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut service = service
            .spawn()
            .with_context(|| format!("could not start {}", self.service.display()))?;
        println!(
            "demo: started {} 1000 as pid {}",
            self.service.display(),
            service.id()
        );

        let mut armourd = Command::new(daemon);
        armourd
            .arg("-c")
            .arg(&config)
            .args(["--dbus", "none", "--backend", "auto", "-v"])
            // The demo's own state, not the machine's /run/armourd.
            .arg("--state-dir")
            .arg(config.with_file_name("state"));
        println!("demo: starting `{}`", cmd::show(&armourd));
        let mut child = armourd
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {}", daemon.display()))?;
        let (ready, copier) = pass_through_stderr(&mut child)?;
        let (child, _) = self.daemon.insert((child, copier));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ready.recv_timeout(Duration::from_millis(100)).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait().context("could not check on armourd")? {
                bail!("armourd ended before it was ready ({status})");
            }
            ensure!(
                Instant::now() < deadline,
                "armourd logged no `ready` line within {READY_TIMEOUT:?}"
            );
        }

        signal(service.id(), libc::SIGSEGV)?;
        println!("demo: sent SIGSEGV to pid {}", service.id());
        service
            .wait()
            .context("could not reap the crashed demo-service")?;
        thread::sleep(RESTART_WAIT);
        let restarted = self.instances();
        ensure!(
            !restarted.is_empty(),
            "armourd did not restart demo-service within {RESTART_WAIT:?}"
        );
        let pids: Vec<String> = restarted.iter().map(u32::to_string).collect();
        println!(
            "demo: demo-service runs again as pid {}; stopping it and armourd",
            pids.join(", ")
        );
        Ok(())
    }

    /// Pids of running processes of the demo service (by `/proc/PID/exe`).
    fn instances(&self) -> Vec<u32> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let pid = entry.file_name().to_str()?.parse().ok()?;
                (fs::read_link(entry.path().join("exe")).ok()? == self.service).then_some(pid)
            })
            .collect()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // SIGTERM is a clean end, so armourd does not restart them.
        for pid in self.instances() {
            let _ = signal(pid, libc::SIGTERM);
        }
        if let Some((mut daemon, copier)) = self.daemon.take() {
            let _ = signal(daemon.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            if daemon.try_wait().ok().flatten().is_none() {
                eprintln!("demo: armourd did not end within 3 s of SIGTERM; killing it");
                let _ = daemon.kill();
                let _ = daemon.wait();
            }
            let _ = copier.join();
        }
        if let Err(error) = fs::remove_dir_all(&self.dir) {
            eprintln!("demo: could not remove {}: {error}", self.dir.display());
        }
    }
}

/// Copies the daemon's stderr to ours line by line; the receiver gets a
/// message for each line that contains `ready`.
fn pass_through_stderr(daemon: &mut Child) -> Result<(mpsc::Receiver<()>, JoinHandle<()>)> {
    let stderr = daemon
        .stderr
        .take()
        .context("armourd's stderr is not piped")?;
    let (tx, rx) = mpsc::channel();
    let copier = thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            if line.contains("ready") {
                let _ = tx.send(());
            }
        }
    });
    Ok((rx, copier))
}

fn signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("could not signal pid {pid}"));
    }
    Ok(())
}
