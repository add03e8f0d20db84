//! `cargo xtask bench`: measures restart latency, CPU and wake-ups (idle and
//! under an exec+exit storm of unrelated processes), memory and binary size
//! for each backend, prints a table and writes BENCHMARKS.md (SPEC §11).
//!
//! It also floods armourd over D-Bus (see [`flood`]) and reports root's
//! reply latency, armourd's peak memory and a restart's latency meanwhile.
//!
//! Restart latency is the daemon's own `restart latency` debug line: the
//! kernel timestamp of the replacement's exec minus that of the crashed
//! process's exit, both taken in the kernel (eBPF: `bpf_ktime_get_ns`;
//! proc connector: the event's `timestamp_ns`).

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{build_cmd, cmd};

mod burst;
mod crash_loop;
mod flood;

#[derive(clap::Args)]
pub struct BenchOptions {
    /// Restarts measured per backend
    #[arg(long, default_value_t = 300)]
    restarts: usize,
    /// Seconds of each CPU measurement (idle, storm)
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unrelated exec+exit per second during the storm
    #[arg(long, default_value_t = 1500)]
    storm_rate: u32,
    /// Services armourd watches during the D-Bus flood
    #[arg(long, default_value_t = 200)]
    flood_services: usize,
    /// Connections of uid 65534 in the D-Bus flood
    #[arg(long, default_value_t = 160)]
    flood_connections: usize,
    /// `GetProcesses` calls each flooding connection sends
    #[arg(long, default_value_t = 125)]
    flood_calls: usize,
    /// Seconds root keeps calling `ListProcesses` during the flood
    #[arg(long, default_value_t = 10)]
    flood_seconds: u64,
    /// Measure only the D-Bus flood and print it (BENCHMARKS.md is left as it is)
    #[arg(long)]
    flood_only: bool,
    /// Measure only the burst and the soak and print them (BENCHMARKS.md is left as it is)
    #[arg(long)]
    burst_only: bool,
    /// With `--burst-only`: measure this backend only (`ebpf` or `proc-connector`)
    #[arg(long, requires = "burst_only", value_parser = BACKENDS)]
    backend: Option<String>,
    /// With `--burst-only`: run this armourd instead of building one (to
    /// compare two builds under the same load)
    #[arg(long, requires = "burst_only")]
    daemon: Option<std::path::PathBuf>,
    /// Measure only the storm and print its rows, with the machine's load
    /// (BENCHMARKS.md is left as it is)
    #[arg(long)]
    storm_only: bool,
}

/// The rows: each backend as `ready` names it; the proc connector with
/// fanotify (the default) and without (`ARMOURD_FANOTIFY=off`).
const BACKENDS: [&str; 3] = ["ebpf", "proc-connector+fanotify", "proc-connector"];

/// How armourd is started for the row `backend`: `--backend`, and the
/// environment added.
fn launch(backend: &str) -> (&'static str, &'static [(&'static str, &'static str)]) {
    match backend {
        "ebpf" => ("ebpf", &[]),
        "proc-connector+fanotify" => ("proc-connector", &[("ARMOURD_FANOTIFY", "on")]),
        _ => ("proc-connector", &[("ARMOURD_FANOTIFY", "off")]),
    }
}

/// `/proc/loadavg`'s three load averages: how busy the machine was.
fn load_average() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where root calls during the flood: the name every user calls, the one
/// only root may call, and the control socket, past the bus (SPEC §7).
const ROOT_NAMES: [&str; 3] = [
    "com.github.Armourd",
    "com.github.Armourd.Root",
    flood::CONTROL_SOCKET,
];

struct Report {
    backend: &'static str,
    latencies_us: Vec<u64>,
    /// Per restart, µs: crash to armourd handling it, handling to the
    /// spawn, spawn to the restart's exec (when the daemon logged them).
    steps_us: Vec<[u64; 3]>,
    idle: Usage,
    storm: Usage,
    storm_achieved: f64,
    vm_rss_kib: u64,
    /// The part of VmRSS that is armourd's own memory (heap, stacks, ring
    /// buffer); the rest is file pages (code) shared with the page cache.
    rss_anon_kib: u64,
    vm_hwm_kib: u64,
    crash_loop: Option<crash_loop::CrashLoop>,
    burst: Option<burst::Burst>,
}

