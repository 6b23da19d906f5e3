//! A real p2pfs cluster for end-to-end tests: spawns the built `dirsvc`,
//! `peerd` and `fs-client` binaries under one tempdir, and always cleans up
//! (lazy unmount, then SIGKILL of exactly the processes it started).
//!
//! Layout of the tempdir: `logs/<name>.log` (stdout and stderr of each
//! process, appended across restarts), `run/<name>.addr` (bound addresses),
//! `dirsvc/` (the database), `peer-<i>/` (peer data dirs), `mnt/` (the
//! mountpoint), `mnt2/` (the mountpoint of an optional second fs-client of
//! the same volume, for the two-mount tests), `work/` (test files outside
//! the mount).
//!
//! Besides start/stop, the harness injects the failures the repair, scrub,
//! GC and crash-safety tests need: kill -9 or SIGTERM of one peer and its
//! restart on the same address and data dir, removal of a peer for good,
//! kill -9 of dirsvc or fs-client and their restart. [`ClusterOpts`] passes
//! extra flags to each daemon (short timeouts for tests: [`ClusterOpts::fast`]).

use crate::cmd::{output, run};
use crate::wait_until;
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// How many clusters may run at once. Most tests spend their time waiting
/// (heartbeats, leases, repair rounds), so two share the 2 cores of the
/// test machines well; a cluster started with [`ClusterOpts::exclusive`]
/// (the POSIX suites, chaos, bulk copies) takes every slot and runs alone.
const CLUSTER_SLOTS: u32 = 2;

/// The slots in use and whether an exclusive cluster waits for them (then
/// no other cluster starts, so that it is not starved).
struct Slots {
    state: Mutex<(u32, u32)>,
    freed: Condvar,
}

static SLOTS: Slots = Slots { state: Mutex::new((0, 0)), freed: Condvar::new() };

/// `weight` slots of [`SLOTS`], given back on drop.
pub struct SlotGuard {
    weight: u32,
}

impl SlotGuard {
    /// Waits until `weight` slots (1 ..= [`CLUSTER_SLOTS`]) are free and no
    /// heavier cluster waits, then takes them.
    fn acquire(weight: u32) -> SlotGuard {
        let exclusive = weight == CLUSTER_SLOTS;
        let mut state = SLOTS.state.lock().unwrap_or_else(PoisonError::into_inner);
        if exclusive {
            state.1 += 1;
        }
        loop {
            let (used, waiting) = *state;
            let fits = used + weight <= CLUSTER_SLOTS;
            if fits && (exclusive || waiting == 0) {
                break;
            }
            state = SLOTS.freed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.0 += weight;
        if exclusive {
            state.1 -= 1;
        }
        SlotGuard { weight }
    }
}

/// Every cluster slot, for a test that starts its own daemons instead of
/// a [`TestCluster`] (several hosts in network namespaces): waits until
/// running clusters end; no other starts until the guard is dropped.
pub fn exclusive_slots() -> SlotGuard {
    SlotGuard::acquire(CLUSTER_SLOTS)
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut state = SLOTS.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 -= self.weight;
        SLOTS.freed.notify_all();
    }
}

/// How long a daemon may take to write its address file, or a mount to
/// appear in `/proc/mounts`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a process may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Timeout for the short CLI commands (`keygen`, `init`, `peers`).
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of each log printed when a test fails.
const TAIL_LINES: usize = 40;

/// Filesystem type of a p2pfs mount in `/proc/mounts` (the CLI contract).
pub const FSTYPE: &str = "fuse.p2pfs";

/// Paths of the three binaries under test.
struct Bins {
    dirsvc: PathBuf,
    peerd: PathBuf,
    fs_client: PathBuf,
}

/// The binaries under test, located once per test process.
///
/// They sit in the profile directory of the test binary (see
/// [`profile_dir`]), but cargo only builds a package's binaries when that
/// package's own integration tests need them, so this asks the cargo that
/// runs the tests to build (or refresh) them first: the tests must never
/// run stale daemons against a fresh client.
fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = profile_dir();
        build_sibling_binaries(&dir);
        let bins =
            Bins { dirsvc: dir.join("dirsvc"), peerd: dir.join("peerd"), fs_client: dir.join("fs-client") };
        for b in [&bins.dirsvc, &bins.peerd, &bins.fs_client] {
            assert!(
                b.is_file(),
                "{} is missing: build the daemons with `cargo build --workspace` \
                 (with --release for a release test run), or run the README's test \
                 command `cargo test --workspace --release`",
                b.display()
            );
        }
        bins
    })
}

/// The directory holding the `dirsvc`, `peerd` and `fs-client` binaries
/// under test (built and refreshed first, see [`bins`]): what
/// `scripts/up.sh` takes as `P2PFS_BIN`.
pub fn bin_dir() -> PathBuf {
    bins().fs_client.parent().expect("the fs-client binary has a parent directory").to_path_buf()
}

/// `<target>/<profile>`: where cargo puts the workspace's binaries. A test
/// binary runs from `<target>/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let deps = exe.parent().expect("the test binary has a parent directory");
    match deps.file_name() {
        Some(name) if name == "deps" => deps.parent().expect("deps has a parent").to_path_buf(),
        _ => deps.to_path_buf(),
    }
}

