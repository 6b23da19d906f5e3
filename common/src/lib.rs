//! The shared vocabulary of p2pfs.
//!
//! Everything two or more processes must agree on lives here and nowhere
//! else: typed ids ([`ids`]), the sealed-chunk format ([`codec`]), sub-key
//! derivation, layout MACs and name sealing ([`keys`]), key epochs
//! ([`keyring`]), the tarpc service traits with their wire types and error
//! enums ([`rpc`]), cluster identity (certificates, join tokens: [`pki`]),
//! mutual TLS ([`tls`]), the one framed transport and server accept loop
//! ([`transport`]) with its frame encoding ([`wire`]) and shared limits and
//! defaults ([`config`]); the Prometheus metrics every server records
//! ([`telemetry`]) and the small HTTP server that exposes them ([`http`]);
//! how every process keeps freed chunk buffers for reuse ([`memory`]).
//!
//! This crate has no I/O policy: it never decides where data goes or when to
//! retry. The daemons and the client do.
#![warn(missing_docs)]
// No panic reachable from a message or a stored byte (invariant 5):
// errors, never unwrap/expect, outside tests (clippy.toml allows them there).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod codec;
pub mod config;
pub mod error;
pub mod fsutil;
pub mod http;
pub mod ids;
pub mod join;
pub mod keyring;
pub mod keys;
pub mod memory;
pub mod net;
pub mod panic;
pub mod pki;
pub mod rpc;
pub mod settings;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod transport;
pub mod wire;

pub use error::Error;
pub use ids::{ChunkId, InodeId, NodeId, PeerId, VolumeId};
