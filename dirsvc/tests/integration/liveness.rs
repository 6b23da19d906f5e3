//! Peer states from heartbeats and drains, and placement over real TCP:
//! which peers are eligible, failure-domain spreading, proportional
//! choice, persistence of labels and drain flags.

use super::fakepeer::*;
use common::rpc::dir::{DirError, PeerLabels, PeerState};
use common::PeerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tarpc::context;
use testkit::within;

fn labels(host: &str, zone: &str) -> PeerLabels {
    PeerLabels { host: host.into(), zone: zone.into() }
}

#[tokio::test]
async fn silent_peers_turn_suspect_then_down_and_recover_when_heard_again() {
    within(TEST_TIMEOUT, "the test", async {
        let mut c = Cluster::start(2, |_| {}).await;
        c.add_peers(2).await;
        let (p, other) = (c.peer(1).id, c.peer(2).id);
        let silent_at = Instant::now();
        c.peer(1).go_silent();
        c.wait_state(p, PeerState::Suspect).await;
        let suspect_after = silent_at.elapsed();
        let listed = c.list().await;
        let me = listed.iter().find(|s| s.loc.id == p).unwrap();
        assert!(me.loc.live, "a suspect peer is still live for readers");
        let st = c.status().await;
        assert_eq!((st.peers_up, st.peers_suspect, st.peers_down), (1, 1, 0));

        c.wait_state(p, PeerState::Down).await;
        let down_after = silent_at.elapsed();
        // The last heartbeat may precede go_silent by one interval.
        assert!(suspect_after >= Duration::from_millis(400) - HEARTBEAT, "suspect after {suspect_after:?}");
        assert!(down_after >= Duration::from_millis(1200) - HEARTBEAT, "down after {down_after:?}");
        let listed = c.list().await;
        assert!(!listed.iter().find(|s| s.loc.id == p).unwrap().loc.live);
        assert_eq!(c.state(other).await, PeerState::Up, "the other peer kept heartbeating");
        let st = c.status().await;
        assert_eq!((st.peers_up, st.peers_suspect, st.peers_down), (1, 0, 1));

        c.peer(1).speak_again();
        c.wait_state(p, PeerState::Up).await;
        c.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn placement_never_picks_suspect_down_or_draining_peers() {
    within(TEST_TIMEOUT, "the test", async {
        let mut c = Cluster::start(2, |cfg| {
            // A wide suspect window, so the suspect peer stays suspect while
            // the placement runs.
            cfg.peer_suspect_after = Duration::from_millis(300);
            cfg.peer_down_after = Duration::from_secs(30);
        })
        .await;
        c.add_peers(6).await;
        let ctx = context::current;
        // Peer 2 stops heartbeating, peer 3 crashes (both suspect: the down
        // timeout is long here; down peers are checked below), peer 4
        // drains (twice: idempotent).
        let (suspect, crashed, draining) = (c.peer(2).id, c.peer(3).id, c.peer(4).id);
        c.admin.drain_peer(ctx(), draining).await.unwrap().unwrap();
        c.admin.drain_peer(ctx(), draining).await.unwrap().unwrap();
        assert_eq!(c.admin.drain_peer(ctx(), PeerId([99; 16])).await.unwrap(), Err(DirError::NotFound));
        c.peer(2).go_silent();
        c.peer(3).kill();
        c.wait_state(suspect, PeerState::Suspect).await;
        c.wait_state(crashed, PeerState::Suspect).await;
        let sets = c.client.placement(ctx(), 300, 1024).await.unwrap().unwrap();
        let mut seen: HashMap<PeerId, usize> = HashMap::new();
        for s in &sets {
            assert_eq!(s.len(), 2);
            assert_ne!(s[0].id, s[1].id);
            for p in s {
                *seen.entry(p.id).or_default() += 1;
            }
        }
        for bad in [suspect, crashed, draining] {
            assert!(!seen.contains_key(&bad), "{bad} was chosen: {seen:?}");
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        c.shutdown().await;

        // Down peers, with a short down timeout.
        let mut c = Cluster::start(2, |_| {}).await;
        c.add_peers(3).await;
        let down = c.peer(1).id;
        c.peer(1).kill();
        c.wait_state(down, PeerState::Down).await;
        let sets = c.client.placement(context::current(), 100, 1024).await.unwrap().unwrap();
        assert!(sets.iter().flatten().all(|p| p.id != down));
        // Only two eligible peers left: R = 2 still works, but with one
        // more gone placement reports how many are left.
        c.peer(2).kill();
        c.wait_state(c.peer(2).id, PeerState::Down).await;
        assert_eq!(
            c.client.placement(context::current(), 1, 1024).await.unwrap(),
            Err(DirError::NoPeers { needed: 2, live: 1 })
        );
        c.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn placement_spreads_replicas_over_hosts_then_zones_and_labels_persist() {
    within(TEST_TIMEOUT, "the test", async {
        let mut c = Cluster::start(3, |_| {}).await;
        let gib = 1u64 << 30;
        // Two peers share host a; host c is the only one in zone z2. Peer 1
        // has far more room, which must not beat the spreading rule.
        let a1 = c.add_peer_with(labels("a", "z1"), 100 * gib).await;
        let a2 = c.add_peer_with(labels("a", "z1"), gib).await;
        let b = c.add_peer_with(labels("b", "z1"), gib).await;
        let cc = c.add_peer_with(labels("c", "z2"), gib).await;
        let sets = c.client.placement(context::current(), 300, 1024).await.unwrap().unwrap();
        let mut first_on_a = HashMap::new();
        for s in &sets {
            let ids: Vec<PeerId> = s.iter().map(|p| p.id).collect();
            assert!(ids.contains(&b) && ids.contains(&cc), "three hosts needed: {ids:?}");
            assert!(!(ids.contains(&a1) && ids.contains(&a2)), "two replicas on host a: {ids:?}");
            let on_a = if ids.contains(&a1) { a1 } else { a2 };
            *first_on_a.entry(on_a).or_insert(0) += 1;
        }
        assert!(first_on_a[&a1] > first_on_a.get(&a2).copied().unwrap_or(0), "{first_on_a:?}");

        c.restart_dirsvc().await;
        let listed = c.list().await;
        let got: Vec<(PeerId, PeerLabels)> = listed.iter().map(|s| (s.loc.id, s.labels.clone())).collect();
        // Listed in id order.
        let mut want = vec![
            (a1, labels("a", "z1")),
            (a2, labels("a", "z1")),
            (b, labels("b", "z1")),
            (cc, labels("c", "z2")),
        ];
        want.sort_by_key(|(id, _)| *id);
        assert_eq!(got, want);
        c.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn new_data_goes_to_peers_in_proportion_to_free_space() {
    within(TEST_TIMEOUT, "the test", async {
        let mut c = Cluster::start(1, |_| {}).await;
        let gib = 1u64 << 30;
        let big = c.add_peer_with(PeerLabels::default(), 3 * gib).await;
        let small = c.add_peer_with(PeerLabels::default(), gib).await;
        let sets = c.client.placement(context::current(), 1000, 1024).await.unwrap().unwrap();
        let on_big = sets.iter().filter(|s| s[0].id == big).count() as f64;
        let on_small = sets.iter().filter(|s| s[0].id == small).count() as f64;
        assert_eq!(on_big + on_small, 1000.0);
        let ratio = on_big / on_small;
        // Expected 3; the binomial standard deviation puts 3σ at about
        // 2.4..3.8.
        assert!((2.2..4.0).contains(&ratio), "big {on_big}, small {on_small}, ratio {ratio}");
        c.shutdown().await;
    })
    .await;
}
