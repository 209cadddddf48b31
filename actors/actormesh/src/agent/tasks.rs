//! Tasks on an agent: instances of the actor types its binary hosts, and command tasks
//! (OS processes, see [`command`]). The agent starts them when the master asks, watches
//! them, and reports every state change to the master until the master acknowledges it.
//! A command task's end is marked in its sandbox once acknowledged, so a restarted agent
//! reports ends that were not delivered and re-attaches to processes that still run.
//! The report protocol itself is [`super::reports::ReportBook`]; health checks are in
//! `tasks/health.rs`.

mod health;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{info, warn};

use super::command;
use super::reports::{Attempt, MasterAnswer, ReportBook};
use super::TaskRefusal;
use crate::protocol::{
    DescribeTask, HealthSpec, InvalidTaskId, KillTask, LaunchActor, LaunchActorV1, LaunchCommand,
    LogStream, MasterRefusal, ReadTaskLog, ReleaseStatus, TaskDetail, TaskLog,
};
use crate::task::TaskState;
use crate::{
    Node, NodeError, RemoteRef, RestartPolicy, SpawnOptions, Terminated, TerminationReason,
};
use health::{Health, HEALTH_FILE};

type Factory = Rc<dyn Fn(&Node, &Instance, RestartPolicy) -> Result<RemoteRef, NodeError>>;

/// What an instance is told about itself as it starts ([`ActorHost::with_instance`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its actor's name on the node: its task id for a deployment's instance,
    /// [`crate::framework::instance_name`] for a framework's.
    pub name: String,
    /// The master's task id.
    pub task_id: String,
    /// Its deployment's version label (empty for a framework's task).
    pub version: String,
    /// The service it serves (`namespace/name`) as its workload, if any.
    pub service: Option<String>,
}

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

/// Spawns `instance` on `node` under its supervision policy and workload, each
/// incarnation made by `make`.
fn spawn_instance<A, F>(
    node: &Node,
    instance: &Instance,
    restart: RestartPolicy,
    make: F,
) -> Result<RemoteRef, NodeError>
where
    A: Actor<Context = Context<A>>,
    F: Fn() -> A + 'static,
{
    node.spawn_with(
        &instance.name,
        SpawnOptions {
            restart,
            workload: instance.service.clone(),
            ..Default::default()
        },
        make,
    )
}

impl ActorHost {
    /// An empty host.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hosts actor type `type_name`: instances come from `factory`, supervised with the
    /// restart policy each launch asks for (on failure by default).
    pub fn with<A, F>(mut self, type_name: &str, factory: F) -> Self
    where
        A: Actor<Context = Context<A>>,
        F: Fn() -> A + Clone + 'static,
    {
        let make: Factory = Rc::new(move |node: &Node, i: &Instance, restart| {
            spawn_instance(node, i, restart, factory.clone())
        });
        self.factories.insert(type_name.to_string(), make);
        self
    }

    /// Hosts actor type `type_name`, each instance made by `factory` from what it is
    /// ([`Instance`]: its name, task id, version and service), e.g. to answer with the
    /// version that served a call.
    pub fn with_instance<A, F>(mut self, type_name: &str, factory: F) -> Self
    where
        A: Actor<Context = Context<A>>,
        F: Fn(&Instance) -> A + Clone + 'static,
    {
        let make: Factory = Rc::new(move |node: &Node, i: &Instance, restart| {
            let (factory, me) = (factory.clone(), i.clone());
            spawn_instance(node, i, restart, move || factory(&me))
        });
        self.factories.insert(type_name.to_string(), make);
        self
    }

