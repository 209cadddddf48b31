//! The framework API: the Mesos scheduler model as actor messages.
//!
//! A framework is an actor of yours. It registers with the master under a role, and the
//! master sends it [`FrameworkEvent`]s: `Registered`, `ResourceOffers`, `OfferRescinded`,
//! `StatusUpdate` and `Error`. It answers offers by accepting them with task launches or
//! declining them with a filter, kills tasks, acknowledges status updates (which the
//! master redelivers until acknowledged) and asks for reconciliation. [`Scheduler`] wraps
//! these calls.
//!
//! With several masters (`actormesh master --zk`), [`Scheduler::follow`] is the driver:
//! it finds the leader through the masters' bootstrap ports, learns and keeps the set of
//! masters (and the framework id) in a file, fails over to a new leader by registering
//! again with its id, and passes on to your actor only the events of the master it
//! follows, of no older term than one it obeyed (an old leader, paused and resumed, is
//! not heard).
//!
//! ```no_run
//! # use actormesh::framework::*;
//! # async fn demo(node: actormesh::Node, master_addr: std::net::SocketAddr) -> Result<(), FrameworkError> {
//! // `my-framework` is an actor on `node` that handles `FrameworkEvent`.
//! let me = node.local_ref("my-framework");
//! let (scheduler, _registered) =
//!     Scheduler::register(&node, master_addr, &me, "batch", "analytics", std::time::Duration::from_secs(60), None).await?;
//! // Later, on `FrameworkEvent::ResourceOffers(offers)`:
//! # let offers: Vec<Offer> = vec![];
//! for o in offers {
//!     let launch = TaskLaunch::actor("job-1", "echo", o.resources.clone());
//!     scheduler.accept(&o.offer_id, vec![launch]).await?;
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::masters::FollowedMaster;
use crate::protocol::MASTER_ACTOR;
pub use crate::protocol::{LogStream, TaskLog};
use crate::resources::Resources;
use crate::task::TaskStatus;
use crate::{Node, RemoteMessage, RemoteRef};

/// Why the master refused a framework's call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FrameworkError {
    /// The framework is not registered (never, or it failed over): register again.
    #[error("{0}")]
    NotRegistered(String),
    /// The offer is unknown, expired, rescinded, or not this framework's.
    #[error("{0}")]
    UnknownOffer(String),
    /// The request is malformed (task id, resources beyond the offer, duplicate id...).
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The master could not do it now; try again.
    #[error("{0}")]
    Unavailable(String),
}

/// Registers (or, with `framework_id`, re-registers after a failover) a framework whose
/// actor `actor_name` on the node at `actor_addr` receives [`FrameworkEvent`]s.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.framework.Register/v1", reply = Result<Registration, FrameworkError>)]
pub struct RegisterFramework {
    /// A name for people.
    pub name: String,
    /// The role its resources are accounted to (weights and quotas are per role).
    pub role: String,
    /// How long the master keeps its tasks while it is disconnected, in milliseconds.
    pub failover_timeout_ms: u64,
    /// Set when re-registering after a failover.
    pub framework_id: Option<String>,
    /// The node of the actor that receives events.
    pub actor_addr: SocketAddr,
    /// The name of that actor.
    pub actor_name: String,
}

/// A registration accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The framework id (keep it to re-register after a failover).
    pub framework_id: String,
    /// Whether it re-registered an existing framework (its tasks kept).
    pub reregistered: bool,
}

/// What a task runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskKind {
    /// An instance of an actor type the agent hosts; it is named after the task.
    Actor {
        /// The actor type.
        actor_type: String,
    },
    /// An OS process (the command executor).
    Command {
        /// Program path.
        path: String,
        /// Arguments.
        args: Vec<String>,
        /// Environment.
        env: BTreeMap<String, String>,
        /// Between SIGTERM and SIGKILL on kill, in milliseconds.
        kill_grace_ms: u64,
    },
}

