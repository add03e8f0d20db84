//! What of an instance outlives armourd itself (see the `state` module):
//! its running process, restart count and crash history, handed out to be
//! written down and taken back once the process was found running again.

use std::time::Instant;

use super::{policy::Crashes, InstanceId, ProcId, State, Supervisor};
#[cfg(test)]
use super::{Action, Notice};

/// An instance as it is kept across armourd's restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub id: InstanceId,
    /// Its running process.
    pub leader: ProcId,
    pub entry: Option<usize>,
    pub restarts: u32,
    pub streak: u32,
    /// The crashes the give-up window still counts, oldest first.
    pub crashes: Vec<Instant>,
}

impl Supervisor {
    /// The instances whose process runs: only those can be found again
    /// after armourd's restart. A restart whose exec was not reported yet
    /// (or never is: a backend that reports execs of watched files only)
    /// has no start time here.
    pub fn kept(&self) -> Vec<Kept> {
        self.instances
            .iter()
            .filter(|(_, i)| i.state == State::Running)
            .filter_map(|(&id, i)| {
                let leader = i.leader?;
                Some(Kept {
                    id,
                    leader,
                    entry: i.entry,
                    restarts: i.restarts,
                    streak: i.crashes.streak(),
                    crashes: i.crashes.recent().collect(),
                })
            })
            .collect()
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
            (kept[0].leader.pid, kept[0].restarts, kept[0].streak),
            (11, 1, 1)
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
    fn an_instance_without_a_process_is_not_kept() {
        let t = Instant::now();
        let mut supervisor = Supervisor::new(vec![Policy::default()]);
        adopted(&mut supervisor, 10, 1, t);
        supervisor.exit(10, Some(1), ExitStatus::Exited(3), t);
        assert!(
            supervisor.kept().is_empty(),
            "restarting: no process to find again"
        );
    }
}
