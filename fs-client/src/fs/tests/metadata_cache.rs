//! The metadata cache ([`crate::fs::known`]) between two mounts: lookups
//! answered without dirsvc while the change feed vouches, and every change
//! another mount makes reaching them through the feed.

use super::*;

/// Follows the change feed as a mount does (without a kernel to tell).
fn follow(fs: &Arc<Fs>) -> tokio::task::JoinHandle<()> {
    let fs = fs.clone();
    tokio::spawn(async move { fs.follow_changes(|_| {}).await })
}

/// Waits (up to 5 s) until `check` holds for `fs`'s lookup of `name` in
/// `parent`, and says how it ended.
async fn until_lookup(
    fs: &Arc<Fs>,
    parent: InodeId,
    name: &[u8],
    check: impl Fn(&Result<Attr>) -> bool,
) -> bool {
    for _ in 0..100 {
        if check(&fs.lookup(parent, name).await) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn absent(r: &Result<Attr>) -> bool {
    r.as_ref().is_err_and(|e| e.is_not_found())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lookups_are_answered_locally_while_the_feed_vouches_and_see_every_change_of_another_mount() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let (a, b) = (c.client().await, c.client().await);
        let feeds = [follow(&a), follow(&b)];
        // The first answer of the feed comes at once (it starts from now).
        tokio::time::sleep(Duration::from_millis(200)).await;

        // A directory a makes is complete: names not made in it are absent
        // without asking, the ones made are found.
        a.getattr(InodeId::ROOT).await.unwrap();
        let d = a.mkdir(InodeId::ROOT, b"d", 0o755, 0, 0).await.unwrap();
        let (f, fh) = a.create(d.ino, b"f", 0o644, 0, 0).await.unwrap();
        a.release(fh).await.unwrap();
        // The parent's new attributes are known without asking: exactly
        // what dirsvc holds (mtime, ctime, and a subdirectory's link).
        a.getattr(d.ino).await.unwrap();
        a.mkdir(d.ino, b"sub", 0o755, 0, 0).await.unwrap();
        let fresh = c.client().await;
        for dir in [d.ino, InodeId::ROOT] {
            assert_eq!(a.known.attr(dir), Some(fresh.getattr(dir).await.unwrap()), "{dir}");
        }
        let asked = a.known.entries_answered();
        assert!(absent(&a.lookup(d.ino, b"nope").await));
        assert_eq!(a.lookup(d.ino, b"f").await.unwrap().ino, f.ino);
        assert_eq!(a.known.entries_answered(), asked + 2, "both answered without dirsvc");

        // b makes a name in it: a finds it (the feed ended d's completeness).
        let (g, fh) = b.create(d.ino, b"g", 0o600, 0, 0).await.unwrap();
        b.release(fh).await.unwrap();
        assert!(until_lookup(&a, d.ino, b"g", |r| r.as_ref().is_ok_and(|x| x.ino == g.ino)).await);
        // b renames f: a sees the old name go and the new one come.
        b.rename(d.ino, b"f", d.ino, b"h", 0).await.unwrap();
        assert!(until_lookup(&a, d.ino, b"f", absent).await);
        assert!(until_lookup(&a, d.ino, b"h", |r| r.as_ref().is_ok_and(|x| x.ino == f.ino)).await);
        // b changes g's mode: a's cached attributes follow.
        let mode = SetAttr { perm: Some(0o640), ..SetAttr::default() };
        b.setattr(g.ino, mode).await.unwrap();
        assert!(until_lookup(&a, d.ino, b"g", |r| r.as_ref().is_ok_and(|x| x.perm & 0o777 == 0o640)).await);
        assert_eq!(a.getattr(g.ino).await.unwrap().perm & 0o777, 0o640);
        // b unlinks h: a finds it gone.
        b.unlink(d.ino, b"h").await.unwrap();
        assert!(until_lookup(&a, d.ino, b"h", absent).await);
        // And a cached answer serves again once known (no feed event since).
        let asked = a.known.entries_answered();
        assert!(a.lookup(d.ino, b"g").await.is_ok());
        assert_eq!(a.known.entries_answered(), asked + 1);

        // Without the feed the cache is not used past FEED_TRUST: a change
        // by b shows even though nothing told a about it.
        feeds[0].abort();
        let e = a.mkdir(InodeId::ROOT, b"e", 0o755, 0, 0).await.unwrap();
        assert!(absent(&a.lookup(e.ino, b"late").await));
        let (late, fh) = b.create(e.ino, b"late", 0o644, 0, 0).await.unwrap();
        b.release(fh).await.unwrap();
        tokio::time::sleep(known::FEED_TRUST).await;
        assert_eq!(a.lookup(e.ino, b"late").await.unwrap().ino, late.ino);
        feeds[1].abort();
        c.stop().await;
    })
    .await
}
