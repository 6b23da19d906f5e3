//! File commands without a mount: `fs-client put / get / ls / rm / cat`.
//!
//! They run on the same core as the mount ([`crate::fs::Fs`]): the same
//! volume keys and pins, sealing, layouts and their MACs, dirsvc session
//! and upload path, so what they store is exactly what a mount would have
//! stored. A [`Volume`] opens the volume like `fs-client mount` does
//! (identity, pin check, session kept alive, uploaded blocks committed in
//! the background) and closes the session when done.
//!
//! Guarantees:
//! - `put` writes to a hidden temporary name in the target directory
//!   (`.NAME.p2pfs-put-RANDOM`), closes it (every block stored on R peers
//!   and the layout committed, as `fsync` + `close` on a mount) and then
//!   renames it over the target in one dirsvc transaction: a reader (a
//!   mount, another `get`) sees the old file or the new one, never a part.
//!   When `put` returns `Ok` the file is durable and visible to every mount
//!   (close-to-open). Without `force` the rename refuses an existing
//!   target (`RENAME_NOREPLACE`), so two `put`s never silently clobber.
//! - `get` writes to a hidden temporary file next to the target, fsyncs it
//!   and renames it into place; every block is verified (MAC of its layout
//!   entry, BLAKE3 of the chunk, AEAD) before it is written.
//! - Memory stays bounded whatever the file size: data streams through in
//!   block-size pieces; the core buffers at most its per-file dirty-block
//!   limit plus the uploads in flight.
//!
//! Remote paths are volume paths (`/dir/file`; a missing leading `/` is
//! allowed; `.` and `..` are resolved; symlinks are not followed). The
//! commands act with the member's volume key and do not check the Unix
//! permission bits of the volume's files (a mount's kernel does).

use crate::error::{Error, Result};
use crate::fs::{Fs, FsConfig};
use crate::remote::DirClient;
use common::rpc::dir::{Attr, FileKind, SetAttr};
use common::tls::Tls;
use common::InodeId;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// How many bytes a `get`/`cat` asks the core for per call (4 blocks of the
/// default size; blocks within one call are fetched in parallel).
const READ_PIECE: u32 = 4 << 20;

/// Directory entries asked for per `readdir` call.
const READDIR_PAGE: u32 = 512;

/// What the file commands need to open the volume.
#[derive(Clone, Debug)]
pub struct VolumeConfig {
    /// dirsvc `host:port`.
    pub dirsvc: String,
    /// The member's age identity file.
    pub identity: PathBuf,
    /// Where volumes are pinned at first use ([`crate::pins`]).
    pub pin_dir: PathBuf,
    /// This client's TLS identity.
    pub tls: Arc<Tls>,
    /// How this client names itself to dirsvc (logs, lock holders).
    pub label: String,
}

/// An open volume for the file commands: the core plus the background
/// tasks a mount runs (session lease renewal, commits of uploaded blocks).
/// Call [`Volume::close`] when done.
pub struct Volume {
    fs: Arc<Fs>,
    tasks: Vec<JoinHandle<()>>,
}

/// Called with the number of bytes moved since the last call (progress).
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// One entry of a listing: its name and attributes.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Plaintext name bytes.
    pub name: Vec<u8>,
    /// Attributes (size, mode, times) as dirsvc holds them.
    pub attr: Attr,
    /// The target, for a symlink.
    pub target: Option<Vec<u8>>,
}

/// What `put` and `get` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// Regular files copied.
    pub files: u64,
    /// Bytes of file content copied.
    pub bytes: u64,
}

/// Text of an errno as the commands print it (`no such file or directory`).
fn errno_text(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::ENOENT => "no such file or directory",
        libc::EEXIST => "file exists (use -f to replace it)",
        libc::EISDIR => "is a directory",
        libc::ENOTDIR => "not a directory",
        libc::ENOTEMPTY => "directory not empty (use -r)",
        libc::EACCES => "permission denied",
        libc::ENAMETOOLONG => "file name too long",
        libc::ENOSPC => "no space left on the peers",
        _ => return None,
    })
}

