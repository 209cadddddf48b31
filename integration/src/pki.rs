//! A throwaway cluster CA in a temporary directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use actormesh::transport::pki::{CertificateAuthority, Credentials, IssuedCert};
use actormesh::transport::SpiffeId;

/// A CA and the directory holding everything issued from it; removed on drop.
#[derive(Debug)]
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: CertificateAuthority,
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl TestPki {
    pub fn new(trust_domain: &str) -> Self {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("actormesh-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca =
            CertificateAuthority::generate(trust_domain, Duration::from_secs(86400)).expect("CA");
        ca.save(&dir.join("ca")).expect("save CA");
        Self { dir, ca }
    }

    pub fn id(&self, node: &str) -> SpiffeId {
        SpiffeId::node(self.ca.trust_domain(), node).expect("node id")
    }

    /// Issues a 1-hour certificate for `node`, writes it under `dir/<node>`, returns both.
    pub fn node(&self, node: &str) -> (PathBuf, Credentials) {
        let cert = self
            .ca
            .issue(&self.id(node), Duration::from_secs(3600))
            .expect("issue");
        self.save(node, &cert)
    }

    pub fn save(&self, name: &str, cert: &IssuedCert) -> (PathBuf, Credentials) {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        cert.save(&d).expect("save cert");
        (d.clone(), Credentials::load(&d).expect("load creds"))
    }

    /// A certificate for `node` valid only between the two instants.
    pub fn node_between(&self, node: &str, from: SystemTime, to: SystemTime) -> Credentials {
        self.ca
            .issue_between(&self.id(node), from, to)
            .expect("issue")
            .credentials()
            .expect("creds")
    }

    pub fn ca_dir(&self) -> &Path {
        &self.dir
    }

    /// A plain quinn client that trusts this CA and presents `creds` (or no certificate),
    /// for tests that speak to a node below the actormesh API.
    pub fn raw_client_config(&self, creds: Option<&Credentials>) -> quinn::ClientConfig {
        use actormesh::transport::tls;
        let verifier = tls::SpiffeVerifier::new(
            std::slice::from_ref(self.ca.cert_der()),
            self.ca.trust_domain(),
        )
        .expect("verifier");
        let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match creds {
            Some(c) => builder
                .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![tls::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).expect("QUIC TLS");
        quinn::ClientConfig::new(std::sync::Arc::new(crypto))
    }

    /// Connects a plain quinn client (see [`TestPki::raw_client_config`]) to `addr`.
    pub async fn raw_connect(
        &self,
        creds: Option<&Credentials>,
        addr: std::net::SocketAddr,
    ) -> Result<quinn::Connection, quinn::ConnectionError> {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("address"))
            .expect("client endpoint");
        ep.connect_with(self.raw_client_config(creds), addr, "actormesh")
            .expect("connect")
            .await
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
