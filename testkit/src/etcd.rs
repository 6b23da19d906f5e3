//! Real etcd clusters for tests: [`EtcdCluster`] starts `etcd` processes
//! (Debian's `etcd-server`, 3.4) on 127.0.0.1 with free ports
//! ([`EtcdCluster::start`]) or one per host of a [`crate::netns::Lan`] on
//! that host's address, ports 2379 (clients), 2380 (peers) and 2381
//! (health) ([`EtcdCluster::start_on`]), one data
//! directory and one log file per member in a temporary directory, waits
//! until every member reports healthy, and kills them (SIGKILL, by the PID
//! it started) when dropped; the directory is on /dev/shm when there is
//! one (etcd fsyncs every commit); their logs are printed if the test panicked.
//!
//! With TLS, every member presents a dirsvc node certificate of the given
//! [`TestPki`] on its client port and demands a client certificate of that
//! CA (`--client-cert-auth`). The peer ports stay plain HTTP on loopback:
//! etcd members check each other's certificates against the peer URL's
//! host, and p2pfs node certificates name no host or IP address (etcd logs
//! "x509: cannot validate certificate for 127.0.0.1 because it doesn't
//! contain any IP SANs").

use crate::netns::Host;
use crate::TestPki;
use common::rpc::Role;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`EtcdCluster::start`] and [`EtcdCluster::restart`] wait for
/// health.
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);

