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
pub const PROTOCOL_VERSION: u32 = 14;

/// The role a cluster node's certificate names; what it may call is
/// decided from it (docs/SECURITY.md has the table of RPCs and roles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// The directory service.
    Dirsvc,
    /// A storage peer.
    Peer,
    /// A client of the volume (a mount, the CLI of a member).
    Client,
    /// An operator: membership, drain, join tokens, revocation; also
    /// everything a client may do.
    Admin,
}

impl Role {
    /// The lowercase name used in certificates, tokens and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Dirsvc => "dirsvc",
            Role::Peer => "peer",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    /// Parses `dirsvc`, `peer`, `client` or `admin`.
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "dirsvc" => Ok(Role::Dirsvc),
            "peer" => Ok(Role::Peer),
            "client" => Ok(Role::Client),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (dirsvc, peer, client or admin)")),
        }
    }
}

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
