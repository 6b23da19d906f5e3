//! The error type of fs-client and its mapping to errno at the FUSE boundary.

use common::rpc::dir::DirError;
use common::rpc::peer::PeerError;

/// Errors of the client library. Each maps to one errno ([`Error::errno`]).
/// Cloneable so that one failed fetch can be reported to every reader that
/// waited on it.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// dirsvc answered with a domain error.
    #[error("directory service: {0}")]
    Dir(#[from] DirError),
    /// No replica of a chunk could be read and verified.
    #[error("chunk {chunk} unavailable: {detail}")]
    ChunkUnavailable {
        /// Short id of the chunk.
        chunk: String,
        /// What each replica answered.
        detail: String,
    },
    /// A block could not be stored on enough peers.
    #[error("upload failed: {0}")]
    Upload(String),
    /// A block could not be stored because the peers that answered have no
    /// room for it (ENOSPC).
    #[error("no space left on the peers: {0}")]
    NoSpace(String),
    /// A peer answered with a domain error.
    #[error("peer: {0}")]
    Peer(#[from] PeerError),
    /// A connection or RPC to dirsvc or a peer failed (after retries).
    #[error("rpc to {addr} failed: {detail}")]
    Rpc {
        /// The address called.
        addr: String,
        /// tarpc's or the socket's message.
        detail: String,
    },
    /// Sealing or opening data failed (wrong key, tampered data).
    #[error("crypto: {0}")]
    Crypto(String),
    /// Something dirsvc served is not what a member wrote there: a layout
    /// entry whose MAC does not verify (a chunk moved to another file or
    /// block), a symlink target or attribute value sealed for another
    /// inode. EIO; never the wrong bytes.
    #[error("integrity: {0}")]
    Integrity(String),
    /// A name, target or argument is not acceptable.
    #[error("{1}")]
    Errno(i32, String),
    /// A key or identity problem (CLI).
    #[error("{0}")]
    Key(String),
    /// Local I/O (identity files, mount point).
    #[error("{0}")]
    Io(String),
}

impl From<common::Error> for Error {
    fn from(e: common::Error) -> Self {
        Error::Crypto(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

impl Error {
    /// The errno a FUSE reply carries for this error, by the policy of
    /// docs/SEMANTICS.md ("Errors"): ENOENT, EEXIST, ENOTEMPTY, ENOTDIR,
    /// EISDIR, EINVAL, ENAMETOOLONG, ENODATA (no such xattr), E2BIG, EAGAIN
    /// (lock held); ENOSPC when data or attributes did not fit (peers full,
    /// also when some are down and the rest full; an inode's xattr budget);
    /// EIO for anything that failed in transit or verification, including
    /// no reachable peer at all.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Dir(d) => match d {
                DirError::NotFound => libc::ENOENT,
                DirError::Exists => libc::EEXIST,
                DirError::NotEmpty => libc::ENOTEMPTY,
                DirError::NotDir => libc::ENOTDIR,
                DirError::IsDir => libc::EISDIR,
                DirError::Invalid(_) => libc::EINVAL,
                DirError::NameTooLong => libc::ENAMETOOLONG,
                DirError::PeersFull { .. } | DirError::NoSpace => libc::ENOSPC,
                DirError::NoAttr => libc::ENODATA,
                DirError::TooBig => libc::E2BIG,
                DirError::WouldBlock | DirError::Grace | DirError::Limit(_) => libc::EAGAIN,
                DirError::Unauthorized(_) => libc::EACCES,
                _ => libc::EIO,
            },
            Error::Peer(PeerError::NoSpace) | Error::NoSpace(_) => libc::ENOSPC,
            Error::Peer(PeerError::Unauthorized(_)) => libc::EACCES,
            Error::Errno(e, _) => *e,
            _ => libc::EIO,
        }
    }

    /// Whether this is an ordinary "no such entry" (logged at debug only).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Dir(DirError::NotFound))
    }

    /// Whether this is the answer to a request the user got wrong (ENOENT,
    /// EEXIST, ENOTEMPTY, …), as opposed to a failure of the system: those
    /// are logged at debug, failures at warn.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Dir(d) => !matches!(
                d,
                DirError::Internal(_)
                    | DirError::NoPeers { .. }
                    | DirError::PeersFull { .. }
                    | DirError::NotInitialized
                    | DirError::NoSession
                    | DirError::ChunkGone(_)
                    | DirError::UploadUnverified { .. }
                    | DirError::StaleEpoch { .. }
                    | DirError::NotReserved(_)
                    | DirError::KeyringChanged { .. }
                    | DirError::NotLeader { .. }
                    | DirError::Unavailable(_)
            ),
            Error::Errno(e, _) => *e != libc::EIO,
            _ => false,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
