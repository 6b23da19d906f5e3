//! The durable state of dirsvc: namespace, layouts, chunk index and peer
//! registry in one redb database, with POSIX semantics for each operation.
//!
//! [`Store`] is the only code that touches redb. Its methods are synchronous
//! (call them from `spawn_blocking` or a dedicated thread) and take and
//! return plain wire types, so another backend (e.g. etcd, see DESIGN
//! "Growing past one machine") can replace it behind the same methods.
//! Every mutating method runs exactly one redb write transaction, committed
//! with redb's default `Durability::Immediate` before it returns `Ok`; an
//! error aborts the transaction, so a failed call changes nothing.
//!
//! Table shapes and invariants are documented in [`tables`].
//!
//! Orphans: unlink and rename take a [`Keep`] predicate, asked inside the
//! transaction when a non-directory loses its last link; "keep" leaves the
//! inode (nlink 0) with its layout and extended attributes and lists it in
//! `orphans-v1` ([`Store::unlink_keeping`], [`Store::rename_keeping`]);
//! [`Store::free_orphans`] and [`Store::end_sessions`] free it later. The
//! caller (the sessions module) serializes those decisions with open marks.
//! Extended attributes ([`Store::setxattr`] and friends) are opaque sealed
//! bytes per inode; the live client sessions are listed in `sessions-v1`
//! ([`Store::put_session`], [`Store::sessions`]).
//!
//! Besides the namespace, the store keeps what the background workers need
//! (see the crate documentation): the chunk index they survey
//! ([`Store::for_each_chunk`]), the replica edits of repair and corruption
//! reports ([`Store::add_replica`], [`Store::drop_replicas`]), and the
//! garbage-collection steps ([`Store::collect_unreferenced`],
//! [`Store::tombstone_orphans`], [`Store::ack_deletes`],
//! [`Store::expire_tombstones`]), each one transaction that re-checks its
//! precondition, so it serializes correctly with `commit_layout`.

pub mod tables;
mod trust;

use crate::error::{invalid, Error};
use common::config::{valid_block_size, NAME_MAX, SYMLINK_MAX};
use common::rpc::dir::{
    rename_flags, xattr_flags, Attr, CommitLayout, DirEntry, DirError, FileKind, KeyEpoch, Keyring, Member,
    NewInode, PeerLabels, PeerUsage, ReadDirPage, Reseal, SessionId, SetAttr, StoredChunk, VolumeInfo,
    EPOCHS_MAX, MEMBERS_MAX, MEMBER_NAME_MAX, MEMBER_NODES_MAX, RECIPIENT_MAX, RESEAL_BATCH_MAX,
    WRAPPED_SECRET_MAX, XATTR_INODE_MAX, XATTR_SEALED_NAME_MAX, XATTR_SEALED_VALUE_MAX,
};
use common::time::Timestamp;
use common::{ChunkId, InodeId, PeerId, VolumeId};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};
use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use tables::{
    kind_from_byte, kind_to_byte, ChunkRecord, EpochRecord, InodeRecord, KeyringRecord, LayoutRow,
    MemberRecord, PeerRecord, Record, SessionRecord, TombstoneRecord, VolumeRecord, CHUNKS,
    CHUNKS_UNREFERENCED, DIRCOOKIES, DIRENTS, INODES, KIND_DIR, KIND_FILE, KIND_SYMLINK, LAYOUTS, LAYOUTS_V1,
    META, META_KEY_EPOCH, META_NEXT_COOKIE, META_NEXT_INODE, META_SCHEMA, META_VOLUME, OLDEST_SCHEMA_VERSION,
    ORPHANS, PEERS, SCHEMA_VERSION, SESSIONS, SYMLINKS, TOMBSTONES, XATTRS,
};
use tracing::warn;

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

/// Layout rows removed per batch when a file is truncated or freed, to bound
/// memory for huge files.
const DROP_BATCH: usize = 1024;

/// Chunks one garbage-collection write transaction handles at most, so a
/// large collection does not hold the writer lock for long.
pub const GC_BATCH: usize = 512;

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
/// `&self` (redb serialises writers and lets readers run concurrently).
pub struct Store {
    db: Database,
    /// The volume settings and keyring, set by `init_volume` (or at open)
    /// and replaced after each committed keyring change.
    volume: RwLock<Option<Arc<VolumeInfo>>>,
    /// Bumped after every committed transaction that changed `chunks-v1`
    /// (see [`Store::chunk_generation`]).
    chunk_gen: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let initialized = self.volume.read().unwrap_or_else(PoisonError::into_inner).is_some();
        f.debug_struct("Store").field("initialized", &initialized).finish_non_exhaustive()
    }
}

/// A directory entry as stored in `dirents-v1`.
#[derive(Clone, Copy, Debug)]
struct Dirent {
    ino: u64,
    cookie: u64,
    kind: u8,
}

impl Store {
    /// Opens the database at `path`, creating it (and its tables) if it does
    /// not exist.
    ///
    /// A database of an older schema (from [`OLDEST_SCHEMA_VERSION`] on) is
    /// migrated in the same transaction (see [`tables`]): a crash during
    /// the migration leaves the old version intact.
    ///
    /// Errors: [`Error::Db`] if redb cannot open the file (including when
    /// another `Store` in this process has it open), [`Error::Schema`] for an
    /// unknown schema version, [`Error::Corrupt`] for an unreadable volume
    /// or peer record.
    pub fn open(path: &Path) -> Result<Store, Error> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        let volume = {
            // Opening a table in a write transaction creates it, so readers
            // never meet a missing table.
            txn.open_table(INODES)?;
            txn.open_table(DIRENTS)?;
            txn.open_table(DIRCOOKIES)?;
            txn.open_table(LAYOUTS)?;
            txn.open_table(CHUNKS)?;
            txn.open_table(CHUNKS_UNREFERENCED)?;
            txn.open_table(SYMLINKS)?;
            txn.open_table(TOMBSTONES)?;
            txn.open_table(ORPHANS)?;
            txn.open_table(XATTRS)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(tables::JOIN_TOKENS)?;
            txn.open_table(tables::REVOKED)?;
            let mut peers = txn.open_table(PEERS)?;
            let mut meta = txn.open_table(META)?;
            let found = match meta.get(META_SCHEMA)? {
                Some(g) => Some(decode_u32(g.value())?),
                None => None,
            };
            match found {
                None => {
                    meta.insert(META_SCHEMA, &SCHEMA_VERSION.to_le_bytes()[..])?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(old) if (OLDEST_SCHEMA_VERSION..SCHEMA_VERSION).contains(&old) => {
                    let mut rewritten = 0;
                    // 4 → 5: layout rows gain a key epoch and a MAC (none:
                    // zero), the volume record its keyring and the legacy
                    // flag (see `tables`); the join-token and revocation
                    // tables are created empty above; session records v1
                    // (no owner) are read as they are.
                    let layouts_copied = migrate_layouts(&txn)?;
                    let stored = match meta.get(META_VOLUME)? {
                        Some(g) => Some(VolumeRecord::from_bytes(g.value())?),
                        None => None,
                    };
                    if let Some(rec) = stored {
                        meta.insert(META_VOLUME, rec.to_bytes()?.as_slice())?;
                        meta.insert(META_KEY_EPOCH, &rec.keyring.newest_epoch().to_le_bytes()[..])?;
                    }
                    if old < 2 {
                        // 1 → 2: peer records gain labels and the drain flag
                        // (tombstones: the table was created above).
                        let stored: Vec<([u8; 16], PeerRecord)> = peers
                            .iter()?
                            .map(|row| {
                                let (k, v) = row?;
                                Ok((k.value(), PeerRecord::from_bytes(v.value())?))
                            })
                            .collect::<Result<_, Error>>()?;
                        for (id, rec) in &stored {
                            peers.insert(*id, rec.to_bytes()?.as_slice())?;
                        }
                        rewritten = stored.len();
                    }
                    // 2 → 3: new tables only (orphans, xattrs, sessions),
                    // created empty above. 3 → 4: records read in their
                    // old versions.
                    meta.insert(META_SCHEMA, &SCHEMA_VERSION.to_le_bytes()[..])?;
                    tracing::info!(
                        from = old,
                        to = SCHEMA_VERSION,
                        peers_rewritten = rewritten,
                        layouts_copied,
                        "database migrated"
                    );
                }
                Some(other) => return Err(Error::Schema { found: other, supported: SCHEMA_VERSION }),
            }
            let volume = match meta.get(META_VOLUME)? {
                Some(g) => Some(VolumeRecord::from_bytes(g.value())?),
                None => None,
            };
            volume
        };
        txn.commit()?;
        let store = Store { db, volume: RwLock::new(None), chunk_gen: AtomicU64::new(0) };
        if let Some(v) = volume {
            store.set_volume(v);
        }
        Ok(store)
    }

