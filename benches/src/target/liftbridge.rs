//! A Liftbridge-API server (Drawbridge, or the real Liftbridge) through `drawbridge-client`.

use std::time::Duration;

use bytes::Bytes;
use drawbridge_client::{
    AckPolicy, Client, Error as ClientError, PublishMessage, Publisher, PublisherOptions, StartAt,
    StreamOptions, SubscribeOptions,
};
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::time::Instant;

use super::{AckFuture, From, PayloadStream};
use crate::error::{BenchError, Result};

/// How long a fresh stream may take to get a leader (and, with RF > 1, a full ISR).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A connected Liftbridge-API cluster and how to publish to it.
#[derive(Debug, Clone)]
pub struct LiftbridgeTarget {
    client: Client,
    /// Ack policy of every message (LEADER for one node, ALL for the RF 3 cluster).
    ack_policy: AckPolicy,
    /// Replicas per stream.
    replication_factor: i32,
    /// Subject prefix, unique per run, so runs against a shared NATS never collide.
    prefix: String,
}

impl LiftbridgeTarget {
    /// Connects to any of `addrs` (`host:port`).
    pub async fn connect(
        addrs: &[String],
        ack_policy: AckPolicy,
        replication_factor: i32,
        prefix: &str,
    ) -> Result<Self> {
        // No keep-alive pings: a grpc-go Liftbridge server closes connections that ping more
        // often than its enforcement policy allows (5 minutes by default), and a benchmark
        // run has no frozen broker to detect.
        let client = Client::builder(addrs)
            .no_keepalive()
            .ack_timeout(Duration::from_secs(30))
            .request_timeout(Duration::from_secs(30))
            .connect()
            .await?;
        Ok(LiftbridgeTarget {
            client,
            ack_policy,
            replication_factor,
            prefix: prefix.to_owned(),
        })
    }

    pub(super) async fn create_stream(&self, name: &str) -> Result<()> {
        let opts = StreamOptions {
            partitions: 1,
            replication_factor: self.replication_factor,
            ..StreamOptions::default()
        };
        let subject = format!("{}.{name}", self.prefix);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            match self
                .client
                .create_stream(&subject, name, opts.clone())
                .await
            {
                Ok(()) | Err(ClientError::StreamExists) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("create_stream {name}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let want_isr = usize::try_from(self.replication_factor.max(1)).unwrap_or(1);
        loop {
            let md = self.client.fetch_metadata().await?;
            let ready = md
                .stream(name)
                .and_then(|s| s.partitions.get(&0))
                .is_some_and(|p| p.leader.is_some() && p.isr.len() >= want_isr);
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Timeout(format!(
                    "stream {name} has no leader with {want_isr} in-sync replicas after {READY_WITHIN:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn delete_stream(&self, name: &str) -> Result<()> {
        match self.client.delete_stream(name).await {
            Ok(()) | Err(ClientError::NoSuchStream(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn sender(&self, name: &str, window: usize) -> Result<LiftbridgeSender> {
        let publisher = self.client.publisher_with(PublisherOptions {
            queue_capacity: window.max(1),
            max_in_flight: window.max(1),
        })?;
        Ok(LiftbridgeSender {
            publisher,
            stream: name.to_owned(),
            ack_policy: self.ack_policy,
        })
    }

    pub(super) async fn subscribe(&self, name: &str, from: From) -> Result<PayloadStream> {
        let opts = SubscribeOptions {
            partition: 0,
            start: match from {
                From::Earliest => StartAt::Earliest,
                From::NewOnly => StartAt::NewOnly,
            },
            ..SubscribeOptions::default()
        };
        let sub = self.client.subscribe(name, opts).await?;
        Ok(sub.map_ok(|m| m.value).map_err(BenchError::from).boxed())
    }
}

/// A `Publisher` bound to one stream, partition 0.
#[derive(Debug)]
pub struct LiftbridgeSender {
    publisher: Publisher,
    stream: String,
    ack_policy: AckPolicy,
}

impl LiftbridgeSender {
    pub(super) async fn send(&self, payload: Bytes) -> Result<AckFuture> {
        let msg = PublishMessage::new(payload)
            .partition(0)
            .ack_policy(self.ack_policy);
        let ack = self.publisher.send(&self.stream, msg).await?;
        Ok(ack.map(|r| r.map(drop).map_err(BenchError::from)).boxed())
    }
}
