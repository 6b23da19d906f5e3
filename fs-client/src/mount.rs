//! The mount session: stale-mount cleanup, mounting, waiting for a signal
//! or an external unmount, and a clean detach that never hangs.

use crate::error::{Error, Result};
use crate::fs::recovery::{RecoverReport, RecoveryDir, Unstored};
use crate::fs::{Fs, FsConfig};
use crate::fuse::FuseAdapter;
use crate::remote::DirClient;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{info, warn};

/// What `fs-client mount` needs.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// dirsvc `host:port`.
    pub dirsvc: String,
    /// Path of the age identity file.
    pub identity: PathBuf,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// FUSE worker threads (default 8).
    pub fuse_threads: usize,
    /// Where data that cannot be stored by unmount is kept (sealed) for
    /// the next mount, one subdirectory per volume ([`crate::fs::recovery`]).
    pub recovery_dir: PathBuf,
    /// This client's TLS identity directory (a client certificate of the
    /// cluster; see [`crate::admin::tls_dir`]).
    pub tls_dir: PathBuf,
    /// Where volumes are pinned at first use ([`crate::pins`]).
    pub pin_dir: PathBuf,
    /// Tunables of the core.
    pub fs: FsConfig,
    /// Plain-HTTP address (`host:port`, port 0 picks one) serving this
    /// mount's Prometheus metrics at `/metrics` ([`crate::telemetry`]);
    /// `None`: not served.
    pub metrics_listen: Option<String>,
    /// Where to write the bound metrics address (`ip:port`, atomically)
    /// once it listens.
    pub metrics_addr_file: Option<PathBuf>,
}

/// Whether `path` is a mount point listed in /proc/self/mounts, with its
/// filesystem type.
pub(crate) fn mounted_type(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let want = path.to_string_lossy();
    mounts.lines().find_map(|l| {
        let mut f = l.split(' ');
        let (_src, target, fstype) = (f.next()?, f.next()?, f.next()?);
        // /proc/mounts escapes spaces and friends as octal.
        let target =
            target.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\");
        (target == want).then(|| fstype.to_string())
    })
}

