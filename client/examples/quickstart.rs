//! Quickstart: create a stream, publish to it, and read it back.
//!
//! Needs a Drawbridge (or Liftbridge) server on 127.0.0.1:9292:
//!
//! ```sh
//! cargo run -p drawbridge-client --example quickstart
//! ```

use std::time::Duration;

use drawbridge_client::{
    AckPolicy, Client, Error, PublishMessage, StartAt, StopAt, StreamOptions, SubscribeOptions,
};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let client = Client::builder(["127.0.0.1:9292"])
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await?;

    // A stream with 2 partitions recording NATS subject "quickstart".
    let opts = StreamOptions {
        partitions: 2,
        ..StreamOptions::default()
    };
    match client.create_stream("quickstart", "quickstart", opts).await {
        Ok(()) => println!("created stream quickstart"),
        Err(Error::StreamExists) => println!("stream quickstart already exists"),
        Err(e) => return Err(e),
    }

    // One message, waiting for its ack.
    let ack = client
        .publish(
            "quickstart",
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
        pending.push(publisher.send("quickstart", msg).await?);
    }
    for ack in pending {
        if let Some(ack) = ack.await? {
            println!("acked offset {}", ack.offset);
        }
    }

    // Read partition 0 from the beginning up to the newest record, then stop.
    let mut sub = client
        .subscribe(
            "quickstart",
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
