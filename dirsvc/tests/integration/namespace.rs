//! Namespace semantics of the store: init, create, link, unlink, rmdir,
//! rename in all its forms, symlinks, timestamps, durability.

use super::support::*;
use common::rpc::dir::{rename_flags, CommitLayout, DirError, FileKind, NewInode, SetAttr};
use common::time::Timestamp;
use common::InodeId;
use dirsvc::Store;

#[test]
fn every_namespace_call_is_refused_before_init_and_init_happens_once() {
    let dir = tmp();
    let s = Store::open(&db_path(dir.path())).unwrap();
    assert_eq!(err(s.getattr(ROOT)), DirError::NotInitialized);
    assert_eq!(err(s.lookup(ROOT, &n("a"))), DirError::NotInitialized);
    assert_eq!(err(s.create(ROOT, &n("a"), &file())), DirError::NotInitialized);
    assert_eq!(err(s.readdir(ROOT, 0, 10)), DirError::NotInitialized);
    assert_eq!(err(s.volume_info()), DirError::NotInitialized);

    let mut bad = volume(2);
    bad.block_size = 5000;
    assert!(matches!(err(s.init_volume(&bad, 0, 0)), DirError::Invalid(_)));
    bad.block_size = 1 << 30;
    assert!(matches!(err(s.init_volume(&bad, 0, 0)), DirError::Invalid(_)));
    assert!(matches!(err(s.init_volume(&volume(0), 0, 0)), DirError::Invalid(_)));

    let info = s.init_volume(&volume(2), 1000, 100).unwrap();
    assert_eq!(info, volume(2));
    assert_eq!(s.volume_info().unwrap(), volume(2));
    let root = s.getattr(ROOT).unwrap();
    assert_eq!(root.kind, FileKind::Dir);
    assert_eq!((root.perm, root.uid, root.gid, root.nlink), (0o755, 1000, 100, 2));
    assert_eq!(err(s.init_volume(&volume(3), 0, 0)), DirError::AlreadyInitialized);
}

#[test]
fn mkdir_and_create_link_into_the_parent_and_refuse_duplicates() {
    let dir = tmp();
    let s = new_store(dir.path());
    let d = s.mkdir(ROOT, &n("d"), 0o40750, 7, 8).unwrap();
    assert_eq!((d.kind, d.perm, d.uid, d.gid, d.nlink), (FileKind::Dir, 0o750, 7, 8, 2));
    assert_eq!(s.getattr(ROOT).unwrap().nlink, 3);
    let f = s.create(d.ino, &n("f"), &file()).unwrap();
    assert_eq!((f.kind, f.perm, f.nlink, f.size), (FileKind::File, 0o644, 1, 0));
    assert_eq!(s.getattr(d.ino).unwrap().nlink, 2, "files do not add links");
    assert_eq!(s.lookup(d.ino, &n("f")).unwrap(), f);
    assert_eq!(err(s.lookup(d.ino, &n("g"))), DirError::NotFound);

    assert_eq!(err(s.create(d.ino, &n("f"), &file())), DirError::Exists);
    assert_eq!(err(s.mkdir(d.ino, &n("f"), 0o755, 0, 0)), DirError::Exists);
    assert_eq!(err(s.create(f.ino, &n("x"), &file())), DirError::NotDir);
    assert_eq!(err(s.lookup(f.ino, &n("x"))), DirError::NotDir);
    assert_eq!(err(s.create(InodeId(999), &n("x"), &file())), DirError::NotFound);
    assert_eq!(err(s.getattr(InodeId(999))), DirError::NotFound);
    for kind in [FileKind::Dir, FileKind::Symlink] {
        let new = NewInode { kind, ..file() };
        assert!(matches!(err(s.create(ROOT, &n("k"), &new)), DirError::Invalid(_)));
    }
    let dev = NewInode { kind: FileKind::CharDevice, rdev: 0x0103, ..file() };
    assert_eq!(s.create(ROOT, &n("null"), &dev).unwrap().rdev, 0x0103);
    let fifo = NewInode { kind: FileKind::Fifo, rdev: 77, ..file() };
    assert_eq!(s.create(ROOT, &n("fifo"), &fifo).unwrap().rdev, 0, "rdev only for devices");
}

