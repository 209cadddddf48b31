//! The QUIC endpoint: mutual-TLS links to peers, one link per pair of nodes.
//!
//! A link is a QUIC connection whose first bidirectional stream (the control stream)
//! carries a `Hello` exchange: protocol version, the dialer's listen address and its
//! incarnation (a random number per process start). The acceptor decides whether the new
//! link is kept, by the rules in [`admit`], so that two nodes that dial each other at the
//! same moment keep exactly one connection, chosen the same way on both sides.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, RecvStream, SendStream, VarInt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::codec;
use crate::error::{Refusal, RefusedBy, TransportError};
use crate::frame::{push_frame, FrameReader, DEFAULT_MAX_FRAME, MAX_FRAME_LIMIT};
use crate::identity::SpiffeId;
use crate::pki::Credentials;
use crate::tls::{not_after_of, rustls_configs, spiffe_uri_of, CertStore, SpiffeVerifier};

/// The actormesh wire protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;

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
}

/// Settings of an [`Endpoint`].
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// UDP address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Largest frame accepted on any stream.
    pub max_frame: usize,
    /// A link with no traffic at all for this long is dead.
    pub idle_timeout: Duration,
    /// Keep-alive interval; must be shorter than `idle_timeout`.
    pub keep_alive: Duration,
    /// Limit on TLS handshake plus `Hello` exchange.
    pub handshake_timeout: Duration,
    /// First delay after a failed dial.
    pub backoff_initial: Duration,
    /// Cap of the exponential dial backoff.
    pub backoff_max: Duration,
    /// Per-stream receive window: how much one slow stream may hold unread.
    pub stream_window: u32,
    /// Per-connection receive window.
    pub connection_window: u32,
    /// Concurrent streams a peer may open (one per remote actor in use, plus a few).
    pub max_streams: u32,
    /// Protocol version announced (tests change it to check the mismatch error).
    pub protocol_version: u32,
    /// A replaced link is closed after this long at the latest. The layer above closes it
    /// sooner, once it has drained (see `actormesh-runtime`); this bounds the wait.
    pub retire_after: Duration,
}

impl EndpointConfig {
    /// Defaults for listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            max_frame: DEFAULT_MAX_FRAME,
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            stream_window: 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_streams: 4096,
            protocol_version: PROTOCOL_VERSION,
            retire_after: Duration::from_secs(60),
        }
    }

    fn validate(&self) -> Result<(), TransportError> {
        let err = |s: String| Err(TransportError::Config(s));
        if self.keep_alive >= self.idle_timeout {
            return err(format!(
                "keep_alive ({:?}) must be shorter than idle_timeout ({:?})",
                self.keep_alive, self.idle_timeout
            ));
        }
        if self.max_frame == 0 || self.max_frame > MAX_FRAME_LIMIT {
            return err(format!(
                "max_frame must be between 1 and {MAX_FRAME_LIMIT} bytes, got {}",
                self.max_frame
            ));
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return err("backoff_initial must be non-zero and at most backoff_max".into());
        }
        if self.stream_window as usize <= self.max_frame.min(64 * 1024)
            || self.connection_window < self.stream_window
        {
            return err("stream_window must exceed 64 KiB and be at most connection_window".into());
        }
        Ok(())
    }
}

/// What is known about an established link.
#[derive(Debug)]
pub struct LinkInfo {
    /// Unique per endpoint.
    pub id: u64,
    /// The peer's verified identity (from its certificate, never from a frame).
    pub peer: SpiffeId,
    /// The address the peer listens on; the key under which the link is kept.
    pub peer_addr: SocketAddr,
    /// The peer's incarnation (changes when the peer process restarts).
    pub peer_incarnation: u64,
    /// Whether this side dialed.
    pub dialed_by_us: bool,
    /// Expiry of the certificate the peer presented.
    pub peer_cert_expiry: SystemTime,
    /// Expiry of the certificate this side presented.
    pub local_cert_expiry: SystemTime,
    /// When the link was established.
    pub established: SystemTime,
}

/// An established, mutually authenticated connection to a peer.
#[derive(Debug, Clone)]
pub struct Link {
    conn: quinn::Connection,
    info: Arc<LinkInfo>,
}

