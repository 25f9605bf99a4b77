//! Partition leadership off a (nearly) full disk (issue 7, fault 5).
//!
//! A partition leader whose data directory is below `storage.min.free.bytes` refuses new
//! messages ([`crate::diskspace`]); holding the leadership would keep the partition from
//! committing anything until space returns. As in Kafka and Redpanda (a replica that cannot
//! write should not lead), this task hands such leaderships to an in-sync replica whose node
//! has space, and the node refuses to take leaderships while it is itself below the margin.
//!
//! Invariants:
//! - The node's lead gate (`RaftNode::set_lead_gate`, asked by other leaders' `MayLead`
//!   probes) says yes exactly when `data.dir` is not below the margin by the shared cached
//!   reading ([`crate::diskspace::DiskGuard::check`], a margin of 0 = always yes). So a full
//!   node is never handed a leadership, and when every replica is full nobody moves (no
//!   ping-pong): the leader keeps leading and refusing.
//! - A hand-off starts only after the disk was seen below the margin at two ticks in a row
//!   ([`TICK`] apart), so a short dip does not move leaders, and the refusals with their clear
//!   error come first.
//! - Each partition is tried at most once per [`RETRY_AFTER`]; each try is bounded by
//!   [`HAND_OFF_BOUND`] (`RaftNode::hand_off_leadership` says what happens on a timeout).
//! - Elections are not gated: a full node that wins one (its leader died) hands the
//!   leadership on at its next tick when another replica has space.
//! - Hand-offs only grow the counter `drawbridge_disk_full_leader_handoffs_total`. One task
//!   per node; it ends at shutdown.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use drawbridge_raft::PartitionId;
use tracing::{debug, info, warn};

use crate::context::Ctx;

/// How often the disk is looked at.
pub const TICK: Duration = Duration::from_secs(1);
/// How long a partition whose hand-off was tried is left alone.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long one hand-off waits for the new leader.
pub const HAND_OFF_BOUND: Duration = Duration::from_secs(3);

/// What the task remembers between ticks.
#[derive(Debug, Default)]
struct Memory {
    /// Consecutive ticks that saw the disk below the margin.
    below: u32,
    /// When each partition's hand-off was last tried.
    tried: HashMap<PartitionId, Instant>,
    /// Partitions reported as kept (no replica with space) in this streak: logged once.
    kept: HashSet<PartitionId>,
}

/// Sets the node's lead gate and starts the hand-off task.
pub fn spawn(ctx: Ctx) {
    // Weak: the gate lives in the raft node, which the node state owns.
    let weak = Arc::downgrade(&ctx);
    ctx.raft.set_lead_gate(move || {
        weak.upgrade().is_some_and(|n| {
            n.stats
                .disk
                .check(&n.config.data_dir, n.config.storage.min_free_bytes)
                .is_ok()
        })
    });
    tokio::spawn(async move {
        let mut stop = ctx.shutdown.clone();
        let mut memory = Memory::default();
        loop {
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => break,
                _ = tokio::time::sleep(TICK) => {}
            }
            tick(&ctx, &mut memory).await;
        }
    });
}

async fn tick(ctx: &Ctx, memory: &mut Memory) {
    let full = ctx
        .stats
        .disk
        .check(&ctx.config.data_dir, ctx.config.storage.min_free_bytes);
    let Err(full) = full else {
        if memory.below > 0 {
            *memory = Memory::default();
        }
        return;
    };
    memory.below = memory.below.saturating_add(1);
    if memory.below < 2 {
        return;
    }
    let now = Instant::now();
    let leading: Vec<_> = ctx
        .partitions
        .all()
        .into_iter()
        .filter(|(id, l)| {
            l.replica.is_leader()
                && memory
                    .tried
                    .get(id)
                    .is_none_or(|t| now.duration_since(*t) >= RETRY_AFTER)
        })
        .collect();
    if leading.is_empty() {
        return;
    }
    for (id, _) in &leading {
        memory.tried.insert(id.clone(), now);
    }
    let max_ack_age = ctx.config.clustering.replica_max_lag_time;
    // One round each: a partition with no candidate now is tried again after RETRY_AFTER.
    let results = futures::future::join_all(leading.iter().map(|(_, l)| {
        ctx.raft
            .hand_off_leadership(&l.replica, max_ack_age, HAND_OFF_BOUND, 1)
    }))
    .await;
    for ((id, _), r) in leading.iter().zip(results) {
        match r {
            Ok(Some(to)) => {
                ctx.stats.disk.handoffs.fetch_add(1, Ordering::Relaxed);
                memory.kept.remove(id);
                info!(partition = %id, to, free = full.free, min = full.min,
                    took = ?now.elapsed(),
                    "disk below storage.min.free.bytes: partition leadership handed off");
            }
            Ok(None) => {
                if memory.kept.insert(id.clone()) {
                    info!(partition = %id, free = full.free, min = full.min,
                        "disk below storage.min.free.bytes, but no in-sync replica with space \
                         takes the partition leadership: keeping it (publishes are refused)");
                } else {
                    debug!(partition = %id, "still no replica to hand the leadership to");
                }
            }
            Err(e) => {
                warn!(partition = %id, error = %e, "partition leadership hand-off failed")
            }
        }
    }
}
