//! Loading the configuration from every source, precedence, and error reporting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use super::*;

fn yaml(text: &str) -> Result<Config, ConfigError> {
    Config::from_entries(file::parse(text, Path::new("test.yaml"))?)
}

fn flags(args: &[&str]) -> Flags {
    Flags::try_parse_from(std::iter::once("drawbridge-server").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

fn invalid_key(r: Result<Config, ConfigError>) -> (String, Source) {
    match r {
        Err(ConfigError::InvalidValue { key, origin, .. }) => (key, origin),
        other => panic!("expected InvalidValue, got {other:?}"),
    }
}

#[test]
fn defaults_are_liftbridges() {
    let c = Config::load(&Flags::default(), Vec::new()).expect("defaults load");
    assert_eq!(c.port, 9292);
    assert_eq!(c.clustering.namespace, "liftbridge-default");
    assert_eq!(
        c.data_dir,
        PathBuf::from("/tmp/liftbridge/liftbridge-default")
    );
    assert_eq!(c.nats.servers, vec!["nats://127.0.0.1:4222".to_owned()]);
    assert!(!c.nats.embedded);
    assert_eq!(c.metadata_cache_max_age, Duration::from_secs(120));
    assert_eq!(c.batch_max_messages, 1024);
    assert_eq!(c.logging.level, LogLevel::Info);
    assert_eq!(c.streams.retention_max_age, Duration::from_secs(168 * 3600));
    assert_eq!(c.streams.segment_max_age, Duration::from_secs(168 * 3600));
    assert_eq!(c.streams.segment_max_bytes, 268_435_456);
    assert_eq!(c.streams.cleaner_interval, Duration::from_secs(300));
    assert_eq!(c.streams.compact_max_goroutines, 10);
    assert_eq!(c.clustering.server_id, None);
    assert_eq!(c.clustering.raft_snapshot_retain, 2);
    assert_eq!(c.clustering.raft_snapshot_threshold, 8192);
    assert_eq!(c.clustering.raft_cache_size, 512);
    assert_eq!(c.clustering.replica_max_lag_time, Duration::from_secs(15));
    assert_eq!(c.clustering.replica_fetch_timeout, Duration::from_secs(3));
    assert_eq!(c.clustering.min_insync_replicas, 1);
    assert_eq!(c.clustering.replication_max_bytes, 1_048_576);
    assert_eq!(c.activity.publish_ack_policy, AckPolicy::All);
    assert_eq!(c.cursors.stream_replication_factor, -1);
    assert_eq!(c.cursors.stream_auto_pause_time, Duration::from_secs(60));
    assert_eq!(c.groups.consumer_timeout, Duration::from_secs(15));
    assert_eq!(c.storage.sync_policy, SyncPolicy::Always);
    assert_eq!(c.metrics.listen, None);
    assert_eq!(
        c.listen_address(),
        HostPort {
            host: "0.0.0.0".into(),
            port: 9292
        }
    );
    assert_eq!(
        c.connection_address(),
        HostPort {
            host: "localhost".into(),
            port: 9292
        }
    );
}

#[test]
fn a_liftbridge_config_file_loads() {
    let c = yaml(
        r#"
listen: localhost:9293
host: broker-2.example
port: 9293
data:
  dir: /var/lib/liftbridge
logging:
  level: debug
  raft: true
nats.servers:
  - nats://localhost:4300
  - nats://localhost:4301
tls:
  cert: /etc/cert.pem
  key: /etc/key.pem
  client.auth:
    enabled: true
    ca: /etc/ca.pem
clustering:
  server.id: server-2
  namespace: prod
  raft.bootstrap.seed: true
  replica.max.lag.time: 20s
  min.insync.replicas: 2
streams:
  retention.max:
    age: 24h
    messages: 100
  compact.enabled: true
cursors:
  stream.partitions: 3
activity.stream.enabled: true
activity.stream.publish.ack.policy: leader
"#,
    )
    .expect("valid");
    assert_eq!(c.listen_address().to_string(), "localhost:9293");
    assert_eq!(c.connection_address().to_string(), "broker-2.example:9293");
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/liftbridge"));
    assert_eq!(c.logging.level, LogLevel::Debug);
    assert!(c.logging.raft);
    assert_eq!(
        c.nats.servers,
        vec!["nats://localhost:4300", "nats://localhost:4301"]
    );
    assert!(c.tls.client_auth_enabled);
    assert_eq!(c.tls.client_auth_ca, Some(PathBuf::from("/etc/ca.pem")));
    assert_eq!(c.clustering.server_id.as_deref(), Some("server-2"));
    assert_eq!(c.clustering.namespace, "prod");
    assert!(c.clustering.raft_bootstrap_seed);
    assert_eq!(c.clustering.replica_max_lag_time, Duration::from_secs(20));
    assert_eq!(c.clustering.min_insync_replicas, 2);
    assert_eq!(c.streams.retention_max_age, Duration::from_secs(24 * 3600));
    assert_eq!(
        c.streams.segment_max_age,
        Duration::from_secs(24 * 3600),
        "segment age follows retention age"
    );
    assert_eq!(c.streams.retention_max_messages, 100);
    assert!(c.streams.compact_enabled);
    assert_eq!(c.cursors.stream_partitions, 3);
    assert!(c.activity.stream_enabled);
    assert_eq!(c.activity.publish_ack_policy, AckPolicy::Leader);
}

#[test]
fn nested_and_flat_files_give_the_same_config() {
    let flat = yaml(
        "nats.servers: [nats://a:1]\nnats.embedded: true\nclustering.namespace: x\n\
         storage.sync.policy: interval\nstorage.sync.interval: 250ms\nlogging.format: json\n\
         metrics.listen: 127.0.0.1:9090\n",
    )
    .expect("flat");
    let nested = yaml(
        "nats:\n  servers: [nats://a:1]\n  embedded: true\nclustering:\n  namespace: x\n\
         storage:\n  sync:\n    policy: interval\n    interval: 250ms\nlogging:\n  format: JSON\n\
         metrics:\n  listen: \"127.0.0.1:9090\"\n",
    )
    .expect("nested");
    assert_eq!(flat, nested);
    assert_eq!(flat.storage.sync_policy, SyncPolicy::Interval);
    assert_eq!(flat.storage.sync_interval, Duration::from_millis(250));
    assert_eq!(flat.logging.format, LogFormat::Json);
    assert_eq!(flat.data_dir, PathBuf::from("/tmp/liftbridge/x"));
    assert_eq!(flat.metrics.listen.map(|h| h.port), Some(9090));
}

#[test]
fn precedence_is_defaults_file_env_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("liftbridge.yaml");
    std::fs::write(
        &path,
        "port: 1000\nlogging.level: warn\nclustering:\n  namespace: from-file\n  server.id: file-id\n",
    )
    .expect("write");
    let cfg_arg = path.to_str().expect("utf-8 temp path");

    let only_file = Config::load(&flags(&["-c", cfg_arg]), Vec::new()).expect("file");
    assert_eq!(only_file.port, 1000);
    assert_eq!(only_file.logging.level, LogLevel::Warn);
    assert_eq!(only_file.clustering.namespace, "from-file");

    let env = vars(&[
        ("LIFTBRIDGE_PORT", "2000"),
        ("LIFTBRIDGE_LOGGING_LEVEL", "error"),
        ("LIFTBRIDGE_CLUSTERING_SERVER_ID", "env-id"),
        ("LIFTBRIDGE_NATS_SERVERS", "nats://e1:4222, nats://e2:4222"),
    ]);
    let file_env = Config::load(&flags(&["-c", cfg_arg]), env.clone()).expect("file+env");
    assert_eq!(file_env.port, 2000);
    assert_eq!(file_env.logging.level, LogLevel::Error);
    assert_eq!(file_env.clustering.server_id.as_deref(), Some("env-id"));
    assert_eq!(
        file_env.clustering.namespace, "from-file",
        "file value not overridden"
    );
    assert_eq!(
        file_env.nats.servers,
        vec!["nats://e1:4222", "nats://e2:4222"]
    );

    let all = Config::load(
        &flags(&[
            "-c",
            cfg_arg,
            "-p",
            "3000",
            "--id",
            "flag-id",
            "-n",
            "nats://f:4222",
        ]),
        env,
    )
    .expect("all");
    assert_eq!(all.port, 3000);
    assert_eq!(all.clustering.server_id.as_deref(), Some("flag-id"));
    assert_eq!(all.nats.servers, vec!["nats://f:4222"]);
    assert_eq!(
        all.logging.level,
        LogLevel::Error,
        "env value not overridden"
    );

    // Environment overrides work without a config file too.
    let env_only =
        Config::load(&Flags::default(), vars(&[("LIFTBRIDGE_PORT", "4000")])).expect("env only");
    assert_eq!(env_only.port, 4000);
}

#[test]
fn unknown_keys_are_all_named() {
    match yaml("port: 1\nnats:\n  servers: [a]\n  sevrers: [b]\nbogus: 1\n") {
        Err(ConfigError::UnknownKeys { keys }) => {
            let names: Vec<_> = keys.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(names, vec!["nats.sevrers", "bogus"]);
            let msg = ConfigError::UnknownKeys { keys }.to_string();
            assert!(
                msg.contains("nats.sevrers") && msg.contains("test.yaml"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A prefix of a key is not a key.
    assert!(matches!(
        yaml("nats: 1\n"),
        Err(ConfigError::UnknownKeys { .. })
    ));
}

#[test]
fn bad_values_name_key_and_source() {
    let file = Source::File(PathBuf::from("test.yaml"));
    assert_eq!(
        invalid_key(yaml("port: abc\n")),
        ("port".into(), file.clone())
    );
    assert_eq!(
        invalid_key(yaml("port: 70000\n")),
        ("port".into(), file.clone())
    );
    assert_eq!(
        invalid_key(yaml("logging.level: verbose\n")),
        ("logging.level".into(), file.clone())
    );
    assert_eq!(
        invalid_key(yaml("streams.retention.max.age: 5\n")),
        ("streams.retention.max.age".into(), file.clone())
    );
    assert_eq!(
        invalid_key(yaml("streams.cleaner.interval: 5 minutes\n")),
        ("streams.cleaner.interval".into(), file.clone())
    );
    assert_eq!(
        invalid_key(yaml("nats.embedded: maybe\n")),
        ("nats.embedded".into(), file.clone())
    );
    // A map where a list belongs flattens to keys below it, which are unknown.
    assert!(matches!(
        yaml("nats.servers: {a: 1}\n"),
        Err(ConfigError::UnknownKeys { .. })
    ));
    assert_eq!(
        invalid_key(yaml("clustering.min.insync.replicas: 0\n")),
        ("clustering.min.insync.replicas".into(), file.clone())
    );
    assert_eq!(
        invalid_key(yaml("cursors.stream.replication.factor: 0\n")),
        ("cursors.stream.replication.factor".into(), file)
    );
    assert_eq!(
        invalid_key(Config::load(
            &Flags::default(),
            vars(&[("LIFTBRIDGE_PORT", "x")])
        )),
        ("port".into(), Source::Env("LIFTBRIDGE_PORT".into()))
    );
    assert_eq!(
        invalid_key(Config::load(&flags(&["--level", "loud"]), Vec::new())),
        ("logging.level".into(), Source::Flag("--level"))
    );
    let msg = yaml("port: abc\n").expect_err("bad").to_string();
    assert!(msg.contains("`port`") && msg.contains("test.yaml"), "{msg}");
}

#[test]
fn durations_in_go_syntax() {
    let c = yaml(
        "metadata.cache.max.age: 1m30s\nbatch.max.time: 100ms\nstreams.retention.max.age: 720h\n\
         streams.segment.max.age: 1.5h\nclustering.replica.fetch.timeout: \"2.5s\"\n\
         streams.auto.pause.time: 0\n",
    )
    .expect("valid");
    assert_eq!(c.metadata_cache_max_age, Duration::from_secs(90));
    assert_eq!(c.batch_max_time, Duration::from_millis(100));
    assert_eq!(c.streams.retention_max_age, Duration::from_secs(720 * 3600));
    assert_eq!(c.streams.segment_max_age, Duration::from_secs(5400));
    assert_eq!(
        c.clustering.replica_fetch_timeout,
        Duration::from_millis(2500)
    );
    assert_eq!(c.streams.auto_pause_time, Duration::ZERO);
}

#[test]
fn derived_defaults() {
    let c =
        yaml("clustering.namespace: ns2\nnats.embedded.config: /etc/nats.conf\n").expect("valid");
    assert_eq!(c.data_dir, PathBuf::from("/tmp/liftbridge/ns2"));
    assert!(
        c.nats.embedded,
        "an embedded NATS config implies embedded NATS"
    );
    let c = yaml("streams.compact.max.goroutines: 0\nclustering.raft.snapshot.threshold: 0\n")
        .expect("valid");
    assert_eq!(c.streams.compact_max_goroutines, 10);
    assert_eq!(c.clustering.raft_snapshot_threshold, 8192);
    let c = Config::load(&flags(&["--nc", "/x.conf"]), Vec::new()).expect("valid");
    assert!(c.nats.embedded);
    let c = Config::load(&flags(&["-e"]), Vec::new()).expect("valid");
    assert!(c.nats.embedded);
}

#[test]
fn cross_key_rules() {
    assert_eq!(invalid_key(yaml("tls.cert: /c.pem\n")).0, "tls.cert");
    assert_eq!(invalid_key(yaml("tls.key: /k.pem\n")).0, "tls.key");
    assert_eq!(
        invalid_key(yaml("nats.tls.cert: /c.pem\n")).0,
        "nats.tls.cert"
    );
    assert_eq!(
        invalid_key(yaml("tls.client.auth.enabled: true\n")).0,
        "tls.client.auth.enabled"
    );
    assert_eq!(
        invalid_key(yaml(
            "tls: {cert: /c, key: /k, client.auth.enabled: true, client.authz.enabled: true}\n"
        ))
        .0,
        "tls.client.authz.enabled"
    );
    assert_eq!(
        invalid_key(yaml(
            "clustering.raft.bootstrap.seed: true\nclustering.raft.bootstrap.peers: [a, b]\n"
        ))
        .0,
        "clustering.raft.bootstrap.peers"
    );
    assert_eq!(
        invalid_key(yaml(
            "storage.sync.policy: interval\nstorage.sync.interval: 0\n"
        ))
        .0,
        "storage.sync.interval"
    );
    assert_eq!(
        invalid_key(yaml("clustering.namespace: \"a b\"\n")).0,
        "clustering.namespace"
    );
    assert_eq!(
        invalid_key(yaml("clustering.server.id: a.b\n")).0,
        "clustering.server.id"
    );
    assert_eq!(invalid_key(yaml("nats.servers: []\n")).0, "nats.servers");
    yaml("nats.servers: []\nnats.embedded: true\n").expect("embedded needs no servers");
}

#[test]
fn listen_and_connection_addresses() {
    let c = yaml("listen: 0.0.0.0:9300\n").expect("valid");
    assert_eq!(c.listen_address().to_string(), "0.0.0.0:9300");
    assert_eq!(c.connection_address().to_string(), "localhost:9300");
    let c = yaml("listen: 9301\n").expect("valid");
    assert_eq!(c.listen_address().to_string(), "0.0.0.0:9301");
    let c = yaml("host: 10.1.2.3\nport: 9302\n").expect("valid");
    assert_eq!(c.listen_address().to_string(), "10.1.2.3:9302");
    assert_eq!(c.connection_address().to_string(), "10.1.2.3:9302");
    let c = yaml("listen: \"[::1]:9303\"\n").expect("valid");
    assert_eq!(c.listen_address().to_string(), "[::1]:9303");
}

#[test]
fn null_values_keep_the_default() {
    let c = yaml("tls.key:\nport:\n").expect("valid");
    assert_eq!(c.tls.key, None);
    assert_eq!(c.port, 9292);
}

#[test]
fn missing_config_file_is_an_error() {
    let r = Config::load(&flags(&["-c", "/definitely/not/here.yaml"]), Vec::new());
    assert!(matches!(r, Err(ConfigError::ReadFile { .. })));
}

#[test]
fn unclean_restart_hold_defaults_to_5_minutes_and_parses() {
    let c = yaml("clustering.namespace: x\n").expect("default");
    assert_eq!(c.storage.unclean_restart_hold, Duration::from_secs(300));
    assert_eq!(
        crate::app::unclean_restart_hold_ms(&c.storage),
        Some(300_000)
    );
    let c = yaml("storage.unclean.restart.hold: 90s\n").expect("90s");
    assert_eq!(c.storage.unclean_restart_hold, Duration::from_secs(90));
    assert_eq!(
        crate::app::unclean_restart_hold_ms(&c.storage),
        Some(90_000)
    );
    let c = yaml("storage:\n  unclean.restart.hold: 0\n").expect("0");
    assert_eq!(crate::app::unclean_restart_hold_ms(&c.storage), None);
    assert!(yaml("storage.unclean.restart.hold: 90\n").is_err());
}

#[test]
fn min_free_bytes_defaults_to_8_mib_and_parses() {
    let c = yaml("clustering.namespace: x\n").expect("default");
    assert_eq!(c.storage.min_free_bytes, 8 << 20);
    let c = yaml("storage:\n  min.free.bytes: 0\n").expect("zero");
    assert_eq!(c.storage.min_free_bytes, 0);
    let c = yaml("storage.min.free.bytes: 123456\n").expect("flat");
    assert_eq!(c.storage.min_free_bytes, 123_456);
    assert!(yaml("storage.min.free.bytes: -1\n").is_err());
}
