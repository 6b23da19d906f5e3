//! Key epochs: verifying a volume's keyring, deriving each epoch's keys,
//! and making new epochs.
//!
//! A volume's [`Keyring`] lists key epochs 0, 1, 2, … . Each epoch has a
//! random secret ([`VolumeSecret`]) wrapped with age to every member, a
//! key-check value (a keyed hash of a fixed string under a sub-key of the
//! secret) and a link: the MAC of `(volume id, epoch, check)` under the
//! previous epoch's secret (zero for epoch 0). New data is sealed under
//! the newest epoch; every sealed byte string names its epoch
//! ([`crate::codec::header`]), so older data keeps opening with older
//! secrets.
//!
//! Trust: dirsvc holds the keyring but knows no secret. A client that
//! unwraps every epoch checks each key-check value against the secret it
//! unwrapped and each link against the previous secret ([`open`]). So
//! dirsvc cannot add an epoch whose secret it knows (it cannot make the
//! link), swap an epoch's wrapped secret for another (the check would not
//! match) or replace epoch 0 alone (epoch 1's link would not verify). What
//! it can do is replace the whole keyring, or drop its newest epochs; a
//! client catches that only by pinning the volume at first use (fs-client
//! does).
//!
//! Names (AES-SIV, deterministic so dirsvc can look them up) stay under
//! epoch 0's name key for the life of the volume: a new epoch protects
//! content, symlink targets and attribute values, not names.

use crate::error::Error;
use crate::ids::VolumeId;
use crate::keys::{unwrap_secret, wrap_secret, LayoutMacKey, NameKey, SubKey, VolumeSecret};
use crate::rpc::dir::{KeyEpoch, Keyring};
use std::fmt;

/// The keys of one epoch, derived from its secret.
#[derive(Clone)]
pub struct EpochKeys {
    /// Seals chunk contents.
    pub chunk: SubKey,
    /// Seals symlink targets.
    pub symlink: SubKey,
    /// Seals extended-attribute values.
    pub xattr_value: SubKey,
    /// MACs layout entries.
    pub layout_mac: LayoutMacKey,
    /// Seals a client's recovery files.
    pub recovery: SubKey,
}

impl EpochKeys {
    /// The keys derived from `secret`.
    pub fn derive(secret: &VolumeSecret) -> Self {
        EpochKeys {
            chunk: secret.chunk_key(),
            symlink: secret.symlink_key(),
            xattr_value: secret.xattr_value_key(),
            layout_mac: secret.layout_mac_key(),
            recovery: secret.recovery_key(),
        }
    }
}

impl fmt::Debug for EpochKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EpochKeys(..)")
    }
}

/// Every epoch secret of a volume that a member unwrapped and verified,
/// with the derived keys. Never printed.
#[derive(Clone)]
pub struct VolumeKeys {
    volume: VolumeId,
    secrets: Vec<VolumeSecret>,
    epochs: Vec<EpochKeys>,
    name_key: NameKey,
}

impl fmt::Debug for VolumeKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VolumeKeys({}, {} epochs)", self.volume, self.secrets.len())
    }
}

impl VolumeKeys {
    /// Keys from verified secrets of epochs `0..secrets.len()`.
    ///
    /// Errors: [`Error::BadKeyring`] for no secret at all.
    fn from_secrets(volume: VolumeId, secrets: Vec<VolumeSecret>) -> Result<Self, Error> {
        let first = secrets.first().ok_or_else(|| Error::BadKeyring("the keyring has no epoch".into()))?;
        let name_key = first.name_key();
        let epochs = secrets.iter().map(EpochKeys::derive).collect();
        Ok(VolumeKeys { volume, secrets, epochs, name_key })
    }

    /// Keys of a volume with the single epoch 0 of `secret` (tests, and
    /// tools that hold a secret already).
    pub fn single(volume: VolumeId, secret: VolumeSecret) -> Self {
        VolumeKeys {
            volume,
            name_key: secret.name_key(),
            epochs: vec![EpochKeys::derive(&secret)],
            secrets: vec![secret],
        }
    }

    /// The volume these keys belong to.
    pub fn volume(&self) -> VolumeId {
        self.volume
    }

