//! The tarpc services spoken between p2pfs processes, with their wire types.
//!
//! - [`dir::DirService`]: fs-client and peerd → dirsvc (namespace, layouts,
//!   placement, peer registry).
//! - [`peer::PeerService`]: fs-client (and later dirsvc/peers) → peerd
//!   (chunk put/get).
//!
//! Every method returns `Result<T, DirError | PeerError>`: the domain errors a
//! caller must act on. Transport failures surface as
//! `tarpc::client::RpcError` around that. Encoding is bincode over
//! length-delimited frames ([`crate::transport`]). Wire compatibility: a
//! change to any type here is a protocol change and is logged in
//! `docs/PROTOCOL.md`.

pub mod dir;
pub mod peer;

use serde::{Deserialize, Serialize};

/// Version of the RPC protocol; bumped on any incompatible change to the
/// types in this module. Exchanged by `DirService::hello`.
pub const PROTOCOL_VERSION: u32 = 4;

/// A peer as handed to clients: where to reach it and whether dirsvc
/// currently believes it is alive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLoc {
    /// The peer's id.
    pub id: crate::PeerId,
    /// `host:port` the peer serves [`peer::PeerService`] on.
    pub addr: String,
    /// Whether the peer heartbeat within `PEER_DOWN_AFTER`.
    pub live: bool,
}
