//! `drawbridge subscribe`: tail a partition (or, with `--group`, every partition assigned to
//! a consumer-group member), printing raw values or JSON lines.

use std::io::Write;

use drawbridge_client::{Client, GroupOptions, Message, StopAt, SubscribeOptions};
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
    if let Some(group) = args.group.clone() {
        return run_group(client, &args, &group).await;
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

fn print(out: &mut impl Write, format: Format, msg: &Message) -> CliResult {
    let written = match format {
        Format::Raw => out
            .write_all(&msg.value)
            .and_then(|()| out.write_all(b"\n")),
        Format::Json => writeln!(out, "{}", message_json(msg)),
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| CliError::io("writing to stdout", e))
}

/// `subscribe --group`: a consumer-group member; leaves the group when done.
async fn run_group(client: &Client, args: &SubscribeArgs, group: &str) -> CliResult {
    let consumer = args
        .consumer
        .clone()
        .unwrap_or_else(|| format!("drawbridge-{}", drawbridge_client::new_correlation_id()));
    let opts = GroupOptions { start: args.from };
    let mut member = client
        .consumer_group(group, &consumer, std::slice::from_ref(&args.stream), opts)
        .await?;
    let mut seen = 0u64;
    while let Some(msg) = member.next().await {
        let msg = msg?;
        print(&mut std::io::stdout().lock(), args.format, &msg)?;
        if args.commit {
            member.commit(&msg).await?;
        }
        seen += 1;
        if args.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    member.leave().await?;
    Ok(())
}