/// A task to start with an accepted offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLaunch {
    /// The framework's id for the task (letters, digits, '.', '-', '_'); unique within the
    /// framework.
    pub task_id: String,
    /// What it runs.
    pub kind: TaskKind,
    /// What it holds (taken from the offer; command tasks are limited to it).
    pub resources: Resources,
}

impl TaskLaunch {
    /// An actor task.
    pub fn actor(task_id: &str, actor_type: &str, resources: Resources) -> Self {
        Self {
            task_id: task_id.to_string(),
            kind: TaskKind::Actor {
                actor_type: actor_type.to_string(),
            },
            resources,
        }
    }

    /// A command task.
    pub fn command(task_id: &str, path: &str, args: &[&str], resources: Resources) -> Self {
        Self {
            task_id: task_id.to_string(),
            kind: TaskKind::Command {
                path: path.to_string(),
                args: args.iter().map(|a| a.to_string()).collect(),
                env: BTreeMap::new(),
                kill_grace_ms: 10_000,
            },
            resources,
        }
    }
}

/// Accepts an offer: launches these tasks on its agent; what they do not use goes back.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.framework.Accept/v1", reply = Result<(), FrameworkError>)]
pub struct AcceptOffer {
    /// The framework.
    pub framework_id: String,
    /// The offer.
    pub offer_id: String,
    /// Tasks to launch (may be empty: the same as declining without a filter).
    pub launches: Vec<TaskLaunch>,
}

/// Declines an offer; its agent's resources are not offered to this framework's role again
/// for `refuse_for_ms`.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.framework.Decline/v1", reply = Result<(), FrameworkError>)]
pub struct DeclineOffer {
    /// The framework.
    pub framework_id: String,
    /// The offer.
    pub offer_id: String,
    /// How long not to offer this agent again, in milliseconds.
    pub refuse_for_ms: u64,
}

/// Kills one of the framework's tasks (its end comes as a status update).
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.framework.Kill/v1", reply = Result<(), FrameworkError>)]
pub struct KillTask {
    /// The framework.
    pub framework_id: String,
    /// The framework's task id.
    pub task_id: String,
}

/// Asks for the latest state of these tasks (all of the framework's if empty), as status
/// updates that need no acknowledgement (`uuid` 0).
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.framework.Reconcile/v1", reply = Result<(), FrameworkError>)]
pub struct ReconcileTasks {
    /// The framework.
    pub framework_id: String,
    /// Task ids; empty means all.
    pub task_ids: Vec<String>,
}

/// Acknowledges a status update (by its uuid); until then the master sends it again.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.framework.Acknowledge/v1", reply = Result<(), FrameworkError>)]
pub struct Acknowledge {
    /// The framework.
    pub framework_id: String,
    /// The task.
    pub task_id: String,
    /// The update's uuid.
    pub uuid: u64,
}

/// Stops (`false`) or resumes (`true`) offers to the framework. Resuming also clears its
/// decline filters (Mesos' revive).
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.framework.Offers/v1", reply = Result<(), FrameworkError>)]
pub struct SetOffers {
    /// The framework.
    pub framework_id: String,
    /// Whether it wants offers.
    pub wanted: bool,
}

/// Reads the end of a command task's captured stdout or stderr from its agent (the
/// sandbox's files; Mesos frameworks read them through the agent's `/files`). The task
/// may have ended: its sandbox stays until the agent cleans it up.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.framework.ReadOutput/v1", reply = Result<TaskLog, FrameworkError>)]
pub struct ReadTaskOutput {
    /// The framework.
    pub framework_id: String,
    /// The framework's task id.
    pub task_id: String,
    /// stdout or stderr.
    pub stream: LogStream,
    /// At most this many bytes from the end.
    pub max_bytes: u64,
}

/// Ends the framework: its tasks are killed and its id forgotten.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.framework.Teardown/v1", reply = Result<(), FrameworkError>)]
pub struct Teardown {
    /// The framework.
    pub framework_id: String,
}

