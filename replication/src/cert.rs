//! Development certificates for the peer transport: a cluster CA and one certificate per node,
//! generated with rcgen (ECDSA P-256) and written as PEM files (`sluice cert`).
//!
//! Files in a cert directory: `ca.pem`, `ca.key`, `node-<id>.pem`, `node-<id>.key`; keys are
//! written with mode 0600. A node certificate carries the DNS names
//! `node-<id>.sluice.internal` and `localhost` and the IP address 127.0.0.1, and both the
//! server-auth and client-auth usages (every node is both ends of peer connections).
//!
//! Issuing a node certificate from an existing `ca.pem`/`ca.key` rebuilds the CA's issuer
//! fields from [`ca_params`] (rcgen cannot parse a certificate without its x509-parser
//! feature), then checks that the new certificate verifies against `ca.pem`: a CA made by
//! anything but [`DevCa::generate`] is refused with [`CertError::ForeignCa`].

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::NodeId;
use crate::tls::{NODE_DNS_SUFFIX, TlsError, verify_node_certificate};

/// The CA certificate file in a cert directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key file in a cert directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The common name of the CA [`DevCa::generate`] makes.
pub const CA_COMMON_NAME: &str = "Sluice cluster CA";
/// How long generated certificates are valid, in years from January 1 of the current year.
pub const CERT_VALIDITY_YEARS: i32 = 10;
/// Mode of private key files.
pub const KEY_FILE_MODE: u32 = 0o600;
/// Mode of certificate files.
pub const CERT_FILE_MODE: u32 = 0o644;

/// The certificate file of node `node`: `node-<id>.pem`.
pub fn node_cert_file(node: NodeId) -> String {
    format!("node-{node}.pem")
}

/// The private key file of node `node`: `node-<id>.key`.
pub fn node_key_file(node: NodeId) -> String {
    format!("node-{node}.key")
}

