//! Helpers the end-to-end tests share: running tools with a deadline,
//! deterministic test data, and reading chunk files off peers' disks.

use super::cluster::TestCluster;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Runs `cmd` to completion within `timeout` and returns its output,
/// whatever the exit status. Panics on timeout (after SIGKILL; it does not
/// wait for a child stuck in the kernel, the cluster's drop unblocks it).
pub fn output(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for child") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{desc} did not finish within {timeout:?}");
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: t_out.join().expect("stdout reader"),
        stderr: t_err.join().expect("stderr reader"),
    }
}

/// Runs `cmd` within `timeout`, expecting exit 0; returns its stdout.
pub fn run(cmd: &mut Command, timeout: Duration) -> String {
    let out = output(cmd, timeout);
    let clip = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let start = s.len().saturating_sub(4000);
        let start = (start..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        s[start..].to_string()
    };
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout (tail):\n{}\nstderr (tail):\n{}",
        out.status,
        clip(&out.stdout),
        clip(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sha256sum FILE`, as lowercase hex.
pub fn sha256(path: &Path, timeout: Duration) -> String {
    let out = run(Command::new("sha256sum").arg(path), timeout);
    out.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sha256sum printed nothing for {}", path.display()))
        .to_string()
}

/// Deterministic pseudo-random bytes (a splitmix64 stream from `seed`):
/// cheap to make and never the same from one block to the next, so no
/// dedup or compression can hide a wrong read.
pub struct Pattern(u64);

impl Pattern {
    /// A stream starting from `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed)
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }

    /// `len` bytes of the stream from `seed`.
    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        Pattern::new(seed).fill(&mut v);
        v
    }

    /// Writes `len` bytes of the stream from `seed` to a new file at `path`.
    pub fn write_file(path: &Path, seed: u64, len: u64) {
        let mut f = fs::File::create(path).expect("create pattern file");
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).expect("fits");
            p.fill(&mut buf[..n]);
            f.write_all(&buf[..n]).expect("write pattern file");
            left -= n as u64;
        }
        f.sync_all().expect("sync pattern file");
    }
}

/// Every chunk file in a peer data dir: `data/<2hex>/<64hex>` → (hex id,
/// path). Temp files and quarantined copies are ignored.
pub fn chunk_files(data_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(shards) = fs::read_dir(data_dir.join("data")) else {
        return out;
    };
    for shard in shards.filter_map(|e| e.ok()) {
        let prefix = shard.file_name().to_string_lossy().into_owned();
        if prefix.len() != 2 || !is_hex(&prefix) {
            continue;
        }
        let Ok(files) = fs::read_dir(shard.path()) else {
            continue;
        };
        for f in files.filter_map(|e| e.ok()) {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && is_hex(&name) && name.starts_with(&prefix) {
                out.push((name, f.path()));
            }
        }
    }
    out.sort();
    out
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Which peers hold each chunk: hex id → sorted peer indices.
pub fn chunk_holders(c: &TestCluster) -> BTreeMap<String, Vec<usize>> {
    let mut m: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for i in 0..c.peer_count() {
        for (id, _) in chunk_files(&c.peer_data_dir(i)) {
            m.entry(id).or_default().push(i);
        }
    }
    m
}

/// Asserts that every chunk stored anywhere is on at least `r` peers, and
/// that there is at least one chunk.
pub fn assert_replicated(c: &TestCluster, r: usize) -> BTreeMap<String, Vec<usize>> {
    let holders = chunk_holders(c);
    assert!(!holders.is_empty(), "no chunk files found under any peer's data/<2hex>/<64hex>");
    let under: Vec<_> = holders.iter().filter(|(_, h)| h.len() < r).collect();
    assert!(
        under.is_empty(),
        "{} of {} chunks are on fewer than {r} peers after unmount, e.g. {:?}",
        under.len(),
        holders.len(),
        under.iter().take(5).collect::<Vec<_>>()
    );
    holders
}

/// Writes `files` (relative path → contents) under `dir`, creating parents.
pub fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (name, data) in files {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("create parent dir in mount");
        }
        fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
}

/// Reads every file back from `dir` and checks it byte for byte.
pub fn assert_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (name, want) in files {
        let p = dir.join(name);
        let got = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        assert_eq!(got.len(), want.len(), "length of {name}");
        if let Some(at) = got.iter().zip(want.iter()).position(|(a, b)| a != b) {
            panic!("{name} differs first at byte {at} of {}", want.len());
        }
    }
}

/// Files at the sizes where block arithmetic breaks (block size 1 MiB by
/// default), each with its own contents.
pub fn boundary_files() -> BTreeMap<String, Vec<u8>> {
    const MIB: usize = 1 << 20;
    let sizes = [0, 1, 4095, 4096, MIB - 1, MIB, MIB + 1, 3 * MIB + 17, 7 * MIB];
    sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| (format!("d{}/f-{len}.bin", i % 3), Pattern::bytes(1000 + i as u64, len)))
        .collect()
}
