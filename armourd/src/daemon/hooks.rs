//! Runs the `on-crash=` and `recover=` commands (SPEC §8) through
//! `/bin/sh -c`, as root, with the crash in `ARMOURD_*` variables.
//!
//! Hooks never hold a restart back: they are started after the restarts
//! of the same batch of events were handed to the spawner, and nothing
//! here waits. A hook leads a process group of its own, so that its
//! timeout kills what it started as well. Its stdout and stderr go through
//! one pipe into armourd's log, line by line, read on a small thread of its
//! own (lines longer than [`MAX_LINE`] are split). armourd reaps its
//! children in one place; a hook's end comes back through [`Hooks::reaped`].
//!
//! The `on-crash` hooks of one entry run one at a time: an event that
//! comes while one runs waits; several that wait are coalesced into the
//! latest, which is told how many it stands for (`ARMOURD_COALESCED`).

use std::{
    collections::HashMap,
    io::{self, BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::Arc,
    time::Instant,
};

use nix::{sys::signal::Signal, unistd::Pid};

use crate::logging::error_chain;
use crate::{
    status::{signal_name, ExitStatus},
    supervisor::{HookKind, HookRun, InstanceId},
};

/// The longest line of a hook's output logged as one line.
pub const MAX_LINE: u64 = 1024;
/// The stack of a thread that reads a hook's output.
const READER_STACK: usize = 64 * 1024;

/// A hook that runs.
struct Running {
    run: HookRun,
    deadline: Instant,
    killed: bool,
}

/// An `on-crash` event waiting for its entry's hook to end.
struct Waiting {
    run: HookRun,
    /// Events before it that it stands for.
    coalesced: u32,
}

/// The hooks that run and the events waiting for them.
#[derive(Default)]
pub struct Hooks {
    running: HashMap<u32, Running>,
    /// The keys with an `on-crash` hook running, and what waits for it.
    busy: HashMap<Arc<str>, Option<Waiting>>,
}

impl Hooks {
    /// Runs `run` now, or once the hook of its entry has ended. For a
    /// `recover` command that could not be started, its instance: the
    /// supervisor is to hear that the command is over.
    pub fn run(&mut self, run: HookRun, now: Instant) -> Option<InstanceId> {
        if run.kind == HookKind::OnCrash {
            if let Some(slot) = self.busy.get_mut(&run.key) {
                match slot {
                    Some(waiting) => {
                        waiting.run = run;
                        waiting.coalesced += 1;
                    }
                    None => *slot = Some(Waiting { run, coalesced: 0 }),
                }
                return None;
            }
        }
        self.start(run, 0, now)
    }

    fn start(&mut self, run: HookRun, coalesced: u32, now: Instant) -> Option<InstanceId> {
        match spawn(&run, coalesced) {
            Ok(pid) => {
                log::debug!(
                    "{} of {}: pid {pid} runs `{}`",
                    kind_name(run.kind),
                    run.exe.display(),
                    run.command
                );
                if run.kind == HookKind::OnCrash {
                    self.busy.insert(Arc::clone(&run.key), None);
                }
                let deadline = now + run.timeout;
                self.running.insert(
                    pid,
                    Running {
                        run,
                        deadline,
                        killed: false,
                    },
                );
                None
            }
            Err(err) => {
                log::error!(
                    "cannot run the {} command of {} (`{}`): {}",
                    kind_name(run.kind),
                    run.exe.display(),
                    run.command,
                    error_chain(&err)
                );
                (run.kind == HookKind::Recover).then_some(run.instance)
            }
        }
    }

    /// A child of armourd's was reaped. When it was a hook, its end is
    /// logged and the next event of its entry runs; a `recover` command's
    /// instance is returned.
    pub fn reaped(&mut self, pid: u32, status: ExitStatus, now: Instant) -> Option<InstanceId> {
        let Running { run, killed, .. } = self.running.remove(&pid)?;
        let what = format!("{} of {}", kind_name(run.kind), run.exe.display());
        match status {
            _ if killed => log::warn!(
                "{what}: killed after hook-timeout={} s: `{}`",
                run.timeout.as_secs_f32(),
                run.command
            ),
            ExitStatus::Exited(0) => log::debug!("{what}: done"),
            status => log::warn!("{what}: `{}` failed: {status}", run.command),
        }
        match run.kind {
            HookKind::Recover => Some(run.instance),
            HookKind::OnCrash => {
                if let Some(Waiting { run, coalesced }) = self.busy.remove(&run.key).flatten() {
                    self.start(run, coalesced, now);
                }
                None
            }
        }
    }

    /// When the next hook reaches its timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.running
            .values()
            .filter(|r| !r.killed)
            .map(|r| r.deadline)
            .min()
    }

    /// Kills the process groups of hooks past their timeout.
    pub fn expire(&mut self, now: Instant) {
        for (&pid, running) in &mut self.running {
            if running.killed || running.deadline > now {
                continue;
            }
            running.killed = true;
            // Not reaped yet, so the group's id is still this hook's.
            if let Err(err) = nix::sys::signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL) {
                log::warn!("cannot kill the hook pid {pid} at its timeout: {err}");
            }
        }
    }
}

