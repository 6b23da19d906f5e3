//! `get_segment`: a peer proves one segment of a segmented (v3) chunk from
//! the outboard it keeps beside the chunk. Pins: the proof verifies against
//! the id alone and opens; unknown chunks, v2 chunks and bad indexes are
//! refused; a lost sidecar is recomputed and written again; delete removes
//! the sidecar.

use super::util::{chunk_file, closed_port, connect, spawn_peer, TEST_TIMEOUT};
use common::codec::{self, SegmentLayout, SEGMENT_SIZE};
use common::config::CHUNK_DEADLINE;
use common::keys::VolumeSecret;
use common::rpc::peer::{Bytes, PeerError};
use common::rpc::Role;
use common::transport::deadline;
use std::path::PathBuf;
use testkit::within;

fn sidecar(chunk: PathBuf) -> PathBuf {
    let mut p = chunk.into_os_string();
    p.push(".ob");
    PathBuf::from(p)
}

#[tokio::test]
async fn segments_round_trip_and_the_sidecar_follows_the_chunk() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tempfile::tempdir().unwrap();
        let peer = spawn_peer(dir.path(), &closed_port()).await;
        let client = connect(&peer, Role::Client).await;
        let dirsvc = connect(&peer, Role::Dirsvc).await;
        let key = VolumeSecret::from_bytes([3u8; 32]).chunk_key();
        let plain: Vec<u8> = (0..(1 << 20) - 1000).map(|i| (i * 7 + i / 300) as u8).collect();
        let sealed = codec::seal_segmented(&key, 0, &plain).unwrap();
        let id = sealed.id;
        client.put(deadline(CHUNK_DEADLINE), id, Bytes::from(sealed.bytes.clone())).await.unwrap().unwrap();
        let ob = sidecar(chunk_file(dir.path(), &id));
        assert_eq!(std::fs::read(&ob).unwrap(), codec::outboard(&sealed.bytes), "the put wrote the outboard");

        let layout = SegmentLayout::from_stored_len(sealed.bytes.len() as u64, SEGMENT_SIZE).unwrap();
        let get = |k: u32| {
            let client = client.clone();
            async move { client.get_segment(deadline(CHUNK_DEADLINE), id, k).await.unwrap() }
        };
        for k in [0, 7, layout.segments() - 1] {
            let proof = get(k).await.unwrap();
            let seg = codec::verify_segment_proof(&id, &layout, k, &proof).unwrap();
            let r = layout.plaintext_range(k).unwrap();
            assert_eq!(seg.open(&key).unwrap(), &plain[r.start as usize..r.end as usize], "segment {k}");
        }

        // A bad index and an unknown chunk are refused.
        assert!(matches!(get(layout.segments()).await, Err(PeerError::Invalid(_))));
        let other = common::ChunkId::of(b"nothing");
        assert_eq!(
            client.get_segment(deadline(CHUNK_DEADLINE), other, 0).await.unwrap(),
            Err(PeerError::NotFound(other))
        );

        // A v2 chunk has no segments.
        let v2 = codec::seal(&key, 0, &plain[..5000]).unwrap();
        client.put(deadline(CHUNK_DEADLINE), v2.id, Bytes::from(v2.bytes)).await.unwrap().unwrap();
        assert!(matches!(
            client.get_segment(deadline(CHUNK_DEADLINE), v2.id, 0).await.unwrap(),
            Err(PeerError::Invalid(_))
        ));
        assert!(!sidecar(chunk_file(dir.path(), &v2.id)).exists());

        // A lost sidecar, then a stale one: recomputed, written again.
        std::fs::remove_file(&ob).unwrap();
        let proof = get(3).await.unwrap();
        codec::verify_segment_proof(&id, &layout, 3, &proof).unwrap();
        assert_eq!(std::fs::read(&ob).unwrap(), codec::outboard(&sealed.bytes));
        std::fs::write(&ob, vec![0u8; 4096]).unwrap();
        let proof = get(4).await.unwrap();
        codec::verify_segment_proof(&id, &layout, 4, &proof).unwrap();
        assert_eq!(std::fs::read(&ob).unwrap(), codec::outboard(&sealed.bytes));

        // A corrupt segment on disk is refused and the chunk moved aside.
        let path = chunk_file(dir.path(), &id);
        let mut b = std::fs::read(&path).unwrap();
        let at = layout.segment_range(5).unwrap().start as usize + 10;
        b[at] ^= 1;
        std::fs::write(&path, b).unwrap();
        assert_eq!(get(5).await, Err(PeerError::HashMismatch(id)));
        assert!(!path.exists() && !ob.exists(), "moved aside with its sidecar");

        // Stored again, then deleted: the sidecar goes with it.
        client.put(deadline(CHUNK_DEADLINE), id, Bytes::from(sealed.bytes.clone())).await.unwrap().unwrap();
        assert!(ob.exists());
        dirsvc.delete(deadline(CHUNK_DEADLINE), id).await.unwrap().unwrap();
        assert!(!path.exists() && !ob.exists());
        peer.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_chunk_of_one_group_keeps_no_sidecar_and_still_proves_its_segment() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tempfile::tempdir().unwrap();
        let peer = spawn_peer(dir.path(), &closed_port()).await;
        let client = connect(&peer, Role::Client).await;
        let key = VolumeSecret::from_bytes([4u8; 32]).chunk_key();
        let plain: Vec<u8> = (0..9000u32).map(|i| (i * 13 + i / 77) as u8).collect();
        let sealed = codec::seal_segmented(&key, 0, &plain).unwrap();
        let id = sealed.id;
        assert_eq!(codec::outboard_len(sealed.bytes.len() as u64), 0, "one 16 KiB group: an empty outboard");
        client.put(deadline(CHUNK_DEADLINE), id, Bytes::from(sealed.bytes.clone())).await.unwrap().unwrap();
        let ob = sidecar(chunk_file(dir.path(), &id));
        assert!(!ob.exists(), "no sidecar for an empty outboard");

        let layout = SegmentLayout::from_stored_len(sealed.bytes.len() as u64, SEGMENT_SIZE).unwrap();
        let prove = || async { client.get_segment(deadline(CHUNK_DEADLINE), id, 0).await.unwrap().unwrap() };
        let seg = codec::verify_segment_proof(&id, &layout, 0, &prove().await).unwrap();
        assert_eq!(seg.open(&key).unwrap(), &plain[..]);
        assert!(!ob.exists(), "a proof from the missing sidecar writes none");

        // A stale sidecar left by an earlier copy is dropped, not trusted.
        std::fs::write(&ob, vec![0u8; 64]).unwrap();
        let seg = codec::verify_segment_proof(&id, &layout, 0, &prove().await).unwrap();
        assert_eq!(seg.open(&key).unwrap(), &plain[..]);
        assert!(!ob.exists(), "the stale sidecar was removed");
        peer.shutdown().await;
    })
    .await;
}
