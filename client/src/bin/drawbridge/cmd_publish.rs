//! `drawbridge publish`: one message from an argument or stdin, or one per stdin line.

use bytes::Bytes;
use drawbridge_client::{Client, PublishMessage};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::args::PublishArgs;
use crate::{CliError, CliResult};

/// The message the flags describe, with `value` as its payload; `nth` counts the messages of
/// one invocation (0 for the first), added to `--sequence`.
pub fn build_message(args: &PublishArgs, value: Bytes, nth: u64) -> PublishMessage {
    let mut msg = PublishMessage::new(value)
        .headers(args.headers.iter().cloned())
        .ack_policy(args.ack_policy.into());
    if let Some(key) = &args.key {
        msg = msg.key(Bytes::copy_from_slice(key.as_bytes()));
    }
    msg = match (args.partition, &args.key) {
        (Some(p), _) => msg.partition(p),
        (None, Some(_)) => msg.partition_by_key(),
        (None, None) => msg,
    };
    if let Some(offset) = args.expected_offset {
        msg = msg.expected_offset(offset);
    }
    if let (Some(producer), Some(seq)) = (&args.producer_id, args.sequence) {
        msg = msg.idempotent(
            Bytes::copy_from_slice(producer.as_bytes()),
            seq.saturating_add(nth),
        );
    }
    msg
}

pub async fn run(client: &Client, args: PublishArgs) -> CliResult {
    if args.lines {
        return publish_lines(client, &args).await;
    }
    let value = match args.value.as_deref() {
        Some(v) if v != "-" => Bytes::copy_from_slice(v.as_bytes()),
        _ => {
            let mut buf = Vec::new();
            tokio::io::stdin()
                .read_to_end(&mut buf)
                .await
                .map_err(|e| CliError::io("reading stdin", e))?;
            Bytes::from(buf)
        }
    };
    match client
        .publish(&args.stream, build_message(&args, value, 0))
        .await?
    {
        Some(ack) => println!(
            "published to {} ({}) at offset {}",
            ack.stream, ack.msg_subject, ack.offset
        ),
        None => println!("published to {} (no ack requested)", args.stream),
    }
    Ok(())
}

/// Publishes every stdin line, pipelined, and prints each offset in input order.
async fn publish_lines(client: &Client, args: &PublishArgs) -> CliResult {
    let publisher = client.publisher()?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut acks = std::collections::VecDeque::new();
    let mut count = 0u64;
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| CliError::io("reading stdin", e))?
    {
        let msg = build_message(args, Bytes::from(line.into_bytes()), count);
        acks.push_back(publisher.send(&args.stream, msg).await?);
        count += 1;
        // Keep memory bounded on long inputs: settle the oldest acks as we go.
        while acks.len() > 1024 {
            if let Some(ack) = acks.pop_front() {
                print_ack(ack.await?);
            }
        }
    }
    while let Some(ack) = acks.pop_front() {
        print_ack(ack.await?);
    }
    if args.ack_policy == crate::args::AckArg::None {
        println!("published {count} message(s) (no acks requested)");
    }
    Ok(())
}

fn print_ack(ack: Option<drawbridge_client::Ack>) {
    if let Some(ack) = ack {
        println!("{}", ack.offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;
    use drawbridge_client::AckPolicy;

    fn args(extra: &[&str]) -> PublishArgs {
        let mut argv = vec!["drawbridge", "publish", "s"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Publish(p) => p,
            _ => panic!("expected publish"),
        }
    }

    #[test]
    fn message_from_flags() {
        let a = args(&["v", "-k", "key", "-H", "x=1", "--expected-offset", "3"]);
        let msg = build_message(&a, Bytes::from_static(b"v"), 0);
        assert_eq!(msg.policy(), AckPolicy::Leader);
        let dbg = format!("{msg:?}");
        assert!(
            dbg.contains("Key"),
            "key given without partition hashes the key: {dbg}"
        );
        assert!(dbg.contains("expected_offset: Some(3)"), "{dbg}");
        let a = args(&["v", "-k", "key", "-p", "2", "--ack-policy", "none"]);
        let msg = build_message(&a, Bytes::from_static(b"v"), 0);
        assert!(format!("{msg:?}").contains("Partition(2)"));
        assert_eq!(msg.policy(), AckPolicy::None);
    }

    #[test]
    fn idempotent_flags_set_the_producer_headers() {
        let a = args(&["v", "--producer-id", "p1", "--sequence", "7"]);
        let dbg = format!("{:?}", build_message(&a, Bytes::from_static(b"v"), 2));
        assert!(dbg.contains("drawbridge-producer-id"), "{dbg}");
        assert!(
            dbg.contains("b\"9\""),
            "the third message takes sequence 9: {dbg}"
        );
        let no_seq = ["drawbridge", "publish", "s", "v", "--producer-id", "p1"];
        assert!(
            Cli::try_parse_from(no_seq).is_err(),
            "--producer-id needs --sequence"
        );
    }
}
