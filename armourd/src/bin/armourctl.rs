//! `armourctl`: asks a running armourd over D-Bus which processes it
//! watches, watches or unwatches one, resets one that gave up, has the
//! configuration reloaded, or prints its signals as they come.

use std::{
    fmt,
    future::poll_fn,
    io::{self, Write},
    path::{Path, PathBuf},
    pin::Pin,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use armourd::ctl_cli::{Args, Command};
use armourd::{
    dbus::{
        self, control, ArmourdProxy, Bus, CallError, ProcessExited, ProcessFailed, ProcessInfo,
        ProcessRestarted, BUS_NAME,
    },
    status::signal_name,
};
use clap::Parser;
use nix::unistd::geteuid;
use zbus::{export::futures_core::Stream, fdo, proxy::CacheProperties, Connection};

/// What went wrong, as one line for the user.
struct Failure(String);

/// Where armourctl reaches armourd.
#[derive(Clone, Debug)]
enum Via {
    Bus(Bus),
    /// The control socket at this path.
    Control(PathBuf),
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bus(bus) => write!(f, "the {bus} bus"),
            Self::Control(path) => write!(f, "the control socket {}", path.display()),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(Failure(format!("cannot start the async runtime: {e}"))),
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(failure) => fail(failure),
    }
}

fn fail(Failure(message): Failure) -> ExitCode {
    eprintln!("armourctl: {message}");
    ExitCode::FAILURE
}

/// Connects where `args` say: the control socket when one is given, or
/// for root when the default one is there (signals come only on the bus);
/// else the bus.
async fn connect(args: &Args) -> Result<(Connection, Via), Failure> {
    let bus = if args.session {
        Bus::Session
    } else {
        Bus::System
    };
    let monitor = matches!(args.command, Command::Monitor);
    if let Some(path) = &args.control_socket {
        if monitor {
            return Err(Failure(
                "monitor listens to signals, which armourd sends only on the bus: \
                 leave out --control-socket"
                    .into(),
            ));
        }
        let conn = control::connect(path)
            .await
            .map_err(|e| Failure(format!("{e}: {}", source_of(&e))))?;
        return Ok((conn, Via::Control(path.clone())));
    }
    let default = Path::new(control::DEFAULT_PATH);
    if !args.session && !monitor && geteuid().is_root() && default.exists() {
        // A socket left by an armourd that ended refuses: then the bus.
        if let Ok(conn) = control::connect(default).await {
            return Ok((conn, Via::Control(default.to_owned())));
        }
    }
    let conn = dbus::connect(bus)
        .await
        .map_err(|e| Failure(format!("{e}: {}", source_of(&e))))?;
    Ok((conn, Via::Bus(bus)))
}