struct Member {
    name: String,
    /// The host (namespace) it runs in; `None`: this namespace, loopback.
    host: Option<Host>,
    /// The address it listens on.
    ip: String,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` (and `/metrics`) port, TLS or not.
    metrics_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// An etcd cluster of real processes on loopback (see the module
/// documentation).
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    tls: bool,
}

/// Three distinct loopback ports nobody listens on right now. The
/// listeners are held until all three are bound: a port bound and dropped
/// one at a time can come back from the next `bind(0)`, and etcd then
/// fails with "address already in use" listening twice on it.
fn free_ports() -> [u16; 3] {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    let held = [bind(), bind(), bind()];
    held.map(|l| l.local_addr().expect("local address").port())
}

fn etcd_binary() -> PathBuf {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("etcd")
}

/// `GET /health` on `ip:port` (plain HTTP): whether it says healthy.
fn healthy(ip: &str, port: u16) -> bool {
    let Ok(addr) = format!("{ip}:{port}").parse() else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl EtcdCluster {
    /// Starts `members` etcd processes as one cluster and waits until each
    /// is healthy. `tls`: serve clients over mutual TLS with certificates
    /// of this CA.
    ///
    /// Panics (printing the members' logs) if `etcd` is missing or the
    /// cluster is not healthy within 20 s.
    pub fn start(members: usize, tls: Option<&TestPki>) -> EtcdCluster {
        assert!(members >= 1, "an etcd cluster needs a member");
        EtcdCluster::start_members(&vec![None; members], tls)
    }

    /// Starts one member on each of `hosts` (in its network namespace, on
    /// its address; ports 2379, 2380 and 2381) as one cluster and waits
    /// until each is healthy. `tls` as in [`EtcdCluster::start`].
    ///
    /// Panics (printing the members' logs) if `hosts` is empty, `etcd` is
    /// missing or the cluster is not healthy within 20 s.
    pub fn start_on(hosts: &[Host], tls: Option<&TestPki>) -> EtcdCluster {
        assert!(!hosts.is_empty(), "an etcd cluster needs a member");
        let hosts: Vec<Option<Host>> = hosts.iter().cloned().map(Some).collect();
        EtcdCluster::start_members(&hosts, tls)
    }

    /// One member per entry of `hosts` (`None`: loopback, free ports).
    fn start_members(hosts: &[Option<Host>], tls: Option<&TestPki>) -> EtcdCluster {
        let members = hosts.len();
        // On tmpfs when there is one: etcd fsyncs its log on every commit.
        let shm = Path::new("/dev/shm");
        let builder = {
            let mut b = tempfile::Builder::new();
            b.prefix("p2pfs-etcd-");
            b
        };
        let dir = if shm.is_dir() { builder.tempdir_in(shm) } else { builder.tempdir() }.expect("tempdir");
        let mut ms = Vec::new();
        for (i, host) in hosts.iter().take(members).enumerate() {
            let name = format!("m{i}");
            let mdir = dir.path().join(&name);
            std::fs::create_dir_all(&mdir).expect("member directory");
            if let Some(pki) = tls {
                pki.write_node(Role::Dirsvc, &mdir.join("tls"));
            }
            let host = host.clone();
            let (ip, ports) = match &host {
                Some(h) => (h.ip.clone(), [2379, 2380, 2381]),
                None => ("127.0.0.1".to_string(), free_ports()),
            };
            ms.push(Member {
                name,
                host,
                ip,
                client_port: ports[0],
                peer_port: ports[1],
                metrics_port: ports[2],
                dir: mdir,
                child: None,
            });
        }
        let initial_cluster = ms
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, m.ip, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster { dir, members: ms, initial_cluster, tls: tls.is_some() };
        for i in 0..members {
            cluster.spawn(i);
        }
        for i in 0..members {
            cluster.wait_healthy(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let scheme = if self.tls { "https" } else { "http" };
        let m = &self.members[i];
        let client_url = format!("{scheme}://{}:{}", m.ip, m.client_port);
        let peer_url = format!("http://{}:{}", m.ip, m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.join("etcd.log"))
            .expect("etcd log file");
        let mut cmd = match &m.host {
            Some(h) => h.command(etcd_binary()),
            None => Command::new(etcd_binary()),
        };
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--listen-metrics-urls")
            .arg(format!("http://{}:{}", m.ip, m.metrics_port))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(
                self.dir.path().file_name().map_or("p2pfs-test".into(), |n| n.to_string_lossy().into_owned()),
            )
            .arg("--heartbeat-interval")
            .arg("100")
            .arg("--election-timeout")
            .arg("1000")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr");
        if self.tls {
            let t = m.dir.join("tls");
            cmd.arg("--cert-file")
                .arg(t.join("node.crt"))
                .arg("--key-file")
                .arg(t.join("node.key"))
                .arg("--trusted-ca-file")
                .arg(t.join("ca.crt"))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start etcd (install Debian's etcd-server): {e}"));
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        while !self.is_healthy(i) {
            if let Some(Ok(Some(status))) = self.members[i].child.as_mut().map(|c| c.try_wait()) {
                self.print_logs();
                panic!("etcd member {} exited: {status}", self.members[i].name);
            }
            if Instant::now() > deadline {
                self.print_logs();
                panic!("etcd member {} not healthy within {HEALTHY_WITHIN:?}", self.members[i].name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The members' client addresses, `ip:port` (in member order).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("{}:{}", m.ip, m.client_port)).collect()
    }

    /// Whether member `i` answers its `/health` as healthy now (it needs
    /// a quorum for that).
    pub fn is_healthy(&self, i: usize) -> bool {
        let m = &self.members[i];
        let (ip, port) = (m.ip.clone(), m.metrics_port);
        match &m.host {
            Some(h) => h.enter(move || healthy(&ip, port)),
            None => healthy(&ip, port),
        }
    }

    /// The process id of member `i` (`None` when it is not running).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never: [`EtcdCluster::start`]
    /// needs one).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kills member `i` (SIGKILL to the process this kit started) and
    /// reaps it. Nothing if it is not running.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory and ports (after
    /// [`EtcdCluster::kill`]) and waits until it is healthy, which needs
    /// a quorum of members running.
    ///
    /// Panics (printing the logs) if it does not become healthy in 20 s.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// Starts member `i` again without waiting for it to become healthy.
    pub fn restart_no_wait(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Prints every member's log to stderr.
    pub fn print_logs(&self) {
        for m in &self.members {
            let log = std::fs::read_to_string(m.dir.join("etcd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- etcd {} (last {} lines) ----", m.name, tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
