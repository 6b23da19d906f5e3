//! Verified range reads of stored chunks: BLAKE3 outboards and range
//! proofs (bao-tree), so a reader that holds only a [`ChunkId`] can check
//! a few stored bytes of a chunk without fetching all of it.
//!
//! A [`ChunkId`] is BLAKE3 of the stored bytes, and BLAKE3 is a Merkle
//! tree over 1 KiB chunks: the id *is* the tree's root, so no id changes.
//! The holder of the stored bytes keeps (or recomputes) an *outboard*: the
//! tree's inner hashes down to groups of 16 chunks (16 KiB), 64 bytes per
//! inner node. From bytes and outboard it encodes a *proof* for a byte
//! range: the hashes on the path from the root to the range interleaved
//! with the range's bytes (rounded out to whole 1 KiB chunks), in
//! pre-order, as bao-tree's `encode_ranges_validated` writes them for a
//! tree of the chunk's stored length with 16 KiB chunk groups, without a
//! length prefix. The reader decodes it against the id and the stored
//! length it already trusts (the layout entry's, covered by its MAC): the
//! root hash alone does not bind the length for ranges away from the end.
//! `docs/FORMATS.md` ("Range proofs") has the format.
//!
//! For segmented (v3) chunks, [`encode_segment_proof`] proves the header
//! and one segment together, so one answer is enough to open that segment.

use super::segmented::{segmented_header, SegmentLayout, SegmentedHeader, HEADER_LEN_V3};
use super::{open_segment, SubKey, MAX_STORED};
use crate::error::Error;
use crate::ids::ChunkId;
use bao_tree::io::outboard::PreOrderMemOutboard;
use bao_tree::io::sync::{encode_ranges_validated, DecodeResponseIter};
use bao_tree::io::{round_up_to_chunks, BaoContentItem, Leaf};
use bao_tree::{BaoTree, BlockSize, ByteRanges};
use std::ops::Range;

/// Bytes of stored data per outboard leaf (a bao-tree chunk group of 16
/// BLAKE3 chunks). Smaller groups mean a larger outboard and smaller
/// proofs; 16 KiB keeps the outboard of a 1 MiB chunk at 4 KiB (0.4%).
pub const OUTBOARD_GROUP_BYTES: usize = 16 * 1024;

/// [`OUTBOARD_GROUP_BYTES`] as bao-tree's block size (2⁴ chunks).
const GROUP: BlockSize = BlockSize::from_chunk_log(4);

/// Length in bytes of the outboard of `stored_len` stored bytes: 64 bytes
/// per inner node, (⌈stored_len / 16 KiB⌉ − 1) · 64 (0 for up to 16 KiB).
pub fn outboard_len(stored_len: u64) -> u64 {
    BaoTree::new(stored_len, GROUP).outboard_size()
}

/// The outboard of a chunk's stored bytes (any format): its BLAKE3 tree's
/// inner hash pairs (left ‖ right, 32 bytes each) in pre-order, down to
/// 16 KiB groups, without a length prefix; [`outboard_len`] bytes long.
/// Computed by the holder of the bytes (peerd), about as costly as hashing
/// them; its root is the chunk's [`ChunkId`].
pub fn outboard(stored: &[u8]) -> Vec<u8> {
    PreOrderMemOutboard::create(stored, GROUP).data
}

/// [`outboard`] and the tree's root, which for any bytes is their
/// [`ChunkId`] (BLAKE3 of them): a holder that needs both verifies the id
/// and makes the outboard in one pass.
pub fn outboard_with_root(stored: &[u8]) -> (ChunkId, Vec<u8>) {
    let ob = PreOrderMemOutboard::create(stored, GROUP);
    (ChunkId(*ob.root.as_bytes()), ob.data)
}

/// Encodes the proof of stored bytes `range` of the chunk `id` from its
/// stored bytes and [`outboard`]: the hashes a reader needs and the bytes of
/// the range, rounded out to whole 1 KiB BLAKE3 chunks (format in the
/// module docs). Bytes and outboard are checked against `id` on the way, so
/// a holder never serves a proof of corrupt data.
///
/// Errors: [`Error::BadRange`] if `range` is empty or past the end;
/// [`Error::HashMismatch`] if `stored` does not hash to `id`;
/// [`Error::OutboardMismatch`] if the bytes are right but the outboard is
/// not theirs.
pub fn encode_range_proof(
    id: &ChunkId,
    stored: &[u8],
    outboard: &[u8],
    range: Range<u64>,
) -> Result<Vec<u8>, Error> {
    check_range(&range, stored.len() as u64)?;
    encode(id, stored, outboard, &[range])
}

