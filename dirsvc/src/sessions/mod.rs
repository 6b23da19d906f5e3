//! Client sessions: leases, open-file marks, locks, and the reclaim grace
//! period after a start.
//!
//! A session is one mounted fs-client. It lives while the client renews
//! its lease (`renew_session` within [`crate::DirsvcConfig::session_lease`])
//! and owns two kinds of state, both in memory:
//! - **Open marks** (`open_file` / `release_file`): a set of inodes per
//!   session and a count of sessions per inode. An inode whose last name
//!   goes while it is marked becomes an orphan (see
//!   [`crate::store::tables`]) instead of being freed; when its last mark
//!   goes it is freed like any unlinked file.
//! - **Lingering orphans** ([`crate::DirsvcConfig::unlinked_linger`]): an
//!   inode that loses its last name unmarked, or loses its last mark
//!   nameless, stays an orphan that long, then the worker frees it unless
//!   a session marked it meanwhile. A kernel opens by the inode its lookup
//!   found a moment earlier; an open racing an editor's save thus opens
//!   the old file instead of failing.
//! - **Locks** ([`crate::locks`]): POSIX and flock byte-range locks.
//! - **Reserved inode numbers** (`reserve_inodes`): numbers handed out
//!   from the durable counter that only this session may use, once, for a
//!   new symlink (the client seals the target bound to the number before
//!   the inode exists). At most [`RESERVED_PER_SESSION_MAX`] unused ones
//!   per session; forgotten when the session ends or dirsvc restarts (the
//!   numbers are then simply never used).
//!
//! When a session ends (`close_session`, or its lease runs out, checked
//! every quarter lease by the `sessions` worker) its locks go (and
//! waiters are woken) and its marks go (freeing orphans no one else holds).
//!
//! Which sessions are alive is also recorded durably (`sessions-v1`), so
//! that after a restart dirsvc knows who may come back. If any session was
//! alive, a **grace period** ([`crate::DirsvcConfig::grace_period`], default one
//! lease) starts: clients reclaim their session (`open_session` with
//! `reclaim`, re-sending their opens and locks), new locks are refused with
//! `Grace`, and no orphan is freed (its holder may not have reclaimed yet).
//! The grace period ends when every recorded session has reclaimed or
//! closed, or when its time is up; then every orphan no session marks is
//! freed and the sessions that did not come back are forgotten. With no
//! recorded session (a fresh or cleanly idle database) there is no grace
//! period at all. A reclaim after the grace period gets what still exists
//! and does not conflict (the rest is listed in the grant as lost).
//!
//! Serialization: unlink and rename decide "orphan or free" inside their
//! write transaction while holding the open-marks mutex (`Sessions::with_keep`),
//! and `open_file` checks the inode and marks it while holding the same
//! mutex. So an `open_file` racing an unlink either marks the inode before
//! the unlink decides (it is kept) or runs after the unlink committed (it
//! sees the inode gone: `NotFound`); it never marks a freed inode. Freeing
//! an orphan (release, session end, end of grace) also happens under that
//! mutex, after re-checking that no mark appeared. The open-marks mutex is
//! only taken on blocking threads (it is held across redb commits); the
//! session-and-lock mutex is only held for in-memory work.

mod opens;

use crate::error::{invalid, Error};
use crate::limits::{limit, Principal};
use crate::locks::LockTable;
use crate::shared::Shared;
use crate::store::tables::SessionRecord;
use crate::store::Store;
use common::rpc::dir::{
    DirError, Lock, LockConflict, LockFlavor, SessionGrant, SessionId, SessionOpen, RESERVED_PER_SESSION_MAX,
    RESERVE_PER_CALL_MAX,
};
use common::time::Timestamp;
use common::{InodeId, NodeId};
use opens::Opens;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Longest `set_lock` wait, whatever the caller asks.
pub const MAX_LOCK_WAIT: Duration = Duration::from_millis(10_000);

