//! A running partition group: its raft instance, state machine and the plumbing for LEADER acks.
//!
//! LEADER acks ("appended locally and durable on the leader"): a proposal carries a node-unique
//! `tag`. The log store's append hook sees every entry as it is appended; for a tag registered
//! by a local proposer it reports the raft index the entry got. The store's flush hook publishes
//! the last durable raft index. A proposer therefore waits for "index known" and then for
//! "durable index >= index" — no polling.
//!
//! A proposal may also carry an [`OnDurable`] callback: the append hook queues it under the
//! entry's index, and the flush hook runs every queued callback up to the flushed index before
//! it publishes that index, on whichever thread reported the flush (openraft's core right after
//! the write under a lazy sync policy, the flusher thread after the fsync otherwise). The
//! ingest sends its LEADER acks this way, so they leave as soon as the batch is durable, without
//! waiting for a task of its own to be scheduled.
//!
//! Invariants:
//! - A tag is registered before the proposal is submitted, so its append cannot be missed.
//! - Tags embed the node id (high 24 bits), so an entry replicated from another leader never
//!   matches a local proposer's tag.
//! - Callbacks run at most once, in index order, and only after a flush that covers their
//!   index; a truncation drops the callbacks of the entries it cuts (they never run), and so
//!   does dropping the group. A callback runs before [`AckPlumbing::durable`] reports its index.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::EntryPayload;
use openraft::Instant as _;
use openraft::ServerState;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::sync::watch;

use super::state_machine::PartitionStateMachine;
use crate::log::store::AppendHook;
use crate::log::store::FlushHook;
use crate::log::store::StoreHooks;
use crate::log::store::TruncateHook;
use crate::scheduler::GroupClock;
use crate::scheduler::GroupWaker;
use crate::types::GroupId;
use crate::types::NodeId;
use crate::types::PartitionId;
use crate::types::PartitionRaft;
use crate::types::PartitionTypes;

/// Runs once the proposal's entry is durable in the local log (see the module docs). It runs
/// inside the log store's IO path: it must not block and should be short.
pub type OnDurable = Box<dyn FnOnce() + Send>;

/// A local proposal between registration and append.
struct Tagged {
    /// Where to report the raft index the entry got.
    index_tx: oneshot::Sender<u64>,
    on_durable: Option<OnDurable>,
}

/// Shared LEADER-ack state of one group.
pub(crate) struct AckPlumbing {
    /// tag -> the local proposal waiting for its entry's append.
    pending: Mutex<HashMap<u64, Tagged>>,
    /// Callbacks of appended entries waiting for a flush, by raft index (ascending).
    waiting: Mutex<VecDeque<(u64, OnDurable)>>,
    /// Last raft index durable in the local log.
    durable_tx: watch::Sender<u64>,
    next_tag: AtomicU64,
    node_bits: u64,
}

impl AckPlumbing {
    pub(crate) fn new(node_id: NodeId) -> Arc<Self> {
        let (durable_tx, _) = watch::channel(0);
        Arc::new(Self {
            pending: Mutex::new(HashMap::new()),
            waiting: Mutex::new(VecDeque::new()),
            durable_tx,
            next_tag: AtomicU64::new(1),
            node_bits: (node_id & 0xff_ffff) << 40,
        })
    }

