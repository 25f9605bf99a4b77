//! Auto-pause: a partition leader pauses a partition that took no message for
//! `streams.auto.pause.time` (per-stream override `auto.pause.time.ms`; 0 = never).
//!
//! Invariants:
//! - Only the node whose ingest runs for a partition (its leader) pauses it, with a committed
//!   `PauseStream` of that one partition (`resumeAll` false); internal streams (`__*`) are
//!   never auto-paused, except `__cursors`, whose idle time is `cursors.stream.auto.pause.time`
//!   (its partitions count a SetCursor as a message; a SetCursor resumes them).
//! - Idle time counts from the latest of: the last message taken in, the last pause-state change
//!   (a resume), and the moment this task first saw the partition led and unpaused here (so a
//!   new leader or a restart grants a full period).
//! - With `auto.pause.disable.if.subscribers`, an open subscription on the leader restarts the
//!   idle period, so a subscribed partition is never paused.
//! - One task per node wakes every `TICK`; it ends at shutdown.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use drawbridge_raft::metadata::state::StreamMeta;
use drawbridge_raft::{MetadataCommand, PartitionId};
use tracing::{debug, info};

use crate::acks::now_ns;
use crate::api::cursors::CURSORS_STREAM;
use crate::cluster::{forward, Propagated};
use crate::context::Ctx;

/// How often idle partitions are looked for.
const TICK: Duration = Duration::from_millis(250);

/// Per-stream override of `streams.auto.pause.time`, in ms.
pub const KEY_AUTO_PAUSE_TIME_MS: &str = "auto.pause.time.ms";
/// Per-stream override of `streams.auto.pause.disable.if.subscribers`.
pub const KEY_AUTO_PAUSE_DISABLE_IF_SUBSCRIBERS: &str = "auto.pause.disable.if.subscribers";

/// The idle time after which a partition of `s` is paused (`None` = never) and whether open
/// subscriptions prevent it.
fn policy(ctx: &Ctx, s: &StreamMeta) -> (Option<Duration>, bool) {
    let time = s
        .config
        .get(KEY_AUTO_PAUSE_TIME_MS)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(ctx.config.streams.auto_pause_time, Duration::from_millis);
    let disable = s
        .config
        .get(KEY_AUTO_PAUSE_DISABLE_IF_SUBSCRIBERS)
        .map_or(ctx.config.streams.auto_pause_disable_if_subscribers, |v| {
            v == "true"
        });
    ((!time.is_zero()).then_some(time), disable)
}

/// Starts the node's auto-pause task.
pub fn spawn(ctx: Ctx) {
    tokio::spawn(async move {
        let mut stop = ctx.shutdown.clone();
        // When this task first saw each partition led here and unpaused (ns).
        let mut seen: HashMap<PartitionId, i64> = HashMap::new();
        loop {
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => break,
                _ = tokio::time::sleep(TICK) => {}
            }
            tick(&ctx, &mut seen).await;
        }
    });
}

async fn tick(ctx: &Ctx, seen: &mut HashMap<PartitionId, i64>) {
    let state = ctx.raft.metadata().state().state;
    let now = now_ns();
    let mut live = HashMap::new();
    for (id, local) in ctx.partitions.all() {
        let Some(s) = state.streams.get(&id.stream) else {
            continue;
        };
        let Some(p) = s.partitions.get(&id.partition) else {
            continue;
        };
        let internal = id.stream.starts_with("__") && id.stream != CURSORS_STREAM;
        if internal || p.paused || !local.ingesting.load(Ordering::Acquire) {
            continue;
        }
        let (Some(time), disable_if_subscribers) = policy(ctx, s) else {
            continue;
        };
        let mut since = seen.get(&id).copied().unwrap_or(now);
        if disable_if_subscribers && local.stats.subscribers.load(Ordering::Relaxed) > 0 {
            since = now;
        }
        live.insert(id.clone(), since);
        let (_, latest_received) = local.stats.received_timestamps();
        let last = since.max(latest_received).max(p.pause_times.latest_ns);
        let idle = Duration::from_nanos(u64::try_from(now.saturating_sub(last)).unwrap_or(0));
        if idle < time {
            continue;
        }
        info!(partition = %id, idle_ms = idle.as_millis(), "idle partition: auto-pausing");
        let cmd = MetadataCommand::PauseStream {
            name: id.stream.clone(),
            partitions: vec![id.partition],
            resume_all: false,
            at_ns: now,
        };
        if let Err(e) = forward(ctx, Propagated::Command(cmd)).await {
            debug!(partition = %id, error = %e, "auto-pause failed; will retry");
        }
        live.remove(&id);
    }
    *seen = live;
}
