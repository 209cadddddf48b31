//! The master's control-plane metrics: what `/metrics` on the master's node shows beside
//! the call figures every node has. Histograms are recorded as things happen (atomics);
//! counts are taken from the core once a second by the master actor, so a scrape never
//! waits for the actor and sees figures at most a second old.

use std::sync::{Arc, Mutex};

use actormesh::metrics::{Collect, Families};
use actormesh::stats::Histogram;

use crate::core::ClusterCore;
use crate::membership::AgentState;

/// Counts taken from the core.
#[derive(Debug, Clone, Default)]
struct Counts {
    registry_version: u64,
    proxies: u64,
    proxies_behind: u64,
    proxies_stale: u64,
    agents: Vec<(&'static str, u64)>,
    agents_draining: u64,
    frameworks: u64,
    outstanding_offers: u64,
    deployments: u64,
    deployments_stalled: u64,
    instances_running: u64,
    replicas_pending: u64,
    placements: u64,
}

/// The master's figures, registered on its node's metrics.
#[derive(Debug)]
pub(crate) struct ControlFigures {
    /// From a registry change to a proxy's acknowledgement (the core's push book's).
    push_latency: Arc<Histogram>,
    /// How long a round of the core took: a tick (failure detection, the allocation round
    /// and the deployment controller) or a round asked for by a change.
    pub(crate) round_time: Histogram,
    counts: Mutex<Counts>,
}

impl ControlFigures {
    pub(crate) fn new(core: &ClusterCore) -> Self {
        Self {
            push_latency: core.push_latency(),
            round_time: Histogram::default(),
            counts: Mutex::default(),
        }
    }

    /// Takes the counts from `core` now.
    pub(crate) fn refresh(&self, core: &ClusterCore, now: std::time::Instant) {
        let proxies = core.proxy_status(now);
        let mut agents = vec![("Active", 0), ("Unreachable", 0), ("Gone", 0)];
        let mut draining = 0;
        for a in core.agents() {
            let i = match a.state {
                AgentState::Active => 0,
                AgentState::Unreachable => 1,
                AgentState::Gone => 2,
            };
            agents[i].1 += 1;
            draining += u64::from(a.draining && a.state != AgentState::Gone);
        }
        let frameworks = core.framework_summaries();
        let deployments = core.deployments().summaries();
        let counts = Counts {
            registry_version: core.registry_version(),
            proxies: proxies.len() as u64,
            proxies_behind: proxies.iter().filter(|p| p.behind > 0).count() as u64,
            proxies_stale: proxies.iter().filter(|p| p.stale).count() as u64,
            agents,
            agents_draining: draining,
            frameworks: frameworks.len() as u64,
            outstanding_offers: frameworks.iter().map(|f| f.offers as u64).sum(),
            deployments: deployments.len() as u64,
            deployments_stalled: deployments.iter().filter(|d| d.stalled).count() as u64,
            instances_running: deployments.iter().map(|d| u64::from(d.running)).sum(),
            replicas_pending: deployments.iter().map(|d| u64::from(d.pending)).sum(),
            placements: core.deployments().placements(),
        };
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()) = counts;
    }
}

impl Collect for ControlFigures {
    fn collect(&self, out: &mut Families) {
        let c = self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        out.gauge(
            "actormesh_master_registry_version",
            "The service registry's version.",
            &[],
            c.registry_version as f64,
        );
        out.histogram(
            "actormesh_master_push_latency_seconds",
            "From a registry change at the master to a proxy's acknowledgement of the push that carried it.",
            &[],
            &self.push_latency.snapshot(),
        );
        out.gauge(
            "actormesh_master_proxies",
            "Proxies subscribed to the registry.",
            &[],
            c.proxies as f64,
        );
        out.gauge(
            "actormesh_master_proxies_behind",
            "Subscribed proxies that have not applied the registry's current version.",
            &[],
            c.proxies_behind as f64,
        );
        out.gauge(
            "actormesh_master_proxies_stale",
            "Subscribed proxies behind for longer than --push-stale-after.",
            &[],
            c.proxies_stale as f64,
        );
        out.histogram(
            "actormesh_master_round_seconds",
            "How long a round of the master's core took (failure detection, allocation, the deployment controller).",
            &[],
            &self.round_time.snapshot(),
        );
        out.gauge(
            "actormesh_master_outstanding_offers",
            "Resource offers held by frameworks, not yet answered.",
            &[],
            c.outstanding_offers as f64,
        );
        out.gauge(
            "actormesh_master_frameworks",
            "Registered frameworks (the deployment controller counts as one).",
            &[],
            c.frameworks as f64,
        );
        out.counter(
            "actormesh_master_placements",
            "Instances the deployment controller has placed on agents since the master started.",
            &[],
            c.placements,
        );
        out.gauge(
            "actormesh_master_deployments",
            "Deployments.",
            &[],
            c.deployments as f64,
        );
        out.gauge(
            "actormesh_master_deployments_stalled",
            "Deployments whose rollout is stuck.",
            &[],
            c.deployments_stalled as f64,
        );
        out.gauge(
            "actormesh_master_instances_running",
            "Deployment instances running.",
            &[],
            c.instances_running as f64,
        );
        out.gauge(
            "actormesh_master_replicas_pending",
            "Deployment replicas asked for and not running yet.",
            &[],
            c.replicas_pending as f64,
        );
        for (state, n) in &c.agents {
            out.gauge(
                "actormesh_master_agents",
                "Agents by membership state.",
                &[("state", state)],
                *n as f64,
            );
        }
        out.gauge(
            "actormesh_master_agents_draining",
            "Agents being drained (not Gone).",
            &[],
            c.agents_draining as f64,
        );
    }
}
