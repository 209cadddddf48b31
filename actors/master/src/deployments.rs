//! The built-in deployment controller, as plain state with time passed in: given the
//! deployments, the tasks and a view of the agents, decide which instances to launch and
//! which to kill so that every deployment has its replicas running. The master carries
//! out the decisions.
//!
//! - Actor deployments (a type the agents host) and command deployments (OS processes).
//! - Placement honours resources (at least `need`, then up to `want` where free, higher
//!   priority first), the node selector, unique node and spread by attribute.
//! - The restart policy: `never` leaves an ended instance's slot filled, `on-failure`
//!   replaces failed instances, `always` replaces ended ones too. Failures back off
//!   exponentially (reset once an instance ran for `backoff_max`).
//! - Rolling updates: when the version changes, new instances replace old ones without
//!   exceeding `replicas + max_surge` instances or dropping below
//!   `replicas - max_unavailable` running ones.
//! - Instances on lost agents are replaced; an instance that comes back after it was
//!   replaced is killed; instances of deleted deployments are killed when found.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::frameworks::{TaskState, TaskStatus};
use crate::manifest::Deployment;
use actormesh::agent::command::CommandTask;
use actormesh::resources::Resources;

/// What the controller knows of an agent.
#[derive(Debug, Clone)]
pub struct AgentView {
    /// Agent id.
    pub id: String,
    /// Active, registered and not draining.
    pub up: bool,
    /// Its resources are offered to the deployments now (not held by another framework's
    /// offer, nor refused by the deployments a moment ago).
    pub usable: bool,
    /// Actor types it hosts.
    pub actor_types: Vec<String>,
    /// Its attributes.
    pub attrs: BTreeMap<String, String>,
    /// What the deployments may use there now: the allocator's offer to them.
    pub free: Resources,
}

/// What an instance runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Launchable {
    /// An instance of an actor type the agent hosts, with its supervision on the agent.
    Actor(String, Option<actormesh::protocol::RestartSpec>),
    /// An OS process.
    Command(Box<CommandTask>),
}

/// A decision for the master to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start an instance.
    Launch {
        /// Task id (also the instance name).
        task_id: String,
        /// On which agent.
        agent: String,
        /// What to run.
        what: Launchable,
        /// Its health check, run by the agent.
        health: Option<actormesh::protocol::HealthSpec>,
    },
    /// Stop an instance.
    Kill {
        /// Task id.
        task_id: String,
        /// On which agent.
        agent: String,
    },
}

/// One instance of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEntry {
    /// Task id.
    pub id: String,
    /// `namespace/name` of its deployment.
    pub deployment: String,
    /// The deployment version it runs.
    #[serde(default)]
    pub version: String,
    /// Its agent.
    pub agent: String,
    /// Its state.
    pub state: TaskState,
    /// Why, when it ended.
    pub message: String,
    /// The resources it holds: at least the deployment's need, up to its want.
    pub resources: Resources,
    /// Creation order.
    #[serde(default)]
    pub seq: u64,
    /// Since when it runs.
    #[serde(skip)]
    pub running_since: Option<Instant>,
    /// With a health check: whether the last check passed (`None`: not checked yet).
    #[serde(default)]
    pub healthy: Option<bool>,
    /// Killed on request, and its end not reported yet: it may run for its kill grace, so
    /// it still holds its resources.
    #[serde(default)]
    pub stopping: bool,
}

impl TaskEntry {
    fn live(&self) -> bool {
        matches!(
            self.state,
            TaskState::Staging | TaskState::Starting | TaskState::Running
        )
    }

    /// Running, and healthy if `checked`: it counts as available.
    fn available(&self, checked: bool) -> bool {
        self.state == TaskState::Running && (!checked || self.healthy == Some(true))
    }
}

/// A deployment's standing, for `get deployments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSummary {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Version label.
    pub version: String,
    /// Replicas asked for.
    pub replicas: u32,
    /// Instances Running.
    pub running: u32,
    /// Instances Staging or Starting.
    pub pending: u32,
    /// Live instances of an earlier version (a rolling update is under way).
    #[serde(default)]
    pub old: u32,
    /// Instances that ended and, by the restart policy, are not replaced.
    #[serde(default)]
    pub done: u32,
    /// Why replicas are missing, if they are.
    pub unplaced: Option<String>,
}

/// One deployment in full, for `describe deployment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentDescription {
    /// Its standing.
    pub summary: DeploymentSummary,
    /// The manifest as applied.
    pub manifest: crate::manifest::Manifest,
    /// Parsed need per instance.
    pub need: Resources,
    /// Parsed want per instance.
    pub want: Resources,
    /// Failures in a row (the restart backoff grows with them).
    pub failures: u32,
    /// Its tasks, newest first (ended ones up to the history kept).
    pub tasks: Vec<TaskEntry>,
}

/// A change in what the deployments hold on an agent, for the allocator.
#[derive(Debug, Clone, PartialEq)]
pub enum Holding {
    /// Now held without an offer (an instance adopted, or one that came back).
    Took {
        /// The agent.
        agent: String,
        /// What.
        resources: Resources,
    },
    /// Given back (an instance ended).
    Freed {
        /// The agent.
        agent: String,
        /// What.
        resources: Resources,
    },
}

/// Failures of a deployment's instances, for the restart backoff.
#[derive(Debug, Clone, Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

/// Deployments and their tasks.
#[derive(Debug, Default)]
pub struct DeploymentBook {
    deployments: BTreeMap<String, Deployment>,
    tasks: BTreeMap<String, TaskEntry>,
    unplaced: BTreeMap<String, String>,
    backoff: BTreeMap<String, Backoff>,
    /// Holdings changed since the master last asked.
    ledger: Vec<Holding>,
    next: u64,
    /// Differs per master process, so task ids never repeat across restarts.
    epoch: u32,
}

/// Ended instances kept per deployment (beyond those that fill a slot), for `get tasks`.
pub const HISTORY: usize = 20;

/// The instance name (and task id) prefix of a deployment: `namespace.name-`.
fn task_prefix(d: &Deployment) -> String {
    format!("{}.{}-", d.manifest.namespace, d.manifest.name)
}

/// Whether `id` has the shape of a deployment task id (`namespace.name-suffix`).
fn looks_like_deployment_task(id: &str) -> bool {
    id.split_once('.').is_some_and(|(ns, rest)| {
        !ns.is_empty()
            && ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && rest.contains('-')
    })
}

/// The key of a deployment: `namespace/name`.
pub fn key(d: &Deployment) -> String {
    format!("{}/{}", d.manifest.namespace, d.manifest.name)
}

/// Whether an ended task fills its replica slot for good under `policy`.
fn fills_slot(policy: &str, state: TaskState) -> bool {
    match policy {
        "never" => matches!(
            state,
            TaskState::Finished | TaskState::Failed | TaskState::Error
        ),
        "on-failure" => state == TaskState::Finished,
        _ => false,
    }
}