/// Detaches the mount at `path` (`umount2(MNT_DETACH)`): the name goes away
/// at once and the kernel drops the connection when the last user leaves.
pub fn detach(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `statfs(2)` of `path`.
fn statfs(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path and `buf` a properly sized,
    // writable statfs struct; both outlive the call.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Cleans up a stale p2pfs mount at `path` (a dead fs-client leaves one that
/// answers ENOTCONN). Refuses a live mount.
fn clean_stale(path: &Path) -> Result<()> {
    let Some(fstype) = mounted_type(path) else { return Ok(()) };
    // statfs(2), not stat: the kernel may answer stat from cached attributes
    // of a dead mount's root, while statfs always asks the daemon.
    match statfs(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            warn!(mountpoint = %path.display(), "cleaning up a stale mount left by a dead client");
            detach(path)
                .map_err(|e| Error::Io(format!("cannot clean stale mount at {}: {e}", path.display())))
        }
        _ if fstype.starts_with("fuse") => Err(Error::Io(format!(
            "{} is already mounted ({fstype}); unmount it first (`umount {}`)",
            path.display(),
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Mounts the volume and serves it until SIGINT/SIGTERM or an external
/// unmount; then detaches, flushes buffered data and returns.
///
/// Errors: connection, key and mount failures, each with a message that
/// says what to do.
/// This machine's host name, for the session label (`?` if unknown).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Serves this mount's metrics on `listen` and writes the bound address
/// to `addr_file` (if given).
///
/// Errors: [`Error::Io`] naming the address or the file.
async fn start_metrics(listen: &str, addr_file: Option<&Path>) -> Result<common::http::HttpServer> {
    let server = common::telemetry::start(listen, common::telemetry::Endpoint::default())
        .await
        .map_err(|e| Error::Io(format!("cannot serve metrics on {listen}: {e}")))?;
    if let Some(file) = addr_file {
        let (file, addr) = (file.to_path_buf(), server.addr().to_string());
        tokio::task::spawn_blocking(move || {
            common::fsutil::write_atomic(&file, addr.as_bytes(), 0o644)
                .map_err(|e| Error::Io(format!("cannot write the metrics address file: {e}")))
        })
        .await
        .map_err(|e| Error::Io(format!("writing the metrics address file: {e}")))??;
    }
    Ok(server)
}

/// Follows dirsvc's change feed ([`Fs::follow_changes`]) and drops what
/// the kernel caches about each changed inode and entry, so changes made
/// through other mounts show at once rather than when a cache TTL runs
/// out. Runs until aborted.
async fn watch_changes(fs: std::sync::Arc<Fs>, notifier: fuser::Notifier) {
    fs.follow_changes(move |changes| {
        use std::os::unix::ffi::OsStrExt;
        for c in changes {
            // ENOENT: the kernel does not cache it; nothing to do.
            let _ = notifier.inval_inode(fuser::INodeNo(c.ino.0), 0, 0);
            if let Some((parent, name)) = c.entry {
                let _ = notifier.inval_entry(fuser::INodeNo(parent.0), std::ffi::OsStr::from_bytes(&name));
            }
        }
    })
    .await
}

/// Async worker threads of a mount: half the CPUs, at least 1, at most 8.
/// They carry the connections (TLS, framing) and the small-block crypto;
/// sealing and opening of large blocks runs on the blocking pool and FUSE
/// requests on fuser's threads, which take the other half. Each further
/// worker on a small machine costs wake-ups (a woken worker wakes another
/// to steal): on 2 CPUs, 1 worker instead of 4 cut the client's CPU for an
/// untar of 5,000 files by 11 % (alternating runs), at the same files/s
/// and no slower 1 GiB writes and reads (issue 10's closing note).
fn io_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    (cpus / 2).clamp(1, 8)
}

pub fn run(config: MountConfig) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads())
        .thread_name("p2pfs-io")
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("cannot start runtime: {e}")))?;
    let mountpoint = std::path::absolute(&config.mountpoint)
        .map_err(|e| Error::Io(format!("bad mount point {}: {e}", config.mountpoint.display())))?;
    clean_stale(&mountpoint)?;
    match std::fs::metadata(&mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Error::Io(format!("mount point {} is not a directory", mountpoint.display()))),
        Err(e) => return Err(Error::Io(format!("mount point {}: {e}", mountpoint.display()))),
    }
    // Served from before the mount appears to after it is gone, so a
    // scrape sees the final flush too.
    let _metrics = match &config.metrics_listen {
        Some(listen) => Some(rt.block_on(start_metrics(listen, config.metrics_addr_file.as_deref()))?),
        None => None,
    };
    let fs = rt.block_on(async {
        let tls = crate::admin::load_tls(&config.tls_dir)?;
        let dir = DirClient::connect(&config.dirsvc, tls)
            .await
            .map_err(|e| Error::Io(format!("cannot reach dirsvc at {}: {e}", config.dirsvc)))?
            .with_retry_window(crate::remote::MOUNT_RETRY_WINDOW);
        let id = crate::volume::load_identity(&dir, &config.identity).await?;
        let (info, keys) = crate::volume::open_pinned(&dir, &id, Some(&config.pin_dir)).await?;
        info!(
            volume = %info.id,
            block_size = info.block_size,
            replicas = info.replicas,
            key_epoch = keys.newest(),
            members = info.keyring.members.len(),
            "volume opened"
        );
        let mut fs_config = config.fs.clone();
        fs_config.session_label =
            format!("{} pid={} {}", hostname(), std::process::id(), mountpoint.display());
        fs_config.identity = Some(id.path.clone());
        fs_config.pin_dir = Some(config.pin_dir.clone());
        let fs = Fs::new(dir, &info, keys, fs_config);
        fs.session_id().await?;
        let keeper = RecoveryDir::new(&config.recovery_dir, info.id, fs.keys());
        let report = fs.recover(&keeper).await;
        tell_recovered(&mountpoint, &keeper, &report);
        Ok::<_, Error>((fs, keeper))
    })?;
    let (fs, keeper) = fs;

    let mut fc = fuser::Config::default();
    fc.mount_options = vec![
        fuser::MountOption::FSName("p2pfs".into()),
        // fuser's direct mount(2) drops `Subtype`; passing the option through
        // makes /proc/mounts show `fuse.p2pfs`.
        fuser::MountOption::CUSTOM("subtype=p2pfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
        // Files in the volume are written by any member (and their modes
        // and device numbers come from dirsvc): a setuid binary or a device
        // node there must never grant anything on this machine. fuser
        // defaults to both today; said here so no default can drop them.
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        fc.acl = fuser::SessionACL::All;
    }
    fc.n_threads = Some(config.fuse_threads.max(1));
    fc.clone_fd = true;
    let adapter = FuseAdapter::new(fs.clone(), rt.handle().clone());
    let session = fuser::spawn_mount(adapter, &mountpoint, &fc)
        .map_err(|e| Error::Io(format!("cannot mount at {}: {e}", mountpoint.display())))?;
    // Commits uploaded blocks of files that stay open, so garbage collection
    // (which deletes chunks left uncommitted past its grace period) never
    // sees them as orphans and a crash loses at most a few seconds of data.
    let committer = {
        let fs = fs.clone();
        let every = config.fs.commit_interval;
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every / 2).await;
                fs.commit_idle().await;
            }
        })
    };
    let session_keeper = {
        let fs = fs.clone();
        rt.spawn(async move { fs.keep_session().await })
    };
    let watcher = rt.spawn(watch_changes(fs.clone(), session.notifier()));
    let renewer = {
        let fs = fs.clone();
        let tls_dir = config.tls_dir.clone();
        rt.spawn(async move {
            loop {
                match crate::admin::renew_if_due(fs.dir(), &tls_dir).await {
                    Ok(true) => info!("client certificate renewed"),
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "renewing the client certificate failed; retried in an hour"),
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        })
    };
    let notifier = session.notifier();
    fs.set_invalidator(std::sync::Arc::new(move |ino| {
        // ENOENT: the kernel does not cache the inode.
        let _ = notifier.inval_inode(fuser::INodeNo(ino.0), 0, 0);
    }));
    let notifier = session.notifier();
    fs.set_page_store(std::sync::Arc::new(move |ino, offset, data| {
        // ENOENT: the kernel no longer has the inode; nothing to fill.
        notifier.store(fuser::INodeNo(ino.0), offset, data).is_ok()
    }));
    info!(mountpoint = %mountpoint.display(), dirsvc = %config.dirsvc, "mounted");

    let signalled = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
            return false;
        };
        loop {
            tokio::select! {
                _ = int.recv() => return true,
                _ = term.recv() => return true,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if session.guard.is_finished() {
                        return false;
                    }
                }
            }
        }
    });
    if signalled {
        info!(mountpoint = %mountpoint.display(), "signal received; unmounting");
        if let Err(e) = detach(&mountpoint) {
            warn!(error = %e, "detach failed");
        }
    } else {
        info!(mountpoint = %mountpoint.display(), "unmounted");
    }
    // The session thread ends once the kernel drops the connection; wait a
    // bounded time so a process still holding a file open cannot hang us.
    for _ in 0..50 {
        if session.guard.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    committer.abort();
    watcher.abort();
    renewer.abort();
    let failed = rt.block_on(fs.flush_all());
    let unstored = if failed.is_empty() { Vec::new() } else { rt.block_on(fs.unstored(&failed)) };
    session_keeper.abort();
    rt.block_on(fs.close_session());
    if session.guard.is_finished() {
        if let Err(e) = session.join() {
            warn!(error = %e, "FUSE session ended with an error");
        }
    } else {
        warn!("files still open at unmount; exiting anyway");
        std::mem::forget(session);
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    if unstored.is_empty() {
        return Ok(());
    }
    // Sealed under the newest epoch this mount knows (it may have
    // reloaded the keyring since it started).
    Err(keep_unstored(&mountpoint, &keeper.with_keys(fs.keys()), &unstored))
}

/// The default recovery directory: `$P2PFS_STATE/recovery`, else
/// `$XDG_STATE_HOME/p2pfs/recovery`, else
/// `$HOME/.local/state/p2pfs/recovery`, else `/var/lib/p2pfs/recovery`.
pub fn default_recovery_dir() -> PathBuf {
    match crate::defaults::state_dir() {
        Some(state) => state.join("recovery"),
        None => crate::defaults::user_state_dir().join("recovery"),
    }
}

/// The prefix of the lines fs-client writes to stderr for a person to read
/// (scripts/down.sh shows them): data kept or lost, data recovered.
pub const NOTICE_PREFIX: &str = "fs-client: ";

/// `bytes` in the largest binary unit that keeps it above 1 (`1.5 MiB`).
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `mountpoint` joined with a path below the volume's root.
fn full_path(mountpoint: &Path, path: &str) -> String {
    if path.starts_with('/') {
        format!("{}{path}", mountpoint.display())
    } else {
        format!("{}/{path}", mountpoint.display())
    }
}

/// Keeps each file's unstored data in a recovery file and tells the person
/// on stderr which files, how many bytes and where; returns the error the
/// mount ends with (so the process exits non-zero).
fn keep_unstored(mountpoint: &Path, keeper: &RecoveryDir, unstored: &[Unstored]) -> Error {
    let total: u64 = unstored.iter().map(Unstored::data_bytes).sum();
    let mut lost = Vec::new();
    let mut lines = Vec::new();
    for u in unstored {
        let path = full_path(mountpoint, &u.path);
        match keeper.keep(u) {
            Ok(file) => {
                warn!(ino = %u.ino, path = %path, bytes = u.data_bytes(), file = %file.display(), "unstored data kept for the next mount");
                lines.push(format!("  {path} ({}): {}", human(u.data_bytes()), u.error));
            }
            Err(e) => {
                tracing::error!(ino = %u.ino, path = %path, error = %e, "unstored data could not be kept either; it is lost");
                lost.push(format!(
                    "  {path} ({}): {} — and keeping it failed: {e}",
                    human(u.data_bytes()),
                    u.error
                ));
            }
        }
    }
    if !lines.is_empty() {
        eprintln!(
            "{NOTICE_PREFIX}{} file(s) on {} could not be stored ({} in all). The data is kept, sealed, in {} and stored by the next mount of this volume:",
            lines.len(),
            mountpoint.display(),
            human(total),
            keeper.dir().display()
        );
        for l in &lines {
            eprintln!("{NOTICE_PREFIX}{l}");
        }
    }
    if !lost.is_empty() {
        eprintln!(
            "{NOTICE_PREFIX}{} file(s) could neither be stored nor kept; their unstored data is LOST:",
            lost.len()
        );
        for l in &lost {
            eprintln!("{NOTICE_PREFIX}{l}");
        }
    }
    Error::Upload(format!(
        "{} file(s) had data that could not be stored ({}); {}",
        unstored.len(),
        human(total),
        if lost.is_empty() {
            format!("kept in {} for the next mount", keeper.dir().display())
        } else {
            format!("{} of them could not be kept", lost.len())
        }
    ))
}

/// Tells the person on stderr what happened to data kept by an earlier
/// mount (nothing if there was none).
fn tell_recovered(mountpoint: &Path, keeper: &RecoveryDir, r: &RecoverReport) {
    for (path, bytes) in &r.stored {
        eprintln!(
            "{NOTICE_PREFIX}stored {} kept by an earlier mount for {}",
            human(*bytes),
            full_path(mountpoint, path)
        );
    }
    for (path, bytes) in &r.deleted {
        eprintln!(
            "{NOTICE_PREFIX}{} was deleted since an earlier mount kept {} of its data; that data is dropped",
            full_path(mountpoint, path),
            human(*bytes)
        );
    }
    for (path, e) in &r.pending {
        eprintln!(
            "{NOTICE_PREFIX}data kept for {} still cannot be stored ({e}); it stays in {} and is retried",
            full_path(mountpoint, path),
            keeper.dir().display()
        );
    }
    for (file, e) in &r.unreadable {
        eprintln!("{NOTICE_PREFIX}recovery file {} cannot be read ({e}); left in place", file.display());
    }
}
