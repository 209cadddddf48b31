//! The mesh: services found and called by name.
//!
//! The master keeps a versioned registry of services and their ready endpoints
//! ([`registry`]) and pushes it to every node's Proxy ([`protocol`]). The Proxy applies
//! each push to a [`route::RouteTable`] and publishes it; a [`ServiceRef`] (from
//! [`Mesh::service`]) reads the published table per call, picks an endpoint with the
//! service's balancer ([`balance`]) and calls it directly.
pub mod authz;
pub mod balance;
mod calls;
mod clock;
pub mod figures;
pub mod gateway;
mod handle;
pub mod inbound;
pub mod policy;
pub mod protocol;
mod proxy;
pub mod registry;
pub mod route;
mod service;

pub use figures::MeshFigures;
pub use handle::{Mesh, MeshError, MeshOptions};
pub use registry::{
    BadServiceName, BalancerKind, Endpoint, MeshSettings, Revocation, Service, ServiceName,
    DEFAULT_NAMESPACE,
};
pub use service::{no_endpoints, CallOptions, ServiceRef};
