//! Cluster credentials and mutual TLS for the migration stream.
//!
//! Checkpoint images carry a process's secrets, so every migration stream is
//! encrypted, and both ends prove membership of the cluster with a certificate
//! signed by the cluster CA that `mosectl ca init` creates. A peer without such
//! a certificate is refused during the handshake, before anything is written.
//!
//! Two kinds of directory hold credentials, and they never mix:
//! - the **CA directory** (`mosectl ca init --dir`, default `/etc/mose/ca`,
//!   mode 0700), kept on the operator's host: `ca.pem`, `ca.key` (0600) and
//!   `ca.name` (a label; certificates are issued with `ca.pem`). Whoever
//!   reads `ca.key` can mint any node's identity.
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

mod ca;
mod certificate;
mod files;
mod identity;

pub use ca::{default_bundle_dir, init_ca, issue, Issued, NodeRequest};
pub use certificate::{presented_certificate, CertificateInfo};
pub use identity::{check_node_dir, Identity, ReloadableServerConfig};

use ca::check_node_name;
use certificate::utc_text;
use files::{check_exposure, commit_staged, private_dir, stage, write_file, write_private};
use identity::{client_verifier, roots_of, verify_chain};

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
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::{danger::ClientCertVerifier, WebPkiClientVerifier},
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
    #[error("node name {node:?}: {reason}; choose another name")]
    NodeNameReserved { node: String, reason: &'static str },
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
        "{} is open to group or others (mode {mode:04o}) and already holds files or is a \
         shared directory (sticky bit); it would hold {holds}: choose a new directory \
         (mosectl creates it with mode 0700)",
        .dir.display()
    )]
    DirNotPrivate {
        dir: PathBuf,
        mode: u32,
        holds: String,
    },
    #[error(
        "{} is owned by uid {owner}, not by this user (uid {euid}): its owner can swap the \
         files in it, and it would hold {holds}; choose a new directory (mosectl creates it \
         with mode 0700)",
        .dir.display()
    )]
    DirNotOwned {
        dir: PathBuf,
        owner: u32,
        euid: u32,
        holds: String,
    },
    #[error(
        "{} is not a directory; name a directory for {holds} (mosectl creates a missing one \
         with mode 0700)",
        .path.display()
    )]
    NotADirectory { path: PathBuf, holds: String },
    #[error(
        "{} is owned by uid {owner}, not by this user (uid {euid}): its owner can replace this \
         node's credentials (whoever writes ca.pem chooses which CA the node trusts); fix: \
         reinstall the bundle as uid {euid}, or check the files and `chown {euid} {}`",
        .path.display(), .path.display()
    )]
    NotOwned {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error(
        "{} can be written by group or others (mode {mode:04o}): they could replace this \
         node's credentials (whoever writes ca.pem chooses which CA the node trusts); fix: \
         check its content and `chmod go-w {}`",
        .path.display(), .path.display()
    )]
    WritableByOthers { path: PathBuf, mode: u32 },
    #[error(
        "no TLS directory {} (node {node}'s bundle: run `mosectl ca issue --node {node} --out \
         {}` where the CA is, and install that bundle here)",
        .dir.display(), .dir.display()
    )]
    NoTlsDir { dir: PathBuf, node: String },
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
         cluster CA is (`mosectl ca issue --dir <CA dir> --node {node} --renew --out DIR`), \
         copy the bundle here and start again",
        .path.display()
    )]
    Expired {
        node: String,
        path: PathBuf,
        not_after: String,
    },
    #[error("the certificate {}: {reason}", .path.display())]
    BadCert { path: PathBuf, reason: String },
    #[error(
        "{} was issued for node {certified:?}, but this node is {node:?}: peers would refuse \
         its claims; give it the bundle of `mosectl ca issue --node {node}`",
        .path.display()
    )]
    WrongNode {
        path: PathBuf,
        node: String,
        certified: String,
    },
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
    #[error(
        "{} is not a usable CA certificate: it must be the cluster CA's ca.pem (`mosectl ca \
         init` writes it, `mosectl ca issue` copies it into each bundle)",
        .path.display()
    )]
    BadCaCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "{} holds no certificate: it must be the cluster CA's ca.pem (`mosectl ca init` writes \
         it, `mosectl ca issue` copies it into each bundle)",
        .path.display()
    )]
    NoCaCert { path: PathBuf },
    #[error(
        "{} cannot issue certificates: it must be the CA certificate `mosectl ca init` wrote \
         beside ca.key",
        .path.display()
    )]
    CaCertificate {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "the certificate signed with {} does not verify against {} ({reason}): ca.key and \
         ca.pem are not a pair, or ca.pem is not a usable CA certificate; nothing was written",
        .ca_key.display(), .ca_cert.display()
    )]
    IssuedDoesNotVerify {
        ca_cert: PathBuf,
        ca_key: PathBuf,
        reason: String,
    },
    #[error(
        "{} does not chain to {} ({reason}): this bundle's ca.pem is not the CA that issued \
         the node's certificate; fix: install ca.pem, {node}.pem and {node}.key together from \
         one `mosectl ca issue --node {node}` run where the cluster CA is",
        .cert.display(), .ca.display()
    )]
    NotChained {
        node: String,
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error(
        "no certificate for node {node} in {} ({} is missing; run `mosectl ca issue --node \
         {node} --out {}` where the CA is, and install that bundle here)",
        .dir.display(), .missing.display(), .dir.display()
    )]
    NoNodeCert {
        node: String,
        dir: PathBuf,
        missing: PathBuf,
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
    #[error(
        "the node certificate {} with the key {} was refused; a certificate and its key come \
         together from one `mosectl ca issue` run: install both from the same bundle",
        .cert.display(), .key.display()
    )]
    NodeCert {
        cert: PathBuf,
        key: PathBuf,
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

/// Seconds since the Unix epoch of `t`.
fn unix(t: SystemTime) -> Result<u64> {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| TlsError::Clock)
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
mod tests;
