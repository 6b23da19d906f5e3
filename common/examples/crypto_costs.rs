//! What the per-block cryptography costs, on this machine: sealing and
//! opening a 1 MiB block in codec v2 (epoch in the header) against v1, one
//! layout-entry MAC (make and verify), and unwrapping and verifying a
//! keyring of 1, 10 and 100 epochs. Run it in a release build:
//!
//! ```text
//! cargo run --release -p p2pfs-common --example crypto_costs
//! ```
//!
//! Figures are per operation on one core; the machines are shared and
//! noisy, so compare ratios.

use common::keyring;
use common::keys::{LayoutEntry, VolumeSecret};
use common::rpc::dir::Keyring;
use common::{codec, ChunkId, InodeId, VolumeId};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Runs `f` `n` times (after `n / 10` warm-up runs); returns the time per run.
fn per_op(n: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed() / n
}

fn main() {
    let secret = VolumeSecret::generate();
    let key = secret.chunk_key();
    let block = vec![0x5au8; 1 << 20];

    let v2 = codec::seal(&key, 3, &block).map(|s| s.bytes).unwrap_or_default();
    let v1 = codec::seal_bytes_v1_for_tests(&key, &block, &[]).unwrap_or_default();
    let seal2 = per_op(200, || {
        black_box(codec::seal(&key, 3, black_box(&block)).map(|s| s.id).ok());
    });
    let seal1 = per_op(200, || {
        black_box(codec::seal_bytes_v1_for_tests(&key, black_box(&block), &[]).map(|b| ChunkId::of(&b)).ok());
    });
    let open2 = per_op(200, || {
        black_box(codec::open_bytes(&key, black_box(&v2)).ok());
    });
    let open1 = per_op(200, || {
        black_box(codec::open_bytes(&key, black_box(&v1)).ok());
    });
    let hash = per_op(200, || {
        black_box(ChunkId::of(black_box(&v2)));
    });
    println!("1 MiB block, codec v2: seal+id {seal2:?}, open {open2:?} (v1: seal+id {seal1:?}, open {open1:?}); BLAKE3 id alone {hash:?}");
    println!("stored overhead: v2 {} bytes, v1 {} bytes per chunk", codec::OVERHEAD, codec::OVERHEAD_V1);

    let mac_key = secret.layout_mac_key();
    let e = LayoutEntry {
        volume: VolumeId([1; 16]),
        ino: InodeId(12345),
        index: 678,
        chunk: ChunkId::of(b"x"),
        len: (1 << 20) + 52,
        epoch: 3,
    };
    let mac = mac_key.mac(&e);
    let make = per_op(1_000_000, || {
        black_box(mac_key.mac(black_box(&e)));
    });
    let check = per_op(1_000_000, || {
        black_box(mac_key.verify(black_box(&e), black_box(&mac)));
    });
    println!("layout-entry MAC: make {make:?}, verify {check:?} per block");

    let id = age::x25519::Identity::generate();
    let recipients: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(id.to_public())];
    let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(id)];
    let volume = VolumeId([2; 16]);
    for n in [1usize, 10, 100] {
        let Ok((_, e0)) = keyring::first_epoch(&recipients) else { return };
        let mut ring = Keyring { version: 1, epochs: vec![e0], members: vec![] };
        while ring.epochs.len() < n {
            let Ok(keys) = keyring::open(volume, &ring, &ids, false) else { return };
            let Ok((_, next)) = keyring::next_epoch(&keys, &recipients) else { return };
            ring.epochs.push(next);
        }
        let t = per_op(20, || {
            black_box(keyring::open(volume, &ring, &ids, false).is_ok());
        });
        println!("keyring of {n} epoch(s), one recipient: unwrap and verify {t:?}");
    }
}
