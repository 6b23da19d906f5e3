//! The record formats of dirsvc's store: the bytes of every value under
//! the keys of [`super::keys`]. Formats are unchanged from the typed redb
//! tables of schema 5 (the migration copies values byte for byte), except
//! the layout group record, new in schema 6.
//!
//! A record evolves through its format-version byte: readers decode every
//! older version (each record type's `from_older` is its migration),
//! writers always write the newest, and [`SCHEMA_VERSION`] is bumped so an
//! older dirsvc refuses the database rather than misread it.
//!
//! Records are one format-version byte followed by the record's fields, in
//! the order below, encoded with bincode 1 (fixed-width little-endian
//! integers, `u64` length prefixes for byte strings, strings and lists; one
//! byte 0/1 for a bool; no trailing bytes). A record with an unknown version
//! byte is refused as corrupt rather than misread.
//! Timestamps are `(i64 secs, u32 nanos)` since the Unix epoch. Kinds are
//! one byte: 1 file, 2 dir, 3 symlink, 4 fifo, 5 socket, 6 char device,
//! 7 block device (the same byte in directory entries).
//!
//! - inode record v1: `kind u8, perm u32 (mode & 0o7777), uid u32,
//!   gid u32, size u64, nlink u32, atime, mtime, ctime, crtime (timestamps),
//!   rdev u32, parent u64, stored_bytes u64`. `parent` is, for a directory,
//!   the directory holding its entry (root: 1); for other kinds the
//!   directory it was created in (informational). `stored_bytes` is the sum
//!   of the file's layout entries' stored lengths (one replica).
//! - directory entry (`D` keys, not a versioned record): `ino u64 LE,
//!   cookie u64 LE, kind u8` (17 bytes, redb's encoding of the schema-5
//!   tuple).
//! - layout group record v2 (protocol 12): `entries: list of (offset u8,
//!   chunk id [u8; 32], stored len u32, key epoch u32, MAC [u8; 32],
//!   inline: option of bytes)`, the non-hole blocks `64 g + offset` of
//!   group `g`, ascending by offset, at least one (an empty group has no
//!   key). An all-zero MAC marks an entry migrated from `layouts-v1`
//!   (schemas 1 to 4). `inline` holds the sealed chunk of a block kept in
//!   its layout entry (block 0 only, at most 4,160 bytes); such a chunk has
//!   no chunk record. Version 1 (schema 6 before protocol 12, read only):
//!   the same entries without `inline`. A dirsvc older than protocol 12
//!   refuses a v2 group as corrupt rather than misreading it.
//! - chunk record v1: `replicas: list of [u8; 16] peer ids, refcount u64,
//!   len u32` (stored length in bytes). `replicas` is the union of the
//!   peers named by every commit that referenced the chunk.
//! - peer record v3 (written since schema 4): `addr: string ("host:port"),
//!   usage: (capacity_bytes u64, free_bytes u64, used_bytes u64, chunks
//!   u64, fs: option of (id [u8; 16], total_bytes u64, avail_bytes u64)),
//!   last_heartbeat timestamp, host: string, zone: string, draining: bool`.
//!   `host`/`zone` are the failure-domain labels the peer registered with
//!   (empty = unknown); `draining` is set by `drain_peer` and cleared by
//!   `undrain_peer`; `fs` identifies the filesystem the peer stores on (an
//!   option is one byte 0/1, then the value).
//! - peer record v2 (schemas 2 and 3, read only): as v3 without `fs`. It
//!   migrates to v3 with `fs` unknown when read; the next heartbeat that
//!   is persisted rewrites it.
//! - peer record v1 (schema 1, read only): `addr, usage, last_heartbeat` as
//!   in v2. It migrates with empty labels and `draining = false`; migrating
//!   a schema-1 database rewrites every peer record.
//! - tombstone record v1: `deleted_at i64` (Unix seconds when garbage
//!   collection removed the chunk from the index), `pending: list of
//!   [u8; 16] peer ids` (peers still to be told to delete their copy).
//! - session record v2: `label: string` (what the client called itself),
//!   `opened: timestamp`, `owner: [u8; 16]` (the node id of the client
//!   certificate that opened it; only that node may use, renew, reclaim or
//!   close the session). A key exists while the session is alive (from
//!   `open_session` to `close_session` or lease expiry), so after a
//!   restart dirsvc knows which clients may come back to reclaim opens and
//!   locks; the opens and locks themselves are held in memory only (the
//!   clients re-send them). Version 1 (read only) has no owner; it reads
//!   as owner zero, which no node has.
//! - join-token record v1: `secret_hash [u8; 32]` (a keyed BLAKE3 of the
//!   token's secret, `common::pki::JoinToken::secret_hash`; the secret
//!   itself is never stored), `role u8` (2 peer, 3 client), `expires_at
//!   i64` (Unix seconds), `used: option of (i64 Unix seconds, [u8; 16]
//!   node id)`. A used token stays until it expires, so a second use is
//!   refused; expired ones are removed when a new token is made.
//! - revocation record v1: `at i64` (Unix seconds), `reason: string`.
//! - volume record v3 (`M` + `volume`): `id [u8; 16], block_size u32,
//!   replicas u32, keyring: (version u64, epochs: list of (epoch u32,
//!   wrapped: bytes, check [u8; 32], link [u8; 32]), members: list of
//!   (name: string, recipient: string, nodes: list of [u8; 16])),
//!   legacy_layouts: bool`. Version 2 (schema 4, read only): `id,
//!   block_size, replicas, wrapped_secret: bytes, recipients: list of
//!   strings`; version 1 (schemas 1 to 3) has no `recipients`. Both migrate
//!   to version 3 as key epoch 0 (the wrapped secret, a zero check: dirsvc
//!   cannot compute it, a zero link), one member per recipient (named by
//!   the recipient itself, no node ids), keyring version 0, and
//!   `legacy_layouts = true`; migrating such a database rewrites the
//!   record.
//!
//! Plain values: unreferenced-since and orphan-since are `i64` LE Unix
//! seconds; symlink targets, xattr values and sealed names are raw bytes;
//! meta counters are `u64` LE, `schema_version` and `key_epoch` `u32` LE;
//! a trim marker is a `u64` LE block index.

