//! The client's session with dirsvc: its lease, the open marks that keep
//! unlinked files alive while this client has them open, the locks it
//! holds, and reclaiming all of that when dirsvc forgets the session (a
//! dirsvc restart, or a lease that ran out while the network was down).
//!
//! The session is opened lazily by the first call that needs it and kept
//! alive by [`Fs::keep_session`]. Every session-bound call goes through
//! [`Fs::with_session`], which reopens the session with a reclaim of what
//! this client holds and retries when dirsvc answers `NoSession` (a few
//! times: during a failover a reclaim can race the new leader's grace
//! period). A reclaimed session keeps its id, so concurrent callers that
//! saw `NoSession` tell "already reclaimed" by the session's generation,
//! which every (re)open increases: one reclaim serves them all.

use super::{lock, Fs, COMMIT_BATCH};
use crate::error::{Error, Result};
use common::rpc::dir::{Attr, DirError, Lock, SessionGrant, SessionId, SessionOpen};
use common::InodeId;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// Lease assumed until dirsvc grants one (15 s, dirsvc's default), in ms.
const DEFAULT_LEASE_MS: u64 = 15_000;

/// Reclaims one session-bound call may trigger before its `NoSession` is
/// returned (as EIO): a failover can end the new leader's grace period
/// between a reclaim and the retried call, which then needs another.
const RECLAIMS_PER_CALL: u32 = 3;

/// Session state of one [`Fs`].
pub(crate) struct SessionState {
    /// Label sent to dirsvc (`host pid=… mountpoint`).
    label: String,
    /// The current session, once opened.
    id: tokio::sync::Mutex<Option<SessionId>>,
    /// How many times a session was (re)opened; changed only while `id`
    /// is locked.
    generation: AtomicU64,
    /// The lease dirsvc granted, in milliseconds.
    lease_ms: AtomicU64,
    /// Most entries one `commit_layout` may carry at this dirsvc, from the
    /// last session grant (until one arrives: [`COMMIT_BATCH`]).
    max_commit_entries: AtomicU64,
    /// Handles open per inode in this client; an inode is marked open at
    /// dirsvc while its count is above zero. Read by a reclaim, which may
    /// run inside a mark RPC, so it is only ever locked briefly.
    marks: std::sync::Mutex<HashMap<InodeId, usize>>,
    /// Serializes the mark and unmark RPCs of each inode so they reach
    /// dirsvc in order (a release still in flight must not undo the next
    /// open's mark); calls for different inodes run side by side, so the
    /// release of one file never delays the open or create of the next.
    mark_calls: std::sync::Mutex<HashMap<InodeId, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    /// Locks granted to this client, as dirsvc holds them (POSIX range
    /// semantics applied locally too), for reclaim.
    pub(crate) locks: std::sync::Mutex<Vec<Lock>>,
}

