//! The two AEADs sealed chunks use, both with 192-bit random nonces and
//! both computed on `ring`'s bulk ciphers:
//!
//! - **XChaCha20-Poly1305** (draft-irtf-cfrg-xchacha-03, as libsodium and
//!   RustCrypto's `chacha20poly1305::XChaCha20Poly1305` compute it): chunk
//!   formats v1–v3. HChaCha20 (RustCrypto's `chacha20::hchacha`, one
//!   ChaCha block) then ring's ChaCha20-Poly1305 (RFC 8439):
//!   XChaCha20-Poly1305(key, nonce[24]) = ChaCha20-Poly1305(subkey, 0⁴ ‖
//!   nonce[16..24]) with subkey = HChaCha20(key, nonce[0..16]). RustCrypto's
//!   own ran at ~0.83 GB/s, this at ~1.8 GB/s per core.
//! - **XAES-256-GCM** (C2SP's XAES-256-GCM, c2sp.org/XAES-256-GCM): format
//!   v4. A per-nonce key K_X derived from the key and nonce[0..12] with two
//!   AES-256 blocks (the spec's CMAC-based derivation; RustCrypto's `aes`),
//!   then ring's AES-256-GCM(K_X, nonce[12..24]). On these machines (VAES,
//!   AVX-512) ring's AES-256-GCM runs ~3.5× faster than its
//!   ChaCha20-Poly1305: `perf` of a 1 GiB cold read had ChaCha20-Poly1305
//!   opening chunks at 18.7 % of the client's CPU time and AES-GCM opening
//!   the TLS records carrying the same bytes at 5.1 %.
//!
//! Both constructions are the standard ones; tests check them against
//! RustCrypto's XChaCha20-Poly1305 and the spec's XAES-256-GCM vectors.

use crate::error::Error;
use aes::cipher::{BlockEncrypt, KeyInit};
use chacha20::cipher::consts::U10;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};

/// Which AEAD a chunk format seals with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cipher {
    /// XChaCha20-Poly1305: formats v1, v2 and v3.
    XChaCha20Poly1305,
    /// XAES-256-GCM: format v4.
    Xaes256Gcm,
}

impl Cipher {
    /// How many leading nonce bytes the derived key depends on (the rest
    /// is the bulk cipher's 96-bit nonce): 16 for XChaCha20 (HChaCha20's
    /// input), 12 for XAES-256-GCM.
    fn head_len(self) -> usize {
        match self {
            Cipher::XChaCha20Poly1305 => 16,
            Cipher::Xaes256Gcm => 12,
        }
    }

    /// The derived key of this AEAD under `key` for `nonce`, good for every
    /// nonce with the same head (the segments of one chunk: their nonces
    /// differ only in bytes 19..24).
    pub(crate) fn derive(self, key: &[u8; 32], nonce: &[u8; 24]) -> DerivedKey {
        let (alg, sub) = match self {
            Cipher::XChaCha20Poly1305 => {
                let sub = chacha20::hchacha::<U10>(key.into(), nonce[..16].into());
                (&CHACHA20_POLY1305, <[u8; 32]>::from(sub))
            }
            Cipher::Xaes256Gcm => {
                let mut head = [0u8; 12];
                head.copy_from_slice(&nonce[..12]);
                (&AES_256_GCM, xaes_key(key, head))
            }
        };
        // Both bulk ciphers take 32-byte keys, which is what `sub` is.
        let unbound = UnboundKey::new(alg, &sub).unwrap_or_else(|_| unreachable!());
        let mut head = [0u8; 16];
        head[..self.head_len()].copy_from_slice(&nonce[..self.head_len()]);
        DerivedKey { cipher: self, secret: *key, head, ring: LessSafeKey::new(unbound) }
    }
}

/// A [`Cipher`]'s per-nonce key ([`Cipher::derive`]), derived once for the
/// nonces that share its head.
pub(crate) struct DerivedKey {
    cipher: Cipher,
    secret: [u8; 32],
    head: [u8; 16],
    ring: LessSafeKey,
}

impl DerivedKey {
    /// The bulk cipher's 96-bit nonce for `nonce`, if `nonce` has this
    /// key's head (else the caller derives a key for it).
    fn tail(&self, nonce: &[u8; 24]) -> Option<Nonce> {
        let h = self.cipher.head_len();
        if nonce[..h] != self.head[..h] {
            return None;
        }
        let mut n = [0u8; 12];
        match self.cipher {
            // 0⁴ ‖ nonce[16..24] (draft-irtf-cfrg-xchacha).
            Cipher::XChaCha20Poly1305 => n[4..].copy_from_slice(&nonce[16..]),
            Cipher::Xaes256Gcm => n.copy_from_slice(&nonce[12..]),
        }
        Some(Nonce::assume_unique_for_key(n))
    }

