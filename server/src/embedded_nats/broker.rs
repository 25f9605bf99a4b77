//! The broker's shared state: connected clients' subscriptions and message routing.
//!
//! A publish is routed synchronously on the publisher's reader task: look the subject up in the
//! [`Sublist`], format one `MSG`/`HMSG` frame per receiving subscription straight into that
//! subscriber's [`Outbound`] queue, and wake its writer. Nothing on this path awaits, so a slow
//! subscriber can cost a publisher at most a memory copy; it is cut off by its own queue bound.
//!
//! Invariants:
//! 1. A subscription is in the sublist iff it is in its client's `subs` map under its sid
//!    (modulo the instant between the two updates), and `removed` is set exactly once, by
//!    whoever takes it out ([`Broker::remove_subscription`]).
//! 2. With `UNSUB sid max`, a subscription receives at most `max` messages in total, even with
//!    concurrent publishers: the delivery counter is claimed before the frame is queued.
//! 3. Each queue group of a matching result delivers a message to at most one member.
//! 4. A client with `echo: false` never receives its own messages.
//! 5. Lock order: a client's `subs` map and the sublist are never held at the same time.
//! 6. An in-process client ([`Client::local`], see [`super::local`]) gets each delivery as one
//!    message on its channel instead of a frame in its outbound queue, in the same routing
//!    order; it is a client without header support (headers are not passed on). A full channel
//!    drops that delivery (logged), as an async-nats subscription whose buffer is full does;
//!    a closed one (subscriber gone) refuses it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::mpsc;

use super::outbound::{Outbound, Refused};
use super::protocol::Publish;
use super::sublist::Sublist;

/// A connected client, as other clients' publishes see it.
#[derive(Debug)]
pub struct Client {
    /// Broker-unique id (also reported as `client_id` in INFO).
    pub id: u64,
    /// Frames waiting to be written to this client.
    pub outbound: Outbound,
    /// From CONNECT: wants its own messages back (default true).
    pub echo: AtomicBool,
    /// From CONNECT: understands HMSG.
    pub headers: AtomicBool,
    /// From CONNECT: wants a 503 status when a request finds no subscriber.
    pub no_responders: AtomicBool,
    /// Live subscriptions by sid. Owned by this client's reader, also edited by auto-unsubscribe.
    pub subs: Mutex<HashMap<String, Arc<Subscription>>>,
    /// In-process clients only: where deliveries go instead of `outbound` (invariant 6).
    pub local: Option<mpsc::Sender<async_nats::Message>>,
}

impl Client {
    /// A client with default CONNECT options.
    pub fn new(id: u64, max_pending: usize) -> Self {
        Self {
            id,
            outbound: Outbound::new(max_pending),
            echo: AtomicBool::new(true),
            headers: AtomicBool::new(false),
            no_responders: AtomicBool::new(false),
            subs: Mutex::new(HashMap::new()),
            local: None,
        }
    }
}

/// One `SUB`.
#[derive(Debug)]
pub struct Subscription {
    /// The subscriber.
    pub client: Arc<Client>,
    /// Client-chosen id, echoed in every MSG.
    pub sid: String,
    /// The pattern.
    pub subject: String,
    /// Queue group, if any.
    pub queue: Option<String>,
    /// Auto-unsubscribe limit (0 = none).
    max: AtomicU64,
    /// Messages claimed for delivery so far.
    delivered: AtomicU64,
    /// Set once when taken out of the broker.
    removed: AtomicBool,
}

impl Subscription {
    /// A new subscription with no limit.
    pub fn new(client: Arc<Client>, sid: String, subject: String, queue: Option<String>) -> Self {
        Self {
            client,
            sid,
            subject,
            queue,
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            removed: AtomicBool::new(false),
        }
    }

    /// Claims one delivery. `None`: the limit is already used up. `Some(last)`: deliver, and
    /// `last` says this delivery reaches the limit.
    fn claim(&self) -> Option<bool> {
        if self.removed.load(Ordering::Acquire) {
            return None;
        }
        let max = self.max.load(Ordering::Acquire);
        let n = self.delivered.fetch_add(1, Ordering::AcqRel) + 1;
        if max == 0 {
            return Some(false);
        }
        if n > max {
            return None;
        }
        Some(n == max)
    }
}

