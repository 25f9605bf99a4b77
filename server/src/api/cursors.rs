//! SetCursor and FetchCursor (spec §4.5, §5, §11), and the `__cursors` stream that routes them.
//!
//! Where cursors live, and why: Liftbridge appends cursors to the compacted internal stream
//! `__cursors` and scans it back; only the server ever reads it. Drawbridge keeps the cursor
//! *values* in the metadata raft group (`MetadataState::cursors`, written by
//! `MetadataCommand::SetCursor` on the metadata leader): they are then durable (fsync before
//! commit), replicated on a majority, survive any single failover, are deleted with their
//! stream, and need no log scan or cache. The `__cursors` stream still exists with
//! `cursors.stream.partitions` partitions (replication factor
//! `cursors.stream.replication.factor`), because clients compute the cursor partition from its
//! partition count and send the call to that partition's leader (spec §11); the server keeps
//! that contract, so go-liftbridge and the Drawbridge client route as before.
//!
//! Invariants:
//! 1. The cursor key is `<cursorId>,<stream>,<partition>`; its `__cursors` partition is
//!    CRC-32 (IEEE)(key) mod the partition count in metadata. Only that partition's current
//!    leader answers (else FailedPrecondition, so the client refreshes metadata and retries).
//! 2. Empty stream or cursor id → InvalidArgument; no `__cursors` stream → Internal ("Cursors
//!    stream does not exist"); unknown stream or partition → NotFound; unknown cursor → -1.
//! 3. Read your writes: SetCursor returns once this node applied the value it wrote (bounded),
//!    and every call for one key is served by one node (the partition leader) at a time. A new
//!    cursor-partition leader serves its own applied metadata, which trails the metadata leader
//!    by at most a replication round.
//! 4. The metadata leader creates `__cursors` once, when `cursors.stream.partitions` > 0 and it
//!    does not exist (retrying until the cluster has enough brokers for its replication factor),
//!    with `auto.pause.time.ms` = `cursors.stream.auto.pause.time`.
//! 5. A SetCursor counts as a message taken in by its cursor partition (stats, and so the
//!    auto-pause idle clock), and resumes that partition first when it is paused, as a publish
//!    to `__cursors` does in Liftbridge. FetchCursor neither resumes nor counts.

use std::time::Duration;

use drawbridge_proto::api::{
    FetchCursorRequest, FetchCursorResponse, SetCursorRequest, SetCursorResponse,
};
use drawbridge_raft::metadata::state::MetadataState;
use drawbridge_raft::{MetadataCommand, PartitionId};
use tracing::{debug, info};

use crate::cluster::{forward, CreateStreamSpec, Propagated};
use crate::context::Ctx;
use crate::error::{Result, ServerError};

/// Name of the internal cursors stream.
pub const CURSORS_STREAM: &str = "__cursors";
/// How long SetCursor waits for this node to apply its own write.
const APPLY_WAIT: Duration = Duration::from_secs(5);
/// Period of the `__cursors` creation check.
const CREATE_TICK: Duration = Duration::from_secs(1);

/// The `__cursors` partition of a cursor (invariant 1).
pub fn cursor_partition(cursor_id: &str, stream: &str, partition: i32, partitions: usize) -> i32 {
    let key = format!("{cursor_id},{stream},{partition}");
    let n = u32::try_from(partitions).unwrap_or(u32::MAX).max(1);
    i32::try_from(crc32fast::hash(key.as_bytes()) % n).unwrap_or(0)
}

/// Validates a request and checks that this node leads its cursor partition (invariants 1, 2);
/// returns that `__cursors` partition.
fn route(
    ctx: &Ctx,
    state: &MetadataState,
    cursor_id: &str,
    stream: &str,
    partition: i32,
) -> Result<i32> {
    if stream.is_empty() {
        return Err(ServerError::InvalidArgument("No stream provided".into()));
    }
    if cursor_id.is_empty() {
        return Err(ServerError::InvalidArgument("No cursorId provided".into()));
    }
    let cursors = state
        .streams
        .get(CURSORS_STREAM)
        .filter(|s| !s.partitions.is_empty())
        .ok_or_else(|| ServerError::Internal("Cursors stream does not exist".into()))?;
    let p = cursor_partition(cursor_id, stream, partition, cursors.partitions.len());
    let leads = ctx
        .partitions
        .get(&PartitionId::new(CURSORS_STREAM, p))
        .is_some_and(|l| l.replica.is_leader());
    if !leads {
        return Err(ServerError::FailedPrecondition(format!(
            "Server not leader for cursors partition {p}"
        )));
    }
    if state
        .streams
        .get(stream)
        .and_then(|s| s.partitions.get(&partition))
        .is_none()
    {
        return Err(ServerError::NotFound(format!(
            "No such partition {stream}/{partition}"
        )));
    }
    Ok(p)
}

