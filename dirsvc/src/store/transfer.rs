//! Moving a volume's keyspace from one engine to another (`dirsvc
//! migrate`: redb to etcd, etcd to redb) and proving the copy: every key
//! of every family ([`FAMILIES`]) is copied in bounded engine commits, then
//! both sides are digested family by family (a count and a BLAKE3 hash of
//! every key and value) and compared.
//!
//! The copy works on raw keys and values below the store (the keyspace is
//! the same on every engine, see [`super::keys`]), so nothing is decoded
//! or rewritten. Safety rules, checked here and by the caller:
//! - the target must hold no key at all ([`copy`] refuses otherwise);
//! - the source must not be in use: a redb file is opened with its lock
//!   ([`open_redb`]), an etcd prefix must have no elected dirsvc
//!   ([`check_etcd_idle`]);
//! - the schema version key is written last, so a copy cut short leaves a
//!   target that dirsvc refuses to open ("keys but no schema version")
//!   instead of a silently partial volume; empty it and run again.

use super::keys;
use super::migrate;
use super::records::SCHEMA_VERSION;
use crate::error::Error;
use crate::kv::{self, Batch, Engine, Op, Pair, RETRY_WINDOW};
use std::ops::Bound;
use std::path::Path;
use std::time::Instant;

/// The store's key families: (one-byte tag, name shown in the table).
/// Keys whose first byte is none of these are counted under `other`.
pub const FAMILIES: &[(u8, &str)] = &[
    (keys::INODE, "inodes"),
    (keys::DIRENT, "dirents"),
    (keys::COOKIE, "dir-cookies"),
    (keys::LAYOUT, "layouts"),
    (keys::CHUNK, "chunks"),
    (keys::UNREF, "unreferenced"),
    (keys::SYMLINK, "symlinks"),
    (keys::PEER, "peers"),
    (keys::TOMBSTONE, "tombstones"),
    (keys::ORPHAN, "orphans"),
    (keys::XATTR, "xattrs"),
    (keys::SESSION, "sessions"),
    (keys::JOIN_TOKEN, "join-tokens"),
    (keys::REVOKED, "revocations"),
    (keys::TRIM, "trims"),
    (keys::META, "meta"),
];

/// Keys read per engine scan while copying or digesting.
const PAGE: usize = 1024;

/// One family's digest on one engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyDigest {
    /// The family's name ([`FAMILIES`], or `other`).
    pub name: &'static str,
    /// Keys in the family.
    pub keys: u64,
    /// Bytes of its keys and values together.
    pub bytes: u64,
    /// BLAKE3 over every (key, value) in key order, each as a u64 LE length
    /// and the bytes.
    pub hash: [u8; 32],
}

/// One row of a verification: a family on both sides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyCheck {
    /// The source's digest.
    pub source: FamilyDigest,
    /// The target's digest.
    pub target: FamilyDigest,
}

impl FamilyCheck {
    /// Whether count and hash agree.
    pub fn matches(&self) -> bool {
        self.source.keys == self.target.keys && self.source.hash == self.target.hash
    }
}

/// What [`copy`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Keys written to the target.
    pub keys: u64,
    /// Bytes of keys and values written.
    pub bytes: u64,
    /// Engine commits made on the target.
    pub commits: u64,
}

/// Runs `f` until it succeeds, rerunning it after a retryable engine error
/// ([`Error::is_retryable`]) with a short backoff for up to
/// [`RETRY_WINDOW`].
fn retry<T>(mut f: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let start = Instant::now();
    let mut backoff =
        common::net::Backoff::new(std::time::Duration::from_millis(20), std::time::Duration::from_secs(1));
    loop {
        match f() {
            Err(e) if e.is_retryable() && start.elapsed() < RETRY_WINDOW => {
                std::thread::sleep(backoff.step())
            }
            other => return other,
        }
    }
}

