//! The Master: membership keeper and certificate authority (the Citadel role).
//!
//! [`Master`] is an actix actor; its mailbox is the only way its state changes, and every
//! change it must not lose goes to the [`state::StateStore`] before it answers. Agents reach
//! it through [`MasterGate`] (the `$master` actor on the mesh), which checks that the
//! verified caller is the agent it claims to be. Joining nodes reach it through the
//! bootstrap port, operators through the HTTP API ([`api`]).

pub mod allocator;
pub mod api;
pub mod deployments;
pub mod frameworks;
pub mod manifest;
pub mod membership;
pub mod scheduler;
pub mod state;
pub mod tokens;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use actormesh_transport::bootstrap::BootstrapServer;
use actormesh_transport::codec;
use actormesh_transport::pki::{CertificateAuthority, Credentials, NodeKey, DEFAULT_CA_TTL};
use actormesh_transport::{Endpoint, SpiffeId};

use actormesh::protocol::{
    BootstrapReply, BootstrapRequest, Heartbeat, HeartbeatAck, JoinReply, JoinRequest,
    MasterRefusal, Register, Registered, Renew, MASTER_ACTOR,
};
use actormesh::token::sha256_hex;
use actormesh::{Node, NodeConfig};
use membership::{AgentRecord, AgentState, DetectorConfig, Membership, MembershipEvent};
use state::{Change, RedbStore, StateStore, StoreError, StoreFuture, Table};
use tokens::{JoinToken, TokenRecord, TokenRole};

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
    pub roles: BTreeMap<String, allocator::RoleConfig>,
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
    /// The bootstrap address.
    pub bootstrap: SocketAddr,
    /// The HTTP API address.
    pub api: SocketAddr,
    /// Where the API token is written.
    pub api_token_file: PathBuf,
    /// The CA fingerprint that join tokens pin.
    pub ca_fingerprint: String,
    /// Why the master stepped down, once it has.
    stepped_down: tokio::sync::watch::Receiver<Option<String>>,
}

impl MasterHandle {
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
    pub async fn agent_token(&self, ttl: Duration) -> anyhow::Result<String> {
        let created = self
            .master
            .send(CreateToken {
                ttl,
                role: tokens::TokenRole::Agent,
            })
            .await?
            .map_err(|e| anyhow::anyhow!("cannot create a join token: {e}"))?;
        Ok(created.token)
    }
}

const META_CA_CERT: &str = "ca_cert";
const META_CA_KEY: &str = "ca_key";
const META_API_TOKEN: &str = "api_token_hash";
/// File (mode 0600) in the data dir holding the operator API token.
pub const API_TOKEN_FILE: &str = "api-token";

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    // `mode` applies only when the file is created: tighten one that already existed.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// The CA: from the store, else from `--ca`, else new; stored on first start.
async fn load_or_create_ca(
    store: &dyn StateStore,
    config: &MasterConfig,
) -> anyhow::Result<CertificateAuthority> {
    if let (Some(cert), Some(key)) = (
        store.get(Table::Meta, META_CA_CERT).await?,
        store.get(Table::Meta, META_CA_KEY).await?,
    ) {
        let ca = CertificateAuthority::from_pem(
            std::str::from_utf8(&cert.value)?,
            std::str::from_utf8(&key.value)?,
        )?;
        if let Some(dir) = &config.ca_dir {
            let given = CertificateAuthority::load(dir)?;
            if given.fingerprint() != ca.fingerprint() {
                anyhow::bail!(
                    "--ca {} differs from the CA this master already has (fingerprint {}); --ca applies only at first start",
                    dir.display(),
                    ca.fingerprint()
                );
            }
        }
        return Ok(ca);
    }
    let ca = match &config.ca_dir {
        Some(dir) => CertificateAuthority::load(dir)?,
        None => CertificateAuthority::generate(&config.trust_domain, DEFAULT_CA_TTL)?,
    };
    store
        .apply(vec![
            Change::put(Table::Meta, META_CA_CERT, ca.cert_pem().as_bytes().to_vec()),
            Change::put(Table::Meta, META_CA_KEY, ca.key_pem().into_bytes()),
        ])
        .await?;
    info!(trust_domain = ca.trust_domain(), "created the cluster CA");
    Ok(ca)
}

/// The operator API token: the file's, if its hash matches the store; else a new one.
async fn load_or_create_api_token(store: &dyn StateStore, dir: &Path) -> anyhow::Result<String> {
    let file = dir.join(API_TOKEN_FILE);
    let stored = store.get(Table::Meta, META_API_TOKEN).await?;
    if let (Ok(token), Some(hash)) = (std::fs::read_to_string(&file), &stored) {
        let token = token.trim().to_string();
        if sha256_hex(&token).as_bytes() == hash.value.as_slice() {
            return Ok(token);
        }
    }
    let token = tokens::random_string(40).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    write_private(&file, &token)?;
    store
        .apply(vec![Change::put(
            Table::Meta,
            META_API_TOKEN,
            sha256_hex(&token).into_bytes(),
        )])
        .await?;
    Ok(token)
}

/// The master's own mesh credentials: a key kept in the data dir, a certificate issued
/// from the CA at each start.
fn master_credentials(ca: &CertificateAuthority, dir: &Path) -> anyhow::Result<Credentials> {
    let key_file = dir.join("master-key.pem");
    let key = match std::fs::read_to_string(&key_file) {
        Ok(pem) => NodeKey::from_pem(&pem)?,
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            anyhow::bail!("cannot read the master key {}: {e}", key_file.display())
        }
        Err(_) => {
            let k = NodeKey::generate()?;
            write_private(&key_file, &k.pem())?;
            k
        }
    };
    let id = SpiffeId::node(ca.trust_domain(), "master")?;
    let cert = ca.sign_csr(&key.csr(&id)?, &id, Duration::from_secs(365 * 24 * 3600))?;
    Ok(key.credentials(&cert, ca.cert_pem())?)
}

/// Starts a master: state, CA, mesh node, bootstrap port, API. Call inside an actix
/// system.
pub async fn start(config: MasterConfig) -> anyhow::Result<MasterHandle> {
    // The store holds the CA key: its directory is made private before the store is.
    private_dir(&config.data_dir)?;
    let store = RedbStore::open(&config.data_dir).await?;
    start_with_store(config, Arc::new(store)).await
}

