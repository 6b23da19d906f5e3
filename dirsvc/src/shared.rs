//! State shared by the RPC handlers and the background workers.

use crate::changes::ChangeFeed;
use crate::error::Error;
use crate::leader::{Leadership, Term};
use crate::peers::{Fingerprint, PeerTable};
use crate::ratelimit::TokenBucket;
use crate::sessions::{SessionLimits, Sessions};
use crate::store::Store;
use crate::survey::Survey;
use crate::DirsvcConfig;
use common::net::Pool;
use common::pki::Ca;
use common::rpc::peer::PeerServiceClient;
use common::time::Timestamp;
use common::tls::Tls;
use common::transport::Connections;

/// `join` calls dirsvc takes per second, at most (a short burst more).
pub(crate) const JOINS_PER_SEC: u64 = 20;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;
use tokio::sync::Notify;

/// Counters since the process started (reported by `cluster_status`).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Peer-to-peer copies running now.
    pub repairs_in_flight: AtomicU32,
    /// Copies completed and recorded in the index.
    pub repaired_total: AtomicU64,
    /// Bytes of those copies.
    pub repaired_bytes_total: AtomicU64,
    /// Replica deletions acknowledged by peers.
    pub gc_deleted_total: AtomicU64,
    /// The counts of the repair worker's last survey (the status page and
    /// the metrics read them instead of surveying on every refresh).
    pub last_survey: Mutex<Option<SurveyCounts>>,
}

/// The counts of one survey of the chunk index ([`crate::survey`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SurveyCounts {
    /// Referenced chunks.
    pub chunks: u64,
    /// Referenced chunks with fewer than R good replicas (lost included).
    pub under_replicated: u64,
    /// Referenced chunks with no reachable replica.
    pub lost: u64,
    /// When the survey ran.
    pub at: std::time::Instant,
}

impl Stats {
    /// Keeps the counts of survey `s`, just made.
    pub(crate) fn note_survey(&self, s: &crate::survey::Survey) {
        let counts = SurveyCounts {
            chunks: s.chunks,
            under_replicated: s.under_replicated,
            lost: s.lost,
            at: std::time::Instant::now(),
        };
        *self.last_survey.lock().unwrap_or_else(PoisonError::into_inner) = Some(counts);
    }