use crate::error::Error;
use bincode::Options;
use common::rpc::dir::{FileKind, KeyEpoch, Keyring, Member, PeerLabels, PeerUsage, MEMBER_NAME_MAX};
use common::time::Timestamp;
use common::{NodeId, PeerId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Version of the whole key schema, stored under `M` + `schema_version`
/// (6: one ordered keyspace, see [`super::keys`]; 5 and before: typed redb
/// tables, migrated at open by [`super::migrate`]).
pub const SCHEMA_VERSION: u32 = 6;

/// The oldest schema version [`crate::Store::open`] migrates from.
pub const OLDEST_SCHEMA_VERSION: u32 = 1;

/// Largest encoded record accepted when decoding, in bytes: bounds the
/// allocation a corrupt length prefix could ask for.
pub const RECORD_LIMIT: u64 = 1 << 20;

fn bincode_options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(RECORD_LIMIT)
}

/// A value stored as one version byte followed by its bincode encoding.
pub(crate) trait Record: Serialize + DeserializeOwned {
    /// What the record is, for error messages.
    const WHAT: &'static str;
    /// The format version written in the first byte.
    const VERSION: u8;

    /// Encodes the record.
    fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut out = vec![Self::VERSION];
        bincode_options()
            .serialize_into(&mut out, self)
            .map_err(|e| Error::Corrupt { what: Self::WHAT, reason: format!("cannot encode: {e}") })?;
        Ok(out)
    }

    /// Decodes a record written by [`Record::to_bytes`] of this or (through
    /// [`Record::from_older`]) an earlier version.
    ///
    /// Errors: [`Error::Corrupt`] for an empty value, an unknown version or
    /// bytes that do not decode.
    fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (&version, body) =
            bytes.split_first().ok_or(Error::Corrupt { what: Self::WHAT, reason: "empty record".into() })?;
        if version != Self::VERSION {
            return Self::from_older(version, body);
        }
        decode_body(Self::WHAT, body)
    }

    /// Decodes the body of an older format `version` and migrates it to
    /// this one. The default knows no older version.
    ///
    /// Errors: [`Error::Corrupt`] for an unknown version or a bad body.
    fn from_older(version: u8, _body: &[u8]) -> Result<Self, Error> {
        Err(Error::Corrupt { what: Self::WHAT, reason: format!("unknown record version {version}") })
    }
}

/// Decodes a record body (the bytes after the version byte).
fn decode_body<T: DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, Error> {
    bincode_options().deserialize(body).map_err(|e| Error::Corrupt { what, reason: e.to_string() })
}

/// Blocks per layout group: block `i` of a file lives in group `i / 64`
/// at offset `i % 64`.
pub(crate) const GROUP_BLOCKS: u64 = 64;

/// One non-hole block of a layout group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LayoutEntry {
    /// Block index within the group (`index % 64`).
    pub offset: u8,
    /// The chunk holding the block.
    pub chunk: [u8; 32],
    /// Stored length of the chunk in bytes.
    pub len: u32,
    /// Key epoch the chunk was sealed under.
    pub epoch: u32,
    /// The writer's MAC of the entry (all zero: migrated, no MAC).
    pub mac: [u8; 32],
    /// The sealed chunk when the block is kept inline (block 0 only, at
    /// most `common::rpc::dir::INLINE_MAX_LEN` bytes): no chunk record
    /// counts it and no peer holds it.
    pub inline: Option<Vec<u8>>,
}

/// A layout entry as layout group record v1 stored it (no inline data).
#[derive(Deserialize)]
struct LayoutEntryV1 {
    offset: u8,
    chunk: [u8; 32],
    len: u32,
    epoch: u32,
    mac: [u8; 32],
}

/// The non-hole blocks of 64 consecutive blocks of a file (`L` value,
/// format version 2), ascending by offset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LayoutGroupRecord {
    /// The entries, ascending by offset, offsets unique.
    pub entries: Vec<LayoutEntry>,
}

impl Record for LayoutGroupRecord {
    const WHAT: &'static str = "layout group";
    const VERSION: u8 = 2;

    fn from_older(version: u8, body: &[u8]) -> Result<Self, Error> {
        match version {
            1 => {
                let v1: Vec<LayoutEntryV1> = decode_body(Self::WHAT, body)?;
                let entries = v1
                    .into_iter()
                    .map(|e| LayoutEntry {
                        offset: e.offset,
                        chunk: e.chunk,
                        len: e.len,
                        epoch: e.epoch,
                        mac: e.mac,
                        inline: None,
                    })
                    .collect();
                Ok(LayoutGroupRecord { entries })
            }
            _ => {
                Err(Error::Corrupt { what: Self::WHAT, reason: format!("unknown record version {version}") })
            }
        }
    }
}

