//! Length-delimited frames: a little-endian `u32` length, then that many bytes.
//!
//! [`FrameDecoder`] is a plain state machine (bytes in, frames out) so that tests drive it
//! without a network; [`FrameReader`] wraps it around any `AsyncRead` such as a QUIC
//! stream. A length above the configured maximum is refused before anything is
//! allocated for it.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest maximum frame size a configuration may choose (16 MiB).
pub const MAX_FRAME_LIMIT: usize = crate::codec::DECODE_LIMIT;
/// The default maximum frame size (4 MiB).
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;
/// Bytes taken by the length prefix.
pub const LEN_PREFIX: usize = 4;

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced a frame larger than this endpoint accepts.
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({have} of {need} bytes received)")]
    Truncated {
        /// Bytes of the frame (prefix included) that arrived.
        have: usize,
        /// Bytes the frame needed.
        need: usize,
    },
    /// Reading from the stream failed.
    #[error("stream read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into frames, refusing any frame above `max` bytes.
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    buf: BytesMut,
}

impl FrameDecoder {
    /// A decoder that accepts frames of at most `max` bytes (clamped to [`MAX_FRAME_LIMIT`]).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.min(MAX_FRAME_LIMIT),
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer that a reader appends to directly.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame body, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < LEN_PREFIX + len {
            // Memory grows only as bytes arrive (the reader adds 64 KiB at a time): a
            // length prefix alone reserves nothing.
            return Ok(None);
        }
        self.buf.advance(LEN_PREFIX);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Call at end of stream: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = if self.buf.len() >= LEN_PREFIX {
            LEN_PREFIX
                + u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize
        } else {
            LEN_PREFIX
        };
        Err(FrameError::Truncated {
            have: self.buf.len(),
            need,
        })
    }
}

/// Reads frames from an async byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `inner`, accepting frames of at most `max` bytes.
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            decoder: FrameDecoder::new(max),
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            let buf = self.decoder.buffer_mut();
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 * 1024);
            }
            if self.inner.read_buf(buf).await? == 0 {
                self.decoder.finish()?;
                return Ok(None);
            }
        }
    }

    /// The next frame if one is already buffered, without reading.
    pub fn try_next_buffered(&mut self) -> Result<Option<Bytes>, FrameError> {
        self.decoder.next_frame()
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Starts a frame in `buf`: writes a placeholder length and returns where it stands.
#[inline]
pub fn begin_frame(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; LEN_PREFIX]);
    start
}

/// Completes the frame started at `start`, writing its length. If the body is larger than
/// `max`, the frame is removed from `buf` again and an error is returned.
#[inline]
pub fn finish_frame(buf: &mut Vec<u8>, start: usize, max: usize) -> Result<(), FrameError> {
    let len = buf.len() - start - LEN_PREFIX;
    if len > max {
        buf.truncate(start);
        return Err(FrameError::TooLarge { len, max });
    }
    buf[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Writes one frame holding `body` into `buf`.
pub fn push_frame(buf: &mut Vec<u8>, body: &[u8], max: usize) -> Result<(), FrameError> {
    let start = begin_frame(buf);
    buf.extend_from_slice(body);
    finish_frame(buf, start, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads() {
        let mut wire = Vec::new();
        push_frame(&mut wire, b"hello", 100).unwrap();
        push_frame(&mut wire, b"", 100).unwrap();
        push_frame(&mut wire, b"world!", 100).unwrap();
        let mut d = FrameDecoder::new(100);
        let mut out = Vec::new();
        for byte in &wire {
            d.extend(std::slice::from_ref(byte));
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, vec![&b"hello"[..], &b""[..], &b"world!"[..]]);
        d.finish().unwrap();
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocation() {
        let mut d = FrameDecoder::new(1024);
        d.extend(&u32::MAX.to_le_bytes());
        match d.next_frame() {
            Err(FrameError::TooLarge { len, max: 1024 }) => assert_eq!(len, u32::MAX as usize),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(d.buffer_mut().capacity() < 1024 * 1024);
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut d = FrameDecoder::new(100);
        d.extend(&10u32.to_le_bytes());
        d.extend(b"abc");
        assert!(d.next_frame().unwrap().is_none());
        assert!(matches!(
            d.finish(),
            Err(FrameError::Truncated { have: 7, need: 14 })
        ));
    }

    #[test]
    fn writer_refuses_oversized_body_and_leaves_buffer_clean() {
        let mut buf = b"keep".to_vec();
        assert!(push_frame(&mut buf, &[0; 11], 10).is_err());
        assert_eq!(buf, b"keep");
    }

    #[tokio::test]
    async fn reader_over_async_stream() {
        let mut wire = Vec::new();
        for i in 0..100u32 {
            push_frame(&mut wire, &i.to_le_bytes(), 16).unwrap();
        }
        let mut r = FrameReader::new(&wire[..], 16);
        for i in 0..100u32 {
            assert_eq!(r.next().await.unwrap().unwrap(), &i.to_le_bytes()[..]);
        }
        assert!(r.next().await.unwrap().is_none());
    }
}
