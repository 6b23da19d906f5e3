//! Size changes: `truncate`/`ftruncate` and `O_TRUNC`, in the buffers of
//! a file this client has open, or at dirsvc for any other file.

use super::{lock, FileState, Fs, OpenFile, Source};
use crate::error::{Error, Result};
use common::rpc::dir::FileKind;
use common::time::Timestamp;
use common::InodeId;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Fs {
    /// Sets the size of a regular file. Shrinking to a size inside a stored
    /// block rewrites that block trimmed, in the same commit as the size.
    ///
    /// A file this client has open is truncated in its buffers and the new
    /// size committed with the next flush, like a write (close-to-open for
    /// other mounts); any other file is truncated at dirsvc before this
    /// returns.
    ///
    /// Errors: `EINVAL` for a non-regular file; read, upload, dirsvc errors.
    pub async fn truncate(self: &Arc<Self>, ino: InodeId, size: u64) -> Result<()> {
        let file = lock(&self.files).get(&ino).cloned();
        if let Some(f) = &file {
            if f.opens.load(Ordering::SeqCst) > 0 {
                let mut st = f.state.lock().await;
                return self.truncate_open(&mut st, size).await;
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
                temp = OpenFile::new(FileState::new(&attr, layout), 0);
                temp.clone()
            }
        };
        let mut st = f.state.lock().await;
        self.flush_locked(&mut st).await?;
        let b = self.block_size;
        let keep = size.div_ceil(b);
        if size < st.size && !size.is_multiple_of(b) {
            let idx = size / b;
            if let Some(loc) = st.layout.get(&idx).cloned() {
                let block = self.fetch_block(st.ino, &loc).await?;
                let cut = (size % b) as usize;
                if block.len() > cut {
                    st.dirty.insert(idx, Arc::new(block[..cut].to_vec()));
                }
            }
        }
        st.layout.retain(|i, _| *i < keep);
        st.size = size;
        st.mtime = Timestamp::now();
        st.meta_dirty = true;
        self.flush_locked(&mut st).await
    }

    /// Truncates an open file in its buffers: blocks past the new end
    /// become holes (committed as such, so a later grow reads zeros), a
    /// block cut in the middle is trimmed into a dirty block.
    pub(super) async fn truncate_open(self: &Arc<Self>, st: &mut FileState, size: u64) -> Result<()> {
        self.reap(st);
        // Another mount may have changed the file since it was opened here;
        // `stat` already shows that, so growing must start from it too.
        self.refresh_clean(st).await?;
        let b = self.block_size;
        if size < st.size {
            let keep = size.div_ceil(b);
            let old_blocks = st.size.div_ceil(b);
            if !size.is_multiple_of(b) {
                let idx = size / b;
                let cut = (size % b) as usize;
                let block = match Self::source(st, idx) {
                    Source::Hole => None,
                    Source::Local(d) => Some(d),
                    Source::Remote(loc) => Some(self.fetch_block(st.ino, &loc).await?),
                };
                if let Some(block) = block {
                    if block.len() > cut {
                        st.uploading.remove(&idx);
                        st.dirty.insert(idx, Arc::new(block[..cut].to_vec()));
                    }
                }
            }
            let gone: Vec<u64> = st
                .layout
                .range(keep..)
                .map(|(i, _)| *i)
                .chain(st.dirty.range(keep..).map(|(i, _)| *i))
                .chain(st.uploading.range(keep..).map(|(i, _)| *i))
                .chain(st.uncommitted.range(keep..).map(|(i, _)| *i))
                .filter(|i| *i < old_blocks.max(keep))
                .collect();
            for idx in gone {
                st.layout.remove(&idx);
                st.dirty.remove(&idx);
                st.uploading.remove(&idx);
                st.uncommitted.insert(idx, None);
            }
            // Blocks wholly past the new size are dropped by dirsvc with the
            // size; those listed above also cover a grow before the commit.
            st.uncommitted.retain(|i, c| *i < keep || c.is_none());
            st.uncommitted_since.get_or_insert_with(std::time::Instant::now);
        }
        st.size = size;
        st.mtime = Timestamp::now();
        st.meta_dirty = true;
        Ok(())
    }
}
