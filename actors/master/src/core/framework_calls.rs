//! The calls frameworks make, checked against the identity that registered them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use actormesh::framework::{
    AcceptOffer, Acknowledge, DeclineOffer, FrameworkError, FrameworkEvent, KillTask,
    ReadTaskOutput, ReconcileTasks, RegisterFramework, Registration, SetOffers, TaskKind, Teardown,
};
use actormesh::protocol::MAX_TASK_LOG_BYTES;
use actormesh::resources::Resources;
use actormesh_transport::SpiffeId;

use super::frameworks::{
    agent_task_id, valid_role, valid_task_id, FrameworkTask, StoredFramework, FRAMEWORK_PREFIX,
    MAX_FAILOVER,
};
use super::{ClusterCore, Effect, Step};
use crate::deployments;
use crate::frameworks::{FrameworkRefusal, TaskState, TaskStatus};
use crate::state::{Change, Table};

/// A framework booked by [`ClusterCore::register_framework`], waiting for its record to
/// be stored before it hears of it ([`ClusterCore::framework_stored`]).
#[derive(Debug)]
pub struct PendingFramework {
    request: RegisterFramework,
    who: String,
    id: String,
    reregistered: bool,
}

impl ClusterCore {
    /// Checks a registration and books the framework; the step's acknowledged batch is
    /// its record. `caller_addrs` are the addresses the verified caller's links come
    /// from: the event actor must be on one of them, or a framework could make the
    /// master send events to any node.
    pub fn register_framework(
        &mut self,
        r: RegisterFramework,
        caller: Option<SpiffeId>,
        caller_addrs: &[SocketAddr],
    ) -> Step<Result<PendingFramework, FrameworkError>> {
        self.step(|core| core.book_framework(r, caller, caller_addrs))
    }

    fn book_framework(
        &mut self,
        r: RegisterFramework,
        caller: Option<SpiffeId>,
        caller_addrs: &[SocketAddr],
    ) -> Result<PendingFramework, FrameworkError> {
        let who = caller.map(|c| c.to_string()).ok_or_else(|| {
            FrameworkError::Forbidden("frameworks must register over the mesh".into())
        })?;
        valid_role(&r.role)?;
        if !crate::access::may_register(&self.framework_grants, &who, &r.role) {
            let grants: Vec<String> = self
                .framework_grants
                .iter()
                .map(|g| format!("{}={}", g.identity, g.role))
                .collect();
            return Err(FrameworkError::Forbidden(format!(
                "{who} may not register a framework under role {:?}: the master grants {} (set with master --framework-role IDENTITY=ROLE)",
                r.role,
                grants.join(", ")
            )));
        }
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
                FrameworkRefusal::Unknown(_) => FrameworkError::NotRegistered(e.to_string()),
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
        self.persist_acknowledged(vec![Change::put(
            Table::Config,
            format!("{FRAMEWORK_PREFIX}{id}"),
            value,
        )]);
        Ok(PendingFramework {
            request: r,
            who,
            id,
            reregistered,
        })
    }

    /// The record of a booked framework was stored (or not: `stored` says why). Once it
    /// is, the framework is told, watched, and offered resources: a master restart then
    /// still knows it.
    pub fn framework_stored(
        &mut self,
        pending: PendingFramework,
        stored: Result<(), String>,
        now: Instant,
    ) -> Step<Result<Registration, FrameworkError>> {
        self.step(|core| {
            let PendingFramework {
                request: r,
                who,
                id,
                reregistered,
            } = pending;
            if let Err(e) = stored {
                if reregistered {
                    // Still disconnected: its failover timer keeps running.
                    core.fw.book.disconnected(&id, now);
                } else {
                    core.fw.book.remove(&id);
                }
                return Err(FrameworkError::Unavailable(format!(
                    "cannot record the framework: {e}"
                )));
            }
            core.out.push(Effect::Watch {
                framework: id.clone(),
                at: r.actor_addr,
                actor: r.actor_name.clone(),
            });
            let registration = Registration {
                framework_id: id.clone(),
                reregistered,
            };
            core.out.push(Effect::ToFramework {
                framework: id.clone(),
                event: FrameworkEvent::Registered(registration.clone()),
            });
            core.fw
                .refs
                .insert(id.clone(), (r.actor_addr, r.actor_name.clone()));
            core.fw.roles.insert(id.clone(), r.role.clone());
            core.fw.registered_by.insert(id.clone(), who);
            // A framework that declined nothing yet takes offers of every agent of its role.
            core.resync_role(&r.role, now);
            core.fw.book.redeliver_now(&id, now);
            core.deliver_updates(now);
            info!(framework = %id, name = %r.name, role = %r.role, reregistered, "framework registered");
            core.schedule_round();
            Ok(registration)
        })
    }

