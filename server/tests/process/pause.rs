//! Pausing, readonly streams, reverse subscriptions, auto-pause and OCC on one standalone
//! server with embedded NATS (spec §4.1, §5, §9, §12).

use std::time::Duration;

use bytes::Bytes;
use drawbridge_proto::api::*;
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};
use futures::StreamExt;
use tonic::Code;

use crate::common::*;

const EACH: Duration = Duration::from_secs(10);

async fn partition_md(c: &mut Client, stream: &str, p: i32) -> TestResult<PartitionMetadata> {
    let md = c
        .fetch_metadata(FetchMetadataRequest {
            streams: vec![stream.into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let s = md.stream_metadata.first().ok_or("no stream metadata")?;
    Ok(s.partitions.get(&p).cloned().ok_or("no partition")?)
}

/// Waits (bounded by `wait`, polling) until the partition's paused flag is `paused`.
async fn wait_paused(
    c: &mut Client,
    stream: &str,
    p: i32,
    paused: bool,
    wait: Duration,
) -> TestResult {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if partition_md(c, stream, p).await?.paused == paused {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{stream}/{p} paused != {paused} after {wait:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pause_req(name: &str, partitions: Vec<i32>, resume_all: bool) -> PauseStreamRequest {
    PauseStreamRequest {
        name: name.into(),
        partitions,
        resume_all,
    }
}

fn readonly_req(name: &str, partitions: Vec<i32>, readonly: bool) -> SetStreamReadonlyRequest {
    SetStreamReadonlyRequest {
        name: name.into(),
        partitions,
        readonly,
    }
}

fn values(ms: &[Message]) -> Vec<String> {
    ms.iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect()
}

/// Pause some or all partitions; errors; a subscription without `resume` fails, one open
/// during the pause ends; the state survives a restart; a gRPC publish, a NATS publish
/// (`resumeAll`) and a subscription with `resume` resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_restart() -> TestResult {
    let (mut server, nats_port) = standalone("solo-pause")?;
    let spec = server.spec.clone();
    let mut c = client(&server).await?;
    let mut req = create_req("p", "p");
    req.partitions = 2;
    c.create_stream(req).await?;
    c.publish(publish_req("p", b"m0", AckPolicy::All)).await?;

    // Errors: unknown stream or partition NotFound; no name InvalidArgument.
    for (r, code) in [
        (pause_req("nope", vec![], false), Code::NotFound),
        (pause_req("p", vec![7], false), Code::NotFound),
        (pause_req("", vec![], false), Code::InvalidArgument),
    ] {
        let got = c.pause_stream(r.clone()).await.err().map(|e| e.code());
        assert_eq!(got, Some(code), "{r:?}");
    }
    assert!(!partition_md(&mut c, "p", 1).await?.paused);

    // An open subscription ends with FailedPrecondition when its partition is paused.
    let mut sub = subscribe(&mut c, sub_req("p", 0, StartPosition::Earliest)).await?;
    read_n(&mut sub, 1, EACH).await?;
    c.pause_stream(pause_req("p", vec![], false)).await?;
    assert_eq!(
        end_status(&mut sub, EACH).await,
        Some(Code::FailedPrecondition)
    );
    for p in 0..2 {
        let md = partition_md(&mut c, "p", p).await?;
        assert!(md.paused, "partition {p}");
        let ts = md.pause_timestamps.ok_or("no pause timestamps")?;
        assert!(ts.first_timestamp > 0 && ts.latest_timestamp >= ts.first_timestamp);
    }
    // Without `resume`, a subscription to a paused partition fails after the first frame.
    let mut sub = subscribe(&mut c, sub_req("p", 0, StartPosition::Earliest)).await?;
    assert_eq!(
        end_status(&mut sub, EACH).await,
        Some(Code::FailedPrecondition)
    );
    assert!(partition_md(&mut c, "p", 0).await?.paused);

    // Paused survives a restart.
    assert!(
        server.stop(Duration::from_secs(10)),
        "{}",
        server.log_tail()
    );
    let server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    for p in 0..2 {
        assert!(partition_md(&mut c, "p", p).await?.paused, "partition {p}");
    }

    // A gRPC publish resumes its partition only (no resumeAll) and is stored.
    let ack = c
        .publish(publish_req("p", b"m1", AckPolicy::All))
        .await
        .map_err(|e| format!("{e}\n{}", server.log_tail()))?
        .into_inner()
        .ack
        .ok_or("no ack")?;
    assert_eq!(ack.offset, 1);
    assert!(!partition_md(&mut c, "p", 0).await?.paused);
    assert!(partition_md(&mut c, "p", 1).await?.paused);
    // A subscription with `resume` resumes it.
    let mut r = sub_req("p", 1, StartPosition::Earliest);
    r.resume = true;
    let _sub = subscribe(&mut c, r).await?;
    assert!(!partition_md(&mut c, "p", 1).await?.paused);

    // resumeAll: a raw NATS publish to partition 1 resumes both and is stored.
    c.pause_stream(pause_req("p", vec![], true)).await?;
    let nc = async_nats::connect(format!("nats://127.0.0.1:{nats_port}")).await?;
    nc.publish("p.1", Bytes::from_static(b"raw")).await?;
    nc.flush().await?;
    wait_paused(&mut c, "p", 0, false, EACH).await?;
    wait_paused(&mut c, "p", 1, false, EACH).await?;
    let mut sub = subscribe(&mut c, sub_req("p", 1, StartPosition::Earliest)).await?;
    assert_eq!(values(&read_n(&mut sub, 1, EACH).await?), vec!["raw"]);
    let md = partition_md(&mut c, "p", 0).await?;
    let ts = md.pause_timestamps.ok_or("no pause timestamps")?;
    assert!(ts.latest_timestamp > ts.first_timestamp);
    Ok(())
}

/// Readonly: publishes refused (FailedPrecondition, asyncError READONLY), NATS messages
/// dropped, subscribers get every message and then ResourceExhausted; reversible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_ends_subscribers_and_refuses_publishes() -> TestResult {
    let (server, nats_port) = standalone("solo-readonly")?;
    let mut c = client(&server).await?;
    let mut req = create_req("ro", "ro");
    req.partitions = 2;
    c.create_stream(req).await?;
    for i in 0..3 {
        c.publish(publish_req(
            "ro",
            format!("m{i}").as_bytes(),
            AckPolicy::All,
        ))
        .await?;
    }
    for (r, code) in [
        (readonly_req("nope", vec![], true), Code::NotFound),
        (readonly_req("ro", vec![5], true), Code::NotFound),
        (readonly_req("", vec![], true), Code::InvalidArgument),
    ] {
        let got = c
            .set_stream_readonly(r.clone())
            .await
            .err()
            .map(|e| e.code());
        assert_eq!(got, Some(code), "{r:?}");
    }

    // A tailing subscriber reads everything, then ends when the partition becomes readonly.
    let mut tail = subscribe(&mut c, sub_req("ro", 0, StartPosition::Earliest)).await?;
    assert_eq!(
        values(&read_n(&mut tail, 3, EACH).await?),
        ["m0", "m1", "m2"]
    );
    c.set_stream_readonly(readonly_req("ro", vec![0], true))
        .await?;
    assert_eq!(
        end_status(&mut tail, EACH).await,
        Some(Code::ResourceExhausted)
    );
    let md = partition_md(&mut c, "ro", 0).await?;
    assert!(md.readonly);
    assert!(
        md.readonly_timestamps
            .ok_or("no timestamps")?
            .first_timestamp
            > 0
    );
    assert!(!partition_md(&mut c, "ro", 1).await?.readonly);

    // A new subscriber gets every message, then the end.
    let mut sub = subscribe(&mut c, sub_req("ro", 0, StartPosition::Earliest)).await?;
    assert_eq!(
        values(&read_n(&mut sub, 3, EACH).await?),
        ["m0", "m1", "m2"]
    );
    assert_eq!(
        end_status(&mut sub, EACH).await,
        Some(Code::ResourceExhausted)
    );

    // Publishes are refused; NATS messages are not appended.
    let r = c.publish(publish_req("ro", b"no", AckPolicy::Leader)).await;
    assert_eq!(r.err().map(|e| e.code()), Some(Code::FailedPrecondition));
    let mut resp = c
        .publish_async(futures::stream::iter(vec![PublishRequest {
            stream: "ro".into(),
            correlation_id: "ro1".into(),
            expected_offset: -1,
            ..Default::default()
        }]))
        .await?
        .into_inner();
    let first = tokio::time::timeout(EACH, resp.next())
        .await?
        .ok_or("no async answer")??;
    let err = first.async_error.ok_or("no async error")?;
    assert_eq!(err.code, publish_async_error::Code::Readonly as i32);
    let nc = async_nats::connect(format!("nats://127.0.0.1:{nats_port}")).await?;
    nc.publish("ro", Bytes::from_static(b"raw")).await?;
    nc.flush().await?;
    // Partition 1 is still writable (and a marker that NATS traffic was processed).
    let mut r = publish_req("ro", b"p1", AckPolicy::All);
    r.get_mut().partition = 1;
    c.publish(r).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(partition_md(&mut c, "ro", 0).await?.high_watermark, 2);

    // Reversible.
    c.set_stream_readonly(readonly_req("ro", vec![], false))
        .await?;
    let ack = c
        .publish(publish_req("ro", b"m3", AckPolicy::All))
        .await?
        .into_inner()
        .ack
        .ok_or("no ack")?;
    assert_eq!(ack.offset, 3);
    Ok(())
}

/// Reverse subscriptions: newest to oldest, then Unknown "EOF"; start offsets, stop offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_subscribe() -> TestResult {
    let (server, _) = standalone("solo-reverse")?;
    let mut c = client(&server).await?;
    create(&mut c, "rev", "rev").await?;
    create(&mut c, "empty", "empty").await?;
    for i in 0..5 {
        c.publish(publish_req(
            "rev",
            format!("m{i}").as_bytes(),
            AckPolicy::All,
        ))
        .await?;
    }
    let rev = |start: StartPosition| {
        let mut r = sub_req("rev", 0, start);
        r.reverse = true;
        r
    };

    let mut sub = subscribe(&mut c, rev(StartPosition::NewOnly)).await?;
    let got = read_n(&mut sub, 5, EACH).await?;
    assert_eq!(values(&got), ["m4", "m3", "m2", "m1", "m0"]);
    let offsets: Vec<i64> = got.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, [4, 3, 2, 1, 0]);
    match tokio::time::timeout(EACH, sub.next()).await? {
        Some(Err(e)) => assert_eq!((e.code(), e.message()), (Code::Unknown, "EOF")),
        other => return Err(format!("expected EOF, got {other:?}").into()),
    }

    let mut r = rev(StartPosition::Offset);
    r.start_offset = 3;
    r.stop_position = StopPosition::StopOffset as i32;
    r.stop_offset = 2;
    let mut sub = subscribe(&mut c, r).await?;
    assert_eq!(values(&read_n(&mut sub, 2, EACH).await?), ["m3", "m2"]);
    assert_eq!(
        end_status(&mut sub, EACH).await,
        Some(Code::ResourceExhausted)
    );

    // A stop above the start is refused; an empty partition ends at once.
    let mut r = rev(StartPosition::Offset);
    r.start_offset = 1;
    r.stop_position = StopPosition::StopOffset as i32;
    r.stop_offset = 3;
    let e = subscribe(&mut c, r).await.err().map(|e| e.code());
    assert_eq!(e, Some(Code::InvalidArgument));
    let mut r = sub_req("empty", 0, StartPosition::Latest);
    r.reverse = true;
    let mut sub = subscribe(&mut c, r).await?;
    assert_eq!(end_status(&mut sub, EACH).await, Some(Code::Unknown));
    Ok(())
}

/// `streams.auto.pause.time`: an idle partition pauses; the per-stream override 0 disables
/// it; `autoPauseDisableIfSubscribers` keeps a subscribed partition running; a publish resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_pause_after_idle_time() -> TestResult {
    let nats_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(BIN, "solo-autopause", NatsMode::Embedded(nats_port))?;
    let conf = spec.data_dir.with_file_name("autopause.yaml");
    std::fs::write(&conf, "streams.auto.pause.time: 1s\n")?;
    spec.args = vec!["--config".into(), conf.display().to_string()];
    let server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    create(&mut c, "idle", "idle").await?;
    let mut never = create_req("never", "never");
    never.auto_pause_time = Some(NullableInt64 { value: 0 });
    c.create_stream(never).await?;
    let mut subscribed = create_req("subscribed", "subscribed");
    subscribed.auto_pause_disable_if_subscribers = Some(NullableBool { value: true });
    c.create_stream(subscribed).await?;
    let sub = subscribe(&mut c, sub_req("subscribed", 0, StartPosition::NewOnly)).await?;
    c.publish(publish_req("idle", b"x", AckPolicy::All)).await?;

    wait_paused(&mut c, "idle", 0, true, EACH).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!partition_md(&mut c, "never", 0).await?.paused);
    assert!(!partition_md(&mut c, "subscribed", 0).await?.paused);
    drop(sub);
    wait_paused(&mut c, "subscribed", 0, true, EACH).await?;

    // A publish resumes the idle partition, and it pauses again later.
    let ack = c
        .publish(publish_req("idle", b"y", AckPolicy::All))
        .await?
        .into_inner()
        .ack
        .ok_or("no ack")?;
    assert_eq!(ack.offset, 1);
    assert!(!partition_md(&mut c, "idle", 0).await?.paused);
    wait_paused(&mut c, "idle", 0, true, EACH).await?;
    Ok(())
}