impl LayoutGroupRecord {
    /// The entry at `offset`, if any.
    pub fn get(&self, offset: u8) -> Option<&LayoutEntry> {
        self.entries.binary_search_by_key(&offset, |e| e.offset).ok().map(|i| &self.entries[i])
    }

    /// Sets the entry at its offset (replacing one there).
    pub fn set(&mut self, entry: LayoutEntry) {
        match self.entries.binary_search_by_key(&entry.offset, |e| e.offset) {
            Ok(i) => self.entries[i] = entry,
            Err(i) => self.entries.insert(i, entry),
        }
    }

    /// Removes and returns the entry at `offset`.
    pub fn remove(&mut self, offset: u8) -> Option<LayoutEntry> {
        let i = self.entries.binary_search_by_key(&offset, |e| e.offset).ok()?;
        Some(self.entries.remove(i))
    }
}

/// One inode (`inodes-v1` value, format version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InodeRecord {
    /// Kind byte (see [`kind_to_byte`]).
    pub kind: u8,
    /// Permission bits (`& 0o7777`).
    pub perm: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size in bytes (symlinks: plaintext target length).
    pub size: u64,
    /// Hard link count (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Last access.
    pub atime: Timestamp,
    /// Last content change.
    pub mtime: Timestamp,
    /// Last attribute change.
    pub ctime: Timestamp,
    /// Creation.
    pub crtime: Timestamp,
    /// Device number of device nodes, else 0.
    pub rdev: u32,
    /// Directories: the directory holding the entry (root: 1). Other kinds:
    /// the directory the inode was created in (informational only).
    pub parent: u64,
    /// Sum of the stored lengths of the file's layout rows, in bytes.
    pub stored_bytes: u64,
}

impl Record for InodeRecord {
    const WHAT: &'static str = "inode";
    const VERSION: u8 = 1;
}

/// One chunk of the chunk index (`chunks-v1` value, format version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Peers that acknowledged a durable put of the chunk (union of every
    /// commit that referenced it).
    pub replicas: Vec<PeerId>,
    /// Number of layout rows that reference the chunk.
    pub refcount: u64,
    /// Stored (sealed) length in bytes.
    pub len: u32,
}

impl Record for ChunkRecord {
    const WHAT: &'static str = "chunk";
    const VERSION: u8 = 1;
}

/// One registered peer (`peers-v1` value, format version 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// `host:port` where the peer serves `PeerService`.
    pub addr: String,
    /// Last reported usage. Stored without its scrub progress (which
    /// dirsvc keeps in memory only): reads as `scrub: None`.
    #[serde(with = "usage_v3")]
    pub usage: PeerUsage,
    /// Last registration or persisted heartbeat.
    pub last_heartbeat: Timestamp,
    /// Host failure-domain label (empty = unknown: the peer is its own
    /// host).
    pub host: String,
    /// Zone failure-domain label (empty = unknown: its own zone).
    pub zone: String,
    /// Set by `drain_peer`; never cleared.
    pub draining: bool,
}

impl PeerRecord {
    /// A peer that is not draining, with the given labels.
    pub fn new(addr: String, usage: PeerUsage, last_heartbeat: Timestamp, labels: PeerLabels) -> Self {
        PeerRecord { addr, usage, last_heartbeat, host: labels.host, zone: labels.zone, draining: false }
    }

    /// The failure-domain labels as the wire type.
    pub fn labels(&self) -> PeerLabels {
        PeerLabels { host: self.host.clone(), zone: self.zone.clone() }
    }
}

impl Record for PeerRecord {
    const WHAT: &'static str = "peer";
    const VERSION: u8 = 3;

    fn from_older(version: u8, body: &[u8]) -> Result<Self, Error> {
        match version {
            1 => {
                let v1: PeerRecordV1 = decode_body(Self::WHAT, body)?;
                Ok(PeerRecord::new(v1.addr, v1.usage.into(), v1.last_heartbeat, PeerLabels::default()))
            }
            2 => {
                let v2: PeerRecordV2 = decode_body(Self::WHAT, body)?;
                Ok(PeerRecord {
                    addr: v2.addr,
                    usage: v2.usage.into(),
                    last_heartbeat: v2.last_heartbeat,
                    host: v2.host,
                    zone: v2.zone,
                    draining: v2.draining,
                })
            }
            _ => {
                Err(Error::Corrupt { what: Self::WHAT, reason: format!("unknown record version {version}") })
            }
        }
    }
}

/// A peer's usage as peer record v3 stores it: the wire [`PeerUsage`]
/// without its scrub progress, so the record's format did not change when
/// heartbeats began to carry one.
mod usage_v3 {
    use common::rpc::dir::{PeerUsage, StorageFs};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// The stored fields, in order.
    #[derive(Serialize, Deserialize)]
    struct UsageV3 {
        capacity_bytes: u64,
        free_bytes: u64,
        used_bytes: u64,
        chunks: u64,
        fs: Option<StorageFs>,
    }

