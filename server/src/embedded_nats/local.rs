//! In-process clients of the embedded broker: the hosting server publishes and subscribes
//! without the loopback TCP round through its own NATS connection.
//!
//! A server on its embedded broker used to send each gRPC publish through async-nats (command
//! channel, connection task, socket), have the broker parse it back, route it, frame it into
//! the server's own connection and have async-nats parse it again for the partition's ingest.
//! [`LocalNats::publish`] routes the message on the caller's task instead, and a
//! [`LocalSubscriber`] receives it as an `async_nats::Message` on a channel.
//!
//! Invariants:
//! 1. Same routing as a TCP client: [`LocalNats::publish`] goes through [`Broker::publish`], so
//!    every subscriber (TCP or in-process, plain or queue group) gets the message, and messages
//!    are delivered to each subscriber in the order they were routed, whoever published them.
//!    A publish has been routed to every matching subscriber when it returns.
//! 2. The checks async-nats makes before sending are made here: a literal subject, and at most
//!    `max_payload` bytes (the broker's limit).
//! 3. A [`LocalSubscriber`] is in the broker from [`LocalNats::subscribe`]'s return until it is
//!    dropped; it has no NATS headers (a client without header support) and no limit. Its
//!    channel holds [`SUBSCRIBER_CAPACITY`] messages (what the server's async-nats subscriptions
//!    buffer); deliveries to a full channel are dropped and counted (see [`super::broker`]).
//! 4. Local clients are not counted as connections ([`super::EmbeddedNats::connection_count`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::broker::{Broker, Client};
use super::protocol::Publish;
use super::subject;

/// Messages an in-process subscriber buffers (as the server's async-nats subscriptions do).
pub const SUBSCRIBER_CAPACITY: usize = 1 << 16;

/// Why an in-process publish or subscribe was refused.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Not a literal subject (publish) or not a valid pattern (subscribe).
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
    /// Larger than the broker's `max_payload`.
    #[error("max payload size exceeded: {len} > {max}")]
    MaxPayload {
        /// Payload size.
        len: usize,
        /// The broker's limit.
        max: usize,
    },
}

/// The hosting server's in-process handle on the embedded broker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalNats {
    broker: Arc<Broker>,
    /// The client local publishes are routed as (echo on: the server hears its own messages,
    /// as its NATS connection does).
    publisher: Arc<Client>,
    max_payload: usize,
}

impl LocalNats {
    pub(super) fn new(broker: Arc<Broker>, max_payload: usize) -> Self {
        let publisher = broker.local_client(None);
        Self {
            broker,
            publisher,
            max_payload,
        }
    }

    /// Routes `payload` on `subject` to every matching subscriber (invariant 1); returns how
    /// many it was delivered to.
    pub fn publish(&self, subject: String, payload: Bytes) -> Result<usize, LocalError> {
        if payload.len() > self.max_payload {
            return Err(LocalError::MaxPayload {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        if !subject::is_valid_literal(&subject) {
            return Err(LocalError::InvalidSubject(subject));
        }
        let msg = Publish {
            subject,
            reply: None,
            headers: None,
            payload,
        };
        Ok(self.broker.publish(&self.publisher, &msg))
    }

    /// Subscribes to `pattern` (in queue group `queue`, if any) until the subscriber is dropped.
    pub fn subscribe(
        &self,
        pattern: String,
        queue: Option<String>,
    ) -> Result<LocalSubscriber, LocalError> {
        if !subject::is_valid_pattern(&pattern) {
            return Err(LocalError::InvalidSubject(pattern));
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        let client = self.broker.local_client(Some(tx));
        self.broker
            .subscribe(&client, "1".to_owned(), pattern, queue);
        Ok(LocalSubscriber {
            broker: Arc::clone(&self.broker),
            client,
            rx,
        })
    }
}

/// An in-process subscription (invariant 3); a stream of the messages routed to it.
#[derive(Debug)]
pub struct LocalSubscriber {
    broker: Arc<Broker>,
    client: Arc<Client>,
    rx: mpsc::Receiver<async_nats::Message>,
}

impl futures::Stream for LocalSubscriber {
    type Item = async_nats::Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for LocalSubscriber {
    fn drop(&mut self) {
        self.broker.release_local(&self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn local_and_tcp_clients_share_routing() {
        let broker = Arc::new(Broker::new());
        let local = LocalNats::new(Arc::clone(&broker), 16);
        let mut sub = local.subscribe("a.*".into(), None).expect("subscribe");
        // A TCP client's publish reaches the local subscriber, in routing order with local ones.
        let tcp = broker.connect(1 << 20);
        let from_tcp = Publish {
            subject: "a.b".into(),
            reply: Some("r".into()),
            headers: Some(Bytes::from_static(b"NATS/1.0\r\n\r\n")),
            payload: Bytes::from_static(b"1"),
        };
        assert_eq!(broker.publish(&tcp, &from_tcp), 1);
        assert_eq!(
            local.publish("a.c".into(), Bytes::from_static(b"2")).ok(),
            Some(1)
        );
        let first = sub.next().await.expect("first");
        assert_eq!(
            (
                first.subject.as_str(),
                first.reply.as_deref(),
                &first.payload[..]
            ),
            ("a.b", Some("r"), &b"1"[..])
        );
        assert!(first.headers.is_none());
        let second = sub.next().await.expect("second");
        assert_eq!(
            (second.subject.as_str(), &second.payload[..]),
            ("a.c", &b"2"[..])
        );
        // A local publish reaches TCP subscribers too.
        broker.subscribe(&tcp, "9".into(), "a.>".into(), None);
        assert_eq!(
            local.publish("a.d".into(), Bytes::from_static(b"3")).ok(),
            Some(2)
        );
        // async-nats' checks: literal subject, max payload.
        assert!(matches!(
            local.publish("a.*".into(), Bytes::new()),
            Err(LocalError::InvalidSubject(_))
        ));
        assert!(matches!(
            local.publish("a.b".into(), Bytes::from(vec![0u8; 17])),
            Err(LocalError::MaxPayload { len: 17, max: 16 })
        ));
        // Dropping the subscriber takes it out of the broker; local clients are not connections.
        drop(sub);
        assert_eq!(local.publish("a.e".into(), Bytes::new()).ok(), Some(1));
        assert_eq!(broker.connection_count(), 1);
    }

    #[tokio::test]
    async fn queue_group_spans_local_and_tcp_members() {
        let broker = Arc::new(Broker::new());
        let local = LocalNats::new(Arc::clone(&broker), 1024);
        let mut a = local
            .subscribe("q".into(), Some("g".into()))
            .expect("subscribe");
        let tcp = broker.connect(1 << 20);
        broker.subscribe(&tcp, "1".into(), "q".into(), Some("g".into()));
        for _ in 0..50 {
            assert_eq!(local.publish("q".into(), Bytes::new()).ok(), Some(1));
        }
        // Each message went to exactly one member (random choice: both got some).
        let mut local_got = 0;
        while a.rx.try_recv().is_ok() {
            local_got += 1;
        }
        let mut tcp_got = 0;
        let mut spare = bytes::BytesMut::new();
        while let super::super::outbound::Next::Write(b) = tcp.outbound.next(&mut spare) {
            tcp_got += String::from_utf8_lossy(&b).matches("MSG q 1 0\r\n").count();
        }
        assert_eq!(local_got + tcp_got, 50);
        assert!(local_got > 0 && tcp_got > 0);
    }
}
