//! Per-file durability: the read-only virtual extended attribute
//! [`DURABILITY_XATTR`] (`user.p2pfs.durability`), whose value is a JSON
//! [`DurabilityReport`] of one regular file.
//!
//! It is computed on every `getxattr` from dirsvc's layout of the file
//! (each block's chunk and the peers holding it, with their liveness),
//! dirsvc's peer list (drain states) and what this mount still buffers for
//! the file. It is never stored: `listxattr` does not list it (so `cp -a`,
//! `rsync -X` and `getfattr -d` do not copy or dump it), and `setxattr` or
//! `removexattr` of it are `EPERM`.
//!
//! A replica is *live* when dirsvc counts it towards R: its peer is up or
//! suspect (heartbeat within the down timeout) and not draining or
//! drained, the same rule as `cluster_status`'s `under_replicated`.

use super::{lock, Fs};
use crate::error::{Error, Result};
use common::rpc::dir::{BlockLoc, FileKind, PeerState};
use common::{InodeId, PeerId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// The attribute's name.
pub const DURABILITY_XATTR: &[u8] = b"user.p2pfs.durability";

/// Files with at most this many stored blocks are reported block by block,
/// each with its chunk id; larger ones as runs of consecutive blocks with
/// the same live replica count, without chunk ids.
pub const PER_BLOCK_MAX: usize = 256;

/// Most bytes of a report (the kernel's `XATTR_SIZE_MAX`): past it the
/// list of runs is cut short (`truncated`); the counts stay exact.
pub const REPORT_MAX: usize = super::xattr::XATTR_SIZE_MAX;

/// Longest wait for a file's local state when another operation (a flush)
/// holds it; past it the upload figures are reported as unknown (`null`).
const LOCAL_STATE_WAIT: Duration = Duration::from_secs(2);

/// One run of consecutive stored blocks with the same live replica count
/// (a single block, with its chunk id, for files of at most
/// [`PER_BLOCK_MAX`] stored blocks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRun {
    /// First block index of the run (block i covers bytes `[i·B, (i+1)·B)`).
    pub first: u64,
    /// Last block index of the run, inclusive.
    pub last: u64,
    /// Live replicas of each block of the run (may exceed R after a peer
    /// returned from being down).
    pub live: u32,
    /// The chunk id (64 hex digits) when the run is one block of a file
    /// reported block by block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<String>,
}

/// The value of [`DURABILITY_XATTR`]: how safe one regular file's data is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurabilityReport {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes as dirsvc holds it (committed).
    pub size: u64,
    /// The volume's block size B in bytes.
    pub block_size: u64,
    /// Blocks the size spans: ⌈size / B⌉.
    pub blocks: u64,
    /// Of those, blocks stored as chunks (the rest are holes).
    pub stored_blocks: u64,
    /// The volume's replication factor R.
    pub replicas: u32,
    /// Stored blocks with at least R live replicas.
    pub at_r: u64,
    /// Stored blocks with fewer than R live replicas (lost ones included).
    pub under_r: u64,
    /// Stored blocks with no live replica.
    pub lost: u64,
    /// Stored blocks kept inline in their layout entry at dirsvc (small
    /// files, protocol 12): on no peer, and counted in `at_r` (they are as
    /// durable as the file's metadata).
    pub inline_blocks: u64,
    /// Bytes written on this mount and not yet stored on peers:
    /// `dirty_bytes + uploading_bytes`. 0 once every handle flushed or
    /// closed. `null` if the file was busy (a flush under way) for 2 s.
    pub pending_upload_bytes: Option<u64>,
    /// Bytes in blocks buffered and not yet handed to an upload.
    pub dirty_bytes: Option<u64>,
    /// Bytes in blocks being sealed and stored now.
    pub uploading_bytes: Option<u64>,
    /// Blocks stored on peers but not yet committed to dirsvc (committed
    /// within about a second, or on flush).
    pub uncommitted_blocks: Option<u64>,
    /// Whether `runs` lists every stored block with its chunk id (at most
    /// [`PER_BLOCK_MAX`] stored blocks) rather than runs.
    pub per_block: bool,
    /// The stored blocks in index order (holes are left out).
    pub runs: Vec<BlockRun>,
    /// Whether `runs` was cut short to fit 64 KiB.
    pub truncated: bool,
}

