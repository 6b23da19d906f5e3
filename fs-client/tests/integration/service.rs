//! Run as a service (issue "Operable"): `scripts/install.sh` installs the
//! binaries and the mount helper; `mount -t fuse.p2pfs` and an fstab line
//! mount the volume of a state directory; every command works with
//! nothing but `P2PFS_STATE` set; the client's options come from flag,
//! environment, config file and default, in that order.

use super::scripted::{text, Scripted};
use super::tools::output;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::cluster::{bin_dir, hermetic};

const CMD_TIMEOUT: Duration = Duration::from_secs(90);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// What `scripts/install.sh` put in place; removed again on drop (the
/// helper link in /sbin only if it is ours).
struct Installed {
    prefix: PathBuf,
    helper: PathBuf,
}

impl Installed {
    /// Runs `scripts/install.sh --no-build` into `work` (binaries, configs,
    /// units), with the helper at /sbin/mount.fuse.p2pfs as for a user.
    fn run(work: &Path) -> Installed {
        let prefix = work.join("prefix");
        let mut cmd = Command::new("bash");
        hermetic(&mut cmd);
        cmd.arg(repo_root().join("scripts/install.sh"))
            .arg("--no-build")
            .current_dir(repo_root())
            .env("PREFIX", &prefix)
            .env("SYSCONFDIR", work.join("etc"))
            .env("UNITDIR", work.join("units"));
        // install.sh installs target/release; the tests may run another
        // build: point it at this one.
        let release = repo_root().join("target/release");
        if bin_dir() != release {
            panic!(
                "this test needs the release build (cargo test --release); binaries are in {}",
                bin_dir().display()
            );
        }
        let out = output(&mut cmd, CMD_TIMEOUT);
        assert!(out.status.success(), "install.sh failed:\n{}", text(&out));
        let helper = PathBuf::from("/sbin/mount.fuse.p2pfs");
        assert_eq!(fs::read_link(&helper).expect("helper link"), prefix.join("bin/fs-client"));
        for f in ["bin/dirsvc", "bin/peerd", "bin/fs-client", "share/doc/p2pfs/OPERATIONS.md"] {
            assert!(prefix.join(f).is_file(), "install.sh did not install {f}");
        }
        for f in [
            "etc/p2pfs/dirsvc.toml",
            "etc/p2pfs/peerd.toml",
            "etc/p2pfs/client.toml",
            "units/p2pfs-dirsvc.service",
        ] {
            assert!(work.join(f).is_file(), "install.sh did not install {f}");
        }
        let unit = fs::read_to_string(work.join("units/p2pfs-peerd.service")).expect("unit");
        assert!(
            unit.contains(&format!(
                "ExecStart={}/bin/peerd --config {}/etc/p2pfs/peerd.toml",
                prefix.display(),
                work.display()
            )),
            "{unit}"
        );
        Installed { prefix, helper }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if fs::read_link(&self.helper).is_ok_and(|t| t.starts_with(&self.prefix)) {
            let _ = fs::remove_file(&self.helper);
        }
    }
}

/// Unmounts `dir` and waits until the mount's process (started by the
/// helper, so not ours to kill) is gone: unmounting ends it.
fn umount_and_wait(dir: &Path) {
    let out = output(Command::new("umount").arg(dir), CMD_TIMEOUT);
    assert!(out.status.success(), "umount {}: {}", dir.display(), text(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    while mount_processes(dir) > 0 {
        assert!(Instant::now() < deadline, "the fs-client of {} still runs 30 s after umount", dir.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// fs-client processes whose command line names `dir`.
fn mount_processes(dir: &Path) -> usize {
    let want = dir.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
                .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
                .filter(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    args.first().is_some_and(|a| a.ends_with(b"fs-client")) && args.contains(&want)
                })
                .count()
        })
        .unwrap_or(0)
}

fn is_p2pfs_mount(dir: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = dir.to_string_lossy();
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 2 && f[1] == want && f[2] == "fuse.p2pfs"
    })
}

