//! Subscribe: read a stream partition from a start position to a stop position, or tail it.
//!
//! ```sh
//! drawbridge-server --embedded-nats &
//! cargo run -p drawbridge-client --example subscribe -- [stream] [--follow]
//! ```
//!
//! Without `--follow` it reads from the oldest record to the newest and stops; with it, it
//! keeps waiting for new records (Ctrl-C to stop). The server address comes from
//! `DRAWBRIDGE_ADDR` (default 127.0.0.1:9292).

use drawbridge_client::{Client, StartAt, StopAt, SubscribeOptions};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), drawbridge_client::Error> {
    let addr = std::env::var("DRAWBRIDGE_ADDR").unwrap_or_else(|_| "127.0.0.1:9292".into());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let follow = args.iter().any(|a| a == "--follow");
    let stream = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "quickstart".into());

    let client = Client::connect([addr]).await?;
    let options = SubscribeOptions {
        partition: 0,
        start: StartAt::Earliest,
        stop: if follow {
            StopAt::Cancel
        } else {
            StopAt::Latest
        },
        ..SubscribeOptions::default()
    };
    // Returns once the server confirmed the subscription. After a leader change the client
    // resubscribes from the last offset + 1 by itself: no gap, no duplicate.
    let mut sub = client.subscribe(&stream, options).await?;
    let mut count = 0u64;
    while let Some(msg) = sub.next().await {
        let msg = msg?;
        count += 1;
        println!("{}: {}", msg.offset, String::from_utf8_lossy(&msg.value));
    }
    println!("read {count} records; ended: {:?}", sub.end_reason());
    Ok(())
}
