//! The decision's rules, each by a case that fails if the rule goes, and the compiled
//! engine against the plain reading (`explain`) on random policies.

use super::engine::{explain, AuthzDefault, Facts, RuleAt, ServiceAuthz, Verdict};
use super::spec::AuthorizationPolicySpec;
use crate::mesh::balance::{Random, SplitMix64};
use crate::mesh::registry::{Applied, ServiceName};
use crate::Metadata;

fn policy(object: &str, json: &str) -> Applied<AuthorizationPolicySpec> {
    let spec: AuthorizationPolicySpec = serde_json::from_str(json).unwrap();
    spec.validate().unwrap();
    Applied {
        object: object.to_string(),
        spec,
    }
}

fn reviews() -> ServiceName {
    "shop/reviews".parse().unwrap()
}

const WEB: &str = "td/ns/shop/sa/web";
const NODE: &str = "td/node/agent-1";

fn facts<'a>(principal: &'a str, message: &'a str, metadata: &'a Metadata) -> Facts<'a> {
    let namespace = principal
        .split_once("/ns/")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(ns, _)| ns);
    Facts {
        principal,
        namespace,
        node: NODE,
        message,
        metadata,
    }
}

/// The decision, as the caller would be told it, checked against `explain`.
fn decide(
    policies: &[Applied<AuthorizationPolicySpec>],
    default: AuthzDefault,
    f: &Facts<'_>,
) -> (bool, String, String) {
    let c = ServiceAuthz::new(&reviews(), policies, default);
    let (v, _) = c.decide(f);
    let (p, r) = c.names(v);
    let e = explain(&reviews(), policies, default, f);
    assert_eq!(
        (e.decision.as_str(), e.policy.as_str(), e.rule.as_str()),
        (
            if v.allowed() { "allow" } else { "deny" },
            p.as_str(),
            r.as_str()
        ),
        "the engine and explain disagree on {f:?}"
    );
    (v.allowed(), p, r)
}

#[test]
fn any_matching_deny_denies_whatever_allow_says() {
    let m = Metadata::new();
    let ps = [
        policy(
            "shop/allow-web",
            r#"{"rules":[{"from":[{"source":{"principals":["td/ns/shop/sa/web"]}}]}]}"#,
        ),
        policy(
            "shop/no-delete",
            r#"{"action":"DENY","rules":[{"to":[{"operation":{"messages":["*.Delete/*"]}}]}]}"#,
        ),
    ];
    assert_eq!(
        decide(&ps, AuthzDefault::Allow, &facts(WEB, "shop.Delete/v1", &m)),
        (false, "shop/no-delete".into(), "rules[0]".into())
    );
    assert_eq!(
        decide(&ps, AuthzDefault::Allow, &facts(WEB, "shop.Get/v1", &m)),
        (true, "shop/allow-web".into(), "rules[0]".into())
    );
}

