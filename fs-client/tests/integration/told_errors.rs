//! Failures are told, with the right errno, to the one who can act
//! (issue "Tell the truth when things fail"):
//!
//! - peers full: `write`, `fsync` and `close` of the writer fail with
//!   ENOSPC (they failed with EIO), while a reader of the same file closes
//!   with 0 (it got EIO from its own close);
//! - data the mount could not store at unmount is kept, `down.sh` says so
//!   and exits non-zero (it printed "p2pfs is down" and exited 0), and the
//!   next `up.sh` stores it;
//! - a write by a non-root user clears setuid/setgid (an `O_APPEND` write
//!   kept them, also after a remount);
//! - `df` counts a disk shared by several peers once (it counted it once
//!   per peer, and other programs' data as used).

use super::scripted::{text, Scripted};
use super::tools::{output, Pattern};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::IntoRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::cluster::TestCluster;

const MIB: usize = 1 << 20;

/// `close(2)` of `f`, returning its errno (0 on success): the only way to
/// see an error close reports.
fn close(f: File) -> i32 {
    let fd = f.into_raw_fd();
    // SAFETY: `fd` came from into_raw_fd and is closed exactly once here.
    if unsafe { libc::close(fd) } == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

#[test]
fn full_peers_say_enospc_to_the_writer_and_the_kept_data_is_stored_by_the_next_up() {
    // Two peers on 64 MiB tmpfs filesystems, R = 2.
    let mut c = Scripted::new(2, 2);
    c.peer_on_tmpfs(1, 64 << 20);
    c.peer_on_tmpfs(2, 64 << 20);
    c.up_ok();
    let mnt = c.mnt();
    let big = mnt.join("big");
    File::create(&big).expect("create");
    let reader = File::open(&big).expect("open for reading");
    let mut w = OpenOptions::new().write(true).open(&big).expect("open for writing");
    let mut accepted = Vec::new();
    let mut write_err = None;
    for i in 0..200u64 {
        let block = Pattern::bytes(i, MIB);
        match w.write_all(&block) {
            Ok(()) => accepted.extend_from_slice(&block),
            Err(e) => {
                write_err = Some(e);
                break;
            }
        }
    }
    let e = write_err.expect("writing 200 MiB into 64 MiB of peers must fail");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "write: {e}");
    assert!(accepted.len() >= 32 * MIB, "only {} MiB accepted before ENOSPC", accepted.len() / MIB);
    // The writer keeps seeing it, on write and fsync.
    let again = w.write_all(b"more").unwrap_err();
    assert_eq!(again.raw_os_error(), Some(libc::ENOSPC), "next write: {again}");
    let fsync = w.sync_all().unwrap_err();
    assert_eq!(fsync.raw_os_error(), Some(libc::ENOSPC), "fsync: {fsync}");
    // A reader of the same file reads and closes cleanly.
    let mut r = reader;
    let mut head = vec![0u8; MIB];
    r.read_exact(&mut head).expect("read");
    assert_eq!(&head[..], &accepted[..MIB]);
    assert_eq!(close(r), 0, "a reader's close must not fail for the writer's data");
    assert_eq!(close(w), libc::ENOSPC, "the writer's close reports ENOSPC");

    // dd, as the issue reports it.
    let dd = output(
        Command::new("dd")
            .arg("if=/dev/urandom")
            .arg(format!("of={}", mnt.join("dd.bin").display()))
            .args(["bs=1M", "count=200"]),
        Duration::from_secs(120),
    );
    assert!(!dd.status.success(), "dd into full peers succeeded");
    assert!(text(&dd).contains("No space left on device"), "dd: {}", text(&dd));

    // down.sh tells the person, and exits non-zero.
    let down = c.down();
    let said = text(&down);
    assert!(!down.status.success(), "down.sh exited 0 with data unstored:\n{said}");
    assert!(said.contains(&big.display().to_string()), "down.sh must name the file:\n{said}");
    assert!(said.contains("recovery"), "down.sh must say where the data is kept:\n{said}");

    // With room again, the next up.sh stores what was kept.
    c.resize_tmpfs(1, 512 << 20);
    c.resize_tmpfs(2, 512 << 20);
    let up = c.up_ok();
    assert!(text(&up).contains("stored"), "up.sh should say the kept data was stored:\n{}", text(&up));
    let back = fs::read(&big).expect("read back");
    assert_eq!(back.len(), accepted.len(), "size after recovery");
    assert!(back == accepted, "the file reads back whole after recovery");
    let leftover: Vec<_> = walk(&c.state().join("recovery"));
    assert!(leftover.is_empty(), "recovery files left after they were stored: {leftover:?}");
    c.down_ok();
}

