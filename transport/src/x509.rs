//! Reading fields of X.509 certificates: the SPIFFE ID and the expiry.
//!
//! Kept apart from `pki` (which issues certificates) and `tls` (which verifies them)
//! because both read these fields, and neither should depend on the other for that.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The first `spiffe://` URI SAN of a certificate, if any.
pub fn spiffe_uri_of(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_string()),
        _ => None,
    })
}

/// SHA-256 of a DER certificate, as 64 lowercase hex digits.
pub fn fingerprint(der: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// When a certificate stops being valid.
pub fn not_after_of(der: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let secs = cert.validity().not_after.timestamp();
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64))
}
