//! Circuit breaking. Two kinds of opening, both answered at once (`CircuitOpen`), never by
//! making the call wait:
//!
//! - **Limits**, as Envoy's: on what a service may have outstanding, checked before a call
//!   goes out. The breaker is open only while a limit is reached, so it closes as soon as
//!   calls finish.
//! - **A trip** (optional), as resilience4j's and Hystrix's: after `consecutive_failures`
//!   failed calls in a row the breaker opens for `open_for`; then it half-opens and lets
//!   one trial call through: its success closes the breaker, its failure opens it again.
//!
//! Counters are atomics, so every caller of a node shares them without a lock; a call
//! holds a guard that gives its place (or its trial) back when dropped. Time is passed in.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::mesh::balance::Nanos;

/// When a breaker trips open on failures, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trip {
    /// Failed calls in a row that open it (at least 1).
    pub consecutive_failures: u32,
    /// How long it stays open before it half-opens.
    pub open_for: Duration,
}

/// A breaker's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Calls in flight to one endpoint.
    pub max_in_flight_per_endpoint: u32,
    /// Calls waiting for room (a full mailbox or lane) across the service.
    pub max_pending: u32,
    /// Retries in flight across the service.
    pub max_retries: u32,
    /// Opening on failures in a row (`None`: limits only).
    pub trip: Option<Trip>,
}

impl Default for BreakerConfig {
    /// Envoy's defaults: 1,024 requests, 1,024 pending, 3 retries; no trip.
    fn default() -> Self {
        Self {
            max_in_flight_per_endpoint: 1024,
            max_pending: 1024,
            max_retries: 3,
            trip: None,
        }
    }
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The endpoint has `max_in_flight_per_endpoint` calls in flight.
    InFlight,
    /// The service has `max_pending` calls waiting for room.
    Pending,
    /// The service has `max_retries` retries in flight.
    Retries,
    /// It tripped on failures in a row and has not half-opened yet (or its trial call is
    /// in flight).
    Tripped,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::InFlight => "max in flight per endpoint",
            Limit::Pending => "max pending",
            Limit::Retries => "max concurrent retries",
            Limit::Tripped => "open after failures in a row",
        })
    }
}

/// A service's breaker on one node.
#[derive(Debug, Default)]
pub struct Breaker {
    config: BreakerConfig,
    pending: AtomicU32,
    retries: AtomicU32,
    /// Calls refused since the breaker was made, for `describe`.
    refused: AtomicU64,
    /// Failed calls in a row while closed.
    failures: AtomicU32,
    /// Open until then (0: closed).
    open_until: AtomicU64,
    /// The half-open breaker's trial call is in flight.
    trial: AtomicBool,
}

/// A place taken under a limit; dropping it gives the place back. It holds the breaker,
/// so a call's future can keep it next to the routes it came from.
#[derive(Debug)]
#[must_use = "the place is given back when the guard is dropped"]
pub struct Place {
    breaker: Arc<Breaker>,
    counter: Counter,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.breaker
            .counter(self.counter)
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// The service-wide counters a place is taken in.
#[derive(Debug, Clone, Copy)]
enum Counter {
    Pending,
    Retries,
}

impl Breaker {
    /// A closed breaker with these limits.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The limits.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Whether a call may go to an endpoint that has `in_flight` calls in flight.
    pub fn admit(&self, in_flight: u32) -> Result<(), Limit> {
        if in_flight < self.config.max_in_flight_per_endpoint {
            Ok(())
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            Err(Limit::InFlight)
        }
    }

    /// A place for a call that must wait for room, or the limit that refuses it.
    pub fn pending(self: &Arc<Self>) -> Result<Place, Limit> {
        self.place(Counter::Pending, self.config.max_pending, Limit::Pending)
    }

    /// A place for a retry, or the limit that refuses it.
    pub fn retry(self: &Arc<Self>) -> Result<Place, Limit> {
        self.place(Counter::Retries, self.config.max_retries, Limit::Retries)
    }