impl Link {
    /// The QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Facts about the link.
    pub fn info(&self) -> &Arc<LinkInfo> {
        &self.info
    }

    /// The peer's verified identity.
    pub fn peer(&self) -> &SpiffeId {
        &self.info.peer
    }

    /// Whether the connection is still open.
    pub fn is_alive(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// Closes the link now.
    pub fn close(&self, code: u32, reason: &str) {
        self.conn.close(VarInt::from_u32(code), reason.as_bytes());
    }
}

/// A link handed to the layer above, with the two halves of its control stream.
#[derive(Debug)]
pub struct NewLink {
    /// The link.
    pub link: Link,
    /// Control stream, send half.
    pub control_send: SendStream,
    /// Control stream, receive half (framed).
    pub control_recv: FrameReader<RecvStream>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    listen: SocketAddr,
    incarnation: u64,
    /// An explicit request to replace the current link (certificate cycling).
    replaces: bool,
}

#[derive(Debug, Serialize, Deserialize)]
enum HelloReply {
    Accepted {
        incarnation: u64,
    },
    VersionMismatch {
        ours: u32,
    },
    Duplicate,
    /// Another identity holds a live link for the claimed address.
    AddressTaken {
        holder: String,
    },
}

/// The acceptor's decision on a new incoming link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Keep the new link (replacing any existing one).
    Accept,
    /// Refuse it: the existing link (or our own pending dial) is the one to keep.
    Duplicate,
}

/// The current state towards a peer, as seen when a new incoming link arrives.
#[derive(Debug, Clone, Copy)]
pub struct Existing {
    /// Whether the existing link was dialed by us.
    pub dialed_by_us: bool,
    /// The peer incarnation seen on it.
    pub peer_incarnation: u64,
}

/// Decides whether an incoming link from `peer` is kept.
///
/// The rule that both sides apply: of two links between the same pair of live processes,
/// the one dialed by the lower `(identity, address)` wins. A link from a restarted peer
/// (new incarnation), one the peer dialed again itself, or an explicit replacement always
/// wins, because the old one is then dead or being retired.
pub fn admit(
    me: (&SpiffeId, SocketAddr),
    peer: (&SpiffeId, SocketAddr),
    existing: Option<Existing>,
    dialing_out: bool,
    incarnation: u64,
    replaces: bool,
) -> Admission {
    let me_lower = me < peer;
    match existing {
        None if dialing_out && me_lower => Admission::Duplicate,
        None => Admission::Accept,
        Some(_) if replaces => Admission::Accept,
        Some(e) if e.peer_incarnation != incarnation => Admission::Accept,
        Some(e) if !e.dialed_by_us => Admission::Accept,
        Some(_) if me_lower => Admission::Duplicate,
        Some(_) => Admission::Accept,
    }
}

