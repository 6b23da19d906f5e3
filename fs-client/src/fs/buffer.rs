//! The per-file write buffer as a pure state machine: which blocks hold
//! local data, which are being uploaded, which are stored and wait for a
//! commit, and the file's size. No I/O, no async, no clock: every
//! operation returns what the caller must do (fetch a block, upload a
//! block, commit a batch), and the caller does it outside the file's lock
//! and reports back.
//!
//! Block `i` covers bytes `[i·B, (i+1)·B)`. Its content is, in this order
//! of precedence: local bytes (written here, not stored yet), a stored
//! chunk (`L`, the caller's location type: committed, or uploaded and not
//! committed yet), or a hole (zeros). Bytes past a block's content, up to
//! the file's size, read as zeros.
//!
//! Invariant kept by every operation: a block's content is never longer
//! than the size allows (`size - i·B`), locally and in every commit this
//! buffer plans, so bytes past the end of a file that later grows read as
//! zeros. A shrink that cuts into a block whose committed content is longer
//! is committed by a commit of its own (the *shrink commit*: the lowest
//! size reached, the cut block trimmed) before any other commit, so no
//! commit ever lets dirsvc show bytes a truncate removed.
//!
//! Versions: every change of a block's content gets a new generation (one
//! counter per buffer). An upload carries the generation of the data it
//! stores; its result is applied only if that version is still wanted, so
//! an upload overtaken by a newer write never overwrites newer data.
//!
//! Operations that need the content of a stored block they do not have
//! (a partial write, a truncate or punch that cuts a block) return
//! [`Blocked::Fetch`] and change nothing; the caller fetches those blocks
//! without the lock, hands them to [`BlockBuffer::fill`] and runs the
//! operation again. A fill is checked against the block's version, so a
//! block that changed meanwhile is asked for again, never merged stale.
//!
//! Commits ([`BlockBuffer::commit`]): one at a time; a batch of entries in
//! block order with the current size, or the pending shrink commit first.
//! The caller reports the outcome with [`BlockBuffer::committed`] or
//! [`BlockBuffer::commit_failed`].
//!
//! How the file system drives it (`FileState::buf`, under the file's
//! lock): an operation that returns [`Blocked::Fetch`] is retried by
//! `Fs::with_fetches`, which lets go of the lock for the fetches; each
//! [`Upload`] becomes a task that waits for an upload slot, skips data
//! that [`BlockBuffer::upload_started`] says is no longer wanted, and
//! sends its result to the file's channel, applied with
//! [`BlockBuffer::upload_finished`] by whoever holds the lock next
//! (`Fs::reap`, `Fs::wait_uploads`); flush hands out
//! [`BlockBuffer::flush`]'s uploads, waits for them and commits every
//! batch; the periodic commit starts the shrink's cut block
//! ([`BlockBuffer::upload_cut`]) and commits what is ready.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A block's plaintext, shared with the upload that stores it.
pub type Block = Arc<Vec<u8>>;

/// Largest file size in bytes the buffer accepts (that of Linux, `2^63 - 1`).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// A block to seal and store: the caller uploads `data` and reports with
/// [`BlockBuffer::upload_finished`] (`idx`, `gen`).
#[derive(Clone, Debug)]
pub struct Upload {
    /// Block index.
    pub idx: u64,
    /// Generation of this version of the block's content.
    pub gen: u64,
    /// Plaintext to store (at most one block; never longer than the size
    /// allowed when it was handed out).
    pub data: Block,
}

/// A stored block an operation needs the plaintext of: fetch `loc` and
/// hand the bytes to [`BlockBuffer::fill`].
#[derive(Clone, Debug)]
pub struct Fetch<L> {
    /// Block index.
    pub idx: u64,
    /// Where its content is stored.
    pub loc: L,
    /// The version of the block's entry the bytes must belong to.
    stamp: u64,
}

impl<L> Fetch<L> {
    /// The version to pass to [`BlockBuffer::fill`] with the bytes.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }
}

/// Why an operation did not apply (it changed nothing).
#[derive(Clone, Debug)]
pub enum Blocked<L> {
    /// These stored blocks must be fetched and [`BlockBuffer::fill`]ed
    /// first; then run the operation again.
    Fetch(Vec<Fetch<L>>),
    /// The operation would reach past [`MAX_FILE_SIZE`] (`end`, in bytes;
    /// `EFBIG`).
    TooLarge {
        /// The end offset asked for, saturated at `u64::MAX`.
        end: u64,
    },
}

/// What became of a finished upload ([`BlockBuffer::upload_finished`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// The version was still wanted: the chunk is now its content, to be
    /// committed.
    Stored,
    /// The upload failed; its data stays dirty and is uploaded again by
    /// the next flush.
    Failed,
    /// A newer version (or a truncate, punch or share) replaced the data:
    /// the result is dropped (a stored chunk is an orphan for garbage
    /// collection).
    Superseded,
}

/// A batch for dirsvc's `commit_layout`: the size and the entries
/// (`None` makes a block a hole). Report the outcome with
/// [`BlockBuffer::committed`] or [`BlockBuffer::commit_failed`].
#[derive(Clone, Debug)]
pub struct Commit<L> {
    /// The file's size in bytes after this commit.
    pub size: u64,
    /// `(block index, new content)` in block order, each index once.
    pub blocks: Vec<(u64, Option<L>)>,
    /// The generation of each entry of `blocks`.
    gens: Vec<u64>,
    /// The buffer's change counter when the batch was made.
    version: u64,
    /// The shrink this batch commits, if it is a shrink commit.
    shrink: Option<u64>,
    /// The shrink's cut block, if the batch carries it (its last entry).
    cut: Option<u64>,
    /// Which commit this is (one is in flight at a time).
    id: u64,
}