    /// Runs `f` in one write transaction and commits it durably if `f`
    /// returns `Ok`; aborts it otherwise.
    fn write<T>(&self, f: impl FnOnce(&mut W<'_>) -> Result<T, Error>) -> Result<T, Error> {
        let txn = self.db.begin_write()?;
        let (result, touched) = {
            let mut w = W::open(&txn)?;
            let r = f(&mut w);
            (r, w.chunks_touched)
        };
        match result {
            Ok(v) => {
                txn.commit()?;
                if touched {
                    self.chunk_gen.fetch_add(1, Ordering::Release);
                }
                Ok(v)
            }
            Err(e) => {
                if let Err(abort) = txn.abort() {
                    warn!(error = %abort, "aborting a failed transaction failed");
                }
                Err(e)
            }
        }
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

    /// Creates the volume: settings, counters and the root directory
    /// (inode 1, mode `0755`, owned by `uid`/`gid`, nlink 2).
    ///
    /// The keyring must hold exactly epoch 0 (zero link, non-zero check)
    /// and at least one member; it is stored as keyring version 1, and
    /// `legacy_layouts` is always stored false (a new volume never accepts
    /// layout entries without a MAC).
    ///
    /// Errors: `Invalid` for a block size that is not a power of two in
    /// [4 KiB, 4 MiB], R = 0 or R > [`MAX_REPLICAS`], or a keyring that is
    /// not such an epoch 0 with valid members; `AlreadyInitialized` if a
    /// volume exists.
    pub fn init_volume(&self, info: &VolumeInfo, uid: u32, gid: u32) -> Result<VolumeInfo, Error> {
        if !valid_block_size(info.block_size) {
            return Err(invalid(format!(
                "block size {} is not a power of two in [{}, {}]",
                info.block_size,
                common::config::MIN_BLOCK_SIZE,
                common::config::MAX_BLOCK_SIZE
            )));
        }
        if info.replicas == 0 || info.replicas > MAX_REPLICAS {
            return Err(invalid(format!(
                "replication factor {} is not in [1, {MAX_REPLICAS}]",
                info.replicas
            )));
        }
        let ring = &info.keyring;
        match ring.epochs.as_slice() {
            [e0] if e0.epoch == 0 && e0.link == [0; 32] && e0.check != [0; 32] => check_epoch(e0)?,
            _ => {
                return Err(invalid(
                    "a new volume's keyring holds exactly key epoch 0 (zero link, a key check)",
                ))
            }
        }
        if ring.members.is_empty() {
            return Err(invalid("a new volume needs at least one member"));
        }
        check_members(&ring.members)?;
        let mut keyring = KeyringRecord::from_wire(ring);
        keyring.version = 1;
        let record = VolumeRecord {
            id: info.id.0,
            block_size: info.block_size,
            replicas: info.replicas,
            keyring,
            legacy_layouts: false,
        };
        self.write(|w| {
            if w.meta.get(META_VOLUME)?.is_some() {
                return Err(DirError::AlreadyInitialized.into());
            }
            w.meta.insert(META_VOLUME, record.to_bytes()?.as_slice())?;
            w.meta.insert(META_KEY_EPOCH, &0u32.to_le_bytes()[..])?;
            w.meta.insert(META_NEXT_INODE, &(InodeId::ROOT.0 + 1).to_le_bytes()[..])?;
            w.meta.insert(META_NEXT_COOKIE, &1u64.to_le_bytes()[..])?;
            let mut root = new_record(KIND_DIR, 0o755, uid, gid, 0, InodeId::ROOT.0, w.now);
            root.nlink = 2;
            w.put_inode(InodeId::ROOT.0, &root)
        })?;
        // Only one init can commit (the check above runs inside the write
        // transaction), so this is the first set.
        self.set_volume(record);
        self.volume_info()
    }

    /// Finds `name` in directory `parent` and returns its attributes.
    ///
    /// Errors: `NotFound` (no parent or no entry), `NotDir`, `Invalid`
    /// (empty name), `NameTooLong`, `NotInitialized`.
    pub fn lookup(&self, parent: InodeId, name: &[u8]) -> Result<Attr, Error> {
        self.vol()?;
        check_name(name)?;
        let txn = self.db.begin_read()?;
        let inodes = txn.open_table(INODES)?;
        let dirents = txn.open_table(DIRENTS)?;
        get_dir(&inodes, parent.0)?;
        let e = get_entry(&dirents, parent.0, name)?.ok_or(DirError::NotFound)?;
        to_attr(e.ino, &get_inode(&inodes, e.ino)?)
    }

    /// Attributes of `ino`. Errors: `NotFound`, `NotInitialized`.
    pub fn getattr(&self, ino: InodeId) -> Result<Attr, Error> {
        self.vol()?;
        let txn = self.db.begin_read()?;
        let inodes = txn.open_table(INODES)?;
        to_attr(ino.0, &get_inode(&inodes, ino.0)?)
    }

    /// Changes the given attributes. Any change sets ctime to now; a size
    /// change also sets mtime to now unless `set.mtime` is given. Shrinking
    /// drops the layout blocks with index ≥ ⌈size / B⌉ (their chunks lose a
    /// reference). `kill_suid_sgid` clears setuid (and setgid with
    /// group-execute) from the stored mode after `perm` is applied; on a
    /// mode without those bits it changes nothing, ctime included.
    ///
    /// Errors: `NotFound`; for `size`, `IsDir` on a directory and `Invalid`
    /// on anything but a regular file; `Invalid` for an atime or mtime
    /// that is not a valid [`Timestamp`]; `NotInitialized`.
    pub fn setattr(&self, ino: InodeId, set: &SetAttr) -> Result<Attr, Error> {
        let vol = self.vol()?;
        for (what, t) in [("atime", &set.atime), ("mtime", &set.mtime)] {
            if let Some(t) = t {
                check_time(what, t)?;
            }
        }
        self.write(|w| {
            let mut rec = w.inode(ino.0)?;
            let kill = set.kill_suid_sgid && kill_bits(rec.perm) != 0;
            let any = set.perm.is_some()
                || set.uid.is_some()
                || set.gid.is_some()
                || set.size.is_some()
                || set.atime.is_some()
                || set.mtime.is_some()
                || kill;
            if !any {
                return to_attr(ino.0, &rec);
            }
            if let Some(size) = set.size {
                match rec.kind {
                    KIND_FILE => {}
                    KIND_DIR => return Err(DirError::IsDir.into()),
                    _ => return Err(invalid("size can only be set on a regular file")),
                }
                let freed = w.drop_blocks_from(ino.0, blocks_for(size, vol.block_size))?;
                rec.stored_bytes = rec.stored_bytes.saturating_sub(freed);
                rec.size = size;
                rec.mtime = w.now;
            }
            if let Some(perm) = set.perm {
                rec.perm = perm & 0o7777;
            }
            if let Some(uid) = set.uid {
                rec.uid = uid;
            }
            if let Some(gid) = set.gid {
                rec.gid = gid;
            }
            if let Some(atime) = set.atime {
                rec.atime = atime;
            }
            if let Some(mtime) = set.mtime {
                rec.mtime = mtime;
            }
            if set.kill_suid_sgid {
                rec.perm &= !kill_bits(rec.perm);
            }
            rec.ctime = w.now;
            w.put_inode(ino.0, &rec)?;
            to_attr(ino.0, &rec)
        })
    }

    /// Makes directory `name` in `parent` (nlink 2; the parent gains a
    /// link; its mtime and ctime become now).
    ///
    /// Errors: `Exists`, `NotDir`, `NotFound`, `Invalid`, `NameTooLong`,
    /// `NotInitialized`.
    pub fn mkdir(&self, parent: InodeId, name: &[u8], perm: u32, uid: u32, gid: u32) -> Result<Attr, Error> {
        self.vol()?;
        check_name(name)?;
        self.write(|w| {
            let mut rec = new_record(KIND_DIR, perm, uid, gid, 0, parent.0, w.now);
            rec.nlink = 2;
            w.make_entry(parent.0, name, rec)
        })
    }

    /// Makes a regular file or special node `name` in `parent` (nlink 1).
    ///
    /// Errors: `Invalid` for kind `Dir` or `Symlink`, then as
    /// [`Store::mkdir`].
    pub fn create(&self, parent: InodeId, name: &[u8], new: &NewInode) -> Result<Attr, Error> {
        self.vol()?;
        check_name(name)?;
        let rdev = match new.kind {
            FileKind::File | FileKind::Fifo | FileKind::Socket => 0,
            FileKind::CharDevice | FileKind::BlockDevice => new.rdev,
            FileKind::Dir | FileKind::Symlink => {
                return Err(invalid("create makes files and special nodes only"))
            }
        };
        let kind = kind_to_byte(new.kind);
        self.write(|w| {
            let rec = new_record(kind, new.perm, new.uid, new.gid, rdev, parent.0, w.now);
            w.make_entry(parent.0, name, rec)
        })
    }

    /// Makes symlink `name` in `parent` with sealed `target` and plaintext
    /// target length `size` (mode `0777`).
    ///
    /// Errors: `Invalid` for an empty target, `NameTooLong` for a target
    /// over [`MAX_TARGET_BYTES`] or `size` over `SYMLINK_MAX`, then as
    /// [`Store::mkdir`].
    pub fn symlink(
        &self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        size: u64,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, Error> {
        self.vol()?;
        check_name(name)?;
        if target.is_empty() {
            return Err(invalid("empty symlink target"));
        }
        if target.len() > MAX_TARGET_BYTES || size > SYMLINK_MAX as u64 {
            return Err(DirError::NameTooLong.into());
        }
        self.write(|w| {
            let mut rec = new_record(KIND_SYMLINK, 0o777, uid, gid, 0, parent.0, w.now);
            rec.size = size;
            let attr = w.make_entry(parent.0, name, rec)?;
            w.symlinks.insert(attr.ino.0, target)?;
            Ok(attr)
        })
    }

    /// Makes symlink `name` in `parent` as inode `ino`, a number handed out
    /// earlier by [`Store::reserve_inodes`] and not used yet; otherwise as
    /// [`Store::symlink`]. Whether `ino` was reserved by the caller's
    /// session is the caller's check (in memory, see `sessions`).
    ///
    /// Errors: `NotReserved` if `ino` was never handed out (at or past the
    /// inode counter, or the root) or is in use; then as
    /// [`Store::symlink`].
    #[allow(clippy::too_many_arguments)]
    pub fn symlink_at(
        &self,
        parent: InodeId,
        name: &[u8],
        ino: InodeId,
        target: &[u8],
        size: u64,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, Error> {
        self.vol()?;
        check_name(name)?;
        if target.is_empty() {
            return Err(invalid("empty symlink target"));
        }
        if target.len() > MAX_TARGET_BYTES || size > SYMLINK_MAX as u64 {
            return Err(DirError::NameTooLong.into());
        }
        self.write(|w| {
            let next = match w.meta.get(META_NEXT_INODE)? {
                Some(g) => decode_u64(g.value())?,
                None => {
                    return Err(Error::Corrupt { what: "meta", reason: "counter next_inode missing".into() })
                }
            };
            if ino.0 <= InodeId::ROOT.0 || ino.0 >= next || w.inodes.get(ino.0)?.is_some() {
                return Err(DirError::NotReserved(ino).into());
            }
            let mut rec = new_record(KIND_SYMLINK, 0o777, uid, gid, 0, parent.0, w.now);
            rec.size = size;
            let attr = w.make_entry_at(parent.0, name, rec, Some(ino.0))?;
            w.symlinks.insert(attr.ino.0, target)?;
            Ok(attr)
        })
    }

    /// Hands out `count` fresh inode numbers (advancing the durable
    /// counter; they are never handed out again) and returns the first.
    ///
    /// Errors: `Invalid` for a count of 0; `NotInitialized`.
    pub fn reserve_inodes(&self, count: u32) -> Result<InodeId, Error> {
        self.vol()?;
        if count == 0 {
            return Err(invalid("reserve at least one inode"));
        }
        self.write(|w| {
            let first = w.next(META_NEXT_INODE)?;
            let next = first.checked_add(u64::from(count)).ok_or_else(|| Error::Corrupt {
                what: "meta",
                reason: "counter next_inode exhausted".into(),
            })?;
            w.meta.insert(META_NEXT_INODE, &next.to_le_bytes()[..])?;
            Ok(InodeId(first))
        })
    }

    /// Adds `member` to the keyring, replacing each epoch's wrapped secret
    /// by `wrapped` (the same secrets re-wrapped to every member, the new
    /// one included), if the keyring is still at `version`; the version
    /// goes up by one. One transaction. Returns the new keyring.
    ///
    /// Errors: `KeyringChanged` (another version), `Exists` (name or
    /// recipient listed), `Invalid` (bad member, wrong number or size of
    /// wrapped secrets, too many members), `NotInitialized`.
    pub fn add_member(&self, version: u64, member: &Member, wrapped: &[Vec<u8>]) -> Result<Keyring, Error> {
        self.vol()?;
        check_members(std::slice::from_ref(member))?;
        if wrapped.iter().any(|w| w.is_empty() || w.len() > WRAPPED_SECRET_MAX) {
            return Err(invalid(format!("a wrapped secret must hold 1 to {WRAPPED_SECRET_MAX} bytes")));
        }
        let rec = self.write(|w| {
            let mut rec = w.volume_rec()?;
            let ring = &mut rec.keyring;
            if ring.version != version {
                return Err(DirError::KeyringChanged { version: ring.version }.into());
            }
            if ring.members.iter().any(|m| m.name == member.name || m.recipient == member.recipient) {
                return Err(DirError::Exists.into());
            }
            if ring.members.len() >= MEMBERS_MAX {
                return Err(invalid(format!("a volume has at most {MEMBERS_MAX} members")));
            }
            if wrapped.len() != ring.epochs.len() {
                return Err(invalid(format!(
                    "{} wrapped secrets for {} key epochs",
                    wrapped.len(),
                    ring.epochs.len()
                )));
            }
            for (e, new) in ring.epochs.iter_mut().zip(wrapped) {
                e.wrapped = new.clone();
            }
            ring.members.push(MemberRecord::from_wire(member));
            ring.version += 1;
            w.put_volume(&rec)?;
            Ok(rec)
        })?;
        let ring = rec.keyring.to_wire();
        self.set_volume(rec);
        Ok(ring)
    }

    /// Removes member `name` and appends key epoch `epoch`, if the keyring
    /// is still at `version`; the version goes up by one and the newest
    /// epoch becomes `epoch.epoch` (from then on `commit_layout` refuses
    /// newly stored chunks of older epochs). dirsvc cannot verify the new
    /// epoch's link or check (it knows no secret); clients do. One
    /// transaction. Returns the new keyring and the removed member.
    ///
    /// Errors: `KeyringChanged`; `NotFound` (no such member); `Invalid`
    /// (the last member, an epoch that is not newest + 1, a zero check or
    /// link, a wrapped secret out of bounds, too many epochs);
    /// `NotInitialized`.
    pub fn remove_member(
        &self,
        version: u64,
        name: &str,
        epoch: &KeyEpoch,
    ) -> Result<(Keyring, Member), Error> {
        self.vol()?;
        check_epoch(epoch)?;
        if epoch.check == [0; 32] || epoch.link == [0; 32] {
            return Err(invalid("a new key epoch needs a key check and a link"));
        }
        let (rec, removed) = self.write(|w| {
            let mut rec = w.volume_rec()?;
            let ring = &mut rec.keyring;
            if ring.version != version {
                return Err(DirError::KeyringChanged { version: ring.version }.into());
            }
            let at = ring.members.iter().position(|m| m.name == name).ok_or(DirError::NotFound)?;
            if ring.members.len() == 1 {
                return Err(invalid("cannot remove the last member of a volume"));
            }
            let want = ring.newest_epoch() + 1;
            if ring.epochs.is_empty() || epoch.epoch != want {
                return Err(invalid(format!("the next key epoch is {want}, not {}", epoch.epoch)));
            }
            if ring.epochs.len() >= EPOCHS_MAX {
                return Err(invalid(format!("a volume has at most {EPOCHS_MAX} key epochs")));
            }
            let removed = ring.members.remove(at).to_wire();
            ring.epochs.push(EpochRecord {
                epoch: epoch.epoch,
                wrapped: epoch.wrapped.clone(),
                check: epoch.check,
                link: epoch.link,
            });
            ring.version += 1;
            w.put_volume(&rec)?;
            Ok((rec, removed))
        })?;
        let ring = rec.keyring.to_wire();
        self.set_volume(rec);
        Ok((ring, removed))
    }

    /// The sealed target of symlink `ino`.
    ///
    /// Errors: `NotFound`, `Invalid` if `ino` is not a symlink,
    /// `NotInitialized`.
    pub fn readlink(&self, ino: InodeId) -> Result<Vec<u8>, Error> {
        self.vol()?;
        let txn = self.db.begin_read()?;
        let inodes = txn.open_table(INODES)?;
        let rec = get_inode(&inodes, ino.0)?;
        if rec.kind != KIND_SYMLINK {
            return Err(invalid("not a symlink"));
        }
        let symlinks = txn.open_table(SYMLINKS)?;
        let target = symlinks
            .get(ino.0)?
            .ok_or(Error::Corrupt { what: "symlink", reason: format!("symlink {ino} has no target") })?;
        Ok(target.value().to_vec())
    }

    /// Adds entry `new_name` in `new_parent` for the non-directory `ino`
    /// (nlink + 1, ctime now).
    ///
    /// Errors: `IsDir` if `ino` is a directory (hard links to directories
    /// are not allowed; Linux reports `EPERM`), `NotFound` if `ino` is an
    /// orphan (nlink 0), `Invalid` at `u32::MAX` links, then as
    /// [`Store::mkdir`].
    pub fn link(&self, ino: InodeId, new_parent: InodeId, new_name: &[u8]) -> Result<Attr, Error> {
        self.vol()?;
        check_name(new_name)?;
        self.write(|w| {
            let mut rec = w.inode(ino.0)?;
            if rec.kind == KIND_DIR {
                return Err(DirError::IsDir.into());
            }
            if rec.nlink == 0 {
                // An orphan (unlinked, still open): Linux refuses to give
                // it a name again (ENOENT) unless it was O_TMPFILE.
                return Err(DirError::NotFound.into());
            }
            w.dir(new_parent.0)?;
            if w.entry(new_parent.0, new_name)?.is_some() {
                return Err(DirError::Exists.into());
            }
            rec.nlink = rec.nlink.checked_add(1).ok_or_else(|| invalid("too many links"))?;
            rec.ctime = w.now;
            w.put_inode(ino.0, &rec)?;
            w.add_entry(new_parent.0, new_name, ino.0, rec.kind)?;
            w.touch_dir(new_parent.0, 0)?;
            to_attr(ino.0, &rec)
        })
    }

    /// Removes the non-directory entry `name` from `parent`, freeing the
    /// inode at nlink 0 (as [`Store::unlink_keeping`] with nothing held
    /// open).
    pub fn unlink(&self, parent: InodeId, name: &[u8]) -> Result<Removed, Error> {
        self.unlink_keeping(parent, name, &|_| false)
    }

    /// Removes the non-directory entry `name` from `parent`. The inode loses
    /// a link (ctime now). At nlink 0, if `keep(ino)` (asked inside the
    /// transaction: the inode is held open) it becomes an orphan (listed in
    /// `orphans-v1`, see [`tables`]); otherwise it is freed: its record,
    /// layout rows (each chunk loses a reference), symlink target and
    /// extended attributes are deleted.
    ///
    /// Errors: `NotFound`, `NotDir` (parent), `IsDir` (the entry is a
    /// directory), `Invalid`, `NameTooLong`, `NotInitialized`.
    pub fn unlink_keeping(&self, parent: InodeId, name: &[u8], keep: Keep<'_>) -> Result<Removed, Error> {
        self.vol()?;
        check_name(name)?;
        self.write(|w| {
            w.dir(parent.0)?;
            let e = w.entry(parent.0, name)?.ok_or(DirError::NotFound)?;
            if e.kind == KIND_DIR {
                return Err(DirError::IsDir.into());
            }
            w.remove_entry(parent.0, name, e.cookie)?;
            let orphaned = w.drop_link(e.ino, keep)?;
            w.touch_dir(parent.0, 0)?;
            Ok(Removed { ino: InodeId(e.ino), orphaned })
        })
    }

    /// Removes the empty directory entry `name` from `parent` (the parent
    /// loses a link) and frees the directory with its extended attributes.
    /// Returns the removed directory's inode.
    ///
    /// Errors: `NotFound`, `NotDir` (parent, or the entry is not a
    /// directory), `NotEmpty`, `Invalid`, `NameTooLong`, `NotInitialized`.
    pub fn rmdir(&self, parent: InodeId, name: &[u8]) -> Result<InodeId, Error> {
        self.vol()?;
        check_name(name)?;
        self.write(|w| {
            w.dir(parent.0)?;
            let e = w.entry(parent.0, name)?.ok_or(DirError::NotFound)?;
            if e.kind != KIND_DIR {
                return Err(DirError::NotDir.into());
            }
            if !w.dir_is_empty(e.ino)? {
                return Err(DirError::NotEmpty.into());
            }
            w.remove_entry(parent.0, name, e.cookie)?;
            let rec = w.inode(e.ino)?;
            w.free_inode(e.ino, &rec)?;
            w.touch_dir(parent.0, -1)?;
            Ok(InodeId(e.ino))
        })
    }

    /// Moves entry `name` of `parent` to `new_name` in `new_parent`,
    /// atomically, as `renameat2(2)`:
    /// - an existing target of a compatible kind is replaced (a file by a
    ///   non-directory, an empty directory by a directory) and loses its link;
    /// - `NOREPLACE`: `Exists` if the target exists;
    /// - `EXCHANGE`: both must exist; they swap (directories' parents and
    ///   the parents' nlinks follow);
    /// - source and target naming the same inode: success, nothing changes
    ///   (except with `NOREPLACE`, which reports `Exists` as Linux does).
    ///
    /// The moved inodes' ctime and both parents' mtime and ctime become now.
    /// The entry gets a fresh readdir cookie (exchange keeps both).
    ///
    /// Errors: `NotFound` (source, or exchange target), `NotDir`/`IsDir`
    /// (kind mismatch), `NotEmpty` (target directory not empty, or target is
    /// an ancestor of the source), `Invalid` (unknown flags, both flags,
    /// moving a directory into its own subtree, moving the root), `Exists`,
    /// `NameTooLong`, `NotInitialized`.
    pub fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
    ) -> Result<Renamed, Error> {
        self.rename_keeping(parent, name, new_parent, new_name, flags, &|_| false)
    }

    /// [`Store::rename`], where a replaced non-directory that loses its last
    /// link is kept as an orphan if `keep(ino)` (as in
    /// [`Store::unlink_keeping`]). A replaced directory is always freed.
    pub fn rename_keeping(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
        keep: Keep<'_>,
    ) -> Result<Renamed, Error> {
        self.vol()?;
        check_name(name)?;
        check_name(new_name)?;
        let known = rename_flags::NOREPLACE | rename_flags::EXCHANGE;
        if flags & !known != 0 {
            return Err(invalid(format!("unknown rename flags {flags:#x}")));
        }
        if flags == known {
            return Err(invalid("NOREPLACE and EXCHANGE together"));
        }
        self.write(|w| w.rename(parent.0, name, new_parent.0, new_name, flags, keep))
    }

    /// Lists the entries of `dir` with cookie > `after`, ascending, at most
    /// `limit` (clamped to [1, [`MAX_READDIR_ENTRIES`]]).
    ///
    /// Errors: `NotFound`, `NotDir`, `NotInitialized`.
    pub fn readdir(&self, dir: InodeId, after: u64, limit: u32) -> Result<ReadDirPage, Error> {
        self.vol()?;
        let limit = limit.clamp(1, MAX_READDIR_ENTRIES) as usize;
        let txn = self.db.begin_read()?;
        let inodes = txn.open_table(INODES)?;
        get_dir(&inodes, dir.0)?;
        let dirents = txn.open_table(DIRENTS)?;
        let cookies = txn.open_table(DIRCOOKIES)?;
        let mut entries = Vec::new();
        let Some(start) = after.checked_add(1) else {
            return Ok(ReadDirPage { entries, eof: true });
        };
        let mut eof = true;
        for row in cookies.range((dir.0, start)..=(dir.0, u64::MAX))? {
            let (k, v) = row?;
            if entries.len() == limit {
                eof = false;
                break;
            }
            let (_, cookie) = k.value();
            let name = v.value().to_vec();
            let e = get_entry(&dirents, dir.0, &name)?.ok_or_else(|| Error::Corrupt {
                what: "directory entry",
                reason: format!("cookie {cookie} of directory {dir} names no entry"),
            })?;
            entries.push(DirEntry { name, ino: InodeId(e.ino), kind: kind_from_byte(e.kind)?, cookie });
        }
        Ok(ReadDirPage { entries, eof })
    }

    /// Applies a layout update to regular file `ino` in one transaction:
    /// each listed block row is set (the new chunk gains a reference and
    /// the committing replicas, the replaced one loses a reference) or
    /// removed (`None`); then size, mtime (from the commit) and ctime (now)
    /// are set and rows with index ≥ ⌈size / B⌉ are dropped.
    ///
    /// A chunk that garbage collection has deleted (it has a tombstone) is
    /// refused with `ChunkGone` and nothing changes: the tombstone and the
    /// removal of the chunk record were one transaction, so either this
    /// commit ran first (and the collector's re-check saw the reference) or
    /// the collector did.
    ///
    /// Each row keeps the entry's key epoch and MAC. A chunk with replicas
    /// (newly stored) must be sealed under the newest key epoch, read in
    /// the same transaction (`key_epoch`): after a member's removal no
    /// commit adds data under an epoch that member knows.
    ///
    /// Errors: `NotFound`; `IsDir`; `Invalid` for a non-regular file, a
    /// block listed twice, a chunk past the new size, a chunk with no
    /// replicas, an unregistered replica, a stored length of 0 or over
    /// B + [`MAX_CHUNK_OVERHEAD`], a length that differs from the one
    /// already recorded for the same chunk, an all-zero MAC, an epoch past
    /// the newest, or an mtime that is not a valid [`Timestamp`];
    /// `StaleEpoch` for a new chunk of an older epoch; `ChunkGone`;
    /// `NotInitialized`.
    pub fn commit_layout(&self, ino: InodeId, commit: &CommitLayout) -> Result<Attr, Error> {
        let vol = self.vol()?;
        check_time("mtime", &commit.mtime)?;
        self.write(|w| w.commit_layout(ino.0, commit, vol.block_size))
    }

    /// Replaces blocks of file `ino` by re-sealed chunks: each
    /// [`Reseal`] whose block still names `old` gets `new` (a new chunk
    /// under the newest epoch, with replicas and a MAC); the others are
    /// left alone. Size, mtime and ctime do not change (the content is the
    /// same). One transaction. Returns, per entry, whether it applied.
    ///
    /// Errors: `NotFound`, `IsDir`, `Invalid` (as [`Store::commit_layout`],
    /// and more than [`RESEAL_BATCH_MAX`] entries), `StaleEpoch` when a new
    /// chunk is not of the newest epoch, `ChunkGone`, `NotInitialized`.
    pub fn reseal_blocks(&self, ino: InodeId, reseals: &[Reseal]) -> Result<Vec<bool>, Error> {
        let vol = self.vol()?;
        if reseals.len() > RESEAL_BATCH_MAX {
            return Err(invalid(format!("at most {RESEAL_BATCH_MAX} blocks per reseal")));
        }
        self.write(|w| w.reseal_blocks(ino.0, reseals, vol.block_size))
    }

    /// The non-hole blocks of file `ino` with index in
    /// `[first, first + max)` (at most [`MAX_LAYOUT_BLOCKS`] of them), with
    /// the file's attributes, read in one transaction.
    ///
    /// Errors: `NotFound`, `IsDir`, `Invalid` for other non-regular files,
    /// `NotInitialized`.
    pub fn get_layout(&self, ino: InodeId, first: u64, max: u32) -> Result<LayoutBlocks, Error> {
        self.vol()?;
        let txn = self.db.begin_read()?;
        let inodes = txn.open_table(INODES)?;
        let rec = get_inode(&inodes, ino.0)?;
        match rec.kind {
            KIND_FILE => {}
            KIND_DIR => return Err(DirError::IsDir.into()),
            _ => return Err(invalid("not a regular file")),
        }
        let layouts = txn.open_table(LAYOUTS)?;
        let chunks = txn.open_table(CHUNKS)?;
        let end = first.saturating_add(u64::from(max));
        let cap = max.min(MAX_LAYOUT_BLOCKS) as usize;
        let mut blocks = Vec::new();
        let mut eof = true;
        for row in layouts.range((ino.0, first)..=(ino.0, u64::MAX))? {
            let (k, v) = row?;
            let (_, index) = k.value();
            if index >= end || blocks.len() == cap {
                eof = false;
                break;
            }
            let (id, len, epoch, mac) = v.value();
            let replicas = match chunks.get(id)? {
                Some(g) => ChunkRecord::from_bytes(g.value())?.replicas,
                None => {
                    warn!(%ino, index, chunk = %ChunkId(id), "layout names an unknown chunk");
                    Vec::new()
                }
            };
            blocks.push(LayoutBlock { index, chunk: ChunkId(id), len, replicas, epoch, mac });
        }
        Ok(LayoutBlocks { attr: to_attr(ino.0, &rec)?, blocks, eof })
    }

    /// The recorded replicas of each chunk, in the same order (empty for a
    /// chunk the index does not know). Errors: `NotInitialized`.
    pub fn chunk_replicas(&self, ids: &[ChunkId]) -> Result<Vec<Vec<PeerId>>, Error> {
        self.vol()?;
        let txn = self.db.begin_read()?;
        let chunks = txn.open_table(CHUNKS)?;
        ids.iter()
            .map(|id| match chunks.get(id.0)? {
                Some(g) => Ok(ChunkRecord::from_bytes(g.value())?.replicas),
                None => Ok(Vec::new()),
            })
            .collect()
    }

    /// The chunk index record of `id`, if any (for GC and inspection).
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, Error> {
        let txn = self.db.begin_read()?;
        let chunks = txn.open_table(CHUNKS)?;
        match chunks.get(id.0)? {
            Some(g) => Ok(Some(ChunkRecord::from_bytes(g.value())?)),
            None => Ok(None),
        }
    }

    /// Chunks whose reference count is 0, each with the Unix time (seconds)
    /// at which it became unreferenced, in id order.
    pub fn unreferenced_chunks(&self) -> Result<Vec<(ChunkId, i64)>, Error> {
        let txn = self.db.begin_read()?;
        let unref = txn.open_table(CHUNKS_UNREFERENCED)?;
        unref
            .iter()?
            .map(|row| {
                let (k, v) = row?;
                Ok((ChunkId(k.value()), v.value()))
            })
            .collect()
    }

    /// Number of inodes in use (for `statfs`).
    pub fn inode_count(&self) -> Result<u64, Error> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(INODES)?.len()?)
    }

    /// The sealed value of extended attribute `name` of `ino` (any kind,
    /// orphans included).
    ///
    /// Errors: `NotFound` (no such inode), `NoAttr`, `Invalid` (empty
    /// name), `TooBig` (name over [`XATTR_SEALED_NAME_MAX`]),
    /// `NotInitialized`.
    pub fn getxattr(&self, ino: InodeId, name: &[u8]) -> Result<Vec<u8>, Error> {
        self.vol()?;
        check_xattr_name(name)?;
        let txn = self.db.begin_read()?;
        get_inode(&txn.open_table(INODES)?, ino.0)?;
        let xattrs = txn.open_table(XATTRS)?;
        let value = xattrs.get((ino.0, name))?.ok_or(DirError::NoAttr)?;
        Ok(value.value().to_vec())
    }

    /// The sealed names of every extended attribute of `ino`, in stored
    /// (byte) order.
    ///
    /// Errors: `NotFound`, `NotInitialized`.
    pub fn listxattr(&self, ino: InodeId) -> Result<Vec<Vec<u8>>, Error> {
        self.vol()?;
        let txn = self.db.begin_read()?;
        get_inode(&txn.open_table(INODES)?, ino.0)?;
        let xattrs = txn.open_table(XATTRS)?;
        let empty: &[u8] = &[];
        xattrs
            .range((ino.0, empty)..(ino.0.saturating_add(1), empty))?
            .map(|row| Ok(row?.0.value().1.to_vec()))
            .collect()
    }

    /// Sets extended attribute `name` of `ino` to `value` (both sealed,
    /// opaque), as `setxattr(2)` with `flags` from
    /// [`common::rpc::dir::xattr_flags`]; ctime becomes now. Returns the
    /// new attributes.
    ///
    /// Errors: `NotFound`; `Exists` (`CREATE` and present); `NoAttr`
    /// (`REPLACE` and absent); `Invalid` (empty name, unknown flags);
    /// `TooBig` (name over [`XATTR_SEALED_NAME_MAX`] or value over
    /// [`XATTR_SEALED_VALUE_MAX`]); `NoSpace` (the inode's names and values
    /// would total more than [`XATTR_INODE_MAX`] bytes); `NotInitialized`.
    pub fn setxattr(&self, ino: InodeId, name: &[u8], value: &[u8], flags: u32) -> Result<Attr, Error> {
        self.setxattr_within(ino, name, value, flags, usize::MAX)
    }

    /// [`Store::setxattr`], where an inode may carry at most `max_count`
    /// attributes: adding one more is `Limit` (replacing one is fine).
    pub fn setxattr_within(
        &self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        flags: u32,
        max_count: usize,
    ) -> Result<Attr, Error> {
        self.vol()?;
        check_xattr_name(name)?;
        if value.len() > XATTR_SEALED_VALUE_MAX {
            return Err(DirError::TooBig.into());
        }
        let known = xattr_flags::CREATE | xattr_flags::REPLACE;
        if flags & !known != 0 {
            return Err(invalid(format!("unknown setxattr flags {flags:#x}")));
        }
        self.write(|w| {
            let mut rec = w.inode(ino.0)?;
            let old = w.xattrs.get((ino.0, name))?.map(|g| g.value().len());
            if flags & xattr_flags::CREATE != 0 && old.is_some() {
                return Err(DirError::Exists.into());
            }
            if flags & xattr_flags::REPLACE != 0 && old.is_none() {
                return Err(DirError::NoAttr.into());
            }
            let (count, bytes) = w.xattr_usage(ino.0)?;
            let others = bytes.saturating_sub(old.map_or(0, |len| name.len() + len));
            if others.saturating_add(name.len()).saturating_add(value.len()) > XATTR_INODE_MAX {
                return Err(DirError::NoSpace.into());
            }
            if old.is_none() && count >= max_count {
                return Err(DirError::Limit(format!(
                    "inode {ino} carries its maximum of {max_count} extended attributes"
                ))
                .into());
            }
            w.xattrs.insert((ino.0, name), value)?;
            rec.ctime = w.now;
            w.put_inode(ino.0, &rec)?;
            to_attr(ino.0, &rec)
        })
    }

    /// Removes extended attribute `name` of `ino`; ctime becomes now.
    /// Returns the new attributes.
    ///
    /// Errors: `NotFound`, `NoAttr`, `Invalid` (empty name), `TooBig`,
    /// `NotInitialized`.
    pub fn removexattr(&self, ino: InodeId, name: &[u8]) -> Result<Attr, Error> {
        self.vol()?;
        check_xattr_name(name)?;
        self.write(|w| {
            let mut rec = w.inode(ino.0)?;
            if w.xattrs.remove((ino.0, name))?.is_none() {
                return Err(DirError::NoAttr.into());
            }
            rec.ctime = w.now;
            w.put_inode(ino.0, &rec)?;
            to_attr(ino.0, &rec)
        })
    }

    /// The orphans (inodes at nlink 0 kept because they were open), in
    /// inode order.
    pub fn orphans(&self) -> Result<Vec<InodeId>, Error> {
        let txn = self.db.begin_read()?;
        let orphans = txn.open_table(ORPHANS)?;
        orphans.iter()?.map(|row| Ok(InodeId(row?.0.value()))).collect()
    }

    /// Frees each of `inos` that is an orphan and not `keep(ino)`, as
    /// unlink would have (chunks lose their references, extended
    /// attributes go). One read transaction to filter, then one write
    /// transaction if anything is to be freed. Returns the inodes freed.
    pub fn free_orphans(&self, inos: &[InodeId], keep: Keep<'_>) -> Result<Vec<InodeId>, Error> {
        self.end_sessions(&[], inos, keep)
    }

    /// Ends sessions `ids` (removes their `sessions-v1` rows) and frees the
    /// orphans among `inos` that are not `keep(ino)`, in one write
    /// transaction (none if there is nothing to do). Returns the inodes
    /// freed.
    pub fn end_sessions(
        &self,
        ids: &[SessionId],
        inos: &[InodeId],
        keep: Keep<'_>,
    ) -> Result<Vec<InodeId>, Error> {
        let candidates: Vec<InodeId> = {
            let txn = self.db.begin_read()?;
            let orphans = txn.open_table(ORPHANS)?;
            let mut out = Vec::new();
            for ino in inos {
                if orphans.get(ino.0)?.is_some() && !keep(*ino) {
                    out.push(*ino);
                }
            }
            out
        };
        if candidates.is_empty() && ids.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|w| {
            for id in ids {
                w.sessions.remove(id.0)?;
            }
            let mut freed = Vec::new();
            for ino in candidates {
                // Re-check inside the transaction: still an orphan.
                if w.orphans.get(ino.0)?.is_none() || keep(ino) {
                    continue;
                }
                let rec = match w.inode(ino.0) {
                    Ok(rec) => rec,
                    Err(Error::Dir(DirError::NotFound)) => {
                        warn!(%ino, "orphan row of an inode that does not exist; dropped");
                        w.orphans.remove(ino.0)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                w.free_inode(ino.0, &rec)?;
                freed.push(ino);
            }
            Ok(freed)
        })
    }

    /// Records session `id` as alive (inserts or replaces its row).
    pub fn put_session(&self, id: SessionId, rec: &SessionRecord) -> Result<(), Error> {
        let bytes = rec.to_bytes()?;
        self.write(|w| {
            w.sessions.insert(id.0, bytes.as_slice())?;
            Ok(())
        })
    }

    /// The sessions recorded as alive, in id order: after a start, the
    /// clients that may come back to reclaim.
    pub fn sessions(&self) -> Result<Vec<(SessionId, SessionRecord)>, Error> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SESSIONS)?;
        t.iter()?
            .map(|row| {
                let (k, v) = row?;
                Ok((SessionId(k.value()), SessionRecord::from_bytes(v.value())?))
            })
            .collect()
    }

