//! The traffic policy objects as written and as pushed: [`RouteSpec`] (Istio's
//! VirtualService: ordered rules for one service) and [`DestinationPolicySpec`] (Istio's
//! DestinationRule: subsets, balancer, breaker, outlier detection, retry budget, rate
//! limit). The same serde types are read from manifests and sent to proxies;
//! [`RouteSpec::validate`] and [`DestinationPolicySpec::validate`] hold every rule on
//! their values, and each error names the field (as a dotted path) and what was expected.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mesh::registry::BalancerKind;

/// A value of a policy object was refused: the field and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem} (expected {expected})")]
pub struct FieldError {
    /// The field, as a dotted path from the object's `spec` (`rules[0].split[1].weight`).
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// What would be right.
    pub expected: String,
}

fn refuse(field: impl Into<String>, problem: impl Into<String>, expected: &str) -> FieldError {
    FieldError {
        field: field.into(),
        problem: problem.into(),
        expected: expected.to_string(),
    }
}

/// How a message name is matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NameMatch {
    /// The whole name.
    Exact(String),
    /// A prefix of the name.
    Prefix(String),
    /// A glob: `*` matches any run of characters, `?` any one character.
    Glob(String),
}

impl NameMatch {
    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NameMatch::Exact(s) => name == s,
            NameMatch::Prefix(p) => name.starts_with(p.as_str()),
            NameMatch::Glob(g) => glob(g.as_bytes(), name.as_bytes()),
        }
    }

    fn pattern(&self) -> &str {
        match self {
            NameMatch::Exact(s) | NameMatch::Prefix(s) | NameMatch::Glob(s) => s,
        }
    }
}

/// Whether `text` matches the glob `pattern` (`*` any run, `?` one character).
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    glob(pattern.as_bytes(), text.as_bytes())
}

/// `*` and `?` globbing, iterative with one backtrack point (linear in practice, no
/// recursion to blow up on many stars).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A regular expression that must match a whole value (RE2 syntax, as Envoy's), compiled
/// when it is read, so a bad one is refused naming its field and a call only runs it.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    compiled: regex::Regex,
}

/// The longest pattern accepted, and the most memory its compiled form may take.
const PATTERN_LIMIT: usize = 1024;
const PATTERN_MEMORY: usize = 1 << 20;

impl Pattern {
    /// Compiles `source`, anchored at both ends.
    pub fn new(source: &str) -> Result<Self, String> {
        if source.len() > PATTERN_LIMIT {
            return Err(format!(
                "the pattern is {} bytes, over the limit of {PATTERN_LIMIT}",
                source.len()
            ));
        }
        let compiled = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(PATTERN_MEMORY)
            .build()
            .map_err(|e| format!("not a regular expression: {e}"))?;
        Ok(Self {
            source: source.to_string(),
            compiled,
        })
    }

    /// Whether the whole of `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Pattern::new(&source).map_err(serde::de::Error::custom)
    }
}

/// How one metadata entry is matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MetadataMatch {
    /// The value is exactly this.
    Exact(String),
    /// The value starts with this.
    Prefix(String),
    /// The whole value matches this regular expression.
    Regex(Pattern),
    /// The entry is there (`present: true`), whatever its value.
    Present(bool),
    /// The entry is not there (`absent: true`).
    Absent(bool),
}

impl MetadataMatch {
    /// Whether an entry whose value is `value` (`None`: no entry) matches.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match self {
            MetadataMatch::Exact(s) => value == Some(s.as_str()),
            MetadataMatch::Prefix(p) => value.is_some_and(|v| v.starts_with(p.as_str())),
            MetadataMatch::Regex(r) => value.is_some_and(|v| r.matches(v)),
            MetadataMatch::Present(_) => value.is_some(),
            MetadataMatch::Absent(_) => value.is_none(),
        }
    }
}

