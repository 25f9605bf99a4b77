//! A Liftbridge-API server (Drawbridge, or the real Liftbridge) through `drawbridge-client`.

use std::time::Duration;

use bytes::Bytes;
use drawbridge_client::{
    AckPolicy, Client, Error as ClientError, PublishMessage, Publisher, PublisherOptions, StartAt,
    StreamOptions, SubscribeOptions,
};
use drawbridge_proto::api::{self, api_client::ApiClient};
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::time::Instant;
use tonic::transport::Endpoint;

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
    /// The servers, for [`LiftbridgeTarget::raw_subscribe`].
    addrs: Vec<String>,
    /// Subscribe through a plain generated tonic stub instead of drawbridge-client.
    raw: bool,
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
            addrs: addrs.to_vec(),
            raw: false,
        })
    }

    /// With `raw`, subscriptions use the generated tonic stub over a connection of their own
    /// (no resubscription, no duplicate filter, no hand-over task): the floor of what reading
    /// costs a client, to tell the client library's cost apart from the server's.
    pub fn raw_subscribe(mut self, raw: bool) -> Self {
        self.raw = raw;
        self
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
        if self.raw {
            return self.subscribe_raw(name, from).await;
        }
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

impl LiftbridgeTarget {
    /// A subscription through the generated stub: each server in turn until one serves the
    /// partition (a non-leader refuses with FailedPrecondition before any frame).
    async fn subscribe_raw(&self, name: &str, from: From) -> Result<PayloadStream> {
        let req = api::SubscribeRequest {
            stream: name.to_owned(),
            partition: 0,
            start_position: match from {
                From::Earliest => api::StartPosition::Earliest,
                From::NewOnly => api::StartPosition::NewOnly,
            } as i32,
            ..Default::default()
        };
        let mut last = String::from("no server address");
        for addr in &self.addrs {
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| BenchError::Other(format!("{addr}: {e}")))?
                .tcp_nodelay(true)
                .initial_stream_window_size(RAW_STREAM_WINDOW)
                .initial_connection_window_size(RAW_CONNECTION_WINDOW);
            let channel = match endpoint.connect().await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{addr}: {e}");
                    continue;
                }
            };
            let mut api = ApiClient::new(channel).max_decoding_message_size(64 << 20);
            let mut frames = match api.subscribe(req.clone()).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    last = format!("{addr}: {s}");
                    continue;
                }
            };
            // The server confirms with an empty frame (spec §9) or fails before any.
            match frames.message().await {
                Ok(Some(first)) => {
                    let first = (first != api::Message::default()).then_some(Ok(first.value));
                    let rest = frames.map_ok(|m| m.value).map_err(|s| {
                        BenchError::Other(format!("subscription (raw stub) failed: {s}"))
                    });
                    return Ok(futures::stream::iter(first).chain(rest).boxed());
                }
                Ok(None) => last = format!("{addr}: the call ended before its first frame"),
                Err(s) => last = format!("{addr}: {s}"),
            }
        }
        Err(BenchError::Other(format!(
            "raw subscribe to {name}: {last}"
        )))
    }
}

/// HTTP/2 windows of a raw subscription's connection: those drawbridge-client uses.
const RAW_STREAM_WINDOW: u32 = 2 << 20;
const RAW_CONNECTION_WINDOW: u32 = 4 << 20;

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
