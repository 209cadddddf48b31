//! Readers of the streams a peer opens on a link: lanes (tells and asks for one actor)
//! and the reply stream. Each runs as a task on the node's runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use actormesh_transport::frame::{FrameError, FrameReader};
use actormesh_transport::sink::FrameSink;
use actormesh_transport::{Link, SpiffeId};

use crate::call::{CallContext, CallInfo, Deadline, NO_METADATA};
use crate::dispatch::{dispatch, expired, Dispatch};
use crate::message::RemoteReply;
use crate::peers::{Peer, Reply};
use crate::slots::{ActorSlot, SlotTable};
use crate::stats::Outcome;
use crate::wire::{self, Control, StreamHeader, WireError};
use crate::AskError;

/// Stop code sent on a stream whose frames broke the protocol.
const STOP_PROTOCOL: u32 = 1;

/// The stream (or its connection) failed underneath: not the peer's framing at fault, so
/// nothing to refuse or report beyond the link going down.
pub(crate) fn is_stream_failure(e: &FrameError) -> bool {
    matches!(e, FrameError::Io(_))
}

/// Stops a stream whose bytes broke the protocol, saying so in the log. The link and the
/// peer's other streams carry on.
fn refuse_stream(
    reader: &mut FrameReader<quinn::RecvStream>,
    link: &Link,
    what: &str,
    error: &dyn std::fmt::Display,
) {
    warn!(peer = %link.peer(), %error, "{what}; stream stopped");
    let _ = reader
        .get_mut()
        .stop(quinn::VarInt::from_u32(STOP_PROTOCOL));
}

/// Reads one stream the peer opened, by the kind its header names.
pub(crate) async fn serve_stream(
    slots: Arc<SlotTable>,
    peer: Arc<Peer>,
    link: Link,
    stream: quinn::RecvStream,
    max_frame: usize,
) {
    let mut reader = FrameReader::new(stream, max_frame);
    let header = match reader.next().await {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(e) if is_stream_failure(&e) => return,
        Err(e) => {
            refuse_stream(&mut reader, &link, "bad header frame", &e);
            return;
        }
    };
    match wire::decode_header(&header) {
        Ok(StreamHeader::Lane { id, target }) => {
            if serve_lane(&slots, &peer, &link, &target, reader).await {
                peer.send_control(Control::LaneDone { id });
            }
        }
        Ok(StreamHeader::Replies) => serve_replies(&peer, &link, reader).await,
        Err(e) => {
            refuse_stream(&mut reader, &link, "unknown stream header", &e);
        }
    }
}

async fn serve_replies(peer: &Peer, link: &Link, mut reader: FrameReader<quinn::RecvStream>) {
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) if is_stream_failure(&e) => return,
            Err(e) => {
                refuse_stream(&mut reader, link, "bad frame on the reply stream", &e);
                return;
            }
        };
        let (corr, result) = match wire::decode_reply(&frame) {
            Ok((corr, Ok(payload))) => {
                let offset = frame.len() - payload.len();
                (corr, Reply::Ok(frame.slice(offset..)))
            }
            Ok((corr, Err(e))) => (corr, Reply::Err(e)),
            Err(e) => {
                refuse_stream(&mut reader, link, "malformed reply", &e);
                return;
            }
        };
        peer.complete(corr, result);
    }
}

/// The shared context of a plain call on a lane from `caller` to the instance `slot`: the
/// one built for this instance, or a new one if the instance changed.
fn plain_context(
    plain: &mut Option<(Arc<ActorSlot>, Option<Arc<CallContext>>)>,
    slot: &Arc<ActorSlot>,
    caller: &Arc<SpiffeId>,
) -> Option<Arc<CallContext>> {
    match plain {
        Some((s, ctx)) if Arc::ptr_eq(s, slot) => ctx.clone(),
        _ => {
            let ctx =
                CallContext::shared(Some(caller.clone()), None, slot.workload().cloned(), false);
            *plain = Some((slot.clone(), ctx.clone()));
            ctx
        }
    }
}

