//! The write path: writes land in per-file block buffers; full blocks go
//! to [`super::upload`]; flush waits for the uploads and commits the new
//! layout to dirsvc in batches.

use super::{lock, FileState, Fs, Source, FAILED_RETRY_INTERVAL};
use crate::error::{Error, Result};
use common::rpc::dir::{CommitLayout, DirError, SetAttr, StoredChunk};
use common::rpc::PeerLoc;
use common::time::Timestamp;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::{debug, error, info, warn};

/// How long blocks may wait uncommitted before a commit first checks that
/// their replicas still hold them ([`Fs::verify_uncommitted`]): well
/// beyond a normal commit's delay (about a second), well below three GC
/// grace periods (the earliest an orphan's tombstone can expire after its
/// upload).
const VERIFY_UNCOMMITTED_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl Fs {
    /// Writes `data` at `offset` through handle `fh`; returns bytes written.
    /// `kill_suid`: the caller lacks `CAP_FSETID` (the kernel's
    /// `FUSE_WRITE_KILL_SUIDGID`), so setuid, and setgid with group-execute,
    /// are cleared from the file's mode first, as Linux does on a write.
    ///
    /// Errors: the storage error of this handle's earlier writes while that
    /// data is not stored (ENOSPC or EIO; sticky until a flush stores it),
    /// a failed read of a block that a partial write must merge with, or
    /// the failure to clear setuid/setgid.
    pub async fn write(self: &Arc<Self>, fh: u64, offset: u64, data: &[u8], kill_suid: bool) -> Result<u32> {
        let h = self.handle(fh)?;
        let f = self.file(h.ino)?;
        let mut st = f.state.lock().await;
        self.write_locked(&mut st, fh, offset, data, kill_suid).await
    }

    /// Writes `data` at the end of the file behind `fh` (`O_APPEND`), as this
    /// client knows the end: the size at open, after its own writes, and
    /// after every lock this client is granted (so appends from several
    /// mounts under a lock land one after another). Returns bytes written.
    ///
    /// Errors: as [`Fs::write`].
    pub async fn append(self: &Arc<Self>, fh: u64, data: &[u8], kill_suid: bool) -> Result<u32> {
        let h = self.handle(fh)?;
        let f = self.file(h.ino)?;
        let mut st = f.state.lock().await;
        let end = st.size;
        self.write_locked(&mut st, fh, end, data, kill_suid).await
    }

    /// Clears setuid (and setgid with group-execute) at dirsvc if the mode
    /// this client knows has them, as a write by a caller without
    /// `CAP_FSETID` must.
    ///
    /// Errors: dirsvc's.
    pub(super) async fn kill_suid(&self, st: &mut FileState) -> Result<()> {
        let has_bits = st.perm & 0o4000 != 0 || st.perm & 0o2010 == 0o2010;
        if !has_bits {
            return Ok(());
        }
        let ino = st.ino;
        self.known.forget_attr(ino);
        let set = SetAttr { kill_suid_sgid: true, ..SetAttr::default() };
        let attr = self
            .dir
            .call(|c, ctx| {
                let s = set.clone();
                async move { c.setattr(ctx, ino, s).await }
            })
            .await?;
        st.perm = attr.perm;
        Ok(())
    }

    /// Writes through handle `fh` into the locked state; see [`Fs::write`].
    pub(super) async fn write_locked(
        self: &Arc<Self>,
        st: &mut FileState,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suid: bool,
    ) -> Result<u32> {
        self.reap(st);
        if let Some(Some(e)) = st.writers.get(&fh) {
            return Err(e.clone());
        }
        if kill_suid {
            self.kill_suid(st).await?;
        }
        st.writers.entry(fh).or_insert(None);
        let b = self.block_size;
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / b;
            let in_block = (pos % b) as usize;
            let take = ((b - pos % b).min(end - pos)) as usize;
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + take];
            // Bytes of this block that currently hold data (the rest are zeros).
            let valid = st.size.saturating_sub(idx * b).min(b) as usize;
            let covers_all = in_block == 0 && take >= valid;
            let mut block = match st.dirty.remove(&idx) {
                Some(d) => d,
                None => match st.uploading.remove(&idx) {
                    Some((d, _superseded)) => d,
                    None if covers_all => Arc::new(Vec::new()),
                    None => match Self::source(st, idx) {
                        Source::Remote(loc) => self.fetch_block(st.ino, &loc).await?,
                        Source::Local(d) => d,
                        Source::Hole => Arc::new(Vec::new()),
                    },
                },
            };
            let buf = Arc::make_mut(&mut block);
            if buf.len() < in_block + take {
                buf.resize(in_block + take, 0);
            }
            buf[in_block..in_block + take].copy_from_slice(src);
            let full = buf.len() as u64 == b && in_block + take == b as usize;
            st.dirty.insert(idx, block);
            pos += take as u64;
            if full {
                self.start_upload(st, idx).await;
            }
        }
        if end > st.size {
            st.size = end;
        }
        st.mtime = Timestamp::now();
        st.meta_dirty = true;
        while st.dirty.len() > self.config.dirty_blocks_per_file {
            let Some(&idx) = st.dirty.keys().next() else { break };
            self.start_upload(st, idx).await;
        }
        if st.uncommitted.len() >= self.commit_batch() {
            if let Err(e) = self.commit(st).await {
                st.fail_writers(e.clone());
                return Err(e);
            }
        }
        Ok(data.len() as u32)
    }

    pub(super) fn source(st: &FileState, idx: u64) -> Source {
        if let Some(d) = st.dirty.get(&idx) {
            return Source::Local(d.clone());
        }
        if let Some((d, _)) = st.uploading.get(&idx) {
            return Source::Local(d.clone());
        }
        match st.layout.get(&idx) {
            Some(loc) => Source::Remote(loc.clone()),
            None => Source::Hole,
        }
    }

    /// Uploads everything dirty, waits for every upload, then commits what
    /// was stored (also when some block failed, so stored data becomes
    /// durable and collectable chunks are not left uncommitted). On success
    /// nothing of the file is left unstored and its writers' errors are
    /// cleared; on failure the data stays buffered and the error is charged
    /// to the file's writers (see [`FileState::outcome_for`] for what each
    /// handle is told).
    ///
    /// Errors: the first upload or commit error.
    pub(super) async fn flush_locked(self: &Arc<Self>, st: &mut FileState) -> Result<()> {
        let dirty: Vec<u64> = st.dirty.keys().copied().collect();
        for idx in dirty {
            self.start_upload(st, idx).await;
        }
        let uploading = std::mem::take(&mut st.uploading);
        for (idx, (data, task)) in uploading {
            let r = task.await.unwrap_or_else(|e| Err(Error::Upload(format!("upload task failed: {e}"))));
            Self::apply_upload(st, idx, r, data);
        }
        let upload_failed = !st.dirty.is_empty();
        if let Err(e) = self.commit(st).await {
            st.fail_writers(e.clone());
            return Err(e);
        }
        if upload_failed {
            let e = st.failure.clone().unwrap_or_else(|| Error::Upload("a block could not be stored".into()));
            return Err(e);
        }
        st.stored_all();
        let kept = lock(&self.kept).remove(&st.ino);
        if let Some(file) = kept {
            if let Err(e) = std::fs::remove_file(&file) {
                warn!(file = %file.display(), error = %e, "cannot delete a recovery file whose data is stored");
            }
        }
        Ok(())
    }

    /// Commits finished uploads, size and mtime to dirsvc, in batches.
    pub(super) async fn commit(self: &Arc<Self>, st: &mut FileState) -> Result<()> {
        if st.uncommitted.is_empty() && !st.meta_dirty {
            return Ok(());
        }
        if st.uncommitted_since.is_some_and(|t| t.elapsed() >= VERIFY_UNCOMMITTED_AFTER) {
            self.verify_uncommitted(st).await?;
        }
        let ino = st.ino;
        let per_commit = self.commit_batch();
        loop {
            let batch: Vec<(u64, Option<StoredChunk>)> =
                st.uncommitted.iter().take(per_commit).map(|(i, c)| (*i, c.clone())).collect();
            let commit = CommitLayout { size: st.size, mtime: st.mtime, blocks: batch.clone() };
            self.known.forget_attr(ino);
            let generation = self.known.generation();
            let r = self
                .dir
                .call(|c, ctx| {
                    let cm = commit.clone();
                    async move { c.commit_layout(ctx, ino, cm).await }
                })
                .await;
            let attr = match r {
                Ok(a) => a,
                Err(Error::Dir(DirError::ChunkGone(gone))) => {
                    // Garbage collection deleted a chunk this commit names (it
                    // stayed uncommitted past the grace period). Store those
                    // blocks again from the cache, or fail loudly.
                    self.restore_gone(st, gone).await?;
                    continue;
                }
                Err(Error::Dir(DirError::StaleEpoch { current })) => {
                    // A member was removed since these blocks were sealed:
                    // seal them again under the new epoch before they are
                    // committed.
                    self.reseal_stale(st, current).await?;
                    continue;
                }
                Err(Error::Dir(DirError::NotFound)) => {
                    // The file was deleted (by this or another client): what
                    // was buffered for it has nowhere to go. Its stored
                    // chunks are orphans for garbage collection.
                    debug!(ino = %ino, blocks = st.uncommitted.len(), "file deleted before its data was committed; dropping it");
                    st.uncommitted.clear();
                    st.meta_dirty = false;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            self.known.record_attr(&attr, generation);
            for (i, _) in &batch {
                st.uncommitted.remove(i);
            }
            st.mtime = attr.mtime;
            if st.uncommitted.is_empty() {
                break;
            }
        }
        st.meta_dirty = false;
        st.uncommitted_since = None;
        Ok(())
    }

    /// Background upkeep of every file this client holds, run about twice
    /// per [`FsConfig::commit_interval`]: commits the finished uploads of
    /// files whose oldest uncommitted block has waited that long, and tries
    /// again, every [`FAILED_RETRY_INTERVAL`], to store data whose upload
    /// failed (a file that is then clean and no longer open is forgotten).
    /// Files busy in another operation are skipped (that operation
    /// commits). Failures are logged; the data stays pending.
    ///
    /// [`FsConfig::commit_interval`]: super::FsConfig::commit_interval
    pub async fn commit_idle(self: &Arc<Self>) {
        let files: Vec<_> = lock(&self.files).values().cloned().collect();
        for f in files {
            let Ok(mut st) = f.state.try_lock() else { continue };
            self.reap(&mut st);
            let retry = st.failure.is_some()
                && st.has_local_changes()
                && st.retried_at.is_none_or(|t| t.elapsed() >= FAILED_RETRY_INTERVAL);
            if retry {
                st.retried_at = Some(std::time::Instant::now());
                match self.flush_locked(&mut st).await {
                    Ok(()) => {
                        info!(ino = %st.ino, path = %self.path_of(st.ino), "data that could not be stored earlier is stored now");
                        let mut files = lock(&self.files);
                        if f.opens.load(Ordering::SeqCst) == 0 && !st.has_local_changes() {
                            files.remove(&st.ino);
                        }
                    }
                    Err(e) => {
                        debug!(ino = %st.ino, error = %e, "retry of unstored data failed; trying again later")
                    }
                }
                continue;
            }
            let due = st.uncommitted_since.is_some_and(|t| t.elapsed() >= self.config.commit_interval);
            if due {
                if let Err(e) = self.commit(&mut st).await {
                    warn!(ino = %st.ino, error = %e, "periodic commit failed; retried later");
                }
            }
        }
    }

    /// Before a late commit: asks the replicas of every uncommitted chunk
    /// whether they still hold it, and stores again (from the block cache)
    /// every chunk none of them holds. A commit held up by a failover or
    /// an outage may come after garbage collection took the upload for an
    /// orphan and its tombstone expired, when dirsvc would accept the
    /// commit of a chunk no peer has; this check closes that gap. A
    /// replica that cannot be asked counts as holding the chunk (the
    /// commit's tombstone check still guards it).
    ///
    /// Errors: those of [`Fs::restore_gone`].
    pub(super) async fn verify_uncommitted(self: &Arc<Self>, st: &mut FileState) -> Result<()> {
        let mut by_peer: HashMap<common::PeerId, (PeerLoc, Vec<common::ChunkId>)> = HashMap::new();
        let mut held: HashMap<common::ChunkId, bool> = HashMap::new();
        for (idx, c) in &st.uncommitted {
            let Some(c) = c else { continue };
            let Some(loc) = st.layout.get(idx) else { continue };
            if loc.chunk != c.id || loc.replicas.is_empty() {
                continue;
            }
            held.entry(c.id).or_insert(false);
            for p in &loc.replicas {
                by_peer.entry(p.id).or_insert_with(|| (p.clone(), Vec::new())).1.push(c.id);
            }
        }
        let asks = by_peer.into_values().map(|(p, ids)| async move {
            let r = self.peers.has(&p, ids.clone()).await;
            (ids, r)
        });
        for (ids, r) in futures::future::join_all(asks).await {
            match r {
                Ok(found) => {
                    for (id, f) in ids.iter().zip(found) {
                        if f {
                            held.insert(*id, true);
                        }
                    }
                }
                Err(e) => {
                    debug!(error = %e, "cannot ask a replica for its chunks; assuming it holds them");
                    for id in ids {
                        held.insert(id, true);
                    }
                }
            }
        }
        for (id, h) in held {
            if !h {
                self.restore_gone(st, id).await?;
            }
        }
        Ok(())
    }

    /// Re-stores every uncommitted block that names the collected chunk
    /// `gone`, from the plaintext in the block cache.
    ///
    /// Errors: `EIO` if the plaintext is no longer cached.
    pub(super) async fn restore_gone(
        self: &Arc<Self>,
        st: &mut FileState,
        gone: common::ChunkId,
    ) -> Result<()> {
        let idxs: Vec<u64> = st
            .uncommitted
            .iter()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c.id == gone))
            .map(|(i, _)| *i)
            .collect();
        if idxs.is_empty() {
            return Err(Error::Upload(format!(
                "dirsvc says chunk {gone} is gone, but no pending block names it"
            )));
        }
        for &idx in &idxs {
            if self.cache.get(&gone).is_none() {
                error!(ino = %st.ino, block = idx, chunk = %gone, "an uncommitted block was garbage-collected and is no longer cached");
                return Err(Error::Upload(format!(
                    "block {idx} was garbage-collected before it was committed"
                )));
            }
            warn!(ino = %st.ino, block = idx, chunk = %gone, "uncommitted block was garbage-collected; storing it again");
        }
        self.store_again(st, &idxs).await
    }

    /// Seals again, under the newest key epoch, every uncommitted block
    /// that was newly stored under an older one (dirsvc answered
    /// `StaleEpoch { current }`): the keyring is reloaded first if this
    /// client does not know epoch `current` yet. Shared blocks keep their
    /// epoch (dirsvc accepts those).
    ///
    /// Errors: those of [`Fs::reload_keys`] (a removed member's mount can
    /// no longer write); upload errors.
    pub(super) async fn reseal_stale(self: &Arc<Self>, st: &mut FileState, current: u32) -> Result<()> {
        let mut keys = self.keys();
        if keys.newest() < current {
            keys = self.reload_keys(keys.newest()).await?;
        }
        let newest = keys.newest();
        let idxs: Vec<u64> = st
            .uncommitted
            .iter()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| !c.replicas.is_empty() && c.epoch < newest))
            .map(|(i, _)| *i)
            .collect();
        if idxs.is_empty() {
            return Err(Error::Upload(format!(
                "dirsvc says key epoch {current} is the newest, but no pending block is older than {newest}"
            )));
        }
        info!(ino = %st.ino, blocks = idxs.len(), epoch = newest, "blocks sealed under an old key epoch; sealing them again under the newest");
        self.store_again(st, &idxs).await
    }

    /// Uploads uncommitted blocks `idxs` again (a new chunk each, under the
    /// newest epoch) from their plaintext: the block cache, or the peers
    /// that hold the chunk this client stored.
    ///
    /// Errors: `EIO` if the plaintext cannot be had; upload errors.
    async fn store_again(self: &Arc<Self>, st: &mut FileState, idxs: &[u64]) -> Result<()> {
        for &idx in idxs {
            let Some(Some(c)) = st.uncommitted.get(&idx).cloned() else { continue };
            let data = match self.cache.get(&c.id) {
                Some(d) => d,
                None => match st.layout.get(&idx).cloned() {
                    Some(loc) if loc.chunk == c.id => self.fetch_block(st.ino, &loc).await?,
                    _ => {
                        return Err(Error::Upload(format!(
                            "block {idx} must be stored again and its data is no longer at hand"
                        )))
                    }
                },
            };
            st.uncommitted.remove(&idx);
            st.dirty.insert(idx, data);
            self.start_upload(st, idx).await;
        }
        let uploading = std::mem::take(&mut st.uploading);
        for (idx, (data, task)) in uploading {
            let r = task.await.unwrap_or_else(|e| Err(Error::Upload(format!("upload task failed: {e}"))));
            Self::apply_upload(st, idx, r, data);
        }
        // Only these blocks count: other dirty blocks (written since, not
        // yet due for upload) are not failures.
        match idxs.iter().any(|i| st.dirty.contains_key(i)) {
            false => Ok(()),
            true => {
                Err(st.failure.clone().unwrap_or_else(|| Error::Upload("a block could not be stored".into())))
            }
        }
    }
}
