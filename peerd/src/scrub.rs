//! The `scrub` worker: re-verifies every stored chunk, slowly and forever.
//!
//! Disks rot silently; reads catch rot only in chunks someone reads. Scrub
//! walks all chunks in ascending id order ([`ChunkStore::list_chunks`], pages
//! of 1000) and re-hashes each file ([`ChunkStore::verify`], on tokio's
//! blocking pool, one chunk at a time). A chunk that fails is handled
//! exactly as on the read path: moved to `corrupted/<id>.<secs>`, logged at
//! WARN with its id by the store, and queued for `DirService::report_corrupt`
//! (see [`crate::report`]); dirsvc then repairs it from another replica.
//!
//! # Pace
//!
//! - Rate: at most `bytes_per_sec` bytes hashed per second, averaged from
//!   the start of the pass. After each chunk the worker sleeps until the
//!   bytes hashed so far are due at that rate, so it holds one blocking
//!   thread for one chunk (≈ 0.3 ms per MiB) at a time and leaves the disk
//!   and the cores to foreground requests in between. If it falls behind
//!   (a busy disk), it banks at most one second of credit, so it never
//!   bursts to catch up. `bytes_per_sec = 0` disables scrub.
//! - Passes: one full pass, then a pause of `interval` between the end of a
//!   pass and the start of the next.
//! - Restarts: the position in the current pass and the end time of the
//!   last pass are saved to `<data_dir>/scrub-state` (every 10 s while
//!   scrubbing, at the end of a pass and on shutdown; written atomically).
//!   A restarted peer resumes the pass where it was, or waits out the rest
//!   of the pause, so a peer that restarts often still completes passes.
//!
//! # Observability
//!
//! [`ScrubStats`] (via `PeerdHandle::scrub_stats`) counts chunks and bytes
//! verified and corrupt chunks found since start, and summarises the last
//! complete pass; each pass ends with one INFO line giving its chunks,
//! bytes, corrupt count, duration and the rate achieved.

use crate::error::Error;
use crate::fsutil::write_atomic;
use crate::store::{ChunkStore, Verified};
use common::rpc::dir::ScrubProgress;
use common::time::Timestamp;
use common::ChunkId;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Default scrub rate limit: 64 MiB/s (a 1 TB peer is re-verified in about
/// 4.5 hours while leaving most of a disk's bandwidth to clients).
pub const DEFAULT_SCRUB_BYTES_PER_SEC: u64 = 64 << 20;

/// Default pause between the end of one scrub pass and the start of the
/// next: one hour.
pub const DEFAULT_SCRUB_INTERVAL: Duration = Duration::from_secs(3600);

/// Name of the scrub progress file inside the data directory.
pub const SCRUB_STATE_FILE: &str = "scrub-state";

/// Chunks listed per page.
const PAGE: u32 = 1000;

/// How often the position in a pass is saved while scrubbing.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

/// Most time the pacer lets the worker fall behind before it forgets the
/// debt (so it never bursts above the rate for longer than this).
const MAX_CREDIT: Duration = Duration::from_secs(1);

/// Longest wait before retrying a pass that failed (listing error).
const RETRY_FAILED_PASS: Duration = Duration::from_secs(60);

/// Scrub counters since the peer started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScrubStats {
    /// Passes completed.
    pub passes_completed: u64,
    /// Chunks re-hashed (intact and corrupt).
    pub chunks_verified: u64,
    /// Bytes re-hashed.
    pub bytes_verified: u64,
    /// Chunks found corrupt (moved aside and reported).
    pub corrupt_found: u64,
    /// The last complete pass, if any.
    pub last_pass: Option<PassSummary>,
    /// Whether a pass is under way.
    pub running: bool,
    /// Chunks checked in the pass under way (or the last one), counting
    /// the part before a resumed pass's saved position as checked
    /// (estimated from the position).
    pub pass_checked: u64,
    /// Chunks stored when the pass under way (or the last one) started.
    pub pass_total: u64,
    /// When the pass under way started or was resumed.
    pub pass_started: Option<Timestamp>,
    /// When the last complete pass ended (also one before a restart, as
    /// saved in the state file).
    pub last_pass_end: Option<Timestamp>,
}

impl ScrubStats {
    /// The progress a heartbeat reports.
    pub fn progress(&self) -> ScrubProgress {
        ScrubProgress {
            running: self.running,
            checked: self.pass_checked,
            total: self.pass_total,
            pass_started: self.pass_started,
            last_pass_end: self.last_pass_end,
            passes: self.passes_completed,
            corrupt_found: self.corrupt_found,
        }
    }
}