/// Builds the daemon binaries (`cargo test --workspace --no-run`) in the
/// same profile and target directory as this test binary (`dir` is `<target>/<profile>`). Does
/// nothing when not run under cargo or when the layout is not recognised;
/// [`bins`] then reports any missing binary.
fn build_sibling_binaries(dir: &Path) {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return;
    };
    let (Some(profile), Some(target_dir)) = (dir.file_name(), dir.parent()) else {
        return;
    };
    if !target_dir.join("CACHEDIR.TAG").exists() {
        return;
    }
    // The README's test command without running anything: it builds the
    // daemons with the very features `cargo test --workspace` gives them,
    // so under that command (CI) this is a no-op. A narrower `cargo build
    // -p …` resolves features differently, rebuilt common, dirsvc, peerd
    // and ring on every run (minutes) and swapped the binaries under the
    // other test binaries.
    let mut cmd = Command::new(cargo);
    // Cargo gives a test process the variables it gives a crate being
    // built (CARGO_MANIFEST_DIR, CARGO_PKG_*, …). Passed on, they differ
    // from what the outer build saw, and build scripts that track them
    // (ring's tracks CARGO_MANIFEST_DIR) make that build stale: the
    // nested build then recompiled ring, rustls and every workspace crate
    // while each cluster test waited, minutes per CI run.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || name.starts_with("CARGO_BIN_EXE_")
            || matches!(name, "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR")
        {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["test", "--workspace", "--no-run"])
        .arg("--target-dir")
        .arg(target_dir);
    match profile.to_str() {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => return,
    }
    let out = output(&mut cmd, Duration::from_secs(1800));
    assert!(
        out.status.success(),
        "building the daemon binaries failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails with a clear message unless this process can mount FUSE.
pub fn check_environment() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the end-to-end tests mount a real FUSE filesystem and must run as root \
         (euid is {euid})"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "the end-to-end tests mount a real FUSE filesystem and need /dev/fuse, \
         which is missing (load the fuse module or give the container the device)"
    );
}

/// One process this harness started. Dropping it SIGKILLs and reaps the
/// process if it still runs; it never signals any other process.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` (already given its program and arguments) with stdout
    /// and stderr appended to `log`, as `name`. It gets SIGKILL if the test
    /// thread dies, so nothing outlives a crash.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = OpenOptions::new().create(true).append(true).open(log).expect("open log");
        let err = out.try_clone().expect("clone log handle");
        hermetic(&mut cmd);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: the closure only calls prctl, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.to_string(), child, log: log.to_path_buf() }
    }

    /// The process's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Waits up to `timeout` for the process to exit; its status, if it did.
    pub fn exited_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.wait_exit(timeout)
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Whether the process still runs (reaps it if it exited).
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own
        // unreaped child, so it cannot have been reused by another process.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with the log tail unless the process exits successfully
    /// within [`STOP_TIMEOUT`] of SIGTERM.
    fn terminate(mut self) {
        if !self.running() {
            let st = self.child.try_wait().ok().flatten();
            panic!(
                "{} had already exited ({st:?}) before SIGTERM\n{}",
                self.name,
                tail(&self.log, TAIL_LINES)
            );
        }
        self.signal(libc::SIGTERM);
        self.expect_clean_exit();
    }

    fn expect_clean_exit(&mut self) {
        match self.wait_exit(STOP_TIMEOUT) {
            Some(st) if st.success() => {}
            Some(st) => panic!(
                "{} exited with {st} after SIGTERM (expected a clean exit 0)\n{}",
                self.name,
                tail(&self.log, TAIL_LINES)
            ),
            None => panic!(
                "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}",
                self.name,
                tail(&self.log, TAIL_LINES)
            ),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            self.signal(libc::SIGKILL);
            let _ = self.wait_exit(Duration::from_secs(10));
        }
    }
}

/// Extra flags for dirsvc when a test wants failures handled within
/// seconds: suspect after 1 s, down after 2 s, a repair pass every 200 ms,
/// a GC pass every second with a 3 s grace period.
pub const FAST_DIRSVC_ARGS: &[&str] = &[
    "--peer-suspect-after-ms",
    "1000",
    "--peer-down-after-ms",
    "2000",
    "--repair-interval-ms",
    "200",
    "--gc-interval-secs",
    "1",
    "--gc-grace-secs",
    "3",
];

/// Extra flags for each peer to go with [`FAST_DIRSVC_ARGS`]: a heartbeat
/// every 300 ms.
pub const FAST_PEER_ARGS: &[&str] = &["--heartbeat-interval-ms", "300"];

/// The GC grace period [`FAST_DIRSVC_ARGS`] sets.
pub const FAST_GC_GRACE: Duration = Duration::from_secs(3);

/// How to start a [`TestCluster`]: its size and the extra command-line
/// flags of each daemon.
#[derive(Clone, Debug, Default)]
pub struct ClusterOpts {
    /// Number of peers.
    pub peers: usize,
    /// Replication factor R of the volume.
    pub replicas: u32,
    /// Appended to dirsvc's command line (every start).
    pub dirsvc_args: Vec<String>,
    /// `peer_args[i]` is appended to peer `i`'s command line (every start);
    /// a missing entry means no extra flags.
    pub peer_args: Vec<Vec<String>>,
    /// Inserted into `fs-client mount` before the mountpoint.
    pub mount_args: Vec<String>,
    /// Where dirsvc keeps its database instead of `<tempdir>/dirsvc` (e.g.
    /// a tmpfs directory, for a test about listing rather than durability).
    pub dirsvc_db_dir: Option<PathBuf>,
    /// The name of the mountpoint directory in the tempdir instead of
    /// `mnt` (e.g. with a marker a test looks for).
    pub mnt_name: Option<String>,
    /// Runs alone on the machine (no other cluster at the same time): for
    /// tests that move hundreds of MiB or run long POSIX suites.
    pub exclusive: bool,
}

impl ClusterOpts {
    /// `peers` peers, R = `replicas`, no extra flags (the daemons' defaults).
    pub fn new(peers: usize, replicas: u32) -> ClusterOpts {
        ClusterOpts { peers, replicas, ..ClusterOpts::default() }
    }

    /// Like [`Self::new`] with [`FAST_DIRSVC_ARGS`] and [`FAST_PEER_ARGS`].
    pub fn fast(peers: usize, replicas: u32) -> ClusterOpts {
        ClusterOpts::new(peers, replicas).dirsvc_args(FAST_DIRSVC_ARGS).all_peer_args(FAST_PEER_ARGS)
    }

    /// Makes the cluster run alone (see the `exclusive` field).
    pub fn exclusive(mut self) -> ClusterOpts {
        self.exclusive = true;
        self
    }

