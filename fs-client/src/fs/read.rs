//! The read path: each block from the local buffers, the block cache, or
//! the first replica whose bytes verify against the chunk id and open,
//! once its layout entry's MAC verified ([`Fs::verify_entry`]); sequential
//! readers prefetch the next blocks.
//!
//! A read that is not sequential (it does not start where the handle's
//! last read ended) of a block that is not cached fetches only the 64 KiB
//! segments it covers (`PeerService::get_segment`), each verified against
//! the chunk id with its range proof and opened on its own, then kept in
//! the segment cache. A chunk that is not segmented (v1/v2: a peer answers
//! `Invalid`), or whose segments no replica gives verified, is read whole
//! as before. No byte is served before it verified (invariant 3).
//!
//! The kernel asks for the 4 KiB page a random read misses; the segment
//! fetched for it is 64 KiB. When no handle of this mount may write the
//! file, the whole segment is put into the kernel's page cache as well
//! (`FUSE_NOTIFY_STORE`, [`Fs::fill_page_cache`]), so the next reads
//! within it cost no round trip: a random reader of a file that fits in
//! memory soon reads it from memory, as the readers of a local file do.

use super::{FileState, Fs, OpenFile};
use crate::cache::Block;
use crate::error::{Error, Result};
use common::codec::{self, SegmentLayout, SEGMENT_SIZE};
use common::rpc::dir::BlockLoc;
use common::rpc::peer::PeerError;
use common::rpc::PeerLoc;
use common::InodeId;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::warn;

/// The bytes of a read ([`Fs::read_data`]): its own, or a range of a
/// fetched block's plaintext that it shares with the block cache.
pub enum ReadData {
    /// Bytes assembled for this read.
    Owned(Vec<u8>),
    /// `range` of a block's plaintext.
    Shared(Block, std::ops::Range<usize>),
}

impl std::ops::Deref for ReadData {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ReadData::Owned(v) => v,
            ReadData::Shared(b, r) => &b[r.clone()],
        }
    }
}

impl Fs {
    // ----- read path ---------------------------------------------------------------

    /// Reads up to `len` bytes at `offset` through `fh` (short at EOF).
    pub async fn read(self: &Arc<Self>, fh: u64, offset: u64, len: u32) -> Result<Vec<u8>> {
        Ok(self.read_data(fh, offset, len).await?.to_vec())
    }

    /// [`Fs::read`] without a copy when one stored block serves the whole
    /// read (the usual case: the kernel reads up to 1 MiB within a block):
    /// the reply then borrows that block (what `perf` of a cold sequential
    /// read had at 4.8 % of the client's CPU: zeroing the reply and copying
    /// into it).
    ///
    /// Errors: as [`Fs::read`].
    pub async fn read_data(self: &Arc<Self>, fh: u64, offset: u64, len: u32) -> Result<ReadData> {
        let h = self.handle(fh)?;
        let f = self.file(h.ino)?;
        let b = self.block_size;
        let (mut plan, ahead, sequential, end, fill) = {
            let mut st = f.state.lock().await;
            self.reap(&mut st);
            let end = offset.saturating_add(len as u64).min(st.buf.size());
            if offset >= end {
                return Ok(ReadData::Owned(Vec::new()));
            }
            // Segments fetched for this read may fill the kernel's page
            // cache if nothing here may change the file meanwhile.
            let fill = (f.writable_opens.load(Ordering::SeqCst) == 0 && !st.has_local_changes())
                .then(|| st.buf.content_stamp());
            // Local bytes now; stored blocks are fetched below, without the
            // lock.
            let plan = st.buf.read(offset, len as u64);
            let sequential = h.last_read_end.swap(end, Ordering::Relaxed) == offset;
            let ahead: Vec<BlockLoc> = if sequential && self.config.readahead_blocks > 0 {
                let first = end.div_ceil(b);
                st.buf
                    .layout_range(first..first.saturating_add(self.config.readahead_blocks))
                    .map(|(_, s)| s.loc.clone())
                    .collect()
            } else {
                Vec::new()
            };
            (plan, ahead, sequential, end, fill)
        };
        for loc in ahead {
            if self.cache.get(&loc.chunk).is_none() {
                let me = self.clone();
                let ino = h.ino;
                tokio::spawn(async move {
                    let _ = me.fetch_block(ino, &loc).await;
                });
            }
        }
        let ino = h.ino;
        let fetches = plan.fetches().iter().map(|(i, s)| {
            let (i, loc) = (*i, s.loc.clone());
            async move {
                // The part of block i inside the read, as offsets in the block.
                let bstart = i * b;
                let want = offset.max(bstart) - bstart..end.min(bstart + b) - bstart;
                let part = if sequential || self.cache.get(&loc.chunk).is_some() {
                    None
                } else {
                    self.read_segments(ino, &loc, want.clone()).await?
                };
                Ok::<_, Error>(match part {
                    Some((bytes, fresh)) => {
                        let fresh: Vec<_> = fresh.into_iter().map(|(at, p)| (bstart + at, p)).collect();
                        (i, want.start, Arc::new(bytes), fresh)
                    }
                    None => (i, 0, self.fetch_block(ino, &loc).await?, Vec::new()),
                })
            }
        });
        let blocks = futures::future::try_join_all(fetches).await?;
        let mut fresh = Vec::new();
        let mut shared = None;
        for (i, at, block, segments) in blocks {
            match plan.shared(i, at, &block) {
                Some(range) => shared = Some(ReadData::Shared(block, range)),
                None => plan.fill_at(i, at, &block),
            }
            fresh.extend(segments);
        }
        if let (Some(stamp), false) = (fill, fresh.is_empty()) {
            self.fill_page_cache(f, stamp, fresh);
        }
        Ok(shared.unwrap_or_else(|| ReadData::Owned(plan.into_bytes())))
    }

