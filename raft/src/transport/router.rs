//! Client side of the transport: one tonic `Channel` per peer, shared by every group.
//!
//! Invariants:
//! - At most one channel per (peer id, address); a changed address replaces the channel.
//! - Channels connect lazily and reconnect by themselves; a dead peer costs a failed RPC, which
//!   openraft answers with backoff.
//! - Every RPC is bounded by openraft's hard TTL for it.
//! - With coalescing on (the default), an append-entries without entries goes through the
//!   peer's heartbeat batcher (`super::coalesce`); every other RPC is its own gRPC call, except
//!   openraft's replication streams, which (by default) each ride one `AppendStream` call
//!   (`super::append_stream`).
//! - In tests, every RPC first passes the node's fault gate (`super::faults`), if it has one.
//! - A peer's channel dials the route configured for its advertised address
//!   (`RaftConfig::peer_routes`), or the advertised address itself; the peer stays keyed by
//!   its advertised address either way.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use drawbridge_proto::raft as pb;
use drawbridge_proto::raft::raft_transport_client::RaftTransportClient;
use openraft::alias::SnapshotOf;
use openraft::alias::VoteOf;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft_multi::GroupRouter;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use super::coalesce;
use super::coalesce::Beat;
use super::faults::NetworkFaults;
use super::group_kind::GroupKind;
use super::liveness::LivenessBeat;
use super::liveness::LivenessReply;
use super::wire;
use crate::codec;
use crate::types::GroupId;
use crate::types::NodeId;

type Client = RaftTransportClient<Channel>;

/// Which RPC to call.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    PreVote,
    Snapshot,
    TransferLeader,
    MayLead,
}

/// Why an RPC failed, before it is mapped to an openraft error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The peer could not be reached (no address, connect failure, timeout, group missing).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The peer answered with something we could not use.
    #[error("network: {0}")]
    Network(String),
}

impl SendError {
    pub(crate) fn into_rpc<C: openraft::RaftTypeConfig>(self) -> RPCError<C> {
        match self {
            SendError::Unreachable(m) => RPCError::Unreachable(Unreachable::from_string(m)),
            SendError::Network(m) => RPCError::Network(NetworkError::from_string(m)),
        }
    }

    fn into_streaming<C: openraft::RaftTypeConfig>(self) -> StreamingError<C> {
        match self {
            SendError::Unreachable(m) => StreamingError::Unreachable(Unreachable::from_string(m)),
            SendError::Network(m) => StreamingError::Network(NetworkError::from_string(m)),
        }
    }
}

#[derive(Default)]
struct Peers {
    /// Peer id -> (address, client on the peer's shared channel).
    clients: HashMap<NodeId, (String, Client)>,
    /// Peer id -> its heartbeat batcher (started on first use, dropped with the client).
    beats: HashMap<NodeId, mpsc::UnboundedSender<Beat>>,
}

/// The shared router (see the module docs). Cheap to clone.
#[derive(Clone)]
pub(crate) struct Router {
    peers: Arc<Mutex<Peers>>,
    /// Send append-entries without entries through the per-peer batcher (`super::coalesce`).
    coalesce: bool,
    /// Carry replication streams on `AppendStream` calls (`super::append_stream`) with this
    /// many requests in flight; 0: one append-entries RPC at a time.
    stream_window: usize,
    /// Tests only: this node's id and the shared fault set every RPC passes through
    /// (`super::faults`).
    faults: Option<(NodeId, NetworkFaults)>,
    /// Advertised peer address -> address dialled instead (`RaftConfig::peer_routes`).
    routes: Arc<std::collections::BTreeMap<String, String>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("peers", &self.peers.lock().clients.len())
            .finish()
    }
}

impl Router {
    /// A router with no peers; `coalesce` batches heartbeats per peer.
    pub(crate) fn new(coalesce: bool) -> Self {
        Self {
            peers: Arc::default(),
            coalesce,
            stream_window: 0,
            faults: None,
            routes: Arc::default(),
        }
    }

    /// Dials `routes[addr]` instead of a peer's advertised `addr` when listed.
    pub(crate) fn with_routes(
        mut self,
        routes: std::collections::BTreeMap<String, String>,
    ) -> Self {
        self.routes = Arc::new(routes);
        self
    }

    /// Replication streams use `AppendStream` calls with `window` requests in flight (0: off).
    pub(crate) fn with_stream_window(mut self, window: usize) -> Self {
        self.stream_window = window;
        self
    }

    /// Requests in flight on an `AppendStream` call; 0 when replication streams do not use them.
    pub(crate) fn stream_window(&self) -> usize {
        self.stream_window
    }

    /// Routes every RPC of node `me` through `faults` (tests; see `super::faults`).
    pub(crate) fn with_faults(mut self, me: NodeId, faults: Option<NetworkFaults>) -> Self {
        self.faults = faults.map(|f| (me, f));
        self
    }

