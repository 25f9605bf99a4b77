//! Storage faults on a stopped follower (issue 7, point 4), in process: its newest segment
//! loses a torn tail (after a crash) or gets a bit flipped in its tail (after a clean close);
//! it must restart, drop the bad batch (even below its commit point), catch up from the leader
//! and serve every committed offset again. The process-level versions are
//! `tests/tests/faults.rs` (`torn_tail_…`, `bit_flip_…`).

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use drawbridge_raft::PartitionId;
use drawbridge_raft::PartitionReplica;
use drawbridge_storage::ReadLimits;
use drawbridge_storage::Record;

use crate::harness::eventually;
use crate::harness::fast_timings;
use crate::harness::ThreeNodes;

const T: Duration = Duration::from_secs(10);

fn batch(i: u32, n: u32) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|j| Record {
            timestamp: i64::from(i) * 1000 + i64::from(j),
            key: None,
            headers: Vec::new(),
            value: Bytes::from(format!("fault-{i}-{j}")),
        })
        .collect();
    drawbridge_storage::encode_records(&records).expect("encode records")
}

fn readable_offsets(r: &PartitionReplica) -> Vec<u64> {
    r.log()
        .read(0, ReadLimits::records(100_000))
        .expect("read partition log")
        .iter()
        .map(|v| v.offset)
        .collect()
}

/// `<node dir>/partitions/<hex(stream)>-<partition>/log` (raft/src/node.rs `partition_dir`).
fn log_dir(node_dir: &Path, p: &PartitionId) -> PathBuf {
    let hex: String = p.stream.bytes().map(|b| format!("{b:02x}")).collect();
    node_dir
        .join("partitions")
        .join(format!("{hex}-{}", p.partition))
        .join("log")
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Crash (no recovery point), then cut the newest segment 13 bytes before its data ends.
    TornTail,
    /// Clean close (recovery point kept), then flip a bit 5 bytes before the data ends.
    BitFlip,
}

fn apply(fault: Fault, dir: &Path) {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list log dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let log = logs.pop().expect("a segment");
    let mut bytes = std::fs::read(&log).expect("read segment");
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    assert!(end > 64, "segment holds data");
    match fault {
        Fault::TornTail => {
            match std::fs::remove_file(dir.join("recovery.point")) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("remove recovery point: {e}"),
            }
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&log)
                .expect("open segment");
            f.set_len((end - 13) as u64).expect("cut segment");
        }
        Fault::BitFlip => {
            assert!(dir.join("recovery.point").exists(), "clean close");
            bytes[end - 5] ^= 0x10;
            std::fs::write(&log, &bytes).expect("write segment");
        }
    }
}

async fn follower_recovers(fault: Fault, name: &str) {
    let ThreeNodes {
        mut c,
        p,
        replicas,
        leader,
    } = ThreeNodes::start(fast_timings(), name).await;
    let mut expected = 0u64;
    for i in 0..20u32 {
        leader.append(batch(i, 3), 3, T).await.expect("append");
        expected += 3;
    }
    let victim = (1..=3)
        .find(|i| *i != leader.group_node())
        .expect("a follower");
    for r in &replicas {
        eventually("all applied", T, || r.next_offset() == expected).await;
    }
    let dir = log_dir(&c.members[(victim - 1) as usize].dir, &p);
    let others: Vec<PartitionReplica> = replicas
        .into_iter()
        .filter(|r| r.group_node() != victim)
        .collect();
    c.stop(victim).await;
    for i in 20..25u32 {
        leader
            .append(batch(i, 3), 3, T)
            .await
            .expect("append while down");
        expected += 3;
    }
    apply(fault, &dir);
    let back = c.rejoin(victim, &p).await;
    for i in 25..30u32 {
        leader
            .append(batch(i, 3), 3, T)
            .await
            .expect("append after restart");
        expected += 3;
    }
    eventually("victim catches up", T, || back.next_offset() == expected).await;
    eventually("victim log hw", T, || {
        back.log().high_watermark() == Some(expected - 1)
    })
    .await;
    assert_eq!(readable_offsets(&back), (0..expected).collect::<Vec<_>>());
    drop(others);
    drop(leader);
    drop(back);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_on_a_crashed_follower_is_re_replicated() {
    follower_recovers(Fault::TornTail, "torn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bit_flip_on_a_cleanly_stopped_follower_is_re_replicated() {
    follower_recovers(Fault::BitFlip, "flip").await;
}
