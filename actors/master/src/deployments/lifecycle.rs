//! What happens to instances: adopted when their agent registers, their reported
//! states, their agent lost, a launch failed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{looks_like_deployment_task, Action, DeploymentBook, Holding, TaskEntry};
use crate::frameworks::{TaskState, TaskStatus};
use actormesh::resources::Resources;

impl DeploymentBook {
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
                            endpoint: None,
                        },
                    );
                }
                None if looks_like_deployment_task(name) => kills.push(kill(name)),
                None => {}
            }
        }
        kills
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
            let why = format!("{} {:?}: {}", s.task_id, s.state, s.message);
            self.failed(&dep, ran.unwrap_or_default(), why, now);
        }
    }

    /// An instance of `key` failed after running for `ran`, for the reason `why`: the
    /// next launch waits.
    fn failed(&mut self, key: &str, ran: Duration, why: String, now: Instant) {
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
        b.delay = delay;
        b.last_failure = why;
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
        let why = format!("{task_id} could not be launched: {why}");
        self.failed(&dep, Duration::ZERO, why, now);
    }
}
