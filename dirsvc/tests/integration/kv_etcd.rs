//! The kv layer on its etcd engine, against real etcd processes
//! (testkit's `EtcdCluster`): the same transaction semantics the redb
//! engine is held to in `src/kv/tests.rs`, leader election with fencing,
//! commits through member failures and quorum loss, mutual TLS, and the
//! commit latency and group-commit throughput on a 3-member cluster.

use common::rpc::Role;
use dirsvc::error::Error;
use dirsvc::kv::etcd::election::LeaderState;
use dirsvc::kv::etcd::{EtcdConfig, EtcdEngine, Fence};
use dirsvc::kv::{prefix_range, Engine, Kv, Pair};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::etcd::EtcdCluster;

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn keys(pairs: &[Pair]) -> Vec<String> {
    pairs.iter().map(|(k, _)| String::from_utf8(k.clone()).unwrap()).collect()
}

fn config(cluster: &EtcdCluster, prefix: &str) -> EtcdConfig {
    let mut c = EtcdConfig::new(cluster.endpoints(), prefix.as_bytes().to_vec());
    c.request_timeout = Duration::from_secs(2);
    c.settle_window = Duration::from_secs(3);
    c
}

fn engine(cluster: &EtcdCluster, prefix: &str) -> Arc<EtcdEngine> {
    Arc::new(EtcdEngine::connect(&config(cluster, prefix)).unwrap())
}

/// One write transaction that puts `key`.
fn put1(kv: &Kv, key: Vec<u8>, value: Vec<u8>) -> Result<(), Error> {
    kv.write(|w| {
        w.put(key.clone(), value.clone());
        Ok(())
    })
}

fn counter(v: Option<Vec<u8>>) -> u64 {
    v.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()))
}

