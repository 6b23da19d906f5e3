//! Several dirsvc over one etcd (real etcd, real dirsvc servers over
//! mutual TLS): an election picks one leader, the other answers
//! `NotLeader` naming it, and when the leader dies a client that knows both
//! addresses carries on (`Pool::call_dir`) once the survivor's election
//! lease lets it lead, seeing everything committed before.

use super::support::*;
use common::net::{DirAddrs, Pool, RetryPolicy};
use common::rpc::dir::{DirError, DirServiceClient, FileKind, NewInode};
use common::rpc::Role;
use dirsvc::kv::etcd::EtcdConfig;
use dirsvc::{DirsvcConfig, DirsvcHandle, EtcdMember};
use std::time::{Duration, Instant};
use testkit::etcd::EtcdCluster;

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start(cluster: &EtcdCluster, dir: &std::path::Path, name: &str) -> (DirsvcHandle, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let config = DirsvcConfig { listen: addr.clone(), gc_interval: Duration::from_secs(3600), ..config(dir) };
    let mut etcd = EtcdConfig::new(cluster.endpoints(), b"/failover/".to_vec());
    etcd.instance = name.into();
    etcd.request_timeout = Duration::from_secs(2);
    etcd.settle_window = Duration::from_secs(3);
    let member = EtcdMember { etcd, advertise: addr.clone(), lease: Duration::from_secs(2) };
    (dirsvc::spawn_etcd(config, member).await.unwrap(), addr)
}

/// The create revision of the election key under this test's prefix (0
/// when nobody holds it), read straight from etcd.
async fn election_key_revision(cluster: &EtcdCluster) -> i64 {
    let mut etcd = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let key = format!("/failover/election/{}", dirsvc::ELECTION);
    let got = etcd.get(key, None).await.unwrap();
    got.kvs().first().map_or(0, |kv| kv.create_revision())
}

fn file() -> NewInode {
    NewInode { kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dirsvc_over_etcd_elect_one_leader_and_a_client_rides_out_its_death() {
    testkit::within(Duration::from_secs(90), "the test", async {
        let cluster = EtcdCluster::start(1, None);
        let (da, db) = (tmp(), tmp());
        let (a, a_addr) = start(&cluster, da.path(), "dirsvc-a").await;
        let (b, b_addr) = start(&cluster, db.path(), "dirsvc-b").await;
        let pool: Pool<DirServiceClient> = Pool::new(testkit::pki().node(Role::Client));
        let addrs = DirAddrs::parse(&format!("{a_addr},{b_addr}")).unwrap();
        let policy = RetryPolicy::for_window(Duration::from_secs(30));
        let meta = Duration::from_secs(5);

        let info =
            pool.call_dir(&addrs, meta, &policy, |c, ctx| async move {
                c.init_volume(ctx, volume(2), 0, 0).await
            })
            .await
            .unwrap();
        assert!(info.is_ok(), "{info:?}");
        let made = pool
            .call_dir(&addrs, meta, &policy, |c, ctx| async move {
                c.create(ctx, ROOT, b"one".to_vec(), file()).await
            })
            .await
            .unwrap()
            .unwrap();
        let leader = addrs.current();

        // The leader keeps its term while alive: its election key (held on
        // its lease, renewed every TTL/3) is the same key three TTLs later.
        let held = election_key_revision(&cluster).await;
        assert!(held > 0, "a leader holds the election key");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            election_key_revision(&cluster).await,
            held,
            "the leader lost its term while alive: its lease was not renewed in time"
        );

        // The other one is a follower that names the leader.
        let follower = if leader == a_addr { &b_addr } else { &a_addr };
        let (c, _) = testkit::dir_client_as(follower, Role::Client).await;
        let answer = c.getattr(tarpc::context::current(), ROOT).await.unwrap();
        assert_eq!(answer, Err(DirError::NotLeader { leader: Some(leader.clone()) }));

        // The leader dies (no resignation: its lease lapses).
        let (dead, survivor) = if leader == a_addr { (a, b) } else { (b, a) };
        dead.shutdown().await;
        let t0 = Instant::now();
        let second = pool
            .call_dir(&addrs, meta, &policy, |c, ctx| async move {
                c.create(ctx, ROOT, b"two".to_vec(), file()).await
            })
            .await
            .unwrap()
            .unwrap();
        let failover = t0.elapsed();
        assert_eq!(addrs.current(), *follower);
        let one =
            pool.call_dir(&addrs, meta, &policy, |c, ctx| async move {
                c.lookup(ctx, ROOT, b"one".to_vec()).await
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(one.ino, made.ino);
        assert_ne!(second.ino, made.ino);
        eprintln!("first successful write {failover:?} after the leader's death (lease 2 s)");
        survivor.shutdown().await;
    })
    .await;
}
