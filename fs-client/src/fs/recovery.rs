//! Data that could not be stored by unmount: kept, sealed, in a recovery
//! file on the client's disk, and stored by the next mount.
//!
//! When a mount ends with buffered data it could not store (peers full or
//! unreachable), [`Fs::unstored`] collects every such file's pending blocks,
//! size and mtime, and [`RecoveryDir::keep`] writes one file per inode under
//! `<recovery dir>/<volume id>/<inode>.p2pr` (mode 0600, written to a
//! temporary name, fsynced, renamed, directory fsynced). The next mount of
//! the volume calls [`Fs::recover`] before it serves anything: each kept
//! file is applied to the file as buffered writes and flushed; a stored one
//! is deleted, one that still cannot be stored stays (and is retried in the
//! background and kept again at unmount).
//!
//! Format v2 (docs/FORMATS.md, "Recovery files"; integers little-endian):
//!
//! ```text
//! "P2PR" | version u8 = 2 | 3 zero bytes | volume id (16 B) | inode u64
//! then records, each: length u32 | sealed record (codec::seal_bytes_ad)
//! ```
//!
//! Every record is sealed with XChaCha20-Poly1305 under the recovery key
//! of the volume's newest key epoch (its header names the epoch) with
//! associated data `"p2pfs recovery v2" ‖ volume id ‖ inode ‖ record number
//! (u64)`, so a record cannot be moved to another file, position or
//! volume. Record 0 is the header ([`HeaderV1`], unchanged), records 1..=n
//! the blocks ([`BlockV2`]: a kept chunk carries its key epoch); the
//! header's block count makes a truncated file fail to load rather than
//! load partly. Plaintext (names and data) never touches the disk. Files
//! of format v1 (before key epochs: records sealed under epoch 0, "p2pfs
//! recovery v1" in the associated data, kept chunks without an epoch)
//! still load.

use super::buffer::{Content, Pending};
use super::{lock, Fs, OpenFile, Stored};
use crate::error::{Error, Result};
use bincode::Options;
use common::codec;
use common::keyring::VolumeKeys;
use common::rpc::dir::{BlockLoc, DirError, StoredChunk};
use common::time::Timestamp;
use common::{ChunkId, InodeId, PeerId, VolumeId};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

/// Magic bytes at the start of every recovery file.
pub const MAGIC: &[u8; 4] = b"P2PR";
/// The format version written.
pub const VERSION: u8 = 2;
/// The first format version (read only).
pub const VERSION_V1: u8 = 1;
/// File name extension of recovery files.
pub const EXTENSION: &str = "p2pr";
/// Plaintext bytes one record may carry (a block of the largest block
/// size plus its encoding).
const RECORD_MAX: usize = common::config::MAX_BLOCK_SIZE as usize + 4096;
/// Bytes of the fixed header: magic, version, 3 zeros, volume id, inode.
const FIXED_LEN: usize = 4 + 1 + 3 + 16 + 8;

/// One block of a file that is not stored yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeptBlock {
    /// The block becomes a hole.
    Hole,
    /// The block's plaintext.
    Data(Vec<u8>),
    /// A chunk that was stored on peers but not committed, whose plaintext
    /// was no longer at hand (never an inline chunk: those are kept as
    /// their plaintext). `inline` is always `None`.
    Chunk(StoredChunk),
}

/// Everything of one file that this client could not store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unstored {
    /// The file.
    pub ino: InodeId,
    /// Its last known path below the volume's root (for messages).
    pub path: String,
    /// Its size in bytes as this client last saw it.
    pub size: u64,
    /// Its modification time as this client last set it.
    pub mtime: Timestamp,
    /// Blocks to apply, by index.
    pub blocks: Vec<(u64, KeptBlock)>,
    /// Why it could not be stored (the last error), for messages.
    pub error: String,
}

impl Unstored {
    /// Plaintext bytes kept (data blocks only).
    pub fn data_bytes(&self) -> u64 {
        self.blocks.iter().map(|(_, b)| if let KeptBlock::Data(d) = b { d.len() as u64 } else { 0 }).sum()
    }
}

