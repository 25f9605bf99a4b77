//! Consumer groups (spec §4.6, §11): the parts that are not replicated state.
//!
//! The replicated part (members, coordinator, epoch) lives in the metadata group
//! (`MetadataState::consumer_groups`), and assignments are a pure function of it
//! (`MetadataState::assignments`), so every node computes the same assignment for an epoch.
//! This module holds what Liftbridge also keeps in memory:
//! - on the **coordinator**: the last heartbeat (FetchConsumerGroupAssignments) of each member,
//!   and the expiry loop that removes members silent for `groups.consumer.timeout`;
//! - on the **metadata leader**: coordinator choice (the live broker coordinating the fewest
//!   groups) and the ReportConsumerGroupCoordinator votes; once more than half of a group's
//!   members reported its coordinator in one epoch, a new coordinator is chosen (the epoch
//!   advances, so every member re-reads it from FetchMetadata).
//! - subscription fencing: a group member's Subscribe is admitted only with the current epoch
//!   (or newer) and for a partition assigned to it; an admitted subscription is closed with
//!   FailedPrecondition once a later epoch assigns its partition elsewhere (or removes the
//!   member), so at most one member reads a partition once the epochs settle. (Liftbridge
//!   also keeps a per-partition registry in which a newer-epoch subscription closes an older
//!   one; here the epoch watch does that job.)
//!
//! Invariants:
//! - Lost memory is safe: a new coordinator grants every member a full timeout before expiring
//!   it; a new metadata leader starts counting reports from zero (members report again).
//! - Every loop is bounded by the server's shutdown or a deadline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use drawbridge_raft::metadata::state::MetadataState;
use drawbridge_raft::{MetadataCommand, MetadataResponse, NodeId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::cluster::{self, forward, Propagated};
use crate::context::{Ctx, Node};
use crate::error::{Result, ServerError};

/// How often the coordinator looks for expired members.
const EXPIRY_TICK: Duration = Duration::from_millis(500);
/// How long a Subscribe waits for this node's metadata to reach the member's epoch.
const EPOCH_WAIT: Duration = Duration::from_secs(3);

/// A consumer-group operation run on the metadata leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupOp {
    /// JoinConsumerGroup: the leader picks the coordinator of a new group.
    Join {
        /// Group id.
        group: String,
        /// Consumer id.
        consumer: String,
        /// Streams it reads.
        streams: Vec<String>,
    },
    /// ReportConsumerGroupCoordinator: one member's vote that the coordinator is gone.
    Report {
        /// Group id.
        group: String,
        /// Reporting member.
        consumer: String,
        /// The coordinator believed dead (raft node id).
        coordinator: NodeId,
        /// The epoch the reporter knows.
        epoch: u64,
    },
}

/// In-memory consumer-group bookkeeping of one server (see the module docs).
#[derive(Debug, Default)]
pub struct Groups {
    /// Coordinator side: (group, consumer) → last heartbeat. Written by
    /// FetchConsumerGroupAssignments and the expiry loop, read by the expiry loop.
    heartbeats: Mutex<HashMap<(String, String), Instant>>,
    /// Metadata-leader side: (group, epoch) → members that reported the coordinator.
    reports: Mutex<HashMap<(String, u64), BTreeSet<String>>>,
}

impl Groups {
    /// Records a heartbeat of `consumer` in `group`.
    pub fn heartbeat(&self, group: &str, consumer: &str) {
        self.heartbeats
            .lock()
            .insert((group.to_owned(), consumer.to_owned()), Instant::now());
    }
}

/// The live broker coordinating the fewest groups (ties: the smallest node id), other than
/// `exclude`.
fn pick_coordinator(ctx: &Node, state: &MetadataState, exclude: Option<NodeId>) -> Option<NodeId> {
    let mut load: BTreeMap<NodeId, usize> = cluster::cluster_members(ctx)
        .into_iter()
        .filter(|id| *id == ctx.node_id || ctx.directory.is_live(*id))
        .filter(|id| Some(*id) != exclude)
        .map(|id| (id, 0))
        .collect();
    for g in state.consumer_groups.values() {
        if let Some(n) = load.get_mut(&g.coordinator) {
            *n += 1;
        }
    }
    load.into_iter()
        .min_by_key(|(id, n)| (*n, *id))
        .map(|(id, _)| id)
}