    fn counter(&self, counter: Counter) -> &AtomicU32 {
        match counter {
            Counter::Pending => &self.pending,
            Counter::Retries => &self.retries,
        }
    }

    /// Takes a place in `counter` if fewer than `max` are taken; `limit` otherwise.
    fn place(self: &Arc<Self>, counter: Counter, max: u32, limit: Limit) -> Result<Place, Limit> {
        let taken = self
            .counter(counter)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Place {
                breaker: self.clone(),
                counter,
            }),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(limit)
            }
        }
    }

    /// Calls refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The limit reached now for an endpoint with `in_flight` calls, if any: the breaker's
    /// state as `describe` shows it.
    pub fn open_limit(&self, in_flight: u32) -> Option<Limit> {
        if in_flight >= self.config.max_in_flight_per_endpoint {
            Some(Limit::InFlight)
        } else if self.pending.load(Ordering::Acquire) >= self.config.max_pending {
            Some(Limit::Pending)
        } else if self.retries.load(Ordering::Acquire) >= self.config.max_retries {
            Some(Limit::Retries)
        } else {
            None
        }
    }
}

/// The one call a half-open breaker lets through. Its outcome closes or reopens the
/// breaker; dropped without one (the caller gave up), it lets the next call be the trial.
#[derive(Debug)]
#[must_use = "the trial's outcome decides the breaker"]
pub struct Trial {
    breaker: Arc<Breaker>,
    done: bool,
}

impl Trial {
    /// The trial call ended at `now`: closed again on success, open again on failure.
    pub fn finish(mut self, failed: bool, now: Nanos) {
        self.done = true;
        let b = &self.breaker;
        if failed {
            b.open(now);
        } else {
            b.failures.store(0, Ordering::Release);
            b.open_until.store(0, Ordering::Release);
        }
        b.trial.store(false, Ordering::Release);
    }
}

impl Drop for Trial {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.trial.store(false, Ordering::Release);
        }
    }
}

