//! The embedded engine: every key of the layer in one redb table,
//! `kv-v1` (`&[u8]` key → `&[u8]` value, redb's byte-wise order), in one
//! database file. Commits are redb write transactions with
//! `Durability::Immediate` (fsync before `commit` returns); snapshots are
//! redb read transactions (MVCC: they never block the writer).

use super::{Batch, Engine, KeyRange, Op, Pair, Snapshot};
use crate::error::Error;
use redb::{Database, ReadOnlyTable, ReadableDatabase, TableDefinition};
use std::path::Path;

/// The one table of the layer.
pub(crate) const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv-v1");

/// Most writes one redb commit takes from the group committer: bounds the
/// memory and the writer's hold, not correctness.
pub const MAX_OPS: usize = 65_536;

/// Largest value accepted, in bytes (redb's own limit is far higher; this
/// matches what the store ever writes, with room).
pub const MAX_VALUE_BYTES: usize = 64 << 20;

/// The redb engine: one database file.
pub struct RedbEngine {
    db: Database,
}

impl std::fmt::Debug for RedbEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbEngine").finish_non_exhaustive()
    }
}

impl RedbEngine {
    /// Wraps an open database, creating `kv-v1` if it is missing.
    ///
    /// Errors: [`Error::Db`] if redb fails.
    pub fn new(db: Database) -> Result<RedbEngine, Error> {
        let txn = db.begin_write()?;
        txn.open_table(KV)?;
        txn.commit()?;
        Ok(RedbEngine { db })
    }

    /// Opens (or creates) the database file at `path`.
    ///
    /// Errors: [`Error::Db`] if redb cannot open it (including when another
    /// handle in this process has it open).
    pub fn open(path: &Path) -> Result<RedbEngine, Error> {
        RedbEngine::new(Database::create(path)?)
    }

    /// The database, for migrations from the typed tables of schema 5 and
    /// before (see `store::migrate`).
    pub fn database(&self) -> &Database {
        &self.db
    }
}

/// One row of a redb range: (key, value) guards.
type Row<'a> = (redb::AccessGuard<'a, &'static [u8]>, redb::AccessGuard<'a, &'static [u8]>);

struct RedbSnapshot {
    table: ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl Snapshot for RedbSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.table.get(key)?.map(|g| g.value().to_vec()))
    }

    fn scan(&self, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<Pair>, Error> {
        let iter = self.table.range::<&[u8]>(super::as_slices(range))?;
        let mut out = Vec::new();
        let mut push = |row: Result<Row<'_>, redb::StorageError>| {
            let (k, v) = row?;
            out.push((k.value().to_vec(), v.value().to_vec()));
            Ok::<_, Error>(())
        };
        if reverse {
            for row in iter.rev().take(limit) {
                push(row)?;
            }
        } else {
            for row in iter.take(limit) {
                push(row)?;
            }
        }
        Ok(out)
    }
}

impl Engine for RedbEngine {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn embedded(&self) -> bool {
        true
    }

    fn max_ops(&self) -> usize {
        MAX_OPS
    }

    fn max_value_bytes(&self) -> usize {
        MAX_VALUE_BYTES
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, Error> {
        let txn = self.db.begin_read()?;
        Ok(Box::new(RedbSnapshot { table: txn.open_table(KV)? }))
    }

    fn commit(&self, batch: &Batch) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(KV)?;
            for (k, op) in batch {
                match op {
                    Op::Put(v) => {
                        table.insert(k.as_slice(), v.as_slice())?;
                    }
                    Op::Delete => {
                        table.remove(k.as_slice())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}
