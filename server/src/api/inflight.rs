//! The messages of one PublishAsync session that were published on NATS and still wait for
//! their ack, and the rule that fails them when their partition's leader changes.
//!
//! Why: PublishAsync "forwards" a message to the partition leader by publishing it on the
//! partition's NATS subject, where the leader's ingest is subscribed. When that leader dies, the
//! publish still succeeds (NATS drops a message nobody is subscribed to, and the messages the
//! dead leader took with it are never acked), so without this the session never answers them
//! and the client only ends them with its own ack timeout.
//!
//! Invariants:
//! 1. A message is tracked *before* it is published (so its ack cannot arrive untracked), with
//!    the partition leader and leader epoch this node knew at that moment.
//! 2. Every tracked message is answered exactly once: by its ack ([`InFlight::acked`]) or by a
//!    failure from [`InFlight::expire`], never both. An ack arriving for a message already
//!    failed is reported as [`AckFate::AlreadyFailed`] so the session drops it (remembered for
//!    the last [`FAILED_MEMORY`] failures).
//! 3. A message is failed only once the partition's leadership has differed from the one it was
//!    published under for at least the grace period (a new leader that received it acks it
//!    within that time), or once its partition is gone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_raft::NodeId;

/// How many failed correlation ids a session remembers to drop their late acks.
pub const FAILED_MEMORY: usize = 4096;

/// Who leads a partition, as far as this node knows: the leader (if any) and its epoch (raft
/// term).
pub type Leadership = (Option<NodeId>, u64);

/// The table's hasher. Correlation ids come from the session's own client, so a client that
/// picks colliding ids only slows down its own session.
type Hasher = foldhash::fast::RandomState;

#[derive(Debug)]
struct Entry {
    /// Shared by every entry of the stream (see [`InFlight::stream_name`]).
    stream: Arc<str>,
    partition: i32,
    published_under: Leadership,
    /// When it was tracked (for the latency metrics).
    published_at: Instant,
    /// When leadership was first seen to differ from `published_under`.
    stale_since: Option<Instant>,
}

/// The messages in flight under one correlation id, in tracking order: almost always one
/// (clients make ids unique), and an empty `VecDeque` does not allocate.
#[derive(Debug)]
struct Slot {
    first: Entry,
    rest: VecDeque<Entry>,
}

impl Slot {
    /// Removes the first entry that `pred` accepts; also returns whether none is left.
    fn take(&mut self, pred: impl Fn(&Entry) -> bool) -> (Option<Entry>, bool) {
        if pred(&self.first) {
            return match self.rest.pop_front() {
                Some(next) => (Some(std::mem::replace(&mut self.first, next)), false),
                None => (None, true),
            };
        }
        let e = self
            .rest
            .iter()
            .position(pred)
            .and_then(|i| self.rest.remove(i));
        (e, false)
    }
}

/// A message given up on: answer it with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The message's correlation id.
    pub correlation_id: String,
    /// Its stream.
    pub stream: String,
    /// Its partition.
    pub partition: i32,
    /// Whether the partition no longer exists (else: its leader changed).
    pub partition_gone: bool,
    /// When it was tracked.
    pub published_at: Instant,
}

/// What to do with an ack that arrived on the session's inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckFate {
    /// It answers a tracked message (now untracked), published at the given time: forward it.
    Tracked(Instant),
    /// It answers a message already failed: drop it.
    AlreadyFailed,
    /// Not ours to judge (e.g. a second stream on the same subject acked it too): forward it.
    Untracked,
}

/// The in-flight messages of one session (see the module docs).
#[derive(Debug, Default)]
pub struct InFlight {
    by_correlation: HashMap<String, Slot, Hasher>,
    len: usize,
    /// The stream of the last tracked message, shared with its entries: a session usually
    /// publishes to one stream, so its entries share one allocation of the name.
    last_stream: Option<Arc<str>>,
    failed: HashSet<String>,
    failed_order: VecDeque<String>,
}

impl InFlight {
    /// Number of messages waiting for an ack.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits for an ack.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `stream` as a shared name: the last tracked stream's when it is the same.
    fn stream_name(&mut self, stream: &str) -> Arc<str> {
        match &self.last_stream {
            Some(s) if &**s == stream => Arc::clone(s),
            _ => {
                let s: Arc<str> = Arc::from(stream);
                self.last_stream = Some(Arc::clone(&s));
                s
            }
        }
    }

