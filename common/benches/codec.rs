//! Throughput of the chunk codec next to its raw primitives.
//!
//! For 4 KiB, 64 KiB and 1 MiB blocks: raw BLAKE3 and raw
//! XChaCha20-Poly1305 (RustCrypto's, which the codec uses; in place,
//! detached tag) alone and together (the floor any seal or open can reach),
//! ring's ChaCha20-Poly1305 for comparison, `codec::seal` / `open` / `verify`
//! (format v2), the segmented formats v3 (XChaCha20-Poly1305) and v4
//! (XAES-256-GCM, what clients write): seal, open of the whole chunk; for
//! v4 the outboard and the three steps of a verified one-segment read (the
//! holder's proof, the reader's check, opening the segment). Throughput is
//! in plaintext bytes of the block, or of the one segment for the
//! one-segment steps.
//!
//! Run: `cargo bench -p p2pfs-common --bench codec` (add `-- --quick` or
//! `-- --warm-up-time 1 --measurement-time 2` for a short run).

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use common::codec;
use common::keys::VolumeSecret;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use std::hint::black_box;

const SIZES: [(&str, usize); 3] = [("4KiB", 4 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)];

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

fn codec_benches(c: &mut Criterion) {
    let key = VolumeSecret::from_bytes([7u8; 32]).chunk_key();
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let nonce = XNonce::from([9u8; 24]);
    for (name, len) in SIZES {
        let plain = data(len);
        let mut g = c.benchmark_group(format!("codec/{name}"));
        g.throughput(Throughput::Bytes(len as u64));

        // Raw primitives.
        g.bench_function("raw blake3", |b| b.iter(|| blake3::hash(black_box(&plain))));
        let mut buf = plain.clone();
        g.bench_function("raw xchacha encrypt", |b| {
            b.iter(|| cipher.encrypt_in_place_detached(&nonce, &[], black_box(&mut buf)).unwrap())
        });
        let mut ct = plain.clone();
        let tag = cipher.encrypt_in_place_detached(&nonce, &[], &mut ct).unwrap();
        g.bench_function("raw xchacha decrypt", |b| {
            b.iter_batched_ref(
                || ct.clone(),
                |ct| cipher.decrypt_in_place_detached(&nonce, &[], black_box(ct), &tag).unwrap(),
                BatchSize::LargeInput,
            )
        });
        // ring's ChaCha20-Poly1305 (RFC 8439, 12-byte nonce; XChaCha20 is
        // it after one HChaCha20 block per key and nonce): what a faster
        // backend of the same format would give.
        let ring_key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key.as_bytes()).unwrap());
        let ring_nonce = || Nonce::assume_unique_for_key([9u8; 12]);
        g.bench_function("raw ring chacha encrypt", |b| {
            b.iter(|| {
                ring_key.seal_in_place_separate_tag(ring_nonce(), Aad::empty(), black_box(&mut buf)).unwrap()
            })
        });
        let mut ring_ct = plain.clone();
        let ring_tag = ring_key.seal_in_place_separate_tag(ring_nonce(), Aad::empty(), &mut ring_ct).unwrap();
        g.bench_function("raw ring chacha decrypt", |b| {
            b.iter_batched_ref(
                || ring_ct.clone(),
                |ct| {
                    ring_key
                        .open_in_place_separate_tag(ring_nonce(), Aad::empty(), ring_tag, black_box(ct), 0..)
                        .unwrap()
                        .len()
                },
                BatchSize::LargeInput,
            )
        });
        g.bench_function("raw encrypt+blake3", |b| {
            b.iter(|| {
                cipher.encrypt_in_place_detached(&nonce, &[], black_box(&mut buf)).unwrap();
                blake3::hash(&buf)
            })
        });
        g.bench_function("raw blake3+decrypt", |b| {
            b.iter_batched_ref(
                || ct.clone(),
                |ct| {
                    black_box(blake3::hash(black_box(ct)));
                    cipher.decrypt_in_place_detached(&nonce, &[], ct, &tag).unwrap()
                },
                BatchSize::LargeInput,
            )
        });

        // Format v2 (what `seal` writes).
        let v2 = codec::seal(&key, 0, &plain).unwrap();
        g.bench_function("v2 seal", |b| b.iter(|| codec::seal(&key, 0, black_box(&plain)).unwrap()));
        g.bench_function("v2 open (verify+decrypt)", |b| {
            b.iter(|| codec::open(&key, &v2.id, black_box(&v2.bytes)).unwrap())
        });
        g.bench_function("v2 verify", |b| b.iter(|| codec::verify(&v2.id, black_box(&v2.bytes)).unwrap()));

        // Format v3 (segmented, XChaCha20-Poly1305: read, no longer written).
        let v3 = codec::seal_segmented_v3_for_tests(&key, 0, &plain, codec::SEGMENT_SIZE).unwrap();
        g.bench_function("v3 seal", |b| {
            b.iter(|| {
                codec::seal_segmented_v3_for_tests(&key, 0, black_box(&plain), codec::SEGMENT_SIZE).unwrap()
            })
        });
        g.bench_function("v3 open (verify+decrypt all)", |b| {
            b.iter(|| codec::open(&key, &v3.id, black_box(&v3.bytes)).unwrap())
        });

        // Format v4 (segmented, XAES-256-GCM: what clients write).
        let v4 = codec::seal_segmented(&key, 0, &plain).unwrap();
        g.bench_function("v4 seal", |b| {
            b.iter(|| codec::seal_segmented(&key, 0, black_box(&plain)).unwrap())
        });
        g.bench_function("v4 open (verify+decrypt all)", |b| {
            b.iter(|| codec::open(&key, &v4.id, black_box(&v4.bytes)).unwrap())
        });
        g.bench_function("v4 outboard", |b| b.iter(|| codec::outboard(black_box(&v4.bytes))));

        // One segment (the middle one) of the v4 chunk, as a random read
        // fetches it.
        let header = codec::segmented_header(&v4.bytes).unwrap();
        let layout = header.layout;
        let k = layout.segments() / 2;
        let seg = layout.segment_range(k).unwrap();
        let stored = &v4.bytes[seg.start as usize..seg.end as usize];
        let ob = codec::outboard(&v4.bytes);
        let proof = codec::encode_segment_proof(&v4.id, &v4.bytes, &ob, k).unwrap();
        let plain_seg = layout.plaintext_range(k).unwrap();
        g.throughput(Throughput::Bytes(plain_seg.end - plain_seg.start));
        g.bench_function("v4 segment: proof", |b| {
            b.iter(|| codec::encode_segment_proof(&v4.id, black_box(&v4.bytes), &ob, k).unwrap())
        });
        g.bench_function("v4 segment: verify proof", |b| {
            b.iter(|| codec::verify_segment_proof(&v4.id, &layout, k, black_box(&proof)).unwrap())
        });
        g.bench_function("v4 segment: open", |b| {
            b.iter(|| codec::open_segment(&key, &header, k, black_box(stored)).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, codec_benches);
criterion_main!(benches);
