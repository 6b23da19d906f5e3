//! What this mount knows about inodes without asking dirsvc: which
//! extended attributes an inode does not have.
//!
//! The kernel asks for `security.capability` before every write to a file
//! (to drop a file capability on write); on a volume where almost no file
//! has extended attributes, each of those asks was a dirsvc round trip, five
//! per small file that `tar` unpacks. The answer "none" is cached here:
//! - an inode this mount made itself has no attributes;
//! - a `getxattr` that dirsvc answered `ENODATA` records that one name,
//!   a `listxattr` that listed nothing records the whole inode.
//!
//! Knowledge is dropped for an inode when this mount changes its attributes
//! and when dirsvc's change feed names it (another mount changed it), and
//! all of it when the feed overflowed or dirsvc restarted. An answer that
//! raced with an invalidation is not recorded ([`Known::generation`]), so
//! a stale "none" cannot outlive the change feed's delay (milliseconds,
//! docs/SEMANTICS.md).

use common::InodeId;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Most inodes (and names) remembered; past it everything is forgotten at
/// once (a few MiB at most, and the next answers rebuild it).
const CAPACITY: usize = 1 << 16;

#[derive(Default)]
struct Inner {
    /// Inodes known to have no extended attributes at all.
    bare: HashSet<InodeId>,
    /// Attribute names known to be absent from an inode.
    absent: HashMap<InodeId, HashSet<Vec<u8>>>,
    /// Bumped by every invalidation.
    generation: u64,
}

/// Negative knowledge about extended attributes; see the module doc.
#[derive(Default)]
pub(crate) struct Known {
    inner: Mutex<Inner>,
}

impl Known {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The invalidation count now: pass it to a later `record_*` so an
    /// answer fetched before an invalidation is not recorded after it.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Whether `ino` is known to have no attribute `name`.
    pub(crate) fn lacks(&self, ino: InodeId, name: &[u8]) -> bool {
        let g = self.lock();
        g.bare.contains(&ino) || g.absent.get(&ino).is_some_and(|s| s.contains(name))
    }

    /// Records that `ino` has no extended attributes (this mount made it,
    /// or listed none at `generation`).
    pub(crate) fn record_bare(&self, ino: InodeId, generation: u64) {
        let mut g = self.lock();
        if g.generation != generation {
            return;
        }
        if g.bare.len() >= CAPACITY {
            g.bare.clear();
        }
        g.absent.remove(&ino);
        g.bare.insert(ino);
    }

    /// Records that `ino` has no attribute `name` (dirsvc said so at
    /// `generation`).
    pub(crate) fn record_absent(&self, ino: InodeId, name: &[u8], generation: u64) {
        let mut g = self.lock();
        if g.generation != generation {
            return;
        }
        if g.absent.len() >= CAPACITY {
            g.absent.clear();
        }
        g.absent.entry(ino).or_default().insert(name.to_vec());
    }

    /// Forgets what is known about `ino` (its attributes changed).
    pub(crate) fn forget(&self, ino: InodeId) {
        let mut g = self.lock();
        g.generation += 1;
        g.bare.remove(&ino);
        g.absent.remove(&ino);
    }

    /// Forgets everything (the change feed lost changes).
    pub(crate) fn forget_all(&self) {
        let mut g = self.lock();
        g.generation += 1;
        g.bare.clear();
        g.absent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_fetched_before_an_invalidation_is_not_recorded() {
        let k = Known::default();
        let ino = InodeId(5);
        let g = k.generation();
        k.forget(InodeId(9));
        k.record_absent(ino, b"security.capability", g);
        k.record_bare(ino, g);
        assert!(!k.lacks(ino, b"security.capability"));
        let g = k.generation();
        k.record_absent(ino, b"security.capability", g);
        assert!(k.lacks(ino, b"security.capability"));
        assert!(!k.lacks(ino, b"user.other"));
    }

    #[test]
    fn forgetting_an_inode_drops_both_kinds_of_knowledge() {
        let k = Known::default();
        let (a, b) = (InodeId(1), InodeId(2));
        k.record_bare(a, k.generation());
        k.record_absent(b, b"user.x", k.generation());
        assert!(k.lacks(a, b"user.anything") && k.lacks(b, b"user.x"));
        k.forget(a);
        assert!(!k.lacks(a, b"user.anything"));
        assert!(k.lacks(b, b"user.x"));
        k.forget_all();
        assert!(!k.lacks(b, b"user.x"));
    }
}
