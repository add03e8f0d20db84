//! Admission of method calls: what one connection, one uid and all
//! unprivileged callers together can make armourd hold at once.
//!
//! zbus hands each method call to a task of its own, so without a bound a
//! caller who sends calls and never waits for their replies makes armourd
//! hold one task, one request and one reply per call. Every call of
//! armourd's interface first takes a [`Pass`]: a connection may have
//! [`PER_CONNECTION`] calls in flight, a uid other than root [`PER_USER`],
//! and all such uids together [`ALL_USERS`]; a call beyond its share is
//! refused at once, before any work is done for it. A pass is given back
//! when it is dropped, which for a large reply is after the reply was
//! written to the bus. Root is bound only per connection.
//!
//! The caller's uid is asked of the bus once per connection and kept, by
//! unique name, for the [`KNOWN_CALLERS`] connections seen last: the bus
//! never gives a unique name to a second connection, so what is kept stays
//! right for as long as it is kept.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

/// Calls one connection may have in flight.
pub const PER_CONNECTION: usize = 4;
/// Calls one unprivileged uid may have in flight, over all its connections.
pub const PER_USER: usize = 4;
/// Calls all unprivileged uids together may have in flight.
pub const ALL_USERS: usize = 16;
/// Connections whose uid is remembered.
pub const KNOWN_CALLERS: usize = 256;

/// Why a call was refused before anything was done for it.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    #[error(
        "this connection already has {PER_CONNECTION} calls in flight; wait for their replies"
    )]
    Connection,
    #[error("uid {uid} already has {PER_USER} calls in flight; wait for their replies")]
    User { uid: u32 },
    #[error("unprivileged callers have {ALL_USERS} calls in flight together; try again shortly")]
    AllUsers,
}

#[derive(Debug, Default)]
struct Books {
    /// Unique name → uid, for the connections seen last.
    uids: HashMap<String, u32>,
    /// The names in `uids`, oldest first.
    order: VecDeque<String>,
    /// Calls in flight per unique name; a name leaves at zero.
    connections: HashMap<String, usize>,
    /// Calls in flight per unprivileged uid; a uid leaves at zero.
    users: HashMap<u32, usize>,
    all_users: usize,
}

impl Books {
    fn remember(&mut self, sender: &str, uid: u32) {
        if self.uids.insert(sender.to_owned(), uid).is_some() {
            return;
        }
        self.order.push_back(sender.to_owned());
        while self.order.len() > KNOWN_CALLERS {
            if let Some(old) = self.order.pop_front() {
                self.uids.remove(&old);
            }
        }
    }
}

/// Decrements `map[key]`, removing it at zero.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

/// The books of calls in flight, shared by every call of the interface.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<Mutex<Books>>);

impl Gate {
    fn books(&self) -> MutexGuard<'_, Books> {
        // The books stay consistent whatever panicked: every change is one step.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for a call from `sender` (a unique name), if its
    /// connection has one left.
    pub fn enter(&self, sender: &str) -> Result<Pass, Refused> {
        let mut books = self.books();
        let count = books.connections.entry(sender.to_owned()).or_default();
        if *count >= PER_CONNECTION {
            return Err(Refused::Connection);
        }
        *count += 1;
        let known = books.uids.get(sender).copied();
        Ok(Pass {
            gate: self.clone(),
            sender: sender.to_owned(),
            known,
            user: None,
        })
    }

    /// Calls in flight: of `sender`, of unprivileged `uid`, of all unprivileged uids.
    #[cfg(test)]
    fn in_flight(&self, sender: &str, uid: u32) -> (usize, usize, usize) {
        let books = self.books();
        let of = |n: Option<&usize>| n.copied().unwrap_or_default();
        (
            of(books.connections.get(sender)),
            of(books.users.get(&uid)),
            books.all_users,
        )
    }
}

/// A call's place; given back when dropped.
#[derive(Debug)]
pub struct Pass {
    gate: Gate,
    sender: String,
    /// The caller's uid, if it was known when the call came in.
    known: Option<u32>,
    /// The unprivileged uid this pass is counted for, once admitted.
    user: Option<u32>,
}

