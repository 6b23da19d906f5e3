//! Terms of leadership through the real service (`dirsvc::spawn_with`)
//! with an election driven by the test: a follower answers `NotLeader`
//! naming the leader, an elected dirsvc serves from the store's state, a
//! term that ends closes its connections and answers `NotLeader` again,
//! and the next term sees every commit of the one before. The etcd
//! election itself is tested with real etcd in `kv_etcd.rs`.

use super::support::*;
use super::svc::{ok, refused, TEST_TIMEOUT};
use common::rpc::dir::{DirError, FileKind, NewInode};
use common::rpc::Role;
use testkit::within;

use dirsvc::leader::{Leadership, Term};
use dirsvc::{DirsvcConfig, Store};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tarpc::context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// An election the test decides: `campaign` waits for a term the test
/// grants; `leader` is what the test says.
#[derive(Debug)]
struct Granted {
    terms: tokio::sync::Mutex<mpsc::UnboundedReceiver<Term>>,
    leader: Mutex<Option<String>>,
}

impl Leadership for Granted {
    fn campaign(&self) -> Pin<Box<dyn Future<Output = Result<Term, dirsvc::Error>> + Send + '_>> {
        Box::pin(async move {
            match self.terms.lock().await.recv().await {
                Some(t) => Ok(t),
                None => std::future::pending().await,
            }
        })
    }

    fn leader(&self) -> Option<String> {
        self.leader.lock().unwrap().clone()
    }

    fn elective(&self) -> bool {
        true
    }
}

fn file() -> NewInode {
    NewInode { kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0 }
}

/// Calls `getattr(ROOT)` on fresh connections until it is answered
/// (not `NotLeader`, not a closed connection), within 10 s.
async fn until_served(addr: &str) -> common::rpc::dir::DirServiceClient {
    for _ in 0..200 {
        let (c, _) = testkit::dir_client_as(addr, Role::Client).await;
        match c.getattr(context::current(), ROOT).await {
            Ok(Ok(_)) | Ok(Err(DirError::NotInitialized)) | Ok(Err(DirError::NotFound)) => return c,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("never served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_names_the_leader_and_each_term_serves_what_the_last_one_committed() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tmp();
        let config = DirsvcConfig { gc_interval: Duration::from_secs(3600), ..config(dir.path()) };
        let store = Arc::new(Store::open(&config.db_path).unwrap());
        let (grant, terms) = mpsc::unbounded_channel();
        let election = Arc::new(Granted {
            terms: tokio::sync::Mutex::new(terms),
            leader: Mutex::new(Some("10.9.9.9:7700".into())),
        });
        let handle = dirsvc::spawn_with(config, store, election.clone()).await.unwrap();
        let addr = handle.addr.to_string();

        // A follower: hello answers, everything else names the leader.
        let (c, _) = testkit::dir_client_as(&addr, Role::Client).await;
        assert_eq!(c.hello(context::current()).await.unwrap(), common::rpc::PROTOCOL_VERSION);
        let e = refused(c.getattr(context::current(), ROOT).await);
        assert_eq!(e, DirError::NotLeader { leader: Some("10.9.9.9:7700".into()) });
        let (admin, _) = testkit::dir_client_as(&addr, Role::Admin).await;
        assert!(matches!(refused(admin.volume_info(context::current()).await), DirError::NotLeader { .. }));

        // Elected: the volume is made and a file committed.
        let first = Term { ended: CancellationToken::new() };
        grant.send(first.clone()).unwrap();
        *election.leader.lock().unwrap() = None;
        let c = until_served(&addr).await;
        ok(c.init_volume(context::current(), volume(2), 0, 0).await);
        let a = ok(c.create(context::current(), ROOT, b"a".to_vec(), file()).await);

        // The term ends: the connection is closed, new ones are followers.
        *election.leader.lock().unwrap() = Some("10.9.9.8:7700".into());
        first.ended.cancel();
        let mut closed = false;
        for _ in 0..100 {
            if c.getattr(context::current(), ROOT).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "the old term's connection stayed open");
        let (c, _) = testkit::dir_client_as(&addr, Role::Client).await;
        assert_eq!(
            refused(c.lookup(context::current(), ROOT, b"a".to_vec()).await),
            DirError::NotLeader { leader: Some("10.9.9.8:7700".into()) }
        );

        // The next term starts from the store: the file is there, new
        // writes work.
        grant.send(Term { ended: CancellationToken::new() }).unwrap();
        let c = until_served(&addr).await;
        assert_eq!(ok(c.lookup(context::current(), ROOT, b"a".to_vec()).await).ino, a.ino);
        ok(c.create(context::current(), ROOT, b"b".to_vec(), file()).await);
        handle.shutdown().await;
    })
    .await;
}
