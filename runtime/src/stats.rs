//! Call figures kept with atomics only: what the metrics endpoint and `actormesh top` read.
//!
//! The per-call path takes no lock. A table of figures is found once (when an actor is
//! spawned, or a [`ServiceRef`]-like handle is made) and a call then finds its row by a
//! short scan of entries set once ([`OnceLock`]): an atomic load each. Every count is a
//! relaxed `fetch_add`. A reader (a scrape) takes a [`Snapshot`]: the counts are read one
//! by one, so a snapshot taken while calls run may be off by the calls in between, as
//! with any Prometheus client.
//!
//! Cardinality is bounded: [`SOURCES_PER_ROW`] source workloads per (service, message),
//! [`MESSAGES_PER_SERVICE`] message names per service; past a cap a call counts under
//! [`OTHER`]. A client identity counts as [`CLIENT`].
//!
//! [`ServiceRef`]: https://docs.rs/actormesh/latest/actormesh/mesh/struct.ServiceRef.html

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actormesh_transport::SpiffeId;

use crate::error::AskError;
use crate::locks::lock;
pub use crate::sample::OneIn;

/// Distinct source workloads counted per (service, message); past it, [`OTHER`].
pub const SOURCES_PER_ROW: usize = 32;
/// Distinct message names counted per service; past it, [`OTHER`].
pub const MESSAGES_PER_SERVICE: usize = 64;
/// Distinct destinations (services, or actor types without a workload) a node counts
/// server-side figures for; past it, [`OTHER`].
pub const DESTINATIONS_PER_NODE: usize = 256;
/// The label of what is past a cap.
pub const OTHER: &str = "other";
/// The source label of a call from a client identity (`spiffe://<td>/client/<name>`).
pub const CLIENT: &str = "client";
/// The source label of a call that asserts no workload and comes from no client.
pub const UNKNOWN: &str = "unknown";

/// Upper bounds of the latency buckets, in seconds: from 50 µs (a local call) to 50 s
/// (Linkerd's 1 ms to 50 s, with four finer buckets below a millisecond, where calls
/// inside a mesh of actors mostly end).
pub const LATENCY_BOUNDS: [f64; 29] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.01, 0.02, 0.03, 0.04,
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0,
];

const BOUNDS_NANOS: [u64; 29] = {
    let mut out = [0u64; 29];
    let micros: [u64; 29] = [
        50, 100, 250, 500, 1_000, 2_000, 3_000, 4_000, 5_000, 10_000, 20_000, 30_000, 40_000,
        50_000, 100_000, 200_000, 300_000, 400_000, 500_000, 1_000_000, 2_000_000, 3_000_000,
        4_000_000, 5_000_000, 10_000_000, 20_000_000, 30_000_000, 40_000_000, 50_000_000,
    ];
    let mut i = 0;
    while i < 29 {
        out[i] = micros[i] * 1_000;
        i += 1;
    }
    out
};

/// A latency histogram of atomic buckets (one per bound in [`LATENCY_BOUNDS`] and one
/// past the last), with the sum in nanoseconds. Recording is two relaxed `fetch_add`s.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; 30],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one sample.
    #[inline]
    pub fn record(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NANOS.partition_point(|&b| b < nanos);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment: per bucket (not cumulative), the last one past
/// the last bound.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct HistogramSnapshot {
    /// Samples per bucket of [`LATENCY_BOUNDS`], then those past the last bound.
    pub buckets: Vec<u64>,
    /// The sum of the samples, in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// The number of samples.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The sum in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }

    /// `(upper bound, cumulative count)` per bucket, the last bound `+Inf`, as
    /// Prometheus encodes them.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                total += n;
                (
                    LATENCY_BOUNDS.get(i).copied().unwrap_or(f64::INFINITY),
                    total,
                )
            })
            .collect()
    }

    /// What was recorded since `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
            sum_nanos: self.sum_nanos.saturating_sub(earlier.sum_nanos),
        }
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &HistogramSnapshot) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum_nanos += other.sum_nanos;
    }

    /// The `q` quantile (0 < q ≤ 1), interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without samples. A quantile in the
    /// last bucket (past 50 s) is the last bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = LATENCY_BOUNDS.get(i) else {
                    return Some(Duration::from_secs_f64(LATENCY_BOUNDS[28]));
                };
                let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(Duration::from_secs_f64(lower + (upper - lower) * within));
            }
            below += n;
        }
        Some(Duration::from_secs_f64(LATENCY_BOUNDS[28]))
    }
}

