//! The layout family: layout groups (`L` + ino + group, 64 blocks per
//! key) and trim markers (`Z`): commit_layout, reseal, get_layout,
//! truncation trims and dropping blocks in bounded transactions. Chunk
//! references go through the chunk family's functions.

use super::namespace::get_inode;
use super::records::{LayoutEntry, LayoutGroupRecord, Record, GROUP_BLOCKS, KIND_DIR, KIND_FILE};
use super::{
    blocks_for, check_time, decode_u64, keys, scan_all, to_attr, Get, LayoutBlock, LayoutBlocks, Store, W,
};
use super::{MAX_CHUNK_OVERHEAD, MAX_LAYOUT_BLOCKS};
use crate::error::{invalid, Error};
use common::rpc::dir::{Attr, CommitLayout, DirError, Reseal, StoredChunk, INLINE_MAX_LEN, RESEAL_BATCH_MAX};
use common::{ChunkId, InodeId};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};
use tracing::warn;

/// Writes one committed entry may cost at worst: its layout group, the new
/// chunk's record and unreferenced key, the replaced chunk's record and
/// unreferenced key.
const OPS_PER_ENTRY: usize = 5;

/// Writes a commit makes besides its entries: the inode and a trim marker.
const OPS_PER_COMMIT: usize = 2;

/// Writes a trim or free step keeps free for its own bookkeeping (inode,
/// marker, orphan, symlink).
const STEP_RESERVE: usize = 4;

/// The group and the offset in it of block `index`.
fn split(index: u64) -> (u64, u8) {
    (index / GROUP_BLOCKS, (index % GROUP_BLOCKS) as u8)
}

impl Store {
    /// How many entries one [`Store::commit_layout`] (or
    /// [`Store::reseal_blocks`]) may carry with this engine: what fits one
    /// transaction when every entry costs its worst case (a layout group,
    /// the new chunk's record and unreferenced key, the replaced chunk's
    /// record and unreferenced key) plus the inode and a trim marker.
    /// redb: 13,106; etcd (127 writes): 25.
    pub fn max_commit_entries(&self) -> usize {
        self.max_ops().saturating_sub(OPS_PER_COMMIT) / OPS_PER_ENTRY
    }

    /// Applies a layout update to regular file `ino` in one transaction:
    /// each listed block entry is set (the new chunk gains a reference and
    /// the committing replicas, the replaced one loses a reference) or
    /// removed (`None`); then size, mtime and the attributes (`attrs`, each
    /// only over the value its client saw) from the commit, and ctime (now)
    /// are set. Entries with index ≥ ⌈size / B⌉ are dropped right after,
    /// in bounded transactions (a trim, see the module documentation);
    /// an unfinished trim of the file is finished before the commit.
    ///
    /// A chunk that garbage collection has deleted (it has a tombstone) is
    /// refused with `ChunkGone` and nothing changes: the tombstone and the
    /// removal of the chunk record were one transaction, so either this
    /// commit ran first (and the collector's re-check saw the reference) or
    /// the collector did.
    ///
    /// Each row keeps the entry's key epoch and MAC. A chunk with replicas
    /// (newly stored) must be sealed under the newest key epoch, read in
    /// the same transaction (`key_epoch`): after a member's removal no
    /// commit adds data under an epoch that member knows.
    ///
    /// Errors: `NotFound`; `IsDir`; `Invalid` for more than
    /// [`Store::max_commit_entries`] entries, a non-regular file, a
    /// block listed twice, a chunk past the new size, a chunk with no
    /// replicas, an unregistered replica, a stored length of 0 or over
    /// B + [`MAX_CHUNK_OVERHEAD`], a length that differs from the one
    /// already recorded for the same chunk, an all-zero MAC, an epoch past
    /// the newest, or an mtime or atime that is not a valid [`Timestamp`];
    /// `StaleEpoch` for a new chunk of an older epoch; `ChunkGone`;
    /// `NotInitialized`.
    pub fn commit_layout(&self, ino: InodeId, commit: &CommitLayout) -> Result<Attr, Error> {
        let vol = self.vol()?;
        check_time("mtime", &commit.mtime)?;
        if let Some(atime) = &commit.attrs.atime {
            check_time("atime", &atime.to)?;
        }
        let max = self.max_commit_entries();
        if commit.blocks.len() > max {
            return Err(invalid(format!(
                "{} entries in one commit; at most {max} with the {} engine",
                commit.blocks.len(),
                self.engine_name()
            )));
        }
        loop {
            match self.write(|w| w.commit_layout(ino.0, commit, vol.block_size))? {
                // The trim ran: its stored bytes are gone now.
                Some((_, true)) => return self.getattr(ino),
                Some((attr, false)) => return Ok(attr),
                None => self.finish_trim(ino.0)?,
            }
        }
    }

