//! The Hello exchange on a link's control stream, from both sides: the dialer sends
//! `Hello`, the acceptor decides by the peer book and answers with a `HelloReply`.
//!
//! **Versions.** A node configured with version `v` speaks `v` and `v - 1` (only 1 when
//! `v` is 1). The Hello starts with the version the dialer offers, the highest it speaks;
//! the acceptor takes it if it speaks it too, and the link then speaks that version.
//! Otherwise it answers `VersionMismatch { ours }` with the highest it speaks, and the
//! dialer, if it speaks that one, dials once more offering it. This is the only way a
//! version 1 node can be reached: it refuses every version but 1 and any byte after its
//! `Hello`, so nothing a newer Hello could add is readable by it. The extra dial happens
//! only towards an older node. Versions further apart fail on both sides with an error
//! naming both. A node configured with version 1 sends and accepts exactly what the
//! version 1 code did.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{RecvStream, SendStream, VarInt};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::connection_error::{closed_error, map_connection_error, write_error};
use super::link::{Handshaken, Link, NewLink};
use super::peers::{AddressTaken, Admission, Incoming};
use super::{close_code, lock, Inner, PRIORITY_CONTROL};
use crate::codec;
use crate::error::TransportError;
use crate::frame::{push_frame, FrameReader};

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