/// Who the call comes from: the workload of the handler the call is made in. A Route
/// decides on the caller's node, so this is that node's own actor's workload (proof is the
/// callee's matter: see AuthorizationPolicy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceMatch {
    /// The caller's workload is this service (`namespace/name`).
    Service(String),
    /// The caller's workload is in this namespace.
    Namespace(String),
}

impl SourceMatch {
    /// Whether a caller of `workload` (`namespace/name`, `None`: unknown) matches.
    pub fn matches(&self, workload: Option<&str>) -> bool {
        match (self, workload) {
            (_, None) => false,
            (SourceMatch::Service(s), Some(w)) => w == s,
            (SourceMatch::Namespace(n), Some(w)) => {
                w.split_once('/').is_some_and(|(ns, _)| ns == n)
            }
        }
    }
}

/// What a rule matches; every part given must match (an empty match takes every call).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    /// The message name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<NameMatch>,
    /// Metadata entries, by key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, MetadataMatch>,
    /// The caller's workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceMatch>,
}

impl RuleMatch {
    /// Whether a call of `message` with `metadata` (looked up by key) from `workload`
    /// matches.
    pub fn matches<'a>(
        &self,
        message: &str,
        metadata: impl Fn(&str) -> Option<&'a str>,
        workload: Option<&str>,
    ) -> bool {
        self.message.as_ref().is_none_or(|m| m.matches(message))
            && self.metadata.iter().all(|(k, m)| m.matches(metadata(k)))
            && self.source.as_ref().is_none_or(|s| s.matches(workload))
    }

    /// Whether it matches every call.
    pub fn is_catch_all(&self) -> bool {
        self.message.is_none() && self.metadata.is_empty() && self.source.is_none()
    }
}

/// A share of a rule's calls, sent to a subset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// The subset (of the service's DestinationPolicy).
    pub subset: String,
    /// Its share; a rule's weights sum to 100.
    pub weight: u32,
}

/// The errors a retry may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The endpoint could not be reached (`Unreachable`, never sent).
    Unreachable,
    /// The try ran out of time.
    Timeout,
    /// The link dropped after the call was sent.
    Reset,
    /// The callee was stopped or restarting (`Stopped`, `NoSuchActor`).
    Unavailable,
    /// The callee's mailbox or the lane was full.
    Overloaded,
}

/// Backoff between tries: full jitter between 0 and `min(max, base × 2^try)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// The first backoff's ceiling.
    #[serde(with = "crate::duration::text")]
    pub base: Duration,
    /// The largest ceiling.
    #[serde(with = "crate::duration::text")]
    pub max: Duration,
}

impl Default for Backoff {
    /// 25 ms doubling up to 250 ms, as Envoy's.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

/// A rule's retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Tries after the first.
    pub attempts: u32,
    /// Each try's timeout (the overall timeout still bounds every try).
    #[serde(
        default,
        with = "crate::duration::opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    /// The errors retried (`NotDelivered` always is); default unreachable and unavailable.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Backoff between tries.
    #[serde(default)]
    pub backoff: Backoff,
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Unreachable, RetryOn::Unavailable]
}

/// A delay injected into a share of calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayFault {
    /// How long.
    #[serde(with = "crate::duration::text")]
    pub fixed: Duration,
    /// The share of calls delayed, 0 to 100.
    pub percent: f64,
}

/// The error an injected abort answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortKind {
    /// `Unreachable` (never sent).
    Unavailable,
    /// `Timeout`.
    Timeout,
    /// `Rejected`.
    Rejected,
    /// `PermissionDenied`.
    Denied,
}

/// An error injected into a share of calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortFault {
    /// The error.
    pub error: AbortKind,
    /// The share of calls aborted, 0 to 100.
    pub percent: f64,
}

/// Faults a rule injects.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// A delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayFault>,
    /// An abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortFault>,
}

/// A share of a rule's calls copied to a subset, its replies discarded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The subset that gets the copies.
    pub subset: String,
    /// The share of calls copied, 0 to 100.
    pub percent: f64,
}