/// Record 0 of a recovery file.
#[derive(Serialize, Deserialize)]
struct HeaderV1 {
    path: Vec<u8>,
    size: u64,
    mtime_secs: i64,
    mtime_nanos: u32,
    blocks: u64,
    error: String,
}

/// Records 1..=n of a recovery file of format v2.
#[derive(Serialize, Deserialize)]
enum BlockV2 {
    Hole(u64),
    Data(u64, #[serde(with = "serde_bytes")] Vec<u8>),
    Chunk(u64, StoredChunkV2),
}

/// A kept chunk as format v2 writes it: the wire `StoredChunk` of
/// protocols 9 to 11 (before inline chunks), frozen here so the file
/// format does not follow the protocol.
#[derive(Serialize, Deserialize)]
struct StoredChunkV2 {
    id: ChunkId,
    len: u32,
    replicas: Vec<PeerId>,
    epoch: u32,
    mac: [u8; 32],
}

/// Records 1..=n of a recovery file of format v1 (read only).
#[derive(Serialize, Deserialize)]
enum BlockV1 {
    Hole(u64),
    Data(u64, #[serde(with = "serde_bytes")] Vec<u8>),
    Chunk(u64, StoredChunkV1),
}

/// A kept chunk as format v1 wrote it (before key epochs and MACs): it was
/// sealed under epoch 0; its MAC is made when it is committed.
#[derive(Serialize, Deserialize)]
struct StoredChunkV1 {
    id: ChunkId,
    len: u32,
    replicas: Vec<PeerId>,
}

fn bincode_options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(RECORD_MAX as u64)
}

/// Where one volume's recovery files live, and the keys that seal them.
pub struct RecoveryDir {
    dir: PathBuf,
    volume: VolumeId,
    keys: Arc<VolumeKeys>,
}

impl RecoveryDir {
    /// The recovery files of `volume` under `base` (`<base>/<volume id>`),
    /// sealed with the recovery key of `keys`' newest epoch (and opened
    /// with the key of the epoch each record names). Creates nothing yet.
    pub fn new(base: &Path, volume: VolumeId, keys: Arc<VolumeKeys>) -> Self {
        RecoveryDir { dir: base.join(volume.to_hex()), volume, keys }
    }

    /// The same directory with `keys` (the keyring as it is now: new files
    /// are sealed under its newest epoch).
    pub fn with_keys(&self, keys: Arc<VolumeKeys>) -> Self {
        RecoveryDir { dir: self.dir.clone(), volume: self.volume, keys }
    }

    /// The directory holding this volume's recovery files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ad(&self, version: u8, ino: InodeId, record: u64) -> Vec<u8> {
        let mut ad = format!("p2pfs recovery v{version}").into_bytes();
        ad.extend_from_slice(self.volume.as_bytes());
        ad.extend_from_slice(&ino.0.to_le_bytes());
        ad.extend_from_slice(&record.to_le_bytes());
        ad
    }

    /// The recovery file of `ino`.
    pub fn path_for(&self, ino: InodeId) -> PathBuf {
        self.dir.join(format!("{}.{EXTENSION}", ino.0))
    }

