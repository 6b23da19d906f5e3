//! Size changes: `truncate`/`ftruncate` and `O_TRUNC`, in the buffers of
//! a file this client has open, or at dirsvc for any other file.

use super::{lock, Fs, Guard, OpenFile};
use crate::error::{Error, Result};
use common::rpc::dir::FileKind;
use common::time::Timestamp;
use common::InodeId;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Fs {
    /// Sets the size of a regular file. Shrinking to a size inside a stored
    /// block rewrites that block trimmed, committed with the size (never the
    /// size without it: see [`super::buffer`]).
    ///
    /// A file this client has open is truncated in its buffers and the new
    /// size committed with the next flush, like a write (close-to-open for
    /// other mounts); any other file is truncated at dirsvc before this
    /// returns.
    ///
    /// Errors: `EINVAL` for a non-regular file; `EFBIG` past the largest
    /// file size; read, upload, dirsvc errors.
    pub async fn truncate(self: &Arc<Self>, ino: InodeId, size: u64) -> Result<()> {
        let file = lock(&self.files).get(&ino).cloned();
        if let Some(f) = &file {
            if f.opens.load(Ordering::SeqCst) > 0 {
                let st = f.state.lock().await;
                return self.truncate_open(f, st, size).await.1;
            }
        }
        let temp;
        let f = match file {
            Some(f) => f,
            None => {
                let (attr, layout) = self.load_layout(ino).await?;
                if attr.kind != FileKind::File {
                    return Err(Error::Errno(libc::EINVAL, "not a regular file".into()));
                }
                temp = OpenFile::new(self.new_state(&attr, layout), 0);
                temp.clone()
            }
        };
        let st = f.state.lock().await;
        let (st, r) = self.flush_locked(&f, st).await;
        r?;
        let (st, r) = self.set_size(&f, st, size).await;
        r?;
        let (_st, r) = self.flush_locked(&f, st).await;
        r
    }

    /// Truncates an open file in its buffers (after a close-to-open reload
    /// if it has no local changes); see [`Fs::set_size`].
    pub(super) async fn truncate_open<'a>(
        self: &Arc<Self>,
        f: &'a OpenFile,
        mut st: Guard<'a>,
        size: u64,
    ) -> (Guard<'a>, Result<()>) {
        self.reap(&mut st);
        // Another mount may have changed the file since it was opened here;
        // `stat` already shows that, so growing must start from it too.
        if let Err(e) = self.refresh_clean(&mut st).await {
            return (st, Err(e));
        }
        self.set_size(f, st, size).await
    }

    /// Sets the size in the write buffer: blocks past the new end are
    /// dropped, a block cut in the middle is trimmed (fetched first,
    /// without the lock, if it is stored). Committed with the next commit.
    ///
    /// Errors: `EFBIG`; fetch errors.
    pub(super) async fn set_size<'a>(
        self: &Arc<Self>,
        f: &'a OpenFile,
        st: Guard<'a>,
        size: u64,
    ) -> (Guard<'a>, Result<()>) {
        let (mut st, r) = self.with_fetches(f, st, |st| st.buf.truncate(size)).await;
        match r {
            Ok(ups) => {
                for u in ups {
                    self.spawn_upload(&mut st, u);
                }
                st.mtime = Timestamp::now();
                st.mark_uncommitted();
                (st, Ok(()))
            }
            Err(e) => (st, Err(e)),
        }
    }
}
