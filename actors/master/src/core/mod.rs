//! The cluster core: the master's rules as plain state, with time passed in and effects
//! returned (the quinn-proto half of the quinn / quinn-proto split).
//!
//! [`ClusterCore`] owns membership, the allocator, frameworks, deployments, reservations,
//! join tokens and the tasks launched directly. Each event is a method that takes the
//! time (`Instant` for the monotonic clock, `SystemTime` for the wall clock) and returns a
//! [`Step`]: the [`Effect`]s to carry out, in order, and the reply to the requester. It
//! reads no clock, sends nothing and needs no actix context; the [`crate::Master`] actor
//! drives it, carries out the effects and feeds their results back as events.
//!
//! Every change takes effect in memory at once. A reply that acknowledges a change goes
//! with an [`Effect::Persist`] whose [`Batch::acknowledges`] is set: the driver holds the
//! reply until that batch is durable.

mod access;
mod agents;
mod clients;
mod framework_calls;
mod frameworks;
mod rotation;
pub use rotation::StepCa;
mod scheduling;
mod services;
mod tasks;
#[cfg(test)]
mod tests;
mod traffic;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tracing::info;

use actormesh::framework::FrameworkEvent;
use actormesh::protocol::{LaunchActor, LaunchCommand};
use actormesh::resources::Resources;
use actormesh_transport::codec;
use actormesh_transport::SpiffeId;

use crate::allocator::{Allocator, RoleConfig};
use crate::deployments::{self, DeploymentBook};
use crate::frameworks::TaskStatus;
use crate::membership::{AgentRecord, AgentState, DetectorConfig, Membership, MembershipEvent};
use crate::state::{Change, StoreError, Table, Versioned};
use crate::tokens::TokenRecord;

pub use self::agents::{JoinAdmission, JoinRefusal, MAX_TOKEN_TTL};
pub use self::clients::{ClientAdmission, ClientRefusal, ClientRevocation};
pub use self::framework_calls::PendingFramework;
pub use self::frameworks::DEPLOYMENTS_ROLE;
pub use self::scheduling::FrameworkSummary;
pub use self::tasks::DeploymentRefusal;
pub use self::traffic::{TrafficApplied, TrafficKind};

/// Why an operator's request (create a token, drain a node, apply a deployment) was not
/// carried out. The variant says whose fault it is, so the API answers 400, 404 or 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    /// The request is malformed or out of range (a bad manifest, a token lifetime of zero).
    #[error("{0}")]
    Invalid(String),
    /// It names something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The master cannot carry it out now: its state store failed (it steps down), or the
    /// system has no randomness. Asking again, of a restarted master, may work.
    #[error("{0}")]
    Unavailable(String),
}

/// Where deployments are kept in the Config table.
pub(crate) const DEPLOYMENT_PREFIX: &str = "deployment/";
/// Reported states kept of tasks launched directly (not by a deployment or a framework).
const MAX_REPORTED_TASKS: usize = 10_000;
/// How often expired join tokens and revocations of expired certificates are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long after an undelivered kill it is sent again.
pub const KILL_RETRY: Duration = Duration::from_secs(1);

/// One batch of changes for the state store, queued behind every batch before it.
#[derive(Debug)]
pub struct Batch {
    /// The changes; an error if they could not even be encoded (then the batch fails
    /// like a refused write, but the store stays open).
    pub changes: Result<Vec<Change>, StoreError>,
    /// The step's reply acknowledges this batch: it waits until the batch is durable.
    pub acknowledges: bool,
}

/// What an instance to launch runs.
#[derive(Debug, Clone)]
pub enum Launch {
    /// An instance of an actor type the agent hosts.
    Actor(LaunchActor),
    /// An OS process.
    Command(LaunchCommand),
}

