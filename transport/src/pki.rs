//! Certificates until the Master's CA exists: a cluster CA and the leaf certificates it
//! issues, as PEM files (private keys written with mode 0600).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::identity::{validate_trust_domain, IdentityError, SpiffeId};

/// File names used in a CA directory and in a credentials directory.
pub mod files {
    /// The CA certificate (in both kinds of directory).
    pub const CA_CERT: &str = "ca.pem";
    /// The CA private key (CA directory only).
    pub const CA_KEY: &str = "ca-key.pem";
    /// A node or service certificate.
    pub const CERT: &str = "cert.pem";
    /// The private key of `cert.pem`.
    pub const KEY: &str = "key.pem";
}

/// Default lifetime of a cluster CA: ten years.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a leaf certificate: 24 hours.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);

/// Creating, reading or writing certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file did not hold what was expected.
    #[error("{path}: expected {expected}: {reason}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the file should hold.
        expected: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A certificate has no usable SPIFFE ID.
    #[error("{path}: the certificate has no spiffe:// URI subject alternative name")]
    NoSpiffeId {
        /// The file.
        path: PathBuf,
    },
    /// An identity was malformed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// An identity belongs to another trust domain than the CA's.
    #[error("identity {identity} is outside the CA's trust domain {trust_domain:?}")]
    ForeignTrustDomain {
        /// The identity asked for.
        identity: SpiffeId,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// A private key that other users of the host may read (group or other bits set).
    #[error("{path} has mode {mode:o}: a private key must be readable by its owner only (chmod 600 {path})")]
    KeyNotPrivate {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Refusing to overwrite existing files.
    #[error("{path} already exists; refusing to overwrite it (remove it or choose another --out)")]
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// A lifetime was out of range.
    #[error("invalid certificate lifetime: {0}")]
    BadLifetime(String),
    /// The system's random number generator failed.
    #[error("the system random number generator is not available")]
    Random,
    /// The certificate library failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A cluster certificate authority: its certificate, key and trust domain.
pub struct CertificateAuthority {
    trust_domain: String,
    /// The CA certificate exactly as distributed (the trust anchor).
    anchor_pem: String,
    anchor_der: CertificateDer<'static>,
    /// The issuer used for signing: same name and key as the anchor.
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A leaf certificate with its private key, ready to be written to a directory.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The identity in the certificate.
    pub identity: SpiffeId,
    /// PEM of the leaf certificate.
    pub cert_pem: String,
    /// PEM of the private key (PKCS#8).
    pub key_pem: String,
    /// PEM of the issuing CA certificate.
    pub ca_pem: String,
    /// Expiry.
    pub not_after: SystemTime,
}

fn to_offset(t: SystemTime) -> Result<OffsetDateTime, PkiError> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| PkiError::BadLifetime(e.to_string()))
}

