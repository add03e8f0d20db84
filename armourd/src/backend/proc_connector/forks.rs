//! Which forks the proc connector's filter passes by the age of the
//! forking process ([`Forks`]). Pids are handed out in increasing order
//! until `kernel.pid_max`, then from the bottom again ([`pid_namespaces(7)`],
//! `alloc_pid` in [`kernel/pid.c`]).
//!
//! [`pid_namespaces(7)`]: https://man7.org/linux/man-pages/man7/pid_namespaces.7.html
//! [`kernel/pid.c`]: https://github.com/torvalds/linux/blob/master/kernel/pid.c

/// The filter passes forks by processes newer than a threshold just below
/// the newest pid seen (pids are handed out in increasing order), so that a
/// child's own forks reach armourd before the filter holds the child. Forks
/// by unwatched processes that pass anyway are counted: after
/// [`Forks::STALE`] of them the threshold is raised.
#[derive(Clone, Copy, Debug)]
pub(super) struct Forks {
    /// The newest process seen created (pid of the last new child).
    pub(super) newest: u32,
    /// `kernel.pid_max`: near it, pids start again from the bottom.
    pid_max: u32,
    /// Forks by unwatched processes passed since the filter was made.
    pub(super) stale: u32,
}

impl Forks {
    /// How far below the newest pid the threshold stays: forks on other
    /// CPUs may be reported slightly out of order.
    const SLACK: u32 = 256;
    /// Unwanted forks passed before the filter is made anew.
    pub(super) const STALE: u32 = 64;
    /// How close to `pid_max` pids may wrap round before every fork passes.
    const WRAP_MARGIN: u32 = 4096;

    pub(super) fn read() -> Self {
        let number = |path| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.trim().parse().ok())
        };
        Self {
            // Unknown: every fork passes.
            newest: number("/proc/sys/kernel/ns_last_pid").unwrap_or(0),
            pid_max: number("/proc/sys/kernel/pid_max").unwrap_or(u32::MAX),
            stale: 0,
        }
    }

    /// The lowest pid whose forks pass.
    pub(super) fn threshold(&self) -> u32 {
        if self.newest.saturating_add(Self::WRAP_MARGIN) >= self.pid_max {
            return 0; // new pids may be small at any moment
        }
        self.newest.saturating_sub(Self::SLACK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forks(newest: u32, pid_max: u32) -> Forks {
        Forks {
            newest,
            pid_max,
            stale: 0,
        }
    }

    #[test]
    fn the_threshold_stays_a_little_below_the_newest_pid() {
        assert_eq!(forks(10_000, 4_194_304).threshold(), 10_000 - Forks::SLACK);
        assert_eq!(forks(100, 4_194_304).threshold(), 0);
    }

    #[test]
    fn near_the_wrap_every_fork_passes() {
        assert_eq!(forks(32_000, 32_768).threshold(), 0);
        assert_eq!(forks(20_000, 32_768).threshold(), 20_000 - Forks::SLACK);
    }
}