/// One rule of a Route: what it matches and what it does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// What it matches (every call when empty).
    #[serde(default, rename = "match")]
    pub matches: RuleMatch,
    /// Where the calls go, by subset; the whole service when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<Split>,
    /// The overall timeout of a call, all tries included.
    #[serde(
        default,
        with = "crate::duration::opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Fault injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Mirroring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// A Route's spec: the ordered rules of one service; the first rule that matches a call
/// decides it, and a call no rule matches goes to the whole service with no policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The service routed (`name` in the Route's namespace, or `namespace/name`).
    pub service: String,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

fn percent(field: String, p: f64) -> Result<(), FieldError> {
    if !(0.0..=100.0).contains(&p) || p.is_nan() {
        return Err(refuse(
            field,
            format!("{p} is not a share"),
            "a percentage from 0 to 100",
        ));
    }
    Ok(())
}

fn subset_name(field: String, s: &str) -> Result<(), FieldError> {
    if !crate::mesh::registry::is_valid_name(s) {
        return Err(refuse(
            field,
            format!("{s:?} is not a subset name"),
            "1-63 lowercase letters, digits and '-', not starting with '-'",
        ));
    }
    Ok(())
}

impl RouteSpec {
    /// Checks every value; the first error names its field.
    pub fn validate(&self) -> Result<(), FieldError> {
        crate::mesh::ServiceName::parse(&self.service, crate::mesh::DEFAULT_NAMESPACE).map_err(
            |e| {
                refuse(
                    "service",
                    e.to_string(),
                    "a service name, `name` or `namespace/name`",
                )
            },
        )?;
        if self.rules.is_empty() {
            return Err(refuse("rules", "no rule", "at least one rule"));
        }
        for (i, r) in self.rules.iter().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            if let Some(m) = &r.matches.message {
                if m.pattern().is_empty() {
                    return Err(refuse(
                        at("match.message"),
                        "empty",
                        "a message name or pattern",
                    ));
                }
            }
            for (k, m) in &r.matches.metadata {
                if k.is_empty() {
                    return Err(refuse(
                        at("match.metadata"),
                        "an empty key",
                        "metadata keys",
                    ));
                }
                match m {
                    MetadataMatch::Present(false) => {
                        return Err(refuse(
                            at(&format!("match.metadata.{k}.present")),
                            "present: false",
                            "present: true, or absent: true",
                        ))
                    }
                    MetadataMatch::Absent(false) => {
                        return Err(refuse(
                            at(&format!("match.metadata.{k}.absent")),
                            "absent: false",
                            "absent: true, or present: true",
                        ))
                    }
                    _ => {}
                }
            }
            if let Some(SourceMatch::Service(s)) = &r.matches.source {
                crate::mesh::ServiceName::parse(s, crate::mesh::DEFAULT_NAMESPACE).map_err(
                    |e| {
                        refuse(
                            at("match.source.service"),
                            e.to_string(),
                            "`namespace/name`",
                        )
                    },
                )?;
            }
            if !r.split.is_empty() {
                let mut seen = std::collections::BTreeSet::new();
                for (j, s) in r.split.iter().enumerate() {
                    subset_name(at(&format!("split[{j}].subset")), &s.subset)?;
                    if !seen.insert(s.subset.as_str()) {
                        return Err(refuse(
                            at(&format!("split[{j}].subset")),
                            format!("{:?} appears twice", s.subset),
                            "each subset once per rule",
                        ));
                    }
                }
                let sum: u64 = r.split.iter().map(|s| u64::from(s.weight)).sum();
                if sum != 100 {
                    return Err(refuse(
                        at("split"),
                        format!("the weights sum to {sum}"),
                        "integer weights summing to 100",
                    ));
                }
            }
            if let Some(t) = &r.retries {
                if t.attempts == 0 {
                    return Err(refuse(
                        at("retries.attempts"),
                        "0",
                        "at least 1 (or no retries block)",
                    ));
                }
                if t.attempts > 10 {
                    return Err(refuse(
                        at("retries.attempts"),
                        format!("{}", t.attempts),
                        "at most 10",
                    ));
                }
                if let (Some(per), Some(all)) = (t.per_try_timeout, r.timeout) {
                    if per > all {
                        return Err(refuse(
                            at("retries.per_try_timeout"),
                            format!(
                                "{} is longer than the rule's timeout {}",
                                crate::duration::format_duration(per),
                                crate::duration::format_duration(all)
                            ),
                            "a per-try timeout no longer than the overall timeout",
                        ));
                    }
                }
                if t.backoff.base > t.backoff.max {
                    return Err(refuse(
                        at("retries.backoff"),
                        "base is longer than max",
                        "base <= max",
                    ));
                }
            }
            if let Some(f) = &r.fault {
                if let Some(d) = &f.delay {
                    percent(at("fault.delay.percent"), d.percent)?;
                }
                if let Some(a) = &f.abort {
                    percent(at("fault.abort.percent"), a.percent)?;
                }
                if f.delay.is_none() && f.abort.is_none() {
                    return Err(refuse(at("fault"), "empty", "a delay, an abort or both"));
                }
            }
            if let Some(m) = &r.mirror {
                subset_name(at("mirror.subset"), &m.subset)?;
                percent(at("mirror.percent"), m.percent)?;
            }
        }
        Ok(())
    }
}