#[test]
fn names_are_opaque_bytes_limited_in_length_only() {
    let dir = tmp();
    let s = new_store(dir.path());
    let odd = vec![0u8, b'/', 0xff, b'.', 0];
    s.create(ROOT, &odd, &file()).unwrap();
    assert!(s.lookup(ROOT, &odd).is_ok());
    let longest = vec![b'a'; dirsvc::store::MAX_NAME_BYTES];
    s.create(ROOT, &longest, &file()).unwrap();
    let too_long = vec![b'a'; dirsvc::store::MAX_NAME_BYTES + 1];
    assert_eq!(err(s.create(ROOT, &too_long, &file())), DirError::NameTooLong);
    assert_eq!(err(s.lookup(ROOT, &too_long)), DirError::NameTooLong);
    assert!(matches!(err(s.create(ROOT, b"", &file())), DirError::Invalid(_)));
    assert!(matches!(err(s.mkdir(ROOT, b"", 0o755, 0, 0)), DirError::Invalid(_)));
}

#[test]
fn unlink_frees_the_inode_and_refuses_directories() {
    let dir = tmp();
    let s = new_store(dir.path());
    let p = peer(&s, 1);
    let f = mkfile(&s, ROOT, "f");
    s.commit_layout(
        f,
        &CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
            size: 10,
            mtime: Timestamp::now(),
            blocks: vec![(0, Some(chunk(1, 58, &[p])))],
        },
    )
    .unwrap();
    mkdir(&s, ROOT, "d");
    assert_eq!(err(s.unlink(ROOT, &n("d"))), DirError::IsDir);
    assert_eq!(err(s.unlink(ROOT, &n("nope"))), DirError::NotFound);
    s.unlink(ROOT, &n("f")).unwrap();
    assert_eq!(err(s.getattr(f)), DirError::NotFound);
    assert_eq!(err(s.lookup(ROOT, &n("f"))), DirError::NotFound);
    assert_eq!(refcount(&s, 1), Some(0));
    assert!(unreferenced(&s, 1));
}

#[test]
fn rmdir_removes_only_empty_directories() {
    let dir = tmp();
    let s = new_store(dir.path());
    let d = mkdir(&s, ROOT, "d");
    mkfile(&s, d, "f");
    mkfile(&s, ROOT, "plain");
    assert_eq!(s.getattr(ROOT).unwrap().nlink, 3);
    assert_eq!(err(s.rmdir(ROOT, &n("d"))), DirError::NotEmpty);
    assert_eq!(err(s.rmdir(ROOT, &n("plain"))), DirError::NotDir);
    assert_eq!(err(s.rmdir(ROOT, &n("nope"))), DirError::NotFound);
    s.unlink(d, &n("f")).unwrap();
    s.rmdir(ROOT, &n("d")).unwrap();
    assert_eq!(err(s.getattr(d)), DirError::NotFound);
    assert_eq!(s.getattr(ROOT).unwrap().nlink, 2);
}

#[test]
fn rename_over_a_file_frees_the_old_target_and_its_chunks() {
    let dir = tmp();
    let s = new_store(dir.path());
    let p = peer(&s, 1);
    let a = mkfile(&s, ROOT, "a");
    let b = mkfile(&s, ROOT, "b");
    s.commit_layout(
        b,
        &CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
            size: 2 * u64::from(B),
            mtime: Timestamp::now(),
            blocks: vec![(0, Some(chunk(1, 100, &[p]))), (1, Some(chunk(2, 100, &[p])))],
        },
    )
    .unwrap();
    s.rename(ROOT, &n("a"), ROOT, &n("b"), 0).unwrap();
    assert_eq!(s.lookup(ROOT, &n("b")).unwrap().ino, a);
    assert_eq!(err(s.lookup(ROOT, &n("a"))), DirError::NotFound);
    assert_eq!(err(s.getattr(b)), DirError::NotFound);
    assert_eq!((refcount(&s, 1), refcount(&s, 2)), (Some(0), Some(0)));
    assert!(unreferenced(&s, 1) && unreferenced(&s, 2));
    let names: Vec<_> = s.readdir(ROOT, 0, 100).unwrap().entries;
    assert_eq!(names.len(), 1);
}

#[test]
fn rename_over_a_hard_linked_file_keeps_its_other_name() {
    let dir = tmp();
    let s = new_store(dir.path());
    mkfile(&s, ROOT, "a");
    let b = mkfile(&s, ROOT, "b");
    s.link(b, ROOT, &n("b2")).unwrap();
    s.rename(ROOT, &n("a"), ROOT, &n("b"), 0).unwrap();
    let survivor = s.lookup(ROOT, &n("b2")).unwrap();
    assert_eq!((survivor.ino, survivor.nlink), (b, 1));
}

