//! Tests of the filesystem core against real dirsvc and peerd servers on
//! loopback (in-process library servers), without FUSE.

use super::*;
use crate::identity;
use crate::volume;
use common::rpc::dir::Attr;
use std::time::Duration;
use testkit::within;

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
        Self::start_with(peers, replicas, block_size, capacity, None).await
    }

    /// A cluster whose dirsvc takes at most `max_commit_entries` entries
    /// per commit (`None`: its store's limit).
    async fn start_with(
        peers: usize,
        replicas: u32,
        block_size: u32,
        capacity: Option<u64>,
        max_commit_entries: Option<usize>,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let d = dirsvc::spawn(dirsvc::DirsvcConfig {
            listen: "127.0.0.1:0".into(),
            db_path: dir.path().join("dir.redb"),
            tls: Some(testkit::pki().node(common::rpc::Role::Dirsvc)),
            ca: Some(testkit::pki().ca().clone()),
            max_commit_entries,
            ..Default::default()
        })
        .await
        .unwrap();
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

    async fn client(&self) -> Arc<Fs> {
        let dir = DirClient::connect(&self.addr, client_tls()).await.unwrap();
        let (info, keys) = volume::open(&dir, &self.id).await.unwrap();
        let config = FsConfig {
            readahead_blocks: 2,
            identity: Some(self._dir.path().join("id.txt")),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlinked_open_file_stays_readable_and_writable_until_its_last_close() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(2, 2, B as u32).await;
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
        // After the last close the inode is gone.
        assert!(a.getattr(ino).await.unwrap_err().is_not_found());
        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_open_file_keeps_its_old_data_for_the_open_handle() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(2, 2, B as u32).await;
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
        assert!(fs.getattr(target).await.unwrap_err().is_not_found());
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

/// Reads `len` bytes at `offset` of `ino` through a fresh handle and
/// returns the errno, or the bytes.
async fn read_at(fs: &Arc<Fs>, ino: InodeId, offset: u64, len: u32) -> std::result::Result<Vec<u8>, i32> {
    let fh = fs.open(ino, false).await.map_err(|e| e.errno())?;
    let r = fs.read(fh, offset, len).await.map_err(|e| e.errno());
    fs.release(fh).await.unwrap();
    r
}

/// Regression (issue 8): a dirsvc that swapped layout entries between files
/// or between blocks of one file made the client return another file's or
/// block's bytes (chunk ids only prove a chunk belongs to the volume). Now
/// every entry carries the writer's MAC over its place: a moved entry is
/// EIO, never wrong bytes, and the blocks around it still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_moved_to_another_file_or_block_reads_as_eio() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let fs = c.client().await;
        let a = pattern(3 * B, 1);
        let b = pattern(2 * B, 2);
        let fa = write_file(&fs, b"a", &a, B).await;
        let fb = write_file(&fs, b"b", &b, B).await;
        let store = c.store();
        // Another file's block (with that entry's own, valid MAC).
        store.tamper_swap_layout_rows((fa, 0), (fb, 0)).unwrap();
        // Two blocks of one file.
        store.tamper_swap_layout_rows((fa, 1), (fa, 2)).unwrap();
        drop(store);
        // The writer (its cache holds the plaintext of every chunk) and a
        // fresh client both refuse.
        for reader in [fs.clone(), c.client().await] {
            for (ino, block) in [(fa, 0u64), (fb, 0), (fa, 1), (fa, 2)] {
                let r = read_at(&reader, ino, block * B as u64, B as u32).await;
                assert_eq!(r, Err(libc::EIO), "block {block} of {ino}");
            }
            assert_eq!(read_at(&reader, fb, B as u64, B as u32).await.unwrap(), b[B..]);
        }
        // Overwriting part of a moved block needs its old bytes: EIO too.
        let fh = fs.open(fa, false).await.unwrap();
        assert_eq!(fs.write(fh, 10, b"x", false).await.unwrap_err().errno(), libc::EIO);
        // Overwriting it whole replaces it.
        fs.write(fh, 0, &a[..B], false).await.unwrap();
        fs.release(fh).await.unwrap();
        assert_eq!(read_at(&c.client().await, fa, 0, B as u32).await.unwrap(), a[..B]);
        c.stop().await;
    })
    .await
}

