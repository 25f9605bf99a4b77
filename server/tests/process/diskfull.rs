//! Disk full (issue 7, fault 5): a standalone server whose data directory is a small tmpfs in a
//! private mount namespace (`unshare -m`, so nothing is mounted on the host), filled from inside
//! that namespace (`nsenter -t PID -m`): [`drawbridge_tests::tmpfs`].
//!
//! - `refuses_below_the_margin_and_recovers`: below `storage.min.free.bytes` publishes are
//!   refused with a clear error (ResourceExhausted, PublishAsync INTERNAL asyncError;
//!   PublishToSubject, refused by the leader's ingest with an UNKNOWN error ack that carries the
//!   disk-full header, answers ResourceExhausted too), reads
//!   keep working, publishes succeed again once space is freed, and every acked message is read
//!   back exactly once.
//! - `enospc_in_the_append_is_survived`: with the margin at 0 the log append itself hits
//!   ENOSPC and openraft stops the partition group; once space is freed the supervisor reopens
//!   it from disk and publishes succeed again, nothing acked lost or duplicated; a subscription
//!   open across the reopen ends with Unavailable.
//!
//! - `metadata_writes_are_refused_below_the_margin`: below the margin CreateStream and
//!   SetStreamReadonly answer ResourceExhausted at once (not at the client's deadline); with
//!   space back CreateStream succeeds.
//! - `metadata_enospc_is_waited_out`: with the margin at 0 metadata writes reach ENOSPC in the
//!   metadata raft log / state journal; the metadata group waits instead of stopping
//!   (/readyz stays 200), and once space is freed CreateStream succeeds and the new stream
//!   takes publishes that read back.
//!
//! - `publish_through_another_node_to_a_full_leader`: a two-node cluster, node-0 on the tmpfs;
//!   a unary Publish sent to node-1 for a partition node-0 leads answers ResourceExhausted
//!   with the leader's text (not Unknown), and so does a PublishToSubject to that partition's
//!   subject (the text travels in the ack's disk-full header).
//!
//! Needs root (mount). Without it the tests fail when `CI` is set and are skipped (with a note)
//! otherwise.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use drawbridge_proto::api::*;
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};
use drawbridge_tests::tmpfs;
use futures::StreamExt;
use tonic::Code;

use crate::common::{
    client, create, create_req, publish_req, sub_req, subscribe, Client, TestResult, BIN,
};
use crate::limits::metrics;

/// tmpfs size of the data directory.
const TMPFS: &str = "32m";

/// A standalone server on a tmpfs data dir with `storage.min.free.bytes: min_free`, or `None`
/// (after a printed note) when mounting is not possible outside CI.
fn start(id: &str, min_free: u64, metrics_port: u16) -> TestResult<Option<DrawbridgeServer>> {
    let nats_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(BIN, id, NatsMode::Embedded(nats_port))?;
    if !on_tmpfs(&mut spec, min_free, metrics_port)? {
        return Ok(None);
    }
    Ok(Some(DrawbridgeServer::start(&spec)?))
}

/// Makes `spec` run on a tmpfs data dir with `storage.min.free.bytes: min_free` and metrics on
/// `metrics_port`; false (after a printed note) when mounting is not possible outside CI.
fn on_tmpfs(spec: &mut ServerSpec, min_free: u64, metrics_port: u16) -> TestResult<bool> {
    if !tmpfs::mount_or_skip(&spec.id, &spec.data_dir.with_file_name("probe"))? {
        return Ok(false);
    }
    let conf = spec.data_dir.with_file_name("diskfull.yaml");
    std::fs::write(&conf, format!("storage.min.free.bytes: {min_free}\n"))?;
    spec.args.extend([
        "--config".into(),
        conf.display().to_string(),
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics_port}"),
    ]);
    spec.wrapper = tmpfs::wrapper(&spec.data_dir, TMPFS);
    Ok(true)
}

/// Fills the server's tmpfs so that `leave_mib` MiB stay available ([`tmpfs::fill`]).
fn fill(s: &DrawbridgeServer, leave_mib: u32) -> TestResult {
    let pid = s.pid().ok_or("server has no pid")?;
    Ok(tmpfs::fill(pid, &s.spec.data_dir, leave_mib)?)
}