/// Creates `dir`, readable by this user only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Starts a master on `store` instead of the file store in its data dir (the data dir
/// still holds its key and API token file).
pub async fn start_with_store(
    config: MasterConfig,
    store: Arc<dyn StateStore>,
) -> anyhow::Result<MasterHandle> {
    private_dir(&config.data_dir)?;
    let ca = load_or_create_ca(store.as_ref(), &config).await?;
    let api_token = load_or_create_api_token(store.as_ref(), &config.data_dir).await?;
    let creds = master_credentials(&ca, &config.data_dir)?;
    let node = Node::start(NodeConfig::new(config.listen), &creds)?;
    let fingerprint = ca.fingerprint();

    let agents: Vec<AgentRecord> = store
        .list(Table::Agents)
        .await?
        .into_iter()
        .map(|(_, v)| codec::decode(&v.value))
        .collect::<Result<_, _>>()?;
    let tokens: BTreeMap<String, TokenRecord> = store
        .list(Table::Tokens)
        .await?
        .into_iter()
        .map(|(k, v)| codec::decode(&v.value).map(|t| (k, t)))
        .collect::<Result<_, _>>()?;
    let config_rows = store.list(Table::Config).await?;
    for a in agents.iter().filter(|a| a.state == AgentState::Gone) {
        if let Ok(id) = SpiffeId::parse(&a.identity) {
            revoke(node.endpoint(), &id, a.cert_expiry);
        }
    }
    node.endpoint().prune_revocations(SystemTime::now());
    info!(
        agents = agents.len(),
        tokens = tokens.len(),
        "master state loaded"
    );
    let had_agents = agents.iter().any(|a| a.state != AgentState::Gone);
    let (stepped_down_tx, stepped_down) = tokio::sync::watch::channel(None);
    let epoch = u32::from_str_radix(&tokens::random_string(6).unwrap_or_default(), 36).unwrap_or(0);
    let mut allocator = allocator::Allocator::default();
    for (role, c) in &config.roles {
        allocator.set_role(role, c.clone());
    }
    let master = Master {
        store,
        ca,
        membership: Membership::new(config.detector, agents, Instant::now()),
        tokens,
        subscribers: Vec::new(),
        mesh_addr: node.local_addr(),
        endpoint: node.endpoint().clone(),
        agent_cert_ttl: config.agent_cert_ttl,
        node: node.clone(),
        tasks: BTreeMap::new(),
        deployments: load_deployments(&config_rows, epoch)?,
        fw: scheduler::Frameworks::load(&config_rows, config.offer_timeout, epoch)?,
        allocator,
        roles: config.roles.clone(),
        round_scheduled: false,
        // A random start: an acknowledgement meant for an update of an earlier master
        // (one it sent again just before it died) must not match an update of this one.
        update_uuid: tokens::random_u64().map_err(|_| {
            anyhow::anyhow!("the system's random generator failed; cannot number updates")
        })?,
        reservations: BTreeMap::new(),
        started: Instant::now(),
        had_agents,
        stepped_down: stepped_down_tx,
        next_prune: Instant::now(),
    }
    .start();
    node.spawn(
        MASTER_ACTOR,
        MasterGate {
            master: master.clone(),
        },
    )?;
    let join_master = master.clone();
    let mesh_addr = node.local_addr();
    let bootstrap = BootstrapServer::bind(config.bootstrap, &creds, move |body, from| {
        let master = join_master.clone();
        async move {
            let reply = match codec::decode::<BootstrapRequest>(&body) {
                Ok(BootstrapRequest::Join(req)) => {
                    BootstrapReply::Join(master.send(Join(req)).await.unwrap_or_else(|e| {
                        JoinReply::Refused {
                            reason: format!("the master is not running: {e}"),
                        }
                    }))
                }
                Ok(BootstrapRequest::Locate) => BootstrapReply::Located {
                    master_addr: mesh_addr,
                },
                Err(e) => BootstrapReply::Join(JoinReply::Refused {
                    reason: format!("malformed bootstrap request from {from}: {e}"),
                }),
            };
            codec::encode(&reply).unwrap_or_default()
        }
    })?;
    // The listener's task keeps serving after this handle is dropped.
    let bootstrap_addr = bootstrap.local_addr()?;
    let api_addr = api::serve(config.api, master.clone(), api_token).await?;
    info!(mesh = %node.local_addr(), bootstrap = %bootstrap_addr, api = %api_addr, "master up");
    Ok(MasterHandle {
        master,
        node,
        bootstrap: bootstrap_addr,
        api: api_addr,
        api_token_file: config.data_dir.join(API_TOKEN_FILE),
        ca_fingerprint: fingerprint,
        stepped_down,
    })
}

/// The master actor.
pub struct Master {
    store: Arc<dyn StateStore>,
    ca: CertificateAuthority,
    membership: Membership,
    tokens: BTreeMap<String, TokenRecord>,
    subscribers: Vec<Recipient<MembershipEvent>>,
    mesh_addr: SocketAddr,
    endpoint: Endpoint,
    agent_cert_ttl: Duration,
    /// To reach agents' `$agent` actors.
    node: Node,
    /// Tasks launched directly with [`LaunchOn`] (not by a deployment or a framework), with
    /// the last status their agents reported (Staging until then).
    tasks: BTreeMap<String, frameworks::TaskStatus>,
    /// The built-in deployment controller.
    deployments: deployments::DeploymentBook,
    /// Registered frameworks, their offers and tasks.
    fw: scheduler::Frameworks,
    /// Who gets which free resources.
    allocator: allocator::Allocator,
    /// Share settings per role, from the configuration.
    roles: BTreeMap<String, allocator::RoleConfig>,
    /// An allocation round is due soon.
    round_scheduled: bool,
    /// Numbers the status updates sent to frameworks.
    update_uuid: u64,
    /// Each agent's reservations per role, as it last registered them (soft state).
    reservations: BTreeMap<String, BTreeMap<String, actormesh::resources::Resources>>,
    /// When this master process started.
    started: Instant,
    /// Whether agents were known at start: then deployments wait for them to report what
    /// they run before anything is launched.
    had_agents: bool,
    /// Set, with the reason, when the master steps down.
    stepped_down: tokio::sync::watch::Sender<Option<String>>,
    /// When expired join tokens and revocations are next forgotten.
    next_prune: Instant,
}

