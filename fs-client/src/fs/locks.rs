//! Byte-range and whole-file locks (`fcntl` F_SETLK/F_SETLKW/F_GETLK,
//! `lockf`, `flock`), held at dirsvc so they hold across mounts.
//!
//! fuser 0.18 does not pass the kernel's `FUSE_LK_FLOCK` flag, so `flock`
//! requests arrive as whole-file POSIX requests whose owner is the open
//! file description: they behave as flock between flock users, but conflict
//! with fcntl locks on the same file (Linux keeps the two families apart).
//!
//! A blocking request (F_SETLKW) waits at dirsvc in rounds of
//! [`WAIT_ROUND_MS`]; between rounds it gives up with `EINTR` if the waiting
//! process has a signal pending (fuser does not forward FUSE_INTERRUPT, and a
//! killed process must not stay stuck in the kernel).
//!
//! Locks carry consistency as in NFS: releasing one first commits what this
//! client buffered for the file; taking one reloads the file's size and
//! layout and drops the kernel's cached pages, so what the previous holder
//! wrote (on any mount) is what the new holder reads and appends after.
//!
//! This client also keeps its own copy of the locks it holds, with the same
//! range rules as dirsvc, to reclaim them after a dirsvc restart.

use super::{lock, Fs};
use crate::error::{Error, Result};
use common::rpc::dir::{DirError, Lock, LockFlavor, LockKind};
use common::InodeId;
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

/// How long one `set_lock` call waits at dirsvc, in milliseconds.
const WAIT_ROUND_MS: u32 = 2_000;

/// The kernel's "to end of file" (OFFSET_MAX).
const OFFSET_MAX: u64 = i64::MAX as u64;

/// What a lock request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockType {
    /// Shared (`F_RDLCK`).
    Read,
    /// Exclusive (`F_WRLCK`).
    Write,
    /// Release (`F_UNLCK`).
    Unlock,
}

impl LockType {
    /// From the `l_type` the kernel sends (`F_RDLCK`, `F_WRLCK`, `F_UNLCK`).
    ///
    /// Errors: `EINVAL` for anything else.
    pub fn from_raw(typ: i32) -> Result<Self> {
        match typ {
            libc::F_RDLCK => Ok(LockType::Read),
            libc::F_WRLCK => Ok(LockType::Write),
            libc::F_UNLCK => Ok(LockType::Unlock),
            t => Err(Error::Errno(libc::EINVAL, format!("unknown lock type {t}"))),
        }
    }
}

/// A lock request as the kernel sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRequest {
    /// The inode.
    pub ino: InodeId,
    /// The kernel's lock owner (the process's files table for fcntl locks,
    /// the open file description for flock).
    pub owner: u64,
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive; OFFSET_MAX (`i64::MAX`) means to end of file.
    pub end: u64,
    /// What is asked.
    pub typ: LockType,
    /// The asking process.
    pub pid: u32,
}

/// The kernel's inclusive end (OFFSET_MAX = to EOF) as dirsvc's.
fn wire_end(end: u64) -> u64 {
    if end >= OFFSET_MAX {
        u64::MAX
    } else {
        end
    }
}

/// A lock the kernel asked about, as `F_GETLK` reports it: `(start, end,
/// type, pid)` with `end` in the kernel's convention.
pub type LockReport = (u64, u64, i32, u32);

/// Removes `[start, end]` of (ino, owner, flavor)'s locks from `held`,
/// splitting ranges that extend past it.
fn carve(held: &mut Vec<Lock>, ino: InodeId, owner: u64, flavor: LockFlavor, start: u64, end: u64) {
    let mut out = Vec::with_capacity(held.len() + 1);
    for l in held.drain(..) {
        let mine = l.ino == ino && l.owner == owner && l.flavor == flavor;
        if !mine || l.end < start || l.start > end {
            out.push(l);
            continue;
        }
        if l.start < start {
            out.push(Lock { end: start - 1, ..l.clone() });
        }
        if l.end > end {
            out.push(Lock { start: end + 1, ..l });
        }
    }
    *held = out;
}

