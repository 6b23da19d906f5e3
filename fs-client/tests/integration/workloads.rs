//! The ordinary tools of issue 3's "Done when", each run on a real mount:
//! `git clone` of a repository with history (then `fsck`, `gc`, `status`, a
//! new commit, a remount), `rsync -aHAXS` of a tree with hard links,
//! symlinks, xattrs and a sparse file (then a checksum dry run that must
//! find nothing to transfer), `tar` create, extract and `--compare` with
//! times kept, a sqlite3 WAL database (10,000 inserts, VACUUM, integrity
//! check, and its write lock blocking a second process), and an editor's
//! save by rename, which must keep the mode and leave an already open fd on
//! the old content.
//!
//! Each test builds its input outside the mount (in the cluster's work
//! dir), checks the result with the tool itself and again field by field
//! from Rust, and prints its duration to stderr. Also home of the helpers
//! the two-mount tests share: [`Interactive`], xattr and time setters, and
//! [`assert_same_tree`].

use super::tools::{output, run, Pattern};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};
use testkit::cluster::TestCluster;

/// Bound on any one tool run (clone, rsync, tar, a sqlite3 script).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// 1 MiB.
const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// Helpers shared with the two-mount tests.
// ---------------------------------------------------------------------------

/// A child process driven line by line: commands go to its stdin, its
/// stdout lines are read with a deadline. Used for a sqlite3 shell that
/// holds a transaction open, and for lock holders. Dropping it SIGKILLs and
/// reaps the process if it still runs (only this child, by its pid).
pub struct Interactive {
    desc: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr_log: PathBuf,
}

impl Interactive {
    /// Starts `cmd` with piped stdin and stdout; its stderr goes to
    /// `stderr_log` (shown when an expectation fails).
    pub fn spawn(cmd: &mut Command, stderr_log: &Path) -> Interactive {
        let desc = format!("{cmd:?}");
        let err = File::create(stderr_log).expect("create stderr log");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Interactive { desc, child, stdin, lines, stderr_log: stderr_log.to_path_buf() }
    }

    /// Writes `text` to the child's stdin.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(text.as_bytes()).and_then(|()| stdin.flush()).unwrap_or_else(|e| {
            panic!("{}: write to stdin failed: {e}\nstderr:\n{}", self.desc, self.stderr())
        });
    }

    /// Closes the child's stdin (end of its input).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Reads stdout lines until one equals `want`; panics after `timeout`
    /// or at end of output, with every line seen and the stderr log.
    pub fn expect_line(&mut self, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.trim() == want => return,
                Ok(l) => seen.push(l),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no line {want:?} within {timeout:?}; stdout so far: {seen:?}\nstderr:\n{}",
                    self.desc,
                    self.stderr()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: output ended ({:?}) without a line {want:?}; stdout: {seen:?}\nstderr:\n{}",
                    self.desc,
                    self.child.try_wait(),
                    self.stderr()
                ),
            }
        }
    }

    /// Waits up to `timeout` for the child to exit 0; panics otherwise.
    pub fn expect_success(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait().expect("wait for child") {
                Some(st) if st.success() => return,
                Some(st) => panic!("{} exited with {st}\nstderr:\n{}", self.desc, self.stderr()),
                None if Instant::now() >= deadline => {
                    panic!("{} did not exit within {timeout:?}\nstderr:\n{}", self.desc, self.stderr())
                }
                None => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// SIGKILLs the child and reaps it (it must die within 10 s).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) {
            assert!(Instant::now() < deadline, "{} survived SIGKILL for 10 s", self.desc);
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path has no NUL")
}

/// `lsetxattr(path, name, value, 0)`; panics with the errno on failure.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let (p, n) = (cpath(path), CString::new(name).expect("name has no NUL"));
    // SAFETY: valid NUL-terminated strings and a valid buffer of that length.
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert!(rc == 0, "setxattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Every extended attribute of `path` (not following a symlink): name →
/// value, or the error of `llistxattr`/`lgetxattr`.
pub fn xattrs(path: &Path) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let p = cpath(path);
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: valid path and a buffer of the length given.
    let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    names.truncate(n as usize);
    let mut out = BTreeMap::new();
    for name in names.split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let cname = CString::new(name).expect("xattr names have no NUL");
        let mut val = vec![0u8; 64 * 1024];
        // SAFETY: valid strings and a buffer of the length given.
        let len = unsafe { libc::lgetxattr(p.as_ptr(), cname.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if len < 0 {
            return Err(std::io::Error::last_os_error());
        }
        val.truncate(len as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), val);
    }
    Ok(out)
}

/// Sets atime and mtime of `path` without following a symlink.
pub fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let ts = [
        libc::timespec { tv_sec: atime.0, tv_nsec: atime.1 },
        libc::timespec { tv_sec: mtime.0, tv_nsec: mtime.1 },
    ];
    let p = cpath(path);
    // SAFETY: valid path and a two-element timespec array.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert!(rc == 0, "utimensat {}: {}", path.display(), std::io::Error::last_os_error());
}