impl Pass {
    /// The caller's uid, if the bus was asked for it before.
    pub fn known_uid(&self) -> Option<u32> {
        self.known
    }

    /// Counts the call for `uid` (what the bus says the sender is), if that
    /// uid has a place left; root always has.
    pub fn admit(&mut self, uid: u32) -> Result<(), Refused> {
        let mut books = self.gate.books();
        books.remember(&self.sender, uid);
        self.known = Some(uid);
        if uid == 0 || self.user.is_some() {
            return Ok(());
        }
        if books.all_users >= ALL_USERS {
            return Err(Refused::AllUsers);
        }
        let count = books.users.entry(uid).or_default();
        if *count >= PER_USER {
            return Err(Refused::User { uid });
        }
        *count += 1;
        books.all_users += 1;
        self.user = Some(uid);
        Ok(())
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut books = self.gate.books();
        release(&mut books.connections, &self.sender);
        if let Some(uid) = self.user {
            release(&mut books.users, &uid);
            books.all_users -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_gets_its_share_and_no_more() {
        let gate = Gate::default();
        let passes: Vec<Pass> = (0..PER_CONNECTION)
            .map(|_| gate.enter(":1.7").expect("within the share"))
            .collect();
        assert_eq!(gate.enter(":1.7").unwrap_err(), Refused::Connection);
        assert!(gate.enter(":1.8").is_ok(), "another connection has its own");
        drop(passes);
        assert!(gate.enter(":1.7").is_ok(), "places come back");
        assert_eq!(gate.in_flight(":1.7", 0).0, 0, "and leave no entry behind");
    }

    #[test]
    fn a_user_gets_its_share_over_all_its_connections() {
        let gate = Gate::default();
        let mut passes = Vec::new();
        for n in 0..PER_USER {
            let mut pass = gate.enter(&format!(":1.{n}")).unwrap();
            pass.admit(1000).expect("within the user's share");
            passes.push(pass);
        }
        let mut over = gate.enter(":1.99").unwrap();
        assert_eq!(over.admit(1000), Err(Refused::User { uid: 1000 }));
        drop(over);
        assert_eq!(gate.in_flight(":1.99", 1000), (0, PER_USER, PER_USER));
        passes.pop();
        let mut again = gate.enter(":1.99").unwrap();
        assert!(again.admit(1000).is_ok());
    }

    #[test]
    fn unprivileged_users_share_one_bound_and_root_is_outside_it() {
        let gate = Gate::default();
        let mut passes = Vec::new();
        for n in 0..ALL_USERS {
            let mut pass = gate.enter(&format!(":1.{n}")).unwrap();
            pass.admit(1000 + n as u32).unwrap();
            passes.push(pass);
        }
        let mut user = gate.enter(":2.1").unwrap();
        assert_eq!(user.admit(5000), Err(Refused::AllUsers));
        let mut root = gate.enter(":2.2").unwrap();
        assert_eq!(root.admit(0), Ok(()), "root is not counted with users");
        passes.clear();
        drop(user);
        assert_eq!(gate.in_flight(":1.0", 1000), (0, 0, 0));
    }

    #[test]
    fn a_connections_uid_is_remembered() {
        let gate = Gate::default();
        let mut pass = gate.enter(":1.5").unwrap();
        assert_eq!(pass.known_uid(), None, "asked of the bus the first time");
        pass.admit(65534).unwrap();
        drop(pass);
        assert_eq!(gate.enter(":1.5").unwrap().known_uid(), Some(65534));
        assert_eq!(gate.enter(":1.6").unwrap().known_uid(), None);
    }

    #[test]
    fn remembered_uids_are_bounded_oldest_forgotten_first() {
        let gate = Gate::default();
        for n in 0..=KNOWN_CALLERS {
            gate.enter(&format!(":1.{n}")).unwrap().admit(0).unwrap();
        }
        assert_eq!(gate.enter(":1.0").unwrap().known_uid(), None);
        assert_eq!(gate.enter(":1.1").unwrap().known_uid(), Some(0));
        let known = gate.enter(&format!(":1.{KNOWN_CALLERS}")).unwrap();
        assert_eq!(known.known_uid(), Some(0));
        assert_eq!(gate.books().uids.len(), KNOWN_CALLERS);
    }
}
