//! Small durable-file helpers: temp files that delete themselves unless
//! persisted, directory fsync, and atomic whole-file writes (through `common::fsutil`).

use crate::error::Error;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temp file peerd creates. Files with this prefix inside
/// the store's shard directories are leftovers of a crash and are deleted
/// when the store opens.
pub const TEMP_PREFIX: &str = ".tmp-";

/// A file being written under a temporary name, deleted on drop unless
/// [`TempFile::persist`] (or [`TempFile::disarm`]) ran. Every error path of a
/// write therefore leaves nothing behind.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// Creates a new, empty temp file in `dir`, named
    /// `.tmp-<stem>.<pid>.<counter>.<random>`. The process id, a process-wide
    /// counter and 32 random bits keep concurrent writers of the same `stem`
    /// (two puts of one chunk) apart; `create_new` makes a collision an
    /// error rather than a shared file.
    ///
    /// Errors: the `open(2)` error (`NotFound` if `dir` does not exist).
    pub fn create(dir: &Path, stem: &str) -> io::Result<(TempFile, File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let r: u32 = rand::random();
        let path = dir.join(format!("{TEMP_PREFIX}{stem}.{}.{n}.{r:08x}", std::process::id()));
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok((TempFile { path, armed: true }, file))
    }

    /// The temp file's current path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `to` (replacing any file there) and stops the
    /// guard from deleting it. The caller fsyncs `to`'s directory.
    ///
    /// Errors: the `rename(2)` error; the temp file is then still deleted on
    /// drop.
    pub fn persist(mut self, to: &Path) -> io::Result<()> {
        fs::rename(&self.path, to)?;
        self.armed = false;
        Ok(())
    }

    /// Stops the guard from deleting the file (it was renamed by other means).
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temp file");
                }
            }
        }
    }
}

/// Reads a small file whole, refusing one longer than `max` bytes: state
/// files are tiny, and a damaged disk must not make peerd read gigabytes
/// into memory.
///
/// Errors: the open or read error; `InvalidData` for a file over `max`
/// bytes.
pub fn read_small(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    File::open(path)?.take(limit).read_to_end(&mut bytes)?;
    if bytes.len() > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("longer than {max} bytes")));
    }
    Ok(bytes)
}

/// Fsyncs directory `dir`, making the creation, rename or removal of its
/// entries durable.
///
/// Errors: [`Error::Io`] from open or fsync.
pub fn fsync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("fsync directory", dir))
}

/// Writes `bytes` to `path` atomically and durably: a temp file in the same
/// directory, fsync, rename over `path`, fsync of the directory. A reader
/// sees either the old file or the whole new one, never a part.
///
/// Errors: [`Error::Io`] naming the step that failed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    common::fsutil::write_atomic(path, bytes, 0o644).map_err(Error::io("replace", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn temp_file_is_deleted_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, _f) = TempFile::create(dir.path(), "x").unwrap();
        let p = tmp.path().to_path_buf();
        assert!(p.exists());
        drop(tmp);
        assert!(!p.exists());

        let (tmp, mut f) = TempFile::create(dir.path(), "x").unwrap();
        f.write_all(b"kept").unwrap();
        tmp.persist(&dir.path().join("final")).unwrap();
        assert_eq!(fs::read(dir.path().join("final")).unwrap(), b"kept");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_names_of_the_same_stem_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let guards: Vec<_> = (0..100).map(|_| TempFile::create(dir.path(), "same").unwrap()).collect();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 100);
        drop(guards);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn write_atomic_replaces_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("addr");
        write_atomic(&p, b"127.0.0.1:1").unwrap();
        write_atomic(&p, b"127.0.0.1:22").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"127.0.0.1:22");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
