//! The peer registers with dirsvc (with its host and zone labels) and
//! heartbeats with its current usage; it registers again when dirsvc forgets
//! it or restarts, and waits for a dirsvc that is not up yet. dirsvc is a
//! recording test double here.

use super::fake_dir::FakeDirServer;
use super::util::{chunk, closed_port, connect, peer_config, spawn_peer, TEST_TIMEOUT};
use common::config::CHUNK_DEADLINE;
use common::rpc::dir::PeerLabels;
use common::rpc::peer::Bytes;
use common::rpc::Role;
use common::transport::deadline;
use std::time::Duration;
use testkit::within;

#[tokio::test]
async fn registers_then_heartbeats_with_current_usage() {
    within(TEST_TIMEOUT, "the test", async {
        let dirsvc = FakeDirServer::start("127.0.0.1:0").await;
        let data = tempfile::tempdir().unwrap();
        let peer = spawn_peer(data.path(), &dirsvc.addr).await;

        dirsvc
            .wait_for("registration and 2 heartbeats", |c| {
                !c.registrations.is_empty() && c.heartbeats.len() >= 2
            })
            .await;
        let regs = dirsvc.registrations();
        assert_eq!(regs.len(), 1, "registers once while dirsvc keeps it");
        assert_eq!(regs[0].id, peer.id);
        assert_eq!(regs[0].addr, peer.addr.to_string());
        assert_eq!(regs[0].labels, PeerLabels::default(), "no labels unless configured");
        assert_eq!(regs[0].usage.chunks, 0);
        assert!(regs[0].usage.capacity_bytes > 0);
        assert!(dirsvc.heartbeats().iter().all(|(id, _)| *id == peer.id));

        // A stored chunk shows up in a later heartbeat's usage.
        let client = connect(&peer, Role::Client).await;
        let (id, bytes) = chunk(12_345, 1);
        client.put(deadline(CHUNK_DEADLINE), id, Bytes::from(bytes)).await.unwrap().unwrap();
        dirsvc
            .wait_for("a heartbeat with the new chunk", |c| {
                c.heartbeats.last().is_some_and(|(_, u)| u.chunks == 1 && u.used_bytes == 12_345)
            })
            .await;
        peer.shutdown().await;

        // After shutdown the heartbeats stop.
        let n = dirsvc.heartbeats().len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(dirsvc.heartbeats().len(), n);
        dirsvc.stop().await;
    })
    .await;
}

#[tokio::test]
async fn heartbeat_not_found_leads_to_a_new_registration() {
    within(TEST_TIMEOUT, "the test", async {
        let dirsvc = FakeDirServer::start("127.0.0.1:0").await;
        let data = tempfile::tempdir().unwrap();
        let peer = spawn_peer(data.path(), &dirsvc.addr).await;
        dirsvc.wait_for("first heartbeat", |c| !c.heartbeats.is_empty()).await;
        dirsvc.dir.calls.lock().unwrap().forget = true;
        dirsvc.wait_for("second registration", |c| c.registrations.len() == 2).await;
        let before = dirsvc.heartbeats().len();
        dirsvc.wait_for("heartbeats resume", |c| c.heartbeats.len() > before).await;
        peer.shutdown().await;
        dirsvc.stop().await;
    })
    .await;
}

#[tokio::test]
async fn waits_for_a_late_dirsvc_and_re_registers_after_its_restart() {
    within(TEST_TIMEOUT, "the test", async {
        let addr = closed_port();
        let data = tempfile::tempdir().unwrap();
        let peer = spawn_peer(data.path(), &addr).await;
        // dirsvc is down for a while; the peer keeps serving and retrying.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let admin = connect(&peer, Role::Admin).await;
        admin.usage(deadline(CHUNK_DEADLINE)).await.unwrap().unwrap();

        let dirsvc = FakeDirServer::start(&addr).await;
        dirsvc
            .wait_for("registration with the late dirsvc", |c| {
                !c.registrations.is_empty() && !c.heartbeats.is_empty()
            })
            .await;
        assert_eq!(dirsvc.registrations()[0].id, peer.id);
        dirsvc.stop().await;

        // A restarted dirsvc (new, empty state) on the same address.
        let dirsvc = FakeDirServer::start(&addr).await;
        dirsvc
            .wait_for("registration with the restarted dirsvc", |c| {
                !c.registrations.is_empty() && !c.heartbeats.is_empty()
            })
            .await;
        assert_eq!(dirsvc.registrations()[0].addr, peer.addr.to_string());
        peer.shutdown().await;
        dirsvc.stop().await;
    })
    .await;
}

#[tokio::test]
async fn host_and_zone_labels_arrive_in_every_registration() {
    within(TEST_TIMEOUT, "the test", async {
        let dirsvc = FakeDirServer::start("127.0.0.1:0").await;
        let data = tempfile::tempdir().unwrap();
        let peer = peerd::spawn(peerd::PeerdConfig {
            host_label: "rack1-node7".into(),
            zone_label: "room-b".into(),
            ..peer_config(data.path(), &dirsvc.addr)
        })
        .await
        .unwrap();
        let expected = PeerLabels { host: "rack1-node7".into(), zone: "room-b".into() };
        dirsvc.wait_for("first heartbeat", |c| !c.heartbeats.is_empty()).await;
        // A forgetful dirsvc gets the labels again with the new registration.
        dirsvc.dir.calls.lock().unwrap().forget = true;
        dirsvc.wait_for("second registration", |c| c.registrations.len() == 2).await;
        let regs = dirsvc.registrations();
        assert!(regs.iter().all(|r| r.labels == expected), "{regs:?}");
        peer.shutdown().await;
        dirsvc.stop().await;
    })
    .await;
}
