//! The sealed-chunk format: plaintext block → stored chunk, and back.
//!
//! Format v2 (written by [`seal`]; all integers little-endian), documented
//! in `docs/FORMATS.md`:
//!
//! ```text
//! 0      4        5       8            12                       36
//! | "P2PC" | ver=2 | 0 0 0 | epoch u32  | XChaCha20 nonce (24 B) | ciphertext ‖ Poly1305 tag (16 B) |
//! ```
//!
//! Format v1 (read only: chunks, symlink targets, attribute values and
//! recovery records written before key epochs) has the 8-byte header
//! `"P2PC" | ver=1 | 0 0 0` and no epoch; it opens as epoch 0.
//!
//! Formats v3 and v4 ("segmented"; v4 written by [`seal_segmented`], both
//! read by [`open`] and [`header`] like the others) seal a block as a run
//! of 64 KiB segments, each authenticated on its own, for verified range
//! reads (v3 with XChaCha20-Poly1305, v4 with XAES-256-GCM): [`outboard`], [`encode_segment_proof`], [`verify_segment_proof`]
//! and [`open_segment`] fetch, check and open one segment of a chunk
//! knowing only its id and stored length. Layout in the `segmented`
//! module's docs and `docs/FORMATS.md`.
//!
//! The header (8, 12 or 44 bytes) is the AEAD's associated data, so a
//! changed version byte or epoch fails authentication. The epoch names the
//! key epoch whose secret the sealing key was derived from (see
//! [`crate::keyring`]): readers pick the key by it, with [`header`], before
//! opening. The nonce is random per chunk (192 bits, so random nonces never
//! collide in practice). A stored v2 chunk is exactly `plaintext +`
//! [`OVERHEAD`] (52) bytes, a v1 chunk `plaintext +` [`OVERHEAD_V1`] (48),
//! a v3 or v4 chunk `plaintext + 44 + 16 · segments` ([`SegmentLayout::stored_len`]).
//! Its [`ChunkId`] is the BLAKE3 hash of all of it, so peers and auditors
//! verify chunks without keys.
//!
//! An AEAD with 192-bit random nonces is used instead of one age file per
//! chunk because it needs no per-chunk X25519 exchange and runs faster;
//! age still wraps the epoch secrets (see [`crate::keys`]). v1–v3 use
//! XChaCha20-Poly1305 (HChaCha20 plus ring's ChaCha20-Poly1305), v4
//! XAES-256-GCM (two AES blocks of key derivation plus ring's AES-256-GCM;
//! both in `aead`). Criterion benchmark `common/benches/codec.rs`, 1 MiB
//! block with its BLAKE3: v3 seal 583 µs (1.67 GiB/s), open 1.68 GiB/s;
//! v4 seal 317 µs (3.08 GiB/s), open 3.23 GiB/s.

mod aead;
mod proof;
mod segmented;

pub use proof::{
    encode_range_proof, encode_segment_proof, encode_segment_proof_at, outboard, outboard_len,
    outboard_with_root, verify_range, verify_segment_proof, VerifiedSegment, OUTBOARD_GROUP_BYTES,
};
pub use segmented::{
    is_segmented, open_segment, seal_segmented, seal_segmented_v3_for_tests, seal_segmented_with,
    segmented_header, SegmentLayout, SegmentedHeader, HEADER_LEN_V3, MAX_OVERHEAD_V3, MIN_SEGMENT_SIZE,
    SEGMENT_SIZE, VERSION_V3, VERSION_V4,
};

use crate::error::Error;
use crate::ids::ChunkId;
use crate::keys::SubKey;

