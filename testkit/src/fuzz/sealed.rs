//! Sealed bytes a client opens: chunks (from peers), symlink targets and
//! extended-attribute values (the chunk format with associated data, from
//! dirsvc), the age-wrapped volume secret (from dirsvc), sealed names and
//! xattr names (AES-SIV, from dirsvc). All under fixed test keys, so
//! mutated valid inputs reach the authentication and, for the seeds, the
//! plaintext.

use common::codec;
use common::keys::{self, NameKey, SubKey, VolumeSecret};
use common::{ChunkId, InodeId};
use std::str::FromStr;
use std::sync::OnceLock;

/// The volume secret of every target.
pub fn secret() -> VolumeSecret {
    VolumeSecret::from_bytes(*b"p2pfs fuzz volume secret 32 byte")
}

fn chunk_key() -> &'static SubKey {
    static KEY: OnceLock<SubKey> = OnceLock::new();
    KEY.get_or_init(|| secret().chunk_key())
}

fn name_key() -> &'static NameKey {
    static KEY: OnceLock<NameKey> = OnceLock::new();
    KEY.get_or_init(|| secret().name_key())
}

/// The age identity the fuzzed secrets are wrapped to (a fixed test key,
/// never used for anything else).
pub(crate) const IDENTITY: &str =
    "AGE-SECRET-KEY-1WQE8QENNYPN827N6YPSKWEFQD9JX2MN5D968JGPNXGSXY7T5V4ESM3MDDR";

fn identity() -> Option<&'static age::x25519::Identity> {
    static ID: OnceLock<Option<age::x25519::Identity>> = OnceLock::new();
    ID.get_or_init(|| age::x25519::Identity::from_str(IDENTITY).ok()).as_ref()
}

/// A chunk as a reader gets it from a peer: verified against its id, then
/// opened. The first byte picks the id: the hash of the rest (so the
/// bytes reach decryption) or a fixed id (a mismatch).
pub fn chunk_open(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else { return };
    let id = if mode & 1 == 0 { ChunkId::of(bytes) } else { ChunkId([mode; 32]) };
    let _ = codec::open(chunk_key(), &id, bytes);
}

/// Sealed chunks of interesting sizes (with the mode byte).
pub fn chunk_seeds() -> Vec<Vec<u8>> {
    [0usize, 1, 15, 16, 17, 100, 4096]
        .iter()
        .filter_map(|&n| codec::seal(chunk_key(), 0, &vec![0x42; n]).ok())
        .map(|s| [&[0u8][..], &s.bytes].concat())
        .collect()
}

/// Bytes sealed with associated data (xattr values, recovery records): the
/// first byte gives the length of the associated data that follows, the
/// rest is the sealed bytes.
pub fn chunk_open_ad(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let (ad, sealed) = rest.split_at(usize::from(n).min(rest.len()));
    let _ = codec::open_bytes_ad(chunk_key(), sealed, ad);
    let _ = codec::open_bytes(chunk_key(), sealed);
}

/// Values sealed with associated data, in [`chunk_open_ad`]'s layout.
pub fn chunk_ad_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (ad, n) in [(&b""[..], 0usize), (b"ino 7 name x", 10), (&[0xff; 200][..], 300)] {
        if let Ok(sealed) = codec::seal_bytes_ad(chunk_key(), 0, &vec![1; n], 1 << 16, ad) {
            out.push([&[ad.len() as u8][..], ad, &sealed].concat());
        }
    }
    out
}

/// The wrapped volume secret as a mounting client unwraps it.
pub fn wrapped_secret(data: &[u8]) {
    let Some(id) = identity() else { return };
    let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(id.clone())];
    let _ = keys::unwrap_secret(data, &ids);
}

/// The secret wrapped to the test identity, to it and another recipient,
/// and to another recipient only.
pub fn wrapped_secret_seeds() -> Vec<Vec<u8>> {
    let Some(id) = identity() else { return vec![b"age-encryption.org/v1\n".to_vec()] };
    let other = age::x25519::Identity::generate().to_public();
    let sets: Vec<Vec<Box<dyn age::Recipient + Send>>> = vec![
        vec![Box::new(id.to_public())],
        vec![Box::new(other.clone()), Box::new(id.to_public())],
        vec![Box::new(other)],
    ];
    sets.iter().filter_map(|r| keys::wrap_secret(&secret(), r).ok()).collect()
}

/// Parent (or inode) of the sealed names: the first 8 bytes, little-endian.
fn split_ino(data: &[u8]) -> Option<(InodeId, &[u8])> {
    let (ino, sealed) = data.split_first_chunk::<8>()?;
    Some((InodeId(u64::from_le_bytes(*ino)), sealed))
}

/// A directory entry name from dirsvc, opened for its parent (the first 8
/// bytes).
pub fn sealed_name(data: &[u8]) {
    if let Some((parent, sealed)) = split_ino(data) {
        let _ = name_key().open(parent, sealed);
    }
}

/// Sealed names of interesting lengths, in [`sealed_name`]'s layout.
pub fn sealed_name_seeds() -> Vec<Vec<u8>> {
    [&b""[..], b"a", b"report.txt", &[0xff; 255]]
        .iter()
        .map(|n| [&7u64.to_le_bytes()[..], &name_key().seal(InodeId(7), n)].concat())
        .collect()
}

/// An extended-attribute name from dirsvc, opened for its inode (the
/// first 8 bytes).
pub fn sealed_xattr_name(data: &[u8]) {
    if let Some((ino, sealed)) = split_ino(data) {
        let _ = name_key().open_xattr(ino, sealed);
    }
}

/// Sealed xattr names, in [`sealed_xattr_name`]'s layout.
pub fn sealed_xattr_name_seeds() -> Vec<Vec<u8>> {
    [&b"user.a"[..], b"security.selinux", &[b'x'; 255]]
        .iter()
        .map(|n| [&9u64.to_le_bytes()[..], &name_key().seal_xattr(InodeId(9), n)].concat())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_identity_parses_and_opens_its_seeds() {
        let id = identity().expect("the fixed identity parses");
        let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(id.clone())];
        let seeds = wrapped_secret_seeds();
        assert!(keys::unwrap_secret(&seeds[0], &ids).is_ok());
        assert!(keys::unwrap_secret(&seeds[2], &ids).is_err());
    }
}
