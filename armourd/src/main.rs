//! `armourd`: parses the command line, sets up logging, loads the
//! configuration and runs the daemon (see the library's `daemon` module).

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use armourd::{config, daemon};
use clap::{Parser, ValueEnum};

/// A fast process watchdog: restarts crashed processes of the configured
/// executables at once, exactly as they were started.
#[derive(Parser, Debug)]
#[command(name = "armourd", version, about)]
struct Args {
    /// Configuration file [default: /etc/armourd.conf]
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Event source
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// Message bus to answer on
    #[arg(long, value_enum, default_value = "system")]
    dbus: Bus,
    /// Watches a user other than root may make over D-Bus
    #[arg(long, value_name = "N", default_value_t = daemon::DEFAULT_MAX_USER_WATCHES)]
    max_user_watches: usize,
    /// Read the configuration, print each entry with its options and the
    /// executables it matches now, and exit (0: fine, 2: errors)
    #[arg(long)]
    check_config: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    Auto,
    Ebpf,
    ProcConnector,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Bus {
    System,
    Session,
    None,
}

fn main() -> ExitCode {
    keep_heap_small();
    let args = Args::parse();
    init_logging(args.verbose);
    let loaded = config::read(args.config.as_deref());
    if args.check_config {
        return check_config(loaded, args.config.as_deref());
    }
    let config = match loaded {
        Ok(Some(config)) => config,
        Ok(None) => {
            log::info!(
                "no configuration at /etc/armourd.conf: starting with no entries (processes can still be watched over D-Bus)"
            );
            config::Config::default()
        }
        Err(err) => {
            log::error!("{}", daemon::error_chain(&err));
            return ExitCode::from(2);
        }
    };
    match run(config, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: the report on stdout, or the error on stderr.
fn check_config(
    loaded: Result<Option<config::Config>, config::ConfigError>,
    path: Option<&std::path::Path>,
) -> ExitCode {
    let file = path.unwrap_or(std::path::Path::new(config::DEFAULT_PATH));
    match loaded {
        Ok(Some(config)) => {
            print!("{}", config::report(&config, file));
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!(
                "{}: does not exist; armourd starts with no entries",
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("armourd: {}", daemon::error_chain(&err));
            ExitCode::from(2)
        }
    }
}

fn run(config: config::Config, args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the event loop")?;
    let choice = match args.backend {
        Backend::Auto => daemon::BackendChoice::Auto,
        Backend::Ebpf => daemon::BackendChoice::Ebpf,
        Backend::ProcConnector => daemon::BackendChoice::ProcConnector,
    };
    let bus = match args.dbus {
        Bus::System => Some(armourd::dbus::Bus::System),
        Bus::Session => Some(armourd::dbus::Bus::Session),
        Bus::None => None,
    };
    runtime.block_on(daemon::run(
        config,
        args.config.clone(),
        choice,
        bus,
        args.max_user_watches,
    ))?;
    Ok(())
}

/// Fixed allocator thresholds: blocks of 128 KiB and more get mappings of
/// their own, and free memory at the top of a heap past 128 KiB goes back
/// to the system. glibc would raise both after the first large block is
/// freed (the start-up parse of the kernel's BTF frees many), and keep
/// megabytes that armourd never uses again.
#[cfg(target_env = "gnu")]
fn keep_heap_small() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only sets allocator parameters; called before any
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
    }
}

#[cfg(not(target_env = "gnu"))]
fn keep_heap_small() {}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    // aya's loader and zbus are chatty; their details matter only when tracing.
    let quiet = if verbose > 1 {
        level
    } else {
        log::LevelFilter::Warn
    };
    env_logger::Builder::new()
        .filter_level(level)
        .filter_module("aya", quiet)
        .filter_module("zbus", quiet)
        .filter_module("tracing::span", quiet)
        .parse_env("ARMOURD_LOG")
        .format(|out, record| {
            writeln!(
                out,
                "armourd: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            )
        })
        .init();
}