#[derive(Clone, Copy)]
struct Usage {
    cpu_percent: f64,
    wakeups_per_s: f64,
}

pub fn bench(options: &BenchOptions) -> Result<()> {
    ensure!(
        cmd::is_root(),
        "the benchmark runs armourd, which needs root"
    );
    if let (true, Some(daemon)) = (options.burst_only, &options.daemon) {
        return burst_only(options, daemon);
    }
    let built = build_cmd::build(&build_cmd::BuildOptions {
        debug: false,
        target: None,
    })?;
    let binary_size = fs::metadata(&built.daemon)?.len();
    let floods = || {
        ROOT_NAMES
            .into_iter()
            .filter_map(|root_name| {
                println!("bench: D-Bus flood, root calling {root_name} …");
                let flood_options = flood::FloodOptions {
                    services: options.flood_services,
                    connections: options.flood_connections,
                    calls: options.flood_calls,
                    seconds: options.flood_seconds,
                    root_name,
                };
                flood::measure(&built.daemon, BACKENDS[0], flood_options)
                    .map_err(|err| {
                        println!("bench: the D-Bus flood could not be measured: {err:#}")
                    })
                    .ok()
            })
            .collect::<Vec<_>>()
    };
    if options.burst_only {
        return burst_only(options, &built.daemon);
    }
    if options.storm_only {
        return storm_rows(&built.daemon, options);
    }
    if options.flood_only {
        let floods = floods();
        let mut text = String::new();
        render_flood(&mut text, &floods);
        for miss in floods.iter().flat_map(flood_misses) {
            let _ = writeln!(text, "- {miss}");
        }
        print!("{text}");
        return Ok(());
    }
    let services = burst::services()?;
    let load_before = load_average();
    let mut reports = Vec::new();
    for backend in BACKENDS {
        println!("bench: {backend} …");
        match measure(&built.daemon, backend, options) {
            Ok(mut report) => {
                println!("bench: {backend} crash loop …");
                match crash_loop::measure(&built.daemon, backend) {
                    Ok(looped) => report.crash_loop = Some(looped),
                    Err(err) => println!("bench: {backend} crash loop failed: {err:#}"),
                }
                println!("bench: {backend} burst and soak …");
                match burst::measure(&built.daemon, backend, &services) {
                    Ok(burst) => report.burst = Some(burst),
                    Err(err) => println!("bench: {backend} burst failed: {err:#}"),
                }
                reports.push(report);
            }
            Err(err) => println!("bench: {backend} could not be measured: {err:#}"),
        }
    }
    ensure!(!reports.is_empty(), "no backend could be measured");
    let floors = floors(&services);
    let floods = floods();
    let load = [load_before, load_average()];
    let text = render(&reports, &floods, floors, binary_size, options, &load);
    print!("{text}");
    let path = cmd::workspace_root().join("BENCHMARKS.md");
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("bench: wrote {}", path.display());
    Ok(())
}

/// A temporary directory with a copy of `sleep` as the watched service.
/// `armourd -c CONFIG --backend BACKEND`, its state kept beside the
/// configuration (not in the machine's `/run/armourd`).
fn armourd(daemon: &Path, config: &Path, backend: &str) -> Command {
    let (flag, env) = launch(backend);
    let mut cmd = Command::new(daemon);
    cmd.arg("-c")
        .arg(config)
        .args(["--backend", flag, "--state-dir"])
        .arg(config.with_file_name("state"))
        .envs(env.iter().copied());
    cmd
}