/// Deletes the filler ([`tmpfs::unfill`]).
fn unfill(s: &DrawbridgeServer) -> TestResult {
    let pid = s.pid().ok_or("server has no pid")?;
    Ok(tmpfs::unfill(pid, &s.spec.data_dir)?)
}

fn counter(text: &str, name: &str) -> u64 {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One unary publish with a LEADER ack, answered within 3 s.
async fn publish(c: &mut Client, stream: &str, value: &[u8]) -> Result<i64, tonic::Status> {
    let mut r = publish_req(stream, value, AckPolicy::Leader);
    r.set_timeout(Duration::from_secs(3));
    let ack = c.publish(r).await?.into_inner().ack;
    ack.map(|a| a.offset)
        .ok_or_else(|| tonic::Status::internal("no ack"))
}

/// Publishes `value` until it is acked (≤ `within`); returns its offset.
async fn publish_until_ok(
    c: &mut Client,
    stream: &str,
    value: &[u8],
    within: Duration,
) -> TestResult<i64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match publish(c, stream, value).await {
            Ok(off) => return Ok(off),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("publishes did not recover within {within:?}: {e}").into())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Reads the whole partition and checks that it holds every `acked` value exactly once, at its
/// acked offset, and nothing but values from `attempted`.
async fn check_log(
    c: &mut Client,
    stream: &str,
    acked: &BTreeMap<Vec<u8>, i64>,
    attempted: usize,
) -> TestResult {
    let md = c
        .fetch_partition_metadata(FetchPartitionMetadataRequest {
            stream: stream.into(),
            partition: 0,
        })
        .await?
        .into_inner()
        .metadata
        .ok_or("no partition metadata")?;
    let n = usize::try_from(md.newest_offset + 1)?;
    assert!(
        n >= acked.len() && n <= attempted,
        "{n} records for {} acked, {attempted} attempted",
        acked.len()
    );
    let mut sub = subscribe(c, sub_req(stream, 0, StartPosition::Earliest)).await?;
    let msgs = crate::common::read_n(&mut sub, n, Duration::from_secs(10)).await?;
    let mut seen: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for m in &msgs {
        assert!(
            seen.insert(m.value.to_vec(), m.offset).is_none(),
            "value stored twice (offset {})",
            m.offset
        );
    }
    for (v, off) in acked {
        assert_eq!(
            seen.get(v),
            Some(off),
            "acked message {:?} missing or moved",
            String::from_utf8_lossy(&v[..v.len().min(16)])
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_below_the_margin_and_recovers() -> TestResult {
    let metrics_port = drawbridge_tests::ports::free_port()?;
    // The default margin (8 MiB).
    let Some(mut s) = start("diskfull1", 8 << 20, metrics_port)? else {
        return Ok(());
    };
    let mut c = client(&s).await?;
    create(&mut c, "df", "df").await?;
    let mut acked = BTreeMap::new();
    let mut attempted = 0;
    for i in 0..5 {
        let v = format!("before-{i}").into_bytes();
        attempted += 1;
        acked.insert(v.clone(), publish(&mut c, "df", &v).await?);
    }

    // 4 MiB left: below the margin.
    fill(&s, 4)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let refusal = loop {
        let v = format!("during-{attempted}").into_bytes();
        attempted += 1;
        match publish(&mut c, "df", &v).await {
            Ok(off) => {
                acked.insert(v, off);
            }
            Err(e) => break e,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishes still accepted 5 s after the disk filled"
        );
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().contains("storage.min.free.bytes"),
        "{refusal:?}"
    );
    // PublishAsync: an asyncError with an empty ack.
    let req = PublishRequest {
        stream: "df".into(),
        value: Bytes::from_static(b"async-during"),
        ack_policy: AckPolicy::Leader as i32,
        correlation_id: "c1".into(),
        expected_offset: -1,
        ..Default::default()
    };
    attempted += 1;
    let mut resp = c
        .publish_async(futures::stream::iter(vec![req]))
        .await?
        .into_inner();
    let r = tokio::time::timeout(Duration::from_secs(5), resp.next())
        .await?
        .ok_or("PublishAsync ended without an answer")??;
    let e = r.async_error.ok_or("PublishAsync was not refused")?;
    assert_eq!(r.correlation_id, "c1");
    assert_eq!(e.code, publish_async_error::Code::Internal as i32, "{e:?}");
    assert!(e.message.contains("disk space"), "{e:?}");
    drop(resp);

    // PublishToSubject skips the API check: the leader's ingest refuses it with an UNKNOWN
    // error ack (as for messages published straight to NATS), which the call turns into
    // ResourceExhausted, as Publish does.
    attempted += 1;
    let mut r = tonic::Request::new(PublishToSubjectRequest {
        subject: "df".into(),
        value: Bytes::from_static(b"subject-during"),
        ack_policy: AckPolicy::Leader as i32,
        ..Default::default()
    });
    r.set_timeout(Duration::from_secs(5));
    let refusal = c
        .publish_to_subject(r)
        .await
        .err()
        .ok_or("PublishToSubject was not refused")?;
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().contains("storage.min.free.bytes"),
        "{refusal:?}"
    );

    // The server keeps serving reads.
    let md = c
        .fetch_metadata(FetchMetadataRequest {
            streams: vec!["df".into()],
            groups: vec![],
        })
        .await?
        .into_inner();
    assert_eq!(md.stream_metadata.len(), 1);
    let mut sub = subscribe(&mut c, sub_req("df", 0, StartPosition::Earliest)).await?;
    crate::common::read_n(&mut sub, 5, Duration::from_secs(5)).await?;
    drop(sub);
    let text = metrics(metrics_port).await?;
    assert!(
        counter(&text, "drawbridge_disk_full_rejections_total") >= 3,
        "{text}"
    );

    // Space back: publishes succeed again (after the cached reading expires).
    unfill(&s)?;
    for i in 0..5 {
        let v = format!("after-{i}").into_bytes();
        attempted += 1;
        let off = publish_until_ok(&mut c, "df", &v, Duration::from_secs(5)).await?;
        acked.insert(v, off);
    }
    check_log(&mut c, "df", &acked, attempted).await?;
    assert!(!s.has_exited(), "{}", s.log_tail());
    assert!(s.stop(Duration::from_secs(20)), "{}", s.log_tail());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_in_the_append_is_survived() -> TestResult {
    let metrics_port = drawbridge_tests::ports::free_port()?;
    let Some(mut s) = start("diskfull2", 0, metrics_port)? else {
        return Ok(());
    };
    let mut c = client(&s).await?;
    create(&mut c, "df", "df").await?;
    let mut acked = BTreeMap::new();
    let mut attempted = 0;
    let value = |i: usize| {
        let mut v = format!("m-{i:05}-").into_bytes();
        v.resize(64 << 10, b'x');
        v
    };
    for _ in 0..3 {
        let v = value(attempted);
        attempted += 1;
        acked.insert(v.clone(), publish(&mut c, "df", &v).await?);
    }

    // A subscription open across the reopen ends with Unavailable (subscribe again), not
    // with NotFound (which clients read as "stream deleted").
    let mut sub = subscribe(&mut c, sub_req("df", 0, StartPosition::Earliest)).await?;

    // Nothing left: the appends use up the log's preallocation, then fail.
    fill(&s, 0)?;
    let mut failure = None;
    for _ in 0..400 {
        let v = value(attempted);
        attempted += 1;
        match publish(&mut c, "df", &v).await {
            Ok(off) => {
                acked.insert(v, off);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.ok_or("400 × 64 KiB publishes on a full disk all succeeded")?;
    eprintln!(
        "first failure after {} acked publishes: {failure:?}",
        acked.len()
    );
    // The process keeps serving.
    c.fetch_metadata(FetchMetadataRequest::default()).await?;
    assert!(!s.has_exited(), "{}", s.log_tail());

    unfill(&s)?;
    for _ in 0..3 {
        let v = value(attempted);
        attempted += 1;
        let off = publish_until_ok(&mut c, "df", &v, Duration::from_secs(15)).await?;
        acked.insert(v, off);
    }
    let text = metrics(metrics_port).await?;
    assert!(
        counter(&text, "drawbridge_partition_group_restarts_total") >= 1,
        "{text}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ended = loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => break e,
            Ok(None) => return Err("subscription ended without a status".into()),
            Err(_) => return Err("subscription still open 10 s after the reopen".into()),
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    drop(sub);
    let log = std::fs::read_to_string(s.spec.log_path())?;
    let notable: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("reopening it from disk") || l.contains("ERROR") || l.contains("WARN")
        })
        .collect();
    eprintln!("{}", notable.join("\n"));
    assert!(
        notable.iter().any(|l| l.contains("reopening it from disk")),
        "{}",
        s.log_tail()
    );
    check_log(&mut c, "df", &acked, attempted).await?;
    assert!(s.stop(Duration::from_secs(20)), "{}", s.log_tail());
    Ok(())
}

/// A CreateStream with a 3 s deadline.
async fn create_within(c: &mut Client, name: &str) -> Result<(), tonic::Status> {
    let mut r = tonic::Request::new(create_req(name, name));
    r.set_timeout(Duration::from_secs(3));
    c.create_stream(r).await.map(drop)
}

/// A SetStreamReadonly with a 2 s deadline.
async fn readonly(c: &mut Client, name: &str, on: bool) -> Result<(), tonic::Status> {
    let mut r = tonic::Request::new(SetStreamReadonlyRequest {
        name: name.into(),
        partitions: vec![],
        readonly: on,
    });
    r.set_timeout(Duration::from_secs(2));
    c.set_stream_readonly(r).await.map(drop)
}

/// Publishes one message to a fresh stream and reads it back.
async fn publish_and_read(c: &mut Client, stream: &str) -> TestResult {
    let off = publish_until_ok(c, stream, b"hello", Duration::from_secs(10)).await?;
    let mut sub = subscribe(c, sub_req(stream, 0, StartPosition::Earliest)).await?;
    let msgs = crate::common::read_n(&mut sub, 1, Duration::from_secs(5)).await?;
    assert_eq!(msgs[0].offset, off);
    assert_eq!(&msgs[0].value[..], b"hello");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_writes_are_refused_below_the_margin() -> TestResult {
    let metrics_port = drawbridge_tests::ports::free_port()?;
    let Some(mut s) = start("diskfull3", 8 << 20, metrics_port)? else {
        return Ok(());
    };
    let mut c = client(&s).await?;
    create(&mut c, "md1", "md1").await?;
    // 4 MiB left: below the margin. The reading is cached for 200 ms, so allow a few tries.
    fill(&s, 4)?;
    let started = tokio::time::Instant::now();
    let mut attempt = 0;
    let refusal = loop {
        // A create that slips in before the cached reading expires succeeds: the next try
        // uses a new name.
        attempt += 1;
        match create_within(&mut c, &format!("md-during-{attempt}")).await {
            Err(e) if e.code() == Code::ResourceExhausted => break e,
            other => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "CreateStream not refused 5 s after the disk filled: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(
        refusal.message().contains("metadata leader")
            && refusal.message().contains("storage.min.free.bytes"),
        "{refusal:?}"
    );
    // Answered at once, not at the 3 s deadline.
    let t = tokio::time::Instant::now();
    let e = readonly(&mut c, "md1", true)
        .await
        .err()
        .ok_or("SetStreamReadonly accepted on a full disk")?;
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    unfill(&s)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Err(e) = create_within(&mut c, "md2").await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "CreateStream still failing 5 s after space returned: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publish_and_read(&mut c, "md2").await?;
    assert!(s.stop(Duration::from_secs(20)), "{}", s.log_tail());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_enospc_is_waited_out() -> TestResult {
    let metrics_port = drawbridge_tests::ports::free_port()?;
    let Some(mut s) = start("diskfull4", 0, metrics_port)? else {
        return Ok(());
    };
    let mut c = client(&s).await?;
    create(&mut c, "me1", "me1").await?;
    assert_eq!(crate::single::get(metrics_port, "/readyz").await?.0, 200);

    // Nothing left: readonly toggles (one small metadata entry each) use up the last page of
    // the metadata log and the journal, then a write waits for space (its call times out).
    fill(&s, 0)?;
    let mut stuck = None;
    for i in 0..300 {
        if let Err(e) = readonly(&mut c, "me1", i % 2 == 0).await {
            stuck = Some(e);
            break;
        }
    }
    let stuck = stuck.ok_or("300 metadata writes on a full disk all succeeded")?;
    eprintln!("first metadata write that did not complete: {stuck:?}");
    let text = metrics(metrics_port).await?;
    assert!(
        counter(&text, "drawbridge_raft_disk_full_waits_total") >= 1,
        "{text}"
    );
    // The metadata group waits; it did not stop: the node stays ready and serves reads.
    let (status, body) = crate::single::get(metrics_port, "/readyz").await?;
    assert_eq!(status, 200, "{body}");
    c.fetch_metadata(FetchMetadataRequest::default()).await?;
    assert!(!s.has_exited(), "{}", s.log_tail());

    unfill(&s)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match create_within(&mut c, "me2").await {
            Ok(()) => break,
            // The waiting write of a timed-out call may have created it meanwhile: fine.
            Err(e) if e.code() == Code::AlreadyExists => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "CreateStream still failing 20 s after space returned: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publish_and_read(&mut c, "me2").await?;
    let (status, body) = crate::single::get(metrics_port, "/readyz").await?;
    assert_eq!(status, 200, "{body}");
    let log = std::fs::read_to_string(s.spec.log_path())?;
    assert!(
        log.contains("disk full: waiting for space") && log.contains("disk space back"),
        "{}",
        s.log_tail()
    );
    assert!(
        !log.contains("metadata raft group stopped"),
        "{}",
        s.log_tail()
    );
    assert!(s.stop(Duration::from_secs(20)), "{}", s.log_tail());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_through_another_node_to_a_full_leader() -> TestResult {
    let Some(nats) =
        drawbridge_tests::nats::NatsServer::start_or_skip("publish_through_another_node")
    else {
        return Ok(());
    };
    let mut specs = drawbridge_tests::server::cluster_specs(Path::new(BIN), &nats.url(), 2)?;
    let metrics_port = drawbridge_tests::ports::free_port()?;
    if !on_tmpfs(&mut specs[0], 8 << 20, metrics_port)? {
        return Ok(());
    }
    let mut servers = drawbridge_tests::server::cluster(&specs)?;
    let mut c1 = client(&servers[1]).await?;
    // Single-replica partitions, spread over both nodes: find one node-0 leads.
    let mut req = create_req("fwd", "fwd");
    req.partitions = 4;
    req.replication_factor = 1;
    c1.create_stream(req).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let partition = loop {
        let md = c1
            .fetch_metadata(FetchMetadataRequest {
                streams: vec!["fwd".into()],
                groups: vec![],
            })
            .await?
            .into_inner();
        let on0 = md.stream_metadata.first().and_then(|s| {
            s.partitions
                .iter()
                .find(|(_, p)| p.leader == specs[0].id)
                .map(|(i, _)| *i)
        });
        if let Some(p) = on0 {
            break p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no partition of fwd led by node-0: {md:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let send = |c: &mut Client, v: &'static [u8]| {
        let mut r = publish_req("fwd", v, AckPolicy::Leader);
        r.get_mut().partition = partition;
        r.set_timeout(Duration::from_secs(3));
        let mut c = c.clone();
        async move { c.publish(r).await }
    };
    send(&mut c1, b"before").await?;
    fill(&servers[0], 4)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let refusal = loop {
        match send(&mut c1, b"during").await {
            Ok(_) => {}
            Err(e) => break e,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishes through node-1 still accepted 5 s after node-0's disk filled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().contains("partition leader")
            && refusal.message().contains("storage.min.free.bytes"),
        "{refusal:?}"
    );
    let subject = if partition == 0 {
        "fwd".to_owned()
    } else {
        format!("fwd.{partition}")
    };
    let mut r = tonic::Request::new(PublishToSubjectRequest {
        subject,
        value: Bytes::from_static(b"to-subject-during"),
        ack_policy: AckPolicy::Leader as i32,
        ..Default::default()
    });
    r.set_timeout(Duration::from_secs(3));
    let refusal = c1
        .publish_to_subject(r)
        .await
        .err()
        .ok_or("PublishToSubject through node-1 was not refused")?;
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().contains("partition leader")
            && refusal.message().contains("storage.min.free.bytes"),
        "{refusal:?}"
    );
    unfill(&servers[0])?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Err(e) = send(&mut c1, b"after").await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishes still refused 5 s after space returned: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for s in &mut servers {
        assert!(s.stop(Duration::from_secs(20)), "{}", s.log_tail());
    }
    Ok(())
}
