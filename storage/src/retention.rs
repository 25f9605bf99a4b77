//! Retention: deleting whole sealed segments by bytes, messages and age.
//!
//! Rules:
//! 1. Only a *prefix* of sealed segments is ever deleted (oldest first); the active segment
//!    is never deleted, so the next offset survives an all-deleting policy.
//! 2. Only segments entirely at or below the high watermark are candidates: uncommitted data
//!    is never removed by retention.
//! 3. A segment is deleted when any enabled limit says so: without it the log (every
//!    remaining segment, active included) would still hold at least `max_bytes` bytes or at
//!    least `max_messages` offsets (Kafka's rule: retention never cuts into the newest
//!    `max_*` worth of data, so the log may exceed a limit by less than one segment), or the
//!    segment's newest record timestamp is older than `now − max_age`.
//!
//! Under raft, call [`Log::retention_plan`], let raft take a snapshot and purge through
//! [`RetentionPlan::purge_through_raft_index`] (which calls [`Log::purge_through`]); outside
//! raft, [`Log::enforce_retention`] deletes directly.

use crate::config::RetentionPolicy;
use crate::error::Result;
use crate::log::{Log, PurgeOutcome};
use crate::segment::Segment;

/// What retention would delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPlan {
    /// Segments to delete (a prefix).
    pub segments: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Raft index through which to purge (the last raft index of the last doomed segment).
    pub purge_through_raft_index: Option<u64>,
    /// Earliest offset after deletion.
    pub new_earliest_offset: u64,
}

/// What [`Log::enforce_retention`] deleted.
pub type RetentionOutcome = PurgeOutcome;

/// Decides, segment by segment from the oldest, whether retention deletes it.
struct Decider {
    policy: RetentionPolicy,
    now_ns: i64,
    committed_end: u64,
    bytes_left: u64,
    offsets_left: u64,
}

impl Decider {
    fn doomed(&mut self, seg: &Segment) -> bool {
        if !seg.sealed || seg.next_offset > self.committed_end {
            return false;
        }
        let by_bytes = self
            .policy
            .max_bytes
            .is_some_and(|m| self.bytes_left - seg.len >= m);
        let by_count = self
            .policy
            .max_messages
            .is_some_and(|m| self.offsets_left - seg.offset_count() >= m);
        let by_age = self.policy.max_age.is_some_and(|age| {
            let age_ns = i64::try_from(age.as_nanos()).unwrap_or(i64::MAX);
            seg.max_timestamp
                .is_some_and(|ts| ts < self.now_ns.saturating_sub(age_ns))
        });
        let doomed = by_bytes || by_count || by_age;
        if doomed {
            self.bytes_left -= seg.len;
            self.offsets_left -= seg.offset_count();
        }
        doomed
    }
}

impl Log {
    fn decider(&self, policy: &RetentionPolicy, now_ns: i64) -> Decider {
        let st = self.shared.state.read();
        Decider {
            policy: *policy,
            now_ns,
            committed_end: self.committed_end(),
            bytes_left: st.segments.iter().map(|s| s.len).sum(),
            offsets_left: st.next_offset() - st.earliest_offset(),
        }
    }

    /// What [`Log::enforce_retention`] would delete now (`now_ns`: Unix ns).
    pub fn retention_plan(&self, policy: &RetentionPolicy, now_ns: i64) -> RetentionPlan {
        let mut d = self.decider(policy, now_ns);
        let st = self.shared.state.read();
        let mut plan = RetentionPlan {
            new_earliest_offset: st.earliest_offset(),
            ..RetentionPlan::default()
        };
        let n = st.segments.len();
        for seg in &st.segments[..n - 1] {
            if !d.doomed(seg) {
                break;
            }
            plan.segments += 1;
            plan.bytes += seg.len;
            plan.purge_through_raft_index = seg
                .last_raft
                .map(|(_, i)| i)
                .or(plan.purge_through_raft_index);
            plan.new_earliest_offset = seg.next_offset;
        }
        plan
    }

    /// Deletes the segments retention allows (see the module rules).
    pub fn enforce_retention(
        &self,
        policy: &RetentionPolicy,
        now_ns: i64,
    ) -> Result<RetentionOutcome> {
        let _m = self.shared.maintenance.lock();
        let mut d = self.decider(policy, now_ns);
        self.delete_prefix(|seg| d.doomed(seg))
    }
}