/// Verifies a proof made by [`encode_range_proof`] for stored bytes
/// `range` of the chunk `id`, which is `stored_len` bytes long (from a
/// source the reader trusts: the layout entry). Returns the range's stored
/// bytes, exactly `range.end − range.start` of them.
///
/// The length shapes the tree but is not proven by a range away from the
/// end: under a wrong `stored_len` a proof fails, or still yields the true
/// bytes of the range. [`verify_segment_proof`] checks the length against
/// the verified header.
///
/// Errors: [`Error::TooLarge`] if `stored_len` is over [`MAX_STORED`] (no
/// format makes such a chunk); [`Error::BadRange`] if `range` is empty or
/// past `stored_len`; [`Error::BadProof`] if any hash or byte of the proof is wrong, the proof
/// is for another range or length, cut short, or has trailing bytes.
pub fn verify_range(
    id: &ChunkId,
    stored_len: u64,
    range: Range<u64>,
    proof: &[u8],
) -> Result<Vec<u8>, Error> {
    if stored_len > MAX_STORED as u64 {
        return Err(Error::TooLarge { len: stored_len as usize, limit: MAX_STORED });
    }
    check_range(&range, stored_len)?;
    let mut parts = verify(id, stored_len, &[range], proof)?;
    Ok(parts.pop().unwrap_or_default())
}

/// Encodes the proof for segment `k` of a segmented (v3) chunk: stored
/// bytes `[0, 44)` (the header) and [`SegmentLayout::segment_range`]`(k)`
/// in one proof, so the reader can check and open the segment with one
/// answer. About the segment plus 1–3 KiB (the header's 1 KiB chunk, the
/// partial 1 KiB chunks at the segment's ends, and the hashes) for 64 KiB
/// segments; the figure is in `docs/FORMATS.md`.
///
/// Errors: as [`super::segmented_header`] for the header of `stored`;
/// [`Error::LengthMismatch`] if `stored` is not as long as it says;
/// [`Error::NoSuchSegment`]; then as [`encode_range_proof`].
pub fn encode_segment_proof(id: &ChunkId, stored: &[u8], outboard: &[u8], k: u32) -> Result<Vec<u8>, Error> {
    let layout = segmented_header(stored)?.layout;
    if stored.len() as u64 != layout.stored_len() {
        return Err(Error::LengthMismatch { expected: layout.stored_len(), actual: stored.len() as u64 });
    }
    encode(id, stored, outboard, &[0..HEADER_LEN_V3 as u64, layout.segment_range(k)?])
}

/// [`encode_segment_proof`] reading only what the proof covers from
/// `data`, a chunk of `stored_len` bytes whose first [`HEADER_LEN_V3`]
/// bytes are `header` (a peer passes its chunk file: the header, the
/// segment's 16 KiB groups and the outboard are read, not the chunk).
/// The bytes read are checked against the outboard as they are encoded.
/// Returns `Ok(None)` when the bytes or the outboard disagree with `id`:
/// the caller then reads the whole chunk to tell which
/// ([`encode_segment_proof`]).
///
/// Errors: as [`encode_segment_proof`].
pub fn encode_segment_proof_at(
    id: &ChunkId,
    data: impl bao_tree::io::sync::ReadAt,
    stored_len: u64,
    header: &[u8],
    outboard: &[u8],
    k: u32,
) -> Result<Option<Vec<u8>>, Error> {
    let layout = segmented_header(header)?.layout;
    if stored_len != layout.stored_len() {
        return Err(Error::LengthMismatch { expected: layout.stored_len(), actual: stored_len });
    }
    let ranges = [0..HEADER_LEN_V3 as u64, layout.segment_range(k)?];
    let tree = BaoTree::new(stored_len, GROUP);
    if outboard.len() as u64 != tree.outboard_size() {
        return Ok(None);
    }
    let ob = PreOrderMemOutboard { root: blake3::Hash::from_bytes(id.0), tree, data: outboard };
    let chunks = round_up_to_chunks(&byte_ranges(&ranges));
    let mut proof = Vec::new();
    Ok(encode_ranges_validated(data, &ob, &chunks, &mut proof).is_ok().then_some(proof))
}

