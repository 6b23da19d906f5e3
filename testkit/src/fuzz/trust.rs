//! What a client verifies before it trusts dirsvc: the volume's keyring
//! (every epoch's key-check value and link, `common::keyring`) and the MAC
//! of each layout entry. Both arrive in `DirService` responses, so the
//! inputs are response frames as the client decodes them
//! ([`common::wire::decode`]).
//!
//! dirsvc knows no secret: whatever it sends, a client must accept only
//! epochs and entries a member made. The fuzzer knows no secret either, so
//! the targets assert exactly that: an accepted keyring's epochs hold the
//! seeds' secrets in order, an accepted layout entry is one the seeds
//! MAC'd. The secrets are fixed; the age wrapping of the seeds is not
//! (age encrypts with fresh randomness), which does not matter to a
//! failing input: it reproduces with the fixed identity.

use crate::fuzz::sealed::IDENTITY;
use common::keyring::{self, VolumeKeys};
use common::keys::{self, LayoutEntry, VolumeSecret};
use common::rpc::dir::{
    Attr, BlockLoc, DirServiceResponse, FileKind, KeyEpoch, Keyring, LayoutPage, Member, VolumeInfo,
};
use common::rpc::PeerLoc;
use common::time::Timestamp;
use common::wire;
use common::{ChunkId, InodeId, PeerId, VolumeId};
use fs_client::identity::IdentityFile;
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;
use tarpc::Response;

/// The volume of both targets.
const VOLUME: VolumeId = VolumeId([0x76; 16]);

/// Epochs of the seed keyrings.
const EPOCHS: u32 = 3;

/// The secret of epoch `i` of the seeds.
fn epoch_secret(i: u32) -> VolumeSecret {
    let mut b = *b"p2pfs fuzz key epoch ? secret 32";
    b[21] = b'0' + i as u8;
    VolumeSecret::from_bytes(b)
}

/// The identity file a fuzzed client unlocks with (the fixed test
/// identity), parsed as `fs-client` parses one.
fn identity_file() -> Option<IdentityFile> {
    fs_client::identity::parse(Path::new("fuzz-identity"), format!("# fuzz\n{IDENTITY}\n").as_bytes()).ok()
}

/// A member who is not the fuzzed client (a removed member, in seeds).
fn stranger() -> age::x25519::Identity {
    age::x25519::Identity::generate()
}

/// Epochs `0..n` of the seeds; epoch `i` is wrapped to the fuzzed client
/// unless `i` is in `not_ours`.
fn epochs(n: u32, not_ours: &[u32]) -> Vec<KeyEpoch> {
    let (Ok(me), other) = (age::x25519::Identity::from_str(IDENTITY), stranger()) else { return Vec::new() };
    (0..n)
        .filter_map(|i| {
            let s = epoch_secret(i);
            let mut to: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(other.to_public())];
            if !not_ours.contains(&i) {
                to.push(Box::new(me.to_public()));
            }
            let wrapped = keys::wrap_secret(&s, &to).ok()?;
            let check = s.key_check();
            let link = if i == 0 { [0; 32] } else { epoch_secret(i - 1).link(&VOLUME, i, &check) };
            Some(KeyEpoch { epoch: i, wrapped, check, link })
        })
        .collect()
}

fn info(epochs: Vec<KeyEpoch>, legacy_layouts: bool) -> VolumeInfo {
    VolumeInfo {
        id: VOLUME,
        block_size: 1 << 20,
        replicas: 2,
        keyring: Keyring {
            version: 3,
            epochs,
            members: vec![Member { name: "me".into(), recipient: "age1x".into(), nodes: Vec::new() }],
        },
        legacy_layouts,
    }
}

/// A response frame body carrying `message`.
fn response(message: DirServiceResponse) -> Vec<u8> {
    wire::encode(&Response { request_id: 1, message: Ok(message) }).unwrap_or_default()
}

/// The `DirServiceResponse` in a response frame body, if it decodes.
fn decode(data: &[u8]) -> Option<DirServiceResponse> {
    wire::decode::<Response<DirServiceResponse>>(data).ok()?.message.ok()
}