    /// Writes `u` to its recovery file (replacing an older one) durably and
    /// atomically, mode 0600, in a directory of mode 0700. Returns its path.
    ///
    /// Errors: [`Error::Io`] naming the step that failed.
    pub fn keep(&self, u: &Unstored) -> Result<PathBuf> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| Error::Io(format!("cannot create {}: {e}", self.dir.display())))?;
        let out = self.encode(u)?;
        self.write_file(u, &out)
    }

    /// The bytes of `u`'s recovery file (format in the module
    /// documentation), as [`RecoveryDir::keep`] writes them.
    ///
    /// Errors: [`Error::Io`] if a record cannot be encoded,
    /// [`Error::Crypto`] if one is too large to seal.
    pub fn encode(&self, u: &Unstored) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(FIXED_LEN + u.data_bytes() as usize + 64 * (u.blocks.len() + 1));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        out.extend_from_slice(self.volume.as_bytes());
        out.extend_from_slice(&u.ino.0.to_le_bytes());
        let header = HeaderV1 {
            path: u.path.as_bytes().to_vec(),
            size: u.size,
            mtime_secs: u.mtime.secs,
            mtime_nanos: u.mtime.nanos,
            blocks: u.blocks.len() as u64,
            error: u.error.clone(),
        };
        self.push_record(&mut out, u.ino, 0, &header)?;
        for (n, (idx, b)) in u.blocks.iter().enumerate() {
            let rec = match b {
                KeptBlock::Hole => BlockV2::Hole(*idx),
                KeptBlock::Data(d) => BlockV2::Data(*idx, d.clone()),
                KeptBlock::Chunk(c) => BlockV2::Chunk(
                    *idx,
                    StoredChunkV2 {
                        id: c.id,
                        len: c.len,
                        replicas: c.replicas.clone(),
                        epoch: c.epoch,
                        mac: c.mac,
                    },
                ),
            };
            self.push_record(&mut out, u.ino, n as u64 + 1, &rec)?;
        }
        Ok(out)
    }

    /// The bytes of `u`'s recovery file in format v1, as clients wrote it
    /// before key epochs: records sealed in codec v1 under epoch 0's
    /// recovery key, `"p2pfs recovery v1"` in the associated data, kept
    /// chunks without epoch or MAC. Only for tests (and fuzz seeds) that
    /// check such files still load; nothing writes v1 any more.
    ///
    /// Errors: [`Error::Io`] if a record cannot be encoded,
    /// [`Error::Crypto`] if one is too large to seal or there are no keys of
    /// epoch 0.
    #[doc(hidden)]
    pub fn encode_v1_for_tests(&self, u: &Unstored) -> Result<Vec<u8>> {
        let key = &self.keys.epoch(0).ok_or_else(|| Error::Crypto("no key epoch 0".into()))?.recovery;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION_V1, 0, 0, 0]);
        out.extend_from_slice(self.volume.as_bytes());
        out.extend_from_slice(&u.ino.0.to_le_bytes());
        let mut push = |n: u64, plain: Vec<u8>| -> Result<()> {
            let sealed = codec::seal_bytes_v1_for_tests(key, &plain, &self.ad(VERSION_V1, u.ino, n))?;
            let len =
                u32::try_from(sealed.len()).map_err(|_| Error::Io("recovery record too large".into()))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&sealed);
            Ok(())
        };
        let encode = |e: bincode::Error| Error::Io(format!("cannot encode a recovery record: {e}"));
        let header = HeaderV1 {
            path: u.path.as_bytes().to_vec(),
            size: u.size,
            mtime_secs: u.mtime.secs,
            mtime_nanos: u.mtime.nanos,
            blocks: u.blocks.len() as u64,
            error: u.error.clone(),
        };
        push(0, bincode_options().serialize(&header).map_err(encode)?)?;
        for (n, (idx, b)) in u.blocks.iter().enumerate() {
            let rec = match b {
                KeptBlock::Hole => BlockV1::Hole(*idx),
                KeptBlock::Data(d) => BlockV1::Data(*idx, d.clone()),
                KeptBlock::Chunk(c) => {
                    BlockV1::Chunk(*idx, StoredChunkV1 { id: c.id, len: c.len, replicas: c.replicas.clone() })
                }
            };
            push(n as u64 + 1, bincode_options().serialize(&rec).map_err(encode)?)?;
        }
        Ok(out)
    }

    /// Writes `u` to its recovery file (see [`RecoveryDir::keep`]); `out` is
    /// its encoding.
    fn write_file(&self, u: &Unstored, out: &[u8]) -> Result<PathBuf> {
        let path = self.path_for(u.ino);
        common::fsutil::write_atomic(&path, out, 0o600).map_err(|e| Error::Io(e.to_string()))?;
        Ok(path)
    }

    fn push_record<T: Serialize>(&self, out: &mut Vec<u8>, ino: InodeId, n: u64, rec: &T) -> Result<()> {
        let plain = bincode_options()
            .serialize(rec)
            .map_err(|e| Error::Io(format!("cannot encode a recovery record: {e}")))?;
        let sealed = codec::seal_bytes_ad(
            &self.keys.newest_keys().recovery,
            self.keys.newest(),
            &plain,
            RECORD_MAX,
            &self.ad(VERSION, ino, n),
        )?;
        let len = u32::try_from(sealed.len()).map_err(|_| Error::Io("recovery record too large".into()))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&sealed);
        Ok(())
    }

    /// The recovery files waiting in this volume's directory, oldest inode
    /// first (none if the directory does not exist).
    ///
    /// Errors: [`Error::Io`] if the directory cannot be listed.
    pub fn pending(&self) -> Result<Vec<PathBuf>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::Io(format!("cannot list {}: {e}", self.dir.display()))),
        };
        let mut out: Vec<(u64, PathBuf)> = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::Io(format!("cannot list {}: {e}", self.dir.display())))?;
            let path = entry.path();
            let ino = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(&format!(".{EXTENSION}")))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(ino) = ino {
                out.push((ino, path));
            }
        }
        out.sort();
        Ok(out.into_iter().map(|(_, p)| p).collect())
    }

    /// Reads and opens a recovery file written by [`RecoveryDir::keep`].
    ///
    /// Errors: [`Error::Io`] if it cannot be read; [`Error::Crypto`] if it
    /// is not a recovery file of this volume, was altered or is truncated.
    pub fn load(&self, path: &Path) -> Result<Unstored> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
        self.decode(path, &bytes)
    }

    /// Opens the bytes of a recovery file read from `path` (named in
    /// errors only). Allocates at most about `bytes.len()` whatever they
    /// hold: every length is checked against what is there before use.
    ///
    /// Errors: [`Error::Crypto`] as [`RecoveryDir::load`], also for an
    /// mtime that is not a valid timestamp.
    pub fn decode(&self, path: &Path, bytes: &[u8]) -> Result<Unstored> {
        let bad = |why: &str| Error::Crypto(format!("recovery file {}: {why}", path.display()));
        if bytes.len() < FIXED_LEN || &bytes[..4] != MAGIC {
            return Err(bad("not a p2pfs recovery file"));
        }
        let version = bytes[4];
        if !(version == VERSION || version == VERSION_V1) || bytes[5..8] != [0, 0, 0] {
            return Err(bad(&format!("unknown format version {}", bytes[4])));
        }
        if bytes[8..24] != self.volume.0 {
            return Err(bad("belongs to another volume"));
        }
        let mut ino_le = [0u8; 8];
        ino_le.copy_from_slice(&bytes[24..32]);
        let ino = InodeId(u64::from_le_bytes(ino_le));
        let mut rest = &bytes[FIXED_LEN..];
        let mut next = |n: u64| -> Result<Vec<u8>> {
            if rest.len() < 4 {
                return Err(bad("truncated"));
            }
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if rest.len() < 4 + len || len > RECORD_MAX + codec::OVERHEAD {
                return Err(bad("truncated or corrupt record length"));
            }
            let sealed = &rest[4..4 + len];
            let epoch = codec::epoch_of(sealed).map_err(|e| bad(&format!("record {n}: {e}")))?;
            let key = &self
                .keys
                .epoch(epoch)
                .ok_or_else(|| bad(&format!("record {n} is sealed under key epoch {epoch}, unknown here")))?
                .recovery;
            let plain = codec::open_bytes_ad(key, sealed, &self.ad(version, ino, n))
                .map_err(|e| bad(&format!("record {n}: {e}")))?;
            rest = &rest[4 + len..];
            Ok(plain)
        };
        let header: HeaderV1 =
            bincode_options().deserialize(&next(0)?).map_err(|e| bad(&format!("header: {e}")))?;
        let mut blocks = Vec::new();
        for n in 1..=header.blocks {
            let plain = next(n)?;
            let decoded = if version == VERSION_V1 {
                bincode_options().deserialize::<BlockV1>(&plain).map(|rec| match rec {
                    BlockV1::Hole(i) => (i, KeptBlock::Hole),
                    BlockV1::Data(i, d) => (i, KeptBlock::Data(d)),
                    BlockV1::Chunk(i, c) => (
                        i,
                        KeptBlock::Chunk(StoredChunk {
                            id: c.id,
                            len: c.len,
                            replicas: c.replicas,
                            epoch: 0,
                            mac: [0; 32],
                            inline: None,
                        }),
                    ),
                })
            } else {
                bincode_options().deserialize::<BlockV2>(&plain).map(|rec| match rec {
                    BlockV2::Hole(i) => (i, KeptBlock::Hole),
                    BlockV2::Data(i, d) => (i, KeptBlock::Data(d)),
                    BlockV2::Chunk(i, c) => (
                        i,
                        KeptBlock::Chunk(StoredChunk {
                            id: c.id,
                            len: c.len,
                            replicas: c.replicas,
                            epoch: c.epoch,
                            mac: c.mac,
                            inline: None,
                        }),
                    ),
                })
            };
            blocks.push(decoded.map_err(|e| bad(&format!("record {n}: {e}")))?);
        }
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let mtime = Timestamp { secs: header.mtime_secs, nanos: header.mtime_nanos };
        mtime.validate().map_err(|e| bad(&format!("header: {e}")))?;
        Ok(Unstored {
            ino,
            path: String::from_utf8_lossy(&header.path).into_owned(),
            size: header.size,
            mtime,
            blocks,
            error: header.error,
        })
    }
}

