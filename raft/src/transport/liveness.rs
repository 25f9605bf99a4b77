//! Node liveness beats: how a node keeps the followers of the partition groups it leads
//! *quiesced* from electing, without a heartbeat per group (see `crate::scheduler`, "Quiescence").
//!
//! Wire: the `Liveness` RPC carries a [`LivenessBeat`] (postcard): the sender's node id and the
//! groups it leads quiesced that the receiver is a member of, each with its term and last log
//! index. The reply payload is one [`QuietAnswer`] per listed group, in order (postcard
//! `Vec<QuietAnswer>`). Both ends run the same crate version (see `crate::codec`).
//!
//! Invariants:
//! - A receiver stamps a group's clock only if it follows (or learns from) the sender under a
//!   committed vote of that term: so a beat never keeps a follower from electing unless the
//!   sender really won that term, as a heartbeat of that leader would.
//! - Only if, in addition, its log ends and is committed at that index does it answer
//!   [`QuietAnswer::Follows`] (and mark the group quiet, see `GroupClock::quiet_lease_runs`).
//!   Any other listed group it hosts is answered [`QuietAnswer::Wake`], so the leader resumes
//!   heartbeats and openraft reconciles (catch-up, a higher term, a lost commit index). A group
//!   the receiver does not host is answered [`QuietAnswer::NotHosted`] and left alone:
//!   heartbeats could not reach it either.
//! - A [`QuietAnswer::Follows`] is the leader's acknowledgement from that follower for the group
//!   (as a heartbeat reply would be), so a quiesced follower stays in sync for the ISR.

use serde::Deserialize;
use serde::Serialize;

use crate::partition::PartitionGroup;
use crate::types::NodeId;
use crate::types::PartitionId;

/// One group the sender leads quiesced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QuietGroup {
    pub(crate) id: PartitionId,
    /// The term the sender leads it in.
    pub(crate) term: u64,
    /// Its last log index on the sender (committed, matched by every member).
    pub(crate) last_index: Option<u64>,
}

/// A receiver's answer for one listed group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum QuietAnswer {
    /// Its state matches: it counts the beat as contact from the leader.
    Follows,
    /// It hosts the group but its state differs: resume heartbeats.
    Wake,
    /// It does not host the group.
    NotHosted,
}

/// One liveness beat: "node `from` is alive and leads these groups quiesced".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LivenessBeat {
    pub(crate) from: NodeId,
    pub(crate) groups: Vec<QuietGroup>,
}

/// How the local replica of a group stands towards a quiesced group `q` led by `from` (see the
/// module invariants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Same leader and term, same log end, all committed: the beat counts as contact.
    Matches,
    /// Same leader and term, but the log differs: contact (the leader is alive and leads in
    /// the term this replica voted for), and the group must wake so the leader reconciles.
    Lags,
    /// Another vote, an uncommitted vote or a stopped group: no contact, wake.
    Differs,
}

/// How the local replica of a group stands towards `q`, led by `from`.
pub(crate) fn standing(g: &PartitionGroup, from: NodeId, q: &QuietGroup) -> Standing {
    use openraft::async_runtime::watch::WatchReceiver;
    let rx = g.raft.metrics();
    let m = rx.borrow_watched();
    let same_leader = m.running_state.is_ok()
        && m.state != openraft::ServerState::Leader
        && m.state != openraft::ServerState::Candidate
        && m.vote.committed
        && m.vote.leader_id.term == q.term
        && m.vote.leader_id.voted_for == from;
    if !same_leader {
        return Standing::Differs;
    }
    if m.last_log_index == q.last_index
        && m.local_committed.as_ref().map(|l| l.index) == q.last_index
    {
        Standing::Matches
    } else {
        Standing::Lags
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn beats_round_trip() -> Result<(), crate::RaftError> {
        let beat = LivenessBeat {
            from: 3,
            groups: vec![QuietGroup {
                id: PartitionId::new("s", 1),
                term: 7,
                last_index: Some(12),
            }],
        };
        let bytes = codec::encode(&beat)?;
        assert_eq!(codec::decode::<LivenessBeat>("t", &bytes)?, beat);
        let answers = vec![
            QuietAnswer::Follows,
            QuietAnswer::Wake,
            QuietAnswer::NotHosted,
        ];
        let bytes = codec::encode(&answers)?;
        assert_eq!(bytes.len(), 4, "one byte per answer plus the length");
        assert_eq!(codec::decode::<Vec<QuietAnswer>>("t", &bytes)?, answers);
        assert!(codec::decode::<LivenessBeat>("t", &[0xff]).is_err());
        Ok(())
    }
}
