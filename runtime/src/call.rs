//! The context a call carries: deadline, trace context, the caller's asserted workload,
//! attempt number and user metadata ([`Metadata`]); how a handler reads it ([`CallInfo`]);
//! and what an outgoing call inherits from the call being handled ([`plan`]).
//!
//! The plain path costs little: a call with no context and no options carries no block
//! and builds no [`CallMeta`]; a handler's context is the deadline and one shared
//! [`CallContext`], built once per lane and target (or per actor, for calls from its own
//! node), so a plain call clones one `Arc` or none. The context is one thread-local, set
//! while a handler runs and while a [`CallInfo::scope`]d future is polled, so a call reads
//! it with one thread-local access.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use actormesh_transport::SpiffeId;

/// The most bytes of keys and values that a call's user metadata may hold, in all.
pub const METADATA_LIMIT: usize = 1024;

/// The longest workload name a call may assert, in bytes.
pub const WORKLOAD_LIMIT: usize = 255;

/// Call metadata that breaks a limit or does not follow the wire format. The sender
/// refuses it before sending ([`crate::AskError::InvalidMetadata`]); the receiver refuses
/// it too (an ask is answered `Rejected` with this message, a tell is dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MetadataError {
    /// The keys and values hold more bytes than the limit.
    #[error("user metadata holds {size} bytes of keys and values, over the {limit}-byte limit")]
    TooLarge {
        /// Bytes of keys and values.
        size: usize,
        /// The limit ([`METADATA_LIMIT`]).
        limit: usize,
    },
    /// A key is the empty string.
    #[error("a metadata key is empty")]
    EmptyKey,
    /// The asserted workload name is too long.
    #[error("the caller's workload name is {len} bytes, over the {WORKLOAD_LIMIT}-byte limit")]
    WorkloadTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The block's bytes do not follow the format.
    #[error("malformed metadata block: {0}")]
    Malformed(String),
}

/// W3C trace context (`traceparent`): the trace, the caller's span and the trace flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace id (16 bytes, not all zero in a valid trace).
    pub trace_id: [u8; 16],
    /// The caller's span id (8 bytes).
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// The `traceparent` header value: `00-<trace id>-<span id>-<flags>` in lowercase hex.
    pub fn traceparent(&self) -> String {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: String,
    value: String,
    propagate: bool,
}

/// User metadata of a call: string pairs, each marked whether it travels on to the calls
/// a handler makes (like W3C baggage). At most [`METADATA_LIMIT`] bytes of keys and values
/// in all; a key appears once (inserting it again replaces it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<Entry>,
}

/// Metadata of a call without any.
pub(crate) static NO_METADATA: Metadata = Metadata::new();

impl Metadata {
    /// No entries.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    fn put(&mut self, key: String, value: String, propagate: bool) {
        match self.entries.iter_mut().find(|e| e.key == key) {
            Some(e) => {
                e.value = value;
                e.propagate = propagate;
            }
            None => self.entries.push(Entry {
                key,
                value,
                propagate,
            }),
        }
    }

    /// Sets `key` for this call only: the callee sees it, the calls it makes do not.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.put(key.into(), value.into(), false);
        self
    }

    /// Sets `key` so that it travels on to the calls the callee makes while handling it.
    pub fn insert_propagated(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> &mut Self {
        self.put(key.into(), value.into(), true);
        self
    }

    /// [`Metadata::insert`], by value.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// [`Metadata::insert_propagated`], by value.
    pub fn with_propagated(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert_propagated(key, value);
        self
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }

    /// Whether `key` is set and travels on to further calls.
    pub fn is_propagated(&self, key: &str) -> bool {
        self.entries.iter().any(|e| e.key == key && e.propagate)
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.entries.iter().position(|e| e.key == key)?;
        Some(self.entries.remove(i).value)
    }

    /// Every entry as `(key, value, propagate)`, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, bool)> {
        self.entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str(), e.propagate))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of keys and values, the measure of [`METADATA_LIMIT`].
    pub fn size(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.key.len() + e.value.len())
            .sum()
    }

    /// Checks the limits a sender and a receiver enforce.
    pub fn check(&self) -> Result<(), MetadataError> {
        if self.entries.iter().any(|e| e.key.is_empty()) {
            return Err(MetadataError::EmptyKey);
        }
        let size = self.size();
        if size > METADATA_LIMIT {
            return Err(MetadataError::TooLarge {
                size,
                limit: METADATA_LIMIT,
            });
        }
        Ok(())
    }

    /// Only the entries marked to propagate.
    fn propagated(&self) -> Metadata {
        Metadata {
            entries: self
                .entries
                .iter()
                .filter(|e| e.propagate)
                .cloned()
                .collect(),
        }
    }

    pub(crate) fn push_decoded(&mut self, key: String, value: String, propagate: bool) {
        self.put(key, value, propagate);
    }
}

