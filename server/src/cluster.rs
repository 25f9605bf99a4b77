//! Cluster plumbing over NATS: broker discovery, forwarding admin calls to the metadata leader,
//! and forming (bootstrapping or joining) the metadata raft group.
//!
//! Subjects (`<ns>` = `clustering.namespace`), the Liftbridge way, payloads JSON:
//! - `<ns>.raft.metadata.info`: a survey. Every server answers a request with its
//!   [`ServerInfo`] (server id, raft node id, advertised client host/port, raft address, what it
//!   knows of the metadata leader). The requester collects answers for a bounded time.
//! - `<ns>.raft.metadata.propagate.<node id>`: admin operations ([`Propagated`]) sent to the
//!   metadata leader by any other server; the answer is `Result<(), WireError>`, the leader's
//!   status code passed through unchanged (spec §5). The answer is `Result<Option<u64>,
//!   WireError>`: consumer-group operations carry the group epoch back; `Ok(None)` is the same
//!   JSON as `Ok(())`.
//!
//! Invariants:
//! - Only the metadata leader executes an admin operation ([`execute`] checks; a follower answers
//!   "not leader" and the forwarder retries until its deadline).
//! - The [`Directory`] only grows during a run (a silent broker stays known for id lookups);
//!   [`Directory::live`] lists the brokers that answered recently.
//! - Every loop here is bounded by a deadline or stops when the server shuts down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_raft::metadata::Rejection;
use drawbridge_raft::{MetadataCommand, MetadataResponse, NodeId};
use futures::StreamExt;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::context::{Ctx, Node};
use crate::error::{Result, ServerError};
use crate::identity::node_id_of;
use crate::placement;
use crate::status::WireError;

/// How long a forwarded admin call may take in total (Liftbridge: 5 s).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a metadata proposal may take on the leader.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A broker that answered a survey this recently is listed in metadata.
const LIVE_WINDOW: Duration = Duration::from_secs(12);
/// Period of the background survey.
const SURVEY_PERIOD: Duration = Duration::from_secs(3);

/// What a server tells others about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Liftbridge server id.
    pub server_id: String,
    /// Raft node id.
    pub node_id: NodeId,
    /// Advertised client host.
    pub host: String,
    /// Advertised client port.
    pub port: u16,
    /// Raft transport address.
    pub raft_addr: String,
    /// The metadata leader this server knows of.
    pub metadata_leader: Option<NodeId>,
    /// Whether this server belongs to an initialized metadata group.
    pub initialized: bool,
    /// Id of its current master key for encryption at rest (never the key), if it has one;
    /// read by [`crate::key_rotation`].
    #[serde(default)]
    pub master_key_id: Option<String>,
}

/// Known brokers: node id → (info, when last heard from).
#[derive(Debug, Default)]
pub struct Directory {
    inner: RwLock<BTreeMap<NodeId, (ServerInfo, Instant)>>,
}

impl Directory {
    /// Records an answer.
    pub fn record(&self, info: ServerInfo) {
        self.inner
            .write()
            .insert(info.node_id, (info, Instant::now()));
    }

    /// A broker's info, if ever heard from.
    pub fn get(&self, id: NodeId) -> Option<ServerInfo> {
        self.inner.read().get(&id).map(|(i, _)| i.clone())
    }

    /// Brokers heard from within the live window.
    pub fn live(&self) -> Vec<ServerInfo> {
        self.inner
            .read()
            .values()
            .filter(|(_, t)| t.elapsed() < LIVE_WINDOW)
            .map(|(i, _)| i.clone())
            .collect()
    }

    /// Whether `id` answered within the live window.
    pub fn is_live(&self, id: NodeId) -> bool {
        self.inner
            .read()
            .get(&id)
            .is_some_and(|(_, t)| t.elapsed() < LIVE_WINDOW)
    }
}

