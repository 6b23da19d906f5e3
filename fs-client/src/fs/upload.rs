//! Storing blocks: the upload tasks the write buffer asks for (each waits
//! for an upload slot and reports to its file's result channel); seal a
//! block, place it on R peers (dirsvc's placement, or the up peers with the
//! most room when that cannot help), put it on them in parallel, and
//! classify what went wrong when it could not be stored. Blocks are sealed
//! in the segmented format v3 (64 KiB segments, docs/FORMATS.md) so
//! random reads can fetch single segments.

use super::buffer::{Finished, Upload};
use super::{lock, FileState, Fs, Stored, UploadResult, Uploaded, PEER_FAILURE_MEMORY};
use crate::cache::Block;
use crate::error::{Error, Result};
use common::codec;
use common::rpc::dir::{BlockLoc, DirError, PeerState, StoredChunk, INLINE_MAX_LEN};
use common::rpc::peer::PeerError;
use common::rpc::PeerLoc;
use common::InodeId;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tracing::{debug, info, warn};

/// Longest time one block's upload waits for dirsvc to list a live peer
/// (seconds: 10), the window in which peers heartbeat again after a dirsvc
/// restart (every 2 s, after a reconnect backoff), while fewer than the
/// minimum replicas are stored. Past it the write fails with EIO.
pub(super) const NO_LIVE_PEER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a block waiting for a live peer asks dirsvc again (1 s).
const NO_LIVE_PEER_STEP: std::time::Duration = std::time::Duration::from_secs(1);

/// What sealing adds to a block of one segment (v3: header and the
/// segment's tag, 60 bytes): a block 0 of up to `INLINE_MAX_LEN` minus this
/// (4,100 bytes) is kept inline.
const INLINE_SEAL_OVERHEAD: usize = codec::HEADER_LEN_V3 + codec::TAG_LEN;

/// Seals `plain` as one chunk under `key` of `epoch`: segmented (v3) so
/// random reads fetch 64 KiB segments, not blocks; v2 only when a test
/// asks for the older format.
///
/// Errors: the codec's.
fn seal_block(key: &common::keys::SubKey, epoch: u32, plain: &[u8], v2: bool) -> Result<codec::SealedChunk> {
    Ok(if v2 { codec::seal(key, epoch, plain)? } else { codec::seal_segmented(key, epoch, plain)? })
}

/// How the peers asked to store a block answered, for the errno.
#[derive(Default)]
struct Tally {
    /// Refusals for lack of room (a peer's `NoSpace`, dirsvc's
    /// `PeersFull`, a listed peer without room).
    full: usize,
    /// Peers that could not be reached.
    unreachable: usize,
    /// Any other failure (a refusal, dirsvc failing).
    other: usize,
}

impl Fs {
    /// Starts the upload the write buffer asked for: a task that waits for
    /// an upload slot, stores the block and reports the result through the
    /// file's result channel (applied by [`Fs::reap`] and
    /// [`Fs::wait_uploads`]). The returned receiver fires once the upload
    /// holds its slot (the write path's backpressure).
    pub(super) fn spawn_upload(self: &Arc<Self>, st: &mut FileState, u: Upload) -> oneshot::Receiver<()> {
        let (started_tx, started) = oneshot::channel();
        // In the backlog from here (waiting for a slot) until stored or
        // failed.
        let backlog = crate::telemetry::BacklogGuard::new(u.data.len());
        let report = Report { tx: st.results_tx.clone(), idx: u.idx, gen: u.gen, sent: false };
        let ino = st.ino;
        if self.goes_inline(u.idx, u.data.len()) {
            // A small file's block 0 goes inline: sealed right here, no
            // task, no upload slot, no peer (the commit carries it).
            let _ = started_tx.send(());
            if st.buf.upload_started(u.idx, u.gen) {
                let r = self.keep_inline(ino, u.idx, u.data);
                drop(backlog);
                report.send(r);
            } else {
                report.skip();
            }
            return started;
        }
        let me = self.clone();
        let file = st.me.clone();
        tokio::spawn(async move {
            let Ok(permit) = me.uploads.clone().acquire_owned().await else { return };
            let _ = started_tx.send(());
            // A newer write may have replaced the data while this waited:
            // then there is nothing to store (checked when the state is
            // free; otherwise the result is dropped when it reports).
            let file = file.upgrade();
            let wanted = match file.as_ref().map(|f| f.state.try_lock()) {
                Some(Ok(st)) => st.buf.upload_started(u.idx, u.gen),
                _ => true,
            };
            if !wanted {
                report.skip();
                return;
            }
            let r = me.upload(ino, u.idx, u.data, permit).await;
            let counter = if r.is_ok() {
                crate::telemetry::BLOCKS_UPLOADED
            } else {
                crate::telemetry::BLOCK_UPLOAD_FAILURES
            };
            metrics::counter!(counter).increment(1);
            drop(backlog);
            report.send(r);
        });
        started
    }

