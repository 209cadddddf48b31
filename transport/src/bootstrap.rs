//! Joining before a node has a certificate.
//!
//! The master listens on a separate bootstrap port that authenticates only the server:
//! a joining node has no certificate yet. The node does not trust the master on its word
//! either: it knows the SHA-256 fingerprint of the cluster CA (from its join token), finds
//! the certificate with that fingerprint in the chain the master presents, and verifies the
//! master's certificate against it. One request and one reply travel on one stream; the
//! mesh endpoint never relaxes mutual TLS.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};

use crate::endpoint::map_connection_error;
use crate::error::TransportError;
use crate::frame::{push_frame, FrameReader};
use crate::pki::{fingerprint, Credentials};
use crate::tls::{provider, CertStore};

/// ALPN of the bootstrap protocol.
pub const ALPN_JOIN: &[u8] = b"actormesh-join";
/// Largest bootstrap request or reply.
const MAX_FRAME: usize = 64 * 1024;
/// Bootstrap connections served at once.
const MAX_CONCURRENT: usize = 64;

/// Accepts a server whose chain contains the CA with the pinned fingerprint and whose
/// certificate chains to that CA (directly, or through a bridge the old CA signed for the
/// new one during a rotation). Remembers the trust bundle it found: the pinned CA first,
/// then the other CA certificates the server lists (covered by the handshake's signature,
/// so as authentic as the reply).
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    algs: WebPkiSupportedAlgorithms,
    found: Mutex<Option<Vec<CertificateDer<'static>>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.fingerprint)
            .ok_or(TlsError::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        // Any member holds a certificate from this CA; only the master may answer here.
        let is_master = crate::tls::spiffe_uri_of(end_entity)
            .and_then(|u| crate::identity::SpiffeId::parse(&u).ok())
            .is_some_and(|id| id.is_master());
        if !is_master {
            return Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        let mut bundle = vec![ca.clone().into_owned()];
        bundle.extend(
            intermediates
                .iter()
                .filter(|c| fingerprint(c) != self.fingerprint && crate::trust::is_root(c))
                .map(|c| c.clone().into_owned()),
        );
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(bundle);
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

fn tls_err(e: TlsError) -> TransportError {
    TransportError::Config(format!("bootstrap TLS: {e}"))
}

/// The master's bootstrap listener: hands each request to `handle` and sends back what it
/// returns.
pub struct BootstrapServer {
    endpoint: quinn::Endpoint,
    certs: Arc<CertStore>,
    /// What answers the requests (replaceable: a standby master hands its port to the
    /// master it becomes).
    handler: Arc<std::sync::RwLock<Handler>>,
    /// Set on [`BootstrapServer::close`]: requests under way drop their connections.
    closing: tokio::sync::watch::Sender<bool>,
}

/// What the bootstrap port presents: the chain, then every CA of the trust bundle (so a
/// joining node finds the CA it pinned, and learns the whole bundle).
fn presented(credentials: &Credentials) -> Credentials {
    let mut creds = credentials.clone();
    for ca in &credentials.trust {
        if !creds.chain.contains(ca) {
            creds.chain.push(ca.clone());
        }
    }
    creds
}

impl std::fmt::Debug for BootstrapServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapServer")
            .field("addr", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// A bootstrap request's handler, boxed.
type Handler = Arc<
    dyn Fn(
            Vec<u8>,
            SocketAddr,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>>
        + Send
        + Sync,
>;

fn boxed<F, Fut>(handle: F) -> Handler
where
    F: Fn(Vec<u8>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + Send + 'static,
{
    Arc::new(move |body, from| Box::pin(handle(body, from)))
}

impl BootstrapServer {
    /// Listens on `addr`, presenting `credentials` with the CA certificates of their trust
    /// bundle appended to the chain (so joining nodes can find the CA they pinned).
    pub fn bind<F, Fut>(
        addr: SocketAddr,
        credentials: &Credentials,
        handle: F,
    ) -> Result<Self, TransportError>
    where
        F: Fn(Vec<u8>, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<u8>> + Send + 'static,
    {
        let certs = CertStore::new(&presented(credentials))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        tls.alpn_protocols = vec![ALPN_JOIN.to_vec()];
        tls.max_early_data_size = 0;
        tls.send_tls13_tickets = 0;
        let crypto = QuicServerConfig::try_from(tls)
            .map_err(|e| TransportError::Config(format!("bootstrap QUIC TLS: {e}")))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_uni_streams(0u8.into());
        transport.max_concurrent_bidi_streams(1u8.into());
        config.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::server(config, addr)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let handler = Arc::new(std::sync::RwLock::new(boxed(handle)));
        let handlers = handler.clone();
        let ep = endpoint.clone();
        // Unauthenticated callers: at most this many handshakes and requests at once; more
        // are refused at once instead of piling up.
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
        let (closing, closed) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    incoming.refuse();
                    continue;
                };
                let handle = handlers.read().unwrap_or_else(|p| p.into_inner()).clone();
                let mut closed = closed.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let remote = incoming.remote_address();
                    let work = async {
                        let conn = incoming.await.ok()?;
                        let (mut send, recv) = conn.accept_bi().await.ok()?;
                        let mut reader = FrameReader::new(recv, MAX_FRAME);
                        let request = reader.next().await.ok()??;
                        let reply = handle(request.to_vec(), remote).await;
                        let mut out = Vec::new();
                        push_frame(&mut out, &reply, MAX_FRAME).ok()?;
                        send.write_all(&out).await.ok()?;
                        send.finish().ok()?;
                        let _ = send.stopped().await;
                        Some(())
                    };
                    // A connection holds the endpoint's socket: on close, the request
                    // (a forwarded one may wait on another master) is dropped at once.
                    tokio::select! {
                        _ = tokio::time::timeout(Duration::from_secs(10), work) => {}
                        _ = closed.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Ok(Self {
            endpoint,
            certs,
            handler,
            closing,
        })
    }

    /// Answers with `handle` from the next request on (those under way finish with the
    /// handler they began with).
    pub fn replace_handler<F, Fut>(&self, handle: F)
    where
        F: Fn(Vec<u8>, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<u8>> + Send + 'static,
    {
        *self.handler.write().unwrap_or_else(|p| p.into_inner()) = boxed(handle);
    }

    /// Presents `credentials` (and their trust bundle) from the next request on: the
    /// master's renewed certificate, or its bundle during a CA rotation.
    pub fn replace_credentials(&self, credentials: &Credentials) -> Result<(), TransportError> {
        self.certs.replace(&presented(credentials))
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.endpoint
            .local_addr()
            .map_err(|e| TransportError::Config(e.to_string()))
    }

    /// Stops listening: requests under way are cut, and once every handle of the endpoint
    /// is gone (a moment after this returns) its port is free to bind again.
    pub async fn close(self) {
        self.shut();
        self.endpoint.wait_idle().await;
    }

    /// [`BootstrapServer::close`] without waiting for the connections to end.
    pub fn shut(&self) {
        self.closing.send_replace(true);
        self.endpoint.close(0u32.into(), b"closing");
    }
}

/// A refusal of the join protocol (TLS alert 120, no application protocol in common) means
/// an actormesh QUIC port of another kind: most likely a mesh port.
fn not_a_bootstrap_port(addr: SocketAddr, e: TransportError) -> TransportError {
    match e {
        TransportError::HandshakeRefused {
            refusal: crate::error::Refusal::NoCommonProtocol,
            ..
        } => TransportError::NotABootstrapPort {
            addr,
            found: "it is an actormesh QUIC port that does not speak the join protocol, most likely a mesh port (the master's --listen or a node's); join through the master's --bootstrap address (`actormesh dev` prints it)".into(),
        },
        e => e,
    }
}

/// Resolves only if nothing listens on UDP `addr`: a connected UDP socket learns of an
/// ICMP port-unreachable as `ConnectionRefused`. Then says what answers on TCP there, if
/// anything (the operator API is HTTP). Pends forever when the port takes datagrams.
async fn nothing_on_udp(addr: SocketAddr) -> TransportError {
    let refused = async {
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
        socket.connect(addr).await.ok()?;
        let mut buf = [0u8; 64];
        // A datagram too short for QUIC: a QUIC server drops it. ICMP replies can be
        // rate-limited, so a few tries.
        for _ in 0..3 {
            if let Err(e) = socket.send(&[0]).await {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    return Some(());
                }
            }
            match tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buf)).await {
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Some(()),
                _ => {}
            }
        }
        None
    };
    if refused.await.is_none() {
        return std::future::pending().await;
    }
    if answers_http(addr).await {
        return TransportError::NotABootstrapPort {
            addr,
            found: "it answers HTTP on TCP and nothing listens on UDP, so it looks like the master's operator API (--api); join through its --bootstrap address (`actormesh dev` prints it)".into(),
        };
    }
    TransportError::Unreachable {
        addr,
        reason: "nothing listens on this UDP port (it refused the datagram); is the master running, and is this its --bootstrap address?".into(),
    }
}

/// Whether `addr` takes a TCP connection and answers a request with an HTTP status line.
async fn answers_http(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.ok()?;
        Some(&head == b"HTTP/")
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Sends one request to a bootstrap server whose CA has `ca_fingerprint`; returns the
/// reply and the trust bundle found in the server's chain (the pinned CA first).
pub async fn request(
    addr: SocketAddr,
    ca_fingerprint: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), TransportError> {
    let verifier = Arc::new(PinnedCa {
        fingerprint: ca_fingerprint.to_string(),
        algs: provider().signature_verification_algorithms,
        found: Mutex::new(None),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_JOIN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::Config(format!("bootstrap QUIC TLS: {e}")))?;
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|_| TransportError::Config("bind address".into()))?;
    let endpoint = quinn::Endpoint::client(bind)
        .map_err(|source| TransportError::Bind { addr: bind, source })?;
    let work = async {
        let conn = endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(crypto)),
                addr,
                "actormesh-join",
            )
            .map_err(|e| TransportError::Unreachable {
                addr,
                reason: e.to_string(),
            })?
            .await
            .map_err(|e| map_connection_error(addr, &e))?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| map_connection_error(addr, &e))?;
        let mut out = Vec::new();
        push_frame(&mut out, body, MAX_FRAME)?;
        send.write_all(&out)
            .await
            .map_err(|e| TransportError::ConnectionLost {
                addr,
                reason: e.to_string(),
            })?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv, MAX_FRAME);
        let reply = reader
            .next()
            .await?
            .ok_or_else(|| TransportError::Protocol {
                addr,
                reason: "the bootstrap server closed without replying".into(),
            })?;
        conn.close(0u8.into(), b"done");
        Ok::<_, TransportError>(reply.to_vec())
    };
    let work = async {
        // A port that refuses datagrams (ICMP port unreachable) fails at once, not after
        // the timeout, and says what does answer there.
        tokio::select! {
            r = work => r,
            refused = nothing_on_udp(addr) => Err(refused),
        }
    };
    let reply = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return Err(not_a_bootstrap_port(addr, e)),
        Err(_) => {
            return Err(TransportError::Unreachable {
                addr,
                reason: format!("no bootstrap reply within {timeout:?}"),
            })
        }
    };
    let ca = verifier
        .found
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| TransportError::Protocol {
            addr,
            reason: "the server's chain was not verified".into(),
        })?;
    Ok((reply, ca))
}