/// The DNS name a node's certificate carries and its peers check: `node-<id>.sluice.internal`.
pub fn node_dns_name(node: NodeId) -> String {
    format!("node-{node}{NODE_DNS_SUFFIX}")
}

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen failed (key generation, signing or encoding).
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// Files that would be overwritten exist and `force` was not given.
    #[error("refusing to overwrite {} (use --force)", list_paths(.paths))]
    Exists {
        /// The existing files.
        paths: Vec<PathBuf>,
    },
    /// A file could not be read, written or synced.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `ca.pem`/`ca.key` could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `ca.key` is not a private key rcgen can sign with.
    #[error("{path}: not a usable CA key: {source}")]
    BadCaKey {
        /// The key file.
        path: PathBuf,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A certificate issued with `ca.key` does not verify against `ca.pem`: the two do not
    /// belong together, or the CA was not made by `sluice cert ca`.
    #[error("{dir}: ca.pem and ca.key are not a CA made by `sluice cert ca`: {reason}")]
    ForeignCa {
        /// The cert directory.
        dir: PathBuf,
        /// The verification failure.
        reason: String,
    },
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A node's freshly issued certificate and key, as PEM.
#[derive(Debug, Clone)]
pub struct NodeCert {
    /// The node it names.
    pub node: NodeId,
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
}

/// A cluster CA that can issue node certificates.
pub struct DevCa {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// The CA's certificate parameters. The issuer fields of node certificates are rebuilt from
/// these, so they must stay the same for every CA (only the validity varies).
pub fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "Sluice");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl DevCa {
    /// Generates a new CA key and self-signed certificate.
    pub fn generate() -> Result<Self, CertError> {
        let what = || "the CA".to_owned();
        let key = KeyPair::generate().map_err(|source| CertError::Generate {
            what: what(),
            source,
        })?;
        let mut params = ca_params();
        set_validity(&mut params);
        let cert = params
            .self_signed(&key)
            .map_err(|source| CertError::Generate {
                what: what(),
                source,
            })?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Loads `dir/ca.pem` and `dir/ca.key` and checks that they issue verifiable node
    /// certificates.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_text(&cert_path)?;
        let key_pem = read_text(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| CertError::BadCaKey {
            path: key_path,
            source,
        })?;
        let ca = Self { cert_pem, key };
        let probe = ca.issue_node(0)?;
        ca.check_issued(&probe)
            .map_err(|reason| CertError::ForeignCa {
                dir: dir.to_owned(),
                reason,
            })?;
        Ok(ca)
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PKCS#8 PEM).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a certificate for node `node`: DNS names `node-<id>.sluice.internal` and
    /// `localhost`, IP 127.0.0.1, server and client auth.
    pub fn issue_node(&self, node: NodeId) -> Result<NodeCert, CertError> {
        let what = || format!("the certificate of node {node}");
        let key = KeyPair::generate().map_err(|source| CertError::Generate {
            what: what(),
            source,
        })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_dns_name(node));
        dn.push(DnType::OrganizationName, "Sluice");
        params.distinguished_name = dn;
        let dns = |name: String| {
            name.try_into()
                .map(SanType::DnsName)
                .map_err(|source| CertError::Generate {
                    what: what(),
                    source,
                })
        };
        params.subject_alt_names = vec![
            dns(node_dns_name(node))?,
            dns("localhost".to_owned())?,
            SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params);
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|source| CertError::Generate {
                what: what(),
                source,
            })?;
        Ok(NodeCert {
            node,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Verifies `issued` against this CA's certificate, as a peer would.
    fn check_issued(&self, issued: &NodeCert) -> Result<(), String> {
        let parse = |pem: &str| {
            rustls_pemfile::certs(&mut pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())
        };
        let ca = parse(&self.cert_pem)?
            .into_iter()
            .next()
            .ok_or("ca.pem holds no certificate")?;
        verify_node_certificate(&ca, &parse(&issued.cert_pem)?, issued.node)
    }
}

/// Valid from January 1 of the current year (so a clock a little behind still accepts it) for
/// [`CERT_VALIDITY_YEARS`].
fn set_validity(params: &mut CertificateParams) {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    // Days since 1970 to a year; 146 097 days are 400 Gregorian years. Off by at most a day
    // around New Year, which the January 1 start absorbs.
    let year = 1970 + i32::try_from(days * 400 / 146_097).unwrap_or(0);
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + CERT_VALIDITY_YEARS, 1, 1);
}

/// Writes a new CA into `dir` (`ca.pem`, `ca.key`). Returns the files written.
pub fn write_ca(dir: &Path, force: bool) -> Result<(DevCa, Vec<PathBuf>), CertError> {
    let files = [dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE)];
    refuse_existing(&files, force)?;
    let ca = DevCa::generate()?;
    create_dir(dir)?;
    write_file(&files[0], ca.cert_pem().as_bytes(), CERT_FILE_MODE)?;
    write_file(&files[1], ca.key_pem().as_bytes(), KEY_FILE_MODE)?;
    sync_dir(dir)?;
    Ok((ca, files.to_vec()))
}

/// Issues and writes the certificates of `nodes` into `dir`, signed by `ca`.
pub fn write_nodes(
    dir: &Path,
    ca: &DevCa,
    nodes: &[NodeId],
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    let files: Vec<PathBuf> = nodes
        .iter()
        .flat_map(|&n| [dir.join(node_cert_file(n)), dir.join(node_key_file(n))])
        .collect();
    refuse_existing(&files, force)?;
    create_dir(dir)?;
    for &node in nodes {
        let issued = ca.issue_node(node)?;
        write_file(
            &dir.join(node_cert_file(node)),
            issued.cert_pem.as_bytes(),
            CERT_FILE_MODE,
        )?;
        write_file(
            &dir.join(node_key_file(node)),
            issued.key_pem.as_bytes(),
            KEY_FILE_MODE,
        )?;
    }
    sync_dir(dir)?;
    Ok(files)
}

/// A development cluster's certificates: a new CA and the certificates of `nodes`. Refuses to
/// overwrite any existing file unless `force`, checking all of them before writing any.
pub fn write_dev(dir: &Path, nodes: &[NodeId], force: bool) -> Result<Vec<PathBuf>, CertError> {
    let mut all = vec![dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE)];
    all.extend(
        nodes
            .iter()
            .flat_map(|&n| [dir.join(node_cert_file(n)), dir.join(node_key_file(n))]),
    );
    refuse_existing(&all, force)?;
    let (ca, mut written) = write_ca(dir, force)?;
    written.extend(write_nodes(dir, &ca, nodes, force)?);
    Ok(written)
}

fn refuse_existing(files: &[PathBuf], force: bool) -> Result<(), CertError> {
    if force {
        return Ok(());
    }
    let existing: Vec<PathBuf> = files
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .cloned()
        .collect();
    if existing.is_empty() {
        Ok(())
    } else {
        Err(CertError::Exists { paths: existing })
    }
}

