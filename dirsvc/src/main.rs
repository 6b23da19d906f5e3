//! The `dirsvc` binary: parses the command line, sets up logging, runs the
//! service until SIGINT or SIGTERM. All logic lives in the library.

use anyhow::Context as _;
use clap::Parser;
use dirsvc::{
    limits, DirsvcConfig, DEFAULT_DB_PATH, DEFAULT_GC_GRACE, DEFAULT_GC_INTERVAL, DEFAULT_LISTEN,
    DEFAULT_PEER_SUSPECT_AFTER, DEFAULT_REPAIR_BANDWIDTH, DEFAULT_REPAIR_CONCURRENCY,
    DEFAULT_REPAIR_INTERVAL, DEFAULT_SESSION_LEASE,
};
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;
use tracing_subscriber::EnvFilter;

mod migrate_cmd;

/// Where the metadata lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Meta {
    /// One redb file, one dirsvc.
    Redb,
    /// An etcd cluster, several dirsvc.
    Etcd,
}

/// p2pfs directory service.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "To move a volume between redb and etcd: dirsvc migrate --help (docs/OPERATIONS.md)"
)]
struct Args {
    /// TOML config file: keys are the long option names (`listen =
    /// "0.0.0.0:7700"`). Precedence: flag, then environment, then this
    /// file, then the default. Example: dist/config/dirsvc.toml.
    #[arg(long, env = "P2PFS_DIRSVC_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Address to listen on (host:port; port 0 picks a free one).
    #[arg(long, env = "P2PFS_DIRSVC_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Path of the redb database file (created if missing; with `--meta
    /// redb` only).
    #[arg(long, env = "P2PFS_DIRSVC_DB", default_value = DEFAULT_DB_PATH)]
    db: PathBuf,
    /// Where the metadata lives: `redb` (the file `--db`, one dirsvc) or
    /// `etcd` (the cluster `--etcd-endpoints`, shared by several dirsvc of
    /// which an election picks the leader; docs/OPERATIONS.md).
    #[arg(long, env = "P2PFS_DIRSVC_META", value_enum, default_value_t = Meta::Redb)]
    meta: Meta,
    /// The etcd members' client addresses, comma-separated (`host:port`);
    /// with `--meta etcd`. dirsvc connects with its own TLS identity and
    /// expects the members to present dirsvc certificates of the cluster.
    #[arg(long, env = "P2PFS_DIRSVC_ETCD", value_name = "HOST:PORT,...")]
    etcd_endpoints: Option<String>,
    /// Prefix of every etcd key of this volume (several volumes can share
    /// one etcd cluster under different prefixes).
    #[arg(long, env = "P2PFS_DIRSVC_ETCD_PREFIX", default_value = "/p2pfs/")]
    etcd_prefix: String,
    /// Speak plain TCP to etcd instead of mutual TLS (loopback tests only).
    #[arg(long)]
    etcd_plaintext: bool,
    /// The address clients and peers reach this dirsvc at (`host:port`),
    /// handed out by the other dirsvc while this one leads; with `--meta
    /// etcd`. Default: `--listen`, which must then name a host and a port.
    #[arg(long, env = "P2PFS_DIRSVC_ADVERTISE", value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Seconds of the leader's election lease: a leader cut off from etcd
    /// for this long loses its term and another dirsvc takes over.
    #[arg(long, default_value_t = 5)]
    leader_lease_secs: u64,
    /// After binding, write the bound ip:port to this file (atomically).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Serve Prometheus metrics (/metrics) and the read-only status page
    /// (/ and /status.json) over plain HTTP on this address (host:port;
    /// port 0 picks a free one). Off unless given; keep it on loopback or a
    /// trusted network (docs/OPERATIONS.md).
    #[arg(long, env = "P2PFS_METRICS_ADDR", value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// After binding the metrics address, write the bound ip:port to this
    /// file (atomically).
    #[arg(long, requires = "metrics_addr")]
    metrics_addr_file: Option<PathBuf>,
    /// Seconds without a heartbeat after which a peer counts as down.
    #[arg(long, default_value_t = common::config::PEER_DOWN_AFTER.as_secs(), conflicts_with = "peer_down_after_ms")]
    peer_down_after_secs: u64,
    /// Milliseconds without a heartbeat after which a peer counts as down
    /// (instead of --peer-down-after-secs).
    #[arg(long)]
    peer_down_after_ms: Option<u64>,
    /// Milliseconds without a heartbeat after which a peer counts as
    /// suspect (no new chunks; capped at the down timeout).
    #[arg(long, default_value_t = DEFAULT_PEER_SUSPECT_AFTER.as_millis() as u64)]
    peer_suspect_after_ms: u64,
    /// Milliseconds between repair rounds.
    #[arg(long, default_value_t = DEFAULT_REPAIR_INTERVAL.as_millis() as u64)]
    repair_interval_ms: u64,
    /// Chunks repaired at the same time (0 pauses repair).
    #[arg(long, default_value_t = DEFAULT_REPAIR_CONCURRENCY)]
    repair_concurrency: usize,
    /// Bytes per second repair copies at most (0 = unlimited).
    #[arg(long, value_name = "BYTES_PER_SEC", default_value_t = DEFAULT_REPAIR_BANDWIDTH)]
    repair_bandwidth: u64,
    /// Seconds between garbage-collection rounds.
    #[arg(long, default_value_t = DEFAULT_GC_INTERVAL.as_secs())]
    gc_interval_secs: u64,
    /// Seconds an unreferenced or never-committed chunk is kept before it
    /// is deleted from the peers.
    #[arg(long, default_value_t = DEFAULT_GC_GRACE.as_secs())]
    gc_grace_secs: u64,
    /// Milliseconds a client session lives without a renewal; then its
    /// locks are released and its unlinked open files freed.
    #[arg(long, default_value_t = DEFAULT_SESSION_LEASE.as_millis() as u64)]
    session_lease_ms: u64,
    /// Milliseconds after a start during which clients reclaim their
    /// sessions, opens and locks (new locks wait); default: the session
    /// lease; 0 = none. Skipped when no session was alive.
    #[arg(long)]
    grace_ms: Option<u64>,
    /// Milliseconds a file that lost its last name while no mount held it
    /// open stays openable before it is freed (an open racing an editor's
    /// save then opens the old file); 0 = freed at once.
    #[arg(long, default_value_t = dirsvc::DEFAULT_UNLINKED_LINGER.as_millis() as u64)]
    unlinked_linger_ms: u64,
    /// Changes kept in memory for clients' cache invalidation.
    #[arg(long, default_value_t = dirsvc::changes::DEFAULT_CAPACITY)]
    change_feed_capacity: usize,
    /// Directory with this dirsvc's TLS identity: `node.key` (mode 0600),
    /// `node.crt` (a dirsvc certificate of the cluster CA) and `ca.crt`.
    /// Renewed certificates are written back here.
    #[arg(long, env = "P2PFS_DIRSVC_TLS_DIR", default_value = "tls")]
    tls_dir: PathBuf,
    /// Directory with the cluster CA (`ca.crt`, `ca.key`), to admit nodes
    /// that join with a token and to renew certificates; without it nodes
    /// get their certificates from the operator.
    #[arg(long, env = "P2PFS_DIRSVC_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// Most live client sessions per caller (per certificate node id).
    #[arg(long, default_value_t = limits::DEFAULT_MAX_SESSIONS_PER_PRINCIPAL)]
    max_sessions_per_principal: usize,
    /// Most live client sessions in total.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_SESSIONS)]
    max_sessions: usize,
    /// Most lock ranges one session may hold.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_LOCKS_PER_SESSION)]
    max_locks_per_session: usize,
    /// Most waiting calls (lock waits, change-feed polls) per session.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_WAITERS_PER_SESSION)]
    max_waiters_per_session: usize,
    /// Most waiting calls over all sessions.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_WAITERS)]
    max_waiters: usize,
    /// Most extended attributes per inode.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_XATTRS_PER_INODE)]
    max_xattrs_per_inode: usize,
    /// Most block entries one commit may carry, below the store's own limit
    /// (announced to clients; default: the store's).
    #[arg(long, value_name = "ENTRIES")]
    max_commit_entries: Option<usize>,
    /// Most bytes one placement call may promise (count x chunk bytes x R).
    #[arg(long, value_name = "BYTES", default_value_t = limits::DEFAULT_MAX_PLACEMENT_BYTES_PER_CALL)]
    max_placement_bytes_per_call: u64,
    /// Most bytes one caller's placements may hold promised on peers until
    /// their next heartbeat.
    #[arg(long, value_name = "BYTES", default_value_t = limits::DEFAULT_MAX_PROMISED_BYTES_PER_PRINCIPAL)]
    max_promised_bytes_per_principal: u64,
}

