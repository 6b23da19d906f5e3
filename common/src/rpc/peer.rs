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

/// A chunk's bytes on the wire, serialized as one byte string (as
/// `serde_bytes::ByteBuf`, which this replaced: frames are unchanged).
///
/// Shared by reference count: a put sent to three replicas, and each retry
/// of it, sends the same bytes without copying them (a `ByteBuf` was
/// copied once per replica and once more per call attempt: 11 % of the
/// client's CPU time in a 1 GiB write, by `perf`). Decoding copies the
/// bytes out of the frame once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bytes(tokio_util::bytes::Bytes);

impl Bytes {
    /// The bytes as a vector: no copy when this is the only reference.
    pub fn into_vec(self) -> Vec<u8> {
        Vec::from(self.0)
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v.into())
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    /// Inside a frame that [`crate::wire::Codec`] decodes, the bytes stay
    /// in the frame (a shared slice of it); elsewhere they are copied.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Bytes;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
                Ok(crate::wire::shared_from_frame(v).map_or_else(|| Bytes::from(v.to_vec()), Bytes))
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::from(v.to_vec()))
            }

            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    v.push(b);
                }
                Ok(Bytes::from(v))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

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
