//! The registry's messages: proxies subscribe, nodes register their own actors (both
//! through the gate, with the verified caller), and the operator's views of services,
//! endpoints and proxies.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;

use actormesh::mesh::protocol::{
    DeregisterService, DumpConfig, DumpEndpoints, EndpointLive, ProxyConfig, RegisterService,
    Subscribe, Subscribed, PROXY_ACTOR,
};
use actormesh::mesh::{Service, ServiceName};
use actormesh::protocol::MasterRefusal;
use actormesh_transport::SpiffeId;

use super::Master;
use crate::services::{ProxyStatusReport, ServiceSummary};
use crate::OperatorError;

/// How long a node's `$proxy` has to answer `DumpConfig` or `DumpEndpoints`.
const DUMP_ANSWER: Duration = Duration::from_secs(5);

/// A proxy's subscription with the verified identity of its sender.
#[derive(Debug, Message)]
#[rtype(result = "Result<Subscribed, MasterRefusal>")]
pub(super) struct SubscribeFrom(pub Subscribe, pub Option<SpiffeId>);

/// Who a subscription is from: the verified caller of a call that crossed a link. A call
/// made on the master's own node has no caller (the runtime sets one for every call that
/// arrives over a link), and stands for the master's own Proxy. Either way, the master's
/// node identity subscribes only the proxy at the master's own address, so pushes meant
/// for `node/master` never go elsewhere.
pub(super) fn subscriber(
    caller: Option<SpiffeId>,
    addr: SocketAddr,
    own: &SpiffeId,
    own_addr: SocketAddr,
) -> Result<SpiffeId, MasterRefusal> {
    let who = caller.unwrap_or_else(|| own.clone());
    if &who == own && addr != own_addr {
        return Err(MasterRefusal::Forbidden(format!(
            "{who} subscribes for {addr}, but the master's own proxy is at {own_addr}"
        )));
    }
    Ok(who)
}

impl Handler<SubscribeFrom> for Master {
    type Result = Result<Subscribed, MasterRefusal>;
    fn handle(&mut self, m: SubscribeFrom, ctx: &mut Context<Self>) -> Self::Result {
        let who = subscriber(m.1, m.0.addr, &self.node.identity(), self.mesh_addr)?;
        let step = self.core.subscribe(m.0, Some(who), Instant::now());
        self.carry_out(step.effects, ctx);
        step.reply
    }
}

/// A gateway node's fetch of its gateway's configuration, with the verified sender.
#[derive(Debug, Message)]
#[rtype(result = "Result<actormesh::mesh::gateway::GatewayConfig, MasterRefusal>")]
pub(super) struct FetchGatewayFrom(
    pub actormesh::mesh::gateway::FetchGateway,
    pub Option<SpiffeId>,
);

impl Handler<FetchGatewayFrom> for Master {
    type Result = Result<actormesh::mesh::gateway::GatewayConfig, MasterRefusal>;
    fn handle(&mut self, m: FetchGatewayFrom, _: &mut Context<Self>) -> Self::Result {
        self.core.fetch_gateway(&m.0.namespace, &m.0.name, m.1)
    }
}

/// A node's registration of one of its actors, with the verified sender.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), MasterRefusal>")]
pub(super) struct RegisterServiceFrom(pub RegisterService, pub Option<SpiffeId>);

impl Handler<RegisterServiceFrom> for Master {
    type Result = Result<(), MasterRefusal>;
    fn handle(&mut self, m: RegisterServiceFrom, ctx: &mut Context<Self>) -> Self::Result {
        let step = self.core.register_service(m.0, m.1);
        self.carry_out(step.effects, ctx);
        step.reply
    }
}

/// A node's deregistration of one of its actors, with the verified sender.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), MasterRefusal>")]
pub(super) struct DeregisterServiceFrom(pub DeregisterService, pub Option<SpiffeId>);

