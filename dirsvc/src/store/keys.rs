//! The key schema of the store (schema 6): the one place that builds and
//! parses every key of the [`crate::kv`] keyspace.
//!
//! One ordered keyspace (byte-wise lexicographic). Each key is a one-byte
//! ASCII family tag followed by the family's fields. Integers are
//! big-endian and fixed width, so byte order is numeric order; ids (chunk
//! 32 bytes, peer and node 16, join token 8) are raw; a variable-length
//! byte string is only ever the last field. Values are the records of
//! [`super::records`], byte-identical to the typed tables of schema 5.
//!
//! | tag | key fields | value |
//! |---|---|---|
//! | `I` | `ino u64` | inode record |
//! | `D` | `parent u64, sealed name` | `(ino u64 LE, cookie u64 LE, kind u8)` |
//! | `C` | `parent u64, cookie u64` | sealed name |
//! | `L` | `ino u64, group u64` (= block index / 64) | layout group record: the non-hole entries of blocks `64 group ..= 64 group + 63` |
//! | `K` | `chunk id [32]` | chunk record |
//! | `U` | `chunk id [32]` | `i64` LE Unix seconds its refcount reached 0 |
//! | `Y` | `ino u64` | sealed symlink target |
//! | `P` | `peer id [16]` | peer record |
//! | `T` | `chunk id [32]` | tombstone record |
//! | `O` | `ino u64` | `i64` LE Unix seconds its last link went |
//! | `X` | `ino u64, sealed name` | sealed xattr value |
//! | `S` | `session id u64` | session record |
//! | `J` | `token id [8]` | join-token record |
//! | `R` | `node id [16]` | revocation record |
//! | `Z` | `ino u64` | trim marker: `u64` LE, the first block index still to drop |
//! | `Q` | `node id [16], request u64` | request record: when, and the encoded first answer of a `mutate` request (kept about 10 minutes) |
//! | `M` | `name` (ASCII) | meta: `schema_version` (`u32` LE, 6), `volume` (volume record), `key_epoch` (`u32` LE), `next_inode`, `next_cookie`, `revocation_version` (`u64` LE) |
//!
//! A file's layout is one key per 64 blocks, never one per block: an etcd
//! transaction may touch only about a hundred keys.
//!
//! Invariants kept by every write transaction:
//! - `D` and `C` hold the same entries: `D parent name → (ino, c, k)`
//!   exists iff `C parent c → name` does. An entry gets a fresh cookie when
//!   it is created or renamed into place; `RENAME_EXCHANGE` keeps both
//!   names' cookies and swaps what they name.
//! - A directory's `parent` field names the directory holding its entry
//!   (root: itself); `nlink` of a directory is 2 + its subdirectories.
//! - Layout entries of a file below ⌈size / block size⌉ are its layout;
//!   entries at or past it exist only while a trim marker (`Z`) says they
//!   are being dropped (readers never return them). `stored_bytes` is the
//!   sum of the entries' stored lengths.
//! - A chunk's `refcount` is the number of layout entries naming it. A
//!   chunk at refcount 0 keeps its `K` record and has a `U` key; the `U`
//!   key goes when a layout references it again.
//! - A chunk id never has both a `K` and a `T` key: garbage collection
//!   removes the record and writes the tombstone in one transaction, and
//!   `commit_layout` refuses a tombstoned id with `ChunkGone`.
//! - An inode has nlink 0 iff it has an `O` key: a non-directory whose last
//!   name went while a session held it open, or any inode whose freeing
//!   (layout, chunk references, xattrs: bounded transactions, see
//!   `sessions.rs`) has not finished. No directory entry names it.
//! - `X` keys exist only for inodes with an `I` key; one inode's sealed
//!   names and values total at most `common::rpc::dir::XATTR_INODE_MAX`.

use crate::error::Error;
use crate::kv::{prefix_range, KeyRange};
use std::ops::Bound;

