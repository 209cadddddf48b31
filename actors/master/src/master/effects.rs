//! Carrying out the core's effects: store writes, launches and kills on agents, framework
//! events, membership events, revocations and timers. Results come back as events.

use std::time::{Duration, Instant};

use actix::prelude::*;

use actormesh::masters::order_options;
use actormesh::mesh::protocol::PROXY_ACTOR;
use actormesh::protocol::{KillTask, ReleaseStatus, AGENT_ACTOR};
use actormesh_transport::{Endpoint, SpiffeId};

use super::Master;
use crate::core::{Batch, Effect, Launch};
use crate::services::PushOutcome;
use crate::state::{StoreError, StoreFuture};

/// How long an agent has to answer a launch, a kill or a release.
const AGENT_ANSWER: Duration = Duration::from_secs(10);

/// Revokes a removed node's identity until its last certificate expires (for good if the
/// master never recorded an expiry).
pub(super) fn revoke(endpoint: &Endpoint, id: &SpiffeId, until: Option<std::time::SystemTime>) {
    match until {
        Some(expiry) => endpoint.revoke_until(id, expiry),
        None => endpoint.revoke(id),
    }
}

impl Master {
    /// Carries out `effects` in order (no reply waits for their writes; a failed one
    /// makes the master step down).
    pub(super) fn carry_out(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        drop(self.carry_out_stored(effects, ctx));
    }

    /// Carries out `effects` in order. Returns the write of the batch the step's reply
    /// acknowledges (ready if there is none).
    pub(super) fn carry_out_stored(
        &mut self,
        effects: Vec<Effect>,
        ctx: &mut Context<Self>,
    ) -> StoreFuture<()> {
        // A leader whose ZooKeeper lease lapsed may no longer lead: it sends nothing,
        // writes nothing and acknowledges nothing, and steps down (the store's `closed`
        // would say so too, a moment later).
        if !self.store.may_act() {
            let e = StoreError::Closed(
                "the leadership lease lapsed: ZooKeeper has not answered for two thirds of the session timeout".into(),
            );
            self.step_down(&e, ctx);
            return Box::pin(async move { Err(e) });
        }
        let mut acknowledged: Option<StoreFuture<()>> = None;
        // Every step's effects pass through the registry: it follows the state the step
        // left, holds kills of endpoints until the proxies applied their removal, and
        // adds the pushes that are due.
        let effects = self.core.settle(effects, Instant::now());
        for effect in effects {
            match effect {
                Effect::Persist(Batch {
                    changes,
                    acknowledges,
                }) => {
                    let written: StoreFuture<()> = match changes {
                        Ok(changes) => self.store.apply(changes),
                        Err(e) => Box::pin(async move { Err(e) }),
                    };
                    // Other batches are not awaited: a failed write makes the master step
                    // down, and the write goes on when its future is dropped.
                    if acknowledges {
                        acknowledged = Some(written);
                    }
                }
                Effect::Launch {
                    agent: _,
                    at,
                    task_id,
                    launch,
                } => {
                    let me = ctx.address();
                    let target = self.node.actor_ref(at, AGENT_ACTOR);
                    let order = order_options(self.term, AGENT_ANSWER);
                    actix::spawn(async move {
                        let asked = match *launch {
                            Launch::Actor(l) => target.ask_with_options(l, &order).await,
                            Launch::Command(l) => target.ask_with_options(l, &order).await,
                        };
                        if let Err(why) = asked.map_err(|e| e.to_string()).and_then(|r| r) {
                            me.do_send(LaunchFailed { task_id, why });
                        }
                    });
                }
                Effect::LaunchNotSent { task_id, why } => {
                    ctx.address().do_send(LaunchFailed { task_id, why });
                }
                Effect::Kill { agent, at, task_id } => {
                    let me = ctx.address();
                    let target = self.node.actor_ref(at, AGENT_ACTOR);
                    let order = order_options(self.term, AGENT_ANSWER);
                    actix::spawn(async move {
                        let kill = KillTask {
                            task_id: task_id.clone(),
                        };
                        match target.ask_with_options(kill, &order).await {
                            Ok(Ok(())) => {}
                            // The agent answers a kill with an error only when it does
                            // not run the task: nothing will report its end.
                            Ok(Err(why)) => me.do_send(KillFoundNothing { task_id, why }),
                            Err(e) => me.do_send(KillNotDelivered {
                                task_id,
                                agent,
                                why: e.to_string(),
                            }),
                        }
                    });
                }
                Effect::RetryKill {
                    task_id,
                    agent,
                    after,
                } => {
                    ctx.run_later(after, move |master, ctx| {
                        let effects = master.core.retry_kill(&task_id, &agent);
                        master.carry_out(effects, ctx);
                    });
                }
                Effect::ReleaseStatus { at, task_id } => {
                    let target = self.node.actor_ref(at, AGENT_ACTOR);
                    let order = order_options(self.term, AGENT_ANSWER);
                    actix::spawn(async move {
                        // Lost, the agent sends the end again when it registers.
                        let _ = target
                            .ask_with_options(ReleaseStatus { task_id }, &order)
                            .await;
                    });
                }
                Effect::ToFramework { framework, event } => {
                    if let Some(target) = self.framework_actors.get(&framework) {
                        let order = order_options(self.term, AGENT_ANSWER);
                        let _ = target.try_tell_with_options(event, &order);
                    }
                }
                Effect::Watch {
                    framework,
                    at,
                    actor,
                } => {
                    let target = self.node.actor_ref(at, &actor);
                    self.node.watch_with(&target, ctx.address().recipient());
                    self.framework_actors.insert(framework, target);
                }
                Effect::Unwatch { framework } => {
                    self.framework_actors.remove(&framework);
                }
                Effect::Publish(event) => {
                    self.subscribers.retain(|s| s.connected());
                    for s in &self.subscribers {
                        s.do_send(event.clone());
                    }
                }
                Effect::Revoke { identity, until } => revoke(&self.endpoint, &identity, until),
                Effect::PruneRevocations { now } => {
                    self.endpoint.prune_revocations(now);
                }
                Effect::Push { node, at, push } => {
                    let me = ctx.address();
                    let target = self.node.actor_ref(at, PROXY_ACTOR);
                    let limit = self.push_answer;
                    let version = push.version;
                    actix::spawn(async move {
                        let outcome = match target.ask_timeout(*push, limit).await {
                            Ok(Ok(v)) => PushOutcome::Applied(v),
                            Ok(Err(refused)) => PushOutcome::Refused(refused),
                            Err(e) => PushOutcome::Failed(e.to_string()),
                        };
                        me.do_send(PushAnswered {
                            node,
                            version,
                            outcome,
                        });
                    });
                }
                Effect::Drained { token } => {
                    if let Some(tx) = self.drained.remove(&token) {
                        let _ = tx.send(());
                    }
                }
                Effect::FlushPushes { after } => {
                    ctx.run_later(after, |master, ctx| {
                        let effects = master.core.flush_pushes(Instant::now());
                        master.carry_out(effects, ctx);
                    });
                }
                Effect::ScheduleRound => {
                    ctx.run_later(Duration::ZERO, |master, ctx| {
                        let began = Instant::now();
                        let effects = master.core.scheduled_round(began);
                        master.figures.round_time.record(began.elapsed());
                        master.carry_out(effects, ctx);
                    });
                }
            }
        }
        acknowledged.unwrap_or_else(|| Box::pin(async { Ok(()) }))
    }
}

