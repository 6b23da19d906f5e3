//! The CLI without a mount (`fs-client put / get / ls / rm / cat`), `doctor`
//! and `undrain`, against real clusters:
//! - a 1 GiB file goes in with `put` and comes back with `get` identical
//!   (BLAKE3), with the memory of both bounded; files put without a mount
//!   are seen through a mount and files written through the mount are
//!   read by `get`/`cat`; `ls -l` and `rm` agree with the mount; errors
//!   name the path;
//! - `doctor` passes on a healthy cluster, and fails naming a
//!   world-readable identity and a stopped peer (id and address);
//! - a drained peer taken back with `undrain` is `up` again and gets new
//!   chunks.

use super::tools::{chunk_files, output, run, Pattern};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::cluster::{ClusterOpts, TestCluster};
use testkit::wait_until;

const CLI: Duration = Duration::from_secs(60);

/// `fs-client SUB --dirsvc ADDR -i IDENTITY ARGS…` of cluster `c`.
fn files(c: &TestCluster, sub: &str, args: &[&str]) -> Command {
    let mut cmd = c.fs_client();
    cmd.arg(sub).arg("--dirsvc").arg(c.dirsvc_addr().to_string()).arg("-i").arg(c.identity_file());
    cmd.args(args);
    cmd
}

/// Runs `cmd`, expecting exit status 1 and `want` in its stderr.
fn fails_with(cmd: &mut Command, want: &str) {
    let out = output(cmd, CLI);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{cmd:?} should exit 1; stderr: {err}");
    assert!(err.contains(want), "{cmd:?}: stderr should say {want:?}, said: {err}");
}

/// Runs `cmd` and returns (seconds taken, highest resident set size seen
/// in bytes, polling /proc every 50 ms).
fn timed_with_rss(cmd: &mut Command) -> (f64, u64) {
    let started = Instant::now();
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Ok(s) = fs::read_to_string(&status_file) {
            for l in s.lines() {
                if let Some(v) = l.strip_prefix("VmHWM:") {
                    let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak = peak.max(kib << 10);
                }
            }
        }
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "{cmd:?} did not finish in 180 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "{cmd:?} failed with {status}: {err}");
    (started.elapsed().as_secs_f64(), peak)
}