/// What an instance `task_id` of `d` runs, holding `held`.
fn launchable(d: &Deployment, task_id: &str, held: &Resources) -> Launchable {
    match (&d.manifest.spec.actor, &d.manifest.spec.command) {
        (Some(a), _) => Launchable::Actor(
            a.clone(),
            Some(actormesh::protocol::RestartSpec {
                policy: d.manifest.spec.restart.policy.clone(),
                backoff_initial_ms: d.backoff.0.as_millis() as u64,
                backoff_max_ms: d.backoff.1.as_millis() as u64,
            }),
        ),
        (None, Some(c)) => Launchable::Command(Box::new(CommandTask {
            id: task_id.to_string(),
            path: c.path.clone(),
            args: c.args.clone(),
            env: c.env.clone(),
            mem_bytes: held
                .scalars
                .get("mem")
                .map(|mib| (mib * 1024.0 * 1024.0) as u64),
            cpus: held.scalars.get("cpus").copied(),
            kill_grace_ms: d.kill_grace.as_millis() as u64,
            resources: held.clone(),
            version: d.manifest.spec.version.clone(),
        })),
        // The manifest is validated: one of the two is set.
        (None, None) => Launchable::Actor(String::new(), None),
    }
}

impl DeploymentBook {
    /// An empty book for a master process started with `epoch` (any number that differs
    /// from earlier processes', e.g. random).
    pub fn new(epoch: u32) -> Self {
        Self {
            epoch,
            ..Default::default()
        }
    }

    /// What the deployments took or gave back since the last call (launches through
    /// offers are not listed: the offer already counted them).
    pub fn take_holdings(&mut self) -> Vec<Holding> {
        std::mem::take(&mut self.ledger)
    }

    /// Moves task `id` to an end `state`. A live task's resources are given back, except
    /// on a kill: the instance may run for its kill grace, so they are held until its end
    /// is reported (or its agent is lost).
    fn end(&mut self, id: &str, state: TaskState, message: &str) {
        if let Some(t) = self.tasks.get_mut(id) {
            if t.live() {
                if state == TaskState::Killed {
                    t.stopping = true;
                } else {
                    self.ledger.push(Holding::Freed {
                        agent: t.agent.clone(),
                        resources: t.resources.clone(),
                    });
                }
            }
            t.state = state;
            t.message = message.to_string();
        }
        if state != TaskState::Killed {
            self.stopped(id);
        }
    }

    /// The agent of killed instance `id` does not run it: what it held is given back.
    /// Returns whether it held anything.
    pub fn kill_found_nothing(&mut self, id: &str) -> bool {
        let stopping = self.tasks.get(id).is_some_and(|t| t.stopping);
        self.stopped(id);
        stopping
    }

    /// A killed instance is gone for sure: what it held is given back.
    fn stopped(&mut self, id: &str) {
        if let Some(t) = self.tasks.get_mut(id).filter(|t| t.stopping) {
            t.stopping = false;
            self.ledger.push(Holding::Freed {
                agent: t.agent.clone(),
                resources: t.resources.clone(),
            });
        }
    }

    fn owner_of(&self, task_id: &str) -> Option<(&String, &Deployment)> {
        self.deployments
            .iter()
            .find(|(_, d)| task_id.starts_with(&task_prefix(d)))
    }

    fn live_count(&self, key: &str) -> usize {
        self.tasks
            .values()
            .filter(|t| t.deployment == key && t.live())
            .count()
    }

