//! The QUIC endpoint: mutual-TLS links to peers, one link per pair of nodes.
//!
//! A link is a QUIC connection whose first bidirectional stream (the control stream)
//! carries a `Hello` exchange: protocol version, the dialer's listen address and its
//! incarnation (a random number per process start). The acceptor decides whether the new
//! link is kept, by the rules in [`admit`], so that two nodes that dial each other at the
//! same moment keep exactly one connection, chosen the same way on both sides.
//!
//! Built as quinn is: the rules live in plain state (`peers`: dial state, backoff,
//! duplicate links, address claims), the [`Endpoint`] handle and its driver tasks do the I/O.
//!
//! - `config`: [`EndpointConfig`] and the QUIC transport settings it implies.
//! - `link`: [`Link`], [`LinkInfo`], [`NewLink`].
//! - `handshake`: the Hello exchange, dialing and accepting.
//! - `driver`: the accept loop, installing, retiring and cycling links.
//! - `connection_error`: quinn errors and TLS alerts as typed errors.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::VarInt;
use tokio::sync::{mpsc, Notify};
use tracing::info;

use crate::error::{Refusal, TransportError};
use crate::identity::SpiffeId;
use crate::pki::Credentials;
use crate::tls::{rustls_configs, CertStore, SpiffeVerifier};

mod config;
mod connection_error;
mod driver;
mod handshake;
mod link;
mod peers;

pub use config::{transport_config, EndpointConfig};
pub use connection_error::map_connection_error;
pub use link::{Link, LinkInfo, NewLink};
pub use peers::{admit, Admission, Existing};

use handshake::{dial, DialError};
use peers::{LinkStep, PeerBook};

/// The actormesh wire protocol version spoken by this build. A node also speaks the one
/// before (see [`EndpointConfig::protocol_version`]): version 1 links carry the frames of
/// the first release exactly; version 2 adds the call metadata block.
pub const PROTOCOL_VERSION: u32 = 2;

/// Application close codes on links.
pub mod close_code {
    /// Closed normally (shutdown).
    pub const NORMAL: u32 = 0;
    /// Replaced by another link to the same peer.
    pub const REPLACED: u32 = 1;
    /// Refused as a duplicate of an existing link.
    pub const DUPLICATE: u32 = 2;
    /// Protocol version mismatch.
    pub const VERSION: u32 = 3;
    /// The peer broke the protocol.
    pub const PROTOCOL: u32 = 4;
    /// The peer's identity was revoked.
    pub const REVOKED: u32 = 5;
    /// The peer's certificate no longer chains to a CA of the trust bundle.
    pub const UNTRUSTED: u32 = 6;
}

/// Stream priority of control streams: served before any user lane.
pub const PRIORITY_CONTROL: i32 = 100;

/// What the endpoint handle and its driver tasks share.
#[derive(Debug)]
struct Inner {
    quinn: quinn::Endpoint,
    certs: Arc<CertStore>,
    verifier: Arc<SpiffeVerifier>,
    client_config: quinn::ClientConfig,
    config: EndpointConfig,
    local_addr: SocketAddr,
    incarnation: u64,
    /// The dial state; its decisions are carried out under this lock.
    peers: Mutex<PeerBook<Link>>,
    /// Woken whenever the book changes (a dial ended, a link was installed).
    changed: Notify,
    links_tx: mpsc::UnboundedSender<NewLink>,
    next_link_id: AtomicU64,
    refusals: Mutex<Vec<(SocketAddr, Refusal)>>,
    refusal_events: tokio::sync::broadcast::Sender<(SocketAddr, Refusal)>,
}

