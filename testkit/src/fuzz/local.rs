//! Bytes read from a local disk: dirsvc's stored records and its database
//! file, a client's recovery files, peerd's scrub state and id files. A
//! damaged disk (or someone with access to it) may put anything there; a
//! daemon must refuse it with an error and go on, or refuse to start with a
//! clear message.

use crate::fuzz::sealed::secret;
use common::codec;
use common::rpc::dir::StoredChunk;
use common::time::Timestamp;
use common::{ChunkId, InodeId, VolumeId};
use dirsvc::store::tables::RecordKind;
use fs_client::fs::recovery::{KeptBlock, RecoveryDir, Unstored};
use std::path::Path;

fn record(kind: RecordKind, data: &[u8]) {
    let _ = kind.decode(data);
}

fn record_seeds(kind: RecordKind) -> Vec<Vec<u8>> {
    kind.samples().unwrap_or_default()
}

/// An `inodes-v1` value.
pub fn record_inode(data: &[u8]) {
    record(RecordKind::Inode, data);
}

/// Valid inode records.
pub fn record_inode_seeds() -> Vec<Vec<u8>> {
    record_seeds(RecordKind::Inode)
}

/// A `chunks-v1` value.
pub fn record_chunk(data: &[u8]) {
    record(RecordKind::Chunk, data);
}

/// Valid chunk records.
pub fn record_chunk_seeds() -> Vec<Vec<u8>> {
    record_seeds(RecordKind::Chunk)
}

/// A `peers-v1` value (every version).
pub fn record_peer(data: &[u8]) {
    record(RecordKind::Peer, data);
}

/// Valid peer records of each version.
pub fn record_peer_seeds() -> Vec<Vec<u8>> {
    record_seeds(RecordKind::Peer)
}

/// A `chunk-tombstones-v1` value.
pub fn record_tombstone(data: &[u8]) {
    record(RecordKind::Tombstone, data);
}

/// Valid tombstone records.
pub fn record_tombstone_seeds() -> Vec<Vec<u8>> {
    record_seeds(RecordKind::Tombstone)
}

/// A `sessions-v1` value.
pub fn record_session(data: &[u8]) {
    record(RecordKind::Session, data);
}

/// Valid session records.
pub fn record_session_seeds() -> Vec<Vec<u8>> {
    record_seeds(RecordKind::Session)
}

/// The `meta-v1/volume` value (every version).
pub fn record_volume(data: &[u8]) {
    record(RecordKind::Volume, data);
}

/// Valid volume records of each version.
pub fn record_volume_seeds() -> Vec<Vec<u8>> {
    record_seeds(RecordKind::Volume)
}

/// A fresh scratch directory, on tmpfs when there is one (the database
/// target writes a file per case); removed when dropped.
fn scratch() -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    dir.ok()
}

/// dirsvc starting on a database file holding `data`: it opens it,
/// migrates it or refuses it with an error.
pub fn database(data: &[u8]) {
    let Some(dir) = scratch() else { return };
    let path = dir.path().join("dirsvc.redb");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(store) = dirsvc::Store::open(&path) {
        // Reads that decode what the file holds.
        let _ = store.volume_info();
        let _ = store.peers();
        let _ = store.sessions();
        let _ = store.orphans();
        let _ = store.getattr(InodeId::ROOT);
        let _ = store.readdir(InodeId::ROOT, 0, 100);
        let _ = store.for_each_chunk(|_, _| {});
    }
}

