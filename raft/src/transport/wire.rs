//! Conversions between the proto transport messages and our types.
//!
//! Invariant: decoding a peer's message never panics; a malformed group id or payload becomes a
//! `RaftFailure { code: BAD_REQUEST }` reply (server side) or a network error (client side).

use drawbridge_proto::raft as pb;

use crate::error::RaftError;
use crate::types::GroupId;
use crate::types::PartitionId;

/// Our group id as a proto message.
pub(crate) fn group_to_pb(g: &GroupId) -> pb::GroupId {
    let kind = match g {
        GroupId::Metadata => pb::group_id::Kind::Metadata(pb::Empty {}),
        GroupId::Partition(p) => pb::group_id::Kind::Partition(pb::PartitionGroup {
            stream: p.stream.clone(),
            partition: p.partition,
        }),
    };
    pb::GroupId { kind: Some(kind) }
}

/// A proto group id from a peer.
pub(crate) fn group_from_pb(g: Option<pb::GroupId>) -> Result<GroupId, RaftError> {
    match g.and_then(|g| g.kind) {
        Some(pb::group_id::Kind::Metadata(_)) => Ok(GroupId::Metadata),
        Some(pb::group_id::Kind::Partition(p)) => {
            Ok(GroupId::Partition(PartitionId::new(p.stream, p.partition)))
        }
        None => Err(RaftError::Decode {
            what: "group id",
            reason: "missing".into(),
        }),
    }
}

/// A failure reply.
pub(crate) fn failure(code: pb::raft_failure::Code, message: impl Into<String>) -> pb::RaftReply {
    pb::RaftReply {
        result: Some(pb::raft_reply::Result::Failure(pb::RaftFailure {
            code: code as i32,
            message: message.into(),
        })),
    }
}

/// A success reply carrying an encoded response.
pub(crate) fn success(payload: Vec<u8>) -> pb::RaftReply {
    pb::RaftReply {
        result: Some(pb::raft_reply::Result::Payload(payload.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_round_trip_and_missing_is_an_error() -> Result<(), RaftError> {
        for g in [
            GroupId::Metadata,
            GroupId::Partition(PartitionId::new("s", 3)),
        ] {
            assert_eq!(group_from_pb(Some(group_to_pb(&g)))?, g);
        }
        assert!(group_from_pb(None).is_err());
        assert!(group_from_pb(Some(pb::GroupId { kind: None })).is_err());
        Ok(())
    }
}
