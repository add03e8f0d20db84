//! Admission of method calls: how many calls a uid other than root, and
//! all such uids together, may have served, and whose uid a connection is.
//!
//! armourd serves its interface's calls one at a time (zbus does not
//! spawn a task per call), so a caller who sends calls without waiting for
//! their replies makes armourd hold nothing more: the calls wait in the
//! bus, which bounds them. What is left to bound is the work: each uid
//! other than root has a share of [`USER_RATE`] calls a second (with a
//! burst of [`USER_BURST`]), all of them together [`ALL_USERS_RATE`]
//! (burst [`ALL_USERS_BURST`]); a call beyond its share is answered
//! `LimitsExceeded` at once, before any work is done for it, so that calls
//! queued behind it (root's) come soon. Root is never limited.
//!
//! The caller's uid is asked of the bus once per connection and kept, by
//! unique name, for the [`KNOWN_CALLERS`] connections seen last: the bus
//! never gives a unique name to a second connection, so what is kept stays
//! right for as long as it is kept.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Instant,
};

/// Calls a second one unprivileged uid may have served, on average.
pub const USER_RATE: f64 = 64.0;
/// Calls one unprivileged uid may have served at once after a quiet while.
pub const USER_BURST: f64 = 128.0;
/// Calls a second all unprivileged uids together may have served.
pub const ALL_USERS_RATE: f64 = 256.0;
/// Calls all unprivileged uids together may have served at once.
pub const ALL_USERS_BURST: f64 = 512.0;
/// Connections whose uid is remembered.
pub const KNOWN_CALLERS: usize = 256;
/// Uids whose share is tracked; full buckets are forgotten beyond this.
const TRACKED_USERS: usize = 1024;

/// Why a call was refused before anything was done for it.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    #[error(
        "uid {uid} made more than {USER_RATE} calls a second (burst {USER_BURST}); \
         wait for replies before sending more calls"
    )]
    User { uid: u32 },
    #[error(
        "unprivileged callers made more than {ALL_USERS_RATE} calls a second together; \
         try again shortly"
    )]
    AllUsers,
}

/// A token bucket: `tokens` calls may be served now; it fills at `rate`
/// a second up to `burst`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
    }
}

#[derive(Debug)]
struct Books {
    /// Unique name → uid, for the connections seen last.
    uids: HashMap<String, u32>,
    /// The names in `uids`, oldest first.
    order: VecDeque<String>,
    users: HashMap<u32, Bucket>,
    all_users: Bucket,
}

/// The caller uids and the unprivileged uids' shares.
#[derive(Debug)]
pub struct Gate(Mutex<Books>);

impl Default for Gate {
    fn default() -> Self {
        Self(Mutex::new(Books {
            uids: HashMap::new(),
            order: VecDeque::new(),
            users: HashMap::new(),
            all_users: Bucket::full(ALL_USERS_BURST, Instant::now()),
        }))
    }
}

impl Gate {
    fn books(&self) -> MutexGuard<'_, Books> {
        // The books stay consistent whatever panicked: every change is one step.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The uid of the connection `sender` (a unique name), if known.
    pub fn uid_of(&self, sender: &str) -> Option<u32> {
        self.books().uids.get(sender).copied()
    }

    /// Remembers what the bus said `sender`'s uid is.
    pub fn remember(&self, sender: &str, uid: u32) {
        let mut books = self.books();
        if books.uids.insert(sender.to_owned(), uid).is_some() {
            return;
        }
        books.order.push_back(sender.to_owned());
        while books.order.len() > KNOWN_CALLERS {
            if let Some(old) = books.order.pop_front() {
                books.uids.remove(&old);
            }
        }
    }

    /// Takes one call from `uid`'s share (and the unprivileged uids'
    /// share) at `now`, if there is one left; root always has.
    pub fn admit(&self, uid: u32, now: Instant) -> Result<(), Refused> {
        if uid == 0 {
            return Ok(());
        }
        let mut books = self.books();
        if books.users.len() >= TRACKED_USERS && !books.users.contains_key(&uid) {
            // A full bucket is the same as none.
            books.users.retain(|_, b| {
                b.refill(USER_RATE, USER_BURST, now);
                b.tokens < USER_BURST
            });
        }
        let Books {
            users, all_users, ..
        } = &mut *books;
        let user = users
            .entry(uid)
            .or_insert_with(|| Bucket::full(USER_BURST, now));
        user.refill(USER_RATE, USER_BURST, now);
        all_users.refill(ALL_USERS_RATE, ALL_USERS_BURST, now);
        if user.tokens < 1.0 {
            return Err(Refused::User { uid });
        }
        if all_users.tokens < 1.0 {
            return Err(Refused::AllUsers);
        }
        user.tokens -= 1.0;
        all_users.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_user_gets_its_burst_then_its_rate() {
        let gate = Gate::default();
        let now = Instant::now();
        for _ in 0..USER_BURST as usize {
            gate.admit(1000, now).expect("within the burst");
        }
        assert_eq!(gate.admit(1000, now), Err(Refused::User { uid: 1000 }));
        assert!(gate.admit(1001, now).is_ok(), "another uid has its own");
        let later = now + Duration::from_secs_f64(2.0 / USER_RATE);
        assert!(gate.admit(1000, later).is_ok());
        assert!(gate.admit(1000, later).is_ok());
        assert!(
            gate.admit(1000, later).is_err(),
            "two calls came back, no more"
        );
    }

    #[test]
    fn root_is_never_limited() {
        let gate = Gate::default();
        let now = Instant::now();
        for _ in 0..10 * ALL_USERS_BURST as usize {
            assert_eq!(gate.admit(0, now), Ok(()));
        }
        assert!(gate.admit(1000, now).is_ok(), "nor counted with users");
    }

    #[test]
    fn unprivileged_users_share_one_bound() {
        let gate = Gate::default();
        let now = Instant::now();
        let per_user = USER_BURST as u32;
        let users = (ALL_USERS_BURST as u32).div_ceil(per_user);
        for uid in 1000..1000 + users {
            for _ in 0..per_user {
                let _ = gate.admit(uid, now);
            }
        }
        assert_eq!(gate.admit(5000, now), Err(Refused::AllUsers));
        assert_eq!(gate.admit(0, now), Ok(()));
    }

    #[test]
    fn a_connections_uid_is_remembered() {
        let gate = Gate::default();
        assert_eq!(gate.uid_of(":1.5"), None, "asked of the bus the first time");
        gate.remember(":1.5", 65534);
        assert_eq!(gate.uid_of(":1.5"), Some(65534));
        assert_eq!(gate.uid_of(":1.6"), None);
    }

    #[test]
    fn remembered_uids_are_bounded_oldest_forgotten_first() {
        let gate = Gate::default();
        for n in 0..=KNOWN_CALLERS {
            gate.remember(&format!(":1.{n}"), 0);
        }
        assert_eq!(gate.uid_of(":1.0"), None);
        assert_eq!(gate.uid_of(":1.1"), Some(0));
        assert_eq!(gate.uid_of(&format!(":1.{KNOWN_CALLERS}")), Some(0));
        assert_eq!(gate.books().uids.len(), KNOWN_CALLERS);
    }

    #[test]
    fn tracked_users_are_bounded() {
        let gate = Gate::default();
        let now = Instant::now();
        for uid in 1..=TRACKED_USERS as u32 + 10 {
            let _ = gate.admit(uid, now);
        }
        let later = now + Duration::from_secs(60);
        gate.admit(99_999, later).unwrap();
        assert!(gate.books().users.len() <= TRACKED_USERS);
    }
}