#[derive(Debug, Default)]
struct PeerEntry {
    link: Option<Link>,
    dialing: bool,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

#[derive(Debug)]
struct Inner {
    quinn: quinn::Endpoint,
    certs: Arc<CertStore>,
    verifier: Arc<SpiffeVerifier>,
    client_config: quinn::ClientConfig,
    config: EndpointConfig,
    local_addr: SocketAddr,
    incarnation: u64,
    peers: Mutex<HashMap<SocketAddr, PeerEntry>>,
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

/// The QUIC transport settings an endpoint with `c` uses (the benchmark's raw baseline
/// uses the same ones).
pub fn transport_config(c: &EndpointConfig) -> Result<quinn::TransportConfig, TransportError> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        c.idle_timeout
            .try_into()
            .map_err(|_| TransportError::Config("idle_timeout is too large".into()))?,
    ));
    t.keep_alive_interval(Some(c.keep_alive));
    t.stream_receive_window(VarInt::from_u32(c.stream_window));
    t.receive_window(VarInt::from_u32(c.connection_window));
    t.send_window(u64::from(c.connection_window));
    t.max_concurrent_uni_streams(VarInt::from_u32(c.max_streams));
    t.max_concurrent_bidi_streams(VarInt::from_u32(8));
    Ok(t)
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
        let verifier = SpiffeVerifier::new(&credentials.ca, identity.trust_domain())?;
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
        let inner = Arc::new(Inner {
            quinn,
            certs,
            verifier,
            client_config,
            config,
            local_addr,
            incarnation: rand_u64(),
            peers: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            links_tx,
            next_link_id: AtomicU64::new(1),
            refusals: Mutex::new(Vec::new()),
            refusal_events: tokio::sync::broadcast::channel(64).0,
        });
        tokio::spawn(accept_loop(Arc::downgrade(&inner), inner.quinn.clone()));
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

    /// Handshakes this endpoint refused recently (newest last, at most 64).
    pub fn recent_refusals(&self) -> Vec<(SocketAddr, Refusal)> {
        lock(&self.inner.refusals).clone()
    }

    /// Refuses `id` from now on (a removed node): its handshakes fail as revoked and its
    /// current links are closed.
    pub fn revoke(&self, id: &SpiffeId) {
        self.inner.verifier.revoke(id);
        let links: Vec<Link> = lock(&self.inner.peers)
            .values()
            .filter_map(|e| e.link.clone())
            .filter(|l| &l.info.peer == id)
            .collect();
        for l in links {
            l.close(close_code::REVOKED, "identity revoked");
        }
    }

    /// Handshakes this endpoint refuses from now on, as they happen.
    pub fn subscribe_refusals(&self) -> tokio::sync::broadcast::Receiver<(SocketAddr, Refusal)> {
        self.inner.refusal_events.subscribe()
    }

    /// The live link to `addr`, if there is one. Never dials.
    pub fn existing_link(&self, addr: SocketAddr) -> Option<Link> {
        lock(&self.inner.peers)
            .get(&addr)
            .and_then(|e| e.link.clone())
            .filter(Link::is_alive)
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
                let entry = peers.entry(addr).or_default();
                if let Some(link) = entry.link.as_ref().filter(|l| l.is_alive()) {
                    return Ok(link.clone());
                }
                if entry.dialing {
                    Some(inner.changed.notified())
                } else if let Some(at) = entry.retry_at.filter(|at| Instant::now() < *at) {
                    return Err(TransportError::Unreachable {
                        addr,
                        reason: format!(
                            "{} (next dial in {} ms)",
                            entry.last_error.as_deref().unwrap_or("earlier dial failed"),
                            at.saturating_duration_since(Instant::now()).as_millis()
                        ),
                    });
                } else {
                    entry.dialing = true;
                    None
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
                let entry = peers.entry(addr).or_default();
                entry.dialing = false;
                match result {
                    Ok(new) => {
                        entry.failures = 0;
                        entry.retry_at = None;
                        entry.last_error = None;
                        let link = new.link.clone();
                        install(inner, entry, new);
                        Ok(Some(link))
                    }
                    Err(DialError::Duplicate) => Ok(None),
                    Err(DialError::Failed(e)) => {
                        entry.failures = entry.failures.saturating_add(1);
                        let backoff = backoff(&inner.config, entry.failures);
                        entry.retry_at = Some(Instant::now() + backoff);
                        entry.last_error = Some(e.to_string());
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
            if let Some(e) = lock(&self.inner.peers).get_mut(&self.addr) {
                e.dialing = false;
            }
            self.inner.changed.notify_waiters();
        }
    }
}

fn backoff(config: &EndpointConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (config.backoff_initial * 2u32.pow(exp)).min(config.backoff_max)
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

/// Puts `new` in place as the link to its peer, retiring any previous one.
fn install(inner: &Arc<Inner>, entry: &mut PeerEntry, new: NewLink) {
    if let Some(old) = entry.link.replace(new.link.clone()) {
        if old.info.id != new.link.info.id {
            retire(old, inner.config.retire_after);
        }
    }
    if new.link.info.dialed_by_us {
        tokio::spawn(cycle_before_expiry(Arc::downgrade(inner), new.link.clone()));
    }
    debug!(peer = %new.link.info.peer, addr = %new.link.info.peer_addr, id = new.link.info.id, "link up");
    let _ = inner.links_tx.send(new);
}

/// Closes a replaced link after `after` at the latest, so data in flight can still arrive.
fn retire(old: Link, after: Duration) {
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(after) => {}
            _ = old.conn.closed() => {}
        }
        old.close(close_code::REPLACED, "replaced by a newer link");
    });
}

