//! The in-memory view of the peer registry: liveness, drain state, usage,
//! labels, promised bytes and the last survey's per-peer figures.
//!
//! The durable registry is the `peers-v1` table; this mirror is loaded from
//! it at start and updated after every registration and drain. Heartbeats
//! arrive every couple of seconds per peer, so they update the mirror at
//! once and reach the database at most once per `persist_every` (see
//! [`crate::DirsvcConfig::heartbeat_persist_every`]): after a restart a
//! peer's last heartbeat may look up to that much older than it was, which
//! only matters if it is close to a timeout, and the peer's next heartbeat
//! corrects it.
//!
//! Liveness ([`Liveness`]) comes from the age of the last heartbeat alone:
//! `Up` below `suspect_after`, `Suspect` below `down_after`, `Down` beyond.
//! It compares wall-clock times (`Timestamp`), the same clock that is
//! persisted, so it means the same thing before and after a restart. The
//! admin-visible [`PeerState`] adds the drain flag: a draining peer shows
//! `Draining` until a survey finds that no referenced chunk depends on it,
//! then `Drained` — whatever its liveness, which `PeerLoc::live` still
//! reports.

use crate::limits::{limit, Principal};
use crate::placement::{self, Candidate, Domain, Occupied};
use crate::store::tables::PeerRecord;
#[cfg(test)]
use common::rpc::dir::StorageFs;
use common::rpc::dir::{DirError, PeerState, PeerStatus, PeerUsage};
use common::rpc::PeerLoc;
use common::time::Timestamp;
use common::PeerId;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// The disk a peer stores on: its reported filesystem, or the peer itself
/// when it did not report one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum DiskKey {
    /// A filesystem (`StorageFs::id`).
    Fs([u8; 16]),
    /// A peer whose filesystem is unknown.
    Peer(PeerId),
}

impl DiskKey {
    fn of(id: PeerId, usage: &PeerUsage) -> DiskKey {
        match usage.fs {
            Some(f) => DiskKey::Fs(f.id),
            None => DiskKey::Peer(id),
        }
    }
}

/// What heartbeats say about a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Liveness {
    /// Heartbeat within `suspect_after`.
    Up,
    /// Heartbeat within `down_after` but not `suspect_after`.
    Suspect,
    /// Silent for `down_after` or longer.
    Down,
}

/// What the last survey of the chunk index found about one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerSurvey {
    /// Replicas the index records on the peer.
    pub indexed: u64,
    /// Whether some referenced chunk would have fewer than R good replicas
    /// without this peer's copy.
    pub needed: bool,
}

/// Caps on the bytes placements promise (see [`crate::limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlacementCaps {
    /// Most bytes (count × chunk bytes × R) one call may promise.
    pub per_call: u64,
    /// Most bytes one principal's placements may hold promised on peers
    /// that are not down.
    pub per_principal: u64,
}

impl PlacementCaps {
    /// No caps.
    #[cfg(test)]
    pub(crate) const NONE: PlacementCaps = PlacementCaps { per_call: u64::MAX, per_principal: u64::MAX };
}

/// One peer in the mirror.
#[derive(Debug)]
struct Entry {
    rec: PeerRecord,
    /// Bytes promised by placements and repairs since the last heartbeat.
    promised: u64,
    /// The part of `promised` each caller's placements asked for (repairs
    /// are dirsvc's own and not listed); cleared with it.
    by_principal: HashMap<Principal, u64>,
    /// When `rec`'s heartbeat was last written to the database.
    persisted: Instant,
    /// The last survey's figures; `None` until a survey ran after the peer
    /// registered or started draining.
    survey: Option<PeerSurvey>,
}

/// A peer as the background workers see it (a snapshot).
#[derive(Clone, Debug)]
pub(crate) struct PeerInfo {
    /// `host:port` of its `PeerService`.
    pub addr: String,
    /// Liveness at the snapshot.
    pub liveness: Liveness,
    /// Set by `drain_peer`.
    pub draining: bool,
    /// How long since its last heartbeat (zero if in the future).
    pub silent_for: Duration,
}

impl PeerInfo {
    /// Whether a replica on this peer counts towards R: up or suspect and
    /// not draining.
    pub(crate) fn is_good(&self) -> bool {
        self.liveness != Liveness::Down && !self.draining
    }