/// A scratch folder, the daemon and the service of one measurement;
/// dropping it stops armourd, kills the service's processes and removes
/// the folder.
struct Scene {
    dir: PathBuf,
    daemon: Option<Child>,
    service: PathBuf,
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            signal(daemon.id(), libc::SIGTERM);
            let _ = daemon.wait();
        }
        for pid in pids_of(&self.service) {
            signal(pid, libc::SIGKILL);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// armourd watching a copy of `sleep` (which runs, adopted at start-up),
/// ready: the scene, the service's first process, armourd's log lines.
fn start(daemon: &Path, backend: &str) -> Result<(Scene, Child, Receiver<String>)> {
    let dir = std::env::temp_dir()
        .canonicalize()?
        .join(format!("armourd-bench-{}-{backend}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let mut scene = Scene {
        service: dir.join("bench-service"),
        dir,
        daemon: None,
    };
    fs::copy(fs::canonicalize("/usr/bin/sleep")?, &scene.service)?;
    let config = scene.dir.join("armourd.conf");
    // Killed again and again: without backoff=none that would be a crash
    // loop, and the restarts would wait (measured by the crash-loop row).
    fs::write(
        &config,
        format!("{} backoff=none\n", scene.service.display()),
    )?;
    let first = Command::new(&scene.service)
        .arg("1000000")
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start the benchmark service")?;
    // Adopted by armourd at start-up; the first kill below ends it.
    let mut child = armourd(daemon, &config, backend)
        .args(["--dbus", "none", "-v"])
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start armourd")?;
    let lines = log_lines(&mut child);
    scene.daemon = Some(child);
    wait_for(&lines, Duration::from_secs(20), |l| l.contains("ready"))
        .context("armourd did not get ready")?;

    Ok((scene, first, lines))
}

/// The storm alone on each backend, printed with the machine's load.
fn storm_rows(daemon: &Path, options: &BenchOptions) -> Result<()> {
    let load_before = load_average();
    let mut text = String::from(
        "| backend | storm rate | storm CPU | storm wake-ups/s |\n|---|---|---|---|\n",
    );
    for backend in BACKENDS {
        println!("bench: {backend} storm …");
        let (scene, mut first, _lines) = start(daemon, backend)?;
        let pid = scene.daemon.as_ref().map_or(0, Child::id);
        let (storm, achieved) = storm(pid, options)?;
        let _ = first.kill();
        let _ = first.wait();
        let _ = writeln!(
            text,
            "| {backend} | {achieved:.0}/s | {:.2} % | {:.1} |",
            storm.cpu_percent, storm.wakeups_per_s
        );
    }
    let _ = writeln!(
        text,
        "load average (1, 5, 15 min) before: {load_before}; after: {}",
        load_average()
    );
    print!("{text}");
    Ok(())
}

fn measure(daemon: &Path, backend: &'static str, options: &BenchOptions) -> Result<Report> {
    let (scene, mut first, lines) = start(daemon, backend)?;
    let pid = scene.daemon.as_ref().map_or(0, Child::id);
    let idle = usage(pid, Duration::from_secs(options.seconds))?;
    let (storm, storm_achieved) = storm(pid, options)?;
    let (latencies_us, steps_us) = latencies(&scene.service, &lines, options.restarts)?;
    let _ = first.wait();
    let [vm_rss_kib, rss_anon_kib, vm_hwm_kib] = memory(pid)?;
    Ok(Report {
        backend,
        latencies_us,
        steps_us,
        idle,
        storm,
        storm_achieved,
        vm_rss_kib,
        rss_anon_kib,
        vm_hwm_kib,
        crash_loop: None,
        burst: None,
    })
}

fn log_lines(child: &mut Child) -> Receiver<String> {
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(
    lines: &Receiver<String>,
    timeout: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return Ok(line),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("timed out after {timeout:?}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("armourd exited"),
        }
    }
}

/// Kills the service `count` times and collects the daemon's latency lines:
/// the latencies and, where the line has them, their steps.
fn latencies(
    service: &Path,
    lines: &Receiver<String>,
    count: usize,
) -> Result<(Vec<u64>, Vec<[u64; 3]>)> {
    let mut found = Vec::with_capacity(count);
    let mut steps = Vec::with_capacity(count);
    while found.len() < count {
        let pids = pids_of(service);
        let [pid] = pids[..] else {
            bail!("expected one running service, found {pids:?}");
        };
        signal(pid, libc::SIGKILL);
        let line = wait_for(lines, Duration::from_secs(10), |l| {
            l.contains("restart latency")
        })
        .context("no restart seen")?;
        let micros = line
            .split("restart latency ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unreadable latency line: {line}"))?;
        found.push(micros);
        let step = |label: &str| -> Option<u64> {
            line.split(label).nth(1)?.split(' ').next()?.parse().ok()
        };
        if let (Some(seen), Some(handled), Some(spawned)) =
            (step("seen after "), step("spawn began "), step("exec "))
        {
            steps.push([seen, handled, spawned]);
        }
        // Let the new instance settle, as a real crash would not come at once.
        thread::sleep(Duration::from_millis(20));
    }
    Ok((found, steps))
}

/// CPU time (utime + stime, ticks) and context switches of `pid`.
fn counters(pid: u32) -> Result<(u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let switches = status
        .lines()
        .filter(|l| l.contains("ctxt_switches"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    Ok((ticks, switches))
}

fn usage(pid: u32, span: Duration) -> Result<Usage> {
    let (t0, s0) = counters(pid)?;
    let start = Instant::now();
    thread::sleep(span);
    usage_since(pid, (t0, s0), start)
}

fn usage_since(pid: u32, (t0, s0): (u64, u64), start: Instant) -> Result<Usage> {
    let (t1, s1) = counters(pid)?;
    let secs = start.elapsed().as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(Usage {
        cpu_percent: (t1 - t0) as f64 / hz / secs * 100.0,
        wakeups_per_s: (s1 - s0) as f64 / secs,
    })
}

/// Runs unrelated `/bin/true` at `storm_rate` per second (from a few
/// threads, since one exec+wait takes longer than the interval) while measuring.
fn storm(pid: u32, options: &BenchOptions) -> Result<(Usage, f64)> {
    const THREADS: u32 = 3;
    let before = counters(pid)?;
    let start = Instant::now();
    let span = Duration::from_secs(options.seconds);
    let interval = Duration::from_secs_f64(f64::from(THREADS) / f64::from(options.storm_rate));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            thread::spawn(move || {
                let mut done = 0u64;
                let mut next = start;
                while start.elapsed() < span {
                    if Command::new("/bin/true").status().is_ok() {
                        done += 1;
                    }
                    next += interval;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                }
                done
            })
        })
        .collect();
    let done: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    let used = usage_since(pid, before, start)?;
    Ok((used, done as f64 / start.elapsed().as_secs_f64()))
}

/// VmRSS, RssAnon and VmHWM of `pid`, KiB.
fn memory(pid: u32) -> Result<[u64; 3]> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    Ok([field("VmRSS:"), field("RssAnon:"), field("VmHWM:")])
}