    /// Hosts actor type `type_name`, each instance made by `factory` from the agent's
    /// [`Mesh`](crate::mesh::Mesh): what an actor needs that calls other services by name
    /// (`mesh.service("reviews")?.ask(..)` in its handlers).
    pub fn with_mesh<A, F>(mut self, type_name: &str, factory: F) -> Self
    where
        A: Actor<Context = Context<A>>,
        F: Fn(&crate::mesh::Mesh) -> A + Clone + 'static,
    {
        let make: Factory = Rc::new(move |node: &Node, i: &Instance, restart| {
            let mesh = crate::mesh::Mesh::of(node).ok_or_else(|| NodeError::Start {
                name: i.name.clone(),
                reason:
                    "this node has no mesh to give it (ActorHost::with_mesh needs an agent's node)"
                        .into(),
            })?;
            let factory = factory.clone();
            spawn_instance(node, i, restart, move || factory(&mesh))
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
pub type TaskIds = Arc<Mutex<TaskSet>>;

/// The tasks that run on an agent, and which of them passed their last health check.
#[derive(Debug, Default)]
pub struct TaskSet {
    /// Task ids, with the resources each holds.
    pub running: BTreeMap<String, crate::resources::Resources>,
    /// Those with a health check whose last check passed.
    pub healthy: BTreeSet<String>,
    /// How many times the agent registered again (the heartbeat loop counts).
    pub registrations: u64,
    /// The deployment version each task was launched with, where it has one.
    pub versions: BTreeMap<String, String>,
}

impl TaskSet {
    fn add(&mut self, id: &str, resources: crate::resources::Resources, version: &str) {
        self.running.insert(id.to_string(), resources);
        if !version.is_empty() {
            self.versions.insert(id.to_string(), version.to_string());
        }
    }

    fn remove(&mut self, id: &str) {
        self.running.remove(id);
        self.healthy.remove(id);
        self.versions.remove(id);
    }
}

/// The agent's face on the mesh (`$agent`): launches and kills tasks for the master only.
pub struct AgentGate {
    node: Node,
    host: ActorHost,
    agent_id: String,
    /// The master this agent follows: reports go to it, and only its orders are obeyed.
    master: crate::masters::FollowedMaster,
    tasks: BTreeMap<String, Task>,
    commands: BTreeMap<String, CommandEntry>,
    task_ids: TaskIds,
    sandboxes: PathBuf,
    /// Health checks, by task id.
    health: BTreeMap<String, Health>,
    /// Status reports until the master is done with them (at least once).
    reports: ReportBook,
    /// Registrations seen (from the shared task set): a new one sends the kept reports.
    registrations: u64,
    /// This actor's address, for the report tries.
    me: Option<Addr<AgentGate>>,
    /// Tasks being killed for failing their health check, with why.
    unhealthy: BTreeMap<String, String>,
}

/// Where command tasks' sandboxes live under an agent's data directory.
pub const SANDBOXES: &str = "sandboxes";
/// Written into a sandbox once the master has acknowledged the task's end.
const REPORTED: &str = "end_reported";
/// How long the sandbox of an ended, reported task is kept (for its logs).
const SANDBOX_KEEP: Duration = Duration::from_secs(24 * 3600);

/// A task id that is safe as a directory name and an actor name.
fn valid_task_id(id: &str) -> Result<(), InvalidTaskId> {
    crate::protocol::check_task_id(id, 200)
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
        master: crate::masters::FollowedMaster,
        sandboxes: PathBuf,
        recovered: Vec<command::Running>,
        task_ids: TaskIds,
    ) -> Self {
        let mut commands = BTreeMap::new();
        let mut health = BTreeMap::new();
        for running in recovered {
            let Some(id) = running
                .dir()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
            else {
                continue;
            };
            task_ids.lock().unwrap_or_else(|e| e.into_inner()).add(
                &id,
                running.task().resources.clone(),
                &running.task().version,
            );
            if let Some(spec) = std::fs::read(running.dir().join(HEALTH_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<HealthSpec>(&b).ok())
            {
                health.insert(id.clone(), Health::new(spec));
            }
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
            master,
            tasks: BTreeMap::new(),
            commands,
            task_ids,
            sandboxes,
            health,
            unhealthy: BTreeMap::new(),
            reports: ReportBook::new(agent_id.clone()),
            agent_id,
            registrations: 0,
            me: None,
        }
    }

    /// Reports a task's new state to the master, again and again (capped backoff) until the
    /// master acknowledges it.
    fn report(&mut self, task_id: &str, state: TaskState, message: String) {
        self.report_then(task_id, state, message, None, None);
    }

    /// Like [`Self::report`]; once the master is done with the report, `mark` (if any) is
    /// created, so that a restarted agent knows the end was delivered.
    fn report_then(
        &mut self,
        task_id: &str,
        state: TaskState,
        message: String,
        mark: Option<PathBuf>,
        healthy: Option<bool>,
    ) {
        let now = Instant::now();
        self.reports
            .report(task_id, state, message, healthy, mark, now);
        self.send_due_reports(now);
    }

    /// Sends the reports the book says are due; each answer comes back as [`ReportAnswered`].
    fn send_due_reports(&mut self, now: Instant) {
        // Reports filed before `started` wait in the book for the first poll.
        let Some(gate) = self.me.clone() else {
            return;
        };
        for (attempt, report) in self.reports.due(now) {
            let (master, gate) = (self.master.actor_ref(&self.node), gate.clone());
            actix::spawn(async move {
                let task = report.status.task_id.clone();
                let answer = match master.ask_timeout(report, Duration::from_secs(5)).await {
                    Ok(Ok(ack)) if ack.keep => MasterAnswer::Keep,
                    Ok(Ok(_)) => MasterAnswer::Taken,
                    Ok(Err(MasterRefusal::Removed(e))) => {
                        warn!(%task, error = %e, "this agent was removed; the status report is dropped");
                        MasterAnswer::Refused
                    }
                    Ok(Err(MasterRefusal::Forbidden(e))) => {
                        warn!(%task, error = %e, "the master refuses this status report; dropped");
                        MasterAnswer::Refused
                    }
                    Ok(Err(e)) => {
                        warn!(%task, error = %e, "status report refused; retrying");
                        MasterAnswer::NotDelivered
                    }
                    Err(e) => {
                        warn!(%task, error = %e, "status report not delivered; retrying");
                        MasterAnswer::NotDelivered
                    }
                };
                gate.do_send(ReportAnswered { attempt, answer });
            });
        }
    }

    /// Orders come from the master this agent follows only, and of no older term than
    /// one obeyed: of several masters, an old leader (one paused, then resumed) is refused,
    /// and so is a delayed order of an earlier leadership.
    fn check_followed(&self) -> Result<(), TaskRefusal> {
        self.check_from_master(true)
    }

    /// A query about a task (its log, its state) comes from the master this agent
    /// follows; it changes nothing, so it needs no term.
    fn check_query(&self) -> Result<(), TaskRefusal> {
        self.check_from_master(false)
    }

    fn check_from_master(&self, order: bool) -> Result<(), TaskRefusal> {
        use crate::masters::Disobeyed;
        let Some(caller) = crate::caller() else {
            return Err(TaskRefusal::NoCaller);
        };
        if !order {
            return match self.master.obeys(&caller) {
                true => Ok(()),
                false if caller.is_master() => Err(TaskRefusal::NotFollowed {
                    caller,
                    followed: self.master.get().identity,
                }),
                false => Err(TaskRefusal::NotTheMaster(caller)),
            };
        }
        let term = crate::masters::order_term().map_err(TaskRefusal::BadTerm)?;
        match self.master.check_order(&caller, term) {
            Ok(()) => Ok(()),
            Err(Disobeyed::NotAMaster(c)) => Err(TaskRefusal::NotTheMaster(c)),
            Err(Disobeyed::NotFollowed { caller, followed }) => {
                Err(TaskRefusal::NotFollowed { caller, followed })
            }
            Err(e @ (Disobeyed::OlderTerm { .. } | Disobeyed::NoTerm { .. })) => {
                Err(TaskRefusal::OlderTerm(e))
            }
        }
    }
}

impl Actor for AgentGate {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.me = Some(ctx.address());
        // Command tasks are watched through their sandboxes (the exit status the wrapper
        // writes) and /proc, which works the same for re-attached processes.
        ctx.run_interval(COMMAND_POLL, |gate, ctx| {
            gate.poll_commands();
            gate.poll_health(ctx);
            gate.resend_kept();
            gate.send_due_reports(Instant::now());
        });
    }
}

/// How often command tasks are checked for their end.
const COMMAND_POLL: Duration = Duration::from_millis(100);

/// How often a killed actor's mailbox is looked at before it stops.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// How long a killed actor's mailbox must stay empty before it stops: calls sent just
/// before the kill arrive within this on a working link, and the handler of the last one
/// (an async one too) finishes within it if it is short.
const DRAIN_QUIET: Duration = Duration::from_millis(50);
/// The longest a kill waits for a busy mailbox.
const DRAIN_MAX: Duration = Duration::from_secs(1);

/// When a killed actor task may stop: once its mailbox stayed empty for [`DRAIN_QUIET`],
/// or [`DRAIN_MAX`] after the kill, whichever comes first; or at once if it is gone.
#[derive(Debug)]
struct MailboxDrain {
    killed: Instant,
    empty_since: Option<Instant>,
}

impl MailboxDrain {
    fn new(killed: Instant) -> Self {
        Self {
            killed,
            empty_since: None,
        }
    }

    /// Whether to stop now, seeing `depth` queued messages (`None`: no such actor).
    fn ready(&mut self, depth: Option<usize>, now: Instant) -> bool {
        let Some(depth) = depth else {
            return true;
        };
        if now.saturating_duration_since(self.killed) >= DRAIN_MAX {
            return true;
        }
        if depth > 0 {
            self.empty_since = None;
            return false;
        }
        let since = *self.empty_since.get_or_insert(now);
        now.saturating_duration_since(since) >= DRAIN_QUIET
    }
}

/// The master answered one try at a status report.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct ReportAnswered {
    attempt: Attempt,
    answer: MasterAnswer,
}

impl Handler<ReportAnswered> for AgentGate {
    type Result = ();
    fn handle(&mut self, m: ReportAnswered, _: &mut Context<Self>) {
        if let Some(mark) = self.reports.answered(m.attempt, m.answer, Instant::now()) {
            let _ = std::fs::write(mark, b"");
        }
    }
}

#[crate::handler]
impl Handler<ReleaseStatus> for AgentGate {
    type Result = Result<(), String>;
    fn handle(&mut self, m: ReleaseStatus, _: &mut Context<Self>) -> Self::Result {
        self.check_followed().map_err(|e| e.to_string())?;
        if let Some(mark) = self.reports.released(&m.task_id) {
            let _ = std::fs::write(mark, b"");
        }
        Ok(())
    }
}

impl AgentGate {
    /// Stops command task `id`: SIGTERM now, SIGKILL if it still runs after its grace.
    /// False if there is no such command task.
    fn stop_command(&mut self, id: &str, ctx: &mut Context<Self>) -> bool {
        let Some(c) = self.commands.get_mut(id) else {
            return false;
        };
        c.running.terminate();
        let (grace, id) = (c.grace, id.to_string());
        ctx.run_later(grace, move |gate, _| {
            if let Some(c) = gate.commands.get(&id) {
                warn!(task = %id, ?grace, "command task did not stop in its grace period; SIGKILL");
                c.running.force();
            }
        });
        true
    }

    /// After each registration, the kept reports go to the master again (it may be a new
    /// master that never saw them); the next [`Self::send_due_reports`] sends them.
    fn resend_kept(&mut self) {
        let registrations = self
            .task_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .registrations;
        if registrations != self.registrations {
            self.registrations = registrations;
            self.reports.registered(Instant::now());
        }
    }

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
            entry.running.release();
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
            self.health.remove(&id);
            let (state, message) = match self.unhealthy.remove(&id) {
                Some(why) => (TaskState::Failed, why),
                None => (state, message),
            };
            info!(task = %id, ?state, %message, "command task ended");
            self.report_then(
                &id,
                state,
                message,
                Some(entry.running.dir().join(REPORTED)),
                None,
            );
        }
    }

