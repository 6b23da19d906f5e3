//! What this mount knows about inodes and names without asking dirsvc:
//! which extended attributes an inode does not have, the attributes and
//! directory entries dirsvc last answered, and which directories it knows
//! every entry of.
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
//! Attributes and entries. The kernel keeps entries and attributes for 1 s
//! (its TTL) and then asks again: `cat` of a tree that `find` listed a
//! moment earlier, or `tar` checking that each name it unpacks is free,
//! cost a `lookup` round trip per file. dirsvc's latest answers (lookup,
//! listing, setattr, layout commit, create) are kept here:
//! - an attribute answer serves `getattr` and `lookup`;
//! - an entry `(parent, name) → inode`, or `name` absent (dirsvc said
//!   `ENOENT`), serves `lookup`;
//! - a directory this mount made is *complete*: every name in it is one
//!   this mount made, so a name not among its entries is absent without
//!   asking.
//!
//! They hold while the change feed vouches for them: every change another
//! mount makes reaches this one through the feed, which drops what it
//! names. A feed answer to a poll sent at `t` vouches until
//! `t + `[`FEED_TRUST`]; past that (dirsvc unreachable, the feed stalled)
//! attributes serve for [`ATTR_FRESH`] after they arrived and entries not
//! at all, so a mount whose feed stopped is never staler than that.
//!
//! Knowledge is dropped for an inode when this mount starts a change of it
//! (before the call, so an answer that raced with it is not recorded) and
//! when dirsvc's change feed names it (another mount changed it), and all
//! of it when the feed overflowed or dirsvc restarted. Calls that change
//! inodes this mount cannot name (unlink, rmdir and rename change the link
//! count and ctime of the inode behind a name) drop every cached attribute.
//! Entries are dropped, and their directories stop being complete, when
//! the feed names them or this mount starts to remove or rename them.
//! An answer that raced with any invalidation is not recorded
//! ([`Known::generation`], [`Known::entry_generation`]); an entry made in a
//! complete directory that cannot be recorded makes it incomplete.

use common::rpc::dir::Attr;
use common::InodeId;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a cached attribute answer serves `getattr` when the change
/// feed does not vouch for it (1 s, as the kernel's attribute TTL).
pub(crate) const ATTR_FRESH: Duration = Duration::from_secs(1);

/// How long after a change-feed poll was sent its answer vouches for the
/// cache (2 s). The feed answers at least every
/// [`crate::fs::FEED_POLL_WAIT`] when idle, well inside this.
pub(crate) const FEED_TRUST: Duration = Duration::from_secs(2);

/// Most inodes (and names) remembered; past it everything is forgotten at
/// once (a few MiB at most, and the next answers rebuild it).
const CAPACITY: usize = 1 << 16;

/// What the cache says about a name.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Cached {
    /// The name is an entry of this inode, with these attributes.
    Found(Attr),
    /// The name is absent.
    Absent,
}

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
    /// Directory entries: `(parent, plaintext name)` → the inode, or
    /// `None` for a name dirsvc said is absent.
    entries: HashMap<(InodeId, Vec<u8>), Option<InodeId>>,
    /// Directories whose every entry is in `entries`.
    complete: HashSet<InodeId>,
    /// Bumped by every invalidation of entries.
    entry_generation: u64,
    /// Until when the change feed vouches for the cache.
    vouched_until: Option<Instant>,
    /// How many entry questions were answered.
    answered: u64,
}

impl Inner {
    fn vouched(&self) -> bool {
        self.vouched_until.is_some_and(|t| Instant::now() < t)
    }

    fn drop_entry(&mut self, parent: InodeId, name: &[u8]) {
        self.entry_generation += 1;
        self.entries.remove(&(parent, name.to_vec()));
        self.complete.remove(&parent);
    }
}

