//! Helpers the end-to-end tests share: deterministic test data, reading and damaging chunk files on peers'
//! disks, and a writer that records which files the mount acknowledged
//! (for the crash tests). Polling for a condition is
//! `testkit::wait_until`; running a tool with a deadline is
//! `testkit::cmd` (re-exported here).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use testkit::cluster::TestCluster;
pub use testkit::cmd::{output, run};

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

/// What `df` shows for the filesystem holding `path`: (size, used) in bytes
/// from `statvfs` (used = blocks − free blocks, times the fragment size).
pub fn df(path: &Path) -> (u64, u64) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path has no NUL");
    // SAFETY: statvfs is plain old data; all-zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer
    // for the duration of the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}: {}", path.display(), std::io::Error::last_os_error());
    let frsize = st.f_frsize as u64;
    let blocks = st.f_blocks as u64;
    let free = st.f_bfree as u64;
    (blocks * frsize, blocks.saturating_sub(free) * frsize)
}

/// Whether the file at `path` hashes (BLAKE3) to `hex_id`, the chunk id its
/// name carries. A missing or unreadable file does not verify.
pub fn chunk_verifies(path: &Path, hex_id: &str) -> bool {
    fs::read(path).is_ok_and(|b| blake3::hash(&b).to_hex().as_str() == hex_id)
}

/// XORs the byte at `len / 2` of `path` with 0xff in place and syncs it.
pub fn flip_middle_byte(path: &Path) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let len = f.metadata().expect("stat chunk").len();
    assert!(len > 0, "empty chunk file {}", path.display());
    let at = len / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.read_exact(&mut b).expect("read byte");
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&b).expect("write byte");
    f.sync_all().expect("sync chunk");
}

/// A tool running in the background (e.g. `rsync` while a test kills
/// daemons), its output going to a log file. Dropping it SIGKILLs and
/// reaps the process if it still runs.
pub struct Background {
    desc: String,
    child: Child,
    log: PathBuf,
}

impl Background {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(cmd: &mut Command, log: &Path) -> Background {
        let desc = format!("{cmd:?}");
        let out = OpenOptions::new().create(true).append(true).open(log).expect("open background log");
        let err = out.try_clone().expect("clone log handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
        Background { desc, child, log: log.to_path_buf() }
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for background tool")
    }

