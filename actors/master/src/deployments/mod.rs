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

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::frameworks::TaskState;

mod lifecycle;
mod placement;
mod views;
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
    /// Where an actor task serves: its node's address and the instance's actor name.
    /// Filled in views (`get tasks`, `describe task`) from the agent's current address;
    /// `None` for a command task, or while its agent has no address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<TaskEndpoint>,
}

/// Where an actor task's instance serves: `node.actor_ref(addr, actor)` calls it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEndpoint {
    /// The agent node's SPIFFE identity.
    pub node: String,
    /// The node's mesh address.
    pub addr: std::net::SocketAddr,
    /// The instance's actor name on that node (a deployment instance's is its task id).
    pub actor: String,
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
    /// Its rolling update cannot finish on the agents there are (`unplaced` says why and
    /// what to change): waiting for it is pointless until an agent joins.
    #[serde(default)]
    pub stalled: bool,
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
    /// The wait before the next launch, from the last failure.
    delay: std::time::Duration,
    /// The last failed instance, its state and its reason.
    last_failure: String,
}

/// Deployments and their tasks.
#[derive(Debug, Default)]
pub struct DeploymentBook {
    deployments: BTreeMap<String, Deployment>,
    tasks: BTreeMap<String, TaskEntry>,
    unplaced: BTreeMap<String, String>,
    /// Deployments whose rolling update cannot finish on the agents there are.
    stalled: std::collections::BTreeSet<String>,
    backoff: BTreeMap<String, Backoff>,
    /// Holdings changed since the master last asked.
    ledger: Vec<Holding>,
    next: u64,
    /// Instances placed on agents by this master process (for the metrics).
    placed: u64,
    /// Differs per master process, so task ids never repeat across restarts.
    epoch: u32,
}

/// Ended instances kept per deployment (beyond those that fill a slot), for `get tasks`.
pub const HISTORY: usize = 20;

/// The instance name (and task id) prefix of a deployment: `namespace.name-`. A task id is
/// the prefix, the master process's epoch in hex, `.`, and a counter: the separator keeps
/// ids of different master processes apart (`2edc0` + `30810` and `2edc030` + `810` were
/// once one id).
fn task_prefix(d: &Deployment) -> String {
    format!("{}.{}-", d.manifest.namespace, d.manifest.name)
}

