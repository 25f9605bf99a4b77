//! The replicated metadata state and its deterministic transition function.
//!
//! Invariants:
//! - `apply` is a pure function of (state, command): no clocks, no randomness, no IO.
//! - Stream names are unique; every stream has >= 1 partition; every partition has >= 1 replica.
//! - A partition's `leader_epoch` never decreases: a `SetPartitionLeader` with an older epoch is
//!   ignored (a deposed leader's late write cannot overwrite its successor).
//! - A partition's `isr` is a subset of its replicas; once a leader is recorded it contains
//!   the leader. It starts as every replica and is replaced only by `SetPartitionIsr` from the
//!   recorded leader in its recorded epoch.
//! - A consumer group exists iff it has members; its epoch increases on every membership or
//!   coordinator change.
//! - `pause_times` / `readonly_times` record the proposer's time of every actual change of the
//!   flag (a pause of a paused partition changes nothing). A `ResumePartition` resumes every
//!   paused partition of the stream when it was paused with `resume_all` (then cleared).
//! - `activity` holds the events of applied commands while `__activity` exists (see
//!   [`super::activity`]); it is emptied when that stream does not exist.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

use super::activity::{self, ActivityOp, ACTIVITY_STREAM};
use super::command::MetadataCommand;
use super::command::MetadataResponse;
use super::command::Rejection;
use super::command::WrappedDataKey;
use crate::types::NodeId;

/// One partition of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// Replica node ids; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// Current leader as last recorded by a partition leader.
    pub leader: Option<NodeId>,
    /// Partition raft term of `leader`.
    pub leader_epoch: u64,
    /// Paused: not subscribed to NATS, no leader activity required.
    pub paused: bool,
    /// Readonly: publishes are refused.
    pub readonly: bool,
    /// In-sync replicas as last recorded by the leader (every replica at creation).
    pub isr: Vec<NodeId>,
    /// First and latest change of `paused`.
    pub pause_times: EventTimes,
    /// First and latest change of `readonly`.
    pub readonly_times: EventTimes,
    /// Wrapped data keys for encryption at rest (empty: values are stored in plaintext).
    pub data_keys: Vec<WrappedDataKey>,
}

impl PartitionMeta {
    /// Whether the partition's values are encrypted at rest.
    pub fn encrypted(&self) -> bool {
        !self.data_keys.is_empty()
    }
}

/// First and latest occurrence of an event, ns since the epoch (0 = never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTimes {
    /// First occurrence.
    pub first_ns: i64,
    /// Latest occurrence.
    pub latest_ns: i64,
}

impl EventTimes {
    /// Records an occurrence at `at_ns`.
    pub fn record(&mut self, at_ns: i64) {
        if self.first_ns == 0 {
            self.first_ns = at_ns;
        }
        self.latest_ns = at_ns;
    }
}

/// A stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// NATS subject of partition 0.
    pub subject: String,
    /// Load-balance group.
    pub group: String,
    /// Per-stream config overrides.
    pub config: BTreeMap<String, String>,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
    /// Resume all partitions when one is published to.
    pub resume_all: bool,
    /// Partitions by number.
    pub partitions: BTreeMap<i32, PartitionMeta>,
}

/// A consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerGroupMeta {
    /// Node coordinating the group.
    pub coordinator: NodeId,
    /// Bumped on every membership or coordinator change.
    pub epoch: u64,
    /// Members and the streams each reads.
    pub members: BTreeMap<String, Vec<String>>,
}

/// The whole metadata state (also the snapshot payload).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    /// Raft addresses of known nodes.
    pub nodes: BTreeMap<NodeId, String>,
    /// Streams by name.
    pub streams: BTreeMap<String, StreamMeta>,
    /// Consumer groups by id.
    pub consumer_groups: BTreeMap<String, ConsumerGroupMeta>,
    /// Cursors by (cursor id, stream, partition).
    pub cursors: BTreeMap<(String, String, i32), i64>,
    /// Activity events not yet published, by raft index (see [`super::activity`]).
    pub activity: BTreeMap<u64, ActivityOp>,
}

