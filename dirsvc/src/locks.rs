//! The lock table: POSIX record locks and BSD flocks held by client
//! sessions, in memory (clients re-send theirs after a dirsvc restart, see
//! [`crate::sessions`]).
//!
//! Semantics, as Linux applies them to local files (fcntl(2), flock(2)):
//! - Two locks conflict when they are of the same flavor (POSIX and flock
//!   never conflict with each other), their byte ranges overlap, at least
//!   one is `Write`, and they belong to different owners. An owner is the
//!   pair (session, `Lock::owner`), so two processes on one mount conflict
//!   like two processes on two mounts.
//! - A new lock replaces the same owner's locks of the same flavor where
//!   they overlap (upgrade, downgrade, or splitting a range in two), and
//!   then merges with the owner's adjacent or overlapping ranges of the
//!   same kind, so an owner never holds two touching ranges of one kind.
//! - Unlocking a range removes it from the owner's locks, splitting a lock
//!   that extends past it on either side.
//!
//! Ranges are inclusive `[start, end]`; `end == u64::MAX` means "to the end
//! of the file however it grows". Deadlocks between waiters are not
//! detected (Linux detects simple POSIX cycles with `EDEADLK`; here a
//! waiter times out with `WouldBlock` instead).

use common::rpc::dir::{Lock, LockFlavor, LockKind, SessionId};
use std::collections::HashMap;

/// A lock and the session holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    /// The holding session.
    pub session: SessionId,
    /// The lock as granted (its range after merging).
    pub lock: Lock,
}

impl Held {
    /// Whether this lock belongs to `owner` of `session`, of `flavor`.
    fn is_own(&self, session: SessionId, owner: u64, flavor: LockFlavor) -> bool {
        self.session == session && self.lock.owner == owner && self.lock.flavor == flavor
    }
}

/// Whether `[a0, a1]` and `[b0, b1]` share a byte.
fn overlaps(a0: u64, a1: u64, b0: u64, b1: u64) -> bool {
    a0 <= b1 && b0 <= a1
}

/// Whether `[a0, a1]` ends right before `[b0, b1]` starts, or the other way
/// round.
fn adjacent(a0: u64, a1: u64, b0: u64, b1: u64) -> bool {
    a1.checked_add(1) == Some(b0) || b1.checked_add(1) == Some(a0)
}

/// Every lock held, by inode number.
#[derive(Debug, Default)]
pub(crate) struct LockTable {
    by_ino: HashMap<u64, Vec<Held>>,
    /// Number of locks (ranges) each session holds over all inodes; no
    /// zero entries.
    per_session: HashMap<SessionId, usize>,
}

impl LockTable {
    /// The first lock (in grant order) that blocks `req` asked by
    /// `session`, if any.
    pub(crate) fn conflict(&self, session: SessionId, req: &Lock) -> Option<&Held> {
        self.by_ino.get(&req.ino.0)?.iter().find(|h| {
            h.lock.flavor == req.flavor
                && !(h.session == session && h.lock.owner == req.owner)
                && (h.lock.kind == LockKind::Write || req.kind == LockKind::Write)
                && overlaps(h.lock.start, h.lock.end, req.start, req.end)
        })
    }

    /// Grants `lock` to `session` (the caller checked [`Self::conflict`]):
    /// replaces the owner's overlapping ranges of the same flavor and
    /// merges with its adjacent or overlapping ranges of the same kind.
    #[cfg(test)]
    pub(crate) fn set(&mut self, session: SessionId, lock: Lock) {
        self.set_within(session, lock, usize::MAX);
    }

    /// Locks (ranges) `session` holds over all inodes.
    pub(crate) fn count(&self, session: SessionId) -> usize {
        self.per_session.get(&session).copied().unwrap_or(0)
    }

