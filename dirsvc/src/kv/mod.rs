//! The transactional key-value layer under dirsvc's store: ordered byte
//! keys to byte values, serializable transactions, group commit, and one
//! retry policy, over interchangeable engines ([`redb`] embedded, `etcd`
//! for several dirsvc).
//!
//! The shape follows JuiceFS's metadata engines: the store above speaks
//! only get / batched get / range scan / put / delete inside a
//! transaction closure; an engine provides a consistent read view
//! ([`Snapshot`]) and an atomic, durable commit of a write set ([`Batch`]).
//!
//! How a write transaction runs ([`Kv::write`]):
//! 1. The closure runs under this process's writer lock, reading through
//!    its own writes, then the *pending* writes of earlier transactions
//!    that are not committed to the engine yet, then a fresh engine
//!    snapshot. Writers are therefore serial in this process, and every
//!    engine commit comes from one process at a time (for etcd that is the
//!    leader, and the engine fences the rest), which makes the order of
//!    closures the serial order: serializable.
//! 2. If the closure returns `Ok`, its write set is queued (pending) and
//!    the lock is released, so the next closure runs while this one is
//!    being committed. If it returns `Err`, its writes are dropped.
//! 3. Group commit: the first waiter commits every queued write set in
//!    one engine transaction (as many as fit [`Engine::max_ops`]); the
//!    others find their result when they get the commit lock. A caller
//!    returns only after the engine reported its write set durable.
//! 4. If a commit fails, every write set queued after the failed ones was
//!    computed on top of them, so all pending write sets are dropped and
//!    their closures fail; a closure whose failure is retryable
//!    ([`Error::is_retryable`]: the engine is unreachable for now) runs
//!    again from the start, so closures must be safe to rerun (they are
//!    pure functions of what they read).
//!
//! Readers ([`Kv::read`]) see only committed data: a read view of the
//! engine, never the pending queue.

pub mod etcd;
pub mod redb;

use crate::error::Error;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tracing::debug;

/// A range of keys: (start, end) bounds, byte-wise lexicographic order.
pub type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// One key-value pair read from a scan.
pub type Pair = (Vec<u8>, Vec<u8>);

/// The range of every key that starts with `prefix`.
pub fn prefix_range(prefix: &[u8]) -> KeyRange {
    let end = match prefix_end(prefix) {
        Some(e) => Bound::Excluded(e),
        None => Bound::Unbounded,
    };
    (Bound::Included(prefix.to_vec()), end)
}

/// The smallest key greater than every key that starts with `prefix`
/// (`None`: no such key, the prefix is empty or all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Whether `key` lies in `range`.
pub fn in_range(range: &KeyRange, key: &[u8]) -> bool {
    let after_start = match &range.0 {
        Bound::Included(s) => key >= s.as_slice(),
        Bound::Excluded(s) => key > s.as_slice(),
        Bound::Unbounded => true,
    };
    let before_end = match &range.1 {
        Bound::Included(e) => key <= e.as_slice(),
        Bound::Excluded(e) => key < e.as_slice(),
        Bound::Unbounded => true,
    };
    after_start && before_end
}

/// A consistent read view of an engine: every call sees the same committed
/// state.
pub trait Snapshot {
    /// The value of `key`, if any. Errors: the engine's.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;

    /// The values of `keys`, in order (one round trip where the engine
    /// allows). Errors: the engine's.
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// At most `limit` pairs in `range`, ascending by key (descending if
    /// `reverse`). Errors: the engine's.
    fn scan(&self, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<Pair>, Error>;
}

/// One write of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set the key to this value.
    Put(Vec<u8>),
    /// Remove the key (no error if absent).
    Delete,
}

/// A write set: the last write of each key, in key order.
pub type Batch = BTreeMap<Vec<u8>, Op>;

