//! What dirsvc enforces for the client-side cryptography it cannot check:
//! layout entries carry a MAC and an epoch no newer than the newest; after
//! a member's removal no newly stored chunk of an older epoch is committed
//! (`StaleEpoch`), while shared (reflinked) entries keep theirs; keyring
//! changes are compare-and-set and only ever extend the keyring; inode
//! numbers for symlinks are reserved per session and used once; re-sealed
//! blocks replace only what is still there.

use super::support::*;
use super::svc::*;
use common::rpc::dir::{
    CommitLayout, DirError, KeyEpoch, Member, NewSymlink, Reseal, StoredChunk, RESERVED_PER_SESSION_MAX,
    RESERVE_PER_CALL_MAX,
};
use common::time::Timestamp;
use common::{ChunkId, InodeId, NodeId};
use tarpc::context;
use testkit::within;

fn commit(size: u64, blocks: Vec<(u64, Option<StoredChunk>)>) -> CommitLayout {
    CommitLayout { held_ms: 0, attrs: Default::default(), size, mtime: Timestamp::now(), blocks }
}

fn member(name: &str, recipient: &str) -> Member {
    Member { name: name.into(), recipient: recipient.into(), nodes: vec![NodeId([3; 16])] }
}

fn epoch(n: u32) -> KeyEpoch {
    KeyEpoch { epoch: n, wrapped: vec![n as u8 + 1; 100], check: [n as u8 + 1; 32], link: [0x11; 32] }
}

#[test]
fn entries_need_a_mac_and_a_known_epoch() {
    let d = tmp();
    let s = new_store(d.path());
    let p = peer(&s, 1);
    let f = mkfile(&s, ROOT, "f");
    let mut c = chunk(1, 100, &[p]);
    c.mac = [0; 32];
    assert!(matches!(err(s.commit_layout(f, &commit(10, vec![(0, Some(c))]))), DirError::Invalid(_)));
    let mut c = chunk(1, 100, &[p]);
    c.epoch = 1;
    assert!(matches!(err(s.commit_layout(f, &commit(10, vec![(0, Some(c))]))), DirError::Invalid(_)));
    let c = chunk(1, 100, &[p]);
    s.commit_layout(f, &commit(10, vec![(0, Some(c.clone()))])).unwrap();
    let l = s.get_layout(f, 0, 1).unwrap();
    assert_eq!((l.blocks[0].epoch, l.blocks[0].mac), (0, MAC));
    assert_eq!(refcount(&s, 1), Some(1));
}

#[test]
fn after_a_removal_only_the_new_epoch_stores_new_chunks_and_shared_ones_keep_theirs() {
    let d = tmp();
    let s = new_store(d.path());
    let p = peer(&s, 1);
    let (a, b) = (mkfile(&s, ROOT, "a"), mkfile(&s, ROOT, "b"));
    s.commit_layout(a, &commit(10, vec![(0, Some(chunk(1, 100, &[p])))])).unwrap();
    let v = s.volume_info().unwrap().keyring.version;
    s.add_member(v, &member("bob", "age1bob"), &[b"rewrapped".to_vec()]).unwrap();
    let v = v + 1;
    let (ring, gone) = s.remove_member(v, "bob", &epoch(1)).unwrap();
    assert_eq!((ring.version, ring.newest_epoch(), gone.name.as_str()), (v + 1, 1, "bob"));
    assert_eq!(gone.nodes, vec![NodeId([3; 16])], "the caller revokes these");
    // A new chunk of epoch 0: refused, nothing changes.
    let stale = chunk(2, 100, &[p]);
    assert_eq!(
        err(s.commit_layout(b, &commit(20, vec![(0, Some(stale.clone()))]))),
        DirError::StaleEpoch { current: 1 }
    );
    assert_eq!(s.getattr(b).unwrap().size, 0);
    assert_eq!(refcount(&s, 2), None);
    // The same block sealed under epoch 1: accepted.
    let mut fresh = chunk(3, 100, &[p]);
    fresh.epoch = 1;
    s.commit_layout(b, &commit(20, vec![(0, Some(fresh))])).unwrap();
    // A reflink of a's epoch-0 chunk into b (no replicas): accepted, and
    // keeps its epoch.
    let mut shared = chunk(1, 100, &[]);
    shared.mac = [9; 32];
    s.commit_layout(b, &commit(8192, vec![(1, Some(shared))])).unwrap();
    let l = s.get_layout(b, 0, 2).unwrap();
    let rows: Vec<(u32, [u8; 32])> = l.blocks.iter().map(|b| (b.epoch, b.mac)).collect();
    assert_eq!(rows, vec![(1, MAC), (0, [9; 32])]);
    assert_eq!(refcount(&s, 1), Some(2));
}

