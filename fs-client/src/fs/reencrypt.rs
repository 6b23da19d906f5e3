//! `fs-client reencrypt`: re-sealing the blocks of older key epochs under
//! the newest one, so keys a removed member had no longer open them.
//!
//! The volume is walked from the root (directory listings; hard links are
//! visited once). Every block whose entry names an older epoch (or carries
//! no MAC: a volume migrated from before MACs) is read as any read is
//! (entry MAC verified, chunk verified and opened), sealed under the newest
//! epoch, stored on R peers and swapped in with `reseal_blocks`, which
//! replaces the entry only if the block still names the old chunk: a block
//! some mount rewrote meanwhile keeps the mount's data (the re-sealed copy
//! is then collected as an orphan). Size and times do not change. The old
//! chunks lose their reference and are garbage-collected after the grace
//! period. Symlink targets and extended-attribute values are not re-sealed.

use super::Fs;
use crate::error::{Error, Result};
use common::rpc::dir::{BlockLoc, DirError, FileKind, Reseal, RESEAL_BATCH_MAX};
use common::InodeId;
use futures::StreamExt;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use tracing::{info, warn};

/// Where a re-encryption stands (for a progress bar).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReencryptProgress {
    /// Files finished.
    pub files_done: u64,
    /// Blocks of older epochs found so far.
    pub blocks_total: u64,
    /// Blocks handled (re-sealed, or found changed).
    pub blocks_done: u64,
}

/// What a re-encryption did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReencryptReport {
    /// Regular files walked.
    pub files: u64,
    /// Blocks re-sealed under the newest epoch.
    pub resealed: u64,
    /// Plaintext bytes of those blocks.
    pub bytes: u64,
    /// Blocks that changed (or whose file went away) before they could be
    /// replaced: their new data is under the newest epoch already.
    pub changed: u64,
    /// Files that failed, with the error: `(path, error)`.
    pub failed: Vec<(String, String)>,
}

impl Fs {
    /// Re-seals every block of an older key epoch (or without a MAC) under
    /// the newest epoch, reporting progress to `progress` as it goes (see
    /// the module documentation).
    ///
    /// Errors: a failure to list a directory, or dirsvc answering
    /// `StaleEpoch` (a member was removed during the run: run it again).
    /// A file that fails otherwise is listed in the report and the walk
    /// goes on.
    pub async fn reencrypt(
        self: &Arc<Self>,
        progress: &dyn Fn(ReencryptProgress),
    ) -> Result<ReencryptReport> {
        let newest = self.keys().newest();
        let files = self.walk_files().await?;
        let mut report = ReencryptReport::default();
        let mut p = ReencryptProgress::default();
        // First the layouts (cheap), so the total is known.
        let mut work: Vec<(InodeId, String, Vec<BlockLoc>)> = Vec::new();
        for (ino, path) in files {
            report.files += 1;
            match self.load_layout(ino).await {
                Ok((_, layout)) => {
                    let old: Vec<BlockLoc> =
                        layout.into_values().filter(|l| l.epoch < newest || l.mac == [0; 32]).collect();
                    p.blocks_total += old.len() as u64;
                    if old.is_empty() {
                        p.files_done += 1;
                    } else {
                        work.push((ino, path, old));
                    }
                }
                Err(Error::Dir(DirError::NotFound)) => p.files_done += 1,
                Err(e) => report.failed.push((path, e.to_string())),
            }
            progress(p);
        }
        for (ino, path, old) in work {
            for batch in old.chunks(RESEAL_BATCH_MAX) {
                match self.reseal_batch(ino, batch).await {
                    Ok((resealed, bytes, changed)) => {
                        report.resealed += resealed;
                        report.bytes += bytes;
                        report.changed += changed;
                    }
                    Err(e @ Error::Dir(DirError::StaleEpoch { .. })) => return Err(e),
                    Err(e) => {
                        warn!(ino = %ino, path = %path, error = %e, "file not re-encrypted");
                        report.failed.push((path.clone(), e.to_string()));
                        break;
                    }
                }
                p.blocks_done += batch.len() as u64;
                progress(p);
            }
            p.files_done += 1;
            progress(p);
        }
        info!(
            files = report.files,
            resealed = report.resealed,
            changed = report.changed,
            failed = report.failed.len(),
            epoch = newest,
            "re-encryption done"
        );
        Ok(report)
    }

    /// Re-seals and stores `batch` (blocks of `ino`) and swaps them in.
    /// Returns (blocks replaced, their plaintext bytes, blocks changed
    /// meanwhile).
    async fn reseal_batch(self: &Arc<Self>, ino: InodeId, batch: &[BlockLoc]) -> Result<(u64, u64, u64)> {
        let stored = futures::stream::iter(batch.iter().cloned())
            .map(|loc| {
                let me = self.clone();
                async move {
                    let data = me.fetch_block(ino, &loc).await?;
                    let len = data.len() as u64;
                    let permit = me
                        .uploads
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| Error::Upload("shutting down".into()))?;
                    let up = me.clone().upload(ino, loc.index, data, permit).await?;
                    Ok::<_, Error>((Reseal { index: loc.index, old: loc.chunk, new: up.stored }, len))
                }
            })
            .buffer_unordered(self.config.uploads_in_flight.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let (reseals, lens): (Vec<Reseal>, Vec<u64>) = stored.into_iter().unzip();
        self.known.forget_attr(ino);
        let r = self
            .dir
            .call(|c, ctx| {
                let rs = reseals.clone();
                async move { c.reseal_blocks(ctx, ino, rs).await }
            })
            .await;
        let applied = match r {
            Ok(a) => a,
            // Deleted meanwhile: nothing left to protect.
            Err(Error::Dir(DirError::NotFound)) => return Ok((0, 0, batch.len() as u64)),
            Err(e) => return Err(e),
        };
        let (mut n, mut bytes, mut changed) = (0, 0, 0);
        for (ok, len) in applied.iter().zip(lens) {
            if *ok {
                n += 1;
                bytes += len;
            } else {
                changed += 1;
            }
        }
        Ok((n, bytes, changed))
    }

    /// Every regular file of the volume, once per inode, with a path for
    /// messages, by a breadth-first walk from the root.
    ///
    /// Errors: a directory that cannot be listed.
    async fn walk_files(&self) -> Result<Vec<(InodeId, String)>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut dirs = VecDeque::from([(InodeId::ROOT, String::new())]);
        while let Some((dir, path)) = dirs.pop_front() {
            let mut cookie = 0;
            loop {
                let (entries, eof) = match self.readdir(dir, cookie, 1024).await {
                    Ok(page) => page,
                    // Removed while walking.
                    Err(Error::Dir(DirError::NotFound)) => break,
                    Err(e) => return Err(e),
                };
                for e in &entries {
                    cookie = e.cookie;
                    let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
                    match e.kind {
                        FileKind::Dir => dirs.push_back((e.ino, p)),
                        FileKind::File if seen.insert(e.ino) => out.push((e.ino, p)),
                        _ => {}
                    }
                }
                if eof || entries.is_empty() {
                    break;
                }
            }
        }
        Ok(out)
    }
}
