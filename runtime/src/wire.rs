//! The frames of actormesh streams, as plain functions over byte buffers.
//!
//! A user lane is a unidirectional stream from one node to one actor on another node. Its
//! first frame names the target actor; every later frame is a tell or an ask. Replies to
//! asks travel on one reply stream per direction. All multi-byte integers are
//! little-endian; message names are at most 255 bytes.
//!
//! Protocol version 2 adds two lane frame kinds, a tell and an ask with a **metadata
//! block** after the kind (and, for an ask, its id and deadline):
//!
//! ```text
//! flags u8 | len u16 | body (len bytes)
//!   flags: 1 trace · 2 workload · 4 attempt · 8 user entries · 16 JSON payload and reply
//!   body, in flag order: trace id [16] span id [8] trace flags u8 · workload len u8, bytes
//!     · attempt u32 · entries count u16, then per entry: propagate u8, key len u16, key,
//!       value len u16, value
//! ```
//!
//! A call with nothing to say goes in the version 1 kinds, byte for byte as before, so the
//! plain path costs nothing and a version 1 peer is sent exactly the format it reads.
//! Unknown flag bits are skipped with the rest of the body (`len` bounds it). The receiver
//! enforces [`METADATA_LIMIT`] (1 KiB) with [`MetadataError::TooLarge`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use actormesh_transport::codec::{self, CodecError};

use crate::call::{CallMeta, MetadataError, TraceContext, METADATA_LIMIT, WORKLOAD_LIMIT};

/// First frame of a stream: what the stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamHeader {
    /// Tells and asks for the actor named `target`. `id` is unique per sending process;
    /// the receiver reports it back in [`Control::LaneDone`] once it has read the lane to
    /// its end.
    Lane {
        /// Lane id chosen by the sender.
        id: u64,
        /// The target actor's name.
        target: String,
    },
    /// Replies to asks sent by the receiving node.
    Replies,
}

const HEADER_LANE: u8 = 1;
const HEADER_REPLIES: u8 = 2;
const KIND_TELL: u8 = 1;
const KIND_ASK: u8 = 2;
const KIND_TELL_META: u8 = 3;
const KIND_ASK_META: u8 = 4;
const META_TRACE: u8 = 1;
const META_WORKLOAD: u8 = 2;
const META_ATTEMPT: u8 = 4;
const META_ENTRIES: u8 = 8;
const META_JSON: u8 = 16;
const REPLY_OK: u8 = 0;
const REPLY_ERR: u8 = 1;

