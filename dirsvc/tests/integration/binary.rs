//! The `dirsvc` binary: starts on an ephemeral port with the TLS identity
//! of `--tls-dir` and the CA of `--ca-dir`, publishes its address through
//! `--addr-file`, answers clients of its CA, and exits 0 on SIGTERM.

use super::support::*;
use common::rpc::{Role, PROTOCOL_VERSION};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child if a test fails before it exits.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_file(path: &Path, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return s;
            }
        }
        assert!(start.elapsed() < timeout, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn binary_publishes_its_address_serves_and_exits_cleanly_on_sigterm() {
    let dir = tmp();
    let addr_file = dir.path().join("addr");
    let tls_dir = dir.path().join("tls");
    let me = testkit::pki().write_node(Role::Dirsvc, &tls_dir);
    let log = std::fs::File::create(dir.path().join("dirsvc.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_dirsvc"))
        .args(["--listen", "127.0.0.1:0", "--peer-suspect-after-ms", "1500", "--peer-down-after-ms", "3000"])
        .args(["--repair-interval-ms", "200", "--repair-concurrency", "2", "--repair-bandwidth", "1000000"])
        .args(["--gc-interval-secs", "5", "--gc-grace-secs", "60"])
        .args(["--session-lease-ms", "2500", "--grace-ms", "0", "--change-feed-capacity", "1000"])
        .arg("--db")
        .arg(db_path(dir.path()))
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--tls-dir")
        .arg(&tls_dir)
        .arg("--ca-dir")
        .arg(testkit::pki().ca_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    let addr = wait_for_file(&addr_file, Duration::from_secs(20));
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let (c, tls) = testkit::dir_client_as(&addr, Role::Client).await;
            assert_eq!(c.hello(tarpc::context::current()).await.unwrap(), PROTOCOL_VERSION);
            // It serves with the certificate of --tls-dir.
            let expect = common::tls::Expect::Node(Role::Dirsvc, me);
            common::transport::connect(&addr, &tls, expect).await.unwrap();
            c.init_volume(tarpc::context::current(), volume(2), 0, 0).await.unwrap().unwrap();
            let open = common::rpc::dir::SessionOpen { label: "binary-test".into(), ..Default::default() };
            let grant = c.open_session(tarpc::context::current(), open).await.unwrap().unwrap();
            assert_eq!(grant.lease_ms, 2500, "--session-lease-ms is applied");
            // It holds the CA of --ca-dir: an admin's join token works.
            let (admin, _) = testkit::dir_client_as(&addr, Role::Admin).await;
            let token =
                admin.create_join_token(tarpc::context::current(), Role::Client, 60).await.unwrap().unwrap();
            let joined = common::join::join(&addr, &token, Role::Client).await.unwrap();
            assert_eq!(joined.role, Role::Client);
        })
        .await
        .unwrap();
    });

    let pid = child.0.id() as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child this test spawned and has not
    // reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
    let log = std::fs::read_to_string(dir.path().join("dirsvc.log")).unwrap();
    assert!(log.contains("dirsvc listening"), "log: {log}");
    assert!(log.contains("session opened") && log.contains("binary-test"), "log: {log}");

    // The volume it created is in the database it was given.
    let s = dirsvc::Store::open(&db_path(dir.path())).unwrap();
    assert_eq!(s.volume_info().unwrap(), volume(2));
}

#[test]
fn conflicting_down_timeouts_are_a_usage_error() {
    let dir = tmp();
    let out = Command::new(env!("CARGO_BIN_EXE_dirsvc"))
        .args(["--listen", "127.0.0.1:0", "--peer-down-after-secs", "3", "--peer-down-after-ms", "3000"])
        .arg("--db")
        .arg(db_path(dir.path()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"), "{out:?}");
    assert!(!db_path(dir.path()).exists(), "nothing was started");
}

#[test]
fn binary_keeps_serving_when_its_log_cannot_be_written() {
    // stderr on /dev/full: every log line fails with ENOSPC, as on a host
    // whose log disk filled up.
    let dir = tmp();
    let addr_file = dir.path().join("addr");
    let tls_dir = dir.path().join("tls");
    testkit::pki().write_node(Role::Dirsvc, &tls_dir);
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_dirsvc"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--db")
        .arg(db_path(dir.path()))
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--tls-dir")
        .arg(&tls_dir)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(full)
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    let addr = wait_for_file(&addr_file, Duration::from_secs(20));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let (c, _) = testkit::dir_client_as(&addr, Role::Client).await;
            for _ in 0..20 {
                assert_eq!(c.hello(tarpc::context::current()).await.unwrap(), PROTOCOL_VERSION);
                c.getattr(tarpc::context::current(), common::InodeId::ROOT).await.unwrap().ok();
            }
        })
        .await
        .unwrap();
    });
    assert!(child.0.try_wait().unwrap().is_none(), "dirsvc exited while its log could not be written");
}

/// Runs dirsvc in `cwd` with `args` and `env` until it exits (it cannot
/// start: no TLS identity anywhere); returns its stderr.
fn failed_start(cwd: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dirsvc"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("P2PFS_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(cwd).args(["--listen", "127.0.0.1:0", "--db", "x.redb"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "dirsvc started without a TLS identity");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn options_come_from_flag_then_environment_then_config_file_then_default() {
    let dir = tmp();
    let d = dir.path();
    let config = d.join("dirsvc.toml");
    std::fs::write(&config, format!("tls-dir = \"{}\"\n", d.join("from-file").display())).unwrap();
    let config_arg = ["--config", config.to_str().unwrap()];
    // Default: ./tls.
    let err = failed_start(d, &[], &[]);
    assert!(err.contains("TLS identity from tls:"), "{err}");
    assert!(
        err.lines()
            .any(|l| l
                .starts_with("dirsvc: error: loading the TLS identity from tls: cannot read tls/node.key")),
        "one line per error, with its causes: {err}"
    );
    assert!(!err.contains("Caused by"), "{err}");
    // The file over the default (named by flag, then by environment).
    let err = failed_start(d, &config_arg, &[]);
    assert!(err.contains("from-file"), "{err}");
    let err = failed_start(d, &[], &[("P2PFS_DIRSVC_CONFIG", &config)]);
    assert!(err.contains("from-file"), "{err}");
    // The environment over the file.
    let env_dir = d.join("from-env");
    let err = failed_start(d, &config_arg, &[("P2PFS_DIRSVC_TLS_DIR", &env_dir)]);
    assert!(err.contains("from-env"), "{err}");
    // The flag over the environment.
    let flag_dir = d.join("from-flag");
    let err = failed_start(
        d,
        &[&config_arg[..], &["--tls-dir", flag_dir.to_str().unwrap()]].concat(),
        &[("P2PFS_DIRSVC_TLS_DIR", &env_dir)],
    );
    assert!(err.contains("from-flag"), "{err}");
    // A key that names no option is refused, by name.
    std::fs::write(&config, "tls-dirs = \"x\"\n").unwrap();
    let err = failed_start(d, &config_arg, &[]);
    assert!(err.contains("tls-dirs: no such option"), "{err}");
}