/// Dials a fresh link before either certificate on `link` expires, so that a long-lived
/// link never outlives the certificates it was authenticated with.
async fn cycle_before_expiry(inner: std::sync::Weak<Inner>, link: Link) {
    let info = link.info.clone();
    let expiry = info.peer_cert_expiry.min(info.local_cert_expiry);
    let span = expiry
        .duration_since(info.established)
        .unwrap_or(Duration::ZERO);
    let mut at = info.established + span.mul_f64(0.8);
    loop {
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = link.conn.closed() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let current = lock(&inner.peers)
            .get(&info.peer_addr)
            .and_then(|e| e.link.as_ref().map(|l| l.info.id));
        if current != Some(info.id) {
            return;
        }
        info!(peer = %info.peer, "cycling link before certificate expiry");
        match dial(&inner, info.peer_addr, true).await {
            Ok(new) => {
                {
                    let mut peers = lock(&inner.peers);
                    let entry = peers.entry(info.peer_addr).or_default();
                    install(&inner, entry, new);
                }
                inner.changed.notify_waiters();
                return;
            }
            Err(e) => {
                warn!(peer = %info.peer, error = ?e, "cycling the link failed; retrying");
                at = SystemTime::now() + backoff(&inner.config, 3);
            }
        }
    }
}

enum DialError {
    Duplicate,
    Failed(TransportError),
}

impl std::fmt::Debug for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Duplicate => f.write_str("Duplicate"),
            DialError::Failed(e) => write!(f, "{e}"),
        }
    }
}

async fn dial(inner: &Arc<Inner>, addr: SocketAddr, replaces: bool) -> Result<NewLink, DialError> {
    debug!(%addr, replaces, "dialing");
    let timeout = inner.config.handshake_timeout;
    let fail = DialError::Failed;
    let connecting = inner
        .quinn
        .connect_with(inner.client_config.clone(), addr, "actormesh")
        .map_err(|e| {
            fail(TransportError::Unreachable {
                addr,
                reason: e.to_string(),
            })
        })?;
    let local_cert_expiry = inner.certs.current().not_after;
    let work = async {
        let conn = connecting
            .await
            .map_err(|e| map_connection_error(addr, &e))?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| map_connection_error(addr, &e))?;
        let mut hello = inner.config.protocol_version.to_le_bytes().to_vec();
        codec::encode_into(
            &Hello {
                listen: inner.local_addr,
                incarnation: inner.incarnation,
                replaces,
            },
            &mut hello,
        )?;
        let mut frame = Vec::new();
        push_frame(&mut frame, &hello, inner.config.max_frame)?;
        send.write_all(&frame)
            .await
            .map_err(|e| write_error(addr, &conn, e))?;
        let mut recv = FrameReader::new(recv, inner.config.max_frame);
        let reply = match recv.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(closed_error(addr, &conn, "peer closed the control stream")),
            Err(e) => return Err(closed_error(addr, &conn, &e.to_string())),
        };
        let reply: HelloReply = codec::decode(&reply)?;
        Ok((conn, send, recv, reply))
    };
    let (conn, send, recv, reply) = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(fail(e)),
        Err(_) => {
            return Err(fail(TransportError::Unreachable {
                addr,
                reason: format!("no handshake within {timeout:?}"),
            }))
        }
    };
    match reply {
        HelloReply::Accepted { incarnation } => {
            let link =
                make_link(inner, conn, addr, incarnation, true, local_cert_expiry).map_err(fail)?;
            if send.set_priority(PRIORITY_CONTROL).is_err() {
                return Err(fail(closed_error(
                    addr,
                    link.connection(),
                    "control stream closed",
                )));
            }
            Ok(NewLink {
                link,
                control_send: send,
                control_recv: recv,
            })
        }
        HelloReply::VersionMismatch { ours } => Err(fail(TransportError::ProtocolVersion {
            addr,
            ours: inner.config.protocol_version,
            theirs: ours,
        })),
        HelloReply::Duplicate => Err(DialError::Duplicate),
        HelloReply::AddressTaken { holder } => Err(fail(TransportError::Protocol {
            addr,
            reason: format!(
                "the peer refused our claim to listen on {}: {holder} holds a live link for that address",
                inner.local_addr
            ),
        })),
    }
}

