//! `kind: Route`, `kind: DestinationPolicy` and `kind: AuthorizationPolicy` manifests, and
//! [`parse_object`], which reads any kind `apply` takes. The specs are the façade's [`actormesh::mesh::policy::spec`]
//! types, validated there; errors here add the file and the `spec.` prefix of the field.
//!
//! ```yaml
//! kind: Route
//! name: ratings
//! namespace: shop
//! spec:
//!   service: ratings
//!   rules:
//!     - match: { message: { prefix: "shop.ratings." }, metadata: { tenant: { exact: beta } } }
//!       split: [ { subset: v2, weight: 100 } ]
//!     - split: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]
//!       timeout: 2s
//!       retries: { attempts: 2, per_try_timeout: 500ms, on: [unreachable, timeout] }
//! ---
//! kind: DestinationPolicy
//! name: ratings
//! namespace: shop
//! spec:
//!   service: ratings
//!   subsets: [ { name: v1, labels: { version: v1 } }, { name: v2, labels: { version: v2 } } ]
//!   circuit_breaker: { max_in_flight_per_endpoint: 100 }
//!   outlier_detection: { consecutive_errors: 5 }
//!   rate_limit: { rate: 200, burst: 50 }
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use actormesh::mesh::authz::AuthorizationPolicySpec;
use actormesh::mesh::gateway::{GatewaySpec, HttpRouteSpec};
use actormesh::mesh::policy::spec::{DestinationPolicySpec, FieldError, RouteSpec};

use super::{parse, read, valid_name, Deployment, ManifestError, KINDS};

/// A Route as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteManifest {
    /// `Route`.
    pub kind: String,
    /// Name, unique in its namespace.
    pub name: String,
    /// Namespace (default `default`).
    #[serde(default = "super::default_namespace")]
    pub namespace: String,
    /// The rules.
    pub spec: RouteSpec,
}

/// A DestinationPolicy as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyManifest {
    /// `DestinationPolicy`.
    pub kind: String,
    /// Name, unique in its namespace.
    pub name: String,
    /// Namespace (default `default`).
    #[serde(default = "super::default_namespace")]
    pub namespace: String,
    /// The policy.
    pub spec: DestinationPolicySpec,
}

/// An AuthorizationPolicy as written (`spec.service` absent: every service of its
/// namespace).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzManifest {
    /// `AuthorizationPolicy`.
    pub kind: String,
    /// Name, unique in its namespace.
    pub name: String,
    /// Namespace (default `default`): the policy governs services of this namespace only.
    #[serde(default = "super::default_namespace")]
    pub namespace: String,
    /// The policy.
    pub spec: AuthorizationPolicySpec,
}

/// A Gateway as written: an HTTP ingress, served by `actormesh gateway --gateway
/// <namespace>/<name>` nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayManifest {
    /// `Gateway`.
    pub kind: String,
    /// Name, unique in its namespace.
    pub name: String,
    /// Namespace (default `default`).
    #[serde(default = "super::default_namespace")]
    pub namespace: String,
    /// Hosts, forwarded headers, limits.
    pub spec: GatewaySpec,
}

/// An HttpRoute as written: rules of a Gateway of its namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteManifest {
    /// `HttpRoute`.
    pub kind: String,
    /// Name, unique in its namespace.
    pub name: String,
    /// Namespace (default `default`): its gateway's, and that of the services it names
    /// without one.
    #[serde(default = "super::default_namespace")]
    pub namespace: String,
    /// The gateway and the rules.
    pub spec: HttpRouteSpec,
}

/// A validated object of any kind `apply` takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A deployment.
    Deployment(Box<Deployment>),
    /// A route.
    Route(RouteManifest),
    /// A destination policy.
    DestinationPolicy(PolicyManifest),
    /// An authorization policy.
    AuthorizationPolicy(AuthzManifest),
    /// An HTTP ingress gateway.
    Gateway(GatewayManifest),
    /// Routes of a gateway.
    HttpRoute(HttpRouteManifest),
}

