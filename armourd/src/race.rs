//! The start-up race: a process that ended, or executed, before armourd
//! watched it. Whoever sees such a process (the eBPF backend as a watch
//! begins, the proc connector at an exec it could not look at in time, the
//! daemon as it adopts) gathers the facts — how far `/proc` shows it in
//! ending, which forks the kernel reported, what runs now — and the rules
//! here decide what follows. Pure: no I/O, no clock, unit-tested.

use std::time::{Duration, Instant};

use crate::{procfs::Ending, status::ExitStatus};

/// How long a process may take to end (a thread stuck in `do_exit`) before
/// it counts as ended anyway.
pub(crate) const ENDING_MAX: Duration = Duration::from_secs(1);

/// A process whose watch began as it was ending.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Late {
    pub(crate) pid: u32,
    pub(crate) start: Option<u64>,
    /// When it was found ending.
    pub(crate) since: Instant,
}

/// A process found ending that has ended: its end is to be reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ended {
    pub(crate) pid: u32,
    pub(crate) start: Option<u64>,
    pub(crate) status: ExitStatus,
}

/// What became of the processes found ending, given how far each is in
/// ending now (`endings`, read before the kernel's records were, in the
/// same order as `late`) and whether the kernel `recorded` its end after
/// all: those recorded are dropped (the kernel's record says it), those
/// running again are dropped (a thread was in an exec: the kernel will
/// report its end), those ended are returned (one stuck in `do_exit` for
/// [`ENDING_MAX`] too, with an unknown status), and those still ending are
/// kept to be looked at again.
pub(crate) fn settle(
    late: Vec<Late>,
    endings: Vec<Ending>,
    recorded: impl Fn(u32) -> bool,
    now: Instant,
) -> (Vec<Late>, Vec<Ended>) {
    let (mut kept, mut ended) = (Vec::new(), Vec::new());
    for (late, ending) in late.into_iter().zip(endings) {
        let status = match ending {
            _ if recorded(late.pid) => continue,
            Ending::Running => continue,
            Ending::Ended(status) => {
                status.map_or(ExitStatus::Unknown, ExitStatus::from_wait_status)
            }
            Ending::Gone => ExitStatus::Unknown,
            Ending::Exiting if now.duration_since(late.since) < ENDING_MAX => {
                kept.push(late);
                continue;
            }
            Ending::Exiting => ExitStatus::Unknown,
        };
        ended.push(Ended {
            pid: late.pid,
            start: late.start,
            status,
        });
    }
    (kept, ended)
}

/// A step the kernel reported after an exec, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// `pid` executed something (its forks from then on run another image).
    Exec { pid: u32 },
    /// `parent` forked the process `child`.
    Fork { parent: u32, child: u32 },
}

/// What `/proc` shows of a forked process, as [`heir`] asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Probe<T> {
    /// Runs a watched executable, not watched yet, and what a restart
    /// needs of it could be read.
    Heir(T),
    /// Gone, or ending (what a restart needs could not be read): perhaps a
    /// child of its own runs on.
    Gone,
    /// Runs another executable, or is watched already.
    Other,
}

/// The process that stands for `pid`, which executed a watched executable
/// and was gone before it could be looked at: the first process it forked
/// (or that those forked, as a daemonizing double fork does) that still
/// runs that image, as `probe` finds it, from the `steps` reported after
/// that exec. A process that executed since runs another image.
pub(crate) fn heir<T>(
    pid: u32,
    steps: impl IntoIterator<Item = Step>,
    mut probe: impl FnMut(u32) -> Probe<T>,
) -> Option<(u32, T)> {
    // Processes whose forks run the image `pid` executed.
    let mut forkers = vec![pid];
    for step in steps {
        match step {
            Step::Exec { pid } => forkers.retain(|&forker| forker != pid),
            Step::Fork { parent, child } if forkers.contains(&parent) => match probe(child) {
                Probe::Heir(found) => return Some((child, found)),
                Probe::Gone => forkers.push(child),
                Probe::Other => {}
            },
            Step::Fork { .. } => {}
        }
    }
    None
}

/// A process adopted in one pass over `/proc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Adopted {
    pub(crate) pid: u32,
    pub(crate) pgrp: u32,
    /// The configuration entry whose executable it runs.
    pub(crate) entry: usize,
}

