//! p2pfs client: mounts a volume as a folder (FUSE) and offers the CLI
//! operations around it (keygen, init, volume, peers).
//!
//! Architecture: [`fs::Fs`] is the async core (namespace calls to dirsvc,
//! block buffers, uploads to peers, verified reads, the block cache). It runs
//! on a private multi-threaded tokio runtime. [`fuse::FuseAdapter`] maps
//! fuser's callbacks, which arrive on several fuser worker threads, onto it.
//! [`mount::run`] owns the session: it cleans a stale mount, mounts, waits
//! for SIGINT/SIGTERM or an external unmount, then detaches the mount and
//! flushes what is still buffered before it returns.

// No panic reachable from a message or a stored byte (invariant 5):
// errors, never unwrap/expect, outside tests (clippy.toml allows them there).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
pub mod cache;
pub mod defaults;
pub mod doctor;
pub mod error;
pub mod files;
pub mod fs;
pub mod fuse;
pub mod identity;
pub mod members;
pub mod mount;
pub mod mount_helper;
pub mod pins;
pub mod remote;
pub mod status;
pub mod telemetry;
pub mod volume;

pub use error::{Error, Result};
