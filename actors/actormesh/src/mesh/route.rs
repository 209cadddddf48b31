//! The [`RouteTable`]: an immutable snapshot of what a node's Proxy applied, built from the
//! pushes of the master's registry. Plain: the Proxy actor applies a push to the table it
//! holds and gets a new one (or the refusal); callers read a published table per call.
//!
//! A table holds, per service, its endpoints, a balancer built for this node's locality,
//! the live state of each endpoint (carried over from the previous table by endpoint id, so
//! latency and health survive a push) and a cached target per endpoint (a `RemoteRef` in
//! the Proxy; tests use anything), made once by the table's connector.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crate::mesh::authz::ServiceAuthz;
use crate::mesh::balance::{
    stable_hash, BalanceConfig, EndpointState, Locality, Member, Nanos, PickInput, Picked, Random,
    ServiceBalancer,
};
use crate::mesh::inbound::{InboundRules, ServiceView};
use crate::mesh::policy::active::{service_balancer, ActivePolicy};
use crate::mesh::protocol::{ProxyConfig, Push, PushKind, PushRefused};
use crate::mesh::registry::{Endpoint, MeshSettings, Revocation, Service, ServiceName};

/// Makes the target a call uses for an endpoint (a `RemoteRef` to its actor).
pub type Connector<T> = dyn Fn(&Endpoint) -> T + Send + Sync;

/// What every table of one Proxy shares: where the node is, the balancers' settings and the
/// connector.
struct RouteContext<T> {
    locality: Locality,
    config: BalanceConfig,
    connect: Box<Connector<T>>,
}

impl<T> std::fmt::Debug for RouteContext<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteContext")
            .field("locality", &self.locality)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One service of a table: its endpoints, their live state and targets, and its balancer.
#[derive(Debug)]
pub struct ServiceRoutes<T> {
    service: Service,
    states: Vec<Arc<EndpointState>>,
    targets: Vec<T>,
    balancer: ServiceBalancer,
    /// Its traffic policy, if a Route or DestinationPolicy is applied.
    policy: Option<Box<ActivePolicy>>,
    /// Its authorization, compiled, when in force (a policy applies or the default denies).
    authz: Option<Arc<ServiceAuthz>>,
}

impl<T> ServiceRoutes<T> {
    /// Its traffic policy (`None`: calls go to the whole service with no policy).
    #[inline]
    pub fn policy(&self) -> Option<&ActivePolicy> {
        self.policy.as_deref()
    }

    /// Its authorization, when in force.
    pub fn authz(&self) -> Option<&Arc<ServiceAuthz>> {
        self.authz.as_ref()
    }

    /// The rule that ejects its endpoints: outlier detection's if the policy sets it,
    /// else the node's passive health.
    pub fn health(&self) -> crate::mesh::balance::HealthPolicy {
        self.policy()
            .and_then(ActivePolicy::health)
            .unwrap_or(self.balancer.config().health)
    }

    /// Whether one more endpoint may be ejected now: under outlier detection, within its
    /// max-ejected and min-healthy shares; without it, always (every endpoint out is
    /// panic mode, where all are used).
    pub fn may_eject(&self) -> bool {
        match self.policy().and_then(ActivePolicy::outlier) {
            None => true,
            Some(o) => {
                let ejected = self.states.iter().filter(|s| s.is_ejected()).count();
                o.may_eject(self.states.len(), ejected)
            }
        }
    }

    /// All endpoints' live states, by index.
    pub fn states(&self) -> &[Arc<EndpointState>] {
        &self.states
    }

    /// The service as pushed.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Its endpoints, sorted by id.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.service.endpoints
    }

    /// The live state of endpoint `index`.
    pub fn state(&self, index: usize) -> &EndpointState {
        &self.states[index]
    }

    /// The target of endpoint `index`.
    pub fn target(&self, index: usize) -> &T {
        &self.targets[index]
    }

    /// The balancer's settings.
    pub fn config(&self) -> &BalanceConfig {
        self.balancer.config()
    }

    /// Picks an endpoint for one call; `None` when the service has no endpoint.
    pub fn pick<R: Random>(&self, input: PickInput<'_, R>) -> Option<Picked> {
        self.balancer.pick(&self.states, input)
    }

    /// Picks an endpoint other than those in `avoid` (a retry's earlier tries) if one may
    /// be used.
    pub fn pick_avoiding<R: Random>(
        &self,
        input: PickInput<'_, R>,
        avoid: &[usize],
    ) -> Option<Picked> {
        self.balancer.pick_avoiding(&self.states, input, avoid)
    }
}

