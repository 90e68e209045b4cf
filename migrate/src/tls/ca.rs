//! The cluster CA: creating it, and issuing node bundles.

use super::*;

pub(super) fn ca_params(name: &str) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert("CA parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("MOSE cluster CA {name}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

/// Maps an rcgen error of step `what`.
pub(super) fn cert(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Certificate { what, source }
}

/// Creates a new cluster CA in `dir`: `ca.pem`, `ca.key` (mode 0600) and
/// `ca.name`; `dir` is created with mode 0700.
///
/// Errors: `dir` already holds a CA ([`TlsError::CaExists`]), is not a
/// directory ([`TlsError::NotADirectory`]), exists owned by another user
/// ([`TlsError::DirNotOwned`]) or open to group or others with content
/// ([`TlsError::DirNotPrivate`]), or cannot be created or written.
pub fn init_ca(dir: &Path, name: &str) -> Result<()> {
    if dir.join(CA_KEY).exists() {
        return Err(TlsError::CaExists {
            dir: dir.to_path_buf(),
        });
    }
    private_dir(dir, "the cluster CA's private key (ca.key)")?;
    let key = KeyPair::generate().map_err(cert("generating the CA key"))?;
    let ca = ca_params(name)?
        .self_signed(&key)
        .map_err(cert("signing the CA certificate"))?;
    write_file(dir.join(CA_CERT), ca.pem())?;
    write_private(&dir.join(CA_KEY), &key.serialize_pem())?;
    write_file(dir.join(CA_NAME), name)
}

/// Where `mosectl ca issue` puts node `node`'s bundle when not told:
/// `<ca_dir>/nodes/<node>`.
pub fn default_bundle_dir(ca_dir: &Path, node: &str) -> PathBuf {
    ca_dir.join("nodes").join(node)
}

/// What a node certificate is issued for.
#[derive(Debug, Clone)]
pub struct NodeRequest<'a> {
    /// The node's name: the certificate's common name and first DNS name,
    /// and the stem of its files (`<node>.pem`, `<node>.key`).
    pub node: &'a str,
    /// Addresses the node is reached at.
    pub ips: &'a [IpAddr],
    /// Further DNS names the node is reached at.
    pub dns: &'a [String],
    /// Lifetime in days, 1 to [`MAX_DAYS`].
    pub days: u32,
    /// Replace a certificate the bundle already holds (else that is an
    /// error).
    pub renew: bool,
}

/// What [`issue`] wrote.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The bundle directory (mode 0700): `ca.pem`, `<node>.pem`,
    /// `<node>.key` (mode 0600).
    pub bundle: PathBuf,
    /// The new certificate.
    pub certificate: CertificateInfo,
    /// Whether a certificate was replaced.
    pub renewed: bool,
}

/// Node names: a DNS label's characters (and `_`, `.`), at most 63, not
/// starting with `.` or `-` (an ssh option), and not `ca` (the CA's own
/// files).
pub(super) fn check_node_name(node: &str) -> Result<()> {
    let reserved = |reason| {
        Err(TlsError::NodeNameReserved {
            node: node.to_string(),
            reason,
        })
    };
    if node.eq_ignore_ascii_case("ca") {
        return reserved(
            "it is the cluster CA's: the node's files would be ca.pem and ca.key, the CA \
             certificate and key",
        );
    }
    if node.starts_with('-') {
        return reserved(
            "a node name cannot start with '-' (a DNS label cannot, and in commands such as \
             `ssh NODE` it would be read as an option)",
        );
    }
    let ok = !node.is_empty()
        && node.len() <= 63
        && !node.starts_with('.')
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(TlsError::NodeNameChars {
            node: node.to_string(),
        })
    }
}

pub(super) fn check_days(days: u32) -> Result<()> {
    if (1..=MAX_DAYS).contains(&days) {
        Ok(())
    } else {
        Err(TlsError::Days { days })
    }
}

/// A 16-byte positive, non-zero serial number from the OS's randomness.
pub(super) fn random_serial() -> Result<SerialNumber> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| TlsError::Random {
        reason: e.to_string(),
    })?;
    b[0] = (b[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&b))
}

/// Issues a node certificate (server and client use) for `req.node` with
/// the cluster CA in `ca_dir`, into the node bundle `out`: `ca.pem`,
/// `<node>.pem` and `<node>.key` (mode 0600); `out` is created with mode
/// 0700. Valid from [`CLOCK_SKEW`] before now for `req.days` days, for the
/// node name, `req.dns` and `req.ips`; a random serial.
///
/// Each file is replaced by a rename (key before certificate), so an agent
/// reading the bundle meanwhile sees whole files; between the two renames
/// it may find the new key with the old certificate, which rustls refuses
/// as a mismatch (a reload then keeps the configuration it has).
///
/// The certificate is issued with the CA certificate in `ca_dir/ca.pem`
/// (its subject is the new certificate's issuer) and verified against it
/// before anything is written.
///
/// Errors: a bad node name or lifetime, no CA in `ca_dir`, a ca.pem that is
/// no CA certificate or does not pair with ca.key
/// ([`TlsError::IssuedDoesNotVerify`]), `out` holding the CA key, not a
/// directory, owned by another user or open to group or others with
/// content, a certificate for the node already in `out` without
/// `req.renew` ([`TlsError::CertExists`]), or creating or writing the
/// files.
pub fn issue(ca_dir: &Path, out: &Path, req: &NodeRequest<'_>) -> Result<Issued> {
    issue_at(ca_dir, out, req, SystemTime::now())
}

