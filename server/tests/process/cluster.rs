//! Three servers on a real `nats-server`, replication factor 3: metadata on every node,
//! forwarding, and failover after SIGKILL of a partition leader.

use std::time::{Duration, Instant};

use drawbridge_proto::api::*;
use drawbridge_tests::nats::NatsServer;
use drawbridge_tests::server::{cluster, cluster_specs, DrawbridgeServer};

use crate::common::*;

const EACH: Duration = Duration::from_secs(15);

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
    // ... unless readISRReplica and the node is in the recorded ISR (every replica here).
    let mut isr_req = sub_req("ha", 0, StartPosition::Earliest);
    isr_req.read_isr_replica = true;
    let mut isr_sub = subscribe(&mut c, isr_req).await?;
    let first = read_n(&mut isr_sub, 1, EACH).await?;
    assert_eq!(
        first[0].offset, 0,
        "a follower in the ISR serves readISRReplica"
    );
    drop(isr_sub);

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

/// The partition's ISR as `c` reports it in FetchMetadata (sorted server ids) and its leader.
async fn isr_of(c: &mut Client, stream: &str) -> TestResult<(Vec<String>, String)> {
    let md = c
        .fetch_metadata(FetchMetadataRequest {
            streams: vec![stream.into()],
            groups: vec![],
        })
        .await?
        .into_inner();
    let p = md
        .stream_metadata
        .first()
        .and_then(|s| s.partitions.get(&0))
        .cloned()
        .unwrap_or_default();
    let mut isr = p.isr;
    isr.sort();
    Ok((isr, p.leader))
}

