//! The filesystem core: namespace calls, the write path and the read path,
//! with no FUSE types (the adapter in [`crate::fuse`] converts).
//!
//! Write path: writes land in per-file block buffers (shared by every handle
//! of the inode in this process, so a read through one handle sees a write
//! through another), a pure state machine ([`buffer`]) whose operations say
//! what to fetch, upload and commit; the I/O runs outside the file's lock
//! (fetches and waits for upload slots always; commits under it, one at a
//! time). A block that a write completes, or any dirty block on
//! flush/fsync/release, is sealed ([`common::codec`]), placed by dirsvc and
//! put on R peers in parallel, bounded by a semaphore of in-flight uploads;
//! each upload reports back through the file's result channel.
//! Finished uploads are committed to dirsvc in one `commit_layout` on flush
//! (and every [`COMMIT_BATCH`] blocks for very large files, fewer if
//! dirsvc's session grant says it takes fewer per commit). `fsync` and
//! `flush` return only after that commit, and return the upload error if any
//! upload failed (the data stays dirty and is retried on the next flush).
//!
//! Read path: the layout is fetched when a file is opened and nothing is
//! pending locally (close-to-open). Each needed block comes from the local
//! buffer, the block cache, or the first replica that returns bytes that
//! verify against the chunk id and decrypt; a failing replica is logged and
//! the next is tried. Sequential reads prefetch the next blocks.
//!
//! Placement: every layout entry carries the writer's MAC over (volume,
//! inode, block index, chunk id, stored length, key epoch). A block's entry
//! is verified before the block is used (read, merged into a partial write,
//! shared by `copy_file_range`): an entry that does not verify is EIO and
//! an error log line naming the inode and block, never another file's or
//! block's bytes. Entries this client makes get their MAC when they are
//! made (an upload, a shared block, a recovered chunk).
//!
//! Keys: data is sealed under the volume's newest key epoch; older data
//! opens with the epoch its header names. When dirsvc refuses a commit
//! because a member was removed meanwhile (`StaleEpoch`), or a block names
//! an epoch this client does not know, the keyring is loaded again (from
//! the identity file named in [`FsConfig::identity`]) and the blocks are
//! sealed and stored again under the new epoch.
//!
//! Invariant kept by every path: a stored block's plaintext is never longer
//! than the file's size allows (`size - index·B`), so bytes past the end of a
//! file that later grows read as zeros.
//!
//! Errors storing data belong to the handles that wrote it (see
//! `FileState::writers`): a reader's close never fails because another
//! handle's upload failed, and the writer sees the error on its next write,
//! fsync and close until the data is stored. Data that cannot be stored by
//! unmount is kept in a sealed recovery file ([`recovery`]) that the next
//! mount stores.
//!
//! Layout of this module, one concern per file:
//! - `mod.rs`: [`Fs`], its settings and the per-file state types;
//! - `buffer.rs`: the per-file write buffer (no I/O);
//! - `namespace.rs`: lookups, attributes and the namespace calls;
//! - `open.rs`: open, flush, release, close-to-open reloads;
//! - `write.rs`: the write path's block buffers and layout commits;
//! - `upload.rs`: sealing a block and storing it on R peers;
//! - `truncate.rs`: size changes;
//! - `read.rs`: the read path (verified fetches, cache, read-ahead);
//! - `extents.rs`: fallocate, copy_file_range, SEEK_DATA/SEEK_HOLE;
//! - `locks.rs`, `session.rs`, `xattr.rs`: locks, the dirsvc session and
//!   extended attributes;
//! - `durability.rs`: the per-file durability report (a virtual xattr);
//! - `names.rs`: the last known path of inodes, for messages;
//! - `known.rs`: metadata answered without a round trip (cached attributes
//!   and entries vouched for by the change feed, absent extended attributes);
//! - `recovery.rs`: keeping data that could not be stored at unmount, and
//!   storing it at the next mount;
//! - `reencrypt.rs`: re-sealing blocks of older key epochs under the
//!   newest (`fs-client reencrypt`).