/// How a dial ended without a link.
pub(super) enum DialError {
    /// The peer keeps its own dial to us instead.
    Duplicate,
    /// The dial failed.
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

fn next_link_id(inner: &Inner) -> u64 {
    inner.next_link_id.fetch_add(1, Ordering::Relaxed)
}

/// The versions a node configured with `version` speaks: it and the one before.
pub(super) fn spoken(version: u32) -> std::ops::RangeInclusive<u32> {
    version.saturating_sub(1).max(1)..=version
}

/// What the dialer does with the acceptor's `VersionMismatch { ours: theirs }` after
/// offering `offered`: offer `theirs` if it speaks it and has not yet, else fail.
pub(super) fn fallback(configured: u32, offered: u32, theirs: u32) -> Option<u32> {
    (spoken(configured).contains(&theirs) && theirs < offered).then_some(theirs)
}

/// The version an acceptor configured with `configured` agrees to when offered `offered`.
pub(super) fn agree(configured: u32, offered: u32) -> Option<u32> {
    spoken(configured).contains(&offered).then_some(offered)
}

/// Dials `addr` and runs the Hello exchange as the dialer; `replaces` asks the peer to
/// replace the current link (certificate cycling).
pub(super) async fn dial(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    replaces: bool,
) -> Result<NewLink, DialError> {
    let configured = inner.config.protocol_version;
    let mut offered = configured;
    loop {
        match dial_offering(inner, addr, replaces, offered).await? {
            Dialed::Link(link) => return Ok(link),
            Dialed::Mismatch { theirs } => match fallback(configured, offered, theirs) {
                Some(v) => {
                    debug!(%addr, theirs, "the peer speaks an older version; dialing again");
                    offered = v;
                }
                None => {
                    return Err(DialError::Failed(TransportError::ProtocolVersion {
                        addr,
                        ours: configured,
                        theirs,
                    }))
                }
            },
        }
    }
}

/// How one dial offering a version ended, when it did not fail.
enum Dialed {
    Link(NewLink),
    /// The peer does not speak the version offered; `theirs` is the highest it speaks.
    Mismatch {
        theirs: u32,
    },
}

/// One dial offering `version`.
async fn dial_offering(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    replaces: bool,
    version: u32,
) -> Result<Dialed, DialError> {
    debug!(%addr, replaces, version, "dialing");
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
        let mut hello = version.to_le_bytes().to_vec();
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
            let facts = Handshaken {
                id: next_link_id(inner),
                peer_addr: addr,
                peer_incarnation: incarnation,
                dialed_by_us: true,
                local_cert_expiry,
                version,
            };
            let link = Link::from_handshake(conn, facts).map_err(fail)?;
            if send.set_priority(PRIORITY_CONTROL).is_err() {
                return Err(fail(closed_error(
                    addr,
                    link.connection(),
                    "control stream closed",
                )));
            }
            Ok(Dialed::Link(NewLink {
                link,
                control_send: send,
                control_recv: recv,
            }))
        }
        HelloReply::VersionMismatch { ours } => Ok(Dialed::Mismatch { theirs: ours }),
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

/// Sends `reply` as the last frame on the control stream and waits briefly for the peer
/// to read it, so that it learns why the link is closed.
async fn refuse(
    inner: &Inner,
    send: &mut SendStream,
    reply: HelloReply,
) -> Result<(), TransportError> {
    let out = reply_frame(inner, &reply)?;
    let _ = send.write_all(&out).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    Ok(())
}

fn reply_frame(inner: &Inner, reply: &HelloReply) -> Result<Vec<u8>, TransportError> {
    let mut out = Vec::new();
    push_frame(&mut out, &codec::encode(reply)?, inner.config.max_frame)?;
    Ok(out)
}

/// Runs the Hello exchange as the acceptor. Returns the link to install, or `None` when
/// it was refused as a duplicate of the link we keep.
pub(super) async fn accept(
    inner: &Arc<Inner>,
    incoming: quinn::Incoming,
) -> Result<Option<NewLink>, TransportError> {
    let remote = incoming.remote_address();
    let local_cert_expiry = inner.certs.current().not_after;
    let conn = incoming
        .await
        .map_err(|e| map_connection_error(remote, &e))?;
    let (mut send, recv) = conn
        .accept_bi()
        .await
        .map_err(|e| map_connection_error(remote, &e))?;
    let mut recv: FrameReader<RecvStream> = FrameReader::new(recv, inner.config.max_frame);
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
    let offered = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let Some(version) = agree(inner.config.protocol_version, offered) else {
        let ours = inner.config.protocol_version;
        refuse(inner, &mut send, HelloReply::VersionMismatch { ours }).await?;
        conn.close(
            VarInt::from_u32(close_code::VERSION),
            b"protocol version mismatch",
        );
        return Err(TransportError::ProtocolVersion {
            addr: remote,
            ours,
            theirs: offered,
        });
    };
    let hello: Hello = codec::decode(&frame[4..])?;
    let peer_addr = if hello.listen.ip().is_unspecified() {
        SocketAddr::new(remote.ip(), hello.listen.port())
    } else {
        hello.listen
    };
    let facts = Handshaken {
        id: next_link_id(inner),
        peer_addr,
        peer_incarnation: hello.incarnation,
        dialed_by_us: false,
        local_cert_expiry,
        version,
    };
    let link = Link::from_handshake(conn, facts)?;
    let me = inner.certs.current().identity.clone();
    let decision = lock(&inner.peers).admit_incoming(
        (&me, inner.local_addr),
        Incoming {
            addr: peer_addr,
            peer: &link.info().peer,
            incarnation: hello.incarnation,
            replaces: hello.replaces,
        },
        Instant::now(),
    );
    match decision {
        Err(AddressTaken { holder }) => {
            warn!(claimed = %peer_addr, claimant = %link.info().peer, %holder, "refused a link claiming another node's address");
            let reply = HelloReply::AddressTaken {
                holder: holder.to_string(),
            };
            refuse(inner, &mut send, reply).await?;
            link.close(close_code::PROTOCOL, "address claimed by another identity");
            Err(TransportError::Protocol {
                addr: remote,
                reason: format!(
                    "{} claimed {peer_addr}, which {holder} holds",
                    link.info().peer
                ),
            })
        }
        Ok(Admission::Duplicate) => {
            refuse(inner, &mut send, HelloReply::Duplicate).await?;
            link.close(close_code::DUPLICATE, "duplicate link");
            Ok(None)
        }
        Ok(Admission::Accept) => {
            let out = reply_frame(
                inner,
                &HelloReply::Accepted {
                    incarnation: inner.incarnation,
                },
            )?;
            let _ = send.set_priority(PRIORITY_CONTROL);
            // Streams the peer opens once it reads the reply wait in quinn until the layer
            // above, told of the link when it is installed, accepts them: nothing is lost.
            send.write_all(&out)
                .await
                .map_err(|e| write_error(remote, link.connection(), e))?;
            Ok(Some(NewLink {
                link,
                control_send: send,
                control_recv: recv,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_speaks_its_version_and_the_one_before() {
        assert_eq!(spoken(1), 1..=1);
        assert_eq!(spoken(2), 1..=2);
        assert_eq!(spoken(3), 2..=3);
    }

    #[test]
    fn neighbouring_versions_agree_on_the_older_one() {
        // A v2 dialer offers 2; a v1 acceptor (today's code) answers that it speaks 1.
        assert_eq!(agree(1, 2), None);
        assert_eq!(fallback(2, 2, 1), Some(1));
        assert_eq!(agree(1, 1), Some(1));
        // A v1 dialer offers 1 to a v2 acceptor, which takes it.
        assert_eq!(agree(2, 1), Some(1));
        assert_eq!(agree(2, 2), Some(2));
        // A v3 dialer and a v2 acceptor meet at 2.
        assert_eq!(agree(2, 3), None);
        assert_eq!(fallback(3, 3, 2), Some(2));
    }

    #[test]
    fn versions_further_apart_are_refused_and_the_dialer_never_loops() {
        assert_eq!(agree(3, 1), None);
        assert_eq!(agree(1, 3), None);
        assert_eq!(fallback(3, 3, 1), None);
        assert_eq!(fallback(1, 1, 3), None);
        // Offered the fallback already: no second retry.
        assert_eq!(fallback(2, 1, 1), None);
    }
}