/// The metadata block of one call frame (everything but the deadline, which ask frames
/// carry in every version).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CallMeta {
    pub(crate) trace: Option<TraceContext>,
    /// The workload the sending node asserts for the caller; not proven.
    pub(crate) workload: Option<Arc<str>>,
    pub(crate) attempt: u32,
    pub(crate) metadata: Metadata,
    /// The payload and the reply are JSON, not the binary codec.
    pub(crate) json: bool,
}

impl CallMeta {
    /// Whether the block says nothing (a frame then goes without one).
    pub(crate) fn is_empty(&self) -> bool {
        self.trace.is_none()
            && self.workload.is_none()
            && self.attempt == 0
            && self.metadata.is_empty()
            && !self.json
    }

    /// The limits, checked by the sender before it sends and by the receiver.
    pub(crate) fn check(&self) -> Result<(), MetadataError> {
        if let Some(w) = &self.workload {
            if w.len() > WORKLOAD_LIMIT {
                return Err(MetadataError::WorkloadTooLong { len: w.len() });
            }
        }
        self.metadata.check()
    }
}

/// The deadline of the call being handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// None (a tell).
    #[default]
    None,
    /// An instant: a remote ask's time left, counted from when its frame was read.
    At(Instant),
    /// A local ask's timeout, not yet read against the clock: the first reader pins it
    /// (so a plain local ask reads no clock). It may overstate the time left by the time
    /// the message waited in the mailbox.
    Within(Duration),
}

/// What a handler knows about the call it is handling: the deadline, the caller node's
/// verified identity, the workload the caller asserts, the attempt number, the trace
/// context and the metadata. Cheap to clone (the deadline and one `Arc`).
///
/// Read it with [`CallInfo::current`] in a handler. In an asynchronous handler, take it
/// before the first `.await` and run the future inside [`CallInfo::scope`], so that the
/// future (and every ask it makes, which then inherits the deadline and the propagated
/// metadata) sees it after `.await` too:
///
/// ```text
/// #[actormesh::handler]
/// impl Handler<Get> for Ratings {
///     type Result = ResponseFuture<Rating>;
///     fn handle(&mut self, m: Get, _: &mut Context<Self>) -> Self::Result {
///         let info = CallInfo::current().expect("in a handler");
///         let reviews = self.reviews.clone();
///         Box::pin(info.scope(async move {
///             let left = CallInfo::current().and_then(|c| c.remaining());
///             // This ask inherits the remaining deadline and the propagated metadata.
///             let r = reviews.ask(Count(m.product)).await.unwrap_or(0);
///             Rating { stars: r, left }
///         }))
///     }
/// }
/// ```
#[derive(Debug, Clone, Default)]
pub struct CallInfo {
    deadline: Deadline,
    /// Everything but the deadline, shared: a lane or an actor builds the context of its
    /// plain calls once, so a call only clones one `Arc` (or none) to carry it.
    ctx: Option<Arc<CallContext>>,
}

/// The part of a call's context that does not change from call to call on one lane (or
/// for one actor): who calls, what the call carries, and who handles it.
#[derive(Debug, Default)]
pub(crate) struct CallContext {
    caller: Option<Arc<SpiffeId>>,
    meta: Option<Arc<CallMeta>>,
    /// The workload of the actor handling the call: what its own calls assert.
    handler_workload: Option<Arc<str>>,
    /// The workload the block asserts is proven: this node asserted it, or the node's
    /// inbound gate vouched that the calling node hosts it.
    proven: bool,
}

impl CallContext {
    /// The shared context, `None` when it would say nothing.
    pub(crate) fn shared(
        caller: Option<Arc<SpiffeId>>,
        meta: Option<Arc<CallMeta>>,
        handler_workload: Option<Arc<str>>,
        proven: bool,
    ) -> Option<Arc<Self>> {
        if caller.is_none() && meta.is_none() && handler_workload.is_none() {
            return None;
        }
        Some(Arc::new(Self {
            caller,
            meta,
            handler_workload,
            proven,
        }))
    }
}

