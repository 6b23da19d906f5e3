//! Garbage and oversize frames on one connection close that connection only:
//! the daemon keeps serving every other client. The frames travel inside a
//! TLS session of a client of the cluster, so they reach the framing and
//! decoding (bytes that are not TLS are the flood test's, in `auth`).

use super::util::{chunk, closed_port, connect, spawn_peer, TEST_TIMEOUT};
use common::config::{CHUNK_DEADLINE, MAX_FRAME_BYTES};
use common::rpc::peer::{Bytes, PeerServiceClient};
use common::rpc::Role;
use common::tls::Expect;
use common::transport::deadline;
use common::{ChunkId, PeerId};
use std::net::SocketAddr;
use testkit::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `bytes` on a fresh TLS connection (as a client) to the peer `id`
/// at `addr` and checks the server closes it (EOF or reset) without
/// answering.
async fn assert_closed_after(addr: SocketAddr, id: PeerId, bytes: &[u8]) {
    let tls = testkit::pki().node(Role::Client);
    let expect = Expect::Node(Role::Peer, id.into());
    let mut s = common::transport::connect(&addr.to_string(), &tls, expect).await.unwrap();
    // The server may close (and reset) before it has read everything.
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("server answered {n} bytes to a bad frame"),
        Err(_) => panic!("server kept the connection open after a bad frame"),
    }
}

async fn round_trip(client: &PeerServiceClient, id: ChunkId, bytes: &[u8]) {
    client.put(deadline(CHUNK_DEADLINE), id, Bytes::from(bytes.to_vec())).await.unwrap().unwrap();
    let back = client.get(deadline(CHUNK_DEADLINE), id).await.unwrap().unwrap();
    assert_eq!(back.as_ref(), bytes);
}

#[tokio::test]
async fn garbage_and_oversize_frames_close_only_their_connection() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tempfile::tempdir().unwrap();
        let peer = spawn_peer(dir.path(), &closed_port()).await;
        let good = connect(&peer, Role::Client).await;
        let (id1, b1) = chunk(10_000, 1);
        round_trip(&good, id1, &b1).await;

        // A well-formed frame whose body is not a bincode tarpc message.
        let mut garbage = 64u32.to_be_bytes().to_vec();
        garbage.extend([0xFF; 64]);
        assert_closed_after(peer.addr, peer.id, &garbage).await;

        // A length prefix above the frame limit (the body is never sent).
        let mut oversize = (MAX_FRAME_BYTES as u32 + 1).to_be_bytes().to_vec();
        oversize.extend([0u8; 1024]);
        assert_closed_after(peer.addr, peer.id, &oversize).await;

        // A length prefix of u32::MAX.
        assert_closed_after(peer.addr, peer.id, &[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]).await;

        // The earlier connection and a new one both still work.
        let (id2, b2) = chunk(20_000, 2);
        round_trip(&good, id2, &b2).await;
        let fresh = connect(&peer, Role::Client).await;
        let (id3, b3) = chunk(30_000, 3);
        round_trip(&fresh, id3, &b3).await;
        peer.shutdown().await;
    })
    .await;
}