/// This server's own info.
pub fn self_info(node: &Node) -> ServerInfo {
    let (voters, learners) = node.raft.metadata().members();
    ServerInfo {
        server_id: node.server_id.clone(),
        node_id: node.node_id,
        host: node.advertise.host.clone(),
        port: node.advertise.port,
        raft_addr: node.raft_addr.clone(),
        metadata_leader: node.raft.metadata().leader().map(|(id, _)| id),
        initialized: !voters.is_empty() || !learners.is_empty(),
        master_key_id: node.keyring.current_id().map(str::to_owned),
    }
}

/// Answers surveys on `<ns>.raft.metadata.info` until shutdown.
pub async fn serve_info(ctx: Ctx) -> Result<()> {
    let mut sub = ctx
        .nats
        .subscribe(ctx.subject("raft.metadata.info"))
        .await
        .map_err(|e| ServerError::Nats(e.to_string()))?;
    let mut stop = ctx.shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => break,
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    let Some(reply) = msg.reply else { continue };
                    match serde_json::to_vec(&self_info(&ctx)) {
                        Ok(body) => {
                            if let Err(e) = ctx.nats.publish(reply, body.into()).await {
                                debug!(error = %e, "answering a broker survey failed");
                            }
                        }
                        Err(e) => warn!(error = %e, "encoding server info failed"),
                    }
                }
            }
        }
    });
    Ok(())
}

/// Surveys the brokers for up to `window`, or until `want` other brokers answered. Every answer
/// is recorded in the directory and its raft address given to the raft router.
pub async fn survey(ctx: &Node, window: Duration, want: usize) -> Result<Vec<ServerInfo>> {
    let inbox = ctx.nats.new_inbox();
    let mut sub = ctx
        .nats
        .subscribe(inbox.clone())
        .await
        .map_err(|e| ServerError::Nats(e.to_string()))?;
    ctx.nats
        .publish_with_reply(
            ctx.subject("raft.metadata.info"),
            inbox,
            bytes::Bytes::new(),
        )
        .await
        .map_err(|e| ServerError::Nats(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + window;
    let mut seen: BTreeMap<NodeId, ServerInfo> = BTreeMap::new();
    while seen.len() < want {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(msg)) => match serde_json::from_slice::<ServerInfo>(&msg.payload) {
                Ok(info) if info.node_id != ctx.node_id => {
                    if info.node_id != node_id_of(&info.server_id) {
                        warn!(server = %info.server_id, "survey answer with a foreign node id; ignored");
                        continue;
                    }
                    if let Err(e) = ctx.raft.set_peer(info.node_id, &info.raft_addr) {
                        warn!(error = %e, peer = info.node_id, "bad raft address in a survey answer");
                    }
                    ctx.directory.record(info.clone());
                    seen.insert(info.node_id, info);
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "undecodable survey answer ignored"),
            },
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(seen.into_values().collect())
}

/// Keeps the directory fresh: surveys every few seconds until shutdown.
pub fn spawn_survey_loop(ctx: Ctx) {
    tokio::spawn(async move {
        let mut stop = ctx.shutdown.clone();
        loop {
            let (voters, learners) = ctx.raft.metadata().members();
            let others = voters
                .union(&learners)
                .filter(|v| **v != ctx.node_id)
                .count();
            if let Err(e) = survey(&ctx, Duration::from_secs(2), others.max(1)).await {
                debug!(error = %e, "broker survey failed");
            }
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => break,
                _ = tokio::time::sleep(SURVEY_PERIOD) => {}
            }
        }
    });
}

/// A stream to create, as validated by the receiving server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateStreamSpec {
    /// Stream name.
    pub name: String,
    /// Subject of partition 0.
    pub subject: String,
    /// Queue group.
    pub group: String,
    /// Replication factor as requested (0 → 1, -1 → all brokers).
    pub replication_factor: i32,
    /// Partition count (≥ 1).
    pub partitions: i32,
    /// Per-stream overrides, by key.
    pub config: BTreeMap<String, String>,
    /// Creation time, ms.
    pub created_at_ms: i64,
    /// Encrypt values at rest: the metadata leader generates and wraps one data key per
    /// partition ([`crate::encryption`]), and fails with FailedPrecondition without a key.
    #[serde(default)]
    pub encryption: bool,
}

