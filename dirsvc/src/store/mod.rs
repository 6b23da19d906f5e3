//! The durable state of dirsvc: namespace, layouts, chunk index, peer
//! registry, sessions, keyring and trust, on the transactional key-value
//! layer [`crate::kv`] (redb embedded, or etcd for several dirsvc), with
//! POSIX semantics for each operation.
//!
//! [`Store`] owns the [`kv::Kv`], the only storage access of dirsvc. Its
//! methods are synchronous (the server calls short ones on its runtime
//! thread when the engine is embedded, everything else from
//! `spawn_blocking`; see `Store::embedded`) and take and return plain wire
//! types. Each family of keys (see
//! [`keys`] for the schema, [`records`] for the value formats) has its own
//! file, and no file touches another family's keys except through that
//! family's functions:
//! - `namespace.rs`: inodes, directory entries and cookies, symlinks,
//!   extended attributes (lookup, getattr, setattr, mkdir, create,
//!   symlink, link, unlink, rmdir, rename/exchange, readdir, xattrs);
//! - `layouts.rs`: layout groups (commit, reseal, get, trims, dropping
//!   blocks);
//! - `chunks.rs`: the chunk index, unreferenced list and tombstones, and
//!   the garbage-collection and repair steps;
//! - `peers.rs`, `sessions.rs` (sessions and orphans, and the bounded
//!   freeing of inodes), `keyring.rs` (volume record, keyring, members,
//!   key epoch), `trust.rs` (join tokens, revocations), `requests.rs`
//!   (the answers of `mutate` request ids), `migrate.rs`
//!   (schemas 1 to 5, typed redb tables, to this keyspace).
//!
//! Every mutating step is one [`kv::Kv::write`] transaction, durable before
//! it returns `Ok`; an error drops its writes, so a failed call changes
//! nothing. A transaction's closure may run more than once, so each is a
//! pure function of what it reads.
//!
//! Bounded transactions: every transaction fits the engine's
//! [`kv::Kv::max_ops`] (redb 65,536, etcd about 127). Where one POSIX
//! operation can touch unboundedly many keys it is split crash-safely, as
//! ext4 does with its orphan list:
//! - an inode that loses its last link (not kept open), or a removed
//!   directory, leaves the namespace and is listed as an orphan (`O`) in
//!   the first transaction; its layout groups, chunk references and
//!   extended attributes are then freed in bounded transactions before the
//!   method returns. A crash in between leaves an orphan, which
//!   [`Store::free_orphans`] / [`Store::end_sessions`] finish (the sessions
//!   module does so after every start's reclaim period).
//! - truncating down (by `setattr` or a shrinking `commit_layout`) sets the
//!   size and records a trim marker (`Z`) first, then drops the blocks
//!   past the size in bounded transactions; anything that grows or commits
//!   to that file first finishes the trim, and so does the next open.
//!   Readers never see blocks at or past ⌈size / block size⌉.
//! - [`Store::commit_layout`] takes at most [`Store::max_commit_entries`]
//!   entries; GC, replica edits and deletions batch by `max_ops`.
//!
//! Orphans: unlink and rename take a [`Keep`] predicate, asked inside the
//! transaction when a non-directory loses its last link; "keep" leaves the
//! inode (nlink 0) with its layout and extended attributes and lists it as
//! an orphan ([`Store::unlink_keeping`], [`Store::rename_keeping`]);
//! [`Store::free_orphans`] and [`Store::end_sessions`] free it later. The
//! caller (the sessions module) serializes those decisions with open marks.
//!
//! Besides the namespace, the store keeps what the background workers need
//! (see the crate documentation): the chunk index they survey
//! ([`Store::for_each_chunk`]), the replica edits of repair and corruption
//! reports ([`Store::add_replica`], [`Store::drop_replicas`]), and the
//! garbage-collection steps ([`Store::collect_unreferenced`],
//! [`Store::tombstone_orphans`], [`Store::ack_deletes`],
//! [`Store::expire_tombstones`]), each a transaction that re-checks its
//! precondition, so it serializes correctly with `commit_layout`.

mod chunks;
pub mod keyring;
pub mod keys;
mod layouts;
pub mod migrate;
mod namespace;
mod peers;
pub mod records;
mod requests;
mod sessions;
pub mod transfer;
mod trust;

#[cfg(test)]
mod tests;

