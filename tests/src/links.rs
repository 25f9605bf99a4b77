//! The links of a partitionable fault-test cluster (issue 7, fault 3), cut and healed through
//! one interface whatever carries them ([`Links`]):
//!
//! - [`Links::Netns`] ([`crate::nft`]): the cluster lives in a private network namespace
//!   ([`crate::netns`]); every node runs with a gid of its own and nftables rules on the
//!   namespace's loopback drop (or reset) the packets of a cut link. The real thing: the
//!   servers connect to each other and to NATS directly.
//! - [`Links::Proxies`] ([`ProxyLinks`]): every link goes through its own fault-injecting TCP
//!   proxy on the host's 127.0.0.1 ([`crate::proxy`]); the fallback where no namespace can be
//!   made (not root, no nft) outside CI.
//!
//! [`Mode::Blackhole`] is a silent partition (packets or bytes held, connections kept, new ones
//! hang); [`Mode::Reset`] resets the link's connections and refuses new ones.
//!
//! Invariants: a cut lasts until [`Links::heal`]; healing restores every link; whatever a
//! backend set up (proxies, the nft table) goes when the [`Links`] value drops; only
//! 127.0.0.1 is used.

use crate::cluster::TestResult;
use crate::nft::{NftLinks, NodePorts, GID_BASE};
use crate::proxy::{Mode, Proxy};
use crate::server::{NatsMode, ServerSpec};

/// Every link through its own [`Proxy`] on 127.0.0.1. Node `i` reaches NATS through
/// `nats[i]`, and reaches node `j`'s raft port through `raft[i][j]` (`--raft-peer-route <j's
/// raft address>=<proxy>`; nodes talk to each other only over raft, and find each other over
/// NATS). Cutting both directions between a node and its peers isolates it from them while it
/// keeps NATS and its clients.
pub struct ProxyLinks {
    /// `nats[i]`: node `i`'s link to NATS.
    pub nats: Vec<Proxy>,
    /// `raft[i][j]`: node `i`'s link to node `j`'s raft port (`None` on the diagonal).
    pub raft: Vec<Vec<Option<Proxy>>>,
}

impl std::fmt::Debug for ProxyLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyLinks").finish_non_exhaustive()
    }
}

impl ProxyLinks {
    /// Puts the proxies into `specs` (before the servers start): NATS through a proxy per node
    /// to the NATS server on `nats_port`, raft through a proxy per ordered pair.
    pub fn route(specs: &mut [ServerSpec], nats_port: u16) -> TestResult<ProxyLinks> {
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
        Ok(ProxyLinks { nats, raft })
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

/// The links of a partitionable cluster (see the module docs).
#[derive(Debug)]
pub enum Links {
    /// nftables rules in a private network namespace.
    Netns(NftLinks),
    /// Fault-injecting TCP proxies.
    Proxies(ProxyLinks),
}

impl Links {
    /// Sets up the nftables backend for `specs` (before they start): node `i` runs with gid
    /// [`GID_BASE`]` + i`; its listening ports are its spec's client and raft ports and
    /// `extra_ports[i]` (e.g. its metrics port). Only inside a network namespace of the test's
    /// own ([`crate::netns`]).
    pub fn netns(
        specs: &mut [ServerSpec],
        extra_ports: &[u16],
        nats_port: u16,
    ) -> TestResult<Links> {
        let mut nodes = Vec::new();
        for (i, spec) in specs.iter_mut().enumerate() {
            let gid = GID_BASE + u32::try_from(i)?;
            spec.gid = Some(gid);
            let mut listening = vec![spec.port, spec.raft_port];
            listening.extend(extra_ports.get(i).copied());
            nodes.push(NodePorts {
                gid,
                raft: spec.raft_port,
                listening,
            });
        }
        Ok(Links::Netns(NftLinks::install(nodes, nats_port)?))
    }

    /// Sets up the proxy backend for `specs` (before they start; [`ProxyLinks::route`]).
    pub fn proxies(specs: &mut [ServerSpec], nats_port: u16) -> TestResult<Links> {
        Ok(Links::Proxies(ProxyLinks::route(specs, nats_port)?))
    }

    /// `"netns+nft"` or `"proxies"`, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Links::Netns(_) => "netns+nft",
            Links::Proxies(_) => "proxies",
        }
    }

    /// Cuts both directions between node `i` and every other node as `mode` says; it keeps
    /// NATS and its clients. `pids[j]` is node `j`'s process (the nft backend's
    /// [`Mode::Reset`] destroys the open connections of the cut links).
    pub fn isolate(&self, i: usize, mode: Mode, pids: &[Option<u32>]) -> TestResult {
        match self {
            Links::Netns(n) => n.isolate(i, mode, pids)?,
            Links::Proxies(p) => p.isolate(i, mode),
        }
        Ok(())
    }

    /// Cuts node `i` (process `pid`) from NATS as `mode` says.
    pub fn cut_from_nats(&self, i: usize, mode: Mode, pid: Option<u32>) -> TestResult {
        match self {
            Links::Netns(n) => n.cut_from_nats(i, mode, pid)?,
            Links::Proxies(p) => p.nats.get(i).ok_or("no such node")?.set_mode(mode),
        }
        Ok(())
    }

    /// Restores every link.
    pub fn heal(&self) -> TestResult {
        match self {
            Links::Netns(n) => n.heal()?,
            Links::Proxies(p) => p.heal(),
        }
        Ok(())
    }

    /// Bytes node `i` exchanged over raft with its peers so far (both directions): through
    /// the proxies, or counted by the nft rules of its marked connections.
    pub fn raft_bytes(&self, i: usize) -> TestResult<u64> {
        Ok(match self {
            Links::Netns(n) => n.raft_bytes(i)?,
            Links::Proxies(p) => p.raft_bytes(i),
        })
    }
}
