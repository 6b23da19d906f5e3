//! `fs-client doctor`: checks that this machine can use the volume and that
//! the cluster is healthy, each check one [`Finding`] with what is wrong
//! and how to fix it.
//!
//! Checks, in order: FUSE (`/dev/fuse`, and `fusermount3` unless root);
//! the identity file (exists, not readable by group or others, holds an
//! identity); each TLS directory (key file not readable by group or
//! others; certificate valid now, with days left; a warning when less than
//! a third of its validity is left); dirsvc reachable; the clock against
//! dirsvc's (more than [`MAX_SKEW`] apart fails); every peer dirsvc lists
//! (dirsvc's list is the truth): dirsvc's view of it and whether it answers
//! a cheap call (`has([])`) over this client's TLS identity; and a write →
//! read → verify round trip of a scratch file with random bytes, through
//! the same core as the mount ([`crate::files`]), removed afterwards.

use crate::files::{Volume, VolumeConfig};
use crate::remote::DirClient;
use common::net::{Pool, RetryPolicy};
use common::rpc::dir::PeerState;
use common::rpc::peer::PeerServiceClient;
use common::rpc::Role;
use common::tls::{Expect, Tls};
use common::NodeId;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The largest clock difference with dirsvc that passes (5 s): leases,
/// heartbeat ages and certificate validity are judged by clocks.
pub const MAX_SKEW: Duration = Duration::from_secs(5);

/// How long one peer has to answer (5 s).
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of the scratch file (1.5 MiB: more than one block of the default
/// size, with a partial last block).
const SCRATCH_BYTES: usize = (3 << 20) / 2;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Passed.
    Ok,
    /// Passed, but needs attention soon (a certificate near expiry).
    Warn,
    /// Failed: `doctor` exits non-zero.
    Fail,
}

/// One check's result.
#[derive(Clone, Debug)]
pub struct Finding {
    /// What was checked (`identity file /root/.p2pfs/identity.txt`).
    pub check: String,
    /// The outcome.
    pub outcome: Outcome,
    /// What was found (empty when there is nothing to add).
    pub detail: String,
    /// How to fix it (empty for a pass).
    pub fix: String,
}

impl Finding {
    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Finding { check: check.into(), outcome: Outcome::Ok, detail: detail.into(), fix: String::new() }
    }

    fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding { check: check.into(), outcome: Outcome::Fail, detail: detail.into(), fix: fix.into() }
    }

    fn warn(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding { check: check.into(), outcome: Outcome::Warn, detail: detail.into(), fix: fix.into() }
    }

    /// The line `doctor` prints: `ok   CHECK (detail)`, `warn CHECK: detail
    /// — fix: …` or `FAIL CHECK: detail — fix: …`.
    pub fn line(&self) -> String {
        match self.outcome {
            Outcome::Ok if self.detail.is_empty() => format!("ok   {}", self.check),
            Outcome::Ok => format!("ok   {} ({})", self.check, self.detail),
            Outcome::Warn => format!("warn {}: {} — fix: {}", self.check, self.detail, self.fix),
            Outcome::Fail => format!("FAIL {}: {} — fix: {}", self.check, self.detail, self.fix),
        }
    }

    /// The finding as a JSON object {check, status, detail, fix}.
    pub fn json(&self) -> serde_json::Value {
        let status = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Warn => "warn",
            Outcome::Fail => "fail",
        };
        serde_json::json!({ "check": self.check, "status": status, "detail": self.detail, "fix": self.fix })
    }
}

/// What `doctor` checks with.
#[derive(Clone, Debug)]
pub struct DoctorConfig {
    /// dirsvc `host:port`.
    pub dirsvc: String,
    /// The member's age identity file.
    pub identity: PathBuf,
    /// The TLS directory the mount and the file commands use.
    pub client_tls_dir: PathBuf,
    /// Other TLS directories to check (the admin commands'), if they hold
    /// a certificate.
    pub other_tls_dirs: Vec<PathBuf>,
    /// Where volumes are pinned ([`crate::pins`]).
    pub pin_dir: PathBuf,
}