/// `lchown(path, uid, gid)`.
pub fn lchown(path: &Path, uid: u32, gid: u32) {
    let p = cpath(path);
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::lchown(p.as_ptr(), uid, gid) };
    assert!(rc == 0, "lchown {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Every path under `root`, relative to it, sorted, parents before
/// children, skipping the top-level names in `skip`.
pub fn walk(root: &Path, skip: &[&str]) -> Vec<PathBuf> {
    fn go(root: &Path, rel: &Path, skip: &[&str], out: &mut Vec<PathBuf>) {
        let dir = root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").file_name())
            .collect();
        names.sort();
        for name in names {
            if rel.as_os_str().is_empty() && skip.iter().any(|s| name == *s) {
                continue;
            }
            let r = rel.join(&name);
            out.push(r.clone());
            if fs::symlink_metadata(root.join(&r)).is_ok_and(|m| m.is_dir()) {
                go(root, &r, skip, out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, Path::new(""), skip, &mut out);
    out
}

/// What [`assert_same_tree`] compares besides names, types, sizes, contents
/// and symlink targets (always compared).
#[derive(Clone, Copy, Debug)]
pub struct Compare {
    /// Permission bits, uid and gid.
    pub owner_and_mode: bool,
    /// mtime to the nanosecond, of every entry (directories and symlinks too).
    pub mtimes: bool,
    /// Hard-link groups: names sharing an inode in one tree share one in the
    /// other, with the same link count.
    pub hard_links: bool,
    /// `user.*` extended attributes of files and directories.
    pub xattrs: bool,
}

/// Checks that `dst` holds exactly the entries of `src` (minus top-level
/// `skip`), each with the same type, size, bytes and symlink target, plus
/// what `what` asks for. Returns the number of entries compared.
pub fn assert_same_tree(src: &Path, dst: &Path, skip: &[&str], what: Compare) -> usize {
    let (a_paths, b_paths) = (walk(src, skip), walk(dst, skip));
    assert_eq!(a_paths, b_paths, "the copy at {} lists other names than {}", dst.display(), src.display());
    let mut links: BTreeMap<u64, u64> = BTreeMap::new();
    for rel in &a_paths {
        let (pa, pb) = (src.join(rel), dst.join(rel));
        let a = fs::symlink_metadata(&pa).expect("stat source");
        let b = fs::symlink_metadata(&pb).unwrap_or_else(|e| panic!("stat {}: {e}", pb.display()));
        let name = rel.display();
        assert_eq!(a.file_type(), b.file_type(), "type of {name}");
        if a.is_file() {
            assert_eq!(a.len(), b.len(), "size of {name}");
            assert_same_bytes(&pa, &pb);
        }
        if a.file_type().is_symlink() {
            assert_eq!(fs::read_link(&pa).ok(), fs::read_link(&pb).ok(), "target of symlink {name}");
        }
        if what.owner_and_mode {
            assert_eq!(
                a.mode() & 0o7777,
                b.mode() & 0o7777,
                "mode of {name}: {:o} vs {:o}",
                a.mode(),
                b.mode()
            );
            assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "owner of {name}");
        }
        if what.mtimes {
            assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()), "mtime of {name}");
        }
        if what.hard_links && a.is_file() {
            assert_eq!(a.nlink(), b.nlink(), "link count of {name}");
            if a.nlink() > 1 {
                let first = *links.entry(a.ino()).or_insert(b.ino());
                assert_eq!(first, b.ino(), "{name} is not the same inode as its other links in the copy");
            }
        }
        if what.xattrs && !a.file_type().is_symlink() {
            let user = |p: &Path| -> BTreeMap<String, Vec<u8>> {
                xattrs(p)
                    .unwrap_or_else(|e| panic!("list xattrs of {}: {e}", p.display()))
                    .into_iter()
                    .filter(|(k, _)| k.starts_with("user."))
                    .collect()
            };
            assert_eq!(user(&pa), user(&pb), "user.* xattrs of {name}");
        }
    }
    a_paths.len()
}

/// Compares two files byte by byte in 1 MiB pieces (for large sparse files
/// as much as small ones); panics at the first difference.
pub fn assert_same_bytes(a: &Path, b: &Path) {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut at = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba, a);
        let nb = read_full(&mut fb, &mut bb, b);
        if let Some(i) = ba[..na.min(nb)].iter().zip(&bb[..na.min(nb)]).position(|(x, y)| x != y) {
            panic!("{} and {} differ first at byte {}", a.display(), b.display(), at + i as u64);
        }
        assert_eq!(na, nb, "{} and {} differ in length near byte {at}", a.display(), b.display());
        if na == 0 {
            return;
        }
        at += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8], p: &Path) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => panic!("read {}: {e}", p.display()),
        }
    }
    n
}

/// Prints how long a test has taken so far, cluster start-up included
/// (the CI budget is tracked from these lines).
pub fn report(test: &str, c: &TestCluster) {
    eprintln!("{test}: {:.1} s", c.elapsed().as_secs_f64());
}

/// A cluster of 3 peers with R = 2, mounted.
fn mounted() -> TestCluster {
    let mut c = TestCluster::start(3, 2);
    c.mount();
    c
}

// ---------------------------------------------------------------------------
// git
// ---------------------------------------------------------------------------