async fn propose_group(ctx: &Node, cmd: MetadataCommand) -> Result<Option<u64>> {
    match cluster::propose(ctx, cmd).await? {
        MetadataResponse::Applied { group_epoch } => Ok(group_epoch),
        MetadataResponse::Rejected(r) => Err(cluster::rejection(r)),
    }
}

/// Runs a group operation on this server, which leads the metadata group.
pub async fn execute(ctx: &Node, op: GroupOp) -> Result<Option<u64>> {
    let state = ctx.raft.metadata().state().state;
    match op {
        GroupOp::Join {
            group,
            consumer,
            streams,
        } => {
            let coordinator = match state.consumer_groups.get(&group) {
                Some(g) => g.coordinator,
                None => pick_coordinator(ctx, &state, None).ok_or_else(|| {
                    ServerError::FailedPrecondition("no coordinator candidate".into())
                })?,
            };
            let cmd = MetadataCommand::JoinConsumerGroup {
                group,
                consumer,
                streams,
                coordinator,
            };
            propose_group(ctx, cmd).await
        }
        GroupOp::Report {
            group,
            consumer,
            coordinator,
            epoch,
        } => {
            let g = state.consumer_groups.get(&group).ok_or_else(|| {
                ServerError::FailedPrecondition(format!("group {group} does not exist"))
            })?;
            if g.coordinator != coordinator || g.epoch != epoch {
                return Err(ServerError::FailedPrecondition(format!(
                    "group {group} has coordinator {} in epoch {}",
                    ctx.server_id_of(g.coordinator),
                    g.epoch
                )));
            }
            if !g.members.contains_key(&consumer) {
                return Err(ServerError::FailedPrecondition(format!(
                    "{consumer} is not a member of group {group}"
                )));
            }
            let votes = {
                let mut reports = ctx.groups.reports.lock();
                reports.retain(|(gr, e), _| {
                    state.consumer_groups.get(gr).is_some_and(|g| g.epoch == *e)
                });
                let set = reports.entry((group.clone(), epoch)).or_default();
                set.insert(consumer);
                set.len()
            };
            if votes * 2 <= g.members.len() {
                return Ok(Some(epoch));
            }
            let Some(next) = pick_coordinator(ctx, &state, Some(coordinator)) else {
                return Ok(Some(epoch));
            };
            info!(group = %group, old = coordinator, new = next, "moving a group coordinator after reports");
            ctx.groups.reports.lock().remove(&(group.clone(), epoch));
            let cmd = MetadataCommand::SetGroupCoordinator {
                group,
                coordinator: next,
                expected_epoch: epoch,
            };
            propose_group(ctx, cmd).await
        }
    }
}

/// Runs the coordinator's expiry loop until shutdown: members of groups this node coordinates
/// that sent no heartbeat for `groups.consumer.timeout` are removed (`expired`).
pub fn spawn_expiry(ctx: Ctx) {
    tokio::spawn(async move {
        let mut stop = ctx.shutdown.clone();
        let timeout = ctx.config.groups.consumer_timeout;
        loop {
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => break,
                _ = tokio::time::sleep(EXPIRY_TICK) => {}
            }
            let state = ctx.raft.metadata().state().state;
            let mut expired: Vec<(String, String)> = Vec::new();
            {
                let mut hb = ctx.groups.heartbeats.lock();
                // Forget groups coordinated elsewhere: regaining one grants a fresh timeout.
                hb.retain(|(g, c), _| {
                    state
                        .consumer_groups
                        .get(g)
                        .is_some_and(|g| g.coordinator == ctx.node_id && g.members.contains_key(c))
                });
                let now = Instant::now();
                for (gid, g) in &state.consumer_groups {
                    if g.coordinator != ctx.node_id {
                        continue;
                    }
                    for c in g.members.keys() {
                        let seen = *hb.entry((gid.clone(), c.clone())).or_insert(now);
                        if now.duration_since(seen) > timeout {
                            expired.push((gid.clone(), c.clone()));
                        }
                    }
                }
            }
            for (group, consumer) in expired {
                info!(group = %group, consumer = %consumer, "consumer group member expired");
                let op = Propagated::Command(MetadataCommand::LeaveConsumerGroup {
                    group: group.clone(),
                    consumer: consumer.clone(),
                    expected_epoch: None,
                    expired: true,
                });
                match forward(&ctx, op).await {
                    Ok(()) => {
                        ctx.groups.heartbeats.lock().remove(&(group, consumer));
                    }
                    Err(e) => debug!(error = %e, "expiring a member failed; will retry"),
                }
            }
        }
    });
}