impl<L> Commit<L> {
    /// Whether this is a shrink commit (the lowest size since the last
    /// commit, before any other batch).
    pub fn is_shrink(&self) -> bool {
        self.shrink.is_some()
    }
}

/// What a block is to be set to by [`BlockBuffer::set_block`].
#[derive(Clone, Debug)]
pub enum Content<L> {
    /// A hole (zeros).
    Hole,
    /// Local bytes, to be uploaded.
    Data(Block),
    /// A stored chunk, to be committed as it is.
    Stored(L),
}

/// A block that is not committed, as [`BlockBuffer::pending`] lists it.
#[derive(Clone, Debug)]
pub enum Pending<'a, L> {
    /// Local bytes (dirty or being uploaded).
    Local(&'a Block),
    /// A stored chunk that waits for a commit.
    Stored(&'a L),
    /// A hole that waits for a commit.
    Hole,
}

/// The bytes of a read: what the buffer had locally, and the stored
/// blocks the caller must fetch and [`ReadPlan::fill`] in.
#[derive(Clone, Debug)]
pub struct ReadPlan<L> {
    offset: u64,
    block_size: u64,
    /// The result, allocated (zeros) at the first fill: a read served
    /// whole by one fetched block may take its bytes from that block
    /// instead ([`ReadPlan::shared`]).
    out: Vec<u8>,
    /// Bytes in the result.
    len: usize,
    fetch: Vec<(u64, L)>,
}

impl<L> ReadPlan<L> {
    /// The stored blocks to fetch: `(block index, location)`.
    pub fn fetches(&self) -> &[(u64, L)] {
        &self.fetch
    }

    /// The whole read as `range` of `data`, the plaintext of block `idx`
    /// from byte `at` of the block on, when nothing local is part of the
    /// read and `data` covers all of it: the caller then needs no copy.
    /// `None` otherwise ([`ReadPlan::fill_at`] then).
    pub fn shared(&self, idx: u64, at: u64, data: &[u8]) -> Option<std::ops::Range<usize>> {
        let start = idx.checked_mul(self.block_size)?.checked_add(at)?;
        let from = usize::try_from(self.offset.checked_sub(start)?).ok()?;
        let to = from.checked_add(self.len)?;
        (self.out.is_empty() && self.fetch.len() == 1 && self.fetch[0].0 == idx && to <= data.len())
            .then_some(from..to)
    }

    /// Copies the plaintext `data` of block `idx` into the result (the part
    /// inside the read; bytes past `data` stay zeros). Blocks not asked for
    /// are ignored.
    pub fn fill(&mut self, idx: u64, data: &[u8]) {
        self.fill_at(idx, 0, data);
    }

    /// Copies `data`, the plaintext of block `idx` from byte `at` of the
    /// block on (a verified segment range), into the result, as
    /// [`ReadPlan::fill`] does for a whole block.
    pub fn fill_at(&mut self, idx: u64, at: u64, data: &[u8]) {
        let Some(start) = idx.checked_mul(self.block_size).and_then(|s| s.checked_add(at)) else { return };
        let end = start.saturating_add(data.len() as u64);
        let (lo, hi) = (self.offset, self.offset + self.len as u64);
        let (from, to) = (start.max(lo), end.min(hi));
        if from < to {
            if self.out.is_empty() {
                self.out = vec![0u8; self.len];
            }
            self.out[(from - lo) as usize..(to - lo) as usize]
                .copy_from_slice(&data[(from - start) as usize..(to - start) as usize]);
        }
    }

    /// The bytes read (short at the end of the file, empty past it).
    pub fn into_bytes(mut self) -> Vec<u8> {
        if self.out.len() < self.len {
            self.out = vec![0u8; self.len];
        }
        self.out
    }
}

/// Local bytes of a block.
#[derive(Clone, Debug)]
struct Local {
    data: Block,
    gen: u64,
    /// Handed to an upload whose result is not in yet.
    queued: bool,
}

/// An entry of the stored view (`layout`) or of what awaits a commit
/// (`uncommitted`), with the generation of the content it holds.
#[derive(Clone, Debug)]
struct Versioned<T> {
    value: T,
    gen: u64,
}

/// The cut block's content for a shrink commit.
#[derive(Clone, Debug)]
enum Cut<L> {
    /// Nothing to commit for it (a hole at dirsvc, or stored content that
    /// already fits).
    Nothing,
    /// This entry, stored.
    Ready { idx: u64, gen: u64, entry: Option<L> },
    /// This version, to be stored first.
    Local { idx: u64, gen: u64, data: Block, queued: bool },
}

/// A shrink below the size dirsvc may have, not committed yet.
#[derive(Clone, Debug)]
struct Shrink<L> {
    id: u64,
    size: u64,
    cut: Cut<L>,
}

/// The write buffer of one file; `L` is where a stored block lives (the
/// caller's layout entry; opaque here).
#[derive(Clone, Debug)]
pub struct BlockBuffer<L> {
    block_size: u64,
    max_dirty: usize,
    size: u64,
    /// The size dirsvc has, as last committed or loaded.
    committed_size: u64,
    /// Stored content: committed, or uploaded and not committed yet.
    layout: BTreeMap<u64, Versioned<L>>,
    /// Local content (takes precedence over `layout`).
    local: BTreeMap<u64, Local>,
    /// Local blocks not handed to an upload.
    dirty: usize,
    /// Entries to commit (`None`: a hole).
    uncommitted: BTreeMap<u64, Versioned<Option<L>>>,
    shrink: Option<Shrink<L>>,
    /// Plaintext of stored blocks handed in by `fill` for the next
    /// operation: (version of the layout entry, clipped bytes).
    fetched: BTreeMap<u64, (u64, Block)>,
    meta_dirty: bool,
    /// Counts changes (size, content), for `meta_dirty`.
    version: u64,
    /// Source of generations and ids.
    next: u64,
    /// The commit in flight: id and size.
    in_flight: Option<(u64, u64)>,
}

impl<L: Clone> BlockBuffer<L> {
    /// The buffer of a file of `size` bytes whose committed blocks are
    /// `layout` (entries at or past the end are dropped), with blocks of
    /// `block_size` bytes (at least 1), uploading the oldest dirty blocks
    /// once more than `max_dirty` are dirty.
    pub fn new(
        block_size: u64,
        max_dirty: usize,
        size: u64,
        layout: impl IntoIterator<Item = (u64, L)>,
    ) -> Self {
        let mut b = BlockBuffer {
            block_size: block_size.clamp(1, u64::from(u32::MAX)),
            max_dirty,
            size: 0,
            committed_size: 0,
            layout: BTreeMap::new(),
            local: BTreeMap::new(),
            dirty: 0,
            uncommitted: BTreeMap::new(),
            shrink: None,
            fetched: BTreeMap::new(),
            meta_dirty: false,
            version: 0,
            next: 1,
            in_flight: None,
        };
        b.load(size, layout);
        b
    }

    /// Replaces size and stored blocks by what dirsvc has now (close-to-open
    /// reload), if there are no local changes and no commit in flight.
    /// Returns whether it did.
    pub fn reset(&mut self, size: u64, layout: impl IntoIterator<Item = (u64, L)>) -> bool {
        if self.has_local_changes() || self.in_flight.is_some() {
            return false;
        }
        self.load(size, layout);
        true
    }

    fn load(&mut self, size: u64, layout: impl IntoIterator<Item = (u64, L)>) {
        let size = size.min(MAX_FILE_SIZE);
        let n = self.blocks_for(size);
        self.size = size;
        self.committed_size = size;
        self.fetched.clear();
        self.layout.clear();
        for (idx, value) in layout {
            if idx < n {
                let gen = self.bump();
                self.layout.insert(idx, Versioned { value, gen });
            }
        }
    }

    fn bump(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn blocks_for(&self, size: u64) -> u64 {
        size.div_ceil(self.block_size)
    }

    /// Bytes of block `idx` the size allows (`0..=B`).
    fn valid(&self, idx: u64) -> usize {
        match idx.checked_mul(self.block_size) {
            Some(start) => self.size.saturating_sub(start).min(self.block_size) as usize,
            None => 0,
        }
    }

    fn changed(&mut self) {
        self.version += 1;
        self.meta_dirty = true;
    }

    // ----- queries -----------------------------------------------------------

    /// A value that changes with every change of the buffer's size or
    /// content (a write, a truncate, a reload), for callers that must know
    /// nothing changed between two moments.
    pub fn content_stamp(&self) -> (u64, u64, u64) {
        (self.version, self.next, self.size)
    }

    /// The file's size in bytes as this client sees it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether anything (data, holes, size, a shrink) is not committed yet.
    pub fn has_local_changes(&self) -> bool {
        self.meta_dirty || !self.local.is_empty() || !self.uncommitted.is_empty() || self.shrink.is_some()
    }

    /// Whether some upload handed out is still to report back.
    pub fn uploads_pending(&self) -> bool {
        self.local.values().any(|l| l.queued)
            || matches!(self.shrink, Some(Shrink { cut: Cut::Local { queued: true, .. }, .. }))
    }

    /// Whether something waits for a commit: entries, or a shrink.
    pub fn has_pending_commit(&self) -> bool {
        !self.uncommitted.is_empty() || self.shrink.is_some()
    }

    /// Entries waiting for a commit.
    pub fn uncommitted_len(&self) -> usize {
        self.uncommitted.len()
    }

    /// Bytes of local blocks: (dirty, being uploaded).
    pub fn local_bytes(&self) -> (u64, u64) {
        let mut r = (0, 0);
        for l in self.local.values() {
            if l.queued {
                r.1 += l.data.len() as u64;
            } else {
                r.0 += l.data.len() as u64;
            }
        }
        r
    }

    /// Whether block `idx` holds local bytes.
    pub fn is_local(&self, idx: u64) -> bool {
        self.local.contains_key(&idx)
    }

    /// Local blocks: (index, bytes).
    pub fn local_blocks(&self) -> impl Iterator<Item = (u64, &Block)> {
        self.local.iter().map(|(i, l)| (*i, &l.data))
    }

    /// Stored blocks (committed, or uploaded and not committed yet); a
    /// block with local bytes may still list its older stored content.
    pub fn layout(&self) -> impl Iterator<Item = (u64, &L)> {
        self.layout.iter().map(|(i, v)| (*i, &v.value))
    }

    /// Stored blocks with index in `range`.
    pub fn layout_range(&self, range: std::ops::Range<u64>) -> impl Iterator<Item = (u64, &L)> {
        self.layout.range(range).map(|(i, v)| (*i, &v.value))
    }

    /// Whether block `idx` has content (local bytes or a chunk), as
    /// `SEEK_DATA` sees it.
    pub fn has_data(&self, idx: u64) -> bool {
        self.local.contains_key(&idx)
            || match self.uncommitted.get(&idx) {
                Some(v) => v.value.is_some(),
                None => self.layout.contains_key(&idx),
            }
    }

    /// Block `idx` as dirsvc has it, if nothing about it is pending here:
    /// `Some(Some(loc))` a committed chunk, `Some(None)` a hole, `None` if
    /// the block has local bytes or an entry waiting for a commit.
    pub fn clean(&self, idx: u64) -> Option<Option<&L>> {
        if self.local.contains_key(&idx) || self.uncommitted.contains_key(&idx) {
            return None;
        }
        Some(self.layout.get(&idx).map(|v| &v.value))
    }

    /// Every block not committed yet: local bytes first, else the entry
    /// waiting for a commit.
    pub fn pending(&self) -> impl Iterator<Item = (u64, Pending<'_, L>)> {
        let mut all: BTreeMap<u64, Pending<'_, L>> = BTreeMap::new();
        for (i, v) in &self.uncommitted {
            all.insert(
                *i,
                match &v.value {
                    Some(l) => Pending::Stored(l),
                    None => Pending::Hole,
                },
            );
        }
        for (i, l) in &self.local {
            all.insert(*i, Pending::Local(&l.data));
        }
        all.into_iter()
    }

    /// Stored chunks waiting for a commit, with their generation (for
    /// [`BlockBuffer::again`]); the shrink commit's cut block included.
    pub fn stored_pending(&self) -> Vec<(u64, u64, &L)> {
        let mut out: Vec<(u64, u64, &L)> =
            self.uncommitted.iter().filter_map(|(i, v)| v.value.as_ref().map(|l| (*i, v.gen, l))).collect();
        if let Some(Shrink { cut: Cut::Ready { idx, gen, entry: Some(l) }, .. }) = &self.shrink {
            if !out.iter().any(|(i, g, _)| i == idx && g == gen) {
                out.push((*idx, *gen, l));
            }
        }
        out
    }

    // ----- reads -------------------------------------------------------------

    /// Plans a read of up to `len` bytes at `offset`: the bytes past the
    /// size are not returned, holes read as zeros, local bytes are copied
    /// now, stored blocks are listed for the caller to fetch.
    pub fn read(&self, offset: u64, len: u64) -> ReadPlan<L> {
        let end = offset.saturating_add(len).min(self.size);
        let b = self.block_size;
        let mut plan = ReadPlan { offset, block_size: b, out: Vec::new(), len: 0, fetch: Vec::new() };
        if offset >= end {
            return plan;
        }
        plan.len = (end - offset) as usize;
        for idx in offset / b..end.div_ceil(b) {
            if let Some(l) = self.local.get(&idx) {
                let data = l.data.clone();
                plan.fill(idx, &data);
            } else if let Some(v) = self.layout.get(&idx) {
                plan.fetch.push((idx, v.value.clone()));
            }
        }
        plan
    }

    /// Hands in the plaintext of stored block `idx` asked for by
    /// [`Blocked::Fetch`] (`stamp` from [`Fetch::stamp`]), for the next
    /// operation. Ignored if the block changed since (that operation asks
    /// again). Bytes past the size are dropped.
    pub fn fill(&mut self, idx: u64, stamp: u64, data: Block) {
        if self.local.contains_key(&idx) || self.layout.get(&idx).is_none_or(|v| v.gen != stamp) {
            return;
        }
        let valid = self.valid(idx);
        let data = if data.len() > valid { Arc::new(data[..valid].to_vec()) } else { data };
        self.fetched.insert(idx, (stamp, data));
    }

    /// What an operation that must merge into block `idx` starts from:
    /// `Ok(Some)` bytes, `Ok(None)` a hole, `Err` a fetch to ask for.
    fn base(&self, idx: u64) -> Result<Option<Block>, Fetch<L>> {
        if let Some(l) = self.local.get(&idx) {
            return Ok(Some(l.data.clone()));
        }
        match self.layout.get(&idx) {
            None => Ok(None),
            Some(v) => match self.fetched.get(&idx) {
                Some((stamp, data)) if *stamp == v.gen => Ok(Some(data.clone())),
                _ => Err(Fetch { idx, loc: v.value.clone(), stamp: v.gen }),
            },
        }
    }

    // ----- changes -------------------------------------------------------------

    /// Sets the local bytes of block `idx` to `data` as a new version.
    fn put_local(&mut self, idx: u64, data: Block) -> u64 {
        let gen = self.bump();
        match self.local.insert(idx, Local { data, gen, queued: false }) {
            Some(old) if !old.queued => {}
            _ => self.dirty += 1,
        }
        gen
    }

    fn drop_local(&mut self, idx: u64) -> Option<Local> {
        let old = self.local.remove(&idx);
        if let Some(l) = &old {
            if !l.queued {
                self.dirty -= 1;
            }
        }
        old
    }

    /// Makes block `idx` a hole (version `gen`): committed as such if dirsvc
    /// may have content there (stored, pending, or the shrink commit's cut
    /// block).
    fn make_hole(&mut self, idx: u64, gen: u64) {
        self.drop_local(idx);
        let cut = match &self.shrink {
            Some(Shrink { cut: Cut::Local { idx: i, .. } | Cut::Ready { idx: i, .. }, .. }) => *i == idx,
            _ => false,
        };
        if self.layout.remove(&idx).is_some() || self.uncommitted.contains_key(&idx) || cut {
            self.uncommitted.insert(idx, Versioned { value: None, gen });
        }
    }

    /// Hands dirty block `idx` to an upload, or makes it a hole if it is
    /// all zeros.
    fn emit(&mut self, idx: u64) -> Option<Upload> {
        let l = self.local.get_mut(&idx)?;
        if l.queued {
            return None;
        }
        let (gen, data) = (l.gen, l.data.clone());
        if super::extents::all_zero(&data) {
            self.settle(idx, gen, None);
            return None;
        }
        l.queued = true;
        self.dirty -= 1;
        if let Some(Shrink { cut: Cut::Local { idx: ci, gen: cg, queued, .. }, .. }) = &mut self.shrink {
            if *ci == idx && *cg == gen {
                *queued = true;
            }
        }
        Some(Upload { idx, gen, data })
    }

    /// Version `gen` of block `idx` is stored as `entry` (`None`: a hole).
    fn settle(&mut self, idx: u64, gen: u64, entry: Option<L>) {
        if self.local.get(&idx).is_some_and(|l| l.gen == gen) {
            match &entry {
                Some(l) => {
                    self.drop_local(idx);
                    self.layout.insert(idx, Versioned { value: l.clone(), gen });
                    self.uncommitted.insert(idx, Versioned { value: Some(l.clone()), gen });
                }
                None => self.make_hole(idx, gen),
            }
        }
        if let Some(s) = &mut self.shrink {
            if matches!(s.cut, Cut::Local { idx: ci, gen: cg, .. } if ci == idx && cg == gen) {
                s.cut = Cut::Ready { idx, gen, entry };
            }
        }
    }

    /// Uploads of the lowest dirty blocks while more than the limit are
    /// dirty.
    fn overflow(&mut self, out: &mut Vec<Upload>) {
        while self.dirty > self.max_dirty {
            let Some(idx) = self.local.iter().find(|(_, l)| !l.queued).map(|(i, _)| *i) else { break };
            out.extend(self.emit(idx));
        }
    }

    /// Writes `data` at `offset`. Returns the uploads to start: blocks the
    /// write filled to their end, and the lowest dirty blocks past the
    /// dirty limit. An empty write changes nothing.
    ///
    /// Errors (nothing changed): [`Blocked::Fetch`] when a partial write
    /// must merge with a stored block not at hand; [`Blocked::TooLarge`]
    /// past [`MAX_FILE_SIZE`].
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<Vec<Upload>, Blocked<L>> {
        let end = offset.saturating_add(data.len() as u64);
        if end > MAX_FILE_SIZE {
            return Err(Blocked::TooLarge { end });
        }
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let b = self.block_size;
        let mut need = Vec::new();
        let mut pos = offset;
        while pos < end {
            let idx = pos / b;
            let in_block = (pos % b) as usize;
            let take = (b - pos % b).min(end - pos) as usize;
            if !(in_block == 0 && take >= self.valid(idx)) {
                if let Err(f) = self.base(idx) {
                    need.push(f);
                }
            }
            pos += take as u64;
        }
        if !need.is_empty() {
            return Err(Blocked::Fetch(need));
        }
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let idx = pos / b;
            let in_block = (pos % b) as usize;
            let take = (b - pos % b).min(end - pos) as usize;
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + take];
            let block = if in_block == 0 && take >= self.valid(idx) {
                Arc::new(src.to_vec())
            } else {
                let mut block = match self.base(idx) {
                    Ok(Some(d)) => d,
                    _ => Arc::new(Vec::new()),
                };
                let buf = Arc::make_mut(&mut block);
                if buf.len() < in_block + take {
                    buf.resize(in_block + take, 0);
                }
                buf[in_block..in_block + take].copy_from_slice(src);
                block
            };
            let full = block.len() as u64 == b && (in_block + take) as u64 == b;
            self.put_local(idx, block);
            if full {
                out.extend(self.emit(idx));
            }
            pos += take as u64;
        }
        self.size = self.size.max(end);
        self.changed();
        self.fetched.clear();
        self.overflow(&mut out);
        Ok(out)
    }

    /// Sets the size to `new_size` bytes. Growing adds zeros. Shrinking
    /// drops the blocks wholly past the end and trims the block cut in the
    /// middle; below the size dirsvc may have, it also makes the shrink
    /// commit the next commit.
    ///
    /// Errors (nothing changed): [`Blocked::Fetch`] for the cut block when
    /// it is stored and its length matters; [`Blocked::TooLarge`].
    pub fn truncate(&mut self, new_size: u64) -> Result<Vec<Upload>, Blocked<L>> {
        if new_size > MAX_FILE_SIZE {
            return Err(Blocked::TooLarge { end: new_size });
        }
        if new_size >= self.size {
            self.size = new_size;
            self.changed();
            self.fetched.clear();
            return Ok(Vec::new());
        }
        let b = self.block_size;
        let (c, cut) = (new_size / b, (new_size % b) as usize);
        let hi = self.committed_size.max(self.in_flight.map_or(0, |(_, s)| s));
        let below_dirsvc = new_size < hi;
        // The cut block's content matters if it may be longer than the
        // cut: local bytes are at hand; a stored block is fetched unless it
        // is committed and the new size stays at or above dirsvc's (its
        // content then fits already).
        let mut fetched = None;
        if cut > 0
            && !self.local.contains_key(&c)
            && self.layout.contains_key(&c)
            && (below_dirsvc || self.uncommitted.contains_key(&c))
        {
            match self.base(c) {
                Ok(d) => fetched = d,
                Err(f) => return Err(Blocked::Fetch(vec![f])),
            }
        }
        let keep = self.blocks_for(new_size);
        let gone: Vec<u64> = self.local.range(keep..).map(|(i, _)| *i).collect();
        for idx in gone {
            self.drop_local(idx);
        }
        self.layout.retain(|i, _| *i < keep);
        self.uncommitted.retain(|i, _| *i < keep);
        let mut out = Vec::new();
        if cut > 0 {
            let current = self.local.get(&c).map(|l| l.data.clone()).or(fetched);
            if let Some(d) = current {
                if d.len() > cut {
                    self.put_local(c, Arc::new(d[..cut].to_vec()));
                }
            }
            // An older version waiting for a commit may be longer than the
            // cut (local bytes may be shorter than it: set whole by
            // `set_block`); the local bytes replace it anyway.
            if self.local.contains_key(&c) && self.uncommitted.get(&c).is_some_and(|v| v.value.is_some()) {
                self.uncommitted.remove(&c);
            }
        }
        if below_dirsvc && self.shrink.as_ref().is_none_or(|s| s.size > new_size) {
            let cut_entry = if cut == 0 {
                Cut::Nothing
            } else if let Some(l) = self.local.get(&c) {
                Cut::Local { idx: c, gen: l.gen, data: l.data.clone(), queued: l.queued }
            } else if let Some(v) = self.uncommitted.get(&c) {
                Cut::Ready { idx: c, gen: v.gen, entry: v.value.clone() }
            } else {
                Cut::Nothing
            };
            let id = self.bump();
            self.shrink = Some(Shrink { id, size: new_size, cut: cut_entry });
        }
        self.size = new_size;
        self.changed();
        self.fetched.clear();
        self.overflow(&mut out);
        Ok(out)
    }

    /// Makes bytes `[offset, offset + len)` inside the size read as zeros
    /// (`fallocate` `PUNCH_HOLE` / `ZERO_RANGE`): blocks wholly inside
    /// become holes, the edges are rewritten with zeros. The size does not
    /// change. Returns uploads past the dirty limit.
    ///
    /// Errors (nothing changed): [`Blocked::Fetch`] for stored edge blocks
    /// not at hand.
    pub fn punch(&mut self, offset: u64, len: u64) -> Result<Vec<Upload>, Blocked<L>> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let b = self.block_size;
        let range = |idx: u64, valid: usize| {
            let bs = idx * b;
            let (zs, ze) = ((offset.max(bs) - bs) as usize, (end.min(bs + b) - bs) as usize);
            (zs, ze, zs == 0 && ze >= valid)
        };
        let mut need = Vec::new();
        for idx in offset / b..end.div_ceil(b) {
            if !range(idx, self.valid(idx)).2 {
                if let Err(f) = self.base(idx) {
                    need.push(f);
                }
            }
        }
        if !need.is_empty() {
            return Err(Blocked::Fetch(need));
        }
        for idx in offset / b..end.div_ceil(b) {
            let (zs, ze, whole) = range(idx, self.valid(idx));
            if whole {
                let gen = self.bump();
                self.make_hole(idx, gen);
                continue;
            }
            let Ok(Some(mut block)) = self.base(idx) else { continue };
            let to = ze.min(block.len());
            if zs < to {
                Arc::make_mut(&mut block)[zs..to].fill(0);
                self.put_local(idx, block);
            }
        }
        self.changed();
        self.fetched.clear();
        let mut out = Vec::new();
        self.overflow(&mut out);
        Ok(out)
    }

    /// Points block `idx` at a stored chunk `loc` (or a hole) holding its
    /// first `len` bytes (`copy_file_range` sharing a block), if that is
    /// exact: a whole block (`len` = B), or a shorter last piece with
    /// nothing of the file after it. The size grows to cover it. The
    /// chunk's plaintext must be at most `len` bytes. Returns whether it
    /// did.
    pub fn share(&mut self, idx: u64, loc: Option<L>, len: u64) -> bool {
        let b = self.block_size;
        let Some(end) = idx.checked_mul(b).and_then(|s| s.checked_add(len)) else { return false };
        if len == 0 || len > b || end > MAX_FILE_SIZE || (len < b && self.size > end) {
            return false;
        }
        self.size = self.size.max(end);
        let gen = self.bump();
        self.set_stored(idx, gen, loc);
        self.changed();
        self.fetched.clear();
        true
    }

    fn set_stored(&mut self, idx: u64, gen: u64, loc: Option<L>) {
        match loc {
            Some(l) => {
                self.drop_local(idx);
                self.layout.insert(idx, Versioned { value: l.clone(), gen });
                self.uncommitted.insert(idx, Versioned { value: Some(l), gen });
            }
            None => self.make_hole(idx, gen),
        }
    }

    /// Sets the whole content of block `idx` (data kept by an earlier mount;
    /// set the size first): local bytes are cut to the size and returned as
    /// an upload if past the dirty limit; a stored chunk must fit the size.
    /// Blocks wholly past the size are ignored.
    pub fn set_block(&mut self, idx: u64, content: Content<L>) -> Vec<Upload> {
        let valid = self.valid(idx);
        let mut out = Vec::new();
        if valid == 0 {
            return out;
        }
        let gen = self.bump();
        match content {
            Content::Hole => self.make_hole(idx, gen),
            Content::Stored(l) => self.set_stored(idx, gen, Some(l)),
            Content::Data(d) => {
                let d = if d.len() > valid { Arc::new(d[..valid].to_vec()) } else { d };
                self.put_local(idx, d);
            }
        }
        self.changed();
        self.fetched.clear();
        self.overflow(&mut out);
        out
    }

    // ----- uploads -----------------------------------------------------------

    /// Hands every dirty block (and the shrink commit's cut block, if it
    /// must be stored) to an upload. Once no upload is pending
    /// ([`BlockBuffer::uploads_pending`]), [`BlockBuffer::commit`] gives
    /// the batches.
    pub fn flush(&mut self) -> Vec<Upload> {
        let dirty: Vec<u64> = self.local.iter().filter(|(_, l)| !l.queued).map(|(i, _)| *i).collect();
        let mut out: Vec<Upload> = dirty.into_iter().filter_map(|i| self.emit(i)).collect();
        out.extend(self.upload_cut());
        out
    }

    /// Hands the shrink commit's cut block to an upload if it waits for
    /// one (so a periodic commit need not wait for a flush).
    pub fn upload_cut(&mut self) -> Vec<Upload> {
        let Some(Shrink { cut: Cut::Local { idx, gen, queued: false, .. }, .. }) = &self.shrink else {
            return Vec::new();
        };
        let (idx, gen) = (*idx, *gen);
        if self.local.get(&idx).is_some_and(|l| l.gen == gen) {
            return self.emit(idx).into_iter().collect();
        }
        let mut out = Vec::new();
        if let Some(s) = &mut self.shrink {
            if let Cut::Local { data, queued, .. } = &mut s.cut {
                if super::extents::all_zero(data) {
                    s.cut = Cut::Ready { idx, gen, entry: None };
                } else {
                    *queued = true;
                    out.push(Upload { idx, gen, data: data.clone() });
                }
            }
        }
        out
    }

    /// Whether the upload of version `gen` of block `idx` is still wanted
    /// (call when it is about to start; if not, skip it and report
    /// nothing).
    pub fn upload_started(&self, idx: u64, gen: u64) -> bool {
        self.local.get(&idx).is_some_and(|l| l.gen == gen && l.queued)
            || matches!(&self.shrink, Some(Shrink { cut: Cut::Local { idx: i, gen: g, .. }, .. }) if *i == idx && *g == gen)
    }

    /// Reports the upload of version `gen` of block `idx`: `Ok(loc)` where
    /// it is stored, `Err(())` if it failed (the data stays dirty).
    pub fn upload_finished(&mut self, idx: u64, gen: u64, result: Result<L, ()>) -> Finished {
        let mine = self.local.get(&idx).is_some_and(|l| l.gen == gen);
        let cut = matches!(&self.shrink, Some(Shrink { cut: Cut::Local { idx: i, gen: g, .. }, .. }) if *i == idx && *g == gen);
        if !mine && !cut {
            return Finished::Superseded;
        }
        match result {
            Ok(loc) => {
                self.settle(idx, gen, Some(loc));
                Finished::Stored
            }
            Err(()) => {
                if let Some(l) = self.local.get_mut(&idx) {
                    if l.gen == gen && l.queued {
                        l.queued = false;
                        self.dirty += 1;
                    }
                }
                if let Some(Shrink { cut: Cut::Local { idx: i, gen: g, queued, .. }, .. }) = &mut self.shrink
                {
                    if *i == idx && *g == gen {
                        *queued = false;
                    }
                }
                Finished::Failed
            }
        }
    }

    /// Stores version `gen` of block `idx` again from its plaintext `data`
    /// (dirsvc lost the chunk, or it must be sealed under a newer key):
    /// its entry waiting for a commit is dropped; the data is uploaded
    /// again unless newer local bytes of the block replace it anyway.
    /// Returns the uploads to start.
    pub fn again(&mut self, idx: u64, gen: u64, data: Block) -> Vec<Upload> {
        let valid = self.valid(idx);
        let data = if data.len() > valid { Arc::new(data[..valid].to_vec()) } else { data };
        let mut out = Vec::new();
        if self.uncommitted.get(&idx).is_some_and(|v| v.gen == gen) {
            self.uncommitted.remove(&idx);
            if let std::collections::btree_map::Entry::Vacant(e) = self.local.entry(idx) {
                e.insert(Local { data: data.clone(), gen, queued: false });
                self.dirty += 1;
                out.extend(self.emit(idx));
            }
        }
        if let Some(s) = &mut self.shrink {
            if matches!(s.cut, Cut::Ready { idx: i, gen: g, .. } if i == idx && g == gen) {
                let queued = out.iter().any(|u| u.idx == idx && u.gen == gen);
                s.cut = Cut::Local { idx, gen, data: data.clone(), queued };
                if !queued {
                    if let Cut::Local { queued, .. } = &mut s.cut {
                        *queued = true;
                    }
                    out.push(Upload { idx, gen, data });
                }
            }
        }
        out
    }

    // ----- commits -----------------------------------------------------------

    /// The next batch to commit (at most `max` entries), or `None`: nothing
    /// to commit, a commit in flight, or the shrink commit still waits for
    /// its cut block's upload. The shrink commit comes before any other.
    pub fn commit(&mut self, max: usize) -> Option<Commit<L>> {
        if self.in_flight.is_some() {
            return None;
        }
        let max = max.max(1);
        let id = self.bump();
        let commit = match &self.shrink {
            Some(s) => {
                let snapshot = match &s.cut {
                    Cut::Local { .. } => return None,
                    Cut::Nothing => None,
                    Cut::Ready { idx, gen, entry } => Some((*idx, *gen, entry.clone())),
                };
                // One commit for the shrink and everything after it when
                // every block from the shrink's end to the current end has
                // an entry (nothing of dirsvc's old content there can
                // show) and all fits (a file truncated and written again).
                // The cut block then goes as the truncate left it unless a
                // newer stored version waits anyway.
                let (keep, n) = (self.blocks_for(s.size), self.blocks_for(self.size));
                let newer = snapshot.as_ref().is_some_and(|(idx, _, _)| self.uncommitted.contains_key(idx));
                let all = self.uncommitted.len() + usize::from(snapshot.is_some() && !newer);
                let covered = n <= keep
                    || (n - keep <= max as u64 && self.uncommitted.range(keep..n).count() as u64 == n - keep);
                let (mut blocks, mut gens) = (Vec::new(), Vec::new());
                let (size, cut) = if covered && all <= max {
                    for (i, v) in &self.uncommitted {
                        blocks.push((*i, v.value.clone()));
                        gens.push(v.gen);
                    }
                    (self.size, snapshot.filter(|_| !newer))
                } else {
                    // The shrink alone: entries below the cut block fit
                    // any size past them; the cut block as the truncate
                    // left it.
                    let below = s.size / self.block_size;
                    let room = max - usize::from(snapshot.is_some());
                    for (i, v) in self.uncommitted.range(..below).take(room) {
                        blocks.push((*i, v.value.clone()));
                        gens.push(v.gen);
                    }
                    (s.size, snapshot)
                };
                let cut_idx = cut.as_ref().map(|(idx, _, _)| *idx);
                if let Some((idx, gen, entry)) = cut {
                    let at = blocks.partition_point(|(i, _)| *i < idx);
                    blocks.insert(at, (idx, entry));
                    gens.insert(at, gen);
                }
                Commit { size, blocks, gens, version: self.version, shrink: Some(s.id), cut: cut_idx, id }
            }
            None => {
                if self.uncommitted.is_empty() && !self.meta_dirty {
                    return None;
                }
                let (blocks, gens) =
                    self.uncommitted.iter().take(max).map(|(i, v)| ((*i, v.value.clone()), v.gen)).unzip();
                Commit { size: self.size, blocks, gens, version: self.version, shrink: None, cut: None, id }
            }
        };
        self.in_flight = Some((id, commit.size));
        Some(commit)
    }

    /// Reports that dirsvc applied `commit`. Returns false (and changes
    /// nothing) if it is not the commit in flight.
    pub fn committed(&mut self, commit: &Commit<L>) -> bool {
        if self.in_flight.map(|(id, _)| id) != Some(commit.id) {
            return false;
        }
        self.in_flight = None;
        self.committed_size = commit.size;
        for ((idx, _), gen) in commit.blocks.iter().zip(&commit.gens) {
            if self.uncommitted.get(idx).is_some_and(|v| v.gen == *gen) {
                self.uncommitted.remove(idx);
            }
        }
        // The cut block's entry is what dirsvc has now. Unless a newer one
        // waits for a commit, the stored view says so too, so that a later
        // hole there is committed (local bytes still take precedence).
        let cut = commit.cut.and_then(|c| commit.blocks.iter().zip(&commit.gens).find(|((i, _), _)| *i == c));
        if let (Some(c), Some(((_, entry), gen))) = (commit.cut, cut) {
            if !self.uncommitted.contains_key(&c) && c < self.blocks_for(self.size) {
                match entry {
                    Some(l) => {
                        self.layout.insert(c, Versioned { value: l.clone(), gen: *gen });
                    }
                    None => {
                        self.layout.remove(&c);
                    }
                }
            }
        }
        if commit.shrink.is_some() && self.shrink.as_ref().map(|s| s.id) == commit.shrink {
            self.shrink = None;
        }
        if commit.version == self.version && commit.size == self.size && self.shrink.is_none() {
            self.meta_dirty = false;
        }
        true
    }

    /// Reports that `commit` failed (nothing of it applied); its entries
    /// stay pending.
    pub fn commit_failed(&mut self, commit: &Commit<L>) {
        if self.in_flight.map(|(id, _)| id) == Some(commit.id) {
            self.in_flight = None;
        }
    }

    /// Drops everything waiting for a commit and the size change (the file
    /// was deleted: it has nowhere to go). Local bytes stay.
    pub fn forget_uncommitted(&mut self) {
        self.uncommitted.clear();
        self.shrink = None;
        self.meta_dirty = false;
        self.in_flight = None;
    }
}

