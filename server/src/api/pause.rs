//! PauseStream, SetStreamReadonly and resuming a paused partition (spec §4.1, §5, §9).
//!
//! Invariants:
//! - The paused and readonly flags live in the metadata group only: a change is one committed
//!   metadata command (with the proposer's clock as its timestamp), so it is replicated, survives
//!   restarts and shows in FetchMetadata on every node.
//! - A paused partition stores nothing: its leader's ingest resumes it (a committed
//!   `ResumePartition`, which resumes the whole stream when it was paused with `resumeAll`)
//!   before it appends a message published to it, over gRPC or straight on NATS
//!   ([`crate::ingest`]). Subscribe resumes it when asked (`resume`), and otherwise ends with
//!   FailedPrecondition ([`super::subscribe`]).
//! - A readonly partition refuses API publishes (FailedPrecondition, [`super::publish`]) and
//!   drops NATS messages; its subscribers end with ResourceExhausted once they have read every
//!   record.

use std::time::Duration;

use drawbridge_proto::api::{
    PauseStreamRequest, PauseStreamResponse, SetStreamReadonlyRequest, SetStreamReadonlyResponse,
};
use drawbridge_raft::MetadataCommand;

use crate::acks::now_ns;
use crate::cluster::{forward, Propagated};
use crate::context::Ctx;
use crate::error::{Result, ServerError};

/// How long a resume waits for the local metadata view to show it after the commit.
const RESUME_VISIBLE: Duration = Duration::from_secs(5);

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(ServerError::InvalidArgument(
            "No stream name provided".into(),
        ));
    }
    Ok(())
}

/// PauseStream (spec §2, §5): empty `partitions` = all.
pub async fn pause_stream(ctx: &Ctx, r: PauseStreamRequest) -> Result<PauseStreamResponse> {
    check_name(&r.name)?;
    let cmd = MetadataCommand::PauseStream {
        name: r.name,
        partitions: r.partitions,
        resume_all: r.resume_all,
        at_ns: now_ns(),
    };
    forward(ctx, Propagated::Command(cmd)).await?;
    Ok(PauseStreamResponse {})
}

/// SetStreamReadonly (spec §2, §5): empty `partitions` = all.
pub async fn set_stream_readonly(
    ctx: &Ctx,
    r: SetStreamReadonlyRequest,
) -> Result<SetStreamReadonlyResponse> {
    check_name(&r.name)?;
    let cmd = MetadataCommand::SetStreamReadonly {
        name: r.name,
        partitions: r.partitions,
        readonly: r.readonly,
        at_ns: now_ns(),
    };
    forward(ctx, Propagated::Command(cmd)).await?;
    Ok(SetStreamReadonlyResponse {})
}

/// Whether the local metadata view shows the partition paused (`false` if it does not exist).
pub fn is_paused(ctx: &Ctx, stream: &str, partition: i32) -> bool {
    ctx.raft
        .metadata()
        .state()
        .state
        .streams
        .get(stream)
        .and_then(|s| s.partitions.get(&partition))
        .is_some_and(|p| p.paused)
}

/// Resumes a paused partition (and its stream's other paused partitions under `resumeAll`),
/// then waits (bounded) until the local metadata view shows it resumed.
pub async fn resume(ctx: &Ctx, stream: &str, partition: i32) -> Result<()> {
    let cmd = MetadataCommand::ResumePartition {
        stream: stream.to_owned(),
        partition,
        at_ns: now_ns(),
    };
    forward(ctx, Propagated::Command(cmd)).await?;
    let mut watch = ctx.raft.metadata().watch();
    let deadline = tokio::time::Instant::now() + RESUME_VISIBLE;
    loop {
        let paused = watch
            .borrow_and_update()
            .state
            .streams
            .get(stream)
            .and_then(|s| s.partitions.get(&partition))
            .is_some_and(|p| p.paused);
        if !paused {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                return Err(ServerError::Internal(format!(
                    "resume of {stream}/{partition} not visible in time"
                )))
            }
        }
    }
}
