//! Who is calling, and how much of dirsvc one caller may hold.
//!
//! Every per-caller limit (sessions, placement promises) is counted
//! against a [`Principal`]: the node named by the certificate of the
//! connection the call came on (a client's several connections and mounts
//! on one certificate are one caller; a node holds one certificate at a
//! time, and the CA issues them only to admitted nodes). The limits never
//! look inside it.
//!
//! The limits and their defaults are fields of [`crate::DirsvcConfig`]
//! (`max_sessions_per_principal`, `max_sessions`, `max_locks_per_session`,
//! `max_waiters_per_session`, `max_waiters`, `max_xattrs_per_inode`,
//! `max_placement_bytes_per_call`, `max_promised_bytes_per_principal`).
//! A call past one fails with `DirError::Limit(reason)`, the reason naming
//! the limit and its value; it changes nothing.

use common::rpc::dir::DirError;
use common::NodeId;
use std::fmt;

/// The identity dirsvc counts a caller's resources against (see the module
/// documentation). Opaque: compared and hashed, printed in logs and limit
/// messages, never parsed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(String);

impl Principal {
    /// The principal of calls made by `node` (from its certificate):
    /// `node:<32 hex>`.
    pub fn node(node: NodeId) -> Self {
        Principal(format!("node:{}", node.to_hex()))
    }

    /// The principal of calls that arrive without a certificate (only
    /// `hello` and `join` are answered for them): `anonymous`.
    pub fn anonymous() -> Self {
        Principal("anonymous".into())
    }

    /// The name, as logs and limit messages show it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({})", self.0)
    }
}

/// Default for [`crate::DirsvcConfig::max_sessions_per_principal`]: far
/// above the mounts one machine runs.
pub const DEFAULT_MAX_SESSIONS_PER_PRINCIPAL: usize = 256;

/// Default for [`crate::DirsvcConfig::max_sessions`].
pub const DEFAULT_MAX_SESSIONS: usize = 16_384;

/// Default for [`crate::DirsvcConfig::max_locks_per_session`]: the number
/// of distinct lock ranges one mount may hold at once.
pub const DEFAULT_MAX_LOCKS_PER_SESSION: usize = 65_536;

/// Default for [`crate::DirsvcConfig::max_waiters_per_session`]: calls of
/// one session parked in dirsvc at once (`set_lock` waits and
/// `poll_changes` long polls); a mount uses one poller and one waiter per
/// blocked `F_SETLKW`.
pub const DEFAULT_MAX_WAITERS_PER_SESSION: usize = 1024;

/// Default for [`crate::DirsvcConfig::max_waiters`].
pub const DEFAULT_MAX_WAITERS: usize = 65_536;

/// Default for [`crate::DirsvcConfig::max_xattrs_per_inode`]: more than a
/// kernel `listxattr` buffer (64 KiB) can name.
pub const DEFAULT_MAX_XATTRS_PER_INODE: usize = 8192;

/// Default for [`crate::DirsvcConfig::max_placement_bytes_per_call`]
/// (1 GiB): count × chunk bytes × R of one `placement`; a client asks for
/// one block (at most 4 MiB × R) at a time.
pub const DEFAULT_MAX_PLACEMENT_BYTES_PER_CALL: u64 = 1 << 30;

/// Default for [`crate::DirsvcConfig::max_promised_bytes_per_principal`]
/// (64 GiB): space one caller's placements may hold promised on the peers
/// until they next heartbeat (every 2 s), well above what one client can
/// upload in that time.
pub const DEFAULT_MAX_PROMISED_BYTES_PER_PRINCIPAL: u64 = 64 << 30;

/// A `Limit` error naming what was reached.
pub(crate) fn limit(what: impl fmt::Display) -> DirError {
    DirError::Limit(what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_is_the_node_of_the_certificate() {
        let a = Principal::node(NodeId([1; 16]));
        assert_eq!(a, Principal::node(NodeId([1; 16])));
        assert_ne!(a, Principal::node(NodeId([2; 16])));
        assert_ne!(a, Principal::anonymous());
        assert_eq!(a.to_string(), format!("node:{}", "01".repeat(16)));
    }
}