    /// Appends `args` to dirsvc's flags.
    pub fn dirsvc_args(mut self, args: &[&str]) -> ClusterOpts {
        self.dirsvc_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Sets dirsvc flag `flag` to `value`, replacing an earlier value (clap
    /// refuses a flag given twice).
    pub fn dirsvc_flag(mut self, flag: &str, value: &str) -> ClusterOpts {
        match self.dirsvc_args.iter().position(|a| a == flag) {
            Some(i) if i + 1 < self.dirsvc_args.len() => self.dirsvc_args[i + 1] = value.to_string(),
            _ => self.dirsvc_args.extend([flag.to_string(), value.to_string()]),
        }
        self
    }

    /// Appends `args` to the flags of every peer.
    pub fn all_peer_args(mut self, args: &[&str]) -> ClusterOpts {
        for i in 0..self.peers {
            self = self.peer_args(i, args);
        }
        self
    }

    /// Appends `args` to the flags of peer `i`.
    pub fn peer_args(mut self, i: usize, args: &[&str]) -> ClusterOpts {
        if self.peer_args.len() <= i {
            self.peer_args.resize(i + 1, Vec::new());
        }
        self.peer_args[i].extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Appends `args` to the flags of `fs-client mount`.
    pub fn mount_args(mut self, args: &[&str]) -> ClusterOpts {
        self.mount_args.extend(args.iter().map(|a| a.to_string()));
        self
    }
}

/// One peer of `fs-client status --json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRow {
    /// The peer id in hex.
    pub id: String,
    /// Its address.
    pub addr: String,
    /// Its state, lowercase: up, suspect, down, draining, drained.
    pub state: String,
}

/// `fs-client status --json` parsed: the figures of `ClusterStatus` under
/// their text names (`chunks`, `under_replicated`, `peers_down`, …), the
/// peers, and the whole object.
#[derive(Clone, Debug)]
pub struct Status {
    /// Numeric figures by their `fs-client status` text names.
    pub fields: BTreeMap<String, String>,
    /// The peers.
    pub peers: Vec<PeerRow>,
    /// The whole output, for failure messages.
    pub raw: String,
    /// The parsed JSON object (shape: `fs-client status --help`).
    pub json: serde_json::Value,
}

/// Text name of a figure ← (object, key) in the JSON of `fs-client status
/// --json`.
const STATUS_FIELDS: &[(&str, &str, &str)] = &[
    ("chunks", "replication", "chunks"),
    ("under_replicated", "replication", "under_r"),
    ("lost", "replication", "lost"),
    ("at_r", "replication", "at_r"),
    ("repairs_in_flight", "repair", "in_flight"),
    ("repair_waiting", "repair", "waiting"),
    ("repaired_total", "repair", "repaired_total"),
    ("repaired_bytes_total", "repair", "repaired_bytes_total"),
    ("gc_pending", "gc", "pending"),
    ("gc_tombstones", "gc", "tombstones"),
    ("gc_deleted_total", "gc", "deleted_total"),
    ("peers_up", "peer_states", "up"),
    ("peers_suspect", "peer_states", "suspect"),
    ("peers_down", "peer_states", "down"),
    ("peers_draining", "peer_states", "draining"),
    ("peers_drained", "peer_states", "drained"),
];

impl Status {
    /// Parses the output of `fs-client status --json`.
    ///
    /// # Errors
    /// A description if it is not JSON or lacks a figure or a peer's id,
    /// address or state.
    pub fn from_json(out: &str) -> Result<Status, String> {
        let json: serde_json::Value =
            serde_json::from_str(out).map_err(|e| format!("not JSON ({e}):\n{out}"))?;
        let mut fields = BTreeMap::new();
        for (name, obj, key) in STATUS_FIELDS {
            let v = json[*obj][*key].as_u64().ok_or_else(|| format!("no number at {obj}.{key} in\n{out}"))?;
            fields.insert(name.to_string(), v.to_string());
        }
        let mut peers = Vec::new();
        for p in json["peers"].as_array().ok_or_else(|| format!("no peers list in\n{out}"))? {
            let get = |k: &str| {
                p[k].as_str().map(str::to_string).ok_or_else(|| format!("peer without {k}: {p} in\n{out}"))
            };
            peers.push(PeerRow { id: get("id")?, addr: get("addr")?, state: get("state")? });
        }
        Ok(Status { fields, peers, raw: out.to_string(), json })
    }

    /// The numeric field `key`; panics, showing the whole output, if it is
    /// missing or not a number (the CLI contract names every field).
    pub fn get(&self, key: &str) -> u64 {
        let v = self
            .fields
            .get(key)
            .unwrap_or_else(|| panic!("`fs-client status` has no `{key}:` line:\n{}", self.raw));
        v.parse().unwrap_or_else(|e| panic!("`{key}: {v}` is not a number ({e}):\n{}", self.raw))
    }

    /// Whether every referenced chunk is at R replicas on up or suspect
    /// peers and none is lost.
    pub fn fully_replicated(&self) -> bool {
        self.get("under_replicated") == 0 && self.get("lost") == 0
    }
}

/// Byte offsets into every log file, taken by [`TestCluster::log_marks`].
pub struct LogMarks(BTreeMap<PathBuf, u64>);

/// A dirsvc, N peers and (when mounted) one or two fs-clients of the same
/// volume, all real processes.
pub struct TestCluster {
    root: PathBuf,
    bins: &'static Bins,
    identity: PathBuf,
    opts: ClusterOpts,
    dirsvc_addr: Option<SocketAddr>,
    dirsvc: Option<Proc>,
    peer_addrs: Vec<SocketAddr>,
    peers: Vec<Option<Proc>>,
    /// Peers removed for good ([`TestCluster::remove_peer`]): never restarted.
    removed: Vec<bool>,
    client: Option<Proc>,
    /// The second fs-client ([`TestCluster::mount_second`]), at `mnt2/`.
    client2: Option<Proc>,
    /// When this cluster got its slots (see [`TestCluster::elapsed`]).
    started: Instant,
    // Dropped after `Drop::drop` has unmounted and killed everything; the
    // tempdir goes before the slots so the next test starts on a clean disk.
    _dir: tempfile::TempDir,
    _slots: SlotGuard,
}

impl TestCluster {
    /// Starts dirsvc and `peers` peers on ephemeral loopback ports, waits
    /// until dirsvc lists every peer as live, generates an identity and
    /// initializes a volume with `replicas` replicas. Does not mount.
    pub fn start(peers: usize, replicas: u32) -> TestCluster {
        TestCluster::start_with(ClusterOpts::new(peers, replicas))
    }

    /// Like [`Self::start`], with the extra daemon and mount flags of `opts`.
    pub fn start_with(opts: ClusterOpts) -> TestCluster {
        let (peers, replicas) = (opts.peers, opts.replicas);
        check_environment();
        let slots = SlotGuard::acquire(if opts.exclusive { CLUSTER_SLOTS } else { 1 });
        let started = Instant::now();
        let bins = bins();
        // P2PFS_E2E_KEEP=1 keeps the tempdir (logs, data) for a post-mortem.
        let keep = std::env::var_os("P2PFS_E2E_KEEP").is_some_and(|v| v == "1");
        let dir = tempfile::Builder::new()
            .prefix("p2pfs-e2e-")
            .disable_cleanup(keep)
            .tempdir_in(scratch_parent())
            .expect("create tempdir");
        if keep {
            eprintln!("P2PFS_E2E_KEEP=1: keeping {}", dir.path().display());
        }
        let root = fs::canonicalize(dir.path()).expect("canonicalize tempdir");
        let mnt_name = opts.mnt_name.clone().unwrap_or_else(|| "mnt".into());
        for sub in ["logs", "run", "dirsvc", &mnt_name, "mnt2", "work"] {
            fs::create_dir_all(root.join(sub)).expect("create tempdir layout");
        }
        make_cluster_identities(bins, &root, peers);
        let mut c = TestCluster {
            identity: root.join("identity.txt"),
            root,
            bins,
            opts,
            dirsvc_addr: None,
            dirsvc: None,
            peer_addrs: Vec::new(),
            peers: Vec::new(),
            removed: Vec::new(),
            client: None,
            client2: None,
            started,
            _dir: dir,
            _slots: slots,
        };
        let any_port: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        let (p, addr) = c.spawn_dirsvc(any_port);
        c.dirsvc = Some(p);
        c.dirsvc_addr = Some(addr);
        for i in 0..peers {
            fs::create_dir_all(c.peer_data_dir(i)).expect("create peer dir");
            let (p, addr) = c.spawn_peer(i, any_port);
            c.peers.push(Some(p));
            c.peer_addrs.push(addr);
            c.removed.push(false);
        }
        c.wait_peers_live(peers);

        let out = c.cli(&["keygen".as_ref(), "-o".as_ref(), c.identity.as_os_str()]);
        assert!(out.contains("age1"), "keygen should print the public recipient (age1…), printed: {out}");
        let mode = fs::metadata(&c.identity).expect("keygen wrote the identity file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "identity file mode is {mode:o}");
        let args: [OsString; 7] = [
            "init".into(),
            "--dirsvc".into(),
            c.dirsvc_addr().to_string().into(),
            "--replicas".into(),
            replicas.to_string().into(),
            "-i".into(),
            c.identity.clone().into(),
        ];
        c.cli(&args);
        c
    }

    /// Time since this cluster began starting, not counting the wait for
    /// other tests' clusters: what a test costs the suite.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The address dirsvc listens on.
    pub fn dirsvc_addr(&self) -> SocketAddr {
        self.dirsvc_addr.expect("dirsvc was started")
    }

    /// The mountpoint (`<tempdir>/mnt`, canonical).
    pub fn mountpoint(&self) -> PathBuf {
        self.root.join(self.opts.mnt_name.as_deref().unwrap_or("mnt"))
    }

    /// Where peer `i` listens.
    pub fn peer_addr(&self, i: usize) -> SocketAddr {
        self.peer_addrs[i]
    }

    /// Peer `i`'s id (its certificate's node id, recorded in its data
    /// directory's `peer-id` at its first start).
    pub fn peer_id(&self, i: usize) -> common::PeerId {
        let text = fs::read_to_string(self.peer_data_dir(i).join("peer-id")).expect("read peer-id");
        text.trim().parse().expect("peer-id holds 32 hex digits")
    }

    /// The process id of dirsvc (running).
    pub fn dirsvc_pid(&self) -> i32 {
        self.dirsvc.as_ref().expect("dirsvc runs").pid()
    }

    /// The process id of peer `i` (running).
    pub fn peer_pid(&self, i: usize) -> i32 {
        self.peers[i].as_ref().expect("the peer runs").pid()
    }

    /// The mountpoint of the second fs-client (`<tempdir>/mnt2`, canonical;
    /// see [`Self::mount_second`]).
    pub fn second_mountpoint(&self) -> PathBuf {
        self.root.join("mnt2")
    }

    /// A directory outside the mount, on the same disk, for test files.
    pub fn work_dir(&self) -> PathBuf {
        self.root.join("work")
    }

    /// The data directory of peer `i` (chunks live under `data/`).
    pub fn peer_data_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("peer-{i}"))
    }

    /// The directory holding dirsvc's database.
    pub fn dirsvc_db_dir(&self) -> PathBuf {
        self.opts.dirsvc_db_dir.clone().unwrap_or_else(|| self.root.join("dirsvc"))
    }

    /// Number of peers this cluster was started with.
    pub fn peer_count(&self) -> usize {
        self.peer_addrs.len()
    }

    /// The log files of every process started so far.
    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.root.join("logs"))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Mounts the volume at [`Self::mountpoint`] with a new fs-client (with
    /// the cluster's mount flags) and waits until `/proc/mounts` lists it as
    /// `fuse.p2pfs` and answers `statfs` as a FUSE filesystem. A stale
    /// mount left by a killed client (which fails every call with
    /// `ENOTCONN`) does not count: the new client must replace it.
    pub fn mount(&mut self) {
        assert!(self.client.is_none(), "already mounted");
        self.client = Some(self.spawn_mount("fs-client", &self.mountpoint()));
    }

    /// Mounts the same volume a second time, at [`Self::second_mountpoint`],
    /// with another fs-client process (same identity, same mount flags, its
    /// own cache), as a second machine would; waits for the mount like
    /// [`Self::mount`]. Its log is `logs/fs-client-2.log`. Independent of
    /// the first mount: either may be mounted, unmounted or killed alone.
    pub fn mount_second(&mut self) {
        assert!(self.client2.is_none(), "the second mount is already mounted");
        self.client2 = Some(self.spawn_mount("fs-client-2", &self.second_mountpoint()));
    }

    /// Starts `fs-client mount` at `mnt` (log `logs/<name>.log`) and waits
    /// until it is a live p2pfs mount; panics with the log tail otherwise.
    fn spawn_mount(&self, name: &str, mnt: &Path) -> Proc {
        let addr = self.dirsvc_addr().to_string();
        let mut args: Vec<OsString> = vec![
            "--tls-dir".into(),
            self.client_tls_dir().into(),
            "mount".into(),
            "--dirsvc".into(),
            addr.into(),
            "-i".into(),
            self.identity.clone().into(),
            "--pin-dir".into(),
            self.pin_dir().into(),
        ];
        args.extend(self.opts.mount_args.iter().map(OsString::from));
        args.push(mnt.into());
        let mut p = self.spawn(name, &self.bins.fs_client, &args);
        let deadline = Instant::now() + READY_TIMEOUT;
        let fresh = |mnt: &Path| mount_entry(mnt).is_some_and(|m| m.is_p2pfs()) && is_live_fuse(mnt);
        while !fresh(mnt) {
            if !p.running() {
                panic!(
                    "{name} mount exited ({:?}) before the mount at {} appeared\n{}",
                    p.child.try_wait().ok().flatten(),
                    mnt.display(),
                    tail(&p.log, TAIL_LINES)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not appear in /proc/mounts as a live p2pfs mount within \
                     {READY_TIMEOUT:?} (found {:?})\n{}",
                    mnt.display(),
                    mount_entry(mnt),
                    tail(&p.log, TAIL_LINES)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// SIGKILLs fs-client and reaps it, leaving its mount behind as a dead
    /// (`ENOTCONN`) mount, as a crash would. [`Self::mount`] may follow at once.
    pub fn kill9_client(&mut self) {
        let mut p = self.client.take().expect("fs-client is running");
        p.signal(libc::SIGKILL);
        assert!(p.wait_exit(Duration::from_secs(10)).is_some(), "fs-client survived SIGKILL");
    }

    /// Like [`Self::kill9_client`] for the second fs-client: its mount at
    /// [`Self::second_mountpoint`] stays behind, dead; the first is untouched.
    pub fn kill9_second_client(&mut self) {
        let mut p = self.client2.take().expect("the second fs-client is running");
        p.signal(libc::SIGKILL);
        assert!(p.wait_exit(Duration::from_secs(10)).is_some(), "the second fs-client survived SIGKILL");
    }

    /// Unmounts by SIGTERM to fs-client and checks that it exits 0 and the
    /// mount is gone. Falls back to a lazy unmount before failing.
    pub fn unmount(&mut self) {
        if let Some(p) = self.client.take() {
            stop_mount(p, &self.mountpoint());
        }
    }

    /// Like [`Self::unmount`] for the second fs-client (nothing if it is
    /// not mounted); the first mount is untouched.
    pub fn unmount_second(&mut self) {
        if let Some(p) = self.client2.take() {
            stop_mount(p, &self.second_mountpoint());
        }
    }

    /// Unmounts (both mounts), then stops every running peer and dirsvc
    /// with SIGTERM, checking that each exits 0. Addresses are kept for
    /// [`Self::restart_all`].
    pub fn stop_all(&mut self) {
        self.unmount_second();
        self.unmount();
        let running: Vec<Proc> = self.peers.iter_mut().filter_map(Option::take).collect();
        for p in &running {
            p.signal(libc::SIGTERM);
        }
        for mut p in running {
            p.expect_clean_exit();
        }
        if let Some(p) = self.dirsvc.take() {
            p.terminate();
        }
    }

    /// Stops everything ([`Self::stop_all`]), then starts dirsvc and every
    /// peer not removed for good (including killed ones) again on the
    /// addresses they had, with the same database and data dirs, and waits
    /// until all of them are live. Does not mount: call [`Self::mount`].
    pub fn restart_all(&mut self) {
        self.stop_all();
        self.restart_dirsvc();
        for i in 0..self.peer_count() {
            if !self.removed[i] {
                self.start_peer_again(i);
            }
        }
        self.wait_peers_live(self.removed.iter().filter(|r| !**r).count());
    }

    /// SIGKILLs peer `i` and reaps it; its data dir stays.
    pub fn kill9_peer(&mut self, i: usize) {
        let mut p = self.peers[i].take().expect("peer is running");
        p.signal(libc::SIGKILL);
        assert!(p.wait_exit(Duration::from_secs(10)).is_some(), "peer {i} survived SIGKILL");
    }

    /// Stops peer `i` with SIGTERM and checks that it exits 0 (a clean
    /// shutdown); its data dir stays.
    pub fn term_peer(&mut self, i: usize) {
        let p = self.peers[i].take().expect("peer is running");
        p.terminate();
    }

    /// Starts the stopped or killed peer `i` again on its address with its
    /// data dir and waits until dirsvc lists that address as up.
    pub fn restart_peer(&mut self, i: usize) {
        assert!(!self.removed[i], "peer {i} was removed for good");
        self.start_peer_again(i);
        let addr = self.peer_addrs[i].to_string();
        let ok = wait_until(
            || self.try_status().is_ok_and(|st| st.peers.iter().any(|p| p.addr == addr && p.state == "up")),
            READY_TIMEOUT,
        );
        assert!(ok.is_some(), "dirsvc does not list restarted peer {i} ({addr}) as up\n{}", self.all_tails());
    }

    /// Removes peer `i` for good: SIGKILL if it runs, and never started
    /// again (not even by [`Self::restart_all`]). Its data dir stays for
    /// inspection but counts for nothing.
    pub fn remove_peer(&mut self, i: usize) {
        if self.peers[i].is_some() {
            self.kill9_peer(i);
        }
        self.removed[i] = true;
    }

    /// Indices of the peers not removed for good.
    pub fn remaining_peers(&self) -> Vec<usize> {
        (0..self.peer_count()).filter(|&i| !self.removed[i]).collect()
    }

    /// SIGKILLs dirsvc and reaps it.
    pub fn kill9_dirsvc(&mut self) {
        let mut p = self.dirsvc.take().expect("dirsvc is running");
        p.signal(libc::SIGKILL);
        assert!(p.wait_exit(Duration::from_secs(10)).is_some(), "dirsvc survived SIGKILL");
    }

    /// Stops dirsvc with SIGTERM and checks that it exits 0 (its database
    /// closed, so a test may open it); [`Self::restart_dirsvc`] follows.
    pub fn stop_dirsvc(&mut self) {
        let p = self.dirsvc.take().expect("dirsvc is running");
        p.terminate();
    }

    /// Where the mounts pin volumes (`fs-client mount --pin-dir`): inside
    /// the tempdir, never the user's state directory.
    pub fn pin_dir(&self) -> PathBuf {
        self.root.join("pins")
    }

    /// Replaces dirsvc's extra flags for its next start (e.g. `--meta etcd
    /// ...` after `dirsvc migrate`); the kit's own flags stay.
    pub fn set_dirsvc_args(&mut self, args: &[String]) {
        self.opts.dirsvc_args = args.to_vec();
    }

    /// The dirsvc binary under test (for its one-shot commands such as
    /// `dirsvc migrate`).
    pub fn dirsvc_bin(&self) -> PathBuf {
        self.bins.dirsvc.clone()
    }

    /// Starts dirsvc again on its address with its database (after
    /// [`Self::kill9_dirsvc`] or a stop) and waits until it listens.
    pub fn restart_dirsvc(&mut self) {
        assert!(self.dirsvc.is_none(), "dirsvc is running");
        let (p, addr) = self.spawn_dirsvc(self.dirsvc_addr());
        assert_eq!(addr, self.dirsvc_addr(), "dirsvc came back on another address");
        self.dirsvc = Some(p);
    }

    /// `fs-client status`, parsed; panics (with every log's tail) if the
    /// command fails or its output does not parse.
    pub fn status(&self) -> Status {
        self.try_status().unwrap_or_else(|e| panic!("fs-client status failed: {e}\n{}", self.all_tails()))
    }

    /// Polls `fs-client status` until `pred` holds; returns how long that
    /// took. Panics after `timeout` with `what` and the last status seen.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Status) -> bool,
    ) -> Duration {
        let mut last = String::from("(no status yet)");
        let took = wait_until(
            || match self.try_status() {
                Ok(st) => {
                    let ok = pred(&st);
                    last = st.raw;
                    ok
                }
                Err(e) => {
                    last = e;
                    false
                }
            },
            timeout,
        );
        took.unwrap_or_else(|| panic!("{what}: not within {timeout:?}; last `fs-client status`:\n{last}"))
    }

    /// `fs-client status --json`, parsed, or why it failed (dirsvc down,
    /// bad output).
    pub fn try_status(&self) -> Result<Status, String> {
        let addr = self.dirsvc_addr().to_string();
        let out = output(self.fs_client().args(["status", "--json", "--dirsvc", &addr]), CLI_TIMEOUT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)));
        }
        Status::from_json(&stdout)
    }

    /// Bytes in the files under peer `i`'s `data/` (chunks and any temp
    /// files; the `du --apparent-size` of its chunk store).
    pub fn peer_data_bytes(&self, i: usize) -> u64 {
        dir_bytes(&self.peer_data_dir(i).join("data"))
    }

    /// [`Self::peer_data_bytes`] summed over every peer, removed ones too.
    pub fn data_bytes(&self) -> u64 {
        (0..self.peer_count()).map(|i| self.peer_data_bytes(i)).sum()
    }

    /// Current length of every log file, to read only what comes after.
    pub fn log_marks(&self) -> LogMarks {
        LogMarks(
            self.log_files()
                .into_iter()
                .map(|p| {
                    let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                    (p, len)
                })
                .collect(),
        )
    }

    /// Everything logged since `marks`, one `== name ==` header per file.
    pub fn logs_since(&self, marks: &LogMarks) -> String {
        let mut all = String::new();
        for p in self.log_files() {
            let from = marks.0.get(&p).copied().unwrap_or(0);
            let mut buf = Vec::new();
            if let Ok(mut f) = fs::File::open(&p) {
                let _ = f.seek(SeekFrom::Start(from));
                let _ = f.read_to_end(&mut buf);
            }
            all.push_str(&format!("== {} ==\n", p.display()));
            all.push_str(&String::from_utf8_lossy(&buf));
        }
        all
    }

    /// A `fs-client` command with no `P2PFS_*` environment fallbacks but
    /// `P2PFS_TLS_DIR` (the cluster's admin certificate) and
    /// `P2PFS_PIN_DIR` ([`Self::pin_dir`]).
    pub fn fs_client(&self) -> Command {
        let mut cmd = Command::new(&self.bins.fs_client);
        hermetic(&mut cmd);
        cmd.env("P2PFS_TLS_DIR", self.admin_tls_dir());
        cmd.env("P2PFS_PIN_DIR", self.pin_dir());
        cmd
    }

    /// The directory of the cluster CA (`ca.crt`, `ca.key`).
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    /// The TLS directory the mounts use (a client certificate).
    pub fn client_tls_dir(&self) -> PathBuf {
        self.root.join("client-tls")
    }

    /// The TLS directory of the `fs-client` commands (an admin
    /// certificate).
    pub fn admin_tls_dir(&self) -> PathBuf {
        self.root.join("admin-tls")
    }

    /// The identity file made by `keygen` at start.
    pub fn identity_file(&self) -> PathBuf {
        self.identity.clone()
    }

    /// Runs `fs-client` with `args`, expecting exit 0; returns its stdout.
    fn cli<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        run(self.fs_client().args(args), CLI_TIMEOUT)
    }

