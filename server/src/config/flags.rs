//! Command-line flags, named as Liftbridge's `main.go` names them.
//!
//! | flag | alias | key |
//! |---|---|---|
//! | `--config`, `-c` FILE | | (the YAML file to read) |
//! | `--server-id` ID | `--id` | `clustering.server.id` |
//! | `--namespace` NS | `--ns` | `clustering.namespace` |
//! | `--nats-servers`, `-n` `ADDR[,ADDR]` | | `nats.servers` (repeatable) |
//! | `--embedded-nats`, `-e` | | `nats.embedded` |
//! | `--embedded-nats-config` FILE | `--nc` | `nats.embedded.config` |
//! | `--data-dir`, `-d` DIR | | `data.dir` |
//! | `--port`, `-p` PORT | | `port` |
//! | `--tls-cert` FILE | | `tls.cert` |
//! | `--tls-key` FILE | | `tls.key` |
//! | `--level`, `-l` LEVEL | | `logging.level` |
//! | `--raft-bootstrap-seed` | | `clustering.raft.bootstrap.seed` |
//! | `--raft-bootstrap-peers` `ID[,ID]` | | `clustering.raft.bootstrap.peers` (repeatable) |
//! | `--metrics-listen` HOST:PORT | | `metrics.listen` (Drawbridge; an empty host is 127.0.0.1) |
//! | `--log-format` text\|json | | `logging.format` (Drawbridge) |
//!
//! Invariant: a flag that was not given produces no entry, so it never overrides the file or
//! the environment; a given flag always wins over both. Values are checked by the same code
//! as file and environment values (errors name the flag).
//!
//! The `///` comments on the flags double as `--help` text, so they use the plain notation of
//! command-line help (`ADDR[,ADDR]`, `<namespace>`) rather than rustdoc markup.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use super::value::{Entry, RawValue, Source};

/// Drawbridge server command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Parser)]
#[command(
    name = "drawbridge-server",
    version,
    about = "Drawbridge: a Liftbridge-compatible, replicated message log for NATS"
)]
pub struct Flags {
    /// Load configuration from FILE (YAML, Liftbridge keys).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// ID of this server in the cluster, if none is stored yet (default: random).
    #[arg(long = "server-id", visible_alias = "id", value_name = "ID")]
    pub server_id: Option<String>,
    /// Cluster namespace (default: liftbridge-default).
    #[arg(long = "namespace", visible_alias = "ns", value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Connect to the NATS cluster at ADDR[,ADDR] (default: nats://127.0.0.1:4222).
    #[arg(
        short = 'n',
        long = "nats-servers",
        value_name = "ADDR[,ADDR]",
        value_delimiter = ','
    )]
    pub nats_servers: Vec<String>,
    /// Run a NATS broker inside this process and use it.
    #[arg(short = 'e', long = "embedded-nats")]
    pub embedded_nats: bool,
    /// Configure the embedded NATS broker from FILE (nats-server format); implies -e.
    #[arg(
        long = "embedded-nats-config",
        visible_alias = "nc",
        value_name = "FILE"
    )]
    pub embedded_nats_config: Option<String>,
    /// Store data in DIR (default: /tmp/liftbridge/<namespace>).
    #[arg(short = 'd', long = "data-dir", value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Port to bind the client API to (default: 9292).
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub port: Option<String>,
    /// Server certificate file.
    #[arg(long = "tls-cert", value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// Private key for the server certificate.
    #[arg(long = "tls-key", value_name = "FILE")]
    pub tls_key: Option<String>,
    /// Logging level [debug|info|warn|error] (default: info).
    #[arg(short = 'l', long = "level", value_name = "LEVEL")]
    pub level: Option<String>,
    /// Bootstrap the cluster by electing this server leader if there is no existing state.
    #[arg(long = "raft-bootstrap-seed")]
    pub raft_bootstrap_seed: bool,
    /// Bootstrap the cluster with these peer IDs if there is no existing state.
    #[arg(
        long = "raft-bootstrap-peers",
        value_name = "ID[,ID]",
        value_delimiter = ','
    )]
    pub raft_bootstrap_peers: Vec<String>,
    /// Serve /metrics, /healthz and /readyz over HTTP on HOST:PORT (Drawbridge; default: off;
    /// an empty host binds 127.0.0.1).
    #[arg(long = "metrics-listen", value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// Log format [text|json] (Drawbridge; default: text).
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<String>,
}

