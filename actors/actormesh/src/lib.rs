//! # actormesh
//!
//! An actor runtime whose cluster is made of actors. Application developers write
//! ordinary actix actors; actormesh runs them on many nodes, finds them by name and
//! carries their messages over QUIC with mutual TLS.
//!
//! This crate is the façade users depend on. Today it offers the foundation:
//!
//! - [`Node`]: hosts named actors and reaches actors on other nodes;
//! - [`RemoteRef`]: `tell` / `ask` to a named actor anywhere, local calls unserialized;
//! - [`RemoteMessage`] (derive) and [`handler`] (attribute): declare messages with stable
//!   wire names and register handlers without a hand-kept list;
//! - supervision ([`RestartPolicy`]) and death watch ([`Node::watch`]);
//! - [`transport`]: certificates (`pki`), the QUIC endpoint and its typed errors.
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
//! # fn main() {}
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Lets the derive macros' `::actormesh` paths work inside this crate too.
extern crate self as actormesh;

pub use actormesh_macros::{handler, RemoteMessage};
pub use actormesh_runtime::{
    caller, hosted_actor_types, AskError, Backoff, Node, NodeConfig, NodeError, RemoteMessage,
    RemoteRef, RestartPolicy, SpawnOptions, TellError, Terminated, TerminationReason, Watch,
};
pub use actormesh_transport as transport;

pub mod agent;
pub mod framework;
pub mod health;
pub mod protocol;
pub mod resources;
pub mod task;
pub mod token;

/// What most programs need: actix's prelude, serde's derives and actormesh's types.
pub mod prelude {
    pub use crate::{
        handler, AskError, Backoff, Node, NodeConfig, RemoteMessage, RemoteRef, RestartPolicy,
        SpawnOptions, TellError, Terminated, TerminationReason,
    };
    pub use actix::prelude::{Actor, ActorContext, AsyncContext, Context, Handler, MessageResult};
    pub use serde::{Deserialize, Serialize};
}

#[doc(hidden)]
pub use actormesh_runtime::__private;
