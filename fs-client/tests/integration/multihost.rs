//! Several hosts: a peer on another "host" (a network namespace with its
//! own address, joined to this one by a veth pair) joins the cluster with
//! a one-time join token and serves chunks; a spent or expired token is
//! refused. The namespace, its link and every process are removed even
//! when the test fails.

use super::tools::{output, run, Pattern};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use testkit::cluster::{bin_dir, check_environment, scratch_parent, tail, wait_addr_file, Proc};
use testkit::netns::Netns;
use testkit::wait_until;

const CLI: Duration = Duration::from_secs(30);

fn fs_client(root: &Path, tls: &str) -> Command {
    let mut c = Command::new(bin_dir().join("fs-client"));
    c.env("P2PFS_TLS_DIR", root.join(tls));
    c
}

fn issue(root: &Path, role: &str, out: &Path) {
    run(
        fs_client(root, "admin-tls")
            .args(["ca", "issue", "--ca-dir"])
            .arg(root.join("ca"))
            .args(["--role", role, "--out"])
            .arg(out),
        CLI,
    );
}

/// Starts peerd as `name` with `args` in `ns` (or here), writing its
/// address to `<root>/<name>.addr`.
fn peerd(root: &Path, ns: Option<&Netns>, name: &str, args: &[String]) -> (Proc, PathBuf) {
    let bin = bin_dir().join("peerd");
    let mut cmd = match ns {
        Some(ns) => ns.exec(&bin),
        None => Command::new(&bin),
    };
    let addr_file = root.join(format!("{name}.addr"));
    cmd.args(args).arg("--addr-file").arg(&addr_file).args(["--heartbeat-interval-ms", "300"]);
    (Proc::spawn(name, cmd, &root.join(format!("{name}.log"))), addr_file)
}

/// Number of peers `fs-client peers` lists as up.
fn live_peers(root: &Path, dirsvc: &str) -> usize {
    let out = output(fs_client(root, "admin-tls").args(["peers", "--dirsvc", dirsvc]), CLI);
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" up ")).count()
}

fn token(root: &Path, dirsvc: &str, ttl: &str) -> String {
    run(
        fs_client(root, "admin-tls")
            .args(["token", "create", "--dirsvc", dirsvc, "--role", "peer", "--ttl", ttl]),
        CLI,
    )
    .trim()
    .to_string()
}

