//! Where log lines go (SPEC §12): stderr in the foreground, syslog (daemon
//! facility) once detached, the journal's native protocol when systemd
//! started armourd with stderr connected to the journal (`JOURNAL_STREAM`);
//! `--log` overrides. One `log` logger dispatches to the current target, so
//! the target can change after detaching.

use std::{
    io::{self, Write},
    path::PathBuf,
    sync::{Mutex, OnceLock},
};

use log::{Log, Metadata, Record};

/// The syslog socket; `ARMOURD_SYSLOG_SOCKET` names another (tests listen
/// on one of their own).
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Stderr,
    Syslog,
    Journal,
}

/// Why a log target could not be used.
#[derive(thiserror::Error, Debug)]
pub enum LoggingError {
    #[error("cannot reach syslog at {}", socket.display())]
    Syslog {
        socket: PathBuf,
        #[source]
        source: syslog::Error,
    },
    #[error("cannot reach the journal")]
    Journal(#[source] io::Error),
}

enum Sink {
    Stderr,
    Syslog(syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>),
    Journal(systemd_journal_logger::JournalLog),
}

struct Dispatch {
    filter: OnceLock<env_logger::Logger>,
    sink: Mutex<Sink>,
}

static DISPATCH: Dispatch = Dispatch {
    filter: OnceLock::new(),
    sink: Mutex::new(Sink::Stderr),
};

/// Installs the logger, writing to stderr: `verbose` 0 info, 1 debug, more
/// trace; `ARMOURD_LOG` (env_logger syntax) refines it.
pub fn init(verbose: u8) {
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
    let filter = env_logger::Builder::new()
        .filter_level(level)
        .filter_module("aya", quiet)
        .filter_module("zbus", quiet)
        .filter_module("tracing::span", quiet)
        .parse_env("ARMOURD_LOG")
        .build();
    let max = filter.filter();
    if DISPATCH.filter.set(filter).is_ok() && log::set_logger(&DISPATCH).is_ok() {
        log::set_max_level(max);
    }
}

/// The target when `--log` names none: syslog once detached, the journal
/// when systemd connected stderr to it, else stderr.
pub fn choose(asked: Option<Target>, detached: bool) -> Target {
    match asked {
        Some(target) => target,
        None if detached => Target::Syslog,
        None if systemd_journal_logger::connected_to_journal() => Target::Journal,
        None => Target::Stderr,
    }
}

/// Sends every later line to `target`.
pub fn switch(target: Target) -> Result<(), LoggingError> {
    let sink = match target {
        Target::Stderr => Sink::Stderr,
        Target::Syslog => {
            let socket = std::env::var_os("ARMOURD_SYSLOG_SOCKET")
                .map_or_else(|| PathBuf::from(SYSLOG_SOCKET), PathBuf::from);
            let formatter = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_DAEMON,
                hostname: None,
                process: "armourd".into(),
                pid: std::process::id(),
            };
            let logger = syslog::unix_custom(formatter, &socket)
                .map_err(|source| LoggingError::Syslog { socket, source })?;
            Sink::Syslog(logger)
        }
        Target::Journal => Sink::Journal(
            systemd_journal_logger::JournalLog::new()
                .map_err(LoggingError::Journal)?
                .with_syslog_identifier("armourd".into()),
        ),
    };
    *DISPATCH.sink.lock().unwrap_or_else(|e| e.into_inner()) = sink;
    Ok(())
}

/// After a fork: syslog lines carry the new pid.
pub fn forked() {
    if let Sink::Syslog(logger) = &mut *DISPATCH.sink.lock().unwrap_or_else(|e| e.into_inner()) {
        logger.formatter.pid = std::process::id();
    }
}

impl Log for Dispatch {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.filter.get().is_some_and(|f| f.enabled(metadata))
    }

    fn log(&self, record: &Record) {
        if !self.filter.get().is_some_and(|f| f.matches(record)) {
            return;
        }
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        // A line that cannot be written is lost: there is nowhere to say so.
        match &mut *sink {
            Sink::Stderr => {
                let level = match record.level() {
                    log::Level::Error => "error",
                    log::Level::Warn => "warn",
                    log::Level::Info => "info",
                    log::Level::Debug => "debug",
                    log::Level::Trace => "trace",
                };
                // One write a line: unbuffered stderr would take one per
                // piece, each waking whoever reads the other end, and a
                // reader could see half a line.
                let line = format!("armourd: {level}: {}\n", record.args());
                let _ = io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Syslog(logger) => {
                let text = record.args().to_string();
                let _ = match record.level() {
                    log::Level::Error => logger.err(text),
                    log::Level::Warn => logger.warning(text),
                    log::Level::Info => logger.info(text),
                    log::Level::Debug | log::Level::Trace => logger.debug(text),
                };
            }
            Sink::Journal(journal) => journal.log(record),
        }
    }

    fn flush(&self) {}
}

/// An error with its causes, for one log line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