/// How often expired join tokens and revocations of expired certificates are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Revokes a removed node's identity until its last certificate expires (for good if the
/// master never recorded an expiry).
fn revoke(endpoint: &Endpoint, id: &SpiffeId, cert_expiry: Option<SystemTime>) {
    match cert_expiry {
        Some(expiry) => endpoint.revoke_until(id, expiry),
        None => endpoint.revoke(id),
    }
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
        let every = self.membership.config().heartbeat_interval;
        ctx.run_interval(every, |m, ctx| {
            m.check();
            m.allocation_round(ctx);
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
    /// Queues `changes` as one batch in the store. The change is already made in memory;
    /// whoever asked for it is answered once the returned future says it is durable. If
    /// the store fails, the master steps down ([`Master::step_down`]).
    fn persist(&self, changes: Vec<Change>) -> StoreFuture<()> {
        self.store.apply(changes)
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

    /// Writes agent `id`'s record, with `extra` changes in the same atomic batch.
    fn persist_agent(&self, id: &str, extra: Vec<Change>) -> StoreFuture<()> {
        let Some(rec) = self.membership.get(id) else {
            return Box::pin(async { Ok(()) });
        };
        self.write_agent(rec, extra)
    }

    fn write_agent(&self, rec: &AgentRecord, mut extra: Vec<Change>) -> StoreFuture<()> {
        let value = match codec::encode(rec) {
            Ok(v) => v,
            Err(e) => {
                let e = StoreError::Io {
                    operation: "encode",
                    reason: format!("agent {}: {e}", rec.id),
                };
                return Box::pin(async move { Err(e) });
            }
        };
        extra.push(Change::put(Table::Agents, rec.id.clone(), value));
        self.persist(extra)
    }

    /// Forgets join tokens past their expiry (they can join nothing) and revocations of
    /// certificates that have expired, so neither grows without bound.
    fn prune_expired(&mut self) {
        let now = SystemTime::now();
        let expired = tokens::prune_expired(&mut self.tokens, now);
        if !expired.is_empty() {
            info!(tokens = expired.len(), "expired join tokens forgotten");
            // Not awaited: a failed write makes the master step down.
            drop(
                self.persist(
                    expired
                        .into_iter()
                        .map(|id| Change::delete(Table::Tokens, id))
                        .collect(),
                ),
            );
        }
        self.endpoint.prune_revocations(now);
    }

    fn publish(&mut self, event: MembershipEvent) {
        info!(agent = %event.agent, from = ?event.from, to = %event.to, "membership change");
        self.subscribers.retain(|s| s.connected());
        for s in &self.subscribers {
            s.do_send(event.clone());
        }
    }

    fn check(&mut self) {
        let now = Instant::now();
        if now >= self.next_prune {
            self.next_prune = now + PRUNE_EVERY;
            self.prune_expired();
        }
        for event in self.membership.check(now) {
            let extra = if event.to == AgentState::Gone {
                self.remove(&event.agent)
            } else {
                Vec::new()
            };
            // Not awaited: no one waits for this answer, and a failed write makes the
            // master step down.
            drop(self.persist_agent(&event.agent, extra));
            if event.to != AgentState::Active {
                self.agent_left(&event.agent, event.to);
            }
            self.publish(event);
        }
    }

    /// A Gone agent: its identity is revoked (handshakes refused, links closed) and the
    /// token it joined with stops working, so it cannot be replayed. Returns the token
    /// change, to be written in one batch with the agent's new state.
    fn remove(&mut self, id: &str) -> Vec<Change> {
        let Some(rec) = self.membership.get(id).cloned() else {
            return Vec::new();
        };
        if let Ok(identity) = SpiffeId::parse(&rec.identity) {
            revoke(&self.endpoint, &identity, rec.cert_expiry);
        }
        warn!(
            agent = id,
            "agent removed (Gone); identity and join token revoked"
        );
        self.reservations.remove(id);
        let Some(t) = self.tokens.get_mut(&rec.token_id) else {
            return Vec::new();
        };
        t.revoked = true;
        match codec::encode(t) {
            Ok(value) => vec![Change::put(Table::Tokens, t.id.clone(), value)],
            Err(_) => Vec::new(),
        }
    }

    fn identity_of(&self, id: &str) -> String {
        format!("spiffe://{}/node/{id}", self.ca.trust_domain())
    }

    /// The agent the verified caller is, if it is the one it claims.
    fn check_caller(&self, agent_id: &str, caller: &Option<SpiffeId>) -> Result<(), MasterRefusal> {
        match caller {
            Some(c) if c.as_str() == self.identity_of(agent_id) => Ok(()),
            Some(c) => Err(MasterRefusal::Forbidden(format!(
                "{c} may not speak for agent {agent_id}"
            ))),
            None => Err(MasterRefusal::Forbidden(
                "agent messages must come over the mesh".into(),
            )),
        }
    }

    /// An agent's message finds it alive (or says why it is refused).
    fn seen(&mut self, agent_id: &str) -> Result<Option<MembershipEvent>, MasterRefusal> {
        self.membership
            .seen(agent_id, Instant::now(), SystemTime::now())
            .map_err(|e| match e {
                membership::MemberRefusal::Gone(_) => MasterRefusal::Removed(e.to_string()),
                membership::MemberRefusal::Unknown(_) => {
                    MasterRefusal::NotRegistered(e.to_string())
                }
            })
    }

    /// Admits a joining node; `stored` gets the write of its record, which the reply waits
    /// for.
    fn join(&mut self, req: JoinRequest, stored: &mut Option<StoreFuture<()>>) -> JoinReply {
        let refuse = |reason: String| {
            warn!(%reason, "join refused");
            JoinReply::Refused { reason }
        };
        let presented = JoinToken {
            id: req.token_id.clone(),
            secret: req.token_secret.clone(),
            ca_fingerprint: self.ca.fingerprint(),
        };
        let Some(record) = self.tokens.get(&req.token_id) else {
            return refuse(tokens::TokenRefusal::Unknown(req.token_id).to_string());
        };
        if let Err(r) = record.check(&presented, SystemTime::now()) {
            return refuse(r.to_string());
        }
        let id = if req.name.is_empty() {
            match JoinToken::generate(&self.ca.fingerprint()) {
                Ok(t) => format!("agent-{}", t.id),
                Err(_) => return refuse("the master has no randomness".into()),
            }
        } else {
            req.name.clone()
        };
        if id.len() > 63
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return refuse(format!(
                "agent name {id:?} is not valid: use up to 63 lowercase letters, digits and '-'"
            ));
        }
        if id == "master" {
            return refuse("agent name \"master\" is reserved for the master itself".into());
        }
        if let Some(existing) = self.membership.get(&id) {
            // A join whose reply was lost may be retried with the same token until the
            // agent first registers; otherwise names are never reused, so a removed
            // node's revoked identity can never come back under someone else.
            let retry = existing.token_id == req.token_id
                && existing.addr.is_none()
                && existing.state != AgentState::Gone;
            if !retry {
                return refuse(format!(
                    "agent name {id} is taken (by a member in state {}); choose another name",
                    existing.state
                ));
            }
        }
        let identity = match SpiffeId::node(self.ca.trust_domain(), &id) {
            Ok(i) => i,
            Err(e) => return refuse(e.to_string()),
        };
        let Some(expiry) = SystemTime::now().checked_add(self.agent_cert_ttl) else {
            return refuse("the master's agent certificate lifetime is out of range".into());
        };
        let cert_pem = match self
            .ca
            .sign_csr(&req.csr_pem, &identity, self.agent_cert_ttl)
        {
            Ok(c) => c,
            Err(e) => return refuse(format!("cannot sign the certificate request: {e}")),
        };
        let record = AgentRecord {
            id: id.clone(),
            identity: identity.to_string(),
            addr: None,
            resources: Default::default(),
            attrs: BTreeMap::new(),
            actor_types: vec![],
            state: AgentState::Active,
            draining: false,
            token_id: req.token_id,
            joined_at: SystemTime::now(),
            last_heartbeat: None,
            cert_expiry: Some(expiry),
            running: vec![],
        };
        // The reply (the certificate) waits for this write; if it fails the master steps
        // down, and the restarted master never heard of this agent.
        *stored = Some(self.write_agent(&record, Vec::new()));
        let event = self.membership.join(record, Instant::now());
        self.publish(event);
        info!(agent = %id, "agent joined");
        JoinReply::Accepted {
            agent_id: id,
            cert_pem,
            master_addr: self.mesh_addr,
        }
    }
}

/// A join request from the bootstrap port.
#[derive(Debug, Message)]
#[rtype(result = "JoinReply")]
pub struct Join(pub JoinRequest);

impl Handler<Join> for Master {
    type Result = ResponseFuture<JoinReply>;
    fn handle(&mut self, m: Join, _: &mut Context<Self>) -> Self::Result {
        let mut stored = None;
        let reply = self.join(m.0, &mut stored);
        Box::pin(async move {
            match stored {
                Some(write) => match write.await {
                    Ok(()) => reply,
                    Err(e) => JoinReply::Refused {
                        reason: format!("the master could not record the agent: {e}"),
                    },
                },
                None => reply,
            }
        })
    }
}

/// An agent message with the verified identity of its sender.
#[derive(Debug, Message)]
#[rtype(result = "Result<Registered, MasterRefusal>")]
struct RegisterFrom(Register, Option<SpiffeId>);

impl Handler<RegisterFrom> for Master {
    type Result = ResponseFuture<Result<Registered, MasterRefusal>>;
    fn handle(&mut self, m: RegisterFrom, ctx: &mut Context<Self>) -> Self::Result {
        match self.register(m.0, m.1, ctx) {
            Ok((stored, reply)) => when_stored(stored, reply, |e| {
                MasterRefusal::Unavailable(format!("the master could not record the agent: {e}"))
            }),
            Err(refusal) => Box::pin(async move { Err(refusal) }),
        }
    }
}

impl Master {
    fn register(
        &mut self,
        r: Register,
        caller: Option<SpiffeId>,
        ctx: &mut Context<Self>,
    ) -> Result<(StoreFuture<()>, Registered), MasterRefusal> {
        self.check_caller(&r.agent_id, &caller)?;
        let invalid = std::iter::once(("resources", &r.resources))
            .chain(r.held.values().map(|h| ("held", h)))
            .chain(r.reserved.values().map(|h| ("reserved", h)))
            .find_map(|(what, res)| res.validate().err().map(|e| format!("{what}: {e}")));
        if let Some(e) = invalid {
            return Err(MasterRefusal::Forbidden(format!(
                "agent {} registered invalid resources: {e}",
                r.agent_id
            )));
        }
        let event = self.seen(&r.agent_id)?;
        if let Some(rec) = self.membership.record_mut(&r.agent_id) {
            rec.addr = Some(r.addr);
            rec.resources = r.resources;
            rec.attrs = r.attrs;
            rec.actor_types = r.actor_types;
            rec.running = r.running.clone();
            rec.cert_expiry = Some(r.cert_expiry);
        }
        let mut kills = self.deployments.adopt(
            &r.agent_id,
            &r.running,
            &r.healthy,
            &r.held,
            &r.versions,
            Instant::now(),
        );
        kills.extend(self.adopt_framework_tasks(&r.agent_id, &r.running, &r.held));
        self.reservations
            .insert(r.agent_id.clone(), r.reserved.clone());
        // Registration is soft state: if it cannot be written, the agent is told to retry
        // and registers again after a master restart anyway.
        let stored = self.persist_agent(&r.agent_id, Vec::new());
        if let Some(e) = event {
            self.publish(e);
        }
        self.rebuild_agent(&r.agent_id);
        if !kills.is_empty() {
            info!(agent = %r.agent_id, kills = kills.len(), "killing instances that were replaced or whose deployment is gone");
            self.carry_out(kills, ctx);
        }
        self.schedule_round(ctx);
        let registered = Registered {
            heartbeat_interval_ms: self.membership.config().heartbeat_interval.as_millis() as u64,
        };
        Ok((stored, registered))
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Result<HeartbeatAck, MasterRefusal>")]
struct HeartbeatFrom(Heartbeat, Option<SpiffeId>);

impl Handler<HeartbeatFrom> for Master {
    type Result = Result<HeartbeatAck, MasterRefusal>;
    fn handle(&mut self, m: HeartbeatFrom, _: &mut Context<Self>) -> Self::Result {
        self.check_caller(&m.0.agent_id, &m.1)?;
        if let Some(e) = self.seen(&m.0.agent_id)? {
            // Not awaited: a failed write makes the master step down.
            drop(self.persist_agent(&m.0.agent_id, Vec::new()));
            self.publish(e);
        }
        // An agent the allocator does not count (it was unreachable, or this master
        // restarted) registers again, reporting what it runs.
        Ok(HeartbeatAck {
            reregister: !self.allocator.has_agent(&m.0.agent_id),
        })
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Result<String, MasterRefusal>")]
struct RenewFrom(Renew, Option<SpiffeId>);

impl Handler<RenewFrom> for Master {
    type Result = ResponseFuture<Result<String, MasterRefusal>>;
    fn handle(&mut self, m: RenewFrom, _: &mut Context<Self>) -> Self::Result {
        match self.renew(m) {
            Ok((stored, cert)) => when_stored(stored, cert, |e| {
                MasterRefusal::Unavailable(format!("the master could not record the renewal: {e}"))
            }),
            Err(refusal) => Box::pin(async move { Err(refusal) }),
        }
    }
}

impl Master {
    fn renew(&mut self, m: RenewFrom) -> Result<(StoreFuture<()>, String), MasterRefusal> {
        self.check_caller(&m.0.agent_id, &m.1)?;
        self.seen(&m.0.agent_id)?;
        let identity = SpiffeId::parse(&self.identity_of(&m.0.agent_id))
            .map_err(|e| MasterRefusal::Unavailable(e.to_string()))?;
        let cert = self
            .ca
            .sign_csr(&m.0.csr_pem, &identity, self.agent_cert_ttl)
            .map_err(|e| MasterRefusal::Forbidden(format!("cannot sign the renewal: {e}")))?;
        if let Some(rec) = self.membership.record_mut(&m.0.agent_id) {
            rec.cert_expiry = SystemTime::now().checked_add(self.agent_cert_ttl);
        }
        let stored = self.persist_agent(&m.0.agent_id, Vec::new());
        info!(agent = %m.0.agent_id, "certificate renewed");
        Ok((stored, cert))
    }
}

/// Creates a join token; returns it as printed for operators.
#[derive(Debug, Message)]
#[rtype(result = "Result<CreatedToken, String>")]
pub struct CreateToken {
    /// How long it works.
    pub ttl: Duration,
    /// What it allows.
    pub role: TokenRole,
}

/// A token just made.
#[derive(Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The whole token, secret included (shown once).
    pub token: String,
    /// Its id.
    pub id: String,
    /// When it stops working.
    pub expires: SystemTime,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("id", &self.id)
            .field("token", &"<hidden>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// The longest a join token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

impl Handler<CreateToken> for Master {
    type Result = ResponseFuture<Result<CreatedToken, String>>;
    fn handle(&mut self, m: CreateToken, _: &mut Context<Self>) -> Self::Result {
        match self.create_token(m) {
            Ok((stored, created)) => {
                when_stored(stored, created, |e| format!("cannot record the token: {e}"))
            }
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

impl Master {
    fn create_token(&mut self, m: CreateToken) -> Result<(StoreFuture<()>, CreatedToken), String> {
        let token = JoinToken::generate(&self.ca.fingerprint())
            .map_err(|_| "no system randomness".to_string())?;
        if m.ttl.is_zero() || m.ttl > MAX_TOKEN_TTL {
            return Err(format!(
                "a token's lifetime must be between 1 s and {} s (a year), not {} s",
                MAX_TOKEN_TTL.as_secs(),
                m.ttl.as_secs()
            ));
        }
        let record = TokenRecord::new(&token, m.role, SystemTime::now(), m.ttl);
        let value = codec::encode(&record).map_err(|e| e.to_string())?;
        let stored = self.persist(vec![Change::put(Table::Tokens, token.id.clone(), value)]);
        let expires = record.expires;
        self.tokens.insert(token.id.clone(), record);
        let created = CreatedToken {
            token: token.to_string(),
            id: token.id,
            expires,
        };
        Ok((stored, created))
    }
}

/// Every agent.
#[derive(Debug, Message)]
#[rtype(result = "Vec<AgentRecord>")]
pub struct ListNodes;

impl Handler<ListNodes> for Master {
    type Result = MessageResult<ListNodes>;
    fn handle(&mut self, _: ListNodes, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.membership.all().cloned().collect())
    }
}

/// Marks an agent draining (no new work placed on it).
#[derive(Debug, Message)]
#[rtype(result = "Result<AgentRecord, String>")]
pub struct DrainNode(pub String);

impl Handler<DrainNode> for Master {
    type Result = ResponseFuture<Result<AgentRecord, String>>;
    fn handle(&mut self, m: DrainNode, _: &mut Context<Self>) -> Self::Result {
        let Some(rec) = self.membership.record_mut(&m.0) else {
            let e = format!("no node named {:?}", m.0);
            return Box::pin(async move { Err(e) });
        };
        rec.draining = true;
        let rec = rec.clone();
        let stored = self.persist_agent(&m.0, Vec::new());
        self.allocator.pause_agent(&m.0, true);
        self.rescind_offers_on(&m.0);
        when_stored(stored, rec, move |e| {
            format!("the master could not record that {} drains: {e}", m.0)
        })
    }
}

/// Subscribes an actor to membership changes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<MembershipEvent>);

impl Handler<Subscribe> for Master {
    type Result = ();
    fn handle(&mut self, m: Subscribe, _: &mut Context<Self>) {
        self.subscribers.push(m.0);
    }
}

/// The master's face on the mesh (`$master`): forwards agent messages with the verified
/// caller to [`Master`].
#[derive(Debug)]
pub struct MasterGate {
    master: Addr<Master>,
}

impl Actor for MasterGate {
    type Context = Context<Self>;
}

fn forward<M, R>(master: &Addr<Master>, m: M) -> ResponseFuture<Result<R, MasterRefusal>>
where
    Master: Handler<M>,
    M: Message<Result = Result<R, MasterRefusal>> + Send + 'static,
    R: Send + 'static,
{
    let req = master.send(m);
    Box::pin(async move {
        req.await.unwrap_or_else(|e| {
            Err(MasterRefusal::Unavailable(format!(
                "the master is not running: {e}"
            )))
        })
    })
}

#[actormesh::handler]
impl Handler<Register> for MasterGate {
    type Result = ResponseFuture<Result<Registered, MasterRefusal>>;
    fn handle(&mut self, m: Register, _: &mut Context<Self>) -> Self::Result {
        forward(&self.master, RegisterFrom(m, actormesh::caller()))
    }
}

#[actormesh::handler]
impl Handler<Heartbeat> for MasterGate {
    type Result = ResponseFuture<Result<HeartbeatAck, MasterRefusal>>;
    fn handle(&mut self, m: Heartbeat, _: &mut Context<Self>) -> Self::Result {
        forward(&self.master, HeartbeatFrom(m, actormesh::caller()))
    }
}

#[actormesh::handler]
impl Handler<Renew> for MasterGate {
    type Result = ResponseFuture<Result<String, MasterRefusal>>;
    fn handle(&mut self, m: Renew, _: &mut Context<Self>) -> Self::Result {
        forward(&self.master, RenewFrom(m, actormesh::caller()))
    }
}

/// A task state report from an agent, with the verified sender.
#[derive(Debug, Message)]
#[rtype(result = "Result<actormesh::protocol::ReportAck, MasterRefusal>")]
struct TaskStatusFrom(actormesh::protocol::TaskStatusReport, Option<SpiffeId>);

impl Handler<TaskStatusFrom> for Master {
    type Result = Result<actormesh::protocol::ReportAck, MasterRefusal>;
    fn handle(&mut self, m: TaskStatusFrom, ctx: &mut Context<Self>) -> Self::Result {
        self.check_caller(&m.0.agent_id, &m.1)?;
        let s = m.0.status;
        if s.agent_id != m.0.agent_id {
            return Err(MasterRefusal::Forbidden(format!(
                "agent {} may not report tasks of agent {}",
                m.0.agent_id, s.agent_id
            )));
        }
        info!(task = %s.task_id, agent = %s.agent_id, state = ?s.state, message = %s.message, "task status");
        let ended = s.state.is_terminal();
        let s_task_id = s.task_id.clone();
        // The master's view of the task: which agent runs it, and whether it gave it up.
        let known = self
            .deployments
            .task(&s.task_id)
            .map(|t| (t.agent.clone(), t.state))
            .or_else(|| self.fw.task_view(&s.task_id));
        if let Some((owner, state)) = &known {
            if owner != &s.agent_id {
                return Err(MasterRefusal::Forbidden(format!(
                    "task {} runs on agent {owner}, not on {}",
                    s.task_id, s.agent_id
                )));
            }
            if state.is_terminal() && !ended {
                // Given up (a launch that timed out, a kill, a lost agent) but running
                // after all: it must not run on.
                warn!(task = %s.task_id, agent = %s.agent_id, "a task the master gave up runs; killing it");
                self.carry_out(
                    vec![deployments::Action::Kill {
                        task_id: s.task_id.clone(),
                        agent: s.agent_id.clone(),
                    }],
                    ctx,
                );
            }
        }
        if self.framework_task_status(s.clone()) {
            // A framework's task: its book has it.
        } else if self.deployments.task(&s.task_id).is_some() {
            self.deployments.on_status(&s, Instant::now());
            if ended {
                self.allocator.revive(scheduler::DEPLOYMENTS_ROLE);
            }
        } else if self.tasks.contains_key(&s.task_id) {
            // Launched directly (`LaunchOn`): only this map has it, bounded by dropping
            // ended entries.
            self.tasks.insert(s.task_id.clone(), s);
            if self.tasks.len() > MAX_REPORTED_TASKS {
                self.tasks.retain(|_, t| !t.state.is_terminal());
            }
        } else if ended && self.framework_task_ended_unknown(&s) {
            // The end of a framework's task this master did not know (it restarted
            // meanwhile): passed on to the framework.
        } else {
            warn!(task = %s.task_id, agent = %s.agent_id, "a report of a task the master never launched; ignored");
        }
        if ended {
            self.schedule_round(ctx);
        }
        // An end a framework has yet to acknowledge stays with the agent too, so that it
        // survives this master.
        Ok(actormesh::protocol::ReportAck {
            keep: ended && self.fw.awaits_ack(&s_task_id),
        })
    }
}

#[actormesh::handler]
impl Handler<actormesh::protocol::TaskStatusReport> for MasterGate {
    type Result = ResponseFuture<Result<actormesh::protocol::ReportAck, MasterRefusal>>;
    fn handle(
        &mut self,
        m: actormesh::protocol::TaskStatusReport,
        _: &mut Context<Self>,
    ) -> Self::Result {
        forward(&self.master, TaskStatusFrom(m, actormesh::caller()))
    }
}

/// Starts an instance of `actor_type` named `name` on agent `agent` as task `task_id`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub struct LaunchOn {
    /// The agent.
    pub agent: String,
    /// The task id.
    pub task_id: String,
    /// A type the agent hosts.
    pub actor_type: String,
    /// The instance's name on the agent's node.
    pub name: String,
}

impl Handler<LaunchOn> for Master {
    type Result = ResponseFuture<Result<(), String>>;
    fn handle(&mut self, m: LaunchOn, _: &mut Context<Self>) -> Self::Result {
        let target = self.agent_actor(&m.agent);
        self.tasks
            .entry(m.task_id.clone())
            .or_insert_with(|| frameworks::TaskStatus {
                task_id: m.task_id.clone(),
                agent_id: m.agent.clone(),
                state: frameworks::TaskState::Staging,
                message: String::new(),
                uuid: 0,
                healthy: None,
            });
        Box::pin(async move {
            let target = target?;
            let launch = actormesh::protocol::LaunchActor {
                task_id: m.task_id,
                actor_type: m.actor_type,
                name: m.name,
                health: None,
                restart: None,
                resources: Default::default(),
                version: String::new(),
            };
            target
                .ask_timeout(launch, Duration::from_secs(10))
                .await
                .map_err(|e| format!("agent {} did not answer: {e}", m.agent))?
        })
    }
}

/// Stops task `task_id` on agent `agent`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub struct KillOn {
    /// The agent.
    pub agent: String,
    /// The task id.
    pub task_id: String,
}

impl Handler<KillOn> for Master {
    type Result = ResponseFuture<Result<(), String>>;
    fn handle(&mut self, m: KillOn, _: &mut Context<Self>) -> Self::Result {
        let target = self.agent_actor(&m.agent);
        Box::pin(async move {
            target?
                .ask_timeout(
                    actormesh::protocol::KillTask { task_id: m.task_id },
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| format!("agent {} did not answer: {e}", m.agent))?
        })
    }
}

/// Every task the agents reported, latest state each.
#[derive(Debug, Message)]
#[rtype(result = "Vec<frameworks::TaskStatus>")]
pub struct ListTasks;

impl Handler<ListTasks> for Master {
    type Result = MessageResult<ListTasks>;
    fn handle(&mut self, _: ListTasks, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.tasks.values().cloned().collect())
    }
}

impl Master {
    /// The `$agent` actor of an Active agent.
    fn agent_actor(&self, agent: &str) -> Result<actormesh::RemoteRef, String> {
        let rec = self
            .membership
            .get(agent)
            .ok_or_else(|| format!("no agent named {agent:?}"))?;
        if rec.state != AgentState::Active {
            return Err(format!("agent {agent} is {}, not Active", rec.state));
        }
        let addr = rec
            .addr
            .ok_or_else(|| format!("agent {agent} has not registered an address yet"))?;
        Ok(self.node.actor_ref(addr, actormesh::protocol::AGENT_ACTOR))
    }
}

const DEPLOYMENT_PREFIX: &str = "deployment/";

/// Reported states kept of tasks launched directly (not by a deployment or a framework).
const MAX_REPORTED_TASKS: usize = 10_000;

/// The deployments kept in the Config table.
fn load_deployments(
    config_rows: &[(String, state::Versioned)],
    epoch: u32,
) -> anyhow::Result<deployments::DeploymentBook> {
    let mut book = deployments::DeploymentBook::new(epoch);
    for (k, v) in config_rows {
        if let Some(name) = k.strip_prefix(DEPLOYMENT_PREFIX) {
            let text = String::from_utf8(v.value.clone())?;
            let d = crate::manifest::parse(std::path::Path::new(&format!("{name}.json")), &text)
                .map_err(|e| {
                    anyhow::anyhow!("stored deployment {name} no longer validates: {e}")
                })?;
            book.apply(d);
        }
    }
    Ok(book)
}

impl Master {
    /// Sends the controller's launches and kills to the agents.
    fn carry_out(&mut self, actions: Vec<deployments::Action>, ctx: &mut Context<Self>) {
        for action in actions {
            match action {
                deployments::Action::Launch {
                    task_id,
                    agent,
                    what,
                    health,
                } => {
                    let me = ctx.address();
                    let target = self.agent_actor(&agent);
                    let (resources, version) = self
                        .deployments
                        .task(&task_id)
                        .map(|t| (t.resources.clone(), t.version.clone()))
                        .or_else(|| self.fw.task_resources(&task_id).map(|r| (r, String::new())))
                        .unwrap_or_default();
                    actix::spawn(async move {
                        let asked = match (target, what) {
                            (Ok(t), deployments::Launchable::Actor(actor_type, restart)) => {
                                let launch = actormesh::protocol::LaunchActor {
                                    task_id: task_id.clone(),
                                    actor_type,
                                    name: task_id.clone(),
                                    health,
                                    restart,
                                    resources,
                                    version,
                                };
                                t.ask_timeout(launch, Duration::from_secs(10)).await
                            }
                            (Ok(t), deployments::Launchable::Command(task)) => {
                                let launch = actormesh::protocol::LaunchCommand {
                                    task: *task,
                                    health,
                                };
                                t.ask_timeout(launch, Duration::from_secs(10)).await
                            }
                            (Err(e), _) => Ok(Err(e)),
                        };
                        let result = asked.map_err(|e| e.to_string()).and_then(|r| r);
                        if let Err(why) = result {
                            me.do_send(LaunchFailed { task_id, why });
                        }
                    });
                }
                deployments::Action::Kill { task_id, agent } => {
                    if let Err(e) = self.agent_actor(&agent) {
                        warn!(task = %task_id, why = %e, "kill not delivered; it is sent again if the agent registers with the task");
                    }
                    if let Ok(t) = self.agent_actor(&agent) {
                        let me = ctx.address();
                        actix::spawn(async move {
                            let asked = t
                                .ask_timeout(
                                    actormesh::protocol::KillTask {
                                        task_id: task_id.clone(),
                                    },
                                    Duration::from_secs(10),
                                )
                                .await;
                            match asked {
                                Ok(Ok(())) => {}
                                // The agent answers a kill with an error only when it does
                                // not run the task: nothing will report its end.
                                Ok(Err(why)) => me.do_send(KillFoundNothing { task_id, why }),
                                Err(e) => me.do_send(KillNotDelivered {
                                    task_id,
                                    agent,
                                    why: e.to_string(),
                                }),
                            }
                        });
                    }
                }
            }
        }
    }
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
struct LaunchFailed {
    task_id: String,
    why: String,
}

impl Handler<LaunchFailed> for Master {
    type Result = ();
    fn handle(&mut self, m: LaunchFailed, ctx: &mut Context<Self>) {
        warn!(task = %m.task_id, why = %m.why, "launch failed");
        let status = frameworks::TaskStatus {
            task_id: m.task_id.clone(),
            agent_id: String::new(),
            state: frameworks::TaskState::Failed,
            message: format!("launch failed: {}", m.why),
            uuid: 0,
            healthy: None,
        };
        if !self.framework_task_status(status) {
            self.deployments
                .launch_failed(&m.task_id, &m.why, Instant::now());
        }
        self.schedule_round(ctx);
    }
}

/// The agent of a killed task does not run it (its launch never got there, or it ended).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct KillFoundNothing {
    task_id: String,
    why: String,
}

impl Handler<KillFoundNothing> for Master {
    type Result = ();
    fn handle(&mut self, m: KillFoundNothing, ctx: &mut Context<Self>) {
        info!(task = %m.task_id, why = %m.why, "killed task not found on its agent; its resources are free");
        if self.deployments.kill_found_nothing(&m.task_id) {
            self.allocator.revive(scheduler::DEPLOYMENTS_ROLE);
            self.schedule_round(ctx);
        }
    }
}

/// A kill did not reach its agent (timeout, connection lost).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct KillNotDelivered {
    task_id: String,
    agent: String,
    why: String,
}

/// How long after an undelivered kill it is sent again.
const KILL_RETRY: Duration = Duration::from_secs(1);

impl Handler<KillNotDelivered> for Master {
    type Result = ();
    fn handle(&mut self, m: KillNotDelivered, ctx: &mut Context<Self>) {
        // A deployment instance being stopped holds its resources until it is gone, so
        // the kill must get there: again, for as long as the agent is there (once it is
        // lost, or registers without the instance, the instance is done with).
        fn stopping(master: &Master, task_id: &str, agent: &str) -> bool {
            master
                .deployments
                .task(task_id)
                .is_some_and(|t| t.stopping && t.agent == agent)
        }
        if !stopping(self, &m.task_id, &m.agent) {
            return;
        }
        warn!(task = %m.task_id, agent = %m.agent, why = %m.why, "kill not delivered; sending it again");
        ctx.run_later(KILL_RETRY, move |master, ctx| {
            if stopping(master, &m.task_id, &m.agent) {
                master.carry_out(
                    vec![deployments::Action::Kill {
                        task_id: m.task_id.clone(),
                        agent: m.agent.clone(),
                    }],
                    ctx,
                );
            }
        });
    }
}

/// Adds or replaces a deployment from manifest JSON (validated again here).
#[derive(Debug, Message)]
#[rtype(result = "Result<String, String>")]
pub struct ApplyDeployment(pub String);

impl Handler<ApplyDeployment> for Master {
    type Result = ResponseFuture<Result<String, String>>;
    fn handle(&mut self, m: ApplyDeployment, ctx: &mut Context<Self>) -> Self::Result {
        let d = match crate::manifest::parse(std::path::Path::new("manifest.json"), &m.0) {
            Ok(d) => d,
            Err(e) => {
                let e = e.to_string();
                return Box::pin(async move { Err(e) });
            }
        };
        let key = deployments::key(&d);
        // Queued before it takes effect, and acknowledged once stored: a master restart
        // keeps every deployment `apply` reported applied.
        let stored = self.persist(vec![Change::put(
            Table::Config,
            format!("{DEPLOYMENT_PREFIX}{key}"),
            m.0.into_bytes(),
        )]);
        self.deployments.apply(d);
        // What the deployments refused before may suit the new spec.
        self.allocator.revive(scheduler::DEPLOYMENTS_ROLE);
        self.schedule_round(ctx);
        info!(deployment = %key, "deployment applied");
        when_stored(stored, key, |e| {
            format!("cannot record the deployment: {e}")
        })
    }
}

/// Every deployment's standing.
#[derive(Debug, Message)]
#[rtype(result = "Vec<deployments::DeploymentSummary>")]
pub struct ListDeployments;

impl Handler<ListDeployments> for Master {
    type Result = MessageResult<ListDeployments>;
    fn handle(&mut self, _: ListDeployments, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.deployments.summaries())
    }
}

/// Every deployment task.
#[derive(Debug, Message)]
#[rtype(result = "Vec<deployments::TaskEntry>")]
pub struct ListDeploymentTasks;

impl Handler<ListDeploymentTasks> for Master {
    type Result = MessageResult<ListDeploymentTasks>;
    fn handle(&mut self, _: ListDeploymentTasks, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.deployments.tasks().cloned().collect())
    }
}

/// Every task of a deployment or a framework (owner `framework/<id>`), for `get tasks`.
#[derive(Debug, Message)]
#[rtype(result = "Vec<deployments::TaskEntry>")]
pub struct ListAllTasks;

impl Handler<ListAllTasks> for Master {
    type Result = MessageResult<ListAllTasks>;
    fn handle(&mut self, _: ListAllTasks, _: &mut Context<Self>) -> Self::Result {
        let mut all: Vec<deployments::TaskEntry> = self.deployments.tasks().cloned().collect();
        all.extend(self.fw.task_entries());
        MessageResult(all)
    }
}

/// Removes deployment `namespace/name` and stops its instances gracefully.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), DeploymentRefusal>")]
pub struct DeleteDeployment(pub String);

/// Why a deployment request (delete, describe) was refused.
#[derive(Debug)]
pub enum DeploymentRefusal {
    /// No deployment has that key.
    NotFound(String),
    /// The deletion could not be written to the state store; the master steps down and a
    /// restarted master still has the deployment.
    Store(String),
}

impl std::fmt::Display for DeploymentRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(key) => write!(
                f,
                "no deployment {key:?} (expected namespace/name of an applied deployment, e.g. default/web)"
            ),
            Self::Store(e) => write!(
                f,
                "cannot record the deletion; the master steps down and keeps the deployment: {e}"
            ),
        }
    }
}

