//! The user's age identity file: creating it and reading it safely.

use crate::error::{Error, Result};
use age::secrecy::ExposeSecret;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
    /// The same recipients as text (`age1…`), in file order: what a new
    /// volume records as the keys it is wrapped to, and what error messages
    /// name. Public information.
    pub public_keys: Vec<String>,
    /// The file they were read from.
    pub path: PathBuf,
}

impl IdentityFile {
    /// [`Self::public_keys`] joined with `, `, for messages.
    pub fn describe(&self) -> String {
        self.public_keys.join(", ")
    }
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
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Io(format!("cannot read identity file {}: {e}", path.display())))?;
    parse(path, &bytes)
}

/// The identities in the bytes of an identity file read from `path` (named
/// in errors, and kept as [`IdentityFile::path`]): age's format, as
/// `age-keygen` writes it (one `AGE-SECRET-KEY-1…` per line, `#` comments).
/// Checks nothing about the file itself ([`load`] does).
///
/// Errors: [`Error::Key`] for bytes that are not such a file (not UTF-8, a
/// line that is not an identity) or that hold no identity.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<IdentityFile> {
    let file = age::IdentityFile::from_buffer(bytes)
        .map_err(|e| Error::Key(format!("cannot parse identity file {}: {e}", path.display())))?;
    let recipients =
        file.to_recipients().map_err(|e| Error::Key(format!("identity file {}: {e}", path.display())))?;
    let public_keys =
        public_keys(&file).map_err(|e| Error::Key(format!("identity file {}: {e}", path.display())))?;
    let identities = file
        .into_identities()
        .map_err(|e| Error::Key(format!("identity file {}: {e}", path.display())))?
        .into_iter()
        .map(|i| i as Box<dyn age::Identity>)
        .collect::<Vec<_>>();
    if identities.is_empty() {
        return Err(Error::Key(format!("identity file {} holds no identity", path.display())));
    }
    Ok(IdentityFile { identities, recipients, public_keys, path: path.to_path_buf() })
}

/// The `age1…` recipient of each identity of `file`, in file order (as
/// `age-keygen -y` prints them). Only X25519 identities exist here: age's
/// plugin support is not compiled in, so every identity has a text form.
fn public_keys(file: &age::IdentityFile<age::NoCallbacks>) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    file.write_recipients_file(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8(out).map_err(|e| e.to_string())?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
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
        assert_eq!(f.public_keys, vec![r]);
        assert_eq!(f.path, p);
        assert!(keygen(&p).is_err());
    }

    #[test]
    fn every_identity_of_a_file_has_its_public_key_listed_in_order() {
        // Two keys in one file, as `cat a.txt b.txt > both.txt` makes.
        let dir = tempfile::tempdir().unwrap();
        let (a, b, both) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("both"));
        let (ra, rb) = (keygen(&a).unwrap(), keygen(&b).unwrap());
        let text = std::fs::read_to_string(&a).unwrap() + &std::fs::read_to_string(&b).unwrap();
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&both).unwrap();
        std::fs::write(&both, text).unwrap();
        let f = load(&both).unwrap();
        assert_eq!(f.public_keys, vec![ra.clone(), rb.clone()]);
        assert_eq!(f.describe(), format!("{ra}, {rb}"));
        // The recipient is derived from the secret key, not copied from
        // the `# public key:` comment, which nothing checks.
        let x = age::x25519::Identity::generate();
        let lying = dir.path().join("lying");
        let body = format!("# public key: {rb}\n{}\n", x.to_string().expose_secret());
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&lying).unwrap();
        std::fs::write(&lying, body).unwrap();
        assert_eq!(load(&lying).unwrap().public_keys, vec![x.to_public().to_string()]);
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
