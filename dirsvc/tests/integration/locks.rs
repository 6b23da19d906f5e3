//! Locks over TCP: POSIX conflicts between sessions and owners, the same
//! owner's upgrades, splits and merges, flock independent of POSIX,
//! waiting for an unlock, timing out, and argument checks.

use super::svc::*;
use common::rpc::dir::{DirError, LockFlavor, LockKind};
use common::InodeId;
use std::time::{Duration, Instant};
use tarpc::context;
use testkit::within;

fn ctx() -> context::Context {
    context::current()
}

#[tokio::test]
async fn readers_share_a_writer_is_refused_and_get_lock_names_the_holder() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        let c = &svc.c;
        let (a, b) = (svc.session("a").await, svc.session("b").await);
        let f = svc.file_with_chunk("f", 1).await;
        ok(c.set_lock(ctx(), a, posix(f, 1, LockKind::Read, 0, 99), 0).await);
        ok(c.set_lock(ctx(), b, posix(f, 1, LockKind::Read, 50, 149), 0).await);
        assert_eq!(
            refused(c.set_lock(ctx(), b, posix(f, 2, LockKind::Write, 0, 10), 0).await),
            DirError::WouldBlock
        );
        let got = ok(c.get_lock(ctx(), b, posix(f, 2, LockKind::Write, 0, 10)).await).unwrap();
        assert_eq!(got.lock, posix(f, 1, LockKind::Read, 0, 99));
        assert_eq!(got.lock.pid, 1001);
        assert!(!got.same_session);
        // Two owners of one session conflict like two processes.
        let got = ok(c.get_lock(ctx(), b, posix(f, 9, LockKind::Write, 120, 130)).await).unwrap();
        assert!(got.same_session);
        // The owner itself and the bytes past every lock are free.
        assert_eq!(ok(c.get_lock(ctx(), a, posix(f, 1, LockKind::Write, 0, 40)).await), None);
        assert_eq!(ok(c.get_lock(ctx(), a, posix(f, 5, LockKind::Write, 150, u64::MAX)).await), None);
        ok(c.set_lock(ctx(), a, posix(f, 5, LockKind::Write, 150, u64::MAX), 0).await);
        // Locks are per inode.
        let g = svc.file_with_chunk("g", 2).await;
        ok(c.set_lock(ctx(), b, posix(g, 2, LockKind::Write, 0, u64::MAX), 0).await);
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_same_owner_upgrades_splits_and_merges_its_ranges() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        let c = &svc.c;
        let (a, b) = (svc.session("a").await, svc.session("b").await);
        let f = svc.file_with_chunk("f", 1).await;
        let probe = |start, end| posix(f, 99, LockKind::Read, start, end);
        let blocked = |start, end| {
            let c = c.clone();
            async move { ok(c.get_lock(ctx(), b, probe(start, end)).await).map(|x| (x.lock.start, x.lock.end)) }
        };
        ok(c.set_lock(ctx(), a, posix(f, 1, LockKind::Read, 0, 99), 0).await);
        // Upgrade the middle: a write range splits the read lock in three.
        ok(c.set_lock(ctx(), a, posix(f, 1, LockKind::Write, 40, 59), 0).await);
        assert_eq!(blocked(0, 39).await, None, "readers still share the ends");
        assert_eq!(blocked(0, 50).await, Some((40, 59)));
        // Downgrade: the three pieces merge back into one read lock.
        ok(c.set_lock(ctx(), a, posix(f, 1, LockKind::Read, 40, 59), 0).await);
        let w = ok(c.get_lock(ctx(), b, posix(f, 99, LockKind::Write, 10, 10)).await).unwrap();
        assert_eq!((w.lock.start, w.lock.end, w.lock.kind), (0, 99, LockKind::Read));
        // Adjacent ranges of the same kind merge.
        ok(c.set_lock(ctx(), a, posix(f, 1, LockKind::Read, 100, 199), 0).await);
        let w = ok(c.get_lock(ctx(), b, posix(f, 99, LockKind::Write, 150, 150)).await).unwrap();
        assert_eq!((w.lock.start, w.lock.end), (0, 199));
        // Unlock splits; unlock of everything releases the rest.
        ok(c.unlock(ctx(), a, f, 1, LockFlavor::Posix, 50, 149).await);
        ok(c.set_lock(ctx(), b, posix(f, 2, LockKind::Write, 50, 149), 0).await);
        assert_eq!(
            refused(c.set_lock(ctx(), b, posix(f, 2, LockKind::Write, 49, 49), 0).await),
            DirError::WouldBlock
        );
        ok(c.unlock(ctx(), a, f, 1, LockFlavor::Posix, 0, u64::MAX).await);
        ok(c.unlock(ctx(), a, f, 1, LockFlavor::Posix, 0, u64::MAX).await); // idempotent
        ok(c.set_lock(ctx(), b, posix(f, 2, LockKind::Write, 0, u64::MAX), 0).await);
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn flock_and_posix_locks_are_independent() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        let c = &svc.c;
        let (a, b) = (svc.session("a").await, svc.session("b").await);
        let f = svc.file_with_chunk("f", 1).await;
        ok(c.set_lock(ctx(), a, posix(f, 1, LockKind::Write, 0, u64::MAX), 0).await);
        ok(c.set_lock(ctx(), b, flock(f, 1, LockKind::Write), 0).await);
        assert_eq!(refused(c.set_lock(ctx(), a, flock(f, 2, LockKind::Read), 0).await), DirError::WouldBlock);
        // Two open files (owners) of one session conflict, as two fds do.
        assert_eq!(refused(c.set_lock(ctx(), b, flock(f, 2, LockKind::Read), 0).await), DirError::WouldBlock);
        // An flock is the whole file whatever range is sent.
        let mut partial = flock(f, 3, LockKind::Read);
        partial.start = 10;
        partial.end = 20;
        let got = ok(c.get_lock(ctx(), a, partial).await).unwrap();
        assert_eq!((got.lock.flavor, got.lock.start, got.lock.end), (LockFlavor::Flock, 0, u64::MAX));
        // Converting an flock replaces it; unlocking it frees the file for
        // other flocks but leaves POSIX locks alone.
        ok(c.set_lock(ctx(), b, flock(f, 1, LockKind::Read), 0).await);
        ok(c.set_lock(ctx(), a, flock(f, 4, LockKind::Read), 0).await);
        ok(c.unlock(ctx(), a, f, 4, LockFlavor::Flock, 0, u64::MAX).await);
        ok(c.unlock(ctx(), b, f, 1, LockFlavor::Flock, 0, u64::MAX).await);
        ok(c.unlock(ctx(), b, f, 2, LockFlavor::Flock, 0, u64::MAX).await);
        ok(c.set_lock(ctx(), a, flock(f, 2, LockKind::Write), 0).await);
        assert_eq!(
            refused(c.set_lock(ctx(), b, posix(f, 9, LockKind::Read, 5, 5), 0).await),
            DirError::WouldBlock,
            "a's POSIX lock is still there"
        );
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_waiter_gets_the_lock_as_soon_as_it_is_released_or_gives_up_at_its_deadline() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        let c = &svc.c;
        let (a, b) = (svc.session("a").await, svc.session("b").await);
        let f = svc.file_with_chunk("f", 1).await;
        ok(c.set_lock(ctx(), a, posix(f, 1, LockKind::Write, 0, 9), 0).await);

        // Times out.
        let t = Instant::now();
        assert_eq!(
            refused(c.set_lock(ctx(), b, posix(f, 2, LockKind::Read, 5, 5), 300).await),
            DirError::WouldBlock
        );
        let waited = t.elapsed();
        eprintln!("lock wait of 300 ms gave up after {waited:?}");
        assert!(waited >= Duration::from_millis(290) && waited < Duration::from_secs(3), "{waited:?}");

        // A wait longer than the call's deadline gives up before it.
        let mut short = ctx();
        short.deadline = Instant::now() + Duration::from_secs(1);
        let t = Instant::now();
        assert_eq!(
            refused(c.set_lock(short, b, posix(f, 2, LockKind::Read, 5, 5), 10_000).await),
            DirError::WouldBlock
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

        // Granted right after the unlock; an unlock elsewhere does not
        // grant it early.
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move {
                let r = c.set_lock(ctx(), b, posix(f, 2, LockKind::Write, 0, 0), 5000).await;
                (r, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        ok(c.set_lock(ctx(), a, posix(f, 1, LockKind::Write, 20, 29), 0).await);
        ok(c.unlock(ctx(), a, f, 1, LockFlavor::Posix, 20, 29).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "still blocked by bytes 0..=9");
        let released = Instant::now();
        ok(c.unlock(ctx(), a, f, 1, LockFlavor::Posix, 0, 9).await);
        let (r, granted) = waiter.await.unwrap();
        ok(r);
        let latency = granted - released;
        eprintln!("waiter granted {latency:?} after the unlock");
        assert!(latency < Duration::from_millis(500), "{latency:?}");
        assert_eq!(
            refused(c.set_lock(ctx(), a, posix(f, 1, LockKind::Read, 0, 0), 0).await),
            DirError::WouldBlock
        );

        // Closing the holder's session wakes a waiter too.
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.set_lock(ctx(), a, posix(f, 1, LockKind::Read, 0, 0), 5000).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        ok(c.close_session(ctx(), b).await);
        ok(waiter.await.unwrap());
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn bad_lock_requests_are_refused() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        let c = &svc.c;
        let a = svc.session("a").await;
        let f = svc.file_with_chunk("f", 1).await;
        assert_eq!(
            refused(c.set_lock(ctx(), a, posix(InodeId(999), 1, LockKind::Read, 0, 0), 0).await),
            DirError::NotFound
        );
        assert!(matches!(
            refused(c.set_lock(ctx(), a, posix(f, 1, LockKind::Read, 9, 3), 0).await),
            DirError::Invalid(_)
        ));
        assert!(matches!(
            refused(c.unlock(ctx(), a, f, 1, LockFlavor::Posix, 9, 3).await),
            DirError::Invalid(_)
        ));
        assert!(matches!(
            refused(c.get_lock(ctx(), a, posix(f, 1, LockKind::Read, 9, 3)).await),
            DirError::Invalid(_)
        ));
        svc.shutdown().await;
    })
    .await;
}