thread_local! {
    /// The call whose handler runs on this thread right now.
    static CURRENT: Cell<Option<CallInfo>> = const { Cell::new(None) };
}

impl CallInfo {
    #[cfg(test)]
    pub(crate) fn new(
        deadline: Deadline,
        caller: Option<Arc<SpiffeId>>,
        meta: Option<Arc<CallMeta>>,
        handler_workload: Option<Arc<str>>,
    ) -> Self {
        let proven = caller.is_none();
        Self::with_context(
            deadline,
            CallContext::shared(caller, meta, handler_workload, proven),
        )
    }

    /// The context of calls made on behalf of workload `workload` (`namespace/name`)
    /// outside any handler: run the future that makes them in [`CallInfo::scope`], and they
    /// assert it as the calls of an actor spawned with that workload do (a gateway's
    /// requests, say). A receiving node believes it only of a node that hosts the
    /// workload's service, as always.
    pub fn acting_as(workload: &str) -> CallInfo {
        Self::with_context(
            Deadline::None,
            CallContext::shared(None, None, Some(Arc::from(workload)), true),
        )
    }

    /// A call with `deadline` and a context shared with other calls.
    #[inline]
    pub(crate) fn with_context(deadline: Deadline, ctx: Option<Arc<CallContext>>) -> Self {
        Self { deadline, ctx }
    }

    /// Whether it says nothing at all (then a handler runs without a context).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.deadline == Deadline::None && self.ctx.is_none()
    }

    #[inline]
    fn meta(&self) -> Option<&CallMeta> {
        self.ctx.as_ref()?.meta.as_deref()
    }

    /// The call being handled: inside a handler (until it returns), or inside a future
    /// run by [`CallInfo::scope`]. `None` elsewhere.
    pub fn current() -> Option<CallInfo> {
        CURRENT.with(|c| {
            let mut info = c.take()?;
            // Pinned once, so every reader (and the future it is moved into) counts down
            // from the same instant.
            if let Deadline::Within(d) = info.deadline {
                info.deadline = Deadline::At(Instant::now() + d);
            }
            let copy = info.clone();
            c.set(Some(info));
            Some(copy)
        })
    }

    /// Runs `f` with the call being handled, if any, without cloning it or pinning its
    /// deadline: the cheapest way to read, say, the handler's workload.
    #[inline]
    pub fn with_current<R>(f: impl FnOnce(Option<&CallInfo>) -> R) -> R {
        CURRENT.with(|c| {
            let info = c.take();
            let out = f(info.as_ref());
            c.set(info);
            out
        })
    }

    /// The context an outgoing call inherits; reads no clock.
    #[inline]
    pub(crate) fn ambient() -> Option<CallInfo> {
        CURRENT.with(|c| {
            let info = c.take()?;
            let copy = info.clone();
            c.set(Some(info));
            Some(copy)
        })
    }

    /// Runs `fut` with this call as its context: [`CallInfo::current`] inside it returns
    /// this, and asks made inside it inherit its deadline and propagated metadata.
    pub fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        Scoped {
            info: Some(self),
            fut: Box::pin(fut),
        }
    }

    /// Runs `f` (a handler) with this call as the thread's context, restoring the previous
    /// one afterwards, even on unwind.
    #[inline]
    pub(crate) fn enter<R>(self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<CallInfo>);
        impl Drop for Restore {
            #[inline]
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|c| c.set(previous));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(Some(self))));
        f()
    }

    /// The time left before the caller's deadline (zero once it passed); `None` for a tell.
    pub fn remaining(&self) -> Option<Duration> {
        match self.deadline {
            Deadline::None => None,
            Deadline::At(t) => Some(t.saturating_duration_since(Instant::now())),
            Deadline::Within(d) => Some(d),
        }
    }

    /// The caller's deadline, if the call has one.
    pub fn deadline(&self) -> Option<Instant> {
        match self.deadline {
            Deadline::None => None,
            Deadline::At(t) => Some(t),
            Deadline::Within(d) => Some(Instant::now() + d),
        }
    }

    /// The verified identity of the node that sent the call, from the certificate of the
    /// link it came on; `None` for a call from this node.
    pub fn caller_node(&self) -> Option<&SpiffeId> {
        self.ctx.as_ref()?.caller.as_deref()
    }

    /// The workload the sending node asserts for the caller (e.g. `shop/ratings`), proven
    /// or not: any node of the trust domain can assert any workload. Authorize on
    /// [`CallInfo::workload`] (or [`CallInfo::caller_node`]) instead.
    pub fn asserted_workload(&self) -> Option<&str> {
        self.meta()?.workload.as_deref()
    }

    /// The caller's workload (`namespace/name`), proven: asserted by this node for one of
    /// its own actors, or asserted by the calling node while the mesh's pushed registry
    /// says that node hosts an instance of it (its certificate proves the node). `None`
    /// when the call asserts none, or asserts one its node is not known to host.
    pub fn workload(&self) -> Option<&str> {
        let ctx = self.ctx.as_ref()?;
        if ctx.caller.is_some() && !ctx.proven {
            return None;
        }
        ctx.meta.as_ref()?.workload.as_deref()
    }

    /// The workload of the actor handling this call (`SpawnOptions::workload`): what the
    /// calls it makes assert, and what a caller-side route matches `source` against.
    pub fn handler_workload(&self) -> Option<&str> {
        self.ctx.as_ref()?.handler_workload.as_deref()
    }

    /// The attempt number the caller gave (0 when it gave none; retries count up).
    pub fn attempt(&self) -> u32 {
        self.meta().map_or(0, |m| m.attempt)
    }

    /// The trace context the call carries.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.meta()?.trace.as_ref()
    }

    /// The call's user metadata.
    pub fn metadata(&self) -> &Metadata {
        self.meta().map_or(&NO_METADATA, |m| &m.metadata)
    }

    /// Whether the payload and the reply of this call are JSON.
    pub(crate) fn is_json(&self) -> bool {
        self.meta().is_some_and(|m| m.json)
    }
}

