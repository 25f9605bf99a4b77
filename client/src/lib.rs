//! A thin async Rust client for Drawbridge, and for any Liftbridge-compatible cluster.
//!
//! The client speaks the Liftbridge gRPC API (`proto.API`, see `drawbridge-proto`) and behaves
//! like go-liftbridge where it matters for compatibility: the key partitioner, the cursor
//! partitioning, the expected-offset and ack-deadline conventions, and the retry rules
//! (refresh metadata and retry on `Unavailable`, and on `FailedPrecondition` from a server
//! that is not the partition leader).
//!
//! # Choosing how to publish
//! - [`Client::publish`]: one message, one round trip, waits for its ack. Simple; slow for
//!   many messages.
//! - [`Publisher`] ([`Client::publisher`]): many messages in flight over one PublishAsync
//!   stream; `send` returns an [`AckFuture`] per message. Use this for throughput.
//! - [`Client::publish_to_subject`]: to a NATS subject rather than a stream partition.
//!
//! # Example
//! ```no_run
//! # async fn run() -> drawbridge_client::Result<()> {
//! use drawbridge_client::{Client, PublishMessage, StartAt, StreamOptions, SubscribeOptions};
//! use futures::StreamExt;
//!
//! let client = Client::connect(["127.0.0.1:9292"]).await?;
//! client.create_stream("greetings", "greetings", StreamOptions::default()).await?;
//! client.publish("greetings", PublishMessage::new("hello")).await?;
//!
//! let opts = SubscribeOptions { start: StartAt::Earliest, ..Default::default() };
//! let mut sub = client.subscribe("greetings", opts).await?;
//! if let Some(msg) = sub.next().await {
//!     println!("{:?}", msg?.value);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Crate map
//! - [`client`](Client): the cloneable handle; routing to brokers and leaders, bounded retries,
//!   stream administration (`client.rs`).
//! - [`ClientBuilder`]: addresses, timeouts, retries, TLS (`builder.rs`).
//! - `connection.rs`: one reused gRPC channel per broker address.
//! - [`Metadata`]: brokers, streams, partitions, leaders; the cache (`metadata.rs`).
//! - [`PublishMessage`], unary publish and publish-to-subject (`publish.rs`).
//! - [`Publisher`] / [`AckFuture`]: pipelined publishing over PublishAsync (`pipeline.rs`).
//! - [`Partitioner`]: key hash and round robin (`partitioner.rs`).
//! - [`Subscription`]: reading a partition, with resubscription (`subscribe.rs`).
//! - Cursors: `set_cursor` / `fetch_cursor` (`cursor.rs`).
//! - Consumer groups: the group RPCs and [`GroupConsumer`], a `Stream` over the partitions
//!   assigned to a member (`group.rs`).
//! - [`VerifyReport`]: [`Client::verify_partitions`] compares every partition's replicas up to
//!   their common high watermark (Drawbridge's admin service; `verify.rs`).
//! - [`StreamOptions`], [`SubscribeOptions`] and the other typed options (`options.rs`).
//! - [`Message`] and [`Ack`] (`message.rs`); [`Error`] (`error.rs`); [`RetryPolicy`]
//!   (`retry.rs`).
//!
//! The `drawbridge` command-line tool lives in `src/bin/drawbridge/`.

mod builder;
mod client;
mod connection;
mod cursor;
mod error;
mod group;
mod message;
mod metadata;
mod options;
mod partitioner;
mod pipeline;
mod publish;
mod retry;
mod subscribe;
mod verify;

pub use builder::{ClientBuilder, TlsOptions};
pub use client::Client;
pub use cursor::{cursor_key, cursor_partition, CURSORS_STREAM};
pub use error::{Error, Result};
pub use group::{group_cursor_id, GroupAssignments, GroupConsumer, GroupJoin, GroupOptions};
pub use message::{Ack, Message};
pub use metadata::{BrokerInfo, EventTimestamps, Metadata, PartitionInfo, StreamInfo};
pub use options::{
    AckPolicy, PauseOptions, ReadonlyOptions, StartAt, StopAt, StreamOptions, SubscribeOptions,
};
pub use partitioner::{key_partition, KeyPartitioner, Partitioner, RoundRobinPartitioner};
pub use pipeline::{AckFuture, Publisher, PublisherOptions};
pub use publish::{new_correlation_id, PublishMessage, PRODUCER_ID_HEADER, PRODUCER_SEQ_HEADER};
pub use retry::RetryPolicy;
pub use subscribe::{EndReason, Subscription};
pub use verify::{common_range, PartitionCheck, ReplicaReport, ReplicaState, VerifyReport};