fn pids_of(exe: &Path) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe)
                && fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    !s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
        })
        .collect()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory preconditions; pids come from this benchmark.
    unsafe { libc::kill(pid as i32, sig) };
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank] as f64 / 1000.0
}

fn machine() -> String {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let kernel = read("/proc/sys/kernel/osrelease");
    format!(
        "{cores} cores ({cpu}), {:.0} GiB, Linux {}",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

fn render(
    reports: &[Report],
    floods: &[flood::FloodReport],
    floors: Option<[f64; 2]>,
    binary_size: u64,
    options: &BenchOptions,
    load: &[String; 2],
) -> String {
    let mut out = String::from("# armourd benchmarks\n\n");
    let _ = writeln!(out, "Written by `cargo xtask bench`.\n");
    let _ = writeln!(out, "- machine: {}", machine());
    let _ = writeln!(
        out,
        "- load average (1, 5, 15 min) as the backends' runs began: {}; as they ended: {} \
         (anything else running on the machine shares its cores with the runs); \
         kernel.pid_max {} (the smaller it is, the more often the proc connector's \
         filter takes an old process for a young one and passes its forks)",
        load[0],
        load[1],
        fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(
        out,
        "- release binary: {:.2} MiB ({binary_size} bytes)",
        binary_size as f64 / 1048576.0
    );
    let _ = writeln!(
        out,
        "- restarts per backend: {}; CPU windows: {} s; storm: {} unrelated `/bin/true` exec+exit per second requested\n",
        options.restarts, options.seconds, options.storm_rate
    );
    out.push_str("| backend | latency p50 | p90 | p99 | max | idle CPU | idle wake-ups/s | storm rate | storm CPU | storm wake-ups/s | VmRSS | of it anon | VmHWM |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in reports {
        let mut sorted = r.latencies_us.clone();
        sorted.sort_unstable();
        let _ = writeln!(
            out,
            "| {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.2} % | {:.1} | {:.0}/s | {:.2} % | {:.1} | {} KiB | {} KiB | {} KiB |",
            r.backend,
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.9),
            percentile(&sorted, 0.99),
            percentile(&sorted, 1.0),
            r.idle.cpu_percent,
            r.idle.wakeups_per_s,
            r.storm_achieved,
            r.storm.cpu_percent,
            r.storm.wakeups_per_s,
            r.vm_rss_kib,
            r.rss_anon_kib,
            r.vm_hwm_kib,
        );
    }
    out.push_str("\nWhere a restart's time goes (p50 / p99 of each step, from the daemon's clock readings):\n\n");
    out.push_str(
        "| backend | crash → armourd has the event | → spawn begins | → restart's exec |\n",
    );
    out.push_str("|---|---|---|---|\n");
    for r in reports.iter().filter(|r| !r.steps_us.is_empty()) {
        let mut cells = Vec::new();
        for i in 0..3 {
            let mut column: Vec<u64> = r.steps_us.iter().map(|s| s[i]).collect();
            column.sort_unstable();
            cells.push(format!(
                "{:.3} / {:.3} ms",
                percentile(&column, 0.5),
                percentile(&column, 0.99)
            ));
        }
        let _ = writeln!(out, "| {} | {} |", r.backend, cells.join(" | "));
    }
    if !floods.is_empty() {
        render_flood(&mut out, floods);
    }
    let _ = writeln!(
        out,
        "\nA program that exits 3 at once, watched for {} s with default options:\n",
        crash_loop::WINDOW.as_secs()
    );
    out.push_str("| backend | restarts | armourd CPU |\n|---|---|---|\n");
    for r in reports {
        if let Some(looped) = &r.crash_loop {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} % |",
                r.backend, looped.restarts, looped.cpu_percent
            );
        }
    }
    out.push_str(&burst_header());
    for r in reports {
        if let Some(burst) = &r.burst {
            render_burst_row(&mut out, r.backend, burst);
        }
    }
    out.push_str(&floor_row(floors));
    let _ = writeln!(
        out,
        "\nTargets (SPEC §11): p50 ≤ {} ms, p99 ≤ {} ms on both backends; no wake-ups when idle; \
         storm CPU ≤ {} % (eBPF) and ≤ {} % (proc connector); VmRSS ≤ {} MiB; \
         a crash loop ≤ {} restarts in its first 10 s and < {} % CPU; \
         under the D-Bus flood (issue 14) VmRSS < {} MiB and each of root's calls answered within {} ms.",
        TARGETS.p50_ms,
        TARGETS.p99_ms,
        TARGETS.storm_ebpf,
        TARGETS.storm_proc_connector,
        TARGETS.rss_mib,
        TARGETS.loop_restarts,
        TARGETS.loop_cpu,
        TARGETS.flood_rss_mib,
        TARGETS.flood_root_ms,
    );
    let mut misses = misses(reports);
    misses.extend(floods.iter().flat_map(flood_misses));
    if misses.is_empty() {
        out.push_str("\nEvery target is met.\n");
    } else {
        out.push_str("\n## Missed targets\n\n");
        for miss in misses {
            let _ = writeln!(out, "- {miss}");
        }
        out.push_str("\nREADME.md, section Performance, says where the time and memory go.\n");
    }
    out
}

