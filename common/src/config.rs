//! Limits and defaults that every process must agree on.

use std::time::Duration;

/// Default block size of a new volume in bytes (1 MiB): a power of two that
/// matches the kernel's largest FUSE write, so a sequential writer fills one
/// block per request.
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;

/// Smallest block size a volume may have, in bytes (4 KiB).
pub const MIN_BLOCK_SIZE: u32 = 4 << 10;

/// Largest block size a volume may have, in bytes (4 MiB).
pub const MAX_BLOCK_SIZE: u32 = 4 << 20;

/// Default replication factor R of a new volume.
pub const DEFAULT_REPLICAS: u32 = 2;

/// Largest frame either end of any p2pfs connection accepts, in bytes
/// (16 MiB): above the largest sealed chunk plus RPC envelope. A larger frame
/// closes that connection (and only that one).
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// Largest plaintext name in bytes, as on Linux (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Largest symlink target in bytes (`PATH_MAX` − 1).
pub const SYMLINK_MAX: usize = 4095;

/// Deadline for metadata RPCs to dirsvc.
pub const META_DEADLINE: Duration = Duration::from_secs(30);

/// Deadline for one chunk transfer (put or get of up to one block).
pub const CHUNK_DEADLINE: Duration = Duration::from_secs(60);

/// How often a peer heartbeats to dirsvc.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// A peer that has not heartbeat for this long is treated as down by
/// placement and by the replica order handed to readers.
pub const PEER_DOWN_AFTER: Duration = Duration::from_secs(10);

/// Returns whether `size` is a valid volume block size: a power of two in
/// [`MIN_BLOCK_SIZE`, `MAX_BLOCK_SIZE`].
pub fn valid_block_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size)
}