#[test]
fn put_and_get_round_trip_a_1gib_file_and_agree_with_a_mount() {
    const GIB: u64 = 1 << 30;
    let mut c = TestCluster::start_with(ClusterOpts::new(3, 2).exclusive());
    c.mount();
    let mnt = c.mountpoint();
    let work = c.work_dir();

    // Small files both ways: put → seen through the mount, same bytes.
    let small = work.join("small.bin");
    let bytes = Pattern::bytes(7, (3 << 20) + 123);
    fs::write(&small, &bytes).expect("write small file");
    run(&mut files(&c, "put", &[small.to_str().unwrap(), "/small.bin"]), CLI);
    assert_eq!(fs::read(mnt.join("small.bin")).expect("read through the mount"), bytes);
    // Into an existing directory, under the local name.
    fs::create_dir(mnt.join("dir")).expect("mkdir through the mount");
    run(&mut files(&c, "put", &[small.to_str().unwrap(), "/dir/"]), CLI);
    assert_eq!(fs::read(mnt.join("dir/small.bin")).expect("read through the mount"), bytes);
    // Written through the mount → read by cat and get.
    let text = b"written through the mount\n".repeat(1000);
    fs::write(mnt.join("dir/m.txt"), &text).expect("write through the mount");
    let out = output(&mut files(&c, "cat", &["/dir/m.txt"]), CLI);
    assert!(out.status.success(), "cat failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, text, "cat prints the file written through the mount");
    run(&mut files(&c, "get", &["/dir/m.txt", work.to_str().unwrap()]), CLI);
    assert_eq!(fs::read(work.join("m.txt")).expect("read got file"), text);

    // ls -l agrees with the mount's metadata.
    let ls = run(&mut files(&c, "ls", &["-l", "/dir"]), CLI);
    for name in ["small.bin", "m.txt"] {
        let meta = fs::metadata(mnt.join("dir").join(name)).expect("stat through the mount");
        let line =
            ls.lines().find(|l| l.ends_with(&format!(" {name}"))).unwrap_or_else(|| panic!("{name} in {ls}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[4], meta.len().to_string(), "size of {name} in `ls -l`: {line}");
        assert_eq!(
            u32::from_str_radix(&mode_bits(fields[0]), 8).ok(),
            Some(meta.permissions().mode() & 0o777)
        );
    }
    assert_eq!(run(&mut files(&c, "ls", &["/"]), CLI).lines().collect::<Vec<_>>(), ["dir", "small.bin"]);

    // Errors name the path; nothing is replaced without -f.
    fails_with(&mut files(&c, "cat", &["/nope"]), "fs-client: /nope: no such file or directory");
    fails_with(&mut files(&c, "get", &["/dir", work.to_str().unwrap()]), "/dir: is a directory");
    fails_with(&mut files(&c, "put", &[small.to_str().unwrap(), "/small.bin"]), "/small.bin: file exists");
    fails_with(&mut files(&c, "rm", &["/dir"]), "/dir: is a directory (use -r)");

    // rm agrees with the mount (the change feed tells it at once).
    run(&mut files(&c, "rm", &["/small.bin"]), CLI);
    assert!(
        wait_until(|| !mnt.join("small.bin").exists(), Duration::from_secs(5)).is_some(),
        "the mount still shows a file removed with `fs-client rm`"
    );
    run(&mut files(&c, "rm", &["-r", "/dir"]), CLI);
    assert!(wait_until(|| !mnt.join("dir").exists(), Duration::from_secs(5)).is_some(), "rm -r");

    // 1 GiB: put, get, same sha256; memory of the put stays bounded.
    let big = work.join("big.bin");
    let t = Instant::now();
    let want = write_hashed(&big, 42, GIB);
    eprintln!("made the 1 GiB source in {:.1} s", t.elapsed().as_secs_f64());
    let (put_s, put_rss) = timed_with_rss(&mut files(&c, "put", &[big.to_str().unwrap(), "/big.bin"]));
    let back = work.join("back.bin");
    let (get_s, get_rss) = timed_with_rss(&mut files(&c, "get", &["/big.bin", back.to_str().unwrap()]));
    let mib = (GIB >> 20) as f64;
    eprintln!(
        "1 GiB without a mount: put {put_s:.1} s ({:.0} MiB/s, peak RSS {} MiB), get {get_s:.1} s ({:.0} MiB/s, peak RSS {} MiB)",
        mib / put_s,
        put_rss >> 20,
        mib / get_s,
        get_rss >> 20
    );
    assert_eq!(fs::metadata(mnt.join("big.bin")).expect("stat through the mount").len(), GIB);
    fs::remove_file(&big).expect("remove source");
    assert_eq!(blake3_of(&back), want, "the file got back differs from the one put");
    fs::remove_file(&back).expect("remove copy");
    assert!(put_rss < 512 << 20, "put of 1 GiB peaked at {} MiB resident", put_rss >> 20);
    assert!(get_rss < 512 << 20, "get of 1 GiB peaked at {} MiB resident", get_rss >> 20);
    c.unmount();
    eprintln!("test took {:.1} s", c.elapsed().as_secs_f64());
}

/// Writes `len` bytes of the [`Pattern`] stream from `seed` to a new file
/// at `path`; returns their BLAKE3 hash.
fn write_hashed(path: &std::path::Path, seed: u64, len: u64) -> blake3::Hash {
    let mut f = fs::File::create(path).expect("create source");
    let mut p = Pattern::new(seed);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).expect("fits");
        p.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        f.write_all(&buf[..n]).expect("write source");
        left -= n as u64;
    }
    h.finalize()
}

/// BLAKE3 of the file at `path`.
fn blake3_of(path: &std::path::Path) -> blake3::Hash {
    let mut f = fs::File::open(path).expect("open copy");
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf).expect("read copy");
        if n == 0 {
            return h.finalize();
        }
        h.update(&buf[..n]);
    }
}

