//! What the master's service registry holds and pushes: services, their endpoints, and the
//! versioned pushes that carry them to every node's Proxy. Plain data, shared by the master
//! (which builds it) and the Proxy (which applies it).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::mesh::authz::{AuthorizationPolicySpec, AuthzDefault};
use crate::mesh::policy::spec::{DestinationPolicySpec, RouteSpec};

/// The namespace of a bare name used outside any namespace.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A service's name: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceName {
    /// Its namespace.
    pub namespace: String,
    /// Its name within the namespace.
    pub name: String,
}

/// A service name that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service name {given:?}: {reason}; expected `namespace/name` or `name`, each 1 to 63 of a-z, 0-9 and '-', starting with a letter or digit")]
pub struct BadServiceName {
    /// What was given.
    pub given: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The one rule for the names of namespaces, services, deployments and subsets: 1 to 63
/// of a-z, 0-9 and '-', not starting with '-'.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

fn check_part(given: &str, part: &str, what: &'static str) -> Result<(), BadServiceName> {
    let bad = |reason| BadServiceName {
        given: given.to_string(),
        reason,
    };
    if part.is_empty() {
        return Err(bad(match what {
            "namespace" => "the namespace is empty",
            _ => "the name is empty",
        }));
    }
    if part.len() > 63 {
        return Err(bad("a part is longer than 63 bytes"));
    }
    if !part
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("only a-z, 0-9 and '-' are allowed"));
    }
    if part.starts_with('-') {
        return Err(bad("a part may not start with '-'"));
    }
    Ok(())
}

impl ServiceName {
    /// Parses `namespace/name`, or a bare `name` in `namespace`.
    pub fn parse(s: &str, namespace: &str) -> Result<Self, BadServiceName> {
        let (ns, name) = match s.split_once('/') {
            Some((ns, name)) => (ns, name),
            None => (namespace, s),
        };
        if name.contains('/') {
            return Err(BadServiceName {
                given: s.to_string(),
                reason: "more than one '/'",
            });
        }
        check_part(s, ns, "namespace")?;
        check_part(s, name, "name")?;
        Ok(Self {
            namespace: ns.to_string(),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for ServiceName {
    type Err = BadServiceName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, DEFAULT_NAMESPACE)
    }
}

/// How a caller picks among a service's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    /// Least request by power of two choices, weighed by peak-EWMA latency (Linkerd's).
    #[default]
    P2c,
    /// Each endpoint in turn.
    RoundRobin,
    /// In proportion to endpoint weights.
    Weighted,
    /// Consistent hashing on the call's hash key: when an endpoint leaves, only its keys move.
    Hash,
}

impl BalancerKind {
    /// The name in manifests and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            BalancerKind::P2c => "p2c",
            BalancerKind::RoundRobin => "round_robin",
            BalancerKind::Weighted => "weighted",
            BalancerKind::Hash => "hash",
        }
    }
}

/// One ready instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Unique within the service: the task id, or `<node>/<actor>` for a node's own actor.
    pub id: String,
    /// The SPIFFE id of the node that hosts it; callers check the link's verified peer
    /// against it before sending.
    pub node: String,
    /// That node's mesh address.
    pub addr: SocketAddr,
    /// The actor's name on that node.
    pub actor: String,
    /// Its `version` label.
    pub version: String,
    /// Its labels, `version` included.
    pub labels: BTreeMap<String, String>,
    /// Its share of the traffic under weighted balancers (at least 1).
    pub weight: u32,
    /// The `zone` attribute of its node, if it has one.
    pub zone: Option<String>,
}

/// A service and its ready endpoints, as one push carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its name.
    pub name: ServiceName,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its balancer.
    pub balancer: BalancerKind,
    /// Whether callers prefer an endpoint on their own node, then in their own zone.
    pub locality: bool,
    /// Its ready endpoints, sorted by id.
    pub endpoints: Vec<Endpoint>,
    /// The Route, DestinationPolicy and AuthorizationPolicies applied to it (never
    /// skipped when empty: bincode reads fields by position).
    #[serde(default)]
    pub traffic: Traffic,
    /// The nodes (SPIFFE ids, sorted) that host an instance of it, ready or not: a
    /// deployment's placed instances and node registrations. A call that one of them
    /// asserts as coming from this service's workload is believed; from any other node,
    /// it is not.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Mesh-wide settings of the master, carried by every push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshSettings {
    /// What decides a call to a service no ALLOW policy applies to.
    pub authz_default: AuthzDefault,
    /// Denials tell callers outside the service's namespace no policy or rule name.
    pub hide_policy_names: bool,
}

/// An object applied to a service: its `namespace/name` and its spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied<T> {
    /// The object's `namespace/name`.
    pub object: String,
    /// Its spec.
    pub spec: T,
}

