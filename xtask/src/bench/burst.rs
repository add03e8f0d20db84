//! The burst and soak rows of `cargo xtask bench` (SPEC §11): [`COUNT`]
//! watched processes killed at once must all be back within 1 s with no
//! kernel record lost, and [`SOAK`] restarts (bursts of them) must leave
//! armourd's descriptors and anonymous memory where they were.
//!
//! How long a burst takes depends on what is restarted as much as on
//! armourd: each of the [`COUNT`] restarted programs starts on the same
//! CPUs. So the bursts kill two services ([`Services`]), and [`floor`]
//! measures the same bursts under the simplest supervisor there is, which
//! detects nothing: what the machine allows.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use super::{log_lines, memory, pids_of, signal, wait_for};
use crate::{build_cmd, cmd, setup};

/// Processes killed at once.
pub const COUNT: usize = 1000;
/// Restarts of the soak, in bursts of [`COUNT`].
pub const SOAK: usize = 10_000;
/// Bursts of the static service, and of each [`floor`].
const SHORT_BURSTS: usize = 5;

/// A program whose processes are killed and restarted.
pub struct Service {
    pub name: &'static str,
    program: PathBuf,
    args: &'static [&'static str],
}

/// `/bin/sleep`, linked against glibc as most services are, and the tests'
/// testee, a static musl program whose start costs little (on the virtual
/// machines the bench ran on, glibc's start-up alone takes about 1 ms of
/// CPU: it reads the CPU's cache layout with `cpuid`, which traps to the
/// hypervisor).
pub struct Services {
    pub sleep: Service,
    pub small: Service,
}

/// Builds the static testee.
pub fn services() -> Result<Services> {
    let target = setup::daemon_target();
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(cmd::workspace_root())
        .args([
            "build",
            "--release",
            "-p",
            "armourd-tests",
            "--bin",
            "testee",
        ])
        .args(["--target", &target]);
    build_cmd::test_programs(&mut cargo, &target);
    println!("bench: building the static service ({})", cmd::show(&cargo));
    cmd::run(&mut cargo).context("building the testee failed")?;
    let small = cmd::target_dir()?.join(&target).join("release/testee");
    ensure!(small.exists(), "cargo built no {}", small.display());
    Ok(Services {
        sleep: Service {
            name: "/bin/sleep",
            program: fs::canonicalize("/bin/sleep")?,
            args: &["100000"],
        },
        small: Service {
            name: "static testee",
            program: small,
            args: &[],
        },
    })
}

/// What bursts and the soak cost.
pub struct Burst {
    /// From the kills to the last restart armourd logged, median of the
    /// bursts of `/bin/sleep` (the first and those of the soak).
    pub seconds: f64,
    /// The same, median of the bursts of the static service.
    pub small_seconds: f64,
    /// Kernel records lost during all bursts (eBPF: counted in the kernel;
    /// proc connector: socket buffer overflows, each of unknown size).
    pub lost: u64,
    /// The largest VmRSS of armourd seen during the bursts, KiB (VmHWM
    /// would be start-up's, when the kernel's BTF is parsed).
    pub peak_kib: u64,
    /// Open descriptors of armourd before and after the soak.
    pub fds: [usize; 2],
    /// RssAnon of armourd before and after the soak, KiB.
    pub anon_kib: [u64; 2],
}

/// armourd (`daemon`, `--backend backend`) watching [`COUNT`] processes of
/// `service`, ready.
struct Watched {
    scene: super::Scene,
    lines: Receiver<String>,
    pid: u32,
}

