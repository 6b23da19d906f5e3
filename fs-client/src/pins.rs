//! First-use pins of volumes, as SSH's known_hosts: what this client saw of
//! a volume the first time (which cluster served it, and its keys), so a
//! directory service cannot later substitute the cluster, the volume, the
//! keyring, or roll the keyring back.
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
//! A pin also records the dirsvc address the volume was first opened
//! through and the fingerprint (BLAKE3, `common::pki::fingerprint`) of the
//! cluster CA that certified it: the same volume under another CA is
//! refused, and so is another volume at an address where this client
//! pinned a different one (a directory service serving a volume of its own
//! making, whose secret it knows, in place of the user's).
//!
//! One text file per volume, `<pin dir>/<volume id hex>.pin`, mode 0600 in
//! a 0700 directory, replaced atomically (temporary file, fsync, rename):
//!
//! ```text
//! # p2pfs volume pin, written at first use; see docs/SECURITY.md
//! volume <32 hex>
//! dirsvc <address as given to the client>
//! ca <64 hex: BLAKE3 of the cluster CA certificate (DER)>
//! check0 <64 hex>
//! epoch <decimal> <64 hex>
//! legacy_layouts <0|1>
//! ```

use crate::error::{Error, Result};
use crate::remote::DirClient;
use common::keyring::VolumeKeys;
use common::rpc::dir::VolumeInfo;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use tracing::info;

/// Which cluster a volume was opened through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The dirsvc address as the client was given it (`host:port`).
    pub dirsvc: String,
    /// The fingerprint (BLAKE3, `common::pki::fingerprint`) of the cluster
    /// CA certificate (DER) the client trusts.
    pub ca: [u8; 32],
}

impl Origin {
    /// The origin of volumes opened through `dir`.
    pub fn of(dir: &DirClient) -> Self {
        Origin { dirsvc: dir.addr().to_string(), ca: dir.tls().ca_fingerprint() }
    }
}

/// What a pin file records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The volume.
    pub volume: common::VolumeId,
    /// Where it was first opened; kept from the first use.
    pub origin: Origin,
    /// Epoch 0's key-check value.
    pub check0: [u8; 32],
    /// The newest epoch seen.
    pub epoch: u32,
    /// Its key-check value.
    pub check: [u8; 32],
    /// Whether the volume accepted layout entries without MACs then.
    pub legacy_layouts: bool,
}

/// The default pin directory: `$P2PFS_STATE/pins` (a local cluster's state
/// directory, as `scripts/up.sh` makes), else `$XDG_STATE_HOME/p2pfs/pins`,
/// else `$HOME/.local/state/p2pfs/pins`, else `/var/lib/p2pfs/pins`.
pub fn default_dir() -> PathBuf {
    if let Some(s) = std::env::var_os("P2PFS_STATE").filter(|v| !v.is_empty()) {
        return PathBuf::from(s).join("pins");
    }
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
fn current(origin: &Origin, info: &VolumeInfo, keys: &VolumeKeys) -> Pin {
    let newest = keys.newest();
    Pin {
        volume: info.id,
        origin: origin.clone(),
        check0: keys.check(0).unwrap_or([0; 32]),
        epoch: newest,
        check: keys.check(newest).unwrap_or([0; 32]),
        legacy_layouts: info.legacy_layouts,
    }
}

/// Reads the pin file at `path`, `None` if there is none.
///
/// Errors: [`Error::Io`] if it cannot be read or is not a pin.
fn read(path: &Path) -> Result<Option<Pin>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(parse(&text).ok_or_else(|| {
            Error::Io(format!(
                "pin file {} is not a p2pfs volume pin; remove it to pin again",
                path.display()
            ))
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io(format!("cannot read pin file {}: {e}", path.display()))),
    }
}

/// The pin, in `dir`, of another volume first opened through `dirsvc`.
fn other_at(dir: &Path, dirsvc: &str, volume: common::VolumeId) -> Option<(PathBuf, Pin)> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "pin")).find_map(|p| {
        let pin = read(&p).ok()??;
        (pin.volume != volume && pin.origin.dirsvc == dirsvc).then_some((p, pin))
    })
}