impl Handler<DeregisterServiceFrom> for Master {
    type Result = ResponseFuture<Result<(), MasterRefusal>>;
    fn handle(&mut self, m: DeregisterServiceFrom, ctx: &mut Context<Self>) -> Self::Result {
        self.next_drain_token += 1;
        let token = self.next_drain_token;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.drained.insert(token, tx);
        let step = self.core.deregister_service(m.0, m.1, token);
        if step.reply.is_err() {
            self.drained.remove(&token);
        }
        self.carry_out(step.effects, ctx);
        match step.reply {
            // Answered once the endpoint is drained (the master stopping answers too).
            Ok(()) => Box::pin(async move {
                let _ = rx.await;
                Ok(())
            }),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

/// Every service (`get services`).
#[derive(Debug, Message)]
#[rtype(result = "Vec<ServiceSummary>")]
pub struct ListServices;

impl Handler<ListServices> for Master {
    type Result = Vec<ServiceSummary>;
    fn handle(&mut self, _: ListServices, _: &mut Context<Self>) -> Self::Result {
        self.core.service_summaries()
    }
}

/// One service and its endpoints (`get endpoints <service>`).
#[derive(Debug, Message)]
#[rtype(result = "Result<Service, OperatorError>")]
pub struct ServiceEndpoints(pub ServiceName);

impl Handler<ServiceEndpoints> for Master {
    type Result = Result<Service, OperatorError>;
    fn handle(&mut self, m: ServiceEndpoints, _: &mut Context<Self>) -> Self::Result {
        self.core.service(&m.0).cloned().ok_or_else(|| {
            OperatorError::NotFound(format!(
                "no service {} (expected namespace/name of a service that `get services` lists)",
                m.0
            ))
        })
    }
}

/// Every subscribed proxy's standing (`get proxy-status`).
#[derive(Debug, Message)]
#[rtype(result = "ProxyStatusReport")]
pub struct ListProxyStatus;

impl Handler<ListProxyStatus> for Master {
    type Result = MessageResult<ListProxyStatus>;
    fn handle(&mut self, _: ListProxyStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.proxy_status_report(Instant::now()))
    }
}

/// What node `0`'s proxy applied (`get proxy-config <node>`): asks its `$proxy`.
#[derive(Debug, Message)]
#[rtype(result = "Result<ProxyConfig, OperatorError>")]
pub struct ProxyConfigOf(pub String);

impl Handler<ProxyConfigOf> for Master {
    type Result = ResponseFuture<Result<ProxyConfig, OperatorError>>;
    fn handle(&mut self, m: ProxyConfigOf, _: &mut Context<Self>) -> Self::Result {
        self.ask_proxy(&m.0, DumpConfig)
    }
}

/// The live state of a service's endpoints as node `0`'s proxy sees them (`describe
/// service --node`): asks its `$proxy`.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<EndpointLive>, OperatorError>")]
pub struct ProxyEndpointsOf(pub String, pub ServiceName);

impl Handler<ProxyEndpointsOf> for Master {
    type Result = ResponseFuture<Result<Vec<EndpointLive>, OperatorError>>;
    fn handle(&mut self, m: ProxyEndpointsOf, _: &mut Context<Self>) -> Self::Result {
        let service = m.1.clone();
        let asked = self.ask_proxy(&m.0, DumpEndpoints(m.1));
        let node = m.0;
        Box::pin(async move {
            asked.await?.ok_or_else(|| {
                OperatorError::NotFound(format!("the proxy of {node} has no service {service}"))
            })
        })
    }
}

impl Master {
    /// Asks node `node`'s `$proxy` (an agent id, `master`, or a SPIFFE id) `msg`.
    fn ask_proxy<M: actormesh::RemoteMessage>(
        &self,
        node: &str,
        msg: M,
    ) -> ResponseFuture<Result<M::Result, OperatorError>> {
        let Some((identity, at)) = self.core.proxy_of(node) else {
            let why = format!(
                "no node {node:?} (expected an agent id from `get nodes`, `master`, or its SPIFFE id)"
            );
            return Box::pin(async move { Err(OperatorError::NotFound(why)) });
        };
        let target = self.node.actor_ref(at, PROXY_ACTOR);
        Box::pin(async move {
            target.ask_timeout(msg, DUMP_ANSWER).await.map_err(|e| {
                OperatorError::Unavailable(format!(
                    "the proxy of {identity} at {at} did not answer: {e}"
                ))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_on_the_masters_own_node_subscribes_its_own_proxy_only() {
        let own = SpiffeId::node("td", "master").unwrap();
        let here: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let elsewhere: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        // No caller: the master's own node, for its own proxy.
        assert_eq!(subscriber(None, here, &own, here), Ok(own.clone()));
        // ... and for no other address, locally or over a link.
        let e = subscriber(None, elsewhere, &own, here).unwrap_err();
        assert_eq!(
            e,
            MasterRefusal::Forbidden(
                "spiffe://td/node/master subscribes for 127.0.0.1:9999, but the master's own proxy is at 127.0.0.1:7000".into()
            )
        );
        assert!(subscriber(Some(own.clone()), elsewhere, &own, here).is_err());
        // Other callers pass on to the core's rules, at whatever address they give.
        let agent = SpiffeId::node("td", "n1").unwrap();
        assert_eq!(
            subscriber(Some(agent.clone()), here, &own, here),
            Ok(agent.clone())
        );
        assert_eq!(
            subscriber(Some(agent.clone()), elsewhere, &own, here),
            Ok(agent)
        );
    }
}