/// A `git` command in `dir`, isolated from any user or system config, with
/// fixed identities, no automatic gc (it would detach into the background
/// and outlive the test) and `core.fsync=all`, so files and directories are
/// fsynced as a careful user's git does.
fn git_cmd(home: &Path, dir: &Path, date: &str) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LC_ALL", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Ada Tester")
        .env("GIT_AUTHOR_EMAIL", "ada@example.invalid")
        .env("GIT_COMMITTER_NAME", "Ada Tester")
        .env("GIT_COMMITTER_EMAIL", "ada@example.invalid")
        .env("GIT_AUTHOR_DATE", date)
        .env("GIT_COMMITTER_DATE", date)
        .args(["-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "core.fsync=all"])
        .args(["-c", "init.defaultBranch=main", "-c", "advice.detachedHead=false"]);
    cmd
}

/// A small repository with history in `src`: 5 commits on two branches
/// with a merge, an annotated and a lightweight tag, binary files (one of
/// them over a block), an executable, a symlink, an empty file, a rename
/// and a deletion.
fn make_source_repo(home: &Path, src: &Path) {
    fs::create_dir_all(src).expect("create source repo dir");
    let mut day = 0;
    let mut git = |args: &[&str]| {
        day += 1;
        run(git_cmd(home, src, &format!("2024-01-{day:02}T12:00:00Z")).args(args), TOOL_TIMEOUT)
    };
    git(&["init", "-q"]);
    fs::write(src.join("README.md"), "# demo\n\nA repository for the p2pfs git test.\n").unwrap();
    fs::create_dir_all(src.join("data")).unwrap();
    fs::create_dir_all(src.join("tools")).unwrap();
    fs::write(src.join("data/blob.bin"), Pattern::bytes(1, 300_000)).unwrap();
    fs::write(src.join("data/zeros.bin"), vec![0u8; 65_536]).unwrap();
    fs::write(src.join("data/empty"), b"").unwrap();
    fs::write(src.join("tools/run.sh"), "#!/bin/sh\necho run\n").unwrap();
    fs::set_permissions(src.join("tools/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("README.md", src.join("link")).unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "initial"]);
    git(&["switch", "-q", "-c", "feature"]);
    fs::write(src.join("data/big.bin"), Pattern::bytes(2, 1_500_000)).unwrap();
    fs::write(src.join("tools/run.sh"), "#!/bin/sh\necho run feature\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "feature: big file"]);
    git(&["switch", "-q", "main"]);
    fs::write(src.join("README.md"), "# demo\n\nChanged on main.\n").unwrap();
    git(&["commit", "-q", "-am", "main: readme"]);
    git(&["merge", "-q", "--no-ff", "-m", "merge feature", "feature"]);
    git(&["tag", "-a", "v1", "-m", "release 1"]);
    git(&["mv", "data/zeros.bin", "data/zeros-renamed.bin"]);
    git(&["rm", "-q", "data/empty"]);
    git(&["commit", "-q", "-m", "rename and delete"]);
    git(&["tag", "light"]);
}

#[test]
fn git_clone_of_a_repository_with_history_onto_the_mount_passes_fsck_and_gc_and_stays_clean() {
    let mut c = mounted();
    let home = c.work_dir();
    let src = c.work_dir().join("src");
    make_source_repo(&home, &src);
    let clone = c.mountpoint().join("clone");
    let date = "2024-02-01T12:00:00Z";
    let git = |dir: &Path, args: &[&str]| run(git_cmd(&home, dir, date).args(args), TOOL_TIMEOUT);

    // A plain local clone: git copies the object files (hard links cannot
    // cross filesystems) and checks out main.
    git(&c.work_dir(), &["clone", "-q", src.to_str().unwrap(), clone.to_str().unwrap()]);
    git(&clone, &["fsck", "--full", "--strict", "--no-dangling"]);
    let status = git(&clone, &["status", "--porcelain"]);
    assert_eq!(status, "", "git status after the clone is not clean");

    // The history is the source's, commit for commit, and so are the tags.
    let log = |dir: &Path, rev: &str| git(dir, &["log", "--format=%H %T %P %an %ad %s", rev]);
    assert_eq!(log(&clone, "HEAD"), log(&src, "main"), "history of main");
    assert_eq!(log(&clone, "origin/feature"), log(&src, "feature"), "history of feature");
    let revs = |dir: &Path, names: &[&str]| git(dir, &[&["rev-parse"][..], names].concat());
    assert_eq!(
        revs(&clone, &["v1", "v1^{commit}", "light", "origin/main", "origin/feature"]),
        revs(&src, &["v1", "v1^{commit}", "light", "main", "feature"]),
        "tags and branch heads"
    );
    // The checkout: same bytes, the executable bit, the symlink.
    let what = Compare { owner_and_mode: false, mtimes: false, hard_links: false, xattrs: false };
    assert_same_tree(&src, &clone, &[".git"], what);
    let mode = fs::metadata(clone.join("tools/run.sh")).unwrap().mode();
    assert_eq!(mode & 0o111, 0o111, "tools/run.sh lost its executable bits in the checkout: {mode:o}");

    // gc repacks, renames packs into place and prunes every loose object.
    git(&clone, &["gc", "-q", "--prune=now"]);
    git(&clone, &["fsck", "--full", "--strict", "--no-dangling"]);
    let counts = git(&clone, &["count-objects", "-v"]);
    assert!(
        counts.contains("\ncount: 0\n") || counts.starts_with("count: 0\n"),
        "loose objects left:\n{counts}"
    );
    assert!(!counts.contains("\npacks: 0\n"), "no pack after gc:\n{counts}");
    assert_eq!(git(&clone, &["status", "--porcelain"]), "", "git status after gc");

    // Switching branches rewrites the worktree; a new commit on the mount.
    git(&clone, &["switch", "-q", "feature"]);
    assert_eq!(git(&clone, &["status", "--porcelain"]), "", "git status on feature");
    assert!(!clone.join("data/zeros-renamed.bin").exists(), "switch left a file of main behind");
    git(&clone, &["switch", "-q", "main"]);
    fs::write(clone.join("README.md"), "# demo\n\nEdited on the mount.\n").unwrap();
    fs::write(clone.join("data/new.bin"), Pattern::bytes(3, 200_000)).unwrap();
    git(&clone, &["add", "-A"]);
    git(&clone, &["commit", "-q", "-m", "commit made on p2pfs"]);
    assert_eq!(git(&clone, &["status", "--porcelain"]), "", "git status after the new commit");
    assert_eq!(git(&clone, &["log", "-1", "--format=%s"]).trim(), "commit made on p2pfs");
    let count =
        |dir: &Path, rev: &str| git(dir, &["rev-list", "--count", rev]).trim().parse::<u64>().unwrap();
    assert_eq!(count(&clone, "HEAD"), count(&src, "main") + 1, "commits on main after the new one");

    // Everything is still there for a new fs-client.
    c.unmount();
    c.mount();
    git(&clone, &["fsck", "--full", "--strict", "--no-dangling"]);
    assert_eq!(git(&clone, &["status", "--porcelain"]), "", "git status after a remount");
    assert_eq!(git(&clone, &["log", "-1", "--format=%s"]).trim(), "commit made on p2pfs", "after a remount");
    report("git clone/fsck/gc/commit", &c);
}

// ---------------------------------------------------------------------------
// rsync
// ---------------------------------------------------------------------------

/// Apparent size of the sparse file.
const SPARSE_LEN: u64 = 64 * MIB;

/// The data extents of the sparse file: (offset, length). Everything else
/// is a hole. Aligned and unaligned, at the start and up to the end.
const SPARSE_EXTENTS: &[(u64, u64)] =
    &[(0, 4096), (10 * MIB, MIB), (33 * MIB + 12_345, 100), (SPARSE_LEN - 65_536, 65_536)];

/// Writes the rsync source tree under `dir`: a file with three hard links
/// in three directories, relative, absolute and dangling symlinks, user.*
/// xattrs (binary, empty and 3000-byte values; on a file and a directory),
/// a FIFO, odd modes and owners, old mtimes, a 2.5 MiB file and
/// [`SPARSE_LEN`] sparse file. Returns the bytes of data in regular files
/// other than the sparse one.
fn make_rsync_tree(dir: &Path) -> u64 {
    fs::create_dir_all(dir.join("d1/d2")).unwrap();
    fs::write(dir.join("a.txt"), "linked three times\n").unwrap();
    fs::hard_link(dir.join("a.txt"), dir.join("d1/b.txt")).unwrap();
    fs::hard_link(dir.join("a.txt"), dir.join("d1/d2/c.txt")).unwrap();
    fs::write(dir.join("big.bin"), Pattern::bytes(10, 2_500_000)).unwrap();
    fs::write(dir.join("secret"), "mode 0600\n").unwrap();
    fs::set_permissions(dir.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(dir.join("d1/tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(dir.join("d1/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("d1/owned"), "owned by 1234:5678\n").unwrap();
    lchown(&dir.join("d1/owned"), 1234, 5678);
    std::os::unix::fs::symlink("a.txt", dir.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("../a.txt", dir.join("d1/link-up")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", dir.join("dangling")).unwrap();
    let fifo = cpath(&dir.join("fifo"));
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo in the work dir");

    set_xattr(&dir.join("a.txt"), "user.comment", b"hello from rsync");
    set_xattr(&dir.join("a.txt"), "user.binary", &(0..=255u8).collect::<Vec<_>>());
    set_xattr(&dir.join("a.txt"), "user.empty", b"");
    set_xattr(&dir.join("big.bin"), "user.large", &Pattern::bytes(11, 3000));
    set_xattr(&dir.join("d1"), "user.dir", b"on a directory");

    let f = OpenOptions::new().create(true).truncate(true).write(true).open(dir.join("sparse.bin")).unwrap();
    f.set_len(SPARSE_LEN).unwrap();
    for (i, &(off, len)) in SPARSE_EXTENTS.iter().enumerate() {
        f.write_all_at(&Pattern::bytes(20 + i as u64, len as usize), off).unwrap();
    }
    drop(f);

    // Old times on everything, children before parents: rsync compares
    // mtimes to the second, so a source time within the current second
    // would not be copied to the nanosecond (it is not on ext4 either).
    let mut entries = walk(dir, &[]);
    entries.reverse();
    for (i, rel) in entries.iter().enumerate() {
        let t = 1_300_000_000 + 3_600 * i as i64;
        set_times(&dir.join(rel), (t + 60, 0), (t, 123_456_789 + i as i64));
    }
    19 + 2_500_000 + 10 + 10 + 19
}

#[test]
fn rsync_of_hard_links_symlinks_xattrs_and_a_sparse_file_leaves_nothing_to_transfer_and_stores_no_holes() {
    let c = mounted();
    let src = c.work_dir().join("rs");
    let data = make_rsync_tree(&src);
    let dst = c.mountpoint().join("rs");
    let stored_before = c.data_bytes();

    // -S writes the zero runs of the sparse file as holes (lseek), as a
    // backup user would ask for; -H hard links, -A ACLs, -X xattrs.
    let from = format!("{}/", src.display());
    let to = format!("{}/", dst.display());
    let out = output(Command::new("rsync").args(["-aHAXS", &from, &to]), TOOL_TIMEOUT);
    assert!(
        out.status.success(),
        "rsync -aHAXS onto the mount failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // rsync itself, comparing checksums and every attribute, finds nothing.
    let again = output(
        Command::new("rsync").args(["-aHAXc", "--dry-run", "--itemize-changes", &from, &to]),
        TOOL_TIMEOUT,
    );
    let (stdout, stderr) = (String::from_utf8_lossy(&again.stdout), String::from_utf8_lossy(&again.stderr));
    assert!(
        again.status.success() && stdout.trim().is_empty(),
        "rsync -aHAXc --dry-run would still transfer ({}):\n{stdout}\nstderr:\n{stderr}",
        again.status
    );

    // And field by field: same links, times, modes, owners, xattrs, bytes.
    let all = Compare { owner_and_mode: true, mtimes: true, hard_links: true, xattrs: true };
    let n = assert_same_tree(&src, &dst, &[], all);
    let a = fs::metadata(dst.join("a.txt")).unwrap();
    assert_eq!(a.nlink(), 3, "a.txt in the copy has {} links, not 3", a.nlink());
    assert!(fs::symlink_metadata(dst.join("fifo")).unwrap().file_type().is_fifo(), "fifo is not a FIFO");

    // The holes are holes: st_blocks and what the peers store both stay far
    // below the apparent size. Each extent touches at most two blocks (1 MiB
    // default block size); allow that, R copies, and 1 MiB of slack per copy.
    let sparse = fs::metadata(dst.join("sparse.bin")).unwrap();
    assert_eq!(sparse.len(), SPARSE_LEN, "size of the sparse copy");
    let touched = 2 * SPARSE_EXTENTS.len() as u64 * MIB;
    let allocated = sparse.blocks() * 512;
    assert!(
        allocated <= touched,
        "du of the sparse copy: {allocated} bytes allocated for {} bytes of data (at most {touched} \
         expected; apparent size {SPARSE_LEN}): its holes were stored",
        SPARSE_EXTENTS.iter().map(|e| e.1).sum::<u64>()
    );
    let stored = c.data_bytes() - stored_before;
    let bound = 2 * (data + touched + MIB);
    assert!(
        stored <= bound,
        "the peers store {stored} bytes for the tree (R = 2; at most {bound} expected without the \
         sparse file's holes, {} with them)",
        2 * (data + SPARSE_LEN)
    );
    eprintln!("rsync: {n} entries; sparse file allocates {allocated} bytes; peers store {stored} bytes");
    report("rsync -aHAXS + checksum dry run", &c);
}

// ---------------------------------------------------------------------------
// tar
// ---------------------------------------------------------------------------

/// The tar source tree under `dir`: files at block boundaries, nested
/// directories, an executable, a private file, a foreign owner, a symlink,
/// a hard link, user.* xattrs, and a distinct old mtime with nanoseconds on
/// every entry (directories last, as their mtimes change with their
/// contents).
fn make_tar_tree(dir: &Path) {
    let files: &[(&str, u64)] = &[
        ("empty", 0),
        ("one", 1),
        ("a/page", 4095),
        ("a/b/over-block", MIB + 1),
        ("a/b/c/three", 3 * MIB),
        ("a/script.sh", 30),
        ("private", 12),
        ("owned", 9),
    ];
    for (i, &(name, len)) in files.iter().enumerate() {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, Pattern::bytes(100 + i as u64, len as usize)).unwrap();
    }
    fs::set_permissions(dir.join("a/script.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(dir.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
    lchown(&dir.join("owned"), 4321, 8765);
    std::os::unix::fs::symlink("b/c/three", dir.join("a/link")).unwrap();
    fs::hard_link(dir.join("one"), dir.join("a/b/one-again")).unwrap();
    set_xattr(&dir.join("a/page"), "user.mime_type", b"application/octet-stream");
    set_xattr(&dir.join("a/b"), "user.note", b"directory attribute");
    let mut entries = walk(dir, &[]);
    // Children before parents, so a directory's time is set after its contents.
    entries.reverse();
    for (i, rel) in entries.iter().enumerate() {
        let t = 1_000_000_000 + 86_400 * i as i64;
        set_times(&dir.join(rel), (t + 7, 0), (t, 100_000_000 + i as i64 * 1_111));
    }
    set_times(dir, (1_700_000_000, 0), (1_700_000_000, 999_999_999));
}

#[test]
fn tar_create_and_extract_on_the_mount_keep_times_modes_links_and_xattrs_and_compare_clean() {
    let c = mounted();
    let src = c.work_dir().join("tsrc");
    fs::create_dir_all(&src).unwrap();
    make_tar_tree(&src);
    let t = c.mountpoint().join("t");
    let x = t.join("x");
    fs::create_dir_all(&x).unwrap();
    let archive = t.join("a.tar");
    let tar = |args: &[&str]| {
        let out = output(Command::new("tar").args(args), TOOL_TIMEOUT);
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "tar {args:?} exited {} (expected 0 and no output)\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();

    // Create onto the mount (POSIX format: nanosecond times and xattrs), and
    // compare the archive, read back through the mount, with its source.
    tar(&["--format=posix", "--xattrs", "--xattrs-include=user.*", "-C", &s(&src), "-cf", &s(&archive), "."]);
    tar(&["--xattrs", "--xattrs-include=user.*", "-C", &s(&src), "-df", &s(&archive)]);
    // Extract on the mount, from the archive on the mount, then compare.
    tar(&["--xattrs", "--xattrs-include=user.*", "-p", "-C", &s(&x), "-xf", &s(&archive)]);
    tar(&["--xattrs", "--xattrs-include=user.*", "-C", &s(&x), "-df", &s(&archive)]);

    let all = Compare { owner_and_mode: true, mtimes: true, hard_links: true, xattrs: true };
    let n = assert_same_tree(&src, &x, &[], all);

    // Reading the extracted tree back: tar -c warns ("file changed as we
    // read it") if a size or ctime moves while it reads, and the new
    // archive must compare clean against the original source.
    let back = c.work_dir().join("back.tar");
    tar(&["--format=posix", "--xattrs", "--xattrs-include=user.*", "-C", &s(&x), "-cf", &s(&back), "."]);
    tar(&["--xattrs", "--xattrs-include=user.*", "-C", &s(&src), "-df", &s(&back)]);
    eprintln!("tar: {n} entries compared");
    report("tar create/extract/compare", &c);
}

// ---------------------------------------------------------------------------
// sqlite3
// ---------------------------------------------------------------------------

/// Rows inserted, as single INSERT statements.
const SQL_ROWS: u64 = 10_000;

/// Rows per transaction.
const SQL_TXN: u64 = 1_000;

/// Runs `sql` with the sqlite3 shell on `db` (read from a script file in the
/// work dir, so it can be long); returns stdout. Panics unless it exits 0.
fn sqlite(c: &TestCluster, db: &Path, sql: &str) -> String {
    let script = c.work_dir().join("script.sql");
    fs::write(&script, sql).unwrap();
    run(
        Command::new("sqlite3").args(["-batch", "-bail"]).arg(db).arg(format!(".read {}", script.display())),
        TOOL_TIMEOUT,
    )
}

#[test]
fn sqlite_wal_database_survives_inserts_and_vacuum_and_its_write_lock_blocks_a_second_process() {
    let mut c = mounted();
    let dir = c.mountpoint().join("db");
    fs::create_dir_all(&dir).unwrap();
    let db = dir.join("test.sqlite");

    let mode = sqlite(
        &c,
        &db,
        "PRAGMA journal_mode=WAL;\n\
         CREATE TABLE t(k INTEGER PRIMARY KEY, h TEXT NOT NULL, v BLOB NOT NULL);\n\
         CREATE INDEX t_h ON t(h);\n",
    );
    assert_eq!(mode.trim(), "wal", "journal mode");
    let mut sql = String::with_capacity(1 << 20);
    for k in 1..=SQL_ROWS {
        if k % SQL_TXN == 1 {
            sql.push_str("BEGIN;\n");
        }
        sql.push_str(&format!(
            "INSERT INTO t(k, h, v) VALUES ({k}, hex(randomblob(16)), zeroblob({}));\n",
            k % 500
        ));
        if k % SQL_TXN == 0 {
            sql.push_str("COMMIT;\n");
        }
    }
    let t0 = Instant::now();
    sqlite(&c, &db, &sql);
    let insert_secs = t0.elapsed().as_secs_f64();
    let want_sum: u64 = (1..=SQL_ROWS).sum();
    let got = sqlite(&c, &db, "SELECT count(*), sum(k) FROM t;\nPRAGMA integrity_check;\n");
    assert_eq!(got, format!("{SQL_ROWS}|{want_sum}\nok\n"), "after {SQL_ROWS} inserts");

    // Delete half, VACUUM (rewrites the whole file through the WAL), check.
    let pages = |c: &TestCluster| sqlite(c, &db, "PRAGMA page_count;").trim().parse::<u64>().unwrap();
    let before = pages(&c);
    let got = sqlite(
        &c,
        &db,
        "DELETE FROM t WHERE k % 2 = 0;\nVACUUM;\nPRAGMA integrity_check;\nPRAGMA journal_mode;\n\
         SELECT count(*) FROM t;\n",
    );
    assert_eq!(got, format!("ok\nwal\n{}\n", SQL_ROWS / 2), "after DELETE and VACUUM");
    let after = pages(&c);
    assert!(after < before, "VACUUM did not shrink the database: {before} pages before, {after} after");

    // Process A holds a write transaction; B, with no busy timeout, gets
    // SQLITE_BUSY; a reader still reads the last committed state (WAL).
    let mut a = Interactive::spawn(
        Command::new("sqlite3").args(["-batch"]).arg(&db),
        &c.work_dir().join("sqlite-a.stderr"),
    );
    a.send("BEGIN EXCLUSIVE;\nINSERT INTO t(k, h, v) VALUES (-1, 'a', x'00');\nSELECT 'locked';\n");
    a.expect_line("locked", TOOL_TIMEOUT);
    let insert_b = "INSERT INTO t(k, h, v) VALUES (-2, 'b', x'00');";
    let b = output(
        Command::new("sqlite3").args(["-batch", "-cmd", ".timeout 0"]).arg(&db).arg(insert_b),
        TOOL_TIMEOUT,
    );
    let b_err = String::from_utf8_lossy(&b.stderr);
    assert!(
        !b.status.success() && b_err.contains("database is locked"),
        "a second writer was not blocked while A held BEGIN EXCLUSIVE: exit {}, stderr {b_err:?}",
        b.status
    );
    let seen = sqlite(&c, &db, "SELECT count(*) FROM t;");
    assert_eq!(seen.trim(), (SQL_ROWS / 2).to_string(), "a reader during A's transaction");
    a.send("COMMIT;\nSELECT 'committed';\n");
    a.expect_line("committed", TOOL_TIMEOUT);
    a.close_stdin();
    a.expect_success(TOOL_TIMEOUT);
    run(Command::new("sqlite3").args(["-batch", "-cmd", ".timeout 0"]).arg(&db).arg(insert_b), TOOL_TIMEOUT);

    // A fresh fs-client reads the same database.
    c.unmount();
    c.mount();
    let got = sqlite(&c, &db, "PRAGMA integrity_check;\nSELECT count(*), min(k) FROM t;\n");
    assert_eq!(got, format!("ok\n{}|-2\n", SQL_ROWS / 2 + 2), "after a remount");
    eprintln!(
        "sqlite: {SQL_ROWS} inserts in {insert_secs:.1} s; {before} pages before VACUUM, {after} after"
    );
    report("sqlite WAL inserts/vacuum/locks", &c);
}

// ---------------------------------------------------------------------------
// Editor save
// ---------------------------------------------------------------------------

/// Saves `content` over `path` the way vim (backupcopy=no) and most editors
/// do: write a temp file in the same directory, fsync it, give it the
/// original's mode and owner, rename it over the original, fsync the
/// directory.
fn editor_save(path: &Path, content: &[u8]) {
    let old = fs::metadata(path).expect("stat the original");
    let tmp = path.with_file_name(format!(".{}.swp", path.file_name().unwrap().to_string_lossy()));
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).expect("create temp");
    f.write_all(content).expect("write temp");
    f.sync_all().expect("fsync temp");
    f.set_permissions(fs::Permissions::from_mode(old.mode() & 0o7777)).expect("fchmod temp");
    std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid())).expect("fchown temp");
    drop(f);
    fs::rename(&tmp, path).expect("rename the temp over the original");
    File::open(path.parent().unwrap()).and_then(|d| d.sync_all()).expect("fsync the directory");
}

/// Reads all of `f` from offset 0 with `pread` (the fd's offset untouched).
pub fn pread_all(f: &File) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read_at(&mut buf, out.len() as u64).expect("pread");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn editor_save_by_rename_keeps_the_mode_and_an_already_open_fd_reads_the_old_content() {
    let c = mounted();
    let dir = c.mountpoint().join("docs");
    fs::create_dir_all(&dir).unwrap();
    let doc = dir.join("notes.txt");
    // Over a block, so the old content cannot be a single cached page.
    let v1 = Pattern::bytes(31, (MIB + 4097) as usize);
    let v2 = b"version two, short\n".to_vec();
    let v3 = Pattern::bytes(33, 70_000);
    fs::write(&doc, &v1).unwrap();
    fs::set_permissions(&doc, fs::Permissions::from_mode(0o640)).unwrap();
    lchown(&doc, 1234, 5678);
    let ino1 = fs::metadata(&doc).unwrap().ino();

    // Opened before the save, read only after it.
    let old_fd = File::open(&doc).unwrap();
    editor_save(&doc, &v2);
    let m = fs::metadata(&doc).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640, "mode after the save: {:o}", m.mode());
    assert_eq!((m.uid(), m.gid()), (1234, 5678), "owner after the save");
    assert_ne!(m.ino(), ino1, "the save did not replace the inode");
    assert_eq!(fs::read(&doc).unwrap(), v2, "a new open reads the new content");
    let old = pread_all(&old_fd);
    assert!(
        old == v1,
        "the fd opened before the save read {} bytes, not the old {} bytes",
        old.len(),
        v1.len()
    );
    let st = old_fd.metadata().expect("fstat on the fd of the replaced file");
    assert_eq!((st.ino(), st.len(), st.nlink()), (ino1, v1.len() as u64, 0), "fstat of the replaced file");
    assert!(!fs::read_dir(&dir).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".swp")));

    // Backup by rename (emacs's default): the original becomes `notes.txt~`
    // and the new content goes to a new file, chmodded like the original.
    let old_fd2 = File::open(&doc).unwrap();
    let backup = dir.join("notes.txt~");
    fs::rename(&doc, &backup).unwrap();
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&doc).unwrap();
    f.write_all(&v3).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o640)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(&backup).unwrap(), v2, "the backup holds the previous content");
    assert_eq!(fs::read(&doc).unwrap(), v3, "the file holds the new content");
    assert_eq!(fs::metadata(&doc).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(pread_all(&old_fd2), v2, "an fd follows its file through a rename");
    drop((old_fd, old_fd2));
    report("editor save", &c);
}

/// Saves by rename made while another process keeps opening the name.
const RACED_SAVES: usize = 400;

#[test]
fn opening_a_name_while_saves_replace_it_always_opens_one_whole_version() {
    // The kernel opens by the inode its lookup found a moment before; a
    // rename over the name in between replaced that inode. dirsvc keeps a
    // replaced, unopened file openable for a few seconds, so such an open
    // gets the old version (as on ext4) instead of failing.
    let c = mounted();
    let dir = c.mountpoint().join("deploy");
    fs::create_dir_all(&dir).unwrap();
    let target = dir.join("current");
    let version = |i: usize| format!("version {i:05}\n").repeat(40).into_bytes();
    fs::write(&target, version(0)).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let (opens, failures, last_seen) = thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut opens, mut failures, mut last) = (0usize, Vec::new(), 0usize);
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                match fs::read(&target) {
                    Ok(got) => {
                        let head = String::from_utf8_lossy(&got[..got.len().min(14)]).to_string();
                        let i: usize =
                            head.trim_start_matches("version ").trim().parse().unwrap_or(usize::MAX);
                        assert!(
                            i <= RACED_SAVES && got == version(i),
                            "read {} bytes that are no whole version (starts {head:?})",
                            got.len()
                        );
                        assert!(i >= last, "went back from version {last} to {i}");
                        last = i;
                        opens += 1;
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (opens, failures, last)
        });
        for i in 1..=RACED_SAVES {
            let tmp = dir.join(format!(".current.{i}"));
            fs::write(&tmp, version(i)).unwrap();
            fs::rename(&tmp, &target).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        reader.join().unwrap()
    });
    eprintln!(
        "open racing saves: {opens} opens during {RACED_SAVES} saves in {:.1} s, {} failed",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} opens failed: {:?}",
        failures.len(),
        opens,
        &failures[..failures.len().min(5)]
    );
    assert!(opens >= 100, "the reader opened only {opens} times: no race was tried");
    assert!(last_seen > 0, "the reader never saw a save");
    assert_eq!(fs::read(&target).unwrap(), version(RACED_SAVES));
    report("open racing saves", &c);
}