/// Magic bytes at the start of every sealed chunk.
pub const MAGIC: &[u8; 4] = b"P2PC";
/// The format version written (2: the header names the key epoch).
pub const VERSION: u8 = 2;
/// The first format version (no epoch; read as epoch 0).
pub const VERSION_V1: u8 = 1;
/// Header length of the written format in bytes (magic, version, 3
/// reserved zero bytes, epoch `u32` LE).
pub const HEADER_LEN: usize = 12;
/// Header length of format v1 in bytes (magic, version, 3 zero bytes).
pub const HEADER_LEN_V1: usize = 8;
/// Nonce length in bytes.
pub const NONCE_LEN: usize = 24;
/// Authentication tag length in bytes.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed chunk of the written format (v2) adds to its plaintext
/// (52); v1 adds less, v3 more (up to [`MAX_OVERHEAD_V3`]).
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// Bytes a v1 sealed chunk adds to its plaintext (48).
pub const OVERHEAD_V1: usize = HEADER_LEN_V1 + NONCE_LEN + TAG_LEN;
/// Largest plaintext one chunk may carry, in bytes (the largest block size).
pub const MAX_PLAINTEXT: usize = crate::config::MAX_BLOCK_SIZE as usize;
/// Largest stored chunk any readable format makes, in bytes: a
/// [`MAX_PLAINTEXT`] block sealed in v3 with the smallest segments
/// ([`MAX_PLAINTEXT`] + [`MAX_OVERHEAD_V3`]). A peer that accepts v3 chunks
/// must accept this much.
pub const MAX_STORED: usize = MAX_PLAINTEXT + MAX_OVERHEAD_V3;

/// A sealed chunk: its stored bytes and their id.
#[derive(Clone)]
pub struct SealedChunk {
    /// BLAKE3 of `bytes`.
    pub id: ChunkId,
    /// The bytes a peer stores: `plaintext.len() + OVERHEAD` long (v2), or
    /// [`SegmentLayout::stored_len`] (v3).
    pub bytes: Vec<u8>,
}

/// What the header of a sealed byte string says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version: [`VERSION_V1`], [`VERSION`], [`VERSION_V3`] or
    /// [`VERSION_V4`].
    pub version: u8,
    /// The key epoch the bytes were sealed under (0 for v1).
    pub epoch: u32,
    /// Header length in bytes (the associated data the AEAD covers before
    /// any extra associated data): 8, 12 or [`HEADER_LEN_V3`].
    pub len: usize,
}

/// Reads the header of sealed bytes (a chunk, a symlink target, an
/// attribute value, a recovery record) without opening them, so the caller
/// can pick the key of its epoch.
///
/// Errors: [`Error::Truncated`] if shorter than the header and tag,
/// [`Error::UnknownFormat`] for a bad magic, version or reserved byte;
/// for v3, [`Error::MalformedHeader`] / [`Error::TooLarge`] for impossible
/// fields (see [`segmented_header`]).
pub fn header(bytes: &[u8]) -> Result<Header, Error> {
    if bytes.len() < OVERHEAD_V1 {
        return Err(Error::Truncated(bytes.len()));
    }
    if &bytes[..4] != MAGIC {
        return Err(Error::UnknownFormat(0));
    }
    if bytes[5..HEADER_LEN_V1] != [0, 0, 0] {
        return Err(Error::UnknownFormat(bytes[4]));
    }
    match bytes[4] {
        VERSION_V1 => Ok(Header { version: VERSION_V1, epoch: 0, len: HEADER_LEN_V1 }),
        VERSION => {
            if bytes.len() < OVERHEAD {
                return Err(Error::Truncated(bytes.len()));
            }
            let epoch = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            Ok(Header { version: VERSION, epoch, len: HEADER_LEN })
        }
        VERSION_V3 | VERSION_V4 => {
            if bytes.len() < HEADER_LEN_V3 + TAG_LEN {
                return Err(Error::Truncated(bytes.len()));
            }
            let h = segmented_header(bytes)?;
            Ok(Header { version: h.version, epoch: h.epoch, len: HEADER_LEN_V3 })
        }
        other => Err(Error::UnknownFormat(other)),
    }
}

/// The key epoch of sealed bytes (see [`header`]).
///
/// Errors: as [`header`].
pub fn epoch_of(bytes: &[u8]) -> Result<u32, Error> {
    Ok(header(bytes)?.epoch)
}