/// Runs [`run`]; an error is printed as one line with its causes
/// (`dirsvc: error: what: why: …`) and the exit status is 1.
fn main() -> std::process::ExitCode {
    // Chunk-sized buffers are reused, not mapped and zeroed afresh each time.
    common::memory::retain_freed_memory();
    // `dirsvc migrate ...` (see `dirsvc migrate --help`): a one-shot
    // command, not the service.
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_some_and(|a| a == "migrate") {
        return match migrate_cmd::run(argv.collect()) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dirsvc migrate: error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dirsvc: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // tarpc's server warns of every connection a client ends without a
        // TLS close_notify (each `fs-client status`): frames are length
        // delimited, so that says nothing about the data; only errors.
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tarpc::server=error")),
        )
        .with_writer(std::io::stderr)
        // A log that cannot be written (a full disk under the log file) is
        // dropped: tracing would otherwise report it with eprintln!, whose
        // failure panics and, with the abort-on-panic hook, kills the daemon.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    common::panic::abort_on_panic(env!("CARGO_PKG_VERSION"));
    let args: Args = common::settings::parse("P2PFS_DIRSVC_CONFIG", None).unwrap_or_else(|e| e.exit());
    let peer_down_after = match args.peer_down_after_ms {
        Some(ms) => Duration::from_millis(ms),
        None => Duration::from_secs(args.peer_down_after_secs),
    };
    let config = DirsvcConfig {
        listen: args.listen.clone(),
        db_path: args.db.clone(),
        peer_suspect_after: Duration::from_millis(args.peer_suspect_after_ms),
        peer_down_after,
        repair_interval: Duration::from_millis(args.repair_interval_ms),
        repair_concurrency: args.repair_concurrency,
        repair_bandwidth_bytes_per_sec: args.repair_bandwidth,
        gc_interval: Duration::from_secs(args.gc_interval_secs),
        gc_grace: Duration::from_secs(args.gc_grace_secs),
        session_lease: Duration::from_millis(args.session_lease_ms.max(1)),
        grace_period: args.grace_ms.map(Duration::from_millis),
        unlinked_linger: Duration::from_millis(args.unlinked_linger_ms),
        change_feed_capacity: args.change_feed_capacity,
        max_sessions_per_principal: args.max_sessions_per_principal,
        max_sessions: args.max_sessions,
        max_locks_per_session: args.max_locks_per_session,
        max_waiters_per_session: args.max_waiters_per_session,
        max_waiters: args.max_waiters,
        max_xattrs_per_inode: args.max_xattrs_per_inode,
        max_commit_entries: args.max_commit_entries,
        max_placement_bytes_per_call: args.max_placement_bytes_per_call,
        max_promised_bytes_per_principal: args.max_promised_bytes_per_principal,
        metrics_listen: args.metrics_addr.clone(),
        ..DirsvcConfig::default()
    };
    let tls = common::tls::Tls::load(&args.tls_dir)
        .with_context(|| format!("loading the TLS identity from {}", args.tls_dir.display()))?;
    let ca = match &args.ca_dir {
        Some(d) => Some(std::sync::Arc::new(
            common::pki::Ca::load(d)
                .with_context(|| format!("loading the cluster CA from {}", d.display()))?,
        )),
        None => None,
    };
    let config = DirsvcConfig {
        tls: Some(std::sync::Arc::new(tls)),
        tls_dir: Some(args.tls_dir.clone()),
        ca,
        ..config
    };
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let handle = match args.meta {
        Meta::Redb => {
            let db_path = config.db_path.clone();
            let handle = dirsvc::spawn(config)
                .await
                .with_context(|| format!("starting dirsvc with database {}", db_path.display()))?;
            info!(addr = %handle.addr, db = %db_path.display(), "dirsvc listening");
            handle
        }
        Meta::Etcd => {
            let member = etcd_member(&args, &config)?;
            let endpoints = member.etcd.endpoints.join(",");
            let handle = dirsvc::spawn_etcd(config, member)
                .await
                .with_context(|| format!("starting dirsvc on etcd {endpoints}"))?;
            info!(addr = %handle.addr, etcd = %endpoints, "dirsvc listening (leader by election)");
            handle
        }
    };
    // The metrics address first: the RPC address file is what scripts
    // wait for, so once it exists the metrics file does too.
    if let (Some(file), Some(addr)) = (&args.metrics_addr_file, handle.metrics_addr) {
        common::fsutil::write_atomic(file, addr.to_string().as_bytes(), 0o644)
            .with_context(|| format!("writing the metrics address file {}", file.display()))?;
    }
    if let Some(file) = &args.addr_file {
        common::fsutil::write_atomic(file, handle.addr.to_string().as_bytes(), 0o644)
            .with_context(|| format!("writing the address file {}", file.display()))?;
    }
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    info!("shutting down");
    handle.stop().await;
    Ok(())
}

