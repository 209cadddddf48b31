//! The Mesos half: the allocator shares the agents' free resources among roles in rounds,
//! the deployment controller uses its offers at once, and the rest go to frameworks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tracing::warn;

use actormesh::framework::{FrameworkEvent, Offer};
use actormesh::resources::Resources;

use super::{ClusterCore, Effect, DEPLOYMENTS_ROLE};
use crate::allocator;
use crate::deployments::{self, Holding};
use crate::frameworks::{OfferRecord, TaskState, TaskStatus};
use crate::membership::AgentState;

/// How long the deployment controller refuses an agent it could not use at all.
const DEPLOYMENTS_FILTER: Duration = Duration::from_secs(1);

/// A framework as `get frameworks` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FrameworkSummary {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Connected now.
    pub connected: bool,
    /// Whether it asked for no offers.
    pub suppressed: bool,
    /// Its live tasks.
    pub tasks: usize,
    /// Offers it holds.
    pub offers: usize,
    /// What its role holds (tasks and offers).
    pub allocated: Resources,
    /// Its role's dominant share divided by the role's weight.
    pub weighted_share: f64,
    /// Its role's weight.
    pub weight: f64,
}

impl ClusterCore {
    /// What the deployments took or gave back, told to the allocator.
    fn apply_holdings(&mut self) {
        for h in self.deployments.take_holdings() {
            match h {
                Holding::Took { agent, resources } => {
                    // An agent not counted yet (it is registering) gets its instances
                    // counted when it is added (`rebuild_agent`).
                    if self.allocator.has_agent(&agent) {
                        if let Err(e) =
                            self.allocator
                                .allocate(DEPLOYMENTS_ROLE, &agent, &resources)
                        {
                            warn!(%agent, error = %e, "an instance that came back does not fit its agent's free resources");
                        }
                    }
                }
                Holding::Freed { agent, resources } => {
                    self.allocator.recover(DEPLOYMENTS_ROLE, &agent, &resources)
                }
            }
        }
    }

    /// The agent (re)registered: its slot in the allocator is made anew from its resources
    /// and what runs there now; offers on it are withdrawn.
    pub(super) fn rebuild_agent(&mut self, id: &str) {
        self.apply_holdings();
        self.rescind_offers_on(id);
        let mut held: Vec<(String, Resources)> = self
            .deployments
            .tasks()
            .filter(|t| {
                t.agent == id
                    && (t.stopping
                        || matches!(
                            t.state,
                            TaskState::Staging | TaskState::Starting | TaskState::Running
                        ))
            })
            .map(|t| (DEPLOYMENTS_ROLE.to_string(), t.resources.clone()))
            .collect();
        for t in self
            .fw
            .tasks
            .values()
            .filter(|t| t.agent == id && !t.state.is_terminal())
        {
            if let Some(f) = self.fw.book.get(&t.framework) {
                held.push((f.role.clone(), t.resources.clone()));
            }
        }
        // Removing the agent takes what roles held there out of their totals; what runs
        // there now is counted again below.
        self.allocator.remove_agent(id);
        let Some(rec) = self.membership.get(id) else {
            return;
        };
        if rec.state != AgentState::Active || rec.addr.is_none() {
            return;
        }
        let (draining, total) = (rec.draining, rec.resources.clone());
        let reserved = self.reservations.get(id).cloned().unwrap_or_default();
        for role in reserved.keys() {
            self.ensure_role(role);
        }
        self.allocator.add_agent(id, total, reserved);
        self.allocator.pause_agent(id, draining);
        for (role, res) in held {
            if let Err(e) = self.allocator.allocate(&role, id, &res) {
                warn!(agent = id, %role, error = %e, "what runs on the agent exceeds what it offers");
            }
        }
    }

    /// Gives `role` its configured share settings in the allocator, the first time it is seen.
    fn ensure_role(&mut self, role: &str) {
        if self.allocator.role(role).is_none() {
            let config = self.roles.get(role).cloned().unwrap_or_default();
            self.allocator.set_role(role, config);
        }
    }

    /// The frameworks of `role` that take offers now.
    fn offer_takers(&self, role: &str) -> Vec<String> {
        self.fw
            .book
            .all()
            .filter(|f| {
                f.role == role
                    && f.disconnected_at.is_none()
                    && !self.fw.suppressed.contains(&f.id)
                    && self.fw.refs.contains_key(&f.id)
            })
            .map(|f| f.id.clone())
            .collect()
    }

    /// Filters `agent` for `role` in the allocator while every framework of the role that
    /// takes offers declined it, until the first of their filters ends.
    pub(super) fn sync_role_filter(&mut self, role: &str, agent: &str, now: Instant) {
        let mut until: Option<Instant> = None;
        let takers = self.offer_takers(role);
        let mut all = !takers.is_empty();
        for fw in &takers {
            match self
                .fw
                .filters
                .get(&(fw.clone(), agent.to_string()))
                .filter(|t| **t > now)
            {
                Some(t) => until = Some(until.map_or(*t, |u| u.min(*t))),
                None => {
                    all = false;
                    break;
                }
            }
        }
        match until {
            Some(until) if all => self.allocator.filter(role, agent, until),
            _ => self.allocator.unfilter(role, agent),
        }
    }

