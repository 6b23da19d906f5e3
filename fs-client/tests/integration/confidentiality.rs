//! No plaintext content, name or symlink target reaches a peer's disk or
//! dirsvc's database (DESIGN invariant 1), checked with `grep -r -a`.

use super::tools::output;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::cluster::TestCluster;

const GREP_TIMEOUT: Duration = Duration::from_secs(300);

/// The paths among `dirs` (searched recursively as binary) that contain
/// `marker`.
fn grep_paths(marker: &str, dirs: &[PathBuf]) -> Vec<String> {
    let out = output(
        Command::new("grep").args(["-r", "-a", "-l", "-F", "-e", marker, "--"]).args(dirs),
        GREP_TIMEOUT,
    );
    match out.status.code() {
        Some(0) => String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect(),
        Some(1) => Vec::new(),
        _ => panic!("grep failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)),
    }
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos)
}

#[test]
fn no_plaintext_marker_reaches_peers_or_dirsvc() {
    let mut c = TestCluster::start(3, 2);
    let sfx = unique_suffix();
    let content_marker = format!("P2PFS-CONTENT-MARKER-{sfx}");
    let name_marker = format!("p2pfs-name-marker-{sfx}");
    let link_marker = format!("p2pfs-link-target-marker-{sfx}");

    // Several blocks of the marker, a small file, a directory and a symlink
    // whose names or targets carry the other markers.
    let line = format!("{content_marker}\n");
    let big = line.repeat((3 << 20) / line.len() + 1);
    c.mount();
    let mnt = c.mountpoint();
    let file = mnt.join(format!("{name_marker}.txt"));
    fs::write(&file, &big).expect("write marker file");
    let dir = mnt.join(format!("dir-{name_marker}"));
    fs::create_dir(&dir).expect("mkdir with marker name");
    fs::write(dir.join("small.txt"), &line).expect("write small marker file");
    let link = mnt.join("link");
    symlink(format!("../{link_marker}/x"), &link).expect("symlink with marker target");

    // The markers are really there, seen through the mount (else the greps
    // below would prove nothing).
    let names: Vec<String> = fs::read_dir(&mnt)
        .expect("readdir mount")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.contains(&name_marker)), "{names:?}");
    assert_eq!(fs::read_to_string(&file).expect("read back"), big);
    assert!(fs::read_link(&link).expect("readlink").to_string_lossy().contains(&link_marker));

    // Everything the peers and dirsvc ever got: their disks and their logs.
    c.stop_all();
    let mut places: Vec<PathBuf> = (0..c.peer_count()).map(|i| c.peer_data_dir(i)).collect();
    places.push(c.dirsvc_db_dir());
    places.extend(
        c.log_files()
            .into_iter()
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("fs-client"))),
    );
    let stored: u64 = places.iter().map(|p| du(p)).sum();
    assert!(
        stored > 2 * big.len() as u64,
        "peers and dirsvc hold only {stored} bytes: the content was not stored"
    );

    // The same grep does find a marker where one is (so a miss means absent).
    let control = c.work_dir().join("control");
    fs::create_dir_all(&control).expect("mkdir control");
    fs::write(control.join("f"), format!("xx{content_marker}{name_marker}yy")).expect("write control");
    assert_eq!(grep_paths(&content_marker, std::slice::from_ref(&control)).len(), 1);
    assert_eq!(grep_paths(&name_marker, std::slice::from_ref(&control)).len(), 1);

    for (what, marker) in
        [("file content", &content_marker), ("file name", &name_marker), ("symlink target", &link_marker)]
    {
        let hits = grep_paths(marker, &places);
        assert!(hits.is_empty(), "plaintext {what} marker found outside fs-client in: {hits:?}");
    }
}

/// Total size in bytes of the regular files under `p` (or of `p` itself).
fn du(p: &Path) -> u64 {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            fs::read_dir(p).map(|rd| rd.filter_map(|e| e.ok()).map(|e| du(&e.path())).sum()).unwrap_or(0)
        }
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    }
}
