//! Connections to dirsvc and to peers, over the one pool and retry policy
//! of `common::net`, as this client's TLS identity.
//!
//! One connection per remote (tarpc multiplexes concurrent calls on it). A
//! call that fails in transport (connection shut down, send failure) drops
//! the connection and is retried on a new one as the retry policy says;
//! domain errors are returned at once. Metadata calls use
//! [`META_DEADLINE`], chunk transfers [`CHUNK_DEADLINE`].

use crate::error::{Error, Result};
use common::config::{CHUNK_DEADLINE, META_DEADLINE};
use common::net::{CallError, DirAddrs, Pool, RetryPolicy};
use common::rpc::dir::{Attr, DirError, DirServiceClient, Mutated, Mutation};
use common::rpc::peer::{Bytes, PeerError, PeerServiceClient};
use common::rpc::{PeerLoc, Role};
use common::tls::{Expect, Tls};
use common::{ChunkId, NodeId};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tarpc::client::RpcError;
use tarpc::context::Context;
use tracing::warn;

/// How long a dirsvc call keeps retrying transport failures by default
/// (a short window, for CLI commands).
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(3);

/// The retry window of a mount: long enough to ride out a dirsvc restart.
pub const MOUNT_RETRY_WINDOW: Duration = Duration::from_secs(60);

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        Error::Rpc { addr: e.addr, detail: e.detail }
    }
}

/// A reconnecting client of a cluster's dirsvc (one instance, or several
/// over one etcd: calls go to the leader, following redirects, see
/// `common::net::DirAddrs`).
///
/// Transport failures (connection refused or lost, and with several
/// instances a passed deadline), `NotLeader` and `Unavailable` answers are
/// retried with backoff until the retry window ends, so a dirsvc restart or
/// failover is a pause, not an error. A call that was sent but whose answer
/// was lost is sent again; namespace mutations go through
/// [`DirClient::mutate`], whose request id makes dirsvc apply them once
/// and answer a retry as the first attempt was answered.
pub struct DirClient {
    /// The addresses as configured (comma-separated).
    addr: String,
    addrs: DirAddrs,
    pool: Pool<DirServiceClient>,
    retry: RetryPolicy,
    /// The next `mutate` request id: a random start, then a counter.
    next_request: AtomicU64,
}

impl DirClient {
    /// Connects to dirsvc at `addr` (`host:port`, or several separated by
    /// commas) as `tls` and checks the protocol version.
    ///
    /// Errors: [`Error::Rpc`] if the address list is malformed, if no
    /// instance can be reached (also when dirsvc's certificate is refused,
    /// or ours is) or one speaks another version.
    pub async fn connect(addr: &str, tls: Arc<Tls>) -> Result<Self> {
        let addrs = DirAddrs::parse(addr).map_err(|detail| Error::Rpc { addr: addr.to_string(), detail })?;
        let me = DirClient {
            addr: addr.to_string(),
            addrs,
            pool: Pool::new(tls),
            retry: RetryPolicy::for_window(DEFAULT_RETRY_WINDOW),
            next_request: AtomicU64::new(rand::random()),
        };
        let version = me.call(|c, ctx| async move { c.hello(ctx).await.map(Ok) }).await?;
        if version != common::rpc::PROTOCOL_VERSION {
            return Err(Error::Rpc {
                addr: addr.to_string(),
                detail: format!(
                    "dirsvc speaks protocol {version}, this client {}",
                    common::rpc::PROTOCOL_VERSION
                ),
            });
        }
        Ok(me)
    }

    /// Sets how long calls keep retrying transport failures.
    pub fn with_retry_window(mut self, window: Duration) -> Self {
        self.retry = RetryPolicy::for_window(window);
        self
    }

    /// The dirsvc address(es) this client was given, as configured.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The dirsvc instance calls go to now (the leader, as far as known).
    pub fn current_addr(&self) -> String {
        self.addrs.current()
    }

    /// This client's TLS identity (and the revocation list it enforces).
    pub fn tls(&self) -> &Arc<Tls> {
        self.pool.tls()
    }

    /// Runs one DirService call on the leader with reconnects, redirects
    /// and retries (see the type's documentation). `f` gets a client and a
    /// context with the metadata deadline.
    ///
    /// Errors: [`Error::Dir`] for dirsvc's answer (`Unavailable` once it
    /// lasted the retry window), [`Error::Rpc`] when the transport kept
    /// failing for the retry window, or the deadline passed.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(DirServiceClient, Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, DirError>, RpcError>>,
    {
        let started = tokio::time::Instant::now();
        let mut backoff = common::net::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let r = self.pool.call_dir(&self.addrs, META_DEADLINE, &self.retry, &f).await?;
            match r {
                Err(DirError::Unavailable(why))
                    if self.retry.window.is_some_and(|w| started.elapsed() < w) =>
                {
                    warn!(reason = %why, "dirsvc's metadata store is unavailable; retrying");
                    tokio::time::sleep(backoff.step()).await;
                }
                other => return other.map_err(Error::Dir),
            }
        }
    }
}

impl DirClient {
    /// Applies a namespace mutation under a fresh request id, which every
    /// retry of this call (transport failure, redirect, `Unavailable`)
    /// reuses: dirsvc applies it once and answers a retry as it answered
    /// the first attempt (`DirService::mutate`).
    ///
    /// Errors: as [`DirClient::call`], with the answers of the call `op`
    /// stands for.
    pub async fn mutate(&self, op: Mutation) -> Result<Mutated> {
        self.mutate_as(self.next_request(), op).await
    }

