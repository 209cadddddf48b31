//! The driver: the [`Master`] actor turns actix messages into [`ClusterCore`] events,
//! carries out the effects the core returns (sends, spawns, store writes) and feeds their
//! results back as events. It holds what needs I/O: the state store, the CA, the mesh
//! node and endpoint, membership subscribers and framework actors' references.

mod access;
mod agents;
mod boot;
mod effects;
mod figures;
mod frameworks;
mod gate;
mod operator;
mod services;
mod standby;
mod trust;
mod views;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use tracing::error;

use actormesh::mesh::Mesh;
use actormesh::{Node, RemoteRef};
use actormesh_transport::Endpoint;

use crate::allocator::RoleConfig;
use crate::core::{ClusterCore, Step};
use crate::membership::{DetectorConfig, MembershipEvent};
use crate::state::{StateStore, StoreError, StoreFuture};

pub use self::access::{
    CheckApiToken, CreateApiToken, ListApiTokens, ListAudit, RecordAudit, RevokeApiToken,
};
pub use self::agents::{IssueClient, Join};
pub use self::boot::{start, start_with_store, MasterError, API_TOKEN_FILE};
pub use self::frameworks::ListFrameworks;
pub use self::gate::MasterGate;
pub use self::operator::{
    ApplyDeployment, ApplyTraffic, CreateToken, CreatedToken, DeleteDeployment, DeleteNode,
    DeleteTraffic, DrainNode, KillOn, LaunchOn, ListRevocations, ListTraffic, RevokeClient,
    Subscribe,
};
pub use self::services::{
    ListProxyStatus, ListServices, ProxyConfigOf, ProxyEndpointsOf, ServiceEndpoints,
};
pub use self::standby::{serve_standby_bootstrap, StandbyBootstrap};
pub use self::trust::{CaStatus, RotateCa, RotationAction};
pub use self::views::{
    DescribeDeployment, DescribeTaskOf, ListAllTasks, ListDeploymentTasks, ListDeployments,
    ListNodes, ListTasks, TakeBackup, TaskDescription, TaskLogs, TaskQueryRefusal,
};

/// How a master is started.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Where state, the CA and the API token live.
    pub data_dir: PathBuf,
    /// Mesh (mutual TLS) address.
    pub listen: SocketAddr,
    /// Bootstrap (join) address.
    pub bootstrap: SocketAddr,
    /// Operator HTTP API address (loopback unless told otherwise).
    pub api: SocketAddr,
    /// Trust domain of a CA created at first start.
    pub trust_domain: String,
    /// Use this CA (made by `actormesh ca init`) instead of creating one at first start.
    pub ca_dir: Option<PathBuf>,
    /// Failure detection.
    pub detector: DetectorConfig,
    /// Lifetime of agent certificates.
    pub agent_cert_ttl: Duration,
    /// How long a framework may hold an offer before it is rescinded.
    pub offer_timeout: Duration,
    /// Share settings (weight, guarantee, limit) per role; others get weight 1.
    pub roles: BTreeMap<String, RoleConfig>,
    /// Registry changes within this long go out to proxies as one push (default 10 ms).
    pub push_window: Duration,
    /// A proxy that has not acknowledged a change this long is STALE, and a push
    /// unanswered this long failed (default 5 s).
    pub push_stale_after: Duration,
    /// The kill of an instance that is an endpoint waits, at most this long, until every
    /// subscribed proxy applied its removal (default 5 s).
    pub drain_time: Duration,
    /// Serve Prometheus metrics at `/metrics` here (`None`: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// Write an access log for this share of the calls that arrive here.
    pub access_log: Option<f64>,
    /// Trace calls: spans to this sink, roots sampled at its ratio.
    pub tracing: Option<actormesh::trace::Tracing>,
    /// Mesh-wide settings pushed to every proxy: the authorization default (`allow`
    /// unless set) and whether denials hide policy names from other namespaces.
    pub mesh: actormesh::mesh::MeshSettings,
    /// Who may register frameworks under which roles (empty: every client identity of
    /// the trust domain, under any role; node identities none).
    pub framework_grants: Vec<crate::access::FrameworkGrant>,
    /// Lifetime of the master's own certificate (renewed at half its life).
    pub master_cert_ttl: Duration,
    /// Which nodes may register endpoints of which services (empty: every node, every
    /// service no deployment declares).
    pub service_grants: Vec<crate::access::ServiceGrant>,
    /// This master's name among several on one ZooKeeper store (`None`: the only
    /// master). Each named master keeps the hash of its own api-token file's token.
    pub name: Option<String>,
    /// The term this master leads at, when it took one before starting (`actormesh
    /// master --zk`, whose store is fenced by it); `None`: it takes the next at start.
    /// Its orders to agents and frameworks carry it.
    pub term: Option<u64>,
    /// Every master standing for election, the leader first, as it changes (`None`: the
    /// only master). The bootstrap port tells it to agents and frameworks, the API to the
    /// CLI, so each finds the leader when the master it first knew is gone.
    pub masters: Option<tokio::sync::watch::Receiver<Vec<crate::ha::MasterInfo>>>,
    /// A bootstrap port already bound at `bootstrap` (a standby's, handed over as it
    /// leads, so the port never stops answering); `None`: the master binds it.
    pub bootstrap_server: Option<Arc<actormesh_transport::bootstrap::BootstrapServer>>,
}

