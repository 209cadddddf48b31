//! Join tokens as the master keeps them: a hash of the secret, a role, an expiry. The token
//! format itself is [`actormesh::token`], which joining nodes parse too.
//!
//! The role lives in the master's record, not in the token string: a token says what it
//! allows only to the master that made it, so a holder cannot edit it into another role.
//! Records are stored with [`actormesh::transport::codec`], which writes an enum variant by
//! its position: [`TokenRole::Agent`] stays first, so records stored before client tokens
//! existed still read as agent tokens.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use actormesh::token::sha256_hex;
pub use actormesh::token::{random_string, random_u64, JoinToken, TokenFormatError};

/// What a token may be used for. New roles go at the end (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenRole {
    /// Join as an agent: a node identity and membership.
    Agent,
    /// Get a client certificate (`spiffe://<td>/client/<name>`), without membership.
    Client,
}

impl TokenRole {
    /// Every role, in the order their names are listed in messages.
    pub const ALL: [TokenRole; 2] = [TokenRole::Agent, TokenRole::Client];

    /// The role's name, as `actormesh token create --role` and the API take it.
    pub fn name(self) -> &'static str {
        match self {
            TokenRole::Agent => "agent",
            TokenRole::Client => "client",
        }
    }

    /// What a token of this role is for, in words for a refusal.
    fn purpose(self) -> &'static str {
        match self {
            TokenRole::Agent => "joining as an agent",
            TokenRole::Client => "issuing a client certificate",
        }
    }
}

