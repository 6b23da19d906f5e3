//! The store's conformance suite: every test runs against each engine
//! (the [`conformance!`] macro makes `<engine>::<test>`). Engines: `redb`
//! (the embedded engine as dirsvc runs it) and `redb_127` (the same
//! engine taking at most 127 writes per commit, as etcd does, so every
//! batched and bounded path is exercised). The etcd engine joins with one
//! line in `conformance!`.
//!
//! The layout tests live in `layout_tests`; the migration tests (typed
//! tables of schemas 1 to 5) are redb-only and live in `migrate_tests`.

use super::records::{PeerRecord, SessionRecord};
use super::*;
use crate::kv::redb::RedbEngine;
use crate::kv::{Batch, Engine, Snapshot};
use common::rpc::dir::{
    rename_flags, xattr_flags, AttrChange, CommitAttrs, CommitLayout, FileKind, KeyEpoch, Keyring, Member,
    Mutated, NewInode, PeerLabels, PeerUsage, Reseal, SessionId, SetAttr, StoredChunk, INLINE_MAX_LEN,
};
use common::rpc::Role;
use common::NodeId;

mod layout_tests;
mod migrate_tests;

use layout_tests::*;

/// A store and what keeps it alive (its directory).
pub(super) struct Fixture {
    pub store: Store,
    _dir: tempfile::TempDir,
    /// The etcd cluster of an etcd fixture (dropped after the store: its
    /// processes are killed then).
    _etcd: Option<testkit::etcd::EtcdCluster>,
}

impl std::ops::Deref for Fixture {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

/// The redb engine with a smaller commit limit (etcd's `max_ops`).
struct Limited {
    inner: RedbEngine,
    max_ops: usize,
}

impl Engine for Limited {
    fn name(&self) -> &'static str {
        "redb-limited"
    }
    fn max_ops(&self) -> usize {
        self.max_ops
    }
    fn max_value_bytes(&self) -> usize {
        self.inner.max_value_bytes()
    }
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, Error> {
        self.inner.snapshot()
    }
    fn commit(&self, batch: &Batch) -> Result<(), Error> {
        assert!(
            batch.len() <= self.max_ops,
            "a commit of {} writes, the limit is {}",
            batch.len(),
            self.max_ops
        );
        self.inner.commit(batch)
    }
}

/// A fresh store on redb.
pub(super) fn redb() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db.redb")).unwrap();
    Fixture { store, _dir: dir, _etcd: None }
}

/// A fresh store on redb limited to 127 writes per commit.
pub(super) fn redb_127() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let inner = RedbEngine::open(&dir.path().join("db.redb")).unwrap();
    let store = Store::with_engine(Arc::new(Limited { inner, max_ops: 127 })).unwrap();
    Fixture { store, _dir: dir, _etcd: None }
}

/// A fresh store on the etcd engine, on a one-member etcd of its own (a
/// real etcd process, killed when the fixture drops).
pub(super) fn etcd() -> Fixture {
    let cluster = testkit::etcd::EtcdCluster::start(1, None);
    let mut config = crate::kv::etcd::EtcdConfig::new(cluster.endpoints(), b"/conformance/".to_vec());
    config.request_timeout = std::time::Duration::from_secs(5);
    let engine = crate::kv::etcd::EtcdEngine::connect(&config).unwrap();
    let store = Store::with_engine(Arc::new(engine)).unwrap();
    Fixture { store, _dir: tempfile::tempdir().unwrap(), _etcd: Some(cluster) }
}

/// Generates one `#[test]` per engine and test function.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_redb {
            $(#[test] fn $name() { super::$name(&super::redb()) })*
        }
        mod on_redb_127 {
            $(#[test] fn $name() { super::$name(&super::redb_127()) })*
        }
        mod on_etcd {
            $(#[test] fn $name() { super::$name(&super::etcd()) })*
        }
    };
}

