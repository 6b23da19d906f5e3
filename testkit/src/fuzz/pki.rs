//! Cluster identity bytes: node and CA certificates (DER, from a TLS peer
//! or a node's directory), certificate signing requests (from a joiner,
//! read by dirsvc), join tokens (text an operator pastes) and a node's TLS
//! directory (`node.key`, `node.crt`, `ca.crt`, PEM).
//!
//! The targets check what the callers rely on, not only that nothing
//! panics: a certificate dirsvc renews keeps its cluster, role and node; a
//! request `csr_node` accepts gets a certificate (dirsvc spends the join
//! token in between) for that node, and one it refuses gets none; a token
//! prints back to itself; the key a node's files are checked with is the
//! key TLS signs with.
//!
//! Seeds are fixed files in `testkit/fuzz-fixtures/pki/`, made once by
//! `tests::regenerate_fixtures` with the project's own CA code: a CA, node
//! keys and certificates of two roles (valid for 100 years, so they never
//! go stale), a node of another cluster, and requests for an Ed25519 and
//! an ECDSA key. Their keys are test keys, used for nothing else.

use common::pki::{self, Ca, NodeFiles, PkiError, NODE_CERT_VALIDITY};
use common::rpc::Role;
use common::tls::{Tls, TlsError};
use common::NodeId;
use std::str::FromStr;
use std::sync::OnceLock;
use zeroize::Zeroizing;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz-fixtures/pki/", $name))
    };
}

const CA_CRT: &[u8] = fixture!("ca.crt");
const CA_KEY: &[u8] = fixture!("ca.key");
const PEER_CRT: &[u8] = fixture!("peer.crt");
const PEER_KEY: &[u8] = fixture!("peer.key");
const ADMIN_CRT: &[u8] = fixture!("admin.crt");
const ADMIN_KEY: &[u8] = fixture!("admin.key");
const OTHER_CA_CRT: &[u8] = fixture!("other-ca.crt");
const OTHER_PEER_CRT: &[u8] = fixture!("other-peer.crt");
const OTHER_PEER_KEY: &[u8] = fixture!("other-peer.key");
const JOIN_CSR: &[u8] = fixture!("join.csr");
const ECDSA_CSR: &[u8] = fixture!("ecdsa.csr");

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or_default()
}

/// The first certificate of a PEM fixture, DER.
fn der(pem: &[u8]) -> Vec<u8> {
    pki::certs_from_pem(text(pem)).ok().and_then(|mut c| c.drain(..).next()).unwrap_or_default()
}

/// The fixed cluster CA (dirsvc's, in the targets).
fn ca() -> Option<&'static Ca> {
    static CA: OnceLock<Option<Ca>> = OnceLock::new();
    CA.get_or_init(|| Ca::from_pem(text(CA_CRT), text(CA_KEY)).ok()).as_ref()
}

/// A node certificate (DER) as the TLS verifiers and `Caller::of` read it
/// (`parse_node_cert`); one that parses is then renewed by the fixed CA as
/// dirsvc's `renew_certificate` does. A renewal must keep cluster, role
/// and node, and a certificate of another cluster must not be renewed.
pub fn node_cert(data: &[u8]) {
    let Ok(id) = pki::parse_node_cert(data) else { return };
    let Some(ca) = ca() else { return };
    match ca.renew(data, NODE_CERT_VALIDITY) {
        Ok((node, pem)) => {
            assert_eq!(id.cluster, ca.cluster(), "renewed a certificate of another cluster");
            assert_eq!(node, id.node, "a renewal names another node");
            let der = pki::certs_from_pem(&pem).expect("a renewal is PEM").swap_remove(0);
            let renewed = pki::parse_node_cert(&der).expect("a renewed certificate parses");
            assert_eq!(
                (renewed.cluster, renewed.role, renewed.node),
                (id.cluster, id.role, id.node),
                "a renewal changed the identity"
            );
        }
        // The fuzzer cannot change a certificate's key without breaking its
        // node id, so every certificate that parses here has a seed's
        // Ed25519 key: only another cluster is a reason to refuse.
        Err(PkiError::Invalid(why)) => {
            assert_ne!(id.cluster, ca.cluster(), "a certificate of this cluster was not renewed: {why}")
        }
        Err(e) => panic!("renewing a certificate that parses failed: {e}"),
    }
}

/// Node certificates (DER): two roles of the fixed cluster, one of
/// another cluster, and the CA's own (not a node).
pub fn node_cert_seeds() -> Vec<Vec<u8>> {
    [PEER_CRT, ADMIN_CRT, OTHER_PEER_CRT, CA_CRT].iter().map(|p| der(p)).collect()
}

