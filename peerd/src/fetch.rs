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
//!    (`common::net::Pool`) whose certificate must name the source peer,
//!    with a deadline of [`CHUNK_DEADLINE`] (or the caller's own deadline if
//!    that is sooner). A cached connection that turns out to be closed (the
//!    source restarted) is replaced and the call retried once.
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
use common::net::{Pool, RetryPolicy};
use common::rpc::peer::{Bytes, PeerServiceClient};
use common::rpc::{PeerLoc, Role};
use common::tls::Expect;
use common::ChunkId;
use std::time::Instant;
use tracing::debug;

/// Asks peer `source` for the whole chunk `id` over a pooled connection
/// (its certificate must name that peer), by `deadline`; a pooled
/// connection that turns out to be closed (the source restarted) is
/// replaced and the call made once more. Returns the bytes as the source
/// sent them (not verified here); errors are the reason text for
/// [`Error::SourceFailed`].
async fn get_chunk(
    pool: &Pool<PeerServiceClient>,
    source: &PeerLoc,
    id: ChunkId,
    deadline: Instant,
) -> Result<Bytes, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    match pool
        .call(
            &source.addr,
            Expect::Node(Role::Peer, source.id.into()),
            left,
            &RetryPolicy::FRESH_ONCE,
            |c, ctx| async move { c.get(ctx, id).await },
        )
        .await
    {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(format!("get refused: {e}")),
        Err(e) => {
            debug!(source = %source.addr, error = %e, "get from the source failed");
            Err(format!("get failed: {}", e.detail))
        }
    }
}

/// Copies chunk `id` from the peer `source` into `store` (see the module
/// docs for the steps). `deadline` bounds the whole copy; the source's `get`
/// gets at most [`CHUNK_DEADLINE`] of it.
///
/// Errors: [`Error::SourceFailed`] (nothing stored); [`Error::NoSpace`];
/// [`Error::Io`] and [`Error::Task`] for local failures.
pub async fn fetch_from<S: ChunkStore>(
    store: &S,
    pool: &Pool<PeerServiceClient>,
    id: ChunkId,
    source: &PeerLoc,
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
    let failed = |reason: String| Error::SourceFailed { addr: source.addr.clone(), reason };
    let bytes = get_chunk(pool, source, id, deadline).await.map_err(failed)?;
    let len = bytes.len();
    metrics::counter!(crate::telemetry::RECEIVED_BYTES, "rpc" => "fetch_from").increment(len as u64);
    match store.put(id, bytes).await {
        Ok(()) => {
            debug!(chunk = %id, source = %source.addr, bytes = len, "chunk copied from source");
            Ok(())
        }
        Err(Error::HashMismatch { actual, .. }) => {
            Err(failed(format!("sent {len} bytes that hash to {}, not {}", actual.to_hex(), id.to_hex())))
        }
        Err(e @ Error::TooLarge { .. }) => Err(failed(format!("sent an oversize chunk: {e}"))),
        Err(e) => Err(e),
    }
}
