//! Client certificates: a program that is not a node presents a token of role `client`
//! and gets `spiffe://<td>/client/<name>`, without membership. A client is not listed,
//! scheduled or watched, and its certificate simply expires, unless an operator revokes
//! its identity (`actormesh cert revoke --client <name>`): then every node refuses it
//! within one push, and no new certificate is issued for the name, until every
//! certificate it could hold has expired. Revocations are kept in the Config table under
//! `revoked/<identity>` (the end, in ms since the Unix epoch).

use std::time::{Duration, SystemTime};

use actormesh::client::{client_identity, ClientError, InvalidClientName};
use actormesh::protocol::ClientCertRequest;
use actormesh_transport::SpiffeId;

use super::{ClusterCore, Effect, OperatorError, Step};
use crate::state::{Change, Table};
use crate::tokens::{self, TokenRole};

/// Config-table prefix of revoked client identities.
pub const REVOKED_PREFIX: &str = "revoked/";

/// A revoked client identity, as `cert revoke` answers and `GET /v1/revocations` lists.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientRevocation {
    /// The identity.
    pub identity: String,
    /// Refused until then, in ms since the Unix epoch: when the last certificate it could
    /// hold has expired, plus the clock skew allowed.
    pub until_ms: u64,
}

/// The revocations the Config table holds, by identity; rows it cannot read are errors.
pub(crate) fn load_revocations<'a>(
    rows: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<std::collections::BTreeMap<String, u64>, String> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in rows {
        let Some(id) = k.strip_prefix(REVOKED_PREFIX) else {
            continue;
        };
        let until = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("stored {k}: not a time in ms"))?;
        out.insert(id.to_string(), until);
    }
    Ok(out)
}

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
    /// The identity is revoked; no certificate is issued for it until the revocation ends.
    #[error("client identity {identity} is revoked until {until_ms} ms since the epoch; no certificate is issued for it before then")]
    Revoked {
        /// The identity.
        identity: String,
        /// The end of the revocation.
        until_ms: u64,
    },
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
        if let Some(&until_ms) = self.revoked_clients.get(identity.as_str()) {
            if until_ms > super::services::ms_since_epoch(wall) {
                return Err(ClientRefusal::Revoked {
                    identity: identity.to_string(),
                    until_ms,
                });
            }
        }
        Ok(ClientAdmission {
            identity,
            cert_ttl: self.agent_cert_ttl,
        })
    }

    /// Revokes client `name` (a name or its SPIFFE id) at `wall`: every node refuses it
    /// from the next push on, until every certificate it could hold has expired (the
    /// client certificate lifetime from now, plus the clock skew allowed). Answered once
    /// stored.
    pub fn revoke_client(
        &mut self,
        name: &str,
        wall: SystemTime,
    ) -> Step<Result<ClientRevocation, OperatorError>> {
        self.step(|core| {
            let prefix = format!("spiffe://{}/client/", core.trust_domain);
            let bare = name.strip_prefix(&prefix).unwrap_or(name);
            let identity = client_identity(&core.trust_domain, bare).map_err(|e| {
                OperatorError::Invalid(format!(
                    "cannot revoke {name:?}: {e} (expected a client name or {prefix}<name>)"
                ))
            })?;
            let until = wall + core.agent_cert_ttl + actormesh_transport::tls::REVOCATION_SKEW;
            let until_ms = super::services::ms_since_epoch(until);
            let until_ms = core
                .revoked_clients
                .get(identity.as_str())
                .map_or(until_ms, |&was| was.max(until_ms));
            core.revoked_clients.insert(identity.to_string(), until_ms);
            core.persist_acknowledged(vec![Change::put(
                Table::Config,
                format!("{REVOKED_PREFIX}{identity}"),
                until_ms.to_string().into_bytes(),
            )]);
            // The master's own node refuses it at once; the others with the next push.
            core.out.push(Effect::Revoke {
                identity: identity.clone(),
                until: Some(until),
            });
            tracing::warn!(%identity, until_ms, "client identity revoked");
            Ok(ClientRevocation {
                identity: identity.to_string(),
                until_ms,
            })
        })
    }

    /// The client identities revoked now.
    pub fn client_revocations(&self) -> Vec<ClientRevocation> {
        self.revoked_clients
            .iter()
            .filter(|(_, &until)| until > self.wall_ms)
            .map(|(identity, &until_ms)| ClientRevocation {
                identity: identity.clone(),
                until_ms,
            })
            .collect()
    }

    /// Forgets revocations that ended before `wall`; the store changes to make.
    pub(super) fn prune_client_revocations(&mut self, wall: SystemTime) -> Vec<Change> {
        let now = super::services::ms_since_epoch(wall);
        let ended: Vec<String> = self
            .revoked_clients
            .iter()
            .filter(|(_, &until)| until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        ended
            .into_iter()
            .map(|id| {
                self.revoked_clients.remove(&id);
                Change::delete(Table::Config, format!("{REVOKED_PREFIX}{id}"))
            })
            .collect()
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

    #[test]
    fn a_revoked_client_gets_no_certificate_is_pushed_as_revoked_and_is_forgotten_after() {
        let (mut core, token) = core_with(TokenRole::Client);
        let step = core.revoke_client("cli", wall());
        let r = step.reply.unwrap();
        assert_eq!(r.identity, "spiffe://test.local/client/cli");
        // Its certificates (an hour, as agents') plus the skew.
        let until = wall() + Duration::from_secs(3600) + actormesh_transport::tls::REVOCATION_SKEW;
        assert_eq!(r.until_ms, super::super::services::ms_since_epoch(until));
        assert!(step.effects.iter().any(
            |e| matches!(e, Effect::Revoke { identity, .. } if identity.as_str() == r.identity)
        ));
        let e = core
            .check_client(&client_request(&token, "cli"), wall())
            .unwrap_err();
        assert!(matches!(e, ClientRefusal::Revoked { .. }), "{e}");
        // Another name is not affected; the SPIFFE id form revokes the same identity.
        core.check_client(&client_request(&token, "other"), wall())
            .unwrap();
        let again = core
            .revoke_client("spiffe://test.local/client/cli", wall())
            .reply
            .unwrap();
        assert_eq!(again.identity, r.identity);
        // Every proxy gets it with the registry's revocations.
        core.services_tick(wall());
        let (_, revoked) = core.registry_now();
        assert!(revoked
            .iter()
            .any(|x| x.id == r.identity && x.until_ms == r.until_ms));
        // Once ended it is forgotten, and the name gets a certificate again.
        let after = until + Duration::from_secs(1);
        let changes = core.prune_client_revocations(after);
        assert_eq!(changes.len(), 1);
        assert!(core
            .check_client(
                &client_request(&token, "cli"),
                wall() + Duration::from_secs(1)
            )
            .is_ok());
        let bad = core.revoke_client("Not/ok", wall()).reply.unwrap_err();
        assert!(
            bad.to_string()
                .contains("expected a client name or spiffe://test.local/client/<name>"),
            "{bad}"
        );
    }

    #[test]
    fn stored_revocations_load_and_a_bad_row_is_an_error() {
        let rows = [
            ("revoked/spiffe://t/client/a", b"123".as_slice()),
            ("deployment/x", b"{}".as_slice()),
        ];
        let loaded = load_revocations(rows).unwrap();
        assert_eq!(loaded.get("spiffe://t/client/a"), Some(&123));
        assert_eq!(loaded.len(), 1);
        assert!(load_revocations([("revoked/x", b"soon".as_slice())]).is_err());
    }
}