    /// A fresh request id for [`DirClient::mutate_as`].
    pub fn next_request(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// [`DirClient::mutate`] under request id `request`, which the caller
    /// keeps across its own retries: a mutation naming the session
    /// (`CreateOpen`), sent again under a reclaimed session, must be the
    /// same request, or the create its first attempt made answers EEXIST.
    ///
    /// Errors: as [`DirClient::mutate`].
    pub async fn mutate_as(&self, request: u64, op: Mutation) -> Result<Mutated> {
        self.call(|c, ctx| {
            let op = op.clone();
            async move { c.mutate(ctx, request, op).await }
        })
        .await
    }

    /// [`DirClient::mutate`] of a call that answers attributes.
    ///
    /// Errors: as [`DirClient::mutate`]; `Invalid` for another answer.
    pub async fn mutate_attr(&self, op: Mutation) -> Result<Attr> {
        self.mutate(op).await?.attr().map_err(Error::Dir)
    }
}

/// Connections to storage peers, one per peer, made on first use; each
/// peer must present the certificate of the id dirsvc gave for it.
pub struct PeerPool {
    pool: Pool<PeerServiceClient>,
}

impl PeerPool {
    /// An empty pool that connects as `tls`.
    pub fn new(tls: Arc<Tls>) -> Self {
        PeerPool { pool: Pool::new(tls) }
    }

    /// Drops every connection to `node` (it was revoked).
    pub fn forget_node(&self, node: NodeId) {
        self.pool.forget_node(node);
    }

    async fn call<T, F, Fut>(&self, peer: &PeerLoc, f: F) -> Result<T>
    where
        F: Fn(PeerServiceClient, Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, PeerError>, RpcError>>,
    {
        // Two attempts: one on the pooled connection, one on a fresh one, so
        // a peer that restarted is picked up, but a dead peer costs little.
        let expect = Expect::Node(Role::Peer, NodeId::from(peer.id));
        self.pool
            .call(&peer.addr, expect, CHUNK_DEADLINE, &RetryPolicy::FRESH_ONCE, f)
            .await?
            .map_err(Error::Peer)
    }

    /// Stores a sealed chunk on `peer` (durable when this returns `Ok`).
    ///
    /// Errors: [`Error::Peer`] for the peer's refusal, [`Error::Rpc`] when
    /// it cannot be reached.
    pub async fn put(&self, peer: &PeerLoc, id: ChunkId, bytes: Bytes) -> Result<()> {
        let len = bytes.len() as u64;
        let started = std::time::Instant::now();
        let r = self
            .call(peer, |c, ctx| {
                let bytes = bytes.clone();
                async move { c.put(ctx, id, bytes).await }
            })
            .await;
        record_peer_call("put", started, r.is_ok());
        if r.is_ok() {
            metrics::counter!(crate::telemetry::UPLOADED_BYTES).increment(len);
        }
        r
    }

    /// Fetches a whole sealed chunk from `peer`; the caller verifies it.
    ///
    /// Errors: as [`PeerPool::put`].
    pub async fn get(&self, peer: &PeerLoc, id: ChunkId) -> Result<Vec<u8>> {
        let started = std::time::Instant::now();
        let r = self.call(peer, |c, ctx| async move { c.get(ctx, id).await }).await;
        record_peer_call("get", started, r.is_ok());
        if let Ok(b) = &r {
            metrics::counter!(crate::telemetry::DOWNLOADED_BYTES).increment(b.len() as u64);
        }
        if let Err(e) = &r {
            warn!(peer = %peer.id, addr = %peer.addr, chunk = %id, error = %e, "replica read failed");
        }
        r.map(|b| b.into_vec())
    }

    /// Fetches the proof of segment `index` of the segmented chunk `id`
    /// from `peer` (`PeerService::get_segment`); the caller verifies it
    /// (`codec::verify_segment_proof`).
    ///
    /// Errors: as [`PeerPool::put`]; `Error::Peer(PeerError::Invalid)` for
    /// a chunk that is not segmented (v1/v2) or an index past its end.
    pub async fn get_segment(&self, peer: &PeerLoc, id: ChunkId, index: u32) -> Result<Vec<u8>> {
        let started = std::time::Instant::now();
        let r = self.call(peer, |c, ctx| async move { c.get_segment(ctx, id, index).await }).await;
        record_peer_call("get_segment", started, r.is_ok());
        if let Ok(b) = &r {
            metrics::counter!(crate::telemetry::DOWNLOADED_BYTES).increment(b.len() as u64);
        }
        r.map(|b| b.into_vec())
    }

    /// Which of `ids` `peer` holds, in order.
    ///
    /// Errors: as [`PeerPool::put`].
    pub async fn has(&self, peer: &PeerLoc, ids: Vec<ChunkId>) -> Result<Vec<bool>> {
        self.call(peer, |c, ctx| {
            let ids = ids.clone();
            async move { c.has(ctx, ids).await }
        })
        .await
    }
}

/// Counts one chunk put or get (`op`) to a peer and its latency
/// ([`crate::telemetry`]).
fn record_peer_call(op: &'static str, started: std::time::Instant, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(crate::telemetry::PEER_REQUESTS, "op" => op, "result" => result).increment(1);
    metrics::histogram!(crate::telemetry::PEER_REQUEST_DURATION, "op" => op)
        .record(started.elapsed().as_secs_f64());
}
