//! dirsvc, the p2pfs directory service: namespace, file layouts, chunk
//! index, peer registry, placement, repair and garbage collection, served
//! over tarpc.
//!
//! Architecture:
//! - [`store::Store`] owns the key-value layer ([`kv`]: redb or etcd) and
//!   is the only code that touches it. Its methods are synchronous; each
//!   mutating one is a durable write transaction (plus bounded follow-up
//!   transactions where one operation frees unboundedly many keys). Key
//!   schema: [`store::keys`]; value formats: [`store::records`].
//! - [`server::DirServer`] implements `common::rpc::dir::DirService`. A
//!   handler's store call is one short transaction, never held across an
//!   `.await`: on redb it runs on the runtime thread serving the request
//!   (tens of microseconds and at most one fsync, cheaper than two thread
//!   hand-offs), on etcd on tokio's blocking pool (`spawn_blocking`), as do
//!   whole-table scans and the background workers' batches
//!   (`Shared::short`). Liveness, usage, labels,
//!   drain flags and placement promises of peers live in an in-memory
//!   mirror of the `peers-v1` table (module `peers`), guarded by a mutex
//!   that is never held across an `.await`.
//! - Limits ([`limits`]): what one caller (a [`Principal`]: the node of the
//!   connection's certificate) or all of them may hold: sessions, locks, waiting calls,
//!   extended attributes, placement promises; `DirError::Limit` past one.
//! - Client sessions ([`sessions`]): leases, open-file marks that keep
//!   unlinked files alive as orphans, POSIX and flock locks ([`locks`]),
//!   and the reclaim grace period after a start; all in memory except
//!   the list of live sessions and the orphans, which are durable. The
//!   change feed ([`changes`]) keeps the recent mutations for clients'
//!   cache invalidation (`poll_changes`).
//! - Three background workers, each a named task owned by [`DirsvcHandle`]
//!   that stops when the handle's cancellation token fires:
//!   - `repair` ([`repair`]): every [`DirsvcConfig::repair_interval`] it
//!     surveys the chunk index ([`survey`]) and orders peer-to-peer copies
//!     (`PeerService::fetch_from`) until every referenced chunk has R good
//!     replicas, most endangered first, with bounded concurrency and
//!     bandwidth. The work is derived from the index each round, so a
//!     restart loses none of it.
//!   - `gc` ([`gc`]): every [`DirsvcConfig::gc_interval`] it collects
//!     chunks unreferenced for longer than [`DirsvcConfig::gc_grace`] and
//!     orphans (stored on a peer, never committed), writes tombstones and
//!     deletes the copies on the peers. The protocol and its race with
//!     `commit_layout` (`ChunkGone`) are described in [`gc`].
//!   - `sessions` ([`sessions`]): every quarter lease it ends the
//!     sessions whose lease ran out; it ends the grace period.
//! - [`spawn`] opens the store, binds the listener, serves every
//!   connection with `common::serve_tarpc!` in a background task and starts
//!   the workers, returning a [`DirsvcHandle`]. [`spawn_with`] is the
//!   general form: any store and any [`leader::Leadership`]; the state held
//!   in memory and the workers belong to a *term* of leadership, and
//!   between terms every call is answered with `NotLeader` ([`leader`]). [`DirsvcHandle::shutdown`]
//!   stops accepting, stops the workers, closes every connection, waits for
//!   in-flight requests and returns once the database is closed; dropping
//!   the handle stops the service without waiting.
//!
//! Peer states (what `list_peers` reports), from heartbeats and the drain
//! flag:
//!
//! ```text
//!        silent ≥ peer_suspect_after      silent ≥ peer_down_after
//!   Up ─────────────────────────────▶ Suspect ─────────────────────▶ Down
//!    ▲                                   │                             │
//!    └───────────── heartbeat ───────────┴─────────── heartbeat ───────┘
//!
//!   any state ── drain_peer (persisted) ──▶ Draining
//!   Draining ── a survey finds no referenced chunk needing it ──▶ Drained
//!   Drained ── a chunk needs its copy again (e.g. a holder died) ──▶ Draining
//! ```
//!
//! - `Up`: heartbeat within `peer_suspect_after` (default 6 s). Gets new
//!   chunks; its replicas count.
//! - `Suspect`: silent past `peer_suspect_after`, not yet
//!   `peer_down_after` (default 10 s). No new chunks; its replicas still
//!   count; readers try it after up peers.
//! - `Down`: silent past `peer_down_after`. Its replicas do not count and
//!   repair copies them elsewhere, but they stay in the index and count
//!   again if it returns.
//! - `Draining`: an operator called `drain_peer`. No new chunks; its
//!   replicas do not count (repair copies them away) but it serves as a
//!   copy source and for reads while it heartbeats.
//! - `Drained`: draining, and the last survey found every referenced chunk
//!   with a replica on it at R good replicas elsewhere: it can be stopped
//!   for good.
//!
//! `PeerLoc::live` is true for any peer that heartbeat within
//! `peer_down_after`, draining or not.
#![warn(missing_docs)]
// No panic reachable from a message or a stored byte (invariant 5):
// errors, never unwrap/expect, outside tests (clippy.toml allows them there).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod changes;
pub mod error;
pub mod gc;
pub mod kv;
pub mod leader;
pub mod limits;
pub mod locks;
pub mod placement;
pub mod repair;
pub mod server;
pub mod sessions;
pub mod store;
pub mod survey;
pub mod web;