fn applied() -> MetadataResponse {
    MetadataResponse::Applied { group_epoch: None }
}

fn rejected(r: Rejection) -> MetadataResponse {
    MetadataResponse::Rejected(r)
}

impl MetadataState {
    /// Applies the command of raft log entry `index` and records its activity event (see
    /// [`super::activity`]).
    pub fn apply_at(&mut self, index: u64, cmd: &MetadataCommand) -> MetadataResponse {
        let before = activity::before(self, cmd);
        let resp = self.apply(cmd);
        if !matches!(resp, MetadataResponse::Applied { .. }) {
            return resp;
        }
        if !self.streams.contains_key(ACTIVITY_STREAM) {
            self.activity.clear();
            return resp;
        }
        if let Some(op) = activity::event_of(self, cmd, before) {
            self.activity.insert(index, op);
            while self.activity.len() > activity::MAX_PENDING {
                self.activity.pop_first();
            }
        }
        resp
    }

    /// Applies one command (see the module invariants).
    pub fn apply(&mut self, cmd: &MetadataCommand) -> MetadataResponse {
        use MetadataCommand as C;
        match cmd {
            C::RegisterNode { node_id, addr } => {
                self.nodes.insert(*node_id, addr.clone());
                applied()
            }
            C::CreateStream {
                name,
                subject,
                group,
                replicas,
                config,
                created_at_ms,
                data_keys,
            } => {
                if self.streams.contains_key(name) {
                    return rejected(Rejection::StreamExists(name.clone()));
                }
                if name.is_empty() || replicas.is_empty() {
                    return rejected(Rejection::Invalid(
                        "a stream needs a name and at least one partition".into(),
                    ));
                }
                if !data_keys.is_empty() && data_keys.len() != replicas.len() {
                    return rejected(Rejection::Invalid(
                        "an encrypted stream needs one data key per partition".into(),
                    ));
                }
                let mut partitions = BTreeMap::new();
                for (i, r) in replicas.iter().enumerate() {
                    let unique: BTreeSet<_> = r.iter().collect();
                    if r.is_empty() || unique.len() != r.len() {
                        return rejected(Rejection::Invalid(format!(
                            "partition {i} needs a non-empty set of distinct replicas"
                        )));
                    }
                    let Ok(p) = i32::try_from(i) else {
                        return rejected(Rejection::Invalid("too many partitions".into()));
                    };
                    partitions.insert(
                        p,
                        PartitionMeta {
                            replicas: r.clone(),
                            leader: None,
                            leader_epoch: 0,
                            paused: false,
                            readonly: false,
                            isr: r.clone(),
                            pause_times: EventTimes::default(),
                            readonly_times: EventTimes::default(),
                            data_keys: data_keys.get(i).cloned().into_iter().collect(),
                        },
                    );
                }
                self.streams.insert(
                    name.clone(),
                    StreamMeta {
                        subject: subject.clone(),
                        group: group.clone(),
                        config: config.clone(),
                        created_at_ms: *created_at_ms,
                        resume_all: false,
                        partitions,
                    },
                );
                self.bump_groups_reading(name);
                applied()
            }
            C::DeleteStream { name } => {
                if self.streams.remove(name).is_none() {
                    return rejected(Rejection::StreamNotFound(name.clone()));
                }
                self.cursors.retain(|(_, s, _), _| s != name);
                self.bump_groups_reading(name);
                applied()
            }
            C::SetPartitionLeader {
                stream,
                partition,
                leader,
                leader_epoch,
            } => match self.partition_mut(stream, *partition) {
                Err(r) => rejected(r),
                Ok(p) => {
                    if *leader_epoch >= p.leader_epoch {
                        p.leader = Some(*leader);
                        p.leader_epoch = *leader_epoch;
                        if !p.isr.contains(leader) && p.replicas.contains(leader) {
                            p.isr.push(*leader);
                        }
                    }
                    applied()
                }
            },
            C::SetPartitionIsr {
                stream,
                partition,
                leader,
                leader_epoch,
                isr,
            } => match self.partition_mut(stream, *partition) {
                Err(r) => rejected(r),
                Ok(p) => {
                    if p.leader == Some(*leader) && p.leader_epoch == *leader_epoch {
                        let next: Vec<NodeId> = p
                            .replicas
                            .iter()
                            .filter(|r| isr.contains(r) || *r == leader)
                            .copied()
                            .collect();
                        p.isr = next;
                    }
                    applied()
                }
            },
            C::PauseStream {
                name,
                partitions,
                resume_all,
                at_ns,
            } => self.for_partitions(name, partitions, |s, p| {
                s.resume_all = *resume_all;
                if !p.paused {
                    p.paused = true;
                    p.pause_times.record(*at_ns);
                }
            }),
            C::ResumePartition {
                stream,
                partition,
                at_ns,
            } => {
                if let Err(r) = self.partition_mut(stream, *partition) {
                    return rejected(r);
                }
                let Some(s) = self.streams.get_mut(stream) else {
                    return rejected(Rejection::StreamNotFound(stream.clone()));
                };
                let all = s.resume_all;
                for (id, p) in s.partitions.iter_mut() {
                    if p.paused && (all || id == partition) {
                        p.paused = false;
                        p.pause_times.record(*at_ns);
                    }
                }
                if s.partitions.values().all(|p| !p.paused) {
                    s.resume_all = false;
                }
                applied()
            }
            C::SetStreamReadonly {
                name,
                partitions,
                readonly,
                at_ns,
            } => self.for_partitions(name, partitions, |_, p| {
                if p.readonly != *readonly {
                    p.readonly = *readonly;
                    p.readonly_times.record(*at_ns);
                }
            }),
            C::JoinConsumerGroup {
                group,
                consumer,
                streams,
                coordinator,
            } => {
                if group.is_empty() || consumer.is_empty() || streams.is_empty() {
                    return rejected(Rejection::Invalid(
                        "a group member needs a group id, a consumer id and streams".into(),
                    ));
                }
                let Some(g) = self.consumer_groups.get_mut(group) else {
                    // A brand-new group starts at epoch 0 (spec §11).
                    let g = ConsumerGroupMeta {
                        coordinator: *coordinator,
                        epoch: 0,
                        members: [(consumer.clone(), streams.clone())].into(),
                    };
                    self.consumer_groups.insert(group.clone(), g);
                    return MetadataResponse::Applied {
                        group_epoch: Some(0),
                    };
                };
                if g.members.get(consumer) != Some(streams) {
                    g.members.insert(consumer.clone(), streams.clone());
                    g.epoch += 1;
                }
                MetadataResponse::Applied {
                    group_epoch: Some(g.epoch),
                }
            }
            C::LeaveConsumerGroup {
                group,
                consumer,
                expected_epoch,
                expired: _,
            } => {
                let Some(g) = self.consumer_groups.get_mut(group) else {
                    return rejected(Rejection::GroupNotFound(group.clone()));
                };
                if let Some(expected) = expected_epoch.filter(|e| *e != g.epoch) {
                    return rejected(Rejection::EpochMismatch {
                        group: group.clone(),
                        current: g.epoch,
                        expected,
                    });
                }
                if g.members.remove(consumer).is_none() {
                    return rejected(Rejection::NotMember {
                        group: group.clone(),
                        consumer: consumer.clone(),
                    });
                }
                g.epoch += 1;
                let epoch = g.epoch;
                if g.members.is_empty() {
                    self.consumer_groups.remove(group);
                }
                MetadataResponse::Applied {
                    group_epoch: Some(epoch),
                }
            }
            C::SetGroupCoordinator {
                group,
                coordinator,
                expected_epoch,
            } => {
                let Some(g) = self.consumer_groups.get_mut(group) else {
                    return rejected(Rejection::GroupNotFound(group.clone()));
                };
                if g.epoch != *expected_epoch {
                    return rejected(Rejection::EpochMismatch {
                        group: group.clone(),
                        current: g.epoch,
                        expected: *expected_epoch,
                    });
                }
                g.coordinator = *coordinator;
                g.epoch += 1;
                MetadataResponse::Applied {
                    group_epoch: Some(g.epoch),
                }
            }
            C::RewrapDataKeys {
                stream,
                partition,
                keys,
            } => match self.partition_mut(stream, *partition) {
                Err(r) => rejected(r),
                Ok(p) => {
                    let ids =
                        |k: &[WrappedDataKey]| k.iter().map(|k| k.id).collect::<BTreeSet<_>>();
                    if !p.encrypted()
                        || keys.len() != p.data_keys.len()
                        || ids(keys) != ids(&p.data_keys)
                    {
                        return rejected(Rejection::Invalid(format!(
                            "partition {stream}/{partition}: a re-wrap must keep the data key ids"
                        )));
                    }
                    p.data_keys = keys.clone();
                    applied()
                }
            },
            C::ActivityPublished { through } => {
                self.activity.retain(|i, _| i > through);
                applied()
            }
            C::SetCursor {
                cursor_id,
                stream,
                partition,
                offset,
            } => {
                if let Err(r) = self.partition_mut(stream, *partition) {
                    return rejected(r);
                }
                self.cursors
                    .insert((cursor_id.clone(), stream.clone(), *partition), *offset);
                applied()
            }
        }
    }