/// Inode records.
pub(crate) const INODE: u8 = b'I';
/// Directory entries by name.
pub(crate) const DIRENT: u8 = b'D';
/// Directory entries by cookie.
pub(crate) const COOKIE: u8 = b'C';
/// Layout groups.
pub(crate) const LAYOUT: u8 = b'L';
/// Chunk records.
pub(crate) const CHUNK: u8 = b'K';
/// Unreferenced chunks.
pub(crate) const UNREF: u8 = b'U';
/// Symlink targets.
pub(crate) const SYMLINK: u8 = b'Y';
/// Peer records.
pub(crate) const PEER: u8 = b'P';
/// Tombstones.
pub(crate) const TOMBSTONE: u8 = b'T';
/// Orphans.
pub(crate) const ORPHAN: u8 = b'O';
/// Extended attributes.
pub(crate) const XATTR: u8 = b'X';
/// Sessions.
pub(crate) const SESSION: u8 = b'S';
/// Join tokens.
pub(crate) const JOIN_TOKEN: u8 = b'J';
/// Revocations.
pub(crate) const REVOKED: u8 = b'R';
/// Trim markers.
pub(crate) const TRIM: u8 = b'Z';
/// Answered requests (`mutate` request ids).
pub(crate) const REQUEST: u8 = b'Q';
/// Meta values.
pub(crate) const META: u8 = b'M';

/// `M` name of the schema version.
pub(crate) const META_SCHEMA: &str = "schema_version";
/// `M` name of the volume record.
pub(crate) const META_VOLUME: &str = "volume";
/// `M` name of the inode counter.
pub(crate) const META_NEXT_INODE: &str = "next_inode";
/// `M` name of the cookie counter.
pub(crate) const META_NEXT_COOKIE: &str = "next_cookie";
/// `M` name of the revocation list's version.
pub(crate) const META_REVOCATIONS: &str = "revocation_version";
/// `M` name of the newest key epoch.
pub(crate) const META_KEY_EPOCH: &str = "key_epoch";