/// What [`Fs::recover`] did.
#[derive(Debug, Default)]
pub struct RecoverReport {
    /// Files whose kept data is now stored: (path, plaintext bytes).
    pub stored: Vec<(String, u64)>,
    /// Files whose kept data still could not be stored (their recovery
    /// files stay): (path, error).
    pub pending: Vec<(String, String)>,
    /// Files that were deleted since: their kept data had nowhere to go.
    pub deleted: Vec<(String, u64)>,
    /// Recovery files that could not be read (left in place): (file,
    /// error).
    pub unreadable: Vec<(PathBuf, String)>,
}

impl Fs {
    /// Everything this client holds that is not stored, per file (call after
    /// [`Fs::flush_all`]): pending blocks (plaintext where the client has
    /// it), size and mtime. `failed` gives each file's last error.
    pub async fn unstored(&self, failed: &[(InodeId, Error)]) -> Vec<Unstored> {
        let files: Vec<_> = lock(&self.files).values().cloned().collect();
        let mut out = Vec::new();
        for f in files {
            let mut st = f.state.lock().await;
            self.reap(&mut st);
            if !st.has_local_changes() {
                continue;
            }
            // Local bytes, else the entry waiting for a commit.
            let blocks: Vec<(u64, KeptBlock)> = st
                .buf
                .pending()
                .map(|(idx, p)| {
                    let b = match p {
                        Pending::Local(d) => KeptBlock::Data(d.to_vec()),
                        Pending::Hole => KeptBlock::Hole,
                        Pending::Stored(s) => match (self.cache.get(&s.loc.chunk), &s.loc.inline) {
                            (Some(plain), _) => KeptBlock::Data(plain.to_vec()),
                            // An inline chunk exists only in this commit:
                            // kept as its plaintext.
                            (None, Some(bytes)) => match self.open_own_inline(&s.loc, bytes) {
                                Ok(plain) => KeptBlock::Data(plain),
                                Err(e) => {
                                    tracing::error!(ino = %st.ino, block = idx, error = %e, "cannot open an inline block this client sealed; it is lost");
                                    KeptBlock::Hole
                                }
                            },
                            (None, None) => KeptBlock::Chunk(s.chunk()),
                        },
                    };
                    (idx, b)
                })
                .collect();
            let error = failed
                .iter()
                .find(|(i, _)| *i == st.ino)
                .map(|(_, e)| e.to_string())
                .or_else(|| st.failure.as_ref().map(|e| e.to_string()))
                .unwrap_or_else(|| "not stored".into());
            out.push(Unstored {
                ino: st.ino,
                path: self.path_of(st.ino),
                size: st.buf.size(),
                mtime: st.mtime,
                blocks,
                error,
            });
        }
        out.sort_by_key(|u| u.ino);
        out
    }