/// Whether `s` is what follows a deployment's prefix in its task ids: `<epoch hex>.<n>`
/// (and `<epoch hex><n>` from masters before the separator).
fn is_instance_suffix(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.')
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

    /// Instances placed on agents by this book (since the master process started).
    pub fn placements(&self) -> u64 {
        self.placed
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

    /// The deployment whose instance `task_id` is: its prefix `namespace.name-`, then an
    /// instance suffix. The suffix has no `-`, so `web-api`'s instances are never taken for
    /// `web`'s, though they share its prefix.
    fn owner_of(&self, task_id: &str) -> Option<(&String, &Deployment)> {
        self.deployments.iter().find(|(_, d)| {
            task_id
                .strip_prefix(&task_prefix(d))
                .is_some_and(is_instance_suffix)
        })
    }

    fn live_count(&self, key: &str) -> usize {
        self.tasks
            .values()
            .filter(|t| t.deployment == key && t.live())
            .count()
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
        self.stalled.remove(key);
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

    /// The service task `id` serves as its workload (`namespace/name`), if its deployment
    /// declares one.
    pub fn workload_of(&self, id: &str) -> Option<String> {
        let t = self.tasks.get(id)?;
        let d = self.deployments.get(&t.deployment)?;
        d.service.as_ref().map(|s| s.name.to_string())
    }

    /// Whether task `id` is an instance of an actor deployment (`None`: no such task, or
    /// its deployment is gone).
    pub fn is_actor_task(&self, id: &str) -> Option<bool> {
        let t = self.tasks.get(id)?;
        let d = self.deployments.get(&t.deployment)?;
        Some(d.manifest.spec.actor.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frameworks::TaskStatus;
    use std::path::Path;
    use std::time::Duration;

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

    fn named(name: &str, replicas: u32) -> Deployment {
        let text = format!(
            "kind: Deployment\nname: {name}\nspec:\n  actor: echo\n  version: v1\n  replicas: {replicas}\n  resources: {{ need: \"cpus:1\" }}\n"
        );
        crate::manifest::parse(Path::new("d.yaml"), &text).unwrap()
    }

    #[test]
    fn a_restarted_master_adopts_each_instance_into_its_own_deployment_when_names_share_a_prefix() {
        let agents = vec![agent("a1", "x", 8)];
        let mut before = DeploymentBook::new(7);
        before.apply(named("web", 1));
        before.apply(named("web-api", 2));
        let launched = launches(&before.reconcile(&agents, Instant::now()));
        assert_eq!(launched.len(), 3);
        let mut after = DeploymentBook::new(8);
        after.apply(named("web", 1));
        after.apply(named("web-api", 2));
        let kills = after.adopt(
            "a1",
            &launched,
            &[],
            &BTreeMap::new(),
            &BTreeMap::new(),
            Instant::now(),
        );
        assert!(kills.is_empty(), "{kills:?}");
        let count = |key: &str| after.tasks().filter(|t| t.deployment == key).count();
        assert_eq!(
            count("default/web"),
            1,
            "{:?}",
            after.tasks().collect::<Vec<_>>()
        );
        assert_eq!(count("default/web-api"), 2);
        assert!(after.reconcile(&agents, Instant::now()).is_empty());
    }

    #[test]
    fn task_ids_of_different_master_processes_never_collide() {
        // Epoch 0x2edc0 with counter 30810 and epoch 0x2edc030 with counter 810 once both
        // made `default.web-2edc030810`.
        let mut a = DeploymentBook::new(0x2edc0);
        let mut b = DeploymentBook::new(0x2edc030);
        a.next = 30810;
        b.next = 810;
        a.apply(named("web", 1));
        b.apply(named("web", 1));
        let agents = vec![agent("a1", "x", 8)];
        let id = |book: &mut DeploymentBook| {
            launches(&book.reconcile(&agents, Instant::now()))[0].clone()
        };
        assert_ne!(id(&mut a), id(&mut b));
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
    fn placements_count_each_instance_placed() {
        let now = Instant::now();
        let mut book = DeploymentBook::default();
        book.apply(deployment(3, ""));
        let agents = vec![agent("a1", "x", 4), agent("a2", "x", 4)];
        assert_eq!(book.reconcile(&agents, now).len(), 3);
        assert_eq!(book.placements(), 3);
        // Nothing more to place: the count stays.
        book.reconcile(&agents, now);
        assert_eq!(book.placements(), 3);
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
    fn a_rolling_update_that_cannot_finish_on_its_agents_says_so_and_how_to_fix_it() {
        let rolling = |unavailable: u32| {
            format!(
                "  rolling_update: {{ max_surge: 1, max_unavailable: {unavailable} }}\n  constraints: {{ unique_node: true }}\n"
            )
        };
        // As many agents as replicas, each holding an old instance: a new one has no node,
        // and max_unavailable 0 lets no old one go first.
        let mut book = DeploymentBook::default();
        book.apply(deployment(2, &rolling(0)));
        let agents = vec![agent("a1", "x", 64), agent("a2", "x", 64)];
        let now = Instant::now();
        let first = book.reconcile(&agents, now);
        running(&mut book, &first);
        book.apply(deployment(2, &rolling(0)).with_version("v2"));
        assert!(book.reconcile(&agents, now).is_empty(), "nothing can move");
        assert!(book.summaries()[0].stalled, "apply stops waiting for it");
        let why = book.summaries()[0].unplaced.clone().unwrap();
        assert!(
            why.contains("the rolling update to v2 cannot finish on these agents")
                && why.contains("already hold an instance (unique node)")
                && why.contains("Set rolling_update.max_unavailable to 1 or more, or add an agent"),
            "{why}"
        );
        // A third agent: the update goes on, and the report was only about the stall.
        let three = vec![agents[0].clone(), agents[1].clone(), agent("a3", "x", 64)];
        let placed = launches(&book.reconcile(&three, now));
        assert_eq!(placed.len(), 1, "the surge instance goes to the new agent");
        assert!(!book.summaries()[0].stalled);
        // With max_unavailable 1 an old instance stops first: waiting, not stuck.
        let mut book = DeploymentBook::default();
        book.apply(deployment(2, &rolling(1)));
        let first = book.reconcile(&agents, now);
        running(&mut book, &first);
        book.apply(deployment(2, &rolling(1)).with_version("v2"));
        let actions = book.reconcile(&agents, now);
        assert_eq!(
            kills(&actions).len(),
            1,
            "an old instance makes room: {actions:?}"
        );
        let why = book.summaries()[0].unplaced.clone().unwrap_or_default();
        assert!(!why.contains("cannot finish"), "{why}");
        // A new version no agent could take even with the old ones gone: the plain reason.
        let mut book = DeploymentBook::default();
        book.apply(deployment(2, &rolling(0)));
        let first = book.reconcile(&agents, now);
        running(&mut book, &first);
        let text = format!(
            "kind: Deployment\nname: web\nspec:\n  actor: echo\n  version: v2\n  replicas: 2\n  resources: {{ need: \"cpus:100\" }}\n{}",
            rolling(0)
        );
        book.apply(crate::manifest::parse(Path::new("d.yaml"), &text).unwrap());
        assert!(book.reconcile(&agents, now).is_empty());
        let why = book.summaries()[0].unplaced.clone().unwrap();
        assert!(
            why.starts_with("no agent with cpus:100") && !why.contains("cannot finish"),
            "{why}"
        );
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
    fn a_deployment_backing_off_says_why_its_last_instance_failed_and_says_it_the_same_until_the_next_launch(
    ) {
        let agents = vec![agent("a1", "x", 8)];
        let t0 = Instant::now();
        let mut book = DeploymentBook::default();
        book.apply(deployment(
            1,
            "  restart: { policy: on-failure, backoff_initial: 2s, backoff_max: 4s }\n",
        ));
        let ids = launches(&book.reconcile(&agents, t0));
        book.on_status(
            &TaskStatus {
                task_id: ids[0].clone(),
                agent_id: "a1".into(),
                state: TaskState::Failed,
                message: "the actor panicked: no config file".into(),
                uuid: 0,
                healthy: None,
            },
            t0,
        );
        let said = |book: &mut DeploymentBook, at: Duration| {
            assert!(book.reconcile(&agents, t0 + at).is_empty(), "backing off");
            book.summaries()[0].unplaced.clone().unwrap()
        };
        let first = said(&mut book, Duration::ZERO);
        assert!(
            first.contains(&format!(
                "{} Failed: the actor panicked: no config file",
                ids[0]
            )),
            "{first}"
        );
        assert!(
            first.contains("after 1 failure(s)") && first.contains("2.0s"),
            "{first}"
        );
        assert_eq!(
            said(&mut book, Duration::from_millis(1500)),
            first,
            "no countdown: a watcher prints it once"
        );
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
