//! The master's face on the mesh (`$master`): forwards agents' and frameworks' messages to
//! [`Master`] with the verified identity of the link they came on.

use actix::prelude::*;

use actormesh::framework::{
    AcceptOffer, Acknowledge, DeclineOffer, FrameworkError, KillTask, ReconcileTasks,
    RegisterFramework, SetOffers, Teardown,
};
use actormesh::protocol::{
    Heartbeat, HeartbeatAck, MasterRefusal, Register, Registered, Renew, ReportAck,
    TaskStatusReport,
};

use super::agents::{HeartbeatFrom, RegisterFrom, RenewFrom, TaskStatusFrom};
use super::frameworks::{
    AcceptFrom, AcknowledgeFrom, DeclineFrom, KillFrom, ReconcileFrom, RegisterFrameworkFrom,
    SetOffersFrom, TeardownFrom,
};
use super::services::{DeregisterServiceFrom, RegisterServiceFrom, SubscribeFrom};
use super::Master;
use actormesh::mesh::protocol::{DeregisterService, RegisterService, Subscribe, Subscribed};

/// The master's face on the mesh (`$master`): forwards agent messages with the verified
/// caller to [`Master`].
#[derive(Debug)]
pub struct MasterGate {
    pub(super) master: Addr<Master>,
}

impl Actor for MasterGate {
    type Context = Context<Self>;
}

fn forward<M, R>(master: &Addr<Master>, m: M) -> ResponseFuture<Result<R, MasterRefusal>>
where
    Master: Handler<M>,
    M: Message<Result = Result<R, MasterRefusal>> + Send + 'static,
    R: Send + 'static,
{
    let req = master.send(m);
    Box::pin(async move {
        req.await.unwrap_or_else(|e| {
            Err(MasterRefusal::Unavailable(format!(
                "the master is not running: {e}"
            )))
        })
    })
}

#[actormesh::handler]
impl Handler<Register> for MasterGate {
    type Result = ResponseFuture<Result<Registered, MasterRefusal>>;
    fn handle(&mut self, m: Register, _: &mut Context<Self>) -> Self::Result {
        forward(&self.master, RegisterFrom(m, actormesh::caller()))
    }
}

#[actormesh::handler]
impl Handler<Heartbeat> for MasterGate {
    type Result = ResponseFuture<Result<HeartbeatAck, MasterRefusal>>;
    fn handle(&mut self, m: Heartbeat, _: &mut Context<Self>) -> Self::Result {
        forward(&self.master, HeartbeatFrom(m, actormesh::caller()))
    }
}

#[actormesh::handler]
impl Handler<Renew> for MasterGate {
    type Result = ResponseFuture<Result<String, MasterRefusal>>;
    fn handle(&mut self, m: Renew, _: &mut Context<Self>) -> Self::Result {
        forward(&self.master, RenewFrom(m, actormesh::caller()))
    }
}

#[actormesh::handler]
impl Handler<TaskStatusReport> for MasterGate {
    type Result = ResponseFuture<Result<ReportAck, MasterRefusal>>;
    fn handle(&mut self, m: TaskStatusReport, _: &mut Context<Self>) -> Self::Result {
        forward(&self.master, TaskStatusFrom(m, actormesh::caller()))
    }
}

#[actormesh::handler]
impl Handler<Subscribe> for MasterGate {
    type Result = ResponseFuture<Result<Subscribed, MasterRefusal>>;
    fn handle(&mut self, m: Subscribe, _: &mut Context<Self>) -> Self::Result {
        forward(&self.master, SubscribeFrom(m, actormesh::caller()))
    }
}

#[actormesh::handler]
impl Handler<RegisterService> for MasterGate {
    type Result = ResponseFuture<Result<(), MasterRefusal>>;
    fn handle(&mut self, m: RegisterService, _: &mut Context<Self>) -> Self::Result {
        forward(&self.master, RegisterServiceFrom(m, actormesh::caller()))
    }
}

#[actormesh::handler]
impl Handler<DeregisterService> for MasterGate {
    type Result = ResponseFuture<Result<(), MasterRefusal>>;
    fn handle(&mut self, m: DeregisterService, _: &mut Context<Self>) -> Self::Result {
        forward(&self.master, DeregisterServiceFrom(m, actormesh::caller()))
    }
}

/// Forwards framework calls arriving at `$master` with the verified caller.
macro_rules! forward_framework {
    ($msg:ty, $from:ident) => {
        #[actormesh::handler]
        impl Handler<$msg> for MasterGate {
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
