//! Migration from the typed tables of schemas 1 to 5 (redb only).

use super::super::migrate::{
    CHUNKS, CHUNKS_UNREFERENCED, DIRCOOKIES, DIRENTS, INODES, JOIN_TOKENS, LAYOUTS, LAYOUTS_V1, META,
    ORPHANS, PEERS, REVOKED, SESSIONS, SYMLINKS, TOMBSTONES, XATTRS,
};
use super::super::records::{
    ChunkRecord, LayoutGroupRecord, PeerRecordV1, UsageV1, VolumeRecordV1, VolumeRecordV2, KIND_DIR,
    KIND_FILE,
};
use super::*;
use crate::kv::redb::KV;
use redb::{Database, ReadableDatabase, ReadableTable, TableHandle};

/// Writes a database as schema 1 wrote it: schema version 1 and one
/// version-1 peer record (no tombstone table).
fn write_schema_1(path: &Path, schema: u32) -> PeerRecordV1 {
    let v1 = PeerRecordV1 {
        addr: "127.0.0.1:7701".into(),
        usage: UsageV1 { capacity_bytes: 100, free_bytes: 60, used_bytes: 40, chunks: 4 },
        last_heartbeat: Timestamp { secs: 1_700_000_000, nanos: 0 },
    };
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert(keys::META_SCHEMA, &schema.to_le_bytes()[..]).unwrap();
        let mut peers = txn.open_table(PEERS).unwrap();
        peers.insert([7u8; 16], v1.to_bytes().unwrap().as_slice()).unwrap();
    }
    txn.commit().unwrap();
    v1
}

/// The raw value of `key` in `kv-v1`.
fn raw(path: &Path, key: &[u8]) -> Option<Vec<u8>> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(KV).unwrap();
    t.get(key).unwrap().map(|g| g.value().to_vec())
}

fn table_names(path: &Path) -> Vec<String> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    txn.list_tables().unwrap().map(|h| h.name().to_string()).collect()
}

fn stored_schema(path: &Path) -> u32 {
    decode_u32(&raw(path, &keys::meta(keys::META_SCHEMA)).unwrap()).unwrap()
}

#[test]
fn a_schema_1_database_is_migrated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let v1 = write_schema_1(&path, 1);
    {
        let s = Store::open(&path).unwrap();
        let peers = s.peers().unwrap();
        let want = PeerRecord::new(v1.addr, v1.usage.into(), v1.last_heartbeat, PeerLabels::default());
        assert_eq!(peers, vec![(PeerId([7; 16]), want)]);
        assert_eq!(s.tombstone_count().unwrap(), 0);
    }
    assert_eq!(stored_schema(&path), SCHEMA_VERSION);
    assert_eq!(table_names(&path), vec!["kv-v1".to_string()], "the old tables are gone");
    // The raw record was rewritten in the newest version.
    assert_eq!(raw(&path, &keys::peer(&[7; 16])).unwrap()[0], 3);
    // And it opens again as it is.
    assert_eq!(Store::open(&path).unwrap().peers().unwrap().len(), 1);
}