#[test]
fn rename_of_a_directory_over_an_empty_directory_fixes_links_and_parent() {
    let dir = tmp();
    let s = new_store(dir.path());
    let x = mkdir(&s, ROOT, "x");
    let y = mkdir(&s, ROOT, "y");
    let src = mkdir(&s, x, "src");
    mkfile(&s, src, "inner");
    let empty = mkdir(&s, y, "empty");
    assert_eq!(s.getattr(x).unwrap().nlink, 3);
    assert_eq!(s.getattr(y).unwrap().nlink, 3);

    s.rename(x, &n("src"), y, &n("empty"), 0).unwrap();
    assert_eq!(err(s.getattr(empty)), DirError::NotFound);
    assert_eq!(s.lookup(y, &n("empty")).unwrap().ino, src);
    assert_eq!(s.lookup(src, &n("inner")).unwrap().kind, FileKind::File);
    assert_eq!(s.getattr(x).unwrap().nlink, 2, "x lost its subdirectory");
    assert_eq!(s.getattr(y).unwrap().nlink, 3, "y swapped one subdirectory for another");
    // The moved directory's parent pointer now names y: moving y into it is
    // refused as a cycle.
    assert!(matches!(err(s.rename(ROOT, &n("y"), src, &n("loop"), 0)), DirError::Invalid(_)));
}

#[test]
fn rename_refuses_non_empty_and_mismatched_targets_without_changing_anything() {
    let dir = tmp();
    let s = new_store(dir.path());
    let a = mkdir(&s, ROOT, "a");
    let full = mkdir(&s, ROOT, "full");
    mkfile(&s, full, "x");
    let f = mkfile(&s, ROOT, "f");
    assert_eq!(err(s.rename(ROOT, &n("a"), ROOT, &n("full"), 0)), DirError::NotEmpty);
    assert_eq!(err(s.rename(ROOT, &n("a"), ROOT, &n("f"), 0)), DirError::NotDir);
    assert_eq!(err(s.rename(ROOT, &n("f"), ROOT, &n("a"), 0)), DirError::IsDir);
    assert_eq!(err(s.rename(ROOT, &n("zz"), ROOT, &n("a"), 0)), DirError::NotFound);
    assert_eq!(err(s.rename(ROOT, &n("f"), f, &n("a"), 0)), DirError::NotDir);
    assert!(matches!(err(s.rename(ROOT, &n("f"), ROOT, &n("g"), 8)), DirError::Invalid(_)));
    assert!(matches!(err(s.rename(ROOT, &n("f"), ROOT, &n("g"), 3)), DirError::Invalid(_)));
    // A directory cannot replace one of its own ancestors.
    let inner = mkdir(&s, full, "inner");
    assert_eq!(err(s.rename(full, &n("inner"), ROOT, &n("full"), 0)), DirError::NotEmpty);
    assert_eq!(s.lookup(ROOT, &n("a")).unwrap().ino, a);
    assert_eq!(s.lookup(ROOT, &n("full")).unwrap().ino, full);
    assert_eq!(s.lookup(full, &n("inner")).unwrap().ino, inner);
    assert_eq!(s.lookup(ROOT, &n("f")).unwrap().ino, f);
}

#[test]
fn rename_noreplace_refuses_an_existing_target() {
    let dir = tmp();
    let s = new_store(dir.path());
    let a = mkfile(&s, ROOT, "a");
    let b = mkfile(&s, ROOT, "b");
    assert_eq!(err(s.rename(ROOT, &n("a"), ROOT, &n("b"), rename_flags::NOREPLACE)), DirError::Exists);
    assert_eq!(s.lookup(ROOT, &n("a")).unwrap().ino, a);
    assert_eq!(s.lookup(ROOT, &n("b")).unwrap().ino, b);
    s.rename(ROOT, &n("a"), ROOT, &n("c"), rename_flags::NOREPLACE).unwrap();
    assert_eq!(s.lookup(ROOT, &n("c")).unwrap().ino, a);
}

