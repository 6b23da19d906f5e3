//! Who may call what on a peer, each against a real mutual-TLS listener:
//! clients, admins and peers store and read chunks; only dirsvc deletes,
//! lists and orders copies, and only dirsvc and admins ask for usage;
//! certificates of another cluster and expired ones fail the handshake; a
//! copy is fetched only from a source whose certificate names the peer
//! dirsvc named; a node revoked at dirsvc is refused by the peer within
//! seconds, through the peer's heartbeat; and a thousand hostile
//! connections neither stop the peer nor stay open.

use super::util::{chunk, closed_port, connect, peer_config, spawn_peer, TEST_TIMEOUT};
use common::config::CHUNK_DEADLINE;
use common::rpc::peer::{Bytes, PeerError, PeerService, PeerServiceClient};
use common::rpc::{PeerLoc, Role};
use common::tls::Tls;
use common::transport::{deadline, ServerLimits};
use common::{ChunkId, PeerId};
use peerd::PeerdHandle;
use std::fmt::Debug;
use std::time::{Duration, Instant};
use testkit::within;
use testkit::TestPki;

/// The reason of a call refused as `Unauthorized`; panics on anything else.
fn unauthorized<T: Debug, E: Debug>(what: &str, r: Result<Result<T, PeerError>, E>) -> String {
    match r {
        Ok(Err(PeerError::Unauthorized(why))) => why,
        other => panic!("{what}: expected Unauthorized, got {other:?}"),
    }
}

/// Whether the peer refuses `tls` in the TLS handshake (in TLS 1.3 that
/// may show only at the first call: see dirsvc's auth tests).
async fn handshake_refused(peer: &PeerdHandle, tls: &Tls) -> bool {
    match common::transport::peer_client(&peer.addr.to_string(), tls, peer.id).await {
        Err(_) => true,
        Ok(c) => c.has(deadline(CHUNK_DEADLINE), vec![]).await.is_err(),
    }
}

fn loc(p: &PeerdHandle) -> PeerLoc {
    PeerLoc { id: p.id, addr: p.addr.to_string(), live: true }
}

/// What each role may do: the four chunk calls, then the dirsvc-only and
/// usage calls.
async fn check_role(c: &PeerServiceClient, role: Role, source: &PeerLoc) {
    let (id, bytes) = chunk(5000, 99);
    let ctx = || deadline(CHUNK_DEADLINE);
    let readers = matches!(role, Role::Client | Role::Admin | Role::Peer);
    let put = c.put(ctx(), id, Bytes::from(bytes.clone())).await;
    let get = c.get(ctx(), id).await;
    let range = c.get_range(ctx(), id, 0, 10).await;
    let has = c.has(ctx(), vec![id]).await;
    if readers {
        put.unwrap().unwrap();
        assert_eq!(get.unwrap().unwrap().into_vec(), bytes, "{role}");
        assert_eq!(range.unwrap().unwrap().into_vec(), &bytes[..10], "{role}");
        assert_eq!(has.unwrap().unwrap(), [true], "{role}");
    } else {
        unauthorized(&format!("put by {role}"), put);
        unauthorized(&format!("get by {role}"), get);
        unauthorized(&format!("get_range by {role}"), range);
        unauthorized(&format!("has by {role}"), has);
    }
    let list = c.list_chunks(ctx(), None, 10).await;
    let fetch = c.fetch_from(ctx(), ChunkId::of(b"elsewhere"), source.clone()).await;
    let usage = c.usage(ctx()).await;
    if role == Role::Dirsvc {
        assert!(!list.unwrap().unwrap().is_empty());
        // Allowed: it fails at the source, which lacks the chunk.
        assert!(matches!(fetch, Ok(Err(PeerError::SourceFailed(_)))), "{fetch:?}");
    } else {
        unauthorized(&format!("list_chunks by {role}"), list);
        unauthorized(&format!("fetch_from by {role}"), fetch);
    }
    if matches!(role, Role::Dirsvc | Role::Admin) {
        assert!(usage.unwrap().unwrap().chunks >= 1);
    } else {
        unauthorized(&format!("usage by {role}"), usage);
    }
    let delete = c.delete(ctx(), id).await;
    if role == Role::Dirsvc {
        delete.unwrap().unwrap();
    } else {
        unauthorized(&format!("delete by {role}"), delete);
    }
}