    /// The counts of the last survey, if one ran.
    pub(crate) fn last_survey(&self) -> Option<SurveyCounts> {
        *self.last_survey.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The chunk-index figures of one survey, kept for `cluster_status` so
/// that it does not walk the index again while nothing changed.
#[derive(Clone, Debug)]
pub(crate) struct SurveyFigures {
    /// What the survey's outcome depended on: the peers' liveness and
    /// drain flags, and the chunk generation.
    pub inputs: (Fingerprint, u64),
    /// When it was taken (wall clock, reported).
    pub at: Timestamp,
    /// When it was taken (monotonic, for its age).
    pub taken: Instant,
    /// See [`crate::survey::Survey`].
    pub chunks: u64,
    /// See [`crate::survey::Survey`].
    pub under_replicated: u64,
    /// See [`crate::survey::Survey`].
    pub lost: u64,
    /// See [`crate::survey::Survey`].
    pub referenced_bytes: u64,
    /// See [`crate::survey::Survey`].
    pub stored_bytes: u64,
}

impl SurveyFigures {
    /// The figures of survey `s`, taken now with `inputs`.
    pub(crate) fn of(inputs: (Fingerprint, u64), s: &Survey) -> Self {
        SurveyFigures {
            inputs,
            at: Timestamp::now(),
            taken: Instant::now(),
            chunks: s.chunks,
            under_replicated: s.under_replicated,
            lost: s.lost,
            referenced_bytes: s.referenced_bytes,
            stored_bytes: s.stored_bytes,
        }
    }
}

/// Counts one copy in flight for as long as it lives (also when the copy's
/// future is dropped on shutdown).
pub(crate) struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    /// Counts one more copy in flight.
    pub(crate) fn start(n: &'a AtomicU32) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything the handlers and workers share. The peer mutex is never held
/// across an `.await`; the store is only used from blocking threads.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The database.
    pub store: Arc<Store>,
    /// The settings the service was started with.
    pub config: DirsvcConfig,
    /// The in-memory peer registry.
    peers: Mutex<PeerTable>,
    /// Counters since start.
    pub stats: Stats,
    /// Wakes the repair worker early (corruption report, drain).
    pub repair_kick: Notify,
    /// `PeerService` clients of the workers (dirsvc's certificate).
    pub pool: Pool<PeerServiceClient>,
    /// This dirsvc's TLS identity and the revocation list it enforces.
    pub tls: Arc<Tls>,
    /// The cluster CA (signs joins and renewals), if this dirsvc holds it.
    pub ca: Option<Arc<Ca>>,
    /// The open connections, by caller (revocation closes a node's).
    pub conns: Arc<Connections>,
    /// Paces `join` calls (tokens per second), so guessing is slow.
    pub joins: TokenBucket,
    /// Client sessions, open marks, locks, grace period.
    pub sessions: Sessions,
    /// The change feed clients poll.
    pub changes: ChangeFeed,
    /// When this dirsvc started (wall clock and monotonic).
    pub started: (Timestamp, Instant),
    /// The address it serves on, once bound.
    pub addr: OnceLock<String>,
    /// The figures of the last survey of the chunk index (repair worker or
    /// `cluster_status`).
    pub last_survey: Mutex<Option<SurveyFigures>>,
    /// The term of leadership this state belongs to (see [`crate::leader`]):
    /// once it ended, calls are answered with `NotLeader`.
    pub term: Term,
    /// The election, for the leader's address in `NotLeader` answers.
    pub leadership: Arc<dyn Leadership>,
}

impl Shared {
    /// Shared state over `store`, loading the peer registry and the
    /// recorded sessions from it (which starts the grace period, or frees
    /// leftover orphans if there is none). Blocking.
    ///
    /// Errors: as [`Store::peers`] and [`Sessions::new`].
    pub(crate) fn new(
        store: Arc<Store>,
        config: &DirsvcConfig,
        tls: Arc<Tls>,
        conns: Arc<Connections>,
        term: Term,
        leadership: Arc<dyn Leadership>,
    ) -> Result<Self, Error> {
        let stored = store.peers()?;
        let peers = PeerTable::new(
            stored,
            config.peer_suspect_after,
            config.peer_down_after,
            config.heartbeat_persist_every,
        );
        let sessions = Sessions::new(
            &store,
            config.session_lease,
            config.grace(),
            SessionLimits::of(config),
            config.unlinked_linger,
        )?;
        Ok(Shared {
            store,
            config: config.clone(),
            peers: Mutex::new(peers),
            stats: Stats::default(),
            repair_kick: Notify::new(),
            pool: Pool::new(tls.clone()),
            ca: config.ca.clone(),
            tls,
            conns,
            joins: TokenBucket::new(JOINS_PER_SEC),
            sessions,
            changes: ChangeFeed::new(config.change_feed_capacity),
            started: (Timestamp::now(), Instant::now()),
            addr: OnceLock::new(),
            last_survey: Mutex::new(None),
            term,
            leadership,
        })
    }

    /// The peer registry. Never hold the guard across an `.await`.
    pub(crate) fn peers(&self) -> MutexGuard<'_, PeerTable> {
        // Nothing in PeerTable can be left half-updated by a panic that
        // matters more than stopping service, so take the data as is.
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the figures of a survey just taken for `cluster_status`.
    pub(crate) fn record_survey(&self, figures: SurveyFigures) {
        *self.last_survey.lock().unwrap_or_else(PoisonError::into_inner) = Some(figures);
    }

    /// The figures of the last survey, if any.
    pub(crate) fn last_survey(&self) -> Option<SurveyFigures> {
        self.last_survey.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Runs `f` on the blocking pool with the store, so no transaction
    /// lives on an async thread or across an `.await`: for work of
    /// unbounded length (scans of a whole table, the background workers'
    /// batches).
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store)).await?
    }

    /// Runs `f`, one short transaction of a request (bounded: one inode,
    /// one page of entries or blocks), with the shared state: where the
    /// engine is embedded (redb), right here on the runtime thread serving
    /// the request, never across an `.await`; otherwise (etcd, whose calls
    /// wait on the network and whose retries sleep) on the blocking pool.
    ///
    /// A transaction on redb costs tens of microseconds and one fsync when
    /// it commits; the hop to the blocking pool and back cost two thread
    /// wake-ups: a `create` took 175–191 µs inside dirsvc instead of
    /// 115–130 (2 CPUs, issue 10's closing note). Group commit
    /// ([`crate::kv`]) bounds a writer's wait to the round in progress and
    /// its own. redb never reports its engine unavailable; only a
    /// transaction that read a group's writes whose commit then failed (an
    /// I/O error) runs again, after [`crate::kv::Kv::write`]'s backoff
    /// (10 ms, doubling), which then sleeps on this thread: a failing disk
    /// can hold a runtime thread for tens of milliseconds per call.
    ///
    /// Errors: `f`'s; `Error::Task` if the blocking task panicked.
    pub(crate) async fn short<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Shared) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        if self.store.embedded() {
            f(self)
        } else {
            let shared = self.clone();
            tokio::task::spawn_blocking(move || f(&shared)).await?
        }
    }
}
