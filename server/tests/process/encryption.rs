//! Encryption at rest with real servers on a real `nats-server`: values round-trip while the
//! bytes on disk hold no plaintext; restarts with the same key, without a key, with another
//! key, and with the old key supplied after a rotation (then the data keys are re-wrapped and
//! the old key is no longer needed); CreateStream without a key; and, on
//! three nodes, a new leader after failover decrypts what the old one sealed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drawbridge_proto::api::*;
use drawbridge_tests::nats::NatsServer;
use drawbridge_tests::server::{cluster, cluster_specs, DrawbridgeServer, NatsMode, ServerSpec};
use tonic::Code;

use crate::common::*;

const EACH: Duration = Duration::from_secs(10);
const KEY_VAR: &str = "LIFTBRIDGE_ENCRYPTION_KEY";
const OLD_VAR: &str = "DRAWBRIDGE_ENCRYPTION_OLD_KEYS";
/// The master key, as 64 hex digits.
const KEY: &str = "4b9f1c0de2a7335d6e8f90a1b2c3d4e5f60718293a4b5c6d7e8f901a2b3c4d5e";
/// Another master key (32 raw bytes).
const OTHER_KEY: &str = "another-master-key-of-32-bytes!!";
/// In every encrypted value: must never be found on disk.
const SECRET: &str = "SECRET-PLAINTEXT-MARKER";
/// In every plaintext value: must be found on disk (the scan sees the data).
const OPEN: &str = "OPEN-PLAINTEXT-MARKER";

fn with_keys(spec: &ServerSpec, key: Option<&str>, old: Option<&str>) -> ServerSpec {
    let mut s = spec.clone();
    s.env.clear();
    if let Some(k) = key {
        s.env.push((KEY_VAR.into(), k.into()));
    }
    if let Some(o) = old {
        s.env.push((OLD_VAR.into(), o.into()));
    }
    s
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let path = e.path();
            if e.file_type()?.is_dir() {
                todo.push(path);
            } else if std::fs::read(&path)?
                .windows(needle.len())
                .any(|w| w == needle)
            {
                out.push(path);
            }
        }
    }
    Ok(out)
}

fn key_of(value: &str) -> String {
    value.replace(SECRET, "key")
}

fn secret(i: usize) -> String {
    format!("{SECRET}-{i}")
}

async fn publish_all(
    c: &mut Client,
    stream: &str,
    partition: i32,
    values: &[String],
) -> TestResult {
    for v in values {
        let mut r = publish_req(stream, v.as_bytes(), AckPolicy::All);
        r.get_mut().partition = partition;
        // Keys are stored in plaintext (only values are encrypted): no marker in them.
        r.get_mut().key = bytes::Bytes::from(key_of(v));
        c.publish(r).await?;
    }
    Ok(())
}

/// Subscribes from the earliest record, retrying (≤ 15 s) while the partition has no leader
/// yet after a start; any other error is returned.
async fn subscribe_earliest(
    c: &mut Client,
    stream: &str,
    partition: i32,
) -> Result<tonic::Streaming<Message>, tonic::Status> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match subscribe(c, sub_req(stream, partition, StartPosition::Earliest)).await {
            Err(e)
                if e.code() == Code::FailedPrecondition
                    && e.message().contains("not partition leader")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
}

