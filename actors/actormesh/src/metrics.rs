//! A node's metrics in Prometheus form: the call figures the runtime and the mesh keep
//! ([`crate::stats`]), actors' mailboxes, every link's quinn statistics, and what other
//! layers add ([`register`]: the master's control-plane figures).
//!
//! Gathering reads atomics and short lists; nothing here is on a call's path. With the
//! `metrics` feature, [`encode`] writes the OpenMetrics or the classic text format
//! through `prometheus-client`, and a node with `NodeConfig::metrics_listen` serves both
//! at `/metrics`, chosen by the scraper's `Accept` header as Prometheus expects.
//!
//! | metric | labels |
//! |---|---|
//! | `actormesh_outbound_requests_total` (counter) | `source`, `service`, `message`, `outcome` |
//! | `actormesh_outbound_latency_seconds` (histogram) | `source`, `service`, `message` |
//! | `actormesh_outbound_in_flight` (gauge) | `source`, `service`, `message` |
//! | `actormesh_inbound_requests_total` (counter) | `source`, `service`, `message`, `outcome` |
//! | `actormesh_inbound_latency_seconds` (histogram) | `source`, `service`, `message` |
//! | `actormesh_inbound_in_flight` (gauge) | `source`, `service`, `message` |
//! | `actormesh_outbound_retries_total`, `actormesh_outbound_circuit_open_total` (counters) | `service` |
//! | `actormesh_outbound_endpoints`, `actormesh_outbound_endpoints_ejected`, `actormesh_outbound_breaker_open` (gauges) | `service` |
//! | `actormesh_handler_seconds` (histogram) | `service`, `message` |
//! | `actormesh_mailbox_depth`, `actormesh_mailbox_capacity` (gauges) | `actor`, `actor_type` |
//! | `actormesh_peer_rtt_seconds`, `actormesh_peer_open_streams`, `actormesh_peer_pending_asks` (gauges) | `peer`, `addr` |
//! | `actormesh_peer_sent_bytes_total`, `actormesh_peer_received_bytes_total`, `actormesh_peer_lost_packets_total` (counters) | `peer`, `addr` |
//!
//! Outbound figures are calls by name (`ServiceRef`), counted once per call whatever its
//! retries; `source` is the calling handler's workload, `client` on a client identity's
//! node, else `unknown`. Inbound figures are calls that reached an actor here, from
//! arrival (frame read) to reply; `service` is the actor's workload, or its Rust type when
//! it has none. The caps on label values are in [`crate::stats`].

use std::sync::{Arc, Mutex};

use crate::mesh::MeshFigures;
use crate::stats::HistogramSnapshot;
use crate::Node;

/// One sample's value.
#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(HistogramSnapshot),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug)]
struct Family {
    name: String,
    // Read by the encoder (the `metrics` feature).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    help: String,
    kind: Kind,
    samples: Vec<(Vec<(String, String)>, Value)>,
}

/// Metric families being gathered for one scrape, in the order first named.
#[derive(Debug, Default)]
pub struct Families {
    families: Vec<Family>,
}

impl Families {
    fn push(&mut self, name: &str, help: &str, kind: Kind, labels: &[(&str, &str)], v: Value) {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match self.families.iter_mut().find(|f| f.name == name) {
            Some(f) => {
                debug_assert_eq!(f.kind, kind, "{name} gathered as two kinds");
                f.samples.push((labels, v));
            }
            None => self.families.push(Family {
                name: name.to_string(),
                help: help.to_string(),
                kind,
                samples: vec![(labels, v)],
            }),
        }
    }

    /// A counter sample. `name` without `_total` (the encoder adds it).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.push(name, help, Kind::Counter, labels, Value::Counter(value));
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.push(name, help, Kind::Gauge, labels, Value::Gauge(value));
    }

    /// A histogram sample (in seconds, on [`crate::stats::LATENCY_BOUNDS`]).
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: &HistogramSnapshot,
    ) {
        self.push(
            name,
            help,
            Kind::Histogram,
            labels,
            Value::Histogram(value.clone()),
        );
    }

    /// The names gathered (for tests and checks).
    pub fn names(&self) -> Vec<&str> {
        self.families.iter().map(|f| f.name.as_str()).collect()
    }

    /// The value of counter or gauge `name` with exactly these labels (in any order).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.families
            .iter()
            .find(|f| f.name == name)?
            .samples
            .iter()
            .find(|(l, _)| {
                l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|(_, v)| match v {
                Value::Counter(n) => *n as f64,
                Value::Gauge(g) => *g,
                Value::Histogram(h) => h.count() as f64,
            })
    }
}

/// Something that adds figures to a node's metrics at each scrape.
pub trait Collect: Send + Sync + 'static {
    /// Adds this scrape's figures.
    fn collect(&self, out: &mut Families);
}

