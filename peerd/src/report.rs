//! Corrupt-chunk reports to dirsvc: the in-memory [`CorruptQueue`] and the
//! `corrupt-reporter` worker that drains it.
//!
//! Whenever the store moves a chunk file aside because it failed BLAKE3
//! verification (a read, a put over a bad copy, `fetch_from`, or scrub), it
//! pushes the chunk id onto the store's queue. The reporter sends the queued
//! ids to dirsvc with `DirService::report_corrupt(peer, ids)` in batches of at
//! most [`REPORT_BATCH`] and removes them only once dirsvc has answered `Ok`.
//! Until then it retries forever with exponential backoff (50 ms doubling to
//! a cap), reconnecting after any transport failure, so a report made while
//! dirsvc is down or restarting is delivered when it is back. Nothing is
//! lost while the process lives; across a restart the store re-queues every
//! chunk in `corrupted/` that it does not hold again (see [`crate::store`]),
//! so a report cut short by `kill -9` is sent after the restart (a duplicate
//! report is harmless: dirsvc just drops a replica it no longer lists).
//!
//! A chunk that is stored again (a good copy put or fetched) before its
//! report was sent is taken off the queue: this peer's replica is good
//! again, and reporting it would make dirsvc forget a good copy.

use common::net::{Backoff, DirAddrs, Pool};
use common::rpc::dir::{DirError, DirServiceClient};
use common::rpc::Role;
use common::tls::Expect;
use common::transport::deadline;
use common::{ChunkId, PeerId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Most chunk ids sent in one `report_corrupt` call.
pub const REPORT_BATCH: usize = 1000;

/// Deadline of one `report_corrupt` call.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// Chunk ids found corrupt and not yet acknowledged by dirsvc. Cheap to
/// clone; clones share one queue.
#[derive(Clone, Debug, Default)]
pub struct CorruptQueue {
    inner: Arc<QueueInner>,
}

#[derive(Debug, Default)]
struct QueueInner {
    pending: Mutex<Pending>,
    /// Signalled on every push (a permit is kept if nobody waits, so a push
    /// between a check and a wait is never missed).
    notify: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    /// Chunk id → generation of its latest push. An acknowledgement removes
    /// an id only if no newer push happened while the report was in flight.
    ids: BTreeMap<ChunkId, u64>,
    next_gen: u64,
}

impl CorruptQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Only map inserts and removals happen under the lock.
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `id` for a report (again, if it already was).
    pub fn push(&self, id: ChunkId) {
        {
            let mut p = self.lock();
            let gen = p.next_gen;
            p.next_gen += 1;
            p.ids.insert(id, gen);
        }
        self.inner.notify.notify_one();
    }

    /// Takes `id` off the queue: a good copy has been stored again.
    pub fn cancel(&self, id: &ChunkId) {
        self.lock().ids.remove(id);
    }

    /// The ids waiting to be reported, ascending.
    pub fn pending(&self) -> Vec<ChunkId> {
        self.lock().ids.keys().copied().collect()
    }

    /// Number of ids waiting to be reported.
    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    /// Whether nothing waits to be reported.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `max` queued ids with their generations.
    fn batch(&self, max: usize) -> Vec<(ChunkId, u64)> {
        self.lock().ids.iter().take(max).map(|(id, g)| (*id, *g)).collect()
    }

    /// Removes the ids of `batch` that were not pushed again since.
    fn ack(&self, batch: &[(ChunkId, u64)]) {
        let mut p = self.lock();
        for (id, gen) in batch {
            if p.ids.get(id) == Some(gen) {
                p.ids.remove(id);
            }
        }
    }

    /// Resolves after the next push (at once if one happened since the last
    /// wait).
    async fn pushed(&self) {
        self.inner.notify.notified().await;
    }
}

/// The `corrupt-reporter` worker: sends the queue to dirsvc until it is
/// acknowledged. Owned by [`crate::PeerdHandle`].
pub(crate) struct Reporter {
    pub(crate) queue: CorruptQueue,
    pub(crate) peer: PeerId,
    /// The cluster's dirsvc instances (reports go to the leader).
    pub(crate) dirsvc: Arc<DirAddrs>,
    /// Connections to dirsvc (this peer's certificate).
    pub(crate) dir_pool: Arc<Pool<DirServiceClient>>,
    /// Longest delay between retries while dirsvc is unreachable.
    pub(crate) retry_cap: Duration,
}

