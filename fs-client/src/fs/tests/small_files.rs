//! Small files: block 0 kept inline in its layout entry, and attribute
//! changes made while data is buffered, carried by its commit.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_live_inline_in_their_layout_and_read_back_with_every_peer_down() {
    within(TEST_TIMEOUT, "the test", async {
        // 64 KiB blocks: a 1,000-byte file is inline, a 10,000-byte one not.
        const BIG_B: usize = 64 << 10;
        let mut c = Cluster::start(1, 1, BIG_B as u32).await;
        let fs = c.client_inline(true).await;
        let small = pattern(1000, 7);
        let ino = write_file(&fs, b"small", &small, BIG_B).await;
        assert_eq!(stored_chunk_files(&c), 0, "no peer stored the small file");
        let raw = DirClient::connect(&c.addr, client_tls()).await.unwrap();
        let raw = &raw;
        let layout = |ino: InodeId| async move {
            raw.call(|cl, ctx| async move { cl.get_layout(ctx, ino, 0, 10).await }).await.unwrap()
        };
        let l = layout(ino).await;
        assert_eq!(l.blocks.len(), 1);
        assert!(
            l.blocks[0].inline.is_some() && l.blocks[0].replicas.is_empty(),
            "{:?}",
            l.blocks[0].replicas
        );
        assert_eq!(l.attr.stored_bytes, 1060, "1,000 bytes and one segment's sealing overhead");

        // Copies: block 0 shares the inline entry; block 1 gets the bytes.
        let (dst, out) = fs.create(InodeId::ROOT, b"copy", 0o644, 0, 0).await.unwrap();
        let inp = fs.open(ino, false).await.unwrap();
        assert_eq!(fs.copy_range(inp, 0, out, 0, 1000).await.unwrap(), 1000);
        assert_eq!(fs.copy_range(inp, 0, out, BIG_B as u64, 1000).await.unwrap(), 1000);
        fs.release(inp).await.unwrap();
        fs.release(out).await.unwrap();
        let mut copy = small.clone();
        copy.resize(BIG_B, 0);
        copy.extend_from_slice(&small);
        let d = layout(dst.ino).await;
        assert!(d.blocks[0].inline.is_some() && d.blocks[1].inline.is_none());
        let report = fs.durability_report(dst.ino).await.unwrap();
        assert_eq!((report.inline_blocks, report.at_r, report.stored_blocks), (1, 2, 2));
        // A mount that keeps nothing inline copies the bytes to its peers.
        let plain = c.client().await;
        let (dst2, out2) = plain.create(InodeId::ROOT, b"copy-no-inline", 0o644, 0, 0).await.unwrap();
        let inp2 = plain.open(ino, false).await.unwrap();
        assert_eq!(plain.copy_range(inp2, 0, out2, 0, 1000).await.unwrap(), 1000);
        plain.release(inp2).await.unwrap();
        plain.release(out2).await.unwrap();
        let d2 = layout(dst2.ino).await;
        assert!(
            d2.blocks[0].inline.is_none() && d2.blocks[0].replicas.len() == 1,
            "{:?}",
            d2.blocks[0].replicas
        );
        assert_eq!(read_all(&plain, dst2.ino).await, small);

        let ino2 = write_file(&fs, b"grows", &small, BIG_B).await;
        // Growing past INLINE_MAX_LEN moves block 0 to the peers; shrinking
        // brings it back inline and the peer chunk loses its reference.
        let grown = pattern(10_000, 8);
        let fh = fs.open(ino2, true).await.unwrap();
        fs.write(fh, 0, &grown, false).await.unwrap();
        fs.release(fh).await.unwrap();
        let l = layout(ino2).await;
        assert!(l.blocks[0].inline.is_none() && l.blocks[0].replicas.len() == 1);
        assert_eq!(read_all(&c.client_inline(true).await, ino2).await, grown);
        let shrink = common::rpc::dir::SetAttr { size: Some(100), ..Default::default() };
        fs.setattr(ino2, shrink).await.unwrap();
        let l = layout(ino2).await;
        assert!(l.blocks[0].inline.is_some(), "rewritten small again");
        assert_eq!(read_all(&c.client_inline(true).await, ino2).await, grown[..100].to_vec());
        // With the only peer down, a fresh client reads the inline file
        // (verified and opened from its entry) and not the copy's block 1.
        c.peers[0].take().unwrap().shutdown().await;
        let cold = c.client_inline(true).await;
        assert_eq!(read_all(&cold, ino).await, small);
        let fh = cold.open(dst.ino, false).await.unwrap();
        assert_eq!(cold.read(fh, 0, 1000).await.unwrap(), small);
        assert!(cold.read(fh, BIG_B as u64, 1000).await.is_err(), "block 1 is on the stopped peer");
        cold.release(fh).await.unwrap();

        c.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_set_on_a_file_with_buffered_data_land_with_its_commit_and_none_before() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let fs = c.client_inline(true).await;
        // tar: create, write, futimens, fchown, fchmod, close.
        let (attr, fh) = fs.create(InodeId::ROOT, b"f", 0o644, 0, 0).await.unwrap();
        let data = pattern(3000, 4);
        fs.write(fh, 0, &data, false).await.unwrap();
        let when = common::time::Timestamp { secs: 1_700_000_000, nanos: 5 };
        let set = |s: SetAttr| fs.setattr(attr.ino, s);
        set(SetAttr { mtime: Some(when), atime: Some(when), ..Default::default() }).await.unwrap();
        set(SetAttr { uid: Some(1000), gid: Some(100), ..Default::default() }).await.unwrap();
        let a = set(SetAttr { perm: Some(0o4751), ..Default::default() }).await.unwrap();
        // This mount answers with what it holds.
        assert_eq!((a.size, a.mtime, a.atime, a.uid, a.gid, a.perm), (3000, when, when, 1000, 100, 0o4751));
        let seen = fs.getattr(attr.ino).await.unwrap();
        assert_eq!((seen.size, seen.mtime, seen.uid, seen.perm), (3000, when, 1000, 0o4751));
        // Nothing reached dirsvc yet: they travel with the data.
        let other = c.client().await;
        let before = other.getattr(attr.ino).await.unwrap();
        assert_eq!((before.size, before.uid, before.perm), (0, 0, 0o644));
        // A write by a caller without CAP_FSETID clears setuid from the
        // mode the commit will set.
        fs.write(fh, 3000, b"more", true).await.unwrap();
        assert_eq!(fs.getattr(attr.ino).await.unwrap().perm, 0o751);
        fs.release(fh).await.unwrap();
        let seen = c.client().await.getattr(attr.ino).await.unwrap();
        assert_eq!((seen.size, seen.uid, seen.gid, seen.perm, seen.atime), (3004, 1000, 100, 0o751, when));
        assert!(seen.mtime > when, "a write after the utime moves mtime on: {:?}", seen.mtime);
        let mut all = data.clone();
        all.extend_from_slice(b"more");
        assert_eq!(read_all(&other, attr.ino).await, all);

        // Attributes set while data is buffered that the data no longer
        // carries (truncated away) still land, with the flush.
        let (attr, fh) = fs.create(InodeId::ROOT, b"g", 0o644, 0, 0).await.unwrap();
        fs.write(fh, 0, b"abc", false).await.unwrap();
        fs.setattr(attr.ino, SetAttr { perm: Some(0o600), ..Default::default() }).await.unwrap();
        fs.setattr(attr.ino, SetAttr { size: Some(0), ..Default::default() }).await.unwrap();
        fs.release(fh).await.unwrap();
        let seen = c.client().await.getattr(attr.ino).await.unwrap();
        assert_eq!((seen.size, seen.perm), (0, 0o600));

        // A change another mount makes meanwhile is newer than the carried
        // one and stays; the carried changes of other attributes land.
        let (attr, fh) = fs.create(InodeId::ROOT, b"k", 0o644, 0, 0).await.unwrap();
        fs.write(fh, 0, b"abc", false).await.unwrap();
        fs.setattr(attr.ino, SetAttr { perm: Some(0o600), uid: Some(7), ..Default::default() })
            .await
            .unwrap();
        other.setattr(attr.ino, SetAttr { perm: Some(0o755), ..Default::default() }).await.unwrap();
        fs.release(fh).await.unwrap();
        let seen = c.client().await.getattr(attr.ino).await.unwrap();
        assert_eq!((seen.size, seen.perm, seen.uid), (3, 0o755, 7));

        // With nothing buffered a setattr is durable when it returns.
        let (attr, fh) = fs.create(InodeId::ROOT, b"h", 0o644, 0, 0).await.unwrap();
        fs.setattr(attr.ino, SetAttr { perm: Some(0o640), ..Default::default() }).await.unwrap();
        assert_eq!(c.client().await.getattr(attr.ino).await.unwrap().perm, 0o640);
        fs.release(fh).await.unwrap();
        c.stop().await;
    })
    .await
}
