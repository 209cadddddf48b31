//! Frameworks as the master keeps them (their actors, roles, owners, filters and tasks),
//! and the calls frameworks make: register, accept, decline, kill, reconcile,
//! acknowledge, revive or suppress, tear down.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::warn;

use actormesh::framework::{FrameworkError, FrameworkEvent};
use actormesh::resources::Resources;
use actormesh_transport::SpiffeId;

use super::{ClusterCore, Effect, LoadError};
use crate::deployments;
use crate::frameworks::{FrameworkBook, TaskState, TaskStatus};
use crate::state::{Change, Table, Versioned};

/// The role of the built-in deployment framework (reserved: frameworks cannot take it).
pub const DEPLOYMENTS_ROLE: &str = "deployments";
/// The longest failover timeout a framework may ask for.
pub(super) const MAX_FAILOVER: Duration = Duration::from_secs(7 * 24 * 3600);
pub(super) const FRAMEWORK_PREFIX: &str = "framework/";

/// A task a framework launched.
#[derive(Debug, Clone)]
pub(super) struct FrameworkTask {
    pub(super) framework: String,
    /// The framework's role, kept with the task: it outlives a torn-down framework.
    pub(super) role: String,
    /// The framework's own id for it.
    pub(super) task_id: String,
    pub(super) agent: String,
    pub(super) resources: Resources,
    pub(super) state: TaskState,
    pub(super) message: String,
    /// Whether it is an actor task (`None`: adopted after a master restart, unknown).
    pub(super) actor: Option<bool>,
}

/// Frameworks as the master keeps them.
pub(super) struct Frameworks {
    pub(super) book: FrameworkBook,
    /// Where each connected framework's events go: its event actor's node and name.
    pub(super) refs: BTreeMap<String, (SocketAddr, String)>,
    /// Each framework's role, also after it is gone (its offers and tasks may still have
    /// resources to give back).
    pub(super) roles: BTreeMap<String, String>,
    /// The verified identity that registered each framework (kept in the state store):
    /// only it may speak for the framework or re-register it.
    pub(super) registered_by: BTreeMap<String, String>,
    /// Declines per framework: (framework, agent) not offered to it until the instant. The
    /// allocator filters an agent for a role only while every framework of the role does.
    pub(super) filters: BTreeMap<(String, String), Instant>,
    /// Frameworks that asked for no offers.
    pub(super) suppressed: BTreeSet<String>,
    /// By agent task id (`framework_task`).
    pub(super) tasks: BTreeMap<String, FrameworkTask>,
}

impl std::fmt::Debug for Frameworks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frameworks")
            .field("frameworks", &self.refs.len())
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// The id agents know a framework's task by (also its actor instance's name).
pub(super) fn agent_task_id(framework: &str, task: &str) -> String {
    actormesh::framework::instance_name(framework, task)
}

/// A framework's record in the state store.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct StoredFramework {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) role: String,
    pub(super) failover_timeout_ms: u64,
    /// The verified identity that registered it: only it may re-register it.
    #[serde(default)]
    pub(super) registered_by: String,
}

impl Frameworks {
    /// The agent and state of framework task `id` (an agent task id).
    pub(super) fn task_view(&self, id: &str) -> Option<(String, TaskState)> {
        self.tasks.get(id).map(|t| (t.agent.clone(), t.state))
    }

    /// Whether framework task `id` (an agent task id) has an end its framework has yet to
    /// acknowledge.
    pub(super) fn awaits_ack(&self, id: &str) -> bool {
        self.tasks
            .get(id)
            .is_some_and(|t| t.state.is_terminal() && self.book.get(&t.framework).is_some())
    }

    /// Whether framework task `id` is an actor task (`None`: unknown or no such task).
    pub(super) fn is_actor_task(&self, id: &str) -> Option<bool> {
        self.tasks.get(id).and_then(|t| t.actor)
    }

    /// The agent of framework task `id` (an agent task id).
    pub(super) fn task_agent(&self, id: &str) -> Option<String> {
        self.tasks.get(id).map(|t| t.agent.clone())
    }

    /// Framework tasks in the shape `get tasks` shows; the owner is `framework/<id>`.
    pub(super) fn task_entries(&self) -> Vec<deployments::TaskEntry> {
        self.tasks
            .iter()
            .map(|(id, t)| deployments::TaskEntry {
                id: id.clone(),
                deployment: format!("framework/{}", t.framework),
                version: String::new(),
                agent: t.agent.clone(),
                state: t.state,
                message: t.message.clone(),
                resources: t.resources.clone(),
                seq: 0,
                running_since: None,
                healthy: None,
                stopping: false,
                endpoint: None,
            })
            .collect()
    }

    /// What framework task `id` (an agent task id) holds.
    pub(super) fn task_resources(&self, id: &str) -> Option<Resources> {
        self.tasks.get(id).map(|t| t.resources.clone())
    }

