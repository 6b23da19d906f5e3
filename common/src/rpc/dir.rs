//! `DirService`: the directory service's RPC interface.
//!
//! Names and symlink targets travel sealed (see [`crate::keys`]): dirsvc
//! compares and stores them as opaque byte strings. Sizes, modes, times,
//! owners and the shape of the tree are visible to it. Layout entries carry
//! a MAC only members can make ([`StoredChunk::mac`]); the keyring
//! ([`Keyring`]) holds the key epochs, age-wrapped to the members.
//!
//! This file holds the namespace types, the keyring, mutations, errors and
//! the service trait; `layout.rs` the stored form of blocks and commits,
//! `cluster.rs` peers and cluster status, `sessions.rs` sessions, locks
//! and the change feed (all re-exported here).

// tarpc generates client methods with one argument per RPC parameter plus the
// context; unlock has seven.
#![allow(clippy::too_many_arguments)]

use super::PeerLoc;
use crate::ids::{ChunkId, InodeId, NodeId, PeerId, VolumeId};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

mod cluster;
mod layout;
mod sessions;

pub use cluster::*;
pub use layout::*;
pub use sessions::*;

/// The kind of an inode (the `S_IFMT` part of a mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
}

/// Attributes of one inode, as `stat` reports them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    /// Inode number.
    pub ino: InodeId,
    /// File type.
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub perm: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size in bytes (for a symlink: the plaintext target length).
    pub size: u64,
    /// Number of directory entries naming this inode (dirs: 2 + subdirs).
    pub nlink: u32,
    /// Last access.
    pub atime: Timestamp,
    /// Last content change.
    pub mtime: Timestamp,
    /// Last attribute or content change.
    pub ctime: Timestamp,
    /// Creation time.
    pub crtime: Timestamp,
    /// Device number for device nodes, else 0.
    pub rdev: u32,
    /// Bytes of stored chunks (one replica) referenced by the layout, for
    /// `st_blocks`; sparse files report only what is stored.
    pub stored_bytes: u64,
}

/// Attributes to change in `setattr`; `None` leaves a field as it is. The
/// client resolves `UTIME_NOW` to its own clock before sending.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    /// New permission bits (`& 0o7777`).
    pub perm: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size in bytes. Shrinking drops the blocks wholly past the new end;
    /// the client rewrites a partial last block first (via `commit_layout`)
    /// so bytes past the end read as zeros when the file grows again.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<Timestamp>,
    /// New modification time.
    pub mtime: Option<Timestamp>,
    /// Clears setuid, and setgid when the group-execute bit is set, on the
    /// mode as dirsvc holds it (applied after `perm`), and sets ctime: what
    /// a write by a caller without `CAP_FSETID` does on Linux
    /// (`should_remove_suid`). A no-op on a mode without those bits.
    pub kill_suid_sgid: bool,
}

/// What to create in `create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInode {
    /// File type: `File`, `Fifo`, `Socket`, `CharDevice` or `BlockDevice`
    /// (`Dir` and `Symlink` have their own calls).
    pub kind: FileKind,
    /// Permission bits, after the client applied the umask.
    pub perm: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Device number for device nodes.
    pub rdev: u32,
}

/// One directory entry in a `readdir` page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The sealed name.
    pub name: Vec<u8>,
    /// Inode the entry names.
    pub ino: InodeId,
    /// Its type.
    pub kind: FileKind,
    /// Resume point: pass it as `after` to get the entries that follow. Stable
    /// across inserts and deletes of other entries (it is a per-directory
    /// sequence number assigned when the entry was made).
    pub cookie: u64,
}

/// One page of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadDirPage {
    /// Entries in cookie order (`.` and `..` are not included).
    pub entries: Vec<DirEntry>,
    /// True if no entries follow the last one.
    pub eof: bool,
}

/// One page of a directory listing with each entry's attributes
/// (`readdir_plus`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadDirPlusPage {
    /// Entries in cookie order (`.` and `..` are not included), each with
    /// the attributes of the inode it names.
    pub entries: Vec<(DirEntry, Attr)>,
    /// True if no entries follow the last one.
    pub eof: bool,
}

/// A member of a volume: someone whose age key every current key epoch
/// is wrapped to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// A unique name (1 to [`MEMBER_NAME_MAX`] bytes of printable ASCII
    /// without spaces), for people and for `member remove`.
    pub name: String,
    /// The member's age recipient (`age1…` public key).
    pub recipient: String,
    /// The node ids of the member's client certificates (revoked when the
    /// member is removed); at most [`MEMBER_NODES_MAX`].
    pub nodes: Vec<NodeId>,
}