    /// The newest epoch number: what new data is sealed under.
    pub fn newest(&self) -> u32 {
        // There is always at least one epoch (see the constructors).
        self.epochs.len().saturating_sub(1) as u32
    }

    /// The keys of epoch `epoch`, if known.
    pub fn epoch(&self, epoch: u32) -> Option<&EpochKeys> {
        self.epochs.get(epoch as usize)
    }

    /// The keys of the newest epoch.
    pub fn newest_keys(&self) -> &EpochKeys {
        &self.epochs[self.epochs.len() - 1]
    }

    /// The name key (always epoch 0's: names are looked up by their sealed
    /// form, so they cannot change key).
    pub fn name_key(&self) -> &NameKey {
        &self.name_key
    }

    /// The secret of epoch `epoch` (for re-wrapping and new links).
    pub fn secret(&self, epoch: u32) -> Option<&VolumeSecret> {
        self.secrets.get(epoch as usize)
    }

    /// The key-check value of epoch `epoch`, computed from its secret.
    pub fn check(&self, epoch: u32) -> Option<[u8; 32]> {
        self.secret(epoch).map(VolumeSecret::key_check)
    }
}

/// A new volume's epoch 0: a fresh secret, wrapped to `recipients`, with
/// its key-check value and a zero link.
///
/// Errors: [`Error::Key`] if age refuses the recipients.
pub fn first_epoch(recipients: &[Box<dyn age::Recipient + Send>]) -> Result<(VolumeSecret, KeyEpoch), Error> {
    let secret = VolumeSecret::generate();
    let wrapped = wrap_secret(&secret, recipients)?;
    let epoch = KeyEpoch { epoch: 0, wrapped, check: secret.key_check(), link: [0; 32] };
    Ok((secret, epoch))
}

/// The epoch after `keys`' newest: a fresh secret wrapped to `recipients`
/// (the members that remain), linked to the newest epoch.
///
/// Errors: [`Error::Key`] if age refuses the recipients.
pub fn next_epoch(
    keys: &VolumeKeys,
    recipients: &[Box<dyn age::Recipient + Send>],
) -> Result<(VolumeSecret, KeyEpoch), Error> {
    let n = keys.newest() + 1;
    let prev = keys.secret(keys.newest()).ok_or_else(|| Error::BadKeyring("no newest epoch".into()))?;
    let secret = VolumeSecret::generate();
    let wrapped = wrap_secret(&secret, recipients)?;
    let check = secret.key_check();
    let link = prev.link(&keys.volume, n, &check);
    Ok((secret, KeyEpoch { epoch: n, wrapped, check, link }))
}

/// Every epoch's secret wrapped again to `recipients` (adding a member),
/// in epoch order.
///
/// Errors: [`Error::Key`] if age refuses the recipients.
pub fn rewrap_all(
    keys: &VolumeKeys,
    recipients: &[Box<dyn age::Recipient + Send>],
) -> Result<Vec<Vec<u8>>, Error> {
    keys.secrets.iter().map(|s| wrap_secret(s, recipients)).collect()
}

/// Unwraps and verifies `keyring` of volume `volume` with `identities`.
///
/// Checks, in order: epochs are numbered 0, 1, 2, …; the newest epoch
/// unwraps ([`Error::NotMember`] otherwise); every older one unwraps (a
/// member can unwrap them all: adding a member re-wraps every epoch);
/// each unwrapped secret's key-check value is the one listed (a zero check
/// is accepted for epoch 0 only when `legacy` is true: a volume migrated
/// from before key epochs); epoch 0's link is zero and every later link is
/// the MAC of `(volume, epoch, check)` under the previous secret.
///
/// Errors: [`Error::NotMember`], [`Error::BadKeyring`] naming the epoch
/// and what is wrong.
pub fn open(
    volume: VolumeId,
    keyring: &Keyring,
    identities: &[Box<dyn age::Identity>],
    legacy: bool,
) -> Result<VolumeKeys, Error> {
    let newest = match keyring.epochs.last() {
        Some(e) => e,
        None => return Err(Error::BadKeyring("the keyring has no epoch".into())),
    };
    check_numbering(keyring)?;
    let newest_secret = unwrap_secret(&newest.wrapped, identities)
        .map_err(|e| Error::NotMember { epoch: newest.epoch, reason: e.to_string() })?;
    let mut secrets = Vec::with_capacity(keyring.epochs.len());
    for e in &keyring.epochs[..keyring.epochs.len() - 1] {
        let s = unwrap_secret(&e.wrapped, identities).map_err(|err| {
            Error::BadKeyring(format!(
                "key epoch {} is not wrapped to this identity ({err}), so the keyring cannot be verified",
                e.epoch
            ))
        })?;
        secrets.push(s);
    }
    secrets.push(newest_secret);
    verify(volume, keyring, &secrets, legacy)?;
    VolumeKeys::from_secrets(volume, secrets)
}

