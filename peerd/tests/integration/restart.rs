//! Closing and reopening a store keeps every chunk and the exact usage, and
//! removes temp files a crash left behind.

use super::util::chunk;
use peerd::fsutil::TEMP_PREFIX;
use peerd::{ChunkStore, FsChunkStore, StoreConfig};
use std::fs;
use std::path::Path;

async fn open(dir: &Path) -> FsChunkStore {
    FsChunkStore::open(StoreConfig { data_dir: dir.to_path_buf(), capacity_bytes: None }).await.unwrap()
}

#[tokio::test]
async fn reopen_keeps_chunks_and_usage_and_cleans_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let chunks: Vec<_> = (0..20).map(|i| chunk(100 + i * 997, i as u64)).collect();
    for (id, bytes) in &chunks {
        store.put(*id, bytes.clone().into()).await.unwrap();
    }
    let (gone, _) = chunks[3].clone();
    store.delete(gone).await.unwrap();
    let before = store.usage().await.unwrap();
    let shard = store.chunk_path(&chunks[0].0).parent().unwrap().to_path_buf();
    drop(store);

    // What a crash mid-put (or mid peer-id write) leaves behind.
    let stray = [
        shard.join(format!("{TEMP_PREFIX}{}.1.2.abcd", chunks[0].0.to_hex())),
        dir.path().join("data/7f").join(format!("{TEMP_PREFIX}partial")),
        dir.path().join(format!("{TEMP_PREFIX}peer-id.9.9.0")),
    ];
    for p in &stray {
        fs::write(p, b"half-written").unwrap();
    }

    let store = open(dir.path()).await;
    for p in &stray {
        assert!(!p.exists(), "{} not cleaned", p.display());
    }
    let after = store.usage().await.unwrap();
    assert_eq!((after.used_bytes, after.chunks), (before.used_bytes, before.chunks));
    assert_eq!(after.chunks, 19);
    for (id, bytes) in &chunks {
        if *id == gone {
            assert!(store.get(*id).await.is_err());
        } else {
            assert_eq!(&store.get(*id).await.unwrap(), bytes);
        }
    }
}
