//! Circuit breaking as Envoy's: limits on what a service may have outstanding, checked
//! before a call goes out. A call over a limit is refused at once (`CircuitOpen`), never
//! made to wait; the breaker is open only while a limit is reached, so it closes as soon
//! as calls finish. Counters are atomics, so every caller of a node shares them without a
//! lock; a call holds a guard that gives its place back when dropped.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// A breaker's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Calls in flight to one endpoint.
    pub max_in_flight_per_endpoint: u32,
    /// Calls waiting for room (a full mailbox or lane) across the service.
    pub max_pending: u32,
    /// Retries in flight across the service.
    pub max_retries: u32,
}

impl Default for BreakerConfig {
    /// Envoy's defaults: 1,024 requests, 1,024 pending, 3 retries.
    fn default() -> Self {
        Self {
            max_in_flight_per_endpoint: 1024,
            max_pending: 1024,
            max_retries: 3,
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
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::InFlight => "max in flight per endpoint",
            Limit::Pending => "max pending",
            Limit::Retries => "max concurrent retries",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(in_flight: u32, pending: u32, retries: u32) -> Arc<Breaker> {
        Arc::new(Breaker::new(BreakerConfig {
            max_in_flight_per_endpoint: in_flight,
            max_pending: pending,
            max_retries: retries,
        }))
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