#[test]
fn a_schema_2_database_gains_the_new_families_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.redb");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(keys::META_SCHEMA, &2u32.to_le_bytes()[..]).unwrap();
            let vol = VolumeRecordV1 { id: [1; 16], block_size: 4096, replicas: 2, wrapped_secret: vec![9] };
            meta.insert(keys::META_VOLUME, vol.to_bytes().unwrap().as_slice()).unwrap();
            meta.insert(keys::META_NEXT_INODE, &3u64.to_le_bytes()[..]).unwrap();
            meta.insert(keys::META_NEXT_COOKIE, &2u64.to_le_bytes()[..]).unwrap();
            let now = Timestamp::now();
            let mut root = new_record(KIND_DIR, 0o755, 0, 0, 0, 1, now);
            root.nlink = 2;
            let mut inodes = txn.open_table(INODES).unwrap();
            inodes.insert(1, root.to_bytes().unwrap().as_slice()).unwrap();
            inodes
                .insert(2, new_record(KIND_FILE, 0o644, 0, 0, 0, 1, now).to_bytes().unwrap().as_slice())
                .unwrap();
            txn.open_table(DIRENTS).unwrap().insert((1, &b"f"[..]), (2, 1, KIND_FILE)).unwrap();
            txn.open_table(DIRCOOKIES).unwrap().insert((1, 1), &b"f"[..]).unwrap();
            let peer =
                PeerRecord::new("127.0.0.1:1".into(), PeerUsage::default(), now, PeerLabels::default());
            txn.open_table(PEERS).unwrap().insert([4u8; 16], peer.to_bytes().unwrap().as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    {
        let s = Store::open(&path).unwrap();
        assert_eq!(s.lookup(InodeId::ROOT, b"f").unwrap().ino, InodeId(2));
        assert_eq!(s.peers().unwrap().len(), 1);
        assert!(s.orphans().unwrap().is_empty());
        assert!(s.sessions().unwrap().is_empty());
        s.setxattr(InodeId(2), b"k", b"v", 0).unwrap();
    }
    assert_eq!(stored_schema(&path), SCHEMA_VERSION);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.getxattr(InodeId(2), b"k").unwrap(), b"v");
    let vol = s.volume_info().unwrap();
    assert_eq!((vol.block_size, vol.replicas, vol.keyring.members.len()), (4096, 2, 0));
    assert_eq!(vol.keyring.epochs.len(), 1);
    assert!(vol.legacy_layouts);
}

/// What schema 4 wrote: volume record v2 (one wrapped secret, its
/// recipients), `layouts-v1` rows of a two-block file, the chunk index.
fn write_schema_4(path: &Path) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert(keys::META_SCHEMA, &4u32.to_le_bytes()[..]).unwrap();
        let vol = VolumeRecordV2 {
            id: [6; 16],
            block_size: 4096,
            replicas: 1,
            wrapped_secret: b"age-encryption.org/v1 wrapped".to_vec(),
            recipients: vec!["age1old".into()],
        };
        meta.insert(keys::META_VOLUME, vol.to_bytes().unwrap().as_slice()).unwrap();
        meta.insert(keys::META_NEXT_INODE, &3u64.to_le_bytes()[..]).unwrap();
        meta.insert(keys::META_NEXT_COOKIE, &2u64.to_le_bytes()[..]).unwrap();
        let now = Timestamp::now();
        let mut root = new_record(KIND_DIR, 0o755, 0, 0, 0, 1, now);
        root.nlink = 2;
        let mut f = new_record(KIND_FILE, 0o644, 0, 0, 0, 1, now);
        f.size = 8000;
        f.stored_bytes = 2 * 4144;
        let mut inodes = txn.open_table(INODES).unwrap();
        inodes.insert(1, root.to_bytes().unwrap().as_slice()).unwrap();
        inodes.insert(2, f.to_bytes().unwrap().as_slice()).unwrap();
        txn.open_table(DIRENTS).unwrap().insert((1, &b"f"[..]), (2, 1, KIND_FILE)).unwrap();
        txn.open_table(DIRCOOKIES).unwrap().insert((1, 1), &b"f"[..]).unwrap();
        let peer = PeerRecord::new("127.0.0.1:1".into(), PeerUsage::default(), now, PeerLabels::default());
        txn.open_table(PEERS).unwrap().insert([4u8; 16], peer.to_bytes().unwrap().as_slice()).unwrap();
        let mut old = txn.open_table(LAYOUTS_V1).unwrap();
        let mut chunks = txn.open_table(CHUNKS).unwrap();
        for (i, k) in [(0u64, 10u8), (1, 11)] {
            old.insert((2, i), (ChunkId::of(&[k]).0, 4144)).unwrap();
            let rec = ChunkRecord { replicas: vec![PeerId([4; 16])], refcount: 1, len: 4144 };
            chunks.insert(ChunkId::of(&[k]).0, rec.to_bytes().unwrap().as_slice()).unwrap();
        }
    }
    txn.commit().unwrap();
}