/// Regression (issue 8): symlink targets were sealed without associated
/// data, so a dirsvc could swap two symlinks' targets unnoticed. Now a
/// target is bound to the volume and its inode (reserved before the symlink
/// exists): a swapped target is EIO. Attribute values were already bound to
/// (inode, sealed name); this checks that still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_symlink_targets_and_attribute_values_read_as_eio() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let fs = c.client().await;
        let l1 = fs.symlink(InodeId::ROOT, b"l1", b"/etc/passwd", 0, 0).await.unwrap().ino;
        let l2 = fs.symlink(InodeId::ROOT, b"l2", b"/tmp/harmless", 0, 0).await.unwrap().ino;
        assert_eq!(fs.readlink(l1).await.unwrap(), b"/etc/passwd");
        // Inode numbers come from this session's reservation, in order.
        assert_eq!(l2.0, l1.0 + 1);
        let f = write_file(&fs, b"f", b"data", B).await;
        let g = write_file(&fs, b"g", b"data", B).await;
        fs.setxattr(f, b"user.a", b"value of f", 0).await.unwrap();
        fs.setxattr(g, b"user.a", b"value of g", 0).await.unwrap();
        fs.setxattr(f, b"user.b", b"other name", 0).await.unwrap();
        let store = c.store();
        store.tamper_swap_symlink_targets(l1, l2).unwrap();
        let (na, nb, ng) = (
            fs.name_key.seal_xattr(f, b"user.a"),
            fs.name_key.seal_xattr(f, b"user.b"),
            fs.name_key.seal_xattr(g, b"user.a"),
        );
        store.tamper_swap_xattr_values((f, &na), (g, &ng)).unwrap();
        drop(store);
        let other = c.client().await;
        assert_eq!(other.readlink(l1).await.unwrap_err().errno(), libc::EIO);
        assert_eq!(other.readlink(l2).await.unwrap_err().errno(), libc::EIO);
        assert_eq!(other.getxattr(f, b"user.a").await.unwrap_err().errno(), libc::EIO);
        assert_eq!(other.getxattr(g, b"user.a").await.unwrap_err().errno(), libc::EIO);
        // A value moved to another name of the same inode does not open either.
        c.store().tamper_swap_xattr_values((f, &nb), (f, &na)).unwrap();
        assert_eq!(other.getxattr(f, b"user.b").await.unwrap_err().errno(), libc::EIO);
        // A symlink made after dirsvc lost the reservations (a restart, or a
        // new session) reserves again.
        lock(&other.reserved).push(InodeId(999_999));
        let l3 = other.symlink(InodeId::ROOT, b"l3", b"t", 0, 0).await.unwrap().ino;
        assert_eq!(fs.readlink(l3).await.unwrap(), b"t");
        c.stop().await;
    })
    .await
}

/// Shared blocks (copy_file_range between aligned offsets) get a MAC of
/// their own, for the destination: the copy reads back, the source's entry
/// is not the copy's, and moving the copy's entry is caught like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflinked_copies_read_back_and_are_bound_to_their_own_place() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let fs = c.client().await;
        let data = pattern(4 * B + 100, 3);
        let src = write_file(&fs, b"src", &data, B).await;
        let (dst, out) = fs.create(InodeId::ROOT, b"dst", 0o644, 0, 0).await.unwrap();
        let inp = fs.open(src, false).await.unwrap();
        assert_eq!(fs.copy_range(inp, 0, out, 0, data.len() as u64).await.unwrap(), data.len() as u64);
        // And a second copy at another block offset of the same file.
        assert_eq!(fs.copy_range(inp, 0, out, (8 * B) as u64, B as u64).await.unwrap(), B as u64);
        fs.release(inp).await.unwrap();
        fs.release(out).await.unwrap();
        let reader = c.client().await;
        let mut want = data.clone();
        want.resize(8 * B, 0);
        want.extend_from_slice(&data[..B]);
        assert_eq!(read_all(&reader, dst.ino).await, want);
        // Same chunks, different MACs.
        let raw = DirClient::connect(&c.addr, client_tls()).await.unwrap();
        let s = raw.call(|cl, ctx| async move { cl.get_layout(ctx, src, 0, 100).await }).await.unwrap();
        let d = raw.call(|cl, ctx| async move { cl.get_layout(ctx, dst.ino, 0, 100).await }).await.unwrap();
        let at8 = d.blocks.iter().find(|b| b.index == 8).unwrap();
        assert_eq!(s.blocks[0].chunk, d.blocks[0].chunk);
        assert_eq!(at8.chunk, d.blocks[0].chunk);
        assert_ne!(s.blocks[0].mac, d.blocks[0].mac);
        assert_ne!(d.blocks[0].mac, at8.mac);
        // The copy's entry moved to the source's block 1: caught.
        c.store().tamper_swap_layout_rows((dst.ino, 0), (src, 1)).unwrap();
        assert_eq!(read_at(&c.client().await, src, B as u64, 10).await, Err(libc::EIO));
        c.stop().await;
    })
    .await
}

