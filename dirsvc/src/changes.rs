//! The change feed: a bounded in-memory log of the inodes and directory
//! entries that committed mutations touched, which clients poll
//! (`poll_changes`) to invalidate their kernel caches.
//!
//! Each change gets a sequence number one above the previous. Numbers start
//! at a per-start epoch (the start time in Unix milliseconds shifted left
//! by [`EPOCH_SHIFT`] bits), so a number handed out by an earlier run is
//! either below this run's epoch or, after a run of more than 2^20 changes
//! per millisecond of downtime, above its last number: both are answered
//! with `overflow`. The log keeps the newest [`DEFAULT_CAPACITY`] changes
//! (configurable); a reader that fell further behind gets `overflow` too.
//! On `overflow` the batch carries no changes and `last` is the newest
//! number: the client drops its caches and continues from there.
//!
//! Changes are recorded right after their transaction committed (on the
//! same thread), so a reader may see the new state before the change that
//! announces it, never the other way round. The changes of one call are
//! consecutive; those of two concurrent calls may be recorded in either
//! order.

use common::rpc::dir::{Change, ChangeBatch, SessionId};
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Default number of changes kept in memory.
pub const DEFAULT_CAPACITY: usize = 65536;

/// Most changes one `poll_changes` answer carries.
pub const MAX_BATCH: usize = 4096;

/// Longest wait of one `poll_changes` call.
pub const MAX_WAIT: Duration = Duration::from_millis(10_000);

/// Bits below the start time in the sequence epoch.
pub const EPOCH_SHIFT: u32 = 20;

/// The sequence numbers and retained changes.
#[derive(Debug)]
struct Ring {
    /// `(sequence number, originating session, change)`, oldest first;
    /// numbers are consecutive.
    log: VecDeque<(u64, Option<SessionId>, Change)>,
    /// The newest sequence number (the epoch before the first change).
    last: u64,
}

/// The change feed of one dirsvc run.
#[derive(Debug)]
pub(crate) struct ChangeFeed {
    ring: Mutex<Ring>,
    /// Woken (all waiters) after every record.
    recorded: Notify,
    epoch: u64,
    capacity: usize,
}

impl ChangeFeed {
    /// An empty feed keeping `capacity` changes (at least 1), with this
    /// run's epoch.
    pub(crate) fn new(capacity: usize) -> Self {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        Self::with_epoch(capacity, millis << EPOCH_SHIFT)
    }

