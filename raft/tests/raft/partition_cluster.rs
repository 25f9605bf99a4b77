//! Partition groups over a 3-node cluster: replication and acks, divergent tails, lagging
//! followers (also past a purge), and many idle groups.

use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use drawbridge_raft::GroupTimings;
use drawbridge_raft::PartitionId;
use drawbridge_raft::PartitionReplica;
use drawbridge_storage::ReadLimits;
use drawbridge_storage::Record;

use crate::harness::eventually;
use crate::harness::fast_timings;
use crate::harness::partition_leader;
use crate::harness::Cluster;
use crate::harness::ThreeNodes;

const T: Duration = Duration::from_secs(10);

/// A real record set of `n` records (the partition log stores record sets only).
fn batch(i: u32, n: u32) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|j| Record {
            timestamp: i64::from(i) * 1000 + i64::from(j),
            key: None,
            headers: Vec::new(),
            value: Bytes::from(format!("records-{i}-{j}")),
        })
        .collect();
    drawbridge_storage::encode_records(&records).expect("encode records")
}

/// The offsets readable (committed) in a replica's own partition log, from `from`.
fn readable_offsets(r: &PartitionReplica, from: u64) -> Vec<u64> {
    r.log()
        .read(from, ReadLimits::records(100_000))
        .expect("read partition log")
        .iter()
        .map(|v| v.offset)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_batches_with_dense_offsets_and_both_ack_levels() {
    let ThreeNodes {
        c,
        replicas,
        leader,
        ..
    } = ThreeNodes::start(fast_timings(), "orders").await;
    let mut expected = 0u64;
    for i in 1..=5u32 {
        let o = leader.append(batch(i, i), i, T).await.expect("append");
        assert_eq!(o.base_offset, expected);
        assert_eq!(o.record_count, i);
        expected += u64::from(i);
    }
    // LEADER ack: durable locally, then ALL ack: committed with offsets.
    let mut prop = leader.propose(batch(9, 2), 2);
    let index = prop.appended_locally(T).await.expect("local append");
    assert!(index > 0);
    let o = prop.committed(T).await.expect("commit");
    assert_eq!(o.base_offset, expected);
    expected += 2;
    for r in &replicas {
        let mut hw = r.watch_high_watermark();
        tokio::time::timeout(T, hw.wait_for(|h| *h == Some(expected - 1)))
            .await
            .expect("hw in time")
            .expect("hw watch open");
        assert_eq!(r.next_offset(), expected);
        // Every replica serves every committed record from its own log.
        eventually("log hw", T, || {
            r.log().high_watermark() == Some(expected - 1)
        })
        .await;
        assert_eq!(readable_offsets(r, 0), (0..expected).collect::<Vec<_>>());
    }
    // A follower refuses proposals and names the leader.
    let follower = replicas
        .iter()
        .find(|r| !r.is_leader())
        .expect("a follower");
    match follower.append(batch(0, 1), 1, T).await {
        Err(drawbridge_raft::RaftError::NotLeader { leader_id, .. }) => {
            assert!(leader_id.is_some())
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    c.shutdown().await;
}

fn replica_on(c: &Cluster, id: u64, p: &PartitionId) -> PartitionReplica {
    c.node(id).partition(p).expect("group hosted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divergent_uncommitted_tail_is_truncated_and_converges() {
    let ThreeNodes {
        mut c,
        p,
        replicas,
        leader,
    } = ThreeNodes::start(fast_timings(), "div").await;
    leader.append(batch(1, 3), 3, T).await.expect("append");
    let old = leader.group_node();
    let others: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    for r in &replicas {
        eventually("all applied", T, || r.next_offset() == 3).await;
    }
    // Cut the leader off: it appends entries nobody else receives.
    for id in &others {
        c.stop(*id).await;
    }
    let mut stranded = Vec::new();
    for i in 0..3 {
        let mut prop = leader.propose(batch(100 + i, 5), 5);
        prop.appended_locally(T)
            .await
            .expect("appended on the isolated leader");
        stranded.push(prop);
    }
    let old_last = leader.last_log_index().expect("log not empty");
    c.stop(old).await;
    // The other two elect a leader among themselves and commit different entries.
    for id in &others {
        c.rejoin(*id, &p).await;
    }
    let survivors: Vec<PartitionReplica> =
        others.iter().map(|id| replica_on(&c, *id, &p)).collect();
    let new_leader = partition_leader(&survivors, T).await;
    for i in 0..4 {
        new_leader
            .append(batch(200 + i, 1), 1, T)
            .await
            .expect("append on new leader");
    }
    let target_next = new_leader.next_offset();
    assert_eq!(target_next, 3 + 4, "stranded entries must not be committed");
    // The old leader returns: its tail conflicts, is truncated, and it converges.
    let back = c.rejoin(old, &p).await;
    eventually("old leader converges", T, || {
        back.next_offset() == target_next
    })
    .await;
    eventually("same log length", T, || {
        back.last_log_index() == new_leader.last_log_index()
    })
    .await;
    assert_eq!(back.high_watermark(), Some(target_next - 1));
    eventually("old leader's log hw", T, || {
        back.log().high_watermark() == Some(target_next - 1)
    })
    .await;
    assert_eq!(
        readable_offsets(&back, 0),
        (0..target_next).collect::<Vec<_>>()
    );
    assert_eq!(
        readable_offsets(&new_leader, 0),
        (0..target_next).collect::<Vec<_>>()
    );
    assert!(old_last > 0);
    drop(stranded);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_past_a_purge_via_snapshot() {
    let ThreeNodes {
        mut c, p, leader, ..
    } = ThreeNodes::start(fast_timings(), "lag").await;
    let lagger = (1..=3)
        .find(|i| *i != leader.group_node())
        .expect("a follower");
    c.stop(lagger).await;
    for i in 0..10 {
        leader
            .append(batch(i, 2), 2, T)
            .await
            .expect("append while follower is down");
    }
    let purged = leader.compact(T).await.expect("snapshot and purge");
    assert!(purged >= 10);
    for i in 0..5 {
        leader
            .append(batch(50 + i, 1), 1, T)
            .await
            .expect("append after purge");
    }
    let back = c.rejoin(lagger, &p).await;
    eventually("lagger catches up", T, || back.next_offset() == 25).await;
    eventually("lagger hw", T, || back.high_watermark() == Some(24)).await;
    // The lagger's log restarted at the snapshot's next offset: it serves what followed it.
    eventually("lagger log hw", T, || {
        back.log().high_watermark() == Some(24)
    })
    .await;
    assert_eq!(back.log().next_offset(), 25);
    assert_eq!(readable_offsets(&back, 20), (20..25).collect::<Vec<_>>());
    assert_eq!(readable_offsets(&leader, 0), (0..25).collect::<Vec<_>>());
    // The node that took the snapshot restarts: it re-installs its snapshot at open and keeps
    // its log (which holds the snapshot point), so it serves every offset again.
    let snapper = leader.group_node();
    drop(leader);
    c.stop(snapper).await;
    let again = c.rejoin(snapper, &p).await;
    eventually("restarted log hw", T, || {
        again.log().high_watermark() == Some(24)
    })
    .await;
    assert_eq!(readable_offsets(&again, 0), (0..25).collect::<Vec<_>>());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_partition_leader_elects_a_new_one_within_ten_seconds() {
    // Default partition timings: followers see the leader go silent, wait out its lease
    // (election timeout max, 3 s) plus a randomized part, and elect (the node scheduler's
    // follower path). The server's failover budget is 10 s.
    let ThreeNodes {
        mut c,
        replicas,
        leader,
        ..
    } = ThreeNodes::start(GroupTimings::partition_defaults(), "failover").await;
    let o = leader.append(batch(1, 4), 4, T).await.expect("append");
    assert_eq!(o.base_offset, 0);
    let old = leader.group_node();
    let old_term = leader.term();
    let survivors: Vec<PartitionReplica> = replicas
        .iter()
        .filter(|r| r.group_node() != old)
        .cloned()
        .collect();
    for r in &survivors {
        eventually("follower applied", T, || r.next_offset() == 4).await;
    }
    drop(leader);
    drop(replicas);
    let killed = Instant::now();
    c.stop(old).await;
    let new_leader = partition_leader(&survivors, Duration::from_secs(10)).await;
    let took = killed.elapsed();
    eprintln!(
        "new partition leader n{} after {took:?}",
        new_leader.group_node()
    );
    assert!(new_leader.term() > old_term);
    // Nothing committed is lost, and the new leader takes writes.
    let o = new_leader
        .append(batch(2, 1), 1, T)
        .await
        .expect("append on new leader");
    assert_eq!(o.base_offset, 4);
    c.shutdown().await;
}

/// One line per replica of a group: who it thinks leads, its term and log position.
fn describe(g: &[PartitionReplica]) -> String {
    let s: Vec<String> = g
        .iter()
        .map(|r| {
            format!(
                "n{} leader={:?} term={} last={:?} applied={}",
                r.group_node(),
                r.leader(),
                r.term(),
                r.last_log_index(),
                r.applied_index()
            )
        })
        .collect();
    format!("{}: {}", g[0].id(), s.join("; "))
}

/// Groups among `all` that do not have exactly one replica that is leader.
fn leaderless(all: &[Vec<PartitionReplica>]) -> Vec<&Vec<PartitionReplica>> {
    all.iter()
        .filter(|g| g.iter().filter(|r| r.is_leader()).count() != 1)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_groups_on_three_nodes_all_elect_leaders_and_stay_stable() {
    // 500 groups x 3 replicas on one machine (2 cores), default partition timings (heartbeat
    // 500 ms, elections 1.5-3 s, driven by each node's scheduler). Overridable for
    // experiments with DB_IDLE_GROUPS and DB_IDLE_HB (heartbeat ms; elections 3-6 x that).
    let groups: i32 = std::env::var("DB_IDLE_GROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let mut timings = GroupTimings::partition_defaults();
    if let Some(hb) = std::env::var("DB_IDLE_HB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        timings.heartbeat_interval_ms = hb;
        timings.heartbeat_min_interval_ms = hb / 2;
        timings.election_timeout_min_ms = hb * 3;
        timings.election_timeout_max_ms = hb * 6;
    }
    let _alone = crate::harness::MACHINE.write().await;
    let c = Cluster::start_unguarded(3, timings).await;
    let started = Instant::now();
    // Create the groups concurrently (as a server does at startup).
    let mut all = Vec::new();
    for chunk in (0..groups).collect::<Vec<i32>>().chunks(100) {
        let futs = chunk.iter().map(|i| {
            let p = PartitionId::new("idle", *i);
            let c = &c;
            async move { c.create_partition(&p).await }
        });
        all.extend(futures::future::join_all(futs).await);
    }
    eprintln!(
        "created {groups} groups x 3 replicas in {:?}",
        started.elapsed()
    );
    let terms = |all: &Vec<Vec<PartitionReplica>>| -> u64 {
        all.iter()
            .map(|g| g.iter().map(|r| r.term()).max().unwrap_or(0))
            .sum()
    };
    // A quiet 2-core machine elects them all within ~5 s of creation (one election timeout
    // plus a vote round). The bound is generous because the machine is shared with builds;
    // the loop is bounded in count and time, and a failure names the leaderless groups.
    const ELECT_WITHIN: Duration = Duration::from_secs(90);
    const POLL: Duration = Duration::from_millis(500);
    let deadline = Instant::now() + ELECT_WITHIN;
    let max_polls = ELECT_WITHIN.as_millis() / POLL.as_millis() + 1;
    let mut polls = 0;
    loop {
        let missing = leaderless(&all);
        if polls % 10 == 0 || missing.is_empty() {
            eprintln!(
                "{}/{groups} groups have one leader after {:?}; sum of terms {}",
                all.len() - missing.len(),
                started.elapsed(),
                terms(&all),
            );
        }
        if missing.is_empty() {
            break;
        }
        polls += 1;
        if Instant::now() >= deadline || polls > max_polls {
            let sample: Vec<String> = missing.iter().take(10).map(|g| describe(g)).collect();
            panic!(
                "{} of {groups} groups have no single leader {ELECT_WITHIN:?} after creation \
                 (sum of terms {}); first {}:\n{}",
                missing.len(),
                terms(&all),
                sample.len(),
                sample.join("\n")
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let elected = started.elapsed();
    // Stability: over several election timeouts (max 3 s) no group loses its leader and no
    // term moves (a term change means an election ran). A group's term is the highest any
    // replica knows and its leader the replica that leads: a follower that has not yet heard
    // from the leader of a just-finished election (it shows no leader, same term) is not a
    // change of leadership.
    let term_of = |g: &Vec<PartitionReplica>| g.iter().map(|r| r.term()).max().unwrap_or(0);
    let leader_of =
        |g: &Vec<PartitionReplica>| g.iter().find(|r| r.is_leader()).map(|r| r.group_node());
    let before: Vec<(u64, Option<u64>)> = all.iter().map(|g| (term_of(g), leader_of(g))).collect();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let moved: Vec<String> = all
        .iter()
        .zip(&before)
        .filter(|(g, was)| (term_of(g), leader_of(g)) != **was)
        .map(|(g, (t, l))| format!("{} (was term {t} leader {l:?})", describe(g)))
        .collect();
    for id in 1..=3 {
        eprintln!(
            "node {id} io: {:?}; leads {} groups quiesced",
            c.node(id).io_stats(),
            c.node(id).quiesced_partition_groups()
        );
    }
    eprintln!(
        "all {groups} groups led after {elected:?}; {} changed leader or term over 8 s",
        moved.len()
    );
    assert!(
        leaderless(&all).is_empty() && moved.is_empty(),
        "{} groups lost their leader and {} changed leader or term while idle; first: {:?}",
        leaderless(&all).len(),
        moved.len(),
        moved.iter().take(10).collect::<Vec<_>>()
    );
    c.shutdown().await;
}
