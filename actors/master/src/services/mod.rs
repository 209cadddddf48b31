//! The master's service registry and its push to every node's Proxy, as plain state with
//! time passed in (the core owns them; the driver sends the pushes):
//!
//! - [`endpoints_of`] says which services and endpoints the cluster has now: a
//!   deployment's instances once Running (and healthy, with a health check) on an Active
//!   agent, and the actors nodes registered themselves;
//! - [`ServiceRegistry`] turns that into versions, with a bounded log for deltas;
//! - [`PushBook`] keeps, per subscribed proxy, what it applied and what is in flight;
//! - [`DrainBook`] holds the kills of endpoints until the proxies applied their removal;
//! - [`TrafficBook`] keeps the applied Routes and DestinationPolicies, one of each per
//!   service (issue 10, in progress: not yet held by the core).

mod drain;
mod push;
mod registry;
mod traffic;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use actormesh::mesh::{BalancerKind, Endpoint, Service, ServiceName};

use crate::deployments::DeploymentBook;
use crate::frameworks::TaskState;
use crate::membership::{AgentRecord, AgentState};

pub use self::drain::{DrainBook, HeldKill, HeldReply, DEFAULT_DRAIN};
pub use self::push::{OutgoingPush, ProxyStatus, PushBook, PushConfig, PushOutcome};
pub use self::registry::{ServiceRegistry, DEFAULT_LOG_LEN};
pub use self::traffic::{
    GatewayView, TrafficBook, TrafficLoadError, TrafficRefusal, POLICY_PREFIX, ROUTE_PREFIX,
};

/// Where the registry's version ceiling is kept in the Meta table (decimal text): a
/// restarted master starts above every version an earlier one used.
pub const VERSION_CEILING_KEY: &str = "registry-version-ceiling";

/// The stored ceiling's value (0 if there is none or it does not read as a number).
pub fn parse_ceiling(stored: Option<&[u8]>) -> u64 {
    stored
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
        .unwrap_or(0)
}
/// Versions reserved at a time: the ceiling is written again when half of them are used.
pub const VERSION_BLOCK: u64 = 1 << 20;

/// An actor a node registered itself as an endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpoint {
    /// Its `version` label.
    pub version: String,
    /// Its labels (besides `version`).
    pub labels: BTreeMap<String, String>,
    /// Its weight.
    pub weight: u32,
}

/// Node registrations: (agent id, service, actor) → the endpoint.
pub type NodeServices = BTreeMap<(String, ServiceName, String), NodeEndpoint>;

/// One service as `get services` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// `namespace/name`.
    pub name: String,
    /// Its balancer.
    pub balancer: BalancerKind,
    /// Whether callers prefer nearby endpoints.
    pub locality: bool,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Ready endpoints.
    pub endpoints: usize,
    /// The versions its endpoints run, sorted.
    pub versions: Vec<String>,
}

impl ServiceSummary {
    /// The summary of `s`.
    pub fn of(s: &Service) -> Self {
        let mut versions: Vec<String> = s.endpoints.iter().map(|e| e.version.clone()).collect();
        versions.sort();
        versions.dedup();
        Self {
            name: s.name.to_string(),
            balancer: s.balancer,
            locality: s.locality,
            labels: s.labels.clone(),
            endpoints: s.endpoints.len(),
            versions,
        }
    }
}

/// Every proxy's standing, for `get proxy-status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyStatusReport {
    /// The registry's version now.
    pub version: u64,
    /// Pushes are held (a restarted master lets agents register again first).
    pub held: bool,
    /// Each subscribed proxy, by node.
    pub proxies: Vec<ProxyStatus>,
}

/// The SPIFFE id of agent `id`'s node.
pub fn node_identity(trust_domain: &str, id: &str) -> String {
    format!("spiffe://{trust_domain}/node/{id}")
}

/// An Active agent's node identity, mesh address and zone, if it can serve.
fn serving<'a>(
    agent: &impl Fn(&str) -> Option<&'a AgentRecord>,
    id: &str,
    trust_domain: &str,
) -> Option<(String, std::net::SocketAddr, Option<String>)> {
    let rec = agent(id)?;
    if rec.state != AgentState::Active {
        return None;
    }
    Some((
        node_identity(trust_domain, id),
        rec.addr?,
        rec.attrs.get("zone").cloned(),
    ))
}

