//! The one transport every p2pfs connection uses, and the server side's
//! accept loop with its limits.
//!
//! TCP (with `TCP_NODELAY`), mutual TLS 1.3 ([`crate::tls`]), 4-byte
//! big-endian length-delimited frames of at most [`MAX_FRAME_BYTES`],
//! bincode-encoded tarpc messages ([`crate::wire`], which also refuses what
//! tarpc would trust blindly). Both ends set the same frame limit: a frame
//! over it, or bytes that do not decode, end that connection only. No
//! listener speaks plaintext.
//!
//! Servers accept through [`serve`] (used by the `serve_tarpc!` macro):
//! a bounded number of TLS handshakes at once, each with a deadline, the
//! oldest evicted when a new connection needs its slot (so half-open or
//! garbage connections cost a slot briefly, and a flood of them cannot
//! keep an honest client out);
//! caps on connections in total, per node and without a certificate (the
//! oldest certificate-less one gives way); a cap on requests in flight per
//! connection; and an idle timeout. The certificate the other end presented
//! becomes the [`Caller`] every request on that connection is authorized
//! from, and [`Connections::close_node`] ends every connection of a node
//! (when it is revoked).

use crate::config::MAX_FRAME_BYTES;
use crate::ids::{NodeId, PeerId};
use crate::rpc::dir::DirServiceClient;
use crate::rpc::peer::PeerServiceClient;
use crate::rpc::Role;
use crate::tls::{Caller, Expect, Revocations, Tls, SERVER_NAME};
use crate::wire;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// A TLS connection, from either side.
pub type Stream = tokio_rustls::TlsStream<TcpStream>;

/// A framed, bincode-encoded transport over one TLS connection.
pub type TlsTransport<In, Out> = Framed<Activity<Stream>, wire::Codec<In, Out>>;

/// How long [`connect`] waits for the TCP handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a TLS handshake may take, on either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may keep sent bytes unacknowledged before the
/// kernel drops it (`TCP_USER_TIMEOUT`), and about how long keepalive
/// probes take to find a silent peer while we wait for an answer (first
/// probe after 3 s idle, then every 2 s). A host that vanishes without a
/// reset (link down, power cut, a partition) is noticed in ~10 s instead
/// of at the call's deadline (30 s for dirsvc calls, 60 s for chunks), so
/// clients move on to another dirsvc or peer about as fast as the
/// election does.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// Socket options of every connection, both sides: no Nagle delay for
/// small RPCs; keepalive probes and a user timeout that turn a silent
/// peer into a connection error within [`DEAD_PEER_TIMEOUT`]. Best
/// effort: a socket that refuses an option keeps the kernel's default.
fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(3))
        .with_interval(Duration::from_secs(2))
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&keepalive);
    let _ = sock.set_tcp_user_timeout(Some(DEAD_PEER_TIMEOUT));
}

