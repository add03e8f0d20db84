//! The start-up race: a process that ended, or executed, before armourd
//! watched it. The backends report what the kernel said and what `/proc`
//! showed; the rules here decide what follows, and the daemon acts on them.
//! Pure: no I/O, no clock, unit-tested.
//!
//! - A watch that began as the process was ending ([`Endings`]): the eBPF
//!   backend says what `/proc` showed once its map held the process, and
//!   looks again at each read as the daemon asks, before the ring's records
//!   of that read (the kernel writes the record of an end before the
//!   process turns into a zombie); the proc connector reports a process it
//!   found without a live thread once its filter held it. [`Endings::settle`]
//!   decides which of them ended, and how.
//! - An unseen end ([`handed_off`]): a process whose status is unknown
//!   while a process it forked runs on handed its watch over, as a daemon
//!   that detaches does; the daemon reads from `/proc` which of its forks
//!   run, the supervisor moves the watch.
//! - Adoption ([`forked_by`]): which adopted process holds a process found
//!   in the same pass over `/proc`.
//! - The heir of a vanished exec ([`heir`]): the one rule a backend applies
//!   itself. The proc connector says only which process executed; when that
//!   process is gone before its executable could be read, what stands for
//!   it is a process it forked that runs the same image. The backend
//!   gathers the facts (the forks queued after the exec, what `/proc` shows
//!   of each child, read lazily and in order: its command line and
//!   environment must be read before it can change them or end) and calls
//!   [`heir`]; it must act on the answer before it reads the next datagram,
//!   which its socket filter judges: the filter holds the heir at once, as
//!   the kernel half of the eBPF backend does at an exec. The daemon acts
//!   on the rest, as on any exec: the exec event names the heir.

use std::time::{Duration, Instant};

use crate::{backend::Seen, procfs::Ending, status::ExitStatus};

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

/// The processes whose watch began as they were ending (the eBPF backend
/// reports what `/proc` showed once its map held them), looked at again
/// at each read of the backend until they have ended.
#[derive(Debug, Default)]
pub(crate) struct Endings {
    late: Vec<Late>,
}

impl Endings {
    /// The watch of a process began, and `/proc` showed it then as
    /// `seen`: one not running is looked at until it has ended (a thread
    /// not yet in `do_exit` passes the kernel's tracepoint with the map
    /// holding the process, which then records its end).
    pub(crate) fn watched(&mut self, seen: Seen, now: Instant) {
        if seen.ending != Ending::Running {
            self.unwatched(seen.pid);
            self.late.push(Late {
                pid: seen.pid,
                start: seen.start,
                since: now,
            });
        }
    }

    /// `pid` is no longer watched.
    pub(crate) fn unwatched(&mut self, pid: u32) {
        self.late.retain(|late| late.pid != pid);
    }

    /// The processes to look at (pid, start time) at the next read.
    pub(crate) fn looking(&self) -> Vec<(u32, Option<u64>)> {
        self.late
            .iter()
            .map(|late| (late.pid, late.start))
            .collect()
    }

    /// What became of the processes looked at, from what `/proc` showed
    /// of them (`seen`, read before the kernel's records of the same read
    /// were) and whether the kernel `recorded` their end after all (see
    /// [`settle`]). A process seen that was not looked at (the proc
    /// connector found it without a live thread once its filter held it)
    /// is settled at once.
    pub(crate) fn settle(
        &mut self,
        seen: Vec<Seen>,
        recorded: impl Fn(u32) -> bool,
        now: Instant,
    ) -> Vec<Ended> {
        let (mut late, mut endings, mut found) = (Vec::new(), Vec::new(), Vec::new());
        for seen in seen {
            match self.late.iter().position(|late| late.pid == seen.pid) {
                Some(at) => {
                    late.push(self.late.swap_remove(at));
                    endings.push(seen.ending);
                }
                None => found.push(seen),
            }
        }
        let (kept, mut ended) = settle(late, endings, &recorded, now);
        self.late.extend(kept);
        for seen in found {
            // Its threads were all seen ended: `Exiting` is a moment's race.
            let status = match seen.ending {
                _ if recorded(seen.pid) => continue,
                Ending::Running => continue,
                Ending::Ended(status) => {
                    status.map_or(ExitStatus::Unknown, ExitStatus::from_wait_status)
                }
                Ending::Exiting | Ending::Gone => ExitStatus::Unknown,
            };
            ended.push(Ended {
                pid: seen.pid,
                start: seen.start,
                status,
            });
        }
        ended
    }
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

/// A process that a watched process forked (or that those forked), without
/// executing anything since, and whether `/proc` shows it running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Forked {
    pub(crate) pid: u32,
    pub(crate) runs: bool,
}

