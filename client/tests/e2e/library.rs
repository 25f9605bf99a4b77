//! The client library against one real standalone server: stream administration with typed
//! options, every way of publishing, every start and stop position, metadata, and the typed
//! errors a caller matches on.

use std::time::{Duration, SystemTime};

use drawbridge_client::{
    key_partition, AckPolicy, EndReason, Error, PublishMessage, PublisherOptions, StartAt, StopAt,
    StreamOptions, SubscribeOptions,
};

use crate::common::*;

fn from(start: StartAt, stop: StopAt) -> SubscribeOptions {
    SubscribeOptions {
        start,
        stop,
        ..SubscribeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_metadata_and_typed_errors() -> TestResult {
    let srv = shared_server();
    let c = client(&[srv.addr()]).await?;
    let name = unique("admin");
    let opts = StreamOptions {
        partitions: 3,
        replication_factor: 1,
        retention_max_messages: Some(10_000),
        retention_max_age: Some(Duration::from_secs(3600)),
        segment_max_bytes: Some(1 << 20),
        compact_enabled: Some(false),
        optimistic_concurrency_control: Some(false),
        ..StreamOptions::default()
    };
    c.create_stream(&format!("{name}.subj"), &name, opts.clone())
        .await?;
    assert!(matches!(
        c.create_stream(&format!("{name}.subj"), &name, opts).await,
        Err(Error::StreamExists)
    ));
    let bad = StreamOptions {
        partitions: -2,
        ..StreamOptions::default()
    };
    let r = c.create_stream("bad.subj", &unique("bad"), bad).await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    let r = c
        .create_stream("", &unique("nosubject"), StreamOptions::default())
        .await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");

    // FetchMetadata: this broker, the stream, its partitions and their leader.
    let md = c.fetch_metadata().await?;
    let broker = md.brokers().next().ok_or("no broker")?.clone();
    assert_eq!(broker.id, "solo");
    let s = md.stream(&name).ok_or("stream missing from metadata")?;
    assert_eq!(s.subject, format!("{name}.subj"));
    assert_eq!(s.partitions.len(), 3);
    assert_eq!(md.partition_count(&name), Some(3));
    for p in s.partitions.values() {
        assert_eq!(p.leader.as_deref(), Some("solo"));
        assert_eq!(p.replicas, vec!["solo".to_string()]);
    }
    assert!(md.partitions_without_leader().is_empty());

    // FetchPartitionMetadata from the leader: empty, then one record.
    let p1 = c.fetch_partition_metadata(&name, 1).await?;
    assert_eq!((p1.id, p1.high_watermark, p1.newest_offset), (1, -1, -1));
    c.publish(&name, PublishMessage::new("x").partition(1))
        .await?;
    let p1 = c.fetch_partition_metadata(&name, 1).await?;
    assert_eq!((p1.high_watermark, p1.newest_offset), (0, 0));
    // The server does not fill `messages_received_timestamps` yet (server/src/api/metadata.rs).

    // Typed errors for what does not exist.
    let r = c.fetch_partition_metadata(&name, 7).await;
    assert!(matches!(r, Err(Error::NoSuchPartition(_))), "{r:?}");
    let r = c.fetch_partition_metadata("no-such-stream", 0).await;
    assert!(
        matches!(r, Err(Error::NoSuchStream(_) | Error::NoSuchPartition(_))),
        "{r:?}"
    );
    let r = c
        .publish(&name, PublishMessage::new("x").partition(9))
        .await;
    assert!(matches!(r, Err(Error::NoSuchPartition(_))), "{r:?}");
    let r = c.publish("no-such-stream", PublishMessage::new("x")).await;
    assert!(matches!(r, Err(Error::NoSuchPartition(_))), "{r:?}");
    let r = c
        .subscribe("no-such-stream", from(StartAt::Earliest, StopAt::Cancel))
        .await;
    assert!(
        matches!(r, Err(Error::NoSuchStream(_) | Error::NoSuchPartition(_))),
        "{:?}",
        r.map(|_| ())
    );
    let r = c.delete_stream("no-such-stream").await;
    assert!(matches!(r, Err(Error::NoSuchStream(_))), "{r:?}");

    // Delete: gone from metadata, publishing fails, a live subscription ends with an error.
    let mut sub = c
        .subscribe(&name, from(StartAt::Earliest, StopAt::Cancel))
        .await?;
    c.delete_stream(&name).await?;
    let md = c.fetch_metadata().await?;
    assert!(md.stream(&name).is_none());
    let r = c.publish(&name, PublishMessage::new("x")).await;
    assert!(matches!(r, Err(Error::NoSuchPartition(_))), "{r:?}");
    let end = tokio::time::timeout(EACH, async {
        loop {
            use futures::StreamExt;
            match sub.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await?;
    assert!(matches!(end, Some(Err(Error::StreamDeleted))), "{end:?}");
    assert!(matches!(
        c.delete_stream(&name).await,
        Err(Error::NoSuchStream(_))
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_keys_headers_partitioners_and_ack_policies() -> TestResult {
    let srv = shared_server();
    let c = client(&[srv.addr()]).await?;
    let name = unique("pub");
    let opts = StreamOptions {
        partitions: 3,
        ..StreamOptions::default()
    };
    c.create_stream(&name, &name, opts).await?;

    // Key, headers and each ack policy, to partition 0.
    let ack = c
        .publish(
            &name,
            PublishMessage::new("v0")
                .key("k0")
                .header("h", "1")
                .headers([("a", "x"), ("b", "y")])
                .correlation_id("cid-0"),
        )
        .await?
        .ok_or("no ack for LEADER")?;
    assert_eq!((ack.offset, ack.stream.as_str()), (0, name.as_str()));
    assert_eq!(ack.correlation_id, "cid-0");
    assert_eq!(ack.ack_policy, Some(AckPolicy::Leader));
    assert!(ack.reception_time().is_some() && ack.commit_time().is_some());
    let ack = c
        .publish(&name, PublishMessage::new("v1").ack_policy(AckPolicy::All))
        .await?
        .ok_or("no ack for ALL")?;
    assert_eq!((ack.offset, ack.ack_policy), (1, Some(AckPolicy::All)));
    let none = c
        .publish(&name, PublishMessage::new("v2").ack_policy(AckPolicy::None))
        .await?;
    assert!(none.is_none(), "ack policy NONE returns no ack");

    let mut sub = c
        .subscribe(&name, from(StartAt::Earliest, StopAt::Cancel))
        .await?;
    let got = read_n(&mut sub, 3, EACH).await?;
    assert_eq!(offsets(&got), vec![0, 1, 2]);
    assert_eq!(values(&got), vec!["v0", "v1", "v2"]);
    let m = &got[0];
    assert_eq!(&m.key[..], b"k0");
    for (k, v) in [("h", "1"), ("a", "x"), ("b", "y")] {
        assert_eq!(m.headers.get(k).map(|v| &v[..]), Some(v.as_bytes()), "{k}");
    }
    assert_eq!((m.stream.as_str(), m.partition), (name.as_str(), 0));
    assert!(m.timestamp().is_some());

    // Key hash: CRC-32 of the key mod 3, where go-liftbridge would put it.
    let keys: Vec<String> = (0..12).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        c.publish(
            &name,
            PublishMessage::new(k.clone())
                .key(k.clone())
                .partition_by_key(),
        )
        .await?;
    }
    // Round robin: 6 messages, two per partition.
    for i in 0..6 {
        c.publish(
            &name,
            PublishMessage::new(format!("rr-{i}")).partition_round_robin(),
        )
        .await?;
    }
    for p in 0..3 {
        let mut sub = c
            .subscribe(
                &name,
                SubscribeOptions {
                    partition: p,
                    ..from(StartAt::Earliest, StopAt::Latest)
                },
            )
            .await?;
        let got = read_to_end(&mut sub, 100, EACH).await?;
        let vals = values(&got);
        let expect_keys: Vec<&String> = keys
            .iter()
            .filter(|k| key_partition(k.as_bytes(), 3) == p)
            .collect();
        for k in &expect_keys {
            assert!(vals.contains(k), "{k} missing from partition {p}: {vals:?}");
        }
        let rr = vals.iter().filter(|v| v.starts_with("rr-")).count();
        assert_eq!(rr, 2, "round robin on partition {p}: {vals:?}");
        let base = if p == 0 { 3 } else { 0 };
        assert_eq!(got.len(), base + expect_keys.len() + 2, "partition {p}");
        assert!(got.iter().all(|m| m.partition == p));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_offset_is_checked() -> TestResult {
    let srv = shared_server();
    let c = client(&[srv.addr()]).await?;
    let name = unique("occ");
    let opts = StreamOptions {
        optimistic_concurrency_control: Some(true),
        ..StreamOptions::default()
    };
    c.create_stream(&name, &name, opts).await?;
    let ack = c
        .publish(&name, PublishMessage::new("a").expected_offset(0))
        .await?
        .ok_or("no ack")?;
    assert_eq!(ack.offset, 0);
    let r = c
        .publish(&name, PublishMessage::new("b").expected_offset(5))
        .await;
    assert!(matches!(r, Err(Error::IncorrectOffset(_))), "{r:?}");
    let ack = c
        .publish(&name, PublishMessage::new("c").expected_offset(1))
        .await?
        .ok_or("no ack")?;
    assert_eq!(ack.offset, 1);
    // The same through PublishAsync.
    let publisher = c.publisher()?;
    let r = publisher
        .publish(&name, PublishMessage::new("d").expected_offset(0))
        .await;
    assert!(matches!(r, Err(Error::IncorrectOffset(_))), "{r:?}");
    let ack = publisher
        .publish(&name, PublishMessage::new("e").expected_offset(2))
        .await?
        .ok_or("no ack")?;
    assert_eq!(ack.offset, 2);
    // The refused messages were not written.
    let mut sub = c
        .subscribe(&name, from(StartAt::Earliest, StopAt::Latest))
        .await?;
    assert_eq!(
        values(&read_to_end(&mut sub, 10, EACH).await?),
        vec!["a", "c", "e"]
    );
    Ok(())
}

/// Optimistic concurrency behind a pipelined burst: a message sent right after N still
/// unacknowledged ones names offset N; the leader's ingest holds an in-flight slot for it and
/// must drain every other proposal before checking, so it is stored at N (no deadlock, no
/// INCORRECT_OFFSET), while a wrong expectation sent next is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_offset_after_a_pipelined_burst() -> TestResult {
    const N: usize = 600;
    let srv = shared_server();
    let c = client(&[srv.addr()]).await?;
    let name = unique("occ-burst");
    let opts = StreamOptions {
        optimistic_concurrency_control: Some(true),
        ..StreamOptions::default()
    };
    c.create_stream(&name, &name, opts).await?;
    let publisher = c.publisher_with(PublisherOptions {
        queue_capacity: 256,
        max_in_flight: 1024,
    })?;
    let burst = async {
        let mut futs = Vec::with_capacity(N + 2);
        for i in 0..N {
            futs.push(
                publisher
                    .send(&name, PublishMessage::new(format!("m{i}")))
                    .await?,
            );
        }
        futs.push(
            publisher
                .send(&name, PublishMessage::new("at-n").expected_offset(N as i64))
                .await?,
        );
        futs.push(
            publisher
                .send(&name, PublishMessage::new("stale").expected_offset(3))
                .await?,
        );
        Ok::<_, Error>(futs)
    };
    let mut futs = tokio::time::timeout(Duration::from_secs(60), burst).await??;
    let stale = futs.pop().ok_or("no future")?;
    let mut offsets = Vec::with_capacity(N + 1);
    for (i, fut) in futs.into_iter().enumerate() {
        let ack = tokio::time::timeout(Duration::from_secs(60), fut)
            .await?
            .map_err(|e| format!("message {i}: {e}"))?;
        offsets.push(ack.ok_or_else(|| format!("message {i}: no ack"))?.offset);
    }
    assert_eq!(offsets, (0..=N as i64).collect::<Vec<_>>());
    let r = tokio::time::timeout(Duration::from_secs(60), stale).await?;
    assert!(matches!(r, Err(Error::IncorrectOffset(_))), "{r:?}");
    let mut sub = c
        .subscribe(&name, from(StartAt::Earliest, StopAt::Latest))
        .await?;
    let got = read_to_end(&mut sub, N + 2, EACH).await?;
    assert_eq!(got.len(), N + 1);
    assert_eq!(&got[N].value[..], b"at-n");
    Ok(())
}

/// Idempotent publish: a (producer, sequence) published again — unary or pipelined, from the
/// library or the CLI — is stored once and acknowledged with the stored offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_publish_stores_a_message_once() -> TestResult {
    let srv = shared_server();
    let c = client(&[srv.addr()]).await?;
    let name = unique("idem");
    c.create_stream(&name, &name, StreamOptions::default())
        .await?;
    let first = c
        .publish(&name, PublishMessage::new("a").idempotent("p1", 1))
        .await?
        .ok_or("no ack")?;
    let again = c
        .publish(&name, PublishMessage::new("a").idempotent("p1", 1))
        .await?
        .ok_or("no ack")?;
    assert_eq!(
        again.offset, first.offset,
        "a repeat is acked at the stored offset"
    );
    let publisher = c.publisher()?;
    let next = publisher
        .publish(&name, PublishMessage::new("b").idempotent("p1", 2))
        .await?
        .ok_or("no ack")?;
    let repeat = publisher
        .publish(&name, PublishMessage::new("b").idempotent("p1", 2))
        .await?
        .ok_or("no ack")?;
    assert_eq!(repeat.offset, next.offset);
    // Another producer's sequence 1 is its own.
    c.publish(&name, PublishMessage::new("c").idempotent("p2", 1))
        .await?
        .ok_or("no ack")?;
    // The CLI: two lines with sequences 3 and 4, then the same again.
    let addr = srv.addr();
    let args = [
        "publish",
        name.as_str(),
        "--lines",
        "--producer-id",
        "p1",
        "--sequence",
        "3",
    ];
    let out1 = crate::cli::cli(&addr, &args, Some("d\ne\n")).await?.ok()?;
    let out2 = crate::cli::cli(&addr, &args, Some("d\ne\n")).await?.ok()?;
    assert_eq!(
        out1, out2,
        "a repeated CLI run is acked at the same offsets"
    );
    assert_eq!(out1.lines().count(), 2, "{out1}");
    let mut sub = c
        .subscribe(&name, from(StartAt::Earliest, StopAt::Latest))
        .await?;
    let read = read_to_end(&mut sub, 20, EACH).await?;
    assert_eq!(values(&read), vec!["a", "b", "c", "d", "e"]);
    assert_eq!(
        read[0]
            .headers
            .get(drawbridge_client::PRODUCER_ID_HEADER)
            .map(|v| &v[..]),
        Some(&b"p1"[..])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishing_gives_dense_offsets() -> TestResult {
    const N: usize = 3000;
    let srv = shared_server();
    let c = client(&[srv.addr()]).await?;
    let name = unique("pipe");
    c.create_stream(&name, &name, StreamOptions::default())
        .await?;
    let publisher = c.publisher_with(PublisherOptions {
        queue_capacity: 256,
        max_in_flight: 512,
    })?;
    let started = std::time::Instant::now();
    // Sending and awaiting run concurrently, with more messages than the in-flight limit: a
    // task settles the futures in order while this one keeps sending (back-pressure).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<drawbridge_client::AckFuture>(N);
    let settle = tokio::spawn(async move {
        let mut offsets = Vec::with_capacity(N);
        while let Some(fut) = rx.recv().await {
            let i = offsets.len();
            let ack = fut.await.map_err(|e| format!("message {i}: {e}"))?;
            offsets.push(ack.ok_or_else(|| format!("message {i}: no ack"))?.offset);
        }
        Ok::<_, String>(offsets)
    });
    let send_all = async {
        for i in 0..N {
            let msg = PublishMessage::new(format!("m{i}")).key(format!("k{i}"));
            let fut = publisher.send(&name, msg).await?;
            if tx.send(fut).await.is_err() {
                break;
            }
        }
        Ok::<_, Error>(())
    };
    tokio::time::timeout(Duration::from_secs(60), send_all).await??;
    drop(tx);
    let acked = tokio::time::timeout(Duration::from_secs(60), settle).await???;
    assert_eq!(
        acked,
        (0..N as i64).collect::<Vec<_>>(),
        "one offset each, in order"
    );
    eprintln!("pipelined {N} messages in {:?}", started.elapsed());
    // Ack policy NONE resolves without an ack.
    let none = publisher
        .publish(
            &name,
            PublishMessage::new("last").ack_policy(AckPolicy::None),
        )
        .await?;
    assert!(none.is_none());
    // Read back: every message once, in order.
    let mut sub = c
        .subscribe(&name, from(StartAt::Earliest, StopAt::Offset(N as i64)))
        .await?;
    let got = read_to_end(&mut sub, N + 1, EACH).await?;
    assert_eq!(got.len(), N + 1);
    for (i, m) in got.iter().take(N).enumerate() {
        assert_eq!(m.offset, i as i64);
        assert_eq!(m.value, format!("m{i}").into_bytes());
    }
    assert_eq!(&got[N].value[..], b"last");
    assert_eq!(sub.end_reason(), Some(&EndReason::StopPositionReached));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_subject_reaches_every_stream_on_it() -> TestResult {
    let srv = shared_server();
    let c = client(&[srv.addr()]).await?;
    let subject = unique("fanout");
    let (a, b) = (unique("fan-a"), unique("fan-b"));
    c.create_stream(&subject, &a, StreamOptions::default())
        .await?;
    c.create_stream(&subject, &b, StreamOptions::default())
        .await?;
    let ack = c
        .publish_to_subject(
            &subject,
            PublishMessage::new("hello")
                .key("k")
                .header("h", "v")
                .ack_policy(AckPolicy::All),
        )
        .await?
        .ok_or("no ack")?;
    assert!(ack.stream == a || ack.stream == b, "{ack:?}");
    assert_eq!(ack.offset, 0);
    for s in [&a, &b] {
        let mut sub = c
            .subscribe(s, from(StartAt::Earliest, StopAt::Cancel))
            .await?;
        let m = read_n(&mut sub, 1, EACH).await?.remove(0);
        assert_eq!((&m.value[..], &m.key[..]), (&b"hello"[..], &b"k"[..]));
        assert_eq!(m.subject, subject);
        assert_eq!(m.headers.get("h").map(|v| &v[..]), Some(&b"v"[..]));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_start_and_stop_position() -> TestResult {
    let srv = shared_server();
    let c = client(&[srv.addr()]).await?;
    let name = unique("pos");
    c.create_stream(&name, &name, StreamOptions::default())
        .await?;

    // An empty partition: StopAt::Latest ends at once.
    let mut empty = c
        .subscribe(&name, from(StartAt::Earliest, StopAt::Latest))
        .await?;
    assert!(read_to_end(&mut empty, 0, EACH).await?.is_empty());
    assert_eq!(empty.end_reason(), Some(&EndReason::Empty));

    let mut new_only = c
        .subscribe(&name, from(StartAt::NewOnly, StopAt::Cancel))
        .await?;
    // Ten records, a little apart in time so timestamps separate them.
    let mut times = Vec::new();
    for i in 0..10 {
        let ack = c
            .publish(&name, PublishMessage::new(format!("v{i}")))
            .await?
            .ok_or("no ack")?;
        assert_eq!(ack.offset, i);
        times.push(ack.reception_time().ok_or("no reception time")?);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        offsets(&read_n(&mut new_only, 10, EACH).await?),
        (0..10).collect::<Vec<_>>()
    );

    let all: Vec<i64> = (0..10).collect();
    let cases: Vec<(&str, SubscribeOptions, Vec<i64>, Option<EndReason>)> = vec![
        (
            "earliest..latest",
            from(StartAt::Earliest, StopAt::Latest),
            all.clone(),
            Some(EndReason::StopPositionReached),
        ),
        (
            "offset 4..latest",
            from(StartAt::Offset(4), StopAt::Latest),
            (4..10).collect(),
            Some(EndReason::StopPositionReached),
        ),
        (
            "offset -3 clamps",
            from(StartAt::Offset(-3), StopAt::Offset(1)),
            vec![0, 1],
            Some(EndReason::StopPositionReached),
        ),
        (
            "earliest..offset 3",
            from(StartAt::Earliest, StopAt::Offset(3)),
            vec![0, 1, 2, 3],
            Some(EndReason::StopPositionReached),
        ),
        (
            "latest..latest",
            from(StartAt::Latest, StopAt::Latest),
            vec![9],
            Some(EndReason::StopPositionReached),
        ),
        (
            "timestamp 5..latest",
            from(StartAt::Timestamp(times[5]), StopAt::Latest),
            (5..10).collect(),
            Some(EndReason::StopPositionReached),
        ),
        (
            "earliest..timestamp 6",
            from(StartAt::Earliest, StopAt::Timestamp(times[6])),
            (0..=6).collect(),
            Some(EndReason::StopPositionReached),
        ),
        (
            "timestamp 2..timestamp 4",
            from(StartAt::Timestamp(times[2]), StopAt::Timestamp(times[4])),
            vec![2, 3, 4],
            Some(EndReason::StopPositionReached),
        ),
        (
            "an hour ago..latest",
            from(StartAt::ago(Duration::from_secs(3600)), StopAt::Latest),
            all.clone(),
            Some(EndReason::StopPositionReached),
        ),
    ];
    for (what, opts, expect, end) in cases {
        let mut sub = c.subscribe(&name, opts).await?;
        let got = read_to_end(&mut sub, 20, EACH)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        assert_eq!(offsets(&got), expect, "{what}");
        assert_eq!(sub.end_reason(), end.as_ref(), "{what}");
    }

    // Tailing starts: latest delivers the newest record then new ones; a time delta in the
    // future and an offset past the end wait for new records.
    let mut latest = c
        .subscribe(&name, from(StartAt::Latest, StopAt::Cancel))
        .await?;
    assert_eq!(offsets(&read_n(&mut latest, 1, EACH).await?), vec![9]);
    let mut recent = c
        .subscribe(
            &name,
            from(StartAt::ago(Duration::from_millis(0)), StopAt::Cancel),
        )
        .await?;
    let mut past_end = c
        .subscribe(&name, from(StartAt::Offset(100), StopAt::Cancel))
        .await?;
    let mut from_10 = c
        .subscribe(&name, from(StartAt::Offset(10), StopAt::Offset(10)))
        .await?;
    assert_quiet(&mut recent, Duration::from_millis(200)).await;
    let later = SystemTime::now();
    c.publish(&name, PublishMessage::new("v10")).await?;
    for sub in [&mut latest, &mut recent, &mut past_end, &mut new_only] {
        assert_eq!(offsets(&read_n(sub, 1, EACH).await?), vec![10]);
    }
    assert_eq!(
        offsets(&read_to_end(&mut from_10, 5, EACH).await?),
        vec![10]
    );
    let mut since = c
        .subscribe(&name, from(StartAt::Timestamp(later), StopAt::Latest))
        .await?;
    assert_eq!(offsets(&read_to_end(&mut since, 5, EACH).await?), vec![10]);

    // A stop before the start is refused by the server.
    let r = c
        .subscribe(&name, from(StartAt::Offset(5), StopAt::Offset(2)))
        .await;
    assert!(
        matches!(r, Err(Error::InvalidArgument(_))),
        "{:?}",
        r.map(|_| ())
    );
    Ok(())
}
