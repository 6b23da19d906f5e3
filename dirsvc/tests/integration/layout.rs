//! File layouts and the chunk index: commit, replace, holes, truncation,
//! reference counts, stored bytes, validation and atomicity.

use super::support::*;
use common::rpc::dir::{CommitLayout, DirError, SetAttr, StoredChunk};
use common::time::Timestamp;
use common::{ChunkId, InodeId, PeerId};
use dirsvc::Store;

fn commit(
    s: &Store,
    f: InodeId,
    size: u64,
    blocks: Vec<(u64, Option<StoredChunk>)>,
) -> common::rpc::dir::Attr {
    s.commit_layout(
        f,
        &CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
            size,
            mtime: Timestamp { secs: 77, nanos: 1 },
            blocks,
        },
    )
    .unwrap()
}

fn indexes(s: &Store, f: InodeId) -> Vec<u64> {
    s.get_layout(f, 0, 1000).unwrap().blocks.iter().map(|b| b.index).collect()
}

#[test]
fn commit_layout_counts_references_and_stored_bytes() {
    let dir = tmp();
    let s = new_store(dir.path());
    let (p1, p2) = (peer(&s, 1), peer(&s, 2));
    let f = mkfile(&s, ROOT, "f");
    let size = 3 * u64::from(B) + 10;
    let a =
        commit(&s, f, size, (0..4).map(|i| (i, Some(chunk(i as u8, 100 + i as u32, &[p1, p2])))).collect());
    assert_eq!((a.size, a.stored_bytes, a.mtime), (size, 406, Timestamp { secs: 77, nanos: 1 }));
    for k in 0..4 {
        assert_eq!(refcount(&s, k), Some(1));
    }
    let page = s.get_layout(f, 0, 100).unwrap();
    assert_eq!(page.attr, a);
    assert_eq!(page.blocks.len(), 4);
    assert!(page.eof);
    assert_eq!(page.blocks[2].chunk, ChunkId::of(&[2]));
    assert_eq!(page.blocks[2].len, 102);
    assert_eq!(page.blocks[2].replicas, vec![p1, p2]);
    let mid = s.get_layout(f, 1, 2).unwrap();
    assert_eq!(mid.blocks.iter().map(|b| b.index).collect::<Vec<_>>(), vec![1, 2]);
    assert!(!mid.eof, "block 3 follows");

    // Replace block 1, punch a hole at block 2.
    let a = commit(&s, f, size, vec![(1, Some(chunk(9, 200, &[p2]))), (2, None)]);
    assert_eq!(a.stored_bytes, 100 + 200 + 103);
    assert_eq!(indexes(&s, f), vec![0, 1, 3]);
    assert_eq!((refcount(&s, 1), refcount(&s, 2), refcount(&s, 9)), (Some(0), Some(0), Some(1)));
    assert!(unreferenced(&s, 1) && unreferenced(&s, 2) && !unreferenced(&s, 9));
    let holes = s.get_layout(f, 2, 1).unwrap();
    assert!(holes.blocks.is_empty() && !holes.eof);

    // The same chunk in another file counts twice; an unreferenced chunk
    // that is used again leaves the unreferenced list.
    let g = mkfile(&s, ROOT, "g");
    commit(&s, g, 2 * u64::from(B), vec![(0, Some(chunk(9, 200, &[p1]))), (1, Some(chunk(1, 101, &[p1])))]);
    assert_eq!(refcount(&s, 9), Some(2));
    assert_eq!(refcount(&s, 1), Some(1));
    assert!(!unreferenced(&s, 1));
    let rec = s.chunk(&ChunkId::of(&[9])).unwrap().unwrap();
    assert_eq!(rec.replicas, vec![p2, p1], "replicas are the union of commits");
    s.unlink(ROOT, &n("g")).unwrap();
    assert_eq!((refcount(&s, 9), refcount(&s, 1)), (Some(1), Some(0)));
}

#[test]
fn retrying_a_commit_changes_no_counts() {
    let dir = tmp();
    let s = new_store(dir.path());
    let (p1, p2) = (peer(&s, 1), peer(&s, 2));
    let f = mkfile(&s, ROOT, "f");
    let first = commit(&s, f, 10, vec![(0, Some(chunk(1, 58, &[p1])))]);
    let again = commit(&s, f, 10, vec![(0, Some(chunk(1, 58, &[p2])))]);
    assert_eq!(refcount(&s, 1), Some(1));
    assert_eq!(first.stored_bytes, again.stored_bytes);
    assert_eq!(s.chunk(&ChunkId::of(&[1])).unwrap().unwrap().replicas, vec![p1, p2]);
}

