//! A partition group's last-contact clock and the shared stamps it may read (see the scheduler's
//! module docs, "Quiescence" and "Parking").
//!
//! Invariants:
//! - Contact only moves forward: [`Stamp::set`] and the clock's own stamp never go back.
//! - A clock is *parked* (its follower is off the scheduler's heap, waiting on its leader
//!   node's [`Stamp`]) only while it is quiet through that stamp; every change that ends or
//!   redirects the quiet mark ([`GroupClock::wake`], [`GroupClock::unquiet_from`], a
//!   [`GroupClock::touch_quiet`] through another stamp) and [`GroupClock::unpark`] fire the
//!   [`Poke`] stored at parking, after the clock's lock is released. Parking and those changes
//!   take the same lock, so no change can slip between the scheduler's check and its parking.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::Shared;
use crate::partition::unclean::CatchUp;
use crate::types::NodeId;

/// A time shared by many groups: when a peer's last liveness beat arrived (on a follower), or
/// when the last beat a peer acknowledged was sent (on a leader). One stamp per peer stands in
/// for a stamp per group and beat (see `crate::transport::liveness`, delta beats).
#[derive(Debug)]
pub(crate) struct Stamp(Mutex<Instant>);

impl Stamp {
    /// A stamp at `at`.
    pub(crate) fn new(at: Instant) -> Self {
        Self(Mutex::new(at))
    }

    /// Moves the stamp to `at` (never back).
    pub(crate) fn set(&self, at: Instant) {
        let mut t = self.0.lock();
        if at > *t {
            *t = at;
        }
    }

    /// The stamped time.
    pub(crate) fn get(&self) -> Instant {
        *self.0.lock()
    }
}

/// Tells the scheduler that group `key` must be looked at now (it is parked and something
/// changed, or its quiesced leadership's metrics moved). Holds the scheduler weakly: a poke
/// after the scheduler stopped is a no-op, a poke for a group no longer registered is dropped.
pub(crate) struct Poke {
    pub(super) shared: Weak<Shared>,
    pub(super) key: u64,
}

impl std::fmt::Debug for Poke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poke").field("key", &self.key).finish()
    }
}

impl Poke {
    /// Queues the group for the scheduler's next round and wakes the scheduler task.
    pub(crate) fn fire(&self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.pokes.lock().push(self.key);
            shared.wake.notify_one();
        }
    }
}

/// The quiet mark of a follower: the leader node's stamp it reads, and the scheduler's poke
/// while it is parked on that stamp.
#[derive(Debug, Default)]
struct Quiet {
    via: Option<Arc<Stamp>>,
    parked: Option<Poke>,
}

/// The last time a group heard from its leader (or granted a vote). Shared between the group's
/// transport handler, which stamps it, and the scheduler, which reads it.
#[derive(Debug)]
pub(crate) struct GroupClock {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last contact.
    last_contact_ms: AtomicU64,
    /// Set while the group is listed quiesced by its leader's node: that node's liveness
    /// stamp, which counts as contact (cleared by any append-entries, snapshot or vote for the
    /// group, and when the leader's node stops listing it); and the scheduler's poke while the
    /// group is parked on it.
    quiet: Mutex<Quiet>,
    /// openraft's leader lease (`election_timeout_max`): how long after the last liveness beat
    /// a quiesced follower refuses pre-votes.
    lease: Duration,
    /// On the leader: the scheduler holds the group quiesced (a proposal must wake it first,
    /// see `super::GroupWaker`).
    pub(super) quiesced: AtomicBool,
    /// On the leader of a quiesced group: per follower that confirmed the group's state, the
    /// stamp of the last liveness beat that follower acknowledged. Stands in for openraft's
    /// heartbeat acknowledgements, which a quiesced group does not get, in the ISR rule.
    pub(super) quiet_acks: Mutex<Vec<(NodeId, Arc<Stamp>)>>,
    /// Votes and elections held after an unclean restart under a lazy log sync policy
    /// (`crate::partition::unclean`): no election is triggered while it holds.
    pub(crate) catch_up: CatchUp,
}

