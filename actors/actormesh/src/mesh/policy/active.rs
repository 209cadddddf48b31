//! A service's traffic policy as a node's proxy applies it: the Route's rules with their
//! retry policies, the DestinationPolicy's subsets (each a list of the service's endpoints
//! and a balancer over them), and the live parts that every caller on the node shares: the
//! circuit breaker, the retry budget and the rate limit's bucket.
//!
//! Built with each route table from the pushed [`Traffic`]; the live parts carry over from
//! the table it replaces while their settings are unchanged, as endpoint state does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::breaker::{Breaker, BreakerConfig, Trip};
use super::bucket::{BucketConfig, TokenBucket};
use super::budget::{BudgetConfig, RetryBudget};
use super::choose::{decide, Decision};
use super::ejection::OutlierConfig;
use super::retry::RetryPolicy;
use super::spec::{AbortKind, DestinationPolicySpec, RouteSpec};
use crate::mesh::balance::{
    EndpointState, HealthPolicy, Nanos, PickInput, Picked, Random, ServiceBalancer,
};
use crate::mesh::registry::{Applied, BalancerKind, Endpoint, Traffic};
use crate::AskError;

/// Some of a service's endpoints, by labels, with a balancer of their own.
#[derive(Debug)]
pub struct Subset {
    name: String,
    /// The members, as indexes into the service's endpoints.
    indices: Vec<usize>,
    /// Their live state (the service's, shared).
    states: Vec<Arc<EndpointState>>,
    balancer: ServiceBalancer,
}

impl Subset {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its members, as indexes into the service's endpoints.
    pub fn members(&self) -> &[usize] {
        &self.indices
    }

    /// Its balancer's kind.
    pub fn balancer(&self) -> BalancerKind {
        self.balancer.kind()
    }

    /// Picks a member other than those in `avoid` (service endpoint indexes) if one may be
    /// used; the index returned is the service's. `None` when the subset is empty.
    pub fn pick<R: Random>(&self, input: PickInput<'_, R>, avoid: &[usize]) -> Option<Picked> {
        let local: Vec<usize> = avoid
            .iter()
            .filter_map(|a| self.indices.iter().position(|i| i == a))
            .collect();
        self.balancer
            .pick_avoiding(&self.states, input, &local)
            .map(|p| Picked {
                index: self.indices[p.index],
                admission: p.admission,
            })
    }
}

/// What a proxy applies for one service.
#[derive(Debug)]
pub struct ActivePolicy {
    route: Option<Applied<RouteSpec>>,
    /// Per rule of the route, its retries.
    retries: Vec<Option<RetryPolicy>>,
    policy: Option<Applied<DestinationPolicySpec>>,
    subsets: Vec<Subset>,
    breaker: Option<Arc<Breaker>>,
    outlier: Option<OutlierConfig>,
    budget: Option<Arc<Mutex<RetryBudget>>>,
    limiter: Option<Arc<Mutex<TokenBucket>>>,
}

/// Builds a balancer of `kind` over the service's endpoints at these indexes.
pub type MakeBalancer<'a> = dyn Fn(BalancerKind, &[usize]) -> ServiceBalancer + 'a;

/// Whether `endpoint` has every label of a subset (`version` is its version).
pub fn in_subset(labels: &std::collections::BTreeMap<String, String>, e: &Endpoint) -> bool {
    super::analyze::subset_matches(labels, e)
}

/// The balancer the policy sets for the whole service, over the one in its `service:`
/// block.
pub fn service_balancer(traffic: &Traffic, declared: BalancerKind) -> BalancerKind {
    traffic
        .policy
        .as_ref()
        .and_then(|p| p.spec.balancer)
        .unwrap_or(declared)
}