    /// Advances the epoch of every group with a member reading `stream` (its partitions
    /// appeared or vanished, so the assignments changed).
    fn bump_groups_reading(&mut self, stream: &str) {
        for g in self.consumer_groups.values_mut() {
            if g.members.values().any(|s| s.iter().any(|s| s == stream)) {
                g.epoch += 1;
            }
        }
    }

    /// The partitions of each member of `group`: per stream, in partition order, every
    /// partition goes to the member reading that stream with the fewest assignments so far
    /// (ties: the smallest consumer id). A pure function of the state, so every node computes
    /// the same assignments for an epoch. Empty when the group does not exist.
    pub fn assignments(&self, group: &str) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
        let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
        let Some(g) = self.consumer_groups.get(group) else {
            return out;
        };
        let mut load: BTreeMap<&str, usize> = BTreeMap::new();
        for consumer in g.members.keys() {
            load.insert(consumer, 0);
            out.insert(consumer.clone(), BTreeMap::new());
        }
        let streams: BTreeSet<&String> = g.members.values().flatten().collect();
        for stream in streams {
            let Some(meta) = self.streams.get(stream) else {
                continue;
            };
            let readers: Vec<&str> = g
                .members
                .iter()
                .filter(|(_, s)| s.contains(stream))
                .map(|(c, _)| c.as_str())
                .collect();
            for id in meta.partitions.keys() {
                let Some(pick) = readers
                    .iter()
                    .copied()
                    .min_by_key(|c| (load.get(c).copied().unwrap_or(0), *c))
                else {
                    continue;
                };
                *load.entry(pick).or_default() += 1;
                out.entry(pick.to_string())
                    .or_default()
                    .entry(stream.clone())
                    .or_default()
                    .push(*id);
            }
        }
        out
    }

    fn partition_mut(
        &mut self,
        stream: &str,
        partition: i32,
    ) -> Result<&mut PartitionMeta, Rejection> {
        let s = self
            .streams
            .get_mut(stream)
            .ok_or_else(|| Rejection::StreamNotFound(stream.to_string()))?;
        s.partitions
            .get_mut(&partition)
            .ok_or_else(|| Rejection::PartitionNotFound {
                stream: stream.to_string(),
                partition,
            })
    }

    fn for_partitions(
        &mut self,
        name: &str,
        partitions: &[i32],
        mut f: impl FnMut(&mut StreamMetaFlags, &mut PartitionMeta),
    ) -> MetadataResponse {
        let Some(s) = self.streams.get_mut(name) else {
            return rejected(Rejection::StreamNotFound(name.to_string()));
        };
        if let Some(missing) = partitions.iter().find(|p| !s.partitions.contains_key(p)) {
            return rejected(Rejection::PartitionNotFound {
                stream: name.to_string(),
                partition: *missing,
            });
        }
        let mut flags = StreamMetaFlags {
            resume_all: s.resume_all,
        };
        for (id, p) in s.partitions.iter_mut() {
            if partitions.is_empty() || partitions.contains(id) {
                f(&mut flags, p);
            }
        }
        s.resume_all = flags.resume_all;
        applied()
    }
}