/// Two processes each committing this many WAL transactions.
const WAL_COMMITS: usize = 150;

/// A WAL writer: read-increment-write of one counter and a log row per
/// transaction, under sqlite's own locks (fcntl on the database and the
/// mmapped `-shm` index).
const WAL_WRITER: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
for i in range(int(sys.argv[3])):
    c.execute("BEGIN IMMEDIATE")
    (v,) = c.execute("select v from t where k=1").fetchone()
    c.execute("update t set v=? where k=1", (v + 1,))
    c.execute("insert into log values (?,?,?)", (sys.argv[2], i, v))
    c.execute("COMMIT")
"#;

#[test]
fn sqlite_wal_with_two_writers_on_one_mount_commits_every_transaction_without_hanging() {
    let c = mounted();
    let db = c.mountpoint().join("wal.sqlite");
    run(
        Command::new("sqlite3").arg(&db).arg(
            "pragma journal_mode=wal; create table t(k primary key, v); \
             insert into t values(1,0); create table log(tag,i,v);",
        ),
        TOOL_TIMEOUT,
    );
    // Each lock grant revalidates the file; dropping the pages of a dirty
    // mmapped -shm file once deadlocked the mount here.
    let writers: Vec<_> = ["a", "b"]
        .iter()
        .map(|tag| {
            let log = c.work_dir().join(format!("wal-writer-{tag}.log"));
            let mut cmd = Command::new("python3");
            cmd.args(["-c", WAL_WRITER]).arg(&db).arg(tag).arg(WAL_COMMITS.to_string());
            super::tools::Background::spawn(&mut cmd, &log)
        })
        .collect();
    for w in writers {
        w.expect_success(TOOL_TIMEOUT);
    }
    let out = run(
        Command::new("sqlite3")
            .arg(&db)
            .arg("select v from t; select count(*) from log; pragma integrity_check;"),
        TOOL_TIMEOUT,
    );
    let n = 2 * WAL_COMMITS;
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), vec![n.to_string(), n.to_string(), "ok".into()]);
    report("sqlite WAL, two writers on one mount", &c);
}