/// The targets of SPEC §11.
struct Targets {
    p50_ms: f64,
    p99_ms: f64,
    storm_ebpf: f64,
    storm_proc_connector: f64,
    rss_mib: f64,
    loop_restarts: f64,
    loop_cpu: f64,
    flood_rss_mib: f64,
    flood_root_ms: f64,
}

const TARGETS: Targets = Targets {
    p50_ms: 0.5,
    p99_ms: 1.0,
    storm_ebpf: 0.5,
    storm_proc_connector: 1.0,
    rss_mib: 4.0,
    loop_restarts: 8.0,
    loop_cpu: 1.0,
    flood_rss_mib: 16.0,
    flood_root_ms: 100.0,
};

/// The targets of SPEC §11 that `reports` miss, and by how much.
fn misses(reports: &[Report]) -> Vec<String> {
    let mut misses = Vec::new();
    for r in reports {
        let mut sorted = r.latencies_us.clone();
        sorted.sort_unstable();
        let mut unmeasured = Vec::new();
        let mut check = |what: &str, value: f64, target: f64, unit: &str| {
            if value > target {
                misses.push(format!(
                    "{}: {what} {value:.3} {unit} > {target} {unit} (by {:.3} {unit})",
                    r.backend,
                    value - target
                ));
            }
        };
        check(
            "latency p50",
            percentile(&sorted, 0.5),
            TARGETS.p50_ms,
            "ms",
        );
        check(
            "latency p99",
            percentile(&sorted, 0.99),
            TARGETS.p99_ms,
            "ms",
        );
        check("idle wake-ups", r.idle.wakeups_per_s, 0.0, "/s");
        let storm_target = if r.backend == "ebpf" {
            TARGETS.storm_ebpf
        } else {
            TARGETS.storm_proc_connector
        };
        check("storm CPU", r.storm.cpu_percent, storm_target, "%");
        check(
            "VmRSS",
            r.vm_rss_kib as f64 / 1024.0,
            TARGETS.rss_mib,
            "MiB",
        );
        match &r.crash_loop {
            Some(looped) => {
                check(
                    "crash-loop restarts",
                    looped.restarts as f64,
                    TARGETS.loop_restarts,
                    "",
                );
                check("crash-loop CPU", looped.cpu_percent, TARGETS.loop_cpu, "%");
            }
            None => unmeasured.push(format!("{}: the crash loop was not measured", r.backend)),
        }
        match &r.burst {
            Some(burst) => {
                check("burst: all back", burst.seconds, 1.0, "s");
                check("burst: records lost", burst.lost as f64, 0.0, "");
                let added = burst.fds[1].saturating_sub(burst.fds[0]);
                check("descriptors added by the soak", added as f64, 0.0, "");
            }
            None => unmeasured.push(format!("{}: the burst was not measured", r.backend)),
        }
        misses.append(&mut unmeasured);
    }
    misses
}

