//! Peers and the cluster as dirsvc reports them: registration, labels,
//! states, usage, scrub progress and the cluster status.

use super::*;

/// A peer's registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRegistration {
    /// The peer's id.
    pub id: PeerId,
    /// `host:port` where it serves `PeerService`.
    pub addr: String,
    /// Usage at registration time.
    pub usage: PeerUsage,
    /// Failure-domain labels; placement puts a chunk's replicas on distinct
    /// hosts and zones where it can.
    pub labels: PeerLabels,
}

/// Failure-domain labels of a peer. An empty string means "unknown": such a
/// peer is its own host and zone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerLabels {
    /// The machine the peer runs on (peers sharing a disk or machine should
    /// share a host label).
    pub host: String,
    /// A larger failure domain (rack, room, site).
    pub zone: String,
}

/// A peer's state as dirsvc sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PeerState {
    /// Heartbeat within the suspect timeout: gets new chunks, serves reads.
    Up,
    /// Heartbeat late (past the suspect timeout, not yet the down timeout):
    /// no new chunks; still counted as a replica; readers try it last.
    Suspect,
    /// Silent past the down timeout: its replicas do not count; repair
    /// copies its chunks elsewhere.
    Down,
    /// An operator asked it to leave: no new chunks; its chunks are being
    /// copied elsewhere; it still serves reads.
    Draining,
    /// Drained: every chunk it held has R replicas elsewhere; it may be
    /// stopped for good.
    Drained,
}

impl PeerState {
    /// The lowercase name (`up`, `suspect`, `down`, `draining`,
    /// `drained`), as status output, JSON and the status page show it.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Up => "up",
            PeerState::Suspect => "suspect",
            PeerState::Down => "down",
            PeerState::Draining => "draining",
            PeerState::Drained => "drained",
        }
    }
}

/// A peer's disk usage, sent on register and with every heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerUsage {
    /// Capacity in bytes the peer offers (configured, or its filesystem's).
    pub capacity_bytes: u64,
    /// Bytes still free for chunks.
    pub free_bytes: u64,
    /// Bytes used by stored chunks.
    pub used_bytes: u64,
    /// Number of stored chunks.
    pub chunks: u64,
    /// The filesystem the chunks live on, so that dirsvc counts a disk
    /// shared by several peers once (`statfs`, placement headroom). `None`
    /// if the peer cannot tell: it then counts as a disk of its own.
    pub fs: Option<StorageFs>,
    /// Where the peer's scrub stands (protocol 6). `None` if the peer does
    /// not scrub (rate limit 0). dirsvc keeps it in memory only (it is not
    /// part of the stored peer record): after a dirsvc restart it is
    /// `None` until the peer's next heartbeat.
    pub scrub: Option<ScrubProgress>,
}

/// A peer's scrub progress, sent with its usage in every heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubProgress {
    /// Whether a pass is under way (false: pausing between passes).
    pub running: bool,
    /// Chunks checked in the pass under way; between passes, in the last
    /// pass. A pass resumed after a restart of the peer counts the chunks
    /// before its saved position as checked (estimated from the position:
    /// chunk ids are uniformly spread).
    pub checked: u64,
    /// Chunks the peer held when the pass under way (or the last one)
    /// started: the pass's total.
    pub total: u64,
    /// When the pass under way started, or was resumed after a restart of
    /// the peer; `None` between passes.
    pub pass_started: Option<Timestamp>,
    /// When the last complete pass ended; `None` before the first one.
    pub last_pass_end: Option<Timestamp>,
    /// Passes completed since the peer started.
    pub passes: u64,
    /// Corrupt chunks found (moved aside and reported) since the peer
    /// started.
    pub corrupt_found: u64,
}

/// The filesystem a peer stores its chunks on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StorageFs {
    /// Equal for peers on the same filesystem of the same machine, distinct
    /// otherwise: the first 16 bytes of BLAKE3 over the machine id and the
    /// device id (`st_dev`) of the data directory.
    pub id: [u8; 16],
    /// The filesystem's size in bytes (`f_blocks × f_frsize`).
    pub total_bytes: u64,
    /// Bytes an unprivileged writer may still use on it
    /// (`f_bavail × f_frsize`).
    pub avail_bytes: u64,
}

/// A peer as the admin query shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Where to reach it, and whether it is live.
    pub loc: PeerLoc,
    /// Last reported usage.
    pub usage: PeerUsage,
    /// When it last heartbeat.
    pub last_heartbeat: Timestamp,
    /// Liveness and drain state.
    pub state: PeerState,
    /// Failure-domain labels.
    pub labels: PeerLabels,
    /// Replicas the chunk index records on this peer.
    pub indexed_chunks: u64,
    /// Milliseconds since its last heartbeat, by dirsvc's clock at the
    /// time of the answer (protocol 6).
    pub heartbeat_age_ms: u64,
}

/// One dirsvc instance, as `cluster_status` reports it (protocol 6).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirsvcStatus {
    /// `host:port` it serves `DirService` on (its bound listen address).
    pub addr: String,
    /// Whether it is the leader: the instance that runs repair, garbage
    /// collection and session expiry. A lone dirsvc always is.
    pub leader: bool,
    /// Its version (the `dirsvc --version` string).
    pub version: String,
    /// The RPC protocol it speaks ([`super::PROTOCOL_VERSION`]).
    pub protocol: u32,
    /// When it started.
    pub started: Timestamp,
    /// Seconds since it started.
    pub uptime_secs: u64,
}

/// Cluster-wide health and background work (admin query).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Chunks in the index that layouts reference.
    pub chunks: u64,
    /// Referenced chunks with fewer than R replicas on up or suspect peers
    /// (lost ones included).
    pub under_replicated: u64,
    /// Referenced chunks with no replica on an up or suspect peer.
    pub lost: u64,
    /// Peer-to-peer copies running now.
    pub repairs_in_flight: u32,
    /// Copies completed since dirsvc started.
    pub repaired_total: u64,
    /// Bytes copied by repair since dirsvc started.
    pub repaired_bytes_total: u64,
    /// Chunks waiting out the grace period before deletion.
    pub gc_pending: u64,
    /// Chunk replicas deleted by garbage collection since dirsvc started.
    pub gc_deleted_total: u64,
    /// Peers per state: up, suspect, down, draining, drained.
    pub peers_up: u32,
    /// See `peers_up`.
    pub peers_suspect: u32,
    /// See `peers_up`.
    pub peers_down: u32,
    /// See `peers_up`.
    pub peers_draining: u32,
    /// See `peers_up`.
    pub peers_drained: u32,
    /// The dirsvc instances of the cluster, the answering one first
    /// (today there is one) (protocol 6).
    pub dirsvc: Vec<DirsvcStatus>,
    /// Inodes in use (files, directories, links, orphans).
    pub inodes: u64,
    /// Sealed bytes of one copy of every referenced chunk (what the
    /// volume's data takes before replication, with encryption overhead).
    pub referenced_bytes: u64,
    /// Sealed bytes of every copy of a referenced chunk on an up or
    /// suspect peer (replicas included).
    pub stored_bytes: u64,
    /// Chunks collected by garbage collection that are still tracked:
    /// deletions on peers not all acknowledged yet, or waiting to expire.
    pub gc_tombstones: u64,
    /// When the chunk-index figures (`chunks`, `under_replicated`, `lost`,
    /// `referenced_bytes`, `stored_bytes`) were counted: at the call, or
    /// by the last survey of the repair worker when nothing changed since
    /// (or, on an index of more than 100,000 chunks, when that survey is
    /// under 30 s old).
    pub surveyed_at: Timestamp,
}
