//! The Mesos half of the master: the [`allocator::Allocator`] shares the agents' free resources
//! among roles, and frameworks — the built-in deployment controller and framework actors
//! that registered through [`actormesh::framework`] — receive them as offers.
//!
//! Allocation runs in rounds, on events (an agent registers, a task ends, an offer is
//! declined or accepted with leftovers, a framework registers or revives, a deployment is
//! applied) and on the master's tick for what time changes (offer timeouts, decline
//! filters, restart backoff). Events coalesce: one round per burst.
//!
//! The deployment controller is a framework with the role [`DEPLOYMENTS_ROLE`]; its
//! offers are used inside the master at once, and what it does not use goes back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{info, warn};

use super::allocator;
use super::deployments::{self, Holding};
use super::frameworks::{FrameworkBook, TaskState, TaskStatus};
use super::membership::AgentState;
use super::state::{Change, Table};
use super::Master;
use actormesh::framework::{
    AcceptOffer, Acknowledge, DeclineOffer, FrameworkError, FrameworkEvent, KillTask, Offer,
    ReconcileTasks, RegisterFramework, Registration, SetOffers, TaskKind, Teardown,
};
use actormesh::resources::Resources;
use actormesh::{RemoteRef, Terminated};
use actormesh_transport::SpiffeId;

/// The role of the built-in deployment framework (reserved: frameworks cannot take it).
pub const DEPLOYMENTS_ROLE: &str = "deployments";
/// How long the deployment controller refuses an agent it could not use at all.
const DEPLOYMENTS_FILTER: Duration = Duration::from_secs(1);
/// The longest failover timeout a framework may ask for.
const MAX_FAILOVER: Duration = Duration::from_secs(7 * 24 * 3600);
const FRAMEWORK_PREFIX: &str = "framework/";

/// A task a framework launched.
#[derive(Debug, Clone)]
pub(super) struct FrameworkTask {
    framework: String,
    /// The framework's role, kept with the task: it outlives a torn-down framework.
    role: String,
    /// The framework's own id for it.
    task_id: String,
    agent: String,
    resources: Resources,
    state: TaskState,
    message: String,
}

/// Frameworks as the master keeps them.
pub(super) struct Frameworks {
    pub(super) book: FrameworkBook,
    /// Where each connected framework's events go.
    refs: BTreeMap<String, RemoteRef>,
    /// Each framework's role, also after it is gone (its offers and tasks may still have
    /// resources to give back).
    roles: BTreeMap<String, String>,
    /// The verified identity that registered each framework (kept in the state store):
    /// only it may speak for the framework or re-register it.
    registered_by: BTreeMap<String, String>,
    /// Declines per framework: (framework, agent) not offered to it until the instant. The
    /// allocator filters an agent for a role only while every framework of the role does.
    filters: BTreeMap<(String, String), Instant>,
    /// Frameworks that asked for no offers.
    suppressed: BTreeSet<String>,
    /// By agent task id (`framework_task`).
    tasks: BTreeMap<String, FrameworkTask>,
}

impl std::fmt::Debug for Frameworks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frameworks")
            .field("frameworks", &self.refs.len())
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// The id agents know a framework's task by (also its actor instance's name).
fn agent_task_id(framework: &str, task: &str) -> String {
    actormesh::framework::instance_name(framework, task)
}

/// A framework's record in the state store.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredFramework {
    id: String,
    name: String,
    role: String,
    failover_timeout_ms: u64,
    /// The verified identity that registered it: only it may re-register it.
    #[serde(default)]
    registered_by: String,
}

impl Frameworks {
    /// The agent and state of framework task `id` (an agent task id).
    pub(super) fn task_view(&self, id: &str) -> Option<(String, TaskState)> {
        self.tasks.get(id).map(|t| (t.agent.clone(), t.state))
    }

    /// Whether framework task `id` (an agent task id) has an end its framework has yet to
    /// acknowledge.
    pub(super) fn awaits_ack(&self, id: &str) -> bool {
        self.tasks
            .get(id)
            .is_some_and(|t| t.state.is_terminal() && self.book.get(&t.framework).is_some())
    }

    /// The agent of framework task `id` (an agent task id).
    pub(super) fn task_agent(&self, id: &str) -> Option<String> {
        self.tasks.get(id).map(|t| t.agent.clone())
    }

    /// Framework tasks in the shape `get tasks` shows; the owner is `framework/<id>`.
    pub(super) fn task_entries(&self) -> Vec<deployments::TaskEntry> {
        self.tasks
            .iter()
            .map(|(id, t)| deployments::TaskEntry {
                id: id.clone(),
                deployment: format!("framework/{}", t.framework),
                version: String::new(),
                agent: t.agent.clone(),
                state: t.state,
                message: t.message.clone(),
                resources: t.resources.clone(),
                seq: 0,
                running_since: None,
                healthy: None,
                stopping: false,
            })
            .collect()
    }