    /// As [`Self::set`], unless the session would then hold more than
    /// `max` locks (a new range, or a split of one of its ranges): then
    /// nothing changes and the answer is false. A change that does not add
    /// a range (an upgrade, a merge) is always granted.
    pub(crate) fn set_within(&mut self, session: SessionId, lock: Lock, max: usize) -> bool {
        let ino = lock.ino.0;
        let mut held = self.by_ino.get(&ino).cloned().unwrap_or_default();
        let before = held.iter().filter(|h| h.session == session).count();
        carve(&mut held, session, lock.owner, lock.flavor, lock.start, lock.end);
        let mut new = lock;
        // After carving, the owner's ranges of this flavor do not overlap
        // the new one; absorb those of the same kind that touch it.
        held.retain(|h| {
            let absorb = h.is_own(session, new.owner, new.flavor)
                && h.lock.kind == new.kind
                && adjacent(h.lock.start, h.lock.end, new.start, new.end);
            if absorb {
                new.start = new.start.min(h.lock.start);
                new.end = new.end.max(h.lock.end);
            }
            !absorb
        });
        held.push(Held { session, lock: new });
        let after = held.iter().filter(|h| h.session == session).count();
        let total = self.count(session).saturating_sub(before).saturating_add(after);
        if after > before && total > max {
            return false;
        }
        self.by_ino.insert(ino, held);
        self.recount(session, total);
        true
    }

    /// Records that `session` now holds `n` locks.
    fn recount(&mut self, session: SessionId, n: usize) {
        if n == 0 {
            self.per_session.remove(&session);
        } else {
            self.per_session.insert(session, n);
        }
    }

    /// Removes the locks of `owner` of `session` of `flavor` on `ino`
    /// within `[start, end]`, splitting ranges that extend past it.
    /// Returns whether anything changed.
    pub(crate) fn unlock(
        &mut self,
        session: SessionId,
        ino: u64,
        owner: u64,
        flavor: LockFlavor,
        start: u64,
        end: u64,
    ) -> bool {
        let Some(held) = self.by_ino.get_mut(&ino) else { return false };
        let before = held.iter().filter(|h| h.session == session).count();
        let changed = carve(held, session, owner, flavor, start, end);
        let after = held.iter().filter(|h| h.session == session).count();
        if held.is_empty() {
            self.by_ino.remove(&ino);
        }
        // Unlocking the middle of a range splits it: one more range, which
        // is allowed past the cap (an unlock never fails).
        let total = self.count(session).saturating_sub(before).saturating_add(after);
        self.recount(session, total);
        changed
    }

    /// Drops every lock of `session`. Returns the inodes that had any.
    pub(crate) fn drop_session(&mut self, session: SessionId) -> Vec<u64> {
        self.per_session.remove(&session);
        let mut touched = Vec::new();
        self.by_ino.retain(|ino, held| {
            let before = held.len();
            held.retain(|h| h.session != session);
            if held.len() != before {
                touched.push(*ino);
            }
            !held.is_empty()
        });
        touched
    }

    /// The locks held on `ino`, in grant order (for tests and inspection).
    #[cfg(test)]
    pub(crate) fn held(&self, ino: u64) -> &[Held] {
        self.by_ino.get(&ino).map_or(&[], Vec::as_slice)
    }

    /// Number of locks held over all inodes.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_ino.values().map(Vec::len).sum()
    }
}

