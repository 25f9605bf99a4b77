//! The `__activity` stream (spec §4.7, §12 `activity.stream.*`): with
//! `activity.stream.enabled`, the metadata leader creates the stream (one partition, subject
//! `<namespace>.activity`, a replica on every server) and publishes every metadata operation
//! the metadata group recorded ([`drawbridge_raft::metadata::activity`]) as an
//! `ActivityStreamEvent` whose `id` is the operation's raft log index.
//!
//! Invariants:
//! - Only the metadata leader publishes, in raft order, one event at a time with the configured
//!   ack policy and timeout; after a run of acknowledged events it commits `ActivityPublished`
//!   up to the last one, which removes them from the replicated state.
//! - At least once: an event is removed only after its publish was acknowledged; a new leader
//!   (or this one after a failed publish) starts again at the oldest event still recorded, so
//!   an event may repeat (with the same id), as Liftbridge allows.
//! - The task wakes on every metadata change and at least every `RETRY`; it ends at shutdown.

use std::time::Duration;

use drawbridge_proto::api::{self, ActivityStreamEvent, ActivityStreamOp, PublishRequest};
use drawbridge_raft::metadata::activity::{ActivityOp, ACTIVITY_STREAM};
use drawbridge_raft::MetadataCommand;
use prost::Message as _;
use tracing::{debug, info, warn};

use crate::cluster::{execute, forward, CreateStreamSpec, Propagated};
use crate::config::model::AckPolicy;
use crate::context::Ctx;

/// How often a leader with unpublished events retries after a failure.
const RETRY: Duration = Duration::from_secs(1);
/// Events published per round before their removal is committed.
const ROUND: usize = 256;

/// The protobuf event of a recorded operation.
pub fn to_event(id: u64, op: &ActivityOp) -> ActivityStreamEvent {
    let mut e = ActivityStreamEvent {
        id,
        ..Default::default()
    };
    let kind = match op.clone() {
        ActivityOp::CreateStream { stream, partitions } => {
            e.create_stream_op = Some(api::CreateStreamOp { stream, partitions });
            ActivityStreamOp::CreateStream
        }
        ActivityOp::DeleteStream { stream } => {
            e.delete_stream_op = Some(api::DeleteStreamOp { stream });
            ActivityStreamOp::DeleteStream
        }
        ActivityOp::PauseStream {
            stream,
            partitions,
            resume_all,
        } => {
            e.pause_stream_op = Some(api::PauseStreamOp {
                stream,
                partitions,
                resume_all,
            });
            ActivityStreamOp::PauseStream
        }
        ActivityOp::ResumeStream { stream, partitions } => {
            e.resume_stream_op = Some(api::ResumeStreamOp { stream, partitions });
            ActivityStreamOp::ResumeStream
        }
        ActivityOp::SetStreamReadonly {
            stream,
            partitions,
            readonly,
        } => {
            e.set_stream_readonly_op = Some(api::SetStreamReadonlyOp {
                stream,
                partitions,
                readonly,
            });
            ActivityStreamOp::SetStreamReadonly
        }
        ActivityOp::JoinConsumerGroup {
            group,
            consumer,
            streams,
        } => {
            e.join_consumer_group_op = Some(api::JoinConsumerGroupOp {
                group_id: group,
                consumer_id: consumer,
                streams,
            });
            ActivityStreamOp::JoinConsumerGroup
        }
        ActivityOp::LeaveConsumerGroup {
            group,
            consumer,
            expired,
        } => {
            e.leave_consumer_group_op = Some(api::LeaveConsumerGroupOp {
                group_id: group,
                consumer_id: consumer,
                expired,
            });
            ActivityStreamOp::LeaveConsumerGroup
        }
    };
    e.op = kind as i32;
    e
}

/// Starts the activity publisher when `activity.stream.enabled`.
pub fn spawn(ctx: Ctx) {
    if !ctx.config.activity.stream_enabled {
        return;
    }
    tokio::spawn(async move {
        let mut stop = ctx.shutdown.clone();
        let mut watch = ctx.raft.metadata().watch();
        loop {
            drop(watch.borrow_and_update());
            let wait = if ctx.raft.metadata().is_leader() {
                run_once(&ctx).await
            } else {
                RETRY
            };
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => break,
                r = watch.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}

/// One round on the metadata leader; returns how long to wait at most before the next.
async fn run_once(ctx: &Ctx) -> Duration {
    let state = ctx.raft.metadata().state().state;
    let Some(stream) = state.streams.get(ACTIVITY_STREAM) else {
        let spec = CreateStreamSpec {
            name: ACTIVITY_STREAM.into(),
            subject: format!("{}.activity", ctx.config.clustering.namespace),
            group: String::new(),
            replication_factor: -1,
            partitions: 1,
            config: Default::default(),
            created_at_ms: crate::acks::now_ns() / 1_000_000,
            encryption: false,
        };
        match execute(ctx, Propagated::CreateStream(spec)).await {
            Ok(_) => info!("activity stream created"),
            Err(e) => debug!(error = %e, "creating the activity stream failed; will retry"),
        }
        return RETRY;
    };
    if state.activity.is_empty() {
        return Duration::from_secs(3600);
    }
    if stream.partitions.get(&0).is_none_or(|p| p.leader.is_none()) {
        return RETRY;
    }
    let policy = match ctx.config.activity.publish_ack_policy {
        AckPolicy::Leader => api::AckPolicy::Leader,
        AckPolicy::All => api::AckPolicy::All,
        AckPolicy::None => api::AckPolicy::None,
    };
    let mut through = None;
    for (id, op) in state.activity.iter().take(ROUND) {
        let req = PublishRequest {
            stream: ACTIVITY_STREAM.into(),
            value: to_event(*id, op).encode_to_vec().into(),
            ack_policy: policy as i32,
            expected_offset: -1,
            ..Default::default()
        };
        let timeout = Some(ctx.config.activity.publish_timeout);
        if let Err(e) = crate::api::publish::publish(ctx, req, timeout).await {
            warn!(id, error = %e, "publishing an activity event failed; will retry");
            break;
        }
        through = Some(*id);
    }
    match through {
        Some(through) => {
            let cmd = MetadataCommand::ActivityPublished { through };
            if let Err(e) = forward(ctx, Propagated::Command(cmd)).await {
                debug!(error = %e, "recording published activity failed; will retry");
                return RETRY;
            }
            Duration::ZERO
        }
        None => RETRY,
    }
}
