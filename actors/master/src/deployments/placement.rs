//! Placement: which instances to launch where and which to kill, each round, and
//! whether the deployments want offers at all.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::*;

impl DeploymentBook {
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
        self.stalled.remove(k);
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
                if b.not_before.is_some_and(|at| at > now) {
                    self.unplaced.insert(
                        k.to_string(),
                        // Says the same until the next launch, so that a watcher (`apply`)
                        // prints it once: the delay, not a countdown.
                        format!(
                            "restarting with backoff after {} failure(s), the next launch {:.1}s after the last ({})",
                            b.failures,
                            b.delay.as_secs_f64(),
                            b.last_failure
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
                    let id = format!("{}{:x}.{}", task_prefix(d), self.epoch, self.next);
                    self.next += 1;
                    self.placed += 1;
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
                            endpoint: None,
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
                    // Only a rolling update can be stuck (and the look copies the books).
                    let stuck = old_count > 0
                        && self.rollout_stuck(
                            k,
                            d,
                            agents,
                            left,
                            &on_agent,
                            available,
                            min_available,
                        );
                    why = Some(if stuck {
                        self.stalled.insert(k.to_string());
                        format!(
                            "the rolling update to {version} cannot finish on these agents: {reason}, and no instance of an older version may stop first (max_unavailable {}: none until a new one runs). Set rolling_update.max_unavailable to 1 or more, or add an agent that can take an instance",
                            spec.rolling_update.max_unavailable
                        )
                    } else {
                        reason
                    });
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

    /// Whether a rolling update of `k` waits for something that cannot happen: no new
    /// instance can be placed, only the older versions' instances stand in the way (with
    /// their places and resources free, one could), and none of them may stop, because
    /// availability allows no fewer (`available <= min_available`) and no new instance is
    /// still starting (one that becomes available would let an old one go) and none is
    /// stopping (its end frees a place). It stays so until an agent joins or the settings
    /// change.
    #[allow(clippy::too_many_arguments)]
    fn rollout_stuck(
        &self,
        k: &str,
        d: &Deployment,
        agents: &[AgentView],
        left: &BTreeMap<String, Resources>,
        on_agent: &BTreeMap<String, usize>,
        available: usize,
        min_available: usize,
    ) -> bool {
        let version = &d.manifest.spec.version;
        let checked = d.health.is_some();
        let mut old = false;
        let (mut left, mut on_agent) = (left.clone(), on_agent.clone());
        for t in self.tasks.values().filter(|t| t.deployment == k) {
            if t.stopping {
                return false;
            }
            if !t.live() {
                continue;
            }
            if &t.version == version {
                if !t.available(checked) {
                    return false;
                }
                continue;
            }
            old = true;
            if let Some(n) = on_agent.get_mut(&t.agent) {
                *n = n.saturating_sub(1);
            }
            let free = left.get(&t.agent).cloned().unwrap_or_default();
            left.insert(t.agent.clone(), free.plus(&t.resources));
        }
        old && available <= min_available && self.choose(d, agents, &left, &on_agent).is_ok()
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
}
