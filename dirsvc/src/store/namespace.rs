//! The namespace family: inodes (`I`), directory entries (`D`, `C`),
//! symlink targets (`Y`) and extended attributes (`X`): lookup, getattr,
//! setattr, mkdir, create, symlink, link, unlink, rmdir, rename/exchange,
//! readdir and the xattr calls. Layouts, chunks and orphans are reached
//! only through their families' functions.

use super::records::{kind_from_byte, kind_to_byte, InodeRecord, Record, KIND_DIR, KIND_FILE, KIND_SYMLINK};
use super::{
    blocks_for, check_name, check_time, check_xattr_name, count, keys, kill_bits, new_record, scan_all,
    to_attr, Get, Keep, Once, Removed, Renamed, RequestKey, Store, MAX_DEPTH, MAX_READDIR_ENTRIES,
    MAX_TARGET_BYTES, W,
};
use crate::error::{invalid, Error};
use crate::kv::ReadTxn;
use common::config::SYMLINK_MAX;
use common::rpc::dir::{
    rename_flags, xattr_flags, Attr, DirEntry, DirError, FileKind, Mutated, NewInode, ReadDirPage,
    ReadDirPlusPage, SetAttr, XATTR_INODE_MAX, XATTR_SEALED_VALUE_MAX,
};
use common::InodeId;

/// A directory entry (`D` value).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dirent {
    pub ino: u64,
    pub cookie: u64,
    pub kind: u8,
}

impl Dirent {
    fn to_bytes(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(17);
        v.extend_from_slice(&self.ino.to_le_bytes());
        v.extend_from_slice(&self.cookie.to_le_bytes());
        v.push(self.kind);
        v
    }

    fn from_bytes(b: &[u8]) -> Result<Dirent, Error> {
        let bad = || Error::Corrupt { what: "directory entry", reason: format!("{} bytes", b.len()) };
        if b.len() != 17 {
            return Err(bad());
        }
        let ino = u64::from_le_bytes(b[0..8].try_into().map_err(|_| bad())?);
        let cookie = u64::from_le_bytes(b[8..16].try_into().map_err(|_| bad())?);
        Ok(Dirent { ino, cookie, kind: b[16] })
    }
}

/// The record of inode `ino`. Errors: `NotFound`, `Corrupt`.
pub(crate) fn get_inode<G: Get + ?Sized>(t: &G, ino: u64) -> Result<InodeRecord, Error> {
    match t.get(&keys::inode(ino))? {
        Some(v) => InodeRecord::from_bytes(&v),
        None => Err(DirError::NotFound.into()),
    }
}

/// One page of `dir`'s entries with cookie > `after`, ascending, at most
/// `limit` (clamped to [1, [`MAX_READDIR_ENTRIES`]]), read in `t`.
/// Errors: `NotFound`, `NotDir`, `Corrupt`.
fn dir_page(t: &ReadTxn<'_>, dir: InodeId, after: u64, limit: u32) -> Result<ReadDirPage, Error> {
    let limit = limit.clamp(1, MAX_READDIR_ENTRIES) as usize;
    get_dir(t, dir.0)?;
    let Some(start) = after.checked_add(1) else {
        return Ok(ReadDirPage { entries: Vec::new(), eof: true });
    };
    // One more than the page: whether anything follows.
    let mut rows = t.scan(&keys::cookies_from(dir.0, start), limit + 1, false)?;
    let eof = rows.len() <= limit;
    rows.truncate(limit);
    let names: Vec<Vec<u8>> = rows.iter().map(|(_, name)| keys::dirent(dir.0, name)).collect();
    let found = t.get_many(&names)?;
    let mut entries = Vec::with_capacity(rows.len());
    for ((k, name), e) in rows.into_iter().zip(found) {
        let cookie = keys::parse_cookie(&k)?;
        let e = e.ok_or_else(|| Error::Corrupt {
            what: "directory entry",
            reason: format!("cookie {cookie} of directory {dir} names no entry"),
        })?;
        let e = Dirent::from_bytes(&e)?;
        entries.push(DirEntry { name, ino: InodeId(e.ino), kind: kind_from_byte(e.kind)?, cookie });
    }
    Ok(ReadDirPage { entries, eof })
}

/// The record of directory `ino`. Errors: `NotFound`, `NotDir`.
fn get_dir<G: Get + ?Sized>(t: &G, ino: u64) -> Result<InodeRecord, Error> {
    let rec = get_inode(t, ino)?;
    if rec.kind != KIND_DIR {
        return Err(DirError::NotDir.into());
    }
    Ok(rec)
}

/// The recorded answer of a call that returns attributes.
fn attr_answer(a: &Attr) -> Mutated {
    Mutated::Attr(a.clone())
}

fn get_entry<G: Get + ?Sized>(t: &G, parent: u64, name: &[u8]) -> Result<Option<Dirent>, Error> {
    t.get(&keys::dirent(parent, name))?.map(|v| Dirent::from_bytes(&v)).transpose()
}

impl Store {
    /// Finds `name` in directory `parent` and returns its attributes.
    ///
    /// Errors: `NotFound` (no parent or no entry), `NotDir`, `Invalid`
    /// (empty name), `NameTooLong`, `NotInitialized`.
    pub fn lookup(&self, parent: InodeId, name: &[u8]) -> Result<Attr, Error> {
        self.vol()?;
        check_name(name)?;
        self.read(|t| {
            let (dir, entry) = (keys::inode(parent.0), keys::dirent(parent.0, name));
            let [d, e] = <[Option<Vec<u8>>; 2]>::try_from(t.get_many(&[dir, entry])?)
                .map_err(|_| Error::Corrupt { what: "engine", reason: "get_many answer".into() })?;
            let d = InodeRecord::from_bytes(&d.ok_or(DirError::NotFound)?)?;
            if d.kind != KIND_DIR {
                return Err(DirError::NotDir.into());
            }
            let e = Dirent::from_bytes(&e.ok_or(DirError::NotFound)?)?;
            to_attr(e.ino, &get_inode(t, e.ino)?)
        })
    }