/// Entries without a MAC (rows migrated from before MACs) are accepted
/// only on a volume migrated from then (`legacy_layouts`); a new volume
/// refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_without_a_mac_pass_only_on_a_legacy_volume() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let fs = c.client().await;
        let data = pattern(2 * B, 4);
        let f = write_file(&fs, b"f", &data, B).await;
        c.store().tamper_clear_mac(f, 1).unwrap();
        assert_eq!(read_at(&c.client().await, f, B as u64, 10).await, Err(libc::EIO));
        c.store().tamper_set_legacy(true).unwrap();
        assert_eq!(read_all(&c.client().await, f).await, data);
        c.stop().await;
    })
    .await
}

/// Removing a member starts a new key epoch: a running client that still
/// seals under the old epoch has its commit refused, reloads the keyring,
/// seals again and commits; the removed identity cannot open the volume any
/// more and its old keys do not open what is written after; `reencrypt`
/// moves old blocks to the new epoch without changing a byte or a time; a
/// dirsvc that rolls the keyring back is caught by the pin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_keeps_only_the_old_epoch_and_writers_move_to_the_new_one() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(2, 1, B as u32).await;
        let pins = tempfile::tempdir().unwrap();
        let dir = DirClient::connect(&c.addr, admin_tls()).await.unwrap();
        let (bob, bob_key) = c.other_identity("bob.txt");
        // Bob's client certificate, connected before his removal.
        let bob_tls = client_tls();
        let bob_dir = DirClient::connect(&c.addr, bob_tls.clone()).await.unwrap();
        crate::members::add(&dir, &c.id, Some(pins.path()), "bob", &bob_key, vec![bob_tls.node()])
            .await
            .unwrap();
        volume::fetch(&bob_dir).await.unwrap();
        let (_, bob_keys) = volume::open(&dir, &bob).await.unwrap();
        assert_eq!(bob_keys.newest(), 0, "adding a member does not start an epoch");
        let before = c.client().await;
        let old = pattern(3 * B, 7);
        let old_ino = write_file(&before, b"old", &old, B).await;
        let old_mtime = before.getattr(old_ino).await.unwrap().mtime;
        // A write sealed under epoch 0, not committed yet.
        let (late, fh) = before.create(InodeId::ROOT, b"late", 0o644, 0, 0).await.unwrap();
        let late_data = pattern(2 * B, 8);
        before.write(fh, 0, &late_data, false).await.unwrap();

        // Removing oneself would lock oneself out of the new epoch.
        let e = crate::members::remove(&dir, &c.id, None, volume::DEFAULT_MEMBER_NAME).await.unwrap_err();
        assert!(e.to_string().contains("own member entry"), "{e}");
        let (ring, gone, unrevoked) =
            crate::members::remove(&dir, &c.id, Some(pins.path()), "bob").await.unwrap();
        assert_eq!((ring.newest_epoch(), gone.name.as_str()), (1, "bob"));
        assert!(unrevoked.is_empty(), "bob's certificate is revoked with him: {unrevoked:?}");
        // His open connection is closed and a new one refused.
        let e = volume::fetch(&bob_dir).await.unwrap_err();
        assert!(!matches!(e, crate::Error::Key(_)), "bob still reached dirsvc: {e}");
        assert!(DirClient::connect(&c.addr, bob_tls).await.is_err(), "a revoked certificate reconnected");

        // The running client's commit is refused, and it moves on.
        before.release(fh).await.unwrap();
        assert_eq!(before.keys().newest(), 1);
        let raw = DirClient::connect(&c.addr, client_tls()).await.unwrap();
        let l = raw.call(|cl, ctx| async move { cl.get_layout(ctx, late.ino, 0, 10).await }).await.unwrap();
        assert!(l.blocks.iter().all(|b| b.epoch == 1), "{:?}", l.blocks);
        assert_eq!(read_all(&c.client().await, late.ino).await, late_data);

        // Bob cannot open the volume, and says why.
        let e = volume::open(&dir, &bob).await.unwrap_err().to_string();
        assert!(e.contains("is not a member of volume") && e.contains("removed"), "{e}");
        // His epoch-0 keys do not open what was written after.
        let loc = l.blocks[0].clone();
        let bytes = before.peers.get(&loc.replicas[0], loc.chunk).await.unwrap();
        assert_eq!(codec::epoch_of(&bytes).unwrap(), 1);
        assert!(codec::open_bytes(&bob_keys.epoch(0).unwrap().chunk, &bytes).is_err());
        assert!(bob_keys.epoch(1).is_none());

        // reencrypt: old blocks move to epoch 1; bytes and mtime stay.
        let report = before.reencrypt(&|_| {}).await.unwrap();
        assert_eq!((report.resealed, report.changed, report.failed.len()), (3, 0, 0), "{report:?}");
        let l = raw.call(|cl, ctx| async move { cl.get_layout(ctx, old_ino, 0, 10).await }).await.unwrap();
        assert!(l.blocks.iter().all(|b| b.epoch == 1));
        assert_eq!(read_all(&c.client().await, old_ino).await, old);
        assert_eq!(c.client().await.getattr(old_ino).await.unwrap().mtime, old_mtime);
        let again = before.reencrypt(&|_| {}).await.unwrap();
        assert_eq!(again.resealed, 0, "nothing left to do");

        // A dirsvc that serves the keyring of before the removal (bob is a
        // member again, epoch 0 newest): the pin refuses it.
        let mut rolled = ring.clone();
        rolled.epochs.truncate(1);
        rolled.members.push(gone);
        c.store().tamper_set_keyring(&rolled).unwrap();
        let e = volume::open_pinned(&dir, &c.id, Some(pins.path())).await.unwrap_err().to_string();
        assert!(e.contains("older than epoch 1"), "{e}");
        c.stop().await;
    })
    .await
}

