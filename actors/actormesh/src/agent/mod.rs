//! The Agent: joins the cluster with a token, keeps a certificate of its own, registers
//! what it offers and runs, and heartbeats to the master.
//!
//! The agent's private key is made here and never leaves: joining sends a CSR over the
//! bootstrap port (trusting only the CA its token pins); renewal at half-life sends a new
//! CSR over the mesh, keeping the old certificate in use until the new one arrives.

pub mod command;
mod error;
pub mod reports;
pub mod tasks;
mod trust;

pub use error::AgentError;
pub(crate) use error::TaskRefusal;
pub use tasks::{ActorHost, Instance};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use actormesh_transport::bootstrap;
use actormesh_transport::codec;
use actormesh_transport::pki::{files, Credentials, NodeKey};
use actormesh_transport::{Refusal, RefusedBy, TransportError};

use crate::mesh::{Mesh, MeshOptions};
use crate::protocol::{
    BootstrapReply, BootstrapRequest, Heartbeat, JoinReply, JoinRequest, MasterRefusal, Register,
    Renew,
};
use crate::resources::Resources;
use crate::token::JoinToken;
use crate::{AskError, Node, NodeConfig, RemoteRef};

/// How an agent is started.
#[derive(Clone)]
pub struct AgentConfig {
    /// The master's bootstrap address.
    pub join: SocketAddr,
    /// The bootstrap addresses of the other masters, when there are several (`--join
    /// a,b,c`). Kept in the data dir with `join`: when the followed master stops
    /// answering, they are all asked at once where the leader is.
    pub also_join: Vec<SocketAddr>,
    /// The join token (needed the first time; later starts reuse the saved certificate).
    pub token: Option<String>,
    /// Where the key, certificate and agent id are kept.
    pub data_dir: PathBuf,
    /// Mesh address to listen on.
    pub listen: SocketAddr,
    /// Agent name asked for (empty: the master picks one).
    pub name: String,
    /// Offered resources (`None`: detected).
    pub resources: Option<Resources>,
    /// Attributes such as zone and rack.
    pub attrs: BTreeMap<String, String>,
    /// Actor types this binary hosts; empty means the host's types, or else every type it has
    /// `#[handler]`s for ([`crate::hosted_actor_types`]).
    pub actor_types: Vec<String>,
    /// The actor types the master may start here as tasks, with their factories.
    pub host: tasks::ActorHost,
    /// Resources set aside per role: offered to that role only (part of `resources`).
    pub reserved: BTreeMap<String, Resources>,
    /// Serve Prometheus metrics at `/metrics` here (`NodeConfig::metrics_listen`; needs
    /// the `metrics` feature).
    pub metrics_listen: Option<SocketAddr>,
    /// Write an access log for this share of the calls that arrive here
    /// (`NodeConfig::access_log`).
    pub access_log: Option<f64>,
    /// Trace calls (`NodeConfig::tracing`): spans to this sink, roots sampled at its ratio.
    pub tracing: Option<crate::trace::Tracing>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("join", &self.join)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl AgentConfig {
    /// An agent joining the master whose bootstrap address is `join`, keeping its key,
    /// certificate and id in `data_dir`. Everything else has its default: no token (give
    /// one with [`AgentConfig::token`] the first time), listening on `127.0.0.1:0`, the
    /// name the master picks, resources detected, no attributes, no reservations, no
    /// hosted types (add them with [`AgentConfig::host`]).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), actormesh::agent::AgentError> {
    /// use actormesh::agent::{self, ActorHost, AgentConfig};
    /// # struct Kv; impl actix::Actor for Kv { type Context = actix::Context<Self>; }
    /// let config = AgentConfig::new("127.0.0.1:7001".parse().unwrap(), "./kv-agent")
    ///     .token(std::env::var("ACTORMESH_JOIN_TOKEN").ok())
    ///     .name("kv-1")
    ///     .host(ActorHost::new().with("kv", || Kv));
    /// let agent = agent::start(config).await?;
    /// agent.run_until_stopped().await
    /// # }
    /// ```
    pub fn new(join: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            join,
            also_join: Vec::new(),
            token: None,
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            name: String::new(),
            resources: None,
            attrs: BTreeMap::new(),
            actor_types: Vec::new(),
            host: ActorHost::default(),
            reserved: BTreeMap::new(),
            metrics_listen: None,
            access_log: None,
            tracing: None,
        }
    }

