//! Checks across traffic objects and the services they name, like `istioctl analyze`:
//! what each object's own validation cannot see. A plain function of the objects and the
//! services as the registry has them; every finding has a code, the object and the field.

use std::collections::{BTreeMap, BTreeSet};

use crate::mesh::registry::{Endpoint, Service, ServiceName};

use super::spec::{
    DestinationPolicySpec, MetadataMatch, NameMatch, RouteSpec, RuleMatch, SourceMatch,
};

/// One thing `analyze` found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Finding {
    /// A stable code, e.g. `AM1001`.
    pub code: &'static str,
    /// The object, `Kind namespace/name`.
    pub object: String,
    /// The field, from `spec`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}: {}",
            self.code, self.object, self.field, self.message
        )
    }
}

/// The codes, with what each means.
pub const CODES: &[(&str, &str)] = &[
    (
        "AM1001",
        "a route sends to a subset its service's policy does not define",
    ),
    ("AM1002", "a subset that no endpoint of its service matches"),
    (
        "AM1003",
        "a policy or route for a service the registry does not have",
    ),
    ("AM1004", "two Routes for one service"),
    (
        "AM1005",
        "a rule that can never match: an earlier rule takes every call it would",
    ),
];

/// A Route or DestinationPolicy with its name and the namespace it was applied in.
#[derive(Debug, Clone, Copy)]
pub struct Named<'a, T> {
    /// The object's namespace.
    pub namespace: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a T,
}

fn service_of(namespace: &str, service: &str) -> Option<ServiceName> {
    ServiceName::parse(service, namespace).ok()
}

/// Whether `endpoint` has every label of a subset (`version` is its version).
pub fn subset_matches(labels: &BTreeMap<String, String>, endpoint: &Endpoint) -> bool {
    labels.iter().all(|(k, v)| match endpoint.labels.get(k) {
        Some(have) => have == v,
        None => k == "version" && endpoint.version == *v,
    })
}

/// Everything found, sorted by code, then object, then field.
pub fn analyze(
    routes: &[Named<'_, RouteSpec>],
    policies: &[Named<'_, DestinationPolicySpec>],
    services: &[Service],
) -> Vec<Finding> {
    let mut found = Vec::new();
    let by_name: BTreeMap<&ServiceName, &Service> = services.iter().map(|s| (&s.name, s)).collect();
    let mut subsets: BTreeMap<ServiceName, BTreeSet<&str>> = BTreeMap::new();
    for p in policies {
        let object = format!("DestinationPolicy {}/{}", p.namespace, p.name);
        let Some(svc) = service_of(p.namespace, &p.spec.service) else {
            continue;
        };
        let known = by_name.get(&svc);
        if known.is_none() {
            found.push(Finding {
                code: "AM1003",
                object: object.clone(),
                field: "service".into(),
                message: format!("no service {svc} in the registry"),
            });
        }
        for (i, s) in p.spec.subsets.iter().enumerate() {
            subsets.entry(svc.clone()).or_default().insert(&s.name);
            if let Some(service) = known {
                if !service
                    .endpoints
                    .iter()
                    .any(|e| subset_matches(&s.labels, e))
                {
                    found.push(Finding {
                        code: "AM1002",
                        object: object.clone(),
                        field: format!("subsets[{i}]"),
                        message: format!(
                            "no endpoint of {svc} has the labels of subset {:?}",
                            s.name
                        ),
                    });
                }
            }
        }
    }
    let mut routed: BTreeMap<ServiceName, String> = BTreeMap::new();
    for r in routes {
        let object = format!("Route {}/{}", r.namespace, r.name);
        let Some(svc) = service_of(r.namespace, &r.spec.service) else {
            continue;
        };
        if !by_name.contains_key(&svc) {
            found.push(Finding {
                code: "AM1003",
                object: object.clone(),
                field: "service".into(),
                message: format!("no service {svc} in the registry"),
            });
        }
        if let Some(first) = routed.insert(svc.clone(), object.clone()) {
            found.push(Finding {
                code: "AM1004",
                object: object.clone(),
                field: "service".into(),
                message: format!("{first} routes {svc} too; a service has one Route"),
            });
        }
        let defined = subsets.get(&svc);
        for (i, rule) in r.spec.rules.iter().enumerate() {
            let named = rule
                .split
                .iter()
                .enumerate()
                .map(|(j, s)| (format!("rules[{i}].split[{j}].subset"), &s.subset))
                .chain(
                    rule.mirror
                        .iter()
                        .map(|m| (format!("rules[{i}].mirror.subset"), &m.subset)),
                );
            for (field, subset) in named {
                if !defined.is_some_and(|d| d.contains(subset.as_str())) {
                    found.push(Finding {
                        code: "AM1001",
                        object: object.clone(),
                        field,
                        message: format!("no DestinationPolicy of {svc} defines subset {subset:?}"),
                    });
                }
            }
            if let Some(k) = r.spec.rules[..i]
                .iter()
                .position(|e| covers(&e.matches, &rule.matches))
            {
                found.push(Finding {
                    code: "AM1005",
                    object: object.clone(),
                    field: format!("rules[{i}]"),
                    message: format!("rules[{k}] matches every call this rule would"),
                });
            }
        }
    }
    found.sort();
    found
}

/// Whether every call `later` matches is matched by `earlier` (conservative: false when
/// it cannot tell).
fn covers(earlier: &RuleMatch, later: &RuleMatch) -> bool {
    let message = match (&earlier.message, &later.message) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => name_covers(e, l),
    };
    let metadata = earlier
        .metadata
        .iter()
        .all(|(k, e)| later.metadata.get(k).is_some_and(|l| metadata_covers(e, l)));
    let source = match (&earlier.source, &later.source) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => e == l || source_covers(e, l),
    };
    message && metadata && source
}

