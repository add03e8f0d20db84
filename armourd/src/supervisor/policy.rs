//! The restart policy of SPEC §8: how long a crashed instance waits before
//! it is started again, and when armourd gives up on it. Pure: the time of
//! each crash comes in as an argument.
//!
//! The first crash after a healthy run waits `restart-delay` (default: not
//! at all). Each further crash while the instance has not yet run for
//! `stable-after` waits `backoff`, doubling from its minimum to its maximum.
//! `give-up=N/WINDOW` fails the instance at its N-th crash within WINDOW.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// `backoff=MIN..MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

/// `give-up=N/WINDOW`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GiveUp {
    /// At least 1.
    pub crashes: u32,
    pub window: Duration,
}

/// What an entry says about restarting its crashed instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub restart_delay: Duration,
    /// `None` for `backoff=none`.
    pub backoff: Option<Backoff>,
    pub stable_after: Duration,
    pub give_up: Option<GiveUp>,
}

impl RestartPolicy {
    /// `backoff` when none is given: 100 ms, doubling up to 30 s.
    pub const DEFAULT_BACKOFF: Backoff = Backoff {
        min: Duration::from_millis(100),
        max: Duration::from_secs(30),
    };
    /// `stable-after` when none is given.
    pub const DEFAULT_STABLE_AFTER: Duration = Duration::from_secs(10);

    /// The wait before the restart that follows the `streak`-th crash in a
    /// row. Never shorter than `restart-delay`, so that a delay asked for
    /// is not cut short by a loop.
    pub fn delay(&self, streak: u32) -> Duration {
        let backoff = match self.backoff {
            Some(backoff) if streak >= 2 => {
                // 2^(streak-2), saturating long before it could overflow.
                let factor = 1u32 << (streak - 2).min(20);
                backoff.min.saturating_mul(factor).min(backoff.max)
            }
            _ => Duration::ZERO,
        };
        backoff.max(self.restart_delay)
    }
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            restart_delay: Duration::ZERO,
            backoff: Some(Self::DEFAULT_BACKOFF),
            stable_after: Self::DEFAULT_STABLE_AFTER,
            give_up: None,
        }
    }
}

/// What to do about a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Start the instance again after `delay`.
    Restart { delay: Duration },
    /// Stop restarting: `crashes` crashes fell within the give-up window.
    GiveUp { crashes: u32 },
}

/// An instance's recent crashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Crashes {
    /// Crashes in a row, none of them after a run of `stable-after`.
    streak: u32,
    /// The times of the latest crashes, at most as many as give-up counts.
    recent: VecDeque<Instant>,
}