/// The etcd settings of `args`, with this dirsvc's TLS identity from
/// `config` (unless `--etcd-plaintext`) and its node id as the engine's
/// instance name (stable across restarts).
fn etcd_member(args: &Args, config: &DirsvcConfig) -> anyhow::Result<dirsvc::EtcdMember> {
    let list = args.etcd_endpoints.as_deref().context("--meta etcd needs --etcd-endpoints")?;
    let endpoints: Vec<String> =
        list.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
    anyhow::ensure!(!endpoints.is_empty(), "--etcd-endpoints lists no address");
    let advertise = match &args.advertise {
        Some(a) => a.clone(),
        None => {
            let l = &args.listen;
            let host_port = l.rsplit_once(':').filter(|(h, p)| {
                !h.is_empty()
                    && !["0.0.0.0", "[::]", "::"].contains(h)
                    && p.parse::<u16>().is_ok_and(|p| p != 0)
            });
            anyhow::ensure!(
                host_port.is_some(),
                "--listen {l} does not say where clients reach this dirsvc; give --advertise HOST:PORT"
            );
            l.clone()
        }
    };
    let tls = config.tls.clone().context("dirsvc needs a TLS identity")?;
    let mut etcd = dirsvc::kv::etcd::EtcdConfig::new(endpoints, args.etcd_prefix.as_bytes().to_vec());
    etcd.instance = format!("dirsvc-{}", tls.node().to_hex());
    etcd.tls = (!args.etcd_plaintext).then_some(tls);
    Ok(dirsvc::EtcdMember { etcd, advertise, lease: Duration::from_secs(args.leader_lease_secs.max(1)) })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_config_names_every_option_and_parses() {
        let text = include_str!("../../dist/config/dirsvc.toml");
        let problems = common::settings::check_example::<super::Args>(text, &[]);
        assert!(problems.is_empty(), "dist/config/dirsvc.toml: {problems:#?}");
    }
}
