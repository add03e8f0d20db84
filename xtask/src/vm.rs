//! `cargo xtask vm-test`: boots Debian's kernels under qemu with an
//! initramfs holding static builds of armourd, the testee and the
//! integration tests, runs the suite in the guest on both backends and
//! prints a table per kernel. A kernel's result is what its guest reports;
//! a guest that reports nothing is an infrastructure error, retried once.

mod guest;
mod initramfs;
mod kernels;

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{build_cmd, cmd};
use guest::{Plan, Report, Selection, Watchdog};
use initramfs::Initramfs;
use kernels::{Apt, Arch, Kernel, Qemu, KERNELS};

#[derive(clap::Args)]
pub struct VmTestOptions {
    /// Kernels to boot (see the README's table); default: the oldest and the newest x86_64 ones
    #[arg(long = "kernel", value_name = "NAME", num_args = 1..)]
    kernels: Vec<String>,
    /// Only kernels of this architecture
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// Every kernel (both architectures), the whole guest suite and the watchdog checks
    #[arg(long)]
    all: bool,
    /// The whole guest suite instead of the short subset
    #[arg(long, conflicts_with = "ci")]
    full: bool,
    /// CI's pass: a few named tests per binary (see the README), each boot
    /// at most 12 minutes
    #[arg(long, conflicts_with_all = ["all", "watchdog"])]
    ci: bool,
    /// Only the watchdog checks (softdog), on the first selected kernel
    #[arg(long)]
    watchdog: bool,
}

/// The short pass: the scenarios that touch the kernel most (exec, exit,
/// fork, lost events) and the fall-back.
const SHORT_SUITE: [&str; 4] = ["restart", "fork", "watch", "lost_events"];
/// CI's pass, per binary of the short pass: the scenarios it runs on both
/// backends, then those the proc-connector suite leaves out.
const CI_SUITE: [(&str, &[&str], &[&str]); 4] = [
    (
        "restart",
        &[
            "restarts_after_sigkill",
            "restarts_after_exit_code_3",
            "no_restart_after_exit_0",
        ],
        &[],
    ),
    (
        "fork",
        &[
            "forking_server_leftovers_are_terminated_before_restart",
            "single_fork_daemon_is_followed",
            "double_fork_daemon_is_followed",
        ],
        &[],
    ),
    (
        "watch",
        &[
            "adopts_processes_started_before_it",
            "watches_processes_started_after_it",
            "watches_binary_appearing_in_globbed_directory",
        ],
        &[],
    ),
    (
        "lost_events",
        &["lost_events_are_reconciled_without_losing_a_restart"],
        &[],
    ),
];
/// Every guest-capable test binary but `capacity`; the rest are host-only
/// (below).
const FULL_SUITE: [&str; 8] = [
    "config",
    "fork",
    "freeze",
    "launch_context",
    "lifecycle",
    "lost_events",
    "restart",
    "watch",
];
/// Run by `cargo xtask test` on the host only: they need a D-Bus daemon and
/// dbus-python (control_socket, dbus*, policy, service) or systemd
/// (packaging), which the
/// busybox guest does not have.
const HOST_ONLY: [&str; 8] = [
    "control_socket",
    "dbus",
    "dbus_clients",
    "dbus_interface",
    "dbus_limits",
    "packaging",
    "policy",
    "service",
];
/// Left out of the guest: it forks 16,640 processes, which under TCG takes
/// longer than its time limit, and past the guest's RLIMIT_NPROC.
const HOST_ONLY_SLOW: &str = "capacity";
/// Modules the guest loads when the kernel has them as modules: FUSE for
/// the hung-mount tests.
const SUITE_MODULES: [&str; 1] = ["fuse"];
/// The kernel `--all` runs the watchdog checks on.
const WATCHDOG_KERNEL: &str = "6.12";
/// The most a boot may take before it counts as hung.
const SHORT_BOOT_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// CI's pass takes about 3 minutes a kernel here (TCG, a loaded 2-core
/// machine): a boot four times as long hangs.
const CI_BOOT_TIMEOUT: Duration = Duration::from_secs(12 * 60);
const FULL_BOOT_TIMEOUT: Duration = Duration::from_secs(120 * 60);
const WATCHDOG_BOOT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

