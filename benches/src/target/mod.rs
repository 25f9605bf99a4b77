//! The systems under test behind one interface.
//!
//! A workload needs four things from a system: a fresh stream, a sender that pipelines
//! (returns one ack future per message, waiting only for flow control), a subscription that
//! yields payloads (from the earliest message, or only new ones), and deleting the stream.
//! [`Target`] provides them for a Liftbridge-API server ([`liftbridge`]) and for NATS
//! JetStream ([`jetstream`]). Dispatch is an enum, not a trait object: two variants, static
//! calls, no async-trait machinery.
//!
//! Fairness rules both variants follow:
//! 1. One stream with one partition (JetStream: one stream, one subject), file storage, one
//!    replica unless the run asks for more (Drawbridge cluster, RF 3).
//! 2. Each pipelined publisher has its own publishing session (a PublishAsync stream; a
//!    JetStream context) over the client's one connection.
//! 3. A message is counted when its ack arrived (ack policy as configured; JetStream always
//!    acks after storing).
//! 4. Subscriptions do not acknowledge messages (JetStream: ack policy none).

pub mod jetstream;
pub mod liftbridge;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::Result;

/// The ack of one message, resolved when the system acknowledged it.
pub type AckFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// Payloads read by a subscription, in order.
pub type PayloadStream = BoxStream<'static, Result<Bytes>>;

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The oldest stored message.
    Earliest,
    /// Only messages stored after the subscription started.
    NewOnly,
}

/// A connected system under test.
#[derive(Debug, Clone)]
pub enum Target {
    /// A Liftbridge-API server (Drawbridge or Liftbridge).
    Liftbridge(liftbridge::LiftbridgeTarget),
    /// NATS JetStream (boxed: its client handles are large, and targets are cloned per task).
    JetStream(Box<jetstream::JetStreamTarget>),
}

/// A pipelined sender bound to one stream.
#[derive(Debug)]
pub enum Sender {
    /// A drawbridge-client `Publisher` (one PublishAsync stream).
    Liftbridge(liftbridge::LiftbridgeSender),
    /// A JetStream context.
    JetStream(jetstream::JetStreamSender),
}

impl Target {
    /// Creates stream `name` (a fresh name per workload) and waits until it takes messages.
    pub async fn create_stream(&self, name: &str) -> Result<()> {
        match self {
            Target::Liftbridge(t) => t.create_stream(name).await,
            Target::JetStream(t) => t.create_stream(name).await,
        }
    }

    /// Deletes stream `name` and its data.
    pub async fn delete_stream(&self, name: &str) -> Result<()> {
        match self {
            Target::Liftbridge(t) => t.delete_stream(name).await,
            Target::JetStream(t) => t.delete_stream(name).await,
        }
    }

    /// A sender for stream `name` allowing `window` messages in flight.
    pub async fn sender(&self, name: &str, window: usize) -> Result<Sender> {
        Ok(match self {
            Target::Liftbridge(t) => Sender::Liftbridge(t.sender(name, window)?),
            Target::JetStream(t) => Sender::JetStream(t.sender(name, window)),
        })
    }

    /// Subscribes to stream `name` from `from`. Returns once the subscription is in place, so
    /// that with [`From::NewOnly`] every message sent afterwards is delivered.
    pub async fn subscribe(&self, name: &str, from: From) -> Result<PayloadStream> {
        match self {
            Target::Liftbridge(t) => t.subscribe(name, from).await,
            Target::JetStream(t) => t.subscribe(name, from).await,
        }
    }
}

impl Sender {
    /// Sends one message; waits only for flow control and returns the ack's future.
    pub async fn send(&self, payload: Bytes) -> Result<AckFuture> {
        match self {
            Sender::Liftbridge(s) => s.send(payload).await,
            Sender::JetStream(s) => s.send(payload).await,
        }
    }
}