/// Free resources of one agent, offered to a framework.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// The offer id.
    pub offer_id: String,
    /// The agent.
    pub agent_id: String,
    /// The agent's mesh address: where its actor tasks' instances answer
    /// ([`instance_name`]).
    pub agent_addr: SocketAddr,
    /// What is offered.
    pub resources: Resources,
    /// The agent's attributes.
    pub attrs: BTreeMap<String, String>,
    /// Actor types the agent hosts.
    pub actor_types: Vec<String>,
}

/// What the master tells a framework's actor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.framework.Event/v1", reply = ())]
pub enum FrameworkEvent {
    /// Registered (or re-registered) with this id.
    Registered(Registration),
    /// Offers; each stands until used, declined, rescinded or timed out.
    ResourceOffers(Vec<Offer>),
    /// An offer is withdrawn (timed out, or its agent was lost); do not use it.
    OfferRescinded {
        /// The offer.
        offer_id: String,
    },
    /// A task changed state. Acknowledge it with [`Acknowledge`] unless `uuid` is 0.
    StatusUpdate(TaskStatus),
    /// Something went wrong that ends the framework (e.g. it failed over).
    Error {
        /// What.
        message: String,
    },
}

/// The name an actor task's instance gets on its agent's node (reach it with
/// `node.actor_ref(agent_addr, &instance_name(..))`).
pub fn instance_name(framework_id: &str, task_id: &str) -> String {
    format!("{framework_id}_{task_id}")
}

/// A framework's calls to the master, with its id.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// The master called: fixed, or the leader the driver follows.
    master: Arc<RwLock<RemoteRef>>,
    framework_id: String,
    /// The driver's task, when it follows the leader; stopped with the last clone.
    _driver: Option<Arc<Driver>>,
}

/// The driver's task and relay, stopped when dropped.
#[derive(Debug)]
struct Driver {
    task: tokio::task::AbortHandle,
    node: Node,
    relay: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.task.abort();
        self.node.stop(&self.relay);
    }
}

/// A framework that follows the leading master among several ([`Scheduler::follow`]).
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// A name for people.
    pub name: String,
    /// The role its resources are accounted to.
    pub role: String,
    /// How long the masters keep its tasks while it is disconnected.
    pub failover_timeout: Duration,
    /// Bootstrap addresses of masters (one is enough: the others are learned).
    pub masters: Vec<SocketAddr>,
    /// A file (JSON, mode 0600) keeping the framework id and every master learned, so a
    /// restarted framework fails over with its id and finds the leader even when the
    /// masters it was given are gone. `None`: kept in memory only.
    pub state_file: Option<PathBuf>,
    /// How often the driver asks the masters which leads.
    pub check_every: Duration,
}

impl FollowConfig {
    /// A framework `name` of `role`, finding the masters through `masters`; a failover
    /// timeout of one minute, in-memory state, a look every second.
    pub fn new(name: &str, role: &str, masters: Vec<SocketAddr>) -> Self {
        Self {
            name: name.into(),
            role: role.into(),
            failover_timeout: Duration::from_secs(60),
            masters,
            state_file: None,
            check_every: Duration::from_secs(1),
        }
    }
}

/// What [`FollowConfig::state_file`] keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Kept {
    framework_id: Option<String>,
    masters: Vec<SocketAddr>,
}

