//! Conformance tests of file layouts (run on every engine by
//! `conformance!` in the parent): commits, sharing, inline blocks, carried
//! attributes, trims, frees, engine limits and reseal.

use super::*;

pub(super) fn layouts_commit_overwrite_sparse_and_share_chunks(s: &Store) {
    init(s);
    let f = file(s, InodeId::ROOT, b"f");
    // Sparse: blocks 0, 63, 64, 1000.
    let size = 1001 * u64::from(B);
    let a = commit(s, f, size, [0, 63, 64, 1000]);
    assert_eq!((a.size, a.stored_bytes), (size, 400));
    assert_eq!(indexes(s, f), vec![0, 63, 64, 1000]);
    let l = s.get_layout(f, 60, 5).unwrap();
    assert_eq!(l.blocks.iter().map(|b| b.index).collect::<Vec<_>>(), vec![63, 64]);
    assert!(!l.eof, "block 1000 follows");
    assert_eq!(l.blocks[0].replicas, vec![PEER]);
    assert_eq!((l.blocks[0].mac, l.blocks[0].epoch), ([5; 32], 0));
    // Overwrite one block, remove another.
    let mut c = chunk(5000);
    c.len = 200;
    let cm = CommitLayout {
        held_ms: 0,
        attrs: Default::default(),
        size,
        mtime: Timestamp::now(),
        blocks: vec![(63, Some(c.clone())), (64, None)],
    };
    let a = s.commit_layout(f, &cm).unwrap();
    assert_eq!(a.stored_bytes, 400);
    assert_eq!(indexes(s, f), vec![0, 63, 1000]);
    assert_eq!(s.unreferenced_count().unwrap(), 2, "chunks of 63 and 64 lost their reference");
    // A retried commit changes nothing.
    assert_eq!(s.commit_layout(f, &cm).unwrap().stored_bytes, 400);
    // A shared chunk (no replicas named) keeps its record; a wrong length
    // or a block past the end is refused.
    let g = file(s, InodeId::ROOT, b"g");
    let shared = StoredChunk { replicas: vec![], ..c.clone() };
    s.commit_layout(
        g,
        &CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
            size: 10,
            mtime: Timestamp::now(),
            blocks: vec![(0, Some(shared))],
        },
    )
    .unwrap();
    assert_eq!(s.chunk(&c.id).unwrap().unwrap().refcount, 2);
    let bad = StoredChunk { len: 300, ..c.clone() };
    let cm = CommitLayout {
        held_ms: 0,
        attrs: Default::default(),
        size: 10,
        mtime: Timestamp::now(),
        blocks: vec![(0, Some(bad))],
    };
    assert!(matches!(dir_err(s.commit_layout(g, &cm)), DirError::Invalid(_)));
    let cm = CommitLayout {
        held_ms: 0,
        attrs: Default::default(),
        size: 10,
        mtime: Timestamp::now(),
        blocks: vec![(1, Some(chunk(1)))],
    };
    assert!(matches!(dir_err(s.commit_layout(g, &cm)), DirError::Invalid(_)));
    let stale = StoredChunk { epoch: 1, ..chunk(9) };
    let cm = CommitLayout {
        held_ms: 0,
        attrs: Default::default(),
        size: 10,
        mtime: Timestamp::now(),
        blocks: vec![(0, Some(stale))],
    };
    assert!(matches!(dir_err(s.commit_layout(g, &cm)), DirError::Invalid(_)));
    assert_eq!(dir_err(s.get_layout(InodeId::ROOT, 0, 1)), DirError::IsDir);
}

/// An inline chunk of `len` bytes (its id the hash of its bytes).
pub(super) fn inline_chunk(fill: u8, len: usize) -> StoredChunk {
    let bytes = vec![fill; len];
    StoredChunk {
        id: ChunkId::of(&bytes),
        len: len as u32,
        replicas: vec![],
        epoch: 0,
        mac: [5; 32],
        inline: Some(bytes),
    }
}