/// How a call ended, as the figures count it: success, or the kind of [`AskError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered (a handler's own `Err` reply is a success here: the call was served).
    Ok,
    /// [`AskError::Timeout`].
    Timeout,
    /// [`AskError::Unreachable`].
    Unreachable,
    /// [`AskError::NoSuchActor`].
    NoSuchActor,
    /// [`AskError::UnknownMessage`].
    UnknownMessage,
    /// [`AskError::MailboxFull`].
    MailboxFull,
    /// [`AskError::Stopped`].
    Stopped,
    /// [`AskError::Panicked`].
    Panicked,
    /// [`AskError::Rejected`].
    Rejected,
    /// [`AskError::NotDelivered`] (and a tell not sent).
    NotDelivered,
    /// [`AskError::NoEndpoints`].
    NoEndpoints,
    /// [`AskError::PermissionDenied`].
    PermissionDenied,
    /// [`AskError::InvalidMetadata`].
    InvalidMetadata,
    /// [`AskError::CircuitOpen`].
    CircuitOpen,
    /// [`AskError::RateLimited`].
    RateLimited,
}

impl Outcome {
    /// Every outcome, in the order of their counters.
    pub const ALL: [Outcome; 15] = [
        Outcome::Ok,
        Outcome::Timeout,
        Outcome::Unreachable,
        Outcome::NoSuchActor,
        Outcome::UnknownMessage,
        Outcome::MailboxFull,
        Outcome::Stopped,
        Outcome::Panicked,
        Outcome::Rejected,
        Outcome::NotDelivered,
        Outcome::NoEndpoints,
        Outcome::PermissionDenied,
        Outcome::InvalidMetadata,
        Outcome::CircuitOpen,
        Outcome::RateLimited,
    ];

    /// The outcome of an ask that ended with `r`.
    #[inline]
    pub fn of<T>(r: &Result<T, AskError>) -> Outcome {
        match r {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::of_error(e),
        }
    }

    /// The kind of `e`.
    pub fn of_error(e: &AskError) -> Outcome {
        match e {
            AskError::Timeout { .. } => Outcome::Timeout,
            AskError::Unreachable { .. } => Outcome::Unreachable,
            AskError::NoSuchActor { .. } => Outcome::NoSuchActor,
            AskError::UnknownMessage { .. } => Outcome::UnknownMessage,
            AskError::MailboxFull { .. } => Outcome::MailboxFull,
            AskError::Stopped { .. } => Outcome::Stopped,
            AskError::Panicked { .. } => Outcome::Panicked,
            AskError::Rejected(_) => Outcome::Rejected,
            AskError::NotDelivered { .. } => Outcome::NotDelivered,
            AskError::NoEndpoints { .. } => Outcome::NoEndpoints,
            AskError::PermissionDenied { .. } => Outcome::PermissionDenied,
            AskError::InvalidMetadata(_) => Outcome::InvalidMetadata,
            AskError::CircuitOpen { .. } => Outcome::CircuitOpen,
            AskError::RateLimited { .. } => Outcome::RateLimited,
        }
    }