/// A frame that does not follow this format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed frame: {0}")]
pub struct Malformed(pub &'static str);

/// Encodes a stream header frame body.
pub fn encode_header(h: &StreamHeader) -> Vec<u8> {
    match h {
        StreamHeader::Lane { id, target } => {
            let mut v = Vec::with_capacity(9 + target.len());
            v.push(HEADER_LANE);
            v.extend_from_slice(&id.to_le_bytes());
            v.extend_from_slice(target.as_bytes());
            v
        }
        StreamHeader::Replies => vec![HEADER_REPLIES],
    }
}

/// Decodes a stream header frame body.
pub fn decode_header(b: &[u8]) -> Result<StreamHeader, Malformed> {
    match b.split_first() {
        Some((&HEADER_LANE, rest)) => {
            let mut rest = rest;
            let id = take(&mut rest, 8, "lane header too short for its id")?;
            let id = u64::from_le_bytes(id.try_into().map_err(|_| Malformed("lane id"))?);
            let target =
                std::str::from_utf8(rest).map_err(|_| Malformed("lane target is not UTF-8"))?;
            Ok(StreamHeader::Lane {
                id,
                target: target.to_string(),
            })
        }
        Some((&HEADER_REPLIES, [])) => Ok(StreamHeader::Replies),
        _ => Err(Malformed("unknown stream header")),
    }
}

fn push_name(buf: &mut Vec<u8>, name: &str) {
    debug_assert!(
        name.len() <= 255,
        "message names are checked at compile time"
    );
    buf.push(name.len() as u8);
    buf.extend_from_slice(name.as_bytes());
}

/// Appends a tell frame body: the message name, then the encoded message.
#[inline]
pub fn encode_tell<M: Serialize>(buf: &mut Vec<u8>, name: &str, msg: &M) -> Result<(), CodecError> {
    buf.push(KIND_TELL);
    push_name(buf, name);
    codec::encode_into(msg, buf)
}

/// Appends an ask frame body: correlation id, remaining time in ms, name, message.
#[inline]
pub fn encode_ask<M: Serialize>(
    buf: &mut Vec<u8>,
    corr: u64,
    timeout_ms: u32,
    name: &str,
    msg: &M,
) -> Result<(), CodecError> {
    buf.push(KIND_ASK);
    buf.extend_from_slice(&corr.to_le_bytes());
    buf.extend_from_slice(&timeout_ms.to_le_bytes());
    push_name(buf, name);
    codec::encode_into(msg, buf)
}

/// Appends a tell (`ask: None`) or ask (`Some((corr, timeout_ms))`) frame body with the
/// metadata block `meta` (version 2), or in the version 1 format when `meta` is `None`.
/// `payload` appends the encoded message. The block must have passed `CallMeta::check`.
pub(crate) fn encode_call(
    buf: &mut Vec<u8>,
    ask: Option<(u64, u32)>,
    meta: Option<&CallMeta>,
    name: &str,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    let kind = match (ask.is_some(), meta.is_some()) {
        (false, false) => KIND_TELL,
        (true, false) => KIND_ASK,
        (false, true) => KIND_TELL_META,
        (true, true) => KIND_ASK_META,
    };
    buf.push(kind);
    if let Some((corr, ms)) = ask {
        buf.extend_from_slice(&corr.to_le_bytes());
        buf.extend_from_slice(&ms.to_le_bytes());
    }
    if let Some(m) = meta {
        encode_meta(buf, m);
    }
    push_name(buf, name);
    payload(buf)
}

fn push_u16(buf: &mut Vec<u8>, n: usize) {
    debug_assert!(n <= usize::from(u16::MAX), "checked against the limits");
    buf.extend_from_slice(&(n as u16).to_le_bytes());
}

/// Appends a metadata block. Lengths fit their fields once `CallMeta::check` passed.
fn encode_meta(buf: &mut Vec<u8>, m: &CallMeta) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0]);
    let mut flags = 0;
    if let Some(t) = &m.trace {
        flags |= META_TRACE;
        buf.extend_from_slice(&t.trace_id);
        buf.extend_from_slice(&t.span_id);
        buf.push(t.flags);
    }
    if let Some(w) = &m.workload {
        flags |= META_WORKLOAD;
        buf.push(w.len().min(WORKLOAD_LIMIT) as u8);
        buf.extend_from_slice(&w.as_bytes()[..w.len().min(WORKLOAD_LIMIT)]);
    }
    if m.attempt != 0 {
        flags |= META_ATTEMPT;
        buf.extend_from_slice(&m.attempt.to_le_bytes());
    }
    if !m.metadata.is_empty() {
        flags |= META_ENTRIES;
        push_u16(buf, m.metadata.len());
        for (k, v, propagate) in m.metadata.iter() {
            buf.push(u8::from(propagate));
            push_u16(buf, k.len());
            buf.extend_from_slice(k.as_bytes());
            push_u16(buf, v.len());
            buf.extend_from_slice(v.as_bytes());
        }
    }
    if m.json {
        flags |= META_JSON;
    }
    let len = buf.len() - start - 3;
    buf[start] = flags;
    buf[start + 1..start + 3].copy_from_slice(&(len as u16).to_le_bytes());
}

fn malformed(what: &str) -> MetadataError {
    MetadataError::Malformed(what.to_string())
}

fn meta_take<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], MetadataError> {
    take(b, n, "").map_err(|_| malformed(what))
}

