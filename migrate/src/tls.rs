//! Cluster credentials and mutual TLS for the migration stream.
//!
//! Checkpoint images carry a process's secrets, so every migration stream is
//! encrypted, and both ends prove membership of the cluster with a certificate
//! signed by the cluster CA that `mosectl ca init` creates. A peer without such
//! a certificate is refused during the handshake, before anything is written.
//!
//! Two kinds of directory hold credentials, and they never mix:
//! - the **CA directory** (`mosectl ca init --dir`, mode 0700), kept on the
//!   operator's host: `ca.pem`, `ca.key` (0600) and `ca.name`. Whoever reads
//!   `ca.key` can mint any node's identity.
//! - a **node bundle** (`mosectl ca issue --out`, mode 0700), the only thing a
//!   node gets: `ca.pem`, `<node>.pem` and `<node>.key` (0600). It is what
//!   [`Identity`] reads and what `mose-plugin --tls-dir` names; the agent
//!   refuses to start next to a `ca.key` ([`ReloadableServerConfig::load`]).
//!
//! Node certificates have a lifetime ([`DEFAULT_DAYS`], at most [`MAX_DAYS`]),
//! are renewed in place with `mosectl ca issue --renew` (each file replaced by
//! a rename, never rewritten in place), and a running agent picks the new
//! certificate up on SIGHUP ([`ReloadableServerConfig::reload`]); outgoing
//! connections read the bundle afresh for every connection.

use std::{
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
    server::WebPkiClientVerifier,
    ClientConfig, RootCertStore, ServerConfig,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why creating, issuing, checking or loading the cluster credentials of
/// MOSE's migration stream failed: what was done, to which file or name, the
/// fix where there is one, and the I/O, rcgen or rustls error as the
/// `source()`.
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
    #[error(
        "node name {node:?}: use letters, digits, '-', '_' and '.' (not first), at most 63 \
         characters (it names the node's certificate files and is its DNS name)"
    )]
    NodeNameChars { node: String },
    #[error("DNS name {name:?}")]
    DnsName {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "a certificate lifetime of {days} days (--days): it must be 1 to {MAX_DAYS} days; \
         the default is {DEFAULT_DAYS}"
    )]
    Days { days: u32 },
    #[error(
        "{} already holds a certificate for node {node} (valid until {not_after}); pass \
         --renew to replace it with a new key and certificate",
        .path.display()
    )]
    CertExists {
        node: String,
        path: PathBuf,
        not_after: String,
    },
    #[error(
        "{} holds the cluster CA key (ca.key): a node's bundle must never hold it; choose \
         another --out (default: <CA dir>/nodes/<node>)",
        .dir.display()
    )]
    BundleHoldsCaKey { dir: PathBuf },
    #[error(
        "{} is open to group or others (mode {mode:04o}) and holds private keys: \
         `chmod 700 {}`, or choose a new directory",
        .dir.display(), .dir.display()
    )]
    DirNotPrivate { dir: PathBuf, mode: u32 },
    #[error(
        "{} is the cluster CA's private key: whoever can read it can mint any node's \
         identity, so mose-plugin does not run next to it. Fix: keep the CA key only where \
         `mosectl ca init` ran, remove it from this node, and give the node only its bundle \
         from `mosectl ca issue --node <node> --out DIR` (ca.pem, <node>.pem, <node>.key) \
         as --tls-dir",
        .path.display()
    )]
    CaKeyInNodeDir { path: PathBuf },
    #[error(
        "{} (this node's private key) is open to group or others (mode {mode:04o}); fix: \
         `chmod 600 {}`",
        .path.display(), .path.display()
    )]
    KeyNotPrivate { path: PathBuf, mode: u32 },
    #[error(
        "the certificate of node {node} at {} expired on {not_after}; renew it where the \
         cluster CA is (`mosectl ca issue --node {node} --renew --out DIR`), copy the bundle \
         here and start again",
        .path.display()
    )]
    Expired {
        node: String,
        path: PathBuf,
        not_after: String,
    },
    #[error("the certificate {} does not decode: {reason}", .path.display())]
    BadCert { path: PathBuf, reason: String },
    #[error("the system clock is before 1970")]
    Clock,
    #[error("drawing a random serial number: {reason}")]
    Random { reason: String },
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
    #[error("no certificate in {}", .path.display())]
    NoCert { path: PathBuf },
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
    #[error("asking {to} for its certificate: {reason}")]
    Presented { to: String, reason: String },
}