    /// What framework task `id` (an agent task id) holds.
    pub(super) fn task_resources(&self, id: &str) -> Option<Resources> {
        self.tasks.get(id).map(|t| t.resources.clone())
    }

    /// Frameworks, with those an earlier master process registered (disconnected until
    /// they re-register within their failover timeout).
    pub(super) fn load(
        config_rows: &[(String, super::state::Versioned)],
        offer_timeout: Duration,
        epoch: u32,
    ) -> anyhow::Result<Self> {
        let mut book = FrameworkBook::new(
            offer_timeout,
            Duration::from_millis(500),
            Duration::from_secs(30),
        );
        book.set_epoch(epoch);
        let now = Instant::now();
        let mut roles = BTreeMap::new();
        let mut registered_by = BTreeMap::new();
        for (k, v) in config_rows {
            if k.starts_with(FRAMEWORK_PREFIX) {
                let f: StoredFramework = serde_json::from_slice(&v.value)?;
                roles.insert(f.id.clone(), f.role.clone());
                registered_by.insert(f.id.clone(), f.registered_by.clone());
                book.restore(
                    &f.id,
                    &f.name,
                    &f.role,
                    Duration::from_millis(f.failover_timeout_ms),
                    now,
                );
            }
        }
        Ok(Self {
            book,
            refs: BTreeMap::new(),
            roles,
            registered_by,
            filters: BTreeMap::new(),
            suppressed: BTreeSet::new(),
            tasks: BTreeMap::new(),
        })
    }
}

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

impl Master {
    /// Runs an allocation round soon (once for a burst of events).
    pub(super) fn schedule_round(&mut self, ctx: &mut Context<Self>) {
        if self.round_scheduled {
            return;
        }
        self.round_scheduled = true;
        ctx.run_later(Duration::ZERO, |m, ctx| {
            m.round_scheduled = false;
            m.allocation_round(ctx);
        });
    }

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