async fn read_values(
    c: &mut Client,
    stream: &str,
    partition: i32,
    n: usize,
) -> TestResult<Vec<String>> {
    let mut s = subscribe_earliest(c, stream, partition).await?;
    let got = read_n(&mut s, n, EACH).await?;
    Ok(got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_values_round_trip_survive_restarts_and_need_the_key() -> TestResult {
    let Some(nats) = NatsServer::start_or_skip("encrypted_values_round_trip") else {
        return Ok(());
    };
    let base = ServerSpec::new(BIN, "enc", NatsMode::External(nats.url()))?;
    let data_dir = base.data_dir.clone();
    let keyed = with_keys(&base, Some(KEY), None);
    let mut server = DrawbridgeServer::start(&keyed)?;
    let mut c = client(&server).await?;

    let mut req = create_req("vault", "vault");
    req.partitions = 2;
    req.encryption = Some(NullableBool { value: true });
    c.create_stream(req).await?;
    create(&mut c, "open", "open").await?;
    let p0: Vec<String> = (0..10).map(|i| secret(2 * i)).collect();
    let p1: Vec<String> = (0..10).map(|i| secret(2 * i + 1)).collect();
    publish_all(&mut c, "vault", 0, &p0).await?;
    publish_all(&mut c, "vault", 1, &p1).await?;
    let open: Vec<String> = (0..5).map(|i| format!("{OPEN}-{i}")).collect();
    publish_all(&mut c, "open", 0, &open).await?;

    // Values come back decrypted, keys and headers as sent; reverse reads too.
    let mut s = subscribe_earliest(&mut c, "vault", 0).await?;
    let got = read_n(&mut s, 10, EACH).await?;
    for (m, want) in got.iter().zip(&p0) {
        assert_eq!(m.value, want.as_bytes());
        assert_eq!(m.key, key_of(want).as_bytes());
        assert_eq!(header(m, "subject").as_deref(), Some("vault"));
    }
    assert_eq!(read_values(&mut c, "vault", 1, 10).await?, p1);
    let mut rev = sub_req("vault", 0, StartPosition::Latest);
    rev.reverse = true;
    let mut s = subscribe(&mut c, rev).await?;
    let back: Vec<String> = read_n(&mut s, 10, EACH)
        .await?
        .iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect();
    assert_eq!(back, p0.iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(read_values(&mut c, "open", 0, 5).await?, open);

    // On disk: the plaintext stream's values are there, the encrypted stream's are not.
    assert!(
        !files_containing(&data_dir, OPEN.as_bytes())?.is_empty(),
        "the scan does not see the plaintext stream's data"
    );
    assert_eq!(
        files_containing(&data_dir, SECRET.as_bytes())?,
        Vec::<PathBuf>::new(),
        "plaintext of an encrypted stream on disk"
    );

    // Restart with the same key: still readable, and new values too.
    assert!(
        server.stop(Duration::from_secs(10)),
        "{}",
        server.log_tail()
    );
    let mut server = DrawbridgeServer::start(&keyed)?;
    let mut c = client(&server).await?;
    assert_eq!(read_values(&mut c, "vault", 0, 10).await?, p0);
    publish_all(&mut c, "vault", 1, &[secret(100)]).await?;
    let mut want1 = p1.clone();
    want1.push(secret(100));
    assert_eq!(read_values(&mut c, "vault", 1, 11).await?, want1);

    // Restart without the key: a clear error for the encrypted stream, never ciphertext; the
    // plaintext stream is served as before; publishes get the ENCRYPTION ack (Internal).
    assert!(
        server.stop(Duration::from_secs(10)),
        "{}",
        server.log_tail()
    );
    let mut server = DrawbridgeServer::start(&with_keys(&base, None, None))?;
    let mut c = client(&server).await?;
    assert_eq!(read_values(&mut c, "open", 0, 5).await?, open);
    let e = subscribe_earliest(&mut c, "vault", 0)
        .await
        .err()
        .ok_or("subscribed to an encrypted stream without the key")?;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(KEY_VAR), "{e:?}");
    let e = c
        .publish(publish_req("vault", b"no key", AckPolicy::Leader))
        .await
        .err()
        .ok_or("published to an encrypted stream without the key")?;
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("encryption"), "{e:?}");
    let mut req = create_req("vault2", "vault2");
    req.encryption = Some(NullableBool { value: true });
    let e = c
        .create_stream(req)
        .await
        .err()
        .ok_or("created an encrypted stream without a key")?;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(KEY_VAR), "{e:?}");
    publish_all(&mut c, "open", 0, &[format!("{OPEN}-after")]).await?;

    // Another master key alone: the error names the key the data key needs.
    assert!(
        server.stop(Duration::from_secs(10)),
        "{}",
        server.log_tail()
    );
    let mut server = DrawbridgeServer::start(&with_keys(&base, Some(OTHER_KEY), None))?;
    let mut c = client(&server).await?;
    let e = subscribe_earliest(&mut c, "vault", 1)
        .await
        .err()
        .ok_or("subscribed with the wrong master key")?;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("master key"), "{e:?}");

    // Rotation: the new key, with the old one listed, reads everything.
    assert!(
        server.stop(Duration::from_secs(10)),
        "{}",
        server.log_tail()
    );
    let rotated = with_keys(&base, Some(OTHER_KEY), Some(&format!("hex:{KEY}")));
    let mut server = DrawbridgeServer::start(&rotated)?;
    let mut c = client(&server).await?;
    assert_eq!(read_values(&mut c, "vault", 0, 10).await?, p0);
    assert_eq!(read_values(&mut c, "vault", 1, 11).await?, want1);

    // The metadata leader re-wraps the data keys with the new key; after that the old key is
    // no longer needed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(base.log_path())?
        .contains("every data key is wrapped with the current master key")
    {
        assert!(
            Instant::now() < deadline,
            "data keys not re-wrapped within 20 s:\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        server.stop(Duration::from_secs(10)),
        "{}",
        server.log_tail()
    );
    let server = DrawbridgeServer::start(&with_keys(&base, Some(OTHER_KEY), None))?;
    let mut c = client(&server).await?;
    assert_eq!(read_values(&mut c, "vault", 0, 10).await?, p0);
    assert_eq!(read_values(&mut c, "vault", 1, 11).await?, want1);
    assert_eq!(
        files_containing(&data_dir, SECRET.as_bytes())?,
        Vec::<PathBuf>::new(),
        "plaintext of an encrypted stream on disk after the restarts"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_decrypts_what_the_old_one_sealed() -> TestResult {
    let Some(nats) = NatsServer::start_or_skip("a_new_leader_decrypts") else {
        return Ok(());
    };
    let specs: Vec<ServerSpec> = cluster_specs(Path::new(BIN), &nats.url(), 3)?
        .iter()
        .map(|s| with_keys(s, Some(KEY), None))
        .collect();
    let mut servers: Vec<Option<DrawbridgeServer>> =
        cluster(&specs)?.into_iter().map(Some).collect();
    let mut c0 = client(servers[0].as_ref().ok_or("no server")?).await?;
    let mut req = create_req("ha-vault", "ha-vault");
    req.replication_factor = 3;
    req.encryption = Some(NullableBool { value: true });
    c0.create_stream(req).await?;
    let leader = wait_leader(&mut c0, "ha-vault", None).await?;
    let li = specs
        .iter()
        .position(|s| s.id == leader)
        .ok_or("leader is not a node")?;
    let other = (li + 1) % 3;
    let mut c = client(servers[other].as_ref().ok_or("no server")?).await?;
    let values: Vec<String> = (0..20).map(secret).collect();
    publish_all(&mut c, "ha-vault", 0, &values).await?;

    if let Some(s) = servers[li].as_mut() {
        s.kill();
    }
    servers[li] = None;
    let new_leader = wait_leader(&mut c, "ha-vault", Some(&leader)).await?;
    let ni = specs
        .iter()
        .position(|s| s.id == new_leader)
        .ok_or("new leader is not a node")?;
    let mut cn = client(servers[ni].as_ref().ok_or("new leader is down")?).await?;
    assert_eq!(read_values(&mut cn, "ha-vault", 0, 20).await?, values);
    // The new leader seals too.
    publish_all(&mut cn, "ha-vault", 0, &[secret(20)]).await?;
    let mut all = values.clone();
    all.push(secret(20));
    assert_eq!(read_values(&mut cn, "ha-vault", 0, 21).await?, all);
    for s in &specs {
        assert_eq!(
            files_containing(&s.data_dir, SECRET.as_bytes())?,
            Vec::<PathBuf>::new(),
            "plaintext on {}",
            s.id
        );
    }
    Ok(())
}
