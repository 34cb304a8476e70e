//! Mutual TLS for the peer transport: loading a node's certificate files and building the
//! rustls configs (ring provider only) that both ends of a peer connection use.
//!
//! A cert directory holds `ca.pem` (the cluster CA), `node-<id>.pem` and `node-<id>.key`
//! (see [`crate::cert`], which writes them). Every node is both a server (its peers fetch from
//! it) and a client (it fetches from them), so one certificate serves both roles. The peer's
//! node id is the `node-<id>.sluice.internal` DNS name in its certificate: the server reads it
//! from the verified client certificate ([`node_id_of_certificate`]), the client asks rustls to
//! check it as the server name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

use crate::NodeId;
use crate::cert::{CA_CERT_FILE, node_cert_file, node_dns_name, node_key_file};

/// The ALPN protocol both ends must offer: a peer speaking another version of the peer
/// protocol fails the handshake instead of misreading frames.
pub const PEER_ALPN: &[u8] = b"sluice-peer/1";

/// The DNS suffix of a node's name: `node-<id>` + this.
pub const NODE_DNS_SUFFIX: &str = ".sluice.internal";

/// Largest PEM file read from a cert directory; certificates and keys are a few KiB.
pub const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Why a node's TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A required file does not exist.
    #[error("{path}: missing (create it with `sluice cert`)")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid PEM of the expected kind.
    #[error("{path}: not a valid PEM file: {reason}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A certificate file holds no certificate.
    #[error("{path}: no CERTIFICATE block in the file")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{path}: no private key in the file")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A node certificate does not name the node it is loaded for.
    #[error("{path}: the certificate names node(s) {found:?}, not node {expected}")]
    WrongNode {
        /// The certificate file.
        path: PathBuf,
        /// The node id it was loaded for.
        expected: NodeId,
        /// The node ids its DNS names carry.
        found: Vec<NodeId>,
    },
    /// A node certificate does not chain to the CA in `ca.pem` (or is expired, or lacks the
    /// server/client usages).
    #[error("{path}: not a valid node certificate of the CA in ca.pem: {reason}")]
    NotSignedByCa {
        /// The certificate file.
        path: PathBuf,
        /// rustls' reason.
        reason: String,
    },
    /// A certificate is not well-formed DER, or names no node.
    #[error("bad certificate: {reason}")]
    BadCertificate {
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material when building a config (for example a key that does not
    /// match its certificate).
    #[error("cannot build the TLS config: {0}")]
    Config(String),
}

/// One node's TLS material: the CA to trust, its own certificate chain and private key.
#[derive(Debug)]
pub struct PeerTls {
    node: NodeId,
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for PeerTls {
    fn clone(&self) -> Self {
        Self {
            node: self.node,
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl PeerTls {
    /// Loads `dir/ca.pem`, `dir/node-<node>.pem` and `dir/node-<node>.key`, and checks that
    /// the certificate names `node` and chains to the CA.
    pub fn load(dir: &Path, node: NodeId) -> Result<Self, TlsError> {
        let ca_path = dir.join(CA_CERT_FILE);
        let ca = read_certificates(&ca_path)?.swap_remove(0);
        let cert_path = dir.join(node_cert_file(node));
        let chain = read_certificates(&cert_path)?;
        let key_path = dir.join(node_key_file(node));
        let key_pem = read_pem_file(&key_path)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| TlsError::BadPem {
                path: key_path.clone(),
                reason: e.to_string(),
            })?
            .ok_or(TlsError::NoKey {
                path: key_path.clone(),
            })?;
        let found = node_ids_of_certificate(&chain[0]).map_err(|e| TlsError::BadPem {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
        if found != [node] {
            return Err(TlsError::WrongNode {
                path: cert_path,
                expected: node,
                found,
            });
        }
        verify_node_certificate(&ca, &chain, node).map_err(|reason| TlsError::NotSignedByCa {
            path: cert_path,
            reason,
        })?;
        let tls = Self {
            node,
            ca,
            chain,
            key,
        };
        // A key that does not belong to the certificate fails here, at load, not at the
        // first handshake.
        tls.server_config()?;
        Ok(tls)
    }

    /// The node id this material belongs to.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The CA certificate (DER).
    pub fn ca_certificate(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// The server side: presents this node's certificate and requires a client certificate
    /// signed by the CA (TLS 1.3 only, as QUIC requires; no 0-RTT: `max_early_data_size` stays
    /// 0 because replayed replication requests are not safe).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = ring_provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![PEER_ALPN.to_vec()];
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// The client side: trusts only the CA, presents this node's certificate (TLS 1.3 only,
    /// 0-RTT off). The server name to check is given per connection
    /// (`node-<id>.sluice.internal`).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![PEER_ALPN.to_vec()];
        config.enable_early_data = false;
        Ok(config)
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| TlsError::Config(format!("the CA certificate: {e}")))?;
        Ok(roots)
    }
}

/// The ring crypto provider; never rustls' process default, which another crate could set
/// to aws-lc-rs.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks that `chain` is a valid certificate for node `node` issued by `ca` (signature,
/// validity period, server-auth usage and the `node-<id>.sluice.internal` name), the same
/// checks a connecting peer makes. Returns rustls' reason on failure.
pub fn verify_node_certificate(
    ca: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
    node: NodeId,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| e.to_string())?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), ring_provider())
        .build()
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(node_dns_name(node)).map_err(|e| e.to_string())?;
    let (end_entity, intermediates) = chain.split_first().ok_or("an empty chain")?;
    verifier
        .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The node id a (verified) peer certificate names: its one DNS name of the form
/// `node-<id>.sluice.internal`. None or several such names is an error.
pub fn node_id_of_certificate(der: &[u8]) -> Result<NodeId, TlsError> {
    let ids = node_ids_of_certificate(der)?;
    match ids.as_slice() {
        [id] => Ok(*id),
        [] => Err(TlsError::BadCertificate {
            reason: "no node-<id>.sluice.internal name in its subject alternative names".into(),
        }),
        _ => Err(TlsError::BadCertificate {
            reason: format!("several node names {ids:?} in its subject alternative names"),
        }),
    }
}

/// Every node id named by a `node-<id>.sluice.internal` DNS name in the certificate.
pub fn node_ids_of_certificate(der: &[u8]) -> Result<Vec<NodeId>, TlsError> {
    let names = der::dns_names(der).map_err(|reason| TlsError::BadCertificate {
        reason: reason.to_owned(),
    })?;
    Ok(names
        .iter()
        .filter_map(|n| parse_node_dns_name(n))
        .collect())
}

/// `node-<id>.sluice.internal` → `id` (canonical decimal only: no sign, no leading zeros).
pub fn parse_node_dns_name(name: &str) -> Option<NodeId> {
    let digits = name.strip_prefix("node-")?.strip_suffix(NODE_DNS_SUFFIX)?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return None;
    }
    digits.parse().ok()
}

/// Reads a PEM file of at most [`PEM_FILE_BYTES_MAX`].
fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TlsError::Missing {
            path: path.to_owned(),
        },
        _ => TlsError::Read {
            path: path.to_owned(),
            source,
        },
    })?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(TlsError::BadPem {
            path: path.to_owned(),
            reason: format!("larger than {PEM_FILE_BYTES_MAX} bytes"),
        });
    }
    Ok(bytes)
}

