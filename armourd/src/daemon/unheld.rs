//! Watches the kernel could not hold (the map of their class was full):
//! how often they are logged, and when armourd looks for them again.
//!
//! A user can cause refusals at will (fork a watched program thousands of
//! times), so they are logged the 1st, 2nd, 4th, 8th… time only, with the
//! total. Room comes back when watched processes end, which no single event
//! announces; so what could not be watched is looked for again (adopted, as
//! after lost events) once a wait has passed, a wait that doubles while a
//! map stays full, so that a user who keeps it full cannot keep armourd
//! scanning `/proc`.

use std::time::{Duration, Instant};

use armourd_common::PidClass;

/// The wait before the first look for what could not be watched.
pub const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait, reached while a map stays full.
pub const LONGEST_WAIT: Duration = Duration::from_secs(64);

/// Refused watches and the next look for them.
#[derive(Debug)]
pub struct Unheld {
    refusals: u64,
    /// The classes refused since the current adoption began.
    full: [bool; 2],
    due: Option<Instant>,
    wait: Duration,
}

impl Default for Unheld {
    fn default() -> Self {
        Self {
            refusals: 0,
            full: [false; 2],
            due: None,
            wait: FIRST_WAIT,
        }
    }
}

impl Unheld {
    /// A watch (of `class`, when known) was refused at `now`; a look is due
    /// after the current wait. Returns the number of refusals so far when
    /// this one is to be logged.
    pub fn refused(&mut self, class: Option<PidClass>, now: Instant) -> Option<u64> {
        self.refusals += 1;
        if let Some(class) = class {
            self.full[class as usize] = true;
        }
        self.due.get_or_insert(now + self.wait);
        self.refusals.is_power_of_two().then_some(self.refusals)
    }

    /// The kernel reported processes it could not hold at `now`.
    pub fn kernel_refused(&mut self, now: Instant) {
        self.due.get_or_insert(now + self.wait);
    }

    /// When to look again, if anything waits.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Whether it is time to look again at `now`; if so, it no longer waits.
    pub fn take_due(&mut self, now: Instant) -> bool {
        let due = self.due.is_some_and(|due| due <= now);
        if due {
            self.due = None;
        }
        due
    }

    /// An adoption (a look for unwatched processes) begins.
    pub fn begin(&mut self) {
        self.full = [false; 2];
    }

    /// Whether a watch of `class` was refused since the adoption began:
    /// its map is full, trying more of that class is of no use.
    pub fn is_full(&self, class: PidClass) -> bool {
        self.full[class as usize]
    }

    /// The adoption ended at `now`. When a map was full, the next look
    /// waits twice as long as the last; else the wait is back to the first.
    pub fn end(&mut self, now: Instant) {
        if self.full.contains(&true) {
            self.wait = (self.wait * 2).min(LONGEST_WAIT);
            self.due = Some(now + self.wait);
        } else {
            self.wait = FIRST_WAIT;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_at_powers_of_two() {
        let mut unheld = Unheld::default();
        let now = Instant::now();
        let logged: Vec<u64> = (0..20)
            .filter_map(|_| unheld.refused(Some(PidClass::User), now))
            .collect();
        assert_eq!(logged, [1, 2, 4, 8, 16]);
    }

    #[test]
    fn a_refusal_makes_a_look_due_after_the_wait() {
        let mut unheld = Unheld::default();
        let now = Instant::now();
        assert_eq!(unheld.due(), None);
        unheld.refused(None, now);
        unheld.refused(None, now + Duration::from_millis(500));
        assert_eq!(
            unheld.due(),
            Some(now + FIRST_WAIT),
            "the first refusal sets it"
        );
        assert!(!unheld.take_due(now));
        assert!(unheld.take_due(now + FIRST_WAIT));
        assert_eq!(unheld.due(), None);
        unheld.kernel_refused(now);
        assert_eq!(unheld.due(), Some(now + FIRST_WAIT));
    }

    #[test]
    fn the_wait_doubles_while_a_map_stays_full_and_resets_once_not() {
        let mut unheld = Unheld::default();
        let now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..8 {
            unheld.begin();
            unheld.refused(Some(PidClass::User), now);
            assert!(unheld.is_full(PidClass::User) && !unheld.is_full(PidClass::Root));
            unheld.end(now);
            waits.push(unheld.due().unwrap() - now);
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 64, 64]);
        unheld.take_due(now + LONGEST_WAIT);
        unheld.begin();
        assert!(!unheld.is_full(PidClass::User));
        unheld.end(now);
        assert_eq!(unheld.due(), None, "nothing refused, nothing due");
        unheld.refused(None, now);
        assert_eq!(unheld.due(), Some(now + FIRST_WAIT));
    }
}
