//! dirsvc, the p2pfs directory service: namespace, file layouts, chunk
//! index, peer registry and placement, served over tarpc.
//!
//! Architecture:
//! - [`store::Store`] owns the redb database and is the only code that
//!   touches it. Its methods are synchronous; each mutating one is exactly
//!   one durable write transaction. Table formats: [`store::tables`].
//! - [`server::DirServer`] implements `common::rpc::dir::DirService`. Every
//!   handler runs its store call on tokio's blocking pool
//!   (`spawn_blocking`), so no transaction is ever held across an `.await`
//!   and async worker threads never block on disk. Liveness, usage and
//!   placement promises of peers live in an in-memory mirror of the
//!   `peers-v1` table (see `peers`), guarded by a mutex that is never held
//!   across an `.await`.
//! - [`spawn`] opens the store, binds the listener and serves every
//!   connection with `common::serve_tarpc!` in a background task, returning
//!   a [`DirsvcHandle`]. [`DirsvcHandle::shutdown`] stops accepting, closes
//!   every connection, waits for in-flight requests and returns once the
//!   database is closed; dropping the handle stops the service without
//!   waiting.
#![warn(missing_docs)]

pub mod error;
pub mod placement;
pub mod server;
pub mod store;

mod peers;

pub use error::Error;
pub use server::DirServer;
pub use store::Store;

use common::rpc::dir::DirService as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Default listen address of dirsvc.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

/// Default database path of dirsvc.
pub const DEFAULT_DB_PATH: &str = "./dirsvc.redb";

/// Default for [`DirsvcConfig::heartbeat_persist_every`].
pub const DEFAULT_HEARTBEAT_PERSIST_EVERY: Duration = Duration::from_secs(5);

/// How long [`DirsvcHandle::shutdown`] waits for in-flight requests to let
/// go of the database.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Settings of one dirsvc instance.
#[derive(Clone, Debug)]
pub struct DirsvcConfig {
    /// Address to listen on, `host:port` (port 0 picks a free port; the
    /// bound address is in [`DirsvcHandle::addr`]).
    pub listen: String,
    /// Path of the redb database file (created if missing).
    pub db_path: PathBuf,
    /// A peer whose last heartbeat (or registration) is older than this is
    /// down: not chosen by placement, listed last among replicas, not
    /// counted by `statfs`.
    pub peer_down_after: Duration,
    /// Heartbeats update the in-memory registry at once but are written to
    /// the database at most this often per peer (registrations always are).
    pub heartbeat_persist_every: Duration,
}

impl Default for DirsvcConfig {
    fn default() -> Self {
        DirsvcConfig {
            listen: DEFAULT_LISTEN.to_string(),
            db_path: PathBuf::from(DEFAULT_DB_PATH),
            peer_down_after: common::config::PEER_DOWN_AFTER,
            heartbeat_persist_every: DEFAULT_HEARTBEAT_PERSIST_EVERY,
        }
    }
}

/// A running dirsvc. Dropping it cancels the service (connections close,
/// the accept loop stops) without waiting; [`DirsvcHandle::shutdown`]
/// waits.
#[derive(Debug)]
pub struct DirsvcHandle {
    /// The address the service is bound to.
    pub addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    store: Weak<Store>,
}

impl DirsvcHandle {
    /// Stops accepting, closes every connection and waits (at most
    /// [`SHUTDOWN_GRACE`]) for in-flight requests to finish and the
    /// database to close, so the same file can be opened again at once.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                warn!(error = %e, "dirsvc accept loop ended abnormally");
            }
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.store.strong_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                warn!("requests still hold the database after the shutdown grace period");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for DirsvcHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Opens the database, binds `config.listen` and serves `DirService` in a
/// background task on the current tokio runtime.
///
/// Errors: [`Error::Db`], [`Error::Schema`], [`Error::Corrupt`] from
/// opening the database; [`Error::Io`] if the address cannot be bound.
pub async fn spawn(config: DirsvcConfig) -> Result<DirsvcHandle, Error> {
    let path = config.db_path.clone();
    let server = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let store = Arc::new(Store::open(&path)?);
            DirServer::new(store, &config)
        })
        .await??
    };
    let listener = TcpListener::bind(&config.listen).await?;
    let addr = listener.local_addr()?;
    let store = Arc::downgrade(server.store());
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let task = tokio::spawn(async move {
        common::serve_tarpc!(listener, server, token);
    });
    Ok(DirsvcHandle { addr, cancel, task: Some(task), store })
}
