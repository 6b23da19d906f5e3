//! `dirsvc migrate` end to end: a volume of 10,000 entries built through a
//! mount moves from redb to etcd and back, and the tree seen through the
//! mount (paths, types, modes, sizes, contents, symlink targets, xattrs,
//! hard-link groups) is the same on every engine.

use super::workloads::{set_xattr, xattrs};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use testkit::cluster::{ClusterOpts, TestCluster, FAST_DIRSVC_ARGS};

/// What the mount shows of one entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: char,
    mode: u32,
    size: u64,
    content: Option<[u8; 32]>,
    target: Option<String>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// Every entry under `root` by relative path, and the hard-link groups
/// (paths sharing an inode, for inodes with more than one name).
fn snapshot(root: &Path) -> (BTreeMap<String, Entry>, Vec<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("readdir") {
            let p = e.expect("dirent").path();
            let rel = p.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).expect("lstat");
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(p.clone());
                'd'
            } else if ft.is_symlink() {
                'l'
            } else {
                'f'
            };
            let content = (kind == 'f').then(|| *blake3::hash(&fs::read(&p).expect("read")).as_bytes());
            let target =
                (kind == 'l').then(|| fs::read_link(&p).expect("readlink").to_string_lossy().into_owned());
            if kind == 'f' && m.nlink() > 1 {
                by_ino.entry(m.ino()).or_default().push(rel.clone());
            }
            // Symlinks carry no user xattrs (Linux refuses them there).
            let x = if kind == 'l' { BTreeMap::new() } else { xattrs(&p).expect("xattrs") };
            out.insert(
                rel,
                Entry {
                    kind,
                    mode: m.permissions().mode(),
                    size: if kind == 'd' { 0 } else { m.len() },
                    content,
                    target,
                    xattrs: x,
                },
            );
        }
    }
    let mut groups: Vec<Vec<String>> = by_ino
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    groups.sort();
    (out, groups)
}

fn migrate(c: &TestCluster, args: &[&str]) {
    let out = Command::new(c.dirsvc_bin()).arg("migrate").args(args).output().expect("run dirsvc migrate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dirsvc migrate {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified") && !stdout.contains("MISMATCH"), "{stdout}");
}

#[test]
fn migrate_of_a_10000_entry_volume_to_etcd_and_back_keeps_tree_contents_xattrs_and_links() {
    let start = Instant::now();
    let mut c = TestCluster::start_with(ClusterOpts::fast(1, 1));
    c.mount();
    let mnt = c.mountpoint();
    // 100 directories of 70 files, 15 symlinks and 14 hard links: 10,000
    // entries; an xattr on every tenth file.
    for d in 0..100 {
        let dir = mnt.join(format!("d{d:03}"));
        fs::create_dir(&dir).expect("mkdir");
        for f in 0..70 {
            let p = dir.join(format!("f{f:02}"));
            fs::write(&p, format!("{d}/{f}")).expect("write");
            if f % 10 == 0 {
                set_xattr(&p, "user.n", format!("x{d}.{f}").as_bytes());
            }
        }
        for l in 0..15 {
            std::os::unix::fs::symlink(format!("f{l:02}"), dir.join(format!("s{l:02}"))).expect("symlink");
        }
        for h in 0..14 {
            fs::hard_link(dir.join(format!("f{:02}", 20 + h)), dir.join(format!("h{h:02}"))).expect("link");
        }
    }
    let built = start.elapsed();
    let (want, want_links) = snapshot(&mnt);
    assert_eq!(want.len(), 10_000);
    assert_eq!(want_links.len(), 1_400);
    // On etcd, every call of a cold walk is a few etcd round trips (~175 s
    // for the whole tree here): the stop on etcd checks three whole
    // directories through the mount (the migrate itself verified every
    // family by count and hash); the end, back on redb, checks everything.
    let sample = ["d000", "d042", "d099"];
    let want_sample: Vec<_> = sample.iter().map(|d| snapshot(&mnt.join(d))).collect();

    let etcd = testkit::etcd::EtcdCluster::start(1, None);
    let endpoints = etcd.endpoints().join(",");
    let db = c.dirsvc_db_dir().join("dirsvc.redb");
    c.unmount();
    c.stop_dirsvc();
    let t = Instant::now();
    migrate(
        &c,
        &[
            "--from-meta",
            "redb",
            "--from-db",
            db.to_str().unwrap(),
            "--to-meta",
            "etcd",
            "--to-etcd-endpoints",
            &endpoints,
            "--etcd-plaintext",
        ],
    );
    let to_etcd = t.elapsed();
    let fast: Vec<String> = FAST_DIRSVC_ARGS.iter().map(|s| s.to_string()).collect();
    let mut on_etcd = fast.clone();
    on_etcd.extend(["--meta", "etcd", "--etcd-endpoints", &endpoints, "--etcd-plaintext"].map(String::from));
    c.set_dirsvc_args(&on_etcd);
    c.restart_dirsvc();
    c.mount();
    for (d, want) in sample.iter().zip(&want_sample) {
        let got = snapshot(&mnt.join(d));
        assert!(got.0 == want.0, "{d} differs on etcd");
        assert_eq!(got.1, want.1, "hard links in {d} differ on etcd");
    }

    // And back, into a fresh redb file where the kit's dirsvc looks.
    c.unmount();
    c.stop_dirsvc();
    fs::rename(&db, db.with_extension("redb.before")).expect("move the old database aside");
    let t = Instant::now();
    migrate(
        &c,
        &[
            "--from-meta",
            "etcd",
            "--from-etcd-endpoints",
            &endpoints,
            "--etcd-plaintext",
            "--to-meta",
            "redb",
            "--to-db",
            db.to_str().unwrap(),
        ],
    );
    let to_redb = t.elapsed();
    c.set_dirsvc_args(&fast);
    c.restart_dirsvc();
    c.mount();
    let (back, back_links) = snapshot(&mnt);
    assert!(back == want, "the tree differs after the way back");
    assert_eq!(back_links, want_links, "hard links differ after the way back");
    eprintln!(
        "10,000 entries: built in {built:?}, migrate to etcd {to_etcd:?}, back {to_redb:?}, test {:?}",
        start.elapsed()
    );
}
