//! [`Node`]: what every part of a running server shares — configuration, identity, the raft
//! node, the NATS client, the broker directory and the hosted partitions.
//!
//! Invariants: built once by [`crate::app`] after NATS and raft are up; immutable except for the
//! interior-mutable registries, which have their own invariants ([`crate::cluster::Directory`],
//! [`crate::partitions::Partitions`]); `shutdown` flips to `true` exactly once, when the server
//! begins to stop, and every background task watches it.

use std::sync::Arc;

use drawbridge_raft::{NodeId, RaftNode};
use tokio::sync::watch;

use crate::cluster::Directory;
use crate::config::{Config, HostPort};
use crate::error::{Result, ServerError};
use crate::partitions::Partitions;
use crate::stats::NodeStats;

/// Shared handle on the running server.
pub type Ctx = Arc<Node>;

/// The state of one running server (see the module docs).
#[derive(Debug)]
pub struct Node {
    /// The loaded configuration.
    pub config: Config,
    /// Liftbridge server id (what clients see in metadata).
    pub server_id: String,
    /// Raft node id, derived from `server_id`.
    pub node_id: NodeId,
    /// Client API address advertised in metadata.
    pub advertise: HostPort,
    /// Raft transport address advertised to peers.
    pub raft_addr: String,
    /// The raft layer.
    pub raft: RaftNode,
    /// The one NATS connection of this server.
    pub nats: async_nats::Client,
    /// Known brokers (self and survey answers).
    pub directory: Directory,
    /// Partition replicas hosted here, their leadership and ingest tasks.
    pub partitions: Partitions,
    /// Consumer-group heartbeats and coordinator reports kept in memory ([`crate::groups`]).
    pub groups: crate::groups::Groups,
    /// Flips to `true` when the server stops.
    pub shutdown: watch::Receiver<bool>,
    /// Node-wide counters and latency histograms (bumped by the API and the leadership
    /// watches, read by [`crate::metrics`]).
    pub stats: NodeStats,
    /// Bounds how many partition replicas compact at once on this node
    /// (`streams.compact.max.goroutines` permits; see [`crate::retention`]).
    pub compaction_slots: Arc<tokio::sync::Semaphore>,
    /// Master keys for encryption at rest ([`crate::encryption`]); fixed for the run.
    pub keyring: Arc<crate::encryption::Keyring>,
    /// Ack inboxes of this process's publish sessions, served in-process ([`crate::acks`]).
    pub local_inboxes: crate::acks::LocalInboxes,
    /// When `nats` is connected to this process's embedded broker: the same broker in-process,
    /// for the message paths that skip the loopback connection ([`Node::publish_message`],
    /// the ingest's subscription).
    pub local_nats: Option<crate::embedded_nats::local::LocalNats>,
}

impl Node {
    /// `<namespace>.<suffix>`.
    pub fn subject(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.config.clustering.namespace)
    }

    /// Publishes `payload` on `subject` like `nats.publish`: routed in-process when NATS is
    /// the embedded broker ([`crate::embedded_nats::local`]; delivered to every subscriber when
    /// this returns), else handed to the NATS connection. Either way it reaches every
    /// subscriber of the subject, in order with this node's earlier `publish_message` calls.
    pub async fn publish_message(&self, subject: String, payload: bytes::Bytes) -> Result<()> {
        match &self.local_nats {
            Some(local) => local
                .publish(subject, payload)
                .map(drop)
                .map_err(|e| ServerError::Nats(e.to_string())),
            None => self
                .nats
                .publish(subject, payload)
                .await
                .map_err(|e| ServerError::Nats(e.to_string())),
        }
    }

    /// Whether shutdown has begun.
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The server id for a raft node id: from the directory, else the decimal node id.
    pub fn server_id_of(&self, node: NodeId) -> String {
        if node == self.node_id {
            return self.server_id.clone();
        }
        self.directory
            .get(node)
            .map(|i| i.server_id)
            .unwrap_or_else(|| node.to_string())
    }
}

/// Resolves once `rx` holds `true` (or its sender is gone). The watch guard is dropped before
/// this returns, so callers may await afterwards from `Send` futures.
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