/// One key epoch of a volume. Epoch 0 is made by `init`; each member
/// removal adds one. New data is sealed under the newest epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEpoch {
    /// The epoch number: 0, 1, 2, … (its index in [`Keyring::epochs`]).
    pub epoch: u32,
    /// The epoch's 32-byte secret, wrapped with age to every member (a
    /// binary age file, at most [`WRAPPED_SECRET_MAX`] bytes).
    pub wrapped: Vec<u8>,
    /// The key-check value of the secret
    /// (`common::keys::VolumeSecret::key_check`). All zero only for epoch
    /// 0 of a volume migrated from before key epochs (dirsvc could not
    /// compute it).
    pub check: [u8; 32],
    /// The MAC of `(volume id, epoch, check)` under the previous epoch's
    /// secret (`common::keys::VolumeSecret::link`); all zero for epoch 0.
    pub link: [u8; 32],
}

/// The keys of a volume as dirsvc holds them: opaque to it (every secret
/// is age-wrapped), verified by clients (`common::keyring`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    /// Bumped by every change (member added or removed); the
    /// compare-and-set value of `add_member` and `remove_member`.
    pub version: u64,
    /// Every key epoch, oldest first; `epochs[i].epoch == i`.
    pub epochs: Vec<KeyEpoch>,
    /// The current members.
    pub members: Vec<Member>,
}

impl Keyring {
    /// The newest epoch number (0 for an empty keyring).
    pub fn newest_epoch(&self) -> u32 {
        self.epochs.last().map_or(0, |e| e.epoch)
    }

    /// The members' age recipients, in member order.
    pub fn recipients(&self) -> Vec<String> {
        self.members.iter().map(|m| m.recipient.clone()).collect()
    }
}

/// Volume-wide settings (fixed at `init_volume`) and the keyring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Volume id.
    pub id: VolumeId,
    /// Block size B in bytes (power of two).
    pub block_size: u32,
    /// Replication factor R.
    pub replicas: u32,
    /// The key epochs and members.
    pub keyring: Keyring,
    /// True only for a volume migrated from a dirsvc schema before layout
    /// MACs: its older layout entries have no MAC (all-zero
    /// [`BlockLoc::mac`]), which clients then accept (and log). False for
    /// every volume created since; a client refuses MAC-less entries there.
    pub legacy_layouts: bool,
}

/// Filesystem-wide usage for `statfs`, from the live peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    /// Usable capacity in bytes, net of replication: over the filesystems
    /// of the live peers that take new data, each counted once, the bytes
    /// p2pfs stores there plus the bytes still free there, divided by R.
    pub total_bytes: u64,
    /// Free bytes, net of replication: over the same filesystems, each
    /// counted once, what is free (capped by the peers' capacities),
    /// divided by R.
    pub free_bytes: u64,
    /// Number of inodes in use.
    pub inodes: u64,
    /// Number of live peers.
    pub live_peers: u32,
}

/// What `symlink` creates: the inode number the client reserved and the
/// target it sealed for that inode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSymlink {
    /// An inode number this session reserved (`reserve_inodes`) and has
    /// not used.
    pub ino: InodeId,
    /// The sealed target (bound to the volume and `ino`).
    pub target: Vec<u8>,
    /// The plaintext target length (what `lstat` shows).
    pub size: u64,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
}

/// A namespace or attribute mutation whose retry could answer differently
/// from its first attempt (protocol 8), sent with a request id through
/// [`DirService::mutate`]. Each variant takes the arguments of the call of
/// the same name and answers as it does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// [`DirService::mkdir`]; answers [`Mutated::Attr`].
    Mkdir {
        /// The directory to make it in.
        parent: InodeId,
        /// The sealed name.
        name: Vec<u8>,
        /// Permission bits, after the umask.
        perm: u32,
        /// Owner user id.
        uid: u32,
        /// Owner group id.
        gid: u32,
    },
    /// [`DirService::create`]; answers [`Mutated::Attr`].
    Create {
        /// The directory to make it in.
        parent: InodeId,
        /// The sealed name.
        name: Vec<u8>,
        /// What to create.
        new: NewInode,
    },
    /// [`DirService::symlink`]; answers [`Mutated::Attr`].
    Symlink {
        /// The session that reserved `new.ino` (the caller's own).
        session: SessionId,
        /// The directory to make it in.
        parent: InodeId,
        /// The sealed name.
        name: Vec<u8>,
        /// The reserved inode number and sealed target.
        new: NewSymlink,
    },
    /// [`DirService::link`]; answers [`Mutated::Attr`].
    Link {
        /// The inode to name again.
        ino: InodeId,
        /// The directory of the new name.
        new_parent: InodeId,
        /// The new sealed name.
        new_name: Vec<u8>,
    },
    /// [`DirService::unlink`]; answers [`Mutated::Done`].
    Unlink {
        /// The directory holding the entry.
        parent: InodeId,
        /// The sealed name.
        name: Vec<u8>,
    },
    /// [`DirService::rmdir`]; answers [`Mutated::Done`].
    Rmdir {
        /// The directory holding the entry.
        parent: InodeId,
        /// The sealed name.
        name: Vec<u8>,
    },
    /// [`DirService::rename`]; answers [`Mutated::Ino`].
    Rename {
        /// The directory holding the source.
        parent: InodeId,
        /// The sealed source name.
        name: Vec<u8>,
        /// The directory of the target.
        new_parent: InodeId,
        /// The sealed target name.
        new_name: Vec<u8>,
        /// Flags from [`rename_flags`].
        flags: u32,
    },
    /// [`DirService::setxattr`]; answers [`Mutated::Attr`].
    SetXattr {
        /// The inode.
        ino: InodeId,
        /// The sealed attribute name.
        name: Vec<u8>,
        /// The sealed value.
        value: Vec<u8>,
        /// Flags from [`xattr_flags`].
        flags: u32,
    },
    /// [`DirService::removexattr`]; answers [`Mutated::Attr`].
    RemoveXattr {
        /// The inode.
        ino: InodeId,
        /// The sealed attribute name.
        name: Vec<u8>,
    },
    /// [`DirService::create`] of a regular file and
    /// [`DirService::open_file`] of it by `session` in one round trip (a
    /// FUSE `create`); answers [`Mutated::Attr`]. A retry of an applied
    /// request marks the file open again (marks are counted once per
    /// session). `NoSession` for a session the caller does not own.
    CreateOpen {
        /// The caller's own session, which holds the new file open.
        session: SessionId,
        /// The directory to make it in.
        parent: InodeId,
        /// The sealed name.
        name: Vec<u8>,
        /// What to create (`kind` must be [`FileKind::File`]).
        new: NewInode,
    },
}