conformance!(
    namespace_operations_and_their_posix_errors,
    rename_flags_exchange_and_replacing,
    readdir_pages_by_cookie,
    hard_links_keep_the_inode_until_the_last_name,
    layouts_commit_overwrite_sparse_and_share_chunks,
    inline_block_zero_lives_in_its_entry_without_a_chunk_record,
    a_commit_sets_the_attributes_it_carries_in_its_transaction,
    truncate_down_trims_in_bounded_steps_and_growth_waits_for_it,
    an_interrupted_trim_is_finished_at_open_or_before_growth,
    unlinking_a_large_file_frees_everything_in_bounded_transactions,
    an_interrupted_free_is_finished_by_free_orphans,
    commits_larger_than_the_engine_allows_are_refused_naming_the_limit,
    reseal_replaces_only_matching_blocks,
    gc_collects_tombstones_acks_and_expires,
    repair_edits_replicas_and_orphan_tombstones_batch,
    peers_register_heartbeat_and_drain,
    sessions_and_orphans_survive_and_free,
    xattrs_flags_and_limits,
    keyring_members_and_epochs,
    join_tokens_and_revocations,
    requests_apply_once_and_replay_their_first_answer,
);

const B: u32 = 4096;

fn volume() -> VolumeInfo {
    VolumeInfo {
        id: VolumeId([1; 16]),
        block_size: B,
        replicas: 1,
        keyring: Keyring {
            version: 0,
            epochs: vec![KeyEpoch { epoch: 0, wrapped: vec![1], check: [9; 32], link: [0; 32] }],
            members: vec![Member { name: "alice".into(), recipient: "age1alice".into(), nodes: vec![] }],
        },
        legacy_layouts: false,
    }
}

const PEER: PeerId = PeerId([7; 16]);

/// Initializes the volume and registers [`PEER`].
fn init(s: &Store) {
    s.init_volume(&volume(), 0, 0).unwrap();
    s.register_peer(PEER, "127.0.0.1:1", PeerUsage::default(), &PeerLabels::default(), Timestamp::now())
        .unwrap();
}

fn file(s: &Store, parent: InodeId, name: &[u8]) -> InodeId {
    let new = NewInode { kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0 };
    s.create(parent, name, &new).unwrap().ino
}

fn chunk(n: u64) -> StoredChunk {
    let mut b = [0u8; 8];
    b.copy_from_slice(&n.to_le_bytes());
    StoredChunk { id: ChunkId::of(&b), len: 100, replicas: vec![PEER], epoch: 0, mac: [5; 32], inline: None }
}

/// Commits blocks `indexes` (chunk per index) at size `size`.
fn commit(s: &Store, ino: InodeId, size: u64, indexes: impl IntoIterator<Item = u64>) -> Attr {
    let blocks: Vec<(u64, Option<StoredChunk>)> = indexes.into_iter().map(|i| (i, Some(chunk(i)))).collect();
    let mut attr = s.getattr(ino).unwrap();
    let max = s.max_commit_entries();
    for part in blocks.chunks(max) {
        let c = CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
            size,
            mtime: Timestamp::now(),
            blocks: part.to_vec(),
        };
        attr = s.commit_layout(ino, &c).unwrap();
    }
    attr
}

fn indexes(s: &Store, ino: InodeId) -> Vec<u64> {
    let mut out = Vec::new();
    let mut first = 0;
    loop {
        let l = s.get_layout(ino, first, MAX_LAYOUT_BLOCKS).unwrap();
        out.extend(l.blocks.iter().map(|b| b.index));
        match l.blocks.last() {
            Some(b) if !l.eof => first = b.index + 1,
            _ => return out,
        }
    }
}

fn dir_err<T: std::fmt::Debug>(r: Result<T, Error>) -> DirError {
    match r {
        Err(Error::Dir(d)) => d,
        other => panic!("expected a DirError, got {other:?}"),
    }
}

