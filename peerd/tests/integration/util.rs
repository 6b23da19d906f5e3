//! Shared helpers: test chunks, chunk files written straight to disk, a peer
//! on an ephemeral port with a peer certificate of the test CA, clients of
//! it in each role, and the time limits of polling and of whole tests
//! (the waiting itself is `testkit`'s).

use common::rpc::peer::PeerServiceClient;
use common::rpc::Role;
use common::ChunkId;
use peerd::{PeerdConfig, PeerdHandle};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upper bound for any one socket test (with [`testkit::within`]).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a test waits for a peer's state to change (with
/// [`testkit::wait_until_async`]).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(20);

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

/// The configuration of a test peer: `127.0.0.1:0` over `data_dir`,
/// heartbeating to `dirsvc` every 50 ms, scrub off (tests of scrub turn it
/// on, so that no other test races a scrub pass). Its TLS identity is in
/// `<data_dir>/tls` (the default place), written there with a fresh peer
/// certificate of the test CA unless one is there already, so a restart on
/// the same data directory is the same peer.
pub fn peer_config(data_dir: &Path, dirsvc: &str) -> PeerdConfig {
    let tls_dir = data_dir.join("tls");
    if !common::pki::NodeFiles::exist(&tls_dir) {
        testkit::pki().write_node(Role::Peer, &tls_dir);
    }
    PeerdConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_path_buf(),
        dirsvc: dirsvc.to_string(),
        heartbeat_interval: Duration::from_millis(50),
        scrub_bytes_per_sec: 0,
        ..PeerdConfig::default()
    }
}

/// A peer with [`peer_config`].
pub async fn spawn_peer(data_dir: &Path, dirsvc: &str) -> PeerdHandle {
    peerd::spawn(peer_config(data_dir, dirsvc)).await.unwrap()
}

/// A client of `peer` speaking as a fresh node of `role`: a client (put,
/// get, get_range, has), dirsvc (delete, list_chunks, fetch_from, usage)
/// or an admin (usage).
pub async fn connect(peer: &PeerdHandle, role: Role) -> PeerServiceClient {
    testkit::peer_client_as(&peer.addr.to_string(), peer.id, role).await
}

/// Where a store in `data_dir` keeps chunk `id`.
pub fn chunk_file(data_dir: &Path, id: &ChunkId) -> PathBuf {
    let hex = id.to_hex();
    data_dir.join("data").join(&hex[..2]).join(hex)
}

/// Writes chunk files straight into `data_dir`'s layout, without a store
/// and without fsync: a fast way to give a peer many chunks before it opens.
pub fn write_chunk_files(data_dir: &Path, chunks: &[(ChunkId, Vec<u8>)]) {
    for (id, bytes) in chunks {
        let path = chunk_file(data_dir, id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Flips one bit pattern of the byte at `at` in the file at `path`.
pub fn flip_byte(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x40;
    std::fs::write(path, b).unwrap();
}

/// File names in `dir`, sorted.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}