/// Something the driver carries out, in the order given.
#[derive(Debug)]
pub enum Effect {
    /// Write a batch to the state store; a failed batch closes the store and the master
    /// steps down.
    Persist(Batch),
    /// Ask agent `agent` (its mesh address `at`) to launch a task; a refusal or no answer
    /// comes back as [`ClusterCore::launch_failed`].
    Launch {
        /// The agent.
        agent: String,
        /// Its mesh address.
        at: SocketAddr,
        /// The task id.
        task_id: String,
        /// What to run (boxed: it is far larger than the other effects).
        launch: Box<Launch>,
    },
    /// A launch that cannot be sent (its agent is not Active or has no address): fed back
    /// as [`ClusterCore::launch_failed`] after this step, as a refused launch would be.
    LaunchNotSent {
        /// The task id.
        task_id: String,
        /// Why.
        why: String,
    },
    /// Ask agent `agent` to kill a task; "no such task" comes back as
    /// [`ClusterCore::kill_found_nothing`], no answer as [`ClusterCore::kill_not_delivered`].
    Kill {
        /// The agent.
        agent: String,
        /// Its mesh address.
        at: SocketAddr,
        /// The task id.
        task_id: String,
    },
    /// Call [`ClusterCore::retry_kill`] after `after`: an undelivered kill of an instance
    /// that is still stopping.
    RetryKill {
        /// The task id.
        task_id: String,
        /// The agent.
        agent: String,
        /// How long to wait.
        after: Duration,
    },
    /// Tell the agent at `at` that it may forget the end report of `task_id` it keeps.
    ReleaseStatus {
        /// The agent's mesh address.
        at: SocketAddr,
        /// The task id.
        task_id: String,
    },
    /// Send `event` to framework `framework`'s event actor (at most once).
    ToFramework {
        /// The framework.
        framework: String,
        /// The event.
        event: FrameworkEvent,
    },
    /// Framework `framework`'s events go to actor `actor` at `at` now: watch it, and feed
    /// its end back as [`ClusterCore::framework_terminated`].
    Watch {
        /// The framework.
        framework: String,
        /// The event actor's node.
        at: SocketAddr,
        /// The event actor's name.
        actor: String,
    },
    /// Framework `framework` has no event actor any more: forget it.
    Unwatch {
        /// The framework.
        framework: String,
    },
    /// Tell membership subscribers.
    Publish(MembershipEvent),
    /// Revoke a removed node's identity in the transport, until its last certificate
    /// expires (for good if `None`).
    Revoke {
        /// The identity.
        identity: SpiffeId,
        /// Until when.
        until: Option<SystemTime>,
    },
    /// Forget revocations of certificates expired by `now`.
    PruneRevocations {
        /// The wall clock time.
        now: SystemTime,
    },
    /// Call [`ClusterCore::scheduled_round`] soon (once for a burst of events).
    ScheduleRound,
    /// Ask node `node`'s `$proxy` at `at` to apply `push`; feed the answer back as
    /// [`ClusterCore::push_answered`] (no answer within the push config's `stale_after`
    /// is a failure).
    Push {
        /// The node's SPIFFE id.
        node: String,
        /// Its mesh address.
        at: SocketAddr,
        /// The push (boxed: it is far larger than the other effects).
        push: Box<actormesh::mesh::protocol::Push>,
    },
    /// Call [`ClusterCore::flush_pushes`] after `after`: the coalescing window of a change.
    FlushPushes {
        /// How long to wait.
        after: Duration,
    },
    /// Answer the deregistration the driver gave `token` to
    /// ([`ClusterCore::deregister_service`]): its endpoint is drained.
    Drained {
        /// The driver's token.
        token: u64,
    },
}

/// The outcome of one event: effects to carry out, in order, and the reply.
#[derive(Debug)]
#[must_use]
pub struct Step<T> {
    /// What to carry out.
    pub effects: Vec<Effect>,
    /// The answer to the requester (once the acknowledged batch, if any, is durable).
    pub reply: T,
}

