//! The Proxy actor (`$proxy`, one per node): applies the master's pushes to the node's
//! [`RouteTable`] and publishes each new table at once for every caller on the node.
//!
//! The actor is the table's only writer, so pushes apply one at a time in order. Callers
//! never queue behind it: they read the published table (an `ArcSwap`, no lock) per call.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::{Actor, Context, Handler};
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::mesh::clock;
use crate::mesh::inbound::MeshGate;
use crate::mesh::protocol::{
    DumpConfig, DumpEndpoints, EndpointLive, GetFigures, NodeFigures, Push, PushRefused,
};
use crate::mesh::route::RouteTable;
use crate::{InboundGate, Node, RemoteRef};

/// The table every caller on a node reads.
pub(crate) type Routes = Arc<ArcSwap<RouteTable<RemoteRef>>>;

/// The Proxy actor.
pub(crate) struct Proxy {
    pub(crate) node: Node,
    pub(crate) routes: Routes,
    /// The version applied, for whoever waits for one.
    pub(crate) applied: watch::Sender<Option<u64>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("version", &self.routes.load().version())
            .finish_non_exhaustive()
    }
}

impl Actor for Proxy {
    type Context = Context<Self>;
}

/// Pushes come from the master's node, or from this node (the master's own proxy).
fn from_master() -> Result<(), PushRefused> {
    match crate::caller() {
        None => Ok(()),
        Some(c) if c.is_master() => Ok(()),
        Some(c) => Err(PushRefused::Forbidden {
            caller: c.to_string(),
        }),
    }
}

#[crate::handler]
impl Handler<Push> for Proxy {
    type Result = Result<u64, PushRefused>;
    fn handle(&mut self, push: Push, _: &mut Context<Self>) -> Self::Result {
        from_master()?;
        let current = self.routes.load_full();
        let next = current.apply(&push, clock::now()).inspect_err(|e| {
            warn!(version = push.version, refusal = %e, "push refused");
        })?;
        // Revoked identities are refused by this node from now on, not only by the master.
        for r in next.revoked_since(&current) {
            match actormesh_transport::SpiffeId::parse(&r.id) {
                Ok(id) => {
                    let until = SystemTime::UNIX_EPOCH + Duration::from_millis(r.until_ms);
                    self.node.endpoint().revoke_until(&id, until);
                    info!(identity = %r.id, "identity revoked by the master");
                }
                // The table checked every id when it applied the push.
                Err(e) => warn!(identity = %r.id, error = %e, "revocation not applied"),
            }
        }
        if !Arc::ptr_eq(next.inbound(), current.inbound()) {
            let figures = self.node.keeps_figures().then(|| {
                self.node
                    .extension(crate::mesh::inbound::AuthzFigures::default)
            });
            let gate = (!next.inbound().is_empty()).then(|| {
                Arc::new(MeshGate::new(next.inbound().clone(), figures)) as Arc<dyn InboundGate>
            });
            self.node.set_inbound_gate(gate);
        }
        // The figures of this node's endpoints name their service (of the services this
        // push brings: every one in a full push, the changed ones in a delta).
        if self.node.keeps_figures() {
            let me = self.node.identity().to_string();
            for service in &push.services {
                for e in service.endpoints.iter().filter(|e| e.node == me) {
                    self.node.serve_as(&e.actor, &service.name.to_string());
                }
            }
        }
        self.routes.store(Arc::new(next));
        self.applied.send_replace(Some(push.version));
        Ok(push.version)
    }
}

#[crate::handler]
impl Handler<DumpEndpoints> for Proxy {
    type Result = actix::MessageResult<DumpEndpoints>;
    fn handle(&mut self, m: DumpEndpoints, _: &mut Context<Self>) -> Self::Result {
        let table = self.routes.load();
        let now = clock::now();
        actix::MessageResult(table.service(&m.0).map(|routes| {
            let decay = routes.config().decay;
            routes
                .endpoints()
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let state = routes.state(i);
                    let policy = routes.policy();
                    EndpointLive {
                        id: e.id.clone(),
                        ejected_for_ms: state.ejected_for(now).map(|d| d.as_millis() as u64),
                        in_flight: state.in_flight(),
                        ewma_ms: state.rtt_estimate(now, decay) / 1e6,
                        subsets: policy.map_or_else(Vec::new, |p| {
                            p.subsets()
                                .iter()
                                .filter(|s| s.members().contains(&i))
                                .map(|s| s.name().to_string())
                                .collect()
                        }),
                        breaker: policy.and_then(|p| p.breaker()).map(|b| {
                            let limit = if b.tripped(now) {
                                Some(crate::mesh::policy::breaker::Limit::Tripped)
                            } else {
                                b.open_limit(state.in_flight())
                            };
                            match limit {
                                None => "closed".to_string(),
                                Some(limit) => format!("open: {limit}"),
                            }
                        }),
                    }
                })
                .collect()
        }))
    }
}

#[crate::handler]
impl Handler<GetFigures> for Proxy {
    type Result = actix::MessageResult<GetFigures>;
    fn handle(&mut self, _: GetFigures, _: &mut Context<Self>) -> Self::Result {
        let outbound = self
            .node
            .find_extension::<crate::mesh::MeshFigures>()
            .map(|f| f.snapshot())
            .unwrap_or_default();
        actix::MessageResult(NodeFigures {
            node: self.node.identity().to_string(),
            keeps_figures: self.node.keeps_figures(),
            inbound: self.node.server_figures(),
            outbound,
        })
    }
}

#[crate::handler]
impl Handler<DumpConfig> for Proxy {
    type Result = actix::MessageResult<DumpConfig>;
    fn handle(&mut self, _: DumpConfig, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.routes.load().config())
    }
}
