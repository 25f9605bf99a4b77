//! Cursors and consumer groups from the client library and the CLI, against one standalone
//! server with `cursors.stream.partitions: 2` and `groups.consumer.timeout: 2s`:
//! - `set_cursor` / `fetch_cursor` and `drawbridge cursor get|set` (unknown → -1 / `None`);
//! - two [`GroupConsumer`]s over a 4-partition stream get disjoint, complete assignments and
//!   together read every message once; committed group cursors are visible to `cursor get`;
//! - a member that stops polling expires and the survivor takes over all four partitions;
//! - `drawbridge subscribe --group` reads as a group member.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use drawbridge_client::{
    group_cursor_id, GroupAssignments, GroupOptions, PublishMessage, StartAt, StreamOptions,
};
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};
use futures::StreamExt;

use crate::cli::cli;
use crate::common::*;

fn start() -> TestResult<DrawbridgeServer> {
    let bin = drawbridge_tests::bins::drawbridge_server()?;
    let nats_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(bin, "groups", NatsMode::Embedded(nats_port))?;
    let path = spec.data_dir.with_file_name("groups-config.yaml");
    std::fs::write(
        &path,
        "cursors.stream.partitions: 2\ngroups.consumer.timeout: 2s\n",
    )?;
    spec.args.push("--config".into());
    spec.args.push(path.display().to_string());
    Ok(DrawbridgeServer::start(&spec)?)
}

fn all_partitions(a: &GroupAssignments, stream: &str) -> Vec<i32> {
    a.partitions.get(stream).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_and_consumer_groups() -> TestResult {
    let server = start()?;
    let addr = format!("127.0.0.1:{}", server.spec.port);
    let c = client(std::slice::from_ref(&addr)).await?;
    let opts = StreamOptions {
        partitions: 4,
        ..StreamOptions::default()
    };
    c.create_stream("gx", "gx", opts).await?;

    // Cursors through the library and the CLI (retried while `__cursors` gets its leaders).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.fetch_cursor("c1", "gx", 1).await {
            Ok(v) => {
                assert_eq!(v, None);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for cursors: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    c.set_cursor("c1", "gx", 1, 12).await?;
    assert_eq!(c.fetch_cursor("c1", "gx", 1).await?, Some(12));
    let out = cli(&addr, &["cursor", "get", "c1", "gx", "-p", "1"], None)
        .await?
        .ok()?;
    assert_eq!(out.trim(), "12");
    cli(&addr, &["cursor", "set", "c2", "gx", "-p", "3", "99"], None)
        .await?
        .ok()?;
    assert_eq!(c.fetch_cursor("c2", "gx", 3).await?, Some(99));
    let out = cli(&addr, &["cursor", "get", "nope", "gx"], None)
        .await?
        .ok()?;
    assert_eq!(out.trim(), "-1");
    cli(&addr, &["cursor", "get", "c1", "missing-stream"], None)
        .await?
        .one_line_error("partition");

    // Two members: disjoint, complete assignments; together they read all eight messages.
    let streams = vec!["gx".to_string()];
    let g = GroupOptions {
        start: StartAt::Earliest,
    };
    let mut a = c.consumer_group("g", "a", &streams, g).await?;
    let mut b = c.consumer_group("g", "b", &streams, g).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (pa, pb) = (
            all_partitions(&a.assignments(), "gx"),
            all_partitions(&b.assignments(), "gx"),
        );
        let union: BTreeSet<i32> = pa.iter().chain(&pb).copied().collect();
        if pa.len() == 2
            && pb.len() == 2
            && union.len() == 4
            && a.assignments().epoch == b.assignments().epoch
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "assignments did not settle: {pa:?} {pb:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two messages per partition, published once each partition has its one reader.
    for p in 0..4 {
        for i in 0..2 {
            c.publish("gx", PublishMessage::new(format!("p{p}-{i}")).partition(p))
                .await?;
        }
    }
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 8 {
        let next = tokio::select! {
            m = a.next() => m,
            m = b.next() => m,
            _ = tokio::time::sleep(Duration::from_secs(5)) => None,
        };
        if let Some(m) = next {
            let m = m?;
            let v = String::from_utf8_lossy(&m.value).into_owned();
            assert!(
                v.starts_with(&format!("p{}-", m.partition)),
                "{v} on {}",
                m.partition
            );
            a.commit(&m).await?;
            assert!(seen.insert(v.clone()), "{v} twice");
        }
        assert!(Instant::now() < deadline, "read only {seen:?}");
    }
    let out = cli(
        &addr,
        &["cursor", "get", &group_cursor_id("g"), "gx", "-p", "2"],
        None,
    )
    .await?
    .ok()?;
    assert_eq!(
        out.trim(),
        "1",
        "the group cursor of partition 2 is its last offset"
    );

    // b stops polling (dropped without leaving): it expires and a takes all four partitions.
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(20);
    while all_partitions(&a.assignments(), "gx").len() != 4 {
        assert!(
            Instant::now() < deadline,
            "b did not expire: {:?}",
            a.assignments()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A new message on any partition reaches a; nothing earlier is read again (cursors).
    c.publish("gx", PublishMessage::new("late").partition(3))
        .await?;
    let m = tokio::time::timeout(Duration::from_secs(10), a.next())
        .await?
        .ok_or("a ended")??;
    assert_eq!(&m.value[..], b"late");
    a.leave().await?;
    assert_eq!(c.fetch_group_metadata("g").await?, None);

    // The CLI as a group member reads from the group cursor on.
    c.set_cursor(&group_cursor_id("cli"), "gx", 0, 0).await?;
    let out = cli(
        &addr,
        &[
            "subscribe",
            "gx",
            "--group",
            "cli",
            "--consumer",
            "x",
            "--from",
            "earliest",
            "-n",
            "8",
        ],
        None,
    )
    .await?
    .ok()?;
    let lines: BTreeSet<&str> = out.lines().collect();
    assert!(lines.contains("p0-1") && !lines.contains("p0-0"), "{out}");
    assert!(lines.contains("late") && lines.contains("p1-0"), "{out}");
    Ok(())
}
