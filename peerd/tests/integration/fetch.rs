//! `fetch_from` between real peers (asked by dirsvc, the only role that
//! may): a verified, durable copy; no contact with the source when a good
//! copy is already held; `SourceFailed` and nothing stored when the source
//! is unreachable, lacks the chunk, holds a corrupt copy or sends bytes
//! that do not verify; a pooled connection that died with its source is
//! replaced.

use super::util::{
    chunk, chunk_file, closed_port, connect, file_names, flip_byte, peer_config, spawn_peer, TEST_TIMEOUT,
};
use common::config::CHUNK_DEADLINE;
use common::rpc::dir::PeerUsage;
use common::rpc::peer::{Bytes, PeerError, PeerService, PeerServiceClient};
use common::rpc::{PeerLoc, Role};
use common::transport::{deadline, Connections, ServerLimits};
use common::{ChunkId, PeerId};
use peerd::PeerdHandle;
use std::path::Path;
use std::time::{Duration, Instant};
use tarpc::context::Context;
use tempfile::TempDir;
use testkit::within;

/// Two peers (no dirsvc), a client of each, and dirsvc's connection to
/// the destination (which orders the copies).
struct Pair {
    src_dir: TempDir,
    dst_dir: TempDir,
    src: PeerdHandle,
    dst: PeerdHandle,
    src_client: PeerServiceClient,
    dst_client: PeerServiceClient,
    /// dst as dirsvc sees it: `fetch_from` and `usage`.
    dst_dirsvc: PeerServiceClient,
}

async fn pair() -> Pair {
    let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dirsvc = closed_port();
    let src = spawn_peer(src_dir.path(), &dirsvc).await;
    let dst = spawn_peer(dst_dir.path(), &dirsvc).await;
    let src_client = connect(&src, Role::Client).await;
    let dst_client = connect(&dst, Role::Client).await;
    let dst_dirsvc = connect(&dst, Role::Dirsvc).await;
    Pair { src_dir, dst_dir, src, dst, src_client, dst_client, dst_dirsvc }
}

/// Where dirsvc says the peer `p` is.
fn loc(p: &PeerdHandle) -> PeerLoc {
    PeerLoc { id: p.id, addr: p.addr.to_string(), live: true }
}

/// A source at `addr` with a random peer id.
fn somewhere(addr: &str) -> PeerLoc {
    PeerLoc { id: PeerId::random(), addr: addr.into(), live: true }
}

async fn put(c: &PeerServiceClient, id: ChunkId, bytes: &[u8]) {
    c.put(deadline(CHUNK_DEADLINE), id, Bytes::from(bytes.to_vec())).await.unwrap().unwrap();
}

/// `fetch_from` as dirsvc asks it (`dirsvc` is a dirsvc connection).
async fn fetch(dirsvc: &PeerServiceClient, id: ChunkId, source: &PeerLoc) -> Result<(), PeerError> {
    dirsvc.fetch_from(deadline(CHUNK_DEADLINE), id, source.clone()).await.expect("rpc")
}

/// `usage` as dirsvc asks it.
async fn usage(dirsvc: &PeerServiceClient) -> PeerUsage {
    dirsvc.usage(deadline(CHUNK_DEADLINE)).await.unwrap().unwrap()
}

/// Asserts the peer over `data_dir` holds nothing and left no temp file
/// (`c`: a client of it, `dirsvc`: dirsvc's connection to it).
async fn assert_nothing_stored(
    c: &PeerServiceClient,
    dirsvc: &PeerServiceClient,
    data_dir: &Path,
    id: ChunkId,
) {
    assert_eq!(c.has(deadline(CHUNK_DEADLINE), vec![id]).await.unwrap().unwrap(), [false]);
    let shard = chunk_file(data_dir, &id).parent().unwrap().to_path_buf();
    assert!(file_names(&shard).is_empty(), "files left in {}", shard.display());
    let u = usage(dirsvc).await;
    assert_eq!((u.chunks, u.used_bytes), (0, 0));
}

