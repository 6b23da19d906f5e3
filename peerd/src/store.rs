//! Chunk storage: the [`ChunkStore`] trait and [`FsChunkStore`], which keeps
//! verified chunks as plain files on a local disk.
//!
//! # On-disk layout
//!
//! ```text
//! <data_dir>/
//!   lock                  empty; held with flock(LOCK_EX) while a store is open
//!   peer-id               32 hex digits + "\n": this peer's id (see crate::peer_id)
//!   scrub-state           scrub's position in its pass (see crate::scrub)
//!   data/
//!     00/ … ff/           256 shard directories, named by the first byte of the id
//!       <64 hex digits>   one chunk: exactly its stored (sealed) bytes, no header
//!       <64 hex digits>.ob  its BLAKE3 outboard (segmented chunks only; see below)
//!       .tmp-<hex>.<pid>.<n>.<rand>   a put in progress (deleted at open)
//!   corrupted/
//!     <64 hex>.<unix secs>  a chunk file that failed verification, moved aside
//! ```
//!
//! The file name is the chunk's [`ChunkId`] in lowercase hex; the file's
//! content hashes (BLAKE3) to that name. Nothing else is stored: the file's
//! length is the chunk's length. Chunks are at most [`MAX_CHUNK_BYTES`]
//! (`codec::MAX_STORED`, the largest segmented v3 chunk) long.
//!
//! # Outboards (segment reads)
//!
//! A segmented (format v3) chunk has a sidecar `<hex id>.ob` beside it: its
//! BLAKE3 outboard (`codec::outboard`, docs/FORMATS.md), from which
//! [`ChunkStore::get_segment`] proves one segment without hashing the whole
//! chunk. A put of a v3 chunk computes it while verifying the id (the
//! outboard's root *is* the id, so that one pass replaces the hash) and
//! writes it after the chunk's rename, via a temp file and rename but
//! without fsync: it is a cache of the chunk's bytes, never the only copy
//! of anything. A missing, short, torn or stale sidecar (a crash, a chunk
//! stored before outboards) is found when a proof does not encode
//! (`OutboardMismatch`), recomputed from the chunk and written again.
//! Delete and the move to `corrupted/` remove it; open deletes orphans
//! (a sidecar whose chunk is gone). Sidecars are not counted in the used
//! bytes (0.4% of a chunk: 4 KiB for 1 MiB). v1/v2 chunks have none
//! (they cannot be read by segment), and neither has a chunk of at most
//! one 16 KiB group, whose outboard is empty (`codec::outboard_len` 0):
//! a missing sidecar then reads as the empty outboard, and a small file's
//! put writes one file, not two.
//!
//! # Durability protocol (put)
//!
//! 1. Refuse chunks over [`MAX_CHUNK_BYTES`]; hash the received bytes and
//!    refuse them unless they hash to the id. Nothing is written for a
//!    refused chunk.
//! 2. If the final file already exists and verifies, fsync its shard
//!    directory (a concurrent put of the same chunk may not have yet) and
//!    succeed without rewriting. If it exists but does not verify, it is
//!    moved to `corrupted/` and the put continues.
//! 3. Reserve the space (or fail with `NoSpace`), write the bytes to a new
//!    temp file in the shard directory (`O_CREAT|O_EXCL`, a unique name per
//!    writer), `fsync` it.
//! 4. `rename` the temp file to `<shard>/<hex id>`, then `fsync` the shard
//!    directory. Only then is the put acknowledged.
//!
//! `fetch_from` (see [`crate::fetch`]) stores the bytes it pulled from the
//! source peer through this same `put`, so a copy made for repair or drain
//! is verified and durable exactly like a client's upload.
//!
//! So after a crash (`kill -9` or power loss) every acknowledged chunk is
//! present whole under its final name; a name never points at partial
//! bytes. A crash mid-put leaves at most a temp file, which the next open
//! deletes. The shard directories are created at open, followed by an
//! `fsync` of `data/` and of the data directory; a shard directory that has
//! vanished is re-created the same way before use. A guard deletes the temp
//! file on every error path. Deletes unlink the file and `fsync` the shard
//! directory.
//!
//! # Reads and corruption
//!
//! Every `get` and `get_range` reads the whole file and re-hashes it;
//! [`ChunkStore::verify`] (used by scrub and `fetch_from`) re-hashes it
//! without keeping the bytes. A file that does not hash to its name is
//! renamed to `corrupted/<hex id>.<unix seconds>` (so it is never served
//! again), a `warn!` names the chunk, its id is pushed onto the store's
//! [`CorruptQueue`] (the `corrupt-reporter` worker tells dirsvc, see
//! [`crate::report`]), and the read fails with `HashMismatch`; the next read
//! of that chunk is `NotFound` until someone puts it again. A put that
//! stores a good copy again takes the id off the queue. At open, every
//! chunk in `corrupted/` that is not held again is queued, so reports cut
//! short by a crash are sent after the restart. Files in `corrupted/` are
//! kept for inspection; an operator may delete them at any time.
//!
//! # Listing
//!
//! [`ChunkStore::list_chunks`] pages through the held chunks in ascending id
//! order for dirsvc's garbage collection and for scrub. Since the shard is
//! the id's first byte, ascending ids are the shards in order, each sorted:
//! a page starting after id `a` reads the directory of `a`'s shard and the
//! following ones until it has `limit` (at most [`LIST_CHUNKS_MAX`]) ids,
//! and `stat`s only the ids it returns (for their mtime). It never opens a
//! chunk file.
//!
//! # Space accounting
//!
//! Used bytes and the chunk count are kept in memory, computed by walking
//! `data/` at open. Capacity is the configured number of bytes, or the size
//! of the filesystem (`statvfs`). Free space is
//! `min(filesystem available, capacity − used) − space reserved by puts in
//! progress`; a put larger than that, or one the disk refuses with ENOSPC or
//! EDQUOT, fails with `NoSpace`.
//!
//! # Concurrency
//!
//! [`FsChunkStore`] is a cheap `Clone` handle. Its blocking file work runs on
//! tokio's blocking pool (`spawn_blocking`), never on async worker threads.
//! The namespace-changing steps (final rename, unlink, move to
//! `corrupted/`) and the usage counters are serialized by one mutex; reads,
//! hashing and writes of temp files run in parallel. Only one store may have
//! a data directory open at a time (the `lock` file); a second open fails
//! with [`Error::Locked`].