    fn sandbox_of(&self, task_id: &str) -> Result<PathBuf, TaskRefusal> {
        valid_task_id(task_id)?;
        let dir = self.sandboxes.join(task_id);
        if dir.is_dir() {
            Ok(dir)
        } else if self.tasks.values().any(|t| t.id == task_id) {
            Err(TaskRefusal::NoCapturedOutput(task_id.to_string()))
        } else {
            Err(self.no_such_task(task_id))
        }
    }

    fn no_such_task(&self, task_id: &str) -> TaskRefusal {
        TaskRefusal::NoSuchTask {
            task_id: task_id.to_string(),
            agent: self.agent_id.clone(),
        }
    }
}

// The replies of task requests stay text on the wire (see `TaskRefusal`).
#[crate::handler]
impl Handler<LaunchCommand> for AgentGate {
    type Result = Result<(), String>;
    fn handle(&mut self, m: LaunchCommand, _: &mut Context<Self>) -> Self::Result {
        self.launch_command(m).map_err(|e| e.to_string())
    }
}

impl AgentGate {
    fn launch_command(&mut self, m: LaunchCommand) -> Result<(), TaskRefusal> {
        self.check_followed()?;
        let id = m.task.id.clone();
        valid_task_id(&id)?;
        if self.commands.contains_key(&id) {
            return Ok(()); // A retried launch: already running.
        }
        let sandbox = self.sandboxes.join(&id);
        if sandbox.exists() {
            return Err(TaskRefusal::IdUsedBefore {
                id,
                agent: self.agent_id.clone(),
                sandbox,
            });
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
                if let Some(spec) = m.health.clone() {
                    if let Ok(json) = serde_json::to_vec(&spec) {
                        let _ = std::fs::write(running.dir().join(HEALTH_FILE), json);
                    }
                    self.health.insert(id.clone(), Health::new(spec));
                }
                self.task_ids.lock().unwrap_or_else(|e| e.into_inner()).add(
                    &id,
                    m.task.resources.clone(),
                    &m.task.version,
                );
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
                Err(e.into())
            }
        }
    }
}

