//! Quiescence of idle partition groups (`drawbridge_raft` scheduler docs, "Quiescence"): idle
//! replicated groups stop heartbeating and stay led through their leader node's liveness beats;
//! a write wakes its group and commits; their followers park on the leader nodes' liveness
//! stamps, and still take a transferred leadership and fail over when the node that leads them
//! dies. (A network partition that cuts off a quiesced leader: `network_partitions`.)

use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use drawbridge_raft::PartitionId;
use drawbridge_raft::PartitionReplica;
use drawbridge_storage::Record;

use crate::harness::eventually;
use crate::harness::fast_timings;
use crate::harness::partition_leader;
use crate::harness::Cluster;

const T: Duration = Duration::from_secs(10);

/// A record set of `n` records.
fn batch(i: u32, n: u32) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|j| Record {
            timestamp: i64::from(i) * 1000 + i64::from(j),
            key: None,
            headers: Vec::new(),
            value: Bytes::from(format!("quiet-{i}-{j}")),
        })
        .collect();
    drawbridge_storage::encode_records(&records).expect("encode records")
}

/// Groups the running nodes lead quiesced.
fn quiesced(c: &Cluster) -> usize {
    c.running().map(|n| n.quiesced_partition_groups()).sum()
}

/// Followers the running nodes hold parked (scheduler rule 5).
fn parked(c: &Cluster) -> usize {
    c.running().map(|n| n.parked_partition_groups()).sum()
}

/// A 3-node cluster with fast timings and `n` groups with data on it (`groups_with_data`),
/// returned once every group is quiesced and, with `parked_too`, every follower parked too.
async fn quiet_cluster(
    stream: &str,
    n: i32,
    parked_too: bool,
) -> (Cluster, Vec<Vec<PartitionReplica>>) {
    let c = Cluster::start(3, fast_timings()).await;
    let all = groups_with_data(&c, stream, n).await;
    eventually("every group quiesced", T, || quiesced(&c) == n as usize).await;
    if parked_too {
        eventually("every follower parked", T, || parked(&c) == 2 * n as usize).await;
    }
    (c, all)
}

