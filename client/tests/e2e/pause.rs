//! Pause, resume, readonly and reverse subscriptions through the client library and the CLI,
//! against the shared standalone server.

use std::time::Duration;

use drawbridge_client::{
    EndReason, Error, PauseOptions, PublishMessage, ReadonlyOptions, StartAt, StopAt,
    StreamOptions, SubscribeOptions,
};

use crate::common::*;

const CLI: &str = env!("CARGO_BIN_EXE_drawbridge");

fn paused(md: &drawbridge_client::Metadata, name: &str, p: i32) -> Option<bool> {
    md.stream(name)
        .and_then(|s| s.partitions.get(&p))
        .map(|p| p.paused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_readonly_and_reverse_with_the_library() -> TestResult {
    let srv = shared_server();
    let c = client(&[srv.addr()]).await?;
    let name = unique("pause");
    let opts = StreamOptions {
        partitions: 2,
        ..StreamOptions::default()
    };
    c.create_stream(&name, &name, opts).await?;
    for v in ["a", "b", "c"] {
        c.publish(&name, PublishMessage::new(v)).await?;
    }

    // Pause partition 0 only; a subscription without resume fails with PartitionPaused.
    c.pause_stream(
        &name,
        PauseOptions {
            partitions: vec![0],
            resume_all: false,
        },
    )
    .await?;
    let md = c.fetch_metadata().await?;
    assert_eq!(
        (paused(&md, &name, 0), paused(&md, &name, 1)),
        (Some(true), Some(false))
    );
    let r = c.subscribe(&name, SubscribeOptions::default()).await;
    let failed = match r {
        Err(e) => matches!(e, Error::PartitionPaused),
        Ok(mut sub) => read_n(&mut sub, 1, EACH).await.is_err(),
    };
    assert!(failed, "a subscription to a paused partition must fail");
    // resume_partition resumes it.
    c.resume_partition(&name, 0).await?;
    let md = c.fetch_metadata().await?;
    assert_eq!(paused(&md, &name, 0), Some(false));

    // Reverse: newest first, then the end (OldestReached).
    let mut sub = c
        .subscribe(
            &name,
            SubscribeOptions {
                start: StartAt::Latest,
                reverse: true,
                ..SubscribeOptions::default()
            },
        )
        .await?;
    assert_eq!(
        values(&read_to_end(&mut sub, 10, EACH).await?),
        ["c", "b", "a"]
    );
    assert_eq!(sub.end_reason(), Some(&EndReason::OldestReached));

    // Readonly: publishes refused, subscribers end after the last record; reversible.
    c.set_stream_readonly(&name, ReadonlyOptions::default())
        .await?;
    let r = c.publish(&name, PublishMessage::new("no")).await;
    assert!(matches!(r, Err(Error::ReadonlyPartition(_))), "{r:?}");
    let mut sub = c
        .subscribe(
            &name,
            SubscribeOptions {
                start: StartAt::Earliest,
                stop: StopAt::Cancel,
                ..SubscribeOptions::default()
            },
        )
        .await?;
    assert_eq!(
        values(&read_to_end(&mut sub, 10, EACH).await?),
        ["a", "b", "c"]
    );
    assert_eq!(sub.end_reason(), Some(&EndReason::ReadonlyEnd));
    c.set_stream_readonly(
        &name,
        ReadonlyOptions {
            partitions: vec![],
            readonly: false,
        },
    )
    .await?;
    let ack = c
        .publish(&name, PublishMessage::new("d"))
        .await?
        .ok_or("no ack")?;
    assert_eq!(ack.offset, 3);
    Ok(())
}

async fn cli(addr: &str, args: &[&str]) -> TestResult<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(CLI)
            .arg("--addr")
            .arg(addr)
            .arg("--timeout")
            .arg("5s")
            .args(args)
            .env_remove("DRAWBRIDGE_ADDR")
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    if !out.status.success() {
        return Err(format!(
            "drawbridge {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_pause_resume_readonly_and_reverse() -> TestResult {
    let srv = shared_server();
    let addr = srv.addr();
    let a = addr.as_str();
    let c = client(std::slice::from_ref(&addr)).await?;
    let name = unique("clipause");
    cli(a, &["stream", "create", &name, "--partitions", "2"]).await?;
    for v in ["x", "y", "z"] {
        cli(a, &["publish", &name, v]).await?;
    }

    let out = cli(a, &["stream", "pause", &name, "--resume-all"]).await?;
    assert!(out.contains("paused"), "{out}");
    let md = c.fetch_metadata().await?;
    assert_eq!(
        (paused(&md, &name, 0), paused(&md, &name, 1)),
        (Some(true), Some(true))
    );
    let out = cli(a, &["stream", "resume", &name, "-p", "1"]).await?;
    assert!(out.contains("resumed"), "{out}");
    // resumeAll: resuming one resumed both.
    let md = c.fetch_metadata().await?;
    assert_eq!(
        (paused(&md, &name, 0), paused(&md, &name, 1)),
        (Some(false), Some(false))
    );
    cli(a, &["stream", "pause", &name, "-p", "0"]).await?;
    cli(a, &["stream", "resume", &name]).await?;
    let md = c.fetch_metadata().await?;
    assert_eq!(paused(&md, &name, 0), Some(false));

    let out = cli(a, &["subscribe", &name, "--from", "latest", "--reverse"]).await?;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["z", "y", "x"]);

    cli(a, &["stream", "readonly", &name]).await?;
    let out = cli(a, &["subscribe", &name, "--from", "earliest"]).await?;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["x", "y", "z"]);
    assert!(cli(a, &["publish", &name, "w"]).await.is_err());
    cli(a, &["stream", "readonly", &name, "--off"]).await?;
    cli(a, &["publish", &name, "w"]).await?;
    Ok(())
}
