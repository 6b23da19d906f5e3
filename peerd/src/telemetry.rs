//! peerd's Prometheus metrics (docs/METRICS.md): chunk bytes in and out,
//! counted where the handlers see them, and the gauges set from the store
//! and the scrub counters when `/metrics` is scraped. Requests, errors and
//! latency per RPC come from `common::telemetry` (every server).

use crate::scrub::ScrubStats;
use crate::store::{ChunkStore, FsChunkStore};
use common::telemetry::Refresh;
use metrics::{counter, gauge};
use std::sync::{Arc, Mutex};

/// Chunk bytes received (counter, bytes; label `rpc`: `put`, or
/// `fetch_from` for repair copies pulled from another peer).
pub const RECEIVED_BYTES: &str = "p2pfs_peer_received_bytes_total";

/// Chunk bytes sent (counter, bytes; label `rpc`: `get`, `get_range`).
pub const SENT_BYTES: &str = "p2pfs_peer_sent_bytes_total";

/// The `/metrics` refresh: store usage, scrub progress and pending
/// corruption reports, read at scrape time.
pub(crate) fn refresh(store: FsChunkStore, scrub: Arc<Mutex<ScrubStats>>) -> Refresh {
    Arc::new(move || {
        let (store, scrub) = (store.clone(), scrub.clone());
        Box::pin(async move {
            if let Ok(u) = store.usage().await {
                gauge!("p2pfs_peer_capacity_bytes").set(u.capacity_bytes as f64);
                gauge!("p2pfs_peer_used_bytes").set(u.used_bytes as f64);
                gauge!("p2pfs_peer_free_bytes").set(u.free_bytes as f64);
                gauge!("p2pfs_peer_chunks").set(u.chunks as f64);
            }
            let s = scrub.lock().unwrap_or_else(|e| e.into_inner()).clone();
            counter!("p2pfs_peer_scrub_passes_total").absolute(s.passes_completed);
            counter!("p2pfs_peer_scrub_verified_chunks_total").absolute(s.chunks_verified);
            counter!("p2pfs_peer_scrub_verified_bytes_total").absolute(s.bytes_verified);
            counter!("p2pfs_peer_corrupt_chunks_total").absolute(s.corrupt_found);
            gauge!("p2pfs_peer_corrupt_reports_pending").set(store.corrupt_queue().pending().len() as f64);
        })
    })
}
