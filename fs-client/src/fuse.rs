//! Links fuser callbacks to [`crate::fs::Fs`]; no filesystem logic lives here.
//!
//! Each callback runs on one of fuser's worker threads and blocks that
//! thread on the async core (`Handle::block_on`); the number of worker
//! threads bounds the requests in progress. Replies and error logging happen
//! only here: ENOENT is logged at debug, everything else at warn.

use crate::error::Error;
use crate::fs::{Fs, LockRequest, LockType, Seek};
use common::rpc::dir::{rename_flags, Attr, FileKind, NewInode, SetAttr};
use common::time::Timestamp;
use common::InodeId;
use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{debug, warn};

/// How long the kernel may cache entries and attributes (1 s). Changes made
/// through other mounts reach this one sooner, through dirsvc's change feed
/// (see `mount::watch_changes`), which drops the kernel's copy and the
/// mount's own (`fs::known`, which answers the kernel's next asks while
/// the feed vouches for it); `open` always fetches the size and layout
/// from dirsvc (close-to-open), so this TTL only adds to how stale a
/// `stat` can be when the feed lags or lost changes.
const TTL: Duration = Duration::from_secs(1);

/// Directory entries fetched per `readdir` RPC.
const READDIR_PAGE: u32 = 512;

/// The FUSE adapter: a [`Fs`] and the runtime its futures run on.
pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
    /// The last durability report computed for a size query (`getxattr`
    /// with size 0): (inode, when, value). The read that follows gets the
    /// same bytes, so a report whose length changed in between is not
    /// `ERANGE`.
    durability: std::sync::Mutex<Option<(InodeId, std::time::Instant, Vec<u8>)>>,
}

/// How long a durability report computed for a size query is kept for the
/// read that follows it.
const DURABILITY_REUSE: Duration = Duration::from_secs(2);

impl FuseAdapter {
    /// Wraps `fs`; `rt` must be a multi-threaded runtime not driven by the
    /// FUSE threads.
    pub fn new(fs: Arc<Fs>, rt: tokio::runtime::Handle) -> Self {
        FuseAdapter { fs, rt, durability: std::sync::Mutex::new(None) }
    }

    /// The durability report of `ino` for a `getxattr` of `size` bytes: a
    /// size query computes it and keeps it; the read that follows (within
    /// [`DURABILITY_REUSE`]) takes the kept one.
    fn durability(&self, ino: InodeId, size: u32) -> Result<Vec<u8>, Error> {
        let mut kept = self.durability.lock().unwrap_or_else(|p| p.into_inner());
        if size > 0 {
            if let Some((i, at, v)) = kept.take() {
                if i == ino && at.elapsed() < DURABILITY_REUSE {
                    return Ok(v);
                }
            }
        }
        drop(kept);
        let v = self.rt.block_on(self.fs.durability(ino))?;
        if size == 0 {
            *self.durability.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((ino, std::time::Instant::now(), v.clone()));
        }
        Ok(v)
    }
}

fn errno(op: &str, e: &Error) -> Errno {
    if e.is_user_error() {
        debug!(op, error = %e, errno = e.errno(), "request refused");
    } else {
        warn!(op, error = %e, errno = e.errno(), "request failed");
    }
    Errno::from_i32(e.errno())
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// The kernel's view of attributes dirsvc sent.
///
/// Errors: `EIO` naming the inode if a time is not valid
/// ([`Timestamp::validate`]): dirsvc (or its database) sent something no
/// client wrote, and converting it could panic.
fn to_attr(a: &Attr, blksize: u32) -> Result<FileAttr, Error> {
    let time = |what: &str, t: Timestamp| {
        t.to_system_time().map_err(|e| {
            Error::Errno(libc::EIO, format!("directory service sent inode {} an invalid {what}: {e}", a.ino))
        })
    };
    // st_blocks counts 512-byte units of stored data (one replica), so
    // holes show as sparse to du, cp and tar.
    Ok(FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.stored_bytes.div_ceil(512),
        atime: time("atime", a.atime)?,
        mtime: time("mtime", a.mtime)?,
        ctime: time("ctime", a.ctime)?,
        crtime: time("crtime", a.crtime)?,
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize,
        flags: 0,
    })
}