use crate::cache::{BlockCache, SegmentCache};
use crate::error::{Error, Result};
use crate::remote::{DirClient, PeerPool};
use common::codec;
use common::config::NAME_MAX;
use common::keyring::VolumeKeys;
use common::keys::{LayoutEntry, NameKey};
use common::rpc::dir::{Attr, BlockLoc, CommitAttrs, FileKind, StoredChunk, VolumeInfo};
use common::rpc::PeerLoc;
use common::time::Timestamp;
use common::{ChunkId, InodeId, VolumeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Semaphore};
use tracing::warn;

/// Most blocks one `commit_layout` carries; larger flushes commit in batches
/// (of fewer blocks if dirsvc's `SessionGrant::max_commit_entries` is
/// lower).
pub const COMMIT_BATCH: usize = 1024;

/// Plaintext blocks up to this many bytes (64 KiB, one segment) are sealed
/// on the uploading task's thread, and fetched chunks up to this many
/// stored bytes are opened on the reading task's thread: that costs less
/// than a hand-off to the blocking pool and back (about 20 µs of AES-GCM
/// and BLAKE3 against two thread wake-ups). Larger ones go to the blocking
/// pool.
const CRYPT_HERE_MAX: usize = 64 << 10;

/// How long a peer whose put failed is avoided by new uploads (5 s, about
/// when dirsvc stops placing on a silent peer).
pub const PEER_FAILURE_MEMORY: std::time::Duration = std::time::Duration::from_secs(5);

/// How often data whose upload failed (peers full or unreachable) is tried
/// again in the background while no handle flushes it (15 s).
pub const FAILED_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// Longest a change-feed poll waits at dirsvc for a change (750 ms): an
/// idle feed answers this often, and each answer vouches for the metadata
/// cache for `known::FEED_TRUST` (2 s) from when its poll was sent.
pub const FEED_POLL_WAIT: std::time::Duration = std::time::Duration::from_millis(750);

/// Written blocks up to this many bytes (256 KiB) are kept in the block
/// cache after their upload, so small files read back at once need no
/// fetch; bigger ones are not, so a large write does not push what was
/// read out of the cache (the kernel's page cache holds what was just
/// written anyway).
pub const CACHE_WRITTEN_MAX: usize = 256 << 10;

/// Tunables of the client core.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Byte budget of the decrypted block cache (default 128 MiB): blocks
    /// read, and written blocks of up to [`CACHE_WRITTEN_MAX`] bytes.
    pub cache_bytes: u64,
    /// Blocks being sealed and uploaded at once, over all files (default 8).
    pub uploads_in_flight: usize,
    /// Blocks prefetched ahead of a sequential reader (default 8).
    pub readahead_blocks: u64,
    /// Dirty blocks one file may buffer before the oldest are uploaded
    /// (default 32).
    pub dirty_blocks_per_file: usize,
    /// Attempts to place and store one block before the write fails
    /// (default 3, about 1.2 s of backoff in all).
    pub upload_attempts: u32,
    /// Longest time an uploaded block of a file that stays open waits before
    /// it is committed (default 1 s). Must stay well below dirsvc's
    /// garbage-collection grace period.
    pub commit_interval: std::time::Duration,
    /// Replicas a block needs before a write is acknowledged when fewer than
    /// R peers can take it (degraded write); dirsvc's repair adds the rest.
    /// `None` means a majority of R (`R/2 + 1`). Clamped to `1..=R`.
    pub min_replicas: Option<u32>,
    /// Keep block 0 inline in its layout entry at dirsvc when it seals to at
    /// most [`INLINE_MAX_LEN`] bytes (files of up to about 4 KiB), instead
    /// of putting it on R peers (default true). Inline chunks are sealed
    /// and verified like any other.
    ///
    /// [`INLINE_MAX_LEN`]: common::rpc::dir::INLINE_MAX_LEN
    pub inline: bool,
    /// How this client names itself to dirsvc (logs, lock holders); default
    /// `fs-client pid=<pid>`.
    pub session_label: String,
    /// The identity file the keyring is unwrapped with again when a new key
    /// epoch appears (a member was removed); `None`: no reload (writes under
    /// an old epoch then fail).
    pub identity: Option<std::path::PathBuf>,
    /// Where the volume is pinned ([`crate::pins`]); checked again on every
    /// keyring reload. `None`: no pin.
    pub pin_dir: Option<std::path::PathBuf>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            cache_bytes: 128 << 20,
            uploads_in_flight: 8,
            readahead_blocks: 8,
            dirty_blocks_per_file: 32,
            upload_attempts: 3,
            min_replicas: None,
            inline: true,
            commit_interval: std::time::Duration::from_secs(1),
            session_label: format!("fs-client pid={}", std::process::id()),
            identity: None,
            pin_dir: None,
        }
    }
}

