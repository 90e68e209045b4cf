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

mod ca;
mod certificate;
mod files;
mod identity;

pub use ca::{default_bundle_dir, init_ca, issue, Issued, NodeRequest};
pub use certificate::{presented_certificate, CertificateInfo};
pub use identity::{check_node_dir, Identity, ReloadableServerConfig};

use files::{commit_staged, mode_of, private_dir, stage, write_file, write_private};

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
