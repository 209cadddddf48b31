//! `kind: AuthorizationPolicy` as written and as pushed (Istio's AuthorizationPolicy with
//! actormesh's names): a scope (one service, or every service of the policy's namespace),
//! an action (`ALLOW`, `DENY`, `AUDIT`) and rules of *from* (who calls), *to* (what is
//! called) and *when* (call metadata). [`AuthorizationPolicySpec::validate`] holds every
//! rule on the values; each error names the field as a dotted path from `spec`.
//!
//! ```yaml
//! kind: AuthorizationPolicy
//! name: reviews-from-productpage
//! namespace: shop
//! spec:
//!   service: reviews            # absent: every service of namespace shop
//!   action: ALLOW
//!   rules:
//!     - from:
//!         - source: { principals: ["*/ns/shop/sa/productpage"] }
//!       to:
//!         - operation: { messages: ["shop.reviews.*"] }
//!       when:
//!         - { key: end-user, values: ["jason", "admin-*"] }
//! ```
//!
//! Patterns are globs: `*` matches any run of characters, `?` one character. Principals are
//! SPIFFE ids, written with or without `spiffe://`.

use serde::{Deserialize, Serialize};

use crate::mesh::policy::spec::FieldError;
use crate::mesh::registry::ServiceName;

/// What a policy does when one of its rules matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthzAction {
    /// The call is allowed if a rule matches; once any ALLOW policy applies to a service,
    /// a call to it must match one.
    #[default]
    #[serde(rename = "ALLOW", alias = "allow")]
    Allow,
    /// The call is denied if a rule matches, whatever ALLOW policies say.
    #[serde(rename = "DENY", alias = "deny")]
    Deny,
    /// A matching call is logged as audited; the decision is not changed.
    #[serde(rename = "AUDIT", alias = "audit")]
    Audit,
}

impl AuthzAction {
    /// As written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzAction::Allow => "ALLOW",
            AuthzAction::Deny => "DENY",
            AuthzAction::Audit => "AUDIT",
        }
    }
}

/// Who calls. Every list given must match (an empty list says nothing); a `not_` list
/// matches when none of its patterns does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The caller's principal: its proven workload's `spiffe://<td>/ns/<ns>/sa/<service>`,
    /// else its node's (`.../node/<id>`) or client's (`.../client/<name>`) identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Principals that do not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// The namespace of the caller's proven workload (a node or client caller has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces that do not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// The calling node: its SPIFFE id, or its bare id (`agent-1`) when the pattern has no
    /// `/`. A call from this node has this node's identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Nodes that do not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_nodes: Vec<String>,
}

/// What is called. As for [`Source`], every list given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// Services, `name` (in the policy's namespace) or `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Services that do not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_services: Vec<String>,
    /// Message names (`shop.reviews.Get/v1`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
    /// Message names that do not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_messages: Vec<String>,
}

/// One entry of `from`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    /// Who calls.
    pub source: Source,
}

/// One entry of `to`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    /// What is called.
    pub operation: Operation,
}

/// A condition on the call's metadata entry `key`: its value matches one of `values` (if
/// given) and none of `not_values`. A call without the entry matches no `values` and
/// every `not_values`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The metadata key.
    pub key: String,
    /// Values that match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Values that do not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// One rule: it matches a call when one entry of `from` does (or `from` is empty), one of
/// `to` does (or `to` is empty) and every condition of `when` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzRule {
    /// Who may be calling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    /// What may be called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
    /// Conditions on the call's metadata.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// An AuthorizationPolicy's spec. A policy without rules matches nothing: as the only
/// ALLOW policy of a service it allows nothing (`rules: [{}]` allows everything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// The one service it applies to, in the policy's namespace; absent: every service of
    /// that namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// What a matching rule does (default `ALLOW`).
    #[serde(default)]
    pub action: AuthzAction,
    /// The rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
}