/// Whether `partition` of `stream` is assigned to `consumer` in `state`.
fn assigned(
    state: &MetadataState,
    group: &str,
    consumer: &str,
    stream: &str,
    partition: i32,
) -> bool {
    state
        .assignments(group)
        .get(consumer)
        .and_then(|a| a.get(stream))
        .is_some_and(|ps| ps.contains(&partition))
}

/// A group member's subscription as admitted by [`admit`].
#[derive(Debug, Clone)]
pub struct Member {
    group: String,
    consumer: String,
    epoch: u64,
}

/// Admits a Subscribe from a group member (spec §5, §9): the member's epoch must not be older
/// than the group's (waiting a little for this node to learn a newer one) and the partition
/// must be assigned to it in that epoch; otherwise FailedPrecondition.
pub async fn admit(
    ctx: &Ctx,
    group: &str,
    consumer: &str,
    epoch: u64,
    stream: &str,
    partition: i32,
) -> Result<Member> {
    let mut watch = ctx.raft.metadata().watch();
    let deadline = tokio::time::Instant::now() + EPOCH_WAIT;
    loop {
        let state = watch.borrow_and_update().state.clone();
        let g = state.consumer_groups.get(group).ok_or_else(|| {
            ServerError::FailedPrecondition(format!("consumer group {group} does not exist"))
        })?;
        if epoch < g.epoch {
            return Err(ServerError::FailedPrecondition(format!(
                "stale epoch {epoch} for consumer group {group} (current {})",
                g.epoch
            )));
        }
        if epoch == g.epoch {
            if !assigned(&state, group, consumer, stream, partition) {
                return Err(ServerError::FailedPrecondition(format!(
                    "partition {stream}/{partition} is not assigned to {consumer} in group {group}"
                )));
            }
            return Ok(Member {
                group: group.to_owned(),
                consumer: consumer.to_owned(),
                epoch,
            });
        }
        if tokio::time::timeout_at(deadline, watch.changed())
            .await
            .is_err()
        {
            return Err(ServerError::FailedPrecondition(format!(
                "epoch {epoch} of consumer group {group} is unknown here"
            )));
        }
    }
}

/// Closes a member's subscription (FailedPrecondition, which go-liftbridge reads as "paused";
/// the member's assignment loop has moved on by then) once a later epoch takes its partition
/// away, or when the subscriber leaves.
pub fn fence(
    ctx: Ctx,
    m: Member,
    stream: String,
    partition: i32,
    tx: crate::api::subscribe::FrameTx,
) {
    tokio::spawn(async move {
        let mut watch = ctx.raft.metadata().watch();
        let mut stop = ctx.shutdown.clone();
        loop {
            let fenced = {
                let v = watch.borrow_and_update();
                let state = &v.state;
                match state.consumer_groups.get(&m.group) {
                    None => true,
                    Some(g) => {
                        g.epoch > m.epoch
                            && !assigned(state, &m.group, &m.consumer, &stream, partition)
                    }
                }
            };
            if fenced {
                let msg = format!(
                    "partition {stream}/{partition} is no longer assigned to {} in group {}",
                    m.consumer, m.group
                );
                let _ = tx
                    .send(Err(ServerError::FailedPrecondition(msg).into()))
                    .await;
                return;
            }
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => return,
                _ = tx.closed() => return,
                r = watch.changed() => if r.is_err() { return },
            }
        }
    });
}
