//! Helpers shared by the process tests: gRPC clients, stream creation, bounded reads.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use drawbridge_proto::api::api_client::ApiClient;
use drawbridge_proto::api::*;
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};
use futures::StreamExt;
use tonic::transport::Channel;

pub type Client = ApiClient<Channel>;
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub const BIN: &str = env!("CARGO_BIN_EXE_drawbridge-server");

/// A standalone server with embedded NATS on free ports.
pub fn standalone(id: &str) -> TestResult<(DrawbridgeServer, u16)> {
    let nats_port = drawbridge_tests::ports::free_port()?;
    let spec = ServerSpec::new(BIN, id, NatsMode::Embedded(nats_port))?;
    Ok((DrawbridgeServer::start(&spec)?, nats_port))
}

/// Connects a gRPC client (retrying for up to 10 s).
pub async fn client(s: &DrawbridgeServer) -> TestResult<Client> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ep = Channel::from_shared(s.endpoint())?;
        match ep.connect().await {
            Ok(ch) => return Ok(ApiClient::new(ch).max_decoding_message_size(64 << 20)),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub fn create_req(name: &str, subject: &str) -> CreateStreamRequest {
    CreateStreamRequest {
        name: name.into(),
        subject: subject.into(),
        ..Default::default()
    }
}

pub async fn create(c: &mut Client, name: &str, subject: &str) -> TestResult {
    c.create_stream(create_req(name, subject)).await?;
    Ok(())
}

/// A publish request with an ack wait of 5 s.
pub fn publish_req(
    stream: &str,
    value: &[u8],
    policy: AckPolicy,
) -> tonic::Request<PublishRequest> {
    let mut r = tonic::Request::new(PublishRequest {
        stream: stream.into(),
        value: Bytes::copy_from_slice(value),
        ack_policy: policy as i32,
        expected_offset: -1,
        ..Default::default()
    });
    r.set_timeout(Duration::from_secs(5));
    r
}

pub fn sub_req(stream: &str, partition: i32, start: StartPosition) -> SubscribeRequest {
    SubscribeRequest {
        stream: stream.into(),
        partition,
        start_position: start as i32,
        ..Default::default()
    }
}

/// Subscribes and returns the stream after checking the empty first frame.
pub async fn subscribe(
    c: &mut Client,
    req: SubscribeRequest,
) -> Result<tonic::Streaming<Message>, tonic::Status> {
    let mut s = c.subscribe(req).await?.into_inner();
    match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
        Ok(Some(Ok(first))) => {
            assert_eq!(first, Message::default(), "first frame must be empty");
            Ok(s)
        }
        Ok(Some(Err(e))) => Err(e),
        Ok(None) => Err(tonic::Status::internal(
            "stream ended before the first frame",
        )),
        Err(_) => Err(tonic::Status::deadline_exceeded("no first frame in 10 s")),
    }
}

/// Reads `n` messages (each within `each`), failing on an error frame.
pub async fn read_n(
    s: &mut tonic::Streaming<Message>,
    n: usize,
    each: Duration,
) -> TestResult<Vec<Message>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(each, s.next()).await {
            Ok(Some(Ok(m))) => out.push(m),
            Ok(Some(Err(e))) => return Err(format!("after {} messages: {e}", out.len()).into()),
            Ok(None) => return Err(format!("stream ended after {} messages", out.len()).into()),
            Err(_) => return Err(format!("timed out after {} of {n} messages", out.len()).into()),
        }
    }
    Ok(out)
}

/// The next frame's status (expects the stream to end with an error within `wait`).
pub async fn end_status(s: &mut tonic::Streaming<Message>, wait: Duration) -> Option<tonic::Code> {
    match tokio::time::timeout(wait, s.next()).await {
        Ok(Some(Err(e))) => Some(e.code()),
        _ => None,
    }
}

pub fn header(m: &Message, k: &str) -> Option<String> {
    m.headers
        .get(k)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

pub fn headers(pairs: &[(&str, &str)]) -> HashMap<String, Bytes> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

/// Partition 0's leader of `stream` in `c`'s metadata (`None` while it has none).
pub async fn leader_of(c: &mut Client, stream: &str) -> TestResult<Option<String>> {
    let md = c
        .fetch_metadata(FetchMetadataRequest {
            streams: vec![stream.into()],
            groups: vec![],
        })
        .await?
        .into_inner();
    Ok(md
        .stream_metadata
        .first()
        .and_then(|s| s.partitions.get(&0))
        .map(|p| p.leader.clone())
        .filter(|l| !l.is_empty()))
}

/// Waits (≤ 15 s) until partition 0 of `stream` has a leader other than `not`.
pub async fn wait_leader(c: &mut Client, stream: &str, not: Option<&str>) -> TestResult<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(l) = leader_of(c, stream)
            .await?
            .filter(|l| Some(l.as_str()) != not)
        {
            return Ok(l);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no new leader for {stream} within 15 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