#[crate::handler]
impl Handler<ReadTaskLog> for AgentGate {
    type Result = Result<TaskLog, String>;
    fn handle(&mut self, m: ReadTaskLog, _: &mut Context<Self>) -> Self::Result {
        self.read_log(m).map_err(|e| e.to_string())
    }
}

impl AgentGate {
    fn read_log(&self, m: ReadTaskLog) -> Result<TaskLog, TaskRefusal> {
        self.check_query()?;
        let file = self.sandbox_of(&m.task_id)?.join(match m.stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        });
        read_tail(&file, m.max_bytes).map_err(|source| TaskRefusal::ReadLog { file, source })
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
        self.describe(m).map_err(|e| e.to_string())
    }
}

impl AgentGate {
    fn describe(&self, m: DescribeTask) -> Result<TaskDetail, TaskRefusal> {
        self.check_query()?;
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
        let Some(ended) = command::reattach(&dir) else {
            return Err(TaskRefusal::NoCheckpoint {
                task_id: m.task_id,
                sandbox: dir,
            });
        };
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
        self.launch_actor(m, ctx).map_err(|e| e.to_string())
    }
}

#[crate::handler]
impl Handler<LaunchActorV1> for AgentGate {
    type Result = Result<(), String>;
    fn handle(&mut self, m: LaunchActorV1, ctx: &mut Context<Self>) -> Self::Result {
        self.launch_actor(m.into(), ctx).map_err(|e| e.to_string())
    }
}

