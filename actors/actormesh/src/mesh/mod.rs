//! The mesh: services found and called by name.
//!
//! The master keeps a versioned registry of services and their ready endpoints
//! ([`registry`]) and pushes it to every node's Proxy ([`protocol`]).
pub mod balance;
pub mod protocol;
pub mod registry;
pub mod route;

pub use registry::{
    BadServiceName, BalancerKind, Endpoint, Revocation, Service, ServiceName, DEFAULT_NAMESPACE,
};