    /// Attributes of `ino`. Errors: `NotFound`, `NotInitialized`.
    pub fn getattr(&self, ino: InodeId) -> Result<Attr, Error> {
        self.vol()?;
        self.read(|t| to_attr(ino.0, &get_inode(t, ino.0)?))
    }

    /// Changes the given attributes. Any change sets ctime to now; a size
    /// change also sets mtime to now unless `set.mtime` is given. Shrinking
    /// sets the size and a trim marker, then drops the layout blocks with
    /// index ≥ ⌈size / B⌉ (their chunks lose a reference) in bounded
    /// transactions before returning; growing a file whose trim is
    /// unfinished finishes it first. `kill_suid_sgid` clears setuid (and setgid with
    /// group-execute) from the stored mode after `perm` is applied; on a
    /// mode without those bits it changes nothing, ctime included.
    ///
    /// Errors: `NotFound`; for `size`, `IsDir` on a directory and `Invalid`
    /// on anything but a regular file; `Invalid` for an atime or mtime
    /// that is not a valid [`Timestamp`]; `NotInitialized`.
    pub fn setattr(&self, ino: InodeId, set: &SetAttr) -> Result<Attr, Error> {
        let vol = self.vol()?;
        for (what, t) in [("atime", &set.atime), ("mtime", &set.mtime)] {
            if let Some(t) = t {
                check_time(what, t)?;
            }
        }
        loop {
            match self.setattr_once(ino, set, vol.block_size)? {
                // The trim ran: its stored bytes are gone now.
                Some((_, true)) => return self.getattr(ino),
                Some((attr, false)) => return Ok(attr),
                None => {}
            }
            // A trim of this file is unfinished and this would grow it:
            // finish it first.
            self.finish_trim(ino.0)?;
        }
    }

    /// One [`Store::setattr`] transaction; `None` (nothing written) if a
    /// size change must wait for the file's unfinished trim.
    /// Also says whether it queued a trim.
    fn setattr_once(
        &self,
        ino: InodeId,
        set: &SetAttr,
        block_size: u32,
    ) -> Result<Option<(Attr, bool)>, Error> {
        self.write(|w| {
            let mut rec = w.inode(ino.0)?;
            let mut trims = false;
            let kill = set.kill_suid_sgid && kill_bits(rec.perm) != 0;
            let any = set.perm.is_some()
                || set.uid.is_some()
                || set.gid.is_some()
                || set.size.is_some()
                || set.atime.is_some()
                || set.mtime.is_some()
                || kill;
            if !any {
                return Ok(Some((to_attr(ino.0, &rec)?, false)));
            }
            if let Some(size) = set.size {
                match rec.kind {
                    KIND_FILE => {}
                    KIND_DIR => return Err(DirError::IsDir.into()),
                    _ => return Err(invalid("size can only be set on a regular file")),
                }
                let keep_blocks = blocks_for(size, block_size);
                if w.trim_from(ino.0)?.is_some_and(|from| keep_blocks > from) {
                    return Ok(None);
                }
                if keep_blocks < blocks_for(rec.size, block_size) {
                    // Blocks past the new end go after the commit, in
                    // bounded transactions; readers stop at the size now.
                    w.mark_trim(ino.0, keep_blocks)?;
                    trims = true;
                }
                rec.size = size;
                rec.mtime = w.now;
            }
            if let Some(perm) = set.perm {
                rec.perm = perm & 0o7777;
            }
            if let Some(uid) = set.uid {
                rec.uid = uid;
            }
            if let Some(gid) = set.gid {
                rec.gid = gid;
            }
            if let Some(atime) = set.atime {
                rec.atime = atime;
            }
            if let Some(mtime) = set.mtime {
                rec.mtime = mtime;
            }
            if set.kill_suid_sgid {
                rec.perm &= !kill_bits(rec.perm);
            }
            rec.ctime = w.now;
            w.put_inode(ino.0, &rec)?;
            Ok(Some((to_attr(ino.0, &rec)?, trims)))
        })
    }

    /// Makes directory `name` in `parent` (nlink 2; the parent gains a
    /// link; its mtime and ctime become now).
    ///
    /// Errors: `Exists`, `NotDir`, `NotFound`, `Invalid`, `NameTooLong`,
    /// `NotInitialized`.
    pub fn mkdir(&self, parent: InodeId, name: &[u8], perm: u32, uid: u32, gid: u32) -> Result<Attr, Error> {
        self.mkdir_once(None, parent, name, perm, uid, gid)?.fresh()
    }