impl Mutation {
    /// The name of the call this mutation stands for (`"mkdir"`, …), for
    /// logs.
    pub fn op(&self) -> &'static str {
        match self {
            Mutation::Mkdir { .. } => "mkdir",
            Mutation::Create { .. } => "create",
            Mutation::Symlink { .. } => "symlink",
            Mutation::Link { .. } => "link",
            Mutation::Unlink { .. } => "unlink",
            Mutation::Rmdir { .. } => "rmdir",
            Mutation::Rename { .. } => "rename",
            Mutation::SetXattr { .. } => "setxattr",
            Mutation::RemoveXattr { .. } => "removexattr",
            Mutation::CreateOpen { .. } => "create_open",
        }
    }
}

/// The answer of a [`Mutation`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutated {
    /// The new attributes (mkdir, create, symlink, link, setxattr,
    /// removexattr).
    Attr(Attr),
    /// The inode that now has the new name (rename).
    Ino(InodeId),
    /// Done, nothing to return (unlink, rmdir).
    Done,
}

impl Mutated {
    /// The attributes of an `Attr` answer.
    ///
    /// Errors: `Invalid` naming the answer for any other.
    pub fn attr(self) -> Result<Attr, DirError> {
        match self {
            Mutated::Attr(a) => Ok(a),
            other => Err(DirError::Invalid(format!("expected attributes, dirsvc answered {other:?}"))),
        }
    }

    /// The inode of an `Ino` answer.
    ///
    /// Errors: `Invalid` naming the answer for any other.
    pub fn ino(self) -> Result<InodeId, DirError> {
        match self {
            Mutated::Ino(i) => Ok(i),
            other => Err(DirError::Invalid(format!("expected an inode, dirsvc answered {other:?}"))),
        }
    }
}

/// Flags for `setxattr`, as in `setxattr(2)`.
pub mod xattr_flags {
    /// Fail with `Exists` if the attribute exists (`XATTR_CREATE`).
    pub const CREATE: u32 = 1;
    /// Fail with `NoAttr` if the attribute does not exist (`XATTR_REPLACE`).
    pub const REPLACE: u32 = 2;
}

/// Largest sealed extended-attribute name dirsvc stores, in bytes (a
/// 255-byte plaintext name plus sealing overhead fits).
pub const XATTR_SEALED_NAME_MAX: usize = 512;
/// Largest sealed extended-attribute value dirsvc stores, in bytes (a 64 KiB
/// plaintext value, Linux's `XATTR_SIZE_MAX`, plus sealing overhead fits).
pub const XATTR_SEALED_VALUE_MAX: usize = (64 << 10) + 128;
/// Largest total of sealed names and values one inode may carry, in bytes
/// (`NoSpace` past it).
pub const XATTR_INODE_MAX: usize = 4 << 20;

