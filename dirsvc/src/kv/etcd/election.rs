//! Leader election on etcd, with fencing: which of several dirsvc sharing
//! one etcd cluster may write.
//!
//! A candidate holds a lease of `ttl` seconds, kept alive every `ttl / 3`.
//! It campaigns with one transaction: "if the election key does not exist
//! (`create_revision == 0`), put my advertised address there, attached to
//! my lease". The winner sets its engine's fence to "the election key's
//! create revision is still the one I created" ([`Fence::Leader`]), so
//! every commit it makes after its lease lapsed, was revoked or a new
//! leader was elected fails in etcd itself with [`Error::NotLeader`],
//! whatever this process believes. Losers watch the key: they learn the
//! leader's address (to redirect clients) and campaign again when the key
//! is deleted (its lease revoked or expired).
//!
//! The state is published on a `tokio::sync::watch` channel
//! ([`Election::state`]): a leader learns there that it lost (its lease
//! could not be renewed within `ttl`, or the key is gone or someone
//! else's), at which point its fence is closed locally too.

use super::{Failure, Fence, Inner};
use crate::error::Error;
use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Where this process stands in an election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderState {
    /// Not the leader. `leader`: the current leader's advertised address,
    /// if one is known.
    Follower {
        /// The leader's advertised RPC address.
        leader: Option<String>,
    },
    /// This process is the leader since the election key's create
    /// `revision`.
    Leader {
        /// The election key's create revision (the fence).
        revision: i64,
    },
}

/// One candidate's lease and the tasks that serve it.
struct Term {
    lease: i64,
    tasks: Vec<JoinHandle<()>>,
}

impl Term {
    fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Shared {
    inner: Arc<Inner>,
    key: Vec<u8>,
    address: String,
    ttl: Duration,
    state: watch::Sender<LeaderState>,
    term: Mutex<Option<Term>>,
}

impl Shared {
    fn term(&self) -> std::sync::MutexGuard<'_, Option<Term>> {
        self.term.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Steps down if `lease` is still the current term's: closes the fence,
    /// publishes the loss, stops the keep-alive and revokes the lease.
    fn lose(self: &Arc<Self>, lease: i64, why: &str) {
        let term = {
            let mut t = self.term();
            if t.as_ref().map(|t| t.lease) != Some(lease) {
                return;
            }
            t.take()
        };
        self.inner.set_fence(Fence::Closed);
        self.state.send_replace(LeaderState::Follower { leader: None });
        warn!(lease, reason = why, "etcd election: leadership lost");
        if let Some(term) = term {
            let sh = self.clone();
            // Revoke from a fresh task: this may run inside one of the
            // term's own tasks, which `stop` aborts.
            self.inner.handle.spawn(async move {
                let _ = revoke(&sh.inner, lease).await;
            });
            term.stop();
        }
    }
}

/// A leader election (see the module documentation). Made by
/// [`super::EtcdEngine::election`]; share it behind an `Arc`.
pub struct Election {
    sh: Arc<Shared>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("key", &String::from_utf8_lossy(&self.sh.key))
            .field("address", &self.sh.address)
            .field("state", &*self.sh.state.borrow())
            .finish_non_exhaustive()
    }
}

/// Cancels a campaign's lease unless the campaign finished.
struct Abandon {
    sh: Arc<Shared>,
    lease: Option<i64>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let t = self.sh.term().take();
            if let Some(t) = t {
                t.stop();
            }
            let inner = self.sh.inner.clone();
            self.sh.inner.handle.spawn(async move {
                let _ = revoke(&inner, lease).await;
            });
        }
    }
}

/// A watch of `key` from revision `from`, on the first member that takes
/// it.
async fn watch_from(sh: &Shared, key: &[u8], from: i64) -> Result<etcd_client::WatchStream, Failure> {
    let opts = WatchOptions::new().with_start_revision(from);
    sh.inner
        .call(|m| {
            let mut w = m.client.watch_client();
            let (key, opts) = (key.to_vec(), opts.clone());
            async move { w.watch(key, Some(opts)).await }
        })
        .await
}

async fn revoke(inner: &Inner, lease: i64) -> Result<(), Failure> {
    inner
        .call(|m| {
            let mut c = m.client.lease_client();
            async move { c.revoke(lease).await }
        })
        .await
        .map(|_| ())
}

impl Election {
    pub(crate) fn new(inner: Arc<Inner>, name: &str, address: String, ttl: Duration) -> Election {
        inner.set_fence(Fence::Closed);
        let key = inner.election_key(name);
        let (state, _) = watch::channel(LeaderState::Follower { leader: None });
        let ttl = ttl.max(Duration::from_secs(1));
        Election { sh: Arc::new(Shared { inner, key, address, ttl, state, term: Mutex::new(None) }) }
    }

    /// This process's state, as it changes.
    pub fn state(&self) -> watch::Receiver<LeaderState> {
        self.sh.state.subscribe()
    }

