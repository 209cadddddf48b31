//! The decision, as Istio makes it: any matching DENY rule denies; then, if any ALLOW
//! policy applies to the service, one of its rules must match; if none applies, the
//! mesh's default decides. AUDIT rules never change the decision; a match is reported.
//!
//! [`ServiceAuthz`] is one service's applicable policies compiled for the call path: the
//! `to.services` parts are settled for that service when it is built (a rule that can
//! never match it is dropped), globs are sorted by shape (exact, prefix, suffix, any,
//! general), and each rule of an action is indexed by one exact attribute every call it
//! matches must have (its exact principals, or the exact values of one `when` key),
//! whichever fewer rules share, so that a call evaluates only the rules that could match
//! its principal and metadata, in order.
//! [`explain`] is the plain reading of the same rules over the specs, rule by rule, with
//! the reason each did or did not match: `actormesh authz check` prints it, and a test
//! checks on random policies that both always decide alike.

use std::collections::HashMap;

use crate::mesh::authz::spec::{
    AuthorizationPolicySpec, AuthzAction, Condition, Operation, Source,
};
use crate::mesh::registry::{Applied, ServiceName};
use crate::Metadata;

/// What decides when no ALLOW policy applies to a service.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AuthzDefault {
    /// The call is allowed.
    #[default]
    Allow,
    /// The call is denied (`PermissionDenied { policy: "default-deny" }`).
    Deny,
}

impl AuthzDefault {
    /// As configured and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzDefault::Allow => "allow",
            AuthzDefault::Deny => "deny",
        }
    }
}

impl std::str::FromStr for AuthzDefault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(AuthzDefault::Allow),
            "deny" => Ok(AuthzDefault::Deny),
            other => Err(format!(
                "{other:?} is not an authorization default (expected allow or deny)"
            )),
        }
    }
}

/// The `policy` of a denial under the default.
pub const DEFAULT_DENY: &str = "default-deny";

/// What the callee knows of a call.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The caller's principal, a SPIFFE id without `spiffe://`: its proven workload's
    /// (`<td>/ns/<ns>/sa/<service>`), else its node's or client's.
    pub principal: &'a str,
    /// The namespace of the caller's proven workload, if it has one.
    pub namespace: Option<&'a str>,
    /// The calling node's SPIFFE id without `spiffe://` (this node's, for a local call).
    pub node: &'a str,
    /// The message name.
    pub message: &'a str,
    /// The call's metadata.
    pub metadata: &'a Metadata,
}

/// `id` without its `spiffe://` scheme, as principals are compared.
pub fn bare(id: &str) -> &str {
    id.strip_prefix("spiffe://").unwrap_or(id)
}

/// The principal of workload `namespace/name` in trust domain `td`, without the scheme.
pub fn workload_principal(td: &str, workload: &str) -> Option<String> {
    let (ns, name) = workload.split_once('/')?;
    Some(format!("{td}/ns/{ns}/sa/{name}"))
}

/// A rule, by its policy's place among the service's policies and its own in the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleAt {
    /// Index into [`ServiceAuthz::policies`].
    pub policy: u32,
    /// Index into that policy's `rules`.
    pub rule: u32,
}

/// The decision on a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A DENY rule matched.
    DeniedBy(RuleAt),
    /// ALLOW policies apply and none of their rules matched.
    NoAllowMatched,
    /// No ALLOW policy applies and the default is deny.
    DeniedByDefault,
    /// An ALLOW rule matched.
    AllowedBy(RuleAt),
    /// No ALLOW policy applies and the default is allow.
    AllowedByDefault,
}

impl Verdict {
    /// Whether the call goes through.
    pub fn allowed(self) -> bool {
        matches!(self, Verdict::AllowedBy(_) | Verdict::AllowedByDefault)
    }
}

/// A glob compiled by its shape.
#[derive(Debug, Clone)]
enum Glob {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    General(Box<str>),
}

fn is_wild(s: &str) -> bool {
    s.contains(['*', '?'])
}