/// Most inode numbers one `reserve_inodes` call hands out.
pub const RESERVE_PER_CALL_MAX: u32 = 256;
/// Most reserved, unused inode numbers one session may hold (`Limit`
/// past it).
pub const RESERVED_PER_SESSION_MAX: usize = 4096;
/// Longest member name in bytes.
pub const MEMBER_NAME_MAX: usize = 64;
/// Most node ids one member lists.
pub const MEMBER_NODES_MAX: usize = 16;
/// Most members a volume has.
pub const MEMBERS_MAX: usize = 256;
/// Most key epochs a volume has.
pub const EPOCHS_MAX: usize = 4096;
/// Largest wrapped epoch secret, in bytes (age header with one stanza per
/// member, ~ 170 bytes each, plus the body).
pub const WRAPPED_SECRET_MAX: usize = 64 << 10;
/// Longest recipient string, in bytes (an X25519 `age1…` key is 62).
pub const RECIPIENT_MAX: usize = 1024;
/// Most blocks one `reseal_blocks` call replaces.
pub const RESEAL_BATCH_MAX: usize = 1024;

/// How long dirsvc remembers the answer of a [`DirService::mutate`]
/// request id at least, in seconds (10 minutes): a retry within it gets
/// the first answer. Entries are removed some time after (garbage
/// collection rounds).
pub const REQUEST_MEMORY_SECS: u64 = 600;

/// Errors of `DirService` calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum DirError {
    /// No such inode or entry (ENOENT).
    #[error("not found")]
    NotFound,
    /// The entry already exists (EEXIST).
    #[error("already exists")]
    Exists,
    /// The directory is not empty (ENOTEMPTY).
    #[error("directory not empty")]
    NotEmpty,
    /// A directory was required (ENOTDIR).
    #[error("not a directory")]
    NotDir,
    /// A non-directory was required (EISDIR).
    #[error("is a directory")]
    IsDir,
    /// An argument is malformed or not allowed (EINVAL), with the reason.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A name is longer than the limit (ENAMETOOLONG).
    #[error("name too long")]
    NameTooLong,
    /// Too few live peers to place R replicas (EIO at the client when no
    /// peer at all can be reached).
    #[error("not enough live peers: need {needed}, have {live}")]
    NoPeers {
        /// Replicas asked for.
        needed: u32,
        /// Live peers known.
        live: u32,
    },
    /// Enough peers are live, but too few have room for the chunk (ENOSPC at
    /// the client).
    #[error("not enough room: {needed} peers with room needed, {with_room} of {live} live peers have it")]
    PeersFull {
        /// Replicas asked for.
        needed: u32,
        /// Live peers with room for the chunk.
        with_room: u32,
        /// Live peers known.
        live: u32,
    },
    /// The volume has not been created yet (`fs-client init`).
    #[error("volume not initialized")]
    NotInitialized,
    /// `init_volume` on a volume that exists.
    #[error("volume already initialized")]
    AlreadyInitialized,
    /// No such extended attribute (ENODATA).
    #[error("no such attribute")]
    NoAttr,
    /// An extended attribute's name or value is over the limit (E2BIG /
    /// ERANGE at the client).
    #[error("attribute too big")]
    TooBig,
    /// The inode's extended attributes would exceed
    /// [`XATTR_INODE_MAX`] (ENOSPC).
    #[error("no space for attributes")]
    NoSpace,
    /// A lock conflicts with another session's or owner's lock and was not
    /// granted within the wait (EAGAIN; the client retries for `F_SETLKW`).
    #[error("lock held by another owner")]
    WouldBlock,
    /// dirsvc just started and is waiting for clients to reclaim their locks
    /// and opens; retry after a short pause (never surfaced to applications).
    #[error("in grace period after restart; retry")]
    Grace,
    /// The session is unknown (expired, closed, or dirsvc restarted): open a
    /// new one, reclaiming what the client holds.
    #[error("no such session")]
    NoSession,
    /// A commit named a chunk that garbage collection has deleted (it was
    /// unreferenced past the grace period). Retryable: store the block
    /// again (a new chunk) and commit that.
    #[error("chunk {0} was garbage-collected; store the block again")]
    ChunkGone(ChunkId),
    /// A commit names newly stored chunks last known held longer ago
    /// than the GC grace period (`CommitLayout::held_ms` ≥ `limit_ms`):
    /// garbage collection may have taken them for orphans. Nothing was
    /// changed. Retryable: ask the replicas whether they still hold the
    /// chunks (`has`), store again those none holds, and commit again.
    #[error("the commit's new chunks were last known held over {limit_ms} ms ago; check them again")]
    UploadUnverified {
        /// The GC grace period, milliseconds.
        limit_ms: u64,
    },
    /// The caller's certificate does not allow this call (its role, or the
    /// node it names), with the reason (EACCES at the client).
    #[error("not allowed: {0}")]
    Unauthorized(String),
    /// A per-identity or global limit was reached (sessions, locks,
    /// reservations, connections), with which one (EAGAIN; ENOLCK for
    /// locks).
    #[error("limit reached: {0}")]
    Limit(String),
    /// A commit names a newly stored chunk sealed under a key epoch older
    /// than the volume's newest (a member was removed since): the client
    /// reloads the keyring, seals the block again under epoch `current`,
    /// stores it and commits that. Nothing was changed.
    #[error("chunk sealed under an old key epoch; the newest is {current}")]
    StaleEpoch {
        /// The volume's newest key epoch.
        current: u32,
    },
    /// `symlink` named an inode number this session has not reserved (or
    /// already used): reserve again (dirsvc forgets reservations when it
    /// restarts).
    #[error("inode {0} is not reserved by this session")]
    NotReserved(InodeId),
    /// `add_member` or `remove_member` was based on another keyring
    /// version (someone changed the keyring meanwhile): reload and retry.
    #[error("the keyring changed meanwhile (now version {version})")]
    KeyringChanged {
        /// The current keyring version.
        version: u64,
    },
    /// This dirsvc is not the leader of its cluster (several dirsvc over
    /// one etcd): send the call to `leader` (its `host:port`; `None` while
    /// no leader is elected, retry shortly). Nothing was changed. Clients
    /// follow it without surfacing it (`common::net::DirAddrs`).
    #[error("not the leader; the leader is {}", leader.as_deref().unwrap_or("not elected yet"))]
    NotLeader {
        /// The leader's RPC address, if one is elected.
        leader: Option<String>,
    },
    /// The metadata engine is unavailable (etcd without quorum): nothing
    /// was changed; retry later (EAGAIN if it lasts past the client's
    /// retry window).
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (storage failure); the server's message.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Flags for `rename`, as in `renameat2(2)`.
pub mod rename_flags {
    /// Fail with `Exists` if the target exists.
    pub const NOREPLACE: u32 = 1;
    /// Atomically exchange source and target (both must exist).
    pub const EXCHANGE: u32 = 2;
}

