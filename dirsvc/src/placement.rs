//! Replica placement: which peers receive each new chunk, and which peer
//! receives a repair copy.
//!
//! Pure functions over a snapshot of candidate peers (the registry decides
//! who is a candidate: only peers that are up and not draining), so the
//! policy is testable without sockets. The policy, per replica slot:
//!
//! 1. Failure domains first: among the candidates not chosen yet, prefer
//!    those on a host *and* in a zone no replica of the chunk uses yet;
//!    failing that, a new host in a used zone; failing that, any candidate.
//!    An empty host or zone label means "unknown": the peer is then its own
//!    host or zone, so unlabelled peers spread like distinct machines.
//! 2. Within that tier, a weighted random choice by free space (free =
//!    reported free bytes minus bytes promised to the peer since its last
//!    report, minus what this call already charged it, and never more than
//!    what its disk has left). Drawing without replacement keeps the
//!    replicas on distinct peers. Over many chunks a peer receives new data
//!    in proportion to its free space, so a new, empty peer takes its share
//!    at once but not everything.
//!
//! Each choice charges the chunk's size to the chosen peer and to its disk
//! (the filesystem it stores on, which other peers may share), so a single
//! call also spreads, and peers sharing one disk never promise its space
//! twice.

use common::rpc::dir::DirError;
use common::PeerId;
use rand::Rng;

/// A failure domain (host or zone) of a peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A label the peer registered with.
    Named(String),
    /// No label: the peer is a domain of its own.
    Own(PeerId),
}

impl Domain {
    /// The domain named by `label`, or `peer`'s own one for an empty label.
    pub fn of(label: &str, peer: PeerId) -> Domain {
        if label.is_empty() {
            Domain::Own(peer)
        } else {
            Domain::Named(label.to_string())
        }
    }
}

/// A peer that may receive chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The peer.
    pub id: PeerId,
    /// Free bytes: last reported free space minus bytes promised to it by
    /// placements since that report.
    pub free: u64,
    /// Its host.
    pub host: Domain,
    /// Its zone.
    pub zone: Domain,
    /// Index of its disk in the `disks` slice passed along with the
    /// candidates: peers sharing a filesystem share an index.
    pub disk: usize,
}

impl Candidate {
    /// Bytes the candidate can take now: its own free space, capped by
    /// what its disk has left (a disk missing from `disks` caps nothing).
    fn room(&self, disks: &[u64]) -> u64 {
        self.free.min(disks.get(self.disk).copied().unwrap_or(u64::MAX))
    }
}

/// The hosts and zones a chunk's replicas already occupy.
#[derive(Clone, Debug, Default)]
pub struct Occupied {
    hosts: Vec<Domain>,
    zones: Vec<Domain>,
}

impl Occupied {
    /// Marks `host` and `zone` as used.
    pub fn add(&mut self, host: &Domain, zone: &Domain) {
        if !self.hosts.contains(host) {
            self.hosts.push(host.clone());
        }
        if !self.zones.contains(zone) {
            self.zones.push(zone.clone());
        }
    }

    /// Tier of a candidate: 0 = new host and new zone, 1 = new host, 2 =
    /// neither.
    fn tier(&self, c: &Candidate) -> u8 {
        match (self.hosts.contains(&c.host), self.zones.contains(&c.zone)) {
            (false, false) => 0,
            (false, true) => 1,
            _ => 2,
        }
    }
}

/// Picks one index of `pool` (indices into `cands`) from the best failure-
/// domain tier, weighted by room. `None` if `pool` is empty.
fn pick(
    cands: &[Candidate],
    disks: &[u64],
    pool: &[usize],
    occupied: &Occupied,
    rng: &mut impl Rng,
) -> Option<usize> {
    let best = pool.iter().map(|&i| occupied.tier(&cands[i])).min()?;
    let tier: Vec<usize> = pool.iter().copied().filter(|&i| occupied.tier(&cands[i]) == best).collect();
    let total: u128 = tier.iter().map(|&i| u128::from(cands[i].room(disks))).sum();
    if total == 0 {
        return Some(tier[rng.gen_range(0..tier.len())]);
    }
    let mut x = rng.gen_range(0..total);
    for &i in &tier {
        let w = u128::from(cands[i].room(disks));
        if x < w {
            return Some(i);
        }
        x -= w;
    }
    tier.last().copied()
}