    /// Tracks a message about to be published under `leadership`.
    pub fn track(
        &mut self,
        correlation_id: &str,
        stream: &str,
        partition: i32,
        leadership: Leadership,
    ) {
        let e = Entry {
            stream: self.stream_name(stream),
            partition,
            published_under: leadership,
            published_at: Instant::now(),
            stale_since: None,
        };
        match self.by_correlation.get_mut(correlation_id) {
            Some(slot) => slot.rest.push_back(e),
            None => {
                let slot = Slot {
                    first: e,
                    rest: VecDeque::new(),
                };
                self.by_correlation.insert(correlation_id.to_owned(), slot);
            }
        }
        self.len += 1;
    }

    /// Untracks a message whose publish failed (it is answered by the caller).
    pub fn untrack(&mut self, correlation_id: &str, stream: &str, partition: i32) {
        self.remove(correlation_id, |e| {
            &*e.stream == stream && e.partition == partition
        });
    }

    fn remove(&mut self, correlation_id: &str, pred: impl Fn(&Entry) -> bool) -> Option<Entry> {
        let (e, emptied) = self.by_correlation.get_mut(correlation_id)?.take(pred);
        // The last entry leaves with its slot.
        let e = match emptied {
            true => self.by_correlation.remove(correlation_id).map(|s| s.first),
            false => e,
        };
        if e.is_some() {
            self.len -= 1;
        }
        e
    }

    /// Judges an ack from `stream` for `correlation_id`.
    pub fn acked(&mut self, correlation_id: &str, stream: &str) -> AckFate {
        if let Some(e) = self.remove(correlation_id, |e| &*e.stream == stream) {
            AckFate::Tracked(e.published_at)
        } else if self.failed.contains(correlation_id) {
            AckFate::AlreadyFailed
        } else {
            AckFate::Untracked
        }
    }

