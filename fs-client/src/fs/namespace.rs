//! Namespace calls: lookup and attributes (with the local size of files
//! that have unflushed writes), make, remove, rename and link entries,
//! symlinks, directory listings and `statfs`. Names are sealed here, before
//! they leave the client.
//!
//! Symlink targets are sealed bound to the volume and the symlink's inode
//! (`common::keys::symlink_ad`): the inode number is reserved at dirsvc
//! first (`reserve_inodes`, a few at a time), so the target can name it
//! before the inode exists. A target served for another symlink does not
//! open: `readlink` is EIO, with an error log line.

use super::known::Cached;
use super::{lock, Entry, Fs};
use crate::error::{Error, Result};
use common::codec;
use common::config::SYMLINK_MAX;
use common::keys::symlink_ad;
use common::rpc::dir::{
    Attr, AttrChange, DirError, FileKind, Mutation, NewInode, NewSymlink, SetAttr, StatFs,
};
use common::time::Timestamp;
use common::InodeId;
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::warn;

/// Notes a carried change of one attribute to `to` (if any): over `seen`,
/// or over what an earlier carried change of it was made over.
fn carry<T: Copy>(change: &mut Option<AttrChange<T>>, seen: T, to: Option<T>) {
    if let Some(to) = to {
        let from = change.map_or(seen, |c| c.from);
        *change = Some(AttrChange { from, to });
    }
}

/// What a call that makes an entry started from ([`Fs::making`]).
struct Making {
    /// The parent's cached attributes before the call, if any.
    parent_before: Option<Attr>,
    /// The cache's generations when the call started.
    generation: u64,
    entry_generation: u64,
}

/// How many inode numbers are reserved at once for symlinks.
const RESERVE_BATCH: u32 = 16;

impl Fs {
    /// Looks `name` up in `parent`: from what this mount knows while the
    /// change feed vouches for it ([`super::known`]), else from dirsvc.
    /// Errors: `ENOENT` and friends via dirsvc.
    pub async fn lookup(&self, parent: InodeId, name: &[u8]) -> Result<Attr> {
        super::check_name_len(name)?;
        if let Some(cached) = self.known.entry(parent, name) {
            metrics::counter!(crate::telemetry::LOOKUPS, "from" => "cache").increment(1);
            return match cached {
                Cached::Found(attr) => Ok(self.overlay(attr).await),
                Cached::Absent => Err(Error::Dir(DirError::NotFound)),
            };
        }
        metrics::counter!(crate::telemetry::LOOKUPS, "from" => "dirsvc").increment(1);
        let sealed = self.seal_name(parent, name)?;
        let generation = self.known.generation();
        let entry_generation = self.known.entry_generation();
        let r = self
            .dir
            .call(|c, ctx| {
                let s = sealed.clone();
                async move { c.lookup(ctx, parent, s).await }
            })
            .await;
        let attr = match r {
            Ok(attr) => attr,
            Err(e) => {
                if e.is_not_found() {
                    self.known.record_lookup(parent, name, None, entry_generation);
                }
                return Err(e);
            }
        };
        self.known.record_attr(&attr, generation);
        self.known.record_lookup(parent, name, Some(attr.ino), entry_generation);
        self.names.record(attr.ino, parent, name);
        Ok(self.overlay(attr).await)
    }

    /// Starts a call that makes an entry in `parent`: takes the parent's
    /// cached attributes out (they change) and notes the cache's
    /// generations, for [`Fs::made`].
    fn making(&self, parent: InodeId) -> Making {
        let parent_before = self.known.take_attr(parent);
        Making {
            parent_before,
            generation: self.known.generation(),
            entry_generation: self.known.entry_generation(),
        }
    }

