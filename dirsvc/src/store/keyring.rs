//! The keyring family (`M` volume record and key epoch): the volume's
//! settings, its keyring of key epochs and members. The volume record is
//! cached in the [`Store`] after each committed change.

use super::records::{EpochRecord, KeyringRecord, MemberRecord, Record, VolumeRecord};
use super::{check_epoch, check_members, decode_u32, keys, Get, Store, MAX_REPLICAS, W};
use crate::error::{invalid, Error};
use common::config::valid_block_size;
use common::rpc::dir::{
    DirError, KeyEpoch, Keyring, Member, VolumeInfo, EPOCHS_MAX, MEMBERS_MAX, WRAPPED_SECRET_MAX,
};
use common::InodeId;

impl Store {
    /// Creates the volume: settings, counters and the root directory
    /// (inode 1, mode `0755`, owned by `uid`/`gid`, nlink 2).
    ///
    /// The keyring must hold exactly epoch 0 (zero link, non-zero check)
    /// and at least one member; it is stored as keyring version 1, and
    /// `legacy_layouts` is always stored false (a new volume never accepts
    /// layout entries without a MAC).
    ///
    /// Errors: `Invalid` for a block size that is not a power of two in
    /// [4 KiB, 4 MiB], R = 0 or R > [`MAX_REPLICAS`], or a keyring that is
    /// not such an epoch 0 with valid members; `AlreadyInitialized` if a
    /// volume exists.
    pub fn init_volume(&self, info: &VolumeInfo, uid: u32, gid: u32) -> Result<VolumeInfo, Error> {
        if !valid_block_size(info.block_size) {
            return Err(invalid(format!(
                "block size {} is not a power of two in [{}, {}]",
                info.block_size,
                common::config::MIN_BLOCK_SIZE,
                common::config::MAX_BLOCK_SIZE
            )));
        }
        if info.replicas == 0 || info.replicas > MAX_REPLICAS {
            return Err(invalid(format!(
                "replication factor {} is not in [1, {MAX_REPLICAS}]",
                info.replicas
            )));
        }
        let ring = &info.keyring;
        match ring.epochs.as_slice() {
            [e0] if e0.epoch == 0 && e0.link == [0; 32] && e0.check != [0; 32] => check_epoch(e0)?,
            _ => {
                return Err(invalid(
                    "a new volume's keyring holds exactly key epoch 0 (zero link, a key check)",
                ))
            }
        }
        if ring.members.is_empty() {
            return Err(invalid("a new volume needs at least one member"));
        }
        check_members(&ring.members)?;
        let mut keyring = KeyringRecord::from_wire(ring);
        keyring.version = 1;
        let record = VolumeRecord {
            id: info.id.0,
            block_size: info.block_size,
            replicas: info.replicas,
            keyring,
            legacy_layouts: false,
        };
        self.write(|w| {
            if w.get(&keys::meta(keys::META_VOLUME))?.is_some() {
                return Err(DirError::AlreadyInitialized.into());
            }
            w.put_volume(&record)?;
            w.put(keys::meta(keys::META_NEXT_INODE), (InodeId::ROOT.0 + 1).to_le_bytes().to_vec());
            w.put(keys::meta(keys::META_NEXT_COOKIE), 1u64.to_le_bytes().to_vec());
            w.make_root(uid, gid)
        })?;
        // Only one init can commit (the check above runs inside the write
        // transaction), so this is the first set.
        self.set_volume(record);
        self.volume_info()
    }

    /// Adds `member` to the keyring, replacing each epoch's wrapped secret
    /// by `wrapped` (the same secrets re-wrapped to every member, the new
    /// one included), if the keyring is still at `version`; the version
    /// goes up by one. One transaction. Returns the new keyring.
    ///
    /// Errors: `KeyringChanged` (another version), `Exists` (name or
    /// recipient listed), `Invalid` (bad member, wrong number or size of
    /// wrapped secrets, too many members), `NotInitialized`.
    pub fn add_member(&self, version: u64, member: &Member, wrapped: &[Vec<u8>]) -> Result<Keyring, Error> {
        self.vol()?;
        check_members(std::slice::from_ref(member))?;
        if wrapped.iter().any(|w| w.is_empty() || w.len() > WRAPPED_SECRET_MAX) {
            return Err(invalid(format!("a wrapped secret must hold 1 to {WRAPPED_SECRET_MAX} bytes")));
        }
        let rec = self.write(|w| {
            let mut rec = w.volume_rec()?;
            let ring = &mut rec.keyring;
            if ring.version != version {
                return Err(DirError::KeyringChanged { version: ring.version }.into());
            }
            if ring.members.iter().any(|m| m.name == member.name || m.recipient == member.recipient) {
                return Err(DirError::Exists.into());
            }
            if ring.members.len() >= MEMBERS_MAX {
                return Err(invalid(format!("a volume has at most {MEMBERS_MAX} members")));
            }
            if wrapped.len() != ring.epochs.len() {
                return Err(invalid(format!(
                    "{} wrapped secrets for {} key epochs",
                    wrapped.len(),
                    ring.epochs.len()
                )));
            }
            for (e, new) in ring.epochs.iter_mut().zip(wrapped) {
                e.wrapped = new.clone();
            }
            ring.members.push(MemberRecord::from_wire(member));
            ring.version += 1;
            w.put_volume(&rec)?;
            Ok(rec)
        })?;
        let ring = rec.keyring.to_wire();
        self.set_volume(rec);
        Ok(ring)
    }

