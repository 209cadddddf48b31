//! Per-endpoint live state, shared by every caller on a node: calls in flight, the
//! peak-EWMA latency estimate, and passive health (ejection).
//!
//! Everything is in atomics, so a pick and an outcome take no lock. The state lives in an
//! `Arc` that the route table carries over from one snapshot to the next by endpoint id,
//! so a push does not forget what was learned about an endpoint.
//!
//! **Passive health.** A call that failed as Unreachable, or whose outcome is unknown (a
//! timeout), counts as a failure; after [`HealthPolicy::failures_to_eject`] of them in a row
//! the endpoint is ejected for a backoff (`base_ejection`, doubling per ejection in a row up
//! to `max_ejection`). When the backoff has passed, one call is let through as a probe:
//! success clears the ejection, failure ejects again for twice as long. Any other outcome
//! (a reply, or an error the callee answered with) is a success for health.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::Nanos;

/// How a call ended, as passive health and the latency estimate see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A reply came.
    Success,
    /// The callee answered with an error: it is there and working.
    Failed,
    /// The endpoint could not be reached (or nothing serves there any more).
    Unreachable,
    /// Sent, then no answer (a timeout, or the link dropped while waiting).
    Unknown,
}

impl Outcome {
    /// Whether passive health (and a breaker's trip) counts it as a failure.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Unreachable | Outcome::Unknown)
    }
}

/// When an endpoint is ejected and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Failures in a row that eject an endpoint (at least 1).
    pub failures_to_eject: u32,
    /// The first ejection's length.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// The n-th ejection in a row lasts n × `base_ejection` (Envoy's outlier detection)
    /// rather than doubling each time.
    pub linear: bool,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            failures_to_eject: 2,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            linear: false,
        }
    }
}

impl HealthPolicy {
    fn ejection(&self, times_in_a_row: u32) -> Nanos {
        let base = self.base_ejection.as_nanos() as u64;
        let max = self.max_ejection.as_nanos() as u64;
        let factor = if self.linear {
            u64::from(times_in_a_row.max(1))
        } else {
            1u64 << times_in_a_row.saturating_sub(1).min(32)
        };
        base.saturating_mul(factor).min(max)
    }
}

/// Whether a pick may use an endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Healthy.
    Ready,
    /// Ejected, its backoff over: this call is the one probe.
    Probe,
}

/// The live state of one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    in_flight: AtomicU32,
    /// The latency estimate in nanoseconds, as `f64` bits.
    rtt: AtomicU64,
    /// When `rtt` was last updated.
    rtt_at: AtomicU64,
    failures: AtomicU32,
    /// Ejected until then (0: not ejected).
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    probing: AtomicBool,
}

