//! Handing a partition leadership off a full disk (`RaftNode::hand_off_leadership`, issue 7
//! fault 5): only to a caught-up voter whose node says it would lead (its lead gate, which the
//! server closes while its disk is below `storage.min.free.bytes`). When no voter would,
//! nothing is started: the leader keeps leading and committing (no ping-pong, no leaderless
//! group).

use std::time::Duration;

use bytes::Bytes;
use drawbridge_storage::Record;

use crate::harness::eventually;
use crate::harness::fast_timings;
use crate::harness::ThreeNodes;

const T: Duration = Duration::from_secs(10);

fn batch(i: u32) -> Bytes {
    drawbridge_storage::encode_records(&[Record {
        timestamp: i64::from(i),
        key: None,
        headers: Vec::new(),
        value: Bytes::from(format!("handoff-{i}")),
    }])
    .expect("encode records")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_goes_only_to_a_voter_that_would_lead() {
    let ThreeNodes {
        c,
        replicas,
        leader,
        ..
    } = ThreeNodes::start(fast_timings(), "handoff").await;
    for i in 0..10 {
        leader.append(batch(i), 1, T).await.expect("append");
    }
    let me = leader.group_node();
    let others: Vec<_> = replicas
        .iter()
        .filter(|r| r.group_node() != me)
        .cloned()
        .collect();
    for r in &others {
        c.node(r.group_node()).set_lead_gate(|| false);
    }
    // Every other node declines: nothing moves, and the leader still commits (a transfer
    // would have stopped its proposals).
    let moved = c
        .node(me)
        .hand_off_leadership(&leader, T, T, 1)
        .await
        .expect("hand-off");
    assert_eq!(moved, None);
    assert!(leader.is_leader());
    let o = leader.append(batch(10), 1, T).await.expect("append after");
    assert_eq!(o.base_offset, 10);

    // One follower has space: it gets the leadership (once it matched the leader's log and
    // acknowledged; at most 50 rounds, 100 ms apart).
    let target = others[0].clone();
    c.node(target.group_node()).set_lead_gate(|| true);
    let moved = c
        .node(me)
        .hand_off_leadership(&leader, T, T, 50)
        .await
        .expect("hand-off");
    assert_eq!(moved, Some(target.group_node()));
    eventually("the target leads", T, || target.is_leader()).await;
    let o = target
        .append(batch(11), 1, T)
        .await
        .expect("append on the new leader");
    assert_eq!(o.base_offset, 11);
    c.shutdown().await;
}
