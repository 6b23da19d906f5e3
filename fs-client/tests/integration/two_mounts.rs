//! Two fs-client processes mounting one volume, as two machines would
//! (issue 3, "Two mounts"): close-to-open consistency (what one mount wrote
//! and closed, the other reads after its next open, content and size),
//! renames and unlinks visible in lookup and readdir, appends from both
//! mounts under `flock` losing nothing, and POSIX byte-range locks held
//! across mounts through dirsvc, released when the holder exits or its
//! fs-client is killed.

use super::tools::{run, Background, Pattern};
use super::workloads::{pread_all, report, Interactive, TOOL_TIMEOUT};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::cluster::{ClusterOpts, TestCluster};
use testkit::wait_until;

/// How soon a rename or unlink on one mount must show on the other: the
/// kernel may keep a directory entry for the entry TTL (1 s) unless it is
/// told otherwise, plus margin for a loaded machine.
const VISIBLE_WITHIN: Duration = Duration::from_secs(3);

/// Lines each of the two appending processes writes.
const APPENDS: usize = 200;

/// The session lease the lock test gives dirsvc (`--session-lease-ms`).
const LEASE: Duration = Duration::from_millis(2000);

/// A cluster of 3 peers with R = 2 and both mounts up.
fn two_mounts(opts: ClusterOpts) -> TestCluster {
    let mut c = TestCluster::start_with(opts);
    c.mount();
    c.mount_second();
    c
}

/// Writes `data` to `path` (create or truncate) and closes it.
fn write_close(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    drop(f);
}

/// Opens `path`, checks its size by fstat and its bytes by read.
fn assert_reads(path: &Path, want: &[u8], when: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("{when}: open {}: {e}", path.display()));
    let size = f.metadata().expect("fstat").len();
    let got = pread_all(&f);
    assert_eq!(size, want.len() as u64, "{when}: size of {} by fstat after open", path.display());
    assert!(
        got == want,
        "{when}: {} read {} bytes{} instead of the {} written on the other mount",
        path.display(),
        got.len(),
        match got.iter().zip(want).position(|(a, b)| a != b) {
            Some(i) => format!(" differing at byte {i}"),
            None => String::new(),
        },
        want.len()
    );
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn write_and_close_on_one_mount_is_read_with_its_new_content_and_size_after_open_on_the_other() {
    let c = two_mounts(ClusterOpts::new(3, 2));
    let (a, b) = (c.mountpoint(), c.second_mountpoint());
    fs::create_dir(a.join("shared")).unwrap();
    let (fa, fb) = (a.join("shared/f.bin"), b.join("shared/f.bin"));

    let v1 = Pattern::bytes(1, 10_000);
    write_close(&fa, &v1);
    assert_reads(&fb, &v1, "first write");
    // B now has v1 in its caches. A rewrites with more blocks, then less.
    let v2 = Pattern::bytes(2, 3 * (1 << 20) + 17);
    write_close(&fa, &v2);
    assert_reads(&fb, &v2, "rewrite to 3 MiB + 17");
    assert_eq!(fs::metadata(&fb).unwrap().len(), v2.len() as u64, "stat on B after the rewrite");
    let v3 = Pattern::bytes(3, 5_000);
    write_close(&fa, &v3);
    assert_reads(&fb, &v3, "rewrite to 5,000 bytes");

    // An append and a truncate by A, each closed, then opened on B.
    let tail = Pattern::bytes(4, 70_000);
    let mut f = OpenOptions::new().append(true).open(&fa).unwrap();
    f.write_all(&tail).unwrap();
    drop(f);
    let v4 = [v3.clone(), tail].concat();
    assert_reads(&fb, &v4, "append");
    OpenOptions::new().write(true).open(&fa).unwrap().set_len(1234).unwrap();
    assert_reads(&fb, &v4[..1234], "truncate by A");

    // And the other way round: B writes, A reads.
    let v5 = Pattern::bytes(5, 200_000);
    write_close(&fb, &v5);
    assert_reads(&fa, &v5, "write on B, read on A");
    report("two mounts: close-to-open", &c);
}

