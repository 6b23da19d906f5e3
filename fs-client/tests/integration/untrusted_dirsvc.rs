//! A directory service that cannot be trusted, end to end (issue 8).
//!
//! The bug these pin: chunk ids only prove that bytes are *some* chunk of
//! the volume, so a dirsvc that swapped layout entries between files or
//! between blocks of one file, or swapped two symlinks' targets, made the
//! mount return another file's bytes with no error. Now each layout entry
//! carries the writer's MAC over its place and each target is bound to its
//! inode: the moved ones read as EIO, never as wrong bytes, and everything
//! else (a reflinked copy of a moved file included) reads as written.
//!
//! And a removed member: its identity no longer mounts, a file written
//! after the removal is sealed under a key epoch it never had, and
//! `fs-client reencrypt` moves older data to the new epoch.

use super::tools::{chunk_files, output, run, Pattern};
use common::codec;
use common::rpc::dir::VolumeInfo;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::cluster::TestCluster;

/// 1 MiB, the volume's block size.
const MIB: u64 = 1 << 20;

const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Block `i` (1 MiB, or less at the end) of `path` read with one `pread`
/// on a fresh descriptor: the bytes, or the errno.
fn read_block(path: &Path, i: u64) -> Result<Vec<u8>, i32> {
    let f = File::open(path).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let mut buf = vec![0u8; MIB as usize];
    let mut got = 0usize;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], i * MIB + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(e.raw_os_error().unwrap_or(0)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Copies `src` to `dst` with `copy_file_range` (block-aligned: the mount
/// shares the chunks).
fn reflink(src: &Path, dst: &Path, len: u64) {
    let i = File::open(src).expect("open source");
    let o = OpenOptions::new().create(true).write(true).truncate(true).open(dst).expect("create copy");
    let mut copied = 0u64;
    while copied < len {
        // SAFETY: two open descriptors, null offsets (the file offsets).
        let n = unsafe {
            libc::copy_file_range(
                i.as_raw_fd(),
                std::ptr::null_mut(),
                o.as_raw_fd(),
                std::ptr::null_mut(),
                (len - copied) as usize,
                0,
            )
        };
        assert!(n > 0, "copy_file_range: {n} ({})", std::io::Error::last_os_error());
        copied += n as u64;
    }
}

/// The database file of the cluster's dirsvc.
fn db(c: &TestCluster) -> PathBuf {
    c.dirsvc_db_dir().join("dirsvc.redb")
}

#[test]
fn a_dirsvc_that_moves_chunks_or_symlink_targets_gets_eio_never_wrong_bytes() {
    let mut c = TestCluster::start(2, 1);
    c.mount();
    let m = c.mountpoint();
    let a = Pattern::bytes(1, (3 * MIB + 4000) as usize);
    let b = Pattern::bytes(2, (2 * MIB) as usize);
    fs::write(m.join("a"), &a).expect("write a");
    fs::write(m.join("b"), &b).expect("write b");
    reflink(&m.join("a"), &m.join("a-copy"), a.len() as u64);
    std::os::unix::fs::symlink("/target/one", m.join("s1")).expect("symlink s1");
    std::os::unix::fs::symlink("/target/two", m.join("s2")).expect("symlink s2");
    let ino = |name: &str| common::InodeId(fs::symlink_metadata(m.join(name)).expect("stat").ino());
    let (ia, ib, s1, s2) = (ino("a"), ino("b"), ino("s1"), ino("s2"));
    c.unmount();

    // What a malicious dirsvc does to its own database, while stopped.
    c.stop_dirsvc();
    {
        let store = dirsvc::Store::open(&db(&c)).expect("open the dirsvc database");
        store.tamper_swap_layout_rows((ia, 0), (ib, 0)).expect("swap a/0 and b/0");
        store.tamper_swap_layout_rows((ia, 1), (ia, 2)).expect("swap a/1 and a/2");
        store.tamper_swap_symlink_targets(s1, s2).expect("swap the targets");
    }
    c.restart_dirsvc();
    let marks = c.log_marks();
    c.mount();

    let want = |data: &[u8], i: u64| {
        data[(i * MIB) as usize..((i + 1) * MIB).min(data.len() as u64) as usize].to_vec()
    };
    // Every block of every file reads as written or fails with EIO.
    for (name, data) in [("a", &a), ("b", &b), ("a-copy", &a)] {
        for i in 0..(data.len() as u64).div_ceil(MIB) {
            match read_block(&m.join(name), i) {
                Ok(got) => assert!(got == want(data, i), "{name} block {i}: wrong bytes"),
                Err(e) => assert_eq!(e, libc::EIO, "{name} block {i}: errno {e}"),
            }
        }
    }
    // The moved ones are EIO.
    for (name, i) in [("a", 0), ("a", 1), ("a", 2), ("b", 0)] {
        assert_eq!(read_block(&m.join(name), i), Err(libc::EIO), "{name} block {i}");
    }
    // The rest reads: b's block 1, a's partial last block, and the whole
    // reflinked copy (its entries are its own, untouched).
    assert!(read_block(&m.join("b"), 1).expect("b block 1") == want(&b, 1));
    assert!(read_block(&m.join("a"), 3).expect("a block 3") == want(&a, 3));
    assert!(fs::read(m.join("a-copy")).expect("read a-copy") == a, "the reflinked copy reads back");
    assert!(fs::read(m.join("a")).is_err(), "reading all of a fails");
    // Swapped targets: EIO.
    for s in ["s1", "s2"] {
        let e = fs::read_link(m.join(s)).expect_err("a swapped target must not read");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{s}: {e}");
    }
    // The mount says what it refused, naming the inode and block.
    let logs = c.logs_since(&marks);
    let line = logs
        .lines()
        .find(|l| l.contains("layout entry does not verify"))
        .unwrap_or_else(|| panic!("no error line about the moved entries:\n{logs}"));
    assert!(line.contains("ERROR") && line.contains("ino=") && line.contains("block="), "{line}");
    assert!(logs.contains("symlink target does not open as this symlink's"), "{logs}");
    c.unmount();
}

/// Runs `fs-client ARGS…` of the cluster; returns (success, stdout, stderr).
fn cli(c: &TestCluster, args: &[&str]) -> (bool, String, String) {
    let out = output(c.fs_client().args(args), CLI_TIMEOUT);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The volume as dirsvc serves it, and the layout of `ino`, over RPC.
fn volume_and_layout(c: &TestCluster, ino: common::InodeId) -> (VolumeInfo, Vec<common::rpc::dir::BlockLoc>) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let tls = fs_client::admin::load_tls(&c.client_tls_dir()).expect("client TLS identity");
        let d = common::transport::dir_client(&c.dirsvc_addr().to_string(), &tls).await.expect("connect");
        let ctx = tarpc::context::current;
        let info = d.volume_info(ctx()).await.expect("rpc").expect("volume");
        let page = d.get_layout(ctx(), ino, 0, 4096).await.expect("rpc").expect("layout");
        (info, page.blocks)
    })
}