impl ActivePolicy {
    /// The policy of `traffic` over `endpoints` (whose live states are `states`), keeping
    /// the live parts of `old` whose settings are unchanged; `None` when nothing is
    /// applied. An invalid spec is refused naming its field (the master validated it; a
    /// proxy checks again what it is given).
    pub fn build(
        traffic: &Traffic,
        endpoints: &[Endpoint],
        states: &[Arc<EndpointState>],
        declared: BalancerKind,
        old: Option<&ActivePolicy>,
        make_balancer: &MakeBalancer<'_>,
        now: Nanos,
    ) -> Result<Option<ActivePolicy>, String> {
        if !traffic.shapes_calls() {
            return Ok(None);
        }
        if let Some(r) = &traffic.route {
            r.spec
                .validate()
                .map_err(|e| format!("Route {}: spec.{e}", r.object))?;
        }
        if let Some(p) = &traffic.policy {
            p.spec
                .validate()
                .map_err(|e| format!("DestinationPolicy {}: spec.{e}", p.object))?;
        }
        let retries = traffic.route.as_ref().map_or_else(Vec::new, |r| {
            r.spec
                .rules
                .iter()
                .map(|rule| rule.retries.as_ref().map(RetryPolicy::new))
                .collect()
        });
        let spec = traffic.policy.as_ref().map(|p| &p.spec);
        let whole = service_balancer(traffic, declared);
        let subsets = spec.map_or_else(Vec::new, |p| {
            p.subsets
                .iter()
                .map(|s| {
                    let indices: Vec<usize> = endpoints
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| in_subset(&s.labels, e))
                        .map(|(i, _)| i)
                        .collect();
                    Subset {
                        name: s.name.clone(),
                        states: indices.iter().map(|i| states[*i].clone()).collect(),
                        balancer: make_balancer(s.balancer.unwrap_or(whole), &indices),
                        indices,
                    }
                })
                .collect()
        });
        let breaker = spec.and_then(|p| p.circuit_breaker.as_ref()).map(|b| {
            let config = BreakerConfig {
                max_in_flight_per_endpoint: b.max_in_flight_per_endpoint,
                max_pending: b.max_pending,
                max_retries: b.max_retries,
                trip: b.consecutive_failures.map(|n| Trip {
                    consecutive_failures: n,
                    open_for: b.open_for,
                }),
            };
            old.and_then(|o| o.breaker.clone())
                .filter(|kept| *kept.config() == config)
                .unwrap_or_else(|| Arc::new(Breaker::new(config)))
        });
        let outlier = spec.and_then(|p| p.outlier_detection.as_ref()).map(|o| {
            let defaults = OutlierConfig::default();
            OutlierConfig {
                consecutive_errors: o.consecutive_errors,
                interval: o.interval,
                base_ejection: o.base_ejection,
                max_ejection: defaults.max_ejection.max(o.base_ejection),
                max_ejection_percent: o.max_ejection_percent,
                min_healthy_percent: o.min_healthy_percent,
            }
        });
        // Only a route that retries spends a budget: Linkerd's when the policy sets none.
        let any_retries = retries.iter().any(Option::is_some);
        let budget = any_retries.then(|| {
            let config = spec.and_then(|p| p.retry_budget.as_ref()).map_or_else(
                BudgetConfig::default,
                |b| BudgetConfig {
                    ratio: b.ratio,
                    min_per_second: b.min_per_second,
                    ttl: b.ttl,
                },
            );
            old.and_then(|o| o.budget.clone())
                .filter(|kept| *lock(kept).config() == config)
                .unwrap_or_else(|| Arc::new(Mutex::new(RetryBudget::new(config))))
        });
        let limiter = spec.and_then(|p| p.rate_limit.as_ref()).map(|r| {
            let config = BucketConfig {
                rate: r.rate,
                burst: r.burst.unwrap_or_else(|| (r.rate.ceil() as u32).max(1)),
            };
            old.and_then(|o| o.limiter.clone())
                .filter(|kept| *lock(kept).config() == config)
                .unwrap_or_else(|| Arc::new(Mutex::new(TokenBucket::new(config, now))))
        });
        Ok(Some(ActivePolicy {
            route: traffic.route.clone(),
            retries,
            policy: traffic.policy.clone(),
            subsets,
            breaker,
            outlier,
            budget,
            limiter,
        }))
    }

    /// The Route applied, if any.
    pub fn route(&self) -> Option<&Applied<RouteSpec>> {
        self.route.as_ref()
    }

    /// The DestinationPolicy applied, if any.
    pub fn policy(&self) -> Option<&Applied<DestinationPolicySpec>> {
        self.policy.as_ref()
    }

    /// What the route decides for a call (no rule: the whole service, no policy).
    pub fn decide<'m>(
        &self,
        message: &str,
        metadata: impl Fn(&str) -> Option<&'m str> + Copy,
        workload: Option<&str>,
        random: &mut impl Random,
    ) -> Option<Decision<'_>> {
        let route = self.route.as_ref()?;
        Some(decide(&route.spec, message, metadata, workload, random))
    }

    /// The retries of rule `rule`.
    pub fn retries(&self, rule: usize) -> Option<&RetryPolicy> {
        self.retries.get(rule)?.as_ref()
    }

    /// Where `name` (as [`ActivePolicy::decide`] gave it, borrowed from the route) is in
    /// the split of rule `rule`.
    pub fn split_index(&self, rule: Option<usize>, name: &str) -> u32 {
        self.route
            .as_ref()
            .and_then(|r| r.spec.rules.get(rule?))
            .and_then(|r| r.split.iter().position(|s| s.subset == name))
            .unwrap_or(0) as u32
    }

    /// The subset named at place `j` of rule `rule`'s split (`""` if there is none).
    pub fn split_subset(&self, rule: usize, j: usize) -> &str {
        self.route
            .as_ref()
            .and_then(|r| r.spec.rules.get(rule))
            .and_then(|r| r.split.get(j))
            .map_or("", |s| s.subset.as_str())
    }

    /// The overall timeout rule `rule` sets.
    pub fn timeout(&self, rule: usize) -> Option<Duration> {
        self.route.as_ref()?.spec.rules.get(rule)?.timeout
    }

    /// The subsets, in the policy's order.
    pub fn subsets(&self) -> &[Subset] {
        &self.subsets
    }

    /// The subset `name`.
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }

    /// The circuit breaker.
    pub fn breaker(&self) -> Option<&Arc<Breaker>> {
        self.breaker.as_ref()
    }

    /// Outlier detection's settings.
    pub fn outlier(&self) -> Option<&OutlierConfig> {
        self.outlier.as_ref()
    }

    /// The passive-health rule outlier detection sets: its errors in a row eject, for n ×
    /// the base ejection at the n-th time in a row.
    pub fn health(&self) -> Option<HealthPolicy> {
        self.outlier.map(|o| HealthPolicy {
            failures_to_eject: o.consecutive_errors,
            base_ejection: o.base_ejection,
            max_ejection: o.max_ejection,
            linear: true,
        })
    }

    /// The retry budget (only when a rule retries).
    pub fn budget(&self) -> Option<&Arc<Mutex<RetryBudget>>> {
        self.budget.as_ref()
    }

    /// The local rate limit's bucket.
    pub fn limiter(&self) -> Option<&Arc<Mutex<TokenBucket>>> {
        self.limiter.as_ref()
    }

    /// The error an injected abort of rule `rule` answers with: it names the route and
    /// the rule, so nobody mistakes it for a real failure.
    pub fn abort_error(&self, kind: AbortKind, rule: usize, after: Duration) -> AskError {
        let object = self.route.as_ref().map_or("", |r| r.object.as_str());
        let what = format!("fault injected by Route {object} rules[{rule}]");
        match kind {
            AbortKind::Unavailable => AskError::NotDelivered { reason: what },
            AbortKind::Timeout => AskError::Timeout { after },
            AbortKind::Rejected => AskError::Rejected(what),
            AbortKind::Denied => AskError::PermissionDenied {
                policy: format!("Route {object}"),
                rule: format!("rules[{rule}].fault"),
            },
        }
    }
}