impl Object {
    /// `Kind namespace/name`, as `apply` reports it.
    pub fn describe(&self) -> String {
        match self {
            Object::Deployment(d) => {
                format!("Deployment {}/{}", d.manifest.namespace, d.manifest.name)
            }
            Object::Route(r) => format!("Route {}/{}", r.namespace, r.name),
            Object::DestinationPolicy(p) => {
                format!("DestinationPolicy {}/{}", p.namespace, p.name)
            }
            Object::AuthorizationPolicy(p) => {
                format!("AuthorizationPolicy {}/{}", p.namespace, p.name)
            }
            Object::Gateway(g) => format!("Gateway {}/{}", g.namespace, g.name),
            Object::HttpRoute(r) => format!("HttpRoute {}/{}", r.namespace, r.name),
        }
    }
}

/// Just the kind, read first to choose the parser.
#[derive(Deserialize)]
struct Kind {
    kind: Option<String>,
}

/// The documents of a YAML stream: the text between lines that are `---` (a directive end
/// marker at the start of a line, optionally followed by a comment), each with its first
/// line's number (from 1). Documents with nothing but blank lines and comments are left out.
pub fn documents(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut first = 1;
    let mut flush = |doc: &mut String, first: usize| {
        let empty = doc.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        });
        if !empty {
            out.push((first, std::mem::take(doc)));
        }
        doc.clear();
    };
    for (i, line) in text.lines().enumerate() {
        let marker = line.strip_prefix("---").is_some_and(|rest| {
            let rest = rest.trim();
            rest.is_empty() || rest.starts_with('#')
        });
        if marker {
            flush(&mut current, first);
            first = i + 2;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current, first);
    out
}

/// Reads every object of a manifest file, in order: one, or several documents separated by
/// `---` lines. An error names the file, the document (when there are several: `file
/// (document 2, line 14)`), the field and what was expected.
pub fn parse_objects(file: &Path, text: &str) -> Result<Vec<Object>, ManifestError> {
    let docs = documents(text);
    if docs.len() <= 1 {
        return Ok(vec![parse_object(file, text)?]);
    }
    docs.iter()
        .enumerate()
        .map(|(i, (line, doc))| {
            let named = format!("{} (document {}, line {line})", file.display(), i + 1);
            parse_object(Path::new(&named), doc)
        })
        .collect()
}