#[test]
fn a_schema_4_database_gets_epoch_0_and_legacy_layout_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.redb");
    write_schema_4(&path);
    {
        let s = Store::open(&path).unwrap();
        let vol = s.volume_info().unwrap();
        assert_eq!(
            (vol.id, vol.block_size, vol.replicas, vol.legacy_layouts),
            (VolumeId([6; 16]), 4096, 1, true)
        );
        let ring = &vol.keyring;
        assert_eq!((ring.version, ring.epochs.len()), (0, 1));
        assert_eq!(ring.epochs[0].wrapped, b"age-encryption.org/v1 wrapped");
        assert_eq!((ring.epochs[0].check, ring.epochs[0].link), ([0; 32], [0; 32]));
        assert_eq!(
            (ring.members[0].name.as_str(), ring.members[0].recipient.as_str(), ring.members.len()),
            ("age1old", "age1old", 1)
        );
        let l = s.get_layout(InodeId(2), 0, 10).unwrap();
        let rows: Vec<(u64, ChunkId, u32, u32, [u8; 32])> =
            l.blocks.iter().map(|b| (b.index, b.chunk, b.len, b.epoch, b.mac)).collect();
        assert_eq!(
            rows,
            vec![(0, ChunkId::of(&[10]), 4144, 0, [0; 32]), (1, ChunkId::of(&[11]), 4144, 0, [0; 32])]
        );
        assert_eq!(l.blocks[0].replicas, vec![PeerId([4; 16])]);
        assert_eq!(l.attr.stored_bytes, 2 * 4144);
    }
    assert_eq!(stored_schema(&path), SCHEMA_VERSION);
    assert_eq!(table_names(&path), vec!["kv-v1".to_string()]);
    assert_eq!(raw(&path, &keys::meta(keys::META_VOLUME)).unwrap()[0], 3, "volume record v3");
    assert_eq!(decode_u32(&raw(&path, &keys::meta(keys::META_KEY_EPOCH)).unwrap()).unwrap(), 0);
    // Two blocks, one layout group key.
    let group = LayoutGroupRecord::from_bytes(&raw(&path, &keys::layout(2, 0)).unwrap()).unwrap();
    assert_eq!(group.entries.len(), 2);
    // It opens again unchanged, and new commits carry MACs.
    let s = Store::open(&path).unwrap();
    let c = StoredChunk {
        id: ChunkId::of(&[12]),
        len: 100,
        replicas: vec![PeerId([4; 16])],
        epoch: 0,
        mac: [7; 32],
        inline: None,
    };
    let commit = CommitLayout {
        held_ms: 0,
        attrs: Default::default(),
        size: 8000,
        mtime: Timestamp::now(),
        blocks: vec![(1, Some(c))],
    };
    s.commit_layout(InodeId(2), &commit).unwrap();
    let l = s.get_layout(InodeId(2), 0, 10).unwrap();
    assert_eq!((l.blocks[0].mac, l.blocks[1].mac), ([0; 32], [7; 32]));
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.redb");
    write_schema_1(&path, 6);
    match Store::open(&path) {
        Err(Error::Schema { found, supported }) => assert_eq!((found, supported), (6, SCHEMA_VERSION)),
        other => panic!("expected a schema error, got {other:?}"),
    }
    let mut names = table_names(&path);
    names.sort();
    assert_eq!(names, vec!["meta-v1".to_string(), "peers-v1".to_string()], "untouched");
}

