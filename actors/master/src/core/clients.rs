//! Client certificates: a program that is not a node presents a token of role `client`
//! and gets `spiffe://<td>/client/<name>`, without membership. Nothing is stored: a client
//! is not listed, scheduled or watched, and its certificate simply expires.

use std::time::{Duration, SystemTime};

use actormesh::client::{client_identity, ClientError, InvalidClientName};
use actormesh::protocol::ClientCertRequest;
use actormesh_transport::SpiffeId;

use super::ClusterCore;
use crate::tokens::{self, TokenRole};

/// Why a client certificate was refused (sent to the client as text).
#[derive(Debug, thiserror::Error)]
pub enum ClientRefusal {
    /// The token is unknown, expired, revoked, of role agent, or its secret is wrong.
    #[error(transparent)]
    Token(#[from] tokens::TokenRefusal),
    /// The name is not a valid client name.
    #[error(transparent)]
    InvalidName(#[from] InvalidClientName),
    /// The name makes no valid identity in the trust domain.
    #[error("{0}")]
    Identity(String),
}

/// A client certificate the core allows; the driver signs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAdmission {
    /// The identity the certificate is for.
    pub identity: SpiffeId,
    /// Its lifetime (that of agent certificates).
    pub cert_ttl: Duration,
}

impl ClusterCore {
    /// Checks a client certificate request at `wall`: a valid token of role `client` and a
    /// valid name.
    pub fn check_client(
        &self,
        req: &ClientCertRequest,
        wall: SystemTime,
    ) -> Result<ClientAdmission, ClientRefusal> {
        self.check_token(&req.token_id, &req.token_secret, TokenRole::Client, wall)?;
        let identity = client_identity(&self.trust_domain, &req.name).map_err(|e| match e {
            ClientError::InvalidName(n) => ClientRefusal::InvalidName(n),
            other => ClientRefusal::Identity(other.to_string()),
        })?;
        Ok(ClientAdmission {
            identity,
            cert_ttl: self.agent_cert_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use actormesh::protocol::JoinRequest;

    use super::*;
    use crate::core::tests::core_over;
    use crate::core::JoinRefusal;
    use crate::tokens::JoinToken;

    fn wall() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)
    }

    fn core_with(role: TokenRole) -> (ClusterCore, JoinToken) {
        let mut core = core_over(Vec::new(), Vec::new(), Instant::now());
        let token = JoinToken::generate("fp").unwrap();
        core.create_token(token.clone(), role, Duration::from_secs(600), wall())
            .reply
            .unwrap();
        (core, token)
    }

    fn client_request(token: &JoinToken, name: &str) -> ClientCertRequest {
        ClientCertRequest {
            token_id: token.id.clone(),
            token_secret: token.secret.clone(),
            name: name.into(),
            csr_pem: String::new(),
        }
    }

    #[test]
    fn a_client_token_gives_a_client_identity_and_no_member() {
        let (core, token) = core_with(TokenRole::Client);
        let admission = core
            .check_client(&client_request(&token, "cli"), wall())
            .unwrap();
        assert_eq!(
            admission.identity.as_str(),
            "spiffe://test.local/client/cli"
        );
        assert_eq!(admission.cert_ttl, Duration::from_secs(3600));
        assert!(core.membership.all().next().is_none());
    }

    #[test]
    fn a_client_token_cannot_join_as_an_agent() {
        let (core, token) = core_with(TokenRole::Client);
        let join = JoinRequest {
            token_id: token.id.clone(),
            token_secret: token.secret.clone(),
            name: "n1".into(),
            csr_pem: String::new(),
        };
        let e = core.check_join(&join, || None, wall()).unwrap_err();
        assert!(
            matches!(
                e,
                JoinRefusal::Token(tokens::TokenRefusal::WrongRole {
                    role: TokenRole::Client,
                    expected: TokenRole::Agent,
                    ..
                })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("needs a token of role agent"), "{e}");
    }

    #[test]
    fn an_agent_token_cannot_issue_a_client_certificate() {
        let (core, token) = core_with(TokenRole::Agent);
        let e = core
            .check_client(&client_request(&token, "cli"), wall())
            .unwrap_err();
        assert!(
            e.to_string().contains("needs a token of role client"),
            "{e}"
        );
    }

    #[test]
    fn bad_names_unknown_and_expired_tokens_are_refused_by_name() {
        let (core, token) = core_with(TokenRole::Client);
        let e = core
            .check_client(&client_request(&token, "Not/ok"), wall())
            .unwrap_err();
        assert!(matches!(e, ClientRefusal::InvalidName(_)), "{e}");
        assert!(e.to_string().contains("client name \"Not/ok\""), "{e}");
        let mut unknown = token.clone();
        unknown.id = "zzzzzz".into();
        let e = core
            .check_client(&client_request(&unknown, "cli"), wall())
            .unwrap_err();
        assert!(e.to_string().contains("unknown to this master"), "{e}");
        let later = wall() + Duration::from_secs(601);
        let e = core
            .check_client(&client_request(&token, "cli"), later)
            .unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
    }
}