/// A stream that notes when it last read bytes, for the idle timeout.
pub struct Activity<S> {
    inner: S,
    /// Milliseconds since `epoch` at the last read.
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S> Activity<S> {
    fn new(inner: S) -> Self {
        Activity { inner, last: Arc::new(AtomicU64::new(0)), epoch: Instant::now() }
    }

    /// How long since bytes last arrived.
    fn idle_for(last: &AtomicU64, epoch: Instant) -> Duration {
        let now = epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(last.load(Ordering::Relaxed)))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            me.last.store(me.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Frames a TLS connection.
pub fn framed<In, Out>(stream: Stream) -> TlsTransport<In, Out>
where
    In: wire::Inbound,
    Out: Serialize,
{
    Framed::new(Activity::new(stream), wire::Codec::new(MAX_FRAME_BYTES))
}

/// Connects to `addr` and runs the TLS handshake with `config`, each within
/// its timeout.
///
/// Errors: the connect or handshake error (a refused certificate is
/// `InvalidData`), or `TimedOut`.
pub async fn connect_with(addr: &str, config: Arc<rustls::ClientConfig>) -> io::Result<Stream> {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    tune(&tcp);
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(r) => Ok(tokio_rustls::TlsStream::Client(r?)),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
    }
}

/// Connects to `addr` as this node (`tls`), requiring the server to be
/// `expect`.
///
/// Errors: as [`connect_with`]; `InvalidInput` if the configuration cannot
/// be built.
pub async fn connect(addr: &str, tls: &Tls, expect: Expect) -> io::Result<Stream> {
    let config = tls.client_config(expect).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    connect_with(addr, config).await
}

/// A `DirService` client on a fresh connection to dirsvc at `addr`.
///
/// Errors: as [`connect`].
pub async fn dir_client(addr: &str, tls: &Tls) -> io::Result<DirServiceClient> {
    let stream = connect(addr, tls, Expect::Role(Role::Dirsvc)).await?;
    Ok(DirServiceClient::new(tarpc::client::Config::default(), framed(stream)).spawn())
}

/// A `PeerService` client on a fresh connection to the peer `peer` at
/// `addr` (its certificate must name that peer).
///
/// Errors: as [`connect`].
pub async fn peer_client(addr: &str, tls: &Tls, peer: PeerId) -> io::Result<PeerServiceClient> {
    let stream = connect(addr, tls, Expect::Node(Role::Peer, NodeId::from(peer))).await?;
    Ok(PeerServiceClient::new(tarpc::client::Config::default(), framed(stream)).spawn())
}

/// A `DirService` client for a node that joins with a token: no client
/// certificate, dirsvc authenticated by the CA fingerprint `ca`.
///
/// Errors: as [`connect_with`].
pub async fn joiner_dir_client(addr: &str, ca: [u8; 32]) -> io::Result<DirServiceClient> {
    let config = crate::tls::joiner_config(ca).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stream = connect_with(addr, config).await?;
    Ok(DirServiceClient::new(tarpc::client::Config::default(), framed(stream)).spawn())
}

/// A tarpc context whose deadline is `timeout` from now.
pub fn deadline(timeout: Duration) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + timeout;
    ctx
}

/// Limits of one server (defaults in parentheses).
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections open at once, in total (4096).
    pub max_connections: usize,
    /// Connections open at once by one node (256).
    pub max_per_node: usize,
    /// Connections open at once without a certificate (joining nodes; 32);
    /// one more evicts the oldest.
    pub max_unauthenticated: usize,
    /// A connection without a certificate on which nothing arrived for
    /// this long is closed (30 seconds: a join is one call).
    pub unauthenticated_idle_timeout: Duration,
    /// TLS handshakes under way at once; a new connection beyond it evicts
    /// the oldest handshake (128).
    pub max_handshakes: usize,
    /// Longest TLS handshake ([`HANDSHAKE_TIMEOUT`]).
    pub handshake_timeout: Duration,
    /// A connection on which nothing arrived for this long is closed
    /// (10 minutes; clients reconnect on their next call).
    pub idle_timeout: Duration,
    /// Requests in flight at once on one connection (256); more are
    /// answered with an error.
    pub max_requests_in_flight: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 4096,
            max_per_node: 256,
            max_unauthenticated: 32,
            unauthenticated_idle_timeout: Duration::from_secs(30),
            max_handshakes: 128,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: Duration::from_secs(600),
            max_requests_in_flight: 256,
        }
    }
}

/// Open connections by the node that opened them (`None`: connections
/// without a certificate), each with its id and cancellation token.
type ByNode = HashMap<Option<NodeId>, Vec<(u64, CancellationToken)>>;

/// The open connections of a server, by the node that opened them.
#[derive(Debug, Default)]
pub struct Connections {
    total: AtomicUsize,
    /// TLS handshakes under way, oldest first, each with its cancellation.
    handshakes: Mutex<std::collections::VecDeque<(u64, CancellationToken)>>,
    by_node: Mutex<ByNode>,
    next: AtomicU64,
    /// The revocation list the server enforces, checked again when a
    /// connection registers (see [`Connections::new`]).
    revocations: Option<Arc<Revocations>>,
}