    /// [`Store::mkdir`] once per request `req` (see [`Once`]).
    pub fn mkdir_once(
        &self,
        req: Option<RequestKey>,
        parent: InodeId,
        name: &[u8],
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Once<Attr>, Error> {
        self.vol()?;
        check_name(name)?;
        self.write_once(req, attr_answer, |w| {
            let mut rec = new_record(KIND_DIR, perm, uid, gid, 0, parent.0, w.now);
            rec.nlink = 2;
            w.make_entry(parent.0, name, rec)
        })
    }

    /// Makes a regular file or special node `name` in `parent` (nlink 1).
    ///
    /// Errors: `Invalid` for kind `Dir` or `Symlink`, then as
    /// [`Store::mkdir`].
    pub fn create(&self, parent: InodeId, name: &[u8], new: &NewInode) -> Result<Attr, Error> {
        self.create_once(None, parent, name, new)?.fresh()
    }

    /// [`Store::create`] once per request `req` (see [`Once`]).
    pub fn create_once(
        &self,
        req: Option<RequestKey>,
        parent: InodeId,
        name: &[u8],
        new: &NewInode,
    ) -> Result<Once<Attr>, Error> {
        self.vol()?;
        check_name(name)?;
        let rdev = match new.kind {
            FileKind::File | FileKind::Fifo | FileKind::Socket => 0,
            FileKind::CharDevice | FileKind::BlockDevice => new.rdev,
            FileKind::Dir | FileKind::Symlink => {
                return Err(invalid("create makes files and special nodes only"))
            }
        };
        let kind = kind_to_byte(new.kind);
        self.write_once(req, attr_answer, |w| {
            let rec = new_record(kind, new.perm, new.uid, new.gid, rdev, parent.0, w.now);
            w.make_entry(parent.0, name, rec)
        })
    }

    /// Makes symlink `name` in `parent` with sealed `target` and plaintext
    /// target length `size` (mode `0777`).
    ///
    /// Errors: `Invalid` for an empty target, `NameTooLong` for a target
    /// over [`MAX_TARGET_BYTES`] or `size` over `SYMLINK_MAX`, then as
    /// [`Store::mkdir`].
    pub fn symlink(
        &self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        size: u64,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, Error> {
        self.vol()?;
        check_symlink(name, target, size)?;
        self.write(|w| {
            let mut rec = new_record(KIND_SYMLINK, 0o777, uid, gid, 0, parent.0, w.now);
            rec.size = size;
            let attr = w.make_entry(parent.0, name, rec)?;
            w.put(keys::symlink(attr.ino.0), target.to_vec());
            Ok(attr)
        })
    }

    /// Makes symlink `name` in `parent` as inode `ino`, a number handed out
    /// earlier by [`Store::reserve_inodes`] and not used yet; otherwise as
    /// [`Store::symlink`]. Whether `ino` was reserved by the caller's
    /// session is the caller's check (in memory, see `sessions`).
    ///
    /// Errors: `NotReserved` if `ino` was never handed out (at or past the
    /// inode counter, or the root) or is in use; then as
    /// [`Store::symlink`].
    #[allow(clippy::too_many_arguments)]
    pub fn symlink_at(
        &self,
        parent: InodeId,
        name: &[u8],
        ino: InodeId,
        target: &[u8],
        size: u64,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, Error> {
        self.symlink_at_once(None, parent, name, ino, target, size, uid, gid)?.fresh()
    }

    /// [`Store::symlink_at`] once per request `req` (see [`Once`]).
    #[allow(clippy::too_many_arguments)]
    pub fn symlink_at_once(
        &self,
        req: Option<RequestKey>,
        parent: InodeId,
        name: &[u8],
        ino: InodeId,
        target: &[u8],
        size: u64,
        uid: u32,
        gid: u32,
    ) -> Result<Once<Attr>, Error> {
        self.vol()?;
        check_symlink(name, target, size)?;
        self.write_once(req, attr_answer, |w| {
            let next = w.meta_u64(keys::META_NEXT_INODE)?;
            if ino.0 <= InodeId::ROOT.0 || ino.0 >= next || w.get(&keys::inode(ino.0))?.is_some() {
                return Err(DirError::NotReserved(ino).into());
            }
            let mut rec = new_record(KIND_SYMLINK, 0o777, uid, gid, 0, parent.0, w.now);
            rec.size = size;
            let attr = w.make_entry_at(parent.0, name, rec, Some(ino.0))?;
            w.put(keys::symlink(attr.ino.0), target.to_vec());
            Ok(attr)
        })
    }

    /// Hands out `count` fresh inode numbers (advancing the durable
    /// counter; they are never handed out again) and returns the first.
    ///
    /// Errors: `Invalid` for a count of 0; `NotInitialized`.
    pub fn reserve_inodes(&self, count: u32) -> Result<InodeId, Error> {
        self.vol()?;
        if count == 0 {
            return Err(invalid("reserve at least one inode"));
        }
        self.write(|w| {
            let first = w.next(keys::META_NEXT_INODE)?;
            let next = first.checked_add(u64::from(count)).ok_or_else(|| Error::Corrupt {
                what: "meta",
                reason: "counter next_inode exhausted".into(),
            })?;
            w.put(keys::meta(keys::META_NEXT_INODE), next.to_le_bytes().to_vec());
            Ok(InodeId(first))
        })
    }

    /// The sealed target of symlink `ino`.
    ///
    /// Errors: `NotFound`, `Invalid` if `ino` is not a symlink,
    /// `NotInitialized`.
    pub fn readlink(&self, ino: InodeId) -> Result<Vec<u8>, Error> {
        self.vol()?;
        self.read(|t| {
            let rec = get_inode(t, ino.0)?;
            if rec.kind != KIND_SYMLINK {
                return Err(invalid("not a symlink"));
            }
            t.get(&keys::symlink(ino.0))?
                .ok_or(Error::Corrupt { what: "symlink", reason: format!("symlink {ino} has no target") })
        })
    }

    /// Adds entry `new_name` in `new_parent` for the non-directory `ino`
    /// (nlink + 1, ctime now).
    ///
    /// Errors: `IsDir` if `ino` is a directory (hard links to directories
    /// are not allowed; Linux reports `EPERM`), `NotFound` if `ino` is an
    /// orphan (nlink 0), `Invalid` at `u32::MAX` links, then as
    /// [`Store::mkdir`].
    pub fn link(&self, ino: InodeId, new_parent: InodeId, new_name: &[u8]) -> Result<Attr, Error> {
        self.link_once(None, ino, new_parent, new_name)?.fresh()
    }

    /// [`Store::link`] once per request `req` (see [`Once`]).
    pub fn link_once(
        &self,
        req: Option<RequestKey>,
        ino: InodeId,
        new_parent: InodeId,
        new_name: &[u8],
    ) -> Result<Once<Attr>, Error> {
        self.vol()?;
        check_name(new_name)?;
        self.write_once(req, attr_answer, |w| {
            let mut rec = w.inode(ino.0)?;
            if rec.kind == KIND_DIR {
                return Err(DirError::IsDir.into());
            }
            if rec.nlink == 0 {
                // An orphan (unlinked, still open): Linux refuses to give
                // it a name again (ENOENT) unless it was O_TMPFILE.
                return Err(DirError::NotFound.into());
            }
            w.dir(new_parent.0)?;
            if w.entry(new_parent.0, new_name)?.is_some() {
                return Err(DirError::Exists.into());
            }
            rec.nlink = rec.nlink.checked_add(1).ok_or_else(|| invalid("too many links"))?;
            rec.ctime = w.now;
            w.put_inode(ino.0, &rec)?;
            w.add_entry(new_parent.0, new_name, ino.0, rec.kind)?;
            w.touch_dir(new_parent.0, 0)?;
            to_attr(ino.0, &rec)
        })
    }

    /// Removes the non-directory entry `name` from `parent`, freeing the
    /// inode at nlink 0 (as [`Store::unlink_keeping`] with nothing held
    /// open).
    pub fn unlink(&self, parent: InodeId, name: &[u8]) -> Result<Removed, Error> {
        self.unlink_keeping(parent, name, &|_| false)
    }

    /// Removes the non-directory entry `name` from `parent`. The inode loses
    /// a link (ctime now). At nlink 0, if `keep(ino)` (asked inside the
    /// transaction: the inode is held open) it becomes an orphan (an `O`
    /// key, see [`super::keys`]); otherwise it is freed: the first
    /// transaction removes the name and lists the inode as an orphan, then
    /// bounded transactions delete its layout entries (each chunk loses a
    /// reference), extended attributes, symlink target and record before
    /// this returns (a crash in between leaves an orphan that
    /// [`Store::free_orphans`] finishes).
    ///
    /// Errors: `NotFound`, `NotDir` (parent), `IsDir` (the entry is a
    /// directory), `Invalid`, `NameTooLong`, `NotInitialized`.
    pub fn unlink_keeping(&self, parent: InodeId, name: &[u8], keep: Keep<'_>) -> Result<Removed, Error> {
        self.unlink_once(None, parent, name, keep)?.fresh()
    }

    /// [`Store::unlink_keeping`] once per request `req` (see [`Once`]).
    pub fn unlink_once(
        &self,
        req: Option<RequestKey>,
        parent: InodeId,
        name: &[u8],
        keep: Keep<'_>,
    ) -> Result<Once<Removed>, Error> {
        self.vol()?;
        check_name(name)?;
        self.write_once(
            req,
            |_| Mutated::Done,
            |w| {
                w.dir(parent.0)?;
                let e = w.entry(parent.0, name)?.ok_or(DirError::NotFound)?;
                if e.kind == KIND_DIR {
                    return Err(DirError::IsDir.into());
                }
                w.remove_entry(parent.0, name, e.cookie)?;
                let orphaned = w.drop_link(e.ino, keep)?;
                w.touch_dir(parent.0, 0)?;
                Ok(Removed { ino: InodeId(e.ino), orphaned })
            },
        )
    }

    /// Removes the empty directory entry `name` from `parent` (the parent
    /// loses a link) and frees the directory with its extended attributes.
    /// Returns the removed directory's inode.
    ///
    /// Errors: `NotFound`, `NotDir` (parent, or the entry is not a
    /// directory), `NotEmpty`, `Invalid`, `NameTooLong`, `NotInitialized`.
    pub fn rmdir(&self, parent: InodeId, name: &[u8]) -> Result<InodeId, Error> {
        self.rmdir_once(None, parent, name)?.fresh()
    }

    /// [`Store::rmdir`] once per request `req` (see [`Once`]).
    pub fn rmdir_once(
        &self,
        req: Option<RequestKey>,
        parent: InodeId,
        name: &[u8],
    ) -> Result<Once<InodeId>, Error> {
        self.vol()?;
        check_name(name)?;
        self.write_once(
            req,
            |_| Mutated::Done,
            |w| {
                w.dir(parent.0)?;
                let e = w.entry(parent.0, name)?.ok_or(DirError::NotFound)?;
                if e.kind != KIND_DIR {
                    return Err(DirError::NotDir.into());
                }
                if !w.dir_is_empty(e.ino)? {
                    return Err(DirError::NotEmpty.into());
                }
                w.remove_entry(parent.0, name, e.cookie)?;
                w.drop_dir(e.ino)?;
                w.touch_dir(parent.0, -1)?;
                Ok(InodeId(e.ino))
            },
        )
    }

    /// Moves entry `name` of `parent` to `new_name` in `new_parent`,
    /// atomically, as `renameat2(2)`:
    /// - an existing target of a compatible kind is replaced (a file by a
    ///   non-directory, an empty directory by a directory) and loses its link;
    /// - `NOREPLACE`: `Exists` if the target exists;
    /// - `EXCHANGE`: both must exist; they swap (directories' parents and
    ///   the parents' nlinks follow);
    /// - source and target naming the same inode: success, nothing changes
    ///   (except with `NOREPLACE`, which reports `Exists` as Linux does).
    ///
    /// The moved inodes' ctime and both parents' mtime and ctime become now.
    /// The entry gets a fresh readdir cookie (exchange keeps both).
    ///
    /// Errors: `NotFound` (source, or exchange target), `NotDir`/`IsDir`
    /// (kind mismatch), `NotEmpty` (target directory not empty, or target is
    /// an ancestor of the source), `Invalid` (unknown flags, both flags,
    /// moving a directory into its own subtree, moving the root), `Exists`,
    /// `NameTooLong`, `NotInitialized`.
    pub fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
    ) -> Result<Renamed, Error> {
        self.rename_keeping(parent, name, new_parent, new_name, flags, &|_| false)
    }

    /// [`Store::rename`], where a replaced non-directory that loses its last
    /// link is kept as an orphan if `keep(ino)` (as in
    /// [`Store::unlink_keeping`]). A replaced directory is always freed.
    pub fn rename_keeping(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
        keep: Keep<'_>,
    ) -> Result<Renamed, Error> {
        self.rename_once(None, parent, name, new_parent, new_name, flags, keep)?.fresh()
    }

    /// [`Store::rename_keeping`] once per request `req` (see [`Once`]).
    #[allow(clippy::too_many_arguments)]
    pub fn rename_once(
        &self,
        req: Option<RequestKey>,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
        keep: Keep<'_>,
    ) -> Result<Once<Renamed>, Error> {
        self.vol()?;
        check_name(name)?;
        check_name(new_name)?;
        let known = rename_flags::NOREPLACE | rename_flags::EXCHANGE;
        if flags & !known != 0 {
            return Err(invalid(format!("unknown rename flags {flags:#x}")));
        }
        if flags == known {
            return Err(invalid("NOREPLACE and EXCHANGE together"));
        }
        self.write_once(
            req,
            |r: &Renamed| Mutated::Ino(r.moved),
            |w| w.rename(parent.0, name, new_parent.0, new_name, flags, keep),
        )
    }

    /// Lists the entries of `dir` with cookie > `after`, ascending, at most
    /// `limit` (clamped to [1, [`MAX_READDIR_ENTRIES`]]).
    ///
    /// Errors: `NotFound`, `NotDir`, `NotInitialized`.
    pub fn readdir(&self, dir: InodeId, after: u64, limit: u32) -> Result<ReadDirPage, Error> {
        self.vol()?;
        self.read(|t| dir_page(t, dir, after, limit))
    }

    /// [`Store::readdir`] with each entry's attributes, read in the same
    /// transaction (`readdir_plus`): a listing that needs no lookup per
    /// entry. Errors: as `readdir`.
    pub fn readdir_plus(&self, dir: InodeId, after: u64, limit: u32) -> Result<ReadDirPlusPage, Error> {
        self.vol()?;
        self.read(|t| {
            let page = dir_page(t, dir, after, limit)?;
            let inodes: Vec<Vec<u8>> = page.entries.iter().map(|d| keys::inode(d.ino.0)).collect();
            let recs = t.get_many(&inodes)?;
            let mut entries = Vec::with_capacity(page.entries.len());
            for (d, rec) in page.entries.into_iter().zip(recs) {
                let rec = rec.ok_or_else(|| Error::Corrupt {
                    what: "directory entry",
                    reason: format!("entry of directory {dir} names inode {} that does not exist", d.ino),
                })?;
                let attr = to_attr(d.ino.0, &InodeRecord::from_bytes(&rec)?)?;
                entries.push((d, attr));
            }
            Ok(ReadDirPlusPage { entries, eof: page.eof })
        })
    }

    /// Number of inodes in use (for `statfs`).
    pub fn inode_count(&self) -> Result<u64, Error> {
        self.read(|t| count(t, &keys::family(keys::INODE)))
    }

    /// The sealed value of extended attribute `name` of `ino` (any kind,
    /// orphans included).
    ///
    /// Errors: `NotFound` (no such inode), `NoAttr`, `Invalid` (empty
    /// name), `TooBig` (name over [`XATTR_SEALED_NAME_MAX`]),
    /// `NotInitialized`.
    pub fn getxattr(&self, ino: InodeId, name: &[u8]) -> Result<Vec<u8>, Error> {
        self.vol()?;
        check_xattr_name(name)?;
        self.read(|t| {
            get_inode(t, ino.0)?;
            Ok(t.get(&keys::xattr(ino.0, name))?.ok_or(DirError::NoAttr)?)
        })
    }

    /// The sealed names of every extended attribute of `ino`, in stored
    /// (byte) order.
    ///
    /// Errors: `NotFound`, `NotInitialized`.
    pub fn listxattr(&self, ino: InodeId) -> Result<Vec<Vec<u8>>, Error> {
        self.vol()?;
        self.read(|t| {
            get_inode(t, ino.0)?;
            let mut names = Vec::new();
            scan_all(t, &keys::xattrs_of(ino.0), |k, _| {
                names.push(keys::parse_xattr(&k)?.to_vec());
                Ok(true)
            })?;
            Ok(names)
        })
    }

    /// Sets extended attribute `name` of `ino` to `value` (both sealed,
    /// opaque), as `setxattr(2)` with `flags` from
    /// [`common::rpc::dir::xattr_flags`]; ctime becomes now. Returns the
    /// new attributes.
    ///
    /// Errors: `NotFound`; `Exists` (`CREATE` and present); `NoAttr`
    /// (`REPLACE` and absent); `Invalid` (empty name, unknown flags);
    /// `TooBig` (name over [`XATTR_SEALED_NAME_MAX`] or value over
    /// [`XATTR_SEALED_VALUE_MAX`]); `NoSpace` (the inode's names and values
    /// would total more than [`XATTR_INODE_MAX`] bytes); `NotInitialized`.
    pub fn setxattr(&self, ino: InodeId, name: &[u8], value: &[u8], flags: u32) -> Result<Attr, Error> {
        self.setxattr_within(ino, name, value, flags, usize::MAX)
    }

    /// [`Store::setxattr`], where an inode may carry at most `max_count`
    /// attributes: adding one more is `Limit` (replacing one is fine).
    pub fn setxattr_within(
        &self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        flags: u32,
        max_count: usize,
    ) -> Result<Attr, Error> {
        self.setxattr_once(None, ino, name, value, flags, max_count)?.fresh()
    }

    /// [`Store::setxattr_within`] once per request `req` (see [`Once`]).
    pub fn setxattr_once(
        &self,
        req: Option<RequestKey>,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        flags: u32,
        max_count: usize,
    ) -> Result<Once<Attr>, Error> {
        self.vol()?;
        check_xattr_name(name)?;
        if value.len() > XATTR_SEALED_VALUE_MAX {
            return Err(DirError::TooBig.into());
        }
        let known = xattr_flags::CREATE | xattr_flags::REPLACE;
        if flags & !known != 0 {
            return Err(invalid(format!("unknown setxattr flags {flags:#x}")));
        }
        self.write_once(req, attr_answer, |w| {
            let mut rec = w.inode(ino.0)?;
            let old = w.get(&keys::xattr(ino.0, name))?.map(|v| v.len());
            if flags & xattr_flags::CREATE != 0 && old.is_some() {
                return Err(DirError::Exists.into());
            }
            if flags & xattr_flags::REPLACE != 0 && old.is_none() {
                return Err(DirError::NoAttr.into());
            }
            let (count, bytes) = w.xattr_usage(ino.0)?;
            let others = bytes.saturating_sub(old.map_or(0, |len| name.len() + len));
            if others.saturating_add(name.len()).saturating_add(value.len()) > XATTR_INODE_MAX {
                return Err(DirError::NoSpace.into());
            }
            if old.is_none() && count >= max_count {
                return Err(DirError::Limit(format!(
                    "inode {ino} carries its maximum of {max_count} extended attributes"
                ))
                .into());
            }
            w.put(keys::xattr(ino.0, name), value.to_vec());
            rec.ctime = w.now;
            w.put_inode(ino.0, &rec)?;
            to_attr(ino.0, &rec)
        })
    }

    /// Removes extended attribute `name` of `ino`; ctime becomes now.
    /// Returns the new attributes.
    ///
    /// Errors: `NotFound`, `NoAttr`, `Invalid` (empty name), `TooBig`,
    /// `NotInitialized`.
    pub fn removexattr(&self, ino: InodeId, name: &[u8]) -> Result<Attr, Error> {
        self.removexattr_once(None, ino, name)?.fresh()
    }

    /// [`Store::removexattr`] once per request `req` (see [`Once`]).
    pub fn removexattr_once(
        &self,
        req: Option<RequestKey>,
        ino: InodeId,
        name: &[u8],
    ) -> Result<Once<Attr>, Error> {
        self.vol()?;
        check_xattr_name(name)?;
        self.write_once(req, attr_answer, |w| {
            let mut rec = w.inode(ino.0)?;
            if w.get(&keys::xattr(ino.0, name))?.is_none() {
                return Err(DirError::NoAttr.into());
            }
            w.delete(keys::xattr(ino.0, name));
            rec.ctime = w.now;
            w.put_inode(ino.0, &rec)?;
            to_attr(ino.0, &rec)
        })
    }
}

impl W<'_, '_> {
    /// Writes the root directory (inode 1, mode `0755`, nlink 2).
    pub(crate) fn make_root(&mut self, uid: u32, gid: u32) -> Result<(), Error> {
        let mut root = new_record(KIND_DIR, 0o755, uid, gid, 0, InodeId::ROOT.0, self.now);
        root.nlink = 2;
        self.put_inode(InodeId::ROOT.0, &root)
    }

    pub(crate) fn inode(&self, ino: u64) -> Result<InodeRecord, Error> {
        get_inode(self, ino)
    }

    /// Number of `ino`'s extended attributes, and the total bytes of their
    /// sealed names and values.
    fn xattr_usage(&self, ino: u64) -> Result<(usize, usize), Error> {
        let (mut count, mut total) = (0usize, 0usize);
        scan_all(self, &keys::xattrs_of(ino), |k, v| {
            count += 1;
            total = total.saturating_add(keys::parse_xattr(&k)?.len()).saturating_add(v.len());
            Ok(true)
        })?;
        Ok((count, total))
    }

    fn dir(&self, ino: u64) -> Result<InodeRecord, Error> {
        get_dir(self, ino)
    }

    pub(crate) fn put_inode(&mut self, ino: u64, rec: &InodeRecord) -> Result<(), Error> {
        self.put(keys::inode(ino), rec.to_bytes()?);
        Ok(())
    }

    fn entry(&self, parent: u64, name: &[u8]) -> Result<Option<Dirent>, Error> {
        get_entry(self, parent, name)
    }

    /// Adds entry `(parent, name)` with a fresh cookie.
    fn add_entry(&mut self, parent: u64, name: &[u8], ino: u64, kind: u8) -> Result<(), Error> {
        let cookie = self.next(keys::META_NEXT_COOKIE)?;
        self.put(keys::dirent(parent, name), Dirent { ino, cookie, kind }.to_bytes());
        self.put(keys::cookie(parent, cookie), name.to_vec());
        Ok(())
    }

    fn remove_entry(&mut self, parent: u64, name: &[u8], cookie: u64) -> Result<(), Error> {
        self.delete(keys::dirent(parent, name));
        self.delete(keys::cookie(parent, cookie));
        Ok(())
    }

    fn dir_is_empty(&self, dir: u64) -> Result<bool, Error> {
        Ok(self.scan(&keys::cookies_from(dir, 0), 1, false)?.is_empty())
    }

    /// Sets directory `dir`'s mtime and ctime to now and adds `delta` to its
    /// nlink.
    fn touch_dir(&mut self, dir: u64, delta: i32) -> Result<(), Error> {
        let mut rec = self.inode(dir)?;
        rec.nlink = rec.nlink.checked_add_signed(delta).ok_or_else(|| invalid("too many links"))?;
        rec.mtime = self.now;
        rec.ctime = self.now;
        self.put_inode(dir, &rec)
    }

    /// Makes a new inode from `rec` and its entry `name` in directory
    /// `parent`; a new directory adds a link to the parent.
    fn make_entry(&mut self, parent: u64, name: &[u8], rec: InodeRecord) -> Result<Attr, Error> {
        self.make_entry_at(parent, name, rec, None)
    }

    /// [`W::make_entry`] with inode number `at` (checked by the caller), or
    /// the next number of the counter.
    fn make_entry_at(
        &mut self,
        parent: u64,
        name: &[u8],
        rec: InodeRecord,
        at: Option<u64>,
    ) -> Result<Attr, Error> {
        self.dir(parent)?;
        if self.entry(parent, name)?.is_some() {
            return Err(DirError::Exists.into());
        }
        let ino = match at {
            Some(ino) => ino,
            None => self.next(keys::META_NEXT_INODE)?,
        };
        self.put_inode(ino, &rec)?;
        self.add_entry(parent, name, ino, rec.kind)?;
        self.touch_dir(parent, if rec.kind == KIND_DIR { 1 } else { 0 })?;
        to_attr(ino, &rec)
    }

    /// Removes one link of non-directory `ino`. At nlink 0 it becomes an
    /// orphan (nlink 0, listed under `O`, everything else kept); unless
    /// `keep(ino)` says it is held open, it is also queued to be freed
    /// after the commit ([`Store::free_inode`]). Returns whether it was
    /// kept as an orphan.
    fn drop_link(&mut self, ino: u64, keep: Keep<'_>) -> Result<bool, Error> {
        let mut rec = self.inode(ino)?;
        rec.nlink = rec.nlink.saturating_sub(1);
        rec.ctime = self.now;
        self.put_inode(ino, &rec)?;
        if rec.nlink != 0 {
            return Ok(false);
        }
        self.add_orphan(ino);
        if keep(InodeId(ino)) {
            return Ok(true);
        }
        self.after.frees.push(ino);
        Ok(false)
    }

    /// Takes directory `ino` (its entry already removed) out of the
    /// namespace: nlink 0, listed as an orphan, freed after the commit.
    fn drop_dir(&mut self, ino: u64) -> Result<(), Error> {
        let mut rec = self.inode(ino)?;
        rec.nlink = 0;
        rec.ctime = self.now;
        self.put_inode(ino, &rec)?;
        self.add_orphan(ino);
        self.after.frees.push(ino);
        Ok(())
    }

    /// Deletes up to the transaction's budget of `ino`'s extended
    /// attributes. Returns whether none is left.
    pub(crate) fn drop_xattrs(&mut self, ino: u64, budget: usize) -> Result<bool, Error> {
        let room = budget.saturating_sub(self.ops());
        if room == 0 {
            return Ok(self.scan(&keys::xattrs_of(ino), 1, false)?.is_empty());
        }
        let rows = self.scan(&keys::xattrs_of(ino), room + 1, false)?;
        let done = rows.len() <= room;
        for (k, _) in rows.into_iter().take(room) {
            self.delete(k);
        }
        Ok(done)
    }

    /// Deletes inode `ino`'s record and symlink target (its layout and
    /// extended attributes must be gone).
    pub(crate) fn delete_inode(&mut self, ino: u64) {
        self.delete(keys::inode(ino));
        self.delete(keys::symlink(ino));
    }

    /// Whether directory `anc` is `dir` or one of its ancestors.
    fn is_ancestor_or_self(&self, anc: u64, dir: u64) -> Result<bool, Error> {
        let mut cur = dir;
        for _ in 0..MAX_DEPTH {
            if cur == anc {
                return Ok(true);
            }
            if cur == InodeId::ROOT.0 {
                return Ok(false);
            }
            cur = self.inode(cur)?.parent;
        }
        Err(Error::Corrupt {
            what: "inode",
            reason: format!("the parent chain of directory {dir} does not reach the root"),
        })
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
        keep: Keep<'_>,
    ) -> Result<Renamed, Error> {
        self.dir(parent)?;
        self.dir(new_parent)?;
        let src = self.entry(parent, name)?.ok_or(DirError::NotFound)?;
        let dst = self.entry(new_parent, new_name)?;
        if flags & rename_flags::NOREPLACE != 0 && dst.is_some() {
            return Err(DirError::Exists.into());
        }
        if flags & rename_flags::EXCHANGE != 0 && dst.is_none() {
            return Err(DirError::NotFound.into());
        }
        if dst.is_some_and(|d| d.ino == src.ino) {
            // Two names of one inode (or the same name): POSIX says do
            // nothing.
            return Ok(Renamed { moved: InodeId(src.ino), replaced: None, orphaned: false });
        }
        if src.ino == InodeId::ROOT.0 || dst.is_some_and(|d| d.ino == InodeId::ROOT.0) {
            return Err(invalid("cannot rename the root directory"));
        }
        let src_dir = src.kind == KIND_DIR;
        if src_dir && self.is_ancestor_or_self(src.ino, new_parent)? {
            return Err(invalid("cannot move a directory into its own subtree"));
        }
        if flags & rename_flags::EXCHANGE != 0 {
            let Some(dst) = dst else {
                return Err(DirError::NotFound.into());
            };
            self.exchange(parent, name, src, new_parent, new_name, dst)?;
            return Ok(Renamed {
                moved: InodeId(src.ino),
                replaced: Some(InodeId(dst.ino)),
                orphaned: false,
            });
        }
        let mut orphaned = false;
        if let Some(d) = dst {
            let dst_dir = d.kind == KIND_DIR;
            if dst_dir && self.is_ancestor_or_self(d.ino, parent)? {
                // The target contains the source, so it is not empty.
                return Err(DirError::NotEmpty.into());
            }
            match (src_dir, dst_dir) {
                (true, false) => return Err(DirError::NotDir.into()),
                (false, true) => return Err(DirError::IsDir.into()),
                (true, true) if !self.dir_is_empty(d.ino)? => return Err(DirError::NotEmpty.into()),
                _ => {}
            }
            self.remove_entry(new_parent, new_name, d.cookie)?;
            if dst_dir {
                self.drop_dir(d.ino)?;
                self.touch_dir(new_parent, -1)?;
            } else {
                orphaned = self.drop_link(d.ino, keep)?;
            }
        }
        self.remove_entry(parent, name, src.cookie)?;
        self.add_entry(new_parent, new_name, src.ino, src.kind)?;
        let mut rec = self.inode(src.ino)?;
        if src_dir && parent != new_parent {
            rec.parent = new_parent;
            self.touch_dir(parent, -1)?;
            self.touch_dir(new_parent, 1)?;
        }
        rec.ctime = self.now;
        self.put_inode(src.ino, &rec)?;
        self.touch_dir(parent, 0)?;
        self.touch_dir(new_parent, 0)?;
        Ok(Renamed { moved: InodeId(src.ino), replaced: dst.map(|d| InodeId(d.ino)), orphaned })
    }

    /// `RENAME_EXCHANGE`: the two names swap the inodes they name.
    fn exchange(
        &mut self,
        parent: u64,
        name: &[u8],
        src: Dirent,
        new_parent: u64,
        new_name: &[u8],
        dst: Dirent,
    ) -> Result<(), Error> {
        if dst.kind == KIND_DIR && self.is_ancestor_or_self(dst.ino, parent)? {
            return Err(invalid("cannot move a directory into its own subtree"));
        }
        self.put(
            keys::dirent(parent, name),
            Dirent { ino: dst.ino, cookie: src.cookie, kind: dst.kind }.to_bytes(),
        );
        self.put(
            keys::dirent(new_parent, new_name),
            Dirent { ino: src.ino, cookie: dst.cookie, kind: src.kind }.to_bytes(),
        );
        for (ino, is_dir, from, to) in [
            (src.ino, src.kind == KIND_DIR, parent, new_parent),
            (dst.ino, dst.kind == KIND_DIR, new_parent, parent),
        ] {
            let mut rec = self.inode(ino)?;
            if is_dir && from != to {
                rec.parent = to;
                self.touch_dir(from, -1)?;
                self.touch_dir(to, 1)?;
            }
            rec.ctime = self.now;
            self.put_inode(ino, &rec)?;
        }
        self.touch_dir(parent, 0)?;
        self.touch_dir(new_parent, 0)
    }
}

/// What a malicious dirsvc could do to symlinks and extended attributes
/// (feature `tamper`).
#[cfg(feature = "tamper")]
impl Store {
    /// Swaps the sealed targets of symlinks `a` and `b`. Errors: `NotFound`.
    pub fn tamper_swap_symlink_targets(&self, a: InodeId, b: InodeId) -> Result<(), Error> {
        self.write(|w| {
            let ta = w.get(&keys::symlink(a.0))?.ok_or(DirError::NotFound)?;
            let tb = w.get(&keys::symlink(b.0))?.ok_or(DirError::NotFound)?;
            w.put(keys::symlink(a.0), tb);
            w.put(keys::symlink(b.0), ta);
            Ok(())
        })
    }

    /// Swaps the sealed values of extended attributes `(ino, sealed name)`
    /// `a` and `b`. Errors: `NoAttr`.
    pub fn tamper_swap_xattr_values(&self, a: (InodeId, &[u8]), b: (InodeId, &[u8])) -> Result<(), Error> {
        self.write(|w| {
            let va = w.get(&keys::xattr(a.0 .0, a.1))?.ok_or(DirError::NoAttr)?;
            let vb = w.get(&keys::xattr(b.0 .0, b.1))?.ok_or(DirError::NoAttr)?;
            w.put(keys::xattr(a.0 .0, a.1), vb);
            w.put(keys::xattr(b.0 .0, b.1), va);
            Ok(())
        })
    }
}

/// The checks of a new symlink `name` with sealed `target` of plaintext
/// length `size`. Errors: as `check_name`; `Invalid` for an empty target;
/// `NameTooLong` for a target over the limits.
fn check_symlink(name: &[u8], target: &[u8], size: u64) -> Result<(), Error> {
    check_name(name)?;
    if target.is_empty() {
        return Err(invalid("empty symlink target"));
    }
    if target.len() > MAX_TARGET_BYTES || size > SYMLINK_MAX as u64 {
        return Err(DirError::NameTooLong.into());
    }
    Ok(())
}
