//! Transport errors: one enum for this layer, a doc line per variant.

use std::fmt;
use std::net::SocketAddr;

use crate::codec::CodecError;
use crate::frame::FrameError;

/// Why a TLS handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The certificate does not chain to the cluster CA.
    UnknownCa,
    /// The certificate has expired (or is not yet valid).
    Expired,
    /// The client presented no certificate.
    NoClientCertificate,
    /// The certificate's SPIFFE ID is outside the accepted trust domain.
    WrongTrustDomain {
        /// Detail, when this side made the decision.
        detail: Option<String>,
    },
    /// The certificate carries no valid `spiffe://` URI.
    NoSpiffeId,
    /// The identity has been revoked (the node was removed from the cluster).
    Revoked,
    /// No application protocol in common (TLS alert 120): the port serves another
    /// protocol, e.g. a mesh port asked to join, or a bootstrap port asked for a link.
    NoCommonProtocol,
    /// The certificate was refused for another reason (named).
    Other(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownCa => {
                f.write_str("certificate not issued by the cluster CA (unknown CA)")
            }
            Refusal::Expired => f.write_str("certificate expired or not yet valid"),
            Refusal::NoClientCertificate => f.write_str("no client certificate presented"),
            Refusal::WrongTrustDomain { detail: Some(d) } => write!(f, "wrong trust domain: {d}"),
            Refusal::WrongTrustDomain { detail: None } => {
                f.write_str("certificate identity is outside the peer's trust domain")
            }
            Refusal::NoSpiffeId => f.write_str("certificate has no valid spiffe:// identity"),
            Refusal::Revoked => {
                f.write_str("identity revoked: the node was removed from the cluster")
            }
            Refusal::NoCommonProtocol => f.write_str(
                "no application protocol in common (TLS alert 120): the port serves another protocol",
            ),
            Refusal::Other(s) => f.write_str(s),
        }
    }
}

/// Which side refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedBy {
    /// This endpoint refused the peer's certificate.
    Us,
    /// The peer refused this endpoint's certificate.
    Peer,
}

/// An error of the transport layer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TLS handshake was refused, by this side or the peer, for the reason given.
    #[error("handshake with {addr} refused by {}: {refusal}", match .by { RefusedBy::Us => "us", RefusedBy::Peer => "the peer" })]
    HandshakeRefused {
        /// The peer's address.
        addr: SocketAddr,
        /// Who refused.
        by: RefusedBy,
        /// Why.
        refusal: Refusal,
    },
    /// The peer speaks another actormesh protocol version.
    #[error("protocol version mismatch with {addr}: we speak version {ours}, the peer speaks version {theirs}")]
    ProtocolVersion {
        /// The peer's address.
        addr: SocketAddr,
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The peer could not be reached or the connection failed.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The peer's address.
        addr: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// The connection was lost after it was established.
    #[error("connection to {addr} lost: {reason}")]
    ConnectionLost {
        /// The peer's address.
        addr: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// The peer broke the framing or sent an undecodable control frame.
    #[error("protocol violation by {addr}: {reason}")]
    Protocol {
        /// The peer's address.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// A frame was malformed or too large.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A value could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The endpoint configuration is invalid.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// The local socket could not be opened.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The endpoint has been shut down.
    #[error("the endpoint is shut down")]
    Shutdown,
    /// A bootstrap request went to an address that answers as something else (a mesh
    /// port, or an HTTP server such as the operator API).
    #[error("{addr} is not a bootstrap port: {found}")]
    NotABootstrapPort {
        /// The address.
        addr: SocketAddr,
        /// What answers there instead, and what to use.
        found: String,
    },
}
