//! [`MetadataHandle`]: the server's handle on the metadata group.
//!
//! Reads are served from this node's applied state ([`MetadataHandle::state`]), which may lag
//! the leader; writes go to the leader ([`RaftError::NotLeader`] names it, the server forwards).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;

use super::command::MetadataCommand;
use super::command::MetadataResponse;
use super::state_machine::MetaStateMachine;
use super::state_machine::MetadataView;
use crate::convert;
use crate::error::RaftError;
use crate::types::GroupId;
use crate::types::MetaRaft;
use crate::types::Node;
use crate::types::NodeId;
use crate::wait;

/// A voter whose last acknowledgement is older than this is not chosen for a hand-off.
const RECENT_ACK: Duration = Duration::from_secs(2);

/// Handle on the metadata group. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MetadataHandle {
    pub(crate) raft: MetaRaft,
    pub(crate) sm: MetaStateMachine,
    pub(crate) node_id: NodeId,
    pub(crate) max_voters: usize,
}

impl MetadataHandle {
    /// Proposes a command; returns its outcome once committed and applied.
    ///
    /// Fails with [`RaftError::NotLeader`] on a follower (forward to the named leader).
    pub async fn propose(
        &self,
        cmd: MetadataCommand,
        timeout: Duration,
    ) -> Result<MetadataResponse, RaftError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = match tokio::time::timeout(left, self.raft.client_write(cmd.clone())).await {
                Err(_) => {
                    return Err(RaftError::Timeout {
                        what: "metadata commit".into(),
                        ms: timeout.as_millis() as u64,
                    })
                }
                Ok(Ok(resp)) => return Ok(resp.data),
                Ok(Err(e)) => convert::client_write_error(&GroupId::Metadata, e),
            };
            // "No leader known" is transient (an election is running): wait for one and retry.
            if let RaftError::NotLeader {
                leader_id: None, ..
            } = &r
            {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if self.wait_for_leader(left).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            return Err(r);
        }
    }

    /// The locally applied state.
    pub fn state(&self) -> MetadataView {
        self.sm.view()
    }

    /// Watches the locally applied state.
    pub fn watch(&self) -> watch::Receiver<MetadataView> {
        self.sm.watch()
    }

    /// Whether this node leads the metadata group.
    pub fn is_leader(&self) -> bool {
        let m = wait::metrics(&self.raft);
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// Why the metadata group stopped, when openraft stopped it on a fatal error (e.g. a
    /// storage write failed with ENOSPC); `None` while it runs.
    pub fn stopped(&self) -> Option<String> {
        wait::metrics(&self.raft)
            .running_state
            .as_ref()
            .err()
            .map(ToString::to_string)
    }

    /// The leader this node knows of, and its raft address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = wait::metrics(&self.raft);
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Some((id, addr))
    }

    /// Hands the metadata leadership to the most caught-up other voter (graceful shutdown) and
    /// waits up to `timeout` until another node leads. Returns the node chosen, or `None` when
    /// this node does not lead or no other voter has acknowledged anything.
    ///
    /// Call it after the partition hand-offs (their leadership records are metadata writes)
    /// and once this node proposes nothing more; a node that is not the target may still win
    /// the election openraft then holds, which is as good.
    pub async fn transfer_leadership(
        &self,
        timeout: Duration,
    ) -> Result<Option<NodeId>, RaftError> {
        let Some(target) = self.handoff_candidates().into_iter().next() else {
            return Ok(None);
        };
        self.transfer_to(target, timeout).await?;
        Ok(Some(target))
    }

    /// The voters the leadership could be handed to, most caught up first: other voters that
    /// acknowledged within the last two seconds (a dead one would just cost the wait). Empty
    /// when this node does not lead.
    pub(crate) fn handoff_candidates(&self) -> Vec<NodeId> {
        if !self.is_leader() {
            return Vec::new();
        }
        let m = wait::metrics(&self.raft);
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let me = self.node_id;
        let recent = |id: &NodeId| {
            m.heartbeat
                .as_ref()
                .and_then(|h| h.get(id))
                .and_then(|t| t.as_ref())
                .is_some_and(|t| openraft::Instant::elapsed(&**t) < RECENT_ACK)
        };
        let mut candidates: Vec<(NodeId, u64)> = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != me && voters.contains(id) && recent(id))
                    .filter_map(|(id, matched)| matched.as_ref().map(|l| (*id, l.index)))
                    .collect()
            })
            .unwrap_or_default();
        candidates.sort_by_key(|(_, index)| std::cmp::Reverse(*index));
        candidates.into_iter().map(|(id, _)| id).collect()
    }

    /// Asks openraft to hand the leadership to `target` and waits up to `timeout` until
    /// another node leads (openraft stops this node's heartbeats from the call on).
    pub(crate) async fn transfer_to(
        &self,
        target: NodeId,
        timeout: Duration,
    ) -> Result<(), RaftError> {
        let me = self.node_id;
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| convert::fatal(&GroupId::Metadata, e))?;
        wait::until(
            &self.raft,
            &GroupId::Metadata,
            "metadata leader transfer",
            timeout,
            |m| m.current_leader.is_some_and(|l| l != me),
        )
        .await?;
        Ok(())
    }

    /// Waits until some node leads the metadata group.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, RaftError> {
        let m = wait::until(
            &self.raft,
            &GroupId::Metadata,
            "a metadata leader",
            timeout,
            |m| m.current_leader.is_some(),
        )
        .await?;
        m.current_leader.ok_or(RaftError::Stopped {
            group: GroupId::Metadata,
            reason: "no leader".into(),
        })
    }

    /// Waits until this node knows a leader and has applied everything the cluster had
    /// committed when it heard so (the leader's commit point), so [`MetadataHandle::state`] is
    /// no longer the partial state of a node that is still replaying its log after a restart.
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<(), RaftError> {
        wait::until(
            &self.raft,
            &GroupId::Metadata,
            "the metadata state to catch up",
            timeout,
            |m| {
                m.current_leader.is_some()
                    && m.cluster_committed
                        .is_some_and(|c| m.last_applied.is_some_and(|a| a.index >= c.index))
            },
        )
        .await
        .map(|_| ())
    }

    /// Current voters and learners of the metadata group.
    pub fn members(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        let m = wait::metrics(&self.raft);
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let learners = m.membership_config.membership().learner_ids().collect();
        (voters, learners)
    }

    /// Bootstraps a brand-new cluster: the first `max_metadata_voters` of `members` become the
    /// voters. Call on one node (or on all with identical input). A node that is already
    /// initialized returns `Ok(false)`.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, String>) -> Result<bool, RaftError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| convert::fatal(&GroupId::Metadata, e))?;
        if initialized {
            return Ok(false);
        }
        let voters: BTreeMap<NodeId, Node> = members
            .into_iter()
            .take(self.max_voters.max(1))
            .map(|(id, addr)| (id, Node { addr }))
            .collect();
        match self.raft.initialize(voters).await {
            Ok(()) => Ok(true),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => Ok(false),
            Err(e) => Err(RaftError::Membership(e.to_string())),
        }
    }

    /// Adds a node to the metadata group (leader only): as a voter while there are fewer than
    /// `max_metadata_voters`, otherwise as a learner. Waits until it caught up as a learner first.
    pub async fn add_node(&self, id: NodeId, addr: String) -> Result<(), RaftError> {
        let g = GroupId::Metadata;
        self.raft
            .add_learner(id, Node { addr }, true)
            .await
            .map_err(|e| convert::client_write_error(&g, e))?;
        let (voters, _) = self.members();
        if voters.len() < self.max_voters && !voters.contains(&id) {
            let mut next = voters;
            next.insert(id);
            self.raft
                .change_membership(next, true)
                .await
                .map_err(|e| convert::client_write_error(&g, e))?;
        }
        Ok(())
    }
}