    /// Starts a process with stdout and stderr appended to `logs/<name>.log`.
    /// It gets SIGKILL if the test thread dies, so nothing outlives a crash.
    fn spawn(&self, name: &str, bin: &Path, args: &[OsString]) -> Proc {
        let log = self.root.join("logs").join(format!("{name}.log"));
        let mut cmd = Command::new(bin);
        cmd.args(args);
        Proc::spawn(name, cmd, &log)
    }

    fn spawn_dirsvc(&self, listen: SocketAddr) -> (Proc, SocketAddr) {
        let addr_file = self.root.join("run").join("dirsvc.addr");
        remove_if_exists(&addr_file);
        let mut args: Vec<OsString> = vec![
            "--listen".into(),
            listen.to_string().into(),
            "--db".into(),
            self.dirsvc_db_dir().join("dirsvc.redb").into(),
            "--addr-file".into(),
            addr_file.clone().into(),
            "--tls-dir".into(),
            self.root.join("dirsvc").join("tls").into(),
            "--ca-dir".into(),
            self.ca_dir().into(),
        ];
        args.extend(self.opts.dirsvc_args.iter().map(OsString::from));
        let mut p = self.spawn("dirsvc", &self.bins.dirsvc, &args);
        let addr = wait_addr_file(&mut p, &addr_file);
        (p, addr)
    }

