//! Bytes read from a local disk: dirsvc's stored records and its database
//! file, a client's recovery files (both formats), volume pins and identity
//! file, peerd's scrub state, id and revocation list files. A damaged disk
//! (or someone with access to it) may put anything there; a daemon must
//! refuse it with an error and go on, or refuse to start with a clear
//! message. Where a format has a writer, what the reader accepts must
//! survive being written and read again.

use crate::fuzz::sealed::{secret, IDENTITY};
use common::codec;
use common::keys;
use common::rpc::dir::StoredChunk;
use common::time::Timestamp;
use common::{ChunkId, InodeId, VolumeId};
use dirsvc::store::tables::RecordKind;
use fs_client::fs::recovery::{KeptBlock, RecoveryDir, Unstored, VERSION, VERSION_V1};
use fs_client::pins;
use peerd::revoked;
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
        let chunk = StoredChunk {
            id: ChunkId([9; 32]),
            len: 100,
            replicas: vec![peer],
            epoch: 0,
            mac: [7; 32],
            inline: None,
        };
        let commit = common::rpc::dir::CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
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

/// A recovery file as the next mount reads it (either format). One that
/// opens must come back the same once written again (format v2, as an
/// unmount that still cannot store it keeps it).
pub fn recovery_file(data: &[u8]) {
    let dir = recovery_dir();
    if let Ok(u) = dir.decode(Path::new("fuzz.p2pr"), data) {
        recovery_round_trip(&dir, &u);
    }
}

fn recovery_round_trip(dir: &RecoveryDir, u: &Unstored) {
    let again = dir.encode(u).expect("what a recovery file held encodes again");
    let back = dir.decode(Path::new("again.p2pr"), &again).expect("a file just encoded opens");
    assert_eq!(&back, u, "a recovery file changed when written again");
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
                        inline: None,
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

/// Recovery files of format v1 (written before key epochs; still read),
/// of the same shapes.
pub fn recovery_file_v1_seeds() -> Vec<Vec<u8>> {
    let dir = recovery_dir();
    sample_unstored().iter().filter_map(|u| dir.encode_v1_for_tests(u).ok()).collect()
}

/// Fixed header of a recovery file of format `version` (format in
/// docs/FORMATS.md).
fn recovery_header(version: u8, ino: u64) -> Vec<u8> {
    let mut out = b"P2PR".to_vec();
    out.extend_from_slice(&[version, 0, 0, 0]);
    out.extend_from_slice(&[1; 16]);
    out.extend_from_slice(&ino.to_le_bytes());
    out
}

/// The associated data of record `n` of inode `ino` in format `version`
/// (docs/FORMATS.md).
fn record_ad(version: u8, ino: u64, n: u64) -> Vec<u8> {
    let mut ad = format!("p2pfs recovery v{version}").into_bytes();
    ad.extend_from_slice(&[1; 16]);
    ad.extend_from_slice(&ino.to_le_bytes());
    ad.extend_from_slice(&n.to_le_bytes());
    ad
}

/// Seals the plaintext of record `n` as format `version` does: v2 in the
/// current codec under epoch 0's key, v1 in codec v1.
fn seal_record(version: u8, ino: u64, n: u64, plain: &[u8]) -> Option<Vec<u8>> {
    let key = secret().recovery_key();
    let ad = record_ad(version, ino, n);
    if version == VERSION_V1 {
        codec::seal_bytes_v1_for_tests(&key, plain, &ad).ok()
    } else {
        codec::seal_bytes_ad(&key, 0, plain, 1 << 16, &ad).ok()
    }
}

/// A recovery file of format `version` from plaintext records in
/// [`recovery_records`]' layout (`None` if one cannot be sealed).
fn records_file(version: u8, ino: u64, data: &[u8]) -> Option<Vec<u8>> {
    let mut file = recovery_header(version, ino);
    let mut rest = data;
    let mut n = 0u64;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_le_bytes(*len)).min(tail.len());
        let (plain, tail) = tail.split_at(len);
        let sealed = seal_record(version, ino, n, plain)?;
        file.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        file.extend_from_slice(&sealed);
        rest = tail;
        n += 1;
    }
    Some(file)
}