/// The longest pattern or key, in bytes.
pub const PATTERN_LIMIT: usize = 255;
/// The most rules in one policy.
pub const RULES_LIMIT: usize = 1024;
/// The most entries in one list (`from`, `to`, `when`, or a list of patterns).
pub const LIST_LIMIT: usize = 256;

fn refuse(field: String, problem: impl Into<String>, expected: &str) -> FieldError {
    FieldError {
        field,
        problem: problem.into(),
        expected: expected.to_string(),
    }
}

fn list_len<T>(field: &str, list: &[T]) -> Result<(), FieldError> {
    if list.len() > LIST_LIMIT {
        return Err(refuse(
            field.to_string(),
            format!("{} entries", list.len()),
            &format!("at most {LIST_LIMIT}"),
        ));
    }
    Ok(())
}

fn patterns(field: &str, list: &[String]) -> Result<(), FieldError> {
    list_len(field, list)?;
    for (i, p) in list.iter().enumerate() {
        if p.is_empty() || p.len() > PATTERN_LIMIT {
            return Err(refuse(
                format!("{field}[{i}]"),
                format!("{} bytes", p.len()),
                &format!("a glob of 1 to {PATTERN_LIMIT} bytes"),
            ));
        }
    }
    Ok(())
}

/// Service patterns: a name or `namespace/name`, each part of name characters, `*` or `?`.
fn service_patterns(field: &str, list: &[String]) -> Result<(), FieldError> {
    patterns(field, list)?;
    for (i, p) in list.iter().enumerate() {
        let ok = p.split('/').count() <= 2
            && p.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"-*?".contains(&b)
                    })
            });
        if !ok {
            return Err(refuse(
                format!("{field}[{i}]"),
                format!("{p:?} is not a service name or glob"),
                "`name` or `namespace/name`, of a-z, 0-9, '-', with `*` or `?` as globs",
            ));
        }
    }
    Ok(())
}

impl Source {
    fn is_empty(&self) -> bool {
        self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.nodes.is_empty()
            && self.not_nodes.is_empty()
    }
}

impl Operation {
    fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.not_services.is_empty()
            && self.messages.is_empty()
            && self.not_messages.is_empty()
    }
}

