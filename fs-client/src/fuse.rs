//! Links fuser callbacks to [`crate::fs::Fs`]; no filesystem logic lives here.
//!
//! Each callback runs on one of fuser's worker threads and blocks that
//! thread on the async core (`Handle::block_on`); the number of worker
//! threads bounds the requests in progress. Replies and error logging happen
//! only here: ENOENT is logged at debug, everything else at warn.

use crate::error::Error;
use crate::fs::Fs;
use common::rpc::dir::{rename_flags, Attr, FileKind, NewInode, SetAttr};
use common::time::Timestamp;
use common::InodeId;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{debug, warn};

/// How long the kernel may cache entries, and attributes of anything but a
/// regular file (1 s).
const TTL: Duration = Duration::from_secs(1);

/// How long the kernel may cache a regular file's attributes: not at all, so
/// every open (its permission check) fetches the size and mtime that another
/// client may have committed — close-to-open consistency, which `O_APPEND`
/// depends on. `stat` costs one RPC.
fn attr_ttl(kind: FileKind) -> Duration {
    if kind == FileKind::File {
        Duration::ZERO
    } else {
        TTL
    }
}

/// Directory entries fetched per `readdir` RPC.
const READDIR_PAGE: u32 = 512;

/// The FUSE adapter: a [`Fs`] and the runtime its futures run on.
pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
}

impl FuseAdapter {
    /// Wraps `fs`; `rt` must be a multi-threaded runtime not driven by the
    /// FUSE threads.
    pub fn new(fs: Arc<Fs>, rt: tokio::runtime::Handle) -> Self {
        FuseAdapter { fs, rt }
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

fn to_attr(a: &Attr, blksize: u32) -> FileAttr {
    // st_blocks counts 512-byte units of stored data; files with unflushed
    // data report their size.
    let stored = if a.stored_bytes == 0 && a.kind == FileKind::File {
        a.size
    } else {
        a.stored_bytes.min(a.size.max(a.stored_bytes))
    };
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: stored.div_ceil(512),
        atime: SystemTime::from(a.atime),
        mtime: SystemTime::from(a.mtime),
        ctime: SystemTime::from(a.ctime),
        crtime: SystemTime::from(a.crtime),
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> Timestamp {
    match t {
        TimeOrNow::Now => Timestamp::now(),
        TimeOrNow::SpecificTime(s) => Timestamp::from(s),
    }
}

impl FuseAdapter {
    fn blksize(&self) -> u32 {
        self.fs.block_size() as u32
    }

    fn reply_entry(&self, op: &str, r: Result<Attr, Error>, reply: ReplyEntry) {
        match r {
            Ok(a) => {
                reply.entry_with_ttls(&attr_ttl(a.kind), &TTL, &to_attr(&a, self.blksize()), Generation(0))
            }
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
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.rt.block_on(self.fs.lookup(InodeId(parent.0), name.as_bytes()));
        self.reply_entry("lookup", r, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.rt.block_on(self.fs.getattr(InodeId(ino.0))) {
            Ok(a) => reply.attr(&attr_ttl(a.kind), &to_attr(&a, self.blksize())),
            Err(e) => reply.error(errno("getattr", &e)),
        }
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
        };
        match self.rt.block_on(self.fs.setattr(InodeId(ino.0), set)) {
            Ok(a) => reply.attr(&attr_ttl(a.kind), &to_attr(&a, self.blksize())),
            Err(e) => reply.error(errno("setattr", &e)),
        }
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
        match self.rt.block_on(self.fs.open(InodeId(ino.0), truncate)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
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
        match self.rt.block_on(self.fs.read(fh.0, offset, size)) {
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
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.rt.block_on(self.fs.write(fh.0, offset, data)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        Self::reply_empty("flush", self.rt.block_on(self.fs.flush(fh.0)), reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        Self::reply_empty("release", self.rt.block_on(self.fs.release(fh.0)), reply);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
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

    // Extended attributes arrive with issue "Behave like a local disk"; until
    // then the volume has none and refuses to store any, quietly.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::from_i32(libc::ENODATA));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::from_i32(libc::ENODATA));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if mode & libc::S_IFMT != 0 && mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EINVAL);
        }
        let perm = mode & !umask & 0o7777;
        match self.rt.block_on(self.fs.create(InodeId(parent.0), name.as_bytes(), perm, req.uid(), req.gid()))
        {
            Ok((a, fh)) => reply.created(
                &TTL,
                &to_attr(&a, self.blksize()),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno("create", &e)),
        }
    }
}
