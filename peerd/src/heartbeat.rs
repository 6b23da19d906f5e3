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
//!
//! The heartbeat also keeps the peer's trust current: its reply carries the
//! version of dirsvc's revocation list, and when that differs from the one
//! this peer enforces, the task fetches the list, applies it (new
//! handshakes of revoked nodes fail) and closes the connections of nodes
//! newly revoked. And when less than a third of the peer's certificate's
//! validity is left, it asks dirsvc for a renewal, writes it to the TLS
//! directory and uses it from the next handshake on.

use crate::store::ChunkStore;
use common::net::{Backoff, DirAddrs, Pool};
use common::rpc::dir::{DirError, DirServiceClient, PeerLabels, PeerRegistration, PeerUsage};
use common::rpc::peer::PeerServiceClient;
use common::tls::Tls;
use common::transport::{deadline, Connections};
use common::PeerId;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Deadline of one register call (and the longest of a heartbeat).
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// Shortest deadline of a heartbeat call.
const MIN_HEARTBEAT_DEADLINE: Duration = Duration::from_secs(2);

/// The deadline of one heartbeat every `interval`: three intervals, from
/// 2 s to 10 s. A leader that cannot answer that soon is treated as gone
/// (a new connection, the next address), so a cut-off leader costs a few
/// heartbeats, not a long deadline, before the peer finds the new one.
fn heartbeat_deadline(interval: Duration) -> Duration {
    (interval * 3).clamp(MIN_HEARTBEAT_DEADLINE, CALL_DEADLINE)
}

/// What the heartbeat task needs to know.
pub(crate) struct Heartbeat<S> {
    pub(crate) store: S,
    pub(crate) id: PeerId,
    /// `host:port` sent to dirsvc for clients to reach this peer.
    pub(crate) advertise: String,
    /// The cluster's dirsvc instances (calls go to the leader).
    pub(crate) dirsvc: Arc<DirAddrs>,
    /// Failure-domain labels sent with every registration.
    pub(crate) labels: PeerLabels,
    pub(crate) interval: Duration,
    /// This peer's TLS identity (its revocation list is updated here).
    pub(crate) tls: Arc<Tls>,
    /// Where renewed certificates are written (`None`: memory only).
    pub(crate) tls_dir: Option<PathBuf>,
    /// The data directory, where the revocation list is kept
    /// ([`crate::revoked`]).
    pub(crate) data_dir: PathBuf,
    /// Connections to dirsvc.
    pub(crate) dir_pool: Arc<Pool<DirServiceClient>>,
    /// Connections this peer accepted (closed for revoked nodes).
    pub(crate) conns: Arc<Connections>,
    /// Connections this peer made to other peers (dropped for revoked
    /// nodes).
    pub(crate) peer_pool: Arc<Pool<PeerServiceClient>>,
    /// No renewal is asked for before this instant: set after a refusal,
    /// so a dirsvc that cannot renew (no `--ca-dir`) is asked, and logged
    /// about, once per [`RENEW_RETRY`] rather than every heartbeat.
    pub(crate) renew_not_before: std::sync::Mutex<Option<Instant>>,
    /// The scrub worker's progress, sent with the usage (`None`: scrub is
    /// disabled).
    pub(crate) scrub: Option<Arc<std::sync::Mutex<crate::ScrubStats>>>,
}

/// How long after a refused renewal the peer asks again (seconds: 1 h).
/// A certificate is renewed with a third of its validity (30 of 90 days)
/// left, so hourly retries leave weeks for an operator to act.
const RENEW_RETRY: Duration = Duration::from_secs(3600);

impl<S: ChunkStore> Heartbeat<S> {
    /// Runs until `cancel` fires.
    pub(crate) async fn run(self, cancel: CancellationToken) {
        let _ = cancel.run_until_cancelled(self.run_forever()).await;
        debug!("heartbeat task stopped");
    }