/// A circuit breaker as written (see [`super::breaker::BreakerConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// Calls in flight to one endpoint (default 1,024).
    #[serde(default = "default_1024")]
    pub max_in_flight_per_endpoint: u32,
    /// Calls waiting for room across the service (default 1,024).
    #[serde(default = "default_1024")]
    pub max_pending: u32,
    /// Retries in flight across the service (default 3).
    #[serde(default = "default_3")]
    pub max_retries: u32,
    /// Failed calls in a row that trip it open (default: no trip, limits only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// How long a tripped breaker stays open before one trial call (default 5 s).
    #[serde(default = "default_5s", with = "crate::duration::text")]
    pub open_for: Duration,
}

fn default_5s() -> Duration {
    Duration::from_secs(5)
}

fn default_1024() -> u32 {
    1024
}

fn default_3() -> u32 {
    3
}

/// Outlier detection as written (see [`super::ejection::OutlierConfig`]; Envoy's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSpec {
    /// Errors in a row that eject (default 5).
    #[serde(default = "default_5")]
    pub consecutive_errors: u32,
    /// How often ejections are reconsidered (default 10 s).
    #[serde(default = "default_10s", with = "crate::duration::text")]
    pub interval: Duration,
    /// The first ejection's length (default 30 s).
    #[serde(default = "default_30s", with = "crate::duration::text")]
    pub base_ejection: Duration,
    /// The most ejected at once, in percent (default 10; at least one is always allowed).
    #[serde(default = "default_10")]
    pub max_ejection_percent: u32,
    /// The least kept healthy, in percent (default 50).
    #[serde(default = "default_50")]
    pub min_healthy_percent: u32,
}

fn default_5() -> u32 {
    5
}
fn default_10() -> u32 {
    10
}
fn default_50() -> u32 {
    50
}
fn default_10s() -> Duration {
    Duration::from_secs(10)
}
fn default_30s() -> Duration {
    Duration::from_secs(30)
}

/// A retry budget as written (Linkerd's defaults: 20 % plus 10 a second over 10 s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Retries as a share of calls, 0 to 1 (default 0.2).
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    /// Retries a second whatever the traffic (default 10).
    #[serde(default = "default_10")]
    pub min_per_second: u32,
    /// How long calls and retries count (default 10 s).
    #[serde(default = "default_10s", with = "crate::duration::text")]
    pub ttl: Duration,
}

fn default_ratio() -> f64 {
    0.2
}

/// A local rate limit as written: a token bucket per service, where the call arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Calls a second.
    pub rate: f64,
    /// Calls allowed at once above the rate (default: one second's worth, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// A subset of a service's endpoints, by labels (`version` is one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetSpec {
    /// Its name, which routes use.
    pub name: String,
    /// The labels an endpoint must have, all of them.
    pub labels: BTreeMap<String, String>,
    /// Its balancer, over the policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancer: Option<BalancerKind>,
}

