//! One standalone server with embedded NATS: every implemented RPC, success and error paths.

use std::time::Duration;

use bytes::Bytes;
use drawbridge_proto::api::*;
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};
use futures::StreamExt;
use tonic::Code;

use crate::common::*;

const EACH: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_metadata_and_health() -> TestResult {
    let (server, _) = standalone("solo-admin")?;
    let mut c = client(&server).await?;

    // Health reports proto.API SERVING.
    let channel = tonic::transport::Channel::from_shared(server.endpoint())?
        .connect()
        .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "proto.API".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    create(&mut c, "s1", "foo").await?;
    let again = c.create_stream(create_req("s1", "foo")).await;
    assert_eq!(again.err().map(|e| e.code()), Some(Code::AlreadyExists));
    for (name, subject) in [
        ("", "x"),
        ("n", ""),
        ("n", "a..b"),
        ("n", "a b"),
        ("__cursors", "x"),
    ] {
        let r = c.create_stream(create_req(name, subject)).await;
        assert_eq!(
            r.err().map(|e| e.code()),
            Some(Code::InvalidArgument),
            "{name:?} {subject:?}"
        );
    }
    let mut rf2 = create_req("rf2", "rf2");
    rf2.replication_factor = 2;
    assert_eq!(
        c.create_stream(rf2).await.err().map(|e| e.code()),
        Some(Code::InvalidArgument)
    );
    let mut all = create_req("rfall", "rfall");
    all.replication_factor = -1;
    all.partitions = 3;
    all.retention_max_age = Some(NullableInt64 { value: 60_000 });
    c.create_stream(all).await?;

    let md = c
        .fetch_metadata(FetchMetadataRequest {
            streams: vec!["rfall".into(), "nope".into()],
            groups: vec!["g".into()],
        })
        .await?
        .into_inner();
    assert_eq!(md.brokers.len(), 1);
    assert_eq!(md.brokers[0].id, "solo-admin");
    assert_eq!(md.brokers[0].host, "127.0.0.1");
    assert_eq!(md.brokers[0].port, i32::from(server.spec.port));
    assert_eq!(md.stream_metadata.len(), 2);
    let s = &md.stream_metadata[0];
    assert_eq!(
        (s.name.as_str(), s.subject.as_str(), s.error),
        ("rfall", "rfall", 0)
    );
    assert_eq!(s.partitions.len(), 3);
    for (id, p) in &s.partitions {
        assert_eq!(p.id, *id);
        assert_eq!(p.leader, "solo-admin");
        assert_eq!(p.replicas, vec!["solo-admin".to_string()]);
        assert_eq!(p.isr, vec!["solo-admin".to_string()]);
        assert_eq!((p.high_watermark, p.newest_offset), (-1, -1));
    }
    assert!(s.creation_timestamp > 1_600_000_000_000_000_000);
    assert_eq!(
        md.stream_metadata[1].error,
        stream_metadata::Error::UnknownStream as i32
    );
    assert_eq!(
        md.group_metadata[0].error,
        consumer_group_metadata::Error::UnknownGroup as i32
    );
    let every = c
        .fetch_metadata(FetchMetadataRequest::default())
        .await?
        .into_inner();
    let mut names: Vec<_> = every
        .stream_metadata
        .iter()
        .map(|s| s.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, vec!["rfall", "s1"]);

    // FetchPartitionMetadata.
    c.publish(publish_req("s1", b"x", AckPolicy::All)).await?;
    let pm = c
        .fetch_partition_metadata(FetchPartitionMetadataRequest {
            stream: "s1".into(),
            partition: 0,
        })
        .await?
        .into_inner()
        .metadata
        .ok_or("no metadata")?;
    assert_eq!(
        (pm.leader.as_str(), pm.high_watermark, pm.newest_offset),
        ("solo-admin", 0, 0)
    );
    for (stream, partition) in [("nope", 0), ("s1", 7)] {
        let r = c
            .fetch_partition_metadata(FetchPartitionMetadataRequest {
                stream: stream.into(),
                partition,
            })
            .await;
        assert_eq!(r.err().map(|e| e.code()), Some(Code::NotFound));
    }

    // Cursor and consumer-group RPCs validate their arguments first.
    let r = c.set_cursor(SetCursorRequest::default()).await;
    assert_eq!(r.err().map(|e| e.code()), Some(Code::InvalidArgument));
    let r = c
        .join_consumer_group(JoinConsumerGroupRequest::default())
        .await;
    assert_eq!(r.err().map(|e| e.code()), Some(Code::InvalidArgument));

    // DeleteStream, and a subscription open on it ends with NotFound.
    let mut sub = subscribe(&mut c, sub_req("s1", 0, StartPosition::Earliest)).await?;
    read_n(&mut sub, 1, EACH).await?;
    c.delete_stream(DeleteStreamRequest { name: "s1".into() })
        .await?;
    assert_eq!(end_status(&mut sub, EACH).await, Some(Code::NotFound));
    let r = c
        .delete_stream(DeleteStreamRequest { name: "s1".into() })
        .await;
    assert_eq!(r.err().map(|e| e.code()), Some(Code::NotFound));
    let r = c
        .delete_stream(DeleteStreamRequest { name: "".into() })
        .await;
    assert_eq!(r.err().map(|e| e.code()), Some(Code::InvalidArgument));
    // The name can be used again, and starts empty.
    create(&mut c, "s1", "foo").await?;
    let ack = c
        .publish(publish_req("s1", b"y", AckPolicy::Leader))
        .await?
        .into_inner()
        .ack
        .ok_or("no ack")?;
    assert_eq!(ack.offset, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_positions() -> TestResult {
    let (server, _) = standalone("solo-pubsub")?;
    let mut c = client(&server).await?;
    create(&mut c, "s", "sub.s").await?;

    // Publish errors.
    for (stream, partition, code) in [
        ("", 0, Code::InvalidArgument),
        ("nope", 0, Code::NotFound),
        ("s", 3, Code::NotFound),
    ] {
        let mut r = publish_req(stream, b"x", AckPolicy::Leader);
        r.get_mut().partition = partition;
        assert_eq!(c.publish(r).await.err().map(|e| e.code()), Some(code));
    }
    // STOP_LATEST on an empty stream.
    let mut req = sub_req("s", 0, StartPosition::Earliest);
    req.stop_position = StopPosition::StopLatest as i32;
    assert_eq!(
        subscribe(&mut c, req).await.err().map(|e| e.code()),
        Some(Code::ResourceExhausted)
    );

    // Acks per policy.
    let mut offsets = Vec::new();
    for (i, policy) in [AckPolicy::Leader, AckPolicy::All, AckPolicy::Leader]
        .into_iter()
        .enumerate()
    {
        let mut r = publish_req("s", format!("v{i}").as_bytes(), policy);
        r.get_mut().key = Bytes::from(format!("k{i}"));
        r.get_mut().headers = headers(&[("h", "1")]);
        r.get_mut().correlation_id = format!("c{i}");
        let ack = c.publish(r).await?.into_inner().ack.ok_or("no ack")?;
        assert_eq!(ack.stream, "s");
        assert_eq!(ack.partition_subject, "sub.s");
        assert_eq!(ack.msg_subject, "sub.s");
        assert_eq!(ack.correlation_id, format!("c{i}"));
        assert_eq!(ack.ack_policy, policy as i32);
        assert!(ack.commit_timestamp >= ack.reception_timestamp);
        offsets.push(ack.offset);
    }
    assert_eq!(offsets, vec![0, 1, 2]);
    // NONE and no-deadline publishes return without an ack.
    let r = c
        .publish(publish_req("s", b"v3", AckPolicy::None))
        .await?
        .into_inner();
    assert!(r.ack.is_none());
    let r = c
        .publish(PublishRequest {
            stream: "s".into(),
            value: Bytes::from_static(b"v4"),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(r.ack.is_none());

    // EARLIEST reads everything with headers, key and subject.
    let mut sub = subscribe(&mut c, sub_req("s", 0, StartPosition::Earliest)).await?;
    let msgs = read_n(&mut sub, 5, EACH).await?;
    let offs: Vec<i64> = msgs.iter().map(|m| m.offset).collect();
    assert_eq!(offs, vec![0, 1, 2, 3, 4]);
    assert_eq!(msgs[0].value, Bytes::from_static(b"v0"));
    assert_eq!(msgs[0].key, Bytes::from_static(b"k0"));
    assert_eq!(msgs[0].stream, "s");
    assert_eq!(msgs[0].subject, "sub.s");
    assert_eq!(header(&msgs[0], "h").as_deref(), Some("1"));
    assert_eq!(header(&msgs[0], "subject").as_deref(), Some("sub.s"));
    assert_eq!(header(&msgs[0], "reply").as_deref(), Some(""));
    assert!(msgs.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    // Tailing: a new message arrives on the open subscription.
    c.publish(publish_req("s", b"v5", AckPolicy::Leader))
        .await?;
    assert_eq!(read_n(&mut sub, 1, EACH).await?[0].offset, 5);

    // Positions.
    let first_of = |v: Vec<Message>| v.first().map(|m| m.offset);
    let mut latest = subscribe(&mut c, sub_req("s", 0, StartPosition::Latest)).await?;
    assert_eq!(first_of(read_n(&mut latest, 1, EACH).await?), Some(5));
    let mut over = sub_req("s", 0, StartPosition::Offset);
    over.start_offset = 100;
    let mut newonly = subscribe(&mut c, sub_req("s", 0, StartPosition::NewOnly)).await?;
    let mut over = subscribe(&mut c, over).await?;
    let mut under = sub_req("s", 0, StartPosition::Offset);
    under.start_offset = -5;
    let mut under = subscribe(&mut c, under).await?;
    assert_eq!(first_of(read_n(&mut under, 1, EACH).await?), Some(0));
    let mut at3 = sub_req("s", 0, StartPosition::Offset);
    at3.start_offset = 3;
    let mut at3 = subscribe(&mut c, at3).await?;
    assert_eq!(first_of(read_n(&mut at3, 1, EACH).await?), Some(3));
    let mut ts = sub_req("s", 0, StartPosition::Timestamp);
    ts.start_timestamp = msgs[2].timestamp;
    let mut ts = subscribe(&mut c, ts).await?;
    assert_eq!(first_of(read_n(&mut ts, 1, EACH).await?), Some(2));
    c.publish(publish_req("s", b"v6", AckPolicy::Leader))
        .await?;
    assert_eq!(first_of(read_n(&mut newonly, 1, EACH).await?), Some(6));
    assert_eq!(first_of(read_n(&mut over, 1, EACH).await?), Some(6));

    // Stop positions end with ResourceExhausted after the stop record.
    let mut stop = sub_req("s", 0, StartPosition::Earliest);
    stop.stop_position = StopPosition::StopOffset as i32;
    stop.stop_offset = 2;
    let mut stop = subscribe(&mut c, stop).await?;
    assert_eq!(
        read_n(&mut stop, 3, EACH).await?.last().map(|m| m.offset),
        Some(2)
    );
    assert_eq!(
        end_status(&mut stop, EACH).await,
        Some(Code::ResourceExhausted)
    );
    let mut sl = sub_req("s", 0, StartPosition::Offset);
    sl.start_offset = 5;
    sl.stop_position = StopPosition::StopLatest as i32;
    let mut sl = subscribe(&mut c, sl).await?;
    assert_eq!(
        read_n(&mut sl, 2, EACH).await?.last().map(|m| m.offset),
        Some(6)
    );
    assert_eq!(
        end_status(&mut sl, EACH).await,
        Some(Code::ResourceExhausted)
    );
    let mut st = sub_req("s", 0, StartPosition::Earliest);
    st.stop_position = StopPosition::StopTimestamp as i32;
    st.stop_timestamp = msgs[1].timestamp;
    let mut st = subscribe(&mut c, st).await?;
    let got = read_n(&mut st, 2, EACH).await?;
    assert_eq!(got.last().map(|m| m.offset), Some(1));
    assert_eq!(
        end_status(&mut st, EACH).await,
        Some(Code::ResourceExhausted)
    );

    // Subscribe errors before the first frame.
    let mut bad = sub_req("s", 0, StartPosition::Offset);
    bad.start_offset = 4;
    bad.stop_position = StopPosition::StopOffset as i32;
    bad.stop_offset = 2;
    assert_eq!(
        subscribe(&mut c, bad).await.err().map(|e| e.code()),
        Some(Code::InvalidArgument)
    );
    let mut bad = sub_req("s", 0, StartPosition::Earliest);
    bad.start_position = 42;
    assert_eq!(
        subscribe(&mut c, bad).await.err().map(|e| e.code()),
        Some(Code::InvalidArgument)
    );
    let mut bad = sub_req("s", 0, StartPosition::Earliest);
    bad.consumer = Some(Consumer {
        group_id: "g".into(),
        ..Default::default()
    });
    assert_eq!(
        subscribe(&mut c, bad).await.err().map(|e| e.code()),
        Some(Code::InvalidArgument)
    );
    for (stream, p) in [("nope", 0), ("s", 9)] {
        let r = subscribe(&mut c, sub_req(stream, p, StartPosition::Earliest)).await;
        assert_eq!(r.err().map(|e| e.code()), Some(Code::NotFound));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_async_to_subject_occ_and_limits() -> TestResult {
    let nats_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(BIN, "solo-async", NatsMode::Embedded(nats_port))?;
    let conf = spec.data_dir.with_file_name("server.yaml");
    std::fs::write(
        &conf,
        "clustering.replication.max.bytes: 1000\nbatch.max.messages: 256\n",
    )?;
    spec.args = vec!["--config".into(), conf.display().to_string()];
    let server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    create(&mut c, "a", "a").await?;
    let mut occ = create_req("occ", "occ");
    occ.optimistic_concurrency_control = Some(NullableBool { value: true });
    c.create_stream(occ).await?;

    // TOO_LARGE: InvalidArgument on unary Publish.
    let r = c
        .publish(publish_req("a", &[7u8; 2000], AckPolicy::Leader))
        .await;
    assert_eq!(r.err().map(|e| e.code()), Some(Code::InvalidArgument));
    // OCC: right offset ok, wrong offset Unknown, NONE refused.
    let mut r = publish_req("occ", b"x", AckPolicy::Leader);
    r.get_mut().expected_offset = 0;
    assert_eq!(
        c.publish(r).await?.into_inner().ack.map(|a| a.offset),
        Some(0)
    );
    let mut r = publish_req("occ", b"x", AckPolicy::Leader);
    r.get_mut().expected_offset = 5;
    assert_eq!(
        c.publish(r).await.err().map(|e| e.code()),
        Some(Code::Unknown)
    );
    let mut r = publish_req("occ", b"x", AckPolicy::Leader);
    r.get_mut().expected_offset = -1;
    assert_eq!(
        c.publish(r).await?.into_inner().ack.map(|a| a.offset),
        Some(1)
    );
    let r = c.publish(publish_req("occ", b"x", AckPolicy::None)).await;
    assert_eq!(r.err().map(|e| e.code()), Some(Code::InvalidArgument));

    // PublishToSubject: first ack, no stream checks, ack errors left in the ack.
    let mut r = tonic::Request::new(PublishToSubjectRequest {
        subject: "a".into(),
        value: Bytes::from_static(b"pts"),
        correlation_id: "p1".into(),
        ack_policy: AckPolicy::All as i32,
        ..Default::default()
    });
    r.set_timeout(Duration::from_secs(5));
    let ack = c
        .publish_to_subject(r)
        .await?
        .into_inner()
        .ack
        .ok_or("no ack")?;
    assert_eq!(
        (ack.stream.as_str(), ack.offset, ack.correlation_id.as_str()),
        ("a", 0, "p1")
    );
    let mut r = tonic::Request::new(PublishToSubjectRequest {
        subject: "a".into(),
        value: Bytes::from(vec![1u8; 2000]),
        ..Default::default()
    });
    r.set_timeout(Duration::from_secs(5));
    let ack = c
        .publish_to_subject(r)
        .await?
        .into_inner()
        .ack
        .ok_or("no ack")?;
    assert_eq!(ack.ack_error, ack::Error::TooLarge as i32);
    let r = c
        .publish_to_subject(PublishToSubjectRequest {
            subject: "a.*".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(r.err().map(|e| e.code()), Some(Code::InvalidArgument));

    // PublishAsync: 10,000 messages, acks by correlation id, errors as asyncError.
    const N: usize = 10_000;
    let mut reqs: Vec<PublishRequest> = (0..N)
        .map(|i| PublishRequest {
            stream: "a".into(),
            value: Bytes::from(format!("m{i}")),
            correlation_id: format!("c{i}"),
            ack_policy: if i % 2 == 0 {
                AckPolicy::Leader
            } else {
                AckPolicy::All
            } as i32,
            expected_offset: -1,
            ..Default::default()
        })
        .collect();
    reqs.push(PublishRequest {
        stream: "nope".into(),
        correlation_id: "bad".into(),
        ..Default::default()
    });
    reqs.push(PublishRequest {
        stream: "occ".into(),
        correlation_id: "occbad".into(),
        expected_offset: 99,
        ..Default::default()
    });
    reqs.push(PublishRequest {
        stream: "a".into(),
        correlation_id: "none".into(),
        ack_policy: AckPolicy::None as i32,
        ..Default::default()
    });
    let mut resp = c
        .publish_async(futures::stream::iter(reqs))
        .await?
        .into_inner();
    let mut acked = std::collections::BTreeMap::new();
    let mut errors = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.len() + errors.len() < N + 2 {
        match tokio::time::timeout_at(deadline, resp.next()).await {
            Ok(Some(Ok(r))) => match r.async_error {
                Some(e) => {
                    assert!(r.ack.is_some(), "asyncError responses carry an empty ack");
                    errors.insert(r.correlation_id, e.code);
                }
                None => {
                    let a = r.ack.ok_or("success without ack")?;
                    assert_eq!(r.correlation_id, a.correlation_id);
                    acked.insert(a.correlation_id, a.offset);
                }
            },
            other => {
                return Err(format!(
                    "PublishAsync ended early: {other:?} after {} acks",
                    acked.len()
                )
                .into())
            }
        }
    }
    assert_eq!(
        errors.get("bad"),
        Some(&(publish_async_error::Code::NotFound as i32))
    );
    assert_eq!(
        errors.get("occbad"),
        Some(&(publish_async_error::Code::IncorrectOffset as i32))
    );
    assert!(!acked.contains_key("none"));
    let mut offs: Vec<i64> = acked.values().copied().collect();
    offs.sort_unstable();
    assert_eq!(
        offs,
        (1..=N as i64).collect::<Vec<_>>(),
        "dense offsets after the PublishToSubject record"
    );
    // The call ends OK after the client half-closed and the acks arrived.
    let end = tokio::time::timeout(Duration::from_secs(10), resp.next()).await?;
    assert!(end.is_none(), "expected a clean end, got {end:?}");

    // Subscribe reads all of them back in order.
    let mut sub = subscribe(&mut c, sub_req("a", 0, StartPosition::Earliest)).await?;
    let all = read_n(&mut sub, N + 2, EACH).await?;
    assert!(all.iter().enumerate().all(|(i, m)| m.offset == i as i64));
    assert_eq!(all[1].value, Bytes::from_static(b"m0"));
    assert_eq!(all[N].value, Bytes::from(format!("m{}", N - 1)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_acknowledged_messages() -> TestResult {
    let (mut server, _) = standalone("solo-restart")?;
    let spec = server.spec.clone();
    let mut c = client(&server).await?;
    let mut req = create_req("r", "r");
    req.partitions = 2;
    c.create_stream(req).await?;
    for i in 0..50 {
        let mut r = publish_req("r", format!("a{i}").as_bytes(), AckPolicy::All);
        r.get_mut().partition = i % 2;
        c.publish(r).await?;
    }
    // Clean stop (SIGTERM) with a subscription open: it is drained (ended with Unavailable, so
    // the client resubscribes elsewhere), the process exits within the bound after its last
    // shutdown step, and a restart on the same data keeps everything acknowledged.
    let mut sub = subscribe(&mut c, sub_req("r", 0, StartPosition::Earliest)).await?;
    read_n(&mut sub, 25, EACH).await?;
    let stopping = std::time::Instant::now();
    assert!(
        server.stop(Duration::from_secs(10)),
        "server did not stop within 10 s:\n{}",
        server.log_tail()
    );
    eprintln!("SIGTERM to exit: {:?}", stopping.elapsed());
    assert!(
        server
            .log_tail()
            .lines()
            .any(|l| l.contains("drawbridge_server::app") && l.trim_end().ends_with(" stopped")),
        "no clean shutdown:\n{}",
        server.log_tail()
    );
    assert_eq!(end_status(&mut sub, EACH).await, Some(Code::Unavailable));
    let mut server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    for i in 50..100 {
        let mut r = publish_req("r", format!("a{i}").as_bytes(), AckPolicy::All);
        r.get_mut().partition = i % 2;
        c.publish(r)
            .await
            .map_err(|e| format!("publish {i} after restart: {e}\n{}", server.log_tail()))?;
    }
    // SIGKILL: ALL-acked messages survive.
    server.kill();
    let server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    for p in 0..2 {
        let mut sub = subscribe(&mut c, sub_req("r", p, StartPosition::Earliest)).await?;
        let got = read_n(&mut sub, 50, EACH).await?;
        let want: Vec<String> = (0..100)
            .filter(|i| i % 2 == p)
            .map(|i| format!("a{i}"))
            .collect();
        let have: Vec<String> = got
            .iter()
            .map(|m| String::from_utf8_lossy(&m.value).into_owned())
            .collect();
        assert_eq!(have, want, "partition {p}");
    }
    let md = c
        .fetch_metadata(FetchMetadataRequest::default())
        .await?
        .into_inner();
    assert_eq!(md.stream_metadata[0].partitions[&0].high_watermark, 49);
    Ok(())
}

/// `storage.sync.policy: interval` (and `never`): messages are acknowledged once in the page
/// cache; they publish, read back, and survive a SIGKILL of the process (not of the machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_sync_policies_publish_read_back_and_survive_a_process_kill() -> TestResult {
    for (id, policy) in [
        ("solo-lazy-interval", "interval"),
        ("solo-lazy-never", "never"),
    ] {
        let nats_port = drawbridge_tests::ports::free_port()?;
        let mut spec = ServerSpec::new(BIN, id, NatsMode::Embedded(nats_port))?;
        let conf = spec.data_dir.with_file_name(format!("{id}.yaml"));
        std::fs::write(
            &conf,
            format!("storage:\n  sync:\n    policy: {policy}\n    interval: 50ms\n"),
        )?;
        spec.args.push("--config".into());
        spec.args.push(conf.display().to_string());
        let mut server = DrawbridgeServer::start(&spec)?;
        let mut c = client(&server).await?;
        create(&mut c, "lazy", "lazy").await?;
        const N: usize = 200;
        for i in 0..N {
            let policy = if i % 2 == 0 {
                AckPolicy::All
            } else {
                AckPolicy::Leader
            };
            let ack = c
                .publish(publish_req("lazy", format!("l{i}").as_bytes(), policy))
                .await
                .map_err(|e| format!("publish {i} ({policy:?}): {e}\n{}", server.log_tail()))?
                .into_inner()
                .ack
                .ok_or("publish without an ack")?;
            assert_eq!(ack.offset, i as i64, "{id}");
        }
        let mut sub = subscribe(&mut c, sub_req("lazy", 0, StartPosition::Earliest)).await?;
        let got = read_n(&mut sub, N, EACH).await?;
        assert!(got.iter().enumerate().all(|(i, m)| m.offset == i as i64));
        assert_eq!(got[N - 1].value, Bytes::from(format!("l{}", N - 1)));
        drop(sub);
        // A process crash keeps everything acknowledged: the bytes are in the page cache.
        server.kill();
        let server = DrawbridgeServer::start(&spec)?;
        let mut c = client(&server).await?;
        // The restarted node may still be electing itself (bounded retry).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut sub = loop {
            match subscribe(&mut c, sub_req("lazy", 0, StartPosition::Earliest)).await {
                Ok(s) => break s,
                Err(e)
                    if e.code() == Code::FailedPrecondition
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return Err(format!("{id}: {e}\n{}", server.log_tail()).into()),
            }
        };
        let got = read_n(&mut sub, N, EACH).await?;
        let have: Vec<String> = got
            .iter()
            .map(|m| String::from_utf8_lossy(&m.value).into_owned())
            .collect();
        let want: Vec<String> = (0..N).map(|i| format!("l{i}")).collect();
        assert_eq!(have, want, "{id} after SIGKILL");
    }
    Ok(())
}

/// One HTTP/1.1 request on a fresh connection; returns (status code, body).
async fn http(port: u16, request: &str) -> TestResult<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(EACH, conn.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

pub(crate) async fn get(port: u16, path: &str) -> TestResult<(u16, String)> {
    http(port, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")).await
}

/// `metrics.listen`: `/healthz`, `/readyz` and Prometheus `/metrics` over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_over_http() -> TestResult {
    let nats_port = drawbridge_tests::ports::free_port()?;
    let metrics_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(BIN, "solo-metrics", NatsMode::Embedded(nats_port))?;
    // The flag form of `metrics.listen` (the key is covered by the config tests).
    spec.args.push("--metrics-listen".into());
    spec.args.push(format!("127.0.0.1:{metrics_port}"));
    let server = DrawbridgeServer::start(&spec)?;
    assert_eq!(get(metrics_port, "/healthz").await?.0, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(metrics_port, "/readyz").await?;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "not ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = client(&server).await?;
    create(&mut c, "m\"x", "m").await?;
    for i in 0..3 {
        c.publish(publish_req(
            "m\"x",
            format!("v{i}").as_bytes(),
            AckPolicy::All,
        ))
        .await?;
    }
    let mut sub = subscribe(&mut c, sub_req("m\"x", 0, StartPosition::Earliest)).await?;
    let msgs = read_n(&mut sub, 3, EACH).await?;
    // messagesReceivedTimestamps: first and latest reception on the leader.
    let pm = c
        .fetch_partition_metadata(FetchPartitionMetadataRequest {
            stream: "m\"x".into(),
            partition: 0,
        })
        .await?
        .into_inner()
        .metadata
        .ok_or("no partition metadata")?;
    let ts = pm
        .messages_received_timestamps
        .ok_or("no messagesReceivedTimestamps")?;
    assert_eq!(ts.first_timestamp, msgs[0].timestamp, "{ts:?}");
    assert_eq!(ts.latest_timestamp, msgs[2].timestamp, "{ts:?}");
    let md = c
        .fetch_metadata(FetchMetadataRequest::default())
        .await?
        .into_inner();
    assert_eq!(
        md.stream_metadata[0].partitions[&0].messages_received_timestamps,
        Some(ts)
    );
    let want = [
        "drawbridge_partition_messages_in_total{stream=\"m\\\"x\",partition=\"0\"} 3",
        "drawbridge_partition_bytes_in_total{stream=\"m\\\"x\",partition=\"0\"} 6",
        "drawbridge_partition_messages_out_total{stream=\"m\\\"x\",partition=\"0\"} 3",
        "drawbridge_partition_bytes_out_total{stream=\"m\\\"x\",partition=\"0\"} 6",
        "drawbridge_request_duration_seconds_count{method=\"Publish\",status=\"OK\"} 3",
        "drawbridge_request_duration_seconds_count{method=\"Subscribe\",status=\"OK\"} 1",
        "drawbridge_request_duration_seconds_bucket{method=\"Publish\",status=\"OK\",le=\"+Inf\"} 3",
        "# TYPE drawbridge_request_duration_seconds histogram",
        "drawbridge_partition_high_watermark{stream=\"m\\\"x\",partition=\"0\"} 2",
        "drawbridge_partition_log_end_offset{stream=\"m\\\"x\",partition=\"0\"} 3",
        "drawbridge_partition_leader{stream=\"m\\\"x\",partition=\"0\"} 1",
        "drawbridge_partitions_led 1",
        "drawbridge_partitions_under_replicated 0",
        "drawbridge_partitions_unavailable 0",
        "drawbridge_metadata_leader 1",
        "drawbridge_nats_connected 1",
        "# TYPE drawbridge_raft_log_fsyncs_total counter",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(metrics_port, "/metrics").await?;
        assert_eq!(status, 200);
        let missing: Vec<&&str> = want.iter().filter(|w| !body.contains(**w)).collect();
        let positive = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        };
        if missing.is_empty()
            && positive("drawbridge_raft_leader_elections_total")
            && positive("drawbridge_storage_disk_free_bytes")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing {missing:?} in:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(metrics_port, "/nope").await?.0, 404);
    assert_eq!(
        http(metrics_port, "DELETE /metrics HTTP/1.1\r\n\r\n")
            .await?
            .0,
        405
    );
    assert_eq!(http(metrics_port, "\r\n\r\n").await?.0, 400);
    // The server keeps serving after bad requests.
    assert_eq!(get(metrics_port, "/healthz").await?.0, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_by_flag() -> TestResult {
    let nats_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(BIN, "solo-json-logs", NatsMode::Embedded(nats_port))?;
    spec.args.extend(["--log-format".into(), "json".into()]);
    let mut server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    create(&mut c, "logged", "logged").await?;
    server.stop(Duration::from_secs(10));
    let log = std::fs::read_to_string(spec.log_path())?;
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the server logged nothing");
    for line in &lines {
        assert!(
            line.starts_with('{') && line.ends_with('}') && line.contains("\"level\":"),
            "not a JSON log line: {line}"
        );
    }
    Ok(())
}
