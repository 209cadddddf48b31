//! Tasks on an agent: instances of the actor types its binary hosts, and command tasks
//! (OS processes, see [`command`]). The agent starts them when the master asks, watches
//! them, and reports every state change to the master until the master acknowledges it.
//! A command task's end is marked in its sandbox once acknowledged, so a restarted agent
//! reports ends that were not delivered and re-attaches to processes that still run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};

use super::command;
use crate::master::frameworks::{TaskState, TaskStatus};
use crate::protocol::{
    DescribeTask, KillTask, LaunchActor, LaunchCommand, LogStream, ReadTaskLog, TaskDetail,
    TaskLog, TaskStatusReport,
};
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
    actor_type: String,
    kill_requested: bool,
}

/// A command task the agent watches.
struct CommandEntry {
    running: command::Running,
    what: String,
    grace: Duration,
}

/// The ids of the tasks (actor and command) that run on this agent, shared with the
/// heartbeat loop (which reports them when it registers again).
pub type TaskIds = Arc<Mutex<BTreeSet<String>>>;

/// The agent's face on the mesh (`$agent`): launches and kills tasks for the master only.
pub struct AgentGate {
    node: Node,
    host: ActorHost,
    agent_id: String,
    master: RemoteRef,
    tasks: BTreeMap<String, Task>,
    commands: BTreeMap<String, CommandEntry>,
    task_ids: TaskIds,
    sandboxes: PathBuf,
    next_uuid: AtomicU64,
}

/// Where command tasks' sandboxes live under an agent's data directory.
pub const SANDBOXES: &str = "sandboxes";
/// Written into a sandbox once the master has acknowledged the task's end.
const REPORTED: &str = "end_reported";
/// How long the sandbox of an ended, reported task is kept (for its logs).
const SANDBOX_KEEP: Duration = Duration::from_secs(24 * 3600);

/// A task id that is safe as a directory name: the master's `namespace.name-suffix`.
fn valid_task_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "task id {id:?} is not valid: expected letters, digits, '.', '-' or '_', not starting with '.'"
        ))
    }
}

/// Finds the command tasks an earlier run of this agent left in `sandboxes` whose end the
/// master has not acknowledged yet, and re-attaches to them. Sandboxes of tasks that ended
/// and were reported more than a day ago are removed.
pub fn recover_commands(sandboxes: &Path) -> Vec<command::Running> {
    let Ok(dirs) = std::fs::read_dir(sandboxes) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for dir in dirs.flatten().map(|e| e.path()) {
        let reported = dir.join(REPORTED);
        if let Ok(meta) = std::fs::metadata(&reported) {
            let old = meta
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > SANDBOX_KEEP);
            if old {
                let _ = std::fs::remove_dir_all(&dir);
            }
            continue;
        }
        if let Some(r) = command::reattach(&dir) {
            info!(task = %dir.display(), pid = r.pid(), "re-attached to a command task");
            found.push(r);
        }
    }
    found
}

impl std::fmt::Debug for AgentGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentGate")
            .field("agent", &self.agent_id)
            .finish_non_exhaustive()
    }
}

impl AgentGate {
    /// A gate for `agent_id` on `node`, reporting to `master`. Command tasks get their
    /// sandboxes under `sandboxes`; `recovered` are those an earlier run left running.
    pub fn new(
        node: Node,
        host: ActorHost,
        agent_id: String,
        master: RemoteRef,
        sandboxes: PathBuf,
        recovered: Vec<command::Running>,
        task_ids: TaskIds,
    ) -> Self {
        let mut commands = BTreeMap::new();
        for running in recovered {
            let Some(id) = running
                .dir()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
            else {
                continue;
            };
            task_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone());
            commands.insert(
                id,
                CommandEntry {
                    what: format!("command {}", running.task().path),
                    grace: Duration::from_millis(running.task().kill_grace_ms),
                    running,
                },
            );
        }
        Self {
            node,
            host,
            agent_id,
            master,
            tasks: BTreeMap::new(),
            commands,
            task_ids,
            sandboxes,
            next_uuid: AtomicU64::new(1),
        }
    }

    /// Sends a status report in the background, again and again (capped backoff) until the
    /// master acknowledges it.
    fn report(&self, task_id: &str, state: TaskState, message: String) {
        self.report_then(task_id, state, message, None);
    }

    /// Like [`Self::report`]; once the master acknowledges, `mark` (if any) is created, so
    /// that a restarted agent knows the end was delivered.
    fn report_then(&self, task_id: &str, state: TaskState, message: String, mark: Option<PathBuf>) {
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
                    Ok(Ok(())) => {
                        if let Some(mark) = mark {
                            let _ = std::fs::write(mark, b"");
                        }
                        return;
                    }
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

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Command tasks are watched through their sandboxes (the exit status the wrapper
        // writes) and /proc, which works the same for re-attached processes.
        ctx.run_interval(COMMAND_POLL, |gate, _| gate.poll_commands());
    }
}

/// How often command tasks are checked for their end.
const COMMAND_POLL: Duration = Duration::from_millis(100);

