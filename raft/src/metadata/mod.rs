//! The metadata group: the cluster-wide catalogue of streams, partitions, replica assignments,
//! partition leaders, pause/readonly flags, consumer groups and cursors.
//!
//! - [`activity`]: the operations reported on the `__activity` stream, recorded by `apply`.
//! - [`command`]: the typed commands proposed to the group and their typed outcomes.
//! - [`state`]: the replicated state and its deterministic `apply` (pure; unit-tested).
//! - `state_machine`: openraft's `RaftStateMachine` over [`state`], with persisted snapshots.
//! - `handle`: [`MetadataHandle`], what the server uses (propose, read, watch, leader).

pub mod activity;
pub mod command;
pub(crate) mod handle;
pub mod state;
pub(crate) mod state_machine;

pub use command::MetadataCommand;
pub use command::MetadataResponse;
pub use command::Rejection;
pub use command::WrappedDataKey;
pub use handle::MetadataHandle;
pub use state::MetadataState;
pub(crate) use state_machine::MetaStateMachine;
pub use state_machine::MetadataView;