use crate::error::{is_no_space, Error};
use crate::fsutil::{fsync_dir, TempFile, TEMP_PREFIX};
use crate::report::CorruptQueue;
use common::codec::{self, MAX_STORED};
use common::rpc::dir::{PeerUsage, StorageFs};
use common::rpc::peer::Bytes;
use common::ChunkId;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// Largest chunk a store accepts, in bytes: the largest sealed chunk of any
/// format ([`codec::MAX_STORED`]: a 4 MiB block in v3 with 4 KiB segments).
pub const MAX_CHUNK_BYTES: u64 = MAX_STORED as u64;

/// Suffix of a chunk's outboard sidecar file (`<hex id>.ob`).
pub const OUTBOARD_SUFFIX: &str = ".ob";

/// Directory (inside the data directory) holding the shard directories.
pub const DATA_SUBDIR: &str = "data";

/// Directory (inside the data directory) where corrupt chunk files go.
pub const CORRUPTED_SUBDIR: &str = "corrupted";

/// Lock file (inside the data directory) held while a store is open.
pub const LOCK_FILE: &str = "lock";

/// Most chunks one [`ChunkStore::list_chunks`] call returns.
pub const LIST_CHUNKS_MAX: u32 = 10_000;

/// Size of the read buffer [`ChunkStore::verify`] hashes through, in bytes.
const VERIFY_BUF: usize = 256 << 10;

/// What [`ChunkStore::verify`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// The stored file hashes to its id.
    Intact {
        /// Its length in bytes.
        len: u64,
    },
    /// The stored file did not hash to its id (or was longer than any
    /// chunk); it has been moved to `corrupted/` and queued for a report.
    Corrupt {
        /// Bytes read from it (at most [`MAX_CHUNK_BYTES`] + the read
        /// buffer).
        len: u64,
        /// BLAKE3 of the bytes read.
        actual: ChunkId,
    },
}

/// A place that keeps chunks by id and verifies them.
///
/// The methods are async and their futures are `Send`, so a server can run
/// them on any tokio worker; an implementation that touches a disk must do
/// its blocking work off the async threads (as [`FsChunkStore`] does with
/// `spawn_blocking`). The contract of each method is that of the matching
/// `PeerService` RPC; errors map to `PeerError` with `From<Error>`.
pub trait ChunkStore: Send + Sync + 'static {
    /// Stores `bytes` as chunk `id`, durably once this returns `Ok`.
    /// Storing a chunk that is already held (and verifies) succeeds without
    /// rewriting it.
    ///
    /// Errors: [`Error::TooLarge`] over [`MAX_CHUNK_BYTES`];
    /// [`Error::HashMismatch`] if `bytes` do not hash to `id` (nothing is
    /// stored); [`Error::NoSpace`]; [`Error::Io`].
    fn put(&self, id: ChunkId, bytes: Bytes) -> impl Future<Output = Result<(), Error>> + Send;

    /// The whole chunk, verified against `id`.
    ///
    /// Errors: [`Error::NotFound`]; [`Error::HashMismatch`] if the stored
    /// copy is corrupt (it is moved aside first); [`Error::Io`].
    fn get(&self, id: ChunkId) -> impl Future<Output = Result<Vec<u8>, Error>> + Send;

    /// Bytes `[offset, offset + len)` of the chunk, clamped to its end, after
    /// verifying the whole chunk. `offset` equal to the length gives an empty
    /// slice.
    ///
    /// Errors: as [`ChunkStore::get`], and [`Error::RangeOutOfBounds`] if
    /// `offset` is past the end.
    fn get_range(
        &self,
        id: ChunkId,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Vec<u8>, Error>> + Send;

    /// Whether each of `ids` is held (same order). Does not verify contents.
    ///
    /// Errors: [`Error::Io`].
    fn has(&self, ids: Vec<ChunkId>) -> impl Future<Output = Result<Vec<bool>, Error>> + Send;

    /// Deletes a chunk durably; deleting a chunk that is not held succeeds.
    ///
    /// Errors: [`Error::Io`].
    fn delete(&self, id: ChunkId) -> impl Future<Output = Result<(), Error>> + Send;

    /// Current capacity, free and used bytes and chunk count.
    ///
    /// Errors: [`Error::Io`] if the filesystem cannot be queried.
    fn usage(&self) -> impl Future<Output = Result<PeerUsage, Error>> + Send;

    /// Re-hashes the stored chunk without returning its bytes. A corrupt
    /// copy is handled exactly as a failed `get` handles it (moved aside,
    /// queued for a report) and reported as [`Verified::Corrupt`].
    ///
    /// Errors: [`Error::NotFound`]; [`Error::Io`].
    fn verify(&self, id: ChunkId) -> impl Future<Output = Result<Verified, Error>> + Send;

    /// Up to `min(limit, LIST_CHUNKS_MAX)` held chunks with id greater than
    /// `after` (from the lowest id if `None`), in ascending id order, each
    /// with its file's modification time in Unix seconds (when it was
    /// stored). A page shorter than the limit means no more chunks.
    /// Contents are not read or verified.
    ///
    /// Errors: [`Error::Io`].
    fn list_chunks(
        &self,
        after: Option<ChunkId>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(ChunkId, i64)>, Error>> + Send;

    /// The proof of segment `index` of the segmented (v3) chunk `id`
    /// (`codec::encode_segment_proof`), made from the chunk's outboard
    /// (recomputed and written again if missing or stale). Only the bytes
    /// the proof covers are checked against the id; corrupt ones are found,
    /// moved aside and reported as by [`ChunkStore::get`].
    ///
    /// Errors: [`Error::NotFound`]; [`Error::NotSegmented`] for a v1/v2
    /// chunk; [`Error::NoSuchSegment`] for an index past the last segment;
    /// [`Error::HashMismatch`]; [`Error::Io`].
    fn get_segment(&self, id: ChunkId, index: u32) -> impl Future<Output = Result<Vec<u8>, Error>> + Send;
}

/// Settings of a [`FsChunkStore`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Data directory (created if missing); see the module docs for its
    /// layout.
    pub data_dir: PathBuf,
    /// Most bytes of chunks to hold; `None` means the size of the
    /// filesystem holding `data_dir`.
    pub capacity_bytes: Option<u64>,
}