/// Recovery records past their authentication: `data` is a list of
/// plaintexts (each a 2-byte little-endian length, then the bytes), sealed
/// here as records 0, 1, … of a file with the right key and associated
/// data, so the record decoder sees arbitrary plaintext. What opens must
/// survive being written again, as for [`recovery_file`].
pub fn recovery_records(data: &[u8]) {
    records(VERSION, data);
}

/// [`recovery_records`] for format v1: records sealed in codec v1 with v1's
/// associated data, decoded as v1's record types.
pub fn recovery_records_v1(data: &[u8]) {
    records(VERSION_V1, data);
}

fn records(version: u8, data: &[u8]) {
    let Some(file) = records_file(version, 42, data) else { return };
    let dir = recovery_dir();
    if let Ok(u) = dir.decode(Path::new("fuzz.p2pr"), &file) {
        recovery_round_trip(&dir, &u);
    }
}

/// The plaintext records of valid recovery files, in
/// [`recovery_records`]' layout.
pub fn recovery_records_seeds() -> Vec<Vec<u8>> {
    records_seeds(VERSION, recovery_file_seeds())
}

/// The plaintext records of valid v1 recovery files.
pub fn recovery_records_v1_seeds() -> Vec<Vec<u8>> {
    records_seeds(VERSION_V1, recovery_file_v1_seeds())
}