impl Reporter {
    /// Runs until `cancel` fires. Ids still queued then stay in the store's
    /// `corrupted/` directory and are queued again at the next start.
    pub(crate) async fn run(self, cancel: CancellationToken) {
        let _ = cancel.run_until_cancelled(self.run_forever()).await;
        debug!("corrupt-reporter stopped");
    }

    async fn run_forever(self) {
        let mut backoff = Backoff::new(crate::MIN_BACKOFF, self.retry_cap);
        let expect = Expect::Role(Role::Dirsvc);
        // WARN once per streak of failures, DEBUG after that.
        let mut failing = false;
        loop {
            let batch = self.queue.batch(REPORT_BATCH);
            if batch.is_empty() {
                self.queue.pushed().await;
                continue;
            }
            let addr = self.dirsvc.current();
            let c = match self.dir_pool.get(&addr, expect).await {
                Ok(c) => c,
                Err(e) => {
                    self.dirsvc.failed(&addr);
                    self.note_failure(&mut failing, &e.to_string(), batch.len());
                    tokio::time::sleep(backoff.step()).await;
                    continue;
                }
            };
            let ids: Vec<ChunkId> = batch.iter().map(|(id, _)| *id).collect();
            match c.report_corrupt(deadline(CALL_DEADLINE), self.peer, ids).await {
                Ok(Ok(())) => {
                    self.queue.ack(&batch);
                    info!(
                        dirsvc = %self.dirsvc,
                        count = batch.len(),
                        chunks = %short_list(&batch),
                        "reported corrupt chunks to dirsvc"
                    );
                    failing = false;
                    backoff.reset();
                }
                Ok(Err(DirError::NotLeader { leader })) => match leader {
                    Some(l) if l != addr => self.dirsvc.redirect(&l),
                    _ => {
                        self.dirsvc.failed(&addr);
                        tokio::time::sleep(backoff.step()).await;
                    }
                },
                Ok(Err(e)) => {
                    self.note_failure(&mut failing, &format!("refused: {e}"), batch.len());
                    tokio::time::sleep(backoff.step()).await;
                }
                Err(e) => {
                    self.dir_pool.forget(&addr, expect);
                    self.dirsvc.failed(&addr);
                    self.note_failure(&mut failing, &e.to_string(), batch.len());
                    tokio::time::sleep(backoff.step()).await;
                }
            }
        }
    }

    fn note_failure(&self, failing: &mut bool, error: &str, count: usize) {
        if *failing {
            debug!(dirsvc = %self.dirsvc, error, count, "corrupt-chunk report not delivered");
        } else {
            warn!(dirsvc = %self.dirsvc, error, count, "cannot report corrupt chunks to dirsvc; retrying");
            *failing = true;
        }
    }
}

/// The first few ids of a batch, for the log line.
fn short_list(batch: &[(ChunkId, u64)]) -> String {
    let mut s: Vec<String> = batch.iter().take(8).map(|(id, _)| id.to_hex()).collect();
    if batch.len() > 8 {
        s.push(format!("… ({} more)", batch.len() - 8));
    }
    s.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_keeps_ids_pushed_again_while_in_flight() {
        let q = CorruptQueue::new();
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        q.push(a);
        q.push(b);
        let batch = q.batch(10);
        assert_eq!(batch.len(), 2);
        q.push(b); // found corrupt again before dirsvc answered
        q.ack(&batch);
        assert_eq!(q.pending(), [b]);
    }

    #[test]
    fn cancel_removes_and_batches_are_bounded() {
        let q = CorruptQueue::new();
        let ids: Vec<_> = (0..5u8).map(|i| ChunkId::of(&[i])).collect();
        for id in &ids {
            q.push(*id);
        }
        q.cancel(&ids[0]);
        assert_eq!(q.len(), 4);
        assert_eq!(q.batch(3).len(), 3);
        assert!(!q.pending().contains(&ids[0]));
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_missed() {
        let q = CorruptQueue::new();
        q.push(ChunkId::of(b"x"));
        tokio::time::timeout(Duration::from_secs(5), q.pushed()).await.expect("permit kept");
    }
}