#[derive(Default)]
struct Collectors(Mutex<Vec<Arc<dyn Collect>>>);

/// Adds `collector`'s figures to `node`'s metrics from now on.
pub fn register(node: &Node, collector: Arc<dyn Collect>) {
    let c = node.extension(Collectors::default);
    c.0.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(collector);
}

/// Everything `node` shows, now.
pub fn gather(node: &Node) -> Families {
    let mut out = Families::default();
    if let Some(a) = node.find_extension::<crate::mesh::inbound::AuthzFigures>() {
        for (service, policy, decision, n) in a.snapshot() {
            out.counter(
                "actormesh_authz_decisions",
                "Calls an AuthorizationPolicy (or the mesh default) denied, or an AUDIT policy matched, where they arrived, by service and deciding policy.",
                &[
                    ("service", service.as_str()),
                    ("policy", policy.as_str()),
                    ("decision", decision),
                ],
                n,
            );
        }
    }
    if let Some(mesh) = node.find_extension::<MeshFigures>() {
        for (service, message, source, f) in mesh.snapshot() {
            let labels = [
                ("source", source.as_str()),
                ("service", service.as_str()),
                ("message", message.as_str()),
            ];
            calls(&mut out, "outbound", &labels, &f);
        }
        for p in mesh.policy() {
            let labels = [("service", p.service.as_str())];
            out.counter(
                "actormesh_outbound_retries",
                "Tries sent again by the service's route retries.",
                &labels,
                p.retries,
            );
            out.counter(
                "actormesh_outbound_circuit_open",
                "Calls the service's circuit breaker refused at once.",
                &labels,
                p.circuit_open,
            );
            out.gauge(
                "actormesh_outbound_endpoints",
                "Endpoints of the service in this node's route table.",
                &labels,
                p.endpoints as f64,
            );
            out.gauge(
                "actormesh_outbound_endpoints_ejected",
                "Endpoints of the service this node ejects now (passive health, outlier detection).",
                &labels,
                p.ejected as f64,
            );
            if let Some(open) = p.breaker_open {
                out.gauge(
                    "actormesh_outbound_breaker_open",
                    "1 while the service's circuit breaker is tripped open, else 0.",
                    &labels,
                    f64::from(u8::from(open)),
                );
            }
        }
    }
    for row in node.server_figures() {
        for (source, f) in &row.sources {
            let labels = [
                ("source", source.as_str()),
                ("service", row.destination.as_str()),
                ("message", row.message.as_str()),
            ];
            calls(&mut out, "inbound", &labels, f);
        }
        if row.handler_time.count() > 0 {
            out.histogram(
                "actormesh_handler_seconds",
                "Time a handler ran, from taking the message off the mailbox to returning.",
                &[
                    ("service", row.destination.as_str()),
                    ("message", row.message.as_str()),
                ],
                &row.handler_time,
            );
        }
    }
    for a in node.actor_figures() {
        let labels = [
            ("actor", a.name.as_str()),
            ("actor_type", a.actor_type.as_str()),
        ];
        out.gauge(
            "actormesh_mailbox_depth",
            "Messages queued for the actor or being handled.",
            &labels,
            a.mailbox_depth as f64,
        );
        out.gauge(
            "actormesh_mailbox_capacity",
            "Mailbox places of the actor.",
            &labels,
            a.mailbox_capacity as f64,
        );
    }
    for p in node.peer_figures() {
        let addr = p.addr.to_string();
        let labels = [("peer", p.identity.as_str()), ("addr", addr.as_str())];
        out.gauge(
            "actormesh_peer_rtt_seconds",
            "The link's current round-trip estimate (quinn).",
            &labels,
            p.rtt.as_secs_f64(),
        );
        out.counter(
            "actormesh_peer_sent_bytes",
            "UDP bytes sent on the link.",
            &labels,
            p.sent_bytes,
        );
        out.counter(
            "actormesh_peer_received_bytes",
            "UDP bytes received on the link.",
            &labels,
            p.received_bytes,
        );
        out.counter(
            "actormesh_peer_lost_packets",
            "Packets of the link declared lost.",
            &labels,
            p.lost_packets,
        );
        out.gauge(
            "actormesh_peer_open_streams",
            "Lanes (streams to remote actors) open to the peer.",
            &labels,
            p.open_lanes as f64,
        );
        out.gauge(
            "actormesh_peer_pending_asks",
            "Asks sent to the peer that wait for their reply.",
            &labels,
            p.pending_asks as f64,
        );
    }
    if let Some(c) = node.find_extension::<Collectors>() {
        let list = c.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for collector in list {
            collector.collect(&mut out);
        }
    }
    out
}