/// A directory entry with its plaintext name.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Plaintext name bytes.
    pub name: Vec<u8>,
    /// Inode it names.
    pub ino: InodeId,
    /// Type.
    pub kind: FileKind,
    /// Resume cookie (see `DirService::readdir`).
    pub cookie: u64,
}

/// Result of a finished upload.
#[derive(Clone)]
struct Uploaded {
    stored: StoredChunk,
    locs: Vec<PeerLoc>,
}

/// A finished upload of version `gen` of block `idx`, as the upload task
/// reports it to the file's state.
struct UploadResult {
    idx: u64,
    gen: u64,
    result: Result<Uploaded>,
    /// When the upload finished (its replicas acknowledged the put).
    at: std::time::Instant,
}

/// A stored block as the write buffer holds it: where to read it, and what
/// its commit names as replicas.
#[derive(Clone, Debug)]
struct Stored {
    loc: BlockLoc,
    /// `None`: the replicas of `loc` (a committed entry, or an upload of
    /// this client). `Some`: these ids, empty for a block shared from
    /// another file (dirsvc keeps the chunk's own list and adds a
    /// reference), or those a chunk kept by an earlier mount was stored on.
    commit_replicas: Option<Vec<common::PeerId>>,
}

impl Stored {
    /// A committed entry as dirsvc serves it.
    fn committed(loc: BlockLoc) -> Self {
        Stored { loc, commit_replicas: None }
    }

    /// The entry a commit carries for this block.
    fn chunk(&self) -> StoredChunk {
        StoredChunk {
            id: self.loc.chunk,
            len: self.loc.len,
            replicas: match &self.commit_replicas {
                Some(r) => r.clone(),
                None => self.loc.replicas.iter().map(|p| p.id).collect(),
            },
            epoch: self.loc.epoch,
            mac: self.loc.mac,
            inline: self.loc.inline.clone(),
        }
    }

    /// Whether this client stored the chunk (an upload, or kept data of an
    /// earlier mount), rather than sharing another file's.
    fn stored_here(&self) -> bool {
        self.commit_replicas.as_ref().is_none_or(|r| !r.is_empty())
    }

    /// Whether this client put the chunk on peers (an upload or a chunk
    /// kept by an earlier mount; not shared, not inline in its layout
    /// entry): the chunks a commit must know are still held.
    fn put_on_peers_here(&self) -> bool {
        self.stored_here() && self.loc.inline.is_none()
    }
}

/// The guard of a file's state, passed along by the operations that let
/// go of the lock while they wait for I/O.
type Guard<'a> = tokio::sync::MutexGuard<'a, FileState>;

/// Local state of one open regular file.
struct FileState {
    ino: InodeId,
    /// Size, blocks and everything not committed yet.
    buf: buffer::BlockBuffer<Stored>,
    /// Where upload tasks report (cloned into each).
    results_tx: mpsc::UnboundedSender<UploadResult>,
    /// Upload results not applied yet (see `Fs::reap`).
    results: mpsc::UnboundedReceiver<UploadResult>,
    /// The file this state belongs to, for upload tasks to ask whether
    /// their data is still wanted.
    me: std::sync::Weak<OpenFile>,
    mtime: Timestamp,
    /// Permission bits (`mode & 0o7777`) as last seen, so a write by a caller
    /// without `CAP_FSETID` knows whether setuid/setgid must be cleared.
    perm: u32,
    /// dirsvc's last answer about the file (open, create, commit), the
    /// base of the attributes a folded `setattr` answers with.
    base: Attr,
    /// Mode, owner and atime a `setattr` set while data was buffered, for
    /// the next commit to carry ([`Fs::setattr`]); empty otherwise.
    pending: CommitAttrs,
    /// When `pending` last changed (the file's ctime until it lands).
    pending_at: Option<Timestamp>,
    /// Handles that wrote data not yet stored, each with the storage error
    /// it has been told about or must be told about (sticky until the file
    /// is stored completely: every write, fsync and close of that handle
    /// returns it). A complete flush empties it.
    writers: HashMap<u64, Option<Error>>,
    /// The last storage failure of this file, for the unmount report;
    /// cleared by a complete flush.
    failure: Option<Error>,
    /// When the buffer last went from nothing to commit to something
    /// (entries, or a shrink).
    uncommitted_since: Option<std::time::Instant>,
    /// The oldest moment a newly stored chunk waiting for its commit was
    /// last known held (its upload acknowledged, or a replica answering
    /// `has`): what a commit reports as `CommitLayout::held_ms`. `None`
    /// when nothing is waiting.
    held_since: Option<std::time::Instant>,
    /// When data of this file whose upload failed was last tried again.
    retried_at: Option<std::time::Instant>,
}

