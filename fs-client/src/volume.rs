//! Creating a volume on dirsvc, opening it with the user's identity (its
//! keyring unwrapped and verified, see `common::keyring`), and saying
//! plainly which key a volume needs when the identity at hand is the wrong
//! one, a removed member's, or missing.
//!
//! A volume's key epochs are wrapped (age) to its members, and dirsvc
//! records the members' recipients (`age1…` public keys) next to them. A
//! new key can never open an existing volume, so every path that could
//! replace or bypass the real key (mount, init, keygen into a state
//! directory) asks dirsvc first and names the keys the volume is wrapped
//! to.

use crate::error::{Error, Result};
use crate::identity::{self, IdentityFile};
use crate::pins;
use crate::remote::DirClient;
use common::keyring::{self, VolumeKeys};
use common::keys::unwrap_secret;
use common::rpc::dir::{DirError, Keyring, Member, VolumeInfo};
use common::VolumeId;
use std::path::{Path, PathBuf};

/// The default name of the first member (`fs-client init --name`).
pub const DEFAULT_MEMBER_NAME: &str = "owner";

/// Creates a new volume on dirsvc: key epoch 0 (a random secret wrapped
/// with age to the identity's recipients, its key-check value), block size
/// `block_size` bytes, replication factor `replicas`. Each of the
/// identity's public keys becomes a member: `name`, then `name-2`, … . The
/// volume records them, so a client with the wrong key can be told which
/// one it needs. The root directory is owned by the calling user.
///
/// Errors: `Dir(AlreadyInitialized)` if dirsvc has a volume; `Dir(Invalid)`
/// for a bad block size, R or name; [`Error::Key`] if wrapping fails.
pub async fn init(
    dir: &DirClient,
    id: &IdentityFile,
    block_size: u32,
    replicas: u32,
    name: &str,
) -> Result<VolumeInfo> {
    let (_secret, epoch0) = keyring::first_epoch(&id.recipients)?;
    let members = id
        .public_keys
        .iter()
        .enumerate()
        .map(|(i, r)| Member {
            name: if i == 0 { name.to_string() } else { format!("{name}-{}", i + 1) },
            recipient: r.clone(),
            nodes: Vec::new(),
        })
        .collect();
    let info = VolumeInfo {
        id: VolumeId::random(),
        block_size,
        replicas,
        keyring: Keyring { version: 1, epochs: vec![epoch0], members },
        legacy_layouts: false,
    };
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    dir.call(|c, ctx| {
        let info = info.clone();
        async move { c.init_volume(ctx, info, uid, gid).await }
    })
    .await
}

