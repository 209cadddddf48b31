//! The applied Routes, DestinationPolicies and AuthorizationPolicies, which the core holds
//! and the registry pushes with each service ([`TrafficBook::by_service`],
//! [`TrafficBook::authz_for`]). A plain book: one Route and one DestinationPolicy per
//! service at most, any number of AuthorizationPolicies (per service or namespace-wide),
//! each kept in the Config table as its manifest's JSON under `route/<ns>/<name>`,
//! `policy/<ns>/<name>` or `authz/<ns>/<name>`, so a restarted master reloads exactly what
//! was applied.

use std::collections::BTreeMap;
use std::path::Path;

use actormesh::mesh::authz::AuthorizationPolicySpec;
use actormesh::mesh::policy::analyze::Named;
use actormesh::mesh::policy::spec::{DestinationPolicySpec, RouteSpec};
use actormesh::mesh::registry::{Applied, Traffic};
use actormesh::mesh::ServiceName;

use crate::manifest::{
    parse_object, AuthzManifest, GatewayManifest, HttpRouteManifest, Object, PolicyManifest,
    RouteManifest,
};
use crate::state::{Change, Table};

/// Config-table prefix of Routes.
pub const ROUTE_PREFIX: &str = "route/";
/// Config-table prefix of DestinationPolicies.
pub const POLICY_PREFIX: &str = "policy/";
/// Config-table prefix of AuthorizationPolicies.
pub const AUTHZ_PREFIX: &str = "authz/";
/// Config-table prefix of Gateways.
pub const GATEWAY_PREFIX: &str = "gateway/";
/// Config-table prefix of HttpRoutes.
pub const HTTP_ROUTE_PREFIX: &str = "httproute/";

/// A gateway's configuration, as its nodes fetch it: the Gateway and the HttpRoutes of
/// its namespace that name it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GatewayView {
    /// The Gateway.
    pub gateway: GatewayManifest,
    /// Its routes, by name.
    pub routes: Vec<HttpRouteManifest>,
}

/// Why the book refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrafficRefusal {
    /// Another object of the same kind already applies to the service.
    #[error("{kind} {existing} already applies to {service}; a service has one {kind} (change or delete that one)")]
    Taken {
        /// `Route` or `DestinationPolicy`.
        kind: &'static str,
        /// The service.
        service: String,
        /// The object that has it, `namespace/name`.
        existing: String,
    },
    /// The spec names no valid service.
    #[error("{0}")]
    BadService(String),
    /// No such object to delete.
    #[error("no {kind} {key}")]
    NotFound {
        /// `Route` or `DestinationPolicy`.
        kind: &'static str,
        /// `namespace/name`.
        key: String,
    },
}