/// The routing core shared by all connections.
#[derive(Debug, Default)]
pub struct Broker {
    sublist: Sublist<Subscription>,
    next_client_id: AtomicU64,
    connections: AtomicUsize,
    /// Deliveries dropped because an in-process subscriber's channel was full.
    local_dropped: AtomicU64,
}

/// Header block of a "no responders" status message.
const NO_RESPONDERS_HDR: &[u8] = b"NATS/1.0 503\r\n\r\n";

impl Broker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allocates a client id and counts the connection.
    pub fn connect(&self, max_pending: usize) -> Arc<Client> {
        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.connections.fetch_add(1, Ordering::Relaxed);
        Arc::new(Client::new(id, max_pending))
    }

    /// Removes all of `client`'s subscriptions and uncounts the connection.
    pub fn disconnect(&self, client: &Client) {
        self.remove_all(client);
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// An in-process client (not counted as a connection): with `sink`, its deliveries go to
    /// that channel (invariant 6); without, it only publishes.
    pub fn local_client(&self, sink: Option<mpsc::Sender<async_nats::Message>>) -> Arc<Client> {
        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut client = Client::new(id, 0);
        client.local = sink;
        Arc::new(client)
    }

    /// Removes all subscriptions of an in-process client.
    pub fn release_local(&self, client: &Client) {
        self.remove_all(client);
    }

    fn remove_all(&self, client: &Client) {
        let subs: Vec<Arc<Subscription>> = client.subs.lock().drain().map(|(_, s)| s).collect();
        for sub in subs {
            if !sub.removed.swap(true, Ordering::AcqRel) {
                self.sublist
                    .remove(&sub.subject, sub.queue.as_deref(), &sub);
            }
        }
    }

    /// Number of connected clients.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Adds a subscription (subject already validated). A duplicate sid is ignored, as
    /// nats-server does.
    pub fn subscribe(
        &self,
        client: &Arc<Client>,
        sid: String,
        subject: String,
        queue: Option<String>,
    ) {
        let sub = {
            let mut subs = client.subs.lock();
            if subs.contains_key(&sid) {
                return;
            }
            let sub = Arc::new(Subscription::new(
                Arc::clone(client),
                sid.clone(),
                subject,
                queue,
            ));
            subs.insert(sid, Arc::clone(&sub));
            sub
        };
        self.sublist
            .insert(&sub.subject, sub.queue.as_deref(), Arc::clone(&sub));
    }

    /// `UNSUB sid [max]`. Unknown sids are ignored.
    pub fn unsubscribe(&self, client: &Client, sid: &str, max: Option<u64>) {
        let Some(sub) = client.subs.lock().get(sid).cloned() else {
            return;
        };
        match max {
            Some(max) if max > 0 && sub.delivered.load(Ordering::Acquire) < max => {
                sub.max.store(max, Ordering::Release);
                // A delivery racing with this store may have pushed the count to the limit
                // without seeing it; settle that here.
                if sub.delivered.load(Ordering::Acquire) >= max {
                    self.remove_subscription(&sub);
                }
            }
            _ => self.remove_subscription(&sub),
        }
    }

    /// Takes `sub` out of the broker; only the first call has an effect.
    pub fn remove_subscription(&self, sub: &Arc<Subscription>) {
        if sub.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut subs = sub.client.subs.lock();
            if subs.get(&sub.sid).is_some_and(|s| Arc::ptr_eq(s, sub)) {
                subs.remove(&sub.sid);
            }
        }
        self.sublist.remove(&sub.subject, sub.queue.as_deref(), sub);
    }

    /// Routes one message published by `from` (subject already validated as literal).
    /// Returns how many subscriptions it was queued for.
    pub fn publish(&self, from: &Client, msg: &Publish) -> usize {
        let matches = self.sublist.matches(&msg.subject);
        let echo = from.echo.load(Ordering::Relaxed);
        let mut delivered = 0;
        for sub in &matches.plain {
            if !echo && sub.client.id == from.id {
                continue;
            }
            if self.deliver(sub, msg) {
                delivered += 1;
            }
        }
        if !matches.queues.is_empty() {
            let mut rng = rand::rng();
            for (_, members) in &matches.queues {
                if members.is_empty() {
                    continue;
                }
                let start = rng.random_range(0..members.len());
                for i in 0..members.len() {
                    let sub = &members[(start + i) % members.len()];
                    if !echo && sub.client.id == from.id {
                        continue;
                    }
                    if self.deliver(sub, msg) {
                        delivered += 1;
                        break;
                    }
                }
            }
        }
        if delivered == 0 {
            if let Some(reply) = &msg.reply {
                self.no_responders(from, reply);
            }
        }
        delivered
    }

    /// Queues `msg` for `sub`. False if the subscription's limit is used up or its client is
    /// going away.
    fn deliver(&self, sub: &Arc<Subscription>, msg: &Publish) -> bool {
        let Some(last) = sub.claim() else {
            return false;
        };
        if let Some(sink) = &sub.client.local {
            let delivered = self.deliver_local(sink, sub, msg);
            if last {
                self.remove_subscription(sub);
            }
            return delivered;
        }
        let headers = msg
            .headers
            .as_ref()
            .filter(|_| sub.client.headers.load(Ordering::Relaxed));
        let result = push_msg(
            &sub.client.outbound,
            &msg.subject,
            &sub.sid,
            msg.reply.as_deref(),
            headers,
            &msg.payload,
        );
        if last {
            self.remove_subscription(sub);
        }
        match result {
            Ok(()) => true,
            Err(Refused::SlowConsumer) => {
                tracing::warn!(
                    client_id = sub.client.id,
                    subject = %msg.subject,
                    "embedded NATS: slow consumer, closing its connection"
                );
                false
            }
            Err(Refused::Closing) => false,
        }
    }

    /// Hands `msg` to an in-process subscriber (invariant 6).
    fn deliver_local(
        &self,
        sink: &mpsc::Sender<async_nats::Message>,
        sub: &Subscription,
        msg: &Publish,
    ) -> bool {
        let m = async_nats::Message {
            subject: async_nats::Subject::from(msg.subject.as_str()),
            reply: msg.reply.as_deref().map(async_nats::Subject::from),
            payload: msg.payload.clone(),
            headers: None,
            status: None,
            description: None,
            length: msg.subject.len()
                + msg.reply.as_ref().map_or(0, String::len)
                + msg.payload.len(),
        };
        match sink.try_send(m) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Logged 1st, 2nd, 4th, 8th... time.
                let n = self.local_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        client_id = sub.client.id,
                        subject = %msg.subject,
                        dropped = n,
                        "embedded NATS: in-process subscriber is full, message dropped"
                    );
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Sends a 503 status to `from` on its own subscription matching `reply`, when it asked
    /// for that in CONNECT (nats-server's "no responders").
    fn no_responders(&self, from: &Client, reply: &str) {
        if !from.no_responders.load(Ordering::Relaxed) || !from.headers.load(Ordering::Relaxed) {
            return;
        }
        if !super::subject::is_valid_literal(reply) {
            return;
        }
        let matches = self.sublist.matches(reply);
        let own = matches
            .plain
            .iter()
            .chain(matches.queues.iter().flat_map(|(_, m)| m.iter()))
            .find(|s| s.client.id == from.id);
        if let Some(sub) = own {
            let hdr = Bytes::from_static(NO_RESPONDERS_HDR);
            // Failure means this client is already being closed; nothing left to tell it.
            let _ = push_msg(
                &from.outbound,
                reply,
                &sub.sid,
                None,
                Some(&hdr),
                &Bytes::new(),
            );
        }
    }
}