fn watch(daemon: &Path, backend: &str, service: &Service) -> Result<Watched> {
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
    fs::copy(&service.program, &scene.service)?;
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
            .args(service.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
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
    Ok(Watched { scene, lines, pid })
}

/// Runs the bursts and the soak under armourd (`daemon`, `--backend backend`).
pub fn measure(daemon: &Path, backend: &str, services: &Services) -> Result<Burst> {
    let (mut lost, mut peak_kib) = (0, 0);
    let mut sleeps = Vec::new();
    let (fds, anon_kib) = {
        let w = watch(daemon, backend, &services.sleep)?;
        let mut run = |times: &mut Vec<f64>| -> Result<()> {
            let (seconds, burst_lost, peak) = burst(&w.scene.service, &w.lines, w.pid)?;
            times.push(seconds);
            lost += burst_lost;
            peak_kib = peak_kib.max(peak);
            Ok(())
        };
        run(&mut sleeps)?;
        let before = (fds(w.pid)?, memory(w.pid)?[1]);
        for _ in 0..SOAK / COUNT {
            run(&mut sleeps)?;
        }
        let after = (fds(w.pid)?, memory(w.pid)?[1]);
        ([before.0, after.0], [before.1, after.1])
    };
    let mut smalls = Vec::new();
    {
        let w = watch(daemon, backend, &services.small)?;
        for _ in 0..SHORT_BURSTS {
            let (seconds, burst_lost, peak) = burst(&w.scene.service, &w.lines, w.pid)?;
            smalls.push(seconds);
            lost += burst_lost;
            peak_kib = peak_kib.max(peak);
        }
    }
    // One burst is one sample of a busy machine: every burst's time, for
    // comparing runs.
    for (service, times) in [(&services.sleep, &sleeps), (&services.small, &smalls)] {
        println!(
            "bench: {backend} bursts of {} (s): {}",
            service.name,
            show(times)
        );
    }
    Ok(Burst {
        seconds: median(sleeps),
        small_seconds: median(smalls),
        lost,
        peak_kib,
        fds,
        anon_kib,
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

/// The bursts of `service` under the simplest supervisor: this process
/// starts [`COUNT`] of them, kills them at once and starts one anew as
/// each is reaped, detecting nothing and logging nothing. The median of
/// [`SHORT_BURSTS`] bursts, in seconds.
pub fn floor(service: &Service) -> Result<f64> {
    let start = || -> Result<u32> {
        let child = Command::new(&service.program)
            .args(service.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the service")?;
        Ok(child.id()) // reaped below, by pid
    };
    let mut children = Children(HashSet::new());
    for _ in 0..COUNT {
        children.0.insert(start()?);
    }
    let mut times = Vec::new();
    for _ in 0..SHORT_BURSTS {
        std::thread::sleep(Duration::from_millis(500));
        let began = Instant::now();
        let dying = std::mem::take(&mut children.0);
        for &pid in &dying {
            signal(pid, libc::SIGKILL);
        }
        for _ in 0..dying.len() {
            reap_one(&dying)?;
            children.0.insert(start()?);
        }
        times.push(began.elapsed().as_secs_f64());
    }
    println!(
        "bench: bare supervisor, bursts of {} (s): {}",
        service.name,
        show(&times)
    );
    Ok(median(times))
}

/// Waits for one of `of` to end and reaps it (and any other child of
/// this process that ended meanwhile).
fn reap_one(of: &HashSet<u32>) -> Result<u32> {
    loop {
        let mut status = 0;
        // SAFETY: waits for any child of this process; `status` is ours.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            bail!("waitpid: {}", std::io::Error::last_os_error());
        }
        if of.contains(&(pid as u32)) {
            return Ok(pid as u32);
        }
    }
}

/// Processes started by [`floor`], killed and reaped when dropped.
struct Children(HashSet<u32>);

impl Drop for Children {
    fn drop(&mut self) {
        for &pid in &self.0 {
            signal(pid, libc::SIGKILL);
        }
        for &pid in &self.0 {
            // SAFETY: reaps a child of this process by pid.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
        }
    }
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(f64::NAN)
}

fn show(times: &[f64]) -> String {
    let times: Vec<String> = times.iter().map(|s| format!("{s:.2}")).collect();
    times.join(" ")
}

/// The open descriptors of `pid`.
fn fds(pid: u32) -> Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}
