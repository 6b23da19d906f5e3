//! A real dirsvc on 127.0.0.1 with a client (over mutual TLS, with a client
//! certificate of the test CA), for the session, lock and change-feed
//! tests: start, restart on the same database, sessions, and files with
//! committed chunks (on peers registered by peer identities of the test
//! CA; no peer process is needed because dirsvc never calls the peers
//! here).

use super::support::*;
use common::rpc::dir::{
    CommitLayout, DirError, DirServiceClient, Lock, LockFlavor, LockKind, PeerUsage, SessionId, SessionOpen,
    StoredChunk,
};
use common::rpc::Role;
use common::time::Timestamp;
use common::tls::Tls;
use common::{ChunkId, InodeId, PeerId};
use dirsvc::{DirsvcConfig, DirsvcHandle};
use std::sync::Arc;
use std::time::Duration;
use tarpc::context;

/// Deadline of every test here (with [`testkit::within`]).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The value of a call that must succeed.
pub fn ok<T, E: std::fmt::Debug>(r: Result<Result<T, DirError>, E>) -> T {
    match r {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("refused: {e:?}"),
        Err(e) => panic!("transport: {e:?}"),
    }
}

/// The domain error of a call that must fail.
pub fn refused<T: std::fmt::Debug, E: std::fmt::Debug>(r: Result<Result<T, DirError>, E>) -> DirError {
    match r {
        Ok(Err(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A running dirsvc and a client of it.
pub struct Svc {
    dir: tempfile::TempDir,
    handle: Option<DirsvcHandle>,
    /// The client.
    pub c: DirServiceClient,
    /// The client's identity (its sessions are owned by this node; it
    /// reconnects with it after a restart, as a mount does).
    pub me: Arc<Tls>,
    /// The settings it runs with.
    pub config: DirsvcConfig,
    /// Two registered peers (records only) for commits.
    pub peers: Vec<PeerId>,
}

impl Svc {
    /// Starts dirsvc on a fresh database with `tune` applied to the
    /// settings, creates the volume (R = 2) and registers two peers.
    pub async fn start(tune: impl FnOnce(&mut DirsvcConfig)) -> Svc {
        let dir = tmp();
        // No linger by default: these tests check exactly when open
        // marks free an orphan (the linger has its own test).
        let mut config = DirsvcConfig {
            gc_interval: Duration::from_secs(3600),
            unlinked_linger: Duration::ZERO,
            ..super::support::config(dir.path())
        };
        tune(&mut config);
        let handle = dirsvc::spawn(config.clone()).await.unwrap();
        let addr = handle.addr.to_string();
        let (c, me) = testkit::dir_client_as(&addr, Role::Client).await;
        ok(c.init_volume(context::current(), volume(2), 0, 0).await);
        let mut peers = Vec::new();
        for k in 1..=2u16 {
            let p = TestPeer::connect(&addr).await;
            let usage = PeerUsage {
                capacity_bytes: 1 << 30,
                free_bytes: 1 << 30,
                used_bytes: 0,
                chunks: 0,
                fs: None,
                scrub: None,
            };
            ok(p.c
                .register_peer(context::current(), p.registration(&format!("127.0.0.1:{}", 9000 + k), usage))
                .await);
            peers.push(p.id);
        }
        Svc { dir, handle: Some(handle), c, me, config, peers }
    }

    /// Stops dirsvc cleanly and starts it again on the same database with
    /// `tune` applied to the settings.
    pub async fn restart(&mut self, tune: impl FnOnce(&mut DirsvcConfig)) {
        self.stop().await;
        tune(&mut self.config);
        assert_eq!(self.config.db_path, db_path(self.dir.path()));
        let handle = dirsvc::spawn(self.config.clone()).await.unwrap();
        self.c = testkit::dir_client(&handle.addr.to_string(), &self.me).await;
        self.handle = Some(handle);
    }

    /// Stops dirsvc cleanly (the database stays).
    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    /// The address dirsvc listens on.
    pub fn config_addr(&self) -> String {
        self.handle.as_ref().expect("running").addr.to_string()
    }

    /// Another connection of the same client node (its sessions are this
    /// one's too).
    pub async fn connect(&self) -> DirServiceClient {
        testkit::dir_client(&self.config_addr(), &self.me).await
    }

    /// A connection of another node of `role` (another mount, an admin,
    /// a peer), with that node's identity.
    pub async fn connect_as(&self, role: Role) -> (DirServiceClient, Arc<Tls>) {
        testkit::dir_client_as(&self.config_addr(), role).await
    }

    /// Opens a new session.
    pub async fn session(&self, label: &str) -> SessionId {
        let open = SessionOpen { label: label.into(), ..SessionOpen::default() };
        ok(self.c.open_session(context::current(), open).await).id
    }

    /// Creates file `name` in the root with one committed block (chunk
    /// derived from `k`). Returns its inode.
    pub async fn file_with_chunk(&self, name: &str, k: u8) -> InodeId {
        let f = ok(self.c.create(context::current(), ROOT, n(name), file()).await).ino;
        let c = StoredChunk {
            id: ChunkId::of(&[k]),
            len: 100,
            replicas: self.peers.clone(),
            epoch: 0,
            mac: [0x4d; 32],
            inline: None,
        };
        let commit = CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
            size: 10,
            mtime: Timestamp::now(),
            blocks: vec![(0, Some(c))],
        };
        ok(self.c.commit_layout(context::current(), f, commit).await);
        f
    }

    /// Chunks at reference count 0 (`cluster_status().gc_pending`).
    pub async fn unreferenced(&self) -> u64 {
        ok(self.c.cluster_status(context::current()).await).gc_pending
    }

    /// Whether inode `ino` still exists.
    pub async fn exists(&self, ino: InodeId) -> bool {
        match self.c.getattr(context::current(), ino).await.unwrap() {
            Ok(_) => true,
            Err(DirError::NotFound) => false,
            Err(e) => panic!("getattr: {e:?}"),
        }
    }

    /// Stops the service.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }
}

/// A POSIX lock of `owner` on `[start, end]` of `ino`.
pub fn posix(ino: InodeId, owner: u64, kind: LockKind, start: u64, end: u64) -> Lock {
    Lock { ino, owner, flavor: LockFlavor::Posix, kind, start, end, pid: 1000 + owner as u32 }
}

/// An flock of `owner` on `ino`.
pub fn flock(ino: InodeId, owner: u64, kind: LockKind) -> Lock {
    Lock { ino, owner, flavor: LockFlavor::Flock, kind, start: 0, end: u64::MAX, pid: 2000 + owner as u32 }
}