    /// Waits up to `timeout` and panics (after SIGKILL) unless it exited 0.
    pub fn expect_success(mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let st = loop {
            if let Some(st) = self.try_wait() {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not finish within {timeout:?}\n{}",
                    self.desc,
                    testkit::cluster::tail(&self.log, 40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        };
        assert!(st.success(), "{} failed with {st}\n{}", self.desc, testkit::cluster::tail(&self.log, 40));
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A file the [`AckWriter`] wrote and the mount acknowledged: `dd
/// conv=fsync` exited 0, so `write`, `fsync` and `close` all succeeded.
#[derive(Clone, Debug)]
pub struct AckedFile {
    /// Path relative to the writer's directory.
    pub name: String,
    /// Its expected contents.
    pub contents: Vec<u8>,
}

/// Sizes the writer cycles through (plus a one-line header naming the
/// file): tiny, one page, around one 1 MiB block and across several blocks.
const WRITER_SIZES: [usize; 7] = [0, 1, 4096, 100_003, (1 << 20) - 1, (1 << 20) + 1, (5 << 19) + 17];

/// A writer in its own process (bash and `dd conv=fsync`, one new file after
/// another, into a directory on the mount) that records every file whose
/// write, fsync and close all succeeded. Failed files are counted and
/// skipped, never rewritten, so an acknowledged file is never touched again.
///
/// It is a separate process on purpose: a test process holding a file open
/// on the mount makes every process it spawns close that descriptor at
/// exec, which sends the FUSE daemon a flush that blocks while a daemon is
/// down, and with it the spawn (say, of the dirsvc that would end the
/// outage).
pub struct AckWriter {
    proc: Background,
    pool: Vec<Vec<u8>>,
    ack_file: PathBuf,
    err_file: PathBuf,
    stop_file: PathBuf,
}

impl AckWriter {
    /// Starts writing `w00000.bin`, `w00001.bin`, … into `dir` (created
    /// first); file `i` holds a header line and [`Pattern`] bytes from seed
    /// `seed + i % 7`. Its bookkeeping files go to `work` (off the mount).
    pub fn start(dir: &Path, work: &Path, seed: u64) -> AckWriter {
        Self::start_paced(dir, work, seed, Duration::ZERO)
    }

    /// As [`AckWriter::start`], with a `pause` after each acknowledged
    /// file (a steady trickle of writes that leaves the cluster to other
    /// work).
    pub fn start_paced(dir: &Path, work: &Path, seed: u64, pause: Duration) -> AckWriter {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let pool_dir = work.join("writer-pool");
        fs::create_dir_all(&pool_dir).expect("create writer pool dir");
        let pool: Vec<Vec<u8>> =
            WRITER_SIZES.iter().enumerate().map(|(k, &len)| Pattern::bytes(seed + k as u64, len)).collect();
        for (k, data) in pool.iter().enumerate() {
            fs::write(pool_dir.join(k.to_string()), data).expect("write writer pool file");
        }
        let (ack_file, err_file, stop_file) =
            (work.join("writer.acked"), work.join("writer.errors"), work.join("writer.stop"));
        for f in [&ack_file, &err_file, &stop_file] {
            let _ = fs::remove_file(f);
        }
        // Bounded: stops at the stop file, or after 100,000 files.
        let script = r#"
            dir=$1 pool=$2 ack=$3 err=$4 stop=$5 n=$6 pause=$7
            i=0
            while [ ! -e "$stop" ] && [ "$i" -lt 100000 ]; do
                k=$((i % n))
                f=$(printf 'w%05d.bin' "$i")
                if { printf 'file %s
' "$f"; cat "$pool/$k"; } |
                        dd of="$dir/$f" bs=1M iflag=fullblock conv=fsync status=none 2>>"$err"; then
                    echo "$f $k" >>"$ack"
                    sleep "$pause"
                else
                    echo "FAILED $f" >>"$err"
                    sleep 0.05
                fi
                i=$((i + 1))
            done
        "#;
        let proc = Background::spawn(
            Command::new("bash")
                .arg("-c")
                .arg(script)
                .arg("ack-writer")
                .arg(dir)
                .arg(&pool_dir)
                .arg(&ack_file)
                .arg(&err_file)
                .arg(&stop_file)
                .arg(WRITER_SIZES.len().to_string())
                .arg(format!("{:.3}", pause.as_secs_f64())),
            &work.join("writer.log"),
        );
        AckWriter { proc, pool, ack_file, err_file, stop_file }
    }

    /// Files acknowledged so far.
    pub fn acked_count(&self) -> usize {
        fs::read_to_string(&self.ack_file).map(|s| s.lines().count()).unwrap_or(0)
    }

    /// Files whose write, fsync or close failed so far.
    pub fn failures(&self) -> usize {
        fs::read_to_string(&self.err_file)
            .map(|s| s.lines().filter(|l| l.starts_with("FAILED ")).count())
            .unwrap_or(0)
    }

    /// Waits until at least `n` files are acknowledged; `false` on timeout.
    pub fn wait_acked(&self, n: usize, timeout: Duration) -> bool {
        testkit::wait_until(|| self.acked_count() >= n, timeout).is_some()
    }

    /// Stops the writer and waits (up to `timeout`) for the file in progress
    /// to finish. Returns the acknowledged files and the number of failed
    /// ones. Panics if the writer is stuck (a hung FUSE call).
    pub fn stop(self, timeout: Duration) -> (Vec<AckedFile>, usize) {
        fs::write(&self.stop_file, b"").expect("create writer stop file");
        let AckWriter { proc, pool, ack_file, err_file, .. } = self;
        proc.expect_success(timeout);
        let errs = fs::read_to_string(&err_file).unwrap_or_default();
        let failures = errs.lines().filter(|l| l.starts_with("FAILED ")).count();
        if !errs.is_empty() {
            let first: Vec<&str> = errs.lines().take(6).collect();
            eprintln!("writer: {failures} failed files; first error lines: {first:?}");
        }
        let acked = fs::read_to_string(&ack_file)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (name, k) = l.split_once(' ').unwrap_or_else(|| panic!("bad writer ack line {l:?}"));
                let k: usize = k.parse().unwrap_or_else(|e| panic!("bad writer ack line {l:?}: {e}"));
                let mut contents = format!("file {name}\n").into_bytes();
                contents.extend_from_slice(&pool[k]);
                AckedFile { name: name.to_string(), contents }
            })
            .collect();
        (acked, failures)
    }
}

/// Reads every acknowledged file back from `dir`; panics listing the files
/// that are missing or differ, with the number of wrong bytes.
pub fn assert_acked_intact(dir: &Path, acked: &[AckedFile]) {
    let mut bad = Vec::new();
    let mut wrong_bytes = 0u64;
    for f in acked {
        let p = dir.join(&f.name);
        match fs::read(&p) {
            Err(e) => bad.push(format!("{}: {e}", f.name)),
            Ok(got) => {
                let want = &f.contents;
                let diff = got.iter().zip(want.iter()).filter(|(a, b)| a != b).count() as u64
                    + got.len().abs_diff(want.len()) as u64;
                if diff > 0 {
                    wrong_bytes += diff;
                    bad.push(format!("{}: {} bytes, want {}, {diff} wrong", f.name, got.len(), want.len()));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} acknowledged files are missing or wrong ({wrong_bytes} wrong bytes), e.g. {:?}",
        bad.len(),
        acked.len(),
        bad.iter().take(10).collect::<Vec<_>>()
    );
}

/// A small deterministic random source (xorshift64*) for kill timings and
/// victims. Seeded from `P2PFS_TEST_SEED` when set, else from the clock;
/// the seed is printed so a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    /// A generator for the test named `what`, printing its seed.
    pub fn for_test(what: &str) -> Rng {
        let seed = std::env::var("P2PFS_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            t.as_nanos() as u64 ^ u64::from(std::process::id())
        });
        eprintln!("{what}: random seed {seed} (replay with P2PFS_TEST_SEED={seed})");
        Rng(seed | 1)
    }

    /// The next value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }

    /// A duration in `[lo, hi)` with millisecond steps.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi.saturating_sub(lo).as_millis() as u64).max(1);
        lo + Duration::from_millis(self.below(span))
    }
}

/// Where peer `i` keeps chunk `hex_id`: `data/<2 hex>/<64 hex>`.
pub fn chunk_path(c: &TestCluster, i: usize, hex_id: &str) -> PathBuf {
    c.peer_data_dir(i).join("data").join(&hex_id[..2]).join(hex_id)
}

/// Copies part of a real system tree into `dst` with `cp -a` (real names,
/// modes, symlinks and nesting): whole top-level entries of `/usr/include`
/// (or `/usr/share/doc`) until at least `min_files` files and symlinks,
/// skipping entries that would take it past twice that. Returns the count.
pub fn stage_system_tree(dst: &Path, min_files: usize) -> usize {
    for cand in ["/usr/include", "/usr/share/doc"] {
        let Ok(rd) = fs::read_dir(cand) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        entries.sort();
        let (mut picked, mut total) = (Vec::new(), 0usize);
        for e in entries {
            if total >= min_files {
                break;
            }
            let n = count_entries(&e);
            if total + n <= 2 * min_files {
                total += n;
                picked.push(e);
            }
        }
        if total >= min_files {
            fs::create_dir_all(dst).expect("create staging dir");
            run(Command::new("cp").arg("-a").args(&picked).arg(dst), Duration::from_secs(300));
            eprintln!("staged {total} files and symlinks from {cand} in {}", dst.display());
            return total;
        }
    }
    panic!("this test needs a tree of at least {min_files} files: neither /usr/include nor /usr/share/doc has one");
}

/// Regular files and symlinks at or under `p` (a symlink is not followed).
fn count_entries(p: &Path) -> usize {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::read_dir(p)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| count_entries(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) if m.is_file() || m.is_symlink() => 1,
        _ => 0,
    }
}
