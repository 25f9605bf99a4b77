//! A fault-injecting TCP proxy on 127.0.0.1, for network partitions between processes
//! (issue 7, fault 3).
//!
//! A [`Proxy`] listens on a fresh loopback port and forwards every connection it accepts to a
//! target port. At runtime it is switched between three [`Mode`]s:
//!
//! - [`Mode::Pass`]: bytes flow both ways.
//! - [`Mode::Blackhole`]: connections stay open but no byte moves in either direction, like a
//!   cut cable or dropped packets: the proxy stops reading, so the senders' TCP buffers fill
//!   and their writes stall; new connections are accepted (as the kernel would complete the
//!   handshake) and stall likewise. Bytes already read are held, not dropped, and delivered
//!   after a switch back to `Pass` — as TCP retransmission would after a healed cut, so a
//!   stream that survives its peers' own timeouts is never corrupted.
//! - [`Mode::Reset`]: every connection is closed with a TCP reset, and every new one is reset
//!   as soon as it is accepted (the peer sees a refused/reset connection).
//!
//! Invariants: loopback only; at most [`MAX_CONNECTIONS`] relayed connections at a time (more
//! are reset); connecting to the target is bounded ([`CONNECT_TIMEOUT`]); a connection ends
//! when either side closes or fails (no half-close is relayed); the proxy runs on its own
//! single-threaded tokio runtime on its own thread, so it works from synchronous and asynchronous tests alike,
//! and dropping the [`Proxy`] shuts that runtime down, which closes the listener and every
//! connection before `drop` returns.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Most connections relayed at the same time by one proxy.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest wait to connect to the target.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes read from one side before they are written to the other.
const CHUNK: usize = 16 * 1024;

/// What the proxy does with traffic (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward.
    Pass,
    /// Hold every byte; keep connections.
    Blackhole,
    /// Reset every connection; reset new ones.
    Reset,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    forwarded: AtomicU64,
    open: AtomicUsize,
}

