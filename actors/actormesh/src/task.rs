//! Task states and status updates (the Mesos model), as frameworks and agents see them, and
//! what a command task runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a task stands (Mesos task states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Accepted by the master, not yet on the agent.
    Staging,
    /// The agent is starting it.
    Starting,
    /// Running.
    Running,
    /// Ended successfully.
    Finished,
    /// Ended with an error (exit code, panic).
    Failed,
    /// Killed on request.
    Killed,
    /// Its agent was lost; it is gone.
    Lost,
    /// Could not be launched (bad request).
    Error,
    /// Its agent is unreachable; it may still run.
    Unreachable,
}

impl TaskState {
    /// Whether the task has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished
                | TaskState::Failed
                | TaskState::Killed
                | TaskState::Lost
                | TaskState::Error
        )
    }
}

/// A change of a task's state, as sent to its framework.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The task.
    pub task_id: String,
    /// Its agent.
    pub agent_id: String,
    /// The new state.
    pub state: TaskState,
    /// Why, in words (exit code, reason).
    pub message: String,
    /// Unique per update; the framework acknowledges with it.
    pub uuid: u64,
    /// With a health check: whether the last check passed (`None`: no check yet).
    #[serde(default)]
    pub healthy: Option<bool>,
}

/// What a command task runs (the Mesos command executor's task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandTask {
    /// Task id (also the sandbox directory name).
    pub id: String,
    /// Program path.
    pub path: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment added to a clean one (PATH is kept).
    pub env: BTreeMap<String, String>,
    /// Memory limit in bytes.
    pub mem_bytes: Option<u64>,
    /// CPU limit in cores (cgroups only).
    pub cpus: Option<f64>,
    /// On kill: how long between SIGTERM and SIGKILL, in milliseconds.
    #[serde(default = "default_grace_ms")]
    pub kill_grace_ms: u64,
    /// What the task holds (reported when a restarted agent registers again).
    #[serde(default)]
    pub resources: crate::resources::Resources,
    /// Its deployment's version label, if any (reported likewise).
    #[serde(default)]
    pub version: String,
}

fn default_grace_ms() -> u64 {
    10_000
}