/// An admin operation that runs on the metadata leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagated {
    /// Place and create a stream.
    CreateStream(CreateStreamSpec),
    /// Delete a stream.
    DeleteStream {
        /// Name.
        name: String,
    },
    /// Propose a command as is (node registration, partition leader records).
    Command(MetadataCommand),
    /// Add a node to the metadata group.
    Join {
        /// The joining node.
        node_id: NodeId,
        /// Its raft address.
        raft_addr: String,
    },
    /// A consumer-group operation that needs the metadata leader's judgement (coordinator
    /// choice, coordinator reports); see [`crate::groups`].
    Group(crate::groups::GroupOp),
}

/// Runs `op` on the metadata leader: here if this server leads, else forwarded over NATS.
pub async fn forward(ctx: &Node, op: Propagated) -> Result<()> {
    forward_for_epoch(ctx, op).await.map(drop)
}

/// [`forward`], returning the consumer-group epoch the operation reported, if any.
pub async fn forward_for_epoch(ctx: &Node, op: Propagated) -> Result<Option<u64>> {
    let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
    let body = serde_json::to_vec(&op).map_err(|e| ServerError::Internal(e.to_string()))?;
    let mut last_err = ServerError::Internal("no known metadata leader".into());
    loop {
        let meta = ctx.raft.metadata();
        if meta.is_leader() {
            return execute(ctx, op).await;
        }
        match meta.leader() {
            Some((leader, _)) if leader != ctx.node_id => {
                let subject = ctx.subject(&format!("raft.metadata.propagate.{leader}"));
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, ctx.nats.request(subject, body.clone().into()))
                    .await
                {
                    Ok(Ok(msg)) => {
                        match serde_json::from_slice::<std::result::Result<Option<u64>, WireError>>(
                            &msg.payload,
                        ) {
                            Ok(Ok(epoch)) => return Ok(epoch),
                            Ok(Err(w)) if w.message == NOT_LEADER => {
                                last_err = ServerError::Internal("metadata leader moved".into());
                            }
                            Ok(Err(w)) => return Err(w.into_error()),
                            Err(e) => {
                                return Err(ServerError::Internal(format!(
                                    "bad answer from the metadata leader: {e}"
                                )))
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        last_err =
                            ServerError::Internal(format!("forwarding to metadata leader: {e}"))
                    }
                    Err(_) => {
                        return Err(ServerError::Internal(
                            "forwarding to the metadata leader timed out".into(),
                        ))
                    }
                }
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(last_err);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const NOT_LEADER: &str = "not the metadata leader";

/// Answers forwarded admin operations on `<ns>.raft.metadata.propagate.<node id>`.
pub async fn serve_propagate(ctx: Ctx) -> Result<()> {
    let subject = ctx.subject(&format!("raft.metadata.propagate.{}", ctx.node_id));
    let mut sub = ctx
        .nats
        .subscribe(subject)
        .await
        .map_err(|e| ServerError::Nats(e.to_string()))?;
    let mut stop = ctx.shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => break,
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    let Some(reply) = msg.reply else { continue };
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let result: std::result::Result<Option<u64>, WireError> =
                            match serde_json::from_slice::<Propagated>(&msg.payload) {
                                Err(e) => Err(WireError::from_error(&ServerError::InvalidArgument(
                                    format!("undecodable admin request: {e}"),
                                ))),
                                Ok(op) if !ctx.raft.metadata().is_leader() => {
                                    debug!(?op, "forwarded request reached a non-leader");
                                    Err(WireError { code: tonic::Code::Internal as i32, message: NOT_LEADER.into() })
                                }
                                Ok(op) => execute(&ctx, op).await.map_err(|e| WireError::from_error(&e)),
                            };
                        match serde_json::to_vec(&result) {
                            Ok(body) => {
                                if let Err(e) = ctx.nats.publish(reply, body.into()).await {
                                    debug!(error = %e, "answering a forwarded request failed");
                                }
                            }
                            Err(e) => warn!(error = %e, "encoding an admin answer failed"),
                        }
                    });
                }
            }
        }
    });
    Ok(())
}