fn meta_u16(b: &mut &[u8], what: &str) -> Result<usize, MetadataError> {
    let v = meta_take(b, 2, what)?;
    Ok(usize::from(u16::from_le_bytes([v[0], v[1]])))
}

fn meta_str<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a str, MetadataError> {
    std::str::from_utf8(meta_take(b, n, what)?).map_err(|_| malformed(what))
}

/// Decodes a metadata block (as [`LaneFrame::meta`] holds it), enforcing the limits.
/// Nothing is allocated before the size of the entries has been checked.
/// Decodes a call's metadata block and checks its limits as a receiver does, keeping
/// nothing (what the fuzz targets and tests drive).
pub fn validate_meta(block: &[u8]) -> Result<(), MetadataError> {
    decode_meta(block).map(|_| ())
}

pub(crate) fn decode_meta(block: &[u8]) -> Result<CallMeta, MetadataError> {
    let mut b = block;
    let flags = meta_take(&mut b, 1, "no flags")?[0];
    let len = meta_u16(&mut b, "no length")?;
    let mut b = meta_take(&mut b, len, "shorter than its length")?;
    let mut meta = CallMeta {
        json: flags & META_JSON != 0,
        ..CallMeta::default()
    };
    if flags & META_TRACE != 0 {
        let t = meta_take(&mut b, 25, "trace context cut short")?;
        let mut trace = TraceContext {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: t[24],
        };
        trace.trace_id.copy_from_slice(&t[..16]);
        trace.span_id.copy_from_slice(&t[16..24]);
        meta.trace = Some(trace);
    }
    if flags & META_WORKLOAD != 0 {
        let n = usize::from(meta_take(&mut b, 1, "workload length missing")?[0]);
        meta.workload = Some(Arc::from(meta_str(
            &mut b,
            n,
            "workload cut short or not UTF-8",
        )?));
    }
    if flags & META_ATTEMPT != 0 {
        let a = meta_take(&mut b, 4, "attempt cut short")?;
        meta.attempt = u32::from_le_bytes([a[0], a[1], a[2], a[3]]);
    }
    if flags & META_ENTRIES != 0 {
        let count = meta_u16(&mut b, "entry count missing")?;
        // First pass: bounds and the size limit, borrowing; only then own the strings.
        let mut entries = Vec::new();
        let mut size = 0usize;
        for _ in 0..count {
            let propagate = meta_take(&mut b, 1, "entry cut short")?[0] != 0;
            let kl = meta_u16(&mut b, "key length missing")?;
            let k = meta_str(&mut b, kl, "key cut short or not UTF-8")?;
            let vl = meta_u16(&mut b, "value length missing")?;
            let v = meta_str(&mut b, vl, "value cut short or not UTF-8")?;
            if k.is_empty() {
                return Err(MetadataError::EmptyKey);
            }
            size += kl + vl;
            entries.push((k, v, propagate));
        }
        if size > METADATA_LIMIT {
            return Err(MetadataError::TooLarge {
                size,
                limit: METADATA_LIMIT,
            });
        }
        for (k, v, p) in entries {
            meta.metadata.push_decoded(k.to_string(), v.to_string(), p);
        }
    }
    Ok(meta)
}

/// A decoded lane frame; `payload` borrows the frame.
#[derive(Debug, PartialEq, Eq)]
pub struct LaneFrame<'a> {
    /// `Some((corr, timeout_ms))` for an ask, `None` for a tell.
    pub ask: Option<(u64, u32)>,
    /// The metadata block (flags, length and body) of a version 2 frame that has one.
    pub meta: Option<&'a [u8]>,
    /// The message name.
    pub name: &'a str,
    /// The encoded message.
    pub payload: &'a [u8],
}