/// `threads` writers, `each` read-modify-write transactions apiece on one
/// shared counter; returns the elapsed time.
fn hammer(kv: &Arc<Kv>, threads: usize, each: usize, tag: &str) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let kv = kv.clone();
            let tag = tag.to_string();
            std::thread::spawn(move || {
                for i in 0..each {
                    kv.write(|w| {
                        let n = counter(w.get(tag.as_bytes())?);
                        w.put(tag.as_bytes().to_vec(), (n + 1).to_le_bytes().to_vec());
                        w.put(format!("{tag}/t{t}/{i}").into_bytes(), vec![1]);
                        Ok(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

#[test]
fn etcd_engine_meets_the_kv_layers_transaction_semantics() {
    let cluster = EtcdCluster::start(1, None);

    // Own writes, then readers after commit.
    let kv = Kv::new(engine(&cluster, "/t1/"));
    assert_eq!(kv.engine_name(), "etcd");
    let seen = kv
        .write(|w| {
            assert_eq!(w.get(b"a")?, None);
            w.put(k("a"), k("1"));
            w.put(k("b"), k("2"));
            w.delete(k("b"));
            Ok((w.get(b"a")?, w.get(b"b")?))
        })
        .unwrap();
    assert_eq!(seen, (Some(k("1")), None));
    assert_eq!(kv.read(|r| Ok((r.get(b"a")?, r.get(b"b")?))).unwrap(), (Some(k("1")), None));

    // A failed closure leaves nothing behind.
    let r: Result<(), Error> = kv.write(|w| {
        w.put(k("x"), k("1"));
        Err(Error::CommitFailed("the closure said no".into()))
    });
    assert!(r.is_err());
    assert_eq!(kv.read(|r| r.get(b"x")).unwrap(), None);

    // Scans merge own writes and deletes, honour limits and direction.
    kv.write(|w| {
        for i in 0..10 {
            w.put(format!("p/{i}").into_bytes(), vec![i]);
        }
        w.put(k("q/0"), k("outside"));
        Ok(())
    })
    .unwrap();
    let range = prefix_range(b"p/");
    let (all, first3, last3) = kv
        .write(|w| {
            w.delete(k("p/0"));
            w.delete(k("p/1"));
            w.delete(k("p/9"));
            w.put(k("p/45"), k("new"));
            w.put(k("p/3"), k("changed"));
            Ok((w.scan(&range, usize::MAX, false)?, w.scan(&range, 3, false)?, w.scan(&range, 3, true)?))
        })
        .unwrap();
    assert_eq!(keys(&all), ["p/2", "p/3", "p/4", "p/45", "p/5", "p/6", "p/7", "p/8"]);
    assert_eq!(all[1].1, k("changed"));
    assert_eq!(keys(&first3), ["p/2", "p/3", "p/4"]);
    assert_eq!(keys(&last3), ["p/8", "p/7", "p/6"]);
    assert_eq!(kv.read(|r| r.scan(&range, usize::MAX, false)).unwrap(), all);
    let many = kv.read(|r| r.get_many(&[k("p/2"), k("p/0"), k("q/0")])).unwrap();
    assert_eq!(many, vec![Some(vec![2]), None, Some(k("outside"))]);

    // Every kind of bound, on the engine's own scans.
    let bounds = |s: Bound<&str>, e: Bound<&str>| (s.map(k), e.map(k));
    let scan =
        |r: (Bound<Vec<u8>>, Bound<Vec<u8>>), reverse| kv.read(|t| t.scan(&r, usize::MAX, reverse)).unwrap();
    assert_eq!(
        keys(&scan(bounds(Bound::Excluded("p/3"), Bound::Included("p/5")), false)),
        ["p/4", "p/45", "p/5"]
    );
    assert_eq!(
        keys(&scan(bounds(Bound::Included("p/3"), Bound::Excluded("p/5")), true)),
        ["p/45", "p/4", "p/3"]
    );
    assert_eq!(keys(&scan(bounds(Bound::Excluded("p/7"), Bound::Unbounded), false)), ["p/8", "q/0"]);
    // Unbounded both ways: the layer's keys only (not the engine's marker).
    assert_eq!(scan((Bound::Unbounded, Bound::Unbounded), false).len(), 10);

    // More keys than one etcd transaction or scan page holds.
    let kv_big = Kv::new(engine(&cluster, "/t1big/"));
    for part in 0..3 {
        kv_big
            .write(|w| {
                for i in 0..100 {
                    w.put(format!("{:04}", part * 100 + i).into_bytes(), vec![part as u8]);
                }
                Ok(())
            })
            .unwrap();
    }
    let want: Vec<Vec<u8>> = (0..300).map(|i| format!("{i:04}").into_bytes()).collect();
    let got = kv_big.read(|r| r.get_many(&want)).unwrap();
    assert!(got.iter().all(Option::is_some), "a get_many across several transactions missed keys");
    let all = kv_big.read(|r| r.scan(&(Bound::Unbounded, Bound::Unbounded), usize::MAX, false)).unwrap();
    assert_eq!(all.len(), 300);
    let last = kv_big.read(|r| r.scan(&(Bound::Unbounded, Bound::Unbounded), 200, true)).unwrap();
    assert_eq!(keys(&last[..2]), ["0299", "0298"]);
    assert_eq!(keys(&last[199..]), ["0100"]);

    // A transaction over the engine's limit is refused whole.
    let r = kv_big.write(|w| {
        for i in 0..200u16 {
            w.put(i.to_be_bytes().to_vec(), vec![1]);
        }
        Ok(())
    });
    assert!(matches!(r, Err(Error::TooLarge { ops: 200, max: 127 })), "{r:?}");

    // Snapshot isolation: a snapshot does not see a later commit.
    let iso = Kv::new(engine(&cluster, "/t1iso/"));
    iso.write(|w| {
        w.put(k("s"), k("old"));
        w.put(k("s2"), k("old"));
        Ok(())
    })
    .unwrap();
    let snap = iso.engine().snapshot().unwrap();
    assert_eq!(snap.get(b"s").unwrap(), Some(k("old")));
    iso.write(|w| {
        w.put(k("s"), k("new"));
        w.delete(k("s2"));
        w.put(k("s3"), k("new"));
        Ok(())
    })
    .unwrap();
    assert_eq!(snap.get(b"s").unwrap(), Some(k("old")));
    assert_eq!(snap.get_many(&[k("s2"), k("s3")]).unwrap(), vec![Some(k("old")), None]);
    assert_eq!(keys(&snap.scan(&(Bound::Unbounded, Bound::Unbounded), 10, false).unwrap()), ["s", "s2"]);
    drop(snap);
    assert_eq!(iso.read(|r| r.get(b"s")).unwrap(), Some(k("new")));

    // Concurrent writers: no lost update, grouped engine commits.
    let kv = Arc::new(Kv::new(engine(&cluster, "/t1c/")));
    hammer(&kv, 8, 20, "counter");
    assert_eq!(counter(kv.read(|r| r.get(b"counter")).unwrap()), 160);
    let stats = kv.stats();
    assert_eq!(stats.transactions, 160);
    assert!(stats.engine_commits < 160, "no grouping: {stats:?}");
    eprintln!("etcd group commit, 8 writers x 20 on 1 member: {stats:?}");

    // Large values: the group committer stops before etcd's 1.5 MiB
    // request limit (three 600 KiB sets in one Txn would be refused).
    let big = Arc::new(Kv::new(engine(&cluster, "/t1large/")));
    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let big = big.clone();
            std::thread::spawn(move || {
                for i in 0..3u8 {
                    put1(&big, vec![t, i], vec![t; 600 << 10]).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let stats = big.stats();
    assert_eq!((stats.transactions, stats.failed_commits), (12, 0), "{stats:?}");
    assert!(stats.engine_commits >= 6, "{stats:?}");
    let all = big.read(|r| r.scan(&(Bound::Unbounded, Bound::Unbounded), usize::MAX, false)).unwrap();
    assert_eq!(all.len(), 12);
    assert!(all.iter().all(|(k, v)| v.len() == 600 << 10 && v[0] == k[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_has_one_winner_fences_the_deposed_leader_and_fails_over() {
    let cluster = EtcdCluster::start(1, None);
    let ttl = Duration::from_secs(2);
    let a_engine = engine(&cluster, "/t2/");
    let b_engine = engine(&cluster, "/t2/");
    let a = Arc::new(a_engine.election("dirsvc", "10.0.0.1:7000", ttl));
    let b = Arc::new(b_engine.election("dirsvc", "10.0.0.2:7000", ttl));
    let a_kv = Arc::new(Kv::new(a_engine.clone()));
    let b_kv = Arc::new(Kv::new(b_engine.clone()));

    // Before anyone wins, nobody may commit.
    let r = tokio::task::block_in_place(|| put1(&a_kv, k("x"), k("a")));
    assert!(matches!(r, Err(Error::NotLeader(_))), "{r:?}");

    let ca = tokio::spawn({
        let a = a.clone();
        async move { a.campaign().await }
    });
    let cb = tokio::spawn({
        let b = b.clone();
        async move { b.campaign().await }
    });
    // Exactly one wins; the other keeps campaigning and learns the winner.
    testkit::within(Duration::from_secs(10), "a winner", async {
        while !ca.is_finished() && !cb.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ca.is_finished() ^ cb.is_finished(), "both or neither won");
    // Name them by outcome from here on.
    let (winner, w_engine, w_kv, w_addr, loser, l_engine, l_kv, l_task) = if ca.is_finished() {
        let rev = ca.await.unwrap().unwrap();
        assert_eq!(*a.state().borrow(), LeaderState::Leader { revision: rev });
        (a, a_engine, a_kv, "10.0.0.1:7000", b, b_engine, b_kv, cb)
    } else {
        let rev = cb.await.unwrap().unwrap();
        assert_eq!(*b.state().borrow(), LeaderState::Leader { revision: rev });
        (b, b_engine, b_kv, "10.0.0.2:7000", a, a_engine, a_kv, ca)
    };
    assert!(winner.is_leader() && !loser.is_leader());
    let mut ls = loser.state();
    testkit::within(Duration::from_secs(5), "the loser learns the leader", async {
        ls.wait_for(|s| *s == LeaderState::Follower { leader: Some(w_addr.into()) }).await.unwrap();
    })
    .await;
    assert_eq!(loser.leader().await.unwrap().as_deref(), Some(w_addr));

    // The leader commits; the follower may not.
    tokio::task::block_in_place(|| put1(&w_kv, k("x"), k("leader-1"))).unwrap();
    let r = tokio::task::block_in_place(|| put1(&l_kv, k("x"), k("follower")));
    assert!(matches!(r, Err(Error::NotLeader(_))), "{r:?}");

    // Revoke the winner's lease behind its back: the loser's campaign wins.
    let old_fence = w_engine.fence();
    assert!(matches!(old_fence, Fence::Leader { .. }));
    let lease = winner.lease().unwrap();
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    raw.lease_revoke(lease).await.unwrap();
    let new_rev =
        testkit::within(Duration::from_secs(10), "the follower takes over", l_task).await.unwrap().unwrap();
    assert!(loser.is_leader());
    // The deposed leader notices (its fence closes) ...
    let mut ws = winner.state();
    testkit::within(Duration::from_secs(5), "the deposed leader notices", async {
        ws.wait_for(|s| matches!(s, LeaderState::Follower { .. })).await.unwrap();
    })
    .await;
    assert_eq!(w_engine.fence(), Fence::Closed);
    // ... and even acting on its old fence, as if it had not, etcd refuses
    // its commit and nothing changes.
    w_engine.set_fence(old_fence);
    let r = tokio::task::block_in_place(|| put1(&w_kv, k("x"), k("deposed")));
    assert!(matches!(r, Err(Error::NotLeader(_))), "{r:?}");
    tokio::task::block_in_place(|| put1(&l_kv, k("y"), k("leader-2"))).unwrap();
    let seen = tokio::task::block_in_place(|| l_kv.read(|r| Ok((r.get(b"x")?, r.get(b"y")?)))).unwrap();
    assert_eq!(seen, (Some(k("leader-1")), Some(k("leader-2"))));
    assert_eq!(l_engine.fence(), Fence::Leader { key: l_engine.election_key("dirsvc"), revision: new_rev });

    // The new leader crashes (its runtime stops: no more keep-alives); the
    // old one campaigns again and wins once the lease lapses.
    w_engine.set_fence(Fence::Closed);
    let started = Instant::now();
    let again = tokio::spawn({
        let w = winner.clone();
        async move { w.campaign().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!again.is_finished(), "won while the other lease was alive");
    drop(loser);
    drop(l_kv);
    drop(l_engine);
    testkit::within(Duration::from_secs(10), "the lapsed lease's successor", again).await.unwrap().unwrap();
    eprintln!("took over {:?} after the leader stopped (ttl {ttl:?})", started.elapsed());
    tokio::task::block_in_place(|| put1(&w_kv, k("x"), k("leader-3"))).unwrap();

    // Resigning hands over at once (no TTL wait) and closes the fence.
    winner.resign().await.unwrap();
    assert_eq!(w_engine.fence(), Fence::Closed);
    assert_eq!(winner.leader().await.unwrap(), None);
}

#[test]
fn three_members_commit_with_one_down_refuse_without_quorum_and_lose_nothing() {
    let mut cluster = EtcdCluster::start(3, None);
    let eng = engine(&cluster, "/t3/");
    let kv = Arc::new(Kv::new(eng.clone()));

    // Measurements, on a healthy cluster.
    let mut lat = Vec::new();
    for i in 0..50u32 {
        let mut b = dirsvc::kv::Batch::new();
        b.insert(format!("lat/{i}").into_bytes(), dirsvc::kv::Op::Put(vec![0; 100]));
        let t = Instant::now();
        eng.commit(&b).unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    eprintln!(
        "single-Txn commit on 3 members: median {:?}, p90 {:?}, max {:?}",
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10],
        lat[lat.len() - 1]
    );
    let one = hammer(&kv, 1, 100, "one");
    let before = kv.stats();
    let eight = hammer(&kv, 8, 40, "eight");
    let after = kv.stats();
    eprintln!(
        "Kv writes on 3 members: 1 writer {:.0} txn/s; 8 writers {:.0} txn/s ({} txns in {} engine commits)",
        100.0 / one.as_secs_f64(),
        320.0 / eight.as_secs_f64(),
        after.transactions - before.transactions,
        after.engine_commits - before.engine_commits
    );

    // Every write acknowledged from here on must survive.
    let mut acked: Vec<u32> = Vec::new();
    let mut n = 0u32;
    let mut write = |kv: &Kv, acked: &mut Vec<u32>| {
        n += 1;
        let key = format!("q/{n:05}").into_bytes();
        let r = put1(kv, key.clone(), vec![1]);
        if r.is_ok() {
            acked.push(n);
        }
        r
    };
    for _ in 0..5 {
        write(&kv, &mut acked).unwrap();
    }
    // One member down (the one the engine talks to first): commits go on.
    cluster.kill(0);
    for _ in 0..5 {
        write(&kv, &mut acked).unwrap();
    }
    // Two down: no quorum. A commit fails with Unavailable, in bounded time.
    cluster.kill(1);
    let t = Instant::now();
    let mut b = dirsvc::kv::Batch::new();
    b.insert(k("q/no-quorum"), dirsvc::kv::Op::Put(vec![1]));
    let r = eng.commit(&b);
    assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(12), "took {:?}", t.elapsed());
    eprintln!("without quorum a commit failed after {:?}: {r:?}", t.elapsed());
    // Back to two: commits resume (the layer retries while etcd elects).
    cluster.restart(1);
    let t = Instant::now();
    let mut resumed = write(&kv, &mut acked);
    if let Err(Error::CommitFailed(m)) = &resumed {
        // The no-quorum commit applied after all: reported once, then on.
        eprintln!("{m}");
        resumed = write(&kv, &mut acked);
    }
    resumed.unwrap();
    eprintln!("commits resumed {:?} after the member restarted", t.elapsed());
    for _ in 0..5 {
        write(&kv, &mut acked).unwrap();
    }
    cluster.restart(0);
    let present = kv.read(|r| r.scan(&prefix_range(b"q/"), usize::MAX, false)).unwrap();
    let present: Vec<String> = keys(&present);
    for n in &acked {
        assert!(present.contains(&format!("q/{n:05}")), "acknowledged write {n} is missing");
    }
    assert_eq!(counter(kv.read(|r| r.get(b"eight")).unwrap()), 320);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_speaks_mutual_tls_to_an_etcd_that_demands_client_certificates() {
    let pki = testkit::pki();
    let cluster = EtcdCluster::start(1, Some(pki));
    let mut c = config(&cluster, "/t4/");
    c.tls = Some(pki.node(Role::Dirsvc));
    let kv = Kv::new(Arc::new(EtcdEngine::connect(&c).unwrap()));
    tokio::task::block_in_place(|| {
        put1(&kv, k("tls"), k("yes")).unwrap();
        assert_eq!(kv.read(|r| r.get(b"tls")).unwrap(), Some(k("yes")));
    });
    // Without a certificate, and with another cluster's, it is refused.
    let plain = EtcdEngine::connect(&config(&cluster, "/t4/")).unwrap();
    let r = tokio::task::block_in_place(|| plain.snapshot().and_then(|s| s.get(b"tls")));
    assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
    let mut other = config(&cluster, "/t4/");
    other.tls = Some(testkit::TestPki::new().node(Role::Dirsvc));
    let other = EtcdEngine::connect(&other).unwrap();
    let r = tokio::task::block_in_place(|| other.snapshot().and_then(|s| s.get(b"tls")));
    assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
}