    /// The label value (`ok`, `timeout`, `rate_limited`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Unreachable => "unreachable",
            Outcome::NoSuchActor => "no_such_actor",
            Outcome::UnknownMessage => "unknown_message",
            Outcome::MailboxFull => "mailbox_full",
            Outcome::Stopped => "stopped",
            Outcome::Panicked => "panicked",
            Outcome::Rejected => "rejected",
            Outcome::NotDelivered => "not_delivered",
            Outcome::NoEndpoints => "no_endpoints",
            Outcome::PermissionDenied => "permission_denied",
            Outcome::InvalidMetadata => "invalid_metadata",
            Outcome::CircuitOpen => "circuit_open",
            Outcome::RateLimited => "rate_limited",
        }
    }

    /// Its counter: `ALL` lists the outcomes in the order they are declared.
    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}

/// The figures of one (source, destination, message): calls by outcome, their latency,
/// and the calls in flight. In flight is the calls started less those ended (counted by
/// outcome, or given up), so that a call costs one counter less than a gauge of its own.
#[derive(Debug, Default)]
pub struct CallStats {
    started: AtomicU64,
    outcomes: [AtomicU64; 15],
    abandoned: AtomicU64,
    latency: Histogram,
}

impl CallStats {
    /// A call started.
    #[inline]
    pub fn start(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// A call that [`CallStats::start`]ed ended with `outcome` after `took`.
    #[inline]
    pub fn finish(&self, outcome: Outcome, took: Duration) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        self.latency.record(took);
    }

    /// A call that [`CallStats::start`]ed was given up by its caller: it leaves the calls
    /// in flight, with no outcome.
    #[inline]
    pub fn abandon(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    /// A call (never counted in flight) ended with `outcome` after `took`.
    #[inline]
    pub fn count(&self, outcome: Outcome, took: Duration) {
        self.start();
        self.finish(outcome, took);
    }

    /// The figures now.
    pub fn snapshot(&self) -> StatsSnapshot {
        // Ends before starts: a call that ends in between is then counted started too,
        // and in flight never goes below what it is.
        let outcomes: Vec<(String, u64)> = Outcome::ALL
            .iter()
            .zip(&self.outcomes)
            .map(|(o, n)| (o.as_str().to_string(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let ended =
            outcomes.iter().map(|(_, n)| n).sum::<u64>() + self.abandoned.load(Ordering::Relaxed);
        let started = self.started.load(Ordering::Relaxed);
        StatsSnapshot {
            outcomes,
            latency: self.latency.snapshot(),
            in_flight: started.saturating_sub(ended),
        }
    }
}

/// [`CallStats`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    /// Calls by outcome label, only those that happened.
    pub outcomes: Vec<(String, u64)>,
    /// Their latency.
    pub latency: HistogramSnapshot,
    /// Calls in flight.
    pub in_flight: u64,
}

impl StatsSnapshot {
    /// All calls.
    pub fn requests(&self) -> u64 {
        self.outcomes.iter().map(|(_, n)| n).sum()
    }

    /// Successful calls.
    pub fn ok(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|(o, _)| o == Outcome::Ok.as_str())
            .map(|(_, n)| n)
            .sum()
    }

    /// What happened since `earlier` (a snapshot of the same figures); all of these if
    /// their counts went down (the node restarted).
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        if self.requests() < earlier.requests() {
            return self.clone();
        }
        let was = |o: &str| {
            earlier
                .outcomes
                .iter()
                .find(|(e, _)| e == o)
                .map_or(0, |(_, n)| *n)
        };
        StatsSnapshot {
            outcomes: self
                .outcomes
                .iter()
                .map(|(o, n)| (o.clone(), n.saturating_sub(was(o))))
                .filter(|(_, n)| *n > 0)
                .collect(),
            latency: self.latency.since(&earlier.latency),
            in_flight: self.in_flight,
        }
    }

    /// Adds `other`'s figures to these.
    pub fn add(&mut self, other: &StatsSnapshot) {
        for (o, n) in &other.outcomes {
            match self.outcomes.iter_mut().find(|(mine, _)| mine == o) {
                Some((_, m)) => *m += n,
                None => self.outcomes.push((o.clone(), *n)),
            }
        }
        self.latency.add(&other.latency);
        self.in_flight += other.in_flight;
    }
}

struct Labeled<T> {
    label: Box<str>,
    value: T,
}

/// Up to `N` labelled values, each made on first use, then one more for everything past
/// the cap. Finding one is a scan of atomic loads and string compares: no lock.
struct Capped<T, const N: usize> {
    rows: [OnceLock<Box<Labeled<T>>>; N],
    other: T,
}

impl<T: Default, const N: usize> Default for Capped<T, N> {
    fn default() -> Self {
        Self {
            rows: std::array::from_fn(|_| OnceLock::new()),
            other: T::default(),
        }
    }
}

impl<T: Default, const N: usize> Capped<T, N> {
    /// The value for `label`, made now if the cap allows; [`OTHER`]'s past it.
    #[inline]
    fn get(&self, label: &str) -> &T {
        self.at(self.index(label))
    }