#[tokio::test]
async fn fetch_from_copies_a_verified_chunk_durably_and_then_needs_no_source() {
    within(TEST_TIMEOUT, "the test", async {
        let p = pair().await;
        let (id, bytes) = chunk((1 << 20) + 48, 1);
        put(&p.src_client, id, &bytes).await;
        let src = loc(&p.src);

        fetch(&p.dst_dirsvc, id, &src).await.unwrap();
        assert_eq!(std::fs::read(chunk_file(p.dst_dir.path(), &id)).unwrap(), bytes, "stored under its id");
        let back = p.dst_client.get(deadline(CHUNK_DEADLINE), id).await.unwrap().unwrap();
        assert_eq!(back.into_vec(), bytes);
        let u = usage(&p.dst_dirsvc).await;
        assert_eq!((u.chunks, u.used_bytes), (1, bytes.len() as u64));

        // Held already: succeeds without the source, which is now gone.
        p.src.shutdown().await;
        fetch(&p.dst_dirsvc, id, &src).await.unwrap();
        assert_eq!(usage(&p.dst_dirsvc).await.chunks, 1, "counted once");
        // A chunk it does not hold needs the source, which is gone.
        let (other, _) = chunk(100, 2);
        assert!(matches!(fetch(&p.dst_dirsvc, other, &src).await, Err(PeerError::SourceFailed(_))));
        p.dst.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn unreachable_missing_or_corrupt_source_is_source_failed_and_stores_nothing() {
    within(TEST_TIMEOUT, "the test", async {
        let p = pair().await;
        let src = loc(&p.src);

        // Unreachable: nothing listens there.
        let (id, bytes) = chunk(5000, 3);
        let started = Instant::now();
        let r = fetch(&p.dst_dirsvc, id, &somewhere(&closed_port())).await;
        // (The pool's message for a refused connection: "get failed:
        // Connection refused".)
        assert!(matches!(&r, Err(PeerError::SourceFailed(m)) if m.contains("Connection refused")), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "refused connections fail promptly");
        // Not an address at all.
        let r = fetch(&p.dst_dirsvc, id, &somewhere("not an address")).await;
        assert!(matches!(r, Err(PeerError::SourceFailed(_))), "{r:?}");

        // The source does not have it.
        let r = fetch(&p.dst_dirsvc, id, &src).await;
        assert!(matches!(&r, Err(PeerError::SourceFailed(m)) if m.contains("not found")), "{r:?}");

        // The source's copy rotted: it refuses to serve it, the copy fails.
        put(&p.src_client, id, &bytes).await;
        flip_byte(&chunk_file(p.src_dir.path(), &id), 100);
        let r = fetch(&p.dst_dirsvc, id, &src).await;
        assert!(matches!(&r, Err(PeerError::SourceFailed(m)) if m.contains("verification")), "{r:?}");
        assert_nothing_stored(&p.dst_client, &p.dst_dirsvc, p.dst_dir.path(), id).await;
        p.src.shutdown().await;
        p.dst.shutdown().await;
    })
    .await;
}

/// A source peer that answers every `get` with the same (wrong) bytes.
#[derive(Clone)]
struct LyingPeer {
    bytes: Vec<u8>,
}

fn unsupported<T>() -> Result<T, PeerError> {
    Err(PeerError::Internal("not in the test double".into()))
}

impl PeerService for LyingPeer {
    async fn put(self, _: Context, _: ChunkId, _: Bytes) -> Result<(), PeerError> {
        unsupported()
    }
    async fn get(self, _: Context, _: ChunkId) -> Result<Bytes, PeerError> {
        Ok(Bytes::from(self.bytes))
    }
    async fn get_range(self, _: Context, _: ChunkId, _: u64, _: u32) -> Result<Bytes, PeerError> {
        unsupported()
    }
    async fn has(self, _: Context, _: Vec<ChunkId>) -> Result<Vec<bool>, PeerError> {
        unsupported()
    }
    async fn delete(self, _: Context, _: ChunkId) -> Result<(), PeerError> {
        unsupported()
    }
    async fn usage(self, _: Context) -> Result<PeerUsage, PeerError> {
        unsupported()
    }
    async fn fetch_from(self, _: Context, _: ChunkId, _: PeerLoc) -> Result<(), PeerError> {
        unsupported()
    }
    async fn list_chunks(
        self,
        _: Context,
        _: Option<ChunkId>,
        _: u32,
    ) -> Result<Vec<(ChunkId, i64)>, PeerError> {
        unsupported()
    }

    async fn get_segment(
        self,
        _: Context,
        _: ChunkId,
        _: u32,
    ) -> Result<common::rpc::peer::Bytes, PeerError> {
        unsupported()
    }
}

#[tokio::test]
async fn bytes_that_do_not_hash_to_the_id_are_refused_and_not_stored() {
    within(TEST_TIMEOUT, "the test", async {
        // The liar is a peer of the cluster: its certificate is in order,
        // only its bytes are wrong.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let liar_addr = listener.local_addr().unwrap().to_string();
        let (liar_id, liar_tls) = testkit::pki().peer();
        let stop = tokio_util::sync::CancellationToken::new();
        let (_, lie) = chunk(4000, 4);
        let liar = LyingPeer { bytes: lie };
        let serve = tokio::spawn({
            let stop = stop.clone();
            let config = liar_tls.server_config(false).unwrap();
            async move {
                common::serve_tarpc!(
                    listener,
                    config,
                    ServerLimits::default(),
                    std::sync::Arc::new(Connections::default()),
                    stop,
                    move |_caller| liar.clone()
                )
            }
        });

        let dir = tempfile::tempdir().unwrap();
        let dst = spawn_peer(dir.path(), &closed_port()).await;
        let client = connect(&dst, Role::Client).await;
        let dirsvc = connect(&dst, Role::Dirsvc).await;
        let (id, _) = chunk(4000, 5);
        let r = fetch(&dirsvc, id, &PeerLoc { id: liar_id, addr: liar_addr, live: true }).await;
        assert!(matches!(&r, Err(PeerError::SourceFailed(m)) if m.contains("hash")), "{r:?}");
        assert_nothing_stored(&client, &dirsvc, dir.path(), id).await;
        dst.shutdown().await;
        stop.cancel();
        serve.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_local_copy_is_moved_aside_and_replaced_by_the_fetch() {
    within(TEST_TIMEOUT, "the test", async {
        let p = pair().await;
        let (id, bytes) = chunk(70_000, 6);
        put(&p.src_client, id, &bytes).await;
        put(&p.dst_client, id, &bytes).await;
        flip_byte(&chunk_file(p.dst_dir.path(), &id), 5);

        fetch(&p.dst_dirsvc, id, &loc(&p.src)).await.unwrap();
        assert_eq!(std::fs::read(chunk_file(p.dst_dir.path(), &id)).unwrap(), bytes);
        let moved = file_names(&p.dst_dir.path().join("corrupted"));
        assert_eq!(moved.len(), 1);
        assert!(moved[0].starts_with(&id.to_hex()));
        assert!(p.dst.corrupt_reports_pending().is_empty(), "a good copy is held again; nothing to report");
        assert_eq!(usage(&p.dst_dirsvc).await.chunks, 1);
        p.src.shutdown().await;
        p.dst.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_pooled_connection_to_a_restarted_source_is_replaced() {
    within(TEST_TIMEOUT, "the test", async {
        let p = pair().await;
        let src = loc(&p.src);
        let src_addr = src.addr.clone();
        let (a, abytes) = chunk(1000, 7);
        put(&p.src_client, a, &abytes).await;
        fetch(&p.dst_dirsvc, a, &src).await.unwrap();

        // The source restarts on the same address; dst's pooled connection
        // to it is now dead.
        p.src.shutdown().await;
        let mut config = peer_config(p.src_dir.path(), &closed_port());
        config.listen = src_addr.clone();
        let restarted = peerd::spawn(config).await.unwrap();
        assert_eq!(restarted.id, src.id, "the same peer (its identity is in its data directory)");
        let src_client = connect(&restarted, Role::Client).await;
        let (b, bbytes) = chunk(2000, 8);
        put(&src_client, b, &bbytes).await;
        fetch(&p.dst_dirsvc, b, &src).await.unwrap();
        let back = p.dst_client.get(deadline(CHUNK_DEADLINE), b).await.unwrap().unwrap();
        assert_eq!(back.into_vec(), bbytes);
        restarted.shutdown().await;
        p.dst.shutdown().await;
    })
    .await;
}

/// Measures `fetch_from` throughput between two local peers (1 MiB
/// chunks, sequential and 4 in flight; the destination fsyncs each one).
/// Run with `cargo test --release -p p2pfs-peerd -- --ignored --nocapture
/// fetch_from_throughput`.
#[tokio::test]
#[ignore = "measurement, not a check"]
async fn fetch_from_throughput() {
    let p = pair().await;
    let n = 256;
    let chunks: Vec<_> = (0..n).map(|i| chunk((1 << 20) + 48, 1000 + i)).collect();
    let total = (chunks.len() * chunks[0].1.len()) as f64;
    let t = Instant::now();
    for (id, bytes) in &chunks {
        put(&p.src_client, *id, bytes).await;
    }
    let puts = t.elapsed();
    let src = loc(&p.src);

    let t = Instant::now();
    for (id, _) in &chunks[..n as usize / 2] {
        fetch(&p.dst_dirsvc, *id, &src).await.unwrap();
    }
    let seq = t.elapsed();
    let t = Instant::now();
    let rest: Vec<ChunkId> = chunks[n as usize / 2..].iter().map(|(id, _)| *id).collect();
    for group in rest.chunks(4) {
        futures::future::join_all(group.iter().map(|id| fetch(&p.dst_dirsvc, *id, &src))).await;
    }
    let par = t.elapsed();
    println!(
        "fetch_from: sequential {:.0} MB/s, 4 in flight {:.0} MB/s ({} chunks of 1 MiB); \
         for comparison, sequential client puts {:.0} MB/s",
        total / 2.0 / seq.as_secs_f64() / 1e6,
        total / 2.0 / par.as_secs_f64() / 1e6,
        n,
        total / puts.as_secs_f64() / 1e6,
    );
    p.src.shutdown().await;
    p.dst.shutdown().await;
}