impl Flags {
    /// The settings these flags give, in a fixed order.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut push = |key: &str, flag: &'static str, value: RawValue| {
            out.push(Entry {
                key: key.to_owned(),
                value,
                source: Source::Flag(flag),
            })
        };
        let text = |s: &String| RawValue::Str(s.clone());
        let list = |items: &[String]| {
            RawValue::List(
                items
                    .iter()
                    .map(|s| s.trim())
                    .filter(|s| !s.is_empty())
                    .map(|s| RawValue::Str(s.to_owned()))
                    .collect(),
            )
        };
        if let Some(v) = &self.server_id {
            push("clustering.server.id", "--server-id", text(v));
        }
        if let Some(v) = &self.namespace {
            push("clustering.namespace", "--namespace", text(v));
        }
        if !self.nats_servers.is_empty() {
            push("nats.servers", "--nats-servers", list(&self.nats_servers));
        }
        if self.embedded_nats {
            push("nats.embedded", "--embedded-nats", RawValue::Bool(true));
        }
        if let Some(v) = &self.embedded_nats_config {
            push("nats.embedded.config", "--embedded-nats-config", text(v));
        }
        if let Some(v) = &self.data_dir {
            push("data.dir", "--data-dir", text(v));
        }
        if let Some(v) = &self.port {
            push("port", "--port", text(v));
        }
        if let Some(v) = &self.tls_cert {
            push("tls.cert", "--tls-cert", text(v));
        }
        if let Some(v) = &self.tls_key {
            push("tls.key", "--tls-key", text(v));
        }
        if let Some(v) = &self.level {
            push("logging.level", "--level", text(v));
        }
        if self.raft_bootstrap_seed {
            push(
                "clustering.raft.bootstrap.seed",
                "--raft-bootstrap-seed",
                RawValue::Bool(true),
            );
        }
        if !self.raft_bootstrap_peers.is_empty() {
            push(
                "clustering.raft.bootstrap.peers",
                "--raft-bootstrap-peers",
                list(&self.raft_bootstrap_peers),
            );
        }
        if let Some(v) = &self.metrics_listen {
            push("metrics.listen", "--metrics-listen", text(v));
        }
        if let Some(v) = &self.log_format {
            push("logging.format", "--log-format", text(v));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("drawbridge-server").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn long_short_and_alias_names() {
        let long = parse(&[
            "--config",
            "c.yaml",
            "--server-id",
            "s1",
            "--namespace",
            "ns1",
            "--nats-servers",
            "nats://a:4222,nats://b:4222",
            "--embedded-nats",
            "--embedded-nats-config",
            "n.conf",
            "--data-dir",
            "/d",
            "--port",
            "9300",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--level",
            "debug",
            "--raft-bootstrap-seed",
            "--raft-bootstrap-peers",
            "a,b",
            "--metrics-listen",
            "127.0.0.1:9090",
            "--log-format",
            "json",
        ]);
        let short = parse(&[
            "-c",
            "c.yaml",
            "--id",
            "s1",
            "--ns",
            "ns1",
            "-n",
            "nats://a:4222",
            "-n",
            "nats://b:4222",
            "-e",
            "--nc",
            "n.conf",
            "-d",
            "/d",
            "-p",
            "9300",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "-l",
            "debug",
            "--raft-bootstrap-seed",
            "--raft-bootstrap-peers",
            "a",
            "--raft-bootstrap-peers",
            "b",
            "--metrics-listen",
            "127.0.0.1:9090",
            "--log-format",
            "json",
        ]);
        assert_eq!(long, short);
        assert_eq!(long.nats_servers, vec!["nats://a:4222", "nats://b:4222"]);
        assert_eq!(long.entries().len(), 14);
    }

    #[test]
    fn absent_flags_give_no_entries() {
        assert!(parse(&[]).entries().is_empty());
        let e = parse(&["-p", "1"]).entries();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, "port");
        assert_eq!(e[0].source, Source::Flag("--port"));
    }

    #[test]
    fn log_format_sets_the_logging_format_key() {
        let e = parse(&["--log-format", "json"]).entries();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, "logging.format");
        assert_eq!(e[0].source, Source::Flag("--log-format"));
        assert_eq!(e[0].value, RawValue::Str("json".into()));
    }

    #[test]
    fn metrics_listen_sets_the_metrics_key() {
        let e = parse(&["--metrics-listen", ":9464"]).entries();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, "metrics.listen");
        assert_eq!(e[0].source, Source::Flag("--metrics-listen"));
        assert_eq!(e[0].value, RawValue::Str(":9464".into()));
    }

    #[test]
    fn unknown_flags_are_rejected() {
        let r = Flags::try_parse_from(["drawbridge-server", "--no-such-flag"]);
        assert!(r.is_err());
    }
}