/// Stream priority of control streams: served before any user lane.
pub const PRIORITY_CONTROL: i32 = 100;

fn make_link(
    inner: &Arc<Inner>,
    conn: quinn::Connection,
    peer_addr: SocketAddr,
    peer_incarnation: u64,
    dialed_by_us: bool,
    local_cert_expiry: SystemTime,
) -> Result<Link, TransportError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| TransportError::Protocol {
            addr: peer_addr,
            reason: "no peer certificate after the handshake".into(),
        })?;
    let leaf = certs.first().ok_or_else(|| TransportError::Protocol {
        addr: peer_addr,
        reason: "empty peer certificate chain".into(),
    })?;
    let peer = spiffe_uri_of(leaf)
        .and_then(|u| SpiffeId::parse(&u).ok())
        .ok_or_else(|| TransportError::Protocol {
            addr: peer_addr,
            reason: "peer certificate lost its SPIFFE ID".into(),
        })?;
    let peer_cert_expiry = not_after_of(leaf).unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(Link {
        conn,
        info: Arc::new(LinkInfo {
            id: inner.next_link_id.fetch_add(1, Ordering::Relaxed),
            peer,
            peer_addr,
            peer_incarnation,
            dialed_by_us,
            peer_cert_expiry,
            local_cert_expiry,
            established: SystemTime::now(),
        }),
    })
}

async fn accept_loop(inner: std::sync::Weak<Inner>, quinn: quinn::Endpoint) {
    while let Some(incoming) = quinn.accept().await {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let timeout = strong.config.handshake_timeout;
            match tokio::time::timeout(timeout, accept_one(&strong, incoming)).await {
                Ok(Ok(())) => {}
                Ok(Err(TransportError::HandshakeRefused { refusal, by, addr })) => {
                    warn!(peer = %addr, refused_by = ?by, reason = %refusal, "handshake refused");
                    let mut r = lock(&strong.refusals);
                    if r.len() >= 64 {
                        r.remove(0);
                    }
                    r.push((addr, refusal.clone()));
                    let _ = strong.refusal_events.send((addr, refusal));
                }
                Ok(Err(e)) => debug!(peer = %remote, error = %e, "incoming link failed"),
                Err(_) => debug!(peer = %remote, "incoming handshake timed out"),
            }
        });
    }
}

