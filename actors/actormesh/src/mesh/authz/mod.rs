//! Authorization (Istio's AuthorizationPolicy): who may call which service with which
//! message. The master applies `kind: AuthorizationPolicy` objects and pushes, with each
//! service, the policies that apply to it; every node's Proxy compiles them
//! ([`engine::ServiceAuthz`]) and installs them in the node's inbound gate, which decides
//! where a call arrives, before it takes a mailbox place, on the network path and the
//! local path alike.
pub mod engine;
mod memo;
pub mod spec;

pub use engine::{explain, AuthzDefault, Explanation, Facts, ServiceAuthz, Verdict};
pub use spec::{AuthorizationPolicySpec, AuthzAction};

#[cfg(test)]
mod tests;