/// A running proxy; stops (listener and connections) when dropped.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    target: u16,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy on a fresh port of 127.0.0.1 that forwards to `127.0.0.1:target`, in
    /// [`Mode::Pass`].
    pub fn start(target: u16) -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let (mode, watcher) = watch::channel(Mode::Pass);
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let loop_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{port}-to-{target}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    tokio::select! {
                        _ = accept_loop(listener, target, watcher, loop_counters) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here drops every connection task: all sockets close.
            })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(std::io::Error::other("the proxy thread did not start"));
            }
        }
        Ok(Self {
            port,
            target,
            mode,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port it forwards to.
    pub fn target(&self) -> u16 {
        self.target
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Switches the mode; takes effect at once on every connection.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Connections accepted so far (including reset ones).
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far, both directions.
    pub fn forwarded(&self) -> u64 {
        self.counters.forwarded.load(Ordering::Relaxed)
    }

    /// Connections being relayed now.
    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Prompt: the thread only has to leave its select and drop its runtime (no task
        // blocks). Joining makes "dropped" mean "listener and connections closed".
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Closes `s` with a TCP reset instead of a FIN.
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

async fn accept_loop(
    listener: TcpListener,
    target: u16,
    mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        if *mode.borrow() == Mode::Reset || counters.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS
        {
            reset(client);
            continue;
        }
        counters.open.fetch_add(1, Ordering::Relaxed);
        let (mode, counters) = (mode.clone(), Arc::clone(&counters));
        tokio::spawn(async move {
            let upstream = tokio::time::timeout(
                CONNECT_TIMEOUT,
                TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, target))),
            )
            .await;
            match upstream {
                Ok(Ok(upstream)) => relay(client, upstream, mode, &counters).await,
                _ => reset(client),
            }
            counters.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Relays between `a` and `b` following `mode` until either side closes or fails, or the
/// mode becomes [`Mode::Reset`].
async fn relay(
    mut a: TcpStream,
    mut b: TcpStream,
    mut mode: watch::Receiver<Mode>,
    counters: &Counters,
) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let end = {
        let (mut ar, mut aw) = a.split();
        let (mut br, mut bw) = b.split();
        let (mut rbuf_ab, mut rbuf_ba) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
        // Read but not yet written, and how much of it was written.
        let (mut ab, mut ab_off) = (Vec::<u8>::with_capacity(CHUNK), 0usize);
        let (mut ba, mut ba_off) = (Vec::<u8>::with_capacity(CHUNK), 0usize);
        loop {
            let now = *mode.borrow_and_update();
            match now {
                Mode::Reset => break Mode::Reset,
                Mode::Blackhole => {
                    if mode.changed().await.is_err() {
                        break Mode::Pass;
                    }
                    continue;
                }
                Mode::Pass => {}
            }
            let (ab_empty, ba_empty) = (ab.is_empty(), ba.is_empty());
            tokio::select! {
                changed = mode.changed() => if changed.is_err() { break Mode::Pass },
                r = ar.read(&mut rbuf_ab), if ab_empty => match r {
                    Ok(n) if n > 0 => ab.extend_from_slice(&rbuf_ab[..n]),
                    _ => break Mode::Pass,
                },
                r = br.read(&mut rbuf_ba), if ba_empty => match r {
                    Ok(n) if n > 0 => ba.extend_from_slice(&rbuf_ba[..n]),
                    _ => break Mode::Pass,
                },
                w = bw.write(&ab[ab_off..]), if !ab_empty => match w {
                    Ok(n) if n > 0 => {
                        counters.forwarded.fetch_add(n as u64, Ordering::Relaxed);
                        ab_off += n;
                        if ab_off == ab.len() {
                            ab.clear();
                            ab_off = 0;
                        }
                    }
                    _ => break Mode::Pass,
                },
                w = aw.write(&ba[ba_off..]), if !ba_empty => match w {
                    Ok(n) if n > 0 => {
                        counters.forwarded.fetch_add(n as u64, Ordering::Relaxed);
                        ba_off += n;
                        if ba_off == ba.len() {
                            ba.clear();
                            ba_off = 0;
                        }
                    }
                    _ => break Mode::Pass,
                },
            }
        }
    };
    match end {
        Mode::Reset => {
            reset(a);
            reset(b);
        }
        _ => {
            let _ = a.shutdown().await;
            let _ = b.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Instant;

    /// A one-connection-at-a-time echo server on a fresh port (a std thread; stops when the
    /// test process ends, each connection is bounded by its read timeout).
    fn echo() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for c in l.incoming().take(16) {
                let Ok(mut c) = c else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        port
    }

    fn connect(port: u16) -> std::net::TcpStream {
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        c
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn starts_and_stops_inside_a_runtime() {
        let proxy = Proxy::start(echo()).expect("proxy");
        let port = proxy.port();
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        c.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(3), c.read_exact(&mut buf))
            .await
            .expect("in time")
            .expect("echo");
        assert_eq!(&buf, b"ping");
        drop(proxy);
        let refused = std::net::TcpStream::connect(("127.0.0.1", port));
        assert!(refused.is_err(), "the listener outlived the proxy");
    }

    #[test]
    fn passes_holds_and_resets() {
        let proxy = Proxy::start(echo()).expect("proxy");
        let mut c = connect(proxy.port());
        let mut buf = [0u8; 5];
        c.write_all(b"hello").expect("write");
        c.read_exact(&mut buf).expect("echo through the proxy");
        assert_eq!(&buf, b"hello");

        // Blackhole: nothing comes back, the connection stays open; after Pass the held bytes
        // arrive, in order.
        proxy.set_mode(Mode::Blackhole);
        std::thread::sleep(Duration::from_millis(100));
        c.write_all(b"world").expect("write");
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let held = c.read(&mut buf);
        assert!(
            matches!(&held, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut),
            "a blackholed connection answered: {held:?}"
        );
        proxy.set_mode(Mode::Pass);
        c.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        c.read_exact(&mut buf).expect("held bytes after the heal");
        assert_eq!(&buf, b"world");
        // The proxy counts a write after it returns, which may be after the echo reached us.
        let counted = Instant::now() + Duration::from_secs(2);
        while proxy.forwarded() < 20 && Instant::now() < counted {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(proxy.forwarded() >= 20, "{}", proxy.forwarded());

        // Reset: the open connection is reset, new ones are reset at once.
        proxy.set_mode(Mode::Reset);
        let got = c.read(&mut buf);
        assert!(
            matches!(got, Ok(0) | Err(_)),
            "the connection survived a reset: {got:?}"
        );
        let mut fresh = connect(proxy.port());
        let _ = fresh.write_all(b"x");
        let got = fresh.read(&mut buf);
        assert!(
            matches!(got, Ok(0) | Err(_)),
            "a new connection was served in reset mode: {got:?}"
        );

        // Healed: served again.
        proxy.set_mode(Mode::Pass);
        let mut again = connect(proxy.port());
        again.write_all(b"again").expect("write");
        again.read_exact(&mut buf).expect("echo after the heal");
        assert_eq!(&buf, b"again");
        assert!(proxy.accepted() >= 3);
    }
}