/// Calls `each` for every key and value of `engine` in key order, one
/// page (a fresh read view) at a time.
fn walk(engine: &dyn Engine, mut each: impl FnMut(Pair) -> Result<(), Error>) -> Result<(), Error> {
    let mut start: Bound<Vec<u8>> = Bound::Unbounded;
    loop {
        let range = (start.clone(), Bound::Unbounded);
        let page = retry(|| engine.snapshot()?.scan(&range, PAGE, false))?;
        let full = page.len() == PAGE;
        let Some(last) = page.last().map(|(k, _)| k.clone()) else {
            return Ok(());
        };
        for pair in page {
            each(pair)?;
        }
        if !full {
            return Ok(());
        }
        start = Bound::Excluded(last);
    }
}

/// Whether `engine` holds no key. Errors: the engine's.
pub fn is_empty(engine: &dyn Engine) -> Result<bool, Error> {
    retry(|| Ok(engine.snapshot()?.scan(&(Bound::Unbounded, Bound::Unbounded), 1, false)?.is_empty()))
}

/// The digest of every family of `engine` ([`FAMILIES`] in order, then
/// `other`); `progress(keys)` is called after each page with the keys
/// digested so far.
///
/// Errors: the engine's.
pub fn digest(engine: &dyn Engine, progress: &mut dyn FnMut(u64)) -> Result<Vec<FamilyDigest>, Error> {
    let mut hashers: Vec<(blake3::Hasher, u64, u64)> =
        (0..=FAMILIES.len()).map(|_| (blake3::Hasher::new(), 0, 0)).collect();
    let mut seen = 0u64;
    walk(engine, |(k, v)| {
        let i =
            k.first().and_then(|t| FAMILIES.iter().position(|(tag, _)| tag == t)).unwrap_or(FAMILIES.len());
        let (h, n, b) = &mut hashers[i];
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(&k);
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(&v);
        *n += 1;
        *b += (k.len() + v.len()) as u64;
        seen += 1;
        if seen.is_multiple_of(PAGE as u64) {
            progress(seen);
        }
        Ok(())
    })?;
    progress(seen);
    Ok(hashers
        .into_iter()
        .enumerate()
        .map(|(i, (h, keys, bytes))| FamilyDigest {
            name: FAMILIES.get(i).map_or("other", |(_, n)| n),
            keys,
            bytes,
            hash: *h.finalize().as_bytes(),
        })
        .collect())
}

/// Pairs two digests of [`digest`] row by row.
pub fn compare(source: &[FamilyDigest], target: &[FamilyDigest]) -> Vec<FamilyCheck> {
    source.iter().zip(target).map(|(s, t)| FamilyCheck { source: s.clone(), target: t.clone() }).collect()
}