/// FNV-1a for the table's service names: they are short and come from the master (no
/// hash flooding to fear), and every call looks one up.
#[derive(Debug, Clone, Copy)]
struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Shard<T> = HashMap<ServiceName, Arc<ServiceRoutes<T>>, BuildHasherDefault<NameHasher>>;

/// Shards of the table's services by name hash. A delta copies only the shards it changes
/// and shares the rest with the table it replaces, so applying it costs the size of the
/// change, not of the table (1,000 services on 100 proxies made a full copy per push the
/// main cost of a push).
const SHARDS: usize = 64;

/// Where a service name is kept in every route table ([`RouteTable::service_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardIndex(usize);

impl ShardIndex {
    /// The shard of `name`.
    pub fn of(name: &ServiceName) -> Self {
        let mut h = NameHasher::default();
        name.hash(&mut h);
        // The high bits: the shard's own map uses the low ones.
        Self((h.finish() >> 58) as usize % SHARDS)
    }
}

#[derive(Debug)]
struct ByName<T> {
    shards: Vec<Arc<Shard<T>>>,
    len: usize,
}

impl<T> Clone for ByName<T> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<T> Default for ByName<T> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
            len: 0,
        }
    }
}

impl<T> ByName<T> {
    fn shard_of(name: &ServiceName) -> usize {
        ShardIndex::of(name).0
    }

    #[inline]
    fn get(&self, name: &ServiceName) -> Option<&Arc<ServiceRoutes<T>>> {
        self.shards[Self::shard_of(name)].get(name)
    }

