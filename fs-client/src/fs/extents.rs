//! Operations on ranges of a file rather than on bytes: `fallocate`
//! (allocate, punch a hole, zero a range), `copy_file_range`, and
//! `lseek(SEEK_DATA / SEEK_HOLE)`.
//!
//! Holes are blocks with no chunk: a block that becomes all zeros is
//! dropped from the layout rather than stored. `copy_file_range` between
//! block-aligned offsets of two files shares the source's committed chunks
//! (a reflink: no data moves, dirsvc counts one more reference); everything
//! else is copied through the block buffers without crossing FUSE. A shared
//! block's source entry is verified first (its MAC, for the source inode
//! and block), and the destination entry gets a MAC of its own, for the
//! destination inode and block, so a shared chunk is bound to both places
//! and sharing never launders an entry dirsvc moved.

use super::{FileState, Fs, Stored};
use crate::error::{Error, Result};
use common::rpc::dir::BlockLoc;
use common::time::Timestamp;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `FALLOC_FL_KEEP_SIZE`.
const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
/// `FALLOC_FL_PUNCH_HOLE`.
const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
/// `FALLOC_FL_ZERO_RANGE`.
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;

/// Largest piece copied at once by the byte path of `copy_file_range`.
const COPY_PIECE: u64 = 1 << 20;

/// Which kind of offset `lseek` looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    /// `SEEK_DATA`: the first byte at or after the offset that is in a
    /// stored (or buffered) block.
    Data,
    /// `SEEK_HOLE`: the first byte at or after the offset that is in a hole,
    /// or the end of the file.
    Hole,
}

impl Fs {
    /// `fallocate(2)` on the file behind `fh`. Mode 0 (and `KEEP_SIZE`)
    /// allocates: the size grows to `offset + len` unless `KEEP_SIZE`; the
    /// new bytes read as zeros. Nothing is reserved on the peers, so a later
    /// write can still fail with `ENOSPC`. `PUNCH_HOLE | KEEP_SIZE` and
    /// `ZERO_RANGE` make the range read as zeros: whole blocks become holes,
    /// partial ones are rewritten. The change is committed before this
    /// returns.
    ///
    /// Errors: `EOPNOTSUPP` for other modes (collapse, insert, unshare);
    /// `EINVAL` for `PUNCH_HOLE` without `KEEP_SIZE`; upload and dirsvc
    /// errors.
    pub async fn fallocate(self: &Arc<Self>, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        if mode & !(KEEP_SIZE | PUNCH_HOLE | ZERO_RANGE) != 0 {
            return Err(Error::Errno(libc::EOPNOTSUPP, format!("fallocate mode {mode:#x}")));
        }
        if mode & PUNCH_HOLE != 0 && mode & KEEP_SIZE == 0 {
            return Err(Error::Errno(libc::EINVAL, "PUNCH_HOLE needs KEEP_SIZE".into()));
        }
        let end =
            offset.checked_add(len).ok_or_else(|| Error::Errno(libc::EFBIG, "range overflows".into()))?;
        let h = self.handle(fh)?;
        let f = self.file(h.ino)?;
        let mut st = f.state.lock().await;
        self.reap(&mut st);
        if let Some(Some(e)) = st.writers.get(&fh) {
            return Err(e.clone());
        }
        st.writers.entry(fh).or_insert(None);
        let mut changed = false;
        if mode & (PUNCH_HOLE | ZERO_RANGE) != 0 {
            let zero_to = end.min(st.buf.size());
            if offset < zero_to {
                // Whole blocks become holes, partial ones are rewritten
                // (fetched without the lock if stored).
                let (s, r) = self.with_fetches(&f, st, |st| st.buf.punch(offset, zero_to - offset)).await;
                st = s;
                for u in r? {
                    self.spawn_upload(&mut st, u);
                }
                changed = true;
            }
        }
        if mode & KEEP_SIZE == 0 && end > st.buf.size() {
            let ups = match st.buf.truncate(end) {
                Ok(ups) => ups,
                Err(_) => {
                    return Err(Error::Errno(libc::EFBIG, format!("size {end} past the largest file size")))
                }
            };
            for u in ups {
                self.spawn_upload(&mut st, u);
            }
            changed = true;
        }
        if changed {
            st.mtime = Timestamp::now();
            st.mark_uncommitted();
        }
        let (st, r) = self.flush_locked(&f, st).await;
        st.outcome_for(fh, r)
    }