fn namespace_operations_and_their_posix_errors(s: &Store) {
    assert!(matches!(dir_err(s.getattr(InodeId::ROOT)), DirError::NotInitialized));
    init(s);
    assert_eq!(dir_err(s.init_volume(&volume(), 0, 0)), DirError::AlreadyInitialized);
    let root = s.getattr(InodeId::ROOT).unwrap();
    assert_eq!((root.kind, root.nlink), (FileKind::Dir, 2));
    let d = s.mkdir(InodeId::ROOT, b"d", 0o755, 1, 2).unwrap();
    assert_eq!(s.getattr(InodeId::ROOT).unwrap().nlink, 3);
    assert_eq!(dir_err(s.mkdir(InodeId::ROOT, b"d", 0o755, 0, 0)), DirError::Exists);
    let f = file(s, d.ino, b"f");
    assert_eq!(s.lookup(d.ino, b"f").unwrap().ino, f);
    assert_eq!(dir_err(s.lookup(d.ino, b"g")), DirError::NotFound);
    assert_eq!(dir_err(s.lookup(f, b"x")), DirError::NotDir);
    assert_eq!(dir_err(s.lookup(d.ino, &vec![b'a'; MAX_NAME_BYTES + 1])), DirError::NameTooLong);
    assert!(matches!(dir_err(s.lookup(d.ino, b"")), DirError::Invalid(_)));
    let new = NewInode { kind: FileKind::Dir, perm: 0o755, uid: 0, gid: 0, rdev: 0 };
    assert!(matches!(dir_err(s.create(d.ino, b"x", &new)), DirError::Invalid(_)));
    assert_eq!(dir_err(s.rmdir(InodeId::ROOT, b"d")), DirError::NotEmpty);
    assert_eq!(dir_err(s.unlink(InodeId::ROOT, b"d")), DirError::IsDir);
    assert_eq!(dir_err(s.rmdir(d.ino, b"f")), DirError::NotDir);
    // setattr: mode, owner, times, kill bits.
    let set = SetAttr { perm: Some(0o6755), uid: Some(5), ..Default::default() };
    let a = s.setattr(f, &set).unwrap();
    assert_eq!((a.perm, a.uid), (0o6755, 5));
    let a = s.setattr(f, &SetAttr { kill_suid_sgid: true, ..Default::default() }).unwrap();
    assert_eq!(a.perm, 0o755);
    assert_eq!(dir_err(s.setattr(d.ino, &SetAttr { size: Some(1), ..Default::default() })), DirError::IsDir);
    // Symlinks.
    let l = s.symlink(d.ino, b"l", b"sealed-target", 6, 0, 0).unwrap();
    assert_eq!(l.kind, FileKind::Symlink);
    assert_eq!(s.readlink(l.ino).unwrap(), b"sealed-target");
    assert!(matches!(dir_err(s.readlink(f)), DirError::Invalid(_)));
    assert_eq!(
        dir_err(s.symlink(d.ino, b"m", &vec![1; MAX_TARGET_BYTES + 1], 1, 0, 0)),
        DirError::NameTooLong
    );
    let first = s.reserve_inodes(2).unwrap();
    let at = s.symlink_at(d.ino, b"m", first, b"t", 1, 0, 0).unwrap();
    assert_eq!(at.ino, first);
    assert!(matches!(dir_err(s.symlink_at(d.ino, b"n", first, b"t", 1, 0, 0)), DirError::NotReserved(_)));
    assert!(matches!(
        dir_err(s.symlink_at(d.ino, b"n", InodeId(1 << 40), b"t", 1, 0, 0)),
        DirError::NotReserved(_)
    ));
    // Unlink and rmdir free everything.
    let before = s.inode_count().unwrap();
    s.unlink(d.ino, b"f").unwrap();
    s.unlink(d.ino, b"l").unwrap();
    s.unlink(d.ino, b"m").unwrap();
    s.rmdir(InodeId::ROOT, b"d").unwrap();
    assert_eq!(s.inode_count().unwrap(), before - 4);
    assert_eq!(dir_err(s.getattr(f)), DirError::NotFound);
    assert_eq!(s.getattr(InodeId::ROOT).unwrap().nlink, 2);
    assert!(s.orphans().unwrap().is_empty());
}