    /// Stores (inserts or replaces) peer `id`'s record.
    pub fn put_peer(&self, id: PeerId, rec: &PeerRecord) -> Result<(), Error> {
        let bytes = rec.to_bytes()?;
        self.write(|w| {
            w.peers.insert(id.0, bytes.as_slice())?;
            Ok(())
        })
    }

    /// Every registered peer with its stored record, in id order.
    pub fn peers(&self) -> Result<Vec<(PeerId, PeerRecord)>, Error> {
        let txn = self.db.begin_read()?;
        let peers = txn.open_table(PEERS)?;
        peers
            .iter()?
            .map(|row| {
                let (k, v) = row?;
                Ok((PeerId(k.value()), PeerRecord::from_bytes(v.value())?))
            })
            .collect()
    }

    /// Registers peer `id` (or re-registers it with a new address, usage
    /// and labels), heartbeat `now`. A drain flag already stored is kept.
    /// Returns the stored record.
    pub fn register_peer(
        &self,
        id: PeerId,
        addr: &str,
        usage: PeerUsage,
        labels: &PeerLabels,
        now: Timestamp,
    ) -> Result<PeerRecord, Error> {
        self.write(|w| {
            let mut rec = PeerRecord::new(addr.to_string(), usage, now, labels.clone());
            rec.draining = w.peer_rec(id)?.is_some_and(|old| old.draining);
            w.peers.insert(id.0, rec.to_bytes()?.as_slice())?;
            Ok(rec)
        })
    }