impl Glob {
    fn new(p: &str) -> Self {
        if p.bytes().all(|b| b == b'*') {
            Glob::Any
        } else if !is_wild(p) {
            Glob::Exact(p.into())
        } else if let Some(head) = p.strip_suffix('*').filter(|h| !is_wild(h)) {
            Glob::Prefix(head.into())
        } else if let Some(tail) = p.strip_prefix('*').filter(|t| !is_wild(t)) {
            Glob::Suffix(tail.into())
        } else {
            Glob::General(p.into())
        }
    }

    #[inline]
    fn matches(&self, s: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(e) => **e == *s,
            Glob::Prefix(p) => s.starts_with(&**p),
            Glob::Suffix(t) => s.ends_with(&**t),
            Glob::General(g) => crate::mesh::policy::spec::glob_matches(g, s),
        }
    }
}

fn globs(list: &[String], f: impl Fn(&str) -> &str) -> Vec<Glob> {
    list.iter().map(|p| Glob::new(f(p))).collect()
}

#[inline]
fn any(list: &[Glob], s: &str) -> bool {
    list.iter().any(|g| g.matches(s))
}

/// `list` (a `values`-style list) says yes to `v`: empty, or one pattern matches.
#[inline]
fn admits(list: &[Glob], v: Option<&str>) -> bool {
    list.is_empty() || v.is_some_and(|v| any(list, v))
}

/// `list` (a `not_`-style list) says no to `v`.
#[inline]
fn excludes(list: &[Glob], v: Option<&str>) -> bool {
    v.is_some_and(|v| any(list, v))
}

/// A node pattern: the whole SPIFFE id if it has a `/`, else the bare node id.
#[derive(Debug, Clone)]
struct NodeGlob {
    whole: bool,
    glob: Glob,
}

fn node_globs(list: &[String]) -> Vec<NodeGlob> {
    list.iter()
        .map(|p| NodeGlob {
            whole: p.contains('/'),
            glob: Glob::new(bare(p)),
        })
        .collect()
}

/// The node's bare id: what follows `/node/` in its identity (a client has none).
fn node_id(node: &str) -> Option<&str> {
    node.split_once("/node/").map(|(_, id)| id)
}

fn node_matches(list: &[NodeGlob], node: &str) -> bool {
    list.iter().any(|n| {
        if n.whole {
            n.glob.matches(node)
        } else {
            node_id(node).is_some_and(|id| n.glob.matches(id))
        }
    })
}

#[derive(Debug, Clone)]
struct CSource {
    principals: Vec<Glob>,
    not_principals: Vec<Glob>,
    namespaces: Vec<Glob>,
    not_namespaces: Vec<Glob>,
    nodes: Vec<NodeGlob>,
    not_nodes: Vec<NodeGlob>,
}

impl CSource {
    fn new(s: &Source) -> Self {
        Self {
            principals: globs(&s.principals, bare),
            not_principals: globs(&s.not_principals, bare),
            namespaces: globs(&s.namespaces, |p| p),
            not_namespaces: globs(&s.not_namespaces, |p| p),
            nodes: node_globs(&s.nodes),
            not_nodes: node_globs(&s.not_nodes),
        }
    }

    #[inline]
    fn matches(&self, f: &Facts<'_>) -> bool {
        admits(&self.principals, Some(f.principal))
            && !excludes(&self.not_principals, Some(f.principal))
            && admits(&self.namespaces, f.namespace)
            && !excludes(&self.not_namespaces, f.namespace)
            && (self.nodes.is_empty() || node_matches(&self.nodes, f.node))
            && !node_matches(&self.not_nodes, f.node)
    }
}

/// An operation with its service lists settled for the service.
#[derive(Debug, Clone)]
struct COperation {
    messages: Vec<Glob>,
    not_messages: Vec<Glob>,
}

#[derive(Debug, Clone)]
struct CCondition {
    key: Box<str>,
    values: Vec<Glob>,
    not_values: Vec<Glob>,
}

impl CCondition {
    fn new(c: &Condition) -> Self {
        Self {
            key: c.key.as_str().into(),
            values: globs(&c.values, |p| p),
            not_values: globs(&c.not_values, |p| p),
        }
    }

    #[inline]
    fn holds(&self, m: &Metadata) -> bool {
        let v = m.get(&self.key);
        admits(&self.values, v) && !excludes(&self.not_values, v)
    }
}

