//! The repair worker: brings every referenced chunk back to R good
//! replicas by ordering peer-to-peer copies.
//!
//! Each round (every [`DirsvcConfig::repair_interval`], or at once after a
//! corruption report or a drain):
//!
//! 1. Snapshot the peers (liveness and drain flags) and survey the index
//!    ([`crate::survey`]): the work is every referenced chunk with fewer
//!    than R good replicas, most endangered (fewest good replicas) first,
//!    at most [`REPAIR_ROUND_MAX`] of them. Nothing is queued anywhere
//!    else, so a restart loses no work. Lost chunks (no reachable replica)
//!    are logged once each at error level and skipped until a holder
//!    returns.
//! 2. Copy, at most `repair_concurrency` chunks at a time and at most
//!    `repair_bandwidth_bytes_per_sec` bytes per second (a token bucket on
//!    chunk bytes). For each chunk, until it has R good replicas: pick a
//!    source among its reachable replicas (up before suspect), pick a
//!    target with the placement policy (an up, non-draining peer that does
//!    not hold it, away from the hosts and zones of its good replicas), ask
//!    the target to `fetch_from` the source within
//!    [`common::config::CHUNK_DEADLINE`], then add the target to the
//!    chunk's replicas in one transaction. A failed source or target is
//!    avoided for the rest of the round; a chunk gets a few attempts per
//!    round.
//!
//! A round whose inputs did not change since the last survey (same peer
//! liveness and drain flags, same [`Store::chunk_generation`]) skips the
//! survey, except every [`FORCED_SURVEY_EVERY`] rounds: an idle cluster
//! does not re-read a large index every second.
//!
//! No redb transaction is held across a network call: the survey and each
//! index update run on the blocking pool between copies. A copy cut short
//! by shutdown is simply not recorded; the target may hold the chunk, and
//! the next `fetch_from` to it succeeds at once.

use crate::peers::{Fingerprint, Liveness, PeerView};
use crate::ratelimit::TokenBucket;
use crate::shared::{InFlight, Shared};
use crate::store::Store;
use crate::survey::{survey, Survey, WorkItem};
use common::rpc::peer::PeerError;
use common::rpc::PeerLoc;
use common::{ChunkId, PeerId};
use futures::StreamExt;
use rand::seq::SliceRandom;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, Level};

#[cfg(doc)]
use crate::DirsvcConfig;

/// Most chunks one round works on; the next round surveys again, so newer
/// and more endangered chunks are not stuck behind a long backlog.
pub const REPAIR_ROUND_MAX: usize = 4096;

/// A round with unchanged inputs still surveys every this many rounds (a
/// target that had no room may have some now).
pub const FORCED_SURVEY_EVERY: u32 = 30;

/// Shortest pause between rounds, whatever the configuration says.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Copy attempts per chunk per round beyond the copies it needs.
const SPARE_ATTEMPTS: u32 = 2;

/// Most lost chunks remembered as already logged.
const MAX_LOGGED_LOST: usize = 100_000;

/// Why one copy failed.
enum CopyError {
    /// The source could not deliver the chunk: try another source.
    Source(String),
    /// The target failed (unreachable, full, error): try another target.
    Target(String),
}

/// The repair worker's state between rounds.
struct Repair {
    shared: Arc<Shared>,
    bucket: TokenBucket,
    /// (peer fingerprint, chunk generation) of the last survey.
    last_inputs: Option<(Fingerprint, u64)>,
    /// Rounds skipped since the last survey.
    skipped: u32,
    /// Lost chunks already logged.
    logged_lost: HashSet<ChunkId>,
    /// Under-replicated count last logged, to log changes only.
    last_logged_under: u64,
}

/// How often the start of a term checks whether every peer looks up.
const SETTLE_POLL: Duration = Duration::from_millis(100);

