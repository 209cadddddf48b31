//! An OTLP/HTTP trace receiver on loopback, built on opentelemetry-proto's types: it
//! takes `POST /v1/traces` (protobuf) as a collector does and keeps every span, for the
//! tests that check what the exporter sent and for the benchmark's export.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;

/// One received span, with the `service.name` of the resource it came under.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The exporting resource's `service.name`.
    pub service: String,
    /// The span.
    pub span: opentelemetry_proto::tonic::trace::v1::Span,
}

/// A running receiver.
#[derive(Debug, Clone)]
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

/// What it has received.
#[derive(Debug, Default)]
struct State {
    /// Export requests.
    requests: u64,
    /// Spans in them, kept or only counted.
    received: u64,
    /// The spans, when it keeps them.
    spans: Vec<Received>,
}

impl Receiver {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The string value of attribute `key` in `attributes`, if it has one.
pub fn string_attribute(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

fn service_name(r: &opentelemetry_proto::tonic::trace::v1::ResourceSpans) -> String {
    r.resource
        .as_ref()
        .and_then(|res| string_attribute(&res.attributes, "service.name"))
        .unwrap_or_default()
}

impl Receiver {
    /// Listens on a loopback port the system picks, keeping every span; call inside a
    /// tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(true).await
    }

    /// Like [`Receiver::start`], but only counts the spans (for the benchmark: decoding
    /// them is the collector's work, keeping them is not).
    pub async fn start_counting() -> std::io::Result<Self> {
        Self::start_with(false).await
    }

    async fn start_with(keep_spans: bool) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let state = shared.clone();
                async move {
                    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                        return (
                            StatusCode::BAD_REQUEST,
                            [(header::CONTENT_TYPE, "text/plain")],
                            b"not an ExportTraceServiceRequest".to_vec(),
                        );
                    };
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    st.requests += 1;
                    for r in &req.resource_spans {
                        let service = service_name(r);
                        for span in r.scope_spans.iter().flat_map(|s| &s.spans) {
                            st.received += 1;
                            if keep_spans {
                                st.spans.push(Received {
                                    service: service.clone(),
                                    span: span.clone(),
                                });
                            }
                        }
                    }
                    drop(st);
                    (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state })
    }

    /// The base URL to give an exporter (`http://127.0.0.1:port`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.state().spans.clone()
    }

    /// Spans received so far (kept or only counted).
    pub fn received(&self) -> u64 {
        self.state().received
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        self.state().requests
    }
}
