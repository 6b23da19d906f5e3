//! Epoch secrets, sub-key derivation, layout-entry MACs and the sealing of
//! names.
//!
//! Each key epoch of a volume has one random 256-bit [`VolumeSecret`] (see
//! [`crate::keyring`] for epochs). Sub-keys come from it with BLAKE3's
//! key-derivation mode (`blake3::derive_key`), one context string per
//! purpose, so no two purposes ever share a key. The secret is stored in
//! dirsvc only wrapped with age (X25519 recipients), see [`wrap_secret`].
//!
//! Layout entries carry a MAC ([`LayoutMacKey`]) over where the block
//! belongs (volume, inode, block index) and what it is (chunk id, stored
//! length, key epoch), so a directory service that moves chunks between
//! files or blocks is caught by the reader.
//!
//! Names are sealed deterministically with AES-SIV (RFC 5297, AES-256-CMAC)
//! with the parent inode as associated data: dirsvc can find an entry by its
//! sealed name but cannot read it, and the same name in two directories
//! seals differently.

use crate::error::Error;
use crate::ids::{ChunkId, InodeId, VolumeId};
use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use std::fmt;

const CHUNK_CONTEXT: &str = "p2pfs 2026-11-30 chunk key v1";
const NAME_CONTEXT: &str = "p2pfs 2026-11-30 name key v1";
const SYMLINK_CONTEXT: &str = "p2pfs 2026-11-30 symlink target key v1";
const XATTR_VALUE_CONTEXT: &str = "p2pfs 2026-12-01 xattr value key v1";
const RECOVERY_CONTEXT: &str = "p2pfs 2026-12-06 client recovery file key v1";
const LAYOUT_MAC_CONTEXT: &str = "p2pfs 2026-12-08 layout entry mac key v1";
const KEY_CHECK_CONTEXT: &str = "p2pfs 2026-12-08 key check key v1";
const LINK_CONTEXT: &str = "p2pfs 2026-12-08 keyring link key v1";

/// The fixed string whose keyed hash is an epoch's key-check value.
const KEY_CHECK_INPUT: &[u8] = b"p2pfs key check v1";
/// Domain prefix of the message a keyring link authenticates.
const LINK_PREFIX: &[u8] = b"p2pfs keyring link v1";
/// Domain prefix of the message a layout-entry MAC authenticates.
const LAYOUT_MAC_PREFIX: &[u8] = b"p2pfs layout entry v1";
/// Domain prefix of a symlink target's associated data.
const SYMLINK_AD_PREFIX: &[u8] = b"p2pfs symlink target v1";

/// Bytes AES-SIV adds to a sealed name (the 16-byte synthetic IV).
pub const NAME_OVERHEAD: usize = 16;

/// The 256-bit secret of one key epoch of a volume (before key epochs: the
/// volume secret, which is epoch 0). Never printed, never stored unwrapped.
#[derive(Clone)]
pub struct VolumeSecret([u8; 32]);

impl fmt::Debug for VolumeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VolumeSecret(..)")
    }
}

