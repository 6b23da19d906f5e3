//! Extended attributes: sealed here, stored by dirsvc.
//!
//! Names are sealed deterministically with the volume's AES-SIV name key and
//! the inode as associated data ([`common::keys::NameKey::seal_xattr`]), so
//! dirsvc can find one by its sealed form; values are sealed with
//! XChaCha20-Poly1305 under their own key (of the newest key epoch; the
//! header names it), bound to the inode and the sealed name
//! ([`common::codec::seal_bytes_ad`]), so dirsvc cannot move a value to
//! another name or file: such a value is EIO, with an error log line. Names
//! stay under epoch 0's name key (dirsvc finds them by their sealed form).
//!
//! Namespaces as on Linux: `user.`, `trusted.` and `security.` are stored;
//! `system.` (POSIX ACLs) and unknown prefixes are `EOPNOTSUPP`. The kernel
//! checks permissions before calling (read/write permission for `user.`,
//! CAP_SYS_ADMIN for `trusted.`); listing hides `trusted.` names from
//! everyone but root, as ext4 does. Limits as Linux: names up to 255 bytes
//! (`ERANGE` past it), values up to 64 KiB (`E2BIG`).
//!
//! One name is virtual: `user.p2pfs.durability` is computed on `getxattr`
//! ([`super::durability`]), never listed, and `EPERM` to set or remove.

use super::durability::DURABILITY_XATTR;
use super::Fs;
use crate::error::{Error, Result};
use common::codec;
use common::rpc::dir::{xattr_flags, Attr, Mutation};
use common::InodeId;
use tracing::warn;

/// Longest name in bytes (`XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;

/// Largest value in bytes (`XATTR_SIZE_MAX`).
pub const XATTR_SIZE_MAX: usize = 64 << 10;

/// Namespaces that are stored.
const STORED_PREFIXES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];

/// Checks `name` against the limits and namespaces.
fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > XATTR_NAME_MAX {
        return Err(Error::Errno(libc::ERANGE, format!("attribute name of {} bytes", name.len())));
    }
    let known = STORED_PREFIXES.iter().any(|p| name.starts_with(p) && name.len() > p.len());
    if !known {
        return Err(Error::Errno(
            libc::EOPNOTSUPP,
            format!("attribute namespace of {:?} is not supported", String::from_utf8_lossy(name)),
        ));
    }
    Ok(())
}

/// `EPERM` for the read-only virtual attribute [`DURABILITY_XATTR`].
fn refuse_virtual(name: &[u8]) -> Result<()> {
    if name == DURABILITY_XATTR {
        return Err(Error::Errno(
            libc::EPERM,
            "user.p2pfs.durability is a read-only report computed by the mount".into(),
        ));
    }
    Ok(())
}

impl Fs {
    /// Associated data binding a sealed value to its inode and sealed name.
    pub(super) fn xattr_ad(ino: InodeId, sealed_name: &[u8]) -> Vec<u8> {
        let mut ad = Vec::with_capacity(8 + sealed_name.len());
        ad.extend_from_slice(&ino.0.to_le_bytes());
        ad.extend_from_slice(sealed_name);
        ad
    }

    /// The value of attribute `name` of `ino`; for
    /// [`DURABILITY_XATTR`], the durability report ([`Fs::durability`]).
    ///
    /// Errors: `ENODATA` if it has no such attribute, `EOPNOTSUPP` for an
    /// unsupported namespace, `ERANGE` for a name over 255 bytes, `EIO` if
    /// the stored value does not open.
    pub async fn getxattr(&self, ino: InodeId, name: &[u8]) -> Result<Vec<u8>> {
        if name == DURABILITY_XATTR {
            return self.durability(ino).await;
        }
        check_name(name)?;
        if self.known.lacks(ino, name) {
            return Err(Error::Errno(libc::ENODATA, "no such attribute (known to this mount)".into()));
        }
        let generation = self.known.generation();
        let sealed_name = self.name_key.seal_xattr(ino, name);
        let sealed = self
            .dir
            .call(|c, ctx| {
                let n = sealed_name.clone();
                async move { c.getxattr(ctx, ino, n).await }
            })
            .await
            .inspect_err(|e| {
                if e.errno() == libc::ENODATA {
                    self.known.record_absent(ino, name, generation);
                }
            })?;
        let bad = |why: String| {
            tracing::error!(ino = %ino, path = %self.path_of(ino), reason = %why, "extended attribute value does not open as this attribute's: dirsvc moved or altered it; refusing it (EIO)");
            Error::Integrity(format!("attribute value of inode {ino}: {why}"))
        };
        let epoch = codec::epoch_of(&sealed).map_err(|e| bad(e.to_string()))?;
        let keys = self.keys_for(epoch).await?;
        let key = &keys.epoch(epoch).ok_or_else(|| bad(format!("no key epoch {epoch}")))?.xattr_value;
        codec::open_bytes_ad(key, &sealed, &Self::xattr_ad(ino, &sealed_name)).map_err(|e| bad(e.to_string()))
    }

