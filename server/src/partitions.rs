//! The partition replicas this node hosts: creating and removing their raft groups as the
//! metadata says, following their leadership, and running NATS ingest where this node leads.
//!
//! Invariants:
//! - This node hosts a raft group for exactly the partitions whose replica list names it
//!   (created when they appear in the metadata, removed with their data when their stream is
//!   deleted); `reconcile` converges to that after every metadata change and retries every
//!   second what could not be done yet (e.g. a peer's address is not known).
//! - Ingest runs for a partition only while this node leads its raft group; it is stopped (and
//!   its NATS subscription dropped) as soon as the group's leadership watch reports the loss.
//!   Nothing polls: each hosted partition has one task parked on its leadership watch (which
//!   openraft changes only on vote, state, leader or membership changes), on its ingest task,
//!   and — only while it waits for something the metadata must show — on the metadata watch.
//! - A leader records itself in the metadata (`SetPartitionLeader` with its raft term), so every
//!   node can answer FetchMetadata; stale records (older terms) are ignored by the state machine.
//!   A failed record is retried after `RECORD_RETRY`.
//! - A group openraft stopped on a fatal error (a storage write failed, e.g. ENOSPC) is
//!   removed, keeping its data, and reopened from disk by the reconciler once the disk has
//!   space again, with a bounded backoff (`supervise`); nothing acknowledged is lost, as
//!   the reopened log holds what was durably written and raft re-replicates the rest.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_raft::metadata::state::{MetadataState, StreamMeta};
use drawbridge_raft::{IsrTracker, MetadataCommand, NodeId, PartitionId, PartitionReplica};
use drawbridge_storage::Log;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::cluster::{forward, Propagated};
use crate::context::Ctx;
use crate::error::Result;
use crate::ingest::{self, IngestParams};
use crate::names;
use crate::partition_log;
use crate::stats::PartitionStats;

/// How long a leader waits before recording itself in the metadata again after a failure.
const RECORD_RETRY: Duration = Duration::from_secs(1);

/// Least free space before a group stopped by a fatal error is reopened, whatever
/// `storage.min.free.bytes` says (reopening into a full disk only fails again).
const RESTART_MIN_FREE: u64 = 1 << 20;
/// First wait between two reopens of one group.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest wait between two reopens of one group.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A group that ran this long since its last reopen starts its backoff afresh.
const RESTART_RESET: Duration = Duration::from_secs(120);

/// Per-stream config key: optimistic concurrency control.
pub const KEY_OCC: &str = "optimistic.concurrency.control";

/// One hosted partition replica.
#[derive(Debug)]
pub struct Local {
    /// The raft group handle.
    pub replica: PartitionReplica,
    /// The partition's log (the raft log; readable up to its high watermark).
    pub log: Log,
    /// Whether ingest currently runs here (this node leads and has caught up).
    pub ingesting: AtomicBool,
    /// ISR history while this node leads ([`Local::in_sync`]); read by the ISR monitor and the
    /// metadata RPCs.
    isr: Mutex<IsrTracker>,
    /// Messages and bytes in (ingest) and out (subscriptions), reception times; read by the
    /// metrics and the metadata RPCs.
    pub stats: Arc<PartitionStats>,
    stop: watch::Sender<bool>,
}

impl Local {
    /// The in-sync replicas and the raft term they were computed in, when this node leads the
    /// partition (`None` otherwise). See `drawbridge_raft::partition::isr` for the rule.
    pub fn in_sync(&self, max_lag: Duration) -> Option<(u64, Vec<NodeId>)> {
        let p = self.replica.replication_progress()?;
        let isr = self
            .isr
            .lock()
            .observe(&p, std::time::Instant::now(), max_lag);
        Some((p.term, isr))
    }
}

/// The hosted partitions, by id.
#[derive(Debug, Default)]
pub struct Partitions {
    inner: RwLock<HashMap<PartitionId, Arc<Local>>>,
    /// Reopen bookkeeping of groups stopped by a fatal error: (restarts in a row, last one).
    restarts: Mutex<HashMap<PartitionId, (u32, Instant)>>,
    /// Set once the metadata group's fatal stop has been logged.
    metadata_stop_logged: AtomicBool,
}

impl Partitions {
    /// The hosted replica of a partition.
    pub fn get(&self, id: &PartitionId) -> Option<Arc<Local>> {
        self.inner.read().get(id).cloned()
    }

    fn ids(&self) -> Vec<PartitionId> {
        self.inner.read().keys().cloned().collect()
    }

