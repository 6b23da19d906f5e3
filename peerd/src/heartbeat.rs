//! Registration with dirsvc and the periodic heartbeat.
//!
//! One task per peer. It (re)connects to dirsvc, registers the peer (id,
//! advertised address, usage), then sends a heartbeat with current usage
//! every interval. It never gives up: if dirsvc cannot be reached, or the
//! connection breaks, it retries with exponential backoff (from 50 ms,
//! capped at the heartbeat interval) and registers again on the new
//! connection, since a restarted dirsvc may have lost nothing but must learn
//! the address anyway. A heartbeat answered `NotFound` also leads to a new
//! registration. A dirsvc that hangs is treated like one that is down: every
//! call has a deadline, and a missed deadline means a new connection. The
//! task ends only when its cancellation token fires.

use crate::backoff::Backoff;
use crate::store::ChunkStore;
use common::rpc::dir::{DirError, DirServiceClient, PeerLabels, PeerRegistration, PeerUsage};
use common::transport::{deadline, dir_client};
use common::PeerId;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Deadline of one register or heartbeat call.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// What the heartbeat task needs to know.
pub(crate) struct Heartbeat<S> {
    pub(crate) store: S,
    pub(crate) id: PeerId,
    /// `host:port` sent to dirsvc for clients to reach this peer.
    pub(crate) advertise: String,
    /// dirsvc's `host:port`.
    pub(crate) dirsvc: String,
    /// Failure-domain labels sent with every registration.
    pub(crate) labels: PeerLabels,
    pub(crate) interval: Duration,
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
                let reg = PeerRegistration {
                    id: self.id,
                    addr: self.advertise.clone(),
                    usage,
                    labels: self.labels.clone(),
                };
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
