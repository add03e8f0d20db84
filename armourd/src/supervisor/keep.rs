//! What of an instance outlives armourd itself (see the `state` module):
//! its running process, restart count and crash history, handed out to be
//! written down and taken back once the process was found running again;
//! and an instance without a process (waiting for its backoff, or given
//! up), with what its restart needs, taken back as it was.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use super::{policy::Crashes, Instance, InstanceId, ProcId, State, Supervisor, Then};
#[cfg(test)]
use super::{Action, Notice};
use crate::{launch::LaunchSpec, status::ExitStatus};

/// An instance as it is kept across armourd's restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub id: InstanceId,
    /// Its running process, or what it waits for.
    pub now: KeptAs,
    pub entry: Option<usize>,
    pub restarts: u32,
    pub streak: u32,
    /// The crashes the give-up window still counts, oldest first.
    pub crashes: Vec<Instant>,
}

/// Where a kept instance is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeptAs {
    /// Its process runs.
    Running(ProcId),
    /// It has no process: its restart is due at `next` (`None`: it gave
    /// up), with `spec`.
    Waiting(Pending),
}

/// An instance without a process, as kept and as taken back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub spec: Arc<LaunchSpec>,
    /// When the restart is due; `None`: it gave up (`failed`).
    pub next: Option<Instant>,
    pub last_pid: u32,
    pub last_exit: Option<ExitStatus>,
    /// When it entered its state.
    pub since: Instant,
}

impl Supervisor {
    /// The instances whose process runs (only those can be found again
    /// after armourd's restart; a restart whose exec was not reported yet,
    /// or never is — a backend that reports execs of watched files only —
    /// has no start time here), and those waiting for their backoff or
    /// given up. An instance whose restart or `recover=` command is under
    /// way is not kept: the process it starts is adopted by the next
    /// armourd.
    pub fn kept(&self) -> Vec<Kept> {
        self.instances
            .iter()
            .filter_map(|(&id, i)| {
                let now = match (i.state, i.then) {
                    (State::Running, _) => KeptAs::Running(i.leader?),
                    (State::Backoff { deadline: at }, _)
                    | (State::Stopping { .. }, Then::Restart { at }) => waiting(i, Some(at)),
                    (State::Failed, _) | (State::Stopping { .. }, Then::Fail) => waiting(i, None),
                    (State::Restarting | State::Recovering { .. }, _) => return None,
                };
                Some(Kept {
                    id,
                    now,
                    entry: i.entry,
                    restarts: i.restarts,
                    streak: i.crashes.streak(),
                    crashes: i.crashes.recent().collect(),
                })
            })
            .collect()
    }

    /// Takes back an instance that had no process when armourd stopped:
    /// its restart is due at `waiting.next` (at once if that is past), or
    /// it stays failed until a reset. Its process, once restarted, is
    /// reported with [`Supervisor::spawned`] as any restart's.
    pub fn restore_waiting(
        &mut self,
        entry: Option<usize>,
        waiting: Pending,
        restarts: u32,
        streak: u32,
        crashes: Vec<Instant>,
    ) -> InstanceId {
        let id = InstanceId(self.next_id);
        self.next_id += 1;
        let (state, then) = match waiting.next {
            Some(at) => (State::Backoff { deadline: at }, Then::Restart { at }),
            None => (State::Failed, Then::Fail),
        };
        self.instances.insert(
            id,
            Instance {
                entry,
                spec: waiting.spec,
                leader: None,
                group: None,
                members: BTreeMap::new(),
                adopted: false,
                state,
                then,
                restarts,
                crashes: Crashes::restored(streak, crashes),
                last_exit: waiting.last_exit,
                last_pid: waiting.last_pid,
                since: waiting.since,
                started: None,
            },
        );
        id
    }

    /// Gives the instance led by `leader` the counters it had before
    /// armourd restarted; false when no instance is led by that process.
    pub fn restore(
        &mut self,
        leader: ProcId,
        restarts: u32,
        streak: u32,
        crashes: Vec<Instant>,
    ) -> bool {
        let Some(id) = self.by_pid.get(&leader.pid) else {
            return false;
        };
        let instance = self.instances.get_mut(id).expect("indexed instance");
        if instance.leader != Some(leader) {
            return false;
        }
        instance.restarts = restarts;
        instance.crashes = Crashes::restored(streak, crashes);
        true
    }
}

/// What `instance`, which has no process, is kept as.
fn waiting(instance: &Instance, next: Option<Instant>) -> KeptAs {
    KeptAs::Waiting(Pending {
        spec: Arc::clone(&instance.spec),
        next,
        last_pid: instance.last_pid,
        last_exit: instance.last_exit,
        since: instance.since,
    })
}

#[cfg(test)]
mod tests {
    use std::{ffi::OsString, path::PathBuf, time::Duration};

    use super::*;
    use crate::{
        launch::LaunchSpec,
        status::ExitStatus,
        supervisor::{Exec, Policy},
    };

    fn adopted(supervisor: &mut Supervisor, pid: u32, start: u64, now: Instant) {
        let spec = LaunchSpec::minimal(
            PathBuf::from("/usr/sbin/food"),
            vec![OsString::from("food")],
        );
        supervisor.exec(
            Exec {
                proc: ProcId {
                    pid,
                    start: Some(start),
                },
                entry: Some(0),
                spec,
                leads_group: false,
                adopted: true,
            },
            now,
        );
    }