/// A QUIC endpoint with mutual TLS that keeps one link per peer.
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl Endpoint {
    /// Binds an endpoint presenting `credentials` and trusting their CA for the trust domain
    /// of their identity. Must be called inside a tokio runtime.
    ///
    /// Returns the endpoint and the stream of links as they are established (dialed or
    /// accepted); the layer above serves each one.
    pub fn bind(
        config: EndpointConfig,
        credentials: &Credentials,
    ) -> Result<(Endpoint, mpsc::UnboundedReceiver<NewLink>), TransportError> {
        config.validate()?;
        let certs = CertStore::new(credentials)?;
        let identity = certs.current().identity.clone();
        let verifier = SpiffeVerifier::new(&credentials.trust, identity.trust_domain())?;
        let (server_tls, client_tls) = rustls_configs(certs.clone(), verifier.clone())?;
        let transport = Arc::new(transport_config(&config)?);
        let server_crypto = QuicServerConfig::try_from(server_tls)
            .map_err(|e| TransportError::Config(format!("QUIC server TLS: {e}")))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport.clone());
        let client_crypto = QuicClientConfig::try_from(client_tls)
            .map_err(|e| TransportError::Config(format!("QUIC client TLS: {e}")))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);
        let quinn = quinn::Endpoint::server(server_config, config.listen).map_err(|source| {
            TransportError::Bind {
                addr: config.listen,
                source,
            }
        })?;
        let local_addr = quinn.local_addr().map_err(|source| TransportError::Bind {
            addr: config.listen,
            source,
        })?;
        let (links_tx, links_rx) = mpsc::unbounded_channel();
        let peers = Mutex::new(PeerBook::new(config.dial_backoff()));
        let inner = Arc::new(Inner {
            quinn,
            certs,
            verifier,
            client_config,
            config,
            local_addr,
            incarnation: rand_u64(),
            peers,
            changed: Notify::new(),
            links_tx,
            next_link_id: AtomicU64::new(1),
            refusals: Mutex::new(Vec::new()),
            refusal_events: tokio::sync::broadcast::channel(64).0,
        });
        tokio::spawn(driver::accept_loop(
            Arc::downgrade(&inner),
            inner.quinn.clone(),
        ));
        info!(addr = %local_addr, identity = %identity, "endpoint listening");
        Ok((Endpoint { inner }, links_rx))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This endpoint's identity.
    pub fn identity(&self) -> SpiffeId {
        self.inner.certs.current().identity.clone()
    }

    /// The accepted trust domain.
    pub fn trust_domain(&self) -> &str {
        self.inner.verifier.trust_domain()
    }

    /// The configuration in force.
    pub fn config(&self) -> &EndpointConfig {
        &self.inner.config
    }

    /// Random per process start; peers use it to tell a restart from a duplicate.
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// Presents `credentials` in every handshake from now on. Links made with the old
    /// certificate are cycled before it expires.
    pub fn replace_credentials(&self, credentials: &Credentials) -> Result<(), TransportError> {
        self.inner.certs.replace(credentials)
    }

    /// Trusts `bundle` (CA certificates) from the next handshake on: a CA rotation adds
    /// the new CA, then drops the old one. Links whose peer's certificate does not chain to
    /// `bundle` are closed, so a dropped CA is refused on open links too; returns how many.
    pub fn replace_trust(
        &self,
        bundle: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<usize, TransportError> {
        self.inner.verifier.set_trust(bundle)?;
        let links = lock(&self.inner.peers).all_links();
        let mut closed = 0;
        for l in links {
            let chain = l.connection().peer_identity().and_then(|any| {
                any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            });
            if chain.is_some_and(|c| !self.inner.verifier.accepts(&c)) {
                l.close(close_code::UNTRUSTED, "its CA is no longer trusted");
                closed += 1;
            }
        }
        Ok(closed)
    }

    /// The certificate chain presented now, leaf first.
    pub fn certificate_chain(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        self.inner.certs.current().certified.cert.clone()
    }

    /// The CA certificates trusted now.
    pub fn trust(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        self.inner.verifier.trust()
    }

    /// Handshakes this endpoint refused recently (newest last, at most 64).
    pub fn recent_refusals(&self) -> Vec<(SocketAddr, Refusal)> {
        lock(&self.inner.refusals).clone()
    }

    /// Refuses `id` from now on (a removed node): its handshakes fail as revoked and its
    /// current links are closed.
    pub fn revoke(&self, id: &SpiffeId) {
        self.inner.verifier.revoke(id);
        let links = lock(&self.inner.peers).links_of(id);
        for l in links {
            l.close(close_code::REVOKED, "identity revoked");
        }
    }

    /// The listen addresses of the live links to `id`: where that identity's node is, as
    /// its verified links say.
    pub fn addresses_of(&self, id: &SpiffeId) -> Vec<SocketAddr> {
        lock(&self.inner.peers)
            .links_of(id)
            .iter()
            .map(|l| l.info().peer_addr)
            .collect()
    }

    /// Refuses `id` until the last certificate issued to it has expired (see
    /// [`crate::tls::SpiffeVerifier::revoke_until`]), and closes its current links.
    pub fn revoke_until(&self, id: &SpiffeId, cert_expiry: std::time::SystemTime) {
        self.inner.verifier.revoke_until(id, cert_expiry);
        let links = lock(&self.inner.peers).links_of(id);
        for l in links {
            l.close(close_code::REVOKED, "identity revoked");
        }
    }

    /// Forgets revocations whose certificates have expired by `now`; returns how many.
    pub fn prune_revocations(&self, now: std::time::SystemTime) -> usize {
        self.inner.verifier.prune_revocations(now)
    }

    /// Handshakes this endpoint refuses from now on, as they happen.
    pub fn subscribe_refusals(&self) -> tokio::sync::broadcast::Receiver<(SocketAddr, Refusal)> {
        self.inner.refusal_events.subscribe()
    }

    /// The live link to `addr`, if there is one. Never dials.
    pub fn existing_link(&self, addr: SocketAddr) -> Option<Link> {
        lock(&self.inner.peers).live_link(addr)
    }

    /// The link to the peer listening on `addr`: the existing one, or a new dial.
    ///
    /// Dials back off exponentially after failures (capped at `backoff_max`); a call made
    /// while backing off fails at once with the last error, so callers are never stuck.
    pub async fn link(&self, addr: SocketAddr) -> Result<Link, TransportError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.config.handshake_timeout * 2;
        loop {
            let wait = {
                let mut peers = lock(&inner.peers);
                match peers.next_step(addr, Instant::now()) {
                    LinkStep::Ready(link) => return Ok(link),
                    // Made under the lock, so the wake-up of the dial's end cannot be missed.
                    LinkStep::AwaitDial => Some(inner.changed.notified()),
                    LinkStep::BackingOff {
                        last_error,
                        retry_in,
                    } => {
                        // A refusal stays typed: the caller learns why, e.g. that its
                        // identity was revoked.
                        if let Some((by, refusal)) =
                            last_error.as_ref().and_then(|f| f.refused.clone())
                        {
                            return Err(TransportError::HandshakeRefused { addr, by, refusal });
                        }
                        return Err(TransportError::Unreachable {
                            addr,
                            reason: format!(
                                "{} (next dial in {} ms)",
                                last_error
                                    .as_ref()
                                    .map_or("earlier dial failed", |f| f.text.as_str()),
                                retry_in.as_millis()
                            ),
                        });
                    }
                    LinkStep::Dial => None,
                }
            };
            if let Some(notified) = wait {
                if tokio::time::timeout_at(deadline.into(), notified)
                    .await
                    .is_err()
                {
                    return Err(TransportError::Unreachable {
                        addr,
                        reason: "timed out waiting for a link".into(),
                    });
                }
                continue;
            }
            // If this future is dropped mid-dial, the guard clears `dialing` so that later
            // calls dial again instead of waiting for a dial that no one drives.
            let guard = DialingGuard {
                inner,
                addr,
                armed: true,
            };
            let result = dial(inner, addr, false).await;
            let mut guard = guard;
            guard.armed = false;
            let outcome = {
                let mut peers = lock(&inner.peers);
                let now = Instant::now();
                match result {
                    Ok(new) => {
                        let link = new.link.clone();
                        let replaced = peers.dial_succeeded(addr, link.clone(), now);
                        driver::take_into_service(inner, replaced, new);
                        Ok(Some(link))
                    }
                    Err(DialError::Duplicate) => {
                        peers.dial_refused_as_duplicate(addr, now);
                        Ok(None)
                    }
                    Err(DialError::Failed(e)) => {
                        peers.dial_failed(addr, peers::DialFailure::from(&e), now);
                        Err(e)
                    }
                }
            };
            inner.changed.notify_waiters();
            match outcome {
                Ok(Some(link)) => return Ok(link),
                Ok(None) => {
                    // The peer keeps its own dial to us; it arrives as an incoming link.
                    let notified = inner.changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if self.existing_link(addr).is_none()
                        && tokio::time::timeout_at(deadline.into(), notified)
                            .await
                            .is_err()
                    {
                        return Err(TransportError::Unreachable {
                            addr,
                            reason: "peer refused our dial as a duplicate but its own link never arrived".into(),
                        });
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes every link and the socket.
    pub fn shutdown(&self) {
        self.inner
            .quinn
            .close(VarInt::from_u32(close_code::NORMAL), b"shutdown");
    }
}

struct DialingGuard<'a> {
    inner: &'a Arc<Inner>,
    addr: SocketAddr,
    armed: bool,
}

impl Drop for DialingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.inner.peers).dial_abandoned(self.addr);
            self.inner.changed.notify_waiters();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; mixing in the time and pid makes the incarnation
    // differ across restarts even if the seed source were weak.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}
