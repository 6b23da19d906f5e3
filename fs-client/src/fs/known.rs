//! What this mount knows about inodes without asking dirsvc: which
//! extended attributes an inode does not have, and the attributes dirsvc
//! last answered for it.
//!
//! Extended attributes. The kernel asks for `security.capability` before
//! every write to a file (to drop a file capability on write); on a volume
//! where almost no file has extended attributes, each of those asks was a
//! dirsvc round trip, five per small file that `tar` unpacks. The answer
//! "none" is cached here:
//! - an inode this mount made itself has no attributes;
//! - a `getxattr` that dirsvc answered `ENODATA` records that one name,
//!   a `listxattr` that listed nothing records the whole inode.
//!
//! Attributes. The kernel drops its cached attributes of a file it wrote
//! to, and of a file whose owner changes, and asks again (`getattr`) at
//! the next permission check: two round trips per unpacked file. The
//! attributes of dirsvc's latest answer about an inode (lookup, listing,
//! setattr, layout commit, create) answer such a `getattr` for
//! [`ATTR_FRESH`] (1 s, the kernel's own attribute TTL, so no answer is
//! staler than the kernel could have kept it).
//!
//! Knowledge is dropped for an inode when this mount starts a change of it
//! (before the call, so an answer that raced with it is not recorded) and
//! when dirsvc's change feed names it (another mount changed it), and all
//! of it when the feed overflowed or dirsvc restarted. Calls that change
//! inodes this mount cannot name (unlink, rmdir and rename change the link
//! count and ctime of the inode behind a name) drop every cached attribute.
//! An answer that raced with any invalidation is not recorded
//! ([`Known::generation`]).

use common::rpc::dir::Attr;
use common::InodeId;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a cached attribute answer serves `getattr` (1 s, as the
/// kernel's attribute TTL).
pub(crate) const ATTR_FRESH: Duration = Duration::from_secs(1);

/// Most inodes (and names) remembered; past it everything is forgotten at
/// once (a few MiB at most, and the next answers rebuild it).
const CAPACITY: usize = 1 << 16;

#[derive(Default)]
struct Inner {
    /// Inodes known to have no extended attributes at all.
    bare: HashSet<InodeId>,
    /// Attribute names known to be absent from an inode.
    absent: HashMap<InodeId, HashSet<Vec<u8>>>,
    /// dirsvc's latest answer about an inode's attributes, and when.
    attrs: HashMap<InodeId, (Attr, Instant)>,
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

    /// The attributes dirsvc answered for `ino` less than [`ATTR_FRESH`]
    /// ago, if nothing changed them since.
    pub(crate) fn attr(&self, ino: InodeId) -> Option<Attr> {
        let g = self.lock();
        g.attrs.get(&ino).filter(|(_, at)| at.elapsed() < ATTR_FRESH).map(|(a, _)| a.clone())
    }

    /// Records `attr`, dirsvc's answer to a call made at `generation`
    /// (not recorded if something was invalidated since).
    pub(crate) fn record_attr(&self, attr: &Attr, generation: u64) {
        let mut g = self.lock();
        if g.generation != generation {
            return;
        }
        if g.attrs.len() >= CAPACITY {
            g.attrs.retain(|_, (_, at)| at.elapsed() < ATTR_FRESH);
            if g.attrs.len() >= CAPACITY {
                g.attrs.clear();
            }
        }
        g.attrs.insert(attr.ino, (attr.clone(), Instant::now()));
    }

    /// Forgets the cached attributes of `ino` only (this mount is about to
    /// change them; its extended attributes stay known).
    pub(crate) fn forget_attr(&self, ino: InodeId) {
        let mut g = self.lock();
        g.generation += 1;
        g.attrs.remove(&ino);
    }

    /// Forgets every cached attribute (a change of inodes this mount
    /// cannot name: unlink, rmdir, rename).
    pub(crate) fn forget_attrs(&self) {
        let mut g = self.lock();
        g.generation += 1;
        g.attrs.clear();
    }

    /// Forgets what is known about `ino` (it changed).
    pub(crate) fn forget(&self, ino: InodeId) {
        let mut g = self.lock();
        g.generation += 1;
        g.bare.remove(&ino);
        g.absent.remove(&ino);
        g.attrs.remove(&ino);
    }

    /// Forgets everything (the change feed lost changes).
    pub(crate) fn forget_all(&self) {
        let mut g = self.lock();
        g.generation += 1;
        g.bare.clear();
        g.absent.clear();
        g.attrs.clear();
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

    fn attr(ino: u64) -> Attr {
        let t = common::time::Timestamp { secs: 1_700_000_000, nanos: 0 };
        Attr {
            ino: InodeId(ino),
            kind: common::rpc::dir::FileKind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            size: 1,
            nlink: 1,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            rdev: 0,
            stored_bytes: 0,
        }
    }

    #[test]
    fn cached_attributes_serve_until_a_change_starts_and_a_raced_answer_is_dropped() {
        let k = Known::default();
        let g = k.generation();
        k.record_attr(&attr(3), g);
        assert_eq!(k.attr(InodeId(3)).map(|a| a.size), Some(1));
        // A change of this inode starts: the cached answer goes, and an
        // answer to a call made before it is not recorded.
        let before = k.generation();
        k.forget_attr(InodeId(3));
        assert!(k.attr(InodeId(3)).is_none());
        k.record_attr(&attr(3), before);
        assert!(k.attr(InodeId(3)).is_none());
        // Unlink, rmdir and rename drop every cached attribute.
        k.record_attr(&attr(4), k.generation());
        k.record_bare(InodeId(4), k.generation());
        k.forget_attrs();
        assert!(k.attr(InodeId(4)).is_none());
        assert!(k.lacks(InodeId(4), b"user.x"), "extended-attribute knowledge stays");
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
