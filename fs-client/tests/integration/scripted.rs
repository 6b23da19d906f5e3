//! A local cluster run the way a user runs it: `scripts/up.sh` and
//! `scripts/down.sh` with `P2PFS_STATE` in a tempdir, on free loopback
//! ports, with the binaries under test (`P2PFS_BIN`). Dropping it runs
//! `down.sh` (which stops only the processes up.sh started, by their PID
//! files), lazily unmounts what is still mounted and unmounts the tmpfs
//! filesystems the test asked for, whether the test passed or not.

use super::tools::{output, Rng};
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use testkit::cluster::{bin_dir, check_environment, hermetic, mount_entry, scratch_parent, tail};

/// How long up.sh or down.sh may take (up.sh waits up to 30 s per daemon;
/// down.sh gives the mount 60 s to store what it buffers).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// The repository root (scripts live in `<root>/scripts`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("fs-client lives in the workspace").to_path_buf()
}

/// A random base port P such that P..=P+n all bind on loopback now, below
/// the kernel's ephemeral range (so other tests' `127.0.0.1:0` listeners
/// do not take them meanwhile; up.sh binds them a moment later).
fn free_ports(n: u16) -> u16 {
    let mut rng = Rng::for_test("up.sh ports");
    for _ in 0..200 {
        let base = 20_000 + rng.below(12_000) as u16;
        let held: Vec<_> = (0..=n).map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok()).collect();
        if held.len() == usize::from(n) + 1 {
            return base;
        }
    }
    panic!("no free run of {} loopback ports found between 20000 and 32000", n + 1);
}

/// A local cluster of `scripts/up.sh`.
pub struct Scripted {
    dir: tempfile::TempDir,
    port: u16,
    peers: usize,
    replicas: u32,
    tmpfs: Vec<PathBuf>,
}

impl Scripted {
    /// A cluster of `peers` peers and a volume of `replicas` replicas, not
    /// started yet. Its tempdir is traversable by every user (0755), so
    /// tests can act on the mount as another user.
    pub fn new(peers: usize, replicas: u32) -> Scripted {
        check_environment();
        let dir = tempfile::Builder::new()
            .prefix("p2pfs-scripted-")
            .tempdir_in(scratch_parent())
            .expect("create tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
        fs::create_dir_all(dir.path().join("state")).expect("create state dir");
        let port = free_ports(u16::try_from(peers).expect("few peers"));
        Scripted { dir, port, peers, replicas, tmpfs: Vec::new() }
    }

    /// The state directory (`P2PFS_STATE`).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The mount point.
    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// The identity file up.sh makes.
    pub fn identity(&self) -> PathBuf {
        self.state().join("identity.txt")
    }

    /// dirsvc's `host:port`.
    pub fn dirsvc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The data directory of peer `i` (1-based, as up.sh names them).
    pub fn peer_dir(&self, i: usize) -> PathBuf {
        self.state().join(format!("peerd-{i}"))
    }

    /// Puts peer `i`'s data directory on a tmpfs of `bytes` (before `up`).
    pub fn peer_on_tmpfs(&mut self, i: usize, bytes: u64) {
        let d = self.peer_dir(i);
        fs::create_dir_all(&d).expect("create peer dir");
        let out = output(
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"]).arg(&d),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        self.tmpfs.push(d);
    }

    /// Resizes the tmpfs of peer `i` (live, keeping its files).
    pub fn resize_tmpfs(&self, i: usize, bytes: u64) {
        let out = output(
            Command::new("mount").args(["-o", &format!("remount,size={bytes}")]).arg(self.peer_dir(i)),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "remount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn script(&self, name: &str) -> Command {
        let mut cmd = Command::new("bash");
        hermetic(&mut cmd);
        cmd.arg(repo_root().join("scripts").join(name))
            .env("P2PFS_STATE", self.state())
            .env("P2PFS_PORT", self.port.to_string())
            .env("P2PFS_PEERS", self.peers.to_string())
            .env("P2PFS_REPLICAS", self.replicas.to_string())
            .env("P2PFS_BIN", bin_dir());
        cmd
    }

    /// Runs `scripts/up.sh MNT`; returns its output, whatever its exit.
    pub fn up(&self) -> Output {
        output(self.script("up.sh").arg(self.mnt()), SCRIPT_TIMEOUT)
    }

    /// Runs `scripts/down.sh`; returns its output, whatever its exit.
    pub fn down(&self) -> Output {
        output(&mut self.script("down.sh"), SCRIPT_TIMEOUT)
    }

    /// `up`, expecting success.
    pub fn up_ok(&self) -> Output {
        let out = self.up();
        assert!(out.status.success(), "up.sh failed:\n{}", text(&out));
        out
    }

    /// `down`, expecting success.
    pub fn down_ok(&self) -> Output {
        let out = self.down();
        assert!(out.status.success(), "down.sh failed:\n{}", text(&out));
        out
    }
}

/// stdout and stderr of a script, for messages and checks.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

impl Drop for Scripted {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(rd) = fs::read_dir(self.state().join("logs")) {
                for e in rd.flatten() {
                    eprintln!("---- {} ----\n{}", e.path().display(), tail(&e.path(), 30));
                }
            }
        }
        if self.state().join("pids").exists() {
            let out = self.down();
            if !out.status.success() {
                eprintln!("scripts/down.sh failed ({}):\n{}", out.status, text(&out));
            }
        }
        if mount_entry(&self.mnt()).is_some() {
            let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
        }
        for d in self.tmpfs.drain(..) {
            let _ = Command::new("umount").arg("-l").arg(&d).status();
        }
    }
}
