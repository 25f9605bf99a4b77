//! [`PartitionReplica`]: the server's handle on one partition group hosted by this node.
//!
//! Ack levels, without polling:
//! - **LEADER**: [`Proposal::appended_locally`] resolves once the batch is appended *and durable*
//!   in the leader's local log (it may still be truncated if the leader is deposed before commit).
//! - **ALL**: [`Proposal::committed`] (or [`PartitionReplica::append`]) resolves once a majority
//!   has the batch on disk and it is applied; it returns the batch's offsets.
//! - Subscribers wait on [`PartitionReplica::watch_high_watermark`].
//!
//! Two ways to submit a batch:
//! - [`PartitionReplica::propose`] hands the write to a task; two proposals made without
//!   awaiting the first's [`Proposal::appended_locally`] may reach raft in either order. It
//!   retries briefly while no leader is known.
//! - [`PartitionReplica::propose_in_order`] returns once the write is in openraft's core queue
//!   (`Raft::write(..).with_leader(term).responder(..)`, fire-and-forget with a responder).
//!   Invariants: (1) calls awaited one after the other become log entries in call order (the
//!   core queue is FIFO and the core appends each message's payloads in order); (2) a write is
//!   appended only while this node leads in `term`, so a pipeline of writes under one term is
//!   never interleaved with another leader's entries; (3) a write rejected after enqueue (not
//!   leader, term changed, group stopped) fails its [`Proposal`] — both
//!   [`Proposal::appended_locally`] and [`Proposal::committed`] — instead of leaving it
//!   pending; (4) no retry, which could reorder.
//!
//! Leadership, without polling: [`PartitionReplica::watch_leadership`] reads openraft's server
//! metrics channel, which changes only on vote, server state, leader or membership changes (not
//! on every append or heartbeat), so a parked watcher per partition costs nothing between
//! elections and no extra task runs per group.
//!
//! ISR: [`PartitionReplica::replication_progress`] (leader only) exposes openraft's
//! per-follower matched index and acknowledgement times (for a quiesced group, the follower's
//! confirmations of this node's liveness beats count as acknowledgements, see
//! `crate::scheduler`); [`PartitionReplica::in_sync_replicas`] applies the rule of
//! [`super::isr`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::alias::WatchReceiverOf;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::impls::ProgressResponder;
use openraft::metrics::RaftServerMetrics;
use openraft::raft::ClientWriteResult;
use openraft::Instant as _;
use openraft::ServerState;
use tokio::sync::oneshot;
use tokio::sync::watch;

use super::group::AckPlumbing;
use super::group::OnDurable;
use super::group::PartitionGroup;
use super::isr::FollowerProgress;
use super::isr::IsrTracker;
use super::isr::ReplicationProgress;
use super::types::Offsets;
use super::types::PartitionRequest;
use super::types::PartitionResponse;
use crate::convert;
use crate::error::RaftError;
use crate::types::GroupId;
use crate::types::NodeId;
use crate::types::PartitionId;
use crate::types::PartitionTypes;
use crate::wait;

/// Who leads a partition group, as this replica knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// The leader this node knows of (`None` during an election).
    pub leader: Option<NodeId>,
    /// The raft term (the partition's leader epoch).
    pub term: u64,
    /// Whether this node is the established leader (what [`PartitionReplica::is_leader`] says).
    pub is_local: bool,
}

type ServerMetricsRx = WatchReceiverOf<PartitionTypes, RaftServerMetrics<PartitionTypes>>;

/// Watches a group's [`Leadership`] (see the module docs). Each clone has its own cursor.
#[derive(Clone)]
pub struct LeadershipWatch {
    rx: ServerMetricsRx,
    node_id: NodeId,
    group: GroupId,
    seen: Leadership,
}

impl std::fmt::Debug for LeadershipWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeadershipWatch")
            .field("seen", &self.seen)
            .finish()
    }
}

fn leadership_of(m: &RaftServerMetrics<PartitionTypes>, node_id: NodeId) -> Leadership {
    Leadership {
        leader: m.current_leader,
        term: m.vote.leader_id.term,
        is_local: m.state == ServerState::Leader && m.current_leader == Some(node_id),
    }
}

