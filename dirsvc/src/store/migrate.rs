//! The migration of a redb database from the typed tables of schemas 1 to
//! 5 to the one keyspace of schema 6 (`kv-v1`, see [`super::keys`]).
//!
//! [`upgrade`] runs before the store opens the engine: it reads
//! `meta-v1/schema_version`; a database without `meta-v1` is new or
//! already converted and is left alone; a schema newer than 5 is refused
//! untouched ([`Error::Schema`]). Otherwise ONE redb write transaction
//! copies every old table into `kv-v1` under the new keys (values byte for
//! byte, except: layout rows are packed into layout groups, `layouts-v1`
//! rows of schemas 1 to 4 with key epoch 0 and a zero MAC; the volume
//! record is rewritten as version 3 with `key_epoch` beside it; peer
//! records of schema 1 are rewritten as version 3), deletes the old tables
//! and sets the schema to 6. A crash before the commit leaves the old
//! database intact.
//!
//! The old table definitions below are private to this module: nothing
//! else reads them.

use super::decode_u32;
use super::keys;
use super::records::{
    LayoutEntry, LayoutGroupRecord, PeerRecord, Record, VolumeRecord, GROUP_BLOCKS, OLDEST_SCHEMA_VERSION,
    SCHEMA_VERSION,
};
use crate::error::Error;
use crate::kv::redb::KV;
use redb::{
    Database, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle, WriteTransaction,
};
use std::collections::HashSet;

/// `inodes-v1`: inode number → inode record.
pub(super) const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes-v1");
/// `dirents-v1`: `(parent, sealed name)` → `(ino, cookie, kind byte)`.
pub(super) const DIRENTS: TableDefinition<(u64, &[u8]), (u64, u64, u8)> = TableDefinition::new("dirents-v1");
/// `dircookies-v1`: `(parent, cookie)` → sealed name.
pub(super) const DIRCOOKIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("dircookies-v1");
/// A `layouts-v2` row: `(chunk, len, epoch, MAC)`.
pub(super) type LayoutRowV2 = ([u8; 32], u32, u32, [u8; 32]);
/// `layouts-v2` (schema 5): `(ino, index)` → [`LayoutRowV2`].
pub(super) const LAYOUTS: TableDefinition<(u64, u64), LayoutRowV2> = TableDefinition::new("layouts-v2");
/// `layouts-v1` (schemas 1 to 4): `(ino, index)` → `(chunk, len)`.
pub(super) const LAYOUTS_V1: TableDefinition<(u64, u64), ([u8; 32], u32)> =
    TableDefinition::new("layouts-v1");
/// `chunks-v1`: chunk id → chunk record.
pub(super) const CHUNKS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("chunks-v1");
/// `chunks-unreferenced-v1`: chunk id → Unix seconds.
pub(super) const CHUNKS_UNREFERENCED: TableDefinition<[u8; 32], i64> =
    TableDefinition::new("chunks-unreferenced-v1");
/// `symlinks-v1`: inode → sealed target.
pub(super) const SYMLINKS: TableDefinition<u64, &[u8]> = TableDefinition::new("symlinks-v1");
/// `peers-v1`: peer id → peer record.
pub(super) const PEERS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("peers-v1");
/// `chunk-tombstones-v1`: chunk id → tombstone record.
pub(super) const TOMBSTONES: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("chunk-tombstones-v1");
/// `orphans-v1`: inode → Unix seconds.
pub(super) const ORPHANS: TableDefinition<u64, i64> = TableDefinition::new("orphans-v1");
/// `xattrs-v1`: `(ino, sealed name)` → sealed value.
pub(super) const XATTRS: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("xattrs-v1");
/// `sessions-v1`: session id → session record.
pub(super) const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions-v1");
/// `join-tokens-v1`: token id → join-token record.
pub(super) const JOIN_TOKENS: TableDefinition<[u8; 8], &[u8]> = TableDefinition::new("join-tokens-v1");
/// `revoked-v1`: node id → revocation record.
pub(super) const REVOKED: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("revoked-v1");
/// `meta-v1`: name → value.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-v1");