/// Attributes for the "." and ".." entries of a READDIRPLUS reply, which
/// the kernel ignores.
fn dot_attr(ino: INodeNo) -> FileAttr {
    FileAttr {
        ino,
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// A time `utimensat` asked for, clamped into the range p2pfs stores (as
/// ext4 clamps a time it cannot store).
fn time(t: TimeOrNow) -> Timestamp {
    match t {
        TimeOrNow::Now => Timestamp::now(),
        TimeOrNow::SpecificTime(s) => Timestamp::from(s).clamped(),
    }
}

/// FUSE open flags for a file opened with `flags`: `O_APPEND` handles
/// bypass the page cache (direct I/O), because their writes land where the
/// client, not the kernel, knows the end of the file is.
fn open_flags(flags: i32) -> FopenFlags {
    if flags & libc::O_APPEND != 0 {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

/// Replies to getxattr/listxattr: the size when asked for it (`size` 0), the
/// bytes when they fit, else `ERANGE`.
fn reply_xattr(v: Vec<u8>, size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(&v);
    }
}

impl FuseAdapter {
    fn blksize(&self) -> u32 {
        self.fs.block_size() as u32
    }

    fn reply_entry(&self, op: &str, r: Result<Attr, Error>, reply: ReplyEntry) {
        match r.and_then(|a| to_attr(&a, self.blksize())) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(op, &e)),
        }
    }

    fn reply_attr(&self, op: &str, r: Result<Attr, Error>, reply: ReplyAttr) {
        match r.and_then(|a| to_attr(&a, self.blksize())) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(op, &e)),
        }
    }

    fn reply_empty(op: &str, r: Result<(), Error>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(op, &e)),
        }
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // 1 MiB requests: the kernel's ceiling (fs.fuse.max_pages_limit).
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        // Locks are held at dirsvc so they hold across mounts; without these
        // capabilities the kernel would keep them local to this machine.
        // Listings carry each entry's attributes (READDIRPLUS), so `ls -l`
        // and `find` need no lookup per entry; the kernel picks plain
        // READDIR when it sees no use for them.
        if let Err(missing) =
            config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO)
        {
            debug!(?missing, "the kernel lacks READDIRPLUS; listings use READDIR and lookups");
        }
        if let Err(missing) =
            config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS)
        {
            warn!(?missing, "the kernel lacks lock capabilities; locks stay local to this mount");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.rt.block_on(self.fs.lookup(InodeId(parent.0), name.as_bytes()));
        self.reply_entry("lookup", r, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = self.rt.block_on(self.fs.getattr(InodeId(ino.0)));
        self.reply_attr("getattr", r, reply);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            perm: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
            kill_suid_sgid: false,
        };
        let r = self.rt.block_on(self.fs.setattr(InodeId(ino.0), set));
        self.reply_attr("setattr", r, reply);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.rt.block_on(self.fs.readlink(InodeId(ino.0))) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno("readlink", &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => FileKind::File,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return reply.error(Errno::EINVAL),
        };
        let new = NewInode { kind, perm: mode & !umask & 0o7777, uid: req.uid(), gid: req.gid(), rdev };
        let r = self.rt.block_on(self.fs.mknod(InodeId(parent.0), name.as_bytes(), new));
        self.reply_entry("mknod", r, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let perm = mode & !umask & 0o7777;
        let r =
            self.rt.block_on(self.fs.mkdir(InodeId(parent.0), name.as_bytes(), perm, req.uid(), req.gid()));
        self.reply_entry("mkdir", r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::reply_empty(
            "unlink",
            self.rt.block_on(self.fs.unlink(InodeId(parent.0), name.as_bytes())),
            reply,
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::reply_empty(
            "rmdir",
            self.rt.block_on(self.fs.rmdir(InodeId(parent.0), name.as_bytes())),
            reply,
        );
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let r = self.rt.block_on(self.fs.symlink(
            InodeId(parent.0),
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
            req.uid(),
            req.gid(),
        ));
        self.reply_entry("symlink", r, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut f = 0;
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            f |= rename_flags::NOREPLACE;
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            f |= rename_flags::EXCHANGE;
        }
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let r = self.rt.block_on(self.fs.rename(
            InodeId(parent.0),
            name.as_bytes(),
            InodeId(newparent.0),
            newname.as_bytes(),
            f,
        ));
        Self::reply_empty("rename", r, reply);
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let r = self.rt.block_on(self.fs.link(InodeId(ino.0), InodeId(newparent.0), newname.as_bytes()));
        // link(2) on a directory is EPERM on Linux; dirsvc says IsDir.
        let r = r.map_err(|e| match e {
            Error::Dir(common::rpc::dir::DirError::IsDir) => {
                Error::Errno(libc::EPERM, "cannot link a directory".into())
            }
            e => e,
        });
        self.reply_entry("link", r, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let truncate = flags.0 & libc::O_TRUNC != 0 && flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let writable = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        match self.rt.block_on(self.fs.open_as(InodeId(ino.0), truncate, writable)) {
            Ok(fh) => reply.opened(FileHandle(fh), open_flags(flags.0)),
            // The inode the kernel's entry named is gone: the name was
            // replaced (a rename over it, an editor's save) between the
            // kernel's lookup and this open. ESTALE makes the kernel look
            // the name up again and open what it names now, as a local
            // file system's open would; ENOENT would fail the open.
            Err(e) if e.is_not_found() => {
                debug!(ino = ino.0, "open of a vanished inode; the kernel looks the name up again");
                reply.error(Errno::ESTALE)
            }
            Err(e) => reply.error(errno("open", &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.rt.block_on(self.fs.read_data(fh.0, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno("read", &e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The kernel sets this on writes that bypass its page cache (our
        // O_APPEND handles) when the writer lacks CAP_FSETID; on cached
        // writes it clears setuid/setgid itself, through setattr.
        let kill_suid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let r = if flags.0 & libc::O_APPEND != 0 {
            // The kernel's idea of the end may be stale (another mount
            // appended); the client's is revalidated on every lock.
            self.rt.block_on(self.fs.append(fh.0, data, kill_suid))
        } else {
            self.rt.block_on(self.fs.write(fh.0, offset, data, kill_suid))
        };
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", &e)),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        let r = self.rt.block_on(async {
            let r = self.fs.flush(fh.0).await;
            // POSIX: any close of the file by a process drops that process's
            // locks on it; the kernel names the process as `lock_owner`.
            let u = self.fs.unlock_owner(InodeId(ino.0), lock_owner.0).await;
            r.and(u)
        });
        Self::reply_empty("flush", r, reply);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.rt.block_on(async {
            // flock locks go with the last close of their open file
            // description (the kernel then names it as `lock_owner`).
            let u = match lock_owner {
                Some(o) => self.fs.unlock_owner(InodeId(ino.0), o.0).await,
                None => Ok(()),
            };
            self.fs.release(fh.0).await.and(u)
        });
        Self::reply_empty("release", r, reply);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // fdatasync does the same: size and layout are the metadata that
        // matter, and they are committed with the data.
        Self::reply_empty("fsync", self.rt.block_on(self.fs.flush(fh.0)), reply);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        // Offsets: 1 after ".", 2 after "..", then cookie + 2 for entries.
        let dir = InodeId(ino.0);
        if offset == 0 && reply.add(ino, 1, FileType::Directory, ".") {
            return reply.ok();
        }
        if offset <= 1 && reply.add(ino, 2, FileType::Directory, "..") {
            return reply.ok();
        }
        let mut cookie = offset.saturating_sub(2);
        loop {
            let (entries, eof) = match self.rt.block_on(self.fs.readdir(dir, cookie, READDIR_PAGE)) {
                Ok(p) => p,
                Err(e) => return reply.error(errno("readdir", &e)),
            };
            for e in &entries {
                if reply.add(INodeNo(e.ino.0), e.cookie + 2, file_type(e.kind), OsStr::from_bytes(&e.name)) {
                    return reply.ok();
                }
            }
            match entries.last() {
                Some(last) if !eof => cookie = last.cookie,
                _ => break,
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        // Offsets as `readdir`. The kernel takes no attributes from "." and
        // ".." entries; they get placeholders.
        let dir = InodeId(ino.0);
        let dot = dot_attr(ino);
        if offset == 0 && reply.add(ino, 1, ".", &Duration::ZERO, &dot, Generation(0)) {
            return reply.ok();
        }
        if offset <= 1 && reply.add(ino, 2, "..", &Duration::ZERO, &dot, Generation(0)) {
            return reply.ok();
        }
        let mut cookie = offset.saturating_sub(2);
        loop {
            let (entries, eof) = match self.rt.block_on(self.fs.readdir_plus(dir, cookie, READDIR_PAGE)) {
                Ok(p) => p,
                Err(e) => return reply.error(errno("readdirplus", &e)),
            };
            for (e, a) in &entries {
                let attr = match to_attr(a, self.blksize()) {
                    Ok(attr) => attr,
                    Err(err) => return reply.error(errno("readdirplus", &err)),
                };
                if reply.add(
                    INodeNo(e.ino.0),
                    e.cookie + 2,
                    OsStr::from_bytes(&e.name),
                    &TTL,
                    &attr,
                    Generation(0),
                ) {
                    return reply.ok();
                }
            }
            match entries.last() {
                Some((last, _)) if !eof => cookie = last.cookie,
                _ => break,
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Every namespace change is durable in dirsvc when its call returns.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.rt.block_on(self.fs.statfs()) {
            Ok(s) => {
                let bsize = self.fs.block_size();
                reply.statfs(
                    s.total_bytes / bsize,
                    s.free_bytes / bsize,
                    s.free_bytes / bsize,
                    s.inodes + (1 << 32),
                    1 << 32,
                    bsize as u32,
                    common::config::NAME_MAX as u32,
                    bsize as u32,
                );
            }
            Err(e) => reply.error(errno("statfs", &e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = if name.as_bytes() == crate::fs::DURABILITY_XATTR {
            self.durability(InodeId(ino.0), size)
        } else {
            self.rt.block_on(self.fs.getxattr(InodeId(ino.0), name.as_bytes()))
        };
        match r {
            Ok(v) => reply_xattr(v, size, reply),
            Err(e) => reply.error(errno("getxattr", &e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.rt.block_on(self.fs.listxattr(InodeId(ino.0), req.uid())) {
            Ok(v) => reply_xattr(v, size, reply),
            Err(e) => reply.error(errno("listxattr", &e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let r = self.rt.block_on(self.fs.setxattr(InodeId(ino.0), name.as_bytes(), value, flags));
        Self::reply_empty("setxattr", r.map(drop), reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.rt.block_on(self.fs.removexattr(InodeId(ino.0), name.as_bytes()));
        Self::reply_empty("removexattr", r.map(drop), reply);
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let r = self.rt.block_on(async {
            let typ = LockType::from_raw(typ)?;
            self.fs
                .getlk(LockRequest { ino: InodeId(ino.0), owner: lock_owner.0, start, end, typ, pid })
                .await
        });
        match r {
            Ok(Some((s, e, t, p))) => reply.locked(s, e, t, p),
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
            Err(e) => reply.error(errno("getlk", &e)),
        }
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        // A blocking request may wait for a long time: it waits on the
        // runtime, not on one of the FUSE worker threads.
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            let r = async {
                let typ = LockType::from_raw(typ)?;
                let req = LockRequest { ino: InodeId(ino.0), owner: lock_owner.0, start, end, typ, pid };
                fs.setlk(req, sleep).await
            }
            .await;
            Self::reply_empty("setlk", r, reply);
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        Self::reply_empty(
            "fallocate",
            self.rt.block_on(self.fs.fallocate(fh.0, offset, length, mode)),
            reply,
        );
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The kernel caps one request's length; the reply counts bytes as u32.
        let len = len.min(u64::from(u32::MAX) & !0xfff);
        match self.rt.block_on(self.fs.copy_range(fh_in.0, offset_in, fh_out.0, offset_out, len)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno("copy_file_range", &e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let what = match whence {
            libc::SEEK_DATA => Seek::Data,
            libc::SEEK_HOLE => Seek::Hole,
            // SEEK_SET/CUR/END never reach the filesystem.
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else { return reply.error(Errno::ENXIO) };
        match self.rt.block_on(self.fs.seek_data(fh.0, offset, what)) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(errno("lseek", &e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if mode & libc::S_IFMT != 0 && mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EINVAL);
        }
        let perm = mode & !umask & 0o7777;
        match self.rt.block_on(self.fs.create(InodeId(parent.0), name.as_bytes(), perm, req.uid(), req.gid()))
        {
            Ok((a, fh)) => match to_attr(&a, self.blksize()) {
                Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), open_flags(flags)),
                Err(e) => {
                    // The kernel never learns of the handle: close it here.
                    let _ = self.rt.block_on(self.fs.release(fh));
                    reply.error(errno("create", &e))
                }
            },
            Err(e) => reply.error(errno("create", &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(mtime: Timestamp) -> Attr {
        let t = Timestamp { secs: 1_700_000_000, nanos: 1 };
        Attr {
            ino: InodeId(7),
            kind: FileKind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            size: 3,
            nlink: 1,
            atime: t,
            mtime,
            ctime: t,
            crtime: t,
            rdev: 0,
            stored_bytes: 51,
        }
    }

    /// Regression: one `setattr` that stored nanoseconds ≥ 10⁹ at dirsvc
    /// made every mount that stat'ed the file panic in
    /// `SystemTime::from(Timestamp)`. Such an attribute is now an EIO for
    /// that request.
    #[test]
    fn an_attribute_with_an_invalid_time_is_eio_not_a_panic() {
        let ok = to_attr(&attr(Timestamp { secs: -5, nanos: 999_999_999 }), 4096).unwrap();
        assert_eq!(ok.blocks, 1);
        for bad in [
            Timestamp { secs: 0, nanos: 1_000_000_000 },
            Timestamp { secs: 0, nanos: u32::MAX },
            Timestamp { secs: i64::MAX, nanos: 0 },
            Timestamp { secs: i64::MIN, nanos: 0 },
        ] {
            let e = to_attr(&attr(bad), 4096).unwrap_err();
            assert_eq!(e.errno(), libc::EIO, "{bad:?}");
            assert!(e.to_string().contains("inode 7"), "{e}");
        }
    }

    #[test]
    fn times_asked_by_utimensat_are_clamped_into_range() {
        use std::time::UNIX_EPOCH;
        let far = UNIX_EPOCH + Duration::from_secs(1 << 40);
        assert_eq!(time(TimeOrNow::SpecificTime(far)).secs, common::time::MAX_SECS);
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(time(TimeOrNow::SpecificTime(t)), Timestamp { secs: 1_700_000_000, nanos: 5 });
    }
}