mod peers;
mod ratelimit;
mod shared;

pub use error::Error;
pub use limits::Principal;
pub use server::DirServer;
pub use store::Store;

use common::pki::Ca;
use common::rpc::dir::DirService as _;
use common::rpc::Role;
use common::tls::Tls;
use common::transport::ServerLimits;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{warn, Instrument};

/// Default listen address of dirsvc.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

/// Default database path of dirsvc.
pub const DEFAULT_DB_PATH: &str = "./dirsvc.redb";

/// Default for [`DirsvcConfig::heartbeat_persist_every`].
pub const DEFAULT_HEARTBEAT_PERSIST_EVERY: Duration = Duration::from_secs(5);

/// Default for [`DirsvcConfig::peer_suspect_after`].
pub const DEFAULT_PEER_SUSPECT_AFTER: Duration = Duration::from_secs(6);

/// Default for [`DirsvcConfig::repair_interval`].
pub const DEFAULT_REPAIR_INTERVAL: Duration = Duration::from_secs(1);

/// Default for [`DirsvcConfig::repair_concurrency`].
pub const DEFAULT_REPAIR_CONCURRENCY: usize = 8;

/// Default for [`DirsvcConfig::repair_bandwidth_bytes_per_sec`] (256 MiB/s).
pub const DEFAULT_REPAIR_BANDWIDTH: u64 = 256 << 20;

/// Default for [`DirsvcConfig::gc_interval`].
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(30);

/// Default for [`DirsvcConfig::gc_grace`] (one hour).
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(3600);

/// Default for [`DirsvcConfig::session_lease`].
pub const DEFAULT_SESSION_LEASE: Duration = Duration::from_secs(15);

/// Default for [`DirsvcConfig::unlinked_linger`] (5 s).
pub const DEFAULT_UNLINKED_LINGER: Duration = Duration::from_secs(5);