impl std::fmt::Display for TokenRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A role name that is not one of [`TokenRole::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown token role {0:?}: expected \"agent\" or \"client\"")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for TokenRole {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TokenRole::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// A token as the master stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token id.
    pub id: String,
    /// SHA-256 of the secret.
    pub secret_hash: String,
    /// What it allows.
    pub role: TokenRole,
    /// When it stops working.
    #[serde(with = "crate::timestamp")]
    pub expires: SystemTime,
    /// Revoked by an operator, or because the node that used it was removed.
    pub revoked: bool,
}

/// Why a presented token was refused. The text is what the joining node is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No token with that id.
    #[error("join token {0} is unknown to this master")]
    Unknown(String),
    /// The secret does not match.
    #[error("join token {0} has a wrong secret")]
    WrongSecret(String),
    /// Past its expiry.
    #[error("join token {id} expired {ago:?} ago")]
    Expired {
        /// The token id.
        id: String,
        /// How long ago.
        ago: Duration,
    },
    /// Revoked.
    #[error("join token {0} has been revoked")]
    Revoked(String),
    /// A token of another role: agent tokens join agents, client tokens issue client
    /// certificates, neither does the other's job.
    #[error("join token {id} is a{} {role} token; {} needs a token of role {expected} (actormesh token create --role {expected})", if matches!(.role, TokenRole::Agent) { "n" } else { "" }, .expected.purpose())]
    WrongRole {
        /// The token id.
        id: String,
        /// The role the token has.
        role: TokenRole,
        /// The role this use needs.
        expected: TokenRole,
    },
}

impl TokenRecord {
    /// A record for `token`, valid for `ttl` from `now`.
    pub fn new(token: &JoinToken, role: TokenRole, now: SystemTime, ttl: Duration) -> Self {
        Self {
            id: token.id.clone(),
            secret_hash: token.secret_hash(),
            role,
            // An absurd lifetime gives an already expired token, never a panic.
            expires: now.checked_add(ttl).unwrap_or(now),
            revoked: false,
        }
    }

    /// Checks a presented token against this record at `now`, for a use that needs role
    /// `expected`. The secret is checked first, so a guesser learns nothing of the role.
    pub fn check(
        &self,
        presented: &JoinToken,
        expected: TokenRole,
        now: SystemTime,
    ) -> Result<(), TokenRefusal> {
        if !constant_time_eq(
            sha256_hex(&presented.secret).as_bytes(),
            self.secret_hash.as_bytes(),
        ) {
            return Err(TokenRefusal::WrongSecret(self.id.clone()));
        }
        if self.revoked {
            return Err(TokenRefusal::Revoked(self.id.clone()));
        }
        if let Ok(ago) = now.duration_since(self.expires) {
            return Err(TokenRefusal::Expired {
                id: self.id.clone(),
                ago,
            });
        }
        if self.role != expected {
            return Err(TokenRefusal::WrongRole {
                id: self.id.clone(),
                role: self.role,
                expected,
            });
        }
        Ok(())
    }
}

/// Removes the tokens of `book` that expired before `now`; returns their ids. An expired
/// token can join nothing, so the master need not remember it.
pub fn prune_expired(
    book: &mut std::collections::BTreeMap<String, TokenRecord>,
    now: SystemTime,
) -> Vec<String> {
    let expired: Vec<String> = book
        .values()
        .filter(|t| t.expires <= now)
        .map(|t| t.id.clone())
        .collect();
    for id in &expired {
        book.remove(id);
    }
    expired
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn expired_tokens_are_forgotten_so_the_book_stays_bounded() {
        let start = SystemTime::now();
        let mut book = std::collections::BTreeMap::new();
        // One token an hour for a year, each valid for a day.
        for hour in 0..24 * 365u64 {
            let made = start + Duration::from_secs(hour * 3600);
            let t = JoinToken::generate(FP).unwrap();
            let rec = TokenRecord::new(&t, TokenRole::Agent, made, Duration::from_secs(86400));
            book.insert(rec.id.clone(), rec);
            let gone = prune_expired(&mut book, made);
            assert!(gone.iter().all(|id| !book.contains_key(id)));
            assert!(
                book.len() <= 25,
                "{} tokens kept at hour {hour}",
                book.len()
            );
        }
        // Those still valid stay.
        let end = start + Duration::from_secs((24 * 365 - 1) * 3600);
        assert!(book.values().all(|t| t.expires > end));
        assert_eq!(book.len(), 24);
    }

    #[test]
    fn records_refuse_wrong_expired_and_revoked_tokens() {
        let now = SystemTime::now();
        let t = JoinToken::generate(FP).unwrap();
        let mut rec = TokenRecord::new(&t, TokenRole::Agent, now, Duration::from_secs(60));
        assert_eq!(rec.check(&t, TokenRole::Agent, now), Ok(()));
        let mut wrong = t.clone();
        wrong.secret = "0000000000000000".into();
        assert!(matches!(
            rec.check(&wrong, TokenRole::Agent, now),
            Err(TokenRefusal::WrongSecret(_))
        ));
        let later = now + Duration::from_secs(120);
        assert!(matches!(
            rec.check(&t, TokenRole::Agent, later),
            Err(TokenRefusal::Expired { .. })
        ));
        rec.revoked = true;
        assert!(matches!(
            rec.check(&t, TokenRole::Agent, now),
            Err(TokenRefusal::Revoked(_))
        ));
    }

    #[test]
    fn a_token_serves_only_its_own_role_and_the_refusal_names_the_role_expected() {
        let now = SystemTime::now();
        let t = JoinToken::generate(FP).unwrap();
        let agent = TokenRecord::new(&t, TokenRole::Agent, now, Duration::from_secs(60));
        let client = TokenRecord::new(&t, TokenRole::Client, now, Duration::from_secs(60));
        assert_eq!(client.check(&t, TokenRole::Client, now), Ok(()));
        let e = client.check(&t, TokenRole::Agent, now).unwrap_err();
        assert!(matches!(e, TokenRefusal::WrongRole { .. }));
        assert_eq!(
            e.to_string(),
            format!("join token {} is a client token; joining as an agent needs a token of role agent (actormesh token create --role agent)", t.id)
        );
        let e = agent.check(&t, TokenRole::Client, now).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("join token {} is an agent token; issuing a client certificate needs a token of role client (actormesh token create --role client)", t.id)
        );
        // Without the secret, the role is not told.
        let mut wrong = t.clone();
        wrong.secret = "0000000000000000".into();
        assert!(matches!(
            agent.check(&wrong, TokenRole::Client, now),
            Err(TokenRefusal::WrongSecret(_))
        ));
    }

    #[test]
    fn role_names_parse_back_and_unknown_ones_are_named() {
        for role in TokenRole::ALL {
            assert_eq!(role.name().parse::<TokenRole>(), Ok(role));
        }
        let e = "admin".parse::<TokenRole>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown token role \"admin\": expected \"agent\" or \"client\""
        );
    }

    /// A record as the master stored it before tokens had a role other than agent.
    #[derive(Serialize)]
    struct RecordBeforeClientTokens {
        id: String,
        secret_hash: String,
        role: OnlyAgent,
        expires: SystemTime,
        revoked: bool,
    }

    #[derive(Serialize)]
    enum OnlyAgent {
        Agent,
    }

    #[test]
    fn records_stored_before_client_tokens_still_read_as_agent_tokens() {
        use actormesh::transport::codec;
        let now = SystemTime::now();
        let t = JoinToken::generate(FP).unwrap();
        let old = RecordBeforeClientTokens {
            id: t.id.clone(),
            secret_hash: t.secret_hash(),
            role: OnlyAgent::Agent,
            expires: now + Duration::from_secs(60),
            revoked: false,
        };
        let bytes = codec::encode(&old).unwrap();
        let read: TokenRecord = codec::decode(&bytes).unwrap();
        assert_eq!(read.role, TokenRole::Agent);
        assert_eq!(read.check(&t, TokenRole::Agent, now), Ok(()));
        // And both roles survive the store.
        for role in TokenRole::ALL {
            let rec = TokenRecord::new(&t, role, now, Duration::from_secs(60));
            let back: TokenRecord = codec::decode(&codec::encode(&rec).unwrap()).unwrap();
            assert_eq!(back, rec);
        }
    }
}
