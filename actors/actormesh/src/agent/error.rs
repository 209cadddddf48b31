//! Why an agent could not start, join, register or renew its certificate.

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
    #[error("{what} {addr}: {source}")]
    Unreachable {
        /// What was being done ("joining through", "connecting to the master at").
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// The transport's reason.
        source: TransportError,
    },
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
