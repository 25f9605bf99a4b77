//! `drawbridge metadata`, `drawbridge cluster status` and `drawbridge cluster verify`.

use drawbridge_client::{Client, Metadata, VerifyReport};
use serde_json::{json, Value};

use crate::args::MetadataArgs;
use crate::output::markdown_table;
use crate::{CliError, CliResult};

pub async fn metadata(client: &Client, args: MetadataArgs) -> CliResult {
    let md = client.fetch_metadata().await?;
    if args.json {
        println!("{}", metadata_json(&md));
        return Ok(());
    }
    print!("{}", brokers_table(&md));
    println!();
    let mut rows = Vec::new();
    for s in md.streams() {
        for p in s.partitions.values() {
            rows.push(vec![
                s.name.clone(),
                s.subject.clone(),
                p.id.to_string(),
                p.leader.clone().unwrap_or_else(|| "-".into()),
                p.replicas.join(","),
                p.isr.join(","),
                p.high_watermark.to_string(),
                p.newest_offset.to_string(),
            ]);
        }
    }
    if rows.is_empty() {
        println!("no streams");
    } else {
        print!(
            "{}",
            markdown_table(
                &[
                    "stream",
                    "subject",
                    "partition",
                    "leader",
                    "replicas",
                    "isr",
                    "high watermark",
                    "newest offset"
                ],
                &rows
            )
        );
    }
    Ok(())
}

/// Metadata as one JSON document.
pub fn metadata_json(md: &Metadata) -> Value {
    let brokers: Vec<Value> = md
        .brokers()
        .map(|b| {
            json!({
                "id": b.id, "host": b.host, "port": b.port,
                "partition_count": b.partition_count, "leader_count": b.leader_count,
            })
        })
        .collect();
    let streams: Vec<Value> = md
        .streams()
        .map(|s| {
            let partitions: Vec<Value> = s
                .partitions
                .values()
                .map(|p| {
                    json!({
                        "id": p.id, "leader": p.leader, "replicas": p.replicas, "isr": p.isr,
                        "high_watermark": p.high_watermark, "newest_offset": p.newest_offset,
                        "paused": p.paused, "readonly": p.readonly,
                    })
                })
                .collect();
            json!({ "name": s.name, "subject": s.subject, "partitions": partitions })
        })
        .collect();
    json!({ "brokers": brokers, "streams": streams })
}

fn brokers_table(md: &Metadata) -> String {
    let rows: Vec<Vec<String>> = md
        .brokers()
        .map(|b| {
            vec![
                b.id.clone(),
                b.addr(),
                b.partition_count.to_string(),
                b.leader_count.to_string(),
            ]
        })
        .collect();
    markdown_table(&["broker", "address", "partitions", "leaders"], &rows)
}

