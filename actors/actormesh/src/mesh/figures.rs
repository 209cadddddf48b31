//! The client side of the call figures: calls by name, per (source workload, service,
//! message, outcome), kept with atomics in the runtime's [`stats`] tables. A
//! [`ServiceRef`](crate::mesh::ServiceRef) finds its service's table once, when it is
//! made; a call then finds its row by a short lock-free scan.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::mesh::clock;
use crate::mesh::proxy::Routes;
use crate::mesh::registry::ServiceName;
use crate::mesh::route::RouteTable;
use crate::stats::{self, ByMessage, CallStats, Outcome, StatsSnapshot, OTHER};
use crate::CallInfo;
use crate::RemoteRef;

/// Distinct services a node counts client-side figures for; past it, [`OTHER`].
pub const SERVICES_PER_NODE: usize = 1024;

/// What a service's traffic policy did on this node, counted as it happens.
#[derive(Debug, Default)]
pub struct PolicyCounters {
    /// Tries sent again by the route's retries.
    pub retries: AtomicU64,
    /// Calls the circuit breaker refused at once.
    pub circuit_open: AtomicU64,
}

/// A service's client-side figures.
#[derive(Debug, Default)]
pub(crate) struct ServiceTable {
    calls: ByMessage,
    policy: Arc<PolicyCounters>,
}

/// One service's traffic policy state on this node, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFigures {
    /// The service.
    pub service: String,
    /// Retries sent.
    pub retries: u64,
    /// Calls refused by the circuit breaker.
    pub circuit_open: u64,
    /// Endpoints ejected now (passive health or outlier detection).
    pub ejected: u64,
    /// Endpoints in all.
    pub endpoints: u64,
    /// Whether the breaker is tripped open now (`None`: the service has no breaker).
    pub breaker_open: Option<bool>,
}

/// A node's client-side call figures, attached to its [`crate::Node`] (one per node).
pub struct MeshFigures {
    services: Mutex<HashMap<String, Arc<ServiceTable>>>,
    /// The source label of calls made outside a handler: `client` on a client identity's
    /// node, else `unknown`.
    outside: &'static str,
    /// The mesh's route table, for the state of endpoints and breakers (weak: the table
    /// holds references to the node, which holds this).
    routes: Weak<ArcSwap<RouteTable<RemoteRef>>>,
}

impl std::fmt::Debug for MeshFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshFigures").finish_non_exhaustive()
    }
}

impl MeshFigures {
    pub(crate) fn new(node_is_client: bool, routes: &Routes) -> Self {
        Self {
            services: Mutex::new(HashMap::new()),
            outside: stats::source_label(None, node_is_client),
            routes: Arc::downgrade(routes),
        }
    }

    /// Every service's policy state now: counters of this node's calls, and the endpoint
    /// and breaker state of the current route table.
    pub fn policy(&self) -> Vec<PolicyFigures> {
        let counters: HashMap<String, Arc<PolicyCounters>> = self
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.policy.clone()))
            .collect();
        let mut out = Vec::new();
        let Some(routes) = self.routes.upgrade() else {
            return out;
        };
        let table = routes.load();
        let now = clock::now();
        for r in table.services() {
            let name = r.service().name.to_string();
            let c = counters.get(&name);
            let policy = r.policy();
            if c.is_none() && policy.is_none() {
                continue;
            }
            let n = r.endpoints().len();
            out.push(PolicyFigures {
                retries: c.map_or(0, |c| c.retries.load(Ordering::Relaxed)),
                circuit_open: c.map_or(0, |c| c.circuit_open.load(Ordering::Relaxed)),
                ejected: (0..n)
                    .filter(|i| r.state(*i).ejected_for(now).is_some())
                    .count() as u64,
                endpoints: n as u64,
                breaker_open: policy.and_then(|p| p.breaker()).map(|b| b.tripped(now)),
                service: name,
            });
        }
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }

    /// The table of `service` (found once per `ServiceRef`).
    pub(crate) fn service(&self, service: &ServiceName) -> Arc<ServiceTable> {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let key = service.to_string();
        if let Some(t) = services.get(&key) {
            return t.clone();
        }
        let key = if services.len() >= SERVICES_PER_NODE {
            OTHER.to_string()
        } else {
            key
        };
        services.entry(key).or_default().clone()
    }

    /// `(service, message, source, figures)` of every call counted.
    pub fn snapshot(&self) -> Vec<(String, String, String, StatsSnapshot)> {
        let services: Vec<_> = self
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out: Vec<_> = services
            .into_iter()
            .flat_map(|(service, by)| {
                by.calls
                    .snapshot()
                    .into_iter()
                    .map(move |(m, s, f)| (service.clone(), m, s, f))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        out
    }
}

/// A service's table as a `ServiceRef` holds it.
#[derive(Debug, Clone)]
pub(crate) struct ServiceFigures {
    table: Arc<ServiceTable>,
    outside: &'static str,
}

impl ServiceFigures {
    pub(crate) fn of(figures: &MeshFigures, service: &ServiceName) -> Self {
        Self {
            table: figures.service(service),
            outside: figures.outside,
        }
    }

    /// A call of `message` starts now, from the workload of the handler it is made in.
    #[inline]
    pub(crate) fn begin(&self, message: &str) -> CallTimer<'_> {
        self.begin_at(message, Instant::now())
    }

    /// A call of `message` started at `started`.
    #[inline]
    pub(crate) fn begin_at(&self, message: &str, started: Instant) -> CallTimer<'_> {
        let by = self.table.calls.message(message);
        let stats = CallInfo::with_current(|c| {
            by.source(c.and_then(|c| c.handler_workload()).unwrap_or(self.outside))
        });
        stats.start();
        CallTimer {
            stats,
            started,
            done: false,
        }
    }
}

impl ServiceFigures {
    /// The service's policy counters.
    pub(crate) fn policy(&self) -> &Arc<PolicyCounters> {
        &self.table.policy
    }
}

/// One call by name being counted. Dropped unfinished (the caller gave up the call), it
/// leaves the calls in flight without counting an outcome.
pub(crate) struct CallTimer<'a> {
    stats: &'a CallStats,
    started: Instant,
    done: bool,
}

impl CallTimer<'_> {
    /// The call ended with `outcome`.
    #[inline]
    pub(crate) fn finish(self, outcome: Outcome) {
        self.finish_at(outcome, Instant::now());
    }

    /// The call ended with `outcome` at `ended`.
    #[inline]
    pub(crate) fn finish_at(mut self, outcome: Outcome, ended: Instant) {
        self.done = true;
        self.stats
            .finish(outcome, ended.saturating_duration_since(self.started));
    }
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.stats.abandon();
        }
    }
}
