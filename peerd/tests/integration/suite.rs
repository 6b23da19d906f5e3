//! One store contract suite, run against `FsChunkStore` directly and against
//! a running peerd through real mutual-TLS `PeerServiceClient`s (a client's
//! for the chunk calls, dirsvc's for `delete` and `usage`, which only it
//! may call): both must give the same answers, with the same `PeerError`s.

use super::util::{chunk, closed_port, connect, peer_config, spawn_peer, TEST_TIMEOUT};
use common::codec::{MAX_STORED, OVERHEAD};
use common::config::CHUNK_DEADLINE;
use common::rpc::dir::PeerUsage;
use common::rpc::peer::{Bytes, PeerError, PeerServiceClient};
use common::rpc::Role;
use common::transport::deadline;
use common::ChunkId;
use peerd::{ChunkStore, FsChunkStore, StoreConfig};
use testkit::within;

/// The operations under test, with wire errors.
trait Target {
    async fn store(&self, id: ChunkId, bytes: Vec<u8>) -> Result<(), PeerError>;
    async fn fetch(&self, id: ChunkId) -> Result<Vec<u8>, PeerError>;
    async fn fetch_range(&self, id: ChunkId, offset: u64, len: u32) -> Result<Vec<u8>, PeerError>;
    async fn holds(&self, ids: Vec<ChunkId>) -> Result<Vec<bool>, PeerError>;
    async fn remove(&self, id: ChunkId) -> Result<(), PeerError>;
    async fn usage_now(&self) -> Result<PeerUsage, PeerError>;
}

impl Target for FsChunkStore {
    async fn store(&self, id: ChunkId, bytes: Vec<u8>) -> Result<(), PeerError> {
        self.put(id, bytes.into()).await.map_err(PeerError::from)
    }
    async fn fetch(&self, id: ChunkId) -> Result<Vec<u8>, PeerError> {
        self.get(id).await.map_err(PeerError::from)
    }
    async fn fetch_range(&self, id: ChunkId, offset: u64, len: u32) -> Result<Vec<u8>, PeerError> {
        self.get_range(id, offset, len).await.map_err(PeerError::from)
    }
    async fn holds(&self, ids: Vec<ChunkId>) -> Result<Vec<bool>, PeerError> {
        self.has(ids).await.map_err(PeerError::from)
    }
    async fn remove(&self, id: ChunkId) -> Result<(), PeerError> {
        self.delete(id).await.map_err(PeerError::from)
    }
    async fn usage_now(&self) -> Result<PeerUsage, PeerError> {
        self.usage().await.map_err(PeerError::from)
    }
}

/// A running peer as its callers see it: a client stores and reads, dirsvc
/// deletes and asks for usage.
struct Remote {
    client: PeerServiceClient,
    dirsvc: PeerServiceClient,
}

impl Remote {
    async fn of(peer: &peerd::PeerdHandle) -> Remote {
        Remote { client: connect(peer, Role::Client).await, dirsvc: connect(peer, Role::Dirsvc).await }
    }
}

impl Target for Remote {
    async fn store(&self, id: ChunkId, bytes: Vec<u8>) -> Result<(), PeerError> {
        self.client.put(deadline(CHUNK_DEADLINE), id, Bytes::from(bytes)).await.expect("rpc")
    }
    async fn fetch(&self, id: ChunkId) -> Result<Vec<u8>, PeerError> {
        self.client.get(deadline(CHUNK_DEADLINE), id).await.expect("rpc").map(Bytes::into_vec)
    }
    async fn fetch_range(&self, id: ChunkId, offset: u64, len: u32) -> Result<Vec<u8>, PeerError> {
        let r = self.client.get_range(deadline(CHUNK_DEADLINE), id, offset, len).await;
        r.expect("rpc").map(Bytes::into_vec)
    }
    async fn holds(&self, ids: Vec<ChunkId>) -> Result<Vec<bool>, PeerError> {
        self.client.has(deadline(CHUNK_DEADLINE), ids).await.expect("rpc")
    }
    async fn remove(&self, id: ChunkId) -> Result<(), PeerError> {
        self.dirsvc.delete(deadline(CHUNK_DEADLINE), id).await.expect("rpc")
    }
    async fn usage_now(&self) -> Result<PeerUsage, PeerError> {
        self.dirsvc.usage(deadline(CHUNK_DEADLINE)).await.expect("rpc")
    }
}

/// The largest chunk a peer accepts: the largest v3 chunk.
const MAX_CHUNK: usize = MAX_STORED;

