//! Node liveness beats: how a node keeps the followers of the partition groups it leads
//! *quiesced* from electing, without a heartbeat per group (see `crate::scheduler`, "Quiescence").
//!
//! Wire: the `Liveness` RPC carries a [`LivenessBeat`] (postcard): the sender's node id, its
//! session (random per scheduler start) and the beat's number in it, and the groups it leads
//! quiesced that the receiver is a member of, each with its term and last log index. Beats are
//! *deltas*: a full beat lists every such group; a delta beat lists only the groups added or
//! changed since the previous beat of the same session and names the ones no longer listed, so
//! a beat of an unchanged set carries no group at all and costs the receiver one stamp, not
//! one lookup per group. The reply payload is a [`LivenessReply`]: one [`QuietAnswer`] per
//! group the beat carried, in order, or [`LivenessReply::Resync`] for a delta that does not
//! follow the receiver's state of the sender (the receiver restarted, a beat was lost, the
//! sender restarted): the sender's next beat is full. Both ends run the same crate version
//! (see `crate::codec`).
//!
//! Invariants:
//! - The receiver keeps, per sender, the groups the sender lists (the set a full beat lists,
//!   changed by each delta applied in sequence). A listed group whose answer was
//!   [`QuietAnswer::Follows`] counts every later beat of that sender as contact (its clock
//!   holds the sender's [`Stamp`], `GroupClock::touch_quiet`) until the sender stops listing
//!   it, or any append-entries, snapshot or vote for it arrives (`GroupClock::wake`).
//! - A delta is applied only on top of the beat before it (same session, number + 1); the
//!   sender sends at most one beat per peer at a time, and after a failed or refused one its
//!   next beat is full.
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
//! - A group that answered [`QuietAnswer::Follows`] may be *parked* by the receiver's scheduler
//!   on the sender's [`Stamp`] (off its timer heap, `crate::scheduler`, rule 5). Every change
//!   this module makes to its quiet mark (a delta removing it, a full beat leaving it out, an
//!   answer other than [`QuietAnswer::Follows`], another sender listing it) hands it back to
//!   the scheduler (`GroupClock` fires its poke); a stamp that stops moving (the sender died
//!   or was cut off) hands back all groups parked on it at once.
//! - The sender keeps, per peer, the set it should list and the set the peer holds, and builds
//!   each beat from the quiescence changes since the previous one (`crate::scheduler` module
//!   `beats`): an unchanged idle set costs neither side any per-group work.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;
use serde::Serialize;
use tokio::time::Instant;

use super::registry::GroupRegistry;
use crate::partition::PartitionGroup;
use crate::scheduler::GroupClock;
use crate::scheduler::Stamp;
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
    /// The sender's scheduler session (random per start).
    pub(crate) session: u64,
    /// The beat's number in the session (a delta applies on top of number - 1).
    pub(crate) seq: u64,
    /// `groups` is the complete list; otherwise the groups added or changed since beat
    /// `seq - 1`.
    pub(crate) full: bool,
    pub(crate) groups: Vec<QuietGroup>,
    /// Delta beats: groups no longer listed.
    pub(crate) removed: Vec<PartitionId>,
}

/// The reply to a [`LivenessBeat`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LivenessReply {
    /// Applied: one answer per group the beat carried, in order.
    Applied(Vec<QuietAnswer>),
    /// A delta that does not follow the receiver's state of the sender: send a full beat.
    Resync,
}

/// What a receiver keeps of one sender's beats.
#[derive(Debug)]
struct Sender {
    session: u64,
    seq: u64,
    /// When the sender's last beat arrived; the clocks of the groups it lists hold it.
    stamp: Arc<Stamp>,
    /// The groups it lists that answered [`QuietAnswer::Follows`].
    groups: HashMap<PartitionId, Arc<GroupClock>>,
}

/// The receiving side of liveness beats, one per node (see the module invariants).
#[derive(Debug, Default)]
pub(crate) struct Receiver {
    senders: Mutex<HashMap<NodeId, Sender>>,
}

