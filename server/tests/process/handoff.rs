//! Graceful shutdown hands partition leadership off: after SIGTERM of the leader of a
//! replication-factor-3 partition, publishes are acknowledged again well before the followers
//! could have elected on their own (leader lease plus election timeout: 3–4.5 s).

use std::time::{Duration, Instant};

use drawbridge_proto::api::*;
use drawbridge_tests::nats::NatsServer;
use drawbridge_tests::server::{cluster, cluster_specs, DrawbridgeServer};

use crate::common::*;

/// Below the 3 s a follower needs at least to elect itself after the last heartbeat.
const HANDED_OFF_WITHIN: Duration = Duration::from_millis(2500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_leader_hands_leadership_off() -> TestResult {
    let Some(nats) = NatsServer::start_or_skip("sigterm_of_a_leader_hands_leadership_off") else {
        return Ok(());
    };
    let specs = cluster_specs(std::path::Path::new(BIN), &nats.url(), 3)?;
    let mut servers: Vec<DrawbridgeServer> = cluster(&specs)?;
    let mut c0 = client(&servers[0]).await?;
    let mut req = create_req("handoff", "handoff");
    req.replication_factor = 3;
    c0.create_stream(req).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let leader = loop {
        if let Some(l) = leader_of(&mut c0, "handoff").await? {
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
    for i in 0..20 {
        c.publish(publish_req(
            "handoff",
            format!("m{i}").as_bytes(),
            AckPolicy::All,
        ))
        .await?;
    }

    // SIGTERM the partition leader; it exits 0 after handing off.
    let stopped = servers[leader_idx].stop(Duration::from_secs(25));
    assert!(stopped, "{}", servers[leader_idx].log_tail());
    let exited_at = Instant::now();
    let log = std::fs::read_to_string(servers[leader_idx].spec.log_path()).unwrap_or_default();
    assert!(
        log.contains("partition leaderships handed off"),
        "no hand-off in the stopped leader's log:\n{log}"
    );

    // A publish is acknowledged by the new leader quickly.
    let mut n = 20;
    loop {
        let mut r = publish_req("handoff", format!("m{n}").as_bytes(), AckPolicy::Leader);
        r.set_timeout(Duration::from_millis(500));
        match c.publish(r).await {
            Ok(resp) if resp.get_ref().ack.is_some() => break,
            _ => {}
        }
        n += 1;
        assert!(
            exited_at.elapsed() < Duration::from_secs(15),
            "no new leader; logs:\n{}\n{}",
            servers[other].log_tail(),
            servers[(leader_idx + 2) % 3].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = exited_at.elapsed();
    eprintln!("publishes resumed {took:?} after the leader exited");
    assert!(
        took < HANDED_OFF_WITHIN,
        "publishes resumed {took:?} after the leader exited (no faster than an election)"
    );
    for (i, s) in servers.iter_mut().enumerate() {
        if i != leader_idx {
            assert!(s.stop(Duration::from_secs(25)), "{}", s.log_tail());
        }
    }
    Ok(())
}

/// SIGTERM of the metadata leader hands the metadata leadership off too: its log says so,
/// another node reports itself metadata leader, and a CreateStream through a survivor works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_metadata_leader_hands_it_off() -> TestResult {
    let Some(nats) = NatsServer::start_or_skip("sigterm_of_the_metadata_leader_hands_it_off")
    else {
        return Ok(());
    };
    let mut specs = cluster_specs(std::path::Path::new(BIN), &nats.url(), 3)?;
    let mut metrics = Vec::new();
    for spec in &mut specs {
        let port = drawbridge_tests::ports::free_port()?;
        let conf = spec.data_dir.with_file_name(format!("{}-m.yaml", spec.id));
        std::fs::write(&conf, format!("metrics.listen: 127.0.0.1:{port}\n"))?;
        spec.args
            .extend(["--config".into(), conf.display().to_string()]);
        metrics.push(port);
    }
    let mut servers: Vec<DrawbridgeServer> = cluster(&specs)?;

    // The node whose `drawbridge_metadata_leader` gauge is 1 (≤ 20 s), other than `not`.
    let metadata_leader = |not: &[usize]| {
        drawbridge_tests::metrics::metadata_leader(&metrics, not, Duration::from_secs(20))
    };
    let leader = metadata_leader(&[])?;
    assert!(
        servers[leader].stop(Duration::from_secs(25)),
        "{}",
        servers[leader].log_tail()
    );
    let log = std::fs::read_to_string(servers[leader].spec.log_path()).unwrap_or_default();
    assert!(
        log.contains("metadata leadership handed off"),
        "no metadata hand-off in the stopped leader's log:\n{log}"
    );
    let new_leader = metadata_leader(&[leader])?;
    let mut c = client(&servers[(leader + 1) % 3]).await?;
    c.create_stream(create_req("after-handoff", "after-handoff"))
        .await?;
    eprintln!("metadata leadership moved from node {leader} to node {new_leader}");
    for (i, s) in servers.iter_mut().enumerate() {
        if i != leader {
            assert!(s.stop(Duration::from_secs(25)), "{}", s.log_tail());
        }
    }
    Ok(())
}