    /// The index of `label`'s value ([`Capped::at`]); `N` for [`OTHER`]'s.
    #[inline]
    fn index(&self, label: &str) -> usize {
        for (i, row) in self.rows.iter().enumerate() {
            let r = row.get_or_init(|| {
                Box::new(Labeled {
                    label: label.into(),
                    value: T::default(),
                })
            });
            if &*r.label == label {
                return i;
            }
        }
        N
    }

    /// The label at `index` ([`OTHER`] past the cap).
    fn label(&self, index: usize) -> &str {
        self.rows
            .get(index)
            .and_then(|r| r.get())
            .map_or(OTHER, |r| &*r.label)
    }

    /// The value at `index` (from [`Capped::index`]).
    #[inline]
    fn at(&self, index: usize) -> &T {
        match self.rows.get(index).and_then(|r| r.get()) {
            Some(r) => &r.value,
            None => &self.other,
        }
    }

    /// Every value with its label, [`OTHER`] last.
    fn each(&self) -> impl Iterator<Item = (&str, &T)> {
        self.rows
            .iter()
            .map_while(|r| r.get())
            .map(|r| (&*r.label, &r.value))
            .chain(std::iter::once((OTHER, &self.other)))
    }
}

/// The figures of one destination and message, by source workload (at most
/// [`SOURCES_PER_ROW`], then [`OTHER`]).
#[derive(Default)]
pub struct BySource {
    sources: Capped<CallStats, SOURCES_PER_ROW>,
}

impl std::fmt::Debug for BySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BySource").finish_non_exhaustive()
    }
}

impl BySource {
    /// The figures of calls from `source` (a workload, [`CLIENT`] or [`UNKNOWN`]).
    #[inline]
    pub fn source(&self, source: &str) -> &CallStats {
        self.sources.get(source)
    }

    /// The index of `source`'s figures, for [`BySource::at`].
    #[inline]
    pub fn index(&self, source: &str) -> usize {
        self.sources.index(source)
    }

    /// The source label at `index`.
    pub fn label(&self, index: usize) -> &str {
        self.sources.label(index)
    }

    /// The figures at `index`.
    #[inline]
    pub fn at(&self, index: usize) -> &CallStats {
        self.sources.at(index)
    }

    /// Every source's figures that counted a call, by source label.
    pub fn snapshot(&self) -> Vec<(String, StatsSnapshot)> {
        self.sources
            .each()
            .map(|(label, s)| (label.to_string(), s.snapshot()))
            .filter(|(_, s)| s.requests() > 0 || s.in_flight > 0)
            .collect()
    }
}

/// A service's figures by message name (at most [`MESSAGES_PER_SERVICE`], then
/// [`OTHER`]), each by source.
#[derive(Default)]
pub struct ByMessage {
    messages: Capped<BySource, MESSAGES_PER_SERVICE>,
}

impl std::fmt::Debug for ByMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByMessage").finish_non_exhaustive()
    }
}

impl ByMessage {
    /// The figures of message `name`.
    #[inline]
    pub fn message(&self, name: &str) -> &BySource {
        self.messages.get(name)
    }