#[test]
fn once_an_allow_policy_applies_a_call_must_match_one() {
    let m = Metadata::new();
    let ps = [
        policy(
            "shop/a",
            r#"{"rules":[{"from":[{"source":{"principals":["td/ns/shop/sa/web"]}}]}]}"#,
        ),
        policy("shop/b", r#"{"rules":[]}"#),
    ];
    let (allowed, p, r) = decide(
        &ps,
        AuthzDefault::Allow,
        &facts("td/ns/shop/sa/db", "x", &m),
    );
    assert!(
        !allowed,
        "the default allow does not apply once ALLOW policies do"
    );
    assert_eq!(p, "shop/a,shop/b");
    assert!(
        r.contains("no rule of the ALLOW policies of shop/reviews matched"),
        "{r}"
    );
    // An ALLOW policy without rules allows nothing; `rules: [{}]` allows everything.
    let none = [policy("shop/b", r#"{}"#)];
    assert!(!decide(&none, AuthzDefault::Allow, &facts(WEB, "x", &m)).0);
    let all = [policy("shop/b", r#"{"rules":[{}]}"#)];
    assert!(decide(&all, AuthzDefault::Deny, &facts(WEB, "x", &m)).0);
}

#[test]
fn without_allow_policies_the_mesh_default_decides() {
    let m = Metadata::new();
    let deny_only = [policy(
        "shop/d",
        r#"{"action":"DENY","rules":[{"from":[{"source":{"principals":["nobody"]}}]}]}"#,
    )];
    for ps in [&[][..], &deny_only[..]] {
        assert_eq!(
            decide(ps, AuthzDefault::Allow, &facts(WEB, "x", &m)),
            (
                true,
                "default-allow".into(),
                "no ALLOW policy applies to shop/reviews".into()
            )
        );
        assert_eq!(
            decide(ps, AuthzDefault::Deny, &facts(WEB, "x", &m)),
            (
                false,
                "default-deny".into(),
                "no ALLOW policy applies to shop/reviews".into()
            )
        );
    }
    assert!(!ServiceAuthz::new(&reviews(), &[], AuthzDefault::Allow).in_force());
    assert!(ServiceAuthz::new(&reviews(), &[], AuthzDefault::Deny).in_force());
    assert!(ServiceAuthz::new(&reviews(), &deny_only, AuthzDefault::Allow).in_force());
}

#[test]
fn audit_reports_a_match_and_changes_nothing() {
    let m = Metadata::new();
    let ps = [policy(
        "shop/watch",
        r#"{"action":"AUDIT","rules":[{"to":[{"operation":{"messages":["shop.Get/v1"]}}]}]}"#,
    )];
    let c = ServiceAuthz::new(&reviews(), &ps, AuthzDefault::Deny);
    let (v, audit) = c.decide(&facts(WEB, "shop.Get/v1", &m));
    assert_eq!(
        v,
        Verdict::DeniedByDefault,
        "an AUDIT policy is not an ALLOW policy"
    );
    assert_eq!(audit, Some(RuleAt { policy: 0, rule: 0 }));
    assert_eq!(c.decide(&facts(WEB, "shop.Put/v1", &m)).1, None);
    let e = explain(
        &reviews(),
        &ps,
        AuthzDefault::Deny,
        &facts(WEB, "shop.Get/v1", &m),
    );
    assert_eq!(e.audited.as_deref(), Some("shop/watch rules[0]"));
}

#[test]
fn globs_match_principals_messages_nodes_and_values() {
    let m = Metadata::new().with("end-user", "admin-7");
    let allow = |json: &str| [policy("shop/p", json)];
    let yes = |json: &str, f: &Facts<'_>| decide(&allow(json), AuthzDefault::Deny, f).0;
    let f = facts(WEB, "shop.reviews.Get/v1", &m);
    // Principals, with or without the scheme: exact, prefix, suffix, inner globs.
    assert!(yes(
        r#"{"rules":[{"from":[{"source":{"principals":["spiffe://td/ns/shop/sa/web"]}}]}]}"#,
        &f
    ));
    assert!(yes(
        r#"{"rules":[{"from":[{"source":{"principals":["td/ns/shop/*"]}}]}]}"#,
        &f
    ));
    assert!(yes(
        r#"{"rules":[{"from":[{"source":{"principals":["*/sa/web"]}}]}]}"#,
        &f
    ));
    assert!(yes(
        r#"{"rules":[{"from":[{"source":{"principals":["td/ns/*/sa/w?b"]}}]}]}"#,
        &f
    ));
    assert!(!yes(
        r#"{"rules":[{"from":[{"source":{"principals":["td/ns/shop/sa/we"]}}]}]}"#,
        &f
    ));
    // Messages.
    assert!(yes(
        r#"{"rules":[{"to":[{"operation":{"messages":["shop.*.Get/*"]}}]}]}"#,
        &f
    ));
    assert!(!yes(
        r#"{"rules":[{"to":[{"operation":{"messages":["shop.*.Put/*"]}}]}]}"#,
        &f
    ));
    // Nodes: bare ids and whole identities.
    assert!(yes(
        r#"{"rules":[{"from":[{"source":{"nodes":["agent-*"]}}]}]}"#,
        &f
    ));
    assert!(yes(
        r#"{"rules":[{"from":[{"source":{"nodes":["spiffe://td/node/agent-1"]}}]}]}"#,
        &f
    ));
    assert!(!yes(
        r#"{"rules":[{"from":[{"source":{"nodes":["agent-2"]}}]}]}"#,
        &f
    ));
    // Metadata values.
    assert!(yes(
        r#"{"rules":[{"when":[{"key":"end-user","values":["admin-*"]}]}]}"#,
        &f
    ));
    assert!(!yes(
        r#"{"rules":[{"when":[{"key":"end-user","values":["jason"]}]}]}"#,
        &f
    ));
}

#[test]
fn not_forms_exclude_and_absent_values_fail_values_but_pass_not_values() {
    let m = Metadata::new();
    let yes =
        |json: &str, f: &Facts<'_>| decide(&[policy("shop/p", json)], AuthzDefault::Deny, f).0;
    let web = facts(WEB, "shop.Get/v1", &m);
    let node = facts(NODE, "shop.Get/v1", &m);
    assert!(!yes(
        r#"{"rules":[{"from":[{"source":{"not_principals":["*/sa/web"]}}]}]}"#,
        &web
    ));
    assert!(yes(
        r#"{"rules":[{"from":[{"source":{"not_principals":["*/sa/web"]}}]}]}"#,
        &node
    ));
    // A node caller has no namespace: it matches no `namespaces` and every `not_namespaces`.
    assert!(yes(
        r#"{"rules":[{"from":[{"source":{"namespaces":["shop"]}}]}]}"#,
        &web
    ));
    assert!(!yes(
        r#"{"rules":[{"from":[{"source":{"namespaces":["shop"]}}]}]}"#,
        &node
    ));
    assert!(!yes(
        r#"{"rules":[{"from":[{"source":{"not_namespaces":["shop"]}}]}]}"#,
        &web
    ));
    assert!(yes(
        r#"{"rules":[{"from":[{"source":{"not_namespaces":["shop"]}}]}]}"#,
        &node
    ));
    assert!(!yes(
        r#"{"rules":[{"from":[{"source":{"not_nodes":["agent-1"]}}]}]}"#,
        &web
    ));
    assert!(!yes(
        r#"{"rules":[{"to":[{"operation":{"not_messages":["shop.Get/*"]}}]}]}"#,
        &web
    ));
    assert!(!yes(
        r#"{"rules":[{"when":[{"key":"k","values":["*"]}]}]}"#,
        &web
    ));
    assert!(yes(
        r#"{"rules":[{"when":[{"key":"k","not_values":["x"]}]}]}"#,
        &web
    ));
    let mx = Metadata::new().with("k", "x");
    let with_x = facts(WEB, "shop.Get/v1", &mx);
    assert!(!yes(
        r#"{"rules":[{"when":[{"key":"k","not_values":["x"]}]}]}"#,
        &with_x
    ));
    // Every part of a rule must hold; any entry of `from` (or `to`) may.
    assert!(!yes(
        r#"{"rules":[{"from":[{"source":{"principals":["*/sa/web"]}}],"when":[{"key":"k","values":["y"]}]}]}"#,
        &with_x
    ));
    assert!(yes(
        r#"{"rules":[{"from":[{"source":{"principals":["nobody"]}},{"source":{"principals":["*/sa/web"]}}]}]}"#,
        &web
    ));
}

#[test]
fn a_namespace_wide_policy_reaches_only_the_services_its_operations_name() {
    let m = Metadata::new();
    let ps = [policy(
        "shop/ns-wide",
        r#"{"action":"DENY","rules":[{"to":[{"operation":{"services":["ratings"]}}]},{"to":[{"operation":{"not_services":["shop/rev*"]}}]}]}"#,
    )];
    // Neither rule reaches shop/reviews: the first names ratings, the second excludes it.
    assert!(decide(&ps, AuthzDefault::Allow, &facts(WEB, "x", &m)).0);
    let c = ServiceAuthz::new(&"shop/ratings".parse().unwrap(), &ps, AuthzDefault::Allow);
    assert_eq!(
        c.decide(&facts(WEB, "x", &m)).0,
        Verdict::DeniedBy(RuleAt { policy: 0, rule: 0 })
    );
}

#[test]
fn the_first_matching_rule_in_order_is_reported_across_indexed_and_open_rules() {
    let m = Metadata::new();
    // rules[0] is open (a glob), rules[1] is indexed by WEB's exact principal, rules[2] open.
    let ps = [policy(
        "shop/p",
        r#"{"rules":[{"from":[{"source":{"principals":["*/sa/db"]}}]},{"from":[{"source":{"principals":["td/ns/shop/sa/web"]}}]},{"from":[{"source":{"principals":["*"]}}]}]}"#,
    )];
    assert_eq!(
        decide(&ps, AuthzDefault::Deny, &facts(WEB, "x", &m)).2,
        "rules[1]"
    );
    assert_eq!(
        decide(&ps, AuthzDefault::Deny, &facts("td/ns/shop/sa/db", "x", &m)).2,
        "rules[0]"
    );
    assert_eq!(
        decide(&ps, AuthzDefault::Deny, &facts(NODE, "x", &m)).2,
        "rules[2]"
    );
}

#[test]
fn rules_indexed_by_metadata_values_are_found_in_order_among_the_others() {
    // Every rule names WEB; each has its own exact tenant, so each is indexed by it. The
    // open rule (a glob tenant) sits between them in order.
    let mut rules: Vec<String> = (0..50)
        .map(|j| format!(r#"{{"from":[{{"source":{{"principals":["td/ns/shop/sa/web"]}}}}],"when":[{{"key":"tenant","values":["t-{j}"]}}]}}"#))
        .collect();
    rules.insert(
        10,
        r#"{"when":[{"key":"tenant","values":["t-4*"]}]}"#.to_string(),
    );
    let ps = [policy(
        "shop/p",
        &format!(r#"{{"rules":[{}]}}"#, rules.join(",")),
    )];
    let rule_of = |tenant: &str| {
        let m = Metadata::new().with("tenant", tenant);
        decide(&ps, AuthzDefault::Deny, &facts(WEB, "x", &m)).2
    };
    assert_eq!(rule_of("t-3"), "rules[3]");
    assert_eq!(rule_of("t-39"), "rules[40]");
    // t-4 is rule 4 (indexed) before the open rule 10; t-41 is rule 42, after it: the
    // open rule takes it first.
    assert_eq!(rule_of("t-4"), "rules[4]");
    assert_eq!(rule_of("t-41"), "rules[10]");
    let m = Metadata::new().with("tenant", "t-7");
    assert!(!decide(&ps, AuthzDefault::Deny, &facts("td/ns/shop/sa/db", "x", &m)).0);
    assert!(!decide(&ps, AuthzDefault::Deny, &facts(WEB, "x", &Metadata::new())).0);
}

#[test]
fn many_unindexed_rules_are_memoized_per_call_shape_and_decide_as_before() {
    // 40 rules, each a glob on the principal and on a tenant value: nothing to index.
    let rules: Vec<String> = (0..40)
        .map(|j| format!(r#"{{"from":[{{"source":{{"principals":["*/sa/w*"]}}}}],"when":[{{"key":"tenant","values":["t-{j}*"]}}]}}"#))
        .collect();
    let ps = [policy(
        "shop/p",
        &format!(r#"{{"rules":[{}]}}"#, rules.join(",")),
    )];
    let c = ServiceAuthz::new(&reviews(), &ps, AuthzDefault::Deny);
    assert!(c.memoized());
    // The same compiled policies answer every case, twice: the second time from the memo.
    for round in 0..2 {
        for (tenant, principal, message, expect) in [
            (Some("t-7"), WEB, "x", Some("rules[7]")),
            (Some("t-39"), WEB, "x", Some("rules[3]")),
            (Some("u-1"), WEB, "x", None),
            (None, WEB, "x", None),
            (Some("t-7"), "td/ns/shop/sa/db", "x", None),
            (Some("t-7"), WEB, "y", Some("rules[7]")),
        ] {
            let m = tenant.map_or_else(Metadata::new, |t| Metadata::new().with("tenant", t));
            // Other metadata keys are not part of a decision.
            let m = m.with("other", format!("x{round}"));
            let f = facts(principal, message, &m);
            let (v, _) = c.decide(&f);
            let e = explain(&reviews(), &ps, AuthzDefault::Deny, &f);
            let (_, rule) = c.names(v);
            assert_eq!(
                v.allowed(),
                expect.is_some(),
                "{tenant:?} {principal} round {round}"
            );
            assert_eq!(e.decision == "allow", v.allowed());
            assert_eq!(e.rule, rule);
            if let Some(r) = expect {
                assert_eq!(rule, r);
            }
        }
    }
    // A rule on the message: the memo tells messages apart.
    let by_message = [policy(
        "shop/m",
        &format!(
            r#"{{"rules":[{},{{"to":[{{"operation":{{"messages":["y"]}}}}]}}]}}"#,
            rules.join(",")
        ),
    )];
    let cm = ServiceAuthz::new(&reviews(), &by_message, AuthzDefault::Deny);
    let m = Metadata::new();
    for _ in 0..2 {
        assert!(!cm.decide(&facts(WEB, "x", &m)).0.allowed());
        assert!(cm.decide(&facts(WEB, "y", &m)).0.allowed());
    }
    // A new compile (the same policies under another default) is a new memo key.
    let allow_all = ServiceAuthz::new(&reviews(), &[], AuthzDefault::Allow);
    assert!(!allow_all.memoized());
    let c2 = ServiceAuthz::new(&reviews(), &ps, AuthzDefault::Allow);
    let m = Metadata::new().with("tenant", "u-1");
    assert_eq!(c.decide(&facts(WEB, "x", &m)).0, Verdict::NoAllowMatched);
    assert_eq!(c2.decide(&facts(WEB, "x", &m)).0, Verdict::NoAllowMatched);
    let none = [policy("shop/p", r#"{"action":"AUDIT","rules":[{}]}"#)];
    let c3 = ServiceAuthz::new(&reviews(), &none, AuthzDefault::Deny);
    assert_eq!(c3.decide(&facts(WEB, "x", &m)).0, Verdict::DeniedByDefault);
}

/// Random policies over small pools, so that rules often nearly match: the compiled
/// engine and the plain reading decide every call alike.
#[test]
fn the_engine_decides_as_the_plain_reading_on_random_policies() {
    let mut r = SplitMix64(0x5eed);
    let principals = [
        "td/ns/shop/sa/web",
        "td/ns/shop/sa/db",
        "td/ns/ops/sa/web",
        "td/node/agent-1",
        "td/client/cli",
    ];
    let patterns = [
        "td/ns/shop/sa/web",
        "*/sa/web",
        "td/ns/shop/*",
        "*",
        "td/node/*",
        "spiffe://td/client/cli",
        "td/ns/?ps/sa/web",
    ];
    let namespaces = ["shop", "ops", "s*"];
    let nodes = ["agent-1", "agent-2", "agent-*", "td/node/agent-1"];
    let messages = ["shop.Get/v1", "shop.Put/v1", "shop.*", "*/v1"];
    let services = ["reviews", "ratings", "shop/*", "ops/reviews"];
    let values = ["a", "b", "a*"];
    let pick = |r: &mut SplitMix64, pool: &[&str]| -> Vec<String> {
        (0..r.below(3))
            .map(|_| pool[r.below(pool.len())].to_string())
            .collect()
    };
    let (mut cases, mut allowed) = (0, 0);
    for round in 0..400 {
        let mut ps = Vec::new();
        for i in 0..1 + r.below(4) {
            let action = ["ALLOW", "DENY", "AUDIT"][r.below(3)];
            let mut rules = Vec::new();
            for _ in 0..r.below(4) {
                let mut rule = serde_json::Map::new();
                if r.below(2) == 0 {
                    let mut s = serde_json::Map::new();
                    for (k, pool) in [
                        ("principals", &patterns[..]),
                        ("not_principals", &patterns[..]),
                        ("namespaces", &namespaces[..]),
                        ("not_namespaces", &namespaces[..]),
                        ("nodes", &nodes[..]),
                        ("not_nodes", &nodes[..]),
                    ] {
                        let v = pick(&mut r, pool);
                        if !v.is_empty() && r.below(3) == 0 {
                            s.insert(k.into(), v.into());
                        }
                    }
                    if s.is_empty() {
                        s.insert(
                            "principals".into(),
                            vec![patterns[r.below(patterns.len())]].into(),
                        );
                    }
                    rule.insert("from".into(), serde_json::json!([{ "source": s }]));
                }
                if r.below(2) == 0 {
                    let mut o = serde_json::Map::new();
                    for (k, pool) in [
                        ("services", &services[..]),
                        ("not_services", &services[..]),
                        ("messages", &messages[..]),
                        ("not_messages", &messages[..]),
                    ] {
                        let v = pick(&mut r, pool);
                        if !v.is_empty() && r.below(3) == 0 {
                            o.insert(k.into(), v.into());
                        }
                    }
                    if o.is_empty() {
                        o.insert(
                            "messages".into(),
                            vec![messages[r.below(messages.len())]].into(),
                        );
                    }
                    rule.insert("to".into(), serde_json::json!([{ "operation": o }]));
                }
                if r.below(2) == 0 {
                    let mut c = serde_json::Map::new();
                    c.insert("key".into(), "k".into());
                    let v = pick(&mut r, &values);
                    let nv = pick(&mut r, &values);
                    if v.is_empty() && nv.is_empty() {
                        c.insert("values".into(), vec!["a"].into());
                    }
                    if !v.is_empty() {
                        c.insert("values".into(), v.into());
                    }
                    if !nv.is_empty() {
                        c.insert("not_values".into(), nv.into());
                    }
                    rule.insert("when".into(), serde_json::json!([c]));
                }
                rules.push(serde_json::Value::Object(rule));
            }
            let json = serde_json::json!({ "action": action, "rules": rules }).to_string();
            ps.push(policy(&format!("shop/p{round}-{i}"), &json));
        }
        let default = [AuthzDefault::Allow, AuthzDefault::Deny][r.below(2)];
        for p in principals {
            for msg in ["shop.Get/v1", "shop.Put/v2"] {
                for m in [
                    Metadata::new(),
                    Metadata::new().with("k", "a"),
                    Metadata::new().with("k", "b"),
                ] {
                    allowed += usize::from(decide(&ps, default, &facts(p, msg, &m)).0);
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 400 * 5 * 2 * 3);
    // Both decisions are common, so the agreement says something.
    assert!(
        allowed > cases / 10 && allowed < cases * 9 / 10,
        "{allowed} of {cases} allowed"
    );
}