    /// Frameworks, with those an earlier master process registered (disconnected until
    /// they re-register within their failover timeout).
    pub(super) fn load(
        config_rows: &[(String, Versioned)],
        offer_timeout: Duration,
        epoch: u32,
        now: Instant,
    ) -> Result<Self, LoadError> {
        let mut book = FrameworkBook::new(
            offer_timeout,
            Duration::from_millis(500),
            Duration::from_secs(30),
        );
        book.set_epoch(epoch);
        let mut roles = BTreeMap::new();
        let mut registered_by = BTreeMap::new();
        for (k, v) in config_rows {
            if k.starts_with(FRAMEWORK_PREFIX) {
                let f: StoredFramework =
                    serde_json::from_slice(&v.value).map_err(|e| LoadError::Framework {
                        key: k.clone(),
                        reason: e.to_string(),
                    })?;
                roles.insert(f.id.clone(), f.role.clone());
                registered_by.insert(f.id.clone(), f.registered_by.clone());
                book.restore(
                    &f.id,
                    &f.name,
                    &f.role,
                    Duration::from_millis(f.failover_timeout_ms),
                    now,
                );
            }
        }
        Ok(Self {
            book,
            refs: BTreeMap::new(),
            roles,
            registered_by,
            filters: BTreeMap::new(),
            suppressed: BTreeSet::new(),
            tasks: BTreeMap::new(),
        })
    }
}