/// A storage engine behind [`Kv`].
pub trait Engine: Send + Sync + 'static {
    /// Short name for logs and status (`"redb"`, `"etcd"`).
    fn name(&self) -> &'static str;

    /// Most writes one [`Engine::commit`] accepts (etcd: its
    /// `--max-txn-ops` less what the engine adds itself).
    fn max_ops(&self) -> usize;

    /// Largest value accepted, in bytes.
    fn max_value_bytes(&self) -> usize;

    /// Most bytes (keys plus values) one [`Engine::commit`] should carry:
    /// the group committer stops adding write sets to a commit before it
    /// passes this (a single larger set is still sent alone). etcd limits
    /// the size of a request; embedded engines have no such limit.
    fn max_batch_bytes(&self) -> usize {
        usize::MAX
    }

    /// Whether the engine lives in this process and a transaction costs
    /// only local CPU and, for a commit, one fsync (redb): short ones may
    /// then run on the thread that serves the request. A networked
    /// engine's reads and commits wait on other hosts and its retries
    /// sleep (etcd), so its transactions run on the blocking pool. `false`
    /// unless the engine says otherwise.
    fn embedded(&self) -> bool {
        false
    }

    /// A read view of everything committed so far. Errors: the engine's.
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, Error>;

    /// Applies `batch` atomically and durably: when this returns `Ok`, a
    /// crash or failover keeps every write; when it returns an error, none
    /// of them was applied. An engine that cannot tell (a timeout) must
    /// find out before returning.
    ///
    /// Errors: [`Error::Unavailable`] (retry later), [`Error::NotLeader`]
    /// (this process may no longer write), [`Error::TooLarge`], the
    /// engine's own.
    fn commit(&self, batch: &Batch) -> Result<(), Error>;
}

/// How long [`Kv::write`] keeps rerunning a closure whose commit failed
/// with a retryable error before it returns that error, and the backoff
/// between attempts (10 ms doubling to 1 s).
pub const RETRY_WINDOW: Duration = Duration::from_secs(20);

/// The read side of a transaction.
pub struct ReadTxn<'a> {
    snap: Box<dyn Snapshot + 'a>,
}

impl ReadTxn<'_> {
    /// The value of `key`. Errors: the engine's.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.snap.get(key)
    }

    /// The values of `keys`, in order. Errors: the engine's.
    pub fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        self.snap.get_many(keys)
    }

    /// At most `limit` pairs in `range`, ascending (descending if
    /// `reverse`). Errors: the engine's.
    pub fn scan(&self, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<Pair>, Error> {
        self.snap.scan(range, limit, reverse)
    }
}

/// A write transaction: reads see its own writes, then the pending writes
/// of earlier transactions, then the engine.
pub struct WriteTxn<'a> {
    snap: Box<dyn Snapshot + 'a>,
    pending: &'a BTreeMap<Vec<u8>, Op>,
    own: Batch,
}

impl WriteTxn<'_> {
    fn overlaid(&self, key: &[u8]) -> Option<&Op> {
        self.own.get(key).or_else(|| self.pending.get(key))
    }

    /// The value of `key`. Errors: the engine's.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        match self.overlaid(key) {
            Some(Op::Put(v)) => Ok(Some(v.clone())),
            Some(Op::Delete) => Ok(None),
            None => self.snap.get(key),
        }
    }

    /// The values of `keys`, in order; the ones not written here are read
    /// from the engine in one call. Errors: the engine's.
    pub fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let mut out: Vec<Option<Option<Vec<u8>>>> = keys
            .iter()
            .map(|k| match self.overlaid(k) {
                Some(Op::Put(v)) => Some(Some(v.clone())),
                Some(Op::Delete) => Some(None),
                None => None,
            })
            .collect();
        let missing: Vec<Vec<u8>> =
            keys.iter().zip(&out).filter(|(_, o)| o.is_none()).map(|(k, _)| k.clone()).collect();
        if !missing.is_empty() {
            let mut fetched = self.snap.get_many(&missing)?.into_iter();
            for slot in out.iter_mut().filter(|o| o.is_none()) {
                *slot = Some(fetched.next().flatten());
            }
        }
        Ok(out.into_iter().map(Option::flatten).collect())
    }

    /// At most `limit` pairs in `range`, ascending (descending if
    /// `reverse`), with this transaction's and the pending writes merged
    /// in. Errors: the engine's.
    pub fn scan(&self, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<Pair>, Error> {
        // The overlay in range: pending writes, then this transaction's.
        let mut overlay: BTreeMap<&[u8], &Op> = BTreeMap::new();
        for (k, op) in self.pending.range::<[u8], _>(as_slices(range)) {
            overlay.insert(k, op);
        }
        for (k, op) in self.own.range::<[u8], _>(as_slices(range)) {
            overlay.insert(k, op);
        }
        if overlay.is_empty() {
            return self.snap.scan(range, limit, reverse);
        }
        // At most `overlay.len()` engine keys are shadowed, so this many
        // engine pairs hold the first `limit` unshadowed ones.
        let engine = self.snap.scan(range, limit.saturating_add(overlay.len()), reverse)?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            engine.into_iter().filter(|(k, _)| !overlay.contains_key(k.as_slice())).collect();
        for (k, op) in overlay {
            if let Op::Put(v) = op {
                merged.insert(k.to_vec(), v.clone());
            }
        }
        let out: Vec<Pair> = if reverse {
            merged.into_iter().rev().take(limit).collect()
        } else {
            merged.into_iter().take(limit).collect()
        };
        Ok(out)
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.own.insert(key, Op::Put(value));
    }

    /// Removes `key` (nothing if absent).
    pub fn delete(&mut self, key: Vec<u8>) {
        self.own.insert(key, Op::Delete);
    }

    /// How many writes this transaction holds so far.
    pub fn ops(&self) -> usize {
        self.own.len()
    }
}

