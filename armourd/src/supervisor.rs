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
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{launch::LaunchSpec, logging::error_chain, spawn::SpawnError, status::ExitStatus};

mod exit;
mod keep;
mod policy;
mod restart;
mod types;

pub use keep::{Kept, KeptAs, Pending};
use policy::Crashes;
pub use types::*;

/// The shortest wait before a failed restart is tried again.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long to wait for leftovers after SIGKILL before restarting anyway.
pub const KILL_GRACE: Duration = Duration::from_secs(1);
/// How long the process a `recover=` command started may take to execute
/// the watched file after the command has ended.
pub const RECOVER_GRACE: Duration = Duration::from_secs(2);

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
    /// What follows once the leftovers of a crash are gone.
    then: Then,
    restarts: u32,
    crashes: Crashes,
    last_exit: Option<ExitStatus>,
    last_pid: u32,
    since: Instant,
    /// When the current leader started (or was adopted).
    started: Option<Instant>,
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

    fn policy(&self, entry: Option<usize>) -> Policy {
        entry
            .and_then(|e| self.policies.get(e).cloned())
            .unwrap_or_default()
    }

    /// Whether `pid` belongs to a watched instance.
    pub fn is_watched(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// Whether `pid` (started at `start`, when known) leads an instance of
    /// configuration entry `entry` running `exe`, not adopted: [`Self::exec`]
    /// of that program by it would change nothing (a restart's exec
    /// reported again, or the program executing itself), so how it was
    /// started need not be read.
    pub fn leads_running(&self, pid: u32, start: Option<u64>, entry: usize, exe: &Path) -> bool {
        let Some(instance) = self.by_pid.get(&pid).and_then(|id| self.instances.get(id)) else {
            return false;
        };
        instance
            .leader
            .is_some_and(|leader| leader.pid == pid && leader.same_start(start))
            && instance.entry == Some(entry)
            && instance.spec.exe == exe
            && !instance.adopted
    }

    /// Whether `pid` (started at `start`, when known) leads an instance
    /// adopted from `/proc` whose exec has not been reported since.
    pub fn adopted_leader(&self, pid: u32, start: Option<u64>) -> bool {
        self.by_pid.get(&pid).is_some_and(|id| {
            let instance = &self.instances[id];
            instance.adopted
                && instance
                    .leader
                    .is_some_and(|leader| leader.pid == pid && leader.same_start(start))
        })
    }

    /// Whether `pid` is a restart armourd spawned whose exec was not yet reported.
    pub fn awaits_exec(&self, pid: u32) -> bool {
        self.by_pid
            .get(&pid)
            .and_then(|id| self.instances[id].leader)
            .is_some_and(|leader| leader == ProcId { pid, start: None })
    }

    /// The exec of a spawned restart was reported: its start time is known now.
    pub fn exec_confirmed(&mut self, pid: u32, start: Option<u64>) {
        if let Some(id) = self.by_pid.get(&pid) {
            let instance = self.instances.get_mut(id).expect("indexed instance");
            if let Some(leader) = instance.leader.as_mut().filter(|l| l.pid == pid) {
                leader.start = start;
            }
            if let Some(group) = instance.group.as_mut().filter(|g| g.pid == pid) {
                group.start = start;
            }
        }
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

    /// The members of `pid`'s instance that `pid` forked, or that those
    /// forked, nearest first.
    pub fn forked_by(&self, pid: u32) -> Vec<ProcId> {
        let Some(instance) = self.by_pid.get(&pid).map(|id| &self.instances[id]) else {
            return Vec::new();
        };
        let (mut forked, mut parents) = (Vec::new(), vec![pid]);
        let mut next = 0;
        while let Some(&parent) = parents.get(next) {
            next += 1;
            for (&child, member) in &instance.members {
                if member.parent == parent && !parents.contains(&child) {
                    forked.push(member.proc(child));
                    parents.push(child);
                }
            }
        }
        forked
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
            crash_streak: i.crashes.streak(),
            started: i.leader.and(i.started),
            next_restart: match (i.state, i.then) {
                (State::Backoff { deadline }, _) => Some(deadline),
                (State::Stopping { .. }, Then::Restart { at }) => Some(at),
                _ => None,
            },
        })
    }

    /// A process executed a watched file (or was adopted): a new instance,
    /// unless it is the restart of an instance armourd just spawned, or
    /// the program a `recover=` command started.
    pub fn exec(&mut self, exec: Exec, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let pid = exec.proc.pid;
        if let Some(&id) = self.by_pid.get(&pid) {
            let instance = &mut self.instances.get_mut(&id).expect("indexed instance");
            match instance.leader {
                Some(leader)
                    if leader.pid == pid
                        && leader.same_start(exec.proc.start)
                        && instance.entry == exec.entry
                        && instance.spec.exe == exec.spec.exe =>
                {
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
                Some(leader) if leader.pid == pid && leader.same_start(exec.proc.start) => {
                    // The leader executed another watched program: it is an
                    // instance of that one now. The one it was is over,
                    // not crashed: its command is not what runs there.
                    actions.extend(self.leave(pid, Some("it executed another watched program")));
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
        if let Some(id) = self.recovering(&exec) {
            actions.extend(self.recovered(id, exec, now));
            return actions;
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
                then: Then::Restart { at: now },
                restarts: 0,
                crashes: Crashes::default(),
                last_exit: None,
                last_pid: pid,
                since: now,
                started: Some(now),
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

    /// The outcome of an [`Action::Spawn`]: the new pid, or why it failed.
    pub fn spawned(
        &mut self,
        id: InstanceId,
        result: Result<u32, SpawnError>,
        now: Instant,
    ) -> Vec<Action> {
        let Some(instance) = self.instances.get_mut(&id) else {
            return Vec::new();
        };
        if instance.state != State::Restarting
            || matches!(result, Ok(pid) if pid == instance.last_pid)
        {
            // The outcome of a spawn that was taken over at its exec already
            // (and may have ended since): nothing new.
            return Vec::new();
        }
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
                instance.started = Some(now);
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
            Err(err) => self.restart_failed(id, error_chain(&err), now),
        }
    }

    /// Stops watching the instance `pid` belongs to (or, for an instance
    /// with no process, last belonged to). Its processes keep running.
    pub fn unwatch(&mut self, pid: u32) -> Option<Vec<Action>> {
        let id = match self.by_pid.get(&pid) {
            Some(&id) => id,
            None => self
                .instances
                .iter()
                .find(|(_, i)| i.leader.is_none() && i.last_pid == pid)
                .map(|(&id, _)| id)?,
        };
        Some(self.let_go(id, pid, "asked to"))
    }

    /// Forgets an instance; its processes keep running.
    fn let_go(&mut self, id: InstanceId, pid: u32, reason: &'static str) -> Vec<Action> {
        let Some(instance) = self.instances.remove(&id) else {
            return Vec::new();
        };
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
            reason,
        }));
        actions
    }

    /// When [`Supervisor::tick`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let states = self.instances.values().filter_map(|i| match i.state {
            State::Stopping { deadline, .. }
            | State::Backoff { deadline }
            | State::Recovering {
                deadline: Some(deadline),
            } => Some(deadline),
            _ => None,
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
                State::Stopping { deadline, .. }
                | State::Backoff { deadline }
                | State::Recovering {
                    deadline: Some(deadline),
                } => deadline <= now,
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
                State::Stopping { killed: true, .. } => actions.extend(self.proceed(id, now)),
                State::Backoff { .. } => actions.extend(self.restart(id)),
                State::Recovering { .. } => {
                    let exe = self.instances[&id].spec.exe.display().to_string();
                    let reason = format!("the recover command left no process of {exe} running");
                    actions.extend(self.restart_failed(id, reason, now));
                }
                _ => {}
            }
        }
        actions
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

#[cfg(test)]
mod tests;