#[tokio::test]
async fn only_dirsvc_deletes_lists_and_orders_copies_and_only_dirsvc_and_admins_ask_usage() {
    within(TEST_TIMEOUT, "the test", async {
        let dirsvc = closed_port();
        let (dir, src_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let peer = spawn_peer(dir.path(), &dirsvc).await;
        let src = spawn_peer(src_dir.path(), &dirsvc).await;
        let (held, held_bytes) = chunk(3000, 1);
        let client = connect(&peer, Role::Client).await;
        client.put(deadline(CHUNK_DEADLINE), held, Bytes::from(held_bytes.clone())).await.unwrap().unwrap();
        for role in [Role::Client, Role::Admin, Role::Peer, Role::Dirsvc] {
            check_role(&connect(&peer, role).await, role, &loc(&src)).await;
        }
        // Nothing a refused call asked for happened.
        let back = client.get(deadline(CHUNK_DEADLINE), held).await.unwrap().unwrap();
        assert_eq!(back.into_vec(), held_bytes);
        peer.shutdown().await;
        src.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn another_clusters_and_expired_certificates_fail_the_handshake_and_clients_check_the_peer() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tempfile::tempdir().unwrap();
        let peer = spawn_peer(dir.path(), &closed_port()).await;
        let other = TestPki::new();
        let addr = peer.addr.to_string();
        for role in [Role::Client, Role::Admin, Role::Peer, Role::Dirsvc] {
            // The peer's own check, with a client that checks nothing.
            let a = addr.as_str();
            let refuses =
                |f: common::pki::NodeFiles| async move { testkit::hostile::peer_refuses(a, &f).await };
            assert!(refuses(other.files(role)).await, "another cluster's {role}");
            assert!(refuses(testkit::pki().expired_files(role)).await, "an expired {role}");
            assert!(!refuses(testkit::pki().files(role)).await, "a valid {role} (the control)");
            // And through the real client.
            assert!(handshake_refused(&peer, &other.node(role)).await, "another cluster's {role}");
            assert!(handshake_refused(&peer, &testkit::pki().expired(role)).await, "an expired {role}");
            assert!(!handshake_refused(&peer, &testkit::pki().node(role)).await, "a valid {role}");
        }
        // A client that expects another peer at this address refuses it.
        let me = testkit::pki().node(Role::Client);
        assert!(common::transport::peer_client(&addr, &me, PeerId::random()).await.is_err());
        peer.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_copy_is_fetched_only_from_the_peer_dirsvc_named() {
    within(TEST_TIMEOUT, "the test", async {
        let dirsvc = closed_port();
        let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let src = spawn_peer(src_dir.path(), &dirsvc).await;
        let dst = spawn_peer(dst_dir.path(), &dirsvc).await;
        let (id, bytes) = chunk(8000, 2);
        let src_client = connect(&src, Role::Client).await;
        src_client.put(deadline(CHUNK_DEADLINE), id, Bytes::from(bytes.clone())).await.unwrap().unwrap();
        let order = connect(&dst, Role::Dirsvc).await;
        let fetch = |source: PeerLoc| {
            let order = order.clone();
            async move { order.fetch_from(deadline(CHUNK_DEADLINE), id, source).await.unwrap() }
        };
        let at_src = |id: PeerId| PeerLoc { id, addr: src.addr.to_string(), live: true };

        // The source's address, but another peer's id (dst's own, and a
        // stranger's): its certificate does not name that peer.
        for wrong in [dst.id, PeerId::random()] {
            let r = fetch(at_src(wrong)).await;
            assert!(matches!(&r, Err(PeerError::SourceFailed(_))), "{r:?}");
        }
        // A server whose certificate is the named node's, but a client's
        // certificate, or one of another cluster: not a peer of this
        // cluster.
        for (what, tls) in [
            ("a client", testkit::pki().node(Role::Client)),
            ("another cluster's peer", TestPki::new().node(Role::Peer)),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let config = tls.server_config(false).unwrap();
            let stop = tokio_util::sync::CancellationToken::new();
            let impostor = connect(&src, Role::Peer).await;
            let serve = tokio::spawn({
                let stop = stop.clone();
                // It would even relay the real bytes.
                let relay = Relay(impostor);
                async move {
                    common::serve_tarpc!(
                        listener,
                        config,
                        ServerLimits::default(),
                        std::sync::Arc::new(common::transport::Connections::default()),
                        stop,
                        move |_caller| relay.clone()
                    )
                }
            });
            let r = fetch(PeerLoc { id: PeerId::from(tls.node()), addr, live: true }).await;
            assert!(matches!(&r, Err(PeerError::SourceFailed(_))), "{what}: {r:?}");
            stop.cancel();
            serve.await.unwrap();
        }
        let dst_client = connect(&dst, Role::Client).await;
        assert_eq!(dst_client.has(deadline(CHUNK_DEADLINE), vec![id]).await.unwrap().unwrap(), [false]);
        // The right one.
        fetch(at_src(src.id)).await.unwrap();
        let back = dst_client.get(deadline(CHUNK_DEADLINE), id).await.unwrap().unwrap();
        assert_eq!(back.into_vec(), bytes);
        src.shutdown().await;
        dst.shutdown().await;
    })
    .await;
}

/// A `PeerService` that answers `get` with what a real peer answers it
/// (the other calls are refused): an impostor that has the right bytes.
#[derive(Clone)]
struct Relay(PeerServiceClient);

impl PeerService for Relay {
    async fn put(self, _: tarpc::context::Context, _: ChunkId, _: Bytes) -> Result<(), PeerError> {
        Err(PeerError::Internal("relay".into()))
    }
    async fn get(self, ctx: tarpc::context::Context, id: ChunkId) -> Result<Bytes, PeerError> {
        self.0.get(ctx, id).await.map_err(|e| PeerError::Internal(e.to_string()))?
    }
    async fn get_range(
        self,
        _: tarpc::context::Context,
        _: ChunkId,
        _: u64,
        _: u32,
    ) -> Result<Bytes, PeerError> {
        Err(PeerError::Internal("relay".into()))
    }
    async fn has(self, _: tarpc::context::Context, _: Vec<ChunkId>) -> Result<Vec<bool>, PeerError> {
        Err(PeerError::Internal("relay".into()))
    }
    async fn delete(self, _: tarpc::context::Context, _: ChunkId) -> Result<(), PeerError> {
        Err(PeerError::Internal("relay".into()))
    }
    async fn usage(self, _: tarpc::context::Context) -> Result<common::rpc::dir::PeerUsage, PeerError> {
        Err(PeerError::Internal("relay".into()))
    }
    async fn fetch_from(self, _: tarpc::context::Context, _: ChunkId, _: PeerLoc) -> Result<(), PeerError> {
        Err(PeerError::Internal("relay".into()))
    }
    async fn list_chunks(
        self,
        _: tarpc::context::Context,
        _: Option<ChunkId>,
        _: u32,
    ) -> Result<Vec<(ChunkId, i64)>, PeerError> {
        Err(PeerError::Internal("relay".into()))
    }

    async fn get_segment(
        self,
        _: tarpc::context::Context,
        _: ChunkId,
        _: u32,
    ) -> Result<common::rpc::peer::Bytes, PeerError> {
        Err(PeerError::Internal("relay".into()))
    }
}

#[tokio::test]
async fn a_node_revoked_at_dirsvc_is_refused_by_a_peer_within_seconds_and_after_its_restart() {
    within(TEST_TIMEOUT, "the test", async {
        // A real dirsvc and a real peer with the default heartbeat.
        let dir = tempfile::tempdir().unwrap();
        let dirsvc = dirsvc::spawn(dirsvc::DirsvcConfig {
            listen: "127.0.0.1:0".into(),
            db_path: dir.path().join("dirsvc.redb"),
            tls: Some(testkit::pki().node(Role::Dirsvc)),
            ca: Some(testkit::pki().ca().clone()),
            ..dirsvc::DirsvcConfig::default()
        })
        .await
        .unwrap();
        let dirsvc_addr = dirsvc.addr.to_string();
        let data = tempfile::tempdir().unwrap();
        let interval = common::config::HEARTBEAT_INTERVAL;
        let peer = peerd::spawn(peerd::PeerdConfig {
            heartbeat_interval: interval,
            ..peer_config(data.path(), &dirsvc_addr)
        })
        .await
        .unwrap();
        let (admin, _) = testkit::dir_client_as(&dirsvc_addr, Role::Admin).await;
        // Registered: the peer heartbeats.
        let registered = Instant::now();
        while !admin
            .list_peers(tarpc::context::current())
            .await
            .unwrap()
            .unwrap()
            .iter()
            .any(|p| p.loc.id == peer.id)
        {
            assert!(registered.elapsed() < Duration::from_secs(10), "the peer never registered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let lost = testkit::pki().node(Role::Client);
        let kept = testkit::pki().node(Role::Client);
        let addr = peer.addr.to_string();
        let held = testkit::peer_client(&addr, &lost, peer.id).await;
        let (id, bytes) = chunk(1000, 3);
        held.put(deadline(CHUNK_DEADLINE), id, Bytes::from(bytes)).await.unwrap().unwrap();

        let revoked = Instant::now();
        admin.revoke(tarpc::context::current(), lost.node(), "test".into()).await.unwrap().unwrap();
        while !handshake_refused(&peer, &lost).await {
            assert!(
                revoked.elapsed() < interval * 2 + Duration::from_secs(2),
                "the peer still accepts the node"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = revoked.elapsed();
        eprintln!("a revocation reached the peer in {took:?} (heartbeat every {interval:?})");
        // Its open connection was closed too; others are served.
        assert!(
            held.get(deadline(CHUNK_DEADLINE), id).await.is_err(),
            "the revoked node's connection lives on"
        );
        assert!(!handshake_refused(&peer, &kept).await);
        let c = testkit::peer_client(&addr, &kept, peer.id).await;
        assert_eq!(c.has(deadline(CHUNK_DEADLINE), vec![id]).await.unwrap().unwrap(), [true]);

        // The peer keeps the list: restarted while dirsvc is down, it still
        // refuses the node from its first connection on.
        dirsvc.shutdown().await;
        peer.shutdown().await;
        let peer = peerd::spawn(peerd::PeerdConfig {
            heartbeat_interval: interval,
            ..peer_config(data.path(), &dirsvc_addr)
        })
        .await
        .unwrap();
        assert!(handshake_refused(&peer, &lost).await, "a restarted peer forgot the revocation");
        assert!(!handshake_refused(&peer, &kept).await);
        peer.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_thousand_garbage_and_half_open_connections_neither_stop_a_peer_nor_stay_open() {
    within(TEST_TIMEOUT, "the test", async {
        let deadline_ = Duration::from_secs(1);
        let data = tempfile::tempdir().unwrap();
        let peer = peerd::spawn(peerd::PeerdConfig {
            limits: ServerLimits { handshake_timeout: deadline_, ..ServerLimits::default() },
            ..peer_config(data.path(), &closed_port())
        })
        .await
        .unwrap();
        let addr = peer.addr.to_string();
        let client = connect(&peer, Role::Client).await;
        let (id, bytes) = chunk(4000, 4);
        client.put(deadline(CHUNK_DEADLINE), id, Bytes::from(bytes.clone())).await.unwrap().unwrap();
        let baseline = testkit::hostile::open_server_sockets(peer.addr.port());

        let start = Instant::now();
        let (held, failed) = testkit::hostile::connections(&addr, 1000).await;
        let opened = start.elapsed();
        let back = client.get(deadline(CHUNK_DEADLINE), id).await.unwrap().unwrap();
        assert_eq!(back.into_vec(), bytes, "an open connection keeps working through the attack");
        let mut served_after = None;
        while served_after.is_none() {
            assert!(
                start.elapsed() < deadline_ * 5,
                "no new client served {:?} into the attack",
                start.elapsed()
            );
            let tls = testkit::pki().node(Role::Client);
            if let Ok(c) = common::transport::peer_client(&addr, &tls, peer.id).await {
                if let Ok(Ok(h)) = c.has(deadline(CHUNK_DEADLINE), vec![id]).await {
                    assert_eq!(h, [true]);
                    served_after = Some(start.elapsed());
                }
            }
            if served_after.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let limit = baseline + 2;
        let mut left = testkit::hostile::open_server_sockets(peer.addr.port());
        while left > limit {
            assert!(
                start.elapsed() < deadline_ * 5,
                "{left} sockets still open on the peer's side (baseline {baseline})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            left = testkit::hostile::open_server_sockets(peer.addr.port());
        }
        eprintln!(
            "1000 hostile connections ({} held, {failed} not connected) opened in {opened:?}; \
             a new client served after {:?}; the peer's open sockets {left} (baseline {baseline}) after {:?}",
            held.len(),
            served_after.unwrap(),
            start.elapsed()
        );
        drop(held);
        client.has(deadline(CHUNK_DEADLINE), vec![id]).await.unwrap().unwrap();
        peer.shutdown().await;
    })
    .await;
}
