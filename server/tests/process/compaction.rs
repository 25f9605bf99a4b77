//! Compaction by key wired to the stream configuration (`compactEnabled`): the cleaner keeps
//! only the newest message per key in sealed segments (keyless messages all stay), offsets do
//! not move (gaps where messages went), reads skip the gaps, publishing and OCC go on at the
//! next offset, forward and reverse; a stream without compaction keeps everything; on three replicas that compact
//! independently, the replica checksums (what `drawbridge cluster verify` compares) agree.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use drawbridge_proto::admin::admin_client::AdminClient;
use drawbridge_proto::admin::ReplicaChecksumRequest;
use drawbridge_proto::api::*;
use drawbridge_tests::nats::NatsServer;
use drawbridge_tests::server::{cluster, cluster_specs, DrawbridgeServer, NatsMode, ServerSpec};

use crate::common::*;

const EACH: Duration = Duration::from_secs(10);
const N: i64 = 120;

/// Message `i`: key `k{i % 5}`, except every 4th message, which has no key.
fn key_of(i: i64) -> Option<String> {
    (i % 4 != 3).then(|| format!("k{}", i % 5))
}

fn value_of(i: i64) -> Vec<u8> {
    format!("value-{i}-{:0>100}", 0).into_bytes()
}

fn keyed_req(stream: &str, i: i64, policy: AckPolicy) -> tonic::Request<PublishRequest> {
    let mut r = publish_req(stream, &value_of(i), policy);
    if let Some(k) = key_of(i) {
        r.get_mut().key = Bytes::from(k);
    }
    r
}

fn compacted_req(name: &str) -> CreateStreamRequest {
    let ms = |v| Some(NullableInt64 { value: v });
    let mut req = create_req(name, name);
    req.segment_max_bytes = ms(4096);
    req.cleaner_interval = ms(200);
    req.compact_enabled = Some(NullableBool { value: true });
    req
}