/// A DestinationPolicy's spec: how calls to one service's endpoints are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationPolicySpec {
    /// The service (`name` in the policy's namespace, or `namespace/name`).
    pub service: String,
    /// Subsets by labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<SubsetSpec>,
    /// The balancer, over the one in the deployment's `service:` block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancer: Option<BalancerKind>,
    /// The circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<BreakerSpec>,
    /// Outlier detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierSpec>,
    /// The retry budget (Linkerd's by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<BudgetSpec>,
    /// The local rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

impl DestinationPolicySpec {
    /// Checks every value; the first error names its field.
    pub fn validate(&self) -> Result<(), FieldError> {
        crate::mesh::ServiceName::parse(&self.service, crate::mesh::DEFAULT_NAMESPACE).map_err(
            |e| {
                refuse(
                    "service",
                    e.to_string(),
                    "a service name, `name` or `namespace/name`",
                )
            },
        )?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            subset_name(format!("subsets[{i}].name"), &s.name)?;
            if !seen.insert(s.name.as_str()) {
                return Err(refuse(
                    format!("subsets[{i}].name"),
                    format!("{:?} appears twice", s.name),
                    "unique subset names",
                ));
            }
            if s.labels.is_empty() {
                return Err(refuse(
                    format!("subsets[{i}].labels"),
                    "no label",
                    "at least one label, e.g. version: v2",
                ));
            }
        }
        if let Some(c) = &self.circuit_breaker {
            for (f, v) in [
                ("max_in_flight_per_endpoint", c.max_in_flight_per_endpoint),
                ("max_pending", c.max_pending),
            ] {
                if v == 0 {
                    return Err(refuse(format!("circuit_breaker.{f}"), "0", "at least 1"));
                }
            }
            if c.consecutive_failures == Some(0) {
                return Err(refuse(
                    "circuit_breaker.consecutive_failures",
                    "0",
                    "at least 1 (or leave it out: limits only)",
                ));
            }
            if c.open_for.is_zero() {
                return Err(refuse(
                    "circuit_breaker.open_for",
                    "0s",
                    "a duration above 0, e.g. 5s",
                ));
            }
        }
        if let Some(o) = &self.outlier_detection {
            if o.consecutive_errors == 0 {
                return Err(refuse(
                    "outlier_detection.consecutive_errors",
                    "0",
                    "at least 1",
                ));
            }
            for (f, v) in [
                ("max_ejection_percent", o.max_ejection_percent),
                ("min_healthy_percent", o.min_healthy_percent),
            ] {
                if v > 100 {
                    return Err(refuse(
                        format!("outlier_detection.{f}"),
                        format!("{v}"),
                        "a percentage from 0 to 100",
                    ));
                }
            }
        }
        if let Some(b) = &self.retry_budget {
            if !(0.0..=1.0).contains(&b.ratio) || b.ratio.is_nan() {
                return Err(refuse(
                    "retry_budget.ratio",
                    format!("{}", b.ratio),
                    "a share from 0 to 1 (0.2: 20 % more)",
                ));
            }
        }
        if let Some(r) = &self.rate_limit {
            if !(r.rate > 0.0 && r.rate.is_finite()) {
                return Err(refuse(
                    "rate_limit.rate",
                    format!("{}", r.rate),
                    "calls a second, above 0",
                ));
            }
            if r.burst == Some(0) {
                return Err(refuse("rate_limit.burst", "0", "at least 1"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml_rules: Vec<Rule>) -> RouteSpec {
        RouteSpec {
            service: "shop/ratings".into(),
            rules: yaml_rules,
        }
    }

    fn split(parts: &[(&str, u32)]) -> Vec<Split> {
        parts
            .iter()
            .map(|(s, w)| Split {
                subset: s.to_string(),
                weight: *w,
            })
            .collect()
    }

    #[test]
    fn globs_match_stars_and_single_characters() {
        let g = |p: &str, t: &str| NameMatch::Glob(p.into()).matches(t);
        assert!(g("shop.*/v1", "shop.ratings.Get/v1"));
        assert!(!g("shop.*/v1", "shop.ratings.Get/v2"));
        assert!(g("*", ""));
        assert!(g("a?c", "abc"));
        assert!(!g("a?c", "ac"));
        assert!(g("*.Get/*", "x.y.Get/v3"));
        assert!(!g("*.Get/*", "x.y.Put/v3"));
        assert!(g("a*b*c", "aXbYbZc"));
        assert!(!g("a*b*c", "aXbYbZ"));
    }

    #[test]
    fn a_rule_matches_only_when_every_part_does() {
        let m = RuleMatch {
            message: Some(NameMatch::Prefix("shop.".into())),
            metadata: [
                ("tenant".to_string(), MetadataMatch::Exact("acme".into())),
                ("debug".to_string(), MetadataMatch::Absent(true)),
            ]
            .into(),
            source: Some(SourceMatch::Namespace("web".into())),
        };
        let md = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v)
        };
        assert!(m.matches("shop.Get/v1", md(&[("tenant", "acme")]), Some("web/front")));
        assert!(!m.matches("cart.Get/v1", md(&[("tenant", "acme")]), Some("web/front")));
        assert!(!m.matches("shop.Get/v1", md(&[("tenant", "other")]), Some("web/front")));
        assert!(!m.matches(
            "shop.Get/v1",
            md(&[("tenant", "acme"), ("debug", "1")]),
            Some("web/front")
        ));
        assert!(!m.matches("shop.Get/v1", md(&[("tenant", "acme")]), Some("ops/front")));
        assert!(
            !m.matches("shop.Get/v1", md(&[("tenant", "acme")]), None),
            "unknown source"
        );
        assert!(RuleMatch::default().is_catch_all());
    }

    #[test]
    fn a_regex_matches_the_whole_value_and_a_bad_one_is_refused_by_field() {
        let m = MetadataMatch::Regex(Pattern::new("v[0-9]+").unwrap());
        assert!(m.matches(Some("v12")));
        assert!(!m.matches(Some("xv12")), "anchored at the start");
        assert!(!m.matches(Some("v12x")), "anchored at the end");
        assert!(!m.matches(None));
        let bad: Result<RouteSpec, _> = serde_json::from_value(serde_json::json!({
            "service": "ratings",
            "rules": [{ "match": { "metadata": { "tenant": { "regex": "(unclosed" } } } }]
        }));
        let e = bad.unwrap_err().to_string();
        assert!(e.contains("not a regular expression"), "{e}");
        assert!(
            Pattern::new(&"a".repeat(2000)).is_err(),
            "over the length limit"
        );
        // Written back as it was given.
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json, serde_json::json!({ "regex": "v[0-9]+" }));
    }

