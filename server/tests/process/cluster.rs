//! Three servers on a real `nats-server`, replication factor 3: metadata on every node,
//! forwarding, and failover after SIGKILL of a partition leader.

use std::time::{Duration, Instant};

use drawbridge_proto::api::*;
use drawbridge_tests::nats::NatsServer;
use drawbridge_tests::server::{cluster, cluster_specs, DrawbridgeServer};

use crate::common::*;

const EACH: Duration = Duration::from_secs(15);

async fn leader_of(c: &mut Client, stream: &str) -> TestResult<Option<String>> {
    let md = c
        .fetch_metadata(FetchMetadataRequest {
            streams: vec![stream.into()],
            groups: vec![],
        })
        .await?
        .into_inner();
    Ok(md
        .stream_metadata
        .first()
        .and_then(|s| s.partitions.get(&0))
        .map(|p| p.leader.clone())
        .filter(|l| !l.is_empty()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_leader_kill() -> TestResult {
    let Some(nats) = NatsServer::start_or_skip("three_nodes_survive_leader_kill") else {
        return Ok(());
    };
    let specs = cluster_specs(std::path::Path::new(BIN), &nats.url(), 3)?;
    let mut servers: Vec<Option<DrawbridgeServer>> =
        cluster(&specs)?.into_iter().map(Some).collect();

    // Create through a node; RF 3 > 3? no: RF 4 is refused, RF 3 accepted.
    let mut c1 = client(servers[1].as_ref().ok_or("no server")?).await?;
    let mut rf4 = create_req("big", "big");
    rf4.replication_factor = 4;
    assert_eq!(
        c1.create_stream(rf4).await.err().map(|e| e.code()),
        Some(tonic::Code::InvalidArgument)
    );
    let mut req = create_req("ha", "ha");
    req.replication_factor = 3;
    c1.create_stream(req).await?;

    // Every node answers FetchMetadata with all brokers and the same leader.
    let mut leader = None;
    for s in servers.iter().flatten() {
        let mut c = client(s).await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let md = c
                .fetch_metadata(FetchMetadataRequest::default())
                .await?
                .into_inner();
            let brokers: Vec<&str> = md.brokers.iter().map(|b| b.id.as_str()).collect();
            let p = md
                .stream_metadata
                .first()
                .and_then(|s| s.partitions.get(&0))
                .cloned();
            if brokers.len() == 3 && p.as_ref().is_some_and(|p| !p.leader.is_empty()) {
                assert_eq!(brokers[0], s.spec.id, "self first");
                let p = p.ok_or("no partition")?;
                assert_eq!(p.replicas.len(), 3);
                if let Some(l) = &leader {
                    assert_eq!(l, &p.leader);
                }
                leader = Some(p.leader);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "incomplete metadata on {}: {md:?}",
                s.spec.id
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let leader = leader.ok_or("no leader")?;
    let leader_idx = specs
        .iter()
        .position(|s| s.id == leader)
        .ok_or("leader is not a node")?;
    let other = (leader_idx + 1) % 3;

    // Publish through a non-leader with ALL acks.
    let mut c = client(servers[other].as_ref().ok_or("no server")?).await?;
    for i in 0..100 {
        let ack = c
            .publish(publish_req(
                "ha",
                format!("m{i}").as_bytes(),
                AckPolicy::All,
            ))
            .await?
            .into_inner()
            .ack
            .ok_or("no ack")?;
        assert_eq!(ack.offset, i);
    }
    // Subscribe on a non-leader: FailedPrecondition (clients re-route).
    let r = subscribe(&mut c, sub_req("ha", 0, StartPosition::Earliest)).await;
    assert_eq!(
        r.err().map(|e| e.code()),
        Some(tonic::Code::FailedPrecondition)
    );

    // SIGKILL the leader: a new leader within 10 s.
    let killed_at = Instant::now();
    if let Some(s) = servers[leader_idx].as_mut() {
        s.kill();
    }
    let new_leader = loop {
        if let Some(l) = leader_of(&mut c, "ha").await? {
            if l != leader {
                break l;
            }
        }
        if killed_at.elapsed() >= Duration::from_secs(10) {
            let logs: Vec<String> = servers
                .iter()
                .flatten()
                .map(|s| {
                    let text = std::fs::read_to_string(s.spec.log_path()).unwrap_or_default();
                    let keep: Vec<&str> = text
                        .lines()
                        .filter(|l| !l.contains("heartbeat") && !l.contains("Unreachable"))
                        .collect();
                    keep[keep.len().saturating_sub(60)..].join("\n")
                })
                .collect();
            panic!(
                "no new leader within 10 s; logs:\n{}",
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "new partition leader {new_leader} after {:?}",
        killed_at.elapsed()
    );
    let nl_idx = specs
        .iter()
        .position(|s| s.id == new_leader)
        .ok_or("unknown new leader")?;
    let mut cl = client(servers[nl_idx].as_ref().ok_or("no server")?).await?;
    // The partition keeps serving: publishes are acked with ALL after failover.
    let mut offsets = Vec::new();
    for i in 100..150 {
        let ack = cl
            .publish(publish_req(
                "ha",
                format!("m{i}").as_bytes(),
                AckPolicy::All,
            ))
            .await?
            .into_inner()
            .ack
            .ok_or("no ack")?;
        offsets.push(ack.offset);
    }
    assert_eq!(
        offsets,
        (100..150).collect::<Vec<_>>(),
        "no ALL-acked offset was reused"
    );
    // The new leader serves EVERY offset from its own log, including the 100 records written
    // while the killed node led (the partition's raft log is its message log on every replica).
    let mut sub = subscribe(&mut cl, sub_req("ha", 0, StartPosition::Earliest)).await?;
    let got = read_n(&mut sub, 150, EACH).await?;
    let got_offsets: Vec<i64> = got.iter().map(|m| m.offset).collect();
    assert_eq!(
        got_offsets,
        (0..150).collect::<Vec<i64>>(),
        "every offset from the new leader"
    );
    for m in &got {
        assert_eq!(m.value.as_ref(), format!("m{}", m.offset).as_bytes());
    }
    let mut from0 = subscribe(&mut cl, sub_req("ha", 0, StartPosition::Offset)).await?;
    let first = read_n(&mut from0, 1, EACH).await?;
    assert_eq!(first[0].offset, 0, "offset 0 readable on the new leader");

    // Restart the killed node: it rejoins and catches up (raft high watermark via metadata).
    servers[leader_idx] = None;
    servers[leader_idx] = Some(DrawbridgeServer::start(&specs[leader_idx])?);
    let mut ck = client(servers[leader_idx].as_ref().ok_or("no server")?).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let md = ck
            .fetch_metadata(FetchMetadataRequest::default())
            .await?
            .into_inner();
        let brokers = md.brokers.len();
        let p = md
            .stream_metadata
            .first()
            .and_then(|s| s.partitions.get(&0))
            .cloned();
        if brokers == 3 && p.is_some_and(|p| p.isr.len() == 3 && p.leader == new_leader) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted node did not rejoin: {md:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(nats);
    Ok(())
}
