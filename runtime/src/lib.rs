//! # actormesh-runtime
//!
//! Remote actix actors over [`actormesh_transport`]. A [`Node`] owns a QUIC endpoint and
//! hosts actors under names; a [`RemoteRef`] reaches a named actor on any node with `tell`
//! (at-most-once, ordered per sender→receiver pair) and `ask` (exactly one outcome: the
//! reply or a typed [`AskError`], always within a deadline).
//!
//! Messages are serde types with a stable wire name, declared with
//! `#[derive(RemoteMessage)]`; `#[actormesh::handler]` on `impl Handler<M> for A` registers
//! the handler, so a node learns what each actor accepts without a hand-kept list.
//!
//! Each call carries a context: its deadline, the caller node's verified identity, the
//! workload it asserts, an attempt number, trace context and user [`Metadata`]. A handler
//! reads it as [`CallInfo::current`]; calls it makes inherit the deadline and the
//! metadata marked to propagate ([`CallOptions`] sets them per call). Every [`AskError`]
//! says whether the callee got the call ([`AskError::outcome`]).
//!
//! ```text
//! #[derive(Serialize, Deserialize, RemoteMessage)]
//! #[remote(name = "hello.Greet/v1", reply = String)]
//! struct Greet(String);
//!
//! #[actormesh::handler]
//! impl Handler<Greet> for Greeter {
//!     type Result = String;
//!     fn handle(&mut self, m: Greet, _: &mut Context<Self>) -> String { format!("hello, {}", m.0) }
//! }
//!
//! let node = Node::start(NodeConfig::new(addr), &credentials)?;
//! node.spawn("greeter", Greeter)?;
//! let reply = node.actor_ref(other_addr, "greeter").ask(Greet("mesh".into())).await?;
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod call;
mod config;
mod crash;
mod deadline;
mod dispatch;
mod error;
mod gate;
mod inbound;
mod lanes;
mod locks;
mod mailbox;
mod message;
mod node;
mod peers;
mod remote_ref;
mod sample;
mod slots;
pub mod stats;
mod supervise;
pub mod trace;
mod watches;
pub mod wire;

pub use call::{
    CallInfo, CallOptions, Metadata, MetadataError, TraceContext, METADATA_LIMIT, WORKLOAD_LIMIT,
};
pub use config::{NodeConfig, PRIORITY_SYSTEM};
pub use error::{AskError, CallOutcome, NodeError, TellError};
pub use gate::{Arrival, InboundGate, Refusal};
pub use message::{caller, hosted_actor_types, Delivery, HandlerEntry, RemoteMessage};
pub use node::{MetricsServer, Node, SpawnOptions, Watch, WeakNode};
pub use remote_ref::RemoteRef;
pub use supervise::{Backoff, RestartPolicy};
pub use watches::{Terminated, TerminationReason};

/// Used by generated code; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::message::{register, reply_is, Delivery, HandlerEntry, Registration};
    pub use actix;
    pub use inventory;
}
