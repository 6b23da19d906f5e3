//! The service over real TCP and mutual TLS on 127.0.0.1: requests through
//! `common::transport::dir_client`, peers (each with its own certificate)
//! and placement, liveness, restart, and hostile bytes on a raw socket.

use super::support::*;
use common::rpc::dir::{
    rename_flags, CommitLayout, DirError, DirServiceClient, PeerLabels, PeerRegistration, PeerState,
    PeerUsage, StoredChunk,
};
use common::rpc::{Role, PROTOCOL_VERSION};
use common::time::Timestamp;
use common::{ChunkId, PeerId};
use dirsvc::{DirsvcConfig, DirsvcHandle};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tarpc::context;
use testkit::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const GIB: u64 = 1 << 30;

async fn start(dir: &Path, down_after: Duration) -> DirsvcHandle {
    dirsvc::spawn(DirsvcConfig {
        peer_suspect_after: down_after,
        peer_down_after: down_after,
        heartbeat_persist_every: Duration::from_millis(100),
        ..config(dir)
    })
    .await
    .unwrap()
}

/// A client of `h` (a fresh client certificate).
async fn client(h: &DirsvcHandle) -> DirServiceClient {
    testkit::dir_client_as(&h.addr.to_string(), Role::Client).await.0
}

fn usage(free: u64) -> PeerUsage {
    PeerUsage {
        capacity_bytes: 4 * GIB,
        free_bytes: free,
        used_bytes: 4 * GIB - free,
        chunks: 0,
        fs: None,
        scrub: None,
    }
}

/// Registers a fresh peer (its own certificate and connection) at
/// `127.0.0.1:<9000 + k>` with `free` bytes free.
async fn register(h: &DirsvcHandle, k: u8, free: u64) -> TestPeer {
    let p = TestPeer::connect(&h.addr.to_string()).await;
    let reg = p.registration(&format!("127.0.0.1:{}", 9000 + u16::from(k)), usage(free));
    p.c.register_peer(context::current(), reg).await.unwrap().unwrap();
    p
}

