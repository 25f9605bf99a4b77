//! Free TCP ports on 127.0.0.1.
//!
//! A port is found by binding port 0 and reading what the kernel chose, then releasing it; a port
//! is never handed out twice by one process. Another process could take it between release and
//! use; the window is tiny and tests retry start-up on a fresh port when a bind fails.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Mutex;

/// Ports this process already handed out: the kernel may offer a released port again, and
/// tests running in parallel would then give one port to two listeners (seen: a client's API
/// port was another node's raft port, and the call answered `Unimplemented`).
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that this process has not
/// returned before (at most 256 tries).
pub fn free_port() -> std::io::Result<u16> {
    for _ in 0..256 {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let port = listener.local_addr()?.port();
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no fresh free port in 256 tries",
    ))
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`, for at most `timeout`.
pub fn wait_for_listen(port: u16, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(100))
            .is_ok()
        {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}
