//! Sealed-chunk format v3: a block sealed as a run of independently
//! authenticated segments, so one segment can be fetched, verified (see
//! [`super::proof`]) and opened without the rest of the chunk.
//!
//! Layout (all integers little-endian; `docs/FORMATS.md` is the reference):
//!
//! ```text
//! 0      4        5       8          12             16               20                   44
//! | "P2PC" | ver=3 | 0 0 0 | epoch u32 | seg size u32 | plaintext len u32 | nonce base (24 B) |
//!   seg 0 ciphertext ‖ tag (16 B) | seg 1 ciphertext ‖ tag | … | seg n−1 ciphertext ‖ tag
//! ```
//!
//! Segment `k` holds plaintext bytes `[k·S, min((k+1)·S, len))`; every
//! segment but the last is `S` bytes, the last is 1..=S bytes (or 0 bytes
//! when the whole plaintext is empty: one empty segment). Each segment is
//! sealed with XChaCha20-Poly1305 under the chunk key, with the 44-byte
//! header as associated data and the nonce
//!
//! ```text
//! nonce_k = nonce base XOR (0^19 ‖ k as u32 big-endian ‖ last)   (last = 1 for k = n−1, else 0)
//! ```
//!
//! the construction of STREAM (Hoang, Reyhanitabar, Rogaway, Vizár 2015;
//! age's payload format) on top of a random per-chunk nonce: a segment
//! moved to another index, a dropped final segment (its predecessor is not
//! sealed as "last") and a segment from another chunk (another random base)
//! all fail authentication, and the header (version, epoch, segment size,
//! plaintext length) is bound to every segment.

use super::aead;
use super::{MAGIC, MAX_PLAINTEXT, NONCE_LEN, TAG_LEN};
use crate::error::Error;
use crate::ids::ChunkId;
use crate::keys::SubKey;
use std::ops::Range;

use super::SealedChunk;

/// Format version of segmented chunks sealed with XChaCha20-Poly1305
/// (read, no longer written).
pub const VERSION_V3: u8 = 3;
/// Format version of segmented chunks sealed with XAES-256-GCM: the same
/// layout as v3, another AEAD (the one written).
pub const VERSION_V4: u8 = 4;

/// Whether format version `version` is segmented (v3 or v4): its chunks
/// have a [`SegmentedHeader`], segments and an outboard.
pub fn is_segmented(version: u8) -> bool {
    version == VERSION_V3 || version == VERSION_V4
}

/// The AEAD of segmented format `version` (v3 or v4).
fn cipher_of(version: u8) -> aead::Cipher {
    if version == VERSION_V4 {
        aead::Cipher::Xaes256Gcm
    } else {
        aead::Cipher::XChaCha20Poly1305
    }
}
/// Header length of formats v3 and v4 in bytes (magic, version, 3 reserved zero
/// bytes, epoch, segment size, plaintext length, nonce base).
pub const HEADER_LEN_V3: usize = 44;
/// Plaintext bytes per segment that [`seal_segmented`] uses (64 KiB, as
/// age's STREAM): a random 4 KiB read then fetches and decrypts at most
/// 64 KiB + 16 B of a chunk instead of the whole block.
pub const SEGMENT_SIZE: u32 = 64 * 1024;
/// Smallest segment size a v3 header may name (4 KiB, a page). Segment
/// sizes are powers of two in [`MIN_SEGMENT_SIZE`, [`MAX_PLAINTEXT`]].
pub const MIN_SEGMENT_SIZE: u32 = 4 * 1024;
/// Most bytes a v3 chunk adds to its plaintext: the header and one tag per
/// segment at the smallest segment size (44 + 16 · 1024 = 16,428 bytes
/// for a [`MAX_PLAINTEXT`] block). At [`SEGMENT_SIZE`] a 1 MiB block
/// gains 44 + 16 · 16 = 300 bytes.
pub const MAX_OVERHEAD_V3: usize = HEADER_LEN_V3 + TAG_LEN * (MAX_PLAINTEXT / MIN_SEGMENT_SIZE as usize);

/// How a segmented chunk's plaintext is cut into segments, and where each
/// segment sits in the stored bytes. Everything is computable from the two
/// fields, so a reader that knows them (from the header, or from the
/// stored length its layout entry names and the segment size) can ask for
/// any segment's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentLayout {
    segment_size: u32,
    plaintext_len: u32,
}