/// A TCP proxy to dirsvc that, once armed, forwards the next request and
/// cuts the connection (both sides) when the first bytes of the answer
/// come back, without passing them on: the call was applied, its answer
/// lost. TLS stays end to end (the proxy sees only ciphertext).
struct CutProxy {
    addr: String,
    armed: Arc<std::sync::atomic::AtomicBool>,
    cuts: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl CutProxy {
    async fn start(upstream: &str) -> CutProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (a, n, up) = (armed.clone(), cuts.clone(), upstream.to_string());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&up).await else { continue };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let cut = tokio_util::sync::CancellationToken::new();
                let stop = cut.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            r = cr.read(&mut buf) => match r {
                                Ok(0) | Err(_) => return,
                                Ok(k) => if sw.write_all(&buf[..k]).await.is_err() { return },
                            },
                        }
                    }
                });
                let (a, n) = (a.clone(), n.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if a.swap(false, Ordering::SeqCst) => {
                                n.fetch_add(1, Ordering::SeqCst);
                                cut.cancel();
                                // Dropping both halves here (and the other
                                // task's on `cut`) closes both sockets.
                                return;
                            }
                            Ok(k) => {
                                if cw.write_all(&buf[..k]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        CutProxy { addr, armed, cuts, task }
    }

    fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_retried_after_a_lost_answer_return_their_first_answer_and_apply_once() {
    use common::rpc::dir::{DirError, Mutation, NewInode};
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let proxy = CutProxy::start(&c.addr).await;
        let dir = DirClient::connect(&proxy.addr, client_tls()).await.unwrap();
        let direct = DirClient::connect(&c.addr, client_tls()).await.unwrap();
        let root = InodeId::ROOT;
        let lookup = |name: &'static [u8]| {
            let direct = &direct;
            async move { direct.call(|c, ctx| async move { c.lookup(ctx, root, name.to_vec()).await }).await }
        };
        let new = NewInode { kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0 };
        let started = std::time::Instant::now();

        // create: the retry answers the attributes of the file it made.
        proxy.arm();
        let f =
            dir.mutate_attr(Mutation::Create { parent: root, name: b"f".to_vec(), new: new.clone() }).await;
        assert_eq!(proxy.cuts(), 1, "the answer was cut");
        let f = f.expect("the retried create answers as its first attempt, not EEXIST");
        assert_eq!(lookup(b"f").await.unwrap(), f);

        // link: one new name, nlink 2 (not EEXIST, not 3).
        proxy.arm();
        let l =
            dir.mutate_attr(Mutation::Link { ino: f.ino, new_parent: root, new_name: b"g".to_vec() }).await;
        assert_eq!(proxy.cuts(), 2);
        let l = l.expect("the retried link answers as its first attempt");
        assert_eq!((l.ino, l.nlink), (f.ino, 2));
        assert_eq!(lookup(b"g").await.unwrap().nlink, 2);

        // rename g -> h: the moved inode (not ENOENT for the gone source).
        proxy.arm();
        let op = Mutation::Rename {
            parent: root,
            name: b"g".to_vec(),
            new_parent: root,
            new_name: b"h".to_vec(),
            flags: 0,
        };
        let moved = dir.mutate(op).await;
        assert_eq!(proxy.cuts(), 3);
        assert_eq!(moved.expect("the retried rename answers as its first attempt").ino(), Ok(f.ino));
        assert!(matches!(lookup(b"g").await, Err(Error::Dir(DirError::NotFound))));
        assert_eq!(lookup(b"h").await.unwrap().ino, f.ino);

        // unlink f: done once (not ENOENT), the inode keeps its other name.
        proxy.arm();
        let r = dir.mutate(Mutation::Unlink { parent: root, name: b"f".to_vec() }).await;
        assert_eq!(proxy.cuts(), 4);
        r.expect("the retried unlink answers as its first attempt");
        assert!(matches!(lookup(b"f").await, Err(Error::Dir(DirError::NotFound))));
        assert_eq!(lookup(b"h").await.unwrap().nlink, 1);
        let names = direct.call(|c, ctx| async move { c.readdir(ctx, root, 0, 100).await }).await.unwrap();
        assert_eq!(names.entries.len(), 1, "only h is left");

        // A genuine EEXIST is an answer too, and replays as one.
        proxy.arm();
        let again =
            dir.mutate_attr(Mutation::Create { parent: root, name: b"h".to_vec(), new: new.clone() }).await;
        assert_eq!(proxy.cuts(), 5);
        assert!(matches!(again, Err(Error::Dir(DirError::Exists))), "{again:?}");

        // Control: the same cut on a call without a request id makes the
        // retry report its own first attempt.
        proxy.arm();
        let n = new.clone();
        let plain = dir.call(|c, ctx| {
            let n = n.clone();
            async move { c.create(ctx, root, b"x".to_vec(), n).await }
        });
        assert!(matches!(plain.await, Err(Error::Dir(DirError::Exists))));
        assert_eq!(proxy.cuts(), 6);
        println!("six cut calls retried in {:?}", started.elapsed());
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
        let c = Cluster::start_with(1, 1, B as u32, None, Some(4)).await;
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
                };
                (b.index, Some(chunk))
            })
            .collect();
        let commit = CommitLayout { size: data.len() as u64, mtime: page.attr.mtime, blocks };
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

/// A listener that accepts connections and never answers (a host whose
/// dirsvc hangs, or a cut-off one whose SYN-ACK still came): a TLS
/// handshake with it waits for its timeout.
async fn black_hole() -> (String, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_dirsvc_address_costs_a_dial_stagger_not_a_handshake_timeout() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let (dead, task) = black_hole().await;
        // The hanging address first: dialled first, then the real one
        // after the stagger; the first to connect wins.
        let started = std::time::Instant::now();
        let dir = DirClient::connect(&format!("{dead},{}", c.addr), client_tls()).await.unwrap();
        let took = started.elapsed();
        assert!(
            took < common::transport::HANDSHAKE_TIMEOUT / 2,
            "connecting took {took:?}: the hanging address was waited for"
        );
        assert_eq!(dir.current_addr(), c.addr, "calls go to the address that answered");
        // Later calls keep using it without dialling again.
        let t = std::time::Instant::now();
        dir.call(|c, ctx| async move { c.hello(ctx).await.map(Ok) }).await.unwrap();
        assert!(t.elapsed() < common::transport::HANDSHAKE_TIMEOUT / 2);
        task.abort();
    })
    .await;
}