type Result<T, E = TlsError> = std::result::Result<T, E>;

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const CA_NAME: &str = "ca.name";

/// Lifetime of a node certificate when none is asked for, in days.
pub const DEFAULT_DAYS: u32 = 365;
/// Longest lifetime `issue` grants a node certificate, in days (ten years).
pub const MAX_DAYS: u32 = 3650;
/// How far a new certificate's validity starts in the past, so that nodes
/// whose clocks lag the CA host's by up to this much accept it at once.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// `mose-plugin` warns when its certificate expires sooner than this
/// (30 days).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

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

/// The permission bits of `path` (following symlinks).
fn mode_of(path: &Path) -> Result<u32> {
    std::fs::metadata(path)
        .map(|m| m.mode() & 0o7777)
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Makes `dir` with mode 0700 (and so any missing parent). An existing
/// empty directory is taken over and set to 0700; an existing one with
/// content must already be closed to group and others.
fn private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| TlsError::CreateDir {
                dir: dir.to_path_buf(),
                source,
            })?;
    }
    let mode = mode_of(dir)?;
    let empty = || {
        std::fs::read_dir(dir)
            .map(|mut rd| rd.next().is_none())
            .unwrap_or(false)
    };
    if mode & 0o077 != 0 && empty() {
        use std::os::unix::fs::PermissionsExt;
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| TlsError::Write {
                path: dir.to_path_buf(),
                source,
            },
        );
    }
    if mode & 0o077 != 0 {
        return Err(TlsError::DirNotPrivate {
            dir: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Replaces `dir/name` with `data` as a whole: written to a temporary file
/// in the same directory (mode `mode`), flushed to disk, then renamed over
/// the old file, so a reader sees the old or the new content, never a part.
/// Returns the temporary file's path for [`commit_staged`]; nothing is
/// replaced until then.
fn stage(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.new-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, data)?;
            f.sync_all()
        });
    match written {
        Ok(()) => Ok(tmp),
        Err(source) => {
            let _ = std::fs::remove_file(&tmp);
            Err(TlsError::Write { path: tmp, source })
        }
    }
}

