//! `cargo xtask fuzz`: runs the fuzz targets of `fuzz/` (cargo-fuzz,
//! libFuzzer, AddressSanitizer, overflow checks) one after the other, each
//! from the seeds of [`seeds`] and the corpus it found before
//! (`fuzz/corpus/TARGET`), for a bounded time or number of inputs, with low
//! memory limits: an allocation or a resident set beyond them is a failure
//! like a panic. Prints per target the inputs executed, the time and the
//! peak resident set, and fails if any target found a crash.

mod seeds;

use std::{
    env,
    fs::{self, File},
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{build_cmd::HOST_ONLY_ENV, cmd, setup};

/// A fuzz target of `fuzz/Cargo.toml`.
struct Target {
    name: &'static str,
    /// libFuzzer's `-max_len`: the longest input the real source gives.
    max_len: usize,
}

const TARGETS: [Target; 5] = [
    Target {
        name: "config",
        max_len: 4096,
    },
    Target {
        // A layout byte and a whole exec record (8,440 bytes) with room to spare.
        name: "ebpf_record",
        max_len: 9000,
    },
    Target {
        // The proc connector's receive buffer.
        name: "netlink",
        max_len: 8192,
    },
    Target {
        name: "procfs",
        max_len: 4096,
    },
    Target {
        // A few records; the parser's cost grows with the lines alike.
        name: "state",
        max_len: 4096,
    },
];

/// Seconds per target when neither `--runs` nor `--seconds` is given.
const DEFAULT_SECONDS: u64 = 20;
/// libFuzzer's limits: resident set, a single allocation, one input.
const RSS_LIMIT_MB: u32 = 512;
const MALLOC_LIMIT_MB: u32 = 128;
const TIMEOUT_SECONDS: u32 = 10;
/// AddressSanitizer's quarantine of freed memory (use-after-free checks).
const QUARANTINE_MB: u32 = 64;

#[derive(clap::Args)]
pub struct FuzzOptions {
    /// Inputs per target (libFuzzer's -runs), e.g. 10000000
    #[arg(long, conflicts_with = "seconds")]
    runs: Option<u64>,
    /// Seconds per target (libFuzzer's -max_total_time) [default: 20]
    #[arg(long)]
    seconds: Option<u64>,
    /// Targets to run, one after the other [default: all]
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS.map(|t| t.name)))]
    targets: Vec<String>,
}

/// How one target's run went.
struct Outcome {
    target: &'static str,
    inputs: Option<u64>,
    seconds: f64,
    peak_rss_mb: Option<u64>,
    /// `None` when it ran to its bound; else why it failed and where its log is.
    failure: Option<String>,
}