/// The directory service. Called by fs-client (namespace and layouts) and by
/// peerd (register, heartbeat). Every mutating call is one durable redb
/// transaction: when it returns `Ok`, the change survives a crash. Every
/// call is authorized from the certificate of the connection it arrives on
/// (docs/SECURITY.md has the table of calls and roles): a call the caller
/// may not make is `Unauthorized`.
#[tarpc::service]
pub trait DirService {
    /// Protocol handshake: returns dirsvc's [`super::PROTOCOL_VERSION`].
    /// Anyone may call it, also without a certificate.
    async fn hello() -> u32;
    /// Joins the cluster with a join token (its id and secret, see
    /// `common::pki::JoinToken`): dirsvc checks the token (known, not used,
    /// not expired), marks it used in the same transaction, and issues a
    /// certificate with the token's role for the key of the certificate
    /// signing request `csr` (DER PKCS #10). `role` is the role the joiner
    /// is about to act in (a peer daemon asks for `Peer`): a token that
    /// grants another role is refused with `Invalid` naming its role and
    /// is not spent. The only call a connection without a certificate may
    /// make besides `hello`; dirsvc serves 20 joins per second and callers
    /// beyond that wait their turn. `Unauthorized` for a bad, used or
    /// expired token (one answer for all three), `Invalid` for a bad
    /// request or another role.
    async fn join(
        token_id: [u8; 8],
        secret: [u8; 16],
        role: super::Role,
        csr: Vec<u8>,
    ) -> Result<JoinGrant, DirError>;
    /// A new certificate (PEM) for the caller's own key, role and node id,
    /// valid for the full lifetime from now: nodes renew before a third of
    /// it is left. `Unauthorized` for a revoked node.
    async fn renew_certificate() -> Result<String, DirError>;
    /// Makes a one-time join token granting `role` (peer or client),
    /// valid for `ttl_secs` seconds (at most 7 days); returns its text form
    /// (which holds the secret). Admin only.
    async fn create_join_token(role: super::Role, ttl_secs: u64) -> Result<String, DirError>;
    /// Revokes a node's certificates for good (recorded durably with
    /// `reason`): dirsvc refuses it at once and closes its connections;
    /// peers and clients learn it within seconds (heartbeat and session
    /// renewal carry the list's version). Admin only. Idempotent.
    async fn revoke(node: NodeId, reason: String) -> Result<(), DirError>;
    /// The revocation list and its version. Any node may ask.
    async fn revocations() -> Result<RevocationList, DirError>;
    /// Volume settings and wrapped secret. `NotInitialized` before init.
    async fn volume_info() -> Result<VolumeInfo, DirError>;
    /// Creates the volume: the root directory (owned by `uid`/`gid`, mode
    /// 0755) and the settings. `AlreadyInitialized` if it exists; `Invalid`
    /// for a bad block size or R = 0.
    async fn init_volume(info: VolumeInfo, uid: u32, gid: u32) -> Result<VolumeInfo, DirError>;
    /// Finds `name` (sealed) in directory `parent`.
    async fn lookup(parent: InodeId, name: Vec<u8>) -> Result<Attr, DirError>;
    /// Attributes of `ino`.
    async fn getattr(ino: InodeId) -> Result<Attr, DirError>;
    /// Changes attributes; sets ctime. Returns the new attributes.
    async fn setattr(ino: InodeId, set: SetAttr) -> Result<Attr, DirError>;
    /// Makes a directory. `Exists`, `NotDir`, `NotFound`.
    async fn mkdir(parent: InodeId, name: Vec<u8>, perm: u32, uid: u32, gid: u32) -> Result<Attr, DirError>;
    /// Makes a regular file or special node.
    async fn create(parent: InodeId, name: Vec<u8>, new: NewInode) -> Result<Attr, DirError>;
    /// Removes a non-directory entry. At nlink 0 the inode is freed, unless
    /// a session holds it open (`open_file`): then it lives on as an orphan
    /// until the last `release_file` or the end of those sessions. `IsDir`.
    async fn unlink(parent: InodeId, name: Vec<u8>) -> Result<(), DirError>;
    /// Removes an empty directory. `NotEmpty`, `NotDir`.
    async fn rmdir(parent: InodeId, name: Vec<u8>) -> Result<(), DirError>;
    /// Moves an entry, replacing a target of a compatible kind atomically (a
    /// replaced file is unlinked as by `unlink`, orphaned if open).
    /// `flags` from [`rename_flags`]. The client re-seals the name for the
    /// new parent. Returns the inode that now has the new name.
    async fn rename(
        parent: InodeId,
        name: Vec<u8>,
        new_parent: InodeId,
        new_name: Vec<u8>,
        flags: u32,
    ) -> Result<InodeId, DirError>;
    /// Lists entries with cookie greater than `after` (0 = from the start),
    /// at most `limit` of them (capped by the server).
    async fn readdir(dir: InodeId, after: u64, limit: u32) -> Result<ReadDirPage, DirError>;
    /// Reserves `count` (1 to [`RESERVE_PER_CALL_MAX`]) fresh inode numbers
    /// for `session`, so the client can bind what it seals to an inode
    /// before the inode exists (symlink targets). Returns `(first, count)`:
    /// the numbers `first .. first + count`. Numbers come from the durable
    /// inode counter and are never handed out again; the reservation itself
    /// lives as long as the session and this dirsvc run. `Limit` when the
    /// session would hold more than [`RESERVED_PER_SESSION_MAX`] unused
    /// numbers; `Invalid` for a count of 0 or above the maximum;
    /// `NoSession`.
    async fn reserve_inodes(session: SessionId, count: u32) -> Result<(InodeId, u32), DirError>;
    /// Makes symlink `name` in `parent` as inode `new.ino`, which `session`
    /// reserved (`NotReserved` otherwise, and for a number already used),
    /// with the sealed target `new.target`.
    async fn symlink(
        session: SessionId,
        parent: InodeId,
        name: Vec<u8>,
        new: NewSymlink,
    ) -> Result<Attr, DirError>;
    /// The sealed target of a symlink. `Invalid` if not a symlink.
    async fn readlink(ino: InodeId) -> Result<Vec<u8>, DirError>;
    /// Adds a hard link to a non-directory. Returns its new attributes.
    async fn link(ino: InodeId, new_parent: InodeId, new_name: Vec<u8>) -> Result<Attr, DirError>;
    /// Applies `op` once per request id (protocol 8): `request` is a
    /// number the caller picks, unique among its calls (a random start
    /// plus a counter per process), and keeps across every retry of one
    /// call. dirsvc keys it by the caller's node id (from its
    /// certificate), records the answer (success, or a refusal such as
    /// `Exists`) in the same transaction as the change, and answers a
    /// request id it has recorded with that answer without applying
    /// anything again, for at least [`REQUEST_MEMORY_SECS`] seconds. The
    /// calls of [`Mutation`] made directly have no such protection (a
    /// retry after a lost answer may report `Exists` or `NotFound` for its
    /// own first attempt). Errors: those of the call `op` stands for.
    async fn mutate(request: u64, op: Mutation) -> Result<Mutated, DirError>;
    /// Capacity and usage over the live peers.
    async fn statfs() -> Result<StatFs, DirError>;
    /// Chooses replica sets for `count` new chunks of about `chunk_bytes`
    /// each: R distinct live peers per chunk, most free space first
    /// (counting space already promised by earlier placements, per
    /// filesystem). `NoPeers` if fewer than R are live, `PeersFull` if
    /// enough are live but fewer than R have room; `Limit` if the call would
    /// promise more bytes (count × chunk bytes × R) than one call or one
    /// caller may hold promised until the peers' next heartbeats.
    async fn placement(count: u32, chunk_bytes: u64) -> Result<Vec<Vec<PeerLoc>>, DirError>;
    /// Applies a layout update to a regular file and returns its attributes.
    /// Every listed replica must be a registered peer and every entry
    /// carries a MAC (`Invalid` otherwise). A newly stored chunk (one with
    /// replicas) sealed under an epoch older than the newest is refused
    /// with `StaleEpoch` (nothing changes); references to chunks the index
    /// holds (no replicas) may keep their epoch.
    async fn commit_layout(ino: InodeId, commit: CommitLayout) -> Result<Attr, DirError>;
    /// Replaces blocks of `ino` by chunks re-sealed under the newest key
    /// epoch (`fs-client reencrypt`): each block whose layout entry still
    /// names `old` now names `new`; size, mtime and ctime are unchanged.
    /// Returns, per entry, whether it was replaced (false: the block
    /// changed meanwhile; the new chunk is then left to garbage
    /// collection). One transaction. `StaleEpoch` if a new chunk's epoch is
    /// not the newest; `Invalid` as for `commit_layout` and past
    /// [`RESEAL_BATCH_MAX`] entries.
    async fn reseal_blocks(ino: InodeId, reseals: Vec<Reseal>) -> Result<Vec<bool>, DirError>;
    /// Non-hole blocks of `ino` with index in `[first, first + max)`.
    async fn get_layout(ino: InodeId, first: u64, max: u32) -> Result<LayoutPage, DirError>;
    /// Replicas of each chunk (same order; empty for unknown chunks).
    async fn chunk_locations(chunks: Vec<ChunkId>) -> Result<Vec<Vec<PeerLoc>>, DirError>;
    /// Registers (or re-registers, with a new address) a peer.
    async fn register_peer(reg: PeerRegistration) -> Result<(), DirError>;
    /// Records a heartbeat of the calling peer (`id` must be its node id).
    /// `NotFound` if the peer must register first. The reply carries the
    /// version of the revocation list, so the peer fetches it when it
    /// changed (`revocations`).
    async fn heartbeat(id: PeerId, usage: PeerUsage) -> Result<HeartbeatReply, DirError>;
    /// All known peers with their state (admin query).
    async fn list_peers() -> Result<Vec<PeerStatus>, DirError>;
    /// A peer reports chunks that failed verification (scrub or read) and
    /// that it moved aside: dirsvc drops those replicas from the index, and
    /// repair restores R.
    async fn report_corrupt(peer: PeerId, chunks: Vec<ChunkId>) -> Result<(), DirError>;
    /// Starts draining a peer (admin): no new chunks go to it, its chunks are
    /// copied to other peers, then it is `Drained`. `NotFound` for an unknown
    /// peer. Idempotent.
    async fn drain_peer(id: PeerId) -> Result<(), DirError>;
    /// Redundancy, repair and garbage-collection figures (admin query).
    async fn cluster_status() -> Result<ClusterStatus, DirError>;
    /// Adds a member (admin): `wrapped[i]` is epoch `i`'s secret re-wrapped
    /// to every current member and the new one (one per epoch, in order).
    /// Compare-and-set on the keyring `version`: `KeyringChanged` if it is
    /// not the current one. `Exists` for a name or recipient already
    /// listed; `Invalid` for a bad name, recipient, node list or a wrong
    /// number of wrapped secrets. Returns the new keyring (version + 1).
    async fn add_member(version: u64, member: Member, wrapped: Vec<Vec<u8>>) -> Result<Keyring, DirError>;
    /// Removes member `name` (admin) and starts key epoch `epoch`, whose
    /// secret is wrapped to the remaining members and linked to the
    /// previous epoch. Compare-and-set on the keyring `version`
    /// (`KeyringChanged`); the new keyring must extend the current one by
    /// exactly this epoch (`epoch.epoch` = newest + 1, else `Invalid`).
    /// `NotFound` for an unknown name; `Invalid` for removing the last
    /// member. Returns the new keyring and the removed member (whose
    /// client certificates the caller then revokes).
    async fn remove_member(
        version: u64,
        name: String,
        epoch: KeyEpoch,
    ) -> Result<(Keyring, Member), DirError>;

