//! What a node's inbound gate decides from the pushed table: per local actor, the
//! authorization and the rate limit of each service it serves, and which nodes host which
//! workloads (so that a workload a calling node asserts is believed only from a node that
//! hosts an instance of it). Built by the route table on each push that changes any of it;
//! the Proxy installs a [`MeshGate`] over it.
//!
//! Order at the gate: workload proof (the runtime asks [`InboundGate::hosts`] first), then
//! authorization of every service the actor serves, then their rate limits, so that a
//! denied call spends no token.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::info;

use crate::mesh::authz::engine::{bare, workload_principal, Facts, ServiceAuthz, Verdict};
use crate::mesh::clock;
use crate::mesh::policy::active::lock;
use crate::mesh::policy::bucket::TokenBucket;
use crate::mesh::registry::{MeshSettings, ServiceName};
use crate::{Arrival, InboundGate, Refusal};
use actormesh_transport::SpiffeId;

/// One service a local actor serves, with what can refuse a call to it.
#[derive(Debug, Clone)]
pub struct Served {
    /// The service.
    pub service: ServiceName,
    /// Its authorization, when in force (a policy applies or the default denies).
    pub authz: Option<Arc<ServiceAuthz>>,
    /// Its local rate limit.
    pub limit: Option<Arc<Mutex<TokenBucket>>>,
}

/// Workload (`namespace/name`) → its principal, of one node.
type Hosted = HashMap<Box<str>, Box<str>>;

/// The inbound rules of one table. A delta updates them in the size of the change
/// ([`InboundRules::updated`]): the hosts are shared per node with the previous rules,
/// and the actors' list is rebuilt only when a service with an endpoint here changed.
#[derive(Debug, Default)]
pub struct InboundRules {
    /// By local actor name: the services it serves that may refuse a call.
    actors: HashMap<String, Vec<Served>>,
    /// The services with an endpoint here that may refuse a call.
    local: BTreeSet<ServiceName>,
    /// Node SPIFFE id → what it hosts, shared with the previous rules until it changes.
    hosts: HashMap<Box<str>, std::sync::Arc<Hosted>>,
    /// This node's SPIFFE id.
    me: Box<str>,
    mesh: MeshSettings,
}

/// The nodes `s` is on: its hosts and its endpoints' nodes.
fn nodes_of<'a>(s: &ServiceView<'a>) -> BTreeSet<&'a str> {
    s.hosts
        .iter()
        .map(String::as_str)
        .chain(s.endpoint_nodes.iter().map(|(n, _)| *n))
        .collect()
}

/// The principal of workload `workload` on `node` (its trust domain's).
fn principal_on(node: &str, workload: &str) -> Option<Box<str>> {
    let td = bare(node).split_once('/').map_or("", |(td, _)| td);
    workload_principal(td, workload).map(Into::into)
}

