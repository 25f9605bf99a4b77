//! FetchMetadata and FetchPartitionMetadata (spec §10).
//!
//! Invariants:
//! - The broker list starts with this server, then every broker that answered a survey
//!   recently; when a requested partition's leader is not among them, one bounded survey runs
//!   first, so clients can route to every leader.
//! - Streams are reported in request order; an unknown stream is reported with
//!   `UNKNOWN_STREAM`, not as an error; an empty request lists every stream.
//! - `highWatermark` / `newestOffset` are this server's local view (-1 when it has none); only
//!   FetchPartitionMetadata on the leader is authoritative.
//! - `isr` is the partition leader's view, computed from raft replication progress (a follower
//!   is in sync when it acknowledged and caught up within `clustering.replica.max.lag.time`,
//!   see [`crate::isr`]): live on the leader, as the leader last recorded it in the metadata
//!   elsewhere. It is informational (raft commits on a majority of all replicas, so it never
//!   gates writes).
//! - `messagesReceivedTimestamps` are the first and latest reception times (leader clock, ns)
//!   of messages this server's replica took in as partition leader since it was opened here
//!   (0 = never); authoritative on the leader, like the offsets. Pause and readonly timestamps
//!   are the first and latest change of the flag as committed in the metadata (0 = never).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use drawbridge_proto::api::{
    consumer_group_metadata, stream_metadata, Broker, ConsumerGroupMetadata, FetchMetadataRequest,
    FetchMetadataResponse, FetchPartitionMetadataRequest, FetchPartitionMetadataResponse,
    PartitionEventTimestamps, PartitionMetadata, StreamMetadata,
};
use drawbridge_raft::metadata::state::{MetadataState, PartitionMeta, StreamMeta};
use drawbridge_raft::{NodeId, PartitionId};

use crate::cluster::{self, ServerInfo};
use crate::context::Ctx;
use crate::error::{Result, ServerError};
use crate::partitions::Local;

fn to_i64(v: Option<u64>) -> i64 {
    v.and_then(|v| i64::try_from(v).ok()).unwrap_or(-1)
}

/// First and latest reception of a message by this replica as partition leader (ns, 0 = never):
/// what the leader observes, kept in memory since the replica was opened here, as in Liftbridge.
fn event_timestamps(t: drawbridge_raft::metadata::state::EventTimes) -> PartitionEventTimestamps {
    PartitionEventTimestamps {
        first_timestamp: t.first_ns,
        latest_timestamp: t.latest_ns,
    }
}

fn received_timestamps(local: Option<&Local>) -> PartitionEventTimestamps {
    let (first, latest) = local.map_or((0, 0), |l| l.stats.received_timestamps());
    PartitionEventTimestamps {
        first_timestamp: first,
        latest_timestamp: latest,
    }
}

/// One partition as seen from this server.
fn partition_metadata(ctx: &Ctx, stream: &str, id: i32, p: &PartitionMeta) -> PartitionMetadata {
    let local = ctx.partitions.get(&PartitionId::new(stream, id));
    let (hw, newest) = match &local {
        Some(local) => (
            to_i64(local.log.high_watermark()),
            to_i64(local.log.newest_offset()),
        ),
        None => (-1, -1),
    };
    let live = local
        .as_ref()
        .and_then(|l| l.in_sync(ctx.config.clustering.replica_max_lag_time));
    let isr = match live {
        Some((_, isr)) => isr,
        None => p.isr.clone(),
    };
    let isr = isr.iter().map(|r| ctx.server_id_of(*r)).collect();
    PartitionMetadata {
        id,
        leader: p.leader.map(|l| ctx.server_id_of(l)).unwrap_or_default(),
        replicas: p.replicas.iter().map(|r| ctx.server_id_of(*r)).collect(),
        isr,
        high_watermark: hw,
        newest_offset: newest,
        paused: p.paused,
        readonly: p.readonly,
        messages_received_timestamps: Some(received_timestamps(local.as_deref())),
        pause_timestamps: Some(event_timestamps(p.pause_times)),
        readonly_timestamps: Some(event_timestamps(p.readonly_times)),
    }
}

fn stream_metadata(ctx: &Ctx, name: &str, s: &StreamMeta) -> StreamMetadata {
    StreamMetadata {
        name: name.to_owned(),
        subject: s.subject.clone(),
        error: stream_metadata::Error::Ok as i32,
        partitions: s
            .partitions
            .iter()
            .map(|(id, p)| (*id, partition_metadata(ctx, name, *id, p)))
            .collect(),
        creation_timestamp: s.created_at_ms.saturating_mul(1_000_000),
    }
}

