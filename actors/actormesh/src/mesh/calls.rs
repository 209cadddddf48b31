//! A call by name under a service's traffic policy: the composition of the plain cores in
//! [`crate::mesh::policy`], in the order Envoy's filters and linkerd2-proxy's layers run.
//!
//! 1. The route decides ([`Plan::new`]): the rule, its subset, faults and mirroring.
//! 2. An injected delay is waited, an injected abort answered.
//! 3. A shadow copy goes to the mirror subset, its reply discarded; the caller never
//!    waits for it.
//! 4. The breaker gives the call a pending place (and, tripped open on failures, refuses it
//!    or lets it be the half-open trial), or it fails at once with `CircuitOpen`.
//! 5. Each try picks an endpoint of the subset (a retry avoids the endpoints tried),
//!    checks the endpoint's in-flight limit, and waits at most the earlier of its per-try
//!    timeout and what the overall timeout leaves (that is also the deadline the callee
//!    gets). Its outcome feeds the endpoint's health and outlier detection.
//! 6. A failed try goes again only if the rule's retries allow it ([`RetryPolicy::decide`]:
//!    the error, idempotency, tries left, time left), the retry budget has one, and the
//!    breaker has a retry place.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mesh::balance::{Nanos, PickInput, Picked};
use crate::mesh::clock;
use crate::mesh::figures::PolicyCounters;
use crate::mesh::policy::active::{lock, ActivePolicy};
use crate::mesh::policy::breaker::Limit;
use crate::mesh::policy::retry::{self, RetryPolicy};
use crate::mesh::policy::spec::AbortKind;
use crate::mesh::registry::ServiceName;
use crate::mesh::route::ServiceRoutes;
use crate::mesh::service::{ask_outcome, with_random, CallOptions, InFlight};
use crate::{AskError, CallInfo, CallOptions as RuntimeCallOptions, RemoteRef};

/// A copy of the call sent to a mirror endpoint; its outcome feeds that endpoint's state.
pub(crate) type Shadow = Box<
    dyn FnOnce(
            RemoteRef,
            RuntimeCallOptions,
        ) -> Pin<Box<dyn Future<Output = Result<(), AskError>> + Send>>
        + Send,
>;

/// What the route decided for one call, before anything is sent.
pub(crate) struct Plan {
    routes: Arc<ServiceRoutes<RemoteRef>>,
    /// The rule that matched. Indexes are `u32`, so that the plan, which every call under
    /// a policy carries in its (boxed) future, stays small.
    rule: Option<u32>,
    /// The subset drawn: its index among the policy's subsets, or (`Err`) the index in the
    /// rule's split of one the policy does not define; `None`: the whole service.
    subset: Option<Result<u32, u32>>,
    delay: Option<Duration>,
    abort: Option<AbortKind>,
    mirror: Option<u32>,
    /// The overall timeout: the rule's, the caller's, or the node's default, and never
    /// more than the call being handled has left.
    overall: Duration,
    started: Instant,
    /// The service's policy counters, when the node keeps figures.
    counters: Option<Arc<PolicyCounters>>,
}

/// The overall timeout of a call: the rule's and the caller's, the shorter if both are set;
/// the node's default if neither is.
fn overall_timeout(
    rule: Option<Duration>,
    caller: Option<Duration>,
    default: Duration,
) -> Duration {
    match (rule, caller) {
        (Some(r), Some(c)) => r.min(c),
        (Some(r), None) => r,
        (None, c) => c.unwrap_or(default),
    }
}

fn circuit_open(service: &ServiceName, limit: Limit) -> AskError {
    AskError::CircuitOpen {
        service: service.to_string(),
        limit: limit.to_string(),
    }
}

fn no_endpoints_in(service: &ServiceName, subset: &str) -> AskError {
    AskError::NoEndpoints {
        service: format!("{service} (subset {subset})"),
    }
}

