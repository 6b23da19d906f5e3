//! Network namespaces as "hosts" for multi-host tests (needs root and
//! `ip` from iproute2; `nsenter` from util-linux for
//! [`Host::net_command`]).
//!
//! - [`Netns`]: one namespace joined to this (the test's) namespace by a
//!   veth pair, an address on each side.
//! - [`Lan`]: a small LAN of hosts that never touches this namespace: a
//!   "switch" namespace holding a bridge, and per host a namespace with
//!   `lo` up and one link `eth0` (address `10.77.N.i/24`) whose veth peer
//!   is a port of the bridge. [`Host::link_down`] / [`Host::link_up`] cut
//!   a host off and heal it.
//!
//! Every name is unique per test process (pid and a counter); the LAN's
//! addresses exist only inside its own namespaces, so LANs of other tests
//! or processes cannot collide with it or with the machine's network.
//! Dropping a [`Netns`] or [`Lan`] deletes its namespaces (with them every
//! link and the bridge), also when the test panics; processes still
//! running inside keep their namespace alive until they exit, so kill
//! them first (declare the `Lan` before the processes).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other namespace of this test process has:
/// `p2pfs-<pid hex>-<counter>`.
fn unique_tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{:x}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Runs `ip` with `args`. Panics with its stderr unless it exits 0 (a
/// test setup failure).
fn ip(args: &[&str]) {
    let out =
        Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("run `ip` (install iproute2): {e}"));
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
}

/// Deletes namespace `name`, ignoring failures (for drops).
fn del_netns(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// A network namespace with one veth link to this one: `host_ip` here,
/// `ns_ip` inside (a /24 of 10.200–249.x). Deleted on drop (which removes
/// the link too).
pub struct Netns {
    /// The namespace's name (for `ip netns exec`).
    pub name: String,
    /// This side's address.
    pub host_ip: String,
    /// The namespace's address.
    pub ns_ip: String,
}

impl Netns {
    /// Makes a namespace with a fresh name and a /24 subnet chosen from
    /// the pid and a counter.
    ///
    /// Panics if `ip` fails (not root, no iproute2).
    pub fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:x}{n}", std::process::id() & 0xffff);
        let name = format!("p2pfs-t-{tag}");
        let (a, b) = (200 + (std::process::id() % 50) as u8, ((n + 1) * 7 % 250) as u8);
        let (host_ip, ns_ip) = (format!("10.{a}.{b}.1"), format!("10.{a}.{b}.2"));
        let (h, inner) = (format!("p2h{tag}"), format!("p2n{tag}"));
        let ns = Netns { name: name.clone(), host_ip: host_ip.clone(), ns_ip: ns_ip.clone() };
        ip(&["netns", "add", &name]);
        ip(&["link", "add", &h, "type", "veth", "peer", "name", &inner]);
        ip(&["link", "set", &inner, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &h]);
        ip(&["link", "set", &h, "up"]);
        ip(&["-n", &name, "addr", "add", &format!("{ns_ip}/24"), "dev", &inner]);
        ip(&["-n", &name, "link", "set", &inner, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// A command that runs `program` inside the namespace (`ip netns
    /// exec`, which execs it: the child's pid is the program's).
    pub fn exec(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        del_netns(&self.name);
    }
}

/// One host of a [`Lan`]: a namespace with address [`Host::ip`] on its
/// link `eth0`.
#[derive(Clone, Debug)]
pub struct Host {
    /// The namespace's name (`/run/netns/<name>`).
    pub name: String,
    /// The host's IPv4 address on the LAN (dotted quad, no prefix).
    pub ip: String,
}

impl Host {
    /// A command that runs `program` in this host's network namespace and
    /// a private mount namespace (`ip netns exec`; it execs the program,
    /// so the child's pid is the program's): for daemons.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A command that runs `program` in this host's network namespace
    /// only (`nsenter --net`, which execs it): mounts it makes (a FUSE
    /// client's) land in the caller's mount namespace, where the test
    /// sees them; `ip netns exec` would hide them in a private one.
    pub fn net_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name)).arg(program);
        c
    }

    /// Runs `f` on a fresh thread that has entered this host's network
    /// namespace (sockets it opens are the host's); returns its result.
    ///
    /// Panics if the namespace cannot be entered, or with `f`'s panic.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        let t = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns with a valid namespace descriptor changes only
            // this thread's network namespace; the thread ends after `f`.
            let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {path}: {}", std::io::Error::last_os_error());
            f()
        });
        t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// Takes the host's link down: it can reach nobody and nobody it
    /// (its processes keep running). Panics if `ip` fails.
    pub fn link_down(&self) {
        ip(&["-n", &self.name, "link", "set", "eth0", "down"]);
    }

    /// Brings the host's link up again after [`Host::link_down`]
    /// (addresses and routes come back with it). Panics if `ip` fails.
    pub fn link_up(&self) {
        ip(&["-n", &self.name, "link", "set", "eth0", "up"]);
    }
}

/// A LAN of hosts on one bridge (see the module documentation).
pub struct Lan {
    switch: String,
    hosts: Vec<Host>,
}

impl Lan {
    /// Makes `hosts` hosts (1 ..= 250) on a fresh bridge, at
    /// `10.77.N.1`, `10.77.N.2`, … (N from a per-process counter; the
    /// addresses live only in these namespaces).
    ///
    /// Panics if `ip` fails (not root, no iproute2, no bridge support);
    /// whatever was made by then is deleted.
    pub fn new(hosts: usize) -> Lan {
        assert!((1..=250).contains(&hosts), "a LAN of 1 to 250 hosts, not {hosts}");
        static SUBNET: AtomicU32 = AtomicU32::new(0);
        let subnet = SUBNET.fetch_add(1, Ordering::Relaxed) % 250 + 1;
        let tag = unique_tag();
        let mut lan = Lan { switch: format!("p2pfs-{tag}-sw"), hosts: Vec::new() };
        ip(&["netns", "add", &lan.switch]);
        let sw = lan.switch.clone();
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for i in 1..=hosts {
            let host = Host { name: format!("p2pfs-{tag}-h{i}"), ip: format!("10.77.{subnet}.{i}") };
            ip(&["netns", "add", &host.name]);
            lan.hosts.push(host.clone());
            let port = format!("h{i}");
            let n = &host.name;
            ip(&["-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &sw]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &sw, "link", "set", &port, "up"]);
            ip(&["-n", n, "addr", "add", &format!("{}/24", host.ip), "dev", "eth0"]);
            ip(&["-n", n, "link", "set", "eth0", "up"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        lan
    }

    /// Host `i` (0-based; its address ends in `i + 1`).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Every host, in order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &self.hosts {
            del_netns(&h.name);
        }
        del_netns(&self.switch);
    }
}
