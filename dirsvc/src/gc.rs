//! The garbage-collection worker: gives back the space of chunks no
//! layout references.
//!
//! Every [`DirsvcConfig::gc_interval`] a round runs four steps. "Older
//! than the grace period" means older by at least `gc_grace` in whole
//! seconds, rounded so a chunk is never taken early.
//!
//! 1. **Unreferenced chunks** (overwritten or deleted data): each chunk in
//!    `chunks-unreferenced-v1` for longer than the grace period leaves the
//!    index in one transaction that re-checks its refcount is still 0,
//!    removes the chunk record and the unreferenced row, and writes a
//!    tombstone (`chunk-tombstones-v1`) listing its replicas as pending
//!    deletes ([`Store::collect_unreferenced`]).
//! 2. **Orphans** (uploaded but never committed, e.g. by a client that
//!    crashed): only once a whole grace period has passed since the term's
//!    session grace period ended (a client could not commit while no
//!    dirsvc led, so that time does not count against its uploads).
//!    Then each up peer's inventory is paged with
//!    `PeerService::list_chunks` (at most [`ORPHAN_PAGES_PER_ROUND`] pages
//!    of up to [`ORPHAN_PAGE`] per peer per round, resuming where the last
//!    round stopped; an empty page ends a pass). A chunk stored longer ago than the grace period and absent
//!    from `chunks-v1` gets a tombstone with that peer pending, in one
//!    transaction that re-checks the absence
//!    ([`Store::tombstone_orphans`]).
//! 3. **Deletes**: for every tombstone with pending peers, each pending
//!    peer that is up or suspect gets `PeerService::delete`; acknowledged
//!    ones leave the pending list (one transaction per batch). Down peers
//!    are retried on later rounds, so a peer that was away gets its deletes
//!    when it returns. A peer silent for more than twice the grace period,
//!    or no longer registered, is dropped from the pending lists: if it
//!    ever returns, step 2 finds its leftovers.
//! 4. **Expiry**: tombstones with nothing pending that are older than
//!    twice the grace period are removed.
//!
//! Each round also removes the recorded answers of `mutate` request ids
//! older than `common::rpc::dir::REQUEST_MEMORY_SECS`
//! ([`Store::expire_requests`]), in bounded transactions.
//!
//! Why tombstones: `commit_layout` refuses a tombstoned chunk with
//! `ChunkGone`. The collection transaction and a commit serialize in redb,
//! so either the commit came first (the re-check sees the reference and
//! the chunk stays) or the collection did (the commit is refused and the
//! client stores the block again). A committed layout therefore never
//! names a deleted chunk.
//!
//! Over-replicated chunks (a down peer came back after repair made new
//! copies) are left as they are: the extra copy is harmless, counts as a
//! replica again, and is deleted with the chunk once unreferenced.
//!
//! No redb transaction is held across a network call: every store step
//! runs on the blocking pool between RPCs.

use crate::error::Error;
use crate::peers::Liveness;
use crate::shared::Shared;
use crate::store::Store;
use common::time::Timestamp;
use common::{ChunkId, PeerId};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, Level};

#[cfg(doc)]
use crate::DirsvcConfig;

/// Chunks collected per store call in step 1.
pub const COLLECT_BATCH: usize = 4096;

/// Inventory entries asked per `list_chunks` call in step 2.
pub const ORPHAN_PAGE: u32 = 1000;

/// Inventory pages read per peer per round in step 2: bounds a round's
/// work; a large peer is covered over several rounds.
pub const ORPHAN_PAGES_PER_ROUND: u32 = 64;

/// Tombstones read per store call in step 3.
pub const DELETE_BATCH: usize = 4096;

/// Deletes in flight at once in step 3.
const DELETE_CONCURRENCY: usize = 16;

/// Shortest pause between rounds, whatever the configuration says.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Step-1 store calls per round at most (a safety bound; 1M chunks).
const MAX_COLLECT_CALLS: usize = 256;

/// The grace period in whole seconds, rounded up.
fn grace_secs(grace: Duration) -> i64 {
    let s = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    i64::try_from(s).unwrap_or(i64::MAX / 4)
}

