//! Commands of the metadata group and their outcomes.
//!
//! Invariant: applying a command is deterministic and depends only on the current
//! [`MetadataState`](super::MetadataState) and the command itself (timestamps are chosen by the
//! proposer and carried in the command), so every replica reaches the same state. A command that
//! does not fit the state is *rejected*: it still occupies a log entry, changes nothing, and its
//! proposer receives the typed [`Rejection`].

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use crate::types::NodeId;

/// A change to the cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// Records a node's raft address (so every node can dial every other).
    RegisterNode {
        /// The node.
        node_id: NodeId,
        /// Its raft transport address.
        addr: String,
    },
    /// Creates a stream with its partitions and their replica assignments.
    CreateStream {
        /// Unique stream name.
        name: String,
        /// NATS subject of partition 0 (partition i records `subject.i`).
        subject: String,
        /// Optional load-balance group of the subscription.
        group: String,
        /// Replica node ids per partition, the first is the preferred leader.
        replicas: Vec<Vec<NodeId>>,
        /// Per-stream overrides of server defaults (retention, compaction, ...), by key.
        config: BTreeMap<String, String>,
        /// Creation time chosen by the proposer, ms since the epoch.
        created_at_ms: i64,
        /// Encryption at rest: one wrapped data key per partition (index = partition number),
        /// generated and wrapped by the proposer; empty for a stream stored in plaintext.
        /// Anything else than empty or one key per partition is rejected.
        data_keys: Vec<WrappedDataKey>,
    },
    /// Deletes a stream and all of its partitions.
    DeleteStream {
        /// Stream name.
        name: String,
    },
    /// Records who leads a partition (written by the new partition leader).
    SetPartitionLeader {
        /// Stream name.
        stream: String,
        /// Partition number.
        partition: i32,
        /// The new leader.
        leader: NodeId,
        /// The partition raft term in which it leads; older terms are ignored.
        leader_epoch: u64,
    },
    /// Pauses partitions (all of them when `partitions` is empty).
    PauseStream {
        /// Stream name.
        name: String,
        /// Partitions to pause; empty = all.
        partitions: Vec<i32>,
        /// Resume every partition when any one of them is published to again.
        resume_all: bool,
        /// Time of the pause chosen by the proposer, ns since the epoch.
        at_ns: i64,
    },
    /// Resumes a paused partition, and every other paused partition of its stream when the
    /// stream was paused with `resume_all`.
    ResumePartition {
        /// Stream name.
        stream: String,
        /// Partition number.
        partition: i32,
        /// Time of the resume chosen by the proposer, ns since the epoch.
        at_ns: i64,
    },
    /// Sets or clears the readonly flag (all partitions when `partitions` is empty).
    SetStreamReadonly {
        /// Stream name.
        name: String,
        /// Partitions; empty = all.
        partitions: Vec<i32>,
        /// New flag.
        readonly: bool,
        /// Time of the change chosen by the proposer, ns since the epoch.
        at_ns: i64,
    },
    /// Adds a consumer to a consumer group, creating the group with `coordinator` if absent.
    JoinConsumerGroup {
        /// Group id.
        group: String,
        /// Consumer id.
        consumer: String,
        /// Streams the consumer reads.
        streams: Vec<String>,
        /// Coordinator to use if the group is new.
        coordinator: NodeId,
    },
    /// Removes a consumer from a group; the group is deleted when it becomes empty.
    LeaveConsumerGroup {
        /// Group id.
        group: String,
        /// Consumer id.
        consumer: String,
        /// The epoch the caller saw, if it must match (a stale epoch is rejected); `None` for a
        /// member leaving on its own request.
        expected_epoch: Option<u64>,
        /// Removed by the coordinator because its heartbeats stopped.
        expired: bool,
    },
    /// Moves a group's coordinator (after the old one failed); bumps the epoch.
    SetGroupCoordinator {
        /// Group id.
        group: String,
        /// New coordinator.
        coordinator: NodeId,
        /// The epoch the caller saw; a stale epoch is rejected.
        expected_epoch: u64,
    },
    /// Stores a cursor (a committed consumer position).
    SetCursor {
        /// Cursor id.
        cursor_id: String,
        /// Stream.
        stream: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
    /// Removes the activity events up to raft index `through` (they were published to the
    /// `__activity` stream).
    ActivityPublished {
        /// Last published event id (raft index).
        through: u64,
    },
    /// Replaces the wrapping of a partition's data keys (after a master key rotation): the
    /// same key ids, wrapped by another master key. Rejected unless the partition is encrypted
    /// and `keys` has exactly the ids it has. The keys themselves must be unchanged: the
    /// proposer unwraps and wraps again, it never draws new ones here.
    RewrapDataKeys {
        /// Stream name.
        stream: String,
        /// Partition number.
        partition: i32,
        /// The re-wrapped keys.
        keys: Vec<WrappedDataKey>,
    },
    /// Records a partition's in-sync replicas, as computed by its leader from raft replication
    /// progress. Ignored unless `leader`/`leader_epoch` are the recorded leader and epoch (a
    /// deposed leader's late write cannot overwrite its successor's view).
    SetPartitionIsr {
        /// Stream name.
        stream: String,
        /// Partition number.
        partition: i32,
        /// The leader that computed the set.
        leader: NodeId,
        /// Its partition raft term.
        leader_epoch: u64,
        /// The in-sync replicas (the leader among them).
        isr: Vec<NodeId>,
    },
}

/// A partition's data key for encryption at rest, wrapped (encrypted and authenticated) by a
/// master key that never leaves the servers' environment. The metadata group stores it as
/// opaque bytes: wrapping, unwrapping and the record format belong to the server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedDataKey {
    /// Id of the data key within its partition (carried by every value it sealed).
    pub id: u32,
    /// Id of the master key that wrapped it (a digest of the master key, not the key).
    pub master_key_id: String,
    /// The wrapped key: nonce, ciphertext and tag.
    pub wrapped: Vec<u8>,
}

impl fmt::Debug for WrappedDataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedDataKey")
            .field("id", &self.id)
            .field("master_key_id", &self.master_key_id)
            .field("wrapped_len", &self.wrapped.len())
            .finish()
    }
}

impl fmt::Display for MetadataCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a command was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// A stream with that name exists.
    #[error("stream {0} already exists")]
    StreamExists(String),
    /// No stream with that name.
    #[error("stream {0} not found")]
    StreamNotFound(String),
    /// No such partition.
    #[error("partition {stream}/{partition} not found")]
    PartitionNotFound {
        /// Stream.
        stream: String,
        /// Partition.
        partition: i32,
    },
    /// The command is malformed (e.g. no partitions, empty replica set).
    #[error("invalid command: {0}")]
    Invalid(String),
    /// No such consumer group.
    #[error("consumer group {0} not found")]
    GroupNotFound(String),
    /// The caller's epoch is stale.
    #[error("consumer group {group} epoch is {current}, caller had {expected}")]
    EpochMismatch {
        /// Group.
        group: String,
        /// Current epoch.
        current: u64,
        /// Caller's epoch.
        expected: u64,
    },
    /// The consumer is not a member.
    #[error("consumer {consumer} is not a member of group {group}")]
    NotMember {
        /// Group.
        group: String,
        /// Consumer.
        consumer: String,
    },
}

/// Outcome of one applied metadata command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataResponse {
    /// The command changed the state (or was an idempotent no-op).
    Applied {
        /// Consumer-group epoch after the command, for consumer-group commands.
        group_epoch: Option<u64>,
    },
    /// The command was rejected; the state is unchanged.
    Rejected(Rejection),
}
