//! The `dirsvc` binary: parses the command line, sets up logging, runs the
//! service until SIGINT or SIGTERM. All logic lives in the library.

use anyhow::Context as _;
use clap::Parser;
use dirsvc::{DirsvcConfig, DEFAULT_DB_PATH, DEFAULT_LISTEN};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;
use tracing_subscriber::EnvFilter;

/// p2pfs directory service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (host:port; port 0 picks a free one).
    #[arg(long, env = "P2PFS_DIRSVC_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Path of the redb database file (created if missing).
    #[arg(long, env = "P2PFS_DIRSVC_DB", default_value = DEFAULT_DB_PATH)]
    db: PathBuf,
    /// After binding, write the bound ip:port to this file (atomically).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Seconds without a heartbeat after which a peer counts as down.
    #[arg(long, default_value_t = common::config::PEER_DOWN_AFTER.as_secs())]
    peer_down_after_secs: u64,
}

/// Writes `contents` to `path` via a temporary file in the same directory
/// and a rename, so a reader never sees a partial file.
fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = DirsvcConfig {
        listen: args.listen,
        db_path: args.db,
        peer_down_after: Duration::from_secs(args.peer_down_after_secs),
        ..DirsvcConfig::default()
    };
    let db_path = config.db_path.clone();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let handle = dirsvc::spawn(config)
        .await
        .with_context(|| format!("starting dirsvc with database {}", db_path.display()))?;
    info!(addr = %handle.addr, db = %db_path.display(), "dirsvc listening");
    if let Some(file) = &args.addr_file {
        write_atomically(file, &handle.addr.to_string())
            .with_context(|| format!("writing the address file {}", file.display()))?;
    }
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    info!("shutting down");
    handle.shutdown().await;
    Ok(())
}