impl DurabilityReport {
    /// The report as JSON bytes, at most [`REPORT_MAX`] long (runs dropped
    /// from the end, and `truncated` set, if needed).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let enc = |r: &DurabilityReport| serde_json::to_vec(r).map_err(|e| Error::Io(e.to_string()));
        let mut out = enc(self)?;
        if out.len() <= REPORT_MAX {
            return Ok(out);
        }
        let mut cut = self.clone();
        cut.truncated = true;
        // Each run takes at least ~30 bytes: drop what cannot fit, then
        // trim one by one.
        let over = out.len() - REPORT_MAX;
        let keep = cut.runs.len().saturating_sub(over / 30 + 1);
        cut.runs.truncate(keep);
        loop {
            out = enc(&cut)?;
            if out.len() <= REPORT_MAX || cut.runs.is_empty() {
                return Ok(out);
            }
            cut.runs.pop();
        }
    }
}

/// What this mount buffers for a file: (dirty bytes, uploading bytes,
/// uncommitted blocks).
type Local = (u64, u64, u64);

impl Fs {
    /// The durability report of regular file `ino` as JSON (the value of
    /// [`DURABILITY_XATTR`]).
    ///
    /// Errors: `ENODATA` for anything but a regular file (it has no such
    /// attribute); `ENOENT`; dirsvc and transport errors.
    pub async fn durability(&self, ino: InodeId) -> Result<Vec<u8>> {
        self.durability_report(ino).await?.to_json()
    }

    /// The durability report of regular file `ino` (see [`Fs::durability`]).
    ///
    /// Errors: as [`Fs::durability`].
    pub async fn durability_report(&self, ino: InodeId) -> Result<DurabilityReport> {
        let no_attr = || Error::Errno(libc::ENODATA, format!("inode {ino} is not a regular file"));
        let (attr, layout) = match self.load_layout(ino).await {
            Ok(l) => l,
            Err(Error::Dir(common::rpc::dir::DirError::IsDir | common::rpc::dir::DirError::Invalid(_))) => {
                return Err(no_attr())
            }
            Err(e) => return Err(e),
        };
        if attr.kind != FileKind::File {
            return Err(no_attr());
        }
        let peers = self.dir.call(|c, ctx| async move { c.list_peers(ctx).await }).await?;
        let not_counted: HashSet<PeerId> = peers
            .iter()
            .filter(|p| matches!(p.state, PeerState::Draining | PeerState::Drained))
            .map(|p| p.loc.id)
            .collect();
        let local = self.local_pending(ino).await;
        Ok(build_report(
            ino,
            attr.size,
            self.block_size,
            self.replicas,
            &layout,
            // An inline chunk is held by dirsvc with the layout: as
            // durable as the file's metadata, so it counts as R replicas.
            |loc| match loc.inline {
                Some(_) => self.replicas,
                None => loc.replicas.iter().filter(|p| p.live && !not_counted.contains(&p.id)).count() as u32,
            },
            local,
        ))
    }

    /// What this mount buffers for `ino` (zeros if it has no state for
    /// it); `None` if another operation held the state for
    /// [`LOCAL_STATE_WAIT`].
    async fn local_pending(&self, ino: InodeId) -> Option<Local> {
        let file = lock(&self.files).get(&ino).cloned();
        let Some(f) = file else { return Some((0, 0, 0)) };
        let st = tokio::time::timeout(LOCAL_STATE_WAIT, f.state.lock()).await.ok()?;
        let (dirty, uploading) = st.buf.local_bytes();
        Some((dirty, uploading, st.buf.uncommitted_len() as u64))
    }
}

