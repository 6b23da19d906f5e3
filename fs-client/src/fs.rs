//! The filesystem core: namespace calls, the write path and the read path,
//! with no FUSE types (the adapter in [`crate::fuse`] converts).
//!
//! Write path: writes land in per-file block buffers (shared by every handle
//! of the inode in this process, so a read through one handle sees a write
//! through another). A block that a write completes, or any dirty block on
//! flush/fsync/release, is sealed ([`common::codec`]), placed by dirsvc and
//! put on R peers in parallel, bounded by a semaphore of in-flight uploads.
//! Finished uploads are committed to dirsvc in one `commit_layout` on flush
//! (and every [`COMMIT_BATCH`] blocks for very large files). `fsync` and
//! `flush` return only after that commit, and return the upload error if any
//! upload failed (the data stays dirty and is retried on the next flush).
//!
//! Read path: the layout is fetched when a file is opened and nothing is
//! pending locally (close-to-open). Each needed block comes from the local
//! buffer, the block cache, or the first replica that returns bytes that
//! verify against the chunk id and decrypt; a failing replica is logged and
//! the next is tried. Sequential reads prefetch the next blocks.
//!
//! Invariant kept by every path: a stored block's plaintext is never longer
//! than the file's size allows (`size - index·B`), so bytes past the end of a
//! file that later grows read as zeros.

use crate::cache::{Block, BlockCache};
use crate::error::{Error, Result};
use crate::remote::{DirClient, PeerPool};
use common::codec;
use common::config::{NAME_MAX, SYMLINK_MAX};
use common::keys::{NameKey, SubKey, VolumeSecret};
use common::rpc::dir::{
    Attr, BlockLoc, CommitLayout, DirError, FileKind, NewInode, SetAttr, StatFs, StoredChunk, VolumeInfo,
};
use common::rpc::PeerLoc;
use common::time::Timestamp;
use common::InodeId;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

/// Most blocks one `commit_layout` carries; larger flushes commit in batches.
pub const COMMIT_BATCH: usize = 1024;

/// How long a peer whose put failed is avoided by new uploads (5 s, about
/// when dirsvc stops placing on a silent peer).
pub const PEER_FAILURE_MEMORY: std::time::Duration = std::time::Duration::from_secs(5);

/// Tunables of the client core.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Byte budget of the decrypted block cache (default 256 MiB).
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
    /// How this client names itself to dirsvc (logs, lock holders); default
    /// `fs-client pid=<pid>`.
    pub session_label: String,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            cache_bytes: 256 << 20,
            uploads_in_flight: 8,
            readahead_blocks: 8,
            dirty_blocks_per_file: 32,
            upload_attempts: 3,
            min_replicas: None,
            commit_interval: std::time::Duration::from_secs(1),
            session_label: format!("fs-client pid={}", std::process::id()),
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

/// Where a block's current content comes from.
enum Source {
    Hole,
    Local(Block),
    Remote(BlockLoc),
}

/// Local state of one open regular file.
struct FileState {
    ino: InodeId,
    /// Size in bytes as this client sees it.
    size: u64,
    /// Blocks stored on peers (committed, or uploaded and awaiting commit).
    layout: BTreeMap<u64, BlockLoc>,
    /// Blocks written but not yet handed to an upload.
    dirty: BTreeMap<u64, Block>,
    /// Uploads in flight: the content being uploaded and the task.
    uploading: BTreeMap<u64, (Block, JoinHandle<Result<Uploaded>>)>,
    /// Finished uploads (and holes) not yet committed to dirsvc.
    uncommitted: BTreeMap<u64, Option<StoredChunk>>,
    /// Size or mtime changed locally and must be committed.
    meta_dirty: bool,
    mtime: Timestamp,
    /// An upload failure not yet reported to the application.
    error: Option<Error>,
    /// When `uncommitted` last went from empty to non-empty.
    uncommitted_since: Option<std::time::Instant>,
}

impl FileState {
    fn has_local_changes(&self) -> bool {
        self.meta_dirty
            || !self.dirty.is_empty()
            || !self.uploading.is_empty()
            || !self.uncommitted.is_empty()
    }
}

impl FileState {
    /// Plaintext bytes in non-hole blocks, counting buffered ones: what
    /// `st_blocks` reports while the file has unflushed changes.
    fn stored_estimate(&self) -> u64 {
        let overhead = codec::OVERHEAD as u64;
        let mut total = 0u64;
        for (idx, loc) in &self.layout {
            if !self.dirty.contains_key(idx) && !self.uploading.contains_key(idx) {
                total += u64::from(loc.len).saturating_sub(overhead);
            }
        }
        for d in self.dirty.values().chain(self.uploading.values().map(|(d, _)| d)) {
            total += d.len() as u64;
        }
        total
    }
}

struct OpenFile {
    opens: AtomicUsize,
    state: tokio::sync::Mutex<FileState>,
}

struct Handle {
    ino: InodeId,
    /// End offset of the last read, for sequential-read detection.
    last_read_end: AtomicU64,
}

/// The client filesystem over one volume.
pub struct Fs {
    dir: DirClient,
    peers: PeerPool,
    chunk_key: SubKey,
    name_key: NameKey,
    symlink_key: SubKey,
    xattr_key: SubKey,
    block_size: u64,
    replicas: u32,
    config: FsConfig,
    cache: BlockCache,
    uploads: Arc<Semaphore>,
    files: Mutex<HashMap<InodeId, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    peer_failures: Mutex<HashMap<common::PeerId, std::time::Instant>>,
    session: session::SessionState,
    /// Drops the kernel's cached attributes and pages of an inode (set by
    /// the mount; tests without FUSE have none).
    invalidator: std::sync::OnceLock<Invalidator>,
}

