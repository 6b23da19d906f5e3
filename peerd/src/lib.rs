//! peerd, the p2pfs storage peer: keeps sealed chunks on a local disk,
//! verifies each one's BLAKE3 on the way in, on every read and by a
//! background scrub, serves whole chunks or byte ranges over `PeerService`,
//! copies chunks from other peers when dirsvc asks (`fetch_from`, for repair
//! and drain), lists its chunks for garbage collection, and registers and
//! heartbeats with dirsvc.
//!
//! # Architecture
//!
//! [`spawn`] opens the [`store::FsChunkStore`] (which owns the data
//! directory and holds its lock), binds the listener and starts four named
//! tasks:
//!
//! - `serve`, the accept loop (`common::serve_tarpc!`, mutual TLS): one
//!   task per connection, one task per request, each calling the
//!   [`server::PeerServer`] handlers (authorized from the caller's
//!   certificate), which call the store; the store runs its file work on
//!   tokio's blocking pool. `fetch_from` pulls the chunk from the source
//!   peer over the pool of connections (`common::net::Pool`) and stores it
//!   like a put (see [`fetch`]);
//! - `heartbeat`: registers with dirsvc (address, usage, host/zone labels)
//!   and heartbeats forever; keeps the revocation list current and renews
//!   the peer's certificate;
//! - `corrupt-reporter` ([`report`]): tells dirsvc about every chunk found
//!   corrupt (by a read, a put, `fetch_from` or scrub) until dirsvc
//!   acknowledges it;
//! - `scrub` ([`scrub`]): re-hashes every chunk at a bounded rate, one pass
//!   then a pause, moving corrupt ones aside.
//!
//! None of them depends on dirsvc being up: the two that talk to it retry
//! with exponential backoff (capped at the heartbeat interval) and
//! reconnect after any failure or missed deadline, forever; the server and
//! scrub never talk to it. All four stop on one cancellation token.
//! [`PeerdHandle::shutdown`] fires it, waits for the tasks and for in-flight
//! requests to release the store, so the data directory can be opened again
//! as soon as it returns. Dropping the handle without `shutdown` also stops
//! the tasks, without waiting.
//!
//! Durability: a put (and a `fetch_from`) is acknowledged only after its
//! file and directory entry are fsynced (see [`store`]), so `kill -9` loses
//! no acknowledged chunk.

// No panic reachable from a message or a stored byte (invariant 5):
// errors, never unwrap/expect, outside tests (clippy.toml allows them there).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod error;
pub mod fetch;
pub mod fsutil;
mod heartbeat;
pub mod peer_id;
pub mod report;
pub mod revoked;
pub mod scrub;
pub mod server;
pub mod store;
pub mod telemetry;

pub use error::Error;
pub use report::CorruptQueue;
pub use scrub::{PassSummary, ScrubStats, DEFAULT_SCRUB_BYTES_PER_SEC, DEFAULT_SCRUB_INTERVAL};
pub use store::{ChunkStore, FsChunkStore, StoreConfig, Verified};

use common::net::{DirAddrs, Pool};
use common::rpc::dir::PeerLabels;
use common::rpc::peer::PeerService as _;
use common::tls::Tls;
use common::transport::{Connections, ServerLimits};
use common::{ChunkId, PeerId};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{info, warn};

