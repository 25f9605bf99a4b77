//! The embedded NATS broker against the real `async-nats` client and raw TCP sockets.
//!
//! Every test starts its own broker on an ephemeral loopback port, bounds every wait with a
//! timeout and every loop with a count, and shuts the broker down at the end.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use drawbridge_server::embedded_nats::{EmbeddedNats, EmbeddedNatsConfig};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn start(config: EmbeddedNatsConfig) -> EmbeddedNats {
    EmbeddedNats::start(config).await.expect("broker starts")
}

async fn client(nats: &EmbeddedNats) -> async_nats::Client {
    timeout(WAIT, async_nats::connect(nats.client_url()))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Waits until the broker has processed every command `c` sent so far (e.g. a SUB).
///
/// async-nats's `flush` only writes the client's buffer to the socket; it does not wait for
/// the broker. A request to a subject nobody subscribes to comes back as "no responders" only
/// after the broker has executed everything sent before it on this connection.
async fn settle(c: &async_nats::Client) {
    let err = timeout(WAIT, c.request("_settle.nobody.listens", Bytes::new()))
        .await
        .expect("settle in time")
        .expect_err("nobody subscribes to the settle subject");
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
}

async fn next_msg(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    timeout(WAIT, sub.next())
        .await
        .expect("message in time")
        .expect("subscription open")
}

/// Asserts nothing more arrives on `sub` within a short while.
async fn assert_quiet(sub: &mut async_nats::Subscriber) {
    if let Ok(Some(m)) = timeout(Duration::from_millis(200), sub.next()).await {
        panic!("unexpected message on {}: {:?}", m.subject, m.payload);
    }
}

/// A hand-driven protocol connection.
struct Raw {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let (rd, wr) = stream.into_split();
        let mut raw = Raw {
            rd: BufReader::new(rd),
            wr,
        };
        let info = raw.line().await;
        assert!(info.starts_with("INFO {"), "{info}");
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.wr.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        let n = timeout(WAIT, self.rd.read_line(&mut line))
            .await
            .expect("line in time")
            .expect("read");
        assert!(n > 0, "connection closed while waiting for a line");
        line.trim_end().to_owned()
    }

    /// Reads until EOF (bounded by `WAIT` and by a byte budget); returns what was read.
    async fn read_to_eof(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let result = timeout(WAIT, async {
            for _ in 0..100_000 {
                match self.rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => all.extend_from_slice(&chunk[..n]),
                }
            }
            panic!("connection still open after 100000 reads");
        })
        .await;
        assert!(result.is_ok(), "connection not closed in time");
        all
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_is_sent_with_the_advertised_limits() {
    let mut cfg = EmbeddedNatsConfig::ephemeral();
    cfg.max_payload = 4096;
    let nats = start(cfg).await;
    let stream = TcpStream::connect(nats.local_addr())
        .await
        .expect("connect");
    let mut rd = BufReader::new(stream);
    let mut line = String::new();
    timeout(WAIT, rd.read_line(&mut line))
        .await
        .expect("in time")
        .expect("read");
    let json: serde_json::Value =
        serde_json::from_str(line.strip_prefix("INFO ").expect("INFO prefix").trim_end())
            .expect("INFO JSON");
    assert_eq!(json["max_payload"], 4096);
    assert_eq!(json["headers"], true);
    assert_eq!(json["proto"], 1);
    assert_eq!(json["port"], nats.local_addr().port());
    assert!(json["server_id"].as_str().is_some_and(|s| !s.is_empty()));
    let c = client(&nats).await;
    assert_eq!(c.server_info().max_payload, 4096);
    nats.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe() {
    let nats = start(EmbeddedNatsConfig::ephemeral()).await;
    let a = client(&nats).await;
    let b = client(&nats).await;
    let mut sub = b.subscribe("greet.joe").await.expect("subscribe");
    settle(&b).await;
    a.publish("greet.joe", "hello".into())
        .await
        .expect("publish");
    a.publish("greet.ann", "other".into())
        .await
        .expect("publish");
    let m = next_msg(&mut sub).await;
    assert_eq!(m.subject.as_str(), "greet.joe");
    assert_eq!(m.payload, Bytes::from_static(b"hello"));
    assert_quiet(&mut sub).await;
    nats.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards() {
    let nats = start(EmbeddedNatsConfig::ephemeral()).await;
    let c = client(&nats).await;
    let mut star = c.subscribe("a.*.c").await.expect("subscribe");
    let mut full = c.subscribe("a.>").await.expect("subscribe");
    settle(&c).await;
    for subject in ["a.b.c", "a.b", "a.b.c.d", "x.b.c", "a.x.c"] {
        c.publish(subject, subject.to_owned().into())
            .await
            .expect("publish");
    }
    c.flush().await.expect("flush");
    let mut got_star = Vec::new();
    for _ in 0..2 {
        got_star.push(next_msg(&mut star).await.subject.to_string());
    }
    assert_eq!(got_star, vec!["a.b.c", "a.x.c"]);
    assert_quiet(&mut star).await;
    let mut got_full = Vec::new();
    for _ in 0..4 {
        got_full.push(next_msg(&mut full).await.subject.to_string());
    }
    assert_eq!(got_full, vec!["a.b.c", "a.b", "a.b.c.d", "a.x.c"]);
    assert_quiet(&mut full).await;
    nats.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_delivers_each_message_once() {
    const N: usize = 300;
    let nats = start(EmbeddedNatsConfig::ephemeral()).await;
    let publisher = client(&nats).await;
    let mut members = Vec::new();
    for _ in 0..3 {
        let c = client(&nats).await;
        let sub = c
            .queue_subscribe("work", "workers".into())
            .await
            .expect("qsub");
        settle(&c).await;
        members.push((c, sub));
    }
    let observer = client(&nats).await;
    let mut all = observer.subscribe("work").await.expect("subscribe");
    settle(&observer).await;

    for i in 0..N {
        publisher
            .publish("work", i.to_string().into())
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");

    // The plain subscriber sees everything; its count tells us all messages were routed.
    for _ in 0..N {
        next_msg(&mut all).await;
    }
    let mut seen = HashSet::new();
    let mut per_member = Vec::new();
    for (_, sub) in &mut members {
        let mut count = 0;
        while let Ok(Some(m)) = timeout(Duration::from_millis(300), sub.next()).await {
            let text = String::from_utf8(m.payload.to_vec()).expect("utf8");
            assert!(
                seen.insert(text),
                "a message was delivered twice within the group"
            );
            count += 1;
            assert!(count <= N);
        }
        per_member.push(count);
    }
    assert_eq!(
        seen.len(),
        N,
        "every message delivered once: {per_member:?}"
    );
    assert!(
        per_member.iter().all(|&c| c > 0),
        "random choice spreads the load: {per_member:?}"
    );
    nats.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_after_max_messages() {
    let nats = start(EmbeddedNatsConfig::ephemeral()).await;
    let c = client(&nats).await;
    let mut sub = c.subscribe("limited").await.expect("subscribe");
    sub.unsubscribe_after(3).await.expect("unsub");
    settle(&c).await;
    for i in 0..10 {
        c.publish("limited", format!("{i}").into())
            .await
            .expect("publish");
    }
    c.flush().await.expect("flush");
    for i in 0..3 {
        assert_eq!(
            next_msg(&mut sub).await.payload,
            Bytes::from(format!("{i}"))
        );
    }
    let end = timeout(WAIT, sub.next())
        .await
        .expect("stream ends in time");
    assert!(end.is_none(), "subscription ends after max");

    // The server enforces the limit itself, not just the client library.
    let mut raw = Raw::connect(nats.local_addr()).await;
    raw.send(
        b"SUB lim 1\r\nUNSUB 1 2\r\nPUB lim 1\r\na\r\nPUB lim 1\r\nb\r\nPUB lim 1\r\nc\r\nPING\r\n",
    )
    .await;
    assert_eq!(raw.line().await, "MSG lim 1 1");
    assert_eq!(raw.line().await, "a");
    assert_eq!(raw.line().await, "MSG lim 1 1");
    assert_eq!(raw.line().await, "b");
    assert_eq!(raw.line().await, "PONG");
    nats.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_round_trip() {
    let nats = start(EmbeddedNatsConfig::ephemeral()).await;
    let c = client(&nats).await;
    let mut sub = c.subscribe("hdr").await.expect("subscribe");
    settle(&c).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Key", "value-1");
    headers.insert("Liftbridge-Ack-Inbox", "inbox.1");
    c.publish_with_headers("hdr", headers, "body".into())
        .await
        .expect("publish");
    let m = next_msg(&mut sub).await;
    assert_eq!(m.payload, Bytes::from_static(b"body"));
    let h = m.headers.expect("headers delivered");
    assert_eq!(h.get("X-Key").map(|v| v.as_str()), Some("value-1"));
    assert_eq!(
        h.get("Liftbridge-Ack-Inbox").map(|v| v.as_str()),
        Some("inbox.1")
    );

    // Raw: HPUB bytes come back verbatim in HMSG to a header-aware client, and a client that
    // did not declare header support gets the body only.
    let mut hraw = Raw::connect(nats.local_addr()).await;
    hraw.send(b"CONNECT {\"headers\":true}\r\nSUB h 5\r\nPING\r\n")
        .await;
    assert_eq!(hraw.line().await, "PONG");
    let mut plain = Raw::connect(nats.local_addr()).await;
    plain.send(b"SUB h 6\r\nPING\r\n").await;
    assert_eq!(plain.line().await, "PONG");
    hraw.send(b"HPUB h 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\n")
        .await;
    assert_eq!(hraw.line().await, "HMSG h 5 18 20");
    assert_eq!(hraw.line().await, "NATS/1.0");
    assert_eq!(hraw.line().await, "A: b");
    assert_eq!(hraw.line().await, "");
    assert_eq!(hraw.line().await, "hi");
    assert_eq!(plain.line().await, "MSG h 6 2");
    assert_eq!(plain.line().await, "hi");
    nats.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_and_no_responders() {
    let nats = start(EmbeddedNatsConfig::ephemeral()).await;
    let responder = client(&nats).await;
    let mut svc = responder.subscribe("svc.echo").await.expect("subscribe");
    settle(&responder).await;
    let serve = tokio::spawn({
        let responder = responder.clone();
        async move {
            for _ in 0..10 {
                let Some(m) = svc.next().await else { return };
                if let Some(reply) = m.reply {
                    let mut body = b"re:".to_vec();
                    body.extend_from_slice(&m.payload);
                    responder.publish(reply, body.into()).await.expect("reply");
                    responder.flush().await.expect("flush");
                }
            }
        }
    });
    let requester = client(&nats).await;
    for i in 0..3 {
        let answer = timeout(WAIT, requester.request("svc.echo", format!("q{i}").into()))
            .await
            .expect("answer in time")
            .expect("answer");
        assert_eq!(answer.payload, Bytes::from(format!("re:q{i}")));
    }
    let err = timeout(WAIT, requester.request("svc.nobody", "q".into()))
        .await
        .expect("no-responders answer in time")
        .expect_err("nobody listens");
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
    serve.abort();
    nats.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_payload_violation_closes_only_the_offender() {
    let mut cfg = EmbeddedNatsConfig::ephemeral();
    cfg.max_payload = 1024;
    let nats = start(cfg).await;
    let good = client(&nats).await;
    let mut sub = good.subscribe("ok").await.expect("subscribe");
    settle(&good).await;

    // The client sends the oversized payload right behind the PUB line, as real clients do;
    // the -ERR must still reach it (not be lost to a reset caused by the unread payload).
    let mut bad = Raw::connect(nats.local_addr()).await;
    let mut frame = b"PUB ok 100000\r\n".to_vec();
    frame.extend(std::iter::repeat_n(b'x', 100_000));
    frame.extend_from_slice(b"\r\n");
    bad.send(&frame).await;
    assert_eq!(bad.line().await, "-ERR 'Maximum Payload Violation'");
    bad.read_to_eof().await;

    // A payload of exactly max_payload is fine.
    let mut fine = Raw::connect(nats.local_addr()).await;
    let mut frame = b"PUB ok 1024\r\n".to_vec();
    frame.extend(std::iter::repeat_n(b'x', 1024));
    frame.extend_from_slice(b"\r\nPING\r\n");
    fine.send(&frame).await;
    assert_eq!(fine.line().await, "PONG");
    assert_eq!(next_msg(&mut sub).await.payload.len(), 1024);

    good.publish("ok", "still".into()).await.expect("publish");
    assert_eq!(
        next_msg(&mut sub).await.payload,
        Bytes::from_static(b"still")
    );
    nats.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_err_and_others_keep_working() {
    let nats = start(EmbeddedNatsConfig::ephemeral()).await;
    let good = client(&nats).await;
    let mut sub = good.subscribe("alive").await.expect("subscribe");
    settle(&good).await;

    let mut bad = Raw::connect(nats.local_addr()).await;
    bad.send(b"HELLO WORLD\r\n").await;
    assert_eq!(bad.line().await, "-ERR 'Unknown Protocol Operation'");
    bad.read_to_eof().await;

    let mut bad = Raw::connect(nats.local_addr()).await;
    bad.send(b"PUB alive notanumber\r\n").await;
    assert!(bad.line().await.starts_with("-ERR "));
    bad.read_to_eof().await;

    let mut bad = Raw::connect(nats.local_addr()).await;
    bad.send(b"PUB alive 2\r\nabc\r\n").await;
    assert!(bad.line().await.starts_with("-ERR "));
    bad.read_to_eof().await;

    let mut bad = Raw::connect(nats.local_addr()).await;
    bad.send(&[0xff, 0x00, 0x13, b'\r', b'\n']).await;
    assert!(bad.line().await.starts_with("-ERR "));
    bad.read_to_eof().await;

    // Invalid subjects are reported but do not close the connection.
    let mut raw = Raw::connect(nats.local_addr()).await;
    raw.send(b"SUB foo..bar 1\r\nSUB a.>.b 2\r\nPUB a.* 1\r\nx\r\nPING\r\n")
        .await;
    assert_eq!(raw.line().await, "-ERR 'Invalid Subject'");
    assert_eq!(raw.line().await, "-ERR 'Invalid Subject'");
    assert_eq!(raw.line().await, "-ERR 'Invalid Publish Subject'");
    assert_eq!(raw.line().await, "PONG");

    // Verbs are case-insensitive; verbose mode acknowledges with +OK.
    raw.send(b"connect {\"verbose\":true}\r\nsub alive 9\r\npub alive 2\r\nhi\r\nping\r\n")
        .await;
    assert_eq!(raw.line().await, "+OK");
    assert_eq!(raw.line().await, "+OK");
    // Our own message (echo) is queued while the PUB executes, before its +OK.
    assert_eq!(raw.line().await, "MSG alive 9 2");
    assert_eq!(raw.line().await, "hi");
    assert_eq!(raw.line().await, "+OK");
    assert_eq!(raw.line().await, "PONG");

    good.publish("alive", "yes".into()).await.expect("publish");
    assert_eq!(next_msg(&mut sub).await.payload, Bytes::from_static(b"hi"));
    assert_eq!(next_msg(&mut sub).await.payload, Bytes::from_static(b"yes"));
    nats.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_can_be_turned_off() {
    let nats = start(EmbeddedNatsConfig::ephemeral()).await;
    let mut raw = Raw::connect(nats.local_addr()).await;
    raw.send(b"SUB e 1\r\nPUB e 1\r\na\r\nPING\r\n").await;
    assert_eq!(raw.line().await, "MSG e 1 1");
    assert_eq!(raw.line().await, "a");
    assert_eq!(raw.line().await, "PONG");
    raw.send(b"CONNECT {\"echo\":false}\r\nPUB e 1\r\nb\r\nPING\r\n")
        .await;
    assert_eq!(raw.line().await, "PONG");
    nats.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_arrive_in_order() {
    const N: usize = 10_000;
    let nats = start(EmbeddedNatsConfig::ephemeral()).await;
    let publisher = client(&nats).await;
    let subscriber = client(&nats).await;
    let mut sub = subscriber.subscribe("seq").await.expect("subscribe");
    settle(&subscriber).await;
    let send = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish("seq", i.to_string().into())
                .await
                .expect("publish");
        }
        publisher.flush().await.expect("flush");
    });
    for i in 0..N {
        let m = next_msg(&mut sub).await;
        assert_eq!(
            m.payload,
            Bytes::from(i.to_string()),
            "message {i} out of order"
        );
    }
    timeout(WAIT, send)
        .await
        .expect("publisher done")
        .expect("publisher ok");
    nats.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_cross_many_reads() {
    let mut cfg = EmbeddedNatsConfig::ephemeral();
    cfg.max_payload = 8 << 20;
    let nats = start(cfg).await;
    let c = client(&nats).await;
    let mut sub = c.subscribe("big").await.expect("subscribe");
    settle(&c).await;
    let body: Vec<u8> = (0..(4 << 20)).map(|i: u32| (i % 251) as u8).collect();
    c.publish("big", body.clone().into())
        .await
        .expect("publish");
    let m = next_msg(&mut sub).await;
    assert!(m.payload == body, "4 MiB payload intact");
    nats.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_and_others_keep_going() {
    let mut cfg = EmbeddedNatsConfig::ephemeral();
    cfg.max_payload = 1024;
    cfg.max_pending = 256 * 1024;
    cfg.write_deadline = Duration::from_secs(2);
    let nats = start(cfg).await;

    // Subscribes, then never reads.
    let mut slow = Raw::connect(nats.local_addr()).await;
    slow.send(b"SUB flood 1\r\nPING\r\n").await;
    assert_eq!(slow.line().await, "PONG");

    let publisher = client(&nats).await;
    let body = Bytes::from(vec![b'x'; 1000]);
    // 64 MiB in total: far more than the socket buffers plus max_pending can hold.
    for _ in 0..65_536 {
        publisher
            .publish("flood", body.clone())
            .await
            .expect("publish");
        if nats.connection_count() == 1 {
            break;
        }
    }
    publisher.flush().await.expect("flush");
    let closed = timeout(WAIT, async {
        for _ in 0..1000 {
            if nats.connection_count() == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "slow consumer disconnected");
    assert_eq!(nats.connection_count(), 1);
    slow.read_to_eof().await;

    // The publisher is unaffected.
    let mut sub = publisher.subscribe("after").await.expect("subscribe");
    settle(&publisher).await;
    publisher
        .publish("after", "ok".into())
        .await
        .expect("publish");
    assert_eq!(next_msg(&mut sub).await.payload, Bytes::from_static(b"ok"));
    nats.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_a_config_file_and_shuts_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nats.conf");
    std::fs::write(
        &path,
        "# embedded broker\nlisten: 127.0.0.1:0\nmax_payload: 64KB\nauthorization { user: a }\n",
    )
    .expect("write conf");
    let cfg = EmbeddedNatsConfig::from_file(&path).expect("parse conf");
    assert_eq!(cfg.ignored_keys, vec!["authorization".to_owned()]);
    let nats = start(cfg).await;
    let c = client(&nats).await;
    assert_eq!(c.server_info().max_payload, 64 * 1024);
    let mut raw = Raw::connect(nats.local_addr()).await;
    let addr = nats.local_addr();
    nats.shutdown().await;
    raw.read_to_eof().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}