    fn with_epoch(capacity: usize, epoch: u64) -> Self {
        ChangeFeed {
            ring: Mutex::new(Ring { log: VecDeque::new(), last: epoch }),
            recorded: Notify::new(),
            epoch,
            capacity: capacity.max(1),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `changes` (in order) made by no known session and wakes the
    /// waiting readers.
    #[cfg(test)]
    pub(crate) fn record(&self, changes: impl IntoIterator<Item = Change>) {
        self.record_from(None, changes)
    }

    /// Appends `changes` (in order) made through a connection of session
    /// `origin` (its own poll does not return them: its kernel already
    /// knows) and wakes the waiting readers.
    pub(crate) fn record_from(&self, origin: Option<SessionId>, changes: impl IntoIterator<Item = Change>) {
        {
            let mut ring = self.ring();
            for c in changes {
                ring.last += 1;
                let seq = ring.last;
                ring.log.push_back((seq, origin, c));
                if ring.log.len() > self.capacity {
                    ring.log.pop_front();
                }
            }
        }
        self.recorded.notify_waiters();
    }

    /// The changes after `after` not made by `reader`, without waiting (see
    /// the module doc).
    pub(crate) fn read(&self, after: u64, reader: Option<SessionId>) -> ChangeBatch {
        let ring = self.ring();
        let last = ring.last;
        let empty = |overflow| ChangeBatch { changes: Vec::new(), last, overflow };
        if after == 0 || after == last {
            return empty(false);
        }
        if after < self.epoch || after > last {
            return empty(true);
        }
        // after ∈ [epoch, last): the first wanted number is after + 1.
        let oldest = ring.log.front().map_or(last + 1, |(seq, _, _)| *seq);
        if after + 1 < oldest {
            return empty(true);
        }
        let skip = (after + 1 - oldest) as usize;
        let mut changes = Vec::new();
        let mut upto = after;
        for (seq, origin, c) in ring.log.iter().skip(skip).take(MAX_BATCH) {
            upto = *seq;
            if origin.is_none() || *origin != reader {
                changes.push(c.clone());
            }
        }
        ChangeBatch { changes, last: upto, overflow: false }
    }

    /// The changes after `after`, waiting up to `wait` (capped at
    /// [`MAX_WAIT`]) for one if there is none yet. `after == 0` never
    /// waits.
    pub(crate) async fn poll(&self, after: u64, reader: Option<SessionId>, wait: Duration) -> ChangeBatch {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let recorded = self.recorded.notified();
            tokio::pin!(recorded);
            // Registered before reading, so a record in between wakes us.
            recorded.as_mut().enable();
            let batch = self.read(after, reader);
            if after == 0 || batch.overflow || !batch.changes.is_empty() {
                return batch;
            }
            if tokio::time::timeout_at(deadline, recorded).await.is_err() {
                return batch;
            }
        }
    }

    /// The newest sequence number.
    #[cfg(test)]
    fn last(&self) -> u64 {
        self.ring().last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::InodeId;
    use std::sync::Arc;

    fn c(ino: u64) -> Change {
        Change { ino: InodeId(ino), entry: None }
    }

    fn inos(b: &ChangeBatch) -> Vec<u64> {
        b.changes.iter().map(|c| c.ino.0).collect()
    }

    #[test]
    fn changes_come_back_in_order_from_any_point_and_in_capped_batches() {
        let feed = ChangeFeed::with_epoch(10_000, 5 << EPOCH_SHIFT);
        let start = feed.read(0, None);
        assert_eq!((start.changes.len(), start.last, start.overflow), (0, 5 << EPOCH_SHIFT, false));
        feed.record((1..=3).map(c));
        let b = feed.read(start.last, None);
        assert_eq!(inos(&b), vec![1, 2, 3]);
        assert_eq!(b.last, start.last + 3);
        assert_eq!(inos(&feed.read(start.last + 2, None)), vec![3]);
        let none = feed.read(b.last, None);
        assert!(none.changes.is_empty() && !none.overflow && none.last == b.last);
        feed.record((4..=5000).map(c));
        let first = feed.read(b.last, None);
        assert_eq!(first.changes.len(), MAX_BATCH);
        assert_eq!(first.changes[0].ino, InodeId(4));
        let rest = feed.read(first.last, None);
        assert_eq!(rest.changes.len(), 5000 - 3 - MAX_BATCH);
        assert_eq!(rest.last, feed.last());
    }

    #[test]
    fn a_reader_behind_the_ring_or_from_another_run_gets_overflow() {
        let epoch = 7 << EPOCH_SHIFT;
        let feed = ChangeFeed::with_epoch(4, epoch);
        feed.record((1..=3).map(c));
        assert!(!feed.read(epoch, None).overflow, "nothing dropped yet");
        feed.record((4..=6).map(c));
        // Kept: 3, 4, 5, 6 (numbers epoch+3 ..= epoch+6).
        let lost = feed.read(epoch + 1, None);
        assert!(lost.overflow && lost.changes.is_empty());
        assert_eq!(lost.last, epoch + 6);
        assert_eq!(inos(&feed.read(epoch + 2, None)), vec![3, 4, 5, 6]);
        // Numbers of an earlier run (below the epoch) or from the future.
        assert!(feed.read(epoch - 1, None).overflow);
        assert!(feed.read(3, None).overflow);
        assert!(feed.read(epoch + 100, None).overflow);
    }

    #[test]
    fn the_epoch_follows_the_clock() {
        let a = ChangeFeed::new(10);
        std::thread::sleep(Duration::from_millis(3));
        let b = ChangeFeed::new(10);
        assert!(b.read(0, None).last > a.read(0, None).last);
        a.record([c(1)]);
        // A number of run `a` means nothing to run `b`.
        assert!(b.read(a.last(), None).overflow);
    }

    #[tokio::test]
    async fn a_poll_waits_for_the_next_change_or_times_out() {
        let feed = Arc::new(ChangeFeed::new(100));
        let last = feed.read(0, None).last;
        let t = std::time::Instant::now();
        let b = feed.poll(last, None, Duration::from_millis(100)).await;
        assert!(b.changes.is_empty() && !b.overflow);
        assert!(t.elapsed() >= Duration::from_millis(90), "{:?}", t.elapsed());
        let f2 = feed.clone();
        let waiter = tokio::spawn(async move { f2.poll(last, None, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = std::time::Instant::now();
        feed.record([c(42)]);
        let b = waiter.await.unwrap();
        assert_eq!(inos(&b), vec![42]);
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_session_does_not_read_its_own_changes() {
        let feed = ChangeFeed::new(16);
        let start = feed.read(0, None).last;
        let me = Some(SessionId(7));
        feed.record_from(me, [c(1)]);
        feed.record_from(Some(SessionId(8)), [c(2)]);
        feed.record_from(None, [c(3)]);
        feed.record_from(me, [c(4)]);
        let mine = feed.read(start, me);
        assert_eq!(inos(&mine), vec![2, 3]);
        assert_eq!(mine.last, start + 4, "own changes are skipped, not re-read");
        assert_eq!(inos(&feed.read(start, None)), vec![1, 2, 3, 4]);
    }
}
