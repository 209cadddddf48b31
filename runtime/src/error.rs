//! Errors of remote and local calls.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::call::MetadataError;

/// Why an `ask` did not produce a reply. Every ask ends with a reply or exactly one of these.
///
/// Each kind says whether the callee got the call ([`AskError::outcome`]), so a retry
/// knows what is safe, and which HTTP status a gateway answers with
/// ([`AskError::http_status`]). Keep this table true as kinds are added:
///
/// | error | meaning | did the callee get it? | HTTP at the gateway |
/// |---|---|---|---|
/// | `Timeout` | the deadline passed | unknown | 504 |
/// | `Unreachable { sent: false }` | no link to the node; the call was never sent | no | 503 |
/// | `Unreachable { sent: true }` | the link was lost while the call waited for its answer | unknown | 503 |
/// | `NoSuchActor` / `UnknownMessage` | nothing there takes this message | no | 404 |
/// | `MailboxFull` | the target's mailbox or lane is full (`try_*`) | no | 503 |
/// | `NotDelivered` | refused before delivery (e.g. a pinned identity did not match); always safe to retry | no | 503 |
/// | `Stopped` / `Panicked` | the actor stopped or crashed with the call | yes | 500 |
/// | `Rejected(reason)` | the handler or the callee's decoder refused it | yes | 400 |
/// | `InvalidMetadata` | the call's metadata breaks a limit; refused by the caller before sending | no | 400 |
/// | `NoEndpoints` | the service has no ready instance | no | 503 |
/// | `PermissionDenied { policy, rule }` | authorization said no | no | 403 |
/// | `CircuitOpen { service, limit }` | the caller's circuit breaker for the service is at a limit; answered at once | no | 503 |
/// | `RateLimited { service }` | the callee's local rate limit for the service has no token | no | 429 |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AskError {
    /// No reply arrived before the deadline. The callee may or may not have handled it.
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
        /// Whether the call had been queued on a link when it was lost: then the callee
        /// may have got it (outcome unknown). `false`: it never left this node.
        sent: bool,
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
    #[error("actor {actor:?} ({actor_type}) does not accept message {message:?}: if it has an `impl Handler` for it, mark that impl with #[actormesh::handler] (only marked impls are reachable by name)")]
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
    /// The call was refused before it was delivered (for example the node at the address
    /// is not the identity the reference is pinned to). The callee never got it, so it is
    /// always safe to retry.
    #[error("not delivered: {reason}")]
    NotDelivered {
        /// Why it was refused.
        reason: String,
    },
    /// The service has no ready instance to take the call.
    #[error("service {service:?} has no ready endpoint")]
    NoEndpoints {
        /// The service asked for.
        service: String,
    },
    /// An AuthorizationPolicy (or the mesh's default, `policy: "default-deny"`) refused the
    /// call where it arrived, before it took a mailbox place; a Route's injected abort of
    /// kind `denied` gives it too. Not retried.
    #[error("permission denied by policy {policy:?}, rule {rule:?}")]
    PermissionDenied {
        /// The policy that said no.
        policy: String,
        /// Its rule that matched.
        rule: String,
    },
    /// The call's metadata breaks a limit; refused before sending. It would be refused
    /// the same way again, so [`AskError::is_retry_safe`] is false although nothing was sent.
    #[error("invalid call metadata: {0}")]
    InvalidMetadata(MetadataError),
    /// The caller's circuit breaker for the service is at one of its limits: the call was
    /// refused at once, without waiting, and never sent.
    #[error("circuit open for service {service:?}: {limit} reached")]
    CircuitOpen {
        /// The service.
        service: String,
        /// The limit reached (e.g. `max pending`).
        limit: String,
    },
    /// The callee's local rate limit for the service had no token: refused where the call
    /// arrived, before the mailbox.
    #[error("rate limited: service {service:?} takes no more calls now")]
    RateLimited {
        /// The service.
        service: String,
    },
}

/// Whether the callee got a call that failed, which decides what a retry may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CallOutcome {
    /// The callee never got it: retrying cannot run it twice.
    NotDelivered,
    /// The callee got it and it failed there.
    Delivered,
    /// It was sent, then the answer did not come (deadline, or the link dropped): the
    /// callee may have run it.
    Unknown,
}

impl AskError {
    /// Whether the callee got the call (see the table on [`AskError`]).
    pub fn outcome(&self) -> CallOutcome {
        match self {
            AskError::Timeout { .. } => CallOutcome::Unknown,
            AskError::Unreachable { sent: true, .. } => CallOutcome::Unknown,
            AskError::Unreachable { sent: false, .. } => CallOutcome::NotDelivered,
            AskError::NoSuchActor { .. }
            | AskError::UnknownMessage { .. }
            | AskError::MailboxFull { .. }
            | AskError::NotDelivered { .. }
            | AskError::NoEndpoints { .. }
            | AskError::PermissionDenied { .. }
            | AskError::InvalidMetadata(_)
            | AskError::CircuitOpen { .. }
            | AskError::RateLimited { .. } => CallOutcome::NotDelivered,
            AskError::Stopped { .. } | AskError::Panicked { .. } | AskError::Rejected(_) => {
                CallOutcome::Delivered
            }
        }
    }