/// Renames staged files (temporary, final) into place, in order, then
/// flushes the directory. On an error the staged files not yet renamed are
/// removed.
fn commit_staged(dir: &Path, staged: &[(PathBuf, PathBuf)]) -> Result<()> {
    for (i, (tmp, path)) in staged.iter().enumerate() {
        if let Err(source) = std::fs::rename(tmp, path) {
            for (t, _) in &staged[i..] {
                let _ = std::fs::remove_file(t);
            }
            return Err(TlsError::Write {
                path: path.clone(),
                source,
            });
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

/// Creates a new cluster CA in `dir`: `ca.pem`, `ca.key` (mode 0600) and
/// `ca.name`; `dir` is created with mode 0700.
///
/// Errors: `dir` already holds a CA ([`TlsError::CaExists`]), exists open
/// to group or others ([`TlsError::DirNotPrivate`]), or cannot be created
/// or written.
pub fn init_ca(dir: &Path, name: &str) -> Result<()> {
    if dir.join(CA_KEY).exists() {
        return Err(TlsError::CaExists {
            dir: dir.to_path_buf(),
        });
    }
    private_dir(dir)?;
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

fn check_node_name(node: &str) -> Result<()> {
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

fn check_days(days: u32) -> Result<()> {
    if (1..=MAX_DAYS).contains(&days) {
        Ok(())
    } else {
        Err(TlsError::Days { days })
    }
}

/// Seconds since the Unix epoch of `t`.
fn unix(t: SystemTime) -> Result<u64> {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| TlsError::Clock)
}

/// A 16-byte positive, non-zero serial number from the OS's randomness.
fn random_serial() -> Result<SerialNumber> {
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
/// Errors: a bad node name or lifetime, no CA in `ca_dir`, `out` holding
/// the CA key or open to group or others, a certificate for the node
/// already in `out` without `req.renew` ([`TlsError::CertExists`]), or
/// creating or writing the files.
pub fn issue(ca_dir: &Path, out: &Path, req: &NodeRequest<'_>) -> Result<Issued> {
    issue_at(ca_dir, out, req, SystemTime::now())
}

fn issue_at(ca_dir: &Path, out: &Path, req: &NodeRequest<'_>, now: SystemTime) -> Result<Issued> {
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
        path: ca_pem_path,
        source,
    })?;
    let name = std::fs::read_to_string(ca_dir.join(CA_NAME)).unwrap_or_default();
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(cert("reading the CA key"))?;
    let ca = ca_params(name.trim())?
        .self_signed(&ca_key)
        .map_err(cert("signing the CA certificate"))?;

    if out.join(CA_KEY).exists() {
        return Err(TlsError::BundleHoldsCaKey {
            dir: out.to_path_buf(),
        });
    }
    private_dir(out)?;
    let cert_path = out.join(format!("{node}.pem"));
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
    let certificate =
        CertificateInfo::from_der(node_cert.der()).map_err(|reason| TlsError::BadCert {
            path: cert_path.clone(),
            reason,
        })?;

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

/// What a node certificate says, read with x509-parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject's common name: the node the certificate was issued for.
    pub node: String,
    /// The serial number, hex bytes separated by `:`.
    pub serial: String,
    /// Start of validity, seconds since the Unix epoch (UTC).
    pub not_before: i64,
    /// End of validity, seconds since the Unix epoch (UTC).
    pub not_after: i64,
}

impl CertificateInfo {
    /// Reads a DER certificate. Errors: a sentence saying why it does not
    /// decode.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, c) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let node = c
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(Self {
            node,
            serial: c.tbs_certificate.raw_serial_as_string(),
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
        })
    }

    /// Reads the first certificate of the PEM file `path`.
    ///
    /// Errors: the file cannot be read, holds no certificate, or it does
    /// not decode.
    pub fn read(path: &Path) -> Result<Self> {
        let pem = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let der = match rustls_pemfile::certs(&mut &pem[..]).next() {
            Some(Ok(der)) => der,
            Some(Err(source)) => {
                return Err(TlsError::Pem {
                    path: path.to_path_buf(),
                    source,
                })
            }
            None => {
                return Err(TlsError::NoCert {
                    path: path.to_path_buf(),
                })
            }
        };
        Self::from_der(&der).map_err(|reason| TlsError::BadCert {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Time left until the certificate expires, seen at `now`; `None` once
    /// it has expired (or when `now` is before 1970).
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        let now = i64::try_from(unix(now).ok()?).ok()?;
        u64::try_from(self.not_after - now)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }

    /// The end of validity as `YYYY-MM-DD HH:MM UTC`.
    pub fn not_after_utc(&self) -> String {
        utc_text(self.not_after)
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM UTC`.
fn utc_text(secs: i64) -> String {
    match x509_parser::time::ASN1Time::from_timestamp(secs) {
        Ok(t) => {
            let t = t.to_datetime();
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        }
        Err(_) => format!("{secs} s after 1970"),
    }
}

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
    /// others, an expired or unreadable certificate, or any error of
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

/// The certificate the MOSE endpoint at `to` (`HOST:PORT`) presents to
/// `identity` in a mutual TLS handshake, with `timeout` bounding the
/// connect and each read and write; the connection is closed right after
/// the handshake, before any message. For checking a rotation from a node
/// of the cluster.
///
/// Errors: `to` is not `HOST:PORT` or does not resolve, the connection or
/// the handshake fails, or the peer's certificate does not decode.
pub fn presented_certificate(
    identity: &Identity,
    to: &str,
    timeout: Duration,
) -> Result<CertificateInfo> {
    use std::net::ToSocketAddrs;
    let fail = |reason: String| TlsError::Presented {
        to: to.to_string(),
        reason,
    };
    let host = to
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| fail("not HOST:PORT".into()))?;
    let addr = to
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("resolves to no address".into()))?;
    let cfg = identity.client_config()?;
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| fail(format!("connecting: {e}")))?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|()| tcp.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    let mut conn =
        rustls::ClientConnection::new(cfg, server_name(host)?).map_err(|e| fail(e.to_string()))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| fail(format!("TLS handshake: {e}")))?;
    }
    let der = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| fail("it presented no certificate".into()))?;
    let info = CertificateInfo::from_der(der).map_err(fail)?;
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    Ok(info)
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

    fn request(node: &str, days: u32, renew: bool) -> NodeRequest<'_> {
        NodeRequest {
            node,
            ips: &[],
            dns: &[],
            days,
            renew,
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    /// A CA in `<tmp>/ca` and node1's bundle in `<tmp>/node1`.
    fn ca_and_bundle() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca");
        init_ca(&ca, "test").unwrap();
        let out = d.path().join("node1");
        let ips = ["10.0.0.1".parse().unwrap()];
        let req = NodeRequest {
            ips: &ips,
            ..request("node1", DEFAULT_DAYS, false)
        };
        issue(&ca, &out, &req).unwrap();
        (d, ca, out)
    }

    #[test]
    fn ca_issues_usable_node_credentials() {
        let (_d, ca, out) = ca_and_bundle();
        assert!(init_ca(&ca, "again").is_err(), "never overwrite a CA");
        let id = Identity::new(&out, "node1");
        id.server_config().unwrap();
        id.client_config().unwrap();
        let e = Identity::new(&out, "nobody")
            .client_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("mosectl ca issue"), "{e}");
    }

    #[test]
    fn a_bundle_holds_no_ca_key_and_is_private() {
        let (_d, ca, out) = ca_and_bundle();
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.pem", "node1.key", "node1.pem"]);
        assert_eq!(
            std::fs::read(out.join("ca.pem")).unwrap(),
            std::fs::read(ca.join("ca.pem")).unwrap()
        );
        assert_eq!(mode(&ca), 0o700);
        assert_eq!(mode(&ca.join("ca.key")), 0o600);
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&out.join("node1.key")), 0o600);
        check_node_dir(&out, "node1").unwrap();
        ReloadableServerConfig::load(Identity::new(&out, "node1")).unwrap();
    }

    #[test]
    fn the_default_bundle_is_beside_the_ca_not_in_it() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), "test").unwrap();
        let out = default_bundle_dir(d.path(), "edge1");
        issue(d.path(), &out, &request("edge1", 30, false)).unwrap();
        assert!(!out.join("ca.key").exists());
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&d.path().join("nodes")), 0o700);
        // into the CA directory itself: refused, it would sit beside ca.key
        let e = issue(d.path(), d.path(), &request("edge1", 30, false)).unwrap_err();
        assert!(matches!(e, TlsError::BundleHoldsCaKey { .. }), "{e}");
    }

    #[test]
    fn a_renewal_must_be_asked_for_and_gives_a_new_verifiable_certificate() {
        let (_d, ca, out) = ca_and_bundle();
        let before = CertificateInfo::read(&out.join("node1.pem")).unwrap();
        let old_key = std::fs::read(out.join("node1.key")).unwrap();
        let e = issue(&ca, &out, &request("node1", DEFAULT_DAYS, false)).unwrap_err();
        assert!(matches!(e, TlsError::CertExists { .. }), "{e}");
        assert!(e.to_string().contains("--renew"), "{e}");
        assert_eq!(
            CertificateInfo::read(&out.join("node1.pem")).unwrap(),
            before,
            "a refused issue leaves the bundle alone"
        );
        let issued = issue(&ca, &out, &request("node1", DEFAULT_DAYS, true)).unwrap();
        assert!(issued.renewed);
        let after = CertificateInfo::read(&out.join("node1.pem")).unwrap();
        assert_eq!(after, issued.certificate);
        assert_ne!(after.serial, before.serial);
        assert_ne!(std::fs::read(out.join("node1.key")).unwrap(), old_key);
        assert_eq!(mode(&out.join("node1.key")), 0o600);
        // no temporary file is left behind
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 3);
        // the renewed pair verifies against the CA: a handshake with node2
        issue(&ca, &out, &request("node2", DEFAULT_DAYS, false)).unwrap();
        handshake(&Identity::new(&out, "node1"), &Identity::new(&out, "node2"));
    }

    /// A full mutual TLS handshake in memory: `client` connects to `server`.
    fn handshake(client: &Identity, server: &Identity) {
        let mut c = rustls::ClientConnection::new(
            client.client_config().unwrap(),
            server_name(&server.node).unwrap(),
        )
        .unwrap();
        let mut s = rustls::ServerConnection::new(server.server_config().unwrap()).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                s.read_tls(&mut &buf[..]).unwrap();
                s.process_new_packets().unwrap();
            }
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets().unwrap();
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return;
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn certificates_have_the_lifetime_asked_for() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), "test").unwrap();
        let now = unix(SystemTime::now()).unwrap() as i64;
        let out = d.path().join("n");
        let i = issue(d.path(), &out, &request("n", 90, false)).unwrap();
        let c = i.certificate;
        assert_eq!(c.node, "n");
        // a few minutes back for clock skew, 90 days ahead
        let skew = CLOCK_SKEW.as_secs() as i64;
        assert!(
            (now - skew - 5..=now - skew + 5).contains(&c.not_before),
            "{c:?}"
        );
        let end = now + 90 * 24 * 3600;
        assert!((end - 5..=end + 5).contains(&c.not_after), "{c:?}");
        assert!(c.remaining(SystemTime::now()).unwrap() > Duration::from_secs(89 * 24 * 3600));
        for days in [0, MAX_DAYS + 1, u32::MAX] {
            let e = issue(d.path(), &out, &request("n", days, true)).unwrap_err();
            assert!(matches!(e, TlsError::Days { .. }), "{e}");
            assert!(e.to_string().contains(&format!("{days} days")), "{e}");
        }
        assert_eq!(
            CertificateInfo::read(&out.join("n.pem")).unwrap(),
            c,
            "a refused lifetime writes nothing"
        );
    }

    #[test]
    fn node_names_that_are_not_file_names_are_refused() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), "test").unwrap();
        for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
            let e = issue(d.path(), &d.path().join("out"), &request(bad, 1, false)).unwrap_err();
            assert!(matches!(e, TlsError::NodeNameChars { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_node_directory_with_the_ca_key_is_refused_with_the_fix() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), "test").unwrap();
        // the old layout: the node's files beside the CA's
        let out = d.path().join("b");
        issue(d.path(), &out, &request("n1", 1, false)).unwrap();
        for f in ["n1.pem", "n1.key"] {
            std::fs::copy(out.join(f), d.path().join(f)).unwrap();
        }
        let e = ReloadableServerConfig::load(Identity::new(d.path(), "n1")).unwrap_err();
        assert!(matches!(e, TlsError::CaKeyInNodeDir { .. }), "{e}");
        let m = e.to_string();
        assert!(
            m.contains(&d.path().join("ca.key").display().to_string()),
            "{m}"
        );
        assert!(m.contains("mint any node's identity"), "{m}");
        assert!(m.contains("mosectl ca issue") && m.contains("--out"), "{m}");
    }

    #[test]
    fn a_node_key_open_to_others_is_refused_with_chmod() {
        let (_d, _ca, out) = ca_and_bundle();
        let key = out.join("node1.key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        let e = check_node_dir(&out, "node1").unwrap_err();
        assert!(
            matches!(e, TlsError::KeyNotPrivate { mode: 0o640, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn an_expired_certificate_is_refused_and_a_reload_keeps_the_old() {
        let (_d, ca, out) = ca_and_bundle();
        let id = Identity::new(&out, "node1");
        let r = ReloadableServerConfig::load(id.clone()).unwrap();
        let good = r.certificate();
        // renewed as if two days ago for one day: expired yesterday
        let past = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
        issue_at(&ca, &out, &request("node1", 1, true), past).unwrap();
        let e = r.reload().unwrap_err();
        assert!(matches!(e, TlsError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("--renew"), "{e}");
        assert_eq!(r.certificate(), good, "the failed reload kept the old one");
        let e = ReloadableServerConfig::load(id).unwrap_err();
        assert!(matches!(e, TlsError::Expired { .. }), "{e}");
        // a good renewal is picked up
        let i = issue(&ca, &out, &request("node1", 10, true)).unwrap();
        assert_eq!(r.reload().unwrap(), i.certificate);
        assert_eq!(r.certificate(), i.certificate);
    }

    #[test]
    fn an_existing_directory_open_to_others_is_closed_when_empty_else_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca");
        std::fs::create_dir(&ca).unwrap();
        std::fs::set_permissions(&ca, PermissionsExt::from_mode(0o755)).unwrap();
        // empty: taken over and closed
        init_ca(&ca, "test").unwrap();
        assert_eq!(mode(&ca), 0o700);
        // with content: left as it is, and not used
        let shared = d.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("notes"), "x").unwrap();
        std::fs::set_permissions(&shared, PermissionsExt::from_mode(0o755)).unwrap();
        let e = init_ca(&shared, "test").unwrap_err();
        assert!(
            matches!(e, TlsError::DirNotPrivate { mode: 0o755, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 700"), "{e}");
        assert!(!shared.join("ca.key").exists());
        assert_eq!(mode(&shared), 0o755);
        let e = issue(&ca, &shared, &request("n", 1, false)).unwrap_err();
        assert!(matches!(e, TlsError::DirNotPrivate { .. }), "{e}");
    }

    #[test]
    fn dates_read_as_utc() {
        assert_eq!(utc_text(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_text(1_800_000_000), "2027-01-15 08:00 UTC");
    }
}