/// Records a granted lock in `held` (replacing the owner's overlap), merging
/// adjacent or overlapping ranges of the same kind.
fn record(held: &mut Vec<Lock>, new: Lock) {
    carve(held, new.ino, new.owner, new.flavor, new.start, new.end);
    let mut merged = new;
    held.retain(|l| {
        let same = l.ino == merged.ino
            && l.owner == merged.owner
            && l.flavor == merged.flavor
            && l.kind == merged.kind;
        let touches = l.end.saturating_add(1) >= merged.start && merged.end.saturating_add(1) >= l.start;
        if same && touches {
            merged.start = merged.start.min(l.start);
            merged.end = merged.end.max(l.end);
            false
        } else {
            true
        }
    });
    held.push(merged);
}

/// Whether process `pid` has a signal pending that it does not block (it
/// would interrupt a local blocking `fcntl`), from `/proc/<pid>/status`. A
/// process that is gone counts as interrupted.
fn signal_pending(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return true };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = field("SigPnd:") | field("ShdPnd:");
    let blocked = field("SigBlk:");
    // SIGKILL (bit 8) cannot be blocked.
    pending & (!blocked | 1 << 8) != 0
}

impl Fs {
    /// Takes, changes or releases the lock `req` describes. With `wait`,
    /// blocks until granted.
    ///
    /// Errors: `EAGAIN` if held by another owner and not `wait`; `EINTR` if
    /// the waiting process `pid` got a signal; `ENOLCK` when dirsvc's limit
    /// on locks (or waiting calls) of this mount is reached; dirsvc and
    /// transport errors.
    pub async fn setlk(self: &Arc<Self>, req: LockRequest, wait: bool) -> Result<()> {
        let LockRequest { ino, owner, start, end, typ, pid } = req;
        let end = wire_end(end);
        let flavor = LockFlavor::Posix;
        let kind = match typ {
            LockType::Unlock => return self.unlock_range(ino, owner, start, end).await,
            LockType::Read => LockKind::Read,
            LockType::Write => LockKind::Write,
        };
        let want = Lock { ino, owner, flavor, kind, start, end, pid };
        loop {
            let wait_ms = if wait { WAIT_ROUND_MS } else { 0 };
            let r = self
                .with_session(|s| {
                    let l = want.clone();
                    async move {
                        self.dir
                            .call(|c, ctx| {
                                let l = l.clone();
                                async move { c.set_lock(ctx, s, l, wait_ms).await }
                            })
                            .await
                    }
                })
                .await;
            match r {
                Ok(()) => {
                    record(&mut lock(&self.session.locks), want);
                    debug!(ino = %ino, owner, start, end, ?kind, "lock granted");
                    return self.revalidate(ino).await;
                }
                Err(Error::Dir(DirError::Grace)) => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(Error::Dir(DirError::WouldBlock)) if wait => {}
                // The session's lock cap (or dirsvc's cap of waiting calls):
                // what a local filesystem answers when its lock table is full.
                Err(Error::Dir(DirError::Limit(why))) => {
                    return Err(Error::Errno(libc::ENOLCK, format!("lock refused by dirsvc: {why}")))
                }
                Err(e) => return Err(e),
            }
            if wait && signal_pending(pid) {
                return Err(Error::Errno(libc::EINTR, "interrupted while waiting for a lock".into()));
            }
        }
    }

    /// Releases `owner`'s locks on `[start, end]` of `ino` (`end` in
    /// dirsvc's convention).
    pub(super) async fn unlock_range(
        self: &Arc<Self>,
        ino: InodeId,
        owner: u64,
        start: u64,
        end: u64,
    ) -> Result<()> {
        let flavor = LockFlavor::Posix;
        let holds = lock(&self.session.locks).iter().any(|l| l.ino == ino && l.owner == owner);
        if !holds {
            return Ok(());
        }
        // What was written under the lock is committed before the next
        // holder (maybe on another mount) can take it.
        self.flush_ino(ino).await?;
        self.with_session(|s| async move {
            self.dir
                .call(|c, ctx| async move { c.unlock(ctx, s, ino, owner, flavor, start, end).await })
                .await
        })
        .await?;
        carve(&mut lock(&self.session.locks), ino, owner, flavor, start, end);
        Ok(())
    }