    /// Serving Prometheus metrics at `/metrics` on `addr` (needs the `metrics` feature).
    pub fn metrics_listen(mut self, addr: SocketAddr) -> Self {
        self.metrics_listen = Some(addr);
        self
    }

    /// With this join token (`None`: reuse the certificate saved in the data dir).
    pub fn token(mut self, token: impl Into<Option<String>>) -> Self {
        self.token = token.into();
        self
    }

    /// Asking for this agent name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Listening for the mesh on `addr`.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Offering these resources instead of the detected ones.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = Some(resources);
        self
    }

    /// With attribute `key=value` (e.g. `zone`).
    pub fn attr(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attrs.insert(key.into(), value.into());
        self
    }

    /// Hosting these actor types: the master may start them here as tasks.
    pub fn host(mut self, host: ActorHost) -> Self {
        self.host = host;
        self
    }

    /// Knowing the other masters' bootstrap addresses too.
    pub fn also_join(mut self, joins: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.also_join = joins.into_iter().collect();
        self
    }

    /// Setting `resources` aside for `role`'s offers only.
    pub fn reserve(mut self, role: impl Into<String>, resources: Resources) -> Self {
        self.reserved.insert(role.into(), resources);
        self
    }
}

/// A running agent.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    /// The agent's mesh node.
    pub node: Node,
    /// Its id in the cluster.
    pub agent_id: String,
    /// The master this agent follows.
    pub master: crate::masters::FollowedMaster,
    /// Set with the reason if the master removed this agent (it must rejoin).
    pub removed: watch::Receiver<Option<String>>,
    mesh: Mesh,
}

