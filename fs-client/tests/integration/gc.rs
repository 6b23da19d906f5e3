//! Garbage collection: after `rm -r` of ~200 MB in many files — plus the
//! orphans of a client killed in the middle of a big write (chunks uploaded,
//! never committed) — the peers' chunk bytes fall to near zero once the
//! grace period is over, `df` on the mount shows the space back, and the
//! files that were kept still read back intact. And the grace period does
//! not bite a file that is still being written.

use super::tools::{assert_files, df, write_files, Background, Pattern};
use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use testkit::cluster::{ClusterOpts, TestCluster, FAST_GC_GRACE};
use testkit::wait_until;

const PEERS: usize = 3;
const R: u64 = 2;

/// Capacity each peer offers, so `df` does not move with the test disk.
const CAPACITY: &str = "8589934592";

/// Bytes of the partial write left behind by the killed client.
const PARTIAL_MIB: u64 = 48;

/// Bound on GC giving the space back, on top of the grace period.
const GC_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn deleting_everything_returns_peer_disk_usage_to_near_zero_and_df_shows_it() {
    let mut c =
        TestCluster::start_with(ClusterOpts::fast(PEERS, R as u32).all_peer_args(&["--capacity", CAPACITY]));
    c.mount();
    let mnt = c.mountpoint();
    // Kept: small, must survive every GC pass.
    let keep: BTreeMap<String, Vec<u8>> = [1usize, 4096, 300_007]
        .iter()
        .enumerate()
        .map(|(i, &len)| (format!("keep/k{i}.bin"), Pattern::bytes(70 + i as u64, len)))
        .collect();
    write_files(&mnt, &keep);
    // Doomed: 100 files of 2 MiB and 300 small ones, in 10 directories.
    let doomed: BTreeMap<String, Vec<u8>> = (0..400u64)
        .map(|i| {
            let len = if i < 100 { 2 << 20 } else { 10_000 + i as usize };
            (format!("doomed/d{}/f{i}.bin", i % 10), Pattern::bytes(9_000 + i, len))
        })
        .collect();
    let doomed_len: u64 = doomed.values().map(|v| v.len() as u64).sum();
    let t = Instant::now();
    write_files(&mnt, &doomed);
    eprintln!(
        "gc: wrote {:.0} MB in {} files in {:.1} s",
        doomed_len as f64 / 1e6,
        doomed.len(),
        t.elapsed().as_secs_f64()
    );

    // A client killed while writing a big file leaves chunks uploaded but
    // never committed; they must go too.
    let partial = mnt.join("doomed/partial.bin");
    let base = c.data_bytes();
    let script = format!("exec 3>\"$1\"; head -c {} /dev/urandom >&3; exec sleep 600", PARTIAL_MIB << 20);
    let holder = Background::spawn(
        Command::new("bash").arg("-c").arg(script).arg("bash").arg(&partial),
        &c.work_dir().join("partial.log"),
    );
    let uploaded =
        wait_until(|| c.data_bytes() >= base + R * ((PARTIAL_MIB / 2) << 20), Duration::from_secs(60));
    assert!(
        uploaded.is_some(),
        "the client did not upload the full blocks of an open file ({} MB stored of {} MiB written)",
        (c.data_bytes() - base) / 1_000_000,
        PARTIAL_MIB
    );
    c.kill9_client();
    drop(holder);
    // Past the kernel's 1 s attribute TTL of the root: an immediate remount
    // after a kill is the kills test's subject, not this one's.
    thread::sleep(Duration::from_millis(1500));
    c.mount();

    c.wait_status("all written data at R", Duration::from_secs(60), |st| st.fully_replicated());
    let before = c.data_bytes();
    assert!(before >= R * doomed_len, "peers hold {before} bytes for {doomed_len} bytes written at R = {R}");
    // Peers report usage with their heartbeats: wait until df has it.
    let min_used = before / R * 9 / 10;
    let df_wait = wait_until(|| df(&mnt).1 >= min_used, Duration::from_secs(20));
    let (size, df_before) = df(&mnt);
    assert!(df_wait.is_some(), "df on the mount shows {df_before} bytes used, expected at least {min_used}");
    let gc_before = c.status().get("gc_deleted_total");

    let t = Instant::now();
    fs::remove_dir_all(mnt.join("doomed")).expect("rm -r doomed");
    let rm_time = t.elapsed();
    let limit = before / 20;
    let mut now = before;
    let gone = wait_until(
        || {
            now = c.data_bytes();
            now < limit
        },
        FAST_GC_GRACE + GC_TIMEOUT,
    );
    let Some(gone) = gone else {
        panic!(
            "peers still hold {now} bytes of chunk files {:?} after the deletion (before: {before}; \
             limit 5%: {limit}); status:\n{}",
            FAST_GC_GRACE + GC_TIMEOUT,
            c.status().raw
        );
    };
    let df_limit = df_before / 20;
    let df_back = wait_until(|| df(&mnt).1 < df_limit, Duration::from_secs(30));
    let df_after = df(&mnt).1;
    assert!(
        df_back.is_some(),
        "df on the mount still shows {df_after} bytes used (of {size}); before the deletion {df_before}"
    );
    let status = c.status();
    let deleted = status.get("gc_deleted_total") - gc_before;
    eprintln!(
        "gc: rm -r took {:.1} s; chunk bytes on peers {:.0} MB -> {:.1} MB {:.1} s after the rm \
         (grace {FAST_GC_GRACE:?}); {deleted} replicas deleted; df used {:.0} MB -> {:.1} MB",
        rm_time.as_secs_f64(),
        before as f64 / 1e6,
        now as f64 / 1e6,
        gone.as_secs_f64(),
        df_before as f64 / 1e6,
        df_after as f64 / 1e6
    );
    assert!(deleted > 0, "gc_deleted_total did not grow:\n{}", status.raw);

    // What was kept is intact, read by a fresh client.
    c.unmount();
    c.mount();
    assert_files(&mnt, &keep);
    c.stop_all();
}

