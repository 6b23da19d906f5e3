//! The one connection pool and the one retry policy of p2pfs, used by the
//! client, the peers and dirsvc alike.
//!
//! [`Pool`] keeps one tarpc client per (address, expected identity): tarpc
//! multiplexes concurrent calls on one connection, so one is enough. A
//! call that fails in transport drops the pooled connection, so the next
//! call dials again; domain errors (the service's own `Err`) are returned
//! as they are and keep the connection.
//!
//! [`DirAddrs`] is what a process knows of its cluster's dirsvc instances
//! (one, or several over one etcd): [`Pool::call_dir`] sends each call to
//! the one believed to be the leader, follows `DirError::NotLeader`
//! redirects and, when that one cannot be reached, dials the others
//! staggered ([`Pool::connect_dir`]), all within the caller's retry
//! policy, so a failover is a pause.
//!
//! [`RetryPolicy`] says how often and how long a caller retries transport
//! failures: a number of attempts, or a time window, with exponential
//! backoff between them ([`Backoff`]). Only transport failures are retried
//! (the connection was refused, broke, or could not be set up); an answer,
//! even an error, is final.

use crate::ids::{NodeId, PeerId};
use crate::rpc::dir::{DirError, DirServiceClient};
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

/// Most dirsvc addresses a [`DirAddrs`] keeps (configured ones plus
/// leaders learnt from redirects).
pub const DIR_ADDRS_MAX: usize = 16;

/// The dirsvc instances of one cluster, as this process knows them: the
/// configured addresses, plus leaders named by redirects, and which one
/// calls go to now. Shared by all calls of a process (interior
/// mutability; cheap to clone behind an `Arc`).
#[derive(Debug)]
pub struct DirAddrs {
    state: Mutex<DirAddrsState>,
}

#[derive(Debug)]
struct DirAddrsState {
    addrs: Vec<String>,
    current: usize,
}

impl std::fmt::Display for DirAddrs {
    /// The known addresses, comma-separated (for logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.list())
    }
}