/// A launch was refused, not answered, or could not be sent.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct LaunchFailed {
    task_id: String,
    why: String,
}

impl Handler<LaunchFailed> for Master {
    type Result = ();
    fn handle(&mut self, m: LaunchFailed, ctx: &mut Context<Self>) {
        let effects = self.core.launch_failed(&m.task_id, &m.why, Instant::now());
        self.carry_out(effects, ctx);
    }
}

/// The agent of a killed task does not run it (its launch never got there, or it ended).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct KillFoundNothing {
    task_id: String,
    why: String,
}

impl Handler<KillFoundNothing> for Master {
    type Result = ();
    fn handle(&mut self, m: KillFoundNothing, ctx: &mut Context<Self>) {
        let effects = self.core.kill_found_nothing(&m.task_id, &m.why);
        self.carry_out(effects, ctx);
    }
}

/// A kill did not reach its agent (timeout, connection lost).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct KillNotDelivered {
    task_id: String,
    agent: String,
    why: String,
}

impl Handler<KillNotDelivered> for Master {
    type Result = ();
    fn handle(&mut self, m: KillNotDelivered, ctx: &mut Context<Self>) {
        let effects = self.core.kill_not_delivered(&m.task_id, &m.agent, &m.why);
        self.carry_out(effects, ctx);
    }
}

/// A proxy answered a push, or did not in time.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct PushAnswered {
    node: String,
    version: u64,
    outcome: PushOutcome,
}

impl Handler<PushAnswered> for Master {
    type Result = ();
    fn handle(&mut self, m: PushAnswered, ctx: &mut Context<Self>) {
        match &m.outcome {
            PushOutcome::Applied(_) => {}
            PushOutcome::Refused(why) => {
                tracing::info!(node = %m.node, version = m.version, %why, "push refused")
            }
            PushOutcome::Failed(why) => {
                tracing::info!(node = %m.node, version = m.version, %why, "push not answered")
            }
        }
        let effects = self
            .core
            .push_answered(&m.node, m.version, m.outcome, Instant::now());
        self.carry_out(effects, ctx);
    }
}
