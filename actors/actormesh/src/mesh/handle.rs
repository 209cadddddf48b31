//! [`Mesh`]: a node's part of the mesh. It starts the node's Proxy (`$proxy`), subscribes
//! it to the master, and makes [`ServiceRef`]s that call services by name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::mesh::balance::{BalanceConfig, Locality};
use crate::mesh::figures::{MeshFigures, ServiceFigures};
use crate::mesh::protocol::{
    DeregisterService, ProxyConfig, RegisterService, Subscribe, PROXY_ACTOR,
};
use crate::mesh::proxy::{Proxy, Routes};
use crate::mesh::registry::{BadServiceName, Endpoint, ServiceName, DEFAULT_NAMESPACE};
use crate::mesh::route::RouteTable;
use crate::mesh::service::ServiceRef;
use crate::protocol::MasterRefusal;
use crate::{AskError, Node, NodeError, RemoteRef};

/// How a node takes part in the mesh.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// The master's mesh address: the Proxy subscribes there (`None`: it takes pushes but
    /// subscribes nowhere, as on the master's own node or in tests).
    pub master: Option<SocketAddr>,
    /// The master to follow as it changes (an agent's, when there are several masters);
    /// it takes the place of `master`.
    pub follow: Option<crate::masters::FollowedMaster>,
    /// The namespace bare service names resolve in.
    pub namespace: String,
    /// This node's `zone` attribute, for locality.
    pub zone: Option<String>,
    /// The balancers' settings.
    pub balance: BalanceConfig,
    /// The longest wait between two attempts to subscribe.
    pub resubscribe_max: Duration,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            master: None,
            follow: None,
            namespace: DEFAULT_NAMESPACE.to_string(),
            zone: None,
            balance: BalanceConfig::default(),
            resubscribe_max: Duration::from_secs(5),
        }
    }
}

impl MeshOptions {
    /// Subscribing to the master at `addr`.
    pub fn master(mut self, addr: SocketAddr) -> Self {
        self.master = Some(addr);
        self
    }

    /// Subscribing to the master `followed`, and again to each master it moves to.
    pub fn follow(mut self, followed: crate::masters::FollowedMaster) -> Self {
        self.follow = Some(followed);
        self
    }

    /// In zone `zone`.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Bare names resolving in `namespace`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }
}

/// Why a registration with the master failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    /// This mesh has no master to register with.
    #[error("this node's mesh has no master (MeshOptions::master was not set)")]
    NoMaster,
    /// The master did not answer.
    #[error("the master did not answer: {0}")]
    Ask(#[from] AskError),
    /// The master refused.
    #[error("the master refused: {0}")]
    Refused(#[from] MasterRefusal),
}

#[derive(Debug)]
struct MeshInner {
    node: Node,
    routes: Routes,
    namespace: String,
    master: Option<crate::masters::FollowedMaster>,
    applied: watch::Receiver<Option<u64>>,
    /// The client-side call figures, when the node keeps figures.
    figures: Option<Arc<MeshFigures>>,
}

/// A node's part of the mesh. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Mesh {
    inner: Arc<MeshInner>,
}

/// The target a call to endpoint `e` uses: a reference to its actor, local (no
/// serialization) when it is on this node. Pinning the endpoint's node identity on the
/// link comes here when the runtime offers it.
/// The reference a call to `e` takes: pinned to the endpoint's node identity, so a call
/// reaches only the node the registry named, whoever answers at the address.
fn target_for(node: &Node, e: &Endpoint) -> RemoteRef {
    let target = node.actor_ref(e.addr, &e.actor);
    match actormesh_transport::SpiffeId::parse(&e.node) {
        Ok(id) => target.pinned(id),
        // The route table refuses a push with an endpoint whose node is not a SPIFFE id,
        // so this is not reached; unpinned would trust the address, so refuse instead.
        Err(_) => target.pinned(node.identity()),
    }
}

/// The node's mesh, as a node extension, so that an actor given only its node (an agent's
/// instances) can call services by name. Weak: the mesh holds its node.
#[derive(Default)]
struct MeshOfNode(std::sync::Mutex<Weak<MeshInner>>);

/// A subscription [`Mesh::start_held`] made but did not begin.
#[must_use = "the Proxy subscribes only once begun"]
pub(crate) struct HeldSubscription {
    mesh: Weak<MeshInner>,
    node: Node,
    master: Option<crate::masters::FollowedMaster>,
    max: Duration,
}

impl HeldSubscription {
    /// Subscribes the Proxy in the background, if the mesh was given a master.
    pub(crate) fn begin(self) {
        if let Some(master) = self.master {
            tokio::spawn(subscribe_loop(self.mesh, self.node, master, self.max));
        }
    }
}

impl Mesh {
    /// Starts the node's Proxy (`$proxy`) and, if `options` name a master, subscribes it
    /// there in the background (again whenever the master is lost and comes back; the
    /// Proxy keeps serving its last table meanwhile). Call inside the node's actix system.
    pub fn start(node: &Node, options: MeshOptions) -> Result<Mesh, NodeError> {
        let (mesh, held) = Self::start_held(node, options)?;
        held.begin();
        Ok(mesh)
    }

    /// The mesh started on `node` (the last one, if several were), while it lives.
    /// What an actor that was given its node uses to call services by name.
    pub fn of(node: &Node) -> Option<Mesh> {
        let slot = node.find_extension::<MeshOfNode>()?;
        let inner = crate::mesh::policy::active::lock(&slot.0).upgrade()?;
        Some(Mesh { inner })
    }

