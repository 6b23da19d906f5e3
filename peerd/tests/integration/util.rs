//! Shared helpers: test chunks, a peer on an ephemeral port, timeouts.

use common::ChunkId;
use peerd::{PeerdConfig, PeerdHandle};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// Upper bound for any one socket test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `f`, failing the test if it takes longer than [`TEST_TIMEOUT`].
pub async fn timeout<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f).await.expect("test timed out")
}

/// `len` pseudo-random bytes derived from `seed`, and their id.
pub fn chunk(len: usize, seed: u64) -> (ChunkId, Vec<u8>) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    (ChunkId::of(&bytes), bytes)
}

/// A loopback address nothing listens on (bound then released).
pub fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A peer on `127.0.0.1:0` over `data_dir`, heartbeating to `dirsvc` every
/// 50 ms.
pub async fn spawn_peer(data_dir: &Path, dirsvc: &str) -> PeerdHandle {
    peerd::spawn(PeerdConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_path_buf(),
        dirsvc: dirsvc.to_string(),
        heartbeat_interval: Duration::from_millis(50),
        ..PeerdConfig::default()
    })
    .await
    .unwrap()
}
