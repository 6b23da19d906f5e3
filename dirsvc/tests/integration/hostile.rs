//! Hostile callers: each cap of `DirsvcConfig` (sessions per principal
//! and in total, locks per session, waiting calls, extended attributes per
//! inode, placement promises per call and per principal) answers `Limit`
//! and changes nothing; and invalid timestamps are refused with `Invalid`
//! by every call that carries one.

use super::support::*;
use super::svc::*;
use common::rpc::dir::{
    CommitLayout, DirError, DirService as _, DirServiceClient, LockKind, PeerLabels, PeerRegistration,
    PeerUsage, SessionOpen, SetAttr, StoredChunk,
};
use common::rpc::Role;
use common::time::{Timestamp, MAX_SECS};
use common::tls::Tls;
use common::{ChunkId, PeerId};
use dirsvc::{DirServer, DirsvcConfig, Store};
use futures::StreamExt as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tarpc::context;
use tarpc::server::{BaseChannel, Channel as _};
use testkit::within;

fn ctx() -> context::Context {
    context::current()
}

fn is_limit(e: &DirError) -> bool {
    matches!(e, DirError::Limit(_))
}

/// The test identity called `who`: `admin` an admin certificate,
/// `peer-1` and `peer-2` the peers [`server`] registers, any other name a
/// client certificate. The same name is the same node in every test.
fn identity(who: &str) -> Arc<Tls> {
    static IDS: OnceLock<Mutex<HashMap<String, Arc<Tls>>>> = OnceLock::new();
    let mut ids = IDS.get_or_init(Mutex::default).lock().unwrap();
    ids.entry(who.to_string())
        .or_insert_with(|| match who {
            "admin" => testkit::pki().node(Role::Admin),
            w if w.starts_with("peer-") => testkit::pki().peer().1,
            _ => testkit::pki().node(Role::Client),
        })
        .clone()
}

/// The peer id of `peer-k`.
fn peer_id(k: u8) -> PeerId {
    PeerId::from(identity(&format!("peer-{k}")).node())
}

/// A client of `server` over an in-memory channel whose calls come from
/// the certificate of `who` ([`identity`]): what the server builds for a
/// connection after its TLS handshake.
fn client_as(server: &DirServer, who: &str) -> DirServiceClient {
    let (client, transport) = tarpc::transport::channel::unbounded();
    let s = server.for_connection(Some(testkit::caller(&identity(who))));
    tokio::spawn(BaseChannel::with_defaults(transport).execute(s.serve()).for_each(|f| async {
        tokio::spawn(f);
    }));
    DirServiceClient::new(tarpc::client::Config::default(), client).spawn()
}

/// A server over a fresh store (volume R = 2, two registered peers with
/// 1 GiB free each), with `tune` applied to the settings.
async fn server(dir: &std::path::Path, tune: impl FnOnce(&mut DirsvcConfig)) -> DirServer {
    let mut config = DirsvcConfig { db_path: db_path(dir), ..DirsvcConfig::default() };
    tune(&mut config);
    let store = Arc::new(Store::open(&config.db_path).unwrap());
    store.init_volume(&volume(2), 0, 0).unwrap();
    let s = DirServer::new(store, &config, testkit::pki().node(Role::Dirsvc)).unwrap();
    for k in 1..=2u8 {
        let c = client_as(&s, &format!("peer-{k}"));
        let reg = PeerRegistration {
            id: peer_id(k),
            addr: format!("127.0.0.1:{}", 9000 + u16::from(k)),
            usage: PeerUsage {
                capacity_bytes: 1 << 30,
                free_bytes: 1 << 30,
                used_bytes: 0,
                chunks: 0,
                fs: None,
                scrub: None,
            },
            labels: PeerLabels::default(),
        };
        ok(c.register_peer(ctx(), reg).await);
    }
    s
}

async fn open(c: &DirServiceClient, label: &str) -> Result<common::rpc::dir::SessionId, DirError> {
    let open = SessionOpen { label: label.into(), ..SessionOpen::default() };
    c.open_session(ctx(), open).await.unwrap().map(|g| g.id)
}

