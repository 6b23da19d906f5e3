//! Extended attributes in the store: create/replace flags, removal,
//! listing, size limits, ctime, every inode kind, deletion with the inode,
//! durability.

use super::support::*;
use common::rpc::dir::{
    xattr_flags, DirError, FileKind, NewInode, XATTR_INODE_MAX, XATTR_SEALED_NAME_MAX, XATTR_SEALED_VALUE_MAX,
};
use common::InodeId;
use dirsvc::Store;
use std::path::Path;

/// Extended-attribute keys (tag `X`) in the database file at `path` (the
/// store must be closed), read with redb directly from `kv-v1`.
fn raw_xattr_rows(path: &Path) -> u64 {
    use redb::{ReadableDatabase, TableDefinition};
    let t: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv-v1");
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(t).unwrap();
    table.range::<&[u8]>(&b"X"[..]..&b"Y"[..]).unwrap().count() as u64
}

#[test]
fn set_get_replace_and_remove_follow_setxattr_flags() {
    let dir = tmp();
    let s = new_store(dir.path());
    let f = mkfile(&s, ROOT, "f");
    assert_eq!(err(s.getxattr(f, b"user.a")), DirError::NoAttr);
    assert_eq!(err(s.setxattr(f, b"user.a", b"1", xattr_flags::REPLACE)), DirError::NoAttr);
    s.setxattr(f, b"user.a", b"1", xattr_flags::CREATE).unwrap();
    assert_eq!(s.getxattr(f, b"user.a").unwrap(), b"1");
    assert_eq!(err(s.setxattr(f, b"user.a", b"2", xattr_flags::CREATE)), DirError::Exists);
    s.setxattr(f, b"user.a", b"22", xattr_flags::REPLACE).unwrap();
    assert_eq!(s.getxattr(f, b"user.a").unwrap(), b"22");
    s.setxattr(f, b"user.a", b"", 0).unwrap();
    assert_eq!(s.getxattr(f, b"user.a").unwrap(), b"", "empty values are values");
    s.setxattr(f, b"user.b", &[0, 255, 10], 0).unwrap();
    let mut names = s.listxattr(f).unwrap();
    names.sort();
    assert_eq!(names, vec![b"user.a".to_vec(), b"user.b".to_vec()]);
    s.removexattr(f, b"user.a").unwrap();
    assert_eq!(err(s.removexattr(f, b"user.a")), DirError::NoAttr);
    assert_eq!(err(s.getxattr(f, b"user.a")), DirError::NoAttr);
    assert_eq!(s.listxattr(f).unwrap(), vec![b"user.b".to_vec()]);
    // Attributes are per inode.
    let g = mkfile(&s, ROOT, "g");
    assert!(s.listxattr(g).unwrap().is_empty());
    assert_eq!(err(s.getxattr(g, b"user.b")), DirError::NoAttr);
    // Missing inode, empty name, unknown flags.
    assert_eq!(err(s.getxattr(InodeId(999), b"user.b")), DirError::NotFound);
    assert_eq!(err(s.listxattr(InodeId(999))), DirError::NotFound);
    assert_eq!(err(s.setxattr(InodeId(999), b"k", b"v", 0)), DirError::NotFound);
    assert_eq!(err(s.removexattr(InodeId(999), b"k")), DirError::NotFound);
    assert!(matches!(err(s.setxattr(f, b"", b"v", 0)), DirError::Invalid(_)));
    assert!(matches!(err(s.getxattr(f, b"")), DirError::Invalid(_)));
    assert!(matches!(err(s.setxattr(f, b"k", b"v", 4)), DirError::Invalid(_)));
}