async fn accept_one(inner: &Arc<Inner>, incoming: quinn::Incoming) -> Result<(), TransportError> {
    let remote = incoming.remote_address();
    let local_cert_expiry = inner.certs.current().not_after;
    let conn = incoming
        .await
        .map_err(|e| map_connection_error(remote, &e))?;
    let (mut send, recv) = conn
        .accept_bi()
        .await
        .map_err(|e| map_connection_error(remote, &e))?;
    let mut recv = FrameReader::new(recv, inner.config.max_frame);
    let frame = recv
        .next()
        .await?
        .ok_or_else(|| closed_error(remote, &conn, "control stream closed before hello"))?;
    if frame.len() < 4 {
        conn.close(VarInt::from_u32(close_code::PROTOCOL), b"short hello");
        return Err(TransportError::Protocol {
            addr: remote,
            reason: "hello shorter than its version field".into(),
        });
    }
    let version = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let reply_and = |reply: HelloReply| -> Result<Vec<u8>, TransportError> {
        let mut out = Vec::new();
        push_frame(&mut out, &codec::encode(&reply)?, inner.config.max_frame)?;
        Ok(out)
    };
    if version != inner.config.protocol_version {
        let out = reply_and(HelloReply::VersionMismatch {
            ours: inner.config.protocol_version,
        })?;
        let _ = send.write_all(&out).await;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        conn.close(
            VarInt::from_u32(close_code::VERSION),
            b"protocol version mismatch",
        );
        return Err(TransportError::ProtocolVersion {
            addr: remote,
            ours: inner.config.protocol_version,
            theirs: version,
        });
    }
    let hello: Hello = codec::decode(&frame[4..])?;
    let peer_addr = if hello.listen.ip().is_unspecified() {
        SocketAddr::new(remote.ip(), hello.listen.port())
    } else {
        hello.listen
    };
    let link = make_link(
        inner,
        conn,
        peer_addr,
        hello.incarnation,
        false,
        local_cert_expiry,
    )?;
    let me = inner.certs.current().identity.clone();
    let decision = {
        let mut peers = lock(&inner.peers);
        let entry = peers.entry(peer_addr).or_default();
        let live = entry.link.as_ref().filter(|l| l.is_alive());
        // The address comes from the peer's own Hello, so it is only a claim: while one
        // identity has a live link for an address, no other identity may take it over.
        let holder = live
            .filter(|l| l.info.peer != link.info.peer)
            .map(|l| l.info.peer.clone());
        let existing = live.map(|l| Existing {
            dialed_by_us: l.info.dialed_by_us,
            peer_incarnation: l.info.peer_incarnation,
        });
        let decision = admit(
            (&me, inner.local_addr),
            (&link.info.peer, peer_addr),
            existing,
            entry.dialing,
            hello.incarnation,
            hello.replaces,
        );
        if holder.is_none() && decision == Admission::Accept {
            entry.failures = 0;
            entry.retry_at = None;
        }
        holder.map_or(Ok(decision), Err)
    };
    let decision = match decision {
        Ok(d) => d,
        Err(holder) => {
            warn!(claimed = %peer_addr, claimant = %link.info.peer, %holder, "refused a link claiming another node's address");
            let out = reply_and(HelloReply::AddressTaken {
                holder: holder.to_string(),
            })?;
            let _ = send.write_all(&out).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            link.close(close_code::PROTOCOL, "address claimed by another identity");
            return Err(TransportError::Protocol {
                addr: remote,
                reason: format!(
                    "{} claimed {peer_addr}, which {holder} holds",
                    link.info.peer
                ),
            });
        }
    };
    match decision {
        Admission::Duplicate => {
            let out = reply_and(HelloReply::Duplicate)?;
            let _ = send.write_all(&out).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            link.close(close_code::DUPLICATE, "duplicate link");
            Ok(())
        }
        Admission::Accept => {
            let out = reply_and(HelloReply::Accepted {
                incarnation: inner.incarnation,
            })?;
            let _ = send.set_priority(PRIORITY_CONTROL);
            // Streams the peer opens once it reads the reply wait in quinn until the layer
            // above, told of the link by `install`, accepts them: nothing is lost.
            send.write_all(&out)
                .await
                .map_err(|e| write_error(remote, link.connection(), e))?;
            {
                let mut peers = lock(&inner.peers);
                let entry = peers.entry(peer_addr).or_default();
                install(
                    inner,
                    entry,
                    NewLink {
                        link,
                        control_send: send,
                        control_recv: recv,
                    },
                );
            }
            inner.changed.notify_waiters();
            Ok(())
        }
    }
}

fn closed_error(addr: SocketAddr, conn: &quinn::Connection, what: &str) -> TransportError {
    match conn.close_reason() {
        Some(e) => map_connection_error(addr, &e),
        None => TransportError::Protocol {
            addr,
            reason: what.to_string(),
        },
    }
}

fn write_error(addr: SocketAddr, conn: &quinn::Connection, e: quinn::WriteError) -> TransportError {
    match conn.close_reason() {
        Some(c) => map_connection_error(addr, &c),
        None => TransportError::ConnectionLost {
            addr,
            reason: e.to_string(),
        },
    }
}

/// The TLS alert carried by a QUIC CRYPTO_ERROR code (0x100 + alert), if it is one.
fn crypto_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let c = u64::from(code);
    (0x100..0x200).contains(&c).then(|| (c - 0x100) as u8)
}

