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
mod tests {
    use super::ca::issue_at;
    use super::certificate::utc_text;
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
    fn a_certificate_of_another_node_is_refused() {
        let (_d, _ca, out) = ca_and_bundle();
        for ext in ["pem", "key"] {
            std::fs::rename(
                out.join(format!("node1.{ext}")),
                out.join(format!("node2.{ext}")),
            )
            .unwrap();
        }
        let e = ReloadableServerConfig::load(Identity::new(&out, "node2")).unwrap_err();
        assert!(matches!(e, TlsError::WrongNode { .. }), "{e}");
        assert!(e.to_string().contains("issued for node \"node1\""), "{e}");
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
        // empty and this user's: taken over and closed
        init_ca(&ca, "test").unwrap();
        assert_eq!(mode(&ca), 0o700);
        // with content: left as it is, and not used; no chmod advice for a
        // directory that holds other things
        let shared = d.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("notes"), "x").unwrap();
        std::fs::set_permissions(&shared, PermissionsExt::from_mode(0o755)).unwrap();
        let e = init_ca(&shared, "test").unwrap_err();
        assert!(
            matches!(e, TlsError::DirNotPrivate { mode: 0o755, .. }),
            "{e}"
        );
        let m = e.to_string();
        assert!(!m.contains("chmod"), "{m}");
        assert!(
            m.contains("choose a new directory") && m.contains("ca.key"),
            "{m}"
        );
        assert!(!shared.join("ca.key").exists());
        assert_eq!(mode(&shared), 0o755);
        let e = issue(&ca, &shared, &request("n", 1, false)).unwrap_err();
        assert!(matches!(e, TlsError::DirNotPrivate { .. }), "{e}");
        assert!(e.to_string().contains("node n's private key"), "{e}");
        // a shared directory such as /tmp (sticky, open to all) is never
        // taken over, even empty
        let tmp = d.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::set_permissions(&tmp, PermissionsExt::from_mode(0o1777)).unwrap();
        let e = issue(&ca, &tmp, &request("n", 1, false)).unwrap_err();
        assert!(
            matches!(e, TlsError::DirNotPrivate { mode: 0o1777, .. }),
            "{e}"
        );
        assert!(!e.to_string().contains("chmod"), "{e}");
        assert_eq!(mode(&tmp), 0o777);
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    }

    #[test]
    fn an_out_that_is_a_file_is_not_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca");
        init_ca(&ca, "test").unwrap();
        let file = d.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = issue(&ca, &file, &request("n", 1, false)).unwrap_err();
        assert!(matches!(e, TlsError::NotADirectory { .. }), "{e}");
        assert!(e.to_string().contains("is not a directory"), "{e}");
        let e = init_ca(&file, "test").unwrap_err();
        assert!(matches!(e, TlsError::NotADirectory { .. }), "{e}");
        let e = check_node_dir(&file, "n").unwrap_err();
        assert!(matches!(e, TlsError::NotADirectory { .. }), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn reserved_node_names_are_refused() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), "test").unwrap();
        let out = d.path().join("out");
        for bad in ["ca", "CA", "-oProxyCommand=x", "-n"] {
            let e = issue(d.path(), &out, &request(bad, 1, false)).unwrap_err();
            assert!(
                matches!(e, TlsError::NodeNameReserved { .. }),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().contains("choose another name"), "{e}");
        }
        let e = issue(d.path(), &out, &request("ca", 1, false)).unwrap_err();
        assert!(e.to_string().contains("ca.pem and ca.key"), "{e}");
        let e = issue(d.path(), &out, &request("-n", 1, false)).unwrap_err();
        assert!(e.to_string().contains("option"), "{e}");
        assert!(!out.exists(), "nothing written");
        // names that merely contain them are fine
        for good in ["cache", "n-1", "ca1"] {
            issue(d.path(), &out, &request(good, 1, false)).unwrap();
        }
    }

    /// The DER of the first certificate in the PEM file `p`.
    fn der_of(p: &Path) -> Vec<u8> {
        let pem = std::fs::read(p).unwrap();
        let der = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .unwrap()
            .unwrap();
        der.to_vec()
    }

    #[test]
    fn issue_signs_with_ca_pem_whatever_ca_name_says() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca");
        init_ca(&ca, "prod").unwrap();
        let out = d.path().join("b");
        // ca.name missing, then edited: the issuer is still ca.pem's subject
        std::fs::remove_file(ca.join("ca.name")).unwrap();
        issue(&ca, &out, &request("n1", 1, false)).unwrap();
        std::fs::write(ca.join("ca.name"), "edited").unwrap();
        issue(&ca, &out, &request("n2", 1, false)).unwrap();
        let ca_der = der_of(&ca.join("ca.pem"));
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        for n in ["n1", "n2"] {
            let der = der_of(&out.join(format!("{n}.pem")));
            let (_, c) = X509Certificate::from_der(&der).unwrap();
            assert_eq!(
                c.issuer().as_raw(),
                ca_cert.subject().as_raw(),
                "{n}'s issuer is exactly ca.pem's subject"
            );
            c.verify_signature(Some(ca_cert.public_key())).unwrap();
            ReloadableServerConfig::load(Identity::new(&out, n)).unwrap();
        }
        handshake(&Identity::new(&out, "n1"), &Identity::new(&out, "n2"));
    }

    #[test]
    fn a_ca_pem_that_does_not_pair_with_ca_key_issues_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        init_ca(&a, "a").unwrap();
        init_ca(&b, "b").unwrap();
        std::fs::copy(b.join("ca.pem"), a.join("ca.pem")).unwrap();
        let out = d.path().join("out");
        let e = issue(&a, &out, &request("n1", 1, false)).unwrap_err();
        assert!(matches!(e, TlsError::IssuedDoesNotVerify { .. }), "{e}");
        let m = e.to_string();
        assert!(m.contains(&a.join("ca.key").display().to_string()), "{m}");
        assert!(m.contains(&a.join("ca.pem").display().to_string()), "{m}");
        assert!(!out.exists(), "nothing written: {m}");
        // garbage for ca.pem: named
        std::fs::write(a.join("ca.pem"), "not a certificate").unwrap();
        let e = issue(&a, &out, &request("n1", 1, false)).unwrap_err();
        assert!(matches!(e, TlsError::NoCaCert { .. }), "{e}");
        assert!(e.to_string().contains("ca.pem"), "{e}");
    }

    #[test]
    fn a_bundle_whose_certificate_does_not_chain_to_its_ca_pem_is_refused() {
        let (d, _ca, out) = ca_and_bundle();
        let other = d.path().join("other");
        init_ca(&other, "other").unwrap();
        std::fs::copy(other.join("ca.pem"), out.join("ca.pem")).unwrap();
        let e = ReloadableServerConfig::load(Identity::new(&out, "node1")).unwrap_err();
        assert!(matches!(e, TlsError::NotChained { .. }), "{e}");
        let m = e.to_string();
        for want in [
            out.join("node1.pem").display().to_string(),
            out.join("ca.pem").display().to_string(),
            "mosectl ca issue --node node1".to_string(),
        ] {
            assert!(m.contains(&want), "{want:?} in {m}");
        }
    }

    #[test]
    fn a_certificate_not_valid_yet_is_loaded() {
        let (_d, ca, out) = ca_and_bundle();
        let later = SystemTime::now() + Duration::from_secs(2 * 24 * 3600);
        issue_at(&ca, &out, &request("node1", 10, true), later).unwrap();
        let r = ReloadableServerConfig::load(Identity::new(&out, "node1")).unwrap();
        let now = unix(SystemTime::now()).unwrap() as i64;
        assert!(r.certificate().not_before > now);
    }

    #[test]
    fn a_key_of_another_certificate_names_both_files() {
        let (_d, ca, out) = ca_and_bundle();
        issue(&ca, &out, &request("node2", 1, false)).unwrap();
        std::fs::copy(out.join("node2.key"), out.join("node1.key")).unwrap();
        let e = ReloadableServerConfig::load(Identity::new(&out, "node1")).unwrap_err();
        assert!(matches!(e, TlsError::NodeCert { .. }), "{e}");
        let m = e.to_string();
        assert!(
            m.contains(&out.join("node1.pem").display().to_string()),
            "{m}"
        );
        assert!(
            m.contains(&out.join("node1.key").display().to_string()),
            "{m}"
        );
        let e = Identity::new(&out, "node1").client_config().unwrap_err();
        assert!(matches!(e, TlsError::NodeCert { .. }), "{e}");
    }

    #[test]
    fn a_garbage_ca_pem_is_named() {
        let (_d, _ca, out) = ca_and_bundle();
        std::fs::write(out.join("ca.pem"), "garbage\n").unwrap();
        let e = ReloadableServerConfig::load(Identity::new(&out, "node1")).unwrap_err();
        assert!(matches!(e, TlsError::NoCaCert { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&out.join("ca.pem").display().to_string()),
            "{e}"
        );
        let e = Identity::new(&out, "node1").client_config().unwrap_err();
        assert!(matches!(e, TlsError::NoCaCert { .. }), "{e}");
    }

    #[test]
    fn a_missing_directory_or_file_says_how_to_get_the_bundle() {
        let (d, _ca, out) = ca_and_bundle();
        let none = d.path().join("none");
        let e = ReloadableServerConfig::load(Identity::new(&none, "node1")).unwrap_err();
        assert!(matches!(e, TlsError::NoTlsDir { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("no TLS directory {}", none.display())),
            "{e}"
        );
        for f in ["node1.key", "node1.pem", "ca.pem"] {
            let (_d, _ca, out) = ca_and_bundle();
            std::fs::remove_file(out.join(f)).unwrap();
            let e = ReloadableServerConfig::load(Identity::new(&out, "node1")).unwrap_err();
            assert!(matches!(e, TlsError::NoNodeCert { .. }), "{f}: {e}");
            let m = e.to_string();
            let want = [
                format!("no certificate for node node1 in {}", out.display()),
                format!("mosectl ca issue --node node1 --out {}", out.display()),
                out.join(f).display().to_string(),
            ];
            for w in want {
                assert!(m.contains(&w), "{w:?} in {m}");
            }
        }
        // another node's name: the same, from the agent's check and from
        // a connection's
        let e = check_node_dir(&out, "node9").unwrap_err();
        assert!(matches!(e, TlsError::NoNodeCert { .. }), "{e}");
        let e = Identity::new(&out, "node9").client_config().unwrap_err();
        assert!(matches!(e, TlsError::NoNodeCert { .. }), "{e}");
    }

    #[test]
    fn credentials_others_can_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let set = |p: &Path, m: u32| std::fs::set_permissions(p, PermissionsExt::from_mode(m));
        let (_d, _ca, out) = ca_and_bundle();
        for (f, m) in [("ca.pem", 0o666), ("node1.pem", 0o664)] {
            let p = out.join(f);
            set(&p, m).unwrap();
            let e = check_node_dir(&out, "node1").unwrap_err();
            assert!(
                matches!(&e, TlsError::WritableByOthers { path, .. } if *path == p),
                "{f}: {e}"
            );
            assert!(
                e.to_string()
                    .contains(&format!("chmod go-w {}", p.display())),
                "{e}"
            );
            set(&p, 0o644).unwrap();
        }
        set(&out, 0o777).unwrap();
        let e = ReloadableServerConfig::load(Identity::new(&out, "node1")).unwrap_err();
        assert!(
            matches!(&e, TlsError::WritableByOthers { path, .. } if *path == out),
            "{e}"
        );
        // readable by others is fine for the directory and certificates
        set(&out, 0o755).unwrap();
        check_node_dir(&out, "node1").unwrap();
    }

    #[test]
    fn owner_and_mode_decide_whether_credentials_are_used() {
        use files::{dir_use, exposure, DirUse, Exposure};
        // files and directories of a node's bundle
        assert_eq!(exposure(1000, 0o644, 1000), None);
        assert_eq!(exposure(1000, 0o600, 1000), None);
        assert_eq!(exposure(1000, 0o755, 1000), None);
        assert_eq!(exposure(1000, 0o664, 1000), Some(Exposure::Writable));
        assert_eq!(exposure(1000, 0o646, 1000), Some(Exposure::Writable));
        assert_eq!(exposure(0, 0o644, 1000), Some(Exposure::Owner(0)));
        assert_eq!(exposure(1000, 0o600, 0), Some(Exposure::Owner(1000)));
        // directories mosectl writes keys into
        assert_eq!(dir_use(1000, 0o700, false, 1000), DirUse::Use);
        assert_eq!(dir_use(1000, 0o755, true, 1000), DirUse::TakeOver);
        assert_eq!(dir_use(1000, 0o755, false, 1000), DirUse::NotPrivate);
        assert_eq!(dir_use(1000, 0o1777, true, 1000), DirUse::NotPrivate);
        assert_eq!(dir_use(0, 0o1777, false, 0), DirUse::NotPrivate);
        assert_eq!(dir_use(0, 0o700, true, 1000), DirUse::NotOwned);
        assert_eq!(dir_use(0, 0o755, true, 1000), DirUse::NotOwned);
    }

    /// Run as root (the test bed): files really owned by someone else.
    #[test]
    fn credentials_owned_by_another_user_are_refused() {
        if files::euid() != 0 {
            return; // chown needs root; the decision itself is tested above
        }
        let nobody = Some(65534);
        let (d, ca, out) = ca_and_bundle();
        for f in ["ca.pem", "node1.pem", "node1.key"] {
            let (_d, _ca, out) = ca_and_bundle();
            let p = out.join(f);
            std::os::unix::fs::chown(&p, nobody, None).unwrap();
            let e = check_node_dir(&out, "node1").unwrap_err();
            assert!(
                matches!(&e, TlsError::NotOwned { path, owner: 65534, .. } if *path == p),
                "{f}: {e}"
            );
            assert!(e.to_string().contains("uid 65534"), "{e}");
        }
        std::os::unix::fs::chown(&out, nobody, None).unwrap();
        let e = ReloadableServerConfig::load(Identity::new(&out, "node1")).unwrap_err();
        assert!(matches!(e, TlsError::NotOwned { .. }), "{e}");
        // mosectl does not write keys into another user's directory
        let theirs = d.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, nobody, None).unwrap();
        let e = issue(&ca, &theirs, &request("n2", 1, false)).unwrap_err();
        assert!(matches!(e, TlsError::DirNotOwned { .. }), "{e}");
        assert!(e.to_string().contains("choose a new directory"), "{e}");
        let e = init_ca(&theirs, "x").unwrap_err();
        assert!(matches!(e, TlsError::DirNotOwned { .. }), "{e}");
        assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
    }

    #[test]
    fn dates_read_as_utc() {
        assert_eq!(utc_text(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_text(1_800_000_000), "2027-01-15 08:00 UTC");
    }
}