/// `e` about `path`, as `PATH: what` (keeps the errno).
fn about(path: &str, e: Error) -> Error {
    let errno = e.errno();
    match errno_text(errno) {
        Some(t) if !matches!(e, Error::NoSpace(_)) => Error::Errno(errno, format!("{path}: {t}")),
        _ => Error::Errno(errno, format!("{path}: {e}")),
    }
}

/// An error `errno` about `path`.
fn err(path: &str, errno: i32) -> Error {
    Error::Errno(errno, format!("{path}: {}", errno_text(errno).unwrap_or("invalid argument")))
}

/// A local I/O error about `path`.
fn local(path: &Path, e: std::io::Error) -> Error {
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    match errno_text(errno) {
        Some(t) => Error::Errno(errno, format!("{}: {t}", path.display())),
        None => Error::Errno(errno, format!("{}: {e}", path.display())),
    }
}

/// The components of a volume path (`/a/./b/../c` → `a`, `c`).
///
/// Errors: `EINVAL` for a component with a NUL byte.
pub fn components(path: &str) -> Result<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c if c.contains('\0') => return Err(err(path, libc::EINVAL)),
            c => out.push(c.as_bytes().to_vec()),
        }
    }
    Ok(out)
}

/// `path` with `name` appended (`/` + name, or name after a trailing `/`).
fn join(path: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if path.ends_with('/') {
        format!("{path}{name}")
    } else {
        format!("{path}/{name}")
    }
}

/// A random hex suffix for temporary names.
fn random_suffix() -> String {
    hex::encode(rand::random::<[u8; 6]>())
}