#[cfg(test)]
impl<L: Clone> BlockBuffer<L> {
    /// Whether some data is neither stored nor being uploaded (a failed
    /// upload, or a write not handed out yet).
    fn has_dirty(&self) -> bool {
        self.dirty > 0 || matches!(self.shrink, Some(Shrink { cut: Cut::Local { queued: false, .. }, .. }))
    }

    /// Panics if an internal invariant does not hold (tests only).
    fn check_invariants(&self) {
        let n = self.blocks_for(self.size);
        assert_eq!(self.dirty, self.local.values().filter(|l| !l.queued).count(), "dirty count");
        for (idx, l) in &self.local {
            assert!(*idx < n, "local block {idx} past the end");
            assert!(l.data.len() <= self.valid(*idx), "local block {idx} longer than the size allows");
        }
        assert!(self.layout.keys().all(|i| *i < n), "stored block past the end");
        for (idx, v) in &self.uncommitted {
            assert!(*idx < n, "pending entry {idx} past the end");
            if v.value.is_some() {
                assert_eq!(
                    self.layout.get(idx).map(|l| l.gen),
                    Some(v.gen),
                    "pending entry {idx} not stored"
                );
            }
        }
        if let Some(s) = &self.shrink {
            assert!(s.size <= self.size, "shrink above the size");
            if let Cut::Local { idx, data, .. } = &s.cut {
                assert!(
                    *idx * self.block_size + data.len() as u64 <= s.size,
                    "cut block longer than the shrink"
                );
            }
        }
        assert!(self.fetched.is_empty(), "fetched bytes left after an operation");
    }
}

#[cfg(test)]
mod tests;