/// The GC worker's state between rounds.
struct Gc {
    shared: Arc<Shared>,
    /// Where step 2 resumes on each peer.
    cursors: HashMap<PeerId, ChunkId>,
    /// When this worker first saw the term's session grace period over
    /// (clients that reclaimed can commit again from then on).
    commits_since: Option<tokio::time::Instant>,
}

impl Gc {
    /// Whether step 2 may run: a whole GC grace period has passed since
    /// the term's session grace period ended, so every upload made before
    /// the term had that long to be committed under a leader.
    fn orphans_allowed(&mut self) -> bool {
        if self.commits_since.is_none() && !self.shared.sessions.in_grace() {
            self.commits_since = Some(tokio::time::Instant::now());
        }
        self.commits_since.is_some_and(|t| t.elapsed() >= self.shared.config.gc_grace)
    }
}

/// Runs the garbage-collection worker until `cancel` fires. The first
/// round starts one interval after start.
pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut w = Gc { shared, cursors: HashMap::new(), commits_since: None };
    loop {
        let interval = w.shared.config.gc_interval.max(MIN_INTERVAL);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = w.round() => if let Err(e) = r {
                error!(error = %e, "garbage collection round failed");
            }
        }
    }
    debug!("gc worker stopped");
}

impl Gc {
    async fn round(&mut self) -> Result<(), Error> {
        let grace = grace_secs(self.shared.config.gc_grace);
        let now = Timestamp::now().secs;
        // A row stamped with second s was written before s + 1; it is older
        // than the grace period once s + 1 + grace <= now.
        let cutoff = now.saturating_sub(grace).saturating_sub(1);
        for _ in 0..MAX_COLLECT_CALLS {
            let got =
                self.shared.blocking(move |s: &Store| s.collect_unreferenced(cutoff, COLLECT_BATCH)).await?;
            if !got.is_empty() {
                info!(chunks = got.len(), "unreferenced chunks collected");
            }
            if got.len() < COLLECT_BATCH {
                break;
            }
        }
        if self.orphans_allowed() {
            self.orphans(cutoff).await?;
        }
        self.deletes(grace).await?;
        let expire_before = now.saturating_sub(grace.saturating_mul(2));
        let expired = self.shared.blocking(move |s: &Store| s.expire_tombstones(expire_before)).await?;
        if expired > 0 {
            debug!(expired, "tombstones expired");
        }
        let requests = self.shared.blocking(|s: &Store| s.expire_old_requests()).await?;
        if requests > 0 {
            debug!(requests, "answered request ids expired");
        }
        Ok(())
    }

    /// Step 2: tombstones old chunks that up peers hold and the index does
    /// not know.
    async fn orphans(&mut self, cutoff: i64) -> Result<(), Error> {
        let view = self.shared.peers().view();
        self.cursors.retain(|p, _| view.peers.contains_key(p));
        for (peer, info) in &view.peers {
            if info.liveness != Liveness::Up {
                continue;
            }
            let peer = *peer;
            let mut after = self.cursors.get(&peer).copied();
            for _ in 0..ORPHAN_PAGES_PER_ROUND {
                let page = match self.list(peer, &info.addr, after).await {
                    Ok(p) => p,
                    Err(e) => {
                        debug!(%peer, error = %e, "inventory listing failed; retrying next round");
                        break;
                    }
                };
                if page.is_empty() {
                    // The end of the inventory: the next round starts over.
                    after = None;
                    break;
                }
                let old: Vec<ChunkId> =
                    page.iter().filter(|(_, mtime)| *mtime <= cutoff).map(|(id, _)| *id).collect();
                after = page.last().map(|(id, _)| *id);
                if !old.is_empty() {
                    let ids = old.clone();
                    let missing = self.shared.blocking(move |s: &Store| s.missing_from_index(&ids)).await?;
                    let orphans: Vec<ChunkId> =
                        old.into_iter().zip(missing).filter(|(_, m)| *m).map(|(id, _)| id).collect();
                    if !orphans.is_empty() {
                        let done = self
                            .shared
                            .blocking(move |s: &Store| s.tombstone_orphans(peer, &orphans))
                            .await?;
                        if !done.is_empty() {
                            info!(%peer, chunks = done.len(), "orphan chunks found");
                        }
                    }
                }
            }
            match after {
                Some(a) => self.cursors.insert(peer, a),
                None => self.cursors.remove(&peer),
            };
        }
        Ok(())
    }

