//! The last known name of inodes this client has seen, so that messages a
//! person must act on (data that could not be stored) name files by their
//! path rather than by inode number.
//!
//! Every lookup, create, link and rename reply teaches the map where an
//! inode lives (`(parent, plaintext name)`); the kernel looks up every path
//! component before it opens a file, so an open file's ancestors are known
//! too. The map is bounded (least recently taught entries go first) and
//! only ever used for messages: a path it gives may be stale (renamed by
//! another mount) or partial.

use common::InodeId;
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// Entries the map keeps (about 20 MiB at most with long names).
const CAPACITY: usize = 1 << 16;

/// Deepest path [`NameMap::path`] walks before giving up (a cycle left by
/// stale entries, or a very deep tree).
const MAX_DEPTH: usize = 512;

/// Inode → (parent directory, plaintext name), least recently used out;
/// and whole paths learned without their parents (from recovery files).
pub(crate) struct NameMap {
    map: Mutex<lru::LruCache<InodeId, (InodeId, Vec<u8>)>>,
    known: Mutex<std::collections::HashMap<InodeId, String>>,
}

impl Default for NameMap {
    fn default() -> Self {
        let cap = NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN);
        NameMap { map: Mutex::new(lru::LruCache::new(cap)), known: Mutex::default() }
    }
}

impl NameMap {
    /// Records that `ino` is named `name` in directory `parent`.
    pub(crate) fn record(&self, ino: InodeId, parent: InodeId, name: &[u8]) {
        if ino == InodeId::ROOT {
            return;
        }
        self.map.lock().unwrap_or_else(|p| p.into_inner()).put(ino, (parent, name.to_vec()));
    }

    /// Remembers `path` as where `ino` was last seen, for when its chain of
    /// names is not known (a file named in a recovery file).
    pub(crate) fn remember(&self, ino: InodeId, path: &str) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(ino, path.to_string());
    }

    /// The path of `ino` below the volume's root, `/`-separated and starting
    /// with `/` (`/` for the root). Where the chain of known names breaks,
    /// the path starts with `<inode N>` for the first unknown directory (or
    /// is `<inode N>` for an unknown file). Non-UTF-8 bytes are replaced.
    pub(crate) fn path(&self, ino: InodeId) -> String {
        if ino == InodeId::ROOT {
            return "/".into();
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut parts: Vec<String> = Vec::new();
        let mut at = ino;
        for _ in 0..MAX_DEPTH {
            if at == InodeId::ROOT {
                parts.reverse();
                return format!("/{}", parts.join("/"));
            }
            match map.peek(&at) {
                Some((parent, name)) => {
                    parts.push(String::from_utf8_lossy(name).into_owned());
                    at = *parent;
                }
                None => break,
            }
        }
        drop(map);
        if let Some(p) = self.known.lock().unwrap_or_else(|p| p.into_inner()).get(&at) {
            parts.reverse();
            return std::iter::once(p.clone()).chain(parts).collect::<Vec<_>>().join("/");
        }
        parts.push(format!("<inode {at}>"));
        parts.reverse();
        parts.join("/")
    }
}

impl super::Fs {
    /// The last known path of `ino` below the mount point (see
    /// [`NameMap::path`]), for messages.
    pub fn path_of(&self, ino: InodeId) -> String {
        self.names.path(ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_walk_up_to_the_root_and_say_where_the_chain_breaks() {
        let m = NameMap::default();
        m.record(InodeId(2), InodeId::ROOT, b"docs");
        m.record(InodeId(3), InodeId(2), b"report.txt");
        assert_eq!(m.path(InodeId(3)), "/docs/report.txt");
        assert_eq!(m.path(InodeId::ROOT), "/");
        // A rename teaches the new name.
        m.record(InodeId(3), InodeId::ROOT, b"moved.txt");
        assert_eq!(m.path(InodeId(3)), "/moved.txt");
        // A file under a directory this map never saw.
        m.record(InodeId(9), InodeId(7), b"x");
        assert_eq!(m.path(InodeId(9)), "<inode 7>/x");
        assert_eq!(m.path(InodeId(42)), "<inode 42>");
        // A cycle of stale entries ends.
        m.record(InodeId(10), InodeId(11), b"a");
        m.record(InodeId(11), InodeId(10), b"b");
        assert!(m.path(InodeId(10)).starts_with("<inode"));
    }
}