impl LeadershipWatch {
    /// The leadership now (also marks it seen).
    pub fn current(&mut self) -> Leadership {
        let l = leadership_of(&self.rx.borrow_watched(), self.node_id);
        self.seen = l;
        l
    }

    /// Waits until the leadership differs from the last one returned (by this method or
    /// [`LeadershipWatch::current`]) and returns it. Membership-only changes do not wake the
    /// caller. Fails once the group has stopped.
    pub async fn changed(&mut self) -> Result<Leadership, RaftError> {
        loop {
            let l = leadership_of(&self.rx.borrow_watched(), self.node_id);
            if l != self.seen {
                self.seen = l;
                return Ok(l);
            }
            self.rx.changed().await.map_err(|_| RaftError::Stopped {
                group: self.group.clone(),
                reason: "partition group stopped".into(),
            })?;
        }
    }
}

/// Handle on one partition group. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PartitionReplica {
    pub(crate) group: Arc<PartitionGroup>,
}

/// A submitted batch: wait for [`Proposal::appended_locally`] (LEADER) and/or
/// [`Proposal::committed`] (ALL).
pub struct Proposal {
    source: OutcomeSource,
    index_rx: Option<oneshot::Receiver<u64>>,
    index: Option<u64>,
    durable: watch::Receiver<u64>,
    /// The outcome, when it arrived while [`Proposal::appended_locally`] waited for the index or
    /// for durability (read by [`Proposal::committed`] instead of `source`).
    outcome: Option<Result<Offsets, RaftError>>,
}

/// What a [`Proposal`] receives its outcome from (a field of its own, so that receiving it
/// borrows nothing the other waits of the proposal use).
struct OutcomeSource {
    rx: OutcomeRx,
    group: GroupId,
    acks: Arc<AckPlumbing>,
    tag: u64,
}

/// Where a proposal's outcome arrives.
enum OutcomeRx {
    /// Straight from openraft's responder ([`PartitionReplica::propose_in_order`]): no task
    /// sits between the core and the proposer.
    Raft(oneshot::Receiver<ClientWriteResult<PartitionTypes>>),
    /// From the task that submits and retries the write ([`PartitionReplica::propose`]).
    Relayed(oneshot::Receiver<Result<Offsets, RaftError>>),
}

fn timeout_err(what: &str, t: Duration) -> RaftError {
    RaftError::Timeout {
        what: what.to_string(),
        ms: t.as_millis() as u64,
    }
}

