//! Tests of the mount's dirsvc connection under faults: a lost answer to
//! a mutation (a proxy that cuts the connection after the commit) and a
//! dirsvc address that accepts and never answers.

use super::*;
use tokio::task::JoinHandle;

/// A TCP proxy to dirsvc that, once armed, forwards the next request and
/// cuts the connection (both sides) when the first bytes of the answer
/// come back, without passing them on: the call was applied, its answer
/// lost. TLS stays end to end (the proxy sees only ciphertext).
struct CutProxy {
    addr: String,
    armed: Arc<std::sync::atomic::AtomicBool>,
    cuts: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl CutProxy {
    async fn start(upstream: &str) -> CutProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (a, n, up) = (armed.clone(), cuts.clone(), upstream.to_string());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&up).await else { continue };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let cut = tokio_util::sync::CancellationToken::new();
                let stop = cut.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            r = cr.read(&mut buf) => match r {
                                Ok(0) | Err(_) => return,
                                Ok(k) => if sw.write_all(&buf[..k]).await.is_err() { return },
                            },
                        }
                    }
                });
                let (a, n) = (a.clone(), n.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if a.swap(false, Ordering::SeqCst) => {
                                n.fetch_add(1, Ordering::SeqCst);
                                cut.cancel();
                                // Dropping both halves here (and the other
                                // task's on `cut`) closes both sockets.
                                return;
                            }
                            Ok(k) => {
                                if cw.write_all(&buf[..k]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        CutProxy { addr, armed, cuts, task }
    }

    fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_retried_after_a_lost_answer_return_their_first_answer_and_apply_once() {
    use common::rpc::dir::{DirError, Mutation, NewInode};
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let proxy = CutProxy::start(&c.addr).await;
        let dir = DirClient::connect(&proxy.addr, client_tls()).await.unwrap();
        let direct = DirClient::connect(&c.addr, client_tls()).await.unwrap();
        let root = InodeId::ROOT;
        let lookup = |name: &'static [u8]| {
            let direct = &direct;
            async move { direct.call(|c, ctx| async move { c.lookup(ctx, root, name.to_vec()).await }).await }
        };
        let new = NewInode { kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0 };
        let started = std::time::Instant::now();

        // create: the retry answers the attributes of the file it made.
        proxy.arm();
        let f =
            dir.mutate_attr(Mutation::Create { parent: root, name: b"f".to_vec(), new: new.clone() }).await;
        assert_eq!(proxy.cuts(), 1, "the answer was cut");
        let f = f.expect("the retried create answers as its first attempt, not EEXIST");
        assert_eq!(lookup(b"f").await.unwrap(), f);

        // link: one new name, nlink 2 (not EEXIST, not 3).
        proxy.arm();
        let l =
            dir.mutate_attr(Mutation::Link { ino: f.ino, new_parent: root, new_name: b"g".to_vec() }).await;
        assert_eq!(proxy.cuts(), 2);
        let l = l.expect("the retried link answers as its first attempt");
        assert_eq!((l.ino, l.nlink), (f.ino, 2));
        assert_eq!(lookup(b"g").await.unwrap().nlink, 2);

        // rename g -> h: the moved inode (not ENOENT for the gone source).
        proxy.arm();
        let op = Mutation::Rename {
            parent: root,
            name: b"g".to_vec(),
            new_parent: root,
            new_name: b"h".to_vec(),
            flags: 0,
        };
        let moved = dir.mutate(op).await;
        assert_eq!(proxy.cuts(), 3);
        assert_eq!(moved.expect("the retried rename answers as its first attempt").ino(), Ok(f.ino));
        assert!(matches!(lookup(b"g").await, Err(Error::Dir(DirError::NotFound))));
        assert_eq!(lookup(b"h").await.unwrap().ino, f.ino);

        // unlink f: done once (not ENOENT), the inode keeps its other name.
        proxy.arm();
        let r = dir.mutate(Mutation::Unlink { parent: root, name: b"f".to_vec() }).await;
        assert_eq!(proxy.cuts(), 4);
        r.expect("the retried unlink answers as its first attempt");
        assert!(matches!(lookup(b"f").await, Err(Error::Dir(DirError::NotFound))));
        assert_eq!(lookup(b"h").await.unwrap().nlink, 1);
        let names = direct.call(|c, ctx| async move { c.readdir(ctx, root, 0, 100).await }).await.unwrap();
        assert_eq!(names.entries.len(), 1, "only h is left");

        // A genuine EEXIST is an answer too, and replays as one.
        proxy.arm();
        let again =
            dir.mutate_attr(Mutation::Create { parent: root, name: b"h".to_vec(), new: new.clone() }).await;
        assert_eq!(proxy.cuts(), 5);
        assert!(matches!(again, Err(Error::Dir(DirError::Exists))), "{again:?}");

        // Control: the same cut on a call without a request id makes the
        // retry report its own first attempt.
        proxy.arm();
        let n = new.clone();
        let plain = dir.call(|c, ctx| {
            let n = n.clone();
            async move { c.create(ctx, root, b"x".to_vec(), n).await }
        });
        assert!(matches!(plain.await, Err(Error::Dir(DirError::Exists))));
        assert_eq!(proxy.cuts(), 6);
        println!("six cut calls retried in {:?}", started.elapsed());
        c.stop().await;
    })
    .await
}

/// A listener that accepts connections and never answers (a host whose
/// dirsvc hangs, or a cut-off one whose SYN-ACK still came): a TLS
/// handshake with it waits for its timeout.
async fn black_hole() -> (String, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_dirsvc_address_costs_a_dial_stagger_not_a_handshake_timeout() {
    within(TEST_TIMEOUT, "the test", async {
        let c = Cluster::start(1, 1, B as u32).await;
        let (dead, task) = black_hole().await;
        // The hanging address first: dialled first, then the real one
        // after the stagger; the first to connect wins.
        let started = std::time::Instant::now();
        let dir = DirClient::connect(&format!("{dead},{}", c.addr), client_tls()).await.unwrap();
        let took = started.elapsed();
        assert!(
            took < common::transport::HANDSHAKE_TIMEOUT / 2,
            "connecting took {took:?}: the hanging address was waited for"
        );
        assert_eq!(dir.current_addr(), c.addr, "calls go to the address that answered");
        // Later calls keep using it without dialling again.
        let t = std::time::Instant::now();
        dir.call(|c, ctx| async move { c.hello(ctx).await.map(Ok) }).await.unwrap();
        assert!(t.elapsed() < common::transport::HANDSHAKE_TIMEOUT / 2);
        task.abort();
    })
    .await;
}
