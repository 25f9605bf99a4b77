//! [`RaftNode`]: everything raft on one Drawbridge node — the transport server, the shared
//! router, the flusher thread, the metadata group and the partition groups.
//!
//! On-disk layout under the node's data dir:
//! ```text
//! raft-state.journal                                  vote/committed/purged of every group
//! metadata/{log,snapshot}                             the metadata group
//! partitions/<hex(stream)>-<partition>/{log,snapshot}   one dir per partition group
//! partitions/<hex(stream)>-<partition>/clean-shutdown   present only after a graceful stop
//! ```
//! Invariants:
//! - A group's directory is only used by one raft instance at a time (the registry refuses a
//!   second instance of a group).
//! - The node's id and its directories are stable across restarts; restarting with the same
//!   data dir recovers vote, log and commit point of every group it re-creates.
//! - A partition group's dir holds a `clean-shutdown` marker only between a graceful stop that
//!   closed (synced) its log and the group's next open, which removes it; without it, under a
//!   lazy log sync policy, the group holds its votes until caught up
//!   (`crate::partition::unclean`).
//! - Every hosted partition group is registered with the node's scheduler (heartbeats and
//!   elections; partition groups have no openraft tick) from creation until removal or
//!   shutdown.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drawbridge_proto::raft::raft_transport_server::RaftTransportServer;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;
use tracing::warn;

use crate::config::LogSyncPolicy;
use crate::config::RaftConfig;
use crate::convert;
use crate::error::RaftError;
use crate::log::store::StoreHooks;
use crate::log::FileLog;
use crate::log::Flusher;
use crate::log::LogStore;
use crate::log::StorageLog;
use crate::metadata::MetaStateMachine;
use crate::metadata::MetadataHandle;
use crate::partition::group::AckPlumbing;
use crate::partition::unclean;
use crate::partition::PartitionGroup;
use crate::partition::PartitionReplica;
use crate::partition::PartitionStateMachine;
use crate::scheduler::GroupClock;
use crate::scheduler::Scheduler;
use crate::scheduler::Timing;
use crate::transport::service::StreamCounters;
use crate::transport::service::TransportService;
use crate::transport::GroupRegistry;
use crate::transport::NetworkFactory;
use crate::transport::Router;
use crate::types::GroupId;
use crate::types::MetaRaft;
use crate::types::MetaTypes;
use crate::types::Node;
use crate::types::NodeId;
use crate::types::PartitionId;
use crate::types::PartitionRaft;

/// The pause between two rounds of [`RaftNode::hand_off_leadership`] (its rule 4).
const HAND_OFF_ROUND_GAP: Duration = Duration::from_millis(100);

struct Server {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct Inner {
    config: RaftConfig,
    data_dir: PathBuf,
    local_addr: SocketAddr,
    registry: Arc<GroupRegistry>,
    router: Router,
    flusher: Flusher,
    metadata: MetadataHandle,
    partition_config: Arc<openraft::Config>,
    /// Drives heartbeats and elections of every partition group (they have no openraft tick).
    scheduler: Scheduler,
    server: Mutex<Server>,
    /// The `AppendStream` calls this node serves (see [`RaftNode::transport_stats`]).
    append_streams: Arc<StreamCounters>,
}

/// Counters of a node's raft transport (see [`RaftNode::transport_stats`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Replication streams (`AppendStream` calls) from leaders to this node open now.
    pub append_streams_open: u64,
    /// Replication streams this node has accepted since it started.
    pub append_streams_served: u64,
}

/// Counters of a node's flusher (see [`RaftNode::io_stats`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Group-commit rounds.
    pub rounds: u64,
    /// Log fsyncs.
    pub log_syncs: u64,
    /// Journal fsyncs.
    pub journal_syncs: u64,
    /// Raft state records written to the journal.
    pub records: u64,
}

/// The raft layer of one node. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.inner.config.node_id)
            .field("addr", &self.inner.local_addr)
            .finish()
    }
}

/// The node's raft state journal, under the data dir.
const JOURNAL_FILE: &str = "raft-state.journal";

/// A group's key in the raft state journal.
fn state_key(g: &GroupId) -> Result<Vec<u8>, RaftError> {
    crate::codec::encode(g)
}

/// Runs blocking file IO (directory creation, log recovery) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, RaftError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(RaftError::Storage),
        Err(e) => Err(RaftError::Storage(std::io::Error::other(format!(
            "blocking task failed: {e}"
        )))),
    }
}

