//! XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03, as libsodium and
//! RustCrypto's `chacha20poly1305::XChaCha20Poly1305` compute it), built
//! from HChaCha20 (RustCrypto's `chacha20::hchacha`, one ChaCha block) and
//! `ring`'s ChaCha20-Poly1305 (RFC 8439).
//!
//! Why: the codec's benchmark (`common/benches/codec.rs`) measured
//! RustCrypto's XChaCha20-Poly1305 at ~0.83 GB/s and ring's
//! ChaCha20-Poly1305 at ~1.8 GB/s per core on these machines; the AEAD was
//! ~88 % of sealing and opening. The construction is the standard one, so
//! the bytes are identical (a test checks it against RustCrypto): every
//! chunk ever written opens either way.
//!
//! XChaCha20-Poly1305(key, nonce[24]) = ChaCha20-Poly1305(subkey, 0⁴ ‖
//! nonce[16..24]) with subkey = HChaCha20(key, nonce[0..16]).

use crate::error::Error;
use chacha20::cipher::consts::U10;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};

/// The ring key and 96-bit nonce that XChaCha20-Poly1305 under `key` with
/// the 192-bit `nonce` amounts to.
fn derive(key: &[u8; 32], nonce: &[u8; 24]) -> (LessSafeKey, Nonce) {
    let sub = chacha20::hchacha::<U10>(key.into(), nonce[..16].into());
    // The subkey is 32 bytes, which is what CHACHA20_POLY1305 takes.
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, sub.as_slice()).unwrap_or_else(|_| unreachable!());
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&nonce[16..]);
    (LessSafeKey::new(unbound), Nonce::assume_unique_for_key(n))
}

/// Encrypts `in_out` in place under `key` and `nonce` with associated data
/// `ad`; returns the 16-byte Poly1305 tag.
///
/// Errors: [`Error::TooLarge`] past ChaCha20's 256 GiB per nonce (never
/// for a chunk).
pub(crate) fn seal_detached(
    key: &[u8; 32],
    nonce: &[u8; 24],
    ad: &[u8],
    in_out: &mut [u8],
) -> Result<[u8; 16], Error> {
    let (k, n) = derive(key, nonce);
    let tag = k
        .seal_in_place_separate_tag(n, Aad::from(ad), in_out)
        .map_err(|_| Error::TooLarge { len: in_out.len(), limit: usize::MAX })?;
    let mut out = [0u8; 16];
    out.copy_from_slice(tag.as_ref());
    Ok(out)
}

/// Decrypts `in_out` in place if `tag` authenticates it and `ad` under
/// `key` and `nonce`.
///
/// Errors: [`Error::Decrypt`] for a wrong key, nonce, tag, associated data
/// or any altered byte (`in_out` is then garbage).
pub(crate) fn open_detached(
    key: &[u8; 32],
    nonce: &[u8; 24],
    ad: &[u8],
    in_out: &mut [u8],
    tag: &[u8; 16],
) -> Result<(), Error> {
    let (k, n) = derive(key, nonce);
    k.open_in_place_separate_tag(n, Aad::from(ad), Tag::from(*tag), in_out, 0..)
        .map(drop)
        .map_err(|_| Error::Decrypt)
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
            let tag = seal_detached(&key, &nonce, &ad, &mut ours).unwrap();
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(&tag[..], &their_tag[..]);
            open_detached(&key, &nonce, &ad, &mut ours, &tag).unwrap();
            prop_assert_eq!(&ours, &plain);
        }
    }

    #[test]
    fn a_changed_tag_ad_or_byte_does_not_open() {
        let (key, nonce) = ([7u8; 32], [9u8; 24]);
        let mut ct = b"some plaintext".to_vec();
        let tag = seal_detached(&key, &nonce, b"ad", &mut ct).unwrap();
        let mut bad_tag = tag;
        bad_tag[0] ^= 1;
        assert!(matches!(open_detached(&key, &nonce, b"ad", &mut ct.clone(), &bad_tag), Err(Error::Decrypt)));
        assert!(matches!(open_detached(&key, &nonce, b"da", &mut ct.clone(), &tag), Err(Error::Decrypt)));
        let mut flipped = ct.clone();
        flipped[3] ^= 0x80;
        assert!(matches!(open_detached(&key, &nonce, b"ad", &mut flipped, &tag), Err(Error::Decrypt)));
        open_detached(&key, &nonce, b"ad", &mut ct, &tag).unwrap();
        assert_eq!(ct, b"some plaintext");
    }
}