    /// The names of `ino`'s attributes, each followed by a NUL (the
    /// `listxattr(2)` format). `trusted.` names are listed only for `uid` 0.
    /// A name that does not open with this volume's key is skipped and
    /// logged.
    ///
    /// Errors: `ENOENT`, transport errors.
    pub async fn listxattr(&self, ino: InodeId, uid: u32) -> Result<Vec<u8>> {
        let generation = self.known.generation();
        let sealed = self.dir.call(|c, ctx| async move { c.listxattr(ctx, ino).await }).await?;
        if sealed.is_empty() {
            self.known.record_bare(ino, generation);
        }
        let mut names: Vec<Vec<u8>> = Vec::with_capacity(sealed.len());
        for s in sealed {
            match self.name_key.open_xattr(ino, &s) {
                Ok(n) if uid != 0 && n.starts_with(b"trusted.") => {}
                // Virtual; one stored by a client before it was reserved
                // is hidden (and shadowed by getxattr).
                Ok(n) if n == DURABILITY_XATTR => {}
                Ok(n) => names.push(n),
                Err(_) => warn!(ino = %ino, "an attribute name does not open with the volume key; skipped"),
            }
        }
        names.sort();
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    /// Sets attribute `name` of `ino` to `value`; `flags` as `setxattr(2)`
    /// (`XATTR_CREATE`, `XATTR_REPLACE`). Returns the new attributes (ctime
    /// changed).
    ///
    /// Errors: `EEXIST` (CREATE and it exists), `ENODATA` (REPLACE and it
    /// does not), `E2BIG` for a value over 64 KiB, `ENOSPC` when the inode's
    /// attributes would pass dirsvc's per-inode limit, `EOPNOTSUPP`,
    /// `ERANGE`, `EINVAL` for unknown flags.
    pub async fn setxattr(&self, ino: InodeId, name: &[u8], value: &[u8], flags: i32) -> Result<Attr> {
        refuse_virtual(name)?;
        check_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(Error::Errno(libc::E2BIG, format!("attribute value of {} bytes", value.len())));
        }
        let mut wire = 0;
        if flags & libc::XATTR_CREATE != 0 {
            wire |= xattr_flags::CREATE;
        }
        if flags & libc::XATTR_REPLACE != 0 {
            wire |= xattr_flags::REPLACE;
        }
        if flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            return Err(Error::Errno(libc::EINVAL, format!("unknown setxattr flags {flags:#x}")));
        }
        let sealed_name = self.name_key.seal_xattr(ino, name);
        let keys = self.keys();
        let sealed_value = codec::seal_bytes_ad(
            &keys.newest_keys().xattr_value,
            keys.newest(),
            value,
            XATTR_SIZE_MAX,
            &Self::xattr_ad(ino, &sealed_name),
        )?;
        let op = Mutation::SetXattr { ino, name: sealed_name, value: sealed_value, flags: wire };
        self.known.forget(ino);
        self.dir.mutate_attr(op).await
    }

    /// Removes attribute `name` of `ino`. Returns the new attributes.
    ///
    /// Errors: `ENODATA` if there is none, `EOPNOTSUPP`, `ERANGE`.
    pub async fn removexattr(&self, ino: InodeId, name: &[u8]) -> Result<Attr> {
        refuse_virtual(name)?;
        check_name(name)?;
        let sealed_name = self.name_key.seal_xattr(ino, name);
        self.known.forget(ino);
        self.dir.mutate_attr(Mutation::RemoveXattr { ino, name: sealed_name }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn names_outside_the_stored_namespaces_are_not_supported() {
        assert!(check_name(b"user.a").is_ok());
        assert!(check_name(b"trusted.overlay.opaque").is_ok());
        assert!(check_name(b"security.capability").is_ok());
        for bad in [&b"system.posix_acl_access"[..], b"os2.x", b"user.", b"user"] {
            assert_eq!(check_name(bad).unwrap_err().errno(), libc::EOPNOTSUPP, "{bad:?}");
        }
    }

    #[test]
    pub(super) fn a_name_over_255_bytes_is_erange() {
        let mut n = b"user.".to_vec();
        n.resize(256, b'x');
        assert_eq!(check_name(&n).unwrap_err().errno(), libc::ERANGE);
        n.truncate(255);
        assert!(check_name(&n).is_ok());
    }
}