fn calls(
    out: &mut Families,
    direction: &str,
    labels: &[(&str, &str); 3],
    f: &crate::stats::StatsSnapshot,
) {
    let (requests, latency, in_flight) = match direction {
        "outbound" => (
            "actormesh_outbound_requests",
            "actormesh_outbound_latency_seconds",
            "actormesh_outbound_in_flight",
        ),
        _ => (
            "actormesh_inbound_requests",
            "actormesh_inbound_latency_seconds",
            "actormesh_inbound_in_flight",
        ),
    };
    for (outcome, n) in &f.outcomes {
        let mut with = labels.to_vec();
        with.push(("outcome", outcome.as_str()));
        out.counter(
            requests,
            "Calls, by how they ended (ok or the kind of error).",
            &with,
            *n,
        );
    }
    if f.latency.count() > 0 {
        out.histogram(
            latency,
            "Call latency: outbound from the call by name to its outcome, inbound from arrival to the reply.",
            labels,
            &f.latency,
        );
    }
    out.gauge(
        in_flight,
        "Calls started and not ended.",
        labels,
        f.in_flight as f64,
    );
}

#[cfg(feature = "metrics")]
mod encoding {
    use std::net::SocketAddr;

    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::metrics::MetricType;
    use prometheus_client::registry::Registry;

    use super::{gather, Families, Kind, Value};
    use crate::stats::LATENCY_BOUNDS;
    use crate::{Node, WeakNode};

    /// The `Content-Type` of the OpenMetrics text format.
    pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    /// The `Content-Type` of the classic Prometheus text format.
    pub const CLASSIC: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

    #[derive(Debug)]
    struct Gathered(std::sync::Mutex<Option<Families>>);

    impl Collector for Gathered {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
            let Some(families) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                return Ok(());
            };
            for f in &families.families {
                let kind = match f.kind {
                    Kind::Counter => MetricType::Counter,
                    Kind::Gauge => MetricType::Gauge,
                    Kind::Histogram => MetricType::Histogram,
                };
                let mut metric = encoder.encode_descriptor(&f.name, &f.help, None, kind)?;
                for (labels, value) in &f.samples {
                    let sample = metric.encode_family(labels)?;
                    match value {
                        Value::Counter(n) => ConstCounter::new(*n).encode(sample)?,
                        Value::Gauge(g) => ConstGauge::new(*g).encode(sample)?,
                        Value::Histogram(h) => {
                            let mut sample = sample;
                            let buckets: Vec<(f64, u64)> = h
                                .buckets
                                .iter()
                                .enumerate()
                                .map(|(i, n)| {
                                    (LATENCY_BOUNDS.get(i).copied().unwrap_or(f64::INFINITY), *n)
                                })
                                .collect();
                            sample.encode_histogram::<NoLabelSet>(
                                h.sum_seconds(),
                                h.count(),
                                &buckets,
                                None,
                            )?
                        }
                    }
                }
            }
            Ok(())
        }
    }

    /// `node`'s metrics now, in OpenMetrics (`openmetrics`) or the classic text format.
    pub fn encode(node: &Node, openmetrics: bool) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Gathered(std::sync::Mutex::new(Some(gather(
            node,
        ))))));
        let mut out = String::new();
        let written = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        };
        // Writing to a String fails only if an encoder refuses a value; say so in the body
        // rather than serve half of it as if it were whole.
        if let Err(e) = written {
            return format!("# the metrics could not be encoded: {e}\n");
        }
        out
    }

    /// Whether a scraper's `Accept` header asks for OpenMetrics.
    pub fn wants_openmetrics(accept: Option<&str>) -> bool {
        accept.is_some_and(|a| {
            a.split(',')
                .any(|part| part.trim().starts_with("application/openmetrics-text"))
        })
    }

    fn serve(node: &Node, addr: SocketAddr) -> Result<SocketAddr, String> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
        let weak = node.downgrade();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let weak: WeakNode = weak.clone();
                async move {
                    let accept = headers
                        .get(axum::http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok());
                    let open = wants_openmetrics(accept);
                    let Some(node) = weak.upgrade() else {
                        return (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            [(axum::http::header::CONTENT_TYPE, "text/plain")],
                            "the node stopped\n".to_string(),
                        );
                    };
                    let body = encode(&node, open);
                    let ty = if open { OPENMETRICS } else { CLASSIC };
                    (
                        axum::http::StatusCode::OK,
                        [(axum::http::header::CONTENT_TYPE, ty)],
                        body,
                    )
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "the metrics server stopped");
            }
        });
        tracing::info!(addr = %bound, "serving metrics at /metrics");
        Ok(bound)
    }

    inventory::submit! {
        actormesh_runtime::MetricsServer { serve }
    }
}

#[cfg(feature = "metrics")]
pub use encoding::{encode, wants_openmetrics, CLASSIC, OPENMETRICS};
