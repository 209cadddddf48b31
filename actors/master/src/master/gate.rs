//! The master's face on the mesh (`$master`): forwards agents' and frameworks' messages to
//! [`Master`] with the verified identity of the link they came on. Agent messages from a
//! client identity (`spiffe://<td>/client/<name>`) are refused here, by name: a client
//! certificate gives no membership.

use actix::prelude::*;

use actormesh::framework::{
    AcceptOffer, Acknowledge, DeclineOffer, FrameworkError, KillTask, ReadTaskOutput,
    ReconcileTasks, RegisterFramework, SetOffers, Teardown,
};
use actormesh::protocol::{
    Heartbeat, HeartbeatAck, HeartbeatAckV1, HeartbeatV1, MasterRefusal, Register, Registered,
    Renew, ReportAck, TaskStatusReport,
};

use actormesh::client::is_client_identity;
use actormesh_transport::SpiffeId;

use super::agents::{HeartbeatFrom, RegisterFrom, RenewFrom, TaskStatusFrom};
use super::frameworks::{
    AcceptFrom, AcknowledgeFrom, DeclineFrom, KillFrom, ReadOutputFrom, ReconcileFrom,
    RegisterFrameworkFrom, SetOffersFrom, TeardownFrom,
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

/// The caller of agent message `message`, unless it is a client identity: clients hold
/// certificates from the cluster CA but are not members, so they may not act as agents.
fn agent_caller(
    message: &str,
    caller: Option<SpiffeId>,
) -> Result<Option<SpiffeId>, MasterRefusal> {
    match caller {
        Some(c) if is_client_identity(&c) => Err(MasterRefusal::Forbidden(format!(
            "{c} is a client identity; {message} is an agent message and needs a node identity (spiffe://<td>/node/<agent>, from joining with an agent token)"
        ))),
        caller => Ok(caller),
    }
}

/// Forwards agent message `message` with its verified caller, or refuses a client.
fn forward_agent<M, R>(
    master: &Addr<Master>,
    message: &str,
    with_caller: impl FnOnce(Option<SpiffeId>) -> M,
) -> ResponseFuture<Result<R, MasterRefusal>>
where
    Master: Handler<M>,
    M: Message<Result = Result<R, MasterRefusal>> + Send + 'static,
    R: Send + 'static,
{
    match agent_caller(message, actormesh::caller()) {
        Ok(caller) => forward(master, with_caller(caller)),
        Err(refusal) => Box::pin(async move { Err(refusal) }),
    }
}

#[actormesh::handler]
impl Handler<Register> for MasterGate {
    type Result = ResponseFuture<Result<Registered, MasterRefusal>>;
    fn handle(&mut self, m: Register, _: &mut Context<Self>) -> Self::Result {
        forward_agent(&self.master, "Register", |caller| RegisterFrom(m, caller))
    }
}

#[actormesh::handler]
impl Handler<Heartbeat> for MasterGate {
    type Result = ResponseFuture<Result<HeartbeatAck, MasterRefusal>>;
    fn handle(&mut self, m: Heartbeat, _: &mut Context<Self>) -> Self::Result {
        forward_agent(&self.master, "Heartbeat", |caller| HeartbeatFrom(m, caller))
    }
}

/// An agent of the previous version: its heartbeat reports no trust, so a CA rotation
/// waits for it to be upgraded (or removed).
#[actormesh::handler]
impl Handler<HeartbeatV1> for MasterGate {
    type Result = ResponseFuture<Result<HeartbeatAckV1, MasterRefusal>>;
    fn handle(&mut self, m: HeartbeatV1, _: &mut Context<Self>) -> Self::Result {
        let beat = Heartbeat {
            agent_id: m.agent_id,
            trust_digest: String::new(),
            cert_ca: String::new(),
        };
        let acked = forward_agent(&self.master, "Heartbeat", |caller| {
            HeartbeatFrom(beat, caller)
        });
        Box::pin(async move {
            acked.await.map(|a| HeartbeatAckV1 {
                reregister: a.reregister,
            })
        })
    }
}

#[actormesh::handler]
impl Handler<Renew> for MasterGate {
    type Result = ResponseFuture<Result<String, MasterRefusal>>;
    fn handle(&mut self, m: Renew, _: &mut Context<Self>) -> Self::Result {
        forward_agent(&self.master, "Renew", |caller| RenewFrom(m, caller))
    }
}

#[actormesh::handler]
impl Handler<TaskStatusReport> for MasterGate {
    type Result = ResponseFuture<Result<ReportAck, MasterRefusal>>;
    fn handle(&mut self, m: TaskStatusReport, _: &mut Context<Self>) -> Self::Result {
        forward_agent(&self.master, "TaskStatusReport", |caller| {
            TaskStatusFrom(m, caller)
        })
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
impl Handler<actormesh::mesh::gateway::FetchGateway> for MasterGate {
    type Result = ResponseFuture<Result<actormesh::mesh::gateway::GatewayConfig, MasterRefusal>>;
    fn handle(
        &mut self,
        m: actormesh::mesh::gateway::FetchGateway,
        _: &mut Context<Self>,
    ) -> Self::Result {
        forward_agent(&self.master, "FetchGateway", |caller| {
            super::services::FetchGatewayFrom(m, caller)
        })
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
forward_framework!(ReadTaskOutput, ReadOutputFrom);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_identity_is_refused_for_agent_messages_by_name() {
        let client = SpiffeId::parse("spiffe://td/client/cli").unwrap();
        let e = agent_caller("Register", Some(client)).unwrap_err();
        assert_eq!(
            e,
            MasterRefusal::Forbidden("spiffe://td/client/cli is a client identity; Register is an agent message and needs a node identity (spiffe://<td>/node/<agent>, from joining with an agent token)".into())
        );
        // Nodes pass on to the core, which checks that they speak for themselves.
        let node = SpiffeId::node("td", "n1").unwrap();
        assert_eq!(agent_caller("Register", Some(node.clone())), Ok(Some(node)));
        assert_eq!(agent_caller("Register", None), Ok(None));
    }
}