impl Handler<DeleteDeployment> for Master {
    type Result = ResponseFuture<Result<(), DeploymentRefusal>>;
    fn handle(&mut self, m: DeleteDeployment, ctx: &mut Context<Self>) -> Self::Result {
        if !self
            .deployments
            .deployments()
            .any(|d| deployments::key(d) == m.0)
        {
            return Box::pin(async move { Err(DeploymentRefusal::NotFound(m.0)) });
        }
        // The deletion is queued before the kills go out.
        let stored = self.persist(vec![Change::delete(
            Table::Config,
            format!("{DEPLOYMENT_PREFIX}{}", m.0),
        )]);
        let kills = self.deployments.delete(&m.0).unwrap_or_default();
        info!(deployment = %m.0, instances = kills.len(), "deployment deleted");
        self.carry_out(kills, ctx);
        self.schedule_round(ctx);
        when_stored(stored, (), |e| DeploymentRefusal::Store(e.to_string()))
    }
}

/// Why a question about a task could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskQueryRefusal {
    /// No such task.
    NotFound(String),
    /// Its agent could not answer (down, unreachable, or it refused).
    Unavailable(String),
}

impl std::fmt::Display for TaskQueryRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(id) => write!(
                f,
                "no task {id:?} (expected a task id as listed by `actormesh get tasks`)"
            ),
            Self::Unavailable(why) => f.write_str(why),
        }
    }
}