/// What a core starts from: the configuration and what the state store holds.
#[derive(Debug)]
pub struct Setup {
    /// Failure detection.
    pub detector: DetectorConfig,
    /// Agents as stored.
    pub agents: Vec<AgentRecord>,
    /// Join tokens as stored.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// The Config table's rows (deployments, frameworks).
    pub config_rows: Vec<(String, Versioned)>,
    /// How long a framework may hold an offer.
    pub offer_timeout: Duration,
    /// Share settings per role.
    pub roles: BTreeMap<String, RoleConfig>,
    /// Differs per master process, so task and framework ids never repeat.
    pub epoch: u32,
    /// Where numbering of status updates starts (random: an acknowledgement meant for an
    /// earlier master's update must not match one of this master).
    pub first_update_uuid: u64,
    /// The cluster's trust domain.
    pub trust_domain: String,
    /// The CAs: which is trusted and which signs (join tokens pin the signer).
    pub trust: crate::rotation::TrustView,
    /// Lifetime of agent certificates.
    pub agent_cert_ttl: Duration,
    /// Timing of registry pushes to proxies.
    pub push: crate::services::PushConfig,
    /// How long the kill of an endpoint waits at most for every proxy to apply its removal.
    pub drain_time: Duration,
    /// The registry's version ceiling as stored (0 if none): versions continue from it.
    pub registry_ceiling: u64,
    /// The mesh-wide settings every push carries (the authorization default).
    pub mesh: actormesh::mesh::MeshSettings,
    /// Who may register frameworks under which roles (empty: client identities only).
    pub framework_grants: Vec<crate::access::FrameworkGrant>,
}

/// Why stored state could not be loaded into a core.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A stored deployment is not valid UTF-8 or no longer validates.
    #[error("stored deployment {name} no longer validates: {reason}")]
    Deployment {
        /// Its key.
        name: String,
        /// Why.
        reason: String,
    },
    /// A stored Route or DestinationPolicy no longer reads.
    #[error("{0}")]
    Traffic(#[from] crate::services::TrafficLoadError),
    /// A stored framework record cannot be read.
    #[error("stored framework {key} cannot be read: {reason}")]
    Framework {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A stored client revocation, API token or audit entry cannot be read.
    #[error("{0}")]
    Revocation(String),
}

/// Why an agent cannot be sent a launch, a kill or a question now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentUnavailable {
    /// No agent has that id.
    #[error("no agent named {0:?}")]
    Unknown(String),
    /// The agent is Unreachable or Gone.
    #[error("agent {0} is {1}, not Active")]
    NotActive(String, AgentState),
    /// The agent joined but has not registered yet.
    #[error("agent {0} has not registered an address yet")]
    NoAddress(String),
}

/// The master's state and rules.
pub struct ClusterCore {
    membership: Membership,
    tokens: BTreeMap<String, TokenRecord>,
    /// Tasks launched directly (not by a deployment or a framework), with the last status
    /// their agents reported (Staging until then).
    tasks: BTreeMap<String, TaskStatus>,
    /// The built-in deployment controller.
    deployments: DeploymentBook,
    /// Registered frameworks, their offers and tasks.
    fw: frameworks::Frameworks,
    /// Who gets which free resources.
    allocator: Allocator,
    /// Share settings per role, from the configuration.
    roles: BTreeMap<String, RoleConfig>,
    /// An allocation round is due soon.
    round_scheduled: bool,
    /// Numbers the status updates sent to frameworks.
    update_uuid: u64,
    /// Each agent's reservations per role, as it last registered them (soft state).
    reservations: BTreeMap<String, BTreeMap<String, Resources>>,
    /// When this master process started.
    started: Instant,
    /// Whether agents were known at start: then nothing is launched before they had the
    /// restart grace to report what they run.
    had_agents: bool,
    /// When expired join tokens and revocations are next forgotten.
    next_prune: Instant,
    trust_domain: String,
    /// The CAs, and where a rotation stands.
    trust: crate::rotation::TrustView,
    /// What each agent last reported it trusts (soft state: heartbeats report it again).
    agent_trust: BTreeMap<String, crate::rotation::AgentTrust>,
    agent_cert_ttl: Duration,
    /// Services and their endpoints, versioned.
    registry: crate::services::ServiceRegistry,
    /// The subscribed proxies and the pushes to them.
    pushes: crate::services::PushBook,
    /// Kills of endpoints waiting for the proxies to apply their removal.
    drains: crate::services::DrainBook,
    /// Deregistrations answered once the registry version without them is drained.
    deregistered: Vec<u64>,
    /// The applied Routes and DestinationPolicies.
    traffic: crate::services::TrafficBook,
    /// Revoked client identities → refused until (ms since the epoch).
    revoked_clients: BTreeMap<String, u64>,
    /// API tokens and the audit log.
    access: crate::access::Access,
    /// Who may register frameworks under which roles.
    framework_grants: Vec<crate::access::FrameworkGrant>,
    /// Which nodes may register endpoints of which services (empty: all).
    service_grants: Vec<crate::access::ServiceGrant>,
    /// Actors nodes registered as endpoints themselves (soft state: lost with the master,
    /// registered again by the nodes).
    node_services: crate::services::NodeServices,
    /// No registry version at or above this may be used before it is written again.
    version_ceiling: u64,
    /// How long a kill of an endpoint waits at most.
    drain_time: Duration,
    /// The latest time an event was handled at (for events that are not given one).
    clock: Instant,
    /// The wall clock at the last tick, in ms since the epoch (revocations end by it).
    wall_ms: u64,
    /// Something the registry is derived from may have changed since the last `settle`:
    /// set by every event but a quiet one (a heartbeat that changed no agent's state), so
    /// `settle` recomputes the services only then.
    registry_dirty: bool,
    /// The event being handled declared that it changed nothing the registry reads.
    quiet: bool,
    /// How many times `settle` recomputed the services.
    recomputed: u64,
    /// Effects of the event being handled.
    out: Vec<Effect>,
}