fn take<'a>(b: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
    if b.len() < n {
        return Err(Malformed(what));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

/// Decodes a lane frame body of a link speaking protocol `version`: the frames with a
/// metadata block exist from version 2 on; a version 1 link refuses them as today's code
/// does (an unknown kind).
pub fn decode_lane(mut b: &[u8], version: u32) -> Result<LaneFrame<'_>, Malformed> {
    let kind = take(&mut b, 1, "empty lane frame")?[0];
    let with_meta = version >= 2 && (kind == KIND_TELL_META || kind == KIND_ASK_META);
    let kind = match kind {
        KIND_TELL_META if with_meta => KIND_TELL,
        KIND_ASK_META if with_meta => KIND_ASK,
        k => k,
    };
    let ask = match kind {
        KIND_TELL => None,
        KIND_ASK => {
            let corr = take(&mut b, 8, "ask frame too short for its id")?;
            let t = take(&mut b, 4, "ask frame too short for its deadline")?;
            Some((
                u64::from_le_bytes(corr.try_into().map_err(|_| Malformed("id"))?),
                u32::from_le_bytes(t.try_into().map_err(|_| Malformed("deadline"))?),
            ))
        }
        _ => return Err(Malformed("unknown lane frame kind")),
    };
    let meta = if with_meta {
        let head = b
            .get(1..3)
            .ok_or(Malformed("frame too short for its metadata block"))?;
        let len = 3 + usize::from(u16::from_le_bytes([head[0], head[1]]));
        Some(take(&mut b, len, "frame too short for its metadata block")?)
    } else {
        None
    };
    let len = take(&mut b, 1, "frame too short for its name length")?[0] as usize;
    let name = take(&mut b, len, "frame too short for its name")?;
    let name = std::str::from_utf8(name).map_err(|_| Malformed("message name is not UTF-8"))?;
    Ok(LaneFrame {
        ask,
        meta,
        name,
        payload: b,
    })
}

/// The error half of a reply, without the names the caller already knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireError {
    /// The actor stopped before replying.
    Stopped,
    /// The actor panicked before replying.
    Panicked,
    /// No actor by the lane's name.
    NoSuchActor,
    /// The actor (of this type) has no handler for the message name.
    UnknownMessage {
        /// The actor's Rust type.
        actor_type: String,
    },
    /// The callee refused the call.
    Rejected(String),
    /// The deadline passed before the message reached the actor.
    Timeout,
    /// The node's inbound gate refused the call before it took a mailbox place.
    Refused(crate::gate::Refusal),
}

/// Appends a successful reply frame body.
#[inline]
pub fn encode_reply_ok<R: Serialize>(
    buf: &mut Vec<u8>,
    corr: u64,
    value: &R,
) -> Result<(), CodecError> {
    buf.extend_from_slice(&corr.to_le_bytes());
    buf.push(REPLY_OK);
    codec::encode_into(value, buf)
}

/// Appends the status and value of a successful reply (what follows the correlation id),
/// as JSON when `json`.
pub(crate) fn encode_reply_ok_body<R: Serialize>(
    buf: &mut Vec<u8>,
    value: &R,
    json: bool,
) -> Result<(), CodecError> {
    buf.push(REPLY_OK);
    if json {
        serde_json::to_writer(&mut *buf, value).map_err(|e| CodecError::Encode(e.to_string()))
    } else {
        codec::encode_into(value, buf)
    }
}

/// Appends the status and error of an error reply (what follows the correlation id).
pub(crate) fn encode_reply_err_body(buf: &mut Vec<u8>, err: &WireError) -> Result<(), CodecError> {
    buf.push(REPLY_ERR);
    codec::encode_into(err, buf)
}

/// Decodes what follows the correlation id of a reply.
pub(crate) fn decode_reply_body(mut b: &[u8]) -> Result<Result<&[u8], WireError>, Malformed> {
    match take(&mut b, 1, "reply too short for its status")?[0] {
        REPLY_OK => Ok(Ok(b)),
        REPLY_ERR => codec::decode::<WireError>(b)
            .map(Err)
            .map_err(|_| Malformed("undecodable error reply")),
        _ => Err(Malformed("unknown reply status")),
    }
}

/// Appends an error reply frame body.
pub fn encode_reply_err(buf: &mut Vec<u8>, corr: u64, err: &WireError) -> Result<(), CodecError> {
    buf.extend_from_slice(&corr.to_le_bytes());
    buf.push(REPLY_ERR);
    codec::encode_into(err, buf)
}

