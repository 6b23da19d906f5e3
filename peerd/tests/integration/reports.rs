//! Corrupt chunks found by the read path reach dirsvc: reports made while
//! dirsvc is down, or while it refuses them, are delivered once it accepts
//! them; reports cut short by a restart are sent after it; a chunk stored
//! again in good shape before its report went out is not reported.

use super::fake_dir::FakeDirServer;
use super::util::{
    chunk, chunk_file, closed_port, connect, flip_byte, spawn_peer, TEST_TIMEOUT, WAIT_TIMEOUT,
};
use common::config::CHUNK_DEADLINE;
use common::rpc::peer::{Bytes, PeerError, PeerServiceClient};
use common::rpc::Role;
use common::transport::deadline;
use common::ChunkId;
use std::path::Path;
use std::time::Duration;
use testkit::{wait_until_async, within};

/// Puts a chunk, alters it on disk and reads it, so the peer finds it
/// corrupt; returns its id and good bytes.
async fn rot(client: &PeerServiceClient, data_dir: &Path, seed: u64) -> (ChunkId, Vec<u8>) {
    let (id, bytes) = chunk(3000, seed);
    client.put(deadline(CHUNK_DEADLINE), id, Bytes::from(bytes.clone())).await.unwrap().unwrap();
    flip_byte(&chunk_file(data_dir, &id), 10);
    let got = client.get_range(deadline(CHUNK_DEADLINE), id, 0, 10).await.unwrap();
    assert_eq!(got, Err(PeerError::HashMismatch(id)));
    (id, bytes)
}

#[tokio::test]
async fn a_report_made_while_dirsvc_is_down_is_delivered_when_it_comes_up() {
    within(TEST_TIMEOUT, "the test", async {
        let addr = closed_port();
        let dir = tempfile::tempdir().unwrap();
        let peer = spawn_peer(dir.path(), &addr).await;
        let client = connect(&peer, Role::Client).await;
        let (id, _) = rot(&client, dir.path(), 1).await;
        assert_eq!(peer.corrupt_reports_pending(), [id]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(peer.corrupt_reports_pending(), [id], "kept while dirsvc is down");

        let dirsvc = FakeDirServer::start(&addr).await;
        dirsvc.wait_for("the report", |c| c.reported() == [id]).await;
        assert_eq!(dirsvc.dir.calls.lock().unwrap().reports[0].0, peer.id);
        wait_until_async(|| async { peer.corrupt_reports_pending().is_empty() }, WAIT_TIMEOUT)
            .await
            .expect("timed out waiting for the queue to drain");
        peer.shutdown().await;
        dirsvc.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_refused_report_is_retried_until_dirsvc_accepts_it() {
    within(TEST_TIMEOUT, "the test", async {
        let dirsvc = FakeDirServer::start("127.0.0.1:0").await;
        dirsvc.dir.calls.lock().unwrap().refuse_reports = true;
        let dir = tempfile::tempdir().unwrap();
        let peer = spawn_peer(dir.path(), &dirsvc.addr).await;
        let client = connect(&peer, Role::Client).await;
        let (id, _) = rot(&client, dir.path(), 2).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(dirsvc.reported().is_empty());
        assert_eq!(peer.corrupt_reports_pending(), [id]);

        dirsvc.dir.calls.lock().unwrap().refuse_reports = false;
        dirsvc.wait_for("the report", |c| c.reported() == [id]).await;
        wait_until_async(|| async { peer.corrupt_reports_pending().is_empty() }, WAIT_TIMEOUT)
            .await
            .expect("timed out waiting for the queue to drain");
        peer.shutdown().await;
        dirsvc.stop().await;
    })
    .await;
}

#[tokio::test]
async fn reports_cut_short_by_a_restart_are_sent_after_it_but_not_for_chunks_stored_again() {
    within(TEST_TIMEOUT, "the test", async {
        let addr = closed_port();
        let dir = tempfile::tempdir().unwrap();
        let peer = spawn_peer(dir.path(), &addr).await;
        let client = connect(&peer, Role::Client).await;
        let (lost, _) = rot(&client, dir.path(), 3).await;
        let (healed, good) = rot(&client, dir.path(), 4).await;
        // A good copy of `healed` arrives before dirsvc heard of it.
        client.put(deadline(CHUNK_DEADLINE), healed, Bytes::from(good)).await.unwrap().unwrap();
        assert_eq!(peer.corrupt_reports_pending(), [lost]);
        peer.shutdown().await;

        let dirsvc = FakeDirServer::start(&addr).await;
        let peer = spawn_peer(dir.path(), &addr).await;
        dirsvc.wait_for("the report after the restart", |c| !c.reports.is_empty()).await;
        // Give a wrong extra report time to show up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(dirsvc.reported(), [lost]);
        peer.shutdown().await;
        dirsvc.stop().await;
    })
    .await;
}