impl EndpointState {
    /// A new endpoint, its latency estimate starting at `initial_rtt` at time `now`.
    pub fn new(initial_rtt: Duration, now: Nanos) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            rtt: AtomicU64::new((initial_rtt.as_nanos() as f64).to_bits()),
            rtt_at: AtomicU64::new(now),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Whether the endpoint is ejected at `now` (a probe may be due).
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Relaxed) != 0
    }

    /// How long it stays ejected after `now`: `None` when it is not ejected, zero when its
    /// ejection is over and it waits for a probe to succeed.
    pub fn ejected_for(&self, now: Nanos) -> Option<Duration> {
        match self.ejected_until.load(Relaxed) {
            0 => None,
            until => Some(Duration::from_nanos(until.saturating_sub(now))),
        }
    }

    /// Whether a pick may use this endpoint at `now`. A due probe is claimed by the first
    /// caller only; the others see the endpoint as ejected until the probe's outcome.
    pub fn admit(&self, now: Nanos) -> Option<Admission> {
        let until = self.ejected_until.load(Relaxed);
        if until == 0 {
            return Some(Admission::Ready);
        }
        if now < until {
            return None;
        }
        self.probing
            .compare_exchange(false, true, Relaxed, Relaxed)
            .ok()
            .map(|_| Admission::Probe)
    }

    /// A call starts.
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// A started call ended without an outcome (its caller gave up on it): the probe it
    /// may have been is released so that another call can probe.
    pub fn abandon(&self, admission: Admission) {
        self.in_flight.fetch_sub(1, Relaxed);
        if admission == Admission::Probe {
            self.probing.store(false, Relaxed);
        }
    }

    /// A started call ended at `now` with `outcome`, after `latency` if it waited for an
    /// answer (a `tell` does not: it gives no latency sample).
    pub fn finish(
        &self,
        admission: Admission,
        outcome: Outcome,
        latency: Option<Duration>,
        now: Nanos,
        decay: Duration,
        policy: &HealthPolicy,
    ) {
        self.finish_capped(admission, outcome, latency, now, decay, policy, || true)
    }

    /// As [`EndpointState::finish`], but an endpoint that reached its failures is ejected
    /// only if `may_eject` says the service may lose one more (outlier detection's
    /// max-ejected and min-healthy shares); it is asked only then, and not for an endpoint
    /// that is out already (a failed probe, a late failure while ejected).
    #[allow(clippy::too_many_arguments)]
    pub fn finish_capped(
        &self,
        admission: Admission,
        outcome: Outcome,
        latency: Option<Duration>,
        now: Nanos,
        decay: Duration,
        policy: &HealthPolicy,
        may_eject: impl FnOnce() -> bool,
    ) {
        self.in_flight.fetch_sub(1, Relaxed);
        // A fast failure must not look like a fast endpoint: only answers feed the latency,
        // and an unknown outcome counts as slow as it was.
        if let Some(latency) = latency.filter(|_| outcome != Outcome::Unreachable) {
            self.observe(latency, now, decay);
        }
        if outcome.is_failure() {
            let failures = self.failures.fetch_add(1, Relaxed) + 1;
            let probe_failed = admission == Admission::Probe;
            if probe_failed
                || (failures >= policy.failures_to_eject.max(1)
                    && (self.is_ejected() || may_eject()))
            {
                let times = self.ejections.fetch_add(1, Relaxed) + 1;
                self.ejected_until
                    .store(now.saturating_add(policy.ejection(times)).max(1), Relaxed);
                self.failures.store(0, Relaxed);
            }
        } else {
            self.failures.store(0, Relaxed);
            if admission == Admission::Probe || self.is_ejected() {
                self.ejected_until.store(0, Relaxed);
                self.ejections.store(0, Relaxed);
            }
        }
        if admission == Admission::Probe {
            self.probing.store(false, Relaxed);
        }
    }

    /// Feeds one latency sample into the peak-EWMA estimate (as tower's `PeakEwma`): a
    /// sample above the estimate replaces it at once (peak-sensitive); one below moves it
    /// by a weight that grows with the time since the last sample.
    pub fn observe(&self, latency: Duration, now: Nanos, decay: Duration) {
        let sample = latency.as_nanos() as f64;
        let rtt = f64::from_bits(self.rtt.load(Relaxed));
        let next = if sample > rtt {
            sample
        } else {
            let w = decay_weight(now.saturating_sub(self.rtt_at.load(Relaxed)), decay);
            rtt * w + sample * (1.0 - w)
        };
        self.rtt.store(next.to_bits(), Relaxed);
        self.rtt_at.store(now, Relaxed);
    }

    /// The latency estimate at `now`, in nanoseconds: it decays toward zero while no sample
    /// comes, so an endpoint avoided for being slow is tried again in time.
    pub fn rtt_estimate(&self, now: Nanos, decay: Duration) -> f64 {
        let rtt = f64::from_bits(self.rtt.load(Relaxed));
        rtt * decay_weight(now.saturating_sub(self.rtt_at.load(Relaxed)), decay)
    }

    /// The P2C cost at `now`: the latency estimate times the calls in flight plus one.
    pub fn cost(&self, now: Nanos, decay: Duration) -> f64 {
        self.rtt_estimate(now, decay) * f64::from(self.in_flight() + 1)
    }
}