#[tokio::test]
async fn namespace_calls_work_over_tcp_and_domain_errors_pass_through() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tmp();
        let h = start(dir.path(), Duration::from_secs(10)).await;
        let c = client(&h).await;
        let ctx = context::current;
        assert_eq!(c.hello(ctx()).await.unwrap(), PROTOCOL_VERSION);
        assert_eq!(c.volume_info(ctx()).await.unwrap(), Err(DirError::NotInitialized));
        assert_eq!(c.statfs(ctx()).await.unwrap(), Err(DirError::NotInitialized));
        assert_eq!(c.placement(ctx(), 1, 1).await.unwrap(), Err(DirError::NotInitialized));
        c.init_volume(ctx(), volume(2), 0, 0).await.unwrap().unwrap();
        assert_eq!(c.init_volume(ctx(), volume(2), 0, 0).await.unwrap(), Err(DirError::AlreadyInitialized));
        let d = c.mkdir(ctx(), ROOT, n("d"), 0o755, 0, 0).await.unwrap().unwrap();
        let f = c.create(ctx(), d.ino, n("f"), file()).await.unwrap().unwrap();
        c.create(ctx(), d.ino, n("g"), file()).await.unwrap().unwrap();
        assert_eq!(
            c.rename(ctx(), d.ino, n("f"), d.ino, n("g"), rename_flags::NOREPLACE).await.unwrap(),
            Err(DirError::Exists)
        );
        c.rename(ctx(), d.ino, n("f"), ROOT, n("f2"), 0).await.unwrap().unwrap();
        assert_eq!(c.lookup(ctx(), ROOT, n("f2")).await.unwrap().unwrap().ino, f.ino);
        let page = c.readdir(ctx(), ROOT, 0, 10).await.unwrap().unwrap();
        let names: Vec<Vec<u8>> = page.entries.into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec![n("d"), n("f2")]);
        assert!(page.eof);
        let st = c.statfs(ctx()).await.unwrap().unwrap();
        assert_eq!((st.inodes, st.live_peers, st.total_bytes), (4, 0, 0));
        assert_eq!(c.getattr(ctx(), common::InodeId(4242)).await.unwrap(), Err(DirError::NotFound));
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn placement_spreads_chunks_over_peers_and_reports_too_few() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tmp();
        let h = start(dir.path(), Duration::from_secs(10)).await;
        let c = client(&h).await;
        let ctx = context::current;
        c.init_volume(ctx(), volume(2), 0, 0).await.unwrap().unwrap();
        let first = register(&h, 1, GIB).await;
        assert_eq!(
            c.placement(ctx(), 1, 1 << 20).await.unwrap(),
            Err(DirError::NoPeers { needed: 2, live: 1 })
        );
        for k in 2..=4 {
            register(&h, k, GIB).await;
        }
        let sets = c.placement(ctx(), 8, 1 << 20).await.unwrap().unwrap();
        assert_eq!(sets.len(), 8);
        for set in &sets {
            assert_eq!(set.len(), 2);
            assert_ne!(set[0].id, set[1].id);
            assert!(set.iter().all(|p| p.live && p.addr.starts_with("127.0.0.1:")));
        }
        // Over many chunks every peer gets some (the choice is random,
        // weighted by free space; see the liveness tests for proportions).
        let sets = c.placement(ctx(), 400, 1 << 10).await.unwrap().unwrap();
        let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
        for p in sets.iter().flatten() {
            *per_peer.entry(p.id).or_default() += 1;
        }
        assert_eq!(per_peer.len(), 4, "{per_peer:?}");
        assert!(per_peer.values().all(|&k| k > 100), "{per_peer:?}");
        first.c.heartbeat(ctx(), first.id, usage(2 * GIB)).await.unwrap().unwrap();
        // Chunks larger than any peer's free space cannot be placed: enough
        // peers are live, none has room.
        assert_eq!(
            c.placement(ctx(), 1, 3 * GIB).await.unwrap(),
            Err(DirError::PeersFull { needed: 2, with_room: 0, live: 4 })
        );
        assert!(matches!(c.placement(ctx(), 1_000_000, 1).await.unwrap(), Err(DirError::Invalid(_))));
        // A peer that never registered is told to.
        let stranger = TestPeer::connect(&h.addr.to_string()).await;
        assert_eq!(
            stranger.c.heartbeat(ctx(), stranger.id, usage(1)).await.unwrap(),
            Err(DirError::NotFound)
        );
        assert!(matches!(
            stranger
                .c
                .register_peer(
                    ctx(),
                    PeerRegistration {
                        id: stranger.id,
                        addr: "nonsense".into(),
                        usage: usage(1),
                        labels: PeerLabels::default()
                    }
                )
                .await
                .unwrap(),
            Err(DirError::Invalid(_))
        ));
        let long = PeerLabels { host: "h".repeat(300), zone: String::new() };
        assert!(matches!(
            stranger
                .c
                .register_peer(
                    ctx(),
                    PeerRegistration {
                        id: stranger.id,
                        addr: "127.0.0.1:1".into(),
                        usage: usage(1),
                        labels: long
                    }
                )
                .await
                .unwrap(),
            Err(DirError::Invalid(_))
        ));
        let peers = c.list_peers(ctx()).await.unwrap().unwrap();
        assert_eq!(peers.len(), 4);
        assert!(peers.iter().all(|p| p.loc.live && p.state == PeerState::Up));
        let st = c.statfs(ctx()).await.unwrap().unwrap();
        assert_eq!((st.live_peers, st.total_bytes, st.free_bytes), (4, 8 * GIB, 5 * GIB / 2));
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn silent_peers_go_down_and_replicas_list_live_ones_first() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tmp();
        let h = start(dir.path(), Duration::from_millis(800)).await;
        let c = client(&h).await;
        let ctx = context::current;
        c.init_volume(ctx(), volume(2), 0, 0).await.unwrap().unwrap();
        let pa = register(&h, 1, GIB).await;
        let pb = register(&h, 2, GIB).await;
        let (a, b) = (pa.id, pb.id);
        let f = c.create(ctx(), ROOT, n("f"), file()).await.unwrap().unwrap().ino;
        let chunk = StoredChunk {
            id: ChunkId::of(b"x"),
            len: 60,
            replicas: vec![a, b],
            epoch: 0,
            mac: [0x4d; 32],
            inline: None,
        };
        c.commit_layout(
            ctx(),
            f,
            CommitLayout {
                held_ms: 0,
                attrs: Default::default(),
                size: 12,
                mtime: Timestamp::now(),
                blocks: vec![(0, Some(chunk))],
            },
        )
        .await
        .unwrap()
        .unwrap();
        let before = c.get_layout(ctx(), f, 0, 10).await.unwrap().unwrap();
        assert!(before.blocks[0].replicas.iter().all(|p| p.live));

        tokio::time::sleep(Duration::from_millis(1000)).await;
        pb.c.heartbeat(ctx(), b, usage(GIB)).await.unwrap().unwrap();
        let page = c.get_layout(ctx(), f, 0, 10).await.unwrap().unwrap();
        let reps = &page.blocks[0].replicas;
        assert_eq!(reps.iter().map(|p| (p.id, p.live)).collect::<Vec<_>>(), vec![(b, true), (a, false)]);
        let locs = c
            .chunk_locations(ctx(), vec![ChunkId::of(b"nothing"), ChunkId::of(b"x")])
            .await
            .unwrap()
            .unwrap();
        assert!(locs[0].is_empty());
        assert_eq!(&locs[1], reps);
        assert_eq!(c.placement(ctx(), 1, 10).await.unwrap(), Err(DirError::NoPeers { needed: 2, live: 1 }));
        assert_eq!(c.statfs(ctx()).await.unwrap().unwrap().live_peers, 1);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn state_survives_a_restart_of_the_service() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tmp();
        let h = start(dir.path(), Duration::from_secs(10)).await;
        let c = client(&h).await;
        let ctx = context::current;
        c.init_volume(ctx(), volume(3), 0, 0).await.unwrap().unwrap();
        let d = c.mkdir(ctx(), ROOT, n("kept"), 0o700, 5, 6).await.unwrap().unwrap();
        let p = register(&h, 1, GIB).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        p.c.heartbeat(ctx(), p.id, usage(GIB / 2)).await.unwrap().unwrap();
        drop(c);
        h.shutdown().await;

        let h = start(dir.path(), Duration::from_secs(10)).await;
        let c = client(&h).await;
        assert_eq!(c.volume_info(ctx()).await.unwrap().unwrap(), volume(3));
        let got = c.lookup(ctx(), ROOT, n("kept")).await.unwrap().unwrap();
        assert_eq!(got, d);
        let peers = c.list_peers(ctx()).await.unwrap().unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].loc.id, p.id);
        assert_eq!(peers[0].usage, usage(GIB / 2), "the persisted heartbeat is back");
        assert!(peers[0].loc.live);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn concurrent_clients_all_get_their_entries() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tmp();
        let h = start(dir.path(), Duration::from_secs(10)).await;
        let c = client(&h).await;
        c.init_volume(context::current(), volume(2), 0, 0).await.unwrap().unwrap();
        let mut tasks = Vec::new();
        for t in 0..6 {
            let addr = h.addr.to_string();
            tasks.push(tokio::spawn(async move {
                let (c, _) = testkit::dir_client_as(&addr, Role::Client).await;
                for i in 0..40 {
                    c.mkdir(context::current(), ROOT, n(&format!("t{t}-{i}")), 0o755, 0, 0)
                        .await
                        .unwrap()
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let root = c.getattr(context::current(), ROOT).await.unwrap().unwrap();
        assert_eq!(root.nlink, 2 + 240);
        let mut count = 0;
        let mut after = 0;
        loop {
            let page = c.readdir(context::current(), ROOT, after, 50).await.unwrap().unwrap();
            count += page.entries.len();
            if page.eof {
                break;
            }
            after = page.entries.last().unwrap().cookie;
        }
        assert_eq!(count, 240);
        h.shutdown().await;
    })
    .await;
}

/// Writes `bytes` on a fresh TLS connection (as a client of the cluster,
/// so the bytes reach the framing and decoding) and expects the server to
/// close it (read returns 0 or an error) within a few seconds.
async fn expect_closed_after(addr: &str, bytes: &[u8]) {
    let tls = testkit::pki().node(Role::Client);
    let expect = common::tls::Expect::Role(Role::Dirsvc);
    let mut s = common::transport::connect(addr, &tls, expect).await.unwrap();
    // The server may close while we are still writing: that is fine too.
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(r.is_ok(), "connection still open 5 s after {} bad bytes", bytes.len());
}

/// A framed `hello` request whose deadline is `u64::MAX` seconds away.
fn far_deadline_request() -> Vec<u8> {
    let msg: tarpc::ClientMessage<common::rpc::dir::DirServiceRequest> =
        tarpc::ClientMessage::Request(tarpc::Request {
            context: context::current(),
            id: 1,
            message: common::rpc::dir::DirServiceRequest::Hello {},
        });
    let body = common::wire::encode(&msg).unwrap();
    // Byte 0 is the variant; then the deadline's seconds as a varint of at
    // most 9 bytes (a marker of 251 + n means 2^(n+1) bytes follow).
    let secs_len = match body[1] {
        0..=250 => 1,
        251 => 3,
        252 => 5,
        _ => 9,
    };
    let mut bad = vec![body[0], 253];
    bad.extend_from_slice(&u64::MAX.to_le_bytes());
    bad.extend_from_slice(&body[1 + secs_len..]);
    let mut framed = (bad.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&bad);
    framed
}

#[tokio::test]
async fn garbage_and_oversize_frames_close_only_their_connection() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tmp();
        let h = start(dir.path(), Duration::from_secs(10)).await;
        let addr = h.addr.to_string();
        let good = client(&h).await;
        good.init_volume(context::current(), volume(2), 0, 0).await.unwrap().unwrap();

        // A well-framed message that is not a tarpc request.
        let mut garbage = 16u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff; 16]);
        expect_closed_after(&addr, &garbage).await;
        // A frame announcing more than the limit.
        let oversize = (common::config::MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
        expect_closed_after(&addr, &oversize).await;
        // A complete frame of pseudo-random noise.
        let mut noise = 4092u32.to_be_bytes().to_vec();
        noise.extend((0..4092u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8));
        expect_closed_after(&addr, &noise).await;
        // A valid request whose deadline is u64::MAX seconds away: tarpc's
        // `Instant::now() + deadline` panicked on it (aborting a release
        // build); the frame codec refuses it first.
        expect_closed_after(&addr, &far_deadline_request()).await;

        assert_eq!(good.hello(context::current()).await.unwrap(), PROTOCOL_VERSION);
        assert!(good.getattr(context::current(), ROOT).await.unwrap().is_ok());
        let fresh = client(&h).await;
        assert!(fresh.getattr(context::current(), ROOT).await.unwrap().is_ok());
        h.shutdown().await;
    })
    .await;
}