fn rand_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    let mut out = [0u8; N];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut out)
        .map_err(|_| PkiError::Random)?;
    Ok(out)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path`, with mode 0600 when `private`; refuses to overwrite.
fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            PkiError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Refuses a key file that group or others may read or write.
fn private_only(path: &Path) -> Result<(), PkiError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(io_err(path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(PkiError::KeyNotPrivate {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let _ = path;
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(io_err(path))
}

impl CertificateAuthority {
    /// Creates a new CA for `trust_domain`, valid for `ttl`.
    pub fn generate(trust_domain: &str, ttl: Duration) -> Result<Self, PkiError> {
        validate_trust_domain(trust_domain)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // A random suffix keeps two CAs of one trust domain apart by name as well as by key.
        let tag: [u8; 6] = rand_bytes()?;
        let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        dn.push(
            DnType::CommonName,
            format!("actormesh CA {trust_domain} {tag}"),
        );
        dn.push(DnType::OrganizationName, "actormesh");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        let now = SystemTime::now();
        params.not_before = to_offset(now - Duration::from_secs(60))?;
        params.not_after = to_offset(now + ttl)?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            anchor_pem: cert.pem(),
            anchor_der: cert.der().clone(),
            cert,
            key,
        })
    }

    /// Loads a CA from a directory made by [`CertificateAuthority::save`]. Its key must be
    /// readable by its owner only.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_pem = read(&dir.join(files::CA_CERT))?;
        private_only(&dir.join(files::CA_KEY))?;
        let key_pem = read(&dir.join(files::CA_KEY))?;
        Self::from_pem_at(cert_pem, &key_pem, dir)
    }

    /// A CA from its certificate and key PEM (as kept in the master's state store).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        Self::from_pem_at(cert_pem.to_string(), key_pem, Path::new("<state store>"))
    }

    /// The CA private key as PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn from_pem_at(cert_pem: String, key_pem: &str, dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(files::CA_CERT);
        let key_path = dir.join(files::CA_KEY);
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadPem {
            path: key_path.clone(),
            expected: "a PKCS#8 private key",
            reason: e.to_string(),
        })?;
        let der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| PkiError::BadPem {
                path: cert_path.clone(),
                expected: "a CA certificate",
                reason: e.to_string(),
            })?;
        let uri = crate::x509::spiffe_uri_of(&der).ok_or(PkiError::NoSpiffeId {
            path: cert_path.clone(),
        })?;
        let trust_domain = uri
            .strip_prefix("spiffe://")
            .unwrap_or(&uri)
            .trim_end_matches('/')
            .to_string();
        validate_trust_domain(&trust_domain)?;
        let params =
            CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| PkiError::BadPem {
                path: cert_path.clone(),
                expected: "a CA certificate",
                reason: e.to_string(),
            })?;
        // Re-signing the parsed params gives an issuer with the same name and key, which is
        // all that signing leaves needs; the original PEM stays the trust anchor we hand out.
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain,
            anchor_pem: cert_pem,
            anchor_der: der.into_owned(),
            cert,
            key,
        })
    }

    /// Writes `ca.pem` and `ca-key.pem` (mode 0600) into `dir`, creating it.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_new(&dir.join(files::CA_CERT), &self.anchor_pem, false)?;
        write_new(&dir.join(files::CA_KEY), &self.key.serialize_pem(), true)
    }

    /// The trust domain this CA vouches for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.anchor_pem
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.anchor_der
    }

    /// Issues a certificate for `identity`, valid from now for `ttl`, with a new key.
    pub fn issue(&self, identity: &SpiffeId, ttl: Duration) -> Result<IssuedCert, PkiError> {
        let now = SystemTime::now();
        self.issue_between(identity, now - Duration::from_secs(60), now + ttl)
    }

    /// Issues a certificate valid between two instants (tests use this for expired certs).
    pub fn issue_between(
        &self,
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, PkiError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(PkiError::ForeignTrustDomain {
                identity: identity.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        self.issue_unchecked(identity, not_before, not_after)
    }

    /// Like [`CertificateAuthority::issue_between`] without the trust-domain check. Only
    /// tests that prove the handshake refuses such certificates need this.
    #[doc(hidden)]
    pub fn issue_unchecked(
        &self,
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, PkiError> {
        if not_after <= not_before {
            return Err(PkiError::BadLifetime(
                "not_after must be later than not_before".into(),
            ));
        }
        let key = KeyPair::generate()?;
        let cert =
            leaf_params(identity, not_before, not_after)?.signed_by(&key, &self.cert, &self.key)?;
        Ok(IssuedCert {
            identity: identity.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.anchor_pem.clone(),
            not_after,
        })
    }
}

/// The parameters of every leaf actormesh issues: the SPIFFE ID as the only SAN, usable
/// for both ends of a mutual-TLS link.
fn leaf_params(
    identity: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.path().trim_start_matches('/'));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = to_offset(not_before)?;
    params.not_after = to_offset(not_after)?;
    Ok(params)
}

impl CertificateAuthority {
    /// Signs a certificate for `identity` over the public key of a PEM certificate signing
    /// request. The CSR's signature proves the requester holds the private key, which never
    /// leaves it. Only the key is taken from the CSR: the identity, usages and lifetime are
    /// the CA's decision, whatever the CSR asks for.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<String, PkiError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(PkiError::ForeignTrustDomain {
                identity: identity.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::BadPem {
                path: PathBuf::from("<certificate signing request>"),
                expected: "a PEM certificate signing request with a valid signature",
                reason: e.to_string(),
            }
        })?;
        let now = SystemTime::now();
        let params = leaf_params(identity, now - Duration::from_secs(60), now + ttl)?;
        let cert = params.signed_by(&csr.public_key, &self.cert, &self.key)?;
        Ok(cert.pem())
    }

    /// A certificate for `next`'s name and key signed by this CA: a leaf `next` signs,
    /// presented with it, verifies for a peer that trusts only this CA (a rotation's
    /// bridge).
    pub fn cross_sign(&self, next: &CertificateAuthority) -> Result<String, PkiError> {
        let params =
            CertificateParams::from_ca_cert_pem(next.cert_pem()).map_err(|e| PkiError::BadPem {
                path: PathBuf::from("<new CA>"),
                expected: "a CA certificate",
                reason: e.to_string(),
            })?;
        Ok(params.signed_by(&next.key, &self.cert, &self.key)?.pem())
    }

    /// The SHA-256 fingerprint of the CA certificate, as lowercase hex: what join tokens
    /// pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.anchor_der)
    }
}

pub use crate::x509::fingerprint;

/// A private key made where it will be used, and the signing request that carries its
/// public half to the CA.
pub struct NodeKey {
    key: KeyPair,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

impl NodeKey {
    /// A new ECDSA P-256 key.
    pub fn generate() -> Result<Self, PkiError> {
        Ok(Self {
            key: KeyPair::generate()?,
        })
    }

    /// Loads a key written by [`NodeKey::pem`].
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        Ok(Self {
            key: KeyPair::from_pem(pem).map_err(|e| PkiError::BadPem {
                path: PathBuf::from(files::KEY),
                expected: "a PKCS#8 private key",
                reason: e.to_string(),
            })?,
        })
    }

    /// A PEM signing request for `identity`, signed with this key.
    pub fn csr(&self, identity: &SpiffeId) -> Result<String, PkiError> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
        Ok(params.serialize_request(&self.key)?.pem()?)
    }

    /// The private key as PEM (to be written with mode 0600).
    pub fn pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Credentials from this key and a certificate the CA issued for it.
    pub fn credentials(&self, cert_pem: &str, ca_pem: &str) -> Result<Credentials, PkiError> {
        Credentials::from_pem(cert_pem, &self.pem(), ca_pem, Path::new("<issued>"))
    }
}

impl IssuedCert {
    /// Writes `cert.pem`, `key.pem` (mode 0600) and `ca.pem` into `dir`, creating it.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_new(&dir.join(files::CERT), &self.cert_pem, false)?;
        write_new(&dir.join(files::KEY), &self.key_pem, true)?;
        write_new(&dir.join(files::CA_CERT), &self.ca_pem, false)
    }

    /// The credentials a node presents, parsed from the PEM held here.
    pub fn credentials(&self) -> Result<Credentials, PkiError> {
        Credentials::from_pem(
            &self.cert_pem,
            &self.key_pem,
            &self.ca_pem,
            Path::new("<memory>"),
        )
    }
}

/// What a node needs for mutual TLS: its certificate chain and key, and the CAs it trusts.
#[derive(Debug)]
pub struct Credentials {
    /// Leaf first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the leaf.
    pub key: PrivateKeyDer<'static>,
    /// The trust bundle: the cluster CA, or during a CA rotation the old and the new one
    /// (`ca.pem` holds them one after the other).
    pub trust: Vec<CertificateDer<'static>>,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            trust: self.trust.clone(),
        }
    }
}

impl Credentials {
    /// Reads `cert.pem`, `key.pem` and `ca.pem` from `dir` (as written by `actormesh ca issue`).
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert = read(&dir.join(files::CERT))?;
        let key = read(&dir.join(files::KEY))?;
        let ca = read(&dir.join(files::CA_CERT))?;
        Self::from_pem(&cert, &key, &ca, dir)
    }

    /// Parses credentials from PEM text; `origin` names where they came from in errors.
    pub fn from_pem(cert: &str, key: &str, ca: &str, origin: &Path) -> Result<Self, PkiError> {
        let bad = |file: &str, expected, reason: String| PkiError::BadPem {
            path: origin.join(file),
            expected,
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(files::CERT, "one or more certificates", e.to_string()))?;
        if chain.is_empty() {
            return Err(bad(
                files::CERT,
                "one or more certificates",
                "no CERTIFICATE block".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| bad(files::KEY, "a private key", e.to_string()))?;
        let trust = crate::trust::parse_bundle(ca).map_err(|reason| PkiError::BadPem {
            path: origin.join(files::CA_CERT),
            expected: "one or more CA certificates",
            reason,
        })?;
        if crate::x509::spiffe_uri_of(&chain[0]).is_none() {
            return Err(PkiError::NoSpiffeId {
                path: origin.join(files::CERT),
            });
        }
        Ok(Self { chain, key, trust })
    }

    /// The SPIFFE ID in the leaf certificate.
    pub fn identity(&self) -> Result<SpiffeId, PkiError> {
        let uri = crate::x509::spiffe_uri_of(&self.chain[0]).ok_or(PkiError::NoSpiffeId {
            path: PathBuf::from(files::CERT),
        })?;
        Ok(SpiffeId::parse(&uri)?)
    }

    /// When the leaf certificate expires.
    pub fn not_after(&self) -> Option<SystemTime> {
        crate::x509::not_after_of(&self.chain[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_round_trips_through_files_and_keys_are_private() {
        let dir = std::env::temp_dir().join(format!("am-pki-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let ca = CertificateAuthority::generate("test.local", DEFAULT_CA_TTL).unwrap();
        ca.save(&dir.join("ca")).unwrap();
        let loaded = CertificateAuthority::load(&dir.join("ca")).unwrap();
        assert_eq!(loaded.trust_domain(), "test.local");
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let id = SpiffeId::node("test.local", "n1").unwrap();
        let leaf = loaded.issue(&id, DEFAULT_LEAF_TTL).unwrap();
        leaf.save(&dir.join("n1")).unwrap();
        let creds = Credentials::load(&dir.join("n1")).unwrap();
        assert_eq!(creds.identity().unwrap(), id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [
                dir.join("ca").join(files::CA_KEY),
                dir.join("n1").join(files::KEY),
            ] {
                assert_eq!(
                    fs::metadata(&f).unwrap().permissions().mode() & 0o777,
                    0o600
                );
            }
        }
        assert!(matches!(
            ca.save(&dir.join("ca")),
            Err(PkiError::Exists { .. })
        ));
        // A CA key that others could read is refused, saying how to fix it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.join("ca").join(files::CA_KEY);
            fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
            let e = CertificateAuthority::load(&dir.join("ca")).unwrap_err();
            assert!(
                matches!(e, PkiError::KeyNotPrivate { mode: 0o640, .. }),
                "{e}"
            );
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn csr_signing_takes_only_the_key_and_the_key_stays_with_the_node() {
        let ca = CertificateAuthority::generate("a.local", DEFAULT_CA_TTL).unwrap();
        let node = NodeKey::generate().unwrap();
        // The CSR asks for an identity; the CA decides another one.
        let asked = SpiffeId::node("a.local", "wants-to-be-master").unwrap();
        let given = SpiffeId::node("a.local", "n7").unwrap();
        let csr = node.csr(&asked).unwrap();
        let cert = ca.sign_csr(&csr, &given, Duration::from_secs(600)).unwrap();
        let creds = node.credentials(&cert, ca.cert_pem()).unwrap();
        assert_eq!(creds.identity().unwrap(), given);
        assert!(matches!(
            ca.sign_csr("not a csr", &given, Duration::from_secs(1)),
            Err(PkiError::BadPem { .. })
        ));
        let foreign = SpiffeId::node("b.local", "n1").unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, &foreign, Duration::from_secs(1)),
            Err(PkiError::ForeignTrustDomain { .. })
        ));
        assert_eq!(ca.fingerprint().len(), 64);
        assert_eq!(ca.fingerprint(), fingerprint(ca.cert_der()));
    }

    #[test]
    fn refuses_identity_of_another_trust_domain() {
        let ca = CertificateAuthority::generate("a.local", DEFAULT_CA_TTL).unwrap();
        let other = SpiffeId::node("b.local", "n1").unwrap();
        assert!(matches!(
            ca.issue(&other, DEFAULT_LEAF_TTL),
            Err(PkiError::ForeignTrustDomain { .. })
        ));
    }
}