/// Rewrites a schema-6 database as schema 5 wrote it: every key back into
/// its typed table (layout groups as one row per block), `kv-v1` dropped.
fn write_as_schema_5(path: &Path) {
    let db = Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = txn
            .open_table(KV)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value().to_vec(), v.value().to_vec())
            })
            .collect();
        let u64_at = |k: &[u8], at: usize| u64::from_be_bytes(k[at..at + 8].try_into().unwrap());
        let id32 = |k: &[u8]| -> [u8; 32] { k[1..33].try_into().unwrap() };
        let id16 = |k: &[u8]| -> [u8; 16] { k[1..17].try_into().unwrap() };
        for (k, v) in rows {
            match k[0] {
                keys::INODE => {
                    txn.open_table(INODES).unwrap().insert(u64_at(&k, 1), v.as_slice()).unwrap();
                }
                keys::DIRENT => {
                    let ino = u64::from_le_bytes(v[0..8].try_into().unwrap());
                    let cookie = u64::from_le_bytes(v[8..16].try_into().unwrap());
                    txn.open_table(DIRENTS)
                        .unwrap()
                        .insert((u64_at(&k, 1), &k[9..]), (ino, cookie, v[16]))
                        .unwrap();
                }
                keys::COOKIE => {
                    txn.open_table(DIRCOOKIES)
                        .unwrap()
                        .insert((u64_at(&k, 1), u64_at(&k, 9)), v.as_slice())
                        .unwrap();
                }
                keys::LAYOUT => {
                    let (ino, g) = (u64_at(&k, 1), u64_at(&k, 9));
                    let mut t = txn.open_table(LAYOUTS).unwrap();
                    for e in LayoutGroupRecord::from_bytes(&v).unwrap().entries {
                        t.insert((ino, g * 64 + u64::from(e.offset)), (e.chunk, e.len, e.epoch, e.mac))
                            .unwrap();
                    }
                }
                keys::CHUNK => {
                    txn.open_table(CHUNKS).unwrap().insert(id32(&k), v.as_slice()).unwrap();
                }
                keys::UNREF => {
                    let at = i64::from_le_bytes(v.as_slice().try_into().unwrap());
                    txn.open_table(CHUNKS_UNREFERENCED).unwrap().insert(id32(&k), at).unwrap();
                }
                keys::SYMLINK => {
                    txn.open_table(SYMLINKS).unwrap().insert(u64_at(&k, 1), v.as_slice()).unwrap();
                }
                keys::PEER => {
                    txn.open_table(PEERS).unwrap().insert(id16(&k), v.as_slice()).unwrap();
                }
                keys::TOMBSTONE => {
                    txn.open_table(TOMBSTONES).unwrap().insert(id32(&k), v.as_slice()).unwrap();
                }
                keys::ORPHAN => {
                    let at = i64::from_le_bytes(v.as_slice().try_into().unwrap());
                    txn.open_table(ORPHANS).unwrap().insert(u64_at(&k, 1), at).unwrap();
                }
                keys::XATTR => {
                    txn.open_table(XATTRS).unwrap().insert((u64_at(&k, 1), &k[9..]), v.as_slice()).unwrap();
                }
                keys::SESSION => {
                    txn.open_table(SESSIONS).unwrap().insert(u64_at(&k, 1), v.as_slice()).unwrap();
                }
                keys::JOIN_TOKEN => {
                    let id: [u8; 8] = k[1..9].try_into().unwrap();
                    txn.open_table(JOIN_TOKENS).unwrap().insert(id, v.as_slice()).unwrap();
                }
                keys::REVOKED => {
                    txn.open_table(REVOKED).unwrap().insert(id16(&k), v.as_slice()).unwrap();
                }
                keys::META => {
                    let name = std::str::from_utf8(&k[1..]).unwrap();
                    let v = if name == keys::META_SCHEMA { 5u32.to_le_bytes().to_vec() } else { v };
                    txn.open_table(META).unwrap().insert(name, v.as_slice()).unwrap();
                }
                other => panic!("no schema-5 table for tag {}", other as char),
            }
        }
    }
    txn.delete_table(KV).unwrap();
    txn.commit().unwrap();
}

