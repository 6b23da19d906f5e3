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
    /// them): $P2PFS_STATE/client-tls for `mount` and `join`,
    /// $P2PFS_STATE/admin-tls for the other commands (client-tls if it has
    /// no certificate); else ~/.config/p2pfs/tls.
    #[arg(long, global = true, env = "P2PFS_TLS_DIR")]
    tls_dir: Option<PathBuf>,
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
        #[arg(short, long, env = "P2PFS_IDENTITY_FILE")]
        output: PathBuf,
    },
    /// Create the volume on a dirsvc, wrapped to this identity.
    Init {
        /// dirsvc address, host:port.
        #[arg(long, env = "P2PFS_DIRSVC", default_value = "127.0.0.1:7700")]
        dirsvc: String,
        /// age identity file.
        #[arg(short, long = "identity", env = "P2PFS_IDENTITY_FILE")]
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
        /// dirsvc address, host:port.
        #[arg(long, env = "P2PFS_DIRSVC", default_value = "127.0.0.1:7700")]
        dirsvc: String,
        /// age identity file.
        #[arg(short, long = "identity", env = "P2PFS_IDENTITY_FILE")]
        identity: PathBuf,
        /// Decrypted block cache in MiB.
        #[arg(long, default_value_t = 256)]
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
        /// Where data that cannot be stored by unmount (peers full or
        /// unreachable) is kept, sealed, until the next mount stores it
        /// (default: $XDG_STATE_HOME/p2pfs/recovery, or
        /// ~/.local/state/p2pfs/recovery).
        #[arg(long, env = "P2PFS_RECOVERY_DIR")]
        recovery_dir: Option<PathBuf>,
        #[command(flatten)]
        pins: PinArgs,
        /// Where to mount.
        mountpoint: PathBuf,
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
        /// dirsvc address, host:port.
        #[arg(long, env = "P2PFS_DIRSVC", default_value = "127.0.0.1:7700")]
        dirsvc: String,
        /// Print one JSON object instead of `key: value` lines.
        #[arg(long)]
        json: bool,
    },
    /// List the peers dirsvc knows, with state and usage.
    Peers {
        /// dirsvc address, host:port.
        #[arg(long, env = "P2PFS_DIRSVC", default_value = "127.0.0.1:7700")]
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
    ///    "replicas", "at_r", "under_r", "lost", "pending_upload_bytes",
    ///    "dirty_bytes", "uploading_bytes", "uncommitted_blocks",
    ///    "per_block", "runs": [{"first", "last", "live", "chunk"?}],
    ///    "truncated"}
    /// A replica is live when its peer is up or suspect and not draining
    /// (what dirsvc counts towards R). Files of at most 256 stored blocks
    /// list every block with its chunk id; larger ones runs of blocks with
    /// the same live count. pending_upload_bytes: bytes written through
    /// this mount not yet stored on peers (null if the file stayed busy).
    ///
    /// Exit status: 0 when the report was printed, 1 otherwise.
    #[command(verbatim_doc_comment)]
    Status {
        /// dirsvc address, host:port.
        #[arg(long, env = "P2PFS_DIRSVC", default_value = "127.0.0.1:7700")]
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
        /// dirsvc address, host:port.
        #[arg(long, env = "P2PFS_DIRSVC", default_value = "127.0.0.1:7700")]
        dirsvc: String,
        /// age identity file of a member.
        #[arg(short, long = "identity", env = "P2PFS_IDENTITY_FILE")]
        identity: PathBuf,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Drain a peer: copy its chunks elsewhere so it can leave with no loss
    /// (admin).
    Drain {
        /// dirsvc address, host:port.
        #[arg(long, env = "P2PFS_DIRSVC", default_value = "127.0.0.1:7700")]
        dirsvc: String,
        /// The peer's id (32 hex digits, as `fs-client peers` shows).
        peer: String,
    },
    /// The cluster's certificate authority: create it, issue certificates
    /// offline.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Get this node's certificate from dirsvc with a join token (a new
    /// client on another host), into the TLS directory.
    Join {
        /// dirsvc address, host:port.
        #[arg(long, env = "P2PFS_DIRSVC", default_value = "127.0.0.1:7700")]
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
        /// dirsvc address, host:port.
        #[arg(long, env = "P2PFS_DIRSVC", default_value = "127.0.0.1:7700")]
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
        /// dirsvc address, host:port.
        #[arg(long, env = "P2PFS_DIRSVC", default_value = "127.0.0.1:7700")]
        dirsvc: String,
        /// The role it grants: peer or client.
        #[arg(long)]
        role: common::rpc::Role,
        /// How long it stays usable (s, m, h or d; at most 7d).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
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
        /// dirsvc address, host:port.
        #[arg(long, env = "P2PFS_DIRSVC", default_value = "127.0.0.1:7700")]
        dirsvc: String,
        /// Print one JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Add a member: every key epoch is wrapped to its recipient too, so it
    /// reads everything. Needs a member's identity.
    Add {
        /// dirsvc address, host:port.
        #[arg(long, env = "P2PFS_DIRSVC", default_value = "127.0.0.1:7700")]
        dirsvc: String,
        /// age identity file of an existing member.
        #[arg(short, long = "identity", env = "P2PFS_IDENTITY_FILE")]
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
        /// dirsvc address, host:port.
        #[arg(long, env = "P2PFS_DIRSVC", default_value = "127.0.0.1:7700")]
        dirsvc: String,
        /// age identity file of a member that stays.
        #[arg(short, long = "identity", env = "P2PFS_IDENTITY_FILE")]
        identity: PathBuf,
        /// The member's name (`fs-client member list`).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        pins: PinArgs,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // fuser::reply logs ERROR for every reply to a request the
                // kernel already dropped (its process was interrupted): normal.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=error,fuser::reply=off")),
        )
        .with_writer(std::io::stderr)
        // A log that cannot be written (a full disk under the log file) is
        // dropped: tracing would otherwise report it with eprintln!, whose
        // failure panics and, with panic = "abort", kills the daemon.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
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
            recovery_dir,
            pins,
            mountpoint,
        } => {
            let fs = FsConfig {
                cache_bytes: cache_mib << 20,
                uploads_in_flight,
                min_replicas,
                ..FsConfig::default()
            };
            let recovery_dir = recovery_dir.unwrap_or_else(fs_client::mount::default_recovery_dir);
            fs_client::mount::run(MountConfig {
                dirsvc,
                identity,
                mountpoint,
                fuse_threads: threads,
                recovery_dir,
                tls_dir: fs_client::admin::tls_dir(tls_dir.clone(), Role::Client),
                pin_dir: pins.dir(),
                fs,
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
