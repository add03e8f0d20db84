//! `critical` entries (SPEC §12): when an instance of one gives up, or
//! stays down for its `critical-grace`, armourd stops feeding the hardware
//! watchdog so that the machine resets. Pure: the instances and the time
//! come in, the verdict goes out.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

/// `critical-grace` when none is given.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// What the decision needs to know of one instance of a critical entry.
#[derive(Clone, Debug)]
pub struct View<I> {
    /// Identifies the instance across calls (the supervisor's instance id).
    pub id: I,
    pub exe: PathBuf,
    /// Its leader runs.
    pub running: bool,
    /// The restart policy gave up on it (state `failed`).
    pub gave_up: bool,
    /// The entry's `critical-grace`.
    pub grace: Duration,
}

/// Whether the watchdog is fed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Feed,
    /// Feeding stops for good: the machine is meant to reset.
    Starve {
        exe: PathBuf,
        reason: Reason,
    },
}

/// Why a critical instance stops the feeding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    GaveUp,
    Down { for_: Duration },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::GaveUp => f.write_str("its restarts were given up"),
            Self::Down { for_ } => write!(
                f,
                "it has not been running for {} s (critical-grace)",
                for_.as_secs()
            ),
        }
    }
}

/// When each critical instance went down, and whether feeding has stopped.
#[derive(Debug)]
pub struct Critical<I> {
    down_since: BTreeMap<I, (Instant, Duration)>,
    starved: Option<Verdict>,
}

impl<I> Default for Critical<I> {
    fn default() -> Self {
        Self {
            down_since: BTreeMap::new(),
            starved: None,
        }
    }
}

impl<I: Ord + Copy> Critical<I> {
    /// Decides at `now` from every instance of a critical entry. Once it
    /// says [`Verdict::Starve`] it keeps saying it: a machine that is being
    /// reset is not fed again.
    pub fn check(&mut self, views: impl IntoIterator<Item = View<I>>, now: Instant) -> Verdict {
        if let Some(verdict) = &self.starved {
            return verdict.clone();
        }
        let mut seen = Vec::new();
        let mut verdict = Verdict::Feed;
        for view in views {
            seen.push(view.id);
            if view.running && !view.gave_up {
                self.down_since.remove(&view.id);
                continue;
            }
            let (since, _) = *self.down_since.entry(view.id).or_insert((now, view.grace));
            let down = now.saturating_duration_since(since);
            let reason = if view.gave_up {
                Some(Reason::GaveUp)
            } else if down >= view.grace {
                Some(Reason::Down { for_: down })
            } else {
                None
            };
            if let (Some(reason), Verdict::Feed) = (reason, &verdict) {
                verdict = Verdict::Starve {
                    exe: view.exe,
                    reason,
                };
            }
        }
        // Instances no longer watched (unwatched, or let go at a reload).
        self.down_since.retain(|id, _| seen.contains(id));
        if verdict != Verdict::Feed {
            self.starved = Some(verdict.clone());
        }
        verdict
    }

    /// The earliest time a down instance's grace ends, so that the event
    /// loop looks again then.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.starved.is_some() {
            return None;
        }
        self.down_since
            .values()
            .map(|(since, grace)| *since + *grace)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: u64, running: bool) -> View<u64> {
        View {
            id,
            exe: PathBuf::from("/usr/sbin/food"),
            running,
            gave_up: false,
            grace: Duration::from_secs(60),
        }
    }

    #[test]
    fn running_critical_instances_keep_the_feeding() {
        let mut critical = Critical::<u64>::default();
        let now = Instant::now();
        assert_eq!(critical.check([view(1, true)], now), Verdict::Feed);
        assert_eq!(
            critical.check([view(1, true)], now + Duration::from_secs(3600)),
            Verdict::Feed
        );
    }

    #[test]
    fn an_instance_down_for_less_than_its_grace_is_still_fed() {
        let mut critical = Critical::<u64>::default();
        let now = Instant::now();
        assert_eq!(critical.check([view(1, false)], now), Verdict::Feed);
        let later = now + Duration::from_secs(59);
        assert_eq!(critical.check([view(1, false)], later), Verdict::Feed);
    }

    #[test]
    fn an_instance_down_for_its_grace_stops_the_feeding() {
        let mut critical = Critical::<u64>::default();
        let now = Instant::now();
        critical.check([view(1, false)], now);
        let verdict = critical.check([view(1, false)], now + Duration::from_secs(60));
        assert_eq!(
            verdict,
            Verdict::Starve {
                exe: PathBuf::from("/usr/sbin/food"),
                reason: Reason::Down {
                    for_: Duration::from_secs(60)
                }
            }
        );
    }

    #[test]
    fn coming_back_within_the_grace_restarts_the_count() {
        let mut critical = Critical::<u64>::default();
        let now = Instant::now();
        critical.check([view(1, false)], now);
        critical.check([view(1, true)], now + Duration::from_secs(50));
        let again = now + Duration::from_secs(55);
        assert_eq!(critical.check([view(1, false)], again), Verdict::Feed);
        let later = again + Duration::from_secs(59);
        assert_eq!(critical.check([view(1, false)], later), Verdict::Feed);
    }

    #[test]
    fn giving_up_stops_the_feeding_at_once() {
        let mut critical = Critical::<u64>::default();
        let failed = View {
            gave_up: true,
            ..view(1, false)
        };
        let verdict = critical.check([failed], Instant::now());
        assert!(matches!(
            verdict,
            Verdict::Starve {
                reason: Reason::GaveUp,
                ..
            }
        ));
    }

    #[test]
    fn a_stopped_feeding_never_starts_again() {
        let mut critical = Critical::<u64>::default();
        let now = Instant::now();
        critical.check([view(1, false)], now);
        critical.check([view(1, false)], now + Duration::from_secs(60));
        let verdict = critical.check([view(1, true)], now + Duration::from_secs(61));
        assert_ne!(verdict, Verdict::Feed);
    }

    #[test]
    fn a_grace_of_its_own_per_instance() {
        let mut critical = Critical::<u64>::default();
        let now = Instant::now();
        let short = View {
            grace: Duration::from_secs(5),
            ..view(2, false)
        };
        critical.check([view(1, false), short.clone()], now);
        let deadline = critical.next_deadline();
        assert_eq!(deadline, Some(now + Duration::from_secs(5)));
        let verdict = critical.check([view(1, false), short], now + Duration::from_secs(5));
        assert!(matches!(verdict, Verdict::Starve { .. }));
    }

    #[test]
    fn an_instance_no_longer_watched_is_forgotten() {
        let mut critical = Critical::<u64>::default();
        let now = Instant::now();
        critical.check([view(1, false)], now);
        critical.check([], now + Duration::from_secs(1));
        assert_eq!(critical.next_deadline(), None);
    }
}