/// A future run with a call as its context ([`CallInfo::scope`]): the call is the thread's
/// context while the future is polled, so reading it costs every call one thread-local
/// read, whether in a handler or in a scoped future.
struct Scoped<F> {
    /// The call, between polls (pinned by the first reader like a handler's).
    info: Option<CallInfo>,
    fut: Pin<Box<F>>,
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        /// Puts the previous context back and keeps this one for the next poll, even if
        /// the future panics.
        struct Entered<'a> {
            info: &'a mut Option<CallInfo>,
            previous: Option<CallInfo>,
        }
        impl Drop for Entered<'_> {
            fn drop(&mut self) {
                let previous = self.previous.take();
                *self.info = CURRENT.with(|c| c.replace(previous));
            }
        }
        let Scoped { info, fut } = &mut *self;
        let previous = CURRENT.with(|c| c.replace(info.take()));
        let _entered = Entered { info, previous };
        fut.as_mut().poll(cx)
    }
}

/// Options of one call: `RemoteRef::ask_with_options`, `tell_with_options`, `ask_json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// The time the call may take; the node's default when `None`. A call made while
    /// handling one never gets longer than the time that call has left.
    pub timeout: Option<Duration>,
    /// User metadata. Entries of the call being handled that are marked to propagate are
    /// added; an entry here replaces one of the same key.
    pub metadata: Metadata,
    /// The attempt number (retries count up from 0).
    pub attempt: u32,
    /// The trace context; the call being handled's when `None`.
    pub trace: Option<TraceContext>,
}

/// What an outgoing call carries, decided by [`plan`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outgoing {
    /// The time the call may take: its own, or less if the call being handled has less left.
    pub(crate) timeout: Duration,
    /// The block to send, `None` when it would say nothing.
    pub(crate) meta: Option<CallMeta>,
}

/// Decides what an outgoing call carries from the call being handled (`ambient`), the
/// call's options and its own timeout. Like gRPC: the deadline is inherited unless the
/// call's own is shorter; metadata marked to propagate travels on; the workload asserted
/// is the handling actor's. `now` is read only when an inherited deadline needs it.
pub(crate) fn plan(
    ambient: Option<&CallInfo>,
    options: &CallOptions,
    own_timeout: Duration,
    json: bool,
    now: impl FnOnce() -> Instant,
) -> Outgoing {
    Outgoing {
        timeout: outgoing_timeout(ambient, options, own_timeout, now),
        meta: outgoing_meta(ambient, options, json),
    }
}