    /// Whether blocks are sealed in the older unsegmented format (a test
    /// switch; always false in the product).
    fn seal_v2(&self) -> bool {
        #[cfg(test)]
        return self.seal_v2.load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(test))]
        false
    }

    /// Whether block `idx` of `len` plaintext bytes is kept in its layout
    /// entry rather than on peers: a small file's block 0, unless the
    /// mount was told not to (`--no-inline`).
    fn goes_inline(&self, idx: u64, len: usize) -> bool {
        idx == 0 && self.config.inline && len + INLINE_SEAL_OVERHEAD <= INLINE_MAX_LEN as usize
    }

    /// Seals block `idx` of `ino` (a small block 0) under the newest key
    /// epoch on this thread and keeps it inline, or, if it turns out too
    /// long for that, reports it as not stored (the callers only hand
    /// blocks that fit, [`Fs::goes_inline`]).
    ///
    /// Errors: sealing's, or the MAC's key.
    fn keep_inline(&self, ino: InodeId, idx: u64, data: Block) -> Result<Uploaded> {
        let keys = self.keys();
        let epoch = keys.newest();
        let sealed = seal_block(&keys.newest_keys().chunk, epoch, &data, self.seal_v2())?;
        let len = sealed.bytes.len() as u32;
        if len > INLINE_MAX_LEN {
            return Err(Error::Upload(format!(
                "block of {} bytes sealed to {len}, too long to keep inline",
                data.len()
            )));
        }
        let mac = self.entry_mac(&keys, ino, idx, sealed.id, len, epoch)?;
        Ok(self.inline_chunk(ino, data, sealed, epoch, mac))
    }

    /// The stored form of a block kept in its layout entry: the commit
    /// carries the sealed bytes to dirsvc, no peer holds them.
    fn inline_chunk(
        &self,
        ino: InodeId,
        data: Block,
        sealed: codec::SealedChunk,
        epoch: u32,
        mac: [u8; 32],
    ) -> Uploaded {
        debug!(ino = %ino, chunk = %sealed.id, len = sealed.bytes.len(), "block kept inline");
        self.cache.insert(sealed.id, data);
        Uploaded {
            stored: StoredChunk {
                id: sealed.id,
                len: sealed.bytes.len() as u32,
                replicas: Vec::new(),
                epoch,
                mac,
                inline: Some(sealed.bytes),
            },
            locs: Vec::new(),
        }
    }

    /// Seals one block under the newest key epoch and stores it on R
    /// distinct peers (at least the degraded-write minimum); the result
    /// carries the layout entry's MAC for block `idx` of `ino`.
    ///
    /// Errors, by the policy of docs/SEMANTICS.md ("Errors"):
    /// [`Error::NoSpace`] (ENOSPC) when too few replicas were stored and
    /// every peer that answered refused for lack of room (peers that could
    /// not be reached do not count: some down and the rest full is
    /// ENOSPC); [`Error::Upload`] (EIO) when no peer could be reached or a
    /// peer failed otherwise.
    pub(super) async fn upload(
        self: Arc<Self>,
        ino: InodeId,
        idx: u64,
        data: Block,
        _permit: OwnedSemaphorePermit,
    ) -> Result<Uploaded> {
        if self.goes_inline(idx, data.len()) {
            return self.keep_inline(ino, idx, data);
        }
        let keys = self.keys();
        let epoch = keys.newest();
        let key = keys.newest_keys().chunk.clone();
        let v2 = self.seal_v2();
        let sealed = if data.len() <= super::CRYPT_HERE_MAX {
            seal_block(&key, epoch, &data, v2)?
        } else {
            let plain = data.clone();
            tokio::task::spawn_blocking(move || seal_block(&key, epoch, &plain, v2))
                .await
                .map_err(|e| Error::Upload(format!("sealing task failed: {e}")))??
        };
        // One copy of the sealed chunk, shared by every replica's put.
        let (chunk, bytes) = (sealed.id, common::rpc::peer::Bytes::from(sealed.bytes));
        let len = bytes.len() as u64;
        let mac = self.entry_mac(&keys, ino, idx, chunk, len as u32, epoch)?;
        let want = self.replicas as usize;
        let min = self.min_replicas() as usize;
        let mut failed: Vec<common::PeerId> = Vec::new();
        let mut stored: Vec<PeerLoc> = Vec::new();
        let mut errors = Vec::new();
        let mut tally = Tally::default();
        let mut no_peer_waited = std::time::Duration::ZERO;
        for attempt in 0..self.config.upload_attempts.max(1) {
            // The second attempt goes at once (to other peers); later ones
            // back off, unless every failure so far was a full peer (waiting
            // a second does not make room).
            if attempt > 1 && (tally.unreachable > 0 || tally.other > 0) {
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
            let skip: Vec<common::PeerId> =
                stored.iter().map(|p| p.id).chain(failed.iter().copied()).collect();
            let (targets, full_seen) = loop {
                let (targets, full) = match self.place(len, &skip).await {
                    Ok((t, full)) => (t.into_iter().take(want - stored.len()).collect::<Vec<_>>(), full),
                    Err(e) => break (Err(e), false),
                };
                // Too few live peers for an acknowledged write, full or
                // not: dirsvc has just restarted and the peers' next
                // heartbeats (every 2 s) are still to come, or the peers are
                // restarting. Wait for them rather than failing the write
                // at once. Once `min` replicas are stored, a missing live
                // peer is not worth a wait: the block is stored degraded
                // and repair adds the rest.
                if targets.is_empty() && !full && stored.len() < min && no_peer_waited < NO_LIVE_PEER_WAIT {
                    if no_peer_waited.is_zero() {
                        info!(ino = %ino, block = idx, "no live peer listed; waiting for peers to heartbeat");
                    }
                    tokio::time::sleep(NO_LIVE_PEER_STEP).await;
                    no_peer_waited += NO_LIVE_PEER_STEP;
                    continue;
                }
                break (Ok(targets), full);
            };
            let targets = match targets {
                Ok(t) => t,
                Err(e) => {
                    tally.other += 1;
                    errors.push(e.to_string());
                    continue;
                }
            };
            if full_seen {
                tally.full += 1;
            }
            if targets.is_empty() {
                if stored.len() >= min {
                    // No other live peer to take a replica now: degraded.
                    break;
                }
                errors.push(if full_seen {
                    "no live peer has room for the block".to_string()
                } else {
                    "no live peer can take the block".to_string()
                });
                continue;
            }
            let puts = targets.iter().map(|p| self.peers.put(p, chunk, bytes.clone()));
            for (p, r) in targets.iter().zip(futures::future::join_all(puts).await) {
                match r {
                    Ok(()) => stored.push(p.clone()),
                    Err(e) => {
                        failed.push(p.id);
                        let full = matches!(e, Error::Peer(PeerError::NoSpace));
                        lock(&self.peer_failures).insert(p.id, (std::time::Instant::now(), full));
                        match e {
                            Error::Peer(PeerError::NoSpace) => tally.full += 1,
                            Error::Rpc { .. } => tally.unreachable += 1,
                            _ => tally.other += 1,
                        }
                        debug!(ino = %ino, block = idx, peer = %p.id, addr = %p.addr, error = %e, "put of a block replica failed");
                        errors.push(format!("{}: {e}", p.addr));
                    }
                }
            }
            if stored.len() >= want {
                break;
            }
        }
        if stored.len() < min {
            let what = format!(
                "block {idx} of inode {ino} stored on {} of {want} peers, {min} needed ({})",
                stored.len(),
                errors.join("; ")
            );
            return Err(if tally.full > 0 && tally.other == 0 {
                Error::NoSpace(what)
            } else if tally.full == 0 && tally.other == 0 {
                Error::Upload(format!("no peer reachable: {what}"))
            } else {
                Error::Upload(what)
            });
        }
        if stored.len() < want {
            info!(ino = %ino, block = idx, stored = stored.len(), want, "block stored degraded; repair will add the missing replicas");
        }
        debug!(ino = %ino, block = idx, chunk = %chunk, "block stored");
        if data.len() <= super::CACHE_WRITTEN_MAX {
            self.cache.insert(chunk, data);
        }
        Ok(Uploaded {
            stored: StoredChunk {
                id: chunk,
                len: len as u32,
                replicas: stored.iter().map(|p| p.id).collect(),
                epoch,
                mac,
                inline: None,
            },
            locs: stored,
        })
    }

    /// Peers whose put failed within [`PEER_FAILURE_MEMORY`], and whether
    /// any of them failed for lack of room: skipped by placement for other
    /// blocks too, so a dead peer costs one failed put, not one per block,
    /// until dirsvc notices it is gone.
    fn recently_failed(&self) -> (Vec<common::PeerId>, bool) {
        let mut f = lock(&self.peer_failures);
        f.retain(|_, (at, _)| at.elapsed() < PEER_FAILURE_MEMORY);
        (f.keys().copied().collect(), f.values().any(|(_, full)| *full))
    }

    /// Replicas needed to acknowledge a write (see [`FsConfig::min_replicas`]).
    ///
    /// [`FsConfig::min_replicas`]: super::FsConfig::min_replicas
    pub(super) fn min_replicas(&self) -> u32 {
        self.config.min_replicas.unwrap_or(self.replicas / 2 + 1).clamp(1, self.replicas.max(1))
    }

    /// Peers to store one more copy of a chunk of `len` bytes on, excluding
    /// `skip` (peers that hold it or just failed it) and peers that failed
    /// recently: dirsvc's placement, or, when that cannot help (fewer than
    /// R peers up or with room, or it names only skipped peers), the up
    /// peers with room, most free space first. The flag says whether some
    /// peer was passed over for lack of room (dirsvc said so, a listed peer
    /// reports too little free space, or it refused a put for lack of room
    /// a moment ago).
    ///
    /// Errors: dirsvc's, other than `NoPeers` and `PeersFull`.
    async fn place(&self, len: u64, skip: &[common::PeerId]) -> Result<(Vec<PeerLoc>, bool)> {
        let (recent, recent_full) = self.recently_failed();
        let fresh = |p: &PeerLoc| !skip.contains(&p.id) && !recent.contains(&p.id);
        let mut full = recent_full;
        if let Some(placed) = self.placements.take(len, |p| fresh(p)) {
            return Ok((placed, full));
        }
        match self.dir.call(|c, ctx| async move { c.placement(ctx, 1, len).await }).await {
            Ok(mut sets) if !sets.is_empty() => {
                let set = sets.swap_remove(0);
                let placed: Vec<PeerLoc> = set.iter().filter(|p| fresh(p)).cloned().collect();
                if !placed.is_empty() {
                    if placed.len() == set.len() {
                        self.placements.keep(set, len);
                    }
                    return Ok((placed, full));
                }
            }
            // `Limit`: this client holds its share of promised space;
            // choosing peers itself stores the block all the same.
            Ok(_) => debug!("placement named only peers to skip"),
            Err(Error::Dir(e @ (DirError::NoPeers { .. } | DirError::Limit(_)))) => {
                debug!(error = %e, "placement refused")
            }
            Err(Error::Dir(DirError::PeersFull { .. })) => full = true,
            Err(e) => return Err(e),
        }
        let mut peers = self.dir.call(|c, ctx| async move { c.list_peers(ctx).await }).await?;
        debug!(
            listed = ?peers.iter().map(|p| (p.loc.id, p.state, p.usage.free_bytes)).collect::<Vec<_>>(),
            ?recent,
            ?skip,
            "placement could not help; choosing among the listed peers"
        );
        peers.retain(|p| p.state == PeerState::Up && fresh(&p.loc));
        full |= peers.iter().any(|p| p.usage.free_bytes < len);
        peers.retain(|p| p.usage.free_bytes >= len);
        peers.sort_by_key(|p| std::cmp::Reverse(p.usage.free_bytes));
        Ok((peers.into_iter().map(|p| p.loc).collect(), full))
    }

    /// Applies a finished upload to the buffer. A failure keeps the data
    /// for the next flush and is charged to the file's writers; the result
    /// of an upload a newer write overtook is dropped.
    pub(super) fn apply_upload(st: &mut FileState, r: UploadResult) {
        let UploadResult { idx, gen, result, at } = r;
        match result {
            Ok(u) => {
                let stored = Stored {
                    loc: BlockLoc {
                        index: idx,
                        chunk: u.stored.id,
                        len: u.stored.len,
                        replicas: u.locs,
                        epoch: u.stored.epoch,
                        mac: u.stored.mac,
                        inline: u.stored.inline,
                    },
                    commit_replicas: None,
                };
                // An inline chunk is held by the commit itself.
                let on_peers = stored.loc.inline.is_none();
                if st.buf.upload_finished(idx, gen, Ok(stored)) == Finished::Stored {
                    st.mark_uncommitted();
                    if on_peers {
                        st.held_since = Some(st.held_since.map_or(at, |h| h.min(at)));
                    }
                }
            }
            Err(e) => {
                if st.buf.upload_finished(idx, gen, Err(())) != Finished::Failed {
                    debug!(ino = %st.ino, block = idx, error = %e, "upload of data a newer write replaced failed");
                    return;
                }
                if st.failure.is_none() {
                    warn!(ino = %st.ino, block = idx, error = %e, "block upload failed; the data stays buffered and is retried");
                } else {
                    debug!(ino = %st.ino, block = idx, error = %e, "block upload failed again");
                }
                st.fail_writers(e);
            }
        }
    }

    /// Applies finished uploads without waiting for running ones.
    pub(super) fn reap(&self, st: &mut FileState) {
        while let Ok(r) = st.results.try_recv() {
            Self::apply_upload(st, r);
        }
    }

    /// Waits (keeping the lock: uploads do not need it) until every upload
    /// the buffer waits for has reported, applying the results.
    pub(super) async fn wait_uploads(&self, st: &mut FileState) {
        self.reap(st);
        while st.buf.uploads_pending() {
            match st.results.recv().await {
                Some(r) => Self::apply_upload(st, r),
                None => break,
            }
        }
    }
}

