//! Which forks the proc connector's filter passes by the age of the
//! forking process ([`Forks`]). Pids are handed out in increasing order
//! until `kernel.pid_max`, then from the bottom again ([`pid_namespaces(7)`],
//! `alloc_pid` in [`kernel/pid.c`]).
//!
//! [`pid_namespaces(7)`]: https://man7.org/linux/man-pages/man7/pid_namespaces.7.html
//! [`kernel/pid.c`]: https://github.com/torvalds/linux/blob/master/kernel/pid.c

use super::filter::{Ages, RESERVED_PIDS};

/// `PID_MAX_LIMIT` on 64-bit machines: `pid_max` when it cannot be read.
const PID_MAX_LIMIT: u32 = 4 << 20;

/// The filter passes forks by young processes: those whose pid lies in a
/// window just past a little below the newest pid seen ([`Ages`]), so that
/// a child's own forks reach armourd before the filter holds the child.
/// The window is bounded, and counted round `pid_max`, so that an old
/// process counts as young only while pids pass its own (wherever the wrap
/// is), not from the wrap on. Forks by unwatched processes that pass are
/// counted: after [`Forks::STALE`] of them the window is moved on, and at
/// once when a new pid reaches its second half.
#[derive(Clone, Copy, Debug)]
pub(super) struct Forks {
    /// The newest process seen created (pid of the last new child).
    pub(super) newest: u32,
    /// `kernel.pid_max`: past it, pids start again from the bottom.
    pid_max: u32,
    /// Forks by unwatched processes passed since the filter was made.
    pub(super) stale: u32,
    /// The window of the attached filter.
    attached: Ages,
}

impl Forks {
    /// How far below the newest pid the window starts: forks on other CPUs
    /// may be reported slightly out of order, and a child forked just
    /// before the filter was made may not be reported yet.
    const SLACK: u32 = 256;
    /// The window: pids handed out after the filter was made. Its second
    /// half leaves room for the pids handed out while armourd moves it on.
    const YOUNG: u32 = 2048;
    /// Unwanted forks passed before the filter is made anew.
    pub(super) const STALE: u32 = 64;

    pub(super) fn read() -> Self {
        let number = |path| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.trim().parse().ok())
        };
        let pid_max = number("/proc/sys/kernel/pid_max")
            .filter(|&max| max > RESERVED_PIDS)
            .unwrap_or(PID_MAX_LIMIT);
        let mut forks = Self {
            // Unknown: the window starts at the bottom.
            newest: number("/proc/sys/kernel/ns_last_pid").unwrap_or(0),
            pid_max,
            stale: 0,
            attached: Ages {
                from: 0,
                young: 0,
                ahead: 0,
                pid_max,
            },
        };
        forks.attached = forks.ages();
        forks
    }

    /// The window of a filter made now.
    pub(super) fn ages(&self) -> Ages {
        // A small pid_max (a test machine's) keeps a quarter of it.
        let young = Self::YOUNG.min((self.pid_max - RESERVED_PIDS) / 4);
        let from = if self.newest >= RESERVED_PIDS + Self::SLACK {
            self.newest - Self::SLACK
        } else {
            // Just past the wrap: count back from pid_max.
            (self.newest + self.pid_max).saturating_sub(RESERVED_PIDS + Self::SLACK)
        };
        Ages {
            from: from.min(self.pid_max - 1),
            young,
            ahead: young / 2,
            pid_max: self.pid_max,
        }
    }

    /// A filter made with [`Self::ages`] is attached.
    pub(super) fn attached(&mut self) {
        self.attached = self.ages();
        self.stale = 0;
    }

    /// A new process `pid` was reported; true when the filter's window
    /// must move on (the new pid is in its second half or past it).
    pub(super) fn created(&mut self, pid: u32) -> bool {
        // Newer unless far behind: forks on other CPUs come out of order.
        let ahead_of_newest = Ages {
            from: self.newest,
            ..self.attached
        };
        if ahead_of_newest.past(pid) < self.pid_max / 2 {
            self.newest = pid;
        }
        pid >= RESERVED_PIDS && self.attached.past(pid) >= self.attached.ahead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forks(newest: u32, pid_max: u32) -> Forks {
        let mut forks = Forks {
            newest,
            pid_max,
            stale: 0,
            attached: Ages {
                from: 0,
                young: 0,
                ahead: 0,
                pid_max,
            },
        };
        forks.attached();
        forks
    }

    #[test]
    fn the_window_starts_a_little_below_the_newest_pid() {
        let ages = forks(10_000, 4_194_304).ages();
        assert_eq!(ages.from, 10_000 - Forks::SLACK);
        assert_eq!((ages.young, ages.ahead), (Forks::YOUNG, Forks::YOUNG / 2));
    }

    #[test]
    fn just_past_the_wrap_the_window_starts_before_it() {
        let ages = forks(400, 32_768).ages();
        assert_eq!(ages.from, 32_768 - 156);
        assert_eq!(ages.past(32_767), 155);
        assert_eq!(ages.past(300), 156);
        assert_eq!(ages.past(400), 256);
    }

    #[test]
    fn a_new_pid_in_the_second_half_moves_the_window_on() {
        let mut f = forks(10_000, 32_768);
        assert!(!f.created(10_100));
        assert_eq!(f.newest, 10_100);
        assert!(!f.created(10_050), "out of order");
        assert_eq!(f.newest, 10_100);
        assert!(f.created(10_000 - Forks::SLACK + Forks::YOUNG / 2));
    }

    #[test]
    fn the_window_follows_the_wrap() {
        let mut f = forks(32_700, 32_768);
        assert!(!f.created(310), "just past the wrap: in the first half");
        assert_eq!(f.newest, 310);
        assert!(f.created(1100), "past the wrap, in the second half");
        f.attached();
        let ages = f.ages();
        assert!(ages.past(1100) < ages.young, "{ages:?}");
        assert!(ages.past(20_000) >= ages.young, "an old process: {ages:?}");
        assert!(ages.past(1) >= ages.young, "a boot-time process: {ages:?}");
    }
}
