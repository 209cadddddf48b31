//! A throwaway certificate authority, so that tests, examples and single-machine programs
//! get nodes without any PKI set-up. A cluster uses the master's CA instead (agents join
//! with a token); nothing here is saved to disk.

use std::net::SocketAddr;
use std::time::Duration;

use actormesh_transport::pki::{CertificateAuthority, Credentials, PkiError};
use actormesh_transport::SpiffeId;

use crate::{Node, NodeConfig, NodeError};

/// How long the CA and the certificates it issues live: long enough for any test or demo,
/// short enough that a leaked key is soon worthless.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why a throwaway node could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LocalCaError {
    /// Making the CA or a certificate failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The node name does not make a SPIFFE identity.
    #[error("node name {name:?} is not valid: {reason}")]
    Name {
        /// The name given.
        name: String,
        /// Why.
        reason: String,
    },
    /// The node did not start.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// A CA made in memory for one process. Every node it starts trusts every other.
///
/// ```
/// # actix::System::new().block_on(async {
/// let ca = actormesh::LocalCa::new("example.local").unwrap();
/// let node = ca.start_node("a").unwrap();
/// assert_eq!(node.identity().to_string(), "spiffe://example.local/node/a");
/// # });
/// ```
#[derive(Debug)]
pub struct LocalCa {
    ca: CertificateAuthority,
}

impl LocalCa {
    /// A fresh CA for `trust_domain` (e.g. `example.local`).
    pub fn new(trust_domain: &str) -> Result<Self, LocalCaError> {
        Ok(Self {
            ca: CertificateAuthority::generate(trust_domain, LIFETIME)?,
        })
    }

    /// The CA itself, to issue other identities or save it.
    pub fn authority(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// Credentials for `spiffe://<trust domain>/node/<name>`.
    pub fn credentials(&self, name: &str) -> Result<Credentials, LocalCaError> {
        let id = SpiffeId::node(self.ca.trust_domain(), name).map_err(|e| LocalCaError::Name {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        Ok(self.ca.issue(&id, LIFETIME)?.credentials()?)
    }

    /// Starts node `name` on a port of 127.0.0.1 chosen by the OS. Call it inside an actix
    /// system, as [`Node::start`].
    pub fn start_node(&self, name: &str) -> Result<Node, LocalCaError> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        self.start_node_with(name, NodeConfig::new(loopback))
    }

    /// Starts node `name` with `config` (its listen address, limits, timeouts).
    pub fn start_node_with(&self, name: &str, config: NodeConfig) -> Result<Node, LocalCaError> {
        Ok(Node::start(config, &self.credentials(name)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_name_says_what_is_wrong() {
        let ca = LocalCa::new("example.local").unwrap();
        let e = ca.credentials("Not A Name").unwrap_err();
        assert!(e.to_string().contains("\"Not A Name\""), "{e}");
    }
}
