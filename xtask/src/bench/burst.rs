//! The burst and soak rows of `cargo xtask bench` (SPEC §11): [`COUNT`]
//! watched processes killed at once must all be back within 1 s with no
//! kernel record lost, and [`SOAK`] restarts (bursts of them) must leave
//! armourd's descriptors and anonymous memory where they were.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};

use super::{log_lines, memory, pids_of, signal, wait_for};

/// Processes killed at once.
pub const COUNT: usize = 1000;
/// Restarts of the soak, in bursts of [`COUNT`].
pub const SOAK: usize = 10_000;

/// What a burst and the soak cost.
pub struct Burst {
    /// From the kills to the last restart armourd logged.
    pub seconds: f64,
    /// Kernel records lost during the burst (eBPF: counted in the kernel;
    /// proc connector: socket buffer overflows, each of unknown size).
    pub lost: u64,
    /// The largest VmRSS of armourd seen during the burst, KiB (VmHWM
    /// would be start-up's, when the kernel's BTF is parsed).
    pub peak_kib: u64,
    /// Open descriptors of armourd before and after the soak.
    pub fds: [usize; 2],
    /// RssAnon of armourd before and after the soak, KiB.
    pub anon_kib: [u64; 2],
}

/// Runs the burst and the soak under armourd (`daemon`, `--backend backend`).
pub fn measure(daemon: &Path, backend: &str) -> Result<Burst> {
    let dir = std::env::temp_dir().canonicalize()?.join(format!(
        "armourd-bench-burst-{}-{backend}",
        std::process::id()
    ));
    fs::create_dir_all(&dir)?;
    let mut scene = super::Scene {
        service: dir.join("burst-service"),
        dir,
        daemon: None,
    };
    fs::copy(fs::canonicalize("/bin/sleep")?, &scene.service)?;
    let config = scene.dir.join("armourd.conf");
    // Bursts follow each other within `stable-after`: without this they
    // would wait their backoff, which is not what is measured.
    fs::write(
        &config,
        format!("{} backoff=none\n", scene.service.display()),
    )?;
    for _ in 0..COUNT {
        // Reaped by init once this process ends; killed by the scene.
        Command::new(&scene.service)
            .arg("100000")
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the service")?;
    }
    let mut child = super::armourd(daemon, &config, backend)
        .args(["--dbus", "none"])
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start armourd")?;
    let lines = log_lines(&mut child);
    let pid = child.id();
    scene.daemon = Some(child);
    let ready = wait_for(&lines, Duration::from_secs(60), |l| l.contains("ready"))
        .context("armourd did not get ready")?;
    ensure!(
        ready.contains(&format!("{COUNT} watched")),
        "armourd did not adopt all {COUNT} services: {ready}"
    );
    let (seconds, lost, peak_kib) = burst(&scene.service, &lines, pid)?;
    let before = (fds(pid)?, memory(pid)?[1]);
    for _ in 0..SOAK / COUNT {
        burst(&scene.service, &lines, pid)?;
    }
    let after = (fds(pid)?, memory(pid)?[1]);
    Ok(Burst {
        seconds,
        lost,
        peak_kib,
        fds: [before.0, after.0],
        anon_kib: [before.1, after.1],
    })
}

/// Kills every process of `service` at once and waits until armourd has
/// restarted each: the time that took, the records it lost and the
/// largest VmRSS of armourd (`daemon`) seen meanwhile.
fn burst(service: &Path, lines: &Receiver<String>, daemon: u32) -> Result<(f64, u64, u64)> {
    let pids = pids_of(service);
    ensure!(
        pids.len() == COUNT,
        "{} services run, not {COUNT}",
        pids.len()
    );
    while lines.try_recv().is_ok() {}
    let began = Instant::now();
    for &pid in &pids {
        signal(pid, libc::SIGKILL);
    }
    let (mut restarted, mut lost, mut peak) = (0, 0, 0);
    while restarted < COUNT {
        if restarted % 50 == 0 {
            peak = peak.max(memory(daemon)?[0]);
        }
        let line = wait_for(lines, Duration::from_secs(60), |l| {
            l.contains("restarted ") || l.contains("were lost") || l.contains("overflowed")
        })
        .with_context(|| format!("only {restarted} of {COUNT} restarted"))?;
        if line.contains("restarted ") {
            restarted += 1;
        } else if line.contains("overflowed") {
            lost += 1;
        } else if let Some(count) = line
            .split_whitespace()
            .find_map(|word| word.parse::<u64>().ok())
        {
            lost += count;
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    // The restarts reach their exec soon after armourd logs them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids_of(service).len() < COUNT && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((seconds, lost, peak))
}

/// The open descriptors of `pid`.
fn fds(pid: u32) -> Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}