fn header_v2(epoch: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4] = VERSION;
    h[8..].copy_from_slice(&epoch.to_le_bytes());
    h
}

/// Seals `plaintext` (at most [`MAX_PLAINTEXT`] bytes) under `key`, the
/// chunk key of key epoch `epoch`, with a fresh random nonce.
///
/// Errors: [`Error::TooLarge`] above [`MAX_PLAINTEXT`].
pub fn seal(key: &SubKey, epoch: u32, plaintext: &[u8]) -> Result<SealedChunk, Error> {
    let bytes = seal_bytes(key, epoch, plaintext, MAX_PLAINTEXT)?;
    Ok(SealedChunk { id: ChunkId::of(&bytes), bytes })
}

/// Checks that `bytes` hash to `expected`.
///
/// Errors: [`Error::HashMismatch`] naming both hashes.
pub fn verify(expected: &ChunkId, bytes: &[u8]) -> Result<(), Error> {
    let actual = ChunkId::of(bytes);
    if &actual == expected {
        Ok(())
    } else {
        Err(Error::HashMismatch { expected: *expected, actual })
    }
}

/// Verifies `bytes` against `expected`, then decrypts them with `key`
/// (the chunk key of the epoch their header names). Any format: a whole v3
/// chunk decrypts every segment.
///
/// Errors: [`Error::HashMismatch`] if the bytes are not the chunk asked for,
/// then the errors of [`open_bytes`].
pub fn open(key: &SubKey, expected: &ChunkId, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    verify(expected, bytes)?;
    open_bytes(key, bytes)
}

/// Seals any small byte string (a chunk body, a symlink target) in the
/// written format under `key` of key epoch `epoch`; `limit` bounds the
/// plaintext length in bytes.
///
/// Errors: [`Error::TooLarge`].
pub fn seal_bytes(key: &SubKey, epoch: u32, plaintext: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    seal_bytes_ad(key, epoch, plaintext, limit, &[])
}

/// Like [`seal_bytes`], with extra associated data `ad` authenticated after
/// the header (not stored): opening needs the same `ad`. Binds, e.g., an
/// extended-attribute value to its inode and name, or a symlink target to
/// its inode.
///
/// Errors: [`Error::TooLarge`].
pub fn seal_bytes_ad(
    key: &SubKey,
    epoch: u32,
    plaintext: &[u8],
    limit: usize,
    ad: &[u8],
) -> Result<Vec<u8>, Error> {
    seal_with_header(key, &header_v2(epoch), plaintext, limit, ad)
}