async fn run(args: Args) -> Result<ExitCode, Failure> {
    let (conn, via) = connect(&args).await?;
    let bus = &via;
    let command = args.command;
    let proxy = ArmourdProxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| Failure(format!("cannot make a proxy for {BUS_NAME}: {e}")))?;
    let call_failed = |method: &str, e: zbus::Error| Failure(explain(bus, method, e));
    match command {
        Command::List => {
            let processes = processes(&proxy).await.map_err(|e| e.in_call(bus))?;
            print!("{}", table(&processes));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let processes = processes(&proxy).await.map_err(|e| e.in_call(bus))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            if json {
                println!("{}", status_json(&processes, now));
            } else {
                print!("{}", status_table(&processes, now));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reset { target } => {
            let count = proxy
                .reset(&target)
                .await
                .map_err(|e| call_failed("Reset", e))?;
            if count == 0 {
                eprintln!("armourctl: reset {target}: no watched process matches");
                return Ok(ExitCode::FAILURE);
            }
            println!("reset {target}: {count} instances");
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload => {
            let errors = proxy.reload().await.map_err(|e| call_failed("Reload", e))?;
            if errors.is_empty() {
                println!("reload: ok");
                return Ok(ExitCode::SUCCESS);
            }
            for error in errors {
                eprintln!("armourctl: reload rejected: {error}");
            }
            Ok(ExitCode::FAILURE)
        }
        Command::Watch { pid } => report("watch", pid, proxy.watch(pid).await, bus),
        Command::Unwatch { pid } => report("unwatch", pid, proxy.unwatch(pid).await, bus),
        Command::Monitor => monitor(bus, &proxy).await.map(|()| ExitCode::SUCCESS),
    }
}

/// A `GetProcesses` call that failed, or an answer that could not be read.
enum ProcessesError {
    Call(zbus::Error),
    Read(dbus::DbusError),
}

impl ProcessesError {
    fn in_call(self, bus: &Via) -> Failure {
        match self {
            Self::Call(e) => Failure(explain(bus, "GetProcesses", e)),
            Self::Read(e) => Failure(e.to_string()),
        }
    }
}

async fn processes(proxy: &ArmourdProxy<'_>) -> Result<Vec<ProcessInfo>, ProcessesError> {
    let entries = proxy.get_processes().await.map_err(ProcessesError::Call)?;
    entries
        .iter()
        .map(ProcessInfo::from_dict)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ProcessesError::Read)
}

fn source_of(e: &dyn std::error::Error) -> String {
    e.source().map_or_else(String::new, ToString::to_string)
}

/// One line saying why a call failed and what to do about it.
fn explain(bus: &Via, method: &str, e: zbus::Error) -> String {
    match e {
        zbus::Error::FDO(e) => match *e {
            fdo::Error::ServiceUnknown(_) | fdo::Error::NameHasNoOwner(_) => {
                format!("armourd is not running on {bus} (nobody owns {BUS_NAME})")
            }
            fdo::Error::AccessDenied(m) => {
                format!("{bus} refused {method}: {m} (is dbus/com.github.Armourd.conf installed?)")
            }
            other => format!("{method} failed: {other}"),
        },
        other => format!("{method} failed: {other}"),
    }
}

/// Prints how a watch or unwatch went: `ok`, or armourd's reason.
fn report(
    verb: &str,
    pid: i32,
    result: Result<(), CallError>,
    bus: &Via,
) -> Result<ExitCode, Failure> {
    let reason = match result {
        Ok(()) => {
            println!("{verb} {pid}: ok");
            return Ok(ExitCode::SUCCESS);
        }
        Err(CallError::ZBus(e)) => {
            let method = if verb == "watch" { "Watch" } else { "Unwatch" };
            return Err(Failure(explain(bus, method, e)));
        }
        Err(
            CallError::NoSuchProcess(m)
            | CallError::AccessDenied(m)
            | CallError::AlreadyWatched(m)
            | CallError::NotWatched(m)
            | CallError::QuotaExceeded(m)
            | CallError::Failed(m)
            | CallError::LimitsExceeded(m)
            | CallError::Unavailable(m)
            | CallError::UnknownCaller(m),
        ) => m,
    };
    eprintln!("armourctl: {verb} {pid}: {reason}");
    Ok(ExitCode::FAILURE)
}

/// How a process ended last: `exit 3`, `SIGSEGV (core)`, or `-` when it has not.
fn last_exit(code: i32, signal: i32, core_dumped: bool) -> String {
    if signal != 0 {
        let name =
            signal_name(signal).map_or_else(|| format!("signal {signal}"), |n| format!("SIG{n}"));
        if core_dumped {
            format!("{name} (core)")
        } else {
            name
        }
    } else if code >= 0 {
        format!("exit {code}")
    } else {
        "-".to_owned()
    }
}

/// The `list` table, columns as wide as their widest cell.
fn table(processes: &[ProcessInfo]) -> String {
    let mut rows = vec![["PID", "EXECUTABLE", "STATE", "RESTARTS", "LAST EXIT"].map(String::from)];
    rows.extend(processes.iter().map(|p| {
        [
            p.pid.to_string(),
            p.exe.clone(),
            p.state.to_owned(),
            p.restarts.to_string(),
            last_exit(p.last_exit_code, p.last_signal, p.last_core_dumped),
        ]
    }));
    align(&rows)
}

/// A span of time for people: `45s`, `12m 5s`, `3h 12m`, `2d 4h`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

fn since_epoch(us: u64) -> Duration {
    Duration::from_micros(us)
}

/// The `status` table at `now` (since the Unix epoch): the state says how
/// long a backoff still waits, the uptime is for running processes.
fn status_table(processes: &[ProcessInfo], now: Duration) -> String {
    let header = [
        "PID",
        "EXECUTABLE",
        "STATE",
        "RESTARTS",
        "LAST END",
        "UPTIME",
    ];
    let mut rows = vec![header.map(String::from)];
    rows.extend(processes.iter().map(|p| {
        let state = match p.state {
            "backoff" if p.next_restart_us > 0 => {
                let wait = since_epoch(p.next_restart_us).saturating_sub(now);
                format!("backoff, restart in {:.1}s", wait.as_secs_f32())
            }
            "failed" => format!("failed after {} crashes", p.crash_streak),
            state => state.to_owned(),
        };
        let uptime = match p.state {
            "running" => human(now.saturating_sub(since_epoch(p.since_us))),
            _ => "-".to_owned(),
        };
        [
            p.pid.to_string(),
            p.exe.clone(),
            state,
            p.restarts.to_string(),
            last_exit(p.last_exit_code, p.last_signal, p.last_core_dumped),
            uptime,
        ]
    }));
    align(&rows)
}

/// The `status --json` array: every field `GetProcesses` gives, times in
/// µs since the Unix epoch, plus `uptime_s` for running processes.
fn status_json(processes: &[ProcessInfo], now: Duration) -> serde_json::Value {
    processes
        .iter()
        .map(|p| {
            let uptime = (p.state == "running")
                .then(|| now.saturating_sub(since_epoch(p.since_us)).as_secs());
            serde_json::json!({
                "pid": p.pid,
                "exe": p.exe,
                "argv": p.argv,
                "state": p.state,
                "restarts": p.restarts,
                "crash_streak": p.crash_streak,
                "last_exit_code": p.last_exit_code,
                "last_signal": p.last_signal,
                "last_core_dumped": p.last_core_dumped,
                "since": p.since_us,
                "next_restart": (p.next_restart_us > 0).then_some(p.next_restart_us),
                "uptime_s": uptime,
            })
        })
        .collect()
}

/// Rows as lines, columns as wide as their widest cell; numbers (the
/// first and fourth columns) to the right.
fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, width))| match i {
                0 | 3 => format!("{cell:>width$}"),
                _ => format!("{cell:<width$}"),
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The next item of a stream.
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Prints one line per signal, in the order the bus delivers them, until
/// interrupted or the connection ends.
async fn monitor(bus: &Via, proxy: &ArmourdProxy<'_>) -> Result<(), Failure> {
    let mut signals = proxy
        .inner()
        .receive_all_signals()
        .await
        .map_err(|e| Failure(format!("cannot subscribe to armourd's signals: {e}")))?;
    // Fails clearly when armourd is not there; once subscribed, signals of a
    // restarted armourd still arrive, as the match rule names the bus name.
    let version = proxy
        .version()
        .await
        .map_err(|e| Failure(explain(bus, "Get Version", e)))?;
    eprintln!("armourctl: monitoring armourd {version} on {bus} (Ctrl-C to stop)");
    while let Some(message) = next(&mut signals).await {
        let Some(line) = describe(message) else {
            continue;
        };
        let mut stdout = io::stdout().lock();
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(()); // stdout closed, e.g. piped into `head`
        }
    }
    Err(Failure(format!("the connection to {bus} ended")))
}