/// The flood's table: root's round trips, armourd's peak memory, the restart.
fn render_flood(out: &mut String, floods: &[flood::FloodReport]) {
    let o = &floods[0].options;
    let _ = writeln!(
        out,
        "\nD-Bus flood ({}): {} connections of uid 65534 send {} `GetProcesses` each ({} calls, \
         replies never read) while armourd watches {} services; root calls `ListProcesses` \
         one call after the other for {} s, at the name in the first column; {} services are \
         crashed, one every 0.1 s, from 0.5 s into the flood.\n",
        BACKENDS[0],
        o.connections,
        o.calls,
        o.connections * o.calls,
        o.services,
        o.seconds,
        flood::CRASHES,
    );
    out.push_str("| root calls | root's calls | failed | first | p50 | max | flood sent after | peak VmRSS | restart latency p50 / max (crash → event p50 / max) | CPU armourd | CPU dbus-daemon |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for flood in floods {
        let mut sorted = flood.root_us.clone();
        sorted.sort_unstable();
        let ms = |us: Option<u64>| {
            us.map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1000.0))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} KiB | {} | {:.2} s | {:.2} s |",
            flood.options.root_name,
            flood.root_us.len(),
            flood.root_failed,
            ms(flood.root_us.first().copied()),
            if sorted.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1} ms", percentile(&sorted, 0.5))
            },
            ms(sorted.last().copied()),
            flood
                .sent_after
                .map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            flood.peak_rss_kib,
            restarts(flood),
            flood.armourd_cpu_s,
            flood.bus_cpu_s,
        );
    }
}

/// The flood's targets that were missed, and by how much.
fn flood_misses(flood: &flood::FloodReport) -> Vec<String> {
    let mut misses = Vec::new();
    let rss_mib = flood.peak_rss_kib as f64 / 1024.0;
    if rss_mib >= TARGETS.flood_rss_mib {
        misses.push(format!(
            "D-Bus flood: peak VmRSS {rss_mib:.1} MiB ≥ {} MiB",
            TARGETS.flood_rss_mib
        ));
    }
    if let Some(&max) = flood.root_us.iter().max() {
        let max_ms = max as f64 / 1000.0;
        if max_ms > TARGETS.flood_root_ms {
            misses.push(format!(
                "D-Bus flood, root calling {}: root's slowest call {max_ms:.1} ms > {} ms (first call {:.1} ms)",
                flood.options.root_name,
                TARGETS.flood_root_ms,
                flood.root_us[0] as f64 / 1000.0
            ));
        }
    }
    if flood.root_failed > 0 {
        misses.push(format!(
            "D-Bus flood: {} of root's calls failed",
            flood.root_failed
        ));
    }
    if flood.restart_us.len() < flood::CRASHES {
        misses.push(format!(
            "D-Bus flood: {} of {} crashed services' restarts were seen",
            flood.restart_us.len(),
            flood::CRASHES
        ));
    }
    misses
}