    /// Stores a heartbeat of peer `id`: its usage and time, leaving the
    /// other fields (address, labels, drain flag) as stored. A peer that is
    /// not stored is left alone. Returns whether it was stored.
    pub fn heartbeat_peer(&self, id: PeerId, usage: PeerUsage, at: Timestamp) -> Result<bool, Error> {
        self.write(|w| {
            let Some(mut rec) = w.peer_rec(id)? else { return Ok(false) };
            rec.usage = usage;
            rec.last_heartbeat = at;
            w.peers.insert(id.0, rec.to_bytes()?.as_slice())?;
            Ok(true)
        })
    }

    /// Marks peer `id` as draining (idempotent) and returns its record.
    ///
    /// Errors: `NotFound` for a peer that never registered.
    pub fn set_draining(&self, id: PeerId) -> Result<PeerRecord, Error> {
        self.write(|w| {
            let mut rec = w.peer_rec(id)?.ok_or(DirError::NotFound)?;
            if !rec.draining {
                rec.draining = true;
                w.peers.insert(id.0, rec.to_bytes()?.as_slice())?;
            }
            Ok(rec)
        })
    }

    /// Clears peer `id`'s drain flag (`undrain_peer`); a no-op for a peer
    /// that is not draining. Returns the record.
    ///
    /// Errors: `NotFound` for an unknown peer; storage errors.
    pub fn clear_draining(&self, id: PeerId) -> Result<PeerRecord, Error> {
        self.write(|w| {
            let mut rec = w.peer_rec(id)?.ok_or(DirError::NotFound)?;
            if rec.draining {
                rec.draining = false;
                w.peers.insert(id.0, rec.to_bytes()?.as_slice())?;
            }
            Ok(rec)
        })
    }

