//! Joining a cluster with a join token: what a new peer or client on
//! another host does once to get its certificate.
//!
//! The token (`common::pki::JoinToken`) pins the cluster CA by its
//! fingerprint, so the joiner authenticates dirsvc before it has any
//! certificate (`common::tls::joiner_config`); it makes a key and sends a
//! certificate signing request; dirsvc spends the token and answers with a
//! certificate for that key with the role the token grants, and the CA's
//! certificate, which must be the pinned one.

use crate::pki::{self, JoinToken, NodeFiles, PkiError};
use crate::rpc::Role;
use crate::transport::{deadline, joiner_dir_client};
use std::str::FromStr;
use std::time::Duration;

/// Deadline of the join call.
const JOIN_DEADLINE: Duration = Duration::from_secs(30);

/// Errors of joining.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The token does not parse, or what dirsvc sent is not right.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// dirsvc could not be reached or authenticated (a wrong CA in the
    /// token is a TLS failure here).
    #[error("cannot reach dirsvc: {0}")]
    Connect(String),
    /// dirsvc refused the join (bad, used or expired token, …).
    #[error("dirsvc refused the join: {0}")]
    Refused(String),
}

/// Joins the cluster of the dirsvc at `dirsvc` (`host:port`) as a node of
/// role `role` with the join token `token` (its text form). Returns the
/// new node's files (key, certificate, CA), not yet saved.
///
/// Errors: [`JoinError`]; `Refused` (and the token is not spent) when the
/// token grants another role.
pub async fn join(dirsvc: &str, token: &str, role: Role) -> Result<NodeFiles, JoinError> {
    let token = JoinToken::from_str(token)?;
    let (key_pem, csr) = pki::new_key_and_csr()?;
    let client = joiner_dir_client(dirsvc, token.ca).await.map_err(|e| JoinError::Connect(e.to_string()))?;
    let grant = client
        .join(deadline(JOIN_DEADLINE), token.id, token.secret, role, csr)
        .await
        .map_err(|e| JoinError::Connect(e.to_string()))?
        .map_err(|e| JoinError::Refused(e.to_string()))?;
    let ca_der = pki::certs_from_pem(&grant.ca_pem)?.swap_remove(0);
    if pki::fingerprint(&ca_der) != token.ca {
        return Err(PkiError::Invalid("dirsvc sent a CA certificate other than the token's".into()).into());
    }
    // The certificate must be for the key just made.
    Ok(NodeFiles::from_pem(key_pem, grant.cert_pem, grant.ca_pem)?)
}
