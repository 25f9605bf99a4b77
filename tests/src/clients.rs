//! [`Client`]s of the clusters tests start, with one set of settings ([`cluster_client`]), so
//! the suites (the fault tests, the client's failover tests) agree on them and change them in
//! one place.
//!
//! Invariants:
//! - Only 127.0.0.1 addresses ([`addrs`]).
//! - Every timeout is short and every retry bounded, so a call to a dead or cut node fails
//!   within seconds and a test's own bounded waits decide the outcome.

use std::time::Duration;

use drawbridge_client::{Client, ClientBuilder, RetryPolicy};

use crate::server::ServerSpec;

/// `127.0.0.1:<port>` of each server in `specs` (its API port): a client's bootstrap addresses.
pub fn addrs<'a>(specs: impl IntoIterator<Item = &'a ServerSpec>) -> Vec<String> {
    specs
        .into_iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect()
}

/// A [`Client`] builder for a test cluster reachable at `addrs`: connect timeout 1 s, request
/// timeout 3 s, ack timeout 5 s, and up to 8 attempts of a call that failed transiently, 100 ms
/// to 1 s apart (so calls ride out a leader change). A test changes what it needs before
/// `connect`.
pub fn cluster_client<I, S>(addrs: I) -> ClientBuilder
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    Client::builder(addrs)
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(3))
        .ack_timeout(Duration::from_secs(5))
        .retry(RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        })
}