    /// Records in the cache the outcome of this mount's call that makes
    /// `name` in `parent`: the new entry and its attributes (an inode with
    /// no extended attributes), and the parent's new attributes — dirsvc
    /// sets a directory's mtime and ctime to the new inode's crtime in the
    /// same transaction and counts a new subdirectory's link, so they need
    /// no `getattr` (the kernel asks for them before the next create in
    /// that directory). When the call failed and may or may not have made
    /// the name: nothing, and `parent` is no longer complete.
    fn made(&self, parent: InodeId, name: &[u8], r: &Result<Attr>, m: Making) {
        match r {
            Ok(attr) => {
                self.known.record_bare(attr.ino, m.generation);
                self.known.record_attr(attr, m.generation);
                let dir = attr.kind == FileKind::Dir;
                if let Some(mut p) = m.parent_before {
                    p.mtime = attr.crtime;
                    p.ctime = attr.crtime;
                    p.nlink += u32::from(dir);
                    self.known.record_attr(&p, m.generation);
                }
                self.known.record_made(parent, name, attr.ino, dir, m.entry_generation);
                self.names.record(attr.ino, parent, name);
            }
            Err(_) => self.known.forget_entry(parent, name),
        }
    }

    /// Attributes of `ino`, with the local size and mtime of an open file
    /// that has unflushed writes; from dirsvc, or from its answer of less
    /// than a second ago that nothing has changed since ([`super::known`]).
    pub async fn getattr(&self, ino: InodeId) -> Result<Attr> {
        if let Some(attr) = self.known.attr(ino) {
            return Ok(self.overlay(attr).await);
        }
        let generation = self.known.generation();
        let attr = self.dir.call(|c, ctx| async move { c.getattr(ctx, ino).await }).await?;
        self.known.record_attr(&attr, generation);
        Ok(self.overlay(attr).await)
    }

    pub(super) async fn overlay(&self, mut attr: Attr) -> Attr {
        let file = lock(&self.files).get(&attr.ino).cloned();
        if let Some(f) = file {
            let st = f.state.lock().await;
            if st.has_local_changes() {
                attr.size = st.buf.size();
                attr.mtime = st.mtime;
                // A write changes ctime too; dirsvc sets it at commit.
                attr.ctime = attr.ctime.max(st.mtime).max(st.pending_at.unwrap_or(attr.ctime));
                attr.stored_bytes = st.stored_estimate();
                let p = &st.pending;
                attr.perm = p.perm.map_or(attr.perm, |c| c.to);
                attr.uid = p.uid.map_or(attr.uid, |c| c.to);
                attr.gid = p.gid.map_or(attr.gid, |c| c.to);
                attr.atime = p.atime.map_or(attr.atime, |c| c.to);
            }
        }
        attr
    }

    /// Changes attributes. A size change goes through [`Fs::truncate`].
    /// Mode, owner, atime and mtime of a file with data buffered here
    /// (what `tar` sets on each file it unpacks before closing it) are
    /// kept with that data and carried by its commit (`CommitAttrs`):
    /// no round trip of their own, durable and visible to other mounts
    /// when the data is (close, fsync, or the periodic commit). Otherwise
    /// an open file is flushed first, so later commits cannot undo an
    /// explicit mtime, and the change is durable at dirsvc when this
    /// returns.
    pub async fn setattr(self: &Arc<Self>, ino: InodeId, set: SetAttr) -> Result<Attr> {
        if let Some(size) = set.size {
            self.truncate(ino, size).await?;
        }
        let rest = SetAttr { size: None, ..set };
        let file = lock(&self.files).get(&ino).cloned();
        if let Some(f) = &file {
            let mut st = f.state.lock().await;
            if rest != SetAttr::default() && !rest.kill_suid_sgid && st.buf.has_local_changes() {
                // Each change over the value last seen at dirsvc: one
                // another mount makes meanwhile is newer and stays.
                let base = self.known.attr(ino).unwrap_or_else(|| st.base.clone());
                let p = &mut st.pending;
                carry(&mut p.perm, base.perm, rest.perm.map(|m| m & 0o7777));
                carry(&mut p.uid, base.uid, rest.uid);
                carry(&mut p.gid, base.gid, rest.gid);
                carry(&mut p.atime, base.atime, rest.atime);
                if let Some(m) = rest.perm {
                    st.perm = m & 0o7777;
                }
                if let Some(m) = rest.mtime {
                    st.mtime = m;
                }
                st.pending_at = Some(Timestamp::now());
                st.mark_uncommitted();
                drop(st);
                return Ok(self.overlay(base).await);
            }
            // Data that cannot be stored now stays buffered (its writers are
            // told); it does not make a chmod or utime fail.
            let (mut st, r) = self.flush_locked(f, st).await;
            if let Err(e) = r {
                tracing::debug!(%ino, error = %e, "setattr: buffered data not stored yet");
            }
            if let Some(m) = rest.mtime {
                st.mtime = m;
            }
        }
        if rest == SetAttr::default() {
            return self.getattr(ino).await;
        }
        let attr = self.setattr_at_dirsvc(ino, rest).await?;
        if let Some(f) = &file {
            let mut st = f.state.lock().await;
            st.perm = attr.perm;
            st.base = attr.clone();
        }
        Ok(attr)
    }