    /// `(message, source, figures)` of everything that counted a call.
    pub fn snapshot(&self) -> Vec<(String, String, StatsSnapshot)> {
        self.messages
            .each()
            .flat_map(|(m, by)| {
                by.snapshot()
                    .into_iter()
                    .map(move |(s, f)| (m.to_string(), s, f))
            })
            .collect()
    }
}

/// The source label of a call: the workload it asserts, else [`CLIENT`] for a client
/// identity's node, else [`UNKNOWN`].
pub fn source_label(workload: Option<&str>, caller_is_client: bool) -> &str {
    match workload {
        Some(w) => w,
        None if caller_is_client => CLIENT,
        None => UNKNOWN,
    }
}

/// The server-side figures of one handler on this node: its calls by source, and the time
/// its handler ran (the synchronous part, from the mailbox to the return).
#[derive(Debug, Default)]
pub struct HandlerStats {
    /// Calls by source: latency from arrival (the frame read, or the local call made) to
    /// the reply.
    pub calls: BySource,
    /// The handler's running time.
    pub handler_time: Histogram,
    /// The destination it counts for (a service, or an actor type).
    destination: Arc<str>,
    /// The message.
    message: &'static str,
}

/// What an access log line says beyond the figures' labels: taken only for the calls the
/// access log samples.
#[derive(Debug)]
pub(crate) struct Access {
    /// The actor's name on this node.
    pub(crate) actor: Arc<str>,
    /// The calling node's verified identity (`None`: this node).
    pub(crate) caller: Option<Arc<SpiffeId>>,
    /// The call's trace id, if it carries one.
    pub(crate) trace_id: Option<[u8; 16]>,
}

/// One call being served, counted in flight from its arrival until it is answered. Dropped
/// unanswered, it counts as `stopped` (`panicked` while unwinding or dropping a crashed
/// actor's mailbox).
pub(crate) struct Observed {
    stats: Arc<HandlerStats>,
    /// In one word, so that the envelope every delivery moves stays small (24 bytes with
    /// the rest): the arrival in nanoseconds since [`epoch`] (bits 0–55: 833 days), the
    /// source's row in `stats.calls` (bits 56–62) and whether it ended (bit 63).
    word: u64,
    /// Set when the access log writes this call or it is traced (boxed, for the same
    /// reason).
    extra: Option<Box<Extra>>,
}

const ARRIVAL_BITS: u64 = (1 << 56) - 1;
const ENDED: u64 = 1 << 63;

/// The instant arrivals are counted from: the first time a node that keeps figures
/// started in this process.
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// What a sampled call carries beyond its figures.
#[derive(Debug, Default)]
struct Extra {
    access: Option<Access>,
    span: Option<crate::trace::OpenSpan>,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed").finish_non_exhaustive()
    }
}

impl Observed {
    /// A call to the handler of `stats` from `source` that arrived at `arrived`.
    #[inline]
    pub(crate) fn start(stats: &Arc<HandlerStats>, source: &str, arrived: Instant) -> Self {
        // At most SOURCES_PER_ROW: 7 bits.
        let index = stats.calls.index(source);
        stats.calls.at(index).start();
        Self {
            stats: stats.clone(),
            word: (since_epoch(arrived) & ARRIVAL_BITS) | ((index as u64 & 0x7f) << 56),
            extra: None,
        }
    }

    #[inline]
    fn source(&self) -> usize {
        ((self.word >> 56) & 0x7f) as usize
    }

    /// The call is traced: `span` ends with it.
    pub(crate) fn trace(&mut self, mut span: crate::trace::OpenSpan) {
        span.attribute("service", self.stats.destination.to_string());
        let source = self.stats.calls.label(self.source()).to_string();
        span.attribute("source", source);
        self.extra.get_or_insert_with(Box::default).span = Some(span);
    }

    /// The access log writes this call when it ends.
    pub(crate) fn log_access(&mut self, access: Access) {
        self.extra.get_or_insert_with(Box::default).access = Some(access);
    }

