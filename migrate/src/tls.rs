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

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
    server::WebPkiClientVerifier,
    ClientConfig, RootCertStore, ServerConfig,
};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const CA_NAME: &str = "ca.name";

fn ca_params(name: &str) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("MOSE cluster CA {name}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

fn write_private(path: &Path, data: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, data.as_bytes())?;
    Ok(())
}

/// Creates a new cluster CA in `dir` (refuses to overwrite one).
pub fn init_ca(dir: &Path, name: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if dir.join(CA_KEY).exists() {
        bail!(
            "{} already holds a cluster CA; remove it first to create a new one",
            dir.display()
        );
    }
    let key = KeyPair::generate()?;
    let cert = ca_params(name)?.self_signed(&key)?;
    std::fs::write(dir.join(CA_CERT), cert.pem())?;
    write_private(&dir.join(CA_KEY), &key.serialize_pem())?;
    std::fs::write(dir.join(CA_NAME), name)?;
    Ok(())
}

/// Issues a node certificate (server and client use) for `node`, valid for the
/// given IP addresses and DNS names, into `dir/<node>.pem` and `<node>.key`.
pub fn issue(dir: &Path, node: &str, ips: &[IpAddr], dns: &[String]) -> Result<()> {
    let ca_key_pem = std::fs::read_to_string(dir.join(CA_KEY)).with_context(|| {
        format!(
            "no cluster CA in {} (run `mosectl ca init` first)",
            dir.display()
        )
    })?;
    let name = std::fs::read_to_string(dir.join(CA_NAME)).unwrap_or_default();
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let ca = ca_params(name.trim())?.self_signed(&ca_key)?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    p.distinguished_name = dn;
    let mut sans = vec![SanType::DnsName(
        node.try_into()
            .map_err(|e| anyhow!("node name {node:?}: {e}"))?,
    )];
    for d in dns {
        sans.push(SanType::DnsName(
            d.as_str()
                .try_into()
                .map_err(|e| anyhow!("DNS name {d:?}: {e}"))?,
        ));
    }
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &ca, &ca_key)?;
    std::fs::write(dir.join(format!("{node}.pem")), cert.pem())?;
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
        let pem = std::fs::read(&path)
            .with_context(|| format!("reading cluster CA {}", path.display()))?;
        let mut roots = RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            roots
                .add(c?)
                .map_err(|e| anyhow!("bad CA certificate {}: {e}", path.display()))?;
        }
        Ok(roots)
    }

    fn chain(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let cp = self.dir.join(format!("{}.pem", self.node));
        let kp = self.dir.join(format!("{}.key", self.node));
        let cpem = std::fs::read(&cp).with_context(|| {
            format!(
                "no certificate for node {} at {} (run `mosectl ca issue`)",
                self.node,
                cp.display()
            )
        })?;
        let kpem = std::fs::read(&kp).with_context(|| format!("reading {}", kp.display()))?;
        let certs = rustls_pemfile::certs(&mut &cpem[..]).collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pemfile::private_key(&mut &kpem[..])?
            .ok_or_else(|| anyhow!("no private key in {}", kp.display()))?;
        Ok((certs, key))
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Server side: requires a client certificate from the same cluster CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), Self::provider())
                .build()
                .map_err(|e| anyhow!("client verifier: {e}"))?;
        let (certs, key) = self.chain()?;
        let cfg = ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| anyhow!("node certificate: {e}"))?;
        Ok(Arc::new(cfg))
    }

    /// Client side: verifies the destination against the cluster CA and presents this node's certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let (certs, key) = self.chain()?;
        let cfg = ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(certs, key)
            .map_err(|e| anyhow!("node certificate: {e}"))?;
        Ok(Arc::new(cfg))
    }
}

/// The TLS server name for a `host:port` destination.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string())
        .map_err(|e| anyhow!("bad destination host {host:?}: {e}"))
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
