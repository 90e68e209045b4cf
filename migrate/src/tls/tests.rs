//! Unit tests of the cluster credentials.

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
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
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
