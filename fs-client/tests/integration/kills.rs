//! Crash safety: `kill -9` of dirsvc, of a peer and of fs-client at a
//! random moment of a write workload (create, write, fsync, close, one file
//! after another). Every file whose calls all returned success must read
//! back intact from a fresh mount; the mount must keep working across a
//! dirsvc restart, and a killed client must be mountable again at once.

use super::tools::{assert_acked_intact, AckWriter, AckedFile, Rng};
use std::thread;
use std::time::{Duration, Instant};
use testkit::cluster::{ClusterOpts, TestCluster};

/// Kill-and-restart rounds per test.
const ROUNDS: usize = 2;

/// Files the writer must acknowledge between events (proof of progress).
const PROGRESS: usize = 3;

/// Bound on the writer acknowledging [`PROGRESS`] more files.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on the writer finishing its current file once stopped.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits for `n` more acknowledged files, or panics with `when`.
fn expect_progress(w: &AckWriter, n: usize, when: &str) {
    let want = w.acked_count() + n;
    assert!(
        w.wait_acked(want, PROGRESS_TIMEOUT),
        "{when}: the writer got no {n} more files acknowledged within {PROGRESS_TIMEOUT:?} \
         ({} acknowledged, {} failed so far)",
        w.acked_count(),
        w.failures()
    );
}

/// Remounts cold and checks every acknowledged file, then stops the cluster.
fn verify(mut c: TestCluster, (acked, failed): (Vec<AckedFile>, usize), what: &str, started: Instant) {
    c.unmount();
    c.mount();
    assert_acked_intact(&c.mountpoint().join("w"), &acked);
    eprintln!(
        "{what}: {} acknowledged files intact after remount ({failed} writes failed, as allowed), {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    c.stop_all();
}

#[test]
fn kill_9_of_dirsvc_during_writes_loses_no_acknowledged_file_and_the_mount_carries_on() {
    let mut c = TestCluster::start_with(ClusterOpts::fast(3, 2));
    let mut rng = Rng::for_test("kill dirsvc");
    let started = Instant::now();
    c.mount();
    let w = AckWriter::start(&c.mountpoint().join("w"), &c.work_dir(), 10_000);
    for round in 0..ROUNDS {
        expect_progress(&w, PROGRESS, &format!("round {round}, before the kill"));
        thread::sleep(rng.between(Duration::ZERO, Duration::from_millis(700)));
        c.kill9_dirsvc();
        thread::sleep(rng.between(Duration::from_millis(200), Duration::from_millis(1500)));
        c.restart_dirsvc();
        // The mount survives a dirsvc restart with only a pause.
        let t = Instant::now();
        expect_progress(&w, PROGRESS, &format!("round {round}, after dirsvc's restart"));
        eprintln!(
            "kill dirsvc: round {round}: writes resumed {:.1} s after the restart",
            t.elapsed().as_secs_f64()
        );
    }
    let (acked, failed) = w.stop(STOP_TIMEOUT);
    // A pause, not an error: calls wait for dirsvc and blocks for the
    // peers' first heartbeats to the new dirsvc.
    assert_eq!(failed, 0, "writes failed across dirsvc restarts");
    verify(c, (acked, failed), "kill dirsvc", started);
}

#[test]
fn kill_9_of_a_peer_during_writes_loses_no_acknowledged_file() {
    // R = 3 on 4 peers: with one dead, writes reach the other three (and
    // are acknowledged at the minimum of 2 before the death is noticed).
    let mut c = TestCluster::start_with(ClusterOpts::fast(4, 3).mount_args(&["--min-replicas", "2"]));
    let mut rng = Rng::for_test("kill peer");
    let started = Instant::now();
    c.mount();
    let w = AckWriter::start(&c.mountpoint().join("w"), &c.work_dir(), 20_000);
    for round in 0..ROUNDS {
        expect_progress(&w, PROGRESS, &format!("round {round}, before the kill"));
        thread::sleep(rng.between(Duration::ZERO, Duration::from_millis(700)));
        let victim = rng.below(4) as usize;
        c.kill9_peer(victim);
        // Writes go on while the peer is dead, through suspect and down.
        expect_progress(&w, PROGRESS, &format!("round {round}, with peer {victim} dead"));
        c.wait_status(&format!("round {round}: peer {victim} shown down"), Duration::from_secs(30), |st| {
            st.get("peers_down") == 1
        });
        expect_progress(&w, 1, &format!("round {round}, with peer {victim} down"));
        c.restart_peer(victim);
    }
    let written = w.stop(STOP_TIMEOUT);
    c.wait_status("every chunk back at R after the peer kills", Duration::from_secs(120), |st| {
        st.fully_replicated() && st.get("repairs_in_flight") == 0
    });
    verify(c, written, "kill peer", started);
}

#[test]
fn kill_9_of_fs_client_during_writes_loses_no_acknowledged_file_and_remounts_at_once() {
    let mut c = TestCluster::start_with(ClusterOpts::fast(3, 2));
    let mut rng = Rng::for_test("kill fs-client");
    let started = Instant::now();
    c.mount();
    let w = AckWriter::start(&c.mountpoint().join("w"), &c.work_dir(), 30_000);
    for round in 0..ROUNDS {
        expect_progress(&w, PROGRESS, &format!("round {round}, before the kill"));
        thread::sleep(rng.between(Duration::ZERO, Duration::from_millis(700)));
        // As a shell's `ls` would: the kernel now holds the root's attributes
        // (1 s TTL), so a stale-mount check by `stat` sees a live mount.
        let _ = std::fs::metadata(c.mountpoint());
        c.kill9_client();
        // At once: the new client must clean up the dead mount itself.
        let t = Instant::now();
        c.mount();
        eprintln!(
            "kill fs-client: round {round}: mounted again {:.2} s after the kill",
            t.elapsed().as_secs_f64()
        );
        expect_progress(&w, PROGRESS, &format!("round {round}, on the new mount"));
    }
    verify(c, w.stop(STOP_TIMEOUT), "kill fs-client", started);
}