/// The volume dirsvc holds (its settings and recipients; the secret stays
/// wrapped), or `None` before `init`. Needs no identity.
///
/// Errors: [`Error::Rpc`] if dirsvc cannot be asked; other dirsvc errors.
pub async fn info(dir: &DirClient) -> Result<Option<VolumeInfo>> {
    match dir.call(|c, ctx| async move { c.volume_info(ctx).await }).await {
        Ok(info) => Ok(Some(info)),
        Err(Error::Dir(DirError::NotInitialized)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `the volume <id> exists and is wrapped to <recipient>[, <recipient>…]`
/// (the members' keys), or, for a volume created before volumes recorded
/// their recipients, a sentence saying that the key is not known.
pub fn wrapped_to(info: &VolumeInfo) -> String {
    let recipients = info.keyring.recipients();
    if recipients.is_empty() {
        format!(
            "the volume {} exists and is wrapped to a key dirsvc does not record (the volume was created \
             before volumes recorded their recipients)",
            info.id.to_hex()
        )
    } else {
        format!("the volume {} exists and is wrapped to {}", info.id.to_hex(), recipients.join(", "))
    }
}

/// The explanation for an identity file that does not exist while the
/// volume does: which keys the volume needs, and that the file must be
/// restored (a new key would not open the volume).
pub fn missing_identity_message(info: &VolumeInfo, path: &Path) -> String {
    format!(
        "{}; there is no identity file at {p}; restore {p} from your backup (a new key cannot open this volume)",
        wrapped_to(info),
        p = path.display()
    )
}

/// Fetches the volume's settings and keyring and unlocks it with `id`
/// ([`unlock`]).
///
/// Errors: `Dir(NotInitialized)` before `init` (as [`Error::Key`] saying
/// so); those of [`unlock`].
pub async fn open(dir: &DirClient, id: &IdentityFile) -> Result<(VolumeInfo, VolumeKeys)> {
    let info = fetch(dir).await?;
    let keys = unlock(&info, id)?;
    Ok((info, keys))
}

/// [`open`], then checks the volume against what this client pinned at
/// first use in `pin_dir` and records it there ([`pins::check_and_record`])
/// when `pin_dir` is given.
///
/// Errors: those of [`open`] and [`pins::check_and_record`].
pub async fn open_pinned(
    dir: &DirClient,
    id: &IdentityFile,
    pin_dir: Option<&Path>,
) -> Result<(VolumeInfo, VolumeKeys)> {
    let (info, keys) = open(dir, id).await?;
    if let Some(p) = pin_dir {
        pins::check_and_record(p, &pins::Origin::of(dir), &info, &keys)?;
    }
    Ok((info, keys))
}

/// The volume dirsvc holds, or a [`Error::Key`] saying there is none yet.
///
/// Errors: that, and transport and dirsvc errors.
pub async fn fetch(dir: &DirClient) -> Result<VolumeInfo> {
    dir.call(|c, ctx| async move { c.volume_info(ctx).await }).await.map_err(|e| match e {
        Error::Dir(DirError::NotInitialized) => Error::Key(format!(
            "dirsvc at {} has no volume yet; create one with `fs-client init --dirsvc {} -i IDENTITY`",
            dir.addr(),
            dir.addr()
        )),
        e => e,
    })
}

/// Unwraps every key epoch of `info` with `id` and verifies the keyring
/// (key-check values, links from epoch 0; `common::keyring::open`).
///
/// Errors, all [`Error::Key`]: the identity is not a member of the volume
/// (naming the keys the volume is wrapped to and the identity's own, and
/// saying when it is a removed member's, which opens only older epochs);
/// the keyring does not verify (dirsvc serves epochs no member made).
pub fn unlock(info: &VolumeInfo, id: &IdentityFile) -> Result<VolumeKeys> {
    keyring::open(info.id, &info.keyring, &id.identities, info.legacy_layouts).map_err(|e| match e {
        common::Error::NotMember { epoch, reason } => not_member(info, id, epoch, &reason),
        common::Error::BadKeyring(why) => Error::Key(format!(
            "volume {}: {why}; dirsvc may be serving keys that no member made, so this client does not \
             trust it",
            info.id.to_hex()
        )),
        other => Error::Key(format!("volume {}: {other}", info.id.to_hex())),
    })
}

/// The explanation for an identity that cannot unwrap the newest epoch.
fn not_member(info: &VolumeInfo, id: &IdentityFile, newest: u32, reason: &str) -> Error {
    let was_member = newest > 0
        && info.keyring.epochs.first().is_some_and(|e0| unwrap_secret(&e0.wrapped, &id.identities).is_ok());
    if was_member {
        return Error::Key(format!(
            "this identity ({}) is not a member of volume {} any more: it was removed, and the volume's \
             newest key epoch ({newest}) is wrapped to {} only",
            id.describe(),
            info.id.to_hex(),
            info.keyring.recipients().join(", ")
        ));
    }
    let listed = id.public_keys.iter().any(|k| info.keyring.members.iter().any(|m| &m.recipient == k));
    if listed {
        // One of our keys is a member, yet age found no stanza it opens:
        // the wrapped secret itself is damaged.
        Error::Key(format!(
            "this identity ({}) is one of the keys volume {} is wrapped to, but it cannot unwrap the \
             volume's key epoch {newest} stored in dirsvc: {reason}",
            id.describe(),
            info.id.to_hex()
        ))
    } else {
        Error::Key(format!(
            "{}; this identity is {}; restore {} from your backup",
            wrapped_to(info),
            id.describe(),
            id.path.display()
        ))
    }
}

/// Loads the identity file at `path` for use with the volume on `dirsvc`.
/// When the file does not exist, asks dirsvc whether a volume does: if so,
/// the error says which keys it is wrapped to and that the file must be
/// restored, not regenerated. dirsvc is contacted only then.
///
/// Errors: as [`identity::load`]; [`Error::Key`] with that explanation for
/// a missing file when dirsvc has a volume.
pub async fn load_identity(dir: &DirClient, path: &Path) -> Result<IdentityFile> {
    let err = match identity::load(path) {
        Ok(id) => return Ok(id),
        Err(e) => e,
    };
    if path.symlink_metadata().is_ok() {
        return Err(err);
    }
    // The file is missing: say so with the volume's keys, if it has one.
    match info(dir).await {
        Ok(Some(info)) => Err(Error::Key(missing_identity_message(&info, path))),
        _ => Err(err),
    }
}

/// Where p2pfs keeps the bound address of dirsvc in a state directory made
/// by `scripts/up.sh` (relative to the state directory).
pub const STATE_DIRSVC_ADDR: &str = "run/dirsvc.addr";

/// Where `scripts/up.sh` keeps dirsvc's database in a state directory.
pub const STATE_DIRSVC_DB: &str = "dirsvc/dirsvc.redb";

/// Checks that a new identity may be written to `path`. When `path`'s
/// directory is a p2pfs state directory (it holds [`STATE_DIRSVC_ADDR`] or
/// [`STATE_DIRSVC_DB`]) whose dirsvc has a volume, a new key there would
/// stand where the volume's real key belongs and open nothing: refused,
/// naming the keys the volume is wrapped to. If that dirsvc cannot be
/// reached but its database exists, refused too, since the database may
/// hold a volume. Anywhere else, and for a state directory whose dirsvc has
/// no volume yet, this allows the key. An existing `path` is left to
/// [`identity::keygen`], which never overwrites.
///
/// Errors: [`Error::Key`] with the explanation above.
pub async fn check_new_identity_path(
    path: &Path,
    tls: Option<std::sync::Arc<common::tls::Tls>>,
) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        return Ok(());
    }
    let state: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let addr_file = state.join(STATE_DIRSVC_ADDR);
    let db = state.join(STATE_DIRSVC_DB);
    if let Ok(addr) = std::fs::read_to_string(&addr_file) {
        let addr = addr.trim();
        let tls = tls.or_else(|| {
            ["admin-tls", "client-tls"].iter().find_map(|d| crate::admin::load_tls(&state.join(d)).ok())
        });
        let dir = match tls {
            Some(t) => DirClient::connect(addr, t).await.ok(),
            None => None,
        };
        if let Some(dir) = dir {
            return match info(&dir).await {
                Ok(Some(info)) => Err(Error::Key(format!(
                    "{}; {} is the state directory of that volume (dirsvc {addr}), and a new key there \
                     cannot open it: restore {} from your backup",
                    wrapped_to(&info),
                    state.display(),
                    path.display()
                ))),
                Ok(None) => Ok(()),
                Err(e) => Err(Error::Key(format!(
                    "{} is a p2pfs state directory and its dirsvc at {addr} cannot say whether it holds a \
                     volume ({e}); not writing a new key there",
                    state.display()
                ))),
            };
        }
    }
    if db.exists() {
        return Err(Error::Key(format!(
            "{} is a p2pfs state directory whose dirsvc database ({}) may hold a volume, and its dirsvc \
             is not running to say which key that volume is wrapped to; a new key cannot open an \
             existing volume: restore {} from your backup (or start the cluster, then run keygen again \
             if `fs-client volume` says there is no volume yet)",
            state.display(),
            db.display(),
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-process dirsvc in a tempdir laid out like up.sh's state
    /// directory (database at dirsvc/dirsvc.redb, address in
    /// run/dirsvc.addr).
    async fn state_dir() -> (tempfile::TempDir, dirsvc::DirsvcHandle, DirClient) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dirsvc")).unwrap();
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        let d = dirsvc::spawn(dirsvc::DirsvcConfig {
            listen: "127.0.0.1:0".into(),
            db_path: dir.path().join(STATE_DIRSVC_DB),
            tls: Some(testkit::pki().node(common::rpc::Role::Dirsvc)),
            ..Default::default()
        })
        .await
        .unwrap();
        std::fs::write(dir.path().join(STATE_DIRSVC_ADDR), d.addr.to_string()).unwrap();
        testkit::pki().write_node(common::rpc::Role::Admin, &dir.path().join("admin-tls"));
        let client = DirClient::connect(&d.addr.to_string(), testkit::pki().node(common::rpc::Role::Client))
            .await
            .unwrap();
        (dir, d, client)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_identity_is_told_which_keys_the_volume_needs() {
        let (dir, d, client) = state_dir().await;
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        let (a, b) = (keys.join("a"), keys.join("b"));
        let (ra, rb) = (identity::keygen(&a).unwrap(), identity::keygen(&b).unwrap());
        let both = keys.join("both");
        let text = std::fs::read_to_string(&a).unwrap() + &std::fs::read_to_string(&b).unwrap();
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&both).unwrap();
        }
        std::fs::write(&both, text).unwrap();
        let info = init(&client, &identity::load(&both).unwrap(), 4096, 1, "me").await.unwrap();
        assert_eq!(info.keyring.recipients(), vec![ra.clone(), rb.clone()]);
        let names: Vec<String> = info.keyring.members.iter().map(|m| m.name.clone()).collect();
        assert_eq!(names, vec!["me".to_string(), "me-2".to_string()]);
        assert_eq!(
            self::info(&client).await.unwrap().unwrap().keyring.recipients(),
            vec![ra.clone(), rb.clone()]
        );

        // Each member key opens it.
        open(&client, &identity::load(&a).unwrap()).await.unwrap();
        open(&client, &identity::load(&b).unwrap()).await.unwrap();

        let other = keys.join("other");
        let ro = identity::keygen(&other).unwrap();
        let e = open(&client, &identity::load(&other).unwrap()).await.unwrap_err().to_string();
        let want = format!(
            "the volume {} exists and is wrapped to {ra}, {rb}; this identity is {ro}; restore {} from your backup",
            info.id.to_hex(),
            other.display()
        );
        assert_eq!(e, want);

        // A missing file: the same explanation, before any key is read.
        let gone = keys.join("gone");
        let e = load_identity(&client, &gone).await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("the volume {} exists and is wrapped to {ra}, {rb};", info.id.to_hex())),
            "{e}"
        );
        assert!(e.contains(&format!("restore {} from your backup", gone.display())), "{e}");
        d.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_identity_without_a_volume_is_the_plain_error() {
        let (dir, d, client) = state_dir().await;
        let e = load_identity(&client, &dir.path().join("nope")).await.unwrap_err().to_string();
        assert!(e.contains("cannot read identity file"), "{e}");
        d.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keygen_into_a_state_directory_with_a_volume_is_refused() {
        let (dir, d, client) = state_dir().await;
        let target = dir.path().join("identity.txt");
        // No volume yet: the first key of a new cluster is fine.
        check_new_identity_path(&target, None).await.unwrap();
        let r = identity::keygen(&target).unwrap();
        init(&client, &identity::load(&target).unwrap(), 4096, 1, DEFAULT_MEMBER_NAME).await.unwrap();
        std::fs::remove_file(&target).unwrap();

        let e = check_new_identity_path(&target, None).await.unwrap_err().to_string();
        assert!(e.contains(&format!("exists and is wrapped to {r};")), "{e}");
        assert!(e.contains(&format!("restore {} from your backup", target.display())), "{e}");

        // dirsvc stopped: the database alone is reason enough.
        d.shutdown().await;
        let e = check_new_identity_path(&target, None).await.unwrap_err().to_string();
        assert!(e.contains("may hold a volume"), "{e}");
        assert!(e.contains(&format!("restore {} from your backup", target.display())), "{e}");

        // Anywhere else keygen works as before.
        let elsewhere = tempfile::tempdir().unwrap();
        check_new_identity_path(&elsewhere.path().join("id.txt"), None).await.unwrap();
    }

    #[test]
    fn a_volume_without_recorded_recipients_says_the_key_is_unknown() {
        let info = VolumeInfo {
            id: VolumeId([7; 16]),
            block_size: 4096,
            replicas: 1,
            keyring: Keyring::default(),
            legacy_layouts: true,
        };
        let m = wrapped_to(&info);
        assert!(m.starts_with(&format!("the volume {} exists", info.id.to_hex())), "{m}");
        assert!(m.contains("does not record"), "{m}");
    }
}
