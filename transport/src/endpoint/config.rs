//! Endpoint settings and the QUIC transport parameters derived from them.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::VarInt;

use super::peers::Backoff;
use super::PROTOCOL_VERSION;
use crate::error::TransportError;
use crate::frame::{DEFAULT_MAX_FRAME, MAX_FRAME_LIMIT};

/// Settings of an [`Endpoint`](super::Endpoint).
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
    /// The highest protocol version spoken; the node speaks the one before too (only 1
    /// when this is 1). Set it to 1 to behave exactly as a node of the first release;
    /// tests set others to check the mismatch error.
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

    pub(super) fn validate(&self) -> Result<(), TransportError> {
        let err = |s: String| Err(TransportError::Config(s));
        if self.protocol_version == 0 {
            return err("protocol_version must be at least 1".into());
        }
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

    /// The dial backoff these settings describe.
    pub(super) fn dial_backoff(&self) -> Backoff {
        Backoff {
            initial: self.backoff_initial,
            max: self.backoff_max,
        }
    }
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
