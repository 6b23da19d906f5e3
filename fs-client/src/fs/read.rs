//! The read path: each block from the local buffers, the block cache, or
//! the first replica whose bytes verify against the chunk id and open,
//! once its layout entry's MAC verified ([`Fs::verify_entry`]); sequential
//! readers prefetch the next blocks.

use super::Fs;
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
        let (mut plan, ahead) = {
            let mut st = f.state.lock().await;
            self.reap(&mut st);
            let end = offset.saturating_add(len as u64).min(st.buf.size());
            if offset >= end {
                return Ok(Vec::new());
            }
            // Local bytes now; stored blocks are fetched below, without the
            // lock.
            let plan = st.buf.read(offset, len as u64);
            let sequential = h.last_read_end.swap(end, Ordering::Relaxed) == offset;
            let ahead: Vec<BlockLoc> = if sequential && self.config.readahead_blocks > 0 {
                let first = end.div_ceil(b);
                st.buf
                    .layout_range(first..first.saturating_add(self.config.readahead_blocks))
                    .map(|(_, s)| s.loc.clone())
                    .collect()
            } else {
                Vec::new()
            };
            (plan, ahead)
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
        let ino = h.ino;
        let fetches = plan.fetches().iter().map(|(i, s)| {
            let (i, loc) = (*i, s.loc.clone());
            async move { Ok::<_, Error>((i, self.fetch_block(ino, &loc).await?)) }
        });
        let blocks = futures::future::try_join_all(fetches).await?;
        for (i, block) in blocks {
            plan.fill(i, &block);
        }
        Ok(plan.into_bytes())
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
