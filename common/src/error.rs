//! The error type of this crate's library API.
//!
//! Rules used across p2pfs:
//! - Each crate has one `thiserror` enum for its library API; `anyhow` is
//!   used only in binaries' `main`.
//! - Errors that cross the wire are the per-service enums in [`crate::rpc`]
//!   (`DirError`, `PeerError`): serde enums whose variants are what a caller
//!   must act on, plus `Internal(String)` carrying the server's Display text.
//!   Transport failures stay in `tarpc::client::RpcError`.
//! - An error is logged once, by the layer that replies to the user (the
//!   FUSE adapter, an RPC handler, a CLI `main`), never on the way up.

use crate::ids::ChunkId;

/// Errors from the codec, key handling and transport helpers of `common`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stored bytes do not hash to the expected [`ChunkId`]: the chunk
    /// was altered on disk or in transit.
    #[error("chunk {expected} failed verification: stored bytes hash to {actual}")]
    HashMismatch {
        /// The id the caller asked for.
        expected: ChunkId,
        /// BLAKE3 of the bytes actually received.
        actual: ChunkId,
    },
    /// The chunk does not start with a known magic and version.
    #[error("unknown chunk format (bad magic or version {0})")]
    UnknownFormat(u8),
    /// The chunk is shorter than its header and tag.
    #[error("chunk is truncated ({0} bytes)")]
    Truncated(usize),
    /// Authenticated decryption failed: wrong key or tampered bytes.
    #[error("authenticated decryption failed (wrong volume key or tampered data)")]
    Decrypt,
    /// A segmented (v3) chunk header has a known version but impossible
    /// fields: a segment size that is not a power of two in
    /// [`crate::codec::MIN_SEGMENT_SIZE`, `crate::codec::MAX_PLAINTEXT`], or a
    /// plaintext length over [`crate::codec::MAX_PLAINTEXT`]. Says which.
    #[error("malformed chunk header: {0}")]
    MalformedHeader(String),
    /// Sealed bytes (a whole segmented chunk, or one stored segment) are not
    /// as long as their header says.
    #[error("sealed bytes are {actual} bytes long, their header says {expected}")]
    LengthMismatch {
        /// Length in bytes the header (and segment index) implies.
        expected: u64,
        /// Length in bytes received.
        actual: u64,
    },
    /// A segment index past the last segment of a segmented chunk.
    #[error("segment {index} does not exist (the chunk has {segments})")]
    NoSuchSegment {
        /// The index asked for (0-based).
        index: u32,
        /// How many segments the chunk has.
        segments: u32,
    },
    /// A byte range that is empty, reversed or reaches past the end of the
    /// bytes it refers to.
    #[error("byte range {start}..{end} is empty or outside the {len} bytes")]
    BadRange {
        /// First byte of the range.
        start: u64,
        /// One past the last byte of the range.
        end: u64,
        /// Length in bytes of what the range refers to.
        len: u64,
    },
    /// A range proof does not verify against the chunk id and stored
    /// length: the prover's bytes or hashes are wrong, the proof is for
    /// another range, or it is cut short or has trailing bytes.
    #[error("range proof for chunk {id} does not verify: {reason}")]
    BadProof {
        /// The chunk the proof was checked against.
        id: ChunkId,
        /// What failed (bao-tree's decode error, or trailing bytes).
        reason: String,
    },
    /// An outboard does not belong to the stored bytes it was given with
    /// (the bytes themselves hash to their id): recompute it with
    /// [`crate::codec::outboard`].
    #[error("the outboard of chunk {0} does not match its bytes")]
    OutboardMismatch(ChunkId),
    /// A plaintext is larger than the format allows.
    #[error("plaintext too large: {len} bytes, limit {limit}")]
    TooLarge {
        /// Plaintext length in bytes.
        len: usize,
        /// Limit in bytes.
        limit: usize,
    },
    /// A timestamp outside the range p2pfs stores: nanoseconds of 10⁹ or
    /// more, or seconds outside [`crate::time::MIN_SECS`,
    /// `crate::time::MAX_SECS`] (see [`crate::time::Timestamp::validate`]).
    #[error(
        "invalid timestamp {secs} s + {nanos} ns (nanoseconds must be below 10^9, seconds in [{}, {}])",
        crate::time::MIN_SECS,
        crate::time::MAX_SECS
    )]
    InvalidTimestamp {
        /// The seconds field as received.
        secs: i64,
        /// The nanoseconds field as received.
        nanos: u32,
    },
    /// A key or identity could not be parsed, wrapped or unwrapped.
    #[error("key error: {0}")]
    Key(String),
    /// The identity cannot unwrap the volume's newest key epoch: it is not
    /// (or no longer) a member.
    #[error("this identity cannot unwrap key epoch {epoch}: {reason}")]
    NotMember {
        /// The newest epoch.
        epoch: u32,
        /// age's answer.
        reason: String,
    },
    /// The keyring does not verify (an epoch not linked to the one
    /// before, a secret that does not match its key-check value, …): it
    /// was not made by members. Says which epoch and what.
    #[error("the volume's keyring does not verify: {0}")]
    BadKeyring(String),
    /// A socket or file operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