impl FileState {
    /// The state of a file with no local changes, as dirsvc described it,
    /// with blocks of `block_size` bytes and at most `max_dirty` dirty
    /// blocks before the oldest are uploaded.
    fn new(attr: &Attr, layout: BTreeMap<u64, BlockLoc>, block_size: u64, max_dirty: usize) -> Self {
        let (results_tx, results) = mpsc::unbounded_channel();
        FileState {
            ino: attr.ino,
            buf: buffer::BlockBuffer::new(
                block_size,
                max_dirty,
                attr.size,
                layout.into_iter().map(|(i, l)| (i, Stored::committed(l))),
            ),
            results_tx,
            results,
            me: std::sync::Weak::new(),
            mtime: attr.mtime,
            perm: attr.perm,
            base: attr.clone(),
            pending: CommitAttrs::default(),
            pending_at: None,
            writers: HashMap::new(),
            failure: None,
            uncommitted_since: None,
            held_since: None,
            retried_at: None,
        }
    }

    /// Records a failure to store this file's data: every handle that wrote
    /// data not yet stored will be told (the first failure each), and the
    /// unmount report names it.
    fn fail_writers(&mut self, e: Error) {
        for told in self.writers.values_mut() {
            if told.is_none() {
                *told = Some(e.clone());
            }
        }
        self.failure = Some(e);
    }

    /// Records that everything written so far is stored: no handle has an
    /// error to be told any more.
    fn stored_all(&mut self) {
        self.writers.clear();
        self.failure = None;
        self.retried_at = None;
    }

    /// What handle `fh` is told when a flush ended with `r`: the error of
    /// its own unstored writes (the first one), or success for a handle that
    /// wrote nothing still unstored, whatever happened to other handles'
    /// data.
    fn outcome_for(&self, fh: u64, r: Result<()>) -> Result<()> {
        match (r, self.writers.get(&fh)) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(Some(first))) => Err(first.clone()),
            (Err(e), Some(None)) => Err(e),
            (Err(e), None) => {
                tracing::debug!(ino = %self.ino, fh, error = %e, "flush failed on data another handle wrote; not this handle's error");
                Ok(())
            }
        }
    }

    /// Whether anything of this file lives only here: buffered data, or
    /// attributes waiting for the commit that carries them.
    fn has_local_changes(&self) -> bool {
        self.buf.has_local_changes() || !self.pending.is_empty()
    }

    /// Notes that the buffer may have something to commit now (for the
    /// periodic commit).
    fn mark_uncommitted(&mut self) {
        if self.buf.has_pending_commit() || !self.pending.is_empty() {
            self.uncommitted_since.get_or_insert_with(std::time::Instant::now);
        }
    }
}

/// The plaintext length of a chunk of `stored_len` bytes: exact for v3
/// chunks of 64 KiB segments (what uploads write), within 8 bytes for a v2
/// chunk of the same stored length (the stored length alone does not say
/// which format a chunk is).
fn plaintext_estimate(stored_len: u32) -> u64 {
    match codec::SegmentLayout::from_stored_len(u64::from(stored_len), codec::SEGMENT_SIZE) {
        Ok(l) => u64::from(l.plaintext_len()),
        Err(_) => u64::from(stored_len).saturating_sub(codec::OVERHEAD as u64),
    }
}

