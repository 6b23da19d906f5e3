//! Random reads by segment (issue 10): a random read of a v3 block fetches
//! only the segments it covers, verified against the chunk id and opened
//! alone; a corrupt segment on one replica is skipped for the next; a v2
//! chunk (written before segmented chunks) is read whole.

use super::*;

const MIB: usize = 1 << 20;

/// Chunk files (64 hex digits) under `dir`, with their paths.
fn chunk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(chunk_files(&p));
        } else if e.file_name().len() == 64 {
            out.push(p);
        }
    }
    out
}

/// A 4 KiB read at `offset` through a fresh handle (not sequential unless
/// at 0).
async fn read_at(fs: &Arc<Fs>, ino: InodeId, offset: u64, len: u32) -> Vec<u8> {
    let fh = fs.open(ino, false).await.unwrap();
    let r = fs.read(fh, offset, len).await.unwrap();
    fs.release(fh).await.unwrap();
    r
}

fn the_chunk(c: &Cluster, peer: usize) -> (ChunkId, std::path::PathBuf) {
    let files = chunk_files(&c._dir.path().join(format!("peer{peer}")));
    assert_eq!(files.len(), 1, "one chunk on peer {peer}");
    let p = files[0].clone();
    (p.file_name().unwrap().to_str().unwrap().parse().unwrap(), p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_read_of_a_v3_block_fetches_only_its_segments() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, MIB as u32).await;
        let writer = c.client().await;
        let data = pattern(MIB - 100, 5);
        let ino = write_file(&writer, b"f", &data, 256 << 10).await;
        let (id, _) = the_chunk(&c, 0);
        let fs = c.client().await;
        // Across a segment boundary: segments 1 and 2.
        let off = 2 * 65536 - 1000;
        assert_eq!(read_at(&fs, ino, off as u64, 4096).await, &data[off..off + 4096]);
        assert!(fs.cache.get(&id).is_none(), "the block was not fetched whole");
        assert!(fs.segments.get(&id, 1).is_some() && fs.segments.get(&id, 2).is_some());
        assert!(fs.segments.get(&id, 0).is_none() && fs.segments.get(&id, 3).is_none());
        // The end of the block, and past its plaintext (the file's end).
        let off = MIB - 100 - 50;
        assert_eq!(read_at(&fs, ino, off as u64, 4096).await, &data[off..]);
        // A sequential reader still reads whole blocks and gets the same.
        assert_eq!(read_all(&fs, ino).await, data);
        assert!(fs.cache.get(&id).is_some());
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_segment_on_the_first_replica_is_skipped_for_the_next() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(2, 2, MIB as u32).await;
        let writer = c.client().await;
        let data = pattern(MIB, 6);
        let ino = write_file(&writer, b"f", &data, 256 << 10).await;
        let fs = c.client().await;
        let fh = fs.open(ino, false).await.unwrap();
        let loc = fs.file(ino).unwrap().state.lock().await.buf.layout().next().unwrap().1.loc.clone();
        let first = c.peers.iter().position(|p| p.as_ref().unwrap().id == loc.replicas[0].id).unwrap();
        let (id, path) = the_chunk(&c, first);
        assert_eq!(id, loc.chunk);
        let mut b = std::fs::read(&path).unwrap();
        let layout = codec::SegmentLayout::from_stored_len(b.len() as u64, codec::SEGMENT_SIZE).unwrap();
        b[layout.segment_range(5).unwrap().start as usize + 100] ^= 0x10;
        std::fs::write(&path, &b).unwrap();
        let off = 5 * 65536 + 10;
        assert_eq!(fs.read(fh, off as u64, 4096).await.unwrap(), &data[off..off + 4096]);
        assert!(fs.cache.get(&id).is_none(), "served by segment from the second replica");
        assert!(fs.segments.get(&id, 5).is_some());
        // The first replica found its copy corrupt and moved it aside.
        assert!(!path.exists());
        fs.release(fh).await.unwrap();
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_chunk_is_read_whole() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, MIB as u32).await;
        let writer = c.client().await;
        writer.seal_v2.store(true, std::sync::atomic::Ordering::Relaxed);
        let data = pattern(MIB, 7);
        let ino = write_file(&writer, b"f", &data, 256 << 10).await;
        let (id, p) = the_chunk(&c, 0);
        assert_eq!(codec::header(&std::fs::read(p).unwrap()).unwrap().version, codec::VERSION);
        let fs = c.client().await;
        let off = 300_000;
        assert_eq!(read_at(&fs, ino, off as u64, 4096).await, &data[off..off + 4096]);
        assert!(fs.cache.get(&id).is_some(), "fetched whole");
        c.stop().await;
    })
    .await
}