/// How long [`DirsvcHandle::shutdown`] waits for in-flight requests to let
/// go of the database.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Settings of one dirsvc instance.
#[derive(Clone, Debug)]
pub struct DirsvcConfig {
    /// Address to listen on, `host:port` (port 0 picks a free port; the
    /// bound address is in [`DirsvcHandle::addr`]).
    pub listen: String,
    /// Path of the redb database file (created if missing).
    pub db_path: PathBuf,
    /// A peer whose last heartbeat (or registration) is older than this is
    /// suspect: not chosen by placement, tried after up peers by readers,
    /// still counted as a replica. Capped at `peer_down_after`.
    pub peer_suspect_after: Duration,
    /// A peer whose last heartbeat (or registration) is older than this is
    /// down: not chosen by placement, listed last among replicas, not
    /// counted by `statfs`, its replicas not counted towards R.
    pub peer_down_after: Duration,
    /// Heartbeats update the in-memory registry at once but are written to
    /// the database at most this often per peer (registrations always are).
    pub heartbeat_persist_every: Duration,
    /// Pause between repair rounds (a corruption report or a drain starts
    /// one at once).
    pub repair_interval: Duration,
    /// Chunks copied at the same time by repair; 0 pauses repair copies
    /// (the survey still runs, so `Drained` and the counts stay current).
    pub repair_concurrency: usize,
    /// Bytes per second repair copies at most (sum over all copies); 0 =
    /// unlimited.
    pub repair_bandwidth_bytes_per_sec: u64,
    /// Pause between garbage-collection rounds.
    pub gc_interval: Duration,
    /// How long an unreferenced chunk, or an uncommitted one on a peer,
    /// waits before it is deleted; tombstones live twice as long. Must
    /// exceed the longest time a client may take between storing a chunk
    /// and committing it.
    pub gc_grace: Duration,
    /// A client session ends (its locks are released, its unlinked open
    /// files freed) when it has not renewed for this long. Clients renew
    /// at a third of it.
    pub session_lease: Duration,
    /// How long after a start dirsvc waits for the sessions that were
    /// alive before it to reclaim their opens and locks (new locks are
    /// refused with `Grace` meanwhile). `None` = one `session_lease`;
    /// zero = no grace period. Ends early once every such session is back;
    /// there is none if no session was alive.
    pub grace_period: Option<Duration>,
    /// How long a file that lost its last name (unlink, or a rename over
    /// it) while no mount held it open is kept as an orphan before it is
    /// freed, so that an open racing the removal (the kernel opens by the
    /// inode its lookup found a moment earlier, or a mount's cache still
    /// names it) opens the old file, as on a local file system, instead of
    /// failing. Zero frees it in the removing call. Default
    /// [`DEFAULT_UNLINKED_LINGER`].
    pub unlinked_linger: Duration,
    /// Changes kept in memory for `poll_changes`; a client further behind
    /// is told to drop its caches.
    pub change_feed_capacity: usize,
    /// This dirsvc's TLS identity (a `dirsvc` certificate of the cluster
    /// CA). Required: dirsvc speaks nothing but mutual TLS.
    pub tls: Option<Arc<Tls>>,
    /// Where the identity's files live (`node.crt` is rewritten there when
    /// dirsvc renews its own certificate); `None`: renewals stay in
    /// memory.
    pub tls_dir: Option<PathBuf>,
    /// The cluster CA, to issue certificates to joining nodes and renew
    /// certificates. Without it `join` and `renew_certificate` are
    /// `Unauthorized` (the operator then issues certificates offline).
    pub ca: Option<Arc<Ca>>,
    /// Connection limits of the listener.
    pub limits: ServerLimits,
    /// Most live sessions one [`Principal`] may hold; one more
    /// `open_session` (a new one, or a reclaim of an ended one) is
    /// `Limit`. Default [`limits::DEFAULT_MAX_SESSIONS_PER_PRINCIPAL`].
    pub max_sessions_per_principal: usize,
    /// Most live sessions in total. Default
    /// [`limits::DEFAULT_MAX_SESSIONS`].
    pub max_sessions: usize,
    /// Most lock ranges one session may hold (after merging and splitting);
    /// a `set_lock` that would exceed it is `Limit` (ENOLCK at the client),
    /// a reclaimed lock past it is reported lost. Default
    /// [`limits::DEFAULT_MAX_LOCKS_PER_SESSION`].
    pub max_locks_per_session: usize,
    /// Most calls of one session waiting in dirsvc at once (`set_lock`
    /// with a wait, `poll_changes` with a wait); one more is `Limit`.
    /// Default [`limits::DEFAULT_MAX_WAITERS_PER_SESSION`].
    pub max_waiters_per_session: usize,
    /// Most waiting calls over all sessions. Default
    /// [`limits::DEFAULT_MAX_WAITERS`].
    pub max_waiters: usize,
    /// Most extended attributes one inode may carry (besides the byte
    /// budget `XATTR_INODE_MAX`); a `setxattr` adding one more is `Limit`.
    /// Default [`limits::DEFAULT_MAX_XATTRS_PER_INODE`].
    pub max_xattrs_per_inode: usize,
    /// Most block entries one `commit_layout` may carry, below the store
    /// engine's own limit ([`Store::max_commit_entries`]); `None` (the
    /// default) leaves the engine's. Announced to clients in their session
    /// grant; a larger commit is `Invalid`. For tests and operators.
    pub max_commit_entries: Option<usize>,
    /// Most bytes one `placement` call may promise, in bytes: count × chunk
    /// bytes × R. Default [`limits::DEFAULT_MAX_PLACEMENT_BYTES_PER_CALL`].
    pub max_placement_bytes_per_call: u64,
    /// Most bytes one [`Principal`]'s placements may hold promised on peers
    /// that are up, in bytes (a promise ends at the peer's next
    /// heartbeat); a `placement` past it is `Limit`, and the client then
    /// picks peers itself. Default
    /// [`limits::DEFAULT_MAX_PROMISED_BYTES_PER_PRINCIPAL`].
    pub max_promised_bytes_per_principal: u64,
    /// Plain-HTTP address (`host:port`, port 0 picks one) serving
    /// Prometheus metrics (`/metrics`) and the read-only status page (`/`,
    /// `/status.json`, module [`web`]); the bound address is in
    /// [`DirsvcHandle::metrics_addr`]. `None` (default): not served.
    pub metrics_listen: Option<String>,
}