/// Runs the contract against an empty store.
async fn run_suite<T: Target>(t: &T) {
    let u = t.usage_now().await.unwrap();
    assert_eq!((u.used_bytes, u.chunks), (0, 0), "store starts empty");
    assert!(u.capacity_bytes > 0 && u.free_bytes > 0 && u.free_bytes <= u.capacity_bytes);
    let (mut used, mut count) = (0u64, 0u64);

    // Round trips at boundary sizes, including the largest chunk allowed.
    let mut stored = Vec::new();
    for (i, len) in [0, 1, OVERHEAD, 4096, (1 << 20) + OVERHEAD, MAX_CHUNK].into_iter().enumerate() {
        let (id, bytes) = chunk(len, i as u64);
        t.store(id, bytes.clone()).await.unwrap();
        assert_eq!(t.fetch(id).await.unwrap(), bytes, "len {len}");
        used += len as u64;
        count += 1;
        stored.push((id, bytes));
    }

    // Wrong id: refused as a hash mismatch on the claimed id, nothing stored.
    let (real_id, bytes) = chunk(1000, 100);
    let (wrong_id, _) = chunk(1000, 101);
    assert_eq!(t.store(wrong_id, bytes.clone()).await, Err(PeerError::HashMismatch(wrong_id)));
    assert_eq!(t.holds(vec![wrong_id, real_id]).await.unwrap(), [false, false]);
    assert_eq!(t.fetch(wrong_id).await, Err(PeerError::NotFound(wrong_id)));

    // Idempotent put: twice is fine and counts once.
    t.store(real_id, bytes.clone()).await.unwrap();
    t.store(real_id, bytes.clone()).await.unwrap();
    used += 1000;
    count += 1;
    let u = t.usage_now().await.unwrap();
    assert_eq!((u.used_bytes, u.chunks), (used, count));

    // Missing chunk.
    let (missing, _) = chunk(10, 200);
    assert_eq!(t.fetch(missing).await, Err(PeerError::NotFound(missing)));
    assert_eq!(t.fetch_range(missing, 0, 1).await, Err(PeerError::NotFound(missing)));

    // Ranges: middle, clamped at the end, empty at the end, past the end.
    assert_eq!(t.fetch_range(real_id, 100, 200).await.unwrap(), &bytes[100..300]);
    assert_eq!(t.fetch_range(real_id, 900, 500).await.unwrap(), &bytes[900..]);
    assert_eq!(t.fetch_range(real_id, 0, u32::MAX).await.unwrap(), bytes);
    assert!(t.fetch_range(real_id, 1000, 10).await.unwrap().is_empty());
    assert!(matches!(t.fetch_range(real_id, 1001, 1).await, Err(PeerError::Invalid(_))));
    assert!(matches!(t.fetch_range(real_id, u64::MAX, u32::MAX).await, Err(PeerError::Invalid(_))));

    // has, in order.
    assert_eq!(t.holds(vec![stored[0].0, missing, real_id]).await.unwrap(), [true, false, true]);
    assert!(t.holds(vec![]).await.unwrap().is_empty());

    // Oversize chunk (with its correct id) is refused and not stored.
    let (big_id, big) = chunk(MAX_CHUNK + 1, 300);
    assert!(matches!(t.store(big_id, big).await, Err(PeerError::Invalid(_))));
    assert_eq!(t.holds(vec![big_id]).await.unwrap(), [false]);

    // Delete, then delete again; usage follows.
    let (del_id, del_bytes) = stored.pop().unwrap();
    t.remove(del_id).await.unwrap();
    used -= del_bytes.len() as u64;
    count -= 1;
    assert_eq!(t.fetch(del_id).await, Err(PeerError::NotFound(del_id)));
    assert_eq!(t.holds(vec![del_id]).await.unwrap(), [false]);
    t.remove(del_id).await.unwrap();
    t.remove(missing).await.unwrap();

    // Final counts are exact; every remaining chunk still reads back.
    let u = t.usage_now().await.unwrap();
    assert_eq!((u.used_bytes, u.chunks), (used, count));
    for (id, bytes) in &stored {
        assert_eq!(&t.fetch(*id).await.unwrap(), bytes);
    }
}

#[tokio::test]
async fn store_contract_holds_for_fs_chunk_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsChunkStore::open(StoreConfig { data_dir: dir.path().to_path_buf(), capacity_bytes: None })
        .await
        .unwrap();
    within(TEST_TIMEOUT, "the test", run_suite(&store)).await;
}

#[tokio::test]
async fn store_contract_holds_over_tcp() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tempfile::tempdir().unwrap();
        let peer = spawn_peer(dir.path(), &closed_port()).await;
        run_suite(&Remote::of(&peer).await).await;
        peer.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn configured_capacity_is_reported_and_enforced_over_tcp() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tempfile::tempdir().unwrap();
        let peer = peerd::spawn(peerd::PeerdConfig {
            capacity_bytes: Some(10_000),
            ..peer_config(dir.path(), &closed_port())
        })
        .await
        .unwrap();
        let client = Remote::of(&peer).await;
        let (a, abytes) = chunk(6_000, 1);
        let (b, bbytes) = chunk(6_000, 2);
        client.store(a, abytes).await.unwrap();
        assert_eq!(client.store(b, bbytes).await, Err(PeerError::NoSpace));
        let u = client.usage_now().await.unwrap();
        assert_eq!((u.capacity_bytes, u.free_bytes, u.used_bytes, u.chunks), (10_000, 4_000, 6_000, 1));
        peer.shutdown().await;
    })
    .await;
}