/// A lock on live state shared by callers; a panic while holding it leaves plain counters
/// that are still usable.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::mesh::balance::{BalanceConfig, Locality, Member, SplitMix64};

    fn ep(id: &str, version: &str) -> Endpoint {
        Endpoint {
            id: id.into(),
            node: format!("spiffe://t.local/node/{id}"),
            addr: ([127, 0, 0, 1], 1).into(),
            actor: id.into(),
            version: version.into(),
            labels: BTreeMap::from([("version".to_string(), version.to_string())]),
            weight: 1,
            zone: None,
        }
    }

    fn traffic(route: &str, policy: &str) -> Traffic {
        Traffic {
            route: (!route.is_empty()).then(|| Applied {
                object: "shop/r".into(),
                spec: serde_json::from_str(route).unwrap(),
            }),
            policy: (!policy.is_empty()).then(|| Applied {
                object: "shop/p".into(),
                spec: serde_json::from_str(policy).unwrap(),
            }),
            authz: Vec::new(),
        }
    }

    fn build(t: &Traffic, eps: &[Endpoint], old: Option<&ActivePolicy>) -> ActivePolicy {
        let states: Vec<Arc<EndpointState>> = eps
            .iter()
            .map(|_| Arc::new(EndpointState::new(Duration::from_millis(1), 0)))
            .collect();
        let make = |kind: BalancerKind, idx: &[usize]| {
            let members: Vec<Member<'_>> = idx
                .iter()
                .map(|i| Member {
                    id: &eps[*i].id,
                    weight: 1,
                    node: &eps[*i].node,
                    zone: None,
                })
                .collect();
            ServiceBalancer::new(
                kind,
                &members,
                &Locality::default(),
                false,
                BalanceConfig::default(),
                0,
            )
        };
        ActivePolicy::build(t, eps, &states, BalancerKind::P2c, old, &make, 0)
            .unwrap()
            .unwrap()
    }

    const POLICY: &str = r#"{"service":"r","subsets":[{"name":"v1","labels":{"version":"v1"}},{"name":"v2","labels":{"version":"v2"},"balancer":"round_robin"},{"name":"h","labels":{"version":"v2"},"balancer":"hash"}],"circuit_breaker":{"max_pending":2},"rate_limit":{"rate":5}}"#;

    #[test]
    fn subsets_pick_only_their_members_and_a_retry_avoids_the_tried_one() {
        let eps = [ep("a", "v1"), ep("b", "v2"), ep("c", "v2"), ep("d", "v1")];
        let p = build(&traffic("", POLICY), &eps, None);
        assert_eq!(p.subset("v1").unwrap().members(), [0, 3]);
        assert_eq!(p.subset("v2").unwrap().members(), [1, 2]);
        assert_eq!(p.subset("v2").unwrap().balancer(), BalancerKind::RoundRobin);
        assert_eq!(p.subset("v1").unwrap().balancer(), BalancerKind::P2c);
        let mut r = SplitMix64(9);
        let v2 = p.subset("v2").unwrap();
        for _ in 0..20 {
            let input = PickInput {
                now: 0,
                key: None,
                random: &mut r,
            };
            let picked = v2.pick(input, &[]).unwrap().index;
            assert!([1, 2].contains(&picked));
            let input = PickInput {
                now: 0,
                key: None,
                random: &mut r,
            };
            assert_eq!(v2.pick(input, &[picked]).unwrap().index, 3 - picked);
        }
        // Under hashing a key has one endpoint; a retry of it goes to the other (the next
        // on the ring), every time.
        let h = p.subset("h").unwrap();
        fn key(r: &mut SplitMix64) -> PickInput<'_, SplitMix64> {
            PickInput {
                now: 0,
                key: Some(42),
                random: r,
            }
        }
        let first = h.pick(key(&mut r), &[]).unwrap().index;
        for _ in 0..10 {
            assert_eq!(h.pick(key(&mut r), &[]).unwrap().index, first);
            assert_eq!(h.pick(key(&mut r), &[first]).unwrap().index, 3 - first);
        }
        // With every member tried, a retry goes back to one of them.
        let input = PickInput {
            now: 0,
            key: None,
            random: &mut r,
        };
        assert!(v2.pick(input, &[1, 2]).is_some());
    }

    #[test]
    fn live_parts_carry_over_while_their_settings_hold() {
        let eps = [ep("a", "v1")];
        let route = r#"{"service":"r","rules":[{"retries":{"attempts":2}}]}"#;
        let first = build(&traffic(route, POLICY), &eps, None);
        let again = build(&traffic(route, POLICY), &eps, Some(&first));
        assert!(Arc::ptr_eq(
            first.breaker().unwrap(),
            again.breaker().unwrap()
        ));
        assert!(Arc::ptr_eq(
            first.budget().unwrap(),
            again.budget().unwrap()
        ));
        assert!(Arc::ptr_eq(
            first.limiter().unwrap(),
            again.limiter().unwrap()
        ));
        assert_eq!(
            lock(first.limiter().unwrap()).config().burst,
            5,
            "a second's worth"
        );
        let changed = POLICY.replace(r#""max_pending":2"#, r#""max_pending":3"#);
        let after = build(&traffic(route, &changed), &eps, Some(&again));
        assert!(!Arc::ptr_eq(
            first.breaker().unwrap(),
            after.breaker().unwrap()
        ));
        assert!(Arc::ptr_eq(
            first.limiter().unwrap(),
            after.limiter().unwrap()
        ));
        // No rule retries: no budget to keep.
        let plain = build(&traffic("", POLICY), &eps, Some(&after));
        assert!(plain.budget().is_none());
    }

    #[test]
    fn an_invalid_spec_is_refused_naming_the_object_and_field() {
        let eps = [ep("a", "v1")];
        let bad = traffic(
            r#"{"service":"r","rules":[{"split":[{"subset":"v1","weight":50}]}]}"#,
            "",
        );
        let make = |_: BalancerKind, _: &[usize]| unreachable!("refused before balancers");
        let e =
            ActivePolicy::build(&bad, &eps, &[], BalancerKind::P2c, None, &make, 0).unwrap_err();
        assert!(
            e.contains("Route shop/r") && e.contains("spec.rules[0].split"),
            "{e}"
        );
    }

    #[test]
    fn an_injected_abort_names_the_route_and_rule() {
        let p = build(
            &traffic(r#"{"service":"r","rules":[{"timeout":"1s"}]}"#, ""),
            &[ep("a", "v1")],
            None,
        );
        let e = p.abort_error(AbortKind::Unavailable, 0, Duration::from_secs(1));
        assert!(e.to_string().contains("Route shop/r rules[0]"), "{e}");
        assert!(e.is_retry_safe());
        assert_eq!(
            p.abort_error(AbortKind::Denied, 0, Duration::ZERO)
                .http_status(),
            403
        );
        assert_eq!(p.timeout(0), Some(Duration::from_secs(1)));
    }
}