/// Runs the repair worker until `cancel` fires. The first round starts
/// once every known peer looks up, at most `peer_down_after` into the
/// term.
pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let bucket = TokenBucket::new(shared.config.repair_bandwidth_bytes_per_sec);
    let mut w = Repair {
        shared,
        bucket,
        last_inputs: None,
        skipped: 0,
        logged_lost: HashSet::new(),
        last_logged_under: 0,
    };
    // Peer liveness at a term's start comes from heartbeats persisted by
    // the previous leader (up to `heartbeat_persist_every` old): a live
    // peer may look down until it heartbeats to this term. Nothing is
    // judged until every known peer looks up, or `peer_down_after` has
    // passed (by then each live peer has heartbeated).
    let settle = tokio::time::Instant::now() + w.shared.config.peer_down_after;
    while tokio::time::Instant::now() < settle
        && w.shared.peers().view().peers.values().any(|p| p.liveness != Liveness::Up)
    {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SETTLE_POLL) => {}
        }
    }
    let mut force = true;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = w.round(force) => {}
        }
        let interval = w.shared.config.repair_interval.max(MIN_INTERVAL);
        force = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(interval) => false,
            _ = w.shared.repair_kick.notified() => true,
        };
    }
    debug!("repair worker stopped");
}

impl Repair {
    /// One round: survey (unless nothing changed) and copy.
    async fn round(&mut self, force: bool) {
        let Ok(vol) = self.shared.store.volume_info() else { return };
        let r = vol.replicas;
        let view = self.shared.peers().view();
        let inputs = (view.fingerprint(), self.shared.store.chunk_generation());
        if !force && self.last_inputs.as_ref() == Some(&inputs) && self.skipped < FORCED_SURVEY_EVERY {
            self.skipped += 1;
            return;
        }
        self.skipped = 0;
        self.last_inputs = Some(inputs.clone());
        let snapshot = view.clone();
        let s = match self.shared.blocking(move |st: &Store| survey(st, &snapshot, r, REPAIR_ROUND_MAX)).await
        {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "repair survey failed");
                self.last_inputs = None;
                return;
            }
        };
        self.shared.peers().set_survey(&view, &s.peers);
        self.shared.stats.note_survey(&s);
        self.shared.record_survey(crate::shared::SurveyFigures::of(inputs, &s));
        self.log_health(&s);
        if s.work.is_empty() || self.shared.config.repair_concurrency == 0 {
            return;
        }
        let concurrency = self.shared.config.repair_concurrency;
        let this = &*self;
        let view = &view;
        let copies: u64 = futures::stream::iter(s.work)
            .map(|item| this.repair_chunk(item, r, view))
            .buffer_unordered(concurrency)
            .fold(0u64, |acc, n| async move { acc + u64::from(n) })
            .await;
        if copies > 0 {
            debug!(copies, "repair round done");
        }
    }

    /// Logs newly lost chunks (once each) and changes of the backlog.
    fn log_health(&mut self, s: &Survey) {
        let lost: HashSet<ChunkId> = s.lost_ids.iter().copied().collect();
        self.logged_lost.retain(|id| lost.contains(id));
        for id in &s.lost_ids {
            if self.logged_lost.len() < MAX_LOGGED_LOST && self.logged_lost.insert(*id) {
                error!(chunk = %id.to_hex(), "chunk lost: no reachable replica (repair resumes if a holder returns)");
            }
        }
        if s.under_replicated != self.last_logged_under {
            if s.under_replicated > 0 {
                info!(
                    under_replicated = s.under_replicated,
                    lost = s.lost,
                    chunks = s.chunks,
                    "repair backlog"
                );
            } else {
                info!(chunks = s.chunks, "every chunk has its replicas");
            }
            self.last_logged_under = s.under_replicated;
        }
    }

    /// Copies chunk `item` until it has `r` good replicas or its attempts
    /// run out. Returns the copies recorded.
    async fn repair_chunk(&self, item: WorkItem, r: u32, view: &PeerView) -> u32 {
        let id = item.id;
        let len = u64::from(item.len);
        // Targets must not already hold it (down holders included: their
        // copies count again if they return).
        let mut exclude: Vec<PeerId> = item.replicas.clone();
        let mut good: Vec<PeerId> = item.replicas.iter().copied().filter(|p| view.is_good(p)).collect();
        let mut sources: Vec<(PeerId, String)> = item
            .replicas
            .iter()
            .filter_map(|p| {
                let info = view.peers.get(p)?;
                info.is_reachable().then(|| (*p, info.addr.clone()))
            })
            .collect();
        sources.shuffle(&mut rand::thread_rng());
        sources.sort_by_key(|(p, _)| view.peers.get(p).map(|i| i.liveness));
        let needed = r.saturating_sub(good.len() as u32);
        let mut attempts = needed + SPARE_ATTEMPTS;
        let mut copies = 0u32;
        while (good.len() as u32) < r && attempts > 0 {
            attempts -= 1;
            let Some((src, src_addr)) = sources.first().cloned() else {
                debug!(chunk = %id, "no source left this round");
                break;
            };
            let target = self.shared.peers().pick_repair_target(&exclude, &good, len);
            let Some(target) = target else {
                debug!(chunk = %id, good = good.len(), "no eligible repair target");
                break;
            };
            self.bucket.acquire(len).await;
            let result = {
                let _in_flight = InFlight::start(&self.shared.stats.repairs_in_flight);
                self.copy(id, &target, PeerLoc { id: src, addr: src_addr.clone(), live: true }).await
            };
            match result {
                Ok(()) => {
                    let t = target.id;
                    match self.shared.blocking(move |s: &Store| s.add_replica(id, t)).await {
                        Ok(true) => {
                            let stats = &self.shared.stats;
                            stats.repaired_total.fetch_add(1, Ordering::Relaxed);
                            stats.repaired_bytes_total.fetch_add(len, Ordering::Relaxed);
                            tracing::event!(target: "p2pfs::_events::chunk_repaired", Level::DEBUG,
                                chunk = %id, from = %src, to = %t);
                            exclude.push(t);
                            good.push(t);
                            sources.push((t, target.addr.clone()));
                            copies += 1;
                        }
                        Ok(false) => {
                            debug!(chunk = %id, "chunk left the index during its repair");
                            break;
                        }
                        Err(e) => {
                            error!(chunk = %id, error = %e, "recording a repaired replica failed");
                            break;
                        }
                    }
                }
                Err(CopyError::Source(e)) => {
                    debug!(chunk = %id, source = %src, error = %e, "repair source failed");
                    sources.retain(|(p, _)| *p != src);
                }
                Err(CopyError::Target(e)) => {
                    debug!(chunk = %id, target = %target.id, error = %e, "repair target failed");
                    exclude.push(target.id);
                }
            }
        }
        if (good.len() as u32) < r && attempts == 0 {
            debug!(chunk = %id, good = good.len(), "repair attempts used up this round");
        }
        copies
    }

    /// Asks the peer `target` to fetch chunk `id` from the peer `source`.
    async fn copy(&self, id: ChunkId, target: &PeerLoc, source: PeerLoc) -> Result<(), CopyError> {
        let pool = &self.shared.pool;
        let client = pool
            .peer(&target.addr, target.id)
            .await
            .map_err(|e| CopyError::Target(format!("connect: {e}")))?;
        let ctx = common::transport::deadline(common::config::CHUNK_DEADLINE);
        match client.fetch_from(ctx, id, source).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(PeerError::SourceFailed(e))) => Err(CopyError::Source(e)),
            Ok(Err(e)) => Err(CopyError::Target(e.to_string())),
            Err(e) => {
                pool.forget_peer(&target.addr, target.id);
                Err(CopyError::Target(e.to_string()))
            }
        }
    }
}
