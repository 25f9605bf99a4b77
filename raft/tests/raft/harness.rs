//! The shared cluster harness: N in-process nodes on 127.0.0.1 with ephemeral ports and temp
//! dirs; nodes can be stopped and restarted on the same address and data dir.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use drawbridge_raft::testing::NetworkFaults;
use drawbridge_raft::GroupTimings;
use drawbridge_raft::NodeId;
use drawbridge_raft::PartitionId;
use drawbridge_raft::PartitionReplica;
use drawbridge_raft::RaftConfig;
use drawbridge_raft::RaftNode;

/// Fast timers for tests that exercise elections.
pub fn fast_timings() -> GroupTimings {
    GroupTimings {
        heartbeat_interval_ms: 100,
        heartbeat_min_interval_ms: 50,
        election_timeout_min_ms: 400,
        election_timeout_max_ms: 800,
        ..GroupTimings::partition_defaults()
    }
}

pub struct Member {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub node: Option<RaftNode>,
}

/// Cluster tests share the machine: ordinary ones run side by side (read guard); the heavy
/// many-groups test runs alone (write guard), so its timing assertions measure raft, not the
/// other tests' load.
pub static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

pub struct Cluster {
    pub members: Vec<Member>,
    partition_timings: GroupTimings,
    /// Faults every node's raft RPCs pass through (tests of network partitions).
    faults: Option<NetworkFaults>,
    /// Per-node configuration changes, applied at every start and restart.
    tweak: Option<Tweak>,
    _shared: Option<tokio::sync::RwLockReadGuard<'static, ()>>,
    _tmp: tempfile::TempDir,
}

/// A change to one node's configuration (e.g. its `partition_log_sync`).
pub type Tweak = fn(NodeId, &mut RaftConfig);