/// A CA certificate (DER) as a node reads its `ca.crt` and as a joiner
/// reads the CA dirsvc presents (`parse_ca_cert`). The cluster id it
/// returns must be one the certificate names, in a `p2pfs://<id>/ca` URI.
pub fn ca_cert(data: &[u8]) {
    let Ok(cluster) = pki::parse_ca_cert(data) else { return };
    let named = data.windows(pki::URI_SCHEME.len() + 32 + 3).any(|w| {
        let mut id = [0u8; 16];
        w.starts_with(pki::URI_SCHEME.as_bytes())
            && w.ends_with(b"/ca")
            && hex::decode_to_slice(&w[pki::URI_SCHEME.len()..pki::URI_SCHEME.len() + 32], &mut id).is_ok()
            && id == cluster.0
    });
    assert!(named, "parse_ca_cert returned cluster {cluster}, which the certificate does not name");
}

/// CA certificates (DER) of two clusters, and a node certificate (not a
/// CA).
pub fn ca_cert_seeds() -> Vec<Vec<u8>> {
    [CA_CRT, OTHER_CA_CRT, PEER_CRT].iter().map(|p| der(p)).collect()
}

/// A certificate signing request (DER) as dirsvc's `join` handles it: at
/// most `MAX_CSR_BYTES`, `csr_node` (checked before the token is spent),
/// then `Ca::issue_for_csr`. Both must agree: a request `csr_node` accepts
/// gets a certificate for that node (else the token is spent for
/// nothing), one it refuses gets none.
pub fn csr(data: &[u8]) {
    if data.len() > dirsvc::server::MAX_CSR_BYTES {
        return;
    }
    let Some(ca) = ca() else { return };
    let node = pki::csr_node(data);
    let issued = ca.issue_for_csr(data, Role::Client, NODE_CERT_VALIDITY);
    match (node, issued) {
        (Ok(node), Ok((issued, pem))) => {
            assert_eq!(issued, node, "the certificate names another node than csr_node");
            let der = pki::certs_from_pem(&pem).expect("a certificate is PEM").swap_remove(0);
            let c = pki::parse_node_cert(&der).expect("an issued certificate parses");
            assert_eq!((c.cluster, c.role, c.node), (ca.cluster(), Role::Client, node));
        }
        (Err(_), Err(_)) => {}
        (Ok(node), Err(e)) => panic!("csr_node accepted a request for {node} that gets no certificate: {e}"),
        (Err(e), Ok(_)) => panic!("a request csr_node refuses ({e}) got a certificate"),
    }
}

/// Requests for an Ed25519 key (accepted) and an ECDSA key (refused).
pub fn csr_seeds() -> Vec<Vec<u8>> {
    vec![JOIN_CSR.to_vec(), ECDSA_CSR.to_vec()]
}

/// A join token's text as `fs-client join` and `peerd --join` read it. A
/// token that parses prints back to the same token.
pub fn join_token(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(t) = pki::JoinToken::from_str(s) else { return };
    let again = t.to_text();
    assert_eq!(again.len(), pki::TOKEN_PREFIX.len() + 3 + 2 * (32 + 8 + 16));
    let back = pki::JoinToken::from_str(&again).expect("a printed token parses");
    assert!(back == t, "a token does not print back to itself");
}