    /// An agent (re)registered and runs the tasks in `running`. Returns the kills to send
    /// it:
    /// - instances of known deployments the book does not know (the master restarted) are
    ///   adopted as Running, so they are counted and never started twice;
    /// - an instance that was given up as Lost comes back Running if its deployment still
    ///   lacks it, and is killed if it was replaced meanwhile;
    /// - instances of deployments that no longer exist, or already killed, are killed;
    /// - instances the book has Starting or Running there that the agent no longer runs
    ///   are Lost (the agent restarted), and will be replaced.
    pub fn adopt(
        &mut self,
        agent: &str,
        running: &[String],
        healthy: &[String],
        held: &BTreeMap<String, Resources>,
        versions: &BTreeMap<String, String>,
        now: Instant,
    ) -> Vec<Action> {
        let reported: BTreeSet<&String> = running.iter().collect();
        let healthy: BTreeSet<&String> = healthy.iter().collect();
        for name in running {
            if let Some(t) = self.tasks.get_mut(name) {
                if t.agent == agent && healthy.contains(name) {
                    t.healthy = Some(true);
                }
            }
        }
        let gone: Vec<String> = self
            .tasks
            .values()
            .filter(|t| {
                t.agent == agent
                    && matches!(t.state, TaskState::Starting | TaskState::Running)
                    && !reported.contains(&t.id)
            })
            .map(|t| t.id.clone())
            .collect();
        for id in gone {
            self.end(
                &id,
                TaskState::Lost,
                &format!("agent {agent} restarted and no longer runs it"),
            );
        }
        let stopped: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.agent == agent && t.stopping && !reported.contains(&t.id))
            .map(|t| t.id.clone())
            .collect();
        for id in stopped {
            self.stopped(&id);
        }
        let mut kills = Vec::new();
        let kill = |id: &str| Action::Kill {
            task_id: id.to_string(),
            agent: agent.to_string(),
        };
        for name in running {
            if let Some(t) = self.tasks.get(name) {
                if t.live() {
                    continue;
                }
                let (dep, state, version) = (t.deployment.clone(), t.state, t.version.clone());
                let wanted = self.deployments.get(&dep).is_some_and(|d| {
                    d.manifest.spec.version == version
                        && self.live_count(&dep) < d.manifest.spec.replicas as usize
                });
                let t = self.tasks.get_mut(name).expect("looked up above");
                if matches!(state, TaskState::Lost | TaskState::Unreachable) && wanted {
                    t.state = TaskState::Running;
                    t.agent = agent.to_string();
                    t.running_since = Some(now);
                    t.message = format!("came back with agent {agent}");
                    self.ledger.push(Holding::Took {
                        agent: agent.to_string(),
                        resources: t.resources.clone(),
                    });
                } else {
                    if matches!(state, TaskState::Lost | TaskState::Unreachable) {
                        t.message = format!("came back with agent {agent} after it was replaced");
                    }
                    t.state = TaskState::Killed;
                    // It runs there until the kill ends it: what it holds is counted
                    // (`rebuild_agent` counts stopping instances) until then.
                    t.agent = agent.to_string();
                    t.stopping = true;
                    kills.push(kill(name));
                }
                continue;
            }
            match self.owner_of(name).map(|(k, d)| (k.clone(), d.clone())) {
                Some((deployment, d)) => {
                    self.next += 1;
                    let resources = held.get(name).cloned().unwrap_or_else(|| d.need.clone());
                    self.ledger.push(Holding::Took {
                        agent: agent.to_string(),
                        resources: resources.clone(),
                    });
                    self.tasks.insert(
                        name.clone(),
                        TaskEntry {
                            id: name.clone(),
                            deployment,
                            // As launched; a version applied while the master was down
                            // is rolled onto it. (Unknown: assumed current.)
                            version: versions
                                .get(name)
                                .cloned()
                                .unwrap_or_else(|| d.manifest.spec.version.clone()),
                            agent: agent.to_string(),
                            state: TaskState::Running,
                            message: "adopted after a master restart".into(),
                            resources,
                            seq: self.next,
                            running_since: Some(now),
                            healthy: healthy.contains(name).then_some(true),
                            stopping: false,
                        },
                    );
                }
                None if looks_like_deployment_task(name) => kills.push(kill(name)),
                None => {}
            }
        }
        kills
    }

    /// Adds or replaces a deployment. A new version starts a rolling update.
    pub fn apply(&mut self, d: Deployment) -> String {
        let k = key(&d);
        if self
            .deployments
            .get(&k)
            .is_none_or(|old| old.manifest.spec != d.manifest.spec)
        {
            // A changed spec gets a fresh start: no backoff from the old one.
            self.backoff.remove(&k);
        }
        self.deployments.insert(k.clone(), d);
        k
    }

    /// Removes deployment `key`; returns the kills that stop its live instances, or `None`
    /// if there is no such deployment.
    pub fn delete(&mut self, key: &str) -> Option<Vec<Action>> {
        self.deployments.remove(key)?;
        self.unplaced.remove(key);
        self.backoff.remove(key);
        let live: Vec<(String, String)> = self
            .tasks
            .values()
            .filter(|t| t.deployment == key && t.live())
            .map(|t| (t.id.clone(), t.agent.clone()))
            .collect();
        let mut kills = Vec::new();
        for (task_id, agent) in live {
            self.end(&task_id, TaskState::Killed, "its deployment was deleted");
            kills.push(Action::Kill { task_id, agent });
        }
        Some(kills)
    }

    /// The deployments.
    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments.values()
    }

    /// The tasks.
    pub fn tasks(&self) -> impl Iterator<Item = &TaskEntry> {
        self.tasks.values()
    }

    /// A task of the book.
    pub fn task(&self, id: &str) -> Option<&TaskEntry> {
        self.tasks.get(id)
    }

    /// A task's reported state. A task the book already counts as ended stays ended (an
    /// instance that comes back is handled by [`Self::adopt`]).
    pub fn on_status(&mut self, s: &TaskStatus, now: Instant) {
        if s.state.is_terminal() {
            self.stopped(&s.task_id);
        }
        let Some(t) = self.tasks.get_mut(&s.task_id) else {
            return;
        };
        // Ended stays ended, a repeated end changes nothing (a retried report must not count
        // a failure twice), and a late Starting does not undo Running.
        if (t.state.is_terminal() && (!s.state.is_terminal() || s.state == t.state))
            || (s.state == TaskState::Starting && t.state == TaskState::Running)
        {
            return;
        }
        if t.live() && s.state.is_terminal() {
            self.ledger.push(Holding::Freed {
                agent: t.agent.clone(),
                resources: t.resources.clone(),
            });
        }
        // Killed on request stays Killed, whatever the instance's last words.
        if t.state == TaskState::Killed && s.state.is_terminal() {
            if t.message.is_empty() {
                t.message = s.message.clone();
            }
            return;
        }
        t.state = s.state;
        t.message = s.message.clone();
        if s.healthy.is_some() {
            t.healthy = s.healthy;
        }
        if s.state == TaskState::Running && t.running_since.is_none() {
            t.running_since = Some(now);
        }
        if matches!(s.state, TaskState::Failed | TaskState::Error) {
            let (dep, ran) = (
                t.deployment.clone(),
                t.running_since
                    .map(|since| now.saturating_duration_since(since)),
            );
            self.failed(&dep, ran.unwrap_or_default(), now);
        }
    }

    /// An instance of `key` failed after running for `ran`: the next launch waits.
    fn failed(&mut self, key: &str, ran: Duration, now: Instant) {
        let Some(d) = self.deployments.get(key) else {
            return;
        };
        let (initial, max) = d.backoff;
        let b = self.backoff.entry(key.to_string()).or_default();
        if ran >= max {
            b.failures = 0;
        }
        b.failures += 1;
        let delay = initial
            .checked_mul(1 << (b.failures - 1).min(20))
            .unwrap_or(max)
            .min(max);
        b.not_before = Some(now + delay);
    }

    /// Instances on `agent` are gone (the agent was lost or is unreachable): they will be
    /// replaced.
    pub fn agent_lost(&mut self, agent: &str) {
        let live: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.agent == agent && t.live())
            .map(|t| t.id.clone())
            .collect();
        for id in live {
            self.end(&id, TaskState::Lost, &format!("agent {agent} was lost"));
        }
        let stopping: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.agent == agent && t.stopping)
            .map(|t| t.id.clone())
            .collect();
        for id in stopping {
            self.stopped(&id);
        }
    }

    /// A launch could not be carried out.
    pub fn launch_failed(&mut self, task_id: &str, why: &str, now: Instant) {
        let Some(dep) = self
            .tasks
            .get(task_id)
            .filter(|t| t.live())
            .map(|t| t.deployment.clone())
        else {
            return;
        };
        self.end(task_id, TaskState::Failed, why);
        self.failed(&dep, Duration::ZERO, now);
    }

    /// Decides what to launch and kill so that every deployment has its replicas, higher
    /// priority first.
    pub fn reconcile(&mut self, agents: &[AgentView], now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        // What is left of each agent's free resources as this round places instances.
        let mut left: BTreeMap<String, Resources> = agents
            .iter()
            .map(|a| (a.id.clone(), a.free.clone()))
            .collect();
        let mut keys: Vec<(i32, String)> = self
            .deployments
            .iter()
            .map(|(k, d)| (d.manifest.spec.priority, k.clone()))
            .collect();
        keys.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        // Launched this round: grown towards their want once every need is placed.
        let mut launched: Vec<(usize, String)> = Vec::new();
        for (_, k) in keys {
            let d = self.deployments[&k].clone();
            self.plan(&k, &d, agents, &mut left, &mut actions, &mut launched, now);
        }
        // Second pass, same order: wants beyond needs, where resources are still free.
        for (i, agent) in launched {
            let Action::Launch { task_id, what, .. } = &mut actions[i] else {
                continue;
            };
            let Some(t) = self.tasks.get_mut(task_id.as_str()) else {
                continue;
            };
            let Some(d) = self.deployments.get(&t.deployment) else {
                continue;
            };
            let l = left.entry(agent).or_default();
            let free = l.plus(&t.resources);
            if let Some(held) = free.take_between(&t.resources, &d.want) {
                *l = free.minus(&held);
                t.resources = held;
                *what = launchable(d, task_id, &t.resources);
            }
        }
        self.prune();
        actions
    }

    /// One deployment's launches and kills.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &mut self,
        k: &str,
        d: &Deployment,
        agents: &[AgentView],
        left: &mut BTreeMap<String, Resources>,
        actions: &mut Vec<Action>,
        launched: &mut Vec<(usize, String)>,
        now: Instant,
    ) {
        let spec = &d.manifest.spec;
        let version = &spec.version;
        let policy = spec.restart.policy.as_str();
        let done = self
            .tasks
            .values()
            .filter(|t| t.deployment == k && &t.version == version && fills_slot(policy, t.state))
            .count();
        let target = (spec.replicas as usize).saturating_sub(done);
        let checked = d.health.is_some();
        let surge = spec.rolling_update.max_surge as usize;
        let min_available = target.saturating_sub(spec.rolling_update.max_unavailable as usize);
        // Counted first, without copying anything: in the steady state there is nothing to
        // kill, and a round stays one pass over the tasks.
        let (mut new_count, mut old_count, mut available) = (0usize, 0usize, 0usize);
        for t in self
            .tasks
            .values()
            .filter(|t| t.deployment == k && t.live())
        {
            if &t.version == version {
                new_count += 1;
            } else {
                old_count += 1;
            }
            if t.available(checked) {
                available += 1;
            }
        }
        let mut live_count = new_count + old_count;
        if new_count > target || old_count > 0 {
            /// What the kills need of a live instance.
            struct Live {
                id: String,
                agent: String,
                seq: u64,
                available: bool,
                current: bool,
            }
            let mut live: Vec<Live> = self
                .tasks
                .values()
                .filter(|t| t.deployment == k && t.live())
                .map(|t| Live {
                    id: t.id.clone(),
                    agent: t.agent.clone(),
                    seq: t.seq,
                    available: t.available(checked),
                    current: &t.version == version,
                })
                .collect();
            // Not yet available first, then the newest: the cheapest to give up.
            live.sort_by_key(|t| (t.available, std::cmp::Reverse(t.seq)));
            let kill = |book: &mut Self, t: &Live, why: &str, actions: &mut Vec<Action>| {
                actions.push(Action::Kill {
                    task_id: t.id.clone(),
                    agent: t.agent.clone(),
                });
                book.end(&t.id, TaskState::Killed, why);
            };
            // Too many of the current version (scaled down): the extras go.
            for t in live.iter().filter(|t| t.current) {
                if new_count <= target {
                    break;
                }
                kill(self, t, "scaled down", actions);
                new_count -= 1;
                live_count -= 1;
                if t.available {
                    available -= 1;
                }
            }
            // Old versions go as far as availability allows (those not available at once).
            for t in live.iter().filter(|t| !t.current) {
                if t.available && available <= min_available {
                    continue;
                }
                kill(self, t, &format!("replaced by version {version}"), actions);
                live_count -= 1;
                if t.available {
                    available -= 1;
                }
            }
        }
        // New instances, within the surge.
        let mut missing = target
            .saturating_sub(new_count)
            .min((target + surge).saturating_sub(live_count));
        if target > new_count && missing == 0 {
            self.unplaced.insert(
                k.to_string(),
                format!(
                    "rolling update to {version}: waiting for instances to run before replacing more (max_surge {surge}, max_unavailable {})",
                    spec.rolling_update.max_unavailable
                ),
            );
            return;
        }
        if missing > 0 {
            if let Some(b) = self.backoff.get(k) {
                if let Some(at) = b.not_before.filter(|at| *at > now) {
                    self.unplaced.insert(
                        k.to_string(),
                        format!(
                            "restarting with backoff after {} failure(s): next launch in {:.1}s",
                            b.failures,
                            (at - now).as_secs_f64()
                        ),
                    );
                    return;
                }
            }
        }
        if missing == 0 {
            self.unplaced.remove(k);
            return;
        }
        let mut on_agent: BTreeMap<String, usize> = BTreeMap::new();
        for t in self
            .tasks
            .values()
            .filter(|t| t.deployment == k && t.live())
        {
            match on_agent.get_mut(t.agent.as_str()) {
                Some(n) => *n += 1,
                None => {
                    on_agent.insert(t.agent.clone(), 1);
                }
            }
        }
        let mut why = None;
        while missing > 0 {
            match self.choose(d, agents, left, &on_agent) {
                Ok(agent) => {
                    let id = format!("{}{:x}{}", task_prefix(d), self.epoch, self.next);
                    self.next += 1;
                    let l = left.entry(agent.clone()).or_default();
                    *l = l.minus(&d.need);
                    *on_agent.entry(agent.clone()).or_default() += 1;
                    self.tasks.insert(
                        id.clone(),
                        TaskEntry {
                            id: id.clone(),
                            deployment: k.to_string(),
                            version: version.clone(),
                            agent: agent.clone(),
                            state: TaskState::Staging,
                            message: String::new(),
                            resources: d.need.clone(),
                            seq: self.next,
                            running_since: None,
                            healthy: None,
                            stopping: false,
                        },
                    );
                    launched.push((actions.len(), agent.clone()));
                    actions.push(Action::Launch {
                        what: launchable(d, &id, &d.need),
                        health: d.health.clone(),
                        task_id: id,
                        agent,
                    });
                    missing -= 1;
                }
                Err(reason) => {
                    why = Some(reason);
                    break;
                }
            }
        }
        match why {
            Some(w) => self.unplaced.insert(k.to_string(), w),
            None => self.unplaced.remove(k),
        };
    }

    /// Drops the oldest ended tasks beyond [`HISTORY`] per deployment (keeping those that
    /// fill a replica slot), so the book stays bounded.
    fn prune(&mut self) {
        let mut ended: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        for t in self
            .tasks
            .values()
            .filter(|t| t.state.is_terminal() && !t.stopping)
        {
            let fills = self.deployments.get(&t.deployment).is_some_and(|d| {
                d.manifest.spec.version == t.version
                    && fills_slot(&d.manifest.spec.restart.policy, t.state)
            });
            if !fills {
                ended
                    .entry(t.deployment.clone())
                    .or_default()
                    .push((t.seq, t.id.clone()));
            }
        }
        for (_, mut list) in ended {
            if list.len() > HISTORY {
                list.sort();
                for (_, id) in &list[..list.len() - HISTORY] {
                    self.tasks.remove(id);
                }
            }
        }
    }

    /// The agent for one more instance of `d`, or why there is none.
    fn choose(
        &self,
        d: &Deployment,
        agents: &[AgentView],
        left: &BTreeMap<String, Resources>,
        on_agent: &BTreeMap<String, usize>,
    ) -> Result<String, String> {
        let c = &d.manifest.spec.constraints;
        let actor_type = d.manifest.spec.actor.as_deref();
        let (mut down, mut no_type, mut selector, mut unique, mut not_offered, mut short) =
            (0, 0, 0, 0, 0, 0);
        let mut fits: Vec<&AgentView> = Vec::new();
        let mut short_of: BTreeSet<String> = BTreeSet::new();
        for a in agents {
            if !a.up {
                down += 1;
            } else if actor_type.is_some_and(|ty| !a.actor_types.iter().any(|t| t == ty)) {
                no_type += 1;
            } else if !c
                .node_selector
                .iter()
                .all(|(k, v)| a.attrs.get(k) == Some(v))
            {
                selector += 1;
            } else if c.unique_node && on_agent.get(&a.id).copied().unwrap_or(0) > 0 {
                unique += 1;
            } else if !a.usable {
                not_offered += 1;
            } else if !left.get(&a.id).is_some_and(|free| free.contains(&d.need)) {
                short += 1;
                let none = Resources::default();
                let free = left.get(&a.id).unwrap_or(&none);
                for k in d.need.kinds() {
                    let mut only: Resources = Resources::default();
                    if let Some(v) = d.need.scalars.get(k) {
                        only.scalars.insert(k.clone(), *v);
                    } else if let Some(r) = d.need.ranges.get(k) {
                        only.ranges.insert(k.clone(), r.clone());
                    } else if let Some(set) = d.need.sets.get(k) {
                        only.sets.insert(k.clone(), set.clone());
                    }
                    if !free.contains(&only) {
                        short_of.insert(k.clone());
                    }
                }
            } else {
                fits.push(a);
            }
        }
        // Spread: the attribute value with the fewest instances, then the emptiest agent.
        let count_for = |a: &AgentView| -> (usize, usize) {
            let by_attr = c.spread_by.as_ref().map_or(0, |attr| {
                let value = a.attrs.get(attr);
                agents
                    .iter()
                    .filter(|o| o.attrs.get(attr) == value)
                    .map(|o| on_agent.get(&o.id).copied().unwrap_or(0))
                    .sum()
            });
            (by_attr, on_agent.get(&a.id).copied().unwrap_or(0))
        };
        if let Some(a) = fits.into_iter().min_by(|x, y| {
            count_for(x)
                .cmp(&count_for(y))
                .then_with(|| x.id.cmp(&y.id))
        }) {
            return Ok(a.id.clone());
        }
        let mut wanted = vec![d.need.to_string()];
        wanted.extend(c.node_selector.iter().map(|(k, v)| format!("{k}={v}")));
        if let Some(ty) = actor_type {
            wanted.push(format!("hosting {ty}"));
        }
        let too_little = if short_of.is_empty() {
            "have too little free".to_string()
        } else {
            format!(
                "have too little free {}",
                short_of.into_iter().collect::<Vec<_>>().join(" or ")
            )
        };
        let mut counts = Vec::new();
        for (n, what) in [
            (down, "not usable (down, draining or not registered)"),
            (no_type, "do not host the type"),
            (selector, "fail the node selector"),
            (unique, "already hold an instance (unique node)"),
            (
                not_offered,
                "are offered to another framework or were just refused",
            ),
            (short, too_little.as_str()),
        ] {
            if n > 0 {
                counts.push(format!("{n} {what}"));
            }
        }
        if counts.is_empty() {
            counts.push("there are no agents".into());
        }
        Err(format!(
            "no agent with {}: {}",
            wanted.join(" and "),
            counts.join(", ")
        ))
    }

    /// Whether any deployment has instances to launch now: it lacks replicas of its
    /// version (or is rolling to it) and is not backing off. Then it wants offers.
    pub fn wants_offers(&self, now: Instant) -> bool {
        let mut new_live: BTreeMap<&str, usize> = BTreeMap::new();
        let mut done: BTreeMap<&str, usize> = BTreeMap::new();
        for t in self.tasks.values() {
            let Some(d) = self.deployments.get(&t.deployment) else {
                continue;
            };
            if t.version != d.manifest.spec.version {
                continue;
            }
            if t.live() {
                *new_live.entry(&t.deployment).or_default() += 1;
            } else if fills_slot(&d.manifest.spec.restart.policy, t.state) {
                *done.entry(&t.deployment).or_default() += 1;
            }
        }
        self.deployments.iter().any(|(k, d)| {
            let backing_off = self
                .backoff
                .get(k)
                .and_then(|b| b.not_before)
                .is_some_and(|at| at > now);
            let target = (d.manifest.spec.replicas as usize)
                .saturating_sub(done.get(k.as_str()).copied().unwrap_or(0));
            !backing_off && new_live.get(k.as_str()).copied().unwrap_or(0) < target
        })
    }

    /// One deployment in full, for `describe deployment`.
    pub fn describe(&self, key: &str) -> Option<DeploymentDescription> {
        let d = self.deployments.get(key)?;
        let summary = self.summary(key, d);
        let mut tasks: Vec<TaskEntry> = self
            .tasks
            .values()
            .filter(|t| t.deployment == key)
            .cloned()
            .collect();
        tasks.sort_by_key(|t| std::cmp::Reverse(t.seq));
        Some(DeploymentDescription {
            summary,
            manifest: d.manifest.clone(),
            need: d.need.clone(),
            want: d.want.clone(),
            failures: self.backoff.get(key).map_or(0, |b| b.failures),
            tasks,
        })
    }

    /// Every deployment's standing.
    pub fn summaries(&self) -> Vec<DeploymentSummary> {
        self.deployments
            .iter()
            .map(|(k, d)| self.summary(k, d))
            .collect()
    }

    fn summary(&self, k: &str, d: &Deployment) -> DeploymentSummary {
        let spec = &d.manifest.spec;
        let checked = d.health.is_some();
        let count = |f: &dyn Fn(&TaskEntry) -> bool| {
            self.tasks
                .values()
                .filter(|t| t.deployment == k && f(t))
                .count() as u32
        };
        DeploymentSummary {
            namespace: d.manifest.namespace.clone(),
            name: d.manifest.name.clone(),
            version: spec.version.clone(),
            replicas: spec.replicas,
            running: count(&|t| t.available(checked) && t.version == spec.version),
            pending: count(&|t| t.live() && !t.available(checked) && t.version == spec.version),
            old: count(&|t| t.live() && t.version != spec.version),
            done: count(&|t| {
                t.version == spec.version && fills_slot(&spec.restart.policy, t.state)
            }),
            unplaced: self.unplaced.get(k).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    trait WithVersion {
        fn with_version(self, v: &str) -> Self;
    }

    impl WithVersion for Deployment {
        fn with_version(mut self, v: &str) -> Self {
            self.manifest.spec.version = v.into();
            self
        }
    }

    fn deployment(replicas: u32, extra: &str) -> Deployment {
        let text = format!(
            "kind: Deployment\nname: web\nspec:\n  actor: echo\n  version: v1\n  replicas: {replicas}\n  resources: {{ need: \"cpus:1\" }}\n{extra}"
        );
        crate::manifest::parse(Path::new("d.yaml"), &text).unwrap()
    }

    fn agent(id: &str, zone: &str, cpus: u32) -> AgentView {
        AgentView {
            id: id.into(),
            up: true,
            usable: true,
            actor_types: vec!["echo".into()],
            attrs: BTreeMap::from([("zone".to_string(), zone.to_string())]),
            free: format!("cpus:{cpus}").parse().unwrap(),
        }
    }

    fn running(book: &mut DeploymentBook, actions: &[Action]) {
        for a in actions {
            if let Action::Launch { task_id, agent, .. } = a {
                book.on_status(
                    &TaskStatus {
                        task_id: task_id.clone(),
                        agent_id: agent.clone(),
                        state: TaskState::Running,
                        message: String::new(),
                        uuid: 0,
                        healthy: None,
                    },
                    Instant::now(),
                );
            }
        }
    }

    #[test]
    fn keeps_replicas_spread_and_replaces_instances_of_a_lost_agent() {
        let mut book = DeploymentBook::default();
        book.apply(deployment(4, "  constraints: { spread_by: zone }\n"));
        let agents = vec![
            agent("a1", "x", 4),
            agent("a2", "x", 4),
            agent("b1", "y", 4),
        ];
        let actions = book.reconcile(&agents, Instant::now());
        assert_eq!(actions.len(), 4);
        running(&mut book, &actions);
        let in_y = book.tasks().filter(|t| t.agent == "b1").count();
        assert_eq!(in_y, 2, "spread by zone: half the instances in zone y");
        assert!(
            book.reconcile(&agents, Instant::now()).is_empty(),
            "already at 4 replicas"
        );
        // b1 is lost: its 2 instances come back on the remaining agents.
        book.agent_lost("b1");
        let mut left = agents.clone();
        left[2].usable = false;
        left[2].up = false;
        let again = book.reconcile(&left, Instant::now());
        assert_eq!(again.len(), 2);
        assert!(again
            .iter()
            .all(|a| matches!(a, Action::Launch { agent, .. } if agent != "b1")));
        assert_eq!(book.summaries()[0].pending, 2);
    }

    #[test]
    fn says_why_replicas_are_not_placed() {
        let mut book = DeploymentBook::default();
        book.apply(deployment(
            3,
            "  constraints: { unique_node: true, node_selector: { zone: x } }\n",
        ));
        let agents = vec![
            agent("a1", "x", 4),
            agent("a2", "x", 4),
            agent("b1", "y", 4),
        ];
        assert_eq!(book.reconcile(&agents, Instant::now()).len(), 2);
        let why = book.summaries()[0].unplaced.clone().unwrap();
        assert!(
            why.contains("1 fail the node selector") && why.contains("2 already hold an instance"),
            "{why}"
        );
    }

    #[test]
    fn a_restarted_master_adopts_running_instances_instead_of_duplicating_them() {
        let agents = vec![agent("a1", "x", 4)];
        let mut before = DeploymentBook::new(1);
        before.apply(deployment(2, ""));
        let launched: Vec<String> = before
            .reconcile(&agents, Instant::now())
            .into_iter()
            .filter_map(|a| match a {
                Action::Launch { task_id, .. } => Some(task_id),
                _ => None,
            })
            .collect();
        assert_eq!(launched.len(), 2);
        // A new master process: same deployment, and the agent reports what it runs.
        let mut after = DeploymentBook::new(2);
        after.apply(deployment(2, ""));
        let mut running = launched.clone();
        running.push("$agent".into());
        assert!(after
            .adopt(
                "a1",
                &running,
                &[],
                &BTreeMap::new(),
                &BTreeMap::new(),
                Instant::now()
            )
            .is_empty());
        assert!(
            after.reconcile(&agents, Instant::now()).is_empty(),
            "no duplicates after adoption"
        );
        assert_eq!(after.summaries()[0].running, 2);
        // New ids never collide with the old ones.
        after.apply(deployment(3, ""));
        let more = after.reconcile(&agents, Instant::now());
        assert!(
            matches!(&more[..], [Action::Launch { task_id, .. }] if !launched.contains(task_id))
        );
    }

    #[test]
    fn deleting_a_deployment_kills_its_live_instances_and_forgets_it() {
        let mut book = DeploymentBook::default();
        book.apply(deployment(2, ""));
        let agents = vec![agent("a1", "x", 4)];
        let actions = book.reconcile(&agents, Instant::now());
        running(&mut book, &actions);
        let kills = book.delete("default/web").expect("the deployment exists");
        assert_eq!(kills.len(), 2);
        assert!(kills.iter().all(|a| matches!(a, Action::Kill { .. })));
        assert!(book.summaries().is_empty());
        assert!(
            book.reconcile(&agents, Instant::now()).is_empty(),
            "nothing to keep running"
        );
        assert!(book.delete("default/web").is_none(), "already gone");
    }

    #[test]
    fn scales_down_and_respects_free_resources() {
        let mut book = DeploymentBook::default();
        book.apply(deployment(3, ""));
        let agents = vec![agent("a1", "x", 2)];
        let actions = book.reconcile(&agents, Instant::now());
        assert_eq!(actions.len(), 2, "only 2 cpus free");
        let why = book.summaries()[0].unplaced.clone().unwrap();
        assert!(
            why == "no agent with cpus:1 and hosting echo: 1 have too little free cpus",
            "{why}"
        );
        running(&mut book, &actions);
        book.apply(deployment(1, ""));
        let down = book.reconcile(&agents, Instant::now());
        assert_eq!(
            down.iter()
                .filter(|a| matches!(a, Action::Kill { .. }))
                .count(),
            1
        );
    }

    #[test]
    fn a_killed_instance_holds_its_resources_until_it_is_gone() {
        let now = Instant::now();
        let mut book = DeploymentBook::default();
        book.apply(deployment(4, "  constraints: { spread_by: zone }\n"));
        let agents = vec![agent("a1", "x", 4), agent("a2", "y", 4)];
        let actions = book.reconcile(&agents, now);
        running(&mut book, &actions);
        book.take_holdings();
        let on = |book: &DeploymentBook, a: &str| -> Vec<String> {
            let mut ids: Vec<String> = book
                .tasks()
                .filter(|t| t.agent == a)
                .map(|t| t.id.clone())
                .collect();
            ids.sort();
            ids
        };
        let (a1, a2) = (on(&book, "a1"), on(&book, "a2"));
        assert_eq!((a1.len(), a2.len()), (2, 2));
        let freed = |book: &mut DeploymentBook| -> Vec<String> {
            book.take_holdings()
                .into_iter()
                .map(|h| match h {
                    Holding::Freed { agent, resources } => format!("{agent} {resources}"),
                    Holding::Took { agent, .. } => panic!("took on {agent}"),
                })
                .collect()
        };
        // Killed: they may run for their grace, so nothing is given back yet.
        assert_eq!(book.delete("default/web").unwrap().len(), 4);
        assert!(freed(&mut book).is_empty());
        assert!(book
            .tasks()
            .all(|t| t.stopping && t.state == TaskState::Killed));
        // Its end is reported: given back, once.
        status(&mut book, &a1[0], TaskState::Killed, now);
        status(&mut book, &a1[0], TaskState::Killed, now);
        assert_eq!(freed(&mut book), ["a1 cpus:1"]);
        // Its agent does not run it.
        assert!(book.kill_found_nothing(&a1[1]));
        assert!(!book.kill_found_nothing(&a1[1]));
        assert_eq!(freed(&mut book), ["a1 cpus:1"]);
        // Its agent registers without it; the other one still runs (and is killed again).
        let again = book.adopt("a2", &a2[..1], &[], &BTreeMap::new(), &BTreeMap::new(), now);
        assert_eq!(kills(&again), &a2[..1]);
        assert_eq!(freed(&mut book), ["a2 cpus:1"]);
        // Its agent is lost.
        book.agent_lost("a2");
        assert_eq!(freed(&mut book), ["a2 cpus:1"]);
        assert!(book.tasks().all(|t| !t.stopping));
        // It comes back with its agent after all: killed again, and held until it ends.
        let again = book.adopt("a2", &a2[..1], &[], &BTreeMap::new(), &BTreeMap::new(), now);
        assert_eq!(kills(&again), &a2[..1]);
        assert!(book.task(&a2[0]).unwrap().stopping);
        assert!(freed(&mut book).is_empty());
        status(&mut book, &a2[0], TaskState::Killed, now);
        assert_eq!(freed(&mut book), ["a2 cpus:1"]);
    }

    fn status(book: &mut DeploymentBook, id: &str, state: TaskState, now: Instant) {
        let agent = book.task(id).unwrap().agent.clone();
        book.on_status(
            &TaskStatus {
                task_id: id.into(),
                agent_id: agent,
                state,
                message: String::new(),
                uuid: 0,
                healthy: None,
            },
            now,
        );
    }

    fn launches(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Launch { task_id, .. } => Some(task_id.clone()),
                _ => None,
            })
            .collect()
    }

    fn kills(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Kill { task_id, .. } => Some(task_id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_rolling_update_never_drops_below_the_availability_asked_for() {
        for (surge, unavailable) in [(1, 0), (0, 1), (2, 1)] {
            let replicas = 4;
            let roll = format!(
                "  rolling_update: {{ max_surge: {surge}, max_unavailable: {unavailable} }}\n"
            );
            let mut book = DeploymentBook::default();
            book.apply(deployment(replicas, &roll));
            let agents = vec![agent("a1", "x", 64)];
            let now = Instant::now();
            let first = book.reconcile(&agents, now);
            running(&mut book, &first);
            book.apply(deployment(replicas, &roll).with_version("v2"));
            let min_running = (replicas - unavailable) as usize;
            let mut rounds = 0;
            loop {
                rounds += 1;
                assert!(rounds < 50, "the update does not finish");
                let actions = book.reconcile(&agents, now);
                let live = book.tasks().filter(|t| t.live()).count();
                let up = book
                    .tasks()
                    .filter(|t| t.state == TaskState::Running)
                    .count();
                assert!(
                    live <= (replicas + surge) as usize,
                    "surge exceeded: {live} live"
                );
                assert!(
                    up >= min_running,
                    "only {up} running (surge {surge}, unavailable {unavailable})"
                );
                if actions.is_empty() {
                    break;
                }
                // The new instances come up.
                running(&mut book, &actions);
            }
            let s = &book.summaries()[0];
            assert_eq!((s.running, s.old, s.version.as_str()), (replicas, 0, "v2"));
        }
    }

    #[test]
    fn restart_policies_and_backoff() {
        let agents = vec![agent("a1", "x", 8)];
        let t0 = Instant::now();
        // on-failure: a failed instance comes back after the backoff, a finished one does not.
        let mut book = DeploymentBook::default();
        book.apply(deployment(
            2,
            "  restart: { policy: on-failure, backoff_initial: 1s, backoff_max: 4s }\n",
        ));
        let ids = launches(&book.reconcile(&agents, t0));
        status(&mut book, &ids[0], TaskState::Running, t0);
        status(&mut book, &ids[1], TaskState::Running, t0);
        status(&mut book, &ids[0], TaskState::Finished, t0);
        status(&mut book, &ids[1], TaskState::Failed, t0);
        assert!(book.reconcile(&agents, t0).is_empty(), "backing off");
        let why = book.summaries()[0].unplaced.clone().unwrap();
        assert!(why.contains("backoff after 1 failure"), "{why}");
        let again = launches(&book.reconcile(&agents, t0 + Duration::from_millis(1100)));
        assert_eq!(again.len(), 1, "only the failed one is replaced");
        assert_eq!(book.summaries()[0].done, 1);
        // The second failure in a row waits twice as long.
        status(
            &mut book,
            &again[0],
            TaskState::Failed,
            t0 + Duration::from_millis(1200),
        );
        assert!(book
            .reconcile(&agents, t0 + Duration::from_millis(2300))
            .is_empty());
        assert_eq!(
            launches(&book.reconcile(&agents, t0 + Duration::from_millis(3300))).len(),
            1
        );
        // never: nothing comes back.
        let mut never = DeploymentBook::default();
        never.apply(deployment(1, "  restart: { policy: never }\n"));
        let ids = launches(&never.reconcile(&agents, t0));
        status(&mut never, &ids[0], TaskState::Failed, t0);
        assert!(never
            .reconcile(&agents, t0 + Duration::from_secs(600))
            .is_empty());
        // always: a finished instance comes back too.
        let mut always = DeploymentBook::default();
        always.apply(deployment(1, "  restart: { policy: always }\n"));
        let ids = launches(&always.reconcile(&agents, t0));
        status(&mut always, &ids[0], TaskState::Finished, t0);
        assert_eq!(launches(&always.reconcile(&agents, t0)).len(), 1);
    }

    #[test]
    fn need_first_by_priority_then_want() {
        let want = |p: i32| {
            format!("  priority: {p}\n  resources: {{ need: \"cpus:2\", want: \"cpus:3\" }}\n")
        };
        let text = |name: &str, p: i32| {
            format!(
                "kind: Deployment\nname: {name}\nspec:\n  actor: echo\n  version: v1\n  replicas: 2\n{}",
                want(p)
            )
        };
        let mut book = DeploymentBook::default();
        book.apply(crate::manifest::parse(Path::new("lo.yaml"), &text("lo", 1)).unwrap());
        book.apply(crate::manifest::parse(Path::new("hi.yaml"), &text("hi", 9)).unwrap());
        // 7 cpus: 3 needs of 2 fit, the high priority ones first; the spare cpu goes to a
        // want, again by priority.
        let actions = book.reconcile(&[agent("a1", "x", 7)], Instant::now());
        let held: Vec<(String, f64)> = book
            .tasks()
            .map(|t| (t.deployment.clone(), t.resources.scalars["cpus"]))
            .collect();
        let hi: Vec<f64> = held
            .iter()
            .filter(|h| h.0 == "default/hi")
            .map(|h| h.1)
            .collect();
        let lo: Vec<f64> = held
            .iter()
            .filter(|h| h.0 == "default/lo")
            .map(|h| h.1)
            .collect();
        assert_eq!(hi.len(), 2, "both high-priority needs placed: {held:?}");
        assert_eq!(lo.len(), 1, "one low-priority need fits: {held:?}");
        let total: f64 = held.iter().map(|h| h.1).sum();
        assert!(
            (total - 7.0).abs() < 1e-9,
            "the spare cpu is handed out: {held:?}"
        );
        assert!(
            hi.iter().any(|c| *c > 2.0),
            "the want goes to priority first: {held:?}"
        );
        assert_eq!(actions.len(), 3);
    }

    #[test]
    fn command_deployments_carry_their_limits() {
        let text = "kind: Deployment\nname: job\nspec:\n  command: { path: /bin/sleep, args: [\"5\"], kill_grace: 2s }\n  version: v1\n  replicas: 1\n  resources: { need: \"cpus:1;mem:64MiB\", want: \"cpus:2;mem:128MiB\" }\n";
        let mut book = DeploymentBook::default();
        book.apply(crate::manifest::parse(Path::new("job.yaml"), text).unwrap());
        let mut a = agent("a1", "x", 4);
        a.actor_types.clear();
        a.free = "cpus:4;mem:100MiB".parse().unwrap();
        let actions = book.reconcile(&[a], Instant::now());
        match &actions[..] {
            [Action::Launch {
                what: Launchable::Command(c),
                task_id,
                ..
            }] => {
                assert_eq!(&c.id, task_id);
                assert_eq!(c.args, vec!["5".to_string()]);
                assert_eq!(c.cpus, Some(2.0));
                assert_eq!(
                    c.mem_bytes,
                    Some(100 * 1024 * 1024),
                    "up to the want, as far as free"
                );
                assert_eq!(c.kill_grace_ms, 2000);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn agents_coming_back_are_reconciled() {
        let agents = vec![agent("a1", "x", 4), agent("a2", "x", 4)];
        let now = Instant::now();
        let mut book = DeploymentBook::default();
        book.apply(deployment(1, ""));
        let first = launches(&book.reconcile(&agents, now));
        status(&mut book, &first[0], TaskState::Running, now);
        let home = book.task(&first[0]).unwrap().agent.clone();
        // The agent restarts without the instance: Lost, and replaced.
        assert!(book
            .adopt(&home, &[], &[], &BTreeMap::new(), &BTreeMap::new(), now)
            .is_empty());
        assert_eq!(book.task(&first[0]).unwrap().state, TaskState::Lost);
        let others: Vec<AgentView> = agents
            .iter()
            .cloned()
            .map(|mut a| {
                a.usable = a.id != home;
                a.up = a.usable;
                a
            })
            .collect();
        let second = launches(&book.reconcile(&others, now));
        assert_eq!(second.len(), 1);
        status(&mut book, &second[0], TaskState::Running, now);
        // The first instance turns up after all: it was replaced, so it is killed.
        let k = book.adopt(
            &home,
            std::slice::from_ref(&first[0]),
            &[],
            &BTreeMap::new(),
            &BTreeMap::new(),
            now,
        );
        assert_eq!(kills(&k), first);
        // An instance of a deleted deployment is killed; other actors are left alone.
        let k = book.adopt(
            &home,
            &["default.gone-1a2".into(), "my-actor".into()],
            &[],
            &BTreeMap::new(),
            &BTreeMap::new(),
            now,
        );
        assert_eq!(kills(&k), vec!["default.gone-1a2".to_string()]);
    }

    #[test]
    fn with_a_health_check_only_healthy_instances_count_as_available() {
        let health = "  health_check: { interval: 1s, timeout: 1s, failures: 3 }\n";
        let mut book = DeploymentBook::default();
        book.apply(deployment(2, health));
        let agents = vec![agent("a1", "x", 8)];
        let now = Instant::now();
        let first = launches(&book.reconcile(&agents, now));
        for id in &first {
            status(&mut book, id, TaskState::Running, now);
        }
        assert_eq!(
            book.summaries()[0].running,
            0,
            "running, but not yet healthy"
        );
        let healthy = |book: &mut DeploymentBook, id: &str| {
            let agent = book.task(id).unwrap().agent.clone();
            book.on_status(
                &TaskStatus {
                    task_id: id.into(),
                    agent_id: agent,
                    state: TaskState::Running,
                    message: "healthy".into(),
                    uuid: 0,
                    healthy: Some(true),
                },
                now,
            );
        };
        for id in &first {
            healthy(&mut book, id);
        }
        assert_eq!(book.summaries()[0].running, 2);
        // A new version: the surge instance runs but is not healthy, so no old one goes.
        book.apply(deployment(2, health).with_version("v2"));
        let new = launches(&book.reconcile(&agents, now));
        assert_eq!(new.len(), 1);
        status(&mut book, &new[0], TaskState::Running, now);
        assert!(
            kills(&book.reconcile(&agents, now)).is_empty(),
            "an old instance was killed before its replacement was healthy"
        );
        healthy(&mut book, &new[0]);
        assert_eq!(kills(&book.reconcile(&agents, now)).len(), 1);
    }

    #[test]
    fn an_instance_adopted_with_an_older_version_is_rolled_to_the_current_one() {
        let agents = vec![agent("a1", "x", 8)];
        let now = Instant::now();
        // The master restarted after v2 was applied; the agent runs a v1 instance.
        let mut book = DeploymentBook::new(2);
        book.apply(deployment(1, "").with_version("v2"));
        let id = "default.web-1a0".to_string();
        let versions = BTreeMap::from([(id.clone(), "v1".to_string())]);
        let kills_now = book.adopt(
            "a1",
            std::slice::from_ref(&id),
            &[],
            &BTreeMap::new(),
            &versions,
            now,
        );
        assert!(kills_now.is_empty());
        assert_eq!(book.task(&id).unwrap().version, "v1");
        // A v2 instance first (max_surge 1), then the v1 one goes.
        let first = book.reconcile(&agents, now);
        assert_eq!((launches(&first).len(), kills(&first).len()), (1, 0));
        running(&mut book, &first);
        assert_eq!(kills(&book.reconcile(&agents, now)), vec![id]);
    }
}