    /// Hands the whole segments a random read fetched (`(file offset,
    /// plaintext)`) to the kernel's page cache, in the background: the
    /// next reads of the same 64 KiB need no round trip at all, where the
    /// kernel alone would keep only the 4 KiB page it asked for. Done only
    /// while no handle here may write the file and its buffer is clean and
    /// unchanged since the read began (`stamp`), clipped to the file's size
    /// (a store past the end would grow the kernel's idea of it). If the
    /// file changed while the pages went in, the kernel's copy is dropped
    /// again. Off the async workers, after this read's reply: a store waits
    /// for pages the kernel is still reading.
    fn fill_page_cache(
        self: &Arc<Self>,
        f: Arc<OpenFile>,
        stamp: (u64, u64, u64),
        segments: Vec<(u64, Block)>,
    ) {
        let Some(store) = self.page_store.get().cloned() else { return };
        let me = self.clone();
        tokio::spawn(async move {
            let unchanged = |st: &FileState| {
                f.writable_opens.load(Ordering::SeqCst) == 0
                    && !st.has_local_changes()
                    && st.buf.content_stamp() == stamp
            };
            let ino = {
                let st = f.state.lock().await;
                if !unchanged(&st) {
                    return;
                }
                st.ino
            };
            let size = stamp.2;
            let stored = tokio::task::spawn_blocking(move || {
                for (at, plain) in segments {
                    let n = size.saturating_sub(at).min(plain.len() as u64) as usize;
                    if n > 0 && !store(ino, at, &plain[..n]) {
                        break;
                    }
                }
            })
            .await;
            let changed = stored.is_err() || !unchanged(&*f.state.lock().await);
            if changed {
                if let Some(inval) = me.invalidator.get().cloned() {
                    let _ = tokio::task::spawn_blocking(move || inval(ino)).await;
                }
            }
        });
    }

    /// The plaintext of block `loc.index` of `ino`: its layout entry is
    /// verified first ([`Fs::verify_entry`]), then the block comes from the
    /// cache or the first replica whose bytes verify and open.
    ///
    /// Errors: [`Error::Integrity`] for an entry that does not verify;
    /// [`Error::ChunkUnavailable`] when no replica gives verified bytes.
    pub(super) async fn fetch_block(self: &Arc<Self>, ino: InodeId, loc: &BlockLoc) -> Result<Block> {
        self.verify_entry(ino, loc).await?;
        let me = self.clone();
        let loc2 = loc.clone();
        self.cache.get_or_fetch(loc.chunk, async move { me.fetch_from_replicas(loc2).await }).await
    }