/// A task as the master and its agent see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskDescription {
    /// The task id.
    pub task_id: String,
    /// Its agent.
    pub agent: String,
    /// The deployment's record of it, if a deployment owns it.
    pub entry: Option<deployments::TaskEntry>,
    /// The last status its agent reported (tasks launched directly; a deployment's entry
    /// has its own).
    pub last_status: Option<frameworks::TaskStatus>,
    /// What its agent says of it now.
    pub on_agent: Option<actormesh::protocol::TaskDetail>,
    /// Why the agent did not say, if it did not.
    pub agent_error: Option<String>,
}

impl Master {
    /// The agent of task `id`: from the deployments, else from the reports.
    fn agent_of_task(&self, id: &str) -> Result<String, TaskQueryRefusal> {
        self.deployments
            .task(id)
            .map(|t| t.agent.clone())
            .or_else(|| self.fw.task_agent(id))
            .or_else(|| self.tasks.get(id).map(|s| s.agent_id.clone()))
            .ok_or_else(|| TaskQueryRefusal::NotFound(id.to_string()))
    }
}

/// Describes task `0`.
#[derive(Debug, Message)]
#[rtype(result = "Result<TaskDescription, TaskQueryRefusal>")]
pub struct DescribeTaskOf(pub String);

impl Handler<DescribeTaskOf> for Master {
    type Result = ResponseFuture<Result<TaskDescription, TaskQueryRefusal>>;
    fn handle(&mut self, m: DescribeTaskOf, _: &mut Context<Self>) -> Self::Result {
        let agent = match self.agent_of_task(&m.0) {
            Ok(a) => a,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let mut d = TaskDescription {
            task_id: m.0.clone(),
            agent: agent.clone(),
            entry: self.deployments.task(&m.0).cloned(),
            last_status: self.tasks.get(&m.0).cloned(),
            on_agent: None,
            agent_error: None,
        };
        let target = self.agent_actor(&agent);
        Box::pin(async move {
            let asked = match target {
                Ok(t) => t
                    .ask_timeout(
                        actormesh::protocol::DescribeTask { task_id: m.0 },
                        Duration::from_secs(5),
                    )
                    .await
                    .map_err(|e| format!("agent {agent} did not answer: {e}"))
                    .and_then(|r| r),
                Err(e) => Err(e),
            };
            match asked {
                Ok(detail) => d.on_agent = Some(detail),
                Err(e) => d.agent_error = Some(e),
            }
            Ok(d)
        })
    }
}

/// The end of a command task's captured output.
#[derive(Debug, Message)]
#[rtype(result = "Result<actormesh::protocol::TaskLog, TaskQueryRefusal>")]
pub struct TaskLogs {
    /// The task.
    pub task_id: String,
    /// stdout or stderr.
    pub stream: actormesh::protocol::LogStream,
    /// At most this many bytes from the end.
    pub max_bytes: u64,
}

impl Handler<TaskLogs> for Master {
    type Result = ResponseFuture<Result<actormesh::protocol::TaskLog, TaskQueryRefusal>>;
    fn handle(&mut self, m: TaskLogs, _: &mut Context<Self>) -> Self::Result {
        let target = self
            .agent_of_task(&m.task_id)
            .and_then(|a| self.agent_actor(&a).map_err(TaskQueryRefusal::Unavailable));
        Box::pin(async move {
            let target = target?;
            let read = actormesh::protocol::ReadTaskLog {
                task_id: m.task_id,
                stream: m.stream,
                max_bytes: m.max_bytes,
            };
            target
                .ask_timeout(read, Duration::from_secs(10))
                .await
                .map_err(|e| {
                    TaskQueryRefusal::Unavailable(format!("the agent did not answer: {e}"))
                })?
                .map_err(TaskQueryRefusal::Unavailable)
        })
    }
}

/// One deployment in full.
#[derive(Debug, Message)]
#[rtype(result = "Result<deployments::DeploymentDescription, DeploymentRefusal>")]
pub struct DescribeDeployment(pub String);

impl Handler<DescribeDeployment> for Master {
    type Result = Result<deployments::DeploymentDescription, DeploymentRefusal>;
    fn handle(&mut self, m: DescribeDeployment, _: &mut Context<Self>) -> Self::Result {
        self.deployments
            .describe(&m.0)
            .ok_or(DeploymentRefusal::NotFound(m.0))
    }
}