    /// Sets `set` on `ino` at dirsvc (durable when it returns) and keeps
    /// the answer as the inode's cached attributes.
    ///
    /// Errors: dirsvc's (`ENOENT`, `EINVAL`, …) and transport errors.
    pub(super) async fn setattr_at_dirsvc(&self, ino: InodeId, set: SetAttr) -> Result<Attr> {
        self.known.forget_attr(ino);
        let generation = self.known.generation();
        let attr = self
            .dir
            .call(|c, ctx| {
                let s = set.clone();
                async move { c.setattr(ctx, ino, s).await }
            })
            .await?;
        self.known.record_attr(&attr, generation);
        Ok(attr)
    }

    /// Makes a directory.
    pub async fn mkdir(&self, parent: InodeId, name: &[u8], perm: u32, uid: u32, gid: u32) -> Result<Attr> {
        let sealed = self.seal_name(parent, name)?;
        let m = self.making(parent);
        let r = self.dir.mutate_attr(Mutation::Mkdir { parent, name: sealed, perm, uid, gid }).await;
        self.made(parent, name, &r, m);
        r
    }

    /// Makes a special node (FIFO, socket, device) or an empty regular file.
    pub async fn mknod(&self, parent: InodeId, name: &[u8], new: NewInode) -> Result<Attr> {
        let sealed = self.seal_name(parent, name)?;
        let m = self.making(parent);
        let r = self.dir.mutate_attr(Mutation::Create { parent, name: sealed, new }).await;
        self.made(parent, name, &r, m);
        r
    }

    /// Creates and opens a regular file; returns its attributes and handle.
    pub async fn create(
        &self,
        parent: InodeId,
        name: &[u8],
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(Attr, u64)> {
        let new = NewInode { kind: FileKind::File, perm, uid, gid, rdev: 0 };
        let sealed = self.seal_name(parent, name)?;
        let m = self.making(parent);
        // The create and the open mark in one round trip.
        let r = self
            .mark_open_with(|session| Mutation::CreateOpen {
                session,
                parent,
                name: sealed.clone(),
                new: new.clone(),
            })
            .await;
        self.made(parent, name, &r, m);
        let attr = r?;
        let (fh, _, _) = self.open_loaded(&attr, BTreeMap::new(), true);
        Ok((attr, fh))
    }

    /// Removes a file, symlink or node.
    pub async fn unlink(&self, parent: InodeId, name: &[u8]) -> Result<()> {
        let sealed = self.seal_name(parent, name)?;
        self.known.forget_attrs();
        let r = self.dir.mutate(Mutation::Unlink { parent, name: sealed }).await.map(drop);
        self.removed(parent, name, &r);
        r
    }

    /// Records in the cache the outcome of this mount's call that removes
    /// `name` from `parent`: absent, or — when the call failed and may or
    /// may not have removed it — unknown, and `parent` no longer complete.
    fn removed(&self, parent: InodeId, name: &[u8], r: &Result<()>) {
        match r {
            Ok(()) => self.known.removed_entry(parent, name),
            Err(_) => self.known.forget_entry(parent, name),
        }
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, parent: InodeId, name: &[u8]) -> Result<()> {
        let sealed = self.seal_name(parent, name)?;
        self.known.forget_attrs();
        let r = self.dir.mutate(Mutation::Rmdir { parent, name: sealed }).await.map(drop);
        self.removed(parent, name, &r);
        r
    }

    /// Renames atomically; `flags` as `renameat2` (NOREPLACE, EXCHANGE).
    pub async fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        let from = self.seal_name(parent, name)?;
        let to = self.seal_name(new_parent, new_name)?;
        let op = Mutation::Rename { parent, name: from, new_parent, new_name: to, flags };
        self.known.forget_attrs();
        let entry_generation = self.known.entry_generation();
        let r = self.dir.mutate(op).await.and_then(|m| m.ino().map_err(Error::Dir));
        match r {
            // Exchanged: which inode each name now has is not all known here.
            Ok(moved) if flags & libc::RENAME_EXCHANGE == 0 => {
                self.known.renamed((parent, name), (new_parent, new_name), moved, entry_generation)
            }
            _ => {
                self.known.forget_entry(parent, name);
                self.known.forget_entry(new_parent, new_name);
            }
        }
        let moved = r?;
        self.names.record(moved, new_parent, new_name);
        Ok(())
    }

