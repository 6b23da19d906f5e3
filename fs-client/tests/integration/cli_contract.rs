//! The parts of the command-line contract that scripts and users rely on:
//! how a mount shows up, and how identity files are guarded.

use super::tools::output;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use testkit::cluster::{mount_entry, TestCluster, FSTYPE};

const CLI_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn mount_is_listed_as_fuse_p2pfs_and_sigterm_unmounts_it() {
    let mut c = TestCluster::start(1, 1);
    c.mount();
    let entry = mount_entry(&c.mountpoint()).expect("mounted");
    assert_eq!(
        entry.fstype, FSTYPE,
        "scripts find the mount by its type in /proc/mounts ({entry:?}); with \
         fuser's mount(2) path the subtype must also be passed as the kernel \
         option `subtype=p2pfs`"
    );
    // Setuid binaries and device nodes written by any member grant nothing
    // on this machine.
    let options: Vec<&str> = entry.options.split(',').collect();
    for flag in ["nosuid", "nodev"] {
        assert!(options.contains(&flag), "mount options {:?} lack {flag}", entry.options);
    }
    // unmount() checks that fs-client exits 0 and the mount is gone.
    c.unmount();
    c.stop_all();
}

#[test]
fn keygen_never_overwrites_and_init_refuses_a_group_readable_identity() {
    let mut c = TestCluster::start(1, 1);
    let id = c.identity_file();
    let before = fs::read(&id).expect("read identity");

    let out = output(c.fs_client().arg("keygen").arg("-o").arg(&id), CLI_TIMEOUT);
    assert!(!out.status.success(), "keygen overwrote an existing identity file");
    assert_eq!(fs::read(&id).expect("read identity"), before, "identity changed");

    let loose = c.work_dir().join("loose-identity.txt");
    fs::copy(&id, &loose).expect("copy identity");
    fs::set_permissions(&loose, fs::Permissions::from_mode(0o640)).expect("chmod");
    let addr = c.dirsvc_addr().to_string();
    let out = output(
        c.fs_client().args(["init", "--if-missing", "--dirsvc", &addr, "-i"]).arg(&loose),
        CLI_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a group-readable identity was accepted");
    assert!(
        stderr.contains("loose-identity.txt"),
        "the error should name the identity file; stderr: {stderr}"
    );

    // The volume exists (start() made it): a second init fails, unless asked
    // to accept an existing volume.
    let init = |extra: &[&str]| {
        output(c.fs_client().args(["init", "--dirsvc", &addr]).args(extra).arg("-i").arg(&id), CLI_TIMEOUT)
    };
    assert!(!init(&[]).status.success(), "a second init succeeded");
    let again = init(&["--if-missing"]);
    assert!(
        again.status.success(),
        "init --if-missing on an existing volume failed: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    c.stop_all();
}