/// The node identity of agent `id` while it may run instances (it is not Gone).
fn hosting<'a>(
    agent: &impl Fn(&str) -> Option<&'a AgentRecord>,
    id: &str,
    trust_domain: &str,
) -> Option<String> {
    let rec = agent(id)?;
    (rec.state != AgentState::Gone).then(|| node_identity(trust_domain, id))
}

/// The services the cluster has now: each deployment with a `service:` block, its
/// instances Running (and healthy, with a health check) on Active agents as endpoints;
/// and the actors nodes registered, while their node is Active. Deployments that declare
/// the same service share it (the first by key gives its balancer and labels).
///
/// Each service's `hosts` are the nodes its instances were placed on and have not ended
/// there (ready or not, stopping or not), on agents that are not Gone, and the nodes that
/// registered it: the nodes whose calls may carry its workload.
pub fn endpoints_of<'a>(
    book: &DeploymentBook,
    agent: impl Fn(&str) -> Option<&'a AgentRecord>,
    nodes: &NodeServices,
    trust_domain: &str,
) -> BTreeMap<ServiceName, Service> {
    let mut out: BTreeMap<ServiceName, Service> = BTreeMap::new();
    let mut by_deployment = BTreeMap::new();
    for d in book.deployments() {
        let Some(decl) = &d.service else { continue };
        let key = crate::deployments::key(d);
        by_deployment.insert(key, (decl, d.health.is_some()));
        out.entry(decl.name.clone()).or_insert_with(|| Service {
            name: decl.name.clone(),
            labels: decl.labels.clone(),
            balancer: decl.balancer,
            locality: decl.locality,
            endpoints: Vec::new(),
            traffic: Default::default(),
            hosts: Vec::new(),
        });
    }
    // With no deployment serving a service there is no task to look at (the walk is
    // O(tasks), and a cluster without services should not pay it on every event).
    let walk = if by_deployment.is_empty() {
        0
    } else {
        usize::MAX
    };
    for t in book.tasks().take(walk) {
        let Some((decl, checked)) = by_deployment.get(&t.deployment) else {
            continue;
        };
        if !t.state.is_terminal() {
            if let (Some(s), Some(node)) = (
                out.get_mut(&decl.name),
                hosting(&agent, &t.agent, trust_domain),
            ) {
                s.hosts.push(node);
            }
        }
        let ready =
            t.state == TaskState::Running && !t.stopping && (!checked || t.healthy == Some(true));
        if !ready {
            continue;
        }
        let Some((node, addr, zone)) = serving(&agent, &t.agent, trust_domain) else {
            continue;
        };
        let mut labels = decl.labels.clone();
        labels.insert("version".into(), t.version.clone());
        if let Some(s) = out.get_mut(&decl.name) {
            s.endpoints.push(Endpoint {
                id: t.id.clone(),
                node,
                addr,
                actor: t.id.clone(),
                version: t.version.clone(),
                labels,
                weight: decl.weight,
                zone,
            });
        }
    }
    let declared: std::collections::BTreeSet<&ServiceName> = book
        .deployments()
        .filter_map(|d| d.service.as_ref().map(|s| &s.name))
        .collect();
    for ((agent_id, service, actor), e) in nodes {
        // A deployment's service is its instances' alone (a registration made before the
        // deployment declared it does not join it).
        if declared.contains(service) {
            continue;
        }
        // Registered by a node that is not Gone: the service is known, and its node may
        // call as it; only an Active node serves it.
        let Some(host) = hosting(&agent, agent_id, trust_domain) else {
            continue;
        };
        let entry = out.entry(service.clone()).or_insert_with(|| Service {
            name: service.clone(),
            labels: BTreeMap::new(),
            balancer: BalancerKind::default(),
            locality: true,
            endpoints: Vec::new(),
            traffic: Default::default(),
            hosts: Vec::new(),
        });
        entry.hosts.push(host);
        let Some((node, addr, zone)) = serving(&agent, agent_id, trust_domain) else {
            continue;
        };
        let mut labels = e.labels.clone();
        labels.insert("version".into(), e.version.clone());
        entry.endpoints.push(Endpoint {
            id: format!("{agent_id}/{actor}"),
            node,
            addr,
            actor: actor.clone(),
            version: e.version.clone(),
            labels,
            weight: e.weight,
            zone,
        });
    }
    for s in out.values_mut() {
        s.endpoints.sort_by(|a, b| a.id.cmp(&b.id));
        s.hosts.sort();
        s.hosts.dedup();
    }
    out
}