pub(super) fn inline_block_zero_lives_in_its_entry_without_a_chunk_record(s: &Store) {
    init(s);
    let f = file(s, InodeId::ROOT, b"f");
    let one = |c: StoredChunk, index: u64, size: u64| CommitLayout {
        held_ms: 0,
        attrs: Default::default(),
        size,
        mtime: Timestamp::now(),
        blocks: vec![(index, Some(c))],
    };
    let small = inline_chunk(1, 300);
    let a = s.commit_layout(f, &one(small.clone(), 0, 200)).unwrap();
    assert_eq!((a.size, a.stored_bytes), (200, 300));
    let l = s.get_layout(f, 0, 10).unwrap();
    assert_eq!(l.blocks.len(), 1);
    assert_eq!(l.blocks[0].inline, small.inline, "the entry serves the sealed bytes");
    assert!(l.blocks[0].replicas.is_empty());
    assert_eq!(s.chunk(&small.id).unwrap(), None, "no chunk record, so GC and repair never see it");
    // A retried commit is the same entry.
    assert_eq!(s.commit_layout(f, &one(small.clone(), 0, 200)).unwrap().stored_bytes, 300);
    // Refused: past block 0, bytes that are not the chunk, longer than
    // INLINE_MAX_LEN, replicas named, an older epoch.
    let size = 2 * u64::from(B);
    assert!(matches!(dir_err(s.commit_layout(f, &one(inline_chunk(2, 300), 1, size))), DirError::Invalid(_)));
    let wrong = StoredChunk { id: ChunkId::of(b"other"), ..inline_chunk(3, 300) };
    assert!(matches!(dir_err(s.commit_layout(f, &one(wrong, 0, 200))), DirError::Invalid(_)));
    let long = inline_chunk(4, INLINE_MAX_LEN as usize + 1);
    assert!(matches!(dir_err(s.commit_layout(f, &one(long, 0, 200))), DirError::Invalid(_)));
    let short_len = StoredChunk { len: 299, ..inline_chunk(5, 300) };
    assert!(matches!(dir_err(s.commit_layout(f, &one(short_len, 0, 200))), DirError::Invalid(_)));
    let with_replicas = StoredChunk { replicas: vec![PEER], ..inline_chunk(6, 300) };
    assert!(matches!(dir_err(s.commit_layout(f, &one(with_replicas, 0, 200))), DirError::Invalid(_)));
    assert_eq!(s.get_layout(f, 0, 10).unwrap().blocks[0].inline, small.inline, "refusals changed nothing");
    // Replaced by a chunk on peers: nothing to unreference; then back to
    // inline: the peer chunk loses its reference.
    let a = s.commit_layout(f, &one(chunk(1), 0, 200)).unwrap();
    assert_eq!(a.stored_bytes, 100);
    assert_eq!(s.unreferenced_count().unwrap(), 0);
    let again = inline_chunk(7, 120);
    s.commit_layout(f, &one(again.clone(), 0, 100)).unwrap();
    assert_eq!(s.unreferenced_count().unwrap(), 1, "the peer chunk lost its reference");
    // Reseal to an inline chunk, and truncation to 0 drops it.
    let resealed = inline_chunk(8, 130);
    let r = Reseal { index: 0, old: again.id, new: resealed.clone() };
    assert_eq!(s.reseal_blocks(f, &[r]).unwrap(), vec![true]);
    assert_eq!(s.get_layout(f, 0, 10).unwrap().blocks[0].inline, resealed.inline);
    let cm = CommitLayout {
        held_ms: 0,
        attrs: Default::default(),
        size: 0,
        mtime: Timestamp::now(),
        blocks: vec![],
    };
    s.commit_layout(f, &cm).unwrap();
    s.finish_trim(f.0).unwrap();
    assert!(indexes(s, f).is_empty());
    assert_eq!(s.getattr(f).unwrap().stored_bytes, 0);
    assert_eq!(s.unreferenced_count().unwrap(), 1, "dropping an inline entry unreferences nothing");
    // Unlinking a file with an inline block frees it like any other.
    s.commit_layout(f, &one(inline_chunk(9, 50), 0, 10)).unwrap();
    s.unlink(InodeId::ROOT, b"f").unwrap();
}

