//! `fs-client`: mount a p2pfs volume and manage keys and volumes.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use common::rpc::Role;
use fs_client::fs::FsConfig;
use fs_client::mount::MountConfig;
use fs_client::remote::DirClient;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "fs-client",
    version,
    about = "p2pfs client: mount an encrypted peer-to-peer volume as a folder"
)]
struct Cli {
    /// Directory of this client's TLS identity (node.key, node.crt,
    /// ca.crt). Default when P2PFS_STATE is set (as scripts/up.sh makes
    /// them): $P2PFS_STATE/client-tls for `mount`, `join`, the file
    /// commands (put, get, ls, rm, cat) and `doctor`; $P2PFS_STATE/admin-tls
    /// for the other commands (client-tls if it has no certificate); else
    /// ~/.config/p2pfs/tls.
    #[arg(long, global = true, env = "P2PFS_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// TOML config file: keys are the long option names (`dirsvc =
    /// "host:port"`, `cache-mib = 512`), a `[mount]` (or any subcommand's)
    /// table applies to that subcommand only. Precedence: flag, then
    /// environment, then this file, then the default. Default:
    /// $P2PFS_STATE/client.toml, else ~/.config/p2pfs/client.toml, if it
    /// exists. Example: dist/config/client.toml.
    #[arg(long, global = true, env = "P2PFS_CLIENT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a new age identity file (mode 0600) and print its public key.
    ///
    /// Refuses to write into a p2pfs state directory (one holding
    /// run/dirsvc.addr or dirsvc/dirsvc.redb, as scripts/up.sh makes) whose
    /// volume already exists: a new key cannot open it, so the lost
    /// identity must be restored from a backup instead.
    Keygen {
        /// Where to write it; never overwritten.
        #[arg(short, long, env = "P2PFS_IDENTITY_FILE", default_value_os_t = fs_client::defaults::identity_file())]
        output: PathBuf,
    },
    /// Create the volume on a dirsvc, wrapped to this identity.
    Init {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
        /// age identity file (default: $P2PFS_STATE/identity.txt, else
        /// ~/.config/p2pfs/identity.txt).
        #[arg(short, long = "identity", env = "P2PFS_IDENTITY_FILE", default_value_os_t = fs_client::defaults::identity_file())]
        identity: PathBuf,
        /// Block size in bytes (power of two, 4 KiB to 4 MiB).
        #[arg(long, default_value_t = common::config::DEFAULT_BLOCK_SIZE)]
        block_size: u32,
        /// Replication factor R.
        #[arg(long, env = "P2PFS_REPLICAS", default_value_t = common::config::DEFAULT_REPLICAS)]
        replicas: u32,
        /// Succeed without change if the volume already exists.
        #[arg(long)]
        if_missing: bool,
        /// The member name of this identity's key (more keys in the file:
        /// NAME-2, NAME-3, …).
        #[arg(long, default_value = fs_client::volume::DEFAULT_MEMBER_NAME)]
        name: String,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Mount the volume at MOUNTPOINT; runs until unmounted or SIGINT/SIGTERM.
    Mount {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
        /// age identity file (default: $P2PFS_STATE/identity.txt, else
        /// ~/.config/p2pfs/identity.txt).
        #[arg(short, long = "identity", env = "P2PFS_IDENTITY_FILE", default_value_os_t = fs_client::defaults::identity_file())]
        identity: PathBuf,
        /// Decrypted block cache in MiB (blocks read; and small blocks
        /// written, up to 256 KiB each).
        #[arg(long, default_value_t = 128)]
        cache_mib: u64,
        /// FUSE worker threads.
        #[arg(long, default_value_t = 8)]
        threads: usize,
        /// Blocks sealed and uploaded at once (bounds memory and peer load).
        #[arg(long, default_value_t = FsConfig::default().uploads_in_flight)]
        uploads_in_flight: usize,
        /// Replicas a block needs before a write is acknowledged when fewer
        /// than R peers are up (default: a majority of R).
        #[arg(long)]
        min_replicas: Option<u32>,
        /// Store every block on peers, also the only block of a file of up to
        /// about 4 KiB, which is otherwise kept inline in its layout entry
        /// at dirsvc (sealed, like any chunk).
        #[arg(long)]
        no_inline: bool,
        /// Where data that cannot be stored by unmount (peers full or
        /// unreachable) is kept, sealed, until the next mount stores it
        /// (default: $P2PFS_STATE/recovery, else
        /// $XDG_STATE_HOME/p2pfs/recovery, or ~/.local/state/p2pfs/recovery).
        #[arg(long, env = "P2PFS_RECOVERY_DIR")]
        recovery_dir: Option<PathBuf>,
        /// Serve this mount's Prometheus metrics (/metrics) over plain HTTP
        /// on this address (host:port; port 0 picks a free one). Off unless
        /// given; keep it on loopback (docs/OPERATIONS.md).
        #[arg(long, env = "P2PFS_METRICS_ADDR", value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
        /// After binding the metrics address, write the bound ip:port to
        /// this file (atomically).
        #[arg(long, requires = "metrics_addr")]
        metrics_addr_file: Option<PathBuf>,
        #[command(flatten)]
        pins: PinArgs,
        /// Where to mount (default: the mountpoint scripts/up.sh recorded in
        /// $P2PFS_STATE/mountpoint).
        mountpoint: Option<PathBuf>,
    },
    /// Show the volume: id, block size, replicas and the keys it is wrapped to.
    ///
    /// The keys are the members' age recipients (`age1…` public keys) the
    /// newest key epoch is wrapped to; no identity is needed to see them.
    /// Output: `key: value` lines (`volume:`, `block_size:`, `replicas:`,
    /// `key_epoch:`, then one `recipient:` line per key, or `recipients:
    /// unknown` for a volume created before recipients were recorded), or
    /// the single line `no volume yet on dirsvc ADDR` before `fs-client
    /// init`. With --json, one object: {"dirsvc": ADDR, "volume": null} or
    /// {"dirsvc": ADDR, "volume": {"id", "block_size", "replicas",
    /// "recipients": [..], "members": [names], "key_epoch",
    /// "legacy_layouts"}} (recipients empty when unknown).
    ///
    /// Exit status: 0 whether or not a volume exists (the output says
    /// which); 1 if dirsvc cannot be reached or fails to answer.
    Volume {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
        /// Print one JSON object instead of `key: value` lines.
        #[arg(long)]
        json: bool,
    },
    /// List the peers dirsvc knows, with state and usage.
    Peers {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
    },
    /// Cluster health (dirsvc, peers, totals, replication, repair, GC,
    /// scrub), or with PATH one file's durability.
    ///
    /// Without PATH (asks dirsvc; admin or client certificate): text is
    /// `key: value` lines (chunks, under_replicated, lost,
    /// repairs_in_flight, repaired_total, repaired_bytes_total, gc_pending,
    /// gc_deleted_total, peers_up … peers_drained, at_r, repair_waiting,
    /// gc_tombstones, inodes, referenced_bytes, stored_bytes, replicas,
    /// surveyed_at, scrub_checked, scrub_total, one `dirsvc:` line per
    /// instance), a blank line, then one row per peer (PEER ADDRESS STATE
    /// USED CAPACITY CHUNKS HOST/ZONE HB_AGE LAST_HEARTBEAT SCRUB).
    /// --json prints one object (times RFC 3339 UTC, sizes in bytes, ages
    /// in seconds; fields are only ever added):
    ///   {"dirsvc": [{"addr", "leader", "version", "protocol", "started",
    ///                "uptime_secs"}],
    ///    "volume": {"id", "block_size", "replicas"} | null,
    ///    "peers": [{"id", "state" (up|suspect|down|draining|drained),
    ///               "addr", "host", "zone", "capacity_bytes", "free_bytes",
    ///               "used_bytes", "chunks", "indexed_chunks",
    ///               "last_heartbeat", "heartbeat_age_secs",
    ///               "scrub": {"running", "checked", "total", "pass_started",
    ///                         "last_pass_end", "passes", "corrupt_found"}
    ///                        | null}],
    ///    "peer_states": {"up", "suspect", "down", "draining", "drained"},
    ///    "totals": {"inodes", "referenced_bytes", "stored_bytes",
    ///               "capacity_bytes", "used_bytes"},
    ///    "replication": {"replicas", "chunks", "at_r", "under_r", "lost",
    ///                    "surveyed_at"},
    ///    "repair": {"waiting", "in_flight", "repaired_total",
    ///               "repaired_bytes_total"},
    ///    "gc": {"pending", "tombstones", "deleted_total"},
    ///    "scrub": {"peers_reporting", "running", "checked", "total",
    ///              "passes", "corrupt_found", "oldest_last_pass_end"}}
    ///
    /// With PATH (a file inside a p2pfs mount; reads its virtual extended
    /// attribute user.p2pfs.durability, no dirsvc flags needed): text is
    /// one summary line then one `under_r:` line per block (or run of
    /// blocks) with fewer than R live replicas; --json prints the report:
    ///   {"ino", "size", "block_size", "blocks", "stored_blocks",
    ///    "replicas", "at_r", "under_r", "lost", "inline_blocks",
    ///    "pending_upload_bytes",
    ///    "dirty_bytes", "uploading_bytes", "uncommitted_blocks",
    ///    "per_block", "runs": [{"first", "last", "live", "chunk"?}],
    ///    "truncated"}
    /// A replica is live when its peer is up or suspect and not draining
    /// (what dirsvc counts towards R). Files of at most 256 stored blocks
    /// list every block with its chunk id; larger ones runs of blocks with
    /// the same live count. inline_blocks: blocks of small files kept in
    /// their layout entry at dirsvc (on no peer; counted in at_r).
    /// pending_upload_bytes: bytes written through this mount not yet
    /// stored on peers (null if the file stayed busy).
    ///
    /// Exit status: 0 when the report was printed, 1 otherwise.
    #[command(verbatim_doc_comment)]
    Status {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// A file inside a p2pfs mount: show its durability instead.
        path: Option<PathBuf>,
    },
    /// The volume's members: list, add, remove (admin).
    #[command(subcommand)]
    Member(MemberCmd),
    /// Re-seal the data of older key epochs under the newest one (admin).
    ///
    /// After a member's removal, new data is sealed under a key the removed
    /// member never had, but what was written before stays sealed under
    /// keys it had. This walks the whole volume and, for every block of an
    /// older epoch, reads it (verified), seals it under the newest epoch,
    /// stores it and replaces the block at dirsvc (only if the block did
    /// not change meanwhile; size and times stay). The old chunks are then
    /// garbage-collected. Symlink targets and extended-attribute values are
    /// not re-sealed. Shows progress on a terminal. Safe to run while the
    /// volume is mounted and to run again.
    Reencrypt {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
        /// age identity file of a member.
        #[arg(short, long = "identity", env = "P2PFS_IDENTITY_FILE", default_value_os_t = fs_client::defaults::identity_file())]
        identity: PathBuf,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Drain a peer: copy its chunks elsewhere so it can leave with no loss
    /// (admin).
    Drain {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
        /// The peer's id (32 hex digits, as `fs-client peers` shows).
        peer: String,
    },
    /// Take a drain back (admin): the peer gets new chunks again while it
    /// is up (a draining peer, or a drained one still running).
    Undrain {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
        /// The peer's id (32 hex digits, as `fs-client peers` shows).
        peer: String,
    },
    /// Copy a local file (or, with -r, a directory tree) into the volume,
    /// without a mount. Durable and visible to every mount when it exits 0.
    Put {
        #[command(flatten)]
        vol: VolArgs,
        /// Copy a directory tree.
        #[arg(short, long)]
        recursive: bool,
        /// Replace existing files.
        #[arg(short, long)]
        force: bool,
        /// The local file or directory.
        local: PathBuf,
        /// Volume path (`/dir/file`); an existing directory or a path
        /// ending in `/` receives the copy under the local name.
        remote: String,
    },
    /// Copy a file (or, with -r, a directory tree) out of the volume,
    /// without a mount; every block is verified.
    Get {
        #[command(flatten)]
        vol: VolArgs,
        /// Copy a directory tree.
        #[arg(short, long)]
        recursive: bool,
        /// Replace existing local files.
        #[arg(short, long)]
        force: bool,
        /// Volume path (`/dir/file`).
        remote: String,
        /// Local path; an existing directory receives the copy under the
        /// remote name.
        local: PathBuf,
    },
    /// List a volume directory (or show one file), without a mount.
    Ls {
        #[command(flatten)]
        vol: VolArgs,
        /// Long format: mode, links, owner, group, size, mtime (UTC), name.
        #[arg(short, long)]
        long: bool,
        /// Volume path (default `/`).
        #[arg(default_value = "/")]
        remote: String,
    },
    /// Remove a volume file (or, with -r, a directory tree), without a
    /// mount.
    Rm {
        #[command(flatten)]
        vol: VolArgs,
        /// Remove a directory and everything in it.
        #[arg(short, long)]
        recursive: bool,
        /// Volume path (`/dir/file`).
        remote: String,
    },
    /// Write a volume file's content to stdout, without a mount.
    Cat {
        #[command(flatten)]
        vol: VolArgs,
        /// Volume path (`/dir/file`).
        remote: String,
    },
    /// Check this machine and the cluster: FUSE, key and certificate
    /// files, dirsvc, clock, every peer, and a write → read → verify round
    /// trip. One line per check (`ok`, `warn`, `FAIL … — fix: …`); exit
    /// status 1 if any check fails.
    Doctor {
        #[command(flatten)]
        vol: VolArgs,
        /// Print one JSON object {"ok": bool, "checks": [{check, status,
        /// detail, fix}]} instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// The cluster's certificate authority: create it, issue certificates
    /// offline.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Get this node's certificate from dirsvc with a join token (a new
    /// client on another host), into the TLS directory.
    Join {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
        /// The join token (from `fs-client token create --role client`).
        #[arg(long, env = "P2PFS_JOIN_TOKEN")]
        token: String,
    },
    /// Join tokens: one-time, expiring invitations for new peers and
    /// clients (admin).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Revoke a node's certificate for good: dirsvc refuses it at once,
    /// peers and clients within seconds (admin).
    Revoke {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
        /// Why (kept with the revocation).
        #[arg(long, default_value = "revoked by an admin")]
        reason: String,
        /// The node's id (32 hex digits: a peer's id as `fs-client peers`
        /// shows, or a client's from its certificate).
        node: String,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create a new cluster CA in DIR (ca.crt; ca.key with mode 0600).
    Init {
        /// Where to write it; existing files are never replaced.
        #[arg(long)]
        dir: PathBuf,
        /// A name for people reading certificates.
        #[arg(long, default_value = "p2pfs")]
        name: String,
    },
    /// Make a key and a certificate for a node with the CA in CA_DIR,
    /// into OUT (node.key, node.crt, ca.crt).
    Issue {
        /// The CA's directory (ca.crt, ca.key).
        #[arg(long)]
        ca_dir: PathBuf,
        /// The node's role: dirsvc, peer, client or admin.
        #[arg(long)]
        role: common::rpc::Role,
        /// Where to write the node's files (never replaced).
        #[arg(long)]
        out: PathBuf,
        /// How long the certificate is valid (s, m, h or d; default 90d).
        #[arg(long, default_value = "90d")]
        valid_for: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Make a join token and print it (it holds a secret: pass it to the
    /// new node's operator only).
    Create {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
        /// The role it grants: peer or client.
        #[arg(long)]
        role: common::rpc::Role,
        /// How long it stays usable (s, m, h or d; at most 7d).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

/// What the file commands need: dirsvc, the member's identity, the pins.
#[derive(clap::Args)]
struct VolArgs {
    /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
    /// says, else 127.0.0.1:7700).
    #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
    dirsvc: String,
    /// age identity file (default: $P2PFS_STATE/identity.txt, else
    /// ~/.config/p2pfs/identity.txt).
    #[arg(short, long = "identity", env = "P2PFS_IDENTITY_FILE", default_value_os_t = fs_client::defaults::identity_file())]
    identity: PathBuf,
    #[command(flatten)]
    pins: PinArgs,
}

/// Where volumes are pinned at first use.
#[derive(clap::Args)]
struct PinArgs {
    /// Directory of the first-use pins of volumes (cluster CA, dirsvc
    /// address, key epoch 0 and newest epoch seen); default
    /// $P2PFS_STATE/pins, else $XDG_STATE_HOME/p2pfs/pins or
    /// ~/.local/state/p2pfs/pins.
    #[arg(long, env = "P2PFS_PIN_DIR")]
    pin_dir: Option<PathBuf>,
}

impl PinArgs {
    fn dir(self) -> PathBuf {
        self.pin_dir.unwrap_or_else(fs_client::pins::default_dir)
    }
}

#[derive(Subcommand)]
enum MemberCmd {
    /// List the members: name, age recipient, client certificate node ids.
    List {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
        /// Print one JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Add a member: every key epoch is wrapped to its recipient too, so it
    /// reads everything. Needs a member's identity.
    Add {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
        /// age identity file of an existing member.
        #[arg(short, long = "identity", env = "P2PFS_IDENTITY_FILE", default_value_os_t = fs_client::defaults::identity_file())]
        identity: PathBuf,
        /// The new member's name (printable ASCII, no spaces, ≤ 64 bytes).
        #[arg(long)]
        name: String,
        /// The new member's age recipient (`age1…`, as `fs-client keygen`
        /// prints it).
        #[arg(long)]
        recipient: String,
        /// Node id (32 hex digits) of one of the member's client
        /// certificates, revoked when the member is removed; repeatable.
        #[arg(long = "node")]
        nodes: Vec<String>,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Remove a member: a new key epoch, wrapped to the remaining members,
    /// seals all new data; the member's identity no longer mounts. Data
    /// written before stays readable with the old keys until `fs-client
    /// reencrypt`.
    Remove {
        /// dirsvc address, host:port (default: what $P2PFS_STATE/run/dirsvc.addr
        /// says, else 127.0.0.1:7700).
        #[arg(long, env = "P2PFS_DIRSVC", default_value_t = fs_client::defaults::dirsvc_addr())]
        dirsvc: String,
        /// age identity file of a member that stays.
        #[arg(short, long = "identity", env = "P2PFS_IDENTITY_FILE", default_value_os_t = fs_client::defaults::identity_file())]
        identity: PathBuf,
        /// The member's name (`fs-client member list`).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        pins: PinArgs,
    },
}

/// Runs [`run`]; an error is printed as one line with its causes
/// (`fs-client: error: what: why: …`) and the exit status is 1.
fn main() -> std::process::ExitCode {
    // Chunk-sized buffers are reused, not mapped and zeroed afresh each time.
    common::memory::retain_freed_memory();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fs-client: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut argv = std::env::args_os();
    let program = argv.next().unwrap_or_default();
    let name = std::path::Path::new(&program).file_name().unwrap_or_default().to_string_lossy().into_owned();
    if fs_client::mount_helper::HELPER_NAMES.contains(&name.as_str()) {
        return mount_helper(argv.collect());
    }
    let cli: Cli = common::settings::parse("P2PFS_CLIENT_CONFIG", Some(fs_client::defaults::config_file()))
        .unwrap_or_else(|e| e.exit());
    // The mount logs what it does (info); a command prints its results and
    // logs only warnings and errors, so that its output stays its own.
    let default_filter =
        if matches!(cli.cmd, Cmd::Mount { .. }) { "info,fuser=error,fuser::reply=off" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // fuser::reply logs ERROR for every reply to a request the
                // kernel already dropped (its process was interrupted): normal.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        // A log that cannot be written (a full disk under the log file) is
        // dropped: tracing would otherwise report it with eprintln!, whose
        // failure panics and, with the abort-on-panic hook, kills the daemon.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    common::panic::abort_on_panic(env!("CARGO_PKG_VERSION"));
    let tls_dir = cli.tls_dir.clone();
    let tls = |role: common::rpc::Role| -> anyhow::Result<std::sync::Arc<common::tls::Tls>> {
        Ok(fs_client::admin::load_tls(&fs_client::admin::tls_dir(tls_dir.clone(), role))?)
    };
    if !matches!(cli.cmd, Cmd::Mount { .. }) {
        // Report commands end quietly when their reader goes away
        // (`fs-client status | head -1`). Not for `mount`: its sockets must
        // see EPIPE as an error, not a fatal signal.
        // SAFETY: restoring the default disposition of SIGPIPE before any
        // thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.cmd {
        Cmd::Keygen { output } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(fs_client::volume::check_new_identity_path(&output, tls(Role::Admin).ok()))?;
            let r = fs_client::identity::keygen(&output)?;
            println!("{r}");
            eprintln!("identity written to {} (keep it private; it unlocks your volumes)", output.display());
        }
        Cmd::Init { dirsvc, identity, block_size, replicas, if_missing, name, pins } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let dir = connect(&dirsvc, tls(Role::Admin)?).await?;
                let id = fs_client::volume::load_identity(&dir, &identity).await?;
                let pin_dir = pins.dir();
                match fs_client::volume::init(&dir, &id, block_size, replicas, &name).await {
                    Ok(info) => {
                        // Pin at creation, the first use there can be: a
                        // dirsvc substituting the volume later is caught
                        // even at this client's first mount.
                        fs_client::volume::open_pinned(&dir, &id, Some(&pin_dir)).await?;
                        println!(
                            "volume {} created: block size {} bytes, {} replicas, wrapped to {}",
                            info.id.to_hex(),
                            info.block_size,
                            info.replicas,
                            id.describe()
                        );
                        Ok(())
                    }
                    Err(fs_client::Error::Dir(common::rpc::dir::DirError::AlreadyInitialized))
                        if if_missing =>
                    {
                        // Only "nothing to do" if this identity can open
                        // it (checked against its pin); otherwise the mount
                        // that follows would fail.
                        let (info, _) = fs_client::volume::open_pinned(&dir, &id, Some(&pin_dir)).await?;
                        println!("volume {} already exists on {dirsvc}", info.id.to_hex());
                        Ok(())
                    }
                    Err(e) => bail!("init failed: {e}"),
                }
            })?;
        }
        Cmd::Volume { dirsvc, json } => {
            let rt = tokio::runtime::Runtime::new()?;
            let info = rt.block_on(async {
                let dir = connect(&dirsvc, tls(Role::Admin)?).await?;
                fs_client::volume::info(&dir).await.with_context(|| format!("cannot ask dirsvc at {dirsvc}"))
            })?;
            print_volume(&dirsvc, info.as_ref(), json)?;
        }
        Cmd::Mount {
            dirsvc,
            identity,
            cache_mib,
            threads,
            uploads_in_flight,
            min_replicas,
            no_inline,
            recovery_dir,
            metrics_addr,
            metrics_addr_file,
            pins,
            mountpoint,
        } => {
            let fs = FsConfig {
                cache_bytes: cache_mib << 20,
                uploads_in_flight,
                min_replicas,
                inline: !no_inline,
                ..FsConfig::default()
            };
            let recovery_dir = recovery_dir.unwrap_or_else(fs_client::mount::default_recovery_dir);
            let Some(mountpoint) = mountpoint.or_else(fs_client::defaults::mountpoint) else {
                bail!("where to mount? give MOUNTPOINT (or set P2PFS_STATE to a state directory scripts/up.sh made)");
            };
            fs_client::mount::run(MountConfig {
                dirsvc,
                identity,
                mountpoint,
                fuse_threads: threads,
                recovery_dir,
                tls_dir: fs_client::admin::tls_dir(tls_dir.clone(), Role::Client),
                pin_dir: pins.dir(),
                fs,
                metrics_listen: metrics_addr,
                metrics_addr_file,
            })?;
        }
        Cmd::Peers { dirsvc } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let dir = connect(&dirsvc, tls(Role::Admin)?).await?;
                print_peers(&dir).await
            })?;
        }
        Cmd::Status { json, path: Some(path), .. } => {
            let r = fs_client::status::read_durability(&path)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print!("{}", fs_client::status::durability_text(&path, &r));
            }
        }
        Cmd::Status { dirsvc, json, path: None } => {
            let rt = tokio::runtime::Runtime::new()?;
            let report = rt.block_on(async {
                let dir = connect(&dirsvc, tls(Role::Admin)?).await?;
                Ok::<_, anyhow::Error>(fs_client::status::fetch_cluster(&dir).await?)
            })?;
            if json {
                println!("{}", serde_json::to_string(&fs_client::status::cluster_json(&report))?);
            } else {
                print!("{}", fs_client::status::cluster_text(&report));
            }
        }
        Cmd::Member(cmd) => member(cmd, tls(Role::Admin)?)?,
        Cmd::Reencrypt { dirsvc, identity, pins } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(reencrypt(&dirsvc, &identity, pins.dir(), tls(Role::Admin)?))?;
        }
        Cmd::Drain { dirsvc, peer } => {
            let id: common::PeerId = peer
                .parse()
                .map_err(|e| anyhow::anyhow!("bad peer id {peer:?} (32 hex digits expected): {e}"))?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let dir = connect(&dirsvc, tls(Role::Admin)?).await?;
                dir.call(|c, ctx| async move { c.drain_peer(ctx, id).await }).await?;
                println!("peer {} is draining; `fs-client status` shows when it is drained", id.to_hex());
                Ok::<_, anyhow::Error>(())
            })?;
        }
        Cmd::Undrain { dirsvc, peer } => {
            let id: common::PeerId = peer
                .parse()
                .map_err(|e| anyhow::anyhow!("bad peer id {peer:?} (32 hex digits expected): {e}"))?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let dir = connect(&dirsvc, tls(Role::Admin)?).await?;
                dir.call(|c, ctx| async move { c.undrain_peer(ctx, id).await }).await?;
                let peers = dir.call(|c, ctx| async move { c.list_peers(ctx).await }).await?;
                let state = peers.iter().find(|p| p.loc.id == id).map(|p| p.state);
                match state {
                    Some(common::rpc::dir::PeerState::Up) | None => {
                        println!("peer {} is no longer draining; it gets new chunks again", id.to_hex())
                    }
                    Some(s) => println!(
                        "peer {} is no longer draining, but dirsvc sees it {s:?}: it gets new chunks once it is up",
                        id.to_hex()
                    ),
                }
                Ok::<_, anyhow::Error>(())
            })?;
        }
        Cmd::Put { vol, recursive, force, local, remote } => {
            files_cmd(vol, tls(Role::Client)?, |v| async move {
                let total =
                    if recursive { 0 } else { std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0) };
                let bar = progress_bar(total);
                let inc = |n: u64| {
                    if let Some(b) = &bar {
                        b.inc(n)
                    }
                };
                let r = v.put(&local, &remote, recursive, force, &inc).await;
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                r.map(|_| ())
            });
        }
        Cmd::Get { vol, recursive, force, remote, local } => {
            files_cmd(vol, tls(Role::Client)?, |v| async move {
                let total = if recursive { 0 } else { v.stat(&remote).await.map(|a| a.size).unwrap_or(0) };
                let bar = progress_bar(total);
                let inc = |n: u64| {
                    if let Some(b) = &bar {
                        b.inc(n)
                    }
                };
                let r = v.get(&remote, &local, recursive, force, &inc).await;
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                r.map(|_| ())
            });
        }
        Cmd::Ls { vol, long, remote } => {
            files_cmd(vol, tls(Role::Client)?, |v| async move {
                let entries = v.list(&remote, long).await?;
                let mut out = String::new();
                for e in entries {
                    let name = String::from_utf8_lossy(&e.name);
                    if long {
                        let a = &e.attr;
                        let target = e
                            .target
                            .as_deref()
                            .map(|t| format!(" -> {}", String::from_utf8_lossy(t)))
                            .unwrap_or_default();
                        out.push_str(&format!(
                            "{} {:>3} {:>5} {:>5} {:>12} {} {name}{target}\n",
                            fs_client::files::mode_text(a),
                            a.nlink,
                            a.uid,
                            a.gid,
                            a.size,
                            fs_client::files::time_text(a.mtime.secs),
                        ));
                    } else {
                        out.push_str(&format!("{name}\n"));
                    }
                }
                print!("{out}");
                Ok(())
            });
        }
        Cmd::Rm { vol, recursive, remote } => {
            files_cmd(
                vol,
                tls(Role::Client)?,
                |v| async move { v.remove(&remote, recursive).await.map(|_| ()) },
            );
        }
        Cmd::Cat { vol, remote } => {
            files_cmd(vol, tls(Role::Client)?, |v| async move {
                let mut out = tokio::io::stdout();
                v.cat(&remote, &mut out).await.map(|_| ())
            });
        }
        Cmd::Doctor { vol, json } => {
            let client_tls_dir = fs_client::admin::tls_dir(tls_dir.clone(), Role::Client);
            let admin_tls_dir = fs_client::admin::tls_dir(tls_dir.clone(), Role::Admin);
            let other_tls_dirs =
                if admin_tls_dir == client_tls_dir { Vec::new() } else { vec![admin_tls_dir] };
            let config = fs_client::doctor::DoctorConfig {
                dirsvc: vol.dirsvc,
                identity: vol.identity,
                client_tls_dir,
                other_tls_dirs,
                pin_dir: vol.pins.dir(),
            };
            let rt = tokio::runtime::Runtime::new()?;
            let print = |f: &fs_client::doctor::Finding| {
                if !json {
                    println!("{}", f.line());
                }
            };
            let findings = rt.block_on(fs_client::doctor::run(&config, &print));
            let failed = findings.iter().filter(|f| f.outcome == fs_client::doctor::Outcome::Fail).count();
            if json {
                let checks: Vec<_> = findings.iter().map(|f| f.json()).collect();
                println!("{}", serde_json::json!({ "ok": failed == 0, "checks": checks }));
            } else if failed == 0 {
                println!("all {} checks passed", findings.len());
            } else {
                println!("{failed} of {} checks failed", findings.len());
            }
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            std::process::exit(if failed == 0 { 0 } else { 1 });
        }
        Cmd::Ca(CaCmd::Init { dir, name }) => {
            let fp = fs_client::admin::ca_init(&dir, &name)?;
            println!("cluster CA created in {} (fingerprint {fp})", dir.display());
        }
        Cmd::Ca(CaCmd::Issue { ca_dir, role, out, valid_for }) => {
            let validity = fs_client::admin::parse_duration(&valid_for)?;
            let node = fs_client::admin::ca_issue(&ca_dir, role, &out, validity)?;
            println!("{role} certificate for node {} written to {}", node.to_hex(), out.display());
        }
        Cmd::Join { dirsvc, token } => {
            // Tokens grant the peer or client role; a peer joins with
            // `peerd --join`, admins get certificates from `ca issue`.
            let out = fs_client::admin::tls_dir(tls_dir.clone(), Role::Client);
            let rt = tokio::runtime::Runtime::new()?;
            let (node, role) = rt.block_on(fs_client::admin::join(&dirsvc, &token, Role::Client, &out))?;
            println!("joined as {role} node {} (certificate in {})", node.to_hex(), out.display());
        }
        Cmd::Token(TokenCmd::Create { dirsvc, role, ttl }) => {
            let ttl = fs_client::admin::parse_duration(&ttl)?;
            let rt = tokio::runtime::Runtime::new()?;
            let token = rt.block_on(async {
                let dir = connect(&dirsvc, tls(Role::Admin)?).await?;
                Ok::<_, anyhow::Error>(fs_client::admin::create_token(&dir, role, ttl).await?)
            })?;
            println!("{token}");
        }
        Cmd::Revoke { dirsvc, reason, node } => {
            let node: common::NodeId = node
                .parse()
                .map_err(|e| anyhow::anyhow!("bad node id {node:?} (32 hex digits expected): {e}"))?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let dir = connect(&dirsvc, tls(Role::Admin)?).await?;
                fs_client::admin::revoke(&dir, node, &reason).await?;
                println!("node {} revoked", node.to_hex());
                Ok::<_, anyhow::Error>(())
            })?;
        }
    }
    Ok(())
}

