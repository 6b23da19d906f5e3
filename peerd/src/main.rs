//! The `peerd` binary: parses the command line, sets up logging and signal
//! handling, and runs [`peerd::spawn`] until SIGINT or SIGTERM.

use anyhow::Context as _;
use clap::Parser;
use peerd::PeerdConfig;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// p2pfs storage peer: keeps verified encrypted chunks on local disk.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML config file: keys are the long option names (`listen =
    /// "0.0.0.0:7700"`). Precedence: flag, then environment, then this
    /// file, then the default. Example: dist/config/peerd.toml.
    #[arg(long, env = "P2PFS_PEERD_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Address to serve PeerService on (`ip:port`; port 0 picks a free one).
    #[arg(long, env = "P2PFS_PEERD_LISTEN")]
    listen: String,
    /// Data directory (chunks, peer id); created if missing.
    #[arg(long, env = "P2PFS_PEERD_DATA_DIR")]
    data_dir: PathBuf,
    /// Address of dirsvc (`host:port`).
    #[arg(long, env = "P2PFS_DIRSVC")]
    dirsvc: String,
    /// Address to register with dirsvc (default: the bound address).
    #[arg(long, env = "P2PFS_PEERD_ADVERTISE")]
    advertise: Option<String>,
    /// Capacity offered, in bytes (default: the filesystem's size).
    #[arg(long, env = "P2PFS_PEERD_CAPACITY")]
    capacity: Option<u64>,
    /// After binding, write the bound `ip:port` to this file (atomically).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Serve Prometheus metrics (/metrics) over plain HTTP on this address
    /// (`host:port`; port 0 picks a free one). Off unless given; keep it on
    /// loopback or a trusted network (docs/OPERATIONS.md).
    #[arg(long, env = "P2PFS_METRICS_ADDR", value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// After binding the metrics address, write the bound `ip:port` to this
    /// file (atomically).
    #[arg(long, requires = "metrics_addr")]
    metrics_addr_file: Option<PathBuf>,
    /// Milliseconds between heartbeats to dirsvc (also the longest retry
    /// delay while dirsvc is unreachable).
    #[arg(long, env = "P2PFS_PEERD_HEARTBEAT_INTERVAL_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_interval_ms: u64,
    /// Scrub rate limit in bytes re-hashed per second; 0 turns scrub off.
    #[arg(long, env = "P2PFS_PEERD_SCRUB_BYTES_PER_SEC", default_value_t = peerd::DEFAULT_SCRUB_BYTES_PER_SEC)]
    scrub_bytes_per_sec: u64,
    /// Seconds between the end of one scrub pass and the start of the next.
    #[arg(long, env = "P2PFS_PEERD_SCRUB_INTERVAL_SECS",
          default_value_t = peerd::DEFAULT_SCRUB_INTERVAL.as_secs())]
    scrub_interval_secs: u64,
    /// This peer's host label: placement puts a chunk's replicas on distinct
    /// hosts (empty: unknown, the peer is its own host).
    #[arg(long, env = "P2PFS_PEERD_HOST_LABEL", default_value = "")]
    host_label: String,
    /// This peer's zone label (rack, room, site): placement spreads replicas
    /// over distinct zones (empty: unknown).
    #[arg(long, env = "P2PFS_PEERD_ZONE_LABEL", default_value = "")]
    zone_label: String,
    /// Directory of this peer's TLS identity: `node.key` (mode 0600),
    /// `node.crt` (a peer certificate of the cluster CA), `ca.crt`
    /// (default: `<data-dir>/tls`). Renewed certificates are written here.
    #[arg(long, env = "P2PFS_PEERD_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// A join token (from `fs-client token create --role peer`): when the
    /// TLS directory holds no certificate yet, get one from dirsvc with it.
    /// Used once; the token is then spent.
    #[arg(long, env = "P2PFS_JOIN_TOKEN")]
    join: Option<String>,
}

/// Runs [`run`]; an error is printed as one line with its causes
/// (`peerd: error: what: why: …`) and the exit status is 1.
fn main() -> std::process::ExitCode {
    // Chunk-sized buffers are reused, not mapped and zeroed afresh each time.
    common::memory::retain_freed_memory();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args: Args = common::settings::parse("P2PFS_PEERD_CONFIG", None).unwrap_or_else(|e| e.exit());
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

    // Installed before anything is announced (the address file), so a
    // signal sent as soon as the address is known already stops us cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let config = PeerdConfig {
        listen: args.listen,
        advertise: args.advertise,
        data_dir: args.data_dir,
        dirsvc: args.dirsvc,
        capacity_bytes: args.capacity,
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
        scrub_bytes_per_sec: args.scrub_bytes_per_sec,
        scrub_interval: Duration::from_secs(args.scrub_interval_secs),
        host_label: args.host_label,
        zone_label: args.zone_label,
        tls_dir: args.tls_dir,
        join_token: args.join,
        metrics_listen: args.metrics_addr,
        ..PeerdConfig::default()
    };
    let handle = peerd::spawn(config).await.context("starting peerd")?;

    // The metrics address first: the RPC address file is what scripts wait
    // for, so once it exists the metrics file does too.
    let files = args
        .metrics_addr_file
        .as_ref()
        .zip(handle.metrics_addr)
        .into_iter()
        .chain(args.addr_file.as_ref().map(|p| (p, handle.addr)));
    for (path, addr) in files {
        let addr = addr.to_string();
        let written = tokio::task::spawn_blocking({
            let path = path.clone();
            move || peerd::fsutil::write_atomic(&path, addr.as_bytes())
        })
        .await;
        let result = match written {
            Ok(r) => r.map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        if let Err(e) = result {
            handle.shutdown().await;
            return Err(e.context(format!("writing address file {}", path.display())));
        }
    }

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT received; shutting down"),
    }
    handle.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_config_names_every_option_and_parses() {
        let text = include_str!("../../dist/config/peerd.toml");
        let problems = common::settings::check_example::<super::Args>(text, &[]);
        assert!(problems.is_empty(), "dist/config/peerd.toml: {problems:#?}");
    }
}