    /// An agent (re)registered with what it runs. Framework tasks the master does not know
    /// (it restarted) are taken up again if their framework is known (it may re-register
    /// within its failover timeout) and killed if not; tasks that were Unreachable there
    /// run again; tasks the agent no longer runs are Lost. Returns the kills.
    pub(super) fn adopt_framework_tasks(
        &mut self,
        agent: &str,
        running: &[String],
        held: &BTreeMap<String, Resources>,
    ) -> Vec<deployments::Action> {
        let reported: BTreeSet<&String> = running.iter().collect();
        let gone: Vec<String> = self
            .fw
            .tasks
            .iter()
            .filter(|(k, t)| {
                t.agent == agent
                    && matches!(
                        t.state,
                        TaskState::Staging
                            | TaskState::Starting
                            | TaskState::Running
                            | TaskState::Unreachable
                    )
                    && !reported.contains(k)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            let status = TaskStatus {
                task_id: k,
                agent_id: agent.to_string(),
                state: TaskState::Lost,
                message: format!("agent {agent} restarted and no longer runs it"),
                uuid: 0,
                healthy: None,
            };
            self.framework_task_status(status);
        }
        let mut kills = Vec::new();
        for id in running {
            if let Some(t) = self.fw.tasks.get(id) {
                if t.agent != agent {
                    warn!(task = %id, %agent, owner = %t.agent, "an agent reports another agent's task; killing its copy");
                    kills.push(deployments::Action::Kill {
                        task_id: id.clone(),
                        agent: agent.to_string(),
                    });
                    continue;
                }
                if t.state.is_terminal() || self.fw.book.get(&t.framework).is_none() {
                    // Given up (or its framework is gone): it must not run on.
                    kills.push(deployments::Action::Kill {
                        task_id: id.clone(),
                        agent: agent.to_string(),
                    });
                    continue;
                }
                if t.state == TaskState::Unreachable {
                    let status = TaskStatus {
                        task_id: id.clone(),
                        agent_id: agent.to_string(),
                        state: TaskState::Running,
                        message: format!("agent {agent} is back"),
                        uuid: 0,
                        healthy: None,
                    };
                    self.framework_task_status(status);
                }
                continue;
            }
            let Some((fw, task)) = id.split_once('_') else {
                continue;
            };
            if !fw.starts_with("fw-") || self.deployments.task(id).is_some() {
                continue;
            }
            if self.fw.book.get(fw).is_some() {
                self.fw.tasks.insert(
                    id.clone(),
                    FrameworkTask {
                        framework: fw.to_string(),
                        role: self
                            .fw
                            .book
                            .get(fw)
                            .map(|f| f.role.clone())
                            .unwrap_or_default(),
                        task_id: task.to_string(),
                        agent: agent.to_string(),
                        resources: held.get(id).cloned().unwrap_or_default(),
                        state: TaskState::Running,
                        message: "adopted after a master restart".into(),
                    },
                );
            } else {
                warn!(task = %id, %agent, "killing a task of an unknown framework");
                kills.push(deployments::Action::Kill {
                    task_id: id.clone(),
                    agent: agent.to_string(),
                });
            }
        }
        kills
    }

    /// The end of task `s.task_id` that this master does not know, reported by its agent:
    /// if it is a task of a known framework (this master restarted after launching it), it
    /// is passed on to the framework. False if it is not such a task.
    pub(super) fn framework_task_ended_unknown(&mut self, s: &TaskStatus) -> bool {
        let Some((fw, task)) = s.task_id.split_once('_') else {
            return false;
        };
        let Some(role) = self.fw.book.get(fw).map(|f| f.role.clone()) else {
            return false;
        };
        self.fw.tasks.insert(
            s.task_id.clone(),
            FrameworkTask {
                framework: fw.to_string(),
                role,
                task_id: task.to_string(),
                agent: s.agent_id.clone(),
                // What it held left the allocator with the old master.
                resources: Resources::default(),
                state: TaskState::Running,
                message: String::new(),
            },
        );
        self.framework_task_status(s.clone())
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
    fn sync_role_filter(&mut self, role: &str, agent: &str, now: Instant) {
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
    fn resync_role(&mut self, role: &str) {
        let now = Instant::now();
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

    fn give_back_offer(&mut self, o: &super::frameworks::OfferRecord) {
        if let Some(role) = self.fw.roles.get(&o.framework) {
            self.allocator.recover(role, &o.agent, &o.resources);
        }
        if let Some(r) = self.fw.refs.get(&o.framework) {
            let _ = r.try_tell(FrameworkEvent::OfferRescinded {
                offer_id: o.id.clone(),
            });
        }
    }

    /// Agent `id` left Active (`to`): its offers are withdrawn, its resources leave the
    /// allocator, and frameworks hear that their tasks there are Unreachable or Lost.
    pub(super) fn agent_left(&mut self, id: &str, to: AgentState) {
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
            self.framework_task_status(status);
        }
        self.allocator.remove_agent(id);
    }

    fn next_update_uuid(&mut self) -> u64 {
        // 0 means "no acknowledgement needed" to frameworks: never used for an update.
        self.update_uuid = self.update_uuid.wrapping_add(1).max(1);
        self.update_uuid
    }

    /// A status of a framework task (by agent task id); false if it is not one.
    pub(super) fn framework_task_status(&mut self, s: TaskStatus) -> bool {
        let Some(t) = self.fw.tasks.get_mut(&s.task_id) else {
            return false;
        };
        // Ended stays ended, a duplicate changes nothing, and a late Starting does not
        // undo Running.
        if t.state.is_terminal()
            || (s.state == t.state && s.message == t.message)
            || (s.state == TaskState::Starting && t.state == TaskState::Running)
        {
            return true;
        }
        t.state = s.state;
        t.message = s.message.clone();
        let (fw, task_id, agent, res, role) = (
            t.framework.clone(),
            t.task_id.clone(),
            t.agent.clone(),
            t.resources.clone(),
            t.role.clone(),
        );
        // Its resources go back when it ends or its agent is unreachable (a no-op once the
        // agent has left the allocator).
        if s.state.is_terminal() || s.state == TaskState::Unreachable {
            self.allocator.recover(&role, &agent, &res);
        }
        if self.fw.book.get(&fw).is_none() {
            // Its framework is gone (torn down or failed over): nobody to tell; an ended
            // task is done with.
            if s.state.is_terminal() {
                self.fw.tasks.remove(&s.task_id);
            }
            return true;
        }
        // The framework acknowledges by the master's uuid (agents number their own).
        let update = TaskStatus {
            task_id,
            uuid: self.next_update_uuid(),
            ..s
        };
        self.fw.book.status_update(&fw, update, Instant::now());
        self.deliver_updates();
        true
    }

    /// Sends the status updates that are due to connected frameworks.
    fn deliver_updates(&mut self) {
        for (fw, status) in self.fw.book.due_updates(Instant::now()) {
            if let Some(r) = self.fw.refs.get(&fw) {
                let _ = r.try_tell(FrameworkEvent::StatusUpdate(status));
            }
        }
    }

    /// One allocation round: expire offers and frameworks, hand out offers, let the
    /// deployment controller use its own at once, send the rest to frameworks.
    pub(super) fn allocation_round(&mut self, ctx: &mut Context<Self>) {
        // After a restart, agents get the restart grace to report what they run (and have
        // it adopted) before anything is launched, so nothing is started twice.
        let grace = self.membership.config().unreachable_after * 2;
        if self.had_agents && self.started.elapsed() < grace {
            return;
        }
        let now = Instant::now();
        self.apply_holdings();
        self.fw.filters.retain(|_, until| *until > now);
        let expired = self.fw.book.expire(now);
        for o in &expired.offers {
            self.give_back_offer(o);
        }
        for f in expired.failed_over {
            warn!(framework = %f.id, "framework failed over: not re-registered within its failover timeout; killing its tasks");
            self.end_framework(&f.id, ctx);
        }
        self.deliver_updates();

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
        self.carry_out(actions, ctx);

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
            let (attrs, actor_types) = self
                .membership
                .get(&o.agent)
                .map(|a| (a.attrs.clone(), a.actor_types.clone()))
                .unwrap_or_default();
            batches.entry(fw).or_default().push(Offer {
                offer_id,
                agent_id: o.agent.clone(),
                resources: o.resources,
                attrs,
                actor_types,
            });
        }
        for (fw, offers) in batches {
            if let Some(r) = self.fw.refs.get(&fw) {
                let _ = r.try_tell(FrameworkEvent::ResourceOffers(offers));
            }
        }
    }

    /// Tears a framework down: kills its tasks, withdraws its offers, forgets it.
    fn end_framework(&mut self, id: &str, ctx: &mut Context<Self>) {
        let role = self.fw.book.get(id).map(|f| f.role.clone());
        for o in self.fw.book.remove(id) {
            if let Some(role) = &role {
                self.allocator.recover(role, &o.agent, &o.resources);
            }
        }
        let kills: Vec<deployments::Action> = self
            .fw
            .tasks
            .iter()
            .filter(|(_, t)| t.framework == id && !t.state.is_terminal())
            .map(|(k, t)| deployments::Action::Kill {
                task_id: k.clone(),
                agent: t.agent.clone(),
            })
            .collect();
        self.carry_out(kills, ctx);
        if let Some(r) = self.fw.refs.remove(id) {
            let _ = r.try_tell(FrameworkEvent::Error {
                message: format!("framework {id} was torn down"),
            });
        }
        self.fw.registered_by.remove(id);
        self.fw.suppressed.remove(id);
        self.fw.filters.retain(|(fw, _), _| fw != id);
        if let Some(role) = &role {
            self.resync_role(role);
        }
        // Not awaited: a failed write makes the master step down, and a restarted master
        // finds the framework again and fails it over after its timeout.
        drop(self.persist(vec![Change::delete(
            Table::Config,
            format!("{FRAMEWORK_PREFIX}{id}"),
        )]));
    }

    /// The caller may speak for framework `id`.
    fn framework_caller(
        &self,
        id: &str,
        caller: &Option<SpiffeId>,
    ) -> Result<String, FrameworkError> {
        let f = self.fw.book.get(id).ok_or_else(|| {
            FrameworkError::NotRegistered(format!(
                "framework {id} is not registered (it may have failed over); register again"
            ))
        })?;
        let who = caller.as_ref().map(|c| c.to_string()).ok_or_else(|| {
            FrameworkError::Forbidden("framework calls must come over the mesh".into())
        })?;
        match self.fw.registered_by.get(id) {
            Some(owner) if owner != &who => Err(FrameworkError::Forbidden(format!(
                "{who} may not speak for framework {id} (registered by {owner})"
            ))),
            _ if !self.fw.refs.contains_key(id) => Err(FrameworkError::NotRegistered(format!(
                "framework {id} is disconnected: re-register it with its id first"
            ))),
            _ => Ok(f.role.clone()),
        }
    }

    /// Every framework, the deployment controller first.
    pub(super) fn framework_summaries(&self) -> Vec<FrameworkSummary> {
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

fn valid_role(role: &str) -> Result<(), FrameworkError> {
    if role == DEPLOYMENTS_ROLE {
        return Err(FrameworkError::Invalid(format!(
            "role {role:?} is reserved for the built-in deployment controller; choose another"
        )));
    }
    let ok = !role.is_empty()
        && role.len() <= 63
        && role.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(FrameworkError::Invalid(format!(
            "role {role:?} is not valid: expected 1-63 lowercase letters, digits, '-', '_' or '.'"
        )))
    }
}

/// A framework's task id; short enough for the framework id to go in front of it.
fn valid_task_id(id: &str) -> Result<(), FrameworkError> {
    actormesh::protocol::check_task_id(id, 100).map_err(|e| FrameworkError::Invalid(e.to_string()))
}

/// A framework call with the verified caller.
#[derive(Debug, Message)]
#[rtype(result = "Result<Registration, FrameworkError>")]
pub(super) struct RegisterFrameworkFrom(pub RegisterFramework, pub Option<SpiffeId>);

impl Handler<RegisterFrameworkFrom> for Master {
    type Result = ResponseActFuture<Self, Result<Registration, FrameworkError>>;
    fn handle(&mut self, m: RegisterFrameworkFrom, _: &mut Context<Self>) -> Self::Result {
        let (r, who, id, reregistered, stored) = match self.book_framework(m) {
            Ok(booked) => booked,
            Err(e) => return Box::pin(actix::fut::ready(Err(e))),
        };
        // The framework hears of its registration, and gets offers, only once its record
        // is stored: a master restart then still knows it.
        Box::pin(stored.into_actor(self).map(move |stored, master, ctx| {
            if let Err(e) = stored {
                if reregistered {
                    // Still disconnected: its failover timer keeps running.
                    master.fw.book.disconnected(&id, Instant::now());
                } else {
                    master.fw.book.remove(&id);
                }
                return Err(FrameworkError::Unavailable(format!(
                    "cannot record the framework: {e}"
                )));
            }
            Ok(master.framework_registered(r, who, id, reregistered, ctx))
        }))
    }
}

impl Master {
    /// Checks a registration and books the framework; returns the write of its record.
    #[allow(clippy::type_complexity)]
    fn book_framework(
        &mut self,
        m: RegisterFrameworkFrom,
    ) -> Result<
        (
            RegisterFramework,
            String,
            String,
            bool,
            super::state::StoreFuture<()>,
        ),
        FrameworkError,
    > {
        let (r, caller) = (m.0, m.1);
        let who = caller.map(|c| c.to_string()).ok_or_else(|| {
            FrameworkError::Forbidden("frameworks must register over the mesh".into())
        })?;
        valid_role(&r.role)?;
        // The master dials the event actor's address: it must be the registering node's
        // own, or a framework could make the master send events to any node.
        let caller_addrs = SpiffeId::parse(&who)
            .map(|id| self.endpoint.addresses_of(&id))
            .unwrap_or_default();
        if !caller_addrs.contains(&r.actor_addr) {
            return Err(FrameworkError::Forbidden(format!(
                "the framework's event actor must be on the registering node: {who} is at {caller_addrs:?}, not {}",
                r.actor_addr
            )));
        }
        if r.name.trim().is_empty() || r.actor_name.is_empty() {
            return Err(FrameworkError::Invalid(
                "a framework needs a name and the name of its event actor".into(),
            ));
        }
        if let Some(id) = &r.framework_id {
            match self.fw.registered_by.get(id) {
                Some(by) if by != &who => {
                    return Err(FrameworkError::Forbidden(format!(
                        "framework {id} was registered by {by}; {who} may not take it over"
                    )))
                }
                _ => {}
            }
        }
        let failover = Duration::from_millis(r.failover_timeout_ms);
        if failover > MAX_FAILOVER {
            return Err(FrameworkError::Invalid(format!(
                "failover timeout {failover:?} is too long: at most {MAX_FAILOVER:?}"
            )));
        }
        let (id, reregistered) = self
            .fw
            .book
            .register(&r.name, &r.role, failover, r.framework_id.as_deref())
            .map_err(|e| match e {
                super::frameworks::FrameworkRefusal::Unknown(_) => {
                    FrameworkError::NotRegistered(e.to_string())
                }
                other => FrameworkError::Invalid(other.to_string()),
            })?;
        let stored = StoredFramework {
            id: id.clone(),
            name: r.name.clone(),
            role: r.role.clone(),
            failover_timeout_ms: r.failover_timeout_ms,
            registered_by: who.clone(),
        };
        let value =
            serde_json::to_vec(&stored).map_err(|e| FrameworkError::Unavailable(e.to_string()))?;
        let stored = self.persist(vec![Change::put(
            Table::Config,
            format!("{FRAMEWORK_PREFIX}{id}"),
            value,
        )]);
        Ok((r, who, id, reregistered, stored))
    }

    /// A framework's record is stored: it is told, watched, and offered resources.
    fn framework_registered(
        &mut self,
        r: RegisterFramework,
        who: String,
        id: String,
        reregistered: bool,
        ctx: &mut Context<Self>,
    ) -> Registration {
        let target = self.node.actor_ref(r.actor_addr, &r.actor_name);
        self.node.watch_with(&target, ctx.address().recipient());
        let registration = Registration {
            framework_id: id.clone(),
            reregistered,
        };
        let _ = target.try_tell(FrameworkEvent::Registered(registration.clone()));
        self.fw.refs.insert(id.clone(), target);
        self.fw.roles.insert(id.clone(), r.role.clone());
        self.fw.registered_by.insert(id.clone(), who.clone());
        // A framework that declined nothing yet takes offers of every agent of its role.
        self.resync_role(&r.role);
        self.fw.book.redeliver_now(&id, Instant::now());
        self.deliver_updates();
        info!(framework = %id, name = %r.name, role = %r.role, reregistered, "framework registered");
        self.schedule_round(ctx);
        registration
    }
}

impl Handler<Terminated> for Master {
    type Result = ();
    fn handle(&mut self, t: Terminated, ctx: &mut Context<Self>) {
        let gone: Vec<String> = self
            .fw
            .refs
            .iter()
            .filter(|(_, r)| r.name() == t.actor && r.addr() == t.node)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            warn!(framework = %id, reason = ?t.reason, "framework disconnected; its failover timer runs");
            self.fw.book.disconnected(&id, Instant::now());
            self.fw.refs.remove(&id);
            if let Some(role) = self.fw.roles.get(&id).cloned() {
                self.resync_role(&role);
            }
            for o in self.fw.book.rescind_framework(&id) {
                self.give_back_offer(&o);
            }
        }
        self.schedule_round(ctx);
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Result<(), FrameworkError>")]
pub(super) struct AcceptFrom(pub AcceptOffer, pub Option<SpiffeId>);

impl Handler<AcceptFrom> for Master {
    type Result = Result<(), FrameworkError>;
    fn handle(&mut self, m: AcceptFrom, ctx: &mut Context<Self>) -> Self::Result {
        let (a, caller) = (m.0, m.1);
        let role = self.framework_caller(&a.framework_id, &caller)?;
        let offer = self
            .fw
            .book
            .take_offer(&a.framework_id, &a.offer_id)
            .map_err(|e| FrameworkError::UnknownOffer(e.to_string()))?;
        let check = || -> Result<Resources, FrameworkError> {
            let mut sum = Resources::default();
            let mut seen = BTreeSet::new();
            let hosted = self
                .membership
                .get(&offer.agent)
                .map(|r| r.actor_types.clone())
                .unwrap_or_default();
            for l in &a.launches {
                valid_task_id(&l.task_id)?;
                l.resources
                    .validate()
                    .map_err(|e| FrameworkError::Invalid(format!("task {}: {e}", l.task_id)))?;
                if l.resources.is_empty() {
                    return Err(FrameworkError::Invalid(format!(
                        "task {} asks for no resources: expected some of the offer, e.g. cpus:0.1",
                        l.task_id
                    )));
                }
                if !seen.insert(l.task_id.clone())
                    || self
                        .fw
                        .tasks
                        .contains_key(&agent_task_id(&a.framework_id, &l.task_id))
                {
                    return Err(FrameworkError::Invalid(format!(
                        "task id {:?} is already used by this framework",
                        l.task_id
                    )));
                }
                if let TaskKind::Actor { actor_type } = &l.kind {
                    if !hosted.contains(actor_type) {
                        return Err(FrameworkError::Invalid(format!(
                            "task {}: agent {} does not host actor type {actor_type:?} (it hosts: {})",
                            l.task_id,
                            offer.agent,
                            hosted.join(", ")
                        )));
                    }
                }
                sum = sum.plus(&l.resources);
            }
            if !offer.resources.contains(&sum) {
                return Err(FrameworkError::Invalid(format!(
                    "the launches need {sum}, more than offer {} holds ({})",
                    offer.id, offer.resources
                )));
            }
            Ok(sum)
        };
        let sum = match check() {
            Ok(s) => s,
            Err(e) => {
                // The offer is used up either way; its resources go back.
                self.allocator
                    .recover(&role, &offer.agent, &offer.resources);
                self.schedule_round(ctx);
                return Err(e);
            }
        };
        self.allocator
            .recover(&role, &offer.agent, &offer.resources.minus(&sum));
        let mut actions = Vec::new();
        for l in a.launches {
            let id = agent_task_id(&a.framework_id, &l.task_id);
            self.fw.tasks.insert(
                id.clone(),
                FrameworkTask {
                    framework: a.framework_id.clone(),
                    role: role.clone(),
                    task_id: l.task_id.clone(),
                    agent: offer.agent.clone(),
                    resources: l.resources.clone(),
                    state: TaskState::Staging,
                    message: String::new(),
                },
            );
            let what = match l.kind {
                TaskKind::Actor { actor_type } => deployments::Launchable::Actor(actor_type, None),
                TaskKind::Command {
                    path,
                    args,
                    env,
                    kill_grace_ms,
                } => deployments::Launchable::Command(Box::new(
                    actormesh::agent::command::CommandTask {
                        id: id.clone(),
                        path,
                        args,
                        env,
                        mem_bytes: l
                            .resources
                            .scalars
                            .get("mem")
                            .map(|mib| (mib * 1024.0 * 1024.0) as u64),
                        cpus: l.resources.scalars.get("cpus").copied(),
                        kill_grace_ms,
                        resources: l.resources.clone(),
                        version: String::new(),
                    },
                )),
            };
            actions.push(deployments::Action::Launch {
                task_id: id,
                agent: offer.agent.clone(),
                what,
                health: None,
            });
        }
        self.carry_out(actions, ctx);
        self.schedule_round(ctx);
        Ok(())
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Result<(), FrameworkError>")]
pub(super) struct DeclineFrom(pub DeclineOffer, pub Option<SpiffeId>);

impl Handler<DeclineFrom> for Master {
    type Result = Result<(), FrameworkError>;
    fn handle(&mut self, m: DeclineFrom, ctx: &mut Context<Self>) -> Self::Result {
        let (d, caller) = (m.0, m.1);
        let role = self.framework_caller(&d.framework_id, &caller)?;
        let offer = self
            .fw
            .book
            .take_offer(&d.framework_id, &d.offer_id)
            .map_err(|e| FrameworkError::UnknownOffer(e.to_string()))?;
        let now = Instant::now();
        self.allocator
            .recover(&role, &offer.agent, &offer.resources);
        self.fw.filters.insert(
            (d.framework_id.clone(), offer.agent.clone()),
            now + Duration::from_millis(d.refuse_for_ms),
        );
        self.sync_role_filter(&role, &offer.agent, now);
        self.schedule_round(ctx);
        Ok(())
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Result<(), FrameworkError>")]
pub(super) struct KillFrom(pub KillTask, pub Option<SpiffeId>);

impl Handler<KillFrom> for Master {
    type Result = Result<(), FrameworkError>;
    fn handle(&mut self, m: KillFrom, ctx: &mut Context<Self>) -> Self::Result {
        let (k, caller) = (m.0, m.1);
        self.framework_caller(&k.framework_id, &caller)?;
        let id = agent_task_id(&k.framework_id, &k.task_id);
        let t = self.fw.tasks.get(&id).ok_or_else(|| {
            FrameworkError::Invalid(format!(
                "framework {} has no task {:?}",
                k.framework_id, k.task_id
            ))
        })?;
        if t.state.is_terminal() {
            return Ok(());
        }
        let agent = t.agent.clone();
        if let Err(e) = self.agent_actor(&agent) {
            return Err(FrameworkError::Unavailable(format!(
                "cannot kill task {} now: {e}; kill it again once its agent is back",
                k.task_id
            )));
        }
        self.carry_out(vec![deployments::Action::Kill { task_id: id, agent }], ctx);
        Ok(())
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Result<(), FrameworkError>")]
pub(super) struct ReconcileFrom(pub ReconcileTasks, pub Option<SpiffeId>);

impl Handler<ReconcileFrom> for Master {
    type Result = Result<(), FrameworkError>;
    fn handle(&mut self, m: ReconcileFrom, _: &mut Context<Self>) -> Self::Result {
        let (r, caller) = (m.0, m.1);
        self.framework_caller(&r.framework_id, &caller)?;
        let fw = r.framework_id.clone();
        let ids: Vec<String> = if r.task_ids.is_empty() {
            self.fw
                .tasks
                .values()
                .filter(|t| t.framework == fw)
                .map(|t| t.task_id.clone())
                .collect()
        } else {
            r.task_ids
        };
        let target = self.fw.refs.get(&fw).cloned();
        for task in ids {
            let status = match self.fw.tasks.get(&agent_task_id(&fw, &task)) {
                Some(t) => TaskStatus {
                    task_id: task,
                    agent_id: t.agent.clone(),
                    state: t.state,
                    message: t.message.clone(),
                    uuid: 0,
                    healthy: None,
                },
                None => TaskStatus {
                    task_id: task,
                    agent_id: String::new(),
                    state: TaskState::Lost,
                    message: "the master does not know this task".into(),
                    uuid: 0,
                    healthy: None,
                },
            };
            if let Some(t) = &target {
                let _ = t.try_tell(FrameworkEvent::StatusUpdate(status));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Result<(), FrameworkError>")]
pub(super) struct AcknowledgeFrom(pub Acknowledge, pub Option<SpiffeId>);

impl Handler<AcknowledgeFrom> for Master {
    type Result = Result<(), FrameworkError>;
    fn handle(&mut self, m: AcknowledgeFrom, _: &mut Context<Self>) -> Self::Result {
        let (a, caller) = (m.0, m.1);
        self.framework_caller(&a.framework_id, &caller)?;
        if self
            .fw
            .book
            .acknowledge(&a.framework_id, &a.task_id, a.uuid)
        {
            // An acknowledged end: the task is done with, and its agent may forget the
            // report it kept. (If the release is lost, the agent sends the end again when
            // it registers, and the framework sees it once more: at least once.)
            let id = agent_task_id(&a.framework_id, &a.task_id);
            if let Some(t) = self
                .fw
                .tasks
                .get(&id)
                .filter(|t| t.state.is_terminal())
                .cloned()
            {
                self.fw.tasks.remove(&id);
                if let Ok(agent) = self.agent_actor(&t.agent) {
                    actix::spawn(async move {
                        let _ = agent
                            .ask_timeout(
                                actormesh::protocol::ReleaseStatus { task_id: id },
                                Duration::from_secs(10),
                            )
                            .await;
                    });
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Result<(), FrameworkError>")]
pub(super) struct SetOffersFrom(pub SetOffers, pub Option<SpiffeId>);

impl Handler<SetOffersFrom> for Master {
    type Result = Result<(), FrameworkError>;
    fn handle(&mut self, m: SetOffersFrom, ctx: &mut Context<Self>) -> Self::Result {
        let (s, caller) = (m.0, m.1);
        let role = self.framework_caller(&s.framework_id, &caller)?;
        if s.wanted {
            // Revive clears this framework's filters only.
            self.fw.suppressed.remove(&s.framework_id);
            let id = s.framework_id.clone();
            self.fw.filters.retain(|(fw, _), _| fw != &id);
        } else {
            self.fw.suppressed.insert(s.framework_id.clone());
            for o in self.fw.book.rescind_framework(&s.framework_id) {
                self.give_back_offer(&o);
            }
        }
        self.resync_role(&role);
        self.schedule_round(ctx);
        Ok(())
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Result<(), FrameworkError>")]
pub(super) struct TeardownFrom(pub Teardown, pub Option<SpiffeId>);

impl Handler<TeardownFrom> for Master {
    type Result = Result<(), FrameworkError>;
    fn handle(&mut self, m: TeardownFrom, ctx: &mut Context<Self>) -> Self::Result {
        let (t, caller) = (m.0, m.1);
        self.framework_caller(&t.framework_id, &caller)?;
        info!(framework = %t.framework_id, "framework torn down");
        self.end_framework(&t.framework_id, ctx);
        self.schedule_round(ctx);
        Ok(())
    }
}

/// Every framework, for `get frameworks`.
#[derive(Debug, Message)]
#[rtype(result = "Vec<FrameworkSummary>")]
pub struct ListFrameworks;

impl Handler<ListFrameworks> for Master {
    type Result = MessageResult<ListFrameworks>;
    fn handle(&mut self, _: ListFrameworks, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.framework_summaries())
    }
}

/// Forwards framework calls arriving at `$master` with the verified caller.
macro_rules! forward_framework {
    ($msg:ty, $from:ident) => {
        #[actormesh::handler]
        impl Handler<$msg> for super::MasterGate {
            type Result = ResponseFuture<<$msg as actix::Message>::Result>;
            fn handle(&mut self, m: $msg, _: &mut Context<Self>) -> Self::Result {
                let req = self.master.send($from(m, actormesh::caller()));
                Box::pin(async move {
                    req.await.unwrap_or_else(|e| {
                        Err(FrameworkError::Unavailable(format!(
                            "the master is not running: {e}"
                        )))
                    })
                })
            }
        }
    };
}

forward_framework!(RegisterFramework, RegisterFrameworkFrom);
forward_framework!(AcceptOffer, AcceptFrom);
forward_framework!(DeclineOffer, DeclineFrom);
forward_framework!(KillTask, KillFrom);
forward_framework!(ReconcileTasks, ReconcileFrom);
forward_framework!(Acknowledge, AcknowledgeFrom);
forward_framework!(SetOffers, SetOffersFrom);
forward_framework!(Teardown, TeardownFrom);
