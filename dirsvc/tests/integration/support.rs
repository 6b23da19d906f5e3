//! Fixtures shared by the integration tests: temporary stores, names,
//! peers and chunks, and dirsvc settings and peer identities over TLS.

use common::rpc::dir::{
    DirError, DirServiceClient, FileKind, KeyEpoch, Keyring, Member, NewInode, PeerLabels, PeerRegistration,
    PeerUsage, StoredChunk, VolumeInfo,
};
use common::rpc::Role;
use common::time::Timestamp;
use common::{ChunkId, InodeId, PeerId, VolumeId};
use dirsvc::store::tables::PeerRecord;
use dirsvc::{DirsvcConfig, Store};
use std::path::{Path, PathBuf};

/// Block size of the test volumes (the smallest allowed, 4 KiB).
pub const B: u32 = 4096;

/// The root directory.
pub const ROOT: InodeId = InodeId::ROOT;

/// A temporary directory, on tmpfs when there is one (durable commits are
/// then cheap, so tests with thousands of transactions stay fast).
pub fn tmp() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Database path inside a test directory.
pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("dirsvc.redb")
}

/// dirsvc settings for a test in `dir`: 127.0.0.1 on a free port, the
/// database in `dir`, a fresh dirsvc certificate of the test CA, and the
/// CA itself (so `join` and `renew_certificate` work).
pub fn config(dir: &Path) -> DirsvcConfig {
    DirsvcConfig {
        listen: "127.0.0.1:0".into(),
        db_path: db_path(dir),
        tls: Some(testkit::pki().node(Role::Dirsvc)),
        ca: Some(testkit::pki().ca().clone()),
        ..DirsvcConfig::default()
    }
}

/// A peer of the test CA with its own connection to dirsvc: what a peerd
/// is to dirsvc, without the chunk service. A peer may only register and
/// heartbeat as itself, so every test peer needs one.
pub struct TestPeer {
    /// Its id (its certificate's node id).
    pub id: PeerId,
    /// Its `DirService` client.
    pub c: DirServiceClient,
}

impl TestPeer {
    /// A fresh peer identity connected to the dirsvc at `addr`
    /// (not registered).
    pub async fn connect(addr: &str) -> TestPeer {
        let (id, tls) = testkit::pki().peer();
        let c = testkit::dir_client(addr, &tls).await;
        TestPeer { id, c }
    }

    /// Its registration at `addr` with `usage` and no labels.
    pub fn registration(&self, addr: &str, usage: PeerUsage) -> PeerRegistration {
        PeerRegistration { id: self.id, addr: addr.into(), usage, labels: PeerLabels::default() }
    }
}

/// Volume settings used by the tests.
pub fn volume(replicas: u32) -> VolumeInfo {
    VolumeInfo { id: VolumeId([5; 16]), block_size: B, replicas, keyring: keyring(), legacy_layouts: false }
}

/// The keyring of a new test volume: epoch 0 (opaque to dirsvc) and one
/// member.
pub fn keyring() -> Keyring {
    Keyring {
        version: 1,
        epochs: vec![KeyEpoch {
            epoch: 0,
            wrapped: b"age-wrapped-secret".to_vec(),
            check: [1; 32],
            link: [0; 32],
        }],
        members: vec![Member { name: "owner".into(), recipient: "age1testrecipient".into(), nodes: vec![] }],
    }
}

/// A store in `dir` with an initialized volume (R = 2, root owned by
/// 1000:1000).
pub fn new_store(dir: &Path) -> Store {
    let s = Store::open(&db_path(dir)).unwrap();
    s.init_volume(&volume(2), 1000, 1000).unwrap();
    s
}

/// A name as the store sees it (the tests do not seal names: dirsvc treats
/// them as opaque bytes either way).
pub fn n(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// What `create` makes for a regular file.
pub fn file() -> NewInode {
    NewInode { kind: FileKind::File, perm: 0o644, uid: 1000, gid: 1000, rdev: 0 }
}

/// Creates a regular file and returns its inode.
pub fn mkfile(s: &Store, parent: InodeId, name: &str) -> InodeId {
    s.create(parent, &n(name), &file()).unwrap().ino
}

/// Creates a directory and returns its inode.
pub fn mkdir(s: &Store, parent: InodeId, name: &str) -> InodeId {
    s.mkdir(parent, &n(name), 0o755, 1000, 1000).unwrap().ino
}

/// Registers peer number `k` directly in the store.
pub fn peer(s: &Store, k: u8) -> PeerId {
    let id = PeerId([k; 16]);
    let addr = format!("127.0.0.1:{}", 9000 + u16::from(k));
    s.put_peer(id, &PeerRecord::new(addr, PeerUsage::default(), Timestamp::now(), PeerLabels::default()))
        .unwrap();
    id
}

/// A MAC for test layout entries (dirsvc only checks that there is one).
pub const MAC: [u8; 32] = [0x4d; 32];

/// A stored chunk with id derived from `k`.
pub fn chunk(k: u8, len: u32, replicas: &[PeerId]) -> StoredChunk {
    StoredChunk { id: ChunkId::of(&[k]), len, replicas: replicas.to_vec(), epoch: 0, mac: MAC, inline: None }
}

/// The domain error of a failed store call; panics on success or on an
/// internal error.
pub fn err<T: std::fmt::Debug>(r: Result<T, dirsvc::Error>) -> DirError {
    match r {
        Err(dirsvc::Error::Dir(d)) => d,
        other => panic!("expected a domain error, got {other:?}"),
    }
}

/// The reference count of chunk `k` (None if the index does not know it).
pub fn refcount(s: &Store, k: u8) -> Option<u64> {
    s.chunk(&ChunkId::of(&[k])).unwrap().map(|c| c.refcount)
}

/// Whether chunk `k` is listed as unreferenced.
pub fn unreferenced(s: &Store, k: u8) -> bool {
    let id = ChunkId::of(&[k]);
    s.unreferenced_chunks().unwrap().iter().any(|(c, _)| *c == id)
}