pub fn vm_test(options: &VmTestOptions) -> Result<()> {
    let kernels = select(options)?;
    let suite = Pass::of(options);
    crate::setup::vm_packages()?;
    kernels::need("dpkg", "dpkg")?;
    kernels::need("apt-get", "apt")?;
    kernels::need("xz", "xz-utils")?;
    let apt = Apt::new()?;
    let qemu = Qemu::fetch(&apt)?;
    let work = cmd::target_dir()?.join("vm");
    fs::create_dir_all(&work).with_context(|| format!("could not create {}", work.display()))?;

    let mut rows = Vec::new();
    let mut watchdog_rows = Vec::new();
    let mut arches: Vec<Arch> = kernels.iter().map(|k| k.arch).collect();
    arches.dedup();
    for arch in arches {
        qemu.check(arch)?;
        let binaries: Vec<String> = suite
            .selections()
            .into_iter()
            .map(|selection| selection.binary)
            .chain(["fallback".to_owned()])
            .collect();
        let programs = build(arch, &binaries)?;
        let userland = kernels::guest_userland(&apt, arch)?;
        for kernel in kernels
            .iter()
            .filter(|k| k.arch == arch && !options.watchdog)
        {
            let unpacked = kernels::fetch(&apt, kernel)?;
            let plan = Plan::Suites {
                suite: suite.selections(),
                fallback: Some("fallback".to_owned()),
            };
            let dir = work.join(kernel.name);
            let initrd = dir.join("initrd.cpio");
            fs::create_dir_all(&dir)?;
            let timeout = suite.boot_timeout();
            let modules: Vec<&str> = SUITE_MODULES.to_vec();
            write_initramfs(
                &initrd, &plan, &programs, &userland, &unpacked, &modules, &dir,
            )?;
            let started = Instant::now();
            let outcome =
                boot_with_retry(&qemu, kernel, &unpacked.vmlinuz, &initrd, &dir, timeout)?;
            rows.push(Row {
                kernel: format!(
                    "{} ({} {})",
                    kernel.name,
                    unpacked.version,
                    kernel.arch.debian()
                ),
                outcome,
                time: started.elapsed(),
            });
        }
        if options.all || options.watchdog {
            let chosen = if options.watchdog {
                kernels.iter().find(|k| k.arch == arch)
            } else {
                kernels
                    .iter()
                    .find(|k| k.arch == arch && k.name == WATCHDOG_KERNEL)
            };
            if let Some(kernel) = chosen {
                let unpacked = kernels::fetch(&apt, kernel)?;
                for check in Watchdog::ALL {
                    watchdog_rows.push(watchdog(
                        &qemu, kernel, &unpacked, &programs, &userland, &work, check,
                    )?);
                }
            }
        }
    }
    if !rows.is_empty() {
        print_table(&rows, suite);
    }
    for (check, result) in &watchdog_rows {
        println!(
            "watchdog (softdog, soft_margin={}s): {:<58} {}",
            guest::SOFT_MARGIN,
            check.describe(),
            result
                .as_ref()
                .map_or_else(|e| format!("FAIL: {e}"), |_| "pass".to_owned())
        );
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|row| !row.ok())
        .map(|row| row.kernel.as_str())
        .collect();
    let watchdog_failed = watchdog_rows.iter().filter(|(_, r)| r.is_err()).count();
    if !failed.is_empty() || watchdog_failed > 0 {
        bail!(
            "vm-test failed on {} (logs in {}){}",
            failed.join(", "),
            work.display(),
            if watchdog_failed > 0 {
                format!("; {watchdog_failed} watchdog check(s) failed")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// Which tests each guest runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Ci,
    Short,
    Full,
}

impl Pass {
    fn of(options: &VmTestOptions) -> Pass {
        if options.ci {
            Pass::Ci
        } else if options.all || options.full {
            Pass::Full
        } else {
            Pass::Short
        }
    }

    fn selections(self) -> Vec<Selection> {
        match self {
            Pass::Ci => CI_SUITE
                .iter()
                .map(|(binary, tests, not_proc_connector)| Selection {
                    binary: (*binary).to_owned(),
                    tests: Some(tests.iter().map(|t| (*t).to_owned()).collect()),
                    not_proc_connector: not_proc_connector
                        .iter()
                        .map(|t| (*t).to_owned())
                        .collect(),
                })
                .collect(),
            Pass::Short => SHORT_SUITE.iter().map(|b| Selection::all(b)).collect(),
            Pass::Full => FULL_SUITE.iter().map(|b| Selection::all(b)).collect(),
        }
    }

    fn boot_timeout(self) -> Duration {
        match self {
            Pass::Ci => CI_BOOT_TIMEOUT,
            Pass::Short => SHORT_BOOT_TIMEOUT,
            Pass::Full => FULL_BOOT_TIMEOUT,
        }
    }

    /// The tests of the pass, for the table's footnote.
    fn describe(self) -> String {
        match self {
            Pass::Ci => CI_SUITE
                .iter()
                .map(|(binary, tests, not_proc_connector)| {
                    let names: Vec<String> = tests
                        .iter()
                        .map(|t| {
                            if not_proc_connector.contains(t) {
                                format!("{t} (ebpf only)")
                            } else {
                                (*t).to_owned()
                            }
                        })
                        .collect();
                    format!("{binary}: {}", names.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; "),
            Pass::Short => SHORT_SUITE.join(", "),
            Pass::Full => FULL_SUITE.join(", "),
        }
    }
}

fn select(options: &VmTestOptions) -> Result<Vec<Kernel>> {
    for name in &options.kernels {
        ensure!(
            KERNELS.iter().any(|k| k.name == name),
            "no kernel {name:?} in the list; known: {}",
            KERNELS.map(|k| k.name).join(", ")
        );
    }
    let chosen: Vec<Kernel> = KERNELS
        .into_iter()
        .filter(|k| {
            if !options.kernels.is_empty() {
                options.kernels.iter().any(|n| n == k.name)
            } else if options.all {
                true
            } else if options.arch == Some(Arch::Arm64) {
                k.arch == Arch::Arm64
            } else {
                k.ci
            }
        })
        .filter(|k| options.arch.is_none_or(|arch| k.arch == arch))
        .collect();
    ensure!(!chosen.is_empty(), "no kernel matches --kernel and --arch");
    Ok(chosen)
}

/// What the guest runs, built for its architecture.
struct Programs {
    daemon: PathBuf,
    armourctl: PathBuf,
    testee: PathBuf,
    /// Test binary name → its executable.
    tests: Vec<(String, PathBuf)>,
}

/// Builds the release daemon (what users run) and, for the guest, the
/// test binaries named in `binaries` with the testee.
fn build(arch: Arch, binaries: &[String]) -> Result<Programs> {
    let target = arch.rust_target();
    let built = build_cmd::build(&build_cmd::BuildOptions {
        debug: false,
        target: Some(target.to_owned()),
    })?;
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(cmd::workspace_root())
        .args([
            "test",
            "--no-run",
            "--release",
            "-p",
            "armourd-tests",
            "--target",
            target,
        ])
        .args(binaries.iter().flat_map(|binary| ["--test", binary]))
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(Stdio::inherit());
    build_cmd::test_programs(&mut cargo, target);
    println!(
        "vm-test: building the tests for the guest ({})",
        cmd::show(&cargo)
    );
    let out = cmd::output(&mut cargo).context("building the integration tests failed")?;
    let mut testee = None;
    let mut tests = Vec::new();
    for line in out.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        let is_test = message["profile"]["test"].as_bool() == Some(true);
        let kinds = message["target"]["kind"].to_string();
        if name == "testee" && !is_test {
            testee = Some(PathBuf::from(executable));
        } else if is_test && kinds.contains("\"test\"") {
            tests.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    Ok(Programs {
        armourctl: built.daemon.with_file_name("armourctl"),
        daemon: built.daemon,
        testee: testee.context("cargo built no testee")?,
        tests,
    })
}

fn write_initramfs(
    out: &Path,
    plan: &Plan,
    programs: &Programs,
    userland: &kernels::Userland,
    unpacked: &kernels::Unpacked,
    modules: &[&str],
    dir: &Path,
) -> Result<()> {
    let mut initramfs = Initramfs::default();
    for mount_point in ["/proc", "/sys", "/dev", "/tmp", "/run", "/root"] {
        initramfs.dir(mount_point);
    }
    initramfs.file("/init", guest::init_script(plan), 0o755);
    initramfs.file(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    initramfs.file("/etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644);
    userland.add_to(&mut initramfs);
    initramfs.copy(guest::ARMOURD, &programs.daemon, 0o755);
    initramfs.copy("/armourd/armourctl", &programs.armourctl, 0o755);
    // The tests find the testee where cargo built it (CARGO_BIN_EXE_testee).
    initramfs.copy(&programs.testee.to_string_lossy(), &programs.testee, 0o755);
    let wanted: Vec<String> = match plan {
        Plan::Suites { suite, fallback } => suite
            .iter()
            .map(|selection| &selection.binary)
            .chain(fallback)
            .cloned()
            .collect(),
        Plan::Watchdog(_) => Vec::new(),
    };
    for name in &wanted {
        let (_, path) = programs
            .tests
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("cargo built no test binary {name}"))?;
        initramfs.copy(&format!("{}/{name}", guest::TESTS_DIR), path, 0o755);
    }
    // Numbered so that the guest's `insmod` loop loads dependencies first.
    let mut loaded = 0;
    for module in modules {
        for (name, ko) in unpacked.module_with_deps(module, &dir.join("modules"))? {
            let base = format!("{}/{loaded:02}-{name}.ko", guest::MODULES_DIR);
            initramfs.copy(&base, &ko, 0o644);
            if name == "softdog" {
                initramfs.file(
                    &format!("{base}.args"),
                    format!("soft_margin={}", guest::SOFT_MARGIN),
                    0o644,
                );
            }
            loaded += 1;
        }
    }
    initramfs.write(out)
}

/// How one kernel's boot ended.
enum Outcome {
    Reported(Box<Report>),
    /// The guest printed no result twice (or no result and then hung).
    Infrastructure(String),
}

struct Row {
    kernel: String,
    outcome: Outcome,
    time: Duration,
}

impl Row {
    fn ok(&self) -> bool {
        match &self.outcome {
            Outcome::Reported(report) => {
                report.done
                    && report.ebpf_load == Some(Ok(()))
                    && report.ebpf.ok()
                    && report.proc_connector.ok()
                    && report.fallback.ok()
                    && matches!(report.no_btf, Some(Ok(_)))
            }
            Outcome::Infrastructure(_) => false,
        }
    }
}

fn boot_with_retry(
    qemu: &Qemu,
    kernel: &Kernel,
    vmlinuz: &Path,
    initrd: &Path,
    dir: &Path,
    timeout: Duration,
) -> Result<Outcome> {
    for attempt in 1..=2 {
        let log = dir.join(format!("console-{attempt}.log"));
        let console = boot(
            qemu,
            kernel.arch,
            vmlinuz,
            initrd,
            &log,
            timeout,
            kernel.name,
        )?;
        let report = guest::parse(&console.text);
        if report.done {
            return Ok(Outcome::Reported(Box::new(report)));
        }
        // A guest that did not reach its end (it hung, or the kernel
        // crashed) is booted once more: under TCG on a loaded machine a
        // boot now and then stalls for reasons of the host.
        let why = match (console.timed_out, &report.kernel) {
            (Some(after), None) => format!("no result after {} min", after.as_secs() / 60),
            (Some(after), Some(_)) => format!("not done after {} min", after.as_secs() / 60),
            (None, None) => "the guest ended without a result".to_owned(),
            (None, Some(_)) => "the guest ended before its last test".to_owned(),
        };
        println!(
            "vm-test: {}: infrastructure error: {why} (console in {}){}",
            kernel.name,
            log.display(),
            if attempt == 1 { "; retrying once" } else { "" }
        );
        if attempt == 2 {
            // What it did report still counts: its suites show INCOMPLETE.
            return Ok(if report.kernel.is_some() {
                Outcome::Reported(Box::new(report))
            } else {
                Outcome::Infrastructure(format!("{why}, twice (console in {})", log.display()))
            });
        }
    }
    unreachable!("two attempts")
}

struct Console {
    text: String,
    timed_out: Option<Duration>,
    /// How long qemu ran.
    elapsed: Duration,
}

/// Boots once and collects the console until qemu ends or `timeout` passes.
fn boot(
    qemu: &Qemu,
    arch: Arch,
    vmlinuz: &Path,
    initrd: &Path,
    log: &Path,
    timeout: Duration,
    label: &str,
) -> Result<Console> {
    let mut command = qemu.command(arch);
    let append = format!(
        "console={} panic=-1 oops=panic loglevel=4 rdinit=/init",
        arch.console()
    );
    // KVM only when asked for and usable: on many cloud VMs /dev/kvm opens
    // and creates VMs, yet a nested guest never runs (seen here).
    let kvm = std::env::var_os("ARMOURD_VM_KVM").is_some_and(|v| v == "1")
        && arch.debian() == host_debian_arch()
        && kernels::kvm_works();
    command.args(["-accel", if kvm { "kvm" } else { "tcg" }]);
    match arch {
        Arch::X86_64 => command.args(["-cpu", "max"]),
        Arch::Arm64 => command.args([
            "-M",
            "virt",
            "-cpu",
            if kvm { "host" } else { "max,pauth-impdef=on" },
        ]),
    };
    command
        .args([
            "-smp", "2", "-m", "2G", "-nic", "none", "-display", "none", "-monitor", "none",
        ])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(&append);
    if arch == Arch::X86_64 {
        command.args(["-device", "isa-debug-exit"]);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("vm-test: {label}: booting ({})", cmd::show(&command));
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start `{}`", cmd::show(&command)))?;
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut file =
        fs::File::create(log).with_context(|| format!("could not create {}", log.display()))?;
    let mut text = String::new();
    let mut timed_out = None;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                // Seconds since qemu started: where a slow guest spends its time.
                writeln!(file, "[{:7.1}] {line}", started.elapsed().as_secs_f64())?;
                if line.contains(guest::MARK)
                    || line.starts_with("test result:")
                    || line.ends_with("... FAILED")
                {
                    println!("vm-test: {label}: {}", line.trim());
                }
                text.push_str(&line);
                text.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if started.elapsed() > timeout && timed_out.is_none() {
            timed_out = Some(timeout);
            // Only the qemu we started, by its pid.
            let _ = child.kill();
        }
    }
    let _ = child.wait();
    Ok(Console {
        text,
        timed_out,
        elapsed: started.elapsed(),
    })
}

fn host_debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "x86_64" => "amd64",
        other => other,
    }
}

/// Boots a guest for one watchdog check: the result is whether the guest
/// was reset (qemu ends early, `-no-reboot`) or lived on, as expected.
fn watchdog(
    qemu: &Qemu,
    kernel: &Kernel,
    unpacked: &kernels::Unpacked,
    programs: &Programs,
    userland: &kernels::Userland,
    work: &Path,
    check: Watchdog,
) -> Result<(Watchdog, Result<(), String>)> {
    let dir = work.join(format!("watchdog-{check:?}"));
    fs::create_dir_all(&dir)?;
    let initrd = dir.join("initrd.cpio");
    let plan = Plan::Watchdog(check);
    write_initramfs(
        &initrd,
        &plan,
        programs,
        userland,
        unpacked,
        &["softdog"],
        &dir,
    )?;
    let log = dir.join("console.log");
    let console = boot(
        qemu,
        kernel.arch,
        &unpacked.vmlinuz,
        &initrd,
        &log,
        WATCHDOG_BOOT_TIMEOUT,
        &format!("watchdog {check:?}"),
    )?;
    let report = guest::parse(&console.text);
    let has = |what: &str| report.watchdog.iter().any(|l| l.starts_with(what));
    let result = if !has("armed") {
        Err(format!(
            "armourd never fed the watchdog (console in {})",
            log.display()
        ))
    } else if check.expects_reset() {
        let trigger = if check == Watchdog::Killed {
            "killed"
        } else {
            "given-up"
        };
        if !has(trigger) {
            Err(format!(
                "the guest never reached '{trigger}' (console in {})",
                log.display()
            ))
        } else if has("alive-after") || report.done {
            Err(format!(
                "the guest was not reset (console in {})",
                log.display()
            ))
        } else {
            Ok(())
        }
    } else if has("alive-after") && report.done {
        Ok(())
    } else {
        Err(format!(
            "the guest was reset or hung after {:?} (console in {})",
            console.elapsed,
            log.display()
        ))
    };
    Ok((check, result))
}

fn print_table(rows: &[Row], pass: Pass) {
    let header = [
        "kernel",
        "eBPF loads",
        "ebpf suite",
        "proc-connector suite (BTF hidden)",
        "fallback (no BTF / no eBPF caps)",
        "time",
    ];
    let mut lines: Vec<[String; 6]> = vec![header.map(str::to_owned)];
    for row in rows {
        let time = format!(
            "{}m{:02}s",
            row.time.as_secs() / 60,
            row.time.as_secs() % 60
        );
        let line = match &row.outcome {
            Outcome::Infrastructure(why) => [
                row.kernel.clone(),
                format!("INFRASTRUCTURE ERROR: {why}"),
                String::new(),
                String::new(),
                String::new(),
                time,
            ],
            Outcome::Reported(report) => [
                row.kernel.clone(),
                match &report.ebpf_load {
                    Some(Ok(())) => "yes".to_owned(),
                    Some(Err(reason)) => format!("NO: {reason}"),
                    None => "not reported".to_owned(),
                },
                report.ebpf.summary(),
                report.proc_connector.summary(),
                format!(
                    "{} / {}",
                    match &report.no_btf {
                        Some(Ok(_)) => "falls back",
                        Some(Err(_)) => "NO FALLBACK",
                        None => "not reported",
                    },
                    report.fallback.summary()
                ),
                time,
            ],
        };
        lines.push(line);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    println!();
    for (n, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("| {} |", cells.join(" | "));
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("| {} |", rule.join(" | "));
        }
    }
    println!(
        "\nguest suite: {}; fallback tests: fallback",
        pass.describe()
    );
    println!(
        "host-only (need dbus-daemon + dbus-python or systemd, not in the busybox guest; `cargo xtask test` runs them): {}",
        HOST_ONLY.join(", ")
    );
    println!(
        "host-only ({HOST_ONLY_SLOW}: forks 16,640 processes, minutes under TCG and past the guest's process limit): `cargo xtask test` runs it"
    );
    for row in rows {
        if let Outcome::Reported(report) = &row.outcome {
            for failure in report
                .ebpf
                .failures
                .iter()
                .chain(&report.proc_connector.failures)
                .chain(&report.fallback.failures)
            {
                println!("{}: failed: {failure}", row.kernel);
            }
            if let Some(Ok(warning)) = &report.no_btf {
                println!("{}: BTF hidden: {warning}", row.kernel);
            }
        }
    }
}
