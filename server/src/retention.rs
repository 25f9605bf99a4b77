//! Retention and compaction of partition logs: the stream's settings (server defaults
//! `streams.*`, overridden per stream by CreateStream) and the cleaner task that applies them
//! on every replica.
//!
//! Invariants:
//! - Messages are deleted only here, by the stream's retention policy, as whole sealed segments
//!   at or below the high watermark (see `drawbridge_storage::retention`); raft never snapshots
//!   or purges a partition log on its own schedule. A policy with no limit deletes nothing.
//! - Every replica enforces retention on its own log (as Liftbridge does); a follower behind
//!   the leader's purge point restarts from the leader's oldest retained offset.
//! - A read below the earliest retained offset starts at the earliest retained offset: deleted
//!   messages are never served.
//! - 0 disables a limit (bytes, messages, age), as in Liftbridge; the cleaner runs every
//!   `streams.cleaner.interval` (per stream: `cleaner.interval.ms`) and never blocks appends
//!   (it deletes whole files; raft purges in its own task).
//! - Compaction by key (`streams.compact.enabled`, per stream `compact.enabled`) runs in the
//!   same cleaner pass, after retention, on a blocking thread: it rewrites sealed segments whose
//!   raft entries are all applied, keeping each key's newest record (offsets never move; see
//!   `drawbridge_storage::compaction` and `PartitionReplica::compact_by_key`). Each replica
//!   compacts its own log; no raft purge is involved. At most `streams.compact.max.goroutines`
//!   replicas compact at once on a node (a semaphore). Retention and compaction compose:
//!   retention deletes whole old segments, compaction rewrites the sealed ones that remain, and
//!   both serialize on the log's maintenance lock.
//! - Segment size and age (`streams.segment.max.bytes`, `streams.segment.max.age`, per stream
//!   `segment.max.bytes`, `segment.max.age.ms`) are read when the replica is opened; a stream
//!   that sets a retention age but no segment age rolls segments at its retention age, so age
//!   retention can delete them (Liftbridge's rule).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use drawbridge_raft::metadata::state::StreamMeta;
use drawbridge_raft::{PartitionId, PartitionLogSettings, PartitionReplica};
use drawbridge_storage::RetentionPolicy;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::context::Ctx;

/// Per-stream override keys (milliseconds for durations), as CreateStream stores them.
const RETENTION_MAX_BYTES: &str = "retention.max.bytes";
const RETENTION_MAX_MESSAGES: &str = "retention.max.messages";
const RETENTION_MAX_AGE_MS: &str = "retention.max.age.ms";
const CLEANER_INTERVAL_MS: &str = "cleaner.interval.ms";
const SEGMENT_MAX_BYTES: &str = "segment.max.bytes";
const SEGMENT_MAX_AGE_MS: &str = "segment.max.age.ms";
const COMPACT_ENABLED: &str = "compact.enabled";

/// The shortest cleaner interval honoured (a 0 or tiny value would spin).
const MIN_CLEANER_INTERVAL: Duration = Duration::from_millis(100);
/// How long one retention pass may wait for raft's snapshot.
const PASS_TIMEOUT: Duration = Duration::from_secs(30);

/// A stream's effective log settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLogPolicy {
    /// Segment rolling.
    pub log: PartitionLogSettings,
    /// What retention deletes.
    pub retention: RetentionPolicy,
    /// How often the cleaner runs.
    pub cleaner_interval: Duration,
    /// Whether the cleaner compacts by key.
    pub compact: bool,
}

fn int(overrides: &BTreeMap<String, String>, key: &str) -> Option<i64> {
    overrides.get(key).and_then(|v| v.parse::<i64>().ok())
}

fn ms(overrides: &BTreeMap<String, String>, key: &str) -> Option<Duration> {
    int(overrides, key).map(|v| Duration::from_millis(u64::try_from(v).unwrap_or(0)))
}