    /// Every hosted replica.
    pub fn all(&self) -> Vec<(PartitionId, Arc<Local>)> {
        self.inner
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether ingest still runs for any partition.
    pub fn any_ingesting(&self) -> bool {
        self.inner
            .read()
            .values()
            .any(|l| l.ingesting.load(Ordering::Acquire))
    }

    /// Closes every readable log (after raft stopped, at shutdown).
    pub fn close_logs(&self) {
        for l in self.inner.read().values() {
            if let Err(e) = l.log.close() {
                warn!(error = %e, "closing a partition log failed");
            }
        }
    }

    /// Stops every partition task (shutdown).
    pub fn stop_all(&self) {
        for l in self.inner.read().values() {
            l.stop.send_replace(true);
        }
    }
}

fn occ_of(s: &StreamMeta) -> bool {
    s.config.get(KEY_OCC).is_some_and(|v| v == "true")
}

fn desired(state: &MetadataState, me: NodeId) -> BTreeMap<PartitionId, Vec<NodeId>> {
    let mut out = BTreeMap::new();
    for (name, s) in &state.streams {
        for (p, meta) in &s.partitions {
            if meta.replicas.contains(&me) {
                out.insert(PartitionId::new(name.clone(), *p), meta.replicas.clone());
            }
        }
    }
    out
}

/// Converges the hosted partitions to the metadata until shutdown.
pub fn spawn_reconciler(ctx: Ctx) {
    tokio::spawn(async move {
        let mut watch = ctx.raft.metadata().watch();
        let mut stop = ctx.shutdown.clone();
        loop {
            let state = watch.borrow_and_update().state.clone();
            reconcile(&ctx, &state).await;
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => break,
                r = watch.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        ctx.partitions.stop_all();
    });
}

/// Reopens the hosted partition groups that openraft stopped on a fatal error (e.g. a log
/// append that hit ENOSPC): once `data.dir` has at least `storage.min.free.bytes` (and never
/// less than [`RESTART_MIN_FREE`]) available, the group is removed keeping its data, and the
/// caller's reconcile pass opens it again from disk (recovery cuts a torn tail; raft then
/// re-replicates what this replica lacks). Restarts of one group are spaced by a backoff that
/// doubles from [`RESTART_BACKOFF_MIN`] up to [`RESTART_BACKOFF_MAX`] and resets after
/// [`RESTART_RESET`] without one. Also logs, once, that the metadata group stopped (it is not
/// reopened; `/readyz` reports it).
async fn supervise(ctx: &Ctx) {
    if let Some(why) = ctx.raft.metadata().stopped() {
        if !ctx
            .partitions
            .metadata_stop_logged
            .swap(true, Ordering::Relaxed)
        {
            error!(error = %why, "metadata raft group stopped on a fatal error (disk full?); \
                this node no longer takes part in the metadata group until it is restarted");
        }
    }
    let need = ctx.config.storage.min_free_bytes.max(RESTART_MIN_FREE);
    for (id, local) in ctx.partitions.all() {
        let Some(why) = local.replica.stopped() else {
            continue;
        };
        let now = Instant::now();
        let attempts = {
            let restarts = ctx.partitions.restarts.lock();
            match restarts.get(&id) {
                Some((n, at)) if now.duration_since(*at) < RESTART_RESET => {
                    let wait = RESTART_BACKOFF_MIN
                        .saturating_mul(1u32 << (*n).min(16))
                        .min(RESTART_BACKOFF_MAX);
                    if now.duration_since(*at) < wait {
                        continue;
                    }
                    *n
                }
                _ => 0,
            }
        };
        match ctx.stats.disk.free_bytes(&ctx.config.data_dir) {
            Some(free) if free < need => {
                debug!(partition = %id, free, need, "stopped partition group waits for disk space");
                continue;
            }
            _ => {}
        }
        ctx.partitions
            .restarts
            .lock()
            .insert(id.clone(), (attempts + 1, now));
        ctx.stats
            .partition_group_restarts
            .fetch_add(1, Ordering::Relaxed);
        warn!(partition = %id, error = %why, attempt = attempts + 1,
            "partition raft group stopped on a fatal error; reopening it from disk");
        remove(ctx, &id, false).await;
    }
}

async fn reconcile(ctx: &Ctx, state: &MetadataState) {
    supervise(ctx).await;
    let want = desired(state, ctx.node_id);
    for id in ctx.partitions.ids() {
        if !want.contains_key(&id) {
            remove(ctx, &id, true).await;
        }
    }
    for (id, replicas) in want {
        if ctx.partitions.get(&id).is_some() {
            continue;
        }
        if let Err(e) = add(ctx, state, id.clone(), &replicas).await {
            debug!(partition = %id, error = %e, "cannot host partition yet; will retry");
        }
    }
}

async fn add(ctx: &Ctx, state: &MetadataState, id: PartitionId, replicas: &[NodeId]) -> Result<()> {
    let mut addrs = BTreeMap::new();
    for r in replicas {
        let addr = if *r == ctx.node_id {
            Some(ctx.raft_addr.clone())
        } else {
            state
                .nodes
                .get(r)
                .cloned()
                .or_else(|| ctx.directory.get(*r).map(|i| i.raft_addr))
        };
        match addr {
            Some(a) => {
                addrs.insert(*r, a);
            }
            None => {
                return Err(crate::error::ServerError::Internal(format!(
                    "raft address of node {r} unknown"
                )))
            }
        }
    }
    for (r, a) in &addrs {
        if *r != ctx.node_id {
            if let Err(e) = ctx.raft.set_peer(*r, a) {
                warn!(error = %e, peer = r, "bad raft address");
            }
        }
    }
    let settings = crate::retention::log_settings(ctx, state.streams.get(&id.stream));
    let replica = ctx
        .raft
        .create_partition_group_with(id.clone(), addrs, settings)
        .await?;
    let log = partition_log::open(&replica);
    let (stop, stop_rx) = watch::channel(false);
    let local = Arc::new(Local {
        replica,
        log,
        ingesting: AtomicBool::new(false),
        isr: Mutex::new(IsrTracker::new()),
        stats: Arc::default(),
        stop,
    });
    ctx.partitions
        .inner
        .write()
        .insert(id.clone(), local.clone());
    info!(partition = %id, "hosting partition replica");
    crate::retention::spawn_cleaner(
        ctx.clone(),
        id.clone(),
        local.replica.clone(),
        stop_rx.clone(),
    );
    tokio::spawn(leadership_loop(ctx.clone(), id, local, stop_rx));
    Ok(())
}

/// Stops hosting a partition replica; with `delete_data` (the partition was deleted) its data
/// goes too, without (a stopped group being reopened) it stays for the next open.
async fn remove(ctx: &Ctx, id: &PartitionId, delete_data: bool) {
    let Some(local) = ctx.partitions.inner.write().remove(id) else {
        return;
    };
    local.stop.send_replace(true);
    if delete_data {
        info!(partition = %id, "partition deleted; removing its replica");
    }
    // Raft owns the partition log: removing the group closes (and maybe deletes) it.
    if let Err(e) = ctx.raft.remove_partition_group(id, delete_data).await {
        warn!(partition = %id, error = %e, "removing partition group failed");
    }
}

fn ingest_params(ctx: &Ctx, id: &PartitionId, local: &Local) -> Option<IngestParams> {
    let state = ctx.raft.metadata().state().state;
    let s = state.streams.get(&id.stream)?;
    let cipher = match s
        .partitions
        .get(&id.partition)
        .and_then(|m| ctx.keyring.partition_cipher(&id.stream, id.partition, m))
    {
        None => ingest::Cipher::Plain,
        Some(Ok(c)) => ingest::Cipher::Sealed(Arc::new(c)),
        Some(Err(e)) => {
            warn!(partition = %id, error = %e,
                "encrypted partition without a usable key: publishes will get ENCRYPTION acks");
            ingest::Cipher::Unavailable(e.to_string())
        }
    };
    Some(IngestParams {
        stream: id.stream.clone(),
        partition: id.partition,
        base_subject: s.subject.clone(),
        subject: names::partition_subject(&s.subject, id.partition),
        group: s.group.clone(),
        occ: occ_of(s),
        stats: local.stats.clone(),
        cipher,
    })
}

/// A running ingest task of a partition this node leads.
struct Ingest {
    stop: watch::Sender<bool>,
    /// Flips to `true` once ingest is subscribed and recording.
    ready: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The task's handle has been awaited to completion (it must not be polled again).
    done: bool,
}

impl Ingest {
    async fn stop(self, local: &Local) {
        self.stop.send_replace(true);
        if !self.done {
            let _ = self.task.await;
        }
        local.ingesting.store(false, Ordering::Release);
    }

    /// Resolves when ingest becomes ready (if it is not yet) or its task ends.
    async fn event(&mut self) {
        if *self.ready.borrow() {
            let _ = (&mut self.task).await;
            self.done = true;
            return;
        }
        tokio::select! {
            r = self.ready.changed() => if r.is_err() {
                let _ = (&mut self.task).await;
                self.done = true;
            },
            _ = &mut self.task => self.done = true,
        }
    }
}

fn start_ingest(ctx: &Ctx, id: &PartitionId, local: &Arc<Local>) -> Option<Ingest> {
    let params = ingest_params(ctx, id, local)?;
    let (stop, stop_rx) = watch::channel(false);
    let (ready_tx, ready) = watch::channel(false);
    let (c, rep, flag) = (ctx.clone(), local.replica.clone(), local.clone());
    let task = tokio::spawn(async move {
        let on_ready = || {
            flag.ingesting.store(true, Ordering::Release);
            ready_tx.send_replace(true);
        };
        if let Err(e) = ingest::run(c, rep, params, stop_rx, on_ready).await {
            debug!(error = %e, "ingest ended");
        }
        flag.ingesting.store(false, Ordering::Release);
    });
    Some(Ingest {
        stop,
        ready,
        task,
        done: false,
    })
}

/// Sleeps until `at`, forever when `None`.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether the metadata records this node as the partition's leader in `term` (or later).
fn leader_recorded(ctx: &Ctx, id: &PartitionId, term: u64) -> bool {
    let state = ctx.raft.metadata().state().state;
    state
        .streams
        .get(&id.stream)
        .and_then(|s| s.partitions.get(&id.partition))
        .is_some_and(|p| p.leader == Some(ctx.node_id) && p.leader_epoch >= term)
}

/// Follows one partition's leadership until `stop` (see the module docs): starts ingest when
/// this node becomes leader, records the leadership once ingest is ready, stops ingest when
/// leadership is lost. Event-driven; the only timer is the retry of a failed record.
async fn leadership_loop(
    ctx: Ctx,
    id: PartitionId,
    local: Arc<Local>,
    mut stop: watch::Receiver<bool>,
) {
    let mut leadership = local.replica.watch_leadership();
    let mut meta = ctx.raft.metadata().watch();
    let mut ingest: Option<Ingest> = None;
    let mut next_record_try = tokio::time::Instant::now();
    // The last (leader, term) seen, to count elections (metrics).
    let mut seen_leader: Option<(NodeId, u64)> = None;
    loop {
        let l = leadership.current();
        if let Some(leader) = l.leader {
            if seen_leader != Some((leader, l.term)) {
                seen_leader = Some((leader, l.term));
                ctx.stats
                    .leader_elections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        drop(meta.borrow_and_update());
        // A group stopped on a fatal error takes no proposals: no ingest until it is reopened.
        let leading = l.is_local && !ctx.stopping() && local.replica.stopped().is_none();
        let finished = ingest
            .as_ref()
            .is_some_and(|i| i.done || i.task.is_finished());
        if finished || !leading {
            if let Some(i) = ingest.take() {
                i.stop(&local).await;
            }
        }
        if leading && ingest.is_none() {
            ingest = start_ingest(&ctx, &id, &local);
        }
        // Wait on the metadata only for what it must still show: the stream (to start ingest)
        // or our leadership record.
        let mut wait_meta = leading && ingest.is_none();
        let mut retry_at = None;
        if leading && local.ingesting.load(Ordering::Acquire) && !leader_recorded(&ctx, &id, l.term)
        {
            wait_meta = true;
            if tokio::time::Instant::now() >= next_record_try {
                let op = Propagated::Command(MetadataCommand::SetPartitionLeader {
                    stream: id.stream.clone(),
                    partition: id.partition,
                    leader: ctx.node_id,
                    leader_epoch: l.term,
                });
                let c = ctx.clone();
                next_record_try = tokio::time::Instant::now() + RECORD_RETRY;
                tokio::spawn(async move {
                    if let Err(e) = forward(&c, op).await {
                        debug!(error = %e, "recording partition leader failed; will retry");
                    }
                });
            }
            retry_at = Some(next_record_try);
        }
        let ingest_event = async {
            match ingest.as_mut() {
                Some(i) => i.event().await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = crate::context::until_true(&mut stop) => break,
            r = leadership.changed() => if r.is_err() { break },
            r = meta.changed(), if wait_meta => if r.is_err() { break },
            _ = ingest_event => {}
            _ = sleep_until_opt(retry_at) => {}
        }
    }
    if let Some(i) = ingest.take() {
        i.stop(&local).await;
    }
}

/// Waits (bounded) until every partition the metadata assigns to this node is hosted and, where
/// this node leads it, recording: start-up uses it so the API opens with partitions serving.
pub async fn wait_ready(ctx: &Ctx, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if all_ready(ctx) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether every partition the metadata assigns to this node is hosted and, where this node
/// leads it, recording (what [`wait_ready`] waits for; `/readyz` reports it). A partition whose
/// only replica is this node must have elected it first; a replicated partition without a
/// known leader does not hold readiness up (its peers may be down).
pub fn all_ready(ctx: &Ctx) -> bool {
    let state = ctx.raft.metadata().state().state;
    desired(&state, ctx.node_id).iter().all(|(id, replicas)| {
        ctx.partitions
            .get(id)
            .is_some_and(|l| match l.replica.leader() {
                Some(leader) if leader == ctx.node_id => l.ingesting.load(Ordering::Acquire),
                Some(_) => true,
                None => replicas.len() > 1,
            })
    })
}
