//! What of an instance outlives armourd itself (see the `state` module):
//! its running process, restart count and crash history, handed out to be
//! written down and taken back once the process was found running again.

use std::time::Instant;

use super::{policy::Crashes, InstanceId, ProcId, State, Supervisor};

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
