//! Reading a server's Prometheus `/metrics` (the `metrics.listen` endpoint) from tests.
//!
//! [`metadata_leader`] finds the metadata leader of a cluster from each node's
//! `drawbridge_metadata_leader` gauge; [`gauge`] reads one unlabelled series.
//!
//! Invariants: loopback only; every request is bounded (1 s to connect, 2 s per read or write,
//! at most 1 MiB read); every wait is bounded by the caller's timeout. The calls block the
//! calling thread (async callers on a multi-threaded runtime wrap them in
//! `tokio::task::block_in_place`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Why a metric could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The HTTP request failed.
    #[error("GET 127.0.0.1:{port}{path}: {source}")]
    Http {
        /// Port.
        port: u16,
        /// Path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No node reported being the metadata leader in time.
    #[error("no node reports drawbridge_metadata_leader 1 within {0:?}")]
    NoMetadataLeader(Duration),
}

/// A bounded HTTP/1.1 GET on 127.0.0.1; returns the whole response (status line, headers,
/// body).
pub fn http_get(port: u16, path: &str) -> Result<String, MetricsError> {
    let get = || -> std::io::Result<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        conn.set_write_timeout(Some(Duration::from_secs(2)))?;
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        conn.take(1 << 20).read_to_string(&mut out)?;
        Ok(out)
    };
    get().map_err(|source| MetricsError::Http {
        port,
        path: path.to_owned(),
        source,
    })
}

/// The value of the unlabelled series `name` (e.g. `drawbridge_nats_connected`) on the node
/// whose metrics endpoint is `127.0.0.1:port`; `None` when it is not reported.
pub fn gauge(port: u16, name: &str) -> Result<Option<f64>, MetricsError> {
    let text = http_get(port, "/metrics")?;
    Ok(text.lines().find_map(|l| {
        let (series, value) = l.trim().split_once(' ')?;
        (series == name)
            .then(|| value.trim().parse().ok())
            .flatten()
    }))
}

/// The index in `ports` (the nodes' metrics ports) of the node whose
/// `drawbridge_metadata_leader` gauge is 1, ignoring the indexes in `skip` (stopped nodes, a
/// deposed leader); polls every 100 ms for at most `timeout`.
pub fn metadata_leader(
    ports: &[u16],
    skip: &[usize],
    timeout: Duration,
) -> Result<usize, MetricsError> {
    let deadline = Instant::now() + timeout;
    loop {
        for (i, port) in ports.iter().enumerate() {
            if skip.contains(&i) {
                continue;
            }
            if let Ok(Some(v)) = gauge(*port, "drawbridge_metadata_leader") {
                if v == 1.0 {
                    return Ok(i);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(MetricsError::NoMetadataLeader(timeout));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