/// Reads a manifest of any kind `apply` takes, validated; errors name the file, the field
/// and what was expected.
pub fn parse_object(file: &Path, text: &str) -> Result<Object, ManifestError> {
    let err = |field: &str, problem: String, expected: &str| ManifestError {
        file: file.display().to_string(),
        field: field.to_string(),
        problem,
        expected: expected.to_string(),
    };
    let kind: Kind = read(file, text).map_err(|(field, msg)| err(&field, msg, KINDS))?;
    match kind.kind.as_deref() {
        Some("Deployment") => parse(file, text).map(|d| Object::Deployment(Box::new(d))),
        Some("Route") => {
            let m: RouteManifest = read(file, text).map_err(|(field, msg)| {
                err(
                    &field,
                    msg,
                    "a Route: kind, name, namespace and spec (service, rules)",
                )
            })?;
            names(&m.name, &m.namespace).map_err(|(f, p, e)| err(f, p, e))?;
            m.spec.validate().map_err(|e| in_spec(file, e))?;
            Ok(Object::Route(m))
        }
        Some("DestinationPolicy") => {
            let m: PolicyManifest = read(file, text).map_err(|(field, msg)| {
                err(
                    &field,
                    msg,
                    "a DestinationPolicy: kind, name, namespace and spec (service, subsets, ...)",
                )
            })?;
            names(&m.name, &m.namespace).map_err(|(f, p, e)| err(f, p, e))?;
            m.spec.validate().map_err(|e| in_spec(file, e))?;
            Ok(Object::DestinationPolicy(m))
        }
        Some("AuthorizationPolicy") => {
            let m: AuthzManifest = read(file, text).map_err(|(field, msg)| {
                err(
                    &field,
                    msg,
                    "an AuthorizationPolicy: kind, name, namespace and spec (service, action, rules)",
                )
            })?;
            names(&m.name, &m.namespace).map_err(|(f, p, e)| err(f, p, e))?;
            m.spec.validate().map_err(|e| in_spec(file, e))?;
            m.spec.scope(&m.namespace).map_err(|e| in_spec(file, e))?;
            Ok(Object::AuthorizationPolicy(m))
        }
        Some("Gateway") => {
            let m: GatewayManifest = read(file, text).map_err(|(field, msg)| {
                err(
                    &field,
                    msg,
                    "a Gateway: kind, name, namespace and spec (hosts, forward_headers, max_body_bytes, max_header_bytes)",
                )
            })?;
            names(&m.name, &m.namespace).map_err(|(f, p, e)| err(f, p, e))?;
            m.spec.validate().map_err(|e| in_spec(file, e))?;
            Ok(Object::Gateway(m))
        }
        Some("HttpRoute") => {
            let m: HttpRouteManifest = read(file, text).map_err(|(field, msg)| {
                err(
                    &field,
                    msg,
                    "an HttpRoute: kind, name, namespace and spec (gateway, hosts, rules)",
                )
            })?;
            names(&m.name, &m.namespace).map_err(|(f, p, e)| err(f, p, e))?;
            m.spec.validate().map_err(|e| in_spec(file, e))?;
            Ok(Object::HttpRoute(m))
        }
        Some(other) => Err(err("kind", format!("{other:?} is not a known kind"), KINDS)),
        None => Err(err("kind", "missing".into(), KINDS)),
    }
}

fn names<'a>(name: &str, namespace: &str) -> Result<(), (&'a str, String, &'a str)> {
    if !valid_name(name) {
        return Err((
            "name",
            format!("{name:?} is not a valid name"),
            "1-63 lowercase letters, digits and '-'",
        ));
    }
    if !valid_name(namespace) {
        return Err((
            "namespace",
            format!("{namespace:?} is not a valid namespace"),
            "1-63 lowercase letters, digits and '-'",
        ));
    }
    Ok(())
}