/// The adopted process whose instance a process found in the same pass
/// (parent `ppid`, process group `pgrp`, running an executable of `entry`)
/// belongs to: one it forked without executing anything else, in the same
/// group. `None`: it is an instance of its own.
pub(crate) fn forked_by(adopted: &[Adopted], ppid: u32, pgrp: u32, entry: usize) -> Option<u32> {
    (adopted.iter())
        .find(|a| a.pid == ppid && a.entry == entry && a.pgrp == pgrp)
        .map(|a| a.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn late(pid: u32, since: Instant) -> Late {
        Late {
            pid,
            start: Some(5),
            since,
        }
    }

    #[test]
    fn processes_found_ending_are_reported_once_ended_unless_recorded() {
        let now = Instant::now();
        let killed = 9; // wait status of SIGKILL
        let lates = (1..=5).map(|pid| late(pid, now)).collect();
        let endings = vec![
            Ending::Ended(Some(killed)),
            Ending::Gone,
            Ending::Exiting,
            Ending::Ended(Some(killed)),
            Ending::Running,
        ];
        let (kept, ended) = settle(lates, endings, |pid| pid == 4, now);
        assert_eq!(kept.iter().map(|l| l.pid).collect::<Vec<_>>(), [3]);
        let sigkill = ExitStatus::from_wait_status(killed);
        let ended_with = |pid, status| Ended {
            pid,
            start: Some(5),
            status,
        };
        assert_eq!(
            ended,
            [ended_with(1, sigkill), ended_with(2, ExitStatus::Unknown)]
        );
    }

    #[test]
    fn a_process_stuck_ending_counts_as_ended_after_a_while() {
        let then = Instant::now();
        let (kept, ended) = settle(
            vec![late(7, then)],
            vec![Ending::Exiting],
            |_| false,
            then + ENDING_MAX,
        );
        assert!(kept.is_empty());
        assert_eq!(
            ended,
            [Ended {
                pid: 7,
                start: Some(5),
                status: ExitStatus::Unknown
            }]
        );
    }

    #[test]
    fn the_heir_is_the_first_fork_still_running_the_image() {
        let steps = [
            Step::Fork {
                parent: 9,
                child: 11,
            }, // someone else's
            Step::Fork {
                parent: 10,
                child: 12,
            }, // runs something else
            Step::Fork {
                parent: 10,
                child: 13,
            },
        ];
        let probe = |pid| match pid {
            12 => Probe::Other,
            13 => Probe::Heir("argv of 13"),
            _ => panic!("probed {pid}, not a fork of 10"),
        };
        assert_eq!(heir(10, steps, probe), Some((13, "argv of 13")));
    }

    #[test]
    fn a_double_fork_is_followed_through_the_gone_middle_process() {
        let steps = [
            Step::Fork {
                parent: 10,
                child: 20,
            },
            Step::Fork {
                parent: 20,
                child: 30,
            },
        ];
        let probe = |pid| match pid {
            20 => Probe::Gone,
            30 => Probe::Heir(()),
            _ => Probe::Other,
        };
        assert_eq!(heir(10, steps, probe), Some((30, ())));
    }

    #[test]
    fn forks_after_an_exec_run_another_image_and_are_no_heirs() {
        let steps = [
            Step::Exec { pid: 10 },
            Step::Fork {
                parent: 10,
                child: 20,
            },
        ];
        assert_eq!(heir(10, steps, |_| Probe::Heir(())), None);
        assert_eq!(heir::<()>(10, [], |_| Probe::Heir(())), None);
    }

    #[test]
    fn an_adopted_process_holds_what_it_forked_in_its_group_for_its_entry() {
        let adopted = [Adopted {
            pid: 100,
            pgrp: 100,
            entry: 0,
        }];
        assert_eq!(forked_by(&adopted, 100, 100, 0), Some(100));
        // Another group (it detached), another entry, another parent.
        assert_eq!(forked_by(&adopted, 100, 101, 0), None);
        assert_eq!(forked_by(&adopted, 100, 100, 1), None);
        assert_eq!(forked_by(&adopted, 99, 100, 0), None);
    }
}