    /// Opens a client session (or reclaims one, see [`SessionOpen`]).
    /// `Limit` when the caller, or dirsvc as a whole, holds its maximum of
    /// sessions; reclaimed locks past the per-session lock cap are listed
    /// as lost.
    async fn open_session(open: SessionOpen) -> Result<SessionGrant, DirError>;
    /// Extends the session's lease by `lease_ms` from now. `NoSession` if it
    /// already ended.
    async fn renew_session(session: SessionId) -> Result<Renewal, DirError>;
    /// Ends a session: releases its locks and open marks (freeing unlinked
    /// files no one else holds open). Idempotent.
    async fn close_session(session: SessionId) -> Result<(), DirError>;
    /// Marks `ino` open by `session` (counted once per session however often
    /// it is called) and returns its attributes. While marked, unlinking its
    /// last name keeps the inode (nlink 0) readable and writable by inode
    /// number. `NotFound`, `NoSession`.
    async fn open_file(session: SessionId, ino: InodeId) -> Result<Attr, DirError>;
    /// Drops the session's open mark on `ino`; an unlinked inode that no
    /// session holds open is then freed (its chunks go to garbage
    /// collection). Idempotent.
    async fn release_file(session: SessionId, ino: InodeId) -> Result<(), DirError>;
    /// Takes a lock, waiting up to `wait_ms` milliseconds (capped at 10,000)
    /// for conflicting locks to go. `WouldBlock` if still blocked, `Grace`
    /// during the reclaim period, `NoSession`, `NotFound`, `Limit` when the
    /// session would hold more locks than allowed or too many calls wait
    /// already (ENOLCK at the client). A POSIX lock
    /// replaces the same owner's overlapping ranges (upgrade, downgrade,
    /// split, merge); an flock replaces the owner's flock.
    async fn set_lock(session: SessionId, lock: Lock, wait_ms: u32) -> Result<(), DirError>;
    /// Releases the owner's locks of `flavor` on `ino` within
    /// `[start, end]` (splitting ranges that extend past it). Idempotent.
    async fn unlock(
        session: SessionId,
        ino: InodeId,
        owner: u64,
        flavor: LockFlavor,
        start: u64,
        end: u64,
    ) -> Result<(), DirError>;
    /// The first lock that would block `lock` (for `F_GETLK`), or `None`.
    async fn get_lock(session: SessionId, lock: Lock) -> Result<Option<LockConflict>, DirError>;
    /// The sealed value of extended attribute `name` (sealed) of `ino`.
    /// `NoAttr`, `NotFound`.
    async fn getxattr(ino: InodeId, name: Vec<u8>) -> Result<Vec<u8>, DirError>;
    /// Sealed names of all extended attributes of `ino`, in no fixed order.
    async fn listxattr(ino: InodeId) -> Result<Vec<Vec<u8>>, DirError>;
    /// Sets an extended attribute (sealed name and value); sets ctime.
    /// `flags` from [`xattr_flags`]: `Exists` / `NoAttr` as they ask;
    /// `TooBig` past [`XATTR_SEALED_NAME_MAX`] / [`XATTR_SEALED_VALUE_MAX`];
    /// `NoSpace` past [`XATTR_INODE_MAX`]; `Limit` for a new attribute on
    /// an inode that has its maximum number. Returns the new attributes.
    async fn setxattr(ino: InodeId, name: Vec<u8>, value: Vec<u8>, flags: u32) -> Result<Attr, DirError>;
    /// Removes an extended attribute; sets ctime. `NoAttr`.
    async fn removexattr(ino: InodeId, name: Vec<u8>) -> Result<Attr, DirError>;
    /// Changes after sequence number `after` (0 on the first call: returns
    /// no changes and the current `last`), waiting up to `wait_ms`
    /// milliseconds (capped at 10,000) for one to happen. Every namespace
    /// and attribute mutation and every layout commit is recorded, except
    /// that a session is not shown the changes made on the connection it
    /// speaks on (the one where it last called `open_session`,
    /// `renew_session`, `open_file` or `poll_changes`): its kernel already
    /// knows them. `Limit` for a waiting poll when the session (or dirsvc)
    /// has its maximum of waiting calls.
    async fn poll_changes(session: SessionId, after: u64, wait_ms: u32) -> Result<ChangeBatch, DirError>;
    /// Takes a drain back (admin): the peer is no longer draining, durably,
    /// and gets new chunks again once it is up (a `Draining` or `Drained`
    /// peer that heartbeats shows `Up` at once; one that stopped shows its
    /// liveness). Chunks already copied away keep their extra replicas.
    /// `NotFound` for an unknown peer. Idempotent.
    async fn undrain_peer(id: PeerId) -> Result<(), DirError>;
    /// dirsvc's wall-clock time when it answered (`fs-client doctor`
    /// compares it with its own clock). Any node with a certificate of the
    /// cluster.
    async fn server_time() -> Result<Timestamp, DirError>;
    /// `open_file` and the first page of `get_layout(ino, 0, max)` in one
    /// round trip: marks `ino` open by `session` (as `open_file`) and
    /// returns its attributes and its first non-hole blocks (at most `max`,
    /// capped as `get_layout`). A client continues with `get_layout` when
    /// the page is not `eof`. `NotFound`, `NoSession`, `Invalid` for a
    /// directory or another kind that has no layout (the mark is then
    /// dropped again).
    async fn open_layout(session: SessionId, ino: InodeId, max: u32) -> Result<LayoutPage, DirError>;
    /// `readdir` with each entry's attributes (one page; `limit` capped as
    /// `readdir`), so a client lists a directory and stats its entries
    /// without one `lookup` each (FUSE `READDIRPLUS`). `NotFound`,
    /// `NotDir`.
    async fn readdir_plus(dir: InodeId, after: u64, limit: u32) -> Result<ReadDirPlusPage, DirError>;
}
