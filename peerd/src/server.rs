//! The `PeerService` RPC handlers: a thin layer over a [`ChunkStore`] (and,
//! for `fetch_from`, a [`PeerPool`] of connections to other peers) that
//! converts errors to [`PeerError`] and logs each failure once.

use crate::error::Error;
use crate::fetch::{fetch_from, PeerPool};
use crate::store::ChunkStore;
use common::rpc::dir::PeerUsage;
use common::rpc::peer::{Bytes, PeerError, PeerService};
use common::ChunkId;
use std::sync::Arc;
use tarpc::context::Context;
use tracing::{debug, error, instrument, warn};

/// Serves `PeerService` from a chunk store. Cheap to clone (one per
/// connection and request); clones share the store and the pool of
/// connections to source peers.
pub struct PeerServer<S> {
    store: Arc<S>,
    pool: Arc<PeerPool>,
}

impl<S> Clone for PeerServer<S> {
    fn clone(&self) -> Self {
        PeerServer { store: self.store.clone(), pool: self.pool.clone() }
    }
}

impl<S: ChunkStore> PeerServer<S> {
    /// A server over `store`, with an empty pool of source connections.
    pub fn new(store: S) -> Self {
        PeerServer { store: Arc::new(store), pool: Arc::new(PeerPool::new()) }
    }
}

/// Converts a store result to the wire result, logging the failure: requests
/// for missing chunks and malformed requests at DEBUG (callers handle them),
/// rejected or corrupt data, failed sources and full disks at WARN, anything
/// else at ERROR.
fn reply<T>(op: &'static str, r: Result<T, Error>) -> Result<T, PeerError> {
    r.map_err(|e| {
        match &e {
            Error::NotFound(_) | Error::TooLarge { .. } | Error::RangeOutOfBounds { .. } => {
                debug!(op, error = %e, "request refused")
            }
            Error::HashMismatch { .. } | Error::NoSpace { .. } | Error::SourceFailed { .. } => {
                warn!(op, error = %e, "request refused")
            }
            _ => error!(op, error = %e, "request failed"),
        }
        PeerError::from(e)
    })
}

impl<S: ChunkStore> PeerService for PeerServer<S> {
    #[instrument(skip_all, fields(chunk = %id, bytes = bytes.len()))]
    async fn put(self, _: Context, id: ChunkId, bytes: Bytes) -> Result<(), PeerError> {
        reply("put", self.store.put(id, bytes.into_vec()).await)
    }

    #[instrument(skip_all, fields(chunk = %id))]
    async fn get(self, _: Context, id: ChunkId) -> Result<Bytes, PeerError> {
        reply("get", self.store.get(id).await.map(Bytes::from))
    }

    #[instrument(skip_all, fields(chunk = %id, offset, len))]
    async fn get_range(self, _: Context, id: ChunkId, offset: u64, len: u32) -> Result<Bytes, PeerError> {
        reply("get_range", self.store.get_range(id, offset, len).await.map(Bytes::from))
    }

    #[instrument(skip_all, fields(count = ids.len()))]
    async fn has(self, _: Context, ids: Vec<ChunkId>) -> Result<Vec<bool>, PeerError> {
        reply("has", self.store.has(ids).await)
    }

    #[instrument(skip_all, fields(chunk = %id))]
    async fn delete(self, _: Context, id: ChunkId) -> Result<(), PeerError> {
        reply("delete", self.store.delete(id).await)
    }

    #[instrument(skip_all)]
    async fn usage(self, _: Context) -> Result<PeerUsage, PeerError> {
        reply("usage", self.store.usage().await)
    }

    #[instrument(skip_all, fields(chunk = %id, source = %source))]
    async fn fetch_from(self, ctx: Context, id: ChunkId, source: String) -> Result<(), PeerError> {
        reply("fetch_from", fetch_from(&*self.store, &self.pool, id, &source, ctx.deadline).await)
    }

    #[instrument(skip_all, fields(after = ?after.map(|a| a.fmt_short()), limit = limit))]
    async fn list_chunks(
        self,
        _: Context,
        after: Option<ChunkId>,
        limit: u32,
    ) -> Result<Vec<(ChunkId, i64)>, PeerError> {
        reply("list_chunks", self.store.list_chunks(after, limit).await)
    }
}
