//! The decisions: which processes are watched, which end is a crash, when
//! to terminate leftovers and when to restart. Plain data — no I/O, no
//! clock: events and the time come in as arguments, [`Action`]s go out, and
//! [`Supervisor::next_deadline`] says when to call [`Supervisor::tick`].
//!
//! An *instance* is one independently started process of a watched
//! executable (its *leader*) together with the processes it forked without
//! executing anything (its *members*).

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{launch::LaunchSpec, status::ExitStatus, status::SuccessSet};

/// How long a failed restart waits before it is tried again.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long to wait for leftovers after SIGKILL before restarting anyway.
pub const KILL_GRACE: Duration = Duration::from_secs(1);

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
    fn same_start(&self, start: Option<u64>) -> bool {
        match (self.start, start) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

/// Identifies an instance for as long as the supervisor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(u64);

#[cfg(test)]
impl InstanceId {
    /// An id made up by a test of another module.
    pub(crate) fn for_tests(id: u64) -> Self {
        Self(id)
    }
}

/// What an entry of the configuration decides for its instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub success: SuccessSet,
    pub stop_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            success: SuccessSet::default(),
            stop_timeout: Duration::from_secs(5),
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
        retry_in: Duration,
    },
    Unwatched {
        pid: u32,
        exe: PathBuf,
        reason: &'static str,
    },
}

/// An effect for the shell to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the instance again; report the outcome with [`Supervisor::spawned`].
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
    /// The last restart failed; the next is due at the deadline.
    Retrying {
        deadline: Instant,
    },
}

#[derive(Clone, Debug)]
struct Member {
    start: Option<u64>,
    parent: u32,
}

impl Member {
    fn proc(&self, pid: u32) -> ProcId {
        ProcId {
            pid,
            start: self.start,
        }
    }
}

#[derive(Clone, Debug)]
struct Instance {
    entry: Option<usize>,
    spec: Arc<LaunchSpec>,
    leader: Option<ProcId>,
    /// The process whose process group is terminated after a crash.
    group: Option<ProcId>,
    members: BTreeMap<u32, Member>,
    /// `spec` was read from /proc after the leader started, not at its exec.
    adopted: bool,
    state: State,
    restarts: u32,
    last_exit: Option<ExitStatus>,
    last_pid: u32,
    since: Instant,
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
}

/// The watchdog's whole state.
#[derive(Debug, Default)]
pub struct Supervisor {
    policies: Vec<Policy>,
    instances: BTreeMap<InstanceId, Instance>,
    by_pid: HashMap<u32, InstanceId>,
    /// Process groups of crashed instances to SIGKILL at a deadline.
    group_kills: Vec<(Instant, ProcId)>,
    next_id: u64,
}

impl Supervisor {
    /// A supervisor for configuration entries with these policies.
    pub fn new(policies: Vec<Policy>) -> Self {
        Self {
            policies,
            ..Self::default()
        }
    }

    /// Replaces the entries' policies (same indexes as the configuration).
    pub fn set_policies(&mut self, policies: Vec<Policy>) {
        self.policies = policies;
    }

    fn policy(&self, entry: Option<usize>) -> Policy {
        entry
            .and_then(|e| self.policies.get(e).copied())
            .unwrap_or_default()
    }

    /// Whether `pid` belongs to a watched instance.
    pub fn is_watched(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// Whether `pid` is a restart armourd spawned whose exec was not yet reported.
    pub fn awaits_exec(&self, pid: u32) -> bool {
        self.by_pid
            .get(&pid)
            .and_then(|id| self.instances[id].leader)
            .is_some_and(|leader| leader == ProcId { pid, start: None })
    }

    /// The exec of a spawned restart was reported: its start time is known now.
    pub fn exec_confirmed(&mut self, pid: u32, start: Option<u64>) -> Vec<Action> {
        if let Some(id) = self.by_pid.get(&pid) {
            let instance = self.instances.get_mut(id).expect("indexed instance");
            if let Some(leader) = instance.leader.as_mut().filter(|l| l.pid == pid) {
                leader.start = start;
            }
            if let Some(group) = instance.group.as_mut().filter(|g| g.pid == pid) {
                group.start = start;
            }
        }
        Vec::new()
    }

    /// Every watched process (leaders and members) with its start time.
    pub fn watched(&self) -> Vec<ProcId> {
        let mut all = Vec::new();
        for instance in self.instances.values() {
            all.extend(instance.leader);
            all.extend(instance.members.iter().map(|(&pid, m)| ProcId {
                pid,
                start: m.start,
            }));
        }
        all
    }

    /// The instances, in the order they were first watched.
    pub fn instances(&self) -> impl Iterator<Item = InstanceView> + '_ {
        self.instances.iter().map(|(&id, i)| InstanceView {
            id,
            pid: i.leader.map_or(i.last_pid, |l| l.pid),
            entry: i.entry,
            spec: Arc::clone(&i.spec),
            state: i.state,
            restarts: i.restarts,
            last_exit: i.last_exit,
            since: i.since,
        })
    }

