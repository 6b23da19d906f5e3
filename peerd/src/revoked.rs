//! The revocation list a peer enforces, kept across restarts in
//! `<data_dir>/revoked`.
//!
//! dirsvc owns the list; a peer copies it on heartbeats whose reply shows
//! a newer version (`heartbeat.rs`). Without a copy on disk a restarted
//! peer would accept revoked certificates until its first heartbeat got
//! through, and for as long as dirsvc is unreachable. The file is text,
//! written atomically (temp file, fsync, rename, fsync of the directory):
//!
//! ```text
//! p2pfs-revoked 1
//! version <decimal>
//! <32 hex: node id>
//! …
//! ```

use crate::error::Error;
use crate::fsutil::{read_small, write_atomic};
use common::NodeId;
use std::path::Path;

/// Name of the file inside the data directory.
pub const REVOKED_FILE: &str = "revoked";

const MAGIC: &str = "p2pfs-revoked 1";

/// Most node ids read from the file (bounds a corrupt or hostile file).
pub const MAX_NODES: usize = 1 << 20;

/// Longest file read, in bytes: the magic line, a version line of up to
/// 20 digits and [`MAX_NODES`] lines of 33 bytes, with room to spare. A
/// longer file is refused before it is read into memory.
pub const MAX_FILE_BYTES: usize = 64 + MAX_NODES * 33;

/// Reads the list kept in `data_dir`: `(version, nodes)`, or `None` when
/// there is no file yet.
///
/// Errors: [`Error::Io`] when it cannot be read; [`Error::BadRevocations`]
/// when it is not a revocation list (also when it is longer than
/// [`MAX_FILE_BYTES`]).
pub fn load(data_dir: &Path) -> Result<Option<(u64, Vec<NodeId>)>, Error> {
    let path = data_dir.join(REVOKED_FILE);
    let bytes = match read_small(&path, MAX_FILE_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(Error::BadRevocations { path }),
        Err(e) => return Err(Error::io("read", path)(e)),
    };
    parse(&path, &bytes).map(Some)
}

/// The `(version, nodes)` that the bytes of a revocation list file read
/// from `path` (named in errors only) hold, in the format of the module
/// documentation: the magic line, the version line, then one node id (32
/// hex digits) per line; empty lines are skipped. Holds at most
/// [`MAX_NODES`] ids (16 bytes each) whatever the bytes.
///
/// Errors: [`Error::BadRevocations`] for anything else (not UTF-8, another
/// magic, a bad version or node id, more than [`MAX_NODES`] ids).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<(u64, Vec<NodeId>), Error> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(parse_text)
        .ok_or_else(|| Error::BadRevocations { path: path.to_path_buf() })
}

fn parse_text(text: &str) -> Option<(u64, Vec<NodeId>)> {
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let version = lines.next()?.strip_prefix("version ")?.parse().ok()?;
    let mut nodes = Vec::new();
    for l in lines.filter(|l| !l.is_empty()) {
        if nodes.len() == MAX_NODES {
            return None;
        }
        nodes.push(l.parse().ok()?);
    }
    Some((version, nodes))
}

/// The text of a revocation list file holding `(version, nodes)`, in the
/// format of the module documentation, as [`parse`] reads it back: 45
/// bytes at most before the nodes, 33 per node.
pub fn to_text(version: u64, nodes: &[NodeId]) -> String {
    let mut text = String::with_capacity(64 + nodes.len() * 33);
    text.push_str(MAGIC);
    text.push_str("\nversion ");
    text.push_str(&version.to_string());
    text.push('\n');
    for n in nodes {
        text.push_str(&n.to_hex());
        text.push('\n');
    }
    text
}

/// Keeps `(version, nodes)` in `data_dir`, replacing what was there.
///
/// Errors: [`Error::Io`].
pub fn save(data_dir: &Path, version: u64, nodes: &[NodeId]) -> Result<(), Error> {
    write_atomic(&data_dir.join(REVOKED_FILE), to_text(version, nodes).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_survives_a_save_and_load_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let nodes = vec![NodeId([1; 16]), NodeId([0xab; 16])];
        save(dir.path(), 7, &nodes).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some((7, nodes)));
        save(dir.path(), 8, &[]).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some((8, Vec::new())));
        for bad in
            ["", "p2pfs-revoked 1\n", "p2pfs-revoked 1\nversion x\n", "p2pfs-revoked 1\nversion 1\nzz\n"]
        {
            std::fs::write(dir.path().join(REVOKED_FILE), bad).unwrap();
            assert!(load(dir.path()).is_err(), "{bad:?} was accepted");
        }
        // Not UTF-8: a malformed list, not an I/O error.
        std::fs::write(dir.path().join(REVOKED_FILE), b"p2pfs-revoked 1\nversion 1\n\xff\n").unwrap();
        assert!(matches!(load(dir.path()), Err(Error::BadRevocations { .. })));
        let p = Path::new("x");
        assert_eq!(parse(p, b"p2pfs-revoked 1\nversion 3\n\n").unwrap(), (3, Vec::new()));
        assert!(parse(p, b"p2pfs-revoked 1\nversion 18446744073709551616\n").is_err());
    }

    /// Regression: `load` read the whole file into memory before parsing,
    /// so a damaged data directory with a huge `revoked` file made peerd
    /// allocate its size at start. It is refused without being read.
    #[test]
    fn a_file_longer_than_any_list_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join(REVOKED_FILE)).unwrap();
        // Sparse: no disk space used.
        f.set_len(1 << 40).unwrap();
        assert!(matches!(load(dir.path()), Err(Error::BadRevocations { .. })));
        // The longest list `save` can write (the largest version, as many
        // nodes as `parse` takes) is within the bound.
        save(dir.path(), u64::MAX, &[NodeId([0xab; 16]), NodeId([1; 16])]).unwrap();
        let two = std::fs::metadata(dir.path().join(REVOKED_FILE)).unwrap().len() as usize;
        assert!(two - 2 * 33 + MAX_NODES * 33 <= MAX_FILE_BYTES);
        assert_eq!(load(dir.path()).unwrap().map(|(v, n)| (v, n.len())), Some((u64::MAX, 2)));
    }
}