impl Plan {
    /// The route's decision for a call of `message` with `options`, made now.
    pub(crate) fn new(
        routes: Arc<ServiceRoutes<RemoteRef>>,
        message: &str,
        options: &CallOptions,
        default_timeout: Duration,
    ) -> Self {
        let started = Instant::now();
        let ambient = CallInfo::current();
        // The metadata the call will carry: its own, then what the call being handled
        // passes on.
        let metadata = |k: &str| {
            options.metadata.get(k).or_else(|| {
                let m = ambient.as_ref()?.metadata();
                m.is_propagated(k).then(|| m.get(k)).flatten()
            })
        };
        let workload = ambient.as_ref().and_then(|a| a.handler_workload());
        let policy = routes
            .policy()
            .expect("a plan is made for a service with a policy");
        let (rule, subset, delay, abort, mirror) =
            with_random(|r| match policy.decide(message, metadata, workload, r) {
                None => (None, None, None, None, None),
                Some(d) => (
                    d.rule.map(|i| i as u32),
                    d.subset.map(|name| {
                        policy
                            .subsets()
                            .iter()
                            .position(|s| s.name() == name)
                            .map(|i| i as u32)
                            .ok_or_else(|| policy.split_index(d.rule, name))
                    }),
                    d.delay,
                    d.abort,
                    d.mirror.and_then(|name| {
                        policy
                            .subsets()
                            .iter()
                            .position(|s| s.name() == name)
                            .map(|i| i as u32)
                    }),
                ),
            });
        let own = overall_timeout(
            rule.and_then(|i| policy.timeout(i as usize)),
            options.timeout,
            default_timeout,
        );
        let overall = ambient
            .as_ref()
            .and_then(|a| a.remaining())
            .map_or(own, |left| own.min(left));
        drop(ambient);
        Self {
            routes,
            rule,
            subset,
            delay,
            abort,
            mirror,
            overall,
            started,
            counters: None,
        }
    }

    /// Counting retries and breaker refusals in `counters`.
    pub(crate) fn counted(mut self, counters: Option<Arc<PolicyCounters>>) -> Self {
        self.counters = counters;
        self
    }

    /// The breaker refused the call at `limit`: counted, and its error.
    fn refused(&self, service: &ServiceName, limit: Limit) -> AskError {
        if let Some(c) = &self.counters {
            c.circuit_open.fetch_add(1, Ordering::Relaxed);
        }
        circuit_open(service, limit)
    }

    fn policy(&self) -> &ActivePolicy {
        self.routes.policy().expect("planned with a policy")
    }

    fn retries(&self) -> Option<&RetryPolicy> {
        self.rule.and_then(|i| self.policy().retries(i as usize))
    }

    /// Whether a failed try may be sent again (then the message must be copied).
    pub(crate) fn may_retry(&self) -> bool {
        self.retries().is_some()
    }

    /// Whether a copy goes to a mirror subset.
    pub(crate) fn mirrors(&self) -> bool {
        self.mirror.is_some()
    }

    /// Whether the route injects a fault into this call.
    #[inline]
    pub(crate) fn has_faults(&self) -> bool {
        self.delay.is_some() || self.abort.is_some()
    }

    /// The injected fault, if the route injects one into this call: waits the delay
    /// (failing with `Timeout` if it is not shorter than the overall timeout), then gives
    /// the abort's error.
    pub(crate) async fn faults(&self) -> Result<(), AskError> {
        if let Some(d) = self.delay {
            if d >= self.overall {
                tokio::time::sleep(self.overall).await;
                return Err(AskError::Timeout {
                    after: self.overall,
                });
            }
            tokio::time::sleep(d).await;
        }
        self.abort_now()
    }

    /// The injected abort, if any (no waiting: for calls that cannot wait).
    pub(crate) fn abort_now(&self) -> Result<(), AskError> {
        match (self.abort, self.rule) {
            (Some(kind), Some(rule)) => {
                Err(self.policy().abort_error(kind, rule as usize, self.overall))
            }
            _ => Ok(()),
        }
    }

    /// Picks an endpoint of the call's subset (or the whole service), avoiding `avoid` if
    /// another may be used.
    pub(crate) fn pick(
        &self,
        service: &ServiceName,
        key: Option<u64>,
        avoid: &[usize],
        now: Nanos,
    ) -> Result<Picked, AskError> {
        let routes = &self.routes;
        with_random(|random| {
            let input = PickInput { now, key, random };
            match &self.subset {
                None => routes
                    .pick_avoiding(input, avoid)
                    .ok_or_else(|| crate::mesh::no_endpoints(service)),
                Some(Err(j)) => {
                    let name = self
                        .policy()
                        .split_subset(self.rule.unwrap_or(0) as usize, *j as usize);
                    Err(no_endpoints_in(service, name))
                }
                Some(Ok(i)) => {
                    let subset = &self.policy().subsets()[*i as usize];
                    subset
                        .pick(input, avoid)
                        .ok_or_else(|| no_endpoints_in(service, subset.name()))
                }
            }
        })
    }

    /// The routes the call uses.
    pub(crate) fn routes(&self) -> &Arc<ServiceRoutes<RemoteRef>> {
        &self.routes
    }