    /// Replaces blocks of file `ino` by re-sealed chunks: each
    /// [`Reseal`] whose block still names `old` gets `new` (a new chunk
    /// under the newest epoch, with replicas and a MAC); the others are
    /// left alone. Size, mtime and ctime do not change (the content is the
    /// same). One transaction. Returns, per entry, whether it applied.
    ///
    /// Errors: `NotFound`, `IsDir`, `Invalid` (as [`Store::commit_layout`],
    /// and more than [`RESEAL_BATCH_MAX`] or [`Store::max_commit_entries`]
    /// entries), `StaleEpoch` when a new
    /// chunk is not of the newest epoch, `ChunkGone`, `NotInitialized`.
    pub fn reseal_blocks(&self, ino: InodeId, reseals: &[Reseal]) -> Result<Vec<bool>, Error> {
        let vol = self.vol()?;
        let max = RESEAL_BATCH_MAX.min(self.max_commit_entries());
        if reseals.len() > max {
            return Err(invalid(format!(
                "at most {max} blocks per reseal with the {} engine",
                self.engine_name()
            )));
        }
        self.write(|w| w.reseal_blocks(ino.0, reseals, vol.block_size))
    }

    /// The non-hole blocks of file `ino` with index in
    /// `[first, first + max)` and below ⌈size / B⌉ (at most
    /// [`MAX_LAYOUT_BLOCKS`] of them), with the file's attributes, read in
    /// one transaction.
    ///
    /// Errors: `NotFound`, `IsDir`, `Invalid` for other non-regular files,
    /// `NotInitialized`.
    pub fn get_layout(&self, ino: InodeId, first: u64, max: u32) -> Result<LayoutBlocks, Error> {
        let vol = self.vol()?;
        self.read(|t| {
            let rec = get_inode(t, ino.0)?;
            match rec.kind {
                KIND_FILE => {}
                KIND_DIR => return Err(DirError::IsDir.into()),
                _ => return Err(invalid("not a regular file")),
            }
            // Entries at or past the end wait for a trim: never shown.
            let visible = blocks_for(rec.size, vol.block_size);
            let end = first.saturating_add(u64::from(max));
            let cap = max.min(MAX_LAYOUT_BLOCKS) as usize;
            let mut entries: Vec<(u64, LayoutEntry)> = Vec::new();
            let mut eof = true;
            scan_all(t, &keys::layouts_from(ino.0, first / GROUP_BLOCKS), |k, v| {
                let g = keys::parse_layout(&k)?;
                for e in LayoutGroupRecord::from_bytes(&v)?.entries {
                    let index = g * GROUP_BLOCKS + u64::from(e.offset);
                    if index < first {
                        continue;
                    }
                    if index >= visible {
                        return Ok(false);
                    }
                    if index >= end || entries.len() == cap {
                        eof = false;
                        return Ok(false);
                    }
                    entries.push((index, e));
                }
                Ok(true)
            })?;
            // Inline chunks have no record to read.
            let ids: Vec<Vec<u8>> = entries
                .iter()
                .filter(|(_, e)| e.inline.is_none())
                .map(|(_, e)| keys::chunk(&e.chunk))
                .collect();
            let mut recs = t.get_many(&ids)?.into_iter();
            let mut blocks = Vec::with_capacity(entries.len());
            for (index, e) in entries {
                // An inline chunk has no record (and none was read) and no
                // replicas.
                let replicas = if e.inline.is_some() {
                    Vec::new()
                } else {
                    match recs.next().flatten() {
                        Some(v) => super::records::ChunkRecord::from_bytes(&v)?.replicas,
                        None => {
                            warn!(%ino, index, chunk = %ChunkId(e.chunk), "layout names an unknown chunk");
                            Vec::new()
                        }
                    }
                };
                blocks.push(LayoutBlock {
                    index,
                    chunk: ChunkId(e.chunk),
                    len: e.len,
                    replicas,
                    epoch: e.epoch,
                    mac: e.mac,
                    inline: e.inline,
                });
            }
            Ok(LayoutBlocks { attr: to_attr(ino.0, &rec)?, blocks, eof })
        })
    }