impl VolumeSecret {
    /// A fresh secret from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        Self(b)
    }

    /// Wraps existing key bytes (tests, and unwrapping).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key that seals chunk contents ([`crate::codec`]).
    pub fn chunk_key(&self) -> SubKey {
        SubKey(blake3::derive_key(CHUNK_CONTEXT, &self.0))
    }

    /// The key that seals symlink targets (same format as chunks).
    pub fn symlink_key(&self) -> SubKey {
        SubKey(blake3::derive_key(SYMLINK_CONTEXT, &self.0))
    }

    /// The key that seals extended-attribute values (sealed with the inode
    /// and the sealed name as associated data, see
    /// [`crate::codec::seal_bytes_ad`]).
    pub fn xattr_value_key(&self) -> SubKey {
        SubKey(blake3::derive_key(XATTR_VALUE_CONTEXT, &self.0))
    }

    /// The key that seals a client's recovery files: data it could not
    /// store by unmount, kept on its local disk until the next mount stores
    /// it (see `fs_client::fs::recovery`).
    pub fn recovery_key(&self) -> SubKey {
        SubKey(blake3::derive_key(RECOVERY_CONTEXT, &self.0))
    }

    /// The key of the MACs over layout entries ([`LayoutMacKey`]).
    pub fn layout_mac_key(&self) -> LayoutMacKey {
        LayoutMacKey(blake3::derive_key(LAYOUT_MAC_CONTEXT, &self.0))
    }

    /// This secret's key-check value: BLAKE3 keyed (with a sub-key of the
    /// secret) over a fixed string. Public: it lets a client check that
    /// the secret it unwrapped is the one the keyring names, without
    /// revealing anything about the secret.
    pub fn key_check(&self) -> [u8; 32] {
        let k = blake3::derive_key(KEY_CHECK_CONTEXT, &self.0);
        *blake3::keyed_hash(&k, KEY_CHECK_INPUT).as_bytes()
    }

    /// The link from this epoch to the next: BLAKE3 keyed (with a sub-key
    /// of this epoch's secret) over `"p2pfs keyring link v1" ‖ volume id
    /// (16 B) ‖ next epoch (u32 LE) ‖ next epoch's key-check value (32
    /// B)`. Only a holder of this secret can make it, so only a member can
    /// start a new epoch that others will trust.
    pub fn link(&self, volume: &VolumeId, next_epoch: u32, next_check: &[u8; 32]) -> [u8; 32] {
        let k = blake3::derive_key(LINK_CONTEXT, &self.0);
        let mut h = blake3::Hasher::new_keyed(&k);
        h.update(LINK_PREFIX);
        h.update(volume.as_bytes());
        h.update(&next_epoch.to_le_bytes());
        h.update(next_check);
        *h.finalize().as_bytes()
    }

    /// The AES-SIV key (512 bits, from BLAKE3's extendable output) that seals
    /// names.
    pub fn name_key(&self) -> NameKey {
        let mut k = [0u8; 64];
        let mut h = blake3::Hasher::new_derive_key(NAME_CONTEXT);
        h.update(&self.0);
        h.finalize_xof().fill(&mut k);
        NameKey(k)
    }
}

/// A 256-bit symmetric key derived from a [`VolumeSecret`]. Never printed.
#[derive(Clone)]
pub struct SubKey([u8; 32]);

impl SubKey {
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SubKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubKey(..)")
    }
}

/// The key of layout-entry MACs of one key epoch. Never printed.
#[derive(Clone)]
pub struct LayoutMacKey([u8; 32]);

impl fmt::Debug for LayoutMacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LayoutMacKey(..)")
    }
}

/// Everything a layout-entry MAC covers: where the block belongs and what
/// it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutEntry {
    /// The volume.
    pub volume: VolumeId,
    /// The file.
    pub ino: InodeId,
    /// The block index (bytes `[index·B, (index+1)·B)`).
    pub index: u64,
    /// The chunk holding the block.
    pub chunk: ChunkId,
    /// The chunk's stored length in bytes.
    pub len: u32,
    /// The key epoch the chunk was sealed under.
    pub epoch: u32,
}

impl LayoutMacKey {
    /// The MAC of a layout entry: BLAKE3 keyed hash (32 bytes) of the
    /// fixed-length message `"p2pfs layout entry v1" ‖ volume id (16 B) ‖
    /// inode (u64 LE) ‖ block index (u64 LE) ‖ chunk id (32 B) ‖ stored
    /// length (u32 LE) ‖ epoch (u32 LE)`.
    pub fn mac(&self, e: &LayoutEntry) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(LAYOUT_MAC_PREFIX);
        h.update(e.volume.as_bytes());
        h.update(&e.ino.0.to_le_bytes());
        h.update(&e.index.to_le_bytes());
        h.update(e.chunk.as_bytes());
        h.update(&e.len.to_le_bytes());
        h.update(&e.epoch.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// Whether `mac` is the MAC of `e` (compared in constant time).
    pub fn verify(&self, e: &LayoutEntry, mac: &[u8; 32]) -> bool {
        blake3::Hash::from(self.mac(e)) == blake3::Hash::from(*mac)
    }
}

/// The associated data a symlink target is sealed with:
/// `"p2pfs symlink target v1" ‖ volume id (16 B) ‖ inode (u64 LE)`, so a
/// target opens only as the target of that symlink.
pub fn symlink_ad(volume: &VolumeId, ino: InodeId) -> Vec<u8> {
    let mut ad = Vec::with_capacity(SYMLINK_AD_PREFIX.len() + 24);
    ad.extend_from_slice(SYMLINK_AD_PREFIX);
    ad.extend_from_slice(volume.as_bytes());
    ad.extend_from_slice(&ino.0.to_le_bytes());
    ad
}

/// The AES-SIV key that seals names. Never printed.
#[derive(Clone)]
pub struct NameKey([u8; 64]);

impl fmt::Debug for NameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NameKey(..)")
    }
}

