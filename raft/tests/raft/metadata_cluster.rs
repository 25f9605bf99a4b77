//! Metadata group over a 3-node cluster: election, replication, failover, restart.

use std::collections::BTreeMap;
use std::time::Duration;

use drawbridge_raft::MetadataCommand;
use drawbridge_raft::MetadataResponse;
use drawbridge_raft::RaftError;

use crate::harness::eventually;
use crate::harness::fast_timings;
use crate::harness::Cluster;

const T: Duration = Duration::from_secs(10);

fn create(name: &str) -> MetadataCommand {
    MetadataCommand::CreateStream {
        name: name.into(),
        subject: format!("subj.{name}"),
        group: String::new(),
        replicas: vec![vec![1, 2, 3]],
        config: BTreeMap::new(),
        created_at_ms: 1,
        data_keys: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_replicates_and_followers_name_the_leader() {
    let c = Cluster::start(3, fast_timings()).await;
    let leader = c.metadata_leader(T).await;
    let resp = c
        .node(leader)
        .metadata()
        .propose(create("a"), T)
        .await
        .expect("propose");
    assert_eq!(resp, MetadataResponse::Applied { group_epoch: None });
    let again = c
        .node(leader)
        .metadata()
        .propose(create("a"), T)
        .await
        .expect("propose");
    assert!(matches!(again, MetadataResponse::Rejected(_)));
    for n in c.running() {
        eventually("stream replicated", T, || {
            n.metadata().state().state.streams.contains_key("a")
        })
        .await;
    }
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    match c.node(follower).metadata().propose(create("b"), T).await {
        Err(RaftError::NotLeader {
            leader_id,
            leader_addr,
            ..
        }) => {
            assert_eq!(leader_id, Some(leader));
            assert_eq!(leader_addr, Some(c.node(leader).local_addr().to_string()));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    let (voters, learners) = c.node(leader).metadata().members();
    assert_eq!(voters.len(), 3);
    assert!(learners.is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_a_new_one_and_loses_nothing() {
    let mut c = Cluster::start(3, fast_timings()).await;
    let old = c.metadata_leader(T).await;
    for i in 0..5 {
        c.node(old)
            .metadata()
            .propose(create(&format!("s{i}")), T)
            .await
            .expect("propose");
    }
    c.stop(old).await;
    let started = std::time::Instant::now();
    let new = c.metadata_leader(T).await;
    assert_ne!(new, old);
    // Election timeout max is 800 ms; allow generous slack for a loaded 2-core machine.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "failover took {:?}",
        started.elapsed()
    );
    // A new leader applies the entries committed in earlier terms once it commits its own
    // first entry: wait (bounded) for that, then every committed entry must be there.
    let n = c.node(new).clone();
    eventually("new leader applies the earlier terms' entries", T, || {
        n.metadata().state().applied_index >= 1 && n.metadata().state().state.streams.len() >= 5
    })
    .await;
    let state = c.node(new).metadata().state().state;
    for i in 0..5 {
        assert!(
            state.streams.contains_key(&format!("s{i}")),
            "committed s{i} lost"
        );
    }
    c.node(new)
        .metadata()
        .propose(create("after"), T)
        .await
        .expect("propose after failover");
    // The old leader comes back as a follower and catches up.
    c.restart(old).await;
    let n = c.node(old).clone();
    eventually("old leader catches up", T, || {
        n.metadata().state().state.streams.contains_key("after")
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_disk_recovers_vote_log_and_commit_point() {
    let mut c = Cluster::start(3, fast_timings()).await;
    let leader = c.metadata_leader(T).await;
    for i in 0..3 {
        c.node(leader)
            .metadata()
            .propose(create(&format!("r{i}")), T)
            .await
            .expect("propose");
    }
    for n in c.running() {
        eventually("replicated", T, || {
            n.metadata().state().state.streams.len() == 3
        })
        .await;
    }
    let applied: Vec<u64> = c
        .running()
        .map(|n| n.metadata().state().applied_index)
        .collect();
    for id in 1..=3 {
        c.stop(id).await;
    }
    for id in 1..=3 {
        c.restart(id).await;
    }
    // Each node re-applies its log up to the saved commit point before any new leader exists.
    for (i, n) in c.running().enumerate() {
        eventually("state recovered", T, || {
            n.metadata().state().applied_index >= applied[i].saturating_sub(1)
        })
        .await;
        eventually("streams recovered", T, || {
            n.metadata().state().state.streams.len() == 3
        })
        .await;
    }
    let leader = c.metadata_leader(T).await;
    c.node(leader)
        .metadata()
        .propose(create("r3"), T)
        .await
        .expect("propose after restart");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_are_capped_and_extra_nodes_join_as_learners() {
    let c = Cluster::start(3, fast_timings()).await;
    let leader = c.metadata_leader(T).await;
    // The harness caps voters at 3: a fourth node joins as a learner.
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = drawbridge_raft::RaftConfig::new(4, "");
    cfg.metadata = fast_timings();
    cfg.max_metadata_voters = 3;
    let n4 =
        drawbridge_raft::RaftNode::start(cfg, tmp.path(), "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("start node 4");
    c.node(leader)
        .metadata()
        .add_node(4, n4.local_addr().to_string())
        .await
        .expect("add node 4");
    let (voters, learners) = c.node(leader).metadata().members();
    assert_eq!(voters.len(), 3);
    assert!(learners.contains(&4));
    c.node(leader)
        .metadata()
        .propose(create("seen-by-learner"), T)
        .await
        .expect("propose");
    eventually("learner applies", T, || {
        n4.metadata()
            .state()
            .state
            .streams
            .contains_key("seen-by-learner")
    })
    .await;
    n4.shutdown().await;
    c.shutdown().await;
}