/// All metadata members (voters and learners): the brokers of the cluster.
pub fn cluster_members(ctx: &Node) -> Vec<NodeId> {
    let (voters, learners) = ctx.raft.metadata().members();
    let all: BTreeSet<NodeId> = voters.union(&learners).copied().collect();
    all.into_iter().collect()
}

/// Proposes `cmd` on this server, which must lead the metadata group.
pub(crate) async fn propose(ctx: &Node, cmd: MetadataCommand) -> Result<MetadataResponse> {
    ctx.raft
        .metadata()
        .propose(cmd, PROPOSE_TIMEOUT)
        .await
        .map_err(|e| ServerError::Internal(format!("metadata replication failed: {e}")))
}

/// The error class of a rejected command (spec §5).
pub(crate) fn rejection(r: Rejection) -> ServerError {
    match r {
        Rejection::StreamExists(n) => {
            ServerError::AlreadyExists(format!("stream {n} already exists"))
        }
        Rejection::StreamNotFound(n) => ServerError::NotFound(format!("stream {n} not found")),
        Rejection::PartitionNotFound { stream, partition } => {
            ServerError::NotFound(format!("partition {stream}/{partition} not found"))
        }
        Rejection::GroupNotFound(g) => ServerError::NotFound(format!("group {g} not found")),
        other => ServerError::FailedPrecondition(other.to_string()),
    }
}

/// Whether `op` is refused up front when the metadata leader's disk is below
/// `storage.min.free.bytes`: everything a client asks for (CreateStream, DeleteStream, pause,
/// readonly, cursors, consumer groups, ...). Not refused: what keeps the cluster working
/// (node joins and registrations, partition leader and ISR records); those are proposed and,
/// on a truly full disk, wait in the raft log until space returns
/// (`drawbridge_raft`'s disk-full waits).
fn refused_when_disk_full(op: &Propagated) -> bool {
    !matches!(
        op,
        Propagated::Join { .. }
            | Propagated::Command(
                MetadataCommand::RegisterNode { .. }
                    | MetadataCommand::SetPartitionLeader { .. }
                    | MetadataCommand::SetPartitionIsr { .. }
            )
    )
}

/// `ResourceExhausted` when this node (the metadata leader) is below `storage.min.free.bytes`
/// and `op` is one a full disk refuses ([`refused_when_disk_full`]): answered at once instead
/// of a proposal that would wait for space until the client's deadline.
fn metadata_disk_check(ctx: &Node, op: &Propagated) -> Result<()> {
    if !refused_when_disk_full(op) {
        return Ok(());
    }
    match ctx
        .stats
        .disk
        .check(&ctx.config.data_dir, ctx.config.storage.min_free_bytes)
    {
        Ok(()) => Ok(()),
        Err(full) => {
            debug!(
                free = full.free,
                min = full.min,
                "metadata change refused: data directory below storage.min.free.bytes"
            );
            Err(ServerError::ResourceExhausted(format!(
                "insufficient disk space on the metadata leader (server {}): {} bytes free, \
                 storage.min.free.bytes is {}",
                ctx.server_id, full.free, full.min
            )))
        }
    }
}