/// Per-partition settings of its log that come from the stream's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionLogSettings {
    /// Roll to a new segment past this many bytes (`None`: the storage default, 256 MiB).
    pub segment_max_bytes: Option<u64>,
    /// Roll a segment whose first record is older than this (`None`: never by age).
    pub segment_max_age: Option<Duration>,
}

/// Storage settings of partition logs.
pub(crate) fn partition_log_config(
    settings: PartitionLogSettings,
) -> drawbridge_storage::LogConfig {
    let defaults = drawbridge_storage::LogConfig::default();
    drawbridge_storage::LogConfig {
        preallocate: false,
        segment_max_bytes: settings
            .segment_max_bytes
            .map_or(defaults.segment_max_bytes, |b| {
                b.clamp(4096, drawbridge_storage::MAX_SEGMENT_BYTES)
            }),
        segment_max_age: settings.segment_max_age,
        ..defaults
    }
}

/// Closes a stopped group's log (which syncs it) and, if that worked, writes its
/// clean-shutdown marker (`crate::partition::unclean`).
fn close_cleanly(group: &PartitionGroup, dir: &Path) -> std::io::Result<()> {
    group.sm.log().close().map_err(|e| e.into_io())?;
    unclean::write_marker(dir)
}

pub(crate) fn partition_dir(root: &Path, id: &PartitionId) -> PathBuf {
    let hex: String = id.stream.bytes().map(|b| format!("{b:02x}")).collect();
    root.join("partitions")
        .join(format!("{hex}-{}", id.partition))
}