impl SessionState {
    /// A state with no session yet; `label` identifies this client in
    /// dirsvc's logs.
    pub(crate) fn new(label: String) -> Self {
        SessionState {
            label,
            id: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            lease_ms: AtomicU64::new(DEFAULT_LEASE_MS),
            max_commit_entries: AtomicU64::new(COMMIT_BATCH as u64),
            marks: std::sync::Mutex::new(HashMap::new()),
            mark_calls: std::sync::Mutex::new(HashMap::new()),
            locks: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// Block entries per `commit_layout`: this client's [`COMMIT_BATCH`], or
/// dirsvc's limit `server` if lower (at least 1).
pub(crate) fn commit_batch_size(server: u64) -> usize {
    usize::try_from(server).unwrap_or(usize::MAX).clamp(1, COMMIT_BATCH)
}

impl Fs {
    /// Block entries per `commit_layout` now ([`commit_batch_size`] of the
    /// last session grant's limit).
    pub(crate) fn commit_batch(&self) -> usize {
        commit_batch_size(self.session.max_commit_entries.load(Ordering::Relaxed))
    }

    /// The current session id, opening a session first if there is none.
    ///
    /// Errors: transport errors from dirsvc.
    pub(crate) async fn session_id(&self) -> Result<SessionId> {
        Ok(self.session_ticket().await?.0)
    }

    /// The current session id and its generation, opening a session first
    /// if there is none.
    ///
    /// Errors: transport errors from dirsvc.
    async fn session_ticket(&self) -> Result<(SessionId, u64)> {
        let mut id = self.session.id.lock().await;
        if let Some(s) = *id {
            return Ok((s, self.session.generation.load(Ordering::Acquire)));
        }
        let grant = self.open_session(None).await?;
        *id = Some(grant.id);
        Ok((grant.id, self.session.generation.fetch_add(1, Ordering::AcqRel) + 1))
    }

    /// Opens a session at dirsvc; with `reclaim`, re-registers every open
    /// mark and lock this client holds under the old id.
    pub(super) async fn open_session(&self, reclaim: Option<SessionId>) -> Result<SessionGrant> {
        let (open_inodes, locks) = match reclaim {
            Some(_) => {
                let marks: Vec<InodeId> = lock(&self.session.marks).keys().copied().collect();
                (marks, lock(&self.session.locks).clone())
            }
            None => (Vec::new(), Vec::new()),
        };
        let open = SessionOpen { label: self.session.label.clone(), reclaim, open_inodes, locks };
        let grant = self
            .dir
            .call(|c, ctx| {
                let o = open.clone();
                async move { c.open_session(ctx, o).await }
            })
            .await?;
        self.session.lease_ms.store(grant.lease_ms.max(300), Ordering::Relaxed);
        self.session.max_commit_entries.store(u64::from(grant.max_commit_entries), Ordering::Relaxed);
        match reclaim {
            None => info!(session = %grant.id, lease_ms = grant.lease_ms, "session opened"),
            Some(old) => info!(
                session = %grant.id, old = %old, inodes = open.open_inodes.len(), locks = open.locks.len(),
                "session reclaimed"
            ),
        }
        for ino in &grant.lost_inodes {
            error!(ino = %ino, "an open file was deleted while dirsvc did not know this client; its handles are stale");
        }
        if !grant.lost_locks.is_empty() {
            let mut held = lock(&self.session.locks);
            for l in &grant.lost_locks {
                error!(ino = %l.ino, start = l.start, end = l.end, pid = l.pid, "a lock was taken by another client while dirsvc did not know this client; it is no longer held");
                held.retain(|h| h != l);
            }
        }
        Ok(grant)
    }

    /// Replaces the session `stale` of generation `generation` (dirsvc
    /// said `NoSession`) by a reclaimed one, unless another task already
    /// did (the generation moved on).
    ///
    /// Errors: dirsvc's and transport errors of the reclaim.
    async fn reopen_session(&self, stale: SessionId, generation: u64) -> Result<()> {
        let mut id = self.session.id.lock().await;
        if self.session.generation.load(Ordering::Acquire) != generation {
            return Ok(());
        }
        warn!(session = %stale, "dirsvc no longer knows this client's session; reclaiming opens and locks");
        let grant = self.open_session(Some(stale)).await?;
        *id = Some(grant.id);
        self.session.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Runs `f` with the session id; if dirsvc says the session is gone,
    /// reclaims it and runs `f` again (at most [`RECLAIMS_PER_CALL`]
    /// times).
    ///
    /// Errors: `f`'s, and the reclaim's.
    pub(crate) async fn with_session<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(SessionId) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut reclaims = 0;
        loop {
            let (id, generation) = self.session_ticket().await?;
            match f(id).await {
                Err(Error::Dir(DirError::NoSession)) if reclaims < RECLAIMS_PER_CALL => {
                    reclaims += 1;
                    self.reopen_session(id, generation).await?;
                }
                r => return r,
            }
        }
    }

    /// Keeps the session alive: renews the lease every third of it, and
    /// reclaims the session if dirsvc lost it. Runs until the task is
    /// dropped.
    pub async fn keep_session(&self) {
        loop {
            let lease = self.session.lease_ms.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(lease / 3)).await;
            let r = self
                .with_session(|s| async move {
                    self.dir.call(|c, ctx| async move { c.renew_session(ctx, s).await }).await
                })
                .await;
            match r {
                Ok(renewal) if renewal.revocations != self.dir.tls().revocations().version() => {
                    self.sync_revocations().await;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "session lease renewal failed; retrying"),
            }
        }
    }

    /// Fetches dirsvc's revocation list and enforces it: connections to
    /// newly revoked peers are dropped and their certificates refused from
    /// now on. Failures are logged; the next renewal tries again.
    async fn sync_revocations(&self) {
        match self.dir.call(|c, ctx| async move { c.revocations(ctx).await }).await {
            Ok(list) => {
                for node in self.dir.tls().revocations().replace(list.version, list.nodes) {
                    self.peers.forget_node(node);
                    warn!(%node, "node revoked by dirsvc; refused from now on");
                }
            }
            Err(e) => debug!(error = %e, "fetching the revocation list failed"),
        }
    }

    /// Ends the session at dirsvc (on unmount): its locks and open marks go
    /// at once instead of at lease expiry.
    pub async fn close_session(&self) {
        let id = self.session.id.lock().await.take();
        if let Some(s) = id {
            match self.dir.call(|c, ctx| async move { c.close_session(ctx, s).await }).await {
                Ok(()) => info!(session = %s, "session closed"),
                Err(e) => {
                    warn!(session = %s, error = %e, "closing the session failed; it ends at lease expiry")
                }
            }
        }
    }

    /// Waits for `ino`'s turn to send a mark or unmark RPC; the turn lasts
    /// as long as the returned guard.
    async fn mark_turn(&self, ino: InodeId) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut calls = lock(&self.session.mark_calls);
            if calls.len() >= 4096 {
                // Forget the turns nobody holds or waits for.
                calls.retain(|_, t| std::sync::Arc::strong_count(t) > 1);
            }
            calls.entry(ino).or_default().clone()
        };
        turn.lock_owned().await
    }

