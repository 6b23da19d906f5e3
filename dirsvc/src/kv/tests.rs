//! Tests of the layer's transaction semantics and group commit, on the
//! redb engine (the etcd engine runs the same engine checks in
//! `tests/integration/kv_etcd.rs`).

use super::redb::RedbEngine;
use super::*;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

fn redb_kv() -> (tempfile::TempDir, Kv) {
    let dir = tempfile::tempdir().unwrap();
    let engine = RedbEngine::open(&dir.path().join("kv.redb")).unwrap();
    (dir, Kv::new(Arc::new(engine)))
}

/// An engine that delays or fails commits on demand, around redb: lets the
/// tests reach the committer's failure paths and make grouping certain.
struct Faulty {
    inner: RedbEngine,
    delay: Duration,
    /// Commits still to fail (then they succeed again).
    fail_next: AtomicU32,
    /// Whether those failures are retryable.
    retryable: bool,
    commits: AtomicUsize,
}

impl Engine for Faulty {
    fn name(&self) -> &'static str {
        "faulty-redb"
    }
    fn max_ops(&self) -> usize {
        8
    }
    fn max_value_bytes(&self) -> usize {
        1 << 20
    }
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, Error> {
        self.inner.snapshot()
    }
    fn commit(&self, batch: &Batch) -> Result<(), Error> {
        std::thread::sleep(self.delay);
        if self.fail_next.load(Ordering::SeqCst) > 0 {
            self.fail_next.fetch_sub(1, Ordering::SeqCst);
            return Err(if self.retryable {
                Error::Unavailable("injected".into())
            } else {
                Error::CommitFailed("injected".into())
            });
        }
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(batch)
    }
}

fn faulty(delay_ms: u64, fail_next: u32, retryable: bool) -> (tempfile::TempDir, Arc<Faulty>, Kv) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Faulty {
        inner: RedbEngine::open(&dir.path().join("kv.redb")).unwrap(),
        delay: Duration::from_millis(delay_ms),
        fail_next: AtomicU32::new(fail_next),
        retryable,
        commits: AtomicUsize::new(0),
    });
    let kv = Kv::new(engine.clone());
    (dir, engine, kv)
}

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn keys(pairs: &[Pair]) -> Vec<String> {
    pairs.iter().map(|(k, _)| String::from_utf8(k.clone()).unwrap()).collect()
}

#[test]
fn a_write_reads_its_own_writes_and_readers_see_it_after_commit() {
    let (_d, kv) = redb_kv();
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
    let read = kv.read(|r| Ok((r.get(b"a")?, r.get(b"b")?))).unwrap();
    assert_eq!(read, (Some(k("1")), None));
}

#[test]
fn a_failed_closure_leaves_nothing_behind() {
    let (_d, kv) = redb_kv();
    let r: Result<(), Error> = kv.write(|w| {
        w.put(k("x"), k("1"));
        Err(Error::CommitFailed("the closure said no".into()))
    });
    assert!(r.is_err());
    assert_eq!(kv.read(|r| r.get(b"x")).unwrap(), None);
    assert_eq!(kv.stats().engine_commits, 0);
}

#[test]
fn scans_merge_own_writes_deletes_limits_and_direction() {
    let (_d, kv) = redb_kv();
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
    let committed = kv.read(|r| r.scan(&range, usize::MAX, false)).unwrap();
    assert_eq!(committed, all);
    let many = kv.read(|r| r.get_many(&[k("p/2"), k("p/0"), k("q/0")])).unwrap();
    assert_eq!(many, vec![Some(vec![2]), None, Some(k("outside"))]);
}

#[test]
fn prefix_ranges_end_after_every_key_with_the_prefix() {
    assert_eq!(prefix_end(b"a"), Some(k("b")));
    assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
    assert_eq!(prefix_end(&[0xff, 0xff]), None);
    let r = prefix_range(&[7, 0xff]);
    assert!(in_range(&r, &[7, 0xff, 0xff, 0xff]));
    assert!(!in_range(&r, &[8]));
    assert!(!in_range(&r, &[7, 0xfe, 0xff]));
}

#[test]
fn concurrent_writers_share_engine_commits_and_every_write_lands() {
    // Each commit takes 5 ms, so writers queue up behind it and the next
    // commit carries several of them.
    let (_d, engine, kv) = faulty(5, 0, true);
    let kv = Arc::new(kv);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    // A read-modify-write of one shared counter: lost
                    // updates would show as a short count.
                    kv.write(|w| {
                        let n = w.get(b"counter")?.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
                        w.put(k("counter"), (n + 1).to_le_bytes().to_vec());
                        w.put(format!("t{t}/{i}").into_bytes(), vec![1]);
                        Ok(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let counter = kv.read(|r| r.get(b"counter")).unwrap().unwrap();
    assert_eq!(u64::from_le_bytes(counter.try_into().unwrap()), 160);
    let stats = kv.stats();
    assert_eq!(stats.transactions, 160);
    assert_eq!(stats.engine_commits as usize, engine.commits.load(Ordering::SeqCst));
    // max_ops is 8 and each transaction writes 2 keys (one shared): up to
    // 7 transactions per commit. Grouping must have happened.
    assert!(stats.engine_commits < 100, "{stats:?}");
}

#[test]
fn a_retryable_commit_failure_reruns_the_closure_and_applies_it_once() {
    let (_d, _engine, kv) = faulty(0, 2, true);
    let runs = AtomicU32::new(0);
    kv.write(|w| {
        runs.fetch_add(1, Ordering::SeqCst);
        let n = w.get(b"n")?.map_or(0, |v| v[0]);
        w.put(k("n"), vec![n + 1]);
        Ok(())
    })
    .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(kv.read(|r| r.get(b"n")).unwrap(), Some(vec![1]));
    assert_eq!(kv.stats().failed_commits, 2);
}

#[test]
fn a_permanent_commit_failure_is_returned_and_nothing_is_applied() {
    let (_d, _engine, kv) = faulty(0, 1, false);
    let r = kv.write(|w| {
        w.put(k("n"), vec![1]);
        Ok(())
    });
    assert!(matches!(r, Err(Error::CommitFailed(_))), "{r:?}");
    assert_eq!(kv.read(|r| r.get(b"n")).unwrap(), None);
    // The next transaction does not see the failed one's write.
    let seen = kv.write(|w| w.get(b"n")).unwrap();
    assert_eq!(seen, None);
}

#[test]
fn a_transaction_over_the_engine_limit_is_refused_whole() {
    let (_d, _engine, kv) = faulty(0, 0, true);
    let r = kv.write(|w| {
        for i in 0..9u8 {
            w.put(vec![i], vec![i]);
        }
        Ok(())
    });
    assert!(matches!(r, Err(Error::TooLarge { ops: 9, max: 8 })), "{r:?}");
    assert_eq!(kv.read(|r| r.scan(&(Bound::Unbounded, Bound::Unbounded), 100, false)).unwrap(), vec![]);
}
