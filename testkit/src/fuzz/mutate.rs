//! Inputs for the CI pass: seeded random bytes and mutated seeds.
//!
//! Without coverage feedback, mutation of valid inputs is what gets past
//! magics, length prefixes and version bytes: each case takes a seed and
//! applies a few of the classic byte-level mutations (bit flips, boundary
//! integers over 1/2/4/8 bytes in both byte orders, inserted, deleted or
//! duplicated ranges, truncation, splicing with another seed). One case in
//! ten is plain random bytes.

use rand::rngs::StdRng;
use rand::{Rng, RngCore};

/// Integers that sit on the boundaries decoders get wrong: lengths of 0,
/// 1, just past a buffer, 2³¹, 2³², 2⁶³, all ones.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    16,
    32,
    48,
    64,
    127,
    128,
    255,
    256,
    1 << 10,
    (1 << 16) - 1,
    1 << 16,
    1 << 20,
    (1 << 20) + 1,
    (4 << 20) + 48,
    16 << 20,
    (16 << 20) + 1,
    1 << 30,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    1_000_000_000,
    1 << 60,
    (1 << 63) - 1,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

/// Fills `out` with case number `case`'s input: random bytes or a mutated
/// seed, at most `max_len` bytes. Deterministic in `rng`'s state.
pub fn generate(rng: &mut StdRng, seeds: &[Vec<u8>], max_len: usize, out: &mut Vec<u8>) {
    out.clear();
    if seeds.is_empty() || rng.gen_ratio(1, 10) {
        let len = match rng.gen_range(0..4) {
            0 => rng.gen_range(0..16),
            1 | 2 => rng.gen_range(0..256),
            _ => rng.gen_range(0..4096),
        };
        out.resize(len.min(max_len), 0);
        rng.fill_bytes(out);
        return;
    }
    out.extend_from_slice(&seeds[rng.gen_range(0..seeds.len())]);
    let n = 1 + rng.gen_range(0..4) * rng.gen_range(0..3);
    for _ in 0..n {
        mutate(rng, seeds, out);
    }
    out.truncate(max_len);
}

/// One mutation of `buf`.
fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>], buf: &mut Vec<u8>) {
    let len = buf.len();
    match rng.gen_range(0..11) {
        // Flip one bit.
        0 if len > 0 => {
            let i = rng.gen_range(0..len);
            buf[i] ^= 1 << rng.gen_range(0..8);
        }
        // A random byte.
        1 if len > 0 => {
            let i = rng.gen_range(0..len);
            buf[i] = rng.gen();
        }
        // A boundary integer over 1, 2, 4 or 8 bytes, either byte order,
        // maybe negated.
        2..=4 if len > 0 => {
            let width = [1usize, 2, 4, 8][rng.gen_range(0..4)];
            let mut v = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            if rng.gen_ratio(1, 4) {
                v = v.wrapping_neg();
            }
            let (le, be) = (v.to_le_bytes(), v.to_be_bytes());
            // The low `width` bytes of the value, in either order.
            let src = if rng.gen() { &le[..width] } else { &be[8 - width..] };
            let at = rng.gen_range(0..len);
            for (k, b) in src.iter().enumerate() {
                if let Some(slot) = buf.get_mut(at + k) {
                    *slot = *b;
                }
            }
        }
        // Insert random bytes.
        5 => {
            let at = rng.gen_range(0..=len);
            let n = rng.gen_range(1..=16);
            let ins: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            buf.splice(at..at, ins);
        }
        // Delete a range.
        6 if len > 0 => {
            let at = rng.gen_range(0..len);
            let n = rng.gen_range(1..=(len - at).min(64));
            buf.drain(at..at + n);
        }
        // Duplicate a range.
        7 if len > 0 => {
            let at = rng.gen_range(0..len);
            let n = rng.gen_range(1..=(len - at).min(64));
            let copy = buf[at..at + n].to_vec();
            let to = rng.gen_range(0..=len);
            buf.splice(to..to, copy);
        }
        // Truncate.
        8 if len > 0 => {
            buf.truncate(rng.gen_range(0..len));
        }
        // Splice: the head of this input, the tail of another seed.
        9 => {
            let other = &seeds[rng.gen_range(0..seeds.len())];
            let cut = rng.gen_range(0..=len);
            let from = rng.gen_range(0..=other.len());
            buf.truncate(cut);
            buf.extend_from_slice(&other[from..]);
        }
        // Swap two bytes.
        _ if len > 1 => {
            let (a, b) = (rng.gen_range(0..len), rng.gen_range(0..len));
            buf.swap(a, b);
        }
        _ => buf.push(rng.gen()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn generation_is_deterministic_and_bounded() {
        let seeds = vec![b"hello world, a seed".to_vec(), vec![0u8; 100]];
        let (mut a, mut b) = (StdRng::seed_from_u64(7), StdRng::seed_from_u64(7));
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut changed = 0;
        for _ in 0..2000 {
            generate(&mut a, &seeds, 64, &mut x);
            generate(&mut b, &seeds, 64, &mut y);
            assert_eq!(x, y);
            assert!(x.len() <= 64);
            changed += usize::from(!seeds.contains(&x));
        }
        assert!(changed > 1500, "most cases differ from the seeds ({changed})");
    }
}