fn name_covers(e: &NameMatch, l: &NameMatch) -> bool {
    match (e, l) {
        (NameMatch::Exact(a), NameMatch::Exact(b)) => a == b,
        (NameMatch::Prefix(p), NameMatch::Exact(b) | NameMatch::Prefix(b)) => {
            b.starts_with(p.as_str())
        }
        (NameMatch::Glob(g), NameMatch::Exact(b)) => e.matches(b) && !g.is_empty(),
        (NameMatch::Glob(g), NameMatch::Glob(h)) => g == h,
        (NameMatch::Glob(g), NameMatch::Prefix(_)) => g == "*",
        (NameMatch::Exact(_), _) => false,
        (NameMatch::Prefix(_), NameMatch::Glob(_)) => false,
    }
}

fn metadata_covers(e: &MetadataMatch, l: &MetadataMatch) -> bool {
    match (e, l) {
        (
            MetadataMatch::Present(_),
            MetadataMatch::Exact(_)
            | MetadataMatch::Prefix(_)
            | MetadataMatch::Regex(_)
            | MetadataMatch::Present(_),
        ) => true,
        (MetadataMatch::Prefix(p), MetadataMatch::Exact(v) | MetadataMatch::Prefix(v)) => {
            v.starts_with(p.as_str())
        }
        (a, b) => a == b,
    }
}

