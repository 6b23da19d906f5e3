//! Tests of the filesystem core against real dirsvc and peerd servers on
//! loopback (in-process library servers), without FUSE.

use super::*;
use crate::identity;
use crate::volume;
use std::time::Duration;

struct Cluster {
    _dir: tempfile::TempDir,
    dirsvc: Option<dirsvc::DirsvcHandle>,
    peers: Vec<Option<peerd::PeerdHandle>>,
    addr: String,
    id: identity::IdentityFile,
}

impl Cluster {
    async fn start(peers: usize, replicas: u32, block_size: u32) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let d = dirsvc::spawn(dirsvc::DirsvcConfig {
            listen: "127.0.0.1:0".into(),
            db_path: dir.path().join("dir.redb"),
            ..Default::default()
        })
        .await
        .unwrap();
        let addr = d.addr.to_string();
        let mut ps = Vec::new();
        for i in 0..peers {
            ps.push(Some(
                peerd::spawn(peerd::PeerdConfig {
                    listen: "127.0.0.1:0".into(),
                    data_dir: dir.path().join(format!("peer{i}")),
                    dirsvc: addr.clone(),
                    heartbeat_interval: Duration::from_millis(200),
                    ..Default::default()
                })
                .await
                .unwrap(),
            ));
        }
        let client = DirClient::connect(&addr).await.unwrap();
        for _ in 0..100 {
            let live = client.call(|c, ctx| async move { c.list_peers(ctx).await }).await.unwrap();
            if live.iter().filter(|p| p.loc.live).count() == peers {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        identity::keygen(&dir.path().join("id.txt")).unwrap();
        let id = identity::load(&dir.path().join("id.txt")).unwrap();
        volume::init(&client, &id, block_size, replicas).await.unwrap();
        Cluster { _dir: dir, dirsvc: Some(d), peers: ps, addr, id }
    }

    async fn client(&self) -> Arc<Fs> {
        let dir = DirClient::connect(&self.addr).await.unwrap();
        let (info, secret) = volume::open(&dir, &self.id).await.unwrap();
        Fs::new(dir, &info, &secret, FsConfig { readahead_blocks: 2, ..FsConfig::default() })
    }

    async fn stop(mut self) {
        for p in self.peers.iter_mut().filter_map(Option::take) {
            p.shutdown().await;
        }
        if let Some(d) = self.dirsvc.take() {
            d.shutdown().await;
        }
    }
}

const B: usize = 4096;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
}

async fn write_file(fs: &Arc<Fs>, name: &[u8], data: &[u8], chunk: usize) -> InodeId {
    let (attr, fh) = fs.create(InodeId::ROOT, name, 0o644, 0, 0).await.unwrap();
    for (i, piece) in data.chunks(chunk.max(1)).enumerate() {
        fs.write(fh, (i * chunk) as u64, piece).await.unwrap();
    }
    fs.release(fh).await.unwrap();
    attr.ino
}

