//! A running partition group: its raft instance, state machine and the plumbing for LEADER acks.
//!
//! LEADER acks ("appended locally and durable on the leader"): a proposal carries a node-unique
//! `tag`. The log store's append hook sees every entry as it is appended; for a tag registered
//! by a local proposer it reports the raft index the entry got. The store's flush hook publishes
//! the last durable raft index. A proposer therefore waits for "index known" and then for
//! "durable index >= index" — no polling.
//!
//! Invariants:
//! - A tag is registered before the proposal is submitted, so its append cannot be missed.
//! - Tags embed the node id (high 24 bits), so an entry replicated from another leader never
//!   matches a local proposer's tag.

use std::collections::HashMap;
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
use crate::scheduler::GroupClock;
use crate::scheduler::GroupWaker;
use crate::types::GroupId;
use crate::types::NodeId;
use crate::types::PartitionId;
use crate::types::PartitionRaft;
use crate::types::PartitionTypes;

/// Shared LEADER-ack state of one group.
pub(crate) struct AckPlumbing {
    /// tag -> where to report the raft index the tagged entry got.
    pending: Mutex<HashMap<u64, oneshot::Sender<u64>>>,
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
                        if let Some(tx) = me.pending.lock().remove(&req.tag) {
                            let _ = tx.send(e.log_id.index);
                        }
                    }
                }
            })
        };
        let on_flushed: FlushHook<PartitionTypes> = {
            let me = self.clone();
            Arc::new(move |log_id| {
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
        StoreHooks {
            on_append: Some(on_append),
            on_flushed: Some(on_flushed),
        }
    }

    /// Registers a new tag; the receiver yields the raft index of the tagged entry.
    pub(crate) fn register(&self) -> (u64, oneshot::Receiver<u64>) {
        let tag = self.node_bits | (self.next_tag.fetch_add(1, Ordering::Relaxed) & 0xff_ffff_ffff);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(tag, tx);
        (tag, rx)
    }

    /// Drops a tag whose proposal failed before being appended.
    pub(crate) fn forget(&self, tag: u64) {
        self.pending.lock().remove(&tag);
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
