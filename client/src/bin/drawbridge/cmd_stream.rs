//! `drawbridge stream create|list|info|delete|pause|resume|readonly`.

use drawbridge_client::{Client, PauseOptions, ReadonlyOptions, StreamOptions};

use crate::args::{CreateArgs, StreamCommand};
use crate::output::markdown_table;
use crate::CliResult;

pub async fn run(client: &Client, cmd: StreamCommand) -> CliResult {
    match cmd {
        StreamCommand::Create(args) => create(client, args).await,
        StreamCommand::List { all } => list(client, all).await,
        StreamCommand::Info { name } => info(client, &name).await,
        StreamCommand::Delete { name } => {
            client.delete_stream(&name).await?;
            println!("deleted stream {name}");
            Ok(())
        }
        StreamCommand::Pause {
            name,
            partitions,
            resume_all,
        } => {
            let which = list_partitions(&partitions);
            client
                .pause_stream(
                    &name,
                    PauseOptions {
                        partitions,
                        resume_all,
                    },
                )
                .await?;
            println!("paused stream {name} partitions {which}");
            Ok(())
        }
        StreamCommand::Resume { name, partitions } => resume(client, &name, partitions).await,
        StreamCommand::Readonly {
            name,
            partitions,
            off,
        } => {
            let which = list_partitions(&partitions);
            client
                .set_stream_readonly(
                    &name,
                    ReadonlyOptions {
                        partitions,
                        readonly: !off,
                    },
                )
                .await?;
            let state = if off { "writable" } else { "readonly" };
            println!("stream {name} partitions {which} are {state}");
            Ok(())
        }
    }
}

fn list_partitions(partitions: &[i32]) -> String {
    if partitions.is_empty() {
        "all".to_string()
    } else {
        partitions
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Resumes the given partitions, or every paused one.
async fn resume(client: &Client, name: &str, partitions: Vec<i32>) -> CliResult {
    let partitions = if partitions.is_empty() {
        let md = client.fetch_metadata().await?;
        let Some(stream) = md.stream(name) else {
            return Err(drawbridge_client::Error::NoSuchStream(name.to_string()).into());
        };
        stream
            .partitions
            .iter()
            .filter(|(_, p)| p.paused)
            .map(|(id, _)| *id)
            .collect()
    } else {
        partitions
    };
    for p in &partitions {
        client.resume_partition(name, *p).await?;
    }
    println!(
        "resumed stream {name} partitions {}",
        list_partitions(&partitions)
    );
    Ok(())
}

/// The stream options the flags ask for.
pub fn stream_options(args: &CreateArgs) -> StreamOptions {
    StreamOptions {
        partitions: args.partitions,
        replication_factor: args.replication_factor,
        group: args.group.clone(),
        retention_max_bytes: args.retention_max_bytes,
        retention_max_messages: args.retention_max_messages,
        retention_max_age: args.retention_max_age,
        cleaner_interval: args.cleaner_interval,
        segment_max_bytes: args.segment_max_bytes,
        segment_max_age: args.segment_max_age,
        compact_enabled: args.compact_enabled,
        compact_max_goroutines: args.compact_max_goroutines,
        auto_pause_time: args.auto_pause_time,
        auto_pause_disable_if_subscribers: args.auto_pause_disable_if_subscribers,
        min_isr: args.min_isr,
        optimistic_concurrency_control: args.optimistic_concurrency_control,
        encryption: if args.encrypt {
            Some(true)
        } else {
            args.encryption
        },
    }
}

async fn create(client: &Client, args: CreateArgs) -> CliResult {
    let subject = args.subject.clone().unwrap_or_else(|| args.name.clone());
    client
        .create_stream(&subject, &args.name, stream_options(&args))
        .await?;
    println!(
        "created stream {} on subject {subject} ({} partition(s))",
        args.name,
        args.partitions.max(1)
    );
    Ok(())
}

async fn list(client: &Client, all: bool) -> CliResult {
    let md = client.fetch_metadata().await?;
    let rows: Vec<Vec<String>> = md
        .streams()
        .filter(|s| all || !s.name.starts_with("__"))
        .map(|s| {
            vec![
                s.name.clone(),
                s.subject.clone(),
                s.partitions.len().to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no streams");
    } else {
        print!(
            "{}",
            markdown_table(&["stream", "subject", "partitions"], &rows)
        );
    }
    Ok(())
}

fn list_ids(ids: &[String]) -> String {
    if ids.is_empty() {
        "-".to_string()
    } else {
        ids.join(",")
    }
}

async fn info(client: &Client, name: &str) -> CliResult {
    let md = client.fetch_metadata().await?;
    let Some(stream) = md.stream(name) else {
        return Err(drawbridge_client::Error::NoSuchStream(name.to_string()).into());
    };
    println!("stream {} on subject {}", stream.name, stream.subject);
    let mut rows = Vec::new();
    for (id, cached) in &stream.partitions {
        // The leader's view is authoritative; fall back to the metadata view if it fails.
        let (p, note) = match client.fetch_partition_metadata(name, *id).await {
            Ok(p) => (p, String::new()),
            Err(e) => (cached.clone(), format!("(leader unreachable: {e})")),
        };
        rows.push(vec![
            p.id.to_string(),
            p.leader.clone().unwrap_or_else(|| "-".into()),
            list_ids(&p.replicas),
            list_ids(&p.isr),
            p.high_watermark.to_string(),
            p.newest_offset.to_string(),
            p.paused.to_string(),
            p.readonly.to_string(),
            note,
        ]);
    }
    print!(
        "{}",
        markdown_table(
            &[
                "partition",
                "leader",
                "replicas",
                "isr",
                "high watermark",
                "newest offset",
                "paused",
                "readonly",
                "note"
            ],
            &rows
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;
    use std::time::Duration;

    #[test]
    fn flags_become_stream_options() {
        let cli = Cli::try_parse_from([
            "drawbridge",
            "stream",
            "create",
            "s",
            "--partitions",
            "2",
            "--group",
            "g",
            "--segment-max-age",
            "90s",
            "--min-isr",
            "2",
            "--encryption",
            "false",
        ])
        .expect("parses");
        let Command::Stream(StreamCommand::Create(c)) = cli.command else {
            panic!("expected create");
        };
        let o = stream_options(&c);
        assert_eq!(o.partitions, 2);
        assert_eq!(o.replication_factor, 1);
        assert_eq!(o.group.as_deref(), Some("g"));
        assert_eq!(o.segment_max_age, Some(Duration::from_secs(90)));
        assert_eq!(o.min_isr, Some(2));
        assert_eq!(o.encryption, Some(false));
        assert_eq!(o.compact_enabled, None);
        assert_eq!(o.retention_max_age, None);
    }

    #[test]
    fn encrypt_is_encryption_true_and_excludes_it() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["drawbridge", "stream", "create", "s"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::Stream(StreamCommand::Create(c)) => stream_options(&c).encryption,
                _ => None,
            })
        };
        assert_eq!(parse(&["--encrypt"]).expect("parses"), Some(true));
        assert_eq!(parse(&[]).expect("parses"), None);
        assert!(parse(&["--encrypt", "--encryption", "false"]).is_err());
    }
}
