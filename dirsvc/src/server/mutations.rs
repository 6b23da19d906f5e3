//! Mutations: one [`Mutation`] applied to the store (once per request id)
//! and its changes recorded in the change feed, plus the checks a layout
//! commit makes first. Runs inside one short store call
//! (`Shared::short`); the RPC handlers in the parent module call it.

use crate::error::{invalid, Error};
use crate::shared::Shared;
use crate::store::{Once, RequestKey};
use common::rpc::dir::{Change, CommitLayout, DirError, FileKind, Mutated, Mutation, SessionId};
use common::InodeId;
use tracing::debug;

/// Refuses a commit whose newly stored chunks (entries with replicas)
/// were last known held `gc_grace` or longer ago: garbage collection may
/// have deleted them as orphans and their tombstones may have expired
/// (after twice the grace), when the store's tombstone check could no
/// longer refuse them. The client asks the replicas (`has`) and commits
/// again with a fresh `held_ms`.
///
/// Errors: `UploadUnverified`.
pub(super) fn check_held(sh: &Shared, commit: &CommitLayout) -> Result<(), DirError> {
    let limit_ms = u64::try_from(sh.config.gc_grace.as_millis()).unwrap_or(u64::MAX);
    let stores_new = commit.blocks.iter().any(|(_, c)| c.as_ref().is_some_and(|c| !c.replicas.is_empty()));
    if stores_new && commit.held_ms >= limit_ms {
        return Err(DirError::UploadUnverified { limit_ms });
    }
    Ok(())
}

/// Most entries one `commit_layout` may carry here: the store's limit,
/// or the configured one if lower.
pub(super) fn commit_limit(sh: &Shared) -> usize {
    let engine = sh.store.max_commit_entries();
    sh.config.max_commit_entries.map_or(engine, |c| c.min(engine))
}