impl AuthorizationPolicySpec {
    /// Checks every value; the error names the field and what was expected.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(s) = &self.service {
            ServiceName::parse(s, "default")
                .map_err(|e| refuse("service".into(), e.to_string(), "a service name"))?;
        }
        if self.rules.len() > RULES_LIMIT {
            return Err(refuse(
                "rules".into(),
                format!("{} rules", self.rules.len()),
                &format!("at most {RULES_LIMIT}"),
            ));
        }
        for (r, rule) in self.rules.iter().enumerate() {
            let at = format!("rules[{r}]");
            list_len(&format!("{at}.from"), &rule.from)?;
            list_len(&format!("{at}.to"), &rule.to)?;
            list_len(&format!("{at}.when"), &rule.when)?;
            for (i, f) in rule.from.iter().enumerate() {
                let at = format!("{at}.from[{i}].source");
                let s = &f.source;
                if s.is_empty() {
                    return Err(refuse(
                        at,
                        "names nothing",
                        "at least one of principals, not_principals, namespaces, not_namespaces, nodes, not_nodes",
                    ));
                }
                patterns(&format!("{at}.principals"), &s.principals)?;
                patterns(&format!("{at}.not_principals"), &s.not_principals)?;
                patterns(&format!("{at}.namespaces"), &s.namespaces)?;
                patterns(&format!("{at}.not_namespaces"), &s.not_namespaces)?;
                patterns(&format!("{at}.nodes"), &s.nodes)?;
                patterns(&format!("{at}.not_nodes"), &s.not_nodes)?;
            }
            for (i, t) in rule.to.iter().enumerate() {
                let at = format!("{at}.to[{i}].operation");
                let o = &t.operation;
                if o.is_empty() {
                    return Err(refuse(
                        at,
                        "names nothing",
                        "at least one of services, not_services, messages, not_messages",
                    ));
                }
                service_patterns(&format!("{at}.services"), &o.services)?;
                service_patterns(&format!("{at}.not_services"), &o.not_services)?;
                patterns(&format!("{at}.messages"), &o.messages)?;
                patterns(&format!("{at}.not_messages"), &o.not_messages)?;
            }
            for (i, c) in rule.when.iter().enumerate() {
                let at = format!("{at}.when[{i}]");
                if c.key.is_empty() || c.key.len() > PATTERN_LIMIT {
                    return Err(refuse(
                        format!("{at}.key"),
                        format!("{} bytes", c.key.len()),
                        &format!("a metadata key of 1 to {PATTERN_LIMIT} bytes"),
                    ));
                }
                if c.values.is_empty() && c.not_values.is_empty() {
                    return Err(refuse(
                        at,
                        "has neither values nor not_values",
                        "values, not_values, or both",
                    ));
                }
                patterns(&format!("{at}.values"), &c.values)?;
                patterns(&format!("{at}.not_values"), &c.not_values)?;
            }
        }
        Ok(())
    }

    /// The service it names, in `namespace` (the policy's); `None`: every service there. A
    /// service of another namespace is refused: a policy governs its own namespace only.
    pub fn scope(&self, namespace: &str) -> Result<Option<ServiceName>, FieldError> {
        let Some(s) = &self.service else {
            return Ok(None);
        };
        let name = ServiceName::parse(s, namespace)
            .map_err(|e| refuse("service".into(), e.to_string(), "a service name"))?;
        if name.namespace != namespace {
            return Err(refuse(
                "service".into(),
                format!("{name} is in another namespace than the policy ({namespace})"),
                "a service of the policy's own namespace",
            ));
        }
        Ok(Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> AuthorizationPolicySpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_policy_reads_as_istio_writes_it_and_every_bad_value_names_its_field() {
        let p = read(
            r#"{"service":"reviews","action":"DENY","rules":[{"from":[{"source":{"principals":["*/sa/web"],"not_nodes":["agent-1"]}}],"to":[{"operation":{"messages":["shop.*"]}}],"when":[{"key":"end-user","values":["jason"]}]}]}"#,
        );
        assert_eq!(p.action, AuthzAction::Deny);
        p.validate().unwrap();
        assert_eq!(
            p.scope("shop").unwrap().unwrap().to_string(),
            "shop/reviews"
        );
        assert_eq!(read(r#"{"action":"allow"}"#).action, AuthzAction::Allow);
        assert_eq!(read("{}").action, AuthzAction::Allow, "ALLOW by default");
        for (json, field) in [
            (
                r#"{"rules":[{"from":[{"source":{}}]}]}"#,
                "rules[0].from[0].source",
            ),
            (
                r#"{"rules":[{"to":[{"operation":{}}]}]}"#,
                "rules[0].to[0].operation",
            ),
            (
                r#"{"rules":[{},{"when":[{"key":"k"}]}]}"#,
                "rules[1].when[0]",
            ),
            (
                r#"{"rules":[{"when":[{"key":"","values":["a"]}]}]}"#,
                "rules[0].when[0].key",
            ),
            (
                r#"{"rules":[{"from":[{"source":{"principals":[""]}}]}]}"#,
                "rules[0].from[0].source.principals[0]",
            ),
            (
                r#"{"rules":[{"to":[{"operation":{"services":["a/b/c"]}}]}]}"#,
                "rules[0].to[0].operation.services[0]",
            ),
            (r#"{"service":"Bad"}"#, "service"),
        ] {
            let e = read(json).validate().unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
            assert!(!e.expected.is_empty());
        }
        let e = read(r#"{"service":"other/reviews"}"#)
            .scope("shop")
            .unwrap_err();
        assert!(e.problem.contains("another namespace"), "{e}");
        assert!(serde_json::from_str::<AuthorizationPolicySpec>(r#"{"action":"PERMIT"}"#).is_err());
        assert!(serde_json::from_str::<AuthorizationPolicySpec>(r#"{"rulez":[]}"#).is_err());
    }
}