/// A [`ChunkStore`] of plain files on a local disk, laid out and made
/// durable as the module docs describe. Clones share one open store.
#[derive(Clone)]
pub struct FsChunkStore {
    inner: Arc<Inner>,
}

struct Inner {
    data: PathBuf,
    corrupted: PathBuf,
    capacity: Option<u64>,
    /// Identity of the filesystem `data` lives on (see [`storage_fs_id`]).
    fs_id: [u8; 16],
    acct: Mutex<Accounting>,
    /// Chunks moved aside and not yet reported to dirsvc.
    corrupt: CorruptQueue,
    /// Held open for its flock; released when the last handle drops.
    _lock: File,
}

/// In-memory usage counters, guarded by `Inner::acct`.
#[derive(Debug, Default)]
struct Accounting {
    /// Sum of the lengths of stored chunk files, in bytes.
    used: u64,
    /// Number of stored chunk files.
    chunks: u64,
    /// Bytes promised to puts that are writing their temp files.
    reserved: u64,
}

/// Size of the filesystem holding the data directory, in bytes.
#[derive(Clone, Copy, Debug)]
struct FsStats {
    total: u64,
    avail: u64,
}

/// Runs blocking file work on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Error::Task(e.to_string())),
    }
}

impl FsChunkStore {
    /// Opens (creating if needed) the store in `config.data_dir`: takes the
    /// lock, creates missing directories, deletes temp files left by a
    /// crash and counts the stored chunks.
    ///
    /// Errors: [`Error::Locked`] if another store has the directory open;
    /// [`Error::Io`].
    pub async fn open(config: StoreConfig) -> Result<FsChunkStore, Error> {
        let inner = blocking(move || Inner::open(config)).await?;
        Ok(FsChunkStore { inner: Arc::new(inner) })
    }

    /// Where chunk `id` lives (whether or not it is stored):
    /// `<data_dir>/data/<first 2 hex digits>/<64 hex digits>`.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.inner.chunk_path(id)
    }

    /// The directory corrupt chunk files are moved to.
    pub fn corrupted_dir(&self) -> &Path {
        &self.inner.corrupted
    }

    /// The queue of chunks found corrupt and not yet reported to dirsvc
    /// (drained by the `corrupt-reporter` worker of a running peer).
    pub fn corrupt_queue(&self) -> &CorruptQueue {
        &self.inner.corrupt
    }

    /// Number of live handles to this open store (this one included). The
    /// data directory stays locked until it drops to zero.
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }
}

impl ChunkStore for FsChunkStore {
    async fn put(&self, id: ChunkId, bytes: Bytes) -> Result<(), Error> {
        let inner = self.inner.clone();
        blocking(move || inner.put(id, &bytes)).await
    }

    async fn get(&self, id: ChunkId) -> Result<Vec<u8>, Error> {
        let inner = self.inner.clone();
        blocking(move || inner.get(id)).await
    }

    async fn get_range(&self, id: ChunkId, offset: u64, len: u32) -> Result<Vec<u8>, Error> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut bytes = inner.get(id)?;
            let total = bytes.len() as u64;
            if offset > total {
                return Err(Error::RangeOutOfBounds { id, offset, len: total });
            }
            // Both bounds are ≤ total, which came from a usize.
            let end = offset.saturating_add(u64::from(len)).min(total) as usize;
            bytes.truncate(end);
            bytes.drain(..offset as usize);
            Ok(bytes)
        })
        .await
    }

    async fn has(&self, ids: Vec<ChunkId>) -> Result<Vec<bool>, Error> {
        let inner = self.inner.clone();
        blocking(move || ids.iter().map(|id| inner.has(id)).collect()).await
    }

    async fn delete(&self, id: ChunkId) -> Result<(), Error> {
        let inner = self.inner.clone();
        blocking(move || inner.delete(id)).await
    }

    async fn usage(&self) -> Result<PeerUsage, Error> {
        let inner = self.inner.clone();
        blocking(move || inner.usage()).await
    }

    async fn verify(&self, id: ChunkId) -> Result<Verified, Error> {
        let inner = self.inner.clone();
        blocking(move || inner.verify(id)).await
    }

    async fn list_chunks(&self, after: Option<ChunkId>, limit: u32) -> Result<Vec<(ChunkId, i64)>, Error> {
        let inner = self.inner.clone();
        blocking(move || inner.list_chunks(after, limit)).await
    }

    async fn get_segment(&self, id: ChunkId, index: u32) -> Result<Vec<u8>, Error> {
        let inner = self.inner.clone();
        blocking(move || inner.get_segment(id, index)).await
    }
}