    /// The replicas of `loc`'s chunk: the layout entry's, or dirsvc's if
    /// the entry names none.
    ///
    /// Errors: dirsvc's.
    async fn replicas_of(&self, loc: &BlockLoc) -> Result<Vec<PeerLoc>> {
        if !loc.replicas.is_empty() {
            return Ok(loc.replicas.clone());
        }
        let chunk = loc.chunk;
        Ok(self
            .dir
            .call(|c, ctx| async move { c.chunk_locations(ctx, vec![chunk]).await })
            .await?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    /// Plaintext bytes `want` (offsets in the block) of block `loc.index`
    /// of `ino`, read by segment: its layout entry verified first
    /// ([`Fs::verify_entry`]), then each segment that `want` covers from
    /// the segment cache or the first replica whose proof verifies against
    /// the chunk id and whose segment opens. Returns fewer bytes than asked
    /// when the block's plaintext ends first (the rest reads as zeros), and
    /// `None` when the block must be read whole: its chunk is not
    /// segmented, or no replica gave a verified segment.
    ///
    /// Errors: [`Error::Integrity`] for an entry that does not verify or
    /// names an epoch this client has no key for.
    pub(super) async fn read_segments(
        self: &Arc<Self>,
        ino: InodeId,
        loc: &BlockLoc,
        want: Range<u64>,
    ) -> Result<Option<(Vec<u8>, Vec<(u64, Block)>)>> {
        self.verify_entry(ino, loc).await?;
        // An inline chunk is read whole from its entry.
        if loc.inline.is_some() {
            return Ok(None);
        }
        // A length no v3 chunk of 64 KiB segments has: v1/v2 for sure.
        let Ok(layout) = SegmentLayout::from_stored_len(u64::from(loc.len), SEGMENT_SIZE) else {
            return Ok(None);
        };
        let want = want.start..want.end.min(u64::from(layout.plaintext_len()));
        if want.start >= want.end {
            return Ok(Some((Vec::new(), Vec::new())));
        }
        let Ok(segments) = layout.segments_for(want.clone()) else { return Ok(None) };
        let fetches = segments.map(|k| async move {
            if let Some(p) = self.segments.get(&loc.chunk, k) {
                metrics::counter!(crate::telemetry::CACHE_HITS).increment(1);
                return Ok::<_, Error>(Some((k, p, false)));
            }
            metrics::counter!(crate::telemetry::CACHE_MISSES).increment(1);
            let p = self.fetch_segment(loc, &layout, k).await?;
            if let Some(p) = &p {
                self.segments.insert(loc.chunk, k, p.clone());
            }
            Ok(p.map(|p| (k, p, true)))
        });
        let mut out = Vec::with_capacity((want.end - want.start) as usize);
        let mut fresh = Vec::new();
        for piece in futures::future::try_join_all(fetches).await? {
            let Some((k, plain, fetched)) = piece else { return Ok(None) };
            // Both ranges are inside the block's plaintext (≤ 4 MiB).
            let seg = layout.plaintext_range(k).map_err(|e| Error::Integrity(e.to_string()))?;
            if fetched {
                fresh.push((seg.start, plain.clone()));
            }
            let from = want.start.max(seg.start);
            let to = want.end.min(seg.end);
            if to > from && (to - seg.start) as usize <= plain.len() {
                out.extend_from_slice(&plain[(from - seg.start) as usize..(to - seg.start) as usize]);
            } else if to > from {
                return Ok(None);
            }
        }
        Ok(Some((out, fresh)))
    }

    /// Segment `k` of `loc`'s segmented chunk from the first replica whose
    /// proof verifies (against the id and `layout`, from the entry's
    /// MAC-covered stored length) and whose segment opens under the key of
    /// the entry's epoch; `None` if the chunk is not segmented or no
    /// replica gave one. Bad replicas are logged and skipped, as whole-chunk
    /// reads do.
    ///
    /// Errors: [`Error::Integrity`] if this client has no key for the
    /// entry's epoch.
    async fn fetch_segment(
        self: &Arc<Self>,
        loc: &BlockLoc,
        layout: &SegmentLayout,
        k: u32,
    ) -> Result<Option<Block>> {
        let replicas = match self.replicas_of(loc).await {
            Ok(r) => r,
            Err(_) => return Ok(None),
        };
        let keys = self.keys_for(loc.epoch).await?;
        let Some(key) = keys.epoch(loc.epoch).map(|k| k.chunk.clone()) else {
            return Err(Error::Integrity(format!("no key epoch {}", loc.epoch)));
        };
        for peer in &replicas {
            let proof = match self.peers.get_segment(peer, loc.chunk, k).await {
                Ok(p) => p,
                // Not segmented (every replica holds the same bytes): the
                // caller reads the chunk whole.
                Err(Error::Peer(PeerError::Invalid(_))) => return Ok(None),
                Err(e) => {
                    warn!(chunk = %loc.chunk, peer = %peer.id, addr = %peer.addr, segment = k, error = %e, "replica segment read failed; trying the next replica");
                    continue;
                }
            };
            // One segment (≤ 64 KiB) verifies and opens in less time than
            // a hand-off to the blocking pool and back would take.
            let opened = (|| {
                let seg = codec::verify_segment_proof(&loc.chunk, layout, k, &proof)?;
                if seg.header.epoch != loc.epoch {
                    return Err(common::Error::Key(format!(
                        "the chunk is sealed under key epoch {}, its layout entry says {}",
                        seg.header.epoch, loc.epoch
                    )));
                }
                seg.open(&key)
            })();
            match opened {
                Ok(plain) => return Ok(Some(Arc::new(plain))),
                Err(e) => {
                    warn!(chunk = %loc.chunk, peer = %peer.id, addr = %peer.addr, segment = k, error = %e, "bad replica: segment failed verification; trying the next replica");
                }
            }
        }
        Ok(None)
    }

    /// The plaintext of an inline chunk this client sealed (under a key
    /// epoch it holds), without fetching a keyring.
    ///
    /// Errors: [`Error::Integrity`] when the bytes do not verify or open.
    pub(super) fn open_own_inline(&self, loc: &BlockLoc, bytes: &[u8]) -> Result<Vec<u8>> {
        open_inline(&self.keys(), loc, bytes)
    }

    pub(super) async fn fetch_from_replicas(self: Arc<Self>, loc: BlockLoc) -> Result<Block> {
        if let Some(bytes) = &loc.inline {
            // Kept in the layout entry (at most INLINE_MAX_LEN bytes): no
            // peer to ask, and small enough to open here.
            let keys = self.keys_for(loc.epoch).await?;
            return open_inline(&keys, &loc, bytes).map(Arc::new);
        }
        let replicas = self.replicas_of(&loc).await?;
        let mut detail = Vec::new();
        for peer in &replicas {
            let bytes = match self.peers.get(peer, loc.chunk).await {
                Ok(b) => b,
                Err(e) => {
                    detail.push(format!("{}: {e}", peer.addr));
                    continue;
                }
            };
            // The entry's epoch was checked by its MAC (verify_entry made
            // sure this client knows it); the chunk's header, authenticated
            // by the AEAD, must name the same one.
            let keys = self.keys_for(loc.epoch).await?;
            let Some(key) = keys.epoch(loc.epoch).map(|k| k.chunk.clone()) else {
                return Err(Error::Integrity(format!("no key epoch {}", loc.epoch)));
            };
            let (id, want) = (loc.chunk, loc.epoch);
            let opened = if bytes.len() <= super::CRYPT_HERE_MAX {
                open_chunk(&key, &id, want, &bytes)
            } else {
                tokio::task::spawn_blocking(move || open_chunk(&key, &id, want, &bytes))
                    .await
                    .map_err(|e| Error::Crypto(format!("open task failed: {e}")))?
            };
            match opened {
                Ok(plain) => return Ok(Arc::new(plain)),
                Err(e) => {
                    warn!(chunk = %loc.chunk, peer = %peer.id, addr = %peer.addr, error = %e, "bad replica: chunk failed verification; trying the next replica");
                    detail.push(format!("{}: {e}", peer.addr));
                }
            }
        }
        Err(Error::ChunkUnavailable { chunk: loc.chunk.fmt_short(), detail: detail.join("; ") })
    }
}

/// Opens the inline chunk `bytes` of `loc` under the key of its epoch in
/// `keys` (verified as [`open_chunk`] does).
///
/// Errors: [`Error::Integrity`] for an epoch `keys` lacks, or bytes that
/// do not verify or open.
fn open_inline(keys: &common::keyring::VolumeKeys, loc: &BlockLoc, bytes: &[u8]) -> Result<Vec<u8>> {
    let Some(key) = keys.epoch(loc.epoch).map(|k| k.chunk.clone()) else {
        return Err(Error::Integrity(format!("no key epoch {}", loc.epoch)));
    };
    open_chunk(&key, &loc.chunk, loc.epoch, bytes)
        .map_err(|e| Error::Integrity(format!("inline chunk {}: {e}", loc.chunk.fmt_short())))
}

/// Verifies sealed chunk `bytes` against the id `id` its layout entry
/// names, checks that their header names the entry's key epoch `want`
/// (the entry's epoch is covered by its MAC; the header by the AEAD), and
/// opens them under that epoch's chunk `key`.
///
/// Errors: [`common::Error::HashMismatch`] for other bytes,
/// [`common::Error::Key`] for another epoch, the codec's errors for bytes
/// that do not open.
pub(super) fn open_chunk(
    key: &common::keys::SubKey,
    id: &common::ChunkId,
    want: u32,
    bytes: &[u8],
) -> std::result::Result<Vec<u8>, common::Error> {
    codec::verify(id, bytes)?;
    let epoch = codec::epoch_of(bytes)?;
    if epoch != want {
        return Err(common::Error::Key(format!(
            "the chunk is sealed under key epoch {epoch}, its layout entry says {want}"
        )));
    }
    codec::open_bytes(key, bytes)
}