    /// A process executed a watched file (or was adopted): a new instance,
    /// unless it is the restart of an instance armourd just spawned.
    pub fn exec(&mut self, exec: Exec, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let pid = exec.proc.pid;
        if let Some(&id) = self.by_pid.get(&pid) {
            let instance = &mut self.instances.get_mut(&id).expect("indexed instance");
            match instance.leader {
                Some(leader) if leader.pid == pid && leader.same_start(exec.proc.start) => {
                    // Our own restart reaching its exec, or the program
                    // executing itself again: the same instance.
                    instance.leader = Some(exec.proc);
                    if instance.adopted && !exec.adopted {
                        // Adopted as it executed (read from /proc before
                        // the exec had laid out its command line): what
                        // its exec is reported with is what it started with.
                        instance.spec = Arc::new(exec.spec);
                        instance.adopted = false;
                    }
                    return actions;
                }
                Some(leader) if leader.pid == pid => {
                    // The pid was recycled while its end went unseen.
                    actions.extend(self.exit(pid, leader.start, ExitStatus::Unknown, now));
                }
                _ => {
                    // A member executed a watched file: a new instance.
                    instance.members.remove(&pid);
                    self.by_pid.remove(&pid);
                }
            }
        }
        let id = InstanceId(self.next_id);
        self.next_id += 1;
        let spec = Arc::new(exec.spec);
        actions.push(Action::Watch(pid));
        actions.push(Action::Notify(Notice::Watching {
            pid,
            exe: spec.exe.clone(),
            adopted: exec.adopted,
        }));
        self.instances.insert(
            id,
            Instance {
                entry: exec.entry,
                spec,
                leader: Some(exec.proc),
                group: exec.leads_group.then_some(exec.proc),
                members: BTreeMap::new(),
                adopted: exec.adopted,
                state: State::Running,
                restarts: 0,
                last_exit: None,
                last_pid: pid,
                since: now,
            },
        );
        self.by_pid.insert(pid, id);
        actions
    }

    /// A watched process executed a file that is not watched: it is no
    /// longer the program it was, so it leaves its instance.
    pub fn exec_other(&mut self, pid: u32) -> Vec<Action> {
        self.leave(pid, Some("it executed another program"))
    }

    /// The kernel cannot hold the watch of `pid` (no room): it leaves its
    /// instance as if it had executed another program, and is not reported
    /// as watched. No notice: the shell logs such refusals at a rate that
    /// no user can turn into a flood.
    pub fn unheld(&mut self, pid: u32) -> Vec<Action> {
        self.leave(pid, None)
    }

    /// Takes `pid` out of its instance; a leader's leaving is noticed with
    /// `reason`, if given.
    fn leave(&mut self, pid: u32, reason: Option<&'static str>) -> Vec<Action> {
        let Some(id) = self.by_pid.remove(&pid) else {
            return Vec::new();
        };
        let mut actions = vec![Action::Unwatch(pid)];
        let instance = self.instances.get_mut(&id).expect("indexed instance");
        if instance.members.remove(&pid).is_some() {
            return actions;
        }
        instance.leader = None;
        if let Some(reason) = reason {
            actions.push(Action::Notify(Notice::Unwatched {
                pid,
                exe: instance.spec.exe.clone(),
                reason,
            }));
        }
        self.forget_if_idle(id, &mut actions);
        actions
    }

