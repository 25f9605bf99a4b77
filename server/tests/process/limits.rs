//! `limits.*` and the message size limit: each refusal has a clear status, and is counted in
//! `drawbridge_limit_rejections_total`.

use std::time::Duration;

use drawbridge_proto::api::api_client::ApiClient;
use drawbridge_proto::api::*;
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{client, create_req, publish_req, sub_req, subscribe, TestResult, BIN};

pub(crate) async fn metrics(port: u16) -> TestResult<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn rejections(text: &str, limit: &str) -> u64 {
    let prefix = format!("drawbridge_limit_rejections_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A fresh connection (one TCP connection per channel) and one call on it.
async fn call_on_new_connection(s: &DrawbridgeServer) -> Result<ApiClient<Channel>, String> {
    let ch = Channel::from_shared(s.endpoint())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut c = ApiClient::new(ch);
    c.fetch_metadata(FetchMetadataRequest::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_with_clear_errors() -> TestResult {
    let nats_port = drawbridge_tests::ports::free_port()?;
    let metrics_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(BIN, "limits1", NatsMode::Embedded(nats_port))?;
    let conf = spec.data_dir.with_file_name("limits.yaml");
    std::fs::write(
        &conf,
        "limits:\n  max.streams: 2\n  max.partitions: 3\n  max.subscriptions: 1\n  \
         max.connections: 2\nclustering.replication.max.bytes: 1024\n",
    )?;
    spec.args = vec![
        "--config".into(),
        conf.display().to_string(),
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics_port}"),
    ];
    let mut s = DrawbridgeServer::start(&spec)?;
    let mut c = client(&s).await?;

    // Partitions, then streams.
    let mut two = create_req("a", "a");
    two.partitions = 2;
    c.create_stream(two.clone()).await?;
    two.name = "b".into();
    two.subject = "b".into();
    let e = c.create_stream(two).await.expect_err("5 partitions > 3");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.max.partitions"), "{e:?}");
    c.create_stream(create_req("b", "b")).await?;
    let e = c
        .create_stream(create_req("c", "c"))
        .await
        .expect_err("3 streams > 2");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.max.streams"), "{e:?}");

    // Message size: a publish over clustering.replication.max.bytes is refused.
    let e = c
        .publish(publish_req("b", &[7u8; 2000], AckPolicy::Leader))
        .await
        .expect_err("2000 bytes > 1024");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    c.publish(publish_req("b", &[7u8; 100], AckPolicy::Leader))
        .await?;

    // One subscription at a time.
    let first = subscribe(&mut c, sub_req("b", 0, StartPosition::Earliest)).await?;
    let e = subscribe(&mut c, sub_req("b", 0, StartPosition::Earliest))
        .await
        .expect_err("a second subscription");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.max.subscriptions"), "{e:?}");
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let _second = loop {
        match subscribe(&mut c, sub_req("b", 0, StartPosition::Earliest)).await {
            Ok(sub) => break sub,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "slot not freed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };

    // Two connections at a time: `c` holds one.
    let second = call_on_new_connection(&s).await?;
    assert!(
        call_on_new_connection(&s).await.is_err(),
        "a third connection was served"
    );
    drop(second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while call_on_new_connection(&s).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection slot not freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let text = metrics(metrics_port).await?;
    for limit in [
        "partitions",
        "streams",
        "message_size",
        "subscriptions",
        "connections",
    ] {
        assert!(
            rejections(&text, limit) >= 1,
            "{limit} not counted:\n{text}"
        );
    }
    // Publishes were fsynced (storage.sync.policy always): the fsync histogram has them.
    let fsyncs = text
        .lines()
        .find_map(|l| l.strip_prefix("drawbridge_fsync_duration_seconds_count{kind=\"log\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("no fsync histogram:\n{text}"))?;
    assert!(fsyncs >= 1, "{text}");
    assert!(s.stop(Duration::from_secs(20)), "{}", s.log_tail());
    Ok(())
}