#[tokio::test]
async fn sessions_are_capped_per_principal_and_in_total() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tmp();
        let s = server(dir.path(), |c| {
            c.max_sessions_per_principal = 2;
            c.max_sessions = 3;
        })
        .await;
        let a = client_as(&s, "host-a");
        let a2 = client_as(&s, "host-a"); // another connection, same caller
        let b = client_as(&s, "host-b");
        let first = open(&a, "a1").await.unwrap();
        open(&a2, "a2").await.unwrap();
        let e = open(&a, "a3").await.unwrap_err();
        let who = identity("host-a").node().to_hex();
        assert!(is_limit(&e) && e.to_string().contains(&who), "{e}");
        // Reclaiming a session that is live adds none.
        let again = SessionOpen { label: "a1".into(), reclaim: Some(first), ..SessionOpen::default() };
        assert_eq!(ok(a.open_session(ctx(), again).await).id, first);
        // Another caller has its own count, up to the total.
        open(&b, "b1").await.unwrap();
        let e = open(&b, "b2").await.unwrap_err();
        assert!(is_limit(&e) && e.to_string().contains("3 sessions"), "{e}");
        // A closed session frees its place.
        ok(a.close_session(ctx(), first).await);
        open(&b, "b2").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn locks_per_session_are_capped_and_reclaims_past_the_cap_are_lost() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|c| c.max_locks_per_session = 2).await;
        let c = &svc.c;
        let f = svc.file_with_chunk("f", 1).await;
        let s1 = svc.session("one").await;
        let s2 = svc.session("two").await;
        ok(c.set_lock(ctx(), s1, posix(f, 1, LockKind::Read, 0, 9), 0).await);
        ok(c.set_lock(ctx(), s1, posix(f, 1, LockKind::Read, 20, 29), 0).await);
        let e = refused(c.set_lock(ctx(), s1, posix(f, 2, LockKind::Read, 40, 49), 0).await);
        assert!(is_limit(&e), "{e:?}");
        // Merging two ranges into one is fine at the cap.
        ok(c.set_lock(ctx(), s1, posix(f, 1, LockKind::Read, 10, 19), 0).await);
        ok(c.set_lock(ctx(), s1, posix(f, 2, LockKind::Read, 40, 49), 0).await);
        // The other session is not affected.
        ok(c.set_lock(ctx(), s2, posix(f, 7, LockKind::Read, 100, 109), 0).await);
        // A reclaim beyond the cap reports the extra locks as lost.
        let locks = (0..4).map(|i| posix(f, 9, LockKind::Read, i * 10, i * 10 + 1)).collect();
        let grant = ok(c
            .open_session(
                ctx(),
                SessionOpen { label: "r".into(), reclaim: Some(s2), locks, ..SessionOpen::default() },
            )
            .await);
        assert_eq!(grant.lost_locks.len(), 3, "s2 held one and may hold two");
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn waiting_calls_are_capped_per_session_and_in_total() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|c| {
            c.max_waiters_per_session = 1;
            c.max_waiters = 2;
        })
        .await;
        let c = &svc.c;
        let f = svc.file_with_chunk("f", 1).await;
        let holder = svc.session("holder").await;
        let w1 = svc.session("w1").await;
        let w2 = svc.session("w2").await;
        ok(c.set_lock(ctx(), holder, posix(f, 1, LockKind::Write, 0, u64::MAX), 0).await);
        // w1 waits for the lock (in the background) ...
        let bg = {
            let c = c.clone();
            tokio::spawn(async move { c.set_lock(ctx(), w1, posix(f, 2, LockKind::Write, 0, 0), 3000).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ... so a second waiting call of w1 is refused, lock or poll,
        assert!(is_limit(&refused(c.set_lock(ctx(), w1, posix(f, 3, LockKind::Write, 5, 5), 3000).await)));
        assert!(is_limit(&refused(c.poll_changes(ctx(), w1, 1, 3000).await)));
        // while a call that does not wait is answered.
        assert!(matches!(
            refused(c.set_lock(ctx(), w1, posix(f, 3, LockKind::Write, 5, 5), 0).await),
            DirError::WouldBlock
        ));
        ok(c.poll_changes(ctx(), w1, 0, 0).await);
        // w2 takes the second and last place in total; a third session
        // finds none.
        let bg2 = {
            let c = c.clone();
            tokio::spawn(async move { c.set_lock(ctx(), w2, posix(f, 4, LockKind::Write, 0, 0), 3000).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let w3 = svc.session("w3").await;
        let e = refused(c.poll_changes(ctx(), w3, 1, 3000).await);
        assert!(is_limit(&e) && e.to_string().contains("dirsvc"), "{e}");
        // Places come back when the waits end.
        ok(c.unlock(ctx(), holder, f, 1, common::rpc::dir::LockFlavor::Posix, 0, u64::MAX).await);
        let (r1, r2) = (bg.await.unwrap().unwrap(), bg2.await.unwrap().unwrap());
        assert!(r1.is_ok() || r2.is_ok(), "{r1:?} {r2:?}");
        ok(c.poll_changes(ctx(), w3, 1, 10).await);
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn extended_attributes_per_inode_are_capped_by_count() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|c| c.max_xattrs_per_inode = 3).await;
        let c = &svc.c;
        let f = svc.file_with_chunk("f", 1).await;
        for k in ["a", "b", "c"] {
            ok(c.setxattr(ctx(), f, n(k), n("v"), 0).await);
        }
        assert!(is_limit(&refused(c.setxattr(ctx(), f, n("d"), n("v"), 0).await)));
        assert_eq!(ok(c.listxattr(ctx(), f).await).len(), 3, "nothing added");
        // Replacing one is fine; removing one makes room.
        ok(c.setxattr(ctx(), f, n("a"), n("longer value"), 0).await);
        ok(c.removexattr(ctx(), f, n("b")).await);
        ok(c.setxattr(ctx(), f, n("d"), n("v"), 0).await);
        // Another inode has its own count.
        let g = svc.file_with_chunk("g", 2).await;
        ok(c.setxattr(ctx(), g, n("a"), n("v"), 0).await);
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn placement_promises_are_capped_per_call_and_per_principal() {
    within(TEST_TIMEOUT, "the test", async {
        let dir = tmp();
        // R = 2: one 4 KiB chunk promises 8 KiB.
        let s = server(dir.path(), |c| {
            c.max_placement_bytes_per_call = 64 << 10;
            c.max_promised_bytes_per_principal = 96 << 10;
        })
        .await;
        let a = client_as(&s, "host-a");
        let b = client_as(&s, "host-b");
        // 9 × 4 KiB × 2 = 72 KiB in one call is over 64 KiB.
        assert!(is_limit(&refused(a.placement(ctx(), 9, 4096).await)));
        assert_eq!(ok(a.placement(ctx(), 8, 4096).await).len(), 8); // 64 KiB held
        let e = refused(a.placement(ctx(), 8, 4096).await);
        let who = identity("host-a").node().to_hex();
        assert!(is_limit(&e) && e.to_string().contains(&who), "{e}");
        assert_eq!(ok(a.placement(ctx(), 4, 4096).await).len(), 4); // 96 KiB held: the cap
                                                                    // Another caller has its own budget.
        assert_eq!(ok(b.placement(ctx(), 8, 4096).await).len(), 8);
        // The peers' next heartbeats end the promises.
        let usage = PeerUsage {
            capacity_bytes: 1 << 30,
            free_bytes: 1 << 30,
            used_bytes: 0,
            chunks: 0,
            fs: None,
            scrub: None,
        };
        for k in 1..=2u8 {
            ok(client_as(&s, &format!("peer-{k}")).heartbeat(ctx(), peer_id(k), usage).await);
        }
        assert_eq!(ok(a.placement(ctx(), 8, 4096).await).len(), 8);
    })
    .await;
}

/// Regression: a `setattr` with nanoseconds ≥ 10⁹ was stored, and every
/// mount that later stat'ed the file aborted converting it to a
/// `SystemTime`. dirsvc now refuses every invalid time a caller sends.
#[tokio::test]
async fn invalid_timestamps_are_refused_and_change_nothing() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        let c = &svc.c;
        let f = svc.file_with_chunk("f", 1).await;
        let before = ok(c.getattr(ctx(), f).await);
        let bad = [
            Timestamp { secs: 0, nanos: 1_000_000_000 },
            Timestamp { secs: 0, nanos: u32::MAX },
            Timestamp { secs: MAX_SECS + 1, nanos: 0 },
            Timestamp { secs: i64::MIN, nanos: 0 },
        ];
        for t in bad {
            for set in [
                SetAttr { mtime: Some(t), ..SetAttr::default() },
                SetAttr { atime: Some(t), perm: Some(0o600), ..SetAttr::default() },
            ] {
                let e = refused(c.setattr(ctx(), f, set).await);
                assert!(matches!(&e, DirError::Invalid(m) if m.contains("time")), "{t:?}: {e:?}");
            }
            let chunk = StoredChunk {
                id: ChunkId::of(b"new"),
                len: 100,
                replicas: svc.peers.clone(),
                epoch: 0,
                mac: [0x4d; 32],
                inline: None,
            };
            let commit = CommitLayout {
                held_ms: 0,
                attrs: Default::default(),
                size: 20,
                mtime: t,
                blocks: vec![(0, Some(chunk))],
            };
            let e = refused(c.commit_layout(ctx(), f, commit).await);
            assert!(matches!(&e, DirError::Invalid(m) if m.contains("mtime")), "{t:?}: {e:?}");
        }
        assert_eq!(ok(c.getattr(ctx(), f).await), before, "nothing changed");
        // The edges of the range are fine.
        let edge = Timestamp { secs: MAX_SECS, nanos: 999_999_999 };
        let a = ok(c.setattr(ctx(), f, SetAttr { mtime: Some(edge), ..SetAttr::default() }).await);
        assert_eq!(a.mtime, edge);
        svc.shutdown().await;
    })
    .await;
}