/// Reads one lane and delivers its frames; true if it was read to a clean end.
async fn serve_lane(
    slots: &SlotTable,
    peer: &Arc<Peer>,
    link: &Link,
    target: &str,
    mut reader: FrameReader<quinn::RecvStream>,
) -> bool {
    let mut slot = slots.get(target);
    let mut replies: Option<FrameSink> = None;
    let caller = Arc::new(link.peer().clone());
    // The context of the lane's plain calls (no block), built once per target instance.
    let mut plain = None;
    let version = link.info().version;
    // When the buffered frames were read from the network: an ask's time left counts from
    // there, so frames that waited behind a full mailbox are not mistaken for fresh ones.
    let mut received = Instant::now();
    loop {
        let next = match reader.try_next_buffered() {
            Ok(Some(f)) => Ok(Some(f)),
            Ok(None) => {
                let r = reader.next().await;
                received = Instant::now();
                r
            }
            Err(e) => Err(e),
        };
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => return true,
            Err(e) if is_stream_failure(&e) => return false,
            Err(e) => {
                let what = format!("bad frame on the lane to {target}");
                refuse_stream(&mut reader, link, &what, &e);
                return false;
            }
        };
        let lf = match wire::decode_lane(&frame, version) {
            Ok(f) => f,
            Err(e) => {
                let what = format!("malformed frame on the lane to {target}");
                refuse_stream(&mut reader, link, &what, &e);
                return false;
            }
        };
        // The block is decoded (and its limits enforced) only when the frame has one.
        let meta = lf.meta.map(wire::decode_meta).transpose();
        let json = matches!(&meta, Ok(Some(m)) if m.json);
        let reply = match lf.ask {
            Some((corr, _)) => {
                if replies.as_ref().is_none_or(|r| r.is_closed()) {
                    replies = peer.reply_sink();
                }
                replies
                    .clone()
                    .map(|sink| RemoteReply::new(sink, corr, peer.clone(), json))
            }
            None => None,
        };
        let meta = match meta {
            Ok(m) => m.map(Arc::new),
            Err(error) => {
                let reason = format!("call metadata refused: {error}");
                match reply {
                    Some(r) => r.fail(WireError::Rejected(reason)),
                    None => debug!(actor = %target, message = lf.name, %reason, "tell dropped"),
                }
                continue;
            }
        };
        // An actor that ended may have been replaced under the same name.
        if slot.as_ref().is_none_or(|s| s.has_ended()) {
            slot = slots.get(target);
        }
        let entry = match dispatch(&lf, slot.as_deref()) {
            Dispatch::Deliver(entry) => entry,
            Dispatch::Refuse(error) => {
                match reply {
                    Some(r) => r.fail(error),
                    None => {
                        debug!(actor = %target, message = lf.name, ?error, "tell dropped")
                    }
                }
                continue;
            }
        };
        // Delivery is decided only for a target that is there.
        let Some(s) = slot.as_ref() else { continue };
        // The gate decides before the call takes a mailbox place.
        // Borrowed from the block: nothing is cloned for a call whose figures nobody keeps.
        let workload = meta.as_deref().and_then(|m| m.workload.as_deref());
        // The calling node's certificate proves the node; the workload it asserts is its
        // caller's only if this node's gate says that node hosts an instance of it.
        let proven = workload.filter(|w| s.vouches(&caller, w));
        let metadata = meta.as_deref().map_or(&NO_METADATA, |m| &m.metadata);
        if let Err(refusal) = s.admit(lf.name, Some(&caller), proven, metadata) {
            let outcome = Outcome::of_error(&AskError::from(refusal.clone()));
            s.refused(entry, workload, Some(&caller), received, outcome);
            match reply {
                Some(r) => r.fail(WireError::Refused(refusal)),
                None => debug!(actor = %target, message = lf.name, %refusal, "tell refused"),
            }
            continue;
        }
        // A full mailbox stops this lane (and only this lane) until there is room: QUIC
        // flow control then pushes back on the sender of this lane.
        let permit = match s.permits().try_acquire() {
            Some(p) => p,
            None => s.permits().acquire().await,
        };
        if expired(&lf, || received.elapsed()) {
            s.refused(entry, workload, Some(&caller), received, Outcome::Timeout);
            if let Some(r) = reply {
                r.fail(WireError::Timeout);
            }
            continue;
        }
        let deadline = match lf.ask {
            Some((_, ms)) => Deadline::At(received + Duration::from_millis(u64::from(ms))),
            None => Deadline::None,
        };
        let mut observed = s.observe(entry, workload, Some(&caller), || received);
        let proven = proven.is_some();
        let trace_id = meta.as_ref().and_then(|m| m.trace).map(|t| t.trace_id);
        s.sample_access(&mut observed, Some(&caller), trace_id);
        let meta = s.server_span(&mut observed, entry, Some(&caller), meta);
        let ctx = match meta {
            None => plain_context(&mut plain, s, &caller),
            Some(m) => {
                CallContext::shared(Some(caller.clone()), Some(m), s.workload().cloned(), proven)
            }
        };
        let call = CallInfo::with_context(deadline, ctx);
        let addr = s.address();
        match addr.as_deref() {
            Some(a) => {
                if let Err(e) = (entry.remote)(a, lf.payload, reply, Some(permit), call, observed) {
                    debug!(actor = %target, message = lf.name, error = %e, "delivery failed");
                }
            }
            None => {
                if let Some(r) = reply {
                    r.fail(WireError::Stopped);
                }
            }
        }
    }
}