fn broker(info: &ServerInfo, counts: &HashMap<NodeId, (i32, i32)>) -> Broker {
    let (partitions, leaders) = counts.get(&info.node_id).copied().unwrap_or((0, 0));
    Broker {
        id: info.server_id.clone(),
        host: info.host.clone(),
        port: i32::from(info.port),
        partition_count: partitions,
        leader_count: leaders,
    }
}

fn counts(state: &MetadataState) -> HashMap<NodeId, (i32, i32)> {
    let mut c: HashMap<NodeId, (i32, i32)> = HashMap::new();
    for s in state.streams.values() {
        for p in s.partitions.values() {
            for r in &p.replicas {
                c.entry(*r).or_default().0 += 1;
            }
            if let Some(l) = p.leader {
                c.entry(l).or_default().1 += 1;
            }
        }
    }
    c
}

/// FetchMetadata (spec §10).
pub async fn fetch_metadata(ctx: &Ctx, r: FetchMetadataRequest) -> Result<FetchMetadataResponse> {
    let state = ctx.raft.metadata().state().state;
    let names: Vec<String> = if r.streams.is_empty() {
        state.streams.keys().cloned().collect()
    } else {
        r.streams.clone()
    };
    let leaders: BTreeSet<NodeId> = names
        .iter()
        .filter_map(|n| state.streams.get(n))
        .flat_map(|s| s.partitions.values().filter_map(|p| p.leader))
        .filter(|l| *l != ctx.node_id)
        .collect();
    if leaders.iter().any(|l| !ctx.directory.is_live(*l)) {
        let others = cluster::cluster_members(ctx).len().saturating_sub(1);
        cluster::survey(ctx, Duration::from_secs(1), others).await?;
    }
    let counts = counts(&state);
    let mut brokers = vec![broker(&cluster::self_info(ctx), &counts)];
    let mut live = ctx.directory.live();
    live.sort_by(|a, b| a.server_id.cmp(&b.server_id));
    brokers.extend(
        live.iter()
            .filter(|i| i.node_id != ctx.node_id)
            .map(|i| broker(i, &counts)),
    );
    let stream_metadata = names
        .iter()
        .map(|n| match state.streams.get(n) {
            Some(s) => stream_metadata(ctx, n, s),
            None => StreamMetadata {
                name: n.clone(),
                error: stream_metadata::Error::UnknownStream as i32,
                ..Default::default()
            },
        })
        .collect();
    let group_metadata = r
        .groups
        .iter()
        .map(|g| match state.consumer_groups.get(g) {
            Some(meta) => ConsumerGroupMetadata {
                group_id: g.clone(),
                error: consumer_group_metadata::Error::Ok as i32,
                coordinator: ctx.server_id_of(meta.coordinator),
                epoch: meta.epoch,
            },
            None => ConsumerGroupMetadata {
                group_id: g.clone(),
                error: consumer_group_metadata::Error::UnknownGroup as i32,
                ..Default::default()
            },
        })
        .collect();
    Ok(FetchMetadataResponse {
        brokers,
        stream_metadata,
        group_metadata,
    })
}

/// FetchPartitionMetadata: the leader's live view (spec §2, §5).
pub fn fetch_partition_metadata(
    ctx: &Ctx,
    r: FetchPartitionMetadataRequest,
) -> Result<FetchPartitionMetadataResponse> {
    let state = ctx.raft.metadata().state().state;
    let p = state
        .streams
        .get(&r.stream)
        .and_then(|s| s.partitions.get(&r.partition))
        .ok_or_else(|| ServerError::NotFound("No such partition".into()))?;
    let local = ctx
        .partitions
        .get(&PartitionId::new(r.stream.clone(), r.partition))
        .filter(|l| l.replica.is_leader())
        .ok_or_else(|| ServerError::FailedPrecondition("Server not partition leader".into()))?;
    let mut meta = partition_metadata(ctx, &r.stream, r.partition, p);
    meta.leader = ctx.server_id.clone();
    meta.high_watermark = to_i64(local.log.high_watermark());
    meta.newest_offset = to_i64(local.log.newest_offset());
    Ok(FetchPartitionMetadataResponse {
        metadata: Some(meta),
    })
}
