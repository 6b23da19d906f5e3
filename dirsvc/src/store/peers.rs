//! The peer family (`P`): the registry of storage peers with their
//! usage, labels and drain flags. One small transaction per call.

use super::records::{PeerRecord, Record};
use super::{keys, scan_all, Get, Store, W};
use crate::error::Error;
use common::rpc::dir::{DirError, PeerLabels, PeerUsage};
use common::time::Timestamp;
use common::PeerId;

impl Store {
    /// Stores (inserts or replaces) peer `id`'s record.
    pub fn put_peer(&self, id: PeerId, rec: &PeerRecord) -> Result<(), Error> {
        let bytes = rec.to_bytes()?;
        self.write(|w| {
            w.put(keys::peer(&id.0), bytes.clone());
            Ok(())
        })
    }

    /// Every registered peer with its stored record, in id order.
    pub fn peers(&self) -> Result<Vec<(PeerId, PeerRecord)>, Error> {
        self.read(|t| {
            let mut out = Vec::new();
            scan_all(t, &keys::family(keys::PEER), |k, v| {
                out.push((PeerId(keys::parse_id16(&k)?), PeerRecord::from_bytes(&v)?));
                Ok(true)
            })?;
            Ok(out)
        })
    }

    /// Registers peer `id` (or re-registers it with a new address, usage
    /// and labels), heartbeat `now`. A drain flag already stored is kept.
    /// Returns the stored record.
    pub fn register_peer(
        &self,
        id: PeerId,
        addr: &str,
        usage: PeerUsage,
        labels: &PeerLabels,
        now: Timestamp,
    ) -> Result<PeerRecord, Error> {
        self.write(|w| {
            let mut rec = PeerRecord::new(addr.to_string(), usage, now, labels.clone());
            rec.draining = w.peer_rec(id)?.is_some_and(|old| old.draining);
            w.put(keys::peer(&id.0), rec.to_bytes()?);
            Ok(rec)
        })
    }

    /// Stores a heartbeat of peer `id`: its usage and time, leaving the
    /// other fields (address, labels, drain flag) as stored. A peer that is
    /// not stored is left alone. Returns whether it was stored.
    pub fn heartbeat_peer(&self, id: PeerId, usage: PeerUsage, at: Timestamp) -> Result<bool, Error> {
        self.write(|w| {
            let Some(mut rec) = w.peer_rec(id)? else { return Ok(false) };
            rec.usage = usage;
            rec.last_heartbeat = at;
            w.put(keys::peer(&id.0), rec.to_bytes()?);
            Ok(true)
        })
    }

    /// Marks peer `id` as draining (idempotent) and returns its record.
    ///
    /// Errors: `NotFound` for a peer that never registered.
    pub fn set_draining(&self, id: PeerId) -> Result<PeerRecord, Error> {
        self.write(|w| {
            let mut rec = w.peer_rec(id)?.ok_or(DirError::NotFound)?;
            if !rec.draining {
                rec.draining = true;
                w.put(keys::peer(&id.0), rec.to_bytes()?);
            }
            Ok(rec)
        })
    }

    /// Clears peer `id`'s drain flag (`undrain_peer`); a no-op for a peer
    /// that is not draining. Returns the record.
    ///
    /// Errors: `NotFound` for an unknown peer; storage errors.
    pub fn clear_draining(&self, id: PeerId) -> Result<PeerRecord, Error> {
        self.write(|w| {
            let mut rec = w.peer_rec(id)?.ok_or(DirError::NotFound)?;
            if rec.draining {
                rec.draining = false;
                w.put(keys::peer(&id.0), rec.to_bytes()?);
            }
            Ok(rec)
        })
    }
}

impl W<'_, '_> {
    /// The record of peer `id`, if registered.
    pub(crate) fn peer_rec(&self, id: PeerId) -> Result<Option<PeerRecord>, Error> {
        self.get(&keys::peer(&id.0))?.map(|v| PeerRecord::from_bytes(&v)).transpose()
    }
}
