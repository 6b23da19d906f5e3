//! The session and orphan families: live client sessions (`S`) and
//! orphans (`O`), inodes at nlink 0 that are held open or whose freeing
//! has not finished. Freeing an inode ([`Store::free_inode`]) runs in
//! bounded transactions: layout entries (through the layout family),
//! extended attributes, then the inode, its symlink target and its orphan
//! key together; until that last step the orphan key stays, so a crash in
//! between leaves an orphan that the next freeing finishes.

use super::records::{Record, SessionRecord, KIND_FILE};
use super::{keys, scan_all, Get, Keep, Store, W};
use crate::error::Error;
use common::rpc::dir::{DirError, SessionId};
use common::InodeId;
use tracing::warn;

/// Writes a free step keeps for its last step (inode, symlink, orphan,
/// trim marker).
const FREE_RESERVE: usize = 4;

/// What one freeing step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Not (or no longer) an orphan: nothing to do.
    NotOrphan,
    /// `keep` said it is held open.
    Kept,
    /// More to free.
    More,
    /// Freed (its last key went).
    Freed,
    /// An orphan key without an inode: dropped.
    Gone,
}

impl Store {
    /// The orphans (inodes at nlink 0 kept because they were open, or
    /// whose freeing did not finish), in inode order.
    pub fn orphans(&self) -> Result<Vec<InodeId>, Error> {
        self.read(|t| {
            let mut out = Vec::new();
            scan_all(t, &keys::family(keys::ORPHAN), |k, _| {
                out.push(InodeId(keys::parse_u64(&k)?));
                Ok(true)
            })?;
            Ok(out)
        })
    }

    /// Whether `ino` is an orphan (listed under `O`: at nlink 0, kept).
    /// One read.
    ///
    /// Errors: store errors.
    pub fn is_orphan(&self, ino: InodeId) -> Result<bool, Error> {
        Ok(self.read(|t| t.get(&keys::orphan(ino.0)))?.is_some())
    }

    /// Frees each of `inos` that is an orphan and not `keep(ino)`, as
    /// unlink would have (chunks lose their references, extended
    /// attributes go). Returns the inodes freed.
    pub fn free_orphans(&self, inos: &[InodeId], keep: Keep<'_>) -> Result<Vec<InodeId>, Error> {
        self.end_sessions(&[], inos, keep)
    }

    /// Ends sessions `ids` (removes their keys, one transaction per
    /// `max_ops` of them) and frees the orphans among `inos` that are not
    /// `keep(ino)` ([`Store::free_inode`]: `keep` is asked again in the
    /// first freeing transaction). Returns the inodes freed.
    pub fn end_sessions(
        &self,
        ids: &[SessionId],
        inos: &[InodeId],
        keep: Keep<'_>,
    ) -> Result<Vec<InodeId>, Error> {
        let orphan_keys: Vec<Vec<u8>> = inos.iter().map(|i| keys::orphan(i.0)).collect();
        let candidates: Vec<InodeId> = if orphan_keys.is_empty() {
            Vec::new()
        } else {
            let listed = self.read(|t| t.get_many(&orphan_keys))?;
            inos.iter().zip(listed).filter(|(i, o)| o.is_some() && !keep(**i)).map(|(i, _)| *i).collect()
        };
        for batch in ids.chunks(self.max_ops().max(1)) {
            self.write(|w| {
                for id in batch {
                    w.delete(keys::session(id.0));
                }
                Ok(())
            })?;
        }
        let mut freed = Vec::new();
        for ino in candidates {
            if self.free_inode(ino.0, Some(keep))? {
                freed.push(ino);
            }
        }
        Ok(freed)
    }

    /// Frees orphan `ino` in bounded transactions: its layout entries
    /// (each chunk loses a reference), extended attributes, then its
    /// record, symlink target, trim marker and orphan key in the last one.
    /// With `keep`, the first transaction asks it and leaves a kept inode
    /// alone. Returns whether this call freed it (false: not an orphan, or
    /// kept).
    pub(crate) fn free_inode(&self, ino: u64, keep: Option<Keep<'_>>) -> Result<bool, Error> {
        let mut first = true;
        loop {
            let ask = if first { keep } else { None };
            let step = self.write(|w| w.free_step(ino, ask))?;
            first = false;
            match step {
                Step::More => continue,
                Step::Freed => return Ok(true),
                Step::NotOrphan | Step::Kept | Step::Gone => return Ok(false),
            }
        }
    }

    /// Records session `id` as alive (inserts or replaces its key).
    pub fn put_session(&self, id: SessionId, rec: &SessionRecord) -> Result<(), Error> {
        let bytes = rec.to_bytes()?;
        self.write(|w| {
            w.put(keys::session(id.0), bytes.clone());
            Ok(())
        })
    }

    /// The sessions recorded as alive, in id order: after a start, the
    /// clients that may come back to reclaim.
    pub fn sessions(&self) -> Result<Vec<(SessionId, SessionRecord)>, Error> {
        self.read(|t| {
            let mut out = Vec::new();
            scan_all(t, &keys::family(keys::SESSION), |k, v| {
                out.push((SessionId(keys::parse_u64(&k)?), SessionRecord::from_bytes(&v)?));
                Ok(true)
            })?;
            Ok(out)
        })
    }
}

impl W<'_, '_> {
    /// Lists `ino` as an orphan since now.
    pub(crate) fn add_orphan(&mut self, ino: u64) {
        let since = self.now.secs;
        self.put(keys::orphan(ino), since.to_le_bytes().to_vec());
    }

    /// One bounded transaction of freeing orphan `ino`.
    fn free_step(&mut self, ino: u64, keep: Option<Keep<'_>>) -> Result<Step, Error> {
        if self.get(&keys::orphan(ino))?.is_none() {
            return Ok(Step::NotOrphan);
        }
        if keep.is_some_and(|k| k(InodeId(ino))) {
            return Ok(Step::Kept);
        }
        let mut rec = match self.inode(ino) {
            Ok(rec) => rec,
            Err(Error::Dir(DirError::NotFound)) => {
                warn!(ino, "orphan key of an inode that does not exist; dropped");
                self.delete(keys::orphan(ino));
                self.delete(keys::trim(ino));
                return Ok(Step::Gone);
            }
            Err(e) => return Err(e),
        };
        let budget = self.max_ops.saturating_sub(FREE_RESERVE).max(3);
        let mut done = true;
        if rec.kind == KIND_FILE {
            let (freed, all) = self.drop_blocks_bounded(ino, 0, budget)?;
            done = all;
            if !all && freed > 0 {
                rec.stored_bytes = rec.stored_bytes.saturating_sub(freed);
                self.put_inode(ino, &rec)?;
            }
        }
        if done {
            done = self.drop_xattrs(ino, budget)?;
        }
        if !done {
            return Ok(Step::More);
        }
        self.delete_inode(ino);
        self.delete(keys::trim(ino));
        self.delete(keys::orphan(ino));
        Ok(Step::Freed)
    }
}
