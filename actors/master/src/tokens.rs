//! Join tokens as the master keeps them: a hash of the secret, a role, an expiry. The token
//! format itself is [`actormesh::token`], which joining nodes parse too.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use actormesh::token::sha256_hex;
pub use actormesh::token::{random_string, random_u64, JoinToken, TokenFormatError};

/// What a token may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenRole {
    /// Join as an agent.
    Agent,
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

    /// Checks a presented token against this record at `now`.
    pub fn check(&self, presented: &JoinToken, now: SystemTime) -> Result<(), TokenRefusal> {
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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
        assert_eq!(rec.check(&t, now), Ok(()));
        let mut wrong = t.clone();
        wrong.secret = "0000000000000000".into();
        assert!(matches!(
            rec.check(&wrong, now),
            Err(TokenRefusal::WrongSecret(_))
        ));
        let later = now + Duration::from_secs(120);
        assert!(matches!(
            rec.check(&t, later),
            Err(TokenRefusal::Expired { .. })
        ));
        rec.revoked = true;
        assert!(matches!(rec.check(&t, now), Err(TokenRefusal::Revoked(_))));
    }
}