/// Applies `op` (once per `req`) and records its changes from `origin`
/// when it was applied now. Blocking.
pub(super) fn apply(
    sh: &Shared,
    origin: Option<SessionId>,
    req: Option<RequestKey>,
    op: Mutation,
) -> Result<Mutated, Error> {
    let store = &sh.store;
    match op {
        Mutation::Mkdir { parent, name, perm, uid, gid } => {
            match store.mkdir_once(req, parent, &name, perm, uid, gid)? {
                Once::Fresh(attr) => {
                    sh.changes.record_from(origin, entry_changes(parent, &name, attr.ino));
                    Ok(Mutated::Attr(attr))
                }
                Once::Replayed(a) => Ok(a?),
            }
        }
        Mutation::Create { parent, name, new } => match store.create_once(req, parent, &name, &new)? {
            Once::Fresh(attr) => {
                sh.changes.record_from(origin, entry_changes(parent, &name, attr.ino));
                Ok(Mutated::Attr(attr))
            }
            Once::Replayed(a) => Ok(a?),
        },
        Mutation::CreateOpen { session, parent, name, new } => {
            if new.kind != FileKind::File {
                return Err(invalid(format!(
                    "create_open of a {:?}: only regular files are opened",
                    new.kind
                )));
            }
            let attr = match store.create_once(req, parent, &name, &new)? {
                Once::Fresh(attr) => {
                    sh.changes.record_from(origin, entry_changes(parent, &name, attr.ino));
                    attr
                }
                Once::Replayed(a) => a?.attr()?,
            };
            sh.sessions.open_file(store, session, attr.ino)?;
            Ok(Mutated::Attr(attr))
        }
        Mutation::Symlink { session, parent, name, new } => {
            let recorded = || req.map(|r| store.request_answer(r)).transpose().map(Option::flatten);
            if let Some(a) = recorded()? {
                return Ok(a?);
            }
            if let Err(e) = sh.sessions.take_reserved(session, new.ino) {
                // A first attempt may have used the number meanwhile.
                return match recorded()? {
                    Some(a) => Ok(a?),
                    None => Err(e),
                };
            }
            let made =
                store.symlink_at_once(req, parent, &name, new.ino, &new.target, new.size, new.uid, new.gid);
            match made {
                Ok(Once::Fresh(attr)) => {
                    sh.changes.record_from(origin, entry_changes(parent, &name, attr.ino));
                    Ok(Mutated::Attr(attr))
                }
                Ok(Once::Replayed(a)) => {
                    sh.sessions.give_back(session, new.ino);
                    Ok(a?)
                }
                // The number exists: it is spent.
                Err(e @ Error::Dir(DirError::NotReserved(_))) => Err(e),
                Err(e) => {
                    sh.sessions.give_back(session, new.ino);
                    Err(e)
                }
            }
        }
        Mutation::Link { ino, new_parent, new_name } => {
            match store.link_once(req, ino, new_parent, &new_name)? {
                Once::Fresh(attr) => {
                    sh.changes.record_from(origin, entry_changes(new_parent, &new_name, ino));
                    Ok(Mutated::Attr(attr))
                }
                Once::Replayed(a) => Ok(a?),
            }
        }
        Mutation::Unlink { parent, name } => {
            match sh.sessions.with_keep(|keep| store.unlink_once(req, parent, &name, keep))? {
                Once::Fresh(removed) => {
                    if removed.orphaned {
                        debug!(ino = %removed.ino, "unlinked: kept as an orphan");
                        sh.sessions.linger(removed.ino);
                    }
                    sh.changes.record_from(
                        origin,
                        [
                            Change { ino: removed.ino, entry: Some((parent, name)) },
                            Change { ino: parent, entry: None },
                        ],
                    );
                    Ok(Mutated::Done)
                }
                Once::Replayed(a) => Ok(a?),
            }
        }
        Mutation::Rmdir { parent, name } => match store.rmdir_once(req, parent, &name)? {
            Once::Fresh(ino) => {
                sh.changes.record_from(
                    origin,
                    [Change { ino, entry: Some((parent, name)) }, Change { ino: parent, entry: None }],
                );
                Ok(Mutated::Done)
            }
            Once::Replayed(a) => Ok(a?),
        },
        Mutation::Rename { parent, name, new_parent, new_name, flags } => {
            let done = sh.sessions.with_keep(|keep| {
                store.rename_once(req, parent, &name, new_parent, &new_name, flags, keep)
            })?;
            match done {
                Once::Fresh(renamed) => {
                    if let (true, Some(replaced)) = (renamed.orphaned, renamed.replaced) {
                        sh.sessions.linger(replaced);
                    }
                    let mut changes = vec![
                        Change { ino: renamed.moved, entry: Some((parent, name)) },
                        Change { ino: renamed.moved, entry: Some((new_parent, new_name)) },
                        Change { ino: parent, entry: None },
                    ];
                    if new_parent != parent {
                        changes.push(Change { ino: new_parent, entry: None });
                    }
                    if let Some(replaced) = renamed.replaced {
                        changes.push(Change { ino: replaced, entry: None });
                    }
                    sh.changes.record_from(origin, changes);
                    Ok(Mutated::Ino(renamed.moved))
                }
                Once::Replayed(a) => Ok(a?),
            }
        }
        Mutation::SetXattr { ino, name, value, flags } => {
            match store.setxattr_once(req, ino, &name, &value, flags, sh.config.max_xattrs_per_inode)? {
                Once::Fresh(attr) => {
                    sh.changes.record_from(origin, ino_change(ino));
                    Ok(Mutated::Attr(attr))
                }
                Once::Replayed(a) => Ok(a?),
            }
        }
        Mutation::RemoveXattr { ino, name } => match store.removexattr_once(req, ino, &name)? {
            Once::Fresh(attr) => {
                sh.changes.record_from(origin, ino_change(ino));
                Ok(Mutated::Attr(attr))
            }
            Once::Replayed(a) => Ok(a?),
        },
    }
}

/// The changes of a new entry `(parent, name)` naming `ino` (create, mkdir,
/// symlink, link): the entry and inode, and the parent's attributes.
fn entry_changes(parent: InodeId, name: &[u8], ino: InodeId) -> [Change; 2] {
    [Change { ino, entry: Some((parent, name.to_vec())) }, Change { ino: parent, entry: None }]
}

/// The change of the attributes or content of `ino`.
pub(super) fn ino_change(ino: InodeId) -> [Change; 1] {
    [Change { ino, entry: None }]
}