pub(super) fn a_commit_sets_the_attributes_it_carries_in_its_transaction(s: &Store) {
    init(s);
    let f = file(s, InodeId::ROOT, b"f");
    let before = s.getattr(f).unwrap();
    let when = Timestamp { secs: 1_600_000_000, nanos: 7 };
    let attrs = CommitAttrs {
        perm: Some(AttrChange { from: before.perm, to: 0o14755 }),
        uid: Some(AttrChange { from: before.uid, to: 1000 }),
        gid: None,
        atime: Some(AttrChange { from: before.atime, to: when }),
    };
    let cm = CommitLayout { held_ms: 0, attrs, size: 0, mtime: when, blocks: vec![] };
    let a = s.commit_layout(f, &cm).unwrap();
    assert_eq!((a.perm, a.uid, a.gid, a.atime, a.mtime), (0o4755, 1000, before.gid, when, when));
    assert!(a.ctime >= before.ctime);
    assert_eq!(s.getattr(f).unwrap(), a);
    // A change carried over a value that is no longer there (another
    // mount changed it since) leaves the newer value; the others apply.
    s.setattr(f, &SetAttr { perm: Some(0o700), ..Default::default() }).unwrap();
    let attrs = CommitAttrs {
        perm: Some(AttrChange { from: 0o4755, to: 0o600 }),
        gid: Some(AttrChange { from: before.gid, to: 77 }),
        ..CommitAttrs::default()
    };
    let cm = CommitLayout { held_ms: 0, attrs, size: 5, mtime: when, blocks: vec![] };
    let b = s.commit_layout(f, &cm).unwrap();
    assert_eq!((b.size, b.perm, b.uid, b.gid, b.atime), (5, 0o700, 1000, 77, when));
    // A bad atime is refused whole.
    let bad = Timestamp { secs: 0, nanos: 2_000_000_000 };
    let attrs = CommitAttrs {
        perm: Some(AttrChange { from: 0o700, to: 0o600 }),
        atime: Some(AttrChange { from: when, to: bad }),
        ..CommitAttrs::default()
    };
    let cm = CommitLayout { held_ms: 0, attrs, size: 9, mtime: when, blocks: vec![] };
    assert!(matches!(s.commit_layout(f, &cm), Err(Error::Dir(DirError::Invalid(_)))), "an invalid atime");
    assert_eq!(s.getattr(f).unwrap(), b);
}

pub(super) fn truncate_down_trims_in_bounded_steps_and_growth_waits_for_it(s: &Store) {
    init(s);
    let f = file(s, InodeId::ROOT, b"f");
    let n = 700u64;
    commit(s, f, n * u64::from(B), 0..n);
    let a = s.setattr(f, &SetAttr { size: Some(10 * u64::from(B) + 1), ..Default::default() }).unwrap();
    assert_eq!(a.size, 10 * u64::from(B) + 1);
    assert_eq!(indexes(s, f), (0..11).collect::<Vec<_>>());
    assert_eq!(s.getattr(f).unwrap().stored_bytes, 1100);
    assert_eq!(s.unreferenced_count().unwrap(), n - 11);
    assert!(s.pending_trims().unwrap().is_empty(), "the trim finished before setattr returned");
    // Growing again shows holes, not the old blocks.
    s.setattr(f, &SetAttr { size: Some(n * u64::from(B)), ..Default::default() }).unwrap();
    assert_eq!(indexes(s, f).len(), 11);
    // A shrinking commit trims too.
    let cm = CommitLayout {
        held_ms: 0,
        attrs: Default::default(),
        size: 2 * u64::from(B),
        mtime: Timestamp::now(),
        blocks: vec![],
    };
    assert_eq!(s.commit_layout(f, &cm).unwrap().stored_bytes, 200);
    assert_eq!(indexes(s, f), vec![0, 1]);
}

pub(super) fn an_interrupted_trim_is_finished_at_open_or_before_growth(s: &Store) {
    init(s);
    let f = file(s, InodeId::ROOT, b"f");
    commit(s, f, 200 * u64::from(B), 0..200);
    // What a crash between the truncation and its trim leaves: the size
    // set, the marker, the blocks still there.
    s.write(|w| {
        let mut rec = w.inode(f.0)?;
        rec.size = u64::from(B);
        w.put_inode(f.0, &rec)?;
        w.put(keys::trim(f.0), 1u64.to_le_bytes().to_vec());
        Ok(())
    })
    .unwrap();
    assert_eq!(indexes(s, f), vec![0], "readers never see blocks past the size");
    assert_eq!(s.pending_trims().unwrap(), vec![f.0]);
    // Growth finishes the trim first.
    let a = commit(s, f, 3 * u64::from(B), [2]);
    assert_eq!(a.stored_bytes, 200);
    assert_eq!(indexes(s, f), vec![0, 2]);
    assert!(s.pending_trims().unwrap().is_empty());
    assert_eq!(s.chunk(&chunk(1).id).unwrap().unwrap().refcount, 0);
}