    fn spawn_peer(&self, i: usize, listen: SocketAddr) -> (Proc, SocketAddr) {
        let addr_file = self.root.join("run").join(format!("peer-{i}.addr"));
        remove_if_exists(&addr_file);
        let mut args: Vec<OsString> = vec![
            "--listen".into(),
            listen.to_string().into(),
            "--data-dir".into(),
            self.peer_data_dir(i).into(),
            "--dirsvc".into(),
            self.dirsvc_addr().to_string().into(),
            "--addr-file".into(),
            addr_file.clone().into(),
        ];
        if let Some(extra) = self.opts.peer_args.get(i) {
            args.extend(extra.iter().map(OsString::from));
        }
        let mut p = self.spawn(&format!("peerd-{i}"), &self.bins.peerd, &args);
        let addr = wait_addr_file(&mut p, &addr_file);
        (p, addr)
    }

    /// Spawns stopped peer `i` on its old address.
    fn start_peer_again(&mut self, i: usize) {
        assert!(self.peers[i].is_none(), "peer {i} is running");
        let old = self.peer_addrs[i];
        let (p, addr) = self.spawn_peer(i, old);
        assert_eq!(addr, old, "peer {i} came back on another address");
        self.peers[i] = Some(p);
    }

    /// Polls `fs-client peers` until at least `n` peers are listed as live.
    fn wait_peers_live(&self, n: usize) {
        let addr = self.dirsvc_addr().to_string();
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            let out = output(self.fs_client().args(["peers", "--dirsvc", &addr]), CLI_TIMEOUT);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && count_live(&stdout) >= n {
                return;
            }
            last = format!(
                "{}\nstdout:\n{stdout}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "dirsvc did not list {n} live peers within {READY_TIMEOUT:?}; last \
             `fs-client peers`: {last}"
        );
    }