    async fn run_forever(self) {
        let mut backoff = Backoff::new(crate::MIN_BACKOFF, self.interval);
        // Logged at WARN only on the first failure of a streak, so a long
        // dirsvc outage does not flood the log.
        let mut failing = false;
        loop {
            let expect = common::tls::Expect::Role(common::rpc::Role::Dirsvc);
            let (addr, client) = match self.dir_pool.connect_dir(&self.dirsvc).await {
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
            self.session(&client, &addr, &mut backoff, &mut failing).await;
            self.dir_pool.forget(&addr, expect);
            tokio::time::sleep(backoff.step()).await;
        }
    }

    /// Registers then heartbeats on one connection to `addr`; returns when
    /// the connection fails or `addr` is not the leader, and a new one is
    /// needed (the next address, or the leader it named).
    async fn session(
        &self,
        client: &DirServiceClient,
        addr: &str,
        backoff: &mut Backoff,
        failing: &mut bool,
    ) {
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
                    Ok(Err(DirError::NotLeader { leader })) => {
                        self.follow(addr, leader);
                        return;
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
                        self.dirsvc.failed(addr);
                        return;
                    }
                }
            } else {
                match client.heartbeat(deadline(heartbeat_deadline(self.interval)), self.id, usage).await {
                    Ok(Ok(reply)) => {
                        if reply.revocations != self.tls.revocations().version() {
                            self.sync_revocations(client).await;
                        }
                        if common::pki::needs_renewal(self.tls.me().not_after) && self.renewal_allowed() {
                            self.renew(client).await;
                        }
                    }
                    Ok(Err(DirError::NotFound)) => {
                        info!(dirsvc = %self.dirsvc, "dirsvc does not know this peer; registering again");
                        registered = false;
                        continue;
                    }
                    Ok(Err(DirError::NotLeader { leader })) => {
                        // A failover: the new leader has not seen this
                        // peer's registration in its memory yet.
                        self.follow(addr, leader);
                        return;
                    }
                    Ok(Err(e)) => warn!(dirsvc = %self.dirsvc, error = %e, "heartbeat refused"),
                    Err(e) => {
                        warn!(dirsvc = %self.dirsvc, error = %e, "heartbeat failed; reconnecting");
                        *failing = true;
                        self.dirsvc.failed(addr);
                        return;
                    }
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// `addr` answered that it is not the leader: go to the one it named,
    /// or to the next address while none is elected.
    fn follow(&self, addr: &str, leader: Option<String>) {
        info!(
            not_leader = addr,
            leader = leader.as_deref().unwrap_or("none yet"),
            "following the dirsvc leader"
        );
        match leader {
            Some(l) if l != addr => self.dirsvc.redirect(&l),
            _ => self.dirsvc.failed(addr),
        }
    }

    /// Fetches dirsvc's revocation list and enforces it: newly revoked
    /// nodes' connections are closed. Failures are logged; the next
    /// heartbeat tries again.
    async fn sync_revocations(&self, client: &DirServiceClient) {
        match client.revocations(deadline(CALL_DEADLINE)).await {
            Ok(Ok(list)) if list.version < self.tls.revocations().version() => {
                warn!(
                    theirs = list.version,
                    ours = self.tls.revocations().version(),
                    "dirsvc serves an older revocation list than this peer holds; keeping ours"
                );
            }
            Ok(Ok(list)) => {
                // Kept on disk first: a restart must not forget it.
                let (dir, version, nodes) = (self.data_dir.clone(), list.version, list.nodes.clone());
                match tokio::task::spawn_blocking(move || crate::revoked::save(&dir, version, &nodes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(error = %e, "cannot keep the revocation list on disk"),
                    Err(e) => warn!(error = %e, "cannot keep the revocation list on disk"),
                }
                let added = self.tls.revocations().replace(list.version, list.nodes);
                for node in &added {
                    let closed = self.conns.close_node(node);
                    self.peer_pool.forget_node(*node);
                    warn!(%node, connections_closed = closed, "node revoked by dirsvc; refused from now on");
                }
            }
            Ok(Err(e)) => warn!(error = %e, "dirsvc refused the revocation list"),
            Err(e) => debug!(error = %e, "fetching the revocation list failed"),
        }
    }

    /// Whether a renewal may be asked for now (not within [`RENEW_RETRY`]
    /// of a refusal).
    fn renewal_allowed(&self) -> bool {
        let not_before = *self.renew_not_before.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        not_before.is_none_or(|t| Instant::now() >= t)
    }

    /// Asks dirsvc for a renewed certificate and starts using it (writing
    /// it to the TLS directory first). Failures are logged; the next
    /// heartbeat tries again.
    async fn renew(&self, client: &DirServiceClient) {
        match client.renew_certificate(deadline(CALL_DEADLINE)).await {
            Ok(Ok(pem)) => {
                let saved = match &self.tls_dir {
                    Some(d) => common::pki::NodeFiles::save_cert(d, &pem).map_err(|e| e.to_string()),
                    None => Ok(()),
                };
                match saved.and_then(|()| self.tls.set_cert(&pem).map_err(|e| e.to_string())) {
                    Ok(c) => info!(not_after = ?c.not_after, "certificate renewed"),
                    Err(e) => warn!(error = %e, "cannot use the renewed certificate"),
                }
            }
            Ok(Err(e)) => {
                warn!(
                    error = %e,
                    not_after = ?self.tls.me().not_after,
                    retry_secs = RENEW_RETRY.as_secs(),
                    "dirsvc refused to renew this peer's certificate"
                );
                *self.renew_not_before.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Instant::now() + RENEW_RETRY);
            }
            Err(e) => debug!(error = %e, "certificate renewal call failed"),
        }
    }

    /// Current usage; if the store cannot say, zeros (logged) so the peer
    /// still shows as alive.
    async fn current_usage(&self) -> PeerUsage {
        let mut usage = match self.store.usage().await {
            Ok(u) => u,
            Err(e) => {
                warn!(error = %e, "cannot read store usage for heartbeat");
                PeerUsage::default()
            }
        };
        usage.scrub = self.scrub.as_ref().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).progress());
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_deadline_is_three_intervals_within_two_to_ten_seconds() {
        assert_eq!(heartbeat_deadline(Duration::from_millis(300)), Duration::from_secs(2));
        assert_eq!(heartbeat_deadline(Duration::from_secs(2)), Duration::from_secs(6));
        assert_eq!(heartbeat_deadline(Duration::from_secs(60)), CALL_DEADLINE);
    }
}
