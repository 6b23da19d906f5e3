//! `mount -t fuse.p2pfs` and `/etc/fstab`: the mount helper.
//!
//! mount(8) runs `/sbin/mount.fuse.p2pfs SPEC DIR [-sfnv] [-o OPTIONS]` for
//! a filesystem of type `fuse.p2pfs` (`scripts/install.sh` links that name
//! to `fs-client`, which recognises it by its program name). The helper
//! turns the mount options into `fs-client mount` flags, starts the mount
//! in the background (its own session, output to a log file), waits until
//! the kernel lists DIR as a p2pfs mount and exits 0; if the mount ends
//! first, it prints the end of the log and exits 1. `umount DIR` ends the
//! background process.
//!
//! SPEC is the dirsvc address (`host:port`), or any word (`p2pfs`) to take
//! the address from the options, the config file or the state directory.
//! Options:
//! - `state=DIR`: the state directory (as `P2PFS_STATE`: dirsvc address,
//!   identity, TLS directory, pins and recovery files found there);
//! - `config=FILE`: the client's config file (`P2PFS_CLIENT_CONFIG`);
//! - `log=FILE`: where the mount logs (default `DIR/logs/mount.log` with
//!   `state=`, else `/var/log/p2pfs-mount.log` as root,
//!   `~/.local/state/p2pfs/mount.log` otherwise);
//! - any `fs-client mount` option by its long name, `_` for `-`
//!   (`identity=/etc/p2pfs/identity.txt`, `tls_dir=…`, `cache_mib=512`);
//! - mount(8)'s and systemd's generic options (`rw`, `defaults`, `noauto`,
//!   `nofail`, `_netdev`, `x-systemd.*`, `nosuid`, `nodev`, `noatime`, …)
//!   are accepted and left to them (p2pfs always mounts nosuid, nodev).
//!
//! Any other option is refused, naming it.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The program names under which `fs-client` acts as the mount helper.
pub const HELPER_NAMES: [&str; 2] = ["mount.fuse.p2pfs", "mount.p2pfs"];

/// How long the helper waits for the mount to appear, in seconds.
pub const MOUNT_WAIT: Duration = Duration::from_secs(60);

/// Options mount(8), the kernel or systemd own; the helper ignores them.
const GENERIC: [&str; 22] = [
    "rw", "ro", "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev",
    "nofail", "nosuid", "suid", "nodev", "dev", "exec", "noexec", "atime", "noatime", "relatime", "sync",
];

/// A mount request from mount(8), turned into what to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelperPlan {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Arguments after `fs-client` (`mount … DIR`).
    pub args: Vec<OsString>,
    /// Environment to set for the mount (`P2PFS_STATE`,
    /// `P2PFS_CLIENT_CONFIG`).
    pub env: Vec<(String, OsString)>,
    /// The mount's log file.
    pub log: PathBuf,
    /// `-f` (fake): do everything but mount.
    pub fake: bool,
}

/// Why a mount request was refused; the message names the option.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HelperError(pub String);

/// Reads mount(8)'s arguments (after the program name): `SPEC DIR [-sfnv]
/// [-o OPTIONS]`.
///
/// Errors: [`HelperError`] for a missing SPEC or DIR, an unknown flag or
/// option (`mount_options` names the options of `fs-client mount` that may
/// be passed through).
pub fn plan(args: &[OsString], mount_options: &[String]) -> Result<HelperPlan, HelperError> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "-o" {
            let o = it.next().ok_or_else(|| HelperError("-o needs a value".into()))?;
            options.extend(o.to_string_lossy().split(',').filter(|o| !o.is_empty()).map(str::to_string));
        } else if let Some(o) = s.strip_prefix("-o") {
            options.extend(o.split(',').filter(|o| !o.is_empty()).map(str::to_string));
        } else if s.starts_with('-') && s.len() > 1 {
            // -s sloppy, -n no mtab, -v verbose: nothing to do; -f fake.
            for c in s[1..].chars() {
                match c {
                    's' | 'n' | 'v' => {}
                    'f' => fake = true,
                    other => return Err(HelperError(format!("unknown flag -{other}"))),
                }
            }
        } else {
            positional.push(a.clone());
        }
    }
    let [spec, dir] = positional.as_slice() else {
        return Err(HelperError("usage: mount.fuse.p2pfs SPEC DIR [-o OPTIONS]".into()));
    };
    let mountpoint = std::path::absolute(Path::new(dir)).map_err(|e| HelperError(format!("{dir:?}: {e}")))?;
    let mut out = vec![OsString::from("mount")];
    let mut env = Vec::new();
    let mut log = None;
    let mut state = None;
    let spec = spec.to_string_lossy();
    if spec.contains(':') {
        out.push(format!("--dirsvc={spec}").into());
    }
    for o in options {
        let (key, value) = match o.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (o.clone(), None),
        };
        if GENERIC.contains(&key.as_str()) || key.starts_with("x-") || key == "comment" {
            continue;
        }
        let flag = key.replace('_', "-");
        match (flag.as_str(), value) {
            ("state", Some(v)) => {
                if !Path::new(&v).is_dir() {
                    return Err(HelperError(format!(
                        "state directory {v} does not exist (state= names a directory scripts/up.sh made)"
                    )));
                }
                env.push(("P2PFS_STATE".to_string(), OsString::from(&v)));
                state = Some(PathBuf::from(v));
            }
            ("config", Some(v)) => env.push(("P2PFS_CLIENT_CONFIG".to_string(), v.into())),
            ("log", Some(v)) => log = Some(PathBuf::from(v)),
            ("dirsvc", Some(_)) if spec.contains(':') => {
                return Err(HelperError("the dirsvc address is given twice (SPEC and dirsvc=)".into()))
            }
            (f, v) if mount_options.iter().any(|m| m == f) => match v {
                Some(v) => out.push(format!("--{f}={v}").into()),
                None => out.push(format!("--{f}").into()),
            },
            _ => {
                return Err(HelperError(format!(
                    "unknown mount option `{o}` (p2pfs takes state=, config=, log= and the options of `fs-client mount`)"
                )))
            }
        }
    }
    out.push(mountpoint.clone().into_os_string());
    let log = log.unwrap_or_else(|| match &state {
        Some(s) => s.join("logs").join("mount.log"),
        None if is_root() => PathBuf::from("/var/log/p2pfs-mount.log"),
        None => crate::defaults::user_state_dir().join("mount.log"),
    });
    Ok(HelperPlan { mountpoint, args: out, env, log, fake })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Starts `program` (this `fs-client`) with the plan in the background and