fn rename_flags_exchange_and_replacing(s: &Store) {
    init(s);
    let a = s.mkdir(InodeId::ROOT, b"a", 0o755, 0, 0).unwrap().ino;
    let b = s.mkdir(InodeId::ROOT, b"b", 0o755, 0, 0).unwrap().ino;
    let f = file(s, a, b"f");
    let g = file(s, b, b"g");
    commit(s, g, 3 * u64::from(B), 0..3);
    // NOREPLACE refuses an existing target.
    assert_eq!(dir_err(s.rename(a, b"f", b, b"g", rename_flags::NOREPLACE)), DirError::Exists);
    // Replacing frees the target and its chunks' references.
    let r = s.rename(a, b"f", b, b"g", 0).unwrap();
    assert_eq!((r.moved, r.replaced, r.orphaned), (f, Some(g), false));
    assert_eq!(dir_err(s.getattr(g)), DirError::NotFound);
    assert_eq!(s.unreferenced_count().unwrap(), 3);
    assert_eq!(s.lookup(b, b"g").unwrap().ino, f);
    // Exchange swaps a file and a directory, parents follow.
    let sub = s.mkdir(a, b"sub", 0o755, 0, 0).unwrap().ino;
    s.rename(a, b"sub", b, b"g", rename_flags::EXCHANGE).unwrap();
    assert_eq!(s.lookup(b, b"g").unwrap().ino, sub);
    assert_eq!(s.lookup(a, b"sub").unwrap().ino, f);
    assert_eq!((s.getattr(a).unwrap().nlink, s.getattr(b).unwrap().nlink), (2, 3));
    assert_eq!(dir_err(s.rename(a, b"nope", b, b"x", rename_flags::EXCHANGE)), DirError::NotFound);
    assert!(matches!(dir_err(s.rename(a, b"f", b, b"x", 3)), DirError::Invalid(_)));
    // A directory cannot move into its own subtree; kinds must match.
    assert!(matches!(dir_err(s.rename(InodeId::ROOT, b"b", sub, b"x", 0)), DirError::Invalid(_)));
    assert_eq!(dir_err(s.rename(a, b"sub", InodeId::ROOT, b"b", 0)), DirError::IsDir);
    // Keep: a replaced open file becomes an orphan.
    let h = file(s, a, b"h");
    let r = s.rename_keeping(a, b"sub", a, b"h", 0, &|_| true).unwrap();
    assert_eq!((r.replaced, r.orphaned), (Some(h), true));
    assert_eq!(s.orphans().unwrap(), vec![h]);
    assert_eq!(s.getattr(h).unwrap().nlink, 0);
    // Same inode: nothing happens.
    s.link(f, a, b"f2").unwrap();
    let r = s.rename(a, b"h", a, b"f2", 0).unwrap();
    assert_eq!(r.replaced, None);
}

fn readdir_pages_by_cookie(s: &Store) {
    init(s);
    let d = s.mkdir(InodeId::ROOT, b"d", 0o755, 0, 0).unwrap().ino;
    for i in 0..300u32 {
        file(s, d, format!("n{i:03}").as_bytes());
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s.readdir(d, after, 128).unwrap();
        assert!(page.entries.len() <= 128);
        seen.extend(page.entries.iter().map(|e| e.name.clone()));
        if page.eof {
            break;
        }
        after = page.entries.last().unwrap().cookie;
        // Entries removed meanwhile do not disturb the resume point.
        s.unlink(d, &page.entries[0].name).unwrap();
    }
    assert_eq!(seen.len(), 300);
    let page = s.readdir(d, 0, 0).unwrap();
    assert_eq!(page.entries.len(), 1, "a limit of 0 is clamped to 1");
    assert!(s.readdir(d, u64::MAX, 10).unwrap().eof);
    let f = s.lookup(d, b"n299").unwrap().ino;
    assert_eq!(dir_err(s.readdir(f, 0, 10)), DirError::NotDir);
}

fn hard_links_keep_the_inode_until_the_last_name(s: &Store) {
    init(s);
    let f = file(s, InodeId::ROOT, b"f");
    commit(s, f, u64::from(B), [0]);
    assert_eq!(s.link(f, InodeId::ROOT, b"g").unwrap().nlink, 2);
    assert_eq!(dir_err(s.link(f, InodeId::ROOT, b"g")), DirError::Exists);
    let d = s.mkdir(InodeId::ROOT, b"d", 0o755, 0, 0).unwrap().ino;
    assert_eq!(dir_err(s.link(d, InodeId::ROOT, b"d2")), DirError::IsDir);
    s.unlink(InodeId::ROOT, b"f").unwrap();
    assert_eq!(s.getattr(f).unwrap().nlink, 1);
    assert_eq!(indexes(s, f), vec![0]);
    let r = s.unlink(InodeId::ROOT, b"g").unwrap();
    assert_eq!((r.ino, r.orphaned), (f, false));
    assert_eq!(dir_err(s.getattr(f)), DirError::NotFound);
    assert_eq!(s.unreferenced_count().unwrap(), 1);
}