/// Runs every check; calls `report` with each finding as soon as it is
/// known and returns them all.
pub async fn run(config: &DoctorConfig, report: &dyn Fn(&Finding)) -> Vec<Finding> {
    let mut all = Vec::new();
    let mut add = |f: Finding| {
        report(&f);
        all.push(f);
    };
    add(fuse());
    add(identity(&config.identity));
    let mut client_tls = None;
    for (i, dir) in std::iter::once(&config.client_tls_dir).chain(&config.other_tls_dirs).enumerate() {
        if i > 0 && !common::pki::NodeFiles::exist(dir) {
            continue;
        }
        let (findings, tls) = tls_dir(dir);
        for f in findings {
            add(f);
        }
        if i == 0 {
            client_tls = tls;
        }
    }
    let Some(tls) = client_tls else {
        add(Finding::fail(
            "dirsvc and peers",
            "not checked: no usable TLS identity",
            "fix the TLS directory above first",
        ));
        return all;
    };
    let dir = match DirClient::connect(&config.dirsvc, tls.clone()).await {
        Ok(d) => {
            add(Finding::ok(format!("dirsvc {} reachable", config.dirsvc), ""));
            d
        }
        Err(e) => {
            add(Finding::fail(
                format!("dirsvc {}", config.dirsvc),
                format!("unreachable: {e}"),
                "start dirsvc (scripts/up.sh starts everything) or pass its address with --dirsvc / P2PFS_DIRSVC",
            ));
            return all;
        }
    };
    add(clock(&dir).await);
    for f in peers(&dir, &tls).await {
        add(f);
    }
    add(round_trip(config, tls).await);
    all
}

/// `/dev/fuse` is a character device; `fusermount3` is on PATH unless root.
fn fuse() -> Finding {
    const CHECK: &str = "FUSE";
    match std::fs::metadata("/dev/fuse") {
        Ok(m) if m.file_type().is_char_device() => {}
        Ok(_) => {
            return Finding::fail(
                CHECK,
                "/dev/fuse is not a character device",
                "run `modprobe fuse` (as root)",
            )
        }
        Err(e) => {
            return Finding::fail(
                CHECK,
                format!("/dev/fuse: {e}"),
                "run `modprobe fuse` as root; in a container, pass --device /dev/fuse",
            )
        }
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Finding::ok(CHECK, "/dev/fuse present; root mounts directly");
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()))
        .unwrap_or(false);
    if on_path {
        Finding::ok(CHECK, "/dev/fuse and fusermount3 present")
    } else {
        Finding::fail(
            CHECK,
            "fusermount3 not found (needed to mount without root)",
            "install it (`apt-get install fuse3`) or mount as root",
        )
    }
}

/// A secret file must not be readable by group or others.
fn private_file(path: &Path, what: &str) -> Result<(), Finding> {
    let check = format!("{what} {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| {
        Finding::fail(
            &check,
            format!("cannot read it: {e}"),
            "restore it from your backup, or point the command at the right file",
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Finding::fail(
            &check,
            format!("readable by other users (mode {mode:o})"),
            format!("chmod 600 {}", path.display()),
        ));
    }
    Ok(())
}

fn identity(path: &Path) -> Finding {
    let check = format!("identity file {}", path.display());
    if let Err(f) = private_file(path, "identity file") {
        return f;
    }
    match crate::identity::load(path) {
        Ok(id) => Finding::ok(check, format!("mode 600, {} key(s)", id.public_keys.len())),
        Err(e) => Finding::fail(check, e.to_string(), "restore the identity file from your backup"),
    }
}

/// The key file's mode and the certificate's validity in `dir`; the TLS
/// identity if it loads.
fn tls_dir(dir: &Path) -> (Vec<Finding>, Option<Arc<Tls>>) {
    let mut out = Vec::new();
    let key = dir.join(common::pki::NODE_KEY_FILE);
    match private_file(&key, "TLS key") {
        Ok(()) => out.push(Finding::ok(format!("TLS key {}", key.display()), "mode 600")),
        Err(f) => out.push(f),
    }
    let check = format!("certificate {}", dir.join(common::pki::NODE_CERT_FILE).display());
    let tls = match Tls::load(dir) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            out.push(Finding::fail(
                check,
                format!("cannot use it: {e}"),
                "get a certificate: `fs-client join` with a join token, or `fs-client ca issue`",
            ));
            return (out, None);
        }
    };
    out.push(validity(&check, tls.me().not_before, tls.me().not_after, SystemTime::now()));
    (out, Some(tls))
}

