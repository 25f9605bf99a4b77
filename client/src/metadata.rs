//! The client's view of the cluster: brokers by id, streams, partitions and their leaders, and
//! the cache that holds the latest view.
//!
//! Invariants:
//! 1. A [`Metadata`] is an immutable snapshot of one FetchMetadata answer; the cache swaps
//!    whole snapshots (`Arc`), so a reader never sees half of one answer and half of another.
//! 2. Routing (wire spec §10): a partition is reached at `host:port` of the broker whose id is
//!    its leader, or of a random in-sync replica when reading from replicas. An id that is not
//!    in the broker list is "no known leader", never a guess.
//! 3. Refreshes are serialized, and a caller that asks for a refresh gets data fetched *after*
//!    it asked: it may share a fetch that started later than its request, never one that
//!    started earlier (see [`MetadataCache::begin_refresh`]).
//! 4. Streams the server reports as unknown (`UNKNOWN_STREAM`) are left out of the snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use drawbridge_proto::api;
use rand::seq::IndexedRandom;

use crate::error::{Error, Result};
use crate::options::time_from_nanos;

/// A server of the cluster, as clients reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Server id.
    pub id: String,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: i32,
    /// Partitions replicated on this broker.
    pub partition_count: i32,
    /// Partitions led by this broker.
    pub leader_count: i32,
}

impl BrokerInfo {
    /// `host:port`, the address the client dials.
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            // A bare IPv6 literal needs brackets in an address.
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// First and latest time an event happened to a partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventTimestamps {
    /// First occurrence (`None` = never).
    pub first: Option<SystemTime>,
    /// Latest occurrence (`None` = never).
    pub latest: Option<SystemTime>,
}

impl EventTimestamps {
    fn from_proto(t: Option<api::PartitionEventTimestamps>) -> Self {
        let t = t.unwrap_or_default();
        EventTimestamps {
            first: time_from_nanos(t.first_timestamp),
            latest: time_from_nanos(t.latest_timestamp),
        }
    }
}

/// One partition of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition id.
    pub id: i32,
    /// Leader broker id (`None` when the partition has no leader).
    pub leader: Option<String>,
    /// Replica broker ids.
    pub replicas: Vec<String>,
    /// In-sync replica broker ids.
    pub isr: Vec<String>,
    /// Last committed offset on the answering broker (-1 = none). Only
    /// [`Client::fetch_partition_metadata`](crate::Client::fetch_partition_metadata), which asks
    /// the leader, is authoritative.
    pub high_watermark: i64,
    /// Last offset in the answering broker's log (-1 = empty).
    pub newest_offset: i64,
    /// Paused.
    pub paused: bool,
    /// Readonly.
    pub readonly: bool,
    /// First and latest message reception on the leader.
    pub messages_received: EventTimestamps,
    /// First and latest pause-state change.
    pub pause_changes: EventTimestamps,
    /// First and latest readonly-state change.
    pub readonly_changes: EventTimestamps,
}

impl PartitionInfo {
    pub(crate) fn from_proto(p: api::PartitionMetadata) -> Self {
        PartitionInfo {
            id: p.id,
            leader: Some(p.leader).filter(|l| !l.is_empty()),
            replicas: p.replicas,
            isr: p.isr,
            high_watermark: p.high_watermark,
            newest_offset: p.newest_offset,
            paused: p.paused,
            readonly: p.readonly,
            messages_received: EventTimestamps::from_proto(p.messages_received_timestamps),
            pause_changes: EventTimestamps::from_proto(p.pause_timestamps),
            readonly_changes: EventTimestamps::from_proto(p.readonly_timestamps),
        }
    }
}

/// A stream and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Stream name.
    pub name: String,
    /// NATS subject.
    pub subject: String,
    /// When the stream was created.
    pub created: Option<SystemTime>,
    /// Partitions by id.
    pub partitions: BTreeMap<i32, PartitionInfo>,
}

/// A snapshot of the cluster's metadata (module invariant 1).
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    brokers: BTreeMap<String, BrokerInfo>,
    streams: BTreeMap<String, StreamInfo>,
    fetched_at: Option<Instant>,
}

impl Metadata {
    /// Builds a snapshot from a FetchMetadata answer (module invariant 4).
    pub(crate) fn from_proto(resp: api::FetchMetadataResponse) -> Metadata {
        let brokers = resp
            .brokers
            .into_iter()
            .map(|b| {
                let info = BrokerInfo {
                    id: b.id,
                    host: b.host,
                    port: b.port,
                    partition_count: b.partition_count,
                    leader_count: b.leader_count,
                };
                (info.id.clone(), info)
            })
            .collect();
        let streams = resp
            .stream_metadata
            .into_iter()
            .filter(|s| s.error() == api::stream_metadata::Error::Ok)
            .map(|s| {
                let partitions = s
                    .partitions
                    .into_iter()
                    .map(|(id, p)| (id, PartitionInfo::from_proto(p)))
                    .collect();
                let info = StreamInfo {
                    created: time_from_nanos(s.creation_timestamp),
                    name: s.name,
                    subject: s.subject,
                    partitions,
                };
                (info.name.clone(), info)
            })
            .collect();
        Metadata {
            brokers,
            streams,
            fetched_at: Some(Instant::now()),
        }
    }

