//! What a certificate says, and what a peer presents.

use super::*;

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
    /// decode, or that its subject has not exactly one common name (a node
    /// certificate names one node, see [`crate::peer`]).
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, c) = X509Certificate::from_der(der)
            .map_err(|e| format!("the certificate does not decode: {e}"))?;
        let node = subject_node(&c)?;
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
pub(super) fn utc_text(secs: i64) -> String {
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

/// The one common name of `c`'s subject: the node `mosectl ca issue --node`
/// issued it for.
fn subject_node(c: &X509Certificate<'_>) -> Result<String, String> {
    let names: Vec<&str> = c
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate's common name is not text: {e}"))?;
    match names.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => Err(
            "the certificate names no node (its subject has no common name); \
                   issue node certificates with `mosectl ca issue --node NAME`"
                .into(),
        ),
        _ => Err(format!(
            "the certificate names several nodes ({}); issue node certificates with \
             `mosectl ca issue --node NAME`",
            names.join(", ")
        )),
    }
}
