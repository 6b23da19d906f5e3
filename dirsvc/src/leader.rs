//! Who may write the metadata: the leader's *terms*.
//!
//! A dirsvc serves the volume only during a term of leadership. With the
//! embedded engine there is one dirsvc and one endless term ([`Sole`]).
//! With several dirsvc over one etcd cluster an election decides (the etcd
//! engine's election, a lease-backed key whose revision fences every
//! commit); this module only sees it through [`Leadership`].
//!
//! What a term owns: everything dirsvc holds in memory (the peer mirror,
//! sessions' open marks and locks, inode reservations, the change feed)
//! and the background workers (repair, GC, session expiry). A new term
//! starts from the store exactly as a restart does: the live sessions are
//! read back and a grace period lets their clients reclaim opens and locks
//! (docs/OPERATIONS.md, "Several dirsvc"). When a term ends, its workers
//! stop, its connections close and calls are answered with
//! `DirError::NotLeader` naming the leader, which clients follow.

use crate::error::Error;
use std::future::Future;
use std::pin::Pin;
use tokio_util::sync::CancellationToken;

/// A term of leadership: valid until `ended` fires (the lease lapsed, the
/// election key changed, the process stops).
#[derive(Clone, Debug)]
pub struct Term {
    /// Fires when this instance is no longer the leader.
    pub ended: CancellationToken,
}

/// How this dirsvc becomes, and learns it no longer is, the leader.
pub trait Leadership: std::fmt::Debug + Send + Sync + 'static {
    /// Waits until this instance is the leader and returns the term (or an
    /// error if the election itself failed for good; transient failures are
    /// retried inside). Dropping the future abandons the campaign.
    fn campaign(&self) -> Pin<Box<dyn Future<Output = Result<Term, Error>> + Send + '_>>;

    /// The leader's RPC address (`host:port`) as last seen; `None` while no
    /// leader is elected. Followers hand it to clients in `NotLeader`.
    fn leader(&self) -> Option<String>;

    /// Whether terms can end and others can lead (false for [`Sole`]: the
    /// one instance leads from start to stop).
    fn elective(&self) -> bool;
}

/// The only dirsvc of an embedded (redb) volume: leader from start to stop.
#[derive(Debug, Default)]
pub struct Sole {
    ended: CancellationToken,
}

impl Leadership for Sole {
    fn campaign(&self) -> Pin<Box<dyn Future<Output = Result<Term, Error>> + Send + '_>> {
        let term = Term { ended: self.ended.clone() };
        Box::pin(async move { Ok(term) })
    }

    fn leader(&self) -> Option<String> {
        None
    }

    fn elective(&self) -> bool {
        false
    }
}
