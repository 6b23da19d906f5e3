//! A test double of peerd: an in-memory `PeerService` served on loopback
//! over mutual TLS (with a peer certificate of the test CA, whose node id
//! is its peer id) with its own register/heartbeat loop, plus a small
//! cluster of them around a real dirsvc.
//!
//! It implements the contract dirsvc relies on (put/get verify the id,
//! `fetch_from` copies from another peer's `get` and verifies,
//! `list_chunks` pages the inventory with each chunk's store time, `delete`
//! of a missing chunk succeeds; `delete`, `list_chunks` and `fetch_from`
//! from dirsvc only) and records what dirsvc asked of it, so the
//! tests can check ordering, concurrency and deletions. It is not peerd:
//! peerd's own tests cover peerd.

use super::support::*;
use common::rpc::dir::{
    CommitLayout, DirServiceClient, PeerLabels, PeerRegistration, PeerState, PeerStatus, PeerUsage,
    StoredChunk,
};
use common::rpc::peer::{Bytes, PeerError, PeerService};
use common::rpc::{PeerLoc, Role};
use common::time::Timestamp;
use common::tls::{Caller, Tls};
use common::transport::{Connections, ServerLimits};
use common::{ChunkId, InodeId, PeerId};
use dirsvc::{DirsvcConfig, DirsvcHandle};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tarpc::context::{self, Context};
use testkit::wait_until_async;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Deadline of every cluster test (with [`testkit::within`]).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a test waits for the cluster's state to change (with
/// [`testkit::wait_until_async`]).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(20);

/// How often fake peers heartbeat.
pub const HEARTBEAT: Duration = Duration::from_millis(50);

/// What every fake peer of a cluster reports to the test.
#[derive(Debug, Default)]
pub struct Probe {
    in_flight: AtomicUsize,
    /// Most `fetch_from` copies seen running at once, over all peers.
    pub max_in_flight: AtomicUsize,
    /// Every completed `fetch_from` copy, in completion order.
    pub fetches: Mutex<Vec<ChunkId>>,
}

impl Probe {
    /// The chunks copied so far, in order.
    pub fn fetched(&self) -> Vec<ChunkId> {
        self.fetches.lock().unwrap().clone()
    }
}

/// The state of one fake peer.
#[derive(Debug)]
pub struct Inner {
    /// Held chunks: bytes and store time (Unix seconds).
    pub chunks: Mutex<HashMap<ChunkId, (Vec<u8>, i64)>>,
    capacity: u64,
    fetch_delay: Duration,
    probe: Arc<Probe>,
    /// `delete` calls that removed a chunk.
    pub deleted: AtomicU64,
    /// While set, heartbeats are not sent.
    silent: AtomicBool,
    /// While set, `fetch_from` fails (as a broken target would).
    pub refuse_fetch: AtomicBool,
    /// Its TLS identity (it serves, heartbeats and fetches as this).
    tls: Arc<Tls>,
}

impl Inner {
    fn usage(&self) -> PeerUsage {
        let chunks = self.chunks.lock().unwrap();
        let used: u64 = chunks.values().map(|(b, _)| b.len() as u64).sum();
        PeerUsage {
            capacity_bytes: self.capacity,
            free_bytes: self.capacity.saturating_sub(used),
            used_bytes: used,
            chunks: chunks.len() as u64,
            fs: None,
            scrub: None,
        }
    }
}

/// One connection's view of a fake peer: its state and who speaks.
#[derive(Clone)]
struct Server(Arc<Inner>, Option<Caller>);

impl Server {
    /// As peerd: only dirsvc may delete, list and order copies.
    fn dirsvc_only(&self, op: &str) -> Result<(), PeerError> {
        match &self.1 {
            Some(c) if c.role == Role::Dirsvc => Ok(()),
            other => Err(PeerError::Unauthorized(format!("{op} by {other:?}"))),
        }
    }
}