/// Settings of one peer.
#[derive(Clone, Debug)]
pub struct PeerdConfig {
    /// Address to listen on for `PeerService`, `host:port`; port 0 picks a
    /// free port (see [`PeerdHandle::addr`]). Default `127.0.0.1:0`.
    pub listen: String,
    /// `host:port` to tell dirsvc (and so clients) to connect to. `None`
    /// means the bound address; if that is a wildcard (`0.0.0.0` or `::`),
    /// the loopback address with the bound port is advertised instead, with
    /// a warning. Default `None`.
    pub advertise: Option<String>,
    /// Data directory: chunks, the peer id and the lock file (layout in
    /// [`store`]). Created if missing. Default `peerd-data`.
    pub data_dir: PathBuf,
    /// dirsvc's `host:port`, or several separated by commas (the
    /// instances of one cluster; heartbeats go to the leader). Default
    /// `127.0.0.1:7700`.
    pub dirsvc: String,
    /// Most bytes of chunks to keep; `None` means the size of the
    /// filesystem holding `data_dir`. Default `None`.
    pub capacity_bytes: Option<u64>,
    /// Time between heartbeats to dirsvc; also the longest retry delay of
    /// the workers that talk to dirsvc. Default
    /// [`common::config::HEARTBEAT_INTERVAL`] (2 s).
    pub heartbeat_interval: Duration,
    /// Scrub rate limit in bytes hashed per second; 0 disables scrub.
    /// Default [`DEFAULT_SCRUB_BYTES_PER_SEC`] (64 MiB/s).
    pub scrub_bytes_per_sec: u64,
    /// Pause between the end of one scrub pass and the start of the next.
    /// Default [`DEFAULT_SCRUB_INTERVAL`] (1 h).
    pub scrub_interval: Duration,
    /// The machine this peer runs on, sent to dirsvc so that placement puts
    /// a chunk's replicas on distinct hosts. Empty (default): unknown, the
    /// peer counts as its own host.
    pub host_label: String,
    /// The larger failure domain (rack, room, site) of this peer, sent to
    /// dirsvc like `host_label`. Empty by default.
    pub zone_label: String,
    /// This peer's TLS identity. `None` (default): loaded from `tls_dir`,
    /// after joining with `join_token` if the directory holds none yet.
    pub tls: Option<Arc<Tls>>,
    /// Directory of the TLS identity (`node.key`, `node.crt`, `ca.crt`);
    /// `None` (default): `<data_dir>/tls`. Renewed certificates are written
    /// here.
    pub tls_dir: Option<PathBuf>,
    /// A join token (text form) to get a certificate from dirsvc when the
    /// TLS directory holds none. Default `None`.
    pub join_token: Option<String>,
    /// Limits of the listener.
    pub limits: ServerLimits,
    /// Plain-HTTP address (`host:port`, port 0 picks one) serving
    /// Prometheus metrics at `/metrics` ([`telemetry`]); the bound address
    /// is in [`PeerdHandle::metrics_addr`]. `None` (default): not served.
    pub metrics_listen: Option<String>,
}

impl Default for PeerdConfig {
    fn default() -> Self {
        PeerdConfig {
            listen: "127.0.0.1:0".to_string(),
            advertise: None,
            data_dir: PathBuf::from("peerd-data"),
            dirsvc: "127.0.0.1:7700".to_string(),
            capacity_bytes: None,
            heartbeat_interval: common::config::HEARTBEAT_INTERVAL,
            scrub_bytes_per_sec: DEFAULT_SCRUB_BYTES_PER_SEC,
            scrub_interval: DEFAULT_SCRUB_INTERVAL,
            host_label: String::new(),
            zone_label: String::new(),
            tls: None,
            tls_dir: None,
            join_token: None,
            limits: ServerLimits::default(),
            metrics_listen: None,
        }
    }
}

/// A running peer. Dropping it stops the peer's tasks without waiting;
/// [`PeerdHandle::shutdown`] stops them and waits.
pub struct PeerdHandle {
    /// The address actually bound.
    pub addr: SocketAddr,
    /// This peer's id (from `<data_dir>/peer-id`).
    pub id: PeerId,
    /// The address registered with dirsvc.
    pub advertised: String,
    /// Where metrics are served, if [`PeerdConfig::metrics_listen`] was
    /// set.
    pub metrics_addr: Option<SocketAddr>,
    /// The metrics server (stops when dropped).
    http: Option<common::http::HttpServer>,
    store: FsChunkStore,
    scrub_stats: Arc<Mutex<ScrubStats>>,
    /// The named worker tasks, in shutdown order.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    cancel: DropGuard,
}

/// How long [`PeerdHandle::shutdown`] waits for in-flight requests to
/// release the store.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The first delay of the workers' retry backoff after a failure.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// The TLS identity of a peer: `config.tls`, else the files of its TLS
/// directory, joining the cluster first with `config.join_token` if there
/// are none.
///
/// Errors: [`Error::Tls`].
async fn identity(config: &PeerdConfig) -> Result<(Arc<Tls>, Option<PathBuf>), Error> {
    if let Some(t) = &config.tls {
        return Ok((t.clone(), config.tls_dir.clone()));
    }
    let dir = config.tls_dir.clone().unwrap_or_else(|| config.data_dir.join("tls"));
    if !common::pki::NodeFiles::exist(&dir) {
        let Some(token) = &config.join_token else {
            return Err(Error::Tls(format!(
                "no certificate in {} (node.crt); give this peer one (`fs-client ca issue --role peer`) or a join token (--join)",
                dir.display()
            )));
        };
        let files = common::join::join(&config.dirsvc, token, common::rpc::Role::Peer)
            .await
            .map_err(|e| Error::Tls(format!("joining through {}: {e}", config.dirsvc)))?;
        if files.role != common::rpc::Role::Peer {
            return Err(Error::Tls(format!("the join token grants the {} role, not peer", files.role)));
        }
        files.save(&dir).map_err(|e| Error::Tls(e.to_string()))?;
        info!(node = %files.node.to_hex(), dir = %dir.display(), "joined the cluster");
    }
    let tls = Tls::load(&dir).map_err(|e| Error::Tls(format!("{}: {e}", dir.display())))?;
    if tls.me().role != common::rpc::Role::Peer {
        return Err(Error::Tls(format!(
            "{} holds a {} certificate, not a peer one",
            dir.display(),
            tls.me().role
        )));
    }
    Ok((Arc::new(tls), Some(dir)))
}

