//! Client sessions and what hangs off them: leases, locks, the change
//! feed, joins, revocations and renewals.

use super::*;

/// A client session: one mounted fs-client, known to dirsvc while it renews
/// its lease. Sessions own open-file marks (which keep unlinked files alive)
/// and locks; both go when the session closes or its lease runs out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a client sends to open (or reclaim) a session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpen {
    /// Who this is, for logs and the admin view (e.g. `host pid=123 /mnt`).
    pub label: String,
    /// The id this client had before, when it lost its session (dirsvc
    /// restarted or the lease ran out). With it come the opens and locks the
    /// client still holds; dirsvc grants what it can (all of it during the
    /// grace period after its start) and names the rest in the grant.
    pub reclaim: Option<SessionId>,
    /// Inodes the client holds open (reclaim only).
    pub open_inodes: Vec<InodeId>,
    /// Locks the client holds (reclaim only).
    pub locks: Vec<Lock>,
}

/// dirsvc's answer to `open_session`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionGrant {
    /// The session id to pass to session calls (a reclaim keeps the old id).
    pub id: SessionId,
    /// Lease length in milliseconds: the session ends if no `renew_session`
    /// arrives for this long. Clients renew at a third of it.
    pub lease_ms: u64,
    /// Reclaimed inodes that no longer exist (freed while the client was
    /// away); their handles are stale.
    pub lost_inodes: Vec<InodeId>,
    /// Reclaimed locks that another session took meanwhile; the client no
    /// longer holds them.
    pub lost_locks: Vec<Lock>,
    /// Most block entries one `commit_layout` may carry at this dirsvc (its
    /// store engine's transaction limit: 25 on etcd, 13,106 on redb, or
    /// less if configured); clients batch their commits by it (protocol 8).
    pub max_commit_entries: u32,
}

/// Whether a lock is shared or exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockKind {
    /// Shared (`F_RDLCK`, `LOCK_SH`): compatible with other shared locks.
    Read,
    /// Exclusive (`F_WRLCK`, `LOCK_EX`): conflicts with every other lock.
    Write,
}

/// Which lock family; the two never conflict with each other (as on Linux).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockFlavor {
    /// POSIX record locks (`fcntl F_SETLK`, `lockf`): byte ranges; a new lock
    /// by the same owner replaces, splits or merges its overlapping ranges.
    Posix,
    /// BSD `flock(2)` locks: always the whole file (`start` 0, `end`
    /// `u64::MAX`); owned per open file description.
    Flock,
}

/// A lock held or requested on a byte range of one inode.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lock {
    /// The locked inode.
    pub ino: InodeId,
    /// Owner within the session (FUSE's `lock_owner`): locks of the same
    /// session and owner never conflict with each other.
    pub owner: u64,
    /// POSIX or flock.
    pub flavor: LockFlavor,
    /// Shared or exclusive.
    pub kind: LockKind,
    /// First byte, inclusive.
    pub start: u64,
    /// Last byte, inclusive; `u64::MAX` means "to the end of the file, however
    /// it grows".
    pub end: u64,
    /// Process id of the holder on its client (reported by `F_GETLK`).
    pub pid: u32,
}

/// A lock that blocks a request (`get_lock`'s answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockConflict {
    /// The conflicting lock as its holder took it.
    pub lock: Lock,
    /// Whether it is held by the asking session (then `pid` is local).
    pub same_session: bool,
}

/// One change dirsvc saw, for clients' kernel-cache invalidation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The inode whose attributes or content changed (its cached attributes
    /// and pages must go).
    pub ino: InodeId,
    /// A directory entry that appeared, disappeared or now names another
    /// inode: `(parent, sealed name)`.
    pub entry: Option<(InodeId, Vec<u8>)>,
}

/// A page of the change feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeBatch {
    /// Changes after the requested sequence number, oldest first.
    pub changes: Vec<Change>,
    /// The sequence number of the last change returned (pass it as `after`
    /// next time); unchanged if `changes` is empty.
    pub last: u64,
    /// True if changes after `after` were dropped from dirsvc's bounded
    /// memory (or dirsvc restarted): the client must treat every cached
    /// entry as suspect.
    pub overflow: bool,
}

/// What `join` gives a new node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinGrant {
    /// The node's certificate (PEM).
    pub cert_pem: String,
    /// The cluster CA's certificate (PEM).
    pub ca_pem: String,
}

/// The nodes whose certificates are refused everywhere.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// Grows with every revocation.
    pub version: u64,
    /// The revoked nodes.
    pub nodes: Vec<NodeId>,
}

/// What `heartbeat` answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Version of the revocation list (fetch it when it changed).
    pub revocations: u64,
}

/// What `renew_session` answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    /// Version of the revocation list (fetch it when it changed).
    pub revocations: u64,
}
