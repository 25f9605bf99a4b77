//! Reading back every replica of a fault-test partition (issue 7): each node is read from the
//! earliest offset through its own client port with `readISRReplica = true`, and the reads go
//! into the checker's [`History`].
//!
//! Invariants: only partition 0 is read; every read is bounded in time (30 s per read, 10 s of
//! retries while a node is briefly outside the recorded ISR, 40 s to catch up).

use std::time::{Duration, Instant};

use drawbridge_proto::api::{self, api_client::ApiClient};

use crate::checker::History;
use crate::cluster::{Cluster, TestResult};

/// Reads a node's replica (`read_node_once`), retrying for at most 10 s while the node
/// answers FailedPrecondition "not in partition ISR": the ISR recorded in metadata trails the
/// replica's catch-up (and a replica can briefly drop out of it after a fault), so a replica
/// that holds every record may still be refused for a moment.
pub async fn read_node(port: u16, stream: &str) -> TestResult<Vec<(i64, Vec<u8>)>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 0.. {
        match read_node_once(port, stream).await {
            Err(NodeRead::NotInIsr(msg)) if Instant::now() < deadline && attempt < 50 => {
                eprintln!("faults: {msg}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(NodeRead::NotInIsr(msg)) => return Err(msg.into()),
            Err(NodeRead::Other(e)) => return Err(e),
            Ok(out) => return Ok(out),
        }
    }
    Err(format!("reading port {port}: out of attempts").into())
}

/// Why one read of a node failed.
enum NodeRead {
    /// The node refused a read-ISR-replica subscription because it is not in the ISR.
    NotInIsr(String),
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> From<E> for NodeRead {
    fn from(e: E) -> Self {
        NodeRead::Other(e.into())
    }
}

/// Reads partition 0 of `stream` on the node at `port` from its earliest offset to its
/// newest committed one (`STOP_LATEST`, `readISRReplica`), bounded.
async fn read_node_once(port: u16, stream: &str) -> Result<Vec<(i64, Vec<u8>)>, NodeRead> {
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let mut api = ApiClient::new(channel);
    let req = api::SubscribeRequest {
        stream: stream.to_owned(),
        partition: 0,
        start_position: api::StartPosition::Earliest as i32,
        stop_position: api::StopPosition::StopLatest as i32,
        read_isr_replica: true,
        ..Default::default()
    };
    let mut calls = match api.subscribe(req).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::ResourceExhausted => return Ok(Vec::new()),
        Err(s)
            if s.code() == tonic::Code::FailedPrecondition
                && s.message().contains("not in partition ISR") =>
        {
            return Err(NodeRead::NotInIsr(format!("subscribe on port {port}: {s}")))
        }
        Err(s) => return Err(format!("subscribe on port {port}: {s}").into()),
    };
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, calls.message()).await {
            Ok(Ok(Some(m))) if m == api::Message::default() => {}
            Ok(Ok(Some(m))) => out.push((m.offset, m.value.to_vec())),
            Ok(Ok(None)) => return Ok(out),
            Ok(Err(s)) if s.code() == tonic::Code::ResourceExhausted => return Ok(out),
            Ok(Err(s)) => {
                return Err(format!("reading port {port} after {}: {s}", out.len()).into())
            }
            Err(_) => return Err(format!("reading port {port}: no end within 30 s").into()),
        }
    }
}

/// Waits (≤ 40 s) until every node serves the same last offset, at or above the high watermark
/// the partition metadata reports, then records every node's read in `h`. Fails if a node does
/// not answer.
///
/// Agreement, not just the reported high watermark: the metadata may come from a deposed
/// leader that has not yet heard of the new term — after a silent partition heals, its peers'
/// connections resume only at TCP's next retransmission, seconds later — and that node
/// reports its own, stale high watermark, which its own stale replica reaches.
pub async fn read_all_caught_up(cl: &Cluster, stream: &str, h: &mut History) -> TestResult {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(40);
    loop {
        let hw = cl
            .client
            .fetch_partition_metadata(stream, 0)
            .await
            .map(|p| p.high_watermark)
            .ok();
        let mut reads = Vec::new();
        for s in cl.servers.iter().flatten() {
            reads.push((s.spec.id.clone(), read_node(s.spec.port, stream).await));
        }
        let lasts: Vec<i64> = reads
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .map(|r| r.last().map_or(-1, |(o, _)| *o))
            .collect();
        let caught_up = hw.is_some_and(|hw| {
            lasts.len() == reads.len() && lasts.iter().all(|l| *l >= hw && Some(l) == lasts.first())
        });
        if caught_up || Instant::now() >= deadline {
            let mut summary = Vec::new();
            for (node, read) in reads {
                let read = read?;
                summary.push(format!(
                    "{node}: {} records, last {:?}",
                    read.len(),
                    read.last().map(|(o, _)| *o)
                ));
                h.record_read(&node, 0, read);
            }
            eprintln!(
                "faults: reported high watermark {hw:?}; {} (after {:?})",
                summary.join("; "),
                started.elapsed()
            );
            if !caught_up {
                eprintln!("faults: not every node caught up within 40 s");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