    /// The hooks to install on the group's log store.
    pub(crate) fn hooks(self: &Arc<Self>) -> StoreHooks<PartitionTypes> {
        let on_append: AppendHook<PartitionTypes> = {
            let me = self.clone();
            Arc::new(move |e| {
                if let EntryPayload::Normal(req) = &e.payload {
                    if req.tag != 0 {
                        let tagged = me.pending.lock().remove(&req.tag);
                        if let Some(t) = tagged {
                            let index = e.log_id.index;
                            if let Some(cb) = t.on_durable {
                                me.waiting.lock().push_back((index, cb));
                            }
                            let _ = t.index_tx.send(index);
                        }
                    }
                }
            })
        };
        let on_flushed: FlushHook<PartitionTypes> = {
            let me = self.clone();
            Arc::new(move |log_id| {
                for cb in me.take_durable(log_id.index) {
                    cb();
                }
                me.durable_tx.send_if_modified(|d| {
                    if log_id.index > *d {
                        *d = log_id.index;
                        true
                    } else {
                        false
                    }
                });
            })
        };
        let on_truncated: TruncateHook = {
            let me = self.clone();
            Arc::new(move |kept| {
                let cut: Vec<OnDurable> = {
                    let mut w = me.waiting.lock();
                    let keep = w.partition_point(|(i, _)| kept.is_some_and(|k| *i <= k));
                    w.drain(keep..).map(|(_, cb)| cb).collect()
                };
                // Dropped outside the lock: a callback's captures may take locks of their own.
                drop(cut);
            })
        };
        StoreHooks {
            on_append: Some(on_append),
            on_flushed: Some(on_flushed),
            on_truncated: Some(on_truncated),
        }
    }

    /// The queued callbacks of entries up to `index`, in index order.
    fn take_durable(&self, index: u64) -> Vec<OnDurable> {
        let mut w = self.waiting.lock();
        let n = w.partition_point(|(i, _)| *i <= index);
        w.drain(..n).map(|(_, cb)| cb).collect()
    }

    /// Registers a new tag; the receiver yields the raft index of the tagged entry, and
    /// `on_durable` runs once that entry is durable locally (module docs).
    pub(crate) fn register(&self, on_durable: Option<OnDurable>) -> (u64, oneshot::Receiver<u64>) {
        let tag = self.node_bits | (self.next_tag.fetch_add(1, Ordering::Relaxed) & 0xff_ffff_ffff);
        let (index_tx, rx) = oneshot::channel();
        self.pending.lock().insert(
            tag,
            Tagged {
                index_tx,
                on_durable,
            },
        );
        (tag, rx)
    }

    /// Drops a tag whose proposal failed before being appended (its callback never runs).
    pub(crate) fn forget(&self, tag: u64) {
        let gone = self.pending.lock().remove(&tag);
        drop(gone);
    }

    /// Watches the last durable raft index.
    pub(crate) fn durable(&self) -> watch::Receiver<u64> {
        self.durable_tx.subscribe()
    }
}

/// One running partition group.
pub(crate) struct PartitionGroup {
    pub(crate) id: PartitionId,
    pub(crate) node_id: NodeId,
    pub(crate) raft: PartitionRaft,
    pub(crate) sm: PartitionStateMachine,
    pub(crate) acks: Arc<AckPlumbing>,
    /// Last contact from the group's leader: stamped by the transport, read by the node's
    /// [`Scheduler`](crate::scheduler::Scheduler) to decide when to elect.
    pub(crate) clock: Arc<GroupClock>,
    /// Wakes the group from quiescence before a proposal (see [`PartitionGroup::ensure_awake`]).
    pub(crate) waker: GroupWaker,
}

impl std::fmt::Debug for PartitionGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionGroup")
            .field("id", &self.id)
            .finish()
    }
}

impl PartitionGroup {
    /// The raft handle (for the transport).
    pub(crate) fn raft(&self) -> &PartitionRaft {
        &self.raft
    }