impl RaftNode {
    /// Starts the node: binds the raft transport on `listen` (port 0 picks a free port), opens
    /// (or recovers) the metadata group under `data_dir`. An empty `config.advertise_addr` is
    /// replaced by the bound address.
    pub async fn start(
        mut config: RaftConfig,
        data_dir: &Path,
        listen: SocketAddr,
    ) -> Result<Self, RaftError> {
        let meta_cfg = config.metadata.to_openraft(&config.cluster_name)?;
        let partition_config = if config.partition_openraft_tick {
            config.partition.to_openraft(&config.cluster_name)?
        } else {
            config
                .partition
                .to_openraft_scheduled(&config.cluster_name)?
        };
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| RaftError::Transport(format!("bind {listen}: {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| RaftError::Transport(e.to_string()))?;
        if config.advertise_addr.is_empty() {
            config.advertise_addr = local_addr.to_string();
        }
        let registry = Arc::new(GroupRegistry::default());
        let router = Router::new(config.coalesce_heartbeats)
            .with_stream_window(config.append_stream_window)
            .with_faults(config.node_id, config.network_faults.clone())
            .with_routes(config.peer_routes.clone());
        fs::create_dir_all(data_dir)?;
        let flusher = Flusher::start(&data_dir.join(JOURNAL_FILE))?;

        let meta_dir = data_dir.join("metadata");
        fs::create_dir_all(&meta_dir)?;
        let backend = Arc::new(FileLog::<MetaTypes>::open(&meta_dir.join("log"))?);
        let store = LogStore::open(
            backend,
            state_key(&GroupId::Metadata)?,
            flusher.clone(),
            StoreHooks::default(),
        )?;
        let sm = MetaStateMachine::open(&meta_dir.join("snapshot"))?;
        let network = NetworkFactory::new(router.clone(), GroupId::Metadata);
        let raft: MetaRaft =
            openraft::Raft::new(config.node_id, meta_cfg, network, store, sm.clone())
                .await
                .map_err(|e| convert::fatal(&GroupId::Metadata, e))?;
        registry.set_metadata(raft.clone());
        let metadata = MetadataHandle {
            raft,
            sm,
            node_id: config.node_id,
            max_voters: config.max_metadata_voters,
        };

        let (tx, rx) = oneshot::channel::<()>();
        let service = TransportService::new(registry.clone());
        let append_streams = service.stream_counters();
        let svc = RaftTransportServer::new(service)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        // The builder's `tcp_nodelay` applies only to listeners tonic binds itself. Without
        // it, Nagle held each streamed reply (`AppendStream`) back until the peer's delayed
        // ACK: 20-40 ms per round trip of a lightly loaded group.
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            if let Ok(c) = &conn {
                if let Err(e) = c.set_nodelay(true) {
                    warn!(error = %e, "cannot set TCP_NODELAY on a raft connection");
                }
            }
            conn
        });
        let task = tokio::spawn(async move {
            let r = crate::transport::server_builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = r {
                warn!(error = %e, "raft transport server ended with an error");
            }
        });
        let scheduler = Scheduler::start(
            config.node_id,
            Timing::of(&config.partition),
            config.quiesce_partition_groups,
            router.clone(),
        );
        info!(node = config.node_id, addr = %local_addr, "raft node started");
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                data_dir: data_dir.to_path_buf(),
                local_addr,
                registry,
                router,
                flusher,
                metadata,
                partition_config,
                scheduler,
                server: Mutex::new(Server {
                    shutdown: Some(tx),
                    task: Some(task),
                }),
                append_streams,
            }),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// The bound address of the raft transport.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The address peers use to reach this node.
    pub fn advertise_addr(&self) -> &str {
        &self.inner.config.advertise_addr
    }

    /// Counters of this node's flusher (group-commit rounds, log fsyncs, journal fsyncs,
    /// state records). For tests and benchmarks.
    #[doc(hidden)]
    pub fn io_stats(&self) -> IoStats {
        let s = self.inner.flusher.stats();
        IoStats {
            rounds: s.rounds,
            log_syncs: s.log_syncs,
            journal_syncs: s.journal_syncs,
            records: s.records,
        }
    }

    /// How many partition groups this node leads *quiesced*: idle, fully replicated, without
    /// per-group heartbeats (their followers rely on this node's liveness beats; see
    /// `crate::scheduler`). A gauge for metrics and tests.
    pub fn quiesced_partition_groups(&self) -> usize {
        self.inner.scheduler.quiesced()
    }

    /// How many partition groups this node follows *parked*: quiesced under a leader whose
    /// node's liveness beats keep them quiet, off the scheduler's heap until something changes
    /// (`crate::scheduler`, rule 5). A gauge for metrics and tests.
    pub fn parked_partition_groups(&self) -> usize {
        self.inner.scheduler.parked()
    }

    /// Counters of the raft transport's replication streams served by this node.
    #[doc(hidden)]
    pub fn transport_stats(&self) -> TransportStats {
        let c = &self.inner.append_streams;
        TransportStats {
            append_streams_open: c.open.load(std::sync::atomic::Ordering::Relaxed),
            append_streams_served: c.served.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The metadata group.
    pub fn metadata(&self) -> &MetadataHandle {
        &self.inner.metadata
    }

    /// Records a peer's raft address (also learned from membership configs automatically).
    pub fn set_peer(&self, id: NodeId, addr: &str) -> Result<(), RaftError> {
        self.inner
            .router
            .set_peer(id, addr)
            .map_err(|e| RaftError::Transport(e.to_string()))
    }

    /// Forgets a peer's address (e.g. after it left the cluster).
    pub fn remove_peer(&self, id: NodeId) {
        self.inner.router.remove_peer(id);
    }

    /// Starts (or recovers) the raft group of a partition on this node. `replicas` maps every
    /// replica's node id to its raft address and must include this node. A fresh group is
    /// initialized with exactly these voters by its lowest-id replica (every replica calls this
    /// with the same map; the group elects a leader once the lowest-id replica has it).
    pub async fn create_partition_group(
        &self,
        id: PartitionId,
        replicas: BTreeMap<NodeId, String>,
    ) -> Result<PartitionReplica, RaftError> {
        self.create_partition_group_with(id, replicas, PartitionLogSettings::default())
            .await
    }

    /// [`RaftNode::create_partition_group`] with the stream's log settings (segment size and
    /// age); they apply to segments rolled from now on.
    pub async fn create_partition_group_with(
        &self,
        id: PartitionId,
        replicas: BTreeMap<NodeId, String>,
        settings: PartitionLogSettings,
    ) -> Result<PartitionReplica, RaftError> {
        let gid = GroupId::Partition(id.clone());
        if !replicas.contains_key(&self.id()) {
            return Err(RaftError::Membership(format!(
                "node {} is not a replica of {id}",
                self.id()
            )));
        }
        if self.inner.registry.partition(&id).is_some() {
            return Err(RaftError::GroupExists(gid));
        }
        let dir = partition_dir(&self.inner.data_dir, &id);
        let acks = AckPlumbing::new(self.id());
        let key = state_key(&gid)?;
        let flusher = self.inner.flusher.clone();
        let hooks = acks.hooks();
        let sync = self.inner.config.partition_log_sync;
        let lone_replica = replicas.len() == 1;
        let lazy = sync != LogSyncPolicy::Always;
        let check_empty = lone_replica && lazy;
        let (log, sm, unclean, empty) = blocking(move || {
            // A log that was there and no clean-shutdown marker: the last stop may have lost
            // acknowledged entries (`crate::partition::unclean`). The marker goes now, before
            // the group can acknowledge anything.
            let had_log = dir.join("log").exists();
            let clean = unclean::take_marker(&dir)?;
            let unclean = had_log && !clean;
            fs::create_dir_all(&dir)?;
            let log =
                drawbridge_storage::Log::open(dir.join("log"), partition_log_config(settings))
                    .map_err(|e| e.into_io())?;
            let sm = PartitionStateMachine::open(&dir.join("snapshot"), log.clone())?;
            // Only asked where it matters (a lone replica after an unclean stop); a log that
            // cannot be read here (a corrupt batch, cut below) does not count as empty.
            let empty = check_empty
                && unclean
                && sm.restart_index() == 0
                && log.batches_by_raft_index(..).is_ok_and(|b| b.is_empty());
            Ok((log, sm, unclean, empty))
        })
        .await?;
        if unclean && lazy && lone_replica && empty && self.inner.flusher.load(&key).is_some() {
            // A single voter whose lazy log lost every entry (its membership too) but whose
            // synced vote survived would count as initialized and never lead again: with no
            // other replica to agree with, it starts over as a fresh group (the acknowledged
            // entries are gone either way; no other node can hold a vote of an older term).
            warn!(
                partition = %id,
                "single-replica group lost its whole log in an unclean stop: starting it afresh"
            );
            self.inner.flusher.record_durable(key.clone(), None).await?;
        }
        let restart = sm.restart_index();
        let store = blocking(move || {
            let backend = Arc::new(StorageLog::new(log.clone()));
            let store = LogStore::open_with_sync(backend, key, flusher, hooks, sync)?;
            // A batch that fails its CRC must be neither served, voted with, nor read by
            // openraft (a read error stops the group): cut the log before the first one among
            // the entries the group re-applies and replicates, the leader re-sends them. The
            // store clamps its commit point to the new end; the leader backtracks because
            // raft groups allow log reversion (`config.rs`).
            log.truncate_at_first_corrupt(restart)
                .map_err(|e| e.into_io())?;
            Ok(store)
        })
        .await?;
        let network = NetworkFactory::new(self.inner.router.clone(), gid.clone());
        let raft: PartitionRaft = openraft::Raft::new(
            self.id(),
            self.inner.partition_config.clone(),
            network,
            store,
            sm.clone(),
        )
        .await
        .map_err(|e| convert::fatal(&gid, e))?;
        // Only the lowest-id replica initializes a fresh group: initializing on every replica
        // makes all of them campaign at once and split the vote. The others join when it
        // contacts them.
        let initializer = replicas.keys().next() == Some(&self.id());
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| convert::fatal(&gid, e))?;
        if initializer && !initialized {
            let members: BTreeMap<NodeId, Node> = replicas
                .into_iter()
                .map(|(k, addr)| (k, Node { addr }))
                .collect();
            match raft.initialize(members).await {
                Ok(())
                | Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(_),
                )) => {}
                Err(e) => return Err(RaftError::Membership(e.to_string())),
            }
        }
        let clock = Arc::new(GroupClock::new(Duration::from_millis(
            self.inner.config.partition.election_timeout_max_ms,
        )));
        if unclean && lazy {
            // The assigned replicas say it (the server passes the stream's replica set), or the
            // membership openraft recovered, if it has published it yet.
            let metrics = crate::wait::metrics(&raft);
            let mut voters = metrics.membership_config.membership().voter_ids();
            let lone =
                lone_replica || (voters.next() == Some(self.id()) && voters.next().is_none());
            if lone {
                info!(partition = %id, "unclean restart of a single-voter group: nothing to catch up from");
            } else {
                warn!(
                    partition = %id,
                    "partition group restarted without a clean shutdown under a lazy log sync \
                     policy: holding votes and elections until a leader caught it up"
                );
                let hold = self
                    .inner
                    .config
                    .unclean_restart_hold_ms
                    .map(Duration::from_millis);
                raft.runtime_config().elect(false);
                let r = raft.clone();
                clock
                    .catch_up
                    .begin(hold, move || r.runtime_config().elect(true));
                if let (Some(hold), true) = (hold, self.inner.config.partition_openraft_tick) {
                    // No scheduler looks at the hold in this mode: end it at its limit here.
                    let clock = clock.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(hold).await;
                        clock.catch_up.holds();
                    });
                }
            }
        }
        let group = Arc::new(PartitionGroup {
            id: id.clone(),
            node_id: self.id(),
            raft,
            sm,
            acks,
            clock: clock.clone(),
            waker: self.inner.scheduler.waker(id.clone()),
        });
        if !self
            .inner
            .registry
            .insert_partition(id.clone(), group.clone())
        {
            let _ = group.raft.shutdown().await;
            return Err(RaftError::GroupExists(gid));
        }
        if !self.inner.config.partition_openraft_tick {
            self.inner.scheduler.register(id, group.raft.clone(), clock);
        }
        Ok(PartitionReplica { group })
    }

    /// Sets what this node answers when a partition leader asks whether it would take a
    /// leadership now (the `MayLead` probe of [`Self::hand_off_leadership`]). The server: "my
    /// data directory is above `storage.min.free.bytes`". Without a gate: always yes. Called
    /// on every probe: keep it cheap.
    pub fn set_lead_gate(&self, gate: impl Fn() -> bool + Send + Sync + 'static) {
        self.inner.registry.set_lead_gate(Arc::new(gate));
    }

    /// Hands the leadership of `replica` (led by this node) to an in-sync voter that says it
    /// would take it; used when this node's disk is (nearly) full, as in Kafka and Redpanda a
    /// replica that cannot write should not lead. Returns the new leader, or `None` when no
    /// voter qualified (this node keeps leading: nothing was started).
    ///
    /// Rules:
    /// 1. Candidates are the other voters whose matched index is the leader's last log index
    ///    and whose last acknowledgement is at most `max_ack_age` old; the most recently
    ///    acknowledging first.
    /// 2. Each candidate is asked (`MayLead`, at most a second each) in that order; the first
    ///    that answers yes is the target. A transfer stops this node's heartbeats and
    ///    proposals for the group (`PartitionReplica::transfer_to`, rule 1), so it is only
    ///    started towards a node that said yes: when every node is full nobody moves (no
    ///    ping-pong) and this node keeps leading.
    /// 3. Waits up to `timeout` until another node leads; a timeout is an error (the group
    ///    then elects after its election timeout, as after a crash).
    /// 4. A round that found no candidate that says yes is tried again 100 ms later
    ///    (`HAND_OFF_ROUND_GAP`), up to `rounds` rounds in all (at least one): a follower
    ///    may still be taking the leader's last entries when the hand-off starts. Errors are
    ///    not retried.
    pub async fn hand_off_leadership(
        &self,
        replica: &PartitionReplica,
        max_ack_age: Duration,
        timeout: Duration,
        rounds: u32,
    ) -> Result<Option<NodeId>, RaftError> {
        for round in 0..rounds.max(1) {
            if round > 0 {
                tokio::time::sleep(HAND_OFF_ROUND_GAP).await;
            }
            if let Some(to) = self.hand_off_round(replica, max_ack_age, timeout).await? {
                return Ok(Some(to));
            }
        }
        Ok(None)
    }

    /// One round of [`Self::hand_off_leadership`] (rules 1 to 3).
    async fn hand_off_round(
        &self,
        replica: &PartitionReplica,
        max_ack_age: Duration,
        timeout: Duration,
    ) -> Result<Option<NodeId>, RaftError> {
        let Some(p) = replica.replication_progress() else {
            return Ok(None);
        };
        let mut candidates: Vec<(NodeId, Duration)> = p
            .followers
            .iter()
            .filter(|(_, f)| f.matched_index == Some(p.last_log_index))
            .filter_map(|(id, f)| f.ack_age.filter(|a| *a <= max_ack_age).map(|a| (*id, a)))
            .collect();
        candidates.sort_by_key(|(_, age)| *age);
        let id = replica.id();
        for (target, _) in candidates {
            match self
                .inner
                .router
                .may_lead(
                    target,
                    &GroupId::Partition(id.clone()),
                    Duration::from_secs(1),
                )
                .await
            {
                Ok(true) => {
                    replica.transfer_to(target, timeout).await?;
                    return Ok(Some(target));
                }
                Ok(false) => {
                    tracing::debug!(partition = %id, target, "declines the leadership")
                }
                Err(e) => {
                    tracing::debug!(partition = %id, target, error = %e, "leadership probe failed")
                }
            }
        }
        Ok(None)
    }

    /// Hands the metadata leadership (when this node holds it) to another voter that
    /// acknowledged recently and says it would take it (graceful shutdown). Returns the new
    /// leader, or `None` when this node does not lead or no voter qualified.
    ///
    /// Rules: candidates as `MetadataHandle::handoff_candidates` orders them; each is asked
    /// (`MayLead`, at most a second each) before the transfer starts, so a peer that died a
    /// moment ago, or is shutting down itself, costs one failed probe instead of the whole
    /// `timeout` (a transfer stops this node's heartbeats until another node leads).
    pub async fn hand_off_metadata_leadership(
        &self,
        timeout: Duration,
    ) -> Result<Option<NodeId>, RaftError> {
        let metadata = &self.inner.metadata;
        for target in metadata.handoff_candidates() {
            match self
                .inner
                .router
                .may_lead(target, &GroupId::Metadata, Duration::from_secs(1))
                .await
            {
                Ok(true) => {
                    metadata.transfer_to(target, timeout).await?;
                    return Ok(Some(target));
                }
                Ok(false) => tracing::debug!(target, "declines the metadata leadership"),
                Err(e) => {
                    tracing::debug!(target, error = %e, "metadata leadership probe failed")
                }
            }
        }
        Ok(None)
    }

    /// The handle of a hosted partition group.
    pub fn partition(&self, id: &PartitionId) -> Option<PartitionReplica> {
        self.inner
            .registry
            .partition(id)
            .map(|group| PartitionReplica { group })
    }

    /// Ids of the hosted partition groups.
    pub fn partitions(&self) -> Vec<PartitionId> {
        self.inner.registry.partition_ids()
    }

    /// Stops a partition group; with `delete_data` its directory is removed too.
    pub async fn remove_partition_group(
        &self,
        id: &PartitionId,
        delete_data: bool,
    ) -> Result<(), RaftError> {
        let gid = GroupId::Partition(id.clone());
        let group = self
            .inner
            .registry
            .remove_partition(id)
            .ok_or_else(|| RaftError::GroupNotFound(gid.clone()))?;
        self.inner.scheduler.unregister(id);
        let stopped = match group.raft.shutdown().await {
            Ok(()) => true,
            Err(e) => {
                warn!(partition = %id, error = %e, "partition raft shutdown failed");
                false
            }
        };
        if delete_data {
            if let Err(e) = group.sm.log().close() {
                warn!(partition = %id, error = %e, "closing partition log failed");
            }
            let dir = partition_dir(&self.inner.data_dir, id);
            blocking(move || fs::remove_dir_all(dir)).await?;
            self.inner
                .flusher
                .record_durable(state_key(&gid)?, None)
                .await?;
        } else if stopped {
            let dir = partition_dir(&self.inner.data_dir, id);
            let g = group.clone();
            if let Err(e) = blocking(move || close_cleanly(&g, &dir)).await {
                warn!(partition = %id, error = %e, "partition group did not stop cleanly");
            }
        }
        Ok(())
    }

    /// Stops every group and the transport server. Bounded: gives the server 2 s to drain.
    pub async fn shutdown(&self) {
        let (tx, task) = {
            let mut s = self.inner.server.lock();
            (s.shutdown.take(), s.task.take())
        };
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
        // Replication streams from leaders would hold the server's graceful shutdown open.
        self.inner.append_streams.close_all();
        self.inner.scheduler.stop();
        // Groups stop concurrently: one at a time, 500 groups took about a minute.
        let groups = self.inner.registry.drain_partitions();
        let stops = groups.iter().map(|g| g.raft.shutdown());
        let stopped: Vec<bool> =
            match tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(stops))
                .await
            {
                Ok(results) => results.iter().map(Result::is_ok).collect(),
                Err(_) => {
                    warn!(
                        node = self.id(),
                        "partition groups did not stop within 20 s"
                    );
                    vec![false; groups.len()]
                }
            };
        // Clean-shutdown markers, only for groups whose raft stopped and whose log closed
        // (closing syncs it).
        let closes = groups
            .iter()
            .zip(stopped)
            .filter(|(_, ok)| *ok)
            .map(|(g, _)| {
                let g = g.clone();
                let dir = partition_dir(&self.inner.data_dir, &g.id);
                blocking(move || close_cleanly(&g, &dir))
            });
        for r in futures::future::join_all(closes).await {
            if let Err(e) = r {
                warn!(node = self.id(), error = %e, "a partition group did not stop cleanly");
            }
        }
        if let Some(raft) = self.inner.registry.take_metadata() {
            let _ = raft.shutdown().await;
        }
        if let Some(task) = task {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        info!(node = self.id(), "raft node stopped");
    }
}