    /// Encrypts `in_out` in place under `nonce` with associated data `ad`;
    /// returns the 16-byte tag.
    ///
    /// Errors: [`Error::TooLarge`] past the bulk cipher's limit per nonce
    /// (256 GiB for ChaCha20, 64 GiB for AES-GCM; never for a chunk).
    pub(crate) fn seal(&self, nonce: &[u8; 24], ad: &[u8], in_out: &mut [u8]) -> Result<[u8; 16], Error> {
        let Some(n) = self.tail(nonce) else {
            return self.cipher.derive(&self.secret, nonce).seal(nonce, ad, in_out);
        };
        let tag = self
            .ring
            .seal_in_place_separate_tag(n, Aad::from(ad), in_out)
            .map_err(|_| Error::TooLarge { len: in_out.len(), limit: usize::MAX })?;
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `in_out` in place if `tag` authenticates it and `ad` under
    /// `nonce`.
    ///
    /// Errors: [`Error::Decrypt`] for a wrong key, nonce, tag, associated
    /// data or any altered byte (`in_out` is then garbage).
    pub(crate) fn open(
        &self,
        nonce: &[u8; 24],
        ad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), Error> {
        let Some(n) = self.tail(nonce) else {
            return self.cipher.derive(&self.secret, nonce).open(nonce, ad, in_out, tag);
        };
        self.ring
            .open_in_place_separate_tag(n, Aad::from(ad), Tag::from(*tag), in_out, 0..)
            .map(drop)
            .map_err(|_| Error::Decrypt)
    }
}

/// XAES-256-GCM's derived key K_X for `key` and the first 96 bits of the
/// nonce: L = AES-256_K(0¹²⁸); K1 = L·x in GF(2¹²⁸) (L << 1, xor 0x87 if
/// L's top bit was set); K_X = AES-256_K(M1 ⊕ K1) ‖ AES-256_K(M2 ⊕ K1)
/// with M_i = 0x00 ‖ i ‖ "X" ‖ 0x00 ‖ nonce[0..12].
fn xaes_key(key: &[u8; 32], nonce: [u8; 12]) -> [u8; 32] {
    let aes = aes::Aes256::new(key.into());
    let mut l = aes::Block::default();
    aes.encrypt_block(&mut l);
    let l = u128::from_be_bytes(l.into());
    let k1 = ((l << 1) ^ if l >> 127 == 1 { 0x87 } else { 0 }).to_be_bytes();
    let mut out = [0u8; 32];
    for (i, half) in out.chunks_exact_mut(16).enumerate() {
        let mut m = [0u8; 16];
        m[1] = i as u8 + 1;
        m[2] = b'X';
        m[4..].copy_from_slice(&nonce);
        for (b, k) in m.iter_mut().zip(k1) {
            *b ^= k;
        }
        let mut block = aes::Block::from(m);
        aes.encrypt_block(&mut block);
        half.copy_from_slice(&block);
    }
    out
}

/// Encrypts `in_out` in place with `cipher` under `key` and `nonce` with
/// associated data `ad`; returns the 16-byte tag.
///
/// Errors: [`Error::TooLarge`] past the bulk cipher's limit per nonce
/// (256 GiB for ChaCha20, 64 GiB for AES-GCM; never for a chunk).
pub(crate) fn seal_detached(
    cipher: Cipher,
    key: &[u8; 32],
    nonce: &[u8; 24],
    ad: &[u8],
    in_out: &mut [u8],
) -> Result<[u8; 16], Error> {
    cipher.derive(key, nonce).seal(nonce, ad, in_out)
}

/// Decrypts `in_out` in place with `cipher` if `tag` authenticates it and
/// `ad` under `key` and `nonce`.
///
/// Errors: [`Error::Decrypt`] for a wrong key, nonce, tag, associated data
/// or any altered byte (`in_out` is then garbage).
pub(crate) fn open_detached(
    cipher: Cipher,
    key: &[u8; 32],
    nonce: &[u8; 24],
    ad: &[u8],
    in_out: &mut [u8],
    tag: &[u8; 16],
) -> Result<(), Error> {
    cipher.derive(key, nonce).open(nonce, ad, in_out, tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_bytes_are_those_of_rustcrypto_xchacha20poly1305_both_ways(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 24]>(),
            ad in proptest::collection::vec(any::<u8>(), 0..64),
            plain in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let reference = XChaCha20Poly1305::new(&key.into());
            let mut theirs = plain.clone();
            let their_tag = reference.encrypt_in_place_detached(XNonce::from_slice(&nonce), &ad, &mut theirs).unwrap();
            let mut ours = plain.clone();
            let tag = seal_detached(Cipher::XChaCha20Poly1305, &key, &nonce, &ad, &mut ours).unwrap();
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(&tag[..], &their_tag[..]);
            open_detached(Cipher::XChaCha20Poly1305, &key, &nonce, &ad, &mut ours, &tag).unwrap();
            prop_assert_eq!(&ours, &plain);
        }
    }

