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

/// Joins the cluster of the dirsvc at `dirsvc` (`host:port`, or the
/// instances of one cluster separated by commas: the call goes to the
/// leader, following `NotLeader` and trying the next address when one
/// cannot be reached) as a node of role `role` with the join token `token`
/// (its text form). Returns the new node's files (key, certificate, CA),
/// not yet saved.
///
/// Errors: [`JoinError`]; `Refused` (and the token is not spent) when the
/// token grants another role; `Connect` when no instance could be reached
/// (the last failure).
pub async fn join(dirsvc: &str, token: &str, role: Role) -> Result<NodeFiles, JoinError> {
    let token = JoinToken::from_str(token)?;
    let addrs = crate::net::DirAddrs::parse(dirsvc).map_err(JoinError::Connect)?;
    let (key_pem, csr) = pki::new_key_and_csr()?;
    // Every address once, plus a redirect or two per address.
    let mut attempts = 3 * addrs.len();
    let grant = loop {
        attempts -= 1;
        let addr = addrs.current();
        let answer = match joiner_dir_client(&addr, token.ca).await {
            Ok(client) => {
                client.join(deadline(JOIN_DEADLINE), token.id, token.secret, role, csr.clone()).await
            }
            Err(e) => {
                addrs.failed(&addr);
                if attempts == 0 {
                    return Err(JoinError::Connect(e.to_string()));
                }
                continue;
            }
        };
        match answer {
            Ok(Err(crate::rpc::dir::DirError::NotLeader { leader })) if attempts > 0 => match leader {
                Some(l) if l != addr => addrs.redirect(&l),
                _ => {
                    addrs.failed(&addr);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            Ok(r) => break r.map_err(|e| JoinError::Refused(e.to_string()))?,
            Err(e) if attempts > 0 => {
                tracing::debug!(%addr, error = %e, "join call failed; trying the next dirsvc");
                addrs.failed(&addr);
            }
            Err(e) => return Err(JoinError::Connect(e.to_string())),
        }
    };
    let ca_der = pki::certs_from_pem(&grant.ca_pem)?.swap_remove(0);
    if pki::fingerprint(&ca_der) != token.ca {
        return Err(PkiError::Invalid("dirsvc sent a CA certificate other than the token's".into()).into());
    }
    // The certificate must be for the key just made.
    Ok(NodeFiles::from_pem(key_pem, grant.cert_pem, grant.ca_pem)?)
}