    /// The files with an unfinished trim (a `Z` marker), in inode order.
    pub(crate) fn pending_trims(&self) -> Result<Vec<u64>, Error> {
        self.read(|t| {
            let mut out = Vec::new();
            scan_all(t, &keys::family(keys::TRIM), |k, _| {
                out.push(keys::parse_u64(&k)?);
                Ok(true)
            })?;
            Ok(out)
        })
    }

    /// Drops the blocks of file `ino` that its trim marker lists (index ≥
    /// the marker), in transactions of at most `max_ops` writes (each
    /// chunk loses a reference; `stored_bytes` follows), then removes the
    /// marker. Nothing if there is no marker.
    pub(crate) fn finish_trim(&self, ino: u64) -> Result<(), Error> {
        loop {
            let done = self.write(|w| {
                let Some(from) = w.trim_from(ino)? else { return Ok(true) };
                let budget = w.max_ops.saturating_sub(STEP_RESERVE).max(3);
                let (freed, done) = w.drop_blocks_bounded(ino, from, budget)?;
                if freed > 0 {
                    match w.inode(ino) {
                        Ok(mut rec) => {
                            rec.stored_bytes = rec.stored_bytes.saturating_sub(freed);
                            w.put_inode(ino, &rec)?;
                        }
                        Err(Error::Dir(DirError::NotFound)) => {}
                        Err(e) => return Err(e),
                    }
                }
                if done {
                    w.delete(keys::trim(ino));
                }
                Ok(done)
            })?;
            if done {
                return Ok(());
            }
        }
    }
}

/// What a malicious dirsvc could do to layouts (feature `tamper`).
#[cfg(feature = "tamper")]
impl Store {
    /// Swaps the two layout entries (chunk, length, epoch, MAC) of `(ino,
    /// block index)` `a` and `b`, as a dirsvc moving chunks between files
    /// or blocks would. Errors: `NotFound` if either entry is missing.
    pub fn tamper_swap_layout_rows(&self, a: (InodeId, u64), b: (InodeId, u64)) -> Result<(), Error> {
        self.write(|w| {
            let ea = w.layout_entry(a.0 .0, a.1)?.ok_or(DirError::NotFound)?;
            let eb = w.layout_entry(b.0 .0, b.1)?.ok_or(DirError::NotFound)?;
            w.set_layout_entry(a.0 .0, a.1, LayoutEntry { offset: split(a.1).1, ..eb })?;
            w.set_layout_entry(b.0 .0, b.1, LayoutEntry { offset: split(b.1).1, ..ea })?;
            Ok(())
        })
    }

    /// Sets the MAC of layout entry `(ino, index)` to zero (an entry
    /// without a MAC). Errors: `NotFound`.
    pub fn tamper_clear_mac(&self, ino: InodeId, index: u64) -> Result<(), Error> {
        self.write(|w| {
            let e = w.layout_entry(ino.0, index)?.ok_or(DirError::NotFound)?;
            w.set_layout_entry(ino.0, index, LayoutEntry { mac: [0; 32], ..e })?;
            Ok(())
        })
    }
}

/// The entry at `offset` of its group that records `c`.
fn layout_entry(offset: u8, c: &StoredChunk) -> LayoutEntry {
    LayoutEntry { offset, chunk: c.id.0, len: c.len, epoch: c.epoch, mac: c.mac, inline: c.inline.clone() }
}

/// Layout group `g` of `ino` (empty if it has no key).
pub(crate) fn group_of<G: Get + ?Sized>(t: &G, ino: u64, g: u64) -> Result<LayoutGroupRecord, Error> {
    match t.get(&keys::layout(ino, g))? {
        Some(v) => LayoutGroupRecord::from_bytes(&v),
        None => Ok(LayoutGroupRecord::default()),
    }
}

