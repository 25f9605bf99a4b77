//! CreateStream and DeleteStream: validated on the receiving server, executed on the metadata
//! leader ([`crate::cluster::forward`]).
//!
//! Invariants: a CreateStream that returns OK has been committed to the metadata group; it then
//! waits (bounded) until every partition has a leader that is recording its subject, so a
//! publish right after creation is not lost. Durations in per-stream overrides are
//! milliseconds, stored under Liftbridge's `streams.*` key names. A stream is encrypted at rest
//! when the request asks for it, or leaves it unset and `streams.encryption` is on; without a
//! master key that is FailedPrecondition ([`crate::encryption`]).

use std::collections::BTreeMap;
use std::time::Duration;

use drawbridge_proto::api::{
    CreateStreamRequest, CreateStreamResponse, DeleteStreamRequest, DeleteStreamResponse,
};

use crate::auto_pause::{KEY_AUTO_PAUSE_DISABLE_IF_SUBSCRIBERS, KEY_AUTO_PAUSE_TIME_MS};
use crate::cluster::{forward, CreateStreamSpec, Propagated};
use crate::context::Ctx;
use crate::error::{Result, ServerError};
use crate::names;
use crate::partitions::KEY_OCC;

/// How long CreateStream waits for partition leaders after the stream is created.
const LEADER_WAIT: Duration = Duration::from_secs(10);

fn overrides(r: &CreateStreamRequest) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut i64s = |k: &str, v: Option<i64>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v.to_string());
        }
    };
    i64s(
        "retention.max.bytes",
        r.retention_max_bytes.map(|v| v.value),
    );
    i64s(
        "retention.max.messages",
        r.retention_max_messages.map(|v| v.value),
    );
    i64s("retention.max.age.ms", r.retention_max_age.map(|v| v.value));
    i64s("cleaner.interval.ms", r.cleaner_interval.map(|v| v.value));
    i64s("segment.max.bytes", r.segment_max_bytes.map(|v| v.value));
    i64s("segment.max.age.ms", r.segment_max_age.map(|v| v.value));
    i64s(KEY_AUTO_PAUSE_TIME_MS, r.auto_pause_time.map(|v| v.value));
    i64s(
        "compact.max.goroutines",
        r.compact_max_goroutines.map(|v| i64::from(v.value)),
    );
    i64s("min.isr", r.min_isr.map(|v| i64::from(v.value)));
    let mut bools = |k: &str, v: Option<bool>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v.to_string());
        }
    };
    bools("compact.enabled", r.compact_enabled.map(|v| v.value));
    bools(
        KEY_AUTO_PAUSE_DISABLE_IF_SUBSCRIBERS,
        r.auto_pause_disable_if_subscribers.map(|v| v.value),
    );
    bools(KEY_OCC, r.optimistic_concurrency_control.map(|v| v.value));
    m
}

/// CreateStream (spec §2, §5).
pub async fn create_stream(ctx: &Ctx, r: CreateStreamRequest) -> Result<CreateStreamResponse> {
    names::check_stream_name(&r.name)?;
    names::check_stream_subject(&r.subject)?;
    if r.partitions < 0 {
        return Err(ServerError::InvalidArgument(format!(
            "Invalid number of partitions {}",
            r.partitions
        )));
    }
    if r.replication_factor < -1 {
        return Err(ServerError::InvalidArgument(format!(
            "Invalid replicationFactor {}",
            r.replication_factor
        )));
    }
    for (k, v) in [
        ("retentionMaxBytes", r.retention_max_bytes),
        ("retentionMaxMessages", r.retention_max_messages),
        ("retentionMaxAge", r.retention_max_age),
        ("cleanerInterval", r.cleaner_interval),
        ("segmentMaxBytes", r.segment_max_bytes),
        ("segmentMaxAge", r.segment_max_age),
        ("autoPauseTime", r.auto_pause_time),
    ] {
        if v.is_some_and(|v| v.value < 0) {
            return Err(ServerError::InvalidArgument(format!(
                "{k} must not be negative"
            )));
        }
    }
    // Encryption at rest: asked for, else `streams.encryption`. The metadata leader generates
    // the data keys (and checks its own key); this server checks first so a client gets a
    // clear error from the server it asked.
    let encryption = r
        .encryption
        .map_or(ctx.config.streams.encryption, |e| e.value);
    if encryption && !ctx.keyring.can_encrypt() {
        return Err(ServerError::FailedPrecondition(format!(
            "encryption at rest requested for stream {}, but this server has no valid {}",
            r.name,
            crate::encryption::KEY_VAR
        )));
    }
    let created_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let spec = CreateStreamSpec {
        name: r.name.clone(),
        subject: r.subject.clone(),
        group: r.group.clone(),
        replication_factor: r.replication_factor,
        partitions: r.partitions.max(1),
        config: overrides(&r),
        created_at_ms,
        encryption,
    };
    forward(ctx, Propagated::CreateStream(spec)).await?;
    wait_for_leaders(ctx, &r.name).await;
    Ok(CreateStreamResponse {})
}

/// Waits (bounded) until the local metadata view shows a leader for every partition of `name`.
async fn wait_for_leaders(ctx: &Ctx, name: &str) {
    let mut watch = ctx.raft.metadata().watch();
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        let ready = watch
            .borrow_and_update()
            .state
            .streams
            .get(name)
            .is_some_and(|s| s.partitions.values().all(|p| p.leader.is_some()));
        if ready {
            return;
        }
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                tracing::warn!(
                    stream = name,
                    "stream created, but not all partitions have a leader yet"
                );
                return;
            }
        }
    }
}

/// DeleteStream (spec §2, §5).
pub async fn delete_stream(ctx: &Ctx, r: DeleteStreamRequest) -> Result<DeleteStreamResponse> {
    names::check_stream_name(&r.name)?;
    forward(ctx, Propagated::DeleteStream { name: r.name }).await?;
    Ok(DeleteStreamResponse {})
}
