//! The plaintext block cache, with one fetch per chunk however many readers
//! want it at once.
//!
//! Keyed by [`ChunkId`]: chunks are immutable and content-addressed, so an
//! entry can never be stale; layouts decide which chunk a block is. Bounded
//! by a number of entries computed from a byte budget and the block size;
//! least recently used entries go first.

use crate::error::Result;
use common::ChunkId;
use futures::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// A decrypted block shared between the cache and readers.
pub type Block = Arc<Vec<u8>>;

type InFlight = Shared<BoxFuture<'static, Result<Block>>>;

/// Bounded LRU cache of decrypted blocks.
pub struct BlockCache {
    blocks: Mutex<LruCache<ChunkId, Block>>,
    in_flight: Mutex<HashMap<ChunkId, InFlight>>,
}

impl BlockCache {
    /// A cache holding about `budget_bytes` of blocks of `block_size` bytes
    /// (at least 4 blocks).
    pub fn new(budget_bytes: u64, block_size: u64) -> Self {
        let n = (budget_bytes / block_size.max(1)).max(4) as usize;
        BlockCache {
            blocks: Mutex::new(LruCache::new(NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN))),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The cached block, if present.
    pub fn get(&self, id: &ChunkId) -> Option<Block> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Caches a block (used after an upload, so rereads need no fetch).
    pub fn insert(&self, id: ChunkId, block: Block) {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner()).put(id, block);
    }

    /// Returns the cached block or runs `fetch` to get it. Concurrent callers
    /// for the same chunk share one fetch; a failed fetch is not cached.
    pub async fn get_or_fetch<F>(&self, id: ChunkId, fetch: F) -> Result<Block>
    where
        F: Future<Output = Result<Block>> + Send + 'static,
    {
        if let Some(b) = self.get(&id) {
            metrics::counter!(crate::telemetry::CACHE_HITS).increment(1);
            return Ok(b);
        }
        metrics::counter!(crate::telemetry::CACHE_MISSES).increment(1);
        let fut = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            in_flight.entry(id).or_insert_with(|| fetch.boxed().shared()).clone()
        };
        let r = fut.await;
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if let Ok(b) = &r {
            self.insert(id, b.clone());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_readers_share_one_fetch_and_lru_evicts() {
        let cache = Arc::new(BlockCache::new(4, 1));
        let calls = Arc::new(AtomicUsize::new(0));
        let id = ChunkId::of(b"x");
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(id, async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Ok(Arc::new(vec![1u8]))
                    })
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(*t.await.unwrap(), vec![1u8]);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        for i in 0..10u8 {
            cache.insert(ChunkId::of(&[i]), Arc::new(vec![i]));
        }
        assert!(cache.get(&id).is_none(), "oldest entry evicted");
    }
}
