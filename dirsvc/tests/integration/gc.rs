//! Garbage collection: the store's collection steps and their race with
//! `commit_layout` (both orders, and concurrently), tombstone expiry, and
//! the worker deleting unreferenced chunks and orphans on fake peers.

use super::fakepeer::*;
use super::support::*;
use common::rpc::dir::{Attr, CommitLayout, DirError, PeerState, StoredChunk};
use common::time::Timestamp;
use common::{ChunkId, InodeId, PeerId};
use dirsvc::Store;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tarpc::context;
use testkit::{wait_until_async, within};

/// A cutoff after every unreferenced row written so far.
fn future() -> i64 {
    Timestamp::now().secs + 1000
}

fn commit_one(s: &Store, f: InodeId, c: StoredChunk) -> Result<Attr, dirsvc::Error> {
    s.commit_layout(
        f,
        &CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
            size: 10,
            mtime: Timestamp::now(),
            blocks: vec![(0, Some(c))],
        },
    )
}

/// A store with peers 1 and 2 and chunk 1 committed to file "old" and then
/// unreferenced (the file unlinked). Returns the store and a fresh empty
/// file "new".
fn unreferenced_chunk(dir: &std::path::Path) -> (Store, InodeId, [PeerId; 2]) {
    let s = new_store(dir);
    let ps = [peer(&s, 1), peer(&s, 2)];
    let old = mkfile(&s, ROOT, "old");
    commit_one(&s, old, chunk(1, 58, &ps)).unwrap();
    s.unlink(ROOT, &n("old")).unwrap();
    assert!(unreferenced(&s, 1));
    let f = mkfile(&s, ROOT, "new");
    (s, f, ps)
}

#[test]
fn a_commit_that_reuses_a_chunk_before_collection_keeps_it() {
    let dir = tmp();
    let (s, f, ps) = unreferenced_chunk(dir.path());
    // The commit wins: the chunk is referenced again...
    commit_one(&s, f, chunk(1, 58, &ps[..1])).unwrap();
    // ...so the collector's re-check leaves it alone.
    assert!(s.collect_unreferenced(future(), 100).unwrap().is_empty());
    assert_eq!(refcount(&s, 1), Some(1));
    assert!(s.tombstone(&ChunkId::of(&[1])).unwrap().is_none());
    assert!(!unreferenced(&s, 1));
}

#[test]
fn a_commit_that_reuses_a_chunk_after_collection_is_refused_and_changes_nothing() {
    let dir = tmp();
    let (s, f, ps) = unreferenced_chunk(dir.path());
    let id = ChunkId::of(&[1]);
    // Not yet old enough: nothing happens.
    assert!(s.collect_unreferenced(Timestamp::now().secs - 100, 100).unwrap().is_empty());
    // The collector wins.
    let got = s.collect_unreferenced(future(), 100).unwrap();
    assert_eq!(got, vec![(id, ps.to_vec())]);
    assert_eq!(refcount(&s, 1), None, "the chunk left the index");
    assert!(!unreferenced(&s, 1));
    let tomb = s.tombstone(&id).unwrap().unwrap();
    assert_eq!(tomb.pending, ps.to_vec());
    let before = s.getattr(f).unwrap();
    assert_eq!(err(commit_one(&s, f, chunk(1, 58, &ps))), DirError::ChunkGone(id));
    assert_eq!(s.getattr(f).unwrap(), before);
    assert!(s.get_layout(f, 0, 10).unwrap().blocks.is_empty());
    assert_eq!(refcount(&s, 1), None, "the refused commit created no record");
    // Other chunks in the same commit are refused with it.
    let both = CommitLayout {
        held_ms: 0,
        attrs: Default::default(),
        size: 2 * u64::from(B),
        mtime: Timestamp::now(),
        blocks: vec![(0, Some(chunk(2, 58, &ps))), (1, Some(chunk(1, 58, &ps)))],
    };
    assert_eq!(err(s.commit_layout(f, &both)), DirError::ChunkGone(id));
    assert_eq!(refcount(&s, 2), None);
}