/// The owner new files get: this process's effective user and group.
fn owner() -> (u32, u32) {
    // SAFETY: geteuid and getegid cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

impl Volume {
    /// Opens the volume at `config.dirsvc` with the member's identity,
    /// checking the pin as the mount does, and starts the session.
    ///
    /// Errors: [`Error::Rpc`] when dirsvc cannot be reached,
    /// [`Error::Key`] for a missing or world-readable identity, one that is
    /// not a member, or a pin that does not match.
    pub async fn open(config: VolumeConfig) -> Result<Volume> {
        let dir = DirClient::connect(&config.dirsvc, config.tls.clone())
            .await
            .map_err(|e| Error::Io(format!("cannot reach dirsvc at {}: {e}", config.dirsvc)))?
            .with_retry_window(crate::remote::MOUNT_RETRY_WINDOW);
        let id = crate::volume::load_identity(&dir, &config.identity).await?;
        let (info, keys) = crate::volume::open_pinned(&dir, &id, Some(&config.pin_dir)).await?;
        drop(id);
        let fs_config = FsConfig {
            // Streaming: a small cache is enough (read-ahead lands there).
            cache_bytes: 64 << 20,
            session_label: config.label,
            identity: Some(config.identity.clone()),
            pin_dir: Some(config.pin_dir.clone()),
            ..FsConfig::default()
        };
        let every = fs_config.commit_interval;
        let fs = Fs::new(dir, &info, keys, fs_config);
        fs.session_id().await?;
        let keeper = {
            let fs = fs.clone();
            tokio::spawn(async move { fs.keep_session().await })
        };
        let committer = {
            let fs = fs.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every / 2).await;
                    fs.commit_idle().await;
                }
            })
        };
        Ok(Volume { fs, tasks: vec![keeper, committer] })
    }

    /// The core, for callers that need more than these commands.
    pub fn fs(&self) -> &Arc<Fs> {
        &self.fs
    }

    /// Stops the background tasks and closes the dirsvc session.
    pub async fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.fs.close_session().await;
    }

    /// The attributes of the inode at `path`.
    ///
    /// Errors: `ENOENT`, `ENOTDIR` (a component is not a directory; symlinks
    /// are not followed), with the path in the message.
    pub async fn stat(&self, path: &str) -> Result<Attr> {
        let mut attr = self.fs.getattr(InodeId::ROOT).await.map_err(|e| about(path, e))?;
        for c in components(path)? {
            if attr.kind != FileKind::Dir {
                return Err(err(path, libc::ENOTDIR));
            }
            attr = self.fs.lookup(attr.ino, &c).await.map_err(|e| about(path, e))?;
        }
        Ok(attr)
    }

    /// The directory holding `path` and the last component's name.
    ///
    /// Errors: as [`Volume::stat`]; `EINVAL` for the root.
    async fn parent(&self, path: &str) -> Result<(Attr, Vec<u8>)> {
        let mut c = components(path)?;
        let name =
            c.pop().ok_or_else(|| Error::Errno(libc::EINVAL, format!("{path}: is the volume's root")))?;
        let mut dir = self.fs.getattr(InodeId::ROOT).await.map_err(|e| about(path, e))?;
        for p in c {
            if dir.kind != FileKind::Dir {
                return Err(err(path, libc::ENOTDIR));
            }
            dir = self.fs.lookup(dir.ino, &p).await.map_err(|e| about(path, e))?;
        }
        if dir.kind != FileKind::Dir {
            return Err(err(path, libc::ENOTDIR));
        }
        Ok((dir, name))
    }

    /// `name` in directory `dir`, or `None` if there is none.
    async fn child(&self, dir: InodeId, name: &[u8], path: &str) -> Result<Option<Attr>> {
        match self.fs.lookup(dir, name).await {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(about(path, e)),
        }
    }

    /// Every entry of directory `dir`, names opened, in dirsvc's order.
    async fn entries(&self, dir: InodeId, path: &str) -> Result<Vec<crate::fs::Entry>> {
        let mut out = Vec::new();
        let mut cookie = 0;
        loop {
            let (page, eof) = self.fs.readdir(dir, cookie, READDIR_PAGE).await.map_err(|e| about(path, e))?;
            let last = page.last().map(|e| e.cookie);
            out.extend(page);
            match last {
                Some(c) if !eof => cookie = c,
                _ => return Ok(out),
            }
        }
    }

    /// Copies the local file or (with `recursive`) directory tree `local`
    /// to the volume path `remote`. If `remote` is an existing directory
    /// (or ends with `/`), the copy goes inside it under `local`'s name.
    /// Files keep their permission bits; directories are created as needed
    /// and merged into; symlinks are copied as symlinks; other file types
    /// are skipped with a warning. `force` replaces existing files.
    /// `progress` is told of every piece stored.
    ///
    /// Durability: when this returns `Ok`, every file is stored on R peers
    /// (at least the minimum when the cluster is degraded) and committed.
    ///
    /// Errors: `ENOENT` (no such local file or remote directory), `EISDIR`
    /// (a local directory without `recursive`, or a remote directory in
    /// the way of a file), `EEXIST` (target exists, no `force`), `ENOSPC`,
    /// `EIO` (peers or dirsvc unreachable); nothing is left half-written.
    pub async fn put(
        &self,
        local: &Path,
        remote: &str,
        recursive: bool,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<Moved> {
        let meta = tokio::fs::symlink_metadata(local).await.map_err(|e| self::local(local, e))?;
        if meta.is_dir() && !recursive {
            return Err(Error::Errno(libc::EISDIR, format!("{}: is a directory (use -r)", local.display())));
        }
        let base = local
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .or_else(|| {
                std::fs::canonicalize(local).ok().and_then(|p| p.file_name().map(|n| n.as_bytes().to_vec()))
            })
            .unwrap_or_default();
        let (dir, name, target) = self.target_in(remote, &base).await?;
        let mut moved = Moved::default();
        if meta.is_dir() {
            let ino = self.ensure_dir(dir.ino, &name, &target, meta.permissions().mode()).await?;
            self.put_tree(local, ino, &target, force, progress, &mut moved).await?;
        } else {
            self.put_one(local, &meta, dir.ino, &name, &target, force, progress, &mut moved).await?;
        }
        Ok(moved)
    }

    /// Where a copy of something named `base` goes for the volume path
    /// `remote`: (its directory, its name, its full path).
    async fn target_in(&self, remote: &str, base: &[u8]) -> Result<(Attr, Vec<u8>, String)> {
        let into_dir = remote.ends_with('/') || components(remote)?.is_empty();
        if !into_dir {
            let (dir, name) = self.parent(remote).await?;
            match self.child(dir.ino, &name, remote).await? {
                Some(a) if a.kind == FileKind::Dir => {
                    let target = join(remote, base);
                    return Ok((a, base.to_vec(), target));
                }
                _ => return Ok((dir, name, remote.to_string())),
            }
        }
        let dir = self.stat(remote).await?;
        if dir.kind != FileKind::Dir {
            return Err(err(remote, libc::ENOTDIR));
        }
        if base.is_empty() {
            return Err(Error::Errno(libc::EINVAL, format!("{remote}: a name is needed for the copy")));
        }
        Ok((dir, base.to_vec(), join(remote, base)))
    }

    /// The directory `name` in `parent`, made (mode `mode`) if missing.
    async fn ensure_dir(&self, parent: InodeId, name: &[u8], path: &str, mode: u32) -> Result<InodeId> {
        match self.child(parent, name, path).await? {
            Some(a) if a.kind == FileKind::Dir => Ok(a.ino),
            Some(_) => Err(err(path, libc::EEXIST)),
            None => {
                let (uid, gid) = owner();
                match self.fs.mkdir(parent, name, mode & 0o7777, uid, gid).await {
                    Ok(a) => Ok(a.ino),
                    // Made meanwhile (or by a retried first attempt).
                    Err(e) if e.errno() == libc::EEXIST => match self.child(parent, name, path).await? {
                        Some(a) if a.kind == FileKind::Dir => Ok(a.ino),
                        _ => Err(err(path, libc::EEXIST)),
                    },
                    Err(e) => Err(about(path, e)),
                }
            }
        }
    }

    /// Copies the contents of local directory `local` into the volume
    /// directory `dir` (path `path`).
    async fn put_tree(
        &self,
        local: &Path,
        dir: InodeId,
        path: &str,
        force: bool,
        progress: Progress<'_>,
        moved: &mut Moved,
    ) -> Result<()> {
        let mut rd = tokio::fs::read_dir(local).await.map_err(|e| self::local(local, e))?;
        let mut names = Vec::new();
        while let Some(e) = rd.next_entry().await.map_err(|e| self::local(local, e))? {
            names.push(e.file_name());
        }
        names.sort();
        for n in names {
            let from = local.join(&n);
            let name = n.as_bytes().to_vec();
            let to = join(path, &name);
            let meta = tokio::fs::symlink_metadata(&from).await.map_err(|e| self::local(&from, e))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                let ino = self.ensure_dir(dir, &name, &to, meta.permissions().mode()).await?;
                Box::pin(self.put_tree(&from, ino, &to, force, progress, moved)).await?;
            } else if ft.is_file() {
                self.put_one(&from, &meta, dir, &name, &to, force, progress, moved).await?;
            } else if ft.is_symlink() {
                let target = tokio::fs::read_link(&from).await.map_err(|e| self::local(&from, e))?;
                self.put_symlink(dir, &name, &to, target.as_os_str().as_bytes(), force).await?;
            } else {
                tracing::warn!(path = %from.display(), "not a regular file, directory or symlink; skipped");
                eprintln!(
                    "fs-client: {}: skipped (not a regular file, directory or symlink)",
                    from.display()
                );
            }
        }
        Ok(())
    }

    /// Makes the symlink `name` → `target` in `dir`.
    async fn put_symlink(
        &self,
        dir: InodeId,
        name: &[u8],
        path: &str,
        target: &[u8],
        force: bool,
    ) -> Result<()> {
        if let Some(a) = self.child(dir, name, path).await? {
            if !force || a.kind == FileKind::Dir {
                return Err(err(path, if a.kind == FileKind::Dir { libc::EISDIR } else { libc::EEXIST }));
            }
            self.fs.unlink(dir, name).await.map_err(|e| about(path, e))?;
        }
        let (uid, gid) = owner();
        self.fs.symlink(dir, name, target, uid, gid).await.map_err(|e| about(path, e))?;
        Ok(())
    }

    /// Stores the local regular file `local` as `name` in `dir` through a
    /// temporary name and a rename (see the module doc).
    #[allow(clippy::too_many_arguments)]
    async fn put_one(
        &self,
        local: &Path,
        meta: &std::fs::Metadata,
        dir: InodeId,
        name: &[u8],
        path: &str,
        force: bool,
        progress: Progress<'_>,
        moved: &mut Moved,
    ) -> Result<()> {
        if !meta.is_file() {
            return Err(Error::Errno(libc::EINVAL, format!("{}: not a regular file", local.display())));
        }
        match self.child(dir, name, path).await? {
            Some(a) if a.kind == FileKind::Dir => return Err(err(path, libc::EISDIR)),
            Some(_) if !force => return Err(err(path, libc::EEXIST)),
            _ => {}
        }
        let mut file = tokio::fs::File::open(local).await.map_err(|e| self::local(local, e))?;
        let mut tmp = b".".to_vec();
        tmp.extend_from_slice(&name[..name.len().min(180)]);
        tmp.extend_from_slice(format!(".p2pfs-put-{}", random_suffix()).as_bytes());
        let (uid, gid) = owner();
        let perm = meta.permissions().mode() & 0o7777;
        let (attr, fh) = self.fs.create(dir, &tmp, perm, uid, gid).await.map_err(|e| about(path, e))?;
        let r = async {
            let block = self.fs.block_size() as usize;
            let mut buf = vec![0u8; block];
            let mut offset = 0u64;
            loop {
                // Fill a whole block (reads may return less), so every write
                // but the last covers exactly one block and never merges.
                let mut filled = 0;
                while filled < block {
                    let n = file.read(&mut buf[filled..]).await.map_err(|e| self::local(local, e))?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    break;
                }
                self.fs.write(fh, offset, &buf[..filled], false).await.map_err(|e| about(path, e))?;
                offset += filled as u64;
                progress(filled as u64);
                if filled < block {
                    break;
                }
            }
            Ok::<_, Error>(offset)
        }
        .await;
        // Closing stores and commits everything (fsync + close).
        let closed = self.fs.release(fh).await.map_err(|e| about(path, e));
        let r = match (r, closed) {
            (Ok(n), Ok(())) => Ok(n),
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        };
        let r = match r {
            Ok(n) => {
                let mtime = meta.modified().ok().map(common::time::Timestamp::from);
                let set = SetAttr { mtime, ..SetAttr::default() };
                let flags = if force { 0 } else { common::rpc::dir::rename_flags::NOREPLACE };
                match self.fs.setattr(attr.ino, set).await {
                    Err(e) => Err(about(path, e)),
                    Ok(_) => self
                        .fs
                        .rename(dir, &tmp, dir, name, flags)
                        .await
                        .map(|()| n)
                        .map_err(|e| about(path, e)),
                }
            }
            Err(e) => Err(e),
        };
        match r {
            Ok(n) => {
                moved.files += 1;
                moved.bytes += n;
                Ok(())
            }
            Err(e) => {
                if let Err(u) = self.fs.unlink(dir, &tmp).await {
                    tracing::warn!(error = %u, "cannot remove the temporary file of a failed put");
                }
                Err(e)
            }
        }
    }

    /// Copies the volume file or (with `recursive`) directory tree at
    /// `remote` to the local path `local`. If `local` is an existing
    /// directory (or ends with `/`), the copy goes inside it under the
    /// remote name. Files keep their permission bits and modification
    /// time; symlinks are copied as symlinks. `force` replaces existing
    /// local files.
    ///
    /// Errors: `ENOENT`, `EISDIR` (a directory without `recursive`),
    /// `EEXIST` (a local file in the way, no `force`), `EIO` for data that
    /// cannot be read and verified (nothing is left at the target then).
    pub async fn get(
        &self,
        remote: &str,
        local: &Path,
        recursive: bool,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<Moved> {
        let attr = self.stat(remote).await?;
        if attr.kind == FileKind::Dir && !recursive {
            return Err(Error::Errno(libc::EISDIR, format!("{remote}: is a directory (use -r)")));
        }
        let name = components(remote)?.pop().unwrap_or_else(|| b"p2pfs".to_vec());
        let into_dir = local.as_os_str().as_bytes().ends_with(b"/")
            || std::fs::metadata(local).is_ok_and(|m| m.is_dir());
        let target =
            if into_dir { local.join(std::ffi::OsStr::from_bytes(&name)) } else { local.to_path_buf() };
        let mut moved = Moved::default();
        self.get_any(&attr, remote, &target, force, progress, &mut moved).await?;
        Ok(moved)
    }

    /// Copies the inode `attr` (at `remote`) to `target`.
    async fn get_any(
        &self,
        attr: &Attr,
        remote: &str,
        target: &Path,
        force: bool,
        progress: Progress<'_>,
        moved: &mut Moved,
    ) -> Result<()> {
        match attr.kind {
            FileKind::Dir => {
                match std::fs::symlink_metadata(target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(local(target, std::io::Error::from_raw_os_error(libc::EEXIST))),
                    Err(_) => {
                        tokio::fs::create_dir(target).await.map_err(|e| local(target, e))?;
                        let _ = std::fs::set_permissions(
                            target,
                            std::fs::Permissions::from_mode(attr.perm & 0o7777),
                        );
                    }
                }
                for e in self.entries(attr.ino, remote).await? {
                    let path = join(remote, &e.name);
                    let child = self.fs.getattr(e.ino).await.map_err(|er| about(&path, er))?;
                    let to = target.join(std::ffi::OsStr::from_bytes(&e.name));
                    Box::pin(self.get_any(&child, &path, &to, force, progress, moved)).await?;
                }
                Ok(())
            }
            FileKind::File => self.get_one(attr, remote, target, force, progress, moved).await,
            FileKind::Symlink => {
                let t = self.fs.readlink(attr.ino).await.map_err(|e| about(remote, e))?;
                if std::fs::symlink_metadata(target).is_ok() {
                    if !force {
                        return Err(local(target, std::io::Error::from_raw_os_error(libc::EEXIST)));
                    }
                    tokio::fs::remove_file(target).await.map_err(|e| local(target, e))?;
                }
                tokio::fs::symlink(std::ffi::OsStr::from_bytes(&t), target)
                    .await
                    .map_err(|e| local(target, e))
            }
            _ => {
                eprintln!("fs-client: {remote}: skipped (not a regular file, directory or symlink)");
                Ok(())
            }
        }
    }

    /// Copies one regular file through a temporary local file.
    async fn get_one(
        &self,
        attr: &Attr,
        remote: &str,
        target: &Path,
        force: bool,
        progress: Progress<'_>,
        moved: &mut Moved,
    ) -> Result<()> {
        match std::fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => {
                return Err(local(target, std::io::Error::from_raw_os_error(libc::EISDIR)))
            }
            Ok(_) if !force => return Err(local(target, std::io::Error::from_raw_os_error(libc::EEXIST))),
            _ => {}
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(target.file_name().unwrap_or_default());
        tmp_name.push(format!(".p2pfs-get-{}", random_suffix()));
        let tmp = dir.join(tmp_name);
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(attr.perm & 0o777)
            .open(&tmp)
            .await
            .map_err(|e| local(&tmp, e))?;
        let r = async {
            let n = self.stream(attr.ino, remote, &mut out, progress).await?;
            out.sync_all().await.map_err(|e| local(&tmp, e))?;
            drop(out);
            if let Ok(t) = attr.mtime.to_system_time() {
                if let Ok(f) = std::fs::File::options().write(true).open(&tmp) {
                    let _ = f.set_modified(t);
                }
            }
            tokio::fs::rename(&tmp, target).await.map_err(|e| local(target, e))?;
            Ok::<_, Error>(n)
        }
        .await;
        match r {
            Ok(n) => {
                moved.files += 1;
                moved.bytes += n;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Writes the content of the regular file `ino` to `out`, verified
    /// block by block; returns the bytes written.
    ///
    /// Errors: `EIO` for data that cannot be read and verified; local
    /// write errors.
    pub async fn stream<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        ino: InodeId,
        remote: &str,
        out: &mut W,
        progress: Progress<'_>,
    ) -> Result<u64> {
        let fh = self.fs.open(ino, false).await.map_err(|e| about(remote, e))?;
        let r = async {
            let mut offset = 0u64;
            loop {
                let data = self.fs.read(fh, offset, READ_PIECE).await.map_err(|e| about(remote, e))?;
                if data.is_empty() {
                    return Ok(offset);
                }
                out.write_all(&data).await.map_err(|e| Error::Io(format!("write failed: {e}")))?;
                offset += data.len() as u64;
                progress(data.len() as u64);
            }
        }
        .await;
        let _ = self.fs.release(fh).await;
        r
    }

    /// `cat`: the content of the regular file at `remote`, to `out`.
    ///
    /// Errors: `ENOENT`, `EISDIR`, `EINVAL` (not a regular file), `EIO`.
    pub async fn cat<W: tokio::io::AsyncWrite + Unpin>(&self, remote: &str, out: &mut W) -> Result<u64> {
        let attr = self.stat(remote).await?;
        match attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(err(remote, libc::EISDIR)),
            _ => return Err(Error::Errno(libc::EINVAL, format!("{remote}: not a regular file"))),
        }
        let n = self.stream(attr.ino, remote, out, &|_| {}).await?;
        out.flush().await.map_err(|e| Error::Io(format!("write failed: {e}")))?;
        Ok(n)
    }

    /// `ls`: the entries of the directory at `remote` sorted by name, or
    /// the file itself. With `long`, symlink targets are read too.
    ///
    /// Errors: `ENOENT`, `ENOTDIR`.
    pub async fn list(&self, remote: &str, long: bool) -> Result<Vec<Listed>> {
        let attr = self.stat(remote).await?;
        if attr.kind != FileKind::Dir {
            let name = components(remote)?.pop().unwrap_or_default();
            let target = self.target_of(&attr, long).await;
            return Ok(vec![Listed { name, attr, target }]);
        }
        let mut out = Vec::new();
        for e in self.entries(attr.ino, remote).await? {
            let path = join(remote, &e.name);
            let a = match self.fs.getattr(e.ino).await {
                Ok(a) => a,
                // Removed since the listing: not there any more.
                Err(er) if er.is_not_found() => continue,
                Err(er) => return Err(about(&path, er)),
            };
            let target = self.target_of(&a, long).await;
            out.push(Listed { name: e.name, attr: a, target });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn target_of(&self, attr: &Attr, long: bool) -> Option<Vec<u8>> {
        if long && attr.kind == FileKind::Symlink {
            self.fs.readlink(attr.ino).await.ok()
        } else {
            None
        }
    }

    /// `rm`: removes the file, symlink or (with `recursive`) directory tree
    /// at `remote`. Returns how many entries were removed.
    ///
    /// Errors: `ENOENT`; `EISDIR` for a directory without `recursive`;
    /// `EINVAL` for the root.
    pub async fn remove(&self, remote: &str, recursive: bool) -> Result<u64> {
        let (dir, name) = self.parent(remote).await?;
        let attr = self.child(dir.ino, &name, remote).await?.ok_or_else(|| err(remote, libc::ENOENT))?;
        if attr.kind == FileKind::Dir {
            if !recursive {
                return Err(Error::Errno(libc::EISDIR, format!("{remote}: is a directory (use -r)")));
            }
            let n = self.remove_tree(attr.ino, remote).await?;
            self.fs.rmdir(dir.ino, &name).await.map_err(|e| about(remote, e))?;
            return Ok(n + 1);
        }
        self.fs.unlink(dir.ino, &name).await.map_err(|e| about(remote, e))?;
        Ok(1)
    }

    /// Removes everything inside directory `dir` (at `path`).
    async fn remove_tree(&self, dir: InodeId, path: &str) -> Result<u64> {
        let mut n = 0;
        // Entries are removed while listing: list again until empty.
        loop {
            let entries = self.entries(dir, path).await?;
            if entries.is_empty() {
                return Ok(n);
            }
            for e in entries {
                let p = join(path, &e.name);
                let r = if e.kind == FileKind::Dir {
                    n += Box::pin(self.remove_tree(e.ino, &p)).await?;
                    self.fs.rmdir(dir, &e.name).await
                } else {
                    self.fs.unlink(dir, &e.name).await
                };
                match r {
                    Ok(()) => n += 1,
                    Err(er) if er.is_not_found() => {}
                    Err(er) => return Err(about(&p, er)),
                }
            }
        }
    }
}

/// `ls -l` mode text of `attr` (`drwxr-xr-x`).
pub fn mode_text(attr: &Attr) -> String {
    let t = match attr.kind {
        FileKind::File => '-',
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
        FileKind::CharDevice => 'c',
        FileKind::BlockDevice => 'b',
    };
    let p = attr.perm;
    let mut s = String::with_capacity(10);
    s.push(t);
    for (shift, special, set_x, set_nox) in
        [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S'), (0, 0o1000, 't', 'T')]
    {
        let bits = (p >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (p & special != 0, x) {
            (true, true) => set_x,
            (true, false) => set_nox,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM` (UTC).
pub fn time_text(secs: i64) -> String {
    let (y, m, d, h, min, _) = common::time::utc_fields(secs);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{min:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_components_with_dots_resolved() {
        assert_eq!(components("/").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(components("a//b/./c/").unwrap(), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(components("/a/../../b").unwrap(), vec![b"b".to_vec()]);
        assert!(components("/a\0b").is_err());
    }

    #[test]
    fn times_and_modes_print_like_ls() {
        assert_eq!(time_text(0), "1970-01-01 00:00");
        assert_eq!(time_text(1_700_000_000), "2023-11-14 22:13");
        assert_eq!(time_text(951_782_400), "2000-02-29 00:00");
        let mut a = Attr {
            ino: InodeId(2),
            kind: FileKind::Dir,
            perm: 0o1755,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2,
            atime: common::time::Timestamp::now(),
            mtime: common::time::Timestamp::now(),
            ctime: common::time::Timestamp::now(),
            crtime: common::time::Timestamp::now(),
            rdev: 0,
            stored_bytes: 0,
        };
        assert_eq!(mode_text(&a), "drwxr-xr-t");
        a.kind = FileKind::File;
        a.perm = 0o4640;
        assert_eq!(mode_text(&a), "-rwSr-----");
    }

    #[test]
    fn errors_name_the_path_and_keep_the_errno() {
        let e = about("/x", Error::Dir(common::rpc::dir::DirError::NotFound));
        assert_eq!(e.to_string(), "/x: no such file or directory");
        assert_eq!(e.errno(), libc::ENOENT);
        assert_eq!(err("/d", libc::EISDIR).to_string(), "/d: is a directory");
    }
}
