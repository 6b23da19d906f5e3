//! Which peer a data directory belongs to: `<data_dir>/peer-id`.
//!
//! A peer's id is the node id of its TLS certificate (derived from its
//! key, see `common::pki`). dirsvc's chunk index names the chunks on this
//! disk by that id, so a data directory must never be served under another
//! one: the file records the id (32 lowercase hex digits and a newline,
//! written atomically: temp file, fsync, rename, fsync of the directory)
//! the first time peerd starts on the directory, and every later start
//! checks that the certificate names the same peer ([`check_legacy`]).

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

/// Records `id` as the owner of `data_dir` on first use, or checks that
/// it is the one recorded.
///
/// Errors: [`Error::BadPeerId`] if the file is malformed (not UTF-8, not 32
/// hex digits, longer than [`MAX_PEER_ID_FILE`]) or names another peer
/// (the directory's chunks are indexed under that id: serving them under a
/// new one would have them collected as orphans); [`Error::Io`].
pub fn check_legacy(data_dir: &Path, id: PeerId) -> Result<(), Error> {
    let path = data_dir.join(PEER_ID_FILE);
    match read_small(&path, MAX_PEER_ID_FILE) {
        Ok(bytes) => {
            let recorded = parse(&path, &bytes)?;
            if recorded != id {
                return Err(Error::BadPeerId {
                    path,
                    reason: format!(
                        "this data directory belongs to peer {}, but the certificate is for peer {}; restore that peer's key (tls/node.key) or start this certificate on an empty data directory",
                        recorded.to_hex(),
                        id.to_hex()
                    ),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            Err(Error::BadPeerId { path, reason: e.to_string() })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            write_atomic(&path, format!("{}\n", id.to_hex()).as_bytes())?;
            Ok(())
        }
        Err(e) => Err(Error::Io { op: "read", path, source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_data_directory_is_served_under_one_peer_id_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = PeerId([1; 16]);
        check_legacy(dir.path(), a).unwrap();
        check_legacy(dir.path(), a).unwrap();
        assert!(matches!(check_legacy(dir.path(), PeerId([2; 16])), Err(Error::BadPeerId { .. })));
    }

    #[test]
    fn malformed_id_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(PEER_ID_FILE), "not hex\n").unwrap();
        assert!(matches!(check_legacy(dir.path(), PeerId([1; 16])), Err(Error::BadPeerId { .. })));
        assert_eq!(fs::read_to_string(dir.path().join(PEER_ID_FILE)).unwrap(), "not hex\n");
        // Not UTF-8, or huge: refused as well, without reading it all.
        fs::write(dir.path().join(PEER_ID_FILE), [0xff, 0xfe]).unwrap();
        assert!(matches!(check_legacy(dir.path(), PeerId([1; 16])), Err(Error::BadPeerId { .. })));
        fs::write(dir.path().join(PEER_ID_FILE), vec![b'a'; 1 << 20]).unwrap();
        assert!(matches!(check_legacy(dir.path(), PeerId([1; 16])), Err(Error::BadPeerId { .. })));
    }
}
