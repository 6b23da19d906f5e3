//! The one framed transport every p2pfs connection uses.
//!
//! TCP (with `TCP_NODELAY`), 4-byte big-endian length-delimited frames of at
//! most [`MAX_FRAME_BYTES`], bincode-encoded tarpc messages ([`crate::wire`],
//! which also refuses what tarpc would trust blindly). Both ends set
//! the same frame limit: a frame over it, or bytes that do not decode, end
//! that connection only. TLS will wrap the stream here, below the framing,
//! so no caller changes when it comes.

use crate::config::MAX_FRAME_BYTES;
use crate::rpc::dir::DirServiceClient;
use crate::rpc::peer::PeerServiceClient;
use crate::wire;
use serde::Serialize;
use std::io;
use std::time::Duration;
use tarpc::serde_transport::Transport;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::LengthDelimitedCodec;

/// A framed, bincode-encoded transport over one TCP connection.
pub type TcpTransport<In, Out> = Transport<TcpStream, In, Out, wire::Codec<In, Out>>;

/// How long [`connect`] waits for the TCP handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Frames an accepted or connected stream.
pub fn framed<In, Out>(stream: TcpStream) -> TcpTransport<In, Out>
where
    In: wire::Inbound,
    Out: Serialize,
{
    let _ = stream.set_nodelay(true);
    let framed = LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME_BYTES).new_framed(stream);
    tarpc::serde_transport::new(framed, wire::Codec::default())
}

/// Connects to `addr` within [`CONNECT_TIMEOUT`].
///
/// Errors: the connect error, or `TimedOut`.
pub async fn connect<A: ToSocketAddrs>(addr: A) -> io::Result<TcpStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// A `DirService` client on a fresh connection to `addr`.
///
/// Errors: as [`connect`].
pub async fn dir_client(addr: &str) -> io::Result<DirServiceClient> {
    let stream = connect(addr).await?;
    Ok(DirServiceClient::new(tarpc::client::Config::default(), framed(stream)).spawn())
}

/// A `PeerService` client on a fresh connection to `addr`.
///
/// Errors: as [`connect`].
pub async fn peer_client(addr: &str) -> io::Result<PeerServiceClient> {
    let stream = connect(addr).await?;
    Ok(PeerServiceClient::new(tarpc::client::Config::default(), framed(stream)).spawn())
}

/// A tarpc context whose deadline is `timeout` from now.
pub fn deadline(timeout: Duration) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + timeout;
    ctx
}

/// Serves one tarpc service on every connection accepted from `listener`
/// until `shutdown` is cancelled. Each connection is its own task; each
/// request its own task. A connection that sends a bad or oversize frame is
/// closed; the others carry on.
///
/// `$listener`: a `tokio::net::TcpListener`; `$server`: a `Clone` value whose
/// `.serve()` gives the tarpc `Serve` impl; `$shutdown`: a
/// `tokio_util::sync::CancellationToken`; optional `$per_connection`: a
/// function from `(&server, remote: std::net::SocketAddr)` to the value
/// that serves one new connection (default: a clone), for services that
/// keep per-connection state or account for who is calling.
#[macro_export]
macro_rules! serve_tarpc {
    ($listener:expr, $server:expr, $shutdown:expr) => {
        $crate::serve_tarpc!($listener, $server, $shutdown, |s, _remote: ::std::net::SocketAddr| {
            ::std::clone::Clone::clone(s)
        })
    };
    ($listener:expr, $server:expr, $shutdown:expr, $per_connection:expr) => {{
        use ::futures::StreamExt as _;
        use ::tarpc::server::Channel as _;
        let listener: ::tokio::net::TcpListener = $listener;
        let shutdown: ::tokio_util::sync::CancellationToken = $shutdown;
        let server = $server;
        loop {
            let accepted = ::tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    ::tracing::warn!(error = %e, "accept failed");
                    ::tokio::time::sleep(::std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let server = ($per_connection)(&server, remote);
            let shutdown = shutdown.clone();
            ::tokio::spawn(async move {
                let transport = $crate::transport::framed(stream);
                let channel = ::tarpc::server::BaseChannel::with_defaults(transport);
                let work = channel.execute(server.serve()).for_each(|fut| async {
                    ::tokio::spawn(fut);
                });
                ::tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = work => {}
                }
                ::tracing::debug!(%remote, "connection closed");
            });
        }
    }};
}