/// Tokens: as printed, with spaces around, in upper case (literal text,
/// not `to_text`'s: the seeds must not depend on the writer under test).
pub fn join_token_seeds() -> Vec<Vec<u8>> {
    let ca = "c4".repeat(32);
    [
        format!("p2pfs-join-1.{ca}.0102030405060708.5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e"),
        format!("  p2pfs-join-1.{ca}.0102030405060708.5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e\n"),
        format!("p2pfs-join-1.{}.0A0B0C0D0E0F1011.FFEEDDCCBBAA99887766554433221100", ca.to_uppercase()),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// Splits a node-files input into its three texts (`node.key`, `node.crt`,
/// `ca.crt`), separated by NUL bytes; `None` unless each is UTF-8 (the
/// files are read as text).
fn three_texts(data: &[u8]) -> Option<(String, String, String)> {
    let mut parts = data.splitn(3, |b| *b == 0);
    let mut next = || parts.next().and_then(|p| std::str::from_utf8(p).ok()).map(str::to_string);
    Some((next()?, next()?, next()?))
}

/// A node's TLS directory as a starting daemon reads it: `NodeFiles`
/// checks that the files belong together, then `Tls::new` builds the
/// identity. The input is the three texts separated by NUL bytes. Files
/// that pass must describe one node: the certificate's node and role,
/// the key that TLS signs with (the first `PRIVATE KEY` block) being the
/// certificate's key, and, when the CA is of the certificate's cluster,
/// a TLS identity with that node and role unless rustls refuses the
/// material.
pub fn node_files(data: &[u8]) {
    let Some((key, cert, ca)) = three_texts(data) else { return };
    let Ok(files) = NodeFiles::from_pem(Zeroizing::new(key), cert, ca) else { return };
    let cert_der =
        pki::certs_from_pem(&files.cert_pem).expect("accepted files hold a certificate").swap_remove(0);
    let id = pki::parse_node_cert(&cert_der).expect("accepted files hold a node certificate");
    assert_eq!((id.node, id.role), (files.node, files.role), "NodeFiles names another node or role");
    let key_der = pki::key_from_pem(&files.key_pem).expect("accepted files hold a PRIVATE KEY block");
    use rcgen::PublicKeyData as _;
    let key = rcgen::KeyPair::try_from(key_der.as_slice()).expect("the key TLS uses is a key");
    assert_eq!(
        NodeId::of_public_key(&key.subject_public_key_info()),
        files.node,
        "TLS would sign with a key that is not the certificate's"
    );
    let ca_cluster = pki::certs_from_pem(&files.ca_pem)
        .ok()
        .and_then(|c| c.first().and_then(|d| pki::parse_ca_cert(d).ok()));
    match Tls::new(&files) {
        Ok(tls) => {
            assert_eq!(Some(tls.cluster()), ca_cluster);
            assert_eq!((tls.node(), tls.me().role, tls.cluster()), (id.node, id.role, id.cluster));
        }
        // rustls (webpki) may refuse a CA certificate that x509-parser
        // reads; any other refusal of files of one cluster is NodeFiles
        // and Tls disagreeing.
        Err(e) => assert!(
            ca_cluster != Some(id.cluster) || matches!(e, TlsError::Config(_)),
            "files of this cluster have no TLS identity: {e}"
        ),
    }
}

fn node_files_input(key: &[u8], cert: &[u8], ca: &[u8]) -> Vec<u8> {
    [key, &[0], cert, &[0], ca].concat()
}

/// Files of two nodes, a key with another node's certificate, and a node
/// of another cluster with this cluster's CA.
pub fn node_files_seeds() -> Vec<Vec<u8>> {
    vec![
        node_files_input(PEER_KEY, PEER_CRT, CA_CRT),
        node_files_input(ADMIN_KEY, ADMIN_CRT, CA_CRT),
        node_files_input(PEER_KEY, ADMIN_CRT, CA_CRT),
        node_files_input(OTHER_PEER_KEY, OTHER_PEER_CRT, CA_CRT),
        node_files_input(OTHER_PEER_KEY, OTHER_PEER_CRT, OTHER_CA_CRT),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_fixtures_are_what_the_seeds_say() {
        let ca = ca().expect("the CA fixture loads");
        let peer = pki::parse_node_cert(&der(PEER_CRT)).unwrap();
        assert_eq!((peer.cluster, peer.role), (ca.cluster(), Role::Peer));
        let admin = pki::parse_node_cert(&der(ADMIN_CRT)).unwrap();
        assert_eq!((admin.cluster, admin.role), (ca.cluster(), Role::Admin));
        let other = pki::parse_node_cert(&der(OTHER_PEER_CRT)).unwrap();
        assert_eq!(Ok(other.cluster), pki::parse_ca_cert(&der(OTHER_CA_CRT)).map_err(|e| e.to_string()));
        assert_ne!(other.cluster, ca.cluster());
        assert!(pki::csr_node(JOIN_CSR).is_ok());
        assert!(pki::csr_node(ECDSA_CSR).is_err());
        for (i, s) in node_files_seeds().iter().enumerate() {
            let (k, c, a) = three_texts(s).unwrap();
            assert_eq!(NodeFiles::from_pem(Zeroizing::new(k), c, a).is_ok(), i != 2, "seed {i}");
        }
        assert!(join_token_seeds().iter().all(|s| pki::JoinToken::from_str(text(s)).is_ok()));
    }

    /// Writes the fixtures again (new keys: the seeds change, and inputs
    /// saved against the old ones stop reproducing). Run with
    /// `cargo test -p p2pfs-testkit --lib regenerate_fixtures -- --ignored`.
    #[test]
    #[ignore = "writes testkit/fuzz-fixtures/pki/"]
    fn regenerate_fixtures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-fixtures/pki");
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
        let until = SystemTime::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let ca = Ca::create("fuzz").unwrap();
        let scratch = tempfile::tempdir().unwrap();
        ca.save(scratch.path()).unwrap();
        write("ca.crt", ca.cert_pem().as_bytes());
        write("ca.key", &std::fs::read(scratch.path().join(pki::CA_KEY_FILE)).unwrap());
        for (name, role) in [("peer", Role::Peer), ("admin", Role::Admin)] {
            let n = ca.new_node_until(role, until).unwrap();
            write(&format!("{name}.crt"), n.cert_pem.as_bytes());
            write(&format!("{name}.key"), n.key_pem.as_bytes());
        }
        let other = Ca::create("fuzz other").unwrap();
        write("other-ca.crt", other.cert_pem().as_bytes());
        let n = other.new_node_until(Role::Peer, until).unwrap();
        write("other-peer.crt", n.cert_pem.as_bytes());
        write("other-peer.key", n.key_pem.as_bytes());
        write("join.csr", &pki::new_key_and_csr().unwrap().1);
        let ecdsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let req =
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&ecdsa).unwrap();
        write("ecdsa.csr", req.der());
    }
}