impl InboundRules {
    /// The rules of this node (`me`) over `services`: each with its endpoints, hosts,
    /// compiled authorization and rate limit.
    pub fn build<'a>(
        me: &str,
        mesh: MeshSettings,
        services: impl Iterator<Item = ServiceView<'a>>,
    ) -> Self {
        let mut out = Self {
            me: me.into(),
            mesh,
            ..Self::default()
        };
        let mut hosts: HashMap<Box<str>, Hosted> = HashMap::new();
        let mut local = Vec::new();
        for s in services {
            let workload = s.name.to_string();
            for node in nodes_of(&s) {
                let Some(principal) = principal_on(node, &workload) else {
                    continue;
                };
                hosts
                    .entry(node.into())
                    .or_default()
                    .insert(workload.as_str().into(), principal);
            }
            if out.serves_here(&s) {
                out.local.insert(s.name.clone());
                local.push(s);
            }
        }
        out.hosts = hosts
            .into_iter()
            .map(|(n, h)| (n, std::sync::Arc::new(h)))
            .collect();
        out.actors = out.actors_of(local);
        out
    }

    /// The rules after a delta: `changes` holds, for each service the push changed or
    /// removed, its view before and after (`None`: it was not there, or is gone);
    /// `current` gives any service's view now (to rebuild the actors' list).
    pub fn updated<'a>(
        &self,
        changes: Vec<(Option<ServiceView<'a>>, Option<ServiceView<'a>>)>,
        current: impl Fn(&ServiceName) -> Option<ServiceView<'a>>,
    ) -> Self {
        let mut out = Self {
            actors: HashMap::new(),
            local: self.local.clone(),
            hosts: self.hosts.clone(),
            me: self.me.clone(),
            mesh: self.mesh,
        };
        let mut local_changed = false;
        for (old, new) in changes {
            let Some(name) = new.as_ref().or(old.as_ref()).map(|v| v.name.clone()) else {
                continue;
            };
            let workload = name.to_string();
            let before = old.as_ref().map(nodes_of).unwrap_or_default();
            let after = new.as_ref().map(nodes_of).unwrap_or_default();
            for gone in before.difference(&after) {
                if let Some(h) = out.hosts.get_mut(*gone) {
                    std::sync::Arc::make_mut(h).remove(workload.as_str());
                    if h.is_empty() {
                        out.hosts.remove(*gone);
                    }
                }
            }
            for came in after.difference(&before) {
                if let Some(principal) = principal_on(came, &workload) {
                    let h = out.hosts.entry((*came).into()).or_default();
                    std::sync::Arc::make_mut(h).insert(workload.as_str().into(), principal);
                }
            }
            let was = out.local.remove(&name);
            let is = new.as_ref().is_some_and(|v| out.serves_here(v));
            if is {
                out.local.insert(name);
            }
            local_changed |= was || is;
        }
        out.actors = if local_changed {
            let views: Vec<ServiceView<'a>> = out.local.iter().filter_map(&current).collect();
            out.actors_of(views)
        } else {
            self.actors.clone()
        };
        out
    }

    /// Whether `s` has an endpoint here and something that may refuse a call to it.
    fn serves_here(&self, s: &ServiceView<'_>) -> bool {
        (s.authz.is_some() || s.limit.is_some())
            && s.endpoint_nodes.iter().any(|(n, _)| *n == &*self.me)
    }

    /// By local actor, the services of `local` it serves.
    fn actors_of(&self, local: Vec<ServiceView<'_>>) -> HashMap<String, Vec<Served>> {
        let mut actors: HashMap<String, Vec<Served>> = HashMap::new();
        for s in local {
            for (node, actor) in s.endpoint_nodes.iter() {
                if *node != &*self.me {
                    continue;
                }
                let list = actors.entry(actor.to_string()).or_default();
                if !list.iter().any(|x| x.service == *s.name) {
                    list.push(Served {
                        service: s.name.clone(),
                        authz: s.authz.clone(),
                        limit: s.limit.clone(),
                    });
                }
            }
        }
        actors
    }

    /// What it holds, comparable: each node's hosted workloads with their principals, and
    /// each local actor's services with whether authorization and a limit apply.
    #[allow(clippy::type_complexity)]
    pub fn summary(
        &self,
    ) -> (
        std::collections::BTreeMap<String, Vec<(String, String)>>,
        std::collections::BTreeMap<String, Vec<(String, bool, bool)>>,
    ) {
        let hosts = self
            .hosts
            .iter()
            .map(|(n, h)| {
                let mut v: Vec<(String, String)> = h
                    .iter()
                    .map(|(w, p)| (w.to_string(), p.to_string()))
                    .collect();
                v.sort();
                (n.to_string(), v)
            })
            .collect();
        let actors = self
            .actors
            .iter()
            .map(|(a, list)| {
                let mut v: Vec<(String, bool, bool)> = list
                    .iter()
                    .map(|s| (s.service.to_string(), s.authz.is_some(), s.limit.is_some()))
                    .collect();
                v.sort();
                (a.clone(), v)
            })
            .collect();
        (hosts, actors)
    }

    /// Whether a gate over it has nothing to do (no call to refuse, no host to vouch for).
    pub fn is_empty(&self) -> bool {
        self.actors.is_empty() && self.hosts.is_empty()
    }

    /// Whether it can refuse a call.
    pub fn decides(&self) -> bool {
        !self.actors.is_empty()
    }

    /// Whether node `node` (a SPIFFE id) hosts an instance of `workload`.
    pub fn hosts(&self, node: &str, workload: &str) -> bool {
        self.hosts
            .get(node)
            .is_some_and(|w| w.contains_key(workload))
    }

    /// What may refuse calls to local actor `actor`.
    pub fn served_by(&self, actor: &str) -> Option<&[Served]> {
        self.actors.get(actor).map(Vec::as_slice)
    }

    /// The mesh settings it was built with.
    pub fn settings(&self) -> MeshSettings {
        self.mesh
    }

    /// The principal (without `spiffe://`) of a call from `node` (a SPIFFE id) as the
    /// proven `workload`, or as the node itself.
    fn principal<'a>(&'a self, node: &'a str, workload: Option<&'a str>) -> Cow<'a, str> {
        let Some(w) = workload else {
            return Cow::Borrowed(bare(node));
        };
        if let Some(p) = self.hosts.get(node).and_then(|m| m.get(w)) {
            return Cow::Borrowed(p);
        }
        // A local actor's own workload that the registry does not list: made once per call.
        let td = bare(node).split_once('/').map_or("", |(td, _)| td);
        Cow::Owned(workload_principal(td, w).unwrap_or_else(|| bare(node).to_string()))
    }
}

/// A service as [`InboundRules::build`] reads it.
#[derive(Debug)]
pub struct ServiceView<'a> {
    /// Its name.
    pub name: &'a ServiceName,
    /// Its hosts.
    pub hosts: &'a [String],
    /// Each endpoint's node and actor.
    pub endpoint_nodes: Vec<(&'a str, &'a str)>,
    /// Its authorization, when in force.
    pub authz: Option<Arc<ServiceAuthz>>,
    /// Its local rate limit.
    pub limit: Option<Arc<Mutex<TokenBucket>>>,
}