/// Every read method's answer about `s`, as text.
fn answers(s: &Store) -> Vec<String> {
    let mut out = vec![format!("{:?}", s.volume_info()), format!("{:?}", s.inode_count())];
    let mut dirs = vec![InodeId::ROOT];
    while let Some(d) = dirs.pop() {
        let page = s.readdir(d, 0, MAX_READDIR_ENTRIES).unwrap();
        out.push(format!("readdir {d}: {page:?}"));
        for e in page.entries {
            out.push(format!("lookup {:?}", s.lookup(d, &e.name)));
            match e.kind {
                FileKind::Dir => dirs.push(e.ino),
                FileKind::File => out.push(format!("layout {:?}", s.get_layout(e.ino, 0, MAX_LAYOUT_BLOCKS))),
                FileKind::Symlink => out.push(format!("readlink {:?}", s.readlink(e.ino))),
                _ => {}
            }
            out.push(format!("xattrs {:?}", s.listxattr(e.ino)));
            for name in s.listxattr(e.ino).unwrap() {
                out.push(format!("xattr {:?}", s.getxattr(e.ino, &name)));
            }
        }
    }
    for o in s.orphans().unwrap() {
        out.push(format!("orphan {o}: {:?} {:?}", s.getattr(o), s.get_layout(o, 0, MAX_LAYOUT_BLOCKS)));
        out.push(format!("orphan xattrs {:?}", s.listxattr(o)));
    }
    out.push(format!("sessions {:?}", s.sessions()));
    out.push(format!("peers {:?}", s.peers()));
    let mut chunks = Vec::new();
    s.for_each_chunk(|id, r| chunks.push((id, r))).unwrap();
    out.push(format!("chunks {chunks:?}"));
    out.push(format!("unreferenced {:?}", s.unreferenced_chunks()));
    out.push(format!("deletes {:?} {:?}", s.pending_deletes(None, 1000), s.tombstone_count()));
    out.push(format!("revocations {:?}", s.revocations()));
    out
}

#[test]
fn a_schema_5_database_migrates_to_identical_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v5.redb");
    let before = {
        let s = Store::open(&path).unwrap();
        init(&s);
        let d = s.mkdir(InodeId::ROOT, b"dir", 0o750, 1, 1).unwrap().ino;
        let f = file(&s, d, b"sparse");
        commit(&s, f, 200 * u64::from(B) + 5, [0, 1, 63, 64, 130, 200]);
        s.link(f, InodeId::ROOT, b"hardlink").unwrap();
        s.setxattr(f, b"user.a", b"1", 0).unwrap();
        s.setxattr(d, b"user.dir", b"2", 0).unwrap();
        s.symlink(d, b"link", b"sealed", 6, 0, 0).unwrap();
        let node = NewInode { kind: FileKind::Fifo, perm: 0o600, uid: 0, gid: 0, rdev: 0 };
        s.create(InodeId::ROOT, b"fifo", &node).unwrap();
        let o = file(&s, InodeId::ROOT, b"open");
        commit(&s, o, u64::from(B), [0]);
        s.setxattr(o, b"user.o", b"3", 0).unwrap();
        s.unlink_keeping(InodeId::ROOT, b"open", &|_| true).unwrap();
        let g = file(&s, InodeId::ROOT, b"gone");
        commit(&s, g, 502 * u64::from(B), [500, 501]);
        s.unlink(InodeId::ROOT, b"gone").unwrap();
        s.collect_unreferenced(Timestamp::now().secs + 1, 1).unwrap();
        let rec = SessionRecord { label: "c".into(), opened: Timestamp::now(), owner: [2; 16] };
        s.put_session(SessionId(42), &rec).unwrap();
        s.register_peer(
            PeerId([8; 16]),
            "127.0.0.1:2",
            PeerUsage::default(),
            &PeerLabels::default(),
            Timestamp::now(),
        )
        .unwrap();
        s.revoke(NodeId([3; 16]), "gone").unwrap();
        answers(&s)
    };
    write_as_schema_5(&path);
    assert!(!table_names(&path).contains(&"kv-v1".to_string()));
    let s = Store::open(&path).unwrap();
    let after = answers(&s);
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a);
    }
    drop(s);
    assert_eq!(table_names(&path), vec!["kv-v1".to_string()]);
}