    /// The fault gate before a request to `target` (a no-op without faults).
    pub(crate) async fn fault_gate(&self, target: NodeId) -> Result<(), SendError> {
        match &self.faults {
            Some((me, f)) => f
                .before_send(*me, target)
                .await
                .map_err(SendError::Unreachable),
            None => Ok(()),
        }
    }

    /// The fault gate of a reply from `target` (a no-op without faults).
    pub(crate) fn fault_reply(&self, target: NodeId) -> Result<(), SendError> {
        match &self.faults {
            Some((me, f)) => f.after_reply(*me, target).map_err(SendError::Unreachable),
            None => Ok(()),
        }
    }

    /// Records (or updates) the address of a peer.
    pub(crate) fn set_peer(&self, id: NodeId, addr: &str) -> Result<(), SendError> {
        let mut peers = self.peers.lock();
        if peers.clients.get(&id).is_some_and(|(a, _)| a == addr) {
            return Ok(());
        }
        let dial = self.routes.get(addr).map_or(addr, String::as_str);
        let endpoint = Endpoint::from_shared(format!("http://{dial}"))
            .map_err(|e| SendError::Unreachable(format!("bad address {dial}: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            // Requests queued towards the connection: every group's RPCs share it.
            .buffer_size(64 * 1024)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .initial_stream_window_size(super::STREAM_WINDOW)
            // Raft abandons RPCs routinely (timeouts, new terms); never let the client side
            // close the shared connection over reset counts either.
            .http2_max_concurrent_reset_streams(super::MAX_PENDING_ACCEPT_RESETS)
            .http2_max_local_error_reset_streams(None);
        let client = RaftTransportClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        peers.clients.insert(id, (addr.to_string(), client));
        peers.beats.remove(&id);
        Ok(())
    }

    /// Forgets a peer (its channel closes when in-flight RPCs finish).
    pub(crate) fn remove_peer(&self, id: NodeId) {
        let mut peers = self.peers.lock();
        peers.clients.remove(&id);
        peers.beats.remove(&id);
    }

    /// The heartbeat batcher of a peer, started on first use (needs a tokio runtime).
    fn batcher(&self, id: NodeId) -> Result<mpsc::UnboundedSender<Beat>, SendError> {
        let mut peers = self.peers.lock();
        if let Some(tx) = peers.beats.get(&id).filter(|tx| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        let client = peers
            .clients
            .get(&id)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| SendError::Unreachable(format!("no address for node {id}")))?;
        let tx = coalesce::spawn_batcher(client, id);
        peers.beats.insert(id, tx.clone());
        Ok(tx)
    }

    /// Sends an append-entries without entries through the peer's heartbeat batcher.
    async fn call_coalesced<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        group: &GroupId,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, SendError> {
        self.fault_gate(target).await?;
        let payload = codec::encode(req).map_err(|e| SendError::Network(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let beat = Beat {
            group: group.clone(),
            payload,
            ttl,
            reply: tx,
        };
        self.batcher(target)?.send(beat).map_err(|_| {
            SendError::Unreachable(format!("heartbeat batcher of node {target} stopped"))
        })?;
        let reply = match tokio::time::timeout(ttl, rx).await {
            Err(_) => {
                return Err(SendError::Unreachable(format!(
                    "heartbeat to node {target} timed out"
                )))
            }
            Ok(Err(_)) => {
                return Err(SendError::Unreachable(format!(
                    "heartbeat batch to node {target} dropped"
                )))
            }
            Ok(Ok(r)) => r?,
        };
        self.fault_reply(target)?;
        decode_reply(target, group, reply)
    }

    pub(crate) fn client(&self, id: NodeId) -> Result<Client, SendError> {
        self.peers
            .lock()
            .clients
            .get(&id)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| SendError::Unreachable(format!("no address for node {id}")))
    }

    /// Sends a liveness beat (`super::liveness`) to `target`; returns its reply.
    pub(crate) async fn liveness(
        &self,
        target: NodeId,
        beat: &LivenessBeat,
        ttl: Duration,
    ) -> Result<LivenessReply, SendError> {
        self.fault_gate(target).await?;
        let payload = codec::encode(beat).map_err(|e| SendError::Network(e.to_string()))?;
        let mut client = self.client(target)?;
        let request = pb::RaftRequest {
            group: None,
            payload: payload.into(),
        };
        let reply = match tokio::time::timeout(ttl, client.liveness(request)).await {
            Err(_) => {
                return Err(SendError::Unreachable(format!(
                    "liveness beat to node {target} timed out"
                )))
            }
            Ok(Err(status)) => {
                return Err(SendError::Unreachable(format!(
                    "liveness beat to node {target}: {status}"
                )))
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        self.fault_reply(target)?;
        match reply.result {
            Some(pb::raft_reply::Result::Payload(bytes)) => codec::decode("liveness reply", &bytes)
                .map_err(|e| SendError::Network(e.to_string())),
            Some(pb::raft_reply::Result::Failure(f)) => Err(SendError::Unreachable(format!(
                "node {target} liveness: {} ({})",
                f.message, f.code
            ))),
            None => Err(SendError::Network(format!(
                "empty liveness reply from node {target}"
            ))),
        }
    }

    /// Asks `target` whether it would take the leadership of partition group `id` now (the
    /// `MayLead` RPC); an unreachable peer is an error, not a "no".
    pub(crate) async fn may_lead(
        &self,
        target: NodeId,
        group: &GroupId,
        ttl: Duration,
    ) -> Result<bool, SendError> {
        self.call(target, group, Rpc::MayLead, &(), ttl).await
    }

    /// Sends one encoded request and decodes the reply.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        group: &GroupId,
        rpc: Rpc,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, SendError> {
        self.fault_gate(target).await?;
        let payload = codec::encode(req).map_err(|e| SendError::Network(e.to_string()))?;
        let mut client = self.client(target)?;
        let request = pb::RaftRequest {
            group: Some(wire::group_to_pb(group)),
            payload: payload.into(),
        };
        let fut = async move {
            match rpc {
                Rpc::Append => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::PreVote => client.pre_vote(request).await,
                Rpc::Snapshot => client.install_snapshot(request).await,
                Rpc::TransferLeader => client.transfer_leader(request).await,
                Rpc::MayLead => client.may_lead(request).await,
            }
        };
        let reply = within(ttl, || format!("{rpc:?} to node {target}"), fut).await?;
        self.fault_reply(target)?;
        decode_reply(target, group, reply)
    }
}

/// Awaits a gRPC call for at most `ttl`; a timeout or an error status is `Unreachable`, named
/// by `what` (e.g. "Vote to node 3", formatted only then).
pub(super) async fn within<T>(
    ttl: Duration,
    what: impl FnOnce() -> String,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, SendError> {
    match tokio::time::timeout(ttl, call).await {
        Err(_) => Err(SendError::Unreachable(format!("{} timed out", what()))),
        Ok(Err(status)) => Err(SendError::Unreachable(format!("{}: {status}", what()))),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

/// The openraft response in a reply, or the reply's failure as an error.
pub(super) fn decode_reply<Resp: DeserializeOwned>(
    target: NodeId,
    group: &GroupId,
    reply: pb::RaftReply,
) -> Result<Resp, SendError> {
    match reply.result {
        Some(pb::raft_reply::Result::Payload(bytes)) => {
            codec::decode("raft reply", &bytes).map_err(|e| SendError::Network(e.to_string()))
        }
        Some(pb::raft_reply::Result::Failure(f)) => Err(SendError::Unreachable(format!(
            "node {target} group {group}: {} ({})",
            f.message, f.code
        ))),
        None => Err(SendError::Network(format!(
            "empty reply from node {target}"
        ))),
    }
}

impl<C: GroupKind> GroupRouter<C, GroupId> for Router {
    type SnapshotData = C::Snapshot;

    async fn append_entries(
        &self,
        target: NodeId,
        group_id: GroupId,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let ttl = option.hard_ttl();
        let r = if self.coalesce && rpc.entries.is_empty() {
            self.call_coalesced(target, &group_id, &rpc, ttl).await
        } else {
            self.call(target, &group_id, Rpc::Append, &rpc, ttl).await
        };
        r.map_err(SendError::into_rpc)
    }

    async fn vote(
        &self,
        target: NodeId,
        group_id: GroupId,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(target, &group_id, Rpc::Vote, &rpc, option.hard_ttl())
            .await
            .map_err(SendError::into_rpc)
    }

    async fn pre_vote(
        &self,
        target: NodeId,
        group_id: GroupId,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(target, &group_id, Rpc::PreVote, &rpc, option.hard_ttl())
            .await
            .map_err(SendError::into_rpc)
    }

    async fn full_snapshot(
        &self,
        target: NodeId,
        group_id: GroupId,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Self::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let req = (vote, snapshot.meta, snapshot.snapshot);
        let send = self.call(target, &group_id, Rpc::Snapshot, &req, option.hard_ttl());
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => r.map_err(SendError::into_streaming),
        }
    }

    async fn transfer_leader(
        &self,
        target: NodeId,
        group_id: GroupId,
        req: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        self.call(
            target,
            &group_id,
            Rpc::TransferLeader,
            &req,
            option.hard_ttl(),
        )
        .await
        .map_err(SendError::into_rpc)
    }
}