/// Starts a peer: opens the store in `config.data_dir`, sets up its TLS
/// identity (its id is the node id of its certificate), binds
/// `config.listen`, and spawns the server and the workers (heartbeat,
/// corrupt-reporter, scrub) on the current tokio runtime. Logs one INFO
/// line with the address, peer id and data directory.
///
/// dirsvc being down is not an error: the workers keep retrying.
///
/// Errors: [`Error::Locked`] if another peer has the data directory;
/// [`Error::Tls`]; [`Error::Bind`]; [`Error::Io`].
pub async fn spawn(config: PeerdConfig) -> Result<PeerdHandle, Error> {
    let store = FsChunkStore::open(StoreConfig {
        data_dir: config.data_dir.clone(),
        capacity_bytes: config.capacity_bytes,
    })
    .await?;
    let (tls, tls_dir) = identity(&config).await?;
    let id = PeerId::from(tls.node());
    let data_dir = config.data_dir.clone();
    let kept = tokio::task::spawn_blocking(move || {
        peer_id::check_legacy(&data_dir, id)?;
        revoked::load(&data_dir)
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))??;
    // Revocations seen before a restart hold from the first connection
    // on, before any heartbeat gets through.
    if let Some((version, nodes)) = kept {
        tls.revocations().replace(version, nodes);
    }
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| Error::Bind { addr: config.listen.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.listen.clone(), source })?;
    let advertised = match &config.advertise {
        Some(a) => a.clone(),
        None => advertised_for(addr),
    };

    info!(
        %addr,
        advertised = %advertised,
        peer = %id.to_hex(),
        data_dir = %config.data_dir.display(),
        dirsvc = %config.dirsvc,
        host_label = %config.host_label,
        zone_label = %config.zone_label,
        "peerd started"
    );

    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    let conns = Arc::new(Connections::new(tls.revocations().clone()));
    let server = server::PeerServer::new(store.clone(), tls.clone());
    let peer_pool = server.pool().clone();
    let serve = {
        let cancel = cancel.clone();
        let server_config = tls.server_config(false).map_err(|e| Error::Tls(e.to_string()))?;
        let (limits, conns) = (config.limits.clone(), conns.clone());
        tokio::spawn(async move {
            common::serve_tarpc!(listener, server_config, limits, conns, cancel, move |caller| server
                .for_connection(caller))
        })
    };
    tasks.push(("serve", serve));
    let dir_pool = Arc::new(Pool::new(tls.clone()));
    let dirsvc = Arc::new(DirAddrs::parse(&config.dirsvc).map_err(Error::Config)?);
    let scrub_stats = Arc::new(Mutex::new(ScrubStats::default()));
    let heartbeat = heartbeat::Heartbeat {
        store: store.clone(),
        id,
        advertise: advertised.clone(),
        dirsvc: dirsvc.clone(),
        labels: PeerLabels { host: config.host_label.clone(), zone: config.zone_label.clone() },
        interval: config.heartbeat_interval,
        tls: tls.clone(),
        tls_dir,
        data_dir: config.data_dir.clone(),
        dir_pool: dir_pool.clone(),
        conns,
        peer_pool,
        renew_not_before: std::sync::Mutex::new(None),
        scrub: (config.scrub_bytes_per_sec > 0).then(|| scrub_stats.clone()),
    };
    tasks.push(("heartbeat", tokio::spawn(heartbeat.run(cancel.clone()))));
    let reporter = report::Reporter {
        queue: store.corrupt_queue().clone(),
        peer: id,
        dirsvc,
        dir_pool,
        retry_cap: config.heartbeat_interval,
    };
    tasks.push(("corrupt-reporter", tokio::spawn(reporter.run(cancel.clone()))));
    let scrub = scrub::Scrub {
        store: store.clone(),
        bytes_per_sec: config.scrub_bytes_per_sec,
        interval: config.scrub_interval,
        state_file: Some(config.data_dir.join(scrub::SCRUB_STATE_FILE)),
        stats: scrub_stats.clone(),
    };
    tasks.push(("scrub", tokio::spawn(scrub.run(cancel.clone()))));
    let http = match &config.metrics_listen {
        Some(listen) => {
            let endpoint = common::telemetry::Endpoint {
                refresh: Some(telemetry::refresh(store.clone(), scrub_stats.clone())),
                pages: None,
            };
            let server = common::telemetry::start(listen, endpoint).await.map_err(|e| match e {
                common::telemetry::TelemetryError::Bind(source) => {
                    Error::Bind { addr: listen.clone(), source }
                }
                other => {
                    Error::Bind { addr: listen.clone(), source: std::io::Error::other(other.to_string()) }
                }
            })?;
            Some(server)
        }
        None => None,
    };
    let metrics_addr = http.as_ref().map(|h| h.addr());
    Ok(PeerdHandle {
        addr,
        id,
        advertised,
        metrics_addr,
        http,
        store,
        scrub_stats,
        tasks,
        cancel: cancel.drop_guard(),
    })
}

