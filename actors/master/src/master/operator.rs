//! Operators' requests that change the cluster (from the HTTP API or in process): join
//! tokens, draining, deployments, tasks launched directly, membership subscriptions.
//!
//! `CreateToken`, `DrainNode`, `ApplyDeployment`, `LaunchOn` and `KillOn` answer with a
//! `String` refusal: the API and the CLI only show its text to the operator.

use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use actormesh::protocol::{KillTask, LaunchActor, AGENT_ACTOR};

use super::Master;
use crate::core::{DeploymentRefusal, OperatorError, TrafficApplied, TrafficKind};
use crate::manifest::{PolicyManifest, RouteManifest};
use crate::membership::{AgentRecord, MembershipEvent};
use crate::tokens::{JoinToken, TokenRole};

/// How long an agent has to answer a launch or a kill.
const AGENT_ANSWER: Duration = Duration::from_secs(10);

/// Creates a join token; returns it as printed for operators.
#[derive(Debug, Message)]
#[rtype(result = "Result<CreatedToken, OperatorError>")]
pub struct CreateToken {
    /// How long it works.
    pub ttl: Duration,
    /// What it allows.
    pub role: TokenRole,
}

/// A token just made.
#[derive(Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The whole token, secret included (shown once).
    pub token: String,
    /// Its id.
    pub id: String,
    /// When it stops working.
    #[serde(with = "crate::timestamp")]
    pub expires: SystemTime,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("id", &self.id)
            .field("token", &"<hidden>")
            .field("expires", &self.expires)
            .finish()
    }
}

impl Handler<CreateToken> for Master {
    type Result = ResponseFuture<Result<CreatedToken, OperatorError>>;
    fn handle(&mut self, m: CreateToken, ctx: &mut Context<Self>) -> Self::Result {
        let Ok(token) = JoinToken::generate(self.core.ca_fingerprint()) else {
            return Box::pin(async {
                Err(OperatorError::Unavailable("no system randomness".into()))
            });
        };
        let step = self
            .core
            .create_token(token, m.role, m.ttl, SystemTime::now());
        self.answer(step, ctx, |e| {
            OperatorError::Unavailable(format!("cannot record the token: {e}"))
        })
    }
}

/// Marks an agent draining (no new work placed on it).
#[derive(Debug, Message)]
#[rtype(result = "Result<AgentRecord, OperatorError>")]
pub struct DrainNode(pub String);

impl Handler<DrainNode> for Master {
    type Result = ResponseFuture<Result<AgentRecord, OperatorError>>;
    fn handle(&mut self, m: DrainNode, ctx: &mut Context<Self>) -> Self::Result {
        let step = self.core.drain(&m.0);
        self.answer(step, ctx, move |e| {
            OperatorError::Unavailable(format!(
                "the master could not record that {} drains: {e}",
                m.0
            ))
        })
    }
}

/// Removes an agent now (`delete node`): Gone, identity and token revoked, its instances
/// replaced.
#[derive(Debug, Message)]
#[rtype(result = "Result<AgentRecord, OperatorError>")]
pub struct DeleteNode(pub String);

impl Handler<DeleteNode> for Master {
    type Result = ResponseFuture<Result<AgentRecord, OperatorError>>;
    fn handle(&mut self, m: DeleteNode, ctx: &mut Context<Self>) -> Self::Result {
        let step = self.core.delete_agent(&m.0, Instant::now());
        self.answer(step, ctx, move |e| {
            OperatorError::Unavailable(format!(
                "the master could not record that {} is removed: {e}",
                m.0
            ))
        })
    }
}

/// Subscribes an actor to membership changes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<MembershipEvent>);

impl Handler<Subscribe> for Master {
    type Result = ();
    fn handle(&mut self, m: Subscribe, _: &mut Context<Self>) {
        self.subscribers.push(m.0);
    }
}

/// Adds or replaces a deployment from manifest JSON (validated again here).
#[derive(Debug, Message)]
#[rtype(result = "Result<String, OperatorError>")]
pub struct ApplyDeployment(pub String);

impl Handler<ApplyDeployment> for Master {
    type Result = ResponseFuture<Result<String, OperatorError>>;
    fn handle(&mut self, m: ApplyDeployment, ctx: &mut Context<Self>) -> Self::Result {
        let step = self.core.apply_deployment(m.0);
        self.answer(step, ctx, |e| {
            OperatorError::Unavailable(format!("cannot record the deployment: {e}"))
        })
    }
}

/// Removes deployment `namespace/name` and stops its instances gracefully.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), DeploymentRefusal>")]
pub struct DeleteDeployment(pub String);

impl Handler<DeleteDeployment> for Master {
    type Result = ResponseFuture<Result<(), DeploymentRefusal>>;
    fn handle(&mut self, m: DeleteDeployment, ctx: &mut Context<Self>) -> Self::Result {
        let step = self.core.delete_deployment(&m.0);
        self.answer(step, ctx, |e| DeploymentRefusal::Store(e.to_string()))
    }
}

/// Revokes a client identity (a name or its SPIFFE id): every node refuses it within one
/// push, and no certificate is issued for it, until its certificates have expired.
#[derive(Debug, Message)]
#[rtype(result = "Result<crate::core::ClientRevocation, OperatorError>")]
pub struct RevokeClient(pub String);

