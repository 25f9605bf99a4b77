//! Raft timing and sizing settings, one set for partition groups and one for the metadata group.
//!
//! Why two sets: a node hosts one metadata group but up to thousands of partition groups. An idle
//! openraft group with its own tick wakes every `heartbeat_interval * 13 / 64`, so partition
//! groups run without it: the node's one scheduler task (`crate::scheduler`) sends their
//! heartbeats and starts their elections. Partition groups use heartbeat 500 ms and elections
//! 1.5–3 s; the single metadata group keeps openraft's tick and may use faster timers.
//!
//! Invariant checked when the openraft config is built: `heartbeat_interval +
//! heartbeat_min_interval + timer step < election_timeout_min < election_timeout_max` (the step
//! is openraft's tick for the metadata group, the scheduler's resolution for partition groups),
//! so a suppressed heartbeat can never let a healthy follower time out.

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
    /// Take a snapshot after this many applied entries; 0 = never on its own (partition groups:
    /// their log is the partition's message log, so only retention, through
    /// [`crate::PartitionReplica::enforce_retention`], may snapshot and purge it).
    pub snapshot_every_entries: u64,
    /// Entries already covered by a snapshot that openraft keeps when it purges after a
    /// snapshot (for slow followers); `u64::MAX` = it never purges on its own.
    pub keep_entries_after_snapshot: u64,
}