impl DirsvcConfig {
    /// The grace period in effect ([`DirsvcConfig::grace_period`], or the
    /// lease).
    pub fn grace(&self) -> Duration {
        self.grace_period.unwrap_or(self.session_lease)
    }
}

impl Default for DirsvcConfig {
    fn default() -> Self {
        DirsvcConfig {
            listen: DEFAULT_LISTEN.to_string(),
            db_path: PathBuf::from(DEFAULT_DB_PATH),
            peer_suspect_after: DEFAULT_PEER_SUSPECT_AFTER,
            peer_down_after: common::config::PEER_DOWN_AFTER,
            heartbeat_persist_every: DEFAULT_HEARTBEAT_PERSIST_EVERY,
            repair_interval: DEFAULT_REPAIR_INTERVAL,
            repair_concurrency: DEFAULT_REPAIR_CONCURRENCY,
            repair_bandwidth_bytes_per_sec: DEFAULT_REPAIR_BANDWIDTH,
            gc_interval: DEFAULT_GC_INTERVAL,
            gc_grace: DEFAULT_GC_GRACE,
            session_lease: DEFAULT_SESSION_LEASE,
            grace_period: None,
            unlinked_linger: DEFAULT_UNLINKED_LINGER,
            change_feed_capacity: changes::DEFAULT_CAPACITY,
            tls: None,
            tls_dir: None,
            ca: None,
            limits: ServerLimits::default(),
            max_sessions_per_principal: limits::DEFAULT_MAX_SESSIONS_PER_PRINCIPAL,
            max_sessions: limits::DEFAULT_MAX_SESSIONS,
            max_locks_per_session: limits::DEFAULT_MAX_LOCKS_PER_SESSION,
            max_waiters_per_session: limits::DEFAULT_MAX_WAITERS_PER_SESSION,
            max_waiters: limits::DEFAULT_MAX_WAITERS,
            max_xattrs_per_inode: limits::DEFAULT_MAX_XATTRS_PER_INODE,
            max_commit_entries: None,
            max_placement_bytes_per_call: limits::DEFAULT_MAX_PLACEMENT_BYTES_PER_CALL,
            max_promised_bytes_per_principal: limits::DEFAULT_MAX_PROMISED_BYTES_PER_PRINCIPAL,
            metrics_listen: None,
        }
    }
}

/// A running dirsvc. Dropping it cancels the service (connections close,
/// the accept loop and the workers stop) without waiting;
/// [`DirsvcHandle::shutdown`] waits.
#[derive(Debug)]
pub struct DirsvcHandle {
    /// The address the service is bound to.
    pub addr: SocketAddr,
    /// The address metrics and the status page are served on, if
    /// [`DirsvcConfig::metrics_listen`] was set.
    pub metrics_addr: Option<SocketAddr>,
    /// The metrics and status-page server (stops when dropped).
    http: Option<common::http::HttpServer>,
    cancel: CancellationToken,
    /// The accept loop and the workers, by name.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    store: Weak<Store>,
    leadership: Arc<dyn leader::Leadership>,
}

impl DirsvcHandle {
    /// The database the service runs on, while it runs (for tests and
    /// in-process tools). Holding it delays [`DirsvcHandle::shutdown`]
    /// until it is dropped.
    pub fn store(&self) -> Option<Arc<Store>> {
        self.store.upgrade()
    }