#[test]
fn truncation_drops_blocks_past_the_new_end() {
    let dir = tmp();
    let s = new_store(dir.path());
    let p = peer(&s, 1);
    let f = mkfile(&s, ROOT, "f");
    let b = u64::from(B);
    commit(&s, f, 5 * b, (0..5).map(|i| (i, Some(chunk(i as u8, 1000, &[p])))).collect());

    // Shrink to one byte into block 2: blocks 3 and 4 go.
    let a = s.setattr(f, &SetAttr { size: Some(2 * b + 1), ..SetAttr::default() }).unwrap();
    assert_eq!((a.size, a.stored_bytes), (2 * b + 1, 3000));
    assert_eq!(indexes(&s, f), vec![0, 1, 2]);
    assert_eq!((refcount(&s, 3), refcount(&s, 4)), (Some(0), Some(0)));
    // Exactly at a block boundary: block 2 goes too.
    s.setattr(f, &SetAttr { size: Some(2 * b), ..SetAttr::default() }).unwrap();
    assert_eq!(indexes(&s, f), vec![0, 1]);
    // Growing adds no blocks.
    s.setattr(f, &SetAttr { size: Some(100 * b), ..SetAttr::default() }).unwrap();
    assert_eq!(indexes(&s, f), vec![0, 1]);
    // A commit with a smaller size truncates as well.
    let a = commit(&s, f, 1, vec![]);
    assert_eq!((a.size, a.stored_bytes), (1, 1000));
    assert_eq!(indexes(&s, f), vec![0]);
    let a = commit(&s, f, 0, vec![]);
    assert_eq!((a.size, a.stored_bytes), (0, 0));
    assert!(indexes(&s, f).is_empty());
    for k in 0..5 {
        assert_eq!(refcount(&s, k), Some(0), "chunk {k}");
        assert!(unreferenced(&s, k));
    }
}

#[test]
fn bad_commits_are_refused_and_change_nothing() {
    let dir = tmp();
    let s = new_store(dir.path());
    let p = peer(&s, 1);
    let f = mkfile(&s, ROOT, "f");
    let before = commit(&s, f, 10, vec![(0, Some(chunk(1, 58, &[p])))]);
    let stranger = PeerId([99; 16]);
    let cases: Vec<(&str, CommitLayout)> = vec![
        ("unregistered replica", layout(10, vec![(0, Some(chunk(2, 58, &[stranger])))])),
        ("no replicas", layout(10, vec![(0, Some(chunk(2, 58, &[])))])),
        ("past the size", layout(10, vec![(1, Some(chunk(2, 58, &[p])))])),
        ("listed twice", layout(10, vec![(0, None), (0, Some(chunk(2, 58, &[p])))])),
        ("empty chunk", layout(10, vec![(0, Some(chunk(2, 0, &[p])))])),
        ("oversize chunk", layout(10, vec![(0, Some(chunk(2, B + 4097, &[p])))])),
        (
            // The first block is fine, the second names a known chunk with
            // another length: the whole commit must roll back.
            "length mismatch",
            layout(2 * u64::from(B), vec![(1, Some(chunk(3, 70, &[p]))), (0, Some(chunk(1, 59, &[p])))]),
        ),
    ];
    for (what, c) in cases {
        assert!(matches!(err(s.commit_layout(f, &c)), DirError::Invalid(_)), "{what}");
        assert_eq!(s.getattr(f).unwrap(), before, "{what}");
        assert_eq!(indexes(&s, f), vec![0], "{what}");
        assert_eq!(refcount(&s, 1), Some(1), "{what}");
        assert_eq!(refcount(&s, 2), None, "{what}");
        assert_eq!(refcount(&s, 3), None, "{what}");
    }
    let d = mkdir(&s, ROOT, "d");
    assert_eq!(err(s.commit_layout(d, &layout(0, vec![]))), DirError::IsDir);
    let l = s.symlink(ROOT, &n("l"), b"t", 1, 0, 0).unwrap().ino;
    assert!(matches!(err(s.commit_layout(l, &layout(0, vec![]))), DirError::Invalid(_)));
    assert_eq!(err(s.commit_layout(InodeId(999), &layout(0, vec![]))), DirError::NotFound);
    assert_eq!(err(s.get_layout(d, 0, 1)), DirError::IsDir);
    assert!(matches!(err(s.get_layout(l, 0, 1)), DirError::Invalid(_)));
}

fn layout(size: u64, blocks: Vec<(u64, Option<StoredChunk>)>) -> CommitLayout {
    CommitLayout { held_ms: 0, attrs: Default::default(), size, mtime: Timestamp::now(), blocks }
}

#[test]
fn chunk_replicas_answers_in_order_with_empty_sets_for_unknown_chunks() {
    let dir = tmp();
    let s = new_store(dir.path());
    let (p1, p2) = (peer(&s, 1), peer(&s, 2));
    let f = mkfile(&s, ROOT, "f");
    commit(&s, f, 2 * u64::from(B), vec![(0, Some(chunk(1, 58, &[p1]))), (1, Some(chunk(2, 58, &[p2, p1])))]);
    let got = s.chunk_replicas(&[ChunkId::of(&[2]), ChunkId::of(&[7]), ChunkId::of(&[1])]).unwrap();
    assert_eq!(got, vec![vec![p2, p1], vec![], vec![p1]]);
}