    /// Adds a hard link.
    pub async fn link(&self, ino: InodeId, new_parent: InodeId, new_name: &[u8]) -> Result<Attr> {
        let sealed = self.seal_name(new_parent, new_name)?;
        self.known.forget_attr(new_parent);
        self.known.forget_attr(ino);
        let entry_generation = self.known.entry_generation();
        let r = self.dir.mutate_attr(Mutation::Link { ino, new_parent, new_name: sealed }).await;
        match &r {
            Ok(_) => self.known.record_made(new_parent, new_name, ino, false, entry_generation),
            Err(_) => self.known.forget_entry(new_parent, new_name),
        }
        let attr = r?;
        self.names.record(ino, new_parent, new_name);
        Ok(attr)
    }

    /// Makes a symlink; the target is sealed. `ENAMETOOLONG` above 4095 bytes.
    pub async fn symlink(
        &self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        if target.len() > SYMLINK_MAX {
            return Err(Error::Errno(
                libc::ENAMETOOLONG,
                format!("symlink target of {} bytes", target.len()),
            ));
        }
        let sealed = self.seal_name(parent, name)?;
        let size = target.len() as u64;
        let m = self.making(parent);
        // A reservation can be lost (dirsvc restarted, the session was
        // replaced): then reserve afresh and seal again, once.
        for attempt in 0..2 {
            let ino = self.reserved_inode().await?;
            let keys = self.keys();
            let epoch = keys.newest();
            let t = codec::seal_bytes_ad(
                &keys.newest_keys().symlink,
                epoch,
                target,
                SYMLINK_MAX,
                &symlink_ad(&self.volume, ino),
            )?;
            let new = NewSymlink { ino, target: t, size, uid, gid };
            let r = self
                .with_session(|s| {
                    let (n, new) = (sealed.clone(), new.clone());
                    async move {
                        self.dir.mutate_attr(Mutation::Symlink { session: s, parent, name: n, new }).await
                    }
                })
                .await;
            match r {
                Ok(attr) => {
                    self.made(parent, name, &Ok(attr.clone()), m);
                    return Ok(attr);
                }
                Err(Error::Dir(DirError::NotReserved(_))) if attempt == 0 => {
                    tracing::debug!(ino = %ino, "inode reservation lost; reserving again");
                    lock(&self.reserved).clear();
                }
                Err(e) => {
                    self.known.forget_entry(parent, name);
                    // The number stays reserved at dirsvc unless it was
                    // refused as such; keep it for the next symlink.
                    if !matches!(e, Error::Dir(DirError::NotReserved(_))) {
                        lock(&self.reserved).push(ino);
                    }
                    return Err(e);
                }
            }
        }
        Err(Error::Errno(libc::EIO, "inode reservations keep getting lost".into()))
    }

    /// An inode number this client's session reserved and has not used,
    /// reserving [`RESERVE_BATCH`] more when none is left.
    ///
    /// Errors: dirsvc's (`Limit`, transport).
    async fn reserved_inode(&self) -> Result<InodeId> {
        if let Some(ino) = lock(&self.reserved).pop() {
            return Ok(ino);
        }
        let (first, count) = self
            .with_session(|s| async move {
                self.dir.call(|c, ctx| async move { c.reserve_inodes(ctx, s, RESERVE_BATCH).await }).await
            })
            .await?;
        let mut pool = lock(&self.reserved);
        // Lowest last, so numbers are used in order.
        pool.extend((first.0..first.0 + u64::from(count)).rev().map(InodeId));
        pool.pop().ok_or_else(|| Error::Errno(libc::EIO, "dirsvc reserved no inode number".into()))
    }