/// Executes an admin operation on this server, which must lead the metadata group; returns the
/// consumer-group epoch for group operations. Refuses client operations with
/// `ResourceExhausted` when this node's disk is below `storage.min.free.bytes`
/// (`metadata_disk_check`): every path to the metadata leader (local or forwarded) ends here.
pub async fn execute(ctx: &Node, op: Propagated) -> Result<Option<u64>> {
    metadata_disk_check(ctx, &op)?;
    let cmd = match op {
        Propagated::CreateStream(spec) => {
            let state = ctx.raft.metadata().state().state;
            if state.streams.contains_key(&spec.name) {
                return Err(ServerError::AlreadyExists(format!(
                    "stream {} already exists",
                    spec.name
                )));
            }
            let brokers = cluster_members(ctx);
            let rf = match spec.replication_factor {
                -1 => brokers.len(),
                0 => 1,
                n if n < 0 => {
                    return Err(ServerError::InvalidArgument(format!(
                        "Invalid replicationFactor {n}"
                    )))
                }
                n => usize::try_from(n).unwrap_or(usize::MAX),
            };
            let partitions = usize::try_from(spec.partitions.max(1)).unwrap_or(1);
            let replicas = placement::place(&state, &brokers, partitions, rf)?;
            let mut data_keys = Vec::new();
            if spec.encryption {
                for p in 0..replicas.len() {
                    let p = i32::try_from(p).unwrap_or(i32::MAX);
                    let key = ctx.keyring.new_data_key(&spec.name, p, 0).map_err(|e| {
                        ServerError::FailedPrecondition(format!(
                            "metadata leader {}: {e}",
                            ctx.server_id
                        ))
                    })?;
                    data_keys.push(key);
                }
            }
            MetadataCommand::CreateStream {
                name: spec.name,
                subject: spec.subject,
                group: spec.group,
                replicas,
                config: spec.config,
                created_at_ms: spec.created_at_ms,
                data_keys,
            }
        }
        Propagated::DeleteStream { name } => MetadataCommand::DeleteStream { name },
        Propagated::Command(cmd) => cmd,
        Propagated::Group(op) => return crate::groups::execute(ctx, op).await,
        Propagated::Join { node_id, raft_addr } => {
            ctx.raft
                .set_peer(node_id, &raft_addr)
                .map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
            if !cluster_members(ctx).contains(&node_id) {
                info!(node = node_id, addr = %raft_addr, "adding a node to the metadata group");
                ctx.raft
                    .metadata()
                    .add_node(node_id, raft_addr.clone())
                    .await
                    .map_err(|e| ServerError::Internal(format!("adding node {node_id}: {e}")))?;
            }
            MetadataCommand::RegisterNode {
                node_id,
                addr: raft_addr,
            }
        }
    };
    match propose(ctx, cmd).await? {
        MetadataResponse::Applied { group_epoch } => Ok(group_epoch),
        MetadataResponse::Rejected(r) => Err(rejection(r)),
    }
}

