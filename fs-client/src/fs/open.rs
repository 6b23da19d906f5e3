//! Opening and closing files: loading a layout (close-to-open), the
//! per-inode state shared by every handle, flush and release.

use super::{lock, Fs, Handle, OpenFile, Stored};
use crate::error::{Error, Result};
use common::rpc::dir::{Attr, BlockLoc, FileKind, LayoutPage};
use common::InodeId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::error;

/// Layout entries asked per `get_layout`/`open_layout` page.
const LAYOUT_PAGE: u32 = 4096;

impl Fs {
    // ----- open / close ------------------------------------------------------

    /// The attributes and whole layout of `ino`, from dirsvc.
    ///
    /// Errors: dirsvc's (`ENOENT`, `EINVAL` for a non-file) and transport
    /// errors.
    pub(super) async fn load_layout(&self, ino: InodeId) -> Result<(Attr, BTreeMap<u64, BlockLoc>)> {
        let page =
            self.dir.call(|c, ctx| async move { c.get_layout(ctx, ino, 0, LAYOUT_PAGE).await }).await?;
        self.load_rest(ino, page).await
    }

    /// The whole layout of `ino` given its first page: the pages that
    /// follow are fetched from dirsvc.
    ///
    /// Errors: as [`Fs::load_layout`].
    pub(super) async fn load_rest(
        &self,
        ino: InodeId,
        mut page: LayoutPage,
    ) -> Result<(Attr, BTreeMap<u64, BlockLoc>)> {
        let mut layout = BTreeMap::new();
        let mut first = 0u64;
        loop {
            let last = page.blocks.last().map(|b| b.index);
            for b in page.blocks {
                layout.insert(b.index, b);
            }
            if page.eof {
                return Ok((page.attr, layout));
            }
            // A page covers block indexes [first, first + LAYOUT_PAGE): an
            // empty one that is not the end means a long hole; skip past it.
            first = match last {
                Some(l) => l + 1,
                None => first + u64::from(LAYOUT_PAGE),
            };
            page = self
                .dir
                .call(|c, ctx| async move { c.get_layout(ctx, ino, first, LAYOUT_PAGE).await })
                .await?;
        }
    }

    /// Registers a new handle on `attr.ino`, creating the file's state from
    /// `layout` if this process has none. Returns the handle, the state and
    /// whether the state already existed.
    pub(super) fn open_loaded(
        &self,
        attr: &Attr,
        layout: BTreeMap<u64, BlockLoc>,
        writable: bool,
    ) -> (u64, Arc<OpenFile>, bool) {
        let (file, existed) = {
            let mut files = lock(&self.files);
            let existed = files.contains_key(&attr.ino);
            let f = files
                .entry(attr.ino)
                .or_insert_with(|| OpenFile::new(self.new_state(attr, layout), 0))
                .clone();
            // Counted under the map's lock so a concurrent last release
            // cannot drop the state this handle is about to use.
            f.opens.fetch_add(1, Ordering::SeqCst);
            if writable {
                f.writable_opens.fetch_add(1, Ordering::SeqCst);
            }
            (f, existed)
        };
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        let h = Handle { ino: attr.ino, writable, last_read_end: AtomicU64::new(0) };
        lock(&self.handles).insert(fh, Arc::new(h));
        (fh, file, existed)
    }

    /// Opens a regular file for reading and writing: [`Fs::open_as`].
    pub async fn open(self: &Arc<Self>, ino: InodeId, truncate: bool) -> Result<u64> {
        self.open_as(ino, truncate, true).await
    }