/// How many (service, policy, decision) rows [`AuthzFigures`] keeps; past it, rows count
/// under policy `other`.
pub const AUTHZ_ROWS: usize = 1024;

/// The node's authorization figures (when it keeps figures): denied and audited calls by
/// service and the policy that decided (`actormesh_authz_decisions_total`).
#[derive(Debug, Default)]
pub struct AuthzFigures {
    rows: std::sync::Mutex<std::collections::BTreeMap<(String, String, &'static str), u64>>,
}

impl AuthzFigures {
    /// One call of `service` that `policy` decided: `denied` or `audited`.
    pub fn count(&self, service: &ServiceName, policy: &str, decision: &'static str) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = (service.to_string(), policy.to_string(), decision);
        if !rows.contains_key(&key) && rows.len() >= AUTHZ_ROWS {
            key.1 = "other".to_string();
        }
        *rows.entry(key).or_default() += 1;
    }

    /// Every row: (service, policy, decision, calls).
    pub fn snapshot(&self) -> Vec<(String, String, &'static str, u64)> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.iter()
            .map(|((s, p, d), n)| (s.clone(), p.clone(), *d, *n))
            .collect()
    }
}

/// The tracing target of the callee's line on a denied call (policy and rule).
pub const DENIAL_TARGET: &str = "actormesh::authz";
/// The tracing target of the callee's line on a call an AUDIT rule matched.
pub const AUDIT_TARGET: &str = "actormesh::audit";

/// How many denials a gate logs a second; the rest are counted and reported with the next.
const DENIALS_LOGGED_PER_SECOND: u32 = 20;

/// The node's inbound gate over one table's rules.
#[derive(Debug)]
pub(crate) struct MeshGate {
    rules: Arc<InboundRules>,
    /// Where denials and audits are counted, when the node keeps figures.
    figures: Option<Arc<AuthzFigures>>,
    /// The second (of the mesh clock) whose denials are being logged, and how many were.
    log_second: AtomicU64,
    logged: AtomicU32,
    suppressed: AtomicU64,
}

impl MeshGate {
    pub(crate) fn new(rules: Arc<InboundRules>, figures: Option<Arc<AuthzFigures>>) -> Self {
        Self {
            rules,
            figures,
            log_second: AtomicU64::new(u64::MAX),
            logged: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether this denial gets a log line now (at most so many a second).
    fn may_log(&self) -> Option<u64> {
        let second = clock::now() / 1_000_000_000;
        if self.log_second.swap(second, Ordering::Relaxed) != second {
            self.logged.store(0, Ordering::Relaxed);
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) < DENIALS_LOGGED_PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl InboundGate for MeshGate {
    fn decides(&self) -> bool {
        self.rules.decides()
    }

    fn hosts(&self, caller: &SpiffeId, workload: &str) -> bool {
        self.rules.hosts(caller.as_str(), workload)
    }

    fn admit(&self, call: &Arrival<'_>) -> Result<(), Refusal> {
        let Some(served) = self.rules.served_by(call.actor) else {
            return Ok(());
        };
        if served.iter().any(|s| s.authz.is_some()) {
            let node = call.caller.map_or(&*self.rules.me, |c| c.as_str());
            let principal = self.rules.principal(node, call.workload);
            let facts = Facts {
                principal: &principal,
                namespace: call
                    .workload
                    .and_then(|w| w.split_once('/'))
                    .map(|(ns, _)| ns),
                node: bare(node),
                message: call.message,
                metadata: call.metadata,
            };
            for s in served {
                let Some(authz) = &s.authz else { continue };
                let (verdict, audit) = authz.decide(&facts);
                if let Some(at) = audit {
                    let (policy, rule) = authz.names(Verdict::AllowedBy(at));
                    if let Some(f) = &self.figures {
                        f.count(&s.service, &policy, "audited");
                    }
                    info!(target: AUDIT_TARGET, service = %s.service, message = call.message, principal = %principal, node, %policy, %rule, allowed = verdict.allowed(), "call audited");
                }
                if verdict.allowed() {
                    continue;
                }
                let (policy, rule) = authz.names(verdict);
                if let Some(f) = &self.figures {
                    f.count(&s.service, &policy, "denied");
                }
                if let Some(suppressed) = self.may_log() {
                    info!(target: DENIAL_TARGET, service = %s.service, message = call.message, principal = %principal, node, %policy, %rule, suppressed, "call denied");
                }
                let hide = self.rules.mesh.hide_policy_names
                    && facts.namespace != Some(s.service.namespace.as_str());
                return Err(if hide {
                    Refusal::PermissionDenied {
                        policy: "(hidden)".into(),
                        rule: "(hidden)".into(),
                    }
                } else {
                    Refusal::PermissionDenied { policy, rule }
                });
            }
        }
        let now = clock::now();
        for s in served {
            let Some(bucket) = &s.limit else { continue };
            if !lock(bucket).try_take(now) {
                return Err(Refusal::RateLimited {
                    service: s.service.to_string(),
                });
            }
        }
        Ok(())
    }
}