/// Builds the report of a file of `size` bytes with stored blocks
/// `layout`, counting each block's live replicas with `live`.
fn build_report(
    ino: InodeId,
    size: u64,
    block_size: u64,
    replicas: u32,
    layout: &BTreeMap<u64, BlockLoc>,
    live: impl Fn(&BlockLoc) -> u32,
    local: Option<Local>,
) -> DurabilityReport {
    let blocks = size.div_ceil(block_size.max(1));
    let stored: Vec<(&BlockLoc, u32)> =
        layout.values().filter(|l| l.index < blocks).map(|l| (l, live(l))).collect();
    let per_block = stored.len() <= PER_BLOCK_MAX;
    let r = replicas.max(1);
    let (mut at_r, mut under_r, mut lost) = (0u64, 0u64, 0u64);
    let inline_blocks = stored.iter().filter(|(l, _)| l.inline.is_some()).count() as u64;
    let mut runs: Vec<BlockRun> = Vec::new();
    for (loc, n) in &stored {
        if *n >= r {
            at_r += 1;
        } else {
            under_r += 1;
            if *n == 0 {
                lost += 1;
            }
        }
        if per_block {
            runs.push(BlockRun {
                first: loc.index,
                last: loc.index,
                live: *n,
                chunk: Some(loc.chunk.to_hex()),
            });
            continue;
        }
        match runs.last_mut() {
            Some(run) if run.live == *n && run.last + 1 == loc.index => run.last = loc.index,
            _ => runs.push(BlockRun { first: loc.index, last: loc.index, live: *n, chunk: None }),
        }
    }
    DurabilityReport {
        ino: ino.0,
        size,
        block_size,
        blocks,
        stored_blocks: stored.len() as u64,
        replicas,
        at_r,
        under_r,
        lost,
        inline_blocks,
        pending_upload_bytes: local.map(|(d, u, _)| d + u),
        dirty_bytes: local.map(|(d, _, _)| d),
        uploading_bytes: local.map(|(_, u, _)| u),
        uncommitted_blocks: local.map(|(_, _, c)| c),
        per_block,
        runs,
        truncated: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::rpc::PeerLoc;
    use common::ChunkId;

    fn loc(index: u64, live: usize) -> BlockLoc {
        let replicas = (0..3)
            .map(|k| PeerLoc { id: PeerId([k as u8; 16]), addr: String::new(), live: k < live })
            .collect();
        BlockLoc {
            index,
            chunk: ChunkId::of(&index.to_le_bytes()),
            len: 10,
            replicas,
            epoch: 0,
            mac: [1; 32],
            inline: None,
        }
    }

    fn live(l: &BlockLoc) -> u32 {
        l.replicas.iter().filter(|p| p.live).count() as u32
    }

    #[test]
    fn counts_blocks_at_under_and_without_live_replicas() {
        // Blocks 0..4 of a 5-block file; block 3 a hole; block 9 past the end.
        let layout: BTreeMap<u64, BlockLoc> = [loc(0, 3), loc(1, 2), loc(2, 0), loc(4, 3), loc(9, 3)]
            .into_iter()
            .map(|l| (l.index, l))
            .collect();
        let r = build_report(InodeId(7), 4 * 100 + 1, 100, 3, &layout, live, Some((5, 6, 1)));
        assert_eq!((r.blocks, r.stored_blocks, r.at_r, r.under_r, r.lost), (5, 4, 2, 2, 1));
        assert_eq!(r.pending_upload_bytes, Some(11));
        assert!(r.per_block);
        assert_eq!(
            r.runs.iter().map(|b| (b.first, b.live)).collect::<Vec<_>>(),
            [(0, 3), (1, 2), (2, 0), (4, 3)]
        );
        assert_eq!(r.runs[1].chunk.as_deref(), Some(ChunkId::of(&1u64.to_le_bytes()).to_hex().as_str()));
    }

    #[test]
    fn large_files_are_reported_as_runs_within_64_kib() {
        let n = PER_BLOCK_MAX as u64 * 4;
        // Live counts 3,3,2,3,3,2,… and a hole at n/2.
        let layout: BTreeMap<u64, BlockLoc> =
            (0..n).filter(|i| *i != n / 2).map(|i| (i, loc(i, if i % 3 == 2 { 2 } else { 3 }))).collect();
        let r = build_report(InodeId(7), n * 100, 100, 3, &layout, live, None);
        assert!(!r.per_block);
        assert!(r.runs.iter().all(|b| b.chunk.is_none()));
        assert_eq!(r.runs[0], BlockRun { first: 0, last: 1, live: 3, chunk: None });
        assert_eq!(r.under_r, (0..n).filter(|i| i % 3 == 2 && *i != n / 2).count() as u64);
        assert_eq!(r.pending_upload_bytes, None);
        let json = r.to_json().unwrap();
        assert!(json.len() <= REPORT_MAX);

        // A report too big for 64 KiB is cut, its counts kept.
        let mut big = r.clone();
        big.runs =
            (0..10_000).map(|i| BlockRun { first: 2 * i, last: 2 * i, live: 1, chunk: None }).collect();
        let json = big.to_json().unwrap();
        assert!(json.len() <= REPORT_MAX, "{}", json.len());
        let back: DurabilityReport = serde_json::from_slice(&json).unwrap();
        assert!(back.truncated && back.runs.len() < 10_000 && back.under_r == r.under_r);
    }
}
