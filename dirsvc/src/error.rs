//! The error type of dirsvc's library API, and its mapping to `DirError`.
//!
//! Domain outcomes a caller must act on (no such entry, not empty, …) are
//! carried as [`Error::Dir`] with the wire enum itself, so the RPC layer
//! passes them through unchanged. Everything else (the database failed, a
//! record does not decode, a blocking task died) becomes
//! `DirError::Internal` with this error's Display text at the RPC boundary,
//! which is also where it is logged.

use common::rpc::dir::DirError;

/// Errors of the dirsvc library (store, server, spawn).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A namespace or request error reported to the caller as is.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// The embedded database failed (I/O, corruption detected by redb, …).
    #[error("database: {0}")]
    Db(#[from] DbError),
    /// A stored record does not decode: the database holds data this
    /// version cannot read.
    #[error("corrupt {what} record: {reason}")]
    Corrupt {
        /// Which kind of record.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The database was written with a table layout this version does not
    /// know.
    #[error("database schema version {found} is not supported (this dirsvc reads {supported})")]
    Schema {
        /// Version found in the database.
        found: u32,
        /// Version this build reads and writes.
        supported: u32,
    },
    /// A socket or file operation failed (bind, accept, address file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The TLS identity is missing or unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// A blocking database task panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(String),
    /// The metadata engine cannot be reached or has no quorum right now
    /// (etcd down, a timeout); the same call may succeed later.
    #[error("metadata engine unavailable: {0}")]
    Unavailable(String),
    /// This dirsvc is not (or no longer) the leader: its commits are
    /// fenced off. Carries what the engine said.
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// One transaction wrote more keys than the engine takes in one commit.
    #[error("transaction too large: {ops} writes, the engine takes {max}")]
    TooLarge {
        /// Writes the transaction made.
        ops: usize,
        /// Most the engine accepts ([`crate::kv::Engine::max_ops`]).
        max: usize,
    },
    /// The engine refused a commit for good (not retryable); nothing of it
    /// was applied.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// `dirsvc migrate` refused to start (the target holds keys, the
    /// source is in use by a running dirsvc) or found the copy different
    /// from its source. Says which and why.
    #[error("migrate: {0}")]
    Migrate(String),
}

impl Error {
    /// Whether the same operation may succeed if run again later: only
    /// [`Error::Unavailable`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// An error of the embedded database engine. Opaque, so the engine can be
/// replaced without changing this crate's API; its Display text says what
/// failed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DbError(redb::Error);

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Db(DbError(e.into()))
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<Error> for DirError {
    fn from(e: Error) -> Self {
        match e {
            Error::Dir(d) => d,
            Error::Unavailable(why) => DirError::Unavailable(why),
            // The server replaces `None` with the leader it knows of.
            Error::NotLeader(_) => DirError::NotLeader { leader: None },
            other => DirError::Internal(other.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Task(e.to_string())
    }
}

/// Shorthand for an `Invalid` domain error with a reason.
pub(crate) fn invalid(reason: impl Into<String>) -> Error {
    Error::Dir(DirError::Invalid(reason.into()))
}