    pub(super) fn serialize<S: Serializer>(u: &PeerUsage, s: S) -> Result<S::Ok, S::Error> {
        UsageV3 {
            capacity_bytes: u.capacity_bytes,
            free_bytes: u.free_bytes,
            used_bytes: u.used_bytes,
            chunks: u.chunks,
            fs: u.fs,
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PeerUsage, D::Error> {
        let v = UsageV3::deserialize(d)?;
        Ok(PeerUsage {
            capacity_bytes: v.capacity_bytes,
            free_bytes: v.free_bytes,
            used_bytes: v.used_bytes,
            chunks: v.chunks,
            fs: v.fs,
            scrub: None,
        })
    }
}

/// A peer's usage as peer records v1 and v2 stored it (before the
/// filesystem identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UsageV1 {
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// Free bytes.
    pub free_bytes: u64,
    /// Used bytes.
    pub used_bytes: u64,
    /// Stored chunks.
    pub chunks: u64,
}

impl From<UsageV1> for PeerUsage {
    fn from(u: UsageV1) -> Self {
        PeerUsage {
            capacity_bytes: u.capacity_bytes,
            free_bytes: u.free_bytes,
            used_bytes: u.used_bytes,
            chunks: u.chunks,
            fs: None,
            scrub: None,
        }
    }
}

/// The peer record of schema 1 (format version 1): read for migration only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerRecordV1 {
    /// `host:port`.
    pub addr: String,
    /// Last reported usage.
    pub usage: UsageV1,
    /// Last registration or persisted heartbeat.
    pub last_heartbeat: Timestamp,
}

/// Schema-1 databases are written in tests only (migration tests).
#[cfg(test)]
impl Record for PeerRecordV1 {
    const WHAT: &'static str = "peer";
    const VERSION: u8 = 1;
}

/// The peer record of schemas 2 and 3 (format version 2): read for
/// migration only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerRecordV2 {
    /// `host:port`.
    pub addr: String,
    /// Last reported usage.
    pub usage: UsageV1,
    /// Last registration or persisted heartbeat.
    pub last_heartbeat: Timestamp,
    /// Host label.
    pub host: String,
    /// Zone label.
    pub zone: String,
    /// Drain flag.
    pub draining: bool,
}

/// Schema-3 databases are written in tests only (migration tests).
#[cfg(test)]
impl Record for PeerRecordV2 {
    const WHAT: &'static str = "peer";
    const VERSION: u8 = 2;
}

/// A chunk garbage collection deleted (`chunk-tombstones-v1` value, format
/// version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TombstoneRecord {
    /// Unix seconds at which the chunk left the index.
    pub deleted_at: i64,
    /// Peers that may still hold a copy and have not acknowledged its
    /// deletion.
    pub pending: Vec<PeerId>,
}

impl Record for TombstoneRecord {
    const WHAT: &'static str = "tombstone";
    const VERSION: u8 = 1;
}

/// A live client session (`sessions-v1` value, format version 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// What the client called itself (`SessionOpen::label`).
    pub label: String,
    /// When the session was opened (or last reclaimed).
    pub opened: Timestamp,
    /// The node (from its certificate) that opened it: the only one that
    /// may use, renew, reclaim or close it. All zero for sessions recorded
    /// before certificates (version 1): nobody can reclaim those.
    pub owner: [u8; 16],
}

impl Record for SessionRecord {
    const WHAT: &'static str = "session";
    const VERSION: u8 = 2;

    fn from_older(version: u8, body: &[u8]) -> Result<Self, Error> {
        match version {
            1 => {
                let (label, opened): (String, Timestamp) = decode_body(Self::WHAT, body)?;
                Ok(SessionRecord { label, opened, owner: [0; 16] })
            }
            _ => {
                Err(Error::Corrupt { what: Self::WHAT, reason: format!("unknown record version {version}") })
            }
        }
    }
}

/// A join token (`join-tokens-v1` value, format version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// `JoinToken::secret_hash` of its secret.
    pub secret_hash: [u8; 32],
    /// The role it grants (kind byte: 2 peer, 3 client; see [`role_to_byte`]).
    pub role: u8,
    /// Unix seconds after which it is refused.
    pub expires_at: i64,
    /// Unix seconds when it was used, and by which node; `None` while
    /// unused.
    pub used: Option<(i64, [u8; 16])>,
}

impl Record for JoinTokenRecord {
    const WHAT: &'static str = "join token";
    const VERSION: u8 = 1;
}

/// A revoked node (`revoked-v1` value, format version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedRecord {
    /// Unix seconds when it was revoked.
    pub at: i64,
    /// Why (the admin's words).
    pub reason: String,
}

impl Record for RevokedRecord {
    const WHAT: &'static str = "revocation";
    const VERSION: u8 = 1;
}

/// The stored byte of a role: 1 dirsvc, 2 peer, 3 client, 4 admin.
pub(crate) fn role_to_byte(r: common::rpc::Role) -> u8 {
    match r {
        common::rpc::Role::Dirsvc => 1,
        common::rpc::Role::Peer => 2,
        common::rpc::Role::Client => 3,
        common::rpc::Role::Admin => 4,
    }
}

/// The role of a stored byte.
///
/// Errors: [`Error::Corrupt`] for an unknown byte.
pub(crate) fn role_from_byte(b: u8) -> Result<common::rpc::Role, Error> {
    Ok(match b {
        1 => common::rpc::Role::Dirsvc,
        2 => common::rpc::Role::Peer,
        3 => common::rpc::Role::Client,
        4 => common::rpc::Role::Admin,
        _ => return Err(Error::Corrupt { what: "join token", reason: format!("unknown role byte {b}") }),
    })
}

/// The volume record under `meta-v1/volume` (format version 2). Kept
/// One key epoch in the volume record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EpochRecord {
    /// Epoch number.
    pub epoch: u32,
    /// The age-wrapped epoch secret.
    pub wrapped: Vec<u8>,
    /// Key-check value (zero if unknown: migrated epoch 0).
    pub check: [u8; 32],
    /// Link to the previous epoch (zero for epoch 0).
    pub link: [u8; 32],
}