impl AgentHandle {
    /// The agent's part of the mesh: its Proxy, subscribed to the master, and calls by
    /// service name.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Serves until the process gets Ctrl-C (SIGINT), `Ok`, or the master removes this
    /// agent, [`AgentError::Removed`] with the master's reason (the agent must join again
    /// with a new token). What every agent binary's `main` ends with.
    pub async fn run_until_stopped(&self) -> Result<(), AgentError> {
        let mut removed = self.removed.clone();
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(|e| AgentError::Signal(e.to_string())),
            reason = removed.wait_for(|r| r.is_some()) => {
                let reason = reason.map(|r| r.clone().unwrap_or_default()).unwrap_or_default();
                Err(AgentError::Removed(reason))
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    agent_id: String,
    master_addr: SocketAddr,
    /// Every master's bootstrap address this agent knows (written since HA masters).
    #[serde(default)]
    joins: Vec<SocketAddr>,
}

impl Saved {
    /// Adds the bootstrap addresses `config` names to those saved (the configured first).
    /// Returns whether any was new.
    fn know(&mut self, config: &AgentConfig) -> bool {
        let mut all: Vec<SocketAddr> = std::iter::once(config.join)
            .chain(config.also_join.iter().copied())
            .collect();
        for j in &self.joins {
            if !all.contains(j) {
                all.push(*j);
            }
        }
        let changed = all != self.joins;
        self.joins = all;
        changed
    }

    fn save(&self, file: &Path) -> Result<(), AgentError> {
        let text = serde_json::to_string(self).map_err(|source| AgentError::StateFile {
            path: file.to_path_buf(),
            source,
        })?;
        write_private(file, &text).map_err(AgentError::storage("write", file))
    }
}

const SAVED: &str = "agent.json";

/// Saves `joins` as the masters' bootstrap addresses in the saved state in `dir`.
fn remember_masters(dir: &Path, joins: &[SocketAddr]) -> Result<(), AgentError> {
    let file = dir.join(SAVED);
    let text = std::fs::read_to_string(&file).map_err(AgentError::storage("read", &file))?;
    let mut saved: Saved = serde_json::from_str(&text).map_err(|source| AgentError::StateFile {
        path: file.clone(),
        source,
    })?;
    saved.joins = joins.to_vec();
    saved.save(&file)
}

/// Writes `contents` to `path` with mode 0600 (keys, certificates, saved identities).
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    // Renamed into place, so a crash never leaves half a key or certificate.
    std::fs::rename(&tmp, path)
}

/// Where the current key, certificate and CA live: a symlink to a directory that holds
/// all three, so that a renewal replaces them together.
const CREDS: &str = "creds";

/// Writes key, certificate and CA as one set: into a new directory, then one atomic
/// rename of the `creds` symlink, so a crash leaves the old set or the new one, never a
/// mix of both.
fn save_credentials(
    dir: &Path,
    key_pem: &str,
    cert_pem: &str,
    ca_pem: &str,
) -> Result<(), AgentError> {
    save_credential_set(dir, key_pem, cert_pem, ca_pem)
        .map_err(AgentError::storage("write credentials in", dir))
}

fn save_credential_set(
    dir: &Path,
    key_pem: &str,
    cert_pem: &str,
    ca_pem: &str,
) -> std::io::Result<()> {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("creds-{stamp}");
    let new_dir = dir.join(&name);
    std::fs::create_dir_all(&new_dir)?;
    write_private(&new_dir.join(files::KEY), key_pem)?;
    write_private(&new_dir.join(files::CERT), cert_pem)?;
    write_private(&new_dir.join(files::CA_CERT), ca_pem)?;
    let old = std::fs::read_link(dir.join(CREDS)).ok();
    let tmp = dir.join("creds.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp)?;
    std::fs::rename(&tmp, dir.join(CREDS))?;
    if let Some(old) = old.filter(|o| o.as_os_str() != name.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// The saved credentials: the `creds` set, or files directly in `dir` (made by hand with
/// `actormesh ca issue`).
fn load_credentials(dir: &Path) -> Result<Credentials, AgentError> {
    let set = dir.join(CREDS);
    let from = if set.exists() { set } else { dir.to_path_buf() };
    Ok(Credentials::load(&from)?)
}

/// Detects cpus, memory (MiB) and the disk space (MiB) of the data directory.
pub fn detect_resources(data_dir: &Path) -> Resources {
    let mut r = Resources::default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    r.scalars.insert("cpus".into(), cpus as f64);
    if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") {
        if let Some(kib) = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        {
            r.scalars.insert("mem".into(), (kib / 1024.0).floor());
        }
    }
    // `df -Pk` is POSIX; no unsafe statvfs call needed.
    if let Ok(out) = std::process::Command::new("df")
        .arg("-Pk")
        .arg(data_dir)
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(avail) = text
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<f64>().ok())
        {
            r.scalars.insert("disk".into(), (avail / 1024.0).floor());
        }
    }
    r
}

async fn join(config: &AgentConfig) -> Result<(Credentials, Saved), AgentError> {
    let token_text = config
        .token
        .as_deref()
        .ok_or_else(|| AgentError::NoToken(config.data_dir.clone()))?;
    let token: JoinToken = token_text.parse()?;
    let key = NodeKey::generate()?;
    let wanted = actormesh_transport::SpiffeId::parse("spiffe://joining/node/agent")?;
    let request = JoinRequest {
        token_id: token.id.clone(),
        token_secret: token.secret.clone(),
        name: config.name.clone(),
        csr_pem: key.csr(&wanted)?,
    };
    let (reply, bundle) = bootstrap::request(
        config.join,
        &token.ca_fingerprint,
        &codec::encode(&BootstrapRequest::Join(request))?,
        Duration::from_secs(15),
    )
    .await
    .map_err(|error| AgentError::Unreachable {
        what: "joining through",
        addr: config.join,
        error,
    })?;
    let BootstrapReply::Join(reply) = codec::decode::<BootstrapReply>(&reply)? else {
        return Err(AgentError::UnexpectedReply(config.join));
    };
    match reply {
        JoinReply::Accepted {
            agent_id,
            cert_pem,
            master_addr,
        } => {
            let ca_pem = actormesh_transport::trust::bundle_pem(&bundle);
            std::fs::create_dir_all(&config.data_dir)
                .map_err(AgentError::storage("create", &config.data_dir))?;
            save_credentials(&config.data_dir, &key.pem(), &cert_pem, &ca_pem)?;
            let mut saved = Saved {
                agent_id,
                master_addr,
                joins: Vec::new(),
            };
            saved.know(config);
            // Every master the cluster has, so that this agent finds the leader when the
            // one it joined through is gone.
            if let Some(found) =
                crate::masters::locate(&saved.joins, &bundle, Duration::from_secs(5)).await
            {
                crate::masters::learn(&mut saved.joins, &found.bootstraps);
            }
            saved.save(&config.data_dir.join(SAVED))?;
            let creds = key.credentials(&cert_pem, &ca_pem)?;
            info!(agent = %saved.agent_id, master = %saved.master_addr, "joined the cluster");
            Ok((creds, saved))
        }
        JoinReply::Refused { reason } => Err(AgentError::JoinRefused(reason)),
    }
}

/// Starts an agent: joins (first time) or reuses its saved certificate, starts its node,
/// registers, then heartbeats and renews in the background. Call inside an actix system.
pub async fn start(config: AgentConfig) -> Result<AgentHandle, AgentError> {
    let saved_file = config.data_dir.join(SAVED);
    let (creds, saved) = match std::fs::read_to_string(&saved_file) {
        Ok(text) => {
            let mut saved: Saved =
                serde_json::from_str(&text).map_err(|source| AgentError::StateFile {
                    path: saved_file.clone(),
                    source,
                })?;
            let creds = load_credentials(&config.data_dir)?;
            if saved.know(&config) {
                saved.save(&saved_file)?;
            }
            // The master may listen elsewhere since we last ran, or another may lead: ask
            // the bootstrap ports known, pinning the CAs of the saved bundle.
            match crate::masters::locate(&saved.joins, &creds.trust, Duration::from_secs(5)).await {
                Some(found) => {
                    saved.master_addr = found.leader;
                    if crate::masters::learn(&mut saved.joins, &found.bootstraps) {
                        saved.save(&saved_file)?;
                    }
                }
                None => warn!(
                    joins = ?saved.joins,
                    saved = %saved.master_addr,
                    "could not locate the master; using the saved address"
                ),
            }
            (creds, saved)
        }
        Err(_) => join(&config).await?,
    };
    let mut node_config = NodeConfig::new(config.listen);
    node_config.metrics_listen = config.metrics_listen;
    node_config.access_log = config.access_log;
    node_config.tracing = config.tracing.clone();
    let node = Node::start(node_config, &creds)?;
    // Whoever answers at the master's address must be the master, not just any member.
    let link = node
        .endpoint()
        .link(saved.master_addr)
        .await
        .map_err(|error| AgentError::Unreachable {
            what: "connecting to the master at",
            addr: saved.master_addr,
            error,
        })?;
    if !link.peer().is_master() {
        return Err(AgentError::NotTheMaster {
            identity: link.peer().clone(),
            addr: saved.master_addr,
        });
    }
    let master = crate::masters::FollowedMaster::new(saved.master_addr, Some(link.peer().clone()));
    // Command tasks an earlier run left: reported as running, and watched again.
    let sandboxes = std::path::absolute(&config.data_dir)
        .unwrap_or_else(|_| config.data_dir.clone())
        .join(tasks::SANDBOXES);
    let recovered = tasks::recover_commands(&sandboxes);
    let task_ids = tasks::TaskIds::default();
    let resources = config
        .resources
        .clone()
        .unwrap_or_else(|| detect_resources(&config.data_dir));
    let reserved_sum = config
        .reserved
        .values()
        .fold(Resources::default(), |a, r| a.plus(r));
    if !resources.contains(&reserved_sum) {
        return Err(AgentError::ReservationsExceed {
            reserved: Box::new(reserved_sum),
            offered: Box::new(resources),
        });
    }
    let register = Register {
        agent_id: saved.agent_id.clone(),
        addr: node.local_addr(),
        resources,
        attrs: config.attrs.clone(),
        actor_types: if config.actor_types.is_empty() && !config.host.types().is_empty() {
            config.host.types()
        } else if config.actor_types.is_empty() {
            // actormesh's own actors (the master's gate) are not placeable work.
            crate::hosted_actor_types()
                .into_iter()
                .filter(|t| !t.starts_with("actormesh::"))
                .map(String::from)
                .collect()
        } else {
            config.actor_types.clone()
        },
        // Actor tasks end with the process; command tasks may have outlived it. Those that
        // ended meanwhile are listed too: their end is reported right after, so the master
        // learns how they ended rather than calling them lost.
        running: recovered.iter().map(|c| c.task().id.clone()).collect(),
        // Not checked yet in this run.
        healthy: Vec::new(),
        reserved: config.reserved.clone(),
        held: recovered
            .iter()
            .map(|c| (c.task().id.clone(), c.task().resources.clone()))
            .collect(),
        versions: recovered
            .iter()
            .filter(|c| !c.task().version.is_empty())
            .map(|c| (c.task().id.clone(), c.task().version.clone()))
            .collect(),
        cert_expiry: creds.not_after().unwrap_or(SystemTime::UNIX_EPOCH),
    };
    // The mesh exists before the gate, so that an instance launched as soon as the master
    // knows this agent can call by name (`ActorHost::with_mesh`); the Proxy subscribes
    // once the master knows this agent as a member.
    let mut mesh_options = MeshOptions::default().follow(master.clone());
    mesh_options.zone = config.attrs.get("zone").cloned();
    let (mesh, subscription) = Mesh::start_held(&node, mesh_options)?;
    // The gate runs before registering: the master may answer a registration by killing
    // instances it replaced meanwhile.
    node.spawn(
        crate::protocol::AGENT_ACTOR,
        tasks::AgentGate::new(
            node.clone(),
            config.host.clone(),
            saved.agent_id.clone(),
            master.clone(),
            sandboxes,
            recovered,
            task_ids.clone(),
        ),
    )?;
    let registered =
        register_until_accepted(&master.actor_ref(&node), &register, Duration::from_secs(30))
            .await?;
    info!(agent = %saved.agent_id, "registered with the master");
    subscription.begin();
    let (removed_tx, removed) = watch::channel(None);
    let interval = Duration::from_millis(registered.heartbeat_interval_ms.max(10));
    let renew_now = Arc::new(tokio::sync::Notify::new());
    // A renewal and a new trust bundle each write the credential set: one at a time, so
    // neither writes back what the other replaced.
    let creds_lock = Arc::new(std::sync::Mutex::new(()));
    tokio::spawn(heartbeat_loop(
        node.clone(),
        (master.clone(), saved.joins.clone()),
        register,
        task_ids,
        interval,
        removed_tx,
        (
            config.data_dir.clone(),
            renew_now.clone(),
            creds_lock.clone(),
        ),
    ));
    tokio::spawn(renew_loop(
        node.clone(),
        master.clone(),
        saved.agent_id.clone(),
        config.data_dir.clone(),
        creds,
        (renew_now, creds_lock),
    ));
    Ok(AgentHandle {
        node,
        agent_id: saved.agent_id,
        master,
        removed,
        mesh,
    })
}

/// Asks the masters at `joins` where the leader is; follows it if it is another master
/// and its link proves a master's identity. Masters it did not know are added to `joins`
/// and to the saved state in `dir`.
async fn follow_leader(
    node: &Node,
    followed: &crate::masters::FollowedMaster,
    joins: &mut Vec<SocketAddr>,
    interval: Duration,
    dir: &Path,
) {
    let limit = interval.max(Duration::from_millis(500));
    let Some(found) = crate::masters::locate(joins, &node.endpoint().trust(), limit).await else {
        return;
    };
    if crate::masters::learn(joins, &found.bootstraps) {
        if let Err(e) = remember_masters(dir, joins) {
            warn!(error = %e, "cannot save the masters learned; they are known until this agent restarts");
        }
    }
    let addr = found.leader;
    if addr == followed.addr() && followed.get().identity.is_some() {
        return;
    }
    match tokio::time::timeout(limit * 2, node.endpoint().link(addr)).await {
        Ok(Ok(link)) if link.peer().is_master() => {
            let old = followed.addr();
            if followed.follow(addr, link.peer().clone()) {
                info!(master = %addr, identity = %link.peer(), "following the leading master");
                if old != addr {
                    if let Some(l) = node.endpoint().existing_link(old) {
                        l.close(0, "another master leads");
                    }
                }
            }
        }
        Ok(Ok(link)) => {
            warn!(%addr, identity = %link.peer(), "the leader's address answers with another identity than a master's; not following it")
        }
        Ok(Err(e)) => debug!(%addr, error = %e, "cannot link to the leading master yet"),
        Err(_) => debug!(%addr, "linking to the leading master timed out"),
    }
}

async fn register_until_accepted(
    master: &RemoteRef,
    register: &Register,
    limit: Duration,
) -> Result<crate::protocol::Registered, AgentError> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match master
            .ask_timeout(register.clone(), Duration::from_secs(5))
            .await
        {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(MasterRefusal::Unavailable(reason))) if started.elapsed() < limit => {
                warn!(%reason, "the master could not register us yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Ok(Err(reason)) => return Err(AgentError::RegistrationRefused(reason)),
            // A refused handshake (revoked identity, unknown CA) will not get better.
            Err(AskError::Unreachable { reason, .. }) if reason.contains("refused") => {
                return Err(AgentError::ConnectionRefused(reason))
            }
            Err(e) if started.elapsed() < limit => {
                warn!(error = %e, "master not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(source) => {
                return Err(AgentError::NoAnswer {
                    addr: master.addr(),
                    limit,
                    source,
                })
            }
        }
    }
}

async fn heartbeat_loop(
    node: Node,
    (followed, mut joins): (crate::masters::FollowedMaster, Vec<SocketAddr>),
    register: Register,
    task_ids: tasks::TaskIds,
    interval: Duration,
    removed: watch::Sender<Option<String>>,
    (dir, renew_now, creds_lock): (PathBuf, Arc<tokio::sync::Notify>, CredsLock),
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost = false;
    let mut failures = 0u32;
    loop {
        ticker.tick().await;
        let master = followed.actor_ref(&node);
        let (trust_digest, cert_ca) = trust::report(&node);
        let beat = Heartbeat {
            agent_id: register.agent_id.clone(),
            trust_digest,
            cert_ca,
        };
        match master.ask_timeout(beat, interval * 4).await {
            Ok(Ok(ack)) => {
                failures = 0;
                if let Some(bundle) = &ack.trust_bundle {
                    let taken = {
                        let _set = creds_lock.lock().unwrap_or_else(|p| p.into_inner());
                        trust::apply_bundle(&node, &dir, bundle)
                    };
                    if let Err(e) = taken {
                        warn!(error = %e, "cannot take the master's trust bundle; it is sent again with the next heartbeat");
                    }
                }
                if ack.renew_now {
                    renew_now.notify_one();
                }
                if lost || ack.reregister {
                    // The master is back (perhaps restarted): report again what runs here.
                    lost = false;
                    let mut again = register.clone();
                    {
                        let set = task_ids.lock().unwrap_or_else(|e| e.into_inner());
                        again.running = set.running.keys().cloned().collect();
                        again.held = set.running.clone();
                        again.versions = set.versions.clone();
                        again.healthy = set.healthy.iter().cloned().collect();
                    }
                    match master.ask_timeout(again, Duration::from_secs(5)).await {
                        Ok(Ok(_)) => {
                            info!("re-registered with the master");
                            task_ids
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .registrations += 1;
                        }
                        Ok(Err(e)) => {
                            warn!(error = %e, "re-registration refused; will retry");
                            lost = true;
                        }
                        Err(e) => {
                            warn!(error = %e, "re-registration failed; will retry");
                            lost = true;
                        }
                    }
                }
            }
            Ok(Err(MasterRefusal::Unavailable(reason))) => {
                warn!(%reason, "the master could not take the heartbeat; retrying");
            }
            Ok(Err(refusal)) => {
                error!(%refusal, "the master refused this agent");
                let _ = removed.send(Some(refusal.to_string()));
                return;
            }
            Err(AskError::Timeout { .. }) | Err(AskError::Unreachable { .. }) => {
                // A master that revoked this agent's identity (it was removed: Gone, or
                // `delete node`) refuses the handshake saying so: stop, with the reason.
                // The look waits at most one interval, so a master that is only down
                // (a dial under way) does not slow the heartbeats.
                if let Ok(Err(
                    e @ TransportError::HandshakeRefused {
                        by: RefusedBy::Peer,
                        refusal: Refusal::Revoked,
                        ..
                    },
                )) = tokio::time::timeout(interval, node.endpoint().link(master.addr())).await
                {
                    error!(error = %e, "the master removed this agent");
                    let _ = removed.send(Some(format!(
                        "the master removed this agent and revoked its identity ({e}); join again with a new token"
                    )));
                    return;
                }
                if !lost {
                    warn!("master unreachable; still heartbeating");
                }
                lost = true;
                failures += 1;
                // A master that restarted does not know our old connection: rather than
                // wait for it to time out, drop it after two missed answers and dial again.
                if failures == 2 {
                    if let Some(link) = node.endpoint().existing_link(master.addr()) {
                        link.close(0, "master not answering heartbeats");
                    }
                }
                // Another master may lead now: from the second missed answer on, ask
                // the masters known where the leader is, and follow it once its link
                // proves a master's identity.
                if failures >= 2 {
                    follow_leader(&node, &followed, &mut joins, interval, &dir).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "heartbeat failed");
                lost = true;
            }
        }
    }
}

/// Renews the certificate at half its life, backing off (capped) on failure. The old
/// certificate stays in use until the new one is in place.
async fn renew_loop(
    node: Node,
    master: crate::masters::FollowedMaster,
    agent_id: String,
    dir: PathBuf,
    mut creds: Credentials,
    (renew_now, creds_lock): (Arc<tokio::sync::Notify>, CredsLock),
) {
    loop {
        let Some(expiry) = creds.not_after() else {
            return;
        };
        let now = SystemTime::now();
        let life = expiry.duration_since(now).unwrap_or(Duration::ZERO);
        // At half its life, or at once when the master says another CA signs now.
        tokio::select! {
            _ = tokio::time::sleep(life / 2) => {}
            _ = renew_now.notified() => info!("renewing now: the master's CA rotation moved signing to the new CA"),
        }
        let mut delay = Duration::from_millis(500);
        loop {
            match renew_once(&node, &master, &agent_id, &dir, &creds_lock).await {
                Ok(new) => {
                    creds = new;
                    break;
                }
                Err(e) => {
                    if SystemTime::now() >= expiry {
                        error!(error = %e, "the certificate expired before it could be renewed; this agent must rejoin with a new token");
                        return;
                    }
                    warn!(error = %e, retry_in = ?delay, "certificate renewal failed");
                    tokio::time::sleep(delay).await;
                    let left = expiry
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    delay = (delay * 2)
                        .min(Duration::from_secs(60))
                        .min(left / 4)
                        .max(Duration::from_millis(100));
                }
            }
        }
    }
}

/// Held while the credential set on disk is read and written.
type CredsLock = Arc<std::sync::Mutex<()>>;

async fn renew_once(
    node: &Node,
    master: &crate::masters::FollowedMaster,
    agent_id: &str,
    dir: &Path,
    creds_lock: &CredsLock,
) -> Result<Credentials, AgentError> {
    let key = NodeKey::generate()?;
    let id = node.identity();
    let cert = master
        .actor_ref(node)
        .ask_timeout(
            Renew {
                agent_id: agent_id.to_string(),
                csr_pem: key.csr(&id)?,
            },
            Duration::from_secs(10),
        )
        .await?
        .map_err(AgentError::RenewalRefused)?;
    let _set = creds_lock.lock().unwrap_or_else(|p| p.into_inner());
    // The bundle the endpoint trusts now (a rotation may have changed it since the start).
    let ca_pem = actormesh_transport::trust::bundle_pem(&node.endpoint().trust());
    let creds = key.credentials(&cert, &ca_pem)?;
    node.endpoint().replace_credentials(&creds)?;
    save_credentials(dir, &key.pem(), &cert, &ca_pem)?;
    info!(expires = ?creds.not_after(), "certificate renewed");
    Ok(creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_from_the_builder_has_the_documented_defaults_and_takes_each_setting() {
        let join: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let c = AgentConfig::new(join, "./a");
        assert_eq!(c.join, join);
        assert_eq!(c.data_dir, PathBuf::from("./a"));
        assert_eq!(c.listen, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
        assert!(c.token.is_none() && c.name.is_empty() && c.resources.is_none());
        assert!(c.attrs.is_empty() && c.reserved.is_empty() && c.actor_types.is_empty());
        let cpus: Resources = "cpus:2".parse().unwrap();
        let c = c
            .token("am1.x".to_string())
            .name("kv-1")
            .listen("127.0.0.1:9000".parse().unwrap())
            .resources(cpus.clone())
            .attr("zone", "a")
            .reserve("batch", cpus.clone());
        assert_eq!(c.token.as_deref(), Some("am1.x"));
        assert_eq!(c.name, "kv-1");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.resources, Some(cpus.clone()));
        assert_eq!(c.attrs["zone"], "a");
        assert_eq!(c.reserved["batch"], cpus);
        // A token given as None keeps the saved certificate's path.
        assert!(c.token(None).token.is_none());
    }
}
