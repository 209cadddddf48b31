//! The client side of the call figures: calls by name, per (source workload, service,
//! message, outcome), kept with atomics in the runtime's [`stats`] tables. A
//! [`ServiceRef`](crate::mesh::ServiceRef) finds its service's table once, when it is
//! made; a call then finds its row by a short lock-free scan.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::mesh::registry::ServiceName;
use crate::stats::{self, ByMessage, CallStats, Outcome, StatsSnapshot, OTHER};
use crate::CallInfo;

/// Distinct services a node counts client-side figures for; past it, [`OTHER`].
pub const SERVICES_PER_NODE: usize = 1024;

/// A node's client-side call figures, attached to its [`crate::Node`] (one per node).
#[derive(Debug)]
pub struct MeshFigures {
    services: Mutex<HashMap<String, Arc<ByMessage>>>,
    /// The source label of calls made outside a handler: `client` on a client identity's
    /// node, else `unknown`.
    outside: &'static str,
}

impl MeshFigures {
    pub(crate) fn new(node_is_client: bool) -> Self {
        Self {
            services: Mutex::new(HashMap::new()),
            outside: stats::source_label(None, node_is_client),
        }
    }

    /// The table of `service` (found once per `ServiceRef`).
    pub(crate) fn service(&self, service: &ServiceName) -> Arc<ByMessage> {
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
                by.snapshot()
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
    table: Arc<ByMessage>,
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
        let by = self.table.message(message);
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
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.stats.finish(outcome, self.started.elapsed());
    }
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.stats.abandon();
        }
    }
}