    /// The handler ran for `took`.
    #[inline]
    pub(crate) fn handler_ran(&self, took: Duration) {
        self.stats.handler_time.record(took);
    }

    /// The call was answered (or, a tell, handled) with `outcome`.
    #[inline]
    pub(crate) fn finish(self, outcome: Outcome) {
        self.finish_at(outcome, Instant::now());
    }

    /// The call was answered with `outcome` at `ended`.
    #[inline]
    pub(crate) fn finish_at(mut self, outcome: Outcome, ended: Instant) {
        self.end(outcome, ended);
    }

    fn end(&mut self, outcome: Outcome, ended: Instant) {
        if self.word & ENDED != 0 {
            return;
        }
        self.word |= ENDED;
        let nanos = since_epoch(ended).saturating_sub(self.word & ARRIVAL_BITS);
        let took = Duration::from_nanos(nanos);
        let source = self.source();
        self.stats.calls.at(source).finish(outcome, took);
        let Some(extra) = self.extra.take() else {
            return;
        };
        if let Some(a) = &extra.access {
            access_line(
                &self.stats,
                self.stats.calls.label(source),
                a,
                outcome,
                took,
            );
        }
        if let Some(span) = extra.span {
            let error = (outcome != Outcome::Ok).then(|| outcome.as_str().to_string());
            span.finish(outcome.as_str(), error);
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if self.word & ENDED == 0 {
            let outcome = if std::thread::panicking() || crate::crash::dropping_crash() {
                Outcome::Panicked
            } else {
                Outcome::Stopped
            };
            self.end(outcome, Instant::now());
        }
    }
}

/// One structured line of the access log (target `actormesh::access`, level info).
#[cold]
fn access_line(stats: &HandlerStats, source: &str, a: &Access, outcome: Outcome, took: Duration) {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    tracing::info!(
        target: "actormesh::access",
        service = %stats.destination,
        message = stats.message,
        actor = %a.actor,
        source,
        caller = %a.caller.as_deref().map_or_else(|| "local".to_string(), |c| c.to_string()),
        outcome = outcome.as_str(),
        duration_us = took.as_micros() as u64,
        trace_id = %a.trace_id.map(|t| hex(&t)).unwrap_or_default(),
        "call"
    );
}

/// A node's server-side figures, by (destination, message). A destination is the
/// actor's workload, or its Rust type when it has none.
#[derive(Debug, Default)]
pub(crate) struct ServerBook {
    rows: Mutex<Vec<ServerRow>>,
}

/// (destination, message, figures).
type ServerRow = (Arc<str>, &'static str, Arc<HandlerStats>);

impl ServerBook {
    /// The figures of `message` at `destination`: found when an actor is spawned, not per
    /// call. Past [`DESTINATIONS_PER_NODE`] destinations, new ones share [`OTHER`]'s.
    pub(crate) fn row(&self, destination: &str, message: &'static str) -> Arc<HandlerStats> {
        let mut rows = lock(&self.rows);
        if let Some((_, _, s)) = rows
            .iter()
            .find(|(d, m, _)| &**d == destination && *m == message)
        {
            return s.clone();
        }
        let known = |d: &str| rows.iter().any(|(x, _, _)| &**x == d);
        let destination = if known(destination) {
            destination
        } else {
            let mut distinct: Vec<&str> = rows.iter().map(|(d, _, _)| &**d).collect();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() >= DESTINATIONS_PER_NODE {
                OTHER
            } else {
                destination
            }
        };
        if let Some((_, _, s)) = rows
            .iter()
            .find(|(d, m, _)| &**d == destination && *m == message)
        {
            return s.clone();
        }
        let destination: Arc<str> = Arc::from(destination);
        let stats = Arc::new(HandlerStats {
            destination: destination.clone(),
            message,
            ..HandlerStats::default()
        });
        rows.push((destination, message, stats.clone()));
        stats
    }

    /// `(destination, message, figures)` of every row.
    pub(crate) fn snapshot(&self) -> Vec<ServerFigures> {
        let rows = lock(&self.rows).clone();
        rows.into_iter()
            .map(|(d, m, s)| ServerFigures {
                destination: d.to_string(),
                message: m.to_string(),
                sources: s.calls.snapshot(),
                handler_time: s.handler_time.snapshot(),
            })
            .collect()
    }
}

/// One row of a node's server-side figures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerFigures {
    /// The actor's workload (a service, `ns/name`), or its Rust type without one.
    pub destination: String,
    /// The message name.
    pub message: String,
    /// Calls by source label.
    pub sources: Vec<(String, StatsSnapshot)>,
    /// The handler's running time.
    pub handler_time: HistogramSnapshot,
}

/// One actor's mailbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActorFigures {
    /// Its name on the node.
    pub name: String,
    /// Its Rust type.
    pub actor_type: String,
    /// Its workload, if it has one.
    pub workload: Option<String>,
    /// Messages queued or being handled.
    pub mailbox_depth: u64,
    /// Mailbox places in all.
    pub mailbox_capacity: u64,
}