#[test]
fn keyring_changes_are_compare_and_set_and_extend_the_keyring() {
    let d = tmp();
    let s = new_store(d.path());
    let ring = s.volume_info().unwrap().keyring;
    assert_eq!((ring.version, ring.epochs.len(), ring.members.len()), (1, 1, 1));
    // Another version: refused.
    assert_eq!(
        err(s.add_member(0, &member("bob", "age1bob"), &[b"w".to_vec()])),
        DirError::KeyringChanged { version: 1 }
    );
    // A wrapped secret per epoch, no more, no less.
    assert!(matches!(err(s.add_member(1, &member("bob", "age1bob"), &[])), DirError::Invalid(_)));
    // Names and recipients are unique; names are plain.
    assert_eq!(err(s.add_member(1, &member("owner", "age1x"), &[b"w".to_vec()])), DirError::Exists);
    assert_eq!(err(s.add_member(1, &member("x", "age1testrecipient"), &[b"w".to_vec()])), DirError::Exists);
    assert!(matches!(err(s.add_member(1, &member("a b", "age1y"), &[b"w".to_vec()])), DirError::Invalid(_)));
    let ring = s.add_member(1, &member("bob", "age1bob"), &[b"w2".to_vec()]).unwrap();
    assert_eq!((ring.version, ring.members.len()), (2, 2));
    assert_eq!(ring.epochs[0].wrapped, b"w2", "every epoch re-wrapped");
    assert_eq!(ring.epochs[0].check, [1; 32], "check and link untouched");
    // Removal: the next epoch exactly, with a check and a link.
    assert!(matches!(err(s.remove_member(2, "bob", &epoch(2))), DirError::Invalid(_)));
    let mut no_link = epoch(1);
    no_link.link = [0; 32];
    assert!(matches!(err(s.remove_member(2, "bob", &no_link)), DirError::Invalid(_)));
    assert_eq!(err(s.remove_member(1, "bob", &epoch(1))), DirError::KeyringChanged { version: 2 });
    assert_eq!(err(s.remove_member(2, "carol", &epoch(1))), DirError::NotFound);
    let (ring, _) = s.remove_member(2, "bob", &epoch(1)).unwrap();
    assert_eq!((ring.version, ring.epochs.len(), ring.members.len()), (3, 2, 1));
    assert_eq!(ring.epochs[0].wrapped, b"w2", "earlier epochs unchanged");
    // The last member stays.
    assert!(matches!(err(s.remove_member(3, "owner", &epoch(2))), DirError::Invalid(_)));
    // It all survives a reopen.
    drop(s);
    let s = dirsvc::Store::open(&db_path(d.path())).unwrap();
    assert_eq!(s.volume_info().unwrap().keyring, ring);
    assert!(!s.volume_info().unwrap().legacy_layouts);
}

#[test]
fn resealed_blocks_replace_only_what_is_still_there() {
    let d = tmp();
    let s = new_store(d.path());
    let p = peer(&s, 1);
    let f = mkfile(&s, ROOT, "f");
    s.commit_layout(
        f,
        &commit(3 * u64::from(B), (0..3).map(|i| (i, Some(chunk(i as u8, 100, &[p])))).collect()),
    )
    .unwrap();
    let before = s.getattr(f).unwrap();
    let v = s.volume_info().unwrap().keyring.version;
    s.add_member(v, &member("bob", "age1bob"), &[b"w".to_vec()]).unwrap();
    s.remove_member(v + 1, "bob", &epoch(1)).unwrap();
    let new = |k: u8, e: u32| StoredChunk { epoch: e, ..chunk(k, 104, &[p]) };
    // Under an old epoch: refused.
    let r = [Reseal { index: 0, old: ChunkId::of(&[0]), new: new(10, 0) }];
    assert_eq!(err(s.reseal_blocks(f, &r)), DirError::StaleEpoch { current: 1 });
    // Block 1 changed meanwhile (names another chunk): left alone.
    let r = [
        Reseal { index: 0, old: ChunkId::of(&[0]), new: new(10, 1) },
        Reseal { index: 1, old: ChunkId::of(&[99]), new: new(11, 1) },
    ];
    assert_eq!(s.reseal_blocks(f, &r).unwrap(), vec![true, false]);
    let l = s.get_layout(f, 0, 3).unwrap();
    assert_eq!(l.blocks[0].chunk, ChunkId::of(&[10]));
    assert_eq!(l.blocks[0].epoch, 1);
    assert_eq!(l.blocks[1].chunk, ChunkId::of(&[1]));
    assert_eq!(refcount(&s, 0), Some(0), "the old chunk goes to garbage collection");
    let after = s.getattr(f).unwrap();
    assert_eq!((after.size, after.mtime, after.ctime), (before.size, before.mtime, before.ctime));
    assert_eq!(after.stored_bytes, before.stored_bytes + 4);
}

