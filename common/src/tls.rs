//! Mutual TLS 1.3 for every p2pfs connection: a node's identity ([`Tls`]),
//! how it verifies the other end, and the revocation list it enforces.
//!
//! Both ends present a certificate of the cluster CA (`common::pki`) and
//! verify the other's: the chain to the CA (signature, validity period,
//! key usage), that it names a p2pfs identity whose node id is its key's,
//! that it belongs to this cluster, and that the node is not revoked. A
//! client also checks that the server is who it meant to reach ([`Expect`]:
//! dirsvc, or the peer with a given id), so a dirsvc cannot redirect a
//! client to a peer that is not the one named in a layout. Host names are
//! not checked (peers move between addresses; their identity is their key).
//! Servers send their certificate with the CA's, so a joining node that
//! only knows the CA's fingerprint (from its join token) can authenticate
//! dirsvc ([`joiner_config`]). TLS 1.2 and earlier are not offered.
//!
//! A node's own certificate can be replaced while it runs ([`Tls::set_cert`],
//! after a renewal); every later handshake uses the new one.

use crate::ids::NodeId;
use crate::pki::{self, ClusterId, NodeCert, NodeFiles, PkiError};
use crate::rpc::Role;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// The name every client presents in its TLS hello; servers have one
/// identity each and verifiers do not check names.
pub const SERVER_NAME: &str = "p2pfs.invalid";

/// The ALPN protocol both ends must speak: `p2pfs/<PROTOCOL_VERSION>`
/// (a unit test checks they agree).
pub const ALPN: &[u8] = b"p2pfs/14";

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key problem.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// rustls refused the configuration (a key it cannot use, …).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider: rustls on ring (the one this workspace builds
/// everywhere without a C toolchain beyond cc). rustls marks ring's
/// provider deprecated only because it lacks post-quantum key exchange.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn lock_read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock_write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The nodes whose certificates are refused: kept by dirsvc (durably) and
/// copied to every other node, with a version that grows with every change.
#[derive(Default)]
pub struct Revocations {
    inner: RwLock<(u64, HashSet<NodeId>)>,
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = lock_read(&self.inner);
        f.debug_struct("Revocations").field("version", &g.0).field("nodes", &g.1.len()).finish()
    }
}

impl Revocations {
    /// Whether `node` is revoked.
    pub fn is_revoked(&self, node: &NodeId) -> bool {
        lock_read(&self.inner).1.contains(node)
    }

    /// The version of the list held (0: none received yet).
    pub fn version(&self) -> u64 {
        lock_read(&self.inner).0
    }

    /// Replaces the list with `nodes` at `version`, unless the list held is
    /// newer. Returns the nodes that were not revoked before.
    pub fn replace(&self, version: u64, nodes: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
        let mut g = lock_write(&self.inner);
        if version < g.0 {
            return Vec::new();
        }
        let new: HashSet<NodeId> = nodes.into_iter().collect();
        let added = new.difference(&g.1).copied().collect();
        *g = (version, new);
        added
    }

    /// Every revoked node.
    pub fn list(&self) -> Vec<NodeId> {
        lock_read(&self.inner).1.iter().copied().collect()
    }
}

/// Who the server at the other end must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expect {
    /// Any node with this role.
    Role(Role),
    /// The node with this id, which must have this role.
    Node(Role, NodeId),
}

/// The authenticated other end of a connection: what its certificate says.
#[derive(Clone)]
pub struct Caller {
    /// Its role.
    pub role: Role,
    /// Its node id.
    pub node: NodeId,
    /// Its certificate (DER), e.g. to renew it.
    pub cert: Arc<[u8]>,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role, self.node)
    }
}

