//! Operators' questions: nodes, deployments, tasks (with what their agents say of them)
//! and task logs.

use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use actormesh::protocol::{DescribeTask, LogStream, ReadTaskLog, TaskDetail, TaskLog, AGENT_ACTOR};

use super::Master;
use crate::core::DeploymentRefusal;
use crate::deployments::{DeploymentDescription, DeploymentSummary, TaskEndpoint, TaskEntry};
use crate::frameworks::TaskStatus;
use crate::membership::AgentRecord;

/// Every agent.
#[derive(Debug, Message)]
#[rtype(result = "Vec<AgentRecord>")]
pub struct ListNodes;

impl Handler<ListNodes> for Master {
    type Result = MessageResult<ListNodes>;
    fn handle(&mut self, _: ListNodes, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.agent_views())
    }
}

/// Every deployment's standing.
#[derive(Debug, Message)]
#[rtype(result = "Vec<DeploymentSummary>")]
pub struct ListDeployments;

impl Handler<ListDeployments> for Master {
    type Result = MessageResult<ListDeployments>;
    fn handle(&mut self, _: ListDeployments, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.deployments().summaries())
    }
}

/// Every deployment task.
#[derive(Debug, Message)]
#[rtype(result = "Vec<TaskEntry>")]
pub struct ListDeploymentTasks;

impl Handler<ListDeploymentTasks> for Master {
    type Result = MessageResult<ListDeploymentTasks>;
    fn handle(&mut self, _: ListDeploymentTasks, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.deployments().tasks().cloned().collect())
    }
}

/// Every task of a deployment or a framework (owner `framework/<id>`), for `get tasks`.
#[derive(Debug, Message)]
#[rtype(result = "Vec<TaskEntry>")]
pub struct ListAllTasks;

impl Handler<ListAllTasks> for Master {
    type Result = MessageResult<ListAllTasks>;
    fn handle(&mut self, _: ListAllTasks, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.all_tasks())
    }
}

/// Every task launched directly that the agents reported, latest state each.
#[derive(Debug, Message)]
#[rtype(result = "Vec<TaskStatus>")]
pub struct ListTasks;

impl Handler<ListTasks> for Master {
    type Result = MessageResult<ListTasks>;
    fn handle(&mut self, _: ListTasks, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.direct_tasks().cloned().collect())
    }
}

/// One deployment in full.
#[derive(Debug, Message)]
#[rtype(result = "Result<DeploymentDescription, DeploymentRefusal>")]
pub struct DescribeDeployment(pub String);

impl Handler<DescribeDeployment> for Master {
    type Result = Result<DeploymentDescription, DeploymentRefusal>;
    fn handle(&mut self, m: DescribeDeployment, _: &mut Context<Self>) -> Self::Result {
        self.core
            .deployments()
            .describe(&m.0)
            .ok_or(DeploymentRefusal::NotFound(m.0))
    }
}

/// Why a question about a task could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TaskQueryRefusal {
    /// No such task.
    #[error("no task {0:?} (expected a task id as listed by `actormesh get tasks`)")]
    NotFound(String),
    /// Its agent could not answer (down, unreachable, or it refused).
    #[error("{0}")]
    Unavailable(String),
}

/// A task as the master and its agent see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskDescription {
    /// The task id.
    pub task_id: String,
    /// Its agent.
    pub agent: String,
    /// The deployment's record of it, if a deployment owns it.
    pub entry: Option<TaskEntry>,
    /// The last status its agent reported (tasks launched directly; a deployment's entry
    /// has its own).
    pub last_status: Option<TaskStatus>,
    /// What its agent says of it now.
    pub on_agent: Option<TaskDetail>,
    /// Why the agent did not say, if it did not.
    pub agent_error: Option<String>,
    /// Where it serves, if it is an actor task (see [`TaskEntry::endpoint`]).
    #[serde(default)]
    pub endpoint: Option<TaskEndpoint>,
}

impl Master {
    /// The agent of task `id`.
    fn agent_of_task(&self, id: &str) -> Result<String, TaskQueryRefusal> {
        self.core
            .agent_of_task(id)
            .ok_or_else(|| TaskQueryRefusal::NotFound(id.to_string()))
    }

    /// The `$agent` actor of an Active agent.
    fn agent_actor(&self, agent: &str) -> Result<actormesh::RemoteRef, String> {
        let at = self.core.agent_addr(agent).map_err(|e| e.to_string())?;
        Ok(self.node.actor_ref(at, AGENT_ACTOR))
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
            entry: self.core.deployments().task(&m.0).cloned(),
            last_status: self.core.direct_task(&m.0).cloned(),
            on_agent: None,
            agent_error: None,
            endpoint: self.core.task_endpoint(&m.0, &agent),
        };
        let target = self.agent_actor(&agent);
        Box::pin(async move {
            let asked = match target {
                Ok(t) => t
                    .ask_timeout(DescribeTask { task_id: m.0 }, Duration::from_secs(5))
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
#[rtype(result = "Result<TaskLog, TaskQueryRefusal>")]
pub struct TaskLogs {
    /// The task.
    pub task_id: String,
    /// stdout or stderr.
    pub stream: LogStream,
    /// At most this many bytes from the end.
    pub max_bytes: u64,
}

impl Handler<TaskLogs> for Master {
    type Result = ResponseFuture<Result<TaskLog, TaskQueryRefusal>>;
    fn handle(&mut self, m: TaskLogs, _: &mut Context<Self>) -> Self::Result {
        let target = self
            .agent_of_task(&m.task_id)
            .and_then(|a| self.agent_actor(&a).map_err(TaskQueryRefusal::Unavailable));
        Box::pin(async move {
            let read = ReadTaskLog {
                task_id: m.task_id,
                stream: m.stream,
                max_bytes: m.max_bytes,
            };
            read_task_log(target?, read)
                .await
                .map_err(TaskQueryRefusal::Unavailable)
        })
    }
}

/// Asks an agent's `$agent` for the end of a command task's output (for the operator API
/// and for frameworks): the agent's refusal, or why it did not answer, as the error.
pub(super) async fn read_task_log(
    agent: actormesh::RemoteRef,
    read: ReadTaskLog,
) -> Result<TaskLog, String> {
    agent
        .ask_timeout(read, Duration::from_secs(10))
        .await
        .map_err(|e| format!("the agent did not answer: {e}"))?
}

/// A backup of the whole state, CA included (`state::backup`'s file).
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<u8>, crate::state::StoreError>")]
pub struct TakeBackup;

impl Handler<TakeBackup> for Master {
    type Result = ResponseFuture<Result<Vec<u8>, crate::state::StoreError>>;
    fn handle(&mut self, _: TakeBackup, _: &mut Context<Self>) -> Self::Result {
        // The listings are queued here, in the actor: no batch of this master comes
        // between them, so they are one consistent view.
        let store = self.store.clone();
        let listed = crate::state::backup::snapshot_queued(store.as_ref());
        Box::pin(async move { crate::state::backup::encode(&listed.await?) })
    }
}
