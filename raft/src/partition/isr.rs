//! In-sync replicas (ISR) from raft replication progress, on the partition leader.
//!
//! Raft has no ISR: a leader replicates to every voter and commits on a majority. Liftbridge
//! clients still read one (FetchMetadata, `readISRReplica`), and an operator wants to see which
//! replicas keep up. The leader derives it from what openraft already tracks per follower: the
//! last log id the follower matched, and when it last acknowledged an AppendEntries (heartbeat
//! or replication) — see [`ReplicationProgress`].
//!
//! The rule (Liftbridge's `replica.max.lag.time`, Kafka's `replica.lag.time.max.ms`): a
//! follower is in sync when, within the last `max_lag`,
//! 1. it acknowledged the leader, and
//! 2. it was caught up: its matched index reached the leader's last index as the leader had it
//!    at some moment within the last `max_lag` (so a follower that keeps up under steady load,
//!    always a few entries behind, stays in; one that falls further and further behind drops
//!    out once its backlog is `max_lag` old).
//!
//! Condition 2 needs history, which [`IsrTracker`] keeps: samples of the leader's last index,
//! taken on every [`IsrTracker::observe`]. The caller observes at least every `max_lag / 4`
//! (the server's ISR monitor does) so a sample of every stretch of the window exists.
//!
//! Invariants:
//! - The leader is always in the set it computes.
//! - A new leadership (another term) starts from a clean tracker that gives every follower a
//!   grace of `max_lag` for condition 2 (it has no history yet); condition 1 applies at once.
//! - Samples older than `max_lag` are dropped, and at most [`MAX_SAMPLES`] are kept.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::time::Duration;
use std::time::Instant;

use crate::types::NodeId;

/// Most samples of the leader's last index kept (older ones are dropped first).
pub const MAX_SAMPLES: usize = 64;

/// One voter's replication state, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The highest raft index known to match the leader's log (`None`: nothing yet).
    pub matched_index: Option<u64>,
    /// How long ago the follower last acknowledged an AppendEntries request (measured from when
    /// the acknowledged request was sent); `None`: never since this leadership began.
    pub ack_age: Option<Duration>,
}

/// A partition group's replication progress on its leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationProgress {
    /// This node (the leader).
    pub leader: NodeId,
    /// The leader's term.
    pub term: u64,
    /// Raft index of the leader's last log entry (0 when empty).
    pub last_log_index: u64,
    /// Every other voter of the group.
    pub followers: BTreeMap<NodeId, FollowerProgress>,
}

/// History the ISR rule needs; one per partition, owned by whoever asks for the ISR.
#[derive(Debug, Clone, Default)]
pub struct IsrTracker {
    /// (leader, term) the history belongs to.
    leadership: Option<(NodeId, u64)>,
    /// When that leadership was first observed (grace for condition 2 until `+ max_lag`).
    since: Option<Instant>,
    /// (when, leader's last index then), oldest first.
    samples: VecDeque<(Instant, u64)>,
}

impl IsrTracker {
    /// A tracker with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `p` as seen at `now` and returns the in-sync replicas (see the module docs),
    /// the leader included, in ascending id order.
    pub fn observe(
        &mut self,
        p: &ReplicationProgress,
        now: Instant,
        max_lag: Duration,
    ) -> Vec<NodeId> {
        if self.leadership != Some((p.leader, p.term)) {
            self.leadership = Some((p.leader, p.term));
            self.since = Some(now);
            self.samples.clear();
        }
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > max_lag)
        {
            self.samples.pop_front();
        }
        let in_grace = self
            .since
            .is_some_and(|s| now.saturating_duration_since(s) <= max_lag);
        // The lowest leader index sampled within the window: reaching it means "caught up to
        // where the leader was at most `max_lag` ago".
        let floor = self
            .samples
            .iter()
            .map(|(_, i)| *i)
            .min()
            .unwrap_or(p.last_log_index)
            .min(p.last_log_index);
        let mut isr: BTreeSet<NodeId> = BTreeSet::from([p.leader]);
        for (id, f) in &p.followers {
            let acked = f.ack_age.is_some_and(|a| a <= max_lag);
            let caught_up = in_grace || f.matched_index.unwrap_or(0) >= floor;
            if acked && caught_up {
                isr.insert(*id);
            }
        }
        self.samples.push_back((now, p.last_log_index));
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
        isr.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: Duration = Duration::from_secs(10);

    fn progress(last: u64, followers: &[(NodeId, u64, Option<u64>)]) -> ReplicationProgress {
        ReplicationProgress {
            leader: 1,
            term: 3,
            last_log_index: last,
            followers: followers
                .iter()
                .map(|(id, matched, ack_s)| {
                    (
                        *id,
                        FollowerProgress {
                            matched_index: Some(*matched),
                            ack_age: ack_s.map(Duration::from_secs),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn silent_followers_drop_out_at_once_and_return_when_they_ack() {
        let mut t = IsrTracker::new();
        let t0 = Instant::now();
        let p = progress(10, &[(2, 10, Some(0)), (3, 10, None)]);
        assert_eq!(t.observe(&p, t0, LAG), vec![1, 2]);
        let p = progress(10, &[(2, 10, Some(11)), (3, 10, Some(1))]);
        assert_eq!(t.observe(&p, t0 + Duration::from_secs(1), LAG), vec![1, 3]);
    }

    #[test]
    fn a_follower_that_keeps_up_stays_one_that_falls_behind_drops_out() {
        let mut t = IsrTracker::new();
        let t0 = Instant::now();
        // Leader index grows by 100 per second; follower 2 trails by 50 (half a second), 3
        // stops at 100 but keeps acknowledging heartbeats.
        for s in 0..=25u64 {
            let last = 100 * (s + 1);
            let p = progress(
                last,
                &[(2, last - 50, Some(0)), (3, last.min(100), Some(0))],
            );
            let isr = t.observe(&p, t0 + Duration::from_secs(s), LAG);
            assert!(isr.contains(&2), "second {s}: {isr:?}");
            // 3 is in while in grace or while its index is within the window's samples.
            let expect3 = s <= 10;
            assert_eq!(isr.contains(&3), expect3, "second {s}: {isr:?}");
        }
    }

    #[test]
    fn a_new_term_restarts_the_history() {
        let mut t = IsrTracker::new();
        let t0 = Instant::now();
        let mut p = progress(100, &[(2, 0, Some(0))]);
        assert_eq!(t.observe(&p, t0, LAG), vec![1, 2], "grace");
        assert_eq!(t.observe(&p, t0 + Duration::from_secs(11), LAG), vec![1]);
        p.term = 4;
        assert_eq!(
            t.observe(&p, t0 + Duration::from_secs(12), LAG),
            vec![1, 2],
            "grace again in a new term"
        );
    }
}
