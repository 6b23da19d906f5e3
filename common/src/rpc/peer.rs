//! `PeerService`: a storage peer's RPC interface.
//!
//! Peers store opaque sealed chunks named by their BLAKE3 hash; they never
//! hold keys. Every put is verified before it is acknowledged and is durable
//! (fsync of file and directory) when acknowledged. Calls are authorized
//! from the caller's certificate: `put`, `get`, `get_range`, `has` and
//! `get_segment` from clients, admins and peers; `delete`, `list_chunks` and `fetch_from` from
//! dirsvc only; `usage` from dirsvc and admins (`Unauthorized` otherwise).

use crate::ids::ChunkId;
use crate::rpc::dir::PeerUsage;
use serde::{Deserialize, Serialize};

/// Errors of `PeerService` calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The peer does not hold this chunk.
    #[error("chunk {0} not found")]
    NotFound(ChunkId),
    /// Bytes received (put) or read from disk (get) do not hash to the id.
    /// On get the bad copy has been moved aside.
    #[error("chunk {0} failed BLAKE3 verification")]
    HashMismatch(ChunkId),
    /// The peer's disk (or configured capacity) is full.
    #[error("no space left on peer")]
    NoSpace,
    /// `fetch_from`: the source peer could not be reached or did not return
    /// a chunk that verifies.
    #[error("source peer failed: {0}")]
    SourceFailed(String),
    /// A malformed request (range past the end, oversize chunk).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The caller's certificate does not allow this call (EACCES at the
    /// client).
    #[error("not allowed: {0}")]
    Unauthorized(String),
    /// Anything else (an I/O error); the peer's message.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A chunk's bytes on the wire (serialized as one byte string).
pub type Bytes = serde_bytes::ByteBuf;

/// The storage peer service.
#[tarpc::service]
pub trait PeerService {
    /// Stores `bytes` as chunk `id`: verified (BLAKE3) then written durably.
    /// Storing a chunk the peer already has is a no-op success.
    async fn put(id: ChunkId, bytes: Bytes) -> Result<(), PeerError>;
    /// The whole chunk, verified against `id` before it is sent.
    async fn get(id: ChunkId) -> Result<Bytes, PeerError>;
    /// Bytes `[offset, offset + len)` of the chunk (clamped to its end); the
    /// whole chunk is verified first.
    async fn get_range(id: ChunkId, offset: u64, len: u32) -> Result<Bytes, PeerError>;
    /// Which of `ids` the peer holds (same order).
    async fn has(ids: Vec<ChunkId>) -> Result<Vec<bool>, PeerError>;
    /// Deletes a chunk; deleting a missing chunk succeeds.
    async fn delete(id: ChunkId) -> Result<(), PeerError>;
    /// Current disk usage.
    async fn usage() -> Result<PeerUsage, PeerError>;
    /// Copies chunk `id` from the peer `source` to this peer (repair and
    /// drain): fetched over a connection whose certificate must name that
    /// peer, verified, stored durably like a put. Succeeds at once if this
    /// peer already holds a good copy. dirsvc only.
    async fn fetch_from(id: ChunkId, source: super::PeerLoc) -> Result<(), PeerError>;
    /// Inventory for garbage collection: up to `limit` held chunks with id
    /// greater than `after` (all if `None`), ascending, each with its file's
    /// modification time in Unix seconds (when it was stored).
    async fn list_chunks(after: Option<ChunkId>, limit: u32) -> Result<Vec<(ChunkId, i64)>, PeerError>;
    /// Segment `index` (0-based) of the segmented (format v3) chunk `id`
    /// with its range proof: `codec::encode_segment_proof` of the stored
    /// bytes, i.e. the chunk's 44-byte header and the segment's stored
    /// bytes with the BLAKE3 tree hashes a reader needs to check them
    /// against `id` alone (`codec::verify_segment_proof`; format in
    /// docs/FORMATS.md "Outboards and range proofs"). The peer proves from
    /// the chunk's outboard, which it keeps beside the chunk (recomputed
    /// if missing). Same callers as `get` (protocol 10).
    ///
    /// Errors: `NotFound` for a chunk the peer does not hold; `Invalid`
    /// for a chunk that is not segmented (v1/v2: read it with `get`) or an
    /// index past its last segment; `HashMismatch` if the stored copy is
    /// corrupt (moved aside, as for `get`).
    async fn get_segment(id: ChunkId, index: u32) -> Result<Bytes, PeerError>;
}