#[test]
fn names_values_and_the_per_inode_total_are_limited() {
    let dir = tmp();
    let s = new_store(dir.path());
    let f = mkfile(&s, ROOT, "f");
    let long_name = vec![b'n'; XATTR_SEALED_NAME_MAX];
    s.setxattr(f, &long_name, b"v", 0).unwrap();
    assert_eq!(err(s.setxattr(f, &vec![b'n'; XATTR_SEALED_NAME_MAX + 1], b"v", 0)), DirError::TooBig);
    assert_eq!(err(s.getxattr(f, &vec![b'n'; XATTR_SEALED_NAME_MAX + 1])), DirError::TooBig);
    let big = vec![7u8; XATTR_SEALED_VALUE_MAX];
    s.setxattr(f, b"big", &big, 0).unwrap();
    assert_eq!(s.getxattr(f, b"big").unwrap(), big);
    assert_eq!(err(s.setxattr(f, b"big2", &vec![7u8; XATTR_SEALED_VALUE_MAX + 1], 0)), DirError::TooBig);

    // Fill the inode up to its total.
    let g = mkfile(&s, ROOT, "g");
    let mut total = 0usize;
    let mut last = (Vec::new(), 0usize);
    for i in 0u32.. {
        let name = format!("k{i:05}").into_bytes();
        let len = XATTR_SEALED_VALUE_MAX.min((XATTR_INODE_MAX - total).saturating_sub(name.len()));
        if len == 0 {
            break;
        }
        s.setxattr(g, &name, &vec![1u8; len], 0).unwrap();
        total += name.len() + len;
        last = (name, len);
    }
    assert_eq!(total, XATTR_INODE_MAX);
    assert!(last.1 < XATTR_SEALED_VALUE_MAX, "the last value is a partial one");
    assert_eq!(err(s.setxattr(g, b"one-more", b"x", 0)), DirError::NoSpace);
    // Replacing a value counts the old one out: the same size fits, one
    // byte more does not.
    let (name, len) = last;
    s.setxattr(g, &name, &vec![2u8; len], xattr_flags::REPLACE).unwrap();
    assert_eq!(err(s.setxattr(g, &name, &vec![2u8; len + 1], xattr_flags::REPLACE)), DirError::NoSpace);
    assert_eq!(s.getxattr(g, &name).unwrap(), vec![2u8; len], "a refused set changes nothing");
    s.removexattr(g, &name).unwrap();
    s.setxattr(g, b"one-more", b"x", 0).unwrap();
    // Other inodes are not affected by g's total.
    s.setxattr(f, b"other", b"x", 0).unwrap();
}

#[test]
fn set_and_remove_change_ctime_only_and_work_on_every_kind() {
    let dir = tmp();
    let s = new_store(dir.path());
    let f = mkfile(&s, ROOT, "f");
    let d = mkdir(&s, ROOT, "d");
    let l = s.symlink(ROOT, &n("l"), b"target", 6, 0, 0).unwrap().ino;
    let fifo = s.create(ROOT, &n("p"), &NewInode { kind: FileKind::Fifo, ..file() }).unwrap().ino;
    for ino in [f, d, l, fifo, ROOT] {
        let before = s.getattr(ino).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = s.setxattr(ino, b"user.x", b"1", 0).unwrap();
        assert!(after.ctime > before.ctime, "{ino}");
        assert_eq!((after.mtime, after.size, after.perm), (before.mtime, before.size, before.perm));
        assert_eq!(s.getattr(ino).unwrap(), after);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let removed = s.removexattr(ino, b"user.x").unwrap();
        assert!(removed.ctime > after.ctime);
        // A refused call changes nothing.
        assert_eq!(err(s.removexattr(ino, b"user.x")), DirError::NoAttr);
        assert_eq!(s.getattr(ino).unwrap(), removed);
    }
}

#[test]
fn attributes_go_with_their_inode_and_survive_a_restart() {
    let dir = tmp();
    let path = db_path(dir.path());
    let (kept, keep_dir) = {
        let s = new_store(dir.path());
        let f = mkfile(&s, ROOT, "f");
        let hard = mkfile(&s, ROOT, "hard");
        s.link(hard, ROOT, &n("hard2")).unwrap();
        let d = mkdir(&s, ROOT, "d");
        let over = mkdir(&s, ROOT, "over");
        let l = s.symlink(ROOT, &n("l"), b"target", 6, 0, 0).unwrap().ino;
        let replaced = mkfile(&s, ROOT, "replaced");
        let keep_dir = mkdir(&s, ROOT, "keep");
        for ino in [f, hard, d, over, l, replaced, keep_dir] {
            s.setxattr(ino, b"user.a", b"1", 0).unwrap();
            s.setxattr(ino, b"user.b", b"2", 0).unwrap();
        }
        s.unlink(ROOT, &n("f")).unwrap();
        s.unlink(ROOT, &n("l")).unwrap();
        s.unlink(ROOT, &n("hard")).unwrap();
        s.rmdir(ROOT, &n("d")).unwrap();
        s.rename(ROOT, &n("keep"), ROOT, &n("over"), 0).unwrap();
        s.rename(ROOT, &n("hard2"), ROOT, &n("replaced"), 0).unwrap();
        for gone in [f, l, d, over, replaced] {
            assert_eq!(err(s.listxattr(gone)), DirError::NotFound);
        }
        assert_eq!(s.listxattr(hard).unwrap().len(), 2, "one name left");
        (hard, keep_dir)
    };
    assert_eq!(raw_xattr_rows(&path), 4, "only the two live inodes' rows remain");
    let s = Store::open(&path).unwrap();
    assert_eq!(s.getxattr(kept, b"user.a").unwrap(), b"1");
    assert_eq!(s.getxattr(keep_dir, b"user.b").unwrap(), b"2");
}
