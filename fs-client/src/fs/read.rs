//! The read path: each block from the local buffers, the block cache, or
//! the first replica whose bytes verify against the chunk id and open,
//! once its layout entry's MAC verified ([`Fs::verify_entry`]); sequential
//! readers prefetch the next blocks.

use super::{Fs, Source};
use crate::cache::Block;
use crate::error::{Error, Result};
use common::codec;
use common::rpc::dir::BlockLoc;
use common::InodeId;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::warn;

impl Fs {
    // ----- read path ---------------------------------------------------------------

    /// Reads up to `len` bytes at `offset` through `fh` (short at EOF).
    pub async fn read(self: &Arc<Self>, fh: u64, offset: u64, len: u32) -> Result<Vec<u8>> {
        let h = self.handle(fh)?;
        let f = self.file(h.ino)?;
        let b = self.block_size;
        let (size, sources, ahead) = {
            let mut st = f.state.lock().await;
            self.reap(&mut st);
            let size = st.size;
            let end = (offset + len as u64).min(size);
            if offset >= end {
                return Ok(Vec::new());
            }
            let sources: Vec<(u64, Source)> =
                (offset / b..end.div_ceil(b)).map(|i| (i, Self::source(&st, i))).collect();
            let sequential = h.last_read_end.swap(end, Ordering::Relaxed) == offset;
            let ahead: Vec<BlockLoc> = if sequential && self.config.readahead_blocks > 0 {
                let first = end.div_ceil(b);
                st.layout.range(first..first + self.config.readahead_blocks).map(|(_, l)| l.clone()).collect()
            } else {
                Vec::new()
            };
            (size, sources, ahead)
        };
        for loc in ahead {
            if self.cache.get(&loc.chunk).is_none() {
                let me = self.clone();
                let ino = h.ino;
                tokio::spawn(async move {
                    let _ = me.fetch_block(ino, &loc).await;
                });
            }
        }
        let end = (offset + len as u64).min(size);
        let ino = h.ino;
        let fetches = sources.into_iter().map(|(i, s)| async move {
            let block = match s {
                Source::Hole => None,
                Source::Local(d) => Some(d),
                Source::Remote(loc) => Some(self.fetch_block(ino, &loc).await?),
            };
            Ok::<_, Error>((i, block))
        });
        let blocks = futures::future::try_join_all(fetches).await?;
        let mut out = vec![0u8; (end - offset) as usize];
        for (i, block) in blocks {
            let Some(block) = block else { continue };
            let bstart = i * b;
            let from = offset.max(bstart);
            let to = end.min(bstart + block.len() as u64);
            if from < to {
                out[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&block[(from - bstart) as usize..(to - bstart) as usize]);
            }
        }
        Ok(out)
    }

    /// The plaintext of block `loc.index` of `ino`: its layout entry is
    /// verified first ([`Fs::verify_entry`]), then the block comes from the
    /// cache or the first replica whose bytes verify and open.
    ///
    /// Errors: [`Error::Integrity`] for an entry that does not verify;
    /// [`Error::ChunkUnavailable`] when no replica gives verified bytes.
    pub(super) async fn fetch_block(self: &Arc<Self>, ino: InodeId, loc: &BlockLoc) -> Result<Block> {
        self.verify_entry(ino, loc).await?;
        let me = self.clone();
        let loc2 = loc.clone();
        self.cache.get_or_fetch(loc.chunk, async move { me.fetch_from_replicas(loc2).await }).await
    }

    pub(super) async fn fetch_from_replicas(self: Arc<Self>, loc: BlockLoc) -> Result<Block> {
        let mut replicas = loc.replicas.clone();
        if replicas.is_empty() {
            replicas = self
                .dir
                .call(|c, ctx| async move { c.chunk_locations(ctx, vec![loc.chunk]).await })
                .await?
                .into_iter()
                .next()
                .unwrap_or_default();
        }
        let mut detail = Vec::new();
        for peer in &replicas {
            let bytes = match self.peers.get(peer, loc.chunk).await {
                Ok(b) => b,
                Err(e) => {
                    detail.push(format!("{}: {e}", peer.addr));
                    continue;
                }
            };
            // The entry's epoch was checked by its MAC (verify_entry made
            // sure this client knows it); the chunk's header, authenticated
            // by the AEAD, must name the same one.
            let keys = self.keys_for(loc.epoch).await?;
            let Some(key) = keys.epoch(loc.epoch).map(|k| k.chunk.clone()) else {
                return Err(Error::Integrity(format!("no key epoch {}", loc.epoch)));
            };
            let (id, want) = (loc.chunk, loc.epoch);
            let opened = tokio::task::spawn_blocking(move || {
                codec::verify(&id, &bytes)?;
                let epoch = codec::epoch_of(&bytes)?;
                if epoch != want {
                    return Err(common::Error::Key(format!(
                        "the chunk is sealed under key epoch {epoch}, its layout entry says {want}"
                    )));
                }
                codec::open_bytes(&key, &bytes)
            })
            .await
            .map_err(|e| Error::Crypto(format!("open task failed: {e}")))?;
            match opened {
                Ok(plain) => return Ok(Arc::new(plain)),
                Err(e) => {
                    warn!(chunk = %loc.chunk, peer = %peer.id, addr = %peer.addr, error = %e, "bad replica: chunk failed verification; trying the next replica");
                    detail.push(format!("{}: {e}", peer.addr));
                }
            }
        }
        Err(Error::ChunkUnavailable { chunk: loc.chunk.fmt_short(), detail: detail.join("; ") })
    }
}
