//! Network partitions with nftables inside a private network namespace (issue 7, fault 3).
//!
//! Every process of the cluster shares the namespace's 127.0.0.1 ([`crate::netns`]), so a
//! node's traffic is told apart by the group id it runs as: node `i` is started with gid
//! [`GID_BASE`]` + i` (still uid 0, so it reads and writes its files as before; only its
//! sockets are labelled). One table of the test's own holds one chain on the output hook:
//!
//! ```text
//! ct state new meta skgid G ct mark set G          (one per node: the connection's owner)
//! ct mark G ... ct original proto-dst {raft} counter   (raft traffic counters, per node)
//! ct mark G meta l4proto tcp ct original proto-dst P drop   (a cut, added and deleted)
//! ```
//!
//! Both directions of a loopback connection pass the output hook, and both carry the mark its
//! first packet set, so one rule per (connecting node, destination port) cuts the connection
//! both ways, and refuses new ones. Cutting node `a` from node `b` adds that rule for `a`'s
//! connections to every port `b` listens on, and for `b`'s to every port of `a`'s; cutting a
//! node from NATS, for its connections to the NATS port. Healing deletes the rules by handle.
//!
//! What a cut does, by [`Mode`] (the proxies' semantics, [`crate::proxy`]):
//! - [`Mode::Blackhole`]: `drop`. Packets vanish both ways; connections stay open and TCP
//!   retransmits; new connections time out. After the heal TCP delivers what was held.
//! - [`Mode::Reset`]: the existing connections of the link are destroyed at once (`ss -K`,
//!   both ends), and the cut node's packets are rejected with a TCP reset (the other side's are
//!   dropped, except that reset): the node sees its connection reset and every reconnect
//!   refused.
//!
//! Invariants: the table exists before any server starts (so every connection is marked) and
//! is deleted when the [`NftLinks`] drops; only rules this value added are deleted; marks are
//! the gids, which no other process in the namespace uses.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::probe::tool;
use crate::proxy::Mode;

/// Node `i` runs with gid `GID_BASE + i` (a range no Debian package allocates).
pub const GID_BASE: u32 = 71_000;

/// Why an nft (or ss) command failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// Refused: this process is not a test's network namespace child.
    #[error("nft rules are only installed inside a test's private network namespace")]
    NotInNamespace,
    /// The tool is not installed.
    #[error("{0} is not installed")]
    Missing(&'static str),
    /// Spawning it failed.
    #[error("running {tool}: {err}")]
    Spawn {
        /// The tool.
        tool: &'static str,
        /// The error.
        err: std::io::Error,
    },
    /// It exited non-zero.
    #[error("{cmd}: {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// Its output was not what we expected.
    #[error("{cmd}: unexpected output: {out}")]
    Output {
        /// The command line.
        cmd: String,
        /// What it printed.
        out: String,
    },
}

/// One node as the rules see it.
#[derive(Debug, Clone)]
pub struct NodePorts {
    /// The gid the node runs as (also its connections' ct mark).
    pub gid: u32,
    /// Its raft port.
    pub raft: u16,
    /// Every port it listens on (client API, raft, metrics).
    pub listening: Vec<u16>,
}

/// The links of a cluster in a private network namespace (see the module docs).
#[derive(Debug)]
pub struct NftLinks {
    nft: PathBuf,
    ss: PathBuf,
    table: String,
    nodes: Vec<NodePorts>,
    nats_port: u16,
    /// Handles of node `i`'s raft counters: (its connections to raft ports, connections to its
    /// raft port).
    counters: Vec<(u64, u64)>,
    /// Handles of the cut rules in force.
    cuts: Mutex<Vec<u64>>,
}

