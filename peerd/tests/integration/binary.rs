//! The real `peerd` binary: it serves with the identity of `--tls-dir`,
//! keeps running while dirsvc is unreachable, `kill -9` loses no
//! acknowledged chunk, SIGTERM/SIGINT exit 0, and the command-line flags
//! for labels, heartbeat and scrub take effect.

use super::fake_dir::FakeDirServer;
use super::util::{chunk, closed_port, TEST_TIMEOUT};
use common::config::CHUNK_DEADLINE;
use common::rpc::dir::PeerLabels;
use common::rpc::peer::Bytes;
use common::rpc::Role;
use common::transport::deadline;
use common::PeerId;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use testkit::within;

/// A peerd child process, SIGKILLed on drop if still running.
struct Peerd {
    child: Child,
    log: PathBuf,
    /// Its peer id (its certificate's node id).
    id: PeerId,
}

impl Peerd {
    /// Starts `peerd` on `127.0.0.1:0` with the TLS identity in
    /// `<data_dir>-tls` (a fresh peer certificate of the test CA written
    /// there unless one is there already, so a restart over the same data
    /// directory is the same peer); its log goes to `<log_dir>/<name>.log`.
    fn start(data_dir: &Path, addr_file: &Path, dirsvc: &str, log_dir: &Path, name: &str) -> Peerd {
        Self::start_with(data_dir, addr_file, dirsvc, log_dir, name, &[])
    }

    /// As [`Peerd::start`], with `extra` arguments.
    fn start_with(
        data_dir: &Path,
        addr_file: &Path,
        dirsvc: &str,
        log_dir: &Path,
        name: &str,
        extra: &[&str],
    ) -> Peerd {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut tls_dir = data_dir.as_os_str().to_owned();
        tls_dir.push("-tls");
        let tls_dir = PathBuf::from(tls_dir);
        let id = if common::pki::NodeFiles::exist(&tls_dir) {
            common::pki::NodeFiles::load(&tls_dir).unwrap().node
        } else {
            testkit::pki().write_node(Role::Peer, &tls_dir)
        };
        let child = Command::new(env!("CARGO_BIN_EXE_peerd"))
            .args(["--listen", "127.0.0.1:0", "--dirsvc", dirsvc])
            .args(extra)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--tls-dir")
            .arg(&tls_dir)
            .arg("--addr-file")
            .arg(addr_file)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Peerd { child, log: log_path, id: PeerId::from(id) }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of our own child process.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        for _ in 0..1000 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("peerd did not exit");
    }
}