fn source_covers(e: &SourceMatch, l: &SourceMatch) -> bool {
    match (e, l) {
        (SourceMatch::Namespace(n), SourceMatch::Service(s)) => {
            s.split_once('/').is_some_and(|(ns, _)| ns == n)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::policy::spec::{Mirror, Rule, Split, SubsetSpec};
    use crate::mesh::registry::BalancerKind;

    fn ep(id: &str, version: &str) -> Endpoint {
        Endpoint {
            id: id.into(),
            node: format!("spiffe://t.local/node/{id}"),
            addr: ([127, 0, 0, 1], 7000).into(),
            actor: id.into(),
            version: version.into(),
            labels: BTreeMap::new(),
            weight: 1,
            zone: None,
        }
    }

    fn service(name: &str, eps: Vec<Endpoint>) -> Service {
        Service {
            name: ServiceName::parse(name, "default").unwrap(),
            labels: BTreeMap::new(),
            balancer: BalancerKind::P2c,
            locality: false,
            endpoints: eps,
            traffic: Default::default(),
            hosts: Vec::new(),
        }
    }

    fn policy(service: &str, subsets: &[(&str, &str)]) -> DestinationPolicySpec {
        DestinationPolicySpec {
            service: service.into(),
            subsets: subsets
                .iter()
                .map(|(n, v)| SubsetSpec {
                    name: n.to_string(),
                    labels: [("version".to_string(), v.to_string())].into(),
                    balancer: None,
                })
                .collect(),
            balancer: None,
            circuit_breaker: None,
            outlier_detection: None,
            retry_budget: None,
            rate_limit: None,
        }
    }

    fn rule(matches: RuleMatch, subsets: &[(&str, u32)]) -> Rule {
        Rule {
            matches,
            split: subsets
                .iter()
                .map(|(s, w)| Split {
                    subset: s.to_string(),
                    weight: *w,
                })
                .collect(),
            ..Rule::default()
        }
    }

    fn on(message: NameMatch) -> RuleMatch {
        RuleMatch {
            message: Some(message),
            ..RuleMatch::default()
        }
    }

    fn codes(found: &[Finding]) -> Vec<(&str, &str, &str)> {
        found
            .iter()
            .map(|f| (f.code, f.object.as_str(), f.field.as_str()))
            .collect()
    }

    #[test]
    fn a_consistent_set_has_no_finding() {
        let services = [service("shop/ratings", vec![ep("a", "v1"), ep("b", "v2")])];
        let p = policy("ratings", &[("v1", "v1"), ("v2", "v2")]);
        let r = RouteSpec {
            service: "ratings".into(),
            rules: vec![
                rule(on(NameMatch::Exact("shop.Get/v2".into())), &[("v2", 100)]),
                rule(RuleMatch::default(), &[("v1", 90), ("v2", 10)]),
            ],
        };
        let found = analyze(
            &[Named {
                namespace: "shop",
                name: "r",
                spec: &r,
            }],
            &[Named {
                namespace: "shop",
                name: "p",
                spec: &p,
            }],
            &services,
        );
        assert_eq!(found, vec![]);
    }

    #[test]
    fn each_finding_names_its_object_and_field() {
        let services = [service("shop/ratings", vec![ep("a", "v1")])];
        let p = policy("ratings", &[("v1", "v1"), ("v3", "v3")]);
        let orphan = policy("reviews", &[]);
        let mut r = RouteSpec {
            service: "ratings".into(),
            rules: vec![
                rule(on(NameMatch::Prefix("shop.".into())), &[("v1", 100)]),
                rule(on(NameMatch::Exact("shop.Get/v1".into())), &[("v2", 100)]),
            ],
        };
        r.rules[0].mirror = Some(Mirror {
            subset: "shadow".into(),
            percent: 5.0,
        });
        let again = RouteSpec {
            service: "shop/ratings".into(),
            rules: vec![rule(RuleMatch::default(), &[])],
        };
        let found = analyze(
            &[
                Named {
                    namespace: "shop",
                    name: "r",
                    spec: &r,
                },
                Named {
                    namespace: "shop",
                    name: "r2",
                    spec: &again,
                },
            ],
            &[
                Named {
                    namespace: "shop",
                    name: "p",
                    spec: &p,
                },
                Named {
                    namespace: "shop",
                    name: "orphan",
                    spec: &orphan,
                },
            ],
            &services,
        );
        assert_eq!(
            codes(&found),
            vec![
                ("AM1001", "Route shop/r", "rules[0].mirror.subset"),
                ("AM1001", "Route shop/r", "rules[1].split[0].subset"),
                ("AM1002", "DestinationPolicy shop/p", "subsets[1]"),
                ("AM1003", "DestinationPolicy shop/orphan", "service"),
                ("AM1004", "Route shop/r2", "service"),
                ("AM1005", "Route shop/r", "rules[1]"),
            ]
        );
    }

    #[test]
    fn shadowing_is_reported_only_when_certain() {
        let m = |message: Option<NameMatch>, md: &[(&str, MetadataMatch)]| RuleMatch {
            message,
            metadata: md.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            source: None,
        };
        let exact = |s: &str| MetadataMatch::Exact(s.into());
        // A catch-all covers everything; a prefix covers a longer prefix and an exact name.
        assert!(covers(
            &RuleMatch::default(),
            &on(NameMatch::Exact("a".into()))
        ));
        assert!(covers(
            &on(NameMatch::Prefix("shop.".into())),
            &on(NameMatch::Prefix("shop.r".into()))
        ));
        assert!(!covers(
            &on(NameMatch::Prefix("shop.r".into())),
            &on(NameMatch::Prefix("shop.".into()))
        ));
        assert!(covers(
            &on(NameMatch::Glob("shop.*".into())),
            &on(NameMatch::Exact("shop.Get/v1".into()))
        ));
        // More constraints earlier: it does not cover the later rule.
        assert!(!covers(&m(None, &[("tenant", exact("a"))]), &m(None, &[])));
        assert!(covers(
            &m(None, &[("tenant", MetadataMatch::Present(true))]),
            &m(
                Some(NameMatch::Exact("x".into())),
                &[("tenant", exact("a"))]
            )
        ));
        assert!(!covers(
            &m(None, &[("tenant", exact("a"))]),
            &m(None, &[("tenant", exact("b"))])
        ));
        // A namespace source covers a service of that namespace.
        let src = |s: SourceMatch| RuleMatch {
            source: Some(s),
            ..RuleMatch::default()
        };
        assert!(covers(
            &src(SourceMatch::Namespace("web".into())),
            &src(SourceMatch::Service("web/front".into()))
        ));
        assert!(!covers(
            &src(SourceMatch::Service("web/front".into())),
            &src(SourceMatch::Namespace("web".into()))
        ));
    }
}