impl DirAddrs {
    /// Parses a comma-separated list of `host:port` addresses (spaces
    /// around commas allowed; duplicates dropped; at most
    /// [`DIR_ADDRS_MAX`]).
    ///
    /// Errors: a message naming the problem (an empty list or entry, an
    /// entry without a port, too many).
    pub fn parse(list: &str) -> Result<DirAddrs, String> {
        let mut addrs: Vec<String> = Vec::new();
        for a in list.split(',').map(str::trim) {
            if a.is_empty() {
                return Err(format!("empty dirsvc address in '{list}'"));
            }
            let port_ok = a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!("dirsvc address '{a}' is not host:port"));
            }
            if !addrs.iter().any(|x| x == a) {
                addrs.push(a.to_string());
            }
        }
        if addrs.len() > DIR_ADDRS_MAX {
            return Err(format!("{} dirsvc addresses; at most {DIR_ADDRS_MAX}", addrs.len()));
        }
        Ok(DirAddrs { state: Mutex::new(DirAddrsState { addrs, current: 0 }) })
    }

    /// One address (no parsing; for tests and single-instance callers).
    pub fn single(addr: &str) -> DirAddrs {
        DirAddrs { state: Mutex::new(DirAddrsState { addrs: vec![addr.to_string()], current: 0 }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DirAddrsState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The address calls go to now.
    pub fn current(&self) -> String {
        let s = self.lock();
        s.addrs[s.current].clone()
    }

    /// Every known address, configured ones first, as one comma-separated
    /// string (the form [`DirAddrs::parse`] reads).
    pub fn list(&self) -> String {
        self.lock().addrs.join(",")
    }

    /// How many addresses are known.
    pub fn len(&self) -> usize {
        self.lock().addrs.len()
    }

    /// Always false: a `DirAddrs` holds at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Every known address, the current one first, then the others in
    /// list order after it (the order [`Pool::connect_dir`] dials them).
    pub fn rotation(&self) -> Vec<String> {
        let s = self.lock();
        let n = s.addrs.len();
        (0..n).map(|i| s.addrs[(s.current + i) % n].clone()).collect()
    }

    /// `addr` could not be reached: if it is the current one, move on to
    /// the next address.
    pub fn failed(&self, addr: &str) {
        let mut s = self.lock();
        if s.addrs[s.current] == addr {
            s.current = (s.current + 1) % s.addrs.len();
        }
    }

    /// A dirsvc named `leader` as the leader: send calls there (it is
    /// added if unknown, replacing the oldest learnt address past the
    /// limit).
    pub fn redirect(&self, leader: &str) {
        let mut s = self.lock();
        match s.addrs.iter().position(|a| a == leader) {
            Some(i) => s.current = i,
            None => {
                if s.addrs.len() >= DIR_ADDRS_MAX {
                    s.addrs.pop();
                }
                s.addrs.push(leader.to_string());
                s.current = s.addrs.len() - 1;
            }
        }
    }
}

/// How long a dial of one dirsvc address runs alone before the next
/// address is dialled too (RFC 8305's "connection attempt delay"): a
/// dead or cut-off instance then costs this, not a connect timeout.
pub const DIAL_STAGGER: Duration = Duration::from_millis(250);

impl Pool<DirServiceClient> {
    /// A connection to a dirsvc of `addrs`: the pooled one to the current
    /// address if there is one; otherwise the current address is dialled,
    /// then every [`DIAL_STAGGER`] (or as soon as a dial fails) the next
    /// one as well, and the first that connects becomes the current
    /// address (a follower then redirects the call to the leader). So a
    /// failover never waits a connect timeout per dead instance.
    ///
    /// Errors: the last [`CallError`] when no address connects.
    pub async fn connect_dir(&self, addrs: &DirAddrs) -> Result<(String, DirServiceClient), CallError> {
        use futures::stream::{FuturesUnordered, StreamExt};
        const DIRSVC: Expect = Expect::Role(crate::rpc::Role::Dirsvc);
        let order = addrs.rotation();
        if let Some(c) = self.lock().get(&(order[0].clone(), DIRSVC)) {
            return Ok((order[0].clone(), c.clone()));
        }
        let failed_early = tokio::sync::Notify::new();
        let mut dials: FuturesUnordered<_> = order
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let failed_early = &failed_early;
                async move {
                    if i > 0 {
                        // Start at the stagger, or when an earlier dial fails.
                        let stagger = DIAL_STAGGER * u32::try_from(i).unwrap_or(u32::MAX);
                        let _ = tokio::time::timeout(stagger, failed_early.notified()).await;
                    }
                    let r = self.get(a, DIRSVC).await;
                    if r.is_err() {
                        failed_early.notify_one();
                    }
                    (a, r)
                }
            })
            .collect();
        let mut last = None;
        while let Some((a, r)) = dials.next().await {
            match r {
                Ok(c) => {
                    if *a != order[0] {
                        debug!(from = %order[0], to = %a, "dirsvc address switched");
                        addrs.redirect(a);
                    }
                    return Ok((a.clone(), c));
                }
                Err(e) => {
                    debug!(addr = %a, error = %e, "cannot connect to dirsvc");
                    addrs.failed(a);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| CallError { addr: addrs.list(), detail: "no dirsvc address".into() }))
    }

    /// Runs one DirService call `f` on the dirsvc [`DirAddrs`] believes is
    /// the leader, with a context whose deadline is `timeout`, retrying as
    /// `policy` says: after a transport failure (on the next address when
    /// there are several, where a passed deadline counts as a failure too,
    /// since the instance may be cut off) and after `NotLeader` (on the
    /// leader it names; after a backoff while none is elected).
    ///
    /// Errors: `Ok(Err(domain))` is dirsvc's answer; `Err(CallError)` when
    /// no instance answered within the policy (a `NotLeader` that lasts
    /// the whole policy is returned as its answer).
    pub async fn call_dir<T, F, Fut>(
        &self,
        addrs: &DirAddrs,
        timeout: Duration,
        policy: &RetryPolicy,
        f: F,
    ) -> Result<Result<T, DirError>, CallError>
    where
        F: Fn(DirServiceClient, Context) -> Fut,
        Fut: Future<Output = Result<Result<T, DirError>, RpcError>>,
    {
        const DIRSVC: Expect = Expect::Role(crate::rpc::Role::Dirsvc);
        let several = addrs.len() > 1;
        let last_not_leader: Mutex<Option<DirError>> = Mutex::new(None);
        let r = policy
            .run(|attempt| {
                let f = &f;
                let last_not_leader = &last_not_leader;
                async move {
                    let (addr, c) = self.connect_dir(addrs).await.map_err(|e| (e, true))?;
                    match f(c, deadline(timeout)).await {
                        Ok(Err(DirError::NotLeader { leader })) => {
                            debug!(%addr, ?leader, attempt, "not the leader; following");
                            match &leader {
                                Some(l) if *l != addr => addrs.redirect(l),
                                _ => addrs.failed(&addr),
                            }
                            let detail = format!("{addr} is not the leader");
                            *last_not_leader.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some(DirError::NotLeader { leader });
                            Err((CallError { addr, detail }, true))
                        }
                        Ok(r) => Ok(r),
                        Err(e) => {
                            let retry = transient(&e) || several;
                            self.forget(&addr, DIRSVC);
                            addrs.failed(&addr);
                            debug!(%addr, error = %e, attempt, retry, "dirsvc rpc failed");
                            Err((CallError { addr, detail: e.to_string() }, retry))
                        }
                    }
                }
            })
            .await;
        match (r, last_not_leader.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)) {
            (Err(e), Some(nl)) if e.detail.ends_with("is not the leader") => Ok(Err(nl)),
            (r, _) => r,
        }
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
    fn dir_addrs_parse_lists_and_refuse_malformed_ones() {
        let a = DirAddrs::parse(" 10.0.0.1:7700, 10.0.0.2:7700,10.0.0.1:7700 ,[::1]:7701").unwrap();
        assert_eq!(a.list(), "10.0.0.1:7700,10.0.0.2:7700,[::1]:7701");
        assert_eq!(a.current(), "10.0.0.1:7700");
        for bad in ["", "a:1,", "host", "host:port", ":7700", "a:70000"] {
            assert!(DirAddrs::parse(bad).is_err(), "{bad:?} accepted");
        }
        let many: Vec<String> = (0..=DIR_ADDRS_MAX).map(|i| format!("h{i}:1")).collect();
        assert!(DirAddrs::parse(&many.join(",")).unwrap_err().contains("at most"));
    }

    #[test]
    fn dir_addrs_rotate_past_failures_and_follow_redirects() {
        let a = DirAddrs::parse("a:1,b:2,c:3").unwrap();
        a.failed("b:2"); // not the current one: no change
        assert_eq!(a.current(), "a:1");
        a.failed("a:1");
        assert_eq!(a.current(), "b:2");
        a.failed("b:2");
        a.failed("c:3");
        assert_eq!(a.current(), "a:1", "wraps around");
        a.redirect("c:3");
        assert_eq!(a.current(), "c:3");
        a.redirect("d:4"); // a leader not configured is learnt
        assert_eq!((a.current(), a.len()), ("d:4".to_string(), 4));
        let full =
            DirAddrs::parse(&(0..DIR_ADDRS_MAX).map(|i| format!("h{i}:1")).collect::<Vec<_>>().join(","))
                .unwrap();
        full.redirect("new:1");
        assert_eq!((full.current(), full.len()), ("new:1".to_string(), DIR_ADDRS_MAX));
    }

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
