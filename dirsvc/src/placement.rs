//! Replica placement: which peers receive each new chunk.
//!
//! Pure functions over a snapshot of candidate peers, so the policy can grow
//! (host and zone spreading, weights) without touching the registry or the
//! RPC layer. The current policy: for each chunk, the R distinct candidates
//! with the most free space that can still take the chunk, where "free"
//! already subtracts what earlier chunks of the same call (and earlier
//! calls, via the registry's promised bytes) were sent.

use common::rpc::dir::DirError;
use common::PeerId;

/// A live peer that may receive chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The peer.
    pub id: PeerId,
    /// Free bytes: last reported free space minus bytes promised to it by
    /// placements since that report.
    pub free: u64,
}

/// Chooses `replicas` distinct peers for each of `count` chunks of
/// `chunk_bytes` bytes. Each choice takes the candidates with the most
/// free space (ties broken by id) among those with at least `chunk_bytes`
/// free, then charges them `chunk_bytes`, so consecutive chunks spread over
/// the peers.
///
/// Errors: `NoPeers { needed: replicas, live }` when fewer than `replicas`
/// candidates can take a chunk, where `live` is how many could.
pub fn place(
    candidates: &[Candidate],
    replicas: u32,
    count: u32,
    chunk_bytes: u64,
) -> Result<Vec<Vec<PeerId>>, DirError> {
    let r = replicas as usize;
    let mut free: Vec<Candidate> = candidates.to_vec();
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut eligible: Vec<usize> = (0..free.len()).filter(|&i| free[i].free >= chunk_bytes).collect();
        if eligible.len() < r {
            return Err(DirError::NoPeers { needed: replicas, live: eligible.len() as u32 });
        }
        eligible.sort_by(|&a, &b| free[b].free.cmp(&free[a].free).then(free[a].id.cmp(&free[b].id)));
        let chosen: Vec<PeerId> = eligible[..r]
            .iter()
            .map(|&i| {
                free[i].free -= chunk_bytes;
                free[i].id
            })
            .collect();
        out.push(chosen);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cand(n: u8, free: u64) -> Candidate {
        Candidate { id: PeerId([n; 16]), free }
    }

    #[test]
    fn each_chunk_gets_r_distinct_peers_with_most_free_space() {
        let c = [cand(1, 100), cand(2, 500), cand(3, 300)];
        let sets = place(&c, 2, 1, 10).unwrap();
        assert_eq!(sets, vec![vec![PeerId([2; 16]), PeerId([3; 16])]]);
    }

    #[test]
    fn consecutive_chunks_spread_evenly_over_equal_peers() {
        let c: Vec<_> = (1..=4).map(|n| cand(n, 1000)).collect();
        let sets = place(&c, 2, 8, 10).unwrap();
        let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
        for s in &sets {
            assert_eq!(s.len(), 2);
            assert_ne!(s[0], s[1]);
            for p in s {
                *per_peer.entry(*p).or_default() += 1;
            }
        }
        assert_eq!(per_peer.len(), 4);
        assert!(per_peer.values().all(|&n| n == 4), "{per_peer:?}");
    }

    #[test]
    fn too_few_candidates_or_too_little_room_is_no_peers() {
        let c = [cand(1, 1000)];
        assert_eq!(place(&c, 2, 1, 10), Err(DirError::NoPeers { needed: 2, live: 1 }));
        let c = [cand(1, 1000), cand(2, 5)];
        assert_eq!(place(&c, 2, 1, 10), Err(DirError::NoPeers { needed: 2, live: 1 }));
        // Room runs out part-way through one call.
        let c = [cand(1, 25), cand(2, 25)];
        assert_eq!(place(&c, 2, 3, 10), Err(DirError::NoPeers { needed: 2, live: 0 }));
        assert_eq!(place(&c, 2, 0, 10), Ok(vec![]));
    }
}