/// One member in the volume record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    /// Unique name.
    pub name: String,
    /// age recipient (public key).
    pub recipient: String,
    /// Node ids of the member's client certificates.
    pub nodes: Vec<[u8; 16]>,
}

/// The keyring in the volume record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyringRecord {
    /// Bumped by every change.
    pub version: u64,
    /// Key epochs, oldest first.
    pub epochs: Vec<EpochRecord>,
    /// Current members.
    pub members: Vec<MemberRecord>,
}

impl KeyringRecord {
    /// The stored form of a wire keyring.
    pub fn from_wire(k: &Keyring) -> Self {
        KeyringRecord {
            version: k.version,
            epochs: k
                .epochs
                .iter()
                .map(|e| EpochRecord {
                    epoch: e.epoch,
                    wrapped: e.wrapped.clone(),
                    check: e.check,
                    link: e.link,
                })
                .collect(),
            members: k.members.iter().map(MemberRecord::from_wire).collect(),
        }
    }

    /// The wire form.
    pub fn to_wire(&self) -> Keyring {
        Keyring {
            version: self.version,
            epochs: self
                .epochs
                .iter()
                .map(|e| KeyEpoch {
                    epoch: e.epoch,
                    wrapped: e.wrapped.clone(),
                    check: e.check,
                    link: e.link,
                })
                .collect(),
            members: self.members.iter().map(MemberRecord::to_wire).collect(),
        }
    }

    /// The newest epoch number (0 when empty).
    pub fn newest_epoch(&self) -> u32 {
        self.epochs.last().map_or(0, |e| e.epoch)
    }
}

impl MemberRecord {
    /// The stored form of a wire member.
    pub fn from_wire(m: &Member) -> Self {
        MemberRecord {
            name: m.name.clone(),
            recipient: m.recipient.clone(),
            nodes: m.nodes.iter().map(|n| n.0).collect(),
        }
    }

    /// The wire form.
    pub fn to_wire(&self) -> Member {
        Member {
            name: self.name.clone(),
            recipient: self.recipient.clone(),
            nodes: self.nodes.iter().map(|n| NodeId(*n)).collect(),
        }
    }
}

/// The volume record under `meta-v1/volume` (format version 3). Kept
/// separate from the wire type `VolumeInfo` so the stored shape is fixed
/// here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VolumeRecord {
    /// Volume id bytes.
    pub id: [u8; 16],
    /// Block size in bytes.
    pub block_size: u32,
    /// Replication factor R.
    pub replicas: u32,
    /// Key epochs and members.
    pub keyring: KeyringRecord,
    /// Whether layout rows migrated from before MACs may lack one.
    pub legacy_layouts: bool,
}

impl VolumeRecord {
    /// A record of a volume from before key epochs: its one wrapped secret
    /// becomes epoch 0 (check unknown), each recipient a member named by
    /// itself, and its layouts legacy.
    fn migrated(
        id: [u8; 16],
        block_size: u32,
        replicas: u32,
        wrapped: Vec<u8>,
        recipients: Vec<String>,
    ) -> Self {
        let mut members: Vec<MemberRecord> = Vec::new();
        for (i, r) in recipients.into_iter().enumerate() {
            let valid =
                !r.is_empty() && r.len() <= MEMBER_NAME_MAX && r.bytes().all(|b| b.is_ascii_graphic());
            let name = if valid { r.clone() } else { format!("member-{}", i + 1) };
            if members.iter().any(|m| m.name == name || m.recipient == r) {
                continue;
            }
            members.push(MemberRecord { name, recipient: r, nodes: Vec::new() });
        }
        VolumeRecord {
            id,
            block_size,
            replicas,
            keyring: KeyringRecord {
                version: 0,
                epochs: vec![EpochRecord { epoch: 0, wrapped, check: [0; 32], link: [0; 32] }],
                members,
            },
            legacy_layouts: true,
        }
    }
}

impl Record for VolumeRecord {
    const WHAT: &'static str = "volume";
    const VERSION: u8 = 3;

    fn from_older(version: u8, body: &[u8]) -> Result<Self, Error> {
        match version {
            1 => {
                let v1: VolumeRecordV1 = decode_body(Self::WHAT, body)?;
                Ok(VolumeRecord::migrated(v1.id, v1.block_size, v1.replicas, v1.wrapped_secret, Vec::new()))
            }
            2 => {
                let v2: VolumeRecordV2 = decode_body(Self::WHAT, body)?;
                Ok(VolumeRecord::migrated(
                    v2.id,
                    v2.block_size,
                    v2.replicas,
                    v2.wrapped_secret,
                    v2.recipients,
                ))
            }
            _ => {
                Err(Error::Corrupt { what: Self::WHAT, reason: format!("unknown record version {version}") })
            }
        }
    }
}

/// The volume record of schema 4 (format version 2): read for migration
/// only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VolumeRecordV2 {
    /// Volume id bytes.
    pub id: [u8; 16],
    /// Block size in bytes.
    pub block_size: u32,
    /// Replication factor R.
    pub replicas: u32,
    /// The age-wrapped volume secret.
    pub wrapped_secret: Vec<u8>,
    /// The age recipients the secret is wrapped to (public keys).
    pub recipients: Vec<String>,
}

/// Schema-4 databases are written in tests only (migration tests).
#[cfg(test)]
impl Record for VolumeRecordV2 {
    const WHAT: &'static str = "volume";
    const VERSION: u8 = 2;
}

/// The volume record of schemas 1 to 3 (format version 1): read for
/// migration only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VolumeRecordV1 {
    /// Volume id bytes.
    pub id: [u8; 16],
    /// Block size in bytes.
    pub block_size: u32,
    /// Replication factor R.
    pub replicas: u32,
    /// The age-wrapped volume secret.
    pub wrapped_secret: Vec<u8>,
}