/// SetCursor.
pub async fn set_cursor(ctx: &Ctx, r: SetCursorRequest) -> Result<SetCursorResponse> {
    let state = ctx.raft.metadata().state().state;
    let cp = route(ctx, &state, &r.cursor_id, &r.stream, r.partition)?;
    // Invariant 5.
    let paused = state
        .streams
        .get(CURSORS_STREAM)
        .and_then(|s| s.partitions.get(&cp))
        .is_some_and(|p| p.paused);
    if paused {
        info!(
            partition = cp,
            "cursor set on a paused cursors partition: resuming"
        );
        crate::api::pause::resume(ctx, CURSORS_STREAM, cp).await?;
    }
    if let Some(local) = ctx.partitions.get(&PartitionId::new(CURSORS_STREAM, cp)) {
        let now = crate::acks::now_ns();
        let bytes = r.cursor_id.len() + r.stream.len() + 12;
        local.stats.received(1, bytes as u64, now, now);
    }
    let key = (r.cursor_id.clone(), r.stream.clone(), r.partition);
    let cmd = MetadataCommand::SetCursor {
        cursor_id: r.cursor_id,
        stream: r.stream,
        partition: r.partition,
        offset: r.offset,
    };
    forward(ctx, Propagated::Command(cmd)).await?;
    // Invariant 3: wait until this node serves the value (or a later write moved it on).
    let mut watch = ctx.raft.metadata().watch();
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    while watch.borrow_and_update().state.cursors.get(&key) != Some(&r.offset) {
        if tokio::time::timeout_at(deadline, watch.changed())
            .await
            .is_err()
        {
            debug!(?key, "cursor committed, not yet applied here");
            break;
        }
    }
    Ok(SetCursorResponse {})
}

/// FetchCursor.
pub fn fetch_cursor(ctx: &Ctx, r: FetchCursorRequest) -> Result<FetchCursorResponse> {
    let state = ctx.raft.metadata().state().state;
    route(ctx, &state, &r.cursor_id, &r.stream, r.partition)?;
    let offset = state
        .cursors
        .get(&(r.cursor_id, r.stream, r.partition))
        .copied()
        .unwrap_or(-1);
    Ok(FetchCursorResponse { offset })
}

/// Creates `__cursors` from the metadata leader when enabled and absent (invariant 4); ends once
/// the stream exists, or on shutdown.
pub fn spawn_stream_creator(ctx: Ctx) {
    let partitions = ctx.config.cursors.stream_partitions;
    if partitions == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut stop = ctx.shutdown.clone();
        loop {
            let meta = ctx.raft.metadata();
            if meta.state().state.streams.contains_key(CURSORS_STREAM) {
                return;
            }
            if meta.is_leader() {
                let spec = CreateStreamSpec {
                    name: CURSORS_STREAM.into(),
                    subject: ctx.subject("cursors"),
                    group: String::new(),
                    replication_factor: ctx.config.cursors.stream_replication_factor,
                    partitions: i32::try_from(partitions).unwrap_or(i32::MAX),
                    config: [
                        ("compact.enabled".to_owned(), "true".to_owned()),
                        (
                            crate::auto_pause::KEY_AUTO_PAUSE_TIME_MS.to_owned(),
                            ctx.config
                                .cursors
                                .stream_auto_pause_time
                                .as_millis()
                                .to_string(),
                        ),
                    ]
                    .into(),
                    created_at_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                    encryption: false,
                };
                match forward(&ctx, Propagated::CreateStream(spec)).await {
                    Ok(()) => info!(partitions, "created the cursors stream"),
                    Err(e) => debug!(error = %e, "creating the cursors stream failed; will retry"),
                }
            }
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => return,
                _ = tokio::time::sleep(CREATE_TICK) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_partition_is_crc32_of_the_key() {
        let expected = (crc32fast::hash(b"c1,orders,2") % 5) as i32;
        assert_eq!(cursor_partition("c1", "orders", 2, 5), expected);
        assert_eq!(cursor_partition("c1", "orders", 2, 1), 0);
        assert_eq!(cursor_partition("c1", "orders", 2, 0), 0);
    }
}