fn with(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(tag);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// The key `tag` + `n` (big-endian).
fn u64_key(tag: u8, n: u64) -> Vec<u8> {
    with(tag, &[&n.to_be_bytes()])
}

/// Every key of family `tag`.
pub(crate) fn family(tag: u8) -> KeyRange {
    prefix_range(&[tag])
}

/// `I` + ino.
pub(crate) fn inode(ino: u64) -> Vec<u8> {
    u64_key(INODE, ino)
}

/// `D` + parent + sealed name.
pub(crate) fn dirent(parent: u64, name: &[u8]) -> Vec<u8> {
    with(DIRENT, &[&parent.to_be_bytes(), name])
}

/// `C` + parent + cookie.
pub(crate) fn cookie(parent: u64, cookie: u64) -> Vec<u8> {
    with(COOKIE, &[&parent.to_be_bytes(), &cookie.to_be_bytes()])
}

/// The cookies of directory `parent` from `from` on.
pub(crate) fn cookies_from(parent: u64, from: u64) -> KeyRange {
    (Bound::Included(cookie(parent, from)), prefix_range(&u64_key(COOKIE, parent)).1)
}

/// The cookie of a `C` key.
pub(crate) fn parse_cookie(key: &[u8]) -> Result<u64, Error> {
    tail_u64(key, COOKIE, 17, "directory cookie")
}

/// `L` + ino + group.
pub(crate) fn layout(ino: u64, group: u64) -> Vec<u8> {
    with(LAYOUT, &[&ino.to_be_bytes(), &group.to_be_bytes()])
}

/// The layout groups of `ino` from group `from` on.
pub(crate) fn layouts_from(ino: u64, from: u64) -> KeyRange {
    (Bound::Included(layout(ino, from)), prefix_range(&u64_key(LAYOUT, ino)).1)
}

/// The group number of an `L` key.
pub(crate) fn parse_layout(key: &[u8]) -> Result<u64, Error> {
    tail_u64(key, LAYOUT, 17, "layout group")
}

/// `K` + chunk id.
pub(crate) fn chunk(id: &[u8; 32]) -> Vec<u8> {
    with(CHUNK, &[id])
}

/// `U` + chunk id.
pub(crate) fn unref(id: &[u8; 32]) -> Vec<u8> {
    with(UNREF, &[id])
}

/// `T` + chunk id.
pub(crate) fn tombstone(id: &[u8; 32]) -> Vec<u8> {
    with(TOMBSTONE, &[id])
}

/// The chunk id of a `K`, `U` or `T` key.
pub(crate) fn parse_chunk(key: &[u8]) -> Result<[u8; 32], Error> {
    fixed_id(key, "chunk key")
}

/// `Y` + ino.
pub(crate) fn symlink(ino: u64) -> Vec<u8> {
    u64_key(SYMLINK, ino)
}

/// `P` + peer id.
pub(crate) fn peer(id: &[u8; 16]) -> Vec<u8> {
    with(PEER, &[id])
}

/// The peer or node id of a `P` or `R` key.
pub(crate) fn parse_id16(key: &[u8]) -> Result<[u8; 16], Error> {
    fixed_id(key, "peer or node key")
}

/// `O` + ino.
pub(crate) fn orphan(ino: u64) -> Vec<u8> {
    u64_key(ORPHAN, ino)
}

/// `Z` + ino.
pub(crate) fn trim(ino: u64) -> Vec<u8> {
    u64_key(TRIM, ino)
}

/// The inode number of an `I`, `O`, `S` (session id) or `Z` key.
pub(crate) fn parse_u64(key: &[u8]) -> Result<u64, Error> {
    let arr: [u8; 8] =
        key.get(1..).and_then(|b| b.try_into().ok()).ok_or_else(|| bad_key("integer key", key))?;
    Ok(u64::from_be_bytes(arr))
}

/// `X` + ino + sealed name.
pub(crate) fn xattr(ino: u64, name: &[u8]) -> Vec<u8> {
    with(XATTR, &[&ino.to_be_bytes(), name])
}

/// Every extended attribute of `ino`.
pub(crate) fn xattrs_of(ino: u64) -> KeyRange {
    prefix_range(&u64_key(XATTR, ino))
}

/// The sealed name of an `X` key.
pub(crate) fn parse_xattr(key: &[u8]) -> Result<&[u8], Error> {
    key.get(9..).filter(|_| key.first() == Some(&XATTR)).ok_or_else(|| bad_key("xattr key", key))
}

/// `S` + session id.
pub(crate) fn session(id: u64) -> Vec<u8> {
    u64_key(SESSION, id)
}

/// `J` + token id.
pub(crate) fn join_token(id: &[u8; 8]) -> Vec<u8> {
    with(JOIN_TOKEN, &[id])
}

/// The token id of a `J` key.
pub(crate) fn parse_join_token(key: &[u8]) -> Result<[u8; 8], Error> {
    fixed_id(key, "join token key")
}

/// `R` + node id.
pub(crate) fn revoked(node: &[u8; 16]) -> Vec<u8> {
    with(REVOKED, &[node])
}

/// `Q` + node id + request id.
pub(crate) fn request(node: &[u8; 16], id: u64) -> Vec<u8> {
    with(REQUEST, &[node, &id.to_be_bytes()])
}

/// `M` + name.
pub(crate) fn meta(name: &str) -> Vec<u8> {
    with(META, &[name.as_bytes()])
}

fn bad_key(what: &'static str, key: &[u8]) -> Error {
    Error::Corrupt {
        what,
        reason: format!("key of {} bytes (tag {:?})", key.len(), key.first().map(|b| *b as char)),
    }
}

fn fixed_id<const N: usize>(key: &[u8], what: &'static str) -> Result<[u8; N], Error> {
    key.get(1..).and_then(|b| b.try_into().ok()).ok_or_else(|| bad_key(what, key))
}

/// The last `u64` of a `tag` key of `len` bytes.
fn tail_u64(key: &[u8], tag: u8, len: usize, what: &'static str) -> Result<u64, Error> {
    if key.len() != len || key[0] != tag {
        return Err(bad_key(what, key));
    }
    let arr: [u8; 8] = key[len - 8..].try_into().map_err(|_| bad_key(what, key))?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::in_range;

    #[test]
    fn integer_keys_sort_numerically_and_families_do_not_mix() {
        assert!(inode(255) < inode(256));
        assert!(layout(1, u64::MAX) < layout(2, 0));
        assert!(cookie(7, 1) < cookie(7, 1 << 40));
        assert!(in_range(&layouts_from(5, 0), &layout(5, 3)));
        assert!(!in_range(&layouts_from(5, 4), &layout(5, 3)));
        assert!(!in_range(&layouts_from(5, 0), &layout(6, 0)));
        assert!(in_range(&cookies_from(3, 10), &cookie(3, 11)));
        assert!(!in_range(&cookies_from(3, 10), &cookie(3, 9)));
        assert!(!in_range(&cookies_from(3, 10), &cookie(4, 11)));
        assert!(in_range(&xattrs_of(9), &xattr(9, b"")));
        assert!(!in_range(&xattrs_of(9), &xattr(10, b"")));
        assert_eq!(parse_cookie(&cookie(3, 77)).unwrap(), 77);
        assert_eq!(parse_layout(&layout(3, 78)).unwrap(), 78);
        assert_eq!(parse_u64(&orphan(79)).unwrap(), 79);
        assert_eq!(parse_xattr(&xattr(1, b"nm")).unwrap(), b"nm");
        assert_eq!(parse_chunk(&chunk(&[4; 32])).unwrap(), [4; 32]);
        assert!(parse_chunk(&inode(1)).is_err());
    }
}