/// The record formats under their schema-5 name (`records`), kept so
/// callers need not change.
pub use self::records as tables;
pub use requests::{Once, RequestKey};

use crate::error::{invalid, Error};
use crate::kv::{self, KeyRange, Kv, Pair, ReadTxn, WriteTxn};
use common::config::{NAME_MAX, SYMLINK_MAX};
use common::rpc::dir::{
    Attr, DirError, KeyEpoch, Member, VolumeInfo, MEMBERS_MAX, MEMBER_NAME_MAX, MEMBER_NODES_MAX,
    RECIPIENT_MAX, WRAPPED_SECRET_MAX, XATTR_SEALED_NAME_MAX,
};
use common::time::Timestamp;
use common::{ChunkId, InodeId, PeerId, VolumeId};
use records::{kind_from_byte, InodeRecord, Record, VolumeRecord, SCHEMA_VERSION};
use std::collections::HashSet;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Longest sealed name accepted, in bytes: a `NAME_MAX` plaintext plus the
/// AES-SIV tag ([`common::keys::NAME_OVERHEAD`]). Longer → `NameTooLong`.
pub const MAX_NAME_BYTES: usize = NAME_MAX + common::keys::NAME_OVERHEAD;

/// Longest sealed symlink target accepted, in bytes: a `SYMLINK_MAX`
/// plaintext plus the sealing overhead ([`common::codec::OVERHEAD`]).
pub const MAX_TARGET_BYTES: usize = SYMLINK_MAX + common::codec::OVERHEAD;

/// Most entries one `readdir` page returns.
pub const MAX_READDIR_ENTRIES: u32 = 4096;

/// Most blocks one `get_layout` page returns.
pub const MAX_LAYOUT_BLOCKS: u32 = 4096;

/// Bytes a stored chunk may exceed the block size by (the v2 codec adds 52;
/// the slack leaves room for later formats). A longer chunk is `Invalid`.
pub const MAX_CHUNK_OVERHEAD: u32 = 4096;

/// Largest replication factor accepted by `init_volume`.
pub const MAX_REPLICAS: u32 = 16;

/// How many parent links an ancestor walk follows before declaring the tree
/// corrupt (a cycle); far deeper than any real tree.
const MAX_DEPTH: usize = 1 << 20;

/// Chunks one garbage-collection write transaction handles at most, so a
/// large collection does not hold the writer lock for long (fewer if the
/// engine's [`kv::Kv::max_ops`] allows fewer: three writes per chunk).
pub const GC_BATCH: usize = 512;

/// Keys one scan page reads when a method walks a whole family.
const SCAN_PAGE: usize = 1024;

/// One non-hole block of a file, as [`Store::get_layout`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutBlock {
    /// Block index.
    pub index: u64,
    /// The chunk holding the block.
    pub chunk: ChunkId,
    /// Stored length of the chunk in bytes.
    pub len: u32,
    /// Peers known to hold the chunk, in the order they were recorded.
    pub replicas: Vec<PeerId>,
    /// The key epoch the chunk was sealed under.
    pub epoch: u32,
    /// The writer's MAC of the entry (all zero: migrated, no MAC).
    pub mac: [u8; 32],
    /// The sealed chunk of a block kept inline (no replicas).
    pub inline: Option<Vec<u8>>,
}

/// A page of a file's layout, as [`Store::get_layout`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutBlocks {
    /// The file's attributes in the same read transaction.
    pub attr: Attr,
    /// Non-hole blocks in the requested range, ascending.
    pub blocks: Vec<LayoutBlock>,
    /// True if no non-hole block follows the last one listed.
    pub eof: bool,
}

/// Asked inside an unlink or rename transaction when a non-directory
/// loses its last link: true keeps it as an orphan (someone holds it
/// open), false frees it.
pub type Keep<'a> = &'a dyn Fn(InodeId) -> bool;

/// What [`Store::unlink_keeping`] removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removed {
    /// The inode the entry named.
    pub ino: InodeId,
    /// Whether it lost its last link and was kept as an orphan.
    pub orphaned: bool,
}

/// What [`Store::rename_keeping`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renamed {
    /// The inode the source entry named (now under the new name).
    pub moved: InodeId,
    /// The inode the target entry named before (replaced, or for
    /// `EXCHANGE` moved to the source name); `None` if there was none or
    /// source and target already named the same inode.
    pub replaced: Option<InodeId>,
    /// Whether the replaced inode lost its last link and was kept as an
    /// orphan.
    pub orphaned: bool,
}

