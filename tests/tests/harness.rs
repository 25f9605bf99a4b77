//! The harness itself: a real nats-server starts on a free port, carries messages, and is gone
//! once its guard drops.

use drawbridge_tests::nats::NatsServer;
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
