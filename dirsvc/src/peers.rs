//! The in-memory view of the peer registry: liveness, usage, promised bytes.
//!
//! The durable registry is the `peers-v1` table; this mirror is loaded from
//! it at start and updated after every registration. Heartbeats arrive
//! every couple of seconds per peer, so they update the mirror at once and
//! reach the database at most once per `persist_every` (see
//! [`crate::DirsvcConfig::heartbeat_persist_every`]): after a restart a
//! peer's last heartbeat may look up to that much older than it was, which
//! only matters if it is close to `peer_down_after`, and the peer's next
//! heartbeat corrects it.
//!
//! Liveness compares wall-clock times (`Timestamp`), the same clock that
//! is persisted, so it means the same thing before and after a restart.

use crate::placement::{self, Candidate};
use crate::store::tables::PeerRecord;
use common::rpc::dir::{DirError, PeerStatus, PeerUsage};
use common::rpc::PeerLoc;
use common::time::Timestamp;
use common::PeerId;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// One peer in the mirror.
#[derive(Debug)]
struct PeerState {
    rec: PeerRecord,
    /// Bytes promised by placements since the last heartbeat.
    promised: u64,
    /// When `rec` was last written to the database.
    persisted: Instant,
}

/// The mirror of all registered peers.
#[derive(Debug)]
pub(crate) struct PeerTable {
    peers: HashMap<PeerId, PeerState>,
    down_after: Duration,
    persist_every: Duration,
}

impl PeerTable {
    /// A mirror of the stored peers.
    pub(crate) fn new(
        stored: Vec<(PeerId, PeerRecord)>,
        down_after: Duration,
        persist_every: Duration,
    ) -> Self {
        let now = Instant::now();
        let peers = stored
            .into_iter()
            .map(|(id, rec)| {
                let st = PeerState { rec, promised: 0, persisted: now };
                (id, st)
            })
            .collect();
        PeerTable { peers, down_after, persist_every }
    }

    fn is_live(&self, rec: &PeerRecord, now: SystemTime) -> bool {
        match now.duration_since(SystemTime::from(rec.last_heartbeat)) {
            Ok(age) => age < self.down_after,
            // A heartbeat "in the future" (clock stepped back): still live.
            Err(_) => true,
        }
    }

    /// Records a registration that was just stored.
    pub(crate) fn registered(&mut self, id: PeerId, rec: PeerRecord) {
        self.peers.insert(id, PeerState { rec, promised: 0, persisted: Instant::now() });
    }

    /// Records a heartbeat at `now`: new usage, promises cleared (the
    /// report now counts what was stored). Returns the record to persist
    /// when the last persisted one is older than `persist_every`.
    ///
    /// Errors: `NotFound` for a peer that never registered.
    pub(crate) fn heartbeat(
        &mut self,
        id: PeerId,
        usage: PeerUsage,
        now: Timestamp,
    ) -> Result<Option<PeerRecord>, DirError> {
        let st = self.peers.get_mut(&id).ok_or(DirError::NotFound)?;
        st.rec.usage = usage;
        st.rec.last_heartbeat = now;
        st.promised = 0;
        if st.persisted.elapsed() >= self.persist_every {
            st.persisted = Instant::now();
            Ok(Some(st.rec.clone()))
        } else {
            Ok(None)
        }
    }

    fn loc(&self, id: PeerId, st: &PeerState, now: SystemTime) -> PeerLoc {
        PeerLoc { id, addr: st.rec.addr.clone(), live: self.is_live(&st.rec, now) }
    }

    /// Chooses replica sets for `count` chunks of `chunk_bytes` among the
    /// live peers and adds the bytes to their promises.
    ///
    /// Errors: `NoPeers` (see [`placement::place`]).
    pub(crate) fn place(
        &mut self,
        replicas: u32,
        count: u32,
        chunk_bytes: u64,
    ) -> Result<Vec<Vec<PeerLoc>>, DirError> {
        let now = SystemTime::now();
        let candidates: Vec<Candidate> = self
            .peers
            .iter()
            .filter(|(_, st)| self.is_live(&st.rec, now))
            .map(|(id, st)| Candidate { id: *id, free: st.rec.usage.free_bytes.saturating_sub(st.promised) })
            .collect();
        let sets = placement::place(&candidates, replicas, count, chunk_bytes)?;
        let mut out = Vec::with_capacity(sets.len());
        for set in sets {
            let mut locs = Vec::with_capacity(set.len());
            for id in set {
                if let Some(st) = self.peers.get_mut(&id) {
                    st.promised = st.promised.saturating_add(chunk_bytes);
                }
                if let Some(st) = self.peers.get(&id) {
                    locs.push(self.loc(id, st, now));
                }
            }
            out.push(locs);
        }
        Ok(out)
    }