impl Crashes {
    /// Crashes in a row since the instance last ran for `stable-after`.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// The instance crashed at `now` after running for `ran` (`None`: it
    /// never started, its spawn failed).
    pub fn crashed(
        &mut self,
        policy: &RestartPolicy,
        ran: Option<Duration>,
        now: Instant,
    ) -> Verdict {
        if ran.is_some_and(|ran| ran >= policy.stable_after) {
            self.streak = 0;
        }
        self.streak = self.streak.saturating_add(1);
        let Some(give_up) = policy.give_up else {
            self.recent.clear();
            return Verdict::Restart {
                delay: policy.delay(self.streak),
            };
        };
        self.recent.push_back(now);
        let keep = give_up.crashes.max(1) as usize;
        while self.recent.len() > keep
            || self
                .recent
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) > give_up.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= keep {
            Verdict::GiveUp {
                crashes: self.recent.len() as u32,
            }
        } else {
            Verdict::Restart {
                delay: policy.delay(self.streak),
            }
        }
    }

    /// The times of the crashes the give-up window still counts.
    pub fn recent(&self) -> impl Iterator<Item = Instant> + '_ {
        self.recent.iter().copied()
    }

    /// A history kept across armourd's restarts: `streak` crashes in a
    /// row, the latest at `recent` (oldest first).
    pub fn restored(streak: u32, recent: impl IntoIterator<Item = Instant>) -> Self {
        Self {
            streak,
            recent: recent.into_iter().collect(),
        }
    }

    /// Forgets every crash (`Reset`, or a failed instance let start again).
    pub fn reset(&mut self) {
        self.streak = 0;
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn crash_loop(policy: &RestartPolicy, crashes: usize) -> Vec<Verdict> {
        let mut history = Crashes::default();
        let mut now = Instant::now();
        (0..crashes)
            .map(|_| {
                let verdict = history.crashed(policy, Some(MS), now);
                if let Verdict::Restart { delay } = verdict {
                    now += delay + MS;
                }
                verdict
            })
            .collect()
    }

    fn delays(verdicts: &[Verdict]) -> Vec<Duration> {
        verdicts
            .iter()
            .map(|v| match v {
                Verdict::Restart { delay } => *delay,
                Verdict::GiveUp { .. } => panic!("gave up: {verdicts:?}"),
            })
            .collect()
    }

    #[test]
    fn first_crash_restarts_at_once_then_backoff_doubles() {
        let verdicts = crash_loop(&RestartPolicy::default(), 6);
        assert_eq!(
            delays(&verdicts),
            [0, 100, 200, 400, 800, 1600].map(|ms| ms * MS)
        );
    }

    #[test]
    fn backoff_stops_at_its_maximum() {
        let verdicts = crash_loop(&RestartPolicy::default(), 20);
        assert_eq!(delays(&verdicts)[19], Duration::from_secs(30));
    }

    #[test]
    fn a_run_past_stable_after_makes_the_next_crash_a_first_one() {
        let policy = RestartPolicy::default();
        let mut history = Crashes::default();
        let t = Instant::now();
        history.crashed(&policy, Some(MS), t);
        history.crashed(&policy, Some(MS), t + MS);
        assert_eq!(history.streak(), 2);
        let verdict = history.crashed(&policy, Some(policy.stable_after), t + 20 * MS);
        assert_eq!(
            verdict,
            Verdict::Restart {
                delay: Duration::ZERO
            }
        );
        assert_eq!(history.streak(), 1);
    }

    #[test]
    fn backoff_none_waits_only_the_restart_delay() {
        let policy = RestartPolicy {
            backoff: None,
            restart_delay: 2 * MS,
            ..RestartPolicy::default()
        };
        assert_eq!(delays(&crash_loop(&policy, 4)), [2 * MS; 4]);
    }

    #[test]
    fn restart_delay_is_a_floor_for_the_backoff() {
        let policy = RestartPolicy {
            restart_delay: Duration::from_secs(1),
            ..RestartPolicy::default()
        };
        assert_eq!(
            delays(&crash_loop(&policy, 3)),
            [1000, 1000, 1000].map(|ms| ms * MS)
        );
    }

    #[test]
    fn gives_up_at_the_nth_crash_within_the_window() {
        let policy = RestartPolicy {
            give_up: Some(GiveUp {
                crashes: 3,
                window: Duration::from_secs(60),
            }),
            ..RestartPolicy::default()
        };
        let verdicts = crash_loop(&policy, 3);
        assert!(matches!(verdicts[1], Verdict::Restart { .. }));
        assert_eq!(verdicts[2], Verdict::GiveUp { crashes: 3 });
    }

    #[test]
    fn crashes_older_than_the_window_do_not_count() {
        let policy = RestartPolicy {
            give_up: Some(GiveUp {
                crashes: 2,
                window: Duration::from_secs(1),
            }),
            ..RestartPolicy::default()
        };
        let mut history = Crashes::default();
        let t = Instant::now();
        history.crashed(&policy, Some(MS), t);
        let later = history.crashed(&policy, Some(MS), t + Duration::from_secs(2));
        assert!(matches!(later, Verdict::Restart { .. }));
        let soon = history.crashed(&policy, Some(MS), t + Duration::from_millis(2500));
        assert_eq!(soon, Verdict::GiveUp { crashes: 2 });
    }

    #[test]
    fn failed_spawns_never_reset_the_streak() {
        let policy = RestartPolicy::default();
        let mut history = Crashes::default();
        let t = Instant::now();
        history.crashed(&policy, Some(MS), t);
        let verdict = history.crashed(&policy, None, t + Duration::from_secs(60));
        assert_eq!(verdict, Verdict::Restart { delay: 100 * MS });
    }

    #[test]
    fn reset_forgets_the_streak_and_the_window() {
        let policy = RestartPolicy {
            give_up: Some(GiveUp {
                crashes: 2,
                window: Duration::from_secs(60),
            }),
            ..RestartPolicy::default()
        };
        let mut history = Crashes::default();
        let t = Instant::now();
        history.crashed(&policy, Some(MS), t);
        history.reset();
        let verdict = history.crashed(&policy, Some(MS), t + MS);
        assert_eq!(
            verdict,
            Verdict::Restart {
                delay: Duration::ZERO
            }
        );
    }
}