/// A segment's stored bytes and its chunk's header, both verified against
/// the chunk id by [`verify_segment_proof`]: ready to open.
#[derive(Clone, Debug)]
pub struct VerifiedSegment {
    /// The chunk's header (epoch, layout, nonce base).
    pub header: SegmentedHeader,
    /// The segment's index.
    pub index: u32,
    /// The segment's stored bytes: ciphertext and 16-byte tag.
    pub stored: Vec<u8>,
}

impl VerifiedSegment {
    /// Decrypts the segment with `key`, the chunk key of `header.epoch`
    /// (see [`open_segment`]).
    ///
    /// Errors: [`Error::Decrypt`] for a wrong key.
    pub fn open(&self, key: &SubKey) -> Result<Vec<u8>, Error> {
        open_segment(key, &self.header, self.index, &self.stored)
    }
}

/// Verifies a proof made by [`encode_segment_proof`] for segment `k` of
/// the segmented chunk `id`, whose layout the reader knows
/// ([`SegmentLayout::from_stored_len`] of the layout entry's stored length
/// and the segment size), and returns the verified header and segment.
///
/// Errors: [`Error::NoSuchSegment`]; [`Error::BadProof`] as for
/// [`verify_range`]; [`Error::MalformedHeader`] if the verified header
/// describes another layout than `layout` (or is not a v3 header:
/// [`Error::UnknownFormat`]).
pub fn verify_segment_proof(
    id: &ChunkId,
    layout: &SegmentLayout,
    k: u32,
    proof: &[u8],
) -> Result<VerifiedSegment, Error> {
    let range = layout.segment_range(k)?;
    let mut parts = verify(id, layout.stored_len(), &[0..HEADER_LEN_V3 as u64, range], proof)?.into_iter();
    let (Some(head), Some(stored)) = (parts.next(), parts.next()) else {
        return Err(Error::BadProof { id: *id, reason: "missing ranges".into() });
    };
    let header = segmented_header(&head)?;
    if header.layout != *layout {
        return Err(Error::MalformedHeader(format!(
            "chunk {id} has segment size {} and plaintext length {}, its reader expected {} and {}",
            header.layout.segment_size(),
            header.layout.plaintext_len(),
            layout.segment_size(),
            layout.plaintext_len()
        )));
    }
    Ok(VerifiedSegment { header, index: k, stored })
}

fn check_range(range: &Range<u64>, len: u64) -> Result<(), Error> {
    if range.start >= range.end || range.end > len {
        return Err(Error::BadRange { start: range.start, end: range.end, len });
    }
    Ok(())
}

fn byte_ranges(ranges: &[Range<u64>]) -> ByteRanges {
    let mut set = ByteRanges::empty();
    for r in ranges {
        set |= ByteRanges::from(r.clone());
    }
    set
}

/// Encodes the proof of the union of `ranges` (each checked by the caller).
fn encode(id: &ChunkId, stored: &[u8], outboard: &[u8], ranges: &[Range<u64>]) -> Result<Vec<u8>, Error> {
    let tree = BaoTree::new(stored.len() as u64, GROUP);
    // bao-tree indexes the outboard without bounds checks of its own.
    let ob = (outboard.len() as u64 == tree.outboard_size()).then_some(PreOrderMemOutboard {
        root: blake3::Hash::from_bytes(id.0),
        tree,
        data: outboard,
    });
    let chunks = round_up_to_chunks(&byte_ranges(ranges));
    let mut proof = Vec::new();
    match ob.map(|ob| encode_ranges_validated(stored, &ob, &chunks, &mut proof)) {
        Some(Ok(())) => Ok(proof),
        // Bytes or outboard disagree with the id: say which, so a peer
        // moves a rotten chunk aside but only rebuilds a stale outboard.
        _ => {
            let actual = ChunkId::of(stored);
            if actual != *id {
                Err(Error::HashMismatch { expected: *id, actual })
            } else {
                Err(Error::OutboardMismatch(*id))
            }
        }
    }
}

