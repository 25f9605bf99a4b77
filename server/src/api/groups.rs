//! The consumer-group RPCs (spec §2 rows 13–16, §4.6, §5, §11): JoinConsumerGroup,
//! LeaveConsumerGroup and ReportConsumerGroupCoordinator run on the metadata leader
//! ([`crate::cluster::forward_for_epoch`]); FetchConsumerGroupAssignments is answered by the
//! group's coordinator from its applied metadata, and is the member's heartbeat.
//!
//! Invariants:
//! - Arguments are validated before anything is forwarded (InvalidArgument).
//! - A Join that returns OK has been committed; its answer (coordinator, epoch) is read from
//!   this node's state once it applied the join, so the member can route its next call.
//! - FetchConsumerGroupAssignments answers only when this node is the coordinator, the caller is
//!   a member and its epoch is the current one (else FailedPrecondition, which sends
//!   go-liftbridge to FetchMetadata for the new coordinator and epoch).

use std::time::Duration;

use drawbridge_proto::api::{
    FetchConsumerGroupAssignmentsRequest, FetchConsumerGroupAssignmentsResponse,
    JoinConsumerGroupRequest, JoinConsumerGroupResponse, LeaveConsumerGroupRequest,
    LeaveConsumerGroupResponse, PartitionAssignment, ReportConsumerGroupCoordinatorRequest,
    ReportConsumerGroupCoordinatorResponse,
};
use drawbridge_raft::MetadataCommand;

use crate::cluster::{forward, forward_for_epoch, Propagated};
use crate::context::Ctx;
use crate::error::{Result, ServerError};
use crate::groups::GroupOp;
use crate::identity::node_id_of;

/// How long a Join waits for this node to apply its own join.
const APPLY_WAIT: Duration = Duration::from_secs(5);

fn required(what: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Err(ServerError::InvalidArgument(format!("{what} is required")));
    }
    Ok(())
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// JoinConsumerGroup.
pub async fn join(ctx: &Ctx, r: JoinConsumerGroupRequest) -> Result<JoinConsumerGroupResponse> {
    required("groupId", &r.group_id)?;
    required("consumerId", &r.consumer_id)?;
    if r.streams.is_empty() || r.streams.iter().any(String::is_empty) {
        return Err(ServerError::InvalidArgument("streams are required".into()));
    }
    let op = Propagated::Group(GroupOp::Join {
        group: r.group_id.clone(),
        consumer: r.consumer_id.clone(),
        streams: r.streams.clone(),
    });
    let epoch = forward_for_epoch(ctx, op)
        .await?
        .ok_or_else(|| ServerError::Internal("join answered without an epoch".into()))?;
    // Wait until this node applied the join (or something later), to name the coordinator.
    let mut watch = ctx.raft.metadata().watch();
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    let coordinator = loop {
        let found = watch
            .borrow_and_update()
            .state
            .consumer_groups
            .get(&r.group_id)
            .filter(|g| g.epoch >= epoch && g.members.contains_key(&r.consumer_id))
            .map(|g| g.coordinator);
        if let Some(c) = found {
            break c;
        }
        if tokio::time::timeout_at(deadline, watch.changed())
            .await
            .is_err()
        {
            return Err(ServerError::NotFound(format!(
                "consumer group {} vanished after the join",
                r.group_id
            )));
        }
    };
    Ok(JoinConsumerGroupResponse {
        coordinator: ctx.server_id_of(coordinator),
        epoch,
        consumer_timeout: nanos(ctx.config.groups.consumer_timeout),
        coordinator_timeout: nanos(ctx.config.groups.coordinator_timeout),
    })
}

/// LeaveConsumerGroup.
pub async fn leave(ctx: &Ctx, r: LeaveConsumerGroupRequest) -> Result<LeaveConsumerGroupResponse> {
    required("groupId", &r.group_id)?;
    required("consumerId", &r.consumer_id)?;
    let op = Propagated::Command(MetadataCommand::LeaveConsumerGroup {
        group: r.group_id,
        consumer: r.consumer_id,
        expected_epoch: None,
        expired: false,
    });
    forward(ctx, op).await?;
    Ok(LeaveConsumerGroupResponse {})
}

/// FetchConsumerGroupAssignments (the member's heartbeat).
pub fn fetch_assignments(
    ctx: &Ctx,
    r: FetchConsumerGroupAssignmentsRequest,
) -> Result<FetchConsumerGroupAssignmentsResponse> {
    required("groupId", &r.group_id)?;
    required("consumerId", &r.consumer_id)?;
    let state = ctx.raft.metadata().state().state;
    let g = state
        .consumer_groups
        .get(&r.group_id)
        .ok_or_else(|| ServerError::NotFound(format!("consumer group {} not found", r.group_id)))?;
    if g.coordinator != ctx.node_id {
        return Err(ServerError::FailedPrecondition(format!(
            "server not coordinator of group {}",
            r.group_id
        )));
    }
    if !g.members.contains_key(&r.consumer_id) {
        return Err(ServerError::FailedPrecondition(format!(
            "{} is not a member of group {}",
            r.consumer_id, r.group_id
        )));
    }
    if g.epoch != r.epoch {
        return Err(ServerError::FailedPrecondition(format!(
            "epoch {} of group {} is not the current epoch {}",
            r.epoch, r.group_id, g.epoch
        )));
    }
    ctx.groups.heartbeat(&r.group_id, &r.consumer_id);
    let assignments = state
        .assignments(&r.group_id)
        .remove(&r.consumer_id)
        .unwrap_or_default()
        .into_iter()
        .map(|(stream, partitions)| PartitionAssignment { stream, partitions })
        .collect();
    Ok(FetchConsumerGroupAssignmentsResponse {
        epoch: g.epoch,
        assignments,
    })
}

/// ReportConsumerGroupCoordinator.
pub async fn report(
    ctx: &Ctx,
    r: ReportConsumerGroupCoordinatorRequest,
) -> Result<ReportConsumerGroupCoordinatorResponse> {
    required("groupId", &r.group_id)?;
    required("consumerId", &r.consumer_id)?;
    required("coordinator", &r.coordinator)?;
    let op = Propagated::Group(GroupOp::Report {
        group: r.group_id,
        consumer: r.consumer_id,
        coordinator: node_id_of(&r.coordinator),
        epoch: r.epoch,
    });
    forward_for_epoch(ctx, op).await?;
    Ok(ReportConsumerGroupCoordinatorResponse {})
}