    /// A watched process forked `child` (a new process, not a thread).
    pub fn fork(&mut self, parent: u32, child: ProcId) -> Vec<Action> {
        let Some(&id) = self.by_pid.get(&parent) else {
            return vec![Action::Unwatch(child.pid)];
        };
        let instance = self.instances.get_mut(&id).expect("indexed instance");
        instance.members.insert(
            child.pid,
            Member {
                start: child.start,
                parent,
            },
        );
        self.by_pid.insert(child.pid, id);
        let mut actions = vec![Action::Watch(child.pid)];
        if matches!(instance.state, State::Stopping { .. }) {
            actions.push(Action::Signal {
                target: Target::Process(child),
                signal: libc::SIGTERM,
            });
        }
        actions
    }

    /// A watched process ended with `status`. `start` is its start time
    /// when the backend knows it; an end of another process that had the
    /// same pid is ignored.
    pub fn exit(
        &mut self,
        pid: u32,
        start: Option<u64>,
        status: ExitStatus,
        now: Instant,
    ) -> Vec<Action> {
        let Some(&id) = self.by_pid.get(&pid) else {
            return Vec::new();
        };
        let policy = {
            let instance = &self.instances[&id];
            let known = match instance.leader {
                Some(leader) if leader.pid == pid => leader.same_start(start),
                _ => instance.members.get(&pid).is_some_and(|m| {
                    ProcId {
                        pid,
                        start: m.start,
                    }
                    .same_start(start)
                }),
            };
            if !known {
                return Vec::new();
            }
            self.policy(instance.entry)
        };
        self.by_pid.remove(&pid);
        let mut actions = vec![Action::Unwatch(pid)];
        let instance = self.instances.get_mut(&id).expect("indexed instance");
        if instance.members.remove(&pid).is_some() {
            if instance.members.is_empty() && matches!(instance.state, State::Stopping { .. }) {
                actions.extend(self.restart(id));
            }
            return actions;
        }
        instance.leader = None;
        instance.last_exit = Some(status);
        instance.last_pid = pid;
        instance.since = now;
        let exe = instance.spec.exe.clone();
        if policy.success.is_clean(status) {
            actions.push(Action::Notify(Notice::Exited {
                pid,
                exe: exe.clone(),
                status,
                will_restart: false,
            }));
            if let Some(heir) = heir(&instance.members, pid) {
                let member = instance.members.remove(&heir).expect("chosen member");
                instance.leader = Some(ProcId {
                    pid: heir,
                    start: member.start,
                });
                instance.last_pid = heir;
                actions.push(Action::Notify(Notice::HandedOff {
                    from: pid,
                    to: heir,
                    exe,
                }));
            } else {
                self.forget_if_idle(id, &mut actions);
            }
            return actions;
        }
        actions.push(Action::Notify(Notice::Exited {
            pid,
            exe,
            status,
            will_restart: true,
        }));
        for (&pid, member) in &instance.members {
            actions.push(Action::Signal {
                target: Target::Process(member.proc(pid)),
                signal: libc::SIGTERM,
            });
        }
        if let Some(group) = instance.group {
            actions.push(Action::Signal {
                target: Target::Group(group),
                signal: libc::SIGTERM,
            });
        }
        let deadline = now + policy.stop_timeout;
        if instance.members.is_empty() {
            if let Some(group) = instance.group {
                // Untracked leftovers of the group get their SIGKILL later;
                // the restart does not wait for processes it cannot see end.
                self.group_kills.push((deadline, group));
            }
            actions.extend(self.restart(id));
        } else {
            instance.state = State::Stopping {
                deadline,
                killed: false,
            };
        }
        actions
    }

    /// The outcome of an [`Action::Spawn`]: the new pid, or why it failed.
    pub fn spawned(
        &mut self,
        id: InstanceId,
        result: Result<u32, String>,
        now: Instant,
    ) -> Vec<Action> {
        let Some(instance) = self.instances.get_mut(&id) else {
            return Vec::new();
        };
        let exe = instance.spec.exe.clone();
        match result {
            Ok(pid) => {
                let old_pid = instance.last_pid;
                instance.restarts += 1;
                instance.leader = Some(ProcId { pid, start: None });
                // The restart leads its own group (setsid or setpgid).
                instance.group = Some(ProcId { pid, start: None });
                instance.state = State::Running;
                instance.last_pid = pid;
                instance.since = now;
                let restarts = instance.restarts;
                self.by_pid.insert(pid, id);
                vec![
                    Action::Watch(pid),
                    Action::Notify(Notice::Restarted {
                        old_pid,
                        new_pid: pid,
                        exe,
                        restarts,
                    }),
                ]
            }
            Err(reason) => {
                instance.state = State::Retrying {
                    deadline: now + RETRY_DELAY,
                };
                vec![Action::Notify(Notice::RestartFailed {
                    exe,
                    reason,
                    retry_in: RETRY_DELAY,
                })]
            }
        }
    }