    /// `copy_file_range(2)`: copies up to `len` bytes from `fh_in` at
    /// `off_in` to `fh_out` at `off_out`; returns the bytes copied (short at
    /// the source's end of file, 0 at or past it).
    ///
    /// Errors: `EBADF` for unknown handles; read, upload and dirsvc errors.
    pub async fn copy_range(
        self: &Arc<Self>,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u64> {
        let (hin, hout) = (self.handle(fh_in)?, self.handle(fh_out)?);
        let fin = self.file(hin.ino)?;
        let b = self.block_size;
        let (len, shareable) = {
            let mut st = fin.state.lock().await;
            self.reap(&mut st);
            let len = len.min(st.buf.size().saturating_sub(off_in));
            let aligned = off_in.is_multiple_of(b) && off_out.is_multiple_of(b) && hin.ino != hout.ino;
            let mut shareable = BTreeMap::new();
            if aligned {
                for k in 0..len.div_ceil(b) {
                    // Only blocks as dirsvc has them (nothing pending here).
                    if let Some(clean) = st.buf.clean(off_in / b + k) {
                        shareable.insert(k, clean.map(|s| s.loc.clone()));
                    }
                }
            }
            (len, shareable)
        };
        if len == 0 {
            return Ok(0);
        }
        // Only entries that verify are shared; one that does not fails the
        // copy (EIO), as reading it would.
        for loc in shareable.values().flatten() {
            self.verify_entry(hin.ino, loc).await?;
        }
        let fout = self.file(hout.ino)?;
        let dst_end = off_out + len;
        let mut pos = 0u64;
        while pos < len {
            let piece = if shareable.is_empty() { COPY_PIECE.min(len - pos) } else { b.min(len - pos) };
            let shared = match shareable.get(&(pos / b)) {
                Some(loc) => {
                    let mut st = fout.state.lock().await;
                    if let Some(Some(e)) = st.writers.get(&fh_out) {
                        return Err(e.clone());
                    }
                    st.writers.entry(fh_out).or_insert(None);
                    self.share_block(&mut st, (off_out + pos) / b, piece, loc.as_ref(), dst_end)?
                }
                _ => false,
            };
            if !shared {
                let data = self.read(fh_in, off_in + pos, piece as u32).await?;
                if data.is_empty() {
                    break;
                }
                self.write(fh_out, off_out + pos, &data, false).await?;
                pos += data.len() as u64;
                continue;
            }
            pos += piece;
        }
        Ok(pos)
    }

    /// Points block `idx` of the destination at `loc` (or a hole) for a
    /// `copy_file_range` piece of `piece` bytes, if that is exact: a whole
    /// block, or a partial last piece with nothing of the destination after
    /// `dst_end`. The new entry keeps the chunk's epoch and gets its own MAC
    /// (destination inode and block); an inline chunk is shared only as
    /// block 0 under the newest epoch, by a mount that inlines. Returns
    /// whether it did.
    ///
    /// Errors: [`Error::Integrity`] if no key of the chunk's epoch is known.
    pub(super) fn share_block(
        &self,
        st: &mut FileState,
        idx: u64,
        piece: u64,
        loc: Option<&BlockLoc>,
        dst_end: u64,
    ) -> Result<bool> {
        let b = self.block_size;
        if piece < b && st.buf.size() > dst_end {
            return Ok(false);
        }
        let keys = self.keys();
        // An inline chunk is only ever block 0, and a commit adds one only
        // under the newest epoch: elsewhere its bytes are copied, and so on
        // a mount that keeps nothing inline (`--no-inline`).
        if loc.is_some_and(|l| {
            l.inline.is_some() && (idx != 0 || l.epoch != keys.newest() || !self.config.inline)
        }) {
            return Ok(false);
        }
        let stored = match loc {
            Some(l) => Some(Stored {
                loc: BlockLoc {
                    index: idx,
                    mac: self.entry_mac(&keys, st.ino, idx, l.chunk, l.len, l.epoch)?,
                    ..l.clone()
                },
                // No replicas in the commit: dirsvc keeps the chunk's own
                // list and adds a reference.
                commit_replicas: Some(Vec::new()),
            }),
            None => None,
        };
        if !st.buf.share(idx, stored, piece) {
            return Ok(false);
        }
        st.mark_uncommitted();
        st.mtime = Timestamp::now();
        Ok(true)
    }

    /// `lseek(2)` with `SEEK_DATA` or `SEEK_HOLE` from `offset` on the file
    /// behind `fh`, at block granularity.
    ///
    /// Errors: `ENXIO` if `offset` is at or past the end of the file, or
    /// (`SEEK_DATA`) no data follows it.
    pub async fn seek_data(&self, fh: u64, offset: u64, what: Seek) -> Result<u64> {
        let h = self.handle(fh)?;
        let f = self.file(h.ino)?;
        let st = f.state.lock().await;
        let nxio = || Error::Errno(libc::ENXIO, "offset past the end of the file".into());
        let size = st.buf.size();
        if offset >= size {
            return Err(nxio());
        }
        let b = self.block_size;
        let last = size.div_ceil(b);
        let mut idx = offset / b;
        while idx < last {
            if st.buf.has_data(idx) == (what == Seek::Data) {
                return Ok((idx * b).max(offset));
            }
            idx += 1;
        }
        match what {
            Seek::Data => Err(nxio()),
            Seek::Hole => Ok(size),
        }
    }
}

/// Whether `data` is all zero bytes (such a block is stored as a hole).
/// Folds 64-byte pieces so the compiler can vectorize it.
pub(crate) fn all_zero(data: &[u8]) -> bool {
    data.chunks(64).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

#[cfg(test)]
mod tests {
    use super::all_zero;

    #[test]
    pub(super) fn zero_detection_sees_a_single_set_byte_anywhere() {
        let mut v = vec![0u8; 4096 + 3];
        assert!(all_zero(&v));
        for i in [0, 63, 64, 4095, 4098] {
            v[i] = 1;
            assert!(!all_zero(&v), "byte {i}");
            v[i] = 0;
        }
        assert!(all_zero(&[]));
    }
}