#[test]
fn collection_racing_a_commit_never_leaves_a_layout_naming_a_deleted_chunk() {
    let dir = tmp();
    let s = Arc::new(new_store(dir.path()));
    let p = peer(&s, 1);
    let (mut kept, mut refused) = (0, 0);
    for round in 0..60u8 {
        let name = format!("old{round}");
        let old = mkfile(&s, ROOT, &name);
        let c = StoredChunk {
            id: ChunkId::of(&[round, 0xaa]),
            len: 58,
            replicas: vec![p],
            epoch: 0,
            mac: [0x4d; 32],
            inline: None,
        };
        commit_one(&s, old, c.clone()).unwrap();
        s.unlink(ROOT, &n(&name)).unwrap();
        let f = mkfile(&s, ROOT, &format!("new{round}"));
        let go = Arc::new(Barrier::new(2));
        let committer = {
            let (s, go, c) = (s.clone(), go.clone(), c.clone());
            std::thread::spawn(move || {
                go.wait();
                commit_one(&s, f, c)
            })
        };
        let collector = {
            let (s, go) = (s.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                s.collect_unreferenced(future(), 100).unwrap()
            })
        };
        let committed = committer.join().unwrap();
        let collected = collector.join().unwrap();
        let record = s.chunk(&c.id).unwrap();
        let tomb = s.tombstone(&c.id).unwrap();
        match committed {
            Ok(_) => {
                kept += 1;
                assert!(collected.is_empty(), "round {round}: collected a chunk a commit referenced");
                assert_eq!(record.map(|r| r.refcount), Some(1), "round {round}");
                assert!(tomb.is_none(), "round {round}");
            }
            Err(e) => {
                refused += 1;
                assert!(
                    matches!(e, dirsvc::Error::Dir(DirError::ChunkGone(id)) if id == c.id),
                    "round {round}"
                );
                assert_eq!(collected.len(), 1, "round {round}");
                assert!(record.is_none() && tomb.is_some(), "round {round}");
                assert!(s.get_layout(f, 0, 1).unwrap().blocks.is_empty(), "round {round}");
            }
        }
    }
    assert_eq!(kept + refused, 60);
}

#[test]
fn orphans_are_tombstoned_only_while_no_commit_names_them() {
    let dir = tmp();
    let s = new_store(dir.path());
    let p = peer(&s, 1);
    let f = mkfile(&s, ROOT, "f");
    let (orphan, committed) = (ChunkId::of(&[1]), ChunkId::of(&[2]));
    commit_one(&s, f, chunk(2, 58, &[p])).unwrap();
    assert_eq!(s.missing_from_index(&[orphan, committed]).unwrap(), vec![true, false]);
    let done = s.tombstone_orphans(p, &[orphan, committed]).unwrap();
    assert_eq!(done, vec![orphan], "a committed chunk is not an orphan");
    assert_eq!(s.tombstone(&orphan).unwrap().unwrap().pending, vec![p]);
    assert!(s.tombstone(&committed).unwrap().is_none());
    let g = mkfile(&s, ROOT, "g");
    assert_eq!(err(commit_one(&s, g, chunk(1, 58, &[p]))), DirError::ChunkGone(orphan));
}

#[test]
fn tombstones_expire_only_when_old_and_acknowledged() {
    let dir = tmp();
    let (s, f, ps) = unreferenced_chunk(dir.path());
    let id = ChunkId::of(&[1]);
    s.collect_unreferenced(future(), 100).unwrap();
    let deleted_at = s.tombstone(&id).unwrap().unwrap().deleted_at;
    let pending = s.pending_deletes(None, 10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].0, id);
    assert!(s.pending_deletes(Some(id), 10).unwrap().is_empty(), "paging resumes after the id");
    // Old enough but deletes pending: kept.
    assert_eq!(s.expire_tombstones(deleted_at + 10).unwrap(), 0);
    s.ack_deletes(&[(id, ps[0])]).unwrap();
    assert_eq!(s.tombstone(&id).unwrap().unwrap().pending, vec![ps[1]]);
    s.ack_deletes(&[(id, ps[1])]).unwrap();
    assert!(s.pending_deletes(None, 10).unwrap().is_empty());
    // Acknowledged but too young: kept.
    assert_eq!(s.expire_tombstones(deleted_at - 1).unwrap(), 0);
    assert_eq!(s.tombstone_count().unwrap(), 1);
    assert_eq!(s.expire_tombstones(deleted_at).unwrap(), 1);
    assert_eq!(s.tombstone_count().unwrap(), 0);
    // Once the tombstone is gone, the id can be committed again (a fresh
    // upload of the same bytes).
    commit_one(&s, f, chunk(1, 58, &ps)).unwrap();
    assert_eq!(refcount(&s, 1), Some(1));
}