impl GroupClock {
    /// A clock whose last contact is now; `lease` as in [`GroupClock::quiet_lease_runs`].
    pub(crate) fn new(lease: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            last_contact_ms: AtomicU64::new(0),
            quiet: Mutex::new(Quiet::default()),
            lease,
            quiesced: AtomicBool::new(false),
            quiet_acks: Mutex::new(Vec::new()),
            catch_up: CatchUp::default(),
        }
    }

    /// Whether this node's scheduler holds the group quiesced (it leads it).
    pub(crate) fn is_quiesced(&self) -> bool {
        self.quiesced.load(Ordering::Relaxed)
    }

    /// Records that `follower` confirmed the group's state in a liveness beat; from now on
    /// every beat it acknowledges moves `acked` (until the group wakes or `follower` stops
    /// confirming it, [`GroupClock::forget_quiet_ack`]).
    pub(crate) fn record_quiet_ack(&self, follower: NodeId, acked: &Arc<Stamp>) {
        let mut acks = self.quiet_acks.lock();
        match acks.iter_mut().find(|(id, _)| *id == follower) {
            Some((_, s)) => *s = acked.clone(),
            None => acks.push((follower, acked.clone())),
        }
    }

    /// `follower` no longer confirms the group's state.
    pub(crate) fn forget_quiet_ack(&self, follower: NodeId) {
        self.quiet_acks.lock().retain(|(id, _)| *id != follower);
    }

    /// How long ago the last liveness beat `follower` confirmed for the group was sent.
    pub(crate) fn quiet_ack_age(&self, follower: NodeId) -> Option<Duration> {
        self.quiet_acks
            .lock()
            .iter()
            .find(|(id, _)| *id == follower)
            .map(|(_, s)| s.get().elapsed())
    }

    /// Records a liveness beat of the leader's node that lists the group quiesced: contact
    /// now, and every later beat of that node (stamped on `via`) counts as contact too. A
    /// group parked on another node's stamp is unparked.
    pub(crate) fn touch_quiet(&self, via: &Arc<Stamp>) {
        self.touch();
        let poke = {
            let mut q = self.quiet.lock();
            let other = q.via.as_ref().is_some_and(|s| !Arc::ptr_eq(s, via));
            q.via = Some(via.clone());
            if other {
                q.parked.take()
            } else {
                None
            }
        };
        if let Some(p) = poke {
            p.fire();
        }
    }

    /// The leader's node stopped listing the group quiesced (its beat `via` said so): its last
    /// beat was the last contact through it.
    pub(crate) fn unquiet_from(&self, via: &Arc<Stamp>) {
        let poke = {
            let mut q = self.quiet.lock();
            if !q.via.as_ref().is_some_and(|s| Arc::ptr_eq(s, via)) {
                return;
            }
            q.via = None;
            q.parked.take()
        };
        self.touch_at(via.get());
        if let Some(p) = poke {
            p.fire();
        }
    }

    /// Records that the group's leader sent it raft traffic (it is not quiesced, or woke), or
    /// that it voted.
    pub(crate) fn wake(&self) {
        let (via, poke) = {
            let mut q = self.quiet.lock();
            (q.via.take(), q.parked.take())
        };
        if let Some(via) = via {
            self.touch_at(via.get());
        }
        if let Some(p) = poke {
            p.fire();
        }
    }

    /// Parks the group on its quiet mark's stamp if that stamp is younger than `fresh`:
    /// `poke` fires on the next change of the mark (or [`GroupClock::unpark`]). Returns the
    /// stamp it is parked on.
    pub(super) fn park(&self, poke: Poke, fresh: Duration) -> Option<Arc<Stamp>> {
        let mut q = self.quiet.lock();
        let via = q.via.as_ref()?;
        if via.get().elapsed() >= fresh {
            return None;
        }
        let via = via.clone();
        q.parked = Some(poke);
        Some(via)
    }

    /// The scheduler took the group back on its own (its stamp went stale): forget the poke.
    pub(super) fn forget_park(&self) {
        self.quiet.lock().parked = None;
    }

    /// Hands a parked group back to the scheduler now (a leadership transfer may make it a
    /// candidate without anything else changing its quiet mark).
    pub(crate) fn unpark(&self) {
        let poke = self.quiet.lock().parked.take();
        if let Some(p) = poke {
            p.fire();
        }
    }

    /// Whether the group is quiesced under a leader whose node's liveness beat listed it within
    /// the lease: the same window in which openraft's own lease (renewed by heartbeats, which
    /// a quiesced group does not get) makes a follower refuse votes.
    pub(crate) fn quiet_lease_runs(&self) -> bool {
        let via = self.quiet.lock().via.as_ref().map(|s| s.get());
        via.is_some_and(|at| self.last_contact().max(at).elapsed() < self.lease)
    }

    /// Records contact from the group's leader (or a granted vote) now.
    pub(crate) fn touch(&self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_contact_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// The last contact: the latest of the stamped contacts and, while the group is listed
    /// quiesced, its leader node's last liveness beat.
    pub(crate) fn last_contact(&self) -> Instant {
        let own = self.epoch + Duration::from_millis(self.last_contact_ms.load(Ordering::Relaxed));
        match self.quiet.lock().via.as_ref() {
            Some(via) => own.max(via.get()),
            None => own,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_keeps_the_latest_contact() {
        let c = GroupClock::new(Duration::from_secs(3));
        assert!(!c.quiet_lease_runs());
        let first = c.last_contact();
        c.touch();
        assert!(c.last_contact() >= first);
        let via = Arc::new(Stamp::new(Instant::now()));
        c.touch_quiet(&via);
        assert!(c.quiet_lease_runs());
        let later = Instant::now() + Duration::from_millis(50);
        via.set(later);
        assert_eq!(
            c.last_contact(),
            later,
            "the leader node's beats count as contact"
        );
        c.wake();
        assert!(!c.quiet_lease_runs());
        // Own contacts are kept in whole milliseconds.
        assert!(
            c.last_contact() + Duration::from_millis(1) > later,
            "the last beat stays counted after a wake"
        );
        c.touch_quiet(&via);
        c.unquiet_from(&Arc::new(Stamp::new(Instant::now())));
        assert!(c.quiet_lease_runs(), "another node's stamp leaves it alone");
        c.unquiet_from(&via);
        assert!(!c.quiet_lease_runs());
    }

    #[test]
    fn parking_needs_a_fresh_quiet_mark() {
        let c = GroupClock::new(Duration::from_secs(3));
        let poke = || Poke {
            shared: Weak::new(),
            key: 1,
        };
        let fresh = Duration::from_secs(1);
        assert!(c.park(poke(), fresh).is_none(), "not quiet: not parked");
        let via = Arc::new(Stamp::new(Instant::now()));
        c.touch_quiet(&via);
        let parked = c.park(poke(), fresh).expect("parked on a fresh stamp");
        assert!(Arc::ptr_eq(&parked, &via));
        assert!(c.quiet.lock().parked.is_some());
        // Re-listed by the same node: still parked; by another node: unparked.
        c.touch_quiet(&via);
        assert!(c.quiet.lock().parked.is_some());
        c.touch_quiet(&Arc::new(Stamp::new(Instant::now())));
        assert!(c.quiet.lock().parked.is_none());
        // Every change of the mark takes the poke.
        for end in [
            GroupClock::wake as fn(&GroupClock),
            GroupClock::unpark,
            |c: &GroupClock| c.forget_park(),
        ] {
            c.touch_quiet(&via);
            assert!(c.park(poke(), fresh).is_some());
            end(&c);
            assert!(c.quiet.lock().parked.is_none());
        }
        c.touch_quiet(&via);
        assert!(c.park(poke(), fresh).is_some());
        c.unquiet_from(&via);
        assert!(c.quiet.lock().parked.is_none());
        // A stale stamp does not park.
        let old = Arc::new(Stamp::new(Instant::now()));
        c.touch_quiet(&old);
        assert!(c.park(poke(), Duration::ZERO).is_none());
    }
}