/// The traffic policy the master applied to a service. It travels in pushes as JSON (its
/// specs use serde forms that bincode cannot carry), and a proxy checks it again when it
/// applies a push.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traffic {
    /// The service's Route.
    pub route: Option<Applied<RouteSpec>>,
    /// Its DestinationPolicy.
    pub policy: Option<Applied<DestinationPolicySpec>>,
    /// The AuthorizationPolicies that apply to it (its own and its namespace's), by
    /// object name.
    pub authz: Vec<Applied<AuthorizationPolicySpec>>,
}

// The specs' floats (percentages, ratios) are validated finite: equality is total on them.
impl Eq for Traffic {}

impl Traffic {
    /// Whether nothing is applied.
    pub fn is_empty(&self) -> bool {
        self.route.is_none() && self.policy.is_none() && self.authz.is_empty()
    }

    /// Whether a Route or a DestinationPolicy is applied: what callers' calls follow
    /// (AuthorizationPolicies are the callee's).
    pub fn shapes_calls(&self) -> bool {
        self.route.is_some() || self.policy.is_some()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrafficForm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    route: Option<Applied<RouteSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<Applied<DestinationPolicySpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    authz: Vec<Applied<AuthorizationPolicySpec>>,
}

impl Serialize for Traffic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let form = TrafficForm {
            route: self.route.clone(),
            policy: self.policy.clone(),
            authz: self.authz.clone(),
        };
        if s.is_human_readable() {
            form.serialize(s)
        } else {
            let json = serde_json::to_string(&form).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&json)
        }
    }
}

impl<'de> Deserialize<'de> for Traffic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let form = if d.is_human_readable() {
            TrafficForm::deserialize(d)?
        } else {
            let json = String::deserialize(d)?;
            serde_json::from_str(&json).map_err(serde::de::Error::custom)?
        };
        Ok(Self {
            route: form.route,
            policy: form.policy,
            authz: form.authz,
        })
    }
}

/// A revoked identity and until when it stays refused (its certificate's expiry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The SPIFFE id.
    pub id: String,
    /// Refused until then, in milliseconds since the Unix epoch.
    pub until_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_bare_in_the_callers_namespace_and_refuse_what_is_not_a_name() {
        let n = ServiceName::parse("ratings", "shop").unwrap();
        assert_eq!(n.to_string(), "shop/ratings");
        let n: ServiceName = "ratings".parse().unwrap();
        assert_eq!(n.to_string(), "default/ratings");
        assert_eq!(
            ServiceName::parse("a/b", "shop").unwrap().to_string(),
            "a/b"
        );
        for (bad, why) in [
            ("", "the name is empty"),
            ("/x", "the namespace is empty"),
            ("a/b/c", "more than one '/'"),
            ("Shop/x", "only a-z, 0-9 and '-' are allowed"),
            ("-x", "a part may not start with '-'"),
        ] {
            let e = ServiceName::parse(bad, "default").unwrap_err();
            assert_eq!(e.reason, why, "{bad:?}");
            assert!(e.to_string().contains("expected `namespace/name`"));
        }
        assert!(ServiceName::parse(&"x".repeat(64), "default").is_err());
    }

    #[test]
    fn a_service_with_traffic_policy_crosses_the_wire_and_reads_as_json_objects() {
        let route: RouteSpec = serde_json::from_str(
            r#"{"service":"web","rules":[{"match":{"metadata":{"user":{"regex":"ja.*"}}},"split":[{"subset":"v2","weight":100}],"timeout":"1s"}]}"#,
        )
        .unwrap();
        let policy: DestinationPolicySpec = serde_json::from_str(
            r#"{"service":"web","subsets":[{"name":"v2","labels":{"version":"v2"}}],"outlier_detection":{}}"#,
        )
        .unwrap();
        let s = Service {
            name: "shop/web".parse().unwrap(),
            labels: BTreeMap::new(),
            balancer: BalancerKind::P2c,
            locality: true,
            endpoints: vec![],
            traffic: Traffic {
                route: Some(Applied {
                    object: "shop/web".into(),
                    spec: route,
                }),
                policy: Some(Applied {
                    object: "shop/web-policy".into(),
                    spec: policy,
                }),
                authz: Vec::new(),
            },
            hosts: Vec::new(),
        };
        let bytes = actormesh_transport::codec::encode(&s).unwrap();
        let back: Service = actormesh_transport::codec::decode(&bytes).unwrap();
        assert_eq!(back, s);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["traffic"]["route"]["object"], "shop/web");
        assert_eq!(
            json["traffic"]["policy"]["spec"]["subsets"][0]["name"],
            "v2"
        );
        let back: Service = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        // A service without policy, as an earlier master's JSON shows it.
        let plain = serde_json::json!({"name":{"namespace":"a","name":"b"},"labels":{},"balancer":"p2c","locality":false,"endpoints":[]});
        let plain: Service = serde_json::from_value(plain).unwrap();
        assert!(plain.traffic.is_empty());
        let bytes = actormesh_transport::codec::encode(&plain).unwrap();
        assert_eq!(
            actormesh_transport::codec::decode::<Service>(&bytes).unwrap(),
            plain
        );
    }
}