/// Longest session label kept, in bytes (longer ones are cut).
pub const MAX_LABEL_BYTES: usize = 1024;

/// Shortest pause of the expiry worker.
const MIN_TICK: Duration = Duration::from_millis(10);

/// A live session.
#[derive(Debug)]
struct Live {
    label: String,
    expires: Instant,
    /// The node whose certificate opened it.
    owner: NodeId,
}

/// The caps on sessions, locks and waiting calls (from
/// [`crate::DirsvcConfig`]; see [`crate::limits`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionLimits {
    /// Live sessions per principal.
    pub per_principal: usize,
    /// Live sessions in total.
    pub total: usize,
    /// Lock ranges per session.
    pub locks_per_session: usize,
    /// Waiting calls per session.
    pub waiters_per_session: usize,
    /// Waiting calls in total.
    pub waiters: usize,
}

impl SessionLimits {
    /// The caps `config` sets.
    pub(crate) fn of(config: &crate::DirsvcConfig) -> Self {
        SessionLimits {
            per_principal: config.max_sessions_per_principal,
            total: config.max_sessions,
            locks_per_session: config.max_locks_per_session,
            waiters_per_session: config.max_waiters_per_session,
            waiters: config.max_waiters,
        }
    }
}

/// Sessions, locks and lock waiters (the short-held mutex).
#[derive(Debug, Default)]
struct State {
    live: HashMap<SessionId, Live>,
    locks: LockTable,
    /// Per inode, woken whenever a lock on it goes (and on session ends).
    waiters: HashMap<u64, Arc<Notify>>,
    /// Sessions recorded by the previous run that have not reclaimed yet
    /// (empty outside the grace period), with their labels and owners.
    unreclaimed: HashMap<SessionId, (String, NodeId)>,
    /// Inode numbers each session reserved and has not used yet.
    reserved: HashMap<SessionId, HashSet<u64>>,
    /// Calls waiting in dirsvc (`set_lock`, `poll_changes`), per session;
    /// no zero entries.
    waiting: HashMap<SessionId, usize>,
    /// Sum of `waiting`.
    waiting_total: usize,
}