/// A row of the Config table that did not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored {key}: {reason}")]
pub struct TrafficLoadError {
    /// The row's key.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// The applied objects, by `namespace/name`, and which service each applies to.
#[derive(Debug, Default, Clone)]
pub struct TrafficBook {
    routes: BTreeMap<String, (ServiceName, RouteManifest)>,
    policies: BTreeMap<String, (ServiceName, PolicyManifest)>,
    /// AuthorizationPolicies by `namespace/name`, with the service each names (`None`:
    /// every service of its namespace).
    authz: BTreeMap<String, (Option<ServiceName>, AuthzManifest)>,
    /// Gateways by `namespace/name`.
    gateways: BTreeMap<String, GatewayManifest>,
    /// HttpRoutes by `namespace/name`.
    http_routes: BTreeMap<String, HttpRouteManifest>,
}

fn service_of(spec_service: &str, namespace: &str) -> Result<ServiceName, TrafficRefusal> {
    ServiceName::parse(spec_service, namespace)
        .map_err(|e| TrafficRefusal::BadService(e.to_string()))
}

/// The key of `(namespace, name)` in the book and (behind its prefix) in the store.
fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Applies `m` under `key` in `objects`, refusing it if another key has its service.
fn put<M: Clone + serde::Serialize>(
    objects: &mut BTreeMap<String, (ServiceName, M)>,
    kind: &'static str,
    prefix: &str,
    key: String,
    service: ServiceName,
    m: M,
) -> Result<Vec<Change>, TrafficRefusal> {
    if let Some((existing, _)) = objects
        .iter()
        .find(|(k, (s, _))| **k != key && *s == service)
    {
        return Err(TrafficRefusal::Taken {
            kind,
            service: service.to_string(),
            existing: existing.clone(),
        });
    }
    let value = serde_json::to_vec(&m).expect("a manifest serializes to JSON");
    let change = Change::put(Table::Config, format!("{prefix}{key}"), value);
    objects.insert(key, (service, m));
    Ok(vec![change])
}

impl TrafficBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// The book as the Config table holds it (rows of other kinds are skipped).
    pub fn load<'a>(
        rows: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, TrafficLoadError> {
        let mut book = Self::new();
        for (k, v) in rows {
            if ![
                ROUTE_PREFIX,
                POLICY_PREFIX,
                AUTHZ_PREFIX,
                GATEWAY_PREFIX,
                HTTP_ROUTE_PREFIX,
            ]
            .iter()
            .any(|p| k.starts_with(p))
            {
                continue;
            }
            let bad = |reason: String| TrafficLoadError {
                key: k.to_string(),
                reason,
            };
            let text = std::str::from_utf8(v).map_err(|e| bad(e.to_string()))?;
            let refused = |e: TrafficRefusal| bad(e.to_string());
            match parse_object(Path::new("stored.json"), text).map_err(|e| bad(e.to_string()))? {
                Object::Route(r) => {
                    book.apply_route(r).map_err(refused)?;
                }
                Object::DestinationPolicy(p) => {
                    book.apply_policy(p).map_err(refused)?;
                }
                Object::AuthorizationPolicy(p) => {
                    book.apply_authz(p).map_err(refused)?;
                }
                Object::Gateway(g) => {
                    book.apply_gateway(g);
                }
                Object::HttpRoute(r) => {
                    book.apply_http_route(r);
                }
                Object::Deployment(_) => {
                    return Err(bad("a Deployment under a traffic key".into()))
                }
            }
        }
        Ok(book)
    }

    /// Applies (creates or replaces) a Route; the store changes to make.
    pub fn apply_route(&mut self, m: RouteManifest) -> Result<Vec<Change>, TrafficRefusal> {
        let service = service_of(&m.spec.service, &m.namespace)?;
        let k = key(&m.namespace, &m.name);
        put(&mut self.routes, "Route", ROUTE_PREFIX, k, service, m)
    }

    /// Applies (creates or replaces) a DestinationPolicy; the store changes to make.
    pub fn apply_policy(&mut self, m: PolicyManifest) -> Result<Vec<Change>, TrafficRefusal> {
        let service = service_of(&m.spec.service, &m.namespace)?;
        let k = key(&m.namespace, &m.name);
        put(
            &mut self.policies,
            "DestinationPolicy",
            POLICY_PREFIX,
            k,
            service,
            m,
        )
    }

    /// Applies (creates or replaces) an AuthorizationPolicy; the store changes to make.
    pub fn apply_authz(&mut self, m: AuthzManifest) -> Result<Vec<Change>, TrafficRefusal> {
        let scope = m
            .spec
            .scope(&m.namespace)
            .map_err(|e| TrafficRefusal::BadService(format!("spec.{e}")))?;
        let k = key(&m.namespace, &m.name);
        let value = serde_json::to_vec(&m).expect("a manifest serializes to JSON");
        let change = Change::put(Table::Config, format!("{AUTHZ_PREFIX}{k}"), value);
        self.authz.insert(k, (scope, m));
        Ok(vec![change])
    }

    /// Applies (creates or replaces) a Gateway; the store changes to make.
    pub fn apply_gateway(&mut self, m: GatewayManifest) -> Vec<Change> {
        let k = key(&m.namespace, &m.name);
        let value = serde_json::to_vec(&m).expect("a manifest serializes to JSON");
        let change = Change::put(Table::Config, format!("{GATEWAY_PREFIX}{k}"), value);
        self.gateways.insert(k, m);
        vec![change]
    }

    /// Applies (creates or replaces) an HttpRoute; the store changes to make. Its gateway
    /// need not exist yet (it serves the route once it does).
    pub fn apply_http_route(&mut self, m: HttpRouteManifest) -> Vec<Change> {
        let k = key(&m.namespace, &m.name);
        let value = serde_json::to_vec(&m).expect("a manifest serializes to JSON");
        let change = Change::put(Table::Config, format!("{HTTP_ROUTE_PREFIX}{k}"), value);
        self.http_routes.insert(k, m);
        vec![change]
    }