impl std::fmt::Debug for ClusterCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCore")
            .field("agents", &self.membership.all().count())
            .field("fw", &self.fw)
            .finish_non_exhaustive()
    }
}

impl ClusterCore {
    /// A core over stored state, started at `now`.
    pub fn new(setup: Setup, now: Instant) -> Result<Self, LoadError> {
        let had_agents = setup.agents.iter().any(|a| a.state != AgentState::Gone);
        // The version continues above every one an earlier master used; pushes wait, as
        // launches do, until known agents had the restart grace to register again.
        let floor = setup.registry_ceiling;
        let held = had_agents.then(|| now + setup.detector.unreachable_after * 2);
        let mut allocator = Allocator::default();
        for (role, c) in &setup.roles {
            allocator.set_role(role, c.clone());
        }
        let mut core = Self {
            deployments: load_deployments(&setup.config_rows, setup.epoch)?,
            fw: frameworks::Frameworks::load(
                &setup.config_rows,
                setup.offer_timeout,
                setup.epoch,
                now,
            )?,
            membership: Membership::new(setup.detector, setup.agents, now),
            tokens: setup.tokens,
            tasks: BTreeMap::new(),
            allocator,
            roles: setup.roles,
            round_scheduled: false,
            update_uuid: setup.first_update_uuid,
            reservations: BTreeMap::new(),
            started: now,
            had_agents,
            next_prune: now,
            trust_domain: setup.trust_domain.clone(),
            trust: setup.trust,
            agent_trust: BTreeMap::new(),
            agent_cert_ttl: setup.agent_cert_ttl,
            registry: crate::services::ServiceRegistry::new(
                floor,
                crate::services::DEFAULT_LOG_LEN,
            )
            .with_mesh(setup.mesh),
            pushes: crate::services::PushBook::new(setup.push, held),
            drains: crate::services::DrainBook::default(),
            deregistered: Vec::new(),
            service_grants: Vec::new(),
            framework_grants: if setup.framework_grants.is_empty() {
                crate::access::default_framework_grants(&setup.trust_domain)
            } else {
                setup.framework_grants.clone()
            },
            access: crate::access::Access::load(
                setup
                    .config_rows
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.value.as_slice())),
            )
            .map_err(LoadError::Revocation)?,
            revoked_clients: clients::load_revocations(
                setup
                    .config_rows
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.value.as_slice())),
            )
            .map_err(LoadError::Revocation)?,
            traffic: crate::services::TrafficBook::load(
                setup
                    .config_rows
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.value.as_slice())),
            )?,
            node_services: BTreeMap::new(),
            version_ceiling: floor,
            drain_time: setup.drain_time,
            clock: now,
            wall_ms: 0,
            registry_dirty: true,
            quiet: false,
            recomputed: 0,
            out: Vec::new(),
        };
        // The deployments' services are known at once (their endpoints come as agents
        // register); the ceiling is written at the first step, before any push.
        let (desired, revoked) = core.registry_now();
        let _ = core.registry.update(desired, revoked, now);
        Ok(core)
    }

    /// Runs `event` and collects the effects it produced.
    fn step<T>(&mut self, event: impl FnOnce(&mut Self) -> T) -> Step<T> {
        self.quiet = false;
        let reply = event(self);
        // Unless the event said it changed nothing the registry reads, it may have.
        if !std::mem::take(&mut self.quiet) {
            self.registry_dirty = true;
        }
        Step {
            effects: std::mem::take(&mut self.out),
            reply,
        }
    }

    /// The master's tick: failure detection, pruning, and the round for what time changes
    /// (offer timeouts, filters, restart backoff).
    pub fn tick(&mut self, now: Instant, wall: SystemTime) -> Vec<Effect> {
        self.step(|core| {
            core.check(now, wall);
            core.services_tick(wall);
            core.allocation_round(now);
        })
        .effects
    }

    /// The round asked for with [`Effect::ScheduleRound`].
    pub fn scheduled_round(&mut self, now: Instant) -> Vec<Effect> {
        self.step(|core| {
            core.round_scheduled = false;
            core.allocation_round(now);
        })
        .effects
    }

    /// The failure detector's settings.
    pub fn detector(&self) -> &DetectorConfig {
        self.membership.config()
    }

    /// Every agent.
    pub fn agents(&self) -> impl Iterator<Item = &AgentRecord> {
        self.membership.all()
    }

    /// Every agent's record for `get nodes` and `describe node`, its `running` the tasks
    /// the master knows to be there now (deployment and framework instances and direct
    /// tasks not ended, and killed ones still in their kill grace), sorted; not what the
    /// agent reported when it last registered, which is soon out of date.
    pub fn agent_views(&self) -> Vec<AgentRecord> {
        let mut on: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        // Where tasks run, not where they serve: no endpoints needed.
        let entries = self.task_entries();
        for t in &entries {
            if !t.state.is_terminal() || t.stopping {
                on.entry(t.agent.as_str()).or_default().push(t.id.clone());
            }
        }
        for (id, s) in &self.tasks {
            if !s.state.is_terminal() {
                on.entry(s.agent_id.as_str()).or_default().push(id.clone());
            }
        }
        self.membership
            .all()
            .map(|a| {
                let mut running = on.remove(a.id.as_str()).unwrap_or_default();
                running.sort();
                running.dedup();
                AgentRecord {
                    running,
                    ..a.clone()
                }
            })
            .collect()
    }

    /// The deployment controller's book.
    pub fn deployments(&self) -> &DeploymentBook {
        &self.deployments
    }

    /// The last reported status of each task launched directly.
    pub fn direct_tasks(&self) -> impl Iterator<Item = &TaskStatus> {
        self.tasks.values()
    }

    /// The last reported status of task `id`, if it was launched directly.
    pub fn direct_task(&self, id: &str) -> Option<&TaskStatus> {
        self.tasks.get(id)
    }

    /// Every task of a deployment or a framework (owner `framework/<id>`), for `get tasks`.
    pub fn all_tasks(&self) -> Vec<deployments::TaskEntry> {
        let mut all = self.task_entries();
        for t in &mut all {
            t.endpoint = self.task_endpoint(&t.id, &t.agent);
        }
        all
    }

    /// Deployment and framework tasks, without their endpoints.
    fn task_entries(&self) -> Vec<deployments::TaskEntry> {
        let mut all: Vec<deployments::TaskEntry> = self.deployments.tasks().cloned().collect();
        all.extend(self.fw.task_entries());
        all
    }

    /// Where actor task `id` on `agent` serves: the agent's node and address, and the
    /// instance's actor name, which is the task id (a deployment's instances are named by
    /// their task ids, a framework's by `instance_name`, which is the agent's task id).
    /// `None` for a command task, a task of unknown kind, or an agent with no address.
    pub fn task_endpoint(&self, id: &str, agent: &str) -> Option<deployments::TaskEndpoint> {
        let actor = self
            .deployments
            .is_actor_task(id)
            .or_else(|| self.fw.is_actor_task(id))?;
        if !actor {
            return None;
        }
        let rec = self.membership.get(agent)?;
        Some(deployments::TaskEndpoint {
            node: rec.identity.clone(),
            addr: rec.addr?,
            actor: id.to_string(),
        })
    }

    /// The agent of task `id`: from the deployments, else the frameworks, else the reports.
    pub fn agent_of_task(&self, id: &str) -> Option<String> {
        self.deployments
            .task(id)
            .map(|t| t.agent.clone())
            .or_else(|| self.fw.task_agent(id))
            .or_else(|| self.tasks.get(id).map(|s| s.agent_id.clone()))
    }

    /// The mesh address of an Active agent's `$agent` actor.
    pub fn agent_addr(&self, agent: &str) -> Result<SocketAddr, AgentUnavailable> {
        let rec = self
            .membership
            .get(agent)
            .ok_or_else(|| AgentUnavailable::Unknown(agent.to_string()))?;
        if rec.state != AgentState::Active {
            return Err(AgentUnavailable::NotActive(agent.to_string(), rec.state));
        }
        rec.addr
            .ok_or_else(|| AgentUnavailable::NoAddress(agent.to_string()))
    }

    /// Queues `changes` as one batch that no reply waits for (a failed write makes the
    /// master step down).
    fn persist(&mut self, changes: Vec<Change>) {
        self.out.push(Effect::Persist(Batch {
            changes: Ok(changes),
            acknowledges: false,
        }));
    }

    /// Queues `changes` as the batch this step's reply acknowledges.
    fn persist_acknowledged(&mut self, changes: Vec<Change>) {
        self.out.push(Effect::Persist(Batch {
            changes: Ok(changes),
            acknowledges: true,
        }));
    }

    /// Queues agent `id`'s record, with `extra` changes in the same atomic batch.
    fn persist_agent(&mut self, id: &str, extra: Vec<Change>, acknowledges: bool) {
        let Some(rec) = self.membership.get(id) else {
            return;
        };
        let changes = agent_batch(rec, extra);
        self.out.push(Effect::Persist(Batch {
            changes,
            acknowledges,
        }));
    }

    fn publish(&mut self, event: MembershipEvent) {
        info!(agent = %event.agent, from = ?event.from, to = %event.to, "membership change");
        self.out.push(Effect::Publish(event));
    }

    /// Runs an allocation round soon (once for a burst of events).
    fn schedule_round(&mut self) {
        if !self.round_scheduled {
            self.round_scheduled = true;
            self.out.push(Effect::ScheduleRound);
        }
    }

    fn identity_of(&self, id: &str) -> String {
        format!("spiffe://{}/node/{id}", self.trust_domain)
    }
}

/// Agent `rec`'s record as a change, after `extra`.
fn agent_batch(rec: &AgentRecord, mut extra: Vec<Change>) -> Result<Vec<Change>, StoreError> {
    let value = codec::encode(rec).map_err(|e| StoreError::Io {
        operation: "encode",
        reason: format!("agent {}: {e}", rec.id),
    })?;
    extra.push(Change::put(Table::Agents, rec.id.clone(), value));
    Ok(extra)
}

/// The deployments kept in the Config table.
fn load_deployments(
    config_rows: &[(String, Versioned)],
    epoch: u32,
) -> Result<DeploymentBook, LoadError> {
    let mut book = DeploymentBook::new(epoch);
    for (k, v) in config_rows {
        if let Some(name) = k.strip_prefix(DEPLOYMENT_PREFIX) {
            let invalid = |reason: String| LoadError::Deployment {
                name: name.to_string(),
                reason,
            };
            let text = String::from_utf8(v.value.clone()).map_err(|e| invalid(e.to_string()))?;
            let d = crate::manifest::parse(std::path::Path::new(&format!("{name}.json")), &text)
                .map_err(|e| invalid(e.to_string()))?;
            book.apply(d);
        }
    }
    Ok(book)
}
