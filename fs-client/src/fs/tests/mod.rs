//! Tests of the filesystem core against real dirsvc and peerd servers on
//! loopback (in-process library servers), without FUSE.

use super::*;
use crate::identity;
use crate::volume;
use common::rpc::dir::{Attr, SetAttr};
use std::time::Duration;
use testkit::within;

mod failover;
mod integrity;
mod metadata_cache;
mod segments;
mod small_files;
mod write_buffer;

struct Cluster {
    _dir: tempfile::TempDir,
    dirsvc: Option<dirsvc::DirsvcHandle>,
    peers: Vec<Option<peerd::PeerdHandle>>,
    /// Each peer's TLS identity (kept across restarts: its id).
    peer_tls: Vec<Arc<common::tls::Tls>>,
    addr: String,
    id: identity::IdentityFile,
}

/// A client TLS identity of the test cluster.
fn client_tls() -> Arc<common::tls::Tls> {
    testkit::pki().node(common::rpc::Role::Client)
}

/// An admin identity of the test CA (membership, revocation).
fn admin_tls() -> Arc<common::tls::Tls> {
    testkit::pki().node(common::rpc::Role::Admin)
}

/// A peer of a test cluster with data in `dir`, identity `tls` and
/// `capacity` bytes (`None`: the filesystem's).
async fn spawn_peer(
    dir: &std::path::Path,
    dirsvc: &str,
    tls: &Arc<common::tls::Tls>,
    capacity: Option<u64>,
) -> peerd::PeerdHandle {
    peerd::spawn(peerd::PeerdConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        dirsvc: dirsvc.to_string(),
        heartbeat_interval: Duration::from_millis(200),
        capacity_bytes: capacity,
        tls: Some(tls.clone()),
        ..Default::default()
    })
    .await
    .unwrap()
}

impl Cluster {
    async fn start(peers: usize, replicas: u32, block_size: u32) -> Cluster {
        Self::start_with_capacity(peers, replicas, block_size, None).await
    }

    async fn start_with_capacity(
        peers: usize,
        replicas: u32,
        block_size: u32,
        capacity: Option<u64>,
    ) -> Cluster {
        Self::start_with(peers, replicas, block_size, capacity, |_| {}).await
    }

    /// A cluster whose dirsvc configuration `configure` adjusts (a
    /// commit limit, GC timings).
    async fn start_with(
        peers: usize,
        replicas: u32,
        block_size: u32,
        capacity: Option<u64>,
        configure: impl FnOnce(&mut dirsvc::DirsvcConfig),
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut config = dirsvc::DirsvcConfig {
            listen: "127.0.0.1:0".into(),
            db_path: dir.path().join("dir.redb"),
            tls: Some(testkit::pki().node(common::rpc::Role::Dirsvc)),
            ca: Some(testkit::pki().ca().clone()),
            ..Default::default()
        };
        configure(&mut config);
        let d = dirsvc::spawn(config).await.unwrap();
        let addr = d.addr.to_string();
        let mut ps = Vec::new();
        let peer_tls: Vec<_> = (0..peers).map(|_| testkit::pki().node(common::rpc::Role::Peer)).collect();
        for (i, tls) in peer_tls.iter().enumerate() {
            ps.push(Some(spawn_peer(&dir.path().join(format!("peer{i}")), &addr, tls, capacity).await));
        }
        let client = DirClient::connect(&addr, client_tls()).await.unwrap();
        wait_live(&client, peers).await;
        identity::keygen(&dir.path().join("id.txt")).unwrap();
        let id = identity::load(&dir.path().join("id.txt")).unwrap();
        volume::init(&client, &id, block_size, replicas, volume::DEFAULT_MEMBER_NAME).await.unwrap();
        Cluster { _dir: dir, dirsvc: Some(d), peers: ps, peer_tls, addr, id }
    }

