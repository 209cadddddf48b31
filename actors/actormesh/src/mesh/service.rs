//! [`ServiceRef`]: calls by service name. Each call picks an endpoint from the node's
//! current route table with the service's balancer, calls the endpoint's cached
//! [`RemoteRef`] directly (no proxy mailbox, no lock: the table is read through an
//! `ArcSwap`), and records the outcome and latency in the endpoint's live state.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mesh::balance::{stable_hash, Admission, EndpointState, Outcome, PickInput, SplitMix64};
use crate::mesh::calls::Plan;
use crate::mesh::clock;
use crate::mesh::figures::ServiceFigures;
use crate::mesh::proxy::Routes;
use crate::mesh::registry::ServiceName;
use crate::mesh::route::{ServiceRoutes, ShardIndex};
use crate::stats::Outcome as Figure;
use crate::trace::{self, OpenSpan, SpanKind, Tracing};
use crate::transport::codec;
use crate::{
    AskError, CallInfo, CallOptions as RuntimeCallOptions, Metadata, RemoteMessage, RemoteRef,
    TellError,
};

/// Options of a call by name.
///
/// Made while handling a call, a call by name also inherits that call's remaining deadline
/// and its metadata marked to propagate (see [`crate::CallInfo`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// The deadline (`None`: the node's default ask timeout).
    pub timeout: Option<Duration>,
    /// The key a `hash` balancer maps to an endpoint (`None`: a random endpoint).
    pub hash_key: Option<u64>,
    /// User metadata sent with the call (at most [`crate::METADATA_LIMIT`] bytes).
    pub metadata: Metadata,
    /// The trace context the call continues (e.g. an HTTP `traceparent`); `None`: the
    /// handled call's, or, on a node that traces, a new trace if this root is sampled.
    pub trace: Option<crate::TraceContext>,
}

impl CallOptions {
    /// With this deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// With this hash key: calls with the same key reach the same endpoint while it is
    /// there (under the `hash` balancer). The key is hashed the same way on every node.
    pub fn hash_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.hash_key = Some(stable_hash(key.as_ref()));
        self
    }

    /// With this metadata entry, seen by the callee only.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// With this metadata entry, passed on by the callee to the calls it makes (like W3C
    /// baggage).
    pub fn propagated(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert_propagated(key, value);
        self
    }

    /// Continuing this trace context.
    pub fn trace(mut self, context: crate::TraceContext) -> Self {
        self.trace = Some(context);
        self
    }

    /// The runtime's options for one call, or `None` when a plain call says the same.
    fn runtime(&self, timeout: Duration) -> Option<RuntimeCallOptions> {
        (!self.metadata.is_empty() || self.trace.is_some()).then(|| RuntimeCallOptions {
            timeout: Some(timeout),
            metadata: self.metadata.clone(),
            trace: self.trace,
            ..RuntimeCallOptions::default()
        })
    }
}

/// The error of a call to a service with no endpoint to call.
pub fn no_endpoints(service: &ServiceName) -> AskError {
    AskError::NoEndpoints {
        service: service.to_string(),
    }
}

thread_local! {
    // Per thread, so picks share no cache line; seeded from the std's random keys.
    static RANDOM: Cell<SplitMix64> = Cell::new(SplitMix64({
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        h.finish()
    }));
}

/// Runs `f` with this thread's random numbers.
#[inline]
pub(crate) fn with_random<T>(f: impl FnOnce(&mut SplitMix64) -> T) -> T {
    RANDOM.with(|cell| {
        let mut random = cell.get();
        let out = f(&mut random);
        cell.set(random);
        out
    })
}

/// A service, called by name. Cheap to clone; made by [`crate::mesh::Mesh::service`].
#[derive(Clone)]
pub struct ServiceRef {
    name: ServiceName,
    shard: ShardIndex,
    routes: Routes,
    default_timeout: Duration,
    options: CallOptions,
    /// The service's client-side figures, when the node keeps figures.
    figures: Option<ServiceFigures>,
    /// The node's tracing, when it traces (it keeps figures then).
    tracing: Option<Tracing>,
}