/// The stored bytes of chunk `id` on any peer.
fn chunk_bytes(c: &TestCluster, id: &common::ChunkId) -> Vec<u8> {
    let hex = id.to_hex();
    for i in 0..c.peer_count() {
        if let Some((_, p)) = chunk_files(&c.peer_data_dir(i)).into_iter().find(|(h, _)| *h == hex) {
            return fs::read(p).expect("read chunk file");
        }
    }
    panic!("chunk {hex} is on no peer");
}

#[test]
fn a_removed_member_cannot_mount_and_its_old_key_opens_nothing_written_after() {
    let mut c = TestCluster::start(2, 1);
    c.mount();
    let m = c.mountpoint();
    let addr = c.dirsvc_addr().to_string();
    let pins = c.pin_dir();
    let pins = pins.to_str().expect("utf-8 path");
    let bob = c.work_dir().join("bob.txt");
    let bob_s = bob.to_str().expect("utf-8 path").to_string();
    let bob_key = run(c.fs_client().args(["keygen", "-o", &bob_s]), CLI_TIMEOUT).trim().to_string();
    let me = c.identity_file();
    let me = me.to_str().expect("utf-8 path");
    let (ok, o, e) = cli(
        &c,
        &[
            "member",
            "add",
            "--dirsvc",
            &addr,
            "-i",
            me,
            "--name",
            "bob",
            "--recipient",
            &bob_key,
            "--pin-dir",
            pins,
        ],
    );
    assert!(ok, "member add failed:\n{o}\n{e}");
    let (_, list, _) = cli(&c, &["member", "list", "--dirsvc", &addr]);
    assert!(list.lines().any(|l| l.starts_with("member: bob ") && l.contains(&bob_key)), "{list}");

    let old = Pattern::bytes(3, (2 * MIB) as usize);
    fs::write(m.join("old"), &old).expect("write old");
    let old_ino = common::InodeId(fs::metadata(m.join("old")).expect("stat").ino());
    // Bob's epoch-0 secret, as bob could unwrap it while a member.
    let (info, _) = volume_and_layout(&c, old_ino);
    let bob_id: age::x25519::Identity = fs::read_to_string(&bob)
        .expect("read bob")
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("a key line")
        .parse()
        .expect("an age identity");
    let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(bob_id)];
    let bob_secret =
        common::keys::unwrap_secret(&info.keyring.epochs[0].wrapped, &ids).expect("bob unwraps epoch 0");
    let bob_chunk_key = bob_secret.chunk_key();

    let (ok, o, e) =
        cli(&c, &["member", "remove", "--dirsvc", &addr, "-i", me, "--name", "bob", "--pin-dir", pins]);
    assert!(ok, "member remove failed:\n{o}\n{e}");
    assert!(o.contains("key epoch 1"), "{o}");

    // The running mount writes on: its commit of epoch-0 data is refused,
    // it reloads the keyring and seals under epoch 1.
    let new = Pattern::bytes(4, (2 * MIB + 77) as usize);
    fs::write(m.join("new"), &new).expect("write new after the removal");
    let new_ino = common::InodeId(fs::metadata(m.join("new")).expect("stat").ino());
    let (info, blocks) = volume_and_layout(&c, new_ino);
    assert_eq!(info.keyring.newest_epoch(), 1);
    assert!(!info.keyring.members.iter().any(|m| m.name == "bob"));
    assert_eq!(blocks.len(), 3);
    for b in &blocks {
        assert_eq!(b.epoch, 1, "block {} of the new file", b.index);
        let bytes = chunk_bytes(&c, &b.chunk);
        assert_eq!(codec::epoch_of(&bytes).expect("a sealed chunk"), 1);
        assert!(codec::open_bytes(&bob_chunk_key, &bytes).is_err(), "bob's old key opens block {}", b.index);
    }
    // What was written before the removal still opens with bob's key
    // (that is what reencrypt is for).
    let (_, old_blocks) = volume_and_layout(&c, old_ino);
    let opened = codec::open_bytes(&bob_chunk_key, &chunk_bytes(&c, &old_blocks[0].chunk)).expect("old data");
    assert!(opened == old[..MIB as usize], "bob's key opens the old data");

    // Bob's identity no longer mounts, and is told why.
    let mnt2 = c.second_mountpoint();
    let out = output(
        c.fs_client()
            .args(["mount", "--dirsvc", &addr, "-i", &bob_s, "--pin-dir"])
            .arg(c.work_dir().join("bob-pins"))
            .arg(&mnt2),
        CLI_TIMEOUT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bob mounted after his removal:\n{err}");
    assert!(err.contains("is not a member of volume") && err.contains("removed"), "{err}");

    // reencrypt: the old file moves to epoch 1 and reads the same.
    let (ok, o, e) = cli(&c, &["reencrypt", "--dirsvc", &addr, "-i", me, "--pin-dir", pins]);
    assert!(ok, "reencrypt failed:\n{o}\n{e}");
    assert!(o.contains("2 block(s) of older key epochs re-sealed under epoch 1"), "{o}");
    let (_, old_blocks) = volume_and_layout(&c, old_ino);
    assert!(old_blocks.iter().all(|b| b.epoch == 1));
    for b in &old_blocks {
        assert!(codec::open_bytes(&bob_chunk_key, &chunk_bytes(&c, &b.chunk)).is_err());
    }
    assert!(fs::read(m.join("old")).expect("read old") == old);
    assert!(fs::read(m.join("new")).expect("read new") == new);
    match fs::metadata(mnt2.join("old")) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        r => panic!("bob's mount point must not be a mount: {r:?}"),
    }
    c.unmount();
}
