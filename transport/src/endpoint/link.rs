//! A link: an established, mutually authenticated QUIC connection to one peer, and the
//! facts fixed when it was made.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use quinn::{RecvStream, SendStream, VarInt};

use crate::error::TransportError;
use crate::frame::FrameReader;
use crate::identity::SpiffeId;
use crate::x509::{not_after_of, spiffe_uri_of};

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
    /// The protocol version the link speaks, agreed in the Hello exchange.
    pub version: u32,
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

/// What the TLS handshake and the Hello exchange established about a new connection.
#[derive(Debug)]
pub(super) struct Handshaken {
    /// The endpoint's number for the link.
    pub id: u64,
    /// The peer's stated listen address.
    pub peer_addr: SocketAddr,
    /// The peer's incarnation from the Hello exchange.
    pub peer_incarnation: u64,
    /// Whether this side dialed.
    pub dialed_by_us: bool,
    /// Expiry of the certificate this side presented.
    pub local_cert_expiry: SystemTime,
    /// The protocol version agreed.
    pub version: u32,
}

impl Link {
    /// Makes the link for `conn`, reading the peer's identity from its verified certificate.
    pub(super) fn from_handshake(
        conn: quinn::Connection,
        facts: Handshaken,
    ) -> Result<Link, TransportError> {
        let peer_addr = facts.peer_addr;
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
                id: facts.id,
                peer,
                peer_addr,
                peer_incarnation: facts.peer_incarnation,
                dialed_by_us: facts.dialed_by_us,
                peer_cert_expiry,
                local_cert_expiry: facts.local_cert_expiry,
                established: SystemTime::now(),
                version: facts.version,
            }),
        })
    }
}