impl std::fmt::Debug for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRef")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A call started on a picked endpoint.
struct Started {
    routes: Arc<ServiceRoutes<RemoteRef>>,
    index: usize,
    admission: Admission,
    started: Instant,
}

impl Started {
    fn in_flight(&self) -> InFlight<'_> {
        InFlight {
            state: self.routes.state(self.index),
            admission: self.admission,
            started: self.started,
            done: false,
        }
    }
}

/// One call in flight on an endpoint: its outcome goes into the endpoint's state, or, if
/// the caller drops the call, the call is forgotten (and a probe it was is released).
pub(crate) struct InFlight<'a> {
    state: &'a EndpointState,
    admission: Admission,
    started: Instant,
    done: bool,
}

impl<'a> InFlight<'a> {
    /// A call started now on the endpoint of `state` (already counted by `start`).
    pub(crate) fn new(state: &'a EndpointState, admission: Admission) -> Self {
        Self::started_at(state, admission, Instant::now())
    }

    /// A call started at `started` on the endpoint of `state`.
    pub(crate) fn started_at(
        state: &'a EndpointState,
        admission: Admission,
        started: Instant,
    ) -> Self {
        Self {
            state,
            admission,
            started,
            done: false,
        }
    }

    /// The call ended with `outcome`; `waited` if it waited for an answer (a latency
    /// sample). Under outlier detection an ejection is capped by its shares. Returns when
    /// it ended, in the cores' nanoseconds.
    pub(crate) fn finish(
        self,
        outcome: Outcome,
        waited: bool,
        routes: &ServiceRoutes<RemoteRef>,
    ) -> crate::mesh::balance::Nanos {
        clock::nanos(self.finish_at(outcome, waited, routes))
    }

    /// As [`InFlight::finish`], returning when it ended.
    pub(crate) fn finish_at(
        mut self,
        outcome: Outcome,
        waited: bool,
        routes: &ServiceRoutes<RemoteRef>,
    ) -> Instant {
        self.done = true;
        let end = Instant::now();
        let config = routes.config();
        self.state.finish_capped(
            self.admission,
            outcome,
            waited.then(|| end - self.started),
            clock::nanos(end),
            config.decay,
            &routes.health(),
            || routes.may_eject(),
        );
        end
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.state.abandon(self.admission);
        }
    }
}

pub(crate) fn ask_outcome<R>(r: &Result<R, AskError>) -> Outcome {
    match r {
        Ok(_) => Outcome::Success,
        // Sent, then the link went: whether the endpoint got it is unknown.
        Err(AskError::Unreachable { sent: true, .. }) => Outcome::Unknown,
        // Nothing serves there: as good as unreachable for this endpoint.
        Err(AskError::Unreachable { .. } | AskError::NoSuchActor { .. }) => Outcome::Unreachable,
        Err(AskError::Timeout { .. }) => Outcome::Unknown,
        Err(_) => Outcome::Failed,
    }
}

fn tell_outcome<M>(r: &Result<(), TellError<M>>) -> Outcome {
    match r {
        Ok(()) => Outcome::Success,
        Err(TellError::Unreachable(..) | TellError::NoSuchActor(_)) => Outcome::Unreachable,
        Err(_) => Outcome::Failed,
    }
}

/// Ends a client span with the call's outcome.
fn finish_span<T>(span: OpenSpan, result: &Result<T, AskError>) {
    match result {
        Ok(_) => span.finish("ok", None),
        Err(e) => span.finish(Figure::of_error(e).as_str(), Some(e.to_string())),
    }
}

/// How a tell counts in the figures.
fn tell_figure<M>(r: &Result<(), TellError<M>>) -> Figure {
    match r {
        Ok(()) => Figure::Ok,
        Err(TellError::Full(_)) => Figure::MailboxFull,
        Err(TellError::Unreachable(..)) => Figure::Unreachable,
        Err(TellError::NoSuchActor(_)) => Figure::NoSuchActor,
        Err(TellError::UnknownMessage(_)) => Figure::UnknownMessage,
        Err(TellError::Encode(..)) => Figure::Rejected,
        Err(TellError::NotDelivered(..)) => Figure::NotDelivered,
    }
}