    /// Releases every lock `owner` holds on `ino` (on close: POSIX locks go
    /// with any close of the file by their process; flock locks with the
    /// last close of the open file description).
    ///
    /// Errors: dirsvc and transport errors.
    pub async fn unlock_owner(self: &Arc<Self>, ino: InodeId, owner: u64) -> Result<()> {
        self.unlock_range(ino, owner, 0, u64::MAX).await
    }

    /// The first lock that blocks the one described (`F_GETLK`), or `None`
    /// (the kernel then reports `F_UNLCK`).
    ///
    /// Errors: dirsvc and transport errors.
    pub async fn getlk(&self, req: LockRequest) -> Result<Option<LockReport>> {
        let LockRequest { ino, owner, start, end, typ, pid } = req;
        let kind = match typ {
            LockType::Read => LockKind::Read,
            LockType::Write | LockType::Unlock => LockKind::Write,
        };
        let probe = Lock { ino, owner, flavor: LockFlavor::Posix, kind, start, end: wire_end(end), pid };
        let conflict = self
            .with_session(|s| {
                let l = probe.clone();
                async move {
                    self.dir
                        .call(|c, ctx| {
                            let l = l.clone();
                            async move { c.get_lock(ctx, s, l).await }
                        })
                        .await
                }
            })
            .await?;
        Ok(conflict.map(|c| {
            let typ = match c.lock.kind {
                LockKind::Read => libc::F_RDLCK,
                LockKind::Write => libc::F_WRLCK,
            };
            let end = if c.lock.end == u64::MAX { OFFSET_MAX } else { c.lock.end };
            // A holder on another client has no pid here; Linux reports 0
            // for remote holders on network filesystems too.
            let pid = if c.same_session { c.lock.pid } else { 0 };
            (c.lock.start, end, typ, pid)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn l(owner: u64, kind: LockKind, start: u64, end: u64) -> Lock {
        Lock { ino: InodeId(9), owner, flavor: LockFlavor::Posix, kind, start, end, pid: 1 }
    }

    #[test]
    pub(super) fn unlocking_the_middle_of_a_range_splits_it() {
        let mut held = vec![l(1, LockKind::Write, 0, 99)];
        carve(&mut held, InodeId(9), 1, LockFlavor::Posix, 10, 19);
        held.sort_by_key(|l| l.start);
        assert_eq!(held, vec![l(1, LockKind::Write, 0, 9), l(1, LockKind::Write, 20, 99)]);
    }

    #[test]
    pub(super) fn a_new_kind_replaces_the_overlap_and_same_kinds_merge() {
        let mut held = vec![l(1, LockKind::Read, 0, 9)];
        record(&mut held, l(1, LockKind::Read, 10, 19));
        assert_eq!(held, vec![l(1, LockKind::Read, 0, 19)]);
        record(&mut held, l(1, LockKind::Write, 5, 14));
        held.sort_by_key(|l| l.start);
        assert_eq!(
            held,
            vec![l(1, LockKind::Read, 0, 4), l(1, LockKind::Write, 5, 14), l(1, LockKind::Read, 15, 19)]
        );
    }

    #[test]
    pub(super) fn other_owners_are_untouched() {
        let mut held = vec![l(1, LockKind::Read, 0, 9), l(2, LockKind::Read, 0, 9)];
        carve(&mut held, InodeId(9), 1, LockFlavor::Posix, 0, u64::MAX);
        assert_eq!(held, vec![l(2, LockKind::Read, 0, 9)]);
    }

    #[test]
    pub(super) fn to_end_of_file_is_u64_max_on_the_wire() {
        assert_eq!(wire_end(OFFSET_MAX), u64::MAX);
        assert_eq!(wire_end(41), 41);
    }

    #[test]
    pub(super) fn a_process_that_is_gone_counts_as_interrupted() {
        assert!(signal_pending(u32::MAX - 1));
        assert!(!signal_pending(std::process::id()));
    }
}
