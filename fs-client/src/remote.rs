//! Connections to dirsvc and to peers: reconnecting clients and retries.
//!
//! One tarpc connection per remote (tarpc multiplexes concurrent calls on
//! it). A call that fails in transport (connection shut down, send failure)
//! drops the connection, reconnects with backoff and retries a bounded number
//! of times; domain errors are returned at once. Metadata calls use
//! [`META_DEADLINE`], chunk transfers [`CHUNK_DEADLINE`].

use crate::error::{Error, Result};
use common::config::{CHUNK_DEADLINE, META_DEADLINE};
use common::rpc::dir::{DirError, DirServiceClient};
use common::rpc::peer::{Bytes, PeerError, PeerServiceClient};
use common::rpc::PeerLoc;
use common::transport::{deadline, dir_client, peer_client};
use common::ChunkId;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tarpc::client::RpcError;
use tarpc::context::Context;
use tracing::{debug, warn};

/// How long a dirsvc call keeps retrying transport failures by default
/// (a short window, for CLI commands).
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(3);

/// The retry window of a mount: long enough to ride out a dirsvc restart.
pub const MOUNT_RETRY_WINDOW: Duration = Duration::from_secs(60);

fn transient(e: &RpcError) -> bool {
    matches!(e, RpcError::Shutdown | RpcError::Send(_) | RpcError::Channel(_))
}

/// Exponential backoff from 100 ms, capped at 2 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(5)).min(2000))
}

/// A reconnecting client of dirsvc.
///
/// Transport failures (connection refused or lost) are retried with
/// backoff until the retry window ends, so a dirsvc restart is a pause, not
/// an error. A call that was sent but whose answer was lost is sent again:
/// a mutation can then report `Exists` or `NotFound` for its own first
/// attempt (documented in docs/OPERATIONS.md).
pub struct DirClient {
    addr: String,
    client: tokio::sync::Mutex<Option<DirServiceClient>>,
    retry_window: Duration,
}

impl DirClient {
    /// Connects to dirsvc at `addr` (`host:port`) and checks the protocol
    /// version.
    ///
    /// Errors: [`Error::Rpc`] if it cannot connect or speaks another version.
    pub async fn connect(addr: &str) -> Result<Self> {
        let me = DirClient {
            addr: addr.to_string(),
            client: tokio::sync::Mutex::new(None),
            retry_window: DEFAULT_RETRY_WINDOW,
        };
        let version = me.raw(|c, ctx| async move { c.hello(ctx).await.map(Ok) }).await?;
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
        self.retry_window = window;
        self
    }

    /// The address this client talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn client(&self) -> Result<DirServiceClient> {
        let mut g = self.client.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let c = dir_client(&self.addr)
            .await
            .map_err(|e| Error::Rpc { addr: self.addr.clone(), detail: e.to_string() })?;
        *g = Some(c.clone());
        Ok(c)
    }

    async fn drop_client(&self) {
        *self.client.lock().await = None;
    }

    async fn raw<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(DirServiceClient, Context) -> Fut,
        Fut: Future<Output = Result<Result<T, DirError>, RpcError>>,
    {
        let mut last = String::new();
        let give_up = tokio::time::Instant::now() + self.retry_window;
        for attempt in 0.. {
            if attempt > 0 {
                if tokio::time::Instant::now() >= give_up {
                    break;
                }
                tokio::time::sleep(backoff(attempt)).await;
            }
            let c = match self.client().await {
                Ok(c) => c,
                Err(Error::Rpc { detail, .. }) => {
                    last = detail;
                    continue;
                }
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            match f(c, deadline(META_DEADLINE)).await {
                Ok(r) => return r.map_err(Error::Dir),
                Err(e) if transient(&e) => {
                    debug!(addr = %self.addr, error = %e, attempt, "dirsvc connection lost; reconnecting");
                    self.drop_client().await;
                    last = e.to_string();
                }
                Err(e) => return Err(Error::Rpc { addr: self.addr.clone(), detail: e.to_string() }),
            }
        }
        Err(Error::Rpc { addr: self.addr.clone(), detail: last })
    }

    /// Runs one DirService call with reconnects and retries on transport
    /// failures. `f` gets a client and a context with the metadata deadline.
    ///
    /// Errors: [`Error::Dir`] for dirsvc's answer, [`Error::Rpc`] when the
    /// transport kept failing for the retry window, or the deadline passed.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(DirServiceClient, Context) -> Fut,
        Fut: Future<Output = Result<Result<T, DirError>, RpcError>>,
    {
        self.raw(f).await
    }
}

/// Connections to storage peers, one per address, made on first use.
#[derive(Default)]
pub struct PeerPool {
    clients: Mutex<HashMap<String, PeerServiceClient>>,
}

impl PeerPool {
    async fn client(&self, addr: &str) -> Result<PeerServiceClient> {
        if let Some(c) = self.clients.lock().unwrap_or_else(|p| p.into_inner()).get(addr) {
            return Ok(c.clone());
        }
        let c = peer_client(addr)
            .await
            .map_err(|e| Error::Rpc { addr: addr.to_string(), detail: e.to_string() })?;
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn forget(&self, addr: &str) {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
    }

    async fn call<T, F, Fut>(&self, peer: &PeerLoc, f: F) -> Result<T>
    where
        F: Fn(PeerServiceClient, Context) -> Fut,
        Fut: Future<Output = Result<Result<T, PeerError>, RpcError>>,
    {
        // Two attempts: one on the pooled connection, one on a fresh one, so
        // a peer that restarted is picked up, but a dead peer costs little.
        let mut last = String::new();
        for attempt in 0..2 {
            let c = match self.client(&peer.addr).await {
                Ok(c) => c,
                Err(Error::Rpc { detail, .. }) => {
                    last = detail;
                    break;
                }
                Err(e) => {
                    last = e.to_string();
                    break;
                }
            };
            match f(c, deadline(CHUNK_DEADLINE)).await {
                Ok(r) => return r.map_err(Error::Peer),
                Err(e) => {
                    self.forget(&peer.addr);
                    last = e.to_string();
                    if !transient(&e) || attempt == 1 {
                        break;
                    }
                }
            }
        }
        Err(Error::Rpc { addr: peer.addr.clone(), detail: last })
    }

    /// Stores a sealed chunk on `peer` (durable when this returns `Ok`).
    ///
    /// Errors: [`Error::Peer`] for the peer's refusal, [`Error::Rpc`] when
    /// it cannot be reached.
    pub async fn put(&self, peer: &PeerLoc, id: ChunkId, bytes: Vec<u8>) -> Result<()> {
        let bytes = Bytes::from(bytes);
        self.call(peer, |c, ctx| {
            let bytes = bytes.clone();
            async move { c.put(ctx, id, bytes).await }
        })
        .await
    }

    /// Fetches a whole sealed chunk from `peer`; the caller verifies it.
    ///
    /// Errors: as [`PeerPool::put`].
    pub async fn get(&self, peer: &PeerLoc, id: ChunkId) -> Result<Vec<u8>> {
        let r = self.call(peer, |c, ctx| async move { c.get(ctx, id).await }).await;
        if let Err(e) = &r {
            warn!(peer = %peer.id, addr = %peer.addr, chunk = %id, error = %e, "replica read failed");
        }
        r.map(|b| b.into_vec())
    }
}