    /// Counts a new handle on `ino`; the first one marks it open at dirsvc
    /// (so unlinking its last name keeps the inode until the last handle
    /// here is released) and also returns the first page of its layout,
    /// from the same round trip (`open_layout`, at most 4096 blocks).
    /// `None`: the inode was marked already; the caller loads the layout
    /// itself.
    ///
    /// Errors: as `open_layout` (`ENOENT`, `EINVAL` for a non-file; the
    /// mark is not taken then).
    pub(crate) async fn mark_open_loading(
        &self,
        ino: InodeId,
    ) -> Result<Option<common::rpc::dir::LayoutPage>> {
        let _turn = self.mark_turn(ino).await;
        let page = if lock(&self.session.marks).contains_key(&ino) {
            None
        } else {
            let page = self
                .with_session(|s| async move {
                    self.dir.call(|c, ctx| async move { c.open_layout(ctx, s, ino, 4096).await }).await
                })
                .await?;
            Some(page)
        };
        *lock(&self.session.marks).entry(ino).or_insert(0) += 1;
        Ok(page)
    }

    /// Applies the mutation `op(session)` that makes a file and marks it
    /// open by this mount's session at dirsvc (`CreateOpen`), and counts
    /// the mark here as [`Fs::mark_open_loading`] does. Returns the new
    /// attributes. One request id for every attempt, also after a session
    /// reclaim: the first attempt may have made the file (dirsvc replays
    /// the create and marks it open under the new session).
    ///
    /// Errors: the mutation's.
    pub(crate) async fn mark_open_with(
        &self,
        op: impl Fn(SessionId) -> common::rpc::dir::Mutation,
    ) -> Result<Attr> {
        // A new inode: no mark or release of it can be in flight.
        let request = self.dir.next_request();
        let attr = self
            .with_session(|s| {
                let op = op(s);
                async move { self.dir.mutate_as(request, op).await?.attr().map_err(Error::Dir) }
            })
            .await?;
        *lock(&self.session.marks).entry(attr.ino).or_insert(0) += 1;
        Ok(attr)
    }

