//! Peer-to-peer copies (`PeerService::fetch_from`): this peer pulls a chunk
//! from a source peer, verifies it and stores it like a put.
//!
//! dirsvc orders these copies for repair and drain. The protocol:
//!
//! 1. If this peer already holds the chunk and it re-hashes correctly,
//!    succeed without contacting the source. A held copy that fails
//!    verification is moved aside (and reported) as on any read, and the
//!    copy goes ahead.
//! 2. `PeerService::get(id)` on the source, over a pooled connection
//!    ([`PeerPool`]), with a deadline of [`CHUNK_DEADLINE`] (or the caller's
//!    own deadline if that is sooner). A cached connection that turns out to
//!    be closed (the source restarted) is replaced and the call retried once.
//! 3. Store the bytes with [`ChunkStore::put`], which refuses them unless
//!    they hash to `id` and writes them with the full durability protocol
//!    (temp file, fsync, rename, fsync of the directory).
//!
//! Every failure on the source's side (unreachable, `NotFound`, its copy is
//! corrupt, bytes that do not verify, deadline) is [`Error::SourceFailed`]
//! and leaves nothing stored; `NoSpace` and local I/O errors keep their own
//! variants.

use crate::error::Error;
use crate::store::{ChunkStore, Verified};
use common::config::CHUNK_DEADLINE;
use common::rpc::peer::PeerServiceClient;
use common::transport::peer_client;
use common::ChunkId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use tarpc::client::RpcError;
use tracing::debug;

/// Most source connections a [`PeerPool`] keeps open.
pub const POOL_MAX: usize = 32;

/// A small pool of `PeerService` clients, one per source address, reused
/// across `fetch_from` calls (repair sends many chunks from one source).
/// When full, an arbitrary entry is closed to make room; a connection that
/// fails is dropped and re-opened on next use.
#[derive(Debug, Default)]
pub struct PeerPool {
    clients: Mutex<HashMap<String, PeerServiceClient>>,
}

impl PeerPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of open connections held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerServiceClient>> {
        // Only map lookups and inserts happen under the lock.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh connection to `addr`, cached for later calls.
    async fn connect(&self, addr: &str) -> Result<PeerServiceClient, String> {
        let client = peer_client(addr).await.map_err(|e| format!("cannot connect: {e}"))?;
        let mut clients = self.lock();
        if clients.len() >= POOL_MAX && !clients.contains_key(addr) {
            if let Some(victim) = clients.keys().next().cloned() {
                clients.remove(&victim);
            }
        }
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Drops the cached connection to `addr` (a concurrent caller may have
    /// just replaced it; it then reconnects once more, which is harmless).
    fn evict(&self, addr: &str) {
        self.lock().remove(addr);
    }

    /// The whole chunk `id` from the peer at `addr`, as the source sent it
    /// (not verified here), by `deadline`. Errors are the reason text for
    /// [`Error::SourceFailed`].
    pub async fn get_chunk(&self, addr: &str, id: ChunkId, deadline: Instant) -> Result<Vec<u8>, String> {
        let cached = self.lock().get(addr).cloned();
        let (client, was_cached) = match cached {
            Some(c) => (c, true),
            None => (self.connect(addr).await?, false),
        };
        let mut result = Self::call_get(&client, id, deadline).await;
        if was_cached && matches!(result, Err(RpcError::Shutdown | RpcError::Send(_) | RpcError::Channel(_)))
        {
            // The pooled connection died (the source restarted or dropped
            // it): one retry on a new one.
            debug!(source = addr, "pooled connection closed; reconnecting");
            self.evict(addr);
            let client = self.connect(addr).await?;
            result = Self::call_get(&client, id, deadline).await;
        }
        match result {
            Ok(Ok(bytes)) => Ok(bytes.into_vec()),
            Ok(Err(e)) => Err(format!("get refused: {e}")),
            Err(e) => {
                if !matches!(e, RpcError::DeadlineExceeded | RpcError::Server(_)) {
                    self.evict(addr);
                }
                Err(format!("get failed: {e}"))
            }
        }
    }

    async fn call_get(
        client: &PeerServiceClient,
        id: ChunkId,
        deadline: Instant,
    ) -> Result<Result<common::rpc::peer::Bytes, common::rpc::peer::PeerError>, RpcError> {
        let mut ctx = tarpc::context::current();
        ctx.deadline = deadline;
        client.get(ctx, id).await
    }
}

/// Copies chunk `id` from the peer at `source` into `store` (see the module
/// docs for the steps). `deadline` bounds the whole copy; the source's `get`
/// gets at most [`CHUNK_DEADLINE`] of it.
///
/// Errors: [`Error::SourceFailed`] (nothing stored); [`Error::NoSpace`];
/// [`Error::Io`] and [`Error::Task`] for local failures.
pub async fn fetch_from<S: ChunkStore>(
    store: &S,
    pool: &PeerPool,
    id: ChunkId,
    source: &str,
    deadline: Instant,
) -> Result<(), Error> {
    match store.verify(id).await {
        Ok(Verified::Intact { .. }) => {
            debug!(chunk = %id, "already held; nothing to fetch");
            return Ok(());
        }
        Ok(Verified::Corrupt { .. }) | Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let deadline = deadline.min(Instant::now() + CHUNK_DEADLINE);
    let failed = |reason: String| Error::SourceFailed { addr: source.to_string(), reason };
    let bytes = pool.get_chunk(source, id, deadline).await.map_err(failed)?;
    let len = bytes.len();
    match store.put(id, bytes).await {
        Ok(()) => {
            debug!(chunk = %id, source, bytes = len, "chunk copied from source");
            Ok(())
        }
        Err(Error::HashMismatch { actual, .. }) => {
            Err(failed(format!("sent {len} bytes that hash to {}, not {}", actual.to_hex(), id.to_hex())))
        }
        Err(e @ Error::TooLarge { .. }) => Err(failed(format!("sent an oversize chunk: {e}"))),
        Err(e) => Err(e),
    }
}