/// One line for a signal of armourd's, or `None` for other signals.
fn describe(message: zbus::Message) -> Option<String> {
    let line = if let Some(signal) = ProcessExited::from_message(message.clone()) {
        signal.args().map(|a| {
            let end = last_exit(a.exit_code, a.signal, a.core_dumped);
            let then = if a.will_restart {
                "restarting"
            } else {
                "not restarting"
            };
            format!("exited    pid {} {}: {end}, {then}", a.pid, a.exe)
        })
    } else if let Some(signal) = ProcessFailed::from_message(message.clone()) {
        signal.args().map(|a| {
            format!(
                "failed    pid {} {}: {} crashes, not restarting until reset",
                a.pid, a.exe, a.crashes
            )
        })
    } else if let Some(signal) = ProcessRestarted::from_message(message) {
        signal.args().map(|a| {
            format!(
                "restarted pid {} -> {} {} (restart {})",
                a.old_pid, a.new_pid, a.exe, a.restarts
            )
        })
    } else {
        return None;
    };
    Some(line.unwrap_or_else(|e| format!("(unreadable signal: {e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_exit_names_codes_and_signals() {
        assert_eq!(last_exit(3, 0, false), "exit 3");
        assert_eq!(last_exit(-1, libc::SIGSEGV, true), "SIGSEGV (core)");
        assert_eq!(last_exit(-1, libc::SIGTERM, false), "SIGTERM");
        assert_eq!(last_exit(-1, 0, false), "-");
    }

    fn info(state: &'static str, since_us: u64, next_restart_us: u64) -> ProcessInfo {
        ProcessInfo {
            pid: 42,
            exe: "/usr/bin/x".into(),
            argv: vec!["x".into()],
            state,
            restarts: 3,
            last_exit_code: 3,
            last_signal: 0,
            last_core_dumped: false,
            since_us,
            crash_streak: 2,
            next_restart_us,
        }
    }

    #[test]
    fn status_shows_uptime_backoff_and_failure_at_a_glance() {
        let now = Duration::from_secs(10_000);
        let processes = [
            info("running", 10_000_000_000 - 3_725_000_000, 0),
            info("backoff", 0, 10_001_500_000),
            info("failed", 0, 0),
        ];
        let out = status_table(&processes, now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "PID  EXECUTABLE  STATE                     RESTARTS  LAST END  UPTIME"
        );
        assert_eq!(
            lines[1],
            " 42  /usr/bin/x  running                          3  exit 3    1h 2m"
        );
        assert!(lines[2].contains("backoff, restart in 1.5s"), "{out}");
        assert!(lines[3].contains("failed after 2 crashes"), "{out}");
    }

    #[test]
    fn status_json_has_every_field() {
        let json = status_json(&[info("backoff", 5, 7)], Duration::from_secs(1));
        assert_eq!(json[0]["state"], "backoff");
        assert_eq!(json[0]["next_restart"], 7);
        assert_eq!(json[0]["crash_streak"], 2);
        assert!(json[0]["uptime_s"].is_null());
    }

    #[test]
    fn table_aligns_columns() {
        let p = ProcessInfo {
            pid: 42,
            exe: "/usr/bin/x".into(),
            argv: vec!["x".into()],
            state: "running",
            restarts: 2,
            last_exit_code: -1,
            last_signal: libc::SIGABRT,
            last_core_dumped: false,
            since_us: 0,
            crash_streak: 0,
            next_restart_us: 0,
        };
        let out = table(&[p]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "PID  EXECUTABLE  STATE    RESTARTS  LAST EXIT");
        assert_eq!(lines[1], " 42  /usr/bin/x  running         2  SIGABRT");
    }
}
