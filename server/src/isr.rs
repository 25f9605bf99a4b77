//! The ISR monitor: on every partition this node leads, computes the in-sync replicas from raft
//! replication progress (`clustering.replica.max.lag.time`, the rule in
//! `drawbridge_raft::partition::isr`) and records changes in the metadata
//! (`SetPartitionIsr`), so every node answers FetchMetadata with the leader's view.
//!
//! Why a timer here when leadership is event-driven: a follower leaves the ISR because time
//! passes without it acknowledging, which raises no event. One task per node checks every led
//! partition each [`period`] (a few watch reads per partition, no IO), instead of a timer per
//! partition.
//!
//! Invariants:
//! - Only the recorded leader in its recorded term writes the ISR (the state machine ignores
//!   anything else), and only once the leadership itself is recorded.
//! - At most one `SetPartitionIsr` per partition is started per `RETRY`; a failed or not yet
//!   visible one is retried on a later round.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use drawbridge_raft::{MetadataCommand, PartitionId};
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::cluster::{forward, Propagated};
use crate::context::Ctx;

/// Least time between two attempts to record one partition's ISR.
const RETRY: Duration = Duration::from_secs(1);

/// How often the monitor checks: a quarter of the lag window (so the ISR history samples every
/// stretch of it), between 50 ms and 1 s.
pub fn period(max_lag: Duration) -> Duration {
    (max_lag / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Runs the monitor until shutdown.
pub fn spawn_monitor(ctx: Ctx) {
    tokio::spawn(async move {
        let max_lag = ctx.config.clustering.replica_max_lag_time;
        let mut tick = tokio::time::interval(period(max_lag));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // partition -> when its last record attempt may be retried (present while in flight).
        let pending: Arc<Mutex<HashMap<PartitionId, Instant>>> = Arc::default();
        let mut stop = ctx.shutdown.clone();
        loop {
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => break,
                _ = tick.tick() => check(&ctx, max_lag, &pending),
            }
        }
    });
}

fn check(ctx: &Ctx, max_lag: Duration, pending: &Arc<Mutex<HashMap<PartitionId, Instant>>>) {
    let now = Instant::now();
    pending.lock().retain(|_, t| now < *t);
    let state = ctx.raft.metadata().state().state;
    for (id, local) in ctx.partitions.all() {
        let Some((term, isr)) = local.in_sync(max_lag) else {
            continue;
        };
        let Some(p) = state
            .streams
            .get(&id.stream)
            .and_then(|s| s.partitions.get(&id.partition))
        else {
            continue;
        };
        if p.leader != Some(ctx.node_id) || p.leader_epoch != term {
            continue; // the leadership record comes first (crate::partitions)
        }
        let mut recorded = p.isr.clone();
        recorded.sort_unstable();
        if recorded == isr {
            continue;
        }
        {
            // Also kept after a success: the local metadata view may lag the write briefly.
            let mut pend = pending.lock();
            if pend.contains_key(&id) {
                continue;
            }
            pend.insert(id.clone(), now + RETRY);
        }
        info!(partition = %id, from = ?recorded, to = ?isr, "ISR changed");
        let op = Propagated::Command(MetadataCommand::SetPartitionIsr {
            stream: id.stream.clone(),
            partition: id.partition,
            leader: ctx.node_id,
            leader_epoch: term,
            isr,
        });
        let c = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(&c, op).await {
                debug!(partition = %id, error = %e, "recording the ISR failed; will retry");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_is_a_quarter_of_the_lag_within_bounds() {
        assert_eq!(period(Duration::from_secs(15)), Duration::from_secs(1));
        assert_eq!(period(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(period(Duration::from_millis(10)), Duration::from_millis(50));
    }
}
