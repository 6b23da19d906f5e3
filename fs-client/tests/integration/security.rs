//! Trust no one on the network, checked against the real binaries: every
//! daemon refuses nodes without a valid, unrevoked certificate of the
//! cluster; certificates of the wrong role or identity cannot destroy
//! data; nothing plaintext crosses loopback; a local user cannot get
//! around the mount; garbage connections do not stop service.
//!
//! Before this, every connection was plain TCP and no RPC checked its
//! caller: anyone on the network could delete a peer's chunks, unlink or
//! chmod anything through dirsvc, take over another client's session, and
//! a capture showed names and metadata in clear.

use super::tools::{output, Pattern};
use common::pki::{Ca, NODE_CERT_VALIDITY};
use common::rpc::dir::{
    DirError, DirServiceClient, PeerLabels, PeerRegistration, PeerUsage, SessionId, SessionOpen,
};
use common::rpc::peer::{PeerError, PeerServiceClient};
use common::rpc::{PeerLoc, Role};
use common::tls::Tls;
use common::transport::{deadline, framed};
use common::{ChunkId, NodeId, PeerId};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use testkit::cluster::TestCluster;
use testkit::wait_until;

const CALL: Duration = Duration::from_secs(10);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A node of the test cluster's own CA with `role`.
fn node(ca: &Ca, role: Role) -> Arc<Tls> {
    Arc::new(Tls::new(&ca.new_node(role, NODE_CERT_VALIDITY).expect("issue")).expect("tls"))
}

async fn dir_as(addr: SocketAddr, tls: &Tls) -> std::io::Result<DirServiceClient> {
    common::transport::dir_client(&addr.to_string(), tls).await
}

async fn peer_as(addr: SocketAddr, tls: &Tls, id: PeerId) -> std::io::Result<PeerServiceClient> {
    common::transport::peer_client(&addr.to_string(), tls, id).await
}

/// Whether `tls` gets a `getattr` of the root answered by dirsvc at `addr`.
async fn dirsvc_serves(addr: SocketAddr, tls: &Tls) -> bool {
    match dir_as(addr, tls).await {
        Ok(c) => matches!(c.getattr(deadline(CALL), common::InodeId::ROOT).await, Ok(Ok(_))),
        Err(_) => false,
    }
}

/// Whether `tls` gets a `has` answered by the peer `id` at `addr`.
async fn peer_serves(addr: SocketAddr, tls: &Tls, id: PeerId) -> bool {
    match peer_as(addr, tls, id).await {
        Ok(c) => matches!(c.has(deadline(CALL), vec![ChunkId::of(b"x")]).await, Ok(Ok(_))),
        Err(_) => false,
    }
}

/// Writes a file through the mount and returns its bytes.
fn write_through_mount(c: &TestCluster, name: &str, len: usize) -> Vec<u8> {
    let data = Pattern::bytes(7, len);
    let mut f = fs::File::create(c.mountpoint().join(name)).expect("create");
    f.write_all(&data).expect("write");
    f.sync_all().expect("fsync");
    data
}