pub(super) fn issue_at(
    ca_dir: &Path,
    out: &Path,
    req: &NodeRequest<'_>,
    now: SystemTime,
) -> Result<Issued> {
    let node = req.node;
    check_node_name(node)?;
    check_days(req.days)?;
    let ca_key_pem =
        std::fs::read_to_string(ca_dir.join(CA_KEY)).map_err(|source| TlsError::NoCa {
            dir: ca_dir.to_path_buf(),
            source,
        })?;
    let ca_pem_path = ca_dir.join(CA_CERT);
    let ca_pem = std::fs::read(&ca_pem_path).map_err(|source| TlsError::ReadCa {
        path: ca_pem_path.clone(),
        source,
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(cert("reading the CA key"))?;
    // the issuer is the CA certificate itself (its subject, key identifier)
    let roots = roots_of(&ca_pem_path, &ca_pem)?;
    let ca_der = match rustls_pemfile::certs(&mut &ca_pem[..]).next() {
        Some(Ok(der)) => der,
        Some(Err(source)) => {
            return Err(TlsError::Pem {
                path: ca_pem_path,
                source,
            })
        }
        None => return Err(TlsError::NoCaCert { path: ca_pem_path }),
    };
    let ca = CertificateParams::from_ca_cert_der(&ca_der)
        .map_err(|source| TlsError::CaCertificate {
            path: ca_pem_path.clone(),
            source,
        })?
        .self_signed(&ca_key)
        .map_err(cert("reading the CA certificate"))?;

    let cert_path = out.join(format!("{node}.pem"));
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
    for d in req.dns {
        sans.push(SanType::DnsName(d.as_str().try_into().map_err(
            |source| TlsError::DnsName {
                name: d.clone(),
                source,
            },
        )?));
    }
    sans.extend(req.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = unix(now)?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    p.not_before = epoch + Duration::from_secs(now.saturating_sub(CLOCK_SKEW.as_secs()));
    p.not_after = epoch + Duration::from_secs(now + u64::from(req.days) * 24 * 3600);
    p.serial_number = Some(random_serial()?);
    let key = KeyPair::generate().map_err(cert("generating the node key"))?;
    let node_cert = p
        .signed_by(&key, &ca, &ca_key)
        .map_err(cert("signing the node certificate"))?;
    // as a peer will check it: nothing is written unless it verifies
    let at = UNIX_EPOCH + Duration::from_secs(now);
    verify_chain(
        client_verifier(roots)?.as_ref(),
        &[node_cert.der().clone()],
        at,
    )
    .map_err(|reason| TlsError::IssuedDoesNotVerify {
        ca_cert: ca_pem_path.clone(),
        ca_key: ca_dir.join(CA_KEY),
        reason,
    })?;
    let certificate =
        CertificateInfo::from_der(node_cert.der()).map_err(|reason| TlsError::BadCert {
            path: cert_path.clone(),
            reason,
        })?;

    // only now is --out looked at, and created
    if out.join(CA_KEY).exists() {
        return Err(TlsError::BundleHoldsCaKey {
            dir: out.to_path_buf(),
        });
    }
    private_dir(out, &format!("node {node}'s private key ({node}.key)"))?;
    let renewed = cert_path.exists();
    if renewed && !req.renew {
        let not_after = CertificateInfo::read(&cert_path)
            .map(|c| c.not_after_utc())
            .unwrap_or_else(|_| "unknown: it does not decode".into());
        return Err(TlsError::CertExists {
            node: node.to_string(),
            path: cert_path,
            not_after,
        });
    }

    let (key_pem, cert_pem) = (key.serialize_pem(), node_cert.pem());
    let key_name = format!("{node}.key");
    let cert_name = format!("{node}.pem");
    let mut staged = Vec::new();
    // replaced in this order: the key before the certificate it matches
    let files = [
        (CA_CERT, ca_pem.as_slice(), 0o644),
        (key_name.as_str(), key_pem.as_bytes(), 0o600),
        (cert_name.as_str(), cert_pem.as_bytes(), 0o644),
    ];
    for (name, data, mode) in files {
        match stage(out, name, data, mode) {
            Ok(tmp) => staged.push((tmp, out.join(name))),
            Err(e) => {
                for (t, _) in &staged {
                    let _ = std::fs::remove_file(t);
                }
                return Err(e);
            }
        }
    }
    commit_staged(out, &staged)?;
    Ok(Issued {
        bundle: out.to_path_buf(),
        certificate,
        renewed,
    })
}
