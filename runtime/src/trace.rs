//! Spans of calls, in W3C trace context: a call that carries a sampled trace context gets
//! a server span where it arrives, and the calls its handler makes are the server span's
//! children. Client spans are the caller's (the mesh makes one per call by name). Finished
//! spans go to the node's [`SpanSink`] (the façade's OTLP exporter ships them); the
//! runtime knows no export format.
//!
//! Sampling is decided once, at the root of a trace (the first call that has no trace
//! context, by [`Tracing::sample`]), and followed by every hop after it (the `sampled`
//! flag, bit 0 of the trace flags). An unsampled root sends no context at all, so the 99 %
//! of calls a 1 % ratio leaves out stay on the plain path.

use std::sync::Arc;
use std::time::SystemTime;

use crate::call::TraceContext;
use crate::sample::OneIn;

/// Bit 0 of the trace flags: the trace is sampled.
pub const SAMPLED: u8 = 1;

/// Whether a span is the caller's or the callee's side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The caller's side.
    Client,
    /// The callee's side.
    Server,
}

/// A finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// Its parent (`None`: the trace's root).
    pub parent_span_id: Option<[u8; 8]>,
    /// Caller or callee.
    pub kind: SpanKind,
    /// The message name.
    pub name: String,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// `key = value` attributes (service, source, outcome...).
    pub attributes: Vec<(&'static str, String)>,
    /// The error the call ended with, if it failed.
    pub error: Option<String>,
}

/// Where finished spans go.
pub trait SpanSink: Send + Sync + 'static {
    /// Takes one finished span. Called on the call's path: it must not block (queue it).
    fn record(&self, span: Span);
}

/// A node's tracing: where spans go, and the share of root calls that start a trace.
#[derive(Clone)]
pub struct Tracing {
    sink: Arc<dyn SpanSink>,
    roots: Arc<OneIn>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("one_in", &self.roots.every())
            .finish_non_exhaustive()
    }
}

impl Tracing {
    /// Spans to `sink`; `ratio` of the root calls (0 < ratio ≤ 1) start a sampled trace:
    /// one in round(1 / ratio), counted per node, so a ratio is exact over any run.
    pub fn new(sink: Arc<dyn SpanSink>, ratio: f64) -> Result<Self, String> {
        Ok(Self {
            sink,
            roots: Arc::new(OneIn::new(ratio, "trace sampling ratio")?),
        })
    }

    /// Whether a root call starts a sampled trace.
    #[inline]
    pub fn sample(&self) -> bool {
        self.roots.take()
    }

    /// Hands a finished span to the sink.
    pub fn record(&self, span: Span) {
        self.sink.record(span);
    }
}

/// A fresh, random span id (never all zero).
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// A fresh, random trace id (never all zero).
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

/// Whether `ctx` says its trace is sampled.
#[inline]
pub fn is_sampled(ctx: &TraceContext) -> bool {
    ctx.flags & SAMPLED != 0
}

/// A span being recorded: finished with its outcome, or, dropped, as abandoned.
#[derive(Debug)]
pub struct OpenSpan {
    tracing: Tracing,
    span: Option<Span>,
}

impl OpenSpan {
    /// A span of `kind` for message `name` in trace `trace_id`, child of `parent`,
    /// starting now.
    pub fn start(
        tracing: &Tracing,
        kind: SpanKind,
        name: &str,
        trace_id: [u8; 16],
        parent: Option<[u8; 8]>,
    ) -> Self {
        let now = SystemTime::now();
        Self {
            tracing: tracing.clone(),
            span: Some(Span {
                trace_id,
                span_id: new_span_id(),
                parent_span_id: parent,
                kind,
                name: name.to_string(),
                start: now,
                end: now,
                attributes: Vec::new(),
                error: None,
            }),
        }
    }

    /// The context calls made inside this span carry: its trace, its id, sampled.
    pub fn context(&self) -> TraceContext {
        let s = self.span.as_ref().expect("an open span");
        TraceContext {
            trace_id: s.trace_id,
            span_id: s.span_id,
            flags: SAMPLED,
        }
    }

    /// Adds an attribute.
    pub fn attribute(&mut self, key: &'static str, value: impl Into<String>) {
        if let Some(s) = self.span.as_mut() {
            s.attributes.push((key, value.into()));
        }
    }

    /// Ends the span now, with `outcome` (an attribute) and, if the call failed, its error.
    pub fn finish(mut self, outcome: &str, error: Option<String>) {
        if let Some(mut s) = self.span.take() {
            s.end = SystemTime::now();
            s.attributes.push(("outcome", outcome.to_string()));
            s.error = error;
            self.tracing.record(s);
        }
    }
}

impl Drop for OpenSpan {
    fn drop(&mut self) {
        if let Some(mut s) = self.span.take() {
            s.end = SystemTime::now();
            s.attributes.push(("outcome", "abandoned".to_string()));
            self.tracing.record(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Keep(Mutex<Vec<Span>>);

    impl SpanSink for Keep {
        fn record(&self, span: Span) {
            self.0.lock().unwrap().push(span);
        }
    }

    #[test]
    fn one_root_in_round_one_over_the_ratio_is_sampled() {
        let t = Tracing::new(Arc::new(Keep::default()), 0.25).unwrap();
        let sampled = (0..100).filter(|_| t.sample()).count();
        assert_eq!(sampled, 25);
        assert!(Tracing::new(Arc::new(Keep::default()), 0.0).is_err());
        let e = Tracing::new(Arc::new(Keep::default()), 1.5).unwrap_err();
        assert!(e.contains("at most 1"), "{e}");
    }

    #[test]
    fn a_span_ends_once_with_its_outcome_and_children_name_it_their_parent() {
        let keep = Arc::new(Keep::default());
        let t = Tracing::new(keep.clone(), 1.0).unwrap();
        let trace = new_trace_id();
        let mut parent = OpenSpan::start(&t, SpanKind::Server, "m/v1", trace, None);
        parent.attribute("service", "shop/cart");
        let ctx = parent.context();
        assert!(is_sampled(&ctx));
        let child = OpenSpan::start(
            &t,
            SpanKind::Client,
            "n/v1",
            ctx.trace_id,
            Some(ctx.span_id),
        );
        drop(child);
        parent.finish("timeout", Some("no reply within 1s".into()));
        let spans = keep.0.lock().unwrap();
        assert_eq!(spans.len(), 2);
        let (child, parent) = (&spans[0], &spans[1]);
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.parent_span_id, Some(parent.span_id));
        assert!(child.attributes.contains(&("outcome", "abandoned".into())));
        assert_eq!(parent.error.as_deref(), Some("no reply within 1s"));
        assert!(parent.attributes.contains(&("service", "shop/cart".into())));
        assert!(parent.end >= parent.start);
    }
}