#[test]
fn nodes_without_a_valid_unrevoked_certificate_are_refused_by_dirsvc_and_every_peer() {
    let mut c = TestCluster::start(2, 2);
    c.mount();
    let data = write_through_mount(&c, "kept", 3 << 20);
    let ca = Ca::load(&c.ca_dir()).expect("the cluster CA");
    let dirsvc = c.dirsvc_addr();
    let peers: Vec<(SocketAddr, PeerId)> = (0..2).map(|i| (c.peer_addr(i), c.peer_id(i))).collect();
    let rt = rt();
    rt.block_on(async {
        let good = node(&ca, Role::Client);
        assert!(dirsvc_serves(dirsvc, &good).await, "a valid client is served by dirsvc");
        for (a, id) in &peers {
            assert!(peer_serves(*a, &good, *id).await, "a valid client is served by peer {id}");
        }
        // Another cluster's node, an expired certificate.
        let foreign = testkit::TestPki::new().node(Role::Client);
        let expired = Arc::new(
            Tls::new(
                &ca.new_node_until(Role::Client, SystemTime::now() - Duration::from_secs(7200))
                    .expect("issue"),
            )
            .expect("tls"),
        );
        for (what, tls) in [("another CA's", &foreign), ("an expired", &expired)] {
            assert!(!dirsvc_serves(dirsvc, tls).await, "dirsvc served {what} certificate");
            for (a, id) in &peers {
                assert!(!peer_serves(*a, tls, *id).await, "peer {id} served {what} certificate");
            }
        }
        // No certificate: dirsvc admits the connection only for `join`
        // (and `hello`); peers refuse the handshake.
        let anon = common::transport::joiner_dir_client(&dirsvc.to_string(), ca.fingerprint())
            .await
            .expect("an unauthenticated connection for joining");
        assert!(matches!(
            anon.getattr(deadline(CALL), common::InodeId::ROOT).await,
            Ok(Err(DirError::Unauthorized(_)))
        ));
        assert!(matches!(anon.list_peers(deadline(CALL)).await, Ok(Err(DirError::Unauthorized(_)))));
        let joiner_cfg = common::tls::joiner_config(ca.fingerprint()).expect("config");
        for (a, _) in &peers {
            let refused = match common::transport::connect_with(&a.to_string(), joiner_cfg.clone()).await {
                Err(_) => true,
                // TLS 1.3: the server's refusal of a missing client
                // certificate arrives with the first read.
                Ok(s) => {
                    let c = PeerServiceClient::new(tarpc::client::Config::default(), framed(s)).spawn();
                    c.has(deadline(CALL), vec![]).await.is_err()
                }
            };
            assert!(refused, "a peer served a connection without a certificate");
        }
        // Revoked: refused by dirsvc at once, by every peer within seconds.
        let doomed = node(&ca, Role::Client);
        assert!(dirsvc_serves(dirsvc, &doomed).await);
        let out = output(
            c.fs_client().args(["revoke", "--dirsvc", &dirsvc.to_string(), &doomed.node().to_hex()]),
            CALL,
        );
        assert!(out.status.success(), "revoke: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!dirsvc_serves(dirsvc, &doomed).await, "dirsvc served a revoked node");
        for (a, id) in &peers {
            let mut refused = false;
            for _ in 0..100 {
                if !peer_serves(*a, &doomed, *id).await {
                    refused = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(refused, "peer {id} still served a revoked node after 10 s");
        }
    });
    // The data is untouched.
    assert_eq!(fs::read(c.mountpoint().join("kept")).expect("read"), data);
    c.unmount();
    c.stop_all();
}

#[test]
fn certificates_of_the_wrong_role_or_identity_cannot_destroy_data_or_take_over_sessions() {
    let mut c = TestCluster::start(2, 2);
    c.mount();
    let data = write_through_mount(&c, "precious", 2 << 20);
    let ca = Ca::load(&c.ca_dir()).expect("the cluster CA");
    let dirsvc = c.dirsvc_addr();
    let (p0, id0) = (c.peer_addr(0), c.peer_id(0));
    let id1 = c.peer_id(1);
    let rt = rt();
    rt.block_on(async {
        let client = node(&ca, Role::Client);
        let peer = peer_as(p0, &client, id0).await.expect("connect");
        // A client cannot delete, list or pull chunks on a peer.
        let chunks = fs::read_dir(c.peer_data_dir(0).join("data")).expect("data dir");
        let some_chunk = chunks
            .flatten()
            .flat_map(|d| fs::read_dir(d.path()).into_iter().flatten().flatten())
            .find_map(|f| f.file_name().to_str().and_then(|n| n.parse::<ChunkId>().ok()))
            .expect("peer 0 holds a chunk");
        assert!(matches!(peer.delete(deadline(CALL), some_chunk).await, Ok(Err(PeerError::Unauthorized(_)))));
        assert!(matches!(
            peer.list_chunks(deadline(CALL), None, 10).await,
            Ok(Err(PeerError::Unauthorized(_)))
        ));
        let src = PeerLoc { id: id1, addr: c.peer_addr(1).to_string(), live: true };
        assert!(matches!(
            peer.fetch_from(deadline(CALL), some_chunk, src).await,
            Ok(Err(PeerError::Unauthorized(_)))
        ));
        assert!(matches!(peer.usage(deadline(CALL)).await, Ok(Err(PeerError::Unauthorized(_)))));
        // A peer certificate cannot speak for another peer.
        let rogue = node(&ca, Role::Peer);
        let d = dir_as(dirsvc, &rogue).await.expect("connect");
        let reg = PeerRegistration {
            id: id0,
            addr: "127.0.0.1:9".into(),
            usage: PeerUsage {
                capacity_bytes: u64::MAX / 4,
                free_bytes: u64::MAX / 4,
                ..PeerUsage::default()
            },
            labels: PeerLabels::default(),
        };
        assert!(matches!(d.register_peer(deadline(CALL), reg).await, Ok(Err(DirError::Unauthorized(_)))));
        assert!(matches!(
            d.heartbeat(deadline(CALL), id0, PeerUsage::default()).await,
            Ok(Err(DirError::Unauthorized(_)))
        ));
        assert!(matches!(
            d.report_corrupt(deadline(CALL), id0, vec![some_chunk]).await,
            Ok(Err(DirError::Unauthorized(_)))
        ));
        // … nor use the namespace.
        assert!(matches!(
            d.unlink(deadline(CALL), common::InodeId::ROOT, b"anything".to_vec()).await,
            Ok(Err(DirError::Unauthorized(_)))
        ));
        // A client cannot drain, revoke or make join tokens.
        let d = dir_as(dirsvc, &client).await.expect("connect");
        assert!(matches!(d.drain_peer(deadline(CALL), id0).await, Ok(Err(DirError::Unauthorized(_)))));
        assert!(matches!(
            d.revoke(deadline(CALL), NodeId::from(id0), "x".into()).await,
            Ok(Err(DirError::Unauthorized(_)))
        ));
        assert!(matches!(
            d.create_join_token(deadline(CALL), Role::Peer, 60).await,
            Ok(Err(DirError::Unauthorized(_)))
        ));
        // Another client's session can be neither used nor closed.
        let owner = dir_as(dirsvc, &node(&ca, Role::Client)).await.expect("connect");
        let grant = owner
            .open_session(deadline(CALL), SessionOpen { label: "owner".into(), ..SessionOpen::default() })
            .await
            .expect("rpc")
            .expect("session");
        let s: SessionId = grant.id;
        assert!(matches!(d.renew_session(deadline(CALL), s).await, Ok(Err(DirError::Unauthorized(_)))));
        assert!(matches!(
            d.open_file(deadline(CALL), s, common::InodeId::ROOT).await,
            Ok(Err(DirError::Unauthorized(_)))
        ));
        assert!(matches!(d.poll_changes(deadline(CALL), s, 0, 0).await, Ok(Err(DirError::Unauthorized(_)))));
        assert!(matches!(d.close_session(deadline(CALL), s).await, Ok(Err(DirError::Unauthorized(_)))));
        let reclaim = SessionOpen { label: "thief".into(), reclaim: Some(s), ..SessionOpen::default() };
        assert!(matches!(d.open_session(deadline(CALL), reclaim).await, Ok(Err(DirError::Unauthorized(_)))));
        assert!(
            matches!(owner.renew_session(deadline(CALL), s).await, Ok(Ok(_))),
            "the owner keeps its session"
        );
    });
    // Everything still reads back, and both peers still list their chunks.
    c.unmount();
    c.mount();
    assert_eq!(fs::read(c.mountpoint().join("precious")).expect("read"), data);
    let out = super::tools::run(c.fs_client().args(["peers", "--dirsvc", &dirsvc.to_string()]), CALL);
    assert!(!out.contains("127.0.0.1:9 "), "a rogue registration took effect:\n{out}");
    c.unmount();
    c.stop_all();
}

/// Whether `hay` contains `needle`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_capture_of_loopback_traffic_shows_no_plaintext_path_name_or_content() {
    let marker_dir = "MNTMARKER-5b1e9c";
    let marker_name = "NAMEMARKER-7d42aa.txt";
    let marker_content = b"CONTENTMARKER-c0ffee-this-must-never-be-seen-on-the-wire";
    let opts = testkit::cluster::ClusterOpts {
        mnt_name: Some(marker_dir.into()),
        ..testkit::cluster::ClusterOpts::new(2, 2)
    };
    let mut c = TestCluster::start_with(opts);
    let pcap = c.work_dir().join("lo.pcap");
    let mut capture = Command::new("tcpdump")
        .args(["-i", "lo", "-s", "0", "-U", "-n", "-w"])
        .arg(&pcap)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump (Debian package tcpdump) must be installed");
    let _stop = KillOnDrop(capture.id());
    // The capture is live once a canary sent in clear over loopback is in
    // the file (tcpdump -U writes each packet as it comes).
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    see_canary(&sock, &pcap, b"CANARY-capture-started-9e1d");
    c.mount();
    let mut content = Vec::new();
    for _ in 0..2000 {
        content.extend_from_slice(marker_content);
    }
    fs::write(c.mountpoint().join(marker_name), &content).expect("write");
    c.unmount();
    c.mount();
    assert_eq!(fs::read(c.mountpoint().join(marker_name)).expect("read"), content);
    let listing: Vec<_> =
        fs::read_dir(c.mountpoint()).expect("ls").flatten().map(|e| e.file_name()).collect();
    assert!(listing.iter().any(|n| n == marker_name));
    // A last canary in the file: every packet before it is written too.
    let canary = b"CANARY-plaintext-on-lo-4f3a";
    see_canary(&sock, &pcap, canary);
    // SAFETY: kill of the tcpdump we started (its pid), to flush and stop.
    unsafe { libc::kill(capture.id() as i32, libc::SIGINT) };
    let _ = capture.wait();
    let bytes = fs::read(&pcap).expect("read capture");
    assert!(contains(&bytes, canary), "the capture did not see loopback traffic");
    assert!(bytes.len() > 100_000, "the capture holds too little traffic ({} bytes)", bytes.len());
    for (what, m) in [
        ("the mount path", marker_dir.as_bytes()),
        ("a file name", marker_name.as_bytes()),
        ("file content", &marker_content[..]),
    ] {
        assert!(!contains(&bytes, m), "{what} crossed loopback in clear");
    }
    c.unmount();
    c.stop_all();
}

/// Sends `canary` in a UDP datagram over loopback until it shows up in the
/// capture file `pcap`; panics after 30 s.
fn see_canary(sock: &std::net::UdpSocket, pcap: &std::path::Path, canary: &[u8]) {
    let seen = wait_until(
        || {
            sock.send_to(canary, "127.0.0.1:9").expect("send canary");
            fs::read(pcap).is_ok_and(|b| contains(&b, canary))
        },
        Duration::from_secs(30),
    );
    assert!(
        seen.is_some(),
        "tcpdump never wrote the canary {:?} to its capture",
        String::from_utf8_lossy(canary)
    );
}

/// Kills a process by pid when dropped (if the test fails early).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill of a child this test started; harmless if it exited.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// Runs `sh -c script` as the user nobody; returns (success, stdout+stderr).
fn as_nobody(script: &str) -> (bool, String) {
    let out = output(Command::new("runuser").args(["-u", "nobody", "--", "sh", "-c", script]), CALL);
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_local_user_cannot_read_a_file_it_may_not_by_any_path() {
    let mut c = TestCluster::start(2, 2);
    c.mount();
    let root = c.mountpoint().parent().expect("parent").to_path_buf();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
    let secret = c.mountpoint().join("root-only");
    fs::write(&secret, b"SECRET-of-root").expect("write");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    // Through the mount: refused by the kernel's permission check.
    let (ok, said) = as_nobody(&format!("cat '{}'", secret.display()));
    assert!(!ok && said.contains("Permission denied"), "nobody read a 0600 file: {said}");
    // Nor can it change the mode through the mount.
    let (ok, _) = as_nobody(&format!("chmod 644 '{}'", secret.display()));
    assert!(!ok, "nobody chmodded root's file");
    // The keys that would let it talk to the daemons are root's, 0600.
    for key in [c.client_tls_dir().join("node.key"), c.admin_tls_dir().join("node.key"), c.identity_file()] {
        let (ok, _) = as_nobody(&format!("cat '{}'", key.display()));
        assert!(!ok, "nobody read {}", key.display());
    }
    // The daemons' ports demand a certificate: a peer refuses the
    // handshake; dirsvc answers nothing but hello and join.
    for i in 0..2 {
        let (_, said) = as_nobody(&format!(
            "echo | timeout 10 openssl s_client -connect {} -tls1_3 2>&1",
            c.peer_addr(i)
        ));
        assert!(
            said.contains("certificate required") || said.contains("alert") || said.contains("error"),
            "peer {i} accepted a TLS client without a certificate: {said}"
        );
    }
    let ca = Ca::load(&c.ca_dir()).expect("ca");
    let rt = rt();
    rt.block_on(async {
        let anon = common::transport::joiner_dir_client(&c.dirsvc_addr().to_string(), ca.fingerprint())
            .await
            .expect("connect");
        let set = common::rpc::dir::SetAttr { perm: Some(0o644), ..Default::default() };
        let attr = anon.lookup(deadline(CALL), common::InodeId::ROOT, b"x".to_vec()).await;
        assert!(matches!(attr, Ok(Err(DirError::Unauthorized(_)))));
        let r = anon.setattr(deadline(CALL), common::InodeId(2), set).await;
        assert!(matches!(r, Ok(Err(DirError::Unauthorized(_)))), "{r:?}");
    });
    assert_eq!(fs::metadata(&secret).expect("stat").permissions().mode() & 0o777, 0o600);
    c.unmount();
    c.stop_all();
}

/// Resident set size of a process in KiB (`VmRSS` of /proc/PID/status).
fn rss_kib(pid: i32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_thousand_garbage_and_half_open_connections_leave_every_daemon_serving_with_bounded_memory() {
    let mut c = TestCluster::start(2, 2);
    c.mount();
    let before: Vec<u64> =
        [c.dirsvc_pid(), c.peer_pid(0), c.peer_pid(1)].iter().map(|p| rss_kib(*p)).collect();
    let targets = [c.dirsvc_addr(), c.peer_addr(0), c.peer_addr(1)];
    let rt = rt();
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut held = Vec::new();
        for i in 0..1000usize {
            let t = targets[i % targets.len()];
            let Ok(mut s) = tokio::net::TcpStream::connect(t).await else { continue };
            match i % 4 {
                // Random bytes.
                0 => {
                    let _ = s.write_all(&Pattern::bytes(i as u64, 512)).await;
                }
                // A TLS record header promising more than is sent.
                1 => {
                    let _ = s.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00]).await;
                }
                // A huge length prefix, as if it were a frame.
                2 => {
                    let _ = s.write_all(&[0xff, 0xff, 0xff, 0xff]).await;
                }
                // Connect and say nothing.
                _ => {}
            }
            held.push(s);
        }
        // While they are all open, a normal client is served.
        let ca = Ca::load(&c.ca_dir()).expect("ca");
        let client = node(&ca, Role::Client);
        assert!(dirsvc_serves(c.dirsvc_addr(), &client).await, "dirsvc stopped serving");
        for i in 0..2 {
            assert!(peer_serves(c.peer_addr(i), &client, c.peer_id(i)).await, "peer {i} stopped serving");
        }
        drop(held);
    });
    // And the mount works end to end.
    let data = write_through_mount(&c, "after-the-flood", 3 << 20);
    assert_eq!(fs::read(c.mountpoint().join("after-the-flood")).expect("read"), data);
    let after: Vec<u64> =
        [c.dirsvc_pid(), c.peer_pid(0), c.peer_pid(1)].iter().map(|p| rss_kib(*p)).collect();
    for (b, a) in before.iter().zip(&after) {
        assert!(*a < b + 64 * 1024, "a daemon grew from {b} KiB to {a} KiB");
    }
    c.unmount();
    c.stop_all();
}
