//! The operations HTTP endpoint on `metrics.listen` (off when unset; an empty host binds
//! 127.0.0.1): Prometheus text metrics on `/metrics`, liveness on `/healthz`, readiness on
//! `/readyz`.
//!
//! - `/healthz`: 200 while the process serves HTTP at all.
//! - `/readyz`: 200 once this node is a member of a metadata group that has a leader, NATS is
//!   connected, the metadata group has not stopped on a fatal error and every partition
//!   assigned here is hosted (and recording where this node leads);
//!   503 with the first unmet condition otherwise.
//! - `/metrics`: gauges and counters computed when scraped (no background collection), in the
//!   Prometheus text format 0.0.4. Names follow Prometheus conventions (`drawbridge_` prefix,
//!   `_total` counters, `_seconds` and `_bytes` units). The counters and histograms themselves
//!   are atomics bumped on the hot paths ([`crate::stats`]); this module only reads them.
//!
//! A deliberately small HTTP/1.1 responder (one request per connection, `Connection: close`):
//! the endpoint serves scrapers and probes, not browsers. Invariants: a request head is read
//! for at most [`READ_TIMEOUT`] and [`MAX_HEAD`] bytes; anything unparsable gets a 400, never a
//! panic; the accept loop ends when the server shuts down.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use drawbridge_raft::PartitionId;

use crate::context::Ctx;
use crate::error::{Result, ServerError};
use crate::partitions::Local;
use crate::stats::PartitionStats;

/// Longest a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
pub const MAX_HEAD: usize = 8 * 1024;