/// Checks the verified keys of `info`'s volume, opened through `origin`,
/// against its pin in `dir` and records what is newer (a later epoch,
/// MAC-less entries no longer accepted); writes the pin at first use.
///
/// Errors: [`Error::Key`] when the volume disagrees with its pin (another
/// cluster CA, another epoch 0, an older newest epoch, a changed check,
/// MAC-less entries accepted again) or, at first use, when another volume
/// was pinned at the same dirsvc address, naming the pin file;
/// [`Error::Io`] when a pin cannot be read or written.
pub fn check_and_record(dir: &Path, origin: &Origin, info: &VolumeInfo, keys: &VolumeKeys) -> Result<()> {
    let path = path_for(dir, info);
    let now = current(origin, info, keys);
    let Some(pin) = read(&path)? else {
        if let Some((other, pin)) = other_at(dir, &origin.dirsvc, info.id) {
            return Err(Error::Key(format!(
                "dirsvc at {} served volume {} before and now serves volume {}: this client does not \
                 trust it (a directory service may be serving a volume of its own making). If the \
                 cluster was really recreated, delete {}",
                origin.dirsvc,
                pin.volume.to_hex(),
                info.id.to_hex(),
                other.display()
            )));
        }
        write(&path, &now)?;
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
    if pin.origin.ca != now.origin.ca {
        return Err(refuse(format!(
            "it is served under the cluster CA {}, not {}",
            &hex::encode(now.origin.ca)[..16],
            &hex::encode(pin.origin.ca)[..16]
        )));
    }
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
    // The first address stays: the same volume may be reached by others.
    let now = Pin { origin: pin.origin.clone(), ..now };
    if now != pin {
        write(&path, &now)?;
    }
    Ok(())
}

/// Parses the text of a pin file (format in the module documentation), as
/// a client reads it before opening a volume: `None` if it is not a pin (a
/// line it does not know, a field missing or malformed). Blank lines and
/// `#` comments are skipped; of a field given twice, the last counts.
/// Allocates no more than the text's length.
pub fn parse(text: &str) -> Option<Pin> {
    let mut volume = None;
    let mut dirsvc = None;
    let mut ca = None;
    let mut check0 = None;
    let mut epoch = None;
    let mut legacy = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut w = line.split_whitespace();
        match (w.next()?, w.next()) {
            ("volume", Some(v)) => volume = Some(v.parse().ok()?),
            ("dirsvc", Some(a)) => dirsvc = Some(a.to_string()),
            ("ca", Some(h)) => ca = Some(hex32(h)?),
            ("check0", Some(h)) => check0 = Some(hex32(h)?),
            ("epoch", Some(n)) => epoch = Some((n.parse::<u32>().ok()?, hex32(w.next()?)?)),
            ("legacy_layouts", Some(b)) => legacy = Some(b == "1"),
            _ => return None,
        }
    }
    let (epoch, check) = epoch?;
    Some(Pin {
        volume: volume?,
        origin: Origin { dirsvc: dirsvc?, ca: ca? },
        check0: check0?,
        epoch,
        check,
        legacy_layouts: legacy?,
    })
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(s, &mut b).ok()?;
    Some(b)
}

/// The text of a pin file recording `pin` (format in the module
/// documentation), as [`parse`] reads it back.
pub fn to_text(pin: &Pin) -> String {
    format!(
        "# p2pfs volume pin, written at first use; see docs/SECURITY.md\nvolume {}\ndirsvc {}\nca {}\ncheck0 {}\nepoch {} {}\nlegacy_layouts {}\n",
        pin.volume.to_hex(),
        pin.origin.dirsvc,
        hex::encode(pin.origin.ca),
        hex::encode(pin.check0),
        pin.epoch,
        hex::encode(pin.check),
        u8::from(pin.legacy_layouts)
    )
}

/// Writes `pin` to `path` atomically (mode 0600 in a 0700 directory).
fn write(path: &Path, pin: &Pin) -> Result<()> {
    let io =
        |what: &str, p: &Path, e: std::io::Error| Error::Io(format!("cannot {what} {}: {e}", p.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io("create", dir, e))?;
    common::fsutil::write_atomic(path, to_text(pin).as_bytes(), 0o600).map_err(|e| Error::Io(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::keys::VolumeSecret;
    use common::rpc::dir::Keyring;
    use common::VolumeId;

    fn origin(addr: &str, ca: u8) -> Origin {
        Origin { dirsvc: addr.into(), ca: [ca; 32] }
    }

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
        let o = origin("h:1", 3);
        check_and_record(dir.path(), &o, &info(false), &keys).unwrap();
        let file = path_for(dir.path(), &info(false));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("epoch 0 "), "{text}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        // The same keys again: fine, nothing to change.
        check_and_record(dir.path(), &o, &info(false), &keys).unwrap();
        // Another epoch 0 (a substituted keyring): refused.
        let other = VolumeKeys::single(VolumeId([1; 16]), VolumeSecret::from_bytes([4; 32]));
        let e = check_and_record(dir.path(), &o, &info(false), &other).unwrap_err().to_string();
        assert!(e.contains("key epoch 0 is another key") && e.contains(&file.display().to_string()), "{e}");
        // MAC-less entries accepted again: refused.
        let e = check_and_record(dir.path(), &o, &info(true), &keys).unwrap_err().to_string();
        assert!(e.contains("without MACs"), "{e}");
        // The same volume under another cluster CA: refused.
        let e = check_and_record(dir.path(), &origin("h:1", 4), &info(false), &keys).unwrap_err().to_string();
        assert!(e.contains("cluster CA"), "{e}");
        // Reached through another address: fine, and the first address stays.
        check_and_record(dir.path(), &origin("h:2", 3), &info(false), &keys).unwrap();
        assert!(std::fs::read_to_string(&file).unwrap().contains("dirsvc h:1\n"));
        // Another volume at the pinned address: refused, naming the pin.
        let mut other_volume = info(false);
        other_volume.id = VolumeId([2; 16]);
        let e = check_and_record(dir.path(), &o, &other_volume, &keys).unwrap_err().to_string();
        assert!(e.contains("served volume") && e.contains(&file.display().to_string()), "{e}");
        // ...but at another address it is simply pinned.
        check_and_record(dir.path(), &origin("h:3", 3), &other_volume, &keys).unwrap();
        // A garbled pin is an error, not a silent re-pin.
        std::fs::write(&file, "nonsense").unwrap();
        assert!(check_and_record(dir.path(), &o, &info(false), &keys).is_err());
    }

    #[test]
    fn pins_round_trip() {
        let pin = Pin {
            volume: VolumeId([1; 16]),
            origin: origin("[::1]:7000", 9),
            check0: [1; 32],
            epoch: 7,
            check: [2; 32],
            legacy_layouts: true,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pin");
        write(&path, &pin).unwrap();
        assert_eq!(parse(&std::fs::read_to_string(&path).unwrap()), Some(pin));
    }
}