/// The dirsvc database. Cheap to share behind an `Arc`; all methods take
/// `&self` (the key-value layer serialises writers and lets readers run
/// concurrently on snapshots).
pub struct Store {
    kv: Kv,
    /// The volume settings and keyring, set by `init_volume` (or at open)
    /// and replaced after each committed keyring change.
    volume: RwLock<Option<Arc<VolumeInfo>>>,
    /// Bumped after every committed transaction that changed the chunk
    /// index (see [`Store::chunk_generation`]).
    chunk_gen: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let initialized = self.volume.read().unwrap_or_else(PoisonError::into_inner).is_some();
        f.debug_struct("Store")
            .field("engine", &self.kv.engine_name())
            .field("initialized", &initialized)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the redb database at `path`, creating it if it does not exist.
    ///
    /// A database of an older schema (typed tables, from
    /// [`records::OLDEST_SCHEMA_VERSION`] to 5) is converted to this
    /// keyspace in one redb write transaction first (see [`migrate`]): a
    /// crash during the migration leaves the old version intact. Then as
    /// [`Store::with_engine`].
    ///
    /// Errors: [`Error::Db`] if redb cannot open the file (including when
    /// another `Store` in this process has it open), [`Error::Schema`] for
    /// an unknown schema version (the file is left untouched),
    /// [`Error::Corrupt`] for an unreadable volume or peer record.
    pub fn open(path: &Path) -> Result<Store, Error> {
        let db = redb::Database::create(path)?;
        migrate::upgrade(&db)?;
        let engine = kv::redb::RedbEngine::new(db)?;
        Store::with_engine(Arc::new(engine))
    }

    /// The store on `engine`: an empty keyspace gets the schema version; a
    /// keyspace of this schema is used as it is (pending trims are
    /// finished); any other schema is refused without a write.
    ///
    /// Errors: [`Error::Schema`] for another schema version, or a keyspace
    /// with keys but no schema version; [`Error::Corrupt`] for an
    /// unreadable volume record; the engine's.
    pub fn with_engine(engine: Arc<dyn kv::Engine>) -> Result<Store, Error> {
        let store = Store::attach(engine)?;
        store.begin_term()?;
        Ok(store)
    }

    /// The store on `engine` without writing anything: checks the schema
    /// (an empty keyspace is accepted: [`Store::begin_term`] writes it) and
    /// loads the volume settings. For a dirsvc that may not write yet (a
    /// follower of an etcd election).
    ///
    /// Errors: [`Error::Schema`] for another schema version, or a keyspace
    /// with keys but no schema version; [`Error::Corrupt`] for an
    /// unreadable volume record; the engine's.
    pub fn attach(engine: Arc<dyn kv::Engine>) -> Result<Store, Error> {
        let store = Store { kv: Kv::new(engine), volume: RwLock::new(None), chunk_gen: AtomicU64::new(0) };
        store.check_schema_and_load(false)?;
        Ok(store)
    }

    /// What the writer does before it serves (at open, and at the start of
    /// every term of leadership): writes the schema version into an empty
    /// keyspace, reloads the volume settings (another leader may have
    /// changed the keyring) and finishes pending trims.
    ///
    /// Errors: as [`Store::attach`]; `NotLeader` if this process may not
    /// write.
    pub fn begin_term(&self) -> Result<(), Error> {
        self.check_schema_and_load(true)?;
        for ino in self.pending_trims()? {
            self.finish_trim(ino)?;
        }
        Ok(())
    }