/// The `cluster status` report.
pub fn status_report(md: &Metadata) -> String {
    let mut out = format!("brokers: {}\n", md.brokers().count());
    out.push_str(&brokers_table(md));
    let leaderless = md.partitions_without_leader();
    if leaderless.is_empty() {
        out.push_str("\npartitions without a leader: none\n");
    } else {
        out.push_str(&format!(
            "\npartitions without a leader: {}\n",
            leaderless.len()
        ));
        for (stream, p) in leaderless {
            out.push_str(&format!("- {stream}/{p}\n"));
        }
    }
    let under: Vec<String> = md
        .streams()
        .flat_map(|s| {
            s.partitions
                .values()
                .filter(|p| p.isr.len() < p.replicas.len())
                .map(move |p| {
                    format!(
                        "- {}/{} (isr {} of {} replicas)",
                        s.name,
                        p.id,
                        p.isr.len(),
                        p.replicas.len()
                    )
                })
        })
        .collect();
    if under.is_empty() {
        out.push_str("under-replicated partitions: none\n");
    } else {
        out.push_str(&format!("under-replicated partitions: {}\n", under.len()));
        for line in under {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

pub async fn status(client: &Client) -> CliResult {
    let md = client.fetch_metadata().await?;
    print!("{}", status_report(&md));
    Ok(())
}

/// The `cluster verify` report: one line per partition, then the problems.
pub fn verify_text(report: &VerifyReport) -> String {
    let mut out = String::new();
    for p in &report.partitions {
        let range = p
            .range
            .map_or("no committed offsets in common".to_owned(), |(a, b)| {
                format!("offsets {a}..={b}")
            });
        let verdict = if p.divergent() {
            "DIVERGENT"
        } else if p.incomplete() {
            "INCOMPLETE"
        } else {
            "ok"
        };
        out.push_str(&format!(
            "{}/{}: {verdict} ({range})\n",
            p.stream, p.partition
        ));
        if p.divergent() || p.incomplete() {
            for r in &p.replicas {
                let state = r.state.map_or("-".to_owned(), |s| {
                    format!(
                        "earliest {} hw {}{}",
                        s.earliest_offset,
                        s.high_watermark,
                        if s.leader { " leader" } else { "" }
                    )
                });
                let sum = r
                    .sum
                    .map_or("-".to_owned(), |(n, c)| format!("{n} records {c:016x}"));
                let err = r.error.as_deref().unwrap_or("");
                out.push_str(&format!("  {}: {state}; {sum} {err}\n", r.server_id));
            }
        }
    }
    out.push_str(&format!(
        "partitions: {}, divergent: {}, incomplete: {}, records compared: {}\n",
        report.partitions.len(),
        report.divergent().len(),
        report.incomplete().len(),
        report.records()
    ));
    out
}

/// The `cluster verify` report as one JSON document.
pub fn verify_json(report: &VerifyReport) -> Value {
    let partitions: Vec<Value> = report
        .partitions
        .iter()
        .map(|p| {
            let replicas: Vec<Value> = p
                .replicas
                .iter()
                .map(|r| {
                    json!({
                        "server_id": r.server_id,
                        "earliest_offset": r.state.map(|s| s.earliest_offset),
                        "high_watermark": r.state.map(|s| s.high_watermark),
                        "leader": r.state.map(|s| s.leader),
                        "records": r.sum.map(|s| s.0),
                        "checksum": r.sum.map(|s| format!("{:016x}", s.1)),
                        "error": r.error,
                    })
                })
                .collect();
            json!({
                "stream": p.stream, "partition": p.partition,
                "range": p.range.map(|(a, b)| vec![a, b]),
                "divergent": p.divergent(), "incomplete": p.incomplete(),
                "replicas": replicas,
            })
        })
        .collect();
    json!({
        "partitions": partitions,
        "divergent": report.divergent().len(),
        "incomplete": report.incomplete().len(),
        "records": report.records(),
    })
}

pub async fn verify(client: &Client, as_json: bool) -> CliResult {
    let report = client.verify_partitions().await?;
    if as_json {
        println!("{}", verify_json(&report));
    } else {
        print!("{}", verify_text(&report));
    }
    let (divergent, incomplete) = (report.divergent().len(), report.incomplete().len());
    if divergent > 0 {
        return Err(CliError::Check(format!(
            "{divergent} partition(s) have divergent replicas"
        )));
    }
    if incomplete > 0 {
        return Err(CliError::Check(format!(
            "{incomplete} partition(s) could not be compared on every replica"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_proto::api;
    use std::collections::HashMap;

    fn sample() -> Metadata {
        let part =
            |id: i32, leader: &str, replicas: &[&str], isr: &[&str]| api::PartitionMetadata {
                id,
                leader: leader.into(),
                replicas: replicas.iter().map(|s| s.to_string()).collect(),
                isr: isr.iter().map(|s| s.to_string()).collect(),
                high_watermark: 4,
                newest_offset: 4,
                ..Default::default()
            };
        let mut partitions = HashMap::new();
        partitions.insert(0, part(0, "a", &["a", "b"], &["a", "b"]));
        partitions.insert(1, part(1, "", &["a", "b"], &["a"]));
        Metadata::from(api::FetchMetadataResponse {
            brokers: vec![
                api::Broker {
                    id: "a".into(),
                    host: "127.0.0.1".into(),
                    port: 9292,
                    partition_count: 2,
                    leader_count: 1,
                },
                api::Broker {
                    id: "b".into(),
                    host: "127.0.0.1".into(),
                    port: 9293,
                    partition_count: 2,
                    leader_count: 0,
                },
            ],
            stream_metadata: vec![api::StreamMetadata {
                name: "orders".into(),
                subject: "orders".into(),
                partitions,
                ..Default::default()
            }],
            group_metadata: vec![],
        })
    }

    #[test]
    fn status_lists_counts_and_problems() {
        let report = status_report(&sample());
        assert_eq!(
            report,
            "brokers: 2
| broker | address | partitions | leaders |
|---|---|---|---|
| a | 127.0.0.1:9292 | 2 | 1 |
| b | 127.0.0.1:9293 | 2 | 0 |

partitions without a leader: 1
- orders/1
under-replicated partitions: 1
- orders/1 (isr 1 of 2 replicas)
"
        );
    }

    #[test]
    fn metadata_as_json() {
        let v = metadata_json(&sample());
        assert_eq!(v["brokers"][1]["port"], 9293);
        assert_eq!(v["streams"][0]["partitions"][0]["leader"], "a");
        assert_eq!(v["streams"][0]["partitions"][1]["leader"], Value::Null);
        assert_eq!(v["streams"][0]["partitions"][1]["isr"], json!(["a"]));
    }
}