fn run(tool_name: &'static str, path: &PathBuf, args: &[String]) -> Result<String, NftError> {
    let out = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| NftError::Spawn {
            tool: tool_name,
            err,
        })?;
    if !out.status.success() {
        return Err(NftError::Failed {
            cmd: format!("{tool_name} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The handle `nft --echo --handle add rule` printed (`... # handle N`).
fn handle_of(out: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.rsplit_once("# handle ").map(|(_, h)| h.trim()))
        .and_then(|h| h.parse().ok())
}

fn port_set(ports: &[u16]) -> String {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!("{{ {} }}", list.join(", "))
}

impl NftLinks {
    /// Creates the table (named after this process and the NATS port) with its mark and counter
    /// rules for `nodes`; NATS listens on `nats_port`. Call before any node starts. Refused
    /// outside a network namespace child of a test ([`crate::netns::inside`]): the host's
    /// ruleset is never touched.
    pub fn install(nodes: Vec<NodePorts>, nats_port: u16) -> Result<Self, NftError> {
        if !crate::netns::inside() {
            return Err(NftError::NotInNamespace);
        }
        let nft = tool("nft").ok_or(NftError::Missing("nft"))?;
        let ss = tool("ss").ok_or(NftError::Missing("ss"))?;
        let table = format!("drawbridge_{}_{nats_port}", std::process::id());
        let mut links = Self {
            nft,
            ss,
            table,
            nodes,
            nats_port,
            counters: Vec::new(),
            cuts: Mutex::new(Vec::new()),
        };
        links.nft(&format!("add table inet {}", links.table))?;
        links.nft(&format!(
            "add chain inet {} out {{ type filter hook output priority 0; policy accept; }}",
            links.table
        ))?;
        for n in links.nodes.clone() {
            links.rule(&format!(
                "ct state new meta skgid {0} ct mark set {0}",
                n.gid
            ))?;
        }
        let rafts: Vec<u16> = links.nodes.iter().map(|n| n.raft).collect();
        for n in links.nodes.clone() {
            let out = links.rule(&format!(
                "ct mark {} meta l4proto tcp ct original proto-dst {} counter",
                n.gid,
                port_set(&rafts)
            ))?;
            let inbound = links.rule(&format!(
                "ct mark != 0 meta l4proto tcp ct original proto-dst {} counter",
                n.raft
            ))?;
            links.counters.push((out, inbound));
        }
        Ok(links)
    }

    fn nft(&self, command: &str) -> Result<String, NftError> {
        run("nft", &self.nft, &[command.to_owned()])
    }

    /// Appends `rule` to the chain; returns its handle.
    fn rule(&self, rule: &str) -> Result<u64, NftError> {
        let cmd = format!("add rule inet {} out {rule}", self.table);
        let out = run(
            "nft",
            &self.nft,
            &["--echo".into(), "--handle".into(), cmd.clone()],
        )?;
        handle_of(&out).ok_or(NftError::Output { cmd, out })
    }

    /// Adds the rule that cuts connections node `from` opens to `ports`, as `mode` says.
    fn cut(&self, from: usize, ports: &[u16], mode: Mode) -> Result<(), NftError> {
        if ports.is_empty() {
            return Ok(());
        }
        // A Reset cut rejects the node's packets (original direction: its SYNs get a refusal,
        // its data a reset) and drops the other side's, except resets: the reset `reject`
        // sends back belongs to the same connection (reply direction) and must get through.
        let rules: &[&str] = match mode {
            Mode::Pass => return Ok(()),
            Mode::Blackhole => &["drop"],
            Mode::Reset => &[
                "ct direction original reject with tcp reset",
                "ct direction reply tcp flags & rst == 0 drop",
            ],
        };
        for verdict in rules {
            let handle = self.rule(&format!(
                "ct mark {} meta l4proto tcp ct original proto-dst {} {verdict}",
                self.nodes[from].gid,
                port_set(ports)
            ))?;
            self.cuts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(handle);
        }
        Ok(())
    }

    /// Cuts both directions between node `i` and every other node, as `mode` says ([`Mode::Reset`]
    /// also destroys the open connections between them: `pids[j]` is node `j`'s process).
    pub fn isolate(&self, i: usize, mode: Mode, pids: &[Option<u32>]) -> Result<(), NftError> {
        for j in 0..self.nodes.len() {
            if j == i {
                continue;
            }
            self.cut(i, &self.nodes[j].listening, mode)?;
            self.cut(j, &self.nodes[i].listening, mode)?;
            if mode == Mode::Reset {
                for (from, to) in [(i, j), (j, i)] {
                    if let Some(pid) = pids.get(from).copied().flatten() {
                        for port in &self.nodes[to].listening {
                            self.destroy(pid, *port)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Cuts node `i` (process `pid`) from NATS, as `mode` says.
    pub fn cut_from_nats(&self, i: usize, mode: Mode, pid: Option<u32>) -> Result<(), NftError> {
        self.cut(i, &[self.nats_port], mode)?;
        if let (Mode::Reset, Some(pid)) = (mode, pid) {
            self.destroy(pid, self.nats_port)?;
        }
        Ok(())
    }

    /// Destroys (both ends of) every established connection process `pid` has to `port`
    /// (`ss -K`; the kernel aborts the sockets, their owners see a reset).
    fn destroy(&self, pid: u32, port: u16) -> Result<(), NftError> {
        let list = run(
            "ss",
            &self.ss,
            &[
                "-Htnp".into(),
                "state".into(),
                "established".into(),
                "dst".into(),
                format!("127.0.0.1:{port}"),
            ],
        )?;
        let tag = format!("pid={pid},");
        for line in list.lines().filter(|l| l.contains(&tag)) {
            // Recv-Q Send-Q Local:Port Peer:Port Process (state omitted with `state`).
            let local = line
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok());
            let Some(local) = local else {
                return Err(NftError::Output {
                    cmd: "ss -Htnp".into(),
                    out: line.to_owned(),
                });
            };
            for (src, dst) in [(local, port), (port, local)] {
                run(
                    "ss",
                    &self.ss,
                    &[
                        "-K".into(),
                        "src".into(),
                        format!("127.0.0.1:{src}"),
                        "dst".into(),
                        format!("127.0.0.1:{dst}"),
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Deletes every cut rule (by handle).
    pub fn heal(&self) -> Result<(), NftError> {
        let handles: Vec<u64> =
            std::mem::take(&mut *self.cuts.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            self.nft(&format!("delete rule inet {} out handle {h}", self.table))?;
        }
        Ok(())
    }

    /// Bytes node `i` exchanged over raft connections (both directions, both those it opened
    /// and those its peers opened to it), from the counters.
    pub fn raft_bytes(&self, i: usize) -> Result<u64, NftError> {
        let listing = run(
            "nft",
            &self.nft,
            &[
                "--handle".into(),
                "list".into(),
                "chain".into(),
                "inet".into(),
                self.table.clone(),
                "out".into(),
            ],
        )?;
        let bytes_of = |handle: u64| -> u64 {
            let tag = format!("# handle {handle}");
            listing
                .lines()
                .find(|l| l.trim_end().ends_with(&tag))
                .and_then(|l| l.split_once(" bytes "))
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let (out, inbound) = self.counters.get(i).copied().unwrap_or_default();
        Ok(bytes_of(out) + bytes_of(inbound))
    }

    /// The nft table's name.
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl Drop for NftLinks {
    fn drop(&mut self) {
        let _ = self.nft(&format!("delete table inet {}", self.table));
    }
}
