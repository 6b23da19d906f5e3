//! The peer's persistent identity: `<data_dir>/peer-id`.
//!
//! The file holds the [`PeerId`] as 32 lowercase hex digits and a newline.
//! It is created (atomically: temp file, fsync, rename, fsync of the
//! directory) the first time peerd starts on a data directory and read on
//! every later start, so a peer keeps its id, and dirsvc's record of its
//! chunks, across restarts.

use crate::error::Error;
use crate::fsutil::{read_small, write_atomic};
use common::PeerId;
use std::io;
use std::path::Path;

/// Name of the id file inside the data directory.
pub const PEER_ID_FILE: &str = "peer-id";

/// Longest id file read, in bytes (the file holds 33).
pub const MAX_PEER_ID_FILE: usize = 1024;

/// The peer id that the bytes of an id file read from `path` hold: 32 hex
/// digits, surrounding whitespace allowed.
///
/// Errors: [`Error::BadPeerId`] for anything else (not UTF-8, not 32 hex
/// digits).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<PeerId, Error> {
    let bad = |reason: String| Error::BadPeerId { path: path.to_path_buf(), reason };
    let text = std::str::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
    text.trim().parse::<PeerId>().map_err(|e| bad(e.to_string()))
}

/// Reads the peer id from `<data_dir>/peer-id`, creating a random one there
/// if the file does not exist. `data_dir` must exist.
///
/// Errors: [`Error::BadPeerId`] if the file exists but is not 32 hex digits
/// (or is longer than [`MAX_PEER_ID_FILE`]; peerd never silently replaces
/// an id); [`Error::Io`] on read or write failure.
pub fn load_or_create(data_dir: &Path) -> Result<PeerId, Error> {
    let path = data_dir.join(PEER_ID_FILE);
    match read_small(&path, MAX_PEER_ID_FILE) {
        Ok(bytes) => parse(&path, &bytes),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            Err(Error::BadPeerId { path, reason: e.to_string() })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = PeerId::random();
            write_atomic(&path, format!("{}\n", id.to_hex()).as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(Error::Io { op: "read", path, source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn id_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a, b);
        let text = fs::read_to_string(dir.path().join(PEER_ID_FILE)).unwrap();
        assert_eq!(text, format!("{}\n", a.to_hex()));
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap(), a);
    }

    #[test]
    fn malformed_id_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(PEER_ID_FILE), "not hex\n").unwrap();
        assert!(matches!(load_or_create(dir.path()), Err(Error::BadPeerId { .. })));
        assert_eq!(fs::read_to_string(dir.path().join(PEER_ID_FILE)).unwrap(), "not hex\n");
        // Not UTF-8, or huge: refused as well, without reading it all.
        fs::write(dir.path().join(PEER_ID_FILE), [0xff, 0xfe]).unwrap();
        assert!(matches!(load_or_create(dir.path()), Err(Error::BadPeerId { .. })));
        fs::write(dir.path().join(PEER_ID_FILE), vec![b'a'; 1 << 20]).unwrap();
        assert!(matches!(load_or_create(dir.path()), Err(Error::BadPeerId { .. })));
    }
}
