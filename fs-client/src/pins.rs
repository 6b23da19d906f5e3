//! First-use pins of volumes: what this client saw of a volume's keys the
//! first time, so a directory service cannot later substitute the keyring
//! or roll it back.
//!
//! The keyring's links (`common::keyring`) stop a directory service from
//! adding an epoch whose secret it knows, but not from serving a whole
//! keyring of its own making (every epoch its own secret, wrapped to the
//! member's public key) or from dropping the newest epochs (so writers go
//! back to an epoch a removed member knows). A pin catches both: it holds
//! epoch 0's key-check value (computed from the unwrapped secret), the
//! newest epoch seen with its key-check value, and whether the volume
//! accepted layout entries without MACs. A later open must show the same
//! epoch 0, at least that epoch with the same check, and no new
//! acceptance of MAC-less entries.
//!
//! One text file per volume, `<pin dir>/<volume id hex>.pin`, mode 0600 in
//! a 0700 directory, replaced atomically (temporary file, fsync, rename):
//!
//! ```text
//! # p2pfs volume pin, written at first use; see docs/SECURITY.md
//! volume <32 hex>
//! check0 <64 hex>
//! epoch <decimal> <64 hex>
//! legacy_layouts <0|1>
//! ```

use crate::error::{Error, Result};
use common::keyring::VolumeKeys;
use common::rpc::dir::VolumeInfo;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tracing::info;

/// What a pin file records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// Epoch 0's key-check value.
    pub check0: [u8; 32],
    /// The newest epoch seen.
    pub epoch: u32,
    /// Its key-check value.
    pub check: [u8; 32],
    /// Whether the volume accepted layout entries without MACs then.
    pub legacy_layouts: bool,
}

/// The default pin directory: `$XDG_STATE_HOME/p2pfs/pins`, else
/// `$HOME/.local/state/p2pfs/pins`, else `/var/lib/p2pfs/pins`.
pub fn default_dir() -> PathBuf {
    let state =
        std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| Path::new(&h).join(".local/state"))
        });
    match state {
        Some(s) => s.join("p2pfs").join("pins"),
        None => PathBuf::from("/var/lib/p2pfs/pins"),
    }
}

/// The pin file of `info`'s volume in `dir`.
pub fn path_for(dir: &Path, info: &VolumeInfo) -> PathBuf {
    dir.join(format!("{}.pin", info.id.to_hex()))
}

/// The pin of what `keys` show now.
fn current(info: &VolumeInfo, keys: &VolumeKeys) -> Pin {
    let newest = keys.newest();
    Pin {
        check0: keys.check(0).unwrap_or([0; 32]),
        epoch: newest,
        check: keys.check(newest).unwrap_or([0; 32]),
        legacy_layouts: info.legacy_layouts,
    }
}

