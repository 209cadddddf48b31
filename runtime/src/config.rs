//! A node's settings.

use std::net::SocketAddr;
use std::time::Duration;

use actormesh_transport::EndpointConfig;

/// Stream priority of lanes to system actors (names starting with `$`, such as the
/// master's `$master`): heartbeats and membership are sent before user traffic on the same
/// link, second only to the control stream.
pub const PRIORITY_SYSTEM: i32 = 50;

/// Settings of a [`Node`](crate::Node).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Transport settings (listen address, timeouts, frame size, windows). Its
    /// `retire_after` also bounds how long the runtime waits for a replaced link to drain.
    pub endpoint: EndpointConfig,
    /// Deadline of `ask` when none is given.
    pub default_ask_timeout: Duration,
    /// Mailbox bound of actors spawned without their own.
    pub mailbox_capacity: usize,
    /// Unsent bytes a lane may buffer before `tell` waits and `try_tell` reports `Full`.
    pub lane_high_water: usize,
    /// A lane (the stream to one remote actor) unused for this long is closed; the next
    /// message opens a new one. Keeps the number of streams to what is in use.
    pub lane_idle_close: Duration,
    /// Keep call figures (requests, outcomes, latency, calls in flight, handler time, by
    /// source and message): what `/metrics` and `actormesh top` show. Off, a call pays one
    /// branch for them. Set when `metrics_listen` is.
    pub metrics: bool,
    /// Serve Prometheus metrics at `/metrics` on this TCP address (with `metrics`). Needs
    /// a metrics server built in: the `actormesh` façade's `metrics` feature provides it.
    pub metrics_listen: Option<SocketAddr>,
    /// Write an access log: one structured line per call that arrives here (tracing target
    /// `actormesh::access`, level info), for this share of the calls (0 < share ≤ 1: one
    /// call in round(1 / share)). Off by default; on, the node keeps call figures too.
    pub access_log: Option<f64>,
    /// Trace calls: a server span for every call that arrives with a sampled trace
    /// context, and the sampling of roots for the mesh's client spans. Off by default; on,
    /// the node keeps call figures too.
    pub tracing: Option<crate::trace::Tracing>,
}

impl NodeConfig {
    /// Defaults for a node listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        let mut endpoint = EndpointConfig::new(listen);
        // Asks to a node that died fail as Unreachable once its link times out.
        endpoint.idle_timeout = Duration::from_secs(5);
        endpoint.keep_alive = Duration::from_secs(1);
        Self {
            endpoint,
            default_ask_timeout: Duration::from_secs(5),
            mailbox_capacity: 1024,
            lane_high_water: 1024 * 1024,
            lane_idle_close: Duration::from_secs(30),
            metrics: false,
            metrics_listen: None,
            access_log: None,
            tracing: None,
        }
    }
}