/// Decodes a proof of the union of `ranges` (each checked by the caller)
/// against `id` and `stored_len`; returns each range's bytes.
fn verify(id: &ChunkId, stored_len: u64, ranges: &[Range<u64>], proof: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let bad = |reason: String| Error::BadProof { id: *id, reason };
    let tree = BaoTree::new(stored_len, GROUP);
    let chunks = round_up_to_chunks(&byte_ranges(ranges));
    let mut out: Vec<Vec<u8>> = ranges.iter().map(|r| vec![0u8; (r.end - r.start) as usize]).collect();
    let mut covered = vec![0u64; ranges.len()];
    let mut rest = proof;
    for item in DecodeResponseIter::new(blake3::Hash::from_bytes(id.0), tree, &mut rest, &chunks) {
        let item = item.map_err(|e| bad(e.to_string()))?;
        let BaoContentItem::Leaf(Leaf { offset, data }) = item else { continue };
        let leaf = offset..offset + data.len() as u64;
        for ((r, buf), n) in ranges.iter().zip(&mut out).zip(&mut covered) {
            let (start, end) = (r.start.max(leaf.start), r.end.min(leaf.end));
            if start < end {
                buf[(start - r.start) as usize..(end - r.start) as usize]
                    .copy_from_slice(&data[(start - leaf.start) as usize..(end - leaf.start) as usize]);
                *n += end - start;
            }
        }
    }
    if !rest.is_empty() {
        return Err(bad(format!("{} trailing bytes", rest.len())));
    }
    // Leaves never overlap, so full counts mean every byte came from the
    // proof (the decoder yields all requested chunks or an error).
    if ranges.iter().zip(&covered).any(|(r, n)| *n != r.end - r.start) {
        return Err(bad("the proof does not cover the range".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::seal;
    use crate::codec::segmented::{seal_segmented, seal_segmented_with, MIN_SEGMENT_SIZE, SEGMENT_SIZE};
    use crate::keys::VolumeSecret;
    use bao_tree::io::sync::Outboard;
    use proptest::prelude::*;

    fn key() -> SubKey {
        VolumeSecret::from_bytes([7u8; 32]).chunk_key()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    fn slice(bytes: &[u8], r: &Range<u64>) -> Vec<u8> {
        bytes[r.start as usize..r.end as usize].to_vec()
    }

    #[test]
    fn the_bao_root_is_the_chunk_id() {
        // BLAKE3's own tree, so the id needs no change: for every stored
        // length around chunk and group boundaries, bao-tree's root over
        // 16 KiB groups is blake3::hash of the bytes.
        for len in [0, 1, 1023, 1024, 1025, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 100_000, (1 << 20) + 300]
        {
            let bytes = pattern(len);
            let ob = PreOrderMemOutboard::create(&bytes, GROUP);
            assert_eq!(ob.root(), blake3::hash(&bytes), "len {len}");
            assert_eq!(ob.root().as_bytes(), ChunkId::of(&bytes).as_bytes());
            assert_eq!(outboard(&bytes), ob.data);
            assert_eq!(outboard(&bytes).len() as u64, outboard_len(len as u64));
        }
        let s = seal_segmented(&key(), 0, &pattern(1 << 20)).unwrap();
        assert_eq!(PreOrderMemOutboard::create(&s.bytes, GROUP).root().as_bytes(), s.id.as_bytes());
        // 65 groups of 16 KiB: 64 inner nodes of 64 bytes.
        assert_eq!(outboard(&s.bytes).len(), 4096);
        assert_eq!(outboard_len(0), 0);
        assert_eq!(outboard_len(16 * 1024), 0);
    }

    #[test]
    fn every_segment_of_a_1_mib_chunk_verifies_and_opens() {
        let k = key();
        let p = pattern(1 << 20);
        let s = seal_segmented(&k, 2, &p).unwrap();
        let ob = outboard(&s.bytes);
        // The reader knows only the id and the stored length.
        let layout = SegmentLayout::from_stored_len(s.bytes.len() as u64, SEGMENT_SIZE).unwrap();
        assert_eq!(layout.segments(), 16);
        for j in 0..layout.segments() {
            let proof = encode_segment_proof(&s.id, &s.bytes, &ob, j).unwrap();
            let seg = layout.segment_range(j).unwrap();
            let overhead = proof.len() - (seg.end - seg.start) as usize;
            // The segment, the header's chunk, two partial chunks and a few
            // dozen hashes.
            assert!(overhead < 6 * 1024, "segment {j}: {overhead} bytes over the segment");
            let v = verify_segment_proof(&s.id, &layout, j, &proof).unwrap();
            assert_eq!(v.header.epoch, 2);
            assert_eq!(v.stored, slice(&s.bytes, &seg));
            let plain = layout.plaintext_range(j).unwrap();
            assert_eq!(v.open(&k).unwrap(), slice(&p, &plain));
        }
    }

    #[test]
    fn a_proof_read_from_a_file_equals_the_in_memory_one_and_bad_bytes_give_none() {
        let s = seal_segmented(&key(), 1, &pattern((1 << 20) - 5000)).unwrap();
        let ob = outboard(&s.bytes);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunk");
        std::fs::write(&path, &s.bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let len = s.bytes.len() as u64;
        let header = &s.bytes[..HEADER_LEN_V3];
        let layout = SegmentLayout::from_stored_len(len, SEGMENT_SIZE).unwrap();
        for j in 0..layout.segments() {
            let at = encode_segment_proof_at(&s.id, &file, len, header, &ob, j).unwrap();
            assert_eq!(at, Some(encode_segment_proof(&s.id, &s.bytes, &ob, j).unwrap()), "segment {j}");
        }
        // A stale outboard, or a flipped byte in the segment read: no proof.
        let mut stale = ob.clone();
        stale[100] ^= 1;
        assert_eq!(encode_segment_proof_at(&s.id, &file, len, header, &stale, 3).unwrap(), None);
        assert_eq!(encode_segment_proof_at(&s.id, &file, len, header, &ob[1..], 3).unwrap(), None);
        let mut bad = s.bytes.clone();
        let seg = layout.segment_range(3).unwrap();
        bad[seg.start as usize + 10] ^= 1;
        assert_eq!(encode_segment_proof_at(&s.id, bad.as_slice(), len, header, &ob, 3).unwrap(), None);
        // Another segment of the same bytes is still fine.
        assert!(encode_segment_proof_at(&s.id, bad.as_slice(), len, header, &ob, 5).unwrap().is_some());
        // A length that is not the header's is refused.
        assert!(encode_segment_proof_at(&s.id, &file, len - 1, header, &ob, 0).is_err());
    }

    #[test]
    fn byte_ranges_of_any_chunk_verify() {
        // v2 chunks work too: the proof knows nothing of the format.
        let v2 = seal(&key(), 0, &pattern(200_000)).unwrap();
        let v3 = seal_segmented(&key(), 0, &pattern(200_000)).unwrap();
        for s in [v2, v3] {
            let ob = outboard(&s.bytes);
            let len = s.bytes.len() as u64;
            for r in [0..1, 0..44, 5..6, 1023..1025, 16383..16385, 100_000..170_000, len - 1..len, 0..len] {
                let proof = encode_range_proof(&s.id, &s.bytes, &ob, r.clone()).unwrap();
                assert_eq!(
                    verify_range(&s.id, len, r.clone(), &proof).unwrap(),
                    slice(&s.bytes, &r),
                    "{r:?}"
                );
            }
        }
        // A chunk of a single group has an empty outboard and a proof that
        // is just the bytes.
        let small = seal_segmented(&key(), 0, b"tiny").unwrap();
        let proof = encode_range_proof(&small.id, &small.bytes, &[], 0..10).unwrap();
        assert_eq!(proof, small.bytes);
        assert_eq!(
            verify_range(&small.id, small.bytes.len() as u64, 0..10, &proof).unwrap(),
            &small.bytes[..10]
        );
    }

    #[test]
    fn every_bit_flip_of_a_proof_fails() {
        // 4 KiB segments keep the proof small enough to flip every bit.
        let s = seal_segmented_with(&key(), 0, &pattern(40_000), MIN_SEGMENT_SIZE).unwrap();
        let layout = SegmentLayout::from_stored_len(s.bytes.len() as u64, MIN_SEGMENT_SIZE).unwrap();
        let ob = outboard(&s.bytes);
        let mut proof = encode_segment_proof(&s.id, &s.bytes, &ob, 5).unwrap();
        assert!(verify_segment_proof(&s.id, &layout, 5, &proof).is_ok());
        for i in 0..proof.len() {
            for bit in 0..8 {
                proof[i] ^= 1 << bit;
                assert!(
                    matches!(verify_segment_proof(&s.id, &layout, 5, &proof), Err(Error::BadProof { .. })),
                    "byte {i} bit {bit}"
                );
                proof[i] ^= 1 << bit;
            }
        }
    }

    #[test]
    fn a_byte_flipped_anywhere_in_a_64_kib_segment_proof_fails() {
        let s = seal_segmented(&key(), 0, &pattern(1 << 20)).unwrap();
        let layout = SegmentLayout::from_stored_len(s.bytes.len() as u64, SEGMENT_SIZE).unwrap();
        let mut proof = encode_segment_proof(&s.id, &s.bytes, &outboard(&s.bytes), 9).unwrap();
        for i in (0..proof.len()).step_by(7) {
            proof[i] ^= 1 << (i % 8);
            assert!(verify_segment_proof(&s.id, &layout, 9, &proof).is_err(), "byte {i}");
            proof[i] ^= 1 << (i % 8);
        }
    }

    #[test]
    fn proofs_for_another_range_chunk_or_length_fail() {
        let s = seal_segmented(&key(), 0, &pattern(300_000)).unwrap();
        let ob = outboard(&s.bytes);
        let len = s.bytes.len() as u64;
        let layout = SegmentLayout::from_stored_len(len, SEGMENT_SIZE).unwrap();
        let proof1 = encode_segment_proof(&s.id, &s.bytes, &ob, 1).unwrap();
        for other in [0, 2, 4] {
            assert!(matches!(
                verify_segment_proof(&s.id, &layout, other, &proof1),
                Err(Error::BadProof { .. })
            ));
        }
        let r = layout.segment_range(2).unwrap();
        let proof = encode_range_proof(&s.id, &s.bytes, &ob, r.clone()).unwrap();
        assert!(verify_range(&s.id, len, r.clone(), &proof).is_ok());
        // Another range of the same chunk, another chunk's id.
        assert!(matches!(verify_range(&s.id, len, 0..r.end - r.start, &proof), Err(Error::BadProof { .. })));
        assert!(matches!(
            verify_range(&s.id, len, r.start + 70_000..r.end + 70_000, &proof),
            Err(Error::BadProof { .. })
        ));
        let other = ChunkId::of(b"another chunk");
        assert!(matches!(verify_range(&other, len, r.clone(), &proof), Err(Error::BadProof { .. })));
        // Another stored length: a range away from the end does not prove
        // the length (the tree above it has the same shape), so the proof
        // either fails or still yields the true bytes, never others.
        for wrong in [len - 1, len + 1, len + 64 * 1024, len - 64 * 1024, 2 * len] {
            match verify_range(&s.id, wrong, r.clone(), &proof) {
                Ok(bytes) => assert_eq!(bytes, slice(&s.bytes, &r), "{wrong}"),
                Err(e) => assert!(matches!(e, Error::BadProof { .. }), "{wrong}: {e}"),
            }
        }
        // A segment proof checks the length against the verified header.
        for wrong in [300_000 - 1, 300_001, 300_000 + 65_536] {
            let l = SegmentLayout::new(SEGMENT_SIZE, wrong).unwrap();
            let res = verify_segment_proof(&s.id, &l, 1, &proof1);
            assert!(
                matches!(res, Err(Error::MalformedHeader(_) | Error::BadProof { .. })),
                "{wrong}: {res:?}"
            );
        }
        // Cut short, or with a byte appended.
        assert!(matches!(
            verify_range(&s.id, len, r.clone(), &proof[..proof.len() - 1]),
            Err(Error::BadProof { .. })
        ));
        let mut longer = proof.clone();
        longer.push(0);
        assert!(matches!(verify_range(&s.id, len, r.clone(), &longer), Err(Error::BadProof { .. })));
        assert!(matches!(verify_range(&s.id, len, r, &[]), Err(Error::BadProof { .. })));
    }

    #[test]
    fn a_holder_with_rotten_bytes_or_outboard_serves_no_proof() {
        let s = seal_segmented(&key(), 0, &pattern(100_000)).unwrap();
        let ob = outboard(&s.bytes);
        let r = 50_000..60_000;
        let mut rotten = s.bytes.clone();
        rotten[55_000] ^= 1;
        assert!(matches!(
            encode_range_proof(&s.id, &rotten, &ob, r.clone()),
            Err(Error::HashMismatch { .. })
        ));
        let mut bad_ob = ob.clone();
        bad_ob[100] ^= 1;
        assert!(matches!(
            encode_range_proof(&s.id, &s.bytes, &bad_ob, r.clone()),
            Err(Error::OutboardMismatch(_))
        ));
        assert!(matches!(
            encode_range_proof(&s.id, &s.bytes, &ob[1..], r.clone()),
            Err(Error::OutboardMismatch(_))
        ));
        assert!(matches!(encode_range_proof(&s.id, &s.bytes, &[], r), Err(Error::OutboardMismatch(_))));
        // Rot far from the range goes unseen: a proof reads only the groups
        // it sends (scrub and whole-chunk reads hash everything).
        let far = 90_000..90_001;
        assert!(encode_range_proof(&s.id, &rotten, &ob, far).is_ok());
    }

    #[test]
    fn bad_ranges_and_segments_are_refused() {
        let s = seal_segmented(&key(), 0, &pattern(100_000)).unwrap();
        let ob = outboard(&s.bytes);
        let len = s.bytes.len() as u64;
        #[allow(clippy::reversed_empty_ranges)]
        let bad = [5..5, 6..5, 0..len + 1, len..len + 1];
        for r in bad {
            assert!(matches!(
                encode_range_proof(&s.id, &s.bytes, &ob, r.clone()),
                Err(Error::BadRange { .. })
            ));
            assert!(matches!(verify_range(&s.id, len, r, &[]), Err(Error::BadRange { .. })));
        }
        assert!(matches!(encode_segment_proof(&s.id, &s.bytes, &ob, 2), Err(Error::NoSuchSegment { .. })));
        assert!(matches!(
            encode_segment_proof(&s.id, &s.bytes[..100], &ob, 0),
            Err(Error::LengthMismatch { .. })
        ));
        let v2 = seal(&key(), 0, b"old").unwrap();
        assert!(matches!(encode_segment_proof(&v2.id, &v2.bytes, &[], 0), Err(Error::UnknownFormat(2))));
        assert!(matches!(verify_range(&s.id, u64::MAX, 0..1, &[]), Err(Error::TooLarge { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn garbage_is_refused_without_panics(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            seg_log in 10u32..24,
            len in 0u32..(1 << 23),
            start in 0u64..3000,
            span in 1u64..3000,
        ) {
            // Untrusted bytes shaped like a v3 chunk, and untrusted proofs.
            let mut bytes = b"P2PC\x03\0\0\0\x01\0\0\0".to_vec();
            bytes.extend_from_slice(&(1u32 << seg_log).to_le_bytes());
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&body);
            prop_assert!(crate::codec::open_bytes(&key(), &bytes).is_err());
            let id = ChunkId::of(&bytes);
            prop_assert!(crate::codec::open(&key(), &id, &bytes).is_err());
            let n = bytes.len() as u64;
            let _ = encode_segment_proof(&id, &bytes, &outboard(&bytes), 0);
            let r = start.min(n - 1)..(start + span).min(n);
            prop_assert!(verify_range(&id, n, r.clone(), &body).is_err());
            if let Ok(layout) = SegmentLayout::from_stored_len(n, 1 << seg_log.max(12)) {
                prop_assert!(verify_segment_proof(&id, &layout, 0, &body).is_err());
            }
        }

        #[test]
        fn random_ranges_verify(len in 1usize..200_000, a in 0.0f64..1.0, b in 0.0f64..1.0) {
            let s = seal(&key(), 0, &pattern(len)).unwrap();
            let n = s.bytes.len() as u64;
            let (x, y) = ((a * n as f64) as u64, (b * n as f64) as u64);
            let r = x.min(y)..(x.max(y) + 1).min(n);
            let proof = encode_range_proof(&s.id, &s.bytes, &outboard(&s.bytes), r.clone()).unwrap();
            prop_assert_eq!(verify_range(&s.id, n, r.clone(), &proof).unwrap(), slice(&s.bytes, &r));
        }
    }
}
