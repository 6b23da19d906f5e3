//! The dev-only test kit of p2pfs: what every crate's tests share.
//!
//! - [`pki`]: a cluster CA made once per test process, and TLS identities
//!   of every role from it ([`TestPki::node`], [`TestPki::write_node`]), so
//!   tests speak mutual TLS like the real daemons do; [`TestPki::new`]
//!   makes another, unrelated cluster (for refusal tests).
//! - [`wait_until`] and [`within`]: bounded waiting, so a broken test fails
//!   with a message instead of hanging.
//!
//! Never a dependency of production code.

use common::pki::{Ca, NodeFiles, NODE_CERT_VALIDITY};
use common::rpc::Role;
use common::tls::Tls;
use common::NodeId;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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
    PKI.get_or_init(TestPki::new)
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns
/// how long it took, or `None` on timeout.
pub fn wait_until(mut cond: impl FnMut() -> bool, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `f` with a deadline of `timeout`; panics with `what` if it is not
/// done by then.
pub async fn within<F: Future>(timeout: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(timeout, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {timeout:?}"),
    }
}
