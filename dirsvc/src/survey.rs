//! A survey of the chunk index: which referenced chunks lack replicas,
//! which are lost, and what each peer holds.
//!
//! Repair derives its work from a survey instead of keeping a queue, so a
//! restart of dirsvc loses no repair work: the next survey finds the same
//! chunks. A survey is one read transaction over `chunks-v1` (a consistent
//! snapshot that does not block writers) classified against a
//! snapshot of the peers' liveness and drain flags:
//!
//! - a replica is *good* if its peer is up or suspect and not draining;
//!   a chunk needs repair if it is referenced and has fewer than R good
//!   replicas;
//! - a replica is *reachable* (a possible copy source) if its peer is up
//!   or suspect, draining or not; a referenced chunk with no reachable
//!   replica is *lost* (nothing to copy from until a peer comes back);
//! - a peer is *needed* if some referenced chunk would have fewer than R
//!   good replicas without it (a draining peer that is not needed is
//!   drained).
//!
//! Cost: linear in the index (one B-tree walk, one small record decode and
//! one peer lookup per replica). Measured on a 1M-chunk index, R = 3, 5
//! peers, release build, 2-core machine: 0.45 s warm, about 1 s cold
//! (test `measure_cluster_status_on_a_million_chunks`). Memory: the
//! per-peer figures plus at most `cap` work items (the most endangered).

use crate::error::Error;
use crate::peers::{PeerSurvey, PeerView};
use crate::store::Store;
use common::{ChunkId, PeerId};
use std::collections::HashMap;

/// A referenced chunk with fewer than R good replicas and at least one
/// reachable one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WorkItem {
    /// The chunk.
    pub id: ChunkId,
    /// Stored length in bytes.
    pub len: u32,
    /// Every replica the index records (good, reachable or not).
    pub replicas: Vec<PeerId>,
    /// How many of them are good.
    pub good: u32,
}

/// What one survey found.
#[derive(Debug, Default)]
pub(crate) struct Survey {
    /// Referenced chunks.
    pub chunks: u64,
    /// Referenced chunks with fewer than R good replicas, lost ones
    /// included.
    pub under_replicated: u64,
    /// Referenced chunks with no reachable replica.
    pub lost: u64,
    /// Stored (sealed) bytes of one copy of every referenced chunk.
    pub referenced_bytes: u64,
    /// Stored bytes of every copy of a referenced chunk on a reachable
    /// peer (up or suspect).
    pub stored_bytes: u64,
    /// Per-peer figures, for every peer named by some replica list.
    pub peers: HashMap<PeerId, PeerSurvey>,
    /// The most endangered repairable chunks, fewest good replicas first,
    /// at most the `cap` given to [`survey`].
    pub work: Vec<WorkItem>,
    /// Lost chunks (at most `cap` of them).
    pub lost_ids: Vec<ChunkId>,
}

