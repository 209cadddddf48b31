//! The Master: membership keeper, allocator, deployment controller and certificate
//! authority (the Mesos master and the Citadel role).
//!
//! A guided tour:
//! - [`core::ClusterCore`] holds the rules as plain state: membership, the allocator,
//!   frameworks, deployments, reservations, join tokens. It takes events with the time
//!   passed in and returns [`core::Effect`]s; tests drive it without a network.
//! - [`Master`] is the actix actor that drives the core: it turns messages into events,
//!   carries out the effects (launches, kills, framework events, state store writes) and
//!   answers a request only once the change it acknowledges is durable in the
//!   [`state::StateStore`]. Agents reach it through [`MasterGate`] (the `$master` actor on
//!   the mesh), which passes on the verified caller; joining nodes through the bootstrap
//!   port, operators through the HTTP API ([`api`]).
//! - [`services`] holds the service registry, the push bookkeeping per proxy and the
//!   drain of endpoints, as plain state the core owns.
//! - [`start`] brings it all up from a [`MasterConfig`].

pub mod access;
pub mod allocator;
pub mod api;
pub mod core;
pub mod deployments;
pub mod frameworks;
pub mod ha;
pub mod manifest;
mod master;
pub mod membership;
pub mod rotation;
pub mod scheduler;
pub mod services;
pub mod state;
pub mod timestamp;
pub mod tokens;

pub use crate::core::{DeploymentRefusal, OperatorError, MAX_TOKEN_TTL};
pub use crate::master::{
    serve_standby_bootstrap, start, start_with_store, ApplyDeployment, ApplyTraffic, CreateToken,
    CreatedToken, DeleteDeployment, DeleteNode, DeleteTraffic, DescribeDeployment, DescribeTaskOf,
    DrainNode, IssueClient, Join, KillOn, LaunchOn, ListAllTasks, ListDeploymentTasks,
    ListDeployments, ListNodes, ListProxyStatus, ListRevocations, ListServices, ListTasks,
    ListTraffic, Master, MasterConfig, MasterError, MasterGate, MasterHandle, ProxyConfigOf,
    ProxyEndpointsOf, RevokeClient, ServiceEndpoints, StandbyBootstrap, Subscribe, TaskDescription,
    TaskLogs, TaskQueryRefusal, API_TOKEN_FILE,
};
pub use crate::master::{CaStatus, RotateCa, RotationAction};