    /// Checks the schema version (writing it into an empty keyspace if
    /// `write`) and loads the volume settings.
    fn check_schema_and_load(&self, write: bool) -> Result<(), Error> {
        // Whether the schema version is there (and right); an empty
        // keyspace may lack it.
        let check = |stored: Option<Vec<u8>>, empty: bool| match stored {
            None if !empty => Err(Error::Schema { found: 0, supported: SCHEMA_VERSION }),
            None => Ok(false),
            Some(v) => {
                let found = decode_u32(&v)?;
                if found != SCHEMA_VERSION {
                    return Err(Error::Schema { found, supported: SCHEMA_VERSION });
                }
                Ok(true)
            }
        };
        let volume = if write {
            self.kv.write(|t| {
                let empty = t.scan(&(Bound::Unbounded, Bound::Unbounded), 1, false)?.is_empty();
                if !check(t.get(&keys::meta(keys::META_SCHEMA))?, empty)? {
                    t.put(keys::meta(keys::META_SCHEMA), SCHEMA_VERSION.to_le_bytes().to_vec());
                }
                t.get(&keys::meta(keys::META_VOLUME))
            })?
        } else {
            self.kv.read(|t| {
                let empty = t.scan(&(Bound::Unbounded, Bound::Unbounded), 1, false)?.is_empty();
                check(t.get(&keys::meta(keys::META_SCHEMA))?, empty)?;
                t.get(&keys::meta(keys::META_VOLUME))
            })?
        };
        *self.volume.write().unwrap_or_else(PoisonError::into_inner) = None;
        if let Some(v) = volume {
            self.set_volume(VolumeRecord::from_bytes(&v)?);
        }
        Ok(())
    }

    /// The engine's name (`"redb"`, `"etcd"`), for logs and status.
    pub fn engine_name(&self) -> &'static str {
        self.kv.engine_name()
    }

    /// Whether the store's engine is embedded (redb), so a short
    /// transaction may run on the calling thread ([`crate::kv::Engine::embedded`]).
    pub fn embedded(&self) -> bool {
        self.kv.embedded()
    }

    /// Most writes one transaction may make with this engine.
    pub(crate) fn max_ops(&self) -> usize {
        self.kv.max_ops()
    }

    /// Runs `f` as one write transaction ([`Kv::write`]: it may run more
    /// than once) and, once it is durable, the follow-up steps it asked
    /// for: trims of truncated files and the freeing of inodes that lost
    /// their last link, each in bounded transactions.
    fn write<T>(&self, mut f: impl FnMut(&mut W<'_, '_>) -> Result<T, Error>) -> Result<T, Error> {
        let max_ops = self.kv.max_ops();
        let mut after = FollowUps::default();
        let value = self.kv.write(|t| {
            let mut w = W::new(t, max_ops);
            let v = f(&mut w)?;
            after = std::mem::take(&mut w.after);
            Ok(v)
        })?;
        if after.chunks_touched {
            self.chunk_gen.fetch_add(1, Ordering::Release);
        }
        for ino in after.trims {
            self.finish_trim(ino)?;
        }
        for ino in after.frees {
            self.free_inode(ino, None)?;
        }
        Ok(value)
    }

    /// Runs `f` on a read view of committed data.
    fn read<T>(&self, f: impl FnMut(&ReadTxn<'_>) -> Result<T, Error>) -> Result<T, Error> {
        self.kv.read(f)
    }

    /// The volume settings and keyring. Errors: `NotInitialized`.
    pub fn volume_info(&self) -> Result<VolumeInfo, Error> {
        Ok((*self.vol()?).clone())
    }

    /// The volume settings and keyring, shared. Errors: `NotInitialized`.
    fn vol(&self) -> Result<Arc<VolumeInfo>, Error> {
        self.volume
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(Error::Dir(DirError::NotInitialized))
    }

    /// Replaces the cached volume settings (after a committed change).
    fn set_volume(&self, rec: VolumeRecord) {
        *self.volume.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(volume_info(rec)));
    }

    /// A counter that changes after every committed transaction that
    /// changed the chunk index (commits, truncations, unlinks, repairs,
    /// corruption reports, collection). Equal values mean the index is
    /// unchanged, so a survey of it would find the same thing. Not
    /// persisted: it restarts at 0 with the process.
    pub fn chunk_generation(&self) -> u64 {
        self.chunk_gen.load(Ordering::Acquire)
    }
}

/// Read access shared by read and write transactions, so the typed
/// accessors of each family work in both.
pub(crate) trait Get {
    /// The value of `key`. Errors: the engine's.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    /// At most `limit` pairs of `range`. Errors: the engine's.
    fn scan(&self, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<Pair>, Error>;
}

impl Get for ReadTxn<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        ReadTxn::get(self, key)
    }
    fn scan(&self, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<Pair>, Error> {
        ReadTxn::scan(self, range, limit, reverse)
    }
}

impl Get for WriteTxn<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        WriteTxn::get(self, key)
    }
    fn scan(&self, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<Pair>, Error> {
        WriteTxn::scan(self, range, limit, reverse)
    }
}

impl Get for W<'_, '_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.t.get(key)
    }
    fn scan(&self, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<Pair>, Error> {
        self.t.scan(range, limit, reverse)
    }
}