#[test]
fn a_file_written_for_longer_than_the_gc_grace_keeps_its_first_blocks() {
    // A writer that keeps a file open longer than the grace period (a log,
    // a slow download, a big copy on a short grace) must not lose the blocks
    // it uploaded first: close succeeds and the file reads back whole. A
    // 1 MiB block cache stands for a file far bigger than the cache (the
    // 1 GiB copy of the chaos test failed so with a 3 s grace).
    let opts = ClusterOpts::fast(PEERS, R as u32).mount_args(&["--cache-mib", "1"]);
    let mut c = TestCluster::start_with(opts);
    c.mount();
    let work = c.work_dir();
    let (first, rest) = (Pattern::bytes(1, 3 << 20), Pattern::bytes(2, (1 << 20) + 5));
    fs::write(work.join("first"), &first).expect("write first part");
    fs::write(work.join("rest"), &rest).expect("write rest");
    let target = c.mountpoint().join("slow.bin");
    // dd checks write, fsync and close; the pause sits between full blocks.
    let pause = FAST_GC_GRACE + Duration::from_secs(3);
    let script = format!(
        "{{ cat \"$1\"; sleep {}; cat \"$2\"; }} | dd of=\"$3\" bs=1M iflag=fullblock conv=fsync status=none",
        pause.as_secs()
    );
    let writer = Background::spawn(
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("slow")
            .arg(work.join("first"))
            .arg(work.join("rest"))
            .arg(&target),
        &work.join("slow.log"),
    );
    writer.expect_success(pause + Duration::from_secs(60));
    c.unmount();
    c.mount();
    let mut want = first;
    want.extend_from_slice(&rest);
    let got = fs::read(c.mountpoint().join("slow.bin")).expect("read slow.bin");
    assert!(got == want, "slow.bin reads back wrong: {} bytes, want {}", got.len(), want.len());
    c.stop_all();
}