/// Older databases are written in tests only (migration tests).
#[cfg(test)]
impl Record for VolumeRecordV1 {
    const WHAT: &'static str = "volume";
    const VERSION: u8 = 1;
}

/// The record types dirsvc stores as bytes (see the module
/// documentation), for code that decodes stored values without a
/// database: fuzzing, inspection tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// `inodes-v1` values.
    Inode,
    /// `chunks-v1` values.
    Chunk,
    /// `peers-v1` values (versions 1 to 3).
    Peer,
    /// `chunk-tombstones-v1` values.
    Tombstone,
    /// `sessions-v1` values (versions 1 and 2).
    Session,
    /// The `meta-v1/volume` value (versions 1 to 3).
    Volume,
    /// `join-tokens-v1` values.
    JoinToken,
    /// `revoked-v1` values.
    Revoked,
}

impl RecordKind {
    /// Every kind.
    pub const ALL: [RecordKind; 8] = [
        RecordKind::Inode,
        RecordKind::Chunk,
        RecordKind::Peer,
        RecordKind::Tombstone,
        RecordKind::Session,
        RecordKind::Volume,
        RecordKind::JoinToken,
        RecordKind::Revoked,
    ];

    /// Decodes `bytes` as a stored record of this kind, exactly as the
    /// store does when it reads one (older versions migrated). Never
    /// panics, and allocates at most [`RECORD_LIMIT`] bytes for lengths
    /// the record claims, whatever the bytes.
    ///
    /// Errors: [`Error::Corrupt`] for bytes that are not such a record.
    pub fn decode(self, bytes: &[u8]) -> Result<(), Error> {
        match self {
            RecordKind::Inode => InodeRecord::from_bytes(bytes).map(drop),
            RecordKind::Chunk => ChunkRecord::from_bytes(bytes).map(drop),
            RecordKind::Peer => PeerRecord::from_bytes(bytes).map(drop),
            RecordKind::Tombstone => TombstoneRecord::from_bytes(bytes).map(drop),
            RecordKind::Session => SessionRecord::from_bytes(bytes).map(drop),
            RecordKind::Volume => VolumeRecord::from_bytes(bytes).map(drop),
            RecordKind::JoinToken => JoinTokenRecord::from_bytes(bytes).map(drop),
            RecordKind::Revoked => RevokedRecord::from_bytes(bytes).map(drop),
        }
    }

    /// Valid stored encodings of this kind, one per version it reads (and
    /// a few shapes): seeds that fuzzing mutates.
    ///
    /// Errors: [`Error::Corrupt`] if one cannot be encoded (never for these
    /// values).
    pub fn samples(self) -> Result<Vec<Vec<u8>>, Error> {
        let t = Timestamp { secs: 1_700_000_000, nanos: 123_456_789 };
        let usage = PeerUsage {
            capacity_bytes: 1 << 40,
            free_bytes: 1 << 39,
            used_bytes: 1 << 39,
            chunks: 12,
            fs: Some(common::rpc::dir::StorageFs { id: [7; 16], total_bytes: 1 << 41, avail_bytes: 1 << 38 }),
            scrub: None,
        };
        let usage_v1 = UsageV1 { capacity_bytes: 10, free_bytes: 7, used_bytes: 3, chunks: 2 };
        let peers = vec![PeerId([1; 16]), PeerId([2; 16]), PeerId([3; 16])];
        Ok(match self {
            RecordKind::Inode => vec![InodeRecord {
                kind: KIND_FILE,
                perm: 0o644,
                uid: 1000,
                gid: 1000,
                size: 5 << 20,
                nlink: 1,
                atime: t,
                mtime: t,
                ctime: t,
                crtime: t,
                rdev: 0,
                parent: 1,
                stored_bytes: 5 << 20,
            }
            .to_bytes()?],
            RecordKind::Chunk => vec![
                ChunkRecord { replicas: peers.clone(), refcount: 3, len: 1 << 20 }.to_bytes()?,
                ChunkRecord { replicas: Vec::new(), refcount: 0, len: 49 }.to_bytes()?,
            ],
            RecordKind::Peer => vec![
                PeerRecord {
                    addr: "peer-a.example:7701".into(),
                    usage,
                    last_heartbeat: t,
                    host: "host-a".into(),
                    zone: "zone-1".into(),
                    draining: true,
                }
                .to_bytes()?,
                encode_version(
                    2,
                    &PeerRecordV2 {
                        addr: "127.0.0.1:7702".into(),
                        usage: usage_v1,
                        last_heartbeat: t,
                        host: "h".into(),
                        zone: String::new(),
                        draining: false,
                    },
                )?,
                encode_version(
                    1,
                    &PeerRecordV1 { addr: "127.0.0.1:7703".into(), usage: usage_v1, last_heartbeat: t },
                )?,
            ],
            RecordKind::Tombstone => {
                vec![TombstoneRecord { deleted_at: 1_700_000_000, pending: peers }.to_bytes()?]
            }
            RecordKind::Session => vec![
                SessionRecord { label: "host pid=42 /mnt/p2pfs".into(), opened: t, owner: [7; 16] }
                    .to_bytes()?,
                encode_version(1, &("host pid=41 /mnt/p2pfs".to_string(), t))?,
            ],
            RecordKind::Volume => vec![
                VolumeRecord {
                    id: [9; 16],
                    block_size: 1 << 20,
                    replicas: 3,
                    keyring: KeyringRecord {
                        version: 2,
                        epochs: vec![
                            EpochRecord {
                                epoch: 0,
                                wrapped: b"age-encryption.org/v1\n".to_vec(),
                                check: [1; 32],
                                link: [0; 32],
                            },
                            EpochRecord { epoch: 1, wrapped: vec![5; 200], check: [2; 32], link: [3; 32] },
                        ],
                        members: vec![MemberRecord {
                            name: "owner".into(),
                            recipient: "age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq"
                                .into(),
                            nodes: vec![[4; 16]],
                        }],
                    },
                    legacy_layouts: false,
                }
                .to_bytes()?,
                encode_version(
                    2,
                    &VolumeRecordV2 {
                        id: [9; 16],
                        block_size: 1 << 20,
                        replicas: 3,
                        wrapped_secret: b"age-encryption.org/v1\n-> X25519 abc\n".to_vec(),
                        recipients: vec![
                            "age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq".into()
                        ],
                    },
                )?,
                encode_version(
                    1,
                    &VolumeRecordV1 {
                        id: [9; 16],
                        block_size: 4096,
                        replicas: 2,
                        wrapped_secret: vec![1, 2, 3],
                    },
                )?,
            ],
            RecordKind::JoinToken => vec![
                JoinTokenRecord { secret_hash: [8; 32], role: 2, expires_at: 1_800_000_000, used: None }
                    .to_bytes()?,
                JoinTokenRecord {
                    secret_hash: [9; 32],
                    role: 3,
                    expires_at: 1_800_000_000,
                    used: Some((1_790_000_000, [6; 16])),
                }
                .to_bytes()?,
            ],
            RecordKind::Revoked => {
                vec![RevokedRecord { at: 1_790_000_000, reason: "laptop stolen".into() }.to_bytes()?]
            }
        })
    }
}