impl Kept {
    fn load(file: &std::path::Path) -> Result<Self, FrameworkError> {
        match std::fs::read_to_string(file) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                FrameworkError::Invalid(format!(
                    "{} is not a framework state file (JSON with framework_id and masters): {e}",
                    file.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(FrameworkError::Invalid(format!(
                "cannot read {}: {e}",
                file.display()
            ))),
        }
    }

    fn save(&self, file: &std::path::Path) -> Result<(), String> {
        let text = serde_json::to_string(self).map_err(|e| e.to_string())?;
        let tmp = file.with_extension("new");
        crate::agent::write_private(&tmp, &text)
            .and_then(|_| std::fs::rename(&tmp, file))
            .map_err(|e| format!("cannot write {}: {e}", file.display()))
    }
}

/// Passes the events of the master followed on to the framework's actor.
struct Relay {
    followed: FollowedMaster,
    to: RemoteRef,
}

impl Actor for Relay {
    type Context = Context<Self>;
}

#[crate::handler]
impl Handler<FrameworkEvent> for Relay {
    type Result = ();
    fn handle(&mut self, e: FrameworkEvent, ctx: &mut Context<Self>) {
        let Some(caller) = crate::caller() else {
            warn!("a framework event came from no verified caller; dropped");
            return;
        };
        let term = match crate::masters::order_term() {
            Ok(t) => t,
            Err(why) => {
                warn!(%caller, %why, "a framework event dropped");
                return;
            }
        };
        match self.followed.check_order(&caller, term) {
            Ok(()) => {
                // One event at a time, in order: the relay waits while the framework's
                // mailbox is full (the master's events then wait in the relay's).
                let to = self.to.clone();
                ctx.wait(
                    async move {
                        if let Err(e) = to.tell(e).await {
                            warn!(error = %e, to = to.name(), "the framework's actor did not take an event");
                        }
                    }
                    .into_actor(self),
                );
            }
            Err(why) => warn!(%why, "a framework event not passed on"),
        }
    }
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn unreachable(e: crate::AskError) -> FrameworkError {
    FrameworkError::Unavailable(format!("the master did not answer: {e}"))
}

impl Scheduler {
    /// Registers `actor` (on `node`) as framework `name` with `role` at the master whose
    /// mesh node is at `master_addr`. Pass the id of an earlier registration to fail over.
    pub async fn register(
        node: &Node,
        master_addr: SocketAddr,
        actor: &RemoteRef,
        name: &str,
        role: &str,
        failover_timeout: Duration,
        framework_id: Option<String>,
    ) -> Result<(Self, Registration), FrameworkError> {
        let master = node.actor_ref(master_addr, MASTER_ACTOR);
        let reg = master
            .ask_timeout(
                RegisterFramework {
                    name: name.to_string(),
                    role: role.to_string(),
                    failover_timeout_ms: failover_timeout.as_millis() as u64,
                    framework_id,
                    actor_addr: node.local_addr(),
                    actor_name: actor.name().to_string(),
                },
                CALL_TIMEOUT,
            )
            .await
            .map_err(unreachable)??;
        Ok((
            Self {
                master: Arc::new(RwLock::new(master)),
                framework_id: reg.framework_id.clone(),
                _driver: None,
            },
            reg,
        ))
    }

    /// Registers `actor` (on `node`) with the leading master among several, and keeps it
    /// registered with whichever leads: when another master leads, the driver registers
    /// again there with the framework id (a failover: its tasks are kept). Its events
    /// reach `actor` through a relay actor on `node` that passes on only those of the
    /// master followed, of no older term than one already passed on. A framework id kept
    /// in the state file is registered again (the framework process failed over).
    pub async fn follow(
        node: &Node,
        actor: &RemoteRef,
        config: FollowConfig,
    ) -> Result<(Self, Registration), FrameworkError> {
        let mut kept = match &config.state_file {
            Some(f) => Kept::load(f)?,
            None => Kept::default(),
        };
        crate::masters::learn(&mut kept.masters, &config.masters);
        if kept.masters.is_empty() {
            return Err(FrameworkError::Invalid(
                "no master to follow: give at least one master's bootstrap address".into(),
            ));
        }
        let trust = node.endpoint().trust();
        let found = crate::masters::locate(&kept.masters, &trust, CALL_TIMEOUT)
            .await
            .ok_or_else(|| {
                FrameworkError::Unavailable(format!(
                    "no master at {:?} says which leads",
                    kept.masters
                ))
            })?;
        crate::masters::learn(&mut kept.masters, &found.bootstraps);
        let followed = FollowedMaster::new(found.leader, None);
        let relay_name = format!("{}.relay", actor.name());
        let relay = node
            .spawn(
                &relay_name,
                Relay {
                    followed: followed.clone(),
                    to: actor.clone(),
                },
            )
            .map_err(|e| {
                FrameworkError::Invalid(format!("cannot start the relay actor {relay_name}: {e}"))
            })?;
        let request = |framework_id: Option<String>| RegisterFramework {
            name: config.name.clone(),
            role: config.role.clone(),
            failover_timeout_ms: config.failover_timeout.as_millis() as u64,
            framework_id,
            actor_addr: node.local_addr(),
            actor_name: relay.name().to_string(),
        };
        let (master, reg) = register_at(
            node,
            &followed,
            found.leader,
            request(kept.framework_id.clone()),
        )
        .await?;
        kept.framework_id = Some(reg.framework_id.clone());
        if let Some(f) = &config.state_file {
            kept.save(f).map_err(FrameworkError::Invalid)?;
        }
        let master = Arc::new(RwLock::new(master));
        let again = request(Some(reg.framework_id.clone()));
        let task = tokio::spawn(drive(
            node.clone(),
            followed,
            master.clone(),
            again,
            kept,
            config,
        ));
        Ok((
            Self {
                master,
                framework_id: reg.framework_id.clone(),
                _driver: Some(Arc::new(Driver {
                    task: task.abort_handle(),
                    node: node.clone(),
                    relay: relay.name().to_string(),
                })),
            },
            reg,
        ))
    }