#[test]
fn rename_exchange_swaps_a_file_and_a_directory_across_parents() {
    let dir = tmp();
    let s = new_store(dir.path());
    let x = mkdir(&s, ROOT, "x");
    let y = mkdir(&s, ROOT, "y");
    let f = mkfile(&s, x, "f");
    let d = mkdir(&s, y, "d");
    mkfile(&s, d, "inside");
    let cookie_before: Vec<u64> = s.readdir(x, 0, 10).unwrap().entries.iter().map(|e| e.cookie).collect();
    s.rename(x, &n("f"), y, &n("d"), rename_flags::EXCHANGE).unwrap();
    let at_x = s.lookup(x, &n("f")).unwrap();
    let at_y = s.lookup(y, &n("d")).unwrap();
    assert_eq!((at_x.ino, at_x.kind), (d, FileKind::Dir));
    assert_eq!((at_y.ino, at_y.kind), (f, FileKind::File));
    assert_eq!(s.getattr(x).unwrap().nlink, 3, "x gained the directory");
    assert_eq!(s.getattr(y).unwrap().nlink, 2, "y lost it");
    let listed = s.readdir(x, 0, 10).unwrap().entries;
    assert_eq!(listed[0].kind, FileKind::Dir);
    assert_eq!(vec![listed[0].cookie], cookie_before, "exchange keeps cookies");
    // d's parent is now x: moving x into d is a cycle.
    assert!(matches!(err(s.rename(ROOT, &n("x"), d, &n("x"), 0)), DirError::Invalid(_)));
    assert_eq!(err(s.rename(x, &n("f"), y, &n("missing"), rename_flags::EXCHANGE)), DirError::NotFound);
}

#[test]
fn rename_exchange_of_two_directories_keeps_link_counts() {
    let dir = tmp();
    let s = new_store(dir.path());
    let x = mkdir(&s, ROOT, "x");
    let y = mkdir(&s, ROOT, "y");
    let a = mkdir(&s, x, "a");
    let b = mkdir(&s, y, "b");
    s.rename(x, &n("a"), y, &n("b"), rename_flags::EXCHANGE).unwrap();
    assert_eq!(s.lookup(x, &n("a")).unwrap().ino, b);
    assert_eq!(s.lookup(y, &n("b")).unwrap().ino, a);
    assert_eq!((s.getattr(x).unwrap().nlink, s.getattr(y).unwrap().nlink), (3, 3));
    // Exchanging a directory with its own ancestor is a cycle.
    let deep = mkdir(&s, a, "deep");
    let _ = deep;
    assert!(matches!(
        err(s.rename(a, &n("deep"), ROOT, &n("y"), rename_flags::EXCHANGE)),
        DirError::Invalid(_)
    ));
}

#[test]
fn moving_a_directory_into_its_own_subtree_is_invalid() {
    let dir = tmp();
    let s = new_store(dir.path());
    let a = mkdir(&s, ROOT, "a");
    let b = mkdir(&s, a, "b");
    let c = mkdir(&s, b, "c");
    for target in [a, b, c] {
        assert!(
            matches!(err(s.rename(ROOT, &n("a"), target, &n("a2"), 0)), DirError::Invalid(_)),
            "into {target}"
        );
    }
    // Moving the other way (up) is fine.
    s.rename(b, &n("c"), ROOT, &n("c"), 0).unwrap();
    assert_eq!(s.getattr(b).unwrap().nlink, 2);
    assert_eq!(s.getattr(ROOT).unwrap().nlink, 4);
}

#[test]
fn rename_onto_the_same_inode_is_a_no_op() {
    let dir = tmp();
    let s = new_store(dir.path());
    let f = mkfile(&s, ROOT, "f");
    s.link(f, ROOT, &n("g")).unwrap();
    s.rename(ROOT, &n("f"), ROOT, &n("g"), 0).unwrap();
    s.rename(ROOT, &n("f"), ROOT, &n("f"), 0).unwrap();
    assert_eq!(s.lookup(ROOT, &n("f")).unwrap().ino, f);
    assert_eq!(s.lookup(ROOT, &n("g")).unwrap().nlink, 2);
}