    /// A graceful stop: gives up leadership first (on etcd: deletes the
    /// election key, so another dirsvc leads at once instead of after the
    /// lease, and `dirsvc migrate` may open the volume), then
    /// [`DirsvcHandle::shutdown`]. What the binary does on SIGTERM.
    pub async fn stop(self) {
        self.leadership.resign().await;
        self.shutdown().await;
    }

    /// Stops accepting and the workers, closes every connection and waits
    /// (at most [`SHUTDOWN_GRACE`]) for in-flight requests to finish and
    /// the database to close, so the same file can be opened again at once.
    /// Keeps any leadership until its lease lapses, as a crash would (see
    /// [`DirsvcHandle::stop`]).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(http) = self.http.take() {
            http.shutdown().await;
        }
        for (name, task) in std::mem::take(&mut self.tasks) {
            if let Err(e) = task.await {
                warn!(task = name, error = %e, "dirsvc task ended abnormally");
            }
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.store.strong_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                warn!("requests still hold the database after the shutdown grace period");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for DirsvcHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
        for (_, task) in self.tasks.drain(..) {
            task.abort();
        }
    }
}

/// Opens the redb database at `config.db_path`, binds `config.listen`,
/// serves `DirService` over mutual TLS in a background task on the current
/// tokio runtime and starts the repair, garbage-collection, sessions and
/// certificate-renewal workers: the only dirsvc of its volume
/// ([`leader::Sole`]). See [`spawn_with`] for the general form.
///
/// Errors: [`Error::Tls`] without a TLS identity or with one that is not a
/// dirsvc certificate; [`Error::Db`], [`Error::Schema`], [`Error::Corrupt`]
/// from opening the database; [`Error::Io`] if the address cannot be bound.
pub async fn spawn(config: DirsvcConfig) -> Result<DirsvcHandle, Error> {
    check_identity(&config)?;
    let path = config.db_path.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&path).map(Arc::new)).await??;
    spawn_with(config, store, Arc::new(leader::Sole::default())).await
}

/// How a dirsvc of a cluster of several over one etcd runs
/// ([`spawn_etcd`]).
#[derive(Clone, Debug)]
pub struct EtcdMember {
    /// The etcd cluster and how to reach it (the store's keys live under
    /// its prefix). Its TLS identity is usually this dirsvc's own.
    pub etcd: kv::etcd::EtcdConfig,
    /// The address clients and peers reach this dirsvc at (`host:port`),
    /// handed out by the others while this one leads.
    pub advertise: String,
    /// The election lease: a leader that cannot renew it for this long
    /// loses its term (whole seconds, at least 1).
    pub lease: Duration,
}

/// Name of the election the dirsvc of one volume hold (under the etcd
/// prefix).
pub const ELECTION: &str = "dirsvc-leader";

/// Serves the volume kept in etcd as one of several dirsvc: connects the
/// etcd engine, opens the store on it and campaigns in the election
/// ([`ELECTION`]); leads while it wins (see [`spawn_with`]).
///
/// Errors: as [`spawn_with`]; the engine's connection errors; the store's
/// ([`Error::Schema`] for a keyspace of another schema).
pub async fn spawn_etcd(config: DirsvcConfig, member: EtcdMember) -> Result<DirsvcHandle, Error> {
    check_identity(&config)?;
    let etcd = member.etcd.clone();
    // The election first: it closes the engine's fence, so nothing is
    // written before this instance wins (the store only reads to attach).
    let (election, store) = tokio::task::spawn_blocking(move || {
        let engine = Arc::new(kv::etcd::EtcdEngine::connect(&etcd)?);
        let election = engine.election(ELECTION, member.advertise.clone(), member.lease);
        let store = Arc::new(Store::attach(engine)?);
        Ok::<_, Error>((election, store))
    })
    .await??;
    spawn_with(config, store, Arc::new(leader::EtcdLeadership::new(election))).await
}

/// The TLS identity of `config`, if it is a dirsvc certificate.
///
/// Errors: [`Error::Tls`].
fn check_identity(config: &DirsvcConfig) -> Result<Arc<Tls>, Error> {
    let tls =
        config.tls.clone().ok_or_else(|| Error::Tls("dirsvc needs a TLS identity (--tls-dir)".into()))?;
    if tls.me().role != Role::Dirsvc {
        return Err(Error::Tls(format!(
            "the TLS identity is a {} certificate, not a dirsvc one",
            tls.me().role
        )));
    }
    Ok(tls)
}

