//! Free TCP ports on 127.0.0.1.
//!
//! A port is found by binding port 0 and reading what the kernel chose, then releasing it. Another
//! process could take it between release and use; the window is tiny and tests retry start-up
//! on a fresh port when a bind fails.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
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