/// Surveys `store`'s chunk index for replication factor `r` against the
/// peer snapshot `view`, keeping at most `cap` work items (and lost ids);
/// `cap = 0` only counts.
///
/// Errors: as [`Store::for_each_chunk`].
pub(crate) fn survey(store: &Store, view: &PeerView, r: u32, cap: usize) -> Result<Survey, Error> {
    let r = r.max(1);
    let mut out = Survey::default();
    // buckets[g] holds the work items with g good replicas (g < r).
    let mut buckets: Vec<Vec<WorkItem>> = vec![Vec::new(); r as usize];
    let mut kept = 0usize;
    // (good, reachable) of each replica of the current chunk: one peer
    // lookup per replica, in a buffer reused across chunks.
    let mut class: Vec<(bool, bool)> = Vec::new();
    store.for_each_chunk(|id, rec| {
        class.clear();
        class.extend(
            rec.replicas
                .iter()
                .map(|p| view.peers.get(p).map_or((false, false), |i| (i.is_good(), i.is_reachable()))),
        );
        let good = class.iter().filter(|c| c.0).count() as u32;
        let referenced = rec.refcount > 0;
        for (p, c) in rec.replicas.iter().zip(&class) {
            let fig = out.peers.entry(*p).or_default();
            fig.indexed += 1;
            if referenced && good - u32::from(c.0) < r {
                fig.needed = true;
            }
        }
        if !referenced {
            return;
        }
        out.chunks += 1;
        let len = u64::from(rec.len);
        let reachable = class.iter().filter(|c| c.1).count() as u64;
        out.referenced_bytes = out.referenced_bytes.saturating_add(len);
        out.stored_bytes = out.stored_bytes.saturating_add(len.saturating_mul(reachable));
        if good >= r {
            return;
        }
        out.under_replicated += 1;
        if !class.iter().any(|c| c.1) {
            out.lost += 1;
            if out.lost_ids.len() < cap {
                out.lost_ids.push(id);
            }
            return;
        }
        if cap == 0 {
            return;
        }
        let g = good as usize;
        if kept == cap {
            // Full: make room only by dropping a less endangered item.
            let Some(worst) = (g + 1..buckets.len()).rev().find(|&b| !buckets[b].is_empty()) else {
                return;
            };
            buckets[worst].pop();
            kept -= 1;
        }
        buckets[g].push(WorkItem { id, len: rec.len, replicas: rec.replicas, good });
        kept += 1;
    })?;
    out.work = buckets.into_iter().flatten().collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::{Liveness, PeerInfo};
    use crate::store::tables::PeerRecord;
    use common::rpc::dir::{
        CommitLayout, FileKind, NewInode, PeerLabels, PeerUsage, StoredChunk, VolumeInfo,
    };
    use common::time::Timestamp;
    use common::{InodeId, VolumeId};
    use std::time::Duration;

    fn info(liveness: Liveness, draining: bool) -> PeerInfo {
        PeerInfo { addr: "127.0.0.1:1".into(), liveness, draining, silent_for: Duration::ZERO }
    }

    /// A store with peers 1..=4 and one file whose block k holds chunk k
    /// with the given replicas.
    fn store_with(dir: &std::path::Path, chunks: &[&[u8]]) -> Store {
        let s = Store::open(&dir.join("db")).unwrap();
        let vol = VolumeInfo {
            id: VolumeId([1; 16]),
            block_size: 4096,
            replicas: 3,
            keyring: common::rpc::dir::Keyring {
                version: 0,
                epochs: vec![common::rpc::dir::KeyEpoch {
                    epoch: 0,
                    wrapped: vec![1],
                    check: [1; 32],
                    link: [0; 32],
                }],
                members: vec![common::rpc::dir::Member {
                    name: "owner".into(),
                    recipient: "age1x".into(),
                    nodes: vec![],
                }],
            },
            legacy_layouts: false,
        };
        s.init_volume(&vol, 0, 0).unwrap();
        for k in 1..=4u8 {
            let rec = PeerRecord::new(
                "127.0.0.1:1".into(),
                PeerUsage::default(),
                Timestamp::now(),
                PeerLabels::default(),
            );
            s.put_peer(PeerId([k; 16]), &rec).unwrap();
        }
        let new = NewInode { kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0 };
        let f = s.create(InodeId::ROOT, b"f", &new).unwrap().ino;
        let blocks = chunks
            .iter()
            .enumerate()
            .map(|(i, reps)| {
                let replicas = reps.iter().map(|&k| PeerId([k; 16])).collect();
                (
                    i as u64,
                    Some(StoredChunk {
                        id: ChunkId::of(&[i as u8]),
                        len: 100,
                        replicas,
                        epoch: 0,
                        mac: [1; 32],
                        inline: None,
                    }),
                )
            })
            .collect();
        let size = chunks.len() as u64 * 4096;
        s.commit_layout(
            f,
            &CommitLayout { held_ms: 0, attrs: Default::default(), size, mtime: Timestamp::now(), blocks },
        )
        .unwrap();
        s
    }

    #[test]
    fn classifies_chunks_and_orders_the_most_endangered_first() {
        let dir = tempfile::tempdir().unwrap();
        // Peer 1 up, 2 up, 3 down, 4 up but draining; R = 3.
        let s = store_with(dir.path(), &[&[1, 2, 4], &[1, 2, 3], &[3], &[4], &[1], &[1, 2, 4, 3]]);
        let view = PeerView {
            peers: HashMap::from([
                (PeerId([1; 16]), info(Liveness::Up, false)),
                (PeerId([2; 16]), info(Liveness::Suspect, false)),
                (PeerId([3; 16]), info(Liveness::Down, false)),
                (PeerId([4; 16]), info(Liveness::Up, true)),
            ]),
        };
        let got = survey(&s, &view, 3, 100).unwrap();
        assert_eq!((got.chunks, got.under_replicated, got.lost), (6, 6, 1));
        // Reachable copies: 3 + 2 + 0 + 1 + 1 + 3, 100 bytes each.
        assert_eq!((got.referenced_bytes, got.stored_bytes), (600, 1000));
        assert_eq!(got.lost_ids, vec![ChunkId::of(&[2])]);
        let order: Vec<(ChunkId, u32)> = got.work.iter().map(|w| (w.id, w.good)).collect();
        assert_eq!(order[0], (ChunkId::of(&[3]), 0), "only a draining copy: most endangered");
        assert_eq!(order[1], (ChunkId::of(&[4]), 1));
        assert!(order[2..].iter().all(|(_, g)| *g == 2), "{order:?}");
        assert_eq!(got.work.len(), 5);
        let p4 = got.peers[&PeerId([4; 16])];
        assert_eq!((p4.indexed, p4.needed), (3, true), "chunks still depend on the draining peer");

        // A small cap keeps the most endangered items only.
        let got = survey(&s, &view, 3, 2).unwrap();
        let ids: Vec<ChunkId> = got.work.iter().map(|w| w.id).collect();
        assert_eq!(ids, vec![ChunkId::of(&[3]), ChunkId::of(&[4])]);
        assert_eq!(got.under_replicated, 6, "counts do not depend on the cap");
        assert!(survey(&s, &view, 3, 0).unwrap().work.is_empty());

        // With R = 1 the draining peer is needed only by chunk 3.
        let got = survey(&s, &view, 1, 100).unwrap();
        assert_eq!(got.work.iter().map(|w| w.id).collect::<Vec<_>>(), vec![ChunkId::of(&[3])]);
        assert!(got.peers[&PeerId([4; 16])].needed);
    }
}
