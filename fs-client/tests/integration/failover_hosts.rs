//! Failover across hosts (issue 9): three "hosts" in network namespaces,
//! each running an etcd member, a dirsvc (`--meta etcd`, one leader by
//! election, lease 2 s) and a peerd (R = 3), and a client in a fourth with
//! two mounts of the volume. During an `rsync -a` of a real tree plus a
//! 256 MiB random file, and a writer fsyncing file after file, the leader
//! dirsvc gets `kill -9`; then the new leader's host loses its link for
//! 30 s and heals; then one etcd member gets `kill -9`. rsync must exit 0,
//! `diff -r` must be clean through both mounts, every acknowledged write
//! must read back, and an fcntl lock held through the first mount must
//! stay held: a waiter on the second mount is granted only once the
//! holder unlocks. Prints the gaps (leader death → first acknowledged
//! write, link down → first acknowledged write) and the duration.
//!
//! Every mount, process and namespace is removed even when it fails.

use super::tools::{assert_acked_intact, output, run, stage_system_tree, AckWriter, Background};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::cluster::{
    bin_dir, check_environment, mount_entry, tail, wait_addr_file, Proc, FAST_DIRSVC_ARGS,
};
use testkit::etcd::EtcdCluster;
use testkit::netns::{Host, Lan};
use testkit::wait_until;

const CLI: Duration = Duration::from_secs(30);

/// Server hosts (etcd, dirsvc, peerd each); the client is host `SERVERS`.
const SERVERS: usize = 3;

/// How long the new leader's host stays cut off.
const CUT_OFF: Duration = Duration::from_secs(30);

/// Size of the random file copied with the tree, bytes.
const BIG: u64 = 256 << 20;

/// rsync's bandwidth limit (KiB/s): the random file takes ~13 s; the
/// small files (tens per second on etcd) outlast the failovers (~60 s).
const RSYNC_BWLIMIT_KIB: u32 = 20_000;

/// The acknowledged writer's pause between files: a steady trickle that
/// measures each gap without starving rsync.
const WRITER_PAUSE: Duration = Duration::from_millis(100);

/// How long rsync may take after the faults.
const RSYNC_AFTER_FAULTS: Duration = Duration::from_secs(420);

/// GC's grace period here (seconds): as in production, longer than any
/// failover. Uploads wait uncommitted through a failover (~11 s for the
/// cut-off leader), and with the 3 s of [`FAST_DIRSVC_ARGS`] GC would take
/// them for orphans: the client then stores them again from its cache, or,
/// for blocks it no longer caches, fails the write with EIO (loudly; a
/// commit never names a deleted chunk: `UploadUnverified`). That is
/// checked by fs-client's library tests and dirsvc's GC tests.
const GC_GRACE_SECS: &str = "300";

/// [`FAST_DIRSVC_ARGS`] with GC's grace period set to [`GC_GRACE_SECS`].
fn dirsvc_args() -> Vec<&'static str> {
    let mut args = FAST_DIRSVC_ARGS.to_vec();
    let at = args.iter().position(|a| *a == "--gc-grace-secs").expect("FAST_DIRSVC_ARGS sets the grace");
    args[at + 1] = GC_GRACE_SECS;
    args
}