impl Caller {
    /// The caller of a finished handshake, from the certificate the other
    /// end presented (`None` if it presented none).
    pub fn of(certs: Option<&[CertificateDer<'_>]>) -> Option<Caller> {
        let der = certs?.first()?;
        let id = pki::parse_node_cert(der).ok()?;
        Some(Caller { role: id.role, node: id.node, cert: Arc::from(der.as_ref()) })
    }
}

/// What both verifiers check after the chain: the identity, the cluster,
/// revocation.
fn check_identity(
    der: &CertificateDer<'_>,
    cluster: ClusterId,
    revoked: &Revocations,
) -> Result<NodeCert, rustls::Error> {
    let id = pki::parse_node_cert(der).map_err(|e| {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
    })?;
    if id.cluster != cluster {
        return Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
    }
    if revoked.is_revoked(&id.node) {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
    }
    Ok(id)
}

/// Verifies clients for a server: the chain (webpki, client-auth usage),
/// then the p2pfs identity, cluster and revocation.
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    cluster: ClusterId,
    revoked: Arc<Revocations>,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier").field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        check_identity(end_entity, self.cluster, &self.revoked)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Where a [`ServerVerifier`] gets its trust anchor.
enum Anchor {
    /// The cluster CA, known.
    Roots(Arc<RootCertStore>, ClusterId),
    /// Only the CA's fingerprint is known (joining): the server must send
    /// the CA's certificate after its own.
    Pinned([u8; 32]),
}

/// Verifies servers for a client: the chain, the identity, the expected
/// role or node, revocation. Names are not checked.
struct ServerVerifier {
    anchor: Anchor,
    expect: Expect,
    revoked: Arc<Revocations>,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerifier").field("expect", &self.expect).finish_non_exhaustive()
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bad = |e: CertificateError| rustls::Error::InvalidCertificate(e);
        let (roots, cluster) = match &self.anchor {
            Anchor::Roots(roots, cluster) => (roots.clone(), *cluster),
            Anchor::Pinned(fp) => {
                let ca = intermediates
                    .iter()
                    .find(|c| pki::fingerprint(c) == *fp)
                    .ok_or(bad(CertificateError::UnknownIssuer))?;
                let cluster = pki::parse_ca_cert(ca).map_err(|_| bad(CertificateError::UnknownIssuer))?;
                let mut roots = RootCertStore::empty();
                roots.add(ca.clone().into_owned()).map_err(|_| bad(CertificateError::UnknownIssuer))?;
                (Arc::new(roots), cluster)
            }
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, &roots, &[], now, self.algs.all)?;
        let id = check_identity(end_entity, cluster, &self.revoked)?;
        let ok = match self.expect {
            Expect::Role(r) => id.role == r,
            Expect::Node(r, n) => id.role == r && id.node == n,
        };
        if !ok {
            return Err(bad(CertificateError::ApplicationVerificationFailure));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The node's own certificate, swappable while it runs.
#[derive(Debug)]
struct OwnCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for OwnCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(lock_read(&self.current).clone())
    }
}

impl rustls::client::ResolvesClientCert for OwnCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(lock_read(&self.current).clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// One node's TLS identity and trust: its key and certificate, the cluster
/// CA, and the revocation list it enforces. Cheap to share (`Arc`).
pub struct Tls {
    me: RwLock<NodeCert>,
    cluster: ClusterId,
    ca: CertificateDer<'static>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    own: Arc<OwnCert>,
    key: Arc<dyn rustls::sign::SigningKey>,
    revoked: Arc<Revocations>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let me = lock_read(&self.me);
        f.debug_struct("Tls").field("role", &me.role).field("node", &me.node).finish_non_exhaustive()
    }
}

impl Tls {
    /// The identity in `files`.
    ///
    /// Errors: [`TlsError::Pki`] for certificates that do not parse or do
    /// not belong together; [`TlsError::Config`] for a key rustls cannot
    /// use.
    pub fn new(files: &NodeFiles) -> Result<Tls, TlsError> {
        let ca_der = pki::certs_from_pem(&files.ca_pem)?.swap_remove(0);
        let cluster = pki::parse_ca_cert(&ca_der)?;
        let cert_der = pki::certs_from_pem(&files.cert_pem)?.swap_remove(0);
        let me = pki::parse_node_cert(&cert_der)?;
        if me.cluster != cluster {
            return Err(
                PkiError::Invalid("the node certificate belongs to another cluster's CA".into()).into()
            );
        }
        let provider = provider();
        let key_der = pki::key_from_pem(&files.key_pem)?;
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec())))
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let ca = CertificateDer::from(ca_der);
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        let chain = vec![CertificateDer::from(cert_der), ca.clone()];
        let own = Arc::new(OwnCert { current: RwLock::new(Arc::new(CertifiedKey::new(chain, key.clone()))) });
        Ok(Tls {
            me: RwLock::new(me),
            cluster,
            ca,
            roots: Arc::new(roots),
            provider,
            own,
            key,
            revoked: Arc::new(Revocations::default()),
        })
    }

    /// Loads the identity from a node's TLS directory (`node.key`,
    /// `node.crt`, `ca.crt`).
    ///
    /// Errors: as [`NodeFiles::load`] and [`Tls::new`].
    pub fn load(dir: &Path) -> Result<Tls, TlsError> {
        Tls::new(&NodeFiles::load(dir)?)
    }

    /// What this node's certificate says.
    pub fn me(&self) -> NodeCert {
        lock_read(&self.me).clone()
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        lock_read(&self.me).node
    }

    /// The cluster.
    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// The cluster CA's fingerprint.
    pub fn ca_fingerprint(&self) -> [u8; 32] {
        pki::fingerprint(&self.ca)
    }

    /// This node's current certificate (DER).
    pub fn cert_der(&self) -> Vec<u8> {
        lock_read(&self.own.current).cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }

    /// The revocation list this node enforces (shared by every connection
    /// it makes or accepts).
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revoked
    }

    /// Uses `cert_pem` as this node's certificate from now on (after a
    /// renewal): it must name the same node and role.
    ///
    /// Errors: [`TlsError::Pki`] if it does not.
    pub fn set_cert(&self, cert_pem: &str) -> Result<NodeCert, TlsError> {
        let der = pki::certs_from_pem(cert_pem)?.swap_remove(0);
        let id = pki::parse_node_cert(&der)?;
        {
            let me = lock_read(&self.me);
            if (id.node, id.role, id.cluster) != (me.node, me.role, me.cluster) {
                return Err(PkiError::Invalid(
                    "a renewed certificate must name the same node and role".into(),
                )
                .into());
            }
        }
        let chain = vec![CertificateDer::from(der), self.ca.clone()];
        *lock_write(&self.own.current) = Arc::new(CertifiedKey::new(chain, self.key.clone()));
        *lock_write(&self.me) = id.clone();
        Ok(id)
    }

    /// A server configuration: TLS 1.3, this node's certificate, clients
    /// verified as the module says. `allow_unauthenticated`: accept clients
    /// that present no certificate (dirsvc, for joining nodes; the server
    /// then lets them call nothing but `join`).
    ///
    /// Errors: [`TlsError::Config`].
    pub fn server_config(&self, allow_unauthenticated: bool) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone());
        let builder = if allow_unauthenticated { builder.allow_unauthenticated() } else { builder };
        let inner = builder.build().map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier =
            Arc::new(ClientVerifier { inner, cluster: self.cluster, revoked: self.revoked.clone() });
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.own.clone());
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration: TLS 1.3, this node's certificate, the
    /// server verified as the module says and required to be `expect`.
    ///
    /// Errors: [`TlsError::Config`].
    pub fn client_config(&self, expect: Expect) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let verifier = Arc::new(ServerVerifier {
            anchor: Anchor::Roots(self.roots.clone(), self.cluster),
            expect,
            revoked: self.revoked.clone(),
            algs: self.provider.signature_verification_algorithms,
        });
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.own.clone());
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(config))
    }
}

/// A client configuration for a node that has no certificate yet and joins
/// with a token: it presents none, and accepts only a dirsvc whose chain
/// ends at the CA with fingerprint `ca` (from the token).
///
/// Errors: [`TlsError::Config`].
pub fn joiner_config(ca: [u8; 32]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(ServerVerifier {
        anchor: Anchor::Pinned(ca),
        expect: Expect::Role(Role::Dirsvc),
        revoked: Arc::new(Revocations::default()),
        algs: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_alpn_names_the_rpc_protocol_version() {
        assert_eq!(super::ALPN, format!("p2pfs/{}", crate::rpc::PROTOCOL_VERSION).as_bytes());
    }
}