/// Service pattern `p` of a policy in `namespace`, as `namespace/name`.
fn service_pattern(p: &str, namespace: &str) -> String {
    if p.contains('/') {
        p.to_string()
    } else {
        format!("{namespace}/{p}")
    }
}

fn service_listed(list: &[String], namespace: &str, service: &str) -> bool {
    list.iter()
        .any(|p| Glob::new(&service_pattern(p, namespace)).matches(service))
}

/// Whether operation `o` of a policy in `namespace` can match calls to `service`.
fn operation_reaches(o: &Operation, namespace: &str, service: &str) -> bool {
    (o.services.is_empty() || service_listed(&o.services, namespace, service))
        && !service_listed(&o.not_services, namespace, service)
}

#[derive(Debug, Clone)]
struct CRule {
    at: RuleAt,
    from: Vec<CSource>,
    /// `None`: the rule has no `to` (any operation).
    to: Option<Vec<COperation>>,
    when: Vec<CCondition>,
}

impl CRule {
    #[inline]
    fn matches(&self, f: &Facts<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(f)))
            && self.to.as_ref().is_none_or(|ops| {
                ops.iter().any(|o| {
                    admits(&o.messages, Some(f.message))
                        && !excludes(&o.not_messages, Some(f.message))
                })
            })
            && self.when.iter().all(|c| c.holds(f.metadata))
    }
}

/// An attribute every call a rule matches must have: what the rule is indexed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Attr {
    /// The principal is one of these (every source names only exact principals).
    Principal(Vec<String>),
    /// Metadata `key` has one of these values (a `when` with exact `values`).
    Meta(String, Vec<String>),
}

/// What rule `r` could be indexed by.
fn attrs(r: &crate::mesh::authz::spec::AuthzRule) -> Vec<Attr> {
    let mut out = Vec::new();
    if !r.from.is_empty()
        && r.from.iter().all(|f| {
            !f.source.principals.is_empty() && f.source.principals.iter().all(|p| !is_wild(bare(p)))
        })
    {
        let mut all: Vec<String> = r
            .from
            .iter()
            .flat_map(|f| f.source.principals.iter().map(|p| bare(p).to_string()))
            .collect();
        all.sort();
        all.dedup();
        out.push(Attr::Principal(all));
    }
    for c in &r.when {
        if !c.values.is_empty() && c.values.iter().all(|v| !is_wild(v)) {
            let mut values = c.values.clone();
            values.sort();
            values.dedup();
            out.push(Attr::Meta(c.key.clone(), values));
        }
    }
    out
}

/// The most lists a call merges (principal, open rules, one per indexed metadata key);
/// with more metadata keys indexed, a call walks every rule instead.
const MERGED: usize = 8;

/// Exact value → the rules indexed by it (ascending).
type ByValue = HashMap<Box<str>, Vec<u32>>;

/// The rules of one action, in order, each indexed by one attribute (or open).
#[derive(Debug, Clone, Default)]
struct ActionRules {
    rules: Vec<CRule>,
    /// Exact principal → the rules indexed by it (indexes into `rules`, ascending).
    by_principal: ByValue,
    /// Metadata key → its values' rules.
    by_meta: Vec<(Box<str>, ByValue)>,
    /// The rules indexed by nothing (ascending).
    open: Vec<u32>,
}

