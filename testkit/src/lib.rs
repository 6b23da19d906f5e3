//! The dev-only test kit of p2pfs: what every crate's tests share.
//!
//! - [`pki`]: a cluster CA made once per test process, and TLS identities
//!   of every role from it ([`TestPki::node`], [`TestPki::write_node`]), so
//!   tests speak mutual TLS like the real daemons do; [`TestPki::new`]
//!   makes another, unrelated cluster (for refusal tests).
//! - [`caller`]: what a server sees of an identity after the handshake.
//! - [`dir_client`], [`dir_client_as`], [`peer_client`],
//!   [`peer_client_as`]: clients of a dirsvc or a peer over mutual TLS, as
//!   a given identity or as a fresh node of a role.
//! - [`hostile`]: connections that never finish a TLS handshake (garbage
//!   bytes, half a ClientHello), a client that presents any certificate
//!   and checks nothing (to test what a server itself refuses), and a
//!   count of a server's open sockets.
//! - [`fuzz`]: one fuzz target per decoder of bytes from the network or a
//!   disk, for the CI pass (`tests/fuzz.rs`) and cargo-fuzz (`fuzz/`).
//! - [`etcd`]: real etcd clusters ([`etcd::EtcdCluster`]) on loopback or
//!   one member per host of a [`netns::Lan`], plain or with mutual TLS on
//!   the client ports.
//! - [`netns`]: network namespaces as hosts: one linked to this namespace
//!   ([`netns::Netns`]), or a LAN of hosts on a bridge whose links can be
//!   cut and healed ([`netns::Lan`]).
//! - [`cluster`]: a real p2pfs cluster for end-to-end tests (the built
//!   `dirsvc`, `peerd` and `fs-client` binaries under one tempdir on
//!   tmpfs, FUSE mounts that are always unmounted, failures injected on
//!   purpose); at most two run at once per test process.
//! - [`cmd`]: running a program with a deadline.
//! - [`wait`]: bounded waiting, so a broken test fails with a message
//!   instead of hanging: [`wait_until`] (blocking), [`wait_until_async`]
//!   and [`within`] (a deadline on a future). The only copies in the
//!   workspace: every crate's tests use these.
//!
//! Never a dependency of production code.

use common::pki::{Ca, NodeFiles, NODE_CERT_VALIDITY};
use common::rpc::dir::DirServiceClient;
use common::rpc::peer::PeerServiceClient;
use common::rpc::Role;
use common::tls::{Caller, Tls};
use common::{NodeId, PeerId};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

pub mod cluster;
pub mod cmd;
pub mod etcd;
pub mod fuzz;
pub mod hostile;
pub mod netns;
pub mod wait;

pub use wait::{wait_until, wait_until_async, within};

/// The [`Caller`] a server sees after a TLS handshake with `tls`: for
/// services driven over in-memory channels in tests.
///
/// Panics if `tls` holds no node certificate (a test bug).
pub fn caller(tls: &Tls) -> Caller {
    let cert = rustls::pki_types::CertificateDer::from(tls.cert_der());
    Caller::of(Some(&[cert])).expect("a node certificate of the test CA")
}

/// A test cluster's CA, with its files in a temporary directory
/// (`ca.crt`, `ca.key`) for daemons started as processes.
pub struct TestPki {
    ca: Arc<Ca>,
    dir: tempfile::TempDir,
}

impl TestPki {
    /// A new cluster CA (another cluster than [`pki`]'s).
    ///
    /// Panics if the CA cannot be made (a test setup failure).
    pub fn new() -> TestPki {
        let ca = Ca::create("test").expect("create a test CA");
        let dir = tempfile::Builder::new().prefix("p2pfs-test-ca-").tempdir().expect("tempdir");
        ca.save(&dir.path().join("ca")).expect("save the test CA");
        TestPki { ca: Arc::new(ca), dir }
    }

    /// The CA.
    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// The directory holding `ca.crt` and `ca.key` (for `--ca-dir`).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// A fresh node of `role` (new key, certificate valid 90 days).
    pub fn files(&self, role: Role) -> NodeFiles {
        self.ca.new_node(role, NODE_CERT_VALIDITY).expect("issue a test certificate")
    }

    /// A fresh node of `role` as a TLS identity.
    pub fn node(&self, role: Role) -> Arc<Tls> {
        Arc::new(Tls::new(&self.files(role)).expect("test TLS identity"))
    }

    /// A fresh peer: its id (the node id of its certificate) and its TLS
    /// identity.
    pub fn peer(&self) -> (PeerId, Arc<Tls>) {
        let tls = self.node(Role::Peer);
        (PeerId::from(tls.node()), tls)
    }

    /// The files of a fresh node of `role` whose certificate expired an
    /// hour ago.
    pub fn expired_files(&self, role: Role) -> NodeFiles {
        self.ca
            .new_node_until(role, SystemTime::now() - Duration::from_secs(3600))
            .expect("issue an expired test certificate")
    }

    /// A fresh node of `role` whose certificate expired an hour ago (it
    /// can still connect; every server refuses it).
    pub fn expired(&self, role: Role) -> Arc<Tls> {
        Arc::new(Tls::new(&self.expired_files(role)).expect("test TLS identity"))
    }

    /// Writes a fresh node of `role` into `dir` (`node.key`, `node.crt`,
    /// `ca.crt`) and returns its id.
    pub fn write_node(&self, role: Role, dir: &Path) -> NodeId {
        let f = self.files(role);
        f.save(dir).expect("save test node files");
        f.node
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

/// The cluster CA of this test process, made on first use.
pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let pki = TestPki::new();
        // A static is never dropped: remove its directory when the test
        // binary exits, or every run leaves one in the temp dir.
        extern "C" fn remove_ca_dir() {
            if let Some(p) = PKI.get() {
                let _ = std::fs::remove_dir_all(p.dir.path());
            }
        }
        // SAFETY: registers a plain function with no arguments; it only
        // reads an initialised OnceLock and removes files.
        unsafe { libc::atexit(remove_ca_dir) };
        pki
    })
}

/// A `DirService` client of the dirsvc at `addr`, connecting as `tls`.
///
/// Panics (naming `addr`) if it cannot connect.
pub async fn dir_client(addr: &str, tls: &Tls) -> DirServiceClient {
    common::transport::dir_client(addr, tls)
        .await
        .unwrap_or_else(|e| panic!("connect to dirsvc at {addr} as {tls:?}: {e}"))
}

/// A `DirService` client of the dirsvc at `addr`, connecting as a fresh
/// node of `role` of [`pki`]; with that identity, to reconnect as the same
/// node.
///
/// Panics if it cannot connect.
pub async fn dir_client_as(addr: &str, role: Role) -> (DirServiceClient, Arc<Tls>) {
    let tls = pki().node(role);
    (dir_client(addr, &tls).await, tls)
}

/// A `PeerService` client of the peer `peer` at `addr`, connecting as
/// `tls`.
///
/// Panics (naming `addr`) if it cannot connect.
pub async fn peer_client(addr: &str, tls: &Tls, peer: PeerId) -> PeerServiceClient {
    common::transport::peer_client(addr, tls, peer)
        .await
        .unwrap_or_else(|e| panic!("connect to peer {peer} at {addr} as {tls:?}: {e}"))
}

/// A `PeerService` client of the peer `peer` at `addr`, connecting as a
/// fresh node of `role` of [`pki`].
///
/// Panics if it cannot connect.
pub async fn peer_client_as(addr: &str, peer: PeerId, role: Role) -> PeerServiceClient {
    peer_client(addr, &pki().node(role), peer).await
}