impl FileState {
    /// Plaintext bytes in non-hole blocks, counting buffered ones: what
    /// `st_blocks` reports while the file has unflushed changes.
    fn stored_estimate(&self) -> u64 {
        let mut total = 0u64;
        for (idx, s) in self.buf.layout() {
            if !self.buf.is_local(idx) {
                total += plaintext_estimate(s.loc.len);
            }
        }
        for (_, d) in self.buf.local_blocks() {
            total += d.len() as u64;
        }
        total
    }
}

struct OpenFile {
    opens: AtomicUsize,
    /// Handles that may write (opened for writing, or created): while
    /// there are any, the kernel's page cache of the file is never filled
    /// from here ([`Fs::fill_page_cache`]).
    writable_opens: AtomicUsize,
    state: tokio::sync::Mutex<FileState>,
}

impl OpenFile {
    fn new(mut state: FileState, opens: usize) -> Arc<Self> {
        Arc::new_cyclic(|me| {
            state.me = me.clone();
            OpenFile {
                opens: AtomicUsize::new(opens),
                writable_opens: AtomicUsize::new(0),
                state: tokio::sync::Mutex::new(state),
            }
        })
    }
}

struct Handle {
    ino: InodeId,
    /// Whether this handle may write (counted in `OpenFile::writable_opens`).
    writable: bool,
    /// End offset of the last read, for sequential-read detection.
    last_read_end: AtomicU64,
}

/// The client filesystem over one volume.
pub struct Fs {
    dir: DirClient,
    peers: PeerPool,
    volume: VolumeId,
    /// The verified keyring; replaced by [`Fs::reload_keys`].
    keys: std::sync::RwLock<Arc<VolumeKeys>>,
    /// Serializes keyring reloads.
    reloading: tokio::sync::Mutex<()>,
    /// Names stay under epoch 0's key for the life of the volume.
    name_key: NameKey,
    /// Whether layout entries without a MAC (migrated from before MACs) and
    /// symlink targets sealed without their inode are accepted.
    legacy_layouts: bool,
    /// Whether accepting such a legacy entry was logged (once per mount).
    legacy_logged: std::sync::atomic::AtomicBool,
    /// Inode numbers reserved at dirsvc by this client's session and not
    /// used yet (for symlinks).
    reserved: Mutex<Vec<InodeId>>,
    block_size: u64,
    replicas: u32,
    config: FsConfig,
    cache: BlockCache,
    /// Segments of v3 chunks fetched by random reads (a quarter of the
    /// block cache's budget, besides it).
    segments: SegmentCache,
    /// Tests: seal uploads in format v2, as clients before segmented
    /// chunks did.
    #[cfg(test)]
    seal_v2: std::sync::atomic::AtomicBool,
    uploads: Arc<Semaphore>,
    files: Mutex<HashMap<InodeId, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// Peers whose put failed recently: when, and whether they said they
    /// were full.
    peer_failures: Mutex<HashMap<common::PeerId, (std::time::Instant, bool)>>,
    /// The last known name of inodes this client has seen, for messages
    /// that must name a file by its path ([`names`]).
    names: names::NameMap,
    /// Recovery files whose data is buffered here and not stored yet; each
    /// is deleted as soon as its file is stored completely, so stale kept
    /// data never overwrites newer writes at a later mount.
    kept: Mutex<HashMap<InodeId, std::path::PathBuf>>,
    session: session::SessionState,
    /// Drops the kernel's cached attributes and pages of an inode (set by
    /// the mount; tests without FUSE have none).
    invalidator: std::sync::OnceLock<Invalidator>,
    /// Fills the kernel's page cache around random reads, once set.
    page_store: std::sync::OnceLock<PageStore>,
    /// Extended attributes known to be absent, answered without dirsvc.
    known: known::Known,
    /// The last small-block placement, reused for a moment.
    placements: upload::PlacementReuse,
}

/// A callback that drops the kernel's caches of an inode.
pub type Invalidator = Arc<dyn Fn(InodeId) + Send + Sync>;