    /// Where to reach each of `ids`: live peers first, then by most recent
    /// heartbeat; ids that are not registered are left out.
    pub(crate) fn locs(&self, ids: &[PeerId]) -> Vec<PeerLoc> {
        let now = SystemTime::now();
        let mut found: Vec<(PeerLoc, Timestamp)> = ids
            .iter()
            .filter_map(|id| {
                let st = self.peers.get(id)?;
                Some((self.loc(*id, st, now), st.rec.last_heartbeat))
            })
            .collect();
        found.sort_by_key(|(loc, hb)| (!loc.live, Reverse(*hb)));
        found.into_iter().map(|(loc, _)| loc).collect()
    }

    /// Sums over the live peers: (capacity bytes, free bytes, live count).
    pub(crate) fn live_totals(&self) -> (u64, u64, u32) {
        let now = SystemTime::now();
        self.peers.values().filter(|st| self.is_live(&st.rec, now)).fold(
            (0u64, 0u64, 0u32),
            |(cap, free, n), st| {
                (
                    cap.saturating_add(st.rec.usage.capacity_bytes),
                    free.saturating_add(st.rec.usage.free_bytes),
                    n.saturating_add(1),
                )
            },
        )
    }

    /// Every peer with its state, in id order.
    pub(crate) fn list(&self) -> Vec<PeerStatus> {
        let now = SystemTime::now();
        let mut out: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|(id, st)| PeerStatus {
                loc: self.loc(*id, st, now),
                usage: st.rec.usage,
                last_heartbeat: st.rec.last_heartbeat,
            })
            .collect();
        out.sort_by_key(|s| s.loc.id);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(free: u64, age: Duration) -> PeerRecord {
        PeerRecord {
            addr: "127.0.0.1:1".into(),
            usage: PeerUsage { capacity_bytes: 1000, free_bytes: free, used_bytes: 1000 - free, chunks: 0 },
            last_heartbeat: Timestamp::from(SystemTime::now() - age),
        }
    }

    #[test]
    fn silent_peers_are_down_and_excluded_from_placement_and_totals() {
        let t = PeerTable::new(
            vec![
                (PeerId([1; 16]), rec(800, Duration::ZERO)),
                (PeerId([2; 16]), rec(900, Duration::from_secs(60))),
            ],
            Duration::from_secs(10),
            Duration::from_secs(5),
        );
        let mut t = t;
        assert_eq!(t.live_totals(), (1000, 800, 1));
        assert_eq!(t.place(2, 1, 1), Err(DirError::NoPeers { needed: 2, live: 1 }));
        let locs = t.locs(&[PeerId([2; 16]), PeerId([1; 16]), PeerId([9; 16])]);
        assert_eq!(locs.len(), 2);
        assert_eq!(locs[0].id, PeerId([1; 16]));
        assert!(locs[0].live && !locs[1].live);
    }

    #[test]
    fn promises_spread_placements_until_the_next_heartbeat() {
        let mut t = PeerTable::new(
            vec![(PeerId([1; 16]), rec(1000, Duration::ZERO)), (PeerId([2; 16]), rec(1000, Duration::ZERO))],
            Duration::from_secs(10),
            Duration::from_secs(5),
        );
        let a = t.place(1, 1, 100).unwrap();
        let b = t.place(1, 1, 100).unwrap();
        assert_ne!(a[0][0].id, b[0][0].id, "second call must avoid the promised peer");
        // A heartbeat clears the promise of the peer that sent it.
        let first = a[0][0].id;
        let usage = rec(1000, Duration::ZERO).usage;
        assert_eq!(t.heartbeat(first, usage, Timestamp::now()), Ok(None));
        let c = t.place(1, 1, 100).unwrap();
        assert_eq!(c[0][0].id, first);
        assert_eq!(t.heartbeat(PeerId([7; 16]), usage, Timestamp::now()), Err(DirError::NotFound));
    }
}
