//! Servers on a real `nats-server` (embedded broker when the binary is missing outside CI):
//! raw NATS publishes, envelopes from NATS clients, two streams on one subject, wildcards,
//! gRPC publishes seen by plain NATS subscribers.

use std::time::Duration;

use bytes::Bytes;
use drawbridge_proto::api::*;
use drawbridge_server::envelope;
use drawbridge_tests::nats::NatsServer;
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};
use futures::StreamExt;

use crate::common::*;

const EACH: Duration = Duration::from_secs(10);

/// A server on real NATS when installed, else on its embedded broker; and the NATS URL.
fn server(id: &str) -> TestResult<(DrawbridgeServer, String, Option<NatsServer>)> {
    match NatsServer::start_or_skip(id) {
        Some(n) => {
            let url = n.url();
            let spec = ServerSpec::new(BIN, id, NatsMode::External(url.clone()))?;
            Ok((DrawbridgeServer::start(&spec)?, url, Some(n)))
        }
        None => {
            let port = drawbridge_tests::ports::free_port()?;
            let spec = ServerSpec::new(BIN, id, NatsMode::Embedded(port))?;
            Ok((
                DrawbridgeServer::start(&spec)?,
                format!("nats://127.0.0.1:{port}"),
                None,
            ))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_and_enveloped_nats_publishes() -> TestResult {
    let (server, url, _nats) = server("nats-raw")?;
    let mut c = client(&server).await?;
    create(&mut c, "one", "shared.subject").await?;
    create(&mut c, "two", "shared.subject").await?;
    create(&mut c, "wild", "shared.*").await?;
    let nc = async_nats::connect(url).await?;
    let mut plain = nc.subscribe("shared.subject").await?;

    // Raw bytes with a reply subject; an envelope with key, headers and an ack inbox.
    nc.publish_with_reply(
        "shared.subject",
        "reply.here",
        Bytes::from_static(b"raw bytes"),
    )
    .await?;
    let inbox = nc.new_inbox();
    let mut acks = nc.subscribe(inbox.clone()).await?;
    let env = envelope::encode_publish(&Message {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"enveloped"),
        headers: headers(&[("x", "y")]),
        ack_inbox: inbox.clone(),
        correlation_id: "corr".into(),
        ack_policy: AckPolicy::All as i32,
        offset: -1,
        ..Default::default()
    });
    nc.publish("shared.subject", env).await?;
    // A malformed envelope (right magic, garbage after) is stored raw.
    let mut bad = envelope::MAGIC.to_vec();
    bad.extend_from_slice(&[0, 8, 0, 0, 0xff, 0xff, 0xff]);
    nc.publish("shared.subject", Bytes::from(bad.clone()))
        .await?;
    nc.flush().await?;

    // One ack per stream recording the subject (three streams).
    let mut streams = Vec::new();
    for _ in 0..3 {
        let m = tokio::time::timeout(EACH, acks.next())
            .await?
            .ok_or("ack inbox closed")?;
        let a = envelope::decode_ack(&m.payload)?;
        assert_eq!(a.correlation_id, "corr");
        assert_eq!(a.msg_subject, "shared.subject");
        assert_eq!(a.offset, 1);
        streams.push(a.stream);
    }
    streams.sort();
    assert_eq!(streams, vec!["one", "two", "wild"]);

    for stream in ["one", "two", "wild"] {
        let mut sub = subscribe(&mut c, sub_req(stream, 0, StartPosition::Earliest)).await?;
        let m = read_n(&mut sub, 3, EACH).await?;
        assert_eq!(m[0].value, Bytes::from_static(b"raw bytes"));
        assert!(m[0].key.is_empty());
        assert_eq!(m[0].reply_subject, "reply.here");
        assert_eq!(header(&m[0], "subject").as_deref(), Some("shared.subject"));
        assert_eq!(header(&m[0], "reply").as_deref(), Some("reply.here"));
        assert_eq!(m[0].headers.len(), 2);
        assert_eq!(m[1].value, Bytes::from_static(b"enveloped"));
        assert_eq!(m[1].key, Bytes::from_static(b"k"));
        assert_eq!(header(&m[1], "x").as_deref(), Some("y"));
        assert_eq!(m[2].value, Bytes::from(bad.clone()));
    }

    // The wildcard stream records other subjects too; the others do not.
    nc.publish("shared.other", Bytes::from_static(b"w")).await?;
    nc.flush().await?;
    let mut w = sub_req("wild", 0, StartPosition::Offset);
    w.start_offset = 3;
    let mut w = subscribe(&mut c, w).await?;
    let m = read_n(&mut w, 1, EACH).await?;
    assert_eq!(
        (m[0].subject.as_str(), m[0].value.as_ref()),
        ("shared.other", b"w".as_ref())
    );

    // A gRPC publish reaches plain NATS subscribers (as an envelope).
    c.publish(publish_req("one", b"via grpc", AckPolicy::Leader))
        .await?;
    let mut seen = false;
    for _ in 0..4 {
        let m = tokio::time::timeout(EACH, plain.next())
            .await?
            .ok_or("closed")?;
        if let Ok(env) = envelope::decode_publish(&m.payload) {
            if env.value.as_ref() == b"via grpc" {
                seen = true;
                break;
            }
        }
    }
    assert!(seen, "plain NATS subscriber did not see the gRPC publish");
    Ok(())
}
