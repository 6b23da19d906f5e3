//! Volume membership (admin operations): listing, adding and removing
//! members.
//!
//! - Adding a member re-wraps every key epoch's secret to every member and
//!   the new one (so the new member reads all data, old and new), then
//!   pushes the new wrapped secrets with `add_member`.
//! - Removing a member starts a new key epoch: a fresh secret wrapped to
//!   the remaining members, linked to the previous epoch (so clients trust
//!   it), pushed with `remove_member`. From then on dirsvc refuses newly
//!   stored chunks of older epochs, running mounts re-seal and reload, and
//!   the removed identity can no longer mount. What it could read before
//!   stays readable to it: data of older epochs is not re-encrypted unless
//!   `fs-client reencrypt` runs (see docs/SECURITY.md).
//!
//! Both are compare-and-set on the keyring version: when another admin
//! changed the keyring meanwhile, the keyring is loaded again and the
//! change made again (a few times).

use crate::error::{Error, Result};
use crate::identity::IdentityFile;
use crate::remote::DirClient;
use crate::volume;
use common::keyring;
use common::rpc::dir::{DirError, Keyring, Member};
use common::NodeId;
use std::path::Path;
use std::str::FromStr;
use tracing::{info, warn};

/// How often a keyring change is tried when others change it meanwhile.
const ATTEMPTS: u32 = 3;

/// Parses an age X25519 recipient (`age1…`).
///
/// Errors: [`Error::Key`] naming the string.
pub fn parse_recipient(s: &str) -> Result<Box<dyn age::Recipient + Send>> {
    age::x25519::Recipient::from_str(s)
        .map(|r| Box::new(r) as Box<dyn age::Recipient + Send>)
        .map_err(|e| Error::Key(format!("{s:?} is not an age X25519 recipient (age1…): {e}")))
}

/// Adds member `name` with age recipient `recipient` and client
/// certificate node ids `nodes`, with the admin's identity `id` (a member:
/// it must unwrap every epoch to re-wrap it). Checks the volume against its
/// pin in `pin_dir` first.
///
/// Errors: [`Error::Key`] for a bad recipient, a name or recipient already
/// listed, an identity that is not a member or a keyring that does not
/// verify; `Dir(KeyringChanged)` if others kept changing the keyring;
/// dirsvc's errors (`Invalid` for a bad name).
pub async fn add(
    dir: &DirClient,
    id: &IdentityFile,
    pin_dir: Option<&Path>,
    name: &str,
    recipient: &str,
    nodes: Vec<NodeId>,
) -> Result<Keyring> {
    let new = parse_recipient(recipient)?;
    drop(new);
    let member = Member { name: name.to_string(), recipient: recipient.to_string(), nodes };
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let (info, keys) = volume::open_pinned(dir, id, pin_dir).await?;
        if let Some(m) = info.keyring.members.iter().find(|m| m.name == name || m.recipient == recipient) {
            return Err(Error::Key(format!(
                "volume {} already has member {} with recipient {}",
                info.id.to_hex(),
                m.name,
                m.recipient
            )));
        }
        // Every epoch is re-wrapped to the listed members only: an admin
        // whose key is not listed (a volume created before volumes recorded
        // their recipients) would lock itself out by adding someone else.
        let listed = |k: &String| info.keyring.members.iter().any(|m| &m.recipient == k);
        if !id.public_keys.iter().any(listed) && !id.public_keys.iter().any(|k| k == recipient) {
            return Err(Error::Key(format!(
                "this identity ({}) can open volume {} but is not listed as a member (the volume predates \
                 recorded recipients); add yourself first: `fs-client member add --name NAME --recipient {}`",
                id.describe(),
                info.id.to_hex(),
                id.public_keys.first().map(String::as_str).unwrap_or("age1…")
            )));
        }
        let mut recipients = Vec::with_capacity(info.keyring.members.len() + 1);
        for m in &info.keyring.members {
            recipients.push(parse_recipient(&m.recipient)?);
        }
        recipients.push(parse_recipient(recipient)?);
        let wrapped = keyring::rewrap_all(&keys, &recipients)?;
        let version = info.keyring.version;
        let r = dir
            .call(|c, ctx| {
                let (m, w) = (member.clone(), wrapped.clone());
                async move { c.add_member(ctx, version, m, w).await }
            })
            .await;
        match r {
            Ok(ring) => {
                info!(volume = %info.id, name, epochs = ring.epochs.len(), "member added");
                return Ok(ring);
            }
            Err(e @ Error::Dir(DirError::KeyringChanged { .. })) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Key("the keyring kept changing".into())))
}

