//! Connections that never become a TLS session, and a count of a server's
//! open sockets, for tests of what hostile clients cost a server.
//!
//! [`connections`] opens many connections at once: half send bytes that
//! are not TLS at all, half send the first part of a TLS 1.3 ClientHello
//! and then nothing (a half-open handshake, which holds a handshake slot
//! until the server's handshake deadline); [`half_open`] only the latter.
//! The sockets are returned open, so the test decides how long the attack
//! lasts.
//!
//! [`blind_client_config`], [`dirsvc_refuses`] and [`peer_refuses`]: a
//! client that presents a certificate of its choice and checks nothing,
//! to test what a server's own verification refuses.
//!
//! [`open_server_sockets`] counts, from `/proc/net/tcp{,6}`, the sockets
//! whose local port is a server's and that the server still holds open
//! (established, half-accepted, or closed by the other end but not by
//! the server). Sockets the server closed (FIN_WAIT, TIME_WAIT) are not
//! counted even while the other end keeps its side open.

use common::pki::NodeFiles;
use common::rpc::dir::DirServiceClient;
use common::rpc::peer::PeerServiceClient;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The start of a TLS record carrying a ClientHello that announces 512
/// bytes and sends a dozen: the server waits for the rest.
const HALF_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, // handshake record, 512 bytes
    0x01, 0x00, 0x01, 0xfc, // ClientHello, 508 bytes
    0x03, 0x03, // legacy version
    0x5a, 0x5a, 0x5a, 0x5a, // the first bytes of the random
];

/// Bytes that are no TLS record (an HTTP request line).
const GARBAGE: &[u8] = b"GET / HTTP/1.1\r\nHost: p2pfs\r\n\r\n\xff\xfe\x00garbage";

/// Opens `n` connections to `addr` as fast as it can, at most 100 at a
/// time: even-numbered ones send [`GARBAGE`], odd-numbered ones half a
/// ClientHello. Returns the sockets that connected (open; drop them to
/// end the attack) and how many could not connect (a full backlog).
pub async fn connections(addr: &str, n: usize) -> (Vec<TcpStream>, usize) {
    open(addr, n, |k| if k % 2 == 0 { GARBAGE } else { HALF_HELLO }).await
}

/// Like [`connections`], every one a half-open handshake (half a
/// ClientHello, then nothing).
pub async fn half_open(addr: &str, n: usize) -> (Vec<TcpStream>, usize) {
    open(addr, n, |_| HALF_HELLO).await
}

/// Opens `n` connections to `addr`, at most 100 at a time, connection `k`
/// sending `bytes(k)`.
async fn open(addr: &str, n: usize, bytes: fn(usize) -> &'static [u8]) -> (Vec<TcpStream>, usize) {
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    let mut i = 0;
    while i < n {
        let batch = (n - i).min(100);
        let opens = (i..i + batch).map(|k| async move {
            let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await;
            let mut s = match connect {
                Ok(Ok(s)) => s,
                _ => return None,
            };
            let bytes = bytes(k);
            // The server may already have closed a connection it had no
            // slot for: that is one of the outcomes under test.
            match s.write_all(bytes).await {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
                Err(_) => return None,
            }
            Some(s)
        });
        for s in futures::future::join_all(opens).await {
            match s {
                Some(s) => held.push(s),
                None => failed += 1,
            }
        }
        i += batch;
    }
    (held, failed)
}

/// TCP states in which a server still holds its side of a connection:
/// ESTABLISHED (01), SYN_RECV (03, not accepted yet), CLOSE_WAIT (08, the
/// other end closed, the server did not).
const OPEN_STATES: [&str; 3] = ["01", "03", "08"];

/// Sockets with local port `port` that the server side holds open (see the
/// module docs), over IPv4 and IPv6.
///
/// Panics if `/proc/net/tcp` cannot be read (not Linux).
pub fn open_server_sockets(port: u16) -> usize {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            Err(e) if table.ends_with('6') && e.kind() == ErrorKind::NotFound => continue,
            Err(e) => panic!("read {table}: {e}"),
        };
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(_), Some(local), Some(_), Some(state)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && OPEN_STATES.contains(&state) {
                n += 1;
            }
        }
    }
    n
}

/// A server verifier that accepts any server: the client of
/// [`blind_client_config`] checks nothing, so what is tested is only what
/// the server checks.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client configuration that presents the certificate and key of
/// `files` (with its CA certificate as the chain) and trusts any server:
/// for testing what a server refuses (another cluster's certificate,
/// presented to a server the client does not check).
///
/// Panics if the files do not make a configuration.
pub fn blind_client_config(files: &NodeFiles) -> Arc<rustls::ClientConfig> {
    #[allow(deprecated)] // ring's provider, as common::tls uses.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut chain: Vec<CertificateDer<'static>> = Vec::new();
    for pem in [&files.cert_pem, &files.ca_pem] {
        for der in common::pki::certs_from_pem(pem).expect("certificates") {
            chain.push(CertificateDer::from(der));
        }
    }
    let key = common::pki::key_from_pem(&files.key_pem).expect("key");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    config.alpn_protocols = vec![common::tls::ALPN.to_vec()];
    Arc::new(config)
}

/// Whether the server at `addr` refuses a client that presents the
/// certificate of `files` (and checks nothing itself): the connection
/// fails, or its first call (`DirService::hello`, which anyone may call)
/// fails in transport. In TLS 1.3 the client finishes its side of the
/// handshake before the server has checked the client's certificate, so a
/// refusal may show only at the first call.
pub async fn dirsvc_refuses(addr: &str, files: &NodeFiles) -> bool {
    let stream = match common::transport::connect_with(addr, blind_client_config(files)).await {
        Ok(s) => s,
        Err(_) => return true,
    };
    let c =
        DirServiceClient::new(tarpc::client::Config::default(), common::transport::framed(stream)).spawn();
    c.hello(tarpc::context::current()).await.is_err()
}

/// Like [`dirsvc_refuses`], for a peer: its first call is `has` of no
/// chunk, which the roles that may connect may call.
pub async fn peer_refuses(addr: &str, files: &NodeFiles) -> bool {
    let stream = match common::transport::connect_with(addr, blind_client_config(files)).await {
        Ok(s) => s,
        Err(_) => return true,
    };
    let c =
        PeerServiceClient::new(tarpc::client::Config::default(), common::transport::framed(stream)).spawn();
    c.has(tarpc::context::current(), vec![]).await.is_err()
}