    /// Deletes the Gateway `namespace/name` (its routes stay, unserved).
    pub fn delete_gateway(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Change>, TrafficRefusal> {
        let k = key(namespace, name);
        self.gateways
            .remove(&k)
            .map(|_| {
                vec![Change::delete(
                    Table::Config,
                    format!("{GATEWAY_PREFIX}{k}"),
                )]
            })
            .ok_or(TrafficRefusal::NotFound {
                kind: "Gateway",
                key: k,
            })
    }

    /// Deletes the HttpRoute `namespace/name`.
    pub fn delete_http_route(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Change>, TrafficRefusal> {
        let k = key(namespace, name);
        self.http_routes
            .remove(&k)
            .map(|_| {
                vec![Change::delete(
                    Table::Config,
                    format!("{HTTP_ROUTE_PREFIX}{k}"),
                )]
            })
            .ok_or(TrafficRefusal::NotFound {
                kind: "HttpRoute",
                key: k,
            })
    }

    /// The Gateway `namespace/name` and the HttpRoutes of its namespace that name it.
    pub fn gateway(&self, namespace: &str, name: &str) -> Option<GatewayView> {
        let gateway = self.gateways.get(&key(namespace, name))?.clone();
        let routes = self
            .http_routes
            .values()
            .filter(|r| r.namespace == namespace && r.spec.gateway == name)
            .cloned()
            .collect();
        Some(GatewayView { gateway, routes })
    }

    /// Every applied Gateway, by `namespace/name`.
    pub fn gateways(&self) -> impl Iterator<Item = &GatewayManifest> {
        self.gateways.values()
    }

    /// Every applied HttpRoute, by `namespace/name`.
    pub fn http_routes(&self) -> impl Iterator<Item = &HttpRouteManifest> {
        self.http_routes.values()
    }

    /// Deletes the AuthorizationPolicy `namespace/name`.
    pub fn delete_authz(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Change>, TrafficRefusal> {
        let k = key(namespace, name);
        self.authz
            .remove(&k)
            .map(|_| vec![Change::delete(Table::Config, format!("{AUTHZ_PREFIX}{k}"))])
            .ok_or(TrafficRefusal::NotFound {
                kind: "AuthorizationPolicy",
                key: k,
            })
    }

    /// The AuthorizationPolicies that apply to `service`, by object name: its namespace's
    /// namespace-wide ones and its own.
    pub fn authz_for(&self, service: &ServiceName) -> Vec<Applied<AuthorizationPolicySpec>> {
        let from = format!("{}/", service.namespace);
        self.authz
            .range(from.clone()..)
            .take_while(|(k, _)| k.starts_with(&from))
            .filter(|(_, (scope, _))| scope.as_ref().is_none_or(|s| s == service))
            .map(|(k, (_, m))| Applied {
                object: k.clone(),
                spec: m.spec.clone(),
            })
            .collect()
    }

    /// Every applied AuthorizationPolicy, by `namespace/name`.
    pub fn authorization_policies(&self) -> impl Iterator<Item = &AuthzManifest> {
        self.authz.values().map(|(_, m)| m)
    }

    /// Whether any AuthorizationPolicy is applied.
    pub fn has_authz(&self) -> bool {
        !self.authz.is_empty()
    }

    /// Deletes the Route `namespace/name`.
    pub fn delete_route(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Change>, TrafficRefusal> {
        let k = key(namespace, name);
        self.routes
            .remove(&k)
            .map(|_| vec![Change::delete(Table::Config, format!("{ROUTE_PREFIX}{k}"))])
            .ok_or(TrafficRefusal::NotFound {
                kind: "Route",
                key: k,
            })
    }

    /// Deletes the DestinationPolicy `namespace/name`.
    pub fn delete_policy(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Change>, TrafficRefusal> {
        let k = key(namespace, name);
        self.policies
            .remove(&k)
            .map(|_| vec![Change::delete(Table::Config, format!("{POLICY_PREFIX}{k}"))])
            .ok_or(TrafficRefusal::NotFound {
                kind: "DestinationPolicy",
                key: k,
            })
    }

    /// The Route and the policy that apply to `service`.
    pub fn of(
        &self,
        service: &ServiceName,
    ) -> (Option<&RouteSpec>, Option<&DestinationPolicySpec>) {
        (
            self.routes
                .values()
                .find(|(s, _)| s == service)
                .map(|(_, m)| &m.spec),
            self.policies
                .values()
                .find(|(s, _)| s == service)
                .map(|(_, m)| &m.spec),
        )
    }
}

impl TrafficBook {
    /// What is applied, by service: every service some object applies to (one pass over
    /// the objects, for the registry's recompute).
    pub fn by_service(&self) -> BTreeMap<ServiceName, Traffic> {
        let mut out: BTreeMap<ServiceName, Traffic> = BTreeMap::new();
        for (k, (service, m)) in &self.routes {
            out.entry(service.clone()).or_default().route = Some(Applied {
                object: k.clone(),
                spec: m.spec.clone(),
            });
        }
        for (k, (service, m)) in &self.policies {
            out.entry(service.clone()).or_default().policy = Some(Applied {
                object: k.clone(),
                spec: m.spec.clone(),
            });
        }
        out
    }

    /// Every applied Route, by `namespace/name`.
    pub fn routes(&self) -> impl Iterator<Item = &RouteManifest> {
        self.routes.values().map(|(_, m)| m)
    }

    /// Every applied DestinationPolicy, by `namespace/name`.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyManifest> {
        self.policies.values().map(|(_, m)| m)
    }

    /// The applied objects as `analyze` takes them, with `extra` (objects about to be
    /// applied) in place of the applied ones of the same name.
    pub fn named<'a>(
        &'a self,
        extra_routes: &'a [RouteManifest],
        extra_policies: &'a [PolicyManifest],
    ) -> (
        Vec<Named<'a, RouteSpec>>,
        Vec<Named<'a, DestinationPolicySpec>>,
    ) {
        fn merge<'a, S, M: 'a>(
            applied: impl Iterator<Item = &'a M>,
            extra: &'a [M],
            names: impl Fn(&'a M) -> (&'a str, &'a str, &'a S),
        ) -> Vec<Named<'a, S>> {
            let replaced: Vec<(&str, &str)> = extra
                .iter()
                .map(|m| {
                    let (ns, n, _) = names(m);
                    (ns, n)
                })
                .collect();
            applied
                .filter(|m| {
                    let (ns, n, _) = names(m);
                    !replaced.contains(&(ns, n))
                })
                .chain(extra)
                .map(|m| {
                    let (namespace, name, spec) = names(m);
                    Named {
                        namespace,
                        name,
                        spec,
                    }
                })
                .collect()
        }
        (
            merge(self.routes(), extra_routes, |m| {
                (m.namespace.as_str(), m.name.as_str(), &m.spec)
            }),
            merge(self.policies(), extra_policies, |m| {
                (m.namespace.as_str(), m.name.as_str(), &m.spec)
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, service: &str) -> RouteManifest {
        let text = format!(
            "kind: Route\nname: {name}\nnamespace: shop\nspec:\n  service: {service}\n  rules:\n    - timeout: 2s\n"
        );
        match parse_object(Path::new("r.yaml"), &text).unwrap() {
            Object::Route(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn policy(name: &str, service: &str) -> PolicyManifest {
        let text = format!(
            "kind: DestinationPolicy\nname: {name}\nnamespace: shop\nspec:\n  service: {service}\n  subsets: [ {{ name: v1, labels: {{ version: v1 }} }} ]\n"
        );
        match parse_object(Path::new("p.yaml"), &text).unwrap() {
            Object::DestinationPolicy(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn ratings() -> ServiceName {
        ServiceName::parse("shop/ratings", "default").unwrap()
    }

    fn parsed(text: &str) -> Object {
        parse_object(Path::new("g.yaml"), text).unwrap()
    }

    #[test]
    fn a_gateway_is_served_with_the_http_routes_of_its_namespace_that_name_it() {
        let mut book = TrafficBook::new();
        let Object::Gateway(g) = parsed(
            "kind: Gateway\nname: public\nnamespace: shop\nspec:\n  forward_headers: [end-user]\n",
        ) else {
            panic!()
        };
        let route = |name: &str, ns: &str, gateway: &str| {
            let Object::HttpRoute(r) = parsed(&format!(
                "kind: HttpRoute\nname: {name}\nnamespace: {ns}\nspec:\n  gateway: {gateway}\n  rules:\n    - match:\n        path: /p/{{id}}\n      service: products\n      message: p.Get/v1\n"
            )) else {
                panic!()
            };
            r
        };
        let mut changes = book.apply_http_route(route("pages", "shop", "public"));
        assert!(book.gateway("shop", "public").is_none(), "no Gateway yet");
        changes.extend(book.apply_gateway(g));
        changes.extend(book.apply_http_route(route("other-gw", "shop", "internal")));
        changes.extend(book.apply_http_route(route("other-ns", "web", "public")));
        let view = book.gateway("shop", "public").unwrap();
        assert_eq!(view.gateway.spec.forward_headers, ["end-user"]);
        assert_eq!(
            view.routes
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["pages"],
            "its namespace's routes that name it, only"
        );
        // Stored, it reloads the same.
        let rows: Vec<(String, Vec<u8>)> = changes
            .into_iter()
            .map(|c| match c {
                Change::Put { key, value, .. } => (key, value),
                other => panic!("{other:?}"),
            })
            .collect();
        let again =
            TrafficBook::load(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        assert_eq!(again.gateway("shop", "public"), Some(view));
        let mut book = again;
        assert!(book.delete_gateway("shop", "public").is_ok());
        assert!(book.gateway("shop", "public").is_none());
        assert!(matches!(
            book.delete_http_route("shop", "nope"),
            Err(TrafficRefusal::NotFound {
                kind: "HttpRoute",
                ..
            })
        ));
    }

    #[test]
    fn a_service_has_one_route_and_one_policy() {
        let mut book = TrafficBook::new();
        book.apply_route(route("r1", "ratings")).unwrap();
        // Replacing the same Route is fine; another Route for the service is not.
        book.apply_route(route("r1", "ratings")).unwrap();
        assert_eq!(
            book.apply_route(route("r2", "shop/ratings")).unwrap_err(),
            TrafficRefusal::Taken {
                kind: "Route",
                service: "shop/ratings".into(),
                existing: "shop/r1".into(),
            }
        );
        // The Route may move to another service, freeing this one.
        book.apply_route(route("r1", "reviews")).unwrap();
        book.apply_route(route("r2", "ratings")).unwrap();
        book.apply_policy(policy("p1", "ratings")).unwrap();
        assert!(matches!(
            book.apply_policy(policy("p2", "ratings")),
            Err(TrafficRefusal::Taken {
                kind: "DestinationPolicy",
                ..
            })
        ));
        let (r, p) = book.of(&ratings());
        assert_eq!(r.unwrap().service, "ratings");
        assert_eq!(p.unwrap().subsets[0].name, "v1");
    }

    #[test]
    fn what_is_stored_reloads_as_it_was_and_deletes_are_stored() {
        let mut book = TrafficBook::new();
        let mut rows: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut keep = |changes: Vec<Change>| {
            for c in changes {
                match c {
                    Change::Put { key, value, .. } => {
                        rows.insert(key, value);
                    }
                    Change::Delete { key, .. } => {
                        rows.remove(&key);
                    }
                    other => panic!("the book only puts and deletes: {other:?}"),
                }
            }
        };
        keep(book.apply_route(route("r1", "ratings")).unwrap());
        keep(book.apply_policy(policy("p1", "ratings")).unwrap());
        keep(book.apply_policy(policy("p2", "reviews")).unwrap());
        keep(book.delete_policy("shop", "p2").unwrap());
        assert_eq!(
            book.delete_policy("shop", "p2").unwrap_err(),
            TrafficRefusal::NotFound {
                kind: "DestinationPolicy",
                key: "shop/p2".into(),
            }
        );
        let mut all: Vec<(&str, &[u8])> = rows
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        all.push(("deployment/default/web", b"not ours"));
        let again = TrafficBook::load(all).unwrap();
        assert_eq!(again.of(&ratings()), book.of(&ratings()));
        let reviews = ServiceName::parse("shop/reviews", "default").unwrap();
        assert_eq!(again.of(&reviews), (None, None));
        let broken = TrafficBook::load([("route/shop/x", b"{".as_slice())]).unwrap_err();
        assert_eq!(broken.key, "route/shop/x");
    }
}
