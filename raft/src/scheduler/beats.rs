//! The sending side of liveness beats (`crate::transport::liveness`): what each peer holds
//! listed, and the beat of each round, built from what changed since the previous one.
//!
//! Invariants:
//! - `PeerBeats::quiet` is, after [`Shared::note_changes`], exactly the set of groups this node
//!   leads quiesced that the peer is a member of (as of their quiescence marks). The scheduler
//!   reports every change of a group's quiescence (quiesced, woken, quiesced again with a new
//!   generation, unregistered) in `State::changed`, and the changes are applied to every peer
//!   before a round is built; so a round costs work per peer and per change, not per group.
//! - `PeerBeats::listed` is what the peer holds (as of its last acknowledged beat). A delta
//!   beat carries the groups in `dirty` that are quiet and not listed as they are (term, index,
//!   generation), and names the ones in `dirty` that are listed but no longer quiet. A full beat
//!   (after a failed or refused one) lists `quiet`.
//! - One beat per peer is in flight; changes noted meanwhile wait in `dirty`.
//! - A "follows" answer becomes the group's quiet acknowledgement only if the group is still
//!   quiesced in the generation the beat listed (a group that woke meanwhile keeps none).

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::debug;

use super::GroupClock;
use super::Quiet;
use super::Shared;
use super::Stamp;
use super::State;
use crate::transport::liveness::LivenessBeat;
use crate::transport::liveness::LivenessReply;
use crate::transport::liveness::QuietAnswer;
use crate::transport::liveness::QuietGroup;
use crate::types::NodeId;
use crate::types::PartitionId;

/// What each peer holds of this node's liveness beats. Lock order: `State` before `Beats`.
#[derive(Default)]
pub(super) struct Beats {
    peers: HashMap<NodeId, PeerBeats>,
}

/// What a peer holds of this node's liveness beats.
struct PeerBeats {
    /// The number of the last beat sent.
    seq: u64,
    /// The peer acknowledged beat `seq` (so it holds `listed`); otherwise the next beat is
    /// full.
    synced: bool,
    /// A beat is on its way: the peer gets no other until it is answered.
    in_flight: bool,
    /// The groups this node leads quiesced that the peer is a member of, by scheduler key.
    quiet: HashSet<u64>,
    /// Groups whose listing to this peer may have changed since the last beat built for it.
    dirty: HashSet<u64>,
    /// The groups the peer holds listed, by scheduler key.
    listed: HashMap<u64, Listed>,
    /// When the last beat the peer acknowledged was sent: the quiet acknowledgement of every
    /// group it confirmed (`GroupClock::record_quiet_ack`).
    acked: Arc<Stamp>,
}

impl PeerBeats {
    fn new(now: Instant) -> Self {
        Self {
            seq: 0,
            synced: false,
            in_flight: false,
            quiet: HashSet::new(),
            dirty: HashSet::new(),
            listed: HashMap::new(),
            acked: Arc::new(Stamp::new(now)),
        }
    }
}

/// A group listed to a peer.
struct Listed {
    id: PartitionId,
    term: u64,
    last_index: Option<u64>,
    gen: u64,
}

/// A group added (or changed) in a beat.
struct Added {
    key: u64,
    gen: u64,
    group: QuietGroup,
    clock: Arc<GroupClock>,
}

/// One beat to send.
struct Beat {
    peer: NodeId,
    seq: u64,
    full: bool,
    added: Vec<Added>,
    removed: Vec<(u64, PartitionId)>,
}

/// The listing of group `key` if this node leads it quiesced.
fn added(st: &State, key: u64) -> Option<Added> {
    let e = st.entries.get(&key)?;
    let Quiet::Quiesced(mark) = &e.quiet else {
        return None;
    };
    Some(Added {
        key,
        gen: e.quiet_gen,
        group: QuietGroup {
            id: e.id.clone(),
            term: mark.term,
            last_index: mark.last_index,
        },
        clock: e.clock.clone(),
    })
}

impl Shared {
    /// Applies the quiescence changes noted since the last round to every peer's `quiet` set.
    fn note_changes(st: &mut State, beats: &mut Beats, now: Instant) {
        for key in st.changed.drain() {
            for p in beats.peers.values_mut() {
                if p.quiet.remove(&key) {
                    p.dirty.insert(key);
                }
            }
            let Some(e) = st.entries.get(&key) else {
                continue;
            };
            let Quiet::Quiesced(mark) = &e.quiet else {
                continue;
            };
            for f in &mark.followers {
                let p = beats.peers.entry(*f).or_insert_with(|| PeerBeats::new(now));
                p.quiet.insert(key);
                p.dirty.insert(key);
            }
        }
    }