pub(super) fn unlinking_a_large_file_frees_everything_in_bounded_transactions(s: &Store) {
    init(s);
    let f = file(s, InodeId::ROOT, b"big");
    let n = 1500u64;
    commit(s, f, n * u64::from(B), 0..n);
    for i in 0..300u32 {
        s.setxattr(f, format!("user.{i}").as_bytes(), b"v", 0).unwrap();
    }
    let r = s.unlink(InodeId::ROOT, b"big").unwrap();
    assert!(!r.orphaned);
    assert_eq!(dir_err(s.getattr(f)), DirError::NotFound);
    assert!(s.orphans().unwrap().is_empty());
    assert_eq!(s.unreferenced_count().unwrap(), n);
    s.read(|t| {
        assert!(t.scan(&keys::xattrs_of(f.0), 1, false)?.is_empty());
        assert!(t.scan(&keys::layouts_from(f.0, 0), 1, false)?.is_empty());
        Ok(())
    })
    .unwrap();
    // An open file is kept whole.
    let g = file(s, InodeId::ROOT, b"g");
    commit(s, g, u64::from(B), [0]);
    assert!(s.unlink_keeping(InodeId::ROOT, b"g", &|_| true).unwrap().orphaned);
    assert_eq!(indexes(s, g), vec![0]);
}

pub(super) fn an_interrupted_free_is_finished_by_free_orphans(s: &Store) {
    init(s);
    let f = file(s, InodeId::ROOT, b"f");
    commit(s, f, 300 * u64::from(B), 0..300);
    s.setxattr(f, b"user.a", b"v", 0).unwrap();
    // A crash after the unlink's first transaction: kept as an orphan.
    s.unlink_keeping(InodeId::ROOT, b"f", &|_| true).unwrap();
    // Part of the freeing ran.
    s.write(|w| w.drop_blocks_bounded(f.0, 0, 20).map(|_| ())).unwrap();
    assert_eq!(s.orphans().unwrap(), vec![f]);
    assert_eq!(s.free_orphans(&[f], &|_| true).unwrap(), vec![], "kept while open");
    assert_eq!(s.free_orphans(&[f], &|_| false).unwrap(), vec![f]);
    assert!(s.orphans().unwrap().is_empty());
    assert_eq!(dir_err(s.getattr(f)), DirError::NotFound);
    assert_eq!(s.unreferenced_count().unwrap(), 300);
}

pub(super) fn commits_larger_than_the_engine_allows_are_refused_naming_the_limit(s: &Store) {
    init(s);
    let max = s.max_commit_entries();
    assert_eq!(max, (s.max_ops() - 2) / 5);
    let f = file(s, InodeId::ROOT, b"f");
    let n = max as u64 + 1;
    let blocks = (0..n).map(|i| (i * 64, Some(chunk(i)))).collect();
    let cm = CommitLayout {
        held_ms: 0,
        attrs: Default::default(),
        size: n * 64 * u64::from(B),
        mtime: Timestamp::now(),
        blocks,
    };
    match dir_err(s.commit_layout(f, &cm)) {
        DirError::Invalid(m) => assert!(m.contains(&max.to_string()), "{m}"),
        other => panic!("{other:?}"),
    }
    // The largest allowed commit, every entry in its own group and
    // replacing another chunk (the worst case), fits.
    let n = max as u64;
    let first: Vec<_> = (0..n).map(|i| (i * 64, Some(chunk(i)))).collect();
    let size = n * 64 * u64::from(B);
    s.commit_layout(
        f,
        &CommitLayout { held_ms: 0, attrs: Default::default(), size, mtime: Timestamp::now(), blocks: first },
    )
    .unwrap();
    // Make the first chunks unreferenced elsewhere? They are referenced
    // once; replacing them drops them to 0 (unreferenced key written).
    let second: Vec<_> = (0..n).map(|i| (i * 64, Some(chunk(100_000 + i)))).collect();
    s.commit_layout(
        f,
        &CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
            size,
            mtime: Timestamp::now(),
            blocks: second,
        },
    )
    .unwrap();
    assert_eq!(s.unreferenced_count().unwrap(), n);
}

pub(super) fn reseal_replaces_only_matching_blocks(s: &Store) {
    init(s);
    let f = file(s, InodeId::ROOT, b"f");
    commit(s, f, 2 * u64::from(B), [0, 1]);
    let new = StoredChunk { len: 120, ..chunk(77) };
    let rs = vec![
        Reseal { index: 0, old: chunk(0).id, new: new.clone() },
        Reseal { index: 1, old: chunk(9).id, new: chunk(78) },
    ];
    assert_eq!(s.reseal_blocks(f, &rs).unwrap(), vec![true, false]);
    let l = s.get_layout(f, 0, 10).unwrap();
    assert_eq!((l.blocks[0].chunk, l.blocks[1].chunk), (new.id, chunk(1).id));
    assert_eq!(l.attr.stored_bytes, 220);
    assert_eq!(s.chunk(&chunk(0).id).unwrap().unwrap().refcount, 0);
}