    /// Whether the peer can serve as a copy source: up or suspect
    /// (draining peers still serve reads).
    pub(crate) fn is_reachable(&self) -> bool {
        self.liveness != Liveness::Down
    }
}

/// What a survey's outcome depends on: each peer's liveness and drain
/// flag, in id order.
pub(crate) type Fingerprint = Vec<(PeerId, Liveness, bool)>;

/// A snapshot of every peer, for one worker round.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerView {
    /// Every registered peer.
    pub peers: HashMap<PeerId, PeerInfo>,
}

impl PeerView {
    /// Whether a replica on `id` counts towards R (unknown peers do not).
    pub(crate) fn is_good(&self, id: &PeerId) -> bool {
        self.peers.get(id).is_some_and(PeerInfo::is_good)
    }

    /// What a survey's outcome depends on: each peer's liveness and drain
    /// flag, in id order.
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        let mut v: Vec<_> = self.peers.iter().map(|(id, p)| (*id, p.liveness, p.draining)).collect();
        v.sort();
        v
    }
}

/// The mirror of all registered peers.
#[derive(Debug)]
pub(crate) struct PeerTable {
    peers: HashMap<PeerId, Entry>,
    suspect_after: Duration,
    down_after: Duration,
    persist_every: Duration,
}

impl PeerTable {
    /// A mirror of the stored peers. `suspect_after` is capped at
    /// `down_after`.
    pub(crate) fn new(
        stored: Vec<(PeerId, PeerRecord)>,
        suspect_after: Duration,
        down_after: Duration,
        persist_every: Duration,
    ) -> Self {
        let now = Instant::now();
        let peers = stored
            .into_iter()
            .map(|(id, rec)| {
                (id, Entry { rec, promised: 0, by_principal: HashMap::new(), persisted: now, survey: None })
            })
            .collect();
        PeerTable { peers, suspect_after: suspect_after.min(down_after), down_after, persist_every }
    }

    fn silent_for(rec: &PeerRecord, now: SystemTime) -> Duration {
        match rec.last_heartbeat.to_system_time() {
            // A heartbeat "in the future" (clock stepped back) counts as fresh.
            Ok(t) => now.duration_since(t).unwrap_or(Duration::ZERO),
            // An invalid stored time (a corrupt record): never heard of.
            Err(_) => Duration::MAX,
        }
    }

    fn liveness(&self, rec: &PeerRecord, now: SystemTime) -> Liveness {
        let silent = Self::silent_for(rec, now);
        if silent < self.suspect_after {
            Liveness::Up
        } else if silent < self.down_after {
            Liveness::Suspect
        } else {
            Liveness::Down
        }
    }

    fn state(&self, e: &Entry, now: SystemTime) -> PeerState {
        if e.rec.draining {
            match e.survey {
                Some(s) if !s.needed => PeerState::Drained,
                _ => PeerState::Draining,
            }
        } else {
            match self.liveness(&e.rec, now) {
                Liveness::Up => PeerState::Up,
                Liveness::Suspect => PeerState::Suspect,
                Liveness::Down => PeerState::Down,
            }
        }
    }

    /// Records a registration that was just stored. The drain flag of a
    /// known peer is owned by `drain_peer` and `undrain_peer` (each updates
    /// this mirror after its own transaction), so a registration racing
    /// either keeps the flag the mirror has; a new peer takes the stored one.
    pub(crate) fn registered(&mut self, id: PeerId, mut rec: PeerRecord) {
        let old = self.peers.remove(&id);
        let survey = old.as_ref().and_then(|o| o.survey);
        if let Some(o) = &old {
            rec.draining = o.rec.draining;
        }
        self.peers.insert(
            id,
            Entry { rec, promised: 0, by_principal: HashMap::new(), persisted: Instant::now(), survey },
        );
    }

    /// Records that peer `id` now drains. Its survey figures are forgotten
    /// until the next survey, so it shows `Draining` until then.
    pub(crate) fn set_draining(&mut self, id: PeerId) {
        if let Some(e) = self.peers.get_mut(&id) {
            if !e.rec.draining {
                e.rec.draining = true;
                e.survey = None;
            }
        }
    }

