//! Errors of remote and local calls.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why an `ask` did not produce a reply. Every ask ends with a reply or exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AskError {
    /// No reply arrived before the deadline.
    #[error("no reply within {after:?}")]
    Timeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// The node hosting the actor cannot be reached, or the link to it was lost.
    #[error("node {node} unreachable: {reason}")]
    Unreachable {
        /// The node's address.
        node: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// No actor is registered under that name on that node.
    #[error("no actor named {actor:?} on {node}")]
    NoSuchActor {
        /// The name asked for.
        actor: String,
        /// The node asked.
        node: SocketAddr,
    },
    /// The actor exists but has no handler for that message name.
    #[error("actor {actor:?} ({actor_type}) does not accept message {message:?}")]
    UnknownMessage {
        /// The actor.
        actor: String,
        /// The actor's Rust type, to help find the missing `#[handler]`.
        actor_type: String,
        /// The message name.
        message: String,
    },
    /// The actor's mailbox, or the lane to its node, is full (only from `try_ask`, which
    /// does not wait for room).
    #[error("mailbox of actor {actor:?} is full")]
    MailboxFull {
        /// The actor.
        actor: String,
    },
    /// The actor stopped before it replied.
    #[error("actor {actor:?} stopped before replying")]
    Stopped {
        /// The actor.
        actor: String,
    },
    /// The actor panicked while this call was pending; it is restarted if its policy says so.
    #[error("actor {actor:?} panicked before replying")]
    Panicked {
        /// The actor.
        actor: String,
    },
    /// The callee refused the call (for example it could not decode the message).
    #[error("rejected: {0}")]
    Rejected(String),
}

/// Why a `tell` was not sent. The message is handed back, so the caller can retry or reroute.
#[derive(Debug, thiserror::Error)]
pub enum TellError<M> {
    /// The local mailbox or the send buffer to the node is full (from `try_tell`).
    #[error("mailbox or send buffer full")]
    Full(M),
    /// The node cannot be reached.
    #[error("node unreachable: {1}")]
    Unreachable(M, String),
    /// No actor by that name (local targets only; remote tells are at-most-once).
    #[error("no such actor")]
    NoSuchActor(M),
    /// The actor does not accept this message (local targets only).
    #[error("the actor does not accept this message")]
    UnknownMessage(M),
    /// The message could not be encoded.
    #[error("cannot encode the message: {1}")]
    Encode(M, String),
}

impl<M> TellError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            TellError::Full(m)
            | TellError::Unreachable(m, _)
            | TellError::NoSuchActor(m)
            | TellError::UnknownMessage(m)
            | TellError::Encode(m, _) => m,
        }
    }
}

/// A node could not start or an actor could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The transport failed to start.
    #[error(transparent)]
    Transport(#[from] actormesh_transport::TransportError),
    /// The name is taken on this node.
    #[error("an actor named {0:?} is already registered on this node")]
    NameTaken(String),
    /// The name is not usable.
    #[error("invalid actor name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The actor type has no registered remote handlers.
    #[error("actor type {0} has no #[actormesh::handler] impls, so nothing could ever reach it remotely")]
    NoHandlers(&'static str),
    /// The actor could not be started (its factory panicked, or it was stopped at once).
    #[error("actor {name:?} could not start: {reason}")]
    Start {
        /// The actor's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Bad configuration.
    #[error("invalid node configuration: {0}")]
    Config(String),
}