impl AgentGate {
    fn poll_commands(&mut self) {
        let ended: Vec<(String, command::CommandStatus)> = self
            .commands
            .iter()
            .filter_map(|(id, c)| {
                let s = c.running.status();
                (s != command::CommandStatus::Running).then(|| (id.clone(), s))
            })
            .collect();
        for (id, status) in ended {
            let Some(entry) = self.commands.remove(&id) else {
                continue;
            };
            entry.running.release(&id);
            self.task_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let (state, message) = match status {
                command::CommandStatus::Finished => {
                    (TaskState::Finished, "exited with code 0".into())
                }
                command::CommandStatus::Failed { code } => {
                    (TaskState::Failed, format!("exited with code {code}"))
                }
                command::CommandStatus::Killed => (TaskState::Killed, String::new()),
                command::CommandStatus::Lost | command::CommandStatus::Running => (
                    TaskState::Failed,
                    "the process ended without an exit status (killed from outside the agent?)"
                        .into(),
                ),
            };
            info!(task = %id, ?state, %message, "command task ended");
            self.report_then(
                &id,
                state,
                message,
                Some(entry.running.dir().join(REPORTED)),
            );
        }
    }

    fn sandbox_of(&self, task_id: &str) -> Result<PathBuf, String> {
        valid_task_id(task_id)?;
        let dir = self.sandboxes.join(task_id);
        if dir.is_dir() {
            Ok(dir)
        } else if self.tasks.values().any(|t| t.id == task_id) {
            Err(format!(
                "task {task_id} is an actor task: it has no captured output"
            ))
        } else {
            Err(format!("no task {task_id} on agent {}", self.agent_id))
        }
    }
}

#[crate::handler]
impl Handler<LaunchCommand> for AgentGate {
    type Result = Result<(), String>;
    fn handle(&mut self, m: LaunchCommand, _: &mut Context<Self>) -> Self::Result {
        Self::from_master()?;
        let id = m.task.id.clone();
        valid_task_id(&id)?;
        if self.commands.contains_key(&id) {
            return Ok(()); // A retried launch: already running.
        }
        self.report(&id, TaskState::Starting, String::new());
        match command::launch(&m.task, &self.sandboxes) {
            Ok(running) => {
                let message = if running.limits.is_empty() {
                    format!("pid {}", running.pid())
                } else {
                    format!(
                        "pid {}; limits: {}",
                        running.pid(),
                        running.limits.join(", ")
                    )
                };
                info!(task = %id, pid = running.pid(), "command task running");
                self.task_ids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone());
                self.commands.insert(
                    id.clone(),
                    CommandEntry {
                        what: format!("command {} {}", m.task.path, m.task.args.join(" "))
                            .trim_end()
                            .to_string(),
                        grace: Duration::from_millis(m.task.kill_grace_ms),
                        running,
                    },
                );
                self.report(&id, TaskState::Running, message);
                Ok(())
            }
            Err(e) => {
                self.report(&id, TaskState::Failed, e.to_string());
                Err(e.to_string())
            }
        }
    }
}

#[crate::handler]
impl Handler<ReadTaskLog> for AgentGate {
    type Result = Result<TaskLog, String>;
    fn handle(&mut self, m: ReadTaskLog, _: &mut Context<Self>) -> Self::Result {
        Self::from_master()?;
        let file = self.sandbox_of(&m.task_id)?.join(match m.stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        });
        read_tail(&file, m.max_bytes).map_err(|e| format!("cannot read {}: {e}", file.display()))
    }
}

/// The last `max` bytes of `file`.
fn read_tail(file: &Path, max: u64) -> std::io::Result<TaskLog> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    let skipped_bytes = len.saturating_sub(max);
    f.seek(SeekFrom::Start(skipped_bytes))?;
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes)?;
    Ok(TaskLog {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        skipped_bytes,
    })
}

#[crate::handler]
impl Handler<DescribeTask> for AgentGate {
    type Result = Result<TaskDetail, String>;
    fn handle(&mut self, m: DescribeTask, _: &mut Context<Self>) -> Self::Result {
        Self::from_master()?;
        if let Some(c) = self.commands.get(&m.task_id) {
            return Ok(TaskDetail {
                task_id: m.task_id,
                what: c.what.clone(),
                pid: Some(c.running.pid()),
                sandbox: Some(c.running.dir().display().to_string()),
                limits: c.running.limits.clone(),
                status: format!("{:?}", c.running.status()),
            });
        }
        if let Some(t) = self.tasks.values().find(|t| t.id == m.task_id) {
            return Ok(TaskDetail {
                task_id: m.task_id,
                what: format!("actor {}", t.actor_type),
                pid: None,
                sandbox: None,
                limits: Vec::new(),
                status: if t.kill_requested {
                    "Stopping"
                } else {
                    "Running"
                }
                .into(),
            });
        }
        // An ended command task whose sandbox is still kept.
        let dir = self.sandbox_of(&m.task_id)?;
        let ended = command::reattach(&dir)
            .ok_or_else(|| format!("task {} left no checkpoint in {}", m.task_id, dir.display()))?;
        Ok(TaskDetail {
            task_id: m.task_id,
            what: format!("command {}", ended.task().path),
            pid: Some(ended.pid()),
            sandbox: Some(dir.display().to_string()),
            limits: ended.limits.clone(),
            status: format!("{:?}", ended.status()),
        })
    }
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
                        actor_type: m.actor_type.clone(),
                        kill_requested: false,
                    },
                );
                info!(task = %m.task_id, actor = %m.name, "actor task running");
                self.task_ids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(m.task_id.clone());
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
    fn handle(&mut self, m: KillTask, ctx: &mut Context<Self>) -> Self::Result {
        Self::from_master()?;
        if let Some(c) = self.commands.get_mut(&m.task_id) {
            c.running.terminate();
            let grace = c.grace;
            let id = m.task_id.clone();
            ctx.run_later(grace, move |gate, _| {
                if let Some(c) = gate.commands.get(&id) {
                    warn!(task = %id, ?grace, "command task did not stop in its grace period; SIGKILL");
                    c.running.force();
                }
            });
            return Ok(());
        }
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
        self.task_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task.id);
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
