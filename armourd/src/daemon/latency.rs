//! Where a restart's time goes: the kernel stamps the crash and the
//! restart's exec; armourd notes when it had the crash and when it began to
//! spawn, on the same clock (`CLOCK_MONOTONIC`, which `bpf_ktime_get_ns` and
//! the proc connector's timestamps use too).

use std::{collections::HashMap, fmt::Write as _};

/// The crashes whose restarts have not executed yet.
#[derive(Debug, Default)]
pub struct Latencies {
    /// By the crashed pid until a restart replaces it, then by the restart's.
    crashes: HashMap<u32, CrashTimes>,
    /// When the spawn of each new pid began.
    spawns: HashMap<u32, u64>,
}

/// Nanoseconds on the monotonic clock.
#[derive(Clone, Copy, Debug)]
struct CrashTimes {
    ended: u64,
    seen: u64,
    spawning: Option<u64>,
}

impl Latencies {
    /// `pid` ended at kernel time `ended`; armourd has it at `seen`.
    pub fn ended(&mut self, pid: u32, ended: u64, seen: u64) {
        let times = CrashTimes {
            ended,
            seen,
            spawning: None,
        };
        self.crashes.insert(pid, times);
    }

    /// The spawn of `pid` began at `began`.
    pub fn spawned(&mut self, pid: u32, began: u64) {
        self.spawns.insert(pid, began);
    }

    /// `new_pid` replaces the crashed `old_pid`.
    pub fn restarted(&mut self, old_pid: u32, new_pid: u32) {
        let spawning = self.spawns.remove(&new_pid);
        if let Some(crash) = self.crashes.remove(&old_pid) {
            let times = CrashTimes { spawning, ..crash };
            self.crashes.insert(new_pid, times);
        }
    }

    /// `pid` executed at kernel time `exec`: if it replaces a crashed
    /// process, where the time from the crash went, for the log.
    pub fn executed(&mut self, pid: u32, exec: u64) -> Option<String> {
        let crash = self.crashes.remove(&pid)?;
        let micros = |from: u64, to: u64| to.saturating_sub(from) / 1000;
        let mut text = format!(
            "{} µs (crash to exec, kernel clock; seen after {} µs",
            micros(crash.ended, exec),
            micros(crash.ended, crash.seen)
        );
        if let Some(spawning) = crash.spawning {
            let (handled, spawned) = (micros(crash.seen, spawning), micros(spawning, exec));
            let _ = write!(
                text,
                ", spawn began {handled} µs later, exec {spawned} µs after that"
            );
        }
        text.push(')');
        Some(text)
    }

    /// Forgets a process that ended without a restart.
    pub fn forget(&mut self, pid: u32) {
        self.crashes.remove(&pid);
        self.spawns.remove(&pid);
    }
}

/// Now on the monotonic clock, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_is_broken_down_into_its_steps() {
        let mut latencies = Latencies::default();
        latencies.ended(100, 1_000_000, 1_070_000);
        latencies.spawned(200, 1_085_000);
        latencies.restarted(100, 200);
        assert_eq!(
            latencies.executed(200, 1_480_000).as_deref(),
            Some(
                "480 µs (crash to exec, kernel clock; seen after 70 µs, \
                 spawn began 15 µs later, exec 395 µs after that)"
            )
        );
        // Once only.
        assert_eq!(latencies.executed(200, 1_500_000), None);
    }

    #[test]
    fn execs_that_are_no_restart_are_not_timed() {
        let mut latencies = Latencies::default();
        latencies.ended(100, 1_000, 2_000);
        assert_eq!(latencies.executed(300, 5_000), None);
        latencies.forget(100);
        latencies.restarted(100, 200);
        assert_eq!(latencies.executed(200, 5_000), None);
    }
}