/// Removes `[start, end]` from the locks of `owner` of `session` of
/// `flavor` in `held`, keeping the parts outside it. Returns whether
/// anything changed.
fn carve(
    held: &mut Vec<Held>,
    session: SessionId,
    owner: u64,
    flavor: LockFlavor,
    start: u64,
    end: u64,
) -> bool {
    let mut changed = false;
    let mut out = Vec::with_capacity(held.len() + 1);
    for h in held.drain(..) {
        if !h.is_own(session, owner, flavor) || !overlaps(h.lock.start, h.lock.end, start, end) {
            out.push(h);
            continue;
        }
        changed = true;
        if h.lock.start < start {
            // start > h.lock.start ≥ 0, so start - 1 does not underflow.
            let mut left = h.clone();
            left.lock.end = start - 1;
            out.push(left);
        }
        if h.lock.end > end {
            // end < h.lock.end ≤ u64::MAX, so end + 1 does not overflow.
            let mut right = h;
            right.lock.start = end + 1;
            out.push(right);
        }
    }
    *held = out;
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::InodeId;
    use proptest::prelude::*;

    const S1: SessionId = SessionId(1);
    const S2: SessionId = SessionId(2);

    fn lk(owner: u64, kind: LockKind, start: u64, end: u64) -> Lock {
        Lock { ino: InodeId(7), owner, flavor: LockFlavor::Posix, kind, start, end, pid: 100 + owner as u32 }
    }

    fn ranges(t: &LockTable, s: SessionId, owner: u64) -> Vec<(LockKind, u64, u64)> {
        let mut v: Vec<_> = t
            .held(7)
            .iter()
            .filter(|h| h.session == s && h.lock.owner == owner)
            .map(|h| (h.lock.kind, h.lock.start, h.lock.end))
            .collect();
        v.sort_by_key(|r| r.1);
        v
    }

    #[test]
    fn readers_share_and_a_writer_conflicts_with_other_owners_only() {
        let mut t = LockTable::default();
        t.set(S1, lk(1, LockKind::Read, 0, 99));
        assert!(t.conflict(S2, &lk(1, LockKind::Read, 50, 60)).is_none());
        t.set(S2, lk(1, LockKind::Read, 50, 60));
        let c = t.conflict(S2, &lk(9, LockKind::Write, 0, 10)).unwrap();
        assert_eq!((c.session, c.lock.owner), (S1, 1));
        // Another owner of the same session conflicts too.
        assert!(t.conflict(S1, &lk(2, LockKind::Write, 99, 99)).is_some());
        // Not past the ranges.
        assert!(t.conflict(S2, &lk(9, LockKind::Write, 100, u64::MAX)).is_none());
        // The owner itself never conflicts with its own lock.
        assert!(t.conflict(S1, &lk(1, LockKind::Write, 0, 40)).is_none());
    }

    #[test]
    fn posix_and_flock_never_conflict() {
        let mut t = LockTable::default();
        t.set(S1, lk(1, LockKind::Write, 0, u64::MAX));
        let flock = Lock { flavor: LockFlavor::Flock, ..lk(2, LockKind::Write, 0, u64::MAX) };
        assert!(t.conflict(S2, &flock).is_none());
        t.set(S2, flock.clone());
        assert!(t.conflict(S1, &Lock { owner: 3, ..flock }).is_some());
        // An unlock of one flavor leaves the other.
        assert!(!t.unlock(S1, 7, 1, LockFlavor::Flock, 0, u64::MAX));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_new_lock_splits_upgrades_and_merges_the_owners_ranges() {
        let mut t = LockTable::default();
        t.set(S1, lk(1, LockKind::Read, 0, 99));
        // Write in the middle: read | write | read.
        t.set(S1, lk(1, LockKind::Write, 40, 59));
        assert_eq!(
            ranges(&t, S1, 1),
            vec![(LockKind::Read, 0, 39), (LockKind::Write, 40, 59), (LockKind::Read, 60, 99)]
        );
        // Downgrade it again: the three merge into one.
        t.set(S1, lk(1, LockKind::Read, 40, 59));
        assert_eq!(ranges(&t, S1, 1), vec![(LockKind::Read, 0, 99)]);
        // Adjacent ranges of the same kind merge; of another kind do not.
        t.set(S1, lk(1, LockKind::Read, 100, 109));
        t.set(S1, lk(1, LockKind::Write, 110, u64::MAX));
        assert_eq!(ranges(&t, S1, 1), vec![(LockKind::Read, 0, 109), (LockKind::Write, 110, u64::MAX)]);
        // Unlock splits.
        assert!(t.unlock(S1, 7, 1, LockFlavor::Posix, 10, 19));
        assert_eq!(
            ranges(&t, S1, 1),
            vec![(LockKind::Read, 0, 9), (LockKind::Read, 20, 109), (LockKind::Write, 110, u64::MAX)]
        );
        // Unlock to the end removes the open-ended lock; another owner's
        // locks are untouched.
        t.set(S1, lk(2, LockKind::Read, 0, 5));
        assert!(t.unlock(S1, 7, 1, LockFlavor::Posix, 0, u64::MAX));
        assert!(ranges(&t, S1, 1).is_empty());
        assert_eq!(ranges(&t, S1, 2), vec![(LockKind::Read, 0, 5)]);
        assert!(!t.unlock(S1, 7, 1, LockFlavor::Posix, 0, u64::MAX), "idempotent");
    }

    #[test]
    fn dropping_a_session_drops_only_its_locks() {
        let mut t = LockTable::default();
        t.set(S1, lk(1, LockKind::Read, 0, 9));
        t.set(S2, lk(1, LockKind::Read, 0, 9));
        t.set(S1, Lock { ino: InodeId(8), ..lk(1, LockKind::Write, 0, 9) });
        let mut touched = t.drop_session(S1);
        touched.sort();
        assert_eq!(touched, vec![7, 8]);
        assert_eq!(t.len(), 1);
        assert!(t.held(8).is_empty());
    }

    #[test]
    fn a_session_holds_at_most_max_ranges_but_may_always_merge_or_unlock() {
        let mut t = LockTable::default();
        assert!(t.set_within(S1, lk(1, LockKind::Read, 0, 9), 2));
        assert!(t.set_within(S1, lk(1, LockKind::Read, 20, 29), 2));
        assert_eq!(t.count(S1), 2);
        // A third range is refused and changes nothing.
        assert!(!t.set_within(S1, lk(1, LockKind::Read, 40, 49), 2));
        assert!(!t.set_within(S1, Lock { ino: InodeId(8), ..lk(1, LockKind::Read, 0, 1) }, 2));
        assert_eq!(t.len(), 2);
        // Splitting one range by a write in its middle adds two: refused.
        assert!(!t.set_within(S1, lk(1, LockKind::Write, 3, 4), 2));
        // Merging (filling the gap) and upgrading are fine at the cap.
        assert!(t.set_within(S1, lk(1, LockKind::Read, 10, 19), 2));
        assert_eq!(t.count(S1), 1);
        assert!(t.set_within(S1, lk(1, LockKind::Write, 0, 29), 1));
        // Another session has its own budget.
        assert!(t.set_within(S2, lk(1, LockKind::Read, 100, 109), 1));
        // An unlock that splits is never refused, and is counted.
        assert!(t.unlock(S1, 7, 1, LockFlavor::Posix, 10, 11));
        assert_eq!(t.count(S1), 2);
        t.drop_session(S1);
        assert_eq!(t.count(S1), 0);
        assert_eq!(t.count(S2), 1);
    }

    /// Bytes modelled by the property test.
    const SPAN: u64 = 24;

    #[derive(Clone, Debug)]
    enum Op {
        Set { who: usize, write: bool, start: u64, len: u64 },
        Unlock { who: usize, start: u64, len: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, any::<bool>(), 0..SPAN, 1..8u64).prop_map(|(who, write, start, len)| Op::Set {
                who,
                write,
                start,
                len
            }),
            (0..3usize, 0..SPAN, 1..8u64).prop_map(|(who, start, len)| Op::Unlock { who, start, len }),
        ]
    }

    /// The three owners of the test: two of session 1, one of session 2.
    fn who(i: usize) -> (SessionId, u64) {
        [(S1, 1), (S1, 2), (S2, 1)][i]
    }

    proptest! {
        /// Against a byte-by-byte model: after any sequence of grants (of
        /// requests that do not conflict) and unlocks, each owner holds
        /// exactly the bytes the model says, with the model's kind, and its
        /// ranges are disjoint and never touch another of the same kind.
        #[test]
        fn the_table_matches_a_per_byte_model(ops in proptest::collection::vec(op(), 1..60)) {
            let mut t = LockTable::default();
            // model[byte][owner] = Some(write?)
            let mut model = vec![[None::<bool>; 3]; (SPAN + 8) as usize];
            for o in ops {
                match o {
                    Op::Set { who: w, write, start, len } => {
                        let (s, owner) = who(w);
                        let kind = if write { LockKind::Write } else { LockKind::Read };
                        let req = lk(owner, kind, start, start + len - 1);
                        let model_conflict = (start..start + len).any(|b| {
                            (0..3).any(|o| o != w && model[b as usize][o].is_some_and(|ow| ow || write))
                        });
                        prop_assert_eq!(t.conflict(s, &req).is_some(), model_conflict);
                        if !model_conflict {
                            t.set(s, req);
                            for b in start..start + len {
                                model[b as usize][w] = Some(write);
                            }
                        }
                    }
                    Op::Unlock { who: w, start, len } => {
                        let (s, owner) = who(w);
                        t.unlock(s, 7, owner, LockFlavor::Posix, start, start + len - 1);
                        for b in start..start + len {
                            model[b as usize][w] = None;
                        }
                    }
                }
            }
            for w in 0..3 {
                let (s, owner) = who(w);
                let rs = ranges(&t, s, owner);
                for pair in rs.windows(2) {
                    prop_assert!(pair[0].2 < pair[1].1, "disjoint: {:?}", pair);
                    prop_assert!(
                        !(pair[0].0 == pair[1].0 && pair[0].2 + 1 == pair[1].1),
                        "touching ranges of one kind are merged: {:?}", pair
                    );
                }
                for (b, owners) in model.iter().enumerate() {
                    let b = b as u64;
                    let held = rs.iter().find(|r| r.1 <= b && b <= r.2).map(|r| r.0 == LockKind::Write);
                    prop_assert_eq!(held, owners[w], "byte {} owner {}", b, w);
                }
            }
        }
    }
}
