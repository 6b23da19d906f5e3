//! Open marks and orphans: which sessions hold which inodes open
//! (`open_file` / `release_file`), the "keep or free" decision unlink and
//! rename ask when an inode loses its last name, and the lingering
//! orphans the `sessions` worker frees when their time is up (see the
//! parent module's doc).

use super::Sessions;
use crate::error::Error;
use crate::store::{Keep, Store};
use common::rpc::dir::{DirError, SessionId};
use common::InodeId;
use std::collections::{HashMap, HashSet};
use std::sync::PoisonError;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info};

/// Lingering orphans freed per hold of the open-marks mutex.
const LINGER_FREE_BATCH: usize = 64;

/// Pause before lingering orphans whose freeing failed are tried again.
const LINGER_RETRY: Duration = Duration::from_secs(1);

/// Open marks (the mutex held across unlink, rename and free commits).
#[derive(Debug, Default)]
pub(crate) struct Opens {
    pub(super) by_session: HashMap<SessionId, HashSet<u64>>,
    /// Number of sessions holding each inode open (no zero entries).
    pub(super) count: HashMap<u64, u32>,
}

impl Opens {
    /// Marks `ino` open by `session` (once per session).
    pub(super) fn mark(&mut self, session: SessionId, ino: u64) {
        if self.by_session.entry(session).or_default().insert(ino) {
            *self.count.entry(ino).or_default() += 1;
        }
    }

    /// Drops one session's mark; true if that was the last mark of `ino`.
    pub(super) fn unmark(&mut self, ino: u64) -> bool {
        match self.count.get_mut(&ino) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.count.remove(&ino);
                true
            }
            None => false,
        }
    }

    /// Whether any session holds `ino` open.
    pub(super) fn is_open(&self, ino: u64) -> bool {
        self.count.contains_key(&ino)
    }
}

impl Sessions {
    /// Whether the orphan-or-free decision for `ino` is "keep".
    pub(super) fn keeps(&self, opens: &Opens, ino: InodeId) -> bool {
        self.in_grace() || opens.is_open(ino.0)
    }

    /// Runs `f` (an unlink or rename on the store) with the open-marks
    /// mutex held and a [`Keep`] answering whether an inode losing its last
    /// link must be kept: always while files linger
    /// ([`crate::DirsvcConfig::unlinked_linger`] not zero; the caller then
    /// hands the orphan to [`Sessions::linger`]), else when it is marked
    /// open or in the grace period. Blocking.
    pub(crate) fn with_keep<T>(&self, f: impl FnOnce(Keep<'_>) -> T) -> T {
        let opens = self.opens();
        f(&|ino| !self.linger.is_zero() || self.keeps(&opens, ino))
    }

    /// Keeps orphan `ino` (it just lost its last name, or its last open
    /// mark) until the linger time has passed; the worker then frees it
    /// unless a session marks it. A dirsvc that stops meanwhile frees it
    /// at its next start (or at the end of that start's grace period,
    /// which frees every unmarked orphan, lingering or not).
    pub(crate) fn linger(&self, ino: InodeId) {
        if self.linger.is_zero() {
            return;
        }
        let mut q = self.lingering.lock().unwrap_or_else(PoisonError::into_inner);
        let was_empty = q.is_empty();
        q.push_back((Instant::now() + self.linger, ino));
        drop(q);
        if was_empty {
            self.kick.notify_one();
        }
    }

    /// When the oldest lingering orphan is due, if any.
    pub(super) fn next_linger_deadline(&self) -> Option<Instant> {
        self.lingering.lock().unwrap_or_else(PoisonError::into_inner).front().map(|(at, _)| *at)
    }

    /// Frees the lingering orphans whose time is up and that no session
    /// marks, [`LINGER_FREE_BATCH`] per hold of the open-marks mutex (so
    /// opens are not held up behind a long run of frees). Not during the
    /// grace period (its end frees every unmarked orphan). Blocking.
    ///
    /// Errors: store errors; the orphans of the failed batch are queued
    /// again, due in [`LINGER_RETRY`] (one freed meanwhile is skipped
    /// then: it is no orphan any more).
    pub(crate) fn free_lingering(&self, store: &Store) -> Result<(), Error> {
        if self.in_grace() {
            return Ok(());
        }
        let now = Instant::now();
        let mut freed = 0usize;
        loop {
            let due: Vec<InodeId> = {
                let mut q = self.lingering.lock().unwrap_or_else(PoisonError::into_inner);
                let n = q.iter().take(LINGER_FREE_BATCH).take_while(|(at, _)| *at <= now).count();
                q.drain(..n).map(|(_, ino)| ino).collect()
            };
            if due.is_empty() {
                break;
            }
            let opens = self.opens();
            match store.free_orphans(&due, &|i| self.keeps(&opens, i)) {
                Ok(f) => freed += f.len(),
                Err(e) => {
                    drop(opens);
                    let mut q = self.lingering.lock().unwrap_or_else(PoisonError::into_inner);
                    let retry = Instant::now() + LINGER_RETRY;
                    for ino in due.into_iter().rev() {
                        q.push_front((retry, ino));
                    }
                    return Err(e);
                }
            }
        }
        if freed > 0 {
            debug!(freed, "unlinked files freed after lingering");
        }
        Ok(())
    }

    /// `open_file`: marks `ino` open by `id` and returns its attributes.
    /// Blocking.
    ///
    /// Errors: `NoSession`, `NotFound`, store errors.
    pub(crate) fn open_file(
        &self,
        store: &Store,
        id: SessionId,
        ino: InodeId,
    ) -> Result<common::rpc::dir::Attr, Error> {
        let mut opens = self.opens();
        if !opens.by_session.contains_key(&id) {
            return Err(DirError::NoSession.into());
        }
        // Under the mutex: an unlink that freed the inode has committed,
        // and one that has not decided yet will see the mark.
        let attr = store.getattr(ino)?;
        opens.mark(id, ino.0);
        Ok(attr)
    }

    /// `release_file`: drops `id`'s mark on `ino`. If it is an orphan no
    /// one else holds (and not in the grace period) it is freed: after
    /// the linger ([`Sessions::linger`]; a kernel may still open it by
    /// the inode an earlier lookup found), or at once with no linger.
    /// Idempotent. Blocking.
    ///
    /// Errors: store errors.
    pub(crate) fn release_file(&self, store: &Store, id: SessionId, ino: InodeId) -> Result<(), Error> {
        let mut opens = self.opens();
        let had = opens.by_session.get_mut(&id).is_some_and(|set| set.remove(&ino.0));
        if had && opens.unmark(ino.0) && !self.in_grace() {
            if !self.linger.is_zero() {
                drop(opens);
                if store.is_orphan(ino)? {
                    self.linger(ino);
                }
                return Ok(());
            }
            let freed = store.free_orphans(&[ino], &|i| self.keeps(&opens, i))?;
            if !freed.is_empty() {
                info!(%ino, "unlinked file freed at its last release");
            }
        }
        Ok(())
    }
}
