//! Typed identifiers shared by every process.
//!
//! Each id prints in a short form (the first 5 bytes as hex, or the number)
//! in `Display` and `Debug`, which is what logs use; [`ChunkId::to_hex`] and
//! friends give the full form used in file names and on the command line.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Defines a newtype over a fixed-size byte array with hex forms.
macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = $len;

            /// The full id as lowercase hex (`2 × LEN` characters).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 5 bytes as hex: enough to tell ids apart in logs.
            pub fn fmt_short(&self) -> String {
                hex::encode(&self.0[..5])
            }

            /// A fresh random id (used for peers and volumes, never chunks).
            pub fn random() -> Self {
                let mut b = [0u8; $len];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
                Self(b)
            }

            /// The id as raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.fmt_short())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.fmt_short())
            }
        }

        impl FromStr for $name {
            type Err = hex::FromHexError;

            /// Parses the full hex form (`2 × LEN` hex digits).
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut b = [0u8; $len];
                hex::decode_to_slice(s.trim(), &mut b)?;
                Ok(Self(b))
            }
        }
    };
}

byte_id!(
    /// Identity of a stored chunk: the BLAKE3 hash (32 bytes) of the chunk's
    /// *stored, encrypted* bytes. Anyone holding the bytes can verify them
    /// against the id without any key; nothing about the plaintext leaks.
    ChunkId,
    32
);

byte_id!(
    /// Identity of a storage peer (16 random bytes, created by peerd on first
    /// start and kept in its data directory). Used for addressing and in the
    /// chunk index; it is not a cryptographic key.
    PeerId,
    16
);

byte_id!(
    /// Identity of a volume (16 random bytes chosen at `fs-client init`).
    VolumeId,
    16
);

byte_id!(
    /// Identity of a node of the cluster (dirsvc, peer, client or admin):
    /// the first 16 bytes of BLAKE3 (derive-key mode) of its TLS public key
    /// (SubjectPublicKeyInfo, DER), so no other key can claim it. Named in
    /// the node's certificate (see `common::pki`). A peer's [`PeerId`] is
    /// its node id.
    NodeId,
    16
);

impl From<NodeId> for PeerId {
    fn from(n: NodeId) -> PeerId {
        PeerId(n.0)
    }
}

impl From<PeerId> for NodeId {
    fn from(p: PeerId) -> NodeId {
        NodeId(p.0)
    }
}

impl ChunkId {
    /// The id of `bytes`: their BLAKE3 hash.
    pub fn of(bytes: &[u8]) -> Self {
        ChunkId(*blake3::hash(bytes).as_bytes())
    }
}

/// An inode number, allocated by dirsvc. The root directory is
/// [`InodeId::ROOT`] (1); 0 is never a valid inode.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InodeId(pub u64);

impl InodeId {
    /// The root directory of every volume.
    pub const ROOT: InodeId = InodeId(1);
}

impl fmt::Display for InodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for InodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ino:{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_hex_round_trips_and_prints_short() {
        let id = ChunkId::of(b"hello");
        assert_eq!(id.to_hex().len(), 64);
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert_eq!(format!("{id}"), id.to_hex()[..10]);
        assert!("zz".parse::<ChunkId>().is_err());
    }
}