#[tokio::test]
async fn inode_numbers_are_reserved_per_session_and_used_once() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        let c = &svc.c;
        let ctx = context::current;
        let (s1, s2) = (svc.session("one").await, svc.session("two").await);
        assert!(matches!(refused(c.reserve_inodes(ctx(), s1, 0).await), DirError::Invalid(_)));
        assert!(matches!(
            refused(c.reserve_inodes(ctx(), s1, RESERVE_PER_CALL_MAX + 1).await),
            DirError::Invalid(_)
        ));
        assert_eq!(
            refused(c.reserve_inodes(ctx(), common::rpc::dir::SessionId(12345), 1).await),
            DirError::NoSession
        );
        let (first, n) = ok(c.reserve_inodes(ctx(), s1, 2).await);
        assert_eq!(n, 2);
        let made = |ino: InodeId| NewSymlink { ino, target: n_("t"), size: 1, uid: 0, gid: 0 };
        // Another session's number, or one never reserved: refused.
        assert_eq!(
            refused(c.symlink(ctx(), s2, ROOT, n_("a"), made(first)).await),
            DirError::NotReserved(first)
        );
        let never = InodeId(first.0 + 1000);
        assert_eq!(
            refused(c.symlink(ctx(), s1, ROOT, n_("a"), made(never)).await),
            DirError::NotReserved(never)
        );
        // The root: refused.
        assert_eq!(
            refused(c.symlink(ctx(), s1, ROOT, n_("a"), made(ROOT)).await),
            DirError::NotReserved(ROOT)
        );
        // A failed symlink (the name exists) gives the number back.
        ok(c.create(ctx(), ROOT, n_("taken"), file()).await);
        assert_eq!(refused(c.symlink(ctx(), s1, ROOT, n_("taken"), made(first)).await), DirError::Exists);
        let a = ok(c.symlink(ctx(), s1, ROOT, n_("a"), made(first)).await);
        assert_eq!(a.ino, first);
        assert_eq!(ok(c.readlink(ctx(), first).await), n_("t"));
        // Used once only.
        assert_eq!(
            refused(c.symlink(ctx(), s1, ROOT, n_("b"), made(first)).await),
            DirError::NotReserved(first)
        );
        // Numbers are never handed out twice: a new file gets a fresh one.
        let f = ok(c.create(ctx(), ROOT, n_("f"), file()).await).ino;
        assert!(f.0 > first.0 + 1, "{f} after reserved {first}+{n}");
        // A bounded number per session.
        let mut held = 1usize;
        while held + RESERVE_PER_CALL_MAX as usize <= RESERVED_PER_SESSION_MAX {
            ok(c.reserve_inodes(ctx(), s1, RESERVE_PER_CALL_MAX).await);
            held += RESERVE_PER_CALL_MAX as usize;
        }
        let left = (RESERVED_PER_SESSION_MAX - held) as u32;
        if left > 0 {
            ok(c.reserve_inodes(ctx(), s1, left).await);
        }
        assert!(matches!(refused(c.reserve_inodes(ctx(), s1, 1).await), DirError::Limit(_)));
        // A closed session's numbers are gone.
        ok(c.close_session(ctx(), s1).await);
        let s3 = svc.session("three").await;
        let last = InodeId(first.0 + 1);
        assert_eq!(
            refused(c.symlink(ctx(), s3, ROOT, n_("c"), made(last)).await),
            DirError::NotReserved(last)
        );
        svc.shutdown().await;
    })
    .await
}

/// `n` is taken by the count above; names as bytes.
fn n_(s: &str) -> Vec<u8> {
    n(s)
}