/// The certificates of a PEM file (at least one).
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem_file(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Just enough DER to find the subject alternative names of an X.509 certificate.
mod der {
    /// The subjectAltName extension's OID, 2.5.29.17, as DER content bytes.
    const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    const TAG_SEQUENCE: u8 = 0x30;
    const TAG_OID: u8 = 0x06;
    const TAG_BOOLEAN: u8 = 0x01;
    const TAG_OCTET_STRING: u8 = 0x04;
    /// `[3] EXPLICIT` around the extensions in a TBSCertificate.
    const TAG_EXTENSIONS: u8 = 0xa3;
    /// `dNSName [2] IMPLICIT IA5String` in a GeneralName.
    const TAG_DNS_NAME: u8 = 0x82;

    /// Reads one TLV from the front of `input`: (tag, content, rest).
    fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), &'static str> {
        let (&tag, rest) = input.split_first().ok_or("truncated DER: no tag")?;
        let (&first, mut rest) = rest.split_first().ok_or("truncated DER: no length")?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err("bad DER length");
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return Err("truncated DER: content shorter than its length");
        }
        let (content, rest) = rest.split_at(len);
        Ok((tag, content, rest))
    }

    /// Reads one TLV that must have `tag`.
    fn expect(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), &'static str> {
        let (t, content, rest) = tlv(input)?;
        if t != tag {
            return Err("unexpected DER tag");
        }
        Ok((content, rest))
    }

    /// The DNS names in the certificate's subjectAltName extension (none if it has none).
    pub(super) fn dns_names(cert: &[u8]) -> Result<Vec<String>, &'static str> {
        let (certificate, _) = expect(cert, TAG_SEQUENCE)?;
        let (mut tbs, _) = expect(certificate, TAG_SEQUENCE)?;
        let mut names = Vec::new();
        while !tbs.is_empty() {
            let (tag, content, rest) = tlv(tbs)?;
            tbs = rest;
            if tag != TAG_EXTENSIONS {
                continue;
            }
            let (mut extensions, _) = expect(content, TAG_SEQUENCE)?;
            while !extensions.is_empty() {
                let (extension, rest) = expect(extensions, TAG_SEQUENCE)?;
                extensions = rest;
                let (oid, mut fields) = expect(extension, TAG_OID)?;
                if oid != OID_SUBJECT_ALT_NAME {
                    continue;
                }
                let (tag, _, rest) = tlv(fields)?;
                if tag == TAG_BOOLEAN {
                    fields = rest;
                }
                let (value, _) = expect(fields, TAG_OCTET_STRING)?;
                let (mut general_names, _) = expect(value, TAG_SEQUENCE)?;
                while !general_names.is_empty() {
                    let (tag, content, rest) = tlv(general_names)?;
                    general_names = rest;
                    if tag == TAG_DNS_NAME {
                        let name =
                            std::str::from_utf8(content).map_err(|_| "a non-ASCII DNS name")?;
                        names.push(name.to_owned());
                    }
                }
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_dns_names_parse_only_canonically() {
        assert_eq!(parse_node_dns_name("node-0.sluice.internal"), Some(0));
        assert_eq!(parse_node_dns_name("node-42.sluice.internal"), Some(42));
        assert_eq!(
            parse_node_dns_name("node-4294967295.sluice.internal"),
            Some(u32::MAX)
        );
        assert_eq!(parse_node_dns_name("node-4294967296.sluice.internal"), None);
        assert_eq!(parse_node_dns_name("node-07.sluice.internal"), None);
        assert_eq!(parse_node_dns_name("node-+7.sluice.internal"), None);
        assert_eq!(parse_node_dns_name("node-.sluice.internal"), None);
        assert_eq!(parse_node_dns_name("node-1.sluice.internal.evil"), None);
        assert_eq!(parse_node_dns_name("localhost"), None);
    }

    #[test]
    fn dns_names_come_out_of_an_rcgen_certificate() {
        let ca = crate::cert::DevCa::generate().expect("ca");
        let node = ca.issue_node(7).expect("node");
        let certs = rustls_pemfile::certs(&mut node.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("pem");
        let names = der::dns_names(&certs[0]).expect("names");
        assert_eq!(names, ["node-7.sluice.internal", "localhost"]);
        assert_eq!(node_id_of_certificate(&certs[0]).expect("id"), 7);
        // The CA names no node.
        let ca_certs = rustls_pemfile::certs(&mut ca.cert_pem().as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("pem");
        assert!(matches!(
            node_id_of_certificate(&ca_certs[0]),
            Err(TlsError::BadCertificate { .. })
        ));
    }

    #[test]
    fn truncated_der_is_an_error_not_a_panic() {
        let ca = crate::cert::DevCa::generate().expect("ca");
        let node = ca.issue_node(1).expect("node");
        let certs = rustls_pemfile::certs(&mut node.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("pem");
        let der: &[u8] = &certs[0];
        for len in 0..der.len() {
            assert!(
                der::dns_names(&der[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
    }
}