/// Blocks up to this many bytes may reuse a recent placement (256 KiB):
/// small files then cost no placement round trip each, while big blocks
/// still spread over the cluster one placement at a time.
const REUSE_MAX_BLOCK: u64 = 256 << 10;

/// How long a kept placement may be reused (1 s).
const REUSE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Most bytes of blocks one kept placement takes (16 MiB): a burst of
/// small files lands on one peer set for at most a second or 16 MiB.
const REUSE_BYTES: u64 = 16 << 20;

/// The last placement dirsvc gave for a small block, reused for the small
/// blocks that follow within [`REUSE_FOR`] and [`REUSE_BYTES`] (one
/// placement round trip per burst of small files instead of one per file).
/// Peers that fail a put are avoided by the caller's filter, and a set
/// with any such peer is not reused.
#[derive(Default)]
pub(super) struct PlacementReuse {
    last: std::sync::Mutex<Option<(Vec<PeerLoc>, std::time::Instant, u64)>>,
}

impl PlacementReuse {
    /// The kept peer set for a block of `len` bytes if it may be reused and
    /// every peer in it passes `usable`; counts `len` against the set.
    fn take(&self, len: u64, usable: impl Fn(&PeerLoc) -> bool) -> Option<Vec<PeerLoc>> {
        if len > REUSE_MAX_BLOCK {
            return None;
        }
        let mut g = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (set, at, used) = g.as_mut()?;
        if at.elapsed() > REUSE_FOR || *used + len > REUSE_BYTES || !set.iter().all(&usable) {
            *g = None;
            return None;
        }
        *used += len;
        Some(set.clone())
    }

    /// Keeps `set`, just placed for a block of `len` bytes, for reuse.
    fn keep(&self, set: Vec<PeerLoc>, len: u64) {
        if len <= REUSE_MAX_BLOCK {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((set, std::time::Instant::now(), len));
        }
    }
}

/// Sends an upload's result to its file's state; dropped unsent (the task
/// ended before it could upload), it reports a failure, so the buffer
/// never waits for an upload that will not report.
struct Report {
    tx: mpsc::UnboundedSender<UploadResult>,
    idx: u64,
    gen: u64,
    sent: bool,
}

impl Report {
    /// Reports nothing: the buffer no longer waits for this upload.
    fn skip(mut self) {
        self.sent = true;
    }

    fn send(mut self, result: Result<Uploaded>) {
        self.sent = true;
        let _ = self.tx.send(UploadResult {
            idx: self.idx,
            gen: self.gen,
            result,
            at: std::time::Instant::now(),
        });
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !self.sent {
            let result = Err(Error::Upload("the upload task ended before it stored the block".into()));
            let _ = self.tx.send(UploadResult {
                idx: self.idx,
                gen: self.gen,
                result,
                at: std::time::Instant::now(),
            });
        }
    }
}