/// A cluster whose GC runs every 100 ms with a one-second grace.
async fn gc_cluster(peers: usize) -> Cluster {
    let mut c = Cluster::start(2, |cfg| {
        cfg.gc_interval = Duration::from_millis(100);
        cfg.gc_grace = Duration::from_secs(1);
        // Unlinked files are freed in the unlink (their chunks become
        // unreferenced at once).
        cfg.unlinked_linger = Duration::ZERO;
    })
    .await;
    c.add_peers(peers).await;
    c
}

#[tokio::test]
async fn unreferenced_chunks_are_deleted_from_peers_after_the_grace_period() {
    within(TEST_TIMEOUT, "the test", async {
        let c = gc_cluster(3).await;
        let chunks: Vec<(Vec<u8>, Vec<usize>)> =
            contents(20, 5, 700).into_iter().map(|b| (b, vec![1, 2, 3])).collect();
        c.write_file("f", &chunks).await;
        let ids: Vec<ChunkId> = chunks.iter().map(|(b, _)| ChunkId::of(b)).collect();
        // Peer 3 is away while the collection happens.
        c.peer(3).go_silent();
        c.wait_state(c.peer(3).id, PeerState::Down).await;
        let unlinked = Instant::now();
        c.client.unlink(context::current(), ROOT, n("f")).await.unwrap().unwrap();
        assert_eq!(c.status().await.gc_pending, 5);
        wait_until_async(
            || async { ids.iter().all(|id| !c.peer(1).has(id) && !c.peer(2).has(id)) },
            WAIT_TIMEOUT,
        )
        .await
        .expect("timed out waiting for peers 1 and 2 to delete");
        let took = unlinked.elapsed();
        assert!(took >= Duration::from_secs(1), "deleted {took:?} after the unlink, within the grace period");
        assert!(ids.iter().all(|id| c.peer(3).has(id)), "a down peer is not asked");
        wait_until_async(|| async { c.status().await.gc_deleted_total == 10 }, WAIT_TIMEOUT)
            .await
            .expect("timed out waiting for 10 deletes counted");
        let st = c.status().await;
        assert_eq!((st.gc_pending, st.chunks), (0, 0));
        // A commit naming a collected chunk is refused.
        let g = c.client.create(context::current(), ROOT, n("g"), file()).await.unwrap().unwrap().ino;
        let again = StoredChunk {
            id: ids[0],
            len: 700,
            replicas: vec![c.peer(1).id],
            epoch: 0,
            mac: [0x4d; 32],
            inline: None,
        };
        let commit = CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
            size: 10,
            mtime: Timestamp::now(),
            blocks: vec![(0, Some(again.clone()))],
        };
        assert_eq!(
            c.client.commit_layout(context::current(), g, commit.clone()).await.unwrap(),
            Err(DirError::ChunkGone(ids[0]))
        );
        // Peer 3 comes back and gets its deletes.
        c.peer(3).speak_again();
        wait_until_async(|| async { ids.iter().all(|id| !c.peer(3).has(id)) }, WAIT_TIMEOUT)
            .await
            .expect("timed out waiting for peer 3 to delete");
        wait_until_async(|| async { c.status().await.gc_deleted_total == 15 }, WAIT_TIMEOUT)
            .await
            .expect("timed out waiting for 15 deletes counted");
        // Tombstones expire two grace periods after the collection, once
        // every delete was acknowledged: the id is usable again.
        wait_until_async(
            || async { c.client.commit_layout(context::current(), g, commit.clone()).await.unwrap().is_ok() },
            WAIT_TIMEOUT,
        )
        .await
        .expect("timed out waiting for the tombstone to expire");
        c.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn orphans_older_than_the_grace_period_are_deleted() {
    within(TEST_TIMEOUT, "the test", async {
        let c = gc_cluster(2).await;
        let now = Timestamp::now().secs;
        // An upload nobody committed long ago, one that was just made (its
        // store time is in the future, so it stays young for this test), and
        // an old chunk that is committed.
        let old_orphan = c.peer(1).insert(b"crashed client upload", now - 3600);
        let young_orphan = c.peer(1).insert(b"upload in progress", now + 3600);
        c.write_file("f", &[(b"committed long ago".to_vec(), vec![1, 2])]).await;
        let committed = ChunkId::of(b"committed long ago");
        c.peer(1).inner.chunks.lock().unwrap().get_mut(&committed).unwrap().1 = now - 3600;
        // Many orphans on peer 2, over several inventory pages.
        let many: Vec<ChunkId> =
            contents(21, 2500, 64).iter().map(|b| c.peer(2).insert(b, now - 3600)).collect();
        wait_until_async(
            || async { !c.peer(1).has(&old_orphan) && many.iter().all(|id| !c.peer(2).has(id)) },
            WAIT_TIMEOUT,
        )
        .await
        .expect("timed out waiting for orphans deleted");
        // A few more rounds change nothing for the others.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(c.peer(1).has(&young_orphan));
        assert!(c.peer(1).has(&committed) && c.peer(2).has(&committed));
        assert_eq!(c.peer(2).len(), 1);
        wait_until_async(|| async { c.status().await.gc_deleted_total == 2501 }, WAIT_TIMEOUT)
            .await
            .expect("timed out waiting for 2501 deletes counted");
        // The collected orphan cannot be committed any more.
        let g = c.client.create(context::current(), ROOT, n("g"), file()).await.unwrap().unwrap().ino;
        let late = StoredChunk {
            id: old_orphan,
            len: 21,
            replicas: vec![c.peer(1).id],
            epoch: 0,
            mac: [0x4d; 32],
            inline: None,
        };
        let commit = CommitLayout {
            held_ms: 0,
            attrs: Default::default(),
            size: 10,
            mtime: Timestamp::now(),
            blocks: vec![(0, Some(late))],
        };
        assert_eq!(
            c.client.commit_layout(context::current(), g, commit).await.unwrap(),
            Err(DirError::ChunkGone(old_orphan))
        );
        c.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_commit_of_new_chunks_last_known_held_a_grace_period_ago_is_refused_and_shared_ones_are_not() {
    within(TEST_TIMEOUT, "the test", async {
        let c = gc_cluster(1).await;
        let grace_ms = 1000;
        let now = Timestamp::now().secs;
        // Stored "in the future", so GC leaves it alone during the test.
        let id = c.peer(1).insert(b"uploaded before an outage", now + 3600);
        let g = c.client.create(context::current(), ROOT, n("g"), file()).await.unwrap().unwrap().ino;
        let chunk = StoredChunk {
            id,
            len: 25,
            replicas: vec![c.peer(1).id],
            epoch: 0,
            mac: [0x4d; 32],
            inline: None,
        };
        let late = CommitLayout {
            held_ms: grace_ms,
            attrs: Default::default(),
            size: 10,
            mtime: Timestamp::now(),
            blocks: vec![(0, Some(chunk.clone()))],
        };
        assert_eq!(
            c.client.commit_layout(context::current(), g, late.clone()).await.unwrap(),
            Err(DirError::UploadUnverified { limit_ms: grace_ms })
        );
        let size = |a: Attr| a.size;
        assert_eq!(
            size(c.client.getattr(context::current(), g).await.unwrap().unwrap()),
            0,
            "a refused commit changed the file"
        );
        // Checked again just now: accepted.
        let fresh = CommitLayout { held_ms: grace_ms - 1, ..late };
        assert_eq!(size(c.client.commit_layout(context::current(), g, fresh).await.unwrap().unwrap()), 10);
        // A reference to a chunk the index holds stores nothing new: its
        // age does not matter.
        let shared = StoredChunk { replicas: vec![], ..chunk };
        let again = CommitLayout {
            held_ms: u64::MAX,
            attrs: Default::default(),
            size: u64::from(B) + 20,
            mtime: Timestamp::now(),
            blocks: vec![(1, Some(shared))],
        };
        assert_eq!(
            size(c.client.commit_layout(context::current(), g, again).await.unwrap().unwrap()),
            u64::from(B) + 20
        );
        c.shutdown().await;
    })
    .await;
}