    /// Builds and sends this round's liveness beats: to each peer, the changes to the groups
    /// this node leads quiesced that it is a member of (see the module invariants).
    pub(super) fn send_liveness(self: &Arc<Self>, now: Instant) {
        let mut out = Vec::new();
        {
            let mut st = self.state.lock();
            let mut beats = self.beats.lock();
            Self::note_changes(&mut st, &mut beats, now);
            for (peer, p) in beats.peers.iter_mut() {
                if p.in_flight {
                    continue;
                }
                let full = !p.synced;
                let mut add = Vec::new();
                let mut removed = Vec::new();
                if full {
                    p.dirty.clear();
                    add.extend(p.quiet.iter().filter_map(|k| added(&st, *k)));
                } else {
                    for key in p.dirty.drain() {
                        if p.quiet.contains(&key) {
                            let Some(a) = added(&st, key) else {
                                continue;
                            };
                            let same = p.listed.get(&key).is_some_and(|l| {
                                l.term == a.group.term
                                    && l.last_index == a.group.last_index
                                    && l.gen == a.gen
                            });
                            if !same {
                                add.push(a);
                            }
                        } else if let Some(l) = p.listed.get(&key) {
                            removed.push((key, l.id.clone()));
                        }
                    }
                }
                // Nothing listed and nothing to take back: the peer needs no beat (a full one
                // still goes to a peer that may hold an earlier listing).
                if p.quiet.is_empty() && removed.is_empty() && !(full && p.seq > 0) {
                    continue;
                }
                p.seq += 1;
                p.in_flight = true;
                out.push(Beat {
                    peer: *peer,
                    seq: p.seq,
                    full,
                    added: add,
                    removed,
                });
            }
        }
        for b in out {
            let shared = self.clone();
            tokio::spawn(async move { shared.beat(now, b).await });
        }
    }

    /// Sends one liveness beat and records its answers (see `send_liveness`).
    async fn beat(self: &Arc<Self>, sent: Instant, b: Beat) {
        let Beat {
            peer,
            seq,
            full,
            added,
            removed,
        } = b;
        let beat = LivenessBeat {
            from: self.me,
            session: self.session,
            seq,
            full,
            groups: added.iter().map(|a| a.group.clone()).collect(),
            removed: removed.iter().map(|(_, id)| id.clone()).collect(),
        };
        let reply = self
            .router
            .liveness(peer, &beat, self.timing.election_min)
            .await;
        let answers = match reply {
            Ok(LivenessReply::Applied(a)) if a.len() == added.len() => Some(a),
            Ok(LivenessReply::Applied(a)) => {
                let (got, sent) = (a.len(), added.len());
                debug!(node = self.me, peer, got, sent, "malformed liveness reply");
                None
            }
            Ok(LivenessReply::Resync) => {
                debug!(node = self.me, peer, "peer asks for a full liveness beat");
                None
            }
            // The peer is down or cut off: its groups' elections are its business.
            Err(e) => {
                debug!(node = self.me, peer, error = %e, "liveness beat failed");
                None
            }
        };
        let mut wake = Vec::new();
        {
            let st = self.state.lock();
            let mut beats = self.beats.lock();
            let Some(p) = beats.peers.get_mut(&peer) else {
                return;
            };
            p.in_flight = false;
            let Some(answers) = answers else {
                // Whether the peer applied it is unknown: the next beat is full.
                p.synced = false;
                return;
            };
            p.synced = true;
            if full {
                p.listed.clear();
            }
            for (key, _) in &removed {
                p.listed.remove(key);
            }
            for (a, answer) in added.into_iter().zip(answers) {
                let current = st
                    .entries
                    .get(&a.key)
                    .is_some_and(|e| matches!(e.quiet, Quiet::Quiesced(_)) && e.quiet_gen == a.gen);
                match answer {
                    QuietAnswer::Follows if current => a.clock.record_quiet_ack(peer, &p.acked),
                    QuietAnswer::Follows => {}
                    QuietAnswer::Wake => {
                        a.clock.forget_quiet_ack(peer);
                        wake.push(a.group.id.clone());
                    }
                    QuietAnswer::NotHosted => a.clock.forget_quiet_ack(peer),
                }
                p.listed.insert(
                    a.key,
                    Listed {
                        id: a.group.id,
                        term: a.group.term,
                        last_index: a.group.last_index,
                        gen: a.gen,
                    },
                );
            }
            p.acked.set(sent);
        }
        if !wake.is_empty() {
            self.wake_groups(&wake);
        }
    }
}