fn refusal_from_alert(alert: u8, detail: Option<String>) -> Refusal {
    // Alert numbers from RFC 8446 section 6.
    match alert {
        48 => Refusal::UnknownCa,
        45 => Refusal::Expired,
        116 => Refusal::NoClientCertificate,
        46 => Refusal::WrongTrustDomain { detail },
        42 => Refusal::NoSpiffeId,
        44 => Refusal::Revoked,
        other => Refusal::Other(match detail {
            Some(d) => format!("TLS alert {other}: {d}"),
            None => format!("TLS alert {other}"),
        }),
    }
}

/// Turns a quinn connection error into a typed transport error.
pub fn map_connection_error(addr: SocketAddr, e: &ConnectionError) -> TransportError {
    match e {
        ConnectionError::TransportError(te) => match crypto_alert(te.code) {
            Some(alert) => TransportError::HandshakeRefused {
                addr,
                by: RefusedBy::Us,
                refusal: refusal_from_alert(alert, Some(te.reason.clone())),
            },
            None => TransportError::Unreachable {
                addr,
                reason: te.to_string(),
            },
        },
        ConnectionError::ConnectionClosed(cc) => match crypto_alert(cc.error_code) {
            Some(alert) => TransportError::HandshakeRefused {
                addr,
                by: RefusedBy::Peer,
                refusal: refusal_from_alert(alert, None),
            },
            None => TransportError::ConnectionLost {
                addr,
                reason: cc.to_string(),
            },
        },
        ConnectionError::ApplicationClosed(ac) => TransportError::ConnectionLost {
            addr,
            reason: format!("closed by peer: {}", String::from_utf8_lossy(&ac.reason)),
        },
        ConnectionError::TimedOut => TransportError::Unreachable {
            addr,
            reason: "timed out (no response from peer)".into(),
        },
        ConnectionError::LocallyClosed => TransportError::Shutdown,
        other => TransportError::Unreachable {
            addr,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: &str) -> SpiffeId {
        SpiffeId::node("t", n).unwrap()
    }

    #[test]
    fn simultaneous_dial_keeps_the_lower_dialers_link_on_both_sides() {
        let (a, b) = (id("a"), id("b"));
        let (aa, ba): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        // Both dialing, neither established: a (lower) refuses b's dial, b accepts a's.
        assert_eq!(
            admit((&a, aa), (&b, ba), None, true, 7, false),
            Admission::Duplicate
        );
        assert_eq!(
            admit((&b, ba), (&a, aa), None, true, 7, false),
            Admission::Accept
        );
        // a's dial finished first: a refuses b's late dial; b had already accepted a's.
        let mine = Some(Existing {
            dialed_by_us: true,
            peer_incarnation: 7,
        });
        assert_eq!(
            admit((&a, aa), (&b, ba), mine, false, 7, false),
            Admission::Duplicate
        );
        // b's dial finished first: a accepts its own... a's late dial reaches b, which keeps it.
        assert_eq!(
            admit((&b, ba), (&a, aa), mine, false, 7, false),
            Admission::Accept
        );
    }

    #[test]
    fn restarts_redials_and_replacements_win() {
        let (a, b) = (id("a"), id("b"));
        let (aa, ba): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let mine = Some(Existing {
            dialed_by_us: true,
            peer_incarnation: 7,
        });
        let theirs = Some(Existing {
            dialed_by_us: false,
            peer_incarnation: 7,
        });
        assert_eq!(
            admit((&a, aa), (&b, ba), mine, false, 8, false),
            Admission::Accept
        );
        assert_eq!(
            admit((&a, aa), (&b, ba), theirs, false, 7, false),
            Admission::Accept
        );
        assert_eq!(
            admit((&a, aa), (&b, ba), mine, false, 7, true),
            Admission::Accept
        );
    }

    #[test]
    fn backoff_is_exponential_and_capped() {
        let c = EndpointConfig::new("127.0.0.1:0".parse().unwrap());
        assert_eq!(backoff(&c, 1), Duration::from_millis(50));
        assert_eq!(backoff(&c, 3), Duration::from_millis(200));
        assert_eq!(backoff(&c, 30), Duration::from_secs(5));
    }
}