    #[test]
    fn weights_must_sum_to_100() {
        let ok = route(vec![Rule {
            split: split(&[("v1", 90), ("v2", 10)]),
            ..Rule::default()
        }]);
        assert_eq!(ok.validate(), Ok(()));
        let bad = route(vec![Rule {
            split: split(&[("v1", 90), ("v2", 20)]),
            ..Rule::default()
        }]);
        let e = bad.validate().unwrap_err();
        assert_eq!(e.field, "rules[0].split");
        assert!(e.problem.contains("110"), "{e}");
        let short = route(vec![Rule {
            split: split(&[("v1", 90), ("v2", 5)]),
            ..Rule::default()
        }]);
        assert_eq!(short.validate().unwrap_err().field, "rules[0].split");
    }

    #[test]
    fn a_per_try_timeout_may_not_exceed_the_overall_one() {
        let r = route(vec![Rule {
            timeout: Some(Duration::from_millis(500)),
            retries: Some(Retries {
                attempts: 2,
                per_try_timeout: Some(Duration::from_secs(1)),
                on: default_retry_on(),
                backoff: Backoff::default(),
            }),
            ..Rule::default()
        }]);
        let e = r.validate().unwrap_err();
        assert_eq!(e.field, "rules[0].retries.per_try_timeout");
        assert!(
            e.problem.contains("1s") && e.problem.contains("500ms"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: Vec<(Rule, &str)> = vec![
            (
                Rule {
                    fault: Some(Fault {
                        abort: Some(AbortFault {
                            error: AbortKind::Unavailable,
                            percent: 120.0,
                        }),
                        delay: None,
                    }),
                    ..Rule::default()
                },
                "rules[0].fault.abort.percent",
            ),
            (
                Rule {
                    mirror: Some(Mirror {
                        subset: "Shadow".into(),
                        percent: 10.0,
                    }),
                    ..Rule::default()
                },
                "rules[0].mirror.subset",
            ),
            (
                Rule {
                    split: split(&[("v1", 50), ("-v2", 50)]),
                    ..Rule::default()
                },
                "rules[0].split[1].subset",
            ),
            (
                Rule {
                    split: split(&[("v1", 50), ("v1", 50)]),
                    ..Rule::default()
                },
                "rules[0].split[1].subset",
            ),
            (
                Rule {
                    matches: RuleMatch {
                        metadata: [("x".to_string(), MetadataMatch::Present(false))].into(),
                        ..RuleMatch::default()
                    },
                    ..Rule::default()
                },
                "rules[0].match.metadata.x.present",
            ),
        ];
        for (rule, field) in cases {
            assert_eq!(route(vec![rule]).validate().unwrap_err().field, field);
        }
        assert_eq!(route(vec![]).validate().unwrap_err().field, "rules");
    }

    #[test]
    fn policies_validate_their_subsets_and_limits() {
        let mut p = DestinationPolicySpec {
            service: "ratings".into(),
            subsets: vec![SubsetSpec {
                name: "v2".into(),
                labels: [("version".to_string(), "v2".to_string())].into(),
                balancer: None,
            }],
            balancer: Some(BalancerKind::P2c),
            circuit_breaker: None,
            outlier_detection: None,
            retry_budget: None,
            rate_limit: None,
        };
        assert_eq!(p.validate(), Ok(()));
        let bad: Result<DestinationPolicySpec, _> = serde_json::from_value(
            serde_json::json!({ "service": "ratings", "balancer": "fastest" }),
        );
        let e = bad.unwrap_err().to_string();
        assert!(e.contains("fastest") && e.contains("round_robin"), "{e}");
        p.rate_limit = Some(RateLimitSpec {
            rate: 0.0,
            burst: None,
        });
        assert_eq!(p.validate().unwrap_err().field, "rate_limit.rate");
        p.rate_limit = None;
        p.subsets.push(p.subsets[0].clone());
        assert_eq!(p.validate().unwrap_err().field, "subsets[1].name");
    }

    #[test]
    fn it_reads_with_defaults_and_durations_as_text() {
        let r: RouteSpec = serde_json::from_value(serde_json::json!({
            "service": "shop/ratings",
            "rules": [{
                "match": { "message": { "glob": "shop.*" }, "metadata": { "tenant": { "exact": "acme" } } },
                "split": [ { "subset": "v1", "weight": 90 }, { "subset": "v2", "weight": 10 } ],
                "timeout": "2s",
                "retries": { "attempts": 2, "per_try_timeout": "500ms" }
            }]
        }))
        .unwrap();
        assert_eq!(r.validate(), Ok(()));
        let t = r.rules[0].retries.as_ref().unwrap();
        assert_eq!(t.per_try_timeout, Some(Duration::from_millis(500)));
        assert_eq!(t.on, default_retry_on());
        assert_eq!(t.backoff, Backoff::default());
        assert_eq!(r.rules[0].timeout, Some(Duration::from_secs(2)));
        // And back: durations are written as text.
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["rules"][0]["timeout"], "2s");
    }
}
