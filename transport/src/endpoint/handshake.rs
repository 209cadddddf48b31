//! The Hello exchange on a link's control stream, from both sides: the dialer sends
//! `Hello`, the acceptor decides by the peer book and answers with a `HelloReply`.

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

/// Dials `addr` and runs the Hello exchange as the dialer; `replaces` asks the peer to
/// replace the current link (certificate cycling).
pub(super) async fn dial(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    replaces: bool,
) -> Result<NewLink, DialError> {
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
            let facts = Handshaken {
                id: next_link_id(inner),
                peer_addr: addr,
                peer_incarnation: incarnation,
                dialed_by_us: true,
                local_cert_expiry,
            };
            let link = Link::from_handshake(conn, facts).map_err(fail)?;
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
    let version = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    if version != inner.config.protocol_version {
        let ours = inner.config.protocol_version;
        refuse(inner, &mut send, HelloReply::VersionMismatch { ours }).await?;
        conn.close(
            VarInt::from_u32(close_code::VERSION),
            b"protocol version mismatch",
        );
        return Err(TransportError::ProtocolVersion {
            addr: remote,
            ours,
            theirs: version,
        });
    }
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