/// Chooses `replicas` distinct peers for each of `count` chunks of
/// `chunk_bytes` bytes (policy: module documentation). `disks` holds the
/// bytes each disk has left (indexed by [`Candidate::disk`]). Only
/// candidates with room for a chunk (after earlier charges, on the peer and
/// on its disk) take part.
///
/// Errors: `NoPeers { needed: replicas, live }` when there are fewer than
/// `replicas` candidates at all; `PeersFull { needed, with_room, live }`
/// when there are enough, but fewer than `replicas` of them have room.
pub fn place(
    candidates: &[Candidate],
    disks: &[u64],
    replicas: u32,
    count: u32,
    chunk_bytes: u64,
    rng: &mut impl Rng,
) -> Result<Vec<Vec<PeerId>>, DirError> {
    let r = replicas as usize;
    let live = candidates.len() as u32;
    if candidates.len() < r {
        return Err(DirError::NoPeers { needed: replicas, live });
    }
    let mut cands: Vec<Candidate> = candidates.to_vec();
    let mut disks: Vec<u64> = disks.to_vec();
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut chosen = Vec::with_capacity(r);
        let mut occupied = Occupied::default();
        for _ in 0..r {
            // Recomputed per replica: a replica charged to a disk may leave
            // no room for a second peer on the same disk.
            let pool: Vec<usize> = (0..cands.len())
                .filter(|&i| cands[i].room(&disks) >= chunk_bytes && !chosen.contains(&cands[i].id))
                .collect();
            let Some(i) = pick(&cands, &disks, &pool, &occupied, rng) else {
                return Err(DirError::PeersFull { needed: replicas, with_room: chosen.len() as u32, live });
            };
            occupied.add(&cands[i].host, &cands[i].zone);
            cands[i].free = cands[i].free.saturating_sub(chunk_bytes);
            if let Some(d) = disks.get_mut(cands[i].disk) {
                *d = d.saturating_sub(chunk_bytes);
            }
            chosen.push(cands[i].id);
        }
        out.push(chosen);
    }
    Ok(out)
}