    /// Fails every message whose partition's leadership (`current(stream, partition)`, `None`
    /// when the partition is gone) has differed from the one it was published under for at
    /// least `grace`, and returns them (untracked).
    pub fn expire(
        &mut self,
        now: Instant,
        grace: Duration,
        current: impl Fn(&str, i32) -> Option<Leadership>,
    ) -> Vec<Failed> {
        let mut out = Vec::new();
        let mut judge = |cid: &str, e: &mut Entry| -> bool {
            let (changed, gone) = match current(&e.stream, e.partition) {
                None => (true, true),
                Some(l) => (l != e.published_under, false),
            };
            if !changed {
                e.stale_since = None;
                return true;
            }
            let since = *e.stale_since.get_or_insert(now);
            if now.duration_since(since) < grace {
                return true;
            }
            out.push(Failed {
                correlation_id: cid.to_owned(),
                stream: e.stream.to_string(),
                partition: e.partition,
                partition_gone: gone,
                published_at: e.published_at,
            });
            false
        };
        // Keeps the slots with an entry still in flight.
        self.by_correlation.retain(|cid, slot| {
            let keep_first = judge(cid, &mut slot.first);
            slot.rest.retain_mut(|e| judge(cid, e));
            if keep_first {
                return true;
            }
            // The first entry failed: the next one (if any) takes its place.
            match slot.rest.pop_front() {
                Some(next) => {
                    slot.first = next;
                    true
                }
                None => false,
            }
        });
        self.len -= out.len();
        for f in &out {
            if self.failed.insert(f.correlation_id.clone()) {
                self.failed_order.push_back(f.correlation_id.clone());
            }
            while self.failed_order.len() > FAILED_MEMORY {
                if let Some(old) = self.failed_order.pop_front() {
                    self.failed.remove(&old);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_millis(300);

    #[test]
    fn acked_messages_are_untracked_once() {
        let mut f = InFlight::default();
        f.track("a", "s", 0, (Some(1), 3));
        f.track("a", "s", 0, (Some(1), 3));
        assert_eq!(f.len(), 2);
        assert!(matches!(f.acked("a", "s"), AckFate::Tracked(_)));
        assert_eq!(f.acked("a", "other"), AckFate::Untracked);
        assert!(matches!(f.acked("a", "s"), AckFate::Tracked(_)));
        assert_eq!(f.acked("a", "s"), AckFate::Untracked);
        assert!(f.is_empty());
    }

    #[test]
    fn entries_keep_their_own_stream_when_streams_alternate() {
        let mut f = InFlight::default();
        f.track("x", "s1", 0, (Some(1), 1));
        f.track("y", "s2", 0, (Some(1), 1));
        f.track("z", "s1", 0, (Some(1), 1));
        f.track("y", "s1", 0, (Some(1), 1));
        assert_eq!(f.acked("x", "s2"), AckFate::Untracked);
        assert!(matches!(f.acked("y", "s1"), AckFate::Tracked(_)));
        assert!(matches!(f.acked("y", "s2"), AckFate::Tracked(_)));
        assert_eq!(f.acked("y", "s2"), AckFate::Untracked);
        f.untrack("z", "s1", 0);
        assert_eq!(f.acked("z", "s1"), AckFate::Untracked);
        assert!(matches!(f.acked("x", "s1"), AckFate::Tracked(_)));
        assert!(f.is_empty());
    }

    #[test]
    fn a_leader_change_fails_in_flight_messages_after_the_grace() {
        let mut f = InFlight::default();
        f.track("old", "s", 0, (Some(1), 3));
        f.track("other-partition", "s", 1, (Some(2), 7));
        let t0 = Instant::now();
        let new_leader = |_: &str, p: i32| Some(if p == 0 { (Some(2), 4) } else { (Some(2), 7) });
        assert!(f.expire(t0, GRACE, new_leader).is_empty(), "grace not over");
        let failed = f.expire(t0 + GRACE, GRACE, new_leader);
        assert_eq!(failed.len(), 1);
        assert_eq!(
            (failed[0].correlation_id.as_str(), failed[0].stream.as_str()),
            ("old", "s")
        );
        assert_eq!((failed[0].partition, failed[0].partition_gone), (0, false));
        assert_eq!(f.len(), 1);
        // Its late ack (the new leader got it after all) is dropped: answered once.
        assert_eq!(f.acked("old", "s"), AckFate::AlreadyFailed);
        assert!(matches!(
            f.acked("other-partition", "s"),
            AckFate::Tracked(_)
        ));
    }

    #[test]
    fn a_reused_id_keeps_its_other_messages_when_one_fails() {
        let mut f = InFlight::default();
        f.track("d", "s", 0, (Some(1), 1));
        f.track("d", "s", 1, (Some(1), 1));
        f.track("d", "s", 0, (Some(1), 1));
        let t0 = Instant::now();
        let p0_moved = |_: &str, p: i32| Some(if p == 0 { (Some(2), 2) } else { (Some(1), 1) });
        assert!(f.expire(t0, GRACE, p0_moved).is_empty());
        let failed = f.expire(t0 + GRACE, GRACE, p0_moved);
        assert_eq!(
            failed.iter().map(|x| x.partition).collect::<Vec<_>>(),
            [0, 0]
        );
        assert_eq!(f.len(), 1);
        assert!(matches!(f.acked("d", "s"), AckFate::Tracked(_)));
        assert!(f.is_empty());
        assert_eq!(f.acked("d", "s"), AckFate::AlreadyFailed);
    }

    #[test]
    fn a_change_that_reverts_within_the_grace_fails_nothing() {
        let mut f = InFlight::default();
        f.track("m", "s", 0, (None, 0));
        let t0 = Instant::now();
        assert!(f.expire(t0, GRACE, |_, _| Some((Some(1), 1))).is_empty());
        // Leader recorded and acked within the grace: nothing failed.
        assert!(matches!(f.acked("m", "s"), AckFate::Tracked(_)));
        assert!(f
            .expire(t0 + GRACE, GRACE, |_, _| Some((Some(1), 1)))
            .is_empty());
        // Unchanged leadership resets the clock.
        f.track("n", "s", 0, (Some(1), 1));
        assert!(f.expire(t0, GRACE, |_, _| Some((Some(2), 2))).is_empty());
        assert!(f
            .expire(t0 + GRACE / 2, GRACE, |_, _| Some((Some(1), 1)))
            .is_empty());
        assert!(f
            .expire(t0 + GRACE, GRACE, |_, _| Some((Some(2), 2)))
            .is_empty());
        assert_eq!(
            f.expire(t0 + GRACE * 2, GRACE, |_, _| Some((Some(2), 2)))
                .len(),
            1
        );
    }

    #[test]
    fn a_deleted_partition_fails_its_messages() {
        let mut f = InFlight::default();
        f.track("m", "s", 0, (Some(1), 1));
        let t0 = Instant::now();
        assert!(f.expire(t0, GRACE, |_, _| None).is_empty());
        let failed = f.expire(t0 + GRACE, GRACE, |_, _| None);
        assert_eq!(failed.len(), 1);
        assert!(failed[0].partition_gone);
        assert!(f.is_empty());
    }

    #[test]
    fn failed_ids_are_remembered_within_a_bound() {
        let mut f = InFlight::default();
        let t0 = Instant::now();
        for i in 0..FAILED_MEMORY + 10 {
            f.track(&i.to_string(), "s", 0, (Some(1), 1));
        }
        let _ = f.expire(t0, Duration::ZERO, |_, _| Some((Some(2), 2)));
        assert!(f.is_empty());
        assert!(f.failed.len() <= FAILED_MEMORY);
        assert_eq!(f.failed.len(), f.failed_order.len());
    }
}
