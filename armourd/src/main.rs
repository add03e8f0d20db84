//! `armourd`: parses the command line, sets up logging, loads the
//! configuration and runs the daemon (see the library's `daemon` module),
//! in the foreground or detached (`-d`).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use armourd::{
    cli::{Args, Dbus, Log},
    config, config_file, daemon, logging,
    service::{self, PidFile},
    watchdog::Watchdog,
};
use clap::Parser;

fn main() -> ExitCode {
    keep_heap_small();
    let args = Args::parse();
    logging::init(args.verbose);
    let loaded = config_file::read(args.config.as_deref());
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
            log::error!("{}", logging::error_chain(&err));
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
            print!("{}", config_file::report(&config, file));
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
            eprintln!("armourd: {}", logging::error_chain(&err));
            ExitCode::from(2)
        }
    }
}

fn run(config: config::Config, args: &Args) -> anyhow::Result<()> {
    // Everything that can go wrong with what the user asked for is checked
    // while the terminal still shows the error.
    let pidfile_path = match (&args.pidfile, args.daemon) {
        (Some(path), _) => Some(path.as_path()),
        (None, true) => Some(Path::new(service::DEFAULT_PIDFILE)),
        (None, false) => None,
    };
    let mut pidfile = pidfile_path.map(PidFile::lock).transpose()?;
    let watchdog = args
        .watchdog
        .as_deref()
        .map(|path| Watchdog::open(path, args.watchdog_timeout))
        .transpose()?;
    let asked = args.log.map(|log| match log {
        Log::Stderr => logging::Target::Stderr,
        Log::Syslog => logging::Target::Syslog,
        Log::Journal => logging::Target::Journal,
    });
    let target = logging::choose(asked, args.daemon);
    // Connected before detaching, so that a syslog that cannot be reached
    // is said on the terminal.
    if target != logging::Target::Stderr {
        if let Err(err) = logging::switch(target) {
            let lost = if args.daemon {
                " (which -d puts on /dev/null: start a syslog daemon, or use --log journal)"
            } else {
                ""
            };
            log::warn!("{}; logging to stderr{lost}", logging::error_chain(&err));
        }
    }
    let detached = if args.daemon {
        let detached = service::detach().context("cannot run in the background")?;
        logging::forked();
        Some(detached)
    } else {
        None
    };
    if let Some(pidfile) = &mut pidfile {
        pidfile.write_pid()?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the event loop")?;
    let bus = match args.dbus {
        Dbus::System => Some(armourd::dbus::Bus::System),
        Dbus::Session => Some(armourd::dbus::Bus::Session),
        Dbus::None => None,
    };
    let service = daemon::Service {
        watchdog,
        notifier: service::Notifier::from_env(),
        detached,
        state_dir: Some(args.state_dir.clone()),
    };
    let control_socket = match &args.control_socket {
        Some(path) if path.as_os_str() == "none" => None,
        Some(path) => Some(path.clone()),
        None if bus == Some(armourd::dbus::Bus::System) => {
            Some(PathBuf::from(armourd::dbus::control::DEFAULT_PATH))
        }
        None => None,
    };
    let answering = daemon::Answering {
        bus,
        control_socket,
        max_user_watches: args.max_user_watches,
    };
    let result = runtime.block_on(daemon::run_service(
        config,
        args.config.clone(),
        args.backend,
        answering,
        service,
    ));
    drop(pidfile);
    Ok(result?)
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
