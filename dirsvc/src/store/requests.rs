//! The answered-requests family (`Q`): the first answer of every
//! `mutate` call, keyed by the caller's node id and request id, written in
//! the same transaction as the change it answers (or, for a refusal, in
//! a transaction of its own right after), so a retried call is applied
//! once and answered as its first attempt was. Entries expire after
//! [`REQUEST_MEMORY_SECS`] (removed by the garbage-collection worker in
//! bounded transactions, [`Store::expire_requests`]).

use super::records::{Record, RequestRecord};
use super::{keys, scan_all, Get, Store, W};
use crate::error::Error;
use common::rpc::dir::{DirError, Mutated, REQUEST_MEMORY_SECS};
use common::time::Timestamp;
use common::NodeId;

/// A request id as dirsvc keys it: who asked (the node id of the caller's
/// certificate, so no node can replay another's answer) and the number it
/// chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    /// The caller's node id.
    pub node: NodeId,
    /// The caller's request number.
    pub id: u64,
}

impl RequestKey {
    fn key(&self) -> Vec<u8> {
        keys::request(&self.node.0, self.id)
    }
}

/// What a mutation with a request id did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Once<T> {
    /// Applied now (its answer is recorded); the value as the plain call
    /// returns it.
    Fresh(T),
    /// The request id was answered before: that answer, nothing applied.
    Replayed(Result<Mutated, DirError>),
}

impl<T> Once<T> {
    /// The value of a fresh application; a replayed refusal as its error.
    ///
    /// Errors: the replayed `DirError`; `Corrupt` for a replayed success
    /// (a call without request id never replays).
    pub fn fresh(self) -> Result<T, Error> {
        match self {
            Once::Fresh(v) => Ok(v),
            Once::Replayed(Err(e)) => Err(e.into()),
            Once::Replayed(Ok(a)) => {
                Err(Error::Corrupt { what: "request record", reason: format!("unexpected replay of {a:?}") })
            }
        }
    }
}

impl Store {
    /// Runs `f` as one write transaction ([`Store::write`]) once per
    /// request: with `req`, a recorded answer of `req` is returned as
    /// [`Once::Replayed`] without running `f`; otherwise `f`'s success is
    /// recorded as `answer(&value)` in the same transaction, and a refusal
    /// (`Error::Dir`) is recorded right after in a transaction of its own
    /// (unless a concurrent attempt of the same request recorded first,
    /// whose answer is then replayed) and returned as the error. Without
    /// `req` this is [`Store::write`].
    ///
    /// Errors: `f`'s; the engine's; `Corrupt` for an undecodable record.
    pub(crate) fn write_once<T>(
        &self,
        req: Option<RequestKey>,
        answer: impl Fn(&T) -> Mutated,
        mut f: impl FnMut(&mut W<'_, '_>) -> Result<T, Error>,
    ) -> Result<Once<T>, Error> {
        let Some(req) = req else { return self.write(f).map(Once::Fresh) };
        let key = req.key();
        let r = self.write(|w| {
            if let Some(v) = w.get(&key)? {
                return Ok(Err(RequestRecord::from_bytes(&v)?.answer));
            }
            let v = f(w)?;
            let rec = RequestRecord { at: w.now.secs, answer: Ok(answer(&v)) };
            w.put(key.clone(), rec.to_bytes()?);
            Ok(Ok(v))
        });
        match r {
            Ok(Ok(v)) => Ok(Once::Fresh(v)),
            Ok(Err(recorded)) => Ok(Once::Replayed(recorded)),
            Err(Error::Dir(refusal)) => {
                let recorded = self.write(|w| {
                    if let Some(v) = w.get(&key)? {
                        return Ok(Some(RequestRecord::from_bytes(&v)?.answer));
                    }
                    let rec = RequestRecord { at: w.now.secs, answer: Err(refusal.clone()) };
                    w.put(key.clone(), rec.to_bytes()?);
                    Ok(None)
                })?;
                match recorded {
                    None => Err(refusal.into()),
                    Some(answer) => Ok(Once::Replayed(answer)),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The recorded answer of `req`, if any (a read).
    ///
    /// Errors: the engine's; `Corrupt`.
    pub fn request_answer(&self, req: RequestKey) -> Result<Option<Result<Mutated, DirError>>, Error> {
        self.read(|t| t.get(&req.key())?.map(|v| RequestRecord::from_bytes(&v).map(|r| r.answer)).transpose())
    }

    /// Removes the request records answered at or before Unix second
    /// `cutoff_secs`, in transactions of at most the GC batch; returns how
    /// many. A scan of the `Q` family (O(requests of the last
    /// [`REQUEST_MEMORY_SECS`] or so)).
    ///
    /// Errors: the engine's; `Corrupt`.
    pub fn expire_requests(&self, cutoff_secs: i64) -> Result<u64, Error> {
        let expired: Vec<Vec<u8>> = self.read(|t| {
            let mut out = Vec::new();
            scan_all(t, &keys::family(keys::REQUEST), |k, v| {
                if RequestRecord::from_bytes(&v)?.at <= cutoff_secs {
                    out.push(k);
                }
                Ok(true)
            })?;
            Ok(out)
        })?;
        let mut removed = 0u64;
        for batch in expired.chunks(self.gc_batch()) {
            self.write(|w| {
                for k in batch {
                    w.delete(k.clone());
                }
                Ok(())
            })?;
            removed += batch.len() as u64;
        }
        Ok(removed)
    }

    /// [`Store::expire_requests`] of what is older than
    /// [`REQUEST_MEMORY_SECS`] now.
    ///
    /// Errors: as [`Store::expire_requests`].
    pub fn expire_old_requests(&self) -> Result<u64, Error> {
        let memory = i64::try_from(REQUEST_MEMORY_SECS).unwrap_or(i64::MAX);
        self.expire_requests(Timestamp::now().secs.saturating_sub(memory))
    }

    /// Number of request records (a scan of the `Q` family).
    ///
    /// Errors: the engine's.
    pub fn request_count(&self) -> Result<u64, Error> {
        self.read(|t| super::count(t, &keys::family(keys::REQUEST)))
    }
}
