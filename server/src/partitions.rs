//! The partition replicas this node hosts: creating and removing their raft groups as the
//! metadata says, following their leadership, and running NATS ingest where this node leads.
//!
//! Invariants:
//! - This node hosts a raft group for exactly the partitions whose replica list names it
//!   (created when they appear in the metadata, removed with their data when their stream is
//!   deleted); [`reconcile`] converges to that after every metadata change and retries every
//!   second what could not be done yet (e.g. a peer's address is not known).
//! - Ingest runs for a partition only while this node leads its raft group; it is stopped (and
//!   its NATS subscription dropped) within one leadership check period of losing it.
//! - A leader records itself in the metadata (`SetPartitionLeader` with its raft term), so every
//!   node can answer FetchMetadata; stale records (older terms) are ignored by the state machine.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use drawbridge_raft::metadata::state::{MetadataState, StreamMeta};
use drawbridge_raft::{MetadataCommand, NodeId, PartitionId, PartitionReplica};
use drawbridge_storage::Log;
use parking_lot::RwLock;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cluster::{forward, Propagated};
use crate::context::Ctx;
use crate::error::Result;
use crate::ingest::{self, IngestParams};
use crate::names;
use crate::partition_log;

/// How often a hosted partition checks whether this node leads it.
const LEADERSHIP_CHECK: Duration = Duration::from_millis(100);

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
    stop: watch::Sender<bool>,
}

/// The hosted partitions, by id.
#[derive(Debug, Default)]
pub struct Partitions {
    inner: RwLock<HashMap<PartitionId, Arc<Local>>>,
}

impl Partitions {
    /// The hosted replica of a partition.
    pub fn get(&self, id: &PartitionId) -> Option<Arc<Local>> {
        self.inner.read().get(id).cloned()
    }

    fn ids(&self) -> Vec<PartitionId> {
        self.inner.read().keys().cloned().collect()
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

async fn reconcile(ctx: &Ctx, state: &MetadataState) {
    let want = desired(state, ctx.node_id);
    for id in ctx.partitions.ids() {
        if !want.contains_key(&id) {
            remove(ctx, &id).await;
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
    let replica = ctx.raft.create_partition_group(id.clone(), addrs).await?;
    let log = partition_log::open(&replica);
    let (stop, stop_rx) = watch::channel(false);
    let local = Arc::new(Local {
        replica,
        log,
        ingesting: AtomicBool::new(false),
        stop,
    });
    ctx.partitions
        .inner
        .write()
        .insert(id.clone(), local.clone());
    info!(partition = %id, "hosting partition replica");
    tokio::spawn(leadership_loop(ctx.clone(), id, local, stop_rx));
    Ok(())
}

async fn remove(ctx: &Ctx, id: &PartitionId) {
    let Some(local) = ctx.partitions.inner.write().remove(id) else {
        return;
    };
    local.stop.send_replace(true);
    info!(partition = %id, "partition deleted; removing its replica");
    // Raft owns the partition log: removing the group closes and deletes it.
    if let Err(e) = ctx.raft.remove_partition_group(id, true).await {
        warn!(partition = %id, error = %e, "removing partition group failed");
    }
}

fn ingest_params(ctx: &Ctx, id: &PartitionId) -> Option<IngestParams> {
    let state = ctx.raft.metadata().state().state;
    let s = state.streams.get(&id.stream)?;
    Some(IngestParams {
        stream: id.stream.clone(),
        base_subject: s.subject.clone(),
        subject: names::partition_subject(&s.subject, id.partition),
        group: s.group.clone(),
        occ: occ_of(s),
    })
}

async fn leadership_loop(
    ctx: Ctx,
    id: PartitionId,
    local: Arc<Local>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ingest: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)> = None;
    let mut recorded_term: Option<u64> = None;
    let mut next_record_try = tokio::time::Instant::now();
    loop {
        let leading = local.replica.is_leader() && !ctx.stopping();
        if let Some((_, h)) = &ingest {
            if h.is_finished() || !leading {
                if let Some((s, h)) = ingest.take() {
                    s.send_replace(true);
                    let _ = h.await;
                }
                local.ingesting.store(false, Ordering::Release);
            }
        }
        if leading && ingest.is_none() {
            if let Some(params) = ingest_params(&ctx, &id) {
                let (s, r) = watch::channel(false);
                let (c, rep, flag) = (ctx.clone(), local.replica.clone(), local.clone());
                let h = tokio::spawn(async move {
                    let ready = || flag.ingesting.store(true, Ordering::Release);
                    if let Err(e) = ingest::run(c, rep, params, r, ready).await {
                        debug!(error = %e, "ingest ended");
                    }
                    flag.ingesting.store(false, Ordering::Release);
                });
                ingest = Some((s, h));
            }
        }
        if leading && local.ingesting.load(Ordering::Acquire) {
            let term = local.replica.term();
            let state = ctx.raft.metadata().state().state;
            let recorded = state
                .streams
                .get(&id.stream)
                .and_then(|s| s.partitions.get(&id.partition))
                .is_some_and(|p| p.leader == Some(ctx.node_id) && p.leader_epoch >= term);
            if recorded {
                recorded_term = Some(term);
            } else if recorded_term != Some(term) && tokio::time::Instant::now() >= next_record_try
            {
                let op = Propagated::Command(MetadataCommand::SetPartitionLeader {
                    stream: id.stream.clone(),
                    partition: id.partition,
                    leader: ctx.node_id,
                    leader_epoch: term,
                });
                let c = ctx.clone();
                next_record_try = tokio::time::Instant::now() + Duration::from_secs(1);
                tokio::spawn(async move {
                    if let Err(e) = forward(&c, op).await {
                        debug!(error = %e, "recording partition leader failed; will retry");
                    }
                });
            }
        } else if !leading {
            recorded_term = None;
        }
        tokio::select! {
            _ = crate::context::until_true(&mut stop) => break,
            _ = tokio::time::sleep(LEADERSHIP_CHECK) => {}
        }
    }
    if let Some((s, h)) = ingest.take() {
        s.send_replace(true);
        let _ = h.await;
    }
    local.ingesting.store(false, Ordering::Release);
}

/// Waits (bounded) until every partition the metadata assigns to this node is hosted and, where
/// this node leads it, recording: start-up uses it so the API opens with partitions serving.
pub async fn wait_ready(ctx: &Ctx, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let state = ctx.raft.metadata().state().state;
        let ready = desired(&state, ctx.node_id).keys().all(|id| {
            ctx.partitions.get(id).is_some_and(|l| {
                let leads = l.replica.leader() == Some(ctx.node_id);
                !leads || l.ingesting.load(Ordering::Acquire)
            })
        });
        if ready {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