/// `version` followed by `value`'s encoding: a record of an older format.
fn encode_version<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, Error> {
    let mut out = vec![version];
    bincode_options()
        .serialize_into(&mut out, value)
        .map_err(|e| Error::Corrupt { what: "sample", reason: format!("cannot encode: {e}") })?;
    Ok(out)
}

/// The stored byte of a [`FileKind`].
pub(crate) fn kind_to_byte(kind: FileKind) -> u8 {
    match kind {
        FileKind::File => 1,
        FileKind::Dir => 2,
        FileKind::Symlink => 3,
        FileKind::Fifo => 4,
        FileKind::Socket => 5,
        FileKind::CharDevice => 6,
        FileKind::BlockDevice => 7,
    }
}

/// The [`FileKind`] of a stored kind byte.
///
/// Errors: [`Error::Corrupt`] for an unknown byte.
pub(crate) fn kind_from_byte(b: u8) -> Result<FileKind, Error> {
    Ok(match b {
        1 => FileKind::File,
        2 => FileKind::Dir,
        3 => FileKind::Symlink,
        4 => FileKind::Fifo,
        5 => FileKind::Socket,
        6 => FileKind::CharDevice,
        7 => FileKind::BlockDevice,
        _ => return Err(Error::Corrupt { what: "inode", reason: format!("unknown kind byte {b}") }),
    })
}

/// Stored kind byte of a directory.
pub(crate) const KIND_DIR: u8 = 2;
/// Stored kind byte of a regular file.
pub(crate) const KIND_FILE: u8 = 1;
/// Stored kind byte of a symlink.
pub(crate) const KIND_SYMLINK: u8 = 3;

/// The value of a `Q` key: a `mutate` request dirsvc answered, and the
/// answer it gave (replayed to a retry of the same request id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Unix seconds when it was answered (expiry counts from it).
    pub at: i64,
    /// The first answer, success or refusal.
    pub answer: Result<common::rpc::dir::Mutated, common::rpc::dir::DirError>,
}

impl Record for RequestRecord {
    const WHAT: &'static str = "request record";
    const VERSION: u8 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_unknown_versions() {
        let rec = ChunkRecord { replicas: vec![PeerId([3; 16])], refcount: 7, len: 99 };
        let mut bytes = rec.to_bytes().unwrap();
        assert_eq!(bytes[0], 1);
        assert_eq!(ChunkRecord::from_bytes(&bytes).unwrap(), rec);
        bytes[0] = 2;
        assert!(matches!(ChunkRecord::from_bytes(&bytes), Err(Error::Corrupt { .. })));
        assert!(ChunkRecord::from_bytes(&[]).is_err());
        assert!(ChunkRecord::from_bytes(&[1, 0xff]).is_err());
    }