    /// One page of a peer's inventory.
    async fn list(
        &self,
        peer: PeerId,
        addr: &str,
        after: Option<ChunkId>,
    ) -> Result<Vec<(ChunkId, i64)>, String> {
        let pool = &self.shared.pool;
        let client = pool.peer(addr, peer).await.map_err(|e| format!("connect: {e}"))?;
        let ctx = common::transport::deadline(common::config::META_DEADLINE);
        match client.list_chunks(ctx, after, ORPHAN_PAGE).await {
            Ok(Ok(page)) => Ok(page),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => {
                pool.forget_peer(addr, peer);
                Err(e.to_string())
            }
        }
    }

    /// Deletes chunk `id` on `peer` at `addr`; true once acknowledged.
    async fn delete(&self, peer: PeerId, addr: &str, id: ChunkId) -> bool {
        let pool = &self.shared.pool;
        let client = match pool.peer(addr, peer).await {
            Ok(c) => c,
            Err(e) => {
                debug!(addr, error = %e, "delete: cannot connect");
                return false;
            }
        };
        let ctx = common::transport::deadline(common::config::META_DEADLINE);
        match client.delete(ctx, id).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                debug!(addr, chunk = %id, error = %e, "delete refused");
                false
            }
            Err(e) => {
                pool.forget_peer(addr, peer);
                debug!(addr, chunk = %id, error = %e, "delete failed");
                false
            }
        }
    }

    /// Step 3: sends the pending deletes to the peers that can take them.
    async fn deletes(&self, grace: i64) -> Result<(), Error> {
        let view = self.shared.peers().view();
        let give_up = Duration::from_secs(u64::try_from(grace.saturating_mul(2)).unwrap_or(0));
        let mut after = None;
        loop {
            let batch = self.shared.blocking(move |s: &Store| s.pending_deletes(after, DELETE_BATCH)).await?;
            let Some((last, _)) = batch.last() else { break };
            after = Some(*last);
            let mut acks: Vec<(ChunkId, PeerId)> = Vec::new();
            let mut jobs: Vec<(ChunkId, PeerId, String)> = Vec::new();
            for (id, rec) in &batch {
                for p in &rec.pending {
                    match view.peers.get(p) {
                        None => acks.push((*id, *p)),
                        Some(i) if i.liveness == Liveness::Down && i.silent_for >= give_up => {
                            debug!(peer = %p, chunk = %id, "peer gone too long; its delete is dropped");
                            acks.push((*id, *p));
                        }
                        Some(i) if i.liveness == Liveness::Down => {}
                        Some(i) => jobs.push((*id, *p, i.addr.clone())),
                    }
                }
            }
            let done: Vec<(ChunkId, PeerId)> = futures::stream::iter(jobs)
                .map(|(id, p, addr)| async move { self.delete(p, &addr, id).await.then_some((id, p)) })
                .buffer_unordered(DELETE_CONCURRENCY)
                .filter_map(|d| async move { d })
                .collect()
                .await;
            for (id, p) in &done {
                tracing::event!(target: "p2pfs::_events::chunk_deleted", Level::DEBUG, chunk = %id, peer = %p);
            }
            self.shared.stats.gc_deleted_total.fetch_add(done.len() as u64, Ordering::Relaxed);
            acks.extend(done);
            self.shared.blocking(move |s: &Store| s.ack_deletes(&acks)).await?;
            if batch.len() < DELETE_BATCH {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_rounds_up_to_whole_seconds() {
        assert_eq!(grace_secs(Duration::ZERO), 0);
        assert_eq!(grace_secs(Duration::from_millis(1)), 1);
        assert_eq!(grace_secs(Duration::from_secs(3600)), 3600);
        assert_eq!(grace_secs(Duration::new(2, 1)), 3);
    }
}