    #[test]
    fn a_changed_tag_ad_or_byte_does_not_open() {
        for c in [Cipher::XChaCha20Poly1305, Cipher::Xaes256Gcm] {
            let (key, nonce) = ([7u8; 32], [9u8; 24]);
            let mut ct = b"some plaintext".to_vec();
            let tag = seal_detached(c, &key, &nonce, b"ad", &mut ct).unwrap();
            let mut bad_tag = tag;
            bad_tag[0] ^= 1;
            assert!(matches!(
                open_detached(c, &key, &nonce, b"ad", &mut ct.clone(), &bad_tag),
                Err(Error::Decrypt)
            ));
            assert!(matches!(
                open_detached(c, &key, &nonce, b"da", &mut ct.clone(), &tag),
                Err(Error::Decrypt)
            ));
            let mut other_nonce = nonce;
            other_nonce[2] ^= 1;
            assert!(matches!(
                open_detached(c, &key, &other_nonce, b"ad", &mut ct.clone(), &tag),
                Err(Error::Decrypt)
            ));
            let mut flipped = ct.clone();
            flipped[3] ^= 0x80;
            assert!(matches!(open_detached(c, &key, &nonce, b"ad", &mut flipped, &tag), Err(Error::Decrypt)));
            open_detached(c, &key, &nonce, b"ad", &mut ct, &tag).unwrap();
            assert_eq!(ct, b"some plaintext", "{c:?}");
        }
    }

    /// A key derived once serves every nonce with its head (a chunk's
    /// segments) exactly as a fresh derivation would, and a nonce with
    /// another head gets its own key.
    #[test]
    fn a_derived_key_seals_as_a_fresh_derivation_for_any_nonce() {
        for c in [Cipher::XChaCha20Poly1305, Cipher::Xaes256Gcm] {
            let (key, base) = ([5u8; 32], [1u8; 24]);
            let derived = c.derive(&key, &base);
            // Bytes 20 and 23: a segment's index and last flag; 2 and 11:
            // the head of either cipher.
            for flip in [20usize, 23, 2, 11] {
                let mut nonce = base;
                nonce[flip] ^= 0x40;
                let (mut ours, mut fresh) = (b"a segment".to_vec(), b"a segment".to_vec());
                let tag = derived.seal(&nonce, b"hdr", &mut ours).unwrap();
                let fresh_tag = seal_detached(c, &key, &nonce, b"hdr", &mut fresh).unwrap();
                assert_eq!((&ours, tag), (&fresh, fresh_tag), "{c:?}, byte {flip}");
                derived.open(&nonce, b"hdr", &mut ours, &tag).unwrap();
                assert_eq!(ours, b"a segment");
            }
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The test vectors of the XAES-256-GCM specification
    /// (c2sp.org/XAES-256-GCM): ciphertext ‖ tag.
    #[test]
    fn xaes_256_gcm_gives_the_specification_vectors() {
        let cases = [
            ([1u8; 32], &b""[..], "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271"),
            (
                [3u8; 32],
                &b"c2sp.org/XAES-256-GCM"[..],
                "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d",
            ),
        ];
        for (key, ad, want) in cases {
            let nonce: [u8; 24] = *b"ABCDEFGHIJKLMNOPQRSTUVWX";
            let mut ct = b"XAES-256-GCM".to_vec();
            let tag = seal_detached(Cipher::Xaes256Gcm, &key, &nonce, ad, &mut ct).unwrap();
            ct.extend_from_slice(&tag);
            assert_eq!(ct, unhex(want));
            let (body, tag) = ct.split_at_mut(12);
            open_detached(Cipher::Xaes256Gcm, &key, &nonce, ad, body, &(*tag).try_into().unwrap()).unwrap();
            assert_eq!(body, b"XAES-256-GCM");
        }
    }
}