    /// Recomputes `role`'s filters (its frameworks changed: one came, went, revived or
    /// suppressed).
    pub(super) fn resync_role(&mut self, role: &str, now: Instant) {
        self.allocator.revive(role);
        let agents: BTreeSet<String> = self
            .fw
            .filters
            .keys()
            .filter(|(fw, _)| self.fw.roles.get(fw).is_some_and(|r| r == role))
            .map(|(_, a)| a.clone())
            .collect();
        for agent in agents {
            self.sync_role_filter(role, &agent, now);
        }
    }

    /// Withdraws the offers on agent `id` and tells their frameworks.
    pub(super) fn rescind_offers_on(&mut self, id: &str) {
        for o in self.fw.book.rescind_agent(id) {
            self.give_back_offer(&o);
        }
    }

    pub(super) fn give_back_offer(&mut self, o: &OfferRecord) {
        if let Some(role) = self.fw.roles.get(&o.framework) {
            self.allocator.recover(role, &o.agent, &o.resources);
        }
        self.tell_framework(
            &o.framework,
            FrameworkEvent::OfferRescinded {
                offer_id: o.id.clone(),
            },
        );
    }

    /// Agent `id` left Active (`to`): its offers are withdrawn, its resources leave the
    /// allocator, and frameworks hear that their tasks there are Unreachable or Lost.
    pub(super) fn agent_left(&mut self, id: &str, to: AgentState, now: Instant) {
        self.deployments.agent_lost(id);
        self.apply_holdings();
        self.rescind_offers_on(id);
        let state = if to == AgentState::Gone {
            TaskState::Lost
        } else {
            TaskState::Unreachable
        };
        let ids: Vec<String> = self
            .fw
            .tasks
            .iter()
            .filter(|(_, t)| t.agent == id && !t.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect();
        for k in ids {
            let status = TaskStatus {
                task_id: k,
                agent_id: id.to_string(),
                state,
                message: format!("agent {id} is {to}"),
                uuid: self.next_update_uuid(),
                healthy: None,
            };
            self.framework_task_status(status, now);
        }
        self.allocator.remove_agent(id);
    }

    pub(super) fn next_update_uuid(&mut self) -> u64 {
        // 0 means "no acknowledgement needed" to frameworks: never used for an update.
        self.update_uuid = self.update_uuid.wrapping_add(1).max(1);
        self.update_uuid
    }

    /// Sends the status updates that are due to connected frameworks.
    pub(super) fn deliver_updates(&mut self, now: Instant) {
        for (fw, status) in self.fw.book.due_updates(now) {
            self.tell_framework(&fw, FrameworkEvent::StatusUpdate(status));
        }
    }

    /// Sends `event` to framework `fw`, if it is connected.
    pub(super) fn tell_framework(&mut self, fw: &str, event: FrameworkEvent) {
        if self.fw.refs.contains_key(fw) {
            self.out.push(Effect::ToFramework {
                framework: fw.to_string(),
                event,
            });
        }
    }

    /// One allocation round: expire offers and frameworks, hand out offers, let the
    /// deployment controller use its own at once, send the rest to frameworks.
    pub(super) fn allocation_round(&mut self, now: Instant) {
        // After a restart, agents get the restart grace to report what they run (and have
        // it adopted) before anything is launched, so nothing is started twice.
        let grace = self.membership.config().unreachable_after * 2;
        if self.had_agents && now.saturating_duration_since(self.started) < grace {
            return;
        }
        self.apply_holdings();
        self.fw.filters.retain(|_, until| *until > now);
        let expired = self.fw.book.expire(now);
        for o in &expired.offers {
            self.give_back_offer(o);
        }
        for f in expired.failed_over {
            warn!(framework = %f.id, "framework failed over: not re-registered within its failover timeout; killing its tasks");
            self.end_framework(&f.id, now);
        }
        self.deliver_updates(now);

        // Who wants offers.
        self.allocator
            .set_demand(DEPLOYMENTS_ROLE, self.deployments.wants_offers(now));
        let roles: BTreeSet<String> = self.fw.book.all().map(|f| f.role.clone()).collect();
        for role in &roles {
            let wants = !self.offer_takers(role).is_empty();
            self.ensure_role(role);
            self.allocator.set_demand(role, wants);
        }
        let offers = self.allocator.offers(now);
        let (mine, theirs): (Vec<_>, Vec<_>) =
            offers.into_iter().partition(|o| o.role == DEPLOYMENTS_ROLE);

        // The deployment controller uses its offers at once.
        let offered: BTreeMap<&str, &allocator::Offer> =
            mine.iter().map(|o| (o.agent.as_str(), o)).collect();
        let agents: Vec<deployments::AgentView> = self
            .membership
            .all()
            .map(|a| deployments::AgentView {
                id: a.id.clone(),
                up: a.state == AgentState::Active && !a.draining && a.addr.is_some(),
                usable: offered.contains_key(a.id.as_str()),
                actor_types: a.actor_types.clone(),
                attrs: a.attrs.clone(),
                free: offered
                    .get(a.id.as_str())
                    .map(|o| o.resources.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let actions = self.deployments.reconcile(&agents, now);
        let mut used: BTreeMap<String, Resources> = BTreeMap::new();
        for a in &actions {
            if let deployments::Action::Launch { task_id, agent, .. } = a {
                if let Some(t) = self.deployments.task(task_id) {
                    let u = used.entry(agent.clone()).or_default();
                    *u = u.plus(&t.resources);
                }
            }
        }
        for o in &mine {
            match used.get(&o.agent) {
                Some(u) => {
                    self.allocator
                        .recover(DEPLOYMENTS_ROLE, &o.agent, &o.resources.minus(u))
                }
                None => self.allocator.decline(o, DEPLOYMENTS_FILTER, now),
            }
        }
        self.apply_holdings();
        self.carry_out(actions);

        // The rest go to frameworks: within a role, by DRF among its frameworks (what their
        // live tasks and outstanding offers hold).
        let mut batches: BTreeMap<String, Vec<Offer>> = BTreeMap::new();
        let mut held: BTreeMap<String, Resources> = BTreeMap::new();
        let mut total = Resources::default();
        if !theirs.is_empty() {
            total = self.allocator.cluster_total();
            // Unreachable tasks' resources went back to the allocator with their agent.
            let live = self
                .fw
                .tasks
                .values()
                .filter(|t| !t.state.is_terminal() && t.state != TaskState::Unreachable);
            let holdings = live.map(|t| (&t.framework, &t.resources)).chain(
                self.fw
                    .book
                    .outstanding()
                    .map(|o| (&o.framework, &o.resources)),
            );
            for (fw, res) in holdings {
                let h = held.entry(fw.clone()).or_default();
                *h = h.plus(res);
            }
        }
        for o in theirs {
            // A framework reaches its actor tasks at the agent's address: an agent not
            // registered at one yet is not offered.
            let member = self.membership.get(&o.agent);
            let Some((agent_addr, attrs, actor_types)) =
                member.and_then(|a| Some((a.addr?, a.attrs.clone(), a.actor_types.clone())))
            else {
                self.allocator.recover(&o.role, &o.agent, &o.resources);
                continue;
            };
            let candidates: Vec<String> = self
                .offer_takers(&o.role)
                .into_iter()
                .filter(|f| {
                    self.fw
                        .filters
                        .get(&(f.clone(), o.agent.clone()))
                        .is_none_or(|t| *t <= now)
                })
                .collect();
            let Some(fw) = allocator::least_dominant(&candidates, &held, &total).cloned() else {
                self.allocator.recover(&o.role, &o.agent, &o.resources);
                continue;
            };
            let h = held.entry(fw.clone()).or_default();
            *h = h.plus(&o.resources);
            let offer_id = self.fw.book.offer(&fw, &o.agent, o.resources.clone(), now);
            batches.entry(fw).or_default().push(Offer {
                offer_id,
                agent_id: o.agent.clone(),
                agent_addr,
                resources: o.resources,
                attrs,
                actor_types,
            });
        }
        for (fw, offers) in batches {
            self.tell_framework(&fw, FrameworkEvent::ResourceOffers(offers));
        }
    }

    /// Every framework, the deployment controller first.
    pub fn framework_summaries(&self) -> Vec<FrameworkSummary> {
        let deployments_tasks = self
            .deployments
            .tasks()
            .filter(|t| {
                matches!(
                    t.state,
                    TaskState::Staging | TaskState::Starting | TaskState::Running
                )
            })
            .count();
        let weight = |role: &str| self.allocator.role(role).map_or(1.0, |c| c.weight);
        let mut out = vec![FrameworkSummary {
            id: "deployments".into(),
            name: "deployment controller".into(),
            role: DEPLOYMENTS_ROLE.into(),
            connected: true,
            suppressed: false,
            tasks: deployments_tasks,
            offers: 0,
            allocated: self.allocator.allocated(DEPLOYMENTS_ROLE),
            weighted_share: self.allocator.weighted_share(DEPLOYMENTS_ROLE),
            weight: weight(DEPLOYMENTS_ROLE),
        }];
        for f in self.fw.book.all() {
            out.push(FrameworkSummary {
                id: f.id.clone(),
                name: f.name.clone(),
                role: f.role.clone(),
                connected: f.disconnected_at.is_none(),
                suppressed: self.fw.suppressed.contains(&f.id),
                tasks: self
                    .fw
                    .tasks
                    .values()
                    .filter(|t| t.framework == f.id && !t.state.is_terminal())
                    .count(),
                offers: self.fw.book.offers_held(&f.id),
                allocated: self.allocator.allocated(&f.role),
                weighted_share: self.allocator.weighted_share(&f.role),
                weight: weight(&f.role),
            });
        }
        out
    }
}