/// One registered connection; unregisters on drop.
pub struct ConnectionGuard {
    conns: Arc<Connections>,
    node: Option<NodeId>,
    id: u64,
    /// Fires when the connection must end (its node was revoked, or the
    /// server stops).
    pub cancel: CancellationToken,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut g = self.conns.by_node.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(v) = g.get_mut(&self.node) {
            v.retain(|(id, _)| *id != self.id);
            if v.is_empty() {
                g.remove(&self.node);
            }
        }
        self.conns.total.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Connections {
    /// The connections of a server enforcing `revocations`. A node revoked
    /// while its handshake was under way (after the certificate check) is
    /// refused when its connection registers, so [`Self::close_node`]
    /// called after the list changed misses none of its connections.
    pub fn new(revocations: Arc<Revocations>) -> Self {
        Connections { revocations: Some(revocations), ..Connections::default() }
    }

    /// Ends every connection opened by `node` (it was revoked).
    pub fn close_node(&self, node: &NodeId) -> usize {
        let g = self.by_node.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let conns = g.get(&Some(*node)).map(|v| v.as_slice()).unwrap_or(&[]);
        for (_, c) in conns {
            c.cancel();
        }
        conns.len()
    }

    /// Ends every registered connection (a dirsvc's term of leadership
    /// began or ended: its clients reconnect and meet the new state).
    /// Returns how many were ended.
    pub fn close_all(&self) -> usize {
        let g = self.by_node.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut n = 0;
        for c in g.values().flatten() {
            c.1.cancel();
            n += 1;
        }
        n
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// Registers a new TLS handshake; when `max` are under way already, the
    /// oldest is cancelled to make room (a flood of half-open connections
    /// then keeps cycling through the slots instead of filling them for a
    /// whole handshake timeout, so an honest client that completes its
    /// handshake in milliseconds gets through).
    fn start_handshake(&self, max: usize) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut q = self.handshakes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while q.len() >= max.max(1) {
            if let Some((_, oldest)) = q.pop_front() {
                oldest.cancel();
            }
        }
        q.push_back((id, token.clone()));
        (id, token)
    }

    /// Forgets handshake `id` (finished, failed or cancelled).
    fn end_handshake(&self, id: u64) {
        let mut q = self.handshakes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = q.iter().position(|(h, _)| *h == id) {
            q.remove(i);
        }
    }

    /// Registers a connection of `node` unless a cap is reached or `node`
    /// is revoked. Connections without a certificate (joining nodes) evict
    /// the oldest such connection when their cap is reached: they only
    /// ever make one or two calls, so an idle crowd of them cannot lock
    /// joins out.
    fn register(
        self: &Arc<Self>,
        node: Option<NodeId>,
        limits: &ServerLimits,
        parent: &CancellationToken,
    ) -> Option<ConnectionGuard> {
        let mut g = self.by_node.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Checked under the lock `close_node` takes: a revocation either
        // is seen here or finds this connection registered.
        if let (Some(n), Some(r)) = (&node, &self.revocations) {
            if r.is_revoked(n) {
                return None;
            }
        }
        let (cap, evict) = match node {
            Some(_) => (limits.max_per_node, false),
            None => (limits.max_unauthenticated.max(1), true),
        };
        let mine = g.get(&node).map_or(0, Vec::len);
        if mine >= cap && evict {
            if let Some(v) = g.get_mut(&node) {
                // The guard's drop removes it again (a no-op by then).
                let (_, oldest) = v.remove(0);
                oldest.cancel();
            }
        } else if mine >= cap {
            return None;
        }
        if self.total.load(Ordering::SeqCst) >= limits.max_connections {
            return None;
        }
        self.total.fetch_add(1, Ordering::SeqCst);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = parent.child_token();
        g.entry(node).or_default().push((id, cancel.clone()));
        Some(ConnectionGuard { conns: self.clone(), node, id, cancel })
    }
}

/// Accepts connections on `listener` until `shutdown` fires: TLS handshake
/// (bounded and timed, see [`ServerLimits`]), caller identity, connection
/// caps; then `handle(stream, caller, guard)` in a task of its own (it must
/// end when `guard.cancel` fires). Called by the `serve_tarpc!` macro.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: ServerLimits,
    conns: Arc<Connections>,
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(Stream, Option<Caller>, ConnectionGuard) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (handshake, evicted) = conns.start_handshake(limits.max_handshakes);
        tune(&tcp);
        let (acceptor, conns, limits, shutdown, handle) =
            (acceptor.clone(), conns.clone(), limits.clone(), shutdown.clone(), handle.clone());
        tokio::spawn(async move {
            let tls = tokio::select! {
                r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => Some(r),
                _ = evicted.cancelled() => None,
            };
            conns.end_handshake(handshake);
            let stream = match tls {
                Some(Ok(Ok(s))) => s,
                Some(Ok(Err(e))) => {
                    debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Some(Err(_)) => {
                    debug!(%remote, "TLS handshake timed out");
                    return;
                }
                None => {
                    debug!(%remote, "TLS handshake evicted by newer connections");
                    return;
                }
            };
            let caller = Caller::of(stream.get_ref().1.peer_certificates());
            let Some(guard) = conns.register(caller.as_ref().map(|c| c.node), &limits, &shutdown) else {
                debug!(%remote, caller = ?caller, "connection limit reached; connection closed");
                return;
            };
            debug!(%remote, caller = ?caller, "connection accepted");
            handle(tokio_rustls::TlsStream::Server(stream), caller, guard).await;
            debug!(%remote, "connection closed");
        });
    }
}

