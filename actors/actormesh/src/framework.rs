//! The framework API: the Mesos scheduler model as actor messages.
//!
//! A framework is an actor of yours. It registers with the master under a role, and the
//! master sends it [`FrameworkEvent`]s: `Registered`, `ResourceOffers`, `OfferRescinded`,
//! `StatusUpdate` and `Error`. It answers offers by accepting them with task launches or
//! declining them with a filter, kills tasks, acknowledges status updates (which the
//! master redelivers until acknowledged) and asks for reconciliation. [`Scheduler`] wraps
//! these calls.
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
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::MASTER_ACTOR;
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
    master: RemoteRef,
    framework_id: String,
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
                master,
                framework_id: reg.framework_id.clone(),
            },
            reg,
        ))
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
        self.master
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
        self.master
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
        self.master
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
        self.master
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
        self.master
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
        self.master
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

    /// Ends the framework and kills its tasks.
    pub async fn teardown(&self) -> Result<(), FrameworkError> {
        self.master
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