impl State {
    fn wake(&self, ino: u64) {
        if let Some(n) = self.waiters.get(&ino) {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for n in self.waiters.values() {
            n.notify_waiters();
        }
    }
}

/// Every session of this dirsvc run, shared by the handlers and the
/// `sessions` worker.
#[derive(Debug)]
pub(crate) struct Sessions {
    lease: Duration,
    grace_until: Instant,
    /// True during the grace period (read under the opens mutex for orphan
    /// decisions, lock-free for `set_lock`).
    grace: AtomicBool,
    state: Mutex<State>,
    opens: Mutex<Opens>,
    /// Wakes the worker when the last recorded session reclaimed.
    kick: Notify,
    limits: SessionLimits,
    /// [`crate::DirsvcConfig::unlinked_linger`].
    linger: Duration,
    /// Inodes that lost their last name and are kept until the deadline
    /// (oldest first); the worker frees them then unless a session marks
    /// them.
    lingering: Mutex<VecDeque<(Instant, InodeId)>>,
}

impl Sessions {
    /// Sessions for a dirsvc that just opened `store`. Blocking. If the
    /// store records live sessions and `grace` is not zero, the grace
    /// period starts now; otherwise orphans left in the store are freed
    /// and stale session rows removed at once.
    ///
    /// Errors: as [`Store::sessions`], [`Store::end_sessions`].
    pub(crate) fn new(
        store: &Store,
        lease: Duration,
        grace: Duration,
        limits: SessionLimits,
        linger: Duration,
    ) -> Result<Self, Error> {
        let recorded = store.sessions()?;
        let orphans = store.orphans()?;
        let in_grace = !recorded.is_empty() && !grace.is_zero();
        let sessions = Sessions {
            lease,
            grace_until: Instant::now() + grace,
            grace: AtomicBool::new(in_grace),
            state: Mutex::new(State::default()),
            opens: Mutex::new(Opens::default()),
            kick: Notify::new(),
            limits,
            linger,
            lingering: Mutex::new(VecDeque::new()),
        };
        if in_grace {
            let mut st = sessions.state();
            st.unreclaimed =
                recorded.into_iter().map(|(id, rec)| (id, (rec.label, NodeId(rec.owner)))).collect();
            info!(
                sessions = st.unreclaimed.len(),
                orphans = orphans.len(),
                grace_ms = grace.as_millis() as u64,
                "grace period: waiting for clients to reclaim their sessions; new locks wait"
            );
        } else {
            let ids: Vec<SessionId> = recorded.iter().map(|(id, _)| *id).collect();
            let freed = store.end_sessions(&ids, &orphans, &|_| false)?;
            if !ids.is_empty() || !freed.is_empty() {
                info!(
                    sessions = ids.len(),
                    orphans_freed = freed.len(),
                    "no grace period: previous sessions forgotten, their unlinked files freed"
                );
            }
        }
        Ok(sessions)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn opens(&self) -> MutexGuard<'_, Opens> {
        self.opens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lease length.
    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether the reclaim grace period is on.
    pub(crate) fn in_grace(&self) -> bool {
        self.grace.load(Ordering::Acquire)
    }

    /// `open_session` by node `owner`: opens a new session or reclaims one
    /// (see the module doc). A session another node opened is not
    /// reclaimed. Blocking (one durable write, a read per reclaimed inode).
    /// Reclaimed locks past the lock cap are reported lost.
    ///
    /// Errors: `Invalid` for a reclaim of id 0; `Unauthorized` for a
    /// reclaim of another node's session; `Limit` when the session is not
    /// live yet and `owner` already holds its cap of sessions, or dirsvc
    /// holds its total; store errors.
    pub(crate) fn open(
        &self,
        store: &Store,
        open: SessionOpen,
        owner: NodeId,
    ) -> Result<SessionGrant, Error> {
        let label = cut_label(open.label);
        let reclaim = open.reclaim.is_some();
        let id = match open.reclaim {
            Some(SessionId(0)) => return Err(invalid("session id 0 cannot be reclaimed")),
            Some(id) => {
                if self.owner_of(id).is_some_and(|o| o != owner) {
                    return Err(DirError::Unauthorized("that session belongs to another node".into()).into());
                }
                id
            }
            None => self.fresh_id(),
        };
        // Under the open-marks mutex: serialized with the end of the grace
        // period, which forgets the recorded sessions not back yet.
        let mut opens = self.opens();
        // Opens are serialized by the open-marks mutex, so the count cannot
        // change between this check and the insert below.
        self.check_session_caps(id, owner)?;
        store.put_session(
            id,
            &SessionRecord { label: label.clone(), opened: Timestamp::now(), owner: owner.0 },
        )?;
        let all_back = {
            let mut st = self.state();
            let expires = Instant::now() + self.lease;
            st.live.entry(id).or_insert_with(|| Live { label: label.clone(), expires, owner }).expires =
                expires;
            st.unreclaimed.remove(&id).is_some() && st.unreclaimed.is_empty()
        };
        // Reclaimed opens: every inode that still exists (orphans
        // included) is marked again.
        let mut exists: HashMap<u64, bool> = HashMap::new();
        let mut lost_inodes = Vec::new();
        let mut marked = 0usize;
        opens.by_session.entry(id).or_default();
        for ino in open.open_inodes {
            if exists.contains_key(&ino.0) {
                continue;
            }
            let found = inode_exists(store, ino)?;
            exists.insert(ino.0, found);
            if found {
                opens.mark(id, ino.0);
                marked += 1;
            } else {
                lost_inodes.push(ino);
            }
        }
        drop(opens);
        let mut lock_exists = Vec::with_capacity(open.locks.len());
        for l in &open.locks {
            let found = match exists.get(&l.ino.0) {
                Some(f) => *f,
                None => {
                    let f = inode_exists(store, l.ino)?;
                    exists.insert(l.ino.0, f);
                    f
                }
            };
            lock_exists.push(found);
        }
        // Reclaimed locks: granted unless they conflict with a lock held
        // now (during the grace period only other reclaims hold any).
        let mut lost_locks = Vec::new();
        let mut granted = 0usize;
        let live_sessions = {
            let mut st = self.state();
            for (l, found) in open.locks.into_iter().zip(lock_exists) {
                let l = normalize(l);
                if !found || l.start > l.end || st.locks.conflict(id, &l).is_some() {
                    lost_locks.push(l);
                } else if st.locks.set_within(id, l.clone(), self.limits.locks_per_session) {
                    granted += 1;
                } else {
                    lost_locks.push(l);
                }
            }
            st.live.len()
        };
        if all_back && self.in_grace() {
            self.kick.notify_one();
        }
        info!(
            session = %id,
            label = %label,
            reclaim,
            grace = self.in_grace(),
            opens = marked,
            locks = granted,
            lost_inodes = lost_inodes.len(),
            lost_locks = lost_locks.len(),
            live_sessions,
            "session {}",
            if reclaim { "reclaimed" } else { "opened" }
        );
        Ok(SessionGrant {
            id,
            lease_ms: self.lease.as_millis() as u64,
            lost_inodes,
            lost_locks,
            max_commit_entries: u32::try_from(store.max_commit_entries()).unwrap_or(u32::MAX),
        })
    }

    /// `Limit` unless session `id` is live already or node `owner` and
    /// dirsvc are both below their session caps.
    fn check_session_caps(&self, id: SessionId, owner: NodeId) -> Result<(), Error> {
        let principal = Principal::node(owner);
        let st = self.state();
        if st.live.contains_key(&id) {
            return Ok(());
        }
        let caps = &self.limits;
        if st.live.len() >= caps.total {
            warn!(%principal, sessions = st.live.len(), "session refused: dirsvc holds its maximum");
            return Err(limit(format!("dirsvc holds its maximum of {} sessions", caps.total)).into());
        }
        let mine = st.live.values().filter(|l| l.owner == owner).count();
        if mine >= caps.per_principal {
            warn!(%principal, sessions = mine, "session refused: the caller holds its maximum");
            return Err(
                limit(format!("{principal} holds its maximum of {} sessions", caps.per_principal)).into()
            );
        }
        Ok(())
    }

    /// A random non-zero id no live or recorded session uses.
    fn fresh_id(&self) -> SessionId {
        let st = self.state();
        loop {
            let id = SessionId(rand::random::<u64>());
            if id.0 != 0 && !st.live.contains_key(&id) && !st.unreclaimed.contains_key(&id) {
                return id;
            }
        }
    }

    /// The node that owns session `id` (live, or recorded and not yet
    /// reclaimed), if any.
    pub(crate) fn owner_of(&self, id: SessionId) -> Option<NodeId> {
        let st = self.state();
        st.live.get(&id).map(|l| l.owner).or_else(|| st.unreclaimed.get(&id).map(|(_, o)| *o))
    }

    /// Whether `node` may name session `id`: unless the session (live, or
    /// recorded and not yet reclaimed) belongs to another node. A session
    /// no node holds passes: the call itself then answers `NoSession`
    /// (renew, open, locks, polls), or does nothing, as the idempotent
    /// calls (close, release, unlock) promise; and the owner of a recorded
    /// session may close it during the grace period instead of reclaiming
    /// it.
    ///
    /// Errors: `Unauthorized` for another node's session.
    pub(crate) fn check_owner(&self, id: SessionId, node: NodeId) -> Result<(), Error> {
        match self.owner_of(id) {
            Some(owner) if owner != node => {
                Err(DirError::Unauthorized("that session belongs to another node".into()).into())
            }
            _ => Ok(()),
        }
    }

    /// `renew_session`: the lease runs for another lease from now.
    ///
    /// Errors: `NoSession`.
    pub(crate) fn renew(&self, id: SessionId) -> Result<(), Error> {
        let mut st = self.state();
        let live = st.live.get_mut(&id).ok_or(DirError::NoSession)?;
        live.expires = Instant::now() + self.lease;
        Ok(())
    }

    /// Errors: `NoSession` unless `id` is live.
    pub(crate) fn check(&self, id: SessionId) -> Result<(), Error> {
        if self.state().live.contains_key(&id) {
            Ok(())
        } else {
            Err(DirError::NoSession.into())
        }
    }

    /// Ends sessions `ids` (`close_session` with `why` "closed", expiry
    /// with "expired"): drops their locks (waking waiters) and open marks,
    /// removes their durable rows and frees the orphans no one holds any
    /// more (not during the grace period). Idempotent. Blocking.
    ///
    /// Errors: store errors (the in-memory state is released anyway; an
    /// orphan not freed then is freed at the next start).
    pub(crate) fn end(&self, store: &Store, ids: &[SessionId], why: &'static str) -> Result<(), Error> {
        let mut durable = Vec::new();
        {
            let mut st = self.state();
            for id in ids {
                let live = st.live.remove(id);
                let recorded = st.unreclaimed.remove(id);
                st.reserved.remove(id);
                let dropped = st.locks.drop_session(*id).len();
                if let Some(l) = &live {
                    info!(
                        session = %id,
                        label = %l.label,
                        locks_dropped = dropped,
                        live_sessions = st.live.len(),
                        "session {why}"
                    );
                }
                if live.is_some() || recorded.is_some() {
                    durable.push(*id);
                }
            }
            // Wakes lock waiters: of the dropped locks, and of the ended
            // sessions (which then see NoSession).
            st.wake_all();
            if self.in_grace() && st.unreclaimed.is_empty() {
                self.kick.notify_one();
            }
        }
        let mut opens = self.opens();
        let mut last = Vec::new();
        for id in ids {
            if let Some(set) = opens.by_session.remove(id) {
                if !durable.contains(id) {
                    durable.push(*id);
                }
                for ino in set {
                    if opens.unmark(ino) {
                        last.push(InodeId(ino));
                    }
                }
            }
        }
        if self.in_grace() {
            last.clear();
        }
        let freed = store.end_sessions(&durable, &last, &|ino| self.keeps(&opens, ino))?;
        if !freed.is_empty() {
            info!(freed = freed.len(), "unlinked files freed as their last holder went");
        }
        Ok(())
    }

    /// Ends every session whose lease ran out. Blocking.
    pub(crate) fn expire(&self, store: &Store) -> Result<(), Error> {
        let now = Instant::now();
        let expired: Vec<SessionId> =
            self.state().live.iter().filter(|(_, l)| l.expires <= now).map(|(id, _)| *id).collect();
        if expired.is_empty() {
            return Ok(());
        }
        self.end(store, &expired, "expired")
    }

    /// Whether the grace period should end now (time is up, or every
    /// recorded session came back).
    fn grace_over(&self) -> bool {
        self.in_grace() && (Instant::now() >= self.grace_until || self.state().unreclaimed.is_empty())
    }

    /// Ends the grace period: frees every orphan no session marks and
    /// forgets the recorded sessions that did not reclaim. Blocking.
    ///
    /// Errors: store errors (the grace period then continues and the
    /// worker retries).
    pub(crate) fn end_grace(&self, store: &Store) -> Result<(), Error> {
        // The open-marks mutex first: reclaims hold it while they record
        // themselves, so none is half-way now.
        let opens = self.opens();
        if !self.in_grace() {
            return Ok(());
        }
        let stale: Vec<(SessionId, String)> =
            self.state().unreclaimed.iter().map(|(id, (l, _))| (*id, l.clone())).collect();
        let ids: Vec<SessionId> = stale.iter().map(|(id, _)| *id).collect();
        let orphans = store.orphans()?;
        let freed = store.end_sessions(&ids, &orphans, &|ino| opens.is_open(ino.0))?;
        self.grace.store(false, Ordering::Release);
        {
            let mut st = self.state();
            for (id, _) in &stale {
                st.unreclaimed.remove(id);
            }
        }
        for (id, label) in &stale {
            warn!(session = %id, label = %label, "session did not come back after the restart; forgotten");
        }
        info!(orphans_freed = freed.len(), orphans_kept = orphans.len() - freed.len(), "grace period over");
        Ok(())
    }

    /// `reserve_inodes`: hands `count` fresh inode numbers to session `id`.
    /// Blocking (one durable write: the counter).
    ///
    /// Errors: `NoSession`; `Invalid` for a count of 0 or over
    /// [`RESERVE_PER_CALL_MAX`]; `Limit` when the session would hold more
    /// than [`RESERVED_PER_SESSION_MAX`] unused numbers; store errors.
    pub(crate) fn reserve(&self, store: &Store, id: SessionId, count: u32) -> Result<(InodeId, u32), Error> {
        if count == 0 || count > RESERVE_PER_CALL_MAX {
            return Err(invalid(format!("reserve 1 to {RESERVE_PER_CALL_MAX} inode numbers, not {count}")));
        }
        // The session must be live and stay within its bound, before the
        // numbers are taken and again after (the state is not held across
        // the store's transaction).
        let admit = |st: &State| -> Result<(), Error> {
            if !st.live.contains_key(&id) {
                return Err(DirError::NoSession.into());
            }
            if st.reserved.get(&id).map_or(0, HashSet::len) + count as usize > RESERVED_PER_SESSION_MAX {
                return Err(DirError::Limit(format!(
                    "a session holds at most {RESERVED_PER_SESSION_MAX} reserved inode numbers"
                ))
                .into());
            }
            Ok(())
        };
        admit(&self.state())?;
        let first = store.reserve_inodes(count)?;
        let mut st = self.state();
        // The numbers are spent either way; a session that ended or went
        // over its bound meanwhile just does not get them.
        admit(&st)?;
        st.reserved.entry(id).or_default().extend(first.0..first.0 + u64::from(count));
        Ok((first, count))
    }

    /// Takes `ino` out of session `id`'s reserved numbers, for a symlink
    /// about to be made with it.
    ///
    /// Errors: `NoSession`; `NotReserved` if the session did not reserve it
    /// or used it already.
    pub(crate) fn take_reserved(&self, id: SessionId, ino: InodeId) -> Result<(), Error> {
        let mut st = self.state();
        if !st.live.contains_key(&id) {
            return Err(DirError::NoSession.into());
        }
        if st.reserved.get_mut(&id).is_some_and(|set| set.remove(&ino.0)) {
            Ok(())
        } else {
            Err(DirError::NotReserved(ino).into())
        }
    }

    /// Gives `ino` back to session `id` (the symlink it was taken for was
    /// not made), if the session still lives.
    pub(crate) fn give_back(&self, id: SessionId, ino: InodeId) {
        let mut st = self.state();
        if st.live.contains_key(&id) {
            st.reserved.entry(id).or_default().insert(ino.0);
        }
    }

    /// One attempt at `set_lock`: `Ok(true)` if granted, `Ok(false)` if it
    /// conflicts.
    fn try_lock(&self, id: SessionId, lock: &Lock) -> Result<bool, Error> {
        let mut st = self.state();
        if !st.live.contains_key(&id) {
            return Err(DirError::NoSession.into());
        }
        if self.in_grace() {
            return Err(DirError::Grace.into());
        }
        if st.locks.conflict(id, lock).is_some() {
            return Ok(false);
        }
        let max = self.limits.locks_per_session;
        if !st.locks.set_within(id, lock.clone(), max) {
            return Err(limit(format!("the session holds its maximum of {max} locks")).into());
        }
        Ok(true)
    }

    /// A place for one call of session `id` to wait (a `set_lock` wait or a
    /// `poll_changes` long poll), given back when the slot drops.
    ///
    /// Errors: `Limit` when the session or dirsvc has its maximum of
    /// waiting calls.
    pub(crate) fn wait_slot(&self, id: SessionId) -> Result<WaitSlot<'_>, Error> {
        let mut st = self.state();
        let caps = &self.limits;
        let mine = st.waiting.get(&id).copied().unwrap_or(0);
        if mine >= caps.waiters_per_session {
            return Err(limit(format!(
                "the session has its maximum of {} waiting calls",
                caps.waiters_per_session
            ))
            .into());
        }
        if st.waiting_total >= caps.waiters {
            return Err(limit(format!("dirsvc has its maximum of {} waiting calls", caps.waiters)).into());
        }
        st.waiting.insert(id, mine + 1);
        st.waiting_total += 1;
        Ok(WaitSlot { sessions: self, id })
    }

