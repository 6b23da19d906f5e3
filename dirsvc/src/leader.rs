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

    /// Gives the current term up (this instance cannot serve it: its state
    /// did not load), so another can lead. Default: nothing.
    fn resign(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
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

/// Leadership decided by an etcd election ([`crate::kv::etcd::election`]):
/// a term lasts while the election says this process leads; its end is
/// noticed from the election's state (lease lost, key gone), and etcd
/// itself refuses the deposed leader's commits (the fence).
pub struct EtcdLeadership {
    election: crate::kv::etcd::election::Election,
}

impl std::fmt::Debug for EtcdLeadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLeadership").field("election", &self.election).finish()
    }
}

impl EtcdLeadership {
    /// Leadership through `election` (made by
    /// [`crate::kv::etcd::EtcdEngine::election`] on the store's engine).
    pub fn new(election: crate::kv::etcd::election::Election) -> EtcdLeadership {
        EtcdLeadership { election }
    }
}

impl Leadership for EtcdLeadership {
    fn campaign(&self) -> Pin<Box<dyn Future<Output = Result<Term, Error>> + Send + '_>> {
        use crate::kv::etcd::election::LeaderState;
        Box::pin(async move {
            let mut state = self.election.state();
            self.election.campaign().await?;
            let ended = CancellationToken::new();
            let end = ended.clone();
            tokio::spawn(async move {
                loop {
                    if !matches!(*state.borrow_and_update(), LeaderState::Leader { .. }) {
                        break;
                    }
                    if state.changed().await.is_err() {
                        break;
                    }
                }
                end.cancel();
            });
            Ok(Term { ended })
        })
    }

    fn leader(&self) -> Option<String> {
        match &*self.election.state().borrow() {
            crate::kv::etcd::election::LeaderState::Follower { leader } => leader.clone(),
            crate::kv::etcd::election::LeaderState::Leader { .. } => None,
        }
    }

    fn elective(&self) -> bool {
        true
    }

    fn resign(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if let Err(e) = self.election.resign().await {
                tracing::warn!(error = %e, "resigning from the election failed; the lease will lapse");
            }
        })
    }
}
