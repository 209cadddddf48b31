//! The messages between the master's registry and every node's Proxy.
//!
//! A node's Proxy subscribes at `$master` ([`Subscribe`]). The master answers with one full
//! snapshot and then deltas of the changed services only, each an ask to the node's
//! `$proxy` ([`Push`]); the reply acknowledges the version applied, or refuses it with the
//! reason. A node may also serve its own actors as services ([`RegisterService`]); such a
//! registration lives as long as the node's membership.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::mesh::registry::{MeshSettings, Revocation, Service, ServiceName};
use crate::protocol::MasterRefusal;
use crate::RemoteMessage;

/// The name of every node's Proxy actor.
pub const PROXY_ACTOR: &str = "$proxy";

/// A node's Proxy asks the master for the registry. The master takes the subscriber's
/// identity from the link (`caller()`), and pushes to `$proxy` on the calling node.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.mesh.Subscribe/v1", reply = Result<Subscribed, MasterRefusal>)]
pub struct Subscribe {
    /// The subscriber's mesh address (where its `$proxy` listens).
    pub addr: std::net::SocketAddr,
    /// The registry version it applied last (after a reconnect), if any: the master then
    /// sends a delta from there if it can, a full snapshot otherwise.
    pub have: Option<u64>,
}

/// The master accepted a subscription; pushes follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The registry's version now.
    pub version: u64,
}

/// How a push relates to what the proxy holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushKind {
    /// Everything: replace what you hold.
    Full,
    /// Changes since version `from`: apply only if you hold exactly `from`.
    Delta {
        /// The version the delta starts from.
        from: u64,
    },
}

/// The master pushes registry changes to a node's `$proxy`.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
/// v2: services carry their traffic policy (`Service::traffic`); v3: their hosts and
/// authorization policies, and the push the mesh's settings. A proxy of an earlier
/// version answers `UnknownMessage` rather than misreading it.
#[remote(name = "actormesh.mesh.Push/v3", reply = Result<u64, PushRefused>)]
pub struct Push {
    /// The registry version this push brings the proxy to.
    pub version: u64,
    /// Full snapshot or delta.
    pub kind: PushKind,
    /// Services added or changed (all of them in a full snapshot).
    pub services: Vec<Service>,
    /// Services gone since `from` (empty in a full snapshot).
    pub removed: Vec<ServiceName>,
    /// Revoked identities: all in force in a full snapshot, the new ones in a delta.
    pub revoked: Vec<Revocation>,
    /// The master's mesh-wide settings (in every push).
    pub mesh: MeshSettings,
}

/// Why a proxy did not apply a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PushRefused {
    /// A delta from a version the proxy does not hold; send a full snapshot.
    #[error("delta from version {from}, but this proxy holds {holds:?}")]
    WrongBase {
        /// The delta's base.
        from: u64,
        /// What the proxy holds.
        holds: Option<u64>,
    },
    /// A version older than the one applied: the registry's version never goes back.
    #[error("version {offered} is older than the applied {applied}")]
    Older {
        /// The push's version.
        offered: u64,
        /// The proxy's.
        applied: u64,
    },
    /// The push is not valid (the reason names what).
    #[error("invalid push: {0}")]
    Invalid(String),
    /// The push came from another node than the master.
    #[error("a proxy takes pushes from the master only, not from {caller}")]
    Forbidden {
        /// The sender's verified identity.
        caller: String,
    },
}

/// The operator asks a node's `$proxy` what it applied (`actormesh get proxy-config`).
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.mesh.DumpConfig/v3", reply = ProxyConfig)]
pub struct DumpConfig;

/// What a proxy applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// The registry version applied (`None`: nothing yet).
    pub version: Option<u64>,
    /// Its services, sorted by name.
    pub services: Vec<Service>,
    /// The identities it refuses.
    pub revoked: Vec<Revocation>,
    /// The mesh-wide settings of the last push.
    #[serde(default)]
    pub mesh: MeshSettings,
}

/// Ask a node's `$proxy` for the node's call figures (`actormesh top`): over the mesh, so
/// that it works with `/metrics` on loopback or not served at all.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.mesh.Figures/v1", reply = NodeFigures)]
pub struct GetFigures;

/// A node's call figures now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFigures {
    /// The node's identity.
    pub node: String,
    /// Whether it keeps figures at all (`NodeConfig::metrics`); without, both lists are
    /// empty.
    pub keeps_figures: bool,
    /// Calls that arrived there, by destination and message, each by source.
    pub inbound: Vec<crate::stats::ServerFigures>,
    /// Calls by name made there: `(service, message, source, figures)`.
    pub outbound: Vec<(String, String, String, crate::stats::StatsSnapshot)>,
}

/// Ask a node's `$proxy` for the live state of one service's endpoints as this node sees
/// them (`describe service`); `None` if its table has no such service.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.mesh.DumpEndpoints/v2", reply = Option<Vec<EndpointLive>>)]
pub struct DumpEndpoints(pub ServiceName);

/// One endpoint as a node's proxy sees it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointLive {
    /// The endpoint's id.
    pub id: String,
    /// How long it stays ejected, in milliseconds (`None`: not ejected; 0: waiting for a
    /// probe).
    pub ejected_for_ms: Option<u64>,
    /// Calls in flight from this node.
    pub in_flight: u32,
    /// The latency estimate (peak EWMA), in milliseconds.
    pub ewma_ms: f64,
    /// The subsets of the service's DestinationPolicy it is in.
    pub subsets: Vec<String>,
    /// The circuit breaker as this endpoint's calls meet it: `None` without a breaker,
    /// else `closed`, or `open: <limit>` while a limit is reached.
    pub breaker: Option<String>,
}

/// A node registers one of its own actors as an endpoint of a service.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.mesh.RegisterService/v1", reply = Result<(), MasterRefusal>)]
pub struct RegisterService {
    /// The service.
    pub service: ServiceName,
    /// The actor's name on the calling node.
    pub actor: String,
    /// Its version label.
    pub version: String,
    /// Its labels (besides `version`).
    pub labels: BTreeMap<String, String>,
    /// Its weight (at least 1).
    pub weight: u32,
}

/// A node takes one of its actors out of a service (it drains first: see the master).
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.mesh.DeregisterService/v1", reply = Result<(), MasterRefusal>)]
pub struct DeregisterService {
    /// The service.
    pub service: ServiceName,
    /// The actor's name on the calling node.
    pub actor: String,
}