    /// Removes `peer` from the replica list of each of `ids` (a corruption
    /// report) in one transaction; unknown chunks are skipped. Returns how
    /// many replicas were removed.
    pub fn drop_replicas(&self, peer: PeerId, ids: &[ChunkId]) -> Result<u64, Error> {
        self.write(|w| {
            let mut removed = 0u64;
            for id in ids {
                let Some(mut rec) = w.chunk_rec(id.0)? else { continue };
                let before = rec.replicas.len();
                rec.replicas.retain(|p| *p != peer);
                if rec.replicas.len() != before {
                    removed += 1;
                    w.put_chunk(id.0, &rec)?;
                }
            }
            Ok(removed)
        })
    }

    /// Adds `peer` to chunk `id`'s replicas (a repair copy landed). Returns
    /// false, changing nothing, if the chunk is no longer indexed (garbage
    /// collection took it meanwhile; the copy is then an orphan).
    pub fn add_replica(&self, id: ChunkId, peer: PeerId) -> Result<bool, Error> {
        self.write(|w| {
            let Some(mut rec) = w.chunk_rec(id.0)? else { return Ok(false) };
            if !rec.replicas.contains(&peer) {
                rec.replicas.push(peer);
                w.put_chunk(id.0, &rec)?;
            }
            Ok(true)
        })
    }

    /// Calls `f` for every chunk of the index, in id order, inside one read
    /// transaction (a consistent snapshot; writers are not blocked). Cost:
    /// one B-tree walk plus one record decode per chunk.
    pub fn for_each_chunk(&self, mut f: impl FnMut(ChunkId, ChunkRecord)) -> Result<(), Error> {
        let txn = self.db.begin_read()?;
        let chunks = txn.open_table(CHUNKS)?;
        for row in chunks.iter()? {
            let (k, v) = row?;
            f(ChunkId(k.value()), ChunkRecord::from_bytes(v.value())?);
        }
        Ok(())
    }

    /// A counter that changes after every committed transaction that
    /// changed the chunk index (commits, truncations, unlinks, repairs,
    /// corruption reports, collection). Equal values mean the index is
    /// unchanged, so a survey of it would find the same thing. Not
    /// persisted: it restarts at 0 with the process.
    pub fn chunk_generation(&self) -> u64 {
        self.chunk_gen.load(Ordering::Acquire)
    }

    /// Garbage collection of unreferenced chunks: up to `max` chunks that
    /// became unreferenced at or before Unix second `cutoff_secs` leave the
    /// index. One transaction (per [`GC_BATCH`]) re-checks each (still
    /// refcount 0, still unreferenced since then), removes its chunk record
    /// and unreferenced row, and writes its tombstone with every recorded
    /// replica pending deletion. Returns the collected chunks with those
    /// replicas; the caller then deletes the copies on the peers.
    pub fn collect_unreferenced(
        &self,
        cutoff_secs: i64,
        max: usize,
    ) -> Result<Vec<(ChunkId, Vec<PeerId>)>, Error> {
        let candidates: Vec<[u8; 32]> = {
            let txn = self.db.begin_read()?;
            let unref = txn.open_table(CHUNKS_UNREFERENCED)?;
            let mut out = Vec::new();
            for row in unref.iter()? {
                let (k, v) = row?;
                if v.value() <= cutoff_secs {
                    out.push(k.value());
                    if out.len() >= max {
                        break;
                    }
                }
            }
            out
        };
        let mut collected = Vec::new();
        for batch in candidates.chunks(GC_BATCH) {
            let done = self.write(|w| {
                let mut out = Vec::new();
                for &id in batch {
                    let Some(since) = w.unref.get(id)?.map(|g| g.value()) else { continue };
                    if since > cutoff_secs {
                        continue;
                    }
                    let Some(rec) = w.chunk_rec(id)? else {
                        warn!(chunk = %ChunkId(id), "unreferenced row of a chunk the index does not know");
                        w.unref.remove(id)?;
                        continue;
                    };
                    if rec.refcount != 0 {
                        warn!(chunk = %ChunkId(id), refcount = rec.refcount, "referenced chunk listed as unreferenced");
                        continue;
                    }
                    w.remove_chunk(id)?;
                    w.unref.remove(id)?;
                    w.add_tombstone(id, &rec.replicas)?;
                    out.push((ChunkId(id), rec.replicas));
                }
                Ok(out)
            })?;
            collected.extend(done);
        }
        Ok(collected)
    }

    /// For each of `ids`, whether the chunk index lacks it (one read
    /// transaction).
    pub fn missing_from_index(&self, ids: &[ChunkId]) -> Result<Vec<bool>, Error> {
        let txn = self.db.begin_read()?;
        let chunks = txn.open_table(CHUNKS)?;
        ids.iter().map(|id| Ok(chunks.get(id.0)?.is_none())).collect()
    }

    /// Garbage collection of orphans found on `peer` (copies of chunks no
    /// commit references): in one transaction, each of `ids` that is still
    /// not in the chunk index gets a tombstone with `peer` pending deletion.
    /// Returns the ids tombstoned; the others were committed meanwhile and
    /// are left alone.
    pub fn tombstone_orphans(&self, peer: PeerId, ids: &[ChunkId]) -> Result<Vec<ChunkId>, Error> {
        self.write(|w| {
            let mut out = Vec::new();
            for id in ids {
                if w.chunks.get(id.0)?.is_some() {
                    continue;
                }
                w.add_tombstone(id.0, &[peer])?;
                out.push(*id);
            }
            Ok(out)
        })
    }

    /// Up to `max` tombstones with deletions still pending, with id greater
    /// than `after` (all if `None`), in id order: the durable delete queue.
    pub fn pending_deletes(
        &self,
        after: Option<ChunkId>,
        max: usize,
    ) -> Result<Vec<(ChunkId, TombstoneRecord)>, Error> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(TOMBSTONES)?;
        let lower = match after {
            Some(a) => Bound::Excluded(a.0),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for row in t.range::<[u8; 32]>((lower, Bound::Unbounded))? {
            let (k, v) = row?;
            let rec = TombstoneRecord::from_bytes(v.value())?;
            if !rec.pending.is_empty() {
                out.push((ChunkId(k.value()), rec));
                if out.len() >= max {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Removes each `(chunk, peer)` from the chunk's pending deletes (the
    /// peer acknowledged the delete, or will never be asked), in one
    /// transaction. Tombstones themselves stay until
    /// [`Store::expire_tombstones`].
    pub fn ack_deletes(&self, acks: &[(ChunkId, PeerId)]) -> Result<(), Error> {
        if acks.is_empty() {
            return Ok(());
        }
        let mut by_chunk: BTreeMap<[u8; 32], Vec<PeerId>> = BTreeMap::new();
        for (c, p) in acks {
            by_chunk.entry(c.0).or_default().push(*p);
        }
        self.write(|w| {
            for (id, peers) in &by_chunk {
                let Some(mut rec) = w.tombstone(*id)? else { continue };
                rec.pending.retain(|p| !peers.contains(p));
                w.tombstones.insert(*id, rec.to_bytes()?.as_slice())?;
            }
            Ok(())
        })
    }

    /// Removes the tombstones with no pending deletes whose chunk left the
    /// index at or before Unix second `cutoff_secs`. Returns how many.
    pub fn expire_tombstones(&self, cutoff_secs: i64) -> Result<u64, Error> {
        let expired: Vec<[u8; 32]> = {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(TOMBSTONES)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                let rec = TombstoneRecord::from_bytes(v.value())?;
                if rec.pending.is_empty() && rec.deleted_at <= cutoff_secs {
                    out.push(k.value());
                }
            }
            out
        };
        let mut removed = 0u64;
        for batch in expired.chunks(GC_BATCH) {
            removed += self.write(|w| {
                let mut n = 0u64;
                for &id in batch {
                    // Re-check: a later orphan find may have refreshed it.
                    let Some(rec) = w.tombstone(id)? else { continue };
                    if rec.pending.is_empty() && rec.deleted_at <= cutoff_secs {
                        w.tombstones.remove(id)?;
                        n += 1;
                    }
                }
                Ok(n)
            })?;
        }
        Ok(removed)
    }

    /// The tombstone of chunk `id`, if garbage collection deleted it and the
    /// tombstone has not expired.
    pub fn tombstone(&self, id: &ChunkId) -> Result<Option<TombstoneRecord>, Error> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(TOMBSTONES)?;
        match t.get(id.0)? {
            Some(g) => Ok(Some(TombstoneRecord::from_bytes(g.value())?)),
            None => Ok(None),
        }
    }

    /// Number of tombstones (O(1)).
    pub fn tombstone_count(&self) -> Result<u64, Error> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(TOMBSTONES)?.len()?)
    }

    /// Number of chunks at reference count 0 waiting for collection (O(1)).
    pub fn unreferenced_count(&self) -> Result<u64, Error> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(CHUNKS_UNREFERENCED)?.len()?)
    }
}

/// What a malicious or broken directory service could do to its own
/// database, for tests of the clients' checks (feature `tamper`, never in
/// a release build of dirsvc). Each is one transaction; none keeps the
/// invariants of [`tables`] beyond what the test needs.
#[cfg(feature = "tamper")]
impl Store {
    /// Swaps the two layout rows (chunk, length, epoch, MAC) of `(ino,
    /// block index)` `a` and `b`, as a dirsvc moving chunks between files
    /// or blocks would. Errors: `NotFound` if either row is missing.
    pub fn tamper_swap_layout_rows(&self, a: (InodeId, u64), b: (InodeId, u64)) -> Result<(), Error> {
        self.write(|w| {
            let ra = w.layouts.get((a.0 .0, a.1))?.map(|g| g.value()).ok_or(DirError::NotFound)?;
            let rb = w.layouts.get((b.0 .0, b.1))?.map(|g| g.value()).ok_or(DirError::NotFound)?;
            w.layouts.insert((a.0 .0, a.1), rb)?;
            w.layouts.insert((b.0 .0, b.1), ra)?;
            Ok(())
        })
    }

    /// Sets the MAC of layout row `(ino, index)` to zero (an entry without
    /// a MAC). Errors: `NotFound`.
    pub fn tamper_clear_mac(&self, ino: InodeId, index: u64) -> Result<(), Error> {
        self.write(|w| {
            let (id, len, epoch, _) =
                w.layouts.get((ino.0, index))?.map(|g| g.value()).ok_or(DirError::NotFound)?;
            w.layouts.insert((ino.0, index), (id, len, epoch, [0; 32]))?;
            Ok(())
        })
    }

    /// Swaps the sealed targets of symlinks `a` and `b`. Errors: `NotFound`.
    pub fn tamper_swap_symlink_targets(&self, a: InodeId, b: InodeId) -> Result<(), Error> {
        self.write(|w| {
            let ta = w.symlinks.get(a.0)?.map(|g| g.value().to_vec()).ok_or(DirError::NotFound)?;
            let tb = w.symlinks.get(b.0)?.map(|g| g.value().to_vec()).ok_or(DirError::NotFound)?;
            w.symlinks.insert(a.0, tb.as_slice())?;
            w.symlinks.insert(b.0, ta.as_slice())?;
            Ok(())
        })
    }

    /// Swaps the sealed values of extended attributes `(ino, sealed name)`
    /// `a` and `b`. Errors: `NoAttr`.
    pub fn tamper_swap_xattr_values(&self, a: (InodeId, &[u8]), b: (InodeId, &[u8])) -> Result<(), Error> {
        self.write(|w| {
            let va = w.xattrs.get((a.0 .0, a.1))?.map(|g| g.value().to_vec()).ok_or(DirError::NoAttr)?;
            let vb = w.xattrs.get((b.0 .0, b.1))?.map(|g| g.value().to_vec()).ok_or(DirError::NoAttr)?;
            w.xattrs.insert((a.0 .0, a.1), vb.as_slice())?;
            w.xattrs.insert((b.0 .0, b.1), va.as_slice())?;
            Ok(())
        })
    }

    /// Sets the volume's `legacy_layouts` flag. Errors: `NotInitialized`.
    pub fn tamper_set_legacy(&self, legacy: bool) -> Result<(), Error> {
        let rec = self.write(|w| {
            let mut rec = w.volume_rec()?;
            rec.legacy_layouts = legacy;
            w.put_volume(&rec)?;
            Ok(rec)
        })?;
        self.set_volume(rec);
        Ok(())
    }

    /// Replaces the keyring as stored (a dirsvc substituting or rolling
    /// back epochs). Errors: `NotInitialized`.
    pub fn tamper_set_keyring(&self, keyring: &Keyring) -> Result<(), Error> {
        let rec = self.write(|w| {
            let mut rec = w.volume_rec()?;
            rec.keyring = KeyringRecord::from_wire(keyring);
            w.put_volume(&rec)?;
            Ok(rec)
        })?;
        self.set_volume(rec);
        Ok(())
    }
}

