//! What follows a crash: the restart policy's verdict, the wait, the
//! restart or the `recover=` command, giving up, and the ways out of a
//! given-up state (reset, reload).

use std::{sync::Arc, time::Instant};

use super::{
    policy::Verdict, Action, Exec, HookEvent, HookKind, HookRun, InstanceId, Notice, Policy,
    ProcId, Selector, State, Supervisor, Then, RECOVER_GRACE, RETRY_DELAY,
};
use crate::status::ExitStatus;

impl Supervisor {
    /// The leader of `id` ended abnormally at `now`: decides whether and
    /// when it is started again, and says so.
    pub(super) fn crashed(
        &mut self,
        id: InstanceId,
        policy: &Policy,
        status: ExitStatus,
        now: Instant,
    ) -> Vec<Action> {
        let instance = self.instances.get_mut(&id).expect("crashed instance");
        let ran = instance
            .started
            .take()
            .map(|s| now.saturating_duration_since(s));
        let verdict = instance.crashes.crashed(&policy.restart, ran, now);
        let (pid, exe) = (instance.last_pid, instance.spec.exe.clone());
        let mut actions = vec![Action::Notify(Notice::Exited {
            pid,
            exe: exe.clone(),
            status,
            will_restart: matches!(verdict, Verdict::Restart { .. }),
        })];
        let event = match verdict {
            Verdict::Restart { delay } => {
                instance.then = Then::Restart { at: now + delay };
                if !delay.is_zero() {
                    actions.push(Action::Notify(Notice::BackingOff {
                        pid,
                        exe,
                        delay,
                        streak: instance.crashes.streak(),
                    }));
                }
                HookEvent::Crashed
            }
            Verdict::GiveUp { crashes } => {
                instance.then = Then::Fail;
                actions.push(Action::Notify(Notice::Failed { pid, exe, crashes }));
                HookEvent::GaveUp
            }
        };
        actions.extend(self.on_crash(id, policy, event, status));
        actions
    }

    /// The `on-crash=` hook for an end of `id`'s leader, if the entry has one.
    fn on_crash(
        &self,
        id: InstanceId,
        policy: &Policy,
        event: HookEvent,
        status: ExitStatus,
    ) -> Option<Action> {
        let command = policy.on_crash.clone()?;
        let instance = &self.instances[&id];
        Some(Action::Hook(HookRun {
            kind: HookKind::OnCrash,
            instance: id,
            key: Arc::clone(&policy.name),
            command,
            timeout: policy.hook_timeout,
            event,
            exe: instance.spec.exe.clone(),
            pid: instance.last_pid,
            status,
            restarts: instance.restarts,
        }))
    }

    /// The leftovers of a crash are gone (or given up on): restart now,
    /// wait for the backoff, or stay failed.
    pub(super) fn proceed(&mut self, id: InstanceId, now: Instant) -> Vec<Action> {
        let instance = self.instances.get_mut(&id).expect("instance to proceed");
        for pid in std::mem::take(&mut instance.members).into_keys() {
            self.by_pid.remove(&pid);
        }
        match instance.then {
            Then::Fail => {
                instance.state = State::Failed;
                Vec::new()
            }
            Then::Restart { at } if at > now => {
                instance.state = State::Backoff { deadline: at };
                Vec::new()
            }
            Then::Restart { .. } => self.restart(id),
        }
    }

    /// Starts the instance again: the built-in restart, or its `recover=` command.
    pub(super) fn restart(&mut self, id: InstanceId) -> Vec<Action> {
        let policy = self.policy(self.instances[&id].entry);
        let instance = self.instances.get_mut(&id).expect("instance to restart");
        for pid in std::mem::take(&mut instance.members).into_keys() {
            self.by_pid.remove(&pid);
        }
        let Some(command) = policy.recover else {
            instance.state = State::Restarting;
            return vec![Action::Spawn {
                instance: id,
                spec: Arc::clone(&instance.spec),
                configured: instance.entry.is_some(),
            }];
        };
        instance.state = State::Recovering { deadline: None };
        vec![Action::Hook(HookRun {
            kind: HookKind::Recover,
            instance: id,
            key: Arc::from(format!("{} (recover {})", policy.name, id.0)),
            command,
            timeout: policy.hook_timeout,
            event: HookEvent::Crashed,
            exe: instance.spec.exe.clone(),
            pid: instance.last_pid,
            status: instance.last_exit.unwrap_or(ExitStatus::Unknown),
            restarts: instance.restarts,
        })]
    }

