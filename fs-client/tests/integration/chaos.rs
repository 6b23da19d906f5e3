//! Chaos: `rsync -a` of a real tree and a 1 GiB file into the mount while a
//! random peer is `kill -9`'d and restarted every few seconds; then two
//! peers are removed for good and repair must bring every chunk back to R
//! on the three that remain. Prints the repair figures to stderr.

use super::tools::{chunk_holders, run, sha256, stage_system_tree, Background, Pattern, Rng};
use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use testkit::cluster::{ClusterOpts, TestCluster};
use testkit::wait_until;

/// Size of the big file in bytes.
const BIG_LEN: u64 = 1 << 30;

/// The tree has at least this many files.
const MIN_FILES: usize = 2_000;

/// Peers and replication factor.
const PEERS: usize = 5;
const R: u32 = 3;

/// Bound on the rsync under chaos, and on any tool run over the data.
const TOOL_TIMEOUT: Duration = Duration::from_secs(600);

/// Bound on repair bringing every chunk back to R.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(240);

/// How long a killed peer stays dead: past the 2 s down timeout, so repair
/// starts on its chunks before it comes back.
const DEAD_FOR: (Duration, Duration) = (Duration::from_millis(1500), Duration::from_millis(3000));

/// dirsvc's GC grace period in this test.
const CHAOS_GC_GRACE: Duration = Duration::from_secs(30);

/// Pause between a restart and the next kill.
const ALIVE_FOR: (Duration, Duration) = (Duration::from_millis(1000), Duration::from_millis(2500));

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-3)
}

