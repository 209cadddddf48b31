//! The balancers, as a plain core: no I/O, time passed in ([`Nanos`]), randomness injected
//! ([`Random`]). One module per balancer; this one composes them with locality tiers and
//! passive health into one pick for a service ([`ServiceBalancer`]).
//!
//! A pick walks the locality tiers in order and takes the first tier where the service's
//! balancer finds an endpoint that passive health admits. When health admits none in any
//! tier (every endpoint ejected), the pick ignores health and balances over all endpoints:
//! Envoy's panic mode, since calling a maybe-broken endpoint beats failing every call.

pub mod hash;
pub mod health;
pub mod locality;
pub mod p2c;
mod rng;
pub mod round_robin;
pub mod weighted;

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

pub use health::{Admission, EndpointState, HealthPolicy, Outcome};
pub use locality::Locality;
pub use rng::{mix64, stable_hash, Random, SplitMix64};

use crate::mesh::registry::BalancerKind;

/// Monotonic time in nanoseconds since an epoch the caller chose.
pub type Nanos = u64;

/// The settings every balancer of a node shares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalanceConfig {
    /// How fast a latency estimate forgets (Linkerd's default: 10 s).
    pub decay: Duration,
    /// A new endpoint's latency estimate, before its first answer.
    pub initial_rtt: Duration,
    /// Passive health.
    pub health: HealthPolicy,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            decay: Duration::from_secs(10),
            initial_rtt: Duration::from_millis(1),
            health: HealthPolicy::default(),
        }
    }
}

/// One of the balancers, over the positions of one tier.
#[derive(Debug)]
enum Balancer {
    RoundRobin(round_robin::RoundRobin),
    Weighted(weighted::Weighted),
    P2c,
    Hash(hash::HashRing),
}

/// A tier: some of a service's endpoints (indexes) and a balancer over them.
#[derive(Debug)]
struct Tier {
    members: Vec<u32>,
    balancer: Balancer,
}

/// The endpoint a pick chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    /// Its index among the service's endpoints.
    pub index: usize,
    /// Whether it is healthy or this call is its probe.
    pub admission: Admission,
}

/// What one pick is given.
#[derive(Debug)]
pub struct PickInput<'r, R: Random> {
    /// Now.
    pub now: Nanos,
    /// The call's hash key (used by [`BalancerKind::Hash`]; a call without one gets a random
    /// key, so such calls spread).
    pub key: Option<u64>,
    /// Random numbers.
    pub random: &'r mut R,
}

/// A service's balancer over its endpoints, with locality tiers, built once per snapshot.
#[derive(Debug)]
pub struct ServiceBalancer {
    kind: BalancerKind,
    tiers: Vec<Tier>,
    config: BalanceConfig,
}

/// An endpoint as the balancer needs it.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// Its id (places its points on a hash ring).
    pub id: &'a str,
    /// Its weight.
    pub weight: u32,
    /// Its node's SPIFFE id.
    pub node: &'a str,
    /// Its node's zone.
    pub zone: Option<&'a str>,
}

