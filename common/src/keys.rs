//! Volume secret, sub-key derivation and the sealing of names.
//!
//! Each volume has one random 256-bit [`VolumeSecret`]. Sub-keys come from it
//! with BLAKE3's key-derivation mode (`blake3::derive_key`), one context
//! string per purpose, so no two purposes ever share a key. The secret is
//! stored in dirsvc only wrapped with age (X25519 recipients), see
//! [`wrap_secret`].
//!
//! Names are sealed deterministically with AES-SIV (RFC 5297, AES-256-CMAC)
//! with the parent inode as associated data: dirsvc can find an entry by its
//! sealed name but cannot read it, and the same name in two directories
//! seals differently.

use crate::error::Error;
use crate::ids::InodeId;
use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use std::fmt;

const CHUNK_CONTEXT: &str = "p2pfs 2026-11-30 chunk key v1";
const NAME_CONTEXT: &str = "p2pfs 2026-11-30 name key v1";
const SYMLINK_CONTEXT: &str = "p2pfs 2026-11-30 symlink target key v1";
const XATTR_VALUE_CONTEXT: &str = "p2pfs 2026-12-01 xattr value key v1";
const RECOVERY_CONTEXT: &str = "p2pfs 2026-12-06 client recovery file key v1";

/// Bytes AES-SIV adds to a sealed name (the 16-byte synthetic IV).
pub const NAME_OVERHEAD: usize = 16;

/// The 256-bit secret of one volume. Never printed, never stored unwrapped.
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
        assert_ne!(&s.name_key().0[..32], s.chunk_key().as_bytes());
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