    /// Stops watching the instance `pid` belongs to. Its processes keep running.
    pub fn unwatch(&mut self, pid: u32) -> Option<Vec<Action>> {
        let id = *self.by_pid.get(&pid)?;
        let instance = self.instances.remove(&id)?;
        let mut actions = Vec::new();
        for p in instance
            .leader
            .iter()
            .map(|l| l.pid)
            .chain(instance.members.keys().copied())
        {
            self.by_pid.remove(&p);
            actions.push(Action::Unwatch(p));
        }
        actions.push(Action::Notify(Notice::Unwatched {
            pid,
            exe: instance.spec.exe.clone(),
            reason: "asked to",
        }));
        Some(actions)
    }

    /// When [`Supervisor::tick`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let states = self.instances.values().filter_map(|i| match i.state {
            State::Stopping { deadline, .. } | State::Retrying { deadline } => Some(deadline),
            State::Running | State::Restarting => None,
        });
        states.chain(self.group_kills.iter().map(|(d, _)| *d)).min()
    }

    /// Carries out what is due at `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.group_kills.retain(|&(deadline, group)| {
            let due = deadline <= now;
            if due {
                actions.push(Action::Signal {
                    target: Target::Group(group),
                    signal: libc::SIGKILL,
                });
            }
            !due
        });
        let due: Vec<(InstanceId, State)> = self
            .instances
            .iter()
            .filter(|(_, i)| match i.state {
                State::Stopping { deadline, .. } | State::Retrying { deadline } => deadline <= now,
                _ => false,
            })
            .map(|(&id, i)| (id, i.state))
            .collect();
        for (id, state) in due {
            match state {
                State::Stopping { killed: false, .. } => {
                    let instance = self.instances.get_mut(&id).expect("listed instance");
                    for (&pid, member) in &instance.members {
                        actions.push(Action::Signal {
                            target: Target::Process(member.proc(pid)),
                            signal: libc::SIGKILL,
                        });
                    }
                    if let Some(group) = instance.group {
                        actions.push(Action::Signal {
                            target: Target::Group(group),
                            signal: libc::SIGKILL,
                        });
                    }
                    instance.state = State::Stopping {
                        deadline: now + KILL_GRACE,
                        killed: true,
                    };
                }
                // Leftovers that survive SIGKILL (stuck in the kernel) do
                // not hold the restart back any longer.
                State::Stopping { killed: true, .. } | State::Retrying { .. } => {
                    actions.extend(self.restart(id));
                }
                State::Running | State::Restarting => {}
            }
        }
        actions
    }

    fn restart(&mut self, id: InstanceId) -> Vec<Action> {
        let instance = self.instances.get_mut(&id).expect("instance to restart");
        for pid in std::mem::take(&mut instance.members).into_keys() {
            self.by_pid.remove(&pid);
        }
        instance.state = State::Restarting;
        vec![Action::Spawn {
            instance: id,
            spec: Arc::clone(&instance.spec),
            configured: instance.entry.is_some(),
        }]
    }

    /// Drops an instance that has no process left and nothing pending.
    fn forget_if_idle(&mut self, id: InstanceId, actions: &mut Vec<Action>) {
        let instance = &self.instances[&id];
        if instance.leader.is_some() || instance.state != State::Running {
            return;
        }
        let instance = self.instances.remove(&id).expect("checked above");
        for pid in instance.members.into_keys() {
            self.by_pid.remove(&pid);
            actions.push(Action::Unwatch(pid));
        }
    }
}

/// The member that takes the watch over when the leader `pid` ends cleanly:
/// a direct child of the leader if there is one, else any member.
fn heir(members: &BTreeMap<u32, Member>, pid: u32) -> Option<u32> {
    members
        .iter()
        .find(|(_, m)| m.parent == pid)
        .or_else(|| members.iter().next())
        .map(|(&pid, _)| pid)
}

#[cfg(test)]
mod tests;
