//! NATS JetStream through `async-nats`: file storage, one replica, pull consumers without acks.
//!
//! JetStream 2.9 acknowledges a publish once the message is written to its file store, without
//! fsync (its `sync_interval` flushes every two minutes by default): compare it with
//! Drawbridge's lazy-sync rows for like-for-like durability.

use std::future::IntoFuture;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, Context, ContextBuilder};
use bytes::Bytes;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::{AckFuture, From, PayloadStream};
use crate::error::{BenchError, Result};

/// Messages per pull request. Large batches are JetStream's fast path for reading; using
/// them keeps the comparison honest towards the competitor.
const PULL_BATCH: usize = 1000;

/// Bound of JetStream API requests and acks.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a JetStream-enabled NATS server.
#[derive(Debug, Clone)]
pub struct JetStreamTarget {
    client: async_nats::Client,
    /// For stream administration.
    admin: Context,
    /// Subject prefix, unique per run.
    prefix: String,
}

impl JetStreamTarget {
    /// Connects to `url` (`nats://host:port`).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(BenchError::nats)?;
        let admin = ContextBuilder::new().timeout(TIMEOUT).build(client.clone());
        Ok(JetStreamTarget {
            client,
            admin,
            prefix: prefix.to_owned(),
        })
    }

    fn subject(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    pub(super) async fn create_stream(&self, name: &str) -> Result<()> {
        self.admin
            .create_stream(stream::Config {
                name: name.to_owned(),
                subjects: vec![self.subject(name)],
                storage: stream::StorageType::File,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(BenchError::nats)?;
        Ok(())
    }

    pub(super) async fn delete_stream(&self, name: &str) -> Result<()> {
        self.admin
            .delete_stream(name)
            .await
            .map_err(BenchError::nats)?;
        Ok(())
    }

    pub(super) fn sender(&self, name: &str, window: usize) -> JetStreamSender {
        let ctx = ContextBuilder::new()
            .timeout(TIMEOUT)
            .max_ack_inflight(window.max(1))
            .backpressure_on_inflight(true)
            .build(self.client.clone());
        JetStreamSender {
            ctx,
            subject: self.subject(name),
        }
    }

    pub(super) async fn subscribe(&self, name: &str, from: From) -> Result<PayloadStream> {
        let stream = self
            .admin
            .get_stream(name)
            .await
            .map_err(BenchError::nats)?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: match from {
                    From::Earliest => consumer::DeliverPolicy::All,
                    From::NewOnly => consumer::DeliverPolicy::New,
                },
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .map_err(BenchError::nats)?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .messages()
            .await
            .map_err(BenchError::nats)?;
        Ok(messages
            .map_ok(|m: jetstream::Message| m.message.payload)
            .map_err(BenchError::nats)
            .boxed())
    }
}

/// A JetStream context of its own (its own in-flight ack limit) bound to one subject.
#[derive(Debug)]
pub struct JetStreamSender {
    ctx: Context,
    subject: String,
}

impl JetStreamSender {
    pub(super) async fn send(&self, payload: Bytes) -> Result<AckFuture> {
        let ack = self
            .ctx
            .publish(self.subject.clone(), payload)
            .await
            .map_err(BenchError::nats)?;
        Ok(ack
            .into_future()
            .map(|r| r.map(drop).map_err(BenchError::nats))
            .boxed())
    }
}
