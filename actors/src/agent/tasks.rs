//! Actor tasks: the agent starts instances of the actor types its binary hosts when the
//! master asks, watches them, and reports every state change to the master until the
//! master acknowledges it.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};

use crate::master::frameworks::{TaskState, TaskStatus};
use crate::protocol::{KillTask, LaunchActor, TaskStatusReport};
use crate::{
    Node, NodeError, RemoteRef, RestartPolicy, SpawnOptions, Terminated, TerminationReason,
};

type Factory = Rc<dyn Fn(&Node, &str) -> Result<RemoteRef, NodeError>>;

/// The actor types this agent can start as tasks, by the name the master uses for them.
#[derive(Clone, Default)]
pub struct ActorHost {
    factories: BTreeMap<String, Factory>,
}

impl std::fmt::Debug for ActorHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl ActorHost {
    /// An empty host.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hosts actor type `type_name`: instances come from `factory`, and are restarted on
    /// panic.
    pub fn with<A, F>(mut self, type_name: &str, factory: F) -> Self
    where
        A: Actor<Context = Context<A>>,
        F: Fn() -> A + Clone + 'static,
    {
        let make: Factory = Rc::new(move |node: &Node, name: &str| {
            node.spawn_with(
                name,
                SpawnOptions {
                    restart: RestartPolicy::on_failure(),
                    ..Default::default()
                },
                factory.clone(),
            )
        });
        self.factories.insert(type_name.to_string(), make);
        self
    }

    /// The hosted type names.
    pub fn types(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }
}

struct Task {
    id: String,
    name: String,
    kill_requested: bool,
}

/// The agent's face on the mesh (`$agent`): launches and kills tasks for the master only.
pub struct AgentGate {
    node: Node,
    host: ActorHost,
    agent_id: String,
    master: RemoteRef,
    tasks: BTreeMap<String, Task>,
    next_uuid: AtomicU64,
}

impl std::fmt::Debug for AgentGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentGate")
            .field("agent", &self.agent_id)
            .finish_non_exhaustive()
    }
}

impl AgentGate {
    /// A gate for `agent_id` on `node`, reporting to `master`.
    pub fn new(node: Node, host: ActorHost, agent_id: String, master: RemoteRef) -> Self {
        Self {
            node,
            host,
            agent_id,
            master,
            tasks: BTreeMap::new(),
            next_uuid: AtomicU64::new(1),
        }
    }

    /// Sends a status report in the background, again and again (capped backoff) until the
    /// master acknowledges it.
    fn report(&self, task_id: &str, state: TaskState, message: String) {
        let report = TaskStatusReport {
            agent_id: self.agent_id.clone(),
            status: TaskStatus {
                task_id: task_id.to_string(),
                agent_id: self.agent_id.clone(),
                state,
                message,
                uuid: self.next_uuid.fetch_add(1, Ordering::Relaxed),
            },
        };
        let master = self.master.clone();
        actix::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                match master
                    .ask_timeout(report.clone(), Duration::from_secs(5))
                    .await
                {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => {
                        warn!(task = %report.status.task_id, error = %e, "status report refused; retrying")
                    }
                    Err(e) => {
                        warn!(task = %report.status.task_id, error = %e, "status report not delivered; retrying")
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
    }

    fn from_master() -> Result<(), String> {
        match crate::caller() {
            Some(c) if c.path() == "/node/master" => Ok(()),
            Some(c) => Err(format!(
                "{c} may not manage tasks here; only the master may"
            )),
            None => Err("task requests must come from the master over the mesh".into()),
        }
    }
}

impl Actor for AgentGate {
    type Context = Context<Self>;
}

#[crate::handler]
impl Handler<LaunchActor> for AgentGate {
    type Result = Result<(), String>;
    fn handle(&mut self, m: LaunchActor, ctx: &mut Context<Self>) -> Self::Result {
        Self::from_master()?;
        if self.tasks.contains_key(&m.task_id) {
            return Ok(()); // A retried launch: already running.
        }
        let Some(factory) = self.host.factories.get(&m.actor_type).cloned() else {
            let known = self.host.types().join(", ");
            self.report(
                &m.task_id,
                TaskState::Error,
                format!(
                    "this agent does not host actor type {:?} (it hosts: {known})",
                    m.actor_type
                ),
            );
            return Err(format!(
                "actor type {:?} is not hosted here (hosted: {known})",
                m.actor_type
            ));
        };
        self.report(&m.task_id, TaskState::Starting, String::new());
        match factory(&self.node, &m.name) {
            Ok(r) => {
                self.node.watch_with(&r, ctx.address().recipient());
                self.tasks.insert(
                    m.name.clone(),
                    Task {
                        id: m.task_id.clone(),
                        name: m.name.clone(),
                        kill_requested: false,
                    },
                );
                info!(task = %m.task_id, actor = %m.name, "actor task running");
                self.report(&m.task_id, TaskState::Running, String::new());
                Ok(())
            }
            Err(e) => {
                self.report(&m.task_id, TaskState::Failed, e.to_string());
                Err(e.to_string())
            }
        }
    }
}

#[crate::handler]
impl Handler<KillTask> for AgentGate {
    type Result = Result<(), String>;
    fn handle(&mut self, m: KillTask, _: &mut Context<Self>) -> Self::Result {
        Self::from_master()?;
        let task = self
            .tasks
            .values_mut()
            .find(|t| t.id == m.task_id)
            .ok_or_else(|| format!("no task {} on this agent", m.task_id))?;
        task.kill_requested = true;
        let name = task.name.clone();
        self.node.stop(&name);
        Ok(())
    }
}

impl Handler<Terminated> for AgentGate {
    type Result = ();
    fn handle(&mut self, t: Terminated, _: &mut Context<Self>) {
        let Some(task) = self.tasks.remove(&t.actor) else {
            return;
        };
        let (state, message) = match (&t.reason, task.kill_requested) {
            (_, true) => (TaskState::Killed, String::new()),
            (TerminationReason::Panicked, _) => (
                TaskState::Failed,
                "the actor panicked and its restart budget ran out".to_string(),
            ),
            (TerminationReason::Stopped, _) => (TaskState::Finished, String::new()),
            (other, _) => (TaskState::Lost, format!("{other:?}")),
        };
        self.report(&task.id, state, message);
    }
}
