//! The user's age identity file: creating it and reading it safely.

use crate::error::{Error, Result};
use age::secrecy::ExposeSecret;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes a new X25519 age identity to `path` (created with mode 0600; an
/// existing file is never overwritten) and returns its public recipient
/// (`age1…`). The file is the standard format `age-keygen` writes.
///
/// Errors: [`Error::Io`] if the file exists or cannot be written.
pub fn keygen(path: &Path) -> Result<String> {
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Io(format!("cannot create identity file {}: {e}", path.display())))?;
    let created = common::time::Timestamp::now().secs;
    writeln!(f, "# created: {created} (unix seconds) by fs-client keygen")?;
    writeln!(f, "# public key: {recipient}")?;
    writeln!(f, "{}", id.to_string().expose_secret())?;
    f.sync_all()?;
    Ok(recipient)
}

/// The identities and recipients read from one identity file.
pub struct IdentityFile {
    /// Identities that can unwrap a volume secret.
    pub identities: Vec<Box<dyn age::Identity>>,
    /// Their public recipients, to wrap a new volume secret to.
    pub recipients: Vec<Box<dyn age::Recipient + Send>>,
}

impl std::fmt::Debug for IdentityFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityFile(..)")
    }
}

/// Reads an age identity file. Refuses a file that group or others can read
/// (mode & 0o077 != 0), since it holds the key to every volume it unlocks.
///
/// Errors: [`Error::Key`] for a readable-by-others file, a file with no
/// identity, or a parse failure; [`Error::Io`] if it cannot be read.
pub fn load(path: &Path) -> Result<IdentityFile> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::Io(format!("cannot read identity file {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::Key(format!("identity file {} is not a regular file", path.display())));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Key(format!(
            "identity file {} is readable by other users (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    let file = age::IdentityFile::from_file(path.to_string_lossy().into_owned())
        .map_err(|e| Error::Key(format!("cannot parse identity file {}: {e}", path.display())))?;
    let recipients =
        file.to_recipients().map_err(|e| Error::Key(format!("identity file {}: {e}", path.display())))?;
    let identities = file
        .into_identities()
        .map_err(|e| Error::Key(format!("identity file {}: {e}", path.display())))?
        .into_iter()
        .map(|i| i as Box<dyn age::Identity>)
        .collect::<Vec<_>>();
    if identities.is_empty() {
        return Err(Error::Key(format!("identity file {} holds no identity", path.display())));
    }
    Ok(IdentityFile { identities, recipients })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_file_that_loads_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id.txt");
        let r = keygen(&p).unwrap();
        assert!(r.starts_with("age1"));
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let f = load(&p).unwrap();
        assert_eq!(f.identities.len(), 1);
        assert!(keygen(&p).is_err());
    }

    #[test]
    fn a_world_readable_identity_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id.txt");
        keygen(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("readable by other users"), "{e}");
    }
}
