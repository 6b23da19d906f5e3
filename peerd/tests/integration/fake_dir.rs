//! A recording `DirService` test double on a real loopback socket, over
//! mutual TLS with a dirsvc certificate of the test CA: it keeps
//! registrations, heartbeats and corrupt-chunk reports (refusing, as
//! dirsvc does, a peer that speaks for another), can be told to forget the
//! peer or refuse reports, and refuses every other call.

use common::rpc::dir::*;
use common::rpc::{PeerLoc, Role};
use common::tls::Caller;
use common::transport::{Connections, ServerLimits};
use common::{ChunkId, InodeId, NodeId, PeerId};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tarpc::context::Context;
use testkit::wait_until_async;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the double has been asked, and how it should answer.
#[derive(Default)]
pub struct Calls {
    pub registrations: Vec<PeerRegistration>,
    pub heartbeats: Vec<(PeerId, PeerUsage)>,
    /// Every acknowledged `report_corrupt` call, in order.
    pub reports: Vec<(PeerId, Vec<ChunkId>)>,
    /// Answer the next heartbeats `NotFound` while true.
    pub forget: bool,
    /// Refuse `report_corrupt` (with `Internal`) while true.
    pub refuse_reports: bool,
}

impl Calls {
    /// Every chunk id reported so far, ascending, without duplicates.
    pub fn reported(&self) -> Vec<ChunkId> {
        let mut ids: Vec<ChunkId> = self.reports.iter().flat_map(|(_, ids)| ids.iter().copied()).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// A DirService that records register, heartbeat and report_corrupt calls
/// and refuses the rest.
#[derive(Clone, Default)]
pub struct FakeDir {
    pub calls: Arc<Mutex<Calls>>,
    /// Who speaks on the connection (per connection).
    caller: Option<Caller>,
}

impl FakeDir {
    /// `Unauthorized` unless the caller is the peer `id`.
    fn the_peer(&self, id: PeerId) -> Result<(), DirError> {
        match &self.caller {
            Some(c) if c.role == Role::Peer && PeerId::from(c.node) == id => Ok(()),
            other => Err(DirError::Unauthorized(format!("{other:?} may not speak for peer {id}"))),
        }
    }
}

/// A running [`FakeDir`] on a loopback port.
pub struct FakeDirServer {
    pub dir: FakeDir,
    pub addr: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl FakeDirServer {
    pub async fn start(addr: &str) -> FakeDirServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let dir = FakeDir::default();
        let stop = CancellationToken::new();
        let config = testkit::pki().node(Role::Dirsvc).server_config(false).unwrap();
        let task = {
            let (dir, stop) = (dir.clone(), stop.clone());
            tokio::spawn(async move {
                common::serve_tarpc!(
                    listener,
                    config,
                    ServerLimits::default(),
                    Arc::new(Connections::default()),
                    stop,
                    move |caller| FakeDir { caller, ..dir.clone() }
                )
            })
        };
        FakeDirServer { dir, addr, stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }

    pub fn registrations(&self) -> Vec<PeerRegistration> {
        self.dir.calls.lock().unwrap().registrations.clone()
    }

    pub fn heartbeats(&self) -> Vec<(PeerId, PeerUsage)> {
        self.dir.calls.lock().unwrap().heartbeats.clone()
    }

    /// Every chunk id reported corrupt so far (see [`Calls::reported`]).
    pub fn reported(&self) -> Vec<ChunkId> {
        self.dir.calls.lock().unwrap().reported()
    }

    /// Polls `cond` on the calls seen until it holds; panics naming `what`
    /// after 10 s.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&Calls) -> bool) {
        wait_until_async(|| async { cond(&self.dir.calls.lock().unwrap()) }, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("timed out waiting for {what}"));
    }
}

fn unsupported<T>() -> Result<T, DirError> {
    Err(DirError::Internal("not in the test double".into()))
}

impl DirService for FakeDir {
    async fn hello(self, _: Context) -> u32 {
        common::rpc::PROTOCOL_VERSION
    }
    async fn join(
        self,
        _: Context,
        _: [u8; 8],
        _: [u8; 16],
        _: common::rpc::Role,
        _: Vec<u8>,
    ) -> Result<JoinGrant, DirError> {
        unsupported()
    }
    async fn renew_certificate(self, _: Context) -> Result<String, DirError> {
        unsupported()
    }
    async fn create_join_token(self, _: Context, _: Role, _: u64) -> Result<String, DirError> {
        unsupported()
    }
    async fn revoke(self, _: Context, _: NodeId, _: String) -> Result<(), DirError> {
        unsupported()
    }
    async fn revocations(self, _: Context) -> Result<RevocationList, DirError> {
        unsupported()
    }
    async fn volume_info(self, _: Context) -> Result<VolumeInfo, DirError> {
        unsupported()
    }
    async fn init_volume(self, _: Context, _: VolumeInfo, _: u32, _: u32) -> Result<VolumeInfo, DirError> {
        unsupported()
    }
    async fn lookup(self, _: Context, _: InodeId, _: Vec<u8>) -> Result<Attr, DirError> {
        unsupported()
    }
    async fn getattr(self, _: Context, _: InodeId) -> Result<Attr, DirError> {
        unsupported()
    }
    async fn setattr(self, _: Context, _: InodeId, _: SetAttr) -> Result<Attr, DirError> {
        unsupported()
    }
    async fn mkdir(
        self,
        _: Context,
        _: InodeId,
        _: Vec<u8>,
        _: u32,
        _: u32,
        _: u32,
    ) -> Result<Attr, DirError> {
        unsupported()
    }
    async fn create(self, _: Context, _: InodeId, _: Vec<u8>, _: NewInode) -> Result<Attr, DirError> {
        unsupported()
    }
    async fn unlink(self, _: Context, _: InodeId, _: Vec<u8>) -> Result<(), DirError> {
        unsupported()
    }
    async fn rmdir(self, _: Context, _: InodeId, _: Vec<u8>) -> Result<(), DirError> {
        unsupported()
    }
    async fn rename(
        self,
        _: Context,
        _: InodeId,
        _: Vec<u8>,
        _: InodeId,
        _: Vec<u8>,
        _: u32,
    ) -> Result<InodeId, DirError> {
        unsupported()
    }
    async fn readdir(self, _: Context, _: InodeId, _: u64, _: u32) -> Result<ReadDirPage, DirError> {
        unsupported()
    }
    async fn reserve_inodes(
        self,
        _: Context,
        _: common::rpc::dir::SessionId,
        _: u32,
    ) -> Result<(InodeId, u32), DirError> {
        unsupported()
    }
    async fn symlink(
        self,
        _: Context,
        _: common::rpc::dir::SessionId,
        _: InodeId,
        _: Vec<u8>,
        _: common::rpc::dir::NewSymlink,
    ) -> Result<Attr, DirError> {
        unsupported()
    }
    async fn reseal_blocks(
        self,
        _: Context,
        _: InodeId,
        _: Vec<common::rpc::dir::Reseal>,
    ) -> Result<Vec<bool>, DirError> {
        unsupported()
    }
    async fn add_member(
        self,
        _: Context,
        _: u64,
        _: common::rpc::dir::Member,
        _: Vec<Vec<u8>>,
    ) -> Result<common::rpc::dir::Keyring, DirError> {
        unsupported()
    }
    async fn remove_member(
        self,
        _: Context,
        _: u64,
        _: String,
        _: common::rpc::dir::KeyEpoch,
    ) -> Result<(common::rpc::dir::Keyring, common::rpc::dir::Member), DirError> {
        unsupported()
    }
    async fn readlink(self, _: Context, _: InodeId) -> Result<Vec<u8>, DirError> {
        unsupported()
    }
    async fn link(self, _: Context, _: InodeId, _: InodeId, _: Vec<u8>) -> Result<Attr, DirError> {
        unsupported()
    }
    async fn mutate(self, _: Context, _: u64, _: Mutation) -> Result<Mutated, DirError> {
        unsupported()
    }
    async fn statfs(self, _: Context) -> Result<StatFs, DirError> {
        unsupported()
    }
    async fn placement(self, _: Context, _: u32, _: u64) -> Result<Vec<Vec<PeerLoc>>, DirError> {
        unsupported()
    }
    async fn commit_layout(self, _: Context, _: InodeId, _: CommitLayout) -> Result<Attr, DirError> {
        unsupported()
    }
    async fn get_layout(self, _: Context, _: InodeId, _: u64, _: u32) -> Result<LayoutPage, DirError> {
        unsupported()
    }
    async fn chunk_locations(self, _: Context, _: Vec<ChunkId>) -> Result<Vec<Vec<PeerLoc>>, DirError> {
        unsupported()
    }
    async fn register_peer(self, _: Context, reg: PeerRegistration) -> Result<(), DirError> {
        self.the_peer(reg.id)?;
        let mut c = self.calls.lock().unwrap();
        c.registrations.push(reg);
        c.forget = false;
        Ok(())
    }
    async fn heartbeat(self, _: Context, id: PeerId, usage: PeerUsage) -> Result<HeartbeatReply, DirError> {
        self.the_peer(id)?;
        let mut c = self.calls.lock().unwrap();
        if c.forget || !c.registrations.iter().any(|r| r.id == id) {
            return Err(DirError::NotFound);
        }
        c.heartbeats.push((id, usage));
        // Version 0: no revocation list to fetch.
        Ok(HeartbeatReply { revocations: 0 })
    }
    async fn list_peers(self, _: Context) -> Result<Vec<PeerStatus>, DirError> {
        unsupported()
    }
    async fn report_corrupt(self, _: Context, peer: PeerId, chunks: Vec<ChunkId>) -> Result<(), DirError> {
        self.the_peer(peer)?;
        let mut c = self.calls.lock().unwrap();
        if c.refuse_reports {
            return Err(DirError::Internal("refusing reports for the test".into()));
        }
        c.reports.push((peer, chunks));
        Ok(())
    }
    async fn drain_peer(self, _: Context, _: PeerId) -> Result<(), DirError> {
        unsupported()
    }
    async fn cluster_status(self, _: Context) -> Result<ClusterStatus, DirError> {
        unsupported()
    }
    async fn open_session(self, _: Context, _: SessionOpen) -> Result<SessionGrant, DirError> {
        unsupported()
    }
    async fn renew_session(self, _: Context, _: SessionId) -> Result<Renewal, DirError> {
        unsupported()
    }
    async fn close_session(self, _: Context, _: SessionId) -> Result<(), DirError> {
        unsupported()
    }
    async fn open_file(self, _: Context, _: SessionId, _: InodeId) -> Result<Attr, DirError> {
        unsupported()
    }
    async fn release_file(self, _: Context, _: SessionId, _: InodeId) -> Result<(), DirError> {
        unsupported()
    }
    async fn set_lock(self, _: Context, _: SessionId, _: Lock, _: u32) -> Result<(), DirError> {
        unsupported()
    }
    async fn unlock(
        self,
        _: Context,
        _: SessionId,
        _: InodeId,
        _: u64,
        _: LockFlavor,
        _: u64,
        _: u64,
    ) -> Result<(), DirError> {
        unsupported()
    }
    async fn get_lock(self, _: Context, _: SessionId, _: Lock) -> Result<Option<LockConflict>, DirError> {
        unsupported()
    }
    async fn getxattr(self, _: Context, _: InodeId, _: Vec<u8>) -> Result<Vec<u8>, DirError> {
        unsupported()
    }
    async fn listxattr(self, _: Context, _: InodeId) -> Result<Vec<Vec<u8>>, DirError> {
        unsupported()
    }
    async fn setxattr(
        self,
        _: Context,
        _: InodeId,
        _: Vec<u8>,
        _: Vec<u8>,
        _: u32,
    ) -> Result<Attr, DirError> {
        unsupported()
    }
    async fn removexattr(self, _: Context, _: InodeId, _: Vec<u8>) -> Result<Attr, DirError> {
        unsupported()
    }
    async fn poll_changes(self, _: Context, _: SessionId, _: u64, _: u32) -> Result<ChangeBatch, DirError> {
        unsupported()
    }
    async fn undrain_peer(self, _: Context, _: PeerId) -> Result<(), DirError> {
        unsupported()
    }
    async fn server_time(self, _: Context) -> Result<common::time::Timestamp, DirError> {
        unsupported()
    }
    async fn open_layout(self, _: Context, _: SessionId, _: InodeId, _: u32) -> Result<LayoutPage, DirError> {
        unsupported()
    }
    async fn readdir_plus(
        self,
        _: Context,
        _: InodeId,
        _: u64,
        _: u32,
    ) -> Result<common::rpc::dir::ReadDirPlusPage, DirError> {
        unsupported()
    }
}