pub fn fuzz(options: &FuzzOptions) -> Result<()> {
    setup::cargo_fuzz()?;
    let root = cmd::workspace_root();
    let target_dir = cmd::target_dir()?.join("fuzz");
    let targets: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| options.targets.is_empty() || options.targets.iter().any(|n| n == t.name))
        .collect();

    let mut build = cargo_fuzz(&root, "build", &target_dir);
    println!("fuzz: building the targets ({})", cmd::show(&build));
    cmd::run(&mut build).context("building the fuzz targets failed")?;

    let bound = match (options.runs, options.seconds) {
        (Some(runs), _) => format!("-runs={runs}"),
        (None, seconds) => format!("-max_total_time={}", seconds.unwrap_or(DEFAULT_SECONDS)),
    };
    let mut outcomes = Vec::new();
    for target in targets {
        outcomes.push(run_target(&root, &target_dir, target, &bound)?);
    }

    println!(
        "fuzz: {:<12} {:>12} {:>9} {:>9}  result",
        "target", "inputs", "seconds", "peak RSS"
    );
    for outcome in &outcomes {
        let inputs = outcome.inputs.map_or("?".into(), |n| n.to_string());
        let rss = outcome
            .peak_rss_mb
            .map_or("?".into(), |mb| format!("{mb} MiB"));
        let result = outcome.failure.as_deref().unwrap_or("ok");
        println!(
            "fuzz: {:<12} {inputs:>12} {:>9.1} {rss:>9}  {result}",
            outcome.target, outcome.seconds
        );
    }
    let failed: Vec<&str> = (outcomes.iter())
        .filter(|o| o.failure.is_some())
        .map(|o| o.target)
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (the inputs are in fuzz/artifacts/TARGET/; \
             the end of each log above says how to replay one)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz SUBCOMMAND` with the build settings every run shares.
fn cargo_fuzz(root: &Path, subcommand: &str, target_dir: &Path) -> Command {
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(root)
        .args(["+nightly", "fuzz", subcommand]);
    // Overflow checks and debug assertions: an overflow is a bug to find.
    cargo
        .arg("--debug-assertions")
        .arg("--target-dir")
        .arg(target_dir);
    for name in HOST_ONLY_ENV {
        cargo.env_remove(name);
    }
    // AddressSanitizer holds 256 MiB of freed memory by default, which
    // would make up most of the resident set the limit is about; options
    // given in the environment come after, and win.
    let mut asan_options = format!("quarantine_size_mb={QUARANTINE_MB}");
    if let Some(given) = env::var("ASAN_OPTIONS").ok().filter(|o| !o.is_empty()) {
        asan_options = format!("{asan_options}:{given}");
    }
    cargo.env("ASAN_OPTIONS", asan_options);
    cargo
}

fn run_target(root: &Path, target_dir: &Path, target: &Target, bound: &str) -> Result<Outcome> {
    let name = target.name;
    let seeds = target_dir.join("seeds").join(name);
    seeds::write(name, &seeds)?;
    // What the fuzzer finds is kept for the next run; the seeds are only read.
    let corpus = root.join("fuzz").join("corpus").join(name);
    fs::create_dir_all(&corpus)
        .with_context(|| format!("could not create {}", corpus.display()))?;
    let logs = target_dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("could not create {}", logs.display()))?;
    let log_path = logs.join(format!("{name}.log"));

    let mut cargo = cargo_fuzz(root, "run", target_dir);
    cargo.arg(name).arg(&corpus).arg(&seeds).arg("--").args([
        bound.to_owned(),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"),
        format!("-timeout={TIMEOUT_SECONDS}"),
        format!("-max_len={}", target.max_len),
        "-print_final_stats=1".to_owned(),
    ]);
    println!(
        "fuzz: {name}: {} (log: {})",
        cmd::show(&cargo),
        log_path.display()
    );
    let started = Instant::now();
    let (success, log) = run_logged(&mut cargo, &log_path)?;
    let seconds = started.elapsed().as_secs_f64();

    let stat = |key: &str| {
        log.iter().find_map(|line| {
            line.strip_prefix(key)?
                .strip_prefix(':')?
                .trim()
                .parse()
                .ok()
        })
    };
    let inputs = stat("stat::number_of_executed_units");
    let failure = if success {
        None
    } else {
        let tail = log.len().saturating_sub(60);
        eprintln!("fuzz: {name} failed; the end of {}:", log_path.display());
        for line in &log[tail..] {
            eprintln!("    {line}");
        }
        let artifact = log.iter().find_map(|line| {
            line.split_once("Test unit written to ")
                .map(|(_, p)| p.trim())
        });
        Some(match artifact {
            Some(artifact) => format!("FAILED, input in {artifact}"),
            None => format!("FAILED, see {}", log_path.display()),
        })
    };
    Ok(Outcome {
        target: name,
        inputs,
        seconds,
        peak_rss_mb: stat("stat::peak_rss_mb"),
        failure,
    })
}

/// Runs `command` with its output in the file `path`, showing libFuzzer's
/// progress lines as they come; returns whether it succeeded, and the lines.
fn run_logged(command: &mut Command, path: &Path) -> Result<(bool, Vec<String>)> {
    let mut file =
        File::create(path).with_context(|| format!("could not create {}", path.display()))?;
    let stdout = file
        .try_clone()
        .context("could not duplicate the log's descriptor")?;
    let mut child = command
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", cmd::show(command)))?;
    let stderr = child.stderr.take().context("no pipe from the fuzzer")?;
    let mut lines = Vec::new();
    // Not necessarily UTF-8: a panic message may quote the input.
    for line in BufReader::new(stderr).split(b'\n') {
        let line = line.context("could not read the fuzzer's output")?;
        let line = String::from_utf8_lossy(&line).into_owned();
        writeln!(file, "{line}").with_context(|| format!("could not write {}", path.display()))?;
        if line.starts_with('#') && (line.contains("pulse") || line.contains("DONE")) {
            println!("    {line}");
        }
        lines.push(line);
    }
    let status = child.wait().context("could not wait for the fuzzer")?;
    Ok((status.success(), lines))
}