impl Handler<RevokeClient> for Master {
    type Result = ResponseFuture<Result<crate::core::ClientRevocation, OperatorError>>;
    fn handle(&mut self, m: RevokeClient, ctx: &mut Context<Self>) -> Self::Result {
        let step = self.core.revoke_client(&m.0, SystemTime::now());
        self.answer(step, ctx, |e| {
            OperatorError::Unavailable(format!("cannot record the revocation: {e}"))
        })
    }
}

/// The client identities revoked now.
#[derive(Debug, Message)]
#[rtype(result = "Vec<crate::core::ClientRevocation>")]
pub struct ListRevocations;

impl Handler<ListRevocations> for Master {
    type Result = MessageResult<ListRevocations>;
    fn handle(&mut self, _: ListRevocations, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.client_revocations())
    }
}

/// Adds or replaces a Route, DestinationPolicy, AuthorizationPolicy, Gateway or HttpRoute
/// from manifest JSON (validated again here).
#[derive(Debug, Message)]
#[rtype(result = "Result<TrafficApplied, OperatorError>")]
pub struct ApplyTraffic(pub String);

impl Handler<ApplyTraffic> for Master {
    type Result = ResponseFuture<Result<TrafficApplied, OperatorError>>;
    fn handle(&mut self, m: ApplyTraffic, ctx: &mut Context<Self>) -> Self::Result {
        let step = self.core.apply_traffic(m.0);
        self.answer(step, ctx, |e| {
            OperatorError::Unavailable(format!("cannot record the object: {e}"))
        })
    }
}

/// Deletes a Route, DestinationPolicy, AuthorizationPolicy, Gateway or HttpRoute: kind,
/// namespace, name.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), OperatorError>")]
pub struct DeleteTraffic(pub TrafficKind, pub String, pub String);

impl Handler<DeleteTraffic> for Master {
    type Result = ResponseFuture<Result<(), OperatorError>>;
    fn handle(&mut self, m: DeleteTraffic, ctx: &mut Context<Self>) -> Self::Result {
        let step = self.core.delete_traffic(m.0, &m.1, &m.2);
        self.answer(step, ctx, |e| {
            OperatorError::Unavailable(format!("cannot record the deletion: {e}"))
        })
    }
}

/// The applied Routes, DestinationPolicies and AuthorizationPolicies, and the mesh-wide
/// settings (`GET /v1/traffic`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrafficList {
    /// Routes.
    pub routes: Vec<RouteManifest>,
    /// DestinationPolicies.
    pub destination_policies: Vec<PolicyManifest>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<crate::manifest::AuthzManifest>,
    /// Gateways.
    pub gateways: Vec<crate::manifest::GatewayManifest>,
    /// HttpRoutes.
    pub http_routes: Vec<crate::manifest::HttpRouteManifest>,
    /// The settings every push carries (the authorization default).
    pub mesh: actormesh::mesh::MeshSettings,
}

/// What is applied ([`TrafficList`]).
#[derive(Debug, Message)]
#[rtype(result = "TrafficList")]
pub struct ListTraffic;

impl Handler<ListTraffic> for Master {
    type Result = MessageResult<ListTraffic>;
    fn handle(&mut self, _: ListTraffic, _: &mut Context<Self>) -> Self::Result {
        MessageResult(TrafficList {
            routes: self.core.routes(),
            destination_policies: self.core.destination_policies(),
            authorization_policies: self.core.authorization_policies(),
            gateways: self.core.gateways(),
            http_routes: self.core.http_routes(),
            mesh: self.core.mesh_settings(),
        })
    }
}

/// Starts an instance of `actor_type` named `name` on agent `agent` as task `task_id`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub struct LaunchOn {
    /// The agent.
    pub agent: String,
    /// The task id.
    pub task_id: String,
    /// A type the agent hosts.
    pub actor_type: String,
    /// The instance's name on the agent's node.
    pub name: String,
}

impl Handler<LaunchOn> for Master {
    type Result = ResponseFuture<Result<(), String>>;
    fn handle(&mut self, m: LaunchOn, _: &mut Context<Self>) -> Self::Result {
        let target = self
            .core
            .launch_on(&m.agent, &m.task_id)
            .map(|at| self.node.actor_ref(at, AGENT_ACTOR))
            .map_err(|e| e.to_string());
        let order = actormesh::masters::order_options(self.term, AGENT_ANSWER);
        Box::pin(async move {
            let launch = LaunchActor {
                task_id: m.task_id,
                actor_type: m.actor_type,
                name: m.name,
                health: None,
                restart: None,
                resources: Default::default(),
                version: String::new(),
                workload: None,
            };
            target?
                .ask_with_options(launch, &order)
                .await
                .map_err(|e| format!("agent {} did not answer: {e}", m.agent))?
        })
    }
}

/// Stops task `task_id` on agent `agent`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub struct KillOn {
    /// The agent.
    pub agent: String,
    /// The task id.
    pub task_id: String,
}

impl Handler<KillOn> for Master {
    type Result = ResponseFuture<Result<(), String>>;
    fn handle(&mut self, m: KillOn, _: &mut Context<Self>) -> Self::Result {
        let target = self
            .core
            .agent_addr(&m.agent)
            .map(|at| self.node.actor_ref(at, AGENT_ACTOR))
            .map_err(|e| e.to_string());
        let order = actormesh::masters::order_options(self.term, AGENT_ANSWER);
        Box::pin(async move {
            target?
                .ask_with_options(KillTask { task_id: m.task_id }, &order)
                .await
                .map_err(|e| format!("agent {} did not answer: {e}", m.agent))?
        })
    }
}