/// Decrements the in-flight gauge when a copy ends.
struct Gauge<'a>(&'a AtomicUsize);

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PeerService for Server {
    async fn put(self, _: Context, id: ChunkId, bytes: Bytes) -> Result<(), PeerError> {
        if ChunkId::of(&bytes) != id {
            return Err(PeerError::HashMismatch(id));
        }
        self.0.chunks.lock().unwrap().entry(id).or_insert((bytes.into_vec(), Timestamp::now().secs));
        Ok(())
    }

    async fn get(self, _: Context, id: ChunkId) -> Result<Bytes, PeerError> {
        let chunks = self.0.chunks.lock().unwrap();
        let (b, _) = chunks.get(&id).ok_or(PeerError::NotFound(id))?;
        Ok(Bytes::from(b.clone()))
    }

    async fn get_range(self, _: Context, id: ChunkId, offset: u64, len: u32) -> Result<Bytes, PeerError> {
        let chunks = self.0.chunks.lock().unwrap();
        let (b, _) = chunks.get(&id).ok_or(PeerError::NotFound(id))?;
        let start = (offset as usize).min(b.len());
        let end = start.saturating_add(len as usize).min(b.len());
        Ok(Bytes::from(b[start..end].to_vec()))
    }

    async fn has(self, _: Context, ids: Vec<ChunkId>) -> Result<Vec<bool>, PeerError> {
        let chunks = self.0.chunks.lock().unwrap();
        Ok(ids.iter().map(|id| chunks.contains_key(id)).collect())
    }

    async fn delete(self, _: Context, id: ChunkId) -> Result<(), PeerError> {
        self.dirsvc_only("delete")?;
        if self.0.chunks.lock().unwrap().remove(&id).is_some() {
            self.0.deleted.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn usage(self, _: Context) -> Result<PeerUsage, PeerError> {
        Ok(self.0.usage())
    }

    async fn fetch_from(self, _: Context, id: ChunkId, source: PeerLoc) -> Result<(), PeerError> {
        self.dirsvc_only("fetch_from")?;
        if self.0.refuse_fetch.load(Ordering::SeqCst) {
            return Err(PeerError::Internal("refusing copies".into()));
        }
        if self.0.chunks.lock().unwrap().contains_key(&id) {
            return Ok(());
        }
        let probe = &self.0.probe;
        let now = probe.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _gauge = Gauge(&probe.in_flight);
        probe.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.0.fetch_delay).await;
        let src = common::transport::peer_client(&source.addr, &self.0.tls, source.id)
            .await
            .map_err(|e| PeerError::SourceFailed(format!("connect {}: {e}", source.addr)))?;
        let bytes = match src.get(context::current(), id).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(PeerError::SourceFailed(e.to_string())),
            Err(e) => return Err(PeerError::SourceFailed(e.to_string())),
        };
        if ChunkId::of(&bytes) != id {
            return Err(PeerError::SourceFailed(format!("{} sent bytes that do not verify", source.addr)));
        }
        self.0.chunks.lock().unwrap().insert(id, (bytes.into_vec(), Timestamp::now().secs));
        probe.fetches.lock().unwrap().push(id);
        Ok(())
    }

    async fn list_chunks(
        self,
        _: Context,
        after: Option<ChunkId>,
        limit: u32,
    ) -> Result<Vec<(ChunkId, i64)>, PeerError> {
        self.dirsvc_only("list_chunks")?;
        let chunks = self.0.chunks.lock().unwrap();
        let mut ids: Vec<(ChunkId, i64)> = chunks
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| **id > a))
            .map(|(id, (_, t))| (*id, *t))
            .collect();
        ids.sort();
        ids.truncate(limit as usize);
        Ok(ids)
    }

    async fn get_segment(
        self,
        _: Context,
        _: ChunkId,
        _: u32,
    ) -> Result<common::rpc::peer::Bytes, PeerError> {
        Err(PeerError::Internal("fake peer: get_segment is not supported".into()))
    }
}

/// One fake peer: serving and heartbeating until killed.
pub struct FakePeer {
    /// Its id (its certificate's node id).
    pub id: PeerId,
    /// Its TLS identity.
    pub tls: Arc<Tls>,
    /// Its state.
    pub inner: Arc<Inner>,
    serve: CancellationToken,
    beat: CancellationToken,
}