impl ServiceBalancer {
    /// Builds the balancer `kind` over `members` for a caller at `me`, preferring its node
    /// and zone if `locality` (not for [`BalancerKind::Hash`], whose keys must map alike on
    /// every caller); `start` spreads the starting points of round-robin counters.
    pub fn new(
        kind: BalancerKind,
        members: &[Member<'_>],
        me: &Locality,
        locality: bool,
        config: BalanceConfig,
        start: usize,
    ) -> Self {
        // A key must reach the same endpoint from every caller, wherever it is: a hash
        // balancer ignores locality.
        let locality = locality && kind != BalancerKind::Hash;
        let tiers = if members.is_empty() {
            Vec::new()
        } else {
            locality::tiers(members.iter().map(|m| (m.node, m.zone)), me, locality)
        };
        let tiers = tiers
            .into_iter()
            .map(|members_of_tier| {
                let of = |i: &u32| members[*i as usize];
                let balancer = match kind {
                    BalancerKind::RoundRobin => Balancer::RoundRobin(round_robin::RoundRobin::new(
                        members_of_tier.len(),
                        start,
                    )),
                    BalancerKind::Weighted => {
                        let w: Vec<u32> = members_of_tier.iter().map(|i| of(i).weight).collect();
                        Balancer::Weighted(weighted::Weighted::new(&w, start))
                    }
                    BalancerKind::P2c => Balancer::P2c,
                    BalancerKind::Hash => Balancer::Hash(hash::HashRing::new(
                        members_of_tier.iter().map(|i| (of(i).id, of(i).weight)),
                    )),
                };
                Tier {
                    members: members_of_tier,
                    balancer,
                }
            })
            .collect();
        Self {
            kind,
            tiers,
            config,
        }
    }

    /// The balancer's kind.
    pub fn kind(&self) -> BalancerKind {
        self.kind
    }

    /// The settings it uses.
    pub fn config(&self) -> &BalanceConfig {
        &self.config
    }

    /// Picks an endpoint (`states` by endpoint index); `None` only without endpoints.
    pub fn pick<R: Random>(
        &self,
        states: &[Arc<EndpointState>],
        input: PickInput<'_, R>,
    ) -> Option<Picked> {
        self.pick_avoiding(states, input, &[])
    }

    /// Picks an endpoint other than those in `avoid` (a retry's earlier tries) if there is
    /// one that may be used; else as [`ServiceBalancer::pick`]. Under consistent hashing
    /// this is the next endpoint on the ring for the call's key.
    pub fn pick_avoiding<R: Random>(
        &self,
        states: &[Arc<EndpointState>],
        input: PickInput<'_, R>,
        avoid: &[usize],
    ) -> Option<Picked> {
        let PickInput { now, key, random } = input;
        let key = key.unwrap_or_else(|| random.next_u64());
        if !avoid.is_empty() {
            if let Some(p) = self.pick_in_tiers(states, now, key, random, avoid) {
                return Some(p);
            }
        }
        if let Some(p) = self.pick_in_tiers(states, now, key, random, &[]) {
            return Some(p);
        }
        // Panic mode: every endpoint is ejected; use them all.
        let all = self.tiers.last()?;
        let p = self.pick_in(all, states, now, key, random, |_| true)?;
        Some(Picked {
            index: all.members[p] as usize,
            admission: Admission::Ready,
        })
    }

    fn pick_in_tiers<R: Random>(
        &self,
        states: &[Arc<EndpointState>],
        now: Nanos,
        key: u64,
        random: &mut R,
        avoid: &[usize],
    ) -> Option<Picked> {
        for tier in &self.tiers {
            let probe = Cell::new(false);
            let admit = |p: usize| {
                let index = tier.members[p] as usize;
                if avoid.contains(&index) {
                    return false;
                }
                match states[index].admit(now) {
                    Some(Admission::Ready) => true,
                    Some(Admission::Probe) => {
                        probe.set(true);
                        true
                    }
                    None => false,
                }
            };
            if let Some(p) = self.pick_in(tier, states, now, key, random, admit) {
                return Some(Picked {
                    index: tier.members[p] as usize,
                    admission: if probe.get() {
                        Admission::Probe
                    } else {
                        Admission::Ready
                    },
                });
            }
        }
        None
    }

    fn pick_in<R: Random>(
        &self,
        tier: &Tier,
        states: &[Arc<EndpointState>],
        now: Nanos,
        key: u64,
        random: &mut R,
        admit: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        match &tier.balancer {
            Balancer::RoundRobin(rr) => rr.pick(admit),
            Balancer::Weighted(w) => w.pick(admit),
            Balancer::Hash(ring) => ring.pick(key, admit),
            Balancer::P2c => {
                let decay = self.config.decay;
                p2c::pick(
                    tier.members.len(),
                    random,
                    |p| states[tier.members[p] as usize].cost(now, decay),
                    admit,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn members() -> Vec<Member<'static>> {
        vec![
            Member {
                id: "a",
                weight: 1,
                node: "n1",
                zone: Some("z1"),
            },
            Member {
                id: "b",
                weight: 1,
                node: "n2",
                zone: Some("z1"),
            },
            Member {
                id: "c",
                weight: 1,
                node: "n3",
                zone: Some("z2"),
            },
        ]
    }

    fn states(n: usize) -> Vec<Arc<EndpointState>> {
        (0..n)
            .map(|_| Arc::new(EndpointState::new(Duration::from_millis(1), 0)))
            .collect()
    }

    fn eject(s: &EndpointState, now: Nanos, config: &BalanceConfig) {
        for _ in 0..config.health.failures_to_eject {
            s.start();
            s.finish(
                Admission::Ready,
                Outcome::Unreachable,
                None,
                now,
                config.decay,
                &config.health,
            );
        }
    }

    fn pick(
        b: &ServiceBalancer,
        s: &[Arc<EndpointState>],
        now: Nanos,
        random: &mut SplitMix64,
    ) -> Picked {
        b.pick(
            s,
            PickInput {
                now,
                key: None,
                random,
            },
        )
        .unwrap()
    }

    #[test]
    fn locality_prefers_own_node_then_zone_then_any() {
        let me = Locality {
            node: "n1".into(),
            zone: Some("z1".into()),
        };
        let config = BalanceConfig::default();
        let b = ServiceBalancer::new(BalancerKind::RoundRobin, &members(), &me, true, config, 0);
        let s = states(3);
        let mut r = SplitMix64(3);
        for _ in 0..10 {
            assert_eq!(pick(&b, &s, 0, &mut r).index, 0, "own node first");
        }
        eject(&s[0], 0, &config);
        for _ in 0..10 {
            assert_eq!(pick(&b, &s, MS, &mut r).index, 1, "then own zone");
        }
        eject(&s[1], 0, &config);
        for _ in 0..10 {
            assert_eq!(pick(&b, &s, MS, &mut r).index, 2, "then any");
        }
        // Turned off: all three in turn.
        let off = ServiceBalancer::new(BalancerKind::RoundRobin, &members(), &me, false, config, 0);
        let s = states(3);
        let seen: Vec<usize> = (0..3).map(|_| pick(&off, &s, 0, &mut r).index).collect();
        assert_eq!(seen, [0, 1, 2]);
    }

    #[test]
    fn an_ejected_endpoint_is_skipped_then_probed_once_then_back() {
        let me = Locality::default();
        let config = BalanceConfig::default();
        let b = ServiceBalancer::new(BalancerKind::RoundRobin, &members(), &me, true, config, 0);
        let s = states(3);
        let mut r = SplitMix64(5);
        eject(&s[1], 0, &config);
        for _ in 0..30 {
            assert_ne!(
                pick(&b, &s, 10 * MS, &mut r).index,
                1,
                "skipped while ejected"
            );
        }
        // After the backoff, one probe goes to it, and no second until it answers.
        let after = config.health.base_ejection.as_nanos() as Nanos + 1;
        let picks: Vec<Picked> = (0..30).map(|_| pick(&b, &s, after, &mut r)).collect();
        let probes: Vec<&Picked> = picks.iter().filter(|p| p.index == 1).collect();
        assert_eq!(probes.len(), 1, "{picks:?}");
        assert_eq!(probes[0].admission, Admission::Probe);
        s[1].start();
        s[1].finish(
            Admission::Probe,
            Outcome::Success,
            Some(Duration::from_millis(1)),
            after,
            config.decay,
            &config.health,
        );
        let back = (0..30)
            .filter(|_| pick(&b, &s, after, &mut r).index == 1)
            .count();
        assert_eq!(back, 10, "a third again once the probe succeeded");
    }

    #[test]
    fn with_every_endpoint_ejected_it_uses_them_all() {
        let me = Locality::default();
        let config = BalanceConfig::default();
        let b = ServiceBalancer::new(BalancerKind::P2c, &members(), &me, true, config, 0);
        let s = states(3);
        let mut r = SplitMix64(9);
        for st in &s {
            eject(st, 0, &config);
        }
        let mut seen = [0u32; 3];
        for _ in 0..300 {
            seen[pick(&b, &s, MS, &mut r).index] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
        let empty = ServiceBalancer::new(BalancerKind::P2c, &[], &me, true, config, 0);
        assert_eq!(
            empty.pick(
                &[],
                PickInput {
                    now: 0,
                    key: None,
                    random: &mut r
                }
            ),
            None
        );
    }

    #[test]
    fn a_hash_key_sticks_across_callers() {
        let me = Locality::default();
        let config = BalanceConfig::default();
        // Even with locality asked for, on a node that hosts one of the endpoints.
        let on_n1 = Locality {
            node: "n1".into(),
            zone: Some("z1".into()),
        };
        let b1 = ServiceBalancer::new(BalancerKind::Hash, &members(), &on_n1, true, config, 0);
        let b2 = ServiceBalancer::new(BalancerKind::Hash, &members(), &me, false, config, 7);
        let s = states(3);
        let mut r = SplitMix64(1);
        for k in 0..100u64 {
            let key = Some(stable_hash(&k.to_le_bytes()));
            let a = b1
                .pick(
                    &s,
                    PickInput {
                        now: 0,
                        key,
                        random: &mut r,
                    },
                )
                .unwrap()
                .index;
            let b = b2
                .pick(
                    &s,
                    PickInput {
                        now: 0,
                        key,
                        random: &mut r,
                    },
                )
                .unwrap()
                .index;
            assert_eq!(a, b);
        }
    }
}
