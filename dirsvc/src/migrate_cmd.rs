//! `dirsvc migrate`: the command line of a volume's move between metadata
//! engines (redb file to etcd prefix, and back). Opens both sides, refuses
//! a source in use or a target with keys, copies, verifies, prints a
//! per-family table; the logic is `dirsvc::store::transfer`.

use anyhow::Context as _;
use clap::Parser;
use dirsvc::kv::Engine;
use dirsvc::store::transfer;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a side of the migration lives (as `dirsvc --meta`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Meta {
    /// A redb file (`--from-db` / `--to-db`).
    Redb,
    /// An etcd cluster and prefix (`--from-etcd-*` / `--to-etcd-*`).
    Etcd,
}

/// Copy a volume's metadata from one engine to another (redb to etcd, etcd
/// to redb), then verify it: a count and a BLAKE3 hash of every key family
/// on both sides, printed as a table; exits 1 on any difference. Stop every
/// dirsvc of the volume first: a redb file in use (its lock) or an etcd
/// prefix with an elected dirsvc is refused, and so is a target that holds
/// any key (a new redb file or an empty prefix only).
#[derive(Debug, Parser)]
#[command(name = "dirsvc migrate")]
struct MigrateArgs {
    /// Where the volume is now.
    #[arg(long, value_enum)]
    from_meta: Meta,
    /// The source redb file (with `--from-meta redb`).
    #[arg(long, value_name = "FILE")]
    from_db: Option<PathBuf>,
    /// The source etcd members' client addresses, comma-separated.
    #[arg(long, value_name = "HOST:PORT,...")]
    from_etcd_endpoints: Option<String>,
    /// The source's etcd key prefix.
    #[arg(long, default_value = "/p2pfs/")]
    from_etcd_prefix: String,
    /// Where the volume goes.
    #[arg(long, value_enum)]
    to_meta: Meta,
    /// The target redb file (created; must not hold keys).
    #[arg(long, value_name = "FILE")]
    to_db: Option<PathBuf>,
    /// The target etcd members' client addresses, comma-separated.
    #[arg(long, value_name = "HOST:PORT,...")]
    to_etcd_endpoints: Option<String>,
    /// The target's etcd key prefix (must hold no key).
    #[arg(long, default_value = "/p2pfs/")]
    to_etcd_prefix: String,
    /// Speak plain TCP to etcd instead of mutual TLS (loopback tests only).
    #[arg(long)]
    etcd_plaintext: bool,
    /// The TLS identity presented to etcd (a dirsvc's: `node.key`,
    /// `node.crt`, `ca.crt`).
    #[arg(long, env = "P2PFS_DIRSVC_TLS_DIR", default_value = "tls")]
    tls_dir: PathBuf,
}

/// One side, opened.
enum Side {
    Redb(Arc<dirsvc::kv::redb::RedbEngine>),
    Etcd(Arc<dirsvc::kv::etcd::EtcdEngine>),
}

impl Side {
    fn engine(&self) -> &dyn Engine {
        match self {
            Side::Redb(e) => e.as_ref(),
            Side::Etcd(e) => e.as_ref(),
        }
    }
}

/// Opens one side: `source` decides whether a redb file must exist.
fn open(
    args: &MigrateArgs,
    meta: Meta,
    db: Option<&PathBuf>,
    endpoints: Option<&String>,
    prefix: &str,
    source: bool,
) -> anyhow::Result<(Side, String)> {
    let which = if source { "from" } else { "to" };
    match meta {
        Meta::Redb => {
            let db = db.with_context(|| format!("--{which}-meta redb needs --{which}-db FILE"))?;
            let engine = transfer::open_redb(db, !source)?;
            Ok((Side::Redb(Arc::new(engine)), format!("redb {}", db.display())))
        }
        Meta::Etcd => {
            let list = endpoints.with_context(|| {
                format!("--{which}-meta etcd needs --{which}-etcd-endpoints HOST:PORT,...")
            })?;
            let eps: Vec<String> =
                list.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
            anyhow::ensure!(!eps.is_empty(), "--{which}-etcd-endpoints lists no address");
            let mut config = dirsvc::kv::etcd::EtcdConfig::new(eps, prefix.as_bytes().to_vec());
            config.instance = "dirsvc-migrate".into();
            if !args.etcd_plaintext {
                let tls = common::tls::Tls::load(&args.tls_dir)
                    .with_context(|| format!("loading the TLS identity from {}", args.tls_dir.display()))?;
                config.tls = Some(Arc::new(tls));
            }
            let engine = dirsvc::kv::etcd::EtcdEngine::connect(&config)?;
            transfer::check_etcd_idle(&engine)?;
            Ok((Side::Etcd(Arc::new(engine)), format!("etcd {list} prefix {prefix}")))
        }
    }
}

/// A progress bar on a terminal (stderr), hidden otherwise.
fn bar(len: Option<u64>, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = match len {
        Some(n) => indicatif::ProgressBar::new(n).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {pos}/{len} keys ({per_sec}, {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        ),
        None => indicatif::ProgressBar::new_spinner(),
    };
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Runs `dirsvc migrate` with `argv` (the words after `migrate`); prints
/// the table to stdout.
///
/// Errors: bad flags, a side that cannot be opened or is refused, an
/// engine failure, or a verification mismatch.
pub fn run(argv: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let args = MigrateArgs::parse_from(std::iter::once("dirsvc migrate".into()).chain(argv));
    let start = Instant::now();
    let (source, from) = open(
        &args,
        args.from_meta,
        args.from_db.as_ref(),
        args.from_etcd_endpoints.as_ref(),
        &args.from_etcd_prefix,
        true,
    )
    .context("opening the source")?;
    let (target, to) = open(
        &args,
        args.to_meta,
        args.to_db.as_ref(),
        args.to_etcd_endpoints.as_ref(),
        &args.to_etcd_prefix,
        false,
    )
    .context("opening the target")?;
    if let (Side::Redb(_), Side::Redb(_)) = (&source, &target) {
        anyhow::ensure!(args.from_db != args.to_db, "the source and the target are the same file");
    }
    anyhow::ensure!(
        transfer::is_empty(target.engine())?,
        "the target ({to}) is not empty; migrate only into a new redb file or an empty etcd prefix"
    );
    eprintln!("dirsvc migrate: from {from} to {to}");
    let pb = bar(None, "reading");
    let before =
        transfer::digest(source.engine(), &mut |n| pb.set_position(n)).context("digesting the source")?;
    pb.finish_and_clear();
    let total: u64 = before.iter().map(|d| d.keys).sum();
    let pb = bar(Some(total), "copying");
    let stats = transfer::copy(source.engine(), target.engine(), &mut |k, _| pb.set_position(k))
        .context("copying")?;
    pb.finish_and_clear();
    let pb = bar(Some(total), "verifying");
    let after =
        transfer::digest(target.engine(), &mut |n| pb.set_position(n)).context("digesting the target")?;
    pb.finish_and_clear();
    // The source too, again: it must not have changed while copying.
    let again = transfer::digest(source.engine(), &mut |_| {}).context("digesting the source again")?;
    let checks = transfer::compare(&again, &after);
    println!("{:<13} {:>10} {:>10} {:>12}  {:<16}  result", "family", "source", "target", "bytes", "blake3");
    let mut bad = 0;
    for c in &checks {
        if c.source.keys == 0 && c.target.keys == 0 {
            continue;
        }
        let ok = c.matches();
        if !ok {
            bad += 1;
        }
        println!(
            "{:<13} {:>10} {:>10} {:>12}  {:<16}  {}",
            c.source.name,
            c.source.keys,
            c.target.keys,
            c.source.bytes,
            hex::encode(&c.target.hash[..8]),
            if ok { "ok" } else { "MISMATCH" }
        );
    }
    if again != before {
        anyhow::bail!("the source changed during the copy (is a dirsvc running on it?); the target is not a faithful copy");
    }
    anyhow::ensure!(
        bad == 0,
        "{bad} famil{} differ between source and target",
        if bad == 1 { "y" } else { "ies" }
    );
    println!(
        "copied {} keys ({} bytes) in {} commits, verified, in {:.1} s",
        stats.keys,
        stats.bytes,
        stats.commits,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