/// The process that the watched process which ended with `status` handed
/// its watch over to, from what it `forked` (nearest first): the first of
/// those that runs, if its status is unknown. Its end went unseen (the
/// proc connector's filter did not hold it yet and the reaper was quicker,
/// events were lost), and a fork of the same program that runs on is what
/// a daemonizing fork leaves: the intermediate process of a double fork
/// ends at once, often before the filter holds it. A known status says
/// for itself whether the end was clean.
pub(crate) fn handed_off(
    status: ExitStatus,
    forked: impl IntoIterator<Item = Forked>,
) -> Option<u32> {
    if status != ExitStatus::Unknown {
        return None;
    }
    forked
        .into_iter()
        .find(|fork| fork.runs)
        .map(|fork| fork.pid)
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

    fn seen(pid: u32, ending: Ending) -> Seen {
        Seen {
            pid,
            start: Some(5),
            ending,
        }
    }

    #[test]
    fn a_watch_that_began_as_the_process_ended_is_looked_at_until_settled() {
        let now = Instant::now();
        let mut endings = Endings::default();
        endings.watched(seen(1, Ending::Running), now);
        endings.watched(seen(2, Ending::Exiting), now);
        endings.watched(seen(3, Ending::Ended(Some(0))), now);
        assert_eq!(endings.looking(), [(2, Some(5)), (3, Some(5))]);
        let ended = endings.settle(
            vec![seen(2, Ending::Exiting), seen(3, Ending::Ended(Some(0)))],
            |_| false,
            now,
        );
        let exited = |pid| Ended {
            pid,
            start: Some(5),
            status: ExitStatus::Exited(0),
        };
        assert_eq!(ended, [exited(3)]);
        assert_eq!(endings.looking(), [(2, Some(5))], "still ending");
        endings.unwatched(2);
        assert!(endings.looking().is_empty());
    }

    #[test]
    fn a_process_found_ended_without_being_looked_at_is_settled_at_once() {
        let now = Instant::now();
        let mut endings = Endings::default();
        let found = vec![seen(7, Ending::Gone), seen(8, Ending::Ended(Some(0)))];
        let ended = endings.settle(found.clone(), |_| false, now);
        let statuses: Vec<_> = ended.iter().map(|e| (e.pid, e.status)).collect();
        assert_eq!(
            statuses,
            [(7, ExitStatus::Unknown), (8, ExitStatus::Exited(0))]
        );
        assert!(endings.looking().is_empty());
        // The kernel's record of it came after all: it says the end.
        assert!(endings
            .settle(found, |pid| pid == 7 || pid == 8, now)
            .is_empty());
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
    fn an_unseen_end_with_a_running_fork_is_a_hand_off() {
        let forked = [
            Forked {
                pid: 20,
                runs: false,
            },
            Forked {
                pid: 30,
                runs: true,
            },
        ];
        assert_eq!(handed_off(ExitStatus::Unknown, forked), Some(30));
        // Nothing it forked runs on: its end counts as its status says.
        assert_eq!(handed_off(ExitStatus::Unknown, [forked[0]]), None);
        assert_eq!(handed_off(ExitStatus::Unknown, []), None);
    }

    #[test]
    fn a_known_status_is_never_taken_for_a_hand_off() {
        let forked = |_| -> Vec<Forked> { panic!("/proc looked at for a known status") };
        assert_eq!(
            handed_off(ExitStatus::Exited(3), (0..1).flat_map(forked)),
            None
        );
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