    fn all_tails(&self) -> String {
        let mut s = String::new();
        for p in self.log_files() {
            s.push_str(&format!("---- last lines of {} ----\n", p.display()));
            s.push_str(&tail(&p, TAIL_LINES));
        }
        s
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.all_tails());
        }
        // Detach the mounts first: nothing after this may block on a dead or
        // hung FUSE daemon, and the tempdir removal must not walk into them.
        // A dead mount may lie under a live one (a client killed, then a
        // new one mounted over it if it could not clean up): detach each
        // layer, a bounded number of times.
        for mnt in [self.mountpoint(), self.second_mountpoint()] {
            for _ in 0..8 {
                if mount_entry(&mnt).is_none() {
                    break;
                }
                lazy_umount(&mnt);
            }
        }
        // Dropping a Proc SIGKILLs it; these are exactly the processes we
        // started.
        self.client.take();
        self.client2.take();
        for p in &mut self.peers {
            p.take();
        }
        self.dirsvc.take();
        record_time(self.opts.exclusive, self.started.elapsed());
    }
}

/// With `P2PFS_E2E_TIMES=FILE`, appends `TEST<TAB>SECONDS<TAB>WEIGHT` to
/// FILE: the test (its thread's name), how long its cluster held its slots
/// (from [`TestCluster::elapsed`]'s start to the end of its teardown) and
/// whether it ran alone (`exclusive`) or beside another (`shared`). For
/// measuring the suite's cost per test; best effort, never fails a test.
fn record_time(exclusive: bool, held: Duration) {
    let Some(file) = std::env::var_os("P2PFS_E2E_TIMES") else {
        return;
    };
    let name = thread::current().name().unwrap_or("?").to_string();
    let weight = if exclusive { "exclusive" } else { "shared" };
    let line = format!("{name}\t{:.1}\t{weight}\n", held.as_secs_f64());
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(file) {
        let _ = std::io::Write::write_all(&mut f, line.as_bytes());
    }
}

