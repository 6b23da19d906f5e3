//! The one connection pool and the one retry policy of p2pfs, used by the
//! client, the peers and dirsvc alike.
//!
//! [`Pool`] keeps one tarpc client per (address, expected identity): tarpc
//! multiplexes concurrent calls on one connection, so one is enough. A
//! call that fails in transport drops the pooled connection, so the next
//! call dials again; domain errors (the service's own `Err`) are returned
//! as they are and keep the connection.
//!
//! [`RetryPolicy`] says how often and how long a caller retries transport
//! failures: a number of attempts, or a time window, with exponential
//! backoff between them ([`Backoff`]). Only transport failures are retried
//! (the connection was refused, broke, or could not be set up); an answer,
//! even an error, is final.

use crate::ids::{NodeId, PeerId};
use crate::rpc::dir::DirServiceClient;
use crate::rpc::peer::PeerServiceClient;
use crate::rpc::Role;
use crate::tls::{Expect, Tls};
use crate::transport::{deadline, framed};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tarpc::client::RpcError;
use tarpc::context::Context;
use tracing::debug;

/// Exponential backoff: from `base`, doubling up to `cap`.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    next: Duration,
    cap: Duration,
}

impl Backoff {
    /// Delays from `base` doubling to at most `cap` (never below `base`).
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, next: base, cap: cap.max(base) }
    }

    /// Back to the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.base;
    }

    /// The delay to wait now; doubles the following one.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        d
    }
}

/// How a caller retries transport failures.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Most attempts in all (at least 1).
    pub attempts: u32,
    /// Stop retrying once this long has passed since the first attempt
    /// (`None`: only `attempts` limits).
    pub window: Option<Duration>,
    /// First delay between attempts.
    pub base: Duration,
    /// Longest delay between attempts.
    pub cap: Duration,
}

impl RetryPolicy {
    /// One attempt and no retry (background workers that retry on their
    /// next round).
    pub const ONCE: RetryPolicy = RetryPolicy {
        attempts: 1,
        window: None,
        base: Duration::from_millis(0),
        cap: Duration::from_millis(0),
    };

    /// Two attempts at once: the pooled connection, then a fresh one (a
    /// peer that restarted is picked up; a dead one costs little).
    pub const FRESH_ONCE: RetryPolicy = RetryPolicy {
        attempts: 2,
        window: None,
        base: Duration::from_millis(0),
        cap: Duration::from_millis(0),
    };

    /// Keep trying for `window`, backing off from 100 ms to 2 s (a dirsvc
    /// restart is then a pause, not an error).
    pub fn for_window(window: Duration) -> RetryPolicy {
        RetryPolicy {
            attempts: u32::MAX,
            window: Some(window),
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        }
    }

    /// Runs `attempt` until it returns `Ok` or a permanent error, or the
    /// policy is spent. `attempt` gets the attempt number (from 0) and
    /// returns `Err((error, retryable))`.
    ///
    /// Errors: the last error.
    pub async fn run<T, E, F, Fut>(&self, mut attempt: F) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, (E, bool)>>,
    {
        let start = tokio::time::Instant::now();
        let mut backoff = Backoff::new(self.base, self.cap);
        let mut n = 0;
        loop {
            match attempt(n).await {
                Ok(v) => return Ok(v),
                Err((e, retryable)) => {
                    n += 1;
                    let out_of_time = self.window.is_some_and(|w| start.elapsed() >= w);
                    if !retryable || n >= self.attempts.max(1) || out_of_time {
                        return Err(e);
                    }
                }
            }
            let d = backoff.step();
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// Whether a tarpc error is a transport failure that a new connection may
/// cure (the connection shut down or could not send), as opposed to a
/// deadline or a server error.
pub fn transient(e: &RpcError) -> bool {
    matches!(e, RpcError::Shutdown | RpcError::Send(_) | RpcError::Channel(_))
}

/// A call that failed in transport: where, and what the transport said.
#[derive(Clone, Debug, thiserror::Error)]
#[error("rpc to {addr} failed: {detail}")]
pub struct CallError {
    /// The address called.
    pub addr: String,
    /// tarpc's, TLS's or the socket's message.
    pub detail: String,
}

/// A tarpc client that a [`Pool`] can dial.
pub trait Dial: Clone + Send + Sync + 'static {
    /// Connects to `addr`, requiring the server to be `expect`.
    fn dial(addr: &str, tls: &Tls, expect: Expect) -> impl Future<Output = std::io::Result<Self>> + Send;
}

impl Dial for DirServiceClient {
    async fn dial(addr: &str, tls: &Tls, expect: Expect) -> std::io::Result<Self> {
        let stream = crate::transport::connect(addr, tls, expect).await?;
        Ok(DirServiceClient::new(tarpc::client::Config::default(), framed(stream)).spawn())
    }
}

impl Dial for PeerServiceClient {
    async fn dial(addr: &str, tls: &Tls, expect: Expect) -> std::io::Result<Self> {
        let stream = crate::transport::connect(addr, tls, expect).await?;
        Ok(PeerServiceClient::new(tarpc::client::Config::default(), framed(stream)).spawn())
    }
}

/// Most connections a pool keeps; past this it starts over (nodes that
/// left keep no connection open for long).
pub const POOL_MAX: usize = 1024;

/// Connections to remote services, one per (address, expected identity),
/// made on first use, dropped on a transport failure.
pub struct Pool<C> {
    tls: Arc<Tls>,
    clients: Mutex<HashMap<(String, Expect), C>>,
}

impl<C> std::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.clients.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("Pool").field("connections", &n).finish()
    }
}