    /// The event actor `actor` on `node` is gone: frameworks whose events went there are
    /// disconnected, and their failover timers run.
    pub fn framework_terminated(
        &mut self,
        node: SocketAddr,
        actor: &str,
        reason: &str,
        now: Instant,
    ) -> Vec<Effect> {
        self.step(|core| {
            let gone: Vec<String> = core
                .fw
                .refs
                .iter()
                .filter(|(_, (at, name))| name == actor && *at == node)
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                warn!(framework = %id, %reason, "framework disconnected; its failover timer runs");
                core.fw.book.disconnected(&id, now);
                core.fw.refs.remove(&id);
                core.out.push(Effect::Unwatch {
                    framework: id.clone(),
                });
                if let Some(role) = core.fw.roles.get(&id).cloned() {
                    core.resync_role(&role, now);
                }
                for o in core.fw.book.rescind_framework(&id) {
                    core.give_back_offer(&o);
                }
            }
            core.schedule_round();
        })
        .effects
    }

    /// A framework uses an offer (all of it: what its launches leave goes back).
    pub fn accept_offer(
        &mut self,
        a: AcceptOffer,
        caller: Option<SpiffeId>,
    ) -> Step<Result<(), FrameworkError>> {
        self.step(|core| core.accept_now(a, caller))
    }

    fn accept_now(
        &mut self,
        a: AcceptOffer,
        caller: Option<SpiffeId>,
    ) -> Result<(), FrameworkError> {
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
                self.schedule_round();
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
                    actor: Some(matches!(l.kind, TaskKind::Actor { .. })),
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
        self.carry_out(actions);
        self.schedule_round();
        Ok(())
    }

    /// A framework gives an offer back and refuses its agent for a while.
    pub fn decline_offer(
        &mut self,
        d: DeclineOffer,
        caller: Option<SpiffeId>,
        now: Instant,
    ) -> Step<Result<(), FrameworkError>> {
        self.step(|core| {
            let role = core.framework_caller(&d.framework_id, &caller)?;
            let offer = core
                .fw
                .book
                .take_offer(&d.framework_id, &d.offer_id)
                .map_err(|e| FrameworkError::UnknownOffer(e.to_string()))?;
            core.allocator
                .recover(&role, &offer.agent, &offer.resources);
            core.fw.filters.insert(
                (d.framework_id.clone(), offer.agent.clone()),
                now + Duration::from_millis(d.refuse_for_ms),
            );
            core.sync_role_filter(&role, &offer.agent, now);
            core.schedule_round();
            Ok(())
        })
    }

    /// A framework kills one of its tasks.
    pub fn kill_framework_task(
        &mut self,
        k: KillTask,
        caller: Option<SpiffeId>,
    ) -> Step<Result<(), FrameworkError>> {
        self.step(|core| {
            core.framework_caller(&k.framework_id, &caller)?;
            let id = agent_task_id(&k.framework_id, &k.task_id);
            let t = core.fw.tasks.get(&id).ok_or_else(|| {
                FrameworkError::Invalid(format!(
                    "framework {} has no task {:?}",
                    k.framework_id, k.task_id
                ))
            })?;
            if t.state.is_terminal() {
                return Ok(());
            }
            let agent = t.agent.clone();
            if let Err(e) = core.agent_addr(&agent) {
                return Err(FrameworkError::Unavailable(format!(
                    "cannot kill task {} now: {e}; kill it again once its agent is back",
                    k.task_id
                )));
            }
            core.carry_out(vec![deployments::Action::Kill { task_id: id, agent }]);
            Ok(())
        })
    }

    /// Where a framework reads a command task's output: the agent's id for the task and
    /// the agent's address. A query: nothing changes. Only the framework's own tasks, and
    /// only command tasks (an actor task has no captured output: ask its instance).
    pub fn task_output_source(
        &self,
        r: &ReadTaskOutput,
        caller: &Option<SpiffeId>,
    ) -> Result<(String, SocketAddr), FrameworkError> {
        self.framework_caller(&r.framework_id, caller)?;
        if r.max_bytes == 0 || r.max_bytes > MAX_TASK_LOG_BYTES {
            return Err(FrameworkError::Invalid(format!(
                "max_bytes {} is out of range: expected 1 to {MAX_TASK_LOG_BYTES}",
                r.max_bytes
            )));
        }
        let id = agent_task_id(&r.framework_id, &r.task_id);
        let t = self.fw.tasks.get(&id).ok_or_else(|| {
            FrameworkError::Invalid(format!(
                "framework {} has no task {:?} (an end once acknowledged is forgotten: read the output before acknowledging)",
                r.framework_id, r.task_id
            ))
        })?;
        if t.actor == Some(true) {
            return Err(FrameworkError::Invalid(format!(
                "task {:?} is an actor task, which has no captured output; ask its instance {id}",
                r.task_id
            )));
        }
        let at = self.agent_addr(&t.agent).map_err(|e| {
            FrameworkError::Unavailable(format!(
                "cannot read task {:?}'s output now: {e}",
                r.task_id
            ))
        })?;
        Ok((id, at))
    }

    /// A framework asks for the latest state of its tasks (all, or those listed).
    pub fn reconcile_tasks(
        &mut self,
        r: ReconcileTasks,
        caller: Option<SpiffeId>,
    ) -> Step<Result<(), FrameworkError>> {
        self.step(|core| {
            core.framework_caller(&r.framework_id, &caller)?;
            let fw = r.framework_id.clone();
            let ids: Vec<String> = if r.task_ids.is_empty() {
                core.fw
                    .tasks
                    .values()
                    .filter(|t| t.framework == fw)
                    .map(|t| t.task_id.clone())
                    .collect()
            } else {
                r.task_ids
            };
            for task in ids {
                let status = match core.fw.tasks.get(&agent_task_id(&fw, &task)) {
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
                core.tell_framework(&fw, FrameworkEvent::StatusUpdate(status));
            }
            Ok(())
        })
    }

    /// A framework acknowledges a status update. An acknowledged end is done with: the
    /// task is forgotten and its agent may forget the report it kept. (If the release is
    /// lost, the agent sends the end again when it registers, and the framework hears it
    /// once more: at least once.)
    pub fn acknowledge(
        &mut self,
        a: Acknowledge,
        caller: Option<SpiffeId>,
    ) -> Step<Result<(), FrameworkError>> {
        self.step(|core| {
            core.framework_caller(&a.framework_id, &caller)?;
            if core
                .fw
                .book
                .acknowledge(&a.framework_id, &a.task_id, a.uuid)
            {
                let id = agent_task_id(&a.framework_id, &a.task_id);
                if let Some(t) = core
                    .fw
                    .tasks
                    .get(&id)
                    .filter(|t| t.state.is_terminal())
                    .cloned()
                {
                    core.fw.tasks.remove(&id);
                    if let Ok(at) = core.agent_addr(&t.agent) {
                        core.out.push(Effect::ReleaseStatus { at, task_id: id });
                    }
                }
            }
            Ok(())
        })
    }

    /// A framework asks for offers again (clearing its own filters) or for none.
    pub fn set_offers(
        &mut self,
        s: SetOffers,
        caller: Option<SpiffeId>,
        now: Instant,
    ) -> Step<Result<(), FrameworkError>> {
        self.step(|core| {
            let role = core.framework_caller(&s.framework_id, &caller)?;
            if s.wanted {
                core.fw.suppressed.remove(&s.framework_id);
                let id = s.framework_id.clone();
                core.fw.filters.retain(|(fw, _), _| fw != &id);
            } else {
                core.fw.suppressed.insert(s.framework_id.clone());
                for o in core.fw.book.rescind_framework(&s.framework_id) {
                    core.give_back_offer(&o);
                }
            }
            core.resync_role(&role, now);
            core.schedule_round();
            Ok(())
        })
    }

    /// A framework ends itself: its tasks are killed and it is forgotten.
    pub fn teardown(
        &mut self,
        t: Teardown,
        caller: Option<SpiffeId>,
        now: Instant,
    ) -> Step<Result<(), FrameworkError>> {
        self.step(|core| {
            core.framework_caller(&t.framework_id, &caller)?;
            info!(framework = %t.framework_id, "framework torn down");
            core.end_framework(&t.framework_id, now);
            core.schedule_round();
            Ok(())
        })
    }
}