/// What this mount knows without asking dirsvc; see the module doc.
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

    /// The attributes dirsvc last answered for `ino`, if nothing changed
    /// them since and the change feed vouches for them or they are less
    /// than [`ATTR_FRESH`] old.
    pub(crate) fn attr(&self, ino: InodeId) -> Option<Attr> {
        let g = self.lock();
        let vouched = g.vouched();
        g.attrs.get(&ino).filter(|(_, at)| vouched || at.elapsed() < ATTR_FRESH).map(|(a, _)| a.clone())
    }

    /// What is known of `name` in `parent` while the change feed vouches
    /// for it: its inode with current attributes, or its absence (recorded,
    /// or implied by a complete directory). `None`: ask dirsvc.
    pub(crate) fn entry(&self, parent: InodeId, name: &[u8]) -> Option<Cached> {
        let mut g = self.lock();
        if !g.vouched() {
            return None;
        }
        let known = match g.entries.get(&(parent, name.to_vec())) {
            Some(Some(ino)) => g.attrs.get(ino).map(|(a, _)| Cached::Found(a.clone())),
            Some(None) => Some(Cached::Absent),
            None => g.complete.contains(&parent).then_some(Cached::Absent),
        };
        g.answered += u64::from(known.is_some());
        known
    }

    /// How many [`Known::entry`] calls had an answer.
    #[cfg(test)]
    pub(crate) fn entries_answered(&self) -> u64 {
        self.lock().answered
    }

    /// The entry invalidation count now: pass it to a later
    /// [`Known::record_lookup`] or [`Known::record_made`].
    pub(crate) fn entry_generation(&self) -> u64 {
        self.lock().entry_generation
    }

    /// Makes room for one more entry: past [`CAPACITY`] every entry is
    /// forgotten at once.
    fn room(g: &mut Inner) {
        if g.entries.len() >= CAPACITY || g.complete.len() >= CAPACITY {
            g.entry_generation += 1;
            g.entries.clear();
            g.complete.clear();
        }
    }

    /// Records dirsvc's answer for `name` in `parent` (`None`: absent) to
    /// a lookup or listing started at `entry_generation`; not recorded if
    /// an entry was invalidated or made since.
    pub(crate) fn record_lookup(
        &self,
        parent: InodeId,
        name: &[u8],
        ino: Option<InodeId>,
        entry_generation: u64,
    ) {
        let mut g = self.lock();
        if g.entry_generation != entry_generation {
            return;
        }
        Self::room(&mut g);
        g.entries.insert((parent, name.to_vec()), ino);
    }

    /// Records that this mount made `name` in `parent` as `ino` (an empty
    /// directory if `empty_dir`, which is then complete) in a call started
    /// at `entry_generation`. Answers to lookups started before this are
    /// not recorded after it. If an entry was invalidated meanwhile the
    /// name is forgotten instead and `parent` is no longer complete (the
    /// cache must not go on saying the name is absent).
    pub(crate) fn record_made(
        &self,
        parent: InodeId,
        name: &[u8],
        ino: InodeId,
        empty_dir: bool,
        entry_generation: u64,
    ) {
        let mut g = self.lock();
        if g.entry_generation != entry_generation {
            g.drop_entry(parent, name);
            return;
        }
        Self::room(&mut g);
        g.entry_generation += 1;
        g.entries.insert((parent, name.to_vec()), Some(ino));
        if empty_dir {
            g.complete.insert(ino);
        }
    }

    /// Forgets `name` in `parent`, and that `parent` is complete: another
    /// mount changed it, or a change this mount asked for may or may not
    /// have happened.
    pub(crate) fn forget_entry(&self, parent: InodeId, name: &[u8]) {
        self.lock().drop_entry(parent, name);
    }

    /// Notes that this mount removed `name` from `parent` (an unlink, rmdir
    /// or rename dirsvc confirmed): the name is absent, `parent` stays
    /// complete if it was, and answers to lookups started before this are
    /// not recorded after it.
    pub(crate) fn removed_entry(&self, parent: InodeId, name: &[u8]) {
        let mut g = self.lock();
        Self::room(&mut g);
        g.entry_generation += 1;
        g.entries.insert((parent, name.to_vec()), None);
    }

    /// Notes that this mount renamed `from` to `to` (not an exchange),
    /// moving `ino`, in a call started at `entry_generation`: `from` is
    /// absent and `to` names `ino`, as [`Known::removed_entry`] and
    /// [`Known::record_made`].
    pub(crate) fn renamed(
        &self,
        from: (InodeId, &[u8]),
        to: (InodeId, &[u8]),
        ino: InodeId,
        entry_generation: u64,
    ) {
        let mut g = self.lock();
        let raced = g.entry_generation != entry_generation;
        Self::room(&mut g);
        g.entry_generation += 1;
        g.entries.insert((from.0, from.1.to_vec()), None);
        if raced {
            g.drop_entry(to.0, to.1);
        } else {
            g.entries.insert((to.0, to.1.to_vec()), Some(ino));
        }
    }

    /// Notes that the change feed answered a poll sent at `sent`, after
    /// its changes were applied: the cache is vouched for until
    /// `sent + FEED_TRUST`.
    pub(crate) fn feed_answered(&self, sent: Instant) {
        let mut g = self.lock();
        let until = sent + FEED_TRUST;
        g.vouched_until = Some(g.vouched_until.map_or(until, |t| t.max(until)));
    }

    /// Notes that the change feed failed: nothing is vouched for until it
    /// answers again.
    pub(crate) fn feed_lost(&self) {
        self.lock().vouched_until = None;
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

    /// Takes `ino`'s cached attributes out, as [`Known::forget_attr`]
    /// forgets them (this mount is about to change them), returning them.
    pub(crate) fn take_attr(&self, ino: InodeId) -> Option<Attr> {
        let mut g = self.lock();
        g.generation += 1;
        let vouched = g.vouched();
        g.attrs.remove(&ino).filter(|(_, at)| vouched || at.elapsed() < ATTR_FRESH).map(|(a, _)| a)
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
        g.entry_generation += 1;
        g.entries.clear();
        g.complete.clear();
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

    fn found(ino: u64) -> Option<Cached> {
        Some(Cached::Found(attr(ino)))
    }

    #[test]
    fn entries_answer_only_while_the_change_feed_vouches_for_them() {
        let k = Known::default();
        let (root, eg) = (InodeId(1), k.entry_generation());
        k.record_attr(&attr(7), k.generation());
        k.record_lookup(root, b"a", Some(InodeId(7)), eg);
        k.record_lookup(root, b"gone", None, eg);
        assert_eq!(k.entry(root, b"a"), None, "no feed answer yet");
        k.feed_answered(Instant::now());
        assert_eq!(k.entry(root, b"a"), found(7));
        assert_eq!(k.entry(root, b"gone"), Some(Cached::Absent));
        assert_eq!(k.entry(root, b"other"), None, "root is not complete");
        // The feed names the entry: asked of dirsvc again.
        k.forget_entry(root, b"a");
        assert_eq!(k.entry(root, b"a"), None);
        // An entry whose attributes changed is asked again too.
        k.record_lookup(root, b"a", Some(InodeId(7)), k.entry_generation());
        k.forget(InodeId(7));
        assert_eq!(k.entry(root, b"a"), None);
        // A failed poll withdraws the vouching at once; an answer to a
        // poll sent longer than FEED_TRUST ago never gives it.
        k.feed_lost();
        assert_eq!(k.entry(root, b"gone"), None);
        k.feed_answered(Instant::now() - FEED_TRUST - Duration::from_millis(1));
        assert_eq!(k.entry(root, b"gone"), None);
        k.feed_answered(Instant::now());
        assert_eq!(k.entry(root, b"gone"), Some(Cached::Absent));
        k.forget_all();
        assert_eq!(k.entry(root, b"gone"), None);
    }

    #[test]
    fn attributes_outlive_their_second_only_while_the_feed_vouches() {
        let k = Known::default();
        k.record_attr(&attr(3), k.generation());
        k.lock().attrs.get_mut(&InodeId(3)).unwrap().1 -= ATTR_FRESH;
        assert!(k.attr(InodeId(3)).is_none());
        k.feed_answered(Instant::now());
        assert_eq!(k.attr(InodeId(3)).map(|a| a.size), Some(1));
    }

    #[test]
    fn a_directory_this_mount_made_is_complete_until_an_entry_of_it_is_invalidated() {
        let k = Known::default();
        k.feed_answered(Instant::now());
        let (root, dir) = (InodeId(1), InodeId(20));
        k.record_attr(&attr(20), k.generation());
        k.record_made(root, b"d", dir, true, k.entry_generation());
        assert_eq!(k.entry(dir, b"anything"), Some(Cached::Absent));
        k.record_attr(&attr(21), k.generation());
        k.record_made(dir, b"f", InodeId(21), false, k.entry_generation());
        assert_eq!(k.entry(dir, b"f"), found(21));
        assert_eq!(k.entry(dir, b"g"), Some(Cached::Absent));
        // Removed or renamed away by this mount: absent, still complete.
        k.removed_entry(dir, b"f");
        assert_eq!(k.entry(dir, b"f"), Some(Cached::Absent));
        k.record_attr(&attr(22), k.generation());
        k.record_made(dir, b"tmp", InodeId(22), false, k.entry_generation());
        k.renamed((dir, b"tmp"), (dir, b"final"), InodeId(22), k.entry_generation());
        assert_eq!((k.entry(dir, b"tmp"), k.entry(dir, b"final")), (Some(Cached::Absent), found(22)));
        // Another mount made or removed a name in it: no longer complete.
        k.forget_entry(dir, b"new");
        assert_eq!(k.entry(dir, b"g"), None);
        assert_eq!(k.entry(dir, b"final"), found(22), "the other entries stay");
    }

    #[test]
    fn answers_that_raced_with_a_change_of_entries_are_not_recorded() {
        let k = Known::default();
        k.feed_answered(Instant::now());
        let root = InodeId(1);
        k.record_attr(&attr(5), k.generation());
        // A lookup started before this mount made the name answers
        // "absent" after it: not recorded over the new entry.
        let before = k.entry_generation();
        k.record_made(root, b"n", InodeId(5), false, before);
        k.record_lookup(root, b"n", None, before);
        assert_eq!(k.entry(root, b"n"), found(5));
        // A make that raced with an invalidation forgets the name (an
        // earlier "absent" must not stay) and the directory's completeness.
        let (dir, eg) = (InodeId(30), k.entry_generation());
        k.record_made(root, b"d", dir, true, eg);
        k.record_lookup(dir, b"x", None, k.entry_generation());
        let eg = k.entry_generation();
        k.forget_entry(InodeId(99), b"elsewhere");
        k.record_made(dir, b"x", InodeId(6), false, eg);
        assert_eq!(k.entry(dir, b"x"), None);
        assert_eq!(k.entry(dir, b"y"), None, "no longer complete");
        // A rename that raced forgets its target the same way.
        let eg = k.entry_generation();
        k.forget_entry(InodeId(99), b"elsewhere");
        k.renamed((root, b"n"), (root, b"m"), InodeId(5), eg);
        assert_eq!((k.entry(root, b"n"), k.entry(root, b"m")), (Some(Cached::Absent), None));
    }
}
