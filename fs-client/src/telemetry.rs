//! The mount's Prometheus metrics (docs/METRICS.md), recorded where the
//! data passes: chunk puts and gets to peers ([`crate::remote::PeerPool`]),
//! the block cache ([`crate::cache`]) and the upload queue
//! ([`crate::fs`]'s `start_upload`). Served on `fs-client mount
//! --metrics-addr`; no-ops when metrics are off.

use metrics::gauge;

/// Sealed chunk bytes stored on peers (counter, bytes; one count per
/// replica put that succeeded).
pub const UPLOADED_BYTES: &str = "p2pfs_client_uploaded_bytes_total";
/// Sealed chunk bytes fetched from peers (counter, bytes).
pub const DOWNLOADED_BYTES: &str = "p2pfs_client_downloaded_bytes_total";
/// Chunk puts and gets to peers (counter; labels `op`: `put`, `get`;
/// `result`: `ok`, `error`).
pub const PEER_REQUESTS: &str = "p2pfs_client_peer_requests_total";
/// Latency of chunk puts and gets to peers (histogram, seconds; label
/// `op`).
pub const PEER_REQUEST_DURATION: &str = "p2pfs_client_peer_request_duration_seconds";
/// Lookups answered (counter, label `from`: `cache` when this mount knew
/// the answer while the change feed vouched for it, `dirsvc` otherwise).
pub const LOOKUPS: &str = "p2pfs_client_lookups_total";
/// Block reads answered by the decrypted block cache (counter).
pub const CACHE_HITS: &str = "p2pfs_client_cache_hits_total";
/// Block reads that had to fetch from peers (counter; concurrent readers
/// of one block share the fetch but each counts).
pub const CACHE_MISSES: &str = "p2pfs_client_cache_misses_total";
/// Blocks handed to an upload and not yet stored: waiting for an upload
/// slot, being sealed, or being put on peers (gauge).
pub const UPLOAD_BACKLOG_BLOCKS: &str = "p2pfs_client_upload_backlog_blocks";
/// Plaintext bytes of those blocks (gauge, bytes).
pub const UPLOAD_BACKLOG_BYTES: &str = "p2pfs_client_upload_backlog_bytes";
/// Blocks stored on enough peers (counter).
pub const BLOCKS_UPLOADED: &str = "p2pfs_client_blocks_uploaded_total";
/// Block uploads that failed (the data stays buffered and is retried;
/// counter).
pub const BLOCK_UPLOAD_FAILURES: &str = "p2pfs_client_block_upload_failures_total";

/// One block in the upload backlog, counted in [`UPLOAD_BACKLOG_BLOCKS`]
/// and [`UPLOAD_BACKLOG_BYTES`] from creation until drop.
pub(crate) struct BacklogGuard {
    bytes: f64,
}

impl BacklogGuard {
    /// Counts a block of `bytes` plaintext bytes into the backlog.
    pub(crate) fn new(bytes: usize) -> Self {
        let bytes = bytes as f64;
        gauge!(UPLOAD_BACKLOG_BLOCKS).increment(1.0);
        gauge!(UPLOAD_BACKLOG_BYTES).increment(bytes);
        BacklogGuard { bytes }
    }
}

impl Drop for BacklogGuard {
    fn drop(&mut self) {
        gauge!(UPLOAD_BACKLOG_BLOCKS).decrement(1.0);
        gauge!(UPLOAD_BACKLOG_BYTES).decrement(self.bytes);
    }
}