/// Creates `n` groups on every node of `c`, each with one committed batch of 2 records, and
/// waits until each has a leader.
async fn groups_with_data(c: &Cluster, stream: &str, n: i32) -> Vec<Vec<PartitionReplica>> {
    let mut all = Vec::new();
    for i in 0..n {
        let g = c.create_partition(&PartitionId::new(stream, i)).await;
        let leader = partition_leader(&g, T).await;
        let o = leader.append(batch(0, 2), 2, T).await.expect("append");
        assert_eq!(o.base_offset, 0);
        all.push(g);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_quiesce_stay_led_and_wake_on_a_write() {
    const GROUPS: i32 = 4;
    // Fast timings: heartbeat 100 ms, elections 400-800 ms, so "several election timeouts"
    // pass quickly.
    let (c, all) = quiet_cluster("quiet", GROUPS, false).await;

    // Quiesced for four election timeouts: no election, same leaders, every follower still
    // sees a live leader (the leader nodes' liveness beats stamp its clock).
    let before: Vec<(u64, Option<u64>)> =
        all.iter().map(|g| (g[0].term(), g[0].leader())).collect();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let after: Vec<(u64, Option<u64>)> = all.iter().map(|g| (g[0].term(), g[0].leader())).collect();
    assert_eq!(before, after, "a quiesced group changed term or leader");
    assert_eq!(quiesced(&c), GROUPS as usize, "a group woke while idle");
    for g in &all {
        for r in g {
            assert!(
                r.leader_is_live(),
                "n{} of {} sees no live leader",
                r.group_node(),
                r.id()
            );
        }
    }
    // The leader keeps every quiesced follower in sync (liveness confirmations count as acks).
    for g in &all {
        let leader = partition_leader(g, T).await;
        let p = leader.replication_progress().expect("leader progress");
        for (id, f) in &p.followers {
            let age = f.ack_age.expect("follower acknowledged");
            assert!(
                age < Duration::from_secs(1),
                "follower n{id} of {} last acked {age:?} ago",
                g[0].id()
            );
        }
    }

    // A write wakes its group and commits; every replica learns the commit.
    let g = &all[0];
    let leader = partition_leader(g, T).await;
    let o = leader
        .append(batch(1, 3), 3, T)
        .await
        .expect("append to a quiesced group");
    assert_eq!(o.base_offset, 2);
    for r in g {
        eventually("replica high watermark after the wake-up write", T, || {
            r.log().high_watermark() == Some(4)
        })
        .await;
    }
    // Idle again: it quiesces again, and a second write still commits everywhere.
    eventually("every group quiesced again", T, || {
        quiesced(&c) == GROUPS as usize
    })
    .await;
    let o = leader
        .append(batch(2, 1), 1, T)
        .await
        .expect("second append");
    assert_eq!(o.base_offset, 5);
    for r in g {
        eventually("replica high watermark after the second write", T, || {
            r.log().high_watermark() == Some(5)
        })
        .await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_that_leads_quiesced_groups_fails_them_over() {
    const GROUPS: i32 = 3;
    // Their followers are parked: only the leader node's stamp going stale brings them back.
    let (mut c, all) = quiet_cluster("quiet-failover", GROUPS, true).await;
    // The node leading the most groups (all quiesced) goes down.
    let leads = |id: u64| {
        all.iter()
            .filter(|g| g.iter().any(|r| r.group_node() == id && r.is_leader()))
            .count()
    };
    let victim = (1..=3).max_by_key(|id| leads(*id)).expect("a node");
    let led: Vec<&Vec<PartitionReplica>> = all
        .iter()
        .filter(|g| g.iter().any(|r| r.group_node() == victim && r.is_leader()))
        .collect();
    assert!(!led.is_empty());
    assert_eq!(c.node(victim).quiesced_partition_groups(), led.len());
    let old_terms: Vec<u64> = led.iter().map(|g| g[0].term()).collect();
    let survivors: Vec<Vec<PartitionReplica>> = led
        .iter()
        .map(|g| {
            g.iter()
                .filter(|r| r.group_node() != victim)
                .cloned()
                .collect()
        })
        .collect();
    drop(all);
    let killed = Instant::now();
    c.stop(victim).await;
    for (g, old_term) in survivors.iter().zip(old_terms) {
        // The same bound as the failover test with default timings; with these timings it
        // takes about the lease (0.8 s) plus up to 0.4 s plus a vote round.
        let leader = partition_leader(g, T).await;
        eprintln!(
            "{}: new leader n{} after {:?}",
            leader.id(),
            leader.group_node(),
            killed.elapsed()
        );
        assert!(leader.term() > old_term);
        // Nothing committed is lost; the new leader takes writes.
        let o = leader
            .append(batch(3, 1), 1, T)
            .await
            .expect("append on the new leader");
        assert_eq!(o.base_offset, 2);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_follower_takes_a_transferred_leadership_and_keeps_it() {
    const GROUPS: i32 = 2;
    let (c, all) = quiet_cluster("quiet-transfer", GROUPS, true).await;

    // The leadership of a quiesced group moves to a parked follower.
    let g = &all[0];
    let old = partition_leader(g, T).await;
    let old_term = old.term();
    let target = old
        .transfer_leadership(T)
        .await
        .expect("transfer")
        .expect("a follower to transfer to");
    assert_ne!(target, old.group_node());
    let new = g
        .iter()
        .find(|r| r.group_node() == target)
        .expect("target replica");
    eventually("the target leads", T, || new.is_leader()).await;
    let term = new.term();
    assert!(term > old_term);

    // The new leader heartbeats (it was handed back to its scheduler): for several election
    // timeouts nobody elects again, and every replica sees it as a live leader.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    for r in g {
        assert_eq!(
            r.term(),
            term,
            "n{} moved on from the transfer's term",
            r.group_node()
        );
        assert_eq!(
            r.leader(),
            Some(target),
            "n{} lost the new leader",
            r.group_node()
        );
        assert!(
            r.leader_is_live(),
            "n{} sees no live leader",
            r.group_node()
        );
    }
    // It takes writes, goes idle, quiesces again and its followers park again.
    let o = new
        .append(batch(1, 1), 1, T)
        .await
        .expect("append on the new leader");
    assert_eq!(o.base_offset, 2);
    eventually("every group quiesced again", T, || {
        quiesced(&c) == GROUPS as usize
    })
    .await;
    eventually("every follower parked again", T, || {
        parked(&c) == 2 * GROUPS as usize
    })
    .await;
    c.shutdown().await;
}