/// A decoded reply: the correlation id and either the encoded value or the error.
pub fn decode_reply(mut b: &[u8]) -> Result<(u64, Result<&[u8], WireError>), Malformed> {
    let corr = take(&mut b, 8, "reply too short for its id")?;
    let corr = u64::from_le_bytes(corr.try_into().map_err(|_| Malformed("id"))?);
    Ok((corr, decode_reply_body(b)?))
}

/// Messages on the control stream of a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Tell me (with this id) when the named actor stops.
    Watch {
        /// Chosen by the watcher's node.
        id: u64,
        /// Actor name.
        target: String,
    },
    /// Forget watch `id`.
    Unwatch {
        /// The watch.
        id: u64,
    },
    /// The sender's lane `id` has been read to its end: everything sent on it has reached
    /// the target's mailbox (or been answered with an error). Only then does the sender
    /// open its next lane to that actor, so a new lane never overtakes an old one.
    LaneDone {
        /// The lane.
        id: u64,
    },
    /// The actor of watch `id` has stopped (or never existed).
    Terminated {
        /// The watch.
        id: u64,
        /// Why.
        reason: WatchEnd,
    },
}

/// Why a watched actor is gone, as sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchEnd {
    /// It stopped.
    Stopped,
    /// It stopped after a panic (and its policy did not restart it).
    Panicked,
    /// There was no such actor when the watch arrived.
    NoSuchActor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_frames_round_trip() {
        let mut b = Vec::new();
        encode_ask(&mut b, 42, 1500, "t.Ping/v1", &(1u8, "x")).unwrap();
        let f = decode_lane(&b, 1).unwrap();
        assert_eq!(f.ask, Some((42, 1500)));
        assert_eq!(f.name, "t.Ping/v1");
        assert_eq!(
            codec::decode::<(u8, String)>(f.payload).unwrap(),
            (1, "x".into())
        );
        b.clear();
        encode_tell(&mut b, "t.Note/v1", &7u32).unwrap();
        let f = decode_lane(&b, 1).unwrap();
        assert_eq!((f.ask, f.name), (None, "t.Note/v1"));
    }

    #[test]
    fn truncated_frames_are_malformed_not_panics() {
        let mut b = Vec::new();
        encode_ask(&mut b, 1, 2, "name", &3u8).unwrap();
        for cut in 0..12 {
            assert!(decode_lane(&b[..cut], 2).is_err(), "cut at {cut}");
        }
        assert!(decode_lane(&[9], 2).is_err());
        assert!(decode_reply(&[1, 2, 3]).is_err());
        assert!(decode_header(&[7]).is_err());
        assert!(decode_header(&[1, 2, 3]).is_err());
        let h = StreamHeader::Lane {
            id: 77,
            target: "sink".into(),
        };
        assert_eq!(decode_header(&encode_header(&h)).unwrap(), h);
    }

    #[test]
    fn replies_round_trip() {
        let mut b = Vec::new();
        encode_reply_ok(&mut b, 9, &"hi").unwrap();
        let (c, r) = decode_reply(&b).unwrap();
        assert_eq!(c, 9);
        assert_eq!(codec::decode::<String>(r.unwrap()).unwrap(), "hi");
        b.clear();
        encode_reply_err(&mut b, 10, &WireError::Panicked).unwrap();
        assert_eq!(decode_reply(&b).unwrap(), (10, Err(WireError::Panicked)));
    }

    fn full_meta() -> CallMeta {
        CallMeta {
            trace: Some(TraceContext {
                trace_id: [7; 16],
                span_id: [9; 8],
                flags: 1,
            }),
            workload: Some(Arc::from("shop/ratings")),
            attempt: 3,
            metadata: crate::Metadata::new()
                .with_propagated("tenant", "acme")
                .with("k", "v"),
            json: true,
        }
    }

    #[test]
    fn frames_with_metadata_round_trip() {
        let meta = full_meta();
        let mut b = Vec::new();
        encode_call(&mut b, Some((5, 900)), Some(&meta), "t.Ping/v1", |b| {
            codec::encode_into(&1u8, b)
        })
        .unwrap();
        let f = decode_lane(&b, 2).unwrap();
        assert_eq!((f.ask, f.name), (Some((5, 900)), "t.Ping/v1"));
        assert_eq!(codec::decode::<u8>(f.payload).unwrap(), 1);
        assert_eq!(decode_meta(f.meta.unwrap()).unwrap(), meta);
        b.clear();
        encode_call(&mut b, None, Some(&CallMeta::default()), "t.N/v1", |b| {
            codec::encode_into(&2u8, b)
        })
        .unwrap();
        let f = decode_lane(&b, 2).unwrap();
        assert_eq!(f.ask, None);
        assert_eq!(decode_meta(f.meta.unwrap()).unwrap(), CallMeta::default());
    }

    #[test]
    fn a_plain_call_is_the_version_1_format_byte_for_byte() {
        let (mut v1, mut v2) = (Vec::new(), Vec::new());
        encode_ask(&mut v1, 4, 100, "t.Ping/v1", &7u32).unwrap();
        encode_call(&mut v2, Some((4, 100)), None, "t.Ping/v1", |b| {
            codec::encode_into(&7u32, b)
        })
        .unwrap();
        assert_eq!(v1, v2);
        let f = decode_lane(&v2, 2).unwrap();
        assert_eq!(f.meta, None);
    }

    #[test]
    fn a_version_1_link_refuses_frames_with_metadata() {
        let mut b = Vec::new();
        encode_call(&mut b, Some((1, 1)), Some(&full_meta()), "n", |_| Ok(())).unwrap();
        assert_eq!(
            decode_lane(&b, 1),
            Err(Malformed("unknown lane frame kind"))
        );
    }

    #[test]
    fn truncated_metadata_never_panics() {
        let mut b = Vec::new();
        encode_call(&mut b, Some((1, 2)), Some(&full_meta()), "name", |b| {
            codec::encode_into(&3u8, b)
        })
        .unwrap();
        for cut in 0..b.len() {
            if let Ok(f) = decode_lane(&b[..cut], 2) {
                let _ = f.meta.map(decode_meta);
            }
        }
        let block = {
            let f = decode_lane(&b, 2).unwrap();
            f.meta.unwrap().to_vec()
        };
        for cut in 0..block.len() {
            assert!(decode_meta(&block[..cut]).is_err(), "cut at {cut}");
        }
        // A body that claims more entries than it holds, or lengths past its end.
        let mut forged = block.clone();
        let n = forged.len();
        forged[n - 1] = 0xff;
        let _ = decode_meta(&forged);
        assert!(decode_meta(&[META_ENTRIES, 2, 0, 0xff, 0xff]).is_err());
    }

    #[test]
    fn metadata_over_the_limit_is_refused_by_the_receiver() {
        // Built by hand: the sender's check would refuse to encode it.
        let mut md = crate::Metadata::new();
        md.insert("a", "x".repeat(600)).insert("b", "y".repeat(600));
        let meta = CallMeta {
            metadata: md,
            ..CallMeta::default()
        };
        assert!(matches!(meta.check(), Err(MetadataError::TooLarge { .. })));
        let mut b = Vec::new();
        encode_call(&mut b, Some((1, 1)), Some(&meta), "n", |_| Ok(())).unwrap();
        let f = decode_lane(&b, 2).unwrap();
        assert_eq!(
            decode_meta(f.meta.unwrap()),
            Err(MetadataError::TooLarge {
                size: 1202,
                limit: METADATA_LIMIT
            })
        );
    }

    #[test]
    fn unknown_flags_are_skipped_with_the_rest_of_the_block() {
        let block = [META_ATTEMPT | 0x80, 6, 0, 2, 0, 0, 0, 0xaa, 0xbb];
        let meta = decode_meta(&block).unwrap();
        assert_eq!(meta.attempt, 2);
    }
}
