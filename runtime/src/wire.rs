//! The frames of actormesh streams, as plain functions over byte buffers.
//!
//! A user lane is a unidirectional stream from one node to one actor on another node. Its
//! first frame names the target actor; every later frame is a tell or an ask. Replies to
//! asks travel on one reply stream per direction. All multi-byte integers are
//! little-endian; message names are at most 255 bytes.

use serde::{Deserialize, Serialize};

use actormesh_transport::codec::{self, CodecError};

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

/// A decoded lane frame; `payload` borrows the frame.
#[derive(Debug, PartialEq, Eq)]
pub struct LaneFrame<'a> {
    /// `Some((corr, timeout_ms))` for an ask, `None` for a tell.
    pub ask: Option<(u64, u32)>,
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

/// Decodes a lane frame body.
pub fn decode_lane(mut b: &[u8]) -> Result<LaneFrame<'_>, Malformed> {
    let kind = take(&mut b, 1, "empty lane frame")?[0];
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
    let len = take(&mut b, 1, "frame too short for its name length")?[0] as usize;
    let name = take(&mut b, len, "frame too short for its name")?;
    let name = std::str::from_utf8(name).map_err(|_| Malformed("message name is not UTF-8"))?;
    Ok(LaneFrame {
        ask,
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
    match take(&mut b, 1, "reply too short for its status")?[0] {
        REPLY_OK => Ok((corr, Ok(b))),
        REPLY_ERR => codec::decode::<WireError>(b)
            .map(|e| (corr, Err(e)))
            .map_err(|_| Malformed("undecodable error reply")),
        _ => Err(Malformed("unknown reply status")),
    }
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
        let f = decode_lane(&b).unwrap();
        assert_eq!(f.ask, Some((42, 1500)));
        assert_eq!(f.name, "t.Ping/v1");
        assert_eq!(
            codec::decode::<(u8, String)>(f.payload).unwrap(),
            (1, "x".into())
        );
        b.clear();
        encode_tell(&mut b, "t.Note/v1", &7u32).unwrap();
        let f = decode_lane(&b).unwrap();
        assert_eq!((f.ask, f.name), (None, "t.Note/v1"));
    }

    #[test]
    fn truncated_frames_are_malformed_not_panics() {
        let mut b = Vec::new();
        encode_ask(&mut b, 1, 2, "name", &3u8).unwrap();
        for cut in 0..12 {
            assert!(decode_lane(&b[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_lane(&[9]).is_err());
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
}
