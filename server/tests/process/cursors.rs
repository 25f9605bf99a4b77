//! SetCursor / FetchCursor on one standalone server (spec §4.5, §5, §11): the `__cursors`
//! stream appears in metadata, unknown cursors read -1, values survive a restart, and the
//! error codes of the spec. Routing to a non-leader and failover are in `groups_cluster`.

use std::time::{Duration, Instant};

use drawbridge_proto::api::*;
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};
use tonic::Code;

use crate::common::*;

/// Writes `yaml` next to the spec's data dir and passes it with `--config`.
pub fn with_config(spec: &mut ServerSpec, yaml: &str) -> TestResult {
    let path = spec
        .data_dir
        .with_file_name(format!("{}-config.yaml", spec.id));
    std::fs::write(&path, yaml)?;
    spec.args.push("--config".into());
    spec.args.push(path.display().to_string());
    Ok(())
}

/// Waits (≤ 20 s) until every partition of `stream` has a leader in `c`'s metadata.
pub async fn wait_leaders(c: &mut Client, stream: &str) -> TestResult<StreamMetadata> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let md = c
            .fetch_metadata(FetchMetadataRequest {
                streams: vec![stream.into()],
                groups: vec![],
            })
            .await?
            .into_inner();
        if let Some(s) = md.stream_metadata.into_iter().next() {
            if !s.partitions.is_empty() && s.partitions.values().all(|p| !p.leader.is_empty()) {
                return Ok(s);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("{stream}: partitions without a leader").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn set(stream: &str, partition: i32, id: &str, offset: i64) -> SetCursorRequest {
    SetCursorRequest {
        stream: stream.into(),
        partition,
        cursor_id: id.into(),
        offset,
    }
}

fn get(stream: &str, partition: i32, id: &str) -> FetchCursorRequest {
    FetchCursorRequest {
        stream: stream.into(),
        partition,
        cursor_id: id.into(),
    }
}

fn code<T>(r: Result<T, tonic::Status>) -> Option<Code> {
    r.err().map(|e| e.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_set_fetch_errors_and_restart() -> TestResult {
    let nats_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(BIN, "cur-1", NatsMode::Embedded(nats_port))?;
    with_config(&mut spec, "cursors.stream.partitions: 3\n")?;
    let mut server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    let cursors = wait_leaders(&mut c, "__cursors").await?;
    assert_eq!(cursors.partitions.len(), 3);
    create(&mut c, "s", "s").await?;

    // Unknown cursor → -1; set, read back, overwrite.
    assert_eq!(
        c.fetch_cursor(get("s", 0, "c1")).await?.into_inner().offset,
        -1
    );
    c.set_cursor(set("s", 0, "c1", 41)).await?;
    assert_eq!(
        c.fetch_cursor(get("s", 0, "c1")).await?.into_inner().offset,
        41
    );
    c.set_cursor(set("s", 0, "c1", 42)).await?;
    c.set_cursor(set("s", 0, "c2", 7)).await?;
    assert_eq!(
        c.fetch_cursor(get("s", 0, "c1")).await?.into_inner().offset,
        42
    );
    assert_eq!(
        c.fetch_cursor(get("s", 0, "c2")).await?.into_inner().offset,
        7
    );

    // Errors: empty stream / cursor id, unknown stream or partition.
    assert_eq!(
        code(c.set_cursor(set("", 0, "c1", 1)).await),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(c.set_cursor(set("s", 0, "", 1)).await),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(c.fetch_cursor(get("s", 0, "")).await),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(c.set_cursor(set("nope", 0, "c1", 1)).await),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(c.set_cursor(set("s", 9, "c1", 1)).await),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(c.fetch_cursor(get("nope", 0, "c1")).await),
        Some(Code::NotFound)
    );

    // Durable: a restart keeps the values.
    drop(c);
    assert!(server.stop(Duration::from_secs(10)), "graceful stop");
    let server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    wait_leaders(&mut c, "__cursors").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.fetch_cursor(get("s", 0, "c1")).await {
            Ok(r) => {
                assert_eq!(r.into_inner().offset, 42);
                break;
            }
            // Leadership of the cursor partition is still being re-established.
            Err(e) if e.code() == Code::FailedPrecondition && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }

    // Deleting the stream deletes its cursors.
    c.delete_stream(DeleteStreamRequest { name: "s".into() })
        .await?;
    create(&mut c, "s", "s").await?;
    assert_eq!(
        c.fetch_cursor(get("s", 0, "c1")).await?.into_inner().offset,
        -1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_disabled_is_internal() -> TestResult {
    let (server, _) = standalone("cur-off")?;
    let mut c = client(&server).await?;
    create(&mut c, "s", "s").await?;
    let r = c.set_cursor(set("s", 0, "c1", 1)).await;
    assert_eq!(r.err().map(|e| e.code()), Some(Code::Internal));
    let r = c.fetch_cursor(get("s", 0, "c1")).await;
    assert_eq!(r.err().map(|e| e.code()), Some(Code::Internal));
    Ok(())
}

/// `cursors.stream.auto.pause.time`: an idle `__cursors` partition pauses; a SetCursor resumes
/// it and is stored; FetchCursor reads while paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cursor_partitions_pause_and_set_cursor_resumes() -> TestResult {
    let nats_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(BIN, "cur-pause", NatsMode::Embedded(nats_port))?;
    with_config(
        &mut spec,
        "cursors.stream.partitions: 1\ncursors.stream.auto.pause.time: 1500ms\n",
    )?;
    let server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    wait_leaders(&mut c, "__cursors").await?;
    create(&mut c, "s", "s").await?;
    c.set_cursor(set("s", 0, "c1", 5)).await?;

    // Waits (≤ 15 s) until `__cursors/0`'s paused flag is `paused`.
    async fn wait_paused(c: &mut Client, paused: bool) -> TestResult {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = wait_leaders(c, "__cursors").await?;
            if s.partitions.get(&0).is_some_and(|p| p.paused == paused) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("__cursors/0 never became paused={paused}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wait_paused(&mut c, true)
        .await
        .map_err(|e| format!("{e}\n{}", server.log_tail()))?;
    assert_eq!(
        c.fetch_cursor(get("s", 0, "c1")).await?.into_inner().offset,
        5,
        "a paused cursors partition still answers FetchCursor"
    );
    c.set_cursor(set("s", 0, "c1", 6)).await?;
    wait_paused(&mut c, false).await?;
    assert_eq!(
        c.fetch_cursor(get("s", 0, "c1")).await?.into_inner().offset,
        6
    );
    Ok(())
}