/// Stream-level flags a per-partition update may also set.
#[derive(Debug)]
pub struct StreamMetaFlags {
    /// See [`StreamMeta::resume_all`].
    pub resume_all: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, replicas: Vec<Vec<NodeId>>) -> MetadataCommand {
        MetadataCommand::CreateStream {
            name: name.into(),
            subject: format!("sub.{name}"),
            group: String::new(),
            replicas,
            config: BTreeMap::new(),
            created_at_ms: 5,
            data_keys: Vec::new(),
        }
    }

    #[test]
    fn data_keys_go_to_their_partitions_and_must_cover_all_of_them() {
        let key = |id: u32, byte: u8| WrappedDataKey {
            id,
            master_key_id: "m1".into(),
            wrapped: vec![byte; 60],
        };
        let mut s = MetadataState::default();
        let mut cmd = create("enc", vec![vec![1], vec![2]]);
        if let MetadataCommand::CreateStream { data_keys, .. } = &mut cmd {
            *data_keys = vec![key(0, 1)];
        }
        assert!(matches!(
            s.apply(&cmd),
            MetadataResponse::Rejected(Rejection::Invalid(_))
        ));
        if let MetadataCommand::CreateStream { data_keys, .. } = &mut cmd {
            *data_keys = vec![key(0, 1), key(0, 2)];
        }
        assert_eq!(s.apply(&cmd), applied());
        let parts = &s.streams["enc"].partitions;
        assert_eq!(parts[&0].data_keys, vec![key(0, 1)]);
        assert_eq!(parts[&1].data_keys, vec![key(0, 2)]);
        assert!(parts[&0].encrypted());
        s.apply(&create("plain", vec![vec![1]]));
        assert!(!s.streams["plain"].partitions[&0].encrypted());

        // Re-wrap: same ids only, encrypted partitions only.
        let rewrap = |stream: &str, keys: Vec<WrappedDataKey>| MetadataCommand::RewrapDataKeys {
            stream: stream.into(),
            partition: 0,
            keys,
        };
        let mut k2 = key(0, 9);
        k2.master_key_id = "m2".into();
        assert_eq!(s.apply(&rewrap("enc", vec![k2.clone()])), applied());
        assert_eq!(s.streams["enc"].partitions[&0].data_keys, vec![k2]);
        for bad in [
            rewrap("enc", vec![key(1, 9)]),
            rewrap("enc", vec![]),
            rewrap("plain", vec![key(0, 9)]),
        ] {
            assert!(
                matches!(s.apply(&bad), MetadataResponse::Rejected(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn create_twice_is_rejected_and_delete_removes_cursors() {
        let mut s = MetadataState::default();
        assert_eq!(
            s.apply(&create("a", vec![vec![1, 2], vec![2, 3]])),
            applied()
        );
        assert_eq!(
            s.apply(&create("a", vec![vec![1]])),
            rejected(Rejection::StreamExists("a".into()))
        );
        s.apply(&MetadataCommand::SetCursor {
            cursor_id: "c".into(),
            stream: "a".into(),
            partition: 1,
            offset: 9,
        });
        assert_eq!(s.cursors.len(), 1);
        assert_eq!(
            s.apply(&MetadataCommand::DeleteStream { name: "a".into() }),
            applied()
        );
        assert!(s.cursors.is_empty());
        assert!(matches!(
            s.apply(&MetadataCommand::DeleteStream { name: "a".into() }),
            MetadataResponse::Rejected(Rejection::StreamNotFound(_))
        ));
    }

    #[test]
    fn invalid_replica_sets_are_rejected() {
        let mut s = MetadataState::default();
        assert!(matches!(
            s.apply(&create("a", vec![])),
            MetadataResponse::Rejected(Rejection::Invalid(_))
        ));
        assert!(matches!(
            s.apply(&create("a", vec![vec![1, 1]])),
            MetadataResponse::Rejected(Rejection::Invalid(_))
        ));
    }

    #[test]
    fn older_leader_epoch_is_ignored() {
        let mut s = MetadataState::default();
        s.apply(&create("a", vec![vec![1, 2, 3]]));
        let set = |leader, leader_epoch| MetadataCommand::SetPartitionLeader {
            stream: "a".into(),
            partition: 0,
            leader,
            leader_epoch,
        };
        s.apply(&set(2, 5));
        s.apply(&set(1, 4));
        let p = &s.streams["a"].partitions[&0];
        assert_eq!((p.leader, p.leader_epoch), (Some(2), 5));
    }

    #[test]
    fn isr_is_set_only_by_the_recorded_leader_in_its_epoch() {
        let mut s = MetadataState::default();
        s.apply(&create("a", vec![vec![1, 2, 3]]));
        assert_eq!(s.streams["a"].partitions[&0].isr, vec![1, 2, 3]);
        let isr = |leader, leader_epoch, isr: Vec<u64>| MetadataCommand::SetPartitionIsr {
            stream: "a".into(),
            partition: 0,
            leader,
            leader_epoch,
            isr,
        };
        // No leader recorded yet: ignored.
        assert_eq!(s.apply(&isr(2, 5, vec![2])), applied());
        assert_eq!(s.streams["a"].partitions[&0].isr, vec![1, 2, 3]);
        s.apply(&MetadataCommand::SetPartitionLeader {
            stream: "a".into(),
            partition: 0,
            leader: 2,
            leader_epoch: 5,
        });
        // The leader is always kept; non-replicas are dropped; replica order is kept.
        s.apply(&isr(2, 5, vec![3, 9]));
        assert_eq!(s.streams["a"].partitions[&0].isr, vec![2, 3]);
        // A stale epoch or another node is ignored.
        s.apply(&isr(2, 4, vec![2]));
        s.apply(&isr(1, 5, vec![1]));
        assert_eq!(s.streams["a"].partitions[&0].isr, vec![2, 3]);
        // A new leader outside the recorded set joins it.
        s.apply(&isr(2, 5, vec![2]));
        s.apply(&MetadataCommand::SetPartitionLeader {
            stream: "a".into(),
            partition: 0,
            leader: 1,
            leader_epoch: 6,
        });
        assert_eq!(s.streams["a"].partitions[&0].isr, vec![2, 1]);
        assert!(matches!(
            s.apply(&MetadataCommand::SetPartitionIsr {
                stream: "b".into(),
                partition: 0,
                leader: 1,
                leader_epoch: 6,
                isr: vec![1],
            }),
            MetadataResponse::Rejected(Rejection::StreamNotFound(_))
        ));
    }

    #[test]
    fn pause_some_partitions_and_readonly_all() {
        let mut s = MetadataState::default();
        s.apply(&create("a", vec![vec![1], vec![1], vec![1]]));
        s.apply(&MetadataCommand::PauseStream {
            name: "a".into(),
            partitions: vec![0, 2],
            resume_all: true,
            at_ns: 10,
        });
        let paused: Vec<bool> = s.streams["a"]
            .partitions
            .values()
            .map(|p| p.paused)
            .collect();
        assert_eq!(paused, vec![true, false, true]);
        assert!(s.streams["a"].resume_all);
        s.apply(&MetadataCommand::SetStreamReadonly {
            name: "a".into(),
            partitions: vec![],
            readonly: true,
            at_ns: 11,
        });
        assert!(s.streams["a"].partitions.values().all(|p| p.readonly));
        assert_eq!(s.streams["a"].partitions[&1].readonly_times.first_ns, 11);
        assert_eq!(s.streams["a"].partitions[&0].pause_times.first_ns, 10);
        assert_eq!(s.streams["a"].partitions[&1].pause_times.first_ns, 0);
        // resume_all: resuming one resumes every paused partition.
        s.apply(&MetadataCommand::ResumePartition {
            stream: "a".into(),
            partition: 2,
            at_ns: 12,
        });
        assert!(s.streams["a"].partitions.values().all(|p| !p.paused));
        assert!(!s.streams["a"].resume_all);
        assert_eq!(s.streams["a"].partitions[&0].pause_times.latest_ns, 12);
        // Without it, only the one named.
        s.apply(&MetadataCommand::PauseStream {
            name: "a".into(),
            partitions: vec![],
            resume_all: false,
            at_ns: 13,
        });
        s.apply(&MetadataCommand::ResumePartition {
            stream: "a".into(),
            partition: 1,
            at_ns: 14,
        });
        let paused: Vec<bool> = s.streams["a"]
            .partitions
            .values()
            .map(|p| p.paused)
            .collect();
        assert_eq!(paused, vec![true, false, true]);
        assert!(matches!(
            s.apply(&MetadataCommand::PauseStream {
                name: "a".into(),
                partitions: vec![7],
                resume_all: false,
                at_ns: 15,
            }),
            MetadataResponse::Rejected(Rejection::PartitionNotFound { .. })
        ));
    }

    #[test]
    fn activity_is_recorded_while_the_activity_stream_exists() {
        let mut s = MetadataState::default();
        s.apply_at(1, &create("a", vec![vec![1], vec![1]]));
        assert!(s.activity.is_empty());
        s.apply_at(2, &create(ACTIVITY_STREAM, vec![vec![1]]));
        assert!(s.activity.is_empty());
        s.apply_at(3, &create("b", vec![vec![1]]));
        s.apply_at(
            4,
            &MetadataCommand::PauseStream {
                name: "a".into(),
                partitions: vec![],
                resume_all: false,
                at_ns: 1,
            },
        );
        s.apply_at(
            5,
            &MetadataCommand::ResumePartition {
                stream: "a".into(),
                partition: 1,
                at_ns: 2,
            },
        );
        // Rejected: not recorded.
        s.apply_at(6, &MetadataCommand::DeleteStream { name: "zz".into() });
        let ids: Vec<u64> = s.activity.keys().copied().collect();
        assert_eq!(ids, vec![3, 4, 5]);
        assert_eq!(
            s.activity[&4],
            ActivityOp::PauseStream {
                stream: "a".into(),
                partitions: vec![0, 1],
                resume_all: false
            }
        );
        assert_eq!(
            s.activity[&5],
            ActivityOp::ResumeStream {
                stream: "a".into(),
                partitions: vec![1]
            }
        );
        s.apply_at(7, &MetadataCommand::ActivityPublished { through: 4 });
        assert_eq!(s.activity.keys().copied().collect::<Vec<_>>(), vec![5]);
        s.apply_at(
            8,
            &MetadataCommand::DeleteStream {
                name: ACTIVITY_STREAM.into(),
            },
        );
        assert!(s.activity.is_empty());
    }

    #[test]
    fn consumer_group_epochs() {
        let mut s = MetadataState::default();
        let join = |c: &str| MetadataCommand::JoinConsumerGroup {
            group: "g".into(),
            consumer: c.into(),
            streams: vec!["a".into()],
            coordinator: 1,
        };
        assert_eq!(
            s.apply(&join("x")),
            MetadataResponse::Applied {
                group_epoch: Some(0)
            }
        );
        assert_eq!(
            s.apply(&join("y")),
            MetadataResponse::Applied {
                group_epoch: Some(1)
            }
        );
        assert_eq!(
            s.apply(&join("y")),
            MetadataResponse::Applied {
                group_epoch: Some(1)
            }
        );
        assert!(matches!(
            s.apply(&MetadataCommand::LeaveConsumerGroup {
                group: "g".into(),
                consumer: "x".into(),
                expected_epoch: Some(0),
                expired: false,
            }),
            MetadataResponse::Rejected(Rejection::EpochMismatch { current: 1, .. })
        ));
        s.apply(&MetadataCommand::SetGroupCoordinator {
            group: "g".into(),
            coordinator: 3,
            expected_epoch: 1,
        });
        assert_eq!(s.consumer_groups["g"].coordinator, 3);
        assert!(matches!(
            s.apply(&MetadataCommand::LeaveConsumerGroup {
                group: "g".into(),
                consumer: "nobody".into(),
                expected_epoch: None,
                expired: false,
            }),
            MetadataResponse::Rejected(Rejection::NotMember { .. })
        ));
        for c in ["x", "y"] {
            s.apply(&MetadataCommand::LeaveConsumerGroup {
                group: "g".into(),
                consumer: c.into(),
                expected_epoch: None,
                expired: c == "y",
            });
        }
        assert!(s.consumer_groups.is_empty());
    }

    #[test]
    fn assignments_are_disjoint_complete_and_balanced() {
        let mut s = MetadataState::default();
        s.apply(&create("a", vec![vec![1]; 4]));
        s.apply(&create("b", vec![vec![1]; 3]));
        let join = |c: &str, streams: &[&str]| MetadataCommand::JoinConsumerGroup {
            group: "g".into(),
            consumer: c.into(),
            streams: streams.iter().map(|s| s.to_string()).collect(),
            coordinator: 1,
        };
        s.apply(&join("x", &["a", "b"]));
        s.apply(&join("y", &["a"]));
        let a = s.assignments("g");
        let mut seen: Vec<(String, i32)> = Vec::new();
        for per in a.values() {
            for (stream, ps) in per {
                seen.extend(ps.iter().map(|p| (stream.clone(), *p)));
            }
        }
        seen.sort();
        let want: Vec<(String, i32)> = (0..4)
            .map(|p| ("a".to_string(), p))
            .chain((0..3).map(|p| ("b".to_string(), p)))
            .collect();
        assert_eq!(seen, want, "every partition exactly once");
        assert_eq!(a["y"]["a"].len(), 2);
        assert_eq!(a["x"]["a"].len(), 2);
        assert_eq!(a["x"]["b"], vec![0, 1, 2], "only x reads b");
        // Deleting a stream the group reads advances the epoch and drops its partitions.
        let before = s.consumer_groups["g"].epoch;
        s.apply(&MetadataCommand::DeleteStream { name: "b".into() });
        assert_eq!(s.consumer_groups["g"].epoch, before + 1);
        assert!(!s.assignments("g")["x"].contains_key("b"));
        assert!(s.assignments("nope").is_empty());
    }

    #[test]
    fn snapshot_round_trips_through_the_codec() -> Result<(), crate::error::RaftError> {
        let mut s = MetadataState::default();
        s.apply(&MetadataCommand::RegisterNode {
            node_id: 1,
            addr: "127.0.0.1:1".into(),
        });
        s.apply(&create("a", vec![vec![1, 2]]));
        s.apply(&MetadataCommand::SetCursor {
            cursor_id: "c".into(),
            stream: "a".into(),
            partition: 0,
            offset: 3,
        });
        let bytes = crate::codec::encode(&s)?;
        let back: MetadataState = crate::codec::decode("metadata", &bytes)?;
        assert_eq!(back, s);
        Ok(())
    }
}
