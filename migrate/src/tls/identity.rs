//! A node's identity from its bundle: the checks before it is used, the
//! rustls configurations, and the server configuration SIGHUP reloads.

use super::*;

/// The checks `mose-plugin` makes of its TLS directory `dir` before using
/// it as node `node`'s identity: no cluster CA key in it
/// ([`TlsError::CaKeyInNodeDir`]), and the node key `<node>.key` open to
/// neither group nor others ([`TlsError::KeyNotPrivate`]; a missing key is
/// [`TlsError::Read`]). Each error says how to fix it.
pub fn check_node_dir(dir: &Path, node: &str) -> Result<()> {
    let ca_key = dir.join(CA_KEY);
    if ca_key.symlink_metadata().is_ok() {
        return Err(TlsError::CaKeyInNodeDir { path: ca_key });
    }
    let key = dir.join(format!("{node}.key"));
    let mode = mode_of(&key)?;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyNotPrivate { path: key, mode });
    }
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

    /// This node's certificate file, `<dir>/<node>.pem`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.node))
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
        let cp = self.cert_path();
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

    fn server_config_of(
        &self,
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<ServerConfig>> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), Self::provider())
                .build()
                .map_err(|source| TlsError::ClientVerifier { source })?;
        let cfg = ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Versions { source })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::NodeCert { source })?;
        Ok(Arc::new(cfg))
    }

    /// Server side: requires a client certificate from the same cluster CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let (certs, key) = self.chain()?;
        self.server_config_of(certs, key)
    }

    /// Client side: verifies the destination against the cluster CA and
    /// presents this node's certificate. Reads the bundle afresh on every
    /// call: a renewed certificate is used from the next connection on.
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

/// The server configuration of a node's migration endpoint, replaceable
/// while it serves: every accepted connection takes [`Self::current`], so a
/// [`Self::reload`] (the agent's SIGHUP) changes the certificate new
/// connections see and leaves connections already accepted — migrations in
/// flight — on the one they started with.
#[derive(Debug)]
pub struct ReloadableServerConfig {
    identity: Identity,
    loaded: RwLock<Loaded>,
}

#[derive(Debug, Clone)]
struct Loaded {
    config: Arc<ServerConfig>,
    certificate: CertificateInfo,
}

impl ReloadableServerConfig {
    /// Checks `identity`'s directory ([`check_node_dir`]) and certificate
    /// (not expired), then builds the server configuration from it.
    ///
    /// Errors: a CA key in the directory, a node key open to group or
    /// others, a certificate issued for another node, an expired or
    /// unreadable certificate, or any error of
    /// [`Identity::server_config`]; each names the file and, where there is
    /// one, the fix.
    pub fn load(identity: Identity) -> Result<Self> {
        let loaded = Self::read(&identity)?;
        Ok(Self {
            identity,
            loaded: RwLock::new(loaded),
        })
    }

    fn read(identity: &Identity) -> Result<Loaded> {
        check_node_dir(&identity.dir, &identity.node)?;
        let (certs, key) = identity.chain()?;
        let path = identity.cert_path();
        let first = certs
            .first()
            .ok_or_else(|| TlsError::NoCert { path: path.clone() })?;
        let certificate = CertificateInfo::from_der(first).map_err(|reason| TlsError::BadCert {
            path: path.clone(),
            reason,
        })?;
        if certificate.node != identity.node {
            return Err(TlsError::WrongNode {
                path,
                node: identity.node.clone(),
                certified: certificate.node,
            });
        }
        if certificate.remaining(SystemTime::now()).is_none() {
            return Err(TlsError::Expired {
                node: identity.node.clone(),
                path,
                not_after: certificate.not_after_utc(),
            });
        }
        let config = identity.server_config_of(certs, key)?;
        Ok(Loaded {
            config,
            certificate,
        })
    }

    /// The configuration for a connection accepted now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .config
            .clone()
    }

    /// The certificate [`Self::current`] presents.
    pub fn certificate(&self) -> CertificateInfo {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .certificate
            .clone()
    }

    /// The identity this configuration is loaded from.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Loads the identity's files again with the checks of [`Self::load`]
    /// and, when that succeeds, makes the result current; returns the
    /// certificate now presented.
    ///
    /// Errors: those of [`Self::load`]; the current configuration is then
    /// kept unchanged.
    pub fn reload(&self) -> Result<CertificateInfo> {
        let new = Self::read(&self.identity)?;
        let certificate = new.certificate.clone();
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(certificate)
    }
}