    /// Before a proposal: if this node holds the group quiesced, wakes it and waits (at most
    /// one leader lease) until a quorum acknowledged a heartbeat again. openraft refuses writes
    /// on a leader whose lease ran out, and a quiesced group's lease does (no heartbeats). A
    /// timeout is not an error here: the proposal then fails or retries as any proposal to a
    /// leader without a quorum does.
    pub(crate) async fn ensure_awake(&self) {
        if !self.clock.is_quiesced() {
            return;
        }
        self.waker.wake();
        let lease = Duration::from_millis(self.raft.config().election_timeout_max);
        let gid = GroupId::Partition(self.id.clone());
        let _ = crate::wait::until(
            &self.raft,
            &gid,
            "leader lease after a wake-up",
            lease,
            |m| {
                m.state != ServerState::Leader
                    || m.last_quorum_acked
                        .as_ref()
                        .is_some_and(|t| t.elapsed() < lease)
            },
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    //! The LEADER-ack plumbing driven through its store hooks, as the log store calls them.

    use std::sync::Mutex as StdMutex;

    use bytes::Bytes;
    use openraft::alias::LogIdOf;
    use openraft::entry::RaftEntry;
    use openraft::vote::leader_id_std::CommittedLeaderId;
    use openraft::RaftTypeConfig;

    use super::*;
    use crate::partition::types::PartitionRequest;

    type PEntry = <PartitionTypes as RaftTypeConfig>::Entry;

    fn log_id(index: u64) -> LogIdOf<PartitionTypes> {
        LogIdOf::<PartitionTypes>::new(CommittedLeaderId::new(1), index)
    }

    fn entry(index: u64, tag: u64) -> PEntry {
        PEntry::new_normal(
            log_id(index),
            PartitionRequest {
                records: Bytes::new(),
                record_count: 0,
                tag,
                base_offset: None,
            },
        )
    }

    /// A callback that records `name` in `ran` when it runs.
    fn note(ran: &Arc<StdMutex<Vec<&'static str>>>, name: &'static str) -> Option<OnDurable> {
        let ran = ran.clone();
        Some(Box::new(move || ran.lock().expect("lock").push(name)))
    }

    #[test]
    fn callbacks_run_in_index_order_once_flushed_and_never_when_cut() {
        let plumbing = AckPlumbing::new(1);
        let hooks = plumbing.hooks();
        let (append, flushed, truncated) = (
            hooks.on_append.expect("append hook"),
            hooks.on_flushed.expect("flush hook"),
            hooks.on_truncated.expect("truncate hook"),
        );
        let ran = Arc::new(StdMutex::new(Vec::new()));
        let (a, mut a_index) = plumbing.register(note(&ran, "a"));
        let (b, _) = plumbing.register(note(&ran, "b"));
        let (c, _) = plumbing.register(note(&ran, "c"));
        let (d, _) = plumbing.register(note(&ran, "d"));
        let durable = plumbing.durable();

        // Appended (index known), not yet flushed: nothing runs.
        append(&entry(5, a));
        append(&entry(6, b));
        append(&entry(7, c));
        assert_eq!(a_index.try_recv().ok(), Some(5));
        assert!(ran.lock().expect("lock").is_empty());

        // A flush through 5 runs a's callback, before the durable index says 5.
        flushed(&log_id(5));
        assert_eq!(*ran.lock().expect("lock"), ["a"]);
        assert_eq!(*durable.borrow(), 5);

        // A truncation keeping 6 cuts c: it never runs, even once a later flush passes 7.
        truncated(Some(6));
        append(&entry(7, d));
        flushed(&log_id(7));
        assert_eq!(*ran.lock().expect("lock"), ["a", "b", "d"]);
        flushed(&log_id(9));
        assert_eq!(
            *ran.lock().expect("lock"),
            ["a", "b", "d"],
            "each runs once"
        );

        // A proposal that is forgotten (failed before append) never runs either; neither does
        // one whose entry is cut by a truncation that keeps nothing.
        let (e, _) = plumbing.register(note(&ran, "e"));
        plumbing.forget(e);
        let (f, _) = plumbing.register(note(&ran, "f"));
        append(&entry(10, f));
        truncated(None);
        flushed(&log_id(12));
        assert_eq!(*ran.lock().expect("lock"), ["a", "b", "d"]);
        assert!(plumbing.waiting.lock().is_empty());
        assert!(plumbing.pending.lock().is_empty());
    }
}