/// Seals under an explicit header (v2, or v1 in tests of the old format).
fn seal_with_header(
    key: &SubKey,
    hdr: &[u8],
    plaintext: &[u8],
    limit: usize,
    ad: &[u8],
) -> Result<Vec<u8>, Error> {
    if plaintext.len() > limit {
        return Err(Error::TooLarge { len: plaintext.len(), limit });
    }
    let mut nonce = [0u8; NONCE_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let mut aad = Vec::with_capacity(hdr.len() + ad.len());
    aad.extend_from_slice(hdr);
    aad.extend_from_slice(ad);
    let mut out = Vec::with_capacity(plaintext.len() + hdr.len() + NONCE_LEN + TAG_LEN);
    out.extend_from_slice(hdr);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = aead::seal_detached(
        aead::Cipher::XChaCha20Poly1305,
        key.as_bytes(),
        &nonce,
        &aad,
        &mut out[hdr.len() + NONCE_LEN..],
    )?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Seals in the v1 format (no epoch): what clients wrote before key
/// epochs. Only for tests that check old data still opens.
#[doc(hidden)]
pub fn seal_bytes_v1_for_tests(key: &SubKey, plaintext: &[u8], ad: &[u8]) -> Result<Vec<u8>, Error> {
    let mut hdr = [0u8; HEADER_LEN_V1];
    hdr[..4].copy_from_slice(MAGIC);
    hdr[4] = VERSION_V1;
    seal_with_header(key, &hdr, plaintext, MAX_PLAINTEXT, ad)
}

/// Decrypts bytes made by [`seal_bytes`], [`seal_segmented`] (or a v1
/// sealer) with the same key.
///
/// Errors: [`Error::Truncated`] if shorter than the header and tag,
/// [`Error::UnknownFormat`] for a bad magic or version, [`Error::Decrypt`]
/// for a wrong key or any altered byte; for v3 also the header errors of
/// [`segmented_header`] and [`Error::LengthMismatch`] if the bytes are not
/// as long as the header says.
pub fn open_bytes(key: &SubKey, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    open_bytes_ad(key, bytes, &[])
}

/// Decrypts bytes made by [`seal_bytes_ad`] with the same key and `ad`.
///
/// Errors: as [`open_bytes`]; a different `ad` is [`Error::Decrypt`].
pub fn open_bytes_ad(key: &SubKey, bytes: &[u8], ad: &[u8]) -> Result<Vec<u8>, Error> {
    let h = header(bytes)?;
    if is_segmented(h.version) {
        return segmented::open_segmented(key, bytes, ad);
    }
    let mut aad = Vec::with_capacity(h.len + ad.len());
    aad.extend_from_slice(&bytes[..h.len]);
    aad.extend_from_slice(ad);
    let nonce: &[u8; NONCE_LEN] = bytes[h.len..h.len + NONCE_LEN].try_into().map_err(|_| Error::Decrypt)?;
    let body_end = bytes.len() - TAG_LEN;
    let mut plain = bytes[h.len + NONCE_LEN..body_end].to_vec();
    let tag: &[u8; TAG_LEN] = bytes[body_end..].try_into().map_err(|_| Error::Decrypt)?;
    aead::open_detached(aead::Cipher::XChaCha20Poly1305, key.as_bytes(), nonce, &aad, &mut plain, tag)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::VolumeSecret;
    use proptest::prelude::*;

    const B: usize = crate::config::DEFAULT_BLOCK_SIZE as usize;

    fn key() -> SubKey {
        VolumeSecret::from_bytes([7u8; 32]).chunk_key()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_interesting_sizes() {
        let k = key();
        for len in [0, 1, B - 1, B, B + 1, MAX_PLAINTEXT] {
            let p = pattern(len);
            let s = seal(&k, 3, &p).unwrap();
            assert_eq!(s.bytes.len(), len + OVERHEAD);
            assert_eq!(s.id, ChunkId::of(&s.bytes));
            assert_eq!(open(&k, &s.id, &s.bytes).unwrap(), p);
        }
    }

    #[test]
    fn refuses_plaintext_over_the_limit() {
        assert!(matches!(seal(&key(), 0, &vec![0; MAX_PLAINTEXT + 1]), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn every_tampered_byte_is_detected() {
        let k = key();
        let p = pattern(100);
        let s = seal(&k, 3, &p).unwrap();
        for i in 0..s.bytes.len() {
            let mut bad = s.bytes.clone();
            bad[i] ^= 0x01;
            assert!(matches!(open(&k, &s.id, &bad), Err(Error::HashMismatch { .. })), "byte {i}");
            // Even with the hash check bypassed, authentication catches it.
            assert!(open_bytes(&k, &bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn wrong_key_and_truncation_fail() {
        let s = seal(&key(), 0, b"secret").unwrap();
        let other = VolumeSecret::from_bytes([8u8; 32]).chunk_key();
        assert!(matches!(open(&other, &s.id, &s.bytes), Err(Error::Decrypt)));
        assert!(matches!(open_bytes(&key(), &s.bytes[..10]), Err(Error::Truncated(10))));
    }

    #[test]
    fn bytes_sealed_with_associated_data_open_only_with_the_same_data() {
        let k = key();
        let sealed = seal_bytes_ad(&k, 1, b"value", 64, b"ino 7 name a").unwrap();
        assert_eq!(open_bytes_ad(&k, &sealed, b"ino 7 name a").unwrap(), b"value");
        assert!(matches!(open_bytes_ad(&k, &sealed, b"ino 8 name a"), Err(Error::Decrypt)));
        assert!(matches!(open_bytes(&k, &sealed), Err(Error::Decrypt)));
    }

    #[test]
    fn same_plaintext_seals_to_different_chunks() {
        let a = seal(&key(), 0, b"same").unwrap();
        let b = seal(&key(), 0, b"same").unwrap();
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn ciphertext_does_not_contain_the_plaintext() {
        let marker = b"P2PFS-MARKER-0123456789-P2PFS-MARKER";
        let s = seal(&key(), 0, marker).unwrap();
        assert!(!s.bytes.windows(marker.len()).any(|w| w == marker));
    }

    #[test]
    fn the_header_names_the_epoch_and_is_authenticated() {
        let k = key();
        let s = seal(&k, 7, b"data").unwrap();
        assert_eq!(s.bytes.len(), 4 + OVERHEAD);
        assert_eq!(&s.bytes[..4], MAGIC);
        assert_eq!(s.bytes[4], VERSION);
        assert_eq!(header(&s.bytes).unwrap(), Header { version: VERSION, epoch: 7, len: HEADER_LEN });
        assert_eq!(epoch_of(&s.bytes).unwrap(), 7);
        // Claiming another epoch (with the same key) fails authentication.
        let mut bad = s.bytes.clone();
        bad[8] = 8;
        assert_eq!(epoch_of(&bad).unwrap(), 8);
        assert!(matches!(open_bytes(&k, &bad), Err(Error::Decrypt)));
        // So does dressing it up as v1.
        let mut v1 = s.bytes.clone();
        v1[4] = VERSION_V1;
        assert!(open_bytes(&k, &v1).is_err());
        // Unknown versions and reserved bytes are refused before any key is
        // tried.
        let mut v5 = s.bytes.clone();
        v5[4] = 5;
        assert!(matches!(header(&v5), Err(Error::UnknownFormat(5))));
        // Relabelled as segmented, it does not open either.
        for version in [VERSION_V3, VERSION_V4] {
            let mut segmented = s.bytes.clone();
            segmented[4] = version;
            assert!(open_bytes(&k, &segmented).is_err());
        }
        let mut reserved = s.bytes;
        reserved[6] = 1;
        assert!(matches!(header(&reserved), Err(Error::UnknownFormat(_))));
    }

    #[test]
    fn version_1_bytes_still_open_as_epoch_0() {
        let k = key();
        let old = seal_bytes_v1_for_tests(&k, b"written before epochs", &[]).unwrap();
        assert_eq!(old.len(), 21 + OVERHEAD_V1);
        assert_eq!(header(&old).unwrap(), Header { version: VERSION_V1, epoch: 0, len: HEADER_LEN_V1 });
        assert_eq!(open(&k, &ChunkId::of(&old), &old).unwrap(), b"written before epochs");
        // With associated data, as attribute values were sealed.
        let v = seal_bytes_v1_for_tests(&k, b"value", b"ino 7").unwrap();
        assert_eq!(open_bytes_ad(&k, &v, b"ino 7").unwrap(), b"value");
        assert!(open_bytes_ad(&k, &v, b"ino 8").is_err());
        // A v1 header cut short is truncated, not misread.
        assert!(matches!(header(&old[..40]), Err(Error::Truncated(40))));
        // And a v2 string shorter than its header and tag is too.
        let new = seal_bytes(&k, 1, b"", 0).unwrap();
        assert_eq!(new.len(), OVERHEAD);
        assert!(matches!(header(&new[..50]), Err(Error::Truncated(50))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn round_trips_many_block_files(len in 0usize..(3 * B + 17), seed: u8) {
            // Split a multi-block file into blocks the way the client does and
            // check every block comes back.
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed | 1)).collect();
            let k = key();
            let mut back = Vec::with_capacity(len);
            for block in data.chunks(B) {
                let s = seal(&k, 0, block).unwrap();
                back.extend(open(&k, &s.id, &s.bytes).unwrap());
            }
            prop_assert_eq!(back, data);
        }
    }
}