    /// Drops a handle on `ino`; the last one unmarks it at dirsvc, which
    /// frees the inode if it was unlinked meanwhile and no other client holds
    /// it open. Failures are logged: the mark then ends with the session.
    pub(crate) async fn unmark_open(&self, ino: InodeId) {
        let _turn = self.mark_turn(ino).await;
        {
            let mut marks = lock(&self.session.marks);
            let Some(n) = marks.get_mut(&ino) else { return };
            *n -= 1;
            if *n > 0 {
                return;
            }
            marks.remove(&ino);
        }
        let r = self
            .with_session(|s| async move {
                self.dir.call(|c, ctx| async move { c.release_file(ctx, s, ino).await }).await
            })
            .await;
        if let Err(e) = r {
            warn!(ino = %ino, error = %e, "could not release the open mark; it ends with the session");
        } else {
            debug!(ino = %ino, "open mark released");
        }
    }
}

/// What a change seen by dirsvc asks of the kernel's caches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalidation {
    /// An inode whose attributes and cached pages are stale.
    pub ino: InodeId,
    /// A directory entry `(parent, plaintext name)` that is stale.
    pub entry: Option<(InodeId, Vec<u8>)>,
}

impl Fs {
    /// The changes dirsvc recorded after sequence number `after` (0: none,
    /// just the current number), waiting up to `wait_ms` for one. Returns
    /// the invalidations, the last sequence number, and whether some changes
    /// were lost (dirsvc restarted or this client fell too far behind).
    ///
    /// Errors: transport errors.
    pub async fn poll_changes(&self, after: u64, wait_ms: u32) -> Result<(Vec<Invalidation>, u64, bool)> {
        let batch = self
            .with_session(|s| async move {
                self.dir.call(|c, ctx| async move { c.poll_changes(ctx, s, after, wait_ms).await }).await
            })
            .await?;
        let out = batch
            .changes
            .into_iter()
            .map(|c| Invalidation {
                ino: c.ino,
                // A name that does not open is not ours to invalidate.
                entry: c.entry.and_then(|(p, n)| self.name_key.open(p, &n).ok().map(|n| (p, n))),
            })
            .collect();
        Ok((out, batch.last, batch.overflow))
    }

    /// Follows dirsvc's change feed until aborted: drops what this mount
    /// caches about every inode and entry another mount changed, then hands
    /// the changes to `kernel` (run off the async workers: the mount drops
    /// the kernel's copies through `/dev/fuse`, which may wait). Each answer
    /// vouches for the cache ([`super::known`]) for a while; a failed poll
    /// withdraws that at once, an overflow (dirsvc restarted, or this mount
    /// fell behind) drops every cached answer.
    pub async fn follow_changes<K>(&self, kernel: K)
    where
        K: Fn(Vec<Invalidation>) + Clone + Send + 'static,
    {
        let mut last = 0u64;
        loop {
            let sent = std::time::Instant::now();
            match self.poll_changes(last, super::FEED_POLL_WAIT.as_millis() as u32).await {
                Ok((changes, next, overflow)) => {
                    if overflow {
                        debug!(after = last, "change feed overflowed or dirsvc restarted; caches dropped");
                        self.known.forget_all();
                    }
                    last = next;
                    for c in &changes {
                        self.known.forget(c.ino);
                        if let Some((parent, name)) = &c.entry {
                            self.known.forget_entry(*parent, name);
                        }
                    }
                    self.known.feed_answered(sent);
                    if !changes.is_empty() {
                        let k = kernel.clone();
                        let _ = tokio::task::spawn_blocking(move || k(changes)).await;
                    }
                }
                Err(e) => {
                    self.known.feed_lost();
                    debug!(error = %e, "change feed poll failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
