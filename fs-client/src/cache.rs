//! The plaintext block cache, with one fetch per chunk however many readers
//! want it at once.
//!
//! Keyed by [`ChunkId`]: chunks are immutable and content-addressed, so an
//! entry can never be stale; layouts decide which chunk a block is. Bounded
//! by a byte budget counted over the blocks' lengths (small files' blocks
//! are as small as their data, so many more of them fit); least recently
//! used entries go first.

use crate::error::Result;
use common::ChunkId;
use futures::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// A decrypted block shared between the cache and readers.
pub type Block = Arc<Vec<u8>>;

type InFlight = Shared<BoxFuture<'static, Result<Block>>>;

/// The cached blocks and the bytes they hold.
struct Lru {
    blocks: LruCache<ChunkId, Block>,
    bytes: u64,
}

/// Bounded LRU cache of decrypted blocks.
pub struct BlockCache {
    lru: Mutex<Lru>,
    /// Most bytes of blocks kept.
    budget: u64,
    in_flight: Mutex<HashMap<ChunkId, InFlight>>,
}

impl BlockCache {
    /// A cache holding at most `budget_bytes` bytes of blocks (at least one
    /// block of `block_size` bytes).
    pub fn new(budget_bytes: u64, block_size: u64) -> Self {
        BlockCache {
            lru: Mutex::new(Lru { blocks: LruCache::unbounded(), bytes: 0 }),
            budget: budget_bytes.max(block_size),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached block, if present.
    pub fn get(&self, id: &ChunkId) -> Option<Block> {
        self.lock().blocks.get(id).cloned()
    }

    /// Caches a block, dropping the least recently used ones past the
    /// budget.
    pub fn insert(&self, id: ChunkId, block: Block) {
        let mut g = self.lock();
        g.bytes += block.len() as u64;
        if let Some(old) = g.blocks.put(id, block) {
            g.bytes -= old.len() as u64;
        }
        while g.bytes > self.budget {
            match g.blocks.pop_lru() {
                Some((_, b)) => g.bytes -= b.len() as u64,
                None => break,
            }
        }
    }

    /// Bytes of blocks cached now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
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

/// Bounded LRU cache of decrypted segments of segmented (v3) chunks, keyed
/// by (chunk id, segment index): what random reads fetched by segment
/// ([`crate::fs`]'s read path), so a re-read costs no round trip. Like
/// [`BlockCache`], entries are immutable and never stale.
pub struct SegmentCache {
    lru: Mutex<SegmentLru>,
    /// Most bytes of segments kept.
    budget: u64,
}

/// The cached segments and the bytes they hold.
struct SegmentLru {
    segments: LruCache<(ChunkId, u32), Block>,
    bytes: u64,
}

impl SegmentCache {
    /// A cache holding at most `budget_bytes` bytes of segment plaintext.
    pub fn new(budget_bytes: u64) -> Self {
        SegmentCache {
            lru: Mutex::new(SegmentLru { segments: LruCache::unbounded(), bytes: 0 }),
            budget: budget_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SegmentLru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached plaintext of segment `index` of chunk `id`, if present.
    pub fn get(&self, id: &ChunkId, index: u32) -> Option<Block> {
        self.lock().segments.get(&(*id, index)).cloned()
    }

    /// Caches a segment's plaintext, dropping the least recently used
    /// segments past the budget.
    pub fn insert(&self, id: ChunkId, index: u32, segment: Block) {
        let mut g = self.lock();
        g.bytes += segment.len() as u64;
        if let Some(old) = g.segments.put((id, index), segment) {
            g.bytes -= old.len() as u64;
        }
        while g.bytes > self.budget {
            match g.segments.pop_lru() {
                Some((_, b)) => g.bytes -= b.len() as u64,
                None => break,
            }
        }
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

    #[test]
    fn segments_are_cached_by_chunk_and_index_within_a_byte_budget() {
        let cache = SegmentCache::new(250);
        let id = ChunkId::of(b"x");
        cache.insert(id, 0, Arc::new(vec![0; 100]));
        cache.insert(id, 1, Arc::new(vec![1; 100]));
        assert_eq!(cache.get(&id, 1).unwrap()[0], 1);
        assert!(cache.get(&ChunkId::of(b"y"), 1).is_none());
        cache.get(&id, 0);
        // Over the budget: segment 1, least recently used, goes.
        cache.insert(id, 2, Arc::new(vec![2; 100]));
        assert!(cache.get(&id, 1).is_none());
        assert!(cache.get(&id, 0).is_some() && cache.get(&id, 2).is_some());
    }

    #[test]
    fn the_budget_counts_bytes_so_small_blocks_fit_many_and_big_ones_few() {
        let cache = BlockCache::new(1000, 100);
        for i in 0..50u8 {
            cache.insert(ChunkId::of(&[i]), Arc::new(vec![i; 20]));
        }
        assert_eq!(cache.bytes(), 1000, "50 blocks of 20 bytes fill a 1000-byte budget exactly");
        assert!(cache.get(&ChunkId::of(&[0])).is_some());
        cache.insert(ChunkId::of(b"big"), Arc::new(vec![0; 600]));
        assert!(cache.bytes() <= 1000);
        assert!(cache.get(&ChunkId::of(b"big")).is_some(), "the newest block stays");
        assert!(cache.get(&ChunkId::of(&[1])).is_none(), "least recently used small blocks went");
        assert!(cache.get(&ChunkId::of(&[0])).is_some(), "a block read since stays");
        cache.insert(ChunkId::of(b"big"), Arc::new(vec![0; 600]));
        assert!(cache.bytes() <= 1000, "a block cached again is counted once");
    }
}
