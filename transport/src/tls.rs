//! Mutual TLS 1.3 for QUIC: SPIFFE-aware certificate verification against the cluster CA,
//! and a certificate store that can be replaced while the endpoint runs.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    RootCertStore, SignatureScheme,
};

use crate::error::TransportError;
use crate::identity::SpiffeId;
use crate::pki::Credentials;
pub use crate::x509::{not_after_of, spiffe_uri_of};

/// The crypto provider actormesh uses everywhere: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The peer's identity was acceptable to the chain check but not to actormesh.
#[derive(Debug, thiserror::Error)]
#[error("certificate identity {found} is outside the trust domain {expected:?}")]
pub struct ForeignIdentity {
    /// The trust domain this endpoint accepts.
    pub expected: String,
    /// The SPIFFE ID the certificate carries.
    pub found: String,
}

/// A chain whose signature does not verify was not issued by our CA (another CA with the
/// same name, or a forgery): report it as an unknown CA, which is what it is to us.
fn not_our_ca(e: TlsError) -> TlsError {
    #[allow(deprecated)]
    match e {
        TlsError::InvalidCertificate(CertificateError::BadSignature) => {
            TlsError::InvalidCertificate(CertificateError::UnknownIssuer)
        }
        other => other,
    }
}

/// Verifies peers (as client or server) against the cluster's trust bundle (its CA, or
/// during a rotation the old and the new CA) and the trust domain.
#[derive(Debug)]
pub struct SpiffeVerifier {
    /// Replaced whole by [`SpiffeVerifier::set_trust`]: a handshake reads one bundle.
    anchors: RwLock<Arc<Anchors>>,
    trust_domain: String,
    algs: WebPkiSupportedAlgorithms,
    /// Identities refused whatever their certificate says (removed nodes), each until the
    /// last certificate issued to it expires (`None`: for good).
    revoked: RwLock<std::collections::HashMap<String, Option<SystemTime>>>,
}

/// A revocation is kept this long past the expiry of the certificate it covers, for clocks
/// that run behind ours: until then a peer might still accept that certificate.
pub const REVOCATION_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// One trust bundle, ready for handshakes.
#[derive(Debug)]
struct Anchors {
    bundle: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    client: Arc<dyn ClientCertVerifier>,
}

impl Anchors {
    fn new(bundle: &[CertificateDer<'static>]) -> Result<Self, TransportError> {
        if bundle.is_empty() {
            return Err(TransportError::Config(
                "the trust bundle is empty: at least one CA certificate is needed".into(),
            ));
        }
        let mut roots = RootCertStore::empty();
        for (i, ca) in bundle.iter().enumerate() {
            roots.add(ca.clone()).map_err(|e| {
                TransportError::Config(format!(
                    "CA certificate {} of the trust bundle is not usable as a trust anchor: {e}",
                    i + 1
                ))
            })?;
        }
        let roots = Arc::new(roots);
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| {
                TransportError::Config(format!("cannot build the client verifier: {e}"))
            })?;
        Ok(Self {
            bundle: bundle.to_vec(),
            roots,
            client,
        })
    }
}

