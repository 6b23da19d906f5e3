//! Drain: an operator drains the peer holding the most chunks; dirsvc copies
//! its chunks to the others until it is `drained`; the peer is then stopped
//! for good and every file still reads back identical from a cold mount,
//! with every chunk at R replicas on the peers that remain.

use super::tools::{assert_files, boundary_files, chunk_holders, run, write_files};
use std::fs;
use std::time::Duration;
use testkit::cluster::{ClusterOpts, TestCluster};

const PEERS: usize = 4;
const R: usize = 2;

#[test]
fn a_drained_peer_leaves_with_no_loss_and_every_chunk_at_r() {
    let mut c = TestCluster::start_with(ClusterOpts::fast(PEERS, R as u32));
    let files = boundary_files();
    c.mount();
    write_files(&c.mountpoint(), &files);
    c.unmount();
    c.wait_status("the files are at R", Duration::from_secs(30), |st| st.fully_replicated());

    let holders = chunk_holders(&c);
    let per_peer = |i: usize| holders.values().filter(|h| h.contains(&i)).count();
    let victim = (0..PEERS).max_by_key(|&i| per_peer(i)).expect("peers");
    assert!(per_peer(victim) > 0, "the drained peer must hold chunks for the test to mean anything");
    let id = fs::read_to_string(c.peer_data_dir(victim).join("peer-id")).expect("peer-id").trim().to_string();

    let addr = c.dirsvc_addr().to_string();
    run(c.fs_client().args(["drain", "--dirsvc", &addr, &id]), Duration::from_secs(30));
    let took = c.wait_status("the peer is drained and every chunk at R", Duration::from_secs(90), |st| {
        st.fully_replicated() && st.peers.iter().any(|p| p.id == id && p.state == "drained")
    });
    eprintln!("drain of {} chunks took {:.1} s", per_peer(victim), took.as_secs_f64());

    c.remove_peer(victim);
    for (chunk, h) in chunk_holders(&c) {
        let elsewhere = h.iter().filter(|&&i| i != victim).count();
        assert!(elsewhere >= R, "chunk {chunk} is on {elsewhere} remaining peers, want {R}");
    }
    c.mount();
    assert_files(&c.mountpoint(), &files);
    c.unmount();
}
