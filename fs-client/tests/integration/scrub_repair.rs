//! Disk rot: 20 chunk files altered on peers' disks (one flipped byte each,
//! spread over the peers) while nobody reads them. The peers' scrub must
//! find them, move them aside and report them; dirsvc must copy each chunk
//! back until it has R good replicas; a cold mount then reads 0 wrong bytes.

use super::tools::{chunk_files, chunk_holders, chunk_path, chunk_verifies, flip_middle_byte, Pattern};
use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;
use testkit::cluster::{ClusterOpts, TestCluster};

const PEERS: usize = 4;
const R: usize = 3;

/// Chunk files to alter.
const ROTTEN: usize = 20;

/// Scrub rate the peers run with, bytes per second.
const SCRUB_RATE: &str = "200000000";

/// Bound on scrub finding and repair replacing all 20.
const HEAL_TIMEOUT: Duration = Duration::from_secs(90);

/// Peers that hold a copy of `id` in `data/` that verifies against its id,
/// and peers whose copy there does not.
fn copies(c: &TestCluster, id: &str) -> (Vec<usize>, Vec<usize>) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for i in 0..c.peer_count() {
        let p = chunk_path(c, i, id);
        if p.exists() {
            if chunk_verifies(&p, id) {
                good.push(i);
            } else {
                bad.push(i);
            }
        }
    }
    (good, bad)
}

#[test]
fn twenty_rotten_chunk_files_are_scrubbed_and_repaired_to_r_good_copies() {
    let opts = ClusterOpts::fast(PEERS, R as u32).all_peer_args(&[
        "--scrub-bytes-per-sec",
        SCRUB_RATE,
        "--scrub-interval-secs",
        "1",
    ]);
    let mut c = TestCluster::start_with(opts);
    // 30 files of a bit over one block: 60 chunks, 180 chunk files.
    let files: BTreeMap<String, Vec<u8>> = (0..30u64)
        .map(|i| (format!("d{}/f{i}.bin", i % 3), Pattern::bytes(500 + i, (1 << 20) + 7919 * i as usize + 1)))
        .collect();
    c.mount();
    super::tools::write_files(&c.mountpoint(), &files);
    c.unmount();
    c.wait_status("the fresh files are at R", Duration::from_secs(30), |st| st.fully_replicated());

    let holders = chunk_holders(&c);
    let short: Vec<_> = holders.iter().filter(|(_, h)| h.len() < R).collect();
    assert!(short.is_empty(), "chunks on fewer than {R} peers before any damage: {short:?}");
    assert!(holders.len() >= ROTTEN, "only {} chunks stored", holders.len());

    // Read before the first flip: scrub runs all the time, and a rotten
    // chunk found and repaired before a later read would go uncounted.
    let repaired_before = c.status().get("repaired_total");
    // Rot one copy of 20 different chunks, each time on the peer with the
    // fewest rotten files so far: every peer loses some.
    let mut per_peer = [0usize; PEERS];
    let mut rotten: Vec<(String, usize)> = Vec::new();
    for (id, h) in holders.iter().take(ROTTEN) {
        let peer = *h.iter().min_by_key(|&&p| per_peer[p]).expect("chunk has holders");
        per_peer[peer] += 1;
        flip_middle_byte(&chunk_path(&c, peer, id));
        rotten.push((id.clone(), peer));
    }
    assert!(per_peer.iter().filter(|&&n| n > 0).count() >= 3, "rot spread over too few peers: {per_peer:?}");
    for (id, peer) in &rotten {
        assert!(!chunk_verifies(&chunk_path(&c, *peer, id), id), "the flip did not break {id}");
    }
    let marks = c.log_marks();

    // No client reads: only scrub can find the rot. Done when each rotten
    // chunk has R copies in data/ that verify and none that does not.
    let mut pending = rotten.len();
    let healed = testkit::wait_until(
        || {
            pending = rotten
                .iter()
                .filter(|(id, _)| {
                    let (good, bad) = copies(&c, id);
                    good.len() < R || !bad.is_empty()
                })
                .count();
            pending == 0
        },
        HEAL_TIMEOUT,
    );
    let Some(healed) = healed else {
        let detail: Vec<_> = rotten.iter().map(|(id, p)| (&id[..10], p, copies(&c, id))).collect();
        panic!(
            "{pending} of {ROTTEN} rotten chunks not back at {R} good copies within {HEAL_TIMEOUT:?} \
             (id, rotted peer, (good peers, bad peers)): {detail:?}\nstatus:\n{}",
            c.status().raw
        );
    };
    let settled =
        c.wait_status("under_replicated 0 after the scrub repairs", Duration::from_secs(30), |st| {
            st.fully_replicated() && st.get("repairs_in_flight") == 0
        });
    let repaired = c.status().get("repaired_total") - repaired_before;
    let total_bytes: u64 = (0..PEERS).map(|i| c.peer_data_bytes(i)).sum();
    eprintln!(
        "scrub: {ROTTEN} rotten chunk files (per peer {per_peer:?}) found and repaired in {:.1} s \
         ({repaired} repair copies); scrub rate {SCRUB_RATE} B/s over {:.0} MB of chunk files \
         ({:.0} MB per peer)",
        healed.as_secs_f64() + settled.as_secs_f64(),
        total_bytes as f64 / 1e6,
        total_bytes as f64 / 1e6 / PEERS as f64
    );
    assert!(repaired >= ROTTEN as u64, "only {repaired} repair copies for {ROTTEN} rotten replicas");
    // For the record only (peerd's log wording is not a contract): the
    // rates its scrub passes reached.
    let rates: Vec<f64> = c
        .logs_since(&marks)
        .lines()
        .filter(|l| l.contains("scrub pass complete") && !l.contains(" bytes=0 "))
        .filter_map(|l| l.split("mib_per_sec=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    if let Some(max) = rates.iter().copied().reduce(f64::max) {
        eprintln!("scrub: {} passes with data, up to {max:.0} MiB/s (limit {SCRUB_RATE} B/s)", rates.len());
    }
    let stray: Vec<_> = (0..PEERS)
        .flat_map(|i| chunk_files(&c.peer_data_dir(i)).into_iter().filter(|(id, p)| !chunk_verifies(p, id)))
        .collect();
    assert!(stray.is_empty(), "chunk files that do not verify are still served from data/: {stray:?}");

    // A cold mount reads every byte right.
    c.mount();
    let mnt = c.mountpoint();
    let mut wrong = 0usize;
    for (name, want) in &files {
        let got = fs::read(mnt.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
        wrong += got.iter().zip(want.iter()).filter(|(a, b)| a != b).count() + got.len().abs_diff(want.len());
    }
    assert_eq!(wrong, 0, "wrong bytes read back after scrub and repair");
    c.stop_all();
}
