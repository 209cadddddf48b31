//! Ships a node's finished spans ([`crate::trace`]) to an OpenTelemetry collector over
//! OTLP/HTTP with protobuf, through `opentelemetry-otlp` (no gRPC stack).
//!
//! [`OtlpExporter::start`] gives a [`SpanSink`] for `Tracing::new`. Recording a span only
//! queues it (a bounded channel of [`QUEUE`] spans; past it spans are dropped and
//! counted, never waited for). A thread of the exporter's own, with its own
//! current-thread tokio runtime, sends batches of up to [`BATCH`] spans of what has
//! queued, every [`POLL`]: it sleeps in between rather than wait on the queue, so that
//! recording a span never wakes a thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind as OtelKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;

use crate::trace::{Span, SpanKind, SpanSink};

/// Spans queued at most; past it, new spans are dropped (and counted).
pub const QUEUE: usize = 8192;
/// Spans sent in one request at most.
pub const BATCH: usize = 512;
/// How often the exporter takes what has queued (and sends it, in batches).
pub const POLL: Duration = Duration::from_millis(100);

/// The exporter: a [`SpanSink`] whose spans a background thread ships.
#[derive(Debug)]
pub struct OtlpExporter {
    queue: SyncSender<Span>,
    dropped: AtomicU64,
    queued: AtomicU64,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    endpoint: String,
}

/// The traces URL for `endpoint`: as given if it names `/v1/traces`, else that path added
/// to it (as `OTEL_EXPORTER_OTLP_ENDPOINT` works).
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let e = endpoint.trim();
    if !(e.starts_with("http://") || e.starts_with("https://")) {
        return Err(format!(
            "invalid OTLP endpoint {endpoint:?}: expected an http:// or https:// URL, e.g. http://127.0.0.1:4318"
        ));
    }
    if e.ends_with("/v1/traces") {
        Ok(e.to_string())
    } else {
        Ok(format!("{}/v1/traces", e.trim_end_matches('/')))
    }
}

fn otel_span(span: Span, scope: &InstrumentationScope) -> SpanData {
    let parent = span
        .parent_span_id
        .map_or(SpanId::INVALID, SpanId::from_bytes);
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(span.trace_id),
            SpanId::from_bytes(span.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: parent,
        parent_span_is_remote: span.kind == SpanKind::Server && span.parent_span_id.is_some(),
        span_kind: match span.kind {
            SpanKind::Client => OtelKind::Client,
            SpanKind::Server => OtelKind::Server,
        },
        name: span.name.into(),
        start_time: span.start,
        end_time: span.end,
        attributes: span
            .attributes
            .into_iter()
            .map(|(k, v)| KeyValue::new(k, v))
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match span.error {
            None => Status::Unset,
            Some(e) => Status::error(e),
        },
        instrumentation_scope: scope.clone(),
    }
}

impl OtlpExporter {
    /// Starts shipping spans to `endpoint` (e.g. `http://127.0.0.1:4318`), with
    /// `service_name` as the resource's `service.name` (a node's identity, say). Fails at
    /// once on an endpoint that is not an http(s) URL; an unreachable collector is
    /// reported (rate-limited) as exports fail, and its spans are lost.
    pub fn start(endpoint: &str, service_name: &str) -> Result<Arc<Self>, String> {
        let url = traces_url(endpoint)?;
        let (tx, rx) = mpsc::sync_channel::<Span>(QUEUE);
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let lost = failed.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (thread_url, name, counted) = (url.clone(), service_name.to_string(), sent.clone());
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start the exporter's runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let built = opentelemetry_otlp::SpanExporter::builder()
                        .with_http()
                        .with_protocol(Protocol::HttpBinary)
                        .with_endpoint(thread_url.clone())
                        .with_timeout(Duration::from_secs(5))
                        .build();
                    let mut exporter = match built {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("cannot build the OTLP exporter for {thread_url}: {e}")));
                            return;
                        }
                    };
                    exporter.set_resource(&Resource::builder_empty().with_service_name(name).build());
                    let _ = ready_tx.send(Ok(()));
                    let scope = InstrumentationScope::builder("actormesh").build();
                    let mut last_warning: Option<Instant> = None;
                    loop {
                        // Sleeps, then takes what queued: a recording never has to wake
                        // this thread (no futex on a call's path).
                        tokio::time::sleep(POLL).await;
                        let mut closed = false;
                        loop {
                            let mut batch = Vec::new();
                            while batch.len() < BATCH {
                                match rx.try_recv() {
                                    Ok(span) => batch.push(otel_span(span, &scope)),
                                    Err(TryRecvError::Empty) => break,
                                    Err(TryRecvError::Disconnected) => {
                                        closed = true;
                                        break;
                                    }
                                }
                            }
                            if batch.is_empty() {
                                break;
                            }
                            let n = batch.len() as u64;
                            match exporter.export(batch).await {
                                Ok(()) => {
                                    counted.fetch_add(n, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    lost.fetch_add(n, Ordering::Relaxed);
                                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                                        tracing::warn!(endpoint = %thread_url, error = %e, spans = n, "could not export spans");
                                        last_warning = Some(Instant::now());
                                    }
                                }
                            }
                        }
                        if closed {
                            return;
                        }
                    }
                });
            })
            .map_err(|e| format!("cannot start the exporter's thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the exporter's thread ended before it started".to_string())??;
        Ok(Arc::new(Self {
            queue: tx,
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            sent,
            failed,
            endpoint: url,
        }))
    }

    /// The traces URL it sends to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Spans the collector accepted.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Spans queued and not yet sent or given up on: 0 once everything recorded so far
    /// has been exported (or failed to be).
    pub fn pending(&self) -> u64 {
        let done = self.sent.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        self.queued.load(Ordering::Relaxed).saturating_sub(done)
    }

    /// Spans whose export failed.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl SpanSink for OtlpExporter {
    fn record(&self, span: Span) {
        match self.queue.try_send(span) {
            Ok(()) => self.queued.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_unless_given() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c/v1/traces").unwrap(),
            "https://c/v1/traces"
        );
        let e = traces_url("127.0.0.1:4318").unwrap_err();
        assert!(e.contains("http://"), "{e}");
    }
}