/// Converts a database of schema 1 to 5 to schema 6 in one write
/// transaction (see the module documentation); nothing for a new or
/// converted one.
///
/// Errors: [`Error::Schema`] for a schema newer than 5 (nothing written);
/// [`Error::Corrupt`] for a volume or peer record that does not decode;
/// [`Error::Db`].
pub fn upgrade(db: &Database) -> Result<(), Error> {
    let found = {
        let txn = db.begin_read()?;
        match txn.open_table(META) {
            Ok(meta) => meta.get(keys::META_SCHEMA)?.map(|g| decode_u32(g.value())).transpose()?,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    };
    let Some(old) = found else { return Ok(()) };
    if !(OLDEST_SCHEMA_VERSION..SCHEMA_VERSION).contains(&old) {
        return Err(Error::Schema { found: old, supported: SCHEMA_VERSION });
    }
    let txn = db.begin_write()?;
    let present: HashSet<String> = txn.list_tables()?.map(|h| h.name().to_string()).collect();
    let has = |name: &str| present.contains(name);
    let mut copied = 0u64;
    {
        let mut kv = txn.open_table(KV)?;
        let mut put = |kv: &mut Table<'_, &'static [u8], &'static [u8]>, k: Vec<u8>, v: &[u8]| {
            copied += 1;
            kv.insert(k.as_slice(), v).map(|_| ())
        };
        if has("inodes-v1") {
            for row in txn.open_table(INODES)?.iter()? {
                let (k, v) = row?;
                put(&mut kv, keys::inode(k.value()), v.value())?;
            }
        }
        if has("dirents-v1") {
            for row in txn.open_table(DIRENTS)?.iter()? {
                let (k, v) = row?;
                let (parent, name) = k.value();
                let (ino, cookie, kind) = v.value();
                let mut val = Vec::with_capacity(17);
                val.extend_from_slice(&ino.to_le_bytes());
                val.extend_from_slice(&cookie.to_le_bytes());
                val.push(kind);
                put(&mut kv, keys::dirent(parent, name), &val)?;
            }
        }
        if has("dircookies-v1") {
            for row in txn.open_table(DIRCOOKIES)?.iter()? {
                let (k, v) = row?;
                let (parent, cookie) = k.value();
                put(&mut kv, keys::cookie(parent, cookie), v.value())?;
            }
        }
        if has("chunks-v1") {
            for row in txn.open_table(CHUNKS)?.iter()? {
                let (k, v) = row?;
                put(&mut kv, keys::chunk(&k.value()), v.value())?;
            }
        }
        if has("chunks-unreferenced-v1") {
            for row in txn.open_table(CHUNKS_UNREFERENCED)?.iter()? {
                let (k, v) = row?;
                put(&mut kv, keys::unref(&k.value()), &v.value().to_le_bytes())?;
            }
        }
        if has("symlinks-v1") {
            for row in txn.open_table(SYMLINKS)?.iter()? {
                let (k, v) = row?;
                put(&mut kv, keys::symlink(k.value()), v.value())?;
            }
        }
        if has("peers-v1") {
            for row in txn.open_table(PEERS)?.iter()? {
                let (k, v) = row?;
                if old < 2 {
                    // 1 → 2: peer records gain labels and the drain flag.
                    let rec = PeerRecord::from_bytes(v.value())?.to_bytes()?;
                    put(&mut kv, keys::peer(&k.value()), &rec)?;
                } else {
                    put(&mut kv, keys::peer(&k.value()), v.value())?;
                }
            }
        }
        if has("chunk-tombstones-v1") {
            for row in txn.open_table(TOMBSTONES)?.iter()? {
                let (k, v) = row?;
                put(&mut kv, keys::tombstone(&k.value()), v.value())?;
            }
        }
        if has("orphans-v1") {
            for row in txn.open_table(ORPHANS)?.iter()? {
                let (k, v) = row?;
                put(&mut kv, keys::orphan(k.value()), &v.value().to_le_bytes())?;
            }
        }
        if has("xattrs-v1") {
            for row in txn.open_table(XATTRS)?.iter()? {
                let (k, v) = row?;
                let (ino, name) = k.value();
                put(&mut kv, keys::xattr(ino, name), v.value())?;
            }
        }
        if has("sessions-v1") {
            for row in txn.open_table(SESSIONS)?.iter()? {
                let (k, v) = row?;
                put(&mut kv, keys::session(k.value()), v.value())?;
            }
        }
        if has("join-tokens-v1") {
            for row in txn.open_table(JOIN_TOKENS)?.iter()? {
                let (k, v) = row?;
                put(&mut kv, keys::join_token(&k.value()), v.value())?;
            }
        }
        if has("revoked-v1") {
            for row in txn.open_table(REVOKED)?.iter()? {
                let (k, v) = row?;
                put(&mut kv, keys::revoked(&k.value()), v.value())?;
            }
        }
        for row in txn.open_table(META)?.iter()? {
            let (k, v) = row?;
            let name = k.value();
            match name {
                keys::META_SCHEMA => {}
                keys::META_VOLUME => {
                    // 4 → 5: the volume record gains its keyring and the
                    // legacy flag; the newest key epoch goes beside it.
                    let rec = VolumeRecord::from_bytes(v.value())?;
                    put(&mut kv, keys::meta(keys::META_VOLUME), &rec.to_bytes()?)?;
                    let epoch = rec.keyring.newest_epoch().to_le_bytes();
                    put(&mut kv, keys::meta(keys::META_KEY_EPOCH), &epoch)?;
                }
                keys::META_KEY_EPOCH => {}
                other => put(&mut kv, keys::meta(other), v.value())?,
            }
        }
        put(&mut kv, keys::meta(keys::META_SCHEMA), &SCHEMA_VERSION.to_le_bytes())?;
    }
    let mut layout_rows = 0u64;
    if has("layouts-v2") {
        let rows = txn
            .open_table(LAYOUTS)?
            .iter()?
            .map(|row| {
                let (k, v) = row?;
                let (ino, index) = k.value();
                let (chunk, len, epoch, mac) = v.value();
                Ok((ino, index, chunk, len, epoch, mac))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        layout_rows += pack_layouts(&txn, rows)?;
    }
    if has("layouts-v1") {
        // 4 → 5: entries of schemas 1 to 4 have key epoch 0 and no MAC.
        let rows = txn
            .open_table(LAYOUTS_V1)?
            .iter()?
            .map(|row| {
                let (k, v) = row?;
                let (ino, index) = k.value();
                let (chunk, len) = v.value();
                Ok((ino, index, chunk, len, 0u32, [0u8; 32]))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        layout_rows += pack_layouts(&txn, rows)?;
    }
    for name in present.iter().filter(|n| n.as_str() != "kv-v1") {
        txn.delete_table(redb::TableDefinition::<&[u8], &[u8]>::new(name))?;
    }
    txn.commit()?;
    tracing::info!(from = old, to = SCHEMA_VERSION, keys = copied, layout_rows, "database migrated");
    Ok(())
}

/// One layout row of a typed table: `(ino, index, chunk, len, epoch, MAC)`.
type Row = (u64, u64, [u8; 32], u32, u32, [u8; 32]);

/// Packs `rows` (in `(ino, index)` order) into layout groups in `kv-v1`,
/// merged with groups already there. Returns the rows packed.
fn pack_layouts(txn: &WriteTransaction, rows: Vec<Row>) -> Result<u64, Error> {
    let mut kv = txn.open_table(KV)?;
    let n = rows.len() as u64;
    let mut current: Option<((u64, u64), LayoutGroupRecord)> = None;
    let flush = |kv: &mut Table<'_, &'static [u8], &'static [u8]>,
                 done: Option<((u64, u64), LayoutGroupRecord)>| {
        if let Some(((ino, g), group)) = done {
            kv.insert(keys::layout(ino, g).as_slice(), group.to_bytes()?.as_slice())?;
        }
        Ok::<_, Error>(())
    };
    for (ino, index, chunk, len, epoch, mac) in rows {
        let at = (ino, index / GROUP_BLOCKS);
        if current.as_ref().map(|c| c.0) != Some(at) {
            flush(&mut kv, current.take())?;
            let existing = match kv.get(keys::layout(at.0, at.1).as_slice())? {
                Some(v) => LayoutGroupRecord::from_bytes(v.value())?,
                None => LayoutGroupRecord::default(),
            };
            current = Some((at, existing));
        }
        if let Some((_, group)) = current.as_mut() {
            group.set(LayoutEntry {
                offset: (index % GROUP_BLOCKS) as u8,
                chunk,
                len,
                epoch,
                mac,
                inline: None,
            });
        }
    }
    flush(&mut kv, current.take())?;
    Ok(n)
}