    /// Whether this process leads now (as far as it knows; etcd enforces
    /// the fence regardless).
    pub fn is_leader(&self) -> bool {
        matches!(*self.sh.state.borrow(), LeaderState::Leader { .. })
    }

    /// The lease this process campaigns or leads with, if any.
    pub fn lease(&self) -> Option<i64> {
        self.sh.term().as_ref().map(|t| t.lease)
    }

    /// The current leader's advertised address, read from etcd
    /// (linearizable), or `None` if there is no leader.
    ///
    /// Errors: [`Error::Unavailable`] if no member answers.
    pub async fn leader(&self) -> Result<Option<String>, Error> {
        let key = self.sh.key.clone();
        let mut resp = self
            .sh
            .inner
            .call(|m| super::kv_get(m, key.clone(), None))
            .await
            .map_err(|f| super::unavailable(&f))?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Campaigns until this process is the leader; returns the election
    /// key's create revision (its fence). While waiting, the state says
    /// who leads. Cancel it by dropping the future: the lease it made is
    /// revoked. Calling it while leading returns at once.
    ///
    /// Errors: none of its own (it retries while etcd is unreachable); a
    /// caller bounds it with a timeout.
    pub async fn campaign(&self) -> Result<i64, Error> {
        if let LeaderState::Leader { revision } = *self.sh.state.borrow() {
            return Ok(revision);
        }
        let sh = &self.sh;
        loop {
            let lease = match self.grant().await {
                Ok(l) => l,
                Err(f) => {
                    debug!(error = f.message(), "etcd election: lease grant failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut abandon = Abandon { sh: sh.clone(), lease: Some(lease) };
            match self.contend(lease).await {
                Some(revision) => {
                    abandon.lease = None;
                    return Ok(revision);
                }
                // The lease lapsed while waiting: start over with a new one.
                None => continue,
            }
        }
    }

    /// Grants a lease and starts keeping it alive.
    async fn grant(&self) -> Result<i64, Failure> {
        let sh = &self.sh;
        let secs = sh.ttl.as_secs() as i64;
        let resp = sh
            .inner
            .call(|m| {
                let mut c = m.client.lease_client();
                async move { c.grant(secs, None).await }
            })
            .await?;
        let lease = resp.id();
        let keeper = sh.inner.handle.spawn(keep_alive(sh.clone(), lease));
        let old = sh.term().replace(Term { lease, tasks: vec![keeper] });
        if let Some(old) = old {
            old.stop();
        }
        Ok(lease)
    }

    /// Tries to take the key with `lease`, waiting while someone else holds
    /// it. `Some(revision)` once won; `None` if the lease lapsed.
    async fn contend(&self, lease: i64) -> Option<i64> {
        let sh = &self.sh;
        loop {
            if sh.term().as_ref().map(|t| t.lease) != Some(lease) {
                return None;
            }
            let txn = Txn::new()
                .when([Compare::create_revision(sh.key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    sh.key.clone(),
                    sh.address.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(sh.key.clone(), None)]);
            let resp = match sh.inner.call(|m| super::kv_txn(m, txn.clone())).await {
                Ok(r) => r,
                Err(Failure::Refused(m)) => {
                    // Most likely "requested lease not found": it expired.
                    debug!(error = %m, "etcd election: campaign refused; starting over with a new lease");
                    lapse_campaign(sh, lease);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return None;
                }
                Err(f) => {
                    debug!(error = f.message(), "etcd election: campaign failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let header_rev = resp.header().map_or(0, |h| h.revision());
            let holder = if resp.succeeded() {
                None
            } else {
                resp.op_responses().into_iter().find_map(|r| match r {
                    etcd_client::TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
                    _ => None,
                })
            };
            let won = match &holder {
                None if resp.succeeded() => Some(header_rev),
                // Ours already (an earlier attempt's answer was lost).
                Some(kv) if kv.lease() == lease => Some(kv.create_revision()),
                _ => None,
            };
            if let Some(revision) = won {
                sh.inner.set_fence(Fence::Leader { key: sh.key.clone(), revision });
                sh.state.send_replace(LeaderState::Leader { revision });
                let monitor = sh.inner.handle.spawn(monitor(sh.clone(), lease, revision));
                if let Some(t) = sh.term().as_mut() {
                    t.tasks.push(monitor);
                }
                info!(revision, address = %sh.address, "etcd election: won");
                return Some(revision);
            }
            let Some(kv) = holder else { continue };
            let leader = String::from_utf8_lossy(kv.value()).into_owned();
            sh.state.send_replace(LeaderState::Follower { leader: Some(leader) });
            // Wait for the key to go away (or change hands), then retry.
            self.await_change(header_rev + 1, lease).await;
        }
    }

    /// Watches the key from `from` until it is deleted (or the watch
    /// breaks, or our lease lapsed), publishing leader changes.
    async fn await_change(&self, from: i64, lease: i64) {
        let sh = &self.sh;
        let key = sh.key.clone();
        let stream = watch_from(sh, &key, from).await;
        let Ok(mut stream) = stream else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        };
        loop {
            if sh.term().as_ref().map(|t| t.lease) != Some(lease) {
                return;
            }
            // Wake up now and then to notice a lapsed lease.
            let msg = match tokio::time::timeout(sh.ttl, stream.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(m))) => m,
                Ok(_) => return,
            };
            if msg.canceled() {
                return;
            }
            for ev in msg.events() {
                match ev.event_type() {
                    EventType::Delete => return,
                    EventType::Put => {
                        if let Some(kv) = ev.kv() {
                            let leader = String::from_utf8_lossy(kv.value()).into_owned();
                            sh.state.send_replace(LeaderState::Follower { leader: Some(leader) });
                        }
                    }
                }
            }
        }
    }

    /// Gives up leadership (or the campaign's lease): closes the fence and
    /// revokes the lease, so the key is deleted and another candidate can
    /// win at once.
    ///
    /// Errors: [`Error::Unavailable`] if etcd could not be told (the lease
    /// then lapses after its TTL).
    pub async fn resign(&self) -> Result<(), Error> {
        let term = self.sh.term().take();
        self.sh.inner.set_fence(Fence::Closed);
        self.sh.state.send_replace(LeaderState::Follower { leader: None });
        if let Some(term) = term {
            term.stop();
            revoke(&self.sh.inner, term.lease).await.map_err(|f| super::unavailable(&f))?;
            info!(lease = term.lease, "etcd election: resigned");
        }
        Ok(())
    }
}

/// Renews `lease` every TTL/3; declares the term lost when the lease
/// expired or could not be renewed for a whole TTL.
async fn keep_alive(sh: Arc<Shared>, lease: i64) {
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(sh.ttl / 3).await;
        let sent = Instant::now();
        // etcd-client's `keep_alive` sends one renewal and waits for its
        // answer itself: `Ok` means renewed; an answer of TTL 0 (the lease
        // expired) comes back as the error "lease not found". Waiting on the
        // returned stream for more would wait for an answer to a request
        // never sent, until the request timeout: renewals then came a
        // timeout apart and a lease shorter than that expired every term.
        // A renewal stuck on a silent connection must not outlive the
        // lease: past `last_ok + ttl` etcd has let it lapse anyway.
        let renewal = sh.inner.call(|m| {
            let mut c = m.client.lease_client();
            async move {
                match c.keep_alive(lease).await {
                    Ok(_) => Ok(true),
                    Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => Ok(false),
                    Err(e) => Err(e),
                }
            }
        });
        let Ok(r) = tokio::time::timeout_at((last_ok + sh.ttl).into(), renewal).await else {
            sh.lose(lease, "the lease could not be renewed within its TTL");
            lapse_campaign(&sh, lease);
            return;
        };
        match r {
            Ok(true) => last_ok = sent,
            Ok(false) => {
                sh.lose(lease, "the lease expired");
                lapse_campaign(&sh, lease);
                return;
            }
            Err(f) => {
                debug!(lease, error = f.message(), "etcd election: keep-alive failed");
                if last_ok.elapsed() >= sh.ttl {
                    sh.lose(lease, "the lease could not be renewed within its TTL");
                    lapse_campaign(&sh, lease);
                    return;
                }
            }
        }
    }
}

/// Forgets a campaign's lapsed lease (a candidate, not a leader), so the
/// campaign grants a new one.
fn lapse_campaign(sh: &Shared, lease: i64) {
    let mut t = sh.term();
    if t.as_ref().map(|t| t.lease) == Some(lease) {
        *t = None;
    }
}

/// Watches the election key while leading: its deletion or a new creation
/// ends the term.
async fn monitor(sh: Arc<Shared>, lease: i64, revision: i64) {
    loop {
        let key = sh.key.clone();
        let current = sh.inner.call(|m| super::kv_get(m, key.clone(), None)).await;
        let from = match current {
            Ok(mut resp) => {
                let kv = resp.take_kvs().into_iter().next();
                if kv.as_ref().map(|kv| kv.create_revision()) != Some(revision) {
                    sh.lose(lease, "the election key is gone or someone else's");
                    return;
                }
                resp.header().map_or(0, |h| h.revision()) + 1
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let stream = watch_from(&sh, &key, from).await;
        let Ok(mut stream) = stream else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Ok(Some(msg)) = stream.message().await {
            if msg.canceled() {
                break;
            }
            for ev in msg.events() {
                let gone = match ev.event_type() {
                    EventType::Delete => true,
                    EventType::Put => ev.kv().map(|kv| kv.create_revision()) != Some(revision),
                };
                if gone {
                    sh.lose(lease, "the election key was deleted or replaced");
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