    /// `set_lock` (the caller checked that the inode exists): grants
    /// `lock` to `id`, waiting up to `wait` (capped at [`MAX_LOCK_WAIT`])
    /// for conflicting locks to go. A waiter re-checks whenever a lock on
    /// the inode is released or a session ends; waiters are not queued, so
    /// a later request may be granted first (no fairness), and deadlocks
    /// are not detected (the wait times out instead).
    ///
    /// Errors: `Invalid` (start after end), `NoSession`, `Grace`,
    /// `WouldBlock`, `Limit` (the session's lock cap, or its or dirsvc's
    /// cap of waiting calls).
    pub(crate) async fn set_lock(&self, id: SessionId, lock: Lock, wait: Duration) -> Result<(), Error> {
        let lock = normalize(lock);
        if lock.start > lock.end {
            return Err(invalid("lock range starts after it ends"));
        }
        if self.try_lock(id, &lock)? {
            return Ok(());
        }
        if wait.is_zero() {
            return Err(DirError::WouldBlock.into());
        }
        let _slot = self.wait_slot(id)?;
        let deadline = Instant::now() + wait.min(MAX_LOCK_WAIT);
        let waiter = Waiter::new(self, lock.ino.0);
        loop {
            let woken = waiter.notify().notified();
            tokio::pin!(woken);
            // Registered before the check, so an unlock in between wakes us.
            woken.as_mut().enable();
            if self.try_lock(id, &lock)? {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(DirError::WouldBlock.into());
            }
        }
    }

