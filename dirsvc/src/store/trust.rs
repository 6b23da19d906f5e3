//! The cluster-trust tables of the store: join tokens and revocations.
//!
//! Join tokens (`J`) and revocations (`R`, with the revocation version
//! under `M`). Each call is one transaction of its own over these keys;
//! they touch no namespace key.

use super::records::{role_from_byte, role_to_byte, JoinTokenRecord, Record, RevokedRecord};
use super::{decode_u64, keys, scan_all, Get, Store};
use crate::error::Error;
use common::rpc::dir::DirError;
use common::rpc::Role;
use common::time::Timestamp;
use common::NodeId;

/// What a refused join is told, whatever the reason (unknown, used,
/// expired or wrong secret), so the answer says nothing about which.
const BAD_TOKEN: &str = "invalid, used or expired join token";

/// Compares two hashes in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Store {
    /// Records a new join token `id` (its secret's hash, role, expiry) and
    /// removes tokens that expired (as many as fit the transaction; the
    /// rest go with the next token).
    ///
    /// Errors: store errors; `Invalid` if the id is taken.
    pub fn add_join_token(&self, id: [u8; 8], rec: &JoinTokenRecord) -> Result<(), Error> {
        let bytes = rec.to_bytes()?;
        let now = Timestamp::now().secs;
        let room = self.max_ops().saturating_sub(1);
        self.write(|w| {
            if w.get(&keys::join_token(&id))?.is_some() {
                return Err(crate::error::invalid("join token id already in use"));
            }
            let mut expired = Vec::new();
            scan_all(w, &keys::family(keys::JOIN_TOKEN), |k, v| {
                if JoinTokenRecord::from_bytes(&v).is_ok_and(|r| r.expires_at < now) {
                    expired.push(keys::parse_join_token(&k)?);
                }
                Ok(expired.len() < room)
            })?;
            for k in expired {
                w.delete(keys::join_token(&k));
            }
            w.put(keys::join_token(&id), bytes.clone());
            Ok(())
        })
    }

    /// Uses join token `id` for `node`: checks that it exists, is unused
    /// and unexpired, and that `secret_hash` matches, then marks it used,
    /// all in one transaction. Returns the role it grants.
    ///
    /// Errors: `Unauthorized` (one message for every reason); store errors.
    pub fn use_join_token(
        &self,
        id: [u8; 8],
        secret_hash: &[u8; 32],
        wanted: Role,
        node: NodeId,
    ) -> Result<Role, Error> {
        let now = Timestamp::now().secs;
        self.write(|w| {
            let rec = match w.get(&keys::join_token(&id))? {
                Some(v) => JoinTokenRecord::from_bytes(&v)?,
                None => return Err(DirError::Unauthorized(BAD_TOKEN.into()).into()),
            };
            if !same(&rec.secret_hash, secret_hash) || rec.used.is_some() || rec.expires_at < now {
                return Err(DirError::Unauthorized(BAD_TOKEN.into()).into());
            }
            let role = role_from_byte(rec.role)?;
            if role != wanted {
                return Err(DirError::Invalid(format!(
                    "this join token grants the {role} role, not {wanted}; the token is not spent"
                ))
                .into());
            }
            let used = JoinTokenRecord { used: Some((now, node.0)), ..rec };
            w.put(keys::join_token(&id), used.to_bytes()?);
            Ok(role)
        })
    }

    /// The role byte stored for `role`, for callers building a
    /// [`JoinTokenRecord`].
    pub fn role_byte(role: Role) -> u8 {
        role_to_byte(role)
    }

    /// Revokes `node` (durably, with `reason`) and returns the new version
    /// of the revocation list. Revoking a revoked node changes nothing and
    /// returns the current version.
    ///
    /// Errors: store errors.
    pub fn revoke(&self, node: NodeId, reason: &str) -> Result<u64, Error> {
        self.write(|w| {
            let current = match w.get(&keys::meta(keys::META_REVOCATIONS))? {
                Some(v) => decode_u64(&v)?,
                None => 0,
            };
            if w.get(&keys::revoked(&node.0))?.is_some() {
                return Ok(current);
            }
            let rec = RevokedRecord { at: Timestamp::now().secs, reason: reason.to_string() };
            w.put(keys::revoked(&node.0), rec.to_bytes()?);
            let next = current + 1;
            w.put(keys::meta(keys::META_REVOCATIONS), next.to_le_bytes().to_vec());
            Ok(next)
        })
    }

    /// The revocation list's version and the revoked nodes.
    ///
    /// Errors: store errors.
    pub fn revocations(&self) -> Result<(u64, Vec<NodeId>), Error> {
        self.read(|t| {
            let version = match t.get(&keys::meta(keys::META_REVOCATIONS))? {
                Some(v) => decode_u64(&v)?,
                None => 0,
            };
            let mut nodes = Vec::new();
            scan_all(t, &keys::family(keys::REVOKED), |k, _| {
                nodes.push(NodeId(keys::parse_id16(&k)?));
                Ok(true)
            })?;
            Ok((version, nodes))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_token_works_once_and_only_with_its_secret_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("d.redb")).unwrap();
        let rec = |expires_at| JoinTokenRecord {
            secret_hash: [1; 32],
            role: Store::role_byte(Role::Peer),
            expires_at,
            used: None,
        };
        s.add_join_token([1; 8], &rec(Timestamp::now().secs + 60)).unwrap();
        assert!(matches!(
            s.use_join_token([1; 8], &[2; 32], Role::Peer, NodeId([5; 16])),
            Err(Error::Dir(DirError::Unauthorized(_)))
        ));
        // Another role is refused and does not spend the token.
        assert!(matches!(
            s.use_join_token([1; 8], &[1; 32], Role::Client, NodeId([5; 16])),
            Err(Error::Dir(DirError::Invalid(_)))
        ));
        assert_eq!(s.use_join_token([1; 8], &[1; 32], Role::Peer, NodeId([5; 16])).unwrap(), Role::Peer);
        assert!(matches!(
            s.use_join_token([1; 8], &[1; 32], Role::Peer, NodeId([6; 16])),
            Err(Error::Dir(DirError::Unauthorized(_)))
        ));
        s.add_join_token([2; 8], &rec(Timestamp::now().secs - 1)).unwrap();
        assert!(matches!(
            s.use_join_token([2; 8], &[1; 32], Role::Peer, NodeId([5; 16])),
            Err(Error::Dir(DirError::Unauthorized(_)))
        ));
        assert!(matches!(
            s.use_join_token([3; 8], &[1; 32], Role::Peer, NodeId([5; 16])),
            Err(Error::Dir(DirError::Unauthorized(_)))
        ));
    }

    #[test]
    fn revocations_are_durable_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.redb");
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(s.revocations().unwrap(), (0, vec![]));
            assert_eq!(s.revoke(NodeId([1; 16]), "lost laptop").unwrap(), 1);
            assert_eq!(s.revoke(NodeId([1; 16]), "again").unwrap(), 1);
            assert_eq!(s.revoke(NodeId([2; 16]), "left").unwrap(), 2);
        }
        let s = Store::open(&path).unwrap();
        let (v, mut nodes) = s.revocations().unwrap();
        nodes.sort();
        assert_eq!((v, nodes), (2, vec![NodeId([1; 16]), NodeId([2; 16])]));
    }
}