fn in_spec(file: &Path, e: FieldError) -> ManifestError {
    ManifestError {
        file: file.display().to_string(),
        field: format!("spec.{}", e.field),
        problem: e.problem,
        expected: e.expected,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const ROUTE: &str = "kind: Route
name: ratings
namespace: shop
spec:
  service: ratings
  rules:
    - match: { message: { prefix: \"shop.ratings.\" }, metadata: { tenant: { exact: beta } } }
      split: [ { subset: v2, weight: 100 } ]
    - split: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]
      timeout: 2s
      retries: { attempts: 2, per_try_timeout: 500ms, on: [unreachable, timeout] }
";

    const POLICY: &str = "kind: DestinationPolicy
name: ratings
namespace: shop
spec:
  service: ratings
  subsets: [ { name: v1, labels: { version: v1 } }, { name: v2, labels: { version: v2 }, balancer: round_robin } ]
  circuit_breaker: { max_in_flight_per_endpoint: 100 }
  outlier_detection: { consecutive_errors: 3 }
  rate_limit: { rate: 200, burst: 50 }
";

    #[test]
    fn a_file_of_several_documents_gives_each_object_in_order_and_errors_name_the_document() {
        let text = format!("# bookinfo\n---\n{ROUTE}--- # the policy\n{POLICY}---\n\n# nothing\n");
        let docs = documents(&text);
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert_eq!(docs[0].0, 3, "the route's first line");
        assert_eq!(docs[1].0, 3 + ROUTE.lines().count() + 1);
        let objects = parse_objects(Path::new("b.yaml"), &text).unwrap();
        assert!(matches!(objects[0], Object::Route(_)), "{:?}", objects[0]);
        assert!(matches!(objects[1], Object::DestinationPolicy(_)));
        // A `---` inside a line, or indented, is text, not a marker.
        assert_eq!(documents("a: '---'\n  ---\nb: 1\n").len(), 1);
        let bad = format!("{ROUTE}---\n{}", POLICY.replace("name: v1", "nmae: v1"));
        let e = parse_objects(Path::new("b.yaml"), &bad).unwrap_err();
        let line = ROUTE.lines().count() + 2;
        assert_eq!(e.file, format!("b.yaml (document 2, line {line})"), "{e}");
        assert!(e.field.contains("subsets"), "{e}");
        let one = parse_objects(Path::new("one.yaml"), &format!("---\n{ROUTE}")).unwrap();
        assert_eq!(one.len(), 1);
    }

    fn refused(text: &str) -> ManifestError {
        parse_object(Path::new("t.yaml"), text).unwrap_err()
    }

    #[test]
    fn a_route_and_a_policy_read_with_their_defaults() {
        let Object::Route(r) = parse_object(Path::new("r.yaml"), ROUTE).unwrap() else {
            panic!("not a route")
        };
        assert_eq!(r.spec.rules.len(), 2);
        assert_eq!(r.spec.rules[1].timeout, Some(Duration::from_secs(2)));
        let Object::DestinationPolicy(p) = parse_object(Path::new("p.yaml"), POLICY).unwrap()
        else {
            panic!("not a policy")
        };
        let b = p.spec.circuit_breaker.unwrap();
        assert_eq!((b.max_in_flight_per_endpoint, b.max_retries), (100, 3));
        let o = p.spec.outlier_detection.unwrap();
        assert_eq!((o.consecutive_errors, o.max_ejection_percent), (3, 10));
        assert_eq!(o.base_ejection, Duration::from_secs(30));
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let e = refused(&ROUTE.replace("weight: 90", "weight: 80"));
        assert_eq!(
            (e.file.as_str(), e.field.as_str()),
            ("t.yaml", "spec.rules[1].split")
        );
        assert!(e.to_string().contains("sum to 90"), "{e}");
        let e = refused(&ROUTE.replace("per_try_timeout: 500ms", "per_try_timeout: soon"));
        assert_eq!(e.field, "spec.rules[1].retries.per_try_timeout");
        let e = refused(&ROUTE.replace("on: [unreachable, timeout]", "on: [sometimes]"));
        assert_eq!(e.field, "spec.rules[1].retries.on[0]");
        let e = refused(&ROUTE.replace("tenant: { exact: beta }", "tenant: { regex: \"(beta\" }"));
        assert_eq!(e.field, "spec.rules[0].match.metadata.tenant.regex");
        assert!(e.problem.contains("not a regular expression"), "{e}");
        let e = refused(&POLICY.replace("balancer: round_robin", "balancer: fastest"));
        assert_eq!(e.field, "spec.subsets[1].balancer");
        let e = refused(&POLICY.replace("rate: 200", "rate: 200, bursty: 1"));
        assert_eq!(e.field, "spec.rate_limit.bursty");
        assert!(e.problem.contains("bursty"), "{e}");
        let e = refused(&ROUTE.replace("name: ratings", "name: Ratings"));
        assert_eq!(e.field, "name");
        let e = refused(&ROUTE.replace("kind: Route", "kind: VirtualService"));
        assert_eq!(e.field, "kind");
        assert!(e.expected.contains("DestinationPolicy"), "{e}");
    }

    #[test]
    fn a_deployment_reads_through_the_same_entry() {
        let d = "kind: Deployment\nname: web\nspec:\n  actor: echo\n  version: v1\n  replicas: 1\n  resources: { need: \"cpus:1\" }\n";
        let o = parse_object(Path::new("d.yaml"), d).unwrap();
        assert_eq!(o.describe(), "Deployment default/web");
    }
}