    /// `unlock`: releases `owner`'s locks of `flavor` on `ino` within
    /// `[start, end]`. Idempotent (also for an ended session, which holds
    /// nothing).
    ///
    /// Errors: `Invalid` (start after end).
    pub(crate) fn unlock(
        &self,
        id: SessionId,
        ino: InodeId,
        owner: u64,
        flavor: LockFlavor,
        start: u64,
        end: u64,
    ) -> Result<(), Error> {
        let (start, end) = if flavor == LockFlavor::Flock { (0, u64::MAX) } else { (start, end) };
        if start > end {
            return Err(invalid("unlock range starts after it ends"));
        }
        let mut st = self.state();
        if st.locks.unlock(id, ino.0, owner, flavor, start, end) {
            st.wake(ino.0);
        }
        Ok(())
    }

    /// `get_lock`: the first lock that would block `lock`.
    ///
    /// Errors: `NoSession`, `Invalid` (start after end).
    pub(crate) fn get_lock(&self, id: SessionId, lock: Lock) -> Result<Option<LockConflict>, Error> {
        let lock = normalize(lock);
        if lock.start > lock.end {
            return Err(invalid("lock range starts after it ends"));
        }
        let st = self.state();
        if !st.live.contains_key(&id) {
            return Err(DirError::NoSession.into());
        }
        Ok(st
            .locks
            .conflict(id, &lock)
            .map(|h| LockConflict { lock: h.lock.clone(), same_session: h.session == id }))
    }
}

/// Whether `ino` exists (orphans included).
fn inode_exists(store: &Store, ino: InodeId) -> Result<bool, Error> {
    match store.getattr(ino) {
        Ok(_) => Ok(true),
        Err(Error::Dir(DirError::NotFound)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// An flock always covers the whole file.
fn normalize(mut lock: Lock) -> Lock {
    if lock.flavor == LockFlavor::Flock {
        lock.start = 0;
        lock.end = u64::MAX;
    }
    lock
}

/// `label` cut to [`MAX_LABEL_BYTES`] at a character boundary.
fn cut_label(mut label: String) -> String {
    if label.len() > MAX_LABEL_BYTES {
        let mut cut = MAX_LABEL_BYTES;
        while !label.is_char_boundary(cut) {
            cut -= 1;
        }
        label.truncate(cut);
    }
    label
}

/// One waiting call counted against its session and dirsvc's caps
/// ([`Sessions::wait_slot`]); uncounted on drop (also when the request is
/// cancelled).
pub(crate) struct WaitSlot<'a> {
    sessions: &'a Sessions,
    id: SessionId,
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        let mut st = self.sessions.state();
        st.waiting_total = st.waiting_total.saturating_sub(1);
        match st.waiting.get_mut(&self.id) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                st.waiting.remove(&self.id);
            }
        }
    }
}

