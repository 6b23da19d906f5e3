//! File layouts on the wire: the stored form of a block (a chunk on
//! replicas, or inline), commits of blocks with the attributes they carry,
//! layout pages, and re-sealed blocks.

use super::*;

/// A chunk that was stored and is now referenced from a layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChunk {
    /// The chunk's id.
    pub id: ChunkId,
    /// Stored (sealed) length in bytes.
    pub len: u32,
    /// Peers that acknowledged a durable put of it. Empty for a reference
    /// to a chunk the index already holds (a shared block).
    pub replicas: Vec<PeerId>,
    /// The key epoch the chunk was sealed under (its header names it too).
    pub epoch: u32,
    /// The writer's MAC over (volume id, inode, block index, chunk id,
    /// stored length, epoch) under the epoch's layout-MAC key
    /// (`common::keys::LayoutMacKey`), computed for the inode and block
    /// index this entry is committed at. Never all zero in a commit.
    pub mac: [u8; 32],
    /// The sealed chunk itself (`len` bytes, at most [`INLINE_MAX_LEN`]),
    /// for block 0 kept inline in its layout entry: dirsvc stores these
    /// bytes in the layout and no peer holds them, so `replicas` is empty.
    /// dirsvc checks that they hash to `id`. `None` for a chunk stored on
    /// peers.
    pub inline: Option<Vec<u8>>,
}

/// Largest stored (sealed) length in bytes of a block kept inline in its
/// layout entry ([`StoredChunk::inline`]): 4 KiB of data and the 60-byte
/// sealing overhead of one v3 segment, with 4 bytes to spare. Only block 0 may
/// be inline, so a file holds at most this much in dirsvc; clients inline
/// a block 0 whose sealed length fits (files of up to about 4 KiB), which
/// spares the R peer puts of a small file's close and the peer get of its
/// first read.
pub const INLINE_MAX_LEN: u32 = 4096 + 64;

/// Attribute changes a [`CommitLayout`] applies in its transaction, with the
/// layout: the `chmod`, `chown` and `utimensat` a program made on a file
/// while its data was still buffered at the client (`tar` unpacking a
/// file sets mtime, owner and mode before closing it), so they cost no
/// round trips of their own and land together with that data. Each is a
/// compare-and-set ([`AttrChange`]): a value another mount changed since
/// the client last saw it is newer than the carried change and stays.
/// ctime is set as for any commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitAttrs {
    /// Permission bits (`& 0o7777`).
    pub perm: Option<AttrChange<u32>>,
    /// Owner.
    pub uid: Option<AttrChange<u32>>,
    /// Group.
    pub gid: Option<AttrChange<u32>>,
    /// Access time.
    pub atime: Option<AttrChange<Timestamp>>,
}

impl CommitAttrs {
    /// Whether this changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == CommitAttrs::default()
    }
}

/// One attribute change carried by a commit: set to `to` if dirsvc still
/// holds `from` (what the client saw before its change), else left as it
/// is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrChange<T> {
    /// The value the change was made over.
    pub from: T,
    /// The new value.
    pub to: T,
}

impl<T: PartialEq + Copy> AttrChange<T> {
    /// The value after this change is applied over `current`.
    pub fn apply(&self, current: T) -> T {
        if current == self.from {
            self.to
        } else {
            current
        }
    }
}

/// A layout update: the new content of some blocks of one file, applied in
/// one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitLayout {
    /// The file's size in bytes after this commit. Blocks wholly past it are
    /// dropped.
    pub size: u64,
    /// New modification time (ctime is set by dirsvc).
    pub mtime: Timestamp,
    /// Other attributes set with this commit (version 13).
    pub attrs: CommitAttrs,
    /// `(block index, new content)`; `None` makes the block a hole.
    pub blocks: Vec<(u64, Option<StoredChunk>)>,
    /// Milliseconds, when this attempt was sent, since every newly stored
    /// chunk of the commit (an entry with replicas) was last known to be
    /// held: its upload acknowledged, or a replica answering `has` for it.
    /// dirsvc refuses a commit with new chunks when this reaches its GC
    /// grace period ([`DirError::UploadUnverified`]): garbage collection
    /// may have taken such a chunk for an orphan and its tombstone may
    /// have expired, so the commit would name data no peer has. 0 when the
    /// commit stores no new chunk.
    pub held_ms: u64,
}

/// Where one block of a file lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockLoc {
    /// Block index (covers bytes `[index·B, (index+1)·B)`).
    pub index: u64,
    /// The chunk holding it.
    pub chunk: ChunkId,
    /// Stored length in bytes.
    pub len: u32,
    /// Replicas, live ones first, then most recently seen.
    pub replicas: Vec<PeerLoc>,
    /// The key epoch the chunk was sealed under.
    pub epoch: u32,
    /// The MAC the writer committed (see [`StoredChunk::mac`]); all zero
    /// for an entry migrated from before layout MACs.
    pub mac: [u8; 32],
    /// The sealed chunk, for a block kept inline in its layout entry
    /// ([`StoredChunk::inline`]; `replicas` is then empty). Verified
    /// against `chunk` and opened like bytes from a replica.
    pub inline: Option<Vec<u8>>,
}

/// One block re-sealed under a newer key epoch (`reseal_blocks`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reseal {
    /// The block index.
    pub index: u64,
    /// The chunk the block must still name for the replacement to apply.
    pub old: ChunkId,
    /// The new chunk (stored, with replicas, epoch and MAC).
    pub new: StoredChunk,
}

/// A page of a file's layout. Blocks not listed are holes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutPage {
    /// The file's attributes at the time of the read (size, mtime, …).
    pub attr: Attr,
    /// Non-hole blocks with index in the requested range, ascending.
    pub blocks: Vec<BlockLoc>,
    /// True if no non-hole block follows the last one listed.
    pub eof: bool,
}