/// Copies every key of `source` into `target`, in commits of at most
/// `target.max_ops()` writes and `target.max_batch_bytes()` bytes of keys
/// and values (etcd: 127 and 1.25 MiB), the schema version key last.
/// `progress(keys, bytes)` is called after every commit with the totals
/// so far.
///
/// Errors: [`Error::Migrate`] if the target holds any key or the source
/// holds no volume of this schema; [`Error::Schema`] if the source's
/// schema is another; the engines' (after retrying retryable ones for
/// [`RETRY_WINDOW`]).
pub fn copy(
    source: &dyn Engine,
    target: &dyn Engine,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CopyStats, Error> {
    if !is_empty(target)? {
        return Err(Error::Migrate(format!(
            "the target ({}) is not empty; migrate only into a new redb file or an empty etcd prefix",
            target.name()
        )));
    }
    let schema_key = keys::meta(keys::META_SCHEMA);
    let schema = retry(|| engine_get(source, &schema_key))?.ok_or_else(|| {
        Error::Migrate(format!("the source ({}) holds no volume (no schema version)", source.name()))
    })?;
    let found = super::decode_u32(&schema)?;
    if found != SCHEMA_VERSION {
        return Err(Error::Schema { found, supported: SCHEMA_VERSION });
    }
    let max_ops = target.max_ops().max(1);
    let max_bytes = target.max_batch_bytes();
    let mut stats = CopyStats::default();
    let mut batch = Batch::new();
    let mut batch_bytes = 0usize;
    let mut flush =
        |batch: &mut Batch, batch_bytes: &mut usize, stats: &mut CopyStats| -> Result<(), Error> {
            if batch.is_empty() {
                return Ok(());
            }
            retry(|| target.commit(batch))?;
            stats.keys += batch.len() as u64;
            stats.bytes += *batch_bytes as u64;
            stats.commits += 1;
            progress(stats.keys, stats.bytes);
            batch.clear();
            *batch_bytes = 0;
            Ok(())
        };
    walk(source, |(k, v)| {
        if k == schema_key {
            return Ok(());
        }
        let size = k.len() + v.len();
        if batch.len() >= max_ops || (!batch.is_empty() && batch_bytes.saturating_add(size) > max_bytes) {
            flush(&mut batch, &mut batch_bytes, &mut stats)?;
        }
        batch_bytes += size;
        batch.insert(k, Op::Put(v));
        Ok(())
    })?;
    flush(&mut batch, &mut batch_bytes, &mut stats)?;
    batch_bytes = schema_key.len() + schema.len();
    batch.insert(schema_key, Op::Put(schema));
    flush(&mut batch, &mut batch_bytes, &mut stats)?;
    Ok(stats)
}

/// One key of `engine`'s committed state.
fn engine_get(engine: &dyn Engine, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    engine.snapshot()?.get(key)
}

/// Opens the redb database at `path` for a migration, holding its lock:
/// as the source (`create` false: it must exist; a database of an older
/// schema is upgraded first, as dirsvc would on open) or as the target
/// (`create` true: created if missing).
///
/// Errors: [`Error::Migrate`] if another process (a running dirsvc) holds
/// the file or a source does not exist; [`Error::Schema`]; [`Error::Db`].
pub fn open_redb(path: &Path, create: bool) -> Result<kv::redb::RedbEngine, Error> {
    if !create && !path.exists() {
        return Err(Error::Migrate(format!("no redb database at {}", path.display())));
    }
    let db = match redb::Database::create(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(Error::Migrate(format!(
                "{} is in use (a running dirsvc holds its lock); stop it first",
                path.display()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if !create {
        migrate::upgrade(&db)?;
    }
    kv::redb::RedbEngine::new(db)
}

/// Checks that no dirsvc leads the volume in `engine`'s prefix (the
/// election key [`crate::ELECTION`] is not held).
///
/// Errors: [`Error::Migrate`] naming the leader's address if it is held;
/// the engine's.
pub fn check_etcd_idle(engine: &kv::etcd::EtcdEngine) -> Result<(), Error> {
    match retry(|| engine.election_holder(crate::ELECTION))? {
        None => Ok(()),
        Some(leader) => Err(Error::Migrate(format!(
            "a dirsvc ({leader}) leads this etcd prefix; stop every dirsvc of the volume first"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::etcd::{EtcdConfig, EtcdEngine};
    use std::sync::Arc;

    /// A source volume: every family, more keys than one etcd commit
    /// takes, and values large enough that the byte bound splits commits.
    fn fill(engine: &dyn Engine) {
        let mut batch = Batch::new();
        for (i, (tag, _)) in FAMILIES.iter().enumerate() {
            for n in 0..(40 + i as u64 * 13) {
                let mut k = vec![*tag];
                k.extend_from_slice(&n.to_be_bytes());
                let size = if *tag == keys::LAYOUT { 30_000 } else { 50 };
                batch.insert(k, Op::Put(vec![(n % 251) as u8; size]));
                if batch.len() == 100 {
                    engine.commit(&batch).unwrap();
                    batch.clear();
                }
            }
        }
        batch.insert(keys::meta(keys::META_SCHEMA), Op::Put(SCHEMA_VERSION.to_le_bytes().to_vec()));
        engine.commit(&batch).unwrap();
    }

    fn etcd_engine(cluster: &testkit::etcd::EtcdCluster, prefix: &str) -> EtcdEngine {
        EtcdEngine::connect(&EtcdConfig::new(cluster.endpoints(), prefix.as_bytes().to_vec())).unwrap()
    }

    #[test]
    fn a_volume_moves_redb_to_etcd_and_back_with_equal_digests_per_family() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = testkit::etcd::EtcdCluster::start(1, None);
        let source = open_redb(&dir.path().join("a.redb"), true).unwrap();
        fill(&source);
        let want = digest(&source, &mut |_| {}).unwrap();
        assert!(want.iter().filter(|d| d.name != "other").all(|d| d.keys > 0), "{want:?}");
        assert_eq!(want.last().map(|d| d.keys), Some(0), "no key outside the families");

        let etcd = etcd_engine(&cluster, "/moved/");
        check_etcd_idle(&etcd).unwrap();
        let mut calls = 0;
        let stats = copy(&source, &etcd, &mut |_, _| calls += 1).unwrap();
        let total: u64 = want.iter().map(|d| d.keys).sum();
        assert_eq!(stats.keys, total);
        assert_eq!(calls, stats.commits);
        // 127 writes per commit at most: at least this many commits.
        assert!(stats.commits >= total.div_ceil(127), "{stats:?}");
        let on_etcd = digest(&etcd, &mut |_| {}).unwrap();
        assert!(compare(&want, &on_etcd).iter().all(FamilyCheck::matches));
        // The store opens the copy as a volume of this schema.
        crate::store::Store::attach(Arc::new(etcd_engine(&cluster, "/moved/"))).unwrap();

        // And back, into a fresh redb file.
        let back = open_redb(&dir.path().join("b.redb"), true).unwrap();
        copy(&etcd, &back, &mut |_, _| {}).unwrap();
        let on_back = digest(&back, &mut |_| {}).unwrap();
        assert_eq!(on_back, want);

        // A non-empty target is refused, and so is a changed family found.
        let again = copy(&source, &etcd, &mut |_, _| {}).unwrap_err();
        assert!(matches!(again, Error::Migrate(ref m) if m.contains("not empty")), "{again}");
        let mut one = Batch::new();
        one.insert(vec![keys::XATTR, 0, 0, 0, 0, 0, 0, 0, 1], Op::Put(b"changed".to_vec()));
        back.commit(&one).unwrap();
        let diff = compare(&want, &digest(&back, &mut |_| {}).unwrap());
        let bad: Vec<&str> = diff.iter().filter(|c| !c.matches()).map(|c| c.source.name).collect();
        assert_eq!(bad, vec!["xattrs"]);
    }

    #[test]
    fn migrate_refuses_a_source_in_use_and_an_empty_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.redb");
        let live = open_redb(&path, true).unwrap();
        let e = open_redb(&path, false).unwrap_err();
        assert!(matches!(e, Error::Migrate(ref m) if m.contains("in use")), "{e}");
        drop(live);
        let e = open_redb(&dir.path().join("missing.redb"), false).unwrap_err();
        assert!(matches!(e, Error::Migrate(_)), "{e}");
        // An empty source has no volume to move.
        let empty = open_redb(&path, false).unwrap();
        let target = open_redb(&dir.path().join("t.redb"), true).unwrap();
        let e = copy(&empty, &target, &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, Error::Migrate(ref m) if m.contains("no volume")), "{e}");
        assert!(target
            .snapshot()
            .unwrap()
            .scan(&(Bound::Unbounded, Bound::Unbounded), 1, false)
            .unwrap()
            .is_empty());

        // An etcd prefix whose election a dirsvc holds is in use.
        let cluster = testkit::etcd::EtcdCluster::start(1, None);
        let engine = etcd_engine(&cluster, "/live/");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let key = engine.election_key(crate::ELECTION);
        rt.block_on(async {
            let mut c = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
            c.put(key, "127.0.0.1:7700", None).await.unwrap();
        });
        let e = check_etcd_idle(&engine).unwrap_err();
        assert!(matches!(e, Error::Migrate(ref m) if m.contains("127.0.0.1:7700")), "{e}");
        check_etcd_idle(&etcd_engine(&cluster, "/other/")).unwrap();
    }
}