fn gc_collects_tombstones_acks_and_expires(s: &Store) {
    init(s);
    let f = file(s, InodeId::ROOT, b"f");
    let n = 400u64;
    commit(s, f, n * u64::from(B), 0..n);
    let gen = s.chunk_generation();
    s.unlink(InodeId::ROOT, b"f").unwrap();
    assert!(s.chunk_generation() > gen);
    let un = s.unreferenced_chunks().unwrap();
    assert_eq!(un.len() as u64, n);
    let cutoff = Timestamp::now().secs + 1;
    assert!(s.collect_unreferenced(cutoff - 1000, 1000).unwrap().is_empty(), "too young");
    let got = s.collect_unreferenced(cutoff, 1000).unwrap();
    assert_eq!(got.len() as u64, n);
    assert!(got.iter().all(|(_, r)| r == &vec![PEER]));
    assert_eq!((s.unreferenced_count().unwrap(), s.tombstone_count().unwrap()), (0, n));
    assert!(s.chunk(&chunk(0).id).unwrap().is_none());
    // A tombstoned chunk cannot be committed again.
    let g = file(s, InodeId::ROOT, b"g");
    let cm = CommitLayout {
        held_ms: 0,
        attrs: Default::default(),
        size: 1,
        mtime: Timestamp::now(),
        blocks: vec![(0, Some(chunk(0)))],
    };
    assert!(matches!(dir_err(s.commit_layout(g, &cm)), DirError::ChunkGone(_)));
    // The delete queue pages by id; acks empty it; expiry removes them.
    let first = s.pending_deletes(None, 10).unwrap();
    assert_eq!(first.len(), 10);
    let next = s.pending_deletes(Some(first[9].0), 1000).unwrap();
    assert_eq!(next.len() as u64, n - 10);
    let acks: Vec<(ChunkId, PeerId)> = got.iter().map(|(c, _)| (*c, PEER)).collect();
    s.ack_deletes(&acks).unwrap();
    assert!(s.pending_deletes(None, 10).unwrap().is_empty());
    assert_eq!(s.tombstone(&chunk(0).id).unwrap().map(|t| t.pending.len()), Some(0));
    assert_eq!(s.expire_tombstones(cutoff - 1000).unwrap(), 0);
    assert_eq!(s.expire_tombstones(cutoff).unwrap(), n);
    assert_eq!(s.tombstone_count().unwrap(), 0);
}

fn repair_edits_replicas_and_orphan_tombstones_batch(s: &Store) {
    init(s);
    let other = PeerId([8; 16]);
    let f = file(s, InodeId::ROOT, b"f");
    let n = 300u64;
    commit(s, f, n * u64::from(B), 0..n);
    assert!(s.add_replica(chunk(0).id, other).unwrap());
    assert!(!s.add_replica(ChunkId::of(b"unknown"), other).unwrap());
    assert_eq!(s.chunk_replicas(&[chunk(0).id, ChunkId::of(b"x")]).unwrap(), vec![vec![PEER, other], vec![]]);
    let ids: Vec<ChunkId> = (0..n).map(|i| chunk(i).id).collect();
    assert_eq!(s.drop_replicas(PEER, &ids).unwrap(), n);
    assert_eq!(s.chunk_replicas(&[chunk(0).id]).unwrap(), vec![vec![other]]);
    let mut seen = 0;
    s.for_each_chunk(|_, r| {
        assert_eq!(r.refcount, 1);
        seen += 1;
    })
    .unwrap();
    assert_eq!(seen, n);
    // Orphan copies: the indexed ones are left alone.
    let mut found: Vec<ChunkId> = (0..200).map(|i| ChunkId::of(format!("o{i}").as_bytes())).collect();
    found.push(chunk(0).id);
    assert_eq!(s.missing_from_index(&found).unwrap().iter().filter(|m| **m).count(), 200);
    assert_eq!(s.tombstone_orphans(other, &found).unwrap().len(), 200);
    assert_eq!(s.tombstone_count().unwrap(), 200);
}

fn peers_register_heartbeat_and_drain(s: &Store) {
    let p = PeerId([3; 16]);
    let labels = PeerLabels { host: "h".into(), zone: "z".into() };
    let rec = s.register_peer(p, "127.0.0.1:9", PeerUsage::default(), &labels, Timestamp::now()).unwrap();
    assert!(!rec.draining);
    assert!(s.set_draining(p).unwrap().draining);
    // Re-registering keeps the drain flag.
    s.register_peer(p, "127.0.0.1:10", PeerUsage::default(), &labels, Timestamp::now()).unwrap();
    let usage = PeerUsage { capacity_bytes: 10, ..Default::default() };
    assert!(s.heartbeat_peer(p, usage, Timestamp::now()).unwrap());
    assert!(!s.heartbeat_peer(PeerId([4; 16]), usage, Timestamp::now()).unwrap());
    let peers = s.peers().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(
        (peers[0].1.addr.as_str(), peers[0].1.draining, peers[0].1.labels()),
        ("127.0.0.1:10", true, labels)
    );
    assert!(!s.clear_draining(p).unwrap().draining);
    assert_eq!(dir_err(s.set_draining(PeerId([5; 16]))), DirError::NotFound);
    let r =
        PeerRecord::new("127.0.0.1:11".into(), PeerUsage::default(), Timestamp::now(), PeerLabels::default());
    s.put_peer(PeerId([6; 16]), &r).unwrap();
    assert_eq!(s.peers().unwrap().len(), 2);
}

