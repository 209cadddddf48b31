//! Turning quinn's connection errors, and the TLS alerts inside them, into typed
//! transport errors.

use std::net::SocketAddr;

use quinn::ConnectionError;

use crate::error::{Refusal, RefusedBy, TransportError};

/// The error to report when `conn` stopped answering while we waited for `what`: its close
/// reason if it closed, a protocol error otherwise.
pub(super) fn closed_error(
    addr: SocketAddr,
    conn: &quinn::Connection,
    what: &str,
) -> TransportError {
    match conn.close_reason() {
        Some(e) => map_connection_error(addr, &e),
        None => TransportError::Protocol {
            addr,
            reason: what.to_string(),
        },
    }
}

/// The error to report for a failed write on `conn`: its close reason if it closed.
pub(super) fn write_error(
    addr: SocketAddr,
    conn: &quinn::Connection,
    e: quinn::WriteError,
) -> TransportError {
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
        120 => Refusal::NoCommonProtocol,
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
