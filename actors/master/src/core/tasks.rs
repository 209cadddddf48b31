//! Tasks: launches and kills going out, status reports and their results coming back,
//! deployments applied and deleted.

use std::time::Instant;

use tracing::{info, warn};

use actormesh::protocol::{LaunchActor, LaunchCommand, MasterRefusal, ReportAck, TaskStatusReport};
use actormesh_transport::SpiffeId;

use super::MAX_REPORTED_TASKS;
use super::{
    ClusterCore, Effect, Launch, OperatorError, Step, DEPLOYMENTS_ROLE, DEPLOYMENT_PREFIX,
    KILL_RETRY,
};
use crate::deployments::{self, Action, Launchable};
use crate::frameworks::{TaskState, TaskStatus};
use crate::state::{Change, Table};

/// Why a deployment request (delete, describe) was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentRefusal {
    /// No deployment has that key.
    #[error(
        "no deployment {0:?} (expected namespace/name of an applied deployment, e.g. default/web)"
    )]
    NotFound(String),
    /// The deletion could not be written to the state store; the master steps down and a
    /// restarted master still has the deployment.
    #[error("cannot record the deletion; the master steps down and keeps the deployment: {0}")]
    Store(String),
}

impl ClusterCore {
    /// Turns the controller's (and frameworks') launches and kills into effects.
    pub(super) fn carry_out(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Launch {
                    task_id,
                    agent,
                    what,
                    health,
                } => {
                    let at = match self.agent_addr(&agent) {
                        Ok(at) => at,
                        Err(why) => {
                            self.out.push(Effect::LaunchNotSent {
                                task_id,
                                why: why.to_string(),
                            });
                            continue;
                        }
                    };
                    let (resources, version) = self
                        .deployments
                        .task(&task_id)
                        .map(|t| (t.resources.clone(), t.version.clone()))
                        .or_else(|| self.fw.task_resources(&task_id).map(|r| (r, String::new())))
                        .unwrap_or_default();
                    let workload = self.deployments.workload_of(&task_id);
                    let launch = match what {
                        Launchable::Actor(actor_type, restart) => Launch::Actor(LaunchActor {
                            task_id: task_id.clone(),
                            actor_type,
                            name: task_id.clone(),
                            health,
                            restart,
                            resources,
                            version,
                            workload,
                        }),
                        Launchable::Command(task) => Launch::Command(LaunchCommand {
                            task: *task,
                            health,
                        }),
                    };
                    self.out.push(Effect::Launch {
                        agent,
                        at,
                        task_id,
                        launch: Box::new(launch),
                    });
                }
                Action::Kill { task_id, agent } => match self.agent_addr(&agent) {
                    Ok(at) => self.out.push(Effect::Kill { agent, at, task_id }),
                    Err(why) => {
                        warn!(task = %task_id, %why, "kill not delivered; it is sent again if the agent registers with the task")
                    }
                },
            }
        }
    }

    /// A task's state, reported by its agent. The reply says whether the agent keeps an
    /// end report until its framework acknowledges it.
    pub fn task_status(
        &mut self,
        report: TaskStatusReport,
        caller: Option<SpiffeId>,
        now: Instant,
    ) -> Step<Result<ReportAck, MasterRefusal>> {
        self.step(|core| core.task_status_now(report, caller, now))
    }

    fn task_status_now(
        &mut self,
        report: TaskStatusReport,
        caller: Option<SpiffeId>,
        now: Instant,
    ) -> Result<ReportAck, MasterRefusal> {
        self.check_caller(&report.agent_id, &caller)?;
        let s = report.status;
        if s.agent_id != report.agent_id {
            return Err(MasterRefusal::Forbidden(format!(
                "agent {} may not report tasks of agent {}",
                report.agent_id, s.agent_id
            )));
        }
        info!(task = %s.task_id, agent = %s.agent_id, state = ?s.state, message = %s.message, "task status");
        let ended = s.state.is_terminal();
        let task_id = s.task_id.clone();
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
                self.carry_out(vec![Action::Kill {
                    task_id: s.task_id.clone(),
                    agent: s.agent_id.clone(),
                }]);
            }
        }
        if self.framework_task_status(s.clone(), now) {
            // A framework's task: its book has it.
        } else if self.deployments.task(&s.task_id).is_some() {
            self.deployments.on_status(&s, now);
            if ended {
                self.allocator.revive(DEPLOYMENTS_ROLE);
            }
        } else if self.tasks.contains_key(&s.task_id) {
            // Launched directly: only this map has it, bounded by dropping ended entries.
            self.tasks.insert(s.task_id.clone(), s);
            if self.tasks.len() > MAX_REPORTED_TASKS {
                self.tasks.retain(|_, t| !t.state.is_terminal());
            }
        } else if ended && self.framework_task_ended_unknown(&s, now) {
            // The end of a framework's task this master did not know (it restarted
            // meanwhile): passed on to the framework.
        } else {
            warn!(task = %s.task_id, agent = %s.agent_id, "a report of a task the master never launched; ignored");
        }
        if ended {
            self.schedule_round();
        }
        // An end a framework has yet to acknowledge stays with the agent too, so that it
        // survives this master.
        Ok(ReportAck {
            keep: ended && self.fw.awaits_ack(&task_id),
        })
    }

    /// A launch was refused by its agent, not answered, or could not be sent.
    pub fn launch_failed(&mut self, task_id: &str, why: &str, now: Instant) -> Vec<Effect> {
        self.step(|core| {
            warn!(task = %task_id, %why, "launch failed");
            let status = TaskStatus {
                task_id: task_id.to_string(),
                agent_id: String::new(),
                state: TaskState::Failed,
                message: format!("launch failed: {why}"),
                uuid: 0,
                healthy: None,
            };
            if !core.framework_task_status(status, now) {
                core.deployments.launch_failed(task_id, why, now);
            }
            core.schedule_round();
        })
        .effects
    }

    /// The agent of a killed task does not run it (its launch never got there, or it
    /// ended): what it held is free.
    pub fn kill_found_nothing(&mut self, task_id: &str, why: &str) -> Vec<Effect> {
        self.step(|core| {
            info!(task = %task_id, %why, "killed task not found on its agent; its resources are free");
            if core.deployments.kill_found_nothing(task_id) {
                core.allocator.revive(DEPLOYMENTS_ROLE);
                core.schedule_round();
            }
        })
        .effects
    }

    /// Whether deployment instance `task_id` is being stopped on `agent`.
    fn stopping_on(&self, task_id: &str, agent: &str) -> bool {
        self.deployments
            .task(task_id)
            .is_some_and(|t| t.stopping && t.agent == agent)
    }

    /// A kill did not reach its agent (timeout, connection lost). A deployment instance
    /// being stopped holds its resources until it is gone, so the kill must get there:
    /// it is sent again while the instance stops there (once its agent is lost, or
    /// registers without it, it is done with).
    pub fn kill_not_delivered(&mut self, task_id: &str, agent: &str, why: &str) -> Vec<Effect> {
        self.step(|core| {
            if core.stopping_on(task_id, agent) {
                warn!(task = %task_id, %agent, %why, "kill not delivered; sending it again");
                core.out.push(Effect::RetryKill {
                    task_id: task_id.to_string(),
                    agent: agent.to_string(),
                    after: KILL_RETRY,
                });
            }
        })
        .effects
    }

    /// The time asked for by [`Effect::RetryKill`] has passed.
    pub fn retry_kill(&mut self, task_id: &str, agent: &str) -> Vec<Effect> {
        self.step(|core| {
            if core.stopping_on(task_id, agent) {
                core.carry_out(vec![Action::Kill {
                    task_id: task_id.to_string(),
                    agent: agent.to_string(),
                }]);
            }
        })
        .effects
    }

    /// An operator launches task `task_id` directly on `agent`: it is listed (Staging until
    /// reported). Returns where to send the launch.
    pub fn launch_on(
        &mut self,
        agent: &str,
        task_id: &str,
    ) -> Result<std::net::SocketAddr, super::AgentUnavailable> {
        let at = self.agent_addr(agent);
        self.tasks
            .entry(task_id.to_string())
            .or_insert_with(|| TaskStatus {
                task_id: task_id.to_string(),
                agent_id: agent.to_string(),
                state: TaskState::Staging,
                message: String::new(),
                uuid: 0,
                healthy: None,
            });
        at
    }

    /// Adds or replaces a deployment from manifest JSON (validated again here); the reply
    /// (its key) waits for it to be stored, so a master restart keeps every deployment
    /// `apply` reported applied.
    pub fn apply_deployment(
        &mut self,
        manifest_json: String,
    ) -> Step<Result<String, OperatorError>> {
        self.step(|core| {
            let d = crate::manifest::parse(std::path::Path::new("manifest.json"), &manifest_json)
                .map_err(|e| OperatorError::Invalid(e.to_string()))?;
            let key = deployments::key(&d);
            core.persist_acknowledged(vec![Change::put(
                Table::Config,
                format!("{DEPLOYMENT_PREFIX}{key}"),
                manifest_json.into_bytes(),
            )]);
            core.deployments.apply(d);
            // What the deployments refused before may suit the new spec.
            core.allocator.revive(DEPLOYMENTS_ROLE);
            core.schedule_round();
            info!(deployment = %key, "deployment applied");
            Ok(key)
        })
    }

    /// Removes deployment `key` and stops its instances gracefully. The deletion is
    /// recorded before the kills go out; the reply waits for it.
    pub fn delete_deployment(&mut self, key: &str) -> Step<Result<(), DeploymentRefusal>> {
        self.step(|core| {
            if !core
                .deployments
                .deployments()
                .any(|d| deployments::key(d) == key)
            {
                return Err(DeploymentRefusal::NotFound(key.to_string()));
            }
            core.persist_acknowledged(vec![Change::delete(
                Table::Config,
                format!("{DEPLOYMENT_PREFIX}{key}"),
            )]);
            let kills = core.deployments.delete(key).unwrap_or_default();
            info!(deployment = %key, instances = kills.len(), "deployment deleted");
            core.carry_out(kills);
            core.schedule_round();
            Ok(())
        })
    }
}
