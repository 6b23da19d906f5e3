//! The `PeerService` RPC handlers: a thin layer over a [`ChunkStore`] that
//! converts errors to [`PeerError`] and logs each failure once.

use crate::error::Error;
use crate::store::ChunkStore;
use common::rpc::dir::PeerUsage;
use common::rpc::peer::{Bytes, PeerError, PeerService};
use common::ChunkId;
use std::sync::Arc;
use tarpc::context::Context;
use tracing::{debug, error, instrument, warn};

/// Serves `PeerService` from a chunk store. Cheap to clone (one per
/// connection and request).
pub struct PeerServer<S> {
    store: Arc<S>,
}

impl<S> Clone for PeerServer<S> {
    fn clone(&self) -> Self {
        PeerServer { store: self.store.clone() }
    }
}

impl<S: ChunkStore> PeerServer<S> {
    /// A server over `store`.
    pub fn new(store: S) -> Self {
        PeerServer { store: Arc::new(store) }
    }
}

/// Converts a store result to the wire result, logging the failure: requests
/// for missing chunks and malformed requests at DEBUG (callers handle them),
/// rejected or corrupt data and full disks at WARN, anything else at ERROR.
fn reply<T>(op: &'static str, r: Result<T, Error>) -> Result<T, PeerError> {
    r.map_err(|e| {
        match &e {
            Error::NotFound(_) | Error::TooLarge { .. } | Error::RangeOutOfBounds { .. } => {
                debug!(op, error = %e, "request refused")
            }
            Error::HashMismatch { .. } | Error::NoSpace { .. } => {
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
}
