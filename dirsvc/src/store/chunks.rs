//! The chunk family: the chunk index (`K`), the unreferenced list (`U`)
//! and tombstones (`T`): reference counting for the layout family, the
//! repair edits, and the garbage-collection steps, each batched to fit
//! the engine's transaction limit.

use super::records::{ChunkRecord, Record, TombstoneRecord};
use super::{count, decode_i64, keys, scan_all, Get, Store, GC_BATCH, W};
use crate::error::{invalid, Error};
use common::rpc::dir::StoredChunk;
use common::{ChunkId, PeerId};
use std::collections::BTreeMap;
use std::ops::Bound;
use tracing::warn;

impl Store {
    /// Chunks one garbage-collection transaction handles: [`GC_BATCH`], or
    /// fewer if the engine takes fewer writes (three per chunk).
    pub(super) fn gc_batch(&self) -> usize {
        (self.max_ops() / 3).clamp(1, GC_BATCH)
    }

    /// The recorded replicas of each chunk, in the same order (empty for a
    /// chunk the index does not know). Errors: `NotInitialized`.
    pub fn chunk_replicas(&self, ids: &[ChunkId]) -> Result<Vec<Vec<PeerId>>, Error> {
        self.vol()?;
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| keys::chunk(&id.0)).collect();
        self.read(|t| {
            t.get_many(&keys)?
                .into_iter()
                .map(|v| match v {
                    Some(v) => Ok(ChunkRecord::from_bytes(&v)?.replicas),
                    None => Ok(Vec::new()),
                })
                .collect()
        })
    }

    /// The chunk index record of `id`, if any (for GC and inspection).
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, Error> {
        self.read(|t| t.get(&keys::chunk(&id.0))?.map(|v| ChunkRecord::from_bytes(&v)).transpose())
    }

    /// Chunks whose reference count is 0, each with the Unix time (seconds)
    /// at which it became unreferenced, in id order.
    pub fn unreferenced_chunks(&self) -> Result<Vec<(ChunkId, i64)>, Error> {
        self.read(|t| {
            let mut out = Vec::new();
            scan_all(t, &keys::family(keys::UNREF), |k, v| {
                out.push((ChunkId(keys::parse_chunk(&k)?), decode_i64(&v)?));
                Ok(true)
            })?;
            Ok(out)
        })
    }

    /// Removes `peer` from the replica list of each of `ids` (a corruption
    /// report), one transaction per `max_ops` chunks; unknown chunks are
    /// skipped. Returns how many replicas were removed.
    pub fn drop_replicas(&self, peer: PeerId, ids: &[ChunkId]) -> Result<u64, Error> {
        let mut removed = 0u64;
        for batch in ids.chunks(self.max_ops().max(1)) {
            removed += self.drop_replicas_once(peer, batch)?;
        }
        Ok(removed)
    }

    fn drop_replicas_once(&self, peer: PeerId, ids: &[ChunkId]) -> Result<u64, Error> {
        self.write(|w| {
            let mut removed = 0u64;
            for id in ids {
                let Some(mut rec) = w.chunk_rec(id.0)? else { continue };
                let before = rec.replicas.len();
                rec.replicas.retain(|p| *p != peer);
                if rec.replicas.len() != before {
                    removed += 1;
                    w.put_chunk(id.0, &rec)?;
                }
            }
            Ok(removed)
        })
    }

    /// Adds `peer` to chunk `id`'s replicas (a repair copy landed). Returns
    /// false, changing nothing, if the chunk is no longer indexed (garbage
    /// collection took it meanwhile; the copy is then an orphan).
    pub fn add_replica(&self, id: ChunkId, peer: PeerId) -> Result<bool, Error> {
        self.write(|w| {
            let Some(mut rec) = w.chunk_rec(id.0)? else { return Ok(false) };
            if !rec.replicas.contains(&peer) {
                rec.replicas.push(peer);
                w.put_chunk(id.0, &rec)?;
            }
            Ok(true)
        })
    }

    /// Calls `f` for every chunk of the index, in id order, inside one read
    /// transaction (a consistent snapshot; writers are not blocked). Cost:
    /// one scan of the `K` family in pages plus one record decode per
    /// chunk.
    pub fn for_each_chunk(&self, mut f: impl FnMut(ChunkId, ChunkRecord)) -> Result<(), Error> {
        self.read(|t| {
            scan_all(t, &keys::family(keys::CHUNK), |k, v| {
                f(ChunkId(keys::parse_chunk(&k)?), ChunkRecord::from_bytes(&v)?);
                Ok(true)
            })
        })
    }

    /// Garbage collection of unreferenced chunks: up to `max` chunks that
    /// became unreferenced at or before Unix second `cutoff_secs` leave the
    /// index. One transaction (per [`GC_BATCH`]) re-checks each (still
    /// refcount 0, still unreferenced since then), removes its chunk record
    /// and unreferenced row, and writes its tombstone with every recorded
    /// replica pending deletion. Returns the collected chunks with those
    /// replicas; the caller then deletes the copies on the peers.
    pub fn collect_unreferenced(
        &self,
        cutoff_secs: i64,
        max: usize,
    ) -> Result<Vec<(ChunkId, Vec<PeerId>)>, Error> {
        let candidates: Vec<[u8; 32]> = self.read(|t| {
            let mut out = Vec::new();
            if max == 0 {
                return Ok(out);
            }
            scan_all(t, &keys::family(keys::UNREF), |k, v| {
                if decode_i64(&v)? <= cutoff_secs {
                    out.push(keys::parse_chunk(&k)?);
                }
                Ok(out.len() < max)
            })?;
            Ok(out)
        })?;
        let mut collected = Vec::new();
        for batch in candidates.chunks(self.gc_batch()) {
            let done = self.write(|w| {
                let mut out = Vec::new();
                for &id in batch {
                    let Some(since) = w.get(&keys::unref(&id))?.map(|v| decode_i64(&v)).transpose()? else {
                        continue;
                    };
                    if since > cutoff_secs {
                        continue;
                    }
                    let Some(rec) = w.chunk_rec(id)? else {
                        warn!(chunk = %ChunkId(id), "unreferenced row of a chunk the index does not know");
                        w.delete(keys::unref(&id));
                        continue;
                    };
                    if rec.refcount != 0 {
                        warn!(chunk = %ChunkId(id), refcount = rec.refcount, "referenced chunk listed as unreferenced");
                        continue;
                    }
                    w.remove_chunk(id)?;
                    w.delete(keys::unref(&id));
                    w.add_tombstone(id, &rec.replicas)?;
                    out.push((ChunkId(id), rec.replicas));
                }
                Ok(out)
            })?;
            collected.extend(done);
        }
        Ok(collected)
    }

    /// For each of `ids`, whether the chunk index lacks it (one read
    /// transaction).
    pub fn missing_from_index(&self, ids: &[ChunkId]) -> Result<Vec<bool>, Error> {
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| keys::chunk(&id.0)).collect();
        self.read(|t| Ok(t.get_many(&keys)?.iter().map(Option::is_none).collect()))
    }

    /// Garbage collection of orphans found on `peer` (copies of chunks no
    /// commit references): in one transaction, each of `ids` that is still
    /// not in the chunk index gets a tombstone with `peer` pending deletion
    /// (one transaction per `max_ops` ids). Returns the ids tombstoned; the
    /// others were committed meanwhile and are left alone.
    pub fn tombstone_orphans(&self, peer: PeerId, ids: &[ChunkId]) -> Result<Vec<ChunkId>, Error> {
        let mut out = Vec::new();
        for batch in ids.chunks(self.max_ops().max(1)) {
            out.extend(self.tombstone_orphans_once(peer, batch)?);
        }
        Ok(out)
    }

    fn tombstone_orphans_once(&self, peer: PeerId, ids: &[ChunkId]) -> Result<Vec<ChunkId>, Error> {
        self.write(|w| {
            let mut out = Vec::new();
            for id in ids {
                if w.chunk_rec(id.0)?.is_some() {
                    continue;
                }
                w.add_tombstone(id.0, &[peer])?;
                out.push(*id);
            }
            Ok(out)
        })
    }

    /// Up to `max` tombstones with deletions still pending, with id greater
    /// than `after` (all if `None`), in id order: the durable delete queue.
    pub fn pending_deletes(
        &self,
        after: Option<ChunkId>,
        max: usize,
    ) -> Result<Vec<(ChunkId, TombstoneRecord)>, Error> {
        let mut range = keys::family(keys::TOMBSTONE);
        if let Some(a) = after {
            range.0 = Bound::Excluded(keys::tombstone(&a.0));
        }
        self.read(|t| {
            let mut out = Vec::new();
            if max == 0 {
                return Ok(out);
            }
            scan_all(t, &range, |k, v| {
                let rec = TombstoneRecord::from_bytes(&v)?;
                if !rec.pending.is_empty() {
                    out.push((ChunkId(keys::parse_chunk(&k)?), rec));
                }
                Ok(out.len() < max)
            })?;
            Ok(out)
        })
    }

    /// Removes each `(chunk, peer)` from the chunk's pending deletes (the
    /// peer acknowledged the delete, or will never be asked), one
    /// transaction per `max_ops` chunks. Tombstones themselves stay until
    /// [`Store::expire_tombstones`].
    pub fn ack_deletes(&self, acks: &[(ChunkId, PeerId)]) -> Result<(), Error> {
        if acks.is_empty() {
            return Ok(());
        }
        let mut by_chunk: BTreeMap<[u8; 32], Vec<PeerId>> = BTreeMap::new();
        for (c, p) in acks {
            by_chunk.entry(c.0).or_default().push(*p);
        }
        let by_chunk: Vec<([u8; 32], Vec<PeerId>)> = by_chunk.into_iter().collect();
        for batch in by_chunk.chunks(self.max_ops().max(1)) {
            self.write(|w| {
                for (id, peers) in batch {
                    let Some(mut rec) = w.tombstone(*id)? else { continue };
                    rec.pending.retain(|p| !peers.contains(p));
                    w.put(keys::tombstone(id), rec.to_bytes()?);
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Removes the tombstones with no pending deletes whose chunk left the
    /// index at or before Unix second `cutoff_secs`. Returns how many.
    pub fn expire_tombstones(&self, cutoff_secs: i64) -> Result<u64, Error> {
        let expired: Vec<[u8; 32]> = self.read(|t| {
            let mut out = Vec::new();
            scan_all(t, &keys::family(keys::TOMBSTONE), |k, v| {
                let rec = TombstoneRecord::from_bytes(&v)?;
                if rec.pending.is_empty() && rec.deleted_at <= cutoff_secs {
                    out.push(keys::parse_chunk(&k)?);
                }
                Ok(true)
            })?;
            Ok(out)
        })?;
        let mut removed = 0u64;
        for batch in expired.chunks(self.gc_batch()) {
            removed += self.write(|w| {
                let mut n = 0u64;
                for &id in batch {
                    // Re-check: a later orphan find may have refreshed it.
                    let Some(rec) = w.tombstone(id)? else { continue };
                    if rec.pending.is_empty() && rec.deleted_at <= cutoff_secs {
                        w.delete(keys::tombstone(&id));
                        n += 1;
                    }
                }
                Ok(n)
            })?;
        }
        Ok(removed)
    }

    /// The tombstone of chunk `id`, if garbage collection deleted it and the
    /// tombstone has not expired.
    pub fn tombstone(&self, id: &ChunkId) -> Result<Option<TombstoneRecord>, Error> {
        self.read(|t| t.get(&keys::tombstone(&id.0))?.map(|v| TombstoneRecord::from_bytes(&v)).transpose())
    }

    /// Number of tombstones (a scan of the `T` family: O(tombstones)).
    pub fn tombstone_count(&self) -> Result<u64, Error> {
        self.read(|t| count(t, &keys::family(keys::TOMBSTONE)))
    }

    /// Number of chunks at reference count 0 waiting for collection (a
    /// scan of the `U` family: O(such chunks)).
    pub fn unreferenced_count(&self) -> Result<u64, Error> {
        self.read(|t| count(t, &keys::family(keys::UNREF)))
    }
}

impl W<'_, '_> {
    pub(crate) fn chunk_rec(&self, id: [u8; 32]) -> Result<Option<ChunkRecord>, Error> {
        self.get(&keys::chunk(&id))?.map(|v| ChunkRecord::from_bytes(&v)).transpose()
    }

    pub(crate) fn put_chunk(&mut self, id: [u8; 32], rec: &ChunkRecord) -> Result<(), Error> {
        self.put(keys::chunk(&id), rec.to_bytes()?);
        self.after.chunks_touched = true;
        Ok(())
    }

    pub(crate) fn remove_chunk(&mut self, id: [u8; 32]) -> Result<(), Error> {
        self.delete(keys::chunk(&id));
        self.after.chunks_touched = true;
        Ok(())
    }

    pub(crate) fn tombstone(&self, id: [u8; 32]) -> Result<Option<TombstoneRecord>, Error> {
        self.get(&keys::tombstone(&id))?.map(|v| TombstoneRecord::from_bytes(&v)).transpose()
    }

    /// Writes (or refreshes) the tombstone of `id` with `peers` added to
    /// its pending deletes; `deleted_at` becomes now, so a chunk found again
    /// is protected for a full period from now.
    pub(crate) fn add_tombstone(&mut self, id: [u8; 32], peers: &[PeerId]) -> Result<(), Error> {
        let mut rec = self.tombstone(id)?.unwrap_or(TombstoneRecord { deleted_at: 0, pending: Vec::new() });
        rec.deleted_at = rec.deleted_at.max(self.now.secs);
        for p in peers {
            if !rec.pending.contains(p) {
                rec.pending.push(*p);
            }
        }
        self.put(keys::tombstone(&id), rec.to_bytes()?);
        Ok(())
    }

    /// Records one more reference (`add_ref`) to chunk `c` or only its
    /// replicas, creating the chunk record if needed.
    pub(crate) fn chunk_ref(&mut self, c: &StoredChunk, add_ref: bool) -> Result<(), Error> {
        let mut rec = match self.chunk_rec(c.id.0)? {
            Some(rec) => {
                if rec.len != c.len {
                    return Err(invalid(format!(
                        "chunk {} is recorded with stored length {}, not {}",
                        c.id, rec.len, c.len
                    )));
                }
                rec
            }
            None => ChunkRecord { replicas: Vec::new(), refcount: 0, len: c.len },
        };
        for p in &c.replicas {
            if !rec.replicas.contains(p) {
                rec.replicas.push(*p);
            }
        }
        if add_ref {
            if rec.refcount == 0 {
                self.delete(keys::unref(&c.id.0));
            }
            rec.refcount = rec.refcount.saturating_add(1);
        }
        self.put_chunk(c.id.0, &rec)
    }

    /// Drops one reference to chunk `id`; at 0 the chunk is listed in
    /// `chunks-unreferenced-v1` with the current time.
    pub(crate) fn chunk_unref(&mut self, id: [u8; 32]) -> Result<(), Error> {
        let Some(mut rec) = self.chunk_rec(id)? else {
            warn!(chunk = %ChunkId(id), "a layout row named a chunk the index does not know");
            return Ok(());
        };
        if rec.refcount == 0 {
            warn!(chunk = %ChunkId(id), "chunk refcount would go below zero");
            return Ok(());
        }
        rec.refcount -= 1;
        if rec.refcount == 0 {
            self.put(keys::unref(&id), self.now.secs.to_le_bytes().to_vec());
        }
        self.put_chunk(id, &rec)
    }
}