/// The share of a pass done once chunk `cursor` is checked, of `total`
/// chunks: chunk ids are BLAKE3 hashes, uniformly spread, and a pass goes
/// in ascending id order, so the first 8 bytes of the cursor tell it.
fn checked_before(cursor: Option<ChunkId>, total: u64) -> u64 {
    let Some(c) = cursor else { return 0 };
    let mut head = [0u8; 8];
    head.copy_from_slice(&c.0[..8]);
    // total × head / 2⁶⁴, below total for any head.
    ((u128::from(total) * u128::from(u64::from_be_bytes(head))) >> 64) as u64
}

/// One complete scrub pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassSummary {
    /// Chunks re-hashed in the pass.
    pub chunks: u64,
    /// Bytes re-hashed in the pass.
    pub bytes: u64,
    /// Corrupt chunks found in the pass.
    pub corrupt: u64,
    /// Wall time from the start of the pass (or its resumption after a
    /// restart) to its end.
    pub duration: Duration,
    /// Whether the pass was resumed from a saved position (so it covered
    /// only part of the chunks in this process).
    pub resumed: bool,
}

impl PassSummary {
    /// Bytes per second achieved over the pass (0 for an empty pass).
    pub fn bytes_per_sec(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs > 0.0 {
            self.bytes as f64 / secs
        } else {
            0.0
        }
    }
}

/// Progress saved in [`SCRUB_STATE_FILE`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ScrubState {
    /// Last chunk verified in the pass under way; `None` between passes.
    cursor: Option<ChunkId>,
    /// When the last complete pass ended, Unix seconds.
    last_pass_end: Option<i64>,
}

/// First line of the state file: the format and its version.
const STATE_MAGIC: &str = "p2pfs scrub state v1";

/// Longest scrub state file read, in bytes (a valid one has under 150).
pub const MAX_STATE_FILE: usize = 4096;

/// Whether the bytes of a scrub state file hold a state a restarted peer
/// resumes from (`false`: it starts a new pass, as for a missing file).
/// Reads nothing else and never panics, whatever the bytes; the scrub
/// worker's own loading goes through the same parser.
pub fn state_file_is_valid(bytes: &[u8]) -> bool {
    bytes.len() <= MAX_STATE_FILE && std::str::from_utf8(bytes).ok().and_then(ScrubState::parse).is_some()
}

impl ScrubState {
    /// Text form: the magic line, `cursor <64 hex | ->`, `last_pass_end
    /// <unix secs | ->`, one per line.
    fn render(&self) -> String {
        let cursor = self.cursor.map_or_else(|| "-".to_string(), |c| c.to_hex());
        let end = self.last_pass_end.map_or_else(|| "-".to_string(), |e| e.to_string());
        format!("{STATE_MAGIC}\ncursor {cursor}\nlast_pass_end {end}\n")
    }

    /// Parses [`ScrubState::render`]'s form; `None` if malformed.
    fn parse(text: &str) -> Option<ScrubState> {
        let mut lines = text.lines();
        if lines.next()? != STATE_MAGIC {
            return None;
        }
        let mut state = ScrubState::default();
        for line in lines {
            let (key, value) = line.split_once(' ')?;
            match (key, value) {
                (_, "-") => {}
                ("cursor", v) => state.cursor = Some(v.parse().ok()?),
                ("last_pass_end", v) => state.last_pass_end = Some(v.parse().ok()?),
                _ => return None,
            }
        }
        Some(state)
    }
}

/// How a pass ended.
enum PassEnd {
    Complete,
    Cancelled,
    Failed(Error),
}

/// The scrub worker over one store. Owned by [`crate::PeerdHandle`].
pub(crate) struct Scrub<S> {
    pub(crate) store: S,
    /// Rate limit in bytes per second; 0 disables scrub.
    pub(crate) bytes_per_sec: u64,
    /// Pause between passes.
    pub(crate) interval: Duration,
    /// Where progress is saved (`None`: not saved).
    pub(crate) state_file: Option<PathBuf>,
    pub(crate) stats: Arc<Mutex<ScrubStats>>,
}

/// Sleeps for `d` unless `cancel` fires first; returns whether it fired.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    if d.is_zero() {
        return cancel.is_cancelled();
    }
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Keeps the hashing rate at or below a limit, averaged from a start
/// instant, with at most [`MAX_CREDIT`] of catch-up.
struct Pacer {
    rate: u64,
    start: Instant,
    bytes: u64,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        Pacer { rate, start: Instant::now(), bytes: 0 }
    }

    /// Accounts `n` more bytes and sleeps until they are due; returns
    /// whether `cancel` fired meanwhile.
    async fn pace(&mut self, n: u64, cancel: &CancellationToken) -> bool {
        self.bytes = self.bytes.saturating_add(n);
        // Saturates rather than panics for absurd byte counts.
        let due =
            Duration::try_from_secs_f64(self.bytes as f64 / self.rate.max(1) as f64).unwrap_or(Duration::MAX);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            sleep_or_cancel(due - elapsed, cancel).await
        } else {
            if elapsed - due > MAX_CREDIT {
                self.start = Instant::now();
                self.bytes = 0;
            }
            cancel.is_cancelled()
        }
    }
}