#[test]
fn rename_updates_times_and_gives_the_entry_a_fresh_cookie() {
    let dir = tmp();
    let s = new_store(dir.path());
    let x = mkdir(&s, ROOT, "x");
    let f = mkfile(&s, ROOT, "f");
    let before_root = s.getattr(ROOT).unwrap();
    let before_f = s.getattr(f).unwrap();
    let old_cookie = s.readdir(ROOT, 0, 10).unwrap().entries[1].cookie;
    std::thread::sleep(std::time::Duration::from_millis(5));
    s.rename(ROOT, &n("f"), x, &n("f"), 0).unwrap();
    let root = s.getattr(ROOT).unwrap();
    assert!(root.mtime > before_root.mtime && root.ctime > before_root.ctime);
    assert!(s.getattr(x).unwrap().mtime > before_root.mtime);
    let after_f = s.getattr(f).unwrap();
    assert!(after_f.ctime > before_f.ctime);
    assert_eq!(after_f.mtime, before_f.mtime, "content did not change");
    let new_cookie = s.readdir(x, 0, 10).unwrap().entries[0].cookie;
    assert!(new_cookie > old_cookie);
}

#[test]
fn hard_links_count_names_and_the_inode_survives_until_the_last_goes() {
    let dir = tmp();
    let s = new_store(dir.path());
    let p = peer(&s, 1);
    let d = mkdir(&s, ROOT, "d");
    let f = mkfile(&s, ROOT, "f");
    s.commit_layout(
        f,
        &CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
            size: 5,
            mtime: Timestamp::now(),
            blocks: vec![(0, Some(chunk(1, 53, &[p])))],
        },
    )
    .unwrap();
    let linked = s.link(f, d, &n("g")).unwrap();
    assert_eq!((linked.ino, linked.nlink), (f, 2));
    assert_eq!(s.lookup(d, &n("g")).unwrap().nlink, 2);
    assert_eq!(err(s.link(f, d, &n("g"))), DirError::Exists);
    assert_eq!(err(s.link(d, ROOT, &n("dirlink"))), DirError::IsDir);
    assert_eq!(err(s.link(InodeId(999), ROOT, &n("x"))), DirError::NotFound);
    assert_eq!(err(s.link(f, f, &n("x"))), DirError::NotDir);

    s.unlink(ROOT, &n("f")).unwrap();
    let survivor = s.lookup(d, &n("g")).unwrap();
    assert_eq!((survivor.ino, survivor.nlink, survivor.size), (f, 1, 5));
    assert_eq!(s.get_layout(f, 0, 10).unwrap().blocks.len(), 1);
    assert_eq!(refcount(&s, 1), Some(1));
    s.unlink(d, &n("g")).unwrap();
    assert_eq!(err(s.getattr(f)), DirError::NotFound);
    assert_eq!(refcount(&s, 1), Some(0));
}

#[test]
fn symlinks_store_their_sealed_target() {
    let dir = tmp();
    let s = new_store(dir.path());
    let l = s.symlink(ROOT, &n("l"), b"sealed-target", 6, 3, 4).unwrap();
    assert_eq!((l.kind, l.size, l.perm, l.uid), (FileKind::Symlink, 6, 0o777, 3));
    assert_eq!(s.readlink(l.ino).unwrap(), b"sealed-target");
    let f = mkfile(&s, ROOT, "f");
    assert!(matches!(err(s.readlink(f)), DirError::Invalid(_)));
    assert!(matches!(err(s.symlink(ROOT, &n("e"), b"", 0, 0, 0)), DirError::Invalid(_)));
    let huge = vec![1u8; dirsvc::store::MAX_TARGET_BYTES + 1];
    assert_eq!(err(s.symlink(ROOT, &n("h"), &huge, 10, 0, 0)), DirError::NameTooLong);
    s.unlink(ROOT, &n("l")).unwrap();
    assert_eq!(err(s.readlink(l.ino)), DirError::NotFound);
}

