//! The harness itself: a real nats-server starts on a free port, carries messages, and is gone
//! once its guard drops; the nftables links of the partition tests cut and heal connections.

use drawbridge_tests::nats::NatsServer;
use drawbridge_tests::netns::{self, Backend};
use drawbridge_tests::nft::{NftLinks, NodePorts, GID_BASE};
use drawbridge_tests::process::ChildGuard;
use drawbridge_tests::proxy::Mode;
use futures::StreamExt;
use std::time::Duration;

#[tokio::test]
async fn nats_server_starts_carries_messages_and_stops() {
    let Some(server) = NatsServer::start_or_skip("nats_server_starts_carries_messages_and_stops")
    else {
        return;
    };
    let client = async_nats::connect(server.url()).await.expect("connect");
    let mut sub = client.subscribe("harness.test").await.expect("subscribe");
    client.flush().await.expect("flush");
    for i in 0..10u32 {
        client
            .publish("harness.test", i.to_string().into())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    for i in 0..10u32 {
        let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("message within 5 s")
            .expect("subscription open");
        assert_eq!(msg.payload.as_ref(), i.to_string().as_bytes());
    }
    let port = server.port();
    drop(client);
    drop(server);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nats-server still listening after its guard dropped"
    );
}

/// Accepts one connection on `listener` within 5 s.
fn accept_within(listener: &std::net::TcpListener) -> std::net::TcpStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false).expect("blocking");
                return conn;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(std::time::Instant::now() < deadline, "no connection in 5 s");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A `bash` echo client running with group id `gid`: connects to `127.0.0.1:port` and sends
/// back every line it reads (stopped by PID when the guard drops).
fn echo_client(gid: u32, port: u16) -> ChildGuard {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("bash");
    cmd.args([
        "-c",
        "exec 3<>/dev/tcp/127.0.0.1/$0 || exit 7; \
         while IFS= read -r l <&3; do printf '%s\\n' \"$l\" >&3; done",
        &port.to_string(),
    ])
    .gid(gid)
    .stdin(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    ChildGuard::spawn(format!("echo-client:{gid}"), &mut cmd).expect("spawn bash")
}

/// Sends `line` and reads the echo within `wait`: `Some(echo)`, or `None` when nothing came.
fn echo(conn: &mut std::net::TcpStream, line: &str, wait: Duration) -> Option<String> {
    use std::io::{Read, Write};
    conn.write_all(format!("{line}\n").as_bytes())
        .expect("write");
    conn.set_read_timeout(Some(wait)).expect("timeout");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\n") {
        match conn.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            Ok(_) => panic!("the connection closed"),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                assert!(got.is_empty(), "half a line: {got:?}");
                return None;
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    Some(String::from_utf8_lossy(&got).trim_end().to_owned())
}

/// The nftables links of the partition tests ([`drawbridge_tests::nft`]), in a private network
/// namespace (the test re-runs itself there, [`netns::run_in_child`]): a connection that a
/// process with node 0's gid opened to node 1's port is counted; a silent cut (`isolate`,
/// Blackhole) holds its bytes both ways and the heal delivers them; a NATS cut with Reset
/// resets the open connection to the NATS port and refuses new ones until the heal.
#[test]
fn nft_links_cut_and_heal_loopback_connections() {
    let test = "nft_links_cut_and_heal_loopback_connections";
    if !netns::inside() {
        match netns::decide(test) {
            Ok(Backend::Netns) => {
                netns::run_in_child(test, Duration::from_secs(60)).expect("namespace child");
                return;
            }
            Ok(Backend::Proxy) => {
                eprintln!("{test}: skipped (the proxies are tested in drawbridge_tests::proxy)");
                return;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let node1 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nats = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let (p1, pn) = (
        node1.local_addr().expect("addr").port(),
        nats.local_addr().expect("addr").port(),
    );
    let links = NftLinks::install(
        vec![
            NodePorts {
                gid: GID_BASE,
                raft: 1,
                listening: Vec::new(),
            },
            NodePorts {
                gid: GID_BASE + 1,
                raft: p1,
                listening: vec![p1],
            },
        ],
        pn,
    )
    .expect("nft table");

    // Node 0 → node 1: echoed, counted; held while cut, delivered after the heal.
    let client = echo_client(GID_BASE, p1);
    let mut conn = accept_within(&node1);
    assert_eq!(
        echo(&mut conn, "a", Duration::from_secs(3)).as_deref(),
        Some("a")
    );
    let counted = links.raft_bytes(0).expect("counters");
    assert!(counted > 0, "node 0's connection was not marked");
    links
        .isolate(0, Mode::Blackhole, &[client.pid(), None])
        .expect("isolate");
    assert_eq!(echo(&mut conn, "b", Duration::from_millis(800)), None);
    links.heal().expect("heal");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut conn), &mut line)
        .expect("the held line after the heal");
    assert_eq!(line.trim_end(), "b");
    assert!(links.raft_bytes(0).expect("counters") > counted);

    // Node 0 → NATS: reset at once, new connections refused, served again after the heal.
    let to_nats = echo_client(GID_BASE, pn);
    let mut nconn = accept_within(&nats);
    assert_eq!(
        echo(&mut nconn, "n", Duration::from_secs(3)).as_deref(),
        Some("n")
    );
    links
        .cut_from_nats(0, Mode::Reset, to_nats.pid())
        .expect("cut from NATS");
    nconn
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut buf = [0u8; 8];
    let got = std::io::Read::read(&mut nconn, &mut buf);
    assert!(
        matches!(got, Ok(0))
            || matches!(&got, Err(e) if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            )),
        "the NATS connection was not reset: {got:?}"
    );
    let mut refused = echo_client(GID_BASE, pn);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !refused.has_exited() {
        assert!(
            std::time::Instant::now() < deadline,
            "a new connection was not refused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    links.heal().expect("heal");
    let _again = echo_client(GID_BASE, pn);
    let mut aconn = accept_within(&nats);
    assert_eq!(
        echo(&mut aconn, "m", Duration::from_secs(3)).as_deref(),
        Some("m")
    );
    drop(client);
}