impl<S: ChunkStore> Scrub<S> {
    /// Runs passes until `cancel` fires; returns at once if disabled.
    pub(crate) async fn run(self, cancel: CancellationToken) {
        if self.bytes_per_sec == 0 {
            info!("scrub disabled (rate limit 0)");
            return;
        }
        info!(
            limit_mib_per_sec = self.bytes_per_sec as f64 / (1u64 << 20) as f64,
            interval_secs = self.interval.as_secs_f64(),
            "scrub worker started"
        );
        let mut state = self.load_state().await;
        self.lock_stats().last_pass_end = state.last_pass_end.map(|secs| Timestamp { secs, nanos: 0 });
        let mut wait = match state {
            ScrubState { cursor: None, last_pass_end: Some(end) } => {
                let left = end.saturating_add(self.interval.as_secs() as i64).saturating_sub(unix_now());
                // Clamped: a clock that jumped back must not stall scrub.
                Duration::from_secs(left.max(0) as u64).min(self.interval)
            }
            _ => Duration::ZERO,
        };
        loop {
            if sleep_or_cancel(wait, &cancel).await {
                break;
            }
            let end = self.pass(&mut state, &cancel).await;
            self.lock_stats().running = false;
            match end {
                PassEnd::Complete => wait = self.interval,
                PassEnd::Cancelled => break,
                PassEnd::Failed(e) => {
                    warn!(error = %e, "scrub pass failed; will retry");
                    self.save_state(state).await;
                    wait = self.interval.min(RETRY_FAILED_PASS);
                }
            }
        }
        self.save_state(state).await;
        debug!("scrub worker stopped");
    }