    /// [`Mesh::start`], with the subscription held until it is begun: an agent has its
    /// mesh before it registers (its instances may be launched at once), and subscribes
    /// once the master knows it.
    pub(crate) fn start_held(
        node: &Node,
        options: MeshOptions,
    ) -> Result<(Mesh, HeldSubscription), NodeError> {
        let locality = Locality {
            node: node.identity().to_string(),
            zone: options.zone.clone(),
        };
        let for_targets = node.clone();
        let table = RouteTable::new(locality, options.balance, move |e| {
            target_for(&for_targets, e)
        });
        let routes: Routes = Arc::new(ArcSwap::from_pointee(table));
        let (applied_tx, applied) = watch::channel(None);
        node.spawn(
            PROXY_ACTOR,
            Proxy {
                node: node.clone(),
                routes: routes.clone(),
                applied: applied_tx,
            },
        )?;
        let master = options.follow.clone().or_else(|| {
            options
                .master
                .map(|addr| crate::masters::FollowedMaster::new(addr, None))
        });
        let figures = node.keeps_figures().then(|| {
            let is_client = node.identity().path().starts_with("/client/");
            node.extension(|| MeshFigures::new(is_client, &routes))
        });
        let inner = Arc::new(MeshInner {
            node: node.clone(),
            routes,
            namespace: options.namespace.clone(),
            master: master.clone(),
            applied,
            figures,
        });
        *crate::mesh::policy::active::lock(&node.extension(MeshOfNode::default).0) =
            Arc::downgrade(&inner);
        let held = HeldSubscription {
            mesh: Arc::downgrade(&inner),
            node: node.clone(),
            master,
            max: options.resubscribe_max,
        };
        Ok((Mesh { inner }, held))
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// The service `name`: `namespace/name`, or a bare `name` in this mesh's namespace.
    pub fn service(&self, name: &str) -> Result<ServiceRef, BadServiceName> {
        Ok(self.service_named(ServiceName::parse(name, &self.inner.namespace)?))
    }

    /// The service `name`.
    pub fn service_named(&self, name: ServiceName) -> ServiceRef {
        let figures = self
            .inner
            .figures
            .as_ref()
            .map(|f| ServiceFigures::of(f, &name));
        ServiceRef::new(
            name,
            self.inner.routes.clone(),
            self.inner.node.config().default_ask_timeout,
            figures,
            self.inner.node.config().tracing.clone(),
        )
    }

    /// The registry version the Proxy applied (`None`: nothing yet).
    pub fn version(&self) -> Option<u64> {
        self.inner.routes.load().version()
    }

    /// Follows the applied version: changes each time the Proxy applies a push.
    pub fn applied(&self) -> watch::Receiver<Option<u64>> {
        self.inner.applied.clone()
    }

    /// What the Proxy applied (as `DumpConfig` answers).
    pub fn proxy_config(&self) -> ProxyConfig {
        self.inner.routes.load().config()
    }

    fn master(&self) -> Result<RemoteRef, MeshError> {
        self.inner
            .master
            .as_ref()
            .map(|m| m.actor_ref(&self.inner.node))
            .ok_or(MeshError::NoMaster)
    }

    /// Serves this node's actor `actor` as an endpoint of `service`, with this version,
    /// labels and weight. The registration lives as long as the node's membership.
    pub async fn register_service(
        &self,
        service: ServiceName,
        actor: &str,
        version: &str,
        labels: BTreeMap<String, String>,
        weight: u32,
    ) -> Result<(), MeshError> {
        let m = RegisterService {
            service,
            actor: actor.to_string(),
            version: version.to_string(),
            labels,
            weight,
        };
        Ok(self.master()?.ask(m).await??)
    }

    /// Takes this node's actor `actor` out of `service` (the master drains it first).
    pub async fn deregister_service(
        &self,
        service: ServiceName,
        actor: &str,
    ) -> Result<(), MeshError> {
        let m = DeregisterService {
            service,
            actor: actor.to_string(),
        };
        Ok(self.master()?.ask(m).await??)
    }
}

/// Subscribes at the master, and again each time the master is lost, with capped backoff
/// between failed attempts. Ends when the mesh is dropped.
async fn subscribe_loop(
    mesh: Weak<MeshInner>,
    node: Node,
    followed: crate::masters::FollowedMaster,
    max: Duration,
) {
    let first = Duration::from_millis(100);
    let mut delay = first;
    let mut said_unknown = false;
    let mut moved = followed.subscribe();
    loop {
        moved.mark_unchanged();
        let master = followed.actor_ref(&node);
        let Some(have) = mesh.upgrade().map(|m| m.routes.load().version()) else {
            return;
        };
        let subscribe = Subscribe {
            addr: node.local_addr(),
            have,
        };
        match master.ask_timeout(subscribe, Duration::from_secs(5)).await {
            Ok(Ok(s)) => {
                info!(master = %master.addr(), version = s.version, ?have, "subscribed to the master's registry");
                delay = first;
                said_unknown = false;
                // Until the master stops or its node is unreachable, or another master
                // leads; the last table serves meanwhile.
                tokio::select! {
                    ended = node.watch(&master) => warn!(reason = ?ended.reason, "lost the master; serving the last routes and subscribing again"),
                    _ = moved.changed() => info!(master = %followed.addr(), "another master leads; subscribing there"),
                }
                continue;
            }
            Ok(Err(refusal)) => warn!(%refusal, "the master refused the subscription; retrying"),
            Err(AskError::UnknownMessage { .. }) => {
                // A master of an earlier version: no registry to subscribe to.
                if !said_unknown {
                    info!("the master does not serve the registry; will ask again");
                    said_unknown = true;
                }
            }
            Err(e) => debug!(error = %e, "could not subscribe to the master; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = moved.changed() => {}
        }
        delay = (delay * 2).min(max.max(first));
    }
}