impl MasterConfig {
    /// Defaults: data in `data_dir`, mesh on 127.0.0.1:7000, bootstrap 7001, API 7080.
    pub fn new(data_dir: PathBuf) -> Self {
        let ip = std::net::Ipv4Addr::LOCALHOST.into();
        Self {
            data_dir,
            listen: SocketAddr::new(ip, 7000),
            bootstrap: SocketAddr::new(ip, 7001),
            api: SocketAddr::new(ip, 7080),
            trust_domain: "cluster.local".into(),
            ca_dir: None,
            detector: DetectorConfig::default(),
            agent_cert_ttl: Duration::from_secs(24 * 3600),
            offer_timeout: Duration::from_secs(10),
            roles: BTreeMap::new(),
            push_window: Duration::from_millis(10),
            push_stale_after: Duration::from_secs(5),
            drain_time: crate::services::DEFAULT_DRAIN,
            metrics_listen: None,
            access_log: None,
            tracing: None,
            mesh: Default::default(),
            framework_grants: Vec::new(),
            master_cert_ttl: Duration::from_secs(24 * 3600),
            service_grants: Vec::new(),
            name: None,
            term: None,
            masters: None,
            bootstrap_server: None,
        }
    }
}

/// A running master.
#[derive(Debug, Clone)]
pub struct MasterHandle {
    /// The master actor.
    pub master: Addr<Master>,
    /// The master's mesh node.
    pub node: Node,
    /// The master's part of the mesh: its own Proxy, subscribed to its registry.
    mesh: Mesh,
    /// The bootstrap address.
    pub bootstrap: SocketAddr,
    /// The HTTP API address.
    pub api: SocketAddr,
    /// Where the API token is written.
    pub api_token_file: PathBuf,
    /// The CA fingerprint that join tokens pin.
    pub ca_fingerprint: String,
    /// The term this master leads at (its orders carry it).
    pub term: u64,
    /// Why the master stepped down, once it has.
    stepped_down: tokio::sync::watch::Receiver<Option<String>>,
    /// When the master's own certificate expires now (ms since the epoch; renewals move it).
    cert_expires: Arc<std::sync::atomic::AtomicU64>,
}

