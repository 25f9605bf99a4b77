//! Activity events: the metadata operations reported on the `__activity` stream (spec §4.7).
//!
//! Invariants:
//! - Events are recorded by the (deterministic) apply of a committed command, keyed by its raft
//!   log index, only while the `__activity` stream exists and only for commands that were
//!   applied (not rejected); operations on `__activity` itself are not reported.
//! - Recorded events stay in the replicated state until a committed `ActivityPublished`
//!   removes those up to an index, so a new metadata leader publishes what its predecessor had
//!   not confirmed (at least once, in raft order).
//! - At most [`MAX_PENDING`] events are kept (the oldest are dropped beyond), bounding the
//!   state when nobody publishes.

use serde::Deserialize;
use serde::Serialize;

use super::command::MetadataCommand;
use super::state::MetadataState;

/// The activity stream's name.
pub const ACTIVITY_STREAM: &str = "__activity";

/// Most events kept unpublished.
pub const MAX_PENDING: usize = 100_000;

/// One reported operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivityOp {
    /// A stream was created with these partitions.
    CreateStream {
        /// Stream.
        stream: String,
        /// Partition ids.
        partitions: Vec<i32>,
    },
    /// A stream was deleted.
    DeleteStream {
        /// Stream.
        stream: String,
    },
    /// Partitions were paused.
    PauseStream {
        /// Stream.
        stream: String,
        /// Partition ids.
        partitions: Vec<i32>,
        /// Resume all when one is published to.
        resume_all: bool,
    },
    /// Partitions were resumed.
    ResumeStream {
        /// Stream.
        stream: String,
        /// Partition ids.
        partitions: Vec<i32>,
    },
    /// The readonly flag was set or cleared.
    SetStreamReadonly {
        /// Stream.
        stream: String,
        /// Partition ids.
        partitions: Vec<i32>,
        /// New flag.
        readonly: bool,
    },
    /// A consumer joined (or created) a group.
    JoinConsumerGroup {
        /// Group.
        group: String,
        /// Consumer.
        consumer: String,
        /// Streams it reads.
        streams: Vec<String>,
    },
    /// A consumer left a group.
    LeaveConsumerGroup {
        /// Group.
        group: String,
        /// Consumer.
        consumer: String,
        /// Removed because its heartbeats stopped.
        expired: bool,
    },
}

fn partitions_of(state: &MetadataState, stream: &str, given: &[i32]) -> Vec<i32> {
    if given.is_empty() {
        state
            .streams
            .get(stream)
            .map(|s| s.partitions.keys().copied().collect())
            .unwrap_or_default()
    } else {
        given.to_vec()
    }
}

fn paused_partitions(state: &MetadataState, stream: &str) -> Vec<i32> {
    state
        .streams
        .get(stream)
        .map(|s| {
            s.partitions
                .iter()
                .filter(|(_, p)| p.paused)
                .map(|(id, _)| *id)
                .collect()
        })
        .unwrap_or_default()
}

/// What must be known before `cmd` is applied to report it afterwards.
pub(crate) struct Before {
    paused: Vec<i32>,
}

/// Captures [`Before`] for `cmd`.
pub(crate) fn before(state: &MetadataState, cmd: &MetadataCommand) -> Before {
    let paused = match cmd {
        MetadataCommand::ResumePartition { stream, .. } => paused_partitions(state, stream),
        _ => Vec::new(),
    };
    Before { paused }
}

/// The event of an applied command, if it is reported. `state` is the state after it.
pub(crate) fn event_of(
    state: &MetadataState,
    cmd: &MetadataCommand,
    before: Before,
) -> Option<ActivityOp> {
    use MetadataCommand as C;
    let op = match cmd {
        C::CreateStream { name, replicas, .. } => ActivityOp::CreateStream {
            stream: name.clone(),
            partitions: (0..replicas.len())
                .filter_map(|i| i32::try_from(i).ok())
                .collect(),
        },
        C::DeleteStream { name } => ActivityOp::DeleteStream {
            stream: name.clone(),
        },
        C::PauseStream {
            name,
            partitions,
            resume_all,
            ..
        } => ActivityOp::PauseStream {
            stream: name.clone(),
            partitions: partitions_of(state, name, partitions),
            resume_all: *resume_all,
        },
        C::ResumePartition { stream, .. } => {
            let now = paused_partitions(state, stream);
            let resumed: Vec<i32> = before
                .paused
                .into_iter()
                .filter(|p| !now.contains(p))
                .collect();
            if resumed.is_empty() {
                return None;
            }
            ActivityOp::ResumeStream {
                stream: stream.clone(),
                partitions: resumed,
            }
        }
        C::SetStreamReadonly {
            name,
            partitions,
            readonly,
            ..
        } => ActivityOp::SetStreamReadonly {
            stream: name.clone(),
            partitions: partitions_of(state, name, partitions),
            readonly: *readonly,
        },
        C::JoinConsumerGroup {
            group,
            consumer,
            streams,
            ..
        } => ActivityOp::JoinConsumerGroup {
            group: group.clone(),
            consumer: consumer.clone(),
            streams: streams.clone(),
        },
        C::LeaveConsumerGroup {
            group, consumer, ..
        } => ActivityOp::LeaveConsumerGroup {
            group: group.clone(),
            consumer: consumer.clone(),
            expired: false,
        },
        _ => return None,
    };
    let stream = match &op {
        ActivityOp::CreateStream { stream, .. }
        | ActivityOp::DeleteStream { stream }
        | ActivityOp::PauseStream { stream, .. }
        | ActivityOp::ResumeStream { stream, .. }
        | ActivityOp::SetStreamReadonly { stream, .. } => Some(stream.as_str()),
        _ => None,
    };
    (stream != Some(ACTIVITY_STREAM)).then_some(op)
}