    /// The plaintext target of a symlink, which must have been sealed for
    /// this symlink (its inode, this volume).
    ///
    /// Errors: `EIO` ([`Error::Integrity`], logged) for a target that does
    /// not open as this symlink's: dirsvc moved another one here, or it
    /// was altered. A target sealed in the first format (no epoch, not
    /// bound to its inode) opens only on a volume migrated from before
    /// layout MACs.
    pub async fn readlink(&self, ino: InodeId) -> Result<Vec<u8>> {
        let sealed = self.dir.call(|c, ctx| async move { c.readlink(ctx, ino).await }).await?;
        let bad = |why: String| {
            tracing::error!(ino = %ino, path = %self.path_of(ino), reason = %why, "symlink target does not open as this symlink's: dirsvc moved or altered it; refusing it (EIO)");
            Error::Integrity(format!("symlink {ino}: {why}"))
        };
        let h = codec::header(&sealed).map_err(|e| bad(e.to_string()))?;
        let keys = self.keys_for(h.epoch).await?;
        let key = &keys.epoch(h.epoch).ok_or_else(|| bad(format!("no key epoch {}", h.epoch)))?.symlink;
        if h.version == codec::VERSION_V1 {
            if !self.legacy_layouts {
                return Err(bad("target sealed without its inode on a volume that requires binding".into()));
            }
            return codec::open_bytes(key, &sealed).map_err(|e| bad(e.to_string()));
        }
        codec::open_bytes_ad(key, &sealed, &symlink_ad(&self.volume, ino)).map_err(|e| bad(e.to_string()))
    }

    /// Up to `limit` entries of `dir` after `cookie`, names opened. An entry
    /// whose name does not open with this volume's key is skipped and logged.
    pub async fn readdir(&self, dir: InodeId, cookie: u64, limit: u32) -> Result<(Vec<Entry>, bool)> {
        let page = self.dir.call(|c, ctx| async move { c.readdir(ctx, dir, cookie, limit).await }).await?;
        let mut out = Vec::with_capacity(page.entries.len());
        for e in page.entries {
            match self.name_key.open(dir, &e.name) {
                Ok(name) => out.push(Entry { name, ino: e.ino, kind: e.kind, cookie: e.cookie }),
                Err(_) => {
                    warn!(dir = %dir, ino = %e.ino, "directory entry name does not open with the volume key; skipped")
                }
            }
        }
        Ok((out, page.eof))
    }

    /// One page of `dir`'s listing after `cookie`, each entry with its
    /// attributes (with the local size of files that have unflushed
    /// writes): `readdir` and a `lookup` of every entry in one round trip.
    /// Names that do not open with the volume key are skipped and logged.
    ///
    /// Errors: `ENOENT`, `ENOTDIR`, transport errors.
    pub async fn readdir_plus(
        &self,
        dir: InodeId,
        cookie: u64,
        limit: u32,
    ) -> Result<(Vec<(Entry, Attr)>, bool)> {
        let (generation, entry_generation) = (self.known.generation(), self.known.entry_generation());
        let page =
            self.dir.call(|c, ctx| async move { c.readdir_plus(ctx, dir, cookie, limit).await }).await?;
        let mut out = Vec::with_capacity(page.entries.len());
        for (e, attr) in page.entries {
            match self.name_key.open(dir, &e.name) {
                Ok(name) => {
                    self.known.record_attr(&attr, generation);
                    self.known.record_lookup(dir, &name, Some(e.ino), entry_generation);
                    self.names.record(e.ino, dir, &name);
                    let attr = self.overlay(attr).await;
                    out.push((Entry { name, ino: e.ino, kind: e.kind, cookie: e.cookie }, attr));
                }
                Err(_) => {
                    warn!(dir = %dir, ino = %e.ino, "directory entry name does not open with the volume key; skipped")
                }
            }
        }
        Ok((out, page.eof))
    }

    /// Capacity over the live peers.
    pub async fn statfs(&self) -> Result<StatFs> {
        self.dir.call(|c, ctx| async move { c.statfs(ctx).await }).await
    }
}
