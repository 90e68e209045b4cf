//! Cluster credentials and mutual TLS for the migration stream.
//!
//! Checkpoint images carry a process's secrets, so every migration stream is
//! encrypted, and both ends prove membership of the cluster with a certificate
//! signed by the cluster CA that `mosectl ca init` creates. A peer without such
//! a certificate is refused during the handshake, before anything is written.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
    server::WebPkiClientVerifier,
    ClientConfig, RootCertStore, ServerConfig,
};

/// Why creating or loading the cluster credentials of MOSE's migration
/// stream failed: what was done, to which file or name, and the I/O, rcgen
/// or rustls error as the `source()`.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("creating {}", .dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} already holds a cluster CA; remove it first to create a new one", .dir.display())]
    CaExists { dir: PathBuf },
    #[error("writing {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Certificate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("no cluster CA in {} (run `mosectl ca init` first)", .dir.display())]
    NoCa {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node name {node:?}")]
    NodeName {
        node: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("DNS name {name:?}")]
    DnsName {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("reading cluster CA {}", .path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad CA certificate {}", .path.display())]
    BadCaCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no certificate for node {node} at {} (run `mosectl ca issue`)", .path.display())]
    NoNodeCert {
        node: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("decoding the PEM of {}", .path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no private key in {}", .path.display())]
    NoKey { path: PathBuf },
    #[error("client verifier")]
    ClientVerifier {
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("node certificate")]
    NodeCert {
        #[source]
        source: rustls::Error,
    },
    #[error("TLS protocol versions")]
    Versions {
        #[source]
        source: rustls::Error,
    },
    #[error("bad destination host {host:?}")]
    Host {
        host: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
}

type Result<T, E = TlsError> = std::result::Result<T, E>;

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const CA_NAME: &str = "ca.name";

fn ca_params(name: &str) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert("CA parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("MOSE cluster CA {name}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

/// Maps an rcgen error of step `what`.
fn cert(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Certificate { what, source }
}

fn write_file(path: PathBuf, data: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(&path, data).map_err(|source| TlsError::Write { path, source })
}

fn write_private(path: &Path, data: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, data.as_bytes()))
        .map_err(|source| TlsError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Creates a new cluster CA in `dir` (refuses to overwrite one).
pub fn init_ca(dir: &Path, name: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    if dir.join(CA_KEY).exists() {
        return Err(TlsError::CaExists {
            dir: dir.to_path_buf(),
        });
    }
    let key = KeyPair::generate().map_err(cert("generating the CA key"))?;
    let ca = ca_params(name)?
        .self_signed(&key)
        .map_err(cert("signing the CA certificate"))?;
    write_file(dir.join(CA_CERT), ca.pem())?;
    write_private(&dir.join(CA_KEY), &key.serialize_pem())?;
    write_file(dir.join(CA_NAME), name)
}

/// Issues a node certificate (server and client use) for `node`, valid for the
/// given IP addresses and DNS names, into `dir/<node>.pem` and `<node>.key`.
pub fn issue(dir: &Path, node: &str, ips: &[IpAddr], dns: &[String]) -> Result<()> {
    let ca_key_pem =
        std::fs::read_to_string(dir.join(CA_KEY)).map_err(|source| TlsError::NoCa {
            dir: dir.to_path_buf(),
            source,
        })?;
    let name = std::fs::read_to_string(dir.join(CA_NAME)).unwrap_or_default();
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(cert("reading the CA key"))?;
    let ca = ca_params(name.trim())?
        .self_signed(&ca_key)
        .map_err(cert("signing the CA certificate"))?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert("node parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    p.distinguished_name = dn;
    let mut sans = vec![SanType::DnsName(node.try_into().map_err(|source| {
        TlsError::NodeName {
            node: node.to_string(),
            source,
        }
    })?)];
    for d in dns {
        sans.push(SanType::DnsName(d.as_str().try_into().map_err(
            |source| TlsError::DnsName {
                name: d.clone(),
                source,
            },
        )?));
    }
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().map_err(cert("generating the node key"))?;
    let node_cert = p
        .signed_by(&key, &ca, &ca_key)
        .map_err(cert("signing the node certificate"))?;
    write_file(dir.join(format!("{node}.pem")), node_cert.pem())?;
    write_private(&dir.join(format!("{node}.key")), &key.serialize_pem())?;
    Ok(())
}

/// A node's identity: its certificate and key, and the cluster CA.
#[derive(Debug, Clone)]
pub struct Identity {
    pub dir: PathBuf,
    pub node: String,
}

impl Identity {
    pub fn new(dir: &Path, node: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            node: node.to_string(),
        }
    }

    fn roots(&self) -> Result<RootCertStore> {
        let path = self.dir.join(CA_CERT);
        let pem = match std::fs::read(&path) {
            Ok(pem) => pem,
            Err(source) => return Err(TlsError::ReadCa { path, source }),
        };
        let mut roots = RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            let c = match c {
                Ok(c) => c,
                Err(source) => return Err(TlsError::Pem { path, source }),
            };
            if let Err(source) = roots.add(c) {
                return Err(TlsError::BadCaCert { path, source });
            }
        }
        Ok(roots)
    }

    fn chain(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let cp = self.dir.join(format!("{}.pem", self.node));
        let kp = self.dir.join(format!("{}.key", self.node));
        let cpem = match std::fs::read(&cp) {
            Ok(pem) => pem,
            Err(source) => {
                return Err(TlsError::NoNodeCert {
                    node: self.node.clone(),
                    path: cp,
                    source,
                })
            }
        };
        let kpem = match std::fs::read(&kp) {
            Ok(pem) => pem,
            Err(source) => return Err(TlsError::Read { path: kp, source }),
        };
        let certs = match rustls_pemfile::certs(&mut &cpem[..]).collect::<Result<Vec<_>, _>>() {
            Ok(certs) => certs,
            Err(source) => return Err(TlsError::Pem { path: cp, source }),
        };
        match rustls_pemfile::private_key(&mut &kpem[..]) {
            Ok(Some(key)) => Ok((certs, key)),
            Ok(None) => Err(TlsError::NoKey { path: kp }),
            Err(source) => Err(TlsError::Pem { path: kp, source }),
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Server side: requires a client certificate from the same cluster CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), Self::provider())
                .build()
                .map_err(|source| TlsError::ClientVerifier { source })?;
        let (certs, key) = self.chain()?;
        let cfg = ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Versions { source })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::NodeCert { source })?;
        Ok(Arc::new(cfg))
    }

    /// Client side: verifies the destination against the cluster CA and presents this node's certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let (certs, key) = self.chain()?;
        let cfg = ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Versions { source })?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(certs, key)
            .map_err(|source| TlsError::NodeCert { source })?;
        Ok(Arc::new(cfg))
    }
}

/// The TLS server name for a `host:port` destination.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).map_err(|source| TlsError::Host {
        host: host.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_issues_usable_node_credentials() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), "test").unwrap();
        assert!(init_ca(d.path(), "again").is_err(), "never overwrite a CA");
        issue(d.path(), "node1", &["10.0.0.1".parse().unwrap()], &[]).unwrap();
        let id = Identity::new(d.path(), "node1");
        id.server_config().unwrap();
        id.client_config().unwrap();
        let e = Identity::new(d.path(), "nobody")
            .client_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("mosectl ca issue"), "{e}");
    }
}