/// waits up to [`MOUNT_WAIT`] until the mountpoint is a p2pfs mount.
///
/// Errors: [`HelperError`] if the log cannot be opened, the mount cannot
/// start, it exits before mounting (with the end of its log) or does not
/// mount in time (it is then stopped).
pub fn run(program: &Path, plan: &HelperPlan) -> Result<(), HelperError> {
    if plan.fake {
        return Ok(());
    }
    if let Some(parent) = plan.log.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| HelperError(format!("cannot create {}: {e}", parent.display())))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&plan.log)
        .map_err(|e| HelperError(format!("cannot open the mount log {}: {e}", plan.log.display())))?;
    let start_len = log.metadata().map(|m| m.len()).unwrap_or(0);
    let err = log.try_clone().map_err(|e| HelperError(format!("log: {e}")))?;
    let mut cmd = Command::new(program);
    cmd.args(&plan.args).stdin(Stdio::null()).stdout(log).stderr(err);
    for (k, v) in &plan.env {
        cmd.env(k, v);
    }
    // SAFETY: setsid is async-signal-safe; the mount leaves mount(8)'s
    // session and process group so that it outlives the helper.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child =
        cmd.spawn().map_err(|e| HelperError(format!("cannot start {}: {e}", program.display())))?;
    let deadline = Instant::now() + MOUNT_WAIT;
    loop {
        if crate::mount::mounted_type(&plan.mountpoint).is_some_and(|t| t.starts_with("fuse")) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(HelperError(format!(
                "the mount exited ({status}) before mounting {}; its log {}:\n{}",
                plan.mountpoint.display(),
                plan.log.display(),
                log_tail(&plan.log, start_len)
            )));
        }
        if Instant::now() > deadline {
            // SAFETY: kill with a PID we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            return Err(HelperError(format!(
                "{} was not mounted within {} s; see {}",
                plan.mountpoint.display(),
                MOUNT_WAIT.as_secs(),
                plan.log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines written to `path` after byte `from`.
fn log_tail(path: &Path, from: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn mount_opts() -> Vec<String> {
        ["identity", "tls-dir", "cache-mib", "dirsvc", "pin-dir"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fstab_options_become_mount_flags_and_the_state_directory_its_environment() {
        let p = plan(
            &os(&["p2pfs", "/mnt/p", "-o", "rw,state=/tmp,cache_mib=64,_netdev,nofail,x-systemd.automount"]),
            &mount_opts(),
        )
        .unwrap();
        assert_eq!(p.args, os(&["mount", "--cache-mib=64", "/mnt/p"]));
        assert_eq!(p.env, vec![("P2PFS_STATE".to_string(), OsString::from("/tmp"))]);
        assert_eq!(p.log, Path::new("/tmp/logs/mount.log"));
        assert!(!p.fake);
    }

    #[test]
    fn a_host_port_spec_is_the_dirsvc_address() {
        let p = plan(&os(&["10.0.0.1:7700", "/m", "-fv", "-oidentity=/k"]), &mount_opts()).unwrap();
        assert_eq!(p.args, os(&["mount", "--dirsvc=10.0.0.1:7700", "--identity=/k", "/m"]));
        assert!(p.fake);
        assert!(plan(&os(&["10.0.0.1:7700", "/m", "-o", "dirsvc=x:1"]), &mount_opts()).is_err());
    }

    #[test]
    fn unknown_options_and_missing_arguments_are_refused_by_name() {
        let e = plan(&os(&["p2pfs", "/m", "-o", "cahce_mib=1"]), &mount_opts()).unwrap_err();
        assert!(e.0.contains("cahce_mib"), "{e}");
        assert!(plan(&os(&["p2pfs"]), &mount_opts()).is_err());
        assert!(plan(&os(&["p2pfs", "/m", "-q"]), &mount_opts()).is_err());
        let e = plan(&os(&["p2pfs", "/m", "-o", "state=/nonexistent/p2pfs"]), &mount_opts()).unwrap_err();
        assert!(e.0.contains("state directory /nonexistent/p2pfs does not exist"), "{e}");
    }
}
