//! A node's identity from its bundle: the checks before it is used, the
//! rustls configurations, and the server configuration SIGHUP reloads.

use super::*;

/// The checks `mose-plugin` (and `mosectl migrate`) make of the TLS
/// directory `dir` before using it as node `node`'s identity, in this
/// order: a valid node name; the directory exists ([`TlsError::NoTlsDir`]);
/// no cluster CA key in it ([`TlsError::CaKeyInNodeDir`]); `ca.pem`,
/// `<node>.pem` and `<node>.key` present ([`TlsError::NoNodeCert`]); the
/// directory and those files owned by this process's effective user
/// ([`TlsError::NotOwned`]) and writable by neither group nor others
/// ([`TlsError::WritableByOthers`]: whoever writes ca.pem chooses which CA
/// the node trusts); the node key open to neither group nor others
/// ([`TlsError::KeyNotPrivate`]). Each error names the path and the fix.
pub fn check_node_dir(dir: &Path, node: &str) -> Result<()> {
    check_node_name(node)?;
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TlsError::NoTlsDir {
                dir: dir.to_path_buf(),
                node: node.to_string(),
            })
        }
        Err(source) => {
            return Err(TlsError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    if !meta.is_dir() {
        return Err(TlsError::NotADirectory {
            path: dir.to_path_buf(),
            holds: format!("node {node}'s bundle (ca.pem, {node}.pem, {node}.key)"),
        });
    }
    let ca_key = dir.join(CA_KEY);
    if ca_key.symlink_metadata().is_ok() {
        return Err(TlsError::CaKeyInNodeDir { path: ca_key });
    }
    let files = [
        dir.join(CA_CERT),
        dir.join(format!("{node}.pem")),
        dir.join(format!("{node}.key")),
    ];
    for path in &files {
        if let Err(e) = std::fs::metadata(path) {
            return Err(missing(dir, node, path, e));
        }
    }
    check_exposure(dir, meta.uid(), meta.mode() & 0o7777)?;
    for path in &files {
        let m = std::fs::metadata(path).map_err(|e| missing(dir, node, path, e))?;
        let mode = m.mode() & 0o7777;
        check_exposure(path, m.uid(), mode)?;
        if path.extension().is_some_and(|e| e == "key") && mode & 0o077 != 0 {
            return Err(TlsError::KeyNotPrivate {
                path: path.clone(),
                mode,
            });
        }
    }
    Ok(())
}

/// The error for bundle file `path` of node `node` in `dir` that could not
/// be opened: missing ([`TlsError::NoNodeCert`]), else unreadable.
fn missing(dir: &Path, node: &str, path: &Path, e: std::io::Error) -> TlsError {
    if e.kind() == std::io::ErrorKind::NotFound {
        TlsError::NoNodeCert {
            node: node.to_string(),
            dir: dir.to_path_buf(),
            missing: path.to_path_buf(),
        }
    } else {
        TlsError::Read {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// The cluster CA certificates of `pem`, read from `path`.
///
/// Errors: the PEM does not decode, holds no certificate
/// ([`TlsError::NoCaCert`]: garbage), or one is no usable trust anchor.
pub(super) fn roots_of(path: &Path, pem: &[u8]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        let c = c.map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
        roots.add(c).map_err(|source| TlsError::BadCaCert {
            path: path.to_path_buf(),
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCaCert {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

/// The verifier of client certificates issued by the CA of `roots`.
pub(super) fn client_verifier(roots: RootCertStore) -> Result<Arc<dyn ClientCertVerifier>> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Identity::provider())
        .build()
        .map_err(|source| TlsError::ClientVerifier { source })
}

/// Verifies the chain `certs` (end entity first) with `verifier` as a peer
/// would at `at`; the reason why not, else.
pub(super) fn verify_chain(
    verifier: &dyn ClientCertVerifier,
    certs: &[CertificateDer<'static>],
    at: SystemTime,
) -> Result<(), String> {
    let (first, rest) = certs
        .split_first()
        .ok_or_else(|| "no certificate".to_string())?;
    let at = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "a time before 1970".to_string())?;
    verifier
        .verify_client_cert(first, rest, UnixTime::since_unix_epoch(at))
        .map(|_| ())
        .map_err(|e| e.to_string())
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

    /// The bundle's CA certificate file, `<dir>/ca.pem`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// This node's key file, `<dir>/<node>.key`.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(format!("{}.key", self.node))
    }

    fn read_file(&self, path: PathBuf) -> Result<Vec<u8>> {
        std::fs::read(&path).map_err(|e| missing(&self.dir, &self.node, &path, e))
    }

    fn roots(&self) -> Result<RootCertStore> {
        let path = self.ca_path();
        let pem = self.read_file(path.clone())?;
        roots_of(&path, &pem)
    }

    fn chain(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let cp = self.cert_path();
        let kp = self.key_path();
        let cpem = self.read_file(cp.clone())?;
        let kpem = self.read_file(kp.clone())?;
        let certs = match rustls_pemfile::certs(&mut &cpem[..]).collect::<Result<Vec<_>, _>>() {
            Ok(certs) if certs.is_empty() => return Err(TlsError::NoCert { path: cp }),
            Ok(certs) => certs,
            Err(source) => return Err(TlsError::Pem { path: cp, source }),
        };
        match rustls_pemfile::private_key(&mut &kpem[..]) {
            Ok(Some(key)) => Ok((certs, key)),
            Ok(None) => Err(TlsError::NoKey { path: kp }),
            Err(source) => Err(TlsError::Pem { path: kp, source }),
        }
    }

    fn node_cert_error(&self) -> impl FnOnce(rustls::Error) -> TlsError + '_ {
        move |source| TlsError::NodeCert {
            cert: self.cert_path(),
            key: self.key_path(),
            source,
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn server_config_of(
        &self,
        verifier: Arc<dyn ClientCertVerifier>,
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<ServerConfig>> {
        let cfg = ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Versions { source })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(self.node_cert_error())?;
        Ok(Arc::new(cfg))
    }

    /// Server side: requires a client certificate from the same cluster CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let (certs, key) = self.chain()?;
        self.server_config_of(client_verifier(self.roots()?)?, certs, key)
    }

    /// Client side: verifies the destination against the cluster CA and
    /// presents this node's certificate. Reads the bundle afresh on every
    /// call, after the agent's checks of it ([`check_node_dir`]: no CA key
    /// beside it, private key and files its own): a renewed certificate is
    /// used from the next connection on, and `mosectl migrate` refuses an
    /// unsafe bundle in its result like any other failed start.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        check_node_dir(&self.dir, &self.node)?;
        let (certs, key) = self.chain()?;
        let cfg = ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Versions { source })?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(certs, key)
            .map_err(self.node_cert_error())?;
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
    /// (issued for this node, not expired, chaining to the bundle's ca.pem;
    /// one not valid yet is loaded with a warning), then builds the server
    /// configuration from it.
    ///
    /// Errors: those of [`check_node_dir`], a certificate issued for
    /// another node, an expired or unreadable certificate, one that does
    /// not chain to ca.pem ([`TlsError::NotChained`]), or any error of
    /// [`Identity::server_config`] (a key that does not match the
    /// certificate: [`TlsError::NodeCert`]); each names the file and, where
    /// there is one, the fix.
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
        let now = SystemTime::now();
        if certificate.remaining(now).is_none() {
            return Err(TlsError::Expired {
                node: identity.node.clone(),
                path,
                not_after: certificate.not_after_utc(),
            });
        }
        // a certificate from the future is checked as of its start, and
        // loaded with a warning: peers refuse it until then
        let starts =
            UNIX_EPOCH + Duration::from_secs(u64::try_from(certificate.not_before).unwrap_or(0));
        let at = if starts > now {
            tracing::warn!(
                certificate = %path.display(),
                not_before = %utc_text(certificate.not_before),
                "this node's certificate is not valid yet: peers refuse it until then; check \
                 the clocks of this node and of the CA's host"
            );
            starts
        } else {
            now
        };
        let verifier = client_verifier(identity.roots()?)?;
        verify_chain(verifier.as_ref(), &certs, at).map_err(|reason| TlsError::NotChained {
            node: identity.node.clone(),
            cert: path.clone(),
            ca: identity.ca_path(),
            reason,
        })?;
        let config = identity.server_config_of(verifier, certs, key)?;
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
