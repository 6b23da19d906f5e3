//! Registration with dirsvc and the periodic heartbeat.
//!
//! One task per peer. It (re)connects to dirsvc, registers the peer (id,
//! advertised address, usage), then sends a heartbeat with current usage
//! every interval. It never gives up: if dirsvc cannot be reached, or the
//! connection breaks, it retries with exponential backoff (from 50 ms,
//! capped at the heartbeat interval) and registers again on the new
//! connection, since a restarted dirsvc may have lost nothing but must learn
//! the address anyway. A heartbeat answered `NotFound` also leads to a new
//! registration. The task ends only when its cancellation token fires.

use crate::store::ChunkStore;
use common::rpc::dir::{DirError, DirServiceClient, PeerRegistration, PeerUsage};
use common::transport::{deadline, dir_client};
use common::PeerId;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Deadline of one register or heartbeat call.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// First retry delay after a failure.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// What the heartbeat task needs to know.
pub(crate) struct Heartbeat<S> {
    pub(crate) store: S,
    pub(crate) id: PeerId,
    /// `host:port` sent to dirsvc for clients to reach this peer.
    pub(crate) advertise: String,
    /// dirsvc's `host:port`.
    pub(crate) dirsvc: String,
    pub(crate) interval: Duration,
}

/// Exponential backoff between `MIN_BACKOFF` and a cap.
struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    fn new(cap: Duration) -> Self {
        let cap = cap.max(MIN_BACKOFF);
        Backoff { next: MIN_BACKOFF, cap }
    }

    fn reset(&mut self) {
        self.next = MIN_BACKOFF;
    }

    /// The delay to wait now; doubles the following one.
    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        d
    }
}

impl<S: ChunkStore> Heartbeat<S> {
    /// Runs until `cancel` fires.
    pub(crate) async fn run(self, cancel: CancellationToken) {
        let _ = cancel.run_until_cancelled(self.run_forever()).await;
        debug!("heartbeat task stopped");
    }

    async fn run_forever(self) {
        let mut backoff = Backoff::new(self.interval);
        // Logged at WARN only on the first failure of a streak, so a long
        // dirsvc outage does not flood the log.
        let mut failing = false;
        loop {
            let client = match dir_client(&self.dirsvc).await {
                Ok(c) => c,
                Err(e) => {
                    if !failing {
                        warn!(dirsvc = %self.dirsvc, error = %e, "cannot reach dirsvc; retrying");
                        failing = true;
                    } else {
                        debug!(dirsvc = %self.dirsvc, error = %e, "cannot reach dirsvc");
                    }
                    tokio::time::sleep(backoff.step()).await;
                    continue;
                }
            };
            self.session(&client, &mut backoff, &mut failing).await;
            tokio::time::sleep(backoff.step()).await;
        }
    }

    /// Registers then heartbeats on one connection; returns when the
    /// connection fails and a new one is needed.
    async fn session(&self, client: &DirServiceClient, backoff: &mut Backoff, failing: &mut bool) {
        let mut registered = false;
        loop {
            let usage = self.current_usage().await;
            if !registered {
                let reg = PeerRegistration { id: self.id, addr: self.advertise.clone(), usage };
                match client.register_peer(deadline(CALL_DEADLINE), reg).await {
                    Ok(Ok(())) => {
                        info!(dirsvc = %self.dirsvc, addr = %self.advertise, "registered with dirsvc");
                        registered = true;
                        *failing = false;
                        backoff.reset();
                    }
                    Ok(Err(e)) => {
                        warn!(dirsvc = %self.dirsvc, error = %e, "dirsvc refused registration; retrying");
                        tokio::time::sleep(backoff.step()).await;
                        continue;
                    }
                    Err(e) => {
                        if !*failing {
                            warn!(dirsvc = %self.dirsvc, error = %e, "registration call failed; reconnecting");
                            *failing = true;
                        }
                        return;
                    }
                }
            } else {
                match client.heartbeat(deadline(CALL_DEADLINE), self.id, usage).await {
                    Ok(Ok(())) => {}
                    Ok(Err(DirError::NotFound)) => {
                        info!(dirsvc = %self.dirsvc, "dirsvc does not know this peer; registering again");
                        registered = false;
                        continue;
                    }
                    Ok(Err(e)) => warn!(dirsvc = %self.dirsvc, error = %e, "heartbeat refused"),
                    Err(e) => {
                        warn!(dirsvc = %self.dirsvc, error = %e, "heartbeat failed; reconnecting");
                        *failing = true;
                        return;
                    }
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// Current usage; if the store cannot say, zeros (logged) so the peer
    /// still shows as alive.
    async fn current_usage(&self) -> PeerUsage {
        match self.store.usage().await {
            Ok(u) => u,
            Err(e) => {
                warn!(error = %e, "cannot read store usage for heartbeat");
                PeerUsage::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(300));
        let steps: Vec<_> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.step().as_millis(), 50);
    }
}