/// A copy of a proposal's failure, for the second of its two waits.
fn again(e: &RaftError) -> RaftError {
    RaftError::Rejected(e.to_string())
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposal")
            .field("group", &self.source.group)
            .field("tag", &self.source.tag)
            .field("index", &self.index)
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl OutcomeSource {
    /// Receives the outcome (once; the caller keeps it in `outcome`). A failure forgets the tag,
    /// so an entry that was never appended leaves nothing behind.
    async fn recv(&mut self) -> Result<Offsets, RaftError> {
        let r = match &mut self.rx {
            OutcomeRx::Raft(rx) => match rx.await {
                Ok(Ok(resp)) => match resp.data {
                    PartitionResponse::Data(o) => Ok(o),
                    PartitionResponse::Control => {
                        Err(RaftError::Rejected("data entry applied as control".into()))
                    }
                },
                Ok(Err(e)) => Err(convert::client_write_error(
                    &self.group,
                    openraft::error::RaftError::APIError(e),
                )),
                // The core dropped the responder (it stopped, or did not append the entry).
                Err(_) => Err(RaftError::Stopped {
                    group: self.group.clone(),
                    reason: "raft dropped the proposal".into(),
                }),
            },
            OutcomeRx::Relayed(rx) => match rx.await {
                Ok(r) => r,
                Err(_) => Err(RaftError::Stopped {
                    group: self.group.clone(),
                    reason: "proposal task ended".into(),
                }),
            },
        };
        if r.is_err() {
            self.acks.forget(self.tag);
        }
        r
    }
}

impl Proposal {
    /// Waits until the batch is durable in this (leader) node's log; returns its raft index.
    ///
    /// Fails if the proposal was rejected (not leader) before being appended.
    pub async fn appended_locally(&mut self, timeout: Duration) -> Result<u64, RaftError> {
        let fut = async {
            // The index the entry got, unless the proposal fails first.
            let index = loop {
                if let Some(i) = self.index {
                    break i;
                }
                if let Some(Err(e)) = &self.outcome {
                    return Err(again(e));
                }
                let Some(rx) = self.index_rx.as_mut() else {
                    return Err(RaftError::Rejected("proposal was not appended".into()));
                };
                tokio::select! {
                    biased;
                    r = rx => {
                        self.index_rx = None;
                        match r {
                            Ok(i) => self.index = Some(i),
                            // The tag was forgotten: the proposal failed before append.
                            Err(_) => {
                                return Err(RaftError::Rejected("proposal was not appended".into()))
                            }
                        }
                    }
                    r = self.source.recv(), if self.outcome.is_none() => {
                        let failed = r.as_ref().err().map(again);
                        self.outcome = Some(r);
                        if let Some(e) = failed {
                            return Err(e);
                        }
                        // Committed: the index was reported before (append precedes apply).
                    }
                }
            };
            // Wait for durability, but give up as soon as the proposal is known to have failed
            // (e.g. the leader was deposed and the entry truncated).
            loop {
                if let Some(Err(e)) = &self.outcome {
                    return Err(again(e));
                }
                tokio::select! {
                    r = self.durable.wait_for(|d| *d >= index) => {
                        r.map_err(|_| RaftError::Stopped {
                            group: self.source.group.clone(),
                            reason: "log store closed".into(),
                        })?;
                        return Ok(index);
                    }
                    // Committed: durable locally too; the flush hook is about to say so.
                    r = self.source.recv(), if self.outcome.is_none() => self.outcome = Some(r),
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| timeout_err("local append", timeout))?
    }

    /// Waits until the batch is committed and applied; returns its offsets.
    pub async fn committed(mut self, timeout: Duration) -> Result<Offsets, RaftError> {
        if let Some(r) = self.outcome.take() {
            return r;
        }
        tokio::time::timeout(timeout, self.source.recv())
            .await
            .unwrap_or_else(|_| Err(timeout_err("commit", timeout)))
    }
}

impl Drop for Proposal {
    fn drop(&mut self) {
        // Given up on before its entry was appended: take its tag (and callback) back.
        if self.index.is_none() {
            self.source.acks.forget(self.source.tag);
        }
    }
}

impl PartitionReplica {
    /// Whether this replica holds its votes and elections after an unclean restart under a
    /// lazy log sync policy, waiting for a leader to catch it up (see
    /// `raft/src/partition/unclean.rs`). For tests and diagnostics.
    #[doc(hidden)]
    pub fn holds_votes(&self) -> bool {
        self.group.clock.catch_up.holds()
    }

    /// The id of the node hosting this replica.
    pub fn group_node(&self) -> NodeId {
        self.group.node_id
    }

    /// The partition.
    pub fn id(&self) -> &PartitionId {
        &self.group.id
    }

    fn group_id(&self) -> GroupId {
        GroupId::Partition(self.group.id.clone())
    }

    /// Proposes one batch (`records` = encoded record set of `record_count` records).
    pub fn propose(&self, records: Bytes, record_count: u32) -> Proposal {
        let (tag, index_rx) = self.group.acks.register(None);
        let (commit_tx, commit_rx) = oneshot::channel();
        let group = self.group.clone();
        let gid = self.group_id();
        let req = PartitionRequest {
            records,
            record_count,
            tag,
            base_offset: None,
        };
        let gid2 = gid.clone();
        let retry_until = tokio::time::Instant::now() + Duration::from_secs(5);
        tokio::spawn(async move {
            group.ensure_awake().await;
            let r = loop {
                let r = match group.raft.client_write(req.clone()).await {
                    Ok(resp) => match resp.data {
                        PartitionResponse::Data(o) => Ok(o),
                        PartitionResponse::Control => {
                            Err(RaftError::Rejected("data entry applied as control".into()))
                        }
                    },
                    Err(e) => Err(convert::client_write_error(&gid2, e)),
                };
                // Only a proposal rejected *before* append ("no leader known": an election is
                // running) is retried, for a bounded time; it was never appended, so the retry
                // cannot duplicate it.
                if let Err(RaftError::NotLeader {
                    leader_id: None, ..
                }) = &r
                {
                    if tokio::time::Instant::now() < retry_until {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
                break r;
            };
            group.acks.forget(tag);
            let _ = commit_tx.send(r);
        });
        Proposal {
            source: OutcomeSource {
                rx: OutcomeRx::Relayed(commit_rx),
                group: gid,
                acks: self.group.acks.clone(),
                tag,
            },
            index_rx: Some(index_rx),
            index: None,
            durable: self.group.acks.durable(),
            outcome: None,
        }
    }

    /// Submits one batch in call order (see the module docs): returns once the write is queued
    /// in openraft's core, before it is appended. `term` is the leadership term the caller
    /// leads in ([`Leadership::term`]); the write is rejected if this node does not lead in
    /// that term when raft takes it.
    ///
    /// `on_durable` runs once the batch is durable in this node's log, before
    /// [`Proposal::appended_locally`] returns (and never if the batch is not appended, or is cut
    /// by a truncation before its flush): see [`OnDurable`].
    ///
    /// Fails only if the group has stopped; every later failure goes to the [`Proposal`].
    pub async fn propose_in_order(
        &self,
        records: Bytes,
        record_count: u32,
        term: u64,
        on_durable: Option<OnDurable>,
    ) -> Result<Proposal, RaftError> {
        let (tag, index_rx) = self.group.acks.register(on_durable);
        let gid = self.group_id();
        let req = PartitionRequest {
            records,
            record_count,
            tag,
            base_offset: None,
        };
        let (responder, resp_rx) = ProgressResponder::<PartitionTypes, _>::complete_only();
        self.group.ensure_awake().await;
        if let Err(e) = self
            .group
            .raft
            .write(req)
            .with_leader(term)
            .responder(responder)
            .await
        {
            self.group.acks.forget(tag);
            return Err(convert::fatal(&gid, e));
        }
        // No task relays the outcome: the proposal reads openraft's responder itself.
        Ok(Proposal {
            source: OutcomeSource {
                rx: OutcomeRx::Raft(resp_rx),
                group: gid,
                acks: self.group.acks.clone(),
                tag,
            },
            index_rx: Some(index_rx),
            index: None,
            durable: self.group.acks.durable(),
            outcome: None,
        })
    }

    /// Proposes a batch and waits for commit (ALL ack); returns its offsets.
    pub async fn append(
        &self,
        records: Bytes,
        record_count: u32,
        timeout: Duration,
    ) -> Result<Offsets, RaftError> {
        self.propose(records, record_count).committed(timeout).await
    }

    /// Whether this node currently leads the group.
    pub fn is_leader(&self) -> bool {
        let m = wait::metrics(&self.group.raft);
        m.state == ServerState::Leader && m.current_leader == Some(self.group.node_id)
    }

    /// Whether the group has a working leader as far as this replica can tell: this node leads
    /// it, or it knows a leader it heard from within the election timeout. A follower cut off
    /// from its leader (and from a majority, so no election succeeds) keeps naming the old
    /// leader; this says it is unavailable.
    pub fn leader_is_live(&self) -> bool {
        if self.is_leader() {
            return true;
        }
        let silence = Duration::from_millis(self.group.raft.config().election_timeout_max);
        self.leader().is_some() && self.group.clock.last_contact().elapsed() <= silence
    }

    /// Why the group stopped, when openraft stopped it on a fatal error (a storage write that
    /// failed, e.g. ENOSPC); `None` while it runs. A stopped group takes no proposals and does
    /// not recover by itself: its owner removes it (keeping its data) and opens it again.
    pub fn stopped(&self) -> Option<String> {
        wait::metrics(&self.group.raft)
            .running_state
            .as_ref()
            .err()
            .map(ToString::to_string)
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        wait::metrics(&self.group.raft).current_leader
    }

    /// The current raft term (the partition's leader epoch).
    pub fn term(&self) -> u64 {
        wait::metrics(&self.group.raft).current_term
    }

    /// A watch of this group's leader and term (see the module docs).
    pub fn watch_leadership(&self) -> LeadershipWatch {
        let rx = self.group.raft.server_metrics();
        let seen = leadership_of(&rx.borrow_watched(), self.group.node_id);
        LeadershipWatch {
            rx,
            node_id: self.group.node_id,
            group: self.group_id(),
            seen,
        }
    }

    /// Replication progress of every follower, when this node leads the group (`None`
    /// otherwise, or before the leader has replication state).
    pub fn replication_progress(&self) -> Option<ReplicationProgress> {
        let server = self.group.raft.server_metrics();
        let leadership = leadership_of(&server.borrow_watched(), self.group.node_id);
        if !leadership.is_local {
            return None;
        }
        let data = self.group.raft.data_metrics();
        let d = data.borrow_watched();
        let replication = d.replication.as_ref()?;
        let heartbeat = d.heartbeat.as_ref();
        let me = self.group.node_id;
        let followers = replication
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, matched)| {
                let raft_ack = heartbeat
                    .and_then(|h| h.get(id))
                    .and_then(|t| t.as_ref())
                    .map(|t| t.elapsed());
                // A quiesced group gets no heartbeat replies; the follower's confirmations of
                // the leader node's liveness beats stand in for them (`crate::scheduler`).
                let quiet_ack = self.group.clock.quiet_ack_age(*id);
                let ack_age = match (raft_ack, quiet_ack) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                (
                    *id,
                    FollowerProgress {
                        matched_index: matched.as_ref().map(|l| l.index),
                        ack_age,
                    },
                )
            })
            .collect();
        Some(ReplicationProgress {
            leader: me,
            term: leadership.term,
            last_log_index: d.last_log.as_ref().map_or(0, |l| l.index),
            followers,
        })
    }

    /// The in-sync replicas by the rule of [`super::isr`] with `tracker`'s history, when this
    /// node leads the group (`None` otherwise). Call at least every `max_lag / 4`.
    pub fn in_sync_replicas(
        &self,
        tracker: &mut IsrTracker,
        max_lag: Duration,
    ) -> Option<Vec<NodeId>> {
        let p = self.replication_progress()?;
        Some(tracker.observe(&p, std::time::Instant::now(), max_lag))
    }

    /// Hands this group's leadership to the most caught-up other voter (graceful shutdown),
    /// and waits up to `timeout` until that node leads. Returns the node chosen, or `None`
    /// when this node does not lead or no other voter has acknowledged anything.
    ///
    /// The target is the voter whose matched index is highest (ties: the most recent ack);
    /// openraft makes it campaign at once, so leadership moves in a round trip or two
    /// instead of an election timeout. Call it once no more entries are proposed here.
    pub async fn transfer_leadership(
        &self,
        timeout: Duration,
    ) -> Result<Option<NodeId>, RaftError> {
        let Some(p) = self.replication_progress() else {
            return Ok(None);
        };
        let metrics = wait::metrics(&self.group.raft);
        let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let target = p
            .followers
            .iter()
            .filter(|(id, f)| voters.contains(id) && f.matched_index.is_some())
            .max_by_key(|(_, f)| (f.matched_index, f.ack_age.map(std::cmp::Reverse)))
            .map(|(id, _)| *id);
        let Some(target) = target else {
            return Ok(None);
        };
        self.transfer_to(target, timeout).await?;
        Ok(Some(target))
    }

    /// Asks openraft to hand the leadership to `target` and waits up to `timeout` until
    /// another node leads.
    ///
    /// Rules:
    /// 1. From the call on, openraft on this node refuses new proposals and sends no more
    ///    heartbeats for the group (until another node leads): call it only towards a voter
    ///    that will take the leadership, or accept that the group elects after its election
    ///    timeout.
    /// 2. `target` takes over only if its log holds the leader's last entry when the request
    ///    arrives.
    pub(crate) async fn transfer_to(
        &self,
        target: NodeId,
        timeout: Duration,
    ) -> Result<(), RaftError> {
        let gid = self.group_id();
        self.group
            .raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| convert::fatal(&gid, e))?;
        let me = self.group.node_id;
        wait::until(&self.group.raft, &gid, "leader transfer", timeout, |m| {
            m.current_leader.is_some_and(|l| l != me)
        })
        .await?;
        Ok(())
    }

    /// Waits until some node leads the group; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, RaftError> {
        let m = wait::until(
            &self.group.raft,
            &self.group_id(),
            "a partition leader",
            timeout,
            |m| m.current_leader.is_some(),
        )
        .await?;
        m.current_leader.ok_or(RaftError::Stopped {
            group: self.group_id(),
            reason: "no leader".into(),
        })
    }

    /// The partition's log: the group's raft log, which is also its message log (one raft entry
    /// = one record batch). Readers see committed records only: its high watermark is set as
    /// entries are applied. Works on every replica. A shared handle: do not append to it,
    /// truncate it or close it (the group owns it).
    pub fn log(&self) -> drawbridge_storage::Log {
        self.group.sm.log().clone()
    }

    /// Last committed offset (inclusive), `None` if nothing is committed.
    pub fn high_watermark(&self) -> Option<u64> {
        self.group.sm.high_watermark()
    }

    /// Watches the high watermark; it only increases.
    pub fn watch_high_watermark(&self) -> watch::Receiver<Option<u64>> {
        self.group.sm.watch_high_watermark()
    }

    /// Next offset the group will assign.
    pub fn next_offset(&self) -> u64 {
        self.group.sm.next_offset()
    }

    /// Raft index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.group.sm.applied_index()
    }

    /// Raft index of the last entry in the local log.
    pub fn last_log_index(&self) -> Option<u64> {
        wait::metrics(&self.group.raft).last_log_index
    }

    /// Applies a retention policy to this replica's log (any replica: each one enforces
    /// retention on its own copy, as in Liftbridge): plans which whole sealed, committed
    /// segments the policy deletes, takes a (metadata-only) snapshot covering them and asks
    /// raft to purge through their last entry, which deletes them. Returns the plan; raft may
    /// defer the purge while a follower still replicates those entries.
    ///
    /// Messages are only ever deleted here, by policy: partition groups never snapshot or
    /// purge on openraft's own schedule (`GroupTimings::partition_defaults`).
    pub async fn enforce_retention(
        &self,
        policy: &drawbridge_storage::RetentionPolicy,
        now_ns: i64,
        timeout: Duration,
    ) -> Result<drawbridge_storage::RetentionPlan, RaftError> {
        let plan = self.group.sm.log().retention_plan(policy, now_ns);
        if let Some(index) = plan.purge_through_raft_index {
            self.purge_through(index, timeout).await?;
        }
        Ok(plan)
    }

    /// Compacts this replica's log by key (any replica: each one compacts its own copy, on its
    /// own schedule): rewrites the sealed segments whose entries are all applied, keeping the
    /// newest record of every key (`drawbridge_storage::compaction`). Blocking file I/O: call
    /// it from a blocking thread. Appends and reads continue meanwhile.
    ///
    /// No raft purge is needed: only applied (hence committed) entries are rewritten, which
    /// raft never truncates, and a compacted entry keeps its log id, base offset and offset
    /// span, so when raft reads one to replicate it to a lagging follower the follower stores
    /// the compacted form — what it would hold after compacting itself.
    pub fn compact_by_key(
        &self,
    ) -> Result<drawbridge_storage::CompactionOutcome, drawbridge_storage::StorageError> {
        self.group.sm.log().compact(self.group.sm.applied_index())
    }

    /// Snapshots (if the last snapshot does not cover `index`) and asks raft to purge the log
    /// through `index`, which must be applied.
    async fn purge_through(&self, index: u64, timeout: Duration) -> Result<(), RaftError> {
        let gid = self.group_id();
        if self.group.sm.applied_index() < index {
            return Err(RaftError::Rejected(format!(
                "cannot purge through {index}: not applied yet"
            )));
        }
        let covered = |m: &openraft::RaftMetrics<PartitionTypes>| {
            m.snapshot.as_ref().is_some_and(|s| s.index >= index)
        };
        if !covered(&wait::metrics(&self.group.raft)) {
            self.group
                .raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| convert::fatal(&gid, e))?;
            wait::until(&self.group.raft, &gid, "snapshot", timeout, covered).await?;
        }
        self.group
            .raft
            .trigger()
            .purge_log(index)
            .await
            .map_err(|e| convert::fatal(&gid, e))
    }

    /// Takes a snapshot now and purges the log up to it (retention). Returns the purged index.
    pub async fn compact(&self, timeout: Duration) -> Result<u64, RaftError> {
        let gid = self.group_id();
        let applied = self.group.sm.applied_index();
        self.group
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| convert::fatal(&gid, e))?;
        wait::until(&self.group.raft, &gid, "snapshot", timeout, |m| {
            m.snapshot.as_ref().is_some_and(|s| s.index >= applied)
        })
        .await?;
        self.group
            .raft
            .trigger()
            .purge_log(applied)
            .await
            .map_err(|e| convert::fatal(&gid, e))?;
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    //! `propose_in_order` on a one-node group: call order = offset order without awaiting in
    //! between, and a write rejected after enqueue fails its proposal instead of hanging.

    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::OnDurable;

    use crate::config::GroupTimings;
    use crate::PartitionId;
    use crate::RaftConfig;
    use crate::RaftNode;

    const T: Duration = Duration::from_secs(10);

    fn batch(i: u32) -> Bytes {
        let r = drawbridge_storage::Record {
            timestamp: i64::from(i),
            key: None,
            headers: Vec::new(),
            value: Bytes::from(format!("in-order-{i}")),
        };
        drawbridge_storage::encode_records(&[r]).expect("encode records")
    }

    fn fast() -> GroupTimings {
        GroupTimings {
            heartbeat_interval_ms: 100,
            heartbeat_min_interval_ms: 50,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            ..GroupTimings::partition_defaults()
        }
    }

    /// A one-node cluster (fast timings) whose metadata group has elected it.
    async fn one_node(dir: &std::path::Path) -> (RaftNode, String) {
        let mut config = RaftConfig::new(1, "");
        config.metadata = fast();
        config.partition = fast();
        let node = RaftNode::start(config, dir, "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("start node");
        let addr = node.local_addr().to_string();
        node.metadata()
            .bootstrap(BTreeMap::from([(1, addr.clone())]))
            .await
            .expect("bootstrap");
        node.metadata().wait_for_leader(T).await.expect("leader");
        (node, addr)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn propose_in_order_keeps_call_order_and_fails_rejected_writes() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (node, addr) = one_node(tmp.path()).await;
        let replica = node
            .create_partition_group(PartitionId::new("ino", 0), BTreeMap::from([(1, addr)]))
            .await
            .expect("create group");
        replica.wait_for_leader(T).await.expect("partition leader");
        let term = replica.watch_leadership().current().term;

        // Many proposals in flight at once; offsets must follow call order.
        let mut props = Vec::new();
        for i in 0..200u32 {
            let n = i % 3 + 1;
            let body = drawbridge_storage::encode_records(
                &(0..n)
                    .map(|k| drawbridge_storage::Record {
                        timestamp: i64::from(k),
                        key: None,
                        headers: Vec::new(),
                        value: Bytes::from(format!("{i}-{k}")),
                    })
                    .collect::<Vec<_>>(),
            )
            .expect("encode");
            props.push((
                n,
                replica
                    .propose_in_order(body, n, term, None)
                    .await
                    .expect("enqueue"),
            ));
        }
        let mut next = 0u64;
        let mut last_index = 0;
        for (n, mut p) in props {
            let index = p.appended_locally(T).await.expect("LEADER ack");
            assert!(index > last_index, "raft indexes follow call order");
            last_index = index;
            let o = p.committed(T).await.expect("ALL ack");
            assert_eq!((o.base_offset, o.record_count), (next, n));
            next += u64::from(n);
        }

        // A write under another term is rejected after enqueue: both waits fail promptly, and
        // its durability callback never runs.
        let flag = |f: &Arc<AtomicBool>| -> Option<OnDurable> {
            let f = f.clone();
            Some(Box::new(move || f.store(true, Ordering::SeqCst)))
        };
        let bad_ran = Arc::new(AtomicBool::new(false));
        let mut bad = replica
            .propose_in_order(batch(1), 1, term + 1, flag(&bad_ran))
            .await
            .expect("enqueue");
        let started = std::time::Instant::now();
        assert!(bad.appended_locally(T).await.is_err());
        assert!(bad.committed(T).await.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "failed, not timed out"
        );
        // The group still takes writes in the right term, at the next offset; the callback
        // has run by the time the LEADER wait returns.
        let ok_ran = Arc::new(AtomicBool::new(false));
        let mut ok = replica
            .propose_in_order(batch(2), 1, term, flag(&ok_ran))
            .await
            .expect("enqueue");
        ok.appended_locally(T).await.expect("LEADER ack");
        assert!(ok_ran.load(Ordering::SeqCst), "durability callback ran");
        assert_eq!(ok.committed(T).await.expect("ALL ack").base_offset, next);
        assert!(
            !bad_ran.load(Ordering::SeqCst),
            "rejected write's callback ran"
        );
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_deletes_only_what_the_policy_says() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (node, addr) = one_node(tmp.path()).await;
        let settings = crate::PartitionLogSettings {
            segment_max_bytes: Some(4096),
            segment_max_age: None,
        };
        let replica = node
            .create_partition_group_with(
                PartitionId::new("ret", 0),
                BTreeMap::from([(1, addr)]),
                settings,
            )
            .await
            .expect("create group");
        replica.wait_for_leader(T).await.expect("partition leader");
        for i in 0..200u32 {
            replica.append(batch(i), 1, T).await.expect("append");
        }
        let log = replica.log();
        assert_eq!(log.earliest_offset(), 0);
        // No policy limit: nothing goes, however many entries raft has applied.
        let none = drawbridge_storage::RetentionPolicy::default();
        let plan = replica
            .enforce_retention(&none, 0, T)
            .await
            .expect("retention");
        assert_eq!(plan.segments, 0);
        assert_eq!(log.earliest_offset(), 0);

        let keep_50 = drawbridge_storage::RetentionPolicy {
            max_messages: Some(50),
            ..Default::default()
        };
        let plan = replica
            .enforce_retention(&keep_50, 0, T)
            .await
            .expect("retention");
        assert!(
            plan.segments > 0,
            "small segments: some are beyond the newest 50"
        );
        // The purge runs in raft's core: wait (bounded) until the segments are gone.
        let deadline = std::time::Instant::now() + T;
        while log.earliest_offset() < plan.new_earliest_offset {
            assert!(std::time::Instant::now() < deadline, "purge did not happen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let earliest = log.earliest_offset();
        assert!(
            earliest > 0 && earliest <= 150,
            "kept at least the newest 50: {earliest}"
        );
        // The group keeps working at the next offset.
        let o = replica
            .append(batch(999), 1, T)
            .await
            .expect("append after purge");
        assert_eq!(o.base_offset, 200);
        node.shutdown().await;
    }

    /// A snapshot that finds the disk full is abandoned (issue 7, fault 5): the group keeps
    /// running and committing, no tmp file stays, nothing is purged, the abandon is counted,
    /// and the next snapshot (space back) is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_that_finds_the_disk_full_is_abandoned_and_retried() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (node, addr) = one_node(tmp.path()).await;
        let id = PartitionId::new("snapfull", 0);
        let replica = node
            .create_partition_group(id.clone(), BTreeMap::from([(1, addr)]))
            .await
            .expect("create group");
        replica.wait_for_leader(T).await.expect("partition leader");
        for i in 0..20u32 {
            replica.append(batch(i), 1, T).await.expect("append");
        }
        let snapshot = crate::node::partition_dir(tmp.path(), &id).join("snapshot");
        let tmp_file = crate::log::meta_file::tmp_path(&snapshot);
        let abandoned = crate::log::nospace::snapshots_abandoned();
        crate::log::nospace::inject_full(&tmp_file, 1);
        // The snapshot never covers the applied index: compaction gives up after its wait
        // (and purges nothing), the group does not stop.
        let r = replica.compact(Duration::from_secs(2)).await;
        assert!(r.is_err(), "compaction without a snapshot: {r:?}");
        assert!(crate::log::nospace::snapshots_abandoned() > abandoned);
        assert!(
            !tmp_file.exists(),
            "the abandoned snapshot left its tmp file"
        );
        assert!(!snapshot.exists(), "no snapshot was ever written");
        assert_eq!(replica.log().earliest_offset(), 0, "nothing was purged");
        let o = replica
            .append(batch(20), 1, T)
            .await
            .expect("append while full");
        assert_eq!(o.base_offset, 20);
        // Space back: the next snapshot (not tried within MAX_WAIT of the abandoned one) is
        // written and the log purged up to it.
        tokio::time::sleep(crate::log::nospace::MAX_WAIT).await;
        let purged = replica.compact(T).await.expect("compaction with space");
        assert!(purged >= 20, "purged through {purged}");
        assert!(snapshot.exists());
        let o = replica.append(batch(21), 1, T).await.expect("append after");
        assert_eq!(o.base_offset, 21);
        node.shutdown().await;
    }
}
