//! The peer registers with dirsvc and heartbeats with its current usage; it
//! registers again when dirsvc forgets it or restarts, and waits for a
//! dirsvc that is not up yet. dirsvc is a recording test double here.

use super::util::{chunk, closed_port, spawn_peer, timeout};
use common::config::CHUNK_DEADLINE;
use common::rpc::dir::*;
use common::rpc::peer::Bytes;
use common::rpc::PeerLoc;
use common::transport::{deadline, peer_client};
use common::{ChunkId, InodeId, PeerId};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tarpc::context::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Calls {
    registrations: Vec<PeerRegistration>,
    heartbeats: Vec<(PeerId, PeerUsage)>,
    /// Answer the next heartbeats `NotFound` while true.
    forget: bool,
}

/// A DirService that records register/heartbeat calls and refuses the rest.
#[derive(Clone, Default)]
struct FakeDir {
    calls: Arc<Mutex<Calls>>,
}

/// A running [`FakeDir`] on a loopback port.
struct FakeDirServer {
    dir: FakeDir,
    addr: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl FakeDirServer {
    async fn start(addr: &str) -> FakeDirServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let dir = FakeDir::default();
        let stop = CancellationToken::new();
        let task = {
            let (dir, stop) = (dir.clone(), stop.clone());
            tokio::spawn(async move { common::serve_tarpc!(listener, dir, stop) })
        };
        FakeDirServer { dir, addr, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }

    fn registrations(&self) -> Vec<PeerRegistration> {
        self.dir.calls.lock().unwrap().registrations.clone()
    }

    fn heartbeats(&self) -> Vec<(PeerId, PeerUsage)> {
        self.dir.calls.lock().unwrap().heartbeats.clone()
    }

    /// Polls `cond` every 10 ms until it holds.
    async fn wait_for(&self, what: &str, cond: impl Fn(&Calls) -> bool) {
        for _ in 0..1000 {
            if cond(&self.dir.calls.lock().unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

fn unsupported<T>() -> Result<T, DirError> {
    Err(DirError::Internal("not in the test double".into()))
}

impl DirService for FakeDir {
    async fn hello(self, _: Context) -> u32 {
        common::rpc::PROTOCOL_VERSION
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
    ) -> Result<(), DirError> {
        unsupported()
    }
    async fn readdir(self, _: Context, _: InodeId, _: u64, _: u32) -> Result<ReadDirPage, DirError> {
        unsupported()
    }
    async fn symlink(
        self,
        _: Context,
        _: InodeId,
        _: Vec<u8>,
        _: Vec<u8>,
        _: u64,
        _: u32,
        _: u32,
    ) -> Result<Attr, DirError> {
        unsupported()
    }
    async fn readlink(self, _: Context, _: InodeId) -> Result<Vec<u8>, DirError> {
        unsupported()
    }
    async fn link(self, _: Context, _: InodeId, _: InodeId, _: Vec<u8>) -> Result<Attr, DirError> {
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
        let mut c = self.calls.lock().unwrap();
        c.registrations.push(reg);
        c.forget = false;
        Ok(())
    }
    async fn heartbeat(self, _: Context, id: PeerId, usage: PeerUsage) -> Result<(), DirError> {
        let mut c = self.calls.lock().unwrap();
        if c.forget || !c.registrations.iter().any(|r| r.id == id) {
            return Err(DirError::NotFound);
        }
        c.heartbeats.push((id, usage));
        Ok(())
    }
    async fn list_peers(self, _: Context) -> Result<Vec<PeerStatus>, DirError> {
        unsupported()
    }
}

#[tokio::test]
async fn registers_then_heartbeats_with_current_usage() {
    timeout(async {
        let dirsvc = FakeDirServer::start("127.0.0.1:0").await;
        let data = tempfile::tempdir().unwrap();
        let peer = spawn_peer(data.path(), &dirsvc.addr).await;

        dirsvc
            .wait_for("registration and 2 heartbeats", |c| {
                !c.registrations.is_empty() && c.heartbeats.len() >= 2
            })
            .await;
        let regs = dirsvc.registrations();
        assert_eq!(regs.len(), 1, "registers once while dirsvc keeps it");
        assert_eq!(regs[0].id, peer.id);
        assert_eq!(regs[0].addr, peer.addr.to_string());
        assert_eq!(regs[0].usage.chunks, 0);
        assert!(regs[0].usage.capacity_bytes > 0);
        assert!(dirsvc.heartbeats().iter().all(|(id, _)| *id == peer.id));

        // A stored chunk shows up in a later heartbeat's usage.
        let client = peer_client(&peer.addr.to_string()).await.unwrap();
        let (id, bytes) = chunk(12_345, 1);
        client.put(deadline(CHUNK_DEADLINE), id, Bytes::from(bytes)).await.unwrap().unwrap();
        dirsvc
            .wait_for("a heartbeat with the new chunk", |c| {
                c.heartbeats.last().is_some_and(|(_, u)| u.chunks == 1 && u.used_bytes == 12_345)
            })
            .await;
        peer.shutdown().await;

        // After shutdown the heartbeats stop.
        let n = dirsvc.heartbeats().len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(dirsvc.heartbeats().len(), n);
        dirsvc.stop().await;
    })
    .await;
}

#[tokio::test]
async fn heartbeat_not_found_leads_to_a_new_registration() {
    timeout(async {
        let dirsvc = FakeDirServer::start("127.0.0.1:0").await;
        let data = tempfile::tempdir().unwrap();
        let peer = spawn_peer(data.path(), &dirsvc.addr).await;
        dirsvc.wait_for("first heartbeat", |c| !c.heartbeats.is_empty()).await;
        dirsvc.dir.calls.lock().unwrap().forget = true;
        dirsvc.wait_for("second registration", |c| c.registrations.len() == 2).await;
        let before = dirsvc.heartbeats().len();
        dirsvc.wait_for("heartbeats resume", |c| c.heartbeats.len() > before).await;
        peer.shutdown().await;
        dirsvc.stop().await;
    })
    .await;
}

#[tokio::test]
async fn waits_for_a_late_dirsvc_and_re_registers_after_its_restart() {
    timeout(async {
        let addr = closed_port();
        let data = tempfile::tempdir().unwrap();
        let peer = spawn_peer(data.path(), &addr).await;
        // dirsvc is down for a while; the peer keeps serving and retrying.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let client = peer_client(&peer.addr.to_string()).await.unwrap();
        client.usage(deadline(CHUNK_DEADLINE)).await.unwrap().unwrap();

        let dirsvc = FakeDirServer::start(&addr).await;
        dirsvc
            .wait_for("registration with the late dirsvc", |c| {
                !c.registrations.is_empty() && !c.heartbeats.is_empty()
            })
            .await;
        assert_eq!(dirsvc.registrations()[0].id, peer.id);
        dirsvc.stop().await;

        // A restarted dirsvc (new, empty state) on the same address.
        let dirsvc = FakeDirServer::start(&addr).await;
        dirsvc
            .wait_for("registration with the restarted dirsvc", |c| {
                !c.registrations.is_empty() && !c.heartbeats.is_empty()
            })
            .await;
        assert_eq!(dirsvc.registrations()[0].addr, peer.addr.to_string());
        peer.shutdown().await;
        dirsvc.stop().await;
    })
    .await;
}