/// Sleeps up to `d`, returning early once `bg` has exited.
fn nap_while_running(bg: &mut Background, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && bg.try_wait().is_none() {
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether each chunk file on a remaining peer is on every remaining peer
/// (with R = number of remaining peers, the state after repair and after GC
/// has removed any orphan of the chaos). Returns the offenders' count.
fn chunks_not_on_all(c: &TestCluster) -> usize {
    let remaining = c.remaining_peers();
    chunk_holders(c)
        .values()
        .filter(|h| {
            let on: Vec<_> = h.iter().filter(|i| remaining.contains(i)).collect();
            !on.is_empty() && on.len() < remaining.len()
        })
        .count()
}

#[test]
fn rsync_under_peer_kills_then_two_peers_lost_for_good_repairs_to_r_and_reads_back_identical() {
    // GC grace 30 s, not 3 s: fs-client commits a file's layout only on
    // fsync/close, so the first blocks of the 1 GiB file wait uncommitted
    // for as long as the copy takes (`gc::a_file_written_for_longer_than_
    // the_gc_grace_keeps_its_first_blocks` pins that on its own).
    let opts = ClusterOpts::fast(PEERS, R)
        .exclusive()
        .dirsvc_flag("--gc-grace-secs", &CHAOS_GC_GRACE.as_secs().to_string());
    let mut c = TestCluster::start_with(opts);
    let mut rng = Rng::for_test("chaos");
    let src = c.work_dir().join("src");
    let n_files = stage_system_tree(&src.join("tree"), MIN_FILES);
    let big_src = src.join("big.bin");
    Pattern::write_file(&big_src, 4242, BIG_LEN);
    let big_sum = sha256(&big_src, TOOL_TIMEOUT);

    c.mount();
    let mnt = c.mountpoint();
    let t_copy = Instant::now();
    let mut rsync = Background::spawn(
        Command::new("rsync").arg("-a").arg(src.join("tree")).arg(&big_src).arg(&mnt),
        &c.work_dir().join("rsync.log"),
    );
    let mut kills = Vec::new();
    while rsync.try_wait().is_none() && t_copy.elapsed() < TOOL_TIMEOUT {
        let pause = rng.between(ALIVE_FOR.0, ALIVE_FOR.1);
        nap_while_running(&mut rsync, pause);
        if rsync.try_wait().is_some() {
            break;
        }
        let victim = rng.below(PEERS as u64) as usize;
        // Mostly kill -9; every fourth time a clean stop (SIGTERM, which must
        // exit 0 with puts in flight).
        if kills.len() % 4 == 3 {
            c.term_peer(victim);
        } else {
            c.kill9_peer(victim);
        }
        kills.push(victim);
        thread::sleep(rng.between(DEAD_FOR.0, DEAD_FOR.1));
        c.restart_peer(victim);
    }
    rsync.expect_success(TOOL_TIMEOUT);
    let copy_time = t_copy.elapsed();
    eprintln!(
        "chaos: rsync -a of {n_files} files + 1 GiB took {:.1} s with {} peer kills, every 4th a SIGTERM \
         (victims {kills:?})",
        copy_time.as_secs_f64(),
        kills.len()
    );
    assert!(
        kills.len() >= 3,
        "only {} peer kills happened during the rsync: the test proved little",
        kills.len()
    );

    // Every peer is back: redundancy must return to R before two peers may
    // go (a chunk acknowledged at the minimum replica count could otherwise
    // have both copies on the two that leave).
    let healed = c.wait_status("redundancy back at R after the chaos", REPAIR_TIMEOUT, |st| {
        st.fully_replicated() && st.get("repairs_in_flight") == 0
    });
    eprintln!("chaos: all chunks back at R = {R} {:.1} s after the rsync ended", healed.as_secs_f64());

    // Two peers leave for good, at once.
    let before = c.status();
    let a = rng.below(PEERS as u64) as usize;
    let b = (a + 1 + rng.below(PEERS as u64 - 1) as usize) % PEERS;
    let t_loss = Instant::now();
    c.remove_peer(a);
    c.remove_peer(b);
    let noticed = c.wait_status("the 2 removed peers counted as down", Duration::from_secs(60), |st| {
        st.get("peers_down") >= 2
    });
    c.wait_status(
        &format!("after removing peers {a} and {b}: under_replicated 0, lost 0, new repairs done"),
        REPAIR_TIMEOUT,
        |st| {
            st.fully_replicated()
                && st.get("repairs_in_flight") == 0
                && st.get("repaired_total") > before.get("repaired_total")
        },
    );
    let to_full = t_loss.elapsed();
    let after = c.status();
    let bytes = after.get("repaired_bytes_total") - before.get("repaired_bytes_total");
    let copies = after.get("repaired_total") - before.get("repaired_total");
    let repair_time = to_full.saturating_sub(noticed);
    eprintln!(
        "chaos: removed peers {a} and {b}: down after {:.1} s; {copies} chunk copies ({:.0} MB) by repair; \
         full redundancy {:.1} s after the removal; repair throughput {:.0} MB/s over the whole time, \
         {:.0} MB/s from the moment both were down",
        noticed.as_secs_f64(),
        bytes as f64 / 1e6,
        to_full.as_secs_f64(),
        mb_per_s(bytes, to_full),
        mb_per_s(bytes, repair_time)
    );
    assert_eq!(after.get("lost"), 0, "lost chunks:\n{}", after.raw);

    // On disk: with R = 3 and three peers left, each of them holds every
    // chunk; anything else is an orphan of the chaos that GC must remove.
    let mut offenders = 0;
    let settled = wait_until(
        || {
            offenders = chunks_not_on_all(&c);
            offenders == 0
        },
        CHAOS_GC_GRACE + Duration::from_secs(60),
    );
    assert!(
        settled.is_some(),
        "{offenders} chunk files are on some but not all of the remaining peers {:?} \
         (under-replicated, or orphans GC never removed); status:\n{}",
        c.remaining_peers(),
        c.status().raw
    );

    // Cold read: a fresh client, every file through the repaired replicas.
    c.unmount();
    c.mount();
    let t = Instant::now();
    run(
        Command::new("diff").arg("-r").arg("--no-dereference").arg(src.join("tree")).arg(mnt.join("tree")),
        TOOL_TIMEOUT,
    );
    let diff_time = t.elapsed();
    let t = Instant::now();
    assert_eq!(sha256(&mnt.join("big.bin"), TOOL_TIMEOUT), big_sum, "sha256 of the 1 GiB file");
    eprintln!(
        "chaos: cold diff -r of the tree {:.1} s; sha256 of the 1 GiB file through the mount {:.0} MB/s",
        diff_time.as_secs_f64(),
        mb_per_s(BIG_LEN, t.elapsed())
    );
    assert_eq!(
        fs::metadata(mnt.join("big.bin")).expect("stat big.bin").len(),
        BIG_LEN,
        "size of the 1 GiB file"
    );
    c.stop_all();
}