/// The server that answers new connections now, and the state of its term
/// (shared by the accept loop, the term loop and the status page).
type Current = Arc<std::sync::RwLock<DirServer>>;

fn current_server(current: &Current) -> DirServer {
    current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

/// Serves the volume in `store` as `leadership` allows: binds
/// `config.listen` and serves `DirService` over mutual TLS; during each
/// term of leadership ([`leader`]) it runs the term's state and workers
/// (repair, garbage collection, sessions), and between terms it answers
/// `NotLeader`. The metrics server and the certificate renewal run for the
/// whole process. With [`leader::Sole`] the one term starts before this
/// returns, so errors of loading the state are returned here.
///
/// Errors: [`Error::Tls`] without a dirsvc TLS identity; [`Error::Io`] if
/// an address cannot be bound; the store's errors of loading the first
/// term's (or the follower's) state.
pub async fn spawn_with(
    config: DirsvcConfig,
    store: Arc<Store>,
    leadership: Arc<dyn leader::Leadership>,
) -> Result<DirsvcHandle, Error> {
    let tls = check_identity(&config)?;
    let conns = Arc::new(common::transport::Connections::new(tls.revocations().clone()));
    let cancel = CancellationToken::new();
    // The first server: the one term of a sole dirsvc, or a follower's
    // (an ended term) until an election is won.
    let first_term = if leadership.elective() {
        let ended = CancellationToken::new();
        ended.cancel();
        leader::Term { ended }
    } else {
        leadership.campaign().await?
    };
    let server = {
        let (config, tls, conns, store, leadership) =
            (config.clone(), tls.clone(), conns.clone(), store.clone(), leadership.clone());
        let term = first_term.clone();
        tokio::task::spawn_blocking(move || DirServer::for_term(store, &config, tls, conns, term, leadership))
            .await??
    };
    let server_config =
        tls.server_config(config.ca.is_some()).map_err(|e| Error::Tls(format!("TLS configuration: {e}")))?;
    let listener = TcpListener::bind(&config.listen).await?;
    let addr = listener.local_addr()?;
    let _ = server.shared().addr.set(addr.to_string());
    let weak_store = Arc::downgrade(&store);
    let first_shared = server.shared().clone();
    let current: Current = Arc::new(std::sync::RwLock::new(server));
    let accept = {
        let (token, conns, limits, current) =
            (cancel.clone(), conns.clone(), config.limits.clone(), current.clone());
        tokio::spawn(async move {
            common::serve_tarpc!(listener, server_config, limits, conns, token, move |caller| {
                current_server(&current).for_connection(caller)
            });
        })
    };
    let renewal = tokio::spawn(
        renew_own_certificate(first_shared.clone(), config.tls_dir.clone(), cancel.clone())
            .instrument(tracing::info_span!("cert-renewal")),
    );
    let http = match &config.metrics_listen {
        Some(listen) => {
            let endpoint = common::telemetry::Endpoint {
                refresh: Some(web::refresh(current.clone())),
                pages: Some(web::pages(current.clone())),
            };
            Some(common::telemetry::start(listen, endpoint).await.map_err(|e| {
                cancel.cancel();
                Error::Io(std::io::Error::other(format!("metrics address {listen}: {e}")))
            })?)
        }
        None => None,
    };
    let terms = {
        let leadership = leadership.clone();
        let run = Terms { config, tls, conns, store, leadership, current, addr: addr.to_string() };
        tokio::spawn(run.run(first_term, cancel.clone()).instrument(tracing::info_span!("terms")))
    };
    Ok(DirsvcHandle {
        addr,
        metrics_addr: http.as_ref().map(|h| h.addr()),
        http,
        cancel,
        tasks: vec![("accept", accept), ("terms", terms), ("cert-renewal", renewal)],
        store: weak_store,
        leadership,
    })
}

/// The loop of terms: runs each term's workers, and between terms
/// campaigns for the next.
struct Terms {
    config: DirsvcConfig,
    tls: Arc<Tls>,
    conns: Arc<common::transport::Connections>,
    store: Arc<Store>,
    leadership: Arc<dyn leader::Leadership>,
    current: Current,
    /// The bound RPC address (for status).
    addr: String,
}

impl Terms {
    /// Runs until `cancel` fires. `first` is the term of the server already
    /// installed (ended: a follower's).
    async fn run(self, first: leader::Term, cancel: CancellationToken) {
        let mut term = first;
        loop {
            if !term.ended.is_cancelled() {
                self.serve_term(&term, &cancel).await;
                if cancel.is_cancelled() {
                    return;
                }
                warn!("this dirsvc is no longer the leader; serving as a follower");
                if let Err(e) = self.install(leader::Term { ended: term.ended.clone() }).await {
                    warn!(error = %e, "cannot load the follower's state");
                }
            }
            term = tokio::select! {
                _ = cancel.cancelled() => return,
                t = self.leadership.campaign() => match t {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(error = %e, "the election failed; retrying");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                },
            };
            tracing::info!("elected leader; loading the volume's state");
            let store = self.store.clone();
            let began = match tokio::task::spawn_blocking(move || store.begin_term()).await {
                Ok(r) => r,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = began {
                warn!(error = %e, "cannot begin the term; giving it up");
                term.ended.cancel();
                self.leadership.resign().await;
            } else if let Err(e) = self.install(term.clone()).await {
                warn!(error = %e, "cannot load the leader's state; giving the term up");
                term.ended.cancel();
                self.leadership.resign().await;
            }
        }
    }

    /// Makes a server for `term` from the store and answers new connections
    /// with it; closes the connections of the previous one (their clients
    /// reconnect and meet the new state).
    async fn install(&self, term: leader::Term) -> Result<(), Error> {
        let server = {
            let (config, tls, conns, store, leadership) = (
                self.config.clone(),
                self.tls.clone(),
                self.conns.clone(),
                self.store.clone(),
                self.leadership.clone(),
            );
            tokio::task::spawn_blocking(move || {
                DirServer::for_term(store, &config, tls, conns, term, leadership)
            })
            .await??
        };
        let _ = server.shared().addr.set(self.addr.clone());
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = server;
        self.conns.close_all();
        Ok(())
    }

    /// Runs the workers of the installed term until it ends or `cancel`
    /// fires.
    async fn serve_term(&self, term: &leader::Term, cancel: &CancellationToken) {
        let shared = current_server(&self.current).shared().clone();
        let stop = cancel.child_token();
        let repair =
            tokio::spawn(repair::run(shared.clone(), stop.clone()).instrument(tracing::info_span!("repair")));
        let gc = tokio::spawn(gc::run(shared.clone(), stop.clone()).instrument(tracing::info_span!("gc")));
        let sessions =
            tokio::spawn(sessions::run(shared, stop.clone()).instrument(tracing::info_span!("sessions")));
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = term.ended.cancelled() => {}
        }
        stop.cancel();
        for (name, task) in [("repair", repair), ("gc", gc), ("sessions", sessions)] {
            if let Err(e) = task.await {
                warn!(task = name, error = %e, "dirsvc worker ended abnormally");
            }
        }
    }
}

/// How often dirsvc checks whether its own certificate needs renewing.
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);