/// A counter of the `/metrics` text (0 when absent).
fn counter(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn metric(port: u16, name: &str) -> TestResult<u64> {
    let (_, body) = crate::single::get(port, "/metrics").await?;
    Ok(counter(&body, name))
}

/// Every message from offset `from` up to `last` (inclusive), in order.
async fn read_through(
    c: &mut Client,
    stream: &str,
    from: i64,
    last: i64,
) -> TestResult<Vec<Message>> {
    let mut req = sub_req(stream, 0, StartPosition::Offset);
    req.start_offset = from;
    let mut sub = subscribe(c, req).await?;
    let mut out: Vec<Message> = Vec::new();
    while out.last().is_none_or(|m| m.offset < last) {
        out.extend(read_n(&mut sub, 1, EACH).await?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_newest_message_per_key() -> TestResult {
    let nats_port = drawbridge_tests::ports::free_port()?;
    let metrics_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(BIN, "compaction", NatsMode::Embedded(nats_port))?;
    spec.args = vec![
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics_port}"),
    ];
    let server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    let mut req = compacted_req("compacted");
    req.optimistic_concurrency_control = Some(NullableBool { value: true });
    c.create_stream(req).await?;
    let mut plain = compacted_req("plain");
    plain.compact_enabled = None;
    c.create_stream(plain).await?;
    for stream in ["compacted", "plain"] {
        for i in 0..N {
            c.publish(keyed_req(stream, i, AckPolicy::Leader)).await?;
        }
    }

    // Two passes that start after the last publish see every message: wait for them.
    let runs = metric(metrics_port, "drawbridge_compaction_runs_total").await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(metrics_port, "drawbridge_compaction_runs_total").await? < runs + 2 {
        assert!(
            Instant::now() < deadline,
            "no compaction pass:\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let removed = metric(metrics_port, "drawbridge_compaction_records_removed_total").await?;
    assert!(removed > 0, "compaction removed nothing");

    // From the earliest offset: offsets preserved, only superseded keyed messages gone, and
    // the sealed prefix fully compacted (every gap lies before every superseded survivor).
    let got = read_through(&mut c, "compacted", 0, N - 1).await?;
    let offsets: BTreeSet<i64> = got.iter().map(|m| m.offset).collect();
    assert_eq!(offsets.len(), got.len(), "offsets strictly increase");
    let newest: BTreeMap<String, i64> = (0..N).filter_map(|i| key_of(i).map(|k| (k, i))).collect();
    for m in &got {
        assert_eq!(
            m.value,
            value_of(m.offset),
            "offset {} kept its value",
            m.offset
        );
        assert_eq!(
            m.key,
            key_of(m.offset).map(Bytes::from).unwrap_or_default(),
            "offset {} kept its key",
            m.offset
        );
    }
    let gone: Vec<i64> = (0..N).filter(|i| !offsets.contains(i)).collect();
    assert_eq!(gone.len() as u64, removed, "the metric counts what went");
    for i in &gone {
        let k = key_of(*i).ok_or(format!("keyless offset {i} removed"))?;
        assert!(newest[&k] > *i, "offset {i}, the newest of {k}, removed");
    }
    let superseded_kept: Vec<i64> = got
        .iter()
        .filter(|m| key_of(m.offset).is_some_and(|k| newest[&k] > m.offset))
        .map(|m| m.offset)
        .collect();
    if let (Some(last_gone), Some(first_kept)) = (gone.last(), superseded_kept.first()) {
        assert!(
            last_gone < first_kept,
            "gaps only in the compacted prefix: {gone:?} / {superseded_kept:?}"
        );
    }
    for k in newest.values() {
        assert!(offsets.contains(k), "newest offset {k} of its key is kept");
    }

    // A start offset that was removed starts at the next message; a removed stop offset stops
    // once passed.
    let first_gone = *gone.first().ok_or("nothing removed")?;
    let next = *offsets
        .range(first_gone..)
        .next()
        .ok_or("no message after")?;
    let from_gap = read_through(&mut c, "compacted", first_gone, next).await?;
    assert_eq!(from_gap.first().map(|m| m.offset), Some(next));
    let mut req = sub_req("compacted", 0, StartPosition::Earliest);
    req.stop_position = StopPosition::StopOffset as i32;
    req.stop_offset = first_gone;
    let mut sub = subscribe(&mut c, req).await?;
    let before_gap = offsets.range(..first_gone).count();
    let head = read_n(&mut sub, before_gap, EACH).await?;
    assert!(head.iter().all(|m| m.offset < first_gone));
    assert_eq!(
        end_status(&mut sub, EACH).await,
        Some(tonic::Code::ResourceExhausted),
        "stopped past the removed stop offset"
    );

    // Publishing goes on at the next offset; OCC's next offset is unaffected. (Keyless, so
    // that no later pass removes anything the checks below count on.)
    let mut r = publish_req("compacted", &value_of(N), AckPolicy::Leader);
    r.get_mut().expected_offset = N;
    let ack = c.publish(r).await?.into_inner().ack.ok_or("no ack")?;
    assert_eq!(ack.offset, N);
    let mut stale = publish_req("compacted", &value_of(N + 1), AckPolicy::Leader);
    stale.get_mut().expected_offset = N - 1;
    assert!(c.publish(stale).await.is_err(), "stale expected offset");
    let tail = read_through(&mut c, "compacted", N, N).await?;
    assert_eq!(tail.last().map(|m| m.offset), Some(N));
    // A reverse subscription walks the same messages newest first, across the gaps, to EOF.
    let mut req = sub_req("compacted", 0, StartPosition::Latest);
    req.reverse = true;
    let mut sub = subscribe(&mut c, req).await?;
    let back = read_n(&mut sub, offsets.len() + 1, EACH).await?;
    let mut want: Vec<i64> = offsets.iter().copied().chain([N]).collect();
    want.reverse();
    assert_eq!(back.iter().map(|m| m.offset).collect::<Vec<_>>(), want);
    assert_eq!(end_status(&mut sub, EACH).await, Some(tonic::Code::Unknown));

    // Without compaction every message stays.
    let all = read_through(&mut c, "plain", 0, N - 1).await?;
    assert_eq!(
        all.iter().map(|m| m.offset).collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>()
    );
    Ok(())
}

/// Asks `s` for its replica of `stream`/0: `(hw, Some((records, checksum)))` over `0..=to`.
async fn replica_sum(
    s: &DrawbridgeServer,
    stream: &str,
    to: i64,
) -> TestResult<(i64, Option<(u64, u64)>)> {
    let ch = tonic::transport::Channel::from_shared(s.endpoint())?
        .connect()
        .await?;
    let mut admin = AdminClient::new(ch);
    let r = admin
        .replica_checksum(ReplicaChecksumRequest {
            stream: stream.into(),
            partition: 0,
            start_offset: 0,
            end_offset: to,
        })
        .await?
        .into_inner();
    Ok((
        r.high_watermark,
        (to >= 0).then_some((r.records, r.checksum)),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_compact_independently_verify_equal() -> TestResult {
    let Some(nats) = NatsServer::start_or_skip("replicas_that_compact_independently_verify_equal")
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
    let servers = cluster(&specs)?;
    let mut c = client(&servers[0]).await?;
    let mut req = compacted_req("ckv");
    req.replication_factor = 3;
    c.create_stream(req).await?;
    wait_leader(&mut c, "ckv", None).await?;
    for i in 0..N {
        c.publish(keyed_req("ckv", i, AckPolicy::All)).await?;
    }
    // Every replica compacts on its own.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (s, port) in servers.iter().zip(&ports) {
        while metric(*port, "drawbridge_compaction_records_removed_total").await? == 0 {
            assert!(
                Instant::now() < deadline,
                "{} did not compact:\n{}",
                s.spec.id,
                s.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every replica has committed everything; their checksums over it agree.
    for s in &servers {
        while replica_sum(s, "ckv", -1).await?.0 != N - 1 {
            assert!(Instant::now() < deadline, "{} behind", s.spec.id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut sums = Vec::new();
    for s in &servers {
        sums.push(replica_sum(s, "ckv", N - 1).await?.1.ok_or("no sum")?);
    }
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "replicas differ: {sums:?}"
    );
    let keyless = (0..N).filter(|i| key_of(*i).is_none()).count() as u64;
    assert_eq!(sums[0].0, keyless + 5, "keyless messages and one per key");
    drop(servers);
    drop(nats);
    Ok(())
}
