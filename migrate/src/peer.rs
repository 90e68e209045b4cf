//! Which node a peer is: the name its certificate was issued for, never the
//! name it claims in `Hello`/`HelloOk`.
//!
//! Every cluster member's certificate is signed by the cluster CA, so the
//! TLS handshake alone only proves *membership*. `mosectl ca issue --node N`
//! writes `N` as the certificate subject's common name; a peer claiming
//! another node's name is refused, and records name the certified node.

use rustls::pki_types::CertificateDer;

/// The node name in a peer's certificate chain (`certs` as rustls reports
/// it, end-entity first): its subject's one common name.
///
/// Errors (a sentence naming the problem): no certificate was presented,
/// the certificate does not decode as X.509 DER, or its subject has no or
/// several common names.
pub fn certified_node(certs: Option<&[CertificateDer<'_>]>) -> Result<String, String> {
    let Some(end_entity) = certs.and_then(|c| c.first()) else {
        return Err("the peer presented no certificate".into());
    };
    crate::tls::CertificateInfo::from_der(end_entity.as_ref())
        .map(|c| c.node)
        .map_err(|why| format!("the peer's {}", why.trim_start_matches("the ")))
}

/// Refuses a peer that claims (`Hello`/`HelloOk`) to be a node other than
/// the one its certificate was issued for.
pub fn check_claim(claimed: &str, certified: &str) -> Result<(), String> {
    if claimed == certified {
        return Ok(());
    }
    Err(format!(
        "the peer claims to be node {claimed:?} but its certificate was issued for node \
         {certified:?}; refused (every node presents its own certificate, from \
         `mosectl ca issue --node {claimed}`)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert_with(cns: &[&str]) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        for cn in cns {
            dn.push(DnType::CommonName, *cn);
        }
        p.distinguished_name = dn;
        let key = KeyPair::generate().expect("key");
        p.self_signed(&key).expect("sign").der().clone()
    }

    #[test]
    fn the_common_name_is_the_node() {
        let c = cert_with(&["edge1"]);
        assert_eq!(certified_node(Some(&[c])).as_deref(), Ok("edge1"));
    }

    #[test]
    fn missing_garbled_or_ambiguous_certificates_are_refused() {
        assert!(certified_node(None).unwrap_err().contains("no certificate"));
        assert!(certified_node(Some(&[]))
            .unwrap_err()
            .contains("no certificate"));
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01, 0xff]);
        assert!(certified_node(Some(&[junk]))
            .unwrap_err()
            .contains("does not decode"));
        let none = cert_with(&[]);
        assert!(certified_node(Some(&[none]))
            .unwrap_err()
            .contains("no common name"));
    }

    #[test]
    fn a_claim_must_match_the_certificate() {
        assert!(check_claim("edge1", "edge1").is_ok());
        let e = check_claim("edge2", "edge1").unwrap_err();
        assert!(e.contains("\"edge2\"") && e.contains("\"edge1\""), "{e}");
    }
}