impl FakePeer {
    /// Starts a peer with a fresh peer certificate, serving on 127.0.0.1
    /// and heartbeating to the dirsvc whose address `dirsvc` holds (read on
    /// every reconnect).
    pub async fn start(
        dirsvc: Arc<Mutex<String>>,
        labels: PeerLabels,
        capacity: u64,
        fetch_delay: Duration,
        probe: Arc<Probe>,
    ) -> FakePeer {
        let (id, tls) = testkit::pki().peer();
        let inner = Arc::new(Inner {
            chunks: Mutex::new(HashMap::new()),
            capacity,
            fetch_delay,
            probe,
            deleted: AtomicU64::new(0),
            silent: AtomicBool::new(false),
            refuse_fetch: AtomicBool::new(false),
            tls: tls.clone(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let serve = CancellationToken::new();
        let token = serve.clone();
        let state = inner.clone();
        let config = tls.server_config(false).unwrap();
        tokio::spawn(async move {
            common::serve_tarpc!(
                listener,
                config,
                ServerLimits::default(),
                Arc::new(Connections::default()),
                token,
                move |caller| Server(state.clone(), caller)
            );
        });
        let beat = serve.child_token();
        tokio::spawn(heartbeat_loop(id, addr, labels, inner.clone(), dirsvc, beat.clone()));
        FakePeer { id, tls, inner, serve, beat }
    }

    /// Stops heartbeats (the peer keeps serving): it turns suspect, then
    /// down.
    pub fn go_silent(&self) {
        self.inner.silent.store(true, Ordering::SeqCst);
    }

    /// Resumes heartbeats.
    pub fn speak_again(&self) {
        self.inner.silent.store(false, Ordering::SeqCst);
    }

    /// Stops serving and heartbeating for good (a crash).
    pub fn kill(&self) {
        self.beat.cancel();
        self.serve.cancel();
    }

    /// Whether it holds `id`.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.inner.chunks.lock().unwrap().contains_key(id)
    }

    /// Stores `bytes` directly, stamped `mtime` (Unix seconds).
    pub fn insert(&self, bytes: &[u8], mtime: i64) -> ChunkId {
        let id = ChunkId::of(bytes);
        self.inner.chunks.lock().unwrap().insert(id, (bytes.to_vec(), mtime));
        id
    }

    /// Number of chunks held.
    pub fn len(&self) -> usize {
        self.inner.chunks.lock().unwrap().len()
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn heartbeat_loop(
    id: PeerId,
    addr: String,
    labels: PeerLabels,
    inner: Arc<Inner>,
    dirsvc: Arc<Mutex<String>>,
    stop: CancellationToken,
) {
    let mut client: Option<DirServiceClient> = None;
    let mut registered = false;
    while !stop.is_cancelled() {
        if !inner.silent.load(Ordering::SeqCst) {
            if client.is_none() {
                let target = dirsvc.lock().unwrap().clone();
                client = common::transport::dir_client(&target, &inner.tls).await.ok();
                registered = false;
            }
            if let Some(c) = &client {
                let r = if registered {
                    c.heartbeat(context::current(), id, inner.usage()).await.map(|r| r.map(drop))
                } else {
                    let reg = PeerRegistration {
                        id,
                        addr: addr.clone(),
                        usage: inner.usage(),
                        labels: labels.clone(),
                    };
                    c.register_peer(context::current(), reg).await
                };
                match r {
                    Ok(Ok(())) => registered = true,
                    Ok(Err(_)) => registered = false,
                    Err(_) => client = None,
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
}

/// Settings the cluster tests start dirsvc with: short timeouts and
/// intervals, unlimited bandwidth, GC effectively off.
pub fn fast_config(dir: &std::path::Path) -> DirsvcConfig {
    DirsvcConfig {
        peer_suspect_after: Duration::from_millis(400),
        peer_down_after: Duration::from_millis(1200),
        heartbeat_persist_every: Duration::from_millis(100),
        repair_interval: Duration::from_millis(100),
        repair_concurrency: 8,
        repair_bandwidth_bytes_per_sec: 0,
        gc_interval: Duration::from_millis(200),
        gc_grace: Duration::from_secs(3600),
        ..config(dir)
    }
}

/// A real dirsvc with fake peers around it.
pub struct Cluster {
    /// The test directory (the database lives here).
    _dir: tempfile::TempDir,
    /// The running dirsvc (None while stopped).
    pub dirsvc: Option<DirsvcHandle>,
    /// Its address, as the peers' heartbeat loops read it.
    pub addr: Arc<Mutex<String>>,
    /// A client of it (client certificate).
    pub client: DirServiceClient,
    /// An admin of it (drains).
    pub admin: DirServiceClient,
    /// The identities of `client` and `admin`, to reconnect after a
    /// restart.
    ids: (Arc<Tls>, Arc<Tls>),
    /// The peers, by number - 1.
    pub peers: Vec<FakePeer>,
    /// Shared observations of the peers.
    pub probe: Arc<Probe>,
    /// How long each fake `fetch_from` takes.
    pub fetch_delay: Duration,
    config: DirsvcConfig,
}

impl Cluster {
    /// Starts dirsvc with `config` (its `db_path` is replaced) and a volume
    /// of R = `replicas`, without peers.
    pub async fn start(replicas: u32, config: impl FnOnce(&mut DirsvcConfig)) -> Cluster {
        let dir = tmp();
        let mut cfg = fast_config(dir.path());
        config(&mut cfg);
        cfg.db_path = db_path(dir.path());
        let handle = dirsvc::spawn(cfg.clone()).await.unwrap();
        let addr = handle.addr.to_string();
        let (client, client_tls) = testkit::dir_client_as(&addr, Role::Client).await;
        let (admin, admin_tls) = testkit::dir_client_as(&addr, Role::Admin).await;
        client.init_volume(context::current(), volume(replicas), 0, 0).await.unwrap().unwrap();
        Cluster {
            _dir: dir,
            dirsvc: Some(handle),
            addr: Arc::new(Mutex::new(addr)),
            client,
            admin,
            ids: (client_tls, admin_tls),
            peers: Vec::new(),
            probe: Arc::new(Probe::default()),
            fetch_delay: Duration::ZERO,
            config: cfg,
        }
    }

    /// Adds peer number `peers.len() + 1` with `labels` and `capacity`
    /// bytes, and waits until dirsvc lists it as up.
    pub async fn add_peer_with(&mut self, labels: PeerLabels, capacity: u64) -> PeerId {
        let p =
            FakePeer::start(self.addr.clone(), labels, capacity, self.fetch_delay, self.probe.clone()).await;
        let id = p.id;
        self.peers.push(p);
        self.wait_state(id, PeerState::Up).await;
        id
    }

    /// Adds `n` unlabelled peers of 1 GiB each.
    pub async fn add_peers(&mut self, n: usize) {
        for _ in 0..n {
            self.add_peer_with(PeerLabels::default(), 1 << 30).await;
        }
    }

    /// Peer number `k` (1-based).
    pub fn peer(&self, k: usize) -> &FakePeer {
        &self.peers[k - 1]
    }

    /// A `DirService` client speaking as peer number `k` (1-based).
    pub async fn as_peer(&self, k: usize) -> DirServiceClient {
        let addr = self.addr.lock().unwrap().clone();
        testkit::dir_client(&addr, &self.peer(k).tls).await
    }

    /// `list_peers`.
    pub async fn list(&self) -> Vec<PeerStatus> {
        self.client.list_peers(context::current()).await.unwrap().unwrap()
    }

    /// The state dirsvc reports for `id` (panics if it is not listed).
    pub async fn state(&self, id: PeerId) -> PeerState {
        self.try_state(id).await.expect("peer listed")
    }

    async fn try_state(&self, id: PeerId) -> Option<PeerState> {
        self.list().await.into_iter().find(|p| p.loc.id == id).map(|p| p.state)
    }

    /// Polls until `id` is listed in state `want` (fails after 20 s).
    pub async fn wait_state(&self, id: PeerId, want: PeerState) {
        wait_until_async(|| async { self.try_state(id).await == Some(want) }, WAIT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("timed out waiting for peer {id} to be {want:?}"));
    }

    /// Creates file `name` whose block i is chunk `chunks[i]` with the
    /// given replicas: the chunk is stored on those fake peers first, then
    /// committed. Returns the file's inode.
    pub async fn write_file(&self, name: &str, chunks: &[(Vec<u8>, Vec<usize>)]) -> InodeId {
        let f = self.client.create(context::current(), ROOT, n(name), file()).await.unwrap().unwrap().ino;
        let mut blocks = Vec::new();
        for (i, (bytes, on)) in chunks.iter().enumerate() {
            let mut replicas = Vec::new();
            for &k in on {
                self.peer(k).insert(bytes, Timestamp::now().secs);
                replicas.push(self.peer(k).id);
            }
            let c = StoredChunk {
                id: ChunkId::of(bytes),
                len: bytes.len() as u32,
                replicas,
                epoch: 0,
                mac: [0x4d; 32],
                inline: None,
            };
            blocks.push((i as u64, Some(c)));
        }
        let size = chunks.len() as u64 * u64::from(B);
        let commit =
            CommitLayout { held_ms: 0, attrs: Default::default(), size, mtime: Timestamp::now(), blocks };
        self.client.commit_layout(context::current(), f, commit).await.unwrap().unwrap();
        f
    }

    /// `cluster_status`.
    pub async fn status(&self) -> common::rpc::dir::ClusterStatus {
        self.client.cluster_status(context::current()).await.unwrap().unwrap()
    }

    /// Stops dirsvc (clean shutdown; the peers keep running).
    pub async fn stop_dirsvc(&mut self) {
        if let Some(h) = self.dirsvc.take() {
            h.shutdown().await;
        }
    }

    /// Starts dirsvc again on the same database, on the same port when it
    /// is free (else a new one, which the peers pick up).
    pub async fn restart_dirsvc(&mut self) {
        self.stop_dirsvc().await;
        let mut cfg = self.config.clone();
        cfg.listen = self.addr.lock().unwrap().clone();
        let handle = match dirsvc::spawn(cfg.clone()).await {
            Ok(h) => h,
            Err(_) => {
                cfg.listen = "127.0.0.1:0".into();
                dirsvc::spawn(cfg).await.unwrap()
            }
        };
        let addr = handle.addr.to_string();
        *self.addr.lock().unwrap() = addr.clone();
        self.client = testkit::dir_client(&addr, &self.ids.0).await;
        self.admin = testkit::dir_client(&addr, &self.ids.1).await;
        self.dirsvc = Some(handle);
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        for p in &self.peers {
            p.kill();
        }
        self.stop_dirsvc().await;
    }
}

/// `n` distinct pseudo-random chunk contents of `len` bytes, tagged `tag`.
pub fn contents(tag: u8, n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut b = vec![tag; len];
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            b
        })
        .collect()
}
