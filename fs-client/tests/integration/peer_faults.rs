//! Reads through the mount when a peer dies or a stored replica rots.

use super::tools::{assert_files, assert_replicated, boundary_files, flip_middle_byte, write_files};
use std::collections::BTreeMap;
use testkit::cluster::TestCluster;

#[test]
fn reads_survive_kill_9_of_one_peer() {
    let mut c = TestCluster::start(3, 2);
    let files = boundary_files();
    c.mount();
    write_files(&c.mountpoint(), &files);
    c.unmount();

    let holders = assert_replicated(&c, 2);
    // Kill the peer holding the most chunks, so the test cannot pass by
    // killing a peer nobody reads from.
    let victim = (0..c.peer_count())
        .max_by_key(|i| holders.values().filter(|h| h.contains(i)).count())
        .expect("peers exist");
    c.kill9_peer(victim);

    // A fresh mount: nothing can come from a cache.
    c.mount();
    assert_files(&c.mountpoint(), &files);
    c.stop_all();
}

#[test]
fn a_flipped_byte_in_one_replica_is_detected_and_read_from_another() {
    let mut c = TestCluster::start(3, 2);
    let files = boundary_files();
    c.mount();
    write_files(&c.mountpoint(), &files);
    c.unmount();
    // No process may keep a good copy in memory.
    c.stop_all();

    // Corrupt exactly one replica of every chunk. For the chunks held by the
    // same pair of peers, alternate which of the two is corrupted: whatever
    // replica order the client prefers, it meets a bad replica on some chunk
    // (there are more chunks than pairs), and it always has a good one.
    let holders = assert_replicated(&c, 2);
    let mut per_pair: BTreeMap<Vec<usize>, usize> = BTreeMap::new();
    let mut flipped = Vec::new();
    for (id, peers) in &holders {
        let turn = per_pair.entry(peers.clone()).or_insert(0);
        let peer = peers[*turn % peers.len()];
        *turn += 1;
        let path = c.peer_data_dir(peer).join("data").join(&id[..2]).join(id);
        flip_middle_byte(&path);
        flipped.push(id.clone());
    }
    assert!(
        per_pair.values().any(|&n| n >= 2),
        "need two chunks on the same pair of peers to force a bad read; holders: {holders:?}"
    );

    let marks = c.log_marks();
    c.restart_all();
    c.mount();
    assert_files(&c.mountpoint(), &files);
    c.unmount();

    let logs = c.logs_since(&marks);
    // A line that merely names a chunk (a debug "served" line) proves
    // nothing; a report says what went wrong.
    let reports_bad_replica = |line: &str| {
        let l = line.to_lowercase();
        ["mismatch", "verification", "verify", "corrupt"].iter().any(|k| l.contains(k))
    };
    let reports: Vec<&str> = logs.lines().filter(|l| reports_bad_replica(l)).collect();
    if let Some(first) = reports.first() {
        eprintln!("{} log lines report bad replicas, e.g.: {first}", reports.len());
    }
    assert!(
        !reports.is_empty(),
        "no log of fs-client or peerd reports a bad replica ('mismatch', 'verification', \
         'verify' or 'corrupt'); flipped chunks: {:?}; logs since the flip:\n{logs}",
        flipped.iter().map(|id| &id[..10]).collect::<Vec<_>>()
    );
    c.stop_all();
}
