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
use crate::fsutil::write_atomic;
use common::NodeId;
use std::path::Path;

/// Name of the file inside the data directory.
pub const REVOKED_FILE: &str = "revoked";

const MAGIC: &str = "p2pfs-revoked 1";

/// Most node ids read from the file (bounds a corrupt or hostile file).
const MAX_NODES: usize = 1 << 20;

/// Reads the list kept in `data_dir`: `(version, nodes)`, or `None` when
/// there is no file yet.
///
/// Errors: [`Error::Io`] when it cannot be read; [`Error::BadRevocations`]
/// when it is not a revocation list.
pub fn load(data_dir: &Path) -> Result<Option<(u64, Vec<NodeId>)>, Error> {
    let path = data_dir.join(REVOKED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path)(e)),
    };
    parse(&text).map(Some).ok_or(Error::BadRevocations { path })
}

fn parse(text: &str) -> Option<(u64, Vec<NodeId>)> {
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

/// Keeps `(version, nodes)` in `data_dir`, replacing what was there.
///
/// Errors: [`Error::Io`].
pub fn save(data_dir: &Path, version: u64, nodes: &[NodeId]) -> Result<(), Error> {
    let mut text = format!("{MAGIC}\nversion {version}\n");
    for n in nodes {
        text.push_str(&n.to_hex());
        text.push('\n');
    }
    write_atomic(&data_dir.join(REVOKED_FILE), text.as_bytes())
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
    }
}