/// A small database with a volume, a directory, a file with a block, a peer
/// and a session (and the same file empty).
pub fn database_seeds() -> Vec<Vec<u8>> {
    let Some(dir) = scratch() else { return Vec::new() };
    let path = dir.path().join("seed.redb");
    let build = || -> Result<(), dirsvc::Error> {
        let s = dirsvc::Store::open(&path)?;
        let vol = common::rpc::dir::VolumeInfo {
            id: VolumeId([2; 16]),
            block_size: 4096,
            replicas: 1,
            keyring: common::rpc::dir::Keyring {
                version: 0,
                epochs: vec![common::rpc::dir::KeyEpoch {
                    epoch: 0,
                    wrapped: b"wrapped".to_vec(),
                    check: [1; 32],
                    link: [0; 32],
                }],
                members: vec![common::rpc::dir::Member {
                    name: "owner".into(),
                    recipient: "age1x".into(),
                    nodes: Vec::new(),
                }],
            },
            legacy_layouts: false,
        };
        s.init_volume(&vol, 0, 0)?;
        let peer = common::PeerId([1; 16]);
        let usage = common::rpc::dir::PeerUsage::default();
        s.register_peer(peer, "127.0.0.1:1", usage, &Default::default(), Timestamp::now())?;
        s.mkdir(InodeId::ROOT, b"d", 0o755, 0, 0)?;
        let new = common::rpc::dir::NewInode {
            kind: common::rpc::dir::FileKind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
        };
        let f = s.create(InodeId::ROOT, b"f", &new)?;
        let chunk =
            StoredChunk { id: ChunkId([9; 32]), len: 100, replicas: vec![peer], epoch: 0, mac: [7; 32] };
        let commit = common::rpc::dir::CommitLayout {
            size: 10,
            mtime: Timestamp::now(),
            blocks: vec![(0, Some(chunk))],
        };
        s.commit_layout(f.ino, &commit)?;
        s.setxattr(f.ino, b"user.k", b"v", 0)?;
        Ok(())
    };
    let mut out = Vec::new();
    if build().is_ok() {
        if let Ok(bytes) = std::fs::read(&path) {
            if bytes.len() <= crate::fuzz::MAX_INPUT {
                out.push(bytes);
            }
        }
    }
    out.push(Vec::new());
    out
}

/// The volume and key of the recovery targets.
fn recovery_dir() -> RecoveryDir {
    let keys = common::keyring::VolumeKeys::single(VolumeId([1; 16]), secret());
    RecoveryDir::new(Path::new("/nonexistent"), VolumeId([1; 16]), std::sync::Arc::new(keys))
}

/// A recovery file as the next mount reads it.
pub fn recovery_file(data: &[u8]) {
    let _ = recovery_dir().decode(Path::new("fuzz.p2pr"), data);
}

fn sample_unstored() -> Vec<Unstored> {
    let t = Timestamp { secs: 1_700_000_000, nanos: 1 };
    vec![
        Unstored {
            ino: InodeId(42),
            path: "/docs/a file".into(),
            size: 10_000,
            mtime: t,
            blocks: vec![
                (0, KeptBlock::Data(vec![7; 300])),
                (1, KeptBlock::Hole),
                (
                    2,
                    KeptBlock::Chunk(StoredChunk {
                        id: ChunkId([3; 32]),
                        len: 99,
                        replicas: vec![],
                        epoch: 0,
                        mac: [5; 32],
                    }),
                ),
            ],
            error: "no space".into(),
        },
        Unstored {
            ino: InodeId(7),
            path: String::new(),
            size: 0,
            mtime: t,
            blocks: vec![],
            error: String::new(),
        },
    ]
}

/// Recovery files of a few shapes.
pub fn recovery_file_seeds() -> Vec<Vec<u8>> {
    let dir = recovery_dir();
    sample_unstored().iter().filter_map(|u| dir.encode(u).ok()).collect()
}

/// Fixed header of a recovery file (format in docs/FORMATS.md).
fn recovery_header(ino: u64) -> Vec<u8> {
    let mut out = b"P2PR\x02\x00\x00\x00".to_vec();
    out.extend_from_slice(&[1; 16]);
    out.extend_from_slice(&ino.to_le_bytes());
    out
}

/// The associated data of record `n` of inode `ino` (docs/FORMATS.md).
fn record_ad(ino: u64, n: u64) -> Vec<u8> {
    let mut ad = b"p2pfs recovery v2".to_vec();
    ad.extend_from_slice(&[1; 16]);
    ad.extend_from_slice(&ino.to_le_bytes());
    ad.extend_from_slice(&n.to_le_bytes());
    ad
}