/// A callback that drops the kernel's caches of an inode.
pub type Invalidator = Arc<dyn Fn(InodeId) + Send + Sync>;

/// Longest wait for the kernel to drop an inode's caches on a lock grant.
/// Dropping pages may need dirty mmapped pages written back through this
/// same mount; the wait runs off the async workers and is bounded, so a
/// stuck invalidation can delay a lock but never stall the mount.
const INVALIDATE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fs {
    /// Opens the volume served by `dir` with the unwrapped `secret`.
    pub fn new(dir: DirClient, volume: &VolumeInfo, secret: &VolumeSecret, config: FsConfig) -> Arc<Self> {
        let block_size = u64::from(volume.block_size);
        Arc::new(Fs {
            dir,
            peers: PeerPool::default(),
            chunk_key: secret.chunk_key(),
            name_key: secret.name_key(),
            symlink_key: secret.symlink_key(),
            xattr_key: secret.xattr_value_key(),
            block_size,
            replicas: volume.replicas,
            cache: BlockCache::new(config.cache_bytes, block_size),
            uploads: Arc::new(Semaphore::new(config.uploads_in_flight.max(1))),
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            peer_failures: Mutex::new(HashMap::new()),
            session: session::SessionState::new(config.session_label.clone()),
            invalidator: std::sync::OnceLock::new(),
            config,
        })
    }

    /// Sets the callback that drops the kernel's caches of an inode (the
    /// mount passes fuser's notifier). Only the first call takes effect.
    pub fn set_invalidator(&self, f: Invalidator) {
        let _ = self.invalidator.set(f);
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
        let same = attr.size == st.size
            && attr.mtime == st.mtime
            && layout.len() == st.layout.len()
            && layout.iter().zip(&st.layout).all(|((i, a), (j, b))| i == j && a.chunk == b.chunk);
        if !same {
            st.size = attr.size;
            st.mtime = attr.mtime;
            st.layout = layout;
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
                let mut st = f.state.lock().await;
                self.flush_locked(&mut st).await
            }
            None => Ok(()),
        }
    }

    /// The volume's block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    fn seal_name(&self, parent: InodeId, name: &[u8]) -> Result<Vec<u8>> {
        if name.len() > NAME_MAX {
            return Err(Error::Errno(libc::ENAMETOOLONG, format!("name of {} bytes", name.len())));
        }
        Ok(self.name_key.seal(parent, name))
    }

    // ----- namespace -------------------------------------------------------

    /// Looks `name` up in `parent`. Errors: `ENOENT` and friends via dirsvc.
    pub async fn lookup(&self, parent: InodeId, name: &[u8]) -> Result<Attr> {
        let sealed = self.seal_name(parent, name)?;
        let attr = self
            .dir
            .call(|c, ctx| {
                let s = sealed.clone();
                async move { c.lookup(ctx, parent, s).await }
            })
            .await?;
        Ok(self.overlay(attr).await)
    }

    /// Attributes of `ino`, with the local size and mtime of an open file
    /// that has unflushed writes.
    pub async fn getattr(&self, ino: InodeId) -> Result<Attr> {
        let attr = self.dir.call(|c, ctx| async move { c.getattr(ctx, ino).await }).await?;
        Ok(self.overlay(attr).await)
    }

    async fn overlay(&self, mut attr: Attr) -> Attr {
        let file = lock(&self.files).get(&attr.ino).cloned();
        if let Some(f) = file {
            let st = f.state.lock().await;
            if st.has_local_changes() {
                attr.size = st.size;
                attr.mtime = st.mtime;
                // A write changes ctime too; dirsvc sets it at commit.
                attr.ctime = attr.ctime.max(st.mtime);
                attr.stored_bytes = st.stored_estimate();
            }
        }
        attr
    }

    /// Changes attributes. A size change goes through [`Fs::truncate`]; an
    /// open file is flushed first so later commits cannot undo an explicit
    /// mtime.
    pub async fn setattr(self: &Arc<Self>, ino: InodeId, set: SetAttr) -> Result<Attr> {
        if let Some(size) = set.size {
            self.truncate(ino, size).await?;
        }
        let rest = SetAttr { size: None, ..set };
        let file = lock(&self.files).get(&ino).cloned();
        if let Some(f) = &file {
            let mut st = f.state.lock().await;
            self.flush_locked(&mut st).await?;
            if let Some(m) = rest.mtime {
                st.mtime = m;
            }
        }
        if rest == SetAttr::default() {
            return self.getattr(ino).await;
        }
        self.dir
            .call(|c, ctx| {
                let r = rest.clone();
                async move { c.setattr(ctx, ino, r).await }
            })
            .await
    }

    /// Makes a directory.
    pub async fn mkdir(&self, parent: InodeId, name: &[u8], perm: u32, uid: u32, gid: u32) -> Result<Attr> {
        let sealed = self.seal_name(parent, name)?;
        self.dir
            .call(|c, ctx| {
                let s = sealed.clone();
                async move { c.mkdir(ctx, parent, s, perm, uid, gid).await }
            })
            .await
    }

    /// Makes a special node (FIFO, socket, device) or an empty regular file.
    pub async fn mknod(&self, parent: InodeId, name: &[u8], new: NewInode) -> Result<Attr> {
        let sealed = self.seal_name(parent, name)?;
        self.dir
            .call(|c, ctx| {
                let (s, n) = (sealed.clone(), new.clone());
                async move { c.create(ctx, parent, s, n).await }
            })
            .await
    }

    /// Creates and opens a regular file; returns its attributes and handle.
    pub async fn create(
        &self,
        parent: InodeId,
        name: &[u8],
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(Attr, u64)> {
        let new = NewInode { kind: FileKind::File, perm, uid, gid, rdev: 0 };
        let attr = self.mknod(parent, name, new).await?;
        self.mark_open(attr.ino).await?;
        let (fh, _, _) = self.open_loaded(&attr, BTreeMap::new());
        Ok((attr, fh))
    }

    /// Removes a file, symlink or node.
    pub async fn unlink(&self, parent: InodeId, name: &[u8]) -> Result<()> {
        let sealed = self.seal_name(parent, name)?;
        self.dir
            .call(|c, ctx| {
                let s = sealed.clone();
                async move { c.unlink(ctx, parent, s).await }
            })
            .await
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, parent: InodeId, name: &[u8]) -> Result<()> {
        let sealed = self.seal_name(parent, name)?;
        self.dir
            .call(|c, ctx| {
                let s = sealed.clone();
                async move { c.rmdir(ctx, parent, s).await }
            })
            .await
    }

    /// Renames atomically; `flags` as `renameat2` (NOREPLACE, EXCHANGE).
    pub async fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        let from = self.seal_name(parent, name)?;
        let to = self.seal_name(new_parent, new_name)?;
        self.dir
            .call(|c, ctx| {
                let (f, t) = (from.clone(), to.clone());
                async move { c.rename(ctx, parent, f, new_parent, t, flags).await }
            })
            .await?;
        Ok(())
    }

    /// Adds a hard link.
    pub async fn link(&self, ino: InodeId, new_parent: InodeId, new_name: &[u8]) -> Result<Attr> {
        let sealed = self.seal_name(new_parent, new_name)?;
        self.dir
            .call(|c, ctx| {
                let s = sealed.clone();
                async move { c.link(ctx, ino, new_parent, s).await }
            })
            .await
    }

    /// Makes a symlink; the target is sealed. `ENAMETOOLONG` above 4095 bytes.
    pub async fn symlink(
        &self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        if target.len() > SYMLINK_MAX {
            return Err(Error::Errno(
                libc::ENAMETOOLONG,
                format!("symlink target of {} bytes", target.len()),
            ));
        }
        let sealed = self.seal_name(parent, name)?;
        let t = codec::seal_bytes(&self.symlink_key, target, SYMLINK_MAX)?;
        let size = target.len() as u64;
        self.dir
            .call(|c, ctx| {
                let (s, t) = (sealed.clone(), t.clone());
                async move { c.symlink(ctx, parent, s, t, size, uid, gid).await }
            })
            .await
    }

    /// The plaintext target of a symlink.
    pub async fn readlink(&self, ino: InodeId) -> Result<Vec<u8>> {
        let sealed = self.dir.call(|c, ctx| async move { c.readlink(ctx, ino).await }).await?;
        Ok(codec::open_bytes(&self.symlink_key, &sealed)?)
    }

    /// Up to `limit` entries of `dir` after `cookie`, names opened. An entry
    /// whose name does not open with this volume's key is skipped and logged.
    pub async fn readdir(&self, dir: InodeId, cookie: u64, limit: u32) -> Result<(Vec<Entry>, bool)> {
        let page = self.dir.call(|c, ctx| async move { c.readdir(ctx, dir, cookie, limit).await }).await?;
        let mut out = Vec::with_capacity(page.entries.len());
        for e in page.entries {
            match self.name_key.open(dir, &e.name) {
                Ok(name) => out.push(Entry { name, ino: e.ino, kind: e.kind, cookie: e.cookie }),
                Err(_) => {
                    warn!(dir = %dir, ino = %e.ino, "directory entry name does not open with the volume key; skipped")
                }
            }
        }
        Ok((out, page.eof))
    }

    /// Capacity over the live peers.
    pub async fn statfs(&self) -> Result<StatFs> {
        self.dir.call(|c, ctx| async move { c.statfs(ctx).await }).await
    }

    // ----- open / close ------------------------------------------------------

    async fn load_layout(&self, ino: InodeId) -> Result<(Attr, BTreeMap<u64, BlockLoc>)> {
        let mut layout = BTreeMap::new();
        let mut first = 0u64;
        loop {
            let page =
                self.dir.call(|c, ctx| async move { c.get_layout(ctx, ino, first, 4096).await }).await?;
            let last = page.blocks.last().map(|b| b.index);
            for b in page.blocks {
                layout.insert(b.index, b);
            }
            if page.eof {
                return Ok((page.attr, layout));
            }
            // A page covers block indexes [first, first + 4096): an empty one
            // that is not the end means a long hole; skip past it.
            first = match last {
                Some(l) => l + 1,
                None => first + 4096,
            };
        }
    }

    /// Registers a new handle on `attr.ino`, creating the file's state from
    /// `layout` if this process has none. Returns the handle, the state and
    /// whether the state already existed.
    fn open_loaded(&self, attr: &Attr, layout: BTreeMap<u64, BlockLoc>) -> (u64, Arc<OpenFile>, bool) {
        let (file, existed) = {
            let mut files = lock(&self.files);
            let existed = files.contains_key(&attr.ino);
            let f = files
                .entry(attr.ino)
                .or_insert_with(|| {
                    Arc::new(OpenFile {
                        opens: AtomicUsize::new(0),
                        state: tokio::sync::Mutex::new(FileState {
                            ino: attr.ino,
                            size: attr.size,
                            layout,
                            dirty: BTreeMap::new(),
                            uploading: BTreeMap::new(),
                            uncommitted: BTreeMap::new(),
                            meta_dirty: false,
                            mtime: attr.mtime,
                            error: None,
                            uncommitted_since: None,
                        }),
                    })
                })
                .clone();
            // Counted under the map's lock so a concurrent last release
            // cannot drop the state this handle is about to use.
            f.opens.fetch_add(1, Ordering::SeqCst);
            (f, existed)
        };
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        lock(&self.handles).insert(fh, Arc::new(Handle { ino: attr.ino, last_read_end: AtomicU64::new(0) }));
        (fh, file, existed)
    }

    /// Opens a regular file: fetches its layout (close-to-open) and uses it
    /// unless this process holds unflushed changes to the file; `truncate`
    /// empties it (`O_TRUNC`). Returns the handle.
    pub async fn open(self: &Arc<Self>, ino: InodeId, truncate: bool) -> Result<u64> {
        self.mark_open(ino).await?;
        let (attr, layout) = match self.load_layout(ino).await {
            Ok(l) if l.0.kind == FileKind::File => l,
            Ok(_) => {
                self.unmark_open(ino).await;
                return Err(Error::Errno(libc::EINVAL, "not a regular file".into()));
            }
            Err(e) => {
                self.unmark_open(ino).await;
                return Err(e);
            }
        };
        let (fh, f, existed) = self.open_loaded(&attr, layout.clone());
        if existed {
            let mut st = f.state.lock().await;
            if !st.has_local_changes() {
                st.size = attr.size;
                st.mtime = attr.mtime;
                st.layout = layout;
            }
        }
        if truncate {
            if let Err(e) = self.truncate(ino, 0).await {
                self.release(fh).await.ok();
                return Err(e);
            }
        }
        Ok(fh)
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::Errno(libc::EBADF, format!("unknown handle {fh}")))
    }

    fn file(&self, ino: InodeId) -> Result<Arc<OpenFile>> {
        lock(&self.files)
            .get(&ino)
            .cloned()
            .ok_or_else(|| Error::Errno(libc::EBADF, format!("inode {ino} is not open")))
    }

    /// Flushes the file behind `fh`: uploads dirty blocks and commits the
    /// layout. Returns the first upload error not yet reported.
    pub async fn flush(self: &Arc<Self>, fh: u64) -> Result<()> {
        let h = self.handle(fh)?;
        let f = self.file(h.ino)?;
        let mut st = f.state.lock().await;
        self.flush_locked(&mut st).await
    }

    /// Closes a handle: flushes, and forgets the file's state after its last
    /// handle if nothing is left unflushed.
    pub async fn release(self: &Arc<Self>, fh: u64) -> Result<()> {
        let Some(h) = lock(&self.handles).remove(&fh) else { return Ok(()) };
        let f = self.file(h.ino)?;
        let r = {
            let mut st = f.state.lock().await;
            let r = self.flush_locked(&mut st).await;
            let clean = !st.has_local_changes();
            let mut files = lock(&self.files);
            if f.opens.fetch_sub(1, Ordering::SeqCst) == 1 && clean {
                files.remove(&h.ino);
            }
            r
        };
        self.unmark_open(h.ino).await;
        if let Err(e) = &r {
            error!(ino = %h.ino, error = %e, "close: data of this file could not be stored; it stays buffered and is retried on the next flush");
        }
        r
    }

    /// Flushes every open file (on unmount). Returns the number of files
    /// whose data could not be stored.
    pub async fn flush_all(self: &Arc<Self>) -> usize {
        let files: Vec<_> = lock(&self.files).values().cloned().collect();
        let mut failed = 0;
        for f in files {
            let mut st = f.state.lock().await;
            if let Err(e) = self.flush_locked(&mut st).await {
                error!(ino = %st.ino, error = %e, "unflushed data could not be stored");
                failed += 1;
            }
        }
        failed
    }

    // ----- write path ----------------------------------------------------------

    /// Writes `data` at `offset` through handle `fh`; returns bytes written.
    /// Errors: a pending upload failure (`EIO`), or a failed read of a block
    /// that a partial write must merge with.
    pub async fn write(self: &Arc<Self>, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self.handle(fh)?;
        let f = self.file(h.ino)?;
        let mut st = f.state.lock().await;
        self.write_locked(&mut st, offset, data).await
    }

    /// Writes `data` at the end of the file behind `fh` (`O_APPEND`), as this
    /// client knows the end: the size at open, after its own writes, and
    /// after every lock this client is granted (so appends from several
    /// mounts under a lock land one after another). Returns bytes written.
    ///
    /// Errors: as [`Fs::write`].
    pub async fn append(self: &Arc<Self>, fh: u64, data: &[u8]) -> Result<u32> {
        let h = self.handle(fh)?;
        let f = self.file(h.ino)?;
        let mut st = f.state.lock().await;
        let end = st.size;
        self.write_locked(&mut st, end, data).await
    }

    async fn write_locked(self: &Arc<Self>, st: &mut FileState, offset: u64, data: &[u8]) -> Result<u32> {
        self.reap(st);
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        let b = self.block_size;
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / b;
            let in_block = (pos % b) as usize;
            let take = ((b - pos % b).min(end - pos)) as usize;
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + take];
            // Bytes of this block that currently hold data (the rest are zeros).
            let valid = st.size.saturating_sub(idx * b).min(b) as usize;
            let covers_all = in_block == 0 && take >= valid;
            let mut block = match st.dirty.remove(&idx) {
                Some(d) => d,
                None => match st.uploading.remove(&idx) {
                    Some((d, _superseded)) => d,
                    None if covers_all => Arc::new(Vec::new()),
                    None => match Self::source(st, idx) {
                        Source::Remote(loc) => self.fetch_block(&loc).await?,
                        Source::Local(d) => d,
                        Source::Hole => Arc::new(Vec::new()),
                    },
                },
            };
            let buf = Arc::make_mut(&mut block);
            if buf.len() < in_block + take {
                buf.resize(in_block + take, 0);
            }
            buf[in_block..in_block + take].copy_from_slice(src);
            let full = buf.len() as u64 == b && in_block + take == b as usize;
            st.dirty.insert(idx, block);
            pos += take as u64;
            if full {
                self.start_upload(st, idx).await;
            }
        }
        if end > st.size {
            st.size = end;
        }
        st.mtime = Timestamp::now();
        st.meta_dirty = true;
        while st.dirty.len() > self.config.dirty_blocks_per_file {
            let Some(&idx) = st.dirty.keys().next() else { break };
            self.start_upload(st, idx).await;
        }
        if st.uncommitted.len() >= COMMIT_BATCH {
            self.commit(st).await?;
        }
        Ok(data.len() as u32)
    }

    fn source(st: &FileState, idx: u64) -> Source {
        if let Some(d) = st.dirty.get(&idx) {
            return Source::Local(d.clone());
        }
        if let Some((d, _)) = st.uploading.get(&idx) {
            return Source::Local(d.clone());
        }
        match st.layout.get(&idx) {
            Some(loc) => Source::Remote(loc.clone()),
            None => Source::Hole,
        }
    }

    /// Hands dirty block `idx` to a background upload, waiting for an upload
    /// slot first (this is the write path's backpressure).
    async fn start_upload(self: &Arc<Self>, st: &mut FileState, idx: u64) {
        let Some(data) = st.dirty.remove(&idx) else { return };
        if extents::all_zero(&data) {
            // A block of zeros is a hole: nothing to store.
            st.layout.remove(&idx);
            st.uncommitted.insert(idx, None);
            st.uncommitted_since.get_or_insert_with(std::time::Instant::now);
            return;
        }
        let permit = match self.uploads.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let me = self.clone();
        let d = data.clone();
        let ino = st.ino;
        let task = tokio::spawn(async move { me.upload(ino, idx, d, permit).await });
        st.uploading.insert(idx, (data, task));
    }

    /// Seals one block and stores it on R distinct peers.
    async fn upload(
        self: Arc<Self>,
        ino: InodeId,
        idx: u64,
        data: Block,
        _permit: OwnedSemaphorePermit,
    ) -> Result<Uploaded> {
        let key = self.chunk_key.clone();
        let plain = data.clone();
        let sealed = tokio::task::spawn_blocking(move || codec::seal(&key, &plain))
            .await
            .map_err(|e| Error::Upload(format!("sealing task failed: {e}")))??;
        let len = sealed.bytes.len() as u64;
        let want = self.replicas as usize;
        let min = self.min_replicas() as usize;
        let mut failed: Vec<common::PeerId> = Vec::new();
        let mut stored: Vec<PeerLoc> = Vec::new();
        let mut errors = Vec::new();
        // Whether every failure so far says "no room" (then ENOSPC, not EIO).
        let mut space_only = true;
        for attempt in 0..self.config.upload_attempts.max(1) {
            // The second attempt goes at once (to other peers); later ones
            // back off.
            if attempt > 1 {
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
            let skip: Vec<common::PeerId> = stored
                .iter()
                .map(|p| p.id)
                .chain(failed.iter().copied())
                .chain(self.recently_failed())
                .collect();
            let targets = match self.place(len, &skip).await {
                Ok(t) => t.into_iter().take(want - stored.len()).collect::<Vec<_>>(),
                Err(e) => {
                    space_only &= matches!(e, Error::Dir(DirError::NoPeers { .. }));
                    errors.push(e.to_string());
                    continue;
                }
            };
            if targets.is_empty() {
                space_only = false;
                errors.push("no live peer can take the block".into());
                continue;
            }
            let puts = targets.iter().map(|p| self.peers.put(p, sealed.id, sealed.bytes.clone()));
            for (p, r) in targets.iter().zip(futures::future::join_all(puts).await) {
                match r {
                    Ok(()) => stored.push(p.clone()),
                    Err(e) => {
                        failed.push(p.id);
                        lock(&self.peer_failures).insert(p.id, std::time::Instant::now());
                        space_only &= matches!(e, Error::Peer(common::rpc::peer::PeerError::NoSpace));
                        warn!(ino = %ino, block = idx, peer = %p.id, addr = %p.addr, error = %e, "put of a block replica failed");
                        errors.push(format!("{}: {e}", p.addr));
                    }
                }
            }
            if stored.len() >= want {
                break;
            }
        }
        if stored.len() < min {
            if space_only && !errors.is_empty() {
                return Err(Error::NoSpace(format!("block {idx} of inode {ino}: {}", errors.join("; "))));
            }
            return Err(Error::Upload(format!(
                "block {idx} of inode {ino}: stored on {} of {want} peers, {min} needed ({})",
                stored.len(),
                errors.join("; ")
            )));
        }
        if stored.len() < want {
            info!(ino = %ino, block = idx, stored = stored.len(), want, "block stored degraded; repair will add the missing replicas");
        }
        debug!(ino = %ino, block = idx, chunk = %sealed.id, "block stored");
        self.cache.insert(sealed.id, data);
        Ok(Uploaded {
            stored: StoredChunk {
                id: sealed.id,
                len: len as u32,
                replicas: stored.iter().map(|p| p.id).collect(),
            },
            locs: stored,
        })
    }

    /// Peers whose put failed within [`PEER_FAILURE_MEMORY`]: skipped by
    /// placement for other blocks too, so a dead peer costs one failed put,
    /// not one per block, until dirsvc notices it is gone.
    fn recently_failed(&self) -> Vec<common::PeerId> {
        let mut f = lock(&self.peer_failures);
        f.retain(|_, at| at.elapsed() < PEER_FAILURE_MEMORY);
        f.keys().copied().collect()
    }

    /// Replicas needed to acknowledge a write (see [`FsConfig::min_replicas`]).
    fn min_replicas(&self) -> u32 {
        self.config.min_replicas.unwrap_or(self.replicas / 2 + 1).clamp(1, self.replicas.max(1))
    }

    /// Peers to store one more copy of a chunk on, excluding `skip` (peers
    /// that hold it or just failed): dirsvc's placement, or, when that
    /// cannot help (fewer than R peers up, or it names only skipped peers),
    /// the up peers with the most free space.
    async fn place(&self, len: u64, skip: &[common::PeerId]) -> Result<Vec<PeerLoc>> {
        let fresh = |p: &PeerLoc| !skip.contains(&p.id);
        match self.dir.call(|c, ctx| async move { c.placement(ctx, 1, len).await }).await {
            Ok(mut sets) if !sets.is_empty() => {
                let placed: Vec<PeerLoc> = sets.swap_remove(0).into_iter().filter(|p| fresh(p)).collect();
                if !placed.is_empty() {
                    return Ok(placed);
                }
            }
            Ok(_) | Err(Error::Dir(DirError::NoPeers { .. })) => {}
            Err(e) => return Err(e),
        }
        let mut peers = self.dir.call(|c, ctx| async move { c.list_peers(ctx).await }).await?;
        peers.retain(|p| p.state == common::rpc::dir::PeerState::Up && fresh(&p.loc));
        peers.sort_by_key(|p| std::cmp::Reverse(p.usage.free_bytes));
        Ok(peers.into_iter().map(|p| p.loc).collect())
    }

    fn apply_upload(st: &mut FileState, idx: u64, r: Result<Uploaded>, data: Block) {
        match r {
            Ok(u) => {
                st.layout.insert(
                    idx,
                    BlockLoc { index: idx, chunk: u.stored.id, len: u.stored.len, replicas: u.locs },
                );
                st.uncommitted.insert(idx, Some(u.stored));
                st.uncommitted_since.get_or_insert_with(std::time::Instant::now);
            }
            Err(e) => {
                error!(ino = %st.ino, block = idx, error = %e, "block upload failed; it stays buffered");
                // Keep the data so the next flush retries; a newer write to
                // the same block (already in `dirty`) wins.
                st.dirty.entry(idx).or_insert(data);
                st.error.get_or_insert(e);
            }
        }
    }

    /// Applies finished uploads without waiting for running ones.
    fn reap(&self, st: &mut FileState) {
        let done: Vec<u64> =
            st.uploading.iter().filter(|(_, (_, t))| t.is_finished()).map(|(i, _)| *i).collect();
        for idx in done {
            if let Some((data, task)) = st.uploading.remove(&idx) {
                let r = futures::FutureExt::now_or_never(task)
                    .unwrap_or_else(|| Ok(Err(Error::Upload("upload task vanished".into()))))
                    .unwrap_or_else(|e| Err(Error::Upload(format!("upload task failed: {e}"))));
                Self::apply_upload(st, idx, r, data);
            }
        }
    }

    /// Uploads everything dirty, waits for every upload, then commits.
    async fn flush_locked(self: &Arc<Self>, st: &mut FileState) -> Result<()> {
        let dirty: Vec<u64> = st.dirty.keys().copied().collect();
        for idx in dirty {
            self.start_upload(st, idx).await;
        }
        let uploading = std::mem::take(&mut st.uploading);
        for (idx, (data, task)) in uploading {
            let r = task.await.unwrap_or_else(|e| Err(Error::Upload(format!("upload task failed: {e}"))));
            Self::apply_upload(st, idx, r, data);
        }
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        self.commit(st).await
    }

    /// Commits finished uploads, size and mtime to dirsvc, in batches.
    async fn commit(self: &Arc<Self>, st: &mut FileState) -> Result<()> {
        if st.uncommitted.is_empty() && !st.meta_dirty {
            return Ok(());
        }
        let ino = st.ino;
        loop {
            let batch: Vec<(u64, Option<StoredChunk>)> =
                st.uncommitted.iter().take(COMMIT_BATCH).map(|(i, c)| (*i, c.clone())).collect();
            let commit = CommitLayout { size: st.size, mtime: st.mtime, blocks: batch.clone() };
            let r = self
                .dir
                .call(|c, ctx| {
                    let cm = commit.clone();
                    async move { c.commit_layout(ctx, ino, cm).await }
                })
                .await;
            let attr = match r {
                Ok(a) => a,
                Err(Error::Dir(DirError::ChunkGone(gone))) => {
                    // Garbage collection deleted a chunk this commit names (it
                    // stayed uncommitted past the grace period). Store those
                    // blocks again from the cache, or fail loudly.
                    self.restore_gone(st, gone).await?;
                    continue;
                }
                Err(Error::Dir(DirError::NotFound)) => {
                    // The file was deleted (by this or another client): what
                    // was buffered for it has nowhere to go. Its stored
                    // chunks are orphans for garbage collection.
                    debug!(ino = %ino, blocks = st.uncommitted.len(), "file deleted before its data was committed; dropping it");
                    st.uncommitted.clear();
                    st.meta_dirty = false;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            for (i, _) in &batch {
                st.uncommitted.remove(i);
            }
            st.mtime = attr.mtime;
            if st.uncommitted.is_empty() {
                break;
            }
        }
        st.meta_dirty = false;
        st.uncommitted_since = None;
        Ok(())
    }

    /// Commits the finished uploads of every open file whose oldest
    /// uncommitted block has waited [`FsConfig::commit_interval`]. Files busy
    /// in another operation are skipped (that operation commits). A failed
    /// commit is logged; the blocks stay pending for the next commit.
    pub async fn commit_idle(self: &Arc<Self>) {
        let files: Vec<_> = lock(&self.files).values().cloned().collect();
        for f in files {
            let Ok(mut st) = f.state.try_lock() else { continue };
            self.reap(&mut st);
            let due = st.uncommitted_since.is_some_and(|t| t.elapsed() >= self.config.commit_interval);
            if due {
                if let Err(e) = self.commit(&mut st).await {
                    warn!(ino = %st.ino, error = %e, "periodic commit failed; retried later");
                }
            }
        }
    }

    /// Re-stores every uncommitted block that names the collected chunk
    /// `gone`, from the plaintext in the block cache.
    ///
    /// Errors: `EIO` if the plaintext is no longer cached.
    async fn restore_gone(self: &Arc<Self>, st: &mut FileState, gone: common::ChunkId) -> Result<()> {
        let idxs: Vec<u64> = st
            .uncommitted
            .iter()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c.id == gone))
            .map(|(i, _)| *i)
            .collect();
        if idxs.is_empty() {
            return Err(Error::Upload(format!(
                "dirsvc says chunk {gone} is gone, but no pending block names it"
            )));
        }
        for idx in idxs {
            let Some(data) = self.cache.get(&gone) else {
                error!(ino = %st.ino, block = idx, chunk = %gone, "an uncommitted block was garbage-collected and is no longer cached");
                return Err(Error::Upload(format!(
                    "block {idx} was garbage-collected before it was committed"
                )));
            };
            warn!(ino = %st.ino, block = idx, chunk = %gone, "uncommitted block was garbage-collected; storing it again");
            st.uncommitted.remove(&idx);
            st.dirty.insert(idx, data);
            self.start_upload(st, idx).await;
        }
        let uploading = std::mem::take(&mut st.uploading);
        for (idx, (data, task)) in uploading {
            let r = task.await.unwrap_or_else(|e| Err(Error::Upload(format!("upload task failed: {e}"))));
            Self::apply_upload(st, idx, r, data);
        }
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sets the size of a regular file. Shrinking to a size inside a stored
    /// block rewrites that block trimmed, in the same commit as the size.
    ///
    /// A file this client has open is truncated in its buffers and the new
    /// size committed with the next flush, like a write (close-to-open for
    /// other mounts); any other file is truncated at dirsvc before this
    /// returns.
    ///
    /// Errors: `EINVAL` for a non-regular file; read, upload, dirsvc errors.
    pub async fn truncate(self: &Arc<Self>, ino: InodeId, size: u64) -> Result<()> {
        let file = lock(&self.files).get(&ino).cloned();
        if let Some(f) = &file {
            if f.opens.load(Ordering::SeqCst) > 0 {
                let mut st = f.state.lock().await;
                return self.truncate_open(&mut st, size).await;
            }
        }
        let temp;
        let f = match file {
            Some(f) => f,
            None => {
                let (attr, layout) = self.load_layout(ino).await?;
                if attr.kind != FileKind::File {
                    return Err(Error::Errno(libc::EINVAL, "not a regular file".into()));
                }
                temp = Arc::new(OpenFile {
                    opens: AtomicUsize::new(0),
                    state: tokio::sync::Mutex::new(FileState {
                        ino,
                        size: attr.size,
                        layout,
                        dirty: BTreeMap::new(),
                        uploading: BTreeMap::new(),
                        uncommitted: BTreeMap::new(),
                        meta_dirty: false,
                        mtime: attr.mtime,
                        error: None,
                        uncommitted_since: None,
                    }),
                });
                temp.clone()
            }
        };
        let mut st = f.state.lock().await;
        self.flush_locked(&mut st).await?;
        let b = self.block_size;
        let keep = size.div_ceil(b);
        if size < st.size && !size.is_multiple_of(b) {
            let idx = size / b;
            if let Some(loc) = st.layout.get(&idx).cloned() {
                let block = self.fetch_block(&loc).await?;
                let cut = (size % b) as usize;
                if block.len() > cut {
                    st.dirty.insert(idx, Arc::new(block[..cut].to_vec()));
                }
            }
        }
        st.layout.retain(|i, _| *i < keep);
        st.size = size;
        st.mtime = Timestamp::now();
        st.meta_dirty = true;
        self.flush_locked(&mut st).await
    }

    /// Truncates an open file in its buffers: blocks past the new end
    /// become holes (committed as such, so a later grow reads zeros), a
    /// block cut in the middle is trimmed into a dirty block.
    async fn truncate_open(self: &Arc<Self>, st: &mut FileState, size: u64) -> Result<()> {
        self.reap(st);
        // Another mount may have changed the file since it was opened here;
        // `stat` already shows that, so growing must start from it too.
        self.refresh_clean(st).await?;
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        let b = self.block_size;
        if size < st.size {
            let keep = size.div_ceil(b);
            let old_blocks = st.size.div_ceil(b);
            if !size.is_multiple_of(b) {
                let idx = size / b;
                let cut = (size % b) as usize;
                let block = match Self::source(st, idx) {
                    Source::Hole => None,
                    Source::Local(d) => Some(d),
                    Source::Remote(loc) => Some(self.fetch_block(&loc).await?),
                };
                if let Some(block) = block {
                    if block.len() > cut {
                        st.uploading.remove(&idx);
                        st.dirty.insert(idx, Arc::new(block[..cut].to_vec()));
                    }
                }
            }
            let gone: Vec<u64> = st
                .layout
                .range(keep..)
                .map(|(i, _)| *i)
                .chain(st.dirty.range(keep..).map(|(i, _)| *i))
                .chain(st.uploading.range(keep..).map(|(i, _)| *i))
                .chain(st.uncommitted.range(keep..).map(|(i, _)| *i))
                .filter(|i| *i < old_blocks.max(keep))
                .collect();
            for idx in gone {
                st.layout.remove(&idx);
                st.dirty.remove(&idx);
                st.uploading.remove(&idx);
                st.uncommitted.insert(idx, None);
            }
            // Blocks wholly past the new size are dropped by dirsvc with the
            // size; those listed above also cover a grow before the commit.
            st.uncommitted.retain(|i, c| *i < keep || c.is_none());
            st.uncommitted_since.get_or_insert_with(std::time::Instant::now);
        }
        st.size = size;
        st.mtime = Timestamp::now();
        st.meta_dirty = true;
        Ok(())
    }

    // ----- read path ---------------------------------------------------------------

    /// Reads up to `len` bytes at `offset` through `fh` (short at EOF).
    pub async fn read(self: &Arc<Self>, fh: u64, offset: u64, len: u32) -> Result<Vec<u8>> {
        let h = self.handle(fh)?;
        let f = self.file(h.ino)?;
        let b = self.block_size;
        let (size, sources, ahead) = {
            let mut st = f.state.lock().await;
            self.reap(&mut st);
            let size = st.size;
            let end = (offset + len as u64).min(size);
            if offset >= end {
                return Ok(Vec::new());
            }
            let sources: Vec<(u64, Source)> =
                (offset / b..end.div_ceil(b)).map(|i| (i, Self::source(&st, i))).collect();
            let sequential = h.last_read_end.swap(end, Ordering::Relaxed) == offset;
            let ahead: Vec<BlockLoc> = if sequential && self.config.readahead_blocks > 0 {
                let first = end.div_ceil(b);
                st.layout.range(first..first + self.config.readahead_blocks).map(|(_, l)| l.clone()).collect()
            } else {
                Vec::new()
            };
            (size, sources, ahead)
        };
        for loc in ahead {
            if self.cache.get(&loc.chunk).is_none() {
                let me = self.clone();
                tokio::spawn(async move {
                    let _ = me.fetch_block(&loc).await;
                });
            }
        }
        let end = (offset + len as u64).min(size);
        let fetches = sources.into_iter().map(|(i, s)| async move {
            let block = match s {
                Source::Hole => None,
                Source::Local(d) => Some(d),
                Source::Remote(loc) => Some(self.fetch_block(&loc).await?),
            };
            Ok::<_, Error>((i, block))
        });
        let blocks = futures::future::try_join_all(fetches).await?;
        let mut out = vec![0u8; (end - offset) as usize];
        for (i, block) in blocks {
            let Some(block) = block else { continue };
            let bstart = i * b;
            let from = offset.max(bstart);
            let to = end.min(bstart + block.len() as u64);
            if from < to {
                out[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&block[(from - bstart) as usize..(to - bstart) as usize]);
            }
        }
        Ok(out)
    }

    /// The plaintext of a stored block, from the cache or the first replica
    /// whose bytes verify and open.
    async fn fetch_block(self: &Arc<Self>, loc: &BlockLoc) -> Result<Block> {
        let me = self.clone();
        let loc2 = loc.clone();
        self.cache.get_or_fetch(loc.chunk, async move { me.fetch_from_replicas(loc2).await }).await
    }

    async fn fetch_from_replicas(self: Arc<Self>, loc: BlockLoc) -> Result<Block> {
        let mut replicas = loc.replicas.clone();
        if replicas.is_empty() {
            replicas = self
                .dir
                .call(|c, ctx| async move { c.chunk_locations(ctx, vec![loc.chunk]).await })
                .await?
                .into_iter()
                .next()
                .unwrap_or_default();
        }
        let mut detail = Vec::new();
        for peer in &replicas {
            let bytes = match self.peers.get(peer, loc.chunk).await {
                Ok(b) => b,
                Err(e) => {
                    detail.push(format!("{}: {e}", peer.addr));
                    continue;
                }
            };
            let key = self.chunk_key.clone();
            let id = loc.chunk;
            let opened = tokio::task::spawn_blocking(move || codec::open(&key, &id, &bytes))
                .await
                .map_err(|e| Error::Crypto(format!("open task failed: {e}")))?;
            match opened {
                Ok(plain) => return Ok(Arc::new(plain)),
                Err(e) => {
                    warn!(chunk = %loc.chunk, peer = %peer.id, addr = %peer.addr, error = %e, "bad replica: chunk failed verification; trying the next replica");
                    detail.push(format!("{}: {e}", peer.addr));
                }
            }
        }
        Err(Error::ChunkUnavailable { chunk: loc.chunk.fmt_short(), detail: detail.join("; ") })
    }
}

pub use extents::Seek;
pub use locks::{LockRequest, LockType};

#[path = "extents.rs"]
mod extents;
#[path = "locks.rs"]
mod locks;
#[path = "session.rs"]
mod session;
#[path = "xattr.rs"]
mod xattr;

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;