impl ServiceRef {
    pub(crate) fn new(
        name: ServiceName,
        routes: Routes,
        default_timeout: Duration,
        figures: Option<ServiceFigures>,
        tracing: Option<Tracing>,
    ) -> Self {
        Self {
            tracing,
            shard: ShardIndex::of(&name),
            name,
            routes,
            default_timeout,
            options: CallOptions::default(),
            figures,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &ServiceName {
        &self.name
    }

    /// The same service with these options for every call made through it.
    pub fn with_options(mut self, options: CallOptions) -> Self {
        self.options = options;
        self
    }

    /// The options in force.
    pub fn options(&self) -> &CallOptions {
        &self.options
    }

    /// The service's routes in the current table.
    #[inline]
    fn routes_now(&self) -> Option<Arc<ServiceRoutes<RemoteRef>>> {
        self.routes
            .load()
            .service_in(self.shard, &self.name)
            .cloned()
    }

    /// Picks an endpoint of `routes` for one call (no policy), and starts the call on it.
    fn start_on(
        &self,
        routes: Arc<ServiceRoutes<RemoteRef>>,
        key: Option<u64>,
        started: Instant,
    ) -> Option<Started> {
        let now = clock::nanos(started);
        let picked = with_random(|random| routes.pick(PickInput { now, key, random }))?;
        routes.state(picked.index).start();
        Some(Started {
            routes,
            index: picked.index,
            admission: picked.admission,
            started,
        })
    }

    /// Asks an endpoint of the service, with the deadline of this reference's options (the
    /// node's default without one).
    pub async fn ask<M: RemoteMessage>(&self, msg: M) -> Result<M::Result, AskError> {
        self.call(msg, &self.options, true).await
    }

    /// Asks, waiting at most `timeout`.
    pub async fn ask_timeout<M: RemoteMessage>(
        &self,
        msg: M,
        timeout: Duration,
    ) -> Result<M::Result, AskError> {
        let options = self.options.clone().timeout(timeout);
        self.call(msg, &options, true).await
    }

    /// Asks with `options` for this call.
    pub async fn ask_with<M: RemoteMessage>(
        &self,
        msg: M,
        options: &CallOptions,
    ) -> Result<M::Result, AskError> {
        self.call(msg, options, true).await
    }

    /// Like [`ServiceRef::ask_timeout`], but fails at once with [`AskError::MailboxFull`]
    /// when the picked endpoint's mailbox (or the lane to its node) is full.
    pub async fn try_ask<M: RemoteMessage>(
        &self,
        msg: M,
        timeout: Duration,
    ) -> Result<M::Result, AskError> {
        let options = self.options.clone().timeout(timeout);
        self.call(msg, &options, false).await
    }

    #[inline]
    async fn call<M: RemoteMessage>(
        &self,
        msg: M,
        options: &CallOptions,
        wait_for_room: bool,
    ) -> Result<M::Result, AskError> {
        // One clock read for the endpoint's latency estimate and the call's figures.
        let started = Instant::now();
        let mut ended = None;
        let Some(f) = &self.figures else {
            return self
                .call_inner(msg, options, wait_for_room, started, &mut ended)
                .await;
        };
        let timer = f.begin_at(M::NAME, started);
        let result = match self.client_span(M::NAME, options) {
            None => {
                self.call_inner(msg, options, wait_for_room, started, &mut ended)
                    .await
            }
            Some(span) => {
                let traced = options.clone().trace(span.context());
                let result = self
                    .call_inner(msg, &traced, wait_for_room, started, &mut ended)
                    .await;
                finish_span(span, &result);
                result
            }
        };
        timer.finish_at(Figure::of(&result), ended.unwrap_or_else(Instant::now));
        result
    }

    /// The service's policy counters, when the node keeps figures.
    fn counters(&self) -> Option<Arc<crate::mesh::figures::PolicyCounters>> {
        self.figures.as_ref().map(|f| f.policy().clone())
    }

    /// A client span for a call of `message`, if the node traces and the call's trace is
    /// sampled: the trace it continues (its options', else the handled call's), or, at a
    /// root, a new one if the node's sampling picks it.
    fn client_span(&self, message: &str, options: &CallOptions) -> Option<OpenSpan> {
        let tracing = self.tracing.as_ref()?;
        let parent = options
            .trace
            .or_else(|| CallInfo::with_current(|c| c.and_then(|c| c.trace().copied())));
        let mut span = match parent {
            Some(p) if trace::is_sampled(&p) => OpenSpan::start(
                tracing,
                SpanKind::Client,
                message,
                p.trace_id,
                Some(p.span_id),
            ),
            // An unsampled trace is followed, not sampled again.
            Some(_) => return None,
            None if tracing.sample() => OpenSpan::start(
                tracing,
                SpanKind::Client,
                message,
                trace::new_trace_id(),
                None,
            ),
            None => return None,
        };
        span.attribute("service", self.name.to_string());
        Some(span)
    }

    /// A call by name started at `now`; `ended` is set to when it ended, if the endpoint's
    /// bookkeeping read the clock then (so the figures need not read it again).
    async fn call_inner<M: RemoteMessage>(
        &self,
        msg: M,
        options: &CallOptions,
        wait_for_room: bool,
        now: Instant,
        ended: &mut Option<Instant>,
    ) -> Result<M::Result, AskError> {
        let Some(routes) = self.routes_now() else {
            return Err(no_endpoints(&self.name));
        };
        if routes.policy().is_some() {
            // Boxed: the policy's state would otherwise weigh on every plain call's future.
            return Box::pin(self.ask_by_policy(msg, options, wait_for_room, routes)).await;
        }
        let Some(started) = self.start_on(routes, options.hash_key, now) else {
            return Err(no_endpoints(&self.name));
        };
        let call = started.in_flight();
        let target = started.routes.target(started.index);
        let timeout = options.timeout.unwrap_or(self.default_timeout);
        let result = match (options.runtime(timeout), wait_for_room) {
            (None, true) => target.ask_timeout(msg, timeout).await,
            (None, false) => target.try_ask(msg, timeout).await,
            (Some(o), true) => target.ask_with_options(msg, &o).await,
            (Some(o), false) => target.try_ask_with_options(msg, &o).await,
        };
        *ended = Some(call.finish_at(ask_outcome(&result), true, &started.routes));
        result
    }

    /// Calls the message named `message_name` with a JSON payload, without its Rust type
    /// (the CLI's `actormesh call` and the HTTP gateway); the reply comes back as JSON. Bad
    /// JSON is [`AskError::Rejected`] with the decoder's message, naming the field.
    pub async fn ask_json(
        &self,
        message_name: &str,
        payload: &serde_json::Value,
        options: &CallOptions,
    ) -> Result<serde_json::Value, AskError> {
        let Some(f) = &self.figures else {
            return self.ask_json_inner(message_name, payload, options).await;
        };
        let timer = f.begin(message_name);
        let result = match self.client_span(message_name, options) {
            None => self.ask_json_inner(message_name, payload, options).await,
            Some(span) => {
                let traced = options.clone().trace(span.context());
                let result = self.ask_json_inner(message_name, payload, &traced).await;
                finish_span(span, &result);
                result
            }
        };
        timer.finish(Figure::of(&result));
        result
    }

    async fn ask_json_inner(
        &self,
        message_name: &str,
        payload: &serde_json::Value,
        options: &CallOptions,
    ) -> Result<serde_json::Value, AskError> {
        let Some(routes) = self.routes_now() else {
            return Err(no_endpoints(&self.name));
        };
        if routes.policy().is_some() {
            return Box::pin(self.ask_json_by_policy(message_name, payload, options, routes)).await;
        }
        let Some(started) = self.start_on(routes, options.hash_key, Instant::now()) else {
            return Err(no_endpoints(&self.name));
        };
        let call = started.in_flight();
        let target = started.routes.target(started.index);
        let runtime = RuntimeCallOptions {
            timeout: Some(options.timeout.unwrap_or(self.default_timeout)),
            metadata: options.metadata.clone(),
            trace: options.trace,
            ..RuntimeCallOptions::default()
        };
        let result = target.ask_json(message_name, payload, &runtime).await;
        call.finish(ask_outcome(&result), true, &started.routes);
        result
    }

    /// Sends `msg` to an endpoint of the service without waiting for a reply
    /// (at-most-once, as [`RemoteRef::tell`]). Without an endpoint the message comes back
    /// as [`TellError::NotDelivered`] naming the service.
    pub async fn tell<M: RemoteMessage>(&self, msg: M) -> Result<(), TellError<M>> {
        let timer = self.figures.as_ref().map(|f| f.begin(M::NAME));
        let result = self.tell_inner(msg).await;
        if let Some(t) = timer {
            t.finish(tell_figure(&result));
        }
        result
    }

    async fn tell_inner<M: RemoteMessage>(&self, msg: M) -> Result<(), TellError<M>> {
        let Some(routes) = self.routes_now() else {
            return Err(TellError::NotDelivered(
                msg,
                no_endpoints(&self.name).to_string(),
            ));
        };
        if routes.policy().is_some() {
            return Box::pin(self.tell_by_policy(msg, routes)).await;
        }
        let Some(started) = self.start_on(routes, self.options.hash_key, Instant::now()) else {
            return Err(TellError::NotDelivered(
                msg,
                no_endpoints(&self.name).to_string(),
            ));
        };
        let call = started.in_flight();
        let target = started.routes.target(started.index);
        let result = match self.options.runtime(self.default_timeout) {
            None => target.tell(msg).await,
            Some(o) => target.tell_with_options(msg, &o).await,
        };
        call.finish(tell_outcome(&result), false, &started.routes);
        result
    }

    /// Like [`ServiceRef::tell`], but a full mailbox or lane gives [`TellError::Full`] with
    /// the message at once.
    pub fn try_tell<M: RemoteMessage>(&self, msg: M) -> Result<(), TellError<M>> {
        let timer = self.figures.as_ref().map(|f| f.begin(M::NAME));
        let result = self.try_tell_inner(msg);
        if let Some(t) = timer {
            t.finish(tell_figure(&result));
        }
        result
    }

    fn try_tell_inner<M: RemoteMessage>(&self, msg: M) -> Result<(), TellError<M>> {
        let Some(routes) = self.routes_now() else {
            return Err(TellError::NotDelivered(
                msg,
                no_endpoints(&self.name).to_string(),
            ));
        };
        if routes.policy().is_some() {
            return self.try_tell_by_policy(msg, routes);
        }
        let Some(started) = self.start_on(routes, self.options.hash_key, Instant::now()) else {
            return Err(TellError::NotDelivered(
                msg,
                no_endpoints(&self.name).to_string(),
            ));
        };
        let call = started.in_flight();
        let result = started.routes.target(started.index).try_tell(msg);
        call.finish(tell_outcome(&result), false, &started.routes);
        result
    }

    /// An ask under the service's traffic policy ([`crate::mesh::calls`]).
    async fn ask_by_policy<M: RemoteMessage>(
        &self,
        msg: M,
        options: &CallOptions,
        wait_for_room: bool,
        routes: Arc<ServiceRoutes<RemoteRef>>,
    ) -> Result<M::Result, AskError> {
        let plan =
            Plan::new(routes, M::NAME, options, self.default_timeout).counted(self.counters());
        if plan.has_faults() {
            plan.faults().await?;
        }
        // Retries and mirrors send copies: decoded from one encoding of the message.
        let copies = if plan.may_retry() || plan.mirrors() {
            Some(
                codec::encode(&msg)
                    .map_err(|e| AskError::Rejected(format!("cannot encode {}: {e}", M::NAME)))?,
            )
        } else {
            None
        };
        if let Some(bytes) = copies.as_ref().filter(|_| plan.mirrors()) {
            plan.mirror(
                shadow_of(M::NAME, Arc::new(bytes.clone())),
                &options.metadata,
            );
        }
        let mut first = Some(msg);
        plan.run(&self.name, M::IDEMPOTENT, options, |target, o| {
            let m = match first.take() {
                Some(m) => Ok(m),
                None => decode_copy::<M>(copies.as_deref().expect("copied when retries may run")),
            };
            async move {
                let m = m?;
                if wait_for_room {
                    target.ask_with_options(m, &o).await
                } else {
                    target.try_ask_with_options(m, &o).await
                }
            }
        })
        .await
    }

    /// A JSON ask under the service's traffic policy. The message's idempotency is not
    /// known without its type: only what was never delivered is retried.
    async fn ask_json_by_policy(
        &self,
        message_name: &str,
        payload: &serde_json::Value,
        options: &CallOptions,
        routes: Arc<ServiceRoutes<RemoteRef>>,
    ) -> Result<serde_json::Value, AskError> {
        let plan =
            Plan::new(routes, message_name, options, self.default_timeout).counted(self.counters());
        if plan.has_faults() {
            plan.faults().await?;
        }
        if plan.mirrors() {
            let (name, copy) = (message_name.to_string(), payload.clone());
            plan.mirror(
                Box::new(move |target, o| {
                    Box::pin(async move { target.ask_json(&name, &copy, &o).await.map(|_| ()) })
                }),
                &options.metadata,
            );
        }
        plan.run(&self.name, false, options, |target, o| async move {
            target.ask_json(message_name, payload, &o).await
        })
        .await
    }

    /// A tell under the service's traffic policy: the route's subset, faults and mirror
    /// apply; a tell is at most once, so it is never retried and takes no breaker place.
    async fn tell_by_policy<M: RemoteMessage>(
        &self,
        msg: M,
        routes: Arc<ServiceRoutes<RemoteRef>>,
    ) -> Result<(), TellError<M>> {
        let plan = Plan::new(routes, M::NAME, &self.options, self.default_timeout)
            .counted(self.counters());
        if let Err(e) = plan.faults().await {
            return Err(TellError::NotDelivered(msg, e.to_string()));
        }
        if plan.mirrors() {
            if let Ok(bytes) = codec::encode(&msg) {
                plan.mirror(shadow_of(M::NAME, Arc::new(bytes)), &self.options.metadata);
            }
        }
        let (target, call) = match self.tell_target(&plan) {
            Ok(t) => t,
            Err(e) => return Err(TellError::NotDelivered(msg, e.to_string())),
        };
        let result = match self.options.runtime(self.default_timeout) {
            None => target.tell(msg).await,
            Some(o) => target.tell_with_options(msg, &o).await,
        };
        call.finish(tell_outcome(&result), false, plan.routes());
        result
    }

    /// A `try_tell` under the policy: as [`ServiceRef::tell`], but it neither waits out an
    /// injected delay nor mirrors (it never waits).
    fn try_tell_by_policy<M: RemoteMessage>(
        &self,
        msg: M,
        routes: Arc<ServiceRoutes<RemoteRef>>,
    ) -> Result<(), TellError<M>> {
        let plan = Plan::new(routes, M::NAME, &self.options, self.default_timeout)
            .counted(self.counters());
        let target = plan.abort_now().and_then(|()| self.tell_target(&plan));
        let (target, call) = match target {
            Ok(t) => t,
            Err(e) => return Err(TellError::NotDelivered(msg, e.to_string())),
        };
        let result = target.try_tell(msg);
        call.finish(tell_outcome(&result), false, plan.routes());
        result
    }

    /// The endpoint a tell under `plan` goes to, and the call started on it.
    fn tell_target<'p>(&self, plan: &'p Plan) -> Result<(&'p RemoteRef, InFlight<'p>), AskError> {
        let now = clock::nanos(Instant::now());
        let picked = plan.pick(&self.name, self.options.hash_key, &[], now)?;
        let routes = plan.routes();
        routes.state(picked.index).start();
        let call = InFlight::new(routes.state(picked.index), picked.admission);
        Ok((routes.target(picked.index), call))
    }
}

/// The shadow copy of a call of `name` encoded as `bytes`: asked, its reply discarded.
fn shadow_of(name: &'static str, bytes: Arc<Vec<u8>>) -> crate::mesh::calls::Shadow {
    Box::new(move |target, o| {
        Box::pin(async move { target.ask_encoded(name, &bytes, &o).await.map(|_| ()) })
    })
}

/// A copy of a message, decoded from its encoding.
fn decode_copy<M: RemoteMessage>(bytes: &[u8]) -> Result<M, AskError> {
    codec::decode(bytes).map_err(|e| AskError::Rejected(format!("cannot copy {}: {e}", M::NAME)))
}