fn sessions_and_orphans_survive_and_free(s: &Store) {
    init(s);
    let rec = SessionRecord { label: "c".into(), opened: Timestamp::now(), owner: [2; 16] };
    for i in 0..200 {
        s.put_session(SessionId(i), &rec).unwrap();
    }
    assert_eq!(s.sessions().unwrap().len(), 200);
    let f = file(s, InodeId::ROOT, b"f");
    commit(s, f, u64::from(B), [0]);
    s.unlink_keeping(InodeId::ROOT, b"f", &|_| true).unwrap();
    assert_eq!(dir_err(s.link(f, InodeId::ROOT, b"again")), DirError::NotFound);
    let ids: Vec<SessionId> = (0..150).map(SessionId).collect();
    assert_eq!(s.end_sessions(&ids, &[f], &|_| true).unwrap(), vec![]);
    assert_eq!(s.sessions().unwrap().len(), 50);
    assert_eq!(s.end_sessions(&[], &[f, InodeId(999)], &|_| false).unwrap(), vec![f]);
    assert!(s.orphans().unwrap().is_empty());
}

fn xattrs_flags_and_limits(s: &Store) {
    init(s);
    let f = file(s, InodeId::ROOT, b"f");
    s.setxattr(f, b"a", b"1", xattr_flags::CREATE).unwrap();
    assert_eq!(dir_err(s.setxattr(f, b"a", b"1", xattr_flags::CREATE)), DirError::Exists);
    assert_eq!(dir_err(s.setxattr(f, b"b", b"1", xattr_flags::REPLACE)), DirError::NoAttr);
    s.setxattr(f, b"a", b"2", xattr_flags::REPLACE).unwrap();
    assert_eq!(s.getxattr(f, b"a").unwrap(), b"2");
    assert_eq!(dir_err(s.getxattr(f, b"zz")), DirError::NoAttr);
    assert_eq!(dir_err(s.setxattr(f, &vec![1; XATTR_SEALED_NAME_MAX + 1], b"", 0)), DirError::TooBig);
    assert!(matches!(dir_err(s.setxattr(f, b"", b"", 0)), DirError::Invalid(_)));
    assert!(matches!(dir_err(s.setxattr_within(f, b"c", b"3", 0, 1)), DirError::Limit(_)));
    s.setxattr_within(f, b"a", b"3", 0, 1).unwrap();
    s.setxattr(f, b"b", b"1", 0).unwrap();
    assert_eq!(s.listxattr(f).unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    s.removexattr(f, b"a").unwrap();
    assert_eq!(dir_err(s.removexattr(f, b"a")), DirError::NoAttr);
    assert_eq!(s.listxattr(f).unwrap(), vec![b"b".to_vec()]);
    // The per-inode byte limit.
    let big = vec![0u8; common::rpc::dir::XATTR_SEALED_VALUE_MAX];
    let mut i = 0;
    let err = loop {
        match s.setxattr(f, format!("big{i}").as_bytes(), &big, 0) {
            Ok(_) => i += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::Dir(DirError::NoSpace)));
    assert!(i > 10);
    assert_eq!(dir_err(s.listxattr(InodeId(12345))), DirError::NotFound);
}

fn keyring_members_and_epochs(s: &Store) {
    init(s);
    let bob = Member { name: "bob".into(), recipient: "age1bob".into(), nodes: vec![NodeId([1; 16])] };
    assert!(matches!(dir_err(s.add_member(0, &bob, &[vec![2]])), DirError::KeyringChanged { version: 1 }));
    let ring = s.add_member(1, &bob, &[vec![2]]).unwrap();
    assert_eq!((ring.version, ring.members.len()), (2, 2));
    assert_eq!(dir_err(s.add_member(2, &bob, &[vec![2]])), DirError::Exists);
    let e1 = KeyEpoch { epoch: 1, wrapped: vec![3], check: [1; 32], link: [2; 32] };
    let (ring, removed) = s.remove_member(2, "alice", &e1).unwrap();
    assert_eq!((ring.version, ring.epochs.len(), removed.name.as_str()), (3, 2, "alice"));
    assert_eq!(s.volume_info().unwrap().keyring, ring);
    assert!(matches!(dir_err(s.remove_member(3, "bob", &e1)), DirError::Invalid(_)));
    // New chunks must be of the newest epoch now.
    let f = file(s, InodeId::ROOT, b"f");
    let cm = CommitLayout {
        held_ms: 0,
        attrs: Default::default(),
        size: 1,
        mtime: Timestamp::now(),
        blocks: vec![(0, Some(chunk(1)))],
    };
    assert!(matches!(dir_err(s.commit_layout(f, &cm)), DirError::StaleEpoch { current: 1 }));
    let c = StoredChunk { epoch: 1, ..chunk(1) };
    s.commit_layout(
        f,
        &CommitLayout { held_ms: 0, attrs: Default::default(), blocks: vec![(0, Some(c))], ..cm },
    )
    .unwrap();
}

fn join_tokens_and_revocations(s: &Store) {
    let rec = |expires_at| super::records::JoinTokenRecord {
        secret_hash: [1; 32],
        role: Store::role_byte(Role::Peer),
        expires_at,
        used: None,
    };
    s.add_join_token([1; 8], &rec(Timestamp::now().secs + 60)).unwrap();
    assert!(matches!(dir_err(s.add_join_token([1; 8], &rec(0))), DirError::Invalid(_)));
    assert!(matches!(
        dir_err(s.use_join_token([1; 8], &[2; 32], Role::Peer, NodeId([5; 16]))),
        DirError::Unauthorized(_)
    ));
    assert!(matches!(
        dir_err(s.use_join_token([1; 8], &[1; 32], Role::Client, NodeId([5; 16]))),
        DirError::Invalid(_)
    ));
    assert_eq!(s.use_join_token([1; 8], &[1; 32], Role::Peer, NodeId([5; 16])).unwrap(), Role::Peer);
    assert!(matches!(
        dir_err(s.use_join_token([1; 8], &[1; 32], Role::Peer, NodeId([6; 16]))),
        DirError::Unauthorized(_)
    ));
    // Many expired tokens go in bounded batches.
    for i in 0..300u16 {
        let mut id = [9u8; 8];
        id[..2].copy_from_slice(&i.to_be_bytes());
        s.add_join_token(id, &rec(Timestamp::now().secs - 1)).unwrap();
    }
    assert!(matches!(
        dir_err(s.use_join_token([9; 8], &[1; 32], Role::Peer, NodeId([5; 16]))),
        DirError::Unauthorized(_)
    ));
    assert_eq!(s.revocations().unwrap(), (0, vec![]));
    assert_eq!(s.revoke(NodeId([1; 16]), "lost laptop").unwrap(), 1);
    assert_eq!(s.revoke(NodeId([1; 16]), "again").unwrap(), 1);
    assert_eq!(s.revoke(NodeId([2; 16]), "left").unwrap(), 2);
    assert_eq!(s.revocations().unwrap(), (2, vec![NodeId([1; 16]), NodeId([2; 16])]));
}

#[test]
fn a_store_reopens_with_its_data_and_refuses_another_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.redb");
    {
        let s = Store::open(&path).unwrap();
        init(&s);
        file(&s, InodeId::ROOT, b"f");
        s.revoke(NodeId([1; 16]), "x").unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.lookup(InodeId::ROOT, b"f").unwrap().kind, FileKind::File);
    assert_eq!(s.revocations().unwrap().0, 1);
    assert_eq!(s.volume_info().unwrap().id, VolumeId([1; 16]));
    drop(s);
    // A keyspace of a newer schema is refused without a write.
    let engine = RedbEngine::open(&path).unwrap();
    let mut b = Batch::new();
    b.insert(keys::meta(keys::META_SCHEMA), crate::kv::Op::Put(7u32.to_le_bytes().to_vec()));
    engine.commit(&b).unwrap();
    match Store::with_engine(Arc::new(engine)) {
        Err(Error::Schema { found: 7, supported: SCHEMA_VERSION }) => {}
        other => panic!("expected a schema error, got {other:?}"),
    }
}

