//! Partition groups: one raft group per partition.
//!
//! - [`types`]: what is proposed (a record-set body) and what an apply returns (offsets), and the
//!   metadata-only snapshot.
//! - `state_machine`: applied log id, membership, offset assignment and the high watermark.
//! - `group`: a running group (raft + state machine + LEADER-ack plumbing).
//! - [`replica`]: [`PartitionReplica`], the handle the server uses.
//! - [`isr`]: in-sync replicas derived from raft replication progress on the leader.
//! - `unclean`: the clean-shutdown marker and the vote hold after an unclean restart under a
//!   lazy log sync policy.

pub(crate) mod group;
pub mod isr;
pub mod replica;
pub(crate) mod state_machine;
pub mod types;
pub(crate) mod unclean;

pub use group::OnDurable;
pub(crate) use group::PartitionGroup;
pub use isr::IsrTracker;
pub use isr::ReplicationProgress;
pub use replica::Leadership;
pub use replica::LeadershipWatch;
pub use replica::PartitionReplica;
pub use replica::Proposal;
pub(crate) use state_machine::PartitionStateMachine;
pub use types::Offsets;
pub use types::PartitionRequest;
pub use types::PartitionResponse;
pub use types::PartitionSnapshot;