impl AgentGate {
    fn launch_actor(&mut self, m: LaunchActor, ctx: &mut Context<Self>) -> Result<(), TaskRefusal> {
        self.check_followed()?;
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
            return Err(TaskRefusal::NotHosted {
                actor_type: m.actor_type,
                hosted: known,
            });
        };
        self.report(&m.task_id, TaskState::Starting, String::new());
        let restart = m
            .restart
            .as_ref()
            .map_or_else(RestartPolicy::on_failure, |r| r.policy());
        let instance = Instance {
            name: m.name.clone(),
            task_id: m.task_id.clone(),
            version: m.version.clone(),
            service: m.workload.clone(),
        };
        match factory(&self.node, &instance, restart) {
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
                if let Some(spec) = m.health.clone() {
                    self.health.insert(m.task_id.clone(), Health::new(spec));
                }
                self.task_ids.lock().unwrap_or_else(|e| e.into_inner()).add(
                    &m.task_id,
                    m.resources.clone(),
                    &m.version,
                );
                self.report(&m.task_id, TaskState::Running, String::new());
                Ok(())
            }
            Err(e) => {
                self.report(&m.task_id, TaskState::Failed, e.to_string());
                Err(e.into())
            }
        }
    }
}

#[crate::handler]
impl Handler<KillTask> for AgentGate {
    type Result = Result<(), String>;
    fn handle(&mut self, m: KillTask, ctx: &mut Context<Self>) -> Self::Result {
        self.kill(m, ctx).map_err(|e| e.to_string())
    }
}