/// A `volume_info` response as a mounting client handles it:
/// `fs_client::volume::unlock` with the fixed identity (unwrap every
/// epoch, check key-check values and links, or explain why not). An
/// accepted keyring must be the seeds' chain: epoch `i` holds the secret
/// of epoch `i` (except a lone legacy epoch 0 without a key-check value,
/// which is trusted as served) and the link made with epoch `i - 1`'s
/// secret for this volume; and it must verify again with the other
/// `legacy` setting where that must not matter.
pub fn keyring(data: &[u8]) {
    let Some(DirServiceResponse::VolumeInfo(Ok(info))) = decode(data) else { return };
    let Some(id) = identity_file() else { return };
    let Ok(keys) = fs_client::volume::unlock(&info, &id) else { return };
    let epochs = &info.keyring.epochs;
    let legacy = info.legacy_layouts;
    assert_eq!(keys.volume(), info.id);
    assert_eq!(keys.newest() as usize + 1, epochs.len(), "keys for another number of epochs");
    let lone_legacy = legacy && epochs.len() == 1 && epochs[0].check == [0; 32];
    for (i, e) in epochs.iter().enumerate() {
        let i = i as u32;
        let check = keys.check(i).expect("keys for every epoch");
        if !(i == 0 && lone_legacy) {
            assert_eq!(check, epoch_secret(i).key_check(), "epoch {i} holds a secret no member made");
        }
        // Its link is the one the previous epoch's member made.
        let link = if i == 0 { [0; 32] } else { epoch_secret(i - 1).link(&info.id, i, &e.check) };
        assert_eq!(e.link, link, "epoch {i} has a link no member made");
        if !(i == 0 && legacy && e.check == [0; 32]) {
            assert_eq!(check, e.check, "epoch {i}'s secret does not match its key-check value");
        }
    }
    let secrets: Vec<VolumeSecret> =
        (0..epochs.len() as u32).filter_map(|i| keys.secret(i).cloned()).collect();
    // A keyring that verifies without the legacy exception verifies with
    // it; one that did not need it (a key-check value on epoch 0) verifies
    // without.
    if !legacy || epochs[0].check != [0; 32] {
        for l in [false, true] {
            assert!(
                keyring::verify(info.id, &info.keyring, &secrets, l).is_ok(),
                "legacy={l} changes the verdict"
            );
        }
    }
}

/// `volume_info` responses: three epochs all ours; two where the newest is
/// not wrapped to us (a removed member); one epoch; a legacy volume whose
/// epoch 0 has no key-check value.
pub fn keyring_seeds() -> Vec<Vec<u8>> {
    let mut legacy = epochs(1, &[]);
    if let Some(e) = legacy.first_mut() {
        e.check = [0; 32];
    }
    [
        info(epochs(EPOCHS, &[]), false),
        info(epochs(2, &[1]), false),
        info(epochs(1, &[]), false),
        info(legacy, true),
    ]
    .into_iter()
    .map(|i| response(DirServiceResponse::VolumeInfo(Ok(i))))
    .collect()
}

/// The keys of the seeds' keyring (every epoch), as the client holds them
/// after `unlock`.
fn volume_keys() -> Option<&'static VolumeKeys> {
    static KEYS: OnceLock<Option<VolumeKeys>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let ring = info(epochs(EPOCHS, &[]), false);
        fs_client::volume::unlock(&ring, &identity_file()?).ok()
    })
    .as_ref()
}

/// The file of the layout seeds.
const FILE: InodeId = InodeId(0x1234);

/// The entries the seeds MAC (block, chunk, length, epoch): the only
/// entries that may verify.
fn macd_entries() -> Vec<LayoutEntry> {
    (0..EPOCHS)
        .flat_map(|epoch| {
            (0..3u64).map(move |index| LayoutEntry {
                volume: VOLUME,
                ino: FILE,
                index: index + 10 * u64::from(epoch),
                chunk: ChunkId([index as u8 + 16 * epoch as u8; 32]),
                len: (1 << 20) + 48 - index as u32,
                epoch,
            })
        })
        .collect()
}