impl SegmentLayout {
    /// The layout of `plaintext_len` bytes in segments of `segment_size`
    /// bytes.
    ///
    /// Errors: [`Error::MalformedHeader`] if `segment_size` is not a power
    /// of two in [`MIN_SEGMENT_SIZE`, [`MAX_PLAINTEXT`]];
    /// [`Error::TooLarge`] if `plaintext_len` is over [`MAX_PLAINTEXT`].
    pub fn new(segment_size: u32, plaintext_len: u64) -> Result<Self, Error> {
        if !segment_size.is_power_of_two()
            || segment_size < MIN_SEGMENT_SIZE
            || segment_size as usize > MAX_PLAINTEXT
        {
            return Err(Error::MalformedHeader(format!(
                "segment size {segment_size} is not a power of two in [{MIN_SEGMENT_SIZE}, {MAX_PLAINTEXT}]"
            )));
        }
        if plaintext_len > MAX_PLAINTEXT as u64 {
            return Err(Error::TooLarge { len: plaintext_len as usize, limit: MAX_PLAINTEXT });
        }
        Ok(Self { segment_size, plaintext_len: plaintext_len as u32 })
    }

    /// The layout of a chunk of `stored_len` bytes (as its layout entry
    /// says) sealed with segments of `segment_size` bytes: the inverse of
    /// [`SegmentLayout::stored_len`]. Lets a reader that holds only the
    /// chunk id and the entry compute which stored bytes to ask for.
    ///
    /// Errors: as [`SegmentLayout::new`]; [`Error::LengthMismatch`] if no
    /// plaintext length seals to `stored_len` bytes.
    pub fn from_stored_len(stored_len: u64, segment_size: u32) -> Result<Self, Error> {
        let probe = Self::new(segment_size, 0)?;
        let min = probe.stored_len();
        let body = stored_len.checked_sub(HEADER_LEN_V3 as u64).filter(|_| stored_len >= min);
        let Some(body) = body else {
            return Err(Error::LengthMismatch { expected: min, actual: stored_len });
        };
        let step = segment_size as u64 + TAG_LEN as u64;
        let (full, rem) = (body / step, body % step);
        let plaintext_len = match rem {
            0 => full * segment_size as u64,
            // Only an empty plaintext has a segment of bare tag.
            r if r > TAG_LEN as u64 || (r == TAG_LEN as u64 && full == 0) => {
                full * segment_size as u64 + r - TAG_LEN as u64
            }
            // The nearest valid length below: the full segments alone.
            _ => {
                let expected = (HEADER_LEN_V3 as u64 + full * step).max(min);
                return Err(Error::LengthMismatch { expected, actual: stored_len });
            }
        };
        Self::new(segment_size, plaintext_len)
    }

    /// Plaintext bytes per segment (all but the last segment hold exactly
    /// this many).
    pub fn segment_size(&self) -> u32 {
        self.segment_size
    }

    /// Plaintext length of the whole chunk in bytes.
    pub fn plaintext_len(&self) -> u32 {
        self.plaintext_len
    }

    /// Number of segments: ⌈plaintext length / segment size⌉, and 1 for an
    /// empty plaintext.
    pub fn segments(&self) -> u32 {
        self.plaintext_len.div_ceil(self.segment_size).max(1)
    }

    /// Length in bytes of the whole stored chunk: header, plaintext and one
    /// tag per segment.
    pub fn stored_len(&self) -> u64 {
        HEADER_LEN_V3 as u64 + self.plaintext_len as u64 + TAG_LEN as u64 * self.segments() as u64
    }

    /// Plaintext bytes `[start, end)` that segment `k` holds, as offsets
    /// in the block.
    ///
    /// Errors: [`Error::NoSuchSegment`] for `k ≥` [`SegmentLayout::segments`].
    pub fn plaintext_range(&self, k: u32) -> Result<Range<u64>, Error> {
        self.check_index(k)?;
        let start = k as u64 * self.segment_size as u64;
        let end = (start + self.segment_size as u64).min(self.plaintext_len as u64);
        Ok(start..end)
    }

    /// Stored bytes `[start, end)` of segment `k` (its ciphertext and tag),
    /// as offsets in the stored chunk: `start = 44 + k · (S + 16)`.
    ///
    /// Errors: [`Error::NoSuchSegment`] for `k ≥` [`SegmentLayout::segments`].
    pub fn segment_range(&self, k: u32) -> Result<Range<u64>, Error> {
        let plain = self.plaintext_range(k)?;
        let start = HEADER_LEN_V3 as u64 + k as u64 * (self.segment_size as u64 + TAG_LEN as u64);
        Ok(start..start + (plain.end - plain.start) + TAG_LEN as u64)
    }