impl NameKey {
    fn cipher(&self) -> Aes256Siv {
        // The key is always 64 bytes, the size AES-256-SIV takes.
        Aes256Siv::new(&self.0.into())
    }

    /// Seals a plaintext name for the directory `parent`. Deterministic:
    /// the same (parent, name) always gives the same `name.len() + 16` bytes.
    pub fn seal(&self, parent: InodeId, name: &[u8]) -> Vec<u8> {
        let ad = parent.0.to_le_bytes();
        // AES-SIV encryption of an in-memory buffer cannot fail.
        self.cipher().encrypt([&b"name"[..], &ad[..]], name).unwrap_or_default()
    }

    /// Opens a sealed name read from directory `parent`.
    ///
    /// Errors: [`Error::Decrypt`] if it was not sealed for this parent with
    /// this volume's key.
    pub fn open(&self, parent: InodeId, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let ad = parent.0.to_le_bytes();
        self.cipher().decrypt([&b"name"[..], &ad[..]], sealed).map_err(|_| Error::Decrypt)
    }
}

impl NameKey {
    /// Seals an extended-attribute name of inode `ino`. Deterministic (so
    /// dirsvc can find it by its sealed form); domain-separated from
    /// directory entry names by the associated data `("xattr", ino)`.
    pub fn seal_xattr(&self, ino: InodeId, name: &[u8]) -> Vec<u8> {
        let ad = ino.0.to_le_bytes();
        // AES-SIV encryption of an in-memory buffer cannot fail.
        self.cipher().encrypt([&b"xattr"[..], &ad[..]], name).unwrap_or_default()
    }

    /// Opens an extended-attribute name sealed by [`Self::seal_xattr`].
    ///
    /// Errors: [`Error::Decrypt`] if it was not sealed for this inode with
    /// this volume's key.
    pub fn open_xattr(&self, ino: InodeId, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let ad = ino.0.to_le_bytes();
        self.cipher().decrypt([&b"xattr"[..], &ad[..]], sealed).map_err(|_| Error::Decrypt)
    }
}

/// Wraps `secret` with age to every recipient; the result is a standard age
/// file (binary), which `age -d -i IDENTITY` also opens.
///
/// Errors: [`Error::Key`] if age refuses the recipients.
pub fn wrap_secret(
    secret: &VolumeSecret,
    recipients: &[Box<dyn age::Recipient + Send>],
) -> Result<Vec<u8>, Error> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient))
            .map_err(|e| Error::Key(e.to_string()))?;
    let mut out = Vec::new();
    let mut w = encryptor.wrap_output(&mut out)?;
    std::io::Write::write_all(&mut w, &secret.0)?;
    w.finish()?;
    Ok(out)
}