impl W<'_, '_> {
    /// Counts a new layout entry's chunk: a reference (if `add_ref`) and its
    /// replicas in the chunk's record; nothing for an inline chunk, which
    /// lives in its entry alone.
    fn entry_ref(&mut self, c: &StoredChunk, add_ref: bool) -> Result<(), Error> {
        if c.inline.is_some() {
            return Ok(());
        }
        self.chunk_ref(c, add_ref)
    }

    /// Drops a removed or replaced entry's reference to its chunk (nothing
    /// for an inline chunk).
    fn entry_unref(&mut self, e: &LayoutEntry) -> Result<(), Error> {
        if e.inline.is_some() {
            return Ok(());
        }
        self.chunk_unref(e.chunk)
    }

    /// Writes layout group `g` of `ino` (deletes its key when empty).
    fn put_group(&mut self, ino: u64, g: u64, group: &LayoutGroupRecord) -> Result<(), Error> {
        if group.entries.is_empty() {
            self.delete(keys::layout(ino, g));
        } else {
            self.put(keys::layout(ino, g), group.to_bytes()?);
        }
        Ok(())
    }

    /// The entry of block `index` of `ino`, if any.
    #[cfg(feature = "tamper")]
    fn layout_entry(&self, ino: u64, index: u64) -> Result<Option<LayoutEntry>, Error> {
        let (g, off) = split(index);
        Ok(group_of(self, ino, g)?.get(off).cloned())
    }

    /// Sets the entry of block `index` of `ino` (no reference counting).
    #[cfg(feature = "tamper")]
    fn set_layout_entry(&mut self, ino: u64, index: u64, e: LayoutEntry) -> Result<(), Error> {
        let (g, _) = split(index);
        let mut group = group_of(self, ino, g)?;
        group.set(e);
        self.put_group(ino, g, &group)
    }

    /// The first block index the trim marker of `ino` still drops, if a
    /// trim is unfinished.
    pub(crate) fn trim_from(&self, ino: u64) -> Result<Option<u64>, Error> {
        self.get(&keys::trim(ino))?.map(|v| decode_u64(&v)).transpose()
    }

    /// Records that the blocks of `ino` from `from` on are to be dropped
    /// (keeping an earlier start already recorded) and queues the trim
    /// for after the commit.
    pub(crate) fn mark_trim(&mut self, ino: u64, from: u64) -> Result<(), Error> {
        let from = self.trim_from(ino)?.map_or(from, |old| old.min(from));
        self.put(keys::trim(ino), from.to_le_bytes().to_vec());
        self.after.trims.push(ino);
        Ok(())
    }

    /// Drops the layout entries of `ino` with index ≥ `from` (each chunk
    /// loses a reference) while this transaction holds fewer than
    /// `budget` writes. Returns the stored bytes removed and whether no
    /// such entry is left.
    pub(crate) fn drop_blocks_bounded(
        &mut self,
        ino: u64,
        from: u64,
        budget: usize,
    ) -> Result<(u64, bool), Error> {
        let (first_group, first_off) = split(from);
        let mut next = first_group;
        let mut freed = 0u64;
        loop {
            let Some((k, v)) = self.scan(&keys::layouts_from(ino, next), 1, false)?.pop() else {
                return Ok((freed, true));
            };
            let g = keys::parse_layout(&k)?;
            let mut group = LayoutGroupRecord::from_bytes(&v)?;
            let min_off = if g == first_group { first_off } else { 0 };
            let mut changed = false;
            let mut out_of_room = false;
            while group.entries.last().is_some_and(|e| e.offset >= min_off) {
                // The group's key, the chunk record, its unreferenced key.
                if self.ops() + 3 > budget {
                    out_of_room = true;
                    break;
                }
                let Some(e) = group.entries.pop() else { break };
                self.entry_unref(&e)?;
                freed = freed.saturating_add(u64::from(e.len));
                changed = true;
            }
            if changed {
                self.put_group(ino, g, &group)?;
            }
            if out_of_room {
                return Ok((freed, false));
            }
            next = g.saturating_add(1);
            if g == u64::MAX {
                return Ok((freed, true));
            }
        }
    }

