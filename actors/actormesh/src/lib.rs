//! # actormesh
//!
//! An actor runtime whose cluster is made of actors. Application developers write ordinary
//! [actix](https://docs.rs/actix) actors; actormesh runs them on many nodes, finds them and
//! carries their messages over QUIC with mutual TLS.
//!
//! This crate is the façade for actor authors. It pulls no control-plane dependency: the
//! Master lives in `actormesh-master`, the `actormesh` binary in `actormesh-cli`.
//!
//! ## A tour
//!
//! - **Messages** are serde types with a stable wire name and a typed reply, declared with
//!   [`RemoteMessage`] (derive). Names, not Rust type paths, go on the wire, so a message can
//!   evolve and two versions can live side by side in a rolling upgrade.
//! - **Actors** are plain actix actors. [`handler`] on an `impl Handler<M>` registers it for
//!   remote delivery; no list is kept by hand, and a type without handlers is refused at
//!   spawn.
//! - **A [`Node`]** hosts named actors and holds one QUIC link per peer node. Its identity
//!   is a SPIFFE ID from its certificate. [`LocalCa`] makes throwaway certificates for tests
//!   and examples; in a cluster an [`agent`] joins the master with a token instead.
//! - **A [`RemoteRef`]** names an actor anywhere: `tell` is at-most-once and ordered per
//!   sender and receiver, `ask` completes exactly once with the reply or a typed
//!   [`AskError`] (`Timeout`, `Unreachable`, `NoSuchActor`, `UnknownMessage`, ...). Calls to
//!   an actor on the same node are not serialized.
//! - **Supervision and death watch:** [`RestartPolicy`] restarts a crashed actor in place;
//!   [`Node::watch`] tells you when an actor anywhere stops or its node becomes unreachable.
//! - **Running work on a cluster:** [`agent::start`] makes this process an agent that
//!   hosts your actor types ([`agent::ActorHost`]), so the master can place
//!   instances on it; [`framework`] is the client for schedulers of your own (Mesos-style
//!   offers); [`protocol`], [`resources`] and [`task`] are the types they exchange.
//! - **A program that is not a node** (a CLI, a tool) gets a client identity with
//!   [`client::issue`] and a join token of role `client`, then starts a [`Node`] with it to
//!   call actors over mutual TLS, without joining the cluster; [`client::connect`] starts
//!   the node and its mesh and waits for the registry, ready to call services by name.
//! - **Calling by name:** [`mesh::Mesh`] is a node's part of the mesh: its Proxy
//!   (`$proxy`) takes the master's registry pushes, and `mesh.service("shop/ratings")`
//!   gives a [`mesh::ServiceRef`] whose `ask` picks a ready endpoint per call with the
//!   service's balancer and calls it directly. Agents start theirs ([`agent::AgentHandle::mesh`]).
//! - [`transport`]: certificates (`pki`), the QUIC endpoint and its typed errors.
//!
//! ## Two nodes
//!
//! ```
//! use actormesh::prelude::*;
//!
//! #[derive(Serialize, Deserialize, RemoteMessage)]
//! #[remote(name = "hello.Greet/v1", reply = String)]
//! struct Greet { name: String }
//!
//! struct Greeter;
//! impl Actor for Greeter { type Context = Context<Self>; }
//!
//! #[actormesh::handler]
//! impl Handler<Greet> for Greeter {
//!     type Result = String;
//!     fn handle(&mut self, m: Greet, _: &mut Context<Self>) -> String {
//!         format!("hello, {}", m.name)
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! actix::System::new().block_on(async {
//!     // Two nodes with certificates from one throwaway CA, on loopback ports the OS picks.
//!     let ca = actormesh::LocalCa::new("example.local")?;
//!     let server = ca.start_node("server")?;
//!     let client = ca.start_node("client")?;
//!     server.spawn("greeter", Greeter)?;
//!
//!     // The client calls the greeter by node address and actor name, over mutual TLS.
//!     let greeter = client.actor_ref(server.local_addr(), "greeter");
//!     let reply = greeter.ask(Greet { name: "you".into() }).await?;
//!     assert_eq!(reply, "hello, you");
//!
//!     // Nothing there: a typed error, not a hang.
//!     let nobody = client.actor_ref(server.local_addr(), "nobody");
//!     assert!(matches!(
//!         nobody.ask(Greet { name: "?".into() }).await,
//!         Err(AskError::NoSuchActor { .. })
//!     ));
//!     Ok(())
//! })
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Lets the derive macros' `::actormesh` paths work inside this crate too.
extern crate self as actormesh;

pub use actormesh_macros::{handler, RemoteMessage};
pub use actormesh_runtime::{
    caller, hosted_actor_types, Arrival, AskError, Backoff, CallInfo, CallOptions, CallOutcome,
    InboundGate, Metadata, MetadataError, Node, NodeConfig, NodeError, Refusal, RemoteMessage,
    RemoteRef, RestartPolicy, SpawnOptions, TellError, Terminated, TerminationReason, TraceContext,
    Watch, WeakNode, METADATA_LIMIT,
};
pub use actormesh_runtime::{stats, trace};
pub use actormesh_transport as transport;
pub use local_ca::{LocalCa, LocalCaError};

pub mod agent;
pub mod client;
pub mod duration;
pub mod framework;
pub mod health;
mod local_ca;
pub mod masters;
pub mod mesh;
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod protocol;
pub mod resources;
pub mod task;
pub mod token;

/// What most programs need: actix's prelude, serde's derives and actormesh's types.
pub mod prelude {
    pub use crate::{
        handler, AskError, Backoff, CallInfo, CallOptions, Metadata, Node, NodeConfig,
        RemoteMessage, RemoteRef, RestartPolicy, SpawnOptions, TellError, Terminated,
        TerminationReason,
    };
    pub use actix::prelude::{Actor, ActorContext, AsyncContext, Context, Handler, MessageResult};
    pub use serde::{Deserialize, Serialize};
}

#[doc(hidden)]
pub use actormesh_runtime::__private;