/// `range` as borrowed slice bounds, for `BTreeMap::range`.
pub(crate) fn as_slices(range: &KeyRange) -> (Bound<&[u8]>, Bound<&[u8]>) {
    fn b(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
        match b {
            Bound::Included(v) => Bound::Included(v.as_slice()),
            Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
            Bound::Unbounded => Bound::Unbounded,
        }
    }
    (b(&range.0), b(&range.1))
}

/// Write sets waiting for their engine commit, oldest first.
#[derive(Default)]
struct Queue {
    /// (sequence number, write set) of each queued transaction.
    sets: Vec<(u64, Batch)>,
    /// Every queued write merged in order: what closures read through.
    merged: Batch,
    /// The next sequence number to hand out.
    next_seq: u64,
}

impl Queue {
    fn rebuild(&mut self) {
        self.merged.clear();
        for (_, set) in &self.sets {
            for (k, op) in set {
                self.merged.insert(k.clone(), op.clone());
            }
        }
    }
}

/// The outcome of a queued write set, kept for its waiter.
#[derive(Clone, Debug)]
enum Outcome {
    Committed,
    /// The commit failed; `retry` says whether the closure may run again.
    Failed {
        message: String,
        retry: bool,
        fenced: bool,
    },
}

/// State of the committer side.
#[derive(Default)]
struct Commits {
    /// Outcomes of write sets committed (or failed) by another waiter,
    /// by sequence number; each waiter removes its own.
    outcomes: HashMap<u64, Outcome>,
    /// Whether a waiter is committing right now.
    busy: bool,
    /// Every write set with a sequence number below this one is resolved
    /// (committed or failed); sets resolve in order.
    resolved_below: u64,
    /// Grows with every failed commit (which drops the whole queue).
    failures: u64,
}

/// Counters of the group commit, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Write transactions committed.
    pub transactions: u64,
    /// Engine commits that carried them.
    pub engine_commits: u64,
    /// Engine commits that failed.
    pub failed_commits: u64,
}

/// The key-value layer: one engine, the writer lock, the pending queue and
/// the group committer. Share it behind an `Arc`; every method takes
/// `&self` and blocks (call it off the async threads).
pub struct Kv {
    engine: Arc<dyn Engine>,
    queue: Mutex<Queue>,
    commits: Mutex<Commits>,
    committed: Condvar,
    stats: Mutex<CommitStats>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").field("engine", &self.engine.name()).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Kv {
    /// The layer over `engine`.
    pub fn new(engine: Arc<dyn Engine>) -> Kv {
        Kv {
            engine,
            queue: Mutex::new(Queue::default()),
            commits: Mutex::new(Commits::default()),
            committed: Condvar::new(),
            stats: Mutex::new(CommitStats::default()),
        }
    }