/// Space reserved for one put; given back on drop unless committed.
struct Reservation<'a> {
    inner: &'a Inner,
    bytes: u64,
}

impl Reservation<'_> {
    /// Turns the reservation into used space for a chunk that was just
    /// renamed into place (`acct` is the held accounting lock).
    fn commit(mut self, acct: &mut Accounting) {
        acct.reserved = acct.reserved.saturating_sub(self.bytes);
        acct.used = acct.used.saturating_add(self.bytes);
        acct.chunks += 1;
        self.bytes = 0;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut acct = self.inner.lock_acct();
            acct.reserved = acct.reserved.saturating_sub(self.bytes);
        }
    }
}

impl Inner {
    fn open(config: StoreConfig) -> Result<Inner, Error> {
        let root = config.data_dir;
        fs::create_dir_all(&root).map_err(Error::io("create directory", &root))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked(root)),
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path)(e)),
        }

        let data = root.join(DATA_SUBDIR);
        let corrupted = root.join(CORRUPTED_SUBDIR);
        let mut created = create_dir_if_missing(&data)?;
        created |= create_dir_if_missing(&corrupted)?;
        if created {
            fsync_dir(&root)?;
        }
        let mut shards_created = false;
        for b in 0..=255u8 {
            shards_created |= create_dir_if_missing(&data.join(hex::encode([b])))?;
        }
        if shards_created {
            fsync_dir(&data)?;
        }

        let fs_id = storage_fs_id(&data)?;
        let inner = Inner {
            data,
            corrupted,
            capacity: config.capacity_bytes,
            fs_id,
            acct: Mutex::new(Accounting::default()),
            corrupt: CorruptQueue::new(),
            _lock: lock,
        };
        let removed = remove_temp_files(&root)? + inner.scan()?;
        inner.queue_unreported_corrupt()?;
        let acct = inner.lock_acct();
        info!(
            data_dir = %root.display(),
            chunks = acct.chunks,
            used_bytes = acct.used,
            temp_files_removed = removed,
            corrupt_to_report = inner.corrupt.len(),
            "chunk store opened"
        );
        drop(acct);
        Ok(inner)
    }

    /// Counts the chunks under `data/` and deletes leftover temp files;
    /// returns how many temp files it deleted.
    fn scan(&self) -> Result<usize, Error> {
        let mut acct = Accounting::default();
        let mut removed = 0;
        for shard in fs::read_dir(&self.data).map_err(Error::io("list", &self.data))? {
            let shard = shard.map_err(Error::io("list", &self.data))?;
            let shard_path = shard.path();
            if !shard_path.is_dir() {
                warn!(path = %shard_path.display(), "unexpected file in data directory ignored");
                continue;
            }
            let shard_name = shard.file_name();
            removed += remove_temp_files(&shard_path)?;
            for entry in fs::read_dir(&shard_path).map_err(Error::io("list", &shard_path))? {
                let entry = entry.map_err(Error::io("list", &shard_path))?;
                let name = entry.file_name();
                let meta = entry.metadata().map_err(Error::io("stat", entry.path()))?;
                let is_chunk = meta.is_file()
                    && name
                        .to_str()
                        .and_then(parse_chunk_name)
                        .is_some_and(|id| id.to_hex().as_bytes()[..2] == *shard_name.as_bytes());
                if is_chunk {
                    acct.used = acct.used.saturating_add(meta.len());
                    acct.chunks += 1;
                } else if let Some(chunk) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(OUTBOARD_SUFFIX))
                    .filter(|n| parse_chunk_name(n).is_some())
                {
                    // A sidecar whose chunk is gone (a crash between the
                    // chunk's removal and its own) is removed.
                    if !shard_path.join(chunk).exists() {
                        let _ = fs::remove_file(entry.path());
                    }
                } else {
                    warn!(path = %entry.path().display(), "unexpected file in shard directory ignored");
                }
            }
        }
        *self.lock_acct() = acct;
        Ok(removed)
    }

    /// Queues for a report every chunk in `corrupted/` that is not held
    /// again (its report may not have reached dirsvc before a restart).
    fn queue_unreported_corrupt(&self) -> Result<(), Error> {
        for entry in fs::read_dir(&self.corrupted).map_err(Error::io("list", &self.corrupted))? {
            let entry = entry.map_err(Error::io("list", &self.corrupted))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.split('.').next()).and_then(parse_chunk_name) else {
                continue;
            };
            if !self.has(&id)? {
                self.corrupt.push(id);
            }
        }
        Ok(())
    }

    fn lock_acct(&self) -> MutexGuard<'_, Accounting> {
        // The guarded section is plain arithmetic and syscalls that return
        // errors; a poisoned lock still holds consistent counters.
        self.acct.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.data.join(&hex[..2]).join(hex)
    }

    fn fs_stats(&self) -> Result<FsStats, Error> {
        statvfs(&self.data)
    }

    /// Free bytes for new chunks given the counters and filesystem stats.
    fn available(&self, acct: &Accounting, fs: FsStats) -> u64 {
        let capacity = self.capacity.unwrap_or(fs.total);
        fs.avail.min(capacity.saturating_sub(acct.used)).saturating_sub(acct.reserved)
    }

    fn reserve(&self, bytes: u64) -> Result<Reservation<'_>, Error> {
        let fs = self.fs_stats()?;
        let mut acct = self.lock_acct();
        if bytes > self.available(&acct, fs) {
            return Err(Error::NoSpace { needed: bytes });
        }
        acct.reserved += bytes;
        Ok(Reservation { inner: self, bytes })
    }

    fn usage(&self) -> Result<PeerUsage, Error> {
        let fs = self.fs_stats()?;
        let acct = self.lock_acct();
        Ok(PeerUsage {
            capacity_bytes: self.capacity.unwrap_or(fs.total),
            free_bytes: self.available(&acct, fs),
            used_bytes: acct.used,
            chunks: acct.chunks,
            fs: Some(StorageFs { id: self.fs_id, total_bytes: fs.total, avail_bytes: fs.avail }),
            scrub: None,
        })
    }

    fn has(&self, id: &ChunkId) -> Result<bool, Error> {
        let path = self.chunk_path(id);
        match fs::symlink_metadata(&path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("stat", path)(e)),
        }
    }

    fn put(&self, id: ChunkId, bytes: &[u8]) -> Result<(), Error> {
        let len = bytes.len() as u64;
        if len > MAX_CHUNK_BYTES {
            return Err(Error::TooLarge { len, limit: MAX_CHUNK_BYTES });
        }
        // A v3 chunk's outboard has the id as its root: computing it is
        // the verification (one tree pass instead of a hash and a tree).
        let (actual, outboard) = if bytes.get(4).is_some_and(|&v| codec::is_segmented(v)) {
            let (root, ob) = codec::outboard_with_root(bytes);
            (root, Some(ob))
        } else {
            (ChunkId::of(bytes), None)
        };
        if actual != id {
            return Err(Error::HashMismatch { expected: id, actual });
        }
        let path = self.chunk_path(&id);
        let shard = shard_dir(&path);

        match self.get(id) {
            Ok(_) => {
                // Already held. Its data was fsynced before its rename, but
                // the put that renamed it may still be before its directory
                // fsync: do it here too before acknowledging.
                return fsync_dir(&shard);
            }
            // A corrupt copy has just been moved aside: write a good one.
            Err(Error::NotFound(_)) | Err(Error::HashMismatch { .. }) => {}
            Err(e) => return Err(e),
        }

        let reservation = self.reserve(len)?;
        let no_space_or = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |e: io::Error| {
                if is_no_space(&e) {
                    Error::NoSpace { needed: len }
                } else {
                    Error::Io { op, path: p, source: e }
                }
            }
        };
        let stem = id.to_hex();
        let (tmp, mut file) = match TempFile::create(&shard, &stem) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The shard directory vanished: re-create it durably.
                fs::create_dir_all(&shard).map_err(Error::io("create directory", &shard))?;
                fsync_dir(&self.data)?;
                TempFile::create(&shard, &stem)
            }
            r => r,
        }
        .map_err(no_space_or("create", &shard))?;
        file.write_all(bytes).and_then(|()| file.sync_all()).map_err(no_space_or("write", tmp.path()))?;
        drop(file);

        {
            let mut acct = self.lock_acct();
            match fs::symlink_metadata(&path) {
                // A concurrent put of the same (verified) bytes won the
                // race; ours is dropped with its temp file.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::rename(tmp.path(), &path).map_err(Error::io("rename", tmp.path()))?;
                    tmp.disarm();
                    reservation.commit(&mut acct);
                    // Held and good again: an unsent report would be wrong.
                    self.corrupt.cancel(&id);
                }
                Err(e) => return Err(Error::io("stat", &path)(e)),
            }
        }
        fsync_dir(&shard)?;
        if let Some(ob) = outboard.filter(|ob| !ob.is_empty()) {
            self.write_outboard(&id, &ob);
        }
        tracing::event!(
            target: "p2pfs::_events::chunk_stored",
            tracing::Level::DEBUG,
            chunk = %id.to_hex(),
            bytes = len
        );
        Ok(())
    }

    /// The stored bytes of chunk `id`, unverified, with the file's path
    /// and metadata (for [`Inner::quarantine`]). Reads at most one byte
    /// more than any chunk can have: a longer file is corrupt whatever its
    /// contents, and is not read into memory.
    ///
    /// Errors: `NotFound`; I/O errors.
    fn read_chunk_file(&self, id: ChunkId) -> Result<(Vec<u8>, PathBuf, fs::Metadata), Error> {
        let path = self.chunk_path(&id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound(id)),
            Err(e) => return Err(Error::io("open", path)(e)),
        };
        let meta = file.metadata().map_err(Error::io("stat", &path))?;
        let mut bytes = Vec::with_capacity(meta.len().min(MAX_CHUNK_BYTES + 1) as usize);
        file.take(MAX_CHUNK_BYTES + 1).read_to_end(&mut bytes).map_err(Error::io("read", &path))?;
        Ok((bytes, path, meta))
    }

    fn get(&self, id: ChunkId) -> Result<Vec<u8>, Error> {
        let (bytes, path, meta) = self.read_chunk_file(id)?;
        let actual = ChunkId::of(&bytes);
        if actual == id && bytes.len() as u64 <= MAX_CHUNK_BYTES {
            return Ok(bytes);
        }
        self.quarantine(id, &path, &meta);
        Err(Error::HashMismatch { expected: id, actual })
    }

    /// Re-hashes the chunk file through a fixed buffer; see
    /// [`ChunkStore::verify`].
    fn verify(&self, id: ChunkId) -> Result<Verified, Error> {
        let path = self.chunk_path(&id);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound(id)),
            Err(e) => return Err(Error::io("open", path)(e)),
        };
        let meta = file.metadata().map_err(Error::io("stat", &path))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; VERIFY_BUF];
        let mut len = 0u64;
        // Stops one buffer past the largest chunk: such a file is corrupt
        // whatever it holds.
        while len <= MAX_CHUNK_BYTES {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read", &path)(e)),
            };
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        let actual = ChunkId(*hasher.finalize().as_bytes());
        if actual == id && len <= MAX_CHUNK_BYTES {
            return Ok(Verified::Intact { len });
        }
        self.quarantine(id, &path, &meta);
        Ok(Verified::Corrupt { len, actual })
    }

    /// See [`ChunkStore::list_chunks`].
    fn list_chunks(&self, after: Option<ChunkId>, limit: u32) -> Result<Vec<(ChunkId, i64)>, Error> {
        let limit = limit.min(LIST_CHUNKS_MAX) as usize;
        let mut out = Vec::with_capacity(limit.min(1024));
        if limit == 0 {
            return Ok(out);
        }
        let first_shard = after.map_or(0, |a| a.0[0]);
        for shard in first_shard..=u8::MAX {
            let dir = self.data.join(hex::encode([shard]));
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                // Vanished shard: it holds nothing (a put re-creates it).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("list", &dir)(e)),
            };
            let mut ids = Vec::new();
            for entry in entries {
                let entry = entry.map_err(Error::io("list", &dir))?;
                let name = entry.file_name();
                if let Some(id) = name.to_str().and_then(parse_chunk_name) {
                    if id.0[0] == shard && after.is_none_or(|a| id > a) {
                        ids.push(id);
                    }
                }
            }
            ids.sort_unstable();
            for id in ids {
                let path = dir.join(id.to_hex());
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_file() => out.push((id, m.mtime())),
                    Ok(_) => {}
                    // Deleted or moved aside since the directory was read.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("stat", path)(e)),
                }
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Moves the corrupt file at `path` (whose metadata when read was
    /// `seen`) to `corrupted/` and queues its id for a report to dirsvc,
    /// unless it has been replaced or moved since (whoever moved it queued
    /// it). Failures are logged: the caller reports the mismatch either way.
    fn quarantine(&self, id: ChunkId, path: &Path, seen: &fs::Metadata) {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let dest = self.corrupted.join(format!("{}.{secs}", id.to_hex()));
        {
            let mut acct = self.lock_acct();
            match fs::symlink_metadata(path) {
                Ok(now) if now.dev() == seen.dev() && now.ino() == seen.ino() => {}
                // Already moved by a concurrent reader, or replaced by a put.
                _ => return,
            }
            if let Err(e) = fs::rename(path, &dest) {
                tracing::error!(
                    chunk = %id.to_hex(), path = %path.display(), error = %e,
                    "chunk failed verification and cannot be moved aside"
                );
                // dirsvc must still learn that this replica is bad.
                self.corrupt.push(id);
                return;
            }
            acct.used = acct.used.saturating_sub(seen.len());
            acct.chunks = acct.chunks.saturating_sub(1);
            remove_outboard(path);
        }
        for dir in [shard_dir(path), self.corrupted.clone()] {
            if let Err(e) = fsync_dir(&dir) {
                warn!(error = %e, "cannot fsync after moving a corrupt chunk");
            }
        }
        warn!(
            chunk = %id.to_hex(),
            moved_to = %dest.display(),
            "stored chunk failed BLAKE3 verification; moved aside"
        );
        self.corrupt.push(id);
    }

    fn delete(&self, id: ChunkId) -> Result<(), Error> {
        let path = self.chunk_path(&id);
        {
            let mut acct = self.lock_acct();
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io("stat", &path)(e)),
            };
            fs::remove_file(&path).map_err(Error::io("remove", &path))?;
            acct.used = acct.used.saturating_sub(meta.len());
            acct.chunks = acct.chunks.saturating_sub(1);
            remove_outboard(&path);
        }
        fsync_dir(&shard_dir(&path))
    }

    /// The proof of segment `index` of chunk `id` from the header, the
    /// segment's groups and the outboard alone (a 4 KiB random read then
    /// costs the peer about 70 KiB of reads, not the whole chunk).
    /// `None` for anything out of the ordinary (no file, not v3, no or a
    /// stale outboard, bytes that do not match): [`Inner::get_segment`]
    /// then reads the whole chunk and says what is wrong.
    fn get_segment_quick(&self, id: ChunkId, index: u32) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let path = self.chunk_path(&id);
        let file = File::open(&path).ok()?;
        let len = file.metadata().ok()?.len();
        if len > MAX_CHUNK_BYTES {
            return None;
        }
        let mut header = [0u8; codec::HEADER_LEN_V3];
        file.read_exact_at(&mut header, 0).ok()?;
        if !codec::is_segmented(header[4]) {
            return None;
        }
        let outboard = match fs::read(outboard_path(&path)) {
            Ok(ob) => ob,
            Err(e) if e.kind() == io::ErrorKind::NotFound && codec::outboard_len(len) == 0 => Vec::new(),
            Err(_) => return None,
        };
        codec::encode_segment_proof_at(&id, &file, len, &header, &outboard, index).ok().flatten()
    }

    /// See [`ChunkStore::get_segment`]. Reads the whole chunk file (from
    /// the page cache, for a chunk read recently) but hashes only the
    /// groups the proof covers.
    fn get_segment(&self, id: ChunkId, index: u32) -> Result<Vec<u8>, Error> {
        if let Some(proof) = self.get_segment_quick(id, index) {
            return Ok(proof);
        }
        let (bytes, path, meta) = self.read_chunk_file(id)?;
        if bytes.len() as u64 > MAX_CHUNK_BYTES {
            let actual = ChunkId::of(&bytes);
            self.quarantine(id, &path, &meta);
            return Err(Error::HashMismatch { expected: id, actual });
        }
        // A v1/v2 chunk has no segments. Its bytes are not hashed here: a
        // corrupt header byte found here is found by the next get or scrub.
        if !bytes.get(4).is_some_and(|&v| codec::is_segmented(v)) {
            return Err(Error::NotSegmented {
                id,
                reason: "it is not in a segmented format (v3 or v4)".into(),
            });
        }
        let ob_path = outboard_path(&path);
        let outboard = fs::read(&ob_path).unwrap_or_default();
        let first = codec::encode_segment_proof(&id, &bytes, &outboard, index);
        let retry = match first {
            Ok(proof) => return Ok(proof),
            Err(common::Error::OutboardMismatch(_)) => {
                // Missing or stale sidecar over good bytes: rebuild it.
                let (root, ob) = codec::outboard_with_root(&bytes);
                if root != id {
                    self.quarantine(id, &path, &meta);
                    return Err(Error::HashMismatch { expected: id, actual: root });
                }
                let r = codec::encode_segment_proof(&id, &bytes, &ob, index);
                self.write_outboard(&id, &ob);
                r
            }
            e => e,
        };
        retry.map_err(|e| match e {
            common::Error::HashMismatch { actual, .. } => {
                self.quarantine(id, &path, &meta);
                Error::HashMismatch { expected: id, actual }
            }
            common::Error::NoSuchSegment { index, segments } => Error::NoSuchSegment { id, index, segments },
            // A v3 header that does not parse, or a length that is not the
            // header's: these bytes are not the chunk (its id came from a
            // well-formed one). Check the whole file to be sure.
            other => {
                let actual = ChunkId::of(&bytes);
                if actual != id {
                    self.quarantine(id, &path, &meta);
                    Error::HashMismatch { expected: id, actual }
                } else {
                    Error::NotSegmented { id, reason: other.to_string() }
                }
            }
        })
    }

    /// Writes chunk `id`'s outboard sidecar (temp file and rename, no
    /// fsync: it is recomputed whenever it does not match). A failure is
    /// logged only: the next segment read recomputes it.
    fn write_outboard(&self, id: &ChunkId, outboard: &[u8]) {
        if outboard.is_empty() {
            // A chunk of one group needs none: drop a stale one.
            remove_outboard(&self.chunk_path(id));
            return;
        }
        let path = outboard_path(&self.chunk_path(id));
        let shard = shard_dir(&path);
        let r = TempFile::create(&shard, &format!("{}{OUTBOARD_SUFFIX}", id.to_hex())).and_then(
            |(tmp, mut f)| {
                f.write_all(outboard)?;
                drop(f);
                tmp.persist(&path)
            },
        );
        if let Err(e) = r {
            warn!(chunk = %id.to_hex(), error = %e, "cannot write chunk outboard; it is recomputed on the next segment read");
        }
        // The chunk may have been deleted meanwhile: drop an orphan.
        if !self.chunk_path(id).exists() {
            let _ = fs::remove_file(&path);
        }
    }
}