impl ActionRules {
    /// The rules, each with what it could be indexed by; each is indexed by the attribute
    /// whose values fewer rules share.
    fn new(rules: Vec<(CRule, Vec<Attr>)>) -> Self {
        let mut shared: HashMap<(Option<&str>, &str), usize> = HashMap::new();
        for (_, attrs) in &rules {
            for a in attrs {
                match a {
                    Attr::Principal(ps) => ps.iter().for_each(|p| {
                        *shared.entry((None, p)).or_default() += 1;
                    }),
                    Attr::Meta(k, vs) => vs.iter().for_each(|v| {
                        *shared.entry((Some(k), v)).or_default() += 1;
                    }),
                }
            }
        }
        let cost = |a: &Attr| -> usize {
            match a {
                Attr::Principal(ps) => ps.iter().map(|p| shared[&(None, p.as_str())]).sum(),
                Attr::Meta(k, vs) => vs
                    .iter()
                    .map(|v| shared[&(Some(k.as_str()), v.as_str())])
                    .sum(),
            }
        };
        let chosen: Vec<Option<Attr>> = rules
            .iter()
            .map(|(_, attrs)| attrs.iter().min_by_key(|a| cost(a)).cloned())
            .collect();
        let mut out = Self::default();
        for (i, ((rule, _), attr)) in rules.into_iter().zip(chosen).enumerate() {
            let i = i as u32;
            let add = |list: &mut Vec<u32>| {
                if list.last() != Some(&i) {
                    list.push(i);
                }
            };
            match attr {
                None => out.open.push(i),
                Some(Attr::Principal(ps)) => {
                    for p in ps {
                        add(out.by_principal.entry(p.into()).or_default());
                    }
                }
                Some(Attr::Meta(k, vs)) => {
                    let at = match out.by_meta.iter().position(|(key, _)| **key == *k) {
                        Some(at) => at,
                        None => {
                            out.by_meta.push((k.as_str().into(), HashMap::new()));
                            out.by_meta.len() - 1
                        }
                    };
                    for v in vs {
                        add(out.by_meta[at].1.entry(v.into()).or_default());
                    }
                }
            }
            out.rules.push(rule);
        }
        out
    }

    /// The first rule, in order, that matches.
    #[inline]
    fn first_match(&self, f: &Facts<'_>) -> Option<RuleAt> {
        if self.rules.is_empty() {
            return None;
        }
        if self.by_meta.len() + 2 > MERGED {
            return self.rules.iter().find(|r| r.matches(f)).map(|r| r.at);
        }
        let mut lists: [&[u32]; MERGED] = [&[]; MERGED];
        lists[0] = &self.open;
        lists[1] = self
            .by_principal
            .get(f.principal)
            .map_or(&[], |v| v.as_slice());
        let mut n = 2;
        for (key, values) in &self.by_meta {
            if let Some(list) = f.metadata.get(key).and_then(|v| values.get(v)) {
                lists[n] = list;
                n += 1;
            }
        }
        // Merged in rule order: the smallest head next, until one matches.
        loop {
            let mut best: Option<usize> = None;
            for (i, l) in lists[..n].iter().enumerate() {
                if let Some(&head) = l.first() {
                    if best.is_none_or(|b| head < lists[b][0]) {
                        best = Some(i);
                    }
                }
            }
            let b = best?;
            let rule = &self.rules[lists[b][0] as usize];
            lists[b] = &lists[b][1..];
            if rule.matches(f) {
                return Some(rule.at);
            }
        }
    }
}

/// One service's applicable policies, compiled.
#[derive(Debug, Clone)]
pub struct ServiceAuthz {
    service: ServiceName,
    /// The policies' objects (`namespace/name`) and actions, in the order pushed.
    policies: Vec<(String, AuthzAction)>,
    deny: ActionRules,
    allow: ActionRules,
    audit: ActionRules,
    /// How many ALLOW policies apply (rules or not).
    allow_policies: usize,
    default: AuthzDefault,
    /// This compile's id (every compile makes a new one), for the memo.
    id: u64,
    /// With many open rules, the metadata keys the rules read (sorted): decisions are
    /// memoized per thread ([`super::memo`]). `None`: every call evaluates.
    memo_keys: Option<Vec<Box<str>>>,
}

/// Open rules (indexed by nothing) from which decisions are memoized.
pub const MEMO_AFTER: usize = 32;

static COMPILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl ServiceAuthz {
    /// Compiles the policies applying to `service` under the mesh's `default`.
    pub fn new(
        service: &ServiceName,
        policies: &[Applied<AuthorizationPolicySpec>],
        default: AuthzDefault,
    ) -> Self {
        let name = service.to_string();
        let mut out = Self {
            service: service.clone(),
            policies: Vec::with_capacity(policies.len()),
            deny: ActionRules::default(),
            allow: ActionRules::default(),
            audit: ActionRules::default(),
            allow_policies: 0,
            default,
            id: COMPILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            memo_keys: None,
        };
        let (mut deny, mut allow, mut audit) = (Vec::new(), Vec::new(), Vec::new());
        for (pi, p) in policies.iter().enumerate() {
            let namespace = p.object.split_once('/').map_or("", |(ns, _)| ns);
            out.policies.push((p.object.clone(), p.spec.action));
            if p.spec.action == AuthzAction::Allow {
                out.allow_policies += 1;
            }
            let set = match p.spec.action {
                AuthzAction::Allow => &mut allow,
                AuthzAction::Deny => &mut deny,
                AuthzAction::Audit => &mut audit,
            };
            for (ri, r) in p.spec.rules.iter().enumerate() {
                let to = if r.to.is_empty() {
                    None
                } else {
                    let ops: Vec<COperation> =
                        r.to.iter()
                            .map(|t| &t.operation)
                            .filter(|o| operation_reaches(o, namespace, &name))
                            .map(|o| COperation {
                                messages: globs(&o.messages, |p| p),
                                not_messages: globs(&o.not_messages, |p| p),
                            })
                            .collect();
                    if ops.is_empty() {
                        // No operation of it can be a call to this service.
                        continue;
                    }
                    Some(ops)
                };
                let rule = CRule {
                    at: RuleAt {
                        policy: pi as u32,
                        rule: ri as u32,
                    },
                    from: r.from.iter().map(|f| CSource::new(&f.source)).collect(),
                    to,
                    when: r.when.iter().map(CCondition::new).collect(),
                };
                set.push((rule, attrs(r)));
            }
        }
        out.deny = ActionRules::new(deny);
        out.allow = ActionRules::new(allow);
        out.audit = ActionRules::new(audit);
        let open = out.deny.open.len() + out.allow.open.len() + out.audit.open.len();
        if open >= MEMO_AFTER {
            let mut keys: Vec<Box<str>> = policies
                .iter()
                .flat_map(|p| p.spec.rules.iter())
                .flat_map(|r| r.when.iter().map(|c| c.key.as_str().into()))
                .collect();
            keys.sort();
            keys.dedup();
            out.memo_keys = Some(keys);
        }
        out
    }

    /// Whether decisions are memoized (many open rules).
    pub fn memoized(&self) -> bool {
        self.memo_keys.is_some()
    }

    /// Whether a call could ever be denied: some policy applies, or the default denies.
    pub fn in_force(&self) -> bool {
        !self.policies.is_empty() || self.default == AuthzDefault::Deny
    }

    /// The mesh default it was compiled with.
    pub fn default(&self) -> AuthzDefault {
        self.default
    }

    /// The service.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The policies, as [`RuleAt::policy`] indexes them.
    pub fn policies(&self) -> &[(String, AuthzAction)] {
        &self.policies
    }

    /// The decision on a call, and the first AUDIT rule that matched it.
    #[inline]
    pub fn decide(&self, f: &Facts<'_>) -> (Verdict, Option<RuleAt>) {
        match &self.memo_keys {
            Some(keys) => super::memo::decide(self.id, keys, f, || self.evaluate(f)),
            None => self.evaluate(f),
        }
    }

    /// The decision, rule by rule (no memo).
    #[inline]
    fn evaluate(&self, f: &Facts<'_>) -> (Verdict, Option<RuleAt>) {
        let audit = self.audit.first_match(f);
        if let Some(at) = self.deny.first_match(f) {
            return (Verdict::DeniedBy(at), audit);
        }
        if self.allow_policies > 0 {
            let v = match self.allow.first_match(f) {
                Some(at) => Verdict::AllowedBy(at),
                None => Verdict::NoAllowMatched,
            };
            return (v, audit);
        }
        let v = match self.default {
            AuthzDefault::Allow => Verdict::AllowedByDefault,
            AuthzDefault::Deny => Verdict::DeniedByDefault,
        };
        (v, audit)
    }

    /// The `policy` and `rule` a caller is told, or a log names, for `verdict`.
    pub fn names(&self, verdict: Verdict) -> (String, String) {
        let rule = |at: RuleAt| {
            (
                self.policies[at.policy as usize].0.clone(),
                format!("rules[{}]", at.rule),
            )
        };
        match verdict {
            Verdict::DeniedBy(at) | Verdict::AllowedBy(at) => rule(at),
            Verdict::NoAllowMatched => {
                let allow: Vec<&str> = self
                    .policies
                    .iter()
                    .filter(|(_, a)| *a == AuthzAction::Allow)
                    .map(|(o, _)| o.as_str())
                    .collect();
                let shown = allow.iter().take(4).copied().collect::<Vec<_>>().join(",");
                let more = allow.len().saturating_sub(4);
                let policy = if more > 0 {
                    format!("{shown},+{more} more")
                } else {
                    shown
                };
                (
                    policy,
                    format!("no rule of the ALLOW policies of {} matched", self.service),
                )
            }
            Verdict::DeniedByDefault => (
                DEFAULT_DENY.to_string(),
                format!("no ALLOW policy applies to {}", self.service),
            ),
            Verdict::AllowedByDefault => (
                "default-allow".to_string(),
                format!("no ALLOW policy applies to {}", self.service),
            ),
        }
    }
}