    /// Opens a regular file: fetches its layout (close-to-open) and uses it
    /// unless this process holds unflushed changes to the file; `truncate`
    /// empties it (`O_TRUNC`); `writable`: the handle may write (else the
    /// kernel's page cache of the file may be filled around random reads).
    /// Returns the handle.
    pub async fn open_as(self: &Arc<Self>, ino: InodeId, truncate: bool, writable: bool) -> Result<u64> {
        // One round trip for a file this mount does not hold open yet: the
        // open mark and the first layout page together.
        let loaded = match self.mark_open_loading(ino).await? {
            Some(page) => self.load_rest(ino, page).await,
            None => self.load_layout(ino).await,
        };
        let (attr, layout) = match loaded {
            Ok(l) if l.0.kind == FileKind::File => l,
            Ok(_) => {
                self.unmark_open(ino).await;
                return Err(Error::Errno(libc::EINVAL, "not a regular file".into()));
            }
            Err(e) => {
                self.unmark_open(ino).await;
                return Err(e);
            }
        };
        let (fh, f, existed) = self.open_loaded(&attr, layout.clone(), writable || truncate);
        if existed {
            let mut st = f.state.lock().await;
            self.reap(&mut st);
            if st.buf.reset(attr.size, layout.into_iter().map(|(i, l)| (i, Stored::committed(l)))) {
                st.mtime = attr.mtime;
            }
            st.perm = attr.perm;
        }
        if truncate {
            if let Err(e) = self.truncate(ino, 0).await {
                self.release(fh).await.ok();
                return Err(e);
            }
        }
        Ok(fh)
    }

    pub(super) fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::Errno(libc::EBADF, format!("unknown handle {fh}")))
    }

    pub(super) fn file(&self, ino: InodeId) -> Result<Arc<OpenFile>> {
        lock(&self.files)
            .get(&ino)
            .cloned()
            .ok_or_else(|| Error::Errno(libc::EBADF, format!("inode {ino} is not open")))
    }

    /// Flushes the file behind `fh` (`fsync`, and `flush` on every close):
    /// uploads dirty blocks and commits the layout.
    ///
    /// Errors: the storage error of data this handle wrote that is still
    /// not stored (the first one it met; ENOSPC when the peers are full,
    /// EIO otherwise). A handle that wrote nothing unstored gets success
    /// even when another handle's data could not be stored.
    pub async fn flush(self: &Arc<Self>, fh: u64) -> Result<()> {
        let h = self.handle(fh)?;
        let f = self.file(h.ino)?;
        let st = f.state.lock().await;
        let (st, r) = self.flush_locked(&f, st).await;
        st.outcome_for(fh, r)
    }

    /// Closes a handle: flushes, and forgets the file's state after its last
    /// handle if nothing is left unflushed (data that could not be stored
    /// stays, is retried in the background and, at unmount, kept in a
    /// recovery file).
    ///
    /// Errors: as [`Fs::flush`].
    pub async fn release(self: &Arc<Self>, fh: u64) -> Result<()> {
        let Some(h) = lock(&self.handles).remove(&fh) else { return Ok(()) };
        let f = self.file(h.ino)?;
        let r = {
            let st = f.state.lock().await;
            let (mut st, r) = self.flush_locked(&f, st).await;
            let r = st.outcome_for(fh, r);
            st.writers.remove(&fh);
            let clean = !st.has_local_changes();
            let mut files = lock(&self.files);
            if h.writable {
                f.writable_opens.fetch_sub(1, Ordering::SeqCst);
            }
            if f.opens.fetch_sub(1, Ordering::SeqCst) == 1 && clean {
                files.remove(&h.ino);
            }
            r
        };
        self.unmark_open(h.ino).await;
        if let Err(e) = &r {
            error!(ino = %h.ino, path = %self.path_of(h.ino), error = %e, "close: data written through this handle could not be stored; it stays buffered and is retried");
        }
        r
    }

    /// Flushes every file this client holds (on unmount). Returns the files
    /// whose data could not be stored, with the error (their data is still
    /// buffered; see [`super::recovery`]).
    pub async fn flush_all(self: &Arc<Self>) -> Vec<(InodeId, Error)> {
        let files: Vec<_> = lock(&self.files).values().cloned().collect();
        let mut failed = Vec::new();
        for f in files {
            let st = f.state.lock().await;
            let (st, r) = self.flush_locked(&f, st).await;
            if let Err(e) = r {
                error!(ino = %st.ino, path = %self.path_of(st.ino), error = %e, "unflushed data could not be stored");
                failed.push((st.ino, e));
            }
        }
        failed
    }
}