#[test]
fn a_peer_on_another_host_joins_with_a_token_and_serves_chunks_and_spent_or_expired_tokens_are_refused() {
    check_environment();
    let dir =
        tempfile::Builder::new().prefix("p2pfs-multihost-").tempdir_in(scratch_parent()).expect("tempdir");
    let root = fs::canonicalize(dir.path()).expect("canonical");
    run(fs_client(&root, "admin-tls").args(["ca", "init", "--dir"]).arg(root.join("ca")), CLI);
    for (role, out) in
        [("dirsvc", "dirsvc-tls"), ("admin", "admin-tls"), ("client", "client-tls"), ("peer", "here/tls")]
    {
        issue(&root, role, &root.join(out));
    }
    let ns = Netns::new();
    // dirsvc listens on this host's address on the link.
    let dirsvc_addr_file = root.join("dirsvc.addr");
    let mut cmd = Command::new(bin_dir().join("dirsvc"));
    cmd.args(["--listen", &format!("{}:0", ns.host_ip), "--db"])
        .arg(root.join("dirsvc.redb"))
        .arg("--addr-file")
        .arg(&dirsvc_addr_file)
        .arg("--tls-dir")
        .arg(root.join("dirsvc-tls"))
        .arg("--ca-dir")
        .arg(root.join("ca"));
    let mut dirsvc = Proc::spawn("dirsvc", cmd, &root.join("dirsvc.log"));
    let dirsvc_addr: SocketAddr = wait_addr_file(&mut dirsvc, &dirsvc_addr_file);
    let d = dirsvc_addr.to_string();
    // A peer here, with a certificate from the operator.
    let (mut here, here_addr) = peerd(
        &root,
        None,
        "peer-here",
        &[
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            root.join("here").display().to_string(),
            "--dirsvc".into(),
            d.clone(),
        ],
    );
    wait_addr_file(&mut here, &here_addr);
    // A peer on the other host, with only a join token.
    let t = token(&root, &d, "10m");
    assert!(t.starts_with("p2pfs-join-1."), "{t}");
    let remote_dir = root.join("remote");
    let (mut remote, remote_addr) = peerd(
        &root,
        Some(&ns),
        "peer-remote",
        &[
            "--listen".into(),
            format!("{}:0", ns.ns_ip),
            "--data-dir".into(),
            remote_dir.display().to_string(),
            "--dirsvc".into(),
            d.clone(),
            "--join".into(),
            t.clone(),
        ],
    );
    let at = wait_addr_file(&mut remote, &remote_addr);
    assert_eq!(at.ip().to_string(), ns.ns_ip, "the remote peer listens on its own host's address");
    assert!(
        wait_until(|| live_peers(&root, &d) == 2, Duration::from_secs(30)).is_some(),
        "the joined peer did not come up\n{}",
        tail(remote.log(), 30)
    );
    assert!(remote_dir.join("tls/node.crt").is_file(), "the join wrote the peer's certificate");
    // A volume with R = 2 stores every chunk on both, the remote host too.
    let identity = root.join("identity.txt");
    run(fs_client(&root, "admin-tls").arg("keygen").arg("-o").arg(&identity), CLI);
    run(
        fs_client(&root, "admin-tls").args(["init", "--dirsvc", &d, "--replicas", "2", "-i"]).arg(&identity),
        CLI,
    );
    let mnt = root.join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let mount = |root: &Path| {
        let mut c = fs_client(root, "client-tls");
        c.args(["mount", "--dirsvc", &d, "-i"]).arg(&identity).arg(&mnt);
        let p = Proc::spawn("mount", c, &root.join("mount.log"));
        assert!(
            wait_until(
                || testkit::cluster::mount_entry(&mnt).is_some_and(|m| m.is_p2pfs()),
                Duration::from_secs(30)
            )
            .is_some(),
            "the mount did not appear\n{}",
            tail(p.log(), 30)
        );
        p
    };
    let data = Pattern::bytes(11, 5 << 20);
    {
        let _m = Unmount(mount(&root), mnt.clone());
        fs::write(mnt.join("f"), &data).expect("write");
    }
    {
        let _m = Unmount(mount(&root), mnt.clone());
        assert_eq!(fs::read(mnt.join("f")).expect("read"), data, "read back through the remote peer");
    }
    let chunks = super::tools::chunk_files(&remote_dir).len();
    assert!(chunks >= 5, "the remote peer holds {chunks} chunks of a 5-block file");
    // The spent token, and an expired one, are refused.
    let short = token(&root, &d, "1s");
    std::thread::sleep(Duration::from_secs(2));
    for (what, tok) in [("a used", t), ("an expired", short)] {
        let name = format!("peer-refused-{}", what.len());
        let (mut p, _) = peerd(
            &root,
            Some(&ns),
            &name,
            &[
                "--listen".into(),
                format!("{}:0", ns.ns_ip),
                "--data-dir".into(),
                root.join(&name).display().to_string(),
                "--dirsvc".into(),
                d.clone(),
                "--join".into(),
                tok,
            ],
        );
        let st = p.exited_within(Duration::from_secs(30)).expect("a refused join ends peerd");
        assert!(!st.success(), "peerd started with {what} token");
        let log = fs::read_to_string(p.log()).expect("log");
        assert!(log.contains("invalid, used or expired join token"), "{what} token: {log}");
        assert!(!root.join(&name).join("tls/node.crt").exists(), "{what} token gave a certificate");
    }
    drop(remote);
    drop(here);
    drop(dirsvc);
}

/// Unmounts (SIGTERM to the client, then a lazy unmount) on drop.
struct Unmount(Proc, PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        // The kernel ends the FUSE session; the client flushes and exits.
        let _ = Command::new("umount").arg(&self.1).status();
        if self.0.exited_within(Duration::from_secs(30)).is_none() {
            let _ = Command::new("umount").arg("-l").arg(&self.1).status();
        }
    }
}
