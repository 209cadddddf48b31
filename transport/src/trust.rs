//! Trust bundles: the CA certificates a node trusts, as one PEM text (`ca.pem`), and what
//! a CA rotation needs to know about them.
//!
//! A rotation trusts the new CA beside the old one, moves every certificate over, then
//! drops the old one (ARCHITECTURE.md "CA rotation"). Its steps compare bundles by
//! [`digest`] and find which CA of a bundle issued a leaf with [`issuer_in`].

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::x509::fingerprint;

/// Parses a bundle of one or more CA certificates; the error says what is wrong with it
/// (the caller names the file).
pub fn parse_bundle(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bad = |reason: String| reason;
    let bundle = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if bundle.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    for (i, der) in bundle.iter().enumerate() {
        if !is_ca(der) {
            return Err(bad(format!(
                "certificate {} is not a CA certificate (no basicConstraints CA:true)",
                i + 1
            )));
        }
    }
    Ok(bundle)
}

/// A bundle as PEM text, one block per certificate, in order.
pub fn bundle_pem(bundle: &[CertificateDer<'_>]) -> String {
    bundle
        .iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())))
        .collect()
}

/// What identifies a bundle whatever its order: SHA-256 over its certificates'
/// fingerprints, sorted, as 64 hex digits.
pub fn digest(bundle: &[CertificateDer<'_>]) -> String {
    let mut prints: Vec<String> = bundle.iter().map(fingerprint).collect();
    prints.sort();
    prints.dedup();
    let digest = ring::digest::digest(&ring::digest::SHA256, prints.join("\n").as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of the CA of `bundle` whose name is the issuer of `leaf`, if any. Each
/// actormesh CA has a name of its own (a random tag), so the name tells the CA apart; this
/// reports progress and decides nothing about trust.
pub fn issuer_in(leaf: &CertificateDer<'_>, bundle: &[CertificateDer<'_>]) -> Option<String> {
    let (_, leaf) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    bundle
        .iter()
        .find(|ca| {
            X509Certificate::from_der(ca.as_ref())
                .is_ok_and(|(_, ca)| ca.subject().as_raw() == leaf.issuer().as_raw())
        })
        .map(fingerprint)
}

/// Whether `der` is a self-signed CA certificate: a trust anchor rather than a leaf or a
/// cross-signed bridge.
pub fn is_root(der: &CertificateDer<'_>) -> bool {
    X509Certificate::from_der(der.as_ref())
        .is_ok_and(|(_, c)| c.is_ca() && c.subject().as_raw() == c.issuer().as_raw())
}

fn is_ca(der: &CertificateDer<'_>) -> bool {
    X509Certificate::from_der(der.as_ref()).is_ok_and(|(_, c)| c.is_ca())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, DEFAULT_CA_TTL};
    use crate::SpiffeId;
    use std::time::Duration;

    #[test]
    fn a_bundle_round_trips_and_its_digest_ignores_order() {
        let a = CertificateAuthority::generate("t.local", DEFAULT_CA_TTL).unwrap();
        let b = CertificateAuthority::generate("t.local", DEFAULT_CA_TTL).unwrap();
        let ab = vec![a.cert_der().clone(), b.cert_der().clone()];
        let ba = vec![b.cert_der().clone(), a.cert_der().clone()];
        let text = bundle_pem(&ab);
        assert_eq!(parse_bundle(&text).unwrap(), ab);
        assert_eq!(digest(&ab), digest(&ba));
        assert_ne!(digest(&ab), digest(&ab[..1]));
        assert_ne!(digest(&ab[..1]), digest(&ab[1..]));
        // A leaf in a bundle is refused, naming its position; credentials name the file.
        let id = SpiffeId::node("t.local", "n1").unwrap();
        let leaf = a.issue(&id, Duration::from_secs(60)).unwrap();
        let e = parse_bundle(&(text + &leaf.cert_pem)).unwrap_err();
        assert!(e.contains("certificate 3 is not a CA"), "{e}");
        assert!(parse_bundle("").is_err());
        let e = crate::pki::Credentials::from_pem(
            &leaf.cert_pem,
            &leaf.key_pem,
            &leaf.cert_pem,
            std::path::Path::new("x"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("x/ca.pem"), "{e}");
    }

    #[test]
    fn the_issuer_of_a_leaf_is_found_by_name_and_only_roots_count_as_roots() {
        let a = CertificateAuthority::generate("t.local", DEFAULT_CA_TTL).unwrap();
        let b = CertificateAuthority::generate("t.local", DEFAULT_CA_TTL).unwrap();
        let id = SpiffeId::node("t.local", "n1").unwrap();
        let leaf = b.issue(&id, Duration::from_secs(60)).unwrap();
        let leaf = leaf.credentials().unwrap().chain[0].clone();
        let bundle = [a.cert_der().clone(), b.cert_der().clone()];
        assert_eq!(issuer_in(&leaf, &bundle), Some(b.fingerprint()));
        assert_eq!(issuer_in(&leaf, &bundle[..1]), None);
        assert!(is_root(a.cert_der()));
        assert!(!is_root(&leaf));
        let bridge = a.cross_sign(&b).unwrap();
        let bridge = CertificateDer::from_pem_slice(bridge.as_bytes()).unwrap();
        assert!(
            !is_root(&bridge),
            "a cross-signed CA is a bridge, not an anchor"
        );
        assert!(is_ca(&bridge));
    }
}
