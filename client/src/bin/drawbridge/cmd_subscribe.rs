//! `drawbridge subscribe`: tail a partition, printing raw values or JSON lines.

use std::io::Write;

use drawbridge_client::{Client, StopAt, SubscribeOptions};
use futures::StreamExt;

use crate::args::{Format, SubscribeArgs};
use crate::output::message_json;
use crate::{CliError, CliResult};

/// The subscription the flags ask for.
pub fn subscribe_options(args: &SubscribeArgs) -> SubscribeOptions {
    SubscribeOptions {
        partition: args.partition,
        start: args.from,
        stop: args.to.unwrap_or(StopAt::Cancel),
        read_isr_replica: args.read_isr_replica,
        resume: args.resume,
        reverse: args.reverse,
    }
}

pub async fn run(client: &Client, args: SubscribeArgs) -> CliResult {
    if args.count == Some(0) {
        return Ok(());
    }
    let mut sub = client
        .subscribe(&args.stream, subscribe_options(&args))
        .await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut seen = 0u64;
    while let Some(msg) = sub.next().await {
        let msg = msg?;
        let written = match args.format {
            Format::Raw => out
                .write_all(&msg.value)
                .and_then(|()| out.write_all(b"\n")),
            Format::Json => writeln!(out, "{}", message_json(&msg)),
        };
        written
            .and_then(|()| out.flush())
            .map_err(|e| CliError::io("writing to stdout", e))?;
        seen += 1;
        if args.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}
