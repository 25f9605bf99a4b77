//! A connection's outbound byte queue: producers append whole protocol frames, one writer task
//! drains it.
//!
//! Producers (any connection's reader task, fanning out a publish) append frames under a short
//! mutex; the writer swaps the whole buffer out and writes it with one `write_all`, so frames
//! that queued up meanwhile are coalesced into one syscall.
//!
//! Invariants:
//! 1. Frames are never split or reordered: a frame is appended whole under the lock, and the
//!    writer takes the whole buffer.
//! 2. The queue is bounded: when appending would leave more than `max_pending` bytes queued,
//!    the connection is marked a slow consumer, the queued bytes are dropped, and the writer is
//!    told to close the connection. Producers never block and never wait for the socket.
//! 3. Once a close is requested, later appends are dropped; the first close reason wins.
//! 4. Exactly one task (the writer) waits on `notify`; `Notify` stores the wake-up if the writer
//!    is not waiting yet, so no append is missed.

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Why and how a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Write what is queued (typically a final `-ERR`), then close.
    AfterFlush,
    /// The client does not keep up: drop what is queued, send `-ERR 'Slow Consumer'` if the
    /// socket takes it promptly, then close.
    SlowConsumer,
    /// Stop now; nothing more is written (the peer left or the broker shuts down).
    Now,
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Next {
    /// Write these bytes.
    Write(BytesMut),
    /// Close the connection this way.
    Close(Close),
    /// Nothing to do; wait for a notification.
    Idle,
}

#[derive(Debug)]
struct State {
    buf: BytesMut,
    close: Option<Close>,
}

/// The outbound queue of one connection.
#[derive(Debug)]
pub struct Outbound {
    state: Mutex<State>,
    notify: Notify,
    max_pending: usize,
}

/// Returned when an append was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The connection is closing; the frame was dropped.
    Closing,
    /// This append made the connection a slow consumer; it is being closed.
    SlowConsumer,
}

impl Outbound {
    /// A queue that tolerates up to `max_pending` unwritten bytes.
    pub fn new(max_pending: usize) -> Self {
        Self {
            state: Mutex::new(State {
                buf: BytesMut::with_capacity(4096),
                close: None,
            }),
            notify: Notify::new(),
            max_pending,
        }
    }

    /// Appends one frame of `len` bytes written by `write`, and wakes the writer.
    pub fn push(&self, len: usize, write: impl FnOnce(&mut BytesMut)) -> Result<(), Refused> {
        let mut st = self.state.lock();
        if st.close.is_some() {
            return Err(Refused::Closing);
        }
        if st.buf.len().saturating_add(len) > self.max_pending {
            st.buf = BytesMut::new();
            st.close = Some(Close::SlowConsumer);
            drop(st);
            self.notify.notify_one();
            return Err(Refused::SlowConsumer);
        }
        st.buf.reserve(len);
        write(&mut st.buf);
        drop(st);
        self.notify.notify_one();
        Ok(())
    }

    /// Appends a complete frame.
    pub fn push_bytes(&self, frame: &[u8]) -> Result<(), Refused> {
        self.push(frame.len(), |b| b.extend_from_slice(frame))
    }

    /// Requests a close; the first request wins. Wakes the writer.
    pub fn close(&self, how: Close) {
        let mut st = self.state.lock();
        if st.close.is_none() {
            st.close = Some(how);
            if how != Close::AfterFlush {
                st.buf = BytesMut::new();
            }
        }
        drop(st);
        self.notify.notify_one();
    }

    /// For the writer: takes the queued bytes (swapping in `spare`, which must be empty) or
    /// the close request.
    pub fn next(&self, spare: &mut BytesMut) -> Next {
        let mut st = self.state.lock();
        if !st.buf.is_empty() {
            std::mem::swap(&mut st.buf, spare);
            return Next::Write(std::mem::take(spare));
        }
        match st.close {
            Some(how) => Next::Close(how),
            None => Next::Idle,
        }
    }

    /// For the writer: waits until something was pushed or a close was requested.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// The close requested so far, if any.
    pub fn close_requested(&self) -> Option<Close> {
        self.state.lock().close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_and_bounds() {
        let q = Outbound::new(10);
        let mut spare = BytesMut::new();
        assert!(matches!(q.next(&mut spare), Next::Idle));
        q.push_bytes(b"abc").expect("room");
        q.push_bytes(b"def").expect("room");
        match q.next(&mut spare) {
            Next::Write(b) => assert_eq!(&b[..], b"abcdef"),
            other => panic!("unexpected {other:?}"),
        }
        q.push_bytes(b"0123456789").expect("exactly at the limit");
        assert_eq!(q.push_bytes(b"x"), Err(Refused::SlowConsumer));
        assert!(matches!(
            q.next(&mut spare),
            Next::Close(Close::SlowConsumer)
        ));
        assert_eq!(q.push_bytes(b"y"), Err(Refused::Closing));
    }

    #[test]
    fn close_after_flush_keeps_queued_bytes() {
        let q = Outbound::new(100);
        let mut spare = BytesMut::new();
        q.push_bytes(b"-ERR 'x'\r\n").expect("room");
        q.close(Close::AfterFlush);
        q.close(Close::Now);
        assert!(matches!(q.next(&mut spare), Next::Write(_)));
        assert!(matches!(q.next(&mut spare), Next::Close(Close::AfterFlush)));
    }
}
