//! SPIFFE identities: `spiffe://<trust-domain>/<path>`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A SPIFFE ID such as `spiffe://prod.example/node/n1` or
/// `spiffe://prod.example/ns/shop/sa/ratings`.
///
/// Construction validates the form, so a `SpiffeId` in hand is always well formed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    uri: String,
    td_end: usize,
}

/// A string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.input, .reason, *.trust_domain_only))]
pub struct IdentityError {
    /// The string that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
    /// Whether a bare trust domain (not a whole SPIFFE ID) was expected.
    pub trust_domain_only: bool,
}

fn describe(input: &str, reason: &str, trust_domain_only: bool) -> String {
    if trust_domain_only {
        format!("invalid trust domain {input:?}: {reason} (expected e.g. cluster.local)")
    } else {
        format!(
            "invalid SPIFFE ID {input:?}: {reason} (expected spiffe://<trust-domain>/<path>, e.g. spiffe://cluster.local/node/n1)"
        )
    }
}

const SCHEME: &str = "spiffe://";

fn valid_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("the trust domain is empty");
    }
    if td.len() > 255 {
        return Err("the trust domain is longer than 255 characters");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err("the trust domain may only hold lowercase letters, digits, '-', '.' and '_'");
    }
    Ok(())
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(input: &str) -> Result<Self, IdentityError> {
        let err = |reason| IdentityError {
            input: input.to_string(),
            reason,
            trust_domain_only: false,
        };
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| err("it does not start with spiffe://"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        valid_trust_domain(td).map_err(err)?;
        if path.is_empty() || path == "/" {
            return Err(err("the path is empty"));
        }
        for segment in path[1..].split('/') {
            if segment.is_empty() {
                return Err(err("the path has an empty segment"));
            }
            if segment == "." || segment == ".." {
                return Err(err("the path has a '.' or '..' segment"));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(err(
                    "path segments may only hold letters, digits, '-', '.' and '_'",
                ));
            }
        }
        Ok(Self {
            uri: input.to_string(),
            td_end: SCHEME.len() + td.len(),
        })
    }

    /// `spiffe://<trust_domain>/node/<id>`: the identity of a node.
    pub fn node(trust_domain: &str, id: &str) -> Result<Self, IdentityError> {
        Self::parse(&format!("{SCHEME}{trust_domain}/node/{id}"))
    }

    /// `spiffe://<trust_domain>/master/<name>`: one master among several on one ZooKeeper
    /// store. A lone master is `node/master`.
    pub fn master(trust_domain: &str, name: &str) -> Result<Self, IdentityError> {
        Self::parse(&format!("{SCHEME}{trust_domain}/master/{name}"))
    }

    /// Whether this names a master: `node/master`, or `master/<name>`. Only the cluster
    /// CA issues certificates, and it names each one itself (agents `node/<name>`, never
    /// `node/master`; clients `client/<name>`), so only a master holds one of these.
    pub fn is_master(&self) -> bool {
        let p = self.path();
        p == "/node/master"
            || p.strip_prefix("/master/")
                .is_some_and(|n| !n.is_empty() && !n.contains('/'))
    }

    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service>`: the identity of a service.
    pub fn service(
        trust_domain: &str,
        namespace: &str,
        service: &str,
    ) -> Result<Self, IdentityError> {
        Self::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service}"
        ))
    }

    /// The trust domain, e.g. `prod.example`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.td_end]
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.td_end..]
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

/// Checks a trust domain name on its own (as given to `actormesh ca init`).
pub fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    valid_trust_domain(td).map_err(|reason| IdentityError {
        input: td.to_string(),
        reason,
        trust_domain_only: true,
    })
}

impl TryFrom<String> for SpiffeId {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.uri
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_node_master_and_master_names_are_masters() {
        let is = |s: &str| SpiffeId::parse(s).unwrap().is_master();
        assert!(is("spiffe://td/node/master"));
        assert!(is("spiffe://td/master/m1"));
        assert_eq!(
            SpiffeId::master("td", "m2").unwrap().as_str(),
            "spiffe://td/master/m2"
        );
        assert!(!is("spiffe://td/node/master-2"));
        assert!(!is("spiffe://td/node/m1"));
        assert!(!is("spiffe://td/master/m1/x"));
        assert!(!is("spiffe://td/client/master"));
        assert!(!is("spiffe://td/ns/master/sa/m1"));
    }

    #[test]
    fn parses_parts() {
        let id = SpiffeId::parse("spiffe://prod.example/ns/shop/sa/ratings").unwrap();
        assert_eq!(id.trust_domain(), "prod.example");
        assert_eq!(id.path(), "/ns/shop/sa/ratings");
        assert_eq!(
            SpiffeId::node("td", "n1").unwrap().as_str(),
            "spiffe://td/node/n1"
        );
    }

    #[test]
    fn rejects_bad_forms_with_reason() {
        for (bad, why) in [
            ("http://x/y", "spiffe://"),
            ("spiffe://", "empty"),
            ("spiffe://Upper/x", "lowercase"),
            ("spiffe://td", "path is empty"),
            ("spiffe://td/a//b", "empty segment"),
            ("spiffe://td/a/../b", "'..'"),
            ("spiffe://td/a?b", "letters"),
        ] {
            let e = SpiffeId::parse(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }
}