/// Forms or joins the metadata group (see `docs` in [`crate::app`] for the rules), then makes
/// sure this node's raft address is registered. Returns when this node is a member.
pub async fn form(ctx: &Ctx, embedded_only: bool) -> Result<()> {
    let meta = ctx.raft.metadata();
    let (voters, learners) = meta.members();
    let clustering = &ctx.config.clustering;
    let me: BTreeMap<NodeId, String> = [(ctx.node_id, ctx.raft_addr.clone())].into();
    if !voters.is_empty() || !learners.is_empty() {
        info!("metadata group state recovered; not bootstrapping");
    } else if clustering.raft_bootstrap_seed {
        info!("bootstrapping the cluster as its seed");
        meta.bootstrap(me).await?;
    } else if !clustering.raft_bootstrap_peers.is_empty() {
        let mut peers: BTreeMap<NodeId, String> = BTreeMap::new();
        let wanted: BTreeSet<NodeId> = clustering
            .raft_bootstrap_peers
            .iter()
            .chain(std::iter::once(&ctx.server_id))
            .map(|s| node_id_of(s))
            .collect();
        peers.insert(ctx.node_id, ctx.raft_addr.clone());
        let mut last_log = Instant::now();
        while !wanted.iter().all(|w| peers.contains_key(w)) {
            if ctx.stopping() {
                return Err(ServerError::Internal("stopped while bootstrapping".into()));
            }
            for info in survey(ctx, Duration::from_secs(1), wanted.len() - 1).await? {
                if wanted.contains(&info.node_id) {
                    peers.insert(info.node_id, info.raft_addr);
                }
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                info!(
                    have = peers.len(),
                    want = wanted.len(),
                    "waiting for bootstrap peers"
                );
                last_log = Instant::now();
            }
        }
        info!(peers = ?peers, "bootstrapping the cluster with explicit peers");
        meta.bootstrap(peers).await?;
    } else if embedded_only {
        info!("standalone: bootstrapping as a single-node cluster");
        meta.bootstrap(me).await?;
    } else {
        let found = survey(ctx, Duration::from_secs(2), usize::MAX).await?;
        if found.iter().any(|i| i.initialized) {
            join(ctx).await?;
        } else {
            info!("no cluster found on NATS: bootstrapping as a single-node cluster");
            meta.bootstrap(me).await?;
        }
    }
    meta.wait_for_leader(Duration::from_secs(30)).await?;
    spawn_registration(ctx.clone());
    Ok(())
}

async fn join(ctx: &Ctx) -> Result<()> {
    info!("joining the existing cluster");
    loop {
        if ctx.stopping() {
            return Err(ServerError::Internal("stopped while joining".into()));
        }
        let found = survey(ctx, Duration::from_secs(1), usize::MAX).await?;
        if let Some(leader) = found.iter().find_map(|i| i.metadata_leader) {
            let subject = ctx.subject(&format!("raft.metadata.propagate.{leader}"));
            let op = Propagated::Join {
                node_id: ctx.node_id,
                raft_addr: ctx.raft_addr.clone(),
            };
            let body = serde_json::to_vec(&op).map_err(|e| ServerError::Internal(e.to_string()))?;
            match tokio::time::timeout(
                Duration::from_secs(30),
                ctx.nats.request(subject, body.into()),
            )
            .await
            {
                Ok(Ok(msg)) => {
                    match serde_json::from_slice::<std::result::Result<(), WireError>>(&msg.payload)
                    {
                        Ok(Ok(())) => return Ok(()),
                        Ok(Err(w)) => warn!(error = %w.message, "join refused; retrying"),
                        Err(e) => warn!(error = %e, "bad join answer; retrying"),
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "join request failed; retrying"),
                Err(_) => warn!("join request timed out; retrying"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Registers this node's raft address in the metadata (retrying until done), and keeps the raft
/// router's peer addresses in step with the registered ones.
fn spawn_registration(ctx: Ctx) {
    tokio::spawn(async move {
        let mut stop = ctx.shutdown.clone();
        let mut watch = ctx.raft.metadata().watch();
        let mut registered = false;
        loop {
            let state = watch.borrow_and_update().state.clone();
            for (id, addr) in &state.nodes {
                if *id != ctx.node_id {
                    if let Err(e) = ctx.raft.set_peer(*id, addr) {
                        warn!(error = %e, peer = id, "bad registered raft address");
                    }
                }
            }
            if !registered {
                if state.nodes.get(&ctx.node_id) == Some(&ctx.raft_addr) {
                    registered = true;
                } else {
                    let op = Propagated::Command(MetadataCommand::RegisterNode {
                        node_id: ctx.node_id,
                        addr: ctx.raft_addr.clone(),
                    });
                    match forward(&ctx, op).await {
                        Ok(()) => registered = true,
                        Err(e) => debug!(error = %e, "registering this node failed; will retry"),
                    }
                }
            }
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => break,
                r = watch.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(Duration::from_secs(1)), if !registered => {}
            }
        }
    });
}

/// Shared directory handle type, for callers that hold it separately.
pub type SharedDirectory = Arc<Directory>;