/// A `get_layout` response as a reading client checks it: each entry's
/// MAC under the layout key of the epoch the entry names
/// (`fs_client::fs::layout_entry_verifies`, the check `Fs::verify_entry`
/// makes before it uses a block; an entry of an unknown epoch is an error
/// there). The file is the page's `attr.ino`. An entry that verifies must
/// be one the seeds MAC'd, field for field; an all-zero MAC never
/// verifies (it is the legacy marker, handled before).
pub fn layout_mac(data: &[u8]) {
    let Some(DirServiceResponse::GetLayout(Ok(page))) = decode(data) else { return };
    let Some(keys) = volume_keys() else { return };
    let ino = page.attr.ino;
    for loc in &page.blocks {
        if let Ok(true) = fs_client::fs::layout_entry_verifies(keys, VOLUME, ino, loc) {
            assert_ne!(loc.mac, [0; 32], "an entry without a MAC verifies");
            let e = LayoutEntry {
                volume: VOLUME,
                ino,
                index: loc.index,
                chunk: loc.chunk,
                len: loc.len,
                epoch: loc.epoch,
            };
            assert!(macd_entries().contains(&e), "a layout entry no member made verifies: {e:?}");
        }
    }
}

fn page(blocks: Vec<BlockLoc>) -> Vec<u8> {
    let t = Timestamp { secs: 1_700_000_000, nanos: 0 };
    let attr = Attr {
        ino: FILE,
        kind: FileKind::File,
        perm: 0o644,
        uid: 0,
        gid: 0,
        size: 40 << 20,
        nlink: 1,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        rdev: 0,
        stored_bytes: 40 << 20,
    };
    response(DirServiceResponse::GetLayout(Ok(LayoutPage { attr, blocks, eof: true })))
}

/// Layout pages: every MAC'd entry (with replicas), entries without a MAC,
/// and entries whose MAC is another epoch's or another block's.
pub fn layout_mac_seeds() -> Vec<Vec<u8>> {
    let Some(keys) = volume_keys() else { return vec![page(Vec::new())] };
    let replicas = |n: u8| {
        (0..n)
            .map(|k| PeerLoc { id: PeerId([k; 16]), addr: format!("10.0.0.{k}:7701"), live: true })
            .collect()
    };
    let loc = |e: &LayoutEntry, mac: [u8; 32]| BlockLoc {
        inline: None,
        index: e.index,
        chunk: e.chunk,
        len: e.len,
        replicas: replicas(e.index as u8 % 3),
        epoch: e.epoch,
        mac,
    };
    let mac = |e: &LayoutEntry| keys.epoch(e.epoch).map(|k| k.layout_mac.mac(e)).unwrap_or_default();
    let entries = macd_entries();
    let good: Vec<BlockLoc> = entries.iter().map(|e| loc(e, mac(e))).collect();
    let zero: Vec<BlockLoc> = entries.iter().take(2).map(|e| loc(e, [0; 32])).collect();
    let swapped: Vec<BlockLoc> = entries.windows(2).map(|w| loc(&w[0], mac(&w[1]))).collect();
    vec![page(good), page(zero), page(swapped)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_unlock_and_verify() {
        let id = identity_file().unwrap();
        let seeds = keyring_seeds();
        let unlocked: Vec<bool> = seeds
            .iter()
            .map(|s| match decode(s) {
                Some(DirServiceResponse::VolumeInfo(Ok(i))) => fs_client::volume::unlock(&i, &id).is_ok(),
                _ => panic!("not a volume_info response"),
            })
            .collect();
        assert_eq!(unlocked, [true, false, true, true]);
        let keys = volume_keys().unwrap();
        assert_eq!(keys.newest(), EPOCHS - 1);
        let Some(DirServiceResponse::GetLayout(Ok(p))) = decode(&layout_mac_seeds()[0]) else { panic!() };
        assert_eq!(p.blocks.len(), macd_entries().len());
        assert!(p
            .blocks
            .iter()
            .all(|l| fs_client::fs::layout_entry_verifies(keys, VOLUME, FILE, l).unwrap()));
        let Some(DirServiceResponse::GetLayout(Ok(p))) = decode(&layout_mac_seeds()[2]) else { panic!() };
        assert!(p
            .blocks
            .iter()
            .all(|l| !fs_client::fs::layout_entry_verifies(keys, VOLUME, FILE, l).unwrap()));
    }
}