    /// Whether sending the same call again is safe and may succeed: the callee never got
    /// it, and the refusal is not one the same call meets again (invalid metadata, a
    /// denied permission) or that says to back off (an open circuit, a rate limit). A
    /// retry may still go elsewhere (another endpoint).
    pub fn is_retry_safe(&self) -> bool {
        self.outcome() == CallOutcome::NotDelivered
            && !matches!(
                self,
                AskError::InvalidMetadata(_)
                    | AskError::PermissionDenied { .. }
                    | AskError::CircuitOpen { .. }
                    | AskError::RateLimited { .. }
            )
    }

    /// The HTTP status a gateway answers with for this error (see the table on [`AskError`]).
    pub fn http_status(&self) -> u16 {
        match self {
            AskError::Timeout { .. } => 504,
            AskError::Unreachable { .. }
            | AskError::MailboxFull { .. }
            | AskError::NotDelivered { .. }
            | AskError::NoEndpoints { .. }
            | AskError::CircuitOpen { .. } => 503,
            AskError::RateLimited { .. } => 429,
            AskError::NoSuchActor { .. } | AskError::UnknownMessage { .. } => 404,
            AskError::Stopped { .. } | AskError::Panicked { .. } => 500,
            AskError::Rejected(_) | AskError::InvalidMetadata(_) => 400,
            AskError::PermissionDenied { .. } => 403,
        }
    }
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
    #[error("the actor does not accept this message (is its `impl Handler` marked #[actormesh::handler]?)")]
    UnknownMessage(M),
    /// The message could not be encoded.
    #[error("cannot encode the message: {1}")]
    Encode(M, String),
    /// Refused before sending (the node at the address is not the pinned identity, or
    /// the call's metadata breaks a limit).
    #[error("not delivered: {1}")]
    NotDelivered(M, String),
}

impl<M> TellError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            TellError::Full(m)
            | TellError::Unreachable(m, _)
            | TellError::NoSuchActor(m)
            | TellError::UnknownMessage(m)
            | TellError::Encode(m, _)
            | TellError::NotDelivered(m, _) => m,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<AskError> {
        let node: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let actor = || "a".to_string();
        vec![
            AskError::Timeout {
                after: Duration::from_secs(1),
            },
            AskError::Unreachable {
                node,
                reason: "dial failed".into(),
                sent: false,
            },
            AskError::Unreachable {
                node,
                reason: "link lost".into(),
                sent: true,
            },
            AskError::NoSuchActor {
                actor: actor(),
                node,
            },
            AskError::UnknownMessage {
                actor: actor(),
                actor_type: "T".into(),
                message: "m".into(),
            },
            AskError::MailboxFull { actor: actor() },
            AskError::Stopped { actor: actor() },
            AskError::Panicked { actor: actor() },
            AskError::Rejected("bad".into()),
            AskError::NotDelivered {
                reason: "pinned".into(),
            },
            AskError::NoEndpoints {
                service: "shop/ratings".into(),
            },
            AskError::PermissionDenied {
                policy: "p".into(),
                rule: "r".into(),
            },
            AskError::InvalidMetadata(MetadataError::TooLarge {
                size: 2000,
                limit: 1024,
            }),
            AskError::CircuitOpen {
                service: "shop/ratings".into(),
                limit: "max pending".into(),
            },
            AskError::RateLimited {
                service: "shop/ratings".into(),
            },
        ]
    }

    #[test]
    fn every_kind_maps_to_the_documented_outcome_and_status() {
        use CallOutcome::*;
        let expected = [
            (Unknown, 504, false),
            (NotDelivered, 503, true),
            (Unknown, 503, false),
            (NotDelivered, 404, true),
            (NotDelivered, 404, true),
            (NotDelivered, 503, true),
            (Delivered, 500, false),
            (Delivered, 500, false),
            (Delivered, 400, false),
            (NotDelivered, 503, true),
            (NotDelivered, 503, true),
            (NotDelivered, 403, false),
            (NotDelivered, 400, false),
            (NotDelivered, 503, false),
            (NotDelivered, 429, false),
        ];
        let kinds = every_kind();
        assert_eq!(kinds.len(), expected.len());
        for (e, (outcome, status, retry)) in kinds.iter().zip(expected) {
            assert_eq!(e.outcome(), outcome, "{e:?}");
            assert_eq!(e.http_status(), status, "{e:?}");
            assert_eq!(e.is_retry_safe(), retry, "{e:?}");
        }
    }

    #[test]
    fn messages_name_what_failed() {
        let e = AskError::PermissionDenied {
            policy: "deny-all".into(),
            rule: "0".into(),
        };
        assert!(e.to_string().contains("deny-all"), "{e}");
        let e = AskError::NoEndpoints {
            service: "shop/ratings".into(),
        };
        assert!(e.to_string().contains("shop/ratings"), "{e}");
    }
}
