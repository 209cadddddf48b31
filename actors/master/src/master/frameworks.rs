//! Frameworks' calls (through the gate, with the verified caller), their event actors'
//! ends, and `get frameworks`.

use std::time::Instant;

use actix::prelude::*;

use actormesh::framework::{
    AcceptOffer, Acknowledge, DeclineOffer, FrameworkError, KillTask, ReadTaskOutput,
    ReconcileTasks, RegisterFramework, Registration, SetOffers, TaskLog, Teardown,
};
use actormesh::protocol::{ReadTaskLog, AGENT_ACTOR};
use actormesh::Terminated;
use actormesh_transport::SpiffeId;

use super::Master;
use crate::core::{FrameworkSummary, Step};

/// A framework's registration with the verified caller.
#[derive(Debug, Message)]
#[rtype(result = "Result<Registration, FrameworkError>")]
pub(super) struct RegisterFrameworkFrom(pub RegisterFramework, pub Option<SpiffeId>);

impl Handler<RegisterFrameworkFrom> for Master {
    type Result = ResponseActFuture<Self, Result<Registration, FrameworkError>>;
    fn handle(&mut self, m: RegisterFrameworkFrom, ctx: &mut Context<Self>) -> Self::Result {
        let caller_addrs =
            m.1.as_ref()
                .map(|id| self.endpoint.addresses_of(id))
                .unwrap_or_default();
        let step = self.core.register_framework(m.0, m.1, &caller_addrs);
        let stored = self.carry_out_stored(step.effects, ctx);
        let pending = match step.reply {
            Ok(pending) => pending,
            Err(e) => return Box::pin(actix::fut::ready(Err(e))),
        };
        // The framework hears of its registration, and gets offers, only once its record
        // is stored: a master restart then still knows it.
        Box::pin(stored.into_actor(self).map(move |stored, master, ctx| {
            let step = master.core.framework_stored(
                pending,
                stored.map_err(|e| e.to_string()),
                Instant::now(),
            );
            master.carry_out(step.effects, ctx);
            step.reply
        }))
    }
}

impl Handler<Terminated> for Master {
    type Result = ();
    fn handle(&mut self, t: Terminated, ctx: &mut Context<Self>) {
        let reason = format!("{:?}", t.reason);
        let effects = self
            .core
            .framework_terminated(t.node, &t.actor, &reason, Instant::now());
        self.carry_out(effects, ctx);
    }
}

impl Master {
    /// Carries out a framework call's effects and answers it (no call waits for a write).
    fn framework_reply(
        &mut self,
        step: Step<Result<(), FrameworkError>>,
        ctx: &mut Context<Self>,
    ) -> Result<(), FrameworkError> {
        self.carry_out(step.effects, ctx);
        step.reply
    }
}

/// Declares a framework call with the verified caller and its handler.
macro_rules! framework_call {
    ($(#[$doc:meta])* $from:ident($msg:ty), |$core:ident, $m:ident, $caller:ident, $now:ident| $event:expr) => {
        $(#[$doc])*
        #[derive(Debug, Message)]
        #[rtype(result = "Result<(), FrameworkError>")]
        pub(super) struct $from(pub $msg, pub Option<SpiffeId>);

        impl Handler<$from> for Master {
            type Result = Result<(), FrameworkError>;
            fn handle(&mut self, from: $from, ctx: &mut Context<Self>) -> Self::Result {
                let ($m, $caller, $now) = (from.0, from.1, Instant::now());
                let $core = &mut self.core;
                let step = $event;
                self.framework_reply(step, ctx)
            }
        }
    };
}

framework_call!(
    /// An offer accepted.
    AcceptFrom(AcceptOffer),
    |core, m, caller, _now| core.accept_offer(m, caller)
);
framework_call!(
    /// An offer declined.
    DeclineFrom(DeclineOffer),
    |core, m, caller, now| core.decline_offer(m, caller, now)
);
framework_call!(
    /// A task killed by its framework.
    KillFrom(KillTask),
    |core, m, caller, _now| core.kill_framework_task(m, caller)
);
framework_call!(
    /// A framework asks for its tasks' states.
    ReconcileFrom(ReconcileTasks),
    |core, m, caller, _now| core.reconcile_tasks(m, caller)
);
framework_call!(
    /// A status update acknowledged.
    AcknowledgeFrom(Acknowledge),
    |core, m, caller, _now| core.acknowledge(m, caller)
);
framework_call!(
    /// Offers wanted again, or not.
    SetOffersFrom(SetOffers),
    |core, m, caller, now| core.set_offers(m, caller, now)
);
framework_call!(
    /// A framework ends itself.
    TeardownFrom(Teardown),
    |core, m, caller, now| core.teardown(m, caller, now)
);

/// A framework reads a command task's output, with the verified caller.
#[derive(Debug, Message)]
#[rtype(result = "Result<TaskLog, FrameworkError>")]
pub(super) struct ReadOutputFrom(pub ReadTaskOutput, pub Option<SpiffeId>);

impl Handler<ReadOutputFrom> for Master {
    type Result = ResponseFuture<Result<TaskLog, FrameworkError>>;
    fn handle(&mut self, m: ReadOutputFrom, _: &mut Context<Self>) -> Self::Result {
        let source = self.core.task_output_source(&m.0, &m.1);
        let node = self.node.clone();
        Box::pin(async move {
            let (task_id, at) = source?;
            let read = ReadTaskLog {
                task_id,
                stream: m.0.stream,
                max_bytes: m.0.max_bytes,
            };
            super::views::read_task_log(node.actor_ref(at, AGENT_ACTOR), read)
                .await
                .map_err(FrameworkError::Unavailable)
        })
    }
}

/// Every framework, for `get frameworks`.
#[derive(Debug, Message)]
#[rtype(result = "Vec<FrameworkSummary>")]
pub struct ListFrameworks;

impl Handler<ListFrameworks> for Master {
    type Result = MessageResult<ListFrameworks>;
    fn handle(&mut self, _: ListFrameworks, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.framework_summaries())
    }
}
