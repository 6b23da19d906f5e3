//! Volume pinning, as SSH's known_hosts: the first time this client opens
//! a volume it records which cluster served it and a check value of its
//! key; later, a different cluster CA, another volume at the same dirsvc,
//! or a substituted volume secret is refused with a clear error.
//!
//! The file is `known_volumes` in the client's TLS directory, one line per
//! volume: `<dirsvc address> <volume id> <CA fingerprint> <key check>`,
//! hex, separated by single spaces; `#` starts a comment. The key check is
//! a keyed BLAKE3 hash of a fixed string under the volume secret
//! ([`key_check`]): it proves which secret was seen without revealing it.
//! A dirsvc that hands this client a volume secret of its own making
//! (wrapped to the client's public key, which is public) is caught here,
//! after the first use.

use crate::error::{Error, Result};
use common::keys::VolumeSecret;
use common::VolumeId;
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the pins, in the TLS directory.
pub const KNOWN_VOLUMES: &str = "known_volumes";

const KEY_CHECK_CONTEXT: &str = "p2pfs 2026-12-06 volume key check value v1";

/// The key check value of a volume secret (32 bytes).
pub fn key_check(secret: &VolumeSecret) -> [u8; 32] {
    let key = secret.chunk_key();
    blake3::derive_key(KEY_CHECK_CONTEXT, key.as_bytes())
}

/// One pinned volume.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pin {
    dirsvc: String,
    volume: VolumeId,
    ca: [u8; 32],
    check: [u8; 32],
}

fn parse_line(line: &str) -> Option<Pin> {
    let mut f = line.split(' ');
    let dirsvc = f.next()?.to_string();
    let volume: VolumeId = f.next()?.parse().ok()?;
    let mut ca = [0u8; 32];
    hex::decode_to_slice(f.next()?, &mut ca).ok()?;
    let mut check = [0u8; 32];
    hex::decode_to_slice(f.next()?, &mut check).ok()?;
    Some(Pin { dirsvc, volume, ca, check })
}

/// Checks the volume `volume` with secret `secret`, served by dirsvc at
/// `dirsvc` under the CA with fingerprint `ca`, against the pins in
/// `tls_dir/known_volumes`, and pins it if it is new. Returns whether it
/// was pinned just now.
///
/// Errors: [`Error::Key`] when a pin disagrees (another CA for this volume,
/// another volume at this dirsvc, another key check), naming both and the
/// file; [`Error::Io`] if the file cannot be read or written.
pub fn check_and_pin(
    tls_dir: &Path,
    dirsvc: &str,
    volume: VolumeId,
    secret: &VolumeSecret,
    ca: [u8; 32],
) -> Result<bool> {
    let path: PathBuf = tls_dir.join(KNOWN_VOLUMES);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::Io(format!("cannot read {}: {e}", path.display()))),
    };
    let check = key_check(secret);
    let pins: Vec<Pin> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_line)
        .collect();
    let refuse = |what: String| {
        Err(Error::Key(format!(
            "{what}: refusing to use it (a substituted cluster or volume). If the change is intended, remove the line from {}",
            path.display()
        )))
    };
    for p in &pins {
        if p.volume == volume {
            if p.ca != ca {
                return refuse(format!(
                    "volume {} was pinned to the cluster CA {}, but dirsvc at {dirsvc} presents CA {}",
                    volume.to_hex(),
                    hex::encode(p.ca),
                    hex::encode(ca)
                ));
            }
            if p.check != check {
                return refuse(format!(
                    "volume {} was pinned with key check {}, but the secret dirsvc gave now checks as {} (its secret was replaced)",
                    volume.to_hex(),
                    &hex::encode(p.check)[..16],
                    &hex::encode(check)[..16]
                ));
            }
            return Ok(false);
        }
        if p.dirsvc == dirsvc {
            return refuse(format!(
                "dirsvc at {dirsvc} served volume {} before and now serves volume {}",
                p.volume.to_hex(),
                volume.to_hex()
            ));
        }
    }
    let line = format!("{dirsvc} {} {} {}\n", volume.to_hex(), hex::encode(ca), hex::encode(check));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_is_pinned_on_first_use_and_substitutions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = VolumeSecret::from_bytes([1; 32]);
        let v = VolumeId([7; 16]);
        assert!(check_and_pin(dir.path(), "h:1", v, &s, [3; 32]).unwrap());
        assert!(!check_and_pin(dir.path(), "h:1", v, &s, [3; 32]).unwrap());
        // Another CA, another secret, another volume at the same dirsvc.
        assert!(check_and_pin(dir.path(), "h:1", v, &s, [4; 32]).is_err());
        assert!(check_and_pin(dir.path(), "h:1", v, &VolumeSecret::from_bytes([2; 32]), [3; 32]).is_err());
        let e = check_and_pin(dir.path(), "h:1", VolumeId([8; 16]), &s, [3; 32]).unwrap_err().to_string();
        assert!(e.contains("known_volumes"), "{e}");
        // The same volume reached through another address is fine.
        assert!(!check_and_pin(dir.path(), "h:2", v, &s, [3; 32]).unwrap());
    }
}