fn decay_weight(elapsed: Nanos, decay: Duration) -> f64 {
    let decay = decay.as_nanos() as f64;
    if decay <= 0.0 {
        return 0.0;
    }
    (-(elapsed as f64) / decay).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;
    const DECAY: Duration = Duration::from_secs(10);

    fn policy() -> HealthPolicy {
        HealthPolicy {
            failures_to_eject: 2,
            base_ejection: Duration::from_millis(100),
            max_ejection: Duration::from_millis(1000),
            linear: false,
        }
    }

    fn call(s: &EndpointState, now: Nanos, outcome: Outcome) -> Option<Admission> {
        let a = s.admit(now)?;
        s.start();
        s.finish(
            a,
            outcome,
            Some(Duration::from_millis(1)),
            now,
            DECAY,
            &policy(),
        );
        Some(a)
    }

    #[test]
    fn failures_in_a_row_eject_then_one_probe_and_success_clears() {
        let s = EndpointState::new(Duration::from_millis(1), 0);
        assert_eq!(call(&s, 0, Outcome::Unreachable), Some(Admission::Ready));
        assert!(!s.is_ejected(), "one failure is below the threshold");
        assert_eq!(call(&s, MS, Outcome::Unknown), Some(Admission::Ready));
        assert!(s.is_ejected());
        assert_eq!(s.admit(50 * MS), None, "skipped during the backoff");
        // The backoff (100 ms from 1 ms) is over: exactly one probe.
        assert_eq!(s.admit(101 * MS), Some(Admission::Probe));
        assert_eq!(
            s.admit(101 * MS),
            None,
            "a second caller does not probe too"
        );
        s.start();
        s.finish(
            Admission::Probe,
            Outcome::Success,
            Some(Duration::from_millis(1)),
            102 * MS,
            DECAY,
            &policy(),
        );
        assert!(!s.is_ejected());
        assert_eq!(s.admit(103 * MS), Some(Admission::Ready));
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn a_failed_probe_ejects_for_twice_as_long_and_an_answered_error_is_healthy() {
        let s = EndpointState::new(Duration::from_millis(1), 0);
        call(&s, 0, Outcome::Unreachable);
        call(&s, 0, Outcome::Unreachable);
        assert_eq!(
            call(&s, 100 * MS, Outcome::Unreachable),
            Some(Admission::Probe)
        );
        assert_eq!(s.admit(299 * MS), None, "ejected 200 ms the second time");
        assert_eq!(call(&s, 300 * MS, Outcome::Failed), Some(Admission::Probe));
        assert!(!s.is_ejected(), "the callee answered: it is there");
    }

    #[test]
    fn an_abandoned_probe_lets_another_call_probe() {
        let s = EndpointState::new(Duration::from_millis(1), 0);
        call(&s, 0, Outcome::Unreachable);
        call(&s, 0, Outcome::Unreachable);
        let a = s.admit(100 * MS).unwrap();
        s.start();
        s.abandon(a);
        assert_eq!(s.admit(100 * MS), Some(Admission::Probe));
    }

    #[test]
    fn the_estimate_jumps_to_peaks_and_decays_slowly() {
        let s = EndpointState::new(Duration::from_millis(1), 0);
        s.observe(Duration::from_millis(10), 0, DECAY);
        assert_eq!(s.rtt_estimate(0, DECAY), 10.0 * MS as f64);
        // A fast sample 1 s later moves it only part of the way (weight e^-0.1).
        s.observe(Duration::from_millis(1), 1000 * MS, DECAY);
        let e = s.rtt_estimate(1000 * MS, DECAY) / MS as f64;
        assert!((e - (10.0 * (-0.1f64).exp() + (1.0 - (-0.1f64).exp()))).abs() < 1e-6);
        s.start();
        s.start();
        assert!((s.cost(1000 * MS, DECAY) / MS as f64 - 3.0 * e).abs() < 1e-6);
    }
}