    #[test]
    fn version_1_peer_records_migrate_to_the_newest_version() {
        let v1 = PeerRecordV1 {
            addr: "127.0.0.1:7701".into(),
            usage: UsageV1 { capacity_bytes: 10, free_bytes: 7, used_bytes: 3, chunks: 2 },
            last_heartbeat: Timestamp { secs: 1_700_000_000, nanos: 5 },
        };
        // Exactly what schema 1 wrote: version byte 1, then the three fields.
        let mut bytes = vec![1u8];
        bincode_options().serialize_into(&mut bytes, &v1).unwrap();
        let rec = PeerRecord::from_bytes(&bytes).unwrap();
        assert_eq!(rec, PeerRecord::new(v1.addr, v1.usage.into(), v1.last_heartbeat, PeerLabels::default()));
        let again = rec.to_bytes().unwrap();
        assert_eq!(again[0], 3, "written as the newest version");
        assert_eq!(PeerRecord::from_bytes(&again).unwrap(), rec);
        let mut bad = again.clone();
        bad[0] = 4;
        assert!(matches!(PeerRecord::from_bytes(&bad), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn version_2_peer_and_version_1_volume_records_migrate() {
        let v2 = PeerRecordV2 {
            addr: "127.0.0.1:7702".into(),
            usage: UsageV1 { capacity_bytes: 10, free_bytes: 7, used_bytes: 3, chunks: 2 },
            last_heartbeat: Timestamp { secs: 1_700_000_000, nanos: 5 },
            host: "h".into(),
            zone: "z".into(),
            draining: true,
        };
        let rec = PeerRecord::from_bytes(&v2.to_bytes().unwrap()).unwrap();
        assert_eq!((rec.usage.used_bytes, rec.usage.fs, rec.draining), (3, None, true));
        assert_eq!((rec.host.as_str(), rec.zone.as_str()), ("h", "z"));
        let v1 = VolumeRecordV1 { id: [1; 16], block_size: 4096, replicas: 2, wrapped_secret: vec![9] };
        let vol = VolumeRecord::from_bytes(&v1.to_bytes().unwrap()).unwrap();
        assert_eq!((vol.id, vol.replicas), ([1; 16], 2));
        assert_eq!(
            vol.keyring.epochs,
            vec![EpochRecord { epoch: 0, wrapped: vec![9], check: [0; 32], link: [0; 32] }]
        );
        assert!(vol.keyring.members.is_empty());
        assert!(vol.legacy_layouts);
    }

    #[test]
    fn version_2_volume_records_become_epoch_0_with_members_named_from_recipients() {
        let r = "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq".to_string();
        let v2 = VolumeRecordV2 {
            id: [2; 16],
            block_size: 1 << 20,
            replicas: 3,
            wrapped_secret: b"age-encryption.org/v1...".to_vec(),
            recipients: vec![r.clone(), r.clone(), "has a space".into()],
        };
        let bytes = v2.to_bytes().unwrap();
        assert_eq!(bytes[0], 2);
        let vol = VolumeRecord::from_bytes(&bytes).unwrap();
        assert_eq!((vol.id, vol.block_size, vol.replicas, vol.legacy_layouts), ([2; 16], 1 << 20, 3, true));
        assert_eq!(vol.keyring.version, 0);
        assert_eq!(vol.keyring.epochs.len(), 1);
        assert_eq!(vol.keyring.epochs[0].wrapped, v2.wrapped_secret);
        assert_eq!((vol.keyring.epochs[0].check, vol.keyring.epochs[0].link), ([0; 32], [0; 32]));
        let names: Vec<(&str, &str)> =
            vol.keyring.members.iter().map(|m| (m.name.as_str(), m.recipient.as_str())).collect();
        assert_eq!(names, vec![(r.as_str(), r.as_str()), ("member-3", "has a space")]);
        let again = vol.to_bytes().unwrap();
        assert_eq!(again[0], 3, "written as the newest version");
        assert_eq!(VolumeRecord::from_bytes(&again).unwrap(), vol);
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating() {
        // version 1, then a replicas length of 2^60.
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(ChunkRecord::from_bytes(&bytes), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn every_sample_of_every_record_kind_decodes() {
        for kind in RecordKind::ALL {
            let samples = kind.samples().unwrap();
            assert!(!samples.is_empty());
            for s in samples {
                kind.decode(&s).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
                assert!(kind.decode(&s[..s.len() - 1]).is_err(), "{kind:?} truncated");
            }
        }
    }

    #[test]
    fn layout_group_v1_reads_as_entries_without_inline_data_and_v2_round_trips() {
        // v1: the version byte, then the list of (offset, chunk, len,
        // epoch, MAC), as dirsvc wrote it before protocol 12.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&1u64.to_le_bytes());
        v1.push(5);
        v1.extend_from_slice(&[3; 32]);
        v1.extend_from_slice(&100u32.to_le_bytes());
        v1.extend_from_slice(&2u32.to_le_bytes());
        v1.extend_from_slice(&[4; 32]);
        let g = LayoutGroupRecord::from_bytes(&v1).unwrap();
        let want = LayoutEntry { offset: 5, chunk: [3; 32], len: 100, epoch: 2, mac: [4; 32], inline: None };
        assert_eq!(g.entries, vec![want.clone()]);
        assert!(LayoutGroupRecord::from_bytes(&v1[..v1.len() - 1]).is_err());
        let with_inline = LayoutGroupRecord {
            entries: vec![LayoutEntry { offset: 0, inline: Some(vec![9; 100]), ..want }],
        };
        let bytes = with_inline.to_bytes().unwrap();
        assert_eq!(bytes[0], 2);
        assert_eq!(LayoutGroupRecord::from_bytes(&bytes).unwrap(), with_inline);
    }

    #[test]
    fn every_kind_round_trips_through_its_byte() {
        for k in [
            FileKind::File,
            FileKind::Dir,
            FileKind::Symlink,
            FileKind::Fifo,
            FileKind::Socket,
            FileKind::CharDevice,
            FileKind::BlockDevice,
        ] {
            assert_eq!(kind_from_byte(kind_to_byte(k)).unwrap(), k);
        }
        assert!(kind_from_byte(0).is_err());
        assert_eq!(kind_to_byte(FileKind::Dir), KIND_DIR);
        assert_eq!(kind_to_byte(FileKind::File), KIND_FILE);
        assert_eq!(kind_to_byte(FileKind::Symlink), KIND_SYMLINK);
    }
}