impl MasterHandle {
    /// When the master's own certificate expires now: it lives `master_cert_ttl` and is
    /// renewed at half its life.
    pub fn certificate_expiry(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + Duration::from_millis(self.cert_expires.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The master's part of the mesh: its own Proxy (`$proxy` on the master's node,
    /// subscribed as `node/master`), to call services by name from code in the master's
    /// process (`mesh().service("shop/ratings")`).
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Resolves, with the reason, once the master has stepped down (its state store failed:
    /// it acknowledges nothing more, and a restart reloads what was stored). A process that
    /// runs a master should exit then.
    pub async fn stepped_down(&self) -> String {
        let mut rx = self.stepped_down.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return "the master stopped".into();
            }
        }
    }

    /// A join token for an agent, valid for `ttl`, made in this process (as `actormesh
    /// token create` would, without the API).
    pub async fn agent_token(&self, ttl: Duration) -> Result<String, MasterError> {
        self.token(crate::tokens::TokenRole::Agent, ttl).await
    }

    /// A token of role `role`, valid for `ttl`, made in this process (as `actormesh token
    /// create --role <role>` would, without the API).
    pub async fn token(
        &self,
        role: crate::tokens::TokenRole,
        ttl: Duration,
    ) -> Result<String, MasterError> {
        let created = self
            .master
            .send(CreateToken { ttl, role })
            .await
            .map_err(|e| MasterError::Stopped(e.to_string()))?
            .map_err(MasterError::Token)?;
        Ok(created.token)
    }
}

/// The master actor.
pub struct Master {
    /// The rules and the state they keep.
    core: ClusterCore,
    store: Arc<dyn StateStore>,
    /// The CAs, which signs, and the master's own certificate.
    keeper: Arc<trust::Keeper>,
    subscribers: Vec<Recipient<MembershipEvent>>,
    mesh_addr: SocketAddr,
    endpoint: Endpoint,
    /// To reach agents' `$agent` actors and frameworks' event actors.
    node: Node,
    /// The event actor of each connected framework.
    framework_actors: BTreeMap<String, RemoteRef>,
    /// Set, with the reason, when the master steps down.
    stepped_down: tokio::sync::watch::Sender<Option<String>>,
    /// How long a proxy has to answer a push.
    push_answer: Duration,
    /// Deregistrations waiting for their endpoint to drain, by token.
    drained: BTreeMap<u64, tokio::sync::oneshot::Sender<()>>,
    /// The last token given to a deregistration.
    next_drain_token: u64,
    /// The control-plane metrics.
    figures: Arc<figures::ControlFigures>,
    /// The term this master leads at; its orders carry it.
    term: u64,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("mesh", &self.mesh_addr)
            .finish_non_exhaustive()
    }
}

impl Actor for Master {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(
            self.store
                .closed()
                .into_actor(self)
                .map(|e, master, ctx| master.step_down(&e, ctx)),
        );
        let every = self.core.detector().heartbeat_interval;
        ctx.run_interval(every, |m, ctx| {
            let began = Instant::now();
            let effects = m.core.tick(began, SystemTime::now());
            m.figures.round_time.record(began.elapsed());
            m.carry_out(effects, ctx);
        });
        self.figures.refresh(&self.core, Instant::now());
        ctx.run_interval(Duration::from_secs(1), |m, _| {
            m.figures.refresh(&m.core, Instant::now());
        });
    }
}

/// Answers `reply` once `stored` is durable, or with `refuse(error)` if the store did not
/// accept it: nothing the store did not accept is acknowledged.
fn when_stored<T: 'static, E: 'static>(
    stored: StoreFuture<()>,
    reply: T,
    refuse: impl FnOnce(StoreError) -> E + 'static,
) -> ResponseFuture<Result<T, E>> {
    Box::pin(async move { stored.await.map(|()| reply).map_err(refuse) })
}

impl Master {
    /// Carries out a step's effects and answers its reply once the batch it acknowledges
    /// is durable (at once if it refused).
    fn answer<T: 'static, E: 'static>(
        &mut self,
        step: Step<Result<T, E>>,
        ctx: &mut Context<Self>,
        refuse: impl FnOnce(StoreError) -> E + 'static,
    ) -> ResponseFuture<Result<T, E>> {
        let stored = self.carry_out_stored(step.effects, ctx);
        match step.reply {
            Ok(reply) => when_stored(stored, reply, refuse),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    /// The state store failed: memory may now hold changes the store does not. The master
    /// stops rather than acknowledge any of them (Mesos's master aborts on a registry
    /// failure too); a restarted master, or in HA the next leader, reloads what was stored.
    fn step_down(&mut self, e: &StoreError, ctx: &mut Context<Self>) {
        let why = format!("the master stepped down: its state store failed ({e})");
        error!("{why}; restart it to reload what was stored");
        self.stepped_down.send_replace(Some(why));
        ctx.stop();
    }
}
