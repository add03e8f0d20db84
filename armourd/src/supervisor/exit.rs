//! A watched process ended: which of its instance's processes it was
//! decides the path — a member, a leader that ended cleanly (its child
//! takes over), or a leader that crashed (leftovers stopped, a restart).

use std::{collections::BTreeMap, time::Instant};

use super::{Action, InstanceId, Member, Notice, Policy, ProcId, State, Supervisor, Target};
use crate::status::ExitStatus;

impl Supervisor {
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
        let Some(policy) = self.policy_if_known(id, pid, start) else {
            return Vec::new();
        };
        self.by_pid.remove(&pid);
        let mut actions = vec![Action::Unwatch(pid)];
        let instance = self.instances.get_mut(&id).expect("indexed instance");
        if instance.members.remove(&pid).is_some() {
            self.member_ended(id, now, &mut actions);
            return actions;
        }
        instance.leader = None;
        instance.last_exit = Some(status);
        instance.last_pid = pid;
        instance.since = now;
        if policy.success.is_clean(status) {
            self.leader_ended_cleanly(id, pid, status, &mut actions);
        } else {
            self.leader_crashed(id, &policy, status, now, &mut actions);
        }
        actions
    }

    /// The policy of `pid`'s instance `id`, if `pid` (started at `start`)
    /// is the process the instance knows, not another with its pid.
    fn policy_if_known(&self, id: InstanceId, pid: u32, start: Option<u64>) -> Option<Policy> {
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
        known.then(|| self.policy(instance.entry))
    }

    /// A member ended: a stopping instance whose last member it was goes on.
    fn member_ended(&mut self, id: InstanceId, now: Instant, actions: &mut Vec<Action>) {
        let instance = &self.instances[&id];
        if instance.members.is_empty() && matches!(instance.state, State::Stopping { .. }) {
            actions.extend(self.proceed(id, now));
        }
    }

    /// The leader `pid` ended cleanly: a member it leaves running takes
    /// the watch over, else the instance is done.
    fn leader_ended_cleanly(
        &mut self,
        id: InstanceId,
        pid: u32,
        status: ExitStatus,
        actions: &mut Vec<Action>,
    ) {
        let instance = self.instances.get_mut(&id).expect("indexed instance");
        let exe = instance.spec.exe.clone();
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
            self.forget_if_idle(id, actions);
        }
    }

    /// The leader crashed: its members and group get SIGTERM, and the
    /// restart follows once they are gone (or at once, without members).
    fn leader_crashed(
        &mut self,
        id: InstanceId,
        policy: &Policy,
        status: ExitStatus,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        actions.extend(self.crashed(id, policy, status, now));
        let instance = self.instances.get_mut(&id).expect("indexed instance");
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
            actions.extend(self.proceed(id, now));
        } else {
            instance.state = State::Stopping {
                deadline,
                killed: false,
            };
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
