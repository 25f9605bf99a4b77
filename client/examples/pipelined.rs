//! Pipelined publishing: many messages in flight over one PublishAsync stream, one future per
//! message, a bounded window of unsettled futures.
//!
//! ```sh
//! drawbridge-server --embedded-nats &
//! cargo run -p drawbridge-client --example pipelined -- [stream] [count]
//! ```
//!
//! The server address comes from `DRAWBRIDGE_ADDR` (default 127.0.0.1:9292).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use drawbridge_client::{Client, Error, PublishMessage, StreamOptions};

/// Futures left unsettled before `main` waits for the oldest.
const WINDOW: usize = 256;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("DRAWBRIDGE_ADDR").unwrap_or_else(|_| "127.0.0.1:9292".into());
    let mut args = std::env::args().skip(1);
    let stream = args.next().unwrap_or_else(|| "pipelined".into());
    let count: usize = match args.next() {
        Some(n) => n.parse().map_err(|e| format!("count {n:?}: {e}"))?,
        None => 10_000,
    };

    let client = Client::builder([addr])
        .ack_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    match client
        .create_stream(&stream, &stream, StreamOptions::default())
        .await
    {
        Ok(()) | Err(Error::StreamExists) => {}
        Err(e) => return Err(e.into()),
    }

    let publisher = client.publisher()?;
    let started = Instant::now();
    let mut window = VecDeque::with_capacity(WINDOW);
    let (mut first, mut last) = (None, None);
    for i in 0..count {
        // `send` waits for a queue slot only; the ack arrives later through the future.
        let msg = PublishMessage::new(format!("message {i}")).key(format!("key-{}", i % 16));
        window.push_back(publisher.send(&stream, msg).await?);
        if window.len() >= WINDOW {
            if let Some(ack) = window.pop_front() {
                let offset = ack.await?.map(|a| a.offset);
                first = first.or(offset);
                last = offset.or(last);
            }
        }
    }
    // Settle the rest.
    while let Some(ack) = window.pop_front() {
        let offset = ack.await?.map(|a| a.offset);
        first = first.or(offset);
        last = offset.or(last);
    }
    let elapsed = started.elapsed();
    println!(
        "published {count} messages to {stream} (offsets {} to {}) in {:.0} ms: {:.0} msgs/s",
        first.map_or("-".into(), |o| o.to_string()),
        last.map_or("-".into(), |o| o.to_string()),
        elapsed.as_secs_f64() * 1000.0,
        count as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}
