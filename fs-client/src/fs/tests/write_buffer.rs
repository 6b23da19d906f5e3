//! Regressions of the write path found by the write buffer's model test
//! (`fs/buffer/tests.rs`), reproduced against real dirsvc and peers.

use super::*;

/// Bug: a truncate of an open file into the middle of a stored block was
/// committed by the periodic commit (a second later) with the new size but
/// without the trimmed block, which stayed dirty until the next flush.
/// dirsvc then held the whole old block under the smaller size, so a grow
/// by another client read the truncated bytes again instead of zeros (and
/// so would everyone, for good, had this mount died before its flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_commit_of_a_truncate_never_brings_the_cut_bytes_back() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let a = c.client().await;
        let old = pattern(2 * B, 3);
        let (attr, fh) = a.create(InodeId::ROOT, b"f", 0o644, 0, 0).await.unwrap();
        a.write(fh, 0, &old, false).await.unwrap();
        a.flush(fh).await.unwrap();
        let cut = B + B / 2;
        a.truncate(attr.ino, cut as u64).await.unwrap();
        // The periodic commit runs once the truncate has waited its turn.
        tokio::time::sleep(a.config.commit_interval + Duration::from_millis(200)).await;
        a.commit_idle().await;

        let other = c.client().await;
        let size = other.getattr(attr.ino).await.unwrap().size;
        other.truncate(attr.ino, (2 * B) as u64).await.unwrap();
        let got = read_all(&c.client().await, attr.ino).await;
        let mut want = old.clone();
        if size == cut as u64 {
            want[cut..].fill(0);
        }
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes past the truncate came back after a grow (size seen: {size})");
        a.release(fh).await.unwrap();
        c.stop().await;
    })
    .await
}

/// Bug: when a commit was refused because a member was removed meanwhile
/// (`StaleEpoch`), every pending block was sealed again from its uploaded
/// plaintext and put back as dirty data, over a newer write to the same
/// block still buffered: that write was lost (the periodic commit made it
/// happen while the file stayed open, with no error to anyone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealing_pending_blocks_again_keeps_a_newer_buffered_write() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(2, 1, B as u32).await;
        let pins = tempfile::tempdir().unwrap();
        let dir = DirClient::connect(&c.addr, admin_tls()).await.unwrap();
        let (_bob, bob_key) = c.other_identity("bob.txt");
        let bob_tls = client_tls();
        crate::members::add(&dir, &c.id, Some(pins.path()), "bob", &bob_key, vec![bob_tls.node()])
            .await
            .unwrap();
        let a = c.client().await;
        let (attr, fh) = a.create(InodeId::ROOT, b"f", 0o644, 0, 0).await.unwrap();
        let mut want = pattern(B, 5);
        // A full block goes to an upload at once; wait until it is stored.
        a.write(fh, 0, &want, false).await.unwrap();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.commit_idle().await;
            if a.durability_report(attr.ino).await.unwrap().uncommitted_blocks == Some(1) {
                break;
            }
        }
        // A newer write to the same block, buffered.
        a.write(fh, 2, b"new", false).await.unwrap();
        want[2..5].copy_from_slice(b"new");
        crate::members::remove(&dir, &c.id, Some(pins.path()), "bob").await.unwrap();
        tokio::time::sleep(a.config.commit_interval + Duration::from_millis(200)).await;
        a.commit_idle().await;
        a.release(fh).await.unwrap();
        assert!(read_all(&c.client().await, attr.ino).await == want, "the newer write was lost");
        c.stop().await;
    })
    .await
}