impl ClusterCore {
    /// An agent (re)registered with what it runs. Framework tasks the master does not know
    /// (it restarted) are taken up again if their framework is known (it may re-register
    /// within its failover timeout) and killed if not; tasks that were Unreachable there
    /// run again; tasks the agent no longer runs are Lost. Returns the kills.
    pub(super) fn adopt_framework_tasks(
        &mut self,
        agent: &str,
        running: &[String],
        held: &BTreeMap<String, Resources>,
        now: Instant,
    ) -> Vec<deployments::Action> {
        let reported: BTreeSet<&String> = running.iter().collect();
        let gone: Vec<String> = self
            .fw
            .tasks
            .iter()
            .filter(|(k, t)| {
                t.agent == agent
                    && matches!(
                        t.state,
                        TaskState::Staging
                            | TaskState::Starting
                            | TaskState::Running
                            | TaskState::Unreachable
                    )
                    && !reported.contains(k)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            let status = TaskStatus {
                task_id: k,
                agent_id: agent.to_string(),
                state: TaskState::Lost,
                message: format!("agent {agent} restarted and no longer runs it"),
                uuid: 0,
                healthy: None,
            };
            self.framework_task_status(status, now);
        }
        let mut kills = Vec::new();
        for id in running {
            if let Some(t) = self.fw.tasks.get(id) {
                if t.agent != agent {
                    warn!(task = %id, %agent, owner = %t.agent, "an agent reports another agent's task; killing its copy");
                    kills.push(deployments::Action::Kill {
                        task_id: id.clone(),
                        agent: agent.to_string(),
                    });
                    continue;
                }
                if t.state.is_terminal() || self.fw.book.get(&t.framework).is_none() {
                    // Given up (or its framework is gone): it must not run on.
                    kills.push(deployments::Action::Kill {
                        task_id: id.clone(),
                        agent: agent.to_string(),
                    });
                    continue;
                }
                if t.state == TaskState::Unreachable {
                    let status = TaskStatus {
                        task_id: id.clone(),
                        agent_id: agent.to_string(),
                        state: TaskState::Running,
                        message: format!("agent {agent} is back"),
                        uuid: 0,
                        healthy: None,
                    };
                    self.framework_task_status(status, now);
                }
                continue;
            }
            let Some((fw, task)) = id.split_once('_') else {
                continue;
            };
            if !fw.starts_with("fw-") || self.deployments.task(id).is_some() {
                continue;
            }
            if self.fw.book.get(fw).is_some() {
                self.fw.tasks.insert(
                    id.clone(),
                    FrameworkTask {
                        framework: fw.to_string(),
                        role: self
                            .fw
                            .book
                            .get(fw)
                            .map(|f| f.role.clone())
                            .unwrap_or_default(),
                        task_id: task.to_string(),
                        agent: agent.to_string(),
                        resources: held.get(id).cloned().unwrap_or_default(),
                        state: TaskState::Running,
                        message: "adopted after a master restart".into(),
                        actor: None,
                    },
                );
            } else {
                warn!(task = %id, %agent, "killing a task of an unknown framework");
                kills.push(deployments::Action::Kill {
                    task_id: id.clone(),
                    agent: agent.to_string(),
                });
            }
        }
        kills
    }

    /// The end of task `s.task_id` that this master does not know, reported by its agent:
    /// if it is a task of a known framework (this master restarted after launching it), it
    /// is passed on to the framework. False if it is not such a task.
    pub(super) fn framework_task_ended_unknown(&mut self, s: &TaskStatus, now: Instant) -> bool {
        let Some((fw, task)) = s.task_id.split_once('_') else {
            return false;
        };
        let Some(role) = self.fw.book.get(fw).map(|f| f.role.clone()) else {
            return false;
        };
        self.fw.tasks.insert(
            s.task_id.clone(),
            FrameworkTask {
                framework: fw.to_string(),
                role,
                task_id: task.to_string(),
                agent: s.agent_id.clone(),
                // What it held left the allocator with the old master.
                resources: Resources::default(),
                state: TaskState::Running,
                message: String::new(),
                actor: None,
            },
        );
        self.framework_task_status(s.clone(), now)
    }

    /// A status of a framework task (by agent task id); false if it is not one.
    pub(super) fn framework_task_status(&mut self, s: TaskStatus, now: Instant) -> bool {
        let Some(t) = self.fw.tasks.get_mut(&s.task_id) else {
            return false;
        };
        // Ended stays ended, a duplicate changes nothing, and a late Starting does not
        // undo Running.
        if t.state.is_terminal()
            || (s.state == t.state && s.message == t.message)
            || (s.state == TaskState::Starting && t.state == TaskState::Running)
        {
            return true;
        }
        t.state = s.state;
        t.message = s.message.clone();
        let (fw, task_id, agent, res, role) = (
            t.framework.clone(),
            t.task_id.clone(),
            t.agent.clone(),
            t.resources.clone(),
            t.role.clone(),
        );
        // Its resources go back when it ends or its agent is unreachable (a no-op once the
        // agent has left the allocator).
        if s.state.is_terminal() || s.state == TaskState::Unreachable {
            self.allocator.recover(&role, &agent, &res);
        }
        if self.fw.book.get(&fw).is_none() {
            // Its framework is gone (torn down or failed over): nobody to tell; an ended
            // task is done with.
            if s.state.is_terminal() {
                self.fw.tasks.remove(&s.task_id);
            }
            return true;
        }
        // The framework acknowledges by the master's uuid (agents number their own).
        let update = TaskStatus {
            task_id,
            uuid: self.next_update_uuid(),
            ..s
        };
        self.fw.book.status_update(&fw, update, now);
        self.deliver_updates(now);
        true
    }

    /// Tears a framework down: kills its tasks, withdraws its offers, forgets it.
    pub(super) fn end_framework(&mut self, id: &str, now: Instant) {
        let role = self.fw.book.get(id).map(|f| f.role.clone());
        for o in self.fw.book.remove(id) {
            if let Some(role) = &role {
                self.allocator.recover(role, &o.agent, &o.resources);
            }
        }
        let kills: Vec<deployments::Action> = self
            .fw
            .tasks
            .iter()
            .filter(|(_, t)| t.framework == id && !t.state.is_terminal())
            .map(|(k, t)| deployments::Action::Kill {
                task_id: k.clone(),
                agent: t.agent.clone(),
            })
            .collect();
        self.carry_out(kills);
        if self.fw.refs.remove(id).is_some() {
            self.out.push(Effect::ToFramework {
                framework: id.to_string(),
                event: FrameworkEvent::Error {
                    message: format!("framework {id} was torn down"),
                },
            });
            self.out.push(Effect::Unwatch {
                framework: id.to_string(),
            });
        }
        self.fw.registered_by.remove(id);
        self.fw.suppressed.remove(id);
        self.fw.filters.retain(|(fw, _), _| fw != id);
        if let Some(role) = &role {
            self.resync_role(role, now);
        }
        // Not awaited: a failed write makes the master step down, and a restarted master
        // finds the framework again and fails it over after its timeout.
        self.persist(vec![Change::delete(
            Table::Config,
            format!("{FRAMEWORK_PREFIX}{id}"),
        )]);
    }

    /// The caller may speak for framework `id`.
    pub(super) fn framework_caller(
        &self,
        id: &str,
        caller: &Option<SpiffeId>,
    ) -> Result<String, FrameworkError> {
        let f = self.fw.book.get(id).ok_or_else(|| {
            FrameworkError::NotRegistered(format!(
                "framework {id} is not registered (it may have failed over); register again"
            ))
        })?;
        let who = caller.as_ref().map(|c| c.to_string()).ok_or_else(|| {
            FrameworkError::Forbidden("framework calls must come over the mesh".into())
        })?;
        match self.fw.registered_by.get(id) {
            Some(owner) if owner != &who => Err(FrameworkError::Forbidden(format!(
                "{who} may not speak for framework {id} (registered by {owner})"
            ))),
            _ if !self.fw.refs.contains_key(id) => Err(FrameworkError::NotRegistered(format!(
                "framework {id} is disconnected: re-register it with its id first"
            ))),
            _ => Ok(f.role.clone()),
        }
    }
}

/// A framework's role: not the deployments', and a short name.
pub(super) fn valid_role(role: &str) -> Result<(), FrameworkError> {
    if role == DEPLOYMENTS_ROLE {
        return Err(FrameworkError::Invalid(format!(
            "role {role:?} is reserved for the built-in deployment controller; choose another"
        )));
    }
    let ok = !role.is_empty()
        && role.len() <= 63
        && role.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(FrameworkError::Invalid(format!(
            "role {role:?} is not valid: expected 1-63 lowercase letters, digits, '-', '_' or '.'"
        )))
    }
}

/// A framework's task id; short enough for the framework id to go in front of it.
pub(super) fn valid_task_id(id: &str) -> Result<(), FrameworkError> {
    actormesh::protocol::check_task_id(id, 100).map_err(|e| FrameworkError::Invalid(e.to_string()))
}