/// The tables of one write transaction, with the transaction's notion of
/// "now" (one timestamp for every time a call sets).
struct W<'t> {
    inodes: Table<'t, u64, &'static [u8]>,
    dirents: Table<'t, (u64, &'static [u8]), (u64, u64, u8)>,
    cookies: Table<'t, (u64, u64), &'static [u8]>,
    layouts: Table<'t, (u64, u64), LayoutRow>,
    chunks: Table<'t, [u8; 32], &'static [u8]>,
    unref: Table<'t, [u8; 32], i64>,
    symlinks: Table<'t, u64, &'static [u8]>,
    peers: Table<'t, [u8; 16], &'static [u8]>,
    tombstones: Table<'t, [u8; 32], &'static [u8]>,
    orphans: Table<'t, u64, i64>,
    xattrs: Table<'t, (u64, &'static [u8]), &'static [u8]>,
    sessions: Table<'t, u64, &'static [u8]>,
    meta: Table<'t, &'static str, &'static [u8]>,
    now: Timestamp,
    /// Whether `chunks` was written (bumps the store's chunk generation).
    chunks_touched: bool,
}

impl<'t> W<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<W<'t>, Error> {
        Ok(W {
            inodes: txn.open_table(INODES)?,
            dirents: txn.open_table(DIRENTS)?,
            cookies: txn.open_table(DIRCOOKIES)?,
            layouts: txn.open_table(LAYOUTS)?,
            chunks: txn.open_table(CHUNKS)?,
            unref: txn.open_table(CHUNKS_UNREFERENCED)?,
            symlinks: txn.open_table(SYMLINKS)?,
            peers: txn.open_table(PEERS)?,
            tombstones: txn.open_table(TOMBSTONES)?,
            orphans: txn.open_table(ORPHANS)?,
            xattrs: txn.open_table(XATTRS)?,
            sessions: txn.open_table(SESSIONS)?,
            meta: txn.open_table(META)?,
            now: Timestamp::now(),
            chunks_touched: false,
        })
    }

    fn chunk_rec(&self, id: [u8; 32]) -> Result<Option<ChunkRecord>, Error> {
        match self.chunks.get(id)? {
            Some(g) => Ok(Some(ChunkRecord::from_bytes(g.value())?)),
            None => Ok(None),
        }
    }

    fn put_chunk(&mut self, id: [u8; 32], rec: &ChunkRecord) -> Result<(), Error> {
        self.chunks.insert(id, rec.to_bytes()?.as_slice())?;
        self.chunks_touched = true;
        Ok(())
    }

    fn remove_chunk(&mut self, id: [u8; 32]) -> Result<(), Error> {
        self.chunks.remove(id)?;
        self.chunks_touched = true;
        Ok(())
    }

    fn peer_rec(&self, id: PeerId) -> Result<Option<PeerRecord>, Error> {
        match self.peers.get(id.0)? {
            Some(g) => Ok(Some(PeerRecord::from_bytes(g.value())?)),
            None => Ok(None),
        }
    }

    fn tombstone(&self, id: [u8; 32]) -> Result<Option<TombstoneRecord>, Error> {
        match self.tombstones.get(id)? {
            Some(g) => Ok(Some(TombstoneRecord::from_bytes(g.value())?)),
            None => Ok(None),
        }
    }

    /// Writes (or refreshes) the tombstone of `id` with `peers` added to
    /// its pending deletes; `deleted_at` becomes now, so a chunk found again
    /// is protected for a full period from now.
    fn add_tombstone(&mut self, id: [u8; 32], peers: &[PeerId]) -> Result<(), Error> {
        let mut rec = self.tombstone(id)?.unwrap_or(TombstoneRecord { deleted_at: 0, pending: Vec::new() });
        rec.deleted_at = rec.deleted_at.max(self.now.secs);
        for p in peers {
            if !rec.pending.contains(p) {
                rec.pending.push(*p);
            }
        }
        self.tombstones.insert(id, rec.to_bytes()?.as_slice())?;
        Ok(())
    }

    fn inode(&self, ino: u64) -> Result<InodeRecord, Error> {
        get_inode(&self.inodes, ino)
    }

    /// Number of `ino`'s extended attributes, and the total bytes of their
    /// sealed names and values.
    fn xattr_usage(&self, ino: u64) -> Result<(usize, usize), Error> {
        let empty: &[u8] = &[];
        let (mut count, mut total) = (0usize, 0usize);
        for row in self.xattrs.range((ino, empty)..(ino.saturating_add(1), empty))? {
            let (k, v) = row?;
            count += 1;
            total = total.saturating_add(k.value().1.len()).saturating_add(v.value().len());
        }
        Ok((count, total))
    }

    fn dir(&self, ino: u64) -> Result<InodeRecord, Error> {
        get_dir(&self.inodes, ino)
    }

    fn put_inode(&mut self, ino: u64, rec: &InodeRecord) -> Result<(), Error> {
        self.inodes.insert(ino, rec.to_bytes()?.as_slice())?;
        Ok(())
    }

    fn entry(&self, parent: u64, name: &[u8]) -> Result<Option<Dirent>, Error> {
        get_entry(&self.dirents, parent, name)
    }

    /// The volume record. Errors: `NotInitialized`, `Corrupt`.
    fn volume_rec(&self) -> Result<VolumeRecord, Error> {
        match self.meta.get(META_VOLUME)? {
            Some(g) => VolumeRecord::from_bytes(g.value()),
            None => Err(DirError::NotInitialized.into()),
        }
    }

    /// Writes the volume record and the newest key epoch beside it.
    fn put_volume(&mut self, rec: &VolumeRecord) -> Result<(), Error> {
        self.meta.insert(META_VOLUME, rec.to_bytes()?.as_slice())?;
        self.meta.insert(META_KEY_EPOCH, &rec.keyring.newest_epoch().to_le_bytes()[..])?;
        Ok(())
    }

    /// The newest key epoch (`key_epoch`).
    fn key_epoch(&self) -> Result<u32, Error> {
        match self.meta.get(META_KEY_EPOCH)? {
            Some(g) => decode_u32(g.value()),
            None => Err(Error::Corrupt { what: "meta", reason: "key_epoch missing".into() }),
        }
    }

    /// Hands out the next value of a `meta-v1` counter.
    fn next(&mut self, key: &'static str) -> Result<u64, Error> {
        let current = match self.meta.get(key)? {
            Some(g) => decode_u64(g.value())?,
            None => return Err(Error::Corrupt { what: "meta", reason: format!("counter {key} missing") }),
        };
        let next = current
            .checked_add(1)
            .ok_or_else(|| Error::Corrupt { what: "meta", reason: format!("counter {key} exhausted") })?;
        self.meta.insert(key, &next.to_le_bytes()[..])?;
        Ok(current)
    }

    /// Adds entry `(parent, name)` with a fresh cookie.
    fn add_entry(&mut self, parent: u64, name: &[u8], ino: u64, kind: u8) -> Result<(), Error> {
        let cookie = self.next(META_NEXT_COOKIE)?;
        self.dirents.insert((parent, name), (ino, cookie, kind))?;
        self.cookies.insert((parent, cookie), name)?;
        Ok(())
    }

    fn remove_entry(&mut self, parent: u64, name: &[u8], cookie: u64) -> Result<(), Error> {
        self.dirents.remove((parent, name))?;
        self.cookies.remove((parent, cookie))?;
        Ok(())
    }

    fn dir_is_empty(&self, dir: u64) -> Result<bool, Error> {
        match self.cookies.range((dir, 0)..=(dir, u64::MAX))?.next() {
            None => Ok(true),
            Some(row) => {
                row?;
                Ok(false)
            }
        }
    }

    /// Sets directory `dir`'s mtime and ctime to now and adds `delta` to its
    /// nlink.
    fn touch_dir(&mut self, dir: u64, delta: i32) -> Result<(), Error> {
        let mut rec = self.inode(dir)?;
        rec.nlink = rec.nlink.checked_add_signed(delta).ok_or_else(|| invalid("too many links"))?;
        rec.mtime = self.now;
        rec.ctime = self.now;
        self.put_inode(dir, &rec)
    }

    /// Makes a new inode from `rec` and its entry `name` in directory
    /// `parent`; a new directory adds a link to the parent.
    fn make_entry(&mut self, parent: u64, name: &[u8], rec: InodeRecord) -> Result<Attr, Error> {
        self.make_entry_at(parent, name, rec, None)
    }

    /// [`W::make_entry`] with inode number `at` (checked by the caller), or
    /// the next number of the counter.
    fn make_entry_at(
        &mut self,
        parent: u64,
        name: &[u8],
        rec: InodeRecord,
        at: Option<u64>,
    ) -> Result<Attr, Error> {
        self.dir(parent)?;
        if self.entry(parent, name)?.is_some() {
            return Err(DirError::Exists.into());
        }
        let ino = match at {
            Some(ino) => ino,
            None => self.next(META_NEXT_INODE)?,
        };
        self.put_inode(ino, &rec)?;
        self.add_entry(parent, name, ino, rec.kind)?;
        self.touch_dir(parent, if rec.kind == KIND_DIR { 1 } else { 0 })?;
        to_attr(ino, &rec)
    }

    /// Removes one link of non-directory `ino`. At nlink 0 it is freed,
    /// unless `keep(ino)` says it is held open: then it becomes an orphan
    /// (nlink 0, listed in `orphans-v1`, everything else kept). Returns
    /// whether it became an orphan.
    fn drop_link(&mut self, ino: u64, keep: Keep<'_>) -> Result<bool, Error> {
        let mut rec = self.inode(ino)?;
        rec.nlink = rec.nlink.saturating_sub(1);
        if rec.nlink == 0 && !keep(InodeId(ino)) {
            self.free_inode(ino, &rec)?;
            return Ok(false);
        }
        rec.ctime = self.now;
        self.put_inode(ino, &rec)?;
        if rec.nlink == 0 {
            self.orphans.insert(ino, self.now.secs)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Deletes inode `ino` and everything hanging off it: layout rows (each
    /// chunk loses a reference), symlink target, extended attributes and
    /// orphan row.
    fn free_inode(&mut self, ino: u64, rec: &InodeRecord) -> Result<(), Error> {
        self.inodes.remove(ino)?;
        match rec.kind {
            KIND_FILE => {
                self.drop_blocks_from(ino, 0)?;
            }
            KIND_SYMLINK => {
                self.symlinks.remove(ino)?;
            }
            _ => {}
        }
        let empty: &[u8] = &[];
        self.xattrs.retain_in((ino, empty)..(ino.saturating_add(1), empty), |_, _| false)?;
        self.orphans.remove(ino)?;
        Ok(())
    }

    /// Removes the layout rows of `ino` with index ≥ `from`, dropping a
    /// reference to each chunk. Returns the stored bytes removed.
    fn drop_blocks_from(&mut self, ino: u64, from: u64) -> Result<u64, Error> {
        let mut freed = 0u64;
        loop {
            let batch: Vec<(u64, [u8; 32], u32)> = self
                .layouts
                .range((ino, from)..=(ino, u64::MAX))?
                .take(DROP_BATCH)
                .map(|row| {
                    let (k, v) = row?;
                    let (id, len, _, _) = v.value();
                    Ok((k.value().1, id, len))
                })
                .collect::<Result<_, Error>>()?;
            if batch.is_empty() {
                return Ok(freed);
            }
            for (index, id, len) in batch {
                self.layouts.remove((ino, index))?;
                self.chunk_unref(id)?;
                freed = freed.saturating_add(u64::from(len));
            }
        }
    }

    /// Records one more reference (`add_ref`) to chunk `c` or only its
    /// replicas, creating the chunk record if needed.
    fn chunk_ref(&mut self, c: &StoredChunk, add_ref: bool) -> Result<(), Error> {
        let mut rec = match self.chunk_rec(c.id.0)? {
            Some(rec) => {
                if rec.len != c.len {
                    return Err(invalid(format!(
                        "chunk {} is recorded with stored length {}, not {}",
                        c.id, rec.len, c.len
                    )));
                }
                rec
            }
            None => ChunkRecord { replicas: Vec::new(), refcount: 0, len: c.len },
        };
        for p in &c.replicas {
            if !rec.replicas.contains(p) {
                rec.replicas.push(*p);
            }
        }
        if add_ref {
            if rec.refcount == 0 {
                self.unref.remove(c.id.0)?;
            }
            rec.refcount = rec.refcount.saturating_add(1);
        }
        self.put_chunk(c.id.0, &rec)
    }

    /// Drops one reference to chunk `id`; at 0 the chunk is listed in
    /// `chunks-unreferenced-v1` with the current time.
    fn chunk_unref(&mut self, id: [u8; 32]) -> Result<(), Error> {
        let Some(mut rec) = self.chunk_rec(id)? else {
            warn!(chunk = %ChunkId(id), "a layout row named a chunk the index does not know");
            return Ok(());
        };
        if rec.refcount == 0 {
            warn!(chunk = %ChunkId(id), "chunk refcount would go below zero");
            return Ok(());
        }
        rec.refcount -= 1;
        if rec.refcount == 0 {
            self.unref.insert(id, self.now.secs)?;
        }
        self.put_chunk(id, &rec)
    }

    /// Whether directory `anc` is `dir` or one of its ancestors.
    fn is_ancestor_or_self(&self, anc: u64, dir: u64) -> Result<bool, Error> {
        let mut cur = dir;
        for _ in 0..MAX_DEPTH {
            if cur == anc {
                return Ok(true);
            }
            if cur == InodeId::ROOT.0 {
                return Ok(false);
            }
            cur = self.inode(cur)?.parent;
        }
        Err(Error::Corrupt {
            what: "inode",
            reason: format!("the parent chain of directory {dir} does not reach the root"),
        })
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
        keep: Keep<'_>,
    ) -> Result<Renamed, Error> {
        self.dir(parent)?;
        self.dir(new_parent)?;
        let src = self.entry(parent, name)?.ok_or(DirError::NotFound)?;
        let dst = self.entry(new_parent, new_name)?;
        if flags & rename_flags::NOREPLACE != 0 && dst.is_some() {
            return Err(DirError::Exists.into());
        }
        if flags & rename_flags::EXCHANGE != 0 && dst.is_none() {
            return Err(DirError::NotFound.into());
        }
        if dst.is_some_and(|d| d.ino == src.ino) {
            // Two names of one inode (or the same name): POSIX says do
            // nothing.
            return Ok(Renamed { moved: InodeId(src.ino), replaced: None, orphaned: false });
        }
        if src.ino == InodeId::ROOT.0 || dst.is_some_and(|d| d.ino == InodeId::ROOT.0) {
            return Err(invalid("cannot rename the root directory"));
        }
        let src_dir = src.kind == KIND_DIR;
        if src_dir && self.is_ancestor_or_self(src.ino, new_parent)? {
            return Err(invalid("cannot move a directory into its own subtree"));
        }
        if flags & rename_flags::EXCHANGE != 0 {
            let Some(dst) = dst else {
                return Err(DirError::NotFound.into());
            };
            self.exchange(parent, name, src, new_parent, new_name, dst)?;
            return Ok(Renamed {
                moved: InodeId(src.ino),
                replaced: Some(InodeId(dst.ino)),
                orphaned: false,
            });
        }
        let mut orphaned = false;
        if let Some(d) = dst {
            let dst_dir = d.kind == KIND_DIR;
            if dst_dir && self.is_ancestor_or_self(d.ino, parent)? {
                // The target contains the source, so it is not empty.
                return Err(DirError::NotEmpty.into());
            }
            match (src_dir, dst_dir) {
                (true, false) => return Err(DirError::NotDir.into()),
                (false, true) => return Err(DirError::IsDir.into()),
                (true, true) if !self.dir_is_empty(d.ino)? => return Err(DirError::NotEmpty.into()),
                _ => {}
            }
            self.remove_entry(new_parent, new_name, d.cookie)?;
            if dst_dir {
                let rec = self.inode(d.ino)?;
                self.free_inode(d.ino, &rec)?;
                self.touch_dir(new_parent, -1)?;
            } else {
                orphaned = self.drop_link(d.ino, keep)?;
            }
        }
        self.remove_entry(parent, name, src.cookie)?;
        self.add_entry(new_parent, new_name, src.ino, src.kind)?;
        let mut rec = self.inode(src.ino)?;
        if src_dir && parent != new_parent {
            rec.parent = new_parent;
            self.touch_dir(parent, -1)?;
            self.touch_dir(new_parent, 1)?;
        }
        rec.ctime = self.now;
        self.put_inode(src.ino, &rec)?;
        self.touch_dir(parent, 0)?;
        self.touch_dir(new_parent, 0)?;
        Ok(Renamed { moved: InodeId(src.ino), replaced: dst.map(|d| InodeId(d.ino)), orphaned })
    }

    /// `RENAME_EXCHANGE`: the two names swap the inodes they name.
    fn exchange(
        &mut self,
        parent: u64,
        name: &[u8],
        src: Dirent,
        new_parent: u64,
        new_name: &[u8],
        dst: Dirent,
    ) -> Result<(), Error> {
        if dst.kind == KIND_DIR && self.is_ancestor_or_self(dst.ino, parent)? {
            return Err(invalid("cannot move a directory into its own subtree"));
        }
        self.dirents.insert((parent, name), (dst.ino, src.cookie, dst.kind))?;
        self.dirents.insert((new_parent, new_name), (src.ino, dst.cookie, src.kind))?;
        for (ino, is_dir, from, to) in [
            (src.ino, src.kind == KIND_DIR, parent, new_parent),
            (dst.ino, dst.kind == KIND_DIR, new_parent, parent),
        ] {
            let mut rec = self.inode(ino)?;
            if is_dir && from != to {
                rec.parent = to;
                self.touch_dir(from, -1)?;
                self.touch_dir(to, 1)?;
            }
            rec.ctime = self.now;
            self.put_inode(ino, &rec)?;
        }
        self.touch_dir(parent, 0)?;
        self.touch_dir(new_parent, 0)
    }

    fn commit_layout(&mut self, ino: u64, commit: &CommitLayout, block_size: u32) -> Result<Attr, Error> {
        let mut rec = self.inode(ino)?;
        match rec.kind {
            KIND_FILE => {}
            KIND_DIR => return Err(DirError::IsDir.into()),
            _ => return Err(invalid("layouts belong to regular files only")),
        }
        let nblocks = blocks_for(commit.size, block_size);
        let newest = self.key_epoch()?;
        let mut seen = HashSet::new();
        for (index, block) in &commit.blocks {
            if !seen.insert(*index) {
                return Err(invalid(format!("block {index} listed twice")));
            }
            let Some(c) = block else { continue };
            if *index >= nblocks {
                return Err(invalid(format!(
                    "block {index} lies past the end of a {}-byte file",
                    commit.size
                )));
            }
            self.check_new_entry(c, block_size, newest)?;
        }
        let mut stored = rec.stored_bytes;
        for (index, block) in &commit.blocks {
            let old = self.layouts.get((ino, *index))?.map(|g| g.value());
            match (block, old) {
                (Some(c), Some((old_id, _, _, _))) if old_id == c.id.0 => {
                    // Same chunk again (a retried commit): only new
                    // replicas, and the entry as this commit describes it.
                    self.chunk_ref(c, false)?;
                    self.layouts.insert((ino, *index), (c.id.0, c.len, c.epoch, c.mac))?;
                }
                (Some(c), old) => {
                    self.chunk_ref(c, true)?;
                    self.layouts.insert((ino, *index), (c.id.0, c.len, c.epoch, c.mac))?;
                    if let Some((old_id, old_len, _, _)) = old {
                        self.chunk_unref(old_id)?;
                        stored = stored.saturating_sub(u64::from(old_len));
                    }
                    stored = stored.saturating_add(u64::from(c.len));
                }
                (None, Some((old_id, old_len, _, _))) => {
                    self.layouts.remove((ino, *index))?;
                    self.chunk_unref(old_id)?;
                    stored = stored.saturating_sub(u64::from(old_len));
                }
                (None, None) => {}
            }
        }
        stored = stored.saturating_sub(self.drop_blocks_from(ino, nblocks)?);
        rec.stored_bytes = stored;
        rec.size = commit.size;
        rec.mtime = commit.mtime;
        rec.ctime = self.now;
        self.put_inode(ino, &rec)?;
        to_attr(ino, &rec)
    }

    /// The checks every committed entry passes before anything changes:
    /// its length, a MAC, its epoch (no later than `newest`; a newly
    /// stored chunk exactly `newest`), its replicas, no tombstone.
    fn check_new_entry(&self, c: &StoredChunk, block_size: u32, newest: u32) -> Result<(), Error> {
        let max_len = u64::from(block_size) + u64::from(MAX_CHUNK_OVERHEAD);
        if c.len == 0 || u64::from(c.len) > max_len {
            return Err(invalid(format!(
                "chunk {} has stored length {} (allowed 1..={max_len})",
                c.id, c.len
            )));
        }
        if c.mac == [0; 32] {
            return Err(invalid(format!("the entry of chunk {} has no MAC", c.id)));
        }
        if c.epoch > newest {
            return Err(invalid(format!(
                "chunk {} names key epoch {}; the newest is {newest}",
                c.id, c.epoch
            )));
        }
        if c.replicas.is_empty() {
            // A reference to a chunk the index already holds (a shared
            // block, as copy_file_range makes) keeps its replica list and
            // its epoch; an unknown chunk with no replicas would be data
            // loss.
            let known = self.chunk_rec(c.id.0)?.is_some_and(|r| !r.replicas.is_empty());
            if !known {
                return Err(invalid(format!("chunk {} has no replicas", c.id)));
            }
        } else if c.epoch < newest {
            return Err(DirError::StaleEpoch { current: newest }.into());
        }
        if self.tombstones.get(c.id.0)?.is_some() {
            return Err(DirError::ChunkGone(c.id).into());
        }
        for p in &c.replicas {
            if self.peers.get(p.0)?.is_none() {
                return Err(invalid(format!("replica peer {p} is not registered")));
            }
        }
        Ok(())
    }

    fn reseal_blocks(&mut self, ino: u64, reseals: &[Reseal], block_size: u32) -> Result<Vec<bool>, Error> {
        let mut rec = self.inode(ino)?;
        match rec.kind {
            KIND_FILE => {}
            KIND_DIR => return Err(DirError::IsDir.into()),
            _ => return Err(invalid("layouts belong to regular files only")),
        }
        let newest = self.key_epoch()?;
        let mut seen = HashSet::new();
        for r in reseals {
            if !seen.insert(r.index) {
                return Err(invalid(format!("block {} listed twice", r.index)));
            }
            if r.new.replicas.is_empty() {
                return Err(invalid(format!("chunk {} has no replicas", r.new.id)));
            }
            if r.new.epoch != newest {
                return Err(DirError::StaleEpoch { current: newest }.into());
            }
            self.check_new_entry(&r.new, block_size, newest)?;
        }
        let mut stored = rec.stored_bytes;
        let mut applied = Vec::with_capacity(reseals.len());
        for r in reseals {
            let old = self.layouts.get((ino, r.index))?.map(|g| g.value());
            let Some((old_id, old_len, _, _)) = old.filter(|o| o.0 == r.old.0 && o.0 != r.new.id.0) else {
                applied.push(false);
                continue;
            };
            self.chunk_ref(&r.new, true)?;
            self.layouts.insert((ino, r.index), (r.new.id.0, r.new.len, r.new.epoch, r.new.mac))?;
            self.chunk_unref(old_id)?;
            stored = stored.saturating_sub(u64::from(old_len)).saturating_add(u64::from(r.new.len));
            applied.push(true);
        }
        if stored != rec.stored_bytes {
            rec.stored_bytes = stored;
            self.put_inode(ino, &rec)?;
        }
        Ok(applied)
    }
}

/// Copies every `layouts-v1` row into `layouts-v2` (key epoch 0, no MAC)
/// and deletes `layouts-v1`: the schema 4 → 5 migration of layouts, inside
/// the opening transaction. Returns the rows copied.
fn migrate_layouts(txn: &WriteTransaction) -> Result<u64, Error> {
    let mut copied = 0u64;
    {
        let old = txn.open_table(LAYOUTS_V1)?;
        let mut new = txn.open_table(LAYOUTS)?;
        for row in old.iter()? {
            let (k, v) = row?;
            let (id, len) = v.value();
            new.insert(k.value(), (id, len, 0u32, [0u8; 32]))?;
            copied += 1;
        }
    }
    txn.delete_table(LAYOUTS_V1)?;
    Ok(copied)
}

/// The checks of one key epoch's sizes (not its cryptography, which only
/// members can check).
fn check_epoch(e: &KeyEpoch) -> Result<(), Error> {
    if e.wrapped.is_empty() || e.wrapped.len() > WRAPPED_SECRET_MAX {
        return Err(invalid(format!("a wrapped secret must hold 1 to {WRAPPED_SECRET_MAX} bytes")));
    }
    Ok(())
}

/// Member names are 1 to [`MEMBER_NAME_MAX`] bytes of printable ASCII
/// without spaces, unique; recipients 1 to [`RECIPIENT_MAX`] bytes, unique;
/// at most [`MEMBER_NODES_MAX`] node ids and [`MEMBERS_MAX`] members.
fn check_members(members: &[Member]) -> Result<(), Error> {
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
fn kill_bits(perm: u32) -> u32 {
    let mut bits = perm & 0o4000;
    if perm & 0o2010 == 0o2010 {
        bits |= 0o2000;
    }
    bits
}

/// Number of blocks of size `block_size` that a `size`-byte file spans.
fn blocks_for(size: u64, block_size: u32) -> u64 {
    size.div_ceil(u64::from(block_size.max(1)))
}

/// A time a caller sends must be valid ([`Timestamp::validate`]): `Invalid`
/// naming the field otherwise.
fn check_time(what: &str, t: &Timestamp) -> Result<(), Error> {
    t.validate().map_err(|e| invalid(format!("{what}: {e}")))
}

/// An extended attribute name must be non-empty and at most
/// [`XATTR_SEALED_NAME_MAX`] bytes.
fn check_xattr_name(name: &[u8]) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid("empty attribute name"));
    }
    if name.len() > XATTR_SEALED_NAME_MAX {
        return Err(DirError::TooBig.into());
    }
    Ok(())
}

