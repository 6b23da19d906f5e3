//! Cluster identity and administration from the command line: the CA,
//! certificates, joining with a token, join tokens, revocation.
//!
//! `ca init` and `ca issue` work offline on the CA's files (the operator's
//! machine, or `scripts/up.sh`); `join` turns a join token into this
//! node's certificate; `token create` and `revoke` ask dirsvc and need an
//! admin certificate.

use crate::error::{Error, Result};
use crate::remote::DirClient;
use common::pki::{self, Ca, NodeFiles};
use common::rpc::Role;
use common::tls::Tls;
use common::NodeId;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The TLS directory of this client: `explicit` (`--tls-dir` or
/// `P2PFS_TLS_DIR`), else `$P2PFS_STATE/<role>-tls` when `P2PFS_STATE` is
/// set (what `scripts/up.sh` makes: `client-tls` for the mount,
/// `admin-tls` for the commands; the commands use `client-tls` when there
/// is no admin certificate, as on a host that joined with a client token),
/// else `$XDG_CONFIG_HOME/p2pfs/tls` or `~/.config/p2pfs/tls`.
pub fn tls_dir(explicit: Option<PathBuf>, role: Role) -> PathBuf {
    if let Some(d) = explicit {
        return d;
    }
    if let Some(state) = std::env::var_os("P2PFS_STATE").filter(|s| !s.is_empty()) {
        let state = Path::new(&state);
        let dir = state.join(format!("{}-tls", role.as_str()));
        let client = state.join(format!("{}-tls", Role::Client.as_str()));
        if role == Role::Admin && !NodeFiles::exist(&dir) && NodeFiles::exist(&client) {
            return client;
        }
        return dir;
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    config.join("p2pfs").join("tls")
}

/// Loads this client's TLS identity from `dir`.
///
/// Errors: [`Error::Key`] naming the directory and what to do.
pub fn load_tls(dir: &Path) -> Result<Arc<Tls>> {
    Tls::load(dir).map(Arc::new).map_err(|e| {
        Error::Key(format!(
            "cannot use the TLS identity in {}: {e} (join with `P2PFS_JOIN_TOKEN=… fs-client join`, or point --tls-dir at a directory with node.key, node.crt and ca.crt)",
            dir.display()
        ))
    })
}

/// Creates a new cluster CA in `dir` (`ca.crt`, `ca.key` with mode 0600;
/// never overwrites). Returns its fingerprint in hex.
///
/// Errors: [`Error::Key`].
pub fn ca_init(dir: &Path, name: &str) -> Result<String> {
    let ca = Ca::create(name).map_err(|e| Error::Key(e.to_string()))?;
    ca.save(dir).map_err(|e| Error::Key(e.to_string()))?;
    Ok(hex::encode(ca.fingerprint()))
}

/// Makes a key and a `role` certificate valid for `validity` with the CA in
/// `ca_dir`, written to `out` (`node.key`, `node.crt`, `ca.crt`). Returns
/// the new node's id.
///
/// Errors: [`Error::Key`].
pub fn ca_issue(ca_dir: &Path, role: Role, out: &Path, validity: Duration) -> Result<NodeId> {
    if NodeFiles::exist(out) {
        return Err(Error::Key(format!("{} already holds a certificate; not replacing it", out.display())));
    }
    let ca = Ca::load(ca_dir).map_err(|e| Error::Key(format!("cluster CA in {}: {e}", ca_dir.display())))?;
    let files = ca.new_node(role, validity).map_err(|e| Error::Key(e.to_string()))?;
    files.save(out).map_err(|e| Error::Key(e.to_string()))?;
    Ok(files.node)
}

/// Joins the cluster of the dirsvc at `dirsvc` as a node of role `role`
/// with join token `token` and writes this node's files to `out`. Returns
/// the node id and its role.
///
/// Errors: [`Error::Key`] if `out` already holds a certificate or the join
/// fails (bad, used or expired token; a token for another role, which is
/// not spent; a dirsvc that is not the token's cluster).
pub async fn join(dirsvc: &str, token: &str, role: Role, out: &Path) -> Result<(NodeId, Role)> {
    if NodeFiles::exist(out) {
        return Err(Error::Key(format!("{} already holds a certificate; not replacing it", out.display())));
    }
    let files =
        common::join::join(dirsvc, token, role).await.map_err(|e| Error::Key(format!("join failed: {e}")))?;
    files.save(out).map_err(|e| Error::Key(e.to_string()))?;
    Ok((files.node, files.role))
}

/// Asks dirsvc for a join token granting `role`, valid for `ttl`.
///
/// Errors: dirsvc's (`Unauthorized` without an admin certificate).
pub async fn create_token(dir: &DirClient, role: Role, ttl: Duration) -> Result<String> {
    let secs = ttl.as_secs();
    dir.call(|c, ctx| async move { c.create_join_token(ctx, role, secs).await }).await
}

/// Revokes `node` at dirsvc, giving `reason`.
///
/// Errors: dirsvc's (`Unauthorized` without an admin certificate).
pub async fn revoke(dir: &DirClient, node: NodeId, reason: &str) -> Result<()> {
    let reason = reason.to_string();
    dir.call(|c, ctx| {
        let r = reason.clone();
        async move { c.revoke(ctx, node, r).await }
    })
    .await
}

/// Renews this client's certificate through dirsvc if less than a third
/// of its validity is left: the new one is written to `tls_dir` and used
/// from the next handshake on. Returns whether it renewed.
///
/// Errors: dirsvc's; [`Error::Key`] if the new certificate cannot be saved
/// or used.
pub async fn renew_if_due(dir: &DirClient, tls_dir: &Path) -> Result<bool> {
    if !pki::needs_renewal(dir.tls().me().not_after) {
        return Ok(false);
    }
    let pem = dir.call(|c, ctx| async move { c.renew_certificate(ctx).await }).await?;
    NodeFiles::save_cert(tls_dir, &pem).map_err(|e| Error::Key(e.to_string()))?;
    dir.tls().set_cert(&pem).map_err(|e| Error::Key(e.to_string()))?;
    Ok(true)
}

/// Parses a duration like `90s`, `15m`, `2h` or `7d` (a bare number is
/// seconds).
///
/// Errors: [`Error::Errno`] (EINVAL) for anything else.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| Error::Errno(libc::EINVAL, format!("bad duration {s:?}")))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(Error::Errno(libc::EINVAL, format!("bad duration {s:?} (use s, m, h or d)"))),
    };
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

/// How long a certificate made by `ca issue` is valid by default.
pub const DEFAULT_VALIDITY: Duration = pki::NODE_CERT_VALIDITY;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