/// `fs-client member …`.
fn member(cmd: MemberCmd, tls: std::sync::Arc<common::tls::Tls>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    match cmd {
        MemberCmd::List { dirsvc, json } => rt.block_on(async {
            let dir = connect(&dirsvc, tls.clone()).await?;
            let info = fs_client::volume::fetch(&dir).await?;
            print_members(&info, json)
        }),
        MemberCmd::Add { dirsvc, identity, name, recipient, nodes, pins } => rt.block_on(async {
            let nodes = nodes
                .iter()
                .map(|n| n.parse::<common::NodeId>().map_err(|e| anyhow::anyhow!("bad node id {n:?} (32 hex digits): {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let dir = connect(&dirsvc, tls.clone()).await?;
            let id = fs_client::volume::load_identity(&dir, &identity).await?;
            let ring =
                fs_client::members::add(&dir, &id, Some(&pins.dir()), &name, &recipient, nodes).await?;
            println!(
                "member {name} added ({recipient}); every key epoch (0 to {}) is wrapped to it",
                ring.newest_epoch()
            );
            Ok(())
        }),
        MemberCmd::Remove { dirsvc, identity, name, pins } => rt.block_on(async {
            let dir = connect(&dirsvc, tls.clone()).await?;
            let id = fs_client::volume::load_identity(&dir, &identity).await?;
            let (ring, removed, unrevoked) =
                fs_client::members::remove(&dir, &id, Some(&pins.dir()), &name).await?;
            println!(
                "member {} removed; new data is sealed under key epoch {}, wrapped to the {} remaining member(s)",
                removed.name,
                ring.newest_epoch(),
                ring.members.len()
            );
            println!(
                "data written before stays readable with the keys {} had; run `fs-client reencrypt` to re-seal it",
                removed.name
            );
            if !unrevoked.is_empty() {
                anyhow::bail!(
                    "member {} is removed, but these of its certificates could not be revoked and still \
                     reach the cluster: {}; run `fs-client revoke NODE` for each",
                    removed.name,
                    unrevoked.iter().map(|n| n.to_hex()).collect::<Vec<_>>().join(", ")
                );
            }
            Ok(())
        }),
    }
}

/// Prints `fs-client member list`.
fn print_members(info: &common::rpc::dir::VolumeInfo, json: bool) -> anyhow::Result<()> {
    let ring = &info.keyring;
    if json {
        let members: Vec<serde_json::Value> = ring
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "recipient": m.recipient,
                    "nodes": m.nodes.iter().map(|n| n.to_hex()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let v = serde_json::json!({
            "volume": info.id.to_hex(),
            "keyring_version": ring.version,
            "key_epoch": ring.newest_epoch(),
            "members": members,
        });
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!("volume: {}", info.id.to_hex());
    println!("keyring_version: {}", ring.version);
    println!("key_epoch: {}", ring.newest_epoch());
    for m in &ring.members {
        let nodes: Vec<String> = m.nodes.iter().map(|n| n.to_hex()).collect();
        println!(
            "member: {} {} {}",
            m.name,
            m.recipient,
            if nodes.is_empty() { "-".into() } else { nodes.join(",") }
        );
    }
    Ok(())
}

/// `fs-client reencrypt`.
async fn reencrypt(
    dirsvc: &str,
    identity: &std::path::Path,
    pin_dir: PathBuf,
    tls: std::sync::Arc<common::tls::Tls>,
) -> anyhow::Result<()> {
    let dir = connect(dirsvc, tls).await?.with_retry_window(fs_client::remote::MOUNT_RETRY_WINDOW);
    let id = fs_client::volume::load_identity(&dir, identity).await?;
    let (info, keys) = fs_client::volume::open_pinned(&dir, &id, Some(&pin_dir)).await?;
    drop(id);
    let config = FsConfig {
        identity: Some(identity.to_path_buf()),
        pin_dir: Some(pin_dir),
        session_label: format!("fs-client reencrypt pid={}", std::process::id()),
        ..FsConfig::default()
    };
    let newest = keys.newest();
    let fs = fs_client::fs::Fs::new(dir, &info, keys, config);
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} blocks ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message("scanning");
        Some(b)
    } else {
        None
    };
    let progress = |p: fs_client::fs::ReencryptProgress| {
        if let Some(b) = &bar {
            b.set_length(p.blocks_total);
            b.set_position(p.blocks_done);
            b.set_message(format!("{} files", p.files_done));
        }
    };
    let report = fs.reencrypt(&progress).await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    fs.close_session().await;
    let report = report?;
    println!(
        "{} file(s) walked, {} block(s) of older key epochs re-sealed under epoch {newest} ({} bytes), {} skipped because they changed meanwhile, {} failed",
        report.files, report.resealed, report.bytes, report.changed, report.failed.len()
    );
    for (path, e) in &report.failed {
        eprintln!("fs-client: {path}: {e}");
    }
    if !report.failed.is_empty() {
        anyhow::bail!("{} file(s) could not be re-encrypted; run again", report.failed.len());
    }
    Ok(())
}

/// `mount -t fuse.p2pfs` (see `fs_client::mount_helper`): exits 0 once
/// mounted, 1 with the reason otherwise.
fn mount_helper(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let cli = Cli::command();
    let mut options: Vec<String> =
        cli.get_arguments().filter_map(|a| a.get_long().map(str::to_string)).collect();
    if let Some(mount) = cli.find_subcommand("mount") {
        options.extend(mount.get_arguments().filter_map(|a| a.get_long().map(str::to_string)));
    }
    let plan = fs_client::mount_helper::plan(&args, &options)?;
    let program = std::env::current_exe().context("cannot find this program")?;
    fs_client::mount_helper::run(&program, &plan)?;
    Ok(())
}

/// Runs a file command (`put`, `get`, `ls`, `rm`, `cat`) on the volume and
/// exits: 0 on success, 1 with `fs-client: MESSAGE` on stderr otherwise.
fn files_cmd<F, Fut>(vol: VolArgs, tls: std::sync::Arc<common::tls::Tls>, f: F) -> !
where
    F: FnOnce(std::sync::Arc<fs_client::files::Volume>) -> Fut,
    Fut: std::future::Future<Output = fs_client::Result<()>>,
{
    let code = match tokio::runtime::Runtime::new() {
        Err(e) => {
            eprintln!("fs-client: cannot start a runtime: {e}");
            1
        }
        Ok(rt) => {
            let r = rt.block_on(async {
                let config = fs_client::files::VolumeConfig {
                    dirsvc: vol.dirsvc,
                    identity: vol.identity,
                    pin_dir: vol.pins.dir(),
                    tls,
                    label: format!("fs-client files pid={}", std::process::id()),
                };
                let v = std::sync::Arc::new(fs_client::files::Volume::open(config).await?);
                let r = f(v.clone()).await;
                if let Ok(v) = std::sync::Arc::try_unwrap(v) {
                    v.close().await;
                }
                r
            });
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            match r {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("fs-client: {e}");
                    1
                }
            }
        }
    };
    std::process::exit(code)
}

/// A bytes progress bar (bytes, rate, ETA) on stderr when it is a terminal;
/// `total` 0 shows bytes and rate only.
fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let (bar, template) = if total > 0 {
        (
            indicatif::ProgressBar::new(total),
            "{bytes}/{total_bytes} [{bar:30}] {binary_bytes_per_sec}, eta {eta}",
        )
    } else {
        (indicatif::ProgressBar::no_length(), "{spinner} {bytes} {binary_bytes_per_sec}")
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

async fn connect(dirsvc: &str, tls: std::sync::Arc<common::tls::Tls>) -> anyhow::Result<DirClient> {
    DirClient::connect(dirsvc, tls).await.with_context(|| format!("cannot reach dirsvc at {dirsvc}"))
}

/// Prints what `fs-client volume` shows (see its `--help`).
fn print_volume(dirsvc: &str, info: Option<&common::rpc::dir::VolumeInfo>, json: bool) -> anyhow::Result<()> {
    if json {
        let volume = info.map(|v| {
            serde_json::json!({
                "id": v.id.to_hex(),
                "block_size": v.block_size,
                "replicas": v.replicas,
                "recipients": v.keyring.recipients(),
                "members": v.keyring.members.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
                "key_epoch": v.keyring.newest_epoch(),
                "legacy_layouts": v.legacy_layouts,
            })
        });
        println!("{}", serde_json::to_string(&serde_json::json!({ "dirsvc": dirsvc, "volume": volume }))?);
        return Ok(());
    }
    let Some(v) = info else {
        println!("no volume yet on dirsvc {dirsvc}");
        return Ok(());
    };
    println!("volume: {}", v.id.to_hex());
    println!("block_size: {}", v.block_size);
    println!("replicas: {}", v.replicas);
    println!("key_epoch: {}", v.keyring.newest_epoch());
    let recipients = v.keyring.recipients();
    if recipients.is_empty() {
        println!("recipients: unknown (the volume was created before volumes recorded their recipients)");
    }
    for r in &recipients {
        println!("recipient: {r}");
    }
    Ok(())
}

async fn print_peers(dir: &DirClient) -> anyhow::Result<()> {
    use common::rpc::dir::PeerState;
    let peers = dir.call(|c, ctx| async move { c.list_peers(ctx).await }).await?;
    println!(
        "{:<34} {:<22} {:<9} {:>14} {:>14} {:>9} {:<16}",
        "PEER", "ADDRESS", "STATE", "USED", "CAPACITY", "CHUNKS", "HOST/ZONE"
    );
    for p in peers {
        let state = match p.state {
            PeerState::Up => "up",
            PeerState::Suspect => "suspect",
            PeerState::Down => "down",
            PeerState::Draining => "draining",
            PeerState::Drained => "drained",
        };
        println!(
            "{:<34} {:<22} {:<9} {:>14} {:>14} {:>9} {:<16}",
            p.loc.id.to_hex(),
            p.loc.addr,
            state,
            p.usage.used_bytes,
            p.usage.capacity_bytes,
            p.usage.chunks,
            format!("{}/{}", p.labels.host, p.labels.zone)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_config_names_every_option_and_parses() {
        let text = include_str!("../../dist/config/client.toml");
        let problems = common::settings::check_example::<super::Cli>(text, &["mount"]);
        assert!(problems.is_empty(), "dist/config/client.toml: {problems:#?}");
    }
}
