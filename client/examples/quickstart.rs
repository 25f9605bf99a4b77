//! Quickstart: create a stream, publish to it, and read it back.
//!
//! Needs a Drawbridge (or Liftbridge) server, on 127.0.0.1:9292 unless `DRAWBRIDGE_ADDR` says
//! otherwise; the stream name is the first argument (default `quickstart`):
//!
//! ```sh
//! drawbridge-server --embedded-nats &
//! cargo run -p drawbridge-client --example quickstart
//! ```

use std::time::Duration;

use drawbridge_client::{
    AckPolicy, Client, Error, PublishMessage, StartAt, StopAt, StreamOptions, SubscribeOptions,
};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::var("DRAWBRIDGE_ADDR").unwrap_or_else(|_| "127.0.0.1:9292".into());
    let stream = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "quickstart".into());
    let stream = stream.as_str();
    let client = Client::builder([addr])
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await?;

    // A stream with 2 partitions recording the NATS subject of the same name.
    let opts = StreamOptions {
        partitions: 2,
        ..StreamOptions::default()
    };
    match client.create_stream(stream, stream, opts).await {
        Ok(()) => println!("created stream {stream}"),
        Err(Error::StreamExists) => println!("stream {stream} already exists"),
        Err(e) => return Err(e),
    }

    // One message, waiting for its ack.
    let ack = client
        .publish(
            stream,
            PublishMessage::new("hello")
                .key("greeting")
                .header("lang", "en")
                .partition(0)
                .ack_policy(AckPolicy::All),
        )
        .await?;
    if let Some(ack) = ack {
        println!("hello stored at offset {}", ack.offset);
    }

    // Many messages in flight over one stream.
    let publisher = client.publisher()?;
    let mut pending = Vec::new();
    for i in 0..10 {
        let msg = PublishMessage::new(format!("message {i}")).partition(0);
        pending.push(publisher.send(stream, msg).await?);
    }
    for ack in pending {
        if let Some(ack) = ack.await? {
            println!("acked offset {}", ack.offset);
        }
    }

    // Read partition 0 from the beginning up to the newest record, then stop.
    let mut sub = client
        .subscribe(
            stream,
            SubscribeOptions {
                partition: 0,
                start: StartAt::Earliest,
                stop: StopAt::Latest,
                ..SubscribeOptions::default()
            },
        )
        .await?;
    while let Some(msg) = sub.next().await {
        let msg = msg?;
        println!(
            "offset {}: {}",
            msg.offset,
            String::from_utf8_lossy(&msg.value)
        );
    }
    println!("subscription ended: {:?}", sub.end_reason());
    Ok(())
}