/// A positive limit, or `None` (0 or negative: unlimited).
fn limit(v: i64) -> Option<u64> {
    u64::try_from(v).ok().filter(|v| *v > 0)
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// The effective settings of `stream`: its overrides, else the server's `streams.*` defaults.
pub fn policy_of(ctx: &Ctx, stream: &StreamMeta) -> StreamLogPolicy {
    let d = &ctx.config.streams;
    let o = &stream.config;
    let retention_age = ms(o, RETENTION_MAX_AGE_MS);
    let segment_age = ms(o, SEGMENT_MAX_AGE_MS)
        .or(retention_age)
        .unwrap_or(d.segment_max_age);
    StreamLogPolicy {
        log: PartitionLogSettings {
            segment_max_bytes: limit(int(o, SEGMENT_MAX_BYTES).unwrap_or(d.segment_max_bytes)),
            segment_max_age: nonzero(segment_age),
        },
        retention: RetentionPolicy {
            max_bytes: limit(int(o, RETENTION_MAX_BYTES).unwrap_or(d.retention_max_bytes)),
            max_messages: limit(int(o, RETENTION_MAX_MESSAGES).unwrap_or(d.retention_max_messages)),
            max_age: nonzero(retention_age.unwrap_or(d.retention_max_age)),
        },
        cleaner_interval: ms(o, CLEANER_INTERVAL_MS)
            .unwrap_or(d.cleaner_interval)
            .max(MIN_CLEANER_INTERVAL),
        compact: o
            .get(COMPACT_ENABLED)
            .and_then(|v| v.parse::<bool>().ok())
            .unwrap_or(d.compact_enabled),
    }
}

/// The log settings to open `id`'s replica with (defaults if the stream is unknown).
pub fn log_settings(ctx: &Ctx, stream: Option<&StreamMeta>) -> PartitionLogSettings {
    stream.map_or_else(PartitionLogSettings::default, |s| policy_of(ctx, s).log)
}

/// Runs the cleaner (retention, then compaction) of one hosted replica until `stop` flips.
pub fn spawn_cleaner(
    ctx: Ctx,
    id: PartitionId,
    replica: PartitionReplica,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        loop {
            let policy = {
                let state = ctx.raft.metadata().state().state;
                match state.streams.get(&id.stream) {
                    Some(s) => policy_of(&ctx, s),
                    None => return,
                }
            };
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => return,
                _ = tokio::time::sleep(policy.cleaner_interval) => {}
            }
            if policy.retention != RetentionPolicy::default() {
                retain(&id, &replica, &policy.retention).await;
            }
            if policy.compact {
                // Not cancelled by `stop`: the blocking pass runs to its end either way, and
                // the slot must stay held until it does.
                compact(&ctx, &id, &replica).await;
            }
        }
    });
}

async fn retain(id: &PartitionId, replica: &PartitionReplica, policy: &RetentionPolicy) {
    let now = crate::acks::now_ns();
    match replica.enforce_retention(policy, now, PASS_TIMEOUT).await {
        Ok(plan) if plan.segments > 0 => info!(
            partition = %id,
            segments = plan.segments,
            bytes = plan.bytes,
            earliest = plan.new_earliest_offset,
            "retention: deleting segments"
        ),
        Ok(_) => debug!(partition = %id, "retention: nothing to delete"),
        Err(e) => warn!(partition = %id, error = %e, "retention pass failed"),
    }
}

/// One compaction pass on a blocking thread, once a node-wide slot is free.
async fn compact(ctx: &Ctx, id: &PartitionId, replica: &PartitionReplica) {
    let Ok(_slot) = ctx.compaction_slots.clone().acquire_owned().await else {
        return;
    };
    let r = replica.clone();
    let done = tokio::task::spawn_blocking(move || r.compact_by_key()).await;
    match done {
        Ok(Ok(out)) => {
            ctx.stats.compaction_runs.fetch_add(1, Ordering::Relaxed);
            ctx.stats
                .compaction_records_removed
                .fetch_add(out.records_removed, Ordering::Relaxed);
            if out.segments_rewritten > 0 {
                info!(
                    partition = %id,
                    segments = out.segments_rewritten,
                    records_removed = out.records_removed,
                    bytes_before = out.bytes_before,
                    bytes_after = out.bytes_after,
                    "compaction: rewrote segments"
                );
            } else {
                debug!(partition = %id, "compaction: nothing to remove");
            }
        }
        // A closed log: the replica is going away; the loop ends with it.
        Ok(Err(drawbridge_storage::StorageError::Closed)) => {
            debug!(partition = %id, "compaction: log closed");
        }
        Ok(Err(e)) => warn!(partition = %id, error = %e, "compaction pass failed"),
        Err(e) => warn!(partition = %id, error = %e, "compaction task failed"),
    }
}
