//! Store throughput: creates per second through `Store::create` from 1
//! and from 8 threads, and lookups per second from 1 and 8 threads.
//!
//! Usage: `cargo run --release -p p2pfs-dirsvc --example store_bench --
//! DIR [FILES]` (DIR on a tmpfs such as /dev/shm measures the store, not
//! the disk's fsync).

use common::rpc::dir::{FileKind, KeyEpoch, Keyring, Member, NewInode, VolumeInfo};
use common::{InodeId, VolumeId};
use dirsvc::Store;
use std::sync::Arc;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/dev/shm".into()));
    let files: u32 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let path = dir.join(format!("store-bench-{}.redb", std::process::id()));
    let store = Arc::new(Store::open(&path)?);
    let info = VolumeInfo {
        id: VolumeId([1; 16]),
        block_size: 4096,
        replicas: 1,
        keyring: Keyring {
            version: 0,
            epochs: vec![KeyEpoch { epoch: 0, wrapped: vec![1], check: [9; 32], link: [0; 32] }],
            members: vec![Member { name: "bench".into(), recipient: "age1bench".into(), nodes: vec![] }],
        },
        legacy_layouts: false,
    };
    store.init_volume(&info, 0, 0)?;
    let new = NewInode { kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0 };
    let mut dirs = Vec::new();
    for threads in [1u32, 8] {
        let d = store.mkdir(InodeId::ROOT, format!("t{threads}").as_bytes(), 0o755, 0, 0)?.ino;
        dirs.push((threads, d));
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let store = store.clone();
                let new = new.clone();
                s.spawn(move || {
                    for i in 0..files / threads {
                        store.create(d, format!("f{t}-{i}").as_bytes(), &new).expect("create");
                    }
                });
            }
        });
        let secs = start.elapsed().as_secs_f64();
        println!(
            "create, {threads} thread(s): {:.0}/s ({files} files in {secs:.2} s)",
            f64::from(files) / secs
        );
    }
    for threads in [1u32, 8] {
        let (_, d) = dirs[0];
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let store = store.clone();
                s.spawn(move || {
                    for i in (t..files).step_by(threads as usize) {
                        store.lookup(d, format!("f0-{i}").as_bytes()).expect("lookup");
                    }
                });
            }
        });
        let secs = start.elapsed().as_secs_f64();
        println!(
            "lookup, {threads} thread(s): {:.0}/s ({files} lookups in {secs:.2} s)",
            f64::from(files) / secs
        );
    }
    drop(store);
    std::fs::remove_file(&path)?;
    Ok(())
}