impl SpiffeVerifier {
    /// Trusts certificates chained to a CA of `bundle` whose SPIFFE ID is in
    /// `trust_domain`.
    pub fn new(
        bundle: &[CertificateDer<'static>],
        trust_domain: &str,
    ) -> Result<Arc<Self>, TransportError> {
        Ok(Arc::new(Self {
            anchors: RwLock::new(Arc::new(Anchors::new(bundle)?)),
            trust_domain: trust_domain.to_string(),
            algs: provider().signature_verification_algorithms,
            revoked: RwLock::new(Default::default()),
        }))
    }

    /// Trusts `bundle` from the next handshake on; links up keep the peers they verified.
    pub fn set_trust(&self, bundle: &[CertificateDer<'static>]) -> Result<(), TransportError> {
        let next = Arc::new(Anchors::new(bundle)?);
        *self.anchors.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// The CA certificates trusted now.
    pub fn trust(&self) -> Vec<CertificateDer<'static>> {
        self.anchors().bundle.clone()
    }

    fn anchors(&self) -> Arc<Anchors> {
        self.anchors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The trust domain accepted.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Refuses `id` in every handshake from now on, even with a valid certificate.
    pub fn revoke(&self, id: &SpiffeId) {
        self.revoked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.as_str().to_string(), None);
    }

    /// Refuses `id` until `cert_expiry` (the expiry of the last certificate issued to it)
    /// plus [`REVOCATION_SKEW`]; after that its certificates are refused as expired anyway,
    /// and [`SpiffeVerifier::prune_revocations`] forgets it.
    pub fn revoke_until(&self, id: &SpiffeId, cert_expiry: SystemTime) {
        let until = cert_expiry.checked_add(REVOCATION_SKEW);
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        // A revocation for good is never shortened.
        if revoked.get(id.as_str()) != Some(&None) {
            revoked.insert(id.as_str().to_string(), until);
        }
    }

    /// Forgets revocations whose certificates have expired by `now`; returns how many.
    pub fn prune_revocations(&self, now: SystemTime) -> usize {
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        let before = revoked.len();
        revoked.retain(|_, until| until.is_none_or(|t| t > now));
        before - revoked.len()
    }

    /// How many identities are revoked now.
    pub fn revoked_count(&self) -> usize {
        self.revoked.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether `id` has been revoked.
    pub fn is_revoked(&self, id: &SpiffeId) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id.as_str())
    }

    /// Whether a handshake presenting `chain` (leaf first) would pass now: links made
    /// under an earlier bundle are checked with this when the bundle changes.
    pub fn accepts(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.verify_chain(leaf, intermediates, UnixTime::now())
            .is_ok()
    }

    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), TlsError> {
        // SPIFFE certificates carry no DNS name: the chain, validity and URI SAN decide.
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.anchors().roots,
            intermediates,
            now,
            self.algs.all,
        )
        .map_err(not_our_ca)?;
        self.check_identity(end_entity)
    }

    fn check_identity(&self, end_entity: &CertificateDer<'_>) -> Result<(), TlsError> {
        let uri = spiffe_uri_of(end_entity).ok_or(TlsError::InvalidCertificate(
            CertificateError::NotValidForName,
        ))?;
        let id = SpiffeId::parse(&uri)
            .map_err(|_| TlsError::InvalidCertificate(CertificateError::NotValidForName))?;
        if id.trust_domain() != self.trust_domain {
            return Err(TlsError::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(ForeignIdentity {
                    expected: self.trust_domain.clone(),
                    found: uri,
                })),
            )));
        }
        if self.is_revoked(&id) {
            return Err(TlsError::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(())
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.verify_chain(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional, and the bundle can change under a borrow: none are sent
        // (our clients present their one certificate whatever the hints say).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let verified = self
            .anchors()
            .client
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(not_our_ca)?;
        self.check_identity(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The certificate an endpoint presents, replaceable while it runs.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<PresentedCert>>,
}

/// One certificate as presented in handshakes.
#[derive(Debug)]
pub struct PresentedCert {
    /// Chain and signing key for rustls.
    pub certified: Arc<CertifiedKey>,
    /// The SPIFFE ID in the leaf.
    pub identity: SpiffeId,
    /// Expiry of the leaf.
    pub not_after: SystemTime,
}

impl CertStore {
    /// A store presenting `credentials`.
    pub fn new(credentials: &Credentials) -> Result<Arc<Self>, TransportError> {
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(Self::prepare(credentials)?)),
        }))
    }

    fn prepare(credentials: &Credentials) -> Result<PresentedCert, TransportError> {
        let key = provider()
            .key_provider
            .load_private_key(credentials.key.clone_key())
            .map_err(|e| TransportError::Config(format!("the private key is not usable: {e}")))?;
        let identity = credentials
            .identity()
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let not_after = credentials
            .not_after()
            .ok_or_else(|| TransportError::Config("the certificate cannot be parsed".into()))?;
        let certified = CertifiedKey::new(credentials.chain.clone(), key);
        if let Err(TlsError::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
            certified.keys_match()
        {
            return Err(TransportError::Config(format!(
                "the private key does not belong to the certificate of {identity}"
            )));
        }
        Ok(PresentedCert {
            certified: Arc::new(certified),
            identity,
            not_after,
        })
    }

    /// The certificate presented in new handshakes.
    pub fn current(&self) -> Arc<PresentedCert> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the certificate for new handshakes. The identity must stay the same.
    pub fn replace(&self, credentials: &Credentials) -> Result<(), TransportError> {
        let next = Self::prepare(credentials)?;
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if next.identity != cur.identity {
            return Err(TransportError::Config(format!(
                "a replacement certificate must keep the identity {} (it has {})",
                cur.identity, next.identity
            )));
        }
        *cur = Arc::new(next);
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().certified.clone())
    }
}

impl rustls::client::ResolvesClientCert for CertStore {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The ALPN protocol name of actormesh links.
pub const ALPN: &[u8] = b"actormesh";

/// rustls configurations for both roles: TLS 1.3 only, mutual auth, no 0-RTT.
pub fn rustls_configs(
    certs: Arc<CertStore>,
    verifier: Arc<SpiffeVerifier>,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), TransportError> {
    let cfg_err = |e: TlsError| TransportError::Config(format!("TLS configuration: {e}"));
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(cfg_err)?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(certs.clone());
    server.alpn_protocols = vec![ALPN.to_vec()];
    server.max_early_data_size = 0;
    // No session resumption: every link presents and verifies current certificates, so
    // replaced, expired or revoked ones take effect on the next link.
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(cfg_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(certs);
    client.alpn_protocols = vec![ALPN.to_vec()];
    client.enable_early_data = false;
    client.resumption = rustls::client::Resumption::disabled();
    Ok((server, client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertificateAuthority;
    use std::time::Duration;

    #[test]
    fn revocations_are_forgotten_once_their_certificates_expired() {
        let ca = CertificateAuthority::generate("t.local", Duration::from_secs(3600)).unwrap();
        let v = SpiffeVerifier::new(std::slice::from_ref(ca.cert_der()), "t.local").unwrap();
        let now = SystemTime::now();
        let id = |i: usize| SpiffeId::node("t.local", &format!("n{i}")).unwrap();
        let expiry =
            |i: usize| now + Duration::from_secs(i as u64 * 60) + Duration::from_secs(86400);
        // A thousand removed nodes over time, each with a 24 h certificate.
        for i in 0..1000 {
            v.revoke_until(&id(i), expiry(i));
        }
        v.revoke(&id(5000));
        assert_eq!(v.revoked_count(), 1001);
        // A day and a half later only those whose certificates could still be valid stay.
        let later = now + Duration::from_secs(86400 + 12 * 3600);
        v.prune_revocations(later);
        let left = v.revoked_count();
        assert!(left < 1001 && left > 1, "{left}");
        for i in 0..1000 {
            assert_eq!(
                v.is_revoked(&id(i)),
                expiry(i) + REVOCATION_SKEW > later,
                "n{i}"
            );
        }
        // Revoked for good stays, and is not shortened by a later expiry.
        v.revoke_until(&id(5000), now);
        v.prune_revocations(now + Duration::from_secs(10 * 86400));
        assert!(v.is_revoked(&id(5000)));
        assert_eq!(v.revoked_count(), 1);
    }
}