/// Polls `c` (every 100 ms, at most `within`) until the ISR equals `want`; returns the time
/// it took.
async fn wait_isr(
    c: &mut Client,
    stream: &str,
    want: &[String],
    within: Duration,
    what: &str,
) -> TestResult<Duration> {
    let start = Instant::now();
    loop {
        let (isr, _) = isr_of(c, stream).await?;
        if isr == want {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= within {
            return Err(
                format!("{what}: ISR still {isr:?}, want {want:?} after {within:?}").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ISR from raft progress: with `clustering.replica.max.lag.time: 2s`, a SIGKILLed follower
/// leaves the ISR (on the leader and, through the metadata, on the other follower) within a
/// bounded time, and returns after it restarts and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isr_drops_a_dead_follower_and_takes_it_back() -> TestResult {
    let Some(nats) = NatsServer::start_or_skip("isr_drops_a_dead_follower_and_takes_it_back")
    else {
        return Ok(());
    };
    let mut specs = cluster_specs(std::path::Path::new(BIN), &nats.url(), 3)?;
    for s in &mut specs {
        let conf = s.data_dir.with_file_name(format!("{}-isr.yaml", s.id));
        std::fs::write(&conf, "clustering.replica.max.lag.time: 2s\n")?;
        s.args.push("--config".into());
        s.args.push(conf.display().to_string());
    }
    let mut servers: Vec<Option<DrawbridgeServer>> =
        cluster(&specs)?.into_iter().map(Some).collect();
    let mut c0 = client(servers[0].as_ref().ok_or("no server")?).await?;
    let mut req = create_req("isr", "isr");
    req.replication_factor = 3;
    c0.create_stream(req).await?;
    let all: Vec<String> = {
        let mut v: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
        v.sort();
        v
    };
    // Wait for a recorded leader with a full ISR.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let (isr, leader) = isr_of(&mut c0, "isr").await?;
        if !leader.is_empty() && isr == all {
            break leader;
        }
        assert!(
            Instant::now() < deadline,
            "no leader with a full ISR: {isr:?} {leader:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let leader_idx = specs.iter().position(|s| s.id == leader).ok_or("leader?")?;
    let victim = (leader_idx + 1) % 3;
    let witness = (leader_idx + 2) % 3;
    let mut cl = client(servers[leader_idx].as_ref().ok_or("no server")?).await?;
    let mut cw = client(servers[witness].as_ref().ok_or("no server")?).await?;
    for i in 0..20 {
        cl.publish(publish_req(
            "isr",
            format!("i{i}").as_bytes(),
            AckPolicy::All,
        ))
        .await?;
    }

    // Kill a follower: it leaves the ISR within lag (2 s) + monitor period + slack.
    if let Some(s) = servers[victim].as_mut() {
        s.kill();
    }
    let without: Vec<String> = all
        .iter()
        .filter(|id| **id != specs[victim].id)
        .cloned()
        .collect();
    let took = wait_isr(&mut cl, "isr", &without, Duration::from_secs(8), "leader").await?;
    eprintln!("ISR dropped the killed follower after {took:?} (leader's view)");
    wait_isr(&mut cw, "isr", &without, Duration::from_secs(8), "recorded").await?;
    // The partition keeps committing with two of three replicas.
    for i in 20..30 {
        cl.publish(publish_req(
            "isr",
            format!("i{i}").as_bytes(),
            AckPolicy::All,
        ))
        .await?;
    }
    // FetchPartitionMetadata on the leader agrees.
    let pm = cl
        .fetch_partition_metadata(FetchPartitionMetadataRequest {
            stream: "isr".into(),
            partition: 0,
        })
        .await?
        .into_inner()
        .metadata
        .ok_or("no partition metadata")?;
    let mut pisr = pm.isr.clone();
    pisr.sort();
    assert_eq!(pisr, without);

    // Restart it: it catches up and returns to the ISR everywhere.
    servers[victim] = None;
    servers[victim] = Some(DrawbridgeServer::start(&specs[victim])?);
    let took = wait_isr(&mut cl, "isr", &all, Duration::from_secs(30), "leader").await?;
    eprintln!("ISR took the restarted follower back after {took:?}");
    wait_isr(&mut cw, "isr", &all, Duration::from_secs(10), "recorded").await?;
    let mut cv = client(servers[victim].as_ref().ok_or("no server")?).await?;
    wait_isr(
        &mut cv,
        "isr",
        &all,
        Duration::from_secs(10),
        "restarted node",
    )
    .await?;
    drop(nats);
    Ok(())
}

/// PublishAsync through a node that is not the partition leader: when the leader dies, every
/// message still waiting for its ack is answered by the server with an async error (not left
/// to the client's ack timeout), and the session keeps working once a new leader records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_async_answers_in_flight_messages_when_the_leader_dies() -> TestResult {
    use futures::StreamExt;
    let Some(nats) =
        NatsServer::start_or_skip("publish_async_answers_in_flight_messages_when_the_leader_dies")
    else {
        return Ok(());
    };
    let specs = cluster_specs(std::path::Path::new(BIN), &nats.url(), 3)?;
    let mut servers: Vec<DrawbridgeServer> = cluster(&specs)?;
    let mut c0 = client(&servers[0]).await?;
    let mut req = create_req("pa", "pa");
    req.replication_factor = 3;
    c0.create_stream(req).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let leader = loop {
        if let Some(l) = leader_of(&mut c0, "pa").await? {
            break l;
        }
        assert!(Instant::now() < deadline, "no partition leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let leader_idx = specs
        .iter()
        .position(|s| s.id == leader)
        .ok_or("leader is not a node")?;
    let other = (leader_idx + 1) % 3;
    let mut c = client(&servers[other]).await?;

    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(64);
    let mut responses = c
        .publish_async(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let msg = |id: String| PublishRequest {
        stream: "pa".into(),
        value: id.clone().into_bytes().into(),
        ack_policy: AckPolicy::All as i32,
        correlation_id: id,
        expected_offset: -1,
        ..Default::default()
    };
    // Warm-up: acked normally through the forwarding node.
    for i in 0..5 {
        tx.send(msg(format!("w{i}"))).await?;
    }
    for _ in 0..5 {
        let r = tokio::time::timeout(EACH, responses.next())
            .await?
            .ok_or("session ended")??;
        assert!(r.async_error.is_none(), "warm-up failed: {r:?}");
    }

    // Kill the leader, then publish: nobody records these until a new leader subscribes.
    servers[leader_idx].kill();
    let killed_at = Instant::now();
    const N: usize = 10;
    for i in 0..N {
        tx.send(msg(format!("k{i}"))).await?;
    }
    let mut answered = std::collections::HashMap::new();
    while answered.len() < N {
        let left = Duration::from_secs(20).saturating_sub(killed_at.elapsed());
        let r = tokio::time::timeout(left, responses.next())
            .await
            .map_err(|_| format!("only {} of {N} in-flight messages answered", answered.len()))?
            .ok_or("session ended")??;
        answered.insert(r.correlation_id.clone(), r.async_error);
    }
    let took = killed_at.elapsed();
    let errors: Vec<&PublishAsyncError> = answered.values().flatten().collect();
    eprintln!(
        "{} of {N} in-flight messages failed, all answered {took:?} after the kill",
        errors.len()
    );
    assert!(!errors.is_empty(), "none failed: {answered:?}");
    for e in &errors {
        assert_eq!(e.code, publish_async_error::Code::Internal as i32, "{e:?}");
    }
    // Answered by the server well before the sum of election time and the client's own 5 s
    // ack timeout would have ended them.
    assert!(took < Duration::from_secs(12), "took {took:?}");

    // The session keeps working: a new message is acked once the new leader records.
    let deadline = Instant::now() + Duration::from_secs(15);
    while leader_of(&mut c, "pa").await?.is_none_or(|l| l == leader) {
        assert!(Instant::now() < deadline, "no new leader recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut i = 0;
    loop {
        tx.send(msg(format!("after{i}"))).await?;
        let r = tokio::time::timeout(EACH, responses.next())
            .await?
            .ok_or("session ended")??;
        if r.async_error.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "no ack after failover: {r:?}");
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(tx);
    drop(nats);
    Ok(())
}

/// `drawbridge_partitions_unavailable`: a surviving replica whose partition lost its leader
/// and its majority counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_without_a_leader_are_counted_unavailable() -> TestResult {
    let Some(nats) =
        NatsServer::start_or_skip("partitions_without_a_leader_are_counted_unavailable")
    else {
        return Ok(());
    };
    let mut specs = cluster_specs(std::path::Path::new(BIN), &nats.url(), 3)?;
    let mut ports = Vec::new();
    for s in &mut specs {
        let port = drawbridge_tests::ports::free_port()?;
        s.args.push("--metrics-listen".into());
        s.args.push(format!("127.0.0.1:{port}"));
        ports.push(port);
    }
    let mut servers: Vec<DrawbridgeServer> = cluster(&specs)?;
    let mut c0 = client(&servers[0]).await?;
    let mut req = create_req("un", "un");
    req.replication_factor = 3;
    c0.create_stream(req).await?;
    let leader = wait_leader(&mut c0, "un", None).await?;
    let idx = specs.iter().position(|s| s.id == leader).ok_or("leader")?;
    let survivor = (idx + 1) % 3;
    let unavailable = |body: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix("drawbridge_partitions_unavailable "))
            .map(str::to_owned)
    };
    // The leader is recorded in metadata once a majority took its first entry; the survivor
    // may hear from it a moment later, so wait (bounded) until it counts nothing unavailable.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = crate::single::get(ports[survivor], "/metrics").await?;
        if unavailable(&body).as_deref() == Some("0") {
            break;
        }
        assert!(Instant::now() < deadline, "before the kill: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    servers[idx].kill();
    servers[(idx + 2) % 3].kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = crate::single::get(ports[survivor], "/metrics").await?;
        if unavailable(&body).as_deref() == Some("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leaderless partition is not counted: {:?}",
            unavailable(&body)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(nats);
    Ok(())
}
