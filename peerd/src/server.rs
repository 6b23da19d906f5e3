//! The `PeerService` RPC handlers: a thin layer over a [`ChunkStore`] (and,
//! for `fetch_from`, a pool of connections to other peers) that authorizes
//! each call from the caller's certificate, converts errors to
//! [`PeerError`] and logs each failure once.
//!
//! Who may call what: `put`, `get`, `get_range`, `get_segment`, `has` — clients, admins
//! and peers (a peer reads from another for `fetch_from`); `delete`,
//! `list_chunks`, `fetch_from` — dirsvc only (they destroy data or spend
//! this peer's bandwidth); `usage` — dirsvc and admins.

use crate::error::Error;
use crate::fetch::fetch_from;
use crate::store::ChunkStore;
use common::net::Pool;
use common::rpc::dir::PeerUsage;
use common::rpc::peer::PeerServiceClient;
use common::rpc::peer::{Bytes, PeerError, PeerService};
use common::rpc::{PeerLoc, Role};
use common::tls::{Caller, Tls};
use common::ChunkId;
use std::sync::Arc;
use tarpc::context::Context;
use tracing::{debug, error, instrument, warn};

/// Serves `PeerService` from a chunk store. Cheap to clone (one per
/// connection and request); clones share the store and the pool of
/// connections to source peers.
pub struct PeerServer<S> {
    store: Arc<S>,
    pool: Arc<Pool<PeerServiceClient>>,
    /// Who speaks on this connection.
    caller: Option<Caller>,
}

impl<S> Clone for PeerServer<S> {
    fn clone(&self) -> Self {
        PeerServer { store: self.store.clone(), pool: self.pool.clone(), caller: self.caller.clone() }
    }
}

/// Who may store and read chunks.
const READERS: &[Role] = &[Role::Client, Role::Admin, Role::Peer];

impl<S: ChunkStore> PeerServer<S> {
    /// A server over `store`, with an empty pool of source connections
    /// that connect as `tls`.
    pub fn new(store: S, tls: Arc<Tls>) -> Self {
        PeerServer { store: Arc::new(store), pool: Arc::new(Pool::new(tls)), caller: None }
    }

    /// The connections this server makes to other peers (`fetch_from`).
    pub fn pool(&self) -> &Arc<Pool<PeerServiceClient>> {
        &self.pool
    }

    /// The same server for one connection from `caller`.
    pub fn for_connection(&self, caller: Option<Caller>) -> Self {
        PeerServer { caller, ..self.clone() }
    }

    /// Ok if the caller's certificate has one of `roles`.
    ///
    /// Errors: `Unauthorized`, also without a certificate.
    fn allow(&self, op: &'static str, roles: &[Role]) -> Result<(), PeerError> {
        match &self.caller {
            Some(c) if roles.contains(&c.role) => Ok(()),
            Some(c) => {
                warn!(op, caller = ?c, "call refused: not allowed for this role");
                Err(PeerError::Unauthorized(format!("{op} is not allowed for a {} certificate", c.role)))
            }
            None => {
                warn!(op, "call refused: no certificate");
                Err(PeerError::Unauthorized(format!("{op} needs a certificate of the cluster")))
            }
        }
    }
}

/// Converts a store result to the wire result, logging the failure: requests
/// for missing chunks and malformed requests at DEBUG (callers handle them),
/// rejected or corrupt data, failed sources and full disks at WARN, anything
/// else at ERROR.
fn reply<T>(op: &'static str, r: Result<T, Error>) -> Result<T, PeerError> {
    r.map_err(|e| {
        match &e {
            Error::NotFound(_)
            | Error::TooLarge { .. }
            | Error::RangeOutOfBounds { .. }
            | Error::NotSegmented { .. }
            | Error::NoSuchSegment { .. } => {
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
        self.allow("put", READERS)?;
        metrics::counter!(crate::telemetry::RECEIVED_BYTES, "rpc" => "put").increment(bytes.len() as u64);
        reply("put", self.store.put(id, bytes).await)
    }

    #[instrument(skip_all, fields(chunk = %id))]
    async fn get(self, _: Context, id: ChunkId) -> Result<Bytes, PeerError> {
        self.allow("get", READERS)?;
        let r = reply("get", self.store.get(id).await.map(Bytes::from));
        if let Ok(b) = &r {
            metrics::counter!(crate::telemetry::SENT_BYTES, "rpc" => "get").increment(b.len() as u64);
        }
        r
    }

    #[instrument(skip_all, fields(chunk = %id, offset, len))]
    async fn get_range(self, _: Context, id: ChunkId, offset: u64, len: u32) -> Result<Bytes, PeerError> {
        self.allow("get_range", READERS)?;
        let r = reply("get_range", self.store.get_range(id, offset, len).await.map(Bytes::from));
        if let Ok(b) = &r {
            metrics::counter!(crate::telemetry::SENT_BYTES, "rpc" => "get_range").increment(b.len() as u64);
        }
        r
    }

    #[instrument(skip_all, fields(count = ids.len()))]
    async fn has(self, _: Context, ids: Vec<ChunkId>) -> Result<Vec<bool>, PeerError> {
        self.allow("has", READERS)?;
        reply("has", self.store.has(ids).await)
    }

    #[instrument(skip_all, fields(chunk = %id))]
    async fn delete(self, _: Context, id: ChunkId) -> Result<(), PeerError> {
        self.allow("delete", &[Role::Dirsvc])?;
        reply("delete", self.store.delete(id).await)
    }

    #[instrument(skip_all)]
    async fn usage(self, _: Context) -> Result<PeerUsage, PeerError> {
        self.allow("usage", &[Role::Dirsvc, Role::Admin])?;
        reply("usage", self.store.usage().await)
    }

    #[instrument(skip_all, fields(chunk = %id, source = %source.addr))]
    async fn fetch_from(self, ctx: Context, id: ChunkId, source: PeerLoc) -> Result<(), PeerError> {
        self.allow("fetch_from", &[Role::Dirsvc])?;
        reply("fetch_from", fetch_from(&*self.store, &self.pool, id, &source, ctx.deadline).await)
    }

    #[instrument(skip_all, fields(after = ?after.map(|a| a.fmt_short()), limit = limit))]
    async fn list_chunks(
        self,
        _: Context,
        after: Option<ChunkId>,
        limit: u32,
    ) -> Result<Vec<(ChunkId, i64)>, PeerError> {
        self.allow("list_chunks", &[Role::Dirsvc])?;
        reply("list_chunks", self.store.list_chunks(after, limit).await)
    }

    #[instrument(skip_all, fields(chunk = %id, index))]
    async fn get_segment(self, _: Context, id: ChunkId, index: u32) -> Result<Bytes, PeerError> {
        self.allow("get_segment", READERS)?;
        let r = reply("get_segment", self.store.get_segment(id, index).await.map(Bytes::from));
        if let Ok(b) = &r {
            metrics::counter!(crate::telemetry::SENT_BYTES, "rpc" => "get_segment").increment(b.len() as u64);
        }
        r
    }
}
