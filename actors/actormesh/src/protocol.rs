//! What agents and the master say to each other.
//!
//! Joining happens on the master's bootstrap port (codec-encoded [`JoinRequest`] /
//! [`JoinReply`]); everything after that is actor messages over the mesh to the master's
//! gate actor [`MASTER_ACTOR`], whose handlers check [`crate::caller`] against the agent id.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::resources::Resources;
use crate::RemoteMessage;

/// The name of the master's actor that agents talk to.
pub const MASTER_ACTOR: &str = "$master";

/// What the bootstrap port is asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BootstrapRequest {
    /// Join the cluster (first start of an agent).
    Join(JoinRequest),
    /// Where does the master's mesh node listen now? (A restarted agent asks, since the
    /// master may have moved.)
    Locate,
    /// Sign a client certificate (`spiffe://<td>/client/<name>`) for a program that is not
    /// a node: no membership. New variants go at the end, so older masters and nodes keep
    /// reading the ones they know.
    IssueClient(ClientCertRequest),
    /// Which masters are there, and which leads? Agents and frameworks ask it to learn
    /// the set of masters, and keep it, so they find the leader by themselves when the
    /// master they first knew is gone.
    Masters,
}

/// The bootstrap port's answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BootstrapReply {
    /// The answer to a join.
    Join(JoinReply),
    /// The master's mesh address.
    Located {
        /// Where the master's mesh node listens.
        master_addr: SocketAddr,
    },
    /// The answer to a client certificate request.
    Client(ClientCertReply),
    /// The answer to [`BootstrapRequest::Masters`].
    Masters(MastersReply),
}

/// The masters of a cluster, as one of them (the leader or a standby) sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MastersReply {
    /// The leading master's mesh address; `None` while none leads (an election is under
    /// way).
    pub leader: Option<SocketAddr>,
    /// The leader's term, when the leader itself answers (a standby does not know it).
    pub term: Option<u64>,
    /// Every master's bootstrap address, the leader's first (a lone master: its own).
    pub bootstraps: Vec<SocketAddr>,
}

/// Sent to the bootstrap port by a program that wants a client certificate, with a token
/// of role `client`.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClientCertRequest {
    /// The token's id.
    pub token_id: String,
    /// The token's secret.
    pub token_secret: String,
    /// The client name: the certificate is for `spiffe://<td>/client/<name>`
    /// (see [`crate::client::check_client_name`]).
    pub name: String,
    /// A PEM signing request over the key the client made for itself.
    pub csr_pem: String,
}

impl std::fmt::Debug for ClientCertRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertRequest")
            .field("token_id", &self.token_id)
            .field("token_secret", &"<hidden>")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The master's answer to a [`ClientCertRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientCertReply {
    /// Signed: the identity, its certificate and where the master's mesh node listens.
    Issued {
        /// The SPIFFE id the certificate is for.
        identity: String,
        /// PEM certificate for the client's key.
        cert_pem: String,
        /// The master's mesh address.
        master_addr: SocketAddr,
    },
    /// Refused, and why.
    Refused {
        /// Why, in words for the operator.
        reason: String,
    },
}

/// Sent by a node without a certificate to the bootstrap port.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token's id.
    pub token_id: String,
    /// The token's secret.
    pub token_secret: String,
    /// The agent name asked for (empty: the master picks one).
    pub name: String,
    /// A PEM signing request over the key the agent made for itself.
    pub csr_pem: String,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token_id", &self.token_id)
            .field("token_secret", &"<hidden>")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The master's answer to a [`JoinRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JoinReply {
    /// Welcome: the agent's id, its certificate and where the master's mesh node listens.
    Accepted {
        /// The agent id.
        agent_id: String,
        /// PEM certificate for the agent's key.
        cert_pem: String,
        /// The master's mesh address.
        master_addr: SocketAddr,
    },
    /// Refused, and why.
    Refused {
        /// Why, in words for the operator.
        reason: String,
    },
}

/// An agent tells the master where it listens, what it offers and what it runs.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.master.Register/v1", reply = Result<Registered, MasterRefusal>)]
pub struct Register {
    /// The agent id.
    pub agent_id: String,
    /// The agent node's mesh address.
    pub addr: SocketAddr,
    /// What it offers.
    pub resources: Resources,
    /// Attributes (zone, rack, labels).
    pub attrs: BTreeMap<String, String>,
    /// Actor types its binary hosts.
    pub actor_types: Vec<String>,
    /// The ids of the tasks the master launched that run here now (soft state: a
    /// restarted master adopts them instead of starting them again).
    pub running: Vec<String>,
    /// Of those, the ones with a health check whose last check passed.
    pub healthy: Vec<String>,
    /// What each of those holds, as launched.
    pub held: BTreeMap<String, Resources>,
    /// The deployment version each of those was launched with, where it has one.
    pub versions: BTreeMap<String, String>,
    /// Resources set aside per role (offered to that role only).
    pub reserved: BTreeMap<String, Resources>,
    /// Expiry of its certificate.
    pub cert_expiry: SystemTime,
}