/// Recovery records past their authentication: `data` is a list of
/// plaintexts (each a 2-byte little-endian length, then the bytes), sealed
/// here as records 0, 1, … of a file with the right key and associated
/// data, so the record decoder sees arbitrary plaintext.
pub fn recovery_records(data: &[u8]) {
    const INO: u64 = 42;
    let key = secret().recovery_key();
    let mut file = recovery_header(INO);
    let mut rest = data;
    let mut n = 0u64;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_le_bytes(*len)).min(tail.len());
        let (plain, tail) = tail.split_at(len);
        let Ok(sealed) = codec::seal_bytes_ad(&key, 0, plain, 1 << 16, &record_ad(INO, n)) else { return };
        file.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        file.extend_from_slice(&sealed);
        rest = tail;
        n += 1;
    }
    let _ = recovery_dir().decode(Path::new("fuzz.p2pr"), &file);
}

/// The plaintext records of valid recovery files, in
/// [`recovery_records`]' layout.
pub fn recovery_records_seeds() -> Vec<Vec<u8>> {
    let key = secret().recovery_key();
    let mut out = Vec::new();
    for file in recovery_file_seeds() {
        let Some(ino) = file.get(24..32).and_then(|b| <[u8; 8]>::try_from(b).ok()) else { continue };
        let ino = u64::from_le_bytes(ino);
        let mut rest = file.get(32..).unwrap_or_default();
        let mut seed = Vec::new();
        let mut n = 0u64;
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            let Some(sealed) = tail.get(..len) else { break };
            let Ok(plain) = codec::open_bytes_ad(&key, sealed, &record_ad(ino, n)) else { break };
            let Ok(plen) = u16::try_from(plain.len()) else { break };
            seed.extend_from_slice(&plen.to_le_bytes());
            seed.extend_from_slice(&plain);
            rest = &tail[len..];
            n += 1;
        }
        out.push(seed);
    }
    out
}

/// peerd's scrub state file as a restarted peer reads it.
pub fn scrub_state(data: &[u8]) {
    let _ = peerd::scrub::state_file_is_valid(data);
}

/// Valid scrub state files.
pub fn scrub_state_seeds() -> Vec<Vec<u8>> {
    let id = ChunkId::of(b"x").to_hex();
    vec![
        format!("p2pfs scrub state v1\ncursor {id}\nlast_pass_end -\n").into_bytes(),
        b"p2pfs scrub state v1\ncursor -\nlast_pass_end 1800000000\n".to_vec(),
        b"p2pfs scrub state v1\ncursor -\nlast_pass_end -\n".to_vec(),
    ]
}

/// peerd's id file as a starting peer reads it.
pub fn peer_id_file(data: &[u8]) {
    let _ = peerd::peer_id::parse(Path::new("peer-id"), data);
}

/// Valid id files.
pub fn peer_id_file_seeds() -> Vec<Vec<u8>> {
    vec![b"00112233445566778899aabbccddeeff\n".to_vec(), b"  ffffffffffffffffffffffffffffffff  ".to_vec()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_record_seeds_rebuild_files_that_open() {
        let seeds = recovery_records_seeds();
        assert_eq!(seeds.len(), 2);
        assert!(seeds.iter().all(|s| !s.is_empty()));
        // The first seed is inode 42's file: rebuilt, it opens.
        let key = secret().recovery_key();
        let mut file = recovery_header(42);
        let mut rest = &seeds[0][..];
        let mut n = 0;
        while let Some((len, tail)) = rest.split_first_chunk::<2>() {
            let (plain, tail) = tail.split_at(usize::from(u16::from_le_bytes(*len)));
            let sealed = codec::seal_bytes_ad(&key, 0, plain, 1 << 16, &record_ad(42, n)).unwrap();
            file.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
            file.extend_from_slice(&sealed);
            rest = tail;
            n += 1;
        }
        let u = recovery_dir().decode(Path::new("x"), &file).unwrap();
        assert_eq!(u, sample_unstored()[0]);
    }

    #[test]
    fn the_database_seed_is_a_database_dirsvc_opens() {
        let seeds = database_seeds();
        assert!(
            seeds.len() == 2 && !seeds[0].is_empty(),
            "{:?}",
            seeds.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let dir = scratch().unwrap();
        let path = dir.path().join("check.redb");
        std::fs::write(&path, &seeds[0]).unwrap();
        let s = dirsvc::Store::open(&path).unwrap();
        assert_eq!(s.volume_info().unwrap().block_size, 4096);
    }
}