/// Where clusters make their tempdirs: `P2PFS_E2E_DIR` if set, else
/// `/dev/shm` (tmpfs) when it exists, else the system temp directory.
///
/// tmpfs because these tests check behaviour, not survival of a power
/// cut: a `kill -9` leaves the page cache intact, so what a test can
/// observe is the same on tmpfs and on a disk, while every dirsvc commit
/// and chunk write (each fsynced) stops waiting for the disk (on the
/// test machines an fsync costs ~1.4 ms; a suite run makes hundreds of
/// thousands).
pub fn scratch_parent() -> PathBuf {
    if let Some(dir) = std::env::var_os("P2PFS_E2E_DIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Stops the fs-client `p` mounted at `mnt`: SIGTERM, then checks that it
/// exits 0 and the mount is gone. Falls back to a lazy unmount before
/// failing, so a failed check never leaves a mount behind.
fn stop_mount(mut p: Proc, mnt: &Path) {
    p.signal(libc::SIGTERM);
    let st = p.wait_exit(STOP_TIMEOUT);
    let still = mount_entry(mnt).is_some();
    if still {
        lazy_umount(mnt);
    }
    match st {
        Some(st) if st.success() => {}
        Some(st) => {
            panic!("{} exited with {st} on SIGTERM (expected 0)\n{}", p.name, tail(&p.log, TAIL_LINES))
        }
        None => {
            panic!("{} did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}", p.name, tail(&p.log, TAIL_LINES))
        }
    }
    assert!(!still, "{} exited 0 on SIGTERM but left {} mounted", p.name, mnt.display());
}

/// Counts lines of `fs-client peers` output that mark a peer as live (the
/// word `live`, or `up`; ids are hex and cannot contain either).
fn count_live(stdout: &str) -> usize {
    stdout
        .lines()
        .filter(|l| {
            l.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|w| w.eq_ignore_ascii_case("live") || w.eq_ignore_ascii_case("up"))
        })
        .count()
}

/// Clears the p2pfs environment fallbacks so only explicit flags count, and
/// asks for logs without colour codes so they read (and grep) as text.
/// Makes the cluster's identities with the real CLI, as an operator (and
/// `scripts/up.sh`) would: a CA in `root/ca`, a dirsvc certificate in
/// `root/dirsvc/tls`, one peer certificate in each `root/peer-<i>/tls`
/// (peerd's default TLS directory), a client certificate for the mounts in
/// `root/client-tls` and an admin one for the commands in `root/admin-tls`.
fn make_cluster_identities(bins: &Bins, root: &Path, peers: usize) {
    let cli = |args: &[&OsStr]| {
        let mut cmd = Command::new(&bins.fs_client);
        hermetic(&mut cmd);
        run(cmd.args(args), CLI_TIMEOUT)
    };
    let ca = root.join("ca");
    cli(&["ca".as_ref(), "init".as_ref(), "--dir".as_ref(), ca.as_os_str()]);
    let issue = |role: &str, out: PathBuf| {
        cli(&[
            "ca".as_ref(),
            "issue".as_ref(),
            "--ca-dir".as_ref(),
            ca.as_os_str(),
            "--role".as_ref(),
            role.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
    };
    issue("dirsvc", root.join("dirsvc").join("tls"));
    for i in 0..peers {
        issue("peer", root.join(format!("peer-{i}")).join("tls"));
    }
    issue("client", root.join("client-tls"));
    issue("admin", root.join("admin-tls"));
}

pub fn hermetic(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.as_bytes().starts_with(b"P2PFS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1");
}

fn remove_if_exists(p: &Path) {
    match fs::remove_file(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", p.display()),
    }
}

/// Waits for a daemon's address file, failing early if the daemon exits.
pub fn wait_addr_file(p: &mut Proc, file: &Path) -> SocketAddr {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(s) = fs::read_to_string(file) {
            if let Ok(a) = s.trim().parse::<SocketAddr>() {
                return a;
            }
        }
        if !p.running() {
            panic!(
                "{} exited ({:?}) before writing {}\n{}",
                p.name,
                p.child.try_wait().ok().flatten(),
                file.display(),
                tail(&p.log, TAIL_LINES)
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "{} did not write a valid address to {} within {READY_TIMEOUT:?}\n{}",
                p.name,
                file.display(),
                tail(&p.log, TAIL_LINES)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of a log file (or a note that it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let mut s = lines[lines.len().saturating_sub(n)..].join("\n");
            s.push('\n');
            s
        }
        Err(e) => format!("(cannot read {}: {e})\n", path.display()),
    }
}

/// Decodes the octal escapes (`\040` for space, …) of `/proc/mounts`.
fn unescape_mount_field(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// One line of `/proc/mounts`.
#[derive(Debug)]
pub struct MountEntry {
    /// The mount source (`fsname`).
    pub source: String,
    /// The filesystem type, e.g. `fuse.p2pfs`.
    pub fstype: String,
    /// The mount options, comma-separated (`rw,nosuid,nodev,…`).
    pub options: String,
}

impl MountEntry {
    /// Whether this is a p2pfs mount: type `fuse.p2pfs`, or plain `fuse`
    /// with source `p2pfs` (fuser's own mount(2) path drops the subtype
    /// unless it is also passed as a kernel option).
    pub fn is_p2pfs(&self) -> bool {
        self.fstype == FSTYPE || (self.fstype == "fuse" && self.source == "p2pfs")
    }
}

/// What `/proc/mounts` lists at `mnt` (the last mount wins), or `None`.
pub fn mount_entry(mnt: &Path) -> Option<MountEntry> {
    let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    let want = mnt.as_os_str().as_bytes();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (source, target, fstype, options) = (f.next()?, f.next()?, f.next()?, f.next()?);
            (unescape_mount_field(target) == want).then(|| MountEntry {
                source: String::from_utf8_lossy(&unescape_mount_field(source)).into_owned(),
                fstype: fstype.to_string(),
                options: options.to_string(),
            })
        })
        .next_back()
}

/// `f_type` that `statfs` reports for a FUSE filesystem.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Whether `statfs(mnt)` succeeds and reports a FUSE filesystem: true for a
/// live FUSE mount, false for a dead one (`ENOTCONN`) or a plain directory.
fn is_live_fuse(mnt: &Path) -> bool {
    let c = CString::new(mnt.as_os_str().as_bytes()).expect("path has no NUL");
    // SAFETY: statfs is plain old data; all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer
    // for the duration of the call.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    // `f_type`'s integer type differs between architectures.
    #[allow(clippy::useless_conversion)]
    let f_type = i64::from(st.f_type);
    rc == 0 && f_type == FUSE_SUPER_MAGIC
}

/// `umount2(MNT_DETACH)`: detaches the mount even if its daemon is dead.
fn lazy_umount(mnt: &Path) {
    let c = CString::new(mnt.as_os_str().as_bytes()).expect("path has no NUL");
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        eprintln!("lazy unmount of {} failed: {}", mnt.display(), std::io::Error::last_os_error());
    }
}

/// Apparent size in bytes of every regular file under `dir` (0 if it does
/// not exist), like `du -sb --apparent-size` without the directories.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