/// Chooses the peer to receive one repair copy of a chunk of `chunk_bytes`:
/// a candidate with room that is not in `exclude` (peers that hold or are
/// known to have failed the chunk), spread away from the domains in
/// `occupied` (those of the chunk's good replicas), weighted by free space.
/// `None` if no candidate qualifies.
pub fn pick_target(
    candidates: &[Candidate],
    disks: &[u64],
    exclude: &[PeerId],
    occupied: &Occupied,
    chunk_bytes: u64,
    rng: &mut impl Rng,
) -> Option<PeerId> {
    let pool: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].room(disks) >= chunk_bytes && !exclude.contains(&candidates[i].id))
        .collect();
    pick(candidates, disks, &pool, occupied, rng).map(|i| candidates[i].id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashMap;

    /// A candidate on a disk of its own (index `n`, left out of the disk
    /// slices the tests pass, so it caps nothing).
    fn cand(n: u8, free: u64) -> Candidate {
        Candidate {
            id: PeerId([n; 16]),
            free,
            host: Domain::Own(PeerId([n; 16])),
            zone: Domain::Own(PeerId([n; 16])),
            disk: usize::from(n) + 1000,
        }
    }

    fn labelled(n: u8, host: &str, zone: &str) -> Candidate {
        let id = PeerId([n; 16]);
        Candidate { id, free: 1 << 30, host: Domain::of(host, id), zone: Domain::of(zone, id), disk: 1000 }
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn each_chunk_gets_r_distinct_peers() {
        let c: Vec<_> = (1..=4).map(|n| cand(n, 1000)).collect();
        let sets = place(&c, &[], 3, 200, 1, &mut rng()).unwrap();
        for s in &sets {
            assert_eq!(s.len(), 3);
            assert!(s[0] != s[1] && s[1] != s[2] && s[0] != s[2], "{s:?}");
        }
    }

    #[test]
    fn choices_are_proportional_to_free_space() {
        // One replica per chunk: a peer with 3× the free space gets about 3×
        // the chunks. Small chunks, so the charges barely move the weights.
        let c = [cand(1, 3 << 30), cand(2, 1 << 30)];
        let sets = place(&c, &[], 1, 4000, 1024, &mut rng()).unwrap();
        let big = sets.iter().filter(|s| s[0] == PeerId([1; 16])).count() as f64;
        let ratio = big / (4000.0 - big);
        assert!((2.5..3.6).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn charges_move_later_chunks_to_other_peers() {
        // Room for exactly two chunks each: four single-replica chunks must
        // land two and two.
        let c = [cand(1, 20), cand(2, 20)];
        let sets = place(&c, &[], 1, 4, 10, &mut rng()).unwrap();
        let mut n: HashMap<PeerId, usize> = HashMap::new();
        for s in &sets {
            *n.entry(s[0]).or_default() += 1;
        }
        assert_eq!(n.values().copied().collect::<Vec<_>>(), vec![2, 2]);
    }

    #[test]
    fn replicas_spread_over_hosts_then_zones() {
        // Two peers on host a (zone z1), one on host b (z1), one on host c (z2):
        // three replicas must take a, b and c.
        let c =
            [labelled(1, "a", "z1"), labelled(2, "a", "z1"), labelled(3, "b", "z1"), labelled(4, "c", "z2")];
        for s in place(&c, &[], 3, 300, 1, &mut rng()).unwrap() {
            assert!(s.contains(&PeerId([3; 16])) && s.contains(&PeerId([4; 16])), "{s:?}");
        }
        // Three hosts, two zones, R = 2: the lone z2 peer is in every set.
        let c = [labelled(1, "h1", "z1"), labelled(2, "h2", "z1"), labelled(3, "h3", "z2")];
        for s in place(&c, &[], 2, 300, 1, &mut rng()).unwrap() {
            assert!(s.contains(&PeerId([3; 16])), "{s:?}");
        }
        // Unlabelled peers count as distinct hosts: two unlabelled peers beat
        // a second peer on a labelled host.
        let c = [labelled(1, "a", ""), labelled(2, "a", ""), labelled(3, "", ""), labelled(4, "", "")];
        for s in place(&c, &[], 3, 300, 1, &mut rng()).unwrap() {
            assert!(s.contains(&PeerId([3; 16])) && s.contains(&PeerId([4; 16])), "{s:?}");
        }
        // When labels cannot be satisfied, placement still succeeds.
        let c = [labelled(1, "a", "z"), labelled(2, "a", "z")];
        assert_eq!(place(&c, &[], 2, 1, 1, &mut rng()).unwrap()[0].len(), 2);
    }

    #[test]
    fn too_few_candidates_is_no_peers_and_too_little_room_is_peers_full() {
        let c = [cand(1, 1000)];
        assert_eq!(place(&c, &[], 2, 1, 10, &mut rng()), Err(DirError::NoPeers { needed: 2, live: 1 }));
        let c = [cand(1, 1000), cand(2, 5)];
        assert_eq!(
            place(&c, &[], 2, 1, 10, &mut rng()),
            Err(DirError::PeersFull { needed: 2, with_room: 1, live: 2 })
        );
        // Room runs out part-way through one call.
        let c = [cand(1, 25), cand(2, 25)];
        assert_eq!(
            place(&c, &[], 2, 3, 10, &mut rng()),
            Err(DirError::PeersFull { needed: 2, with_room: 0, live: 2 })
        );
        assert_eq!(place(&c, &[], 2, 0, 10, &mut rng()), Ok(vec![]));
        // Zero free space everywhere and zero-byte chunks: still a choice.
        let c = [cand(1, 0), cand(2, 0)];
        assert_eq!(place(&c, &[], 2, 1, 0, &mut rng()).unwrap()[0].len(), 2);
    }

    #[test]
    fn peers_sharing_a_disk_never_promise_its_space_twice() {
        // Three peers that each report 30 bytes free, all on one disk with 30
        // bytes left: one 20-byte chunk at R = 1 fits, a second does not.
        let mut c: Vec<_> = (1..=3).map(|n| cand(n, 30)).collect();
        for x in &mut c {
            x.disk = 0;
        }
        assert_eq!(place(&c, &[30], 1, 1, 20, &mut rng()).unwrap().len(), 1);
        assert_eq!(
            place(&c, &[30], 1, 2, 20, &mut rng()),
            Err(DirError::PeersFull { needed: 1, with_room: 0, live: 3 })
        );
        // R = 2 on that disk: the second replica finds no room left.
        assert_eq!(
            place(&c, &[30], 2, 1, 20, &mut rng()),
            Err(DirError::PeersFull { needed: 2, with_room: 1, live: 3 })
        );
        // Repair targets are capped by the disk too.
        let occ = Occupied::default();
        assert_eq!(pick_target(&c, &[10], &[], &occ, 20, &mut rng()), None);
        assert!(pick_target(&c, &[20], &[], &occ, 20, &mut rng()).is_some());
    }

    #[test]
    fn repair_targets_avoid_holders_and_occupied_domains() {
        let c =
            [labelled(1, "a", "z1"), labelled(2, "a", "z1"), labelled(3, "b", "z2"), labelled(4, "c", "z1")];
        let mut occ = Occupied::default();
        occ.add(&c[0].host, &c[0].zone);
        for _ in 0..100 {
            // Holder 1 is on a/z1: the only new-host-new-zone peer is 3.
            assert_eq!(pick_target(&c, &[], &[c[0].id], &occ, 1, &mut rng()), Some(c[2].id));
        }
        // With 3 excluded, a new host in a used zone (4) beats the same host (2).
        assert_eq!(pick_target(&c, &[], &[c[0].id, c[2].id], &occ, 1, &mut rng()), Some(c[3].id));
        assert_eq!(pick_target(&c, &[], &[c[0].id, c[1].id, c[2].id, c[3].id], &occ, 1, &mut rng()), None);
        assert_eq!(pick_target(&c, &[], &[], &occ, 1 << 40, &mut rng()), None, "no room anywhere");
    }
}
