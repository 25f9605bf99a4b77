//! Replication streams (`RaftTransport/AppendStream`): many proposals in flight commit densely
//! and identically on every replica, with streams on and off; streams close once idle; a
//! malformed stream gets typed failures and the node keeps serving.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use drawbridge_proto::raft as pb;
use drawbridge_proto::raft::raft_failure::Code;
use drawbridge_proto::raft::raft_transport_client::RaftTransportClient;
use drawbridge_raft::PartitionReplica;
use drawbridge_raft::RaftConfig;
use drawbridge_storage::ReadLimits;
use drawbridge_storage::Record;

use crate::harness::eventually;
use crate::harness::fast_timings;
use crate::harness::partition_leader;
use crate::harness::Cluster;
use crate::harness::ThreeNodes;

const T: Duration = Duration::from_secs(10);

/// Proposals made in [`pipelined_load`].
const PROPOSALS: u32 = 300;

/// Most proposals in flight at once in [`pipelined_load`].
const WINDOW: usize = 64;

fn batch(i: u32) -> Bytes {
    let records = [Record {
        timestamp: i64::from(i),
        key: None,
        headers: Vec::new(),
        value: Bytes::from(format!("value-{i}")),
    }];
    drawbridge_storage::encode_records(&records).expect("encode records")
}

/// Proposes [`PROPOSALS`] one-record batches with up to [`WINDOW`] in flight, waits for each
/// to commit, and checks that the committed offsets tile `0..PROPOSALS` and that every
/// replica holds the same values at every offset.
async fn pipelined_load(leader: &PartitionReplica, replicas: &[PartitionReplica]) {
    let mut in_flight = VecDeque::new();
    let mut offsets = Vec::new();
    for i in 0..PROPOSALS {
        if in_flight.len() == WINDOW {
            let p: drawbridge_raft::Proposal = in_flight.pop_front().expect("non-empty");
            offsets.push(p.committed(T).await.expect("commit").base_offset);
        }
        in_flight.push_back(leader.propose(batch(i), 1));
    }
    for p in in_flight {
        offsets.push(p.committed(T).await.expect("commit").base_offset);
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (0..u64::from(PROPOSALS)).collect::<Vec<_>>());
    let last = u64::from(PROPOSALS) - 1;
    let mut first: Option<Vec<(u64, Bytes)>> = None;
    for r in replicas {
        eventually("replica committed everything", T, || {
            r.log().high_watermark() == Some(last)
        })
        .await;
        let read: Vec<(u64, Bytes)> = r
            .log()
            .read(0, ReadLimits::records(100_000))
            .expect("read partition log")
            .iter()
            .map(|v| (v.offset, v.value.clone()))
            .collect();
        assert_eq!(read.len(), PROPOSALS as usize);
        match &first {
            None => first = Some(read),
            Some(f) => assert_eq!(&read, f, "replicas differ"),
        }
    }
}