/// Checks the verified keys of `info`'s volume against its pin in `dir`
/// and records what is newer (a later epoch, MAC-less entries no longer
/// accepted); writes the pin at first use.
///
/// Errors: [`Error::Key`] when the volume disagrees with its pin (another
/// epoch 0, an older newest epoch, a changed check, MAC-less entries
/// accepted again), naming the pin file; [`Error::Io`] when the pin cannot
/// be read or written.
pub fn check_and_record(dir: &Path, info: &VolumeInfo, keys: &VolumeKeys) -> Result<()> {
    let path = path_for(dir, info);
    let now = current(info, keys);
    let pinned = match std::fs::read_to_string(&path) {
        Ok(text) => Some(parse(&text).ok_or_else(|| {
            Error::Io(format!(
                "pin file {} is not a p2pfs volume pin; remove it to pin again",
                path.display()
            ))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::Io(format!("cannot read pin file {}: {e}", path.display()))),
    };
    let Some(pin) = pinned else {
        write(&path, info, &now)?;
        info!(volume = %info.id, epoch = now.epoch, file = %path.display(), "volume pinned at first use");
        return Ok(());
    };
    let refuse = |what: String| {
        Error::Key(format!(
            "volume {}: {what}, unlike when this client first used it (pinned in {}); dirsvc may be \
             substituting or rolling back the volume's keys, so this client does not trust it. If the \
             volume was really recreated, delete that file",
            info.id.to_hex(),
            path.display()
        ))
    };
    if pin.check0 != now.check0 {
        return Err(refuse("key epoch 0 is another key".into()));
    }
    if now.epoch < pin.epoch {
        return Err(refuse(format!(
            "the newest key epoch is {}, older than epoch {} seen before",
            now.epoch, pin.epoch
        )));
    }
    if keys.check(pin.epoch) != Some(pin.check) {
        return Err(refuse(format!("key epoch {} is another key", pin.epoch)));
    }
    if now.legacy_layouts && !pin.legacy_layouts {
        return Err(refuse("it now accepts layout entries without MACs".into()));
    }
    if now != pin {
        write(&path, info, &now)?;
    }
    Ok(())
}

/// Parses a pin file's text.
fn parse(text: &str) -> Option<Pin> {
    let mut check0 = None;
    let mut epoch = None;
    let mut legacy = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut w = line.split_whitespace();
        match (w.next()?, w.next()) {
            ("volume", Some(_)) => {}
            ("check0", Some(h)) => check0 = Some(hex32(h)?),
            ("epoch", Some(n)) => epoch = Some((n.parse::<u32>().ok()?, hex32(w.next()?)?)),
            ("legacy_layouts", Some(b)) => legacy = Some(b == "1"),
            _ => return None,
        }
    }
    let (epoch, check) = epoch?;
    Some(Pin { check0: check0?, epoch, check, legacy_layouts: legacy? })
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(s, &mut b).ok()?;
    Some(b)
}

/// Writes `pin` to `path` atomically (mode 0600 in a 0700 directory).
fn write(path: &Path, info: &VolumeInfo, pin: &Pin) -> Result<()> {
    let io =
        |what: &str, p: &Path, e: std::io::Error| Error::Io(format!("cannot {what} {}: {e}", p.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io("create", dir, e))?;
    let text = format!(
        "# p2pfs volume pin, written at first use; see docs/SECURITY.md\nvolume {}\ncheck0 {}\nepoch {} {}\nlegacy_layouts {}\n",
        info.id.to_hex(),
        hex::encode(pin.check0),
        pin.epoch,
        hex::encode(pin.check),
        u8::from(pin.legacy_layouts)
    );
    let tmp = dir.join(format!(".{}.{}.tmp", info.id.to_hex(), std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("create", &tmp, e))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| io("write", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io("rename", &tmp, e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("fsync", dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::keys::VolumeSecret;
    use common::rpc::dir::Keyring;
    use common::VolumeId;

    fn info(legacy: bool) -> VolumeInfo {
        VolumeInfo {
            id: VolumeId([1; 16]),
            block_size: 4096,
            replicas: 1,
            keyring: Keyring::default(),
            legacy_layouts: legacy,
        }
    }

    #[test]
    fn a_pin_is_written_at_first_use_and_refuses_another_epoch_0_or_mac_less_entries() {
        let dir = tempfile::tempdir().unwrap();
        let keys = VolumeKeys::single(VolumeId([1; 16]), VolumeSecret::from_bytes([3; 32]));
        check_and_record(dir.path(), &info(false), &keys).unwrap();
        let file = path_for(dir.path(), &info(false));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("epoch 0 "), "{text}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        // The same keys again: fine, nothing to change.
        check_and_record(dir.path(), &info(false), &keys).unwrap();
        // Another epoch 0 (a substituted keyring): refused.
        let other = VolumeKeys::single(VolumeId([1; 16]), VolumeSecret::from_bytes([4; 32]));
        let e = check_and_record(dir.path(), &info(false), &other).unwrap_err().to_string();
        assert!(e.contains("key epoch 0 is another key") && e.contains(&file.display().to_string()), "{e}");
        // MAC-less entries accepted again: refused.
        let e = check_and_record(dir.path(), &info(true), &keys).unwrap_err().to_string();
        assert!(e.contains("without MACs"), "{e}");
        // A garbled pin is an error, not a silent re-pin.
        std::fs::write(&file, "nonsense").unwrap();
        assert!(check_and_record(dir.path(), &info(false), &keys).is_err());
    }

    #[test]
    fn pins_round_trip() {
        let pin = Pin { check0: [1; 32], epoch: 7, check: [2; 32], legacy_layouts: true };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pin");
        write(&path, &info(true), &pin).unwrap();
        assert_eq!(parse(&std::fs::read_to_string(&path).unwrap()), Some(pin));
    }
}