fn records_seeds(version: u8, files: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let key = secret().recovery_key();
    let mut out = Vec::new();
    for file in files {
        let Some(ino) = file.get(24..32).and_then(|b| <[u8; 8]>::try_from(b).ok()) else { continue };
        let ino = u64::from_le_bytes(ino);
        let mut rest = file.get(32..).unwrap_or_default();
        let mut seed = Vec::new();
        let mut n = 0u64;
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            let Some(sealed) = tail.get(..len) else { break };
            let Ok(plain) = codec::open_bytes_ad(&key, sealed, &record_ad(version, ino, n)) else { break };
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

/// peerd's revocation list file as a starting peer reads it
/// (`peerd::revoked::parse`). A list that parses holds at most
/// `MAX_NODES` ids, and written again (`to_text`, what `save` writes) it
/// fits in `MAX_FILE_BYTES` and reads back the same.
pub fn revoked_file(data: &[u8]) {
    let path = Path::new("revoked");
    let Ok((version, nodes)) = revoked::parse(path, data) else { return };
    assert!(nodes.len() <= revoked::MAX_NODES);
    let text = revoked::to_text(version, &nodes);
    assert!(text.len() <= revoked::MAX_FILE_BYTES, "a list load refuses: {} bytes", text.len());
    let back = revoked::parse(path, text.as_bytes()).expect("a list just written parses");
    assert!(back == (version, nodes), "a revocation list changed when written again");
}

/// Valid lists: empty, two nodes, the largest version; with CRLF line
/// ends and blank lines. Literal text, not `to_text`'s (the seeds must
/// not depend on the writer under test).
pub fn revoked_file_seeds() -> Vec<Vec<u8>> {
    let (a, b) = ("ab".repeat(16), "01".repeat(16));
    [
        "p2pfs-revoked 1\nversion 0\n".to_string(),
        format!("p2pfs-revoked 1\nversion 7\n{a}\n{b}\n"),
        format!("p2pfs-revoked 1\nversion 18446744073709551615\n{a}\n"),
        format!("p2pfs-revoked 1\r\nversion 3\r\n\r\n{a}\r\n\n{}\n", b.to_uppercase()),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// A volume pin file as a client reads it before trusting a volume
/// (`fs_client::pins::parse`; the file is read as text). A pin that
/// parses, written again (`to_text`, what the client writes), parses to
/// the same pin.
pub fn pin_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(pin) = pins::parse(text) else { return };
    let again = pins::to_text(&pin);
    assert!(pins::parse(&again) == Some(pin), "a pin changed when written again: {again:?}");
}

/// Pins as the client writes them, with comments, spaces and another
/// field order (literal text, not `to_text`'s).
pub fn pin_file_seeds() -> Vec<Vec<u8>> {
    let (v, ca, c0, c) = ("5a".repeat(16), "ca".repeat(32), "01".repeat(32), "02".repeat(32));
    [
        format!(
            "# p2pfs volume pin, written at first use; see docs/SECURITY.md\nvolume {v}\ndirsvc \
             dirsvc.example:7700\nca {ca}\ncheck0 {c0}\nepoch 3 {c}\nlegacy_layouts 0\n"
        ),
        format!("volume {v}\ndirsvc [::1]:7000\nca {ca}\ncheck0 {c0}\nepoch 0 {c0}\nlegacy_layouts 1\n"),
        format!(
            "\n  # note\nlegacy_layouts 1\n  epoch 4294967295 {c}\ncheck0 {c0}\n\tca {ca}\ndirsvc h:1\nvolume {}\n",
            v.to_uppercase()
        ),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// A user's age identity file as `fs-client` reads it
/// (`fs_client::identity::parse`). One that parses lists as many
/// identities as recipients and public keys, and a secret wrapped to its
/// first and last recipients opens with its identities.
pub fn identity_file(data: &[u8]) {
    let Ok(f) = fs_client::identity::parse(Path::new("identity"), data) else { return };
    assert!(!f.identities.is_empty());
    assert_eq!(f.recipients.len(), f.identities.len());
    assert_eq!(f.public_keys.len(), f.identities.len());
    assert!(f.public_keys.iter().all(|k| k.starts_with("age1")), "{:?}", f.public_keys);
    let s = secret();
    let last = f.recipients.len() - 1;
    for (i, r) in f.recipients.into_iter().enumerate().filter(|(i, _)| *i == 0 || *i == last) {
        let wrapped = keys::wrap_secret(&s, &[r]).expect("a recipient of the file wraps");
        let back =
            keys::unwrap_secret(&wrapped, &f.identities).expect("the file opens what its recipients wrap");
        assert_eq!(back.key_check(), s.key_check(), "recipient {i} opened to another secret");
    }
}

/// Identity files as `fs-client keygen` and `age-keygen` write them, and
/// one with two identities.
pub fn identity_file_seeds() -> Vec<Vec<u8>> {
    // Another fixed test key ("p2pfs fuzz second identity 32 b.").
    let other = "AGE-SECRET-KEY-1WQE8QENNYPN827N6YPEK2CM0DEJZQ6TYV4H8G6T50YSRXV3QVGHQZ4AT56";
    vec![
        format!(
            "# created: 1700000000 (unix seconds) by fs-client keygen\n# public key: age1…\n{IDENTITY}\n"
        )
        .into_bytes(),
        format!("{IDENTITY}\n").into_bytes(),
        format!("# a\n{IDENTITY}\n\n# b\n{other}\n").into_bytes(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_record_seeds_rebuild_files_that_open() {
        for (version, seeds) in
            [(VERSION, recovery_records_seeds()), (VERSION_V1, recovery_records_v1_seeds())]
        {
            assert_eq!(seeds.len(), 2);
            assert!(seeds.iter().all(|s| !s.is_empty()));
            // The first seed is inode 42's file: rebuilt, it opens.
            let file = records_file(version, 42, &seeds[0]).unwrap();
            let u = recovery_dir().decode(Path::new("x"), &file).unwrap();
            let mut want = sample_unstored().swap_remove(0);
            if version == VERSION_V1 {
                // v1 kept no MAC: it is made again when the chunk is committed.
                for (_, b) in &mut want.blocks {
                    if let KeptBlock::Chunk(c) = b {
                        c.mac = [0; 32];
                    }
                }
            }
            assert_eq!(u, want, "format v{version}");
        }
    }

    #[test]
    fn the_text_file_seeds_are_accepted() {
        for s in revoked_file_seeds() {
            assert!(revoked::parse(Path::new("r"), &s).is_ok(), "{}", String::from_utf8_lossy(&s));
        }
        for s in pin_file_seeds() {
            assert!(
                pins::parse(std::str::from_utf8(&s).unwrap()).is_some(),
                "{}",
                String::from_utf8_lossy(&s)
            );
        }
        let ids: Vec<usize> = identity_file_seeds()
            .iter()
            .map(|s| fs_client::identity::parse(Path::new("i"), s).unwrap().identities.len())
            .collect();
        assert_eq!(ids, [1, 1, 2]);
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