/// Renews dirsvc's own certificate with the CA it holds, when less than a
/// third of its validity is left (checked at start and hourly); writes it
/// to `tls_dir` if given. Without the CA it only warns as expiry nears.
async fn renew_own_certificate(
    shared: Arc<shared::Shared>,
    tls_dir: Option<PathBuf>,
    cancel: CancellationToken,
) {
    loop {
        let me = shared.tls.me();
        if common::pki::needs_renewal(me.not_after) {
            match &shared.ca {
                Some(ca) => match ca.renew(&shared.tls.cert_der(), common::pki::NODE_CERT_VALIDITY) {
                    Ok((_, pem)) => {
                        let written = match &tls_dir {
                            Some(d) => common::pki::NodeFiles::save_cert(d, &pem).map_err(|e| e.to_string()),
                            None => Ok(()),
                        };
                        match written
                            .and_then(|()| shared.tls.set_cert(&pem).map(drop).map_err(|e| e.to_string()))
                        {
                            Ok(()) => tracing::info!("dirsvc certificate renewed"),
                            Err(e) => warn!(error = %e, "renewing the dirsvc certificate failed"),
                        }
                    }
                    Err(e) => warn!(error = %e, "renewing the dirsvc certificate failed"),
                },
                None => warn!("the dirsvc certificate expires soon and this dirsvc has no CA to renew it"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RENEWAL_CHECK) => {}
        }
    }
}