/// The outboard sidecar of the chunk file at `chunk_path`.
fn outboard_path(chunk_path: &Path) -> PathBuf {
    let mut p = chunk_path.as_os_str().to_owned();
    p.push(OUTBOARD_SUFFIX);
    PathBuf::from(p)
}

/// Removes the outboard sidecar of the chunk file at `chunk_path`, if any;
/// failures are logged (open removes orphans).
fn remove_outboard(chunk_path: &Path) {
    let p = outboard_path(chunk_path);
    if let Err(e) = fs::remove_file(&p) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!(path = %p.display(), error = %e, "cannot remove chunk outboard");
        }
    }
}

/// The chunk id named by a chunk file name: exactly 64 lowercase hex digits.
fn parse_chunk_name(name: &str) -> Option<ChunkId> {
    if name.len() != 2 * ChunkId::LEN || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    name.parse().ok()
}

/// The shard directory of a chunk path.
fn shard_dir(chunk_path: &Path) -> PathBuf {
    chunk_path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Creates `dir` if it does not exist; returns whether it did.
fn create_dir_if_missing(dir: &Path) -> Result<bool, Error> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io("create directory", dir)(e)),
    }
}

/// Deletes the temp files ([`TEMP_PREFIX`]) directly in `dir`, fsyncing it
/// if any were found; returns how many. Only safe with the store lock held.
fn remove_temp_files(dir: &Path) -> Result<usize, Error> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(Error::io("list", dir))? {
        let entry = entry.map_err(Error::io("list", dir))?;
        if entry.file_name().as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
            let p = entry.path();
            fs::remove_file(&p).map_err(Error::io("remove", &p))?;
            removed += 1;
        }
    }
    if removed > 0 {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

/// Size and available space of the filesystem holding `path`, in bytes.
/// Where this machine's identity is read from, first found first: the
/// systemd machine id, the D-Bus one, then the kernel's boot id (which
/// changes at every boot, but so may device numbers).
const MACHINE_ID_FILES: &[&str] =
    &["/etc/machine-id", "/var/lib/dbus/machine-id", "/proc/sys/kernel/random/boot_id"];

/// The identity of the filesystem holding `dir`, as reported to dirsvc in
/// `StorageFs::id`: the first 16 bytes of BLAKE3 (in derive-key mode) over
/// the machine id and the device number (`st_dev`) of `dir`. Peers on one
/// filesystem of one machine get the same id, whatever their network
/// namespace; different machines or filesystems get different ones.
///
/// Errors: [`Error::Io`] if `dir` cannot be `stat`ed.
fn storage_fs_id(dir: &Path) -> Result<[u8; 16], Error> {
    let dev = fs::metadata(dir).map_err(Error::io("stat", dir))?.dev();
    let machine = MACHINE_ID_FILES
        .iter()
        .find_map(|f| fs::read_to_string(f).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
        .unwrap_or_default();
    let mut h = blake3::Hasher::new_derive_key("p2pfs 2026-12-06 peer storage filesystem id v1");
    h.update(machine.as_bytes());
    h.update(&[0]);
    h.update(&dev.to_le_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Ok(id)
}

// The statvfs field types are u64 on 64-bit Linux but narrower elsewhere;
// `u64::from` keeps this portable.
#[allow(clippy::useless_conversion)]
fn statvfs(path: &Path) -> Result<FsStats, Error> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| Error::Io {
        op: "statvfs",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` points to
    // writable memory of the right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::io("statvfs", path)(io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it filled the struct (which was also
    // zero-initialized, a valid bit pattern for it).
    let st = unsafe { st.assume_init() };
    let frsize = u64::from(st.f_frsize);
    Ok(FsStats {
        total: u64::from(st.f_blocks).saturating_mul(frsize),
        avail: u64::from(st.f_bavail).saturating_mul(frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> StoreConfig {
        StoreConfig { data_dir: dir.to_path_buf(), capacity_bytes: None }
    }

    #[tokio::test]
    async fn chunk_files_live_under_their_shard_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsChunkStore::open(config(dir.path())).await.unwrap();
        let bytes = b"layout".to_vec();
        let id = ChunkId::of(&bytes);
        store.put(id, bytes.clone().into()).await.unwrap();
        let hex = id.to_hex();
        let expected = dir.path().join("data").join(&hex[..2]).join(&hex);
        assert_eq!(store.chunk_path(&id), expected);
        assert_eq!(fs::read(&expected).unwrap(), bytes);
        assert_eq!(fs::read_dir(dir.path().join("data")).unwrap().count(), 256);
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = FsChunkStore::open(config(dir.path())).await.unwrap();
        assert!(matches!(FsChunkStore::open(config(dir.path())).await, Err(Error::Locked(_))));
        drop(first);
        FsChunkStore::open(config(dir.path())).await.unwrap();
    }

    #[tokio::test]
    async fn capacity_limits_puts_and_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsChunkStore::open(StoreConfig {
            data_dir: dir.path().to_path_buf(),
            capacity_bytes: Some(1000),
        })
        .await
        .unwrap();
        let a = vec![1u8; 600];
        let b = vec![2u8; 600];
        store.put(ChunkId::of(&a), a.into()).await.unwrap();
        let u = store.usage().await.unwrap();
        assert_eq!((u.capacity_bytes, u.used_bytes, u.chunks), (1000, 600, 1));
        assert_eq!(u.free_bytes, 400);
        let id_b = ChunkId::of(&b);
        assert!(matches!(store.put(id_b, b.into()).await, Err(Error::NoSpace { needed: 600 })));
        assert!(!store.has(vec![id_b]).await.unwrap()[0]);
        assert_eq!(store.usage().await.unwrap().used_bytes, 600);
    }

    #[tokio::test]
    async fn stores_on_one_filesystem_report_the_same_filesystem_id() {
        let dir = tempfile::tempdir().unwrap();
        let a = FsChunkStore::open(config(&dir.path().join("a"))).await.unwrap();
        let b = FsChunkStore::open(config(&dir.path().join("b"))).await.unwrap();
        let (ua, ub) = (a.usage().await.unwrap(), b.usage().await.unwrap());
        let (fa, fb) = (ua.fs.expect("fs reported"), ub.fs.expect("fs reported"));
        assert_eq!(fa.id, fb.id);
        assert!(fa.total_bytes > 0 && fa.avail_bytes <= fa.total_bytes);
        // /dev/shm is another filesystem (tmpfs) on every Linux machine.
        let other = tempfile::tempdir_in("/dev/shm").unwrap();
        let c = FsChunkStore::open(config(other.path())).await.unwrap();
        assert_ne!(c.usage().await.unwrap().fs.unwrap().id, fa.id);
    }

    #[tokio::test]
    async fn concurrent_puts_of_one_chunk_count_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsChunkStore::open(config(dir.path())).await.unwrap();
        let bytes = vec![9u8; 100_000];
        let id = ChunkId::of(&bytes);
        let puts: Vec<_> = (0..8)
            .map(|_| {
                let (s, b) = (store.clone(), bytes.clone());
                tokio::spawn(async move { s.put(id, b.into()).await })
            })
            .collect();
        for p in puts {
            p.await.unwrap().unwrap();
        }
        let u = store.usage().await.unwrap();
        assert_eq!((u.used_bytes, u.chunks), (100_000, 1));
        let shard = store.chunk_path(&id).parent().unwrap().to_path_buf();
        assert_eq!(fs::read_dir(shard).unwrap().count(), 1, "no temp files left");
    }
}