/// OCC: the expected offset is checked at append; a mismatch writes nothing (INCORRECT_OFFSET
/// in the ack of a NATS publish); -1 does not check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occ_mismatch_writes_nothing() -> TestResult {
    let (server, nats_port) = standalone("solo-occ")?;
    let mut c = client(&server).await?;
    let mut occ = create_req("occ", "occ");
    occ.optimistic_concurrency_control = Some(NullableBool { value: true });
    c.create_stream(occ).await?;
    let mut r = publish_req("occ", b"a", AckPolicy::All);
    r.get_mut().expected_offset = 0;
    c.publish(r).await?;
    let mut r = publish_req("occ", b"b", AckPolicy::All);
    r.get_mut().expected_offset = 0;
    let e = c
        .publish(r)
        .await
        .err()
        .ok_or("stale expected offset accepted")?;
    assert_eq!(e.code(), Code::Unknown);

    // Over NATS: the ack carries INCORRECT_OFFSET.
    let nc = async_nats::connect(format!("nats://127.0.0.1:{nats_port}")).await?;
    let inbox = nc.new_inbox();
    let mut acks = nc.subscribe(inbox.clone()).await?;
    let env = drawbridge_server::envelope::encode_publish(&Message {
        value: Bytes::from_static(b"c"),
        ack_inbox: inbox,
        ack_policy: AckPolicy::Leader as i32,
        offset: 7,
        ..Default::default()
    });
    nc.publish("occ", env).await?;
    nc.flush().await?;
    let m = tokio::time::timeout(EACH, acks.next())
        .await?
        .ok_or("ack inbox closed")?;
    let ack = drawbridge_server::envelope::decode_ack(&m.payload)?;
    assert_eq!(ack.ack_error, ack::Error::IncorrectOffset as i32);
    assert_eq!(partition_md(&mut c, "occ", 0).await?.high_watermark, 0);

    let mut r = publish_req("occ", b"d", AckPolicy::All);
    r.get_mut().expected_offset = -1;
    let ack = c.publish(r).await?.into_inner().ack.ok_or("no ack")?;
    assert_eq!(ack.offset, 1);
    let mut sub = subscribe(&mut c, sub_req("occ", 0, StartPosition::Earliest)).await?;
    assert_eq!(values(&read_n(&mut sub, 2, EACH).await?), ["a", "d"]);
    Ok(())
}