fn kind_name(kind: HookKind) -> &'static str {
    match kind {
        HookKind::OnCrash => "on-crash hook",
        HookKind::Recover => "recover command",
    }
}

/// Starts `/bin/sh -c COMMAND` in a process group of its own, its output
/// read into the log; its pid.
fn spawn(run: &HookRun, coalesced: u32) -> io::Result<u32> {
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let reader = std::fs::File::from(reader);
    let status = run.status;
    let signal = match status {
        ExitStatus::Signaled { signal, .. } => {
            signal_name(signal).map_or_else(|| signal.to_string(), |name| format!("SIG{name}"))
        }
        _ => String::new(),
    };
    let code = match status {
        ExitStatus::Exited(code) => code.to_string(),
        _ => String::new(),
    };
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&*run.command)
        .env("ARMOURD_EVENT", run.event.name())
        .env("ARMOURD_EXE", &run.exe)
        .env("ARMOURD_PID", run.pid.to_string())
        .env("ARMOURD_EXIT_CODE", code)
        .env("ARMOURD_SIGNAL", signal)
        .env(
            "ARMOURD_CORE_DUMPED",
            if status.core_dumped() { "1" } else { "0" },
        )
        .env("ARMOURD_RESTARTS", run.restarts.to_string())
        .env("ARMOURD_COALESCED", coalesced.to_string())
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(Stdio::from(writer))
        .process_group(0)
        .spawn()?;
    // The Command and its copy of the pipe's write end are gone: the
    // reader sees the end of the output once the hook's processes close it.
    let pid = child.id();
    let label = format!("{} of {}", kind_name(run.kind), run.exe.display());
    std::thread::Builder::new()
        .name("armourd-hook".into())
        .stack_size(READER_STACK)
        .spawn(move || log_lines(reader, &label))?;
    Ok(pid)
}

/// Logs each line `output` gives until its end.
fn log_lines(output: impl Read, label: &str) {
    let mut output = BufReader::with_capacity(MAX_LINE as usize, output);
    let mut line = Vec::with_capacity(MAX_LINE as usize);
    loop {
        line.clear();
        match output.by_ref().take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                log::info!("{label}: {}", text.trim_end_matches('\n'));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, sync::Arc, time::Duration};

    use nix::sys::wait::{waitpid, WaitStatus};

    use super::*;
    use crate::supervisor::{HookEvent, Supervisor};

    fn run(pid: u32, command: String, timeout: Duration) -> HookRun {
        // An InstanceId only comes from a supervisor.
        let mut s = Supervisor::new(Vec::new());
        let exec = crate::supervisor::Exec {
            proc: crate::supervisor::ProcId { pid, start: None },
            entry: None,
            spec: crate::launch::LaunchSpec::minimal("/bin/true".into(), Vec::new()),
            leads_group: false,
            adopted: true,
        };
        s.exec(exec, Instant::now());
        let instance = s.instances().next().unwrap().id;
        HookRun {
            kind: HookKind::OnCrash,
            instance,
            key: Arc::from("/usr/sbin/food"),
            command: Arc::from(command),
            timeout,
            event: HookEvent::Crashed,
            exe: PathBuf::from("/usr/sbin/food"),
            pid,
            status: ExitStatus::Exited(3),
            restarts: 0,
        }
    }

    /// Waits for the one running hook to end and reports it.
    fn finish_one(hooks: &mut Hooks) -> WaitStatus {
        let pid = *hooks.running.keys().next().expect("a hook runs");
        let status = waitpid(Pid::from_raw(pid as i32), None).unwrap();
        let ended = match status {
            WaitStatus::Exited(_, code) => ExitStatus::Exited(code as u8),
            _ => ExitStatus::Unknown,
        };
        hooks.reaped(pid, ended, Instant::now());
        status
    }

    #[test]
    fn events_during_a_hook_wait_and_are_coalesced_into_the_latest() {
        let out = std::env::temp_dir().join(format!("armourd-hooks-{}", std::process::id()));
        let _ = std::fs::remove_file(&out);
        let command = format!(
            "echo $ARMOURD_EVENT $ARMOURD_PID $ARMOURD_EXIT_CODE $ARMOURD_COALESCED >> {}",
            out.display()
        );
        let mut hooks = Hooks::default();
        let now = Instant::now();
        for pid in [1, 2, 3] {
            hooks.run(run(pid, command.clone(), Duration::from_secs(30)), now);
        }
        assert_eq!(hooks.running.len(), 1, "one at a time");
        finish_one(&mut hooks);
        assert_eq!(hooks.running.len(), 1, "the waiting event runs next");
        finish_one(&mut hooks);
        assert!(hooks.running.is_empty() && hooks.busy.is_empty());
        let text = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        assert_eq!(text, "crashed 1 3 0\ncrashed 3 3 1\n");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_with_its_group() {
        let mut hooks = Hooks::default();
        let now = Instant::now();
        let hang = run(1, "sleep 100 & sleep 100".into(), Duration::ZERO);
        hooks.run(hang, now);
        assert_eq!(hooks.next_deadline(), Some(now));
        hooks.expire(now);
        assert_eq!(hooks.next_deadline(), None, "killed once");
        assert!(matches!(
            finish_one(&mut hooks),
            WaitStatus::Signaled(_, Signal::SIGKILL, _)
        ));
    }
}