    /// Removes member `name` and appends key epoch `epoch`, if the keyring
    /// is still at `version`; the version goes up by one and the newest
    /// epoch becomes `epoch.epoch` (from then on `commit_layout` refuses
    /// newly stored chunks of older epochs). dirsvc cannot verify the new
    /// epoch's link or check (it knows no secret); clients do. One
    /// transaction. Returns the new keyring and the removed member.
    ///
    /// Errors: `KeyringChanged`; `NotFound` (no such member); `Invalid`
    /// (the last member, an epoch that is not newest + 1, a zero check or
    /// link, a wrapped secret out of bounds, too many epochs);
    /// `NotInitialized`.
    pub fn remove_member(
        &self,
        version: u64,
        name: &str,
        epoch: &KeyEpoch,
    ) -> Result<(Keyring, Member), Error> {
        self.vol()?;
        check_epoch(epoch)?;
        if epoch.check == [0; 32] || epoch.link == [0; 32] {
            return Err(invalid("a new key epoch needs a key check and a link"));
        }
        let (rec, removed) = self.write(|w| {
            let mut rec = w.volume_rec()?;
            let ring = &mut rec.keyring;
            if ring.version != version {
                return Err(DirError::KeyringChanged { version: ring.version }.into());
            }
            let at = ring.members.iter().position(|m| m.name == name).ok_or(DirError::NotFound)?;
            if ring.members.len() == 1 {
                return Err(invalid("cannot remove the last member of a volume"));
            }
            let want = ring.newest_epoch() + 1;
            if ring.epochs.is_empty() || epoch.epoch != want {
                return Err(invalid(format!("the next key epoch is {want}, not {}", epoch.epoch)));
            }
            if ring.epochs.len() >= EPOCHS_MAX {
                return Err(invalid(format!("a volume has at most {EPOCHS_MAX} key epochs")));
            }
            let removed = ring.members.remove(at).to_wire();
            ring.epochs.push(EpochRecord {
                epoch: epoch.epoch,
                wrapped: epoch.wrapped.clone(),
                check: epoch.check,
                link: epoch.link,
            });
            ring.version += 1;
            w.put_volume(&rec)?;
            Ok((rec, removed))
        })?;
        let ring = rec.keyring.to_wire();
        self.set_volume(rec);
        Ok((ring, removed))
    }
}

/// What a malicious dirsvc could do to the keyring (feature `tamper`).
#[cfg(feature = "tamper")]
impl Store {
    /// Sets the volume's `legacy_layouts` flag. Errors: `NotInitialized`.
    pub fn tamper_set_legacy(&self, legacy: bool) -> Result<(), Error> {
        let rec = self.write(|w| {
            let mut rec = w.volume_rec()?;
            rec.legacy_layouts = legacy;
            w.put_volume(&rec)?;
            Ok(rec)
        })?;
        self.set_volume(rec);
        Ok(())
    }

    /// Replaces the keyring as stored (a dirsvc substituting or rolling
    /// back epochs). Errors: `NotInitialized`.
    pub fn tamper_set_keyring(&self, keyring: &Keyring) -> Result<(), Error> {
        let rec = self.write(|w| {
            let mut rec = w.volume_rec()?;
            rec.keyring = KeyringRecord::from_wire(keyring);
            w.put_volume(&rec)?;
            Ok(rec)
        })?;
        self.set_volume(rec);
        Ok(())
    }
}

impl W<'_, '_> {
    /// The volume record. Errors: `NotInitialized`, `Corrupt`.
    pub(crate) fn volume_rec(&self) -> Result<VolumeRecord, Error> {
        match self.get(&keys::meta(keys::META_VOLUME))? {
            Some(v) => VolumeRecord::from_bytes(&v),
            None => Err(DirError::NotInitialized.into()),
        }
    }

    /// Writes the volume record and the newest key epoch beside it.
    pub(crate) fn put_volume(&mut self, rec: &VolumeRecord) -> Result<(), Error> {
        self.put(keys::meta(keys::META_VOLUME), rec.to_bytes()?);
        self.put(keys::meta(keys::META_KEY_EPOCH), rec.keyring.newest_epoch().to_le_bytes().to_vec());
        Ok(())
    }

    /// The newest key epoch (`key_epoch`).
    pub(crate) fn key_epoch(&self) -> Result<u32, Error> {
        match self.get(&keys::meta(keys::META_KEY_EPOCH))? {
            Some(v) => decode_u32(&v),
            None => Err(Error::Corrupt { what: "meta", reason: "key_epoch missing".into() }),
        }
    }
}