/// Whether a certificate valid from `not_before` to `not_after` is fine at
/// `now`: valid, and more than a third of its validity left.
pub fn validity(check: &str, not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> Finding {
    const DAY: u64 = 86_400;
    let renew = "renew it: a mount renews its certificate by itself once less than a third is left; \
                 else issue a new one (`fs-client ca issue`, or `fs-client join` with a new token)";
    if now < not_before {
        return Finding::fail(
            check,
            "not valid yet (this machine's clock is behind?)",
            "set the clock right (NTP)",
        );
    }
    let Ok(left) = not_after.duration_since(now) else {
        return Finding::fail(check, "expired", renew);
    };
    let whole = not_after.duration_since(not_before).unwrap_or(Duration::ZERO);
    let days = left.as_secs() / DAY;
    if left < whole / 3 {
        return Finding::warn(
            check,
            format!("expires in {days} day(s), less than a third of its {} days", whole.as_secs() / DAY),
            renew,
        );
    }
    Finding::ok(check, format!("valid, {days} day(s) left"))
}

/// Compares this machine's clock with dirsvc's.
async fn clock(dir: &DirClient) -> Finding {
    const CHECK: &str = "clock";
    let sent = SystemTime::now();
    let started = Instant::now();
    let r = dir.call(|c, ctx| async move { c.server_time(ctx).await }).await;
    let rtt = started.elapsed();
    let theirs = match r.map(|t| t.to_system_time()) {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return Finding::fail(CHECK, format!("dirsvc sent a bad time: {e}"), "set dirsvc's clock right")
        }
        Err(e) => {
            return Finding::fail(
                CHECK,
                format!("dirsvc did not tell its time: {e}"),
                "upgrade dirsvc to this version",
            )
        }
    };
    // Our clock at the moment dirsvc answered, about halfway.
    let ours = sent + rtt / 2;
    let (skew, sign) = match theirs.duration_since(ours) {
        Ok(d) => (d, "ahead of"),
        Err(e) => (e.duration(), "behind"),
    };
    let text = format!("dirsvc's clock is {:.1} s {sign} this machine's", skew.as_secs_f64());
    if skew > MAX_SKEW {
        Finding::fail(
            CHECK,
            format!("{text} (more than {} s)", MAX_SKEW.as_secs()),
            "synchronize both clocks (NTP: `timedatectl set-ntp true`, chrony)",
        )
    } else {
        Finding::ok(CHECK, text)
    }
}

/// dirsvc's state of every peer, and whether each answers this client.
async fn peers(dir: &DirClient, tls: &Arc<Tls>) -> Vec<Finding> {
    let list = match dir.call(|c, ctx| async move { c.list_peers(ctx).await }).await {
        Ok(l) => l,
        Err(e) => {
            return vec![Finding::fail(
                "peers",
                format!("dirsvc did not list them: {e}"),
                "use a client or admin certificate of the cluster",
            )]
        }
    };
    if list.is_empty() {
        return vec![Finding::fail(
            "peers",
            "dirsvc knows no peer",
            "start peerd (scripts/up.sh starts three)",
        )];
    }
    let pool: Pool<PeerServiceClient> = Pool::new(tls.clone());
    let pool = &pool;
    let checks = list.iter().map(|p| async move {
        let expect = Expect::Node(Role::Peer, NodeId::from(p.loc.id));
        let call = pool.call(&p.loc.addr, expect, PEER_TIMEOUT, &RetryPolicy::ONCE, |c, ctx| async move {
            c.has(ctx, Vec::new()).await
        });
        match tokio::time::timeout(PEER_TIMEOUT, call).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(e.detail),
            Err(_) => Err(format!("no answer within {} s", PEER_TIMEOUT.as_secs())),
        }
    });
    let answers = futures::future::join_all(checks).await;
    let mut out = Vec::new();
    for (p, answer) in list.iter().zip(answers) {
        let id = p.loc.id.to_hex();
        let check = format!("peer {id} at {}", p.loc.addr);
        let state = match p.state {
            PeerState::Up => "up",
            PeerState::Suspect => "suspect",
            PeerState::Down => "down",
            PeerState::Draining => "draining",
            PeerState::Drained => "drained",
        };
        out.push(match (answer, p.state) {
            (Ok(()), PeerState::Up | PeerState::Draining | PeerState::Drained) => {
                Finding::ok(check, format!("{state}, answers"))
            }
            (Ok(()), _) => Finding::fail(
                check,
                format!("answers this client, but dirsvc sees it {state} (its heartbeats do not arrive)"),
                format!("check that peerd {id} can reach dirsvc (its log, its --dirsvc address, firewall)"),
            ),
            (Err(_), PeerState::Drained) => Finding::ok(check, "drained and stopped: it may be removed"),
            (Err(e), _) => Finding::fail(
                check,
                format!("{state} at dirsvc, does not answer: {e}"),
                format!(
                    "start peerd {id} again (listening on {}); if it is gone for good, repair has copied or \
                     will copy its chunks from the other replicas (`fs-client status`)",
                    p.loc.addr
                ),
            ),
        });
    }
    out
}