impl AgentGate {
    fn kill(&mut self, m: KillTask, ctx: &mut Context<Self>) -> Result<(), TaskRefusal> {
        self.check_followed()?;
        if self.stop_command(&m.task_id, ctx) {
            return Ok(());
        }
        let Some(task) = self.tasks.values_mut().find(|t| t.id == m.task_id) else {
            return Err(self.no_such_task(&m.task_id));
        };
        task.kill_requested = true;
        let name = task.name.clone();
        // Calls already queued in its mailbox are answered first (a kill of an endpoint
        // comes once the proxies stopped sending, but calls they sent just before may
        // still be queued or on their way): stopping at once would fail them `Stopped`.
        let node = self.node.clone();
        actix::spawn(async move {
            let mut drain = MailboxDrain::new(Instant::now());
            while !drain.ready(node.mailbox_depth(&name), Instant::now()) {
                tokio::time::sleep(DRAIN_POLL).await;
            }
            node.stop(&name);
        });
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
        self.health.remove(&task.id);
        let unhealthy = self.unhealthy.remove(&task.id);
        let (state, message) = match (&t.reason, task.kill_requested) {
            _ if unhealthy.is_some() => (TaskState::Failed, unhealthy.unwrap_or_default()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_actor_stops_once_its_mailbox_stayed_empty_or_the_drain_bound_passed() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut d = MailboxDrain::new(t);
        assert!(
            !d.ready(Some(2), t),
            "calls queued: they are answered first"
        );
        assert!(!d.ready(Some(0), t + ms(5)), "empty, not yet for long");
        assert!(!d.ready(Some(1), t + ms(20)), "a call arrived: wait again");
        assert!(!d.ready(Some(0), t + ms(25)));
        assert!(!d.ready(Some(0), t + ms(74)));
        assert!(d.ready(Some(0), t + ms(75)), "empty for DRAIN_QUIET");

        let mut busy = MailboxDrain::new(t);
        assert!(!busy.ready(Some(9), t + DRAIN_MAX - ms(1)));
        assert!(busy.ready(Some(9), t + DRAIN_MAX), "bounded");
        assert!(MailboxDrain::new(t).ready(None, t), "already gone");
    }
}