/// Calls `f` for every pair of `range`, ascending, reading pages of
/// [`SCAN_PAGE`] keys, until `f` returns false.
pub(crate) fn scan_all<G: Get + ?Sized>(
    t: &G,
    range: &KeyRange,
    mut f: impl FnMut(Vec<u8>, Vec<u8>) -> Result<bool, Error>,
) -> Result<(), Error> {
    let mut range = range.clone();
    loop {
        let page = t.scan(&range, SCAN_PAGE, false)?;
        let full = page.len() == SCAN_PAGE;
        let mut last = None;
        for (k, v) in page {
            last = Some(k.clone());
            if !f(k, v)? {
                return Ok(());
            }
        }
        match last {
            Some(k) if full => range.0 = Bound::Excluded(k),
            _ => return Ok(()),
        }
    }
}

/// Number of keys in `range` (a walk: O(keys)).
pub(crate) fn count<G: Get + ?Sized>(t: &G, range: &KeyRange) -> Result<u64, Error> {
    let mut n = 0u64;
    scan_all(t, range, |_, _| {
        n += 1;
        Ok(true)
    })?;
    Ok(n)
}

/// What a write transaction asked to run after its commit.
#[derive(Default)]
struct FollowUps {
    /// Whether the chunk index was written (bumps the chunk generation).
    chunks_touched: bool,
    /// Files truncated down: finish their trims.
    trims: Vec<u64>,
    /// Inodes that left the namespace (listed as orphans): free them.
    frees: Vec<u64>,
}

/// One write transaction with its notion of "now" (one timestamp for every
/// time a call sets) and its follow-up steps.
pub(crate) struct W<'a, 't> {
    t: &'a mut WriteTxn<'t>,
    now: Timestamp,
    max_ops: usize,
    after: FollowUps,
}

impl<'a, 't> W<'a, 't> {
    fn new(t: &'a mut WriteTxn<'t>, max_ops: usize) -> Self {
        W { t, now: Timestamp::now(), max_ops, after: FollowUps::default() }
    }

    /// Sets `key` to `value`.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.t.put(key, value);
    }

    /// Removes `key`.
    fn delete(&mut self, key: Vec<u8>) {
        self.t.delete(key);
    }

    /// Writes this transaction holds so far.
    fn ops(&self) -> usize {
        self.t.ops()
    }

    /// The `u64` meta value `name`. Errors: `Corrupt` if missing.
    fn meta_u64(&self, name: &'static str) -> Result<u64, Error> {
        match self.get(&keys::meta(name))? {
            Some(v) => decode_u64(&v),
            None => Err(Error::Corrupt { what: "meta", reason: format!("counter {name} missing") }),
        }
    }

    /// Hands out the next value of a meta counter.
    fn next(&mut self, name: &'static str) -> Result<u64, Error> {
        let current = self.meta_u64(name)?;
        let next = current
            .checked_add(1)
            .ok_or_else(|| Error::Corrupt { what: "meta", reason: format!("counter {name} exhausted") })?;
        self.put(keys::meta(name), next.to_le_bytes().to_vec());
        Ok(current)
    }
}

/// The checks of one key epoch's sizes (not its cryptography, which only
/// members can check).
pub(crate) fn check_epoch(e: &KeyEpoch) -> Result<(), Error> {
    if e.wrapped.is_empty() || e.wrapped.len() > WRAPPED_SECRET_MAX {
        return Err(invalid(format!("a wrapped secret must hold 1 to {WRAPPED_SECRET_MAX} bytes")));
    }
    Ok(())
}

/// Member names are 1 to [`MEMBER_NAME_MAX`] bytes of printable ASCII
/// without spaces, unique; recipients 1 to [`RECIPIENT_MAX`] bytes, unique;
/// at most [`MEMBER_NODES_MAX`] node ids and [`MEMBERS_MAX`] members.
pub(crate) fn check_members(members: &[Member]) -> Result<(), Error> {
    if members.len() > MEMBERS_MAX {
        return Err(invalid(format!("a volume has at most {MEMBERS_MAX} members")));
    }
    let mut names = HashSet::new();
    let mut recipients = HashSet::new();
    for m in members {
        if m.name.is_empty()
            || m.name.len() > MEMBER_NAME_MAX
            || !m.name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(format!(
                "member name {:?}: 1 to {MEMBER_NAME_MAX} printable ASCII characters without spaces",
                m.name
            )));
        }
        if m.recipient.is_empty() || m.recipient.len() > RECIPIENT_MAX {
            return Err(invalid(format!("recipient of {}: 1 to {RECIPIENT_MAX} bytes", m.name)));
        }
        if m.nodes.len() > MEMBER_NODES_MAX {
            return Err(invalid(format!("member {}: at most {MEMBER_NODES_MAX} node ids", m.name)));
        }
        if !names.insert(m.name.as_str()) || !recipients.insert(m.recipient.as_str()) {
            return Err(DirError::Exists.into());
        }
    }
    Ok(())
}