    /// The engine's name (`"redb"`, `"etcd"`).
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Whether the engine is embedded ([`Engine::embedded`]).
    pub fn embedded(&self) -> bool {
        self.engine.embedded()
    }

    /// The engine itself (for engine-specific operations such as
    /// `dirsvc migrate`).
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Most writes one transaction may make ([`Engine::max_ops`]).
    pub fn max_ops(&self) -> usize {
        self.engine.max_ops()
    }

    /// Group commit counters so far.
    pub fn stats(&self) -> CommitStats {
        *lock(&self.stats)
    }

    /// Runs `f` on a read view of committed data. A retryable engine error
    /// reruns `f` (backing off) for up to [`RETRY_WINDOW`].
    ///
    /// Errors: `f`'s, or the engine's.
    pub fn read<T>(&self, mut f: impl FnMut(&ReadTxn<'_>) -> Result<T, Error>) -> Result<T, Error> {
        retrying(|| {
            let txn = ReadTxn { snap: self.engine.snapshot()? };
            f(&txn)
        })
    }

    /// Runs `f` as one serializable write transaction and returns its
    /// value once its writes are durable (see the module documentation).
    /// `f` may run more than once (after a retryable failure); an `Err`
    /// from `f` drops its writes and is returned as is.
    ///
    /// Errors: `f`'s; [`Error::TooLarge`] if `f` wrote more than
    /// [`Engine::max_ops`] keys; [`Error::NotLeader`]; the engine's after
    /// [`RETRY_WINDOW`] of retryable failures.
    pub fn write<T>(&self, mut f: impl FnMut(&mut WriteTxn<'_>) -> Result<T, Error>) -> Result<T, Error> {
        retrying(|| {
            let failures_before = lock(&self.commits).failures;
            let (seq, value) = {
                let mut queue = lock(&self.queue);
                // What this closure may read of the queue: everything up to
                // here. An outcome that does not write still depends on it.
                let seen_below = queue.next_seq;
                let snap = self.engine.snapshot()?;
                let mut txn = WriteTxn { snap, pending: &queue.merged, own: Batch::new() };
                let result = f(&mut txn);
                let own = std::mem::take(&mut txn.own);
                drop(txn);
                let value = match result {
                    Ok(v) if !own.is_empty() => v,
                    other => {
                        // No writes (or an error): answer once what it read
                        // is committed; if that failed, run again.
                        let read_pending = !queue.sets.is_empty();
                        drop(queue);
                        if read_pending && self.await_resolved(seen_below) != failures_before {
                            return Err(Error::Unavailable("a commit this transaction read failed".into()));
                        }
                        return other;
                    }
                };
                let max = self.engine.max_ops();
                if own.len() > max {
                    return Err(Error::TooLarge { ops: own.len(), max });
                }
                let seq = queue.next_seq;
                queue.next_seq += 1;
                for (k, op) in &own {
                    queue.merged.insert(k.clone(), op.clone());
                }
                queue.sets.push((seq, own));
                (seq, value)
            };
            match self.await_commit(seq) {
                Outcome::Committed => Ok(value),
                Outcome::Failed { message, retry: true, .. } => Err(Error::Unavailable(message)),
                Outcome::Failed { message, fenced: true, .. } => Err(Error::NotLeader(message)),
                Outcome::Failed { message, .. } => Err(Error::CommitFailed(message)),
            }
        })
    }

    /// Waits until every write set below `below` is resolved (committing
    /// the queue itself when no one else is); returns the failure count
    /// then.
    fn await_resolved(&self, below: u64) -> u64 {
        let mut commits = lock(&self.commits);
        loop {
            if commits.resolved_below >= below {
                return commits.failures;
            }
            commits = self.commit_round(commits);
        }
    }

    /// Commits the queue once if no one else is committing, else waits for
    /// the committer to finish its round. Returns the lock again.
    fn commit_round<'g>(&'g self, mut commits: MutexGuard<'g, Commits>) -> MutexGuard<'g, Commits> {
        if commits.busy {
            return self.committed.wait(commits).unwrap_or_else(PoisonError::into_inner);
        }
        commits.busy = true;
        drop(commits);
        let (results, resolved_below, failed) = self.commit_queued();
        let mut commits = lock(&self.commits);
        commits.busy = false;
        commits.resolved_below = commits.resolved_below.max(resolved_below);
        if failed {
            commits.failures += 1;
        }
        commits.outcomes.extend(results);
        self.committed.notify_all();
        commits
    }

    /// Waits until write set `seq` is committed or failed, committing the
    /// queue itself when no one else is.
    fn await_commit(&self, seq: u64) -> Outcome {
        let mut commits = lock(&self.commits);
        loop {
            if let Some(outcome) = commits.outcomes.remove(&seq) {
                return outcome;
            }
            commits = self.commit_round(commits);
        }
    }

    /// Commits the oldest queued write sets that fit one engine commit;
    /// on failure drops the whole queue. Returns each handled set's
    /// outcome, the sequence number below which all are resolved, and
    /// whether the commit failed.
    fn commit_queued(&self) -> (Vec<(u64, Outcome)>, u64, bool) {
        let max = self.engine.max_ops();
        let max_bytes = self.engine.max_batch_bytes();
        let (seqs, batch, next) = {
            let queue = lock(&self.queue);
            let mut batch = Batch::new();
            let mut seqs = Vec::new();
            let mut bytes = 0usize;
            for (seq, set) in &queue.sets {
                let added = set.keys().filter(|k| !batch.contains_key(*k)).count();
                let set_bytes: usize =
                    set.iter().map(|(k, op)| k.len() + if let Op::Put(v) = op { v.len() } else { 0 }).sum();
                if !seqs.is_empty()
                    && (batch.len() + added > max || bytes.saturating_add(set_bytes) > max_bytes)
                {
                    break;
                }
                bytes = bytes.saturating_add(set_bytes);
                for (k, op) in set {
                    batch.insert(k.clone(), op.clone());
                }
                seqs.push(*seq);
            }
            (seqs, batch, queue.next_seq)
        };
        let Some(&last) = seqs.last() else {
            return (Vec::new(), next, false);
        };
        let result = self.engine.commit(&batch);
        let mut queue = lock(&self.queue);
        let mut stats = lock(&self.stats);
        match result {
            Ok(()) => {
                queue.sets.retain(|(s, _)| *s > last);
                queue.rebuild();
                stats.transactions += seqs.len() as u64;
                stats.engine_commits += 1;
                let resolved_below = queue.sets.first().map_or(queue.next_seq, |(s, _)| *s);
                (seqs.into_iter().map(|s| (s, Outcome::Committed)).collect(), resolved_below, false)
            }
            Err(e) => {
                stats.failed_commits += 1;
                let retry = e.is_retryable();
                let fenced = matches!(e, Error::NotLeader(_));
                let message = e.to_string();
                debug!(engine = self.engine.name(), error = %message, dropped = queue.sets.len(), "commit failed");
                // Everything queued was computed on top of the failed sets:
                // all of it fails (and reruns if retryable).
                let all: Vec<u64> = queue.sets.drain(..).map(|(s, _)| s).collect();
                queue.merged.clear();
                let outcomes = all
                    .into_iter()
                    .map(|s| (s, Outcome::Failed { message: message.clone(), retry, fenced }))
                    .collect();
                (outcomes, queue.next_seq, true)
            }
        }
    }
}

/// Runs `attempt` until it succeeds or fails for good, rerunning it after
/// a retryable error with backoff (10 ms doubling to 1 s) for up to
/// [`RETRY_WINDOW`].
fn retrying<T>(mut attempt: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let start = Instant::now();
    let mut backoff = common::net::Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        match attempt() {
            Err(e) if e.is_retryable() && start.elapsed() < RETRY_WINDOW => {
                let delay = backoff.step();
                debug!(error = %e, delay_ms = delay.as_millis() as u64, "retrying a transaction");
                std::thread::sleep(delay);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;
