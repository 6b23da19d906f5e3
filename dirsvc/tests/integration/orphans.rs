//! Orphans in the store: an inode that loses its last name while held open
//! keeps its record, layout and attributes (nlink 0, listed as an orphan)
//! until it is freed, then goes exactly as an unlinked file does.

use super::support::*;
use common::rpc::dir::{CommitLayout, DirError, SetAttr};
use common::time::Timestamp;
use common::InodeId;
use dirsvc::store::Removed;
use dirsvc::Store;

const KEEP: &dyn Fn(InodeId) -> bool = &|_| true;
const FREE: &dyn Fn(InodeId) -> bool = &|_| false;

fn commit_chunk(s: &Store, f: InodeId, k: u8) {
    let ps = [peer(s, 1), peer(s, 2)];
    let commit = CommitLayout {
        held_ms: 0,
        attrs: Default::default(),
        size: 10,
        mtime: Timestamp::now(),
        blocks: vec![(0, Some(chunk(k, 58, &ps)))],
    };
    s.commit_layout(f, &commit).unwrap();
}

#[test]
fn a_kept_inode_lives_on_by_number_until_freed_with_its_chunks_and_attributes() {
    let dir = tmp();
    let s = new_store(dir.path());
    let f = mkfile(&s, ROOT, "f");
    commit_chunk(&s, f, 1);
    s.setxattr(f, b"user.k", b"v", 0).unwrap();
    let removed = s.unlink_keeping(ROOT, &n("f"), KEEP).unwrap();
    assert_eq!(removed, Removed { ino: f, orphaned: true });
    assert_eq!(s.orphans().unwrap(), vec![f]);
    assert_eq!(err(s.lookup(ROOT, &n("f"))), DirError::NotFound);
    assert!(s.readdir(ROOT, 0, 10).unwrap().entries.is_empty());
    assert_eq!(s.getattr(f).unwrap().nlink, 0);
    assert_eq!(s.get_layout(f, 0, 10).unwrap().blocks.len(), 1);
    assert_eq!(refcount(&s, 1), Some(1));
    assert_eq!(s.getxattr(f, b"user.k").unwrap(), b"v");
    // Still writable by number.
    commit_chunk(&s, f, 2);
    assert_eq!(refcount(&s, 1), Some(0));
    assert_eq!(refcount(&s, 2), Some(1));
    let a = s.setattr(f, &SetAttr { size: Some(0), ..SetAttr::default() }).unwrap();
    assert_eq!((a.size, a.nlink), (0, 0));
    commit_chunk(&s, f, 3);
    assert_eq!(err(s.link(f, ROOT, &n("back"))), DirError::NotFound);
    assert_eq!(s.inode_count().unwrap(), 2);

    // Still held: nothing happens.
    assert!(s.free_orphans(&[f], KEEP).unwrap().is_empty());
    // A non-orphan is never freed by free_orphans.
    let g = mkfile(&s, ROOT, "g");
    assert_eq!(s.free_orphans(&[f, g], FREE).unwrap(), vec![f]);
    assert!(s.orphans().unwrap().is_empty());
    assert_eq!(err(s.getattr(f)), DirError::NotFound);
    assert_eq!(err(s.listxattr(f)), DirError::NotFound);
    assert_eq!(refcount(&s, 3), Some(0));
    assert!(unreferenced(&s, 3));
    assert!(s.getattr(g).is_ok());
    assert_eq!(s.inode_count().unwrap(), 2);
}

#[test]
fn only_the_last_link_of_a_non_directory_makes_an_orphan() {
    let dir = tmp();
    let s = new_store(dir.path());
    let f = mkfile(&s, ROOT, "f");
    s.link(f, ROOT, &n("g")).unwrap();
    assert_eq!(s.unlink_keeping(ROOT, &n("f"), KEEP).unwrap(), Removed { ino: f, orphaned: false });
    assert!(s.orphans().unwrap().is_empty());
    assert_eq!(s.getattr(f).unwrap().nlink, 1);
    // Not kept: freed at once, as before sessions.
    assert_eq!(s.unlink_keeping(ROOT, &n("g"), FREE).unwrap(), Removed { ino: f, orphaned: false });
    assert_eq!(err(s.getattr(f)), DirError::NotFound);
    // Symlinks and special files can be orphans too (their records stay).
    let l = s.symlink(ROOT, &n("l"), b"t", 1, 0, 0).unwrap().ino;
    assert!(s.unlink_keeping(ROOT, &n("l"), KEEP).unwrap().orphaned);
    assert_eq!(s.readlink(l).unwrap(), b"t");
    assert_eq!(s.free_orphans(&[l], FREE).unwrap(), vec![l]);
    assert_eq!(err(s.readlink(l)), DirError::NotFound);
}

#[test]
fn rename_over_a_kept_file_orphans_it_and_a_replaced_directory_is_always_freed() {
    let dir = tmp();
    let s = new_store(dir.path());
    let old = mkfile(&s, ROOT, "target");
    commit_chunk(&s, old, 1);
    let new = mkfile(&s, ROOT, "tmp");
    let r = s.rename_keeping(ROOT, &n("tmp"), ROOT, &n("target"), 0, KEEP).unwrap();
    assert_eq!((r.moved, r.replaced, r.orphaned), (new, Some(old), true));
    assert_eq!(s.orphans().unwrap(), vec![old]);
    assert_eq!(s.get_layout(old, 0, 10).unwrap().blocks.len(), 1);
    let d = mkdir(&s, ROOT, "d");
    let e = mkdir(&s, ROOT, "e");
    s.setxattr(e, b"user.k", b"v", 0).unwrap();
    let r = s.rename_keeping(ROOT, &n("d"), ROOT, &n("e"), 0, KEEP).unwrap();
    assert_eq!((r.moved, r.replaced, r.orphaned), (d, Some(e), false));
    assert_eq!(err(s.getattr(e)), DirError::NotFound);
    assert_eq!(s.orphans().unwrap(), vec![old]);
}

#[test]
fn orphans_survive_a_restart_of_the_store() {
    let dir = tmp();
    let path = db_path(dir.path());
    let f = {
        let s = new_store(dir.path());
        let f = mkfile(&s, ROOT, "f");
        commit_chunk(&s, f, 1);
        s.unlink_keeping(ROOT, &n("f"), KEEP).unwrap();
        f
    };
    let s = Store::open(&path).unwrap();
    assert_eq!(s.orphans().unwrap(), vec![f]);
    assert_eq!(s.getattr(f).unwrap().nlink, 0);
    assert_eq!(s.free_orphans(&[f], FREE).unwrap(), vec![f]);
    assert!(unreferenced(&s, 1));
}