/// `activity.stream.enabled`: `__activity` is created and every metadata operation is in it,
/// in order, as an `ActivityStreamEvent` with increasing ids; it survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_stream_reports_metadata_operations() -> TestResult {
    use prost::Message as _;
    let nats_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(BIN, "solo-activity", NatsMode::Embedded(nats_port))?;
    let conf = spec.data_dir.with_file_name("activity.yaml");
    std::fs::write(&conf, "activity.stream.enabled: true\n")?;
    spec.args = vec!["--config".into(), conf.display().to_string()];
    let mut server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    let deadline = tokio::time::Instant::now() + EACH;
    while partition_md(&mut c, "__activity", 0)
        .await
        .map_or(true, |p| p.leader.is_empty())
    {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no __activity stream\n{}", server.log_tail()).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut req = create_req("act", "act");
    req.partitions = 2;
    c.create_stream(req).await?;
    c.pause_stream(pause_req("act", vec![1], true)).await?;
    let mut r = publish_req("act", b"x", AckPolicy::All);
    r.get_mut().partition = 1;
    c.publish(r).await?;
    c.set_stream_readonly(readonly_req("act", vec![], true))
        .await?;
    c.delete_stream(DeleteStreamRequest { name: "act".into() })
        .await?;

    let read_events = |mut sub: tonic::Streaming<Message>, n: usize| async move {
        let msgs = read_n(&mut sub, n, EACH).await?;
        msgs.iter()
            .map(|m| ActivityStreamEvent::decode(m.value.clone()).map_err(|e| e.into()))
            .collect::<TestResult<Vec<_>>>()
    };
    let sub = subscribe(&mut c, sub_req("__activity", 0, StartPosition::Earliest)).await?;
    let events = read_events(sub, 5).await?;
    let ops: Vec<i32> = events.iter().map(|e| e.op).collect();
    assert_eq!(
        ops,
        [
            ActivityStreamOp::CreateStream as i32,
            ActivityStreamOp::PauseStream as i32,
            ActivityStreamOp::ResumeStream as i32,
            ActivityStreamOp::SetStreamReadonly as i32,
            ActivityStreamOp::DeleteStream as i32,
        ]
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id), "{events:?}");
    assert_eq!(
        events[0]
            .create_stream_op
            .as_ref()
            .map(|o| o.partitions.clone()),
        Some(vec![0, 1])
    );
    let pause = events[1].pause_stream_op.as_ref().ok_or("no pause op")?;
    assert_eq!(
        (pause.partitions.clone(), pause.resume_all),
        (vec![1], true)
    );
    let resume = events[2].resume_stream_op.as_ref().ok_or("no resume op")?;
    assert_eq!(resume.partitions, vec![1]);
    let ro = events[3]
        .set_stream_readonly_op
        .as_ref()
        .ok_or("no readonly op")?;
    assert_eq!((ro.partitions.clone(), ro.readonly), (vec![0, 1], true));

    // After a restart, the next operation follows (an event may repeat with its id if the
    // stop came between its publish and the record of it: at least once).
    assert!(
        server.stop(Duration::from_secs(10)),
        "{}",
        server.log_tail()
    );
    let server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    create(&mut c, "act2", "act2").await?;
    let mut sub = subscribe(&mut c, sub_req("__activity", 0, StartPosition::Earliest)).await?;
    let mut ids = std::collections::BTreeMap::new();
    for _ in 0..12 {
        let m = read_n(&mut sub, 1, EACH).await?;
        let e = ActivityStreamEvent::decode(m[0].value.clone())?;
        let done = e
            .create_stream_op
            .as_ref()
            .is_some_and(|o| o.stream == "act2");
        if let Some(prev) = ids.insert(e.id, e.clone()) {
            assert_eq!(prev, e, "one id, one event");
        }
        if done {
            break;
        }
    }
    let ops: Vec<i32> = ids.values().map(|e| e.op).collect();
    assert_eq!(ops.len(), 6, "{ids:?}");
    assert_eq!(ops[5], ActivityStreamOp::CreateStream as i32);
    Ok(())
}

