//! A chunk file altered on disk is detected on read, moved to `corrupted/`
//! and never served again; a later put of the good bytes repairs it.

use super::util::{chunk, closed_port, connect, flip_byte, spawn_peer, TEST_TIMEOUT};
use common::config::CHUNK_DEADLINE;
use common::rpc::peer::{Bytes, PeerError};
use common::rpc::Role;
use common::transport::deadline;
use peerd::{ChunkStore, Error, FsChunkStore, StoreConfig};
use std::fs;
use std::path::Path;
use testkit::within;

async fn open(dir: &Path) -> FsChunkStore {
    FsChunkStore::open(StoreConfig { data_dir: dir.to_path_buf(), capacity_bytes: None }).await.unwrap()
}

fn corrupted_files(store: &FsChunkStore) -> Vec<String> {
    fs::read_dir(store.corrupted_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[tokio::test]
async fn flipped_byte_is_detected_moved_aside_then_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let (id, bytes) = chunk(5000, 1);
    let (other, other_bytes) = chunk(100, 2);
    store.put(id, bytes.clone().into()).await.unwrap();
    store.put(other, other_bytes.into()).await.unwrap();
    let path = store.chunk_path(&id);
    flip_byte(&path, 1234);

    assert!(matches!(
        store.get(id).await,
        Err(Error::HashMismatch { expected, .. }) if expected == id
    ));
    assert!(!path.exists(), "corrupt file no longer under data/");
    let moved = corrupted_files(&store);
    assert_eq!(moved.len(), 1);
    assert!(moved[0].starts_with(&format!("{}.", id.to_hex())), "{moved:?}");
    let mut expected = bytes.clone();
    expected[1234] ^= 0x40;
    assert_eq!(
        fs::read(store.corrupted_dir().join(&moved[0])).unwrap(),
        expected,
        "the bad copy is kept as it was for inspection"
    );

    assert_eq!(store.corrupt_queue().pending(), [id], "queued for a report to dirsvc");
    assert!(matches!(store.get(id).await, Err(Error::NotFound(_))));
    assert_eq!(store.has(vec![id]).await.unwrap(), [false]);
    let u = store.usage().await.unwrap();
    assert_eq!((u.chunks, u.used_bytes), (1, 100), "usage forgets the bad copy");

    // A fresh put of the good bytes brings it back, and the report that
    // was not sent yet is withdrawn: this replica is good again.
    store.put(id, bytes.clone().into()).await.unwrap();
    assert_eq!(store.get(id).await.unwrap(), bytes);
    assert!(store.corrupt_queue().is_empty());
}

#[tokio::test]
async fn truncated_file_fails_range_reads_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let (id, bytes) = chunk(4096, 3);
    store.put(id, bytes.into()).await.unwrap();
    let path = store.chunk_path(&id);
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(10).unwrap();
    assert!(matches!(store.get_range(id, 0, 5).await, Err(Error::HashMismatch { .. })));
    assert!(!path.exists());
    assert!(matches!(store.get_range(id, 0, 5).await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn put_over_a_corrupt_copy_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let (id, bytes) = chunk(3000, 4);
    store.put(id, bytes.clone().into()).await.unwrap();
    flip_byte(&store.chunk_path(&id), 0);
    // The put must not trust the existing file just because it exists.
    store.put(id, bytes.clone().into()).await.unwrap();
    assert_eq!(fs::read(store.chunk_path(&id)).unwrap(), bytes);
    assert_eq!(corrupted_files(&store).len(), 1);
    let u = store.usage().await.unwrap();
    assert_eq!((u.chunks, u.used_bytes), (1, 3000));
}

#[tokio::test]
async fn corrupt_chunk_is_reported_over_tcp_as_hash_mismatch() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tempfile::tempdir().unwrap();
        let peer = spawn_peer(dir.path(), &closed_port()).await;
        let client = connect(&peer, Role::Client).await;
        let (id, bytes) = chunk(2000, 5);
        client.put(deadline(CHUNK_DEADLINE), id, Bytes::from(bytes)).await.unwrap().unwrap();
        let hex = id.to_hex();
        flip_byte(&dir.path().join("data").join(&hex[..2]).join(&hex), 7);
        assert_eq!(client.get(deadline(CHUNK_DEADLINE), id).await.unwrap(), Err(PeerError::HashMismatch(id)));
        assert_eq!(client.get(deadline(CHUNK_DEADLINE), id).await.unwrap(), Err(PeerError::NotFound(id)));
        peer.shutdown().await;
    })
    .await;
}