/// The time an outgoing ask may take: its own (the options', else `own`), or what the call
/// being handled has left if that is less.
pub(crate) fn outgoing_timeout(
    ambient: Option<&CallInfo>,
    options: &CallOptions,
    own: Duration,
    now: impl FnOnce() -> Instant,
) -> Duration {
    let timeout = options.timeout.unwrap_or(own);
    match ambient.map(|a| a.deadline) {
        None | Some(Deadline::None) => timeout,
        Some(Deadline::At(t)) => timeout.min(t.saturating_duration_since(now())),
        Some(Deadline::Within(d)) => timeout.min(d),
    }
}

/// The metadata block of an outgoing call, `None` when it would say nothing.
pub(crate) fn outgoing_meta(
    ambient: Option<&CallInfo>,
    options: &CallOptions,
    json: bool,
) -> Option<CallMeta> {
    let mut meta = CallMeta {
        trace: options.trace,
        workload: None,
        attempt: options.attempt,
        metadata: Metadata::new(),
        json,
    };
    if let Some(a) = ambient.and_then(|a| a.ctx.as_deref()) {
        meta.workload = a.handler_workload.clone();
        if let Some(m) = &a.meta {
            meta.metadata = m.metadata.propagated();
            meta.trace = meta.trace.or(m.trace);
        }
    }
    for e in &options.metadata.entries {
        meta.metadata
            .put(e.key.clone(), e.value.clone(), e.propagate);
    }
    (!meta.is_empty()).then_some(meta)
}

/// Options of a call that gave none.
pub(crate) const NO_OPTIONS: CallOptions = CallOptions {
    timeout: None,
    metadata: Metadata::new(),
    attempt: 0,
    trace: None,
};

// ---------------------------------------------------------------- what a call made now carries

/// The metadata block a call sends; `None` when it would say nothing.
pub(crate) type Block = Option<Arc<CallMeta>>;

/// What an ask made now carries: its timeout and block, from the call being handled (read
/// now, when the call is made, not when its future is first polled) and the options. The
/// plain path (no options, not inside a handler) carries nothing and reads no clock.
#[inline(always)]
pub(crate) fn ask_plan(
    options: Option<&CallOptions>,
    timeout: Duration,
) -> Result<(Duration, Block), MetadataError> {
    let ambient = CallInfo::ambient();
    if options.is_none() && ambient.is_none() {
        return Ok((timeout, None));
    }
    let o = plan(
        ambient.as_ref(),
        options.unwrap_or(&NO_OPTIONS),
        timeout,
        false,
        Instant::now,
    );
    match o.meta {
        None => Ok((o.timeout, None)),
        Some(m) => {
            m.check()?;
            Ok((o.timeout, Some(Arc::new(m))))
        }
    }
}

