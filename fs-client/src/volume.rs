//! Creating a volume on dirsvc and opening it with the user's identity.

use crate::error::{Error, Result};
use crate::identity::IdentityFile;
use crate::remote::DirClient;
use common::keys::{unwrap_secret, wrap_secret, VolumeSecret};
use common::rpc::dir::{DirError, VolumeInfo};
use common::VolumeId;

/// Creates a new volume on dirsvc: a random volume secret wrapped with age
/// to the identity's recipients, block size `block_size` bytes, replication
/// factor `replicas`. The root directory is owned by the calling user.
///
/// Errors: `Dir(AlreadyInitialized)` if dirsvc has a volume; `Dir(Invalid)`
/// for a bad block size or R; [`Error::Key`] if wrapping fails.
pub async fn init(dir: &DirClient, id: &IdentityFile, block_size: u32, replicas: u32) -> Result<VolumeInfo> {
    let secret = VolumeSecret::generate();
    let wrapped = wrap_secret(&secret, &id.recipients)?;
    let info = VolumeInfo {
        id: VolumeId::random(),
        block_size,
        replicas,
        wrapped_secret: wrapped,
        recipients: vec![],
    };
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    dir.call(|c, ctx| {
        let info = info.clone();
        async move { c.init_volume(ctx, info, uid, gid).await }
    })
    .await
}

/// Fetches the volume's settings and unwraps its secret with `id`.
///
/// Errors: `Dir(NotInitialized)` before `init`; [`Error::Key`] if the
/// identity is not a member of the volume.
pub async fn open(dir: &DirClient, id: &IdentityFile) -> Result<(VolumeInfo, VolumeSecret)> {
    let info = dir.call(|c, ctx| async move { c.volume_info(ctx).await }).await.map_err(|e| match e {
        Error::Dir(DirError::NotInitialized) => Error::Key(format!(
            "dirsvc at {} has no volume yet; create one with `fs-client init --dirsvc {} -i IDENTITY`",
            dir.addr(),
            dir.addr()
        )),
        e => e,
    })?;
    let secret = unwrap_secret(&info.wrapped_secret, &id.identities)
        .map_err(|e| Error::Key(format!("this identity cannot open volume {}: {e}", info.id.to_hex())))?;
    Ok((info, secret))
}