    /// The segments `first..last + 1` that hold the plaintext bytes
    /// `range` (offsets in the block): what a reader of those bytes fetches.
    ///
    /// Errors: [`Error::BadRange`] if `range` is empty or reaches past the
    /// plaintext.
    pub fn segments_for(&self, range: Range<u64>) -> Result<Range<u32>, Error> {
        if range.start >= range.end || range.end > self.plaintext_len as u64 {
            return Err(Error::BadRange {
                start: range.start,
                end: range.end,
                len: self.plaintext_len as u64,
            });
        }
        let s = self.segment_size as u64;
        Ok((range.start / s) as u32..range.end.div_ceil(s) as u32)
    }

    fn check_index(&self, k: u32) -> Result<(), Error> {
        let segments = self.segments();
        if k >= segments {
            return Err(Error::NoSuchSegment { index: k, segments });
        }
        Ok(())
    }
}

/// The parsed header of a segmented (v3 or v4) chunk: what a reader needs
/// to open any of its segments (with the chunk key of `epoch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentedHeader {
    /// Format version: [`VERSION_V3`] (XChaCha20-Poly1305) or
    /// [`VERSION_V4`] (XAES-256-GCM).
    pub version: u8,
    /// Key epoch the chunk was sealed under.
    pub epoch: u32,
    /// Segment size and plaintext length, hence every segment's place.
    pub layout: SegmentLayout,
    /// Random per-chunk nonce base; segment `k`'s nonce mixes in `k` and
    /// the last-segment flag.
    pub nonce: [u8; NONCE_LEN],
}

impl SegmentedHeader {
    /// The 44 header bytes, exactly as stored (and authenticated as every
    /// segment's associated data).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN_V3] {
        let mut h = [0u8; HEADER_LEN_V3];
        h[..4].copy_from_slice(MAGIC);
        h[4] = self.version;
        h[8..12].copy_from_slice(&self.epoch.to_le_bytes());
        h[12..16].copy_from_slice(&self.layout.segment_size.to_le_bytes());
        h[16..20].copy_from_slice(&self.layout.plaintext_len.to_le_bytes());
        h[20..].copy_from_slice(&self.nonce);
        h
    }

    /// The 192-bit AEAD nonce of segment `k` (see the module docs).
    fn segment_nonce(&self, k: u32) -> [u8; NONCE_LEN] {
        let mut n = self.nonce;
        for (b, x) in n[19..23].iter_mut().zip(k.to_be_bytes()) {
            *b ^= x;
        }
        n[23] ^= u8::from(k + 1 == self.layout.segments());
        n
    }
}

/// Parses the header at the start of a segmented chunk. Only the first
/// [`HEADER_LEN_V3`] bytes are read, so this works on the header alone (as
/// returned with a segment's range proof).
///
/// Errors: [`Error::Truncated`] below [`HEADER_LEN_V3`] bytes;
/// [`Error::UnknownFormat`] for a bad magic, a non-zero reserved byte or a
/// version other than 3 or 4 (v1 and v2 chunks have no segments);
/// [`Error::MalformedHeader`] / [`Error::TooLarge`] for impossible fields
/// (see [`SegmentLayout::new`]).
pub fn segmented_header(bytes: &[u8]) -> Result<SegmentedHeader, Error> {
    if bytes.len() < HEADER_LEN_V3 {
        return Err(Error::Truncated(bytes.len()));
    }
    if &bytes[..4] != MAGIC {
        return Err(Error::UnknownFormat(0));
    }
    if !is_segmented(bytes[4]) || bytes[5..8] != [0, 0, 0] {
        return Err(Error::UnknownFormat(bytes[4]));
    }
    let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let layout = SegmentLayout::new(word(12), word(16) as u64)?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[20..HEADER_LEN_V3]);
    Ok(SegmentedHeader { version: bytes[4], epoch: word(8), layout, nonce })
}

/// Seals `plaintext` (at most [`MAX_PLAINTEXT`] bytes) as a segmented (v4,
/// XAES-256-GCM) chunk of [`SEGMENT_SIZE`] segments under `key`, the chunk key of key
/// epoch `epoch`, with a fresh random nonce base. The id is BLAKE3 of all
/// stored bytes, as for v2 (and equals the root of [`super::outboard`]).
///
/// Errors: [`Error::TooLarge`] above [`MAX_PLAINTEXT`].
pub fn seal_segmented(key: &SubKey, epoch: u32, plaintext: &[u8]) -> Result<SealedChunk, Error> {
    seal_segmented_with(key, epoch, plaintext, SEGMENT_SIZE)
}