    /// A restart of `id` did not happen: it counts as a crash of a process
    /// that never ran, under the same backoff and give-up, and waits at
    /// least [`RETRY_DELAY`].
    pub(super) fn restart_failed(
        &mut self,
        id: InstanceId,
        reason: String,
        now: Instant,
    ) -> Vec<Action> {
        let policy = self.policy(self.instances[&id].entry);
        let instance = self.instances.get_mut(&id).expect("instance that failed");
        instance.started = None;
        let exe = instance.spec.exe.clone();
        match instance.crashes.crashed(&policy.restart, None, now) {
            Verdict::Restart { delay } => {
                let delay = delay.max(RETRY_DELAY);
                instance.state = State::Backoff {
                    deadline: now + delay,
                };
                vec![Action::Notify(Notice::RestartFailed {
                    exe,
                    reason,
                    retry_in: Some(delay),
                })]
            }
            Verdict::GiveUp { crashes } => {
                instance.state = State::Failed;
                let status = instance.last_exit.unwrap_or(ExitStatus::Unknown);
                let mut actions = vec![
                    Action::Notify(Notice::RestartFailed {
                        exe: exe.clone(),
                        reason,
                        retry_in: None,
                    }),
                    Action::Notify(Notice::Failed {
                        pid: instance.last_pid,
                        exe,
                        crashes,
                    }),
                ];
                actions.extend(self.on_crash(id, &policy, HookEvent::GaveUp, status));
                actions
            }
        }
    }

    /// The instance of the same entry and executable whose `recover=`
    /// command runs, which the process `exec` describes takes over.
    pub(super) fn recovering(&self, exec: &Exec) -> Option<InstanceId> {
        exec.entry?;
        self.instances
            .iter()
            .find(|(_, i)| {
                matches!(i.state, State::Recovering { .. })
                    && i.entry == exec.entry
                    && i.spec.exe == exec.spec.exe
            })
            .map(|(&id, _)| id)
    }

    /// The process a `recover=` command started takes the instance over;
    /// its counters go on.
    pub(super) fn recovered(&mut self, id: InstanceId, exec: Exec, now: Instant) -> Vec<Action> {
        let instance = self.instances.get_mut(&id).expect("recovering instance");
        let pid = exec.proc.pid;
        let old_pid = instance.last_pid;
        instance.leader = Some(exec.proc);
        instance.group = exec.leads_group.then_some(exec.proc);
        instance.spec = Arc::new(exec.spec);
        instance.adopted = exec.adopted;
        instance.state = State::Running;
        instance.restarts += 1;
        instance.last_pid = pid;
        instance.since = now;
        instance.started = Some(now);
        let (exe, restarts) = (instance.spec.exe.clone(), instance.restarts);
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

    /// The `recover=` command of `id` ended; the process it started has
    /// [`RECOVER_GRACE`] to appear, else the restart counts as failed.
    pub fn recover_ended(&mut self, id: InstanceId, now: Instant) -> Vec<Action> {
        if let Some(instance) = self.instances.get_mut(&id) {
            if instance.state == (State::Recovering { deadline: None }) {
                instance.state = State::Recovering {
                    deadline: Some(now + RECOVER_GRACE),
                };
            }
        }
        Vec::new()
    }

    /// Forgets the crashes of the instances `selector` names; those that
    /// gave up or wait for a backoff start again at once. How many
    /// instances were reset.
    pub fn reset(&mut self, selector: &Selector, now: Instant) -> (u32, Vec<Action>) {
        let ids: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(_, i)| match selector {
                Selector::Pid(pid) => i.leader.map_or(i.last_pid, |l| l.pid) == *pid,
                Selector::Exe(exe) => i.spec.exe == *exe,
            })
            .map(|(&id, _)| id)
            .collect();
        let mut actions = Vec::new();
        for &id in &ids {
            actions.extend(self.reset_one(id, now));
        }
        (ids.len() as u32, actions)
    }

    fn reset_one(&mut self, id: InstanceId, now: Instant) -> Vec<Action> {
        let instance = self.instances.get_mut(&id).expect("instance to reset");
        instance.crashes.reset();
        match instance.state {
            State::Failed | State::Backoff { .. } => self.restart(id),
            State::Stopping { .. } => {
                instance.then = Then::Restart { at: now };
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// A reloaded configuration: `policies` by new entry index, and for
    /// each old entry index its new one (`None`: the entry is gone). The
    /// instances of removed entries are let go (their processes keep
    /// running); the others keep their counters and state, except that an
    /// instance that gave up starts again.
    pub fn reconfigure(
        &mut self,
        policies: Vec<Policy>,
        renumber: &[Option<usize>],
        now: Instant,
    ) -> Vec<Action> {
        self.policies = policies;
        let ids: Vec<InstanceId> = self.instances.keys().copied().collect();
        let mut actions = Vec::new();
        for id in ids {
            let instance = self.instances.get_mut(&id).expect("listed instance");
            let Some(old) = instance.entry else {
                continue;
            };
            match renumber.get(old).copied().flatten() {
                Some(new) => {
                    instance.entry = Some(new);
                    if instance.state == State::Failed {
                        actions.extend(self.reset_one(id, now));
                    }
                }
                None => {
                    let pid = instance.leader.map_or(instance.last_pid, |l: ProcId| l.pid);
                    actions.extend(self.let_go(
                        id,
                        pid,
                        "its entry was removed from the configuration",
                    ));
                }
            }
        }
        actions
    }
}
