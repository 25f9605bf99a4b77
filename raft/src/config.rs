//! Raft timing and sizing settings, one set for partition groups and one for the metadata group.
//!
//! Why two sets: a node hosts one metadata group but up to thousands of partition groups. An idle
//! openraft group wakes on every tick (`heartbeat_interval * 13 / 64`) and its leader sends one
//! heartbeat per follower per `heartbeat_interval`, so partition groups use slow timers (heartbeat
//! 1 s, election 3–6 s) and the single metadata group may use faster ones.
//!
//! Invariant checked by [`GroupTimings::to_openraft`]: `heartbeat_interval +
//! heartbeat_min_interval + tick < election_timeout_min < election_timeout_max`, so a suppressed
//! heartbeat can never let a healthy follower time out.

use std::sync::Arc;

use serde::Deserialize;
use serde::Serialize;

use crate::error::RaftError;

/// Timers and buffer sizes of one kind of raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupTimings {
    /// Leader heartbeat period, ms.
    pub heartbeat_interval_ms: u64,
    /// A heartbeat is skipped when replication traffic reached the follower this recently, ms.
    pub heartbeat_min_interval_ms: u64,
    /// Lower bound of the randomized election timeout, ms.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout, ms.
    pub election_timeout_max_ms: u64,
    /// Bound of the channel from API callers to the raft core (per group).
    pub api_channel_size: u64,
    /// Bound of the raft core's internal notification channel (per group).
    pub notification_channel_size: u64,
    /// Most entries sent in one append-entries RPC.
    pub max_payload_entries: u64,
    /// Entries a follower may lag before it is sent a snapshot instead of entries.
    pub replication_lag_threshold: u64,
    /// Take a snapshot after this many applied entries (metadata group) — partition groups use
    /// it as well, since their snapshot is metadata only and cheap.
    pub snapshot_every_entries: u64,
    /// Entries already covered by a snapshot that are kept in the log (for slow followers).
    pub keep_entries_after_snapshot: u64,
}

impl GroupTimings {
    /// Defaults for partition groups: slow timers for many idle groups.
    ///
    /// Heartbeat 1 s, elections 3–6 s. Measured with 500 groups x 3 replicas on one 2-core
    /// machine (1,500 raft instances): at a 500 ms heartbeat (tick every ~100 ms, 2 heartbeats
    /// per follower per second) the nodes ran out of CPU, heartbeat RPCs (TTL = heartbeat
    /// interval) timed out and elections never settled; at 1 s every group elected once within
    /// ~6 s and stayed stable. A dead leader is replaced within ~3–6 s (Liftbridge waits 15 s
    /// by default, `replica.max.leader.timeout`).
    pub fn partition_defaults() -> Self {
        Self {
            heartbeat_interval_ms: 1000,
            heartbeat_min_interval_ms: 500,
            election_timeout_min_ms: 3000,
            election_timeout_max_ms: 6000,
            api_channel_size: 1024,
            notification_channel_size: 1024,
            max_payload_entries: 256,
            replication_lag_threshold: 100_000,
            snapshot_every_entries: 100_000,
            keep_entries_after_snapshot: 100_000,
        }
    }

    /// Defaults for the metadata group: faster failover, it is one group per cluster.
    pub fn metadata_defaults() -> Self {
        Self {
            heartbeat_interval_ms: 150,
            heartbeat_min_interval_ms: 50,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            api_channel_size: 4096,
            notification_channel_size: 4096,
            max_payload_entries: 512,
            replication_lag_threshold: 5_000,
            snapshot_every_entries: 1_000,
            keep_entries_after_snapshot: 1_000,
        }
    }

    /// Builds and validates the openraft config for a group.
    pub(crate) fn to_openraft(
        &self,
        cluster_name: &str,
    ) -> Result<Arc<openraft::Config>, RaftError> {
        let tick = self.heartbeat_interval_ms * 13 / 64;
        if self.heartbeat_interval_ms + self.heartbeat_min_interval_ms + tick
            >= self.election_timeout_min_ms
        {
            return Err(RaftError::Config(format!(
                "heartbeat {} ms + min interval {} ms + tick {tick} ms must stay below election timeout min {} ms",
                self.heartbeat_interval_ms, self.heartbeat_min_interval_ms, self.election_timeout_min_ms
            )));
        }
        let c = openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            heartbeat_min_interval: Some(self.heartbeat_min_interval_ms),
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            api_channel_size: Some(self.api_channel_size),
            notification_channel_size: Some(self.notification_channel_size),
            max_payload_entries: self.max_payload_entries,
            replication_lag_threshold: self.replication_lag_threshold,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.keep_entries_after_snapshot,
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        c.validate()
            .map(Arc::new)
            .map_err(|e| RaftError::Config(e.to_string()))
    }
}

/// Settings of the raft layer of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftConfig {
    /// This node's id; stable across restarts, unique in the cluster.
    pub node_id: u64,
    /// Address peers use to reach this node's raft transport, `host:port`.
    pub advertise_addr: String,
    /// Name shared by every node of the cluster (guards against cross-talk in logs).
    pub cluster_name: String,
    /// Most voters of the metadata group; further nodes join as learners.
    pub max_metadata_voters: usize,
    /// Timeout of one raft RPC to a peer, ms (the openraft per-RPC hard limit still applies).
    pub rpc_timeout_ms: u64,
    /// Timers of partition groups.
    pub partition: GroupTimings,
    /// Timers of the metadata group.
    pub metadata: GroupTimings,
}

impl RaftConfig {
    /// Settings with the default timings for a node.
    pub fn new(node_id: u64, advertise_addr: impl Into<String>) -> Self {
        Self {
            node_id,
            advertise_addr: advertise_addr.into(),
            cluster_name: "drawbridge".to_string(),
            max_metadata_voters: 5,
            rpc_timeout_ms: 2_000,
            partition: GroupTimings::partition_defaults(),
            metadata: GroupTimings::metadata_defaults(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert!(GroupTimings::partition_defaults().to_openraft("t").is_ok());
        assert!(GroupTimings::metadata_defaults().to_openraft("t").is_ok());
    }

    #[test]
    fn heartbeat_longer_than_election_is_rejected() {
        let mut t = GroupTimings::partition_defaults();
        t.heartbeat_interval_ms = 5_000;
        assert!(matches!(t.to_openraft("t"), Err(RaftError::Config(_))));
    }
}