/// The flood's restart latencies and how long armourd took to see each crash.
fn restarts(flood: &flood::FloodReport) -> String {
    if flood.restart_us.is_empty() {
        return "not seen".to_owned();
    }
    let mut all = flood.restart_us.clone();
    all.sort_unstable();
    let mut seen: Vec<u64> = flood.restart_steps_us.iter().map(|s| s[0]).collect();
    seen.sort_unstable();
    let mut text = format!(
        "{:.3} / {:.3} ms",
        percentile(&all, 0.5),
        percentile(&all, 1.0)
    );
    if !seen.is_empty() {
        let _ = write!(
            text,
            " ({:.3} / {:.3} ms)",
            percentile(&seen, 0.5),
            percentile(&seen, 1.0)
        );
    }
    text
}

/// `--burst-only`: the bursts and soak of `daemon`, and the bare
/// supervisor's, printed.
fn burst_only(options: &BenchOptions, daemon: &Path) -> Result<()> {
    let services = burst::services()?;
    let mut text = String::new();
    let chosen = BACKENDS
        .into_iter()
        .filter(|b| options.backend.as_deref().is_none_or(|only| only == *b));
    for backend in chosen {
        println!("bench: {backend} bursts and soak …");
        let burst = burst::measure(daemon, backend, &services)?;
        render_burst_row(&mut text, backend, &burst);
    }
    text.push_str(&floor_row(floors(&services)));
    print!("{}{text}", burst_header());
    Ok(())
}

/// The bare supervisor's bursts of `/bin/sleep` and of the static service.
fn floors(services: &burst::Services) -> Option<[f64; 2]> {
    let measured = [&services.sleep, &services.small].map(|service| {
        println!("bench: bare supervisor, bursts of {} …", service.name);
        burst::floor(service)
            .map_err(|err| println!("bench: the bare supervisor could not be measured: {err:#}"))
            .ok()
    });
    match measured {
        [Some(sleep), Some(small)] => Some([sleep, small]),
        _ => None,
    }
}

/// The heading and table head of the burst rows.
fn burst_header() -> String {
    format!(
        "\n{} watched processes killed at once (SIGKILL), then a soak of {} restarts in bursts \
         like it (`backoff=none`). All back: from the kills to the last restart armourd logged, \
         the median of the first burst and the soak's of `/bin/sleep` (glibc), and of 5 bursts \
         of a static musl program (the tests' testee), whose start costs less CPU:\n\n\
         | backend | all back: /bin/sleep | all back: static | records lost | peak VmRSS | descriptors before → after soak | RssAnon before → after soak |\n\
         |---|---|---|---|---|---|---|\n",
        burst::COUNT,
        burst::SOAK
    )
}

/// What the machine allows: the bare supervisor's row.
fn floor_row(floors: Option<[f64; 2]>) -> String {
    floors.map_or_else(String::new, |[sleep, small]| {
        format!(
            "| bare supervisor (this bench's process: `waitpid`, then `posix_spawn`; detects and \
             logs nothing) | {sleep:.2} s | {small:.2} s | - | - | - | - |\n"
        )
    })
}

fn render_burst_row(out: &mut String, backend: &str, burst: &burst::Burst) {
    let _ = writeln!(
        out,
        "| {backend} | {:.2} s | {:.2} s | {} | {:.2} MiB | {} → {} | {} → {} KiB |",
        burst.seconds,
        burst.small_seconds,
        burst.lost,
        burst.peak_kib as f64 / 1024.0,
        burst.fds[0],
        burst.fds[1],
        burst.anon_kib[0],
        burst.anon_kib[1],
    );
}