    #[test]
    fn counters_taken_back_go_on_where_they_were() {
        let t = Instant::now();
        let mut before = Supervisor::new(vec![Policy::default()]);
        adopted(&mut before, 10, 1, t);
        let segv = ExitStatus::Signaled {
            signal: libc::SIGSEGV,
            core_dumped: false,
        };
        before.exit(10, Some(1), segv, t);
        let id = before.instances().next().expect("instance").id;
        before.spawned(id, Ok(11), t);
        let kept = before.kept();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (&kept[0].now, kept[0].restarts, kept[0].streak),
            (
                &KeptAs::Running(ProcId {
                    pid: 11,
                    start: None
                }),
                1,
                1
            )
        );

        let mut after = Supervisor::new(vec![Policy::default()]);
        let later = t + Duration::from_millis(5);
        adopted(&mut after, 11, 7, later);
        let leader = ProcId {
            pid: 11,
            start: Some(7),
        };
        assert!(
            !after.restore(
                ProcId {
                    pid: 11,
                    start: Some(8)
                },
                1,
                1,
                Vec::new()
            ),
            "another start time"
        );
        assert!(after.restore(
            leader,
            kept[0].restarts,
            kept[0].streak,
            kept[0].crashes.clone()
        ));
        // The streak goes on: the next crash backs off as the second in a row.
        let actions = after.exit(11, Some(7), segv, later);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Notify(Notice::BackingOff { streak: 2, .. }))),
            "{actions:?}"
        );
        assert_eq!(after.instances().next().expect("instance").restarts, 1);
    }

    #[test]
    fn an_instance_whose_restart_is_under_way_is_not_kept() {
        let t = Instant::now();
        let mut supervisor = Supervisor::new(vec![Policy::default()]);
        adopted(&mut supervisor, 10, 1, t);
        supervisor.exit(10, Some(1), ExitStatus::Exited(3), t);
        assert!(
            supervisor.kept().is_empty(),
            "restarting: the next armourd adopts what it starts"
        );
    }

    fn give_up_after_two() -> Policy {
        let mut policy = Policy::default();
        policy.restart.give_up = Some(crate::supervisor::GiveUp {
            crashes: 2,
            window: Duration::from_secs(60),
        });
        policy
    }

    #[test]
    fn a_waiting_instance_is_kept_with_its_restart() {
        let t = Instant::now();
        let mut supervisor = Supervisor::new(vec![Policy::default()]);
        adopted(&mut supervisor, 10, 1, t);
        let id = supervisor.instances().next().expect("instance").id;
        supervisor.exit(10, Some(1), ExitStatus::Exited(3), t);
        supervisor.spawned(id, Ok(11), t);
        // The second crash in a row waits for its backoff.
        supervisor.exit(11, None, ExitStatus::Exited(3), t);
        let kept = supervisor.kept();
        let [Kept {
            now: KeptAs::Waiting(waiting),
            restarts: 1,
            streak: 2,
            ..
        }] = kept.as_slice()
        else {
            panic!("{kept:?}");
        };
        assert_eq!(waiting.last_pid, 11);
        assert_eq!(waiting.last_exit, Some(ExitStatus::Exited(3)));
        assert!(waiting.next.is_some_and(|at| at > t), "{waiting:?}");
        assert_eq!(waiting.spec.exe, PathBuf::from("/usr/sbin/food"));
    }

    #[test]
    fn a_taken_back_backoff_restarts_when_due_and_a_failed_one_waits_for_a_reset() {
        let t = Instant::now();
        let mut supervisor = Supervisor::new(vec![give_up_after_two()]);
        let spec = Arc::new(LaunchSpec::minimal(
            PathBuf::from("/usr/sbin/food"),
            vec![OsString::from("food")],
        ));
        let waiting = |next| Pending {
            spec: Arc::clone(&spec),
            next,
            last_pid: 20,
            last_exit: Some(ExitStatus::Exited(3)),
            since: t,
        };
        let due = t + Duration::from_secs(2);
        let backoff = supervisor.restore_waiting(Some(0), waiting(Some(due)), 3, 1, Vec::new());
        let failed = supervisor.restore_waiting(Some(0), waiting(None), 5, 2, vec![t, t]);
        assert_eq!(supervisor.next_deadline(), Some(due));
        assert!(supervisor.tick(t + Duration::from_secs(1)).is_empty());
        let actions = supervisor.tick(due);
        assert!(
            matches!(actions.as_slice(), [Action::Spawn { instance, .. }] if *instance == backoff),
            "{actions:?}"
        );
        let view = supervisor
            .instances()
            .find(|v| v.id == failed)
            .expect("failed");
        assert_eq!(
            (view.state, view.pid, view.restarts),
            (State::Failed, 20, 5)
        );
        let (count, actions) = supervisor.reset(&crate::supervisor::Selector::Pid(20), due);
        assert_eq!(count, 2, "both instances last ran as pid 20");
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Spawn { instance, .. } if *instance == failed)),
            "{actions:?}"
        );
    }
}