/// The fcntl lock holder: locks, says so, unlocks once `release` exists.
const HOLDER: &str = r#"
import fcntl, os, sys, time
f = open(sys.argv[1], "r+")
fcntl.lockf(f, fcntl.LOCK_EX)
print("locked", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
print("unlocking", flush=True)
fcntl.lockf(f, fcntl.LOCK_UN)
print("unlocked", flush=True)
"#;

/// The waiter: blocks in F_SETLKW until granted, then says so.
const WAITER: &str = r#"
import fcntl, sys
f = open(sys.argv[1], "r+")
print("waiting", flush=True)
fcntl.lockf(f, fcntl.LOCK_EX)
print("granted", flush=True)
fcntl.lockf(f, fcntl.LOCK_UN)
"#;

/// An fs-client mount; on drop a lazy unmount, then SIGKILL of the client
/// (the clean path is [`Mount::unmount`]).
struct Mount {
    proc: Option<Proc>,
    at: PathBuf,
}

impl Mount {
    /// `fs-client mount` run in `host`'s network namespace only, so the
    /// mount is visible here; waits until it is a p2pfs mount.
    fn start(host: &Host, root: &Path, dirsvc: &str, name: &str) -> Mount {
        let at = root.join(name);
        fs::create_dir_all(&at).expect("mkdir mountpoint");
        let mut c = host.net_command(bin_dir().join("fs-client"));
        c.arg("--tls-dir")
            .arg(root.join("client-tls"))
            .args(["mount", "--dirsvc", dirsvc, "-i"])
            .arg(root.join("identity.txt"))
            .arg("--pin-dir")
            .arg(root.join("pins"))
            .arg(&at);
        let proc = Proc::spawn(name, c, &root.join(format!("{name}.log")));
        let m = Mount { proc: Some(proc), at };
        assert!(
            wait_until(|| mount_entry(&m.at).is_some_and(|e| e.is_p2pfs()), CLI).is_some(),
            "the mount {name} did not appear\n{}",
            tail(&root.join(format!("{name}.log")), 30)
        );
        m
    }

    /// `umount`, then checks that the client exits 0 within 60 s.
    fn unmount(mut self) {
        let mut p = self.proc.take().expect("mounted");
        let out = output(Command::new("umount").arg(&self.at), CLI);
        assert!(
            out.status.success(),
            "umount {}: {}",
            self.at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let st = p.exited_within(Duration::from_secs(60));
        assert!(st.is_some_and(|s| s.success()), "fs-client exited with {st:?}\n{}", tail(p.log(), 30));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        for _ in 0..4 {
            if mount_entry(&self.at).is_none() {
                break;
            }
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
        self.proc.take();
    }
}

/// The 0-based server host whose dirsvc log (from byte `since[i]` on)
/// says it was elected, among `alive` hosts.
fn elected(root: &Path, since: &[u64], alive: &[bool]) -> Option<usize> {
    (0..SERVERS).find(|&i| {
        alive[i] && {
            let log = fs::read(dirsvc_log(root, i)).unwrap_or_default();
            let new = &log[(since[i] as usize).min(log.len())..];
            String::from_utf8_lossy(new).contains("elected leader")
        }
    })
}

fn dirsvc_log(root: &Path, i: usize) -> PathBuf {
    root.join(format!("dirsvc-{i}.log"))
}

/// Current lengths of the dirsvc logs.
fn log_marks(root: &Path) -> Vec<u64> {
    (0..SERVERS).map(|i| fs::metadata(dirsvc_log(root, i)).map_or(0, |m| m.len())).collect()
}

/// Waits for a newly elected leader among `alive` (logs since `since`).
fn wait_leader(root: &Path, since: &[u64], alive: &[bool], within: Duration) -> usize {
    let mut found = None;
    if wait_until(
        || {
            found = elected(root, since, alive);
            found.is_some()
        },
        within,
    )
    .is_none()
    {
        let logs: String = (0..SERVERS).map(|i| tail(&dirsvc_log(root, i), 20)).collect();
        panic!("no dirsvc was elected within {within:?}\n{logs}");
    }
    found.unwrap_or_default()
}

/// Seconds from `t0` until the writer acknowledges a file it began after
/// `t0` (two more than it had then).
fn first_write_after(w: &AckWriter, t0: Instant, within: Duration) -> Duration {
    let n = w.acked_count();
    assert!(w.wait_acked(n + 2, within), "no write was acknowledged within {within:?} of the fault");
    t0.elapsed()
}

#[test]
fn three_hosts_ride_out_a_killed_leader_a_cut_off_leader_and_a_dead_etcd_member_during_rsync() {
    check_environment();
    // Takes no cluster slot: it spends most of its 3-4 minutes waiting out
    // faults and etcd round trips, not on the CPU, so it runs beside
    // whatever the other test thread runs, exclusive clusters included
    // (holding a slot made every exclusive test behind it wait minutes).
    let started = Instant::now();
    bin_dir();
    // P2PFS_E2E_KEEP=1 keeps the tempdir (logs, data) for a post-mortem.
    let keep = std::env::var_os("P2PFS_E2E_KEEP").is_some_and(|v| v == "1");
    let dir = tempfile::Builder::new()
        .prefix("p2pfs-failover-hosts-")
        .disable_cleanup(keep)
        .tempdir()
        .expect("tempdir");
    let root = fs::canonicalize(dir.path()).expect("canonical");
    let _logs = LogsOnPanic(root.clone());
    // Declared first, dropped last: after every process inside is gone.
    let lan = Lan::new(SERVERS + 1);
    let client = lan.host(SERVERS).clone();
    let fs_client = |tls: &str| {
        let mut c = Command::new(bin_dir().join("fs-client"));
        testkit::cluster::hermetic(&mut c);
        c.arg("--tls-dir").arg(root.join(tls));
        c
    };
    run(fs_client("admin-tls").args(["ca", "init", "--dir"]).arg(root.join("ca")), CLI);
    let issue = |role: &str, out: PathBuf| {
        run(
            fs_client("admin-tls")
                .args(["ca", "issue", "--ca-dir"])
                .arg(root.join("ca"))
                .args(["--role", role, "--out"])
                .arg(out),
            CLI,
        );
    };
    for i in 0..SERVERS {
        issue("dirsvc", root.join(format!("dirsvc-{i}")));
        issue("peer", root.join(format!("peer-{i}/tls")));
    }
    issue("client", root.join("client-tls"));
    issue("admin", root.join("admin-tls"));

    let mut etcd = EtcdCluster::start_on(&lan.hosts()[..SERVERS], None);
    let endpoints = etcd.endpoints().join(",");
    let dirsvc_list = (0..SERVERS).map(|i| format!("{}:7700", lan.host(i).ip)).collect::<Vec<_>>().join(",");
    let mut dirsvc: Vec<Option<Proc>> = Vec::new();
    for i in 0..SERVERS {
        let h = lan.host(i);
        let addr_file = root.join(format!("dirsvc-{i}.addr"));
        let mut c = h.command(bin_dir().join("dirsvc"));
        c.args([
            "--meta",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--etcd-prefix",
            "/vol/",
            "--etcd-plaintext",
        ])
        .args(["--listen", &format!("{}:7700", h.ip), "--leader-lease-secs", "2", "--tls-dir"])
        .arg(root.join(format!("dirsvc-{i}")))
        .arg("--ca-dir")
        .arg(root.join("ca"))
        .arg("--addr-file")
        .arg(&addr_file)
        .args(dirsvc_args());
        let mut p = Proc::spawn(&format!("dirsvc-{i}"), c, &dirsvc_log(&root, i));
        wait_addr_file(&mut p, &addr_file);
        dirsvc.push(Some(p));
    }
    let mut alive = [true; SERVERS];
    let first = wait_leader(&root, &[0; SERVERS], &alive, Duration::from_secs(20));
    let mut peers = Vec::new();
    for i in 0..SERVERS {
        let h = lan.host(i);
        let addr_file = root.join(format!("peer-{i}.addr"));
        let mut c = h.command(bin_dir().join("peerd"));
        c.args(["--listen", &format!("{}:7800", h.ip), "--dirsvc", &dirsvc_list, "--data-dir"])
            .arg(root.join(format!("peer-{i}")))
            .arg("--addr-file")
            .arg(&addr_file)
            .args(["--heartbeat-interval-ms", "300"]);
        let mut p = Proc::spawn(&format!("peerd-{i}"), c, &root.join(format!("peerd-{i}.log")));
        wait_addr_file(&mut p, &addr_file);
        peers.push(p);
    }
    let admin = |args: &[&str]| {
        let mut c = client.net_command(bin_dir().join("fs-client"));
        testkit::cluster::hermetic(&mut c);
        c.arg("--tls-dir").arg(root.join("admin-tls")).args(args);
        c
    };
    assert!(
        wait_until(
            || {
                let out = output(&mut admin(&["peers", "--dirsvc", &dirsvc_list]), CLI);
                String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" up ")).count() == SERVERS
            },
            Duration::from_secs(30)
        )
        .is_some(),
        "the peers did not come up\n{}",
        tail(&dirsvc_log(&root, first), 30)
    );
    let identity = root.join("identity.txt");
    run(fs_client("admin-tls").arg("keygen").arg("-o").arg(&identity), CLI);
    let pins = root.join("pins");
    run(
        admin(&["init", "--dirsvc", &dirsvc_list, "--replicas", "3", "-i"])
            .arg(&identity)
            .arg("--pin-dir")
            .arg(&pins),
        CLI,
    );

    // The source: a real tree and a random file.
    let src = root.join("src");
    let files = stage_system_tree(&src, 2_000);
    run(
        Command::new("dd")
            .arg("if=/dev/urandom")
            .arg(format!("of={}", src.join("big.bin").display()))
            .args(["bs=1M", &format!("count={}", BIG >> 20), "status=none"]),
        CLI,
    );
    let m1 = Mount::start(&client, &root, &dirsvc_list, "mnt");
    let m2 = Mount::start(&client, &root, &dirsvc_list, "mnt2");
    let work = root.join("work");
    fs::create_dir_all(&work).expect("mkdir work");

    // The lock: held through the first mount, awaited through the second.
    let lock_file = m1.at.join("lockfile");
    fs::write(&lock_file, b"lock").expect("create the lock file");
    let release = work.join("release");
    let py = |name: &str, script: &str, file: &Path| {
        let mut c = Command::new("python3");
        c.arg("-c").arg(script).arg(file).arg(&release);
        Proc::spawn(name, c, &work.join(format!("{name}.log")))
    };
    let read = |name: &str| fs::read_to_string(work.join(format!("{name}.log"))).unwrap_or_default();
    let mut holder = py("holder", HOLDER, &lock_file);
    assert!(
        wait_until(|| read("holder").contains("locked"), CLI).is_some(),
        "the holder did not get the lock: {}",
        read("holder")
    );
    let waited = m2.at.join("lockfile");
    assert!(wait_until(|| waited.exists(), CLI).is_some(), "the second mount does not see the lock file");
    let mut waiter = py("waiter", WAITER, &waited);
    assert!(wait_until(|| read("waiter").contains("waiting"), CLI).is_some(), "{}", read("waiter"));

    // rsync and an fsyncing writer, then the faults.
    let dst = m1.at.join("tree");
    let rsync = Background::spawn(
        Command::new("rsync")
            .arg("-a")
            .arg(format!("--bwlimit={RSYNC_BWLIMIT_KIB}"))
            // One line per file with the time: where the copy was when.
            .arg("--out-format=%t %n")
            .arg(format!("{}/", src.display()))
            .arg(&dst),
        &work.join("rsync.log"),
    );
    let writer = AckWriter::start_paced(&m1.at.join("acked"), &work, 9, WRITER_PAUSE);
    assert!(writer.wait_acked(3, CLI), "the writer got no write through before the faults");
    std::thread::sleep(Duration::from_secs(3));

    // 1. kill -9 of the leader dirsvc.
    let marks = log_marks(&root);
    let t = Instant::now();
    dirsvc[first].take();
    alive[first] = false;
    let second = wait_leader(&root, &marks, &alive, Duration::from_secs(30));
    let death_gap = first_write_after(&writer, t, Duration::from_secs(60));
    eprintln!("leader dirsvc-{first} killed; dirsvc-{second} elected; first write {death_gap:.1?} after");

    // 2. The new leader's host loses its link for 30 s.
    let marks = log_marks(&root);
    let t = Instant::now();
    lan.host(second).link_down();
    let mut reachable = alive;
    reachable[second] = false;
    let third = wait_leader(&root, &marks, &reachable, Duration::from_secs(30));
    let cut_gap = first_write_after(&writer, t, Duration::from_secs(60));
    eprintln!("dirsvc-{second}'s host cut off; dirsvc-{third} elected; first write {cut_gap:.1?} after");
    std::thread::sleep(CUT_OFF.saturating_sub(t.elapsed()));
    lan.host(second).link_up();
    assert!(
        wait_until(|| etcd.is_healthy(second), Duration::from_secs(30)).is_some(),
        "etcd on the healed host did not rejoin"
    );

    // 3. kill -9 of the etcd member on the leader's host (2 of 3 remain).
    let acked = writer.acked_count();
    etcd.kill(third);
    let t = Instant::now();
    assert!(writer.wait_acked(acked + 3, Duration::from_secs(60)), "no writes after an etcd member died");
    eprintln!("etcd on host {third} killed; writes go on ({:.1?} for 3 more)", t.elapsed());
    assert!(
        rsync_running_or_ok(&root),
        "rsync failed during the faults\n{}",
        tail(&work.join("rsync.log"), 30)
    );

    rsync.expect_success(RSYNC_AFTER_FAULTS);
    let (acked, failed) = writer.stop(Duration::from_secs(60));
    let copy_done = started.elapsed();

    // The lock stayed held through every failover.
    assert!(holder.exited_within(Duration::ZERO).is_none(), "the holder died: {}", read("holder"));
    assert!(!read("waiter").contains("granted"), "the waiter got the lock while it was held");
    fs::write(&release, b"").expect("release");
    assert!(
        wait_until(|| read("waiter").contains("granted"), Duration::from_secs(60)).is_some(),
        "the waiter was not granted after the unlock\nholder: {}\nwaiter: {}",
        read("holder"),
        read("waiter")
    );
    let st = holder.exited_within(CLI);
    assert!(st.is_some_and(|s| s.success()), "the holder's unlock failed ({st:?}): {}", read("holder"));
    let st = waiter.exited_within(CLI);
    assert!(st.is_some_and(|s| s.success()), "the waiter failed ({st:?}): {}", read("waiter"));
    let holder_log = read("holder");
    let waiter_log = read("waiter");
    assert!(
        holder_log.find("unlocking").is_some() && waiter_log.contains("granted"),
        "order: {holder_log} / {waiter_log}"
    );

    // Nothing lost: through this mount and the other client's.
    for m in [&m1, &m2] {
        let out =
            output(Command::new("diff").arg("-r").arg(&src).arg(m.at.join("tree")), Duration::from_secs(300));
        assert!(
            out.status.success(),
            "diff -r through {}: {}",
            m.at.display(),
            String::from_utf8_lossy(&out.stdout).lines().take(20).collect::<Vec<_>>().join("\n")
        );
    }
    assert_acked_intact(&m2.at.join("acked"), &acked);
    assert_eq!(failed, 0, "writes failed during the failovers (see writer.errors)");
    m2.unmount();
    m1.unmount();
    eprintln!(
        "{files} files + 256 MiB: rsync and faults {copy_done:.1?}; {} acknowledged writes; gaps: leader death \
         → first write {death_gap:.1?}, link down → first write {cut_gap:.1?}; test {:.1?}",
        acked.len(),
        started.elapsed()
    );
    drop(peers);
    drop(dirsvc);
    drop(etcd);
    drop(lan);
}

/// Prints the tail of every log under the directory (and its `work/`) if
/// the test panics.
struct LogsOnPanic(PathBuf);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for d in [self.0.clone(), self.0.join("work")] {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            let mut logs: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            logs.retain(|p| p.extension().is_some_and(|x| x == "log" || x == "errors"));
            logs.sort();
            for p in logs {
                eprintln!("---- last lines of {} ----\n{}", p.display(), tail(&p, 25));
            }
        }
    }
}

/// Whether rsync still runs or has not reported an error yet (its log has
/// no `rsync error`).
fn rsync_running_or_ok(root: &Path) -> bool {
    !fs::read_to_string(root.join("work/rsync.log")).unwrap_or_default().contains("rsync error")
}
