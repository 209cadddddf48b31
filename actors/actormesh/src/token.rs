//! Join tokens. A token names itself, carries a secret and pins the cluster CA's
//! fingerprint, so a joining node can check that it talks to the right master before it
//! sends anything (as `kubeadm join` does with its CA hash):
//!
//! ```text
//! am1.<id: 6 lowercase letters or digits>.<secret: 16 of them>.<CA SHA-256: 64 hex digits>
//! ```
//!
//! The master stores only a hash of the secret.

use std::fmt;

use ring::rand::SecureRandom;

const PREFIX: &str = "am1";
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A join token as handed to an operator.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Public part: names the token in lists and logs.
    pub id: String,
    /// Secret part: proves the holder was given the token.
    pub secret: String,
    /// SHA-256 of the cluster CA certificate, lowercase hex.
    pub ca_fingerprint: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}, secret hidden)", self.id)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.{}.{}",
            self.id, self.secret, self.ca_fingerprint
        )
    }
}

/// A token string did not parse; names the part that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid join token: {0} (expected am1.<6 letters/digits>.<16 letters/digits>.<64 hex digits>, as printed by `actormesh token create`)")]
pub struct TokenFormatError(pub String);

/// A random number from the system's secure generator.
pub fn random_u64() -> Result<u64, ring::error::Unspecified> {
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// `len` random lowercase letters and digits from the system's secure generator.
pub fn random_string(len: usize) -> Result<String, ring::error::Unspecified> {
    let rng = ring::rand::SystemRandom::new();
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes)?;
    // 252 = 7 * 36: rejection sampling keeps every character equally likely.
    let mut out = String::with_capacity(len);
    let mut fresh = [0u8; 1];
    for b in bytes {
        let mut b = b;
        while b >= 252 {
            rng.fill(&mut fresh)?;
            b = fresh[0];
        }
        out.push(ALPHABET[(b % 36) as usize] as char);
    }
    Ok(out)
}

fn lower_alnum(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl JoinToken {
    /// A fresh token pinning `ca_fingerprint`.
    pub fn generate(ca_fingerprint: &str) -> Result<Self, ring::error::Unspecified> {
        Ok(Self {
            id: random_string(6)?,
            secret: random_string(16)?,
            ca_fingerprint: ca_fingerprint.to_string(),
        })
    }

    /// SHA-256 of the secret, lowercase hex: what the master keeps.
    pub fn secret_hash(&self) -> String {
        sha256_hex(&self.secret)
    }
}

/// SHA-256 of `s`, lowercase hex: what the master keeps of a secret.
pub fn sha256_hex(s: &str) -> String {
    sha256_hex_bytes(s.as_bytes())
}

/// The SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex_bytes(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl std::str::FromStr for JoinToken {
    type Err = TokenFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |what: &str| TokenFormatError(what.to_string());
        let parts: Vec<&str> = s.trim().split('.').collect();
        if parts.len() != 4 {
            return Err(bad(&format!(
                "it has {} dot-separated parts, not 4",
                parts.len()
            )));
        }
        if parts[0] != PREFIX {
            return Err(bad(&format!("it starts with {:?}, not \"am1\"", parts[0])));
        }
        if !lower_alnum(parts[1], 6) {
            return Err(bad("the id is not 6 lowercase letters or digits"));
        }
        if !lower_alnum(parts[2], 16) {
            return Err(bad("the secret is not 16 lowercase letters or digits"));
        }
        if parts[3].len() != 64
            || !parts[3]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(bad("the CA fingerprint is not 64 lowercase hex digits"));
        }
        Ok(Self {
            id: parts[1].to_string(),
            secret: parts[2].to_string(),
            ca_fingerprint: parts[3].to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    #[test]
    fn round_trips_and_hides_the_secret_in_debug() {
        let t = JoinToken::generate(FP).unwrap();
        let s = t.to_string();
        assert!(s.starts_with("am1."));
        assert_eq!(s.parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn parse_errors_say_which_part_is_wrong() {
        let cases: Vec<(String, &str)> = vec![
            ("am1.abc".into(), "parts"),
            (format!("xx1.abcdef.0123456789abcdef.{FP}"), "starts with"),
            (format!("am1.ABCDEF.0123456789abcdef.{FP}"), "id"),
            (format!("am1.abcdef.short.{FP}"), "secret"),
            ("am1.abcdef.0123456789abcdef.xyz".into(), "fingerprint"),
        ];
        for (input, says) in cases {
            let e = input.parse::<JoinToken>().unwrap_err();
            assert!(e.to_string().contains(says), "{input}: {e}");
            assert!(e.to_string().contains("token create"), "{e}");
        }
    }
}