/// A registered lock waiter on one inode; unregisters on drop (also when
/// the request is cancelled).
struct Waiter<'a> {
    sessions: &'a Sessions,
    ino: u64,
    notify: Option<Arc<Notify>>,
}

impl<'a> Waiter<'a> {
    fn new(sessions: &'a Sessions, ino: u64) -> Self {
        let notify = sessions.state().waiters.entry(ino).or_default().clone();
        Waiter { sessions, ino, notify: Some(notify) }
    }

    fn notify(&self) -> &Notify {
        // Only taken in drop.
        self.notify.as_deref().unwrap_or_else(|| unreachable!("waiter used after drop"))
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut st = self.sessions.state();
        // Every clone and drop of these Arcs happens under the mutex, so
        // the count is exact: 1 means only the map holds it.
        drop(self.notify.take());
        if st.waiters.get(&self.ino).is_some_and(|n| Arc::strong_count(n) == 1) {
            st.waiters.remove(&self.ino);
        }
    }
}

/// The `sessions` worker: ends sessions whose lease ran out (every quarter
/// lease) and ends the grace period (at its deadline, or as soon as every
/// recorded session reclaimed). Stops when `cancel` fires.
pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let sessions = &shared.sessions;
    let tick = (sessions.lease() / 4).max(MIN_TICK);
    loop {
        let grace_deadline = sessions.grace_until;
        let in_grace = sessions.in_grace();
        // Not during the grace period: its end frees every unmarked orphan.
        let linger_deadline = sessions.next_linger_deadline().filter(|_| !in_grace);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
            _ = sessions.kick.notified() => {}
            _ = tokio::time::sleep_until(grace_deadline), if in_grace => {}
            _ = tokio::time::sleep_until(linger_deadline.unwrap_or(grace_deadline)), if linger_deadline.is_some() => {}
        }
        if sessions.grace_over() {
            let s = shared.clone();
            if let Err(e) = shared.blocking(move |store| s.sessions.end_grace(store)).await {
                error!(error = %e, "ending the grace period failed; retrying");
            }
        }
        let s = shared.clone();
        if let Err(e) = shared.blocking(move |store| s.sessions.expire(store)).await {
            error!(error = %e, "ending expired sessions failed");
        }
        if sessions.next_linger_deadline().is_some_and(|at| at <= Instant::now()) {
            let s = shared.clone();
            if let Err(e) = shared.blocking(move |store| s.sessions.free_lingering(store)).await {
                error!(error = %e, "freeing unlinked files failed; retrying");
            }
        }
    }
}