    /// Brokers, ordered by id.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerInfo> {
        self.brokers.values()
    }

    /// The broker with this id.
    pub fn broker(&self, id: &str) -> Option<&BrokerInfo> {
        self.brokers.get(id)
    }

    /// Streams, ordered by name (internal streams such as `__cursors` included).
    pub fn streams(&self) -> impl Iterator<Item = &StreamInfo> {
        self.streams.values()
    }

    /// The stream with this name.
    pub fn stream(&self, name: &str) -> Option<&StreamInfo> {
        self.streams.get(name)
    }

    /// Number of partitions of a stream, if the stream is known.
    pub fn partition_count(&self, stream: &str) -> Option<usize> {
        self.streams.get(stream).map(|s| s.partitions.len())
    }

    /// When this snapshot was fetched (`None` for the empty snapshot before the first fetch).
    pub fn fetched_at(&self) -> Option<Instant> {
        self.fetched_at
    }

    /// `(stream, partition)` pairs whose leader is missing or not among the brokers.
    pub fn partitions_without_leader(&self) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        for s in self.streams.values() {
            for p in s.partitions.values() {
                let led = p
                    .leader
                    .as_deref()
                    .is_some_and(|l| self.brokers.contains_key(l));
                if !led {
                    out.push((s.name.clone(), p.id));
                }
            }
        }
        out
    }

    /// Addresses of every broker, in id order.
    pub(crate) fn broker_addrs(&self) -> Vec<String> {
        self.brokers.values().map(BrokerInfo::addr).collect()
    }

    /// The address to send a partition's reads and leader-only calls to (module invariant 2).
    pub(crate) fn addr_for_partition(
        &self,
        stream: &str,
        partition: i32,
        read_isr_replica: bool,
    ) -> Result<String> {
        let Some(s) = self.streams.get(stream) else {
            return Err(Error::NoSuchStream(stream.to_string()));
        };
        let Some(p) = s.partitions.get(&partition) else {
            return Err(Error::NoSuchPartition(format!("{stream}/{partition}")));
        };
        let no_leader = || Error::NoKnownLeader {
            stream: stream.to_string(),
            partition,
        };
        let broker = if read_isr_replica {
            let known: Vec<&BrokerInfo> =
                p.isr.iter().filter_map(|id| self.brokers.get(id)).collect();
            known.choose(&mut rand::rng()).copied()
        } else {
            p.leader.as_deref().and_then(|id| self.brokers.get(id))
        };
        broker.map(BrokerInfo::addr).ok_or_else(no_leader)
    }
}

impl From<api::FetchMetadataResponse> for Metadata {
    /// A snapshot of a FetchMetadata answer (e.g. to test code that reads metadata).
    fn from(resp: api::FetchMetadataResponse) -> Metadata {
        Metadata::from_proto(resp)
    }
}

/// Holds the latest [`Metadata`] and serializes refreshes (module invariants 1 and 3).
#[derive(Debug, Default)]
pub(crate) struct MetadataCache {
    /// The current snapshot; read by every routed call, replaced by a refresh.
    current: RwLock<Arc<Metadata>>,
    /// Held while one refresh runs.
    refresh_lock: tokio::sync::Mutex<()>,
    /// Number of refreshes started so far (bumped under `refresh_lock`).
    started: AtomicU64,
    /// Sequence number (in `started` terms) of the last refresh that completed.
    completed: AtomicU64,
}

/// What a caller must do after [`MetadataCache::begin_refresh`].
pub(crate) enum Refresh<'a> {
    /// A refresh that started after the request completed meanwhile: use this snapshot.
    Done(Arc<Metadata>),
    /// Fetch now, then [`MetadataCache::finish`] with this guard.
    Fetch(RefreshGuard<'a>),
}

/// Proof that the caller holds the refresh lock; carries the refresh's sequence number.
pub(crate) struct RefreshGuard<'a> {
    _lock: tokio::sync::MutexGuard<'a, ()>,
    seq: u64,
}