/// Writes a scratch file of random bytes, reads it back, compares and
/// removes it.
async fn round_trip(config: &DoctorConfig, tls: Arc<Tls>) -> Finding {
    const CHECK: &str = "write → read → verify";
    let fix = "see the failures above; the logs of dirsvc and the peers say more";
    let vc = VolumeConfig {
        dirsvc: config.dirsvc.clone(),
        identity: config.identity.clone(),
        pin_dir: config.pin_dir.clone(),
        tls,
        label: format!("fs-client doctor pid={}", std::process::id()),
    };
    let vol = match Volume::open(vc).await {
        Ok(v) => v,
        Err(e) => return Finding::fail(CHECK, format!("cannot open the volume: {e}"), fix),
    };
    let started = Instant::now();
    let r = scratch(&vol).await;
    vol.close().await;
    match r {
        Ok(()) => Finding::ok(
            CHECK,
            format!("{} KiB scratch file in {} ms", SCRATCH_BYTES >> 10, started.elapsed().as_millis()),
        ),
        Err(e) => Finding::fail(CHECK, e, fix),
    }
}

async fn scratch(vol: &Volume) -> Result<(), String> {
    use common::InodeId;
    let fs = vol.fs();
    let mut data = vec![0u8; SCRATCH_BYTES];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
    let name = format!(".p2pfs-doctor-{}", hex::encode(rand::random::<[u8; 8]>()));
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let (attr, fh) = fs
        .create(InodeId::ROOT, name.as_bytes(), 0o600, uid, gid)
        .await
        .map_err(|e| format!("create /{name}: {e}"))?;
    let written = async {
        fs.write(fh, 0, &data, false).await.map_err(|e| format!("write: {e}"))?;
        Ok::<_, String>(())
    }
    .await;
    let closed = fs.release(fh).await.map_err(|e| format!("store (close): {e}"));
    let checked = match written.and(closed) {
        Ok(()) => {
            let mut back = Vec::with_capacity(SCRATCH_BYTES);
            match vol.stream(attr.ino, &format!("/{name}"), &mut back, &|_| {}).await {
                Ok(_) if back == data => Ok(()),
                Ok(_) => {
                    Err(format!("read back {} bytes that differ from the {} written", back.len(), data.len()))
                }
                Err(e) => Err(format!("read back: {e}")),
            }
        }
        Err(e) => Err(e),
    };
    let removed = fs.unlink(InodeId::ROOT, name.as_bytes()).await.map_err(|e| format!("remove /{name}: {e}"));
    checked.and(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_warn_with_a_third_left_and_fail_when_expired() {
        let day = Duration::from_secs(86_400);
        let t0 = SystemTime::UNIX_EPOCH + 1000 * day;
        let end = t0 + 90 * day;
        let f = validity("c", t0, end, t0 + 10 * day);
        assert_eq!(f.outcome, Outcome::Ok);
        assert!(f.detail.contains("80 day"), "{}", f.detail);
        let f = validity("c", t0, end, t0 + 70 * day);
        assert_eq!(f.outcome, Outcome::Warn);
        assert!(f.line().contains("expires in 20 day"), "{}", f.line());
        assert_eq!(validity("c", t0, end, end + day).outcome, Outcome::Fail);
        assert_eq!(validity("c", t0, end, t0 - day).outcome, Outcome::Fail);
    }
}