    /// Records that peer `id` no longer drains (`undrain_peer`): it shows
    /// its liveness again and is a placement candidate while up. Its survey
    /// figures are forgotten until the next survey.
    pub(crate) fn clear_draining(&mut self, id: PeerId) {
        if let Some(e) = self.peers.get_mut(&id) {
            if e.rec.draining {
                e.rec.draining = false;
                e.survey = None;
            }
        }
    }

    /// Records a heartbeat at `now`: new usage, promises cleared (the
    /// report now counts what was stored). Returns whether the heartbeat is
    /// due to be persisted (the last persisted one is older than
    /// `persist_every`).
    ///
    /// Errors: `NotFound` for a peer that never registered.
    pub(crate) fn heartbeat(
        &mut self,
        id: PeerId,
        usage: PeerUsage,
        now: Timestamp,
    ) -> Result<bool, DirError> {
        let e = self.peers.get_mut(&id).ok_or(DirError::NotFound)?;
        e.rec.usage = usage;
        e.rec.last_heartbeat = now;
        e.promised = 0;
        e.by_principal.clear();
        if e.persisted.elapsed() >= self.persist_every {
            e.persisted = Instant::now();
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn loc(&self, id: PeerId, e: &Entry, now: SystemTime) -> PeerLoc {
        PeerLoc { id, addr: e.rec.addr.clone(), live: self.liveness(&e.rec, now) != Liveness::Down }
    }

    /// Placement candidates: peers that are up and not draining, with free
    /// space net of promises; and the bytes each of their disks has left
    /// (the filesystem's available bytes as its most recently heard peer
    /// reported them, net of every promise to a peer on it), indexed by
    /// [`Candidate::disk`]. A peer that did not report its filesystem is a
    /// disk of its own.
    fn candidates(&self, now: SystemTime) -> (Vec<Candidate>, Vec<u64>) {
        let mut disk_index: HashMap<DiskKey, usize> = HashMap::new();
        // (available bytes, when reported, promised bytes) per disk.
        let mut disks: Vec<(u64, Timestamp, u64)> = Vec::new();
        let mut cands = Vec::new();
        for (id, e) in &self.peers {
            if e.rec.draining || self.liveness(&e.rec, now) != Liveness::Up {
                continue;
            }
            let key = DiskKey::of(*id, &e.rec.usage);
            let avail = e.rec.usage.fs.map_or(u64::MAX, |f| f.avail_bytes);
            let disk = *disk_index.entry(key).or_insert_with(|| {
                disks.push((avail, e.rec.last_heartbeat, 0));
                disks.len() - 1
            });
            let d = &mut disks[disk];
            if e.rec.last_heartbeat > d.1 {
                (d.0, d.1) = (avail, e.rec.last_heartbeat);
            }
            d.2 = d.2.saturating_add(e.promised);
            cands.push(Candidate {
                id: *id,
                free: e.rec.usage.free_bytes.saturating_sub(e.promised),
                host: Domain::of(&e.rec.host, *id),
                zone: Domain::of(&e.rec.zone, *id),
                disk,
            });
        }
        let left = disks.into_iter().map(|(avail, _, promised)| avail.saturating_sub(promised)).collect();
        (cands, left)
    }

    /// Adds `bytes` to peer `id`'s promises, on behalf of `principal`
    /// (`None`: dirsvc's own repair).
    fn promise(&mut self, id: PeerId, bytes: u64, principal: Option<&Principal>) {
        if let Some(e) = self.peers.get_mut(&id) {
            e.promised = e.promised.saturating_add(bytes);
            if let Some(p) = principal {
                let mine = e.by_principal.entry(p.clone()).or_default();
                *mine = mine.saturating_add(bytes);
            }
        }
    }

    /// Bytes `principal`'s placements hold promised on peers that are not
    /// down (a down peer's promises end when it heartbeats again, so they
    /// do not count against the caller meanwhile).
    fn promised_to(&self, principal: &Principal, now: SystemTime) -> u64 {
        self.peers
            .values()
            .filter(|e| self.liveness(&e.rec, now) != Liveness::Down)
            .filter_map(|e| e.by_principal.get(principal))
            .fold(0u64, |sum, b| sum.saturating_add(*b))
    }

    /// Chooses replica sets for `count` chunks of `chunk_bytes` among the
    /// peers that are up and not draining (policy: [`placement`]) and adds
    /// the bytes to their promises, on behalf of `principal`.
    ///
    /// Errors: `Invalid` for more than
    /// [`crate::server::MAX_PLACEMENT_COUNT`] chunks; `NoPeers`, `PeersFull`
    /// (see [`placement::place`]); then
    /// `Limit` if the call would promise more than `caps.per_call` bytes
    /// (count × chunk bytes × `replicas`), or `principal`'s outstanding
    /// promises would pass `caps.per_principal`. Nothing is promised on an
    /// error.
    pub(crate) fn place(
        &mut self,
        replicas: u32,
        count: u32,
        chunk_bytes: u64,
        principal: &Principal,
        caps: PlacementCaps,
    ) -> Result<Vec<Vec<PeerLoc>>, DirError> {
        if count > crate::server::MAX_PLACEMENT_COUNT {
            return Err(DirError::Invalid(format!(
                "placement of {count} chunks asked (at most {})",
                crate::server::MAX_PLACEMENT_COUNT
            )));
        }
        let now = SystemTime::now();
        let (candidates, disks) = self.candidates(now);
        let sets =
            placement::place(&candidates, &disks, replicas, count, chunk_bytes, &mut rand::thread_rng())?;
        let asked = u64::from(count)
            .checked_mul(chunk_bytes)
            .and_then(|b| b.checked_mul(u64::from(replicas)))
            .filter(|b| *b <= caps.per_call)
            .ok_or_else(|| {
                limit(format!(
                    "placement of {count} x {chunk_bytes} bytes x {replicas} replicas is over the {} bytes \
                     one call may promise",
                    caps.per_call
                ))
            })?;
        let held = self.promised_to(principal, now);
        if held.saturating_add(asked) > caps.per_principal {
            return Err(limit(format!(
                "{principal} holds {held} bytes promised on peers until their next heartbeat; \
                 {asked} more would pass its maximum of {}",
                caps.per_principal
            )));
        }
        let mut out = Vec::with_capacity(sets.len());
        for set in sets {
            let mut locs = Vec::with_capacity(set.len());
            for id in set {
                self.promise(id, chunk_bytes, Some(principal));
                if let Some(e) = self.peers.get(&id) {
                    locs.push(self.loc(id, e, now));
                }
            }
            out.push(locs);
        }
        Ok(out)
    }

    /// Chooses the peer to receive a repair copy of `chunk_bytes`: a
    /// placement candidate not in `exclude`, spread away from the hosts and
    /// zones of `spread_from` (the chunk's good replicas). Charges the
    /// bytes to it. `None` if no peer qualifies.
    pub(crate) fn pick_repair_target(
        &mut self,
        exclude: &[PeerId],
        spread_from: &[PeerId],
        chunk_bytes: u64,
    ) -> Option<PeerLoc> {
        let now = SystemTime::now();
        let (candidates, disks) = self.candidates(now);
        let mut occupied = Occupied::default();
        for id in spread_from {
            if let Some(e) = self.peers.get(id) {
                occupied.add(&Domain::of(&e.rec.host, *id), &Domain::of(&e.rec.zone, *id));
            }
        }
        let id = placement::pick_target(
            &candidates,
            &disks,
            exclude,
            &occupied,
            chunk_bytes,
            &mut rand::thread_rng(),
        )?;
        self.promise(id, chunk_bytes, None);
        self.peers.get(&id).map(|e| self.loc(id, e, now))
    }

    /// Where to reach each of `ids`: up peers first, then suspect, then
    /// down, each by most recent heartbeat; unregistered ids are left out.
    pub(crate) fn locs(&self, ids: &[PeerId]) -> Vec<PeerLoc> {
        let now = SystemTime::now();
        let mut found: Vec<(PeerLoc, Liveness, Timestamp)> = ids
            .iter()
            .filter_map(|id| {
                let e = self.peers.get(id)?;
                Some((self.loc(*id, e, now), self.liveness(&e.rec, now), e.rec.last_heartbeat))
            })
            .collect();
        found.sort_by_key(|(_, l, hb)| (*l, Reverse(*hb)));
        found.into_iter().map(|(loc, _, _)| loc).collect()
    }

    /// Capacity over the peers that can take new data (not down, not
    /// draining), each disk counted once: (used bytes, free bytes, peer
    /// count). Per disk, used is what its peers store and free is what they
    /// report free, capped by the filesystem's available bytes (as its most
    /// recently heard peer reported them), so three peers on one disk count
    /// its free space once and space that other programs use counts as
    /// neither.
    pub(crate) fn live_totals(&self) -> (u64, u64, u32) {
        let now = SystemTime::now();
        // Per disk: (used, summed free, filesystem available, when reported).
        let mut disks: HashMap<DiskKey, (u64, u64, u64, Timestamp)> = HashMap::new();
        let mut n = 0u32;
        for (id, e) in &self.peers {
            if e.rec.draining || self.liveness(&e.rec, now) == Liveness::Down {
                continue;
            }
            n = n.saturating_add(1);
            let u = &e.rec.usage;
            let avail = u.fs.map_or(u64::MAX, |f| f.avail_bytes);
            let d = disks.entry(DiskKey::of(*id, u)).or_insert((0, 0, avail, e.rec.last_heartbeat));
            d.0 = d.0.saturating_add(u.used_bytes);
            d.1 = d.1.saturating_add(u.free_bytes);
            if e.rec.last_heartbeat > d.3 {
                (d.2, d.3) = (avail, e.rec.last_heartbeat);
            }
        }
        let (used, free) = disks.values().fold((0u64, 0u64), |(used, free), (u, f, avail, _)| {
            (used.saturating_add(*u), free.saturating_add((*f).min(*avail)))
        });
        (used, free, n)
    }

    /// Every peer with its state, labels and last survey figures, in id
    /// order.
    pub(crate) fn list(&self) -> Vec<PeerStatus> {
        let now = SystemTime::now();
        let mut out: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|(id, e)| PeerStatus {
                loc: self.loc(*id, e, now),
                usage: e.rec.usage,
                last_heartbeat: e.rec.last_heartbeat,
                state: self.state(e, now),
                labels: e.rec.labels(),
                indexed_chunks: e.survey.map_or(0, |s| s.indexed),
                heartbeat_age_ms: u64::try_from(Self::silent_for(&e.rec, now).as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect();
        out.sort_by_key(|s| s.loc.id);
        out
    }

    /// How many peers are in each state: up, suspect, down, draining,
    /// drained.
    pub(crate) fn state_counts(&self) -> [u32; 5] {
        let now = SystemTime::now();
        let mut n = [0u32; 5];
        for e in self.peers.values() {
            let i = match self.state(e, now) {
                PeerState::Up => 0,
                PeerState::Suspect => 1,
                PeerState::Down => 2,
                PeerState::Draining => 3,
                PeerState::Drained => 4,
            };
            n[i] += 1;
        }
        n
    }

    /// A snapshot for a worker round.
    pub(crate) fn view(&self) -> PeerView {
        let now = SystemTime::now();
        let peers = self
            .peers
            .iter()
            .map(|(id, e)| {
                let info = PeerInfo {
                    addr: e.rec.addr.clone(),
                    liveness: self.liveness(&e.rec, now),
                    draining: e.rec.draining,
                    silent_for: Self::silent_for(&e.rec, now),
                };
                (*id, info)
            })
            .collect();
        PeerView { peers }
    }

    /// Stores a survey's per-peer figures. Only peers present in `view`
    /// (the snapshot the survey classified with) are updated, so a peer
    /// that started draining after the snapshot keeps showing `Draining`.
    pub(crate) fn set_survey(&mut self, view: &PeerView, figures: &HashMap<PeerId, PeerSurvey>) {
        for (id, e) in self.peers.iter_mut() {
            let Some(seen) = view.peers.get(id) else { continue };
            if seen.draining != e.rec.draining {
                continue;
            }
            e.survey = Some(figures.get(id).copied().unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::rpc::dir::PeerLabels;

    fn rec(free: u64, age: Duration) -> PeerRecord {
        PeerRecord::new(
            "127.0.0.1:1".into(),
            PeerUsage {
                capacity_bytes: 1000,
                free_bytes: free,
                used_bytes: 1000 - free,
                chunks: 0,
                fs: None,
                scrub: None,
            },
            Timestamp::from(SystemTime::now() - age),
            PeerLabels::default(),
        )
    }

    fn who() -> Principal {
        Principal::node(common::NodeId([0xa; 16]))
    }

    fn table(peers: Vec<(u8, PeerRecord)>) -> PeerTable {
        PeerTable::new(
            peers.into_iter().map(|(k, r)| (PeerId([k; 16]), r)).collect(),
            Duration::from_secs(6),
            Duration::from_secs(10),
            Duration::from_secs(5),
        )
    }

    #[test]
    fn heartbeat_age_gives_up_suspect_and_down() {
        let t = table(vec![
            (1, rec(800, Duration::ZERO)),
            (2, rec(900, Duration::from_secs(8))),
            (3, rec(900, Duration::from_secs(60))),
        ]);
        let states: Vec<PeerState> = t.list().iter().map(|s| s.state).collect();
        assert_eq!(states, vec![PeerState::Up, PeerState::Suspect, PeerState::Down]);
        let live: Vec<bool> = t.list().iter().map(|s| s.loc.live).collect();
        assert_eq!(live, vec![true, true, false]);
        assert_eq!(t.state_counts(), [1, 1, 1, 0, 0]);
        // Readers get up, then suspect, then down.
        let locs = t.locs(&[PeerId([3; 16]), PeerId([2; 16]), PeerId([1; 16]), PeerId([9; 16])]);
        let order: Vec<PeerId> = locs.iter().map(|l| l.id).collect();
        assert_eq!(order, vec![PeerId([1; 16]), PeerId([2; 16]), PeerId([3; 16])]);
        // Suspect peers are not placed on but still count for statfs.
        let mut t = t;
        assert_eq!(
            t.place(2, 1, 1, &who(), PlacementCaps::NONE),
            Err(DirError::NoPeers { needed: 2, live: 1 })
        );
        assert_eq!(t.live_totals(), (300, 1700, 2));
    }

    #[test]
    fn draining_peers_get_no_chunks_and_become_drained_after_a_survey() {
        let mut t = table(vec![(1, rec(800, Duration::ZERO)), (2, rec(800, Duration::ZERO))]);
        let d = PeerId([2; 16]);
        t.set_draining(d);
        assert_eq!(
            t.place(2, 1, 1, &who(), PlacementCaps::NONE),
            Err(DirError::NoPeers { needed: 2, live: 1 })
        );
        assert_eq!(t.list()[1].state, PeerState::Draining);
        let view = t.view();
        t.set_survey(&view, &HashMap::from([(d, PeerSurvey { indexed: 4, needed: true })]));
        assert_eq!((t.list()[1].state, t.list()[1].indexed_chunks), (PeerState::Draining, 4));
        t.set_survey(&view, &HashMap::from([(d, PeerSurvey { indexed: 4, needed: false })]));
        assert_eq!(t.list()[1].state, PeerState::Drained);
        assert!(t.list()[1].loc.live, "a drained peer that heartbeats is still live");
        // A re-registration keeps the drain flag.
        t.registered(d, rec(800, Duration::ZERO));
        assert_eq!(t.list()[1].state, PeerState::Drained);
        assert_eq!(t.state_counts(), [1, 0, 0, 0, 1]);
        // Undrain: placed on again, shown up; a survey from before the
        // undrain does not make it drained again.
        let before = t.view();
        t.clear_draining(d);
        t.set_survey(&before, &HashMap::from([(d, PeerSurvey { indexed: 4, needed: false })]));
        assert_eq!(t.list()[1].state, PeerState::Up);
        assert_eq!(t.place(2, 1, 1, &who(), PlacementCaps::NONE).map(|v| v[0].len()), Ok(2));
        // A re-registration keeps the undrained flag.
        t.registered(d, PeerRecord { draining: true, ..rec(800, Duration::ZERO) });
        assert_eq!(t.list()[1].state, PeerState::Up);
        // A survey taken before a drain does not mark the peer drained.
        let mut t = table(vec![(1, rec(800, Duration::ZERO))]);
        let before = t.view();
        t.set_draining(PeerId([1; 16]));
        t.set_survey(&before, &HashMap::new());
        assert_eq!(t.list()[0].state, PeerState::Draining);
    }

    #[test]
    fn peers_on_one_disk_count_it_once() {
        let on_disk = |d: u8, used: u64, free: u64, avail: u64| {
            let mut r = rec(free, Duration::ZERO);
            r.usage.used_bytes = used;
            r.usage.fs = Some(StorageFs { id: [d; 16], total_bytes: 10_000, avail_bytes: avail });
            r
        };
        // Three peers on disk 1 (each sees the disk's 900 free bytes), one on
        // disk 2 and one that does not say.
        let t = table(vec![
            (1, on_disk(1, 10, 900, 900)),
            (2, on_disk(1, 20, 900, 900)),
            (3, on_disk(1, 30, 900, 900)),
            (4, on_disk(2, 5, 400, 700)),
            (5, rec(100, Duration::ZERO)),
        ]);
        let (used, free, n) = t.live_totals();
        assert_eq!((used, free, n), (10 + 20 + 30 + 5 + 900, 900 + 400 + 100, 5));
        // Placement charges the shared disk: four 200-byte chunks fit on
        // disk 1 (900 bytes left), a fifth does not, although each of its
        // three peers still has 500 bytes or more of its own.
        let mut t = table(vec![
            (1, on_disk(1, 0, 900, 900)),
            (2, on_disk(1, 0, 900, 900)),
            (3, on_disk(1, 0, 900, 900)),
        ]);
        for _ in 0..4 {
            t.place(1, 1, 200, &who(), PlacementCaps::NONE).unwrap();
        }
        assert_eq!(
            t.place(1, 1, 200, &who(), PlacementCaps::NONE),
            Err(DirError::PeersFull { needed: 1, with_room: 0, live: 3 })
        );
        assert_eq!(t.live_totals(), (0, 900, 3), "promises do not change what statfs reports");
    }

    #[test]
    fn placement_promises_are_capped_per_call_and_per_principal() {
        let mut t = table(vec![(1, rec(1000, Duration::ZERO)), (2, rec(1000, Duration::ZERO))]);
        let caps = PlacementCaps { per_call: 1000, per_principal: 1500 };
        // count × bytes × R = 2 × 300 × 2 = 1200 is over the per-call cap.
        assert!(matches!(t.place(2, 2, 300, &who(), caps), Err(DirError::Limit(_))));
        t.place(2, 1, 400, &who(), caps).unwrap();
        // 800 held + 800 asked is over the caller's 1500.
        let e = t.place(2, 1, 400, &who(), caps).unwrap_err();
        assert!(matches!(&e, DirError::Limit(m) if m.contains("node:0a0a")), "{e:?}");
        // Another caller has its own budget.
        t.place(2, 1, 400, &Principal::node(common::NodeId([0xb; 16])), caps).unwrap();
        // A heartbeat ends the promises made to that peer.
        let usage = rec(1000, Duration::ZERO).usage;
        for k in [1, 2] {
            t.heartbeat(PeerId([k; 16]), usage, Timestamp::now()).unwrap();
        }
        t.place(2, 1, 400, &who(), caps).unwrap();
        // Absurd sizes are an error, not an overflow.
        let r = t.place(2, u32::MAX, u64::MAX, &who(), PlacementCaps::NONE);
        assert!(matches!(r, Err(DirError::Invalid(_))), "{r:?}");
        let r = t.place(2, 4096, u64::MAX, &who(), PlacementCaps::NONE);
        assert!(matches!(r, Err(DirError::PeersFull { .. })), "{r:?}");
        let huge = PlacementCaps { per_call: u64::MAX, per_principal: u64::MAX };
        let r = t.place(2, 4096, 1 << 52, &who(), huge);
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn promises_spread_placements_until_the_next_heartbeat() {
        let mut t = table(vec![(1, rec(1000, Duration::ZERO)), (2, rec(1000, Duration::ZERO))]);
        // Each peer has room for one 600-byte chunk until it reports again.
        let a = t.place(1, 1, 600, &who(), PlacementCaps::NONE).unwrap();
        let b = t.place(1, 1, 600, &who(), PlacementCaps::NONE).unwrap();
        assert_ne!(a[0][0].id, b[0][0].id, "second call must avoid the promised peer");
        assert!(matches!(t.place(1, 1, 600, &who(), PlacementCaps::NONE), Err(DirError::PeersFull { .. })));
        let first = a[0][0].id;
        let usage = rec(1000, Duration::ZERO).usage;
        assert_eq!(t.heartbeat(first, usage, Timestamp::now()), Ok(false));
        assert_eq!(t.place(1, 1, 600, &who(), PlacementCaps::NONE).unwrap()[0][0].id, first);
        assert_eq!(t.heartbeat(PeerId([7; 16]), usage, Timestamp::now()), Err(DirError::NotFound));
    }
}