impl GroupTimings {
    /// Defaults for partition groups, tuned for many idle groups (issue 3): heartbeat 500 ms,
    /// elections 1.5–3 s.
    ///
    /// Partition groups have no openraft tick; the node's scheduler drives them, so an idle
    /// follower costs no timer wakeup at all and an idle leader two heartbeat triggers a
    /// second. A follower starts a (pre-)vote `election_timeout_max` (openraft's leader lease,
    /// during which voters refuse votes) plus up to `max - min` after the last heartbeat, so a
    /// dead leader is replaced within about 3–4.5 s plus one vote round (Liftbridge waits 15 s
    /// by default, `replica.max.leader.timeout`).
    pub fn partition_defaults() -> Self {
        Self {
            heartbeat_interval_ms: 500,
            heartbeat_min_interval_ms: 250,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            api_channel_size: 1024,
            notification_channel_size: 1024,
            max_payload_entries: 256,
            replication_lag_threshold: 100_000,
            // Never snapshot or purge on openraft's own schedule: that would delete messages
            // regardless of the stream's retention (issue 8).
            snapshot_every_entries: 0,
            keep_entries_after_snapshot: u64::MAX,
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

    /// Builds and validates the openraft config for a group that runs openraft's own tick
    /// (the metadata group).
    pub(crate) fn to_openraft(
        &self,
        cluster_name: &str,
    ) -> Result<Arc<openraft::Config>, RaftError> {
        self.build(cluster_name, true)
    }

    /// Builds and validates the openraft config for a group driven by the node's scheduler
    /// (partition groups): openraft's tick is off, so the group's tick task parks and never
    /// wakes; heartbeats and elections come from `crate::scheduler`.
    pub(crate) fn to_openraft_scheduled(
        &self,
        cluster_name: &str,
    ) -> Result<Arc<openraft::Config>, RaftError> {
        self.build(cluster_name, false)
    }

    fn build(&self, cluster_name: &str, tick: bool) -> Result<Arc<openraft::Config>, RaftError> {
        let step = if tick {
            self.heartbeat_interval_ms * 13 / 64
        } else {
            crate::scheduler::Timing::of(self).resolution.as_millis() as u64
        };
        if self.heartbeat_interval_ms + self.heartbeat_min_interval_ms + step
            >= self.election_timeout_min_ms
        {
            return Err(RaftError::Config(format!(
                "heartbeat {} ms + min interval {} ms + timer step {step} ms must stay below election timeout min {} ms",
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
            snapshot_policy: match self.snapshot_every_entries {
                0 => openraft::SnapshotPolicy::Never,
                n => openraft::SnapshotPolicy::LogsSinceLast(n),
            },
            max_in_snapshot_log_to_keep: self.keep_entries_after_snapshot,
            enable_pre_vote: Some(true),
            enable_tick: tick,
            // Recovery cuts a torn or corrupt tail (storage and file-log recovery, and the
            // CRC check of the partition entries re-applied at open, `node.rs`), so a
            // restarted follower may hold fewer entries than its leader last saw it
            // acknowledge, under an unchanged vote. Without this the leader keeps its old
            // matching index for that follower: every probe from there conflicts at
            // `searching_end` ("no need to update"; openraft only debug-asserts, and its debug
            // assertions are off in our builds), so the follower never catches up and nothing
            // is logged. With it the leader restarts that follower's replication from its real
            // log end (a WARN on the leader); the quorum-accepted commit index never moves back.
            allow_log_reversion: Some(true),
            // A restarted leader must win a new election, never resume its old term (openraft's
            // default). A leader sends entries to followers before its own fsync completes, so
            // a power loss can drop entries from the leader that a follower already holds in
            // the same term; resuming that term, the leader would write *different* entries at
            // those (term, index) positions, the follower would keep its own as "matching",
            // and a committed entry could be lost (found by the power-loss test,
            // `raft/tests/raft/power_loss.rs`). A new term makes every such entry a conflict
            // that replication truncates. Cost: one election after a leader restarts.
            enable_leader_restore: Some(false),
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
    /// When partition logs are fsynced relative to acknowledgements (the metadata group and
    /// the raft state journal always sync before acknowledging).
    pub partition_log_sync: LogSyncPolicy,
    /// Under a lazy `partition_log_sync`, how long a partition group that restarted without a
    /// clean shutdown at most holds its votes and elections while no leader catches it up
    /// (`crate::partition::unclean`), ms. `None`: until caught up, however long. Only matters
    /// when every voter of a group restarted unclean (or the clean ones stay away): the hold
    /// then ends, and entries committed only in page caches may be lost.
    #[serde(default = "default_unclean_hold")]
    pub unclean_restart_hold_ms: Option<u64>,
    /// Run partition groups on openraft's own per-group tick instead of the node's scheduler
    /// (`crate::scheduler`). Off by default; kept so benchmarks can measure both in one run.
    #[doc(hidden)]
    #[serde(default)]
    pub partition_openraft_tick: bool,
    /// Send the heartbeats of all groups to one peer in one RPC (the transport's `coalesce`
    /// module).
    /// On by default; kept so benchmarks can measure both in one run.
    #[doc(hidden)]
    #[serde(default = "yes")]
    pub coalesce_heartbeats: bool,
    /// Carry each replication stream (leader to one follower of one group) on one streaming
    /// RPC with up to this many append-entries in flight (the transport's `append_stream`
    /// module); 0 (the default) sends one append-entries RPC at a time. Off by default until
    /// the 500-idle-group stability test, which failed in about one run of four with a window
    /// of 4 (one idle group re-elected), is understood; the server's hidden
    /// `DRAWBRIDGE_RAFT_STREAM=N` turns it on for benchmarks.
    #[doc(hidden)]
    #[serde(default = "default_append_stream_window")]
    pub append_stream_window: usize,
    /// Quiesce idle partition groups: their leader stops heartbeating them and sends one
    /// liveness beat per peer instead (`crate::scheduler`, "Quiescence"). It cuts the idle cost
    /// of replicated groups about 8x. On by default; kept so benchmarks can measure both in one
    /// run (the server's hidden `DRAWBRIDGE_QUIESCE=0|1` overrides it). It was off for a while
    /// because the process test that SIGSTOPs a busy partition leader saw acks resume ~9 s
    /// after the stop with it vs ~6 s without; that was the client staying on the stopped
    /// broker's connection. With client keep-alive and stall detection, A/B runs of that test
    /// showed no difference (acks resume ~4 s after the stop either way), also when the group
    /// was quiesced at the stop. Without the node scheduler (with `partition_openraft_tick`)
    /// nothing is quiesced.
    #[doc(hidden)]
    #[serde(default = "yes")]
    pub quiesce_partition_groups: bool,
    /// Where to dial a peer that advertises a given address: when a peer's raft address is a
    /// key, the transport connects to the value instead (a relay; the process fault tests put
    /// a fault-injecting proxy per ordered pair of nodes here). Addresses not listed are
    /// dialled as advertised. Empty by default.
    #[serde(default)]
    pub peer_routes: std::collections::BTreeMap<String, String>,
    /// Tests only: faults every raft RPC of this node passes through
    /// ([`crate::testing::NetworkFaults`]). `None` in production.
    #[doc(hidden)]
    #[serde(skip)]
    pub network_faults: Option<crate::testing::NetworkFaults>,
}

/// Append-entries in flight per replication stream (see `RaftConfig::append_stream_window`).
fn default_append_stream_window() -> usize {
    0
}

fn yes() -> bool {
    true
}

fn default_unclean_hold() -> Option<u64> {
    Some(300_000)
}

/// When a partition group's log is made durable, relative to the acknowledgement of an append.
///
/// The choice is a trade between latency and what a crash of the *machine* (power loss, kernel
/// panic) may lose; a crash of the *process* loses nothing under any policy, because every
/// append has reached the OS page cache (`pwritev`) before it is acknowledged.
///
/// - [`LogSyncPolicy::Always`] (the default): an append is acknowledged to raft (and so counts
///   for LEADER acks, for the follower's replication answer and for commit) only after an
///   `fdatasync` that started after it; the node's flusher group-commits the syncs of every
///   group. Nothing acknowledged is lost when machines crash.
/// - [`LogSyncPolicy::Interval`]: acknowledged once written to the page cache; every log written
///   since the last round is fsynced every `interval_ms`. A machine crash may lose the last
///   interval on that machine; losing an entry that was committed needs a majority of its
///   replicas to crash within one interval.
/// - [`LogSyncPolicy::Never`]: acknowledged once written to the page cache and never fsynced
///   explicitly (the OS writes back dirty pages on its own schedule, and a clean close syncs).
///
/// Votes, commit points and purge records always sync before they are acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogSyncPolicy {
    /// fsync before acknowledging (group commit).
    #[default]
    Always,
    /// Acknowledge after the write; fsync dirty logs every `interval_ms` (at least 1 ms).
    Interval {
        /// Period of the background sync round, ms.
        interval_ms: u64,
    },
    /// Acknowledge after the write; leave syncing to the OS.
    Never,
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
            partition_log_sync: LogSyncPolicy::Always,
            unclean_restart_hold_ms: default_unclean_hold(),
            partition_openraft_tick: false,
            coalesce_heartbeats: true,
            append_stream_window: default_append_stream_window(),
            quiesce_partition_groups: true,
            peer_routes: std::collections::BTreeMap::new(),
            network_faults: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert!(GroupTimings::partition_defaults().to_openraft("t").is_ok());
        let scheduled = GroupTimings::partition_defaults().to_openraft_scheduled("t");
        assert!(scheduled.is_ok_and(|c| !c.enable_tick));
        assert!(GroupTimings::metadata_defaults()
            .to_openraft("t")
            .is_ok_and(|c| c.enable_tick));
    }

    #[test]
    fn heartbeat_longer_than_election_is_rejected() {
        let mut t = GroupTimings::partition_defaults();
        t.heartbeat_interval_ms = 5_000;
        assert!(matches!(t.to_openraft("t"), Err(RaftError::Config(_))));
    }
}
