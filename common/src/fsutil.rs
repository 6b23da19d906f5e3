//! Replacing a small file atomically and durably: the one way every
//! program of p2pfs writes its state files (certificates and keys, pins,
//! recovery files, address files, a peer's id, scrub state and revocation
//! list).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` so that a reader, or the file after a crash,
/// holds either the old file or the whole new one: a temporary file
/// `.<name>.<pid>.<n>.tmp` in the same directory created with permission
/// bits `mode` (e.g. `0o600`, before the umask), written and fsynced, renamed
/// over `path`, then the directory fsynced. The temporary file is removed
/// if a step fails.
///
/// Errors: the [`std::io::Error`] of the step that failed, its kind kept
/// and its message naming the step and the file (`cannot create
/// /x/.pin.12.0.tmp: No space left on device`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let step = |what: &str, p: &Path, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("cannot {what} {}: {e}", p.display()))
    };
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| step("create", &tmp, e))
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| step("write", &tmp, e)))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| step("rename into", path, e)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| step("fsync", &dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_replaces_the_whole_file_with_its_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        write_atomic(&p, b"first, longer", 0o600).unwrap();
        write_atomic(&p, b"second", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_names_the_step_and_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"old", 0o644).unwrap();
        // A directory in the way of the rename.
        let blocked = dir.path().join("d");
        std::fs::create_dir_all(blocked.join("x")).unwrap();
        let e = write_atomic(&blocked.join("x"), b"new", 0o644).unwrap_err();
        assert!(e.to_string().starts_with("cannot rename into"), "{e}");
        assert_eq!(std::fs::read_dir(&blocked).unwrap().count(), 1, "the temporary file is removed");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
    }
}