/// Why the master refused an agent's message. Only `Removed` and `NotRegistered` mean the
/// agent must stop; `Unavailable` is passing and the agent retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MasterRefusal {
    /// The agent was removed (Gone); its identity is revoked.
    #[error("{0}")]
    Removed(String),
    /// The master does not know this agent.
    #[error("{0}")]
    NotRegistered(String),
    /// The caller may not speak for this agent.
    #[error("{0}")]
    Forbidden(String),
    /// The master could not do it now (its actor or state store failed); try again.
    #[error("{0}")]
    Unavailable(String),
}

/// The master accepted a registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Registered {
    /// How often to heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
}

/// I am alive, and this is what I trust.
///
/// v2 adds the trust report a CA rotation follows; the master still takes
/// [`HeartbeatV1`] (an agent of the previous version, which cannot take a new bundle).
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.master.Heartbeat/v2", reply = Result<HeartbeatAck, MasterRefusal>)]
pub struct Heartbeat {
    /// The agent id.
    pub agent_id: String,
    /// The digest of the trust bundle the agent's node trusts
    /// (`actormesh_transport::trust::digest`).
    pub trust_digest: String,
    /// The fingerprint of the CA of that bundle that issued the agent's certificate.
    pub cert_ca: String,
}

/// The master's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Register again (with what runs): the master does not count this agent's resources
    /// now (it restarted, or the agent was unreachable for a while).
    pub reregister: bool,
    /// Trust this bundle (PEM) from now on: sent when the agent's differs (a CA rotation).
    pub trust_bundle: Option<String>,
    /// Renew the certificate now: the CA that signs has changed.
    pub renew_now: bool,
}

/// [`Heartbeat`] as an agent of the previous version sends it.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.master.Heartbeat/v1", reply = Result<HeartbeatAckV1, MasterRefusal>)]
pub struct HeartbeatV1 {
    /// The agent id.
    pub agent_id: String,
}

/// The answer to a [`HeartbeatV1`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAckV1 {
    /// Register again.
    pub reregister: bool,
}

/// Please sign a new certificate over this key (renewal at half-life).
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.master.Renew/v1", reply = Result<String, MasterRefusal>)]
pub struct Renew {
    /// The agent id.
    pub agent_id: String,
    /// PEM signing request over a new key.
    pub csr_pem: String,
}

/// The master asks an agent to start an instance of an actor type it hosts.
///
/// v2 adds `workload`; the agent still takes [`LaunchActorV1`] (a master of the previous
/// version), whose instances run without one.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.agent.LaunchActor/v2", reply = Result<(), String>)]
pub struct LaunchActor {
    /// The task id (the master's).
    pub task_id: String,
    /// The actor type, as the agent's host registered it.
    pub actor_type: String,
    /// The name the instance gets on the agent's node.
    pub name: String,
    /// Its health check, if any.
    pub health: Option<HealthSpec>,
    /// How the agent restarts the instance in place after a panic (or a stop, for
    /// `always`); `None`: on failure with the default backoff.
    pub restart: Option<RestartSpec>,
    /// What the task holds (reported when the agent registers again).
    pub resources: Resources,
    /// The version label of its deployment (reported when the agent registers again).
    pub version: String,
    /// The service (`namespace/name`) the instance serves, as its workload: its calls
    /// assert it (`SpawnOptions::workload`), and callees believe it because the registry
    /// lists this agent's node among the service's hosts.
    pub workload: Option<String>,
}

/// [`LaunchActor`] as a master of the previous version sends it: no workload.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.agent.LaunchActor/v1", reply = Result<(), String>)]
pub struct LaunchActorV1 {
    /// The task id.
    pub task_id: String,
    /// The actor type.
    pub actor_type: String,
    /// The instance's name.
    pub name: String,
    /// Its health check.
    pub health: Option<HealthSpec>,
    /// Its restart policy.
    pub restart: Option<RestartSpec>,
    /// What the task holds.
    pub resources: Resources,
    /// Its deployment's version label.
    pub version: String,
}

impl From<LaunchActorV1> for LaunchActor {
    fn from(m: LaunchActorV1) -> Self {
        LaunchActor {
            task_id: m.task_id,
            actor_type: m.actor_type,
            name: m.name,
            health: m.health,
            restart: m.restart,
            resources: m.resources,
            version: m.version,
            workload: None,
        }
    }
}

/// A restart policy for an actor task's supervision on its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartSpec {
    /// `never`, `on-failure` or `always`.
    pub policy: String,
    /// First delay, in milliseconds.
    pub backoff_initial_ms: u64,
    /// Longest delay, in milliseconds.
    pub backoff_max_ms: u64,
}

