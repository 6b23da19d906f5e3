//! Sessions over TCP: open marks keep unlinked files alive as orphans until
//! the last release, session close and lease expiry release marks and
//! locks, and a restart keeps orphans through the reclaim grace period.

use super::support::*;
use super::svc::*;
use common::rpc::dir::{rename_flags, DirError, LockKind, SessionId, SessionOpen};
use common::InodeId;
use std::time::{Duration, Instant};
use tarpc::context;
use testkit::within;

fn ctx() -> context::Context {
    context::current()
}

#[tokio::test]
async fn an_unlinked_open_file_stays_readable_until_its_last_release_then_its_chunk_is_freed() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        let c = &svc.c;
        let a = svc.session("a").await;
        let b = svc.session("b").await;
        let f = svc.file_with_chunk("f", 1).await;
        assert_eq!(ok(c.open_file(ctx(), a, f).await).nlink, 1);
        ok(c.open_file(ctx(), a, f).await); // counted once per session
        ok(c.open_file(ctx(), b, f).await);
        ok(c.unlink(ctx(), ROOT, n("f")).await);

        assert_eq!(refused(c.lookup(ctx(), ROOT, n("f")).await), DirError::NotFound);
        let attr = ok(c.getattr(ctx(), f).await);
        assert_eq!((attr.nlink, attr.size), (0, 10));
        let page = ok(c.get_layout(ctx(), f, 0, 10).await);
        assert_eq!(page.blocks.len(), 1, "the layout is still readable");
        assert_eq!(svc.unreferenced().await, 0);
        // Writable and changeable by inode, but it cannot get a name again.
        ok(c.setattr(ctx(), f, common::rpc::dir::SetAttr { perm: Some(0o600), ..Default::default() }).await);
        assert_eq!(refused(c.link(ctx(), f, ROOT, n("again")).await), DirError::NotFound);
        let st = ok(c.statfs(ctx()).await);
        assert_eq!(st.inodes, 2, "root and the orphan, each counted once");

        ok(c.release_file(ctx(), a, f).await);
        assert!(svc.exists(f).await, "session b still holds it");
        ok(c.release_file(ctx(), a, f).await); // idempotent
        assert!(svc.exists(f).await);
        ok(c.release_file(ctx(), b, f).await);
        assert!(!svc.exists(f).await, "freed at the last release");
        assert_eq!(svc.unreferenced().await, 1, "its chunk waits for garbage collection");
        assert_eq!(refused(c.open_file(ctx(), a, f).await), DirError::NotFound);
        assert_eq!(ok(c.statfs(ctx()).await).inodes, 1);
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_file_replaced_by_rename_is_kept_while_open_and_unopened_ones_are_freed_at_once() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        let c = &svc.c;
        let a = svc.session("a").await;
        let old = svc.file_with_chunk("target", 1).await;
        let new = svc.file_with_chunk("tmp", 2).await;
        ok(c.open_file(ctx(), a, old).await);
        ok(c.rename(ctx(), ROOT, n("tmp"), ROOT, n("target"), 0).await);
        assert_eq!(ok(c.lookup(ctx(), ROOT, n("target")).await).ino, new);
        assert_eq!(ok(c.getattr(ctx(), old).await).nlink, 0);
        assert_eq!(ok(c.get_layout(ctx(), old, 0, 10).await).blocks.len(), 1);
        assert_eq!(svc.unreferenced().await, 0);
        ok(c.release_file(ctx(), a, old).await);
        assert!(!svc.exists(old).await);
        assert_eq!(svc.unreferenced().await, 1);

        // Not open: freed by the rename itself (`Svc` has no linger).
        let third = svc.file_with_chunk("other", 3).await;
        ok(c.rename(ctx(), ROOT, n("other"), ROOT, n("target"), 0).await);
        assert!(!svc.exists(new).await);
        assert_eq!(svc.unreferenced().await, 2);
        // A file with a second name is not orphaned by losing one.
        ok(c.link(ctx(), third, ROOT, n("second")).await);
        ok(c.open_file(ctx(), a, third).await);
        ok(c.unlink(ctx(), ROOT, n("target")).await);
        assert_eq!(ok(c.getattr(ctx(), third).await).nlink, 1);
        ok(c.release_file(ctx(), a, third).await);
        assert!(svc.exists(third).await, "still named");
        // Exchange never orphans anything.
        let x = svc.file_with_chunk("x", 4).await;
        ok(c.rename(ctx(), ROOT, n("x"), ROOT, n("second"), rename_flags::EXCHANGE).await);
        assert_eq!(ok(c.lookup(ctx(), ROOT, n("second")).await).ino, x);
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_unopened_file_that_loses_its_name_stays_openable_for_the_linger_then_is_freed() {
    // The kernel opens by the inode its lookup found a moment before; an
    // editor's save (rename over the name) in between must not make that
    // open fail.
    within(TEST_TIMEOUT, "the test", async {
        let linger = Duration::from_millis(600);
        let svc = Svc::start(|cfg| cfg.unlinked_linger = linger).await;
        let c = &svc.c;
        let a = svc.session("a").await;
        let old = svc.file_with_chunk("target", 1).await;
        let new = svc.file_with_chunk("tmp", 2).await;
        let gone = svc.file_with_chunk("gone", 3).await;
        let held = svc.file_with_chunk("held", 4).await;
        let replaced_at = Instant::now();
        ok(c.rename(ctx(), ROOT, n("tmp"), ROOT, n("target"), 0).await);
        ok(c.unlink(ctx(), ROOT, n("gone")).await);
        ok(c.unlink(ctx(), ROOT, n("held")).await);
        assert_eq!(ok(c.lookup(ctx(), ROOT, n("target")).await).ino, new);
        // Within the linger: the old inodes open, with their layouts.
        let attr = ok(c.open_file(ctx(), a, old).await);
        assert_eq!((attr.nlink, attr.size), (0, 10));
        assert_eq!(ok(c.get_layout(ctx(), old, 0, 10).await).blocks.len(), 1);
        assert!(svc.exists(gone).await);
        ok(c.open_file(ctx(), a, held).await);
        assert_eq!(svc.unreferenced().await, 0);
        assert!(replaced_at.elapsed() < linger, "the checks above ran within the linger");

        // After it: the unopened one is freed, the opened ones wait for
        // their release.
        let svc_ref = &svc;
        let wait_gone = |ino: InodeId, what: &'static str| async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while svc_ref.exists(ino).await {
                assert!(Instant::now() < deadline, "{what} was never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        wait_gone(gone, "the unopened orphan").await;
        assert!(replaced_at.elapsed() >= linger, "freed only after the linger");
        assert_eq!(refused(c.open_file(ctx(), a, gone).await), DirError::NotFound);
        assert!(svc.exists(old).await && svc.exists(held).await, "held open");
        // The last release starts another linger: a kernel may still open
        // the inode its lookup found before the save.
        let released_at = Instant::now();
        ok(c.release_file(ctx(), a, old).await);
        ok(c.release_file(ctx(), a, held).await);
        ok(c.open_file(ctx(), a, old).await);
        ok(c.release_file(ctx(), a, old).await);
        assert!(released_at.elapsed() < linger, "the checks above ran within the linger");
        wait_gone(old, "the released orphan").await;
        wait_gone(held, "the released orphan").await;
        assert!(released_at.elapsed() >= linger, "freed only after the linger");
        assert_eq!(svc.unreferenced().await, 3);
        assert_eq!(ok(c.statfs(ctx()).await).inodes, 2, "root and the new file");
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn session_calls_need_a_live_session_and_close_is_idempotent() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        let c = &svc.c;
        let f = svc.file_with_chunk("f", 1).await;
        let bogus = SessionId(12345);
        assert_eq!(refused(c.open_file(ctx(), bogus, f).await), DirError::NoSession);
        assert_eq!(refused(c.renew_session(ctx(), bogus).await), DirError::NoSession);
        assert_eq!(refused(c.poll_changes(ctx(), bogus, 0, 0).await), DirError::NoSession);
        let l = posix(f, 1, LockKind::Write, 0, 9);
        assert_eq!(refused(c.set_lock(ctx(), bogus, l.clone(), 0).await), DirError::NoSession);
        assert_eq!(refused(c.get_lock(ctx(), bogus, l.clone()).await), DirError::NoSession);
        ok(c.release_file(ctx(), bogus, f).await);
        ok(c.close_session(ctx(), bogus).await);

        let a = svc.session("a").await;
        let b = svc.session("b").await;
        assert_ne!(a, b);
        assert_ne!(a, SessionId(0));
        ok(c.renew_session(ctx(), a).await);
        ok(c.open_file(ctx(), a, f).await);
        ok(c.set_lock(ctx(), a, l.clone(), 0).await);
        ok(c.unlink(ctx(), ROOT, n("f")).await);
        assert!(svc.exists(f).await);
        ok(c.close_session(ctx(), a).await);
        assert!(!svc.exists(f).await, "closing the session released its mark");
        assert_eq!(svc.unreferenced().await, 1);
        assert_eq!(refused(c.renew_session(ctx(), a).await), DirError::NoSession);
        ok(c.close_session(ctx(), a).await);
        // Its lock went with it.
        let g = svc.file_with_chunk("g", 2).await;
        let lg = posix(g, 1, LockKind::Write, 0, 9);
        ok(c.set_lock(ctx(), b, lg, 0).await);
        assert_eq!(ok(c.get_lock(ctx(), b, posix(f, 9, LockKind::Write, 0, 9)).await), None);
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_expired_session_loses_its_orphans_and_locks_while_a_renewing_one_lives_on() {
    within(TEST_TIMEOUT, "the test", async {
        let lease = Duration::from_millis(400);
        let svc = Svc::start(|c| c.session_lease = lease).await;
        let c = &svc.c;
        let grant =
            ok(c.open_session(ctx(), SessionOpen { label: "dies".into(), ..Default::default() }).await);
        assert_eq!(grant.lease_ms, 400);
        let dead = grant.id;
        let alive = svc.session("renews").await;
        let f = svc.file_with_chunk("f", 1).await;
        let g = svc.file_with_chunk("g", 2).await;
        ok(c.open_file(ctx(), dead, f).await);
        ok(c.open_file(ctx(), alive, g).await);
        ok(c.set_lock(ctx(), dead, posix(f, 1, LockKind::Write, 0, u64::MAX), 0).await);
        ok(c.unlink(ctx(), ROOT, n("f")).await);
        ok(c.unlink(ctx(), ROOT, n("g")).await);

        // A waiter on the dead session's lock is granted once it expires.
        let start = Instant::now();
        let waiter = {
            let c = c.clone();
            tokio::spawn(
                async move { c.set_lock(ctx(), alive, posix(f, 7, LockKind::Read, 0, 0), 5000).await },
            )
        };
        while start.elapsed() < lease * 3 {
            ok(c.renew_session(ctx(), alive).await);
            tokio::time::sleep(lease / 4).await;
        }
        ok(waiter.await.unwrap());
        let waited = start.elapsed();
        assert!(waited >= lease, "granted only after the lease ran out ({waited:?})");
        assert_eq!(refused(c.renew_session(ctx(), dead).await), DirError::NoSession);
        assert!(!svc.exists(f).await, "the expired session's orphan was freed");
        assert!(svc.exists(g).await, "the renewing session's orphan is kept");
        ok(c.renew_session(ctx(), alive).await);
        ok(c.release_file(ctx(), alive, g).await);
        assert!(!svc.exists(g).await);
        assert_eq!(svc.unreferenced().await, 2);
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn open_file_racing_unlink_either_keeps_the_file_or_finds_it_gone() {
    // Regression guard for the race the open-marks mutex closes: an
    // open_file that checks the inode before an unlink commits and marks
    // it after must never leave a mark on a freed inode. (With a linger
    // every such open finds the orphan: the race needs it off, as `Svc`
    // has it.)
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        let a = svc.session("racer").await;
        // Two connections, so neither request queues behind the other.
        let other = svc.connect().await;
        let (mut kept, mut gone) = (0, 0);
        for i in 0..300u32 {
            let name = format!("f{i}");
            let f = ok(svc.c.create(ctx(), ROOT, n(&name), file()).await).ino;
            // Vary who starts first and by how much.
            let open = async {
                for _ in 0..(i % 3) * (i % 7) {
                    tokio::task::yield_now().await;
                }
                svc.c.open_file(ctx(), a, f).await
            };
            let unlink = async {
                for _ in 0..(i % 2) * (i % 5) {
                    tokio::task::yield_now().await;
                }
                other.unlink(ctx(), ROOT, n(&name)).await
            };
            let (opened, unlinked) = tokio::join!(open, unlink);
            ok(unlinked);
            match opened.unwrap() {
                Ok(_) => {
                    kept += 1;
                    assert_eq!(ok(svc.c.getattr(ctx(), f).await).nlink, 0, "opened: kept as an orphan");
                    ok(svc.c.release_file(ctx(), a, f).await);
                    assert!(!svc.exists(f).await);
                }
                Err(DirError::NotFound) => {
                    gone += 1;
                    assert!(!svc.exists(f).await);
                }
                Err(e) => panic!("open_file: {e:?}"),
            }
        }
        eprintln!("open_file vs unlink: {kept} kept, {gone} gone");
        assert!(kept > 0 && gone > 0, "both orders happened ({kept} kept, {gone} gone)");
        assert_eq!(ok(svc.c.statfs(ctx()).await).inodes, 1, "nothing leaked");
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn after_a_restart_a_reclaimed_orphan_survives_and_new_locks_wait_for_the_grace_period() {
    within(TEST_TIMEOUT, "the test", async {
        let mut svc = Svc::start(|_| {}).await;
        let a = svc.session("client-a").await;
        let f = svc.file_with_chunk("f", 1).await;
        let g = svc.file_with_chunk("g", 2).await;
        ok(svc.c.open_file(ctx(), a, f).await);
        let held = posix(g, 3, LockKind::Write, 0, 99);
        ok(svc.c.set_lock(ctx(), a, held.clone(), 0).await);
        ok(svc.c.unlink(ctx(), ROOT, n("f")).await);

        let grace = Duration::from_secs(5);
        svc.restart(|c| c.grace_period = Some(grace)).await;
        let started = Instant::now();
        let c = &svc.c;
        assert_eq!(ok(c.getattr(ctx(), f).await).nlink, 0, "the orphan waits for its holder");
        assert_eq!(refused(c.renew_session(ctx(), a).await), DirError::NoSession);
        let b = svc.session("client-b").await;
        let other = posix(g, 1, LockKind::Read, 200, 300);
        assert_eq!(refused(c.set_lock(ctx(), b, other.clone(), 0).await), DirError::Grace);
        // An unlink during the grace period orphans even an unopened file:
        // a client that has not reclaimed yet may hold it.
        let h = svc.file_with_chunk("h", 3).await;
        ok(c.unlink(ctx(), ROOT, n("h")).await);
        assert_eq!(ok(c.getattr(ctx(), h).await).nlink, 0);

        let grant = ok(c
            .open_session(
                ctx(),
                SessionOpen {
                    label: "client-a".into(),
                    reclaim: Some(a),
                    open_inodes: vec![f, InodeId(9999)],
                    locks: vec![held.clone()],
                },
            )
            .await);
        assert_eq!(grant.id, a);
        assert_eq!(grant.lost_inodes, vec![InodeId(9999)]);
        assert!(grant.lost_locks.is_empty());
        // Every recorded session is back: the grace period ends early.
        while c.set_lock(ctx(), b, other.clone(), 0).await.unwrap() == Err(DirError::Grace) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ended = started.elapsed();
        eprintln!("grace period ended {ended:?} after the restart (limit {grace:?})");
        assert!(ended < grace, "ended early once all sessions reclaimed ({ended:?})");
        assert!(svc.exists(f).await, "reclaimed: kept");
        assert!(!svc.exists(h).await, "not reclaimed by anyone: freed at the end of grace");
        let conflict = ok(c.get_lock(ctx(), b, posix(g, 1, LockKind::Write, 50, 60)).await).unwrap();
        assert_eq!((conflict.lock, conflict.same_session), (held, false), "the reclaimed lock is held");
        ok(c.release_file(ctx(), a, f).await);
        assert!(!svc.exists(f).await);
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_orphan_not_reclaimed_within_the_grace_period_is_freed_and_reported_lost() {
    within(TEST_TIMEOUT, "the test", async {
        let mut svc = Svc::start(|_| {}).await;
        let a = svc.session("gone-for-long").await;
        let f = svc.file_with_chunk("f", 1).await;
        let g = svc.file_with_chunk("g", 2).await;
        ok(svc.c.open_file(ctx(), a, f).await);
        ok(svc.c.open_file(ctx(), a, g).await);
        ok(svc.c.unlink(ctx(), ROOT, n("f")).await);
        let lock = posix(g, 1, LockKind::Write, 0, 0);
        ok(svc.c.set_lock(ctx(), a, lock.clone(), 0).await);

        let grace = Duration::from_millis(600);
        svc.restart(|c| c.grace_period = Some(grace)).await;
        let started = Instant::now();
        assert!(svc.exists(f).await, "kept during the grace period");
        let b = svc.session("quick").await;
        let l = posix(g, 2, LockKind::Write, 0, 0);
        while svc.c.set_lock(ctx(), b, l.clone(), 0).await.unwrap() == Err(DirError::Grace) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ended = started.elapsed();
        assert!(ended >= grace - Duration::from_millis(50), "waited for the grace period ({ended:?})");
        assert!(!svc.exists(f).await, "freed at the end of the grace period");
        assert_eq!(svc.unreferenced().await, 1);

        // Coming back late: what still exists and does not conflict is
        // granted, the rest is reported lost.
        let grant = ok(svc
            .c
            .open_session(
                ctx(),
                SessionOpen {
                    label: "late".into(),
                    reclaim: Some(a),
                    open_inodes: vec![f, g],
                    locks: vec![lock.clone()],
                },
            )
            .await);
        assert_eq!(grant.id, a);
        assert_eq!(grant.lost_inodes, vec![f]);
        assert_eq!(grant.lost_locks, vec![lock], "session b took that byte meanwhile");
        ok(svc.c.unlink(ctx(), ROOT, n("g")).await);
        assert!(svc.exists(g).await, "the late reclaim's open mark holds it");
        ok(svc.c.close_session(ctx(), a).await);
        assert!(!svc.exists(g).await);
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_restart_with_no_live_session_has_no_grace_period_and_frees_leftover_orphans() {
    within(TEST_TIMEOUT, "the test", async {
        let mut svc = Svc::start(|_| {}).await;
        let a = svc.session("closes").await;
        let f = svc.file_with_chunk("f", 1).await;
        ok(svc.c.open_file(ctx(), a, f).await);
        ok(svc.c.unlink(ctx(), ROOT, n("f")).await);
        svc.restart(|c| c.grace_period = Some(Duration::from_secs(30))).await;
        // The session is recorded: grace. Close it instead of reclaiming.
        ok(svc.c.close_session(ctx(), a).await);
        let b = svc.session("b").await;
        let l = posix(f, 1, LockKind::Write, 0, 0);
        let g = svc.file_with_chunk("g", 2).await;
        let lg = posix(g, 1, LockKind::Write, 0, 0);
        let t = Instant::now();
        while svc.c.set_lock(ctx(), b, lg.clone(), 0).await.unwrap() == Err(DirError::Grace) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the last recorded session left: grace over");
        assert!(!svc.exists(f).await);
        assert_eq!(refused(svc.c.set_lock(ctx(), b, l, 0).await), DirError::NotFound);
        ok(svc.c.close_session(ctx(), b).await);

        // Nothing alive at the restart: locks work at once.
        svc.restart(|c| c.grace_period = Some(Duration::from_secs(30))).await;
        let c2 = svc.session("c").await;
        ok(svc.c.set_lock(ctx(), c2, lg, 0).await);
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "measurement, not a check"]
async fn measure_session_call_rates_over_one_connection() {
    let svc = Svc::start(|_| {}).await;
    let c = &svc.c;
    let a = svc.session("bench").await;
    let f = svc.file_with_chunk("f", 1).await;
    const N: u32 = 2000;
    let t = Instant::now();
    for _ in 0..N {
        ok(c.open_file(ctx(), a, f).await);
        ok(c.release_file(ctx(), a, f).await);
    }
    let per = t.elapsed() / (2 * N);
    eprintln!("open_file/release_file: {per:?} per call");
    let t = Instant::now();
    for i in 0..N {
        let l = posix(f, 1, LockKind::Write, u64::from(i), u64::from(i));
        ok(c.set_lock(ctx(), a, l, 0).await);
        ok(c.unlock(ctx(), a, f, 1, common::rpc::dir::LockFlavor::Posix, u64::from(i), u64::from(i)).await);
    }
    let per = t.elapsed() / (2 * N);
    eprintln!("set_lock/unlock: {per:?} per call");
    let t = Instant::now();
    for i in 0..N {
        ok(c.create(ctx(), ROOT, n(&format!("u{i}")), file()).await);
    }
    let create = t.elapsed() / N;
    let t = Instant::now();
    for i in 0..N {
        ok(c.unlink(ctx(), ROOT, n(&format!("u{i}"))).await);
    }
    eprintln!("create: {create:?}, unlink: {:?} per call", t.elapsed() / N);
    svc.shutdown().await;
}

#[tokio::test]
async fn a_create_open_sent_again_with_its_request_id_under_a_new_session_opens_the_file_it_made() {
    use common::rpc::dir::{FileKind, Mutation, NewInode};
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        let c = &svc.c;
        let new = NewInode { kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0 };
        let op = |session| Mutation::CreateOpen { session, parent: ROOT, name: n("f"), new: new.clone() };
        let a = svc.session("a").await;
        let made = ok(c.mutate(ctx(), 77, op(a)).await).attr().unwrap();
        // The session is lost before the answer reaches the client (a
        // failover); the client reclaims a session and sends the same
        // request again.
        ok(c.close_session(ctx(), a).await);
        let b = svc.session("b").await;
        let again = ok(c.mutate(ctx(), 77, op(b)).await).attr().unwrap();
        assert_eq!(again.ino, made.ino, "the replay answers the file the first attempt made");
        // Another request for the same name is a new create.
        assert_eq!(refused(c.mutate(ctx(), 78, op(b)).await), DirError::Exists);
        // Session b holds it open: unlinked, it stays until b releases it.
        ok(c.unlink(ctx(), ROOT, n("f")).await);
        assert!(svc.exists(made.ino).await, "the replay marked the file open under session b");
        ok(c.release_file(ctx(), b, made.ino).await);
        assert!(!svc.exists(made.ino).await);
        svc.shutdown().await;
    })
    .await;
}