/// The answer a request id replays.
fn replayed<T: std::fmt::Debug>(o: Once<T>) -> Result<Mutated, DirError> {
    match o {
        Once::Replayed(a) => a,
        Once::Fresh(v) => panic!("applied again: {v:?}"),
    }
}

fn requests_apply_once_and_replay_their_first_answer(s: &Store) {
    init(s);
    let me = NodeId([3; 16]);
    let req = |id| Some(RequestKey { node: me, id });
    let root = InodeId::ROOT;
    let new = NewInode { kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0 };
    // create: the retry answers the first attempt's attributes; nothing
    // new is made.
    let Once::Fresh(a) = s.create_once(req(1), root, b"f", &new).unwrap() else { panic!("replayed") };
    assert_eq!(replayed(s.create_once(req(1), root, b"f", &new).unwrap()), Ok(Mutated::Attr(a.clone())));
    assert_eq!(s.readdir(root, 0, 100).unwrap().entries.len(), 1);
    // The same number from another node is another request.
    let other = Some(RequestKey { node: NodeId([4; 16]), id: 1 });
    assert_eq!(dir_err(s.create_once(other, root, b"f", &new)), DirError::Exists);
    // A refusal is an answer too: it replays even once the name is free.
    assert_eq!(dir_err(s.create_once(req(2), root, b"f", &new)), DirError::Exists);
    // link, rename, unlink, mkdir, rmdir, xattrs: applied once each.
    let Once::Fresh(l) = s.link_once(req(3), a.ino, root, b"g").unwrap() else { panic!("replayed") };
    assert_eq!(l.nlink, 2);
    assert_eq!(replayed(s.link_once(req(3), a.ino, root, b"g").unwrap()), Ok(Mutated::Attr(l)));
    assert_eq!(s.getattr(a.ino).unwrap().nlink, 2);
    let keep = |_| false;
    let Once::Fresh(r) = s.rename_once(req(4), root, b"g", root, b"h", 0, &keep).unwrap() else {
        panic!("replayed")
    };
    assert_eq!(r.moved, a.ino);
    assert_eq!(
        replayed(s.rename_once(req(4), root, b"g", root, b"h", 0, &keep).unwrap()),
        Ok(Mutated::Ino(a.ino))
    );
    assert!(matches!(s.unlink_once(req(5), root, b"f", &keep).unwrap(), Once::Fresh(_)));
    assert_eq!(replayed(s.unlink_once(req(5), root, b"f", &keep).unwrap()), Ok(Mutated::Done));
    assert_eq!(s.getattr(a.ino).unwrap().nlink, 1, "one unlink, not two");
    assert_eq!(replayed(s.create_once(req(2), root, b"f", &new).unwrap()), Err(DirError::Exists));
    let Once::Fresh(d) = s.mkdir_once(req(6), root, b"d", 0o755, 0, 0).unwrap() else { panic!("replayed") };
    assert_eq!(replayed(s.mkdir_once(req(6), root, b"d", 0o755, 0, 0).unwrap()), Ok(Mutated::Attr(d)));
    assert!(matches!(s.rmdir_once(req(7), root, b"d").unwrap(), Once::Fresh(_)));
    assert_eq!(replayed(s.rmdir_once(req(7), root, b"d").unwrap()), Ok(Mutated::Done));
    let create = xattr_flags::CREATE;
    assert!(matches!(s.setxattr_once(req(8), a.ino, b"x", b"v", create, 10).unwrap(), Once::Fresh(_)));
    assert!(replayed(s.setxattr_once(req(8), a.ino, b"x", b"v", create, 10).unwrap()).is_ok());
    assert!(matches!(s.removexattr_once(req(9), a.ino, b"x").unwrap(), Once::Fresh(_)));
    assert!(replayed(s.removexattr_once(req(9), a.ino, b"x").unwrap()).is_ok());
    // Without an id nothing is recorded; with ids, one record each.
    s.mkdir(root, b"e", 0o755, 0, 0).unwrap();
    assert_eq!(s.request_count().unwrap(), 10);
    assert_eq!(s.request_answer(RequestKey { node: me, id: 2 }).unwrap(), Some(Err(DirError::Exists)));
    // Expiry: nothing is older than a minute ago; everything is older
    // than a minute from now, and goes (in batches on small engines).
    let now = Timestamp::now().secs;
    assert_eq!(s.expire_requests(now - 60).unwrap(), 0);
    assert_eq!(s.expire_requests(now + 60).unwrap(), 10);
    assert_eq!(s.request_count().unwrap(), 0);
    for id in 100..400 {
        s.create_once(req(id), root, format!("n{id}").as_bytes(), &new).unwrap();
    }
    assert_eq!(s.expire_requests(now + 60).unwrap(), 300);
    assert_eq!(s.request_answer(RequestKey { node: me, id: 1 }).unwrap(), None);
}