/// `-rw-r--r--` → `644`.
fn mode_bits(mode: &str) -> String {
    let b: Vec<char> = mode.chars().skip(1).collect();
    b.chunks(3)
        .map(|t| {
            let v =
                (t[0] == 'r') as u32 * 4 + (t[1] == 'w') as u32 * 2 + matches!(t[2], 'x' | 's' | 't') as u32;
            char::from_digit(v, 8).unwrap_or('?')
        })
        .collect()
}

#[test]
fn doctor_names_problems_and_undrain_takes_a_drain_back() {
    let mut c = TestCluster::start_with(ClusterOpts::fast(3, 2));
    let doctor = |c: &TestCluster| {
        let out = output(&mut files(c, "doctor", &[]), CLI);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };

    let (code, text) = doctor(&c);
    assert_eq!(code, Some(0), "doctor on a healthy cluster:\n{text}");
    assert!(text.contains("ok   write → read → verify"), "{text}");
    for i in 0..3 {
        assert!(text.contains(&c.peer_id(i).to_hex()), "doctor names peer {i}:\n{text}");
    }

    // Undrain: drained, taken back, up and placed on again.
    let id = c.peer_id(0).to_hex();
    let addr = c.dirsvc_addr().to_string();
    run(c.fs_client().args(["drain", "--dirsvc", &addr, &id]), CLI);
    c.wait_status("peer 0 drained", Duration::from_secs(20), |st| {
        st.peers.iter().any(|p| p.id == id && p.state == "drained")
    });
    let before = chunk_files(&c.peer_data_dir(0)).len();
    run(c.fs_client().args(["undrain", "--dirsvc", &addr, &id]), CLI);
    let st = c.status();
    assert!(st.peers.iter().any(|p| p.id == id && p.state == "up"), "after undrain:\n{}", st.raw);
    let src = c.work_dir().join("16m.bin");
    Pattern::write_file(&src, 3, 16 << 20);
    run(&mut files(&c, "put", &[src.to_str().unwrap(), "/16m.bin"]), CLI);
    let after = chunk_files(&c.peer_data_dir(0)).len();
    assert!(
        after > before,
        "no new chunk on the undrained peer ({before} before, {after} after 16 blocks at R=2 of 3)"
    );

    // A world-readable identity: named, with its fix.
    let identity = c.identity_file();
    fs::set_permissions(&identity, fs::Permissions::from_mode(0o644)).expect("chmod 644");
    let (code, text) = doctor(&c);
    fs::set_permissions(&identity, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    assert_eq!(code, Some(1), "doctor with a world-readable identity:\n{text}");
    let line = text.lines().find(|l| l.starts_with("FAIL") && l.contains(identity.to_str().unwrap()));
    let line = line.unwrap_or_else(|| panic!("no FAIL line names {}:\n{text}", identity.display()));
    assert!(line.contains("chmod 600"), "{line}");

    // A stopped peer: named by id and address.
    c.term_peer(1);
    let (code, text) = doctor(&c);
    assert_eq!(code, Some(1), "doctor with a stopped peer:\n{text}");
    let (pid, paddr) = (c.peer_id(1).to_hex(), c.peer_addr(1).to_string());
    assert!(
        text.lines().any(|l| l.starts_with("FAIL") && l.contains(&pid) && l.contains(&paddr)),
        "no FAIL line names peer {pid} at {paddr}:\n{text}"
    );
    eprintln!("test took {:.1} s", c.elapsed().as_secs_f64());
}