impl RestartSpec {
    /// The runtime's policy: restarts in place, at most 10 a minute, then the task fails
    /// and its framework decides.
    pub fn policy(&self) -> crate::RestartPolicy {
        let backoff = crate::Backoff {
            initial: std::time::Duration::from_millis(self.backoff_initial_ms),
            max: std::time::Duration::from_millis(self.backoff_max_ms),
        };
        let (max_restarts, within) = (10, std::time::Duration::from_secs(60));
        match self.policy.as_str() {
            "never" => crate::RestartPolicy::Never,
            "always" => crate::RestartPolicy::Always {
                max_restarts,
                within,
                backoff,
            },
            _ => crate::RestartPolicy::OnFailure {
                max_restarts,
                within,
                backoff,
            },
        }
    }
}

/// The master asks an agent to stop a task.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.agent.KillTask/v1", reply = Result<(), String>)]
pub struct KillTask {
    /// The task id.
    pub task_id: String,
}

/// An agent reports a task's new state; retried until the master acknowledges it.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.master.TaskStatus/v1", reply = Result<ReportAck, MasterRefusal>)]
pub struct TaskStatusReport {
    /// The agent id.
    pub agent_id: String,
    /// The task's new status.
    pub status: crate::task::TaskStatus,
}

/// The master took a status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    /// Keep this (ended) report, and send it again when registering, until the master
    /// sends [`ReleaseStatus`]: its framework has not acknowledged it yet.
    pub keep: bool,
}

/// The framework acknowledged the end of this task: its agent may forget the report.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.agent.ReleaseStatus/v1", reply = Result<(), String>)]
pub struct ReleaseStatus {
    /// The task id.
    pub task_id: String,
}

/// The name of every agent's actor that the master talks to.
pub const AGENT_ACTOR: &str = "$agent";

/// The master asks an agent to start a command task (an OS process).
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.agent.LaunchCommand/v1", reply = Result<(), String>)]
pub struct LaunchCommand {
    /// What to run; `task.id` is the task id.
    pub task: crate::task::CommandTask,
    /// Its health check, if any.
    pub health: Option<HealthSpec>,
}

/// Which captured stream of a command task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The most of a command task's output one read returns (the operator API's `bytes`, a
/// framework's `max_bytes`).
pub const MAX_TASK_LOG_BYTES: u64 = 4 * 1024 * 1024;

/// The master asks an agent for the end of a command task's captured output.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.agent.ReadTaskLog/v1", reply = Result<TaskLog, String>)]
pub struct ReadTaskLog {
    /// The task id.
    pub task_id: String,
    /// Which stream.
    pub stream: LogStream,
    /// At most this many bytes from the end.
    pub max_bytes: u64,
}

/// The end of a captured stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLog {
    /// The text (lossy UTF-8).
    pub text: String,
    /// Bytes before `text` that were left out.
    pub skipped_bytes: u64,
}

/// The master asks an agent what it knows of a task.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.agent.DescribeTask/v1", reply = Result<TaskDetail, String>)]
pub struct DescribeTask {
    /// The task id.
    pub task_id: String,
}

/// A task as its agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDetail {
    /// The task id.
    pub task_id: String,
    /// `actor <type>` or `command <path> <args>`.
    pub what: String,
    /// The process id (command tasks).
    pub pid: Option<u32>,
    /// The sandbox directory (command tasks): stdout, stderr, exit status.
    pub sandbox: Option<String>,
    /// The resource limits in effect, in words.
    pub limits: Vec<String>,
    /// Where it stands, as the agent sees it now.
    pub status: String,
}

/// A task's health check, run by its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// Between checks, in milliseconds.
    pub interval_ms: u64,
    /// Per check, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive failures after which the task is killed and reported Failed.
    pub failures: u32,
    /// Failures this long after the start do not count, in milliseconds.
    pub grace_ms: u64,
    /// Command tasks: a program and its arguments run in the sandbox (exit 0: healthy).
    /// Actor tasks (`None`): the instance is asked [`crate::health::HealthCheck`].
    pub command: Option<Vec<String>>,
}

/// A task id that cannot name a sandbox directory and an actor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task id {id:?} is not valid: expected 1-{max} letters, digits, '.', '-' or '_', not starting with '.'")]
pub struct InvalidTaskId {
    /// The id given.
    pub id: String,
    /// The longest id allowed where it was given.
    pub max: usize,
}

/// Checks a task id: 1 to `max` letters, digits, '.', '-' or '_', not starting with '.'
/// (it names a sandbox directory and an actor on the agent).
pub fn check_task_id(id: &str, max: usize) -> Result<(), InvalidTaskId> {
    let ok = !id.is_empty()
        && id.len() <= max
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(InvalidTaskId {
            id: id.to_string(),
            max,
        })
    }
}