/// Unwraps a secret made by [`wrap_secret`] with any matching identity.
///
/// Errors: [`Error::Key`] if no identity matches or the blob is not a
/// 32-byte age-wrapped secret.
pub fn unwrap_secret(wrapped: &[u8], identities: &[Box<dyn age::Identity>]) -> Result<VolumeSecret, Error> {
    let decryptor = age::Decryptor::new(wrapped).map_err(|e| Error::Key(e.to_string()))?;
    let mut r = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref()))
        .map_err(|e| Error::Key(format!("cannot unwrap the volume secret with this identity: {e}")))?;
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut buf)?;
    let bytes: [u8; 32] = buf
        .try_into()
        .map_err(|b: Vec<u8>| Error::Key(format!("wrapped secret has {} bytes, not 32", b.len())))?;
    Ok(VolumeSecret(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_keys_differ_per_purpose() {
        let s = VolumeSecret::from_bytes([1; 32]);
        assert_ne!(s.chunk_key().as_bytes(), s.symlink_key().as_bytes());
        assert_ne!(s.chunk_key().as_bytes(), s.recovery_key().as_bytes());
        assert_ne!(&s.layout_mac_key().0, s.chunk_key().as_bytes());
        assert_ne!(s.key_check(), *s.chunk_key().as_bytes());
        assert_ne!(&s.name_key().0[..32], s.chunk_key().as_bytes());
    }

    fn entry() -> LayoutEntry {
        LayoutEntry {
            volume: VolumeId([9; 16]),
            ino: InodeId(42),
            index: 3,
            chunk: ChunkId::of(b"chunk"),
            len: 1000,
            epoch: 2,
        }
    }

    #[test]
    fn a_layout_mac_binds_every_field() {
        let k = VolumeSecret::from_bytes([4; 32]).layout_mac_key();
        let e = entry();
        let mac = k.mac(&e);
        assert!(k.verify(&e, &mac));
        let changed = [
            LayoutEntry { volume: VolumeId([8; 16]), ..e },
            LayoutEntry { ino: InodeId(43), ..e },
            LayoutEntry { index: 4, ..e },
            LayoutEntry { chunk: ChunkId::of(b"other"), ..e },
            LayoutEntry { len: 1001, ..e },
            LayoutEntry { epoch: 1, ..e },
        ];
        for c in changed {
            assert!(!k.verify(&c, &mac), "{c:?}");
        }
        let other = VolumeSecret::from_bytes([5; 32]).layout_mac_key();
        assert!(!other.verify(&e, &mac), "another epoch's key");
        assert!(!k.verify(&e, &[0; 32]), "no MAC");
    }

    #[test]
    fn key_checks_and_links_depend_on_the_secret_and_what_they_cover() {
        let (a, b) = (VolumeSecret::from_bytes([1; 32]), VolumeSecret::from_bytes([2; 32]));
        assert_ne!(a.key_check(), b.key_check());
        assert_eq!(a.key_check(), VolumeSecret::from_bytes([1; 32]).key_check());
        let v = VolumeId([3; 16]);
        let l = a.link(&v, 1, &b.key_check());
        assert_ne!(l, b.link(&v, 1, &b.key_check()), "another secret");
        assert_ne!(l, a.link(&v, 2, &b.key_check()), "another epoch");
        assert_ne!(l, a.link(&VolumeId([4; 16]), 1, &b.key_check()), "another volume");
        assert_ne!(l, a.link(&v, 1, &a.key_check()), "another check");
        assert_ne!(symlink_ad(&v, InodeId(5)), symlink_ad(&v, InodeId(6)));
    }

    #[test]
    fn xattr_names_are_separate_from_entry_names() {
        let k = VolumeSecret::from_bytes([3; 32]).name_key();
        let x = k.seal_xattr(InodeId(5), b"user.a");
        assert_eq!(x, k.seal_xattr(InodeId(5), b"user.a"));
        assert_ne!(x, k.seal(InodeId(5), b"user.a"));
        assert_eq!(k.open_xattr(InodeId(5), &x).unwrap(), b"user.a");
        assert!(k.open_xattr(InodeId(6), &x).is_err());
        assert!(k.open(InodeId(5), &x).is_err());
    }

    #[test]
    fn names_seal_deterministically_per_parent() {
        let k = VolumeSecret::from_bytes([2; 32]).name_key();
        let a = k.seal(InodeId(5), b"report.txt");
        assert_eq!(a, k.seal(InodeId(5), b"report.txt"));
        assert_ne!(a, k.seal(InodeId(6), b"report.txt"));
        assert_eq!(a.len(), 10 + NAME_OVERHEAD);
        assert_eq!(k.open(InodeId(5), &a).unwrap(), b"report.txt");
        assert!(k.open(InodeId(6), &a).is_err());
        // Non-UTF-8 names are fine.
        let odd = [0xffu8, b'\n', 0x80];
        assert_eq!(k.open(InodeId(1), &k.seal(InodeId(1), &odd)).unwrap(), odd);
    }

    #[test]
    fn secret_wraps_to_an_age_recipient_and_back() {
        let id = age::x25519::Identity::generate();
        let recipients: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(id.to_public())];
        let s = VolumeSecret::generate();
        let wrapped = wrap_secret(&s, &recipients).unwrap();
        assert!(wrapped.starts_with(b"age-encryption.org/v1"));
        let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(id)];
        assert_eq!(unwrap_secret(&wrapped, &ids).unwrap().0, s.0);
        let other: Vec<Box<dyn age::Identity>> = vec![Box::new(age::x25519::Identity::generate())];
        assert!(unwrap_secret(&wrapped, &other).is_err());
    }
}