/// The bits a write by a caller without `CAP_FSETID` clears from `perm`:
/// setuid, and setgid if the group-execute bit is set (without it, setgid
/// marks mandatory locking and stays), as Linux's `should_remove_suid`.
pub(crate) fn kill_bits(perm: u32) -> u32 {
    let mut bits = perm & 0o4000;
    if perm & 0o2010 == 0o2010 {
        bits |= 0o2000;
    }
    bits
}

/// Number of blocks of size `block_size` that a `size`-byte file spans.
pub(crate) fn blocks_for(size: u64, block_size: u32) -> u64 {
    size.div_ceil(u64::from(block_size.max(1)))
}

/// A time a caller sends must be valid ([`Timestamp::validate`]): `Invalid`
/// naming the field otherwise.
pub(crate) fn check_time(what: &str, t: &Timestamp) -> Result<(), Error> {
    t.validate().map_err(|e| invalid(format!("{what}: {e}")))
}

/// An extended attribute name must be non-empty and at most
/// [`XATTR_SEALED_NAME_MAX`] bytes.
pub(crate) fn check_xattr_name(name: &[u8]) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid("empty attribute name"));
    }
    if name.len() > XATTR_SEALED_NAME_MAX {
        return Err(DirError::TooBig.into());
    }
    Ok(())
}

pub(crate) fn check_name(name: &[u8]) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid("empty name"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(DirError::NameTooLong.into());
    }
    Ok(())
}

pub(crate) fn new_record(
    kind: u8,
    perm: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    parent: u64,
    now: Timestamp,
) -> InodeRecord {
    InodeRecord {
        kind,
        perm: perm & 0o7777,
        uid,
        gid,
        size: 0,
        nlink: 1,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        rdev,
        parent,
        stored_bytes: 0,
    }
}

pub(crate) fn to_attr(ino: u64, r: &InodeRecord) -> Result<Attr, Error> {
    Ok(Attr {
        ino: InodeId(ino),
        kind: kind_from_byte(r.kind)?,
        perm: r.perm,
        uid: r.uid,
        gid: r.gid,
        size: r.size,
        nlink: r.nlink,
        atime: r.atime,
        mtime: r.mtime,
        ctime: r.ctime,
        crtime: r.crtime,
        rdev: r.rdev,
        stored_bytes: r.stored_bytes,
    })
}

pub(crate) fn volume_info(v: VolumeRecord) -> VolumeInfo {
    VolumeInfo {
        id: VolumeId(v.id),
        block_size: v.block_size,
        replicas: v.replicas,
        keyring: v.keyring.to_wire(),
        legacy_layouts: v.legacy_layouts,
    }
}

pub(crate) fn decode_u64(b: &[u8]) -> Result<u64, Error> {
    let arr: [u8; 8] = b
        .try_into()
        .map_err(|_| Error::Corrupt { what: "meta", reason: format!("counter of {} bytes", b.len()) })?;
    Ok(u64::from_le_bytes(arr))
}

/// A stored `i64` (little-endian, 8 bytes). Errors: `Corrupt`.
pub(crate) fn decode_i64(b: &[u8]) -> Result<i64, Error> {
    let arr: [u8; 8] = b
        .try_into()
        .map_err(|_| Error::Corrupt { what: "time", reason: format!("value of {} bytes", b.len()) })?;
    Ok(i64::from_le_bytes(arr))
}

pub(crate) fn decode_u32(b: &[u8]) -> Result<u32, Error> {
    let arr: [u8; 4] = b.try_into().map_err(|_| Error::Corrupt {
        what: "meta",
        reason: format!("schema version of {} bytes", b.len()),
    })?;
    Ok(u32::from_le_bytes(arr))
}