/// A callback that puts plaintext into the kernel's page cache of an inode
/// at a byte offset (`FUSE_NOTIFY_STORE`); false if the kernel refused.
pub type PageStore = Arc<dyn Fn(InodeId, u64, &[u8]) -> bool + Send + Sync>;

/// Longest wait for the kernel to drop an inode's caches on a lock grant.
/// Dropping pages may need dirty mmapped pages written back through this
/// same mount; the wait runs off the async workers and is bounded, so a
/// stuck invalidation can delay a lock but never stall the mount.
const INVALIDATE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fs {
    /// Opens the volume served by `dir` with its unwrapped, verified `keys`.
    pub fn new(dir: DirClient, volume: &VolumeInfo, keys: VolumeKeys, config: FsConfig) -> Arc<Self> {
        let block_size = u64::from(volume.block_size);
        let peers = PeerPool::new(dir.tls().clone());
        Arc::new(Fs {
            dir,
            peers,
            volume: volume.id,
            name_key: keys.name_key().clone(),
            keys: std::sync::RwLock::new(Arc::new(keys)),
            reloading: tokio::sync::Mutex::new(()),
            legacy_layouts: volume.legacy_layouts,
            legacy_logged: std::sync::atomic::AtomicBool::new(false),
            reserved: Mutex::new(Vec::new()),
            block_size,
            replicas: volume.replicas,
            cache: BlockCache::new(config.cache_bytes, block_size),
            segments: SegmentCache::new(config.cache_bytes / 4),
            #[cfg(test)]
            seal_v2: std::sync::atomic::AtomicBool::new(false),
            uploads: Arc::new(Semaphore::new(config.uploads_in_flight.max(1))),
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            peer_failures: Mutex::new(HashMap::new()),
            names: names::NameMap::default(),
            kept: Mutex::new(HashMap::new()),
            session: session::SessionState::new(config.session_label.clone()),
            invalidator: std::sync::OnceLock::new(),
            page_store: std::sync::OnceLock::new(),
            known: known::Known::default(),
            placements: upload::PlacementReuse::default(),
            config,
        })
    }

    /// Sets the callback that drops the kernel's caches of an inode (the
    /// mount passes fuser's notifier). Only the first call takes effect.
    pub fn set_invalidator(&self, f: Invalidator) {
        let _ = self.invalidator.set(f);
    }

    /// Sets the callback that fills the kernel's page cache (the mount
    /// passes fuser's notifier). Only the first call takes effect.
    pub fn set_page_store(&self, f: PageStore) {
        let _ = self.page_store.set(f);
    }

    /// Reloads size and layout of `ino` if this client has it open with no
    /// unflushed changes, and drops the kernel's caches of it: what another
    /// client committed before releasing a lock becomes visible to this
    /// one once it holds the lock (as NFS revalidates on lock).
    ///
    /// Errors: dirsvc and transport errors.
    pub(crate) async fn revalidate(&self, ino: InodeId) -> Result<()> {
        let file = lock(&self.files).get(&ino).cloned();
        let Some(f) = file else { return Ok(()) };
        let changed = {
            let mut st = f.state.lock().await;
            self.refresh_clean(&mut st).await?
        };
        // Only a change made elsewhere needs the kernel's pages dropped; a
        // file only this mount wrote (or mapped) keeps its cache.
        if changed {
            if let Some(inval) = self.invalidator.get().cloned() {
                let task = tokio::task::spawn_blocking(move || inval(ino));
                if tokio::time::timeout(INVALIDATE_WAIT, task).await.is_err() {
                    warn!(ino = %ino, "the kernel did not drop its cached pages in time; reads may be stale until the next open");
                }
            }
        }
        Ok(())
    }

    /// Reloads size, mtime and layout of a file with no unflushed changes
    /// from dirsvc; returns whether another client changed it.
    ///
    /// Errors: dirsvc and transport errors.
    async fn refresh_clean(&self, st: &mut FileState) -> Result<bool> {
        if st.has_local_changes() {
            return Ok(false);
        }
        let (attr, layout) = self.load_layout(st.ino).await?;
        let same = attr.size == st.buf.size()
            && attr.mtime == st.mtime
            && layout.len() == st.buf.layout().count()
            && layout.iter().zip(st.buf.layout()).all(|((i, a), (j, b))| *i == j && a.chunk == b.loc.chunk);
        if !same && st.buf.reset(attr.size, layout.into_iter().map(|(i, l)| (i, Stored::committed(l)))) {
            st.mtime = attr.mtime;
        }
        Ok(!same)
    }

    /// Uploads and commits what this client buffers for `ino`, if anything
    /// (before a lock on it is released).
    ///
    /// Errors: upload and dirsvc errors.
    pub(crate) async fn flush_ino(self: &Arc<Self>, ino: InodeId) -> Result<()> {
        let file = lock(&self.files).get(&ino).cloned();
        match file {
            Some(f) => {
                let st = f.state.lock().await;
                self.flush_locked(&f, st).await.1
            }
            None => Ok(()),
        }
    }

    /// The connection to dirsvc.
    pub fn dir(&self) -> &DirClient {
        &self.dir
    }

    /// The volume's block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The keyring as this client knows it now.
    pub fn keys(&self) -> Arc<VolumeKeys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Loads the keyring from dirsvc again and unlocks it with the identity
    /// file of [`FsConfig::identity`] (checked against the pin, if any),
    /// unless another task did so since `seen` was the newest epoch.
    /// Returns the keys now in use.
    ///
    /// Errors: [`Error::Key`] when there is no identity to reload with, the
    /// identity is no longer a member, or the keyring does not verify;
    /// dirsvc's errors.
    pub(crate) async fn reload_keys(&self, seen: u32) -> Result<Arc<VolumeKeys>> {
        let _one = self.reloading.lock().await;
        let current = self.keys();
        if current.newest() > seen {
            return Ok(current);
        }
        let Some(path) = self.config.identity.clone() else {
            return Err(Error::Key(
                "the volume has a new key epoch and this client has no identity file to unwrap it".into(),
            ));
        };
        let info = crate::volume::fetch(&self.dir).await?;
        if info.id != self.volume {
            return Err(Error::Key(format!(
                "dirsvc now serves volume {}, not {}",
                info.id.to_hex(),
                self.volume.to_hex()
            )));
        }
        // The identity is read, used and dropped with no await in between
        // (age's identities are not Send).
        let keys = {
            let id = crate::identity::load(&path)?;
            crate::volume::unlock(&info, &id)?
        };
        if let Some(dir) = &self.config.pin_dir {
            crate::pins::check_and_record(dir, &crate::pins::Origin::of(&self.dir), &info, &keys)?;
        }
        if keys.newest() < current.newest() {
            return Err(Error::Key(format!(
                "dirsvc now serves key epoch {} as the newest, older than {} known here",
                keys.newest(),
                current.newest()
            )));
        }
        tracing::info!(volume = %self.volume, epoch = keys.newest(), "keyring reloaded: new data goes to the newest key epoch");
        let keys = Arc::new(keys);
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys.clone();
        Ok(keys)
    }

    /// The keys to open data of `epoch`, reloading the keyring first if
    /// this client does not know that epoch yet.
    ///
    /// Errors: those of [`Fs::reload_keys`]; [`Error::Integrity`] if the
    /// keyring has no such epoch even then.
    pub(crate) async fn keys_for(&self, epoch: u32) -> Result<Arc<VolumeKeys>> {
        let keys = self.keys();
        if keys.epoch(epoch).is_some() {
            return Ok(keys);
        }
        let keys = self.reload_keys(keys.newest()).await?;
        if keys.epoch(epoch).is_none() {
            return Err(Error::Integrity(format!(
                "data names key epoch {epoch}, which the volume does not have"
            )));
        }
        Ok(keys)
    }

    /// The MAC of the layout entry of block `index` of `ino` naming `chunk`
    /// (`len` stored bytes, sealed under `epoch`).
    pub(crate) fn entry_mac(
        &self,
        keys: &VolumeKeys,
        ino: InodeId,
        index: u64,
        chunk: ChunkId,
        len: u32,
        epoch: u32,
    ) -> Result<[u8; 32]> {
        let k = keys
            .epoch(epoch)
            .ok_or_else(|| Error::Integrity(format!("no key epoch {epoch} to MAC a layout entry with")))?;
        Ok(k.layout_mac.mac(&LayoutEntry { volume: self.volume, ino, index, chunk, len, epoch }))
    }

    /// Checks the MAC of `loc`, the entry of block `loc.index` of `ino`,
    /// before the block is used. An entry without a MAC passes only on a
    /// volume migrated from before MACs (logged once per mount).
    ///
    /// Errors: [`Error::Integrity`] (EIO) for an entry that does not
    /// verify, logged at error level with the inode and block; those of
    /// [`Fs::keys_for`].
    pub(crate) async fn verify_entry(&self, ino: InodeId, loc: &BlockLoc) -> Result<()> {
        if loc.mac == [0; 32] {
            if self.legacy_layouts {
                if !self.legacy_logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    warn!(volume = %self.volume, ino = %ino, block = loc.index, "this volume predates layout MACs: its older entries carry none and are trusted as dirsvc serves them (logged once per mount; `fs-client reencrypt` adds MACs)");
                }
                return Ok(());
            }
            tracing::error!(ino = %ino, block = loc.index, chunk = %loc.chunk, path = %self.path_of(ino), "layout entry has no MAC on a volume that requires them; refusing the block (EIO)");
            return Err(Error::Integrity(format!(
                "block {} of inode {ino}: layout entry has no MAC",
                loc.index
            )));
        }
        let keys = self.keys_for(loc.epoch).await?;
        if layout_entry_verifies(&keys, self.volume, ino, loc)? {
            return Ok(());
        }
        tracing::error!(ino = %ino, block = loc.index, chunk = %loc.chunk, path = %self.path_of(ino), "layout entry does not verify: dirsvc serves a chunk that no member wrote at this block of this file; refusing it (EIO)");
        Err(Error::Integrity(format!("block {} of inode {ino}: layout entry MAC does not verify", loc.index)))
    }

    /// The state of a file with no local changes, as dirsvc described it.
    fn new_state(&self, attr: &Attr, layout: BTreeMap<u64, BlockLoc>) -> FileState {
        FileState::new(attr, layout, self.block_size, self.config.dirty_blocks_per_file)
    }

    fn seal_name(&self, parent: InodeId, name: &[u8]) -> Result<Vec<u8>> {
        check_name_len(name)?;
        Ok(self.name_key.seal(parent, name))
    }
}