impl<C: Dial> Pool<C> {
    /// An empty pool that connects as `tls`.
    pub fn new(tls: Arc<Tls>) -> Self {
        Pool { tls, clients: Mutex::new(HashMap::new()) }
    }

    /// This pool's TLS identity.
    pub fn tls(&self) -> &Arc<Tls> {
        &self.tls
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Expect), C>> {
        self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The client for (`addr`, `expect`), connecting if there is none.
    ///
    /// Errors: [`CallError`] if it cannot connect (or the server is not
    /// `expect`).
    pub async fn get(&self, addr: &str, expect: Expect) -> Result<C, CallError> {
        let key = (addr.to_string(), expect);
        if let Some(c) = self.lock().get(&key) {
            return Ok(c.clone());
        }
        let c = C::dial(addr, &self.tls, expect)
            .await
            .map_err(|e| CallError { addr: addr.to_string(), detail: e.to_string() })?;
        let mut clients = self.lock();
        if clients.len() >= POOL_MAX {
            clients.clear();
        }
        clients.insert(key, c.clone());
        Ok(c)
    }

    /// Drops the connection to `addr` for `expect` (after a transport
    /// failure).
    pub fn forget(&self, addr: &str, expect: Expect) {
        self.lock().remove(&(addr.to_string(), expect));
    }

    /// Drops every connection to a node with id `node` (it was revoked).
    pub fn forget_node(&self, node: NodeId) {
        self.lock().retain(|(_, e), _| !matches!(e, Expect::Node(_, n) if *n == node));
    }

    /// Runs one call `f` on the client for (`addr`, `expect`) with a
    /// context whose deadline is `timeout`, retrying transport failures as
    /// `policy` says (each retry on a fresh connection).
    ///
    /// Errors: `Ok(Err(domain))` is the service's answer; `Err(CallError)`
    /// when the transport kept failing, or the deadline passed.
    pub async fn call<T, E, F, Fut>(
        &self,
        addr: &str,
        expect: Expect,
        timeout: Duration,
        policy: &RetryPolicy,
        f: F,
    ) -> Result<Result<T, E>, CallError>
    where
        F: Fn(C, Context) -> Fut,
        Fut: Future<Output = Result<Result<T, E>, RpcError>>,
    {
        policy
            .run(|attempt| {
                let f = &f;
                async move {
                    let c = self.get(addr, expect).await.map_err(|e| (e, true))?;
                    match f(c, deadline(timeout)).await {
                        Ok(r) => Ok(r),
                        Err(e) => {
                            let retry = transient(&e);
                            self.forget(addr, expect);
                            debug!(%addr, error = %e, attempt, retry, "rpc failed");
                            Err((CallError { addr: addr.to_string(), detail: e.to_string() }, retry))
                        }
                    }
                }
            })
            .await
    }
}

impl Pool<PeerServiceClient> {
    /// The client for peer `peer` at `addr` (its certificate must name it).
    ///
    /// Errors: as [`Pool::get`].
    pub async fn peer(&self, addr: &str, peer: PeerId) -> Result<PeerServiceClient, CallError> {
        self.get(addr, Expect::Node(Role::Peer, NodeId::from(peer))).await
    }

    /// Drops the connection to peer `peer` at `addr` (after a transport
    /// failure).
    pub fn forget_peer(&self, addr: &str, peer: PeerId) {
        self.forget(addr, Expect::Node(Role::Peer, NodeId::from(peer)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let steps: Vec<_> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.step().as_millis(), 50);
        let mut low = Backoff::new(Duration::from_millis(50), Duration::from_millis(1));
        assert_eq!((low.step().as_millis(), low.step().as_millis()), (50, 50));
    }

    #[tokio::test]
    async fn retries_stop_at_the_attempt_count_at_a_permanent_error_and_at_success() {
        let p = RetryPolicy { attempts: 3, window: None, base: Duration::ZERO, cap: Duration::ZERO };
        let mut n = 0;
        let r: Result<(), &str> = p
            .run(|_| {
                n += 1;
                async { Err(("down", true)) }
            })
            .await;
        assert_eq!((r, n), (Err("down"), 3));
        let mut n = 0;
        let r: Result<(), &str> = p
            .run(|_| {
                n += 1;
                async { Err(("refused", false)) }
            })
            .await;
        assert_eq!((r, n), (Err("refused"), 1));
        let r: Result<u32, &str> = p
            .run(|a| async move {
                if a < 2 {
                    Err(("down", true))
                } else {
                    Ok(a)
                }
            })
            .await;
        assert_eq!(r, Ok(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_policy_gives_up_after_its_window() {
        let p = RetryPolicy::for_window(Duration::from_secs(3));
        let start = tokio::time::Instant::now();
        let r: Result<(), &str> = p.run(|_| async { Err(("down", true)) }).await;
        assert!(r.is_err());
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(6), "{took:?}");
    }
}