    /// The transaction of [`Store::commit_layout`]; `None` (nothing
    /// written) if the file has an unfinished trim this commit would
    /// grow into.
    /// Also says whether it queued a trim.
    fn commit_layout(
        &mut self,
        ino: u64,
        commit: &CommitLayout,
        block_size: u32,
    ) -> Result<Option<(Attr, bool)>, Error> {
        let mut rec = self.inode(ino)?;
        match rec.kind {
            KIND_FILE => {}
            KIND_DIR => return Err(DirError::IsDir.into()),
            _ => return Err(invalid("layouts belong to regular files only")),
        }
        let nblocks = blocks_for(commit.size, block_size);
        if let Some(from) = self.trim_from(ino)? {
            if nblocks > from || commit.blocks.iter().any(|(i, _)| *i >= from) {
                return Ok(None);
            }
        }
        let newest = self.key_epoch()?;
        let mut seen = HashSet::new();
        for (index, block) in &commit.blocks {
            if !seen.insert(*index) {
                return Err(invalid(format!("block {index} listed twice")));
            }
            let Some(c) = block else { continue };
            if *index >= nblocks {
                return Err(invalid(format!(
                    "block {index} lies past the end of a {}-byte file",
                    commit.size
                )));
            }
            self.check_new_entry(*index, c, block_size, newest)?;
        }
        let mut stored = rec.stored_bytes;
        let mut groups: BTreeMap<u64, LayoutGroupRecord> = BTreeMap::new();
        for (index, block) in &commit.blocks {
            let (g, offset) = split(*index);
            let group = match groups.entry(g) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(group_of(self, ino, g)?),
            };
            let old = group.get(offset).cloned();
            match (block, old) {
                (Some(c), Some(o)) if o.chunk == c.id.0 && o.inline.is_some() == c.inline.is_some() => {
                    // Same chunk again (a retried commit): only new
                    // replicas, and the entry as this commit describes it.
                    group.set(layout_entry(offset, c));
                    self.entry_ref(c, false)?;
                }
                (Some(c), old) => {
                    group.set(layout_entry(offset, c));
                    self.entry_ref(c, true)?;
                    if let Some(o) = old {
                        self.entry_unref(&o)?;
                        stored = stored.saturating_sub(u64::from(o.len));
                    }
                    stored = stored.saturating_add(u64::from(c.len));
                }
                (None, Some(o)) => {
                    group.remove(offset);
                    self.entry_unref(&o)?;
                    stored = stored.saturating_sub(u64::from(o.len));
                }
                (None, None) => {}
            }
        }
        for (g, group) in &groups {
            self.put_group(ino, *g, group)?;
        }
        let trims = nblocks < blocks_for(rec.size, block_size);
        if trims {
            // Entries past the new end go after the commit (a trim).
            self.mark_trim(ino, nblocks)?;
        }
        rec.stored_bytes = stored;
        rec.size = commit.size;
        rec.mtime = commit.mtime;
        // Each carried attribute only over the value its client saw: a
        // change another mount made since is newer and stays.
        let a = &commit.attrs;
        rec.perm = a.perm.map_or(rec.perm, |c| c.apply(rec.perm) & 0o7777);
        rec.uid = a.uid.map_or(rec.uid, |c| c.apply(rec.uid));
        rec.gid = a.gid.map_or(rec.gid, |c| c.apply(rec.gid));
        rec.atime = a.atime.map_or(rec.atime, |c| c.apply(rec.atime));
        rec.ctime = self.now;
        self.put_inode(ino, &rec)?;
        Ok(Some((to_attr(ino, &rec)?, trims)))
    }

    /// The checks every committed entry (block `index`) passes before
    /// anything changes: its length, a MAC, its epoch (no later than
    /// `newest`; a newly stored chunk exactly `newest`), its replicas, no
    /// tombstone; an inline chunk instead: block 0, no replicas, at most
    /// [`INLINE_MAX_LEN`] bytes that hash to its id.
    pub(crate) fn check_new_entry(
        &self,
        index: u64,
        c: &StoredChunk,
        block_size: u32,
        newest: u32,
    ) -> Result<(), Error> {
        let max_len = u64::from(block_size) + u64::from(MAX_CHUNK_OVERHEAD);
        if c.len == 0 || u64::from(c.len) > max_len {
            return Err(invalid(format!(
                "chunk {} has stored length {} (allowed 1..={max_len})",
                c.id, c.len
            )));
        }
        if c.mac == [0; 32] {
            return Err(invalid(format!("the entry of chunk {} has no MAC", c.id)));
        }
        if c.epoch > newest {
            return Err(invalid(format!(
                "chunk {} names key epoch {}; the newest is {newest}",
                c.id, c.epoch
            )));
        }
        if let Some(bytes) = &c.inline {
            // Kept in the layout: dirsvc holds the only copy, so it must be
            // the chunk the entry names, and small.
            if index != 0 {
                return Err(invalid(format!("block {index} is inline; only block 0 may be")));
            }
            if !c.replicas.is_empty() {
                return Err(invalid(format!("inline chunk {} names replicas", c.id)));
            }
            if bytes.len() != c.len as usize || c.len > INLINE_MAX_LEN {
                return Err(invalid(format!(
                    "inline chunk {} has {} bytes for stored length {} (at most {INLINE_MAX_LEN})",
                    c.id,
                    bytes.len(),
                    c.len
                )));
            }
            if ChunkId::of(bytes) != c.id {
                return Err(invalid(format!("inline bytes do not hash to chunk {}", c.id)));
            }
            if c.epoch < newest {
                return Err(DirError::StaleEpoch { current: newest }.into());
            }
            return Ok(());
        }
        if c.replicas.is_empty() {
            // A reference to a chunk the index already holds (a shared
            // block, as copy_file_range makes) keeps its replica list and
            // its epoch; an unknown chunk with no replicas would be data
            // loss.
            let known = self.chunk_rec(c.id.0)?.is_some_and(|r| !r.replicas.is_empty());
            if !known {
                return Err(invalid(format!("chunk {} has no replicas", c.id)));
            }
        } else if c.epoch < newest {
            return Err(DirError::StaleEpoch { current: newest }.into());
        }
        if self.tombstone(c.id.0)?.is_some() {
            return Err(DirError::ChunkGone(c.id).into());
        }
        for p in &c.replicas {
            if self.peer_rec(*p)?.is_none() {
                return Err(invalid(format!("replica peer {p} is not registered")));
            }
        }
        Ok(())
    }

    fn reseal_blocks(&mut self, ino: u64, reseals: &[Reseal], block_size: u32) -> Result<Vec<bool>, Error> {
        let mut rec = self.inode(ino)?;
        match rec.kind {
            KIND_FILE => {}
            KIND_DIR => return Err(DirError::IsDir.into()),
            _ => return Err(invalid("layouts belong to regular files only")),
        }
        let newest = self.key_epoch()?;
        let mut seen = HashSet::new();
        for r in reseals {
            if !seen.insert(r.index) {
                return Err(invalid(format!("block {} listed twice", r.index)));
            }
            if r.new.replicas.is_empty() && r.new.inline.is_none() {
                return Err(invalid(format!("chunk {} has no replicas", r.new.id)));
            }
            if r.new.epoch != newest {
                return Err(DirError::StaleEpoch { current: newest }.into());
            }
            self.check_new_entry(r.index, &r.new, block_size, newest)?;
        }
        let mut stored = rec.stored_bytes;
        let mut applied = Vec::with_capacity(reseals.len());
        let visible = blocks_for(rec.size, block_size);
        let mut groups: BTreeMap<u64, LayoutGroupRecord> = BTreeMap::new();
        for r in reseals {
            let (g, offset) = split(r.index);
            let group = match groups.entry(g) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(group_of(self, ino, g)?),
            };
            let old = group.get(offset).cloned();
            let Some(o) = old.filter(|o| o.chunk == r.old.0 && o.chunk != r.new.id.0 && r.index < visible)
            else {
                applied.push(false);
                continue;
            };
            group.set(layout_entry(offset, &r.new));
            self.entry_ref(&r.new, true)?;
            self.entry_unref(&o)?;
            stored = stored.saturating_sub(u64::from(o.len)).saturating_add(u64::from(r.new.len));
            applied.push(true);
        }
        for (g, group) in &groups {
            self.put_group(ino, *g, group)?;
        }
        if stored != rec.stored_bytes {
            rec.stored_bytes = stored;
            self.put_inode(ino, &rec)?;
        }
        Ok(applied)
    }
}
