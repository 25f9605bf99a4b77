//! Per-link proxies of a partitionable fault-test cluster (issue 7, fault 3).
//!
//! Invariants: every proxy listens on 127.0.0.1 and forwards to one fixed target; a proxy
//! starts in [`Mode::Pass`]; the proxies live (and are stopped) with the [`Links`] value.

use crate::cluster::TestResult;
use crate::proxy::{Mode, Proxy};
use crate::server::{NatsMode, ServerSpec};

/// The network of a partitionable cluster (issue 7, fault 3): every link goes through its own
/// [`Proxy`] on 127.0.0.1. Node `i` reaches NATS through `nats[i]`, and reaches node `j`'s raft
/// port through `raft[i][j]` (`--raft-peer-route <j's raft address>=<proxy>`; nodes talk to each
/// other only over raft, and find each other over NATS). Cutting both directions between a
/// node and its peers isolates it from them while it keeps NATS and its clients.
pub struct Links {
    /// `nats[i]`: node `i`'s link to NATS.
    pub nats: Vec<Proxy>,
    /// `raft[i][j]`: node `i`'s link to node `j`'s raft port (`None` on the diagonal).
    pub raft: Vec<Vec<Option<Proxy>>>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").finish_non_exhaustive()
    }
}

impl Links {
    /// Puts the proxies into `specs` (before the servers start): NATS through a proxy per node
    /// to the NATS server on `nats_port`, raft through a proxy per ordered pair.
    pub fn route(specs: &mut [ServerSpec], nats_port: u16) -> TestResult<Links> {
        let mut nats = Vec::new();
        for spec in specs.iter_mut() {
            let proxy = Proxy::start(nats_port)?;
            spec.nats = NatsMode::External(format!("nats://{}", proxy.addr()));
            nats.push(proxy);
        }
        let raft_ports: Vec<u16> = specs.iter().map(|s| s.raft_port).collect();
        let mut raft = Vec::new();
        for (i, spec) in specs.iter_mut().enumerate() {
            let mut row = Vec::new();
            for (j, port) in raft_ports.iter().enumerate() {
                if i == j {
                    row.push(None);
                    continue;
                }
                let proxy = Proxy::start(*port)?;
                spec.args.extend([
                    "--raft-peer-route".to_owned(),
                    format!("127.0.0.1:{port}={}", proxy.addr()),
                ]);
                row.push(Some(proxy));
            }
            raft.push(row);
        }
        Ok(Links { nats, raft })
    }

    /// Sets both directions of every raft link between node `i` and the others to `mode`.
    pub fn isolate(&self, i: usize, mode: Mode) {
        for (j, row) in self.raft.iter().enumerate() {
            if j == i {
                row.iter().flatten().for_each(|p| p.set_mode(mode));
            } else if let Some(p) = &row[i] {
                p.set_mode(mode);
            }
        }
    }

    /// Every link back to [`Mode::Pass`].
    pub fn heal(&self) {
        self.nats.iter().for_each(|p| p.set_mode(Mode::Pass));
        self.raft
            .iter()
            .flatten()
            .flatten()
            .for_each(|p| p.set_mode(Mode::Pass));
    }

    /// Bytes node `i` exchanged with its peers through the raft proxies (both directions).
    pub fn raft_bytes(&self, i: usize) -> u64 {
        let out: u64 = self.raft[i].iter().flatten().map(Proxy::forwarded).sum();
        let inbound: u64 = self
            .raft
            .iter()
            .filter_map(|row| row[i].as_ref())
            .map(Proxy::forwarded)
            .sum();
        out + inbound
    }
}