/// What a tell made now carries (see [`ask_plan`]).
#[inline(always)]
pub(crate) fn tell_block(options: Option<&CallOptions>) -> Result<Block, MetadataError> {
    let ambient = CallInfo::ambient();
    if options.is_none() && ambient.is_none() {
        return Ok(None);
    }
    match outgoing_meta(ambient.as_ref(), options.unwrap_or(&NO_OPTIONS), false) {
        None => Ok(None),
        Some(m) => {
            m.check()?;
            Ok(Some(Arc::new(m)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handling(deadline: Deadline, metadata: Metadata, workload: Option<&str>) -> CallInfo {
        CallInfo::new(
            deadline,
            None,
            Some(Arc::new(CallMeta {
                metadata,
                ..CallMeta::default()
            })),
            workload.map(Arc::from),
        )
    }

    #[test]
    fn a_plain_call_outside_a_handler_carries_nothing_and_reads_no_clock() {
        let out = plan(
            None,
            &CallOptions::default(),
            Duration::from_secs(5),
            false,
            || panic!("no clock"),
        );
        assert_eq!(
            out,
            Outgoing {
                timeout: Duration::from_secs(5),
                meta: None
            }
        );
    }

    #[test]
    fn the_remaining_deadline_is_inherited_unless_the_call_gives_a_shorter_one() {
        let t0 = Instant::now();
        let a = handling(
            Deadline::At(t0 + Duration::from_millis(300)),
            Metadata::new(),
            None,
        );
        let now = || t0 + Duration::from_millis(100);
        let out = plan(
            Some(&a),
            &CallOptions::default(),
            Duration::from_secs(5),
            false,
            now,
        );
        assert_eq!(out.timeout, Duration::from_millis(200));
        let shorter = CallOptions {
            timeout: Some(Duration::from_millis(50)),
            ..CallOptions::default()
        };
        assert_eq!(
            plan(Some(&a), &shorter, Duration::from_secs(5), false, now).timeout,
            Duration::from_millis(50)
        );
        let local = handling(
            Deadline::Within(Duration::from_millis(70)),
            Metadata::new(),
            None,
        );
        assert_eq!(
            plan(
                Some(&local),
                &CallOptions::default(),
                Duration::from_secs(5),
                false,
                || { panic!("a local deadline needs no clock") }
            )
            .timeout,
            Duration::from_millis(70)
        );
    }

    #[test]
    fn only_propagated_metadata_travels_on_and_the_call_s_own_entries_win() {
        let md = Metadata::new()
            .with_propagated("tenant", "acme")
            .with("secret", "x")
            .with_propagated("region", "eu");
        let a = handling(Deadline::None, md, Some("shop/ratings"));
        let opts = CallOptions {
            metadata: Metadata::new().with("region", "us"),
            ..CallOptions::default()
        };
        let out = plan(Some(&a), &opts, Duration::from_secs(1), false, Instant::now);
        let meta = out.meta.expect("a block");
        assert_eq!(meta.metadata.get("tenant"), Some("acme"));
        assert!(meta.metadata.is_propagated("tenant"));
        assert_eq!(meta.metadata.get("secret"), None);
        assert_eq!(meta.metadata.get("region"), Some("us"));
        assert!(!meta.metadata.is_propagated("region"));
        assert_eq!(meta.workload.as_deref(), Some("shop/ratings"));
    }

    #[test]
    fn limits_are_checked() {
        let mut md = Metadata::new();
        md.insert("k", "v".repeat(METADATA_LIMIT - 1));
        assert_eq!(md.check(), Ok(()));
        md.insert("k2", "v");
        assert_eq!(
            md.check(),
            Err(MetadataError::TooLarge {
                size: METADATA_LIMIT + 3,
                limit: METADATA_LIMIT
            })
        );
        assert_eq!(
            Metadata::new().with("", "v").check(),
            Err(MetadataError::EmptyKey)
        );
        let long = CallMeta {
            workload: Some(Arc::from("w".repeat(WORKLOAD_LIMIT + 1))),
            ..CallMeta::default()
        };
        assert_eq!(
            long.check(),
            Err(MetadataError::WorkloadTooLong {
                len: WORKLOAD_LIMIT + 1
            })
        );
    }

    #[test]
    fn a_local_deadline_is_pinned_once_by_its_first_reader() {
        let info = CallInfo::new(Deadline::Within(Duration::from_secs(60)), None, None, None);
        let (first, second) = info.enter(|| {
            let a = CallInfo::current().unwrap().deadline().unwrap();
            let b = CallInfo::current().unwrap().deadline().unwrap();
            (a, b)
        });
        assert_eq!(first, second);
        assert!(CallInfo::current().is_none(), "restored after the handler");
    }

    #[tokio::test]
    async fn a_scoped_future_sees_its_call_after_await() {
        let md = Metadata::new().with("k", "v");
        let info = handling(Deadline::None, md, None);
        let seen = info
            .scope(async {
                tokio::task::yield_now().await;
                CallInfo::current().map(|c| c.metadata().get("k").map(str::to_string))
            })
            .await;
        assert_eq!(seen, Some(Some("v".into())));
        assert!(CallInfo::current().is_none());
    }

    #[tokio::test]
    async fn a_scoped_local_deadline_is_pinned_once_across_polls() {
        let info = CallInfo::new(Deadline::Within(Duration::from_secs(60)), None, None, None);
        let (first, second) = info
            .scope(async {
                let a = CallInfo::current().unwrap().deadline().unwrap();
                tokio::task::yield_now().await;
                let b = CallInfo::current().unwrap().deadline().unwrap();
                (a, b)
            })
            .await;
        assert_eq!(first, second, "the time left counts down from one instant");
    }

    #[tokio::test]
    async fn a_panicking_scoped_future_leaves_no_context_behind() {
        use futures::FutureExt;
        let info = handling(Deadline::None, Metadata::new().with("k", "v"), None);
        let outcome = std::panic::AssertUnwindSafe(info.scope(async {
            tokio::task::yield_now().await;
            panic!("handler bug");
        }))
        .catch_unwind()
        .await;
        assert!(outcome.is_err());
        assert!(CallInfo::current().is_none(), "restored on unwind");
    }
}
