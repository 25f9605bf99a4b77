//! Conversions from openraft errors and metrics to our types (the only place that interprets
//! openraft's error enums).

use openraft::error::ClientWriteError;
use openraft::error::RaftError as OrRaftError;
use openraft::RaftTypeConfig;

use crate::error::RaftError;
use crate::types::GroupId;

/// Maps a failed `client_write` / membership call.
pub(crate) fn client_write_error<C>(
    group: &GroupId,
    e: OrRaftError<C, ClientWriteError<C>>,
) -> RaftError
where
    C: RaftTypeConfig<NodeId = u64, Node = crate::types::Node>,
{
    match e {
        OrRaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RaftError::NotLeader {
            group: group.clone(),
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        OrRaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => RaftError::CommitUnknown {
            group: group.clone(),
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        OrRaftError::APIError(ClientWriteError::ChangeMembershipError(m)) => {
            RaftError::Membership(m.to_string())
        }
        OrRaftError::APIError(other) => RaftError::Rejected(other.to_string()),
        OrRaftError::Fatal(f) => RaftError::Stopped {
            group: group.clone(),
            reason: f.to_string(),
        },
    }
}

/// Maps a fatal error of a raft instance.
pub(crate) fn fatal<C: RaftTypeConfig>(group: &GroupId, e: openraft::error::Fatal<C>) -> RaftError {
    RaftError::Stopped {
        group: group.clone(),
        reason: e.to_string(),
    }
}
