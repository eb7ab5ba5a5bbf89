//! The scheduling queue (upstream's `PriorityQueue`), pure: every call takes the current time.
//!
//! - *active*: pods to try now, highest priority first, then oldest first;
//! - *backoff*: pods waiting out their backoff (1 s doubling per failed attempt, at most 10 s);
//! - *parked* (upstream's unschedulable pods): pods no node could take. They wait for a cluster
//!   event that may help — a node added or changed, a placed pod gone — or at most 60 s, then go
//!   back to active (or to backoff if their backoff has not run out);
//! - *in flight*: being scheduled or bound; cluster events meanwhile are remembered, so a pod
//!   found unschedulable by a cycle that missed them is retried rather than parked.
//!
//! Heaps are cleaned lazily: an item counts only if its entry still has the same sequence
//! number and place.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::controllers::Key;

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest a pod stays parked without a cluster event.
pub const MAX_PARKED: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff,
    Parked,
    InFlight,
}

#[derive(Debug)]
struct Entry {
    uid: String,
    priority: i32,
    /// Creation time in nanoseconds: the FIFO order within a priority.
    created: i128,
    /// Bumped on every move; heap items carry the value they were pushed with.
    seq: u64,
    place: Place,
    /// Failed attempts so far (unschedulable or bind errors): the backoff grows with them.
    attempts: u32,
    last_failure: Option<Instant>,
    /// The queue's move counter when the pod was taken for a cycle.
    moves_at_pop: u64,
    /// The pod changed while in flight.
    changed_in_flight: bool,
}

/// Active order: higher priority, then older, then earlier queued.
type ActiveItem = (Reverse<i32>, i128, u64, Key);

/// Where each pending pod is.
#[derive(Debug, Default)]
pub struct Queue {
    entries: HashMap<Key, Entry>,
    active: BinaryHeap<Reverse<ActiveItem>>,
    backoff: BinaryHeap<Reverse<(Instant, u64, Key)>>,
    parked: HashSet<Key>,
    /// Parked pods in parking order, for the 60 s limit.
    parked_order: VecDeque<(Instant, u64, Key)>,
    next_seq: u64,
    /// How many cluster events have asked to move parked pods.
    moves: u64,
}