/// Three servers on a real `nats-server`: a pause or readonly change made through any node is
/// forwarded to the metadata leader and visible on every node; a publish through another node
/// resumes the partition everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_readonly_are_replicated_to_every_node() -> TestResult {
    use drawbridge_tests::nats::NatsServer;
    use drawbridge_tests::server::{cluster, cluster_specs};
    let Some(nats) = NatsServer::start_or_skip("pause_and_readonly_are_replicated") else {
        return Ok(());
    };
    let specs = cluster_specs(std::path::Path::new(BIN), &nats.url(), 3)?;
    let servers = cluster(&specs)?;
    let mut clients = Vec::new();
    for s in &servers {
        clients.push(client(s).await?);
    }
    let mut req = create_req("cp", "cp");
    req.replication_factor = 3;
    clients[1].create_stream(req).await?;

    clients[2]
        .pause_stream(pause_req("cp", vec![], false))
        .await?;
    for c in clients.iter_mut() {
        wait_paused(c, "cp", 0, true, EACH).await?;
    }
    // The publish may reach a node before it has seen the partition's leader: retry (bounded).
    let deadline = tokio::time::Instant::now() + EACH;
    loop {
        match clients[0]
            .publish(publish_req("cp", b"x", AckPolicy::All))
            .await
        {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("publish retried: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    for c in clients.iter_mut() {
        wait_paused(c, "cp", 0, false, EACH).await?;
    }

    clients[1]
        .set_stream_readonly(readonly_req("cp", vec![], true))
        .await?;
    for c in clients.iter_mut() {
        let deadline = tokio::time::Instant::now() + EACH;
        while !partition_md(c, "cp", 0).await?.readonly {
            assert!(
                tokio::time::Instant::now() < deadline,
                "readonly not visible"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let r = clients[2]
        .publish(publish_req("cp", b"y", AckPolicy::All))
        .await;
    assert_eq!(r.err().map(|e| e.code()), Some(Code::FailedPrecondition));
    Ok(())
}

/// `__activity` across a metadata leader change, on three servers: the new metadata leader
/// publishes the operations committed before and after the kill of the old one; every
/// operation is in the stream (at least once, one event per id) and their first appearances
/// follow raft order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_stream_continues_after_a_metadata_leader_kill() -> TestResult {
    use drawbridge_tests::nats::NatsServer;
    use drawbridge_tests::server::{cluster, cluster_specs};
    use prost::Message as _;
    let Some(nats) = NatsServer::start_or_skip("activity_after_metadata_leader_kill") else {
        return Ok(());
    };
    let mut specs = cluster_specs(std::path::Path::new(BIN), &nats.url(), 3)?;
    let mut metrics = Vec::new();
    for spec in &mut specs {
        let port = drawbridge_tests::ports::free_port()?;
        let conf = spec
            .data_dir
            .with_file_name(format!("{}-act.yaml", spec.id));
        std::fs::write(
            &conf,
            format!("activity.stream.enabled: true\nmetrics.listen: 127.0.0.1:{port}\n"),
        )?;
        spec.args
            .extend(["--config".into(), conf.display().to_string()]);
        metrics.push(port);
    }
    let mut servers: Vec<Option<DrawbridgeServer>> =
        cluster(&specs)?.into_iter().map(Some).collect();
    let logs = |servers: &[Option<DrawbridgeServer>]| {
        servers
            .iter()
            .flatten()
            .map(|s| format!("--- {} ---\n{}", s.spec.id, s.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // The metadata leader, from each node's `drawbridge_metadata_leader` gauge (≤ 20 s).
    let leader =
        match drawbridge_tests::metrics::metadata_leader(&metrics, &[], Duration::from_secs(20)) {
            Ok(i) => i,
            Err(e) => return Err(format!("{e}\n{}", logs(&servers)).into()),
        };
    let survivor = (leader + 1) % 3;

    // Creates `name` through server `i`, retrying (bounded) while the cluster fails over.
    async fn create_with_retry(s: &DrawbridgeServer, name: &str) -> TestResult {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = match client(s).await {
                Ok(mut c) => c.create_stream(create_req(name, name)).await.map(drop),
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            };
            match r {
                Ok(()) => return Ok(()),
                // An attempt that timed out may have been applied: the retry then finds it.
                Err(e) if e.code() == Code::AlreadyExists => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("create {name} retried: {e}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    // Reads `__activity` through server `node` until every name in `want` was created in it
    // (≤ 60 events, ≤ 45 s), recording each id's event and the order of first appearances.
    struct Seen {
        by_id: std::collections::BTreeMap<u64, ActivityStreamEvent>,
        first_seen: Vec<u64>,
        created: Vec<String>,
    }
    async fn read_activity(node: &DrawbridgeServer, want: &[&str], seen: &mut Seen) -> TestResult {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
        let mut sub = loop {
            let attempt = async {
                let mut c = client(node).await?;
                let mut req = sub_req("__activity", 0, StartPosition::Earliest);
                // The node may be a follower of `__activity`: read its committed copy.
                req.read_isr_replica = true;
                let sub = subscribe(&mut c, req).await?;
                TestResult::Ok(sub)
            };
            match attempt.await {
                Ok(sub) => break sub,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("subscribe to __activity retried: {e}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => return Err(e),
            }
        };
        // Events already seen come again (a new subscription starts at the earliest offset).
        let mut this_read = std::collections::BTreeSet::new();
        for _ in 0..60 {
            if want.iter().all(|w| seen.created.iter().any(|c| c == w)) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = read_n(&mut sub, 1, left)
                .await
                .map_err(|e| format!("__activity stalled with creates {:?}: {e}", seen.created))?;
            let e = ActivityStreamEvent::decode(m[0].value.clone())?;
            this_read.insert(e.id);
            match seen.by_id.insert(e.id, e.clone()) {
                Some(prev) => assert_eq!(prev, e, "one id, one event"),
                None => {
                    seen.first_seen.push(e.id);
                    if let Some(op) = e
                        .create_stream_op
                        .as_ref()
                        .filter(|o| o.stream.starts_with("act-"))
                    {
                        seen.created.push(op.stream.clone());
                    }
                }
            }
        }
        Err(format!("60 events read, creates {:?}", seen.created).into())
    }

    let names = ["act-a1", "act-a2", "act-a3", "act-b1", "act-b2", "act-b3"];
    let mut seen = Seen {
        by_id: Default::default(),
        first_seen: Vec::new(),
        created: Vec::new(),
    };
    for name in &names[..3] {
        create_with_retry(servers[survivor].as_ref().ok_or("no survivor")?, name).await?;
    }
    read_activity(
        servers[survivor].as_ref().ok_or("no survivor")?,
        &names[..3],
        &mut seen,
    )
    .await
    .map_err(|e| format!("before the kill: {e}\n{}", logs(&servers)))?;
    // Two creates right before the kill: their events may still be unpublished when the old
    // leader dies, so the new leader must publish them.
    for name in &names[3..5] {
        create_with_retry(servers[survivor].as_ref().ok_or("no survivor")?, name).await?;
    }
    if let Some(mut s) = servers[leader].take() {
        eprintln!("killing the metadata leader {}", s.spec.id);
        s.kill();
    }
    for name in &names[5..] {
        create_with_retry(servers[survivor].as_ref().ok_or("no survivor")?, name).await?;
    }
    read_activity(
        servers[survivor].as_ref().ok_or("no survivor")?,
        &names,
        &mut seen,
    )
    .await
    .map_err(|e| format!("after the kill: {e}\n{}", logs(&servers)))?;
    assert_eq!(seen.created, names, "creates in raft order, each once");
    assert!(
        seen.first_seen.windows(2).all(|w| w[0] < w[1]),
        "first appearances out of raft order: {:?}",
        seen.first_seen
    );
    Ok(())
}
