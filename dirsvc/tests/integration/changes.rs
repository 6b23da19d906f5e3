//! The change feed over TCP: what each mutation records and in which
//! order, waiting for a change, overflow of the bounded log, and numbers
//! from an earlier run.

use super::support::*;
use super::svc::*;
use common::rpc::dir::{
    xattr_flags, Change, ChangeBatch, CommitLayout, DirError, NewSymlink, SessionOpen, SetAttr,
};
use common::rpc::Role;
use common::time::Timestamp;
use common::InodeId;
use std::time::{Duration, Instant};
use tarpc::context;
use testkit::within;

fn ctx() -> context::Context {
    context::current()
}

fn entry(ino: InodeId, parent: InodeId, name: &str) -> Change {
    Change { ino, entry: Some((parent, n(name))) }
}

fn attr(ino: InodeId) -> Change {
    Change { ino, entry: None }
}

#[tokio::test]
async fn every_mutation_is_recorded_in_commit_order_and_refusals_are_not() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        // The watcher's session speaks on `svc.c`; the mutations come from
        // another connection (its own would not be in its feed).
        let s = svc.session("watcher").await;
        let mutator = svc.connect_as(Role::Client).await.0;
        let c = &mutator;
        let t = Instant::now();
        let start = ok(svc.c.poll_changes(ctx(), s, 0, 5000).await);
        assert!(t.elapsed() < Duration::from_secs(1), "the first poll never waits");
        assert!(start.changes.is_empty() && !start.overflow);

        let mut want = Vec::new();
        let d = ok(c.mkdir(ctx(), ROOT, n("d"), 0o755, 0, 0).await).ino;
        want.extend([entry(d, ROOT, "d"), attr(ROOT)]);
        let f = ok(c.create(ctx(), d, n("f"), file()).await).ino;
        want.extend([entry(f, d, "f"), attr(d)]);
        assert_eq!(refused(c.create(ctx(), d, n("f"), file()).await), DirError::Exists);
        ok(c.setattr(ctx(), f, SetAttr { perm: Some(0o600), ..Default::default() }).await);
        want.push(attr(f));
        let commit = CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
            size: 0,
            mtime: Timestamp::now(),
            blocks: vec![],
        };
        ok(c.commit_layout(ctx(), f, commit).await);
        want.push(attr(f));
        ok(c.setxattr(ctx(), f, n("k"), n("v"), xattr_flags::CREATE).await);
        want.push(attr(f));
        ok(c.removexattr(ctx(), f, n("k")).await);
        want.push(attr(f));
        ok(c.link(ctx(), f, ROOT, n("hard")).await);
        want.extend([entry(f, ROOT, "hard"), attr(ROOT)]);
        let open = SessionOpen { label: "mutator".into(), ..SessionOpen::default() };
        let ms = ok(c.open_session(ctx(), open).await).id;
        let (ino, _) = ok(c.reserve_inodes(ctx(), ms, 1).await);
        let new = NewSymlink { ino, target: n("target"), size: 6, uid: 0, gid: 0 };
        let l = ok(c.symlink(ctx(), ms, ROOT, n("l"), new).await).ino;
        assert_eq!(l, ino);
        want.extend([entry(l, ROOT, "l"), attr(ROOT)]);
        ok(c.rename(ctx(), d, n("f"), ROOT, n("f2"), 0).await);
        want.extend([entry(f, d, "f"), entry(f, ROOT, "f2"), attr(d), attr(ROOT)]);
        let x = ok(c.create(ctx(), ROOT, n("x"), file()).await).ino;
        want.extend([entry(x, ROOT, "x"), attr(ROOT)]);
        ok(c.rename(ctx(), ROOT, n("x"), ROOT, n("f2"), 0).await);
        want.extend([entry(x, ROOT, "x"), entry(x, ROOT, "f2"), attr(ROOT), attr(f)]);
        ok(c.unlink(ctx(), ROOT, n("hard")).await);
        want.extend([entry(f, ROOT, "hard"), attr(ROOT)]);
        ok(c.rmdir(ctx(), ROOT, n("d")).await);
        want.extend([entry(d, ROOT, "d"), attr(ROOT)]);
        assert_eq!(refused(c.rmdir(ctx(), ROOT, n("d")).await), DirError::NotFound);

        let got = ok(svc.c.poll_changes(ctx(), s, start.last, 0).await);
        assert!(!got.overflow);
        assert_eq!(got.changes, want);
        assert_eq!(got.last, start.last + want.len() as u64);
        // Resuming from any point gives the rest.
        let tail = ok(svc.c.poll_changes(ctx(), s, start.last + 5, 0).await);
        assert_eq!(tail.changes, want[5..].to_vec());
        let none = ok(svc.c.poll_changes(ctx(), s, got.last, 0).await);
        assert_eq!(none, ChangeBatch { changes: vec![], last: got.last, overflow: false });
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_poll_waits_for_a_change_made_by_another_client() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        let s = svc.session("watcher").await;
        let last = ok(svc.c.poll_changes(ctx(), s, 0, 0).await).last;
        let t = Instant::now();
        let idle = ok(svc.c.poll_changes(ctx(), s, last, 200).await);
        let waited = t.elapsed();
        assert!(idle.changes.is_empty() && !idle.overflow && idle.last == last);
        assert!(waited >= Duration::from_millis(190) && waited < Duration::from_secs(3), "{waited:?}");

        // A wait longer than the call's deadline is cut short so the
        // answer beats the deadline.
        let mut short = ctx();
        short.deadline = Instant::now() + Duration::from_secs(1);
        let t = Instant::now();
        let cut = ok(svc.c.poll_changes(short, s, last, 10_000).await);
        assert!(cut.changes.is_empty() && !cut.overflow);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

        let poller = {
            let c = svc.c.clone();
            tokio::spawn(async move {
                let b = c.poll_changes(ctx(), s, last, 5000).await;
                (b, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        let other = svc.connect_as(Role::Client).await.0;
        let made = Instant::now();
        let f = ok(other.create(ctx(), ROOT, n("new"), file()).await).ino;
        let (b, woke) = poller.await.unwrap();
        let b = ok(b);
        let latency = woke - made;
        eprintln!("poll_changes returned {latency:?} after the create was sent");
        assert!(latency < Duration::from_millis(500), "{latency:?}");
        assert_eq!(b.changes[0], entry(f, ROOT, "new"));
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_reader_that_fell_behind_the_bounded_log_is_told_to_drop_its_caches() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|c| c.change_feed_capacity = 8).await;
        let s = svc.session("slow").await;
        let m = svc.connect_as(Role::Client).await.0;
        let last = ok(svc.c.poll_changes(ctx(), s, 0, 0).await).last;
        for i in 0..3 {
            ok(m.create(ctx(), ROOT, n(&format!("a{i}")), file()).await);
        }
        let fine = ok(svc.c.poll_changes(ctx(), s, last, 0).await);
        assert_eq!((fine.changes.len(), fine.overflow), (6, false));
        for i in 0..10 {
            ok(m.create(ctx(), ROOT, n(&format!("b{i}")), file()).await);
        }
        let lost = ok(svc.c.poll_changes(ctx(), s, fine.last, 2000).await);
        assert!(lost.overflow, "20 changes since, 8 kept");
        assert!(lost.changes.is_empty());
        assert_eq!(lost.last, fine.last + 20);
        // From the point it was handed, the reader is back in step.
        ok(m.create(ctx(), ROOT, n("c"), file()).await);
        let next = ok(svc.c.poll_changes(ctx(), s, lost.last, 0).await);
        assert_eq!((next.changes.len(), next.overflow), (2, false));
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn sequence_numbers_of_an_earlier_run_report_overflow_after_a_restart() {
    within(TEST_TIMEOUT, "the test", async {
        let mut svc = Svc::start(|_| {}).await;
        let s = svc.session("watcher").await;
        ok(svc.c.create(ctx(), ROOT, n("before"), file()).await);
        let old = ok(svc.c.poll_changes(ctx(), s, 0, 0).await).last;
        ok(svc.c.close_session(ctx(), s).await);
        svc.restart(|_| {}).await;
        let s = svc.session("watcher").await;
        let b = ok(svc.c.poll_changes(ctx(), s, old, 1000).await);
        assert!(b.overflow, "a number from the previous run");
        assert!(b.changes.is_empty());
        assert!(b.last > old, "this run's numbers start above the last run's");
        let fresh = ok(svc.c.poll_changes(ctx(), s, 0, 0).await);
        assert_eq!(fresh.last, b.last);
        svc.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_sessions_own_mutations_are_left_out_of_its_feed() {
    within(TEST_TIMEOUT, "the test", async {
        let svc = Svc::start(|_| {}).await;
        // `svc.c` carries the session, so its mutations are its own.
        let s = svc.session("self").await;
        let start = ok(svc.c.poll_changes(ctx(), s, 0, 0).await).last;
        let own = ok(svc.c.create(ctx(), ROOT, n("mine"), file()).await).ino;
        let other = svc.connect_as(Role::Client).await.0;
        let theirs = ok(other.create(ctx(), ROOT, n("theirs"), file()).await).ino;
        let got = ok(svc.c.poll_changes(ctx(), s, start, 0).await);
        assert_eq!(got.changes, vec![entry(theirs, ROOT, "theirs"), attr(ROOT)]);
        assert_eq!(got.last, start + 4, "the own changes are passed over, not re-read");
        assert!(own != theirs);
        svc.shutdown().await;
    })
    .await;
}