/// Removes member `name` with the admin's identity `id` (a member that
/// stays): a new key epoch wrapped to the remaining members, linked to the
/// newest, pushed as a compare-and-set; then the removed member's client
/// certificates are revoked ([`revoke_certificates`]) and the new epoch is
/// pinned. Returns the new keyring, the removed member and the node ids
/// whose certificates are still to be revoked (see
/// [`revoke_certificates`]).
///
/// Errors: [`Error::Key`] for an unknown member, removing the last member
/// or oneself alone, an identity that is not a member, or a keyring that
/// does not verify; `Dir(KeyringChanged)` if others kept changing it;
/// dirsvc's errors.
pub async fn remove(
    dir: &DirClient,
    id: &IdentityFile,
    pin_dir: Option<&Path>,
    name: &str,
) -> Result<(Keyring, Member, Vec<NodeId>)> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let (info, keys) = volume::open_pinned(dir, id, pin_dir).await?;
        let Some(gone) = info.keyring.members.iter().find(|m| m.name == name) else {
            return Err(Error::Key(format!(
                "volume {} has no member named {name:?} (members: {})",
                info.id.to_hex(),
                info.keyring.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        };
        let remaining: Vec<&Member> = info.keyring.members.iter().filter(|m| m.name != name).collect();
        // The new epoch is wrapped to the remaining members only: the admin
        // must be one of them, or it locks itself out.
        if !id.public_keys.iter().any(|k| remaining.iter().any(|m| &m.recipient == k)) {
            return Err(Error::Key(if id.public_keys.contains(&gone.recipient) {
                format!(
                    "{name} is this identity's own member entry; remove it with another member's identity"
                )
            } else {
                format!(
                    "this identity ({}) is not listed as a member of volume {}, so the new key epoch would not \
                     be wrapped to it; add it first with `fs-client member add`",
                    id.describe(),
                    info.id.to_hex()
                )
            }));
        }
        let mut recipients = Vec::with_capacity(remaining.len());
        for m in &remaining {
            recipients.push(parse_recipient(&m.recipient)?);
        }
        let (_secret, epoch) = keyring::next_epoch(&keys, &recipients)?;
        let version = info.keyring.version;
        let r = dir
            .call(|c, ctx| {
                let (n, e) = (name.to_string(), epoch.clone());
                async move { c.remove_member(ctx, version, n, e).await }
            })
            .await;
        match r {
            Ok((ring, removed)) => {
                info!(volume = %info.id, name, epoch = ring.newest_epoch(), "member removed; new key epoch started");
                let unrevoked = revoke_certificates(dir, &removed).await?;
                // Pin the new epoch now, so a dirsvc rolling it back is
                // caught by this client too.
                let new_info = volume::fetch(dir).await?;
                let new_keys = volume::unlock(&new_info, id)?;
                if let Some(p) = pin_dir {
                    crate::pins::check_and_record(p, &crate::pins::Origin::of(dir), &new_info, &new_keys)?;
                }
                return Ok((ring, removed, unrevoked));
            }
            Err(e @ Error::Dir(DirError::KeyringChanged { .. })) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Key("the keyring kept changing".into())))
}

/// Revokes the client certificates of a removed member at dirsvc, by
/// node id ([`crate::admin::revoke`]): dirsvc closes their connections at
/// once and every peer within a heartbeat. Returns the node ids it could
/// not revoke (after trying them all), for the caller to report.
///
/// Errors: none; a failed revocation is logged and returned.
pub async fn revoke_certificates(dir: &DirClient, m: &Member) -> Result<Vec<NodeId>> {
    let mut unrevoked = Vec::new();
    for node in &m.nodes {
        let reason = format!("member {} removed from the volume", m.name);
        if let Err(e) = crate::admin::revoke(dir, *node, &reason).await {
            warn!(member = %m.name, node = %node, error = %e, "could not revoke the removed member's certificate");
            unrevoked.push(*node);
        }
    }
    Ok(unrevoked)
}