    /// Stores the data kept in `dir` by an earlier mount of this volume:
    /// each file's blocks, size and mtime are applied as buffered writes
    /// and flushed. A stored file's recovery file is deleted; one that
    /// still cannot be stored stays, and its data stays buffered here
    /// (retried in the background, kept again at unmount). A file deleted
    /// since has nowhere to take its data: that is reported and its
    /// recovery file deleted. Call before the mount serves requests.
    pub async fn recover(self: &Arc<Self>, dir: &RecoveryDir) -> RecoverReport {
        let mut report = RecoverReport::default();
        let files = match dir.pending() {
            Ok(f) => f,
            Err(e) => {
                report.unreadable.push((dir.dir().to_path_buf(), e.to_string()));
                return report;
            }
        };
        for file in files {
            let u = match dir.load(&file) {
                Ok(u) => u,
                Err(e) => {
                    warn!(file = %file.display(), error = %e, "recovery file cannot be read; left in place");
                    report.unreadable.push((file, e.to_string()));
                    continue;
                }
            };
            self.names.remember(u.ino, &u.path);
            let bytes = u.data_bytes();
            match self.apply_kept(&u).await {
                Ok(()) => {
                    info!(ino = %u.ino, path = %u.path, bytes, "data kept by an earlier mount is stored");
                    if let Err(e) = std::fs::remove_file(&file) {
                        warn!(file = %file.display(), error = %e, "cannot delete a used recovery file");
                    }
                    report.stored.push((u.path, bytes));
                }
                Err(Error::Dir(DirError::NotFound)) => {
                    warn!(ino = %u.ino, path = %u.path, bytes, "the file was deleted since its data was kept; the kept data is dropped");
                    let _ = std::fs::remove_file(&file);
                    report.deleted.push((u.path, bytes));
                }
                Err(e) => {
                    warn!(ino = %u.ino, path = %u.path, error = %e, "data kept by an earlier mount still cannot be stored; retried in the background");
                    lock(&self.kept).insert(u.ino, file);
                    report.pending.push((u.path, e.to_string()));
                }
            }
        }
        report
    }