#[test]
fn rename_and_unlink_on_one_mount_are_visible_on_the_other_in_lookup_and_readdir() {
    let c = two_mounts(ClusterOpts::new(3, 2));
    let (a, b) = (c.mountpoint(), c.second_mountpoint());
    fs::create_dir_all(a.join("d/sub")).unwrap();
    write_close(&a.join("d/one"), b"one\n");
    write_close(&a.join("d/two"), b"two\n");
    write_close(&a.join("d/three"), b"three\n");
    write_close(&a.join("d/target"), b"old target\n");
    // B looks everything up first, so its kernel caches the entries.
    assert_eq!(names(&b.join("d")), ["one", "sub", "target", "three", "two"].map(String::from).into());
    for n in ["one", "two", "three", "target"] {
        fs::metadata(b.join("d").join(n)).unwrap();
    }
    assert_eq!(fs::read(b.join("d/target")).unwrap(), b"old target\n");

    fs::rename(a.join("d/one"), a.join("d/uno")).unwrap();
    fs::rename(a.join("d/two"), a.join("d/sub/two")).unwrap();
    fs::remove_file(a.join("d/three")).unwrap();
    write_close(&a.join("d/new-target"), b"new target\n");
    fs::rename(a.join("d/new-target"), a.join("d/target")).unwrap();

    let want: BTreeSet<String> = ["sub", "target", "uno"].map(String::from).into();
    let mut last = String::new();
    let took = wait_until(
        || {
            let gone =
                |p: &Path| matches!(fs::symlink_metadata(p), Err(e) if e.kind() == ErrorKind::NotFound);
            let listing = names(&b.join("d"));
            let target = fs::read(b.join("d/target")).unwrap_or_default();
            let ok = listing == want
                && gone(&b.join("d/one"))
                && gone(&b.join("d/two"))
                && gone(&b.join("d/three"))
                && fs::read(b.join("d/uno")).is_ok_and(|d| d == b"one\n")
                && fs::read(b.join("d/sub/two")).is_ok_and(|d| d == b"two\n")
                && target == b"new target\n";
            last = format!(
                "readdir {listing:?}; one/two/three present: {}/{}/{}; target reads {:?}",
                !gone(&b.join("d/one")),
                !gone(&b.join("d/two")),
                !gone(&b.join("d/three")),
                String::from_utf8_lossy(&target)
            );
            ok
        },
        VISIBLE_WITHIN,
    );
    let took = took.unwrap_or_else(|| {
        panic!("B did not see A's renames and unlink within {VISIBLE_WITHIN:?}; last seen: {last}")
    });
    eprintln!("two mounts: renames and unlink visible on B after {:.2} s", took.as_secs_f64());

    // The other way: B removes a directory A has looked up.
    fs::metadata(a.join("d/sub/two")).unwrap();
    fs::remove_file(b.join("d/sub/two")).unwrap();
    fs::remove_dir(b.join("d/sub")).unwrap();
    let took =
        wait_until(|| !a.join("d/sub").exists() && !names(&a.join("d")).contains("sub"), VISIBLE_WITHIN)
            .unwrap_or_else(|| panic!("A still sees d/sub {VISIBLE_WITHIN:?} after B removed it"));
    eprintln!("two mounts: rmdir on B visible on A after {:.2} s", took.as_secs_f64());
    report("two mounts: rename/unlink visibility", &c);
}

/// A bash loop that appends `n` lines to `log`, each under an exclusive
/// `flock(1)` on `lock` and through a fresh `>>` (O_APPEND) open and close.
fn appender(id: &str, lock: &Path, log: &Path, n: usize) -> Command {
    let script = r#"
        set -eu
        exec 9>>"$LOCK"
        pad=$(printf '%080d' 0)
        for i in $(seq 1 "$N"); do
            flock -x 9
            printf '%s %04d %s\n' "$ID" "$i" "$pad" >> "$LOG"
            flock -u 9
        done
    "#;
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(script).env("LOCK", lock).env("LOG", log).env("ID", id).env("N", n.to_string());
    cmd
}