#[test]
fn mount_t_fuse_p2pfs_and_an_fstab_line_mount_the_volume_of_a_state_directory() {
    let c = Scripted::new(2, 2);
    c.up_ok();
    let state = c.state();
    fs::write(c.mnt().join("hello.txt"), b"through up.sh's mount\n").expect("write");
    let work = state.parent().expect("work dir").to_path_buf();
    let _installed = Installed::run(&work);

    // mount -t fuse.p2pfs with the state directory as an option.
    let second = work.join("second");
    fs::create_dir_all(&second).expect("mkdir");
    let out = output(
        Command::new("mount")
            .args(["-t", "fuse.p2pfs", "p2pfs"])
            .arg(&second)
            .arg("-o")
            .arg(format!("state={},_netdev,nofail", state.display())),
        CMD_TIMEOUT,
    );
    assert!(out.status.success(), "mount -t fuse.p2pfs failed:\n{}", text(&out));
    assert!(is_p2pfs_mount(&second), "{} is not a fuse.p2pfs mount", second.display());
    assert_eq!(
        fs::read(second.join("hello.txt")).expect("read through the helper's mount"),
        b"through up.sh's mount\n"
    );
    fs::write(second.join("from-helper"), b"written through mount -t\n")
        .expect("write through the helper's mount");
    umount_and_wait(&second);
    assert_eq!(
        fs::read(c.mnt().join("from-helper")).expect("seen by the first mount"),
        b"written through mount -t\n"
    );

    // An fstab line (mount -T: another fstab file, the same parsing).
    let third = work.join("third");
    fs::create_dir_all(&third).expect("mkdir");
    let fstab = work.join("fstab");
    fs::write(
        &fstab,
        format!(
            "# p2pfs\np2pfs {} fuse.p2pfs state={},_netdev,nofail,noatime 0 0\n",
            third.display(),
            state.display()
        ),
    )
    .expect("write fstab");
    let out = output(Command::new("mount").arg("-T").arg(&fstab).arg(&third), CMD_TIMEOUT);
    assert!(out.status.success(), "mount through the fstab line failed:\n{}", text(&out));
    assert!(is_p2pfs_mount(&third), "{} is not a fuse.p2pfs mount", third.display());
    assert_eq!(
        fs::read(third.join("from-helper")).expect("read through the fstab mount"),
        b"written through mount -t\n"
    );
    umount_and_wait(&third);

    // A mount that cannot start says why and exits non-zero.
    let out = output(
        Command::new("mount").args(["-t", "fuse.p2pfs", "p2pfs"]).arg(&second).arg("-o").arg("cache_mibs=1"),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success(), "an unknown option mounted:\n{}", text(&out));
    assert!(text(&out).contains("cache_mibs"), "the error does not name the option:\n{}", text(&out));
    assert!(!is_p2pfs_mount(&second));

    // Every command finds dirsvc, identity and certificates through
    // P2PFS_STATE alone.
    let mut cmd = Command::new(bin_dir().join("fs-client"));
    hermetic(&mut cmd);
    let out = output(cmd.arg("volume").env("P2PFS_STATE", &state).env("HOME", &work), CMD_TIMEOUT);
    assert!(out.status.success(), "fs-client volume with P2PFS_STATE:\n{}", text(&out));
    assert!(text(&out).contains("volume:") && text(&out).contains("recipient: age1"), "{}", text(&out));
    c.down_ok();
}

#[test]
fn client_options_come_from_flag_then_environment_then_config_file_then_default() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    // An admin identity of a throwaway CA (offline); no dirsvc runs at the
    // addresses below, so each command fails naming the address it used.
    let fsc = || {
        let mut cmd = Command::new(bin_dir().join("fs-client"));
        hermetic(&mut cmd);
        cmd.env("HOME", w).env("XDG_CONFIG_HOME", w.join("xdg"));
        cmd
    };
    let out = output(fsc().args(["ca", "init", "--dir"]).arg(w.join("ca")), CMD_TIMEOUT);
    assert!(out.status.success(), "{}", text(&out));
    let out = output(
        fsc()
            .args(["ca", "issue", "--role", "admin", "--ca-dir"])
            .arg(w.join("ca"))
            .arg("--out")
            .arg(w.join("tls")),
        CMD_TIMEOUT,
    );
    assert!(out.status.success(), "{}", text(&out));
    let config = w.join("client.toml");
    fs::write(&config, "dirsvc = \"127.0.0.1:3\"\n").expect("write config");
    let volume = |extra: &dyn Fn(&mut Command)| -> String {
        let mut cmd = fsc();
        cmd.arg("--tls-dir").arg(w.join("tls")).arg("volume");
        extra(&mut cmd);
        let out = output(&mut cmd, CMD_TIMEOUT);
        assert!(!out.status.success(), "no dirsvc runs, yet: {}", text(&out));
        text(&out)
    };
    // Default.
    assert!(volume(&|_| {}).contains("127.0.0.1:7700"), "default");
    // Config file over default (named by the environment variable, and
    // found as the default file ~/.config/p2pfs/client.toml).
    assert!(volume(&|c| {
        c.env("P2PFS_CLIENT_CONFIG", &config);
    })
    .contains("127.0.0.1:3"));
    fs::create_dir_all(w.join("xdg/p2pfs")).expect("mkdir");
    fs::copy(&config, w.join("xdg/p2pfs/client.toml")).expect("copy config");
    assert!(volume(&|_| {}).contains("127.0.0.1:3"), "default config file");
    // Environment over config file.
    assert!(volume(&|c| {
        c.env("P2PFS_DIRSVC", "127.0.0.1:2");
    })
    .contains("127.0.0.1:2"));
    // Flag over environment.
    assert!(volume(&|c| {
        c.env("P2PFS_DIRSVC", "127.0.0.1:2").arg("--dirsvc").arg("127.0.0.1:1");
    })
    .contains("127.0.0.1:1"));
    // A misspelt key is an error naming it, not silently ignored.
    fs::write(&config, "dirsvcc = \"127.0.0.1:3\"\n").expect("write config");
    let out = volume(&|c| {
        c.arg("--config").arg(&config);
    });
    assert!(out.contains("dirsvcc"), "{out}");
}