    fn insert(&mut self, name: ServiceName, routes: Arc<ServiceRoutes<T>>) {
        let shard = Arc::make_mut(&mut self.shards[Self::shard_of(&name)]);
        if shard.insert(name, routes).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, name: &ServiceName) {
        let i = Self::shard_of(name);
        // A shard is copied only if it holds the name.
        if self.shards[i].contains_key(name) {
            Arc::make_mut(&mut self.shards[i]).remove(name);
            self.len -= 1;
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn values(&self) -> impl Iterator<Item = &Arc<ServiceRoutes<T>>> {
        self.shards.iter().flat_map(|s| s.values())
    }
}

/// An immutable snapshot of the routes a Proxy applied.
#[derive(Debug)]
pub struct RouteTable<T> {
    version: Option<u64>,
    services: ByName<T>,
    /// What this node's inbound gate decides (authorization, rate limits, workload
    /// hosts), shared with the previous table when a push changed none of it.
    inbound: Arc<InboundRules>,
    /// The master's mesh-wide settings of the last push.
    mesh: MeshSettings,
    /// Revoked identities, by id, refused until (ms since the epoch).
    revoked: BTreeMap<String, u64>,
    context: Arc<RouteContext<T>>,
}

fn invalid(what: String) -> PushRefused {
    PushRefused::Invalid(what)
}

fn check_spiffe(id: &str, what: &str) -> Result<(), PushRefused> {
    actormesh_transport::SpiffeId::parse(id)
        .map(|_| ())
        .map_err(|e| invalid(format!("{what} {id:?} is not a SPIFFE id: {e}")))
}

fn check_service(s: &Service) -> Result<(), PushRefused> {
    let name = &s.name;
    match ServiceName::parse(&name.name, &name.namespace) {
        Ok(n) if &n == name => {}
        Ok(_) => return Err(invalid(format!("service name {name} is not a valid name"))),
        Err(e) => return Err(invalid(format!("service name {name}: {e}"))),
    }
    let mut ids = HashSet::new();
    for e in &s.endpoints {
        if !ids.insert(e.id.as_str()) {
            return Err(invalid(format!(
                "service {name} lists endpoint {:?} twice",
                e.id
            )));
        }
        if e.weight == 0 {
            return Err(invalid(format!(
                "endpoint {:?} of service {name} has weight 0; expected at least 1",
                e.id
            )));
        }
        if e.actor.is_empty() {
            return Err(invalid(format!(
                "endpoint {:?} of service {name} names no actor",
                e.id
            )));
        }
        check_spiffe(
            &e.node,
            &format!("the node of endpoint {:?} of service {name}", e.id),
        )?;
    }
    Ok(())
}

fn check_push(push: &Push) -> Result<(), PushRefused> {
    match push.kind {
        PushKind::Full if !push.removed.is_empty() => {
            return Err(invalid(format!(
                "a full snapshot lists {} removed services; expected none",
                push.removed.len()
            )))
        }
        PushKind::Delta { from } if push.version <= from => {
            return Err(invalid(format!(
                "delta to version {} from {from}: a delta's version must exceed its base",
                push.version
            )))
        }
        _ => {}
    }
    let mut names = HashSet::new();
    for s in &push.services {
        if !names.insert(&s.name) {
            return Err(invalid(format!("service {} appears twice", s.name)));
        }
        check_service(s)?;
    }
    for r in &push.removed {
        if names.contains(r) {
            return Err(invalid(format!("service {r} is both changed and removed")));
        }
    }
    for r in &push.revoked {
        check_spiffe(&r.id, "revoked identity")?;
    }
    Ok(())
}

impl<T: Clone> RouteTable<T> {
    /// An empty table (nothing applied) for a node at `locality`.
    pub fn new(
        locality: Locality,
        config: BalanceConfig,
        connect: impl Fn(&Endpoint) -> T + Send + Sync + 'static,
    ) -> Self {
        Self {
            version: None,
            services: ByName::default(),
            inbound: Arc::default(),
            mesh: MeshSettings::default(),
            revoked: BTreeMap::new(),
            context: Arc::new(RouteContext {
                locality,
                config,
                connect: Box::new(connect),
            }),
        }
    }

    /// The table after `push`, at time `now` (a new endpoint's latency estimate starts
    /// then), or why the push is refused: [`PushRefused::Older`] for a version below the
    /// applied one, [`PushRefused::WrongBase`] for a delta from another version than the
    /// applied one, [`PushRefused::Invalid`] naming what is wrong. A full snapshot at the
    /// applied version is applied again (a resubscription may bring one).
    pub fn apply(&self, push: &Push, now: Nanos) -> Result<RouteTable<T>, PushRefused> {
        if let Some(applied) = self.version {
            if push.version < applied {
                return Err(PushRefused::Older {
                    offered: push.version,
                    applied,
                });
            }
        }
        if let PushKind::Delta { from } = push.kind {
            if self.version != Some(from) {
                return Err(PushRefused::WrongBase {
                    from,
                    holds: self.version,
                });
            }
        }
        check_push(push)?;
        let mut services = match push.kind {
            PushKind::Full => ByName::default(),
            PushKind::Delta { .. } => self.services.clone(),
        };
        for r in &push.removed {
            services.remove(r);
        }
        let resettled = push.mesh != self.mesh;
        let rebuild = matches!(push.kind, PushKind::Full) || resettled;
        // The services whose inbound rules may differ: removed, new, or changed in what
        // the gate reads.
        let mut inbound_changes: Vec<&ServiceName> = push.removed.iter().collect();
        for s in &push.services {
            let old = self.services.get(&s.name).map(|a| &**a);
            let routes = self.build(s, old, push.mesh, now)?;
            if old.is_none_or(|o| inbound_differs(o, &routes)) {
                inbound_changes.push(&s.name);
            }
            services.insert(s.name.clone(), Arc::new(routes));
        }
        if resettled && matches!(push.kind, PushKind::Delta { .. }) {
            // New settings (the default decides authorization): every service again.
            let pushed: HashSet<&ServiceName> = push.services.iter().map(|s| &s.name).collect();
            let others: Vec<Arc<ServiceRoutes<T>>> = services
                .values()
                .filter(|r| !pushed.contains(&r.service.name))
                .cloned()
                .collect();
            for old in others {
                let routes = self.build(&old.service, Some(&old), push.mesh, now)?;
                services.insert(old.service.name.clone(), Arc::new(routes));
            }
        }
        let mut revoked = match push.kind {
            PushKind::Full => BTreeMap::new(),
            PushKind::Delta { .. } => self.revoked.clone(),
        };
        for r in &push.revoked {
            let until = revoked.entry(r.id.clone()).or_insert(r.until_ms);
            *until = (*until).max(r.until_ms);
        }
        let inbound = if rebuild {
            Arc::new(InboundRules::build(
                &self.context.locality.node,
                push.mesh,
                services.values().map(|r| r.view()),
            ))
        } else if inbound_changes.is_empty() {
            self.inbound.clone()
        } else {
            let changes = inbound_changes
                .into_iter()
                .map(|name| {
                    (
                        self.services.get(name).map(|r| r.view()),
                        services.get(name).map(|r| r.view()),
                    )
                })
                .collect();
            Arc::new(
                self.inbound
                    .updated(changes, |name| services.get(name).map(|r| r.view())),
            )
        };
        Ok(RouteTable {
            version: Some(push.version),
            services,
            inbound,
            mesh: push.mesh,
            revoked,
            context: self.context.clone(),
        })
    }

    fn build(
        &self,
        s: &Service,
        old: Option<&ServiceRoutes<T>>,
        mesh: MeshSettings,
        now: Nanos,
    ) -> Result<ServiceRoutes<T>, PushRefused> {
        let ctx = &self.context;
        let mut endpoints = s.endpoints.clone();
        endpoints.sort_by(|a, b| a.id.cmp(&b.id));
        // A new endpoint starts at the service's best latency estimate, not at a guess far
        // above it that would keep it idle until the guess decays: a first slow answer
        // raises it at once (the estimate is peak-sensitive).
        let seed = old
            .into_iter()
            .flat_map(|o| o.states.iter())
            .map(|s| s.rtt_estimate(now, ctx.config.decay))
            .filter(|e| *e > 0.0)
            .min_by(f64::total_cmp)
            .map_or(ctx.config.initial_rtt, |e| Duration::from_nanos(e as u64));
        let mut states = Vec::with_capacity(endpoints.len());
        let mut targets = Vec::with_capacity(endpoints.len());
        for e in &endpoints {
            // The same endpoint (same id, same place): keep what was learned and the target.
            let kept = old.and_then(|o| {
                let i = o
                    .service
                    .endpoints
                    .binary_search_by(|x| x.id.cmp(&e.id))
                    .ok()?;
                let was = &o.service.endpoints[i];
                (was.node == e.node && was.addr == e.addr && was.actor == e.actor)
                    .then(|| (o.states[i].clone(), o.targets[i].clone()))
            });
            let (state, target) =
                kept.unwrap_or_else(|| (Arc::new(EndpointState::new(seed, now)), (ctx.connect)(e)));
            states.push(state);
            targets.push(target);
        }
        let members: Vec<Member<'_>> = endpoints
            .iter()
            .map(|e| Member {
                id: &e.id,
                weight: e.weight,
                node: &e.node,
                zone: e.zone.as_deref(),
            })
            .collect();
        let start = stable_hash(ctx.locality.node.as_bytes()) as usize;
        let make = |kind, indices: &[usize]| {
            let of: Vec<Member<'_>> = indices.iter().map(|i| members[*i]).collect();
            ServiceBalancer::new(kind, &of, &ctx.locality, s.locality, ctx.config, start)
        };
        let balancer = ServiceBalancer::new(
            service_balancer(&s.traffic, s.balancer),
            &members,
            &ctx.locality,
            s.locality,
            ctx.config,
            start,
        );
        let policy = ActivePolicy::build(
            &s.traffic,
            &endpoints,
            &states,
            s.balancer,
            old.and_then(|o| o.policy()),
            &make,
            now,
        )
        .map_err(|e| invalid(format!("service {}: {e}", s.name)))?
        .map(Box::new);
        for p in &s.traffic.authz {
            p.spec.validate().map_err(|e| {
                invalid(format!(
                    "service {}: AuthorizationPolicy {}: spec.{e}",
                    s.name, p.object
                ))
            })?;
        }
        let authz = if old.is_some_and(|o| {
            o.service.traffic.authz == s.traffic.authz
                && o.authz.as_ref().map(|a| a.default()) == Some(mesh.authz_default)
        }) {
            old.and_then(|o| o.authz.clone())
        } else {
            let a = ServiceAuthz::new(&s.name, &s.traffic.authz, mesh.authz_default);
            a.in_force().then(|| Arc::new(a))
        };
        Ok(ServiceRoutes {
            service: Service {
                endpoints,
                ..s.clone()
            },
            states,
            targets,
            balancer,
            policy,
            authz,
        })
    }
}

/// Whether `new` changes what the inbound gate reads of its service: hosts, where its
/// endpoints are, its authorization or its rate limit.
fn inbound_differs<T>(old: &ServiceRoutes<T>, new: &ServiceRoutes<T>) -> bool {
    fn places<T>(r: &ServiceRoutes<T>) -> impl Iterator<Item = (&str, &str)> {
        r.endpoints()
            .iter()
            .map(|e| (e.node.as_str(), e.actor.as_str()))
    }
    let limit = |r: &ServiceRoutes<T>| r.policy().and_then(|p| p.limiter()).map(Arc::as_ptr);
    old.service.hosts != new.service.hosts
        || !places(old).eq(places(new))
        || !same_arc(&old.authz, &new.authz)
        || limit(old) != limit(new)
}

fn same_arc<X>(a: &Option<Arc<X>>, b: &Option<Arc<X>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl<T> ServiceRoutes<T> {
    /// What the inbound rules read of it.
    fn view(&self) -> ServiceView<'_> {
        ServiceView {
            name: &self.service.name,
            hosts: &self.service.hosts,
            endpoint_nodes: self
                .endpoints()
                .iter()
                .map(|e| (e.node.as_str(), e.actor.as_str()))
                .collect(),
            authz: self.authz.clone(),
            limit: self.policy().and_then(|p| p.limiter()).cloned(),
        }
    }
}

impl<T> RouteTable<T> {
    /// The version applied (`None`: nothing yet).
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// A service's routes.
    pub fn service(&self, name: &ServiceName) -> Option<&Arc<ServiceRoutes<T>>> {
        self.services.get(name)
    }

    /// Every service's routes.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceRoutes<T>>> {
        self.services.values()
    }

    /// A service's routes, by its name and its [`ShardIndex`] (taken once, so that a
    /// caller looking the same name up on every call hashes it once per call, not twice).
    #[inline]
    pub fn service_in(
        &self,
        shard: ShardIndex,
        name: &ServiceName,
    ) -> Option<&Arc<ServiceRoutes<T>>> {
        self.services.shards[shard.0].get(name)
    }

    /// What this node's inbound gate decides from this table.
    pub fn inbound(&self) -> &Arc<InboundRules> {
        &self.inbound
    }

    /// The master's mesh-wide settings of the last push.
    pub fn mesh(&self) -> MeshSettings {
        self.mesh
    }

    /// How many services the table holds.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether it holds no service.
    pub fn is_empty(&self) -> bool {
        self.services.len() == 0
    }

    /// The identities refused, sorted by id.
    pub fn revoked(&self) -> Vec<Revocation> {
        self.revoked
            .iter()
            .map(|(id, &until_ms)| Revocation {
                id: id.clone(),
                until_ms,
            })
            .collect()
    }

    /// Revocations this table holds that `before` did not (or held for less long): what to
    /// apply to the node's transport when this table replaces `before`.
    pub fn revoked_since(&self, before: &RouteTable<T>) -> Vec<Revocation> {
        self.revoked
            .iter()
            .filter(|(id, until)| before.revoked.get(*id).is_none_or(|b| b < until))
            .map(|(id, &until_ms)| Revocation {
                id: id.clone(),
                until_ms,
            })
            .collect()
    }

    /// What the table holds, for `actormesh get proxy-config`.
    pub fn config(&self) -> ProxyConfig {
        let mut services: Vec<Service> =
            self.services.values().map(|r| r.service.clone()).collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        ProxyConfig {
            version: self.version,
            services,
            revoked: self.revoked(),
            mesh: self.mesh,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::mesh::balance::SplitMix64;
    use crate::mesh::registry::BalancerKind;

    fn name(n: &str) -> ServiceName {
        ServiceName::parse(n, "default").unwrap()
    }

    fn ep(id: &str, port: u16) -> Endpoint {
        Endpoint {
            id: id.into(),
            node: format!("spiffe://t.local/node/{id}"),
            addr: ([127, 0, 0, 1], port).into(),
            actor: format!("actor-{id}"),
            version: "v1".into(),
            labels: BTreeMap::new(),
            weight: 1,
            zone: None,
        }
    }

    fn svc(n: &str, eps: Vec<Endpoint>) -> Service {
        Service {
            name: name(n),
            labels: BTreeMap::new(),
            balancer: BalancerKind::RoundRobin,
            locality: false,
            endpoints: eps,
            traffic: Default::default(),
            hosts: Vec::new(),
        }
    }

    fn full(version: u64, services: Vec<Service>) -> Push {
        Push {
            version,
            kind: PushKind::Full,
            services,
            removed: vec![],
            revoked: vec![],
            mesh: Default::default(),
        }
    }

    /// Random deltas over a few services (endpoints here and elsewhere, hosts, policies
    /// coming and going): the inbound rules each delta updates are those a full rebuild
    /// of the same table makes.
    #[test]
    fn inbound_rules_updated_by_deltas_are_those_built_from_scratch() {
        let me = "spiffe://t.local/node/me";
        let mut t = RouteTable::new(
            Locality {
                node: me.into(),
                zone: None,
            },
            BalanceConfig::default(),
            |e| e.id.clone(),
        );
        let mut r = SplitMix64(7);
        let names = ["a", "b", "c", "d"];
        let mut version = 1;
        t = t.apply(&full(version, vec![]), 0).unwrap();
        for _ in 0..300 {
            let mut services = Vec::new();
            let mut removed = Vec::new();
            for n in names {
                match r.below(4) {
                    0 => removed.push(name(n)),
                    1 => {}
                    _ => {
                        let mut eps = Vec::new();
                        for (i, node) in ["me", "x", "y"].iter().enumerate() {
                            if r.below(2) == 0 {
                                let mut e = ep(node, 7000 + i as u16);
                                e.id = format!("{n}-{node}");
                                e.actor = format!("{n}-actor");
                                eps.push(e);
                            }
                        }
                        let mut s = svc(n, eps);
                        s.hosts = ["me", "x", "z"]
                            .iter()
                            .filter(|_| r.below(2) == 0)
                            .map(|h| format!("spiffe://t.local/node/{h}"))
                            .collect();
                        if r.below(2) == 0 {
                            s.traffic.authz = vec![crate::mesh::registry::Applied {
                                object: "default/p".into(),
                                spec: serde_json::from_str(r#"{"rules":[{}]}"#).unwrap(),
                            }];
                        }
                        services.push(s);
                    }
                }
            }
            let present: HashSet<&ServiceName> = services.iter().map(|s| &s.name).collect();
            removed.retain(|n| !present.contains(n) && t.service(n).is_some());
            version += 1;
            t = t
                .apply(&delta(version - 1, version, services, removed), 0)
                .unwrap();
            let scratch = InboundRules::build(me, t.mesh(), t.services().map(|s| s.view()));
            assert_eq!(
                t.inbound().summary(),
                scratch.summary(),
                "after version {version}"
            );
        }
    }

    fn delta(from: u64, version: u64, services: Vec<Service>, removed: Vec<ServiceName>) -> Push {
        Push {
            version,
            kind: PushKind::Delta { from },
            services,
            removed,
            revoked: vec![],
            mesh: Default::default(),
        }
    }

    fn table() -> (RouteTable<String>, Arc<AtomicUsize>) {
        let connects = Arc::new(AtomicUsize::new(0));
        let c = connects.clone();
        let t = RouteTable::new(Locality::default(), BalanceConfig::default(), move |e| {
            c.fetch_add(1, Ordering::Relaxed);
            format!("{}@{}", e.actor, e.addr)
        });
        (t, connects)
    }

    fn ids(t: &RouteTable<String>, n: &str) -> Vec<String> {
        t.service(&name(n))
            .unwrap()
            .endpoints()
            .iter()
            .map(|e| e.id.clone())
            .collect()
    }

    #[test]
    fn a_delta_copies_only_the_shards_it_changes() {
        let (t0, _) = table();
        let many: Vec<Service> = (0..500)
            .map(|i| svc(&format!("s{i}"), vec![ep(&format!("e{i}"), 7000)]))
            .collect();
        let t1 = t0.apply(&full(1, many), 0).unwrap();
        assert_eq!(t1.len(), 500);
        let changed = svc("s7", vec![ep("e7", 7000), ep("x", 7001)]);
        let t2 = t1
            .apply(&delta(1, 2, vec![changed], vec![name("s8")]), 0)
            .unwrap();
        assert_eq!(t2.len(), 499);
        assert_eq!(ids(&t2, "s7"), ["e7", "x"]);
        assert!(t2.service(&name("s8")).is_none());
        assert_eq!(ids(&t2, "s9"), ["e9"]);
        let touched = [
            ByName::<String>::shard_of(&name("s7")),
            ByName::<String>::shard_of(&name("s8")),
        ];
        let shared = (0..SHARDS)
            .filter(|i| Arc::ptr_eq(&t1.services.shards[*i], &t2.services.shards[*i]))
            .count();
        assert_eq!(
            shared,
            SHARDS - touched.iter().collect::<HashSet<_>>().len()
        );
        // The table it replaced is unchanged.
        assert_eq!(t1.len(), 500);
        assert_eq!(ids(&t1, "s7"), ["e7"]);
        assert!(t1.service(&name("s8")).is_some());
    }

    #[test]
    fn a_delta_changes_only_what_it_names_and_keeps_endpoint_state_and_targets() {
        let (t0, connects) = table();
        let t1 = t0
            .apply(
                &full(
                    1,
                    vec![
                        svc("a", vec![ep("x", 1), ep("y", 2)]),
                        svc("b", vec![ep("z", 3)]),
                    ],
                ),
                0,
            )
            .unwrap();
        assert_eq!(connects.load(Ordering::Relaxed), 3);
        let a1 = t1.service(&name("a")).unwrap().clone();
        a1.state(0).start();
        let t2 = t1
            .apply(
                &delta(
                    1,
                    2,
                    vec![svc("a", vec![ep("x", 1), ep("w", 4)])],
                    vec![name("b")],
                ),
                0,
            )
            .unwrap();
        assert_eq!(t2.version(), Some(2));
        assert!(t2.service(&name("b")).is_none(), "removed");
        assert_eq!(ids(&t2, "a"), ["w", "x"]);
        let a2 = t2.service(&name("a")).unwrap();
        // x kept its live state (one call in flight) and its target; only w connected anew.
        assert_eq!(a2.state(1).in_flight(), 1);
        assert_eq!(a2.target(1), "actor-x@127.0.0.1:1");
        assert_eq!(connects.load(Ordering::Relaxed), 4);
        // The picks go to the new endpoints only.
        let mut r = SplitMix64(1);
        for _ in 0..10 {
            let p = a2
                .pick(PickInput {
                    now: 0,
                    key: None,
                    random: &mut r,
                })
                .unwrap();
            assert!(["w", "x"].contains(&a2.endpoints()[p.index].id.as_str()));
        }
        // A new endpoint starts at the best estimate the service had (w's 2 ms), not at
        // the configured 1 ms.
        let decay = Duration::from_secs(10);
        a2.state(0).observe(Duration::from_millis(2), 0, decay);
        a2.state(1).observe(Duration::from_millis(3), 0, decay);
        let t2b = t2
            .apply(
                &delta(
                    2,
                    3,
                    vec![svc("a", vec![ep("x", 1), ep("w", 4), ep("v", 5)])],
                    vec![],
                ),
                0,
            )
            .unwrap();
        let v = t2b.service(&name("a")).unwrap().state(0);
        assert_eq!(v.rtt_estimate(0, decay), 2_000_000.0);
        // An endpoint that moved is a new endpoint.
        let t3 = t2
            .apply(&delta(2, 3, vec![svc("a", vec![ep("x", 9)])], vec![]), 0)
            .unwrap();
        assert_eq!(t3.service(&name("a")).unwrap().state(0).in_flight(), 0);
        // A full snapshot replaces everything.
        let t4 = t3.apply(&full(4, vec![svc("c", vec![])]), 0).unwrap();
        assert_eq!(t4.len(), 1);
        assert!(t4.service(&name("a")).is_none());
        assert_eq!(t4.config().services[0].name, name("c"));
    }

    #[test]
    fn refusals_say_why() {
        let (t0, _) = table();
        assert_eq!(
            t0.apply(&delta(1, 2, vec![], vec![]), 0).unwrap_err(),
            PushRefused::WrongBase {
                from: 1,
                holds: None
            }
        );
        let t5 = t0.apply(&full(5, vec![]), 0).unwrap();
        assert_eq!(
            t5.apply(&full(4, vec![]), 0).unwrap_err(),
            PushRefused::Older {
                offered: 4,
                applied: 5
            }
        );
        assert_eq!(
            t5.apply(&delta(3, 6, vec![], vec![]), 0).unwrap_err(),
            PushRefused::WrongBase {
                from: 3,
                holds: Some(5)
            }
        );
        // The same full snapshot again is applied (a resubscription).
        assert_eq!(t5.apply(&full(5, vec![]), 0).unwrap().version(), Some(5));
        let invalid = |p: Push| match t5.apply(&p, 0).unwrap_err() {
            PushRefused::Invalid(why) => why,
            other => panic!("{other:?}"),
        };
        let mut zero = ep("x", 1);
        zero.weight = 0;
        assert!(invalid(full(6, vec![svc("a", vec![zero])])).contains("has weight 0"));
        assert!(invalid(full(6, vec![svc("a", vec![ep("x", 1), ep("x", 2)])])).contains("twice"));
        assert!(
            invalid(full(6, vec![svc("a", vec![]), svc("a", vec![])])).contains("appears twice")
        );
        let mut bad_node = ep("x", 1);
        bad_node.node = "node-x".into();
        assert!(invalid(full(6, vec![svc("a", vec![bad_node])])).contains("is not a SPIFFE id"));
        let mut bad_name = svc("a", vec![]);
        bad_name.name.name = "A_b".into();
        assert!(invalid(full(6, vec![bad_name])).contains("service name"));
        assert!(invalid(delta(5, 5, vec![], vec![])).contains("must exceed its base"));
        assert!(
            invalid(delta(5, 6, vec![svc("a", vec![])], vec![name("a")]))
                .contains("both changed and removed")
        );
        let mut with_removed = full(6, vec![]);
        with_removed.removed = vec![name("a")];
        assert!(invalid(with_removed).contains("full snapshot lists 1 removed"));
        let mut bad_revoked = full(6, vec![]);
        bad_revoked.revoked = vec![Revocation {
            id: "x".into(),
            until_ms: 1,
        }];
        assert!(invalid(bad_revoked).contains("revoked identity"));
        // A refused push leaves the table as it was.
        assert_eq!(t5.version(), Some(5));
    }

    #[test]
    fn revocations_accumulate_over_deltas_and_only_new_ones_are_applied() {
        let (t0, _) = table();
        let r = |id: &str, until_ms| Revocation {
            id: format!("spiffe://t.local/node/{id}"),
            until_ms,
        };
        let mut p = full(1, vec![]);
        p.revoked = vec![r("a", 10)];
        let t1 = t0.apply(&p, 0).unwrap();
        assert_eq!(t1.revoked_since(&t0), [r("a", 10)]);
        let mut d = delta(1, 2, vec![], vec![]);
        d.revoked = vec![r("b", 20), r("a", 5)];
        let t2 = t1.apply(&d, 0).unwrap();
        assert_eq!(t2.revoked(), [r("a", 10), r("b", 20)]);
        assert_eq!(t2.revoked_since(&t1), [r("b", 20)]);
        // A full snapshot holds all in force: what it leaves out is no longer listed.
        let mut f = full(3, vec![]);
        f.revoked = vec![r("b", 20)];
        assert_eq!(t2.apply(&f, 0).unwrap().revoked(), [r("b", 20)]);
    }
}