async fn read_all(fs: &Arc<Fs>, ino: InodeId) -> Vec<u8> {
    let fh = fs.open(ino, false).await.unwrap();
    let mut out = Vec::new();
    loop {
        let d = fs.read(fh, out.len() as u64, 10_000).await.unwrap();
        if d.is_empty() {
            break;
        }
        out.extend(d);
    }
    fs.release(fh).await.unwrap();
    out
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(120), f).await.expect("test timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_at_block_boundaries_read_back_identical_from_another_client() {
    within(async {
        let c = Cluster::start(3, 2, B as u32).await;
        let writer = c.client().await;
        let mut files = Vec::new();
        for (n, len) in [0, 1, B - 1, B, B + 1, 7 * B + 123].into_iter().enumerate() {
            let data = pattern(len, n as u8);
            // Odd write sizes so writes straddle block boundaries.
            let ino = write_file(&writer, format!("f{n}").as_bytes(), &data, 1000).await;
            files.push((ino, data));
        }
        let reader = c.client().await;
        for (ino, data) in &files {
            assert_eq!(reader.getattr(*ino).await.unwrap().size, data.len() as u64);
            assert_eq!(&read_all(&reader, *ino).await, data);
        }
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_truncate_and_holes_follow_posix() {
    within(async {
        let c = Cluster::start(2, 2, B as u32).await;
        let fs = c.client().await;
        let mut model = pattern(3 * B, 9);
        let ino = write_file(&fs, b"f", &model, B).await;

        // Overwrite across a block boundary through a fresh handle.
        let fh = fs.open(ino, false).await.unwrap();
        fs.write(fh, (B - 10) as u64, &[0xAB; 20]).await.unwrap();
        model[B - 10..B + 10].fill(0xAB);
        // A read through the same handle sees the unflushed write.
        assert_eq!(
            fs.read(fh, (B - 12) as u64, 4).await.unwrap(),
            vec![model[B - 12], model[B - 11], 0xAB, 0xAB]
        );
        fs.release(fh).await.unwrap();
        assert_eq!(read_all(&fs, ino).await, model);

        // Shrink into the middle of a block, then grow: the cut bytes are zeros.
        fs.truncate(ino, (B + 100) as u64).await.unwrap();
        fs.truncate(ino, (2 * B) as u64).await.unwrap();
        model.truncate(B + 100);
        model.resize(2 * B, 0);
        let other = c.client().await;
        assert_eq!(read_all(&other, ino).await, model);

        // A write far past the end leaves a hole that reads as zeros and is not stored.
        let fh = fs.open(ino, false).await.unwrap();
        fs.write(fh, (10 * B) as u64, b"tail").await.unwrap();
        fs.release(fh).await.unwrap();
        model.resize(10 * B, 0);
        model.extend_from_slice(b"tail");
        assert_eq!(read_all(&other, ino).await, model);
        let attr = other.getattr(ino).await.unwrap();
        assert!(attr.stored_bytes < (5 * B) as u64, "holes must not be stored: {} bytes", attr.stored_bytes);
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_another_replica_when_a_peer_is_gone() {
    within(async {
        let mut c = Cluster::start(3, 2, B as u32).await;
        let fs = c.client().await;
        let data = pattern(20 * B, 3);
        let ino = write_file(&fs, b"big", &data, B).await;
        // Stop one peer; every block still has a live replica.
        c.peers[0].take().unwrap().shutdown().await;
        let reader = c.client().await;
        assert_eq!(read_all(&reader, ino).await, data);
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_sealed_and_namespace_calls_work() {
    within(async {
        let c = Cluster::start(2, 1, B as u32).await;
        let fs = c.client().await;
        let d = fs.mkdir(InodeId::ROOT, b"docs", 0o755, 0, 0).await.unwrap();
        let (f, fh) = fs.create(d.ino, "r\u{e9}sum\u{e9}\n.txt".as_bytes(), 0o600, 0, 0).await.unwrap();
        fs.release(fh).await.unwrap();
        // dirsvc cannot find the plaintext name: it only knows the sealed one.
        let raw = DirClient::connect(&c.addr).await.unwrap();
        let plain = "r\u{e9}sum\u{e9}\n.txt".as_bytes().to_vec();
        let r = raw
            .call(|cl, ctx| {
                let p = plain.clone();
                async move { cl.lookup(ctx, d.ino, p).await }
            })
            .await;
        assert!(r.unwrap_err().is_not_found());
        assert_eq!(fs.lookup(d.ino, "r\u{e9}sum\u{e9}\n.txt".as_bytes()).await.unwrap().ino, f.ino);
        fs.rename(d.ino, "r\u{e9}sum\u{e9}\n.txt".as_bytes(), InodeId::ROOT, b"moved", 0).await.unwrap();
        let (root, _) = fs.readdir(InodeId::ROOT, 0, 100).await.unwrap();
        let mut names: Vec<_> = root.iter().map(|e| e.name.clone()).collect();
        names.sort();
        assert_eq!(names, vec![b"docs".to_vec(), b"moved".to_vec()]);
        assert_eq!(fs.rmdir(InodeId::ROOT, b"docs").await.map_err(|e| e.errno()), Ok(()));
        let long = vec![b'a'; 256];
        assert_eq!(
            fs.mkdir(InodeId::ROOT, &long, 0o755, 0, 0).await.unwrap_err().errno(),
            libc::ENAMETOOLONG
        );
        let s = fs.symlink(InodeId::ROOT, b"link", b"../some/where", 0, 0).await.unwrap();
        assert_eq!(s.size, 13);
        assert_eq!(fs.readlink(s.ino).await.unwrap(), b"../some/where");
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_no_live_peer_fails_with_an_error_instead_of_hanging() {
    within(async {
        let mut c = Cluster::start(1, 1, B as u32).await;
        let fs = c.client().await;
        let (_, fh) = fs.create(InodeId::ROOT, b"f", 0o644, 0, 0).await.unwrap();
        c.peers[0].take().unwrap().shutdown().await;
        fs.write(fh, 0, &pattern(B, 1)).await.unwrap();
        let e = fs.flush(fh).await.unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "{e}");
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_write_is_acknowledged_at_the_minimum_and_refused_below_it() {
    within(async {
        let mut c = Cluster::start(3, 3, B as u32).await;
        let fs = c.client().await;
        c.peers[2].take().unwrap().shutdown().await;
        // R = 3 with one peer gone: a majority (2) is enough to acknowledge.
        let data = pattern(3 * B, 5);
        let ino = write_file(&fs, b"degraded", &data, B).await;
        assert_eq!(read_all(&c.client().await, ino).await, data);
        // Asking for all three replicas makes the same write fail with EIO.
        let dir = DirClient::connect(&c.addr).await.unwrap();
        let (info, secret) = volume::open(&dir, &c.id).await.unwrap();
        let strict = Fs::new(dir, &info, &secret, FsConfig { min_replicas: Some(3), ..FsConfig::default() });
        let (_, fh) = strict.create(InodeId::ROOT, b"strict", 0o644, 0, 0).await.unwrap();
        strict.write(fh, 0, &data).await.unwrap_or(0);
        assert_eq!(strict.flush(fh).await.unwrap_err().errno(), libc::EIO);
        c.stop().await;
    })
    .await
}