fn read_text(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => CertError::Tls(TlsError::Missing {
            path: path.to_owned(),
        }),
        _ => CertError::Io {
            path: path.to_owned(),
            source,
        },
    })
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `bytes` to `path` with `mode` through a temporary file and a rename, so a crash
/// leaves either the old file or the new one, and a key is never readable by others even
/// for a moment.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CertError::Io {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn dev_files_load_and_keys_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write_dev(dir.path(), &[0, 1, 2], false).expect("dev");
        assert_eq!(written.len(), 8);
        for node in [0, 1, 2] {
            let tls = crate::tls::PeerTls::load(dir.path(), node).expect("load");
            assert_eq!(tls.node_id(), node);
            let mode = std::fs::metadata(dir.path().join(node_key_file(node)))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, KEY_FILE_MODE);
        }
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, KEY_FILE_MODE);
    }

    #[test]
    fn a_node_issued_later_from_the_files_chains_to_the_same_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_ca(dir.path(), false).expect("ca");
        let ca = DevCa::load(dir.path()).expect("load ca");
        write_nodes(dir.path(), &ca, &[5], false).expect("node");
        assert_eq!(
            crate::tls::PeerTls::load(dir.path(), 5)
                .expect("load")
                .node_id(),
            5
        );
    }

    #[test]
    fn mismatched_ca_key_and_cert_are_refused() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        write_ca(a.path(), false).expect("ca a");
        write_ca(b.path(), false).expect("ca b");
        std::fs::copy(b.path().join(CA_KEY_FILE), a.path().join(CA_KEY_FILE)).expect("copy");
        assert!(matches!(
            DevCa::load(a.path()),
            Err(CertError::ForeignCa { .. })
        ));
    }

    #[test]
    fn existing_files_are_not_overwritten_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_dev(dir.path(), &[0], false).expect("dev");
        let before = std::fs::read(dir.path().join(CA_KEY_FILE)).expect("read");
        match write_dev(dir.path(), &[0, 1], false) {
            Err(CertError::Exists { paths }) => assert_eq!(paths.len(), 4),
            other => panic!("expected Exists, got {other:?}"),
        }
        // Nothing was written, not even node 1's files.
        assert!(!dir.path().join(node_cert_file(1)).exists());
        assert_eq!(
            std::fs::read(dir.path().join(CA_KEY_FILE)).expect("read"),
            before
        );
        write_dev(dir.path(), &[0, 1], true).expect("forced");
        assert_ne!(
            std::fs::read(dir.path().join(CA_KEY_FILE)).expect("read"),
            before
        );
        crate::tls::PeerTls::load(dir.path(), 1).expect("load");
    }

    #[test]
    fn load_names_the_missing_or_wrong_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        match crate::tls::PeerTls::load(dir.path(), 0) {
            Err(TlsError::Missing { path }) => assert!(path.ends_with(CA_CERT_FILE)),
            other => panic!("expected Missing, got {other:?}"),
        }
        write_dev(dir.path(), &[0, 1], false).expect("dev");
        // Node 1's files under node 0's names: the certificate names the wrong node.
        std::fs::copy(
            dir.path().join(node_cert_file(1)),
            dir.path().join(node_cert_file(0)),
        )
        .expect("copy");
        match crate::tls::PeerTls::load(dir.path(), 0) {
            Err(TlsError::WrongNode {
                expected, found, ..
            }) => {
                assert_eq!((expected, found), (0, vec![1]));
            }
            other => panic!("expected WrongNode, got {other:?}"),
        }
        std::fs::write(dir.path().join(node_key_file(1)), "not pem").expect("write");
        match crate::tls::PeerTls::load(dir.path(), 1) {
            Err(TlsError::NoKey { path }) => assert!(path.ends_with(node_key_file(1))),
            other => panic!("expected NoKey, got {other:?}"),
        }
    }

    #[test]
    fn a_node_certificate_of_another_ca_is_refused_at_load() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        write_dev(a.path(), &[0], false).expect("a");
        write_dev(b.path(), &[0], false).expect("b");
        std::fs::copy(b.path().join(CA_CERT_FILE), a.path().join(CA_CERT_FILE)).expect("copy");
        assert!(matches!(
            crate::tls::PeerTls::load(a.path(), 0),
            Err(TlsError::NotSignedByCa { .. })
        ));
    }
}