/// One policy's part in [`explain`]'s account.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyTrace {
    /// `namespace/name`.
    pub policy: String,
    /// `ALLOW`, `DENY` or `AUDIT`.
    pub action: String,
    /// Per rule: `rules[i]` and whether it matched, with the reason.
    pub rules: Vec<String>,
    /// The first rule that matched, if one did.
    pub matched: Option<String>,
}

/// What [`explain`] finds: the decision and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Explanation {
    /// `allow` or `deny`.
    pub decision: String,
    /// The policy that decided (`default-allow` or `default-deny` under the default).
    pub policy: String,
    /// Its rule, or why the default decided.
    pub rule: String,
    /// The AUDIT policy and rule that matched, if any (`policy rules[i]`).
    pub audited: Option<String>,
    /// Every policy that applies, in order, rule by rule.
    pub trace: Vec<PolicyTrace>,
}

fn first_failing_glob(list: &[String], v: Option<&str>, map: impl Fn(&str) -> String) -> bool {
    list.is_empty() || v.is_some_and(|v| list.iter().any(|p| Glob::new(&map(p)).matches(v)))
}

fn source_reason(s: &Source, f: &Facts<'_>) -> Result<(), String> {
    let b = |p: &str| bare(p).to_string();
    let same = |p: &str| p.to_string();
    let ns = f.namespace;
    if !first_failing_glob(&s.principals, Some(f.principal), b) {
        return Err(format!(
            "principal {} is not among {:?}",
            f.principal, s.principals
        ));
    }
    if !s.not_principals.is_empty() && first_failing_glob(&s.not_principals, Some(f.principal), b) {
        return Err(format!(
            "principal {} is among not_principals {:?}",
            f.principal, s.not_principals
        ));
    }
    if !first_failing_glob(&s.namespaces, ns, same) {
        return Err(format!(
            "namespace {} is not among {:?}",
            ns.unwrap_or("(none)"),
            s.namespaces
        ));
    }
    if !s.not_namespaces.is_empty()
        && ns.is_some()
        && first_failing_glob(&s.not_namespaces, ns, same)
    {
        return Err(format!(
            "namespace {} is among not_namespaces {:?}",
            ns.unwrap_or(""),
            s.not_namespaces
        ));
    }
    if !s.nodes.is_empty() && !node_matches(&node_globs(&s.nodes), f.node) {
        return Err(format!("node {} is not among {:?}", f.node, s.nodes));
    }
    if node_matches(&node_globs(&s.not_nodes), f.node) {
        return Err(format!(
            "node {} is among not_nodes {:?}",
            f.node, s.not_nodes
        ));
    }
    Ok(())
}

fn operation_reason(
    o: &Operation,
    namespace: &str,
    service: &str,
    f: &Facts<'_>,
) -> Result<(), String> {
    if !operation_reaches(o, namespace, service) {
        return Err(format!(
            "service {service} is not a service of this operation"
        ));
    }
    let same = |p: &str| p.to_string();
    if !first_failing_glob(&o.messages, Some(f.message), same) {
        return Err(format!(
            "message {} is not among {:?}",
            f.message, o.messages
        ));
    }
    if !o.not_messages.is_empty() && first_failing_glob(&o.not_messages, Some(f.message), same) {
        return Err(format!(
            "message {} is among not_messages {:?}",
            f.message, o.not_messages
        ));
    }
    Ok(())
}