/// The wait before a pod's next attempt after `attempts` failures.
pub fn backoff(attempts: u32) -> Duration {
    if attempts == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(attempts - 1).unwrap_or(u32::MAX);
    INITIAL_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

impl Queue {
    fn bump(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// A pod that needs a node was added or changed. New pods go to active; a parked pod whose
    /// spec or labels changed (`changed`) is moved as after a cluster event.
    pub fn add_or_update(
        &mut self,
        key: &str,
        uid: &str,
        priority: i32,
        created: i128,
        changed: bool,
        now: Instant,
    ) {
        match self.entries.get_mut(key) {
            Some(entry) if entry.uid == uid => {
                let reprioritized = entry.priority != priority;
                entry.priority = priority;
                match entry.place {
                    Place::Parked if changed => {
                        self.parked.remove(key);
                        self.move_one(key, now);
                    }
                    Place::InFlight if changed => entry.changed_in_flight = true,
                    Place::Active if reprioritized => self.activate(key),
                    _ => {}
                }
            }
            _ => {
                self.remove(key);
                self.entries.insert(
                    key.to_string(),
                    Entry {
                        uid: uid.to_string(),
                        priority,
                        created,
                        seq: 0,
                        place: Place::Active,
                        attempts: 0,
                        last_failure: None,
                        moves_at_pop: 0,
                        changed_in_flight: false,
                    },
                );
                self.activate(key);
            }
        }
    }

    /// Forgets a pod (bound, deleted, or no longer ours).
    pub fn remove(&mut self, key: &str) {
        if self.entries.remove(key).is_some() {
            self.parked.remove(key);
        }
    }

    /// Whether the queue holds the pod, anywhere.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    fn activate(&mut self, key: &str) {
        let seq = self.bump();
        if let Some(entry) = self.entries.get_mut(key) {
            entry.seq = seq;
            entry.place = Place::Active;
            self.active.push(Reverse((
                Reverse(entry.priority),
                entry.created,
                seq,
                key.to_string(),
            )));
        }
    }

    fn send_to_backoff(&mut self, key: &str, until: Instant) {
        let seq = self.bump();
        if let Some(entry) = self.entries.get_mut(key) {
            entry.seq = seq;
            entry.place = Place::Backoff;
            self.backoff.push(Reverse((until, seq, key.to_string())));
        }
    }

    /// Back to active, or to backoff until the pod's backoff has run out.
    fn move_one(&mut self, key: &str, now: Instant) {
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        match entry.last_failure.map(|at| at + backoff(entry.attempts)) {
            Some(until) if until > now => self.send_to_backoff(key, until),
            _ => self.activate(key),
        }
    }

    /// Takes the next pod to schedule, if one is ready; it is in flight until `done`,
    /// `unschedulable`, `failed` or `remove`.
    pub fn pop(&mut self, now: Instant) -> Option<(Key, String)> {
        self.promote(now);
        while let Some(Reverse((_, _, seq, key))) = self.active.pop() {
            let moves = self.moves;
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.seq != seq || entry.place != Place::Active {
                continue;
            }
            entry.place = Place::InFlight;
            entry.moves_at_pop = moves;
            entry.changed_in_flight = false;
            let uid = entry.uid.clone();
            return Some((key, uid));
        }
        None
    }

    /// Moves due backoffs to active and parked pods past the limit back.
    fn promote(&mut self, now: Instant) {
        while let Some(Reverse((until, _, _))) = self.backoff.peek() {
            if *until > now {
                break;
            }
            let Some(Reverse((_, seq, key))) = self.backoff.pop() else {
                break;
            };
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.seq == seq && e.place == Place::Backoff)
            {
                self.activate(&key);
            }
        }
        while let Some((since, _, _)) = self.parked_order.front() {
            if *since + MAX_PARKED > now {
                break;
            }
            let Some((_, seq, key)) = self.parked_order.pop_front() else {
                break;
            };
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.seq == seq && e.place == Place::Parked)
            {
                self.parked.remove(&key);
                self.move_one(&key, now);
            }
        }
    }

    /// When the next backoff or parking limit runs out, if any.
    pub fn next_due(&self) -> Option<Instant> {
        let backoff = self.backoff.peek().map(|Reverse((at, _, _))| *at);
        let parked = self
            .parked_order
            .front()
            .map(|(since, _, _)| *since + MAX_PARKED);
        match (backoff, parked) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn in_flight(&mut self, key: &str, uid: &str) -> Option<&mut Entry> {
        self.entries
            .get_mut(key)
            .filter(|e| e.uid == uid && e.place == Place::InFlight)
    }

    /// The pod is bound: forget it.
    pub fn done(&mut self, key: &str, uid: &str) {
        if self.in_flight(key, uid).is_some() {
            self.entries.remove(key);
        }
    }

    /// No node could take the pod: park it, unless a cluster event (or a change to the pod)
    /// came while it was being scheduled — then it is retried after its backoff.
    pub fn unschedulable(&mut self, key: &str, uid: &str, now: Instant) {
        let moves = self.moves;
        let Some(entry) = self.in_flight(key, uid) else {
            return;
        };
        entry.attempts = entry.attempts.saturating_add(1);
        entry.last_failure = Some(now);
        if entry.moves_at_pop != moves || entry.changed_in_flight {
            self.move_one(key, now);
        } else {
            self.park(key, now);
        }
    }

    /// Parks an in-flight pod without counting an attempt (a binding that conflicted: the
    /// informer will show the pod bound or gone, or the parking limit retries it).
    pub fn park_in_flight(&mut self, key: &str, uid: &str, now: Instant) {
        if self.in_flight(key, uid).is_some() {
            self.park(key, now);
        }
    }

    fn park(&mut self, key: &str, now: Instant) {
        let seq = self.bump();
        if let Some(entry) = self.entries.get_mut(key) {
            entry.seq = seq;
            entry.place = Place::Parked;
            self.parked.insert(key.to_string());
            self.parked_order.push_back((now, seq, key.to_string()));
        }
    }

    /// Scheduling or binding failed with an error: retry after the pod's backoff.
    pub fn failed(&mut self, key: &str, uid: &str, now: Instant) {
        let Some(entry) = self.in_flight(key, uid) else {
            return;
        };
        entry.attempts = entry.attempts.saturating_add(1);
        entry.last_failure = Some(now);
        let until = now + backoff(entry.attempts);
        self.send_to_backoff(key, until);
    }

    /// A cluster event that may make parked pods schedulable: move them all back.
    pub fn move_all(&mut self, now: Instant) {
        self.moves += 1;
        let parked: Vec<Key> = self.parked.drain().collect();
        for key in parked {
            self.move_one(&key, now);
        }
    }

    /// (active, backoff, parked, in flight) counts, for tests and logs.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut counts = (0, 0, 0, 0);
        for entry in self.entries.values() {
            match entry.place {
                Place::Active => counts.0 += 1,
                Place::Backoff => counts.1 += 1,
                Place::Parked => counts.2 += 1,
                Place::InFlight => counts.3 += 1,
            }
        }
        counts
    }
}