/// [`seal_segmented`] with another segment size in bytes (a power of two
/// in [`MIN_SEGMENT_SIZE`, [`MAX_PLAINTEXT`]]; the header records it).
///
/// Errors: [`Error::TooLarge`] above [`MAX_PLAINTEXT`];
/// [`Error::MalformedHeader`] for a segment size outside the rule.
pub fn seal_segmented_with(
    key: &SubKey,
    epoch: u32,
    plaintext: &[u8],
    segment_size: u32,
) -> Result<SealedChunk, Error> {
    seal_segmented_as(VERSION_V4, key, epoch, plaintext, segment_size)
}

/// Seals in the v3 format (XChaCha20-Poly1305): what clients wrote before
/// v4. Only for tests that check old data still opens.
///
/// Errors: as [`seal_segmented_with`].
#[doc(hidden)]
pub fn seal_segmented_v3_for_tests(
    key: &SubKey,
    epoch: u32,
    plaintext: &[u8],
    segment_size: u32,
) -> Result<SealedChunk, Error> {
    seal_segmented_as(VERSION_V3, key, epoch, plaintext, segment_size)
}

fn seal_segmented_as(
    version: u8,
    key: &SubKey,
    epoch: u32,
    plaintext: &[u8],
    segment_size: u32,
) -> Result<SealedChunk, Error> {
    let layout = SegmentLayout::new(segment_size, plaintext.len() as u64)?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let header = SegmentedHeader { version, epoch, layout, nonce };
    // One derived key for every segment: their nonces share its head.
    let sealer = cipher_of(version).derive(key.as_bytes(), &nonce);
    let hdr = header.to_bytes();
    let mut out = Vec::with_capacity(layout.stored_len() as usize);
    out.extend_from_slice(&hdr);
    for k in 0..layout.segments() {
        let plain = layout.plaintext_range(k)?;
        let at = out.len();
        out.extend_from_slice(&plaintext[plain.start as usize..plain.end as usize]);
        let tag = sealer.seal(&header.segment_nonce(k), &hdr, &mut out[at..])?;
        out.extend_from_slice(&tag);
    }
    Ok(SealedChunk { id: ChunkId::of(&out), bytes: out })
}

/// Decrypts one segment of a segmented chunk: `stored` is segment `k`'s
/// stored bytes ([`SegmentLayout::segment_range`] of the chunk, ciphertext
/// and tag), `header` the chunk's header, `key` the chunk key of
/// `header.epoch`. Returns the segment's plaintext
/// ([`SegmentLayout::plaintext_range`] of the block).
///
/// Authentication covers the header, the index `k` and whether `k` is the
/// last segment, so a segment of another chunk or index does not open.
/// Verify the bytes against the chunk id first (a range proof: see
/// [`super::verify_segment_proof`]); this call alone does not.
///
/// Errors: [`Error::NoSuchSegment`]; [`Error::LengthMismatch`] if `stored`
/// is not that segment's length; [`Error::Decrypt`] for a wrong key or any
/// altered byte.
pub fn open_segment(key: &SubKey, header: &SegmentedHeader, k: u32, stored: &[u8]) -> Result<Vec<u8>, Error> {
    open_segment_ad(key, header, &header.to_bytes(), k, stored)
}

/// Opens segment `k` with `aad` (the header bytes, then any extra
/// associated data) as associated data.
fn open_segment_ad(
    key: &SubKey,
    header: &SegmentedHeader,
    aad: &[u8],
    k: u32,
    stored: &[u8],
) -> Result<Vec<u8>, Error> {
    let range = header.layout.segment_range(k)?;
    let expected = range.end - range.start;
    if stored.len() as u64 != expected {
        return Err(Error::LengthMismatch { expected, actual: stored.len() as u64 });
    }
    let body = stored.len() - TAG_LEN;
    let mut plain = stored[..body].to_vec();
    let tag: &[u8; TAG_LEN] = stored[body..].try_into().map_err(|_| Error::Decrypt)?;
    aead::open_detached(
        cipher_of(header.version),
        key.as_bytes(),
        &header.segment_nonce(k),
        aad,
        &mut plain,
        tag,
    )?;
    Ok(plain)
}

