//! peerd, the p2pfs storage peer: keeps sealed chunks on a local disk,
//! verifies each one's BLAKE3 on the way in and on every read, serves whole
//! chunks or byte ranges over `PeerService`, and registers and heartbeats
//! with dirsvc.
//!
//! # Architecture
//!
//! [`spawn`] opens the [`store::FsChunkStore`] (which owns the data
//! directory and holds its lock), binds the listener and starts two tasks:
//!
//! - the accept loop (`common::serve_tarpc!`): one task per connection, one
//!   task per request, each calling the [`server::PeerServer`] handlers, which
//!   call the store; the store runs its file work on tokio's blocking pool;
//! - the heartbeat task (`heartbeat`): registers with dirsvc and heartbeats
//!   forever, retrying with backoff while dirsvc is unreachable.
//!
//! Both stop on one cancellation token. [`PeerdHandle::shutdown`] fires it,
//! waits for both tasks and for in-flight requests to release the store, so
//! the data directory can be opened again as soon as it returns. Dropping
//! the handle without `shutdown` also stops the tasks, without waiting.
//!
//! Durability: a put is acknowledged only after its file and directory entry
//! are fsynced (see [`store`]), so `kill -9` loses no acknowledged chunk.

pub mod error;
pub mod fsutil;
mod heartbeat;
pub mod peer_id;
pub mod server;
pub mod store;

pub use error::Error;
pub use store::{ChunkStore, FsChunkStore, StoreConfig};

use common::rpc::peer::PeerService as _;
use common::PeerId;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
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
    /// dirsvc's `host:port`. Default `127.0.0.1:7700`.
    pub dirsvc: String,
    /// Most bytes of chunks to keep; `None` means the size of the
    /// filesystem holding `data_dir`. Default `None`.
    pub capacity_bytes: Option<u64>,
    /// Time between heartbeats to dirsvc. Default
    /// [`common::config::HEARTBEAT_INTERVAL`] (2 s).
    pub heartbeat_interval: Duration,
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
    store: FsChunkStore,
    serve: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    cancel: DropGuard,
}

/// How long [`PeerdHandle::shutdown`] waits for in-flight requests to
/// release the store.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Starts a peer: opens the store in `config.data_dir`, loads or creates the
/// peer id, binds `config.listen`, and spawns the server and the heartbeat
/// task on the current tokio runtime. Logs one INFO line with the address,
/// peer id and data directory.
///
/// dirsvc being down is not an error: the heartbeat task keeps retrying.
///
/// Errors: [`Error::Locked`] if another peer has the data directory;
/// [`Error::BadPeerId`]; [`Error::Bind`]; [`Error::Io`].
pub async fn spawn(config: PeerdConfig) -> Result<PeerdHandle, Error> {
    let store = FsChunkStore::open(StoreConfig {
        data_dir: config.data_dir.clone(),
        capacity_bytes: config.capacity_bytes,
    })
    .await?;
    let data_dir = config.data_dir.clone();
    let id = match tokio::task::spawn_blocking(move || peer_id::load_or_create(&data_dir)).await {
        Ok(r) => r?,
        Err(e) => return Err(Error::Task(e.to_string())),
    };
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
        "peerd started"
    );

    let cancel = CancellationToken::new();
    let serve = {
        let server = server::PeerServer::new(store.clone());
        let cancel = cancel.clone();
        tokio::spawn(async move { common::serve_tarpc!(listener, server, cancel) })
    };
    let heartbeat = tokio::spawn(
        heartbeat::Heartbeat {
            store: store.clone(),
            id,
            advertise: advertised.clone(),
            dirsvc: config.dirsvc.clone(),
            interval: config.heartbeat_interval,
        }
        .run(cancel.clone()),
    );
    Ok(PeerdHandle { addr, id, advertised, store, serve, heartbeat, cancel: cancel.drop_guard() })
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
    /// Stops accepting connections, closes open ones, stops the heartbeat,
    /// and waits (up to 10 s) until in-flight requests have released the
    /// store, so the data directory is unlocked when this returns (unless a
    /// blocking file operation is stuck).
    pub async fn shutdown(self) {
        let PeerdHandle { store, serve, heartbeat, cancel, .. } = self;
        drop(cancel); // fires the token
        if let Err(e) = serve.await {
            warn!(error = %e, "server task ended abnormally");
        }
        if let Err(e) = heartbeat.await {
            warn!(error = %e, "heartbeat task ended abnormally");
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
        let config = PeerdConfig {
            data_dir: dir.path().to_path_buf(),
            dirsvc: "127.0.0.1:1".into(),
            ..PeerdConfig::default()
        };
        let first = spawn(config.clone()).await.unwrap();
        assert!(matches!(spawn(config.clone()).await, Err(Error::Locked(_))));
        let id = first.id;
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
            ..PeerdConfig::default()
        })
        .await;
        assert!(matches!(r, Err(Error::Bind { .. })));
    }
}