impl Breaker {
    /// Whether a call may start at `now` as far as the trip goes: `Ok(None)` when closed (or
    /// without a trip), `Ok(Some(trial))` for the one trial call of a half-open breaker,
    /// `Err(Limit::Tripped)` while open or while the trial is in flight.
    pub fn enter(self: &Arc<Self>, now: Nanos) -> Result<Option<Trial>, Limit> {
        if self.config.trip.is_none() {
            return Ok(None);
        }
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Ok(None);
        }
        if now >= until
            && self
                .trial
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Ok(Some(Trial {
                breaker: self.clone(),
                done: false,
            }));
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(Limit::Tripped)
    }

    /// A call that was not a trial ended at `now`; `failed` as passive health counts
    /// failures (unreachable, or no answer in time). Only calls of a closed breaker count.
    pub fn record(&self, failed: bool, now: Nanos) {
        let Some(trip) = self.config.trip else { return };
        if self.open_until.load(Ordering::Acquire) != 0 {
            return;
        }
        if !failed {
            self.failures.store(0, Ordering::Release);
            return;
        }
        if self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= trip.consecutive_failures.max(1) {
            self.open(now);
        }
    }

    fn open(&self, now: Nanos) {
        let open_for = self.config.trip.map_or(0, |t| t.open_for.as_nanos() as u64);
        self.failures.store(0, Ordering::Release);
        self.open_until
            .store(now.saturating_add(open_for).max(1), Ordering::Release);
    }

    /// Whether the trip holds the breaker open at `now` (or half-open with its trial in
    /// flight): for `describe`.
    pub fn tripped(&self, now: Nanos) -> bool {
        match self.open_until.load(Ordering::Acquire) {
            0 => false,
            until => now < until || self.trial.load(Ordering::Acquire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(in_flight: u32, pending: u32, retries: u32) -> Arc<Breaker> {
        Arc::new(Breaker::new(BreakerConfig {
            max_in_flight_per_endpoint: in_flight,
            max_pending: pending,
            max_retries: retries,
            trip: None,
        }))
    }

    const MS: Nanos = 1_000_000;

    fn tripping(failures: u32, open_ms: u64) -> Arc<Breaker> {
        Arc::new(Breaker::new(BreakerConfig {
            trip: Some(Trip {
                consecutive_failures: failures,
                open_for: Duration::from_millis(open_ms),
            }),
            ..BreakerConfig::default()
        }))
    }

    #[test]
    fn failures_in_a_row_trip_it_open_then_one_trial_decides() {
        let b = tripping(3, 100);
        b.record(true, 0);
        b.record(true, MS);
        b.record(false, 2 * MS);
        b.record(true, 3 * MS);
        b.record(true, 4 * MS);
        assert!(
            b.enter(5 * MS).unwrap().is_none(),
            "a success broke the run"
        );
        b.record(true, 5 * MS);
        assert_eq!(b.enter(6 * MS).unwrap_err(), Limit::Tripped);
        assert!(b.tripped(6 * MS));
        assert_eq!(
            b.enter(104 * MS).unwrap_err(),
            Limit::Tripped,
            "open for 100 ms"
        );
        // Half-open: one trial, the others still refused.
        let trial = b.enter(105 * MS).unwrap().expect("the trial");
        assert_eq!(b.enter(105 * MS).unwrap_err(), Limit::Tripped);
        // Late outcomes of calls from before the trip change nothing.
        b.record(false, 106 * MS);
        assert!(b.tripped(106 * MS));
        trial.finish(true, 110 * MS);
        assert_eq!(
            b.enter(111 * MS).unwrap_err(),
            Limit::Tripped,
            "a failed trial reopens"
        );
        let trial = b.enter(210 * MS).unwrap().expect("half-open again");
        trial.finish(false, 211 * MS);
        assert!(b.enter(212 * MS).unwrap().is_none(), "closed");
        assert!(!b.tripped(212 * MS));
        assert_eq!(b.refused(), 4);
    }

    #[test]
    fn a_trial_given_up_lets_the_next_call_be_the_trial() {
        let b = tripping(1, 10);
        b.record(true, 0);
        let trial = b.enter(10 * MS).unwrap().unwrap();
        drop(trial);
        assert!(b.enter(10 * MS).unwrap().is_some());
    }

    #[test]
    fn without_a_trip_failures_never_open_it() {
        let b = breaker(10, 10, 10);
        for t in 0..100 {
            b.record(true, t);
        }
        assert!(b.enter(100).unwrap().is_none());
    }

    #[test]
    fn it_opens_at_the_in_flight_limit_and_closes_below_it() {
        let b = breaker(2, 10, 10);
        assert_eq!(b.admit(1), Ok(()));
        assert_eq!(b.admit(2), Err(Limit::InFlight));
        assert_eq!(b.open_limit(2), Some(Limit::InFlight));
        assert_eq!(b.open_limit(1), None, "closed again once a call finished");
        assert_eq!(b.refused(), 1);
    }

    #[test]
    fn retries_in_flight_are_bounded_and_their_places_come_back() {
        let b = breaker(10, 10, 2);
        let first = b.retry().unwrap();
        let second = b.retry().unwrap();
        assert_eq!(b.retry().unwrap_err(), Limit::Retries);
        assert_eq!(b.open_limit(0), Some(Limit::Retries));
        drop(first);
        let third = b.retry().expect("a place came back");
        drop((second, third));
        assert_eq!(b.open_limit(0), None);
        assert_eq!(b.refused(), 1);
    }

    #[test]
    fn pending_calls_are_bounded_across_threads() {
        let b = breaker(10, 5, 10);
        let taken = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10 {
                        if let Ok(p) = b.pending() {
                            taken.lock().unwrap().push(p);
                        }
                    }
                });
            }
        });
        assert_eq!(taken.lock().unwrap().len(), 5);
        assert_eq!(b.refused(), 35);
        taken.lock().unwrap().clear();
        assert!(b.pending().is_ok());
    }
}