#[test]
fn appends_from_both_mounts_under_flock_lose_no_line() {
    let c = two_mounts(ClusterOpts::new(3, 2));
    let (a, b) = (c.mountpoint(), c.second_mountpoint());
    write_close(&a.join("lock"), b"");
    write_close(&a.join("log"), b"");
    let logs = c.work_dir();
    let pa = Background::spawn(
        &mut appender("A", &a.join("lock"), &a.join("log"), APPENDS),
        &logs.join("append-a.log"),
    );
    let pb = Background::spawn(
        &mut appender("B", &b.join("lock"), &b.join("log"), APPENDS),
        &logs.join("append-b.log"),
    );
    pa.expect_success(TOOL_TIMEOUT);
    pb.expect_success(TOOL_TIMEOUT);

    let pad = "0".repeat(80);
    for (mnt, which) in [(&a, "A"), (&b, "B")] {
        let text = fs::read(mnt.join("log")).unwrap();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let intact: Vec<(&str, usize)> = lines
            .iter()
            .filter_map(|l| {
                let mut w = l.split(' ');
                let (id, i, p) = (w.next()?, w.next()?, w.next()?);
                (w.next().is_none() && (id == "A" || id == "B") && p == pad).then_some((id, i.parse().ok()?))
            })
            .collect();
        for id in ["A", "B"] {
            let seq: Vec<usize> = intact.iter().filter(|(x, _)| *x == id).map(|(_, i)| *i).collect();
            assert_eq!(
                seq,
                (1..=APPENDS).collect::<Vec<_>>(),
                "read on mount {which}: the lines of process {id} are not exactly 1..={APPENDS} in order \
                 ({} lines in all, {} intact, file {} bytes)",
                lines.len(),
                intact.len(),
                text.len()
            );
        }
        assert_eq!(lines.len(), 2 * APPENDS, "read on mount {which}: line count");
        assert_eq!(text.len(), 2 * APPENDS * (2 + 5 + 81), "read on mount {which}: file size");
    }
    report("two mounts: flock appends", &c);
}

/// A python3 process that takes a POSIX write lock (`F_SETLK`) on bytes
/// `[start, start+len)` of `path`, prints `locked`, and then holds it until
/// killed (it sleeps reading its stdin).
fn lock_holder(c: &TestCluster, path: &Path, start: u64, len: u64, name: &str) -> Interactive {
    let script = "import fcntl, os, sys\n\
                  fd = os.open(sys.argv[1], os.O_RDWR)\n\
                  fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, int(sys.argv[3]), int(sys.argv[2]))\n\
                  print('locked', flush=True)\n\
                  sys.stdin.read()\n";
    let mut h = Interactive::spawn(
        Command::new("python3").arg("-c").arg(script).arg(path).arg(start.to_string()).arg(len.to_string()),
        &c.work_dir().join(format!("{name}.stderr")),
    );
    h.expect_line("locked", TOOL_TIMEOUT);
    h
}

/// Tries `F_SETLK` of a write lock on `[start, start+len)` of `path` from
/// a new python3 process, which then exits: `"granted"` or `"blocked"`
/// (EAGAIN or EACCES); panics on any other outcome.
fn probe_lock(path: &Path, start: u64, len: u64) -> String {
    let script = "import errno, fcntl, os, sys\n\
                  fd = os.open(sys.argv[1], os.O_RDWR)\n\
                  try:\n    \
                      fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, int(sys.argv[3]), int(sys.argv[2]))\n    \
                      print('granted')\n\
                  except OSError as e:\n    \
                      if e.errno not in (errno.EAGAIN, errno.EACCES):\n        \
                          raise\n    \
                      print('blocked')\n";
    let out = run(
        Command::new("python3").arg("-c").arg(script).arg(path).arg(start.to_string()).arg(len.to_string()),
        TOOL_TIMEOUT,
    );
    out.trim().to_string()
}