fn check_name(name: &[u8]) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid("empty name"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(DirError::NameTooLong.into());
    }
    Ok(())
}

fn new_record(
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

fn to_attr(ino: u64, r: &InodeRecord) -> Result<Attr, Error> {
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

fn volume_info(v: VolumeRecord) -> VolumeInfo {
    VolumeInfo {
        id: VolumeId(v.id),
        block_size: v.block_size,
        replicas: v.replicas,
        keyring: v.keyring.to_wire(),
        legacy_layouts: v.legacy_layouts,
    }
}

fn get_inode(t: &impl ReadableTable<u64, &'static [u8]>, ino: u64) -> Result<InodeRecord, Error> {
    match t.get(ino)? {
        Some(g) => InodeRecord::from_bytes(g.value()),
        None => Err(DirError::NotFound.into()),
    }
}

fn get_dir(t: &impl ReadableTable<u64, &'static [u8]>, ino: u64) -> Result<InodeRecord, Error> {
    let rec = get_inode(t, ino)?;
    if rec.kind != KIND_DIR {
        return Err(DirError::NotDir.into());
    }
    Ok(rec)
}

fn get_entry(
    t: &impl ReadableTable<(u64, &'static [u8]), (u64, u64, u8)>,
    parent: u64,
    name: &[u8],
) -> Result<Option<Dirent>, Error> {
    Ok(t.get((parent, name))?.map(|g| {
        let (ino, cookie, kind) = g.value();
        Dirent { ino, cookie, kind }
    }))
}

fn decode_u64(b: &[u8]) -> Result<u64, Error> {
    let arr: [u8; 8] = b
        .try_into()
        .map_err(|_| Error::Corrupt { what: "meta", reason: format!("counter of {} bytes", b.len()) })?;
    Ok(u64::from_le_bytes(arr))
}

fn decode_u32(b: &[u8]) -> Result<u32, Error> {
    let arr: [u8; 4] = b.try_into().map_err(|_| Error::Corrupt {
        what: "meta",
        reason: format!("schema version of {} bytes", b.len()),
    })?;
    Ok(u32::from_le_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::tables::PeerRecordV1;
    use super::*;

    /// Writes a database as schema 1 wrote it: schema version 1 and one
    /// version-1 peer record (no tombstone table).
    fn write_schema_1(path: &Path, schema: u32) -> PeerRecordV1 {
        let v1 = PeerRecordV1 {
            addr: "127.0.0.1:7701".into(),
            usage: tables::UsageV1 { capacity_bytes: 100, free_bytes: 60, used_bytes: 40, chunks: 4 },
            last_heartbeat: Timestamp { secs: 1_700_000_000, nanos: 0 },
        };
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_SCHEMA, &schema.to_le_bytes()[..]).unwrap();
            let mut peers = txn.open_table(PEERS).unwrap();
            peers.insert([7u8; 16], v1.to_bytes().unwrap().as_slice()).unwrap();
        }
        txn.commit().unwrap();
        v1
    }

    fn stored_schema(path: &Path) -> u32 {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        let v = meta.get(META_SCHEMA).unwrap().unwrap();
        decode_u32(v.value()).unwrap()
    }

    #[test]
    fn a_schema_1_database_is_migrated_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let v1 = write_schema_1(&path, 1);
        {
            let s = Store::open(&path).unwrap();
            let peers = s.peers().unwrap();
            let want = PeerRecord::new(v1.addr, v1.usage.into(), v1.last_heartbeat, PeerLabels::default());
            assert_eq!(peers, vec![(PeerId([7; 16]), want)]);
            assert_eq!(s.tombstone_count().unwrap(), 0, "the new table exists");
        }
        assert_eq!(stored_schema(&path), SCHEMA_VERSION);
        // The raw record was rewritten in the newest version.
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_read().unwrap();
            let peers = txn.open_table(PEERS).unwrap();
            assert_eq!(peers.get([7u8; 16]).unwrap().unwrap().value()[0], 3);
        }
        // And it opens again as it is.
        assert_eq!(Store::open(&path).unwrap().peers().unwrap().len(), 1);
    }

    #[test]
    fn a_schema_2_database_gains_the_new_tables_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.redb");
        // What schema 2 wrote: the v2 tables with a volume, a file and a
        // peer; no orphans, xattrs or sessions tables.
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(META_SCHEMA, &2u32.to_le_bytes()[..]).unwrap();
                let vol = tables::VolumeRecordV1 {
                    id: [1; 16],
                    block_size: 4096,
                    replicas: 2,
                    wrapped_secret: vec![9],
                };
                meta.insert(META_VOLUME, vol.to_bytes().unwrap().as_slice()).unwrap();
                meta.insert(META_NEXT_INODE, &3u64.to_le_bytes()[..]).unwrap();
                meta.insert(META_NEXT_COOKIE, &2u64.to_le_bytes()[..]).unwrap();
                let now = Timestamp::now();
                let mut root = new_record(KIND_DIR, 0o755, 0, 0, 0, 1, now);
                root.nlink = 2;
                let mut inodes = txn.open_table(INODES).unwrap();
                inodes.insert(1, root.to_bytes().unwrap().as_slice()).unwrap();
                inodes
                    .insert(2, new_record(KIND_FILE, 0o644, 0, 0, 0, 1, now).to_bytes().unwrap().as_slice())
                    .unwrap();
                txn.open_table(DIRENTS).unwrap().insert((1, &b"f"[..]), (2, 1, KIND_FILE)).unwrap();
                txn.open_table(DIRCOOKIES).unwrap().insert((1, 1), &b"f"[..]).unwrap();
                let peer =
                    PeerRecord::new("127.0.0.1:1".into(), PeerUsage::default(), now, PeerLabels::default());
                txn.open_table(PEERS)
                    .unwrap()
                    .insert([4u8; 16], peer.to_bytes().unwrap().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(s.lookup(InodeId::ROOT, b"f").unwrap().ino, InodeId(2));
            assert_eq!(s.peers().unwrap().len(), 1);
            assert!(s.orphans().unwrap().is_empty());
            assert!(s.sessions().unwrap().is_empty());
            s.setxattr(InodeId(2), b"k", b"v", 0).unwrap();
        }
        assert_eq!(stored_schema(&path), SCHEMA_VERSION);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.getxattr(InodeId(2), b"k").unwrap(), b"v");
        let vol = s.volume_info().unwrap();
        assert_eq!((vol.block_size, vol.replicas, vol.keyring.members.len()), (4096, 2, 0));
        assert_eq!(vol.keyring.epochs.len(), 1);
        assert!(vol.legacy_layouts);
    }

    /// What schema 4 wrote: volume record v2 (one wrapped secret, its
    /// recipients), `layouts-v1` rows of a two-block file, the chunk index.
    fn write_schema_4(path: &Path) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_SCHEMA, &4u32.to_le_bytes()[..]).unwrap();
            let vol = tables::VolumeRecordV2 {
                id: [6; 16],
                block_size: 4096,
                replicas: 1,
                wrapped_secret: b"age-encryption.org/v1 wrapped".to_vec(),
                recipients: vec!["age1old".into()],
            };
            meta.insert(META_VOLUME, vol.to_bytes().unwrap().as_slice()).unwrap();
            meta.insert(META_NEXT_INODE, &3u64.to_le_bytes()[..]).unwrap();
            meta.insert(META_NEXT_COOKIE, &2u64.to_le_bytes()[..]).unwrap();
            let now = Timestamp::now();
            let mut root = new_record(KIND_DIR, 0o755, 0, 0, 0, 1, now);
            root.nlink = 2;
            let mut f = new_record(KIND_FILE, 0o644, 0, 0, 0, 1, now);
            f.size = 8000;
            f.stored_bytes = 2 * 4144;
            let mut inodes = txn.open_table(INODES).unwrap();
            inodes.insert(1, root.to_bytes().unwrap().as_slice()).unwrap();
            inodes.insert(2, f.to_bytes().unwrap().as_slice()).unwrap();
            txn.open_table(DIRENTS).unwrap().insert((1, &b"f"[..]), (2, 1, KIND_FILE)).unwrap();
            txn.open_table(DIRCOOKIES).unwrap().insert((1, 1), &b"f"[..]).unwrap();
            let peer =
                PeerRecord::new("127.0.0.1:1".into(), PeerUsage::default(), now, PeerLabels::default());
            txn.open_table(PEERS).unwrap().insert([4u8; 16], peer.to_bytes().unwrap().as_slice()).unwrap();
            let mut old = txn.open_table(LAYOUTS_V1).unwrap();
            let mut chunks = txn.open_table(CHUNKS).unwrap();
            for (i, k) in [(0u64, 10u8), (1, 11)] {
                old.insert((2, i), (ChunkId::of(&[k]).0, 4144)).unwrap();
                let rec = ChunkRecord { replicas: vec![PeerId([4; 16])], refcount: 1, len: 4144 };
                chunks.insert(ChunkId::of(&[k]).0, rec.to_bytes().unwrap().as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_schema_4_database_gets_epoch_0_and_legacy_layout_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.redb");
        write_schema_4(&path);
        {
            let s = Store::open(&path).unwrap();
            let vol = s.volume_info().unwrap();
            assert_eq!(
                (vol.id, vol.block_size, vol.replicas, vol.legacy_layouts),
                (VolumeId([6; 16]), 4096, 1, true)
            );
            let ring = &vol.keyring;
            assert_eq!(ring.version, 0);
            assert_eq!(ring.epochs.len(), 1);
            assert_eq!(ring.epochs[0].wrapped, b"age-encryption.org/v1 wrapped");
            assert_eq!((ring.epochs[0].check, ring.epochs[0].link), ([0; 32], [0; 32]));
            assert_eq!(ring.members.len(), 1);
            assert_eq!(
                (ring.members[0].name.as_str(), ring.members[0].recipient.as_str()),
                ("age1old", "age1old")
            );
            // The file reads as before: same chunks, lengths, no MAC.
            let l = s.get_layout(InodeId(2), 0, 10).unwrap();
            let rows: Vec<(u64, ChunkId, u32, u32, [u8; 32])> =
                l.blocks.iter().map(|b| (b.index, b.chunk, b.len, b.epoch, b.mac)).collect();
            assert_eq!(
                rows,
                vec![(0, ChunkId::of(&[10]), 4144, 0, [0; 32]), (1, ChunkId::of(&[11]), 4144, 0, [0; 32])]
            );
            assert_eq!(l.blocks[0].replicas, vec![PeerId([4; 16])]);
            assert_eq!(l.attr.stored_bytes, 2 * 4144);
        }
        assert_eq!(stored_schema(&path), SCHEMA_VERSION);
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_read().unwrap();
            assert!(txn.open_table(LAYOUTS_V1).is_err(), "the old table is gone");
            let meta = txn.open_table(META).unwrap();
            assert_eq!(meta.get(META_VOLUME).unwrap().unwrap().value()[0], 3, "volume record v3");
            assert_eq!(decode_u32(meta.get(META_KEY_EPOCH).unwrap().unwrap().value()).unwrap(), 0);
        }
        // It opens again unchanged, and new commits carry MACs.
        let s = Store::open(&path).unwrap();
        assert_eq!(s.get_layout(InodeId(2), 0, 10).unwrap().blocks.len(), 2);
        let c = StoredChunk {
            id: ChunkId::of(&[12]),
            len: 100,
            replicas: vec![PeerId([4; 16])],
            epoch: 0,
            mac: [7; 32],
        };
        let commit = CommitLayout { size: 8000, mtime: Timestamp::now(), blocks: vec![(1, Some(c))] };
        s.commit_layout(InodeId(2), &commit).unwrap();
        let l = s.get_layout(InodeId(2), 0, 10).unwrap();
        assert_eq!((l.blocks[0].mac, l.blocks[1].mac), ([0; 32], [7; 32]));
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.redb");
        write_schema_1(&path, SCHEMA_VERSION + 1);
        match Store::open(&path) {
            Err(Error::Schema { found, supported }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected a schema error, got {other:?}"),
        }
        assert_eq!(stored_schema(&path), SCHEMA_VERSION + 1);
    }
}