/// Epochs must be numbered 0, 1, 2, … in order.
fn check_numbering(keyring: &Keyring) -> Result<(), Error> {
    for (i, e) in keyring.epochs.iter().enumerate() {
        if e.epoch as usize != i {
            return Err(Error::BadKeyring(format!("epoch at position {i} is numbered {}", e.epoch)));
        }
    }
    Ok(())
}

/// Verifies the checks and links of `keyring` against `secrets` (the
/// unwrapped secret of each epoch, in order). See [`open`].
///
/// Errors: [`Error::BadKeyring`] naming the first epoch that does not
/// verify.
pub fn verify(
    volume: VolumeId,
    keyring: &Keyring,
    secrets: &[VolumeSecret],
    legacy: bool,
) -> Result<(), Error> {
    check_numbering(keyring)?;
    if secrets.len() != keyring.epochs.len() {
        return Err(Error::BadKeyring(format!(
            "{} secrets for {} epochs",
            secrets.len(),
            keyring.epochs.len()
        )));
    }
    for (i, (e, s)) in keyring.epochs.iter().zip(secrets).enumerate() {
        let check = s.key_check();
        let unknown_legacy_check = i == 0 && legacy && e.check == [0; 32];
        if !unknown_legacy_check && blake3::Hash::from(check) != blake3::Hash::from(e.check) {
            return Err(Error::BadKeyring(format!(
                "key epoch {i}: the unwrapped secret does not match the epoch's key-check value"
            )));
        }
        if i == 0 {
            if e.link != [0; 32] {
                return Err(Error::BadKeyring("key epoch 0 has a link".into()));
            }
            continue;
        }
        let want = secrets[i - 1].link(&volume, e.epoch, &e.check);
        if blake3::Hash::from(want) != blake3::Hash::from(e.link) {
            return Err(Error::BadKeyring(format!(
                "key epoch {i} is not linked to epoch {}: it was not made by a member",
                i - 1
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::dir::Member;

    struct Who {
        id: age::x25519::Identity,
    }

    impl Who {
        fn new() -> Who {
            Who { id: age::x25519::Identity::generate() }
        }
        fn recipient(&self) -> Box<dyn age::Recipient + Send> {
            Box::new(self.id.to_public())
        }
        fn identities(&self) -> Vec<Box<dyn age::Identity>> {
            vec![Box::new(self.id.clone())]
        }
        fn member(&self, name: &str) -> Member {
            Member { name: name.into(), recipient: self.id.to_public().to_string(), nodes: vec![] }
        }
    }

    const V: VolumeId = VolumeId([7; 16]);

    /// A keyring with epoch 0 for a and b, then epoch 1 after removing b.
    fn two_epochs(a: &Who, b: &Who) -> Keyring {
        let (_, e0) = first_epoch(&[a.recipient(), b.recipient()]).unwrap();
        let mut ring = Keyring { version: 1, epochs: vec![e0], members: vec![a.member("a"), b.member("b")] };
        let keys = open(V, &ring, &a.identities(), false).unwrap();
        let (_, e1) = next_epoch(&keys, &[a.recipient()]).unwrap();
        ring.epochs.push(e1);
        ring.members.pop();
        ring.version = 2;
        ring
    }

    #[test]
    fn a_member_opens_every_epoch_and_a_removed_member_is_told() {
        let (a, b) = (Who::new(), Who::new());
        let ring = two_epochs(&a, &b);
        let keys = open(V, &ring, &a.identities(), false).unwrap();
        assert_eq!(keys.newest(), 1);
        assert!(keys.epoch(0).is_some() && keys.epoch(1).is_some() && keys.epoch(2).is_none());
        assert_eq!(keys.check(1).unwrap(), ring.epochs[1].check);
        // Names stay under epoch 0.
        let name0 = VolumeKeys::single(V, keys.secret(0).unwrap().clone());
        assert_eq!(
            keys.name_key().seal(crate::InodeId(1), b"x"),
            name0.name_key().seal(crate::InodeId(1), b"x")
        );
        match open(V, &ring, &b.identities(), false) {
            Err(Error::NotMember { epoch: 1, .. }) => {}
            other => panic!("expected NotMember, got {other:?}"),
        }
        // Re-wrapping every epoch to a new member lets them open it all.
        let c = Who::new();
        let wrapped = rewrap_all(&keys, &[a.recipient(), c.recipient()]).unwrap();
        let mut ring2 = ring.clone();
        for (e, w) in ring2.epochs.iter_mut().zip(wrapped) {
            e.wrapped = w;
        }
        let ck = open(V, &ring2, &c.identities(), false).unwrap();
        assert_eq!(ck.check(0), keys.check(0));
    }

    #[test]
    fn a_forged_later_epoch_is_refused() {
        // dirsvc knows no secret: it makes its own epoch 2, wrapped to a
        // (it knows a's public key), with a correct check but a link it
        // cannot compute.
        let (a, b) = (Who::new(), Who::new());
        let mut ring = two_epochs(&a, &b);
        let mine = VolumeSecret::generate();
        let wrapped = wrap_secret(&mine, &[a.recipient()]).unwrap();
        let check = mine.key_check();
        let link = mine.link(&V, 2, &check); // the best it can do
        ring.epochs.push(KeyEpoch { epoch: 2, wrapped, check, link });
        let e = open(V, &ring, &a.identities(), false).unwrap_err().to_string();
        assert!(e.contains("epoch 2 is not linked to epoch 1"), "{e}");
    }

    #[test]
    fn a_broken_link_or_check_is_refused() {
        let (a, b) = (Who::new(), Who::new());
        let good = two_epochs(&a, &b);
        let mut ring = good.clone();
        ring.epochs[1].link[0] ^= 1;
        assert!(matches!(open(V, &ring, &a.identities(), false), Err(Error::BadKeyring(_))));
        // A wrapped secret swapped for another one (with the check left
        // alone) does not match the check.
        let mut ring = good.clone();
        ring.epochs[1].wrapped = wrap_secret(&VolumeSecret::generate(), &[a.recipient()]).unwrap();
        let e = open(V, &ring, &a.identities(), false).unwrap_err().to_string();
        assert!(e.contains("key-check"), "{e}");
        // Another volume id does not verify the links either.
        assert!(open(VolumeId([8; 16]), &good, &a.identities(), false).is_err());
        // Misnumbered epochs.
        let mut ring = good.clone();
        ring.epochs.swap(0, 1);
        assert!(open(V, &ring, &a.identities(), false).is_err());
        // A zero check on epoch 0 only passes for a legacy volume.
        let mut ring = good;
        ring.epochs[0].check = [0; 32];
        assert!(open(V, &ring, &a.identities(), false).is_err());
        assert!(open(V, &ring, &a.identities(), true).is_ok());
    }

    #[test]
    fn a_substituted_epoch_0_is_refused() {
        // dirsvc replaces epoch 0 by one of its own (wrapped to a, correct
        // check): epoch 1's link, made under the real epoch 0, fails.
        let (a, b) = (Who::new(), Who::new());
        let mut ring = two_epochs(&a, &b);
        let (_, fake0) = first_epoch(&[a.recipient()]).unwrap();
        ring.epochs[0] = fake0;
        let e = open(V, &ring, &a.identities(), false).unwrap_err().to_string();
        assert!(e.contains("epoch 1 is not linked to epoch 0"), "{e}");
        // And an epoch 0 with a link is not an epoch 0.
        let mut ring = two_epochs(&a, &b);
        ring.epochs[0].link = [1; 32];
        assert!(open(V, &ring, &a.identities(), false).is_err());
    }
}