    /// The master called now.
    fn master(&self) -> RemoteRef {
        self.master
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The mesh address of the master this framework is registered with now.
    pub fn master_addr(&self) -> SocketAddr {
        self.master().addr()
    }

    /// The framework id.
    pub fn id(&self) -> &str {
        &self.framework_id
    }

    /// Accepts `offer_id` with these launches.
    pub async fn accept(
        &self,
        offer_id: &str,
        launches: Vec<TaskLaunch>,
    ) -> Result<(), FrameworkError> {
        self.master()
            .ask_timeout(
                AcceptOffer {
                    framework_id: self.framework_id.clone(),
                    offer_id: offer_id.to_string(),
                    launches,
                },
                CALL_TIMEOUT,
            )
            .await
            .map_err(unreachable)?
    }

    /// Declines `offer_id`, refusing its agent for `refuse_for`.
    pub async fn decline(
        &self,
        offer_id: &str,
        refuse_for: Duration,
    ) -> Result<(), FrameworkError> {
        self.master()
            .ask_timeout(
                DeclineOffer {
                    framework_id: self.framework_id.clone(),
                    offer_id: offer_id.to_string(),
                    refuse_for_ms: refuse_for.as_millis() as u64,
                },
                CALL_TIMEOUT,
            )
            .await
            .map_err(unreachable)?
    }

    /// Kills task `task_id`.
    pub async fn kill(&self, task_id: &str) -> Result<(), FrameworkError> {
        self.master()
            .ask_timeout(
                KillTask {
                    framework_id: self.framework_id.clone(),
                    task_id: task_id.to_string(),
                },
                CALL_TIMEOUT,
            )
            .await
            .map_err(unreachable)?
    }

    /// Asks for the state of `task_ids` (all if empty).
    pub async fn reconcile(&self, task_ids: Vec<String>) -> Result<(), FrameworkError> {
        self.master()
            .ask_timeout(
                ReconcileTasks {
                    framework_id: self.framework_id.clone(),
                    task_ids,
                },
                CALL_TIMEOUT,
            )
            .await
            .map_err(unreachable)?
    }

    /// Acknowledges a status update.
    pub async fn acknowledge(&self, status: &TaskStatus) -> Result<(), FrameworkError> {
        self.master()
            .ask_timeout(
                Acknowledge {
                    framework_id: self.framework_id.clone(),
                    task_id: status.task_id.clone(),
                    uuid: status.uuid,
                },
                CALL_TIMEOUT,
            )
            .await
            .map_err(unreachable)?
    }

    /// Stops or resumes offers.
    pub async fn set_offers(&self, wanted: bool) -> Result<(), FrameworkError> {
        self.master()
            .ask_timeout(
                SetOffers {
                    framework_id: self.framework_id.clone(),
                    wanted,
                },
                CALL_TIMEOUT,
            )
            .await
            .map_err(unreachable)?
    }

    /// The end (at most `max_bytes`) of command task `task_id`'s stdout or stderr.
    pub async fn task_output(
        &self,
        task_id: &str,
        stream: LogStream,
        max_bytes: u64,
    ) -> Result<TaskLog, FrameworkError> {
        self.master()
            .ask_timeout(
                ReadTaskOutput {
                    framework_id: self.framework_id.clone(),
                    task_id: task_id.to_string(),
                    stream,
                    max_bytes,
                },
                CALL_TIMEOUT,
            )
            .await
            .map_err(unreachable)?
    }

    /// Ends the framework and kills its tasks.
    pub async fn teardown(&self) -> Result<(), FrameworkError> {
        self.master()
            .ask_timeout(
                Teardown {
                    framework_id: self.framework_id.clone(),
                },
                CALL_TIMEOUT,
            )
            .await
            .map_err(unreachable)?
    }
}

/// Registers with the master at `addr`, following it once its link proved a master's
/// identity. Returns its `$master`, pinned to that identity.
async fn register_at(
    node: &Node,
    followed: &FollowedMaster,
    addr: SocketAddr,
    request: RegisterFramework,
) -> Result<(RemoteRef, Registration), FrameworkError> {
    let link = tokio::time::timeout(CALL_TIMEOUT, node.endpoint().link(addr))
        .await
        .map_err(|_| {
            FrameworkError::Unavailable(format!("linking to the master at {addr} timed out"))
        })?
        .map_err(|e| {
            FrameworkError::Unavailable(format!("cannot link to the master at {addr}: {e}"))
        })?;
    let identity = link.peer().clone();
    if !identity.is_master() {
        return Err(FrameworkError::Forbidden(format!(
            "{addr} answers as {identity}, not as a master"
        )));
    }
    let master = node.actor_ref(addr, MASTER_ACTOR).pinned(identity.clone());
    // Followed first: the master sends `Registered` as it answers.
    let before = followed.get();
    followed.follow(addr, identity);
    match master.ask_timeout(request, CALL_TIMEOUT).await {
        Ok(Ok(reg)) => Ok((master, reg)),
        failed => {
            if let Some(id) = before.identity {
                followed.follow(before.addr, id);
            }
            Err(match failed {
                Ok(Err(e)) => e,
                Err(e) => unreachable(e),
                Ok(Ok(_)) => unreachable!(),
            })
        }
    }
}

/// The driver: every `check_every`, asks the masters which leads; when another does, or
/// the leader itself tells of a newer term than the events passed on (a leadership begun
/// since, of the same master too), registers again there with the framework id.
async fn drive(
    node: Node,
    followed: FollowedMaster,
    master: Arc<RwLock<RemoteRef>>,
    again: RegisterFramework,
    mut kept: Kept,
    config: FollowConfig,
) {
    loop {
        tokio::time::sleep(config.check_every).await;
        let trust = node.endpoint().trust();
        let limit = config.check_every.max(Duration::from_millis(500));
        let Some(found) = crate::masters::locate(&kept.masters, &trust, limit).await else {
            continue;
        };
        let learned = crate::masters::learn(&mut kept.masters, &found.bootstraps);
        let newer = found.term.is_some_and(|t| t > followed.term());
        if found.leader != followed.addr() || newer {
            match register_at(&node, &followed, found.leader, again.clone()).await {
                Ok((m, reg)) => {
                    info!(master = %found.leader, framework = %reg.framework_id, reregistered = reg.reregistered, "the framework failed over to the leading master");
                    *master.write().unwrap_or_else(|p| p.into_inner()) = m;
                }
                Err(e) => {
                    warn!(master = %found.leader, error = %e, "cannot register with the leading master yet")
                }
            }
        }
        if learned {
            if let Some(f) = &config.state_file {
                if let Err(e) = kept.save(f) {
                    warn!(error = %e, "cannot keep the masters learned");
                }
            }
        }
    }
}
