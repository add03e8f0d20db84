//! The values the [`Supervisor`](super::Supervisor) takes and gives: the
//! processes it is told about, the policies of the entries, the states of
//! the instances, and the [`Action`]s and [`Notice`]s it hands the shell.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

pub use super::policy::{Backoff, GiveUp, RestartPolicy};
use crate::{launch::LaunchSpec, status::ExitStatus, status::SuccessSet};

/// A process: its pid and its start time (clock ticks since boot, as in
/// `/proc/PID/stat`), which together never name two processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcId {
    pub pid: u32,
    /// `None` until known (a process just spawned, or a backend that does not say).
    pub start: Option<u64>,
}

impl ProcId {
    /// Whether `start` may be the start time of this process.
    pub(super) fn same_start(&self, start: Option<u64>) -> bool {
        match (self.start, start) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

/// Identifies an instance for as long as the supervisor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(pub(super) u64);

#[cfg(test)]
impl InstanceId {
    /// An id made up by a test of another module.
    pub(crate) fn for_tests(id: u64) -> Self {
        Self(id)
    }
}

/// What an entry of the configuration decides for its instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub success: SuccessSet,
    pub stop_timeout: Duration,
    /// When to restart and when to give up (SPEC §8).
    pub restart: RestartPolicy,
    /// `on-crash=`: a shell command run at every abnormal end.
    pub on_crash: Option<Arc<str>>,
    /// `recover=`: a shell command run instead of the built-in restart.
    pub recover: Option<Arc<str>>,
    /// How long a hook may run before it is killed.
    pub hook_timeout: Duration,
    /// The entry as the file names it: the hooks of one entry run one at a time.
    pub name: Arc<str>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            success: SuccessSet::default(),
            stop_timeout: Duration::from_secs(5),
            restart: RestartPolicy::default(),
            on_crash: None,
            recover: None,
            hook_timeout: Duration::from_secs(30),
            name: Arc::from(""),
        }
    }
}

/// Whom a signal is for: a process, or the process group it led; named
/// with its start time so that the shell never signals a successor that
/// took over the pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Process(ProcId),
    Group(ProcId),
}

/// Something that happened, for the log and for D-Bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Watching {
        pid: u32,
        exe: PathBuf,
        adopted: bool,
    },
    Exited {
        pid: u32,
        exe: PathBuf,
        status: ExitStatus,
        will_restart: bool,
    },
    /// A crash in a loop: the restart waits.
    BackingOff {
        pid: u32,
        exe: PathBuf,
        delay: Duration,
        streak: u32,
    },
    /// `give-up` was reached: the instance is not restarted until reset.
    Failed {
        pid: u32,
        exe: PathBuf,
        crashes: u32,
    },
    HandedOff {
        from: u32,
        to: u32,
        exe: PathBuf,
    },
    Restarted {
        old_pid: u32,
        new_pid: u32,
        exe: PathBuf,
        restarts: u32,
    },
    RestartFailed {
        exe: PathBuf,
        reason: String,
        /// `None`: it was the last try (`give-up`).
        retry_in: Option<Duration>,
    },
    Unwatched {
        pid: u32,
        exe: PathBuf,
        reason: &'static str,
    },
}

/// Which hook a [`HookRun`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// `on-crash=`: told about the end, changes nothing.
    OnCrash,
    /// `recover=`: starts the program again in armourd's place; its end is
    /// reported with [`Supervisor::recover_ended`](super::Supervisor::recover_ended).
    Recover,
}

/// What a hook is run for (`ARMOURD_EVENT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookEvent {
    Crashed,
    GaveUp,
}

impl HookEvent {
    /// The value of `ARMOURD_EVENT`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Crashed => "crashed",
            Self::GaveUp => "gave-up",
        }
    }
}

/// A shell command to run for an instance, with what it is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookRun {
    pub kind: HookKind,
    pub instance: InstanceId,
    /// Hooks with the same key never run at the same time.
    pub key: Arc<str>,
    pub command: Arc<str>,
    pub timeout: Duration,
    pub event: HookEvent,
    pub exe: PathBuf,
    pub pid: u32,
    pub status: ExitStatus,
    pub restarts: u32,
}

/// An effect for the shell to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the instance again; report the outcome with
    /// [`Supervisor::spawned`](super::Supervisor::spawned).
    Spawn {
        instance: InstanceId,
        spec: Arc<LaunchSpec>,
        /// Of a configuration entry, not watched on request: goes first.
        configured: bool,
    },
    Signal {
        target: Target,
        signal: i32,
    },
    /// Report events about this pid from now on (kernel filter).
    Watch(u32),
    /// Stop reporting events about this pid.
    Unwatch(u32),
    Notify(Notice),
    /// Run a hook (never before the restarts of the same batch).
    Hook(HookRun),
}

/// A process seen executing a watched file, with what it was started with.
#[derive(Clone, Debug)]
pub struct Exec {
    pub proc: ProcId,
    /// Index of the configuration entry; `None` for a process watched on request.
    pub entry: Option<usize>,
    pub spec: LaunchSpec,
    /// It leads its own process group.
    pub leads_group: bool,
    /// It ran before armourd saw its exec (adopted at start-up or on request).
    pub adopted: bool,
}

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Running,
    /// The leader crashed; leftovers were sent SIGTERM (then SIGKILL once `killed`).
    Stopping {
        deadline: Instant,
        killed: bool,
    },
    /// A restart was asked for and not yet reported.
    Restarting,
    /// The `recover=` command runs; the process it starts takes the
    /// instance over. Once the command has ended, the deadline says how
    /// long its process may take to appear.
    Recovering {
        deadline: Option<Instant>,
    },
    /// A crash loop (or a failed restart): the next restart is due at the deadline.
    Backoff {
        deadline: Instant,
    },
    /// `give-up` was reached; nothing happens until a reset or a reload.
    Failed,
}

/// What the instance does once the leftovers of its crashed leader are gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Then {
    Restart { at: Instant },
    Fail,
}

/// What D-Bus and the log may know about an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceView {
    pub id: InstanceId,
    pub pid: u32,
    pub entry: Option<usize>,
    pub spec: Arc<LaunchSpec>,
    pub state: State,
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
    pub since: Instant,
    /// Crashes in a row since it last ran for `stable-after`.
    pub crash_streak: u32,
    /// When the current process started (`None` while there is none).
    pub started: Option<Instant>,
    /// When the next restart is due, while one waits.
    pub next_restart: Option<Instant>,
}

/// Which instances a [`Supervisor::reset`](super::Supervisor::reset) is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The instance whose process (or last process) has this pid.
    Pid(u32),
    /// Every instance of this executable.
    Exe(PathBuf),
}
