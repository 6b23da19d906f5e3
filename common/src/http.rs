//! The one small, read-only HTTP/1.1 server of every p2pfs process: the
//! Prometheus endpoint (`/metrics`, see [`crate::telemetry`]) and dirsvc's
//! status page share it, one listener per process.
//!
//! Deliberately minimal: `GET` and `HEAD` only, one request per connection
//! (`Connection: close`), the request head capped at [`MAX_HEAD_BYTES`] and
//! read within [`HEAD_TIMEOUT`], at most [`MAX_CONNECTIONS`] connections
//! served at once (more wait in the kernel's backlog). Plain HTTP, no TLS:
//! it serves figures, never data or keys, and binds loopback unless told
//! otherwise (docs/OPERATIONS.md says what exposing it reveals).

use futures::future::BoxFuture;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Largest request head (request line and headers) read, in bytes; a
/// longer one is answered 431.
pub const MAX_HEAD_BYTES: usize = 8 << 10;

/// How long a client may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// How long writing a response may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;

/// A request, as the handler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The path, without the query string (e.g. `/metrics`).
    pub path: String,
    /// The query string after `?`, empty if none.
    pub query: String,
}

/// A response: status, content type and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code (200, 404, …).
    pub status: u16,
    /// The `Content-Type` header value.
    pub content_type: &'static str,
    /// The body bytes (not sent for `HEAD`).
    pub body: Vec<u8>,
}

impl Response {
    /// A 200 response with `body` of type `content_type`.
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response { status: 200, content_type, body: body.into() }
    }

    /// A plain-text response with `status`.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into().into_bytes() }
    }

    /// 404 Not Found.
    pub fn not_found() -> Self {
        Response::text(404, "not found\n")
    }
}

/// What answers each request; shared by every connection.
pub type Handler = Arc<dyn Fn(Request) -> BoxFuture<'static, Response> + Send + Sync>;

/// A running HTTP server. Dropping it stops the accept loop without
/// waiting; [`HttpServer::shutdown`] waits for it.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `listen` (`host:port`; port 0 picks a free one) and serves
    /// every request with `handler` in a task on the current tokio runtime.
    ///
    /// Errors: the bind error (address in use, bad address).
    pub async fn bind(listen: &str, handler: Handler) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind the HTTP address {listen}: {e}")))?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, handler, cancel.clone()));
        Ok(HttpServer { addr, cancel, task: Some(task) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for the accept loop to end (requests under
    /// way finish in their own tasks).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(listener: TcpListener, handler: Handler, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, &handler).await {
                debug!(%remote, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Reads one request head, answers it and closes.
async fn serve_one(mut stream: TcpStream, handler: &Handler) -> io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            write_response(&mut stream, &Response::text(431, "request head too large\n"), false).await?;
            // Read what the client still sends before closing: closing
            // with unread input resets the connection, and the client
            // would lose the answer.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
            return Ok(());
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "request head not sent in time")),
    };
    let (method, target) = match parse_request_line(&head) {
        Some(m) => m,
        None => return write_response(&mut stream, &Response::text(400, "bad request\n"), false).await,
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return write_response(&mut stream, &Response::text(405, "only GET and HEAD\n"), false).await,
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let response = handler(Request { path, query }).await;
    write_response(&mut stream, &response, head_only).await
}

/// The request head up to the blank line; `None` if it exceeds
/// [`MAX_HEAD_BYTES`].
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_end(&buf) {
            if end > MAX_HEAD_BYTES {
                return Ok(None);
            }
            buf.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-request"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Where the head ends (`\r\n\r\n`, or `\n\n` from lenient clients).
fn find_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `(method, target)` of a request line `METHOD TARGET HTTP/1.x`.
fn parse_request_line(head: &str) -> Option<(&str, &str)> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    Some((method, target))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn write_response(stream: &mut TcpStream, r: &Response, head_only: bool) -> io::Result<()> {
    // The pages are figures for operators: never cached, never framed,
    // never sniffed into another type, no scripts or remote resources.
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Security-Policy: default-src 'none'; \
         style-src 'unsafe-inline'; frame-ancestors 'none'\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        if !head_only {
            stream.write_all(&r.body).await?;
        }
        stream.shutdown().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "response not written in time")),
    }
}

/// Escapes `s` for HTML text and attribute values (`& < > " '`).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, raw: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_get_and_head_and_refuses_other_methods_and_bad_heads() {
        let handler: Handler = Arc::new(|r: Request| {
            Box::pin(async move {
                match r.path.as_str() {
                    "/x" => Response::ok("text/plain", format!("x q={}", r.query)),
                    _ => Response::not_found(),
                }
            })
        });
        let server = HttpServer::bind("127.0.0.1:0", handler).await.unwrap();
        let a = server.addr();
        let ok = get(a, "GET /x?a=1 HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 7\r\n") && ok.ends_with("\r\n\r\nx q=a=1"), "{ok}");
        let head = get(a, "HEAD /x HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(get(a, "GET /nope HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(get(a, "POST /x HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        assert!(get(a, "GET x HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 400"));
        let huge = format!("GET /x HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES + 10));
        let r = get(a, &huge).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{r:?}");
        server.shutdown().await;
        assert!(TcpStream::connect(a).await.is_err(), "the listener is closed after shutdown");
    }

    #[test]
    fn escape_html_escapes_markup_and_quotes() {
        assert_eq!(escape_html(r#"<a href="x">&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }
}