/// Runs the tarpc work of one connection until it ends, its guard is
/// cancelled, or nothing arrives for `idle` (then the connection is
/// closed). `work` gets the transport; `idle_of` tells how long it has been
/// idle (see [`idle_probe`]).
pub async fn run_connection<W: Future<Output = ()>>(
    work: W,
    guard: &ConnectionGuard,
    idle: Duration,
    idle_of: impl Fn() -> Duration,
) {
    tokio::pin!(work);
    let tick = (idle / 4).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            // A cancelled connection (revoked node) ends before any more
            // of its requests are polled.
            biased;
            _ = guard.cancel.cancelled() => return,
            _ = &mut work => return,
            _ = tokio::time::sleep(tick) => {
                if idle_of() >= idle {
                    debug!("idle connection closed");
                    return;
                }
            }
        }
    }
}

/// A function telling how long since `transport` last read bytes, kept
/// valid after the transport moves into a channel.
pub fn idle_probe<In, Out>(
    transport: &TlsTransport<In, Out>,
) -> impl Fn() -> Duration + Send + Sync + 'static {
    let a = transport.get_ref();
    let (last, epoch) = (a.last.clone(), a.epoch);
    move || Activity::<Stream>::idle_for(&last, epoch)
}

/// Serves one tarpc service on every connection accepted from `listener`
/// until `shutdown` is cancelled, with mutual TLS and the limits of
/// [`serve`]. A connection's requests run concurrently inside the
/// connection's own task, instrumented by [`crate::telemetry::Instrumented`]
/// (requests, errors and latency per method): a request read, served and
/// answered on one thread needs no wake-up of another (a task per request
/// cost one, measured in issue 10's closing note). So a request's
/// synchronous work holds up the other requests of its connection only:
/// keep it short, or move it to the blocking pool. Requests still in
/// progress when the connection ends are dropped with it (they must be
/// cancel-safe, as a client's cancellation already required).
///
/// `$listener`: a `tokio::net::TcpListener`; `$config`: the
/// `Arc<rustls::ServerConfig>`; `$limits`: `ServerLimits`; `$conns`:
/// `Arc<Connections>`; `$shutdown`: a `CancellationToken`; `$make`: a
/// function from `Option<Caller>` to the value whose `.serve()` gives the
/// tarpc `Serve` for that connection (its requests are authorized from the
/// caller).
#[macro_export]
macro_rules! serve_tarpc {
    ($listener:expr, $config:expr, $limits:expr, $conns:expr, $shutdown:expr, $make:expr) => {{
        use ::futures::StreamExt as _;
        use ::tarpc::server::Channel as _;
        let make = ::std::sync::Arc::new($make);
        let limits: $crate::transport::ServerLimits = $limits;
        let in_flight = limits.max_requests_in_flight;
        let (idle, anon_idle) = (limits.idle_timeout, limits.unauthenticated_idle_timeout);
        $crate::transport::serve(
            $listener,
            $config,
            limits,
            $conns,
            $shutdown,
            move |stream, caller, guard: $crate::transport::ConnectionGuard| {
                let make = make.clone();
                async move {
                    let idle = if caller.is_some() { idle } else { anon_idle };
                    let server = (make)(caller);
                    let transport = $crate::transport::framed(stream);
                    let idle_of = $crate::transport::idle_probe(&transport);
                    let channel = ::tarpc::server::BaseChannel::with_defaults(transport)
                        .max_concurrent_requests(in_flight);
                    // Every request of every server passes here: counted,
                    // timed and its errors classified (crate::telemetry).
                    let serve = $crate::telemetry::Instrumented::new(server.serve());
                    let work = channel.execute(serve).for_each_concurrent(None, |request| request);
                    $crate::transport::run_connection(work, &guard, idle, idle_of).await;
                }
            },
        )
        .await
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, NODE_CERT_VALIDITY};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers each connection with the caller's role and
    /// node id (or "none").
    async fn echo_server(
        tls: &Tls,
        open: bool,
        limits: ServerLimits,
    ) -> (String, CancellationToken, Arc<Connections>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let conns = Arc::new(Connections::default());
        let config = tls.server_config(open).unwrap();
        tokio::spawn(serve(
            listener,
            config,
            limits,
            conns.clone(),
            stop.clone(),
            |mut s: Stream, caller, guard| async move {
                let who = caller.map_or("none".to_string(), |c| format!("{}:{}", c.role, c.node.to_hex()));
                let _ = s.write_all(who.as_bytes()).await;
                let _ = s.shutdown().await;
                guard.cancel.cancelled().await;
            },
        ));
        (addr, stop, conns)
    }

    async fn ask(addr: &str, config: Arc<rustls::ClientConfig>) -> io::Result<String> {
        let mut s = connect_with(addr, config).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        if out.is_empty() {
            return Err(io::Error::other("closed without an answer"));
        }
        Ok(out)
    }

    fn node(ca: &Ca, role: Role) -> Tls {
        Tls::new(&ca.new_node(role, NODE_CERT_VALIDITY).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn only_nodes_of_the_cluster_that_are_valid_and_not_revoked_get_in() {
        let ca = Ca::create("a").unwrap();
        let dirsvc = node(&ca, Role::Dirsvc);
        let (addr, _stop, conns) = echo_server(&dirsvc, false, ServerLimits::default()).await;
        let client = node(&ca, Role::Client);
        let who = ask(&addr, client.client_config(Expect::Role(Role::Dirsvc)).unwrap()).await.unwrap();
        assert_eq!(who, format!("client:{}", client.node().to_hex()));
        // Another cluster's node, an expired certificate, no certificate.
        let stranger = node(&Ca::create("b").unwrap(), Role::Client);
        assert!(ask(&addr, stranger.client_config(Expect::Role(Role::Dirsvc)).unwrap()).await.is_err());
        let expired = Tls::new(
            &ca.new_node_until(Role::Client, std::time::SystemTime::now() - Duration::from_secs(7200))
                .unwrap(),
        )
        .unwrap();
        assert!(ask(&addr, expired.client_config(Expect::Role(Role::Dirsvc)).unwrap()).await.is_err());
        assert!(ask(&addr, crate::tls::joiner_config(ca.fingerprint()).unwrap()).await.is_err());
        // Revoked at the server: refused from then on, and its open
        // connections are closed.
        let mut held =
            connect_with(&addr, client.client_config(Expect::Role(Role::Dirsvc)).unwrap()).await.unwrap();
        let mut first = [0u8; 6];
        held.read_exact(&mut first).await.unwrap();
        dirsvc.revocations().replace(1, [client.node()]);
        assert!(conns.close_node(&client.node()) >= 1);
        assert!(ask(&addr, client.client_config(Expect::Role(Role::Dirsvc)).unwrap()).await.is_err());
    }

    #[tokio::test]
    async fn clients_check_who_the_server_is() {
        let ca = Ca::create("a").unwrap();
        let peer = node(&ca, Role::Peer);
        let (addr, _stop, _) = echo_server(&peer, false, ServerLimits::default()).await;
        let client = node(&ca, Role::Client);
        let right = Expect::Node(Role::Peer, peer.node());
        assert!(ask(&addr, client.client_config(right).unwrap()).await.is_ok());
        let wrong_node = Expect::Node(Role::Peer, NodeId([9; 16]));
        assert!(ask(&addr, client.client_config(wrong_node).unwrap()).await.is_err());
        assert!(ask(&addr, client.client_config(Expect::Role(Role::Dirsvc)).unwrap()).await.is_err());
        // A revoked server is refused by the client.
        client.revocations().replace(3, [peer.node()]);
        assert!(ask(&addr, client.client_config(right).unwrap()).await.is_err());
    }

    #[tokio::test]
    async fn a_joiner_authenticates_dirsvc_by_the_ca_fingerprint_alone() {
        let ca = Ca::create("a").unwrap();
        let dirsvc = node(&ca, Role::Dirsvc);
        let (addr, _stop, _) = echo_server(&dirsvc, true, ServerLimits::default()).await;
        let who = ask(&addr, crate::tls::joiner_config(ca.fingerprint()).unwrap()).await.unwrap();
        assert_eq!(who, "none");
        assert!(ask(&addr, crate::tls::joiner_config([0; 32]).unwrap()).await.is_err());
        // A peer of the cluster posing as dirsvc is refused too.
        let peer = node(&ca, Role::Peer);
        let (paddr, _pstop, _) = echo_server(&peer, true, ServerLimits::default()).await;
        assert!(ask(&paddr, crate::tls::joiner_config(ca.fingerprint()).unwrap()).await.is_err());
    }

    #[tokio::test]
    async fn garbage_and_half_open_connections_do_not_stop_service() {
        let ca = Ca::create("a").unwrap();
        let dirsvc = node(&ca, Role::Dirsvc);
        let limits = ServerLimits {
            handshake_timeout: Duration::from_millis(300),
            max_handshakes: 16,
            ..ServerLimits::default()
        };
        let (addr, _stop, _) = echo_server(&dirsvc, false, limits).await;
        let mut held = Vec::new();
        for i in 0..64 {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            if i % 2 == 0 {
                let _ = s.write_all(b"\x16\x03\x01 not a real hello, just bytes").await;
            }
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let client = node(&ca, Role::Client);
        let who = ask(&addr, client.client_config(Expect::Role(Role::Dirsvc)).unwrap()).await.unwrap();
        assert!(who.starts_with("client:"));
    }

    #[tokio::test]
    async fn per_node_connection_caps_hold() {
        let ca = Ca::create("a").unwrap();
        let dirsvc = node(&ca, Role::Dirsvc);
        let limits = ServerLimits { max_per_node: 2, ..ServerLimits::default() };
        let (addr, _stop, _) = echo_server(&dirsvc, false, limits).await;
        let client = node(&ca, Role::Client);
        let config = client.client_config(Expect::Role(Role::Dirsvc)).unwrap();
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = connect_with(&addr, config.clone()).await.unwrap();
            let mut b = [0u8; 6];
            s.read_exact(&mut b).await.unwrap();
            held.push(s);
        }
        assert!(ask(&addr, config.clone()).await.is_err(), "a third connection of the node is closed");
        let other = node(&ca, Role::Client);
        assert!(ask(&addr, other.client_config(Expect::Role(Role::Dirsvc)).unwrap()).await.is_ok());
    }
}
