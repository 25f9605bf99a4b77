//! # drawbridge-raft: replication for Drawbridge
//!
//! The only crate that imports openraft. One raft group per partition, one metadata group for
//! the cluster, and one gRPC service carrying the traffic of all of them.
//!
//! ## Crate map
//! | module | what it is for |
//! | --- | --- |
//! | [`node`] | [`RaftNode`]: start/stop, create partition groups, the metadata handle |
//! | [`metadata`] | the metadata group: typed commands, replicated state, [`MetadataHandle`] |
//! | [`partition`] | partition groups: proposals, offsets, high watermark, [`PartitionReplica`] |
//! | [`config`] | [`RaftConfig`] / [`GroupTimings`]: timers tuned for many idle groups |
//! | [`error`] | [`RaftError`], the one error type the server maps to gRPC statuses |
//! | [`fsync_stats`] | process-wide fsync latency histograms (log, journal) for `/metrics` |
//! | [`types`] | ids ([`GroupId`], [`PartitionId`], [`NodeId`]) and the two openraft type configs |
//! | `log` | openraft log storage: generic store, the node's raft state journal (votes, commit points), file backend, group-commit flusher |
//! | `transport` | proto service, shared per-peer channels (router), group registry |
//! | `scheduler` | one task per node driving heartbeats and elections of every partition group (no per-group openraft tick) |
//! | `codec`, `convert` | postcard encoding; openraft error mapping |
//!
//! ## Public API for the server (no openraft type appears in it)
//! ```text
//! RaftNode::start(RaftConfig, data_dir, listen_addr) -> RaftNode
//! node.metadata() -> &MetadataHandle
//!     .bootstrap(members) / .add_node(id, addr)
//!     .propose(MetadataCommand, timeout) -> MetadataResponse
//!     .state() / .watch() -> MetadataView { applied_index, state: Arc<MetadataState> }
//!     .is_leader() / .leader() -> Option<(id, addr)> / .wait_for_leader(timeout)
//! node.create_partition_group(PartitionId, replicas) -> PartitionReplica
//!     .propose(records, count) -> Proposal { appended_locally() (LEADER), committed() (ALL) }
//!     .append(records, count, timeout) -> Offsets
//!     .is_leader() / .leader() / .term() / .high_watermark() / .watch_high_watermark()
//!     .watch_leadership() -> LeadershipWatch { current(), changed() -> Leadership }
//!     .in_sync_replicas(&mut IsrTracker, max_lag)   // leader only, from raft progress
//!     .compact(timeout)   // snapshot + purge (retention)
//! node.partition(id) / node.remove_partition_group(id, delete) / node.shutdown()
//! ```

mod codec;
pub mod config;
mod convert;
pub mod error;
pub mod fsync_stats;
mod log;
pub mod metadata;
pub mod node;
pub mod partition;
mod scheduler;
mod transport;
pub mod types;
mod wait;

/// Waits so far (this process) because a metadata log or raft state journal write found the
/// disk full and is retried (see the `log` module docs): the server exports it as
/// `drawbridge_raft_disk_full_waits_total`.
pub fn disk_full_waits() -> u64 {
    log::nospace::waits()
}

/// State machine snapshots abandoned so far (this process) because writing them found the disk
/// full; the log keeps everything they would have covered (see the `log` module docs): the
/// server exports it as `drawbridge_raft_snapshots_abandoned_total`.
pub fn snapshots_abandoned() -> u64 {
    log::nospace::snapshots_abandoned()
}

pub use config::GroupTimings;
pub use config::LogSyncPolicy;
pub use config::RaftConfig;
pub use error::RaftError;
pub use metadata::MetadataCommand;
pub use metadata::MetadataHandle;
pub use metadata::MetadataResponse;
pub use metadata::MetadataState;
pub use metadata::MetadataView;
pub use node::PartitionLogSettings;
pub use node::RaftNode;
pub use node::TransportStats;
pub use partition::IsrTracker;
pub use partition::Leadership;
pub use partition::LeadershipWatch;
pub use partition::Offsets;
pub use partition::OnDurable;
pub use partition::PartitionReplica;
pub use partition::Proposal;
pub use partition::ReplicationProgress;
pub use types::GroupId;
pub use types::NodeId;
pub use types::PartitionId;

#[doc(hidden)]
pub mod testing;
