//! The built-in deployment controller, as plain state: given the deployments, the tasks
//! and a view of the agents, decide which instances to launch and which to kill so that
//! every deployment has its replicas running. The master carries out the decisions.
//!
//! This first version handles actor deployments: replicas, resources (need), node
//! selector, unique node and spread by attribute; instances on lost agents are replaced.
//! Rolling updates, command deployments, priorities and backoff are still to come.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::frameworks::{TaskState, TaskStatus};
use crate::manifest::Deployment;
use crate::resources::Resources;

/// What the controller knows of an agent.
#[derive(Debug, Clone)]
pub struct AgentView {
    /// Agent id.
    pub id: String,
    /// Active and not draining: may take new instances.
    pub usable: bool,
    /// Actor types it hosts.
    pub actor_types: Vec<String>,
    /// Its attributes.
    pub attrs: BTreeMap<String, String>,
    /// Its total resources.
    pub total: Resources,
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
        /// The actor type.
        actor_type: String,
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
    /// Its agent.
    pub agent: String,
    /// Its state.
    pub state: TaskState,
    /// Why, when it ended.
    pub message: String,
    /// The resources it holds.
    pub need: Resources,
}

impl TaskEntry {
    fn live(&self) -> bool {
        matches!(
            self.state,
            TaskState::Staging | TaskState::Starting | TaskState::Running
        )
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
    /// Why replicas are missing, if they are.
    pub unplaced: Option<String>,
}

/// Deployments and their tasks.
#[derive(Debug, Default)]
pub struct DeploymentBook {
    deployments: BTreeMap<String, Deployment>,
    tasks: BTreeMap<String, TaskEntry>,
    unplaced: BTreeMap<String, String>,
    next: u64,
    /// Differs per master process, so task ids never repeat across restarts.
    epoch: u32,
}

/// The instance name (and task id) prefix of a deployment: `namespace.name-`.
fn task_prefix(d: &Deployment) -> String {
    format!("{}.{}-", d.manifest.namespace, d.manifest.name)
}

/// The key of a deployment: `namespace/name`.
pub fn key(d: &Deployment) -> String {
    format!("{}/{}", d.manifest.namespace, d.manifest.name)
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

    /// An agent (re)registered and runs the instances named in `running`: instances of
    /// known deployments that the book does not know (it was restarted) are adopted as
    /// Running, so they are counted and never started twice.
    pub fn adopt(&mut self, agent: &str, running: &[String]) {
        for name in running {
            if self.tasks.get(name).is_some_and(|t| t.live()) {
                continue;
            }
            let owner = self
                .deployments
                .iter()
                .find(|(_, d)| name.starts_with(&task_prefix(d)))
                .map(|(k, d)| (k.clone(), d.need.clone()));
            if let Some((deployment, need)) = owner {
                self.tasks.insert(
                    name.clone(),
                    TaskEntry {
                        id: name.clone(),
                        deployment,
                        agent: agent.to_string(),
                        state: TaskState::Running,
                        message: "adopted after a master restart".into(),
                        need,
                    },
                );
            }
        }
    }

    /// Adds or replaces a deployment.
    pub fn apply(&mut self, d: Deployment) -> String {
        let k = key(&d);
        self.deployments.insert(k.clone(), d);
        k
    }

    /// Removes deployment `key`; returns the kills that stop its live instances, or `None`
    /// if there is no such deployment.
    pub fn delete(&mut self, key: &str) -> Option<Vec<Action>> {
        self.deployments.remove(key)?;
        self.unplaced.remove(key);
        let mut kills = Vec::new();
        for t in self
            .tasks
            .values_mut()
            .filter(|t| t.deployment == key && t.live())
        {
            t.state = TaskState::Killed;
            kills.push(Action::Kill {
                task_id: t.id.clone(),
                agent: t.agent.clone(),
            });
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

    /// A task's reported state.
    pub fn on_status(&mut self, s: &TaskStatus) {
        if let Some(t) = self.tasks.get_mut(&s.task_id) {
            t.state = s.state;
            t.message = s.message.clone();
        }
    }

    /// Instances on `agent` are gone (the agent was lost or is unreachable): they will be
    /// replaced.
    pub fn agent_lost(&mut self, agent: &str) {
        for t in self
            .tasks
            .values_mut()
            .filter(|t| t.agent == agent && t.live())
        {
            t.state = TaskState::Lost;
            t.message = format!("agent {agent} was lost");
        }
    }

    /// A launch could not be carried out.
    pub fn launch_failed(&mut self, task_id: &str, why: &str) {
        if let Some(t) = self.tasks.get_mut(task_id) {
            t.state = TaskState::Failed;
            t.message = why.to_string();
        }
    }

    /// Decides what to launch and kill so that every deployment has its replicas.
    pub fn reconcile(&mut self, agents: &[AgentView]) -> Vec<Action> {
        let mut actions = Vec::new();
        // Resources in use per agent by live tasks.
        let mut used: BTreeMap<String, Resources> = BTreeMap::new();
        for t in self.tasks.values().filter(|t| t.live()) {
            let u = used.entry(t.agent.clone()).or_default();
            *u = u.plus(&t.need);
        }
        let keys: Vec<String> = self.deployments.keys().cloned().collect();
        for k in keys {
            let d = self.deployments[&k].clone();
            let Some(actor_type) = d.manifest.spec.actor.clone() else {
                self.unplaced.insert(
                    k.clone(),
                    "command deployments are not supported yet".into(),
                );
                continue;
            };
            let live: Vec<TaskEntry> = self
                .tasks
                .values()
                .filter(|t| t.deployment == k && t.live())
                .cloned()
                .collect();
            let want = d.manifest.spec.replicas as usize;
            if live.len() > want {
                for t in live.iter().skip(want) {
                    actions.push(Action::Kill {
                        task_id: t.id.clone(),
                        agent: t.agent.clone(),
                    });
                    if let Some(e) = self.tasks.get_mut(&t.id) {
                        e.state = TaskState::Killed;
                    }
                }
                continue;
            }
            let mut on_agent: BTreeMap<String, usize> = BTreeMap::new();
            for t in &live {
                *on_agent.entry(t.agent.clone()).or_default() += 1;
            }
            let mut missing = want - live.len();
            let mut why = None;
            while missing > 0 {
                match self.choose(&d, &actor_type, agents, &used, &on_agent) {
                    Ok(agent) => {
                        let id = format!("{}{:x}{}", task_prefix(&d), self.epoch, self.next);
                        self.next += 1;
                        let u = used.entry(agent.clone()).or_default();
                        *u = u.plus(&d.need);
                        *on_agent.entry(agent.clone()).or_default() += 1;
                        self.tasks.insert(
                            id.clone(),
                            TaskEntry {
                                id: id.clone(),
                                deployment: k.clone(),
                                agent: agent.clone(),
                                state: TaskState::Staging,
                                message: String::new(),
                                need: d.need.clone(),
                            },
                        );
                        actions.push(Action::Launch {
                            task_id: id,
                            agent,
                            actor_type: actor_type.clone(),
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
                Some(w) => self.unplaced.insert(k.clone(), w),
                None => self.unplaced.remove(&k),
            };
        }
        actions
    }

    /// The agent for one more instance of `d`, or why there is none.
    fn choose(
        &self,
        d: &Deployment,
        actor_type: &str,
        agents: &[AgentView],
        used: &BTreeMap<String, Resources>,
        on_agent: &BTreeMap<String, usize>,
    ) -> Result<String, String> {
        let c = &d.manifest.spec.constraints;
        let (mut not_usable, mut no_type, mut selector, mut unique, mut short) = (0, 0, 0, 0, 0);
        let mut fits: Vec<&AgentView> = Vec::new();
        for a in agents {
            if !a.usable {
                not_usable += 1;
            } else if !a.actor_types.iter().any(|t| t == actor_type) {
                no_type += 1;
            } else if !c
                .node_selector
                .iter()
                .all(|(k, v)| a.attrs.get(k) == Some(v))
            {
                selector += 1;
            } else if c.unique_node && on_agent.get(&a.id).copied().unwrap_or(0) > 0 {
                unique += 1;
            } else if !a
                .total
                .minus(used.get(&a.id).unwrap_or(&Resources::default()))
                .contains(&d.need)
            {
                short += 1;
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
        match fits.into_iter().min_by_key(|a| (count_for(a), a.id.clone())) {
            Some(a) => Ok(a.id.clone()),
            None => Err(format!(
                "no agent with {} hosting {actor_type}: {} agents not usable, {no_type} do not host the type, {selector} fail the node selector, {unique} already hold an instance (unique node), {short} have too little free",
                d.need, not_usable
            )),
        }
    }

    /// Every deployment's standing.
    pub fn summaries(&self) -> Vec<DeploymentSummary> {
        self.deployments
            .iter()
            .map(|(k, d)| {
                let count = |f: &dyn Fn(&TaskEntry) -> bool| {
                    self.tasks
                        .values()
                        .filter(|t| &t.deployment == k && f(t))
                        .count() as u32
                };
                DeploymentSummary {
                    namespace: d.manifest.namespace.clone(),
                    name: d.manifest.name.clone(),
                    version: d.manifest.spec.version.clone(),
                    replicas: d.manifest.spec.replicas,
                    running: count(&|t| t.state == TaskState::Running),
                    pending: count(&|t| {
                        matches!(t.state, TaskState::Staging | TaskState::Starting)
                    }),
                    unplaced: self.unplaced.get(k).cloned(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn deployment(replicas: u32, extra: &str) -> Deployment {
        let text = format!(
            "kind: Deployment\nname: web\nspec:\n  actor: echo\n  version: v1\n  replicas: {replicas}\n  resources: {{ need: \"cpus:1\" }}\n{extra}"
        );
        crate::manifest::parse(Path::new("d.yaml"), &text).unwrap()
    }

    fn agent(id: &str, zone: &str, cpus: u32) -> AgentView {
        AgentView {
            id: id.into(),
            usable: true,
            actor_types: vec!["echo".into()],
            attrs: BTreeMap::from([("zone".to_string(), zone.to_string())]),
            total: format!("cpus:{cpus}").parse().unwrap(),
        }
    }

    fn running(book: &mut DeploymentBook, actions: &[Action]) {
        for a in actions {
            if let Action::Launch { task_id, agent, .. } = a {
                book.on_status(&TaskStatus {
                    task_id: task_id.clone(),
                    agent_id: agent.clone(),
                    state: TaskState::Running,
                    message: String::new(),
                    uuid: 0,
                });
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
        let actions = book.reconcile(&agents);
        assert_eq!(actions.len(), 4);
        running(&mut book, &actions);
        let in_y = book.tasks().filter(|t| t.agent == "b1").count();
        assert_eq!(in_y, 2, "spread by zone: half the instances in zone y");
        assert!(book.reconcile(&agents).is_empty(), "already at 4 replicas");
        // b1 is lost: its 2 instances come back on the remaining agents.
        book.agent_lost("b1");
        let mut left = agents.clone();
        left[2].usable = false;
        let again = book.reconcile(&left);
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
        assert_eq!(book.reconcile(&agents).len(), 2);
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
            .reconcile(&agents)
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
        after.adopt("a1", &running);
        assert!(
            after.reconcile(&agents).is_empty(),
            "no duplicates after adoption"
        );
        assert_eq!(after.summaries()[0].running, 2);
        // New ids never collide with the old ones.
        after.apply(deployment(3, ""));
        let more = after.reconcile(&agents);
        assert!(
            matches!(&more[..], [Action::Launch { task_id, .. }] if !launched.contains(task_id))
        );
    }

    #[test]
    fn deleting_a_deployment_kills_its_live_instances_and_forgets_it() {
        let mut book = DeploymentBook::default();
        book.apply(deployment(2, ""));
        let agents = vec![agent("a1", "x", 4)];
        let actions = book.reconcile(&agents);
        running(&mut book, &actions);
        let kills = book.delete("default/web").expect("the deployment exists");
        assert_eq!(kills.len(), 2);
        assert!(kills.iter().all(|a| matches!(a, Action::Kill { .. })));
        assert!(book.summaries().is_empty());
        assert!(
            book.reconcile(&agents).is_empty(),
            "nothing to keep running"
        );
        assert!(book.delete("default/web").is_none(), "already gone");
    }

    #[test]
    fn scales_down_and_respects_free_resources() {
        let mut book = DeploymentBook::default();
        book.apply(deployment(3, ""));
        let agents = vec![agent("a1", "x", 2)];
        let actions = book.reconcile(&agents);
        assert_eq!(actions.len(), 2, "only 2 cpus free");
        running(&mut book, &actions);
        book.apply(deployment(1, ""));
        let down = book.reconcile(&agents);
        assert_eq!(
            down.iter()
                .filter(|a| matches!(a, Action::Kill { .. }))
                .count(),
            1
        );
    }
}