impl Drop for Peerd {
    fn drop(&mut self) {
        if self.running() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Waits for the address file to appear and parse, checking the child is
/// still alive.
async fn wait_addr(p: &mut Peerd, file: &Path) -> SocketAddr {
    for _ in 0..2000 {
        if let Ok(text) = std::fs::read_to_string(file) {
            return text.trim().parse().expect("address file holds ip:port");
        }
        if !p.running() {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            panic!("peerd exited early; log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("address file never appeared");
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_chunk() {
    within(TEST_TIMEOUT, "the test", async {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let addr_file = tmp.path().join("addr");
        let dirsvc = closed_port();

        let mut p = Peerd::start(&data, &addr_file, &dirsvc, tmp.path(), "first");
        let addr = wait_addr(&mut p, &addr_file).await;
        assert!(addr.ip().is_loopback() && addr.port() != 0);
        // An admin stores, reads and asks for usage; the peer must be the
        // one of the certificate in --tls-dir.
        let client = testkit::peer_client_as(&addr.to_string(), p.id, Role::Admin).await;

        // Several acknowledged puts, some in parallel, of varied sizes.
        let chunks: Vec<_> = (0..24).map(|i| chunk(1 + (i * 47_111) % (1 << 20), i as u64)).collect();
        let puts = chunks.iter().map(|(id, bytes)| {
            let c = client.clone();
            let (id, bytes) = (*id, bytes.clone());
            async move { c.put(deadline(CHUNK_DEADLINE), id, Bytes::from(bytes)).await.unwrap().unwrap() }
        });
        futures::future::join_all(puts).await;

        // dirsvc was never reachable, yet the peer is still up.
        assert!(p.running(), "peerd must not exit while dirsvc is down");
        p.signal(libc::SIGKILL);
        let st = p.wait_exit().await;
        assert_eq!(st.signal(), Some(libc::SIGKILL));
        drop(client);

        std::fs::remove_file(&addr_file).unwrap();
        let mut p = Peerd::start(&data, &addr_file, &dirsvc, tmp.path(), "second");
        let addr = wait_addr(&mut p, &addr_file).await;
        let client = testkit::peer_client_as(&addr.to_string(), p.id, Role::Admin).await;
        for (id, bytes) in &chunks {
            let back = client
                .get(deadline(CHUNK_DEADLINE), *id)
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("chunk {id} lost: {e}"));
            assert_eq!(common::ChunkId::of(&back), *id);
            assert_eq!(&back.into_vec(), bytes);
        }
        let u = client.usage(deadline(CHUNK_DEADLINE)).await.unwrap().unwrap();
        assert_eq!(u.chunks, chunks.len() as u64);

        p.signal(libc::SIGTERM);
        assert_eq!(p.wait_exit().await.code(), Some(0), "SIGTERM exits 0");
    })
    .await;
}

#[tokio::test]
async fn sigint_exits_cleanly_and_keeps_the_peer_id() {
    within(TEST_TIMEOUT, "the test", async {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let addr_file = tmp.path().join("addr");
        let mut p = Peerd::start(&data, &addr_file, &closed_port(), tmp.path(), "first");
        wait_addr(&mut p, &addr_file).await;
        let id = std::fs::read_to_string(data.join("peer-id")).unwrap();
        assert_eq!(id.trim(), p.id.to_hex(), "the peer id is the certificate's");
        p.signal(libc::SIGINT);
        assert_eq!(p.wait_exit().await.code(), Some(0));
        let log = std::fs::read_to_string(tmp.path().join("first.log")).unwrap();
        assert!(log.contains(id.trim()), "start line names the peer id:\n{log}");

        std::fs::remove_file(&addr_file).unwrap();
        let mut p = Peerd::start(&data, &addr_file, &closed_port(), tmp.path(), "second");
        wait_addr(&mut p, &addr_file).await;
        assert_eq!(std::fs::read_to_string(data.join("peer-id")).unwrap(), id);
        p.signal(libc::SIGTERM);
        assert_eq!(p.wait_exit().await.code(), Some(0));
    })
    .await;
}

#[tokio::test]
async fn flags_set_labels_heartbeat_interval_and_scrub() {
    within(TEST_TIMEOUT, "the test", async {
        let tmp = tempfile::tempdir().unwrap();
        let dirsvc = FakeDirServer::start("127.0.0.1:0").await;
        let flags = [
            "--host-label",
            "node-a",
            "--zone-label",
            "zone-1",
            "--heartbeat-interval-ms",
            "50",
            "--scrub-bytes-per-sec",
            "0",
            "--scrub-interval-secs",
            "5",
        ];
        let addr_file = tmp.path().join("addr");
        let mut p = Peerd::start_with(
            &tmp.path().join("data"),
            &addr_file,
            &dirsvc.addr,
            tmp.path(),
            "flags",
            &flags,
        );
        wait_addr(&mut p, &addr_file).await;
        dirsvc.wait_for("registration and a heartbeat", |c| !c.heartbeats.is_empty()).await;
        assert_eq!(
            dirsvc.registrations()[0].labels,
            PeerLabels { host: "node-a".into(), zone: "zone-1".into() }
        );
        // 50 ms between heartbeats: well over 5 in a second (2 s default: 0 or 1).
        let before = dirsvc.heartbeats().len();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let beats = dirsvc.heartbeats().len() - before;
        assert!(beats >= 5, "{beats} heartbeats in 1 s");
        p.signal(libc::SIGTERM);
        assert_eq!(p.wait_exit().await.code(), Some(0));
        let log = std::fs::read_to_string(&p.log).unwrap();
        assert!(log.contains("scrub disabled"), "--scrub-bytes-per-sec 0 turns scrub off:\n{log}");
        dirsvc.stop().await;

        // A zero heartbeat interval is refused at the command line.
        let mut bad = Peerd::start_with(
            &tmp.path().join("data2"),
            &tmp.path().join("addr2"),
            &closed_port(),
            tmp.path(),
            "bad",
            &["--heartbeat-interval-ms", "0"],
        );
        assert_eq!(bad.wait_exit().await.code(), Some(2), "clap usage error");
    })
    .await;
}

/// Runs peerd with `args` and `env` until it exits (it cannot start: no
/// certificate and no join token); returns its stderr.
fn failed_start(data_dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peerd"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("P2PFS_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["--listen", "127.0.0.1:0", "--dirsvc", &closed_port(), "--data-dir"]).arg(data_dir).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "peerd started without a certificate");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn options_come_from_flag_then_environment_then_config_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let config = d.join("peerd.toml");
    std::fs::write(&config, format!("tls-dir = \"{}\"\n", d.join("from-file").display())).unwrap();
    let config_arg = ["--config", config.to_str().unwrap()];
    // Default: <data-dir>/tls.
    let err = failed_start(&data, &[], &[]);
    assert!(err.contains(&format!("no certificate in {}", data.join("tls").display())), "{err}");
    // The file over the default (named by flag, then by environment).
    let err = failed_start(&data, &config_arg, &[]);
    assert!(err.contains("from-file"), "{err}");
    let err = failed_start(&data, &[], &[("P2PFS_PEERD_CONFIG", &config)]);
    assert!(err.contains("from-file"), "{err}");
    // The environment over the file.
    let env_dir = d.join("from-env");
    let err = failed_start(&data, &config_arg, &[("P2PFS_PEERD_TLS_DIR", &env_dir)]);
    assert!(err.contains("from-env"), "{err}");
    // The flag over the environment.
    let flag_dir = d.join("from-flag");
    let args = [&config_arg[..], &["--tls-dir", flag_dir.to_str().unwrap()]].concat();
    let err = failed_start(&data, &args, &[("P2PFS_PEERD_TLS_DIR", &env_dir)]);
    assert!(err.contains("from-flag"), "{err}");
}
