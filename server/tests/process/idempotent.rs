//! Idempotent publish (`drawbridge-producer-id` / `drawbridge-producer-seq` headers): a retried
//! message is stored once and acknowledged with its original offset — on the same leader,
//! after a restart (the state is rebuilt from the log) and on a new leader after the old one
//! is killed.

use std::time::Duration;

use bytes::Bytes;
use drawbridge_proto::api::*;
use drawbridge_server::dedup::{PRODUCER_ID, PRODUCER_SEQ};
use drawbridge_tests::nats::NatsServer;
use drawbridge_tests::server::{cluster, cluster_specs, DrawbridgeServer};
use futures::StreamExt;

use crate::common::*;

/// Publishes `value` as producer `producer`'s message `seq`; returns the acked offset.
async fn publish_seq(
    c: &mut Client,
    stream: &str,
    producer: &str,
    seq: u64,
    value: &str,
) -> TestResult<i64> {
    let mut r = publish_req(stream, value.as_bytes(), AckPolicy::All);
    r.get_mut().headers = [
        (PRODUCER_ID.to_owned(), Bytes::from(producer.to_owned())),
        (PRODUCER_SEQ.to_owned(), Bytes::from(seq.to_string())),
    ]
    .into_iter()
    .collect();
    let ack = c.publish(r).await?.into_inner().ack.ok_or("no ack")?;
    Ok(ack.offset)
}

/// Every value stored in partition 0, read from the earliest offset until 300 ms of silence.
async fn values(c: &mut Client, stream: &str) -> TestResult<Vec<String>> {
    let mut sub = subscribe(c, sub_req(stream, 0, StartPosition::Earliest)).await?;
    let mut out = Vec::new();
    for _ in 0..10_000 {
        match tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            Ok(Some(Ok(m))) => out.push(String::from_utf8_lossy(&m.value).into_owned()),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(out)
}

#[tokio::test]
async fn retried_messages_are_stored_once_across_a_restart() -> TestResult {
    let (mut server, _) = standalone("idempotent")?;
    let spec = server.spec.clone();
    let mut c = client(&server).await?;
    create(&mut c, "idem", "idem").await?;
    assert_eq!(publish_seq(&mut c, "idem", "p1", 1, "a").await?, 0);
    assert_eq!(
        publish_seq(&mut c, "idem", "p1", 1, "a").await?,
        0,
        "retry: same offset"
    );
    assert_eq!(
        publish_seq(&mut c, "idem", "p2", 1, "x").await?,
        1,
        "another producer"
    );
    assert_eq!(publish_seq(&mut c, "idem", "p1", 2, "b").await?, 2);
    assert_eq!(
        publish_seq(&mut c, "idem", "p1", 1, "a").await?,
        0,
        "older retry"
    );
    // Without the headers there is no dedup.
    for _ in 0..2 {
        c.publish(publish_req("idem", b"plain", AckPolicy::All))
            .await?;
    }
    assert_eq!(
        values(&mut c, "idem").await?,
        ["a", "x", "b", "plain", "plain"]
    );

    // After a restart the new leader rebuilds the state from its log.
    assert!(server.stop(Duration::from_secs(10)), "server did not stop");
    let server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    assert_eq!(
        publish_seq(&mut c, "idem", "p1", 2, "b").await?,
        2,
        "retry after restart"
    );
    assert_eq!(publish_seq(&mut c, "idem", "p2", 1, "x").await?, 1);
    assert_eq!(publish_seq(&mut c, "idem", "p1", 3, "c").await?, 5);
    assert_eq!(
        values(&mut c, "idem").await?,
        ["a", "x", "b", "plain", "plain", "c"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_a_new_leader_are_stored_once() -> TestResult {
    let Some(nats) = NatsServer::start_or_skip("retries_on_a_new_leader_are_stored_once") else {
        return Ok(());
    };
    let specs = cluster_specs(std::path::Path::new(BIN), &nats.url(), 3)?;
    let mut servers: Vec<Option<DrawbridgeServer>> =
        cluster(&specs)?.into_iter().map(Some).collect();
    let mut c0 = client(servers[0].as_ref().ok_or("no server")?).await?;
    let mut req = create_req("idem3", "idem3");
    req.replication_factor = 3;
    c0.create_stream(req).await?;
    let leader = wait_leader(&mut c0, "idem3", None).await?;
    for seq in 1..=20u64 {
        let off = publish_seq(&mut c0, "idem3", "px", seq, &format!("v{seq}")).await?;
        assert_eq!(off, i64::try_from(seq)? - 1);
    }
    let idx = specs.iter().position(|s| s.id == leader).ok_or("leader")?;
    if let Some(s) = servers[idx].as_mut() {
        s.kill();
    }
    let other = (idx + 1) % 3;
    let mut c = client(servers[other].as_ref().ok_or("no server")?).await?;
    let new_leader = wait_leader(&mut c, "idem3", Some(&leader)).await?;
    // The producer retries its last ten messages on the new leader: same offsets, no copies.
    for seq in 11..=20u64 {
        let off = publish_seq(&mut c, "idem3", "px", seq, &format!("v{seq}")).await?;
        assert_eq!(
            off,
            i64::try_from(seq)? - 1,
            "retry of {seq} on {new_leader}"
        );
    }
    assert_eq!(publish_seq(&mut c, "idem3", "px", 21, "v21").await?, 20);
    let nl = specs
        .iter()
        .position(|s| s.id == new_leader)
        .ok_or("new leader")?;
    let mut cl = client(servers[nl].as_ref().ok_or("no server")?).await?;
    let want: Vec<String> = (1..=21).map(|s| format!("v{s}")).collect();
    assert_eq!(values(&mut cl, "idem3").await?, want);
    drop(nats);
    Ok(())
}