/// One peer's link, from quinn's connection statistics.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerFigures {
    /// The peer's listen address.
    pub addr: std::net::SocketAddr,
    /// Its verified identity.
    pub identity: String,
    /// The current round-trip estimate.
    pub rtt: Duration,
    /// UDP bytes sent on the link.
    pub sent_bytes: u64,
    /// UDP bytes received on the link.
    pub received_bytes: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// Streams this node has open to it (lanes).
    pub open_lanes: u64,
    /// Asks sent to it that wait for their reply.
    pub pending_asks: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_lands_in_the_first_bucket_whose_bound_it_does_not_pass() {
        let h = Histogram::default();
        h.record(Duration::from_micros(50)); // on the bound: that bucket
        h.record(Duration::from_micros(51)); // past it: the next
        h.record(Duration::from_secs(60)); // past the last: +Inf
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[29], 1);
        assert_eq!(s.count(), 3);
        assert_eq!(s.sum_nanos, 50_000 + 51_000 + 60_000_000_000);
        let c = s.cumulative();
        assert_eq!(c[0], (0.00005, 1));
        assert_eq!(c[1], (0.0001, 2));
        assert_eq!(*c.last().unwrap(), (f64::INFINITY, 3));
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let h = Histogram::default();
        // 100 samples in (1 ms, 2 ms].
        for _ in 0..100 {
            h.record(Duration::from_micros(1500));
        }
        let s = h.snapshot();
        let p50 = s.quantile(0.5).unwrap().as_secs_f64();
        assert!((p50 - 0.0015).abs() < 1e-9, "{p50}");
        let p99 = s.quantile(0.99).unwrap().as_secs_f64();
        assert!((p99 - 0.00199).abs() < 1e-9, "{p99}");
        assert_eq!(HistogramSnapshot::default().quantile(0.5), None);
        // Since: only what came after.
        h.record(Duration::from_secs(1));
        let later = h.snapshot().since(&s);
        assert_eq!(later.count(), 1);
        assert_eq!(later.quantile(1.0).unwrap(), Duration::from_secs(1));
    }

    #[test]
    fn past_the_cap_labels_count_under_other() {
        let by = BySource::default();
        for i in 0..SOURCES_PER_ROW + 5 {
            let s = by.source(&format!("ns/s{i}"));
            s.start();
            s.finish(Outcome::Ok, Duration::from_millis(1));
        }
        // A known label keeps its own row after the cap is reached.
        by.source("ns/s0")
            .count(Outcome::Timeout, Duration::from_millis(1));
        let snap = by.snapshot();
        assert_eq!(snap.len(), SOURCES_PER_ROW + 1);
        let (label, other) = snap.last().unwrap();
        assert_eq!(label, OTHER);
        assert_eq!(other.requests(), 5);
        let s0 = &snap.iter().find(|(l, _)| l == "ns/s0").unwrap().1;
        assert_eq!(s0.requests(), 2);
        assert_eq!(s0.ok(), 1);
        assert_eq!(s0.in_flight, 0);
    }

    #[test]
    fn message_names_past_the_cap_count_under_other() {
        let by = ByMessage::default();
        for i in 0..MESSAGES_PER_SERVICE + 1 {
            by.message(&format!("m{i}"))
                .source(CLIENT)
                .count(Outcome::Ok, Duration::ZERO);
        }
        let snap = by.snapshot();
        assert_eq!(snap.len(), MESSAGES_PER_SERVICE + 1);
        assert_eq!(snap.last().unwrap().0, OTHER);
    }

    #[test]
    fn sources_are_the_workload_else_client_else_unknown() {
        assert_eq!(source_label(Some("shop/cart"), true), "shop/cart");
        assert_eq!(source_label(None, true), CLIENT);
        assert_eq!(source_label(None, false), UNKNOWN);
    }

    #[test]
    fn the_server_book_finds_a_row_once_and_caps_destinations() {
        let book = ServerBook::default();
        let a = book.row("shop/cart", "m/v1");
        let b = book.row("shop/cart", "m/v1");
        assert!(Arc::ptr_eq(&a, &b));
        for i in 0..DESTINATIONS_PER_NODE + 3 {
            book.row(&format!("d{i}"), "m/v1");
        }
        let snap = book.snapshot();
        let distinct: std::collections::BTreeSet<_> =
            snap.iter().map(|f| f.destination.clone()).collect();
        assert_eq!(distinct.len(), DESTINATIONS_PER_NODE + 1);
        assert!(distinct.contains(OTHER));
    }

    #[test]
    fn a_call_s_figures_add_24_bytes_to_its_envelope_and_keep_their_arrival_and_source() {
        assert_eq!(std::mem::size_of::<Option<Observed>>(), 24);
        let stats = Arc::new(HandlerStats::default());
        for i in 0..SOURCES_PER_ROW + 2 {
            stats.calls.source(&format!("ns/s{i}"));
        }
        // Arrivals count from the epoch, taken when a node that keeps figures starts.
        epoch();
        let arrived = Instant::now();
        let o = Observed::start(&stats, "ns/s3", arrived);
        assert_eq!(o.source(), 3);
        o.finish_at(Outcome::Ok, arrived + Duration::from_millis(7));
        let past = Observed::start(&stats, "ns/s99", arrived);
        assert_eq!(past.source(), SOURCES_PER_ROW, "past the cap: other");
        drop(past);
        let snap = stats.calls.snapshot();
        let s3 = &snap.iter().find(|(l, _)| l == "ns/s3").unwrap().1;
        assert_eq!(s3.ok(), 1);
        assert_eq!(s3.latency.sum_nanos, 7_000_000);
        let other = &snap.iter().find(|(l, _)| l == OTHER).unwrap().1;
        assert_eq!(other.outcomes, vec![("stopped".to_string(), 1)]);
    }

    #[test]
    fn each_outcome_has_its_own_counter() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?}");
        }
    }

    #[test]
    fn in_flight_is_started_less_ended() {
        let s = CallStats::default();
        s.start();
        s.start();
        s.start();
        assert_eq!(s.snapshot().in_flight, 3);
        s.finish(Outcome::Ok, Duration::ZERO);
        s.abandon();
        let snap = s.snapshot();
        assert_eq!((snap.in_flight, snap.requests()), (1, 1));
        s.count(Outcome::Timeout, Duration::ZERO);
        assert_eq!(s.snapshot().in_flight, 1);
    }

    #[test]
    fn every_error_kind_has_its_own_label() {
        let labels: std::collections::BTreeSet<_> =
            Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels.len(), Outcome::ALL.len());
        assert_eq!(
            Outcome::of::<()>(&Err(AskError::RateLimited {
                service: "s".into()
            })),
            Outcome::RateLimited
        );
    }
}