impl MetadataCache {
    /// The current snapshot.
    pub(crate) fn get(&self) -> Arc<Metadata> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Waits for the refresh lock. Returns [`Refresh::Done`] if a refresh that started after
    /// this call completed while waiting (module invariant 3).
    pub(crate) async fn begin_refresh(&self) -> Refresh<'_> {
        let ticket = self.started.load(Ordering::SeqCst);
        let lock = self.refresh_lock.lock().await;
        if self.completed.load(Ordering::SeqCst) > ticket {
            return Refresh::Done(self.get());
        }
        let seq = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        Refresh::Fetch(RefreshGuard { _lock: lock, seq })
    }

    /// Installs a fetched snapshot.
    pub(crate) fn finish(&self, guard: RefreshGuard<'_>, metadata: Metadata) -> Arc<Metadata> {
        let metadata = Arc::new(metadata);
        match self.current.write() {
            Ok(mut g) => *g = Arc::clone(&metadata),
            Err(poisoned) => *poisoned.into_inner() = Arc::clone(&metadata),
        }
        self.completed.store(guard.seq, Ordering::SeqCst);
        metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn sample() -> Metadata {
        let part = |id: i32, leader: &str, isr: &[&str]| api::PartitionMetadata {
            id,
            leader: leader.into(),
            replicas: isr.iter().map(|s| s.to_string()).collect(),
            isr: isr.iter().map(|s| s.to_string()).collect(),
            high_watermark: -1,
            newest_offset: -1,
            ..Default::default()
        };
        let mut partitions = HashMap::new();
        partitions.insert(0, part(0, "a", &["a", "b"]));
        partitions.insert(1, part(1, "b", &["b"]));
        partitions.insert(2, part(2, "", &["a"]));
        partitions.insert(3, part(3, "gone", &["gone"]));
        let mut unknown = api::StreamMetadata {
            name: "nope".into(),
            ..Default::default()
        };
        unknown.set_error(api::stream_metadata::Error::UnknownStream);
        Metadata::from_proto(api::FetchMetadataResponse {
            brokers: vec![
                api::Broker {
                    id: "a".into(),
                    host: "127.0.0.1".into(),
                    port: 9292,
                    partition_count: 3,
                    leader_count: 1,
                },
                api::Broker {
                    id: "b".into(),
                    host: "::1".into(),
                    port: 9293,
                    partition_count: 2,
                    leader_count: 1,
                },
            ],
            stream_metadata: vec![
                api::StreamMetadata {
                    name: "s".into(),
                    subject: "subj".into(),
                    partitions,
                    creation_timestamp: 5,
                    ..Default::default()
                },
                unknown,
            ],
            group_metadata: vec![],
        })
    }

    #[test]
    fn routes_to_leader_by_broker_id() {
        let m = sample();
        assert_eq!(
            m.addr_for_partition("s", 0, false).ok(),
            Some("127.0.0.1:9292".into())
        );
        assert_eq!(
            m.addr_for_partition("s", 1, false).ok(),
            Some("[::1]:9293".into())
        );
        assert!(matches!(
            m.addr_for_partition("s", 2, false),
            Err(Error::NoKnownLeader { partition: 2, .. })
        ));
        assert!(matches!(
            m.addr_for_partition("s", 3, false),
            Err(Error::NoKnownLeader { .. })
        ));
        assert!(matches!(
            m.addr_for_partition("s", 9, false),
            Err(Error::NoSuchPartition(_))
        ));
        assert!(matches!(
            m.addr_for_partition("nope", 0, false),
            Err(Error::NoSuchStream(_))
        ));
    }

    #[test]
    fn isr_reads_pick_a_known_isr_member() {
        let m = sample();
        for _ in 0..50 {
            let addr = m.addr_for_partition("s", 0, true).ok();
            assert!(
                addr.as_deref() == Some("127.0.0.1:9292") || addr.as_deref() == Some("[::1]:9293")
            );
        }
        // Partition 2 has no leader but an ISR member: replica reads still work.
        assert_eq!(
            m.addr_for_partition("s", 2, true).ok(),
            Some("127.0.0.1:9292".into())
        );
        assert!(m.addr_for_partition("s", 3, true).is_err());
    }

    #[test]
    fn snapshot_contents() {
        let m = sample();
        assert_eq!(m.brokers().count(), 2);
        assert_eq!(m.partition_count("s"), Some(4));
        assert!(m.stream("nope").is_none());
        assert_eq!(m.stream("s").map(|s| s.subject.as_str()), Some("subj"));
        assert_eq!(
            m.partitions_without_leader(),
            vec![("s".to_string(), 2), ("s".to_string(), 3)]
        );
        assert_eq!(m.broker_addrs(), vec!["127.0.0.1:9292", "[::1]:9293"]);
    }

    #[tokio::test]
    async fn refresh_shares_only_later_fetches() {
        let cache = MetadataCache::default();
        // Nothing completed: the first caller must fetch.
        let Refresh::Fetch(guard) = cache.begin_refresh().await else {
            panic!("expected to fetch");
        };
        cache.finish(guard, sample());
        assert_eq!(cache.get().brokers().count(), 2);
        // A later caller still fetches: the completed refresh started before it asked.
        assert!(matches!(cache.begin_refresh().await, Refresh::Fetch(_)));
    }
}