/// Appends one `MSG` frame, or an `HMSG` frame when `headers` is given.
pub fn push_msg(
    out: &Outbound,
    subject: &str,
    sid: &str,
    reply: Option<&str>,
    headers: Option<&Bytes>,
    payload: &Bytes,
) -> Result<(), Refused> {
    let hdr_len = headers.map_or(0, Bytes::len);
    let total = hdr_len + payload.len();
    let len = 64 + subject.len() + sid.len() + reply.map_or(0, str::len) + total;
    out.push(len, |b| {
        b.put_slice(if headers.is_some() { b"HMSG " } else { b"MSG " });
        b.put_slice(subject.as_bytes());
        b.put_u8(b' ');
        b.put_slice(sid.as_bytes());
        b.put_u8(b' ');
        if let Some(reply) = reply {
            b.put_slice(reply.as_bytes());
            b.put_u8(b' ');
        }
        if let Some(h) = headers {
            put_decimal(b, h.len());
            b.put_u8(b' ');
        }
        put_decimal(b, total);
        b.put_slice(b"\r\n");
        if let Some(h) = headers {
            b.put_slice(h);
        }
        b.put_slice(payload);
        b.put_slice(b"\r\n");
    })
}

/// Appends `n` in decimal without allocating.
fn put_decimal(b: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    b.put_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded_nats::outbound::Next;

    fn drain(c: &Client) -> String {
        let mut spare = BytesMut::new();
        match c.outbound.next(&mut spare) {
            Next::Write(b) => String::from_utf8_lossy(&b).into_owned(),
            _ => String::new(),
        }
    }

    fn publish(
        subject: &str,
        reply: Option<&str>,
        headers: Option<&'static [u8]>,
        body: &'static [u8],
    ) -> Publish {
        Publish {
            subject: subject.into(),
            reply: reply.map(Into::into),
            headers: headers.map(Bytes::from_static),
            payload: Bytes::from_static(body),
        }
    }

    #[test]
    fn frames() {
        let mut b = BytesMut::new();
        put_decimal(&mut b, 0);
        b.put_u8(b' ');
        put_decimal(&mut b, 1234567890);
        assert_eq!(&b[..], b"0 1234567890");
        let b = Broker::new();
        let c = b.connect(1 << 20);
        c.headers.store(true, Ordering::Relaxed);
        b.subscribe(&c, "7".into(), "a.*".into(), None);
        b.publish(&c, &publish("a.b", Some("r"), None, b"hi"));
        b.publish(&c, &publish("a.b", None, Some(b"NATS/1.0\r\n\r\n"), b"hi"));
        assert_eq!(
            drain(&c),
            "MSG a.b 7 r 2\r\nhi\r\nHMSG a.b 7 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
        );
    }

    #[test]
    fn headers_are_stripped_for_clients_without_header_support() {
        let b = Broker::new();
        let c = b.connect(1 << 20);
        b.subscribe(&c, "1".into(), "a".into(), None);
        b.publish(&c, &publish("a", None, Some(b"NATS/1.0\r\n\r\n"), b"x"));
        assert_eq!(drain(&c), "MSG a 1 1\r\nx\r\n");
    }

    #[test]
    fn echo_off_and_auto_unsubscribe() {
        let b = Broker::new();
        let c = b.connect(1 << 20);
        c.echo.store(false, Ordering::Relaxed);
        b.subscribe(&c, "1".into(), "a".into(), None);
        assert_eq!(b.publish(&c, &publish("a", None, None, b"x")), 0);
        let other = b.connect(1 << 20);
        b.unsubscribe(&c, "1", Some(2));
        assert_eq!(b.publish(&other, &publish("a", None, None, b"x")), 1);
        assert_eq!(b.publish(&other, &publish("a", None, None, b"x")), 1);
        assert_eq!(b.publish(&other, &publish("a", None, None, b"x")), 0);
        assert!(c.subs.lock().is_empty());
    }

    #[test]
    fn queue_group_gets_one_copy() {
        let b = Broker::new();
        let p = b.connect(1 << 20);
        let members: Vec<_> = (0..3).map(|_| b.connect(1 << 20)).collect();
        for m in &members {
            b.subscribe(m, "1".into(), "q.>".into(), Some("g".into()));
        }
        for _ in 0..30 {
            assert_eq!(b.publish(&p, &publish("q.x", None, None, b"x")), 1);
        }
        b.disconnect(&members[0]);
        assert_eq!(b.publish(&p, &publish("q.x", None, None, b"x")), 1);
    }

    #[test]
    fn no_responders_status() {
        let b = Broker::new();
        let c = b.connect(1 << 20);
        c.headers.store(true, Ordering::Relaxed);
        c.no_responders.store(true, Ordering::Relaxed);
        b.subscribe(&c, "9".into(), "_INBOX.x.*".into(), None);
        assert_eq!(
            b.publish(&c, &publish("svc", Some("_INBOX.x.1"), None, b"q")),
            0
        );
        assert_eq!(
            drain(&c),
            "HMSG _INBOX.x.1 9 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
        );
    }
}
