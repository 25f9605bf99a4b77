//! Placing the replicas of new partitions on brokers.
//!
//! Rule: each partition's replicas go to the `rf` brokers with the fewest partition replicas
//! (existing ones plus those placed so far for this stream); ties go to the broker with fewer
//! preferred leaderships, then to the lower node id. The first replica of a partition is its
//! preferred leader: among the chosen brokers, the one leading the fewest partitions.
//!
//! Invariants: the result has one entry per partition; each entry has exactly `rf` distinct
//! brokers drawn from `brokers`; the function is pure (the metadata leader runs it and proposes
//! the result, so every node applies the same placement).

use std::collections::BTreeMap;

use drawbridge_raft::metadata::state::MetadataState;
use drawbridge_raft::NodeId;

use crate::error::{Result, ServerError};

/// Per-broker load: (replicas hosted, preferred leaderships).
fn loads(state: &MetadataState, brokers: &[NodeId]) -> BTreeMap<NodeId, (usize, usize)> {
    let mut load: BTreeMap<NodeId, (usize, usize)> = brokers.iter().map(|b| (*b, (0, 0))).collect();
    for s in state.streams.values() {
        for p in s.partitions.values() {
            for (i, r) in p.replicas.iter().enumerate() {
                if let Some(l) = load.get_mut(r) {
                    l.0 += 1;
                    if i == 0 {
                        l.1 += 1;
                    }
                }
            }
        }
    }
    load
}

/// Chooses replicas for `partitions` new partitions with replication factor `rf`.
pub fn place(
    state: &MetadataState,
    brokers: &[NodeId],
    partitions: usize,
    rf: usize,
) -> Result<Vec<Vec<NodeId>>> {
    if rf == 0 || rf > brokers.len() {
        return Err(ServerError::InvalidArgument(format!(
            "Invalid replicationFactor {rf}, cluster size {}",
            brokers.len()
        )));
    }
    let mut load = loads(state, brokers);
    let mut out = Vec::with_capacity(partitions);
    for _ in 0..partitions {
        let mut order: Vec<(NodeId, (usize, usize))> = load.iter().map(|(k, v)| (*k, *v)).collect();
        order.sort_by_key(|(id, (replicas, leads))| (*replicas, *leads, *id));
        let mut chosen: Vec<NodeId> = order.iter().take(rf).map(|(id, _)| *id).collect();
        // Preferred leader: the chosen broker leading the fewest partitions.
        if let Some(pos) = chosen
            .iter()
            .enumerate()
            .min_by_key(|(_, id)| load.get(id).map_or((0, 0), |l| (l.1, l.0)))
            .map(|(i, _)| i)
        {
            chosen.swap(0, pos);
        }
        for (i, id) in chosen.iter().enumerate() {
            if let Some(l) = load.get_mut(id) {
                l.0 += 1;
                if i == 0 {
                    l.1 += 1;
                }
            }
        }
        out.push(chosen);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_replicas_and_leaders() -> Result<()> {
        let state = MetadataState::default();
        let p = place(&state, &[1, 2, 3], 3, 1)?;
        let mut firsts: Vec<_> = p.iter().map(|r| r[0]).collect();
        firsts.sort_unstable();
        assert_eq!(firsts, vec![1, 2, 3]);
        let p = place(&state, &[1, 2, 3], 3, 3)?;
        let mut leaders: Vec<_> = p.iter().map(|r| r[0]).collect();
        leaders.sort_unstable();
        assert_eq!(leaders, vec![1, 2, 3]);
        for r in &p {
            let mut s = r.clone();
            s.sort_unstable();
            s.dedup();
            assert_eq!(s.len(), 3);
        }
        Ok(())
    }

    #[test]
    fn rf_larger_than_cluster_is_invalid() {
        let state = MetadataState::default();
        assert!(matches!(
            place(&state, &[1], 1, 2),
            Err(ServerError::InvalidArgument(_))
        ));
    }
}