/// Refuses a name longer than [`NAME_MAX`] bytes with `ENAMETOOLONG`.
fn check_name_len(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Error::Errno(libc::ENAMETOOLONG, format!("name of {} bytes", name.len())));
    }
    Ok(())
}

/// Whether `loc`, the layout entry of block `loc.index` of file `ino` of
/// `volume` as dirsvc served it, carries the MAC a member made: the
/// [`common::keys::LayoutMacKey::mac`] of its volume, inode, block index,
/// chunk, stored length and epoch under the layout MAC key of the epoch it
/// names. The check `Fs::verify_entry` makes on every entry with a MAC
/// before using its block (an all-zero MAC is the legacy marker it handles
/// first); compared in constant time.
///
/// Errors: [`Error::Integrity`] if `keys` has no epoch `loc.epoch`.
pub fn layout_entry_verifies(
    keys: &VolumeKeys,
    volume: VolumeId,
    ino: InodeId,
    loc: &BlockLoc,
) -> Result<bool> {
    let k = keys.epoch(loc.epoch).ok_or_else(|| Error::Integrity(format!("no key epoch {}", loc.epoch)))?;
    let e = LayoutEntry { volume, ino, index: loc.index, chunk: loc.chunk, len: loc.len, epoch: loc.epoch };
    Ok(k.layout_mac.verify(&e, &loc.mac))
}

pub use durability::{BlockRun, DurabilityReport, DURABILITY_XATTR};
pub use extents::Seek;
pub use locks::{LockRequest, LockType};
pub use reencrypt::{ReencryptProgress, ReencryptReport};

mod buffer;
mod durability;
mod extents;
mod known;
mod locks;
mod names;
mod namespace;
mod open;
mod read;
pub mod recovery;
mod reencrypt;
mod session;
mod truncate;
mod upload;
mod write;
mod xattr;

#[cfg(test)]
mod tests;