fn config(
    id: NodeId,
    addr: &str,
    partition: &GroupTimings,
    faults: &Option<NetworkFaults>,
    tweak: Option<Tweak>,
) -> RaftConfig {
    let mut c = RaftConfig::new(id, addr);
    c.network_faults = faults.clone();
    c.metadata = fast_timings();
    c.partition = partition.clone();
    c.max_metadata_voters = 3;
    // Off by default in the server (see the field's docs); these tests exercise it.
    c.quiesce_partition_groups = true;
    if let Some(t) = tweak {
        t(id, &mut c);
    }
    c
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) and bootstraps the metadata group with all of them.
    pub async fn start(n: u64, partition_timings: GroupTimings) -> Cluster {
        let guard = MACHINE.read().await;
        let mut c = Self::start_with(n, partition_timings, None, None).await;
        c._shared = Some(guard);
        c
    }

    /// [`Cluster::start`] with `tweak` applied to every node's configuration (also on restart).
    pub async fn start_tweaked(n: u64, partition_timings: GroupTimings, tweak: Tweak) -> Cluster {
        let guard = MACHINE.read().await;
        let mut c = Self::start_with(n, partition_timings, None, Some(tweak)).await;
        c._shared = Some(guard);
        c
    }

    /// [`Cluster::start`] with every node's raft RPCs passing through `faults`.
    pub async fn start_faulty(
        n: u64,
        partition_timings: GroupTimings,
        faults: NetworkFaults,
    ) -> Cluster {
        let guard = MACHINE.read().await;
        let mut c = Self::start_with(n, partition_timings, Some(faults), None).await;
        c._shared = Some(guard);
        c
    }

    /// [`Cluster::start`] for a caller that holds [`MACHINE`] itself.
    pub async fn start_unguarded(n: u64, partition_timings: GroupTimings) -> Cluster {
        Self::start_with(n, partition_timings, None, None).await
    }

    async fn start_with(
        n: u64,
        partition_timings: GroupTimings,
        faults: Option<NetworkFaults>,
        tweak: Option<Tweak>,
    ) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut members = Vec::new();
        for id in 1..=n {
            let dir = tmp.path().join(format!("node-{id}"));
            let node = RaftNode::start(
                config(id, "", &partition_timings, &faults, tweak),
                &dir,
                "127.0.0.1:0".parse().expect("addr"),
            )
            .await
            .expect("start node");
            members.push(Member {
                id,
                addr: node.local_addr(),
                dir,
                node: Some(node),
            });
        }
        let c = Cluster {
            members,
            partition_timings,
            faults,
            tweak,
            _shared: None,
            _tmp: tmp,
        };
        c.connect_all();
        let all: BTreeMap<NodeId, String> = c
            .members
            .iter()
            .map(|m| (m.id, m.addr.to_string()))
            .collect();
        c.node(1)
            .metadata()
            .bootstrap(all.clone())
            .await
            .expect("bootstrap");
        // Registering every node's address is the first committed write: once it returns, the
        // metadata group has a leader that has committed in its term.
        let leader = c.metadata_leader(Duration::from_secs(10)).await;
        for (id, addr) in all {
            let cmd = drawbridge_raft::MetadataCommand::RegisterNode { node_id: id, addr };
            c.node(leader)
                .metadata()
                .propose(cmd, Duration::from_secs(10))
                .await
                .expect("register node");
        }
        c
    }

    fn connect_all(&self) {
        for m in &self.members {
            if let Some(node) = &m.node {
                for p in &self.members {
                    node.set_peer(p.id, &p.addr.to_string()).expect("set peer");
                }
            }
        }
    }

    pub fn node(&self, id: NodeId) -> &RaftNode {
        self.members[(id - 1) as usize]
            .node
            .as_ref()
            .expect("node is running")
    }

    pub fn running(&self) -> impl Iterator<Item = &RaftNode> {
        self.members.iter().filter_map(|m| m.node.as_ref())
    }

    pub fn replicas(&self) -> BTreeMap<NodeId, String> {
        self.members
            .iter()
            .map(|m| (m.id, m.addr.to_string()))
            .collect()
    }

    /// Stops a node (drops its raft instances and its transport).
    pub async fn stop(&mut self, id: NodeId) {
        if let Some(node) = self.members[(id - 1) as usize].node.take() {
            node.shutdown().await;
        }
    }

    /// Restarts a stopped node on its old address and data dir.
    pub async fn restart(&mut self, id: NodeId) -> &RaftNode {
        let (addr, dir) = {
            let m = &self.members[(id - 1) as usize];
            (m.addr, m.dir.clone())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let node = loop {
            match RaftNode::start(
                config(
                    id,
                    &addr.to_string(),
                    &self.partition_timings,
                    &self.faults,
                    self.tweak,
                ),
                &dir,
                addr,
            )
            .await
            {
                Ok(n) => break n,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restart {id} on {addr}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("restart {id}: {e}"),
            }
        };
        self.members[(id - 1) as usize].node = Some(node);
        self.connect_all();
        self.node(id)
    }

    /// Creates a partition group on every running node (concurrently).
    pub async fn create_partition(&self, id: &PartitionId) -> Vec<PartitionReplica> {
        let futs = self
            .running()
            .map(|n| n.create_partition_group(id.clone(), self.replicas()));
        futures::future::join_all(futs)
            .await
            .into_iter()
            .map(|r| r.expect("create group"))
            .collect()
    }

    /// Waits until the running nodes agree on a metadata leader; returns it.
    pub async fn metadata_leader(&self, timeout: Duration) -> NodeId {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<bool> = self.running().map(|n| n.metadata().is_leader()).collect();
            if leaders.iter().filter(|l| **l).count() == 1 {
                if let Some(n) = self.running().find(|n| n.metadata().is_leader()) {
                    return n.id();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no metadata leader within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Restarts a stopped node and re-creates partition `p`'s group on it (same replicas).
    pub async fn rejoin(&mut self, id: NodeId, p: &PartitionId) -> PartitionReplica {
        self.restart(id).await;
        self.node(id)
            .create_partition_group(p.clone(), self.replicas())
            .await
            .expect("re-create group")
    }

    pub async fn shutdown(mut self) {
        for id in 1..=self.members.len() as u64 {
            self.stop(id).await;
        }
    }
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The partition leader's replica among `replicas`.
pub async fn partition_leader(
    replicas: &[PartitionReplica],
    timeout: Duration,
) -> PartitionReplica {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = replicas.iter().find(|r| r.is_leader()) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no partition leader within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The usual start of a partition test: a 3-node [`Cluster`] (shared machine guard) with
/// partition `(name, 0)` created on every node, and its elected leader.
pub struct ThreeNodes {
    pub c: Cluster,
    pub p: PartitionId,
    pub replicas: Vec<PartitionReplica>,
    pub leader: PartitionReplica,
}

impl ThreeNodes {
    pub async fn start(partition_timings: GroupTimings, name: &str) -> ThreeNodes {
        let c = Cluster::start(3, partition_timings).await;
        let p = PartitionId::new(name, 0);
        let replicas = c.create_partition(&p).await;
        let leader = partition_leader(&replicas, Duration::from_secs(15)).await;
        ThreeNodes {
            c,
            p,
            replicas,
            leader,
        }
    }
}