    /// Applies one file's kept data to its state and flushes it.
    ///
    /// Errors: `NotFound` if the file is gone; upload and dirsvc errors (the
    /// data then stays buffered in the file's state).
    async fn apply_kept(self: &Arc<Self>, u: &Unstored) -> Result<()> {
        let (attr, layout) = self.load_layout(u.ino).await?;
        let f = {
            let mut files = lock(&self.files);
            files.entry(u.ino).or_insert_with(|| OpenFile::new(self.new_state(&attr, layout), 0)).clone()
        };
        let mut st = f.state.lock().await;
        // The size first when it grows (blocks past the size are ignored),
        // last when it shrinks (the kept cut block then needs no fetch).
        let grows = u.size >= st.buf.size();
        if grows {
            let (s, r) = self.set_size(&f, st, u.size).await;
            st = s;
            r?;
        }
        for (idx, b) in &u.blocks {
            let content = match b {
                KeptBlock::Hole => Content::Hole,
                KeptBlock::Data(d) => Content::Data(Arc::new(d.clone())),
                KeptBlock::Chunk(c) => {
                    // The entry's MAC is made here, for this file and block.
                    let mac = self.entry_mac(&self.keys(), u.ino, *idx, c.id, c.len, c.epoch)?;
                    let loc = BlockLoc {
                        index: *idx,
                        chunk: c.id,
                        len: c.len,
                        replicas: Vec::new(),
                        epoch: c.epoch,
                        mac,
                        inline: None,
                    };
                    Content::Stored(Stored { loc, commit_replicas: Some(c.replicas.clone()) })
                }
            };
            for up in st.buf.set_block(*idx, content) {
                self.spawn_upload(&mut st, up);
            }
        }
        if !grows {
            let (s, r) = self.set_size(&f, st, u.size).await;
            st = s;
            r?;
        }
        st.mtime = u.mtime;
        st.mark_uncommitted();
        // Kept chunks were stored by an earlier mount, maybe longer ago
        // than GC's grace period: GC may have taken them for orphans. Ask
        // their replicas first; a chunk none holds cannot be stored again
        // (its plaintext is gone with that mount) and fails loudly here,
        // where committing it would name data no peer has.
        if let Err(e) = self.verify_uncommitted(&mut st).await {
            st.failure.get_or_insert_with(|| e.clone());
            st.retried_at = Some(std::time::Instant::now());
            return Err(e);
        }
        let (mut st, r) = self.flush_locked(&f, st).await;
        if let Err(e) = &r {
            st.failure.get_or_insert_with(|| e.clone());
            st.retried_at = Some(std::time::Instant::now());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Unstored {
        Unstored {
            ino: InodeId(42),
            path: "/docs/big file".into(),
            size: 3 << 20,
            mtime: Timestamp { secs: 1_700_000_000, nanos: 7 },
            blocks: vec![
                (0, KeptBlock::Data(vec![7u8; 1 << 20])),
                (1, KeptBlock::Hole),
                (
                    2,
                    KeptBlock::Chunk(StoredChunk {
                        id: common::ChunkId([3; 32]),
                        len: 99,
                        replicas: vec![],
                        epoch: 0,
                        mac: [4; 32],
                        inline: None,
                    }),
                ),
            ],
            error: "no space: peers full".into(),
        }
    }

    #[test]
    fn recovery_files_round_trip_and_hold_no_plaintext() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RecoveryDir::new(tmp.path(), VolumeId([1; 16]), keys([5; 32]));
        let u = sample();
        let path = dir.keep(&u).unwrap();
        assert_eq!(dir.pending().unwrap(), vec![path.clone()]);
        assert_eq!(dir.load(&path).unwrap(), u);
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(8).any(|w| w == b"big file"), "the path is sealed");
        assert!(!raw.windows(64).any(|w| w.iter().all(|b| *b == 7)), "the data is sealed");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn altered_truncated_or_foreign_recovery_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RecoveryDir::new(tmp.path(), VolumeId([1; 16]), keys([5; 32]));
        let path = dir.keep(&sample()).unwrap();
        let good = std::fs::read(&path).unwrap();
        for cut in [good.len() - 1, good.len() / 2, 40, 10] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(dir.load(&path).is_err(), "truncated at {cut}");
        }
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 20] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(dir.load(&path).is_err(), "altered");
        std::fs::write(&path, &good).unwrap();
        let other_key = RecoveryDir::new(tmp.path(), VolumeId([1; 16]), keys([6; 32]));
        assert!(other_key.load(&path).is_err(), "another volume's key");
        let other_volume = RecoveryDir::new(tmp.path(), VolumeId([2; 16]), keys([5; 32]));
        assert!(other_volume.load(&path).is_err(), "another volume");
        // Claiming the other format version does not load either.
        let mut v1 = good.clone();
        v1[4] = VERSION_V1;
        std::fs::write(&path, &v1).unwrap();
        assert!(dir.load(&path).is_err(), "version byte changed");
    }

    #[test]
    fn version_1_recovery_files_still_load() {
        let tmp = tempfile::tempdir().unwrap();
        // A volume whose epoch 0 is the secret the old file was sealed with.
        let dir = RecoveryDir::new(tmp.path(), VolumeId([1; 16]), keys([5; 32]));
        let u = sample();
        let path = dir.path_for(u.ino);
        std::fs::create_dir_all(dir.dir()).unwrap();
        std::fs::write(&path, dir.encode_v1_for_tests(&u).unwrap()).unwrap();
        let back = dir.load(&path).unwrap();
        let mut want = u.clone();
        if let KeptBlock::Chunk(c) = &mut want.blocks[2].1 {
            c.mac = [0; 32]; // made again when committed
        }
        assert_eq!(back, want);
    }

    fn keys(secret: [u8; 32]) -> Arc<VolumeKeys> {
        Arc::new(VolumeKeys::single(VolumeId([1; 16]), common::keys::VolumeSecret::from_bytes(secret)))
    }
}