fn streams(_: u64, c: &mut RaftConfig) {
    c.append_stream_window = 4;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_proposals_commit_over_streams_that_close_when_idle() {
    let c = Cluster::start_tweaked(3, fast_timings(), streams).await;
    let p = drawbridge_raft::PartitionId::new("streamed", 0);
    let replicas = c.create_partition(&p).await;
    let leader = partition_leader(&replicas, Duration::from_secs(15)).await;
    pipelined_load(&leader, &replicas).await;
    let leader_node = replicas
        .iter()
        .position(|r| r.is_leader())
        .map(|i| i as u64 + 1)
        .expect("a leader");
    for node in c.running() {
        let stats = node.transport_stats();
        if node.id() != leader_node {
            assert!(
                stats.append_streams_served > 0,
                "node {} served no replication stream: {stats:?}",
                node.id()
            );
        }
    }
    // Idle: every call closes (the partition's and the metadata group's).
    eventually("idle streams closed", Duration::from_secs(20), || {
        c.running()
            .all(|n| n.transport_stats().append_streams_open == 0)
    })
    .await;
    // Heartbeats (the metadata group's run every 100 ms here) open no calls: they ride the
    // coalesced unary path.
    let served: Vec<u64> = c
        .running()
        .map(|n| n.transport_stats().append_streams_served)
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later: Vec<u64> = c
        .running()
        .map(|n| n.transport_stats().append_streams_served)
        .collect();
    assert_eq!(served, later, "idle groups opened replication streams");
    // A new proposal opens a stream again and commits.
    let p = leader.propose(batch(PROPOSALS), 1);
    assert_eq!(
        p.committed(T).await.expect("commit").base_offset,
        u64::from(PROPOSALS)
    );
    let reopened: u64 = c
        .running()
        .map(|n| n.transport_stats().append_streams_served)
        .sum();
    assert!(reopened > later.iter().sum::<u64>(), "no stream reopened");
    c.shutdown().await;
}

fn no_streams(_: u64, c: &mut RaftConfig) {
    c.append_stream_window = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_proposals_commit_one_rpc_at_a_time_with_streams_off() {
    let c = Cluster::start_tweaked(3, fast_timings(), no_streams).await;
    let p = drawbridge_raft::PartitionId::new("unary", 0);
    let replicas = c.create_partition(&p).await;
    let leader = partition_leader(&replicas, Duration::from_secs(15)).await;
    pipelined_load(&leader, &replicas).await;
    for node in c.running() {
        assert_eq!(node.transport_stats().append_streams_served, 0);
    }
    c.shutdown().await;
}

/// The failure in the only reply of a stream.
async fn only_failure(
    client: &mut RaftTransportClient<tonic::transport::Channel>,
    requests: Vec<pb::RaftRequest>,
) -> Option<(i32, String)> {
    let call = client.append_stream(futures::stream::iter(requests));
    let mut replies = tokio::time::timeout(T, call)
        .await
        .expect("answered in time")
        .expect("call accepted")
        .into_inner();
    let mut failures = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(T, replies.message()).await {
            Ok(Ok(Some(r))) => match r.result {
                Some(pb::raft_reply::Result::Failure(f)) => failures.push((f.code, f.message)),
                other => panic!("a malformed stream was answered {other:?}"),
            },
            Ok(Ok(None)) => break,
            Ok(Err(status)) => panic!("the call failed: {status}"),
            Err(_) => panic!("the stream stayed open"),
        }
    }
    assert!(failures.len() <= 1, "{failures:?}");
    failures.pop()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_streams_get_typed_failures_and_the_node_keeps_serving() {
    let ThreeNodes {
        c,
        p,
        replicas,
        leader,
    } = ThreeNodes::start(fast_timings(), "malformed").await;
    let addr = c.node(1).local_addr();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = RaftTransportClient::new(channel);
    let partition = |stream: &str| pb::GroupId {
        kind: Some(pb::group_id::Kind::Partition(pb::PartitionGroup {
            stream: stream.to_string(),
            partition: p.partition,
        })),
    };
    let garbage = Bytes::from_static(&[0xff; 17]);

    // No group on the first request.
    let f = only_failure(
        &mut client,
        vec![pb::RaftRequest {
            group: None,
            payload: garbage.clone(),
        }],
    )
    .await;
    assert_eq!(f.map(|f| f.0), Some(Code::BadRequest as i32));

    // A group this node does not host.
    let f = only_failure(
        &mut client,
        vec![pb::RaftRequest {
            group: Some(partition("no-such-stream")),
            payload: garbage.clone(),
        }],
    )
    .await;
    assert_eq!(f.map(|f| f.0), Some(Code::GroupNotFound as i32));

    // A hosted group, an undecodable request.
    let f = only_failure(
        &mut client,
        vec![pb::RaftRequest {
            group: Some(partition(&p.stream)),
            payload: garbage.clone(),
        }],
    )
    .await;
    assert_eq!(f.map(|f| f.0), Some(Code::BadRequest as i32));

    // No request at all: the call just ends.
    assert_eq!(only_failure(&mut client, Vec::new()).await, None);

    // The group still replicates.
    let prop = leader.propose(batch(1), 1);
    assert_eq!(prop.committed(T).await.expect("commit").base_offset, 0);
    for r in &replicas {
        eventually("replicated", T, || r.log().high_watermark() == Some(0)).await;
    }
    c.shutdown().await;
}