    /// One pass from `state.cursor` to the last chunk.
    async fn pass(&self, state: &mut ScrubState, cancel: &CancellationToken) -> PassEnd {
        let resumed = state.cursor.is_some();
        if resumed {
            debug!(after = ?state.cursor, "scrub pass resumed");
        } else {
            debug!("scrub pass started");
        }
        let started = Instant::now();
        let total = match self.store.usage().await {
            Ok(u) => u.chunks,
            Err(e) => {
                debug!(error = %e, "scrub cannot count the stored chunks; progress shows no total");
                0
            }
        };
        {
            let mut s = self.lock_stats();
            s.running = true;
            s.pass_total = total;
            s.pass_checked = checked_before(state.cursor, total);
            s.pass_started = Some(Timestamp::now());
            s.last_pass_end = state.last_pass_end.map(|secs| Timestamp { secs, nanos: 0 });
        }
        let mut pacer = Pacer::new(self.bytes_per_sec);
        let mut last_checkpoint = Instant::now();
        let (mut chunks, mut bytes, mut corrupt) = (0u64, 0u64, 0u64);
        loop {
            let page = match self.store.list_chunks(state.cursor, PAGE).await {
                Ok(p) => p,
                Err(e) => return PassEnd::Failed(e),
            };
            if page.is_empty() {
                break;
            }
            for (id, _) in page {
                if cancel.is_cancelled() {
                    return PassEnd::Cancelled;
                }
                let checked = match self.store.verify(id).await {
                    Ok(Verified::Intact { len }) => Some((len, false)),
                    // The store has logged it (WARN, with the id), moved it
                    // aside and queued the report.
                    Ok(Verified::Corrupt { len, .. }) => Some((len, true)),
                    // Deleted since it was listed.
                    Err(Error::NotFound(_)) => None,
                    Err(e) => {
                        warn!(chunk = %id.to_hex(), error = %e, "scrub cannot verify chunk; skipped");
                        None
                    }
                };
                let n = checked.map_or(0, |(n, _)| n);
                if let Some((n, bad)) = checked {
                    chunks += 1;
                    bytes += n;
                    corrupt += u64::from(bad);
                    let mut s = self.lock_stats();
                    s.chunks_verified += 1;
                    s.bytes_verified += n;
                    s.corrupt_found += u64::from(bad);
                    s.pass_checked += 1;
                }
                state.cursor = Some(id);
                if pacer.pace(n, cancel).await {
                    return PassEnd::Cancelled;
                }
                if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                    self.save_state(*state).await;
                    last_checkpoint = Instant::now();
                }
            }
        }
        let summary = PassSummary { chunks, bytes, corrupt, duration: started.elapsed(), resumed };
        *state = ScrubState { cursor: None, last_pass_end: Some(unix_now()) };
        self.save_state(*state).await;
        {
            let mut s = self.lock_stats();
            s.passes_completed += 1;
            s.last_pass = Some(summary);
            s.running = false;
            s.pass_started = None;
            s.last_pass_end = state.last_pass_end.map(|secs| Timestamp { secs, nanos: 0 });
        }
        info!(
            chunks,
            bytes,
            corrupt,
            resumed,
            secs = summary.duration.as_secs_f64(),
            mib_per_sec = summary.bytes_per_sec() / (1u64 << 20) as f64,
            limit_mib_per_sec = self.bytes_per_sec as f64 / (1u64 << 20) as f64,
            "scrub pass complete"
        );
        PassEnd::Complete
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, ScrubStats> {
        // Only counter updates happen under the lock.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The saved state, or a fresh one if there is none or it is malformed
    /// (logged).
    async fn load_state(&self) -> ScrubState {
        let Some(path) = self.state_file.clone() else {
            return ScrubState::default();
        };
        let read = tokio::task::spawn_blocking({
            let path = path.clone();
            move || crate::fsutil::read_small(&path, MAX_STATE_FILE)
        })
        .await;
        match read {
            Ok(Ok(bytes)) => {
                std::str::from_utf8(&bytes).ok().and_then(ScrubState::parse).unwrap_or_else(|| {
                    warn!(path = %path.display(), "malformed scrub state; starting a new pass");
                    ScrubState::default()
                })
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => ScrubState::default(),
            Ok(Err(e)) => {
                warn!(path = %path.display(), error = %e, "cannot read scrub state; starting a new pass");
                ScrubState::default()
            }
            Err(e) => {
                warn!(error = %e, "scrub state task failed; starting a new pass");
                ScrubState::default()
            }
        }
    }

    /// Saves `state` atomically; a failure is logged (scrub goes on, and at
    /// worst repeats part of a pass after a restart).
    async fn save_state(&self, state: ScrubState) {
        let Some(path) = self.state_file.clone() else {
            return;
        };
        let text = state.render();
        let written = tokio::task::spawn_blocking(move || write_atomic(&path, text.as_bytes())).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot save scrub state"),
            Err(e) => warn!(error = %e, "scrub state task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_pass_counts_the_chunks_before_its_position() {
        assert_eq!(checked_before(None, 1000), 0);
        let mut half = [0u8; 32];
        half[0] = 0x80;
        assert_eq!(checked_before(Some(ChunkId(half)), 1000), 500);
        assert_eq!(checked_before(Some(ChunkId([0xff; 32])), 1000), 999);
    }

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        for state in [
            ScrubState::default(),
            ScrubState { cursor: Some(ChunkId::of(b"x")), last_pass_end: None },
            ScrubState { cursor: None, last_pass_end: Some(1_800_000_000) },
        ] {
            assert_eq!(ScrubState::parse(&state.render()), Some(state));
        }
        assert_eq!(ScrubState::parse(""), None);
        assert_eq!(ScrubState::parse("p2pfs scrub state v2\ncursor -\n"), None);
        assert_eq!(ScrubState::parse(&format!("{STATE_MAGIC}\ncursor zz\n")), None);
        assert_eq!(ScrubState::parse(&format!("{STATE_MAGIC}\nsomething else\n")), None);
        assert!(state_file_is_valid(ScrubState::default().render().as_bytes()));
        assert!(!state_file_is_valid(&[0xff, 0x00]));
        assert!(!state_file_is_valid(&vec![b'\n'; MAX_STATE_FILE + 1]));
    }

    #[tokio::test]
    async fn pacer_holds_the_rate_and_banks_at_most_a_second() {
        let cancel = CancellationToken::new();
        let mut p = Pacer::new(1000);
        let t = Instant::now();
        for _ in 0..4 {
            assert!(!p.pace(100, &cancel).await);
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(390), "400 bytes at 1000 B/s took {took:?}");

        // Far behind (as after a slow disk): the debt is forgotten, so the
        // next bytes are paced again rather than let through at once.
        let mut p = Pacer::new(1000);
        p.start -= Duration::from_secs(5);
        assert!(!p.pace(0, &cancel).await);
        let t = Instant::now();
        assert!(!p.pace(200, &cancel).await);
        assert!(t.elapsed() >= Duration::from_millis(190));
    }

    #[tokio::test]
    async fn pacer_sleep_ends_on_cancel() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut p = Pacer::new(1);
        let t = Instant::now();
        assert!(p.pace(1_000_000, &cancel).await);
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
