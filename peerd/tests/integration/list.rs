//! `list_chunks` pages through exactly the held chunks in ascending id order,
//! strictly after the cursor, with sane mtimes, capped at 10,000 per page,
//! ignoring files that are not chunks.

use super::util::{chunk, chunk_file, closed_port, connect, spawn_peer, write_chunk_files, TEST_TIMEOUT};
use common::config::CHUNK_DEADLINE;
use common::rpc::peer::PeerServiceClient;
use common::rpc::Role;
use common::transport::deadline;
use common::ChunkId;
use peerd::store::LIST_CHUNKS_MAX;
use peerd::{ChunkStore, FsChunkStore, StoreConfig};
use std::time::{SystemTime, UNIX_EPOCH};
use testkit::within;

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn list(c: &PeerServiceClient, after: Option<ChunkId>, limit: u32) -> Vec<(ChunkId, i64)> {
    c.list_chunks(deadline(CHUNK_DEADLINE), after, limit).await.expect("rpc").unwrap()
}

#[tokio::test]
async fn list_chunks_pages_through_every_chunk_in_ascending_order() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tempfile::tempdir().unwrap();
        let before = unix_now();
        let chunks: Vec<_> = (0..1000).map(|i| chunk(32 + (i % 200), i as u64)).collect();
        write_chunk_files(dir.path(), &chunks);
        let after_writing = unix_now();
        let peer = spawn_peer(dir.path(), &closed_port()).await;
        // dirsvc is who lists and deletes.
        let client = connect(&peer, Role::Dirsvc).await;

        let mut expected: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
        expected.sort();
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = list(&client, cursor, 77).await;
            if page.is_empty() {
                break;
            }
            pages += 1;
            assert!(page.len() <= 77);
            if page.len() < 77 {
                assert_eq!(seen.len() + page.len(), 1000, "only the last page is short");
            }
            for (id, mtime) in &page {
                assert!(cursor.is_none_or(|c| *id > c), "strictly after the cursor, ascending");
                assert!((before - 2..=after_writing + 2).contains(mtime), "mtime {mtime} not when stored");
                cursor = Some(*id);
                seen.push(*id);
            }
        }
        assert_eq!(pages, 1000usize.div_ceil(77));
        assert_eq!(seen, expected, "every chunk exactly once, in order");

        // The cursor is exclusive, whether or not it names a held chunk.
        let mid = expected[500];
        assert_eq!(
            list(&client, Some(mid), 3).await.iter().map(|e| e.0).collect::<Vec<_>>(),
            expected[501..504]
        );
        let k = (500..999).find(|&k| expected[k].0[31] < 0xff).unwrap();
        let mut between = expected[k];
        between.0[31] += 1; // not held: ids are sparse
        assert!(between > expected[k] && between < expected[k + 1]);
        assert_eq!(list(&client, Some(between), 1).await[0].0, expected[k + 1]);
        // Across a shard boundary: the last id of one shard, then the next.
        let i = expected.windows(2).position(|w| w[0].0[0] != w[1].0[0]).unwrap();
        assert_eq!(list(&client, Some(expected[i]), 1).await[0].0, expected[i + 1]);
        // Past the end, and an empty limit.
        assert!(list(&client, Some(ChunkId([0xff; 32])), 10).await.is_empty());
        assert!(list(&client, Some(*expected.last().unwrap()), 10).await.is_empty());
        assert!(list(&client, None, 0).await.is_empty());

        // A deleted chunk disappears from the listing.
        client.delete(deadline(CHUNK_DEADLINE), expected[0]).await.unwrap().unwrap();
        assert_eq!(list(&client, None, 1).await[0].0, expected[1]);
        peer.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_page_holds_at_most_ten_thousand_chunks_and_no_stray_files() {
    let dir = tempfile::tempdir().unwrap();
    let n = LIST_CHUNKS_MAX as usize + 50;
    let chunks: Vec<_> = (0..n).map(|i| chunk(8, i as u64)).collect();
    write_chunk_files(dir.path(), &chunks);
    // Files that are not chunks: a temp file, an upper-case name, a name in
    // the wrong shard, a directory with a chunk-like name.
    let (odd, _) = chunk(9, 1_000_000);
    let shard = chunk_file(dir.path(), &odd).parent().unwrap().to_path_buf();
    std::fs::write(shard.join(".tmp-xyz"), b"x").unwrap();
    std::fs::write(shard.join(odd.to_hex().to_uppercase()), b"x").unwrap();
    let mut wrong = odd.to_hex();
    wrong.replace_range(..2, if &wrong[..2] == "00" { "01" } else { "00" });
    std::fs::write(shard.join(&wrong), b"x").unwrap();
    std::fs::create_dir(shard.join(odd.to_hex())).unwrap();

    let store = FsChunkStore::open(StoreConfig { data_dir: dir.path().to_path_buf(), capacity_bytes: None })
        .await
        .unwrap();
    let first = store.list_chunks(None, u32::MAX).await.unwrap();
    assert_eq!(first.len(), LIST_CHUNKS_MAX as usize);
    let rest = store.list_chunks(Some(first.last().unwrap().0), u32::MAX).await.unwrap();
    assert_eq!(rest.len(), 50);
    let mut all: Vec<ChunkId> = first.iter().chain(&rest).map(|e| e.0).collect();
    let mut expected: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    expected.sort();
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    all.dedup();
    assert_eq!(all, expected, "only the chunks, each once");
}