/// The address to advertise for a bound socket: itself, or loopback with
/// the same port if it is a wildcard address.
fn advertised_for(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let ip = match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        let fixed = SocketAddr::new(ip, addr.port());
        warn!(bound = %addr, advertised = %fixed,
            "listening on a wildcard address without --advertise; advertising loopback");
        fixed.to_string()
    } else {
        addr.to_string()
    }
}

impl PeerdHandle {
    /// Scrub counters since this peer started (see [`scrub`]).
    pub fn scrub_stats(&self) -> ScrubStats {
        self.scrub_stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Chunks found corrupt whose report dirsvc has not acknowledged yet,
    /// ascending.
    pub fn corrupt_reports_pending(&self) -> Vec<ChunkId> {
        self.store.corrupt_queue().pending()
    }

    /// Stops accepting connections, closes open ones, stops the workers
    /// (scrub saves its position), and waits (up to 10 s) until in-flight
    /// requests have released the store, so the data directory is unlocked
    /// when this returns (unless a blocking file operation is stuck).
    pub async fn shutdown(self) {
        let PeerdHandle { store, tasks, cancel, http, .. } = self;
        drop(cancel); // fires the token
        if let Some(h) = http {
            h.shutdown().await;
        }
        for (name, task) in tasks {
            if let Err(e) = task.await {
                warn!(task = name, error = %e, "task ended abnormally");
            }
        }
        let waited = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while store.handle_count() > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if waited.is_err() {
            warn!("requests still hold the chunk store after shutdown");
        }
        info!("peerd stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_bind_advertises_loopback() {
        let a: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert_eq!(advertised_for(a), "127.0.0.1:4000");
        let a: SocketAddr = "[::]:4000".parse().unwrap();
        assert_eq!(advertised_for(a), "[::1]:4000");
        let a: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        assert_eq!(advertised_for(a), "127.0.0.2:4000");
    }

    #[tokio::test]
    async fn second_peer_on_one_data_dir_is_refused_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        // The identity in the default place, `<data_dir>/tls`.
        let node = testkit::pki().write_node(common::rpc::Role::Peer, &dir.path().join("tls"));
        let config = PeerdConfig {
            data_dir: dir.path().to_path_buf(),
            dirsvc: "127.0.0.1:1".into(),
            ..PeerdConfig::default()
        };
        let first = spawn(config.clone()).await.unwrap();
        assert!(matches!(spawn(config.clone()).await, Err(Error::Locked(_))));
        let id = first.id;
        assert_eq!(id, PeerId::from(node), "the peer id is the certificate's node id");
        first.shutdown().await;
        let again = spawn(config).await.unwrap();
        assert_eq!(again.id, id, "the peer id survives a restart");
        again.shutdown().await;
    }

    #[tokio::test]
    async fn unbindable_listen_address_is_a_bind_error() {
        let dir = tempfile::tempdir().unwrap();
        let r = spawn(PeerdConfig {
            listen: "not an address".into(),
            data_dir: dir.path().to_path_buf(),
            tls: Some(testkit::pki().node(common::rpc::Role::Peer)),
            ..PeerdConfig::default()
        })
        .await;
        assert!(matches!(r, Err(Error::Bind { .. })));
    }
}
