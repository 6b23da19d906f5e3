//! The error type of peerd's library API and its mapping to the wire error
//! [`PeerError`].

use common::rpc::peer::PeerError;
use common::ChunkId;
use std::io;
use std::path::PathBuf;

/// Errors of the chunk store, the peer id file and the server.
///
/// At the RPC boundary every value becomes a [`PeerError`] (see the `From`
/// impl): `NotFound`, `HashMismatch`, `NoSpace` and `SourceFailed` keep
/// their meaning, request errors become `Invalid`, everything else
/// `Internal` with this type's Display text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store does not hold this chunk.
    #[error("chunk {0} not found")]
    NotFound(ChunkId),
    /// Bytes (received on put, or read back from disk on get) do not hash to
    /// the chunk's id. On get, the bad file has already been moved aside.
    #[error("chunk {expected} failed BLAKE3 verification: bytes hash to {actual}")]
    HashMismatch {
        /// The id the bytes were supposed to have.
        expected: ChunkId,
        /// BLAKE3 of the bytes actually seen.
        actual: ChunkId,
    },
    /// Storing `needed` more bytes would exceed the configured capacity or
    /// the free space of the filesystem, or the disk reported ENOSPC/EDQUOT.
    #[error("no space left for {needed} more bytes")]
    NoSpace {
        /// Size of the refused chunk in bytes.
        needed: u64,
    },
    /// The TLS identity is missing or unusable, or joining failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// A setting is malformed (e.g. the dirsvc address list), with why.
    #[error("configuration: {0}")]
    Config(String),
    /// A chunk is larger than any sealed chunk can be.
    #[error("chunk of {len} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// Size of the refused chunk in bytes.
        len: u64,
        /// Largest chunk accepted, in bytes (`codec::MAX_STORED`).
        limit: u64,
    },
    /// A range read starts past the end of the chunk.
    #[error("range offset {offset} is past the end of chunk {id} ({len} bytes)")]
    RangeOutOfBounds {
        /// The chunk read.
        id: ChunkId,
        /// Requested start offset in bytes.
        offset: u64,
        /// The chunk's length in bytes.
        len: u64,
    },
    /// `get_segment` of a chunk that has no segments: a v1/v2 chunk (read
    /// it whole), or one whose v3 header does not describe its bytes.
    #[error("chunk {id} cannot be read by segment: {reason}")]
    NotSegmented {
        /// The chunk asked for.
        id: ChunkId,
        /// Why (the format, or what is wrong with its header).
        reason: String,
    },
    /// `get_segment` of an index past the chunk's last segment.
    #[error("chunk {id} has {segments} segments, segment {index} was asked for")]
    NoSuchSegment {
        /// The chunk asked for.
        id: ChunkId,
        /// The index asked for (0-based).
        index: u32,
        /// How many segments the chunk has.
        segments: u32,
    },
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("write", "rename", ...).
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The `peer-id` file exists but does not hold 32 hex digits. peerd
    /// refuses to invent a new id, since dirsvc knows its chunks by the old one.
    #[error("peer id file {path} is malformed: {reason}")]
    BadPeerId {
        /// Path of the file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The kept revocation list (`<data_dir>/revoked`) is not one. peerd
    /// refuses to start rather than forget revocations.
    #[error("revocation list {path} is malformed; restore it or delete it (the next heartbeat fetches the list again, accepting revoked nodes until then)")]
    BadRevocations {
        /// Path of the file.
        path: PathBuf,
    },
    /// Another process (or another store in this process) has the data
    /// directory open.
    #[error("data directory {0} is in use by another peerd (lock file held)")]
    Locked(PathBuf),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address given in the configuration.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `fetch_from`: the source peer could not be reached, did not have the
    /// chunk, or sent bytes that do not verify. Nothing was stored.
    #[error("source peer {addr}: {reason}")]
    SourceFailed {
        /// The source's `host:port` as given by the caller.
        addr: String,
        /// What went wrong, for the log and the caller.
        reason: String,
    },
    /// A blocking file task panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(String),
}

impl Error {
    /// An [`Error::Io`] constructor for `map_err`: `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// Returns whether `e` means the disk (or the user's quota) is full.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl From<Error> for PeerError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(id) => PeerError::NotFound(id),
            Error::HashMismatch { expected, .. } => PeerError::HashMismatch(expected),
            Error::NoSpace { .. } => PeerError::NoSpace,
            e @ Error::SourceFailed { .. } => PeerError::SourceFailed(e.to_string()),
            e @ (Error::TooLarge { .. }
            | Error::RangeOutOfBounds { .. }
            | Error::NotSegmented { .. }
            | Error::NoSuchSegment { .. }) => PeerError::Invalid(e.to_string()),
            e => PeerError::Internal(e.to_string()),
        }
    }
}