fn condition_reason(c: &Condition, m: &Metadata) -> Result<(), String> {
    let v = m.get(&c.key);
    let same = |p: &str| p.to_string();
    if !first_failing_glob(&c.values, v, same) {
        return Err(match v {
            None => format!("metadata {} is absent (values {:?})", c.key, c.values),
            Some(v) => format!("metadata {}={v} is not among {:?}", c.key, c.values),
        });
    }
    if let Some(v) = v {
        if !c.not_values.is_empty() && first_failing_glob(&c.not_values, Some(v), same) {
            return Err(format!(
                "metadata {}={v} is among not_values {:?}",
                c.key, c.not_values
            ));
        }
    }
    Ok(())
}

/// Why rule `r` of a policy in `namespace` does or does not match the call to `service`.
fn rule_reason(
    r: &crate::mesh::authz::spec::AuthzRule,
    namespace: &str,
    service: &str,
    f: &Facts<'_>,
) -> Result<(), String> {
    if !r.from.is_empty() {
        let reasons: Vec<String> = r
            .from
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                source_reason(&s.source, f)
                    .err()
                    .map(|e| format!("from[{i}]: {e}"))
            })
            .collect();
        if reasons.len() == r.from.len() {
            return Err(reasons.join("; "));
        }
    }
    if !r.to.is_empty() {
        let reasons: Vec<String> =
            r.to.iter()
                .enumerate()
                .filter_map(|(i, o)| {
                    operation_reason(&o.operation, namespace, service, f)
                        .err()
                        .map(|e| format!("to[{i}]: {e}"))
                })
                .collect();
        if reasons.len() == r.to.len() {
            return Err(reasons.join("; "));
        }
    }
    for (i, c) in r.when.iter().enumerate() {
        condition_reason(c, f.metadata).map_err(|e| format!("when[{i}]: {e}"))?;
    }
    Ok(())
}

/// The decision on a call to `service` under `policies` and `default`, read rule by rule
/// from the specs, with the reason for each rule.
pub fn explain(
    service: &ServiceName,
    policies: &[Applied<AuthorizationPolicySpec>],
    default: AuthzDefault,
    f: &Facts<'_>,
) -> Explanation {
    let name = service.to_string();
    let mut trace = Vec::new();
    let mut deny = None;
    let mut allow = None;
    let mut audit = None;
    let mut allow_policies = 0;
    for p in policies {
        let namespace = p.object.split_once('/').map_or("", |(ns, _)| ns);
        if p.spec.action == AuthzAction::Allow {
            allow_policies += 1;
        }
        let mut rules = Vec::new();
        let mut matched = None;
        for (i, r) in p.spec.rules.iter().enumerate() {
            match rule_reason(r, namespace, &name, f) {
                Ok(()) => {
                    rules.push(format!("rules[{i}]: matches"));
                    if matched.is_none() {
                        matched = Some(format!("rules[{i}]"));
                    }
                }
                Err(why) => rules.push(format!("rules[{i}]: no match: {why}")),
            }
        }
        if p.spec.rules.is_empty() {
            rules.push("no rules: matches nothing".to_string());
        }
        if let Some(m) = &matched {
            let slot = match p.spec.action {
                AuthzAction::Deny => &mut deny,
                AuthzAction::Allow => &mut allow,
                AuthzAction::Audit => &mut audit,
            };
            if slot.is_none() {
                *slot = Some((p.object.clone(), m.clone()));
            }
        }
        trace.push(PolicyTrace {
            policy: p.object.clone(),
            action: p.spec.action.as_str().to_string(),
            rules,
            matched,
        });
    }
    let (decision, policy, rule) = if let Some((p, r)) = deny {
        ("deny", p, r)
    } else if allow_policies > 0 {
        match allow {
            Some((p, r)) => ("allow", p, r),
            None => {
                let c = ServiceAuthz::new(service, policies, default);
                let (p, r) = c.names(Verdict::NoAllowMatched);
                ("deny", p, r)
            }
        }
    } else {
        let why = format!("no ALLOW policy applies to {name}");
        match default {
            AuthzDefault::Allow => ("allow", "default-allow".to_string(), why),
            AuthzDefault::Deny => ("deny", DEFAULT_DENY.to_string(), why),
        }
    };
    Explanation {
        decision: decision.to_string(),
        policy,
        rule,
        audited: audit.map(|(p, r)| format!("{p} {r}")),
        trace,
    }
}