/// Every file below `dir` (none if it does not exist).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
    rd.flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}

/// `runuser -u nobody -- sh -c 'printf x >> FILE'`: an O_APPEND write as
/// the unprivileged user.
fn append_as_nobody(file: &Path) {
    let out = output(
        Command::new("runuser").args(["-u", "nobody", "--", "sh", "-c", "printf x >> \"$0\""]).arg(file),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "append as nobody: {}", text(&out));
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("stat").mode() & 0o7777
}

#[test]
fn a_write_by_a_non_root_user_clears_setuid_and_setgid_and_roots_does_not() {
    let mut c = TestCluster::start(1, 1);
    c.mount();
    let mnt = c.mountpoint();
    // Other users must traverse the directories above the mount point.
    let root = mnt.parent().expect("mount point has a parent");
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod");
    // SAFETY: getpwnam/getgrnam with valid C strings; the result is only
    // read at once.
    let (nobody, nogroup) = unsafe {
        let u = libc::getpwnam(c"nobody".as_ptr());
        assert!(!u.is_null(), "the system has no user nobody");
        ((*u).pw_uid, (*u).pw_gid)
    };
    let own = mnt.join("owned-by-nobody");
    let grp = mnt.join("group-writable");
    let kept = mnt.join("setgid-no-group-exec");
    let by_root = mnt.join("root-writes");
    for (p, uid, gid, m) in [
        (&own, nobody, 0, 0o4755),
        (&grp, 0, nogroup, 0o6775),
        (&kept, 0, nogroup, 0o2764),
        (&by_root, nobody, nogroup, 0o6777),
    ] {
        fs::write(p, b"start\n").expect("create");
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
        // chown clears the bits: set them after it.
        fs::set_permissions(p, fs::Permissions::from_mode(m)).expect("chmod");
        assert_eq!(mode(p), m, "{} set up", p.display());
    }
    append_as_nobody(&own);
    append_as_nobody(&grp);
    append_as_nobody(&kept);
    OpenOptions::new()
        .append(true)
        .open(&by_root)
        .expect("open")
        .write_all(b"root\n")
        .expect("append as root");
    let want = [(&own, 0o755), (&grp, 0o775), (&kept, 0o2764), (&by_root, 0o6777)];
    for (p, m) in want {
        assert_eq!(mode(p), m, "{} after the appends: {:o}", p.display(), mode(p));
    }
    c.unmount();
    c.mount();
    for (p, m) in want {
        assert_eq!(mode(p), m, "{} after a remount: {:o}", p.display(), mode(p));
    }
    assert_eq!(fs::read(&own).expect("read"), b"start\nx");
    c.unmount();
    c.stop_all();
}

#[test]
fn df_of_peers_sharing_one_disk_counts_it_once_and_a_fresh_volume_uses_nothing() {
    // Three peers whose data directories are on the host disk, R = 3.
    let mut c = TestCluster::start(3, 3);
    c.mount();
    let vfs = |p: &Path| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: valid path and a zeroed, properly sized statvfs buffer.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs {}", p.display());
        let f = st.f_frsize;
        (st.f_blocks * f, st.f_bfree * f, st.f_bavail * f)
    };
    let disk = c.peer_data_dir(0);
    let (d_total, _, d_avail) = vfs(&disk);
    let (m_total, m_free, _) = vfs(&c.mountpoint());
    let used = m_total - m_free;
    let r = 3;
    // Size, net of R: the disk's space for p2pfs once, not three times
    // (between what is available on it and its whole size; other programs'
    // data and the root reserve are not p2pfs's).
    let slack = 256 << 20; // the disk moves while the test runs
    assert!(
        m_total * r + slack >= d_avail && m_total * r <= d_total,
        "df size × R = {} B, host disk: {d_avail} B available of {d_total} B",
        m_total * r
    );
    assert!(used < 64 << 20, "a fresh volume shows {used} B used");
    c.unmount();
    c.stop_all();
}