#[test]
fn setattr_changes_what_is_given_and_sets_ctime() {
    let dir = tmp();
    let s = new_store(dir.path());
    let f = mkfile(&s, ROOT, "f");
    let before = s.getattr(f).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let unchanged = s.setattr(f, &SetAttr::default()).unwrap();
    assert_eq!(unchanged, before, "an empty setattr changes nothing");
    let t = Timestamp { secs: 1_000_000, nanos: 5 };
    let a = s
        .setattr(
            f,
            &SetAttr {
                perm: Some(0o104755),
                uid: Some(1),
                gid: Some(2),
                atime: Some(t),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!((a.perm, a.uid, a.gid, a.atime), (0o4755, 1, 2, t));
    assert_eq!(a.mtime, before.mtime);
    assert!(a.ctime > before.ctime);
    let grown = s.setattr(f, &SetAttr { size: Some(12345), ..SetAttr::default() }).unwrap();
    assert_eq!(grown.size, 12345);
    assert!(grown.mtime > before.mtime, "a size change sets mtime");
    let explicit = s.setattr(f, &SetAttr { size: Some(1), mtime: Some(t), ..SetAttr::default() }).unwrap();
    assert_eq!((explicit.size, explicit.mtime), (1, t));
    let d = mkdir(&s, ROOT, "d");
    assert_eq!(err(s.setattr(d, &SetAttr { size: Some(0), ..SetAttr::default() })), DirError::IsDir);
    assert_eq!(err(s.setattr(InodeId(999), &SetAttr::default())), DirError::NotFound);
}

#[test]
fn creating_and_removing_entries_updates_the_parent_times() {
    let dir = tmp();
    let s = new_store(dir.path());
    let d = mkdir(&s, ROOT, "d");
    let mut last = s.getattr(d).unwrap();
    type Step = Box<dyn Fn(&Store)>;
    let steps: Vec<Step> = vec![
        Box::new(move |s| {
            mkfile(s, d, "f");
        }),
        Box::new(move |s| {
            s.link(s.lookup(d, &n("f")).unwrap().ino, d, &n("g")).unwrap();
        }),
        Box::new(move |s| {
            s.unlink(d, &n("g")).unwrap();
        }),
        Box::new(move |s| {
            mkdir(s, d, "sub");
        }),
        Box::new(move |s| {
            s.rmdir(d, &n("sub")).unwrap();
        }),
        Box::new(move |s| {
            s.symlink(d, &n("l"), b"t", 1, 0, 0).unwrap();
        }),
    ];
    for (i, step) in steps.iter().enumerate() {
        std::thread::sleep(std::time::Duration::from_millis(2));
        step(&s);
        let now = s.getattr(d).unwrap();
        assert!(now.mtime > last.mtime && now.ctime > last.ctime, "step {i}");
        last = now;
    }
}

#[test]
fn everything_survives_closing_and_reopening_the_database() {
    let dir = tmp();
    let (d, f, l);
    {
        let s = new_store(dir.path());
        let p = peer(&s, 1);
        d = mkdir(&s, ROOT, "d");
        f = mkfile(&s, d, "f");
        s.commit_layout(
            f,
            &CommitLayout {
                held_ms: 0,
                attrs: Default::default(),
                size: 100,
                mtime: Timestamp { secs: 42, nanos: 0 },
                blocks: vec![(0, Some(chunk(1, 148, &[p])))],
            },
        )
        .unwrap();
        l = s.symlink(ROOT, &n("l"), b"target", 3, 0, 0).unwrap().ino;
        s.rename(d, &n("f"), ROOT, &n("moved"), 0).unwrap();
    }
    let s = Store::open(&db_path(dir.path())).unwrap();
    assert_eq!(s.volume_info().unwrap(), volume(2));
    assert_eq!(err(s.init_volume(&volume(2), 0, 0)), DirError::AlreadyInitialized);
    let moved = s.lookup(ROOT, &n("moved")).unwrap();
    assert_eq!((moved.ino, moved.size, moved.mtime.secs, moved.stored_bytes), (f, 100, 42, 148));
    assert_eq!(s.get_layout(f, 0, 1).unwrap().blocks[0].replicas, vec![common::PeerId([1; 16])]);
    assert_eq!(s.readlink(l).unwrap(), b"target");
    assert!(s.readdir(d, 0, 10).unwrap().entries.is_empty());
    assert_eq!(s.peers().unwrap().len(), 1);
    // Counters carry on: new inodes and cookies are not reused.
    let g = mkfile(&s, ROOT, "g");
    assert!(g.0 > l.0);
    let cookies: Vec<u64> = s.readdir(ROOT, 0, 10).unwrap().entries.iter().map(|e| e.cookie).collect();
    let mut sorted = cookies.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, cookies);
    assert_eq!(s.inode_count().unwrap(), 5);
}

#[test]
fn a_second_open_of_the_same_database_is_refused_not_corrupted() {
    let dir = tmp();
    let s = new_store(dir.path());
    assert!(matches!(Store::open(&db_path(dir.path())), Err(dirsvc::Error::Db(_))));
    assert!(s.getattr(ROOT).is_ok());
}