/// Decrypts every segment of a whole segmented chunk (what
/// [`super::open_bytes_ad`] does for v3), with `ad` authenticated after the
/// header.
///
/// Errors: as [`segmented_header`]; [`Error::LengthMismatch`] if `bytes` are
/// not as long as the header says; [`Error::Decrypt`].
pub(super) fn open_segmented(key: &SubKey, bytes: &[u8], ad: &[u8]) -> Result<Vec<u8>, Error> {
    let header = segmented_header(bytes)?;
    let layout = header.layout;
    if bytes.len() as u64 != layout.stored_len() {
        return Err(Error::LengthMismatch { expected: layout.stored_len(), actual: bytes.len() as u64 });
    }
    let mut aad = Vec::with_capacity(HEADER_LEN_V3 + ad.len());
    aad.extend_from_slice(&bytes[..HEADER_LEN_V3]);
    aad.extend_from_slice(ad);
    let opener = cipher_of(header.version).derive(key.as_bytes(), &header.nonce);
    let mut plain = Vec::with_capacity(layout.plaintext_len() as usize);
    for k in 0..layout.segments() {
        let r = layout.segment_range(k)?;
        let (start, end) = (r.start as usize, r.end as usize);
        let at = plain.len();
        plain.extend_from_slice(&bytes[start..end - TAG_LEN]);
        let tag: &[u8; TAG_LEN] = bytes[end - TAG_LEN..end].try_into().map_err(|_| Error::Decrypt)?;
        opener.open(&header.segment_nonce(k), &aad, &mut plain[at..], tag)?;
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{header, open, open_bytes, Header};
    use crate::keys::VolumeSecret;
    use proptest::prelude::*;

    const S: usize = SEGMENT_SIZE as usize;
    const SMALL: u32 = MIN_SEGMENT_SIZE;

    fn key() -> SubKey {
        VolumeSecret::from_bytes([7u8; 32]).chunk_key()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    /// Opens every segment of `bytes` one by one and joins the plaintexts.
    fn open_each_segment(k: &SubKey, bytes: &[u8]) -> Vec<u8> {
        let h = segmented_header(bytes).unwrap();
        let mut out = Vec::new();
        for i in 0..h.layout.segments() {
            let r = h.layout.segment_range(i).unwrap();
            out.extend(open_segment(k, &h, i, &bytes[r.start as usize..r.end as usize]).unwrap());
        }
        out
    }

    #[test]
    fn round_trips_at_interesting_sizes() {
        let k = key();
        for len in [0, 1, S - 1, S, S + 1, 1 << 20, MAX_PLAINTEXT] {
            let p = pattern(len);
            let s = seal_segmented(&k, 5, &p).unwrap();
            let h = segmented_header(&s.bytes).unwrap();
            assert_eq!(h.epoch, 5);
            assert_eq!(h.layout, SegmentLayout::new(SEGMENT_SIZE, len as u64).unwrap());
            assert_eq!(h.layout.segments() as usize, len.div_ceil(S).max(1), "len {len}");
            assert_eq!(s.bytes.len() as u64, h.layout.stored_len());
            assert_eq!(s.bytes.len(), len + HEADER_LEN_V3 + TAG_LEN * h.layout.segments() as usize);
            assert_eq!(SegmentLayout::from_stored_len(s.bytes.len() as u64, SEGMENT_SIZE).unwrap(), h.layout);
            assert_eq!(
                header(&s.bytes).unwrap(),
                Header { version: VERSION_V4, epoch: 5, len: HEADER_LEN_V3 }
            );
            assert_eq!(s.id, ChunkId::of(&s.bytes));
            assert_eq!(open(&k, &s.id, &s.bytes).unwrap(), p, "len {len}");
            assert_eq!(open_each_segment(&k, &s.bytes), p, "len {len}");
        }
        // A 1 MiB block costs 300 bytes more than its plaintext.
        assert_eq!(seal_segmented(&k, 0, &pattern(1 << 20)).unwrap().bytes.len(), (1 << 20) + 300);
    }

    #[test]
    fn segment_ranges_tile_the_stored_bytes() {
        for len in [0u64, 1, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 5] {
            let l = SegmentLayout::new(SMALL, len).unwrap();
            let mut at = HEADER_LEN_V3 as u64;
            let mut plain_at = 0;
            for k in 0..l.segments() {
                let r = l.segment_range(k).unwrap();
                let p = l.plaintext_range(k).unwrap();
                assert_eq!((r.start, p.start), (at, plain_at));
                assert_eq!(r.end - r.start, p.end - p.start + TAG_LEN as u64);
                if !p.is_empty() {
                    assert_eq!(l.segments_for(p.clone()).unwrap(), k..k + 1);
                }
                at = r.end;
                plain_at = p.end;
            }
            assert_eq!((at, plain_at), (l.stored_len(), len));
            assert!(matches!(l.segment_range(l.segments()), Err(Error::NoSuchSegment { .. })));
        }
        let l = SegmentLayout::new(SMALL, 10_000).unwrap();
        assert_eq!(l.segments_for(4095..4097).unwrap(), 0..2);
        assert_eq!(l.segments_for(0..10_000).unwrap(), 0..3);
        assert!(matches!(l.segments_for(5..5), Err(Error::BadRange { .. })));
        assert!(matches!(l.segments_for(9_000..10_001), Err(Error::BadRange { .. })));
    }

    #[test]
    fn stored_lengths_that_no_plaintext_seals_to_are_refused() {
        // Every length from the smallest chunk to three segments and a bit:
        // either it is some plaintext's stored length, or it is refused.
        let step = SMALL as u64 + TAG_LEN as u64;
        let mut valid = 0;
        for stored in 0..HEADER_LEN_V3 as u64 + 3 * step + 100 {
            match SegmentLayout::from_stored_len(stored, SMALL) {
                Ok(l) => {
                    assert_eq!(l.stored_len(), stored);
                    valid += 1;
                }
                Err(Error::LengthMismatch { actual, .. }) => assert_eq!(actual, stored),
                Err(e) => panic!("{stored}: {e}"),
            }
        }
        // Plaintexts 0..=3·4096 + 83 each have exactly one stored length.
        assert_eq!(valid, 3 * SMALL as u64 + 84);
        assert!(matches!(SegmentLayout::from_stored_len(1 << 20, 3000), Err(Error::MalformedHeader(_))));
        let over = SegmentLayout::new(SMALL, MAX_PLAINTEXT as u64).unwrap().stored_len() + step;
        assert!(matches!(SegmentLayout::from_stored_len(over, SMALL), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn refuses_bad_sizes() {
        let k = key();
        assert!(matches!(seal_segmented(&k, 0, &vec![0; MAX_PLAINTEXT + 1]), Err(Error::TooLarge { .. })));
        for bad in [0, 1, 2048, 4097, 3 << 12, (MAX_PLAINTEXT as u32) * 2] {
            assert!(matches!(seal_segmented_with(&k, 0, b"x", bad), Err(Error::MalformedHeader(_))), "{bad}");
        }
        // Any power of two in range works, the largest giving one segment.
        let s = seal_segmented_with(&k, 0, &pattern(5000), MAX_PLAINTEXT as u32).unwrap();
        assert_eq!(segmented_header(&s.bytes).unwrap().layout.segments(), 1);
        assert_eq!(open_bytes(&k, &s.bytes).unwrap(), pattern(5000));
    }

    /// v3 chunks (XChaCha20-Poly1305), written before v4, still open whole
    /// and segment by segment; a chunk relabelled as the other version
    /// (its header is every segment's associated data) opens as neither.
    #[test]
    fn v3_chunks_still_open_and_a_relabelled_chunk_does_not() {
        let k = key();
        for len in [0, 1, 5000, S, 3 * S + 17] {
            let p = pattern(len);
            let v3 = seal_segmented_v3_for_tests(&k, 2, &p, SEGMENT_SIZE).unwrap();
            assert_eq!(segmented_header(&v3.bytes).unwrap().version, VERSION_V3);
            assert_eq!(
                header(&v3.bytes).unwrap(),
                Header { version: VERSION_V3, epoch: 2, len: HEADER_LEN_V3 }
            );
            assert_eq!(open(&k, &v3.id, &v3.bytes).unwrap(), p, "len {len}");
            assert_eq!(open_each_segment(&k, &v3.bytes), p, "len {len}");
            let v4 = seal_segmented(&k, 2, &p).unwrap();
            for (mut bytes, to) in [(v3.bytes, VERSION_V4), (v4.bytes, VERSION_V3)] {
                bytes[4] = to;
                assert!(matches!(open_bytes(&k, &bytes), Err(Error::Decrypt)), "len {len} as v{to}");
            }
        }
    }

    #[test]
    fn malformed_headers_are_refused_before_any_key_is_tried() {
        let s = seal_segmented_with(&key(), 1, &pattern(9000), SMALL).unwrap();
        let with = |at: usize, v: &[u8]| {
            let mut b = s.bytes.clone();
            b[at..at + v.len()].copy_from_slice(v);
            b
        };
        assert!(matches!(segmented_header(&s.bytes[..43]), Err(Error::Truncated(43))));
        assert!(matches!(header(&s.bytes[..59]), Err(Error::Truncated(59))));
        assert!(matches!(segmented_header(&with(0, b"P2PX")), Err(Error::UnknownFormat(0))));
        assert!(matches!(segmented_header(&with(5, &[1])), Err(Error::UnknownFormat(VERSION_V4))));
        assert!(matches!(segmented_header(&with(4, &[5])), Err(Error::UnknownFormat(5))));
        assert!(matches!(segmented_header(&with(4, &[2])), Err(Error::UnknownFormat(2))));
        for seg in [0u32, 1000, 1 << 23] {
            let b = with(12, &seg.to_le_bytes());
            assert!(matches!(header(&b), Err(Error::MalformedHeader(_))), "{seg}");
            assert!(matches!(open_bytes(&key(), &b), Err(Error::MalformedHeader(_))), "{seg}");
        }
        let b = with(16, &(MAX_PLAINTEXT as u32 + 1).to_le_bytes());
        assert!(matches!(segmented_header(&b), Err(Error::TooLarge { .. })));
        // A consistent header whose length disagrees with the bytes.
        let b = with(16, &9001u32.to_le_bytes());
        assert!(matches!(open_bytes(&key(), &b), Err(Error::LengthMismatch { expected, actual })
            if expected == s.bytes.len() as u64 + 1 && actual == s.bytes.len() as u64));
    }

    #[test]
    fn every_single_bit_flip_fails_to_open() {
        // A full 4 KiB segment and a short last one: every bit of header,
        // ciphertexts and tags (4,256 bytes; ~5 s in a debug build).
        let k = key();
        let p = pattern(SMALL as usize + 100);
        let s = seal_segmented_with(&k, 9, &p, SMALL).unwrap();
        assert_eq!(open_bytes(&k, &s.bytes).unwrap(), p);
        let h = segmented_header(&s.bytes).unwrap();
        let mut bad = s.bytes.clone();
        for i in 0..bad.len() {
            for bit in 0..8 {
                bad[i] ^= 1 << bit;
                assert!(
                    matches!(open(&k, &s.id, &bad), Err(Error::HashMismatch { .. })),
                    "byte {i} bit {bit}"
                );
                // Authentication alone catches it too, whatever the layer.
                assert!(open_bytes(&k, &bad).is_err(), "byte {i} bit {bit}");
                // And so does opening just the segment that holds it (with
                // the header as it reads after the flip).
                if let Ok(hb) = segmented_header(&bad) {
                    let seg = (0..h.layout.segments())
                        .find(|&j| h.layout.segment_range(j).unwrap().end > i as u64)
                        .unwrap_or(0);
                    if let Ok(r) = hb.layout.segment_range(seg) {
                        let r = r.start as usize..(r.end as usize).min(bad.len());
                        assert!(open_segment(&k, &hb, seg, &bad[r]).is_err(), "byte {i} bit {bit}");
                    }
                }
                bad[i] ^= 1 << bit;
            }
        }
    }

    #[test]
    fn reordered_dropped_truncated_or_foreign_segments_fail() {
        let k = key();
        let seg = SMALL as usize;
        let p = pattern(4 * seg + 10);
        let s = seal_segmented_with(&k, 0, &p, SMALL).unwrap();
        let h = segmented_header(&s.bytes).unwrap();
        let range = |j: u32| {
            let r = h.layout.segment_range(j).unwrap();
            r.start as usize..r.end as usize
        };
        let (r0, r1, r3, r4) = (range(0), range(1), range(3), range(4));

        // Swapped segments 0 and 1 (same length).
        let mut swapped = s.bytes.clone();
        swapped[r0.clone()].copy_from_slice(&s.bytes[r1.clone()]);
        swapped[r1.clone()].copy_from_slice(&s.bytes[r0.clone()]);
        assert!(matches!(open_bytes(&k, &swapped), Err(Error::Decrypt)));
        assert!(matches!(open_segment(&k, &h, 0, &s.bytes[r1.clone()]), Err(Error::Decrypt)));

        // Segment 1 dropped: the length no longer matches the header; with
        // the header's length patched to match, the header fails instead.
        let mut dropped = s.bytes[..r1.start].to_vec();
        dropped.extend_from_slice(&s.bytes[r1.end..]);
        assert!(matches!(open_bytes(&k, &dropped), Err(Error::LengthMismatch { .. })));
        dropped[16..20].copy_from_slice(&(3 * seg as u32 + 10).to_le_bytes());
        assert!(matches!(open_bytes(&k, &dropped), Err(Error::Decrypt)));

        // Truncated at a segment boundary (the short last segment gone),
        // with or without the header patched.
        let mut cut = s.bytes[..r4.start].to_vec();
        assert!(matches!(open_bytes(&k, &cut), Err(Error::LengthMismatch { .. })));
        cut[16..20].copy_from_slice(&(4 * seg as u32).to_le_bytes());
        assert!(matches!(open_bytes(&k, &cut), Err(Error::Decrypt)));
        // Even under a header whose length says four segments (so segment 3
        // is now "last"), segment 3 — sealed as not last — does not open.
        let mut four = h;
        four.layout = SegmentLayout::new(SMALL, 4 * seg as u64).unwrap();
        assert!(matches!(open_segment(&k, &four, 3, &s.bytes[r3.clone()]), Err(Error::Decrypt)));
        // The last segment does not open at another index either.
        let mut last_as_first = s.bytes[r4.clone()].to_vec();
        last_as_first.resize(seg + TAG_LEN, 0);
        assert!(matches!(open_segment(&k, &h, 0, &last_as_first), Err(Error::Decrypt)));
        // Cut inside a segment.
        assert!(matches!(open_bytes(&k, &s.bytes[..s.bytes.len() - 1]), Err(Error::LengthMismatch { .. })));

        // A segment of another chunk with the same layout and key.
        let other = seal_segmented_with(&k, 0, &p, SMALL).unwrap();
        let mut mixed = s.bytes.clone();
        mixed[r1.clone()].copy_from_slice(&other.bytes[r1.clone()]);
        assert!(matches!(open_bytes(&k, &mixed), Err(Error::Decrypt)));

        // Wrong length, index or key for one segment.
        assert!(matches!(
            open_segment(&k, &h, 1, &s.bytes[r1.start..r1.end - 1]),
            Err(Error::LengthMismatch { .. })
        ));
        assert!(matches!(
            open_segment(&k, &h, 5, &s.bytes[r1.clone()]),
            Err(Error::NoSuchSegment { index: 5, segments: 5 })
        ));
        let other_key = VolumeSecret::from_bytes([8u8; 32]).chunk_key();
        assert!(matches!(open_segment(&other_key, &h, 1, &s.bytes[r1]), Err(Error::Decrypt)));
        assert!(matches!(open_bytes(&other_key, &s.bytes), Err(Error::Decrypt)));
    }

    #[test]
    fn the_header_is_authenticated_by_every_segment() {
        let k = key();
        let s = seal_segmented_with(&k, 4, &pattern(3 * SMALL as usize), SMALL).unwrap();
        let h = segmented_header(&s.bytes).unwrap();
        let mut other_epoch = h;
        other_epoch.epoch = 5;
        for j in 0..3 {
            let r = h.layout.segment_range(j).unwrap();
            let stored = &s.bytes[r.start as usize..r.end as usize];
            assert!(open_segment(&k, &h, j, stored).is_ok());
            assert!(matches!(open_segment(&k, &other_epoch, j, stored), Err(Error::Decrypt)));
        }
        // Extra associated data the chunk was not sealed with fails.
        assert!(matches!(super::open_segmented(&k, &s.bytes, b"ino 7"), Err(Error::Decrypt)));
    }

    #[test]
    fn ciphertext_does_not_contain_the_plaintext_and_seals_differ() {
        let marker = b"P2PFS-MARKER-0123456789-P2PFS-MARKER";
        let mut p = pattern(3 * SMALL as usize);
        p[SMALL as usize - 10..SMALL as usize - 10 + marker.len()].copy_from_slice(marker);
        let a = seal_segmented_with(&key(), 0, &p, SMALL).unwrap();
        let b = seal_segmented_with(&key(), 0, &p, SMALL).unwrap();
        assert!(!a.bytes.windows(marker.len()).any(|w| w == marker));
        assert_ne!(a.id, b.id);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn round_trips(len in 0usize..(3 * S + 17), seed: u8, log in 12u32..17, epoch: u32) {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed | 1)).collect();
            let k = key();
            let s = seal_segmented_with(&k, epoch, &data, 1 << log).unwrap();
            prop_assert_eq!(segmented_header(&s.bytes).unwrap().epoch, epoch);
            prop_assert_eq!(&open(&k, &s.id, &s.bytes).unwrap(), &data);
            prop_assert_eq!(open_each_segment(&k, &s.bytes), data);
        }
    }
}