/// Binds `addr` and serves until shutdown; returns the bound address.
pub async fn serve(ctx: Ctx, addr: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ServerError::Internal(format!("metrics listener on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServerError::Internal(e.to_string()))?;
    info!(addr = %local, "metrics endpoint listening");
    let mut stop = ctx.shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => break,
                r = listener.accept() => match r {
                    Ok((conn, _)) => {
                        let ctx = ctx.clone();
                        tokio::spawn(async move {
                            if let Err(e) = handle(&ctx, conn).await {
                                debug!(error = %e, "metrics request failed");
                            }
                        });
                    }
                    Err(e) => {
                        debug!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    });
    Ok(local)
}

/// Reads the request head (up to the blank line, bounded) and returns its request line.
async fn request_line(conn: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_HEAD {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(r) => r?,
        Err(_) => return Ok(None),
    }
    let head = String::from_utf8_lossy(&buf);
    Ok(head.lines().next().map(str::to_owned))
}

async fn handle(ctx: &Ctx, mut conn: TcpStream) -> std::io::Result<()> {
    let line = request_line(&mut conn).await?.unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("", _) | (_, "") => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", "/readyz") => match unready(ctx) {
            None => ("200 OK", "text/plain", "ready\n".to_owned()),
            Some(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(ctx),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

/// The first unmet readiness condition, `None` when ready.
pub fn unready(ctx: &Ctx) -> Option<&'static str> {
    let meta = ctx.raft.metadata();
    let (voters, learners) = meta.members();
    if !voters.contains(&ctx.node_id) && !learners.contains(&ctx.node_id) {
        return Some("not a member of the metadata group");
    }
    if meta.stopped().is_some() {
        return Some("metadata group stopped on a fatal error (disk full?)");
    }
    if meta.leader().is_none() {
        return Some("metadata group has no leader");
    }
    if ctx.nats.connection_state() != async_nats::connection::State::Connected {
        return Some("NATS not connected");
    }
    if !crate::partitions::all_ready(ctx) {
        return Some("partitions still loading");
    }
    None
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The metrics text (see the module docs).
pub fn render(ctx: &Ctx) -> String {
    let mut out = String::new();
    let max_lag = ctx.config.clustering.replica_max_lag_time;
    let mut parts = ctx.partitions.all();
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    let state = ctx.raft.metadata().state().state;

    family(
        &mut out,
        "drawbridge_partition_high_watermark",
        "gauge",
        "Last committed offset of a hosted partition replica (-1: none).",
    );
    for (id, l) in &parts {
        let hw = l
            .log
            .high_watermark()
            .and_then(|v| i64::try_from(v).ok())
            .unwrap_or(-1);
        let _ = writeln!(
            out,
            "drawbridge_partition_high_watermark{{stream=\"{}\",partition=\"{}\"}} {hw}",
            label(&id.stream),
            id.partition
        );
    }
    family(
        &mut out,
        "drawbridge_partition_log_end_offset",
        "gauge",
        "Next offset the hosted partition replica's log will assign.",
    );
    for (id, l) in &parts {
        let _ = writeln!(
            out,
            "drawbridge_partition_log_end_offset{{stream=\"{}\",partition=\"{}\"}} {}",
            label(&id.stream),
            id.partition,
            l.replica.next_offset()
        );
    }
    family(
        &mut out,
        "drawbridge_partition_leader",
        "gauge",
        "1 when this node leads the partition, else 0.",
    );
    let mut under = 0u64;
    let mut leading = 0u64;
    let mut unavailable = 0u64;
    for (id, l) in &parts {
        let leads = l.replica.is_leader();
        if !l.replica.leader_is_live() {
            unavailable += 1;
        }
        if leads {
            leading += 1;
            let replicas = state
                .streams
                .get(&id.stream)
                .and_then(|s| s.partitions.get(&id.partition))
                .map_or(0, |p| p.replicas.len());
            if l.in_sync(max_lag)
                .is_some_and(|(_, isr)| isr.len() < replicas)
            {
                under += 1;
            }
        }
        let _ = writeln!(
            out,
            "drawbridge_partition_leader{{stream=\"{}\",partition=\"{}\"}} {}",
            label(&id.stream),
            id.partition,
            u8::from(leads)
        );
    }
    family(
        &mut out,
        "drawbridge_partitions_led",
        "gauge",
        "Partitions this node leads.",
    );
    let _ = writeln!(out, "drawbridge_partitions_led {leading}");
    family(
        &mut out,
        "drawbridge_partitions_under_replicated",
        "gauge",
        "Partitions led here whose ISR is smaller than their replica set.",
    );
    let _ = writeln!(out, "drawbridge_partitions_under_replicated {under}");
    family(
        &mut out,
        "drawbridge_partitions_unavailable",
        "gauge",
        "Partitions with a replica here that have no live leader (they cannot take writes).",
    );
    let _ = writeln!(out, "drawbridge_partitions_unavailable {unavailable}");
    family(
        &mut out,
        "drawbridge_metadata_leader",
        "gauge",
        "1 when this node leads the metadata group, else 0.",
    );
    let _ = writeln!(
        out,
        "drawbridge_metadata_leader {}",
        u8::from(ctx.raft.metadata().is_leader())
    );
    family(
        &mut out,
        "drawbridge_nats_connected",
        "gauge",
        "1 while the NATS connection is up, else 0.",
    );
    let _ = writeln!(
        out,
        "drawbridge_nats_connected {}",
        u8::from(ctx.nats.connection_state() == async_nats::connection::State::Connected)
    );
    partition_traffic(&mut out, &parts);
    requests(&mut out, ctx);
    family(
        &mut out,
        "drawbridge_raft_leader_elections_total",
        "counter",
        "Partition leader elections seen by this node's hosted replicas (a new leader or term).",
    );
    let _ = writeln!(
        out,
        "drawbridge_raft_leader_elections_total {}",
        ctx.stats.leader_elections.load(Ordering::Relaxed)
    );
    for (name, help, v) in [
        (
            "drawbridge_compaction_runs_total",
            "Compaction passes completed on this node's partition replicas.",
            &ctx.stats.compaction_runs,
        ),
        (
            "drawbridge_partition_group_restarts_total",
            "Partition raft groups reopened from disk after a fatal storage error stopped them.",
            &ctx.stats.partition_group_restarts,
        ),
        (
            "drawbridge_compaction_records_removed_total",
            "Records removed by compaction on this node's partition replicas.",
            &ctx.stats.compaction_records_removed,
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
    }
    family(
        &mut out,
        "drawbridge_limit_rejections_total",
        "counter",
        "What the limits refused: oversized messages, CreateStreams, Subscribes, connections.",
    );
    for (limit, n) in ctx.stats.limits.all() {
        let _ = writeln!(
            out,
            "drawbridge_limit_rejections_total{{limit=\"{limit}\"}} {n}"
        );
    }
    if let Some(free) = crate::stats::disk_free_bytes(&ctx.config.data_dir) {
        family(
            &mut out,
            "drawbridge_storage_disk_free_bytes",
            "gauge",
            "Bytes available to the server on the file system of its data directory.",
        );
        let _ = writeln!(out, "drawbridge_storage_disk_free_bytes {free}");
    }
    family(
        &mut out,
        "drawbridge_disk_full_rejections_total",
        "counter",
        "Messages this node refused as partition leader because data.dir had less than \
         storage.min.free.bytes available.",
    );
    let _ = writeln!(
        out,
        "drawbridge_disk_full_rejections_total {}",
        ctx.stats.disk.rejected()
    );
    family(
        &mut out,
        "drawbridge_disk_full_leader_handoffs_total",
        "counter",
        "Partition leaderships this node handed to a replica with space because data.dir had \
         less than storage.min.free.bytes available.",
    );
    let _ = writeln!(
        out,
        "drawbridge_disk_full_leader_handoffs_total {}",
        ctx.stats
            .disk
            .handoffs
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let io = ctx.raft.io_stats();
    for (name, help, v) in [
        (
            "drawbridge_raft_flush_rounds_total",
            "Group-commit rounds of the raft flusher.",
            io.rounds,
        ),
        (
            "drawbridge_raft_log_fsyncs_total",
            "Raft log fsyncs on the acknowledgement path.",
            io.log_syncs,
        ),
        (
            "drawbridge_raft_journal_fsyncs_total",
            "fsyncs of the raft state journal (votes, commit points).",
            io.journal_syncs,
        ),
        (
            "drawbridge_raft_disk_full_waits_total",
            "Backoff waits of metadata raft log and raft state journal writes that found the \
             disk full (ENOSPC/EDQUOT) and are retried instead of stopping the group.",
            drawbridge_raft::disk_full_waits(),
        ),
        (
            "drawbridge_raft_snapshots_abandoned_total",
            "State machine snapshots abandoned because writing them found the disk full \
             (ENOSPC/EDQUOT); the previous snapshot stays current and the log keeps everything.",
            drawbridge_raft::snapshots_abandoned(),
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {v}");
    }
    fsyncs(&mut out);
    out
}

/// fsync latency of the raft and partition logs and of the raft state journal.
fn fsyncs(out: &mut String) {
    use drawbridge_raft::fsync_stats::{snapshot, FsyncKind};
    let name = "drawbridge_fsync_duration_seconds";
    family(
        out,
        name,
        "histogram",
        "Duration of the fsyncs of the log files (raft and partition logs, kind=\"log\") and \
         of the raft state journal (kind=\"journal\").",
    );
    for kind in [FsyncKind::Log, FsyncKind::Journal] {
        let h = snapshot(kind);
        let labels = format!("kind=\"{}\"", kind.as_str());
        for (le, n) in &h.buckets {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_seconds);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }
}

/// Messages and bytes in (ingest, on the leader) and out (subscriptions) per hosted partition.
fn partition_traffic(out: &mut String, parts: &[(PartitionId, Arc<Local>)]) {
    type Get = fn(&PartitionStats) -> u64;
    let series: [(&str, &str, Get); 4] = [
        (
            "drawbridge_partition_messages_in_total",
            "Messages this node recorded for the partition as its leader.",
            |s| s.messages_in.load(Ordering::Relaxed),
        ),
        (
            "drawbridge_partition_bytes_in_total",
            "Value bytes of the messages this node recorded for the partition as its leader.",
            |s| s.bytes_in.load(Ordering::Relaxed),
        ),
        (
            "drawbridge_partition_messages_out_total",
            "Messages this node sent to subscribers of the partition.",
            |s| s.messages_out.load(Ordering::Relaxed),
        ),
        (
            "drawbridge_partition_bytes_out_total",
            "Value bytes of the messages this node sent to subscribers of the partition.",
            |s| s.bytes_out.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in series {
        family(out, name, "counter", help);
        for (id, l) in parts {
            let _ = writeln!(
                out,
                "{name}{{stream=\"{}\",partition=\"{}\"}} {}",
                label(&id.stream),
                id.partition,
                get(&l.stats)
            );
        }
    }
}

/// Publish and Subscribe latency histograms by method and status.
fn requests(out: &mut String, ctx: &Ctx) {
    let name = "drawbridge_request_duration_seconds";
    family(
        out,
        name,
        "histogram",
        "Latency of Publish, PublishToSubject, each PublishAsync message (to its answer) and \
         Subscribe (to its first frame), by method and gRPC status.",
    );
    for (method, status, h) in ctx.stats.requests.observed() {
        let labels = format!("method=\"{method}\",status=\"{status}\"");
        for (le, n) in &h.buckets {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_seconds);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