/// `F_SETLK` of a write lock on `[start, start+len)` of `f`: Ok, or the
/// errno (EAGAIN or EACCES when another owner holds a conflicting lock).
fn try_lock(f: &File, start: u64, len: u64) -> Result<(), i32> {
    // SAFETY: flock is plain old data; all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    // SAFETY: a valid fd and a valid flock out-pointer for the call.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Releases this process's locks on `[start, start+len)` of `f`.
fn unlock(f: &File, start: u64, len: u64) {
    // SAFETY: as in `try_lock`.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_UNLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    // SAFETY: as in `try_lock`.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
    assert_eq!(rc, 0, "F_UNLCK: {}", std::io::Error::last_os_error());
}

fn assert_blocked(f: &File, start: u64, len: u64, when: &str) {
    match try_lock(f, start, len) {
        Err(e) if e == libc::EAGAIN || e == libc::EACCES => {}
        Err(e) => panic!("{when}: F_SETLK on the other mount failed with errno {e}, not EAGAIN"),
        Ok(()) => panic!("{when}: F_SETLK of bytes {start}..{} on the other mount was granted", start + len),
    }
}

#[test]
fn fcntl_byte_range_lock_on_one_mount_blocks_the_other_until_its_holder_exits() {
    let c = two_mounts(ClusterOpts::new(3, 2));
    write_close(&c.mountpoint().join("locked.bin"), &[0u8; 4096]);
    let mut holder = lock_holder(&c, &c.mountpoint().join("locked.bin"), 0, 100, "holder");
    let fb =
        OpenOptions::new().read(true).write(true).open(c.second_mountpoint().join("locked.bin")).unwrap();

    assert_blocked(&fb, 50, 100, "while A's holder locks bytes 0..100");
    assert_blocked(&fb, 0, 0, "a whole-file lock while A's holder locks bytes 0..100");
    // A byte range, not the whole file: the bytes after it are free.
    try_lock(&fb, 100, 100).unwrap_or_else(|e| panic!("bytes 100..200 are not locked by A, yet errno {e}"));
    unlock(&fb, 100, 100);

    // The holder's exit (SIGKILL) releases its lock by the time it is reaped.
    holder.kill9();
    try_lock(&fb, 0, 100)
        .unwrap_or_else(|e| panic!("A's holder exited, yet bytes 0..100 still fail with errno {e}"));
    // And now B holds it against another process on A (not this one: a
    // process never conflicts with its own locks).
    let on_a = c.mountpoint().join("locked.bin");
    assert_eq!(probe_lock(&on_a, 0, 10), "blocked", "a process on A while B holds bytes 0..100");
    unlock(&fb, 0, 100);
    assert_eq!(probe_lock(&on_a, 0, 10), "granted", "a process on A after B unlocked bytes 0..100");
    report("two mounts: fcntl lock and holder exit", &c);
}

#[test]
fn fcntl_lock_of_a_killed_client_is_released_after_the_session_lease() {
    let lease_ms = LEASE.as_millis().to_string();
    let mut c = two_mounts(ClusterOpts::new(3, 2).dirsvc_flag("--session-lease-ms", &lease_ms));
    // Here the holder is on the second mount and the first one checks.
    let (a, b) = (c.mountpoint(), c.second_mountpoint());
    write_close(&a.join("locked.bin"), &[0u8; 4096]);
    // The holder stays alive: only its fs-client dies.
    let _holder = lock_holder(&c, &b.join("locked.bin"), 0, 100, "holder");
    let fa = OpenOptions::new().read(true).write(true).open(a.join("locked.bin")).unwrap();
    assert_blocked(&fa, 0, 100, "while the second mount's holder locks bytes 0..100");

    c.kill9_second_client();
    let bound = 3 * LEASE + Duration::from_secs(2);
    let took = wait_until(|| try_lock(&fa, 0, 100).is_ok(), bound).unwrap_or_else(|| {
        panic!(
            "the second fs-client was killed -9 with a lock held; the first mount still cannot take \
             it {bound:?} later (session lease {LEASE:?})"
        )
    });
    eprintln!(
        "two mounts: lock of a killed client released after {:.2} s (lease {:.1} s)",
        took.as_secs_f64(),
        LEASE.as_secs_f64()
    );
    unlock(&fa, 0, 100);
    // The volume stays usable, and a new second client sees what A wrote.
    write_close(&a.join("after.txt"), b"after\n");
    c.mount_second();
    assert_eq!(fs::read(b.join("after.txt")).unwrap(), b"after\n");
    report("two mounts: lock of a killed client", &c);
}