    /// Sends the shadow copy to an endpoint of the mirror subset, in the background.
    pub(crate) fn mirror(&self, shadow: Shadow, metadata: &crate::Metadata) {
        let Some(i) = self.mirror else { return };
        let routes = self.routes.clone();
        let subset = &self.policy().subsets()[i as usize];
        let now = clock::nanos(Instant::now());
        let picked = with_random(|random| {
            subset.pick(
                PickInput {
                    now,
                    key: None,
                    random,
                },
                &[],
            )
        });
        let Some(picked) = picked else { return };
        routes.state(picked.index).start();
        let target = routes.target(picked.index).clone();
        let options = RuntimeCallOptions {
            timeout: Some(self.overall),
            metadata: metadata.clone(),
            ..RuntimeCallOptions::default()
        };
        tokio::spawn(async move {
            let call = InFlight::new(routes.state(picked.index), picked.admission);
            let result = shadow(target, options).await;
            call.finish(ask_outcome(&result), true, &routes);
        });
    }

    /// Runs the tries: `send` makes one on a target (borrowed from the plan's routes) with
    /// its options (the first takes the message, later ones a copy). Injected faults and
    /// the mirror are the caller's, before.
    pub(crate) async fn run<'a, R, S, Fut>(
        &'a self,
        service: &ServiceName,
        idempotent: bool,
        options: &CallOptions,
        mut send: S,
    ) -> Result<R, AskError>
    where
        S: FnMut(&'a RemoteRef, RuntimeCallOptions) -> Fut,
        Fut: Future<Output = Result<R, AskError>>,
    {
        let policy = self.policy();
        let routes = &self.routes;
        let deadline = self.started + self.overall;
        let breaker = policy.breaker();
        let t0 = clock::nanos(self.started);
        // A tripped breaker refuses at once; a half-open one lets this call be its trial.
        let mut trial = match breaker {
            Some(b) => b.enter(t0).map_err(|l| self.refused(service, l))?,
            None => None,
        };
        let _pending = match breaker {
            Some(b) => Some(b.pending().map_err(|l| self.refused(service, l))?),
            None => None,
        };
        let retries = self.retries();
        let budget = retries.and(policy.budget());
        if let Some(b) = budget {
            lock(b).call(t0);
        }
        let mut tried: Vec<usize> = Vec::new();
        let mut attempt = 0u32;
        let mut _retry_place = None;
        // The first try starts when the call was planned; later ones read the clock.
        let mut now = self.started;
        loop {
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Err(AskError::Timeout {
                    after: self.overall,
                });
            }
            let timeout = retry::try_timeout(retries.and_then(RetryPolicy::per_try_timeout), left);
            let picked = self.pick(service, options.hash_key, &tried, clock::nanos(now))?;
            let state = routes.state(picked.index);
            state.start();
            let call = InFlight::started_at(state, picked.admission, now);
            if let Some(Err(l)) = breaker.map(|b| b.admit(state.in_flight() - 1)) {
                // Never sent: the endpoint's state forgets the call.
                drop(call);
                return Err(self.refused(service, l));
            }
            let try_options = RuntimeCallOptions {
                timeout: Some(timeout),
                metadata: options.metadata.clone(),
                attempt,
                trace: options.trace,
            };
            // Borrowed from the plan's routes: no reference is cloned per try.
            let result = send(routes.target(picked.index), try_options).await;
            let outcome = ask_outcome(&result);
            let ended = call.finish(outcome, true, routes);
            if let Some(b) = breaker {
                match trial.take() {
                    Some(t) => t.finish(outcome.is_failure(), ended),
                    None => b.record(outcome.is_failure(), ended),
                }
            }
            let e = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Some(r) = retries else { return Err(e) };
            now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            let backoff = match with_random(|rng| r.decide(&e, attempt + 1, idempotent, left, rng))
            {
                Ok(b) => b,
                Err(_) => return Err(e),
            };
            if let Some(b) = budget {
                if !lock(b).try_retry(clock::nanos(now)) {
                    return Err(e);
                }
            }
            _retry_place = match breaker.map(|b| b.retry()) {
                Some(Err(_)) => return Err(e),
                Some(Ok(place)) => Some(place),
                None => None,
            };
            tried.push(picked.index);
            attempt += 1;
            if let Some(c) = &self.counters {
                c.retries.fetch_add(1, Ordering::Relaxed);
            }
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
                now = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_overall_timeout_is_the_shorter_of_the_rules_and_the_callers_and_the_default_otherwise() {
        assert_eq!(overall_timeout(Some(2 * S), Some(5 * S), 30 * S), 2 * S);
        assert_eq!(overall_timeout(Some(2 * S), Some(S), 30 * S), S);
        // A route may give more than the node's default: it is the operator's decision.
        assert_eq!(overall_timeout(Some(60 * S), None, 30 * S), 60 * S);
        assert_eq!(overall_timeout(None, Some(5 * S), 30 * S), 5 * S);
        assert_eq!(overall_timeout(None, None, 30 * S), 30 * S);
    }
}