    /// Restarts peer `i` on its data directory with a new capacity, and
    /// waits until dirsvc sees every running peer live again.
    async fn restart_peer(&mut self, i: usize, capacity: Option<u64>) {
        if let Some(p) = self.peers[i].take() {
            p.shutdown().await;
        }
        self.peers[i] = Some(
            spawn_peer(&self._dir.path().join(format!("peer{i}")), &self.addr, &self.peer_tls[i], capacity)
                .await,
        );
        let client = DirClient::connect(&self.addr, client_tls()).await.unwrap();
        // Wait for the new registration (its new address and usage).
        let id = self.peers[i].as_ref().unwrap().id;
        let addr = self.peers[i].as_ref().unwrap().advertised.clone();
        for _ in 0..200 {
            let peers = client.call(|c, ctx| async move { c.list_peers(ctx).await }).await.unwrap();
            if peers.iter().any(|p| p.loc.id == id && p.loc.addr == addr && p.loc.live) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("restarted peer {i} did not register");
    }

    /// A client that stores every block on peers (with these tests' 4 KiB
    /// blocks every block 0 would otherwise be inline).
    async fn client(&self) -> Arc<Fs> {
        self.client_inline(false).await
    }

    /// A client that keeps small blocks 0 inline (`inline`) or not.
    async fn client_inline(&self, inline: bool) -> Arc<Fs> {
        let dir = DirClient::connect(&self.addr, client_tls()).await.unwrap();
        let (info, keys) = volume::open(&dir, &self.id).await.unwrap();
        let config = FsConfig {
            readahead_blocks: 2,
            identity: Some(self._dir.path().join("id.txt")),
            inline,
            ..FsConfig::default()
        };
        Fs::new(dir, &info, keys, config)
    }

    /// The running dirsvc's database, to play a malicious directory
    /// service (`tamper_*`, feature `tamper`).
    fn store(&self) -> Arc<dirsvc::Store> {
        self.dirsvc.as_ref().and_then(|d| d.store()).expect("dirsvc runs")
    }

    /// A second identity in the cluster's directory (not a member).
    fn other_identity(&self, name: &str) -> (identity::IdentityFile, String) {
        let path = self._dir.path().join(name);
        let r = identity::keygen(&path).unwrap();
        (identity::load(&path).unwrap(), r)
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

/// Waits (up to 5 s) until dirsvc lists `n` live peers.
async fn wait_live(client: &DirClient, n: usize) {
    for _ in 0..100 {
        let live = client.call(|c, ctx| async move { c.list_peers(ctx).await }).await.unwrap();
        if live.iter().filter(|p| p.loc.live).count() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const B: usize = 4096;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
}

async fn write_file(fs: &Arc<Fs>, name: &[u8], data: &[u8], chunk: usize) -> InodeId {
    let (attr, fh) = fs.create(InodeId::ROOT, name, 0o644, 0, 0).await.unwrap();
    for (i, piece) in data.chunks(chunk.max(1)).enumerate() {
        fs.write(fh, (i * chunk) as u64, piece, false).await.unwrap();
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

/// Deadline of every test here (with [`testkit::within`]).
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_at_block_boundaries_read_back_identical_from_another_client() {
    within(TEST_TIMEOUT, "the test", async {
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
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(2, 2, B as u32).await;
        let fs = c.client().await;
        let mut model = pattern(3 * B, 9);
        let ino = write_file(&fs, b"f", &model, B).await;

        // Overwrite across a block boundary through a fresh handle.
        let fh = fs.open(ino, false).await.unwrap();
        fs.write(fh, (B - 10) as u64, &[0xAB; 20], false).await.unwrap();
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
        fs.write(fh, (10 * B) as u64, b"tail", false).await.unwrap();
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
    within(TEST_TIMEOUT, "the test", async {
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
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(2, 1, B as u32).await;
        let fs = c.client().await;
        let d = fs.mkdir(InodeId::ROOT, b"docs", 0o755, 0, 0).await.unwrap();
        let (f, fh) = fs.create(d.ino, "r\u{e9}sum\u{e9}\n.txt".as_bytes(), 0o600, 0, 0).await.unwrap();
        fs.release(fh).await.unwrap();
        // dirsvc cannot find the plaintext name: it only knows the sealed one.
        let raw = DirClient::connect(&c.addr, client_tls()).await.unwrap();
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
    within(TEST_TIMEOUT, "the test", async {
        let mut c = Cluster::start(1, 1, B as u32).await;
        let fs = c.client().await;
        let (_, fh) = fs.create(InodeId::ROOT, b"f", 0o644, 0, 0).await.unwrap();
        c.peers[0].take().unwrap().shutdown().await;
        fs.write(fh, 0, &pattern(B, 1), false).await.unwrap();
        let e = fs.flush(fh).await.unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "{e}");
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_write_is_acknowledged_at_the_minimum_and_refused_below_it() {
    within(TEST_TIMEOUT, "the test", async {
        let mut c = Cluster::start(3, 3, B as u32).await;
        let fs = c.client().await;
        c.peers[2].take().unwrap().shutdown().await;
        // R = 3 with one peer gone: a majority (2) is enough to acknowledge,
        // at once: no block waits for a third live peer to appear (that
        // wait is for fewer than the minimum).
        let data = pattern(3 * B, 5);
        let t = std::time::Instant::now();
        let ino = write_file(&fs, b"degraded", &data, B).await;
        assert!(
            t.elapsed() < super::upload::NO_LIVE_PEER_WAIT,
            "a degraded write waited {:?} for a third peer",
            t.elapsed()
        );
        assert_eq!(read_all(&c.client().await, ino).await, data);
        // Asking for all three replicas makes the same write fail with EIO.
        let dir = DirClient::connect(&c.addr, client_tls()).await.unwrap();
        let (info, keys) = volume::open(&dir, &c.id).await.unwrap();
        let strict = Fs::new(dir, &info, keys, FsConfig { min_replicas: Some(3), ..FsConfig::default() });
        let (_, fh) = strict.create(InodeId::ROOT, b"strict", 0o644, 0, 0).await.unwrap();
        strict.write(fh, 0, &data, false).await.unwrap_or(0);
        assert_eq!(strict.flush(fh).await.unwrap_err().errno(), libc::EIO);
        c.stop().await;
    })
    .await
}

/// Chunk files stored on all peers of `c`.
fn stored_chunk_files(c: &Cluster) -> usize {
    fn walk(p: &std::path::Path) -> usize {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| {
                        let t = e.file_type().unwrap();
                        if t.is_dir() {
                            walk(&e.path())
                        } else {
                            usize::from(e.file_name().len() == 64)
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(c._dir.path())
}

/// Linger of the clusters whose tests wait for an unlinked file to go.
const SHORT_LINGER: Duration = Duration::from_millis(200);

/// Waits until dirsvc has freed `ino` (it lingers for [`SHORT_LINGER`]
/// after it lost its last name and mark); panics after 20 s.
async fn wait_freed(fs: &Fs, ino: InodeId) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !fs.getattr(ino).await.err().is_some_and(|e| e.is_not_found()) {
        assert!(std::time::Instant::now() < deadline, "{ino} was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlinked_open_file_stays_readable_and_writable_until_its_last_close() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start_with(2, 2, B as u32, None, |d| d.unlinked_linger = SHORT_LINGER).await;
        let a = c.client().await;
        let b = c.client().await;
        let data = pattern(3 * B + 7, 4);
        let ino = write_file(&a, b"doomed", &data, B).await;
        let fh = b.open(ino, false).await.unwrap();
        // Another client removes the only name.
        a.unlink(InodeId::ROOT, b"doomed").await.unwrap();
        assert!(a.lookup(InodeId::ROOT, b"doomed").await.unwrap_err().is_not_found());
        assert_eq!(b.getattr(ino).await.unwrap().nlink, 0);
        assert_eq!(b.read(fh, 0, (4 * B) as u32).await.unwrap(), data);
        b.write(fh, 0, b"still here", false).await.unwrap();
        b.flush(fh).await.unwrap();
        assert_eq!(&b.read(fh, 0, 10).await.unwrap(), b"still here");
        b.release(fh).await.unwrap();
        // After the last close (and dirsvc's linger) the inode is gone.
        wait_freed(&a, ino).await;
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_open_file_keeps_its_old_data_for_the_open_handle() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start_with(2, 2, B as u32, None, |d| d.unlinked_linger = SHORT_LINGER).await;
        let fs = c.client().await;
        let old = pattern(2 * B, 1);
        let new = pattern(B + 3, 2);
        let target = write_file(&fs, b"config", &old, B).await;
        let fh = fs.open(target, false).await.unwrap();
        write_file(&fs, b"config.tmp", &new, B).await;
        fs.rename(InodeId::ROOT, b"config.tmp", InodeId::ROOT, b"config", 0).await.unwrap();
        assert_eq!(fs.read(fh, 0, (3 * B) as u32).await.unwrap(), old);
        let now = fs.lookup(InodeId::ROOT, b"config").await.unwrap();
        assert_eq!(read_all(&fs, now.ino).await, new);
        fs.release(fh).await.unwrap();
        wait_freed(&fs, target).await;
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_attributes_round_trip_sealed_with_posix_errors() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let fs = c.client().await;
        let ino = write_file(&fs, b"f", b"x", B).await;
        let value = b"secret-xattr-value-marker".to_vec();
        fs.setxattr(ino, b"user.note", &value, 0).await.unwrap();
        fs.setxattr(ino, b"trusted.t", b"t", 0).await.unwrap();
        assert_eq!(fs.getxattr(ino, b"user.note").await.unwrap(), value);
        assert_eq!(fs.listxattr(ino, 0).await.unwrap(), b"trusted.t\0user.note\0");
        assert_eq!(fs.listxattr(ino, 1000).await.unwrap(), b"user.note\0");
        let e = |r: Result<Attr>| r.unwrap_err().errno();
        assert_eq!(e(fs.setxattr(ino, b"user.note", b"v", libc::XATTR_CREATE).await), libc::EEXIST);
        assert_eq!(e(fs.setxattr(ino, b"user.none", b"v", libc::XATTR_REPLACE).await), libc::ENODATA);
        assert_eq!(e(fs.setxattr(ino, b"user.big", &vec![1; (64 << 10) + 1], 0).await), libc::E2BIG);
        assert_eq!(e(fs.setxattr(ino, b"system.posix_acl_access", b"v", 0).await), libc::EOPNOTSUPP);
        // A 64 KiB value is allowed.
        fs.setxattr(ino, b"user.big", &vec![7; 64 << 10], 0).await.unwrap();
        assert_eq!(fs.getxattr(ino, b"user.big").await.unwrap().len(), 64 << 10);
        fs.removexattr(ino, b"user.note").await.unwrap();
        assert_eq!(fs.getxattr(ino, b"user.note").await.unwrap_err().errno(), libc::ENODATA);
        assert_eq!(e(fs.removexattr(ino, b"user.note").await), libc::ENODATA);
        // dirsvc holds neither the name nor the value in plaintext.
        let raw = DirClient::connect(&c.addr, client_tls()).await.unwrap();
        let names = raw.call(|cl, ctx| async move { cl.listxattr(ctx, ino).await }).await.unwrap();
        assert_eq!(names.len(), 2);
        assert!(names.iter().all(|n| !n.windows(5).any(|w| w == b"user." || w == b"trust")));
        // Another client reads them.
        assert_eq!(c.client().await.getxattr(ino, b"trusted.t").await.unwrap(), b"t");
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_conflict_across_clients_and_go_with_the_session() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let a = c.client().await;
        let b = c.client().await;
        let ino = write_file(&a, b"db", b"x", B).await;
        let req = move |owner, start, end, typ| LockRequest { ino, owner, start, end, typ, pid: 42 };
        a.setlk(req(1, 0, 99, LockType::Write), false).await.unwrap();
        // Another client: blocked on the overlap, free elsewhere.
        let e = b.setlk(req(1, 50, 60, LockType::Read), false).await.unwrap_err();
        assert_eq!(e.errno(), libc::EAGAIN);
        b.setlk(req(1, 100, 199, LockType::Write), false).await.unwrap();
        let (s, end, t, _) = b.getlk(req(7, 0, 10, LockType::Read)).await.unwrap().unwrap();
        assert_eq!((s, end, t), (0, 99, libc::F_WRLCK));
        // A blocking request is granted when the holder unlocks.
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.setlk(req(1, 0, 10, LockType::Write), true).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished());
        a.unlock_owner(ino, 1).await.unwrap();
        waiter.await.unwrap().unwrap();
        // Closing a session releases its locks at once.
        b.close_session().await;
        a.setlk(req(1, 0, u64::MAX, LockType::Write), false).await.unwrap();
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punched_and_zero_blocks_are_holes_and_copies_share_chunks() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let fs = c.client().await;
        let mut model = pattern(8 * B, 6);
        let ino = write_file(&fs, b"src", &model, B).await;
        let before = stored_chunk_files(&c);
        assert_eq!(before, 8);

        // Punch blocks 2..4 whole and half of block 5.
        let fh = fs.open(ino, false).await.unwrap();
        fs.fallocate(
            fh,
            (2 * B) as u64,
            (3 * B + B / 2) as u64,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        )
        .await
        .unwrap();
        model[2 * B..5 * B + B / 2].fill(0);
        assert_eq!(fs.getattr(ino).await.unwrap().size, (8 * B) as u64);
        assert_eq!(fs.seek_data(fh, (2 * B) as u64, Seek::Data).await.unwrap(), (5 * B) as u64);
        assert_eq!(fs.seek_data(fh, 0, Seek::Hole).await.unwrap(), (2 * B) as u64);
        // Allocation past the end grows the file with zeros.
        fs.fallocate(fh, (8 * B) as u64, B as u64, 0).await.unwrap();
        model.resize(9 * B, 0);
        // A block written as zeros is not stored either.
        fs.write(fh, 0, &vec![0; B], false).await.unwrap();
        model[..B].fill(0);
        fs.release(fh).await.unwrap();
        assert_eq!(read_all(&c.client().await, ino).await, model);
        let attr = fs.getattr(ino).await.unwrap();
        assert!(attr.stored_bytes <= (5 * (B + codec::OVERHEAD)) as u64, "stored {}", attr.stored_bytes);

        // A block-aligned copy shares chunks: nothing new is stored.
        let stored = stored_chunk_files(&c);
        let (dst, out) = fs.create(InodeId::ROOT, b"dst", 0o644, 0, 0).await.unwrap();
        let src = fs.open(ino, false).await.unwrap();
        let n = fs.copy_range(src, 0, out, 0, 100 * B as u64).await.unwrap();
        assert_eq!(n, model.len() as u64);
        // An unaligned copy goes through the data path.
        let n = fs.copy_range(src, (B + 10) as u64, out, (9 * B) as u64, 100).await.unwrap();
        assert_eq!(n, 100);
        fs.release(src).await.unwrap();
        fs.release(out).await.unwrap();
        let mut want = model.clone();
        want.extend_from_slice(&model[B + 10..B + 110]);
        assert_eq!(read_all(&c.client().await, dst.ino).await, want);
        assert_eq!(stored_chunk_files(&c), stored + 1, "only the unaligned tail block is new");
        // Deleting the source keeps the copy intact.
        fs.unlink(InodeId::ROOT, b"src").await.unwrap();
        assert_eq!(read_all(&c.client().await, dst.ino).await, want);
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_after_a_hole_longer_than_a_layout_page_is_read_back() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let fs = c.client().await;
        let (f, fh) = fs.create(InodeId::ROOT, b"sparse", 0o644, 0, 0).await.unwrap();
        fs.write(fh, 0, b"head", false).await.unwrap();
        // Block 9,000: past two 4,096-block layout pages of holes.
        let far = 9_000 * B as u64 + 3;
        fs.write(fh, far, b"tail", false).await.unwrap();
        fs.release(fh).await.unwrap();
        let other = c.client().await;
        let fh = other.open(f.ino, false).await.unwrap();
        assert_eq!(other.read(fh, far, 4).await.unwrap(), b"tail");
        assert_eq!(other.read(fh, 0, 4).await.unwrap(), b"head");
        other.release(fh).await.unwrap();
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_peers_give_enospc_to_the_writer_and_nothing_to_a_reader() {
    // Regression: with every peer full, write/fsync/close failed with EIO,
    // and a handle that had only read the file got EIO from its own close.
    within(TEST_TIMEOUT, "the test", async {
        // Two peers of 40 KiB each, R = 2: about eight 4 KiB blocks fit.
        let c = Cluster::start_with_capacity(2, 2, B as u32, Some(40 << 10)).await;
        let fs = c.client().await;
        let (attr, w) = fs.create(InodeId::ROOT, b"big", 0o644, 0, 0).await.unwrap();
        let reader = fs.open(attr.ino, false).await.unwrap();
        let mut first_err = None;
        for i in 0..64u64 {
            if let Err(e) = fs.write(w, i * B as u64, &pattern(B, i as u8), false).await {
                first_err = Some(e);
                break;
            }
        }
        let fsync = fs.flush(w).await;
        let e = first_err.or(fsync.err()).expect("a write or fsync into full peers must fail");
        assert_eq!(e.errno(), libc::ENOSPC, "{e}");
        // Sticky for the writer: the next write and fsync see it too.
        assert_eq!(fs.write(w, 0, b"x", false).await.unwrap_err().errno(), libc::ENOSPC);
        assert_eq!(fs.flush(w).await.unwrap_err().errno(), libc::ENOSPC);
        // The reader reads and closes cleanly.
        fs.read(reader, 0, B as u32).await.unwrap();
        fs.flush(reader).await.expect("a reader's flush does not fail for the writer's data");
        fs.release(reader).await.expect("a reader's close does not fail for the writer's data");
        assert_eq!(fs.release(w).await.unwrap_err().errno(), libc::ENOSPC);
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn some_peers_down_and_the_rest_full_is_enospc() {
    within(TEST_TIMEOUT, "the test", async {
        let mut c = Cluster::start_with_capacity(3, 3, B as u32, Some(24 << 10)).await;
        let fs = c.client().await;
        // Fill the peers, then stop one of them.
        let (_, w) = fs.create(InodeId::ROOT, b"fill", 0o644, 0, 0).await.unwrap();
        for i in 0..32u64 {
            if fs.write(w, i * B as u64, &pattern(B, 3), false).await.is_err() {
                break;
            }
        }
        let _ = fs.release(w).await;
        c.peers[2].take().unwrap().shutdown().await;
        let other = c.client().await;
        let (_, w) = other.create(InodeId::ROOT, b"more", 0o644, 0, 0).await.unwrap();
        other.write(w, 0, &pattern(B, 4), false).await.unwrap();
        let e = other.flush(w).await.unwrap_err();
        assert_eq!(e.errno(), libc::ENOSPC, "two full peers and one down: {e}");
        // (No peer reachable at all is EIO: see
        // a_write_with_no_live_peer_fails_with_an_error_instead_of_hanging.)
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_that_could_not_be_stored_is_kept_and_stored_by_the_next_client() {
    within(TEST_TIMEOUT, "the test", async {
        let mut c = Cluster::start_with_capacity(2, 2, B as u32, Some(40 << 10)).await;
        let fs = c.client().await;
        let (attr, w) = fs.create(InodeId::ROOT, b"kept", 0o644, 0, 0).await.unwrap();
        let mut accepted = Vec::new();
        for i in 0..32u64 {
            let piece = pattern(B, i as u8 + 1);
            match fs.write(w, i * B as u64, &piece, false).await {
                Ok(_) => accepted.extend_from_slice(&piece),
                Err(_) => break,
            }
        }
        assert!(fs.release(w).await.is_err());
        let failed = fs.flush_all().await;
        assert_eq!(failed.len(), 1);
        let unstored = fs.unstored(&failed).await;
        assert_eq!(unstored.len(), 1);
        assert_eq!(unstored[0].path, "/kept");
        assert_eq!(unstored[0].size, accepted.len() as u64);
        let tmp = tempfile::tempdir().unwrap();
        let dir = DirClient::connect(&c.addr, client_tls()).await.unwrap();
        let (info, keys) = volume::open(&dir, &c.id).await.unwrap();
        let keeper = recovery::RecoveryDir::new(tmp.path(), info.id, Arc::new(keys));
        keeper.keep(&unstored[0]).unwrap();
        drop(fs);
        // Room again: the next client stores the kept data at start.
        c.restart_peer(0, Some(4 << 20)).await;
        c.restart_peer(1, Some(4 << 20)).await;
        let next = c.client().await;
        let report = next.recover(&keeper).await;
        assert_eq!(report.stored.len(), 1, "{report:?}");
        assert!(keeper.pending().unwrap().is_empty(), "the recovery file is deleted once stored");
        assert_eq!(read_all(&c.client().await, attr.ino).await, accepted);
        c.stop().await;
    })
    .await
}

#[test]
fn commit_batches_are_the_smaller_of_the_client_and_dirsvc_limits() {
    use super::session::commit_batch_size;
    assert_eq!(commit_batch_size(25), 25);
    assert_eq!(commit_batch_size(13_106), COMMIT_BATCH);
    assert_eq!(commit_batch_size(COMMIT_BATCH as u64), COMMIT_BATCH);
    assert_eq!(commit_batch_size(0), 1);
    assert_eq!(commit_batch_size(u64::MAX), COMMIT_BATCH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_more_blocks_than_dirsvc_takes_per_commit_commits_in_batches() {
    use common::rpc::dir::{CommitLayout, DirError};
    within(TEST_TIMEOUT, "the test", async {
        // dirsvc takes 4 entries per commit; the file has 23 blocks.
        let c = Cluster::start_with(1, 1, B as u32, None, |c| c.max_commit_entries = Some(4)).await;
        let fs = c.client().await;
        let data = pattern(22 * B + 100, 7);
        let ino = write_file(&fs, b"big", &data, 3 * B).await;
        assert_eq!(fs.commit_batch(), 4, "the session grant carried dirsvc's limit");
        let reader = c.client().await;
        assert_eq!(reader.getattr(ino).await.unwrap().size, data.len() as u64);
        assert_eq!(read_all(&reader, ino).await, data);
        // dirsvc does refuse a larger commit: batching is what made it work.
        let dir = DirClient::connect(&c.addr, client_tls()).await.unwrap();
        let page = dir.call(|c, ctx| async move { c.get_layout(ctx, ino, 0, 100).await }).await.unwrap();
        assert_eq!(page.blocks.len(), 23);
        let blocks: Vec<_> = page
            .blocks
            .iter()
            .take(5)
            .map(|b| {
                let chunk = common::rpc::dir::StoredChunk {
                    id: b.chunk,
                    len: b.len,
                    replicas: vec![],
                    epoch: b.epoch,
                    mac: b.mac,
                    inline: None,
                };
                (b.index, Some(chunk))
            })
            .collect();
        let commit = CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
            size: data.len() as u64,
            mtime: page.attr.mtime,
            blocks,
        };
        let r = dir
            .call(|c, ctx| {
                let cm = commit.clone();
                async move { c.commit_layout(ctx, ino, cm).await }
            })
            .await;
        assert!(matches!(r, Err(Error::Dir(DirError::Invalid(_)))), "{r:?}");
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_held_up_past_the_gc_grace_period_checks_its_chunks_with_the_replicas_and_lands() {
    within(TEST_TIMEOUT, "the test", async {
        // GC's grace period is 1 s and this client commits only at flush:
        // its uploads wait uncommitted for longer than the grace.
        let c = Cluster::start_with(2, 2, B as u32, None, |c| c.gc_grace = Duration::from_secs(1)).await;
        let dir = DirClient::connect(&c.addr, client_tls()).await.unwrap();
        let (info, keys) = volume::open(&dir, &c.id).await.unwrap();
        let config = FsConfig {
            commit_interval: Duration::from_secs(3600),
            identity: Some(c._dir.path().join("id.txt")),
            inline: false,
            ..FsConfig::default()
        };
        let fs = Fs::new(dir, &info, keys, config);
        let data = pattern(6 * B, 5);
        let (attr, fh) = fs.create(InodeId::ROOT, b"late", 0o644, 0, 0).await.unwrap();
        fs.write(fh, 0, &data, false).await.unwrap();
        // Full blocks upload at once; wait until they have, and past the grace.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let since = {
            let f = fs.file(attr.ino).unwrap();
            let mut st = f.state.lock().await;
            fs.reap(&mut st);
            st.held_since
        };
        assert!(
            since.is_some_and(|t| t.elapsed() >= Duration::from_secs(1)),
            "the uploads finished a grace period before the flush ({since:?})"
        );
        // dirsvc refuses the first commit (UploadUnverified); the client
        // asks the replicas, and commits with their fresh answer.
        fs.flush(fh).await.unwrap();
        fs.release(fh).await.unwrap();
        let reader = c.client().await;
        assert_eq!(read_all(&reader, attr.ino).await, data);
        c.stop().await;
    })
    .await
}
