//! The write path: writes go through the file's write buffer
//! ([`super::buffer`]), which says what to fetch and what to upload; the
//! fetches run without the file's lock, uploads ([`super::upload`]) report
//! back through the file's result channel; flush waits for the uploads and
//! commits the buffer's batches to dirsvc.

use super::buffer::Blocked;
use super::{lock, FileState, Fs, Guard, OpenFile, Stored, FAILED_RETRY_INTERVAL};
use crate::error::{Error, Result};
use common::rpc::dir::{BlockLoc, CommitAttrs, CommitLayout, DirError, SetAttr};
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

/// Most rounds of fetching the blocks an operation must merge with before
/// it gives up: each round fetches only the blocks that changed since the
/// last, so only a block rewritten again and again by others in between
/// needs more than two.
const FETCH_ROUNDS: usize = 16;

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
        self.write_at(&f, fh, Some(offset), data, kill_suid).await
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
        self.write_at(&f, fh, None, data, kill_suid).await
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
        if let Some(c) = &mut st.pending.perm {
            // The mode the next commit sets: clear the bits there.
            let kill = if c.to & 0o2010 == 0o2010 { 0o6000 } else { 0o4000 };
            c.to &= !kill;
            st.perm = c.to;
            return Ok(());
        }
        let set = SetAttr { kill_suid_sgid: true, ..SetAttr::default() };
        let attr = self.setattr_at_dirsvc(st.ino, set).await?;
        st.perm = attr.perm;
        Ok(())
    }

    /// Writes `data` through handle `fh` at `offset` (`None`: at the end of
    /// the file as this client knows it when the write applies); see
    /// [`Fs::write`]. Blocks the write must merge with are fetched without
    /// the lock; the write returns once its uploads hold an upload slot
    /// (the write path's backpressure), also without the lock.
    pub(super) async fn write_at(
        self: &Arc<Self>,
        f: &OpenFile,
        fh: u64,
        offset: Option<u64>,
        data: &[u8],
        kill_suid: bool,
    ) -> Result<u32> {
        let mut st = f.state.lock().await;
        self.reap(&mut st);
        if let Some(Some(e)) = st.writers.get(&fh) {
            return Err(e.clone());
        }
        if data.is_empty() {
            // POSIX: a write of nothing changes nothing (not even the size,
            // past the end).
            return Ok(0);
        }
        if kill_suid {
            self.kill_suid(&mut st).await?;
        }
        let (mut st, ups) = self
            .with_fetches(f, st, |st| {
                let at = offset.unwrap_or(st.buf.size());
                st.buf.write(at, data)
            })
            .await;
        let ups = ups?;
        st.writers.entry(fh).or_insert(None);
        st.mtime = Timestamp::now();
        let started: Vec<_> = ups.into_iter().map(|u| self.spawn_upload(&mut st, u)).collect();
        if st.buf.uncommitted_len() >= self.commit_batch() {
            let (s, r) = self.commit(f, st).await;
            st = s;
            if let Err(e) = r {
                st.fail_writers(e.clone());
                return Err(e);
            }
        }
        drop(st);
        for s in started {
            let _ = s.await;
        }
        Ok(data.len() as u32)
    }

    /// Runs `op` on the file's state; when it asks for stored blocks, lets
    /// go of the lock, fetches them (verified, in parallel), hands them to
    /// the buffer and runs `op` again (each round fetches only what changed
    /// meanwhile). Returns the guard with the outcome.
    ///
    /// Errors: `EFBIG` past the largest file size; fetch errors; `EIO` if
    /// the blocks kept changing for [`FETCH_ROUNDS`] rounds.
    pub(super) async fn with_fetches<'a, T>(
        self: &Arc<Self>,
        f: &'a OpenFile,
        mut st: Guard<'a>,
        mut op: impl FnMut(&mut FileState) -> std::result::Result<T, Blocked<Stored>>,
    ) -> (Guard<'a>, Result<T>) {
        for _ in 0..FETCH_ROUNDS {
            let need = match op(&mut st) {
                Ok(v) => return (st, Ok(v)),
                Err(Blocked::TooLarge { end }) => {
                    let e = Error::Errno(libc::EFBIG, format!("offset {end} is past the largest file size"));
                    return (st, Err(e));
                }
                Err(Blocked::Fetch(need)) => need,
            };
            let ino = st.ino;
            drop(st);
            let fetched =
                futures::future::try_join_all(need.iter().map(|n| self.fetch_block(ino, &n.loc.loc))).await;
            st = f.state.lock().await;
            match fetched {
                Ok(blocks) => {
                    for (n, block) in need.iter().zip(blocks) {
                        st.buf.fill(n.idx, n.stamp(), block);
                    }
                }
                Err(e) => return (st, Err(e)),
            }
        }
        let e = Error::Errno(libc::EIO, "the blocks to merge with kept changing".into());
        (st, Err(e))
    }

    /// Uploads everything dirty, waits for every upload (the uploads report
    /// through the file's result channel, so the lock is kept), then
    /// commits what was stored (also when some block failed, so stored
    /// data becomes durable and collectable chunks are not left
    /// uncommitted). On success nothing of the file is left unstored and
    /// its writers' errors are cleared; on failure the data stays buffered
    /// and the error is charged to the file's writers (see
    /// [`FileState::outcome_for`] for what each handle is told).
    ///
    /// Errors: the first upload or commit error.
    pub(super) async fn flush_locked<'a>(
        self: &Arc<Self>,
        f: &'a OpenFile,
        mut st: Guard<'a>,
    ) -> (Guard<'a>, Result<()>) {
        self.reap(&mut st);
        for u in st.buf.flush() {
            self.spawn_upload(&mut st, u);
        }
        self.wait_uploads(&mut st).await;
        let (mut st, r) = self.commit(f, st).await;
        if let Err(e) = r {
            st.fail_writers(e.clone());
            return (st, Err(e));
        }
        if st.has_local_changes() {
            let e = st.failure.clone().unwrap_or_else(|| Error::Upload("a block could not be stored".into()));
            return (st, Err(e));
        }
        st.stored_all();
        let kept = lock(&self.kept).remove(&st.ino);
        if let Some(file) = kept {
            if let Err(e) = std::fs::remove_file(&file) {
                warn!(file = %file.display(), error = %e, "cannot delete a recovery file whose data is stored");
            }
        }
        (st, Ok(()))
    }

    /// Commits what the buffer has to commit (size, mtime, finished
    /// uploads, holes), batch after batch, until it has nothing more, or
    /// waits for an upload (a shrink is committed with its cut block, never
    /// without). Chunks dirsvc no longer has, or sealed under a key epoch
    /// that is no longer the newest, are stored again and the commit
    /// retried.
    ///
    /// Errors: dirsvc's; those of storing blocks again.
    pub(super) async fn commit<'a>(
        self: &Arc<Self>,
        f: &'a OpenFile,
        mut st: Guard<'a>,
    ) -> (Guard<'a>, Result<()>) {
        if st.uncommitted_since.is_some_and(|t| t.elapsed() >= VERIFY_UNCOMMITTED_AFTER) {
            if let Err(e) = self.verify_uncommitted(&mut st).await {
                return (st, Err(e));
            }
        }
        let ino = st.ino;
        let per_commit = self.commit_batch();
        let mut unverified = 0;
        while let Some(plan) = st.buf.commit(per_commit) {
            let commit = CommitLayout {
                held_ms: 0,
                attrs: st.pending.clone(),
                size: plan.size,
                mtime: st.mtime,
                blocks: plan.blocks.iter().map(|(i, s)| (*i, s.as_ref().map(Stored::chunk))).collect(),
            };
            self.known.forget_attr(ino);
            let generation = self.known.generation();
            let held_since = st.held_since;
            // New chunks with no time they were known held (kept by an
            // earlier mount and not checked yet) count as held forever ago.
            let never_checked = held_since.is_none()
                && plan.blocks.iter().any(|(_, s)| s.as_ref().is_some_and(Stored::put_on_peers_here));
            let r = self
                .dir
                .call(|c, ctx| {
                    // Measured per attempt: retries across a failover can
                    // outlast GC's grace period.
                    let held_ms = match held_since {
                        _ if never_checked => u64::MAX,
                        Some(t) => u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
                        None => 0,
                    };
                    let cm = CommitLayout { held_ms, ..commit.clone() };
                    async move { c.commit_layout(ctx, ino, cm).await }
                })
                .await;
            match r {
                Ok(attr) => {
                    if plan.is_shrink() {
                        debug!(ino = %ino, size = plan.size, "shrink committed with its cut block");
                    }
                    self.known.record_attr(&attr, generation);
                    st.buf.committed(&plan);
                    st.mtime = attr.mtime;
                    if st.pending == commit.attrs {
                        st.pending = CommitAttrs::default();
                        st.pending_at = None;
                    }
                    st.perm = attr.perm;
                    st.base = attr;
                }
                Err(Error::Dir(DirError::ChunkGone(gone))) => {
                    // Garbage collection deleted a chunk this commit names (it
                    // stayed uncommitted past the grace period). Store those
                    // blocks again from the cache, or fail loudly.
                    st.buf.commit_failed(&plan);
                    if let Err(e) = self.restore_gone(&mut st, gone).await {
                        return (st, Err(e));
                    }
                }
                Err(Error::Dir(DirError::StaleEpoch { current })) => {
                    // A member was removed since these blocks were sealed:
                    // seal them again under the new epoch before they are
                    // committed.
                    st.buf.commit_failed(&plan);
                    let (s, r) = self.reseal_stale(f, st, current).await;
                    st = s;
                    if let Err(e) = r {
                        return (st, Err(e));
                    }
                }
                Err(Error::Dir(DirError::UploadUnverified { limit_ms })) => {
                    // Held up past GC's grace period (a failover, an
                    // outage): GC may have taken the new chunks for
                    // orphans. Ask their replicas, store again what none
                    // holds, and commit with the fresh answer.
                    st.buf.commit_failed(&plan);
                    unverified += 1;
                    if unverified > 3 {
                        let e = Error::Dir(DirError::UploadUnverified { limit_ms });
                        return (st, Err(e));
                    }
                    info!(ino = %ino, limit_ms, "commit held up past GC's grace period; checking the new chunks with their replicas");
                    if let Err(e) = self.verify_uncommitted(&mut st).await {
                        return (st, Err(e));
                    }
                }
                Err(Error::Dir(DirError::NotFound)) => {
                    // The file was deleted (by this or another client): what
                    // was buffered for it has nowhere to go. Its stored
                    // chunks are orphans for garbage collection.
                    debug!(ino = %ino, blocks = st.buf.uncommitted_len(), "file deleted before its data was committed; dropping it");
                    st.buf.forget_uncommitted();
                    st.uncommitted_since = None;
                    st.held_since = None;
                    st.pending = CommitAttrs::default();
                    st.pending_at = None;
                    return (st, Ok(()));
                }
                Err(e) => {
                    st.buf.commit_failed(&plan);
                    return (st, Err(e));
                }
            }
        }
        if !st.pending.is_empty() && !st.buf.has_local_changes() {
            // Attributes set while data was buffered, and no commit left to
            // carry them (the data went another way: truncated, or
            // committed by a shrink): one setattr.
            let p = st.pending.clone();
            // As a commit would: each change only over the value it was
            // made over (another mount's newer change stays).
            let now = match self.dir.call(|c, ctx| async move { c.getattr(ctx, ino).await }).await {
                Ok(a) => a,
                Err(e) => return (st, Err(e)),
            };
            let over = |c: Option<common::rpc::dir::AttrChange<u32>>, v: u32| {
                c.filter(|c| c.from == v).map(|c| c.to)
            };
            let set = SetAttr {
                perm: over(p.perm, now.perm),
                uid: over(p.uid, now.uid),
                gid: over(p.gid, now.gid),
                atime: p.atime.filter(|c| c.from == now.atime).map(|c| c.to),
                ..SetAttr::default()
            };
            match self.setattr_at_dirsvc(ino, set).await {
                Ok(attr) => {
                    if st.pending == p {
                        st.pending = CommitAttrs::default();
                        st.pending_at = None;
                    }
                    st.perm = attr.perm;
                    st.base = attr;
                }
                Err(e) if e.is_not_found() => {
                    st.pending = CommitAttrs::default();
                    st.pending_at = None;
                }
                Err(e) => return (st, Err(e)),
            }
        }
        if !st.buf.has_pending_commit() && st.pending.is_empty() {
            st.uncommitted_since = None;
            st.held_since = None;
        }
        (st, Ok(()))
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
                let (st, r) = self.flush_locked(&f, st).await;
                match r {
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
                // A shrink waits for its cut block: store it now rather than
                // at the next flush, so the uploads behind it do not wait.
                for u in st.buf.upload_cut() {
                    self.spawn_upload(&mut st, u);
                }
                let (st, r) = self.commit(&f, st).await;
                if let Err(e) = r {
                    warn!(ino = %st.ino, error = %e, "periodic commit failed; retried later");
                }
            }
        }
    }

    /// Before a late commit: asks the replicas of every uncommitted chunk
    /// whether they still hold it, and stores again (from the block cache)
    /// every chunk none of them holds. A commit held up by a failover or
    /// an outage may come after garbage collection took the upload for an
    /// orphan and its tombstone expired. When every chunk was confirmed
    /// (or is stored again), the file's `held_since` becomes the moment of
    /// this check: the commit reports it as `held_ms`, and dirsvc refuses
    /// a commit whose new chunks were last known held a whole GC grace
    /// period ago (`UploadUnverified`, answered by checking again). A
    /// replica that cannot be asked counts as holding the chunk but does
    /// not renew `held_since`.
    ///
    /// Chunks kept by an earlier mount (recovery) are asked too, at the
    /// addresses dirsvc lists for their replica ids.
    ///
    /// Errors: dirsvc's peer list; those of [`Fs::restore_gone`].
    pub(super) async fn verify_uncommitted(self: &Arc<Self>, st: &mut FileState) -> Result<()> {
        let asked_at = std::time::Instant::now();
        let mut by_peer: HashMap<common::PeerId, (PeerLoc, Vec<common::ChunkId>)> = HashMap::new();
        // Per chunk: (a replica answered that it holds it, a replica
        // could not be asked).
        let mut held: HashMap<common::ChunkId, (bool, bool)> = HashMap::new();
        // Chunks kept by an earlier mount name their replicas by id only:
        // their addresses come from dirsvc's peer list.
        let kept = st
            .buf
            .stored_pending()
            .iter()
            .any(|(_, _, s)| s.loc.replicas.is_empty() && s.put_on_peers_here());
        let listed: HashMap<common::PeerId, PeerLoc> = if kept {
            let peers = self.dir.call(|c, ctx| async move { c.list_peers(ctx).await }).await?;
            peers.into_iter().map(|p| (p.loc.id, p.loc)).collect()
        } else {
            HashMap::new()
        };
        for (_, _, s) in st.buf.stored_pending() {
            // Shared chunks are dirsvc's to keep; inline ones travel in
            // the commit.
            if !s.put_on_peers_here() {
                continue;
            }
            let id = s.loc.chunk;
            held.entry(id).or_insert((false, false));
            let replicas: Vec<PeerLoc> = if s.loc.replicas.is_empty() {
                s.chunk()
                    .replicas
                    .iter()
                    .map(|p| listed.get(p).cloned())
                    .collect::<Option<Vec<_>>>()
                    .unwrap_or_default()
            } else {
                s.loc.replicas.clone()
            };
            if replicas.is_empty() {
                // A replica dirsvc no longer lists: cannot be asked.
                held.entry(id).or_default().1 = true;
            }
            for p in replicas {
                by_peer.entry(p.id).or_insert_with(|| (p, Vec::new())).1.push(id);
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
                            held.entry(*id).or_default().0 = true;
                        }
                    }
                }
                Err(e) => {
                    debug!(error = %e, "cannot ask a replica for its chunks; assuming it holds them");
                    for id in ids {
                        held.entry(id).or_default().1 = true;
                    }
                }
            }
        }
        // Every chunk confirmed (or about to be stored again): the commit
        // may report them held as of this check.
        if held.values().all(|(confirmed, unknown)| *confirmed || !*unknown) {
            st.held_since = Some(asked_at);
        }
        for (id, (confirmed, unknown)) in held {
            if !confirmed && !unknown {
                self.restore_gone(st, id).await?;
            }
        }
        Ok(())
    }

    /// Stores again every pending block that names the collected chunk
    /// `gone`, from the plaintext in the block cache, and waits for those
    /// uploads (a failed one leaves its data dirty).
    ///
    /// Errors: `EIO` if no pending block names it or the plaintext is no
    /// longer cached.
    pub(super) async fn restore_gone(
        self: &Arc<Self>,
        st: &mut FileState,
        gone: common::ChunkId,
    ) -> Result<()> {
        let pending: Vec<(u64, u64)> = st
            .buf
            .stored_pending()
            .into_iter()
            .filter(|(_, _, s)| s.loc.chunk == gone)
            .map(|(i, g, _)| (i, g))
            .collect();
        if pending.is_empty() {
            return Err(Error::Upload(format!(
                "dirsvc says chunk {gone} is gone, but no pending block names it"
            )));
        }
        let Some(data) = self.cache.get(&gone) else {
            let idx = pending[0].0;
            error!(ino = %st.ino, block = idx, chunk = %gone, "an uncommitted block was garbage-collected and is no longer cached");
            return Err(Error::Upload(format!("block {idx} was garbage-collected before it was committed")));
        };
        for (idx, gen) in pending {
            warn!(ino = %st.ino, block = idx, chunk = %gone, "uncommitted block was garbage-collected; storing it again");
            for u in st.buf.again(idx, gen, data.clone()) {
                self.spawn_upload(st, u);
            }
        }
        self.wait_uploads(st).await;
        st.mark_uncommitted();
        Ok(())
    }

    /// Seals again, under the newest key epoch, every pending block this
    /// client stored under an older one (dirsvc answered `StaleEpoch {
    /// current }`): the keyring is reloaded first if this client does not
    /// know epoch `current` yet; plaintext not in the cache is fetched
    /// without the lock. Shared blocks keep their epoch (dirsvc accepts
    /// those). A newer write to such a block replaces it anyway.
    ///
    /// Errors: those of [`Fs::reload_keys`] (a removed member's mount can
    /// no longer write); fetch errors.
    pub(super) async fn reseal_stale<'a>(
        self: &Arc<Self>,
        f: &'a OpenFile,
        mut st: Guard<'a>,
        current: u32,
    ) -> (Guard<'a>, Result<()>) {
        let mut keys = self.keys();
        if keys.newest() < current {
            match self.reload_keys(keys.newest()).await {
                Ok(k) => keys = k,
                Err(e) => return (st, Err(e)),
            }
        }
        let newest = keys.newest();
        let old: Vec<(u64, u64, BlockLoc)> = st
            .buf
            .stored_pending()
            .into_iter()
            .filter(|(_, _, s)| s.stored_here() && s.loc.epoch < newest)
            .map(|(i, g, s)| (i, g, s.loc.clone()))
            .collect();
        if old.is_empty() {
            let e = Error::Upload(format!(
                "dirsvc says key epoch {current} is the newest, but no pending block is older than {newest}"
            ));
            return (st, Err(e));
        }
        info!(ino = %st.ino, blocks = old.len(), epoch = newest, "blocks sealed under an old key epoch; sealing them again under the newest");
        let mut plain = Vec::new();
        let mut missing = Vec::new();
        for (idx, gen, loc) in old {
            match self.cache.get(&loc.chunk) {
                Some(d) => plain.push((idx, gen, d)),
                None => missing.push((idx, gen, loc)),
            }
        }
        if !missing.is_empty() {
            let ino = st.ino;
            drop(st);
            let r =
                futures::future::try_join_all(missing.iter().map(|(_, _, loc)| self.fetch_block(ino, loc)))
                    .await;
            st = f.state.lock().await;
            match r {
                Ok(blocks) => plain.extend(missing.into_iter().zip(blocks).map(|((i, g, _), d)| (i, g, d))),
                Err(e) => return (st, Err(e)),
            }
        }
        for (idx, gen, data) in plain {
            for u in st.buf.again(idx, gen, data) {
                self.spawn_upload(&mut st, u);
            }
        }
        self.wait_uploads(&mut st).await;
        st.mark_uncommitted();
        (st, Ok(()))
    }
}
