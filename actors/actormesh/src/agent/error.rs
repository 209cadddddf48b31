//! Why an agent could not start, join, register or renew its certificate, and why it
//! refuses a request about a task.

use std::net::SocketAddr;
use std::path::PathBuf;

use actormesh_transport::codec::CodecError;
use actormesh_transport::identity::IdentityError;
use actormesh_transport::pki::PkiError;
use actormesh_transport::{SpiffeId, TransportError};

use crate::protocol::MasterRefusal;
use crate::resources::Resources;
use crate::token::TokenFormatError;
use crate::{AskError, NodeError};

/// An agent's start-up or certificate renewal failed; each variant names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data directory has no certificate and no join token was given.
    #[error("{0} holds no certificate yet: pass --token (from `actormesh token create`) to join")]
    NoToken(PathBuf),
    /// The join token does not parse.
    #[error(transparent)]
    Token(#[from] TokenFormatError),
    /// Reading or writing the agent's data directory failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Storage {
        /// What was being done ("write", "read", "create").
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The saved agent state file does not parse.
    #[error("{} is not a valid agent state file: {source}", path.display())]
    StateFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: serde_json::Error,
    },
    /// Making a key or CSR, or loading or checking certificates failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// An identity did not parse.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A message could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The agent's node did not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The master (its bootstrap port or mesh address) could not be reached.
    // The reason is part of the message and not a `source`, so that a printer of the
    // error chain (anyhow's `{:#}`) says it once.
    #[error("{what} {addr}: {error}")]
    Unreachable {
        /// What was being done ("joining through", "connecting to the master at").
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// The transport's reason.
        error: TransportError,
    },
    /// The master's trust bundle did not parse.
    #[error("the trust bundle from the master is not usable: {0} (expected PEM CA certificates)")]
    BadBundle(String),
    /// The agent's endpoint refused new credentials.
    #[error("cannot use the renewed certificate: {0}")]
    Transport(#[from] TransportError),
    /// Something that is not the master answers at the master's address.
    #[error("{identity} answers at the master's address {addr}: refusing to register with it")]
    NotTheMaster {
        /// Who answered.
        identity: SpiffeId,
        /// The master's address.
        addr: SocketAddr,
    },
    /// The bootstrap port answered with something other than what was asked.
    #[error("the bootstrap port at {0} answered a join with something else")]
    UnexpectedReply(SocketAddr),
    /// The master refused to let this agent join.
    #[error("the master refused to let this agent join: {0}")]
    JoinRefused(String),
    /// The master refused the registration (or this agent's connection).
    #[error("the master refused the registration: {0}")]
    RegistrationRefused(MasterRefusal),
    /// The master refused this agent's connection (revoked identity, unknown CA).
    #[error("the master refused this agent's connection: {0}")]
    ConnectionRefused(String),
    /// The master did not answer in time.
    #[error("the master at {addr} did not answer within {limit:?}: {source}")]
    NoAnswer {
        /// The master's address.
        addr: SocketAddr,
        /// How long the agent tried.
        limit: std::time::Duration,
        /// The last error.
        source: AskError,
    },
    /// A call to the master failed.
    #[error(transparent)]
    Ask(#[from] AskError),
    /// The master refused a certificate renewal.
    #[error("the master refused to renew the certificate: {0}")]
    RenewalRefused(MasterRefusal),
    /// The configured reservations are more than the agent offers.
    #[error("the reservations ({reserved} in all) exceed what this agent offers ({offered})")]
    ReservationsExceed {
        /// The reservations, summed.
        reserved: Box<Resources>,
        /// What the agent offers.
        offered: Box<Resources>,
    },
    /// The master removed this agent (`run_until_stopped`): it must join again.
    #[error("this agent was removed from the cluster: {0}")]
    Removed(String),
    /// Waiting for Ctrl-C failed (`run_until_stopped`).
    #[error("cannot wait for Ctrl-C: {0}")]
    Signal(String),
}

impl AgentError {
    pub(crate) fn storage(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| AgentError::Storage { what, path, source }
    }
}

/// Why the agent refused a request of the master's about a task. It goes back to the
/// master as text: the `/v1` replies carry a `String`, and the master's call sites take one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TaskRefusal {
    /// The caller is not the master.
    #[error("{0} may not manage tasks here; only the master may")]
    NotTheMaster(SpiffeId),
    /// A master, but not the one this agent follows (which leads at a later term).
    #[error("{caller} is not the master this agent follows ({}); it obeys the leading master only", followed.as_ref().map(|f| f.to_string()).unwrap_or_else(|| "none yet".into()))]
    NotFollowed {
        /// Who sent it.
        caller: SpiffeId,
        /// Who this agent follows.
        followed: Option<SpiffeId>,
    },
    /// The order is of an older leadership than one already obeyed.
    #[error(transparent)]
    OlderTerm(crate::masters::Disobeyed),
    /// The order's term metadata is not a number.
    #[error("{0}")]
    BadTerm(String),
    /// The request did not come over the mesh, so no verified identity sent it.
    #[error("task requests must come from the master over the mesh")]
    NoCaller,
    /// The task id cannot name a sandbox and an actor.
    #[error(transparent)]
    InvalidId(#[from] crate::protocol::InvalidTaskId),
    /// An earlier task of this id left its sandbox (kept for its logs).
    #[error("task id {id} was used before on agent {agent} (its sandbox {} is kept for its logs); launch it under a new id", sandbox.display())]
    IdUsedBefore {
        /// The task id.
        id: String,
        /// This agent.
        agent: String,
        /// The sandbox in the way.
        sandbox: PathBuf,
    },
    /// The command task could not be started.
    #[error(transparent)]
    Launch(#[from] super::command::CommandError),
    /// This agent's binary does not host the actor type.
    #[error("actor type {actor_type:?} is not hosted here (hosted: {hosted})")]
    NotHosted {
        /// The type asked for.
        actor_type: String,
        /// The types hosted, comma-separated.
        hosted: String,
    },
    /// The actor task could not be spawned.
    #[error(transparent)]
    Spawn(#[from] NodeError),
    /// No task of this id runs here, or left a sandbox here.
    #[error("no task {task_id} on agent {agent}")]
    NoSuchTask {
        /// The task id.
        task_id: String,
        /// This agent.
        agent: String,
    },
    /// The task is an actor task, whose output is not captured.
    #[error("task {0} is an actor task: it has no captured output")]
    NoCapturedOutput(String),
    /// A captured stream could not be read.
    #[error("cannot read {}: {source}", file.display())]
    ReadLog {
        /// The stream's file in the sandbox.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An ended command task's sandbox holds no checkpoint to describe it from.
    #[error("task {task_id} left no checkpoint in {}", sandbox.display())]
    NoCheckpoint {
        /// The task id.
        task_id: String,
        /// Its sandbox.
        sandbox: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_master_is_said_once_by_a_printer_of_the_error_chain() {
        let addr: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let e = AgentError::Unreachable {
            what: "joining through",
            addr,
            error: TransportError::Unreachable {
                addr,
                reason: "nothing listens on this UDP port".into(),
            },
        };
        assert_eq!(
            e.to_string(),
            "joining through 127.0.0.1:7001: cannot reach 127.0.0.1:7001: nothing listens on this UDP port"
        );
        // anyhow's `{:#}` appends each source: the reason is not one, so it is said once.
        assert!(std::error::Error::source(&e).is_none());
    }
}
