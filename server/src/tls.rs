//! TLS on the client API port (`tls.*`), and the client identity of mutual TLS.
//!
//! - `tls.cert` + `tls.key` (PEM) turn TLS on (rustls with ring, through tonic); one without
//!   the other is a start-up error.
//! - `tls.client.auth.enabled` requires a client certificate signed by `tls.client.auth.ca`
//!   (the handshake fails without one); enabling it without a CA is a start-up error.
//! - The client identity is the common name of the first certificate the client presented
//!   (its own; the handshake verified its chain), as in Liftbridge. [`common_name`] reads it
//!   with a minimal DER walk: Certificate → tbsCertificate → subject → the last CN attribute
//!   (Go's `pkix.Name` keeps the last one too).

use std::path::Path;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::TlsConfig;
use crate::error::{Result, ServerError};

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| ServerError::InvalidArgument(format!("{what} {}: {e}", path.display())))
}

/// The tonic TLS settings for `cfg`, or None when TLS is off.
pub fn server_config(cfg: &TlsConfig) -> Result<Option<ServerTlsConfig>> {
    let (cert, key) = match (&cfg.cert, &cfg.key) {
        (None, None) => {
            if cfg.client_auth_enabled {
                return Err(ServerError::InvalidArgument(
                    "tls.client.auth.enabled needs TLS: set tls.cert and tls.key".into(),
                ));
            }
            return Ok(None);
        }
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(ServerError::InvalidArgument(
                "TLS needs both tls.cert and tls.key".into(),
            ))
        }
    };
    let identity = Identity::from_pem(read(cert, "tls.cert")?, read(key, "tls.key")?);
    let mut out = ServerTlsConfig::new().identity(identity);
    if cfg.client_auth_enabled {
        let ca = cfg.client_auth_ca.as_ref().ok_or_else(|| {
            ServerError::InvalidArgument(
                "tls.client.auth.enabled needs tls.client.auth.ca (the CA of client certificates)"
                    .into(),
            )
        })?;
        out = out.client_ca_root(Certificate::from_pem(read(ca, "tls.client.auth.ca")?));
    }
    Ok(Some(out))
}

/// The client identity of a request: the CN of the client's certificate, if it sent one.
pub fn client_identity<T>(req: &tonic::Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    common_name(certs.first()?.as_ref())
}

/// One DER element: (tag, content, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l, b) = b.split_first()?;
    let (len, b) = if l < 0x80 {
        (usize::from(l), b)
    } else {
        let n = usize::from(l & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, &b[n..])
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// 2.5.4.3 (id-at-commonName).
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // Optional [0] version.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer, validity.
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, mut subject, _) = tlv(rest)? else {
        return None;
    };
    let mut cn = None;
    while !subject.is_empty() {
        let (tag, mut rdn, next) = tlv(subject)?;
        subject = next;
        if tag != SET {
            return None;
        }
        while !rdn.is_empty() {
            let (tag, attr, next) = tlv(rdn)?;
            rdn = next;
            if tag != SEQUENCE {
                return None;
            }
            let (OID, oid, value) = tlv(attr)? else {
                return None;
            };
            if oid == CN_OID {
                let (vtag, v, _) = tlv(value)?;
                cn = Some(match vtag {
                    // BMPString: UTF-16BE.
                    0x1e => {
                        let units: Vec<u16> = v
                            .chunks_exact(2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .collect();
                        String::from_utf16_lossy(&units)
                    }
                    _ => String::from_utf8_lossy(v).into_owned(),
                });
            }
        }
    }
    cn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_of_generated_certificates() {
        for cn in [
            "client1",
            "a much longer common name, with a comma",
            "ünïcode",
        ] {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("p");
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "Drawbridge tests");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = params.self_signed(&key).expect("cert");
            assert_eq!(common_name(cert.der()).as_deref(), Some(cn));
        }
    }

    #[test]
    fn no_common_name_and_garbage() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("p");
        params.distinguished_name = rcgen::DistinguishedName::new();
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(common_name(cert.der()), None);
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x82, 0xff]), None);
        let der = cert.der().to_vec();
        for cut in [1, 10, der.len() / 2] {
            assert_eq!(common_name(&der[..cut]), None);
        }
    }
}
