//! Tests that what dirsvc hands back is bound to its place: moved layout
//! entries, swapped symlink targets and attribute values, reflinked copies
//! and legacy entries without a MAC read as EIO, never as wrong bytes; a
//! removed member's key epoch and a rolled-back keyring are refused.

use super::*;

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