impl Receiver {
    /// Applies `beat` to the listed groups hosted in `registry`.
    pub(crate) fn apply(&self, registry: &GroupRegistry, beat: &LivenessBeat) -> LivenessReply {
        let now = Instant::now();
        let mut senders = self.senders.lock();
        if !beat.full && !senders.contains_key(&beat.from) {
            // A delta on top of nothing this node holds (it restarted).
            return LivenessReply::Resync;
        }
        let s = senders.entry(beat.from).or_insert_with(|| Sender {
            session: beat.session,
            seq: 0,
            stamp: Arc::new(Stamp::new(now)),
            groups: HashMap::new(),
        });
        if !beat.full && (s.session != beat.session || s.seq.checked_add(1) != Some(beat.seq)) {
            return LivenessReply::Resync;
        }
        s.stamp.set(now);
        let mut before = if beat.full {
            std::mem::take(&mut s.groups)
        } else {
            HashMap::new()
        };
        for id in &beat.removed {
            if let Some(clock) = s.groups.remove(id) {
                clock.unquiet_from(&s.stamp);
            }
        }
        let mut answers = Vec::with_capacity(beat.groups.len());
        for q in &beat.groups {
            let old = before.remove(&q.id).or_else(|| s.groups.remove(&q.id));
            let answer = match registry.partition(&q.id) {
                None => QuietAnswer::NotHosted,
                Some(g) => match standing(&g, beat.from, q) {
                    Standing::Matches => {
                        g.clock.touch_quiet(&s.stamp);
                        s.groups.insert(q.id.clone(), g.clock.clone());
                        QuietAnswer::Follows
                    }
                    Standing::Lags => {
                        g.clock.touch();
                        QuietAnswer::Wake
                    }
                    Standing::Differs => QuietAnswer::Wake,
                },
            };
            if answer != QuietAnswer::Follows {
                if let Some(clock) = old {
                    clock.unquiet_from(&s.stamp);
                }
            }
            answers.push(answer);
        }
        // A full beat leaves out the groups it no longer lists.
        for (_, clock) in before {
            clock.unquiet_from(&s.stamp);
        }
        s.session = beat.session;
        s.seq = beat.seq;
        LivenessReply::Applied(answers)
    }
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
            session: 99,
            seq: 4,
            full: false,
            groups: vec![QuietGroup {
                id: PartitionId::new("s", 1),
                term: 7,
                last_index: Some(12),
            }],
            removed: vec![PartitionId::new("s", 2)],
        };
        let bytes = codec::encode(&beat)?;
        assert_eq!(codec::decode::<LivenessBeat>("t", &bytes)?, beat);
        let unchanged = LivenessBeat {
            groups: Vec::new(),
            removed: Vec::new(),
            ..beat
        };
        assert!(
            codec::encode(&unchanged)?.len() <= 8,
            "a beat of an unchanged set is a few bytes"
        );
        let answers = LivenessReply::Applied(vec![
            QuietAnswer::Follows,
            QuietAnswer::Wake,
            QuietAnswer::NotHosted,
        ]);
        let bytes = codec::encode(&answers)?;
        assert_eq!(
            bytes.len(),
            5,
            "one byte per answer plus the variant and length"
        );
        assert_eq!(codec::decode::<LivenessReply>("t", &bytes)?, answers);
        assert!(codec::decode::<LivenessBeat>("t", &[0xff]).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn deltas_apply_only_in_sequence() {
        let registry = GroupRegistry::default();
        let rx = Receiver::default();
        let q = QuietGroup {
            id: PartitionId::new("s", 1),
            term: 2,
            last_index: Some(5),
        };
        let beat = |session, seq, full, groups: Vec<QuietGroup>| LivenessBeat {
            from: 2,
            session,
            seq,
            full,
            groups,
            removed: Vec::new(),
        };
        // A delta before any full beat does not follow anything.
        assert_eq!(
            rx.apply(&registry, &beat(7, 1, false, vec![])),
            LivenessReply::Resync
        );
        assert_eq!(
            rx.apply(&registry, &beat(7, 2, true, vec![q.clone()])),
            LivenessReply::Applied(vec![QuietAnswer::NotHosted])
        );
        assert_eq!(
            rx.apply(&registry, &beat(7, 3, false, vec![])),
            LivenessReply::Applied(vec![])
        );
        // A lost beat (4), a beat of another session (the sender restarted): resync.
        assert_eq!(
            rx.apply(&registry, &beat(7, 5, false, vec![])),
            LivenessReply::Resync
        );
        assert_eq!(
            rx.apply(&registry, &beat(8, 4, false, vec![])),
            LivenessReply::Resync
        );
        assert_eq!(
            rx.apply(&registry, &beat(8, 1, true, vec![])),
            LivenessReply::Applied(vec![])
        );
        assert_eq!(
            rx.apply(&registry, &beat(8, 2, false, vec![q])),
            LivenessReply::Applied(vec![QuietAnswer::NotHosted])
        );
    }
}
